"""Monthly usage plans (VT5): a township's plan is pre-filled with last month's usage, vaccinations
and its current stock, reviewed by its county, approved or returned with a reason; county and city
plans go to their own level above. The pre-filled numbers are recomputed by the server, never taken
from the client, so a reviewer compares the plan with the ledger as it is. The plans and their
queries are in :mod:`inventory.plans`; these routes parse the request, check who is asking, call the
domain and shape the reply.
"""

from __future__ import annotations

from datetime import date, datetime
from typing import Annotated, Any, Literal

import psycopg
from fastapi import APIRouter, Query
from pydantic import BaseModel, ConfigDict, Field, StringConstraints, model_validator

from api.deps import Conn, CurrentUser, Principal, require_writer, set_action, update_versioned
from api.fields import Id, Version
from coldchain.core.errors import conflict, forbidden, invalid
from coldchain.core.terms import parse_month
from inventory import plans

router = APIRouter(tags=["疫苗使用计划"])

MONTH_PATTERN = r"^20[0-9]{2}-(0[1-9]|1[0-2])$"
Month = Annotated[str, StringConstraints(pattern=MONTH_PATTERN)]
QMonth = Annotated[str | None, Query(pattern=MONTH_PATTERN)]


class PrefillLine(BaseModel):
    spec_id: int
    vaccine_name: str
    spec: str
    prev_usage: int
    administered: int
    stock: int


@router.get(
    "/usage-plans/prefill",
    response_model=list[PrefillLine],
    summary="计划预填：上月使用量、上月接种人次与当前库存（本单位）",
)
def get_prefill(
    principal: CurrentUser, conn: Conn, month: Annotated[str, Query(pattern=MONTH_PATTERN)]
) -> list[dict[str, Any]]:
    return plans.prefill(conn, principal.unit_id, parse_month(month), [])


class PlanLineIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    spec_id: Id
    planned: int = Field(ge=0, le=10_000_000, description="计划数（支/瓶）")
    note: Annotated[str, StringConstraints(strip_whitespace=True, max_length=500)] | None = None


class PlanIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    month: Month
    lines: list[PlanLineIn] = Field(min_length=1, max_length=500)

    @model_validator(mode="after")
    def _unique(self) -> PlanIn:
        specs = [x.spec_id for x in self.lines]
        if len(set(specs)) != len(specs):
            raise ValueError("同一品规在计划中出现多次")
        return self


class PlanLinesIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    version: Version
    lines: list[PlanLineIn] = Field(min_length=1, max_length=500)


class VersionIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    version: Version


class PlanDecisionIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    version: Version
    approve: bool
    reason: Annotated[str, StringConstraints(strip_whitespace=True, min_length=2, max_length=500)] | None = None

    @model_validator(mode="after")
    def _return_has_reason(self) -> PlanDecisionIn:
        if not self.approve and not self.reason:
            raise ValueError("退回计划须说明原因")
        return self


class PlanLineOut(BaseModel):
    spec_id: int
    vaccine_name: str
    spec: str
    prev_usage: int
    administered: int
    stock: int
    planned: int
    note: str | None


class PlanOut(BaseModel):
    id: int
    unit_id: int
    unit_name: str
    month: date
    state: str
    reviewer_unit_id: int
    reviewer_unit_name: str
    created_by: int
    submitted_at: datetime | None
    decided_by: int | None
    decided_at: datetime | None
    return_reason: str | None
    version: int
    lines: list[PlanLineOut]


def _lines(lines: list[PlanLineIn]) -> list[plans.Line]:
    return [plans.Line(x.spec_id, x.planned, x.note) for x in lines]


@router.post("/usage-plans", response_model=PlanOut, status_code=201, summary="新建本单位的月度使用计划（草稿）")
def create_plan(body: PlanIn, principal: CurrentUser, conn: Conn) -> dict[str, Any]:
    require_writer(principal)
    reviewer = principal.actor.unit.parent_id
    if reviewer is None:
        raise invalid("省级没有上级审核单位，不报使用计划")
    set_action(conn, "plan.create")
    plan_id = plans.create_plan(
        conn, principal.unit_id, parse_month(body.month), reviewer, principal.user_id, _lines(body.lines)
    )
    return plans.plan(conn, principal.unit_id, plan_id)


@router.get("/usage-plans", response_model=list[PlanOut], summary="使用计划：本单位及下级的，或待本单位审核的")
def list_plans(
    principal: CurrentUser,
    conn: Conn,
    role: Literal["mine", "to_review", "any"] = "any",
    month: QMonth = None,
    state: Literal["draft", "submitted", "approved", "returned"] | None = None,
) -> list[dict[str, Any]]:
    return plans.list_plans(
        conn, principal.unit_id, role=role, month=parse_month(month) if month else None, state=state
    )


@router.get("/usage-plans/{plan_id}", response_model=PlanOut, summary="使用计划详情")
def get_plan(plan_id: Id, principal: CurrentUser, conn: Conn) -> dict[str, Any]:
    return plans.plan(conn, principal.unit_id, plan_id)


def _own_editable(conn: psycopg.Connection, principal: Principal, plan_id: int) -> dict[str, Any]:
    plan = plans.plan(conn, principal.unit_id, plan_id)
    require_writer(principal)
    if plan["unit_id"] != principal.unit_id:
        raise forbidden("只能修改本单位的使用计划")
    if plan["state"] not in {"draft", "returned"}:
        raise conflict("plan_state", "计划已提交或已批准，不能修改")
    return plan


@router.put("/usage-plans/{plan_id}/lines", response_model=PlanOut, summary="修改计划明细（草稿或被退回时）")
def put_lines(plan_id: Id, body: PlanLinesIn, principal: CurrentUser, conn: Conn) -> dict[str, Any]:
    plan = _own_editable(conn, principal, plan_id)
    specs = [x.spec_id for x in body.lines]
    if len(set(specs)) != len(specs):
        raise invalid("同一品规在计划中出现多次")
    set_action(conn, "plan.edit")
    update_versioned(conn, "usage_plans", plan_id, body.version, {"state": plan["state"]}, "使用计划")
    plans.write_lines(conn, plan, _lines(body.lines))
    return plans.plan(conn, principal.unit_id, plan_id)


@router.post("/usage-plans/{plan_id}/submit", response_model=PlanOut, summary="提交计划给上级审核")
def submit_plan(plan_id: Id, body: VersionIn, principal: CurrentUser, conn: Conn) -> dict[str, Any]:
    plan = _own_editable(conn, principal, plan_id)
    set_action(conn, "plan.submit")
    # Pre-filled numbers are refreshed at submission: the reviewer sees the ledger as it is now.
    plans.write_lines(conn, plan, [plans.Line(x["spec_id"], x["planned"], x["note"]) for x in plan["lines"]])
    update_versioned(
        conn,
        "usage_plans",
        plan_id,
        body.version,
        {
            "state": "submitted",
            "submitted_by": principal.user_id,
            "submitted_at": datetime.now().astimezone(),
            "return_reason": None,  # the reviewer's earlier reason has been answered by this version
        },
        "使用计划",
    )
    return plans.plan(conn, principal.unit_id, plan_id)


@router.post("/usage-plans/{plan_id}/decision", response_model=PlanOut, summary="审核计划：批准或退回（须说明原因）")
def decide_plan(plan_id: Id, body: PlanDecisionIn, principal: CurrentUser, conn: Conn) -> dict[str, Any]:
    plan = plans.plan(conn, principal.unit_id, plan_id)
    require_writer(principal)
    if plan["reviewer_unit_id"] != principal.unit_id:
        raise forbidden("此计划须由其上级单位审核")
    if plan["state"] != "submitted":
        raise conflict("plan_state", "只有已提交的计划可以审核")
    set_action(conn, "plan.decide")
    update_versioned(
        conn,
        "usage_plans",
        plan_id,
        body.version,
        {
            "state": "approved" if body.approve else "returned",
            "decided_by": principal.user_id,
            "decided_at": datetime.now().astimezone(),
            "return_reason": None if body.approve else body.reason,
        },
        "使用计划",
    )
    return plans.plan(conn, principal.unit_id, plan_id)
