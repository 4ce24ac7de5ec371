"""The life of an alarm, every transition in one place: opened, worsened or its cause changed,
acknowledged ("on site"), resolved, closed — and the single-use link that acknowledges from WeChat.

``active → acknowledged → resolved → closed``. The scheduler (:mod:`alarms.engine`) opens,
resolves, worsens and re-attributes alarms from what the rules decide; people acknowledge and
close them, through the API or the link a WeChat message carries (CM16). Why one module: each
transition is an ``alarms`` update plus an ``alarm_events`` row written in the same transaction,
and the conditions under which it is allowed (a closed alarm is never acknowledged, only a
resolved one is closed, at most one open alarm per subject and kind) must be stated once, not
once per caller.

The caller owns the transaction; people's actions name themselves for the audit rows
(``alarm.acknowledge``, ``alarm.close``), and a refusal is a
:class:`~coldchain.core.errors.Refused` that rolls it all back.
"""

from __future__ import annotations

import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Literal

import psycopg
from psycopg.types.json import Jsonb

from alarms.rules import AlarmOpened
from coldchain.core.db import fetch_one, set_action, set_actor
from coldchain.core.errors import Refused, conflict
from coldchain.core.tokens import token_hash

LINK_TTL = timedelta(hours=24)
"""How long a confirmation link in a WeChat message stays usable."""

Channel = Literal["web", "api", "wechat"]


@dataclass(frozen=True)
class Subject:
    """What an alarm is about: a compartment (with its probe and the limits in force) or a gateway."""

    unit_id: int
    compartment_id: int | None = None
    gateway_id: int | None = None
    equipment_id: int | None = None
    probe_id: int | None = None
    t_min: float | None = None
    t_max: float | None = None


_EVENT = "INSERT INTO alarm_events (alarm_id, action, details) VALUES (%(id)s, %(action)s, %(details)s)"
_PERSON_EVENT = """
INSERT INTO alarm_events (alarm_id, action, user_id, channel, details)
VALUES (%(id)s, %(action)s, %(user)s, %(channel)s, %(details)s)
"""

# ---------------------------------------------------------------------------------------------
# What the scheduler does: open, find the open one, worsen, change cause, resolve

_OPEN = """
INSERT INTO alarms (kind, severity, unit_id, equipment_id, compartment_id, gateway_id, probe_id, condition_since,
                    found_late, suppressed, cause, value, t_min, t_max)
VALUES (%(kind)s, %(severity)s, %(unit_id)s, %(equipment_id)s, %(compartment_id)s, %(gateway_id)s, %(probe_id)s,
        %(since)s, %(late)s, %(suppressed)s, %(cause)s, %(value)s, %(t_min)s, %(t_max)s)
ON CONFLICT (kind, coalesce(compartment_id, 0), coalesce(gateway_id, 0)) WHERE state IN ('active', 'acknowledged')
DO NOTHING
RETURNING id
"""
_OPEN_ALARM = """
SELECT id FROM alarms
WHERE kind = %(kind)s AND coalesce(compartment_id, 0) = coalesce(%(compartment_id)s, 0)
  AND coalesce(gateway_id, 0) = coalesce(%(gateway_id)s, 0) AND state IN ('active', 'acknowledged')
FOR UPDATE
"""
# An excursion found late may have cleared before it was raised: resolved no earlier than raised,
# so its first notice is still owed (escalation's timeline needs that order).
_RESOLVE = """
UPDATE alarms SET state = 'resolved', resolved_at = greatest(%(at)s, raised_at), version = version + 1
WHERE id = %(id)s
"""
_WORSEN = "UPDATE alarms SET value = %(v)s, version = version + 1 WHERE id = %(id)s"
_CAUSE = "UPDATE alarms SET cause = %(c)s, suppressed = %(s)s, version = version + 1 WHERE id = %(id)s"


def open_alarm(conn: psycopg.Connection, opened: AlarmOpened, subject: Subject) -> int | None:
    """Open the alarm the rules confirmed and record it; its id, or None when one of that kind is
    already open for the subject (another scheduler, or a replay): nothing is raised twice."""
    row = fetch_one(
        conn,
        _OPEN,
        {
            "kind": opened.kind,
            "severity": opened.severity,
            "unit_id": subject.unit_id,
            "equipment_id": subject.equipment_id,
            "compartment_id": subject.compartment_id,
            "gateway_id": subject.gateway_id,
            "probe_id": subject.probe_id,
            "since": opened.condition_since,
            "late": opened.found_late,
            "suppressed": opened.suppressed,
            "cause": opened.cause,
            "value": opened.value,
            "t_min": subject.t_min,
            "t_max": subject.t_max,
        },
    )
    if row is None:
        return None
    details = {
        "condition_since": opened.condition_since.isoformat(),
        "detected_at": opened.detected_at.isoformat(),
        "found_late": opened.found_late,
        "value": opened.value,
        "cause": opened.cause,
        "measure": opened.measure,
        "total_minutes": opened.total.total_seconds() / 60 if opened.total else None,
    }
    conn.execute(_EVENT, {"id": row["id"], "action": "opened", "details": Jsonb(details)})
    alarm_id: int = row["id"]
    return alarm_id


def open_alarm_of(conn: psycopg.Connection, kind: str, subject: Subject) -> int | None:
    """The subject's open alarm of ``kind``, locked for this transaction; None if there is none."""
    row = fetch_one(
        conn, _OPEN_ALARM, {"kind": kind, "compartment_id": subject.compartment_id, "gateway_id": subject.gateway_id}
    )
    return None if row is None else int(row["id"])


def worsen(conn: psycopg.Connection, alarm_id: int, value: float) -> None:
    """The temperature got worse than last announced: the alarm shows the new worst value."""
    conn.execute(_WORSEN, {"id": alarm_id, "v": value})
    conn.execute(_EVENT, {"id": alarm_id, "action": "worsened", "details": Jsonb({"value": value})})


def change_cause(conn: psycopg.Connection, alarm_id: int, cause: str | None, suppressed: bool) -> None:
    """The same condition goes on with another cause, e.g. a probe's silence no longer explained by
    its gateway's outage: from now on it is notified in its own right."""
    conn.execute(_CAUSE, {"id": alarm_id, "c": cause, "s": suppressed})
    details = Jsonb({"cause": cause, "suppressed": suppressed})
    conn.execute(_EVENT, {"id": alarm_id, "action": "cause_changed", "details": details})


def resolve(conn: psycopg.Connection, alarm_id: int, at: datetime) -> None:
    """The condition is gone (``at``, as the rules proved it): escalation stops, closing may follow."""
    conn.execute(_RESOLVE, {"id": alarm_id, "at": at})
    details = Jsonb({"condition_cleared_at": at.isoformat()})
    conn.execute(_EVENT, {"id": alarm_id, "action": "resolved", "details": details})


# ---------------------------------------------------------------------------------------------
# What people do: acknowledge, close

_ACKNOWLEDGE = """
UPDATE alarms SET state = CASE WHEN state = 'active' THEN 'acknowledged' ELSE state END,
       acknowledged_at = now(), acknowledged_by = %(user)s, ack_channel = %(channel)s, ack_comment = %(comment)s,
       on_site = %(on_site)s, version = version + 1
WHERE id = %(id)s
"""
_CLOSE = """
UPDATE alarms SET state = 'closed', closed_at = now(), closed_by = %(user)s, closure = %(closure)s,
       version = version + 1
WHERE id = %(id)s
"""


def acknowledge(
    conn: psycopg.Connection,
    alarm: Mapping[str, Any],
    user_id: int,
    channel: Channel,
    on_site: bool,
    comment: str | None,
) -> None:
    """Acknowledging records who is on it; it does not stop escalation (CM16: "still abnormal"
    is the rule) — resolution does. An alarm already resolved can still be acknowledged.

    ``alarm`` is the alarm's row, read under its lock."""
    if alarm["state"] == "closed":
        raise Refused(409, "alarm_state", "报警已关闭，不能再确认")
    if alarm["acknowledged_at"] is not None:
        raise Refused(409, "alarm_state", "报警已被确认")
    set_action(conn, "alarm.acknowledge")
    conn.execute(
        _ACKNOWLEDGE,
        {"id": alarm["id"], "user": user_id, "channel": channel, "comment": comment, "on_site": on_site},
    )
    details = Jsonb({"on_site": on_site, "comment": comment})
    conn.execute(
        _PERSON_EVENT,
        {"id": alarm["id"], "action": "acknowledged", "user": user_id, "channel": channel, "details": details},
    )


def close(
    conn: psycopg.Connection,
    alarm: Mapping[str, Any],
    user_id: int,
    channel: Channel,
    *,
    version: int,
    cause: str,
    action: str,
    vaccine_disposition: str,
) -> None:
    """Close a resolved alarm with its cause, the action taken and what became of the vaccines.

    Only the version the person read may be closed (someone else may have acted meanwhile), and
    only once the temperature is back: an alarm still abnormal cannot be put on record as handled.
    ``alarm`` is the alarm's row, read under its lock."""
    if alarm["version"] != version:
        raise conflict(
            "version_conflict",
            f"报警已被他人处理（当前版本 {alarm['version']}），请刷新后重试",
            {"current_version": alarm["version"], "your_version": version},
        )
    if alarm["state"] != "resolved":
        reason = "已关闭" if alarm["state"] == "closed" else "仍在异常中，须恢复正常后才能关闭"
        raise Refused(409, "alarm_state", f"报警{reason}")
    closure = Jsonb({"cause": cause, "action": action, "vaccine_disposition": vaccine_disposition})
    set_action(conn, "alarm.close")
    conn.execute(_CLOSE, {"id": alarm["id"], "user": user_id, "closure": closure})
    conn.execute(
        _PERSON_EVENT,
        {"id": alarm["id"], "action": "closed", "user": user_id, "channel": channel, "details": closure},
    )


# ---------------------------------------------------------------------------------------------
# The link in a WeChat message: acknowledge without a password (a 256-bit random secret whose
# digest only the database holds; short-lived; single use; for one person, never a group)

_NEW_LINK = """
INSERT INTO alarm_links (token_hash, alarm_id, user_id, level, expires_at)
VALUES (%(h)s, %(alarm)s, %(user)s, %(level)s, now() + %(ttl)s)
"""
_TAKE_LINK = """
SELECT l.alarm_id, l.user_id, l.used_at, l.expires_at > now() AS fresh, u.username, u.unit_id, u.status
FROM alarm_links l LEFT JOIN users u ON u.id = l.user_id
WHERE l.token_hash = %(h)s FOR UPDATE OF l
"""
_USE_LINK = "UPDATE alarm_links SET used_at = now() WHERE token_hash = %(h)s"
_LOCK_ALARM = "SELECT * FROM alarms WHERE id = %(id)s FOR UPDATE"
_OUTCOME = """
SELECT a.state, u.username FROM alarms a LEFT JOIN users u ON u.id = a.acknowledged_by WHERE a.id = %(id)s
"""


def new_link(conn: psycopg.Connection, alarm_id: int, user_id: int, level: int) -> str:
    """A single-use confirmation link token for one person (never for a group: anyone in the group
    could confirm in that person's name)."""
    token = secrets.token_urlsafe(32)
    conn.execute(
        _NEW_LINK, {"h": token_hash(token), "alarm": alarm_id, "user": user_id, "level": level, "ttl": LINK_TTL}
    )
    return token


@dataclass(frozen=True)
class LinkUsed:
    """A confirmation link spent: whose it was, and the alarm's state and acknowledger afterwards
    (someone else may have acknowledged first; then that acknowledgement stands)."""

    alarm_id: int
    user_id: int
    username: str
    unit_id: int
    state: str
    acknowledged_by: str | None


def confirm_by_link(conn: psycopg.Connection, token: str, comment: str | None) -> LinkUsed:
    """Spend a link and acknowledge its alarm in the name of its person, through WeChat.

    The link is the credential: unknown, used, expired or for a user since removed, it is refused
    (401); a closed account is refused (403). Its person becomes the transaction's actor. An alarm
    already acknowledged or closed keeps what it has — the link is still spent."""
    hashed = token_hash(token)
    link = fetch_one(conn, _TAKE_LINK, {"h": hashed})
    if link is None or link["used_at"] is not None or not link["fresh"] or link["user_id"] is None:
        raise Refused(401, "link_invalid", "确认链接无效、已使用或已过期，请登录平台处理")
    if link["status"] != "active":
        raise Refused(403, "account_closed", "该账号已关闭或注销，请联系管理单位")
    set_actor(conn, link["user_id"])
    conn.execute(_USE_LINK, {"h": hashed})
    alarm = fetch_one(conn, _LOCK_ALARM, {"id": link["alarm_id"]})
    assert alarm is not None
    if alarm["acknowledged_at"] is None and alarm["state"] != "closed":
        acknowledge(conn, alarm, link["user_id"], "wechat", True, comment)
    outcome = fetch_one(conn, _OUTCOME, {"id": link["alarm_id"]})
    assert outcome is not None
    return LinkUsed(
        alarm_id=link["alarm_id"],
        user_id=link["user_id"],
        username=link["username"],
        unit_id=link["unit_id"],
        state=outcome["state"],
        acknowledged_by=outcome["username"],
    )
