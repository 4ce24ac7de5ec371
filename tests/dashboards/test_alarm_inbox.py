"""The alarm inbox (``/alarms``), the open-alarm badge in the navigation, the alarm page's
notification failures, and the device page's alarm links — against a real database and the real
app (issue #17). The browser half (board tile → alarm → acknowledge → badge) is in test_browser.py.

One set of alarms, seen from K1 (雁塔区, above T1):

    id   unit  where       kind              severity  state         raised
    a2   T1    冷冻         high              critical  active        60 min ago
    a3   T1    冷藏         low               major     active        10 min ago
    a1   T1    冷藏         high              major     active        30 min ago
    a8   K1    gateway     gateway_signal    minor     active        15 min ago
    a4   T1    gateway     gateway_power     major     acknowledged   5 min ago
    a5   T1    冷藏         cumulative        critical  resolved       2 min ago
    a6   T1    冷冻         no_data           minor     closed         3 h ago
    a7   T2    冷藏         high              critical  active         1 min ago   (outside K1)

The table lists them in the inbox's order: open before acknowledged before resolved, then the most
severe, then the newest.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from apihelp import World, api_client, web_session
from dbhelp import as_runtime
from fakewecom import FakeWecom
from fastapi.testclient import TestClient
from psycopg.types.json import Jsonb

from alarms.delivery import deliver
from alarms.engine import escalate
from coldchain.core import db
from coldchain.core.settings import load_settings
from dashboards.alarms import event_note, failure_reason, inbox_row, step_label

CLOSURE = {"cause": "停电", "action": "启用备用电源", "vaccine_disposition": "未受影响继续使用"}


Alarms = dict[str, int]


def _insert(
    conn: Any,
    world: World,
    *,
    unit: str,
    kind: str,
    severity: str,
    state: str,
    raised: timedelta,
    zone: str | None = None,
    value: float | None = None,
) -> int:
    """An alarm as the engine leaves it in ``state`` (the timestamps its checks ask for)."""
    site = "T1" if unit == "K1" else unit
    compartment = world.compartments[f"{site}/{zone}"] if zone else None
    gateway = None if zone else world.gateways[f"{site[1]}0001"]
    acknowledged = state in ("acknowledged", "closed")
    row = conn.execute(
        """INSERT INTO alarms (kind, severity, unit_id, equipment_id, compartment_id, gateway_id, state,
                               condition_since, raised_at, value, t_min, t_max, acknowledged_at, acknowledged_by,
                               ack_channel, resolved_at, closed_at, closed_by, closure)
           VALUES (%(kind)s, %(severity)s, %(unit)s, %(equipment)s, %(compartment)s, %(gateway)s, %(state)s,
                   now() - %(raised)s - interval '5 minutes', now() - %(raised)s, %(value)s,
                   %(t_min)s, %(t_max)s,
                   CASE WHEN %(acknowledged)s THEN now() - %(raised)s / 2 END,
                   CASE WHEN %(acknowledged)s THEN %(user)s::bigint END,
                   CASE WHEN %(acknowledged)s THEN 'web' END,
                   CASE WHEN %(state)s IN ('resolved', 'closed') THEN now() - %(raised)s / 4 END,
                   CASE WHEN %(state)s = 'closed' THEN now() - %(raised)s / 8 END,
                   CASE WHEN %(state)s = 'closed' THEN %(user)s::bigint END,
                   CASE WHEN %(state)s = 'closed' THEN %(closure)s END)
           RETURNING id""",
        {
            "kind": kind,
            "severity": severity,
            "unit": world.units[unit],
            "equipment": world.equipment[site] if zone else None,
            "compartment": compartment,
            "gateway": gateway,
            "state": state,
            "raised": raised,
            "value": value,
            "t_min": 2.0 if zone == "冷藏" else None,
            "t_max": {"冷藏": 8.0, "冷冻": -15.0}.get(zone or ""),
            "acknowledged": acknowledged,
            "user": world.users["ba_T1"],
            "closure": Jsonb(CLOSURE),
        },
    ).fetchone()
    assert row is not None
    return int(row[0])


# key: unit, zone (None: the site's gateway), kind, severity, state, raised minutes ago, peak
_SEED: dict[str, tuple[str, str | None, str, str, str, int, float | None]] = {
    "a1": ("T1", "冷藏", "high", "major", "active", 30, 9.4),
    "a2": ("T1", "冷冻", "high", "critical", "active", 60, None),
    "a3": ("T1", "冷藏", "low", "major", "active", 10, None),
    "a4": ("T1", None, "gateway_power", "major", "acknowledged", 5, None),
    "a5": ("T1", "冷藏", "cumulative", "critical", "resolved", 2, None),
    "a6": ("T1", "冷冻", "no_data", "minor", "closed", 180, None),
    "a7": ("T2", "冷藏", "high", "critical", "active", 1, None),
    "a8": ("K1", None, "gateway_signal", "minor", "active", 15, None),
}


def _seed(world: World) -> Alarms:
    with db.connect(world.url) as conn:
        ids = {
            key: _insert(
                conn,
                world,
                unit=unit,
                zone=zone,
                kind=kind,
                severity=severity,
                state=state,
                raised=timedelta(minutes=minutes),
                value=value,
            )
            for key, (unit, zone, kind, severity, state, minutes, value) in _SEED.items()
        }
        conn.commit()
    return ids


@pytest.fixture
def seeded(world: World) -> tuple[World, Alarms]:
    return world, _seed(world)


@pytest.fixture
def client(world: World) -> Iterator[TestClient]:
    with api_client(world.url) as c:
        yield c


def _listed(html: str) -> list[int]:
    """The alarm ids of the inbox's rows, in the order shown."""
    return [int(i) for i in re.findall(r'<li class="alarm [^"]*" data-id="(\d+)"', html)]


def _badge(html: str) -> int:
    found = re.search(r'id="alarm-badge" data-count="(\d+)"', html)
    return int(found.group(1)) if found else 0


def _tabs(html: str) -> dict[str, int]:
    return {k: int(n) for k, n in re.findall(r'data-tab="(\w+)">[^<]*<span class="n">(\d+)</span>', html)}


# ---------------------------------------------------------------------------------------------
# The inbox


def test_inbox_without_a_session_goes_to_the_login_page(client: TestClient) -> None:
    r = client.get("/alarms?tab=closed", follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"] == "/login?next=%2Falarms%3Ftab%3Dclosed"


def test_inbox_lists_the_jurisdiction_most_urgent_first(seeded: tuple[World, Alarms], client: TestClient) -> None:
    _, a = seeded
    web_session(client, "ba_K1")
    page = client.get("/alarms")
    assert page.status_code == 200, page.text
    # a7 is T2's, outside K1; a6 is closed: history, not the open tab.
    assert _listed(page.text) == [a["a2"], a["a3"], a["a1"], a["a8"], a["a4"], a["a5"]]
    assert _tabs(page.text) == {"open": 6, "active": 4, "acknowledged": 1, "resolved": 1, "closed": 1}
    assert _listed(client.get("/alarms", params={"tab": "closed"}).text) == [a["a6"]]
    assert _listed(client.get("/alarms", params={"tab": "acknowledged"}).text) == [a["a4"]]
    assert _listed(client.get("/alarms", params={"tab": "resolved"}).text) == [a["a5"]]

    # Each row says what, how bad, where, since when and how long, the peak, who acknowledged.
    html = page.text
    row1 = html[html.index(f'data-id="{a["a1"]}"') : html.index(f'data-id="{a["a8"]}"')]
    assert "温度超上限" in row1 and "重要" in row1 and "电子城街道社区卫生服务中心" in row1
    assert "海尔双温冰箱 / 冷藏" in row1 and "已持续 35 分钟" in row1 and '峰值 <span class="t flag">9.4 ℃' in row1
    assert f'href="/alarms/{a["a1"]}"' in row1
    row4 = html[html.index(f'data-id="{a["a4"]}"') : html.index(f'data-id="{a["a5"]}"')]
    assert "网关 10001" in row4 and "确认：测试ba_T1" in row4 and "（网页）" in row4
    row5 = html[html.index(f'data-id="{a["a5"]}"') :]
    assert "已恢复（待关闭）" in row5 and "持续 6 分钟" in row5  # from condition start to its end, not to now

    web_session(client, "ba_T1")
    assert _listed(client.get("/alarms").text) == [a["a2"], a["a3"], a["a1"], a["a4"], a["a5"]]  # not K1's a8
    web_session(client, "ba_P")
    assert _listed(client.get("/alarms").text)[:2] == [a["a7"], a["a2"]]  # both critical, a7 newer


def test_inbox_filters_by_kind_level_and_unit(seeded: tuple[World, Alarms], client: TestClient) -> None:
    world, a = seeded
    web_session(client, "ba_K1")
    assert _listed(client.get("/alarms", params={"kind": "high"}).text) == [a["a2"], a["a1"]]
    assert _listed(client.get("/alarms", params={"level": "county"}).text) == [a["a8"]]
    township = client.get("/alarms", params={"level": "township", "tab": "active"})
    assert _listed(township.text) == [a["a2"], a["a3"], a["a1"]]
    assert _tabs(township.text)["closed"] == 1  # the counts follow the filters, not the tab
    assert a["a8"] not in _listed(client.get("/alarms", params={"unit_id": world.units["T1"]}).text)
    # "全部" sends empty values: no filter rather than an error.
    assert len(_listed(client.get("/alarms?unit_id=&level=&kind=").text)) == 6

    outside = client.get("/alarms", params={"unit_id": world.units["K2"]})
    assert outside.status_code == 404 and "不在您的辖区内" in outside.text
    assert client.get("/alarms", params={"kind": "nonsense"}).status_code == 422

    web_session(client, "ba_P")
    assert _listed(client.get("/alarms", params={"unit_id": world.units["K2"]}).text) == [a["a7"]]


def test_the_alarm_list_api_orders_by_severity_and_filters_by_level_on_request(
    seeded: tuple[World, Alarms], client: TestClient
) -> None:
    """The default stays newest first, as API clients had it; the inbox's order is asked for."""
    _, a = seeded
    web_session(client, "ba_K1")
    newest = [r["id"] for r in client.get("/api/v1/alarms").json()]
    assert newest == [a["a5"], a["a4"], a["a3"], a["a8"], a["a1"], a["a2"], a["a6"]]
    body = client.get("/api/v1/alarms", params={"order": "severity"}).json()
    assert [r["id"] for r in body] == [a["a2"], a["a3"], a["a1"], a["a8"], a["a4"], a["a5"], a["a6"]]
    ack = next(r for r in body if r["id"] == a["a4"])
    assert ack["acknowledged_by_name"] == "测试ba_T1" and ack["unit_level"] == "township"
    assert [r["id"] for r in client.get("/api/v1/alarms", params={"level": "county"}).json()] == [a["a8"]]
    assert client.get("/api/v1/alarms", params={"order": "random"}).status_code == 422


def test_writers_get_the_buttons_read_only_roles_do_not(seeded: tuple[World, Alarms], client: TestClient) -> None:
    _, a = seeded
    web_session(client, "ba_K1")
    html = client.get("/alarms").text
    acks = [int(i) for i in re.findall(r'<button type="button" class="ack" data-id="(\d+)"', html)]
    assert acks == [a["a2"], a["a3"], a["a1"], a["a8"]]  # the unacknowledged ones
    assert re.findall(r'<form class="close" data-id="(\d+)" data-version="1"', html) == [str(a["a5"])]

    for reader in ("ana_K1", "sup_P"):
        web_session(client, reader)
        html = client.get("/alarms").text
        assert len(_listed(html)) >= 6
        assert 'class="ack"' not in html and 'class="close"' not in html, reader


def test_inbox_pages_through_the_history(world: World, client: TestClient) -> None:
    with db.connect(world.url) as conn:
        conn.execute(
            """INSERT INTO alarms (kind, severity, unit_id, equipment_id, compartment_id, state, condition_since,
                                   raised_at, resolved_at, closed_at, closure)
               SELECT 'high', 'major', %s, %s, %s, 'closed', now() - n * interval '1 hour',
                      now() - n * interval '1 hour', now() - n * interval '1 hour' + interval '10 minutes',
                      now() - n * interval '1 hour' + interval '20 minutes', %s
               FROM generate_series(1, 33) n""",
            (world.units["T1"], world.equipment["T1"], world.compartments["T1/冷藏"], Jsonb(CLOSURE)),
        )
        conn.commit()
    web_session(client, "ba_T1")
    first = client.get("/alarms", params={"tab": "closed"}).text
    assert len(_listed(first)) == 30 and "第 1 / 2 页" in first
    assert 'href="/alarms?tab=closed&amp;page=2" id="next"' in first and 'id="previous"' not in first
    second = client.get("/alarms", params={"tab": "closed", "page": 2}).text
    assert len(_listed(second)) == 3 and 'href="/alarms?tab=closed" id="previous"' in second
    assert not set(_listed(first)) & set(_listed(second))
    assert "停电" in second  # the closure is part of the history


# ---------------------------------------------------------------------------------------------
# The badge


def test_every_page_counts_the_open_alarms_of_the_jurisdiction(
    seeded: tuple[World, Alarms], client: TestClient
) -> None:
    world, a = seeded
    csrf = web_session(client, "ba_K1")
    for path in ("/board", "/alarms", f"/alarms/{a['a1']}", f"/devices/{world.equipment['T1']}", "/stock"):
        html = client.get(path).text
        assert _badge(html) == 4, path  # a1 a2 a3 a8; not a7 (T2), not the acknowledged a4
        assert 'href="/settings"' in html and ">设置<" in html
    r = client.post(f"/api/v1/alarms/{a['a1']}/acknowledge", json={"on_site": True}, headers=csrf)
    assert r.status_code == 200, r.text
    assert _badge(client.get("/board").text) == 3

    web_session(client, "ba_P")
    assert _badge(client.get("/board").text) == 4  # a2 a3 a8 and T2's a7
    web_session(client, "ba_K2")
    assert _badge(client.get("/board").text) == 1
    with db.connect(world.url) as conn:
        conn.execute("UPDATE alarms SET state = 'acknowledged', acknowledged_at = now() WHERE id = %s", (a["a7"],))
        conn.commit()
    assert 'id="alarm-badge"' not in client.get("/board").text  # nothing open: no badge at all


def test_acknowledging_from_the_inbox_uses_the_api_rules(seeded: tuple[World, Alarms], client: TestClient) -> None:
    """The buttons post to the API routes, whose rules still hold: a read-only role is refused."""
    _, a = seeded
    csrf = web_session(client, "ana_K1")
    r = client.post(f"/api/v1/alarms/{a['a2']}/acknowledge", json={"on_site": True}, headers=csrf)
    assert r.status_code == 403
    csrf = web_session(client, "ba_K1")
    r = client.post(f"/api/v1/alarms/{a['a5']}/close", json={"version": 1, **CLOSURE}, headers=csrf)
    assert r.status_code == 200, r.text
    assert _listed(client.get("/alarms", params={"tab": "closed"}).text) == [a["a5"], a["a6"]]


# ---------------------------------------------------------------------------------------------
# The alarm page: why a notification failed


def _deliver_once(world: World, env: dict[str, str]) -> None:
    settings = load_settings({"COLDCHAIN_OUTBOUND_ALLOW_INSECURE_LOOPBACK": "true", **env})
    with db.connect(as_runtime(world.url)) as conn:
        escalate(conn, settings)
        conn.commit()
        deliver(conn, settings)
        conn.commit()


def test_alarm_page_says_why_a_notification_failed(world: World, client: TestClient) -> None:
    m = timedelta(minutes=1)
    with db.connect(world.url) as conn:
        down = _insert(conn, world, unit="T1", zone="冷藏", kind="high", severity="major", state="active", raised=m)
        conn.commit()
    robot = FakeWecom()
    robot.mode = "down"
    try:
        _deliver_once(world, {"COLDCHAIN_WECOM_WEBHOOK_URL": robot.url()})
    finally:
        robot.close()
    web_session(client, "ba_T1")
    html = client.get(f"/alarms/{down}").text
    notifications = html[html.index('id="notifications"') :]
    assert "报警通知" in notifications and "HTTP 500" in notifications and "未发（已试 1 次）" in notifications
    events = html[html.index('id="events"') : html.index('id="notifications"')]
    assert "通知失败" in events and "HTTP 500" in events

    # A unit with nowhere to send to: the rows are settled without a send, so they carry no error.
    with db.connect(world.url) as conn:
        nowhere = _insert(conn, world, unit="T1", zone="冷冻", kind="high", severity="major", state="active", raised=m)
        conn.commit()
    _deliver_once(world, {})
    html = client.get(f"/alarms/{nowhere}").text
    notifications = html[html.index('id="notifications"') :]
    assert "未配置通知去处" in notifications and "未发出" in notifications
    assert "robot" not in html and "none:" not in html  # no target is ever shown


def test_step_labels_and_reasons_tolerate_what_they_do_not_know() -> None:
    assert step_label("open") == "报警通知"
    assert step_label("level3") == "升级通知"
    assert step_label("reminder-2") == "持续未恢复提醒"
    assert step_label("some-future-step") == "some-future-step"
    row = {"last_error": None, "unconfigured": False, "sent_at": None, "attempts": 2, "channel": "wecom"}
    assert failure_reason(row, {"wecom": "HTTP 502"}) == "HTTP 502"
    assert failure_reason({**row, "last_error": "企业微信 errcode 93000"}, {}) == "企业微信 errcode 93000"
    assert failure_reason({**row, "attempts": 0, "unconfigured": True}, {}) == "未配置通知去处"
    assert failure_reason({**row, "sent_at": datetime.now(UTC)}, {"wecom": "HTTP 502"}) == ""
    failed = {"details": {"error": "单位未配置通知去处（企业微信群机器人或 webhook）"}}
    assert event_note(failed) == "未配置通知去处"
    assert event_note({"details": {"steps": ["open", "level2"]}}) == "报警通知、升级通知"
    assert event_note({"details": None}) == ""


def test_inbox_row_words_the_duration_and_the_current_value() -> None:
    now = datetime(2026, 5, 2, 2, 30, tzinfo=UTC)
    base = {
        "kind": "high",
        "severity": "critical",
        "state": "active",
        "condition_since": now - timedelta(hours=1, minutes=5),
        "resolved_at": None,
        "equipment_name": "冷库",
        "compartment_name": "货架01",
        "gateway_serial": None,
        "current_t": 8.6,
        "acknowledged_at": None,
        "acknowledged_by_name": None,
        "ack_channel": None,
    }
    row = inbox_row(base, now)
    assert (row["place"], row["since_text"], row["lasted"], row["current"]) == (
        "冷库 / 货架01",
        "05-02 09:25",
        "已持续 1 小时 5 分钟",
        8.6,
    )
    resolved = inbox_row({**base, "state": "resolved", "resolved_at": now - timedelta(minutes=45)}, now)
    assert (resolved["lasted"], resolved["current"]) == ("持续 20 分钟", None)
    gateway = inbox_row({**base, "equipment_name": None, "compartment_name": None, "gateway_serial": "10001"}, now)
    assert gateway["place"] == "网关 10001"
    acked = inbox_row(
        {
            **base,
            "acknowledged_at": now - timedelta(minutes=3),
            "acknowledged_by_name": "张三",
            "ack_channel": "wechat",
        },
        now,
    )
    assert acked["ack_text"] == "张三 05-02 10:27（微信）"
    last_year = inbox_row({**base, "condition_since": datetime(2025, 12, 31, 15, 0, tzinfo=UTC)}, now)
    assert last_year["since_text"] == "2025-12-31 23:00"


# ---------------------------------------------------------------------------------------------
# The device page


def test_device_page_links_its_open_alarms(seeded: tuple[World, Alarms], client: TestClient) -> None:
    world, a = seeded
    web_session(client, "ba_K1")
    html = client.get(f"/devices/{world.equipment['T1']}").text
    block = html[html.index('id="open-alarms"') : html.index('id="ranges"')]
    linked = [int(i) for i in re.findall(r'href="/alarms/(\d+)"', block)]
    assert linked == [a["a2"], a["a3"], a["a1"], a["a5"]]  # the fridge's own, not closed, most urgent first
    assert "峰值 9.4 ℃" in block
