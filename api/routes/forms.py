"""Forms 1–5 as workflows (CM5–CM9, UM2): submitted for a unit, filed level by level up to the
provincial CDC, then applied to the registry.

The workflow, its refusals and its queries are :mod:`registry.forms` (``records`` reads,
``workflow`` changes state); here are the request and response shapes. A form is visible to the
units whose jurisdiction holds its unit and to every unit it has passed through; to anyone else
it does not exist (404 for every id, never 403), so ids cannot be probed across counties.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Body, Path, Query, Request
from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from api.deps import Conn, CurrentUser, require_filter_in_scope, require_writer
from registry.forms import MAX_ID, FormPayload, FormStatus, Remark, form_detail, workflow
from registry.forms import list_forms as forms_visible
from registry.sessions import setup_link

router = APIRouter(tags=["表单"])

FormId = Annotated[int, Path(ge=1, le=MAX_ID, description="表单 id")]
Version = Annotated[int, Field(ge=1, le=2**31 - 1, description="客户端看到的表单版本；不一致则拒绝（防止重复处理）")]


class FormStepOut(BaseModel):
    id: int
    action: str
    action_name: str
    unit_id: int
    unit_name: str
    user_id: int
    username: str
    real_name: str
    ts: datetime
    comment: str | None


class FormOut(BaseModel):
    id: int
    form_no: str
    form_type: int
    form_type_name: str
    unit_id: int
    unit_name: str
    unit_code: str
    status: str
    status_name: str
    current_unit_id: int | None = Field(description="当前待处理的单位；办结后为空")
    current_unit_name: str | None
    payload: dict[str, Any]
    submitter_name: str
    submitter_phone: str
    submitted_by: int
    submitted_by_username: str
    submitted_at: datetime
    filed_at: datetime | None
    applied_at: datetime | None
    applied_by: int | None
    applied_by_username: str | None
    result: dict[str, Any] | None
    version: int


class FormDetail(FormOut):
    steps: list[FormStepOut]


class ApplyOut(FormDetail):
    setup_token: str | None = Field(
        None, description="附表5 新增用户：一次性设置密码令牌（POST /auth/setup-password），只在此返回一次，不作保存"
    )
    setup_link: str | None = Field(
        None,
        description=(
            "附表5 新增用户：交给本人的一次性设置密码页面链接"
            "（COLDCHAIN_PUBLIC_URL/setup-password?token=…，72 小时内有效，只能使用一次）"
        ),
    )


class StepIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    comment: Remark | None = Field(default=None, description="意见")
    version: Version | None = None


class ReturnIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    reason: Annotated[
        str,
        StringConstraints(
            strip_whitespace=True, min_length=2, max_length=500, pattern=r"^[^\x00-\x08\x0b\x0c\x0e-\x1f\x7f]+$"
        ),
    ] = Field(description="退回原因")
    version: Version | None = None


class ApplyIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    version: Version


# ---------------------------------------------------------------------------------------------
# Reading


@router.get("/forms", response_model=list[FormOut], summary="表单列表（本辖区及经手的表单，新在前）")
def list_forms(
    principal: CurrentUser,
    conn: Conn,
    status: FormStatus | None = None,
    form_type: Annotated[int | None, Query(ge=1, le=5)] = None,
    unit_id: Annotated[int | None, Query(ge=1, le=MAX_ID)] = None,
    pending_for_me: Annotated[bool, Query(description="只看当前在本单位待处理的表单")] = False,
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
    offset: Annotated[int, Query(ge=0, le=10**6)] = 0,
) -> list[dict[str, Any]]:
    require_filter_in_scope(conn, principal, unit_id)
    return forms_visible(
        conn,
        principal.unit_id,
        status=status,
        form_type=form_type,
        unit_id=unit_id,
        pending_for_me=pending_for_me,
        limit=limit,
        offset=offset,
    )


@router.get("/forms/{form_id}", response_model=FormDetail, summary="表单详情及流转记录")
def get_form(form_id: FormId, principal: CurrentUser, conn: Conn) -> dict[str, Any]:
    return form_detail(conn, principal.unit_id, form_id)


# ---------------------------------------------------------------------------------------------
# The workflow


@router.post("/forms", status_code=201, response_model=FormDetail, summary="提交表单（附表1–5），逐级上报")
def submit_form(
    body: Annotated[FormPayload, Body(description="按 form_type 区分的附表内容")], principal: CurrentUser, conn: Conn
) -> dict[str, Any]:
    require_writer(principal)
    form_id = workflow.submit(conn, principal.actor, body)
    return form_detail(conn, principal.unit_id, form_id)


@router.post("/forms/{form_id}/forward", response_model=FormDetail, summary="审核通过，上报上一级")
def forward_form(form_id: FormId, principal: CurrentUser, conn: Conn, body: StepIn | None = None) -> dict[str, Any]:
    body = body or StepIn()
    workflow.forward(conn, principal.actor, form_id, body.comment, body.version)
    return form_detail(conn, principal.unit_id, form_id)


@router.post("/forms/{form_id}/file", response_model=FormDetail, summary="省级备案")
def file_form(form_id: FormId, principal: CurrentUser, conn: Conn, body: StepIn | None = None) -> dict[str, Any]:
    body = body or StepIn()
    workflow.file(conn, principal.actor, form_id, body.comment, body.version)
    return form_detail(conn, principal.unit_id, form_id)


@router.post("/forms/{form_id}/return", response_model=FormDetail, summary="退回（办结；须重新填报）")
def return_form(form_id: FormId, body: ReturnIn, principal: CurrentUser, conn: Conn) -> dict[str, Any]:
    workflow.send_back(conn, principal.actor, form_id, body.reason, body.version)
    return form_detail(conn, principal.unit_id, form_id)


@router.post("/forms/{form_id}/withdraw", response_model=FormDetail, summary="提交人撤回（流转中）")
def withdraw_form(form_id: FormId, principal: CurrentUser, conn: Conn, body: StepIn | None = None) -> dict[str, Any]:
    body = body or StepIn()
    workflow.withdraw(conn, principal.actor, form_id, body.comment, body.version)
    return form_detail(conn, principal.unit_id, form_id)


@router.post("/forms/{form_id}/apply", response_model=ApplyOut, summary="执行已备案的表单（改动登记信息）")
def apply_form(form_id: FormId, body: ApplyIn, principal: CurrentUser, conn: Conn, request: Request) -> dict[str, Any]:
    token = workflow.apply(conn, principal.actor, form_id, body.version)
    link = setup_link(request.app.state.settings.public_url, token) if token else None
    return form_detail(conn, principal.unit_id, form_id) | {"setup_token": token, "setup_link": link}
