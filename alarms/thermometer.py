"""Manual thermometer readings and their drift findings (CM10, CM13): stored, compared with the
probe, corrected by a new row, explained by a cause, and a probe flagged for its vendor when its
findings repeat.

Why stored this way: a thermometer reading is a record a person signs; a wrong entry is never
edited but corrected by a new reading that names it, so both stay on record and only the latest
counts. The comparison itself is the pure rule :func:`alarms.rules.drift_check`; this module keeps
what it found, beside the reading it judged.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

import psycopg

from alarms.rules import drift_check, needs_vendor
from coldchain.core.db import fetch_all, fetch_one, set_action
from coldchain.core.errors import conflict, invalid, not_found
from coldchain.core.sqlparts import Filters, in_scope

# A clock a few minutes fast on the phone that entered it is not a reading from the future.
_FUTURE_TOLERANCE = timedelta(minutes=5)

_COMPARTMENT = f"""
SELECT c.id, c.mode, e.unit_id FROM compartments c JOIN equipment e ON e.id = c.equipment_id
WHERE c.id = %(id)s AND {in_scope("e.unit_id")}
"""  # noqa: S608 — constant SQL fragments, parameters bound
_PROBE_NEAR = """
SELECT b.probe_id, r.ts, r.t FROM probe_bindings b
JOIN probe_readings r ON r.probe_id = b.probe_id AND b.valid @> r.ts
WHERE b.compartment_id = %(c)s AND r.ts BETWEEN %(ts)s - interval '5 minutes' AND %(ts)s + interval '5 minutes'
ORDER BY abs(extract(epoch FROM r.ts - %(ts)s)) LIMIT 20
"""
_DRIFTS = """
SELECT f.id, f.thermometer_reading_id, f.compartment_id, t.ts, f.thermometer_t::float8 AS thermometer_t,
       t.entered_by, t.entered_at, t.note, t.corrects_id, t.reason AS correction_reason,
       (SELECT c.id FROM thermometer_readings c WHERE c.corrects_id = t.id) AS corrected_by_reading_id,
       f.probe_id, f.probe_ts, f.probe_t, f.difference, f.finding, f.reason, f.cause,
       EXISTS (SELECT 1 FROM probe_vendor_flags v WHERE v.probe_id = f.probe_id AND v.cleared_at IS NULL)
           AS probe_flagged_for_vendor
FROM drift_findings f JOIN thermometer_readings t ON t.id = f.thermometer_reading_id
WHERE {where}
ORDER BY t.ts DESC, t.id DESC LIMIT %(limit)s
"""
_INSERT_READING = """
INSERT INTO thermometer_readings (compartment_id, ts, t, entered_by, note, corrects_id, reason)
VALUES (%(c)s, %(ts)s, %(t)s, %(u)s, %(note)s, %(corrects)s, %(why)s) RETURNING id
"""
_INSERT_FINDING = """
INSERT INTO drift_findings (thermometer_reading_id, compartment_id, probe_id, probe_ts, probe_t,
                            thermometer_t, difference, finding, reason)
VALUES (%(r)s, %(c)s, %(p)s, %(pts)s, %(pt)s, %(t)s, %(d)s, %(f)s, %(why)s) RETURNING id
"""
# Findings of readings since corrected no longer count towards the vendor flag.
_FINDING_TIMES = """
SELECT f.created_at FROM drift_findings f
JOIN thermometer_readings_current r ON r.id = f.thermometer_reading_id
WHERE f.probe_id = %(p)s AND f.finding
"""
_FLAG_FOR_VENDOR = """
INSERT INTO probe_vendor_flags (probe_id, reason) VALUES (%(p)s, '反复漂移，待厂家调试或更换')
ON CONFLICT (probe_id) WHERE cleared_at IS NULL DO NOTHING
"""
# Two corrections of one reading at once: the second waits here, then finds it corrected.
_LOCK_READING = "SELECT pg_advisory_xact_lock(hashtextextended('thermometer:' || %(id)s, 0))"
_ORIGINAL = """
SELECT r.id, r.ts, r.note, (SELECT c.id FROM thermometer_readings c WHERE c.corrects_id = r.id) AS corrected_by
FROM thermometer_readings r WHERE r.id = %(id)s AND r.compartment_id = %(c)s
"""
_SET_CAUSE = """
UPDATE drift_findings SET cause = %(cause)s, cause_by = %(u)s, cause_at = now()
WHERE id = %(id)s AND compartment_id = %(c)s AND finding
"""


def compartment_in_scope(conn: psycopg.Connection, scope: int, compartment_id: int) -> dict[str, Any]:
    """The compartment (id, mode, unit) if it is in ``scope``'s jurisdiction; not found otherwise."""
    row = fetch_one(conn, _COMPARTMENT, {"id": compartment_id, "scope": scope})
    if row is None:
        raise not_found("温区")
    return row


def readings(
    conn: psycopg.Connection, compartment_id: int, *, finding_id: int | None = None, limit: int
) -> list[dict[str, Any]]:
    """The compartment's readings with their comparison, newest first (or the one of ``finding_id``)."""
    where = Filters({"c": compartment_id, "limit": limit}, "f.compartment_id = %(c)s").eq("f.id", "id", finding_id)
    return fetch_all(conn, where.query(_DRIFTS), where.params)


def _now(conn: psycopg.Connection) -> datetime:
    row = conn.execute("SELECT now()").fetchone()
    assert row is not None
    now: datetime = row[0]
    return now


def _not_in_future(ts: datetime, now: datetime) -> None:
    if ts > now + _FUTURE_TOLERANCE:
        raise invalid("读数时间不能晚于现在")


def add_reading(
    conn: psycopg.Connection, compartment: dict[str, Any], user_id: int, ts: datetime, t: Decimal, note: str | None
) -> dict[str, Any]:
    """Record a reading a person took and compare it with the probe; the stored comparison."""
    now = _now(conn)
    _not_in_future(ts, now)
    set_action(conn, "thermometer.add")
    return _record(conn, compartment, user_id, ts, t, note, now)


def correct_reading(
    conn: psycopg.Connection,
    compartment: dict[str, Any],
    user_id: int,
    reading_id: int,
    t: Decimal,
    ts: datetime | None,
    reason: str,
) -> dict[str, Any]:
    """Correct a wrong entry by a new reading that names it (``ts`` None keeps the original time);
    the original stays on record. Only the latest of a chain may be corrected."""
    conn.execute(_LOCK_READING, {"id": str(reading_id)})
    original = fetch_one(conn, _ORIGINAL, {"id": reading_id, "c": compartment["id"]})
    if original is None:
        raise not_found("温度计读数")
    if original["corrected_by"] is not None:
        raise conflict(
            "already_corrected",
            f"该读数已被更正（更正记录 {original['corrected_by']}），请更正最新的一条",
            details={"corrected_by_reading_id": original["corrected_by"]},
        )
    now = _now(conn)
    when = ts or original["ts"]
    _not_in_future(when, now)
    set_action(conn, "thermometer.correct")
    return _record(conn, compartment, user_id, when, t, original["note"], now, corrects=(reading_id, reason))


def set_cause(
    conn: psycopg.Connection, compartment_id: int, finding_id: int, user_id: int, cause: str
) -> dict[str, Any]:
    """Record why a finding happened (CM10 asks for the cause); only findings have one."""
    set_action(conn, "drift.cause")
    updated = conn.execute(_SET_CAUSE, {"cause": cause, "u": user_id, "id": finding_id, "c": compartment_id})
    if updated.rowcount == 0:
        raise not_found("漂移发现")
    return readings(conn, compartment_id, finding_id=finding_id, limit=1)[0]


def _record(
    conn: psycopg.Connection,
    compartment: dict[str, Any],
    user_id: int,
    ts: datetime,
    t: Decimal,
    note: str | None,
    now: datetime,
    corrects: tuple[int, str] | None = None,
) -> dict[str, Any]:
    """Store a thermometer reading (or the correction of one) and compare it with the probe."""
    compartment_id = compartment["id"]
    reading = fetch_one(
        conn,
        _INSERT_READING,
        {
            "c": compartment_id,
            "ts": ts,
            "t": t,
            "u": user_id,
            "note": note,
            "corrects": corrects[0] if corrects else None,
            "why": corrects[1] if corrects else None,
        },
    )
    assert reading is not None
    near = fetch_all(conn, _PROBE_NEAR, {"c": compartment_id, "ts": ts})
    result = drift_check(compartment["mode"], ts, float(t), [(r["ts"], r["t"]) for r in near])
    probe_id = next((r["probe_id"] for r in near if r["ts"] == result.nearest_ts), None)
    finding = fetch_one(
        conn,
        _INSERT_FINDING,
        {
            "r": reading["id"],
            "c": compartment_id,
            "p": probe_id,
            "pts": result.nearest_ts,
            "pt": result.probe_t,
            "t": t,
            "d": result.difference,
            "f": result.finding,
            "why": result.reason,
        },
    )
    assert finding is not None
    if result.finding and probe_id is not None:
        times = [r["created_at"] for r in fetch_all(conn, _FINDING_TIMES, {"p": probe_id})]
        if needs_vendor(times, now):
            conn.execute(_FLAG_FOR_VENDOR, {"p": probe_id})
    return readings(conn, compartment_id, finding_id=finding["id"], limit=1)[0]
