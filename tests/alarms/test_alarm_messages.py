"""Alarm notifications (DC4): WeCom markdown within 4 096 bytes, bursts merged and never dropped,
the robot rate limit, WeChat template bodies, and the HMAC-signed webhook."""

from __future__ import annotations

import hashlib
import hmac
import itertools
import json
import re
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest

from alarms.messages import (
    WECOM_MAX_BYTES,
    AlarmCard,
    RobotRateLimiter,
    format_duration,
    next_slot,
    signed_webhook,
    template_message,
    verify_signature,
    wecom_markdown,
    wecom_payload,
)

NOW = datetime(2024, 5, 6, 7, 5, tzinfo=UTC)  # 15:05 in Beijing
LINK = "https://coldchain.sxcdc.example/alarms/17"


def card(**changes: object) -> AlarmCard:
    base = AlarmCard(
        alarm_id=17,
        unit_name="西安市雁塔区疾病预防控制中心",
        unit_code="610113",
        equipment_name="冷库 1",
        compartment_name="冷藏室",
        kind_label="温度超上限",
        severity="critical",
        temperature=9.34,
        t_min=2.0,
        t_max=8.0,
        since=datetime(2024, 5, 6, 6, 30, tzinfo=UTC),
        duration=timedelta(minutes=35),
        level=2,
        step_kind="escalate",
        link=LINK,
    )
    return replace(base, **changes)  # type: ignore[arg-type]


def nbytes(text: str) -> int:
    return len(text.encode("utf-8"))


def alarm_ids(message: str) -> list[int]:
    return [int(m) for m in re.findall(r"报警编号 (\d+)", message)]


# --- formatting ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("duration", "text"),
    [
        (timedelta(minutes=35), "35 分钟"),
        (timedelta(hours=2, minutes=5, seconds=59), "2 小时 5 分钟"),
        (timedelta(hours=2), "2 小时"),
        (timedelta(seconds=59), "不足 1 分钟"),
        (timedelta(days=1, hours=3, minutes=20), "1 天 3 小时"),
        (timedelta(days=2), "2 天"),
        (timedelta(seconds=-30), "不足 1 分钟"),
    ],
)
def test_format_duration(duration: timedelta, text: str) -> None:
    assert format_duration(duration) == text


def test_format_duration_compact() -> None:
    assert format_duration(timedelta(hours=2, minutes=5), compact=True) == "2小时5分钟"


def test_single_card_message_says_what_to_do() -> None:
    (message,) = wecom_markdown([card()], NOW)
    assert message.startswith("## 【冷链报警】西安市雁塔区疾病预防控制中心\n")
    assert '<font color="comment">05-06 15:05 发出</font>' in message
    assert "> 单位：西安市雁塔区疾病预防控制中心（610113）" in message
    assert "> 位置：冷库 1 / 冷藏室" in message
    assert '> 温度：<font color="warning">9.3 ℃</font>，限值 2.0～8.0 ℃' in message
    assert "> 时间：05-06 14:30 起，已持续 35 分钟" in message  # Beijing time, not UTC 06:30
    assert "> 通知：二级负责人 · 升级通知 · 报警编号 17" in message
    assert message.endswith(f"[查看并确认到场]({LINK})")
    assert "迟报" not in message
    assert "第 1/" not in message


def test_optional_lines() -> None:
    (message,) = wecom_markdown(
        [card(temperature=None, t_min=None, t_max=8.0, found_late=True, cause="停电", level=3, step_kind="reminder")],
        NOW,
    )
    assert "> 温度：无读数，限值 ≤8.0 ℃" in message
    assert "> 原因：停电" in message
    assert "迟报" in message
    assert "三级负责人 · 持续未恢复提醒" in message
    (resolved,) = wecom_markdown([card(step_kind="resolved_reminder", level=1)], NOW)
    assert "已恢复</font>" in resolved and "一级负责人" in resolved
    assert f"[填写原因与处置并关闭]({LINK})" in resolved


def test_newlines_in_names_do_not_break_the_quote_block() -> None:
    (message,) = wecom_markdown([card(equipment_name="冷库\n## 伪造标题", cause="a\r\nb")], NOW)
    assert "> 位置：冷库 ## 伪造标题 / 冷藏室" in message
    assert "> 原因：a b" in message
    assert all(line.startswith((">", "##", "**", "[", "<font")) for line in message.splitlines() if line)


def test_card_validation() -> None:
    with pytest.raises(ValueError, match="负责人级别"):
        card(level=4)
    with pytest.raises(ValueError, match="时区"):
        card(since=datetime(2024, 5, 6, 14, 30))
    with pytest.raises(ValueError, match="报警链接"):
        card(link="https://x.example/a b")
    with pytest.raises(ValueError, match="通知步骤"):
        card(step_kind="level2")
    with pytest.raises(ValueError, match="严重程度"):
        card(severity="fatal")


# --- byte limit, merging, truncation ----------------------------------------------------------


def padded(extra_bytes: int) -> AlarmCard:
    """A card whose single message is exactly 4096 + ``extra_bytes`` bytes before any truncation."""
    (baseline,) = wecom_markdown([card(cause="x")], NOW)
    missing = WECOM_MAX_BYTES - nbytes(baseline) + extra_bytes
    chinese, ascii_rest = divmod(missing, 3)
    cause = "x" + "断" * chinese + "y" * ascii_rest
    return card(cause=cause)


def test_exactly_4096_bytes_is_sent_whole() -> None:
    exact = padded(0)
    (message,) = wecom_markdown([exact], NOW)
    assert nbytes(message) == 4096
    assert f"> 原因：{exact.cause}" in message
    assert "…" not in message
    assert wecom_payload(message)["markdown"]["content"] == message


def test_4097_bytes_is_cut_not_dropped() -> None:
    over = padded(1)
    (message,) = wecom_markdown([over], NOW)
    assert nbytes(message) <= 4096
    assert "…" in message
    assert over.cause is not None and over.cause not in message
    assert message.endswith(f"({LINK})")
    assert alarm_ids(message) == [17]
    with pytest.raises(ValueError, match="4096 字节"):
        wecom_payload(message + "啊")


def test_huge_card_keeps_link_numbers_and_times() -> None:
    long_link = LINK + "?token=" + "a" * 300
    huge = card(
        unit_name="陕西" * 3000,
        equipment_name="冰箱" * 2000,
        compartment_name="冷冻室" * 500,
        cause="原因" * 5000,
        link=long_link,
    )
    (message,) = wecom_markdown([huge], NOW)
    assert nbytes(message) <= 4096
    assert message.count("…") >= 3
    assert f"({long_link})" in message
    assert "9.3 ℃" in message and "限值 2.0～8.0 ℃" in message
    assert "05-06 14:30 起，已持续 35 分钟" in message
    assert alarm_ids(message) == [17]
    # Short fields are left whole while the long ones are cut.
    assert "（610113）" in message and "温度超上限" in message


def test_huge_card_late_in_a_long_burst_fits_the_wider_part_marker() -> None:
    # One-byte characters, so the cut fills its room to the byte; the card lands in part 10 or later.
    cards = [card(alarm_id=i) for i in range(1, 151)] + [card(alarm_id=999, severity="minor", cause="x" * 10_000)]
    messages = wecom_markdown(cards, NOW)
    assert len(messages) >= 10
    assert alarm_ids(messages[-1])[-1] == 999
    assert all(nbytes(m) <= WECOM_MAX_BYTES for m in messages)
    assert nbytes(messages[-1]) >= WECOM_MAX_BYTES - 2  # the cut took only what it had to


def test_a_link_that_cannot_fit_is_an_error_not_a_silent_drop() -> None:
    with pytest.raises(ValueError, match="链接过长"):
        wecom_markdown([card(link=LINK + "?" + "a" * 5000)], NOW)


def test_two_small_cards_make_one_message() -> None:
    messages = wecom_markdown([card(alarm_id=1), card(alarm_id=2, severity="minor")], NOW)
    assert len(messages) == 1
    assert messages[0].startswith("## 【冷链报警】西安市雁塔区疾病预防控制中心共 2 条\n")
    assert alarm_ids(messages[0]) == [1, 2]


def test_most_severe_first() -> None:
    (message,) = wecom_markdown(
        [card(alarm_id=1, severity="minor"), card(alarm_id=2, severity="major"), card(alarm_id=3)], NOW
    )
    assert alarm_ids(message) == [3, 2, 1]
    assert message.index("**1. ") < message.index("报警编号 3")


def test_power_cut_burst_of_300_is_merged_and_nothing_dropped() -> None:
    cards = [
        card(
            alarm_id=1000 + i,
            unit_name="宝鸡市陈仓区疾控中心" if i < 200 else f"第{i}接种门诊",
            unit_code="610304" if i < 200 else f"61030{i}",
            equipment_name=f"冰箱 {i}",
            kind_label="断电" if i % 2 else "设备离线",
            severity="major",
            temperature=None,
        )
        for i in range(300)
    ]
    messages = wecom_markdown(cards, NOW)
    assert 1 < len(messages) < 300
    assert all(nbytes(m) <= WECOM_MAX_BYTES for m in messages)
    seen = [alarm_id for m in messages for alarm_id in alarm_ids(m)]
    assert sorted(seen) == list(range(1000, 1300))  # every alarm exactly once
    assert seen == list(range(1000, 1300))  # and in order
    parts = len(messages)
    for part, message in enumerate(messages, start=1):
        assert message.startswith(
            f"## 【冷链报警】宝鸡市陈仓区疾控中心等 101 个单位共 300 条（第 {part}/{parts} 条消息）\n"
        )
    # As few as possible: no message could have taken the next message's first card.
    for message, following in itertools.pairwise(messages):
        first_block = following.split("\n\n")[1]
        assert nbytes(message) + 2 + nbytes(first_block) > WECOM_MAX_BYTES


@pytest.mark.parametrize("first_part", [0, 9])  # a one-digit and a two-digit part marker ("第 10/14 条消息")
def test_a_merged_message_may_fill_4096_bytes_exactly_never_4097(first_part: int) -> None:
    cards = [card(alarm_id=i) for i in range(1, 161)]
    before = wecom_markdown(cards, NOW)
    assert len(before) >= 12
    cause_line = nbytes("\n> 原因：")
    # The first message from ``first_part`` on with room for a cause line on its last card (the
    # precondition for padding that card to the byte).
    part = next(p for p in range(first_part, len(before) - 1) if WECOM_MAX_BYTES - nbytes(before[p]) > cause_line)
    assert (part < 9) == (first_part < 9)
    ids = alarm_ids(before[part])
    slack = WECOM_MAX_BYTES - nbytes(before[part])
    last = ids[-1] - 1

    cards[last] = card(alarm_id=ids[-1], cause="x" * (slack - cause_line))
    exact = wecom_markdown(cards, NOW)
    assert nbytes(exact[part]) == WECOM_MAX_BYTES
    assert alarm_ids(exact[part]) == ids

    cards[last] = card(alarm_id=ids[-1], cause="x" * (slack - cause_line + 1))
    over = wecom_markdown(cards, NOW)
    assert all(nbytes(m) <= WECOM_MAX_BYTES for m in over)
    assert alarm_ids(over[part]) == ids[:-1]
    assert alarm_ids(over[part + 1])[0] == ids[-1]


def test_merged_list_form() -> None:
    (message,) = wecom_markdown([card(alarm_id=1, found_late=True, cause="停电"), card(alarm_id=2, level=3)], NOW)
    assert message.split("\n\n")[1] == (
        '**1. 温度超上限** <font color="warning">严重</font> 西安市雁塔区疾病预防控制中心（610113）冷库 1 / 冷藏室\n'
        '> <font color="warning">9.3 ℃</font>（限值 2.0～8.0 ℃） · 05-06 14:30 起已 35 分钟 · 二级负责人：升级通知'
        ' · 报警编号 1 · <font color="warning">迟报</font>\n'
        "> 原因：停电\n"
        '> 处置：<font color="warning">尚无人确认</font>\n'
        f"[详情]({LINK})"
    )
    assert "三级负责人：升级通知 · 报警编号 2" in message


def test_huge_card_inside_a_burst_is_cut_and_the_rest_still_sent() -> None:
    cards = [card(alarm_id=i) for i in range(1, 40)] + [card(alarm_id=99, cause="说明" * 4000)]
    messages = wecom_markdown(cards, NOW)
    assert all(nbytes(m) <= WECOM_MAX_BYTES for m in messages)
    assert sorted(i for m in messages for i in alarm_ids(m)) == [*range(1, 40), 99]
    assert sum(m.count(f"({LINK})") for m in messages) == 40
    assert any(re.search(r"^> 原因：(说明)+说?…$", m, re.MULTILINE) for m in messages)


def test_no_cards_no_messages() -> None:
    assert wecom_markdown([], NOW) == []


def test_wecom_payload_shape() -> None:
    assert wecom_payload("## 测试") == {"msgtype": "markdown", "markdown": {"content": "## 测试"}}


# --- rate limit --------------------------------------------------------------------------------


def test_under_the_limit_send_now() -> None:
    sent = [NOW - timedelta(seconds=s) for s in range(19)]
    assert RobotRateLimiter.next_slot(sent, NOW) == NOW
    assert RobotRateLimiter.next_slot([], NOW) == NOW


def test_twenty_in_the_last_minute_wait_for_the_oldest_to_leave() -> None:
    sent = [NOW - timedelta(seconds=59 - s) for s in range(20)]  # 59 s ago … now
    assert RobotRateLimiter.next_slot(sent, NOW) == NOW + timedelta(seconds=1)
    assert next_slot(list(reversed(sent)), NOW) == NOW + timedelta(seconds=1)  # order does not matter


def test_old_sends_leave_the_window() -> None:
    sent = [NOW - timedelta(seconds=60)] + [NOW - timedelta(seconds=10)] * 19
    assert RobotRateLimiter.next_slot(sent, NOW) == NOW  # the 60 s old one no longer counts


def test_over_the_limit_waits_for_enough_to_leave() -> None:
    sent = [NOW - timedelta(seconds=50 - s) for s in range(25)]  # 50 s ago … 26 s ago
    # Six must leave; the sixth oldest was sent 45 s ago, so it leaves in 15 s.
    assert RobotRateLimiter.next_slot(sent, NOW) == NOW + timedelta(seconds=15)
    assert RobotRateLimiter.next_slot(sent, NOW, per_minute=30) == NOW
    with pytest.raises(ValueError, match="至少为 1"):
        RobotRateLimiter.next_slot(sent, NOW, per_minute=0)


# --- WeChat template message --------------------------------------------------------------------


def test_template_message_body() -> None:
    body = template_message("oABC123", "TPL-1", card(found_late=True, cause="门未关"), "https://mp.example/a/17")
    assert body["touser"] == "oABC123"
    assert body["template_id"] == "TPL-1"
    assert body["url"] == "https://mp.example/a/17"
    assert body["data"] == {
        "first": {"value": "【冷链报警】二级负责人：升级通知"},
        "keyword1": {"value": "西安市雁塔区疾病预防控制中心"},
        "keyword2": {"value": "冷库 1 冷藏室"},
        "keyword3": {"value": "温度超上限 9.3℃"},
        "keyword4": {"value": "05-06 14:30起，已35分钟"},
        "remark": {
            "value": "限值 2.0～8.0 ℃；原因：门未关；迟报：补传数据或通知中断后才发出；处置：尚无人确认；"
            "请尽快到场处置并在平台确认"
        },
    }
    json.dumps(body, ensure_ascii=False)  # serialisable as-is


def test_template_keywords_are_cut_to_twenty_characters_on_one_line() -> None:
    body = template_message("o1", "T", card(unit_name="很长的单位名称" * 5, equipment_name="冰箱\n二号"), LINK)
    keyword1 = body["data"]["keyword1"]["value"]
    assert len(keyword1) == 20 and keyword1.endswith("…")
    assert body["data"]["keyword2"]["value"] == "冰箱 二号 冷藏室"
    assert all(len(body["data"][f"keyword{i}"]["value"]) <= 20 for i in range(1, 5))
    with pytest.raises(ValueError, match="openid"):
        template_message(" ", "T", card(), LINK)


# --- signed webhook -------------------------------------------------------------------------------

SECRET = b"s3cret"
TS = 1_700_000_000


def test_hmac_known_answer() -> None:
    body, headers = signed_webhook({"b": "冷链", "a": 1}, SECRET, TS)
    assert body == '{"a":1,"b":"冷链"}'.encode()
    # Computed independently: printf '%s' '1700000000.{"a":1,"b":"冷链"}' | openssl dgst -sha256 -hmac s3cret
    assert headers["X-Coldchain-Signature"] == (
        "sha256=ce8faf95dde2df2781e8c6055972319e5cd516122041941b9f9b5db45ce88489"
    )
    assert headers["X-Coldchain-Timestamp"] == "1700000000"
    assert headers["Content-Type"] == "application/json; charset=utf-8"
    expected = hmac.new(SECRET, b"1700000000." + body, hashlib.sha256).hexdigest()
    assert headers["X-Coldchain-Signature"] == f"sha256={expected}"


def test_canonical_json_refuses_what_is_not_json() -> None:
    with pytest.raises(ValueError):
        signed_webhook({"t": float("nan")}, SECRET, TS)
    with pytest.raises(TypeError):
        signed_webhook({"at": NOW}, SECRET, TS)
    with pytest.raises(ValueError, match="密钥"):
        signed_webhook({"a": 1}, b"", TS)


def test_verify_accepts_the_genuine_request() -> None:
    body, headers = signed_webhook({"alarm_id": 17, "单位": "雁塔区"}, SECRET, TS)
    assert verify_signature(body, headers, SECRET, now=TS + 10)
    assert verify_signature(body, {k.lower(): v for k, v in headers.items()}, SECRET, now=TS)
    assert verify_signature(body, headers, SECRET, now=TS + 300)  # the edge of the tolerance
    assert verify_signature(body, headers, SECRET, now=TS - 300)  # sender's clock slightly ahead


def test_verify_rejects_tampering_and_replays() -> None:
    body, headers = signed_webhook({"alarm_id": 17, "level": 2}, SECRET, TS)
    assert not verify_signature(body.replace(b'"level":2', b'"level":3'), headers, SECRET, now=TS)
    assert not verify_signature(body, headers, b"other", now=TS)
    assert not verify_signature(body, headers, SECRET, now=TS + 301)
    assert not verify_signature(body, headers, SECRET, now=TS - 301)  # a timestamp far in the future
    assert not verify_signature(body, {**headers, "X-Coldchain-Timestamp": str(TS + 100)}, SECRET, now=TS + 100)
    flipped = headers["X-Coldchain-Signature"][:-1] + ("0" if headers["X-Coldchain-Signature"][-1] != "0" else "1")
    assert not verify_signature(body, {**headers, "X-Coldchain-Signature": flipped}, SECRET, now=TS)
    assert not verify_signature(body, {"X-Coldchain-Timestamp": str(TS)}, SECRET, now=TS)
    assert not verify_signature(body, {**headers, "X-Coldchain-Timestamp": "soon"}, SECRET, now=TS)
    assert not verify_signature(body, {**headers, "X-Coldchain-Signature": "sha256=签名"}, SECRET, now=TS)
    assert not verify_signature(body, headers, b"", now=TS)
