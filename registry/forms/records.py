"""Reading forms: the list and one form with its steps, as the units that may see them see them.

A form is visible to the units whose jurisdiction holds its unit and to every unit it has passed
through; to anyone else it does not exist (404 for every id, never 403), so ids cannot be probed
across counties. Every step is a ``form_steps`` row (who, which unit, when), never deleted.
"""

from __future__ import annotations

from typing import Any, Literal

import psycopg

from coldchain.core.db import fetch_all, fetch_one
from coldchain.core.errors import not_found
from coldchain.core.sqlparts import Filters, in_scope
from registry.forms.payloads import FORM_NAMES

FormStatus = Literal["submitted", "filed", "returned", "applied", "withdrawn"]
StepAction = Literal["submit", "forward", "file", "return", "apply", "withdraw"]

STATUS_NAMES: dict[str, str] = {
    "submitted": "流转中",
    "filed": "已备案",
    "returned": "已退回",
    "applied": "已执行",
    "withdrawn": "已撤回",
}
ACTION_NAMES: dict[str, str] = {
    "submit": "提交",
    "forward": "上报",
    "file": "备案",
    "return": "退回",
    "apply": "执行",
    "withdraw": "撤回",
}

# Visible to unit %(scope)s: the form's unit is in its jurisdiction, or the form is at or has
# passed through it.
VISIBLE = f"""
({in_scope("f.unit_id")}
 OR f.current_unit_id = %(scope)s
 OR EXISTS (SELECT 1 FROM form_steps s WHERE s.form_id = f.id AND s.unit_id = %(scope)s))
"""  # noqa: S608 — constant SQL fragments
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
_ONE = f"SELECT {_COLUMNS} FROM {_FROM} WHERE f.id = %(id)s AND {VISIBLE}"  # noqa: S608 — constant SQL fragments
_LIST = f"""
SELECT {_COLUMNS} FROM {_FROM}
WHERE {{where}}
ORDER BY f.id DESC
LIMIT %(limit)s OFFSET %(offset)s
"""  # noqa: S608 — constant SQL fragments, parameters bound
_STEPS = """
SELECT s.id, s.action, s.unit_id, n.name AS unit_name, s.user_id, u.username, u.real_name, s.ts, s.comment
FROM form_steps s JOIN units n ON n.id = s.unit_id JOIN users u ON u.id = s.user_id
WHERE s.form_id = %(id)s
ORDER BY s.id
"""


def _named(row: dict[str, Any]) -> dict[str, Any]:
    return row | {"form_type_name": FORM_NAMES[row["form_type"]], "status_name": STATUS_NAMES[row["status"]]}


def list_forms(
    conn: psycopg.Connection,
    scope: int,
    *,
    status: FormStatus | None,
    form_type: int | None,
    unit_id: int | None,
    pending_for_me: bool,
    limit: int,
    offset: int,
) -> list[dict[str, Any]]:
    """The forms unit ``scope`` may see, newest first; ``pending_for_me``: only those in flow that
    wait at ``scope`` now."""
    pending = ["f.status = 'submitted' AND f.current_unit_id = %(scope)s"] if pending_for_me else []
    f = Filters({"scope": scope, "limit": limit, "offset": offset}, VISIBLE, *pending)
    f.eq("f.status", "status", status).eq("f.form_type", "form_type", form_type).eq("f.unit_id", "unit", unit_id)
    return [_named(r) for r in fetch_all(conn, f.query(_LIST), f.params)]


def form_detail(conn: psycopg.Connection, scope: int, form_id: int) -> dict[str, Any]:
    """One form unit ``scope`` may see, with its steps in order; 404 if it may not."""
    row = fetch_one(conn, _ONE, {"id": form_id, "scope": scope})
    if row is None:
        raise not_found("表单")
    steps = fetch_all(conn, _STEPS, {"id": form_id})
    return _named(row) | {"steps": [s | {"action_name": ACTION_NAMES[s["action"]]} for s in steps]}
