"""Forms 1–5 as workflows (CM5–CM9, UM2): submitted for a unit, filed level by level up to the
provincial CDC, then applied to the registry.

A form goes to the applying unit's parent, each level's administrator forwards it to the next,
and the province files it (备案). Every step is a ``form_steps`` row (who, which unit, when), and
nothing is ever deleted: a returned or withdrawn form stays, and so does everything it changed.

Each state change takes the form row ``FOR UPDATE`` and, where the client says which version it
saw, refuses a stale one (409 ``version_conflict``), so two administrators acting on one form at
the same moment cannot both succeed. A form is visible to the units whose jurisdiction holds its
unit and to every unit it has passed through; to anyone else it does not exist (404 for every id,
never 403), so ids cannot be probed across counties.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

import psycopg
from fastapi import APIRouter, Body, Path, Query
from psycopg.types.json import Jsonb
from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from api.deps import (
    Conn,
    CurrentUser,
    Principal,
    require_unit_in_scope,
    require_writer,
    set_action,
    unit_in_scope,
)
from coldchain.core.db import fetch_all, fetch_one
from coldchain.core.errors import conflict, forbidden, not_found
from registry.forms import (
    FORM_NAMES,
    MAX_ID,
    Form1,
    Form2,
    Form3,
    Form5,
    FormPayload,
    Remark,
    UserFacts,
    apply_form1,
    apply_form3,
    apply_form4,
    apply_form5,
    check_form2,
    check_form5,
    check_registry_form,
    form5_refusal,
    form_invalid,
    load_registry_facts,
    load_unit,
    load_user_facts,
    stored_payload,
)

router = APIRouter(tags=["表单"])

FormId = Annotated[int, Path(ge=1, le=MAX_ID, description="表单 id")]
Version = Annotated[int, Field(ge=1, le=2**31 - 1, description="客户端看到的表单版本；不一致则拒绝（防止重复处理）")]
Status = Literal["submitted", "filed", "returned", "applied", "withdrawn"]

STATUS_NAMES: dict[str, str] = {
    "submitted": "流转中", "filed": "已备案", "returned": "已退回", "applied": "已执行", "withdrawn": "已撤回",
}
ACTION_NAMES: dict[str, str] = {
    "submit": "提交", "forward": "上报", "file": "备案", "return": "退回", "apply": "执行", "withdraw": "撤回",
}


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


class StepIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    comment: Remark | None = Field(default=None, description="意见")
    version: Version | None = None


class ReturnIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    reason: Annotated[str, StringConstraints(strip_whitespace=True, min_length=2, max_length=500,
                                             pattern=r"^[^\x00-\x08\x0b\x0c\x0e-\x1f\x7f]+$")] = Field(
        description="退回原因")
    version: Version | None = None


class ApplyIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    version: Version


# ---------------------------------------------------------------------------------------------
# SQL

# Visible: the form's unit is in my jurisdiction, or the form is at / has passed through my unit.
_VISIBLE = """
(f.unit_id IN (SELECT descendant_id FROM unit_tree WHERE ancestor_id = %(me)s)
 OR f.current_unit_id = %(me)s
 OR EXISTS (SELECT 1 FROM form_steps s WHERE s.form_id = f.id AND s.unit_id = %(me)s))
"""
_COLUMNS = """
f.id, f.form_no, f.form_type, f.unit_id, n.name AS unit_name, n.code AS unit_code, f.status, f.current_unit_id,
cu.name AS current_unit_name, f.payload, f.submitter_name, f.submitter_phone, f.submitted_by,
su.username AS submitted_by_username, f.submitted_at, f.filed_at, f.applied_at, f.applied_by,
au.username AS applied_by_username, f.result, f.version
"""
_FROM = """
forms f
JOIN units n ON n.id = f.unit_id
LEFT JOIN units cu ON cu.id = f.current_unit_id
JOIN users su ON su.id = f.submitted_by
LEFT JOIN users au ON au.id = f.applied_by
"""
_ONE = f"SELECT {_COLUMNS} FROM {_FROM} WHERE f.id = %(id)s AND {_VISIBLE}"  # noqa: S608 — constant SQL fragments, parameters bound
_LIST = f"""
SELECT {_COLUMNS} FROM {_FROM}
WHERE {_VISIBLE}
  AND (%(status)s::text IS NULL OR f.status = %(status)s)
  AND (%(form_type)s::int IS NULL OR f.form_type = %(form_type)s)
  AND (%(unit)s::bigint IS NULL OR f.unit_id = %(unit)s)
  AND (NOT %(pending)s OR (f.status = 'submitted' AND f.current_unit_id = %(me)s))
ORDER BY f.id DESC
LIMIT %(limit)s OFFSET %(offset)s
"""  # noqa: S608 — constant SQL fragments, parameters bound
_LOCK = f"""
SELECT f.id, f.form_no, f.form_type, f.unit_id, f.status, f.current_unit_id, cu.name AS current_unit_name,
       cu.parent_id AS current_parent_id, f.payload, f.submitted_by, f.version
FROM forms f LEFT JOIN units cu ON cu.id = f.current_unit_id
WHERE f.id = %(id)s AND {_VISIBLE}
FOR UPDATE OF f
"""  # noqa: S608 — constant SQL fragments, parameters bound
_STEPS = """
SELECT s.id, s.action, s.unit_id, n.name AS unit_name, s.user_id, u.username, u.real_name, s.ts, s.comment
FROM form_steps s JOIN units n ON n.id = s.unit_id JOIN users u ON u.id = s.user_id
WHERE s.form_id = %(id)s
ORDER BY s.id
"""
# The number carries the form type, the Beijing date and the id: F3-20261124-000012.
_INSERT = """
WITH next AS (SELECT nextval(pg_get_serial_sequence('forms', 'id')) AS id)
INSERT INTO forms (id, form_no, form_type, unit_id, status, current_unit_id, payload, submitter_name,
                   submitter_phone, submitted_by)
SELECT id, 'F' || %(type)s::text || '-' || to_char(now() AT TIME ZONE 'Asia/Shanghai', 'YYYYMMDD') || '-'
           || lpad(id::text, 6, '0'),
       %(type)s, %(unit)s, 'submitted', %(current)s, %(payload)s, %(name)s, %(phone)s, %(user)s
FROM next
RETURNING id
"""
_STEP = """
INSERT INTO form_steps (form_id, action, unit_id, user_id, comment)
VALUES (%(form)s, %(action)s, %(unit)s, %(user)s, %(comment)s)
"""
_FORWARD = "UPDATE forms SET current_unit_id = %(next)s, version = version + 1 WHERE id = %(id)s"
_CLOSE = """
UPDATE forms SET status = %(status)s, current_unit_id = NULL, version = version + 1,
                 filed_at = CASE WHEN %(status)s = 'filed' THEN now() ELSE filed_at END
WHERE id = %(id)s
"""
_APPLIED = """
UPDATE forms SET status = 'applied', applied_at = now(), applied_by = %(user)s, result = %(result)s,
                 version = version + 1
WHERE id = %(id)s
"""


# ---------------------------------------------------------------------------------------------
# Helpers


def _detail(conn: psycopg.Connection, principal: Principal, form_id: int) -> dict[str, Any]:
    row = fetch_one(conn, _ONE, {"id": form_id, "me": principal.unit_id})
    if row is None:
        raise not_found("表单")
    steps = fetch_all(conn, _STEPS, {"id": form_id})
    return _named(row) | {"steps": [s | {"action_name": ACTION_NAMES[s["action"]]} for s in steps]}


def _named(row: dict[str, Any]) -> dict[str, Any]:
    return row | {"form_type_name": FORM_NAMES[row["form_type"]], "status_name": STATUS_NAMES[row["status"]]}


def _locked(
    conn: psycopg.Connection, principal: Principal, form_id: int, expected_version: int | None
) -> dict[str, Any]:
    """The form, locked until commit; 404 if the caller cannot see it, then 403 for read-only
    roles, then 409 if the caller saw another version."""
    form = fetch_one(conn, _LOCK, {"id": form_id, "me": principal.unit_id})
    if form is None:
        raise not_found("表单")
    require_writer(principal)
    if expected_version is not None and expected_version != form["version"]:
        raise conflict("version_conflict", f"表单已被他人处理（当前版本 {form['version']}），请刷新后重试",
                       {"version": form["version"]})
    return form


def _require_in_flow(form: dict[str, Any], verb: str) -> None:
    if form["status"] != "submitted":
        raise conflict("form_state", f"表单{STATUS_NAMES[form['status']]}，不能{verb}")


def _require_at_my_unit(form: dict[str, Any], principal: Principal, verb: str) -> None:
    if form["current_unit_id"] != principal.unit_id:
        raise forbidden(f"表单当前由「{form['current_unit_name']}」处理，只有该单位的管理员可以{verb}")


def _step(conn: psycopg.Connection, form_id: int, action: str, unit_id: int, user_id: int, comment: str | None) -> None:
    conn.execute(_STEP, {"form": form_id, "action": action, "unit": unit_id, "user": user_id, "comment": comment})


def _form5_facts(conn: psycopg.Connection, principal: Principal, body: Form5, *, lock: bool = False) -> UserFacts:
    """Form 5's facts, with the submitter's jurisdiction enforced: a user or unit outside it looks
    exactly like one that does not exist (404)."""
    facts = load_user_facts(conn, body, lock=lock)
    if body.change_type == "add":
        wanted = body.after.unit_id if body.after is not None else None
        if wanted is not None and (facts.target_unit is None or not unit_in_scope(conn, principal, wanted)):
            raise not_found("单位")
    elif body.target_user_id is not None and (
        facts.target is None or not unit_in_scope(conn, principal, facts.target.unit.id)
    ):
        raise not_found("用户")
    return facts


# ---------------------------------------------------------------------------------------------
# Reading


@router.get("/forms", response_model=list[FormOut], summary="表单列表（本辖区及经手的表单，新在前）")
def list_forms(
    principal: CurrentUser,
    conn: Conn,
    status: Status | None = None,
    form_type: Annotated[int | None, Query(ge=1, le=5)] = None,
    unit_id: Annotated[int | None, Query(ge=1, le=MAX_ID)] = None,
    pending_for_me: Annotated[bool, Query(description="只看当前在本单位待处理的表单")] = False,
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
    offset: Annotated[int, Query(ge=0, le=10**6)] = 0,
) -> list[dict[str, Any]]:
    if unit_id is not None:
        require_unit_in_scope(conn, principal, unit_id)
    rows = fetch_all(conn, _LIST, {
        "me": principal.unit_id, "status": status, "form_type": form_type, "unit": unit_id,
        "pending": pending_for_me, "limit": limit, "offset": offset,
    })
    return [_named(r) for r in rows]


@router.get("/forms/{form_id}", response_model=FormDetail, summary="表单详情及流转记录")
def get_form(form_id: FormId, principal: CurrentUser, conn: Conn) -> dict[str, Any]:
    return _detail(conn, principal, form_id)


# ---------------------------------------------------------------------------------------------
# The workflow


@router.post("/forms", status_code=201, response_model=FormDetail, summary="提交表单（附表1–5），逐级上报")
def submit_form(
    body: Annotated[FormPayload, Body(description="按 form_type 区分的附表内容")], principal: CurrentUser, conn: Conn
) -> dict[str, Any]:
    require_writer(principal)
    require_unit_in_scope(conn, principal, body.unit_id)
    unit = load_unit(conn, body.unit_id)
    if unit is None:
        raise not_found("单位")
    stored = body.model_dump(mode="json")
    if isinstance(body, Form5):
        facts = _form5_facts(conn, principal, body)
        problems = check_form5(body, facts)
        stored["before"] = facts.target.snapshot() if facts.target is not None else None
    elif isinstance(body, Form2):
        problems = check_form2(body)
    else:
        problems = check_registry_form(body, load_registry_facts(conn, body))
    if problems:
        raise form_invalid(body.form_type, problems)
    set_action(conn, f"form{body.form_type}.submit")
    row = fetch_one(conn, _INSERT, {
        "type": body.form_type, "unit": unit.id, "current": unit.parent_id or unit.id, "payload": Jsonb(stored),
        "name": body.submitter_name, "phone": body.submitter_phone, "user": principal.user_id,
    })
    assert row is not None
    _step(conn, row["id"], "submit", unit.id, principal.user_id, body.remarks)
    return _detail(conn, principal, row["id"])


@router.post("/forms/{form_id}/forward", response_model=FormDetail, summary="审核通过，上报上一级")
def forward_form(form_id: FormId, principal: CurrentUser, conn: Conn, body: StepIn | None = None) -> dict[str, Any]:
    body = body or StepIn()
    form = _locked(conn, principal, form_id, body.version)
    _require_in_flow(form, "上报")
    _require_at_my_unit(form, principal, "上报")
    if form["current_parent_id"] is None:
        raise conflict("form_state", "表单已在省级，请备案，无需再上报")
    set_action(conn, "form.forward")
    conn.execute(_FORWARD, {"id": form_id, "next": form["current_parent_id"]})
    _step(conn, form_id, "forward", principal.unit_id, principal.user_id, body.comment)
    return _detail(conn, principal, form_id)


@router.post("/forms/{form_id}/file", response_model=FormDetail, summary="省级备案")
def file_form(form_id: FormId, principal: CurrentUser, conn: Conn, body: StepIn | None = None) -> dict[str, Any]:
    body = body or StepIn()
    form = _locked(conn, principal, form_id, body.version)
    _require_in_flow(form, "备案")
    _require_at_my_unit(form, principal, "备案")
    if form["current_parent_id"] is not None:
        raise conflict("form_state", f"表单尚未报到省级（当前在「{form['current_unit_name']}」），请先逐级上报")
    set_action(conn, "form.file")
    conn.execute(_CLOSE, {"id": form_id, "status": "filed"})
    _step(conn, form_id, "file", principal.unit_id, principal.user_id, body.comment)
    return _detail(conn, principal, form_id)


@router.post("/forms/{form_id}/return", response_model=FormDetail, summary="退回（办结；须重新填报）")
def return_form(form_id: FormId, body: ReturnIn, principal: CurrentUser, conn: Conn) -> dict[str, Any]:
    form = _locked(conn, principal, form_id, body.version)
    _require_in_flow(form, "退回")
    _require_at_my_unit(form, principal, "退回")
    set_action(conn, "form.return")
    conn.execute(_CLOSE, {"id": form_id, "status": "returned"})
    _step(conn, form_id, "return", principal.unit_id, principal.user_id, body.reason)
    return _detail(conn, principal, form_id)


@router.post("/forms/{form_id}/withdraw", response_model=FormDetail, summary="提交人撤回（流转中）")
def withdraw_form(form_id: FormId, principal: CurrentUser, conn: Conn, body: StepIn | None = None) -> dict[str, Any]:
    body = body or StepIn()
    form = _locked(conn, principal, form_id, body.version)
    _require_in_flow(form, "撤回")
    if form["submitted_by"] != principal.user_id:
        raise forbidden("只有提交人可以撤回表单")
    set_action(conn, "form.withdraw")
    conn.execute(_CLOSE, {"id": form_id, "status": "withdrawn"})
    _step(conn, form_id, "withdraw", form["unit_id"], principal.user_id, body.comment)
    return _detail(conn, principal, form_id)


@router.post("/forms/{form_id}/apply", response_model=ApplyOut, summary="执行已备案的表单（改动登记信息）")
def apply_form(form_id: FormId, body: ApplyIn, principal: CurrentUser, conn: Conn) -> dict[str, Any]:
    form = _locked(conn, principal, form_id, body.version)
    form_type = form["form_type"]
    if form_type == 2:
        raise conflict("form_state", "附表2 为申请，无需执行")
    if form["status"] != "filed":
        raise conflict("form_state", f"表单{STATUS_NAMES[form['status']]}，只有省级备案后才能执行")
    payload = stored_payload(form["payload"])
    token: str | None = None
    if isinstance(payload, Form5):
        facts = load_user_facts(conn, payload, lock=True)
        if (reason := form5_refusal(principal.actor, payload, facts)) is not None:
            raise forbidden(reason)
        before = form["payload"].get("before") or {}
        problems = check_form5(payload, facts, before_version=before.get("version"))
        if problems:
            raise form_invalid(form_type, problems)
        set_action(conn, "form5.apply")
        result, token = apply_form5(conn, payload, facts, actor_id=principal.user_id)
    elif isinstance(payload, Form2):  # pragma: no cover - refused above
        raise conflict("form_state", "附表2 为申请，无需执行")
    else:
        if principal.actor.unit.level == "township":
            raise forbidden("乡级单位不能自行执行设备变更，由县级或以上的管理员执行")
        if not unit_in_scope(conn, principal, form["unit_id"]):
            raise forbidden("只有申请单位所属辖区的县级及以上管理员可以执行")
        registry = load_registry_facts(conn, payload, lock=True)
        problems = check_registry_form(payload, registry)
        if problems:
            raise form_invalid(form_type, problems)
        set_action(conn, f"form{form_type}.apply")
        if isinstance(payload, Form1):
            result = apply_form1(conn, payload, registry, actor_id=principal.user_id, form_no=form["form_no"])
        elif isinstance(payload, Form3):
            result = apply_form3(conn, payload, registry, actor_id=principal.user_id, form_no=form["form_no"])
        else:
            result = apply_form4(conn, payload, registry)
    conn.execute(_APPLIED, {"id": form_id, "user": principal.user_id, "result": Jsonb(result)})
    _step(conn, form_id, "apply", principal.unit_id, principal.user_id, None)
    return _detail(conn, principal, form_id) | {"setup_token": token}
