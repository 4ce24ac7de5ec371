"""The monthly report as a director reads it (issue #19): counts as whole numbers, each device's
temperatures per storage mode, minutes out of range by the lot trace's own computation (the
excursion spans), a title row on every sheet of the workbook, and month-on-month sums compared per
device when the number of devices changed. The database tests run on the real database and check
the report against the trace's function and the rule stated in Python."""

from __future__ import annotations

import io
from datetime import UTC, datetime, timedelta

import pytest
from alarmhelp import add_readings, alarm_world
from apihelp import World
from openpyxl import load_workbook

from analytics.aggregates import refresh_aggregates
from analytics.report import build, headline, maths
from analytics.report.xlsx import sheet_name, title_row, workbook
from coldchain.core import db, terms
from inventory.custody import Interval
from inventory.exposure import Segment, out_of_range_minutes, temperatures

# ---------------------------------------------------------------------------------------------
# Month on month: counts whole, sums over devices per device


def test_counts_are_whole_numbers_in_the_changes() -> None:
    now = {"devices": 25, "problem_devices": 5, "offline_hours": 120, "out_of_range_hours": 2.5}
    before = {"devices": 25, "problem_devices": 7, "offline_hours": 100, "out_of_range_hours": 4.0}
    rows = {c["key"]: c for c in headline.changes(now, before)}
    assert (rows["devices"]["current"], rows["devices"]["change"]) == (25, 0)
    assert isinstance(rows["devices"]["current"], int) and isinstance(rows["problem_devices"]["change"], int)
    assert rows["problem_devices"]["change"] == -2 and rows["problem_devices"]["better"] is True
    shown = {r["key"]: r for r in headline.change_rows(list(rows.values()))}
    # "设备数 25 台", never "25.00 台"; hours keep their decimals.
    assert (shown["devices"]["current"], shown["devices"]["unit"]) == (25, "台")
    assert type(shown["devices"]["current"]) is int and type(shown["offline_hours"]["change"]) is int
    assert shown["out_of_range_hours"]["change"] == -1.5
    spec = build.TABLE_BY_KEY["changes"]
    assert {c.key: c.format for c in spec.columns}["current"] == "number"


def test_fewer_devices_do_not_make_offline_hours_better() -> None:
    ind = headline.INDICATOR_BY_KEY["offline_hours"]
    # 20 devices dark 12 h each against 25 dark 10 h each: fewer hours in all, worse per device.
    fewer = headline.compare(ind, 240, 250, 20, 25)
    assert (fewer["change"], fewer["better"], fewer["basis"]) == (-10, False, "per_device")
    assert (fewer["per_device_current"], fewer["per_device_previous"], fewer["per_device_change"]) == (12.0, 10.0, 2.0)
    assert "设备数由 25 台变为 20 台" in fewer["note"] and "12.00" in fewer["note"]
    # Per device better although the total rose with more devices.
    more = headline.compare(ind, 270, 250, 30, 25)
    assert (more["change"], more["better"], more["basis"]) == (20, True, "per_device")
    # As many hours per device as before: no verdict either way.
    assert headline.compare(ind, 300, 250, 30, 25)["better"] is None
    # Same number of devices: the totals compare as they are.
    same = headline.compare(ind, 240, 250, 25, 25)
    assert (same["better"], same["basis"], same["note"]) == (True, "total", "")
    # No devices in one of the months: nothing to divide by, no verdict.
    none_before = headline.compare(ind, 240, 0, 20, 0)
    assert (none_before["better"], none_before["basis"]) == (None, "not_comparable")
    assert "不可比" in none_before["note"]
    # Not a sum over devices: the alarm response share compares as it is whatever the devices.
    share = headline.compare(headline.INDICATOR_BY_KEY["ack_within_30_share"], 0.5, 0.4, 20, 25)
    assert (share["better"], share["basis"]) == (True, "total")
    rows = {
        r["key"]: r
        for r in headline.change_rows(
            headline.changes({"devices": 20, "offline_hours": 240}, {"devices": 25, "offline_hours": 250})
        )
    }
    assert rows["offline_hours"]["verdict"] == "变差（按每台）" and "按每台比较" in rows["offline_hours"]["note"]
    assert rows["devices"]["verdict"] == "变差"
    gone = {
        r["key"]: r
        for r in headline.change_rows(
            headline.changes({"devices": 3, "offline_hours": 5}, {"devices": 0, "offline_hours": 0})
        )
    }
    assert gone["offline_hours"]["verdict"] == "不可比"


# ---------------------------------------------------------------------------------------------
# The workbook: a title row on every sheet


def _report(provisional: bool) -> dict[str, object]:
    tables = {spec.key: build._table(spec, []) for spec in build.TABLES}
    tables["changes"] = build._table(
        build.TABLE_BY_KEY["changes"],
        headline.change_rows(headline.changes({"devices": 25, "out_of_range_hours": 2.5}, {"devices": 24})),
    )
    return {"unit": {"name": "西安市疾控"}, "month": "2026-10", "provisional": provisional, "tables": tables}


@pytest.mark.parametrize(("provisional", "state"), [(False, "最终"), (True, "临时")])
def test_every_sheet_starts_with_a_title_row(provisional: bool, state: str) -> None:
    report = _report(provisional)
    book = load_workbook(io.BytesIO(workbook(report)))
    assert book.sheetnames == [sheet_name(s.title) for s in build.TABLES]
    for spec in build.TABLES:
        sheet = book[sheet_name(spec.title)]
        title = sheet["A1"].value
        assert title == title_row(report, spec.title)
        assert "西安市疾控" in title and "2026-10" in title and title.endswith(state) and spec.title in title
        assert sheet["A2"].value == spec.columns[0].label  # the headings under the title
        assert sheet.freeze_panes == "A3"
    changes = book[sheet_name("概况与环比")]
    labels = [c.value for c in changes[2]]
    devices = next(r for r in changes.iter_rows(min_row=3) if r[0].value == "设备数")
    current = devices[labels.index("本月")]
    assert current.value == 25 and current.number_format == "General"  # shows "25", not "25.00"


# ---------------------------------------------------------------------------------------------
# Against the database: minutes out of range and temperatures as the lot trace computes them


def _series(start: datetime, end: datetime, every: timedelta, t: float) -> list[tuple[datetime, float]]:
    out, at = [], start
    while at < end:
        out.append((at, t))
        at += every
    return out


def _month_readings(w: World, period: maths.Period) -> list[tuple[datetime, float]]:
    """T1 冷藏 every 10 minutes at 5 ℃ from 20 minutes before the month to its end, with three
    excursions: one running at midnight (9.5 ℃ from −20 min to +20 min: 20 min count), one of 40
    minutes on day 5, and a 9 ℃ reading on day 9 followed by an hour of silence (holds 30 min)."""
    start, end = period.start, period.end
    every = timedelta(minutes=10)
    hot = {start + k * every for k in (-2, -1, 0, 1)}
    day5 = start + timedelta(days=4, hours=12)
    hot |= {day5 + k * every for k in range(4)}
    day9 = start + timedelta(days=8, hours=8)
    silent = {day9 + k * every for k in range(1, 6)}
    readings = []
    for at, _ in _series(start - 2 * every, end, every, 5.0):
        if at in silent:
            continue
        readings.append(
            (at, 10.0 if day5 <= at < day5 + 4 * every else 9.5 if at in hot else 9.0 if at == day9 else 5.0)
        )
    return readings


def test_report_reads_minutes_out_of_range_and_temperatures_as_the_trace_does(db_url: str) -> None:
    w = alarm_world(db_url)
    now = datetime.now(UTC)
    month = terms.previous_month(terms.previous_month(terms.current_month(now)))
    period = maths.month_period(month, now)
    readings = _month_readings(w, period)
    comp = w.compartments["T1/冷藏"]
    with db.connect(db_url) as conn:
        add_readings(conn, w.probes["108601"], readings)
        conn.commit()
    refresh_aggregates(db_url)
    with db.connect(db_url) as conn:
        report = build.compute(conn, w.units["K1"], month, now, previous=(None, False))
        trace = temperatures(
            conn, [Segment(0, Interval(w.units["T1"], period.start, period.end), comp, period.start, period.end)]
        )[0]
    t1 = next(r for r in report["tables"]["devices"]["rows"] if r["equipment_id"] == w.equipment["T1"])
    # The rule stated in Python, the trace's spans and the report agree: 20 + 40 + 30 minutes.
    assert out_of_range_minutes(readings, 2.0, 8.0, period.start, period.end) == pytest.approx(90.0)
    assert trace["minutes_out_of_range"] == pytest.approx(90.0)
    assert t1["out_of_range_hours"] == 1.5 and report["headline"]["out_of_range_hours"] == 1.5
    # Temperatures of the month only (the two 9.5 ℃ readings before midnight are last month's).
    inside = [t for ts, t in readings if period.start <= ts < period.end]
    assert (t1["refrigerated_min_t"], t1["refrigerated_max_t"]) == (5.0, 10.0)
    assert t1["refrigerated_mean_t"] == round(sum(inside) / len(inside), 2) == round(trace["mean_t"], 2)
    # The freezer zone is bound but silent: no temperatures rather than zeros.
    assert t1["frozen_min_t"] is None and t1["frozen_mean_t"] is None
    labels = [c["label"] for c in report["tables"]["devices"]["columns"]]
    assert {"冷藏最低（℃）", "冷藏最高（℃）", "冷藏平均（℃）", "冷冻最低（℃）"} <= set(labels)
    assert report["changes"][0]["key"] == "devices" and type(report["changes"][0]["current"]) is int


def test_current_month_counts_readings_not_yet_materialised(db_url: str) -> None:
    """The spans of readings since the last refresh are computed live, as for the trace: an
    excursion of the last hour is in the current month's report at once."""
    w = alarm_world(db_url)
    now = datetime.now(UTC)
    period = maths.month_period(terms.current_month(now), now)
    if now - period.start < timedelta(hours=2):
        pytest.skip("本月开始不足 2 小时")
    start = now.replace(second=0, microsecond=0) - timedelta(minutes=40)
    readings = _series(start, start + timedelta(minutes=25), timedelta(minutes=5), 5.0)
    readings[2] = (readings[2][0], 8.5)  # 10 minutes out, then back in range
    readings[3] = (readings[3][0], 8.6)
    with db.connect(db_url) as conn:
        add_readings(conn, w.probes["108601"], readings)
        conn.commit()
    # The aggregates take the complete hours; the excursion spans stop short of the last hour.
    assert refresh_aggregates(db_url).materialized_until is not None
    with db.connect(db_url) as conn:
        watermark = conn.execute("SELECT materialized_until FROM excursion_state").fetchone()
        assert watermark is not None and watermark[0] <= readings[2][0]
        report = build.compute(conn, w.units["K1"], period.month, datetime.now(UTC), previous=(None, False))
    t1 = next(r for r in report["tables"]["devices"]["rows"] if r["equipment_id"] == w.equipment["T1"])
    assert t1["out_of_range_hours"] == round(10 / 60, 2)
    assert (t1["refrigerated_min_t"], t1["refrigerated_max_t"]) == (5.0, 8.6)


def test_page_says_when_a_sum_was_compared_per_device() -> None:
    """The page's card and the changes table, rendered from a report document whose device count
    fell from 25 to 20: offline hours fell, but per device they rose — shown as worse, and why."""
    from dashboards.reports import CARDS
    from dashboards.web import templates

    current = dict.fromkeys((i.key for i in headline.INDICATORS), None) | {"devices": 20, "offline_hours": 240}
    previous = dict.fromkeys((i.key for i in headline.INDICATORS), None) | {"devices": 25, "offline_hours": 250}
    changes = headline.changes(current, previous)
    tables = {spec.key: build._table(spec, []) for spec in build.TABLES}
    tables["changes"] = build._table(build.TABLE_BY_KEY["changes"], headline.change_rows(changes))
    report = {
        "month": "2026-10",
        "unit": {"name": "西安市疾控"},
        "provisional": False,
        "period": {"start": "2026-10-01T00:00:00+08:00", "cut": "2026-11-01T00:00:00+08:00"},
        "generated_at": "2026-11-03T02:00:00+08:00",
        "previous": {"month": "2026-09", "kept": True},
        "headline": current,
        "tables": tables,
    }
    html = templates.get_template("report_monthly.html").render(
        report=report,
        cards=CARDS,
        changes={c["key"]: c for c in changes},
        area_figure=None,
        units=[],
        unit_id=1,
        xlsx_url="",
        json_url="",
        replica_note=None,
        request_path="/reports/monthly",
        user=None,
        api="/api/v1",
        plotly_src="",
        plotly=False,
        nav_open_alarms=None,
    )
    card = html[html.index('id="card-offline_hours"') :][:400]
    assert 'class="delta worse"' in card and "每台 10.00→12.00 小时（设备 25→20 台）" in card
    row = html[html.index("离线小时数</td>") :][:400]
    assert ">240<" in row and ">-10<" in row and "变差（按每台）" in row and "按每台比较" in row
    assert html[html.index("设备数</td>") :][:200].count('class="num">2') == 2  # "20", "25" — not "20.00"
