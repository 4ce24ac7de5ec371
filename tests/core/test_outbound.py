"""Outbound requests go only where they should (issue #15): https to an allowed host, never to a
loopback, private, link-local (cloud metadata) or otherwise internal address — refused when a
URL is saved (422, in Chinese) and again when it is used, after DNS resolution (a refused
notification is kept unsent with the reason and never retried). Plain http to 127.0.0.1, which
the tests' fakes need, only with the explicit COLDCHAIN_OUTBOUND_ALLOW_INSECURE_LOOPBACK."""

from __future__ import annotations

import ipaddress
import socket
import threading
from collections.abc import Iterator
from typing import Any

import pytest
from alarmhelp import add_readings, alarm_world, one_pass, probe_of, rows, set_params, utcnow
from apihelp import World, api_client, bearer, error_code

from coldchain.core import db
from coldchain.core.outbound import (
    OutboundPolicy,
    OutboundRefused,
    check_url,
    forbidden_reason,
    mask_url,
    resolve,
    scrub,
)
from coldchain.core.settings import SettingsError, load_settings

DEFAULT = OutboundPolicy()
FAKES = OutboundPolicy(allow_insecure_loopback=True)
ROBOT = "https://qyapi.weixin.qq.com/cgi-bin/webhook/send?key=693a91f6-7xxx-4bc4-97a0-0ec2sifa5aaa"


class Listener:
    """A TCP port that counts connections: whatever the protocol, a request that was let out shows."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.accepted = 0
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.accepted += 1
            conn.close()

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def listener() -> Iterator[Listener]:
    one = Listener()
    yield one
    one.close()


# ---------------------------------------------------------------------------------------------
# The rule itself


@pytest.mark.parametrize(
    "address",
    [
        "127.0.0.1",
        "127.8.9.10",
        "10.1.2.3",
        "172.16.0.1",
        "192.168.1.1",
        "100.64.0.1",
        "100.100.100.200",  # Alibaba Cloud's metadata service
        "169.254.169.254",  # AWS / GCP / Azure metadata
        "0.0.0.0",
        "224.0.0.1",
        "240.0.0.1",
        "255.255.255.255",
        "::1",
        "::",
        "::ffff:127.0.0.1",
        "::ffff:10.0.0.1",
        "::ffff:169.254.169.254",
        "fe80::1",
        "fd00:ec2::254",  # AWS metadata over IPv6
        "fc00::1",
        "ff02::1",
        "2002:7f00:1::",  # 6to4 of 127.0.0.1
        "64:ff9b::a9fe:a9fe",  # NAT64 of 169.254.169.254
    ],
)
def test_internal_addresses_are_forbidden(address: str) -> None:
    assert forbidden_reason(ipaddress.ip_address(address)) is not None


@pytest.mark.parametrize("address", ["8.8.8.8", "101.91.22.57", "2001:4860:4860::8888"])
def test_public_addresses_are_not(address: str) -> None:
    assert forbidden_reason(ipaddress.ip_address(address)) is None


@pytest.mark.parametrize(
    ("url", "words"),
    [
        ("http://qyapi.weixin.qq.com/cgi-bin/webhook/send?key=k", "只允许 https"),
        ("https://127.0.0.1/x", "回环"),
        ("https://[::1]:8443/x", "回环"),
        ("https://[::ffff:127.0.0.1]/x", "回环"),
        ("https://10.0.0.8/cgi-bin/webhook/send?key=k", "内网"),
        ("https://192.168.0.10/hook", "内网"),
        ("https://169.254.169.254/latest/meta-data/", "元数据"),
        ("https://100.100.100.200/latest/meta-data/", "NAT"),
        ("https://0.0.0.0/", "未指定"),
        ("https://evil.example/hook", "不在允许外发的主机名单"),
        ("https://qyapi.weixin.qq.com.evil.example/x", "不在允许外发的主机名单"),
        ("https://metadata.google.internal/computeMetadata/v1/", "不在允许外发的主机名单"),
        ("https://localhost/x", "不在允许外发的主机名单"),
        ("https://2130706433/x", "不在允许外发的主机名单"),
        ("https://qyapi.weixin.qq.com@evil.example/x", "用户名或密码"),
        ("https://user:pw@qyapi.weixin.qq.com/x", "用户名或密码"),
        ("https://qyapi.weixin.qq.com\\@evil.example/x", "反斜杠"),
        ("https://qyapi.weixin.qq.com/\tx", "控制字符"),
        ("ftp://qyapi.weixin.qq.com/x", "https://"),
        ("http://127.0.0.1:9/cgi-bin/webhook/send?key=k", "回环"),  # without the tests' escape hatch
    ],
)
def test_saving_refuses(url: str, words: str) -> None:
    with pytest.raises(OutboundRefused, match=words) as refused:
        check_url(url, DEFAULT)
    assert "key=k" not in str(refused.value)


def test_the_allowed_hosts_and_the_escape_hatch() -> None:
    assert check_url(ROBOT, DEFAULT).host == "qyapi.weixin.qq.com"
    assert check_url("https://API.weixin.qq.com./cgi-bin/token", DEFAULT).host == "api.weixin.qq.com"
    assert check_url("http://127.0.0.1:9/x?key=k", FAKES).port == 9
    assert check_url("http://[::1]:9/x", FAKES).scheme == "http"
    for still_refused in ("http://localhost:9/x", "http://10.0.0.1/x", "https://evil.example/", "http://8.8.8.8/"):
        with pytest.raises(OutboundRefused):
            check_url(still_refused, FAKES)


def _dns(*answers: str) -> Any:
    def getaddrinfo(host: str, port: int, **_: Any) -> list[tuple[Any, ...]]:
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (a, port)) for a in answers]

    return getaddrinfo


def test_a_name_is_judged_by_what_it_resolves_to() -> None:
    target, addresses = resolve(ROBOT, DEFAULT, getaddrinfo=_dns("101.91.22.57"))
    assert (target.host, target.port, addresses) == ("qyapi.weixin.qq.com", 443, ["101.91.22.57"])
    for internal in ("127.0.0.1", "10.2.3.4", "169.254.169.254", "::ffff:192.168.1.1"):
        with pytest.raises(OutboundRefused, match="解析到"):
            resolve(ROBOT, DEFAULT, getaddrinfo=_dns(internal))
    with pytest.raises(OutboundRefused):  # one internal address among public ones is enough
        resolve(ROBOT, DEFAULT, getaddrinfo=_dns("101.91.22.57", "10.0.0.1"))
    with pytest.raises(OutboundRefused):  # the hatch is for literal loopback addresses only
        resolve("https://localhost/x", OutboundPolicy(frozenset({"localhost"}), True), getaddrinfo=_dns("127.0.0.1"))


def test_urls_are_shown_without_their_secrets() -> None:
    assert mask_url(ROBOT) == "https://qyapi.weixin.qq.com/cgi-bin/webhook/send?key=***"
    assert mask_url("https://u:pw@h.example:8443/p?a=1&b=&c#frag") == "https://h.example:8443/p?a=***&b=***&c"
    assert scrub(f"failed: {ROBOT} said no (693a91f6-7xxx)", ROBOT) == (
        "failed: https://qyapi.weixin.qq.com/cgi-bin/webhook/send?key=*** said no (693a91f6-7xxx)"
    )
    assert "s3cr3t-value" not in scrub("boom s3cr3t-value", "https://h/x", "s3cr3t-value")


def test_settings_refuse_an_outbound_url_at_start_up_without_echoing_its_key() -> None:
    for env, words in (
        ({"COLDCHAIN_WECOM_WEBHOOK_URL": "http://127.0.0.1:9/send?key=planted-key-123"}, "回环"),
        ({"COLDCHAIN_WECOM_WEBHOOK_URL": "https://169.254.169.254/?key=planted-key-123"}, "元数据"),
        ({"COLDCHAIN_WECOM_WEBHOOK_URL": "ftp://x/?key=planted-key-123"}, "http"),
        ({"COLDCHAIN_WECHAT_APPID": "wx1", "COLDCHAIN_WECHAT_API_BASE": "https://evil.example"}, "名单"),
        ({"COLDCHAIN_OUTBOUND_HOSTS": "https://qyapi.weixin.qq.com"}, "主机名"),
        ({"COLDCHAIN_OUTBOUND_HOSTS": "10.0.0.1"}, "IP"),
        ({"COLDCHAIN_OUTBOUND_ALLOW_INSECURE_LOOPBACK": "yes"}, "true 或 false"),
    ):
        with pytest.raises(SettingsError, match=words) as refused:
            load_settings(env)
        assert "planted-key-123" not in str(refused.value)
    assert load_settings({}).outbound_hosts == ("qyapi.weixin.qq.com", "api.weixin.qq.com")
    assert not load_settings({}).outbound_allow_insecure_loopback


# ---------------------------------------------------------------------------------------------
# Saving a unit's routes


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:8080/cgi-bin/webhook/send?key=k",
        "https://127.0.0.1/cgi-bin/webhook/send?key=k",
        "https://10.20.30.40/hook",
        "https://169.254.169.254/latest/meta-data/iam/",
        "http://qyapi.weixin.qq.com/cgi-bin/webhook/send?key=k",
        "https://hooks.unknown.example/alarm",
    ],
)
def test_a_unit_cannot_save_a_route_to_an_internal_or_unknown_address(world: World, url: str) -> None:
    with api_client(world.url) as client:
        r = client.put(
            f"/api/v1/units/{world.units['T1']}/notification-routes",
            json=[{"level": 1, "channel": "webhook", "url": url, "secret": "s" * 20}],
            headers=bearer(client, "ba_K1"),
        )
    assert (r.status_code, error_code(r)) == (422, "invalid")
    assert r.json()["error"]["message"].startswith("第 1 条通知去处（1 级）：")
    with db.connect(world.url) as conn:
        assert conn.execute("SELECT count(*) FROM notification_routes").fetchone() == (0,)
        assert conn.execute("SELECT count(*) FROM audit_log WHERE entity = 'notification_routes'").fetchone() == (0,)


def test_routes_read_back_masked_can_be_saved_back_unchanged(world: World) -> None:
    with api_client(world.url, {"COLDCHAIN_OUTBOUND_HOSTS": "qyapi.weixin.qq.com,hooks.county.example"}) as client:
        h = bearer(client, "ba_K1")
        url = f"/api/v1/units/{world.units['T1']}/notification-routes"
        hook = "https://hooks.county.example/alarm?token=abcdef123456"
        saved = client.put(
            url,
            json=[
                {"level": 1, "channel": "wecom", "url": ROBOT},
                {"level": 2, "channel": "webhook", "url": hook, "secret": "hmac-secret-0123456789"},
            ],
            headers=h,
        )
        assert saved.status_code == 200, saved.text
        shown = client.get(url, headers=h).json()
        assert [r["url"] for r in shown] == [mask_url(ROBOT), "https://hooks.county.example/alarm?token=***"]
        again = client.put(
            url, json=[{k: r[k] for k in ("level", "channel", "url")} for r in shown], headers=h
        )  # as read: masked, no secret
        assert again.status_code == 200, again.text
        unknown = client.put(
            url, json=[{"level": 1, "channel": "wecom", "url": "https://qyapi.weixin.qq.com/x?key=***"}], headers=h
        )
        assert unknown.status_code == 422 and "***" in unknown.json()["error"]["message"]
    with db.connect(world.url) as conn:
        stored = conn.execute("SELECT level, url, secret FROM notification_routes ORDER BY level").fetchall()
    assert stored == [(1, ROBOT, None), (2, hook, "hmac-secret-0123456789")]


# ---------------------------------------------------------------------------------------------
# Sending: checked again after DNS, on the addresses connected to


@pytest.fixture
def alarm_db(db_url: str) -> World:
    return alarm_world(db_url)


def _breach(world: World) -> None:
    with db.connect(world.url) as conn:
        comp = world.compartments["T1/冷藏"]
        set_params(conn, comp, delay=0)
        add_readings(conn, probe_of(conn, comp), [(utcnow(), 12.0)])


def test_a_name_that_resolves_to_loopback_is_refused_when_sending(alarm_db: World, listener: Listener) -> None:
    """``localhost`` is on this deployment's allowlist, the loopback escape is off: the route is
    saved (a name), and refused at send time (it resolves to 127.0.0.1) — nothing connects."""
    world = alarm_db
    env = {"COLDCHAIN_OUTBOUND_HOSTS": "localhost,qyapi.weixin.qq.com"}
    robot = f"https://localhost:{listener.port}/cgi-bin/webhook/send?key=local-robot-key"
    with api_client(world.url, env) as client:
        r = client.put(
            f"/api/v1/units/{world.units['T1']}/notification-routes",
            json=[{"level": 1, "channel": "wecom", "url": robot}],
            headers=bearer(client, "ba_K1"),
        )
        assert r.status_code == 200, r.text
    # And one saved before this check existed, straight into the table: refused all the same.
    with db.connect(world.url) as conn:
        conn.execute(
            "INSERT INTO notification_routes (unit_id, level, channel, url) VALUES (%s, 1, 'wecom', %s)",
            (world.units["T1"], f"http://127.0.0.1:{listener.port}/cgi-bin/webhook/send?key=old-robot-key"),
        )
        conn.commit()
    _breach(world)
    settings = load_settings(env)
    with db.connect(world.url) as conn:
        one_pass(conn, settings)
        first = rows(conn, "SELECT target, attempts, last_error, sent_at, next_attempt_at FROM notification_outbox")
        one_pass(conn, settings)  # not tried again
        second = rows(conn, "SELECT target, attempts, last_error, sent_at, next_attempt_at FROM notification_outbox")
        failed = rows(conn, "SELECT details FROM alarm_events WHERE action = 'notify_failed' ORDER BY id")
    assert listener.accepted == 0
    assert len(first) == 2 and first == second
    by_target = {row["target"]: row for row in first}
    dns = by_target[robot]
    assert dns["sent_at"] is None and dns["attempts"] == 1 and dns["next_attempt_at"].year == 9999
    assert "不再重试" in dns["last_error"] and "localhost 解析到本机回环地址 127.0.0.1" in dns["last_error"]
    old = next(row for target, row in by_target.items() if target != robot)
    assert "不允许向本机回环地址发送" in old["last_error"] and old["attempts"] == 1
    assert len(failed) == 2 and all(f["details"]["refused"] for f in failed)
    assert not any("robot-key" in text for text in (*(r["last_error"] for r in first), *(str(f) for f in failed)))


def test_wechat_sign_in_is_refused_when_its_api_host_resolves_inside(world: World, listener: Listener) -> None:
    env = {
        "COLDCHAIN_WECHAT_APPID": "wx0123456789abcdef",
        "COLDCHAIN_WECHAT_SECRET": "wechat-secret-never-shown",
        "COLDCHAIN_WECHAT_API_BASE": f"https://localhost:{listener.port}",
        "COLDCHAIN_OUTBOUND_HOSTS": "localhost,api.weixin.qq.com",
    }
    with api_client(world.url, env) as client:
        r = client.post("/api/v1/auth/wechat", json={"code": "code-any-00001"})
    assert (r.status_code, error_code(r)) == (502, "wechat_unreachable")
    assert "回环" in r.json()["error"]["message"] and "wechat-secret-never-shown" not in r.text
    assert listener.accepted == 0
