"""The compartment series API and the device page against a real database: the source chosen by
the range, the point cap, attribution across a probe swap (raw, hourly and daily, aggregates
materialised or live), alarm intervals, thermometer markers, gateway power and offline periods,
jurisdiction and range checks, and the page itself."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from alarmhelp import add_status, alarm_world
from apihelp import World, api_client, bearer, error_code, web_session
from fastapi.testclient import TestClient

from alarms.rules import GatewayParams
from analytics.aggregates import refresh_aggregates
from analytics.series import gateway_statuses, offline_periods, power_periods, with_prev
from coldchain.core import db

API = "/api/v1"
# A fixed hour in the past, so every range below is away from the present.
END = datetime(2026, 11, 1, 16, 0, tzinfo=UTC)  # 2026-11-02 00:00 Beijing


@pytest.fixture
def world(db_url: str) -> World:
    return alarm_world(db_url)  # no readings yet


@pytest.fixture
def client(world: World) -> Iterator[TestClient]:
    with api_client(world.url) as c:
        yield c


def fill(world: World, probe: str, start: datetime, end: datetime, t: str, step: str = "5 minutes") -> int:
    """Readings every ``step`` in [start, end); ``t`` is an SQL expression of ``ts`` and ``i``."""
    with db.connect(world.url) as conn:
        cur = conn.execute(
            f"""INSERT INTO probe_readings (probe_id, ts, t)
                SELECT %s, ts, {t}
                FROM generate_series(%s::timestamptz, %s::timestamptz - interval '1 microsecond', %s::interval)
                     WITH ORDINALITY AS g(ts, i)""",  # noqa: S608 — test-written expressions only
            (world.probes[probe], start, end, step),
        )
        conn.commit()
        return cur.rowcount


def series(client: TestClient, headers: dict[str, str], comp: int, start: datetime, end: datetime) -> Any:
    r = client.get(
        f"{API}/compartments/{comp}/series",
        params={"start": start.isoformat(), "end": end.isoformat()},
        headers=headers,
    )
    assert r.status_code == 200, r.text
    return r.json()


def values(body: Any) -> list[float]:
    return [v for v in body["points"]["t"] if v is not None]


def test_source_by_range_and_the_point_cap(client: TestClient, world: World) -> None:
    """30 days of 5-minute readings (8 640), with one spike: each range gets its source, no trace
    exceeds 2 000 points, and the spike is in every view."""
    comp = world.compartments["T1/冷藏"]
    start = END - timedelta(days=30)
    spike = END - timedelta(days=5, hours=3, minutes=25)
    n = fill(
        world, "108601", start, END, f"CASE WHEN ts = '{spike.isoformat()}' THEN 11.5 ELSE 4 + (i %% 12) / 10.0 END"
    )
    assert n == 8640
    h = bearer(client, "ba_T1")

    day = series(client, h, comp, END - timedelta(days=1), END)
    assert day["source"] == "raw" and day["band"] is None and day["bucket_seconds"] is None
    assert day["total"] == 288 and len(day["points"]["ts"]) == 288 and not day["downsampled"]
    assert datetime.fromisoformat(day["points"]["ts"][0]) == END - timedelta(days=1)

    week = series(client, h, comp, END - timedelta(days=7), END)
    assert week["source"] == "raw" and week["total"] == 2016
    assert week["downsampled"] and len(week["points"]["ts"]) <= 2000
    ts = [datetime.fromisoformat(x) for x in week["points"]["ts"]]
    assert ts == sorted(ts) and ts[0] == END - timedelta(days=7) and ts[-1] == END - timedelta(minutes=5)
    assert max(values(week)) == 11.5, "min-max thinning keeps the spike"

    month = series(client, h, comp, start, END)
    assert month["source"] == "hourly" and month["bucket_seconds"] == 3600
    assert month["total"] == 720 and len(month["points"]["ts"]) == 720 <= 2000
    assert max(month["band"]["max"]) == 11.5 and min(month["band"]["min"]) == 4.0
    # Every mean is the hour's mean of the readings themselves.
    with db.connect(world.url) as conn:
        expected = conn.execute(
            """SELECT time_bucket('1 hour', ts) + interval '30 minutes', avg(t) FROM probe_readings
               WHERE probe_id = %s GROUP BY 1 ORDER BY 1""",
            (world.probes["108601"],),
        ).fetchall()
    got = list(zip([datetime.fromisoformat(x) for x in month["points"]["ts"]], month["points"]["t"], strict=True))
    assert got == [(a, pytest.approx(b)) for a, b in expected]

    # Past 80 days: daily buckets (Beijing days); readings exist for 30 of them.
    long = series(client, h, comp, END - timedelta(days=100), END)
    assert long["source"] == "daily" and long["bucket_seconds"] == 86400 and long["total"] == 30
    assert max(long["band"]["max"]) == 11.5
    assert datetime.fromisoformat(long["points"]["ts"][0]) == start + timedelta(hours=12)  # Beijing noon

    # Materialised aggregates (the refresh) give the same answer as the live views.
    refresh_aggregates(world.url, until=END - timedelta(days=10))
    for before, after in ((month, series(client, h, comp, start, END)),
                          (long, series(client, h, comp, END - timedelta(days=100), END))):  # fmt: skip
        assert after["points"]["ts"] == before["points"]["ts"]
        assert after["points"]["t"] == pytest.approx(before["points"]["t"])
        assert after["band"] == before["band"]

    # The default range is the last 24 hours (no readings there).
    r = client.get(f"{API}/compartments/{comp}/series", headers=h)
    assert r.status_code == 200
    recent = r.json()
    span = datetime.fromisoformat(recent["end"]) - datetime.fromisoformat(recent["start"])
    assert recent["source"] == "raw" and span == timedelta(hours=24) and recent["points"]["ts"] == []


def test_a_week_of_one_minute_readings_is_thinned_to_the_cap(client: TestClient, world: World) -> None:
    comp = world.compartments["T1/冷藏"]
    t = "4 + (i %% 97) / 50.0 + CASE WHEN i = 5000 THEN 20 ELSE 0 END"
    n = fill(world, "108601", END - timedelta(days=7), END, t, step="1 minute")
    body = series(client, bearer(client, "ba_T1"), comp, END - timedelta(days=7), END)
    assert body["source"] == "raw" and body["total"] == n == 10080
    assert len(body["points"]["ts"]) <= 2000 and len(body["points"]["ts"]) > 1500
    assert max(values(body)) == pytest.approx(4 + (5000 % 97) / 50 + 20)
    assert min(values(body)) == 4.0


def test_a_probe_swap_gives_one_series_from_both_probes(client: TestClient, world: World) -> None:
    """Probe 108601 measures 4 ℃ and is swapped at 10:20 (UTC) for 108602 measuring 6 ℃; both keep
    sending all along (108601 from the stock shelf). Only what each measured while bound counts."""
    comp = world.compartments["T1/冷藏"]
    swap = END - timedelta(days=3) + timedelta(hours=10, minutes=20)
    with db.connect(world.url) as conn:
        conn.execute(
            "UPDATE probe_bindings SET valid = tstzrange(lower(valid), %s) WHERE id = %s",
            (swap, world.bindings["108601"]),
        )
        conn.execute(
            """INSERT INTO probe_bindings (probe_id, compartment_id, gateway_id, valid)
               VALUES (%s, %s, %s, tstzrange(%s, NULL))""",
            (world.probes["108602"], comp, world.gateways["10001"], swap),
        )
        conn.commit()
    start = END - timedelta(days=20)
    fill(world, "108601", start, END, "4.0")
    fill(world, "108602", start, END, "6.0")
    h = bearer(client, "ba_T1")

    raw = series(client, h, comp, swap - timedelta(days=1), swap + timedelta(days=1))
    ts = [datetime.fromisoformat(x) for x in raw["points"]["ts"]]
    assert raw["source"] == "raw" and raw["total"] == 576 and len(set(ts)) == 576, "one reading per 5 minutes"
    assert all(v == (4.0 if x < swap else 6.0) for x, v in zip(ts, raw["points"]["t"], strict=True))
    assert raw["gaps"] == [] and None not in raw["points"]["t"]

    hourly = series(client, h, comp, start, END)
    assert hourly["source"] == "hourly" and hourly["total"] == 480
    by_hour = dict(zip([datetime.fromisoformat(x) for x in hourly["points"]["ts"]], hourly["points"]["t"], strict=True))
    swap_hour = swap.replace(minute=30)
    assert by_hour[swap_hour] == pytest.approx((4 * 4.0 + 8 * 6.0) / 12), "4 readings of the old probe, 8 of the new"
    i = hourly["points"]["ts"].index(swap_hour.isoformat().replace("+00:00", "Z"))
    assert (hourly["band"]["min"][i], hourly["band"]["max"][i]) == (4.0, 6.0)
    assert all(v == (4.0 if x < swap_hour else 6.0) for x, v in by_hour.items() if x != swap_hour)

    # Daily, live and then materialised: the swap day mixes both, exactly as attributed readings do.
    with db.connect(world.url) as conn:
        expected = conn.execute(
            """SELECT time_bucket('1 day', ts, 'Asia/Shanghai') + interval '12 hours', avg(t)
               FROM probe_readings_attributed WHERE compartment_id = %s GROUP BY 1 ORDER BY 1""",
            (comp,),
        ).fetchall()
    for _ in range(2):
        daily = series(client, h, comp, END - timedelta(days=90), END)
        assert daily["source"] == "daily" and daily["total"] == 20
        got = list(zip([datetime.fromisoformat(x) for x in daily["points"]["ts"]], daily["points"]["t"], strict=True))
        assert got == [(a, pytest.approx(b)) for a, b in expected]
        assert len({round(v, 6) for v in values(daily)}) == 3  # 4 ℃ days, the swap day, 6 ℃ days
        refresh_aggregates(world.url, until=END)


def test_alarms_thermometer_and_gateway_periods(client: TestClient, world: World) -> None:
    comp = world.compartments["T1/冷藏"]
    other = world.compartments["T1/冷冻"]
    gw = world.gateways["10001"]
    start, end = END - timedelta(hours=12), END
    fill(world, "108601", start, end, "CASE WHEN i BETWEEN 40 AND 60 THEN 9.5 ELSE 5.0 END")
    unit = world.units["T1"]
    with db.connect(world.url) as conn:
        for kind, c, since, resolved in (
            ("high", comp, start + timedelta(minutes=200), start + timedelta(minutes=300)),  # resolved
            ("cumulative", comp, start - timedelta(days=2), start + timedelta(minutes=10)),  # began before
            ("no_data", comp, end - timedelta(minutes=30), None),  # still open
            ("high", comp, start - timedelta(days=3), start - timedelta(days=2)),  # before the range
            ("low", other, start + timedelta(hours=1), None),  # the other compartment
        ):
            conn.execute(
                """INSERT INTO alarms (kind, severity, unit_id, compartment_id, condition_since, state, resolved_at,
                                       value)
                   VALUES (%s, 'major', %s, %s, %s, %s, %s, 9.5)""",
                (kind, unit, c, since, "resolved" if resolved else "active", resolved),
            )
        reading = conn.execute(
            """INSERT INTO thermometer_readings (compartment_id, ts, t, entered_by, note)
               VALUES (%s, %s, 5.6, %s, '上午巡查') RETURNING id""",
            (comp, start + timedelta(hours=2), world.users["ba_T1"]),
        ).fetchone()
        assert reading
        conn.execute(
            """INSERT INTO drift_findings (thermometer_reading_id, compartment_id, probe_id, probe_ts, probe_t,
                                           thermometer_t, difference, finding)
               VALUES (%s, %s, %s, %s, 5.0, 5.6, -0.6, true)""",
            (reading[0], comp, world.probes["108601"], start + timedelta(hours=2)),
        )
        conn.execute(
            "INSERT INTO thermometer_readings (compartment_id, ts, t, entered_by) VALUES (%s, %s, 5.1, %s)",
            (comp, start + timedelta(hours=8), world.users["ba_T1"]),
        )
        conn.execute(
            "INSERT INTO thermometer_readings (compartment_id, ts, t, entered_by) VALUES (%s, %s, 5.1, %s)",
            (comp, start - timedelta(hours=1), world.users["ba_T1"]),
        )
        # Gateway: on mains every minute; battery 120–150 min; reported offline 200–210 min; silent
        # 300–360 min; silent again from 700 min (the range ends at 720).
        minute = timedelta(minutes=1)
        add_status(conn, gw, start - 5 * minute, online=True, power="ac")
        for m in range(700):
            if 200 <= m < 210:
                add_status(conn, gw, start + m * minute, online=False)
            elif not 300 < m < 360:
                add_status(conn, gw, start + m * minute, online=True, power="battery" if 120 <= m < 150 else "ac")
        conn.commit()

    body = series(client, bearer(client, "ba_T1"), comp, start, end)
    alarms = [(a["kind"], a["label"], a["ongoing"]) for a in body["alarms"]]
    assert alarms == [("cumulative", "累计超温", False), ("high", "温度超上限", False), ("no_data", "探头无数据", True)]
    assert body["alarms"][1]["start"].startswith((start + timedelta(minutes=200)).isoformat()[:16])
    assert body["limits"] == {"t_min": 2.0, "t_max": 8.0}
    marks = body["thermometer"]
    assert [(m["t"], m["drift"], m["note"]) for m in marks] == [(5.6, True, "上午巡查"), (5.1, None, None)]
    assert marks[0]["difference"] == -0.6 and marks[0]["probe_t"] == 5.0

    (g,) = body["gateways"]
    assert g["serial"] == "10001" and g["heard"]

    def spans(periods: list[dict[str, Any]]) -> list[tuple[float, float, str]]:
        return [
            (
                (datetime.fromisoformat(p["start"]) - start) / timedelta(minutes=1),
                (datetime.fromisoformat(p["end"]) - start) / timedelta(minutes=1),
                p["kind"],
            )
            for p in periods
        ]

    assert spans(g["offline"]) == [(200, 210, "reported"), (300, 360, "silent"), (699, 720, "silent")]
    assert spans(g["power"]) == [(0, 120, "ac"), (120, 150, "battery"), (150, 200, "ac"), (210, 300, "ac"),
                                 (360, 699, "ac")]  # fmt: skip

    # The SQL hands Python only the statuses that change something: the same periods as all of them.
    after = GatewayParams().offline_after
    with db.connect(world.url) as conn:
        kept = gateway_statuses(conn, gw, start, end, after)
        every = with_prev(
            conn.execute(
                """(SELECT ts, online, power FROM gateway_status WHERE gateway_id = %(g)s AND ts < %(s)s
                    ORDER BY ts DESC LIMIT 1)
                   UNION ALL SELECT ts, online, power FROM gateway_status
                   WHERE gateway_id = %(g)s AND ts >= %(s)s AND ts < %(e)s""",
                {"g": gw, "s": start, "e": end},
            ).fetchall()
        )
    assert len(kept) < 15 < len(every)
    now = datetime.now(UTC)
    for statuses in (kept, every):
        off = offline_periods(statuses, start, end, now, after)
        assert [(p.start, p.end) for p in off] == [
            (datetime.fromisoformat(p["start"]), datetime.fromisoformat(p["end"])) for p in g["offline"]
        ]
        assert len(power_periods(statuses, start, end, now, off)) == 5


def test_jurisdiction_and_bad_ranges(client: TestClient, world: World) -> None:
    comp = world.compartments["T1/冷藏"]
    url = f"{API}/compartments/{comp}/series"
    for who in ("ba_T1", "ba_K1", "sa_C1", "sup_P", "ana_K1"):
        assert client.get(url, headers=bearer(client, who)).status_code == 200, who
    for who in ("ba_T2", "sa_K2", "ba_K3", "sa_C2"):
        r = client.get(url, headers=bearer(client, who))
        assert r.status_code == 404 and error_code(r) == "not_found", who
    h = bearer(client, "ba_K1")
    r = client.get(f"{API}/compartments/999999/series", headers=h)
    assert r.status_code == 404 and error_code(r) == "not_found"
    assert client.get(url).status_code == 401

    def ask(**params: str) -> Any:
        return client.get(url, params=params, headers=h)

    r = ask(start="2026-11-02T00:00:00+08:00", end="2026-11-01T00:00:00+08:00")
    assert r.status_code == 422 and "结束时间必须晚于开始时间" in r.json()["error"]["message"]
    r = ask(start="2026-11-01T00:00:00+08:00", end="2026-11-01T00:00:00+08:00")
    assert r.status_code == 422
    r = ask(start="2025-01-01T00:00:00+08:00", end="2026-11-01T00:00:00+08:00")
    assert r.status_code == 422 and "最长 400 天" in r.json()["error"]["message"]
    r = ask(start="2026-01-01T00:00:00", end="2026-01-02T00:00:00")
    assert r.status_code == 422 and "时区" in r.json()["error"]["message"]
    r = ask(start="0001-01-01T00:00:00+14:00")
    assert r.status_code == 422 and "2015" in r.json()["error"]["message"]
    r = ask(end="9999-12-31T23:59:59-12:00")
    assert r.status_code == 422
    r = ask(start="2026-10-01T00:00:00+08:00")  # start alone: the 24 hours after it
    assert r.status_code == 200
    assert datetime.fromisoformat(r.json()["end"]) == datetime.fromisoformat("2026-10-02T00:00:00+08:00")
    assert ask(start="2025-10-01T00:00:00+08:00", end="2026-11-05T00:00:00+08:00").status_code == 200  # 400 days


def test_device_page(world: World) -> None:
    eq = world.equipment["T1"]
    with api_client(world.url) as client:
        r = client.get(f"/devices/{eq}", follow_redirects=False)
        assert r.status_code == 303 and r.headers["location"].startswith("/login?next=")
        web_session(client, "ba_T1")
        r = client.get(f"/devices/{eq}")
        assert r.status_code == 200, r.text
        html = r.text
        for zone in ("T1/冷藏", "T1/冷冻"):
            assert f'id="chart-{world.compartments[zone]}"' in html
        assert "/static/plotly.min.js" in html and "cdn" not in html.lower()
        for label in ("24 小时", "7 天", "30 天", "自定义", 'type="datetime-local"'):
            assert label in html
        assert "dataset.ready" in html and "plotly_relayout" in html
        assert client.get(f"/devices/{eq}?range=30d").status_code == 200
        assert client.get(f"/devices/{eq}?range=1y").status_code == 422
        other = client.get(f"/devices/{world.equipment['T2']}")
        assert other.status_code == 404 and "不在您的辖区内" in other.text
        assert client.get("/devices/99999999").status_code == 404
        # The page's own fetches use the cookie session (GET: no CSRF token needed).
        comp = world.compartments["T1/冷藏"]
        assert client.get(f"{API}/compartments/{comp}/series").status_code == 200
