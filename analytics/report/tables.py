"""The tables of the monthly cold-chain report, as pure functions over polars frames: devices and
their problems, the ranking, the areas' shares, the alarm response (CM16), gateways, logins
(CM14) and warranties. The definitions they follow are stated in :mod:`analytics.report.maths`."""

from __future__ import annotations

from datetime import UTC, timedelta

import polars as pl

from alarms.rules import GatewayParams
from analytics.report.maths import (
    ACK_WITHIN,
    COMPLETENESS_MIN,
    DEVICE_ALARM_KINDS,
    EQUIPMENT_KIND_NAMES,
    GATEWAY_ALARM_KINDS,
    HARDWARE_NAMES,
    MODES,
    OUT_OF_RANGE_PROBLEM_HOURS,
    TOP_PROBLEMS,
    WARRANTY_HORIZON_DAYS,
    Period,
    unit_areas,
)

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


def device_temperatures(compartments: pl.DataFrame) -> pl.DataFrame:
    """Per device: hours out of range (sum over its compartments) and, per storage mode, the
    lowest, highest and mean temperature of the month (``refrigerated_min_t`` …, ℃; the mean
    weighted by each compartment's readings; none for a mode the device has no data in)."""
    weighted = pl.col("mean_t") * pl.col("readings")
    has = pl.col("readings") > 0
    figures: list[pl.Expr] = [(pl.col("minutes_out").sum() / 60).alias("out_of_range_hours")]
    for mode in MODES:
        mine = (pl.col("mode") == mode) & has
        figures += [
            pl.col("min_t").filter(mine).min().alias(f"{mode}_min_t"),
            pl.col("max_t").filter(mine).max().alias(f"{mode}_max_t"),
            (weighted.filter(mine).sum() / pl.col("readings").filter(mine).sum()).alias(f"{mode}_mean_t"),
        ]
    return compartments.group_by("equipment_id").agg(*figures)


def temperature_columns() -> list[str]:
    return [f"{mode}_{x}_t" for mode in MODES for x in ("min", "max", "mean")]


def device_table(
    devices: pl.DataFrame,
    units: pl.DataFrame,
    pieces: pl.DataFrame,
    compartments: pl.DataFrame,
    alarms: pl.DataFrame,
    drifts: pl.DataFrame,
    report_unit: int,
) -> pl.DataFrame:
    """One row per device: alarms by kind, hours out of range, offline hours, completeness, drift
    findings, temperatures by mode, whether it is a problem and why. Sorted by area, unit and
    device name."""
    per_device = (
        pieces.group_by("equipment_id", "compartment_id")
        .agg(pl.col("expected").sum(), pl.col("received").sum(), pl.col("silent_hours").sum())
        .group_by("equipment_id")
        .agg(
            pl.len().alias("compartments"),
            pl.col("expected").sum(),
            pl.col("received").sum(),
            pl.col("silent_hours").max().alias("offline_hours"),
        )
    )
    temps = device_temperatures(compartments)
    notified = alarms.filter(
        pl.col("raised_in_period")
        & ~pl.col("suppressed")
        & pl.col("equipment_id").is_not_null()
        & pl.col("kind").is_in(DEVICE_ALARM_KINDS)
    )
    counts = notified.group_by("equipment_id").agg(
        *[(pl.col("kind") == k).sum().cast(pl.Int64).alias(f"alarms_{k}") for k in DEVICE_ALARM_KINDS]
    )
    drift = drifts.group_by("equipment_id").agg(pl.len().cast(pl.Int64).alias("drift_findings"))
    count_cols = [f"alarms_{k}" for k in DEVICE_ALARM_KINDS]
    table = (
        devices.join(
            unit_areas(units, report_unit)
            .select("unit_id", "code", "name", "area_id", "area_code", "area_name")
            .rename({"code": "unit_code", "name": "unit_name"}),
            on="unit_id",
            how="left",
        )
        .join(per_device, on="equipment_id", how="left")
        .join(temps, on="equipment_id", how="left")
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
        pl.concat_str(
            [pl.when(cond).then(pl.lit(label)) for label, cond in reasons], separator="、", ignore_nulls=True
        ).alias("problems"),
    )
    return table.with_columns(
        pl.col("out_of_range_hours").round(2),
        pl.col(*temperature_columns()).fill_nan(None).round(2),
        pl.col("completeness").round(4),
        pl.col("expected").round(0).cast(pl.Int64),
    ).sort("area_code", "unit_code", "name", "equipment_id", nulls_last=True)


def problem_ranking(devices: pl.DataFrame, limit: int = TOP_PROBLEMS) -> pl.DataFrame:
    """The devices with the most problems: problem devices by number of alarms, then hours out of
    range, offline hours, drift findings, lowest completeness (none last), then unit and name."""
    return (
        devices.filter(pl.col("problem"))
        .sort(
            [
                "alarms_total",
                "out_of_range_hours",
                "offline_hours",
                "drift_findings",
                "completeness",
                "unit_code",
                "name",
            ],
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
    named = unit_areas(units, report_unit)
    areas = named.filter((pl.col("unit_id") == pl.col("area_id")) & (pl.col("unit_id") != report_unit)).select(
        "area_id", "area_code", "area_name"
    )
    own = named.filter(pl.col("unit_id") == report_unit).select("area_id", "area_code", "area_name")
    counted = (
        devices.select("unit_id", "problem")
        .join(named.select("unit_id", "area_id"), on="unit_id", how="left")
        .group_by("area_id")
        .agg(pl.len().cast(pl.Int64).alias("devices"), pl.col("problem").sum().cast(pl.Int64).alias("problem_devices"))
    )
    if counted.filter(pl.col("area_id") == report_unit).height:
        areas = pl.concat([own, areas])
    return (
        areas.join(counted, on="area_id", how="left")
        .with_columns(pl.col("devices", "problem_devices").fill_null(0))
        .with_columns(
            pl.when(pl.col("devices") > 0)
            .then(pl.col("problem_devices") / pl.col("devices"))
            .otherwise(None)
            .round(4)
            .alias("problem_share")
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
    named = unit_areas(units, report_unit).select("unit_id", "area_id", "area_code", "area_name")
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
        pl.lit(None, pl.Int64).alias("area_id"),
        pl.lit(None, pl.String).alias("area_code"),
        pl.lit("合计").alias("area_name"),
        *figures,
    )
    return pl.concat([per_area, total]).with_columns(
        *[
            pl.when(pl.col("alarms") > 0).then(pl.col(n) / pl.col("alarms")).otherwise(None).round(4).alias(name)
            for n, name in (
                ("ack_within_30", "ack_within_30_share"),
                ("reached_level2", "level2_share"),
                ("reached_level3", "level3_share"),
            )
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
    per_kind = (
        gw_alarms.with_columns(overlap.alias("hours"))
        .group_by("gateway_id")
        .agg(
            *[
                (pl.col("raised_in_period") & (pl.col("kind") == k)).sum().cast(pl.Int64).alias(f"alarms_{k}")
                for k in GATEWAY_ALARM_KINDS
            ],
            *[pl.col("hours").filter(pl.col("kind") == k).sum().alias(f"hours_{k}") for k in GATEWAY_ALARM_KINDS],
        )
    )
    named = unit_areas(units, report_unit).select("unit_id", "code", "name", "area_id", "area_code", "area_name")
    hour_cols = [f"hours_{k}" for k in GATEWAY_ALARM_KINDS]
    count_cols = [f"alarms_{k}" for k in GATEWAY_ALARM_KINDS]
    table = (
        gateways.join(named.rename({"code": "unit_code", "name": "unit_name"}), on="unit_id", how="left")
        .join(status, on="gateway_id", how="left")
        .join(per_kind, on="gateway_id", how="left")
        .with_columns(pl.col(*count_cols).fill_null(0), pl.col(*hour_cols).fill_null(0.0))
        .with_columns(
            pl.col(
                "statuses",
                "power_reports",
                "on_battery",
                "battery_reports",
                "battery_low",
                "rssi_reports",
                "weak_signal",
            ).fill_null(0),
            pl.sum_horizontal(hour_cols).alias("problem_hours"),
        )
        .with_columns(
            *[
                pl.when(pl.col(d) > 0).then(pl.col(n) / pl.col(d)).otherwise(None).round(4).alias(f"{n}_share")
                for n, d in (
                    ("on_battery", "power_reports"),
                    ("battery_low", "battery_reports"),
                    ("weak_signal", "rssi_reports"),
                )
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
    named = unit_areas(units, report_unit).select("unit_id", "area_code", "area_name")
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
    named = unit_areas(units, report_unit).select("unit_id", "name", "area_code", "area_name")
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
            pl.when(pl.col("days_after_month") <= 0)
            .then(pl.lit("本月已到期"))
            .otherwise(pl.format("月末后 {} 天到期", pl.col("days_after_month")))
            .alias("note")
        )
        .sort("warranty_end", "hardware", "serial")
    )
