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
  one, for at most 30 minutes (:data:`inventory.exposure.MAX_GAP`), strictly outside the
  compartment's limits. Read from the excursion spans (migration 0009) by the lot trace's own
  function, :func:`inventory.exposure.temperatures`, clipped to the month: one computation, so a
  vaccine's trace and its fridge's report agree. A device's figure is the sum over its compartments.
* **Temperatures** — per compartment the lowest, highest and mean reading of the month, from the
  daily aggregate by the same function; a device shows them per storage mode (冷藏 / 冷冻: a mean
  over a fridge's +5 ℃ and its freezer's −20 ℃ would describe neither), the mean weighted by
  readings.
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

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from typing import Any

import polars as pl

from coldchain.core.terms import BEIJING, current_month, next_month

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
    """A probe's binding to a compartment, cut to the period: [lo, hi) — what readings were
    expected and received in. (Its temperatures and time out of range are the compartment's, from
    the lot trace's computation: see :mod:`analytics.report.facts`.)"""

    key: int
    probe_id: int
    compartment_id: int
    equipment_id: int
    lo: datetime
    hi: datetime

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


@dataclass(frozen=True)
class PieceFigures:
    key: int
    compartment_id: int
    equipment_id: int
    expected: float
    received: int
    silent_hours: int


def piece_figures(piece: Piece, hourly_received: int, hours_with_data: int, edge_readings: int) -> PieceFigures:
    """A piece's figures from its whole-hour aggregate counts and the number of readings in its
    partial edge hours (:attr:`Piece.edges`, read reading by reading)."""
    return PieceFigures(
        key=piece.key,
        compartment_id=piece.compartment_id,
        equipment_id=piece.equipment_id,
        expected=piece.expected,
        received=hourly_received + edge_readings,
        silent_hours=max(0, piece.whole_hours - hours_with_data),
    )


# ---------------------------------------------------------------------------------------------
# Frames: the shapes the facts arrive in

UNITS_SCHEMA: dict[str, Any] = {
    "unit_id": pl.Int64,
    "code": pl.String,
    "name": pl.String,
    "level": pl.String,
    "area_id": pl.Int64,
}
DEVICES_SCHEMA: dict[str, Any] = {"equipment_id": pl.Int64, "unit_id": pl.Int64, "kind": pl.String, "name": pl.String}
PIECES_SCHEMA: dict[str, Any] = {
    "key": pl.Int64,
    "compartment_id": pl.Int64,
    "equipment_id": pl.Int64,
    "expected": pl.Float64,
    "received": pl.Int64,
    "silent_hours": pl.Int64,
}
COMPARTMENTS_SCHEMA: dict[str, Any] = {
    "compartment_id": pl.Int64,
    "equipment_id": pl.Int64,
    "mode": pl.String,
    "minutes_out": pl.Float64,
    "readings": pl.Int64,
    "min_t": pl.Float64,
    "max_t": pl.Float64,
    "mean_t": pl.Float64,
}
MODES: Mapping[str, str] = {"refrigerated": "冷藏", "frozen": "冷冻"}
"""Storage modes, in the order the device table shows their temperatures."""
ALARMS_SCHEMA: dict[str, Any] = {
    "id": pl.Int64,
    "kind": pl.String,
    "unit_id": pl.Int64,
    "equipment_id": pl.Int64,
    "gateway_id": pl.Int64,
    "condition_since": pl.Datetime("us", "UTC"),
    "raised_at": pl.Datetime("us", "UTC"),
    "acknowledged_at": pl.Datetime("us", "UTC"),
    "resolved_at": pl.Datetime("us", "UTC"),
    "suppressed": pl.Boolean,
    "raised_in_period": pl.Boolean,
    "reached_level2": pl.Boolean,
    "reached_level3": pl.Boolean,
}
DRIFTS_SCHEMA: dict[str, Any] = {"id": pl.Int64, "equipment_id": pl.Int64}
GATEWAYS_SCHEMA: dict[str, Any] = {
    "gateway_id": pl.Int64,
    "serial": pl.String,
    "unit_id": pl.Int64,
    "vendor": pl.String,
    "model": pl.String,
}
GATEWAY_STATUS_SCHEMA: dict[str, Any] = {
    "gateway_id": pl.Int64,
    "statuses": pl.Int64,
    "power_reports": pl.Int64,
    "on_battery": pl.Int64,
    "battery_reports": pl.Int64,
    "battery_low": pl.Int64,
    "rssi_reports": pl.Int64,
    "weak_signal": pl.Int64,
    "min_battery": pl.Float64,
    "min_rssi": pl.Int64,
}
LOGINS_SCHEMA: dict[str, Any] = {
    "unit_id": pl.Int64,
    "code": pl.String,
    "name": pl.String,
    "days": pl.Int64,
    "compliant_days": pl.Int64,
    "noncompliant_days": pl.Int64,
    "days_without_login": pl.Int64,
    "rate": pl.Float64,
}
HARDWARE_SCHEMA: dict[str, Any] = {
    "hardware": pl.String,
    "serial": pl.String,
    "unit_id": pl.Int64,
    "vendor": pl.String,
    "model": pl.String,
    "warranty_end": pl.Date,
    "status": pl.String,
}


def frame(rows: Iterable[Mapping[str, Any]], schema: Mapping[str, Any]) -> pl.DataFrame:
    """A frame with exactly ``schema``'s columns, also when there are no rows (an empty month)."""
    data = [{k: r.get(k) for k in schema} for r in rows]
    return pl.DataFrame(data, schema=dict(schema), orient="row") if data else pl.DataFrame(schema=dict(schema))


def unit_areas(units: pl.DataFrame, report_unit: int) -> pl.DataFrame:
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
