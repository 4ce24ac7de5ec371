"""Every figure of the monthly cold-chain report, as pure functions over polars frames.

Why pure: the provincial CDC defines and explains the indicators (RS1), so each one is stated
once, here, with its reasons, and the tests compute them by hand. The SQL in :mod:`facts` only
gathers facts (bindings, hourly counts, readings around excursions, alarms, findings) and never
decides anything.

Definitions (the README's section on the report quotes them):

* **Month** — a Beijing calendar month, [1st 00:00, next 1st 00:00) Asia/Shanghai. The current
  month is cut at "now" and is provisional; a month is final :data:`KEEP_AFTER` after it ends.
* **Device** — a piece of cold-chain equipment (冰箱, 冷库, 冷藏车 …), with all its compartments.
* **Readings expected** — the time each probe was bound to one of the device's compartments
  within the month (up to now) divided by the nominal interval :data:`READING_INTERVAL`.
* **Data completeness** — readings received ÷ readings expected, capped at 100 %; none when the
  device had no probe bound (nothing could be expected).
* **Hours out of range** — exact, not estimated from aggregates: each reading holds until the next
  one, for at most 30 minutes (:data:`inventory.trace.MAX_GAP`, the lot trace's definition, so a
  vaccine's trace and its fridge's report agree); out of range means strictly outside the limits
  the alarm rules use. Only the hours whose hourly aggregate crosses a limit (plus the hour after,
  into which a reading can hold) and partial edge hours are read reading by reading. A device's
  figure is the sum over its compartments.
* **Offline hours** — whole clock hours, while bound, in which a compartment's probe sent no
  reading at all (from the hourly aggregate); a device's figure is its worst compartment's. When a
  gateway drops, all its compartments are silent together, so this is the device's dark time.
* **Problem device** — see :func:`problem_expressions`.
* **Alarm response** (CM16) — over the alarms raised in the month that were notified (suppressed
  no-data alarms behind an offline gateway are notified as that gateway's alarm): acknowledged
  within 30 minutes of being raised; reached level 2 / level 3 = the escalation ladder owed that
  step before the alarm was resolved (the outbox holds a ``level2`` / ``level3`` row for it).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any

import polars as pl

from alarms.rules import GatewayParams
from coldchain.core.terms import BEIJING, current_month, next_month
from inventory.trace import MAX_GAP as HOLD_MAX
from inventory.trace import out_of_range_minutes

READING_INTERVAL = timedelta(seconds=60)
"""Nominal reading interval of a probe: the gateways (and ``coldchain simulate``, ``--interval 60``)
report every minute; the alarm rules' "1 minute at the usual rate" assumes the same."""

ACK_WITHIN = timedelta(minutes=30)
"""CM16: level 1 on site and the alarm confirmed within 30 minutes."""

KEEP_AFTER = timedelta(days=2)
"""A month's report is final (kept, never recomputed) two days after the month ends: gateways that
were offline over the month's end upload what they buffered when they return, and the aggregates
are refreshed within the hour; until then the report is computed live and marked provisional."""

COMPLETENESS_MIN = 0.9
"""Below 90 % completeness a device is a problem: about three days of a month without data."""

OUT_OF_RANGE_PROBLEM_HOURS = 1.0
"""An hour out of range in the month makes a device a problem even without an alarm: the same
60 minutes as the cumulative-excursion alarm (``cumulative_limit``)."""

WARRANTY_HORIZON_DAYS = 90
"""Hardware whose warranty ends in the month or within 90 days after it: a quarter is enough to
have the vendor look at a failing item while repairs are still free (CM4)."""

TOP_PROBLEMS = 10
"""How many problem devices the ranking lists."""

FIRST_MONTH = date(2015, 1, 1)
"""No report before 2015: the device contract refuses readings stamped earlier."""

DEVICE_ALARM_KINDS: tuple[str, ...] = ("high", "low", "freeze", "cumulative", "wrong_place", "no_data")
GATEWAY_ALARM_KINDS: tuple[str, ...] = ("gateway_offline", "gateway_power", "gateway_battery_low", "gateway_signal")

EQUIPMENT_KIND_NAMES: Mapping[str, str] = {
    "fridge": "冰箱",
    "freezer": "冰柜",
    "medical_fridge": "医用冷藏柜",
    "cold_room": "冷库",
    "vehicle": "冷藏车",
}
HARDWARE_NAMES: Mapping[str, str] = {"gateway": "网关", "probe": "探头"}

_HOUR = timedelta(hours=1)


# ---------------------------------------------------------------------------------------------
# The month


@dataclass(frozen=True)
class Period:
    """One Beijing month; facts are read in [start, cut), cut = min(end, now)."""

    month: date
    start: datetime
    end: datetime
    cut: datetime

    @property
    def label(self) -> str:
        return f"{self.month.year:04d}-{self.month.month:02d}"

    @property
    def closed(self) -> bool:
        return self.cut >= self.end

    @property
    def last_day(self) -> date:
        return (self.end - timedelta(days=1)).astimezone(BEIJING).date()

    def keepable(self, now: datetime) -> bool:
        """Final: kept once generated, served from storage ever after (see :data:`KEEP_AFTER`)."""
        return now >= self.end + KEEP_AFTER


def month_period(month: date, now: datetime) -> Period:
    first = month.replace(day=1)
    start = datetime(first.year, first.month, 1, tzinfo=BEIJING)
    following = next_month(first)
    end = datetime(following.year, following.month, 1, tzinfo=BEIJING)
    return Period(first, start, end, max(start, min(end, now)))


def month_problem(month: date, now: datetime) -> str | None:
    """Why no report can be made for ``month`` (Chinese), or None."""
    if month > current_month(now):
        return f"{month:%Y-%m} 尚未到来，不能生成该月的报告"
    if month < FIRST_MONTH:
        return "2015 年以前没有监测数据，不能生成报告"
    return None


# ---------------------------------------------------------------------------------------------
# Readings: expected, received, out of range, silent — per binding piece


@dataclass(frozen=True)
class Piece:
    """A probe's binding to a compartment, cut to the period: [lo, hi). ``bound_from`` is where the
    binding itself starts: a reading before it belonged to another compartment and must not carry
    its temperature into this one."""

    key: int
    probe_id: int
    compartment_id: int
    equipment_id: int
    bound_from: datetime
    lo: datetime
    hi: datetime
    t_min: float | None
    t_max: float

    @property
    def hour_lo(self) -> datetime:
        """First whole hour inside the piece."""
        floor = _floor_hour(self.lo)
        return floor if floor == self.lo else floor + _HOUR

    @property
    def hour_hi(self) -> datetime:
        """End of the last whole hour inside the piece (may precede ``hour_lo``: no whole hour)."""
        return _floor_hour(self.hi)

    @property
    def whole_hours(self) -> int:
        return max(0, int((self.hour_hi - self.hour_lo) / _HOUR))

    @property
    def expected(self) -> float:
        return max(timedelta(0), self.hi - self.lo) / READING_INTERVAL

    @property
    def edges(self) -> list[tuple[datetime, datetime]]:
        """The partial hours at the piece's ends, read reading by reading (a binding that starts
        or ends within an hour, or "now" in the current month); months start on whole hours."""
        if self.hour_lo > self.hour_hi:
            return [(self.lo, self.hi)] if self.hi > self.lo else []
        spans = []
        if self.lo < self.hour_lo:
            spans.append((self.lo, self.hour_lo))
        if self.hour_hi < self.hi:
            spans.append((self.hour_hi, self.hi))
        return spans


def _floor_hour(ts: datetime) -> datetime:
    return ts.replace(minute=0, second=0, microsecond=0)


def excursion_windows(piece: Piece, crossing_hours: Iterable[datetime]) -> list[tuple[datetime, datetime]]:
    """The stretches of ``piece`` to read reading by reading: its partial edge hours, and each hour
    whose aggregate crosses a limit together with the hour after it (a reading holds for at most
    30 minutes, so an excursion reaches at most into the next hour). The hour before the piece may
    be among ``crossing_hours``: an excursion running at the month's start then counts from the
    start. Clipped to the piece, merged where they touch, in time order."""
    spans = list(piece.edges) + [(h, h + 2 * _HOUR) for h in crossing_hours]
    clipped = sorted((max(a, piece.lo), min(b, piece.hi)) for a, b in spans)
    merged: list[tuple[datetime, datetime]] = []
    for a, b in clipped:
        if b <= a:
            continue
        if merged and a <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], b))
        else:
            merged.append((a, b))
    return merged


@dataclass(frozen=True)
class PieceFigures:
    key: int
    compartment_id: int
    equipment_id: int
    expected: float
    received: int
    minutes_out: float
    silent_hours: int


def piece_figures(
    piece: Piece,
    hourly_received: int,
    hours_with_data: int,
    windows: Sequence[tuple[tuple[datetime, datetime], Sequence[tuple[datetime, float]]]],
) -> PieceFigures:
    """A piece's figures from its whole-hour aggregate counts and the readings of its windows (each
    window's readings may include the one just before it and the one just after: those carry the
    state in and end the last reading's hold, and are not counted as received)."""
    edge_ts: set[datetime] = set()
    minutes = 0.0
    for (lo, hi), readings in windows:
        minutes += out_of_range_minutes(readings, piece.t_min, piece.t_max, lo, hi, HOLD_MAX)
        edge_ts.update(ts for ts, _ in readings if any(a <= ts < b for a, b in piece.edges))
    return PieceFigures(
        key=piece.key,
        compartment_id=piece.compartment_id,
        equipment_id=piece.equipment_id,
        expected=piece.expected,
        received=hourly_received + len(edge_ts),
        minutes_out=minutes,
        silent_hours=max(0, piece.whole_hours - hours_with_data),
    )


# ---------------------------------------------------------------------------------------------
# Frames: the shapes the facts arrive in

UNITS_SCHEMA: dict[str, Any] = {
    "unit_id": pl.Int64, "code": pl.String, "name": pl.String, "level": pl.String, "area_id": pl.Int64,
}
DEVICES_SCHEMA: dict[str, Any] = {"equipment_id": pl.Int64, "unit_id": pl.Int64, "kind": pl.String, "name": pl.String}
PIECES_SCHEMA: dict[str, Any] = {
    "key": pl.Int64, "compartment_id": pl.Int64, "equipment_id": pl.Int64, "expected": pl.Float64,
    "received": pl.Int64, "minutes_out": pl.Float64, "silent_hours": pl.Int64,
}
ALARMS_SCHEMA: dict[str, Any] = {
    "id": pl.Int64, "kind": pl.String, "unit_id": pl.Int64, "equipment_id": pl.Int64, "gateway_id": pl.Int64,
    "condition_since": pl.Datetime("us", "UTC"), "raised_at": pl.Datetime("us", "UTC"),
    "acknowledged_at": pl.Datetime("us", "UTC"), "resolved_at": pl.Datetime("us", "UTC"),
    "suppressed": pl.Boolean, "raised_in_period": pl.Boolean, "reached_level2": pl.Boolean,
    "reached_level3": pl.Boolean,
}
DRIFTS_SCHEMA: dict[str, Any] = {"id": pl.Int64, "equipment_id": pl.Int64}
GATEWAYS_SCHEMA: dict[str, Any] = {
    "gateway_id": pl.Int64, "serial": pl.String, "unit_id": pl.Int64, "vendor": pl.String, "model": pl.String,
}
GATEWAY_STATUS_SCHEMA: dict[str, Any] = {
    "gateway_id": pl.Int64, "statuses": pl.Int64, "power_reports": pl.Int64, "on_battery": pl.Int64,
    "battery_reports": pl.Int64, "battery_low": pl.Int64, "rssi_reports": pl.Int64, "weak_signal": pl.Int64,
    "min_battery": pl.Float64, "min_rssi": pl.Int64,
}
LOGINS_SCHEMA: dict[str, Any] = {
    "unit_id": pl.Int64, "code": pl.String, "name": pl.String, "days": pl.Int64, "compliant_days": pl.Int64,
    "noncompliant_days": pl.Int64, "days_without_login": pl.Int64, "rate": pl.Float64,
}
HARDWARE_SCHEMA: dict[str, Any] = {
    "hardware": pl.String, "serial": pl.String, "unit_id": pl.Int64, "vendor": pl.String, "model": pl.String,
    "warranty_end": pl.Date, "status": pl.String,
}


def frame(rows: Iterable[Mapping[str, Any]], schema: Mapping[str, Any]) -> pl.DataFrame:
    """A frame with exactly ``schema``'s columns, also when there are no rows (an empty month)."""
    data = [{k: r.get(k) for k in schema} for r in rows]
    return pl.DataFrame(data, schema=dict(schema), orient="row") if data else pl.DataFrame(schema=dict(schema))


def _areas(units: pl.DataFrame, report_unit: int) -> pl.DataFrame:
    """Units with their area's code and name. Areas are the units directly below the report unit
    (a city's counties, the province's cities and direct-reporting counties, a county's sites); the
    report unit's own devices form an area of their own, "本级"."""
    names = units.select(
        pl.col("unit_id").alias("area_id"),
        pl.col("code").alias("area_code"),
        pl.when(pl.col("unit_id") == report_unit)
        .then(pl.col("name") + "（本级）")
        .otherwise(pl.col("name"))
        .alias("area_name"),
    )
    return units.join(names, on="area_id", how="left")


# ---------------------------------------------------------------------------------------------
# Devices


def problem_expressions() -> list[tuple[str, pl.Expr]]:
    """What makes a device a problem device in a month, each with the reason shown to the reader:

    * an alarm raised on it (notified, any kind: temperature, freeze, cumulative, wrong place, no data);
    * at least :data:`OUT_OF_RANGE_PROBLEM_HOURS` out of range (even if no alarm was raised);
    * data completeness below :data:`COMPLETENESS_MIN`;
    * a drift finding (probe vs thermometer beyond ±0.5 ℃ / ±1 ℃, CM10).
    """
    return [
        ("报警", pl.col("alarms_total") > 0),
        ("超温", pl.col("out_of_range_hours") >= OUT_OF_RANGE_PROBLEM_HOURS),
        ("数据不完整", pl.col("completeness").is_not_null() & (pl.col("completeness") < COMPLETENESS_MIN)),
        ("温度计比对偏差", pl.col("drift_findings") > 0),
    ]


def device_table(
    devices: pl.DataFrame,
    units: pl.DataFrame,
    pieces: pl.DataFrame,
    alarms: pl.DataFrame,
    drifts: pl.DataFrame,
    report_unit: int,
) -> pl.DataFrame:
    """One row per device: alarms by kind, hours out of range, offline hours, completeness, drift
    findings, whether it is a problem and why. Sorted by area, unit and device name."""
    per_device = (
        pieces.group_by("equipment_id", "compartment_id")
        .agg(pl.col("expected").sum(), pl.col("received").sum(), pl.col("minutes_out").sum(),
             pl.col("silent_hours").sum())
        .group_by("equipment_id")
        .agg(
            pl.len().alias("compartments"),
            pl.col("expected").sum(),
            pl.col("received").sum(),
            (pl.col("minutes_out").sum() / 60).alias("out_of_range_hours"),
            pl.col("silent_hours").max().alias("offline_hours"),
        )
    )
    notified = alarms.filter(
        pl.col("raised_in_period") & ~pl.col("suppressed") & pl.col("equipment_id").is_not_null()
        & pl.col("kind").is_in(DEVICE_ALARM_KINDS)
    )
    counts = notified.group_by("equipment_id").agg(
        *[(pl.col("kind") == k).sum().cast(pl.Int64).alias(f"alarms_{k}") for k in DEVICE_ALARM_KINDS]
    )
    drift = drifts.group_by("equipment_id").agg(pl.len().cast(pl.Int64).alias("drift_findings"))
    count_cols = [f"alarms_{k}" for k in DEVICE_ALARM_KINDS]
    table = (
        devices.join(_areas(units, report_unit).select("unit_id", "code", "name", "area_id", "area_code", "area_name")
                     .rename({"code": "unit_code", "name": "unit_name"}), on="unit_id", how="left")
        .join(per_device, on="equipment_id", how="left")
        .join(counts, on="equipment_id", how="left")
        .join(drift, on="equipment_id", how="left")
        .with_columns(
            pl.col(*count_cols, "drift_findings").fill_null(0),
            pl.col("compartments").fill_null(0).cast(pl.Int64),
            pl.col("expected").fill_null(0.0),
            pl.col("received").fill_null(0).cast(pl.Int64),
            pl.col("out_of_range_hours").fill_null(0.0),
            pl.col("offline_hours").fill_null(0).cast(pl.Int64),
            pl.col("kind").replace_strict(EQUIPMENT_KIND_NAMES, default=pl.col("kind")).alias("kind_name"),
        )
        .with_columns(
            pl.sum_horizontal(count_cols).alias("alarms_total"),
            pl.when(pl.col("expected") > 0)
            .then(pl.min_horizontal(pl.col("received") / pl.col("expected"), pl.lit(1.0)))
            .otherwise(None)
            .alias("completeness"),
        )
    )
    reasons = problem_expressions()
    table = table.with_columns(
        pl.any_horizontal([cond for _, cond in reasons]).fill_null(False).alias("problem"),
        pl.concat_str([pl.when(cond).then(pl.lit(label)) for label, cond in reasons],
                      separator="、", ignore_nulls=True).alias("problems"),
    )
    return table.with_columns(
        pl.col("out_of_range_hours").round(2),
        pl.col("completeness").round(4),
        pl.col("expected").round(0).cast(pl.Int64),
    ).sort("area_code", "unit_code", "name", "equipment_id", nulls_last=True)


def problem_ranking(devices: pl.DataFrame, limit: int = TOP_PROBLEMS) -> pl.DataFrame:
    """The devices with the most problems: problem devices by number of alarms, then hours out of
    range, offline hours, drift findings, lowest completeness (none last), then unit and name."""
    return (
        devices.filter(pl.col("problem"))
        .sort(
            ["alarms_total", "out_of_range_hours", "offline_hours", "drift_findings", "completeness",
             "unit_code", "name"],
            descending=[True, True, True, True, False, False, False],
            nulls_last=True,
        )
        .head(limit)
        .with_row_index("rank", offset=1)
        .with_columns(pl.col("rank").cast(pl.Int64))
    )


def area_shares(devices: pl.DataFrame, units: pl.DataFrame, report_unit: int) -> pl.DataFrame:
    """Per area: devices, problem devices and their share (none for an area without devices). Every
    area below the report unit is listed, with or without devices; "本级" only when it has any."""
    named = _areas(units, report_unit)
    areas = (
        named.filter((pl.col("unit_id") == pl.col("area_id")) & (pl.col("unit_id") != report_unit))
        .select("area_id", "area_code", "area_name")
    )
    own = named.filter(pl.col("unit_id") == report_unit).select("area_id", "area_code", "area_name")
    counted = (
        devices.select("unit_id", "problem").join(named.select("unit_id", "area_id"), on="unit_id", how="left")
        .group_by("area_id")
        .agg(pl.len().cast(pl.Int64).alias("devices"), pl.col("problem").sum().cast(pl.Int64).alias("problem_devices"))
    )
    if counted.filter(pl.col("area_id") == report_unit).height:
        areas = pl.concat([own, areas])
    return (
        areas.join(counted, on="area_id", how="left")
        .with_columns(pl.col("devices", "problem_devices").fill_null(0))
        .with_columns(
            pl.when(pl.col("devices") > 0).then(pl.col("problem_devices") / pl.col("devices")).otherwise(None)
            .round(4).alias("problem_share")
        )
        .with_columns((pl.col("area_id") != report_unit).alias("_below"))
        .sort("_below", "area_code")
        .drop("_below")
    )


# ---------------------------------------------------------------------------------------------
# Alarm response (CM16)


def alarm_response(alarms: pl.DataFrame, units: pl.DataFrame, report_unit: int) -> pl.DataFrame:
    """Per area and in total ("合计", last): notified alarms raised in the month, how many were
    acknowledged, how many within 30 minutes, the median minutes to acknowledge, and how many
    reached level 2 and level 3, with shares of all notified alarms."""
    named = _areas(units, report_unit).select("unit_id", "area_id", "area_code", "area_name")
    notified = (
        alarms.filter(pl.col("raised_in_period") & ~pl.col("suppressed"))
        .join(named, on="unit_id", how="left")
        .with_columns(
            ((pl.col("acknowledged_at") - pl.col("raised_at")).dt.total_seconds() / 60).alias("ack_minutes"),
        )
    )
    figures = [
        pl.len().cast(pl.Int64).alias("alarms"),
        pl.col("ack_minutes").is_not_null().sum().cast(pl.Int64).alias("acknowledged"),
        (pl.col("ack_minutes") <= ACK_WITHIN.total_seconds() / 60).sum().cast(pl.Int64).alias("ack_within_30"),
        pl.col("ack_minutes").median().round(1).alias("ack_median_minutes"),
        pl.col("reached_level2").sum().cast(pl.Int64).alias("reached_level2"),
        pl.col("reached_level3").sum().cast(pl.Int64).alias("reached_level3"),
    ]
    per_area = notified.group_by("area_id", "area_code", "area_name").agg(*figures).sort("area_code")
    total = notified.select(
        pl.lit(None, pl.Int64).alias("area_id"), pl.lit(None, pl.String).alias("area_code"),
        pl.lit("合计").alias("area_name"), *figures,
    )
    return pl.concat([per_area, total]).with_columns(
        *[
            pl.when(pl.col("alarms") > 0).then(pl.col(n) / pl.col("alarms")).otherwise(None).round(4).alias(name)
            for n, name in (("ack_within_30", "ack_within_30_share"), ("reached_level2", "level2_share"),
                            ("reached_level3", "level3_share"))
        ]
    )


# ---------------------------------------------------------------------------------------------
# Gateways (CM12)


GATEWAY_THRESHOLDS = GatewayParams()
"""The alarm rules' default gateway thresholds, for the status counts (see :func:`gateway_table`)."""


def gateway_table(
    gateways: pl.DataFrame,
    status: pl.DataFrame,
    alarms: pl.DataFrame,
    units: pl.DataFrame,
    period: Period,
    report_unit: int,
) -> pl.DataFrame:
    """Gateways with a power or signal problem in the month, worst first.

    A gateway has a problem when one of its alarms (offline, on battery, battery low, weak signal)
    was open at any time in the month: the alarm rules already apply the thresholds
    (``GatewayParams``: battery below 3.5 V, RSSI below −100 dBm for 15 minutes), their hold
    times and the per-compartment overrides. The status counts beside it (share of status reports
    on battery, below the battery threshold, below the RSSI threshold; the lowest values) use the
    same default thresholds and show the evidence; a gateway with such reports but no alarm is
    listed too, not counted as a problem."""
    start, cut = period.start.astimezone(UTC), period.cut.astimezone(UTC)
    gw_alarms = alarms.filter(pl.col("gateway_id").is_not_null() & pl.col("kind").is_in(GATEWAY_ALARM_KINDS))
    overlap = (
        pl.min_horizontal(pl.col("resolved_at").fill_null(pl.lit(cut)), pl.lit(cut))
        - pl.max_horizontal(pl.col("condition_since"), pl.lit(start))
    ).dt.total_seconds().clip(lower_bound=0) / 3600
    per_kind = gw_alarms.with_columns(overlap.alias("hours")).group_by("gateway_id").agg(
        *[
            (pl.col("raised_in_period") & (pl.col("kind") == k)).sum().cast(pl.Int64).alias(f"alarms_{k}")
            for k in GATEWAY_ALARM_KINDS
        ],
        *[pl.col("hours").filter(pl.col("kind") == k).sum().alias(f"hours_{k}") for k in GATEWAY_ALARM_KINDS],
    )
    named = _areas(units, report_unit).select("unit_id", "code", "name", "area_id", "area_code", "area_name")
    hour_cols = [f"hours_{k}" for k in GATEWAY_ALARM_KINDS]
    count_cols = [f"alarms_{k}" for k in GATEWAY_ALARM_KINDS]
    table = (
        gateways.join(named.rename({"code": "unit_code", "name": "unit_name"}), on="unit_id", how="left")
        .join(status, on="gateway_id", how="left")
        .join(per_kind, on="gateway_id", how="left")
        .with_columns(pl.col(*count_cols).fill_null(0), pl.col(*hour_cols).fill_null(0.0))
        .with_columns(
            pl.col("statuses", "power_reports", "on_battery", "battery_reports", "battery_low", "rssi_reports",
                   "weak_signal").fill_null(0),
            pl.sum_horizontal(hour_cols).alias("problem_hours"),
        )
        .with_columns(
            *[
                pl.when(pl.col(d) > 0).then(pl.col(n) / pl.col(d)).otherwise(None).round(4).alias(f"{n}_share")
                for n, d in (("on_battery", "power_reports"), ("battery_low", "battery_reports"),
                             ("weak_signal", "rssi_reports"))
            ],
            (pl.col("problem_hours") > 0).alias("problem"),
            pl.col(*hour_cols).round(2),
            pl.col("min_battery").round(2),
        )
        .with_columns(pl.col("problem_hours").round(2))
    )
    return table.filter(
        pl.col("problem") | (pl.col("on_battery") > 0) | (pl.col("battery_low") > 0) | (pl.col("weak_signal") > 0)
    ).sort(["problem", "problem_hours", "unit_code", "serial"], descending=[True, True, False, False])



# ---------------------------------------------------------------------------------------------
# Logins (CM14), warranties (CM4)


def login_table(logins: pl.DataFrame, units: pl.DataFrame, report_unit: int) -> pl.DataFrame:
    """The CM14 monthly table (rows as :func:`analytics.logins.monthly_table` makes them) with each
    site's area, in its order (rate ascending: the sites to follow up first)."""
    named = _areas(units, report_unit).select("unit_id", "area_code", "area_name")
    return (
        logins.with_row_index("_order")
        .join(named, on="unit_id", how="left")
        .sort("_order")
        .drop("_order")
        .with_columns(pl.col("rate").round(4))
    )


def login_rate(logins: pl.DataFrame) -> float | None:
    """Compliant site-days ÷ counted site-days over all sites (none when no day is counted)."""
    days = int(logins["days"].sum()) if logins.height else 0
    return round(int(logins["compliant_days"].sum()) / days, 4) if days else None


def warranty_table(hardware: pl.DataFrame, units: pl.DataFrame, period: Period, report_unit: int) -> pl.DataFrame:
    """Gateways and probes (not decommissioned) whose warranty ends within the month or within
    :data:`WARRANTY_HORIZON_DAYS` after its last day, soonest first; ``days_after_month`` is
    negative or zero for those that ended within the month."""
    last = period.last_day
    named = _areas(units, report_unit).select("unit_id", "name", "area_code", "area_name")
    return (
        hardware.filter(
            (pl.col("status") != "decommissioned")
            & (pl.col("warranty_end") >= period.month)
            & (pl.col("warranty_end") <= last + timedelta(days=WARRANTY_HORIZON_DAYS))
        )
        .join(named.rename({"name": "unit_name"}), on="unit_id", how="left")
        .with_columns(
            (pl.col("warranty_end") - pl.lit(last)).dt.total_days().cast(pl.Int64).alias("days_after_month"),
            pl.col("hardware").replace_strict(HARDWARE_NAMES, default=pl.col("hardware")).alias("hardware_name"),
        )
        .with_columns(
            pl.when(pl.col("days_after_month") <= 0).then(pl.lit("本月已到期"))
            .otherwise(pl.format("月末后 {} 天到期", pl.col("days_after_month"))).alias("note")
        )
        .sort("warranty_end", "hardware", "serial")
    )


# ---------------------------------------------------------------------------------------------
# Headline and the change from the previous month


@dataclass(frozen=True)
class Indicator:
    key: str
    label: str
    unit: str
    higher_is_better: bool
    definition: str


INDICATORS: tuple[Indicator, ...] = (
    Indicator("devices", "设备数", "台", True, "月内在用（未在月初前停用）的冷链设备，按台计，含其全部温区。"),
    Indicator("problem_devices", "问题设备数", "台", False,
              "月内有报警、超温累计 ≥ 1 小时、数据完整率 < 90% 或有温度计比对偏差的设备。"),
    Indicator("problem_share", "问题设备占比", "%", False, "问题设备数 ÷ 设备数。"),
    Indicator("alarms", "报警数", "次", False,
              "月内发出的报警（含网关报警；网关离线时其后探头的无数据状态并入网关报警，不单独计）。"),
    Indicator("out_of_range_hours", "超温小时数", "小时", False,
              "各温区超出上下限的时长之和：每条读数持续到下一条读数，最长 30 分钟；恰在限值上不算超温。"),
    Indicator("offline_hours", "离线小时数", "小时", False,
              "各设备离线小时数之和；设备离线小时数 = 其温区中整点小时内没有任何读数的小时数的最大值。"),
    Indicator("completeness", "数据完整率", "%", True,
              "收到的读数 ÷ 应收读数；应收 = 探头在月内绑定的时长 ÷ 标称间隔 1 分钟（网关每分钟上报），最高 100%。"),
    Indicator("drift_findings", "温度计比对偏差", "次", False,
              "温度计读数与探头相差超过 ±0.5 ℃（冷藏）/ ±1 ℃（冷冻）的次数，按温度计读数时间计入月份（CM10）。"),
    Indicator("ack_within_30_share", "30 分钟内确认率", "%", True,
              "月内发出的报警中，自报警起 30 分钟内在平台或微信确认的比例（CM16）。"),
    Indicator("level2_share", "升级到二级的比例", "%", False,
              "月内发出的报警中，解除前到了二级负责人通知时限（默认 30 分钟）的比例。"),
    Indicator("level3_share", "升级到三级的比例", "%", False,
              "月内发出的报警中，解除前到了三级负责人通知时限（默认 60 分钟）的比例。"),
    Indicator("gateway_problems", "电源或信号有问题的网关", "个", False,
              "月内有离线、断电（电池供电）、电量低（< 3.5 V）或信号弱（< −100 dBm 持续 15 分钟）报警的网关。"),
    Indicator("login_rate", "登录达标率", "%", True,
              "各接种单位每天两次、间隔至少 6 小时登录（平台或微信）的天数 ÷ 统计天数（CM14）。"),
    Indicator("warranties_due", "保修即将到期", "件", False,
              "网关和探头中保修在本月内或月末后 90 天内到期的件数（CM4）。"),
)
INDICATOR_BY_KEY: Mapping[str, Indicator] = {i.key: i for i in INDICATORS}


def headline(
    devices: pl.DataFrame,
    alarms: pl.DataFrame,
    response: pl.DataFrame,
    gateways: pl.DataFrame,
    logins: pl.DataFrame,
    warranties: pl.DataFrame,
) -> dict[str, float | int | None]:
    """The month's indicators (see :data:`INDICATORS`); shares are fractions (0.25 = 25 %)."""
    count = devices.height
    problems = int(devices["problem"].sum()) if count else 0
    expected = float(devices["expected"].sum()) if count else 0.0
    # Capped per device: a probe sending faster than nominal does not make up for another's gaps.
    received = int(devices.select(pl.min_horizontal("received", "expected").sum()).item()) if count else 0
    total = response.filter(pl.col("area_name") == "合计").to_dicts()
    total_row = total[0] if total else {}
    notified = alarms.filter(pl.col("raised_in_period") & ~pl.col("suppressed")).height
    return {
        "devices": count,
        "problem_devices": problems,
        "problem_share": round(problems / count, 4) if count else None,
        "alarms": notified,
        "out_of_range_hours": round(float(devices["out_of_range_hours"].sum()), 2) if count else 0.0,
        "offline_hours": int(devices["offline_hours"].sum()) if count else 0,
        "completeness": round(min(received / expected, 1.0), 4) if expected > 0 else None,
        "drift_findings": int(devices["drift_findings"].sum()) if count else 0,
        "ack_within_30_share": total_row.get("ack_within_30_share"),
        "level2_share": total_row.get("level2_share"),
        "level3_share": total_row.get("level3_share"),
        "gateway_problems": int(gateways["problem"].sum()) if gateways.height else 0,
        "login_rate": login_rate(logins),
        "warranties_due": warranties.height,
    }


def changes(
    current: Mapping[str, float | int | None], previous: Mapping[str, float | int | None] | None
) -> list[dict[str, Any]]:
    """Each indicator this month and last, the change (this − last; shares in fractions, so 0.05
    is five percentage points), and whether the change is an improvement (None when either month
    has no value or nothing changed)."""
    rows: list[dict[str, Any]] = []
    for ind in INDICATORS:
        now_value = current.get(ind.key)
        before = previous.get(ind.key) if previous is not None else None
        change: float | None = None
        better: bool | None = None
        if now_value is not None and before is not None:
            change = round(float(now_value) - float(before), 4)
            if not math.isclose(change, 0.0, abs_tol=1e-12):
                better = (change > 0) == ind.higher_is_better
        rows.append({
            "key": ind.key, "label": ind.label, "unit": ind.unit, "current": now_value, "previous": before,
            "change": change, "better": better,
        })
    return rows
