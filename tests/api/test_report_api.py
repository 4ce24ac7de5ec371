"""The monthly cold-chain report against the real database: exact figures for a seeded month, kept
reports that do not change afterwards, the workbook, jurisdiction, the page, the scheduler's job.

The month under test is the one before last (Beijing), always final (two days after its end) —
so the API keeps it on first request — and after apihelp's bindings (2026-01-01).
"""

from __future__ import annotations

import io
import re
import threading
import zipfile
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any

import psycopg
import pytest
from alarmhelp import add_status, alarm_world
from apihelp import BOUND_FROM, World, api_client, bearer, error_code, web_session
from openpyxl import load_workbook
from psycopg.types.json import Jsonb

from analytics.aggregates import refresh_aggregates
from analytics.report import build, maths
from coldchain.core import db, terms
from coldchain.core.terms import BEIJING

SHEETS = [
    "概况与环比",
    "设备明细",
    "问题设备排名",
    "各地区问题设备占比",
    "报警响应",
    "网关电源与信号",
    "登录检查",
    "保修到期",
    "指标说明",
]


@dataclass
class Seeded:
    world: World
    month: date
    period: maths.Period
    days: int

    @property
    def label(self) -> str:
        return self.period.label

    def bj(self, day: int, hour: int, minute: int = 0) -> datetime:
        return datetime(self.month.year, self.month.month, day, hour, minute, tzinfo=BEIJING)


def month_under_test(now: datetime) -> date:
    month = terms.previous_month(terms.previous_month(terms.current_month(now)))
    assert month >= BOUND_FROM.date().replace(day=1), "apihelp 的绑定从 2026-01-01 开始"
    return month


def probe(w: World, serial: str) -> int:
    return w.probes[serial]


def insert_alarm(conn: psycopg.Connection, **a: Any) -> int:
    row = conn.execute(
        """INSERT INTO alarms (kind, severity, unit_id, equipment_id, compartment_id, gateway_id, state,
                               condition_since, raised_at, acknowledged_at, resolved_at, suppressed)
           VALUES (%(kind)s, 'major', %(unit)s, %(eq)s, %(comp)s, %(gw)s, %(state)s, %(raised)s, %(raised)s,
                   %(ack)s, %(resolved)s, %(suppressed)s) RETURNING id""",
        {"eq": None, "comp": None, "gw": None, "ack": None, "resolved": None, "suppressed": False, **a},
    ).fetchone()
    assert row is not None
    return int(row[0])


def seed(url: str) -> Seeded:
    """Readings, alarms, gateway statuses, a drift finding, sign-ins and warranties in the month."""
    world = alarm_world(url)
    now = datetime.now(UTC)
    month = month_under_test(now)
    period = maths.month_period(month, now)
    days = (period.last_day - month).days + 1
    s = Seeded(world, month, period, days)
    u, c, g = world.units, world.compartments, world.gateways
    with db.connect(url) as conn:
        minute = "INTERVAL '1 minute'"
        # T1 冷藏: days 1–10 every minute at 5 ℃, day 3 10:00–11:59 at 9 ℃ (two hours out of range).
        conn.execute(
            f"""INSERT INTO probe_readings (probe_id, ts, t)
                SELECT %(p)s, g, CASE WHEN g >= %(x0)s AND g < %(x1)s THEN 9.0 ELSE 5.0 END
                FROM generate_series(%(a)s, %(a)s + INTERVAL '10 days' - {minute}, {minute}) AS g""",  # noqa: S608
            {"p": probe(world, "108601"), "a": period.start, "x0": s.bj(3, 10), "x1": s.bj(3, 12)},
        )
        # T1 冷冻: days 1–5 at −20 ℃. T3 both zones: the whole month, in range. T2: silent.
        for serial, span, t in (("108604", "5 days", -20.0), ("308601", None, 4.0), ("308604", None, -20.0)):
            conn.execute(
                f"""INSERT INTO probe_readings (probe_id, ts, t)
                    SELECT %(p)s, g, %(t)s FROM generate_series(%(a)s, %(b)s - {minute}, {minute}) AS g""",  # noqa: S608
                {
                    "p": probe(world, serial),
                    "t": t,
                    "a": period.start,
                    "b": period.start + (timedelta(days=5) if span else period.end - period.start),
                },
            )
        a1 = insert_alarm(
            conn,
            kind="high",
            unit=u["T1"],
            eq=world.equipment["T1"],
            comp=c["T1/冷藏"],
            state="resolved",
            raised=s.bj(3, 10, 10),
            ack=s.bj(3, 10, 20),
            resolved=s.bj(3, 12, 5),
        )
        a2 = insert_alarm(
            conn,
            kind="no_data",
            unit=u["T2"],
            comp=c["T2/冷藏"],
            state="resolved",
            raised=s.bj(6, 9),
            ack=s.bj(6, 9, 45),
            resolved=s.bj(6, 11),
        )
        insert_alarm(
            conn,
            kind="gateway_power",
            unit=u["T2"],
            gw=g["20001"],
            state="resolved",
            raised=s.bj(7, 8),
            resolved=s.bj(7, 11),
        )
        insert_alarm(
            conn,
            kind="no_data",
            unit=u["T3"],
            comp=c["T3/冷藏"],
            state="resolved",
            raised=s.bj(8, 8),
            resolved=s.bj(8, 9),
            suppressed=True,
        )
        for alarm_id, step in ((a1, "open"), (a2, "open"), (a2, "level2")):
            conn.execute(
                """INSERT INTO notification_outbox (alarm_id, step, channel, target, levels, due_at)
                   VALUES (%s, %s, 'wecom', 'https://robot.example/1', '{1,2}', now())""",
                (alarm_id, step),
            )
        # T2's drift finding (CM10), by the thermometer reading's time.
        reading = conn.execute(
            """INSERT INTO thermometer_readings (compartment_id, ts, t, entered_by) VALUES (%s, %s, 5.5, %s)
               RETURNING id""",
            (c["T2/冷藏"], s.bj(8, 9), world.users["ba_T2"]),
        ).fetchone()
        assert reading is not None
        conn.execute(
            """INSERT INTO drift_findings (thermometer_reading_id, compartment_id, thermometer_t, difference, finding)
               VALUES (%s, %s, 5.5, 1.2, true)""",
            (reading[0], c["T2/冷藏"]),
        )
        # T1 signs in twice 7 h apart on day 1 (compliant), twice 1 h apart on day 2 (not).
        for at in (s.bj(1, 8), s.bj(1, 15), s.bj(2, 8), s.bj(2, 9)):
            conn.execute(
                """INSERT INTO login_events (user_id, unit_id, username, ts, channel, success)
                   VALUES (%s, %s, 'ba_T1', %s, 'web', true)""",
                (world.users["ba_T1"], u["T1"], at),
            )
        far = period.last_day + timedelta(days=400)
        conn.execute("UPDATE gateways SET warranty_end = %s", (far,))
        conn.execute("UPDATE probes SET warranty_end = %s", (far,))
        conn.execute(
            "UPDATE gateways SET warranty_end = %s WHERE serial = '10001'", (period.last_day + timedelta(days=30),)
        )
        conn.execute("UPDATE probes SET warranty_end = %s WHERE serial = '108601'", (period.last_day,))
        conn.commit()
        # Gateway 20001 (T2) on day 7: 10 status reports, 4 on battery, 2 below 3.5 V, 3 below −100 dBm.
        for i in range(10):
            add_status(
                conn,
                g["20001"],
                s.bj(7, 8, i),
                power="battery" if i < 4 else "ac",
                battery=3.4 if i < 2 else 3.9,
                rssi=-105 if i < 3 else -70,
            )
    refresh_aggregates(url)
    return s


@pytest.fixture
def seeded(db_url: str) -> Seeded:
    return seed(db_url)


def rows_by(table: dict[str, Any], key: str) -> dict[Any, dict[str, Any]]:
    return {r[key]: r for r in table["rows"]}


def get_report(client: Any, headers: dict[str, str], unit: int, month: str) -> Any:
    return client.get("/api/v1/reports/monthly", params={"unit_id": unit, "month": month}, headers=headers)


# ---------------------------------------------------------------------------------------------


def test_province_report_figures(seeded: Seeded) -> None:
    w, days = seeded.world, seeded.days
    with api_client(w.url) as client:
        r = get_report(client, bearer(client, "sup_P"), w.units["P"], seeded.label)
    assert r.status_code == 200, r.text
    report = r.json()
    assert (report["month"], report["provisional"], report["kept"]) == (seeded.label, False, True)
    assert report["unit"]["code"] == "6100000000"
    expected_per_zone = days * 1440
    devices = rows_by(report["tables"]["devices"], "equipment_id")
    t1, t2, t3 = (devices[w.equipment[k]] for k in ("T1", "T2", "T3"))
    assert (t1["received"], t1["expected"]) == (14400 + 7200, 2 * expected_per_zone)
    assert t1["completeness"] == round(21600 / (2 * expected_per_zone), 4)
    assert (t1["out_of_range_hours"], t1["offline_hours"]) == (2.0, days * 24 - 120)
    assert (t1["alarms_high"], t1["alarms_total"], t1["drift_findings"]) == (1, 1, 0)
    assert t1["problems"] == "报警、超温、数据不完整"
    # Temperatures per mode (the lot trace's daily figures): T1's 冷藏 5 ℃ but two hours at 9 ℃
    # over its ten days; its 冷冻 −20 ℃; T2 silent, so none.
    assert (t1["refrigerated_min_t"], t1["refrigerated_max_t"]) == (5.0, 9.0)
    assert t1["refrigerated_mean_t"] == round((5.0 * (14400 - 120) + 9.0 * 120) / 14400, 2)
    assert (t1["frozen_min_t"], t1["frozen_max_t"], t1["frozen_mean_t"]) == (-20.0, -20.0, -20.0)
    assert t2["refrigerated_min_t"] is None and t2["frozen_mean_t"] is None
    assert (t2["received"], t2["completeness"], t2["offline_hours"]) == (0, 0.0, days * 24)
    assert (t2["alarms_no_data"], t2["drift_findings"]) == (1, 1)
    assert t2["problems"] == "报警、数据不完整、温度计比对偏差"
    assert (t3["received"], t3["completeness"], t3["offline_hours"], t3["alarms_total"]) == (
        2 * expected_per_zone,
        1.0,
        0,
        0,
    )
    assert not t3["problem"]

    areas = report["tables"]["areas"]["rows"]
    assert [(a["area_name"], a["devices"], a["problem_devices"], a["problem_share"]) for a in areas] == [
        ("西安市疾病预防控制中心", 1, 1, 1.0),
        ("渭南市疾病预防控制中心", 1, 1, 1.0),
        ("韩城市疾病预防控制中心", 1, 0, 0.0),
    ]
    ranking = report["tables"]["problems"]["rows"]
    # Both have one alarm; T1 has the hours out of range.
    assert [(p["rank"], p["equipment_id"]) for p in ranking] == [(1, w.equipment["T1"]), (2, w.equipment["T2"])]

    total = report["tables"]["response"]["rows"][-1]
    assert total["area_name"] == "合计"
    assert (total["alarms"], total["acknowledged"], total["ack_within_30"], total["ack_median_minutes"]) == (
        3,
        2,
        1,
        27.5,
    )
    assert (total["ack_within_30_share"], total["level2_share"], total["level3_share"]) == (0.3333, 0.3333, 0.0)

    gateways = report["tables"]["gateways"]["rows"]
    assert [x["serial"] for x in gateways] == ["20001"]
    gw = gateways[0]
    assert (gw["alarms_gateway_power"], gw["hours_gateway_power"], gw["problem"]) == (1, 3.0, True)
    assert (gw["statuses"], gw["on_battery_share"], gw["battery_low_share"], gw["weak_signal_share"]) == (
        10,
        0.4,
        0.2,
        0.3,
    )
    assert (gw["min_battery"], gw["min_rssi"]) == (3.4, -105)

    logins = rows_by(report["tables"]["logins"], "code")
    assert (
        logins["6101130001"]["days"],
        logins["6101130001"]["compliant_days"],
        logins["6101130001"]["noncompliant_days"],
    ) == (days, 1, 1)
    assert logins["6105020001"]["compliant_days"] == 0

    warranties = report["tables"]["warranties"]["rows"]
    assert [(x["serial"], x["hardware_name"], x["note"]) for x in warranties] == [
        ("108601", "探头", "本月已到期"),
        ("10001", "网关", "月末后 30 天到期"),
    ]

    head = report["headline"]
    assert head == {
        "devices": 3,
        "problem_devices": 2,
        "problem_share": 0.6667,
        "alarms": 3,
        "out_of_range_hours": 2.0,
        "offline_hours": (days * 24 - 120) + days * 24,
        "drift_findings": 1,
        "completeness": round((21600 + 2 * expected_per_zone) / (6 * expected_per_zone), 4),
        "ack_within_30_share": 0.3333,
        "level2_share": 0.3333,
        "level3_share": 0.0,
        "gateway_problems": 1,
        "login_rate": round(1 / (3 * days), 4),
        "warranties_due": 2,
    }
    # The month before had no data at all: everything is a problem there, nothing was received.
    assert report["previous"]["kept"] is False
    assert report["previous"]["headline"]["completeness"] == 0.0
    changes = {c["key"]: c for c in report["changes"]}
    assert changes["alarms"]["change"] == 3 and changes["alarms"]["better"] is False
    assert type(changes["alarms"]["change"]) is int and changes["alarms"]["basis"] in ("total", "per_device")
    # Counts are whole numbers in the JSON too: "设备数 3 台", not 3.0.
    shown = rows_by(report["tables"]["changes"], "key")
    assert type(shown["devices"]["current"]) is int and type(changes["devices"]["current"]) is int
    # The previous month had the same 3 devices: its offline hours compare as totals, no note.
    assert report["previous"]["headline"]["devices"] == 3
    assert shown["offline_hours"]["note"] == "" and shown["offline_hours"]["verdict"] in ("好转", "变差", "—")


def test_kept_report_does_not_change_when_data_changes(seeded: Seeded) -> None:
    w = seeded.world
    with api_client(w.url) as client:
        headers = bearer(client, "sa_P")
        first = get_report(client, headers, w.units["P"], seeded.label)
        assert first.status_code == 200, first.text
        with db.connect(w.url) as conn:
            stored = conn.execute(
                "SELECT content_sha256, report FROM monthly_reports WHERE unit_id = %s AND month = %s",
                (w.units["P"], seeded.month),
            ).fetchone()
            assert stored is not None and stored[0] == first.json()["content_sha256"]
            assert build.content_hash(stored[1]) == stored[0]
            # Late data for the month: readings for T2, another alarm; and the aggregates refreshed.
            conn.execute(
                """INSERT INTO probe_readings (probe_id, ts, t)
                   SELECT %s, g, 4.0 FROM generate_series(%s, %s, INTERVAL '1 minute') AS g""",
                (probe(w, "208601"), seeded.bj(20, 0), seeded.bj(20, 23, 59)),
            )
            insert_alarm(
                conn,
                kind="high",
                unit=w.units["T3"],
                eq=w.equipment["T3"],
                comp=w.compartments["T3/冷藏"],
                state="active",
                raised=seeded.bj(21, 3),
            )
            conn.commit()
        refresh_aggregates(w.url)
        second = get_report(client, headers, w.units["P"], seeded.label)
        assert second.json() == first.json()
        with db.connect(w.url) as conn:
            fresh = build.compute(conn, w.units["P"], seeded.month, datetime.now(UTC))
            # Computed now, the month would read differently: the kept report is what was reported.
            assert fresh["headline"]["alarms"] == 4 and first.json()["headline"]["alarms"] == 3
            with pytest.raises(psycopg.errors.RestrictViolation):
                conn.execute("UPDATE monthly_reports SET report = %s", (Jsonb({}),))
            conn.rollback()
            with pytest.raises(psycopg.errors.RestrictViolation):
                conn.execute("DELETE FROM monthly_reports")
            conn.rollback()
        # The next month compares with the kept report, not with a recomputation.
        following = get_report(client, headers, w.units["P"], terms.next_month(seeded.month).strftime("%Y-%m"))
        assert following.status_code == 200, following.text
        assert following.json()["previous"]["kept"] is True
        assert following.json()["previous"]["headline"] == first.json()["headline"]


def test_current_month_is_live_and_not_kept(seeded: Seeded) -> None:
    w = seeded.world
    now = datetime.now(UTC)
    current = terms.current_month(now).strftime("%Y-%m")
    with api_client(w.url) as client:
        headers = bearer(client, "ba_K1")
        r = get_report(client, headers, w.units["K1"], current)
        assert r.status_code == 200, r.text
        assert (r.json()["provisional"], r.json()["kept"], r.json()["content_sha256"]) == (True, False, None)
        default = client.get("/api/v1/reports/monthly", headers=headers)
        assert default.status_code == 200 and default.json()["month"] == current
        assert default.json()["unit"]["id"] == w.units["K1"]
    with db.connect(w.url) as conn:
        assert conn.execute("SELECT count(*) FROM monthly_reports").fetchone() == (0,)


def test_refusals_and_jurisdiction(seeded: Seeded) -> None:
    w = seeded.world
    future = terms.next_month(terms.current_month(datetime.now(UTC))).strftime("%Y-%m")
    with api_client(w.url) as client:
        k1 = bearer(client, "sa_K1")
        # A county user cannot read a sibling county's report: out of jurisdiction is "not found".
        r = get_report(client, k1, w.units["K2"], seeded.label)
        assert (r.status_code, error_code(r)) == (404, "not_found")
        r = client.get("/api/v1/reports/monthly.xlsx", params={"unit_id": w.units["C1"]}, headers=k1)
        assert (r.status_code, error_code(r)) == (404, "not_found")
        assert get_report(client, k1, w.units["K1"], seeded.label).status_code == 200
        r = get_report(client, k1, w.units["K1"], future)
        assert (r.status_code, error_code(r)) == (422, "invalid")
        assert "尚未到来" in r.json()["error"]["message"]
        for bad in ("2026-13", "2026-1", "十月"):
            r = get_report(client, k1, w.units["K1"], bad)
            assert (r.status_code, error_code(r)) == (422, "invalid_request"), bad
        # Sites have no report of their own; their devices are in the county's.
        t1 = bearer(client, "ba_T1")
        r = client.get("/api/v1/reports/monthly", headers=t1)
        assert (r.status_code, error_code(r)) == (422, "invalid")
        assert "接种单位" in r.json()["error"]["message"]
        r = get_report(client, t1, w.units["K1"], seeded.label)
        assert (r.status_code, error_code(r)) == (404, "not_found")
        assert client.get("/api/v1/reports/monthly").status_code == 401


def test_xlsx_has_a_sheet_per_table(seeded: Seeded) -> None:
    w = seeded.world
    with api_client(w.url) as client:
        r = client.get(
            "/api/v1/reports/monthly.xlsx",
            params={"unit_id": w.units["C1"], "month": seeded.label},
            headers=bearer(client, "ana_P"),
        )
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet"
    disposition = r.headers["content-disposition"]
    assert f'filename="coldchain-monthly-6101000000-{seeded.label}.xlsx"' in disposition
    assert "filename*=UTF-8''" in disposition and "%E8%A5%BF%E5%AE%89" in disposition  # 西安
    with zipfile.ZipFile(io.BytesIO(r.content)) as z:
        names = re.findall(r'<sheet name="([^"]+)"', z.read("xl/workbook.xml").decode())
        strings = z.read("xl/sharedStrings.xml").decode()
    assert names == SHEETS
    book = load_workbook(io.BytesIO(r.content))
    for name in SHEETS:
        # Every sheet says whose report, which month, and that it is final.
        title = book[name]["A1"].value
        assert title.startswith(f"西安市疾病预防控制中心 {seeded.label} 月度冷链报告") and title.endswith("最终"), title
    changes = book["概况与环比"]
    devices = next(r for r in changes.iter_rows(min_row=3) if r[0].value == "设备数")
    assert devices[1].value == 1 and devices[1].number_format == "General"
    heads = [c.value for c in book["设备明细"][2]]
    assert "冷藏平均（℃）" in heads and "冷冻最低（℃）" in heads
    assert "电子城街道社区卫生服务中心" in strings and "海尔双温冰箱" in strings
    assert "向阳街道卫生院" not in strings  # 渭南's site is not in 西安's report


def test_page_renders_chart_and_tables(seeded: Seeded) -> None:
    w = seeded.world
    with api_client(w.url) as client:
        anonymous = client.get(f"/reports/monthly?unit_id={w.units['K1']}", follow_redirects=False)
        assert anonymous.status_code == 303 and anonymous.headers["location"].startswith("/login")
        web_session(client, "ba_C1")
        r = client.get("/reports/monthly", params={"unit_id": w.units["C1"], "month": seeded.label})
        assert r.status_code == 200, r.text
        html = r.text
        assert 'id="area-chart"' in html and "Plotly.newPlot" in html and "/static/plotly.min.js" in html
        assert "@media print" in html and "已定稿" in html
        assert f"/api/v1/reports/monthly.xlsx?unit_id={w.units['C1']}&amp;month={seeded.label}" in html
        assert "雁塔区疾病预防控制中心" in html and 'id="table-devices"' in html
        # Counts as whole numbers: the changes table's 设备数 row reads 1, never 1.00.
        row = re.search(r"<tr[^>]*><td[^>]*>设备数</td>(.*?)</tr>", html, re.S)
        assert row is not None and re.findall(r">([^<]*)</td>", row.group(1))[:3] == ["1", "1", "0"]
        assert "冷藏最高（℃）" in html
        other = client.get("/reports/monthly", params={"unit_id": w.units["C2"]})
        assert other.status_code == 404
        future = terms.next_month(terms.current_month(datetime.now(UTC))).strftime("%Y-%m")
        assert client.get("/reports/monthly", params={"month": future}).status_code == 422


def test_scheduler_job_keeps_every_missing_final_report_once(seeded: Seeded) -> None:
    w = seeded.world
    now = datetime.now(UTC)
    months = build.final_months(seeded.month, now)
    assert months[0] == seeded.month
    units = [w.units[k] for k in ("P", "C1", "K1", "C2", "K2", "K3")]
    results: list[build.GenerationStats] = []

    def generate() -> None:
        with db.connect(w.url) as conn:
            results.append(build.generate_missing(conn, now))

    threads = [threading.Thread(target=generate) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert [r.errors for r in results] == [[], []]
    assert sum(r.stored for r in results) == len(units) * len(months)
    with db.connect(w.url) as conn:
        kept = conn.execute("SELECT unit_id, month FROM monthly_reports ORDER BY 1, 2").fetchall()
        assert sorted(kept) == sorted((u, m) for u in units for m in months)
        again = build.generate_missing(conn, now)
        assert (again.stored, again.errors) == (0, [])
        k1 = build.kept_report(conn, w.units["K1"], seeded.month)
        assert k1 is not None
        assert k1["report"]["headline"]["devices"] == 1 and k1["report"]["provisional"] is False
