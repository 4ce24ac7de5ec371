"""The monthly report's tables (analytics/report/tables.py, headline.py, xlsx.py) for a small
province, on frames computed by hand: devices and the problem ranking, each area's share of problem
devices, alarm response, gateways, warranties, logins, the headline and its changes from the month
before, and the workbook with one sheet per table."""

from __future__ import annotations

import io
import re
import zipfile
from datetime import date, datetime, timedelta
from typing import Any

import polars as pl
from reporthelp import NOW, OCT, ts

from analytics.report import headline, maths, tables
from analytics.report.build import TABLES, _table
from analytics.report.xlsx import sheet_name, table_frame, workbook

# ---------------------------------------------------------------------------------------------
# A small province: P (1) ─┬─ C 西安市 (2) ── T 某卫生院 (3)
#                          └─ D 韩城市 (4, county reporting to the province)

UNITS = maths.frame(
    [
        {"unit_id": 1, "code": "6100000000", "name": "省疾控", "level": "province", "area_id": 1},
        {"unit_id": 2, "code": "6101000000", "name": "西安市", "level": "city", "area_id": 2},
        {"unit_id": 3, "code": "6101130001", "name": "某卫生院", "level": "township", "area_id": 2},
        {"unit_id": 4, "code": "6105810000", "name": "韩城市", "level": "county", "area_id": 4},
    ],
    maths.UNITS_SCHEMA,
)
DEVICES = maths.frame(
    [
        {"equipment_id": 1, "unit_id": 3, "kind": "fridge", "name": "冰箱甲"},
        {"equipment_id": 2, "unit_id": 3, "kind": "freezer", "name": "冰柜乙"},
        {"equipment_id": 3, "unit_id": 4, "kind": "cold_room", "name": "冷库丙"},
        {"equipment_id": 4, "unit_id": 1, "kind": "vehicle", "name": "冷藏车丁"},
        {"equipment_id": 5, "unit_id": 4, "kind": "medical_fridge", "name": "冷藏柜戊"},
    ],
    maths.DEVICES_SCHEMA,
)


def piece_row(key: int, comp: int, eq: int, expected: float, received: int, silent: int) -> dict[str, Any]:
    return {
        "key": key,
        "compartment_id": comp,
        "equipment_id": eq,
        "expected": expected,
        "received": received,
        "silent_hours": silent,
    }


PIECES = maths.frame(
    [
        piece_row(1, 11, 1, 1000, 950, 5),
        piece_row(2, 12, 1, 1000, 1000, 2),
        piece_row(3, 21, 2, 500, 400, 3),  # rebound mid-month: two pieces of one compartment
        piece_row(4, 21, 2, 500, 450, 4),
        piece_row(5, 31, 3, 100, 120, 0),
        piece_row(6, 41, 4, 1000, 1000, 0),
    ],
    maths.PIECES_SCHEMA,
)


def comp_row(
    comp: int, eq: int, mode: str, minutes: float, readings: int, lo: float | None, hi: float | None, mean: float | None
) -> dict[str, Any]:
    return {
        "compartment_id": comp,
        "equipment_id": eq,
        "mode": mode,
        "minutes_out": minutes,
        "readings": readings,
        "min_t": lo,
        "max_t": hi,
        "mean_t": mean,
    }


# Each compartment's month as the lot trace's computation returns it (minutes from the excursion spans).
COMPARTMENTS = maths.frame(
    [
        comp_row(11, 1, "refrigerated", 90, 950, 1.5, 9.9, 5.04),
        comp_row(12, 1, "frozen", 0, 1000, -25.0, -16.0, -20.0),
        comp_row(21, 2, "frozen", 30, 850, -22.0, -10.0, -18.0),
        comp_row(31, 3, "refrigerated", 0, 100, 3.0, 7.0, 6.0),
        comp_row(32, 3, "refrigerated", 0, 300, 2.5, 6.5, 4.0),  # a second zone of the cold room
        comp_row(41, 4, "refrigerated", 0, 0, None, None, None),  # bound, nothing received
    ],
    maths.COMPARTMENTS_SCHEMA,
)


OCT_10 = ts(10, 2)


def alarm(
    id_: int,
    kind: str,
    unit: int,
    *,
    eq: int | None = None,
    gw: int | None = None,
    raised: datetime = OCT_10,
    since: datetime | None = None,
    ack: datetime | None = None,
    resolved: datetime | None = None,
    suppressed: bool = False,
    in_period: bool = True,
    level2: bool = False,
    level3: bool = False,
) -> dict[str, Any]:
    return {
        "id": id_,
        "kind": kind,
        "unit_id": unit,
        "equipment_id": eq,
        "gateway_id": gw,
        "condition_since": since or raised,
        "raised_at": raised,
        "acknowledged_at": ack,
        "resolved_at": resolved,
        "suppressed": suppressed,
        "raised_in_period": in_period,
        "reached_level2": level2,
        "reached_level3": level3,
    }


DEVICE_ALARMS = [
    alarm(1, "high", 4, eq=3),
    alarm(2, "high", 4, eq=3),
    alarm(3, "no_data", 4, eq=3, suppressed=True),
    alarm(4, "low", 4, eq=3, in_period=False, raised=ts(1, 0, month=9)),
]
DRIFTS = maths.frame([{"id": 1, "equipment_id": 4}], maths.DRIFTS_SCHEMA)


def devices() -> pl.DataFrame:
    return tables.device_table(
        DEVICES, UNITS, PIECES, COMPARTMENTS, maths.frame(DEVICE_ALARMS, maths.ALARMS_SCHEMA), DRIFTS, 1
    )


def test_device_table_figures() -> None:
    rows = {r["equipment_id"]: r for r in devices().to_dicts()}
    e1, e2, e3, e4, e5 = (rows[i] for i in range(1, 6))
    assert (e1["expected"], e1["received"], e1["completeness"]) == (2000, 1950, 0.975)
    assert (e1["out_of_range_hours"], e1["offline_hours"], e1["compartments"]) == (1.5, 5, 2)
    assert e1["problem"] and e1["problems"] == "超温"
    # Two pieces of one compartment add up; the device's offline hours are its worst compartment's.
    assert (e2["completeness"], e2["out_of_range_hours"], e2["offline_hours"]) == (0.85, 0.5, 7)
    assert e2["problems"] == "数据不完整"
    # More readings than expected is capped at 100 %; suppressed and earlier alarms are not counted.
    assert (e3["completeness"], e3["alarms_high"], e3["alarms_no_data"], e3["alarms_low"]) == (1.0, 2, 0, 0)
    assert (e3["alarms_total"], e3["problems"]) == (2, "报警")
    assert (e4["drift_findings"], e4["problems"], e4["area_name"]) == (1, "温度计比对偏差", "省疾控（本级）")
    assert e5["completeness"] is None and e5["expected"] == 0 and not e5["problem"] and e5["problems"] == ""
    assert (e1["kind_name"], e3["kind_name"], e1["area_name"], e3["area_name"]) == ("冰箱", "冷库", "西安市", "韩城市")


def test_device_temperatures_per_mode() -> None:
    rows = {r["equipment_id"]: r for r in devices().to_dicts()}
    temps = tables.temperature_columns()
    # A two-zone fridge: its 冷藏 and its 冷冻 apart (a mean over +5 ℃ and −20 ℃ would describe neither).
    assert [rows[1][c] for c in temps] == [1.5, 9.9, 5.04, -25.0, -16.0, -20.0]
    assert [rows[2][c] for c in temps] == [None, None, None, -22.0, -10.0, -18.0]
    # Two refrigerated zones of one cold room: lowest, highest, and the mean weighted by readings.
    assert [rows[3][c] for c in temps[:3]] == [2.5, 7.0, (6.0 * 100 + 4.0 * 300) / 400]
    # Bound but silent, and a device without any probe: no temperatures, not zero.
    assert all(rows[4][c] is None for c in temps) and all(rows[5][c] is None for c in temps)


def test_problem_ranking_orders_by_alarms_then_hours() -> None:
    ranking = tables.problem_ranking(devices())
    assert ranking.select("rank", "equipment_id").rows() == [(1, 3), (2, 1), (3, 2), (4, 4)]
    assert tables.problem_ranking(devices(), limit=2).height == 2


def test_area_shares_include_own_devices_first_and_every_area() -> None:
    shares = tables.area_shares(devices(), UNITS, 1)
    assert shares.select("area_name", "devices", "problem_devices", "problem_share").rows() == [
        ("省疾控（本级）", 1, 1, 1.0),
        ("西安市", 2, 2, 1.0),
        ("韩城市", 2, 1, 0.5),
    ]
    # A city's report: its own area has no devices, so no "本级" row; an area without devices has no share.
    city_units = UNITS.filter(pl.col("unit_id").is_in([2, 3])).with_columns(
        pl.when(pl.col("unit_id") == 3).then(3).otherwise(2).alias("area_id")
    )
    none = tables.area_shares(devices().head(0), city_units, 2)
    assert none.select("area_name", "devices", "problem_share").rows() == [("某卫生院", 0, None)]


def test_alarm_response_per_area_and_total() -> None:
    frame = maths.frame(
        [
            alarm(1, "high", 3, eq=1, raised=ts(3, 10), ack=ts(3, 10, 10)),
            alarm(2, "no_data", 3, eq=2, raised=ts(4, 11), ack=ts(4, 11, 45), level2=True),
            alarm(3, "gateway_power", 4, gw=9, raised=ts(5, 12), level2=True, level3=True),
            alarm(4, "no_data", 4, eq=3, suppressed=True),
            alarm(5, "high", 4, eq=3, in_period=False),
        ],
        maths.ALARMS_SCHEMA,
    )
    table = tables.alarm_response(frame, UNITS, 1)
    cols = [
        "area_name",
        "alarms",
        "acknowledged",
        "ack_within_30",
        "ack_within_30_share",
        "ack_median_minutes",
        "reached_level2",
        "level2_share",
        "reached_level3",
        "level3_share",
    ]
    assert table.select(cols).rows() == [
        ("西安市", 2, 2, 1, 0.5, 27.5, 1, 0.5, 0, 0.0),
        ("韩城市", 1, 0, 0, 0.0, None, 1, 1.0, 1, 1.0),
        ("合计", 3, 2, 1, 0.3333, 27.5, 2, 0.6667, 1, 0.3333),
    ]
    empty = tables.alarm_response(frame.head(0), UNITS, 1)
    assert empty.select(cols).rows() == [("合计", 0, 0, 0, None, None, 0, None, 0, None)]


def test_gateway_table_hours_in_month_and_evidence() -> None:
    period = maths.month_period(OCT, NOW)
    start = period.start
    gateways = maths.frame(
        [
            {"gateway_id": g, "serial": f"1000{g}", "unit_id": 3 if g == 1 else 4, "vendor": "精创", "model": "GW"}
            for g in (1, 2, 3, 4, 5)
        ],
        maths.GATEWAYS_SCHEMA,
    )
    status = maths.frame(
        [
            {
                "gateway_id": 1,
                "statuses": 100,
                "power_reports": 100,
                "on_battery": 5,
                "battery_reports": 100,
                "battery_low": 0,
                "rssi_reports": 100,
                "weak_signal": 0,
                "min_battery": 3.8,
                "min_rssi": -80,
            },
            {
                "gateway_id": 3,
                "statuses": 50,
                "power_reports": 0,
                "on_battery": 0,
                "battery_reports": 0,
                "battery_low": 0,
                "rssi_reports": 50,
                "weak_signal": 2,
                "min_battery": None,
                "min_rssi": -104,
            },
        ],
        maths.GATEWAY_STATUS_SCHEMA,
    )
    alarms = maths.frame(
        [
            alarm(
                1,
                "gateway_power",
                3,
                gw=1,
                raised=start + timedelta(days=10),
                resolved=start + timedelta(days=10, hours=3),
                level2=True,
            ),
            # Raised in September, resolved four hours into October: a problem of October too.
            alarm(
                2,
                "gateway_offline",
                4,
                gw=2,
                raised=start - timedelta(hours=2),
                resolved=start + timedelta(hours=4),
                in_period=False,
            ),
            # Still open at the month's end: counted to the end.
            alarm(3, "gateway_battery_low", 4, gw=5, raised=start + timedelta(days=30)),
            alarm(4, "high", 4, eq=3),
        ],
        maths.ALARMS_SCHEMA,
    )
    table = tables.gateway_table(gateways, status, alarms, UNITS, period, 1)
    assert table.select("gateway_id", "problem", "problem_hours").rows() == [
        (5, True, 24.0),
        (2, True, 4.0),
        (1, True, 3.0),
        (3, False, 0.0),
    ]
    rows = {r["gateway_id"]: r for r in table.to_dicts()}
    g1 = rows[1]
    assert (g1["alarms_gateway_power"], g1["hours_gateway_power"], g1["on_battery_share"]) == (1, 3.0, 0.05)
    assert (rows[2]["alarms_gateway_offline"], rows[2]["hours_gateway_offline"]) == (0, 4.0)
    assert (rows[3]["weak_signal_share"], rows[3]["on_battery_share"], rows[3]["area_name"]) == (0.04, None, "韩城市")
    assert tables.GATEWAY_THRESHOLDS.battery_low == 3.5 and tables.GATEWAY_THRESHOLDS.weak_rssi == -100


def test_warranty_window_is_the_month_and_90_days_after() -> None:
    period = maths.month_period(OCT, NOW)
    hw = maths.frame(
        [
            {
                "hardware": "gateway",
                "serial": "A",
                "unit_id": 3,
                "warranty_end": date(2026, 10, 15),
                "status": "active",
            },
            {"hardware": "probe", "serial": "B", "unit_id": 4, "warranty_end": date(2027, 1, 29), "status": "in_stock"},
            {"hardware": "probe", "serial": "C", "unit_id": 4, "warranty_end": date(2027, 1, 30), "status": "active"},
            {"hardware": "probe", "serial": "D", "unit_id": 4, "warranty_end": date(2026, 9, 30), "status": "active"},
            {
                "hardware": "probe",
                "serial": "E",
                "unit_id": 4,
                "warranty_end": date(2026, 11, 10),
                "status": "decommissioned",
            },
        ],
        maths.HARDWARE_SCHEMA,
    )
    table = tables.warranty_table(hw, UNITS, period, 1)
    assert table.select("serial", "hardware_name", "days_after_month", "note", "area_name").rows() == [
        ("A", "网关", -16, "本月已到期", "西安市"),
        ("B", "探头", 90, "月末后 90 天到期", "韩城市"),
    ]


def test_logins_keep_their_order_and_rate_is_over_all_site_days() -> None:
    logins = maths.frame(
        [
            {
                "unit_id": 4,
                "code": "6105810001",
                "name": "乙",
                "days": 31,
                "compliant_days": 0,
                "noncompliant_days": 1,
                "days_without_login": 30,
                "rate": 0.0,
            },
            {
                "unit_id": 3,
                "code": "6101130001",
                "name": "甲",
                "days": 31,
                "compliant_days": 10,
                "noncompliant_days": 0,
                "days_without_login": 21,
                "rate": 10 / 31,
            },
        ],
        maths.LOGINS_SCHEMA,
    )
    table = tables.login_table(logins, UNITS, 1)
    assert table.select("name", "area_name", "rate").rows() == [("乙", "韩城市", 0.0), ("甲", "西安市", 0.3226)]
    assert tables.login_rate(logins) == round(10 / 62, 4)
    assert tables.login_rate(logins.head(0)) is None


def test_headline_and_changes() -> None:
    table = devices()
    alarms = maths.frame(DEVICE_ALARMS, maths.ALARMS_SCHEMA)
    response = tables.alarm_response(alarms, UNITS, 1)
    empty_gw = maths.frame([], maths.GATEWAYS_SCHEMA).with_columns(pl.lit(True).alias("problem"))
    head = headline.headline(
        table, alarms, response, empty_gw, maths.frame([], maths.LOGINS_SCHEMA), maths.frame([], maths.HARDWARE_SCHEMA)
    )
    assert head == {
        "devices": 5,
        "problem_devices": 4,
        "problem_share": 0.8,
        "alarms": 2,
        "out_of_range_hours": 2.0,
        "offline_hours": 12,
        "completeness": round(3900 / 4100, 4),
        "drift_findings": 1,
        "ack_within_30_share": 0.0,
        "level2_share": 0.0,
        "level3_share": 0.0,
        "gateway_problems": 0,
        "login_rate": None,
        "warranties_due": 0,
    }
    assert set(head) == {i.key for i in headline.INDICATORS}
    previous = {**head, "problem_share": 0.9, "completeness": 0.99, "alarms": 2, "login_rate": 0.5}
    rows = {c["key"]: c for c in headline.changes(head, previous)}
    assert (rows["problem_share"]["change"], rows["problem_share"]["better"]) == (-0.1, True)
    assert (rows["completeness"]["change"], rows["completeness"]["better"]) == (
        round(round(3900 / 4100, 4) - 0.99, 4),
        False,
    )
    assert (rows["alarms"]["change"], rows["alarms"]["better"]) == (0.0, None)
    assert (rows["login_rate"]["change"], rows["login_rate"]["previous"]) == (None, 0.5)
    assert all(c["change"] is None for c in headline.changes(head, None))
    shown = {r["key"]: r for r in headline.change_rows(headline.changes(head, previous))}
    assert (shown["problem_share"]["current"], shown["problem_share"]["change"], shown["problem_share"]["verdict"]) == (
        80.0,
        -10.0,
        "好转",
    )
    assert shown["alarms"]["unit"] == "次" and shown["alarms"]["verdict"] == "—"


# ---------------------------------------------------------------------------------------------
# The workbook


def test_workbook_has_one_sheet_per_table_with_chinese_names() -> None:
    tables = {spec.key: _table(spec, []) for spec in TABLES}
    tables["devices"] = _table(
        next(s for s in TABLES if s.key == "devices"), devices().with_columns(pl.lit(None).alias("area_id"))
    )
    report = {"unit": {"name": "省疾控"}, "month": "2026-10", "provisional": False, "tables": tables}
    data = workbook(report)
    with zipfile.ZipFile(io.BytesIO(data)) as z:
        names = re.findall(r'<sheet name="([^"]+)"', z.read("xl/workbook.xml").decode())
        strings = z.read("xl/sharedStrings.xml").decode()
    assert names == [sheet_name(s.title) for s in TABLES]
    assert "设备明细" in names and "保修到期" in names
    assert "冷库丙" in strings and "数据完整率" in strings
    frame = table_frame(tables["devices"])
    assert frame["问题设备"].to_list() == ["是", "是", "是", "是", "否"]
    assert sheet_name("a/b:c" * 10) == ("a_b_c" * 10)[:31]
