"""The demo's stand-in robot (issue #17): with no WeCom group configured, ``coldchain run`` sends the
demo's alarms to a loopback look-alike that shows them, so a newcomer sees the loop."""

from __future__ import annotations

import json
import urllib.request
from collections.abc import Iterator

import pytest
from alarmhelp import add_readings, alarm_world, set_params, utcnow
from dbhelp import as_runtime

from alarms.delivery import deliver
from alarms.engine import evaluate_compartments
from coldchain.core import db
from coldchain.core.settings import load_settings
from coldchain.demo_robot import StandInRobot, demo_fault, demo_robot_env, first_gateway
from ingest.simulate import parse_fault


@pytest.fixture
def robot() -> Iterator[StandInRobot]:
    stand_in = StandInRobot().start()
    try:
        yield stand_in
    finally:
        stand_in.stop()


def _post(url: str, body: object) -> dict[str, object]:
    request = urllib.request.Request(url, json.dumps(body).encode(), {"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=5) as answer:
        result: dict[str, object] = json.loads(answer.read())
        return result


def _page(robot: StandInRobot) -> str:
    with urllib.request.urlopen(robot.url, timeout=5) as answer:
        return str(answer.read().decode())


def test_the_stand_in_answers_like_wecom_and_shows_what_it_got(robot: StandInRobot) -> None:
    assert "还没有消息" in _page(robot)
    assert _post(robot.webhook, {"msgtype": "markdown", "markdown": {"content": "## 报警 <b>x</b>"}})["errcode"] == 0
    _post(robot.webhook, {"msgtype": "text", "text": {"content": "请处理", "mentioned_mobile_list": ["139"]}})
    page = _page(robot)
    assert "演示用企业微信群机器人（替身）" in page
    assert page.index("请处理") < page.index("## 报警")  # newest first
    assert "&lt;b&gt;x&lt;/b&gt;" in page and "<b>x</b>" not in page  # shown as text, never as HTML
    assert "@139" in page


def test_the_demo_fault_starts_half_a_minute_after_the_back_fill() -> None:
    fault = parse_fault(demo_fault("10001", 24 * 60))
    assert (fault.kind, fault.target) == ("power_cut", "10001")
    assert fault.start.total_seconds() == 24 * 3600 + 30 and fault.duration.total_seconds() == 120


def test_an_alarm_reaches_the_stand_in_through_the_outbox(db_url: str, robot: StandInRobot) -> None:
    world = alarm_world(db_url)
    settings = load_settings(demo_robot_env(robot))
    with db.connect(db_url) as conn:
        assert first_gateway(db_url)
        set_params(conn, world.compartments["T1/冷藏"], delay=0)
        add_readings(conn, world.probes["108601"], [(utcnow(), 9.4)])
    with db.connect(as_runtime(db_url)) as runtime:
        assert evaluate_compartments(runtime, settings).opened == 1
        assert deliver(runtime, settings).messages == 1
    page = _page(robot)
    assert "温度超上限" in page and "9.4 ℃" in page and "尚无人确认" in page
