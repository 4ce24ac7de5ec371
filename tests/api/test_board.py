"""The live board: tile states (pure), the board API's scoping and states against a real database,
and the page shell (sign-in redirect, Plotly bundle)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from alarmhelp import add_readings, add_status
from apihelp import World, api_client, web_session

from analytics.board import OpenAlarm, TileFacts, primary_alarm, reading_age, reading_flag, tile_state
from coldchain.core import db
from coldchain.core.terms import BEIJING
from dashboards.web import safe_next

NOW = datetime(2026, 11, 24, 8, 0, tzinfo=UTC)
FRESH = NOW - timedelta(minutes=5)
HALF_HOUR = timedelta(minutes=30)


@pytest.mark.parametrize(
    ("facts", "expected"),
    [
        (TileFacts(False, FRESH, [("high", "active")], HALF_HOUR, True), "unbound"),
        (TileFacts(True, FRESH, [("high", "active")], HALF_HOUR, True), "alarm"),
        (TileFacts(True, NOW - timedelta(hours=3), [("no_data", "active")], HALF_HOUR, None), "alarm"),
        (TileFacts(True, FRESH, [("high", "acknowledged"), ("low", "active")], HALF_HOUR, True), "alarm"),
        (TileFacts(True, NOW - HALF_HOUR, [], HALF_HOUR, True), "offline"),
        (TileFacts(True, NOW - HALF_HOUR + timedelta(seconds=1), [], HALF_HOUR, True), "normal"),
        (TileFacts(True, None, [], HALF_HOUR, None), "offline"),
        (TileFacts(True, FRESH, [], HALF_HOUR, False), "offline"),
        (TileFacts(True, NOW - timedelta(hours=2), [("high", "acknowledged")], HALF_HOUR, True), "offline"),
        (TileFacts(True, FRESH, [("high", "acknowledged")], HALF_HOUR, True), "acknowledged"),
        (TileFacts(True, FRESH, [], HALF_HOUR, True), "normal"),
    ],
)
def test_tile_state_precedence(facts: TileFacts, expected: str) -> None:
    assert tile_state(facts, NOW) == expected


@pytest.mark.parametrize(
    ("target", "expected"),
    [
        ("/devices/3?x=1", "/devices/3?x=1"),
        ("//evil.example/", "/board"),
        ("https://evil.example/", "/board"),
        ("/\\evil.example", "/board"),
        (None, "/board"),
        ("", "/board"),
    ],
)
def test_login_redirect_stays_on_site(target: str | None, expected: str) -> None:
    assert safe_next(target) == expected


def _prepare(world: World) -> None:
    """T1 fine (its gateway on battery, low); T2 冷藏 in an alarm nobody acknowledged, T2 冷冻 silent
    for two hours; T3 冷藏 acknowledged, T3 冷冻 without a probe."""
    now = datetime.now(UTC)
    c = world.compartments
    with db.connect(world.url) as conn:
        for key, t, age in (
            ("T1/冷藏", 4.4, 3),
            ("T1/冷冻", -21.0, 3),
            ("T2/冷藏", 9.7, 2),
            ("T2/冷冻", -20.0, 120),
            ("T3/冷藏", 8.6, 4),
        ):
            probe = conn.execute("SELECT probe_id FROM probe_bindings WHERE compartment_id = %s", (c[key],)).fetchone()
            assert probe
            add_readings(conn, probe[0], [(now - timedelta(minutes=age), t)])
        add_status(conn, world.gateways["10001"], now - timedelta(minutes=1), online=True, power="battery", battery=3.3)
        for key, state in (("T2/冷藏", "active"), ("T3/冷藏", "acknowledged")):
            site = key.split("/")[0]
            conn.execute(
                """INSERT INTO alarms (kind, severity, unit_id, equipment_id, compartment_id, state, condition_since)
                   VALUES ('high', 'critical', %s, %s, %s, %s, now() - interval '20 minutes')""",
                (world.units[site], world.equipment[site], c[key], state),
            )
        conn.execute(
            "UPDATE probe_bindings SET valid = tstzrange(lower(valid), now()) WHERE compartment_id = %s",
            (c["T3/冷冻"],),
        )
        conn.commit()


def _states(body: dict[str, Any]) -> dict[tuple[str, str], str]:
    return {(t["unit_name"][:2], t["compartment_name"]): t["state"] for t in body["tiles"]}


def test_board_states_scope_and_filters(world: World) -> None:
    _prepare(world)
    with api_client(world.url) as client:
        web_session(client, "ba_P")
        r = client.get("/api/v1/board")
        assert r.status_code == 200, r.text
        body = r.json()
        assert _states(body) == {
            ("电子", "冷藏"): "normal",
            ("电子", "冷冻"): "normal",
            ("向阳", "冷藏"): "alarm",
            ("向阳", "冷冻"): "offline",
            ("龙门", "冷藏"): "acknowledged",
            ("龙门", "冷冻"): "unbound",
        }
        assert body["summary"] == {"alarm": 1, "offline": 1, "acknowledged": 1, "unbound": 1, "normal": 2}
        assert [t["state"] for t in body["tiles"]][:3] == ["alarm", "offline", "acknowledged"]
        alarm = body["tiles"][0]
        assert alarm["t"] == pytest.approx(9.7) and alarm["t_min"] == 2.0 and alarm["t_max"] == 8.0
        assert alarm["alarms"] == ["温度超上限"] and alarm["minutes_since"] in (2, 3)
        assert (alarm["city_name"], alarm["county_name"]) == ("渭南市疾病预防控制中心", "临渭区疾病预防控制中心")
        t1 = next(t for t in body["tiles"] if t["unit_id"] == world.units["T1"])
        assert (t1["power"], t1["battery"], t1["battery_low"]) == ("battery", pytest.approx(3.3), True)
        # 韩城 reports straight to the province: no city above it.
        t3 = next(t for t in body["tiles"] if t["unit_id"] == world.units["T3"])
        assert t3["city_name"] is None and t3["county_name"] == "韩城市疾病预防控制中心"

        only_k2 = client.get("/api/v1/board", params={"unit_id": world.units["K2"]}).json()
        assert {t["unit_id"] for t in only_k2["tiles"]} == {world.units["T2"]}

    with api_client(world.url) as client:
        web_session(client, "ba_K1")
        mine = client.get("/api/v1/board").json()
        assert {t["unit_id"] for t in mine["tiles"]} == {world.units["T1"]}
        r = client.get("/api/v1/board", params={"unit_id": world.units["K2"]})
        assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"


@pytest.mark.parametrize(
    ("seconds", "expected"),
    [
        (None, "无读数"),
        (-3, "刚刚"),
        (0, "刚刚"),
        (59.9, "刚刚"),
        (60, "1 分钟前"),
        (3599, "59 分钟前"),
        (3600, "1 小时前"),
        (86399, "23 小时前"),
        (86400 * 3, "3 天前"),
    ],
)
def test_reading_age_says_just_now_under_a_minute(seconds: float | None, expected: str) -> None:
    assert reading_age(seconds) == expected


def test_reading_flag_uses_the_alarm_rules_in_range_test() -> None:
    assert [reading_flag(t, 2.0, 8.0) for t in (None, 1.9, 2.0, 8.0, 8.1)] == [None, "low", "ok", "ok", "high"]
    assert [reading_flag(t, None, -15.0) for t in (-30.0, -14.9)] == ["ok", "high"]  # a freezer has no floor


def test_primary_alarm_is_the_unacknowledged_then_most_severe_then_oldest() -> None:
    def alarm(id: int, state: str, severity: str, minutes: int) -> OpenAlarm:
        return OpenAlarm(id, "high", state, severity, NOW - timedelta(minutes=minutes), None)

    assert primary_alarm([]) is None
    acked_critical, active_minor = alarm(1, "acknowledged", "critical", 90), alarm(2, "active", "minor", 5)
    assert primary_alarm([acked_critical, active_minor]) == active_minor
    major_old, critical_new = alarm(3, "active", "major", 90), alarm(4, "active", "critical", 5)
    assert primary_alarm([major_old, critical_new]) == critical_new
    assert primary_alarm([alarm(5, "active", "major", 5), major_old]) == major_old


def test_alarm_tile_carries_its_alarm_since_and_peak(world: World) -> None:
    """A red tile names the alarm to open (the unacknowledged one), since when (Beijing time), for
    how long, and the worst value announced; a reading seconds old is "刚刚"."""
    now = datetime.now(UTC)
    c = world.compartments
    with db.connect(world.url) as conn:
        add_readings(conn, world.probes["208601"], [(now - timedelta(seconds=10), 9.1)])
        add_readings(conn, world.probes["108601"], [(now - timedelta(minutes=4), 4.4)])
        ids = {}
        for kind, state, since, value in (
            ("high", "acknowledged", "95 minutes", 10.2),
            ("cumulative", "active", "20 minutes", 9.6),
        ):
            row = conn.execute(
                """INSERT INTO alarms (kind, severity, unit_id, equipment_id, compartment_id, state, condition_since,
                                       value, acknowledged_at)
                   VALUES (%s, 'major', %s, %s, %s, %s, now() - %s::interval, %s,
                           CASE WHEN %s = 'acknowledged' THEN now() END)
                   RETURNING id, condition_since""",
                (kind, world.units["T2"], world.equipment["T2"], c["T2/冷藏"], state, since, value, state),
            ).fetchone()
            assert row
            ids[kind] = row
        conn.commit()
    with api_client(world.url) as client:
        web_session(client, "ba_P")
        body = client.get("/api/v1/board").json()
    tile = next(t for t in body["tiles"] if t["compartment_id"] == c["T2/冷藏"])
    assert tile["state"] == "alarm" and tile["alarm_id"] == ids["cumulative"][0] and tile["alarm_state"] == "active"
    assert tile["alarm_name"] == "累计超温" and tile["alarm_peak"] == pytest.approx(9.6)
    since = ids["cumulative"][1]
    assert datetime.fromisoformat(tile["alarm_since"]) == since
    assert tile["alarm_since_text"] == since.astimezone(BEIJING).strftime("%m-%d %H:%M")
    assert tile["alarm_lasted"] == "20 分钟"
    assert (tile["reading_age"], tile["minutes_since"], tile["t_flag"]) == ("刚刚", 0, "high")
    fine = next(t for t in body["tiles"] if t["compartment_id"] == c["T1/冷藏"])
    assert (fine["reading_age"], fine["t_flag"], fine["alarm_id"], fine["alarm_since"]) == (
        "4 分钟前",
        "ok",
        None,
        None,
    )


def test_board_page_needs_sign_in_and_embeds_the_tiles(world: World) -> None:
    _prepare(world)
    with api_client(world.url) as client:
        r = client.get("/board?every=5", follow_redirects=False)
        assert r.status_code == 303 and r.headers["location"] == "/login?next=%2Fboard%3Fevery%3D5"
        assert "登录" in client.get("/login").text
        web_session(client, "ba_K1")
        page = client.get("/board", params={"every": 5})
        assert page.status_code == 200
        assert 'id="board-data"' in page.text and "const EVERY = 5000" in page.text
        assert "/static/plotly.min.js" not in page.text  # the board needs no charts
        outside = client.get("/board", params={"unit_id": world.units["K2"]})
        assert outside.status_code == 404 and "不在您的辖区内" in outside.text
        assert client.get("/board", params={"every": 1}).status_code == 422


def test_plotly_bundle_is_served_locally_and_compressed(world: World) -> None:
    with api_client(world.url) as client:
        r = client.get("/static/plotly.min.js", headers={"Accept-Encoding": "gzip"})
        assert r.status_code == 200 and r.headers["content-encoding"] == "gzip"
        assert b"plotly" in r.content[:2000].lower()  # httpx already decoded it
        etag = r.headers["etag"]
        assert client.get("/static/plotly.min.js", headers={"If-None-Match": etag}).status_code == 304
        plain = client.get("/static/plotly.min.js", headers={"Accept-Encoding": "identity"})
        assert "content-encoding" not in plain.headers and len(plain.content) == len(r.content)
