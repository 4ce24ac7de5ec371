"""The alarm settings people keep: a compartment's rule parameters, a unit's escalation timing, and
where a unit's notifications go (CM15, DC4).

Why each save is checked here before it is written: the scheduler reads these on every pass, and a
value that makes no sense (a negative hold, steps not increasing, a webhook to a host not allowed)
must be refused to the person who typed it, with a Chinese message, rather than break alarms for
a unit later. Saves carry the version the person read, so two administrators never silently
overwrite each other.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import psycopg
from psycopg.types.json import Jsonb

from alarms.escalation import policy_for
from alarms.rules import params_for
from coldchain.core.db import fetch_all, fetch_one, set_action
from coldchain.core.errors import Refused, conflict, invalid, not_found
from coldchain.core.outbound import OutboundPolicy, OutboundRefused, check_url, mask_url
from coldchain.core.settings import Settings
from coldchain.core.sqlparts import in_scope

# ---------------------------------------------------------------------------------------------
# A compartment's rule parameters

_PARAMS = f"""
SELECT c.id, c.mode, c.t_min, c.t_max, coalesce(p.params, '{{}}'::jsonb) AS overrides, coalesce(p.version, 0) AS version
FROM compartments c JOIN equipment e ON e.id = c.equipment_id
LEFT JOIN alarm_rule_params p ON p.compartment_id = c.id
WHERE c.id = %(id)s AND {in_scope("e.unit_id")}
"""  # noqa: S608 — constant SQL fragments, parameters bound
# The version is checked again in the write: after waiting for the compartment's lock, the row read
# before is as of that statement's start, so a save committed meanwhile was not seen there.
_SAVE_PARAMS = """
INSERT INTO alarm_rule_params (compartment_id, params, updated_by) VALUES (%(c)s, %(p)s, %(u)s)
ON CONFLICT (compartment_id) DO UPDATE
SET params = EXCLUDED.params, version = alarm_rule_params.version + 1, updated_at = now(),
    updated_by = EXCLUDED.updated_by
WHERE alarm_rule_params.version = %(v)s
"""
_PARAMS_VERSION = "SELECT version FROM alarm_rule_params WHERE compartment_id = %(c)s"


def params_row(conn: psycopg.Connection, scope: int, compartment_id: int, *, lock: bool = False) -> dict[str, Any]:
    """The compartment's mode, limits, overrides and their version, if in ``scope``'s jurisdiction;
    ``lock`` takes the compartment's lock, which every save of its parameters takes first."""
    query = _PARAMS + " FOR UPDATE OF c" if lock else _PARAMS
    row = fetch_one(conn, query, {"id": compartment_id, "scope": scope})
    if row is None:
        raise not_found("温区")
    return row


def params_view(row: Mapping[str, Any]) -> dict[str, Any]:
    """The overrides as saved and the parameters in effect (durations as ``H:MM:SS``)."""
    return {
        "compartment_id": row["id"],
        "overrides": row["overrides"],
        "version": row["version"],
        "effective": _effective(row["mode"], row["t_min"], row["t_max"], row["overrides"]),
    }


def save_params(
    conn: psycopg.Connection, row: Mapping[str, Any], user_id: int, version: int, overrides: Mapping[str, Any]
) -> None:
    """Save a compartment's overrides over the version read (``row``, read with ``lock``)."""
    if row["version"] != version:
        raise _params_conflict(row["version"], version)
    _effective(row["mode"], row["t_min"], row["t_max"], overrides)
    set_action(conn, "alarm_params.update")
    written = conn.execute(_SAVE_PARAMS, {"c": row["id"], "p": Jsonb(dict(overrides)), "u": user_id, "v": version})
    if written.rowcount == 0:
        current = fetch_one(conn, _PARAMS_VERSION, {"c": row["id"]})
        raise _params_conflict(current["version"] if current else 0, version)


def _effective(mode: str, t_min: Any, t_max: Any, overrides: Mapping[str, Any]) -> dict[str, Any]:
    try:
        params = params_for(mode, None if t_min is None else float(t_min), float(t_max), overrides)
    except (ValueError, TypeError) as exc:
        raise invalid(f"报警参数无效：{exc}") from None
    return {k: (str(v) if isinstance(v, timedelta) else v) for k, v in vars(params).items()}


def _params_conflict(current: int, yours: int) -> Refused:
    return conflict(
        "version_conflict",
        f"报警参数已被他人修改（当前版本 {current}），请刷新后重试",
        {"current_version": current, "your_version": yours},
    )


# ---------------------------------------------------------------------------------------------
# A unit's escalation timing

_ESCALATION = "SELECT steps, reminder, resolved_reminder, version FROM unit_escalation WHERE unit_id = %(u)s"
_LOCK_UNIT = "SELECT 1 FROM units WHERE id = %(u)s FOR UPDATE"
_SAVE_ESCALATION = """
INSERT INTO unit_escalation (unit_id, steps, reminder, resolved_reminder)
VALUES (%(u)s, %(steps)s, %(reminder)s, %(resolved_reminder)s)
ON CONFLICT (unit_id) DO UPDATE SET steps = EXCLUDED.steps, reminder = EXCLUDED.reminder,
    resolved_reminder = EXCLUDED.resolved_reminder, version = unit_escalation.version + 1
"""


def escalation_of(conn: psycopg.Connection, settings: Settings, unit_id: int) -> dict[str, Any]:
    """The unit's own timing (None where it uses the settings), the timing in effect, its version."""
    return _escalation_view(settings, unit_id, fetch_one(conn, _ESCALATION, {"u": unit_id}))


def save_escalation(
    conn: psycopg.Connection,
    settings: Settings,
    unit_id: int,
    version: int,
    wanted: Mapping[str, str | None],
) -> dict[str, Any]:
    """Save the unit's ``steps``, ``reminder`` and ``resolved_reminder`` over the version read;
    nonsense (steps not increasing, an unreadable duration) is refused before anything is written."""
    conn.execute(_LOCK_UNIT, {"u": unit_id})
    row = fetch_one(conn, _ESCALATION, {"u": unit_id})
    current = row["version"] if row else 0
    if current != version:
        raise conflict(
            "version_conflict",
            f"升级时限已被他人修改（当前版本 {current}），请刷新后重试",
            {"current_version": current, "your_version": version},
        )
    _escalation_view(settings, unit_id, wanted)
    set_action(conn, "unit.escalation")
    conn.execute(_SAVE_ESCALATION, {"u": unit_id, **wanted})
    return escalation_of(conn, settings, unit_id)


def _escalation_view(settings: Settings, unit_id: int, row: Mapping[str, Any] | None) -> dict[str, Any]:
    overrides = row or {}
    try:
        policy = policy_for(settings, overrides)
    except ValueError as exc:
        raise invalid(str(exc)) from None
    return {
        "unit_id": unit_id,
        "steps": overrides.get("steps"),
        "reminder": overrides.get("reminder"),
        "resolved_reminder": overrides.get("resolved_reminder"),
        "version": overrides.get("version", 0),
        "effective_steps": [str(s) for s in policy.steps],
        "effective_reminder": str(policy.reminder),
        "effective_resolved_reminder": str(policy.resolved_reminder),
    }


# ---------------------------------------------------------------------------------------------
# Where a unit's notifications go


@dataclass(frozen=True)
class Route:
    """One destination a person asks for: a level's WeCom robot or signed webhook. ``url`` may be
    the masked form read back (``key=***``), which names the saved one; ``secret`` None keeps the
    secret saved for the same webhook URL."""

    level: int
    channel: str
    url: str
    secret: str | None


_ROUTES = """
SELECT id, unit_id, level, channel, url, secret IS NOT NULL AS has_secret FROM notification_routes
WHERE unit_id = %(u)s ORDER BY level, channel, id
"""
_SAVED_ROUTES = "SELECT channel, url, secret FROM notification_routes WHERE unit_id = %(u)s"
_DELETE_ROUTES = "DELETE FROM notification_routes WHERE unit_id = %(u)s"
_INSERT_ROUTE = """
INSERT INTO notification_routes (unit_id, level, channel, url, secret)
VALUES (%(u)s, %(level)s, %(channel)s, %(url)s, %(secret)s)
"""


def routes_of(conn: psycopg.Connection, unit_id: int) -> list[dict[str, Any]]:
    """A robot's key and a webhook's secret never leave the server: URLs masked, secrets as a flag."""
    return [{**r, "url": mask_url(r["url"])} for r in fetch_all(conn, _ROUTES, {"u": unit_id})]


def replace_routes(
    conn: psycopg.Connection, policy: OutboundPolicy, unit_id: int, routes: Sequence[Route]
) -> list[dict[str, Any]]:
    """Replace all the unit's destinations; each is checked against the outbound policy first."""
    conn.execute(_LOCK_UNIT, {"u": unit_id})
    saved = fetch_all(conn, _SAVED_ROUTES, {"u": unit_id})
    wanted: dict[tuple[int, str, str], str | None] = {}
    for n, r in enumerate(routes, start=1):
        url = r.url
        if "***" in url:
            url = next((s["url"] for s in saved if s["channel"] == r.channel and mask_url(s["url"]) == url), "")
            if not url:
                raise invalid(f"第 {n} 条通知去处：地址中的 *** 是隐藏的密钥，新地址请填写完整")
        try:
            check_url(url, policy)
        except OutboundRefused as exc:
            raise invalid(f"第 {n} 条通知去处（{r.level} 级）：{exc}", details={"index": n - 1}) from None
        secret = r.secret
        if r.channel == "webhook" and not secret:
            secret = next((s["secret"] for s in saved if s["channel"] == "webhook" and s["url"] == url), None)
            if not secret:
                raise invalid("webhook 必须设置 HMAC 密钥（至少 16 个字符），接收方据此验证消息来自本系统")
        wanted[(r.level, r.channel, url)] = secret
    set_action(conn, "unit.notification_routes")
    conn.execute(_DELETE_ROUTES, {"u": unit_id})
    for (level, channel, url), secret in wanted.items():
        conn.execute(_INSERT_ROUTE, {"u": unit_id, "level": level, "channel": channel, "url": url, "secret": secret})
    return routes_of(conn, unit_id)
