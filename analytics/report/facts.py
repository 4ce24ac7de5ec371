"""The facts of one report: what the SQL gathers for a unit's subtree and a month, as frames.

Nothing here decides a figure; :mod:`analytics.report.maths` does. Reading cost is kept down the
way the lot trace does it (``inventory/exposure.py``): the hourly aggregate is read once with
constant bounds (a join condition would not reach through the plain path's materialised ∪ live
view), and raw readings only for partial edge hours.

Each compartment's temperatures (min, max, mean) and minutes out of range over the month come from
the lot trace's own computation, :func:`inventory.exposure.temperatures`: the daily aggregate for
whole days, and the excursion spans (migration 0009) for the minutes out of range — one way to
compute them, so a lot's trace and its fridge's report cannot disagree.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import asdict, dataclass
from datetime import date, datetime, timedelta
from typing import Any

import polars as pl
import psycopg

from analytics.logins import monthly_table
from analytics.report import maths, tables
from analytics.report.maths import Period, Piece, PieceFigures
from coldchain.core.db import fetch_all, fetch_one
from coldchain.core.terms import BEIJING
from inventory.custody import Interval
from inventory.exposure import Segment, temperatures

_UNIT = "SELECT id, code, name, level FROM units WHERE id = %(unit)s"

# Each unit at or below the report unit with its area: the unit directly below the report unit
# that it sits under (or itself), or the report unit for its own devices.
_UNITS = """
SELECT u.id AS unit_id, u.code, u.name, u.level, coalesce(a.area_id, t.ancestor_id) AS area_id
FROM unit_tree t
JOIN units u ON u.id = t.descendant_id
LEFT JOIN LATERAL (
    SELECT y.ancestor_id AS area_id
    FROM unit_tree y JOIN unit_tree x ON x.descendant_id = y.ancestor_id
    WHERE y.descendant_id = u.id AND x.ancestor_id = t.ancestor_id AND x.depth = 1
) a ON true
WHERE t.ancestor_id = %(unit)s
"""

# Devices in use during the month: not decommissioned before it, not commissioned after it, or
# monitored in it whatever the registry's dates say.
_DEVICES = """
SELECT e.id AS equipment_id, e.unit_id, e.kind, e.name
FROM unit_tree t JOIN equipment e ON e.unit_id = t.descendant_id
WHERE t.ancestor_id = %(unit)s
  AND ((coalesce(e.decommissioned_at, 'infinity') > %(start)s
        AND coalesce(e.commissioned_on, '-infinity') < %(end_day)s)
       OR EXISTS (SELECT 1 FROM compartments c JOIN probe_bindings b ON b.compartment_id = c.id
                  WHERE c.equipment_id = e.id AND b.valid && tstzrange(%(start)s, %(cut)s)))
"""

# Every binding of the subtree's compartments that overlaps [start, cut), cut to it.
_BINDINGS = """
SELECT b.probe_id, b.compartment_id, c.equipment_id, e.unit_id, c.mode,
       greatest(lower(b.valid), %(start)s) AS lo,
       least(coalesce(upper(b.valid), 'infinity'), %(cut)s) AS hi
FROM unit_tree t
JOIN equipment e ON e.unit_id = t.descendant_id
JOIN compartments c ON c.equipment_id = e.id
JOIN probe_bindings b ON b.compartment_id = c.id
WHERE t.ancestor_id = %(unit)s AND b.valid && tstzrange(%(start)s, %(cut)s)
ORDER BY b.probe_id, lower(b.valid)
"""

# Per piece: readings and hours with data in its whole hours. One scan of the hourly aggregate
# with constant bounds, matched to the pieces by a hash join.
_HOURLY = """
WITH p AS (
    SELECT * FROM unnest(%(key)s::int[], %(probe)s::bigint[], %(hour_lo)s::timestamptz[], %(hour_hi)s::timestamptz[])
        AS p(key, probe_id, hour_lo, hour_hi)
), h AS (
    SELECT probe_id, bucket, n FROM probe_readings_hourly
    WHERE probe_id = ANY(%(probes)s) AND bucket >= %(from)s AND bucket < %(to)s
)
SELECT p.key, coalesce(sum(h.n), 0)::bigint AS received, count(h.bucket) AS hours_with_data
FROM p
LEFT JOIN h ON h.probe_id = p.probe_id AND h.bucket >= p.hour_lo AND h.bucket < p.hour_hi
GROUP BY p.key
"""

# The readings of the partial edge hours of every piece (counted as received).
_RAW = """
SELECT w.i, r.ts
FROM unnest(%(i)s::int[], %(probe)s::bigint[], %(lo)s::timestamptz[], %(hi)s::timestamptz[]) AS w(i, probe_id, lo, hi)
CROSS JOIN LATERAL (
    SELECT ts FROM probe_readings WHERE probe_id = w.probe_id AND ts >= w.lo AND ts < w.hi
) r
ORDER BY w.i, r.ts
"""

# Alarms of the subtree open at any time in [start, cut); raised_in_period marks those raised in it.
# Level 2 / 3 reached: the escalation pass wrote the step into the outbox (it writes a step only
# when it fell due before the alarm was resolved).
_ALARMS = """
SELECT a.id, a.kind, a.unit_id, coalesce(a.equipment_id, c.equipment_id) AS equipment_id, a.gateway_id,
       a.condition_since, a.raised_at, a.acknowledged_at, a.resolved_at, a.suppressed,
       a.raised_at >= %(start)s AS raised_in_period,
       EXISTS (SELECT 1 FROM notification_outbox o WHERE o.alarm_id = a.id AND o.step = 'level2') AS reached_level2,
       EXISTS (SELECT 1 FROM notification_outbox o WHERE o.alarm_id = a.id AND starts_with(o.step, 'level3'))
           AS reached_level3
FROM unit_tree t
JOIN alarms a ON a.unit_id = t.descendant_id
LEFT JOIN compartments c ON c.id = a.compartment_id
WHERE t.ancestor_id = %(unit)s AND a.raised_at < %(cut)s AND coalesce(a.resolved_at, 'infinity') > %(start)s
"""

# Drift findings (CM10) by the time the thermometer was read.
_DRIFTS = """
SELECT f.id, c.equipment_id
FROM unit_tree t
JOIN equipment e ON e.unit_id = t.descendant_id
JOIN compartments c ON c.equipment_id = e.id
JOIN drift_findings f ON f.compartment_id = c.id AND f.finding
JOIN thermometer_readings_current r ON r.id = f.thermometer_reading_id  -- a corrected entry no longer counts
WHERE t.ancestor_id = %(unit)s AND r.ts >= %(start)s AND r.ts < %(cut)s
"""

_GATEWAYS = """
SELECT g.id AS gateway_id, g.serial, g.unit_id, g.vendor, g.model
FROM unit_tree t JOIN gateways g ON g.unit_id = t.descendant_id
WHERE t.ancestor_id = %(unit)s AND (g.status = 'active' OR g.id = ANY(%(bound)s))
"""

# Status reports in the month, counted against the alarm rules' default thresholds.
_GATEWAY_STATUS = """
SELECT gateway_id, count(*) AS statuses,
       count(power) AS power_reports, count(*) FILTER (WHERE power = 'battery') AS on_battery,
       count(battery) AS battery_reports, count(*) FILTER (WHERE battery < %(battery_low)s) AS battery_low,
       count(rssi) AS rssi_reports, count(*) FILTER (WHERE rssi < %(weak_rssi)s) AS weak_signal,
       min(battery)::float8 AS min_battery, min(rssi)::int AS min_rssi
FROM gateway_status
WHERE gateway_id = ANY(%(gateways)s) AND ts >= %(start)s AND ts < %(cut)s
GROUP BY gateway_id
"""

_HARDWARE = """
SELECT 'gateway' AS hardware, g.serial, g.unit_id, g.vendor, g.model, g.warranty_end, g.status
FROM unit_tree t JOIN gateways g ON g.unit_id = t.descendant_id
WHERE t.ancestor_id = %(unit)s AND g.warranty_end BETWEEN %(from)s AND %(to)s
UNION ALL
SELECT 'probe', p.serial, p.unit_id, p.vendor, p.model, p.warranty_end, p.status
FROM unit_tree t JOIN probes p ON p.unit_id = t.descendant_id
WHERE t.ancestor_id = %(unit)s AND p.warranty_end BETWEEN %(from)s AND %(to)s
"""


@dataclass(frozen=True)
class Facts:
    period: Period
    unit: dict[str, Any]
    units: pl.DataFrame
    devices: pl.DataFrame
    pieces: pl.DataFrame
    compartments: pl.DataFrame
    alarms: pl.DataFrame
    drifts: pl.DataFrame
    gateways: pl.DataFrame
    gateway_status: pl.DataFrame
    logins: pl.DataFrame
    hardware: pl.DataFrame


def report_unit(conn: psycopg.Connection, unit_id: int) -> dict[str, Any] | None:
    return fetch_one(conn, _UNIT, {"unit": unit_id})


def gather(conn: psycopg.Connection, unit_id: int, period: Period, now: datetime) -> Facts:
    """Everything the report of ``unit_id`` for ``period`` is computed from."""
    unit = report_unit(conn, unit_id)
    if unit is None:
        raise LookupError(f"单位 {unit_id} 不存在")
    # Many small index look-ups: JIT compilation would cost more than the work.
    conn.execute("SET LOCAL jit = off")
    span = {"unit": unit_id, "start": period.start, "cut": period.cut, "end_day": period.last_day + timedelta(days=1)}
    pieces, compartments = _pieces(conn, span)
    bound = sorted({int(r["gateway_id"]) for r in fetch_all(conn, _BINDING_GATEWAYS, span)})
    gateways = fetch_all(conn, _GATEWAYS, {**span, "bound": bound})
    status = fetch_all(
        conn,
        _GATEWAY_STATUS,
        {
            **span,
            "gateways": [g["gateway_id"] for g in gateways],
            "battery_low": tables.GATEWAY_THRESHOLDS.battery_low,
            "weak_rssi": tables.GATEWAY_THRESHOLDS.weak_rssi,
        },
    )
    today = now.astimezone(BEIJING).date()
    logins = [asdict(r) for r in monthly_table(conn, unit_id, period.month, today)]
    hardware = fetch_all(
        conn,
        _HARDWARE,
        {"unit": unit_id, "from": period.month, "to": period.last_day + timedelta(days=maths.WARRANTY_HORIZON_DAYS)},
    )
    return Facts(
        period=period,
        unit=unit,
        units=maths.frame(fetch_all(conn, _UNITS, span), maths.UNITS_SCHEMA),
        devices=maths.frame(fetch_all(conn, _DEVICES, span), maths.DEVICES_SCHEMA),
        pieces=maths.frame([asdict(p) for p in pieces], maths.PIECES_SCHEMA),
        compartments=maths.frame(compartments, maths.COMPARTMENTS_SCHEMA),
        alarms=maths.frame(fetch_all(conn, _ALARMS, span), maths.ALARMS_SCHEMA),
        drifts=maths.frame(fetch_all(conn, _DRIFTS, span), maths.DRIFTS_SCHEMA),
        gateways=maths.frame(gateways, maths.GATEWAYS_SCHEMA),
        gateway_status=maths.frame(status, maths.GATEWAY_STATUS_SCHEMA),
        logins=maths.frame(logins, maths.LOGINS_SCHEMA),
        hardware=maths.frame(hardware, maths.HARDWARE_SCHEMA),
    )


_BINDING_GATEWAYS = """
SELECT DISTINCT b.gateway_id
FROM unit_tree t
JOIN equipment e ON e.unit_id = t.descendant_id
JOIN compartments c ON c.equipment_id = e.id
JOIN probe_bindings b ON b.compartment_id = c.id
WHERE t.ancestor_id = %(unit)s AND b.valid && tstzrange(%(start)s, %(cut)s)
"""


def _pieces(conn: psycopg.Connection, span: dict[str, Any]) -> tuple[list[PieceFigures], list[dict[str, Any]]]:
    """Per binding piece its readings expected and received and its silent hours; per compartment
    its temperatures and minutes out of range over [start, cut) (:func:`_compartments`)."""
    pieces: list[Piece] = []
    holders: dict[int, tuple[int, int, str]] = {}
    for i, b in enumerate(fetch_all(conn, _BINDINGS, span)):
        if b["hi"] <= b["lo"]:
            continue
        holders[b["compartment_id"]] = (b["equipment_id"], b["unit_id"], b["mode"])
        pieces.append(
            Piece(
                key=i,
                probe_id=b["probe_id"],
                compartment_id=b["compartment_id"],
                equipment_id=b["equipment_id"],
                lo=b["lo"],
                hi=b["hi"],
            )
        )
    if not pieces:
        return [], []
    hourly = {
        r["key"]: r
        for r in fetch_all(
            conn,
            _HOURLY,
            {
                "key": [p.key for p in pieces],
                "probe": [p.probe_id for p in pieces],
                "hour_lo": [p.hour_lo for p in pieces],
                "hour_hi": [p.hour_hi for p in pieces],
                "probes": sorted({p.probe_id for p in pieces}),
                "from": min(p.hour_lo for p in pieces),
                "to": max(p.hour_hi for p in pieces),
            },
        )
    }
    windows = [(p, lo, hi) for p in pieces for lo, hi in p.edges]
    edge_counts: dict[int, int] = defaultdict(int)
    if windows:
        for r in fetch_all(
            conn,
            _RAW,
            {
                "i": list(range(len(windows))),
                "probe": [p.probe_id for p, _, _ in windows],
                "lo": [lo for _, lo, _ in windows],
                "hi": [hi for _, _, hi in windows],
            },
        ):
            edge_counts[windows[r["i"]][0].key] += 1
    out = []
    for p in pieces:
        h = hourly.get(p.key)
        out.append(
            maths.piece_figures(
                p, int(h["received"]) if h else 0, int(h["hours_with_data"]) if h else 0, edge_counts[p.key]
            )
        )
    return out, _compartments(conn, holders, span["start"], span["cut"])


def _compartments(
    conn: psycopg.Connection, holders: dict[int, tuple[int, int, str]], start: datetime, cut: datetime
) -> list[dict[str, Any]]:
    """Each compartment's month as the lot trace sees a stretch in it: the same segments, the same
    function (:func:`inventory.exposure.temperatures`) — min, max and mean from the daily aggregate
    (hourly and readings only for a partial last day), minutes out of range from the excursion
    spans. The "custody" is the compartment's unit over the month."""
    comps = sorted(holders)
    segments = [Segment(key, Interval(holders[c][1], start, cut), c, start, cut) for key, c in enumerate(comps)]
    temps = temperatures(conn, segments)
    return [
        {
            "compartment_id": c,
            "equipment_id": holders[c][0],
            "mode": holders[c][2],
            "minutes_out": float(temps[key]["minutes_out_of_range"]),
            "readings": int(temps[key]["readings"]),
            "min_t": temps[key]["min_t"],
            "max_t": temps[key]["max_t"],
            "mean_t": temps[key]["mean_t"],
        }
        for key, c in enumerate(comps)
    ]


def first_data_month(conn: psycopg.Connection) -> date | None:
    """The Beijing month of the earliest reading (the scheduler generates no report before it)."""
    row = fetch_one(conn, "SELECT min(ts) AS first FROM probe_readings")
    first: datetime | None = row["first"] if row else None
    return None if first is None else first.astimezone(BEIJING).date().replace(day=1)
