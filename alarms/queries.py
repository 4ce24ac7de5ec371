"""What people read about alarms: the list of a jurisdiction's alarms (and the inbox built on it,
with its counts and the navigation's count of alarms nobody has acknowledged), one alarm with its
history and notifications, and what a confirmation link shows before it is used.

Why here and not in the routes: the API and the pages show the same alarm, and the jurisdiction
(a user sees their unit and the units below it) must be applied by one query, not by two copies
of it. Every function takes the reader's unit as ``scope``; an alarm outside it is "not found",
like one that does not exist, so ids cannot be probed.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any, Literal

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
a.resolved_at, a.closed_at, a.closure, a.version, n.level AS unit_level,
coalesce(k.real_name, k.username) AS acknowledged_by_name,
-- What the compartment reads now (its freshest current probe): next to the peak, it tells whether
-- things are getting better; a gateway alarm has no temperature.
(SELECT l.t FROM probe_bindings_current b JOIN probe_latest l ON l.probe_id = b.probe_id
 WHERE b.compartment_id = a.compartment_id ORDER BY l.ts DESC LIMIT 1) AS current_t
"""
_FROM = """
FROM alarms a
JOIN units n ON n.id = a.unit_id
LEFT JOIN equipment e ON e.id = a.equipment_id
LEFT JOIN compartments c ON c.id = a.compartment_id
LEFT JOIN gateways g ON g.id = a.gateway_id
LEFT JOIN users k ON k.id = a.acknowledged_by
"""
Order = Literal["newest", "severity"]
# The orders a list may be asked for, each a constant: a request picks one by name, never writes SQL.
# "severity": what needs someone first — unacknowledged, then acknowledged, then resolved awaiting
# closure, then closed; within each the most severe, then the newest.
_ORDER_BY: Mapping[Order, str] = {
    "newest": "a.raised_at DESC, a.id DESC",
    "severity": (
        "array_position(ARRAY['active', 'acknowledged', 'resolved', 'closed'], a.state), "
        "array_position(ARRAY['critical', 'major', 'minor'], a.severity), a.raised_at DESC, a.id DESC"
    ),
}
_LISTS: Mapping[Order, str] = {
    order: f"""
SELECT {_COLUMNS} {_FROM}
WHERE {{where}}
ORDER BY {by}
LIMIT %(limit)s OFFSET %(offset)s
"""
    for order, by in _ORDER_BY.items()
}
_COUNTS = """
SELECT a.state, count(*)::int AS n
FROM alarms a JOIN units n ON n.id = a.unit_id
WHERE {where}
GROUP BY a.state
"""
_OPEN_COUNT = "SELECT count(*)::int FROM alarms a WHERE {where}"
_OPEN = "a.state IN ('active', 'acknowledged')"
_STATES_IN = "a.state = ANY(%(states)s)"
_ONE = f"SELECT {_COLUMNS} {_FROM} WHERE a.id = %(id)s AND {in_scope('a.unit_id')}"
_LOCK = "SELECT 1 FROM alarms WHERE id = %(id)s FOR UPDATE"
_EVENTS = """
SELECT v.ts, v.action, u.username, v.channel, v.details
FROM alarm_events v LEFT JOIN users u ON u.id = v.user_id WHERE v.alarm_id = %(id)s ORDER BY v.id
"""
_NOTIFICATIONS = """
SELECT step, channel, levels::int[] AS levels, due_at, sent_at, attempts, last_error,
       -- The escalation writes a "none:" target when a unit has nowhere to send to; the target
       -- itself (a robot's URL carries its key) is never read out.
       target LIKE 'none:%%' AS unconfigured
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
    equipment_id: int | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
    level: str | None = None,
    states: Sequence[str] | None = None,
    order: Order = "newest",
    limit: int,
    offset: int = 0,
) -> list[dict[str, Any]]:
    """The alarms of ``scope``'s jurisdiction, narrowed by the filters given (an ``unit_id`` also
    takes the units below it; the caller has checked it is in the jurisdiction; ``level`` keeps the
    alarms of units at that level; ``states`` keeps any of those states), newest first or, with
    ``order="severity"``, in the order someone should look at them."""
    where = _filters(scope, unit_id=unit_id, kind=kind, level=level, states=states, open_only=open_only)
    where.params.update(limit=limit, offset=offset)
    where = (
        where.eq("a.state", "state", state)
        .eq("a.compartment_id", "compartment", compartment_id)
        .eq("a.equipment_id", "equipment", equipment_id)
        .at_least("a.raised_at", "since", since)
        .before("a.raised_at", "until", until)
    )
    return fetch_all(conn, where.query(_LISTS[order]), where.params)


def _filters(
    scope: int,
    *,
    unit_id: int | None,
    kind: str | None,
    level: str | None,
    states: Sequence[str] | None = None,
    open_only: bool = False,
) -> Filters:
    """The jurisdiction and the filters the list and its counts share, so the counts on the inbox's
    tabs are always of the rows the tabs list."""
    always = [in_scope("a.unit_id"), *([_OPEN] if open_only else []), *([_STATES_IN] if states is not None else [])]
    params: dict[str, Any] = {"scope": scope, **({"states": list(states)} if states is not None else {})}
    return (
        Filters(params, *always)
        .in_subtree("a.unit_id", "unit", unit_id)
        .eq("a.kind", "kind", kind)
        .eq("n.level", "level", level)
    )


# The inbox's tabs: which states each lists. "open" — everything not closed — is where a person
# starts; the others narrow it, and "closed" is the history.
INBOX_TABS: Mapping[str, tuple[str, ...]] = {
    "open": ("active", "acknowledged", "resolved"),
    "active": ("active",),
    "acknowledged": ("acknowledged",),
    "resolved": ("resolved",),
    "closed": ("closed",),
}


def inbox(
    conn: psycopg.Connection,
    scope: int,
    *,
    tab: str,
    unit_id: int | None = None,
    kind: str | None = None,
    level: str | None = None,
    limit: int,
    offset: int = 0,
) -> dict[str, Any]:
    """One page of the alarm inbox: the tab's alarms in the order someone should look at them
    (``rows``), and how many alarms each tab holds under the same filters (``counts``), which the
    tabs show and the pagination needs."""
    states = INBOX_TABS[tab]
    rows = list_alarms(
        conn,
        scope,
        unit_id=unit_id,
        kind=kind,
        level=level,
        states=states,
        order="severity",
        limit=limit,
        offset=offset,
    )
    where = _filters(scope, unit_id=unit_id, kind=kind, level=level)
    by_state = {r["state"]: r["n"] for r in fetch_all(conn, where.query(_COUNTS), where.params)}
    counts = {name: sum(by_state.get(s, 0) for s in tab_states) for name, tab_states in INBOX_TABS.items()}
    return {"rows": rows, "counts": counts}


def open_count(conn: psycopg.Connection, scope: int) -> int:
    """How many alarms of ``scope``'s jurisdiction nobody has acknowledged yet: the number every
    page's navigation shows, so an alarm is noticed whichever page someone is on."""
    where = Filters({"scope": scope}, in_scope("a.unit_id"), "a.state = 'active'")
    row = conn.execute(where.query(_OPEN_COUNT), where.params).fetchone()
    return int(row[0]) if row else 0


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
