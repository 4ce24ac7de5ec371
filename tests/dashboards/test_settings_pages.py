"""The settings pages (issue #17): ``/settings`` (a unit's escalation timing, responsible people and
notification routes, with a test button per route) and ``/settings/compartments/{id}`` (limits and
rule parameters) — rendered for writers and readers, kept to the jurisdiction, never showing a
robot's key; and, in a phone-sized Chromium, a parameter saved, a stale save refused, and a test
message sent to a real HTTP stand-in of a WeCom robot."""

from __future__ import annotations

import re
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from typing import Any

import pytest
import uvicorn
from alarmhelp import running_wecom
from apihelp import World, api_client, bearer, web_session
from browserhelp import browser_page, require_browser, sign_in
from dbhelp import as_runtime
from fakewecom import FakeWecom
from fastapi.testclient import TestClient

from coldchain.app import create_app
from coldchain.core import db
from coldchain.core.settings import load_settings
from dashboards.settings import compact_duration, duration_words, param_rows, value_words

API = "/api/v1"
KEY = "page-robot-key-77aa41"
LOOPBACK = {"COLDCHAIN_OUTBOUND_ALLOW_INSECURE_LOOPBACK": "true"}

pytestmark = pytest.mark.timeout(180)


@pytest.fixture
def client(world: World) -> Iterator[TestClient]:
    with api_client(world.url, LOOPBACK) as c:
        yield c


def configure_t1(client: TestClient, world: World, robot: str) -> None:
    """T1 as an administrator leaves it: a robot for level 1, a webhook for level 2, its one
    account on every level, its own reminder interval."""
    t1 = world.units["T1"]
    h = bearer(client, "ba_K1")
    routes = [
        {"level": 1, "channel": "wecom", "url": robot},
        {"level": 2, "channel": "webhook", "url": "http://127.0.0.1:9/hook", "secret": "s" * 20},
    ]
    assert client.put(f"{API}/units/{t1}/notification-routes", json=routes, headers=h).status_code == 200
    me = world.users["ba_T1"]
    people = {"level1": [me], "level2": [me], "level3": [me]}
    assert client.put(f"{API}/units/{t1}/responsibles", json=people, headers=h).status_code == 200
    r = client.put(f"{API}/units/{t1}/escalation", json={"version": 0, "reminder": "20m"}, headers=h)
    assert r.status_code == 200, r.text


def page(client: TestClient, who: str, path: str) -> Any:
    client.cookies.clear()
    web_session(client, who)
    return client.get(path)


def section(html: str, start: str, end: str) -> str:
    return html[html.index(start) : html.index(end)]


def test_the_unit_page_shows_everything_and_gives_a_writer_the_buttons(client: TestClient, world: World) -> None:
    configure_t1(client, world, f"http://127.0.0.1:9/cgi-bin/webhook/send?key={KEY}")
    r = page(client, "ba_K1", f"/settings?unit_id={world.units['T1']}")
    assert r.status_code == 200, r.text
    html = r.text
    assert KEY not in html  # the robot's key is its secret
    assert html.count("/cgi-bin/webhook/send?key=***") == 2  # shown once, and once in the editor
    assert "s" * 20 not in html

    escalation = section(html, 'id="escalation"', 'id="responsibles"')
    assert 'name="reminder" value="20m"' in escalation  # the unit's own
    assert "当前生效：<span" in escalation and ">20 分钟</span>" in escalation
    assert "留空用系统默认：30 分钟、1 小时" in escalation  # steps: the system's, and said so
    assert 'name="steps" value="" placeholder="30m,1h"' in escalation
    assert "保存升级时限" in escalation

    people = section(html, 'id="responsibles"', 'id="responsibles-edit"')
    assert people.count("测试ba_T1") == 3 and "13800000000" in people and "未绑定" in people

    routes = section(html, 'id="routes"', 'id="routes-edit"')
    assert routes.count('class="test-route"') == 2 and "发送测试消息" in routes
    assert "签名 webhook · 密钥已设置" in routes
    assert "保存通知去处" in html and "保存负责人" in html

    compartments = section(html, 'id="compartments"', "</ul>")
    for zone in ("T1/冷藏", "T1/冷冻"):
        assert f'href="/settings/compartments/{world.compartments[zone]}"' in compartments

    # The county's own page offers its units below; a township's own page has no picker.
    own = page(client, "ba_K1", "/settings").text
    assert 'id="unit-picker"' in own and f'<option value="{world.units["T1"]}">' in own
    assert 'id="unit-picker"' not in page(client, "ba_T1", "/settings").text


@pytest.mark.parametrize("reader", ["sup_P", "ana_K1"])
def test_readers_see_the_values_but_no_button(client: TestClient, world: World, reader: str) -> None:
    configure_t1(client, world, f"http://127.0.0.1:9/cgi-bin/webhook/send?key={KEY}")
    r = page(client, reader, f"/settings?unit_id={world.units['T1']}")
    assert r.status_code == 200, r.text
    html = r.text
    assert "测试ba_T1" in html and "/cgi-bin/webhook/send?key=***" in html and 'value="20m"' in html
    assert KEY not in html
    shown = section(html, "<main>", "</main>")
    assert "<button" not in shown and "发送测试消息" not in shown and "保存" not in shown
    assert 'id="read-only-note"' in html

    comp = page(client, reader, f"/settings/compartments/{world.compartments['T1/冷藏']}")
    assert comp.status_code == 200, comp.text
    shown = section(comp.text, "<main>", "</main>")
    assert "超限报警延时" in shown and "<button" not in shown and "保存" not in shown
    assert 'name="delay" value="" placeholder="默认 10 分钟"' in comp.text and "readonly" in comp.text


def test_pages_keep_to_the_jurisdiction(client: TestClient, world: World) -> None:
    assert page(client, "ba_K2", f"/settings?unit_id={world.units['T1']}").status_code == 404
    r = page(client, "ba_K2", f"/settings/compartments/{world.compartments['T1/冷藏']}")
    assert r.status_code == 404 and "温区不存在或不在您的辖区内" in r.text
    assert page(client, "ba_T1", f"/settings?unit_id={world.units['K1']}").status_code == 404  # above is outside
    client.cookies.clear()
    anonymous = client.get("/settings", follow_redirects=False)
    assert anonymous.status_code == 303 and anonymous.headers["location"] == "/login?next=%2Fsettings"


def test_the_compartment_page_shows_defaults_overrides_and_values_in_effect(client: TestClient, world: World) -> None:
    cold = world.compartments["T1/冷藏"]
    r = client.put(
        f"{API}/compartments/{cold}/alarm-params",
        json={"version": 0, "overrides": {"delay": "15m", "hysteresis": 0.3}},
        headers=bearer(client, "ba_K1"),
    )
    assert r.status_code == 200, r.text
    html = page(client, "ba_T1", f"/settings/compartments/{cold}").text
    assert 'id="params" data-version="1"' in html
    delay = section(html, 'data-key="delay"', 'data-key="freeze_threshold"')
    assert '默认：<span class="default">10 分钟</span>' in delay
    assert '<span class="current overridden">15 分钟</span>（已覆盖）' in delay and 'value="15m"' in delay
    hold = section(html, 'data-key="hold"', 'data-key="no_data_after"')
    assert '<span class="current ">5 分钟</span>' in hold and 'value=""' in hold and "已覆盖" not in hold
    assert 'data-key="hysteresis"' in html and 'value="0.3"' in html
    assert 'data-key="wrong_place_t"' in html and "≤ −10 ℃" in html
    assert 'data-key="t_max"' not in html  # limits are edited above, as the compartment's
    limits = section(html, 'id="limits"', 'id="params"')
    assert 'name="t_min"' in limits and 'value="2.0"' in limits and "保存限值" in limits


def test_every_parameter_the_api_reports_gets_a_row() -> None:
    """Whatever the rules grow (gateway overrides per compartment, issue #17), the page shows every
    key of ``effective`` — flat or nested — with its default and the saved override."""
    effective: dict[str, Any] = {"mode": "frozen", "t_min": None, "t_max": -15.0, "delay": "0:10:00"}
    effective |= {"wrong_place_t": None, "gateway": {"offline_after": "0:05:00"}}
    defaults = {**effective, "gateway": {"offline_after": "0:15:00"}}
    rows = param_rows("frozen", {"gateway.offline_after": "5m"}, effective, defaults)
    assert [(r["key"], r["default"], r["override"], r["current"], r["overridden"]) for r in rows] == [
        ("delay", "10 分钟", "", "10 分钟", False),
        ("wrong_place_t", "≥ +2 ℃", "", "≥ +2 ℃", False),
        ("gateway.offline_after", "15 分钟", "5m", "5 分钟", True),
    ]
    assert rows[2]["name"] == "网关离线时限"
    assert duration_words(timedelta(hours=1, seconds=30)) == "1 小时 30 秒"
    assert value_words("1 day, 0:00:00") == value_words("24:00:00") == "1 天"
    assert (compact_duration(timedelta(minutes=90)), compact_duration(timedelta(hours=24))) == ("90m", "1d")


# ---------------------------------------------------------------------------------------------
# In a phone-sized browser


@contextmanager
def live_app(url: str, env: dict[str, str]) -> Iterator[str]:
    """The whole app on a free local port with these settings (the fake robot is on 127.0.0.1)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    app = create_app(load_settings(env), as_runtime(url), pool_size=4)
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)


@pytest.fixture
def wecom() -> Iterator[FakeWecom]:
    with running_wecom() as fake:
        yield fake


def stored_params(world: World, compartment: int) -> tuple[Any, ...] | None:
    with db.connect(world.url) as conn:
        return conn.execute(
            "SELECT params, version FROM alarm_rule_params WHERE compartment_id = %s", (compartment,)
        ).fetchone()


def test_on_a_phone_a_parameter_is_saved_a_stale_save_refused_and_a_route_tested(
    client: TestClient, world: World, wecom: FakeWecom
) -> None:
    require_browser()
    cold = world.compartments["T1/冷藏"]
    configure_t1(client, world, wecom.url(KEY))
    with live_app(world.url, LOOPBACK) as base, browser_page(base) as (tab, console):
        sign_in(tab, "ba_T1", "/settings")
        tab.wait_for_selector("body[data-ready='1']")
        assert tab.viewport_size == {"width": 390, "height": 844}
        # Nothing runs off the side of a phone's screen.
        assert tab.evaluate("document.documentElement.scrollWidth") <= 390

        robot = tab.locator("#routes .route").filter(has_text="企业微信群机器人")
        robot.get_by_role("button", name="发送测试消息").click()
        result = robot.locator(".test-result")
        result.filter(has_text="已发送").wait_for(timeout=15000)
        assert result.inner_text() == "已发送（HTTP 200），请到群里或接收方查看"
        (message,) = wecom.messages()
        assert message.key == KEY and "【冷链报警·测试】" in message.content and "发送人：测试ba_T1" in message.content

        tab.click(f"a[href='/settings/compartments/{cold}']")
        tab.wait_for_url(f"**/settings/compartments/{cold}")
        tab.wait_for_selector("body[data-ready='1']")
        assert tab.evaluate("document.documentElement.scrollWidth") <= 390
        tab.fill("input[name=delay]", "15m")
        tab.click("#params button[type=submit]")
        tab.locator("#params .msg").filter(has_text="已保存").wait_for(timeout=15000)
        assert tab.input_value("input[name=delay]") == "15m"
        assert tab.inner_text("[data-key=delay] .current") == "15 分钟"
        assert stored_params(world, cold) == ({"delay": "15m"}, 1)

        # Someone else saves meanwhile; this page still holds version 1.
        r = client.put(
            f"{API}/compartments/{cold}/alarm-params",
            json={"version": 1, "overrides": {"delay": "20m"}},
            headers=bearer(client, "sa_K1"),
        )
        assert r.status_code == 200, r.text
        tab.fill("input[name=hysteresis]", "0.3")
        tab.click("#params button[type=submit]")
        tab.locator("#params .msg").filter(has_text="已被他人修改，请刷新").wait_for(timeout=15000)
        assert stored_params(world, cold) == ({"delay": "20m"}, 2)  # nothing overwritten

    # The one expected complaint: the browser logs the 409 the stale save was answered with.
    unexpected = [p for p in console.problems if not re.search(r"status of 409 .*alarm-params", p)]
    assert unexpected == [], console.problems
    assert len(console.problems) == 1, console.problems
