"""Traceability (VT1, CM2): for a lot or a code, who held it from when to when, the temperatures of
the compartments it sat in during each interval, the minutes out of range, and the vaccinations it
went into; for a lot, everyone holding it now (the recall list).

Custody is derived from the ledger, never stored twice: a unit holds a lot while its running
balance of that lot is above zero, and a transfer is in transit from its issue to its receipt. A
reversed movement and its reversal are left out — a corrected mistake never happened.

The temperatures come from the daily aggregate (one row per probe and Beijing day), so a lot held by
500 units for a year reads ~180 000 aggregate rows, not 50 million readings; the partial edge days
come from the hourly aggregate and the readings. Minutes out of range come from the excursion spans
(sql/migrations/0009_excursions.sql): the out-of-range stretches, materialised at each aggregate
refresh, plus those of the readings since, computed live. :func:`out_of_range_minutes` states the
rule in Python; the spans must agree with it (tests/test_excursions.py).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import psycopg

from coldchain.core.db import fetch_all, fetch_one
from coldchain.core.terms import out_of_range

MAX_GAP = timedelta(minutes=30)
"""A reading stands for the time until the next one, but for no more than this: beyond it the
probe was silent (a no-data alarm's business), not out of range."""


@dataclass(frozen=True)
class Movement:
    id: int
    kind: str
    unit_id: int
    quantity: int
    occurred_at: datetime
    transfer_id: int | None = None
    compartment_id: int | None = None


@dataclass
class Interval:
    """One stretch of custody: a unit, or a transfer in transit (``unit_id`` None)."""

    unit_id: int | None
    start: datetime
    end: datetime | None
    transfer_id: int | None = None
    compartments: set[int] = field(default_factory=set)


def lot_custody(movements: Sequence[Movement]) -> list[Interval]:
    """Per unit, the stretches during which its running balance of the lot was above zero."""
    balance: dict[int, int] = defaultdict(int)
    open_: dict[int, Interval] = {}
    out: list[Interval] = []
    for m in sorted(movements, key=lambda m: (m.occurred_at, m.id)):
        before = balance[m.unit_id]
        balance[m.unit_id] = after = before + m.quantity
        if before <= 0 < after:
            iv = Interval(m.unit_id, m.occurred_at, None)
            open_[m.unit_id] = iv
            out.append(iv)
        if m.quantity > 0 and m.compartment_id is not None and m.unit_id in open_:
            open_[m.unit_id].compartments.add(m.compartment_id)
        if before > 0 >= after:
            open_.pop(m.unit_id).end = m.occurred_at
    return out


_TO_TRANSIT = {"issue", "return"}
_FROM_TRANSIT = {"transfer_receipt", "transfer_rejection"}


def code_custody(movements: Sequence[Movement], used_at: datetime | None) -> list[Interval]:
    """The path of one package, from the movements that scanned it (or a package containing it)."""
    out: list[Interval] = []
    current: Interval | None = None
    for m in sorted(movements, key=lambda m: (m.occurred_at, m.id)):
        if current is not None:
            current.end = m.occurred_at
        if m.kind in _TO_TRANSIT:
            current = Interval(None, m.occurred_at, None, transfer_id=m.transfer_id)
        else:
            current = Interval(m.unit_id, m.occurred_at, None)
            if m.compartment_id is not None:
                current.compartments.add(m.compartment_id)
        out.append(current)
    if current is not None and used_at is not None:
        current.end = used_at
    return out


def out_of_range_minutes(
    readings: Sequence[tuple[datetime, float]],
    t_min: float | None,
    t_max: float,
    start: datetime,
    end: datetime,
    max_gap: timedelta = MAX_GAP,
) -> float:
    """Minutes within [start, end) during which the last reading was outside [t_min, t_max].

    Each reading holds until the next one (last observation carried forward), capped at
    ``max_gap``; exactly on a limit is in range, as for the alarm rules."""
    total = timedelta()
    ordered = sorted(readings)
    for i, (ts, t) in enumerate(ordered):
        if out_of_range(t, t_min, t_max):
            until = ts + max_gap
            if i + 1 < len(ordered):
                until = min(until, ordered[i + 1][0])
            lo, hi = max(ts, start), min(until, end)
            if hi > lo:
                total += hi - lo
    return total.total_seconds() / 60


# ---------------------------------------------------------------------------------------------
# Reading the ledger

_LOT_MOVES = """
SELECT m.id, m.kind, m.unit_id, m.quantity, m.occurred_at, m.transfer_id, m.compartment_id
FROM stock_movements m
WHERE m.lot_id = %(lot)s AND m.kind <> 'reversal'
  AND NOT EXISTS (SELECT 1 FROM stock_movements r WHERE r.reverses_id = m.id)
"""

_TRANSFERS = """
SELECT id, from_unit_id, to_unit_id, shipped_at, received_at, vehicle_compartment_id, state
FROM stock_transfers WHERE lot_id = %(lot)s AND state <> 'cancelled'
"""

_CODE_MOVES = """
WITH RECURSIVE up AS (
    SELECT code, parent_code FROM package_codes WHERE code = %(code)s
    UNION ALL
    SELECT p.code, p.parent_code FROM package_codes p JOIN up ON p.code = up.parent_code
)
SELECT DISTINCT m.id, m.kind, m.unit_id, m.quantity, m.occurred_at, m.transfer_id, m.compartment_id
FROM up JOIN movement_codes mc ON mc.code = up.code JOIN stock_movements m ON m.id = mc.movement_id
WHERE m.kind <> 'reversal' AND NOT EXISTS (SELECT 1 FROM stock_movements r WHERE r.reverses_id = m.id)
"""


def _movements(rows: Iterable[dict[str, Any]]) -> list[Movement]:
    return [Movement(**r) for r in rows]


def _transit_intervals(transfers: Iterable[dict[str, Any]]) -> list[Interval]:
    return [
        Interval(
            None,
            t["shipped_at"],
            t["received_at"],
            transfer_id=t["id"],
            compartments={t["vehicle_compartment_id"]} if t["vehicle_compartment_id"] else set(),
        )
        for t in transfers
    ]


# ---------------------------------------------------------------------------------------------
# Temperatures of the compartments behind each interval

_DEFAULT_COMPARTMENTS = """
SELECT c.id FROM compartments c JOIN equipment e ON e.id = c.equipment_id
WHERE e.unit_id = %(unit)s AND c.mode = %(mode)s AND e.kind <> 'vehicle'
  AND c.created_at < coalesce(%(end)s, 'infinity') AND coalesce(c.decommissioned_at, 'infinity') > %(start)s
"""

# One pass for every (interval, compartment) segment, exact at its edges: the probes bound to the
# compartment during the interval; whole Beijing days inside from the daily aggregate, whole hours of
# the partial edge days from the hourly aggregate, and the readings of the partial edge hours.
_PIECES = """
WITH seg AS (
    SELECT * FROM unnest(%(keys)s::int[], %(comps)s::bigint[], %(starts)s::timestamptz[], %(ends)s::timestamptz[])
        AS s(key, compartment_id, start_at, end_at)
), bound AS (
    SELECT seg.key, b.probe_id, greatest(seg.start_at, lower(b.valid)) AS lo,
           least(seg.end_at, coalesce(upper(b.valid), 'infinity')) AS hi
    FROM seg JOIN probe_bindings b
      ON b.compartment_id = seg.compartment_id AND b.valid && tstzrange(seg.start_at, seg.end_at)
), edges AS (
    SELECT key, probe_id, lo, hi,
           time_bucket(INTERVAL '1 day', lo - INTERVAL '1 microsecond', 'Asia/Shanghai') + INTERVAL '1 day' AS day_lo,
           time_bucket(INTERVAL '1 day', hi, 'Asia/Shanghai') AS day_hi,
           time_bucket(INTERVAL '1 hour', lo - INTERVAL '1 microsecond') + INTERVAL '1 hour' AS hour_lo,
           time_bucket(INTERVAL '1 hour', hi) AS hour_hi
    FROM bound WHERE hi > lo
), days AS MATERIALIZED (
    -- One scan of the daily aggregate with constant bounds, which reach into both halves of the
    -- plain-path view (a join condition would not, and would rescan it per edge).
    SELECT * FROM probe_readings_daily
    WHERE probe_id = ANY(%(probes)s::bigint[]) AND bucket >= %(from)s AND bucket < %(to)s
), pieces AS (
    SELECT e.key, d.bucket AS p_lo, d.n, d.min_t, d.max_t, d.sum_t
    FROM edges e JOIN days d ON d.probe_id = e.probe_id AND d.bucket >= e.day_lo AND d.bucket < e.day_hi
    UNION ALL
    SELECT e.key, h.bucket, h.n, h.min_t, h.max_t, h.sum_t
    FROM edges e CROSS JOIN LATERAL (
        -- the hours of the partial first day, then those of the partial last day
        SELECT * FROM probe_readings_hourly
        WHERE probe_id = e.probe_id AND bucket >= e.hour_lo AND bucket < least(e.hour_hi, e.day_lo)
        UNION ALL
        SELECT * FROM probe_readings_hourly
        WHERE probe_id = e.probe_id AND bucket >= greatest(e.day_hi, e.day_lo, e.hour_lo) AND bucket < e.hour_hi
    ) h
    UNION ALL
    SELECT e.key, min(r.ts), count(*), min(r.t), max(r.t), sum(r.t)
    FROM edges e CROSS JOIN LATERAL (
        SELECT ts, t, true AS first_edge FROM probe_readings
        WHERE probe_id = e.probe_id AND ts >= e.lo AND ts < least(e.hour_lo, e.hi)
        UNION ALL
        SELECT ts, t, false FROM probe_readings
        WHERE probe_id = e.probe_id AND ts >= greatest(e.hour_hi, e.hour_lo) AND ts < e.hi
    ) r
    GROUP BY e.key, e.probe_id, r.first_edge
)
, per_day AS (
    -- The pieces of one Beijing day (an hour never straddles two) merged into one.
    SELECT key, (p_lo AT TIME ZONE 'Asia/Shanghai')::date AS day, sum(n) AS n, min(min_t) AS min_t,
           max(max_t) AS max_t, sum(sum_t) AS sum_t
    FROM pieces GROUP BY 1, 2
)
-- One row per segment, its days in columns: ~500 rows rather than ~130 000 for a lot held by 500
-- units for a year.
SELECT key, array_agg(day ORDER BY day) AS day, array_agg(min_t ORDER BY day) AS min_t,
       array_agg(max_t ORDER BY day) AS max_t, array_agg(sum_t / n ORDER BY day) AS mean_t,
       sum(n)::bigint AS readings, min(min_t) AS lowest, max(max_t) AS highest, sum(sum_t) / sum(n) AS mean
FROM per_day GROUP BY key
"""

# The excursion spans (0009) overlapping each segment, clipped to it: the materialised ones, and
# those of the readings since, computed live — in one statement, so both halves see one snapshot.
_EXCURSIONS = """
WITH seg AS (
    SELECT * FROM unnest(%(keys)s::int[], %(comps)s::bigint[], %(starts)s::timestamptz[], %(ends)s::timestamptz[])
        AS s(key, compartment_id, start_at, end_at)
), spans AS (
    SELECT probe_id, compartment_id, started_at, ended_at, min_t, max_t FROM excursion_spans
    WHERE compartment_id = ANY(%(comps)s::bigint[]) AND ended_at > %(from)s AND started_at < %(to)s
    UNION ALL
    SELECT probe_id, compartment_id, started_at, ended_at, min_t, max_t
    FROM cc_excursion_spans(
        %(probes)s::bigint[],
        array_fill((SELECT materialized_until FROM excursion_state), ARRAY[cardinality(%(probes)s::bigint[])]),
        'infinity')
)
SELECT seg.key, s.probe_id, greatest(s.started_at, seg.start_at) AS lo, least(s.ended_at, seg.end_at) AS hi,
       s.min_t, s.max_t
FROM seg JOIN spans s
  ON s.compartment_id = seg.compartment_id AND s.started_at < seg.end_at AND s.ended_at > seg.start_at
ORDER BY seg.key, s.probe_id, lo
"""


@dataclass
class Segment:
    key: int
    interval: Interval
    compartment_id: int
    start: datetime
    end: datetime


def _segments(conn: psycopg.Connection, intervals: Sequence[Interval], mode: str, now: datetime) -> list[Segment]:
    out: list[Segment] = []
    for iv in intervals:
        end = iv.end or now
        comps = sorted(iv.compartments)
        if not comps and iv.unit_id is not None:
            comps = [
                r["id"]
                for r in fetch_all(
                    conn, _DEFAULT_COMPARTMENTS, {"unit": iv.unit_id, "mode": mode, "start": iv.start, "end": end}
                )
            ]
        for c in comps:
            out.append(Segment(len(out), iv, c, iv.start, end))
    return out


def temperatures(conn: psycopg.Connection, segments: Sequence[Segment]) -> dict[int, dict[str, Any]]:
    """Per segment: the daily series, min/max/mean, reading count, minutes out of range and the
    excursions behind them (judged by the limits of the compartment each probe was bound to)."""
    result: dict[int, dict[str, Any]] = {
        s.key: {
            "days": {"day": [], "min_t": [], "max_t": [], "mean_t": []},
            "min_t": None,
            "max_t": None,
            "mean_t": None,
            "readings": 0,
            "minutes_out_of_range": 0.0,
            "excursions": [],
        }
        for s in segments
    }
    if not segments:
        return result
    # Many small index look-ups: JIT compilation or parallel workers would cost more than the work.
    conn.execute("SET LOCAL jit = off")
    conn.execute("SET LOCAL max_parallel_workers_per_gather = 0")
    probes = [
        r["probe_id"]
        for r in fetch_all(
            conn,
            "SELECT DISTINCT probe_id FROM probe_bindings WHERE compartment_id = ANY(%(comps)s) ORDER BY 1",
            {"comps": sorted({s.compartment_id for s in segments})},
        )
    ]
    first = min(s.start for s in segments)
    bounds: dict[str, Any] = {
        "keys": [s.key for s in segments],
        "comps": [s.compartment_id for s in segments],
        "starts": [s.start for s in segments],
        "ends": [s.end for s in segments],
        "from": first,
        "to": max(s.end for s in segments),
        "probes": probes,
    }
    for r in fetch_all(conn, _PIECES, bounds | {"from": first - timedelta(days=1)}):
        # Columns, as the device series: the chart takes them as they are, and a year of days for
        # 500 holders validates and encodes in a fraction of the time of 130 000 small objects.
        result[r["key"]] |= {
            "days": {"day": r["day"], "min_t": r["min_t"], "max_t": r["max_t"], "mean_t": r["mean_t"]},
            "readings": int(r["readings"]),
            "min_t": r["lowest"],
            "max_t": r["highest"],
            "mean_t": r["mean"],
        }
    for key, excursions in excursions_by_segment(fetch_all(conn, _EXCURSIONS, bounds)).items():
        result[key]["excursions"] = excursions
        result[key]["minutes_out_of_range"] = sum(x["minutes"] for x in excursions)
    return result


def excursions_by_segment(spans: Iterable[Mapping[str, Any]]) -> dict[int, list[dict[str, Any]]]:
    """Clipped spans (ordered by segment, probe and start) merged where they touch: a refresh may
    have cut one excursion in two, and the reader should see one."""
    out: dict[int, list[dict[str, Any]]] = defaultdict(list)
    last: dict[str, Any] | None = None
    for sp in spans:
        if last is not None and (last["key"], last["probe_id"], last["end"]) == (sp["key"], sp["probe_id"], sp["lo"]):
            last["end"] = sp["hi"]
            last["min_t"], last["max_t"] = min(last["min_t"], sp["min_t"]), max(last["max_t"], sp["max_t"])
        else:
            last = {"key": sp["key"], "probe_id": sp["probe_id"], "start": sp["lo"], "end": sp["hi"]}
            last |= {"min_t": sp["min_t"], "max_t": sp["max_t"]}
            out[sp["key"]].append(last)
    for items in out.values():
        for x in items:
            x["minutes"] = (x["end"] - x["start"]).total_seconds() / 60
            del x["key"]
    return out


# ---------------------------------------------------------------------------------------------
# The whole trace

_UNITS = "SELECT id, name, code, level, phone FROM units WHERE id = ANY(%(ids)s)"
_COMPARTMENTS = """
SELECT c.id, c.name, c.t_min::float8 AS t_min, c.t_max::float8 AS t_max, e.name AS equipment_name, e.unit_id
FROM compartments c JOIN equipment e ON e.id = c.equipment_id WHERE c.id = ANY(%(ids)s)
"""
_VACCINATIONS = """
SELECT v.id, v.unit_id, u.name AS unit_name, v.code, v.vaccinated_at, v.vaccinee_ref, v.dose_no
FROM vaccinations v JOIN units u ON u.id = v.unit_id
WHERE v.lot_id = %(lot)s AND (%(code)s::text IS NULL OR v.code = %(code)s)
  AND v.unit_id IN (SELECT descendant_id FROM unit_tree WHERE ancestor_id = %(scope)s)
ORDER BY v.vaccinated_at, v.id
LIMIT %(limit)s
"""
_HOLDERS = """
SELECT b.unit_id, u.name AS unit_name, u.code AS unit_code, u.phone, b.on_hand, b.reserved, NULL::bigint AS transfer_id
FROM stock_balances b JOIN units u ON u.id = b.unit_id
WHERE b.lot_id = %(lot)s AND b.on_hand > 0
  AND b.unit_id IN (SELECT descendant_id FROM unit_tree WHERE ancestor_id = %(scope)s)
UNION ALL
SELECT t.to_unit_id, u.name, u.code, u.phone, t.quantity, 0, t.id
FROM stock_transfers t JOIN units u ON u.id = t.to_unit_id
WHERE t.lot_id = %(lot)s AND t.state = 'in_transit'
  AND (t.to_unit_id IN (SELECT descendant_id FROM unit_tree WHERE ancestor_id = %(scope)s)
       OR t.from_unit_id IN (SELECT descendant_id FROM unit_tree WHERE ancestor_id = %(scope)s))
ORDER BY 2
"""


def recall_list(conn: psycopg.Connection, lot_id: int, scope_unit: int) -> list[dict[str, Any]]:
    """Everyone who holds the lot now, in transit included (as the receiving unit)."""
    return fetch_all(conn, _HOLDERS, {"lot": lot_id, "scope": scope_unit})


def build_trace(
    conn: psycopg.Connection,
    lot: dict[str, Any],
    intervals: list[Interval],
    transfers: dict[int, dict[str, Any]],
    scope_unit: int,
    now: datetime,
    *,
    code: str | None = None,
    vaccination_limit: int = 1000,
) -> dict[str, Any]:
    segments = _segments(conn, intervals, lot["storage_mode"], now)
    comp_rows = {
        r["id"]: r for r in fetch_all(conn, _COMPARTMENTS, {"ids": sorted({s.compartment_id for s in segments})})
    }
    temps = temperatures(conn, segments)
    unit_ids = sorted({iv.unit_id for iv in intervals if iv.unit_id is not None})
    units = {r["id"]: r for r in fetch_all(conn, _UNITS, {"ids": unit_ids})}
    by_interval: dict[int, list[Segment]] = defaultdict(list)
    for s in segments:
        by_interval[id(s.interval)].append(s)
    chain = []
    for iv in sorted(intervals, key=lambda iv: (iv.start, iv.unit_id or 0)):
        t = transfers.get(iv.transfer_id) if iv.transfer_id else None
        stores = []
        for s in by_interval[id(iv)]:
            c = comp_rows[s.compartment_id]
            stores.append(
                {
                    "compartment_id": s.compartment_id,
                    "compartment_name": c["name"],
                    "equipment_name": c["equipment_name"],
                    "t_min": c["t_min"],
                    "t_max": c["t_max"],
                    "assumed": s.compartment_id not in iv.compartments,
                    **temps[s.key],
                }
            )
        chain.append(
            {
                "state": "in_transit" if iv.unit_id is None else "held",
                "unit_id": iv.unit_id,
                "unit_name": units[iv.unit_id]["name"] if iv.unit_id is not None else None,
                "transfer_id": iv.transfer_id,
                "from_unit_id": t["from_unit_id"] if t else None,
                "to_unit_id": t["to_unit_id"] if t else None,
                "start": iv.start,
                "end": iv.end,
                "minutes_out_of_range": sum(s["minutes_out_of_range"] for s in stores),
                "storage": stores,
            }
        )
    vaccinations = fetch_all(
        conn, _VACCINATIONS, {"lot": lot["id"], "code": code, "scope": scope_unit, "limit": vaccination_limit + 1}
    )
    total = fetch_one(
        conn,
        """SELECT count(*) AS n FROM vaccinations WHERE lot_id = %(lot)s AND (%(code)s::text IS NULL OR code = %(code)s)
           AND unit_id IN (SELECT descendant_id FROM unit_tree WHERE ancestor_id = %(scope)s)""",
        {"lot": lot["id"], "code": code, "scope": scope_unit},
    )
    return {
        "custody": chain,
        "minutes_out_of_range": sum(c["minutes_out_of_range"] for c in chain),
        "vaccinations": vaccinations[:vaccination_limit],
        "vaccinations_total": total["n"] if total else 0,
    }


def trace_lot(conn: psycopg.Connection, lot: dict[str, Any], scope_unit: int, now: datetime) -> dict[str, Any]:
    transfers = _transfers(conn, lot["id"])
    intervals = lot_custody(_movements(fetch_all(conn, _LOT_MOVES, {"lot": lot["id"]})))
    intervals += _transit_intervals(transfers.values())
    out = build_trace(conn, lot, intervals, transfers, scope_unit, now)
    out["holders"] = recall_list(conn, lot["id"], scope_unit)
    return out


def trace_code(
    conn: psycopg.Connection, lot: dict[str, Any], code: dict[str, Any], scope_unit: int, now: datetime
) -> dict[str, Any]:
    moves = _movements(fetch_all(conn, _CODE_MOVES, {"code": code["code"]}))
    intervals = code_custody(moves, code["used_at"])
    transfers = _transfers(conn, lot["id"])
    for iv in intervals:
        vehicle = transfers[iv.transfer_id]["vehicle_compartment_id"] if iv.transfer_id in transfers else None
        if vehicle:
            iv.compartments.add(vehicle)
    return build_trace(conn, lot, intervals, transfers, scope_unit, now, code=code["code"])


def _transfers(conn: psycopg.Connection, lot_id: int) -> dict[int, dict[str, Any]]:
    """The lot's transfers (cancelled ones left out), read once per trace."""
    return {t["id"]: t for t in fetch_all(conn, _TRANSFERS, {"lot": lot_id})}


def access_allowed(conn: psycopg.Connection, lot_id: int, scope_unit: int) -> bool:
    """A lot's whole chain is shown to anyone whose jurisdiction held it: its quality depends on
    every link, upstream included (VT1). Vaccinations and holders stay scoped."""
    row = fetch_one(
        conn,
        """SELECT 1 FROM stock_balances WHERE lot_id = %(lot)s
             AND unit_id IN (SELECT descendant_id FROM unit_tree WHERE ancestor_id = %(scope)s) LIMIT 1""",
        {"lot": lot_id, "scope": scope_unit},
    )
    return row is not None
