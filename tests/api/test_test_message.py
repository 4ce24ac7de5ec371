"""The test message of a notification route (issue #17): ``POST /units/{id}/notification-routes/test``
sends one message at once to a real HTTP stand-in of a WeCom robot (tests/fakewecom.py), through
the outbound checks, and answers how it went — without ever showing the robot's key.

The fakes listen on ``http://127.0.0.1``, which only ``COLDCHAIN_OUTBOUND_ALLOW_INSECURE_LOOPBACK``
lets through; a route to any other host must pass the allowlist like an alarm would.
"""

from __future__ import annotations

import re
import socket
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from alarmhelp import running_wecom
from apihelp import World, api_client, bearer, error_code
from fakewecom import FakeWecom
from fastapi.testclient import TestClient

from alarms.messages import canonical_json, verify_signature
from alarms.test_message import Route, judge_answer, request_for, webhook_body_for, wecom_markdown_for
from coldchain.core import db
from coldchain.core.terms import BEIJING

API = "/api/v1"
KEY = "t1-robot-key-9f3a2c"
SECRET = "webhook-hmac-secret-0123456789"
LOOPBACK = {"COLDCHAIN_OUTBOUND_ALLOW_INSECURE_LOOPBACK": "true"}


@pytest.fixture
def wecom() -> Iterator[FakeWecom]:
    with running_wecom() as fake:
        yield fake


@pytest.fixture
def client(world: World) -> Iterator[TestClient]:
    with api_client(world.url, LOOPBACK) as c:
        yield c


def save_routes(client: TestClient, world: World, unit: str, routes: list[dict[str, Any]]) -> list[dict[str, Any]]:
    r = client.put(f"{API}/units/{world.units[unit]}/notification-routes", json=routes, headers=bearer(client, "ba_K1"))
    assert r.status_code == 200, r.text
    saved: list[dict[str, Any]] = r.json()
    return saved


def insert_route(world: World, unit: str, url: str, channel: str = "wecom", secret: str | None = None) -> int:
    """A route as an older version might have saved it: the send must check it again anyway."""
    with db.connect(world.url) as conn:
        row = conn.execute(
            "INSERT INTO notification_routes (unit_id, level, channel, url, secret) VALUES (%s, 1, %s, %s, %s) "
            "RETURNING id",
            (world.units[unit], channel, url, secret),
        ).fetchone()
        conn.commit()
    assert row is not None
    return int(row[0])


def send_test(client: TestClient, world: World, unit: str, route_id: int, who: str = "ba_K1") -> Any:
    return client.post(
        f"{API}/units/{world.units[unit]}/notification-routes/test",
        json={"route_id": route_id},
        headers=bearer(client, who),
    )


def audit_of_tests(world: World) -> list[tuple[Any, ...]]:
    with db.connect(world.url) as conn:
        return conn.execute(
            "SELECT actor_id, entity, entity_id, unit_id, after::text FROM audit_log "
            "WHERE action = 'notification_route.test' ORDER BY id"
        ).fetchall()


def test_a_robot_route_gets_exactly_one_test_message(client: TestClient, world: World, wecom: FakeWecom) -> None:
    (route,) = save_routes(client, world, "T1", [{"level": 2, "channel": "wecom", "url": wecom.url(KEY)}])
    before = datetime.now(UTC)
    r = send_test(client, world, "T1", route["id"])
    assert r.status_code == 200, r.text
    assert r.json() == {"ok": True, "status": 200, "error": None}

    (message,) = wecom.messages()
    assert message.key == KEY
    assert message.body["msgtype"] == "markdown"
    content = message.content
    assert content.startswith("## 【冷链报警·测试】电子城街道社区卫生服务中心")
    assert "> 单位：电子城街道社区卫生服务中心（6101130001）" in content
    assert "> 通知级别：二级负责人" in content
    assert "> 发送人：测试ba_K1" in content
    when = re.search(r"> 时间：(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d)$", content)
    assert when is not None, content
    sent = datetime.strptime(when.group(1), "%Y-%m-%d %H:%M:%S").replace(tzinfo=BEIJING)
    assert before - timedelta(seconds=2) <= sent <= datetime.now(UTC) + timedelta(seconds=1)

    # Not an alarm: nothing in the outbox; one audit row naming who tried which route, key masked.
    with db.connect(world.url) as conn:
        row = conn.execute("SELECT count(*) FROM notification_outbox").fetchone()
        assert row == (0,)
    (audit,) = audit_of_tests(world)
    assert audit[:4] == (world.users["ba_K1"], "notification_routes", route["id"], world.units["T1"])
    assert KEY not in audit[4] and "key=***" in audit[4]


def test_a_webhook_route_gets_a_signed_body_marked_test(client: TestClient, world: World, wecom: FakeWecom) -> None:
    hook = wecom.url("hook-1").replace("/cgi-bin/webhook/send", "/coldchain/hook")
    (route,) = save_routes(client, world, "T1", [{"level": 1, "channel": "webhook", "url": hook, "secret": SECRET}])
    r = send_test(client, world, "T1", route["id"])
    assert r.json() == {"ok": True, "status": 200, "error": None}
    (message,) = wecom.messages()
    assert message.body["test"] is True
    assert (message.body["unit_code"], message.body["level"], message.body["sender"]) == ("6101130001", 1, "测试ba_K1")
    assert verify_signature(canonical_json(message.body), message.headers, SECRET.encode(), int(time.time()))
    assert not verify_signature(canonical_json(message.body), message.headers, b"another-secret-xx", int(time.time()))


@pytest.mark.parametrize(
    ("mode", "status", "words"),
    [
        ("limited", 200, "超过企业微信机器人每分钟 20 条的发送频率限制，请稍后再试（errcode 45009）"),
        ("down", 500, "企业微信服务器答复 HTTP 500，消息未被接收"),
    ],
)
def test_a_robot_that_refuses_gives_ok_false_with_the_reason(
    client: TestClient, world: World, wecom: FakeWecom, mode: str, status: int, words: str
) -> None:
    (route,) = save_routes(client, world, "T1", [{"level": 1, "channel": "wecom", "url": wecom.url(KEY)}])
    wecom.mode = mode
    r = send_test(client, world, "T1", route["id"])
    assert r.status_code == 200, r.text
    assert r.json() == {"ok": False, "status": status, "error": words}
    assert KEY not in r.text


def test_a_host_not_on_the_allowlist_is_refused_without_showing_the_key(client: TestClient, world: World) -> None:
    outside = insert_route(world, "T1", f"https://robot.example.com/cgi-bin/webhook/send?key={KEY}")
    r = send_test(client, world, "T1", outside)
    assert r.status_code == 200, r.text
    body = r.json()
    assert (body["ok"], body["status"]) == (False, None)
    assert body["error"].startswith("通知地址被拒绝，未发送：主机 robot.example.com 不在允许外发的主机名单中")
    assert KEY not in r.text

    internal = insert_route(world, "T1", f"http://10.1.2.3/cgi-bin/webhook/send?key={KEY}")
    body = send_test(client, world, "T1", internal).json()
    assert (body["ok"], body["status"]) == (False, None)
    assert "不允许向内网地址发送（10.1.2.3）" in body["error"] and KEY not in body["error"]


def test_a_destination_that_does_not_answer_is_a_network_reason(client: TestClient, world: World) -> None:
    with socket.socket() as s:  # a port with nothing listening on it
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    route = insert_route(world, "T1", f"http://127.0.0.1:{port}/cgi-bin/webhook/send?key={KEY}")
    r = send_test(client, world, "T1", route)
    assert r.json() == {"ok": False, "status": None, "error": "发送失败：对方拒绝连接（地址或端口不对，或服务未运行）"}


def test_only_writers_in_the_jurisdiction_may_send(client: TestClient, world: World, wecom: FakeWecom) -> None:
    (route,) = save_routes(client, world, "T1", [{"level": 1, "channel": "wecom", "url": wecom.url(KEY)}])
    for reader in ("sup_P", "ana_K1"):
        r = send_test(client, world, "T1", route["id"], reader)
        assert (r.status_code, error_code(r)) == (403, "forbidden"), r.text
        # Refused before the body is read, as tests/api/test_read_only_roles.py tries every write.
        empty = client.post(
            f"{API}/units/{world.units['T1']}/notification-routes/test", json={}, headers=bearer(client, reader)
        )
        assert (empty.status_code, error_code(empty)) == (403, "forbidden"), empty.text
    other_county = send_test(client, world, "T1", route["id"], "ba_K2")
    assert (other_county.status_code, error_code(other_county)) == (404, "not_found")
    # A route of another unit, named under a unit of one's own jurisdiction.
    elsewhere = insert_route(world, "T2", wecom.url("t2-key"))
    r = send_test(client, world, "T1", elsewhere)
    assert (r.status_code, error_code(r)) == (404, "not_found")
    assert r.json()["error"]["message"] == "通知去处不存在或不在您的辖区内"
    assert send_test(client, world, "T1", 2**40).status_code == 404
    assert wecom.messages() == []
    assert audit_of_tests(world) == []


# ---------------------------------------------------------------------------------------------
# The pure parts


NOW = datetime(2026, 3, 5, 6, 7, 8, tzinfo=UTC)


def test_the_markdown_says_test_unit_sender_and_beijing_time() -> None:
    text = wecom_markdown_for("龙门镇\n卫生院", "6105810001", 3, "王芳", NOW)
    assert text.splitlines() == [
        "## 【冷链报警·测试】龙门镇 卫生院",
        "> 这是一条测试消息，用于确认本群能收到冷链报警，无需处理。",
        "> 单位：龙门镇 卫生院（6105810001）",
        "> 通知级别：三级负责人",
        "> 发送人：王芳",
        "> 时间：2026-03-05 14:07:08",
    ]
    assert webhook_body_for("龙门镇卫生院", "6105810001", 3, "王芳", NOW)["test"] is True


def test_a_webhook_without_a_secret_is_not_sent_unsigned() -> None:
    route = Route(1, 1, 1, "webhook", "https://example.org/hook", None)
    with pytest.raises(ValueError, match="没有设置 HMAC 密钥"):
        request_for(route, "单位", "1", "王芳", NOW)


def test_reading_the_answers() -> None:
    assert judge_answer("wecom", 200, b'{"errcode":0,"errmsg":"ok"}').ok
    unknown = judge_answer("wecom", 200, b'{"errcode":40058,"errmsg":"markdown.content exceed max length"}')
    assert unknown.error == "企业微信拒收：markdown.content exceed max length（errcode 40058）"
    assert judge_answer("wecom", 200, b"<html>").error == "企业微信的答复无法识别（不是机器人接口的 JSON）"
    assert judge_answer("webhook", 204, b"").ok
    assert judge_answer("webhook", 401, b"").error == "接收方答复 HTTP 401，消息未被接收"
