"""Forms 1–5 as workflows (CM5–CM9, UM2): submitted for a unit, filed level by level up to the
provincial CDC, then applied to the registry.

A form goes to the applying unit's parent, each level's administrator forwards it to the next,
and the province files it (备案). Nothing is ever deleted: a returned or withdrawn form stays,
and so does everything it changed. Each state change takes the form row ``FOR UPDATE`` and,
where the client says which version it saw, refuses a stale one (409 ``version_conflict``), so
two administrators acting on one form at the same moment cannot both succeed.

The refusals come in a fixed order — 404 (cannot see it), 403 (may not), 409 (wrong state or
version), 422 (the form's own problems) — so a unit never learns more about a form than it may.
"""

from __future__ import annotations

from typing import Any

import psycopg
from psycopg.types.json import Jsonb

from coldchain.core.db import fetch_one, set_action
from coldchain.core.errors import conflict, forbidden, not_found
from registry.forms.applying import apply_form1, apply_form3, apply_form4, apply_form5
from registry.forms.facts import UserFacts
from registry.forms.hardware_checks import check_form2, check_registry_form
from registry.forms.loading import load_registry_facts, load_unit, load_user_facts
from registry.forms.payloads import AnyForm, Form1, Form2, Form3, Form5, stored_payload
from registry.forms.problems import form_invalid
from registry.forms.records import STATUS_NAMES, VISIBLE, StepAction
from registry.forms.user_checks import check_form5, form5_refusal
from registry.permissions import Actor, require_may_write
from registry.units import in_jurisdiction, require_in_jurisdiction

_LOCK = f"""
SELECT f.id, f.form_no, f.form_type, f.unit_id, f.status, f.current_unit_id, cu.name AS current_unit_name,
       cu.parent_id AS current_parent_id, f.payload, f.submitted_by, f.version
FROM forms f LEFT JOIN units cu ON cu.id = f.current_unit_id
WHERE f.id = %(id)s AND {VISIBLE}
FOR UPDATE OF f
"""  # noqa: S608 — constant SQL fragments, parameters bound
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


def _locked(conn: psycopg.Connection, actor: Actor, form_id: int, expected_version: int | None) -> dict[str, Any]:
    """The form, locked until commit; 404 if the actor cannot see it, then 403 for read-only
    roles, then 409 if the actor saw another version."""
    form = fetch_one(conn, _LOCK, {"id": form_id, "scope": actor.unit.id})
    if form is None:
        raise not_found("表单")
    require_may_write(actor)
    if expected_version is not None and expected_version != form["version"]:
        raise conflict(
            "version_conflict",
            f"表单已被他人处理（当前版本 {form['version']}），请刷新后重试",
            {"version": form["version"]},
        )
    return form


def _require_in_flow(form: dict[str, Any], verb: str) -> None:
    if form["status"] != "submitted":
        raise conflict("form_state", f"表单{STATUS_NAMES[form['status']]}，不能{verb}")


def _require_at_my_unit(form: dict[str, Any], actor: Actor, verb: str) -> None:
    if form["current_unit_id"] != actor.unit.id:
        raise forbidden(f"表单当前由「{form['current_unit_name']}」处理，只有该单位的管理员可以{verb}")


def _step(
    conn: psycopg.Connection, form_id: int, action: StepAction, unit_id: int, user_id: int, comment: str | None
) -> None:
    conn.execute(_STEP, {"form": form_id, "action": action, "unit": unit_id, "user": user_id, "comment": comment})


def _close(conn: psycopg.Connection, form_id: int, status: str) -> None:
    conn.execute(_CLOSE, {"id": form_id, "status": status})


def _form5_facts(conn: psycopg.Connection, actor: Actor, body: Form5, *, lock: bool = False) -> UserFacts:
    """Form 5's facts, with the submitter's jurisdiction enforced: a user or unit outside it looks
    exactly like one that does not exist (404)."""
    facts = load_user_facts(conn, body, lock=lock)
    if body.change_type == "add":
        wanted = body.after.unit_id if body.after is not None else None
        if wanted is not None and (facts.target_unit is None or not in_jurisdiction(conn, actor.unit, wanted)):
            raise not_found("单位")
    elif body.target_user_id is not None and (
        facts.target is None or not in_jurisdiction(conn, actor.unit, facts.target.unit.id)
    ):
        raise not_found("用户")
    return facts


def submit(conn: psycopg.Connection, actor: Actor, body: AnyForm) -> int:
    """File a new form for a unit of the jurisdiction, checked now (422 with every problem); it
    goes to the unit's parent (the province's own forms stay at the province). Its id."""
    require_in_jurisdiction(conn, actor.unit, body.unit_id)
    unit = load_unit(conn, body.unit_id)
    if unit is None:
        raise not_found("单位")
    stored = body.model_dump(mode="json")
    if isinstance(body, Form5):
        facts = _form5_facts(conn, actor, body)
        problems = check_form5(body, facts)
        stored["before"] = facts.target.snapshot() if facts.target is not None else None
    elif isinstance(body, Form2):
        problems = check_form2(body)
    else:
        problems = check_registry_form(body, load_registry_facts(conn, body))
    if problems:
        raise form_invalid(body.form_type, problems)
    set_action(conn, f"form{body.form_type}.submit")
    row = fetch_one(
        conn,
        _INSERT,
        {
            "type": body.form_type,
            "unit": unit.id,
            "current": unit.parent_id or unit.id,
            "payload": Jsonb(stored),
            "name": body.submitter_name,
            "phone": body.submitter_phone,
            "user": actor.user_id,
        },
    )
    assert row is not None
    _step(conn, row["id"], "submit", unit.id, actor.user_id, body.remarks)
    return int(row["id"])


def forward(conn: psycopg.Connection, actor: Actor, form_id: int, comment: str | None, version: int | None) -> None:
    """The form's current unit passes it to the level above."""
    form = _locked(conn, actor, form_id, version)
    _require_in_flow(form, "上报")
    _require_at_my_unit(form, actor, "上报")
    if form["current_parent_id"] is None:
        raise conflict("form_state", "表单已在省级，请备案，无需再上报")
    set_action(conn, "form.forward")
    conn.execute(_FORWARD, {"id": form_id, "next": form["current_parent_id"]})
    _step(conn, form_id, "forward", actor.unit.id, actor.user_id, comment)


def file(conn: psycopg.Connection, actor: Actor, form_id: int, comment: str | None, version: int | None) -> None:
    """The province files (备案) a form that has reached it."""
    form = _locked(conn, actor, form_id, version)
    _require_in_flow(form, "备案")
    _require_at_my_unit(form, actor, "备案")
    if form["current_parent_id"] is not None:
        raise conflict("form_state", f"表单尚未报到省级（当前在「{form['current_unit_name']}」），请先逐级上报")
    set_action(conn, "form.file")
    _close(conn, form_id, "filed")
    _step(conn, form_id, "file", actor.unit.id, actor.user_id, comment)


def send_back(conn: psycopg.Connection, actor: Actor, form_id: int, reason: str, version: int | None) -> None:
    """The form's current unit returns it (办结: the site files a new one)."""
    form = _locked(conn, actor, form_id, version)
    _require_in_flow(form, "退回")
    _require_at_my_unit(form, actor, "退回")
    set_action(conn, "form.return")
    _close(conn, form_id, "returned")
    _step(conn, form_id, "return", actor.unit.id, actor.user_id, reason)


def withdraw(conn: psycopg.Connection, actor: Actor, form_id: int, comment: str | None, version: int | None) -> None:
    """The submitter takes back a form still in flow."""
    form = _locked(conn, actor, form_id, version)
    _require_in_flow(form, "撤回")
    if form["submitted_by"] != actor.user_id:
        raise forbidden("只有提交人可以撤回表单")
    set_action(conn, "form.withdraw")
    _close(conn, form_id, "withdrawn")
    _step(conn, form_id, "withdraw", form["unit_id"], actor.user_id, comment)


def apply(conn: psycopg.Connection, actor: Actor, form_id: int, version: int) -> str | None:
    """Carry out a filed form, re-checked against the registry as it is now (rows locked). Form 5
    only by the system administrator UM1 names; Forms 1, 3, 4 by an administrator of a county or
    above whose jurisdiction holds the applying unit. The one-time set-up token of a user Form 5
    added, else None."""
    form = _locked(conn, actor, form_id, version)
    form_type = form["form_type"]
    if form_type == 2:
        raise conflict("form_state", "附表2 为申请，无需执行")
    if form["status"] != "filed":
        raise conflict("form_state", f"表单{STATUS_NAMES[form['status']]}，只有省级备案后才能执行")
    payload = stored_payload(form["payload"])
    token: str | None = None
    if isinstance(payload, Form5):
        facts = load_user_facts(conn, payload, lock=True)
        if (reason := form5_refusal(actor, payload, facts)) is not None:
            raise forbidden(reason)
        before = form["payload"].get("before") or {}
        problems = check_form5(payload, facts, before_version=before.get("version"))
        if problems:
            raise form_invalid(form_type, problems)
        set_action(conn, "form5.apply")
        result, token = apply_form5(conn, payload, facts, actor_id=actor.user_id)
    elif isinstance(payload, Form2):  # pragma: no cover - refused above
        raise conflict("form_state", "附表2 为申请，无需执行")
    else:
        if actor.unit.level == "township":
            raise forbidden("乡级单位不能自行执行设备变更，由县级或以上的管理员执行")
        if not in_jurisdiction(conn, actor.unit, form["unit_id"]):
            raise forbidden("只有申请单位所属辖区的县级及以上管理员可以执行")
        registry = load_registry_facts(conn, payload, lock=True)
        problems = check_registry_form(payload, registry)
        if problems:
            raise form_invalid(form_type, problems)
        set_action(conn, f"form{form_type}.apply")
        if isinstance(payload, Form1):
            result = apply_form1(conn, payload, registry, actor_id=actor.user_id, form_no=form["form_no"])
        elif isinstance(payload, Form3):
            result = apply_form3(conn, payload, registry, actor_id=actor.user_id, form_no=form["form_no"])
        else:
            result = apply_form4(conn, payload, registry)
    conn.execute(_APPLIED, {"id": form_id, "user": actor.user_id, "result": Jsonb(result)})
    _step(conn, form_id, "apply", actor.unit.id, actor.user_id, None)
    return token
