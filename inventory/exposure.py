"""What a lot or package went through in the cold chain: for each stretch of custody, the
temperatures of the compartments it sat in — daily series, min/max/mean, reading count — and the
minutes out of range with the excursions behind them.

The temperatures come from the daily aggregate (one row per probe and Beijing day), so a lot held by
500 units for a year reads ~180 000 aggregate rows, not 50 million readings; the partial edge days
come from the hourly aggregate and the readings. Minutes out of range come from the excursion spans
(sql/migrations/0009_excursions.sql): the out-of-range stretches, materialised at each aggregate
refresh, plus those of the readings since, computed live. :func:`out_of_range_minutes` states the
rule in Python; the spans must agree with it (tests/analytics/test_excursions.py). The monthly report
calls :func:`temperatures` itself, so a lot's trace and its fridge's report cannot disagree.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import psycopg

from coldchain.core.db import fetch_all
from coldchain.core.terms import out_of_range
from inventory.custody import Interval

MAX_GAP = timedelta(minutes=30)
"""A reading stands for the time until the next one, but for no more than this: beyond it the
probe was silent (a no-data alarm's business), not out of range."""


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
    """One compartment behind one custody interval, over the interval's span (``end``: now if open)."""

    key: int
    interval: Interval
    compartment_id: int
    start: datetime
    end: datetime


def segments_of(conn: psycopg.Connection, intervals: Sequence[Interval], mode: str, now: datetime) -> list[Segment]:
    """The (interval, compartment) pairs to read temperatures for: the compartments named when the
    stock was put away, else every compartment the unit had in the vaccine's storage mode during the
    interval (vehicles aside), shown as assumed."""
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
