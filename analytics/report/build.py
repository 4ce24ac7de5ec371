"""Assemble a monthly report, keep the reports of closed months, and generate the missing ones.

A report is a JSON document (``format`` 1): the unit and month, the headline indicators, the
previous month's and the change, and each table with its Chinese title and column labels — so a
kept report renders as a page or a workbook years later exactly as it was generated, whatever the
code's labels have become by then.

Kept reports: once a month is final (:data:`maths.KEEP_AFTER` after its end) its report is
generated once, stored in ``monthly_reports`` (migration 0008: no update, no delete) and served from
there ever after, so a late reading, a re-evaluated alarm or a corrected registry never changes a
report a county has already discussed and fed back. Generation is idempotent (``ON CONFLICT DO
NOTHING``; the first stored wins) and two generators skip each other's work through a transaction
advisory lock per (unit, month). The current month, and a closed month within its grace period, are
computed on each request and marked ``provisional``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime
from typing import Any

import polars as pl
import psycopg
from psycopg.types.json import Jsonb

from alarms.rules import KIND_NAMES
from analytics.logins import COLUMN_LABELS as LOGIN_LABELS
from analytics.report import headline, maths, tables
from analytics.report.facts import Facts, first_data_month, gather, report_unit
from coldchain.core import terms
from coldchain.core.db import fetch_all, fetch_one
from coldchain.core.terms import BEIJING

log = logging.getLogger("coldchain.reports")

FORMAT = 1
REPORT_LEVELS: tuple[str, ...] = ("province", "city", "county")
"""Monthly reports are made for the province, cities and counties (CM17: city and county CDCs
analyse their devices; the province supervises, RS1). A site's devices are in its county's report."""

MONTHS_BACK = 12
"""The scheduler fills in at most the last 12 closed months (a new installation, or one whose
scheduler was off): older months are generated on request."""


class ReportRefused(ValueError):
    """No report can be made for this request; the message says why, in Chinese."""


# ---------------------------------------------------------------------------------------------
# Tables: which columns, in which order, with which labels and formats


@dataclass(frozen=True)
class Column:
    key: str
    label: str
    format: str = "text"  # text | int | number | float | temp | share | date | bool
    """How a value is shown: ``number`` is a whole number when the value is one (a count) and two
    decimals otherwise, for a column mixing counts and hours; ``temp`` is ℃ to one decimal."""


@dataclass(frozen=True)
class TableSpec:
    key: str
    title: str
    columns: tuple[Column, ...]
    ids: tuple[str, ...] = ()


_DEVICE_KIND_COLUMNS = tuple(Column(f"alarms_{k}", KIND_NAMES[k], "int") for k in maths.DEVICE_ALARM_KINDS)
_GATEWAY_COLUMNS = (
    Column("alarms_gateway_offline", "离线报警", "int"),
    Column("hours_gateway_offline", "离线小时", "float"),
    Column("alarms_gateway_power", "断电报警", "int"),
    Column("hours_gateway_power", "电池供电小时", "float"),
    Column("alarms_gateway_battery_low", "电量低报警", "int"),
    Column("hours_gateway_battery_low", "电量低小时", "float"),
    Column("alarms_gateway_signal", "信号弱报警", "int"),
    Column("hours_gateway_signal", "信号弱小时", "float"),
)
_TEMPERATURE_COLUMNS = tuple(
    Column(f"{mode}_{x}_t", f"{name}{label}（℃）", "temp")
    for mode, name in maths.MODES.items()
    for x, label in (("min", "最低"), ("max", "最高"), ("mean", "平均"))
)
_LOW_V = f"{tables.GATEWAY_THRESHOLDS.battery_low:g}"
_WEAK = f"{tables.GATEWAY_THRESHOLDS.weak_rssi}"

TABLES: tuple[TableSpec, ...] = (
    TableSpec(
        "changes",
        "概况与环比",
        (
            Column("label", "指标"),
            Column("current", "本月", "number"),
            Column("previous", "上月", "number"),
            Column("change", "变化", "number"),
            Column("unit", "单位"),
            Column("verdict", "评价"),
            Column("note", "说明"),
        ),
        ("key",),
    ),
    TableSpec(
        "devices",
        "设备明细",
        (
            Column("area_name", "地区"),
            Column("unit_name", "单位"),
            Column("unit_code", "单位编码"),
            Column("name", "设备"),
            Column("kind_name", "类型"),
            Column("compartments", "温区数", "int"),
            *_DEVICE_KIND_COLUMNS,
            Column("alarms_total", "报警合计", "int"),
            Column("out_of_range_hours", "超温小时", "float"),
            Column("offline_hours", "离线小时", "int"),
            *_TEMPERATURE_COLUMNS,
            Column("received", "收到读数", "int"),
            Column("expected", "应收读数", "int"),
            Column("completeness", "数据完整率", "share"),
            Column("drift_findings", "比对偏差", "int"),
            Column("problem", "问题设备", "bool"),
            Column("problems", "问题"),
        ),
        ("equipment_id", "unit_id", "area_id"),
    ),
    TableSpec(
        "problems",
        "问题设备排名",
        (
            Column("rank", "排名", "int"),
            Column("area_name", "地区"),
            Column("unit_name", "单位"),
            Column("name", "设备"),
            Column("kind_name", "类型"),
            Column("alarms_total", "报警", "int"),
            Column("out_of_range_hours", "超温小时", "float"),
            Column("offline_hours", "离线小时", "int"),
            Column("completeness", "数据完整率", "share"),
            Column("drift_findings", "比对偏差", "int"),
            Column("problems", "问题"),
        ),
        ("equipment_id", "unit_id"),
    ),
    TableSpec(
        "areas",
        "各地区问题设备占比",
        (
            Column("area_name", "地区"),
            Column("area_code", "单位编码"),
            Column("devices", "设备数", "int"),
            Column("problem_devices", "问题设备数", "int"),
            Column("problem_share", "问题设备占比", "share"),
        ),
        ("area_id",),
    ),
    TableSpec(
        "response",
        "报警响应",
        (
            Column("area_name", "地区"),
            Column("alarms", "报警数", "int"),
            Column("acknowledged", "已确认", "int"),
            Column("ack_within_30", "30 分钟内确认", "int"),
            Column("ack_within_30_share", "30 分钟内确认率", "share"),
            Column("ack_median_minutes", "确认用时中位数（分钟）", "float"),
            Column("reached_level2", "升级到二级", "int"),
            Column("level2_share", "二级比例", "share"),
            Column("reached_level3", "升级到三级", "int"),
            Column("level3_share", "三级比例", "share"),
        ),
        ("area_id",),
    ),
    TableSpec(
        "gateways",
        "网关电源与信号",
        (
            Column("area_name", "地区"),
            Column("unit_name", "单位"),
            Column("serial", "网关号"),
            Column("vendor", "厂家"),
            Column("model", "型号"),
            *_GATEWAY_COLUMNS,
            Column("statuses", "状态上报数", "int"),
            Column("on_battery_share", "电池供电占比", "share"),
            Column("min_battery", "最低电压（V）", "float"),
            Column("battery_low_share", f"低于 {_LOW_V} V 占比", "share"),
            Column("min_rssi", "最低信号（dBm）", "int"),
            Column("weak_signal_share", f"低于 {_WEAK} dBm 占比", "share"),
            Column("problem", "有报警", "bool"),
        ),
        ("gateway_id", "unit_id"),
    ),
    TableSpec(
        "logins",
        "登录检查",
        (
            Column("area_name", "地区"),
            Column("code", LOGIN_LABELS["code"]),
            Column("name", LOGIN_LABELS["name"]),
            Column("days", LOGIN_LABELS["days"], "int"),
            Column("compliant_days", LOGIN_LABELS["compliant_days"], "int"),
            Column("noncompliant_days", LOGIN_LABELS["noncompliant_days"], "int"),
            Column("days_without_login", LOGIN_LABELS["days_without_login"], "int"),
            Column("rate", LOGIN_LABELS["rate"], "share"),
        ),
        ("unit_id",),
    ),
    TableSpec(
        "warranties",
        "保修到期",
        (
            Column("hardware_name", "类别"),
            Column("serial", "编号"),
            Column("area_name", "地区"),
            Column("unit_name", "单位"),
            Column("vendor", "厂家"),
            Column("model", "型号"),
            Column("warranty_end", "保修截止", "date"),
            Column("note", "说明"),
        ),
        ("unit_id",),
    ),
    TableSpec("definitions", "指标说明", (Column("label", "指标"), Column("definition", "口径")), ("key",)),
)
TABLE_BY_KEY: Mapping[str, TableSpec] = {t.key: t for t in TABLES}


def _plain(value: Any) -> Any:
    """A JSON value: dates ISO, times in Beijing, NaN as null."""
    if isinstance(value, datetime):
        return value.astimezone(BEIJING).isoformat()
    if isinstance(value, date):
        return value.isoformat()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _table(spec: TableSpec, rows: pl.DataFrame | Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    keys = [c.key for c in spec.columns] + list(spec.ids)
    dicts = rows.to_dicts() if isinstance(rows, pl.DataFrame) else list(rows)
    return {
        "title": spec.title,
        "columns": [{"key": c.key, "label": c.label, "format": c.format} for c in spec.columns],
        "rows": [{k: _plain(r.get(k)) for k in keys} for r in dicts],
    }


# ---------------------------------------------------------------------------------------------
# Computing


@dataclass(frozen=True)
class Figures:
    headline: dict[str, float | int | None]
    tables: dict[str, pl.DataFrame]


def figures(facts: Facts) -> Figures:
    """Every table and the headline from the facts (pure: no database)."""
    unit_id = int(facts.unit["id"])
    devices = tables.device_table(
        facts.devices, facts.units, facts.pieces, facts.compartments, facts.alarms, facts.drifts, unit_id
    )
    response = tables.alarm_response(facts.alarms, facts.units, unit_id)
    gateways = tables.gateway_table(
        facts.gateways, facts.gateway_status, facts.alarms, facts.units, facts.period, unit_id
    )
    logins = tables.login_table(facts.logins, facts.units, unit_id)
    warranties = tables.warranty_table(facts.hardware, facts.units, facts.period, unit_id)
    named = {
        "devices": devices,
        "problems": tables.problem_ranking(devices),
        "areas": tables.area_shares(devices, facts.units, unit_id),
        "response": response,
        "gateways": gateways,
        "logins": logins,
        "warranties": warranties,
    }
    return Figures(headline.headline(devices, facts.alarms, response, gateways, logins, warranties), named)


def compute(
    conn: psycopg.Connection,
    unit_id: int,
    month: date,
    now: datetime,
    previous: tuple[dict[str, Any] | None, bool] | None = None,
) -> dict[str, Any]:
    """The report of ``unit_id`` for ``month`` from the data as it is now. ``previous`` is the
    previous month's headline and whether it comes from a kept report (looked up when not given)."""
    period = maths.month_period(month, now)
    facts = gather(conn, unit_id, period, now)
    result = figures(facts)
    prev_headline, prev_kept = previous if previous is not None else previous_headline(conn, unit_id, month, now)
    change_list = headline.changes(result.headline, prev_headline)
    tables = {key: _table(TABLE_BY_KEY[key], frame) for key, frame in result.tables.items()}
    tables["changes"] = _table(TABLE_BY_KEY["changes"], headline.change_rows(change_list))
    tables["definitions"] = _table(
        TABLE_BY_KEY["definitions"],
        [{"key": i.key, "label": i.label, "definition": i.definition} for i in headline.INDICATORS],
    )
    return {
        "format": FORMAT,
        "unit": {k: facts.unit[k] for k in ("id", "code", "name", "level")},
        "month": period.label,
        "period": {"start": _plain(period.start), "end": _plain(period.end), "cut": _plain(period.cut)},
        "provisional": not period.keepable(now),
        "generated_at": _plain(now),
        "headline": result.headline,
        "previous": {
            "month": maths.month_period(terms.previous_month(month), now).label,
            "headline": prev_headline,
            "kept": prev_kept,
        },
        "changes": change_list,
        "tables": {spec.key: tables[spec.key] for spec in TABLES},
        # jsonb keeps no key order: the order of the tables (sheets, sections) is stated.
        "table_order": [spec.key for spec in TABLES],
    }


def previous_headline(
    conn: psycopg.Connection, unit_id: int, month: date, now: datetime
) -> tuple[dict[str, Any] | None, bool]:
    """The previous month's headline: from its kept report if there is one (so the comparison is
    with what was reported then), else computed now; None before the first month."""
    before = terms.previous_month(month)
    if before < maths.FIRST_MONTH:
        return None, False
    stored = kept_report(conn, unit_id, before)
    if stored is not None:
        return dict(stored["report"]["headline"]), True
    return figures(gather(conn, unit_id, maths.month_period(before, now), now)).headline, False


# ---------------------------------------------------------------------------------------------
# Keeping

_KEPT = """
SELECT report, generated_at, content_sha256 FROM monthly_reports WHERE unit_id = %(unit)s AND month = %(month)s
"""
_KEEP = """
INSERT INTO monthly_reports (unit_id, month, generated_at, report, content_sha256)
VALUES (%(unit)s, %(month)s, %(generated_at)s, %(report)s, %(sha)s)
ON CONFLICT (unit_id, month) DO NOTHING
"""
_LOCK = "SELECT pg_try_advisory_xact_lock(hashtextextended(%(key)s, 0)) AS got"


def content_hash(report: Mapping[str, Any]) -> str:
    text = json.dumps(report, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


def kept_report(conn: psycopg.Connection, unit_id: int, month: date) -> dict[str, Any] | None:
    return fetch_one(conn, _KEPT, {"unit": unit_id, "month": month})


def keep(conn: psycopg.Connection, unit_id: int, month: date, report: Mapping[str, Any], now: datetime) -> bool:
    """Store a final report unless one is stored already; True if this one was stored."""
    cur = conn.execute(
        _KEEP,
        {
            "unit": unit_id,
            "month": month,
            "generated_at": now,
            "report": Jsonb(dict(report)),
            "sha": content_hash(report),
        },
    )
    return cur.rowcount == 1


def _served(stored: Mapping[str, Any]) -> dict[str, Any]:
    return {**stored["report"], "kept": True, "content_sha256": stored["content_sha256"]}


def check_request(conn: psycopg.Connection, unit_id: int, month: date, now: datetime) -> dict[str, Any]:
    """The report unit, or :class:`ReportRefused` (future month, before 2015, a site, no such unit)."""
    problem = maths.month_problem(month, now)
    if problem:
        raise ReportRefused(problem)
    unit = report_unit(conn, unit_id)
    if unit is None:
        raise LookupError(f"单位 {unit_id} 不存在")
    if unit["level"] not in REPORT_LEVELS:
        raise ReportRefused("月度冷链报告按县（区）、市和全省编制；接种单位的设备见其所属县（区）的报告")
    return unit


def monthly_report(conn: psycopg.Connection, unit_id: int, month: date, now: datetime) -> dict[str, Any]:
    """The report to show: the kept one for a final month (generated and kept now if missing),
    else computed live and marked provisional. ``kept`` says which."""
    check_request(conn, unit_id, month, now)
    period = maths.month_period(month, now)
    if not period.keepable(now):
        return {**compute(conn, unit_id, month, now), "kept": False, "content_sha256": None}
    stored = kept_report(conn, unit_id, month)
    if stored is None:
        keep(conn, unit_id, month, compute(conn, unit_id, month, now), now)
        stored = kept_report(conn, unit_id, month)
        assert stored is not None  # ours, or a concurrent generator's that committed first
    return _served(stored)


# ---------------------------------------------------------------------------------------------
# The scheduler's job

_MISSING = """
SELECT u.id AS unit_id, m.month
FROM units u CROSS JOIN unnest(%(months)s::date[]) AS m(month)
WHERE u.active AND u.level = ANY(%(levels)s)
  AND NOT EXISTS (SELECT 1 FROM monthly_reports r WHERE r.unit_id = u.id AND r.month = m.month)
ORDER BY m.month, cc_unit_level_rank(u.level) DESC, u.code
"""


@dataclass
class GenerationStats:
    stored: int = 0
    skipped: int = 0
    errors: list[str] = field(default_factory=list)


def final_months(first: date | None, now: datetime, months_back: int = MONTHS_BACK) -> list[date]:
    """Final months from the first month with data, at most ``months_back`` of them, oldest first."""
    if first is None:
        return []
    months: list[date] = []
    month = terms.previous_month(terms.current_month(now))
    while len(months) < months_back and month >= max(first, maths.FIRST_MONTH):
        if maths.month_period(month, now).keepable(now):
            months.append(month)
        month = terms.previous_month(month)
    return sorted(months)


def generate_missing(conn: psycopg.Connection, now: datetime, months_back: int = MONTHS_BACK) -> GenerationStats:
    """Generate and keep every missing final report of the province, cities and counties, oldest
    month first (so each month's comparison reads the kept report before it). One transaction per
    report; a report another generator holds the lock for is skipped (it is storing it)."""
    stats = GenerationStats()
    months = final_months(first_data_month(conn), now, months_back)
    conn.commit()
    if not months:
        return stats
    missing = fetch_all(conn, _MISSING, {"months": months, "levels": list(REPORT_LEVELS)})
    conn.commit()
    for row in missing:
        unit_id, month = int(row["unit_id"]), row["month"]
        try:
            got = fetch_one(conn, _LOCK, {"key": f"coldchain.monthly_report:{unit_id}:{month.isoformat()}"})
            if not (got and got["got"]) or kept_report(conn, unit_id, month) is not None:
                stats.skipped += 1
                conn.rollback()
                continue
            if keep(conn, unit_id, month, compute(conn, unit_id, month, now), now):
                stats.stored += 1
            else:
                stats.skipped += 1
            conn.commit()
        except Exception as exc:  # one bad report must not stop the others
            conn.rollback()
            log.exception("月度报告生成失败：单位 %s，%s", unit_id, month)
            stats.errors.append(f"单位 {unit_id} {month:%Y-%m}：{exc}")
    if stats.stored:
        log.info("已生成并保存 %d 份月度冷链报告", stats.stored)
    return stats
