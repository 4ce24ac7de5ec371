"""What people read about alarms: the list of a jurisdiction's alarms, one alarm with its history
and notifications, and what a confirmation link shows before it is used.

Why here and not in the routes: the API and the pages show the same alarm, and the jurisdiction
(a user sees their unit and the units below it) must be applied by one query, not by two copies
of it. Every function takes the reader's unit as ``scope``; an alarm outside it is "not found",
like one that does not exist, so ids cannot be probed.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import psycopg

from coldchain.core.db import fetch_all, fetch_one
from coldchain.core.errors import not_found
from coldchain.core.sqlparts import Filters, in_scope
from coldchain.core.tokens import token_hash

_COLUMNS = """
a.id, a.kind, a.severity, a.state, a.unit_id, n.name AS unit_name, a.equipment_id, e.name AS equipment_name,
a.compartment_id, c.name AS compartment_name, a.gateway_id, g.serial AS gateway_serial, a.probe_id,
a.condition_since, a.raised_at, a.found_late, a.suppressed, a.cause, a.value, a.t_min::float8 AS t_min,
a.t_max::float8 AS t_max, a.acknowledged_at, a.acknowledged_by, a.ack_channel, a.ack_comment, a.on_site,
a.resolved_at, a.closed_at, a.closure, a.version
"""
_FROM = """
FROM alarms a
JOIN units n ON n.id = a.unit_id
LEFT JOIN equipment e ON e.id = a.equipment_id
LEFT JOIN compartments c ON c.id = a.compartment_id
LEFT JOIN gateways g ON g.id = a.gateway_id
"""
_LIST = f"""
SELECT {_COLUMNS} {_FROM}
WHERE {{where}}
ORDER BY a.raised_at DESC, a.id DESC
LIMIT %(limit)s OFFSET %(offset)s
"""
_OPEN = "a.state IN ('active', 'acknowledged')"
_ONE = f"SELECT {_COLUMNS} {_FROM} WHERE a.id = %(id)s AND {in_scope('a.unit_id')}"
_LOCK = "SELECT 1 FROM alarms WHERE id = %(id)s FOR UPDATE"
_EVENTS = """
SELECT v.ts, v.action, u.username, v.channel, v.details
FROM alarm_events v LEFT JOIN users u ON u.id = v.user_id WHERE v.alarm_id = %(id)s ORDER BY v.id
"""
_NOTIFICATIONS = """
SELECT step, channel, levels::int[] AS levels, due_at, sent_at, attempts, last_error
FROM notification_outbox WHERE alarm_id = %(id)s ORDER BY due_at, id
"""
_LINK = """
SELECT l.used_at, l.expires_at > now() AS fresh, a.kind, a.state, a.value, a.condition_since,
       n.name AS unit_name, coalesce(e.name || ' / ' || c.name, '网关 ' || g.serial) AS place
FROM alarm_links l
JOIN alarms a ON a.id = l.alarm_id
JOIN units n ON n.id = a.unit_id
LEFT JOIN equipment e ON e.id = a.equipment_id
LEFT JOIN compartments c ON c.id = a.compartment_id
LEFT JOIN gateways g ON g.id = a.gateway_id
WHERE l.token_hash = %(h)s
"""


def list_alarms(
    conn: psycopg.Connection,
    scope: int,
    *,
    unit_id: int | None = None,
    state: str | None = None,
    open_only: bool = False,
    kind: str | None = None,
    compartment_id: int | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
    limit: int,
    offset: int = 0,
) -> list[dict[str, Any]]:
    """The alarms of ``scope``'s jurisdiction, newest first, narrowed by the filters given (an
    ``unit_id`` also takes the units below it; the caller has checked it is in the jurisdiction)."""
    always = [in_scope("a.unit_id"), *([_OPEN] if open_only else [])]
    where = (
        Filters({"scope": scope, "limit": limit, "offset": offset}, *always)
        .in_subtree("a.unit_id", "unit", unit_id)
        .eq("a.state", "state", state)
        .eq("a.kind", "kind", kind)
        .eq("a.compartment_id", "compartment", compartment_id)
        .at_least("a.raised_at", "since", since)
        .before("a.raised_at", "until", until)
    )
    return fetch_all(conn, where.query(_LIST), where.params)


def alarm_in_scope(conn: psycopg.Connection, scope: int, alarm_id: int, *, lock: bool = False) -> dict[str, Any]:
    """One alarm of ``scope``'s jurisdiction, refused as not found otherwise.

    ``lock`` takes the alarm's row lock first and reads the row again under it, so a person acting
    on the alarm decides on the state no one else can change before the transaction ends."""
    row = fetch_one(conn, _ONE, {"id": alarm_id, "scope": scope})
    if row is None:
        raise not_found("报警")
    if lock:
        conn.execute(_LOCK, {"id": alarm_id})
        row = fetch_one(conn, _ONE, {"id": alarm_id, "scope": scope})
        assert row is not None
    return row


def alarm_detail(conn: psycopg.Connection, scope: int, alarm_id: int) -> dict[str, Any]:
    """One alarm with every change (``events``) and every notification owed or sent for it."""
    row = alarm_in_scope(conn, scope, alarm_id)
    return {
        **row,
        "events": fetch_all(conn, _EVENTS, {"id": alarm_id}),
        "notifications": fetch_all(conn, _NOTIFICATIONS, {"id": alarm_id}),
    }


def link_preview(conn: psycopg.Connection, token: str) -> dict[str, Any] | None:
    """What the page behind a confirmation link shows — the alarm, where, and whether the link is
    still usable — without using the link up (apps fetch links to preview them)."""
    return fetch_one(conn, _LINK, {"h": token_hash(token)})
