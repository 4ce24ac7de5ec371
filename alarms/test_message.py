"""A test message to one of a unit's notification routes, sent at once (issue #17).

Why it exists: a robot URL pasted with one character wrong, a robot removed from its group, or a
webhook receiver that rejects our signature is otherwise found out when the first real alarm goes
nowhere. An administrator presses "发送测试消息" right after saving a route and sees the answer.

Why it does not go through the outbox (:mod:`alarms.delivery`): it is not an alarm — there is no
alarm to attach it to, nothing to retry later (the person is waiting for the answer now), and a
test must never be mistaken for a notification that was owed. It still goes through
:mod:`coldchain.core.outbound`, so the allowlist and the internal-address checks apply exactly as
for alarms. On WeCom's side it does count against the robot's 20 messages a minute, like any other
message; the outbox's budget does not see it (docs/api.md says so).

The message text and the answer's reading are pure (:func:`wecom_markdown_for`,
:func:`webhook_body_for`, :func:`judge_answer`, :func:`network_reason`); :func:`send_test_message`
does the I/O. Nothing returned or stored carries a secret: a refusal names the host only, other
errors are scrubbed of the URL's query values and the webhook secret.

The audit row: ``audit_log`` is written only by the triggers of migration 0004 (the runtime role
may not insert into it), so the route row is touched with an UPDATE that changes nothing, under
the action ``notification_route.test``. The trigger records who, when and which route (URL masked,
secret as a flag); the same statement takes the route's row lock, so two presses of the button
send one after the other, never at the same instant.
"""

from __future__ import annotations

import json
import socket
import ssl
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import psycopg

from alarms import robot_budget
from alarms.card import LEVEL_LABELS
from alarms.messages import signed_webhook, wecom_payload
from coldchain.core import outbound
from coldchain.core.db import fetch_one, set_action
from coldchain.core.errors import not_found
from coldchain.core.outbound import OutboundPolicy, OutboundRefused
from coldchain.core.terms import BEIJING

AUDIT_ACTION = "notification_route.test"
TIMEOUT = 10.0
"""Seconds to wait for the robot or webhook: the person is waiting, and WeCom answers in well under one."""

NAME_CHARS = 60
ERROR_CHARS = 300

# WeCom robot error codes a person can act on; any other is shown with WeCom's own text.
WECOM_ERRORS: dict[int, str] = {
    93000: "机器人地址无效：key 错误，或机器人已被移出群聊",
    45009: "超过企业微信机器人每分钟 20 条的发送频率限制，请稍后再试",
    93004: "机器人已被停用",
    93008: "机器人已不在群聊中",
}


@dataclass(frozen=True)
class Route:
    """One saved destination, with its real URL and secret (never shown; only sent to)."""

    id: int
    unit_id: int
    level: int
    channel: str
    url: str
    secret: str | None


@dataclass(frozen=True)
class Outcome:
    """What the page shows: whether the destination took the message, its HTTP status (None when
    nothing was sent) and, when not, why — in Chinese, with no secret in it."""

    ok: bool
    status: int | None
    error: str | None


# ---------------------------------------------------------------------------------------------
# Pure: the message and the reading of the answer


def _one_line(text: str, limit: int = NAME_CHARS) -> str:
    """A name as one line, cut with '…': a newline would break the markdown quote block."""
    clean = " ".join(text.split())
    return clean if len(clean) <= limit else clean[: limit - 1] + "…"


def _when(now: datetime) -> str:
    if now.tzinfo is None or now.utcoffset() is None:
        raise ValueError(f"时间必须带时区：{now.isoformat()}")
    return f"{now.astimezone(BEIJING):%Y-%m-%d %H:%M:%S}"


def wecom_markdown_for(unit_name: str, unit_code: str, level: int, sender: str, now: datetime) -> str:
    """The robot's test message: says plainly that it is a test, for which unit and level, who sent
    it and when — so nobody in the group drives out for it."""
    return "\n".join(
        [
            f"## 【冷链报警·测试】{_one_line(unit_name)}",
            "> 这是一条测试消息，用于确认本群能收到冷链报警，无需处理。",
            f"> 单位：{_one_line(unit_name)}（{_one_line(unit_code, 20)}）",
            f"> 通知级别：{LEVEL_LABELS.get(level, f'{level} 级')}",
            f"> 发送人：{_one_line(sender, 40)}",
            f"> 时间：{_when(now)}",
        ]
    )


def webhook_body_for(unit_name: str, unit_code: str, level: int, sender: str, now: datetime) -> dict[str, object]:
    """The webhook's test body: ``"test": true`` first of all, so a receiver can tell it from an
    alarm (which never carries the field) and drop it."""
    return {
        "test": True,
        "message": "冷链报警测试消息，无需处理",
        "unit": _one_line(unit_name),
        "unit_code": unit_code,
        "level": level,
        "sender": _one_line(sender, 40),
        "sent_at": now.isoformat(),
    }


def request_for(
    route: Route, unit_name: str, unit_code: str, sender: str, now: datetime
) -> tuple[bytes, dict[str, str]]:
    """The bytes and headers to POST to ``route``; a webhook's are signed with its secret."""
    if route.channel == "wecom":
        markdown = wecom_markdown_for(unit_name, unit_code, route.level, sender, now)
        body = json.dumps(wecom_payload(markdown), ensure_ascii=False).encode()
        return body, {"Content-Type": "application/json; charset=utf-8"}
    if not route.secret:
        raise ValueError("该 webhook 没有设置 HMAC 密钥，无法签名；请在通知去处中填写密钥后保存")
    return signed_webhook(
        webhook_body_for(unit_name, unit_code, route.level, sender, now), route.secret.encode(), int(now.timestamp())
    )


def judge_answer(channel: str, status: int, answer: bytes) -> Outcome:
    """Did the destination take the message? A webhook says so with its HTTP status alone; a WeCom
    robot answers 200 and puts its verdict in ``errcode``."""
    if not 200 <= status < 300:
        who = "企业微信服务器" if channel == "wecom" else "接收方"
        return Outcome(False, status, f"{who}答复 HTTP {status}，消息未被接收")
    if channel != "wecom":
        return Outcome(True, status, None)
    try:
        parsed: Any = json.loads(answer or b"{}")
    except ValueError:
        parsed = None
    if not isinstance(parsed, dict) or not isinstance(parsed.get("errcode", 0), int):
        return Outcome(False, status, "企业微信的答复无法识别（不是机器人接口的 JSON）")
    code = parsed.get("errcode", 0)
    if code == 0:
        return Outcome(True, status, None)
    reason = WECOM_ERRORS.get(code)
    if reason is None:
        text = " ".join(str(parsed.get("errmsg", "")).split())[:200]
        reason = f"企业微信拒收：{text}" if text else "企业微信拒收"
    return Outcome(False, status, f"{reason}（errcode {code}）")


def network_reason(exc: OSError) -> str:
    """A network failure in words a site's administrator can act on (the message is scrubbed by
    the caller before it is shown)."""
    if isinstance(exc, ConnectionRefusedError):
        return "对方拒绝连接（地址或端口不对，或服务未运行）"
    if isinstance(exc, TimeoutError):
        return f"等待对方应答超时（{TIMEOUT:g} 秒）"
    if isinstance(exc, socket.gaierror):
        return "域名无法解析，请检查地址中的主机名"
    if isinstance(exc, ssl.SSLError):
        return "加密连接（TLS）失败：证书无效或握手失败"
    return f"网络错误：{type(exc).__name__}: {exc}"


# ---------------------------------------------------------------------------------------------
# I/O: the route, the audit row, the request

_TOUCH_ROUTE = """
UPDATE notification_routes SET level = level WHERE id = %(id)s AND unit_id = %(unit)s
RETURNING id, unit_id, level, channel, url, secret
"""


def take_route(conn: psycopg.Connection, unit_id: int, route_id: int) -> Route:
    """The unit's route ``route_id``, locked, with the audit row of the test written (see the
    module's docstring); 404 when the unit has no such route. The caller has checked that the unit
    is in the user's jurisdiction and that the user may write."""
    set_action(conn, AUDIT_ACTION)
    row = fetch_one(conn, _TOUCH_ROUTE, {"id": route_id, "unit": unit_id})
    if row is None:
        raise not_found("通知去处")
    return Route(**row)


def _count_for_robot(conn: psycopg.Connection, route: Route) -> None:
    """A robot counts test messages in its 20 a minute like any other: so does its budget here."""
    if route.channel == "wecom":
        robot_budget.record(conn, robot_budget.digest(route.url))


def send_test_message(
    conn: psycopg.Connection,
    policy: OutboundPolicy,
    unit_id: int,
    route_id: int,
    *,
    unit_name: str,
    unit_code: str,
    sender: str,
    now: datetime,
) -> Outcome:
    """Send one test message to the unit's route ``route_id`` now and say how it went.

    Every failure is an :class:`Outcome` with a Chinese reason, never an exception: the person
    asked "does this route work?", and "no, because …" is the answer."""
    route = take_route(conn, unit_id, route_id)
    try:
        body, headers = request_for(route, unit_name, unit_code, sender, now)
    except ValueError as exc:
        return Outcome(False, None, str(exc))
    try:
        status, answer = outbound.request("POST", route.url, policy, body=body, headers=headers, timeout=TIMEOUT)
    except OutboundRefused as exc:
        reason = f"通知地址被拒绝，未发送：{exc}"
        return Outcome(False, None, outbound.scrub(reason, route.url, route.secret)[:ERROR_CHARS])
    except OSError as exc:
        _count_for_robot(conn, route)
        reason = f"发送失败：{network_reason(exc)}"
        return Outcome(False, None, outbound.scrub(reason, route.url, route.secret)[:ERROR_CHARS])
    _count_for_robot(conn, route)
    result = judge_answer(route.channel, status, answer)
    if result.error is None:
        return result
    return Outcome(result.ok, result.status, outbound.scrub(result.error, route.url, route.secret)[:ERROR_CHARS])
