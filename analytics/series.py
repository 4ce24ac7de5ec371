"""The temperature series of one compartment over a time range, as the device page draws it:
readings (or hourly / daily min–mean–max), the limits, alarm intervals, thermometer readings, and
the power and offline periods of the gateway(s) the compartment's probes report through.

**Which source.** A phone draws about :data:`MAX_POINTS` points per trace smoothly, so the source is
chosen by the range's length: the readings themselves up to :data:`RAW_UP_TO` (a week of one-minute
readings is 10 080, thinned on the server by :func:`analytics.downsample.minmax`, which keeps every
extreme), the hourly aggregate up to :data:`HOURLY_UP_TO` (≤ 1 922 buckets), the daily aggregate
(Beijing days) beyond, up to :data:`MAX_RANGE`. An aggregated series carries its band (each
bucket's min and max), so an excursion shorter than a bucket still shows.

**Attribution.** A reading belongs to the compartment its probe was bound to at the reading's time
(``probe_bindings.valid``), so a probe swapped mid-range gives one continuous series from both
probes. The aggregates are per probe, and a bucket cut by a swap would mix readings taken
elsewhere: whole buckets inside a binding come from the aggregate, the (few) buckets cut by a
binding's start or end are aggregated from that binding's own readings.

**Gateways.** A gateway is offline while it says so (``online = false`` until the next status that
does not) and while nothing is heard from it for longer than the alarm rules'
``gateway.offline_after`` (from the last status before the silence to the next one; telemetry
writes a status row too, so statuses are everything the gateway sent). The power series is the
reported ``power`` (ac / battery) held until it changes, minus the offline periods, when it is
unknown. The SQL returns only the statuses where something changes (with the time of the status
before each one), so a year of one-minute statuses does not travel to Python.

Pure logic (source choice, pieces per binding, merging, gaps, gateway periods) is separate from
the queries in :func:`compartment_series`.

(About 530 lines on purpose: choosing the source, the buckets cut by a probe swap, and the
overlays — alarms, thermometer, gateway — make one answer to one request; split, each part would
need the others' range and binding logic.)
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from itertools import pairwise
from typing import Any, Literal

import psycopg

from alarms.rules import KIND_NAMES, SEVERITY_NAMES, GatewayParams, RuleParams, params_for
from analytics.downsample import Bucket, coarsen, minmax
from coldchain.core.db import fetch_all, fetch_one
from coldchain.core.terms import BEIJING

Source = Literal["raw", "hourly", "daily"]

MAX_POINTS = 2000
"""Points per trace the server sends at most: what a phone's browser draws without stutter."""

RAW_UP_TO = timedelta(days=7)
"""Up to a week the readings themselves are read (≤ 10 080 per probe at one a minute) and thinned
to :data:`MAX_POINTS` keeping each stretch's min and max: the page's 24-hour and 7-day views show
the real readings, and zooming into any longer view ends up here."""

HOURLY_UP_TO = timedelta(days=80)
"""Up to 80 days (1 920 hours, ≤ 1 922 buckets with the partial ones at each end) from the hourly
aggregate; beyond it daily buckets (≤ 401 for :data:`MAX_RANGE`)."""

MAX_RANGE = timedelta(days=400)
"""Longest range served: a year and a bit, enough for a year-on-year look at a device; reports
cover longer periods."""

GRAIN: dict[Source, timedelta] = {"hourly": timedelta(hours=1), "daily": timedelta(days=1)}


def choose_source(start: datetime, end: datetime) -> Source:
    span = end - start
    if span <= RAW_UP_TO:
        return "raw"
    if span <= HOURLY_UP_TO:
        return "hourly"
    return "daily"


def bucket_floor(ts: datetime, source: Source) -> datetime:
    """The start of the aggregate bucket holding ``ts``: UTC hours (``time_bucket('1 hour', ts)``)
    or Beijing days (``time_bucket('1 day', ts, 'Asia/Shanghai')``), as in migration 0002."""
    if source == "hourly":
        return ts.astimezone(UTC).replace(minute=0, second=0, microsecond=0)
    if source == "daily":
        return ts.astimezone(BEIJING).replace(hour=0, minute=0, second=0, microsecond=0).astimezone(UTC)
    raise ValueError(f"原始读数没有分桶：{source}")


def bucket_ceil(ts: datetime, source: Source) -> datetime:
    low = bucket_floor(ts, source)
    return low if low == ts else low + GRAIN[source]


# ---------------------------------------------------------------------------------------------
# Attribution of aggregate buckets through the bindings


@dataclass(frozen=True)
class Binding:
    probe_id: int
    gateway_id: int
    lo: datetime
    hi: datetime | None  # None: still bound


@dataclass(frozen=True)
class Piece:
    """A stretch of one probe's data to read: ``whole`` buckets from the aggregate, otherwise the
    readings in ``[lo, hi)`` aggregated per bucket on the fly."""

    probe_id: int
    lo: datetime
    hi: datetime
    whole: bool


def plan_pieces(bindings: Iterable[Binding], start: datetime, end: datetime, source: Source) -> list[Piece]:
    """The pieces that cover the buckets of ``[start, end)`` for each binding, exactly within it."""
    w_lo, w_hi = bucket_floor(start, source), bucket_ceil(end, source)
    out: list[Piece] = []
    for b in bindings:
        lo = max(b.lo, w_lo)
        hi = w_hi if b.hi is None else min(b.hi, w_hi)
        if lo >= hi:
            continue
        whole_lo, whole_hi = bucket_ceil(lo, source), bucket_floor(hi, source)
        if whole_lo >= whole_hi:  # no whole bucket: lo and hi within one or two adjacent buckets
            out.append(Piece(b.probe_id, lo, hi, False))
            continue
        if lo < whole_lo:
            out.append(Piece(b.probe_id, lo, whole_lo, False))
        out.append(Piece(b.probe_id, whole_lo, whole_hi, True))
        if whole_hi < hi:
            out.append(Piece(b.probe_id, whole_hi, hi, False))
    return out


def merge_buckets(rows: Iterable[tuple[datetime, int, float, float, float]], width: timedelta) -> list[Bucket]:
    """One bucket per start time from ``(bucket, n, min_t, max_t, sum_t)`` rows of several probes
    or pieces (a swap hour has rows from both probes; two probes in one cold room share buckets)."""
    merged: dict[datetime, Bucket] = {}
    for start, n, lo, hi, total in rows:
        if n <= 0:
            continue
        b = Bucket(start, start + width, int(n), float(lo), float(hi), float(total))
        merged[start] = merged[start].merge(b) if start in merged else b
    return [merged[k] for k in sorted(merged)]


# ---------------------------------------------------------------------------------------------
# The trace as drawn


@dataclass(frozen=True)
class Period:
    start: datetime
    end: datetime
    kind: str
    ongoing: bool = False


@dataclass(frozen=True)
class Trace:
    """The drawn series: ``t`` is the reading (raw) or the bucket mean, plotted at the bucket's
    middle so that alarm shading lines up; ``None`` breaks the line at a gap in the data."""

    ts: list[datetime]
    t: list[float | None]
    band_min: list[float | None] | None
    band_max: list[float | None] | None
    total: int
    gaps: list[Period]

    @property
    def downsampled(self) -> bool:
        return self.total > sum(v is not None for v in self.t)


def _with_breaks(
    ts: list[datetime], columns: list[list[float | None]], gaps: Sequence[Period]
) -> tuple[list[datetime], list[list[float | None]]]:
    """A ``None`` in the middle of each gap: Plotly breaks the line there instead of drawing a
    straight line across hours without data."""
    if not gaps:
        return ts, columns
    out_ts: list[datetime] = []
    out_cols: list[list[float | None]] = [[] for _ in columns]
    marks = iter(sorted(g.start + (g.end - g.start) / 2 for g in gaps))
    mark = next(marks, None)
    for i, x in enumerate(ts):
        while mark is not None and mark < x:
            out_ts.append(mark)
            for col in out_cols:
                col.append(None)
            mark = next(marks, None)
        out_ts.append(x)
        for col, src in zip(out_cols, columns, strict=True):
            col.append(src[i])
    return out_ts, out_cols


def raw_trace(readings: Sequence[tuple[datetime, float]], max_gap: timedelta, threshold: int = MAX_POINTS) -> Trace:
    """Readings in time order, thinned by min-max; gaps longer than the rules' ``max_gap`` (which
    the alarm rules do not bridge either) are found on all readings, before thinning."""
    gaps = [Period(a[0], b[0], "no_data") for a, b in pairwise(readings) if b[0] - a[0] > max_gap]
    # Each gap adds a None to the arrays: leave room for them within the threshold. (Aggregates
    # need no such room: a gap is at least one missing bucket, so points + gaps ≤ buckets in range.)
    keep = minmax([r[0].timestamp() for r in readings], [r[1] for r in readings], max(4, threshold - len(gaps)))
    ts = [readings[i][0] for i in keep]
    values: list[float | None] = [readings[i][1] for i in keep]
    ts, (values,) = _with_breaks(ts, [values], gaps)
    return Trace(ts, values, None, None, len(readings), gaps)


def aggregate_trace(buckets: Sequence[Bucket], threshold: int = MAX_POINTS) -> Trace:
    """Buckets in time order, merged with their neighbours if there are too many (exact, see
    :func:`analytics.downsample.coarsen`); a missing bucket is a gap."""
    kept = coarsen(buckets, threshold)
    gaps = [Period(a.end, b.start, "no_data") for a, b in pairwise(kept) if b.start > a.end]
    ts = [b.start + (b.end - b.start) / 2 for b in kept]
    mean: list[float | None] = [b.mean for b in kept]
    low: list[float | None] = [b.min_t for b in kept]
    high: list[float | None] = [b.max_t for b in kept]
    ts, (mean, low, high) = _with_breaks(ts, [mean, low, high], gaps)
    return Trace(ts, mean, low, high, len(buckets), gaps)


# ---------------------------------------------------------------------------------------------
# Gateways: offline and power periods


@dataclass(frozen=True)
class Status:
    """A gateway status; ``prev_ts`` is when the gateway was heard before it (the previous status
    of the full series, also when the statuses in between were left out as changing nothing)."""

    ts: datetime
    online: bool | None
    power: str | None
    prev_ts: datetime | None


def with_prev(rows: Iterable[tuple[datetime, bool | None, str | None]]) -> list[Status]:
    """Statuses of a complete series, each with the time of the one before."""
    out: list[Status] = []
    prev: datetime | None = None
    for ts, online, power in sorted(rows, key=lambda r: r[0]):
        out.append(Status(ts, online, power, prev))
        prev = ts
    return out


def _merge(periods: Iterable[Period], start: datetime, horizon: datetime, now: datetime) -> list[Period]:
    """Clip to ``[start, horizon)``, merge overlapping periods (a reported offline followed by
    silence is one outage; "reported" wins the label), mark the one reaching ``now`` as ongoing."""
    clipped = sorted(
        (Period(max(p.start, start), min(p.end, horizon), p.kind) for p in periods),
        key=lambda p: (p.start, p.end),
    )
    out: list[Period] = []
    for p in clipped:
        if p.end <= p.start:
            continue
        if out and p.start <= out[-1].end:
            last = out[-1]
            kind = "reported" if "reported" in (last.kind, p.kind) else last.kind
            out[-1] = Period(last.start, max(last.end, p.end), kind)
        else:
            out.append(p)
    return [Period(p.start, p.end, p.kind, p.end >= now) for p in out]


def offline_periods(
    statuses: Sequence[Status], start: datetime, horizon: datetime, now: datetime, offline_after: timedelta
) -> list[Period]:
    """``reported``: from an ``online = false`` status to the next status that does not say so;
    ``silent``: a silence longer than ``offline_after``, from the last status heard to the next
    (or to the horizon, ``min(end, now)``). A gateway with no status at all yields nothing: never
    installed is a registry question, not an outage (as in the alarm rules)."""
    found: list[Period] = []
    down_since: datetime | None = None
    for s in statuses:
        if s.prev_ts is not None and s.ts - s.prev_ts > offline_after:
            found.append(Period(s.prev_ts, s.ts, "silent"))
        if s.online is False and down_since is None:
            down_since = s.ts
        elif s.online is not False and down_since is not None:
            found.append(Period(down_since, s.ts, "reported"))
            down_since = None
    if down_since is not None:
        found.append(Period(down_since, horizon, "reported"))
    if statuses and horizon - statuses[-1].ts > offline_after:
        found.append(Period(statuses[-1].ts, horizon, "silent"))
    return _merge(found, start, horizon, now)


def _subtract(p: Period, holes: Sequence[Period]) -> list[Period]:
    out: list[Period] = []
    cursor = p.start
    for h in holes:  # sorted, disjoint
        if h.end <= cursor or h.start >= p.end:
            continue
        if h.start > cursor:
            out.append(Period(cursor, h.start, p.kind))
        cursor = max(cursor, h.end)
    if cursor < p.end:
        out.append(Period(cursor, p.end, p.kind))
    return out


def power_periods(
    statuses: Sequence[Status], start: datetime, horizon: datetime, now: datetime, offline: Sequence[Period]
) -> list[Period]:
    """Runs of the reported power source (``ac`` / ``battery``), each until the next different
    report, minus the offline periods (while offline the power source is unknown)."""
    runs: list[Period] = []
    power: str | None = None
    since: datetime | None = None
    for s in statuses:
        if s.power is None or s.power == power:
            continue
        if power is not None and since is not None:
            runs.append(Period(since, s.ts, power))
        power, since = s.power, s.ts
    if power is not None and since is not None:
        runs.append(Period(since, horizon, power))
    holes = sorted(offline, key=lambda h: h.start)
    pieces = [q for r in runs for q in _subtract(Period(max(r.start, start), min(r.end, horizon), r.kind), holes)]
    return [Period(q.start, q.end, q.kind, q.end >= now) for q in pieces if q.end > q.start]


# ---------------------------------------------------------------------------------------------
# Queries

_COMPARTMENT = """
SELECT c.id, c.name, c.mode, c.t_min::float8 AS t_min, c.t_max::float8 AS t_max, c.status,
       e.id AS equipment_id, e.name AS equipment_name, e.unit_id, coalesce(p.params, '{}'::jsonb) AS overrides
FROM compartments c
JOIN equipment e ON e.id = c.equipment_id
LEFT JOIN alarm_rule_params p ON p.compartment_id = c.id
WHERE c.id = %(id)s
"""

_BINDINGS = """
SELECT b.probe_id, b.gateway_id, lower(b.valid) AS lo, upper(b.valid) AS hi
FROM probe_bindings b
WHERE b.compartment_id = %(id)s AND b.valid && tstzrange(%(start)s, %(end)s)
ORDER BY lower(b.valid)
"""

# Each reading with the binding valid at its time (the planner walks each binding's probe on the
# readings' primary key).
_RAW = """
SELECT r.ts, r.t
FROM probe_bindings b
JOIN probe_readings r ON r.probe_id = b.probe_id AND b.valid @> r.ts
WHERE b.compartment_id = %(id)s AND b.valid && tstzrange(%(start)s, %(end)s)
  AND r.ts >= %(start)s AND r.ts < %(end)s
ORDER BY r.ts
"""

# Constant bounds and one probe per query: they reach into both halves of the plain-path views
# (materialised ∪ live), which a join condition would not (see inventory/exposure.py).
_WHOLE: dict[Source, str] = {
    "hourly": """SELECT bucket, n, min_t, max_t, sum_t FROM probe_readings_hourly
                 WHERE probe_id = %(probe)s AND bucket >= %(lo)s AND bucket < %(hi)s""",
    "daily": """SELECT bucket, n, min_t, max_t, sum_t FROM probe_readings_daily
                WHERE probe_id = %(probe)s AND bucket >= %(lo)s AND bucket < %(hi)s""",
}
_PARTIAL: dict[Source, str] = {
    "hourly": """SELECT time_bucket(INTERVAL '1 hour', ts) AS bucket, count(*) AS n, min(t) AS min_t,
                        max(t) AS max_t, sum(t) AS sum_t
                 FROM probe_readings WHERE probe_id = %(probe)s AND ts >= %(lo)s AND ts < %(hi)s GROUP BY 1""",
    "daily": """SELECT time_bucket(INTERVAL '1 day', ts, 'Asia/Shanghai') AS bucket, count(*) AS n,
                       min(t) AS min_t, max(t) AS max_t, sum(t) AS sum_t
                FROM probe_readings WHERE probe_id = %(probe)s AND ts >= %(lo)s AND ts < %(hi)s GROUP BY 1""",
}

_ALARMS = """
SELECT id, kind, severity, state, condition_since, resolved_at, value, found_late, suppressed
FROM alarms
WHERE compartment_id = %(id)s AND condition_since < %(end)s AND coalesce(resolved_at, 'infinity') > %(start)s
ORDER BY condition_since, id
"""

_THERMOMETER = """
SELECT t.ts, t.t::float8 AS t, t.note, f.finding AS drift, f.difference, f.probe_t
FROM thermometer_readings_current t  -- a corrected entry is drawn as its correction
LEFT JOIN drift_findings f ON f.thermometer_reading_id = t.id
WHERE t.compartment_id = %(id)s AND t.ts >= %(start)s AND t.ts < %(end)s
ORDER BY t.ts, t.id
"""

_GATEWAYS = "SELECT id, serial FROM gateways WHERE id = ANY(%(ids)s) ORDER BY serial"

# The statuses where something changes, each with the time of the status before it in the full
# series (see Status): the last one before the range (the state at its start), the first in it,
# online ↔ offline, a power report differing from the status before (a status without power, e.g.
# a presence message, makes the next report count as a change: harmless, the Python side skips
# non-changes), the first after a silence, and the last (silence up to the horizon).
_STATUSES = """
WITH before AS (
    SELECT ts, online, power FROM gateway_status WHERE gateway_id = %(g)s AND ts < %(start)s
    ORDER BY ts DESC LIMIT 1
), w AS (
    -- In primary-key order, so the window needs no sort.
    SELECT ts, online, power, lag(ts) OVER o AS prev_ts, lead(ts) OVER o IS NULL AS is_last,
           (online IS FALSE) IS DISTINCT FROM lag(online IS FALSE) OVER o AS online_changed,
           power IS NOT NULL AND power IS DISTINCT FROM lag(power) OVER o AS power_changed
    FROM gateway_status WHERE gateway_id = %(g)s AND ts >= %(start)s AND ts < %(end)s
    WINDOW o AS (ORDER BY ts)
)
SELECT ts, online, power, NULL::timestamptz AS prev_ts FROM before
UNION ALL
SELECT ts, online, power, coalesce(prev_ts, (SELECT ts FROM before)) FROM w
WHERE prev_ts IS NULL OR is_last OR online_changed OR power_changed OR ts - prev_ts > %(after)s
ORDER BY ts
"""


def compartment_row(conn: psycopg.Connection, compartment_id: int) -> dict[str, Any] | None:
    """The compartment with its equipment and unit (for the jurisdiction check), or None."""
    return fetch_one(conn, _COMPARTMENT, {"id": compartment_id})


def _rule_params(row: dict[str, Any]) -> RuleParams:
    """The compartment's effective limits and gap, as its alarms are judged. A broken override
    (refused when saved, but the jsonb could be edited in psql) must not break the chart: the
    registered limits with default parameters then."""
    try:
        return params_for(row["mode"], row["t_min"], row["t_max"], row["overrides"])
    except (ValueError, TypeError):
        return params_for(row["mode"], row["t_min"], row["t_max"])


def gateway_statuses(
    conn: psycopg.Connection, gateway_id: int, start: datetime, end: datetime, offline_after: timedelta
) -> list[Status]:
    rows = fetch_all(conn, _STATUSES, {"g": gateway_id, "start": start, "end": end, "after": offline_after})
    return [Status(r["ts"], r["online"], r["power"], r["prev_ts"]) for r in rows]


def temperature_trace(
    conn: psycopg.Connection,
    compartment_id: int,
    bindings: Sequence[Binding],
    start: datetime,
    end: datetime,
    source: Source,
    max_gap: timedelta,
) -> Trace:
    if source == "raw":
        rows = conn.execute(_RAW, {"id": compartment_id, "start": start, "end": end}).fetchall()
        return raw_trace([(ts, float(t)) for ts, t in rows], max_gap)
    found: list[tuple[datetime, int, float, float, float]] = []
    for piece in plan_pieces(bindings, start, end, source):
        query = _WHOLE[source] if piece.whole else _PARTIAL[source]
        found.extend(conn.execute(query, {"probe": piece.probe_id, "lo": piece.lo, "hi": piece.hi}).fetchall())
    return aggregate_trace(merge_buckets(found, GRAIN[source]))


def compartment_series(
    conn: psycopg.Connection,
    compartment: dict[str, Any],
    start: datetime,
    end: datetime,
    now: datetime,
) -> dict[str, Any]:
    """Everything the device page draws for one compartment in ``[start, end)``; ``compartment``
    is :func:`compartment_row`'s row (already checked to be in the user's jurisdiction)."""
    cid = int(compartment["id"])
    params = _rule_params(compartment)
    source = choose_source(start, end)
    window = {"id": cid, "start": start, "end": end}
    bindings = [Binding(r["probe_id"], r["gateway_id"], r["lo"], r["hi"]) for r in fetch_all(conn, _BINDINGS, window)]
    trace = temperature_trace(conn, cid, bindings, start, end, source, params.max_gap)

    alarms = [
        {
            "id": a["id"],
            "kind": a["kind"],
            "label": KIND_NAMES.get(a["kind"], a["kind"]),
            "severity": a["severity"],
            "severity_label": SEVERITY_NAMES.get(a["severity"], a["severity"]),
            "state": a["state"],
            "start": a["condition_since"],
            "end": a["resolved_at"] or max(now, a["condition_since"]),
            "ongoing": a["resolved_at"] is None,
            "value": a["value"],
            "found_late": a["found_late"],
            "suppressed": a["suppressed"],
        }
        for a in fetch_all(conn, _ALARMS, window)
    ]

    offline_after = GatewayParams().offline_after
    horizon = max(start, min(end, now))
    gateways = []
    gateway_ids = sorted({b.gateway_id for b in bindings})
    for g in fetch_all(conn, _GATEWAYS, {"ids": gateway_ids}):
        statuses = gateway_statuses(conn, g["id"], start, end, offline_after)
        offline = offline_periods(statuses, start, horizon, now, offline_after)
        gateways.append(
            {
                "id": g["id"],
                "serial": g["serial"],
                "heard": bool(statuses),
                "power": [asdict(p) for p in power_periods(statuses, start, horizon, now, offline)],
                "offline": [asdict(p) for p in offline],
            }
        )

    return {
        "compartment_id": cid,
        "compartment_name": compartment["name"],
        "mode": compartment["mode"],
        "equipment_id": compartment["equipment_id"],
        "equipment_name": compartment["equipment_name"],
        "start": start,
        "end": end,
        "source": source,
        "bucket_seconds": int(GRAIN[source].total_seconds()) if source != "raw" else None,
        "total": trace.total,
        "downsampled": trace.downsampled,
        "points": {"ts": trace.ts, "t": trace.t},
        "band": None if trace.band_min is None else {"min": trace.band_min, "max": trace.band_max},
        "gaps": [asdict(g) for g in trace.gaps],
        "limits": {"t_min": params.t_min, "t_max": params.t_max},
        "alarms": alarms,
        "thermometer": fetch_all(conn, _THERMOMETER, window),
        "gateways": gateways,
        "offline_after_seconds": int(offline_after.total_seconds()),
    }
