"""What an alarm notification says, per channel (DC4): pure formatting and rate arithmetic.

Three channels, one content model (:class:`alarms.card.AlarmCard`):

* WeCom group robots (企业微信群机器人), per unit and level: markdown, at most 4 096 bytes per
  message and 20 messages per minute per robot. A burst (a site's power cut, a gateway coming
  back after an outage) is merged into as few messages as fit — never dropped — so that the group
  reads one event rather than a wall of pings, and the rate limit is not blown. Markdown cannot
  @mention anyone, so a message that sends people out is followed by a short text message that
  mentions the responsible people by mobile (:func:`wecom_mention`).
* WeChat official-account template messages to each responsible person's openid.
* A generic JSON webhook, signed with HMAC-SHA256 (:mod:`alarms.signing`).

Every message says the state (issue #17): who acknowledged, when, through which channel and with
what comment — or that nobody has yet; who is responsible and their phones; once it is over, how
long it lasted and its extremes; once closed, the cause and the vaccines' fate.

Nothing here sends anything or reads the clock; the sender passes ``now`` and does the I/O.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import replace
from datetime import datetime, timedelta
from typing import Literal, TypedDict

from alarms.card import (
    LEVEL_LABELS,
    MENTION_KINDS,
    SEVERITY_LABELS,
    SEVERITY_ORDER,
    STEP_LABELS,
    AlarmCard,
    Severity,
    beijing,
    closure_text,
    format_duration,
    handling_text,
    limits_text,
    mobiles,
    outcome_text,
    people_text,
)
from alarms.card import clean as _clean
from alarms.card import cut as _cut
from alarms.signing import canonical_json, signed_webhook, verify_signature

__all__ = [
    "LEVEL_LABELS",
    "STEP_LABELS",
    "WECOM_MAX_BYTES",
    "AlarmCard",
    "RobotRateLimiter",
    "Severity",
    "TemplateField",
    "TemplateMessage",
    "WecomMarkdown",
    "WecomPayload",
    "canonical_json",
    "format_duration",
    "next_slot",
    "signed_webhook",
    "template_message",
    "verify_signature",
    "wecom_markdown",
    "wecom_mention",
    "wecom_payload",
]

WECOM_MAX_BYTES = 4096
WECOM_TEXT_MAX_BYTES = 2048
WECHAT_FIELD_CHARS = 20
SEPARATOR = "\n\n"
SEVERITY_COLORS = {"critical": "warning", "major": "warning", "minor": "comment"}
TITLES = {"ack_notice": "已确认", "resolved_notice": "已恢复", "closed_notice": "已关闭"}


def _utf8_len(text: str) -> int:
    return len(text.encode("utf-8"))


# ---------------------------------------------------------------------------------------------
# WeCom group robot markdown


def _map_text(card: AlarmCard, change: Callable[[str], str]) -> AlarmCard:
    """The card with ``change`` applied to every free-text field — all text but the link."""
    handling = card.handling
    closure = card.closure
    return replace(
        card,
        unit_name=change(card.unit_name),
        unit_code=change(card.unit_code),
        equipment_name=change(card.equipment_name),
        compartment_name=change(card.compartment_name),
        kind_label=change(card.kind_label),
        cause=None if card.cause is None else change(card.cause),
        handling=None
        if handling is None
        else replace(
            handling, by=change(handling.by), comment=None if handling.comment is None else change(handling.comment)
        ),
        people=tuple(replace(p, name=change(p.name)) for p in card.people),
        closure=None
        if closure is None
        else replace(
            closure,
            by=change(closure.by),
            cause=change(closure.cause),
            action=change(closure.action),
            vaccine_disposition=change(closure.vaccine_disposition),
        ),
    )


def _longest_text(card: AlarmCard) -> int:
    texts = [card.unit_name, card.unit_code, card.equipment_name, card.compartment_name, card.kind_label, card.cause]
    if card.handling is not None:
        texts += [card.handling.by, card.handling.comment]
    texts += [p.name for p in card.people]
    if card.closure is not None:
        c = card.closure
        texts += [c.by, c.cause, c.action, c.vaccine_disposition]
    return max(len(text or "") for text in texts)


def _state_lines(card: AlarmCard) -> list[str]:
    """What closes the loop, for every kind of notice: who is on it (or nobody yet), how it ended,
    how it was closed, and who answers for it — in that order of urgency."""
    lines: list[str] = []
    if card.step_kind != "closed_notice":
        ack = handling_text(card)
        lines.append(f"处置：{ack}" if card.handling else f'处置：<font color="warning">{ack}</font>')
    outcome = outcome_text(card)
    if outcome:
        lines.append(f'<font color="info">{outcome}</font>')
    closure = closure_text(card)
    if closure:
        lines.append(closure)
    people = people_text(card)
    if people and card.step_kind != "closed_notice":
        lines.append(f"负责人：{people}")
    return lines


def _button(card: AlarmCard) -> str:
    if card.step_kind == "closed_notice":
        return "查看记录"
    if card.is_over:
        return "填写原因与处置并关闭"
    if card.step_kind == "ack_notice":
        return "查看详情"
    return "查看并确认到场"


def _card_block(card: AlarmCard, number: int, compact: bool) -> str:
    """One alarm as a WeCom markdown block (bold, <font>, > quotes and links only).

    ``compact`` is the list form for merged messages: the same facts in fewer lines, so a burst
    takes fewer messages (and less of the robot's per-minute budget).
    """
    color = SEVERITY_COLORS[card.severity]
    limits = limits_text(card.t_min, card.t_max)
    lasted = format_duration(card.duration)
    title = f" · {TITLES[card.step_kind]}" if card.step_kind in TITLES else ""
    joiner = "：" if compact else " · "
    notice = f"{LEVEL_LABELS[card.level]}{joiner}{STEP_LABELS[card.step_kind]} · 报警编号 {card.alarm_id}"
    reading = "无读数" if card.temperature is None else f'<font color="warning">{card.temperature:.1f} ℃</font>'
    over = card.is_over
    if compact:
        facts = [
            reading + (f"（限值 {limits}）" if limits else ""),
            f"{beijing(card.since)} 起" + (f"持续 {lasted}" if over else f"已 {lasted}"),
            notice,
        ]
        if card.found_late:
            facts.append('<font color="warning">迟报</font>')
        lines = [
            f'**{number}. {card.kind_label}{title}** <font color="{color}">{SEVERITY_LABELS[card.severity]}</font> '
            f"{card.unit_name}（{card.unit_code}）{card.equipment_name} / {card.compartment_name}",
            "> " + " · ".join(facts),
        ]
        if card.cause:
            lines.append(f"> 原因：{card.cause}")
        lines += [f"> {line}" for line in _state_lines(card)]
        lines.append(f"[{'关闭' if over and card.step_kind != 'closed_notice' else '详情'}]({card.link})")
        return "\n".join(lines)
    lines = [
        f'**{number}. {card.kind_label}{title}** <font color="{color}">{SEVERITY_LABELS[card.severity]}</font>',
        f"> 单位：{card.unit_name}（{card.unit_code}）",
        f"> 位置：{card.equipment_name} / {card.compartment_name}",
        f"> 温度：{reading}" + (f"，限值 {limits}" if limits else ""),
    ]
    if over:
        lines.append(f'> 时间：{beijing(card.since)} 起，持续 {lasted}，<font color="info">已恢复</font>')
    else:
        lines.append(f"> 时间：{beijing(card.since)} 起，已持续 {lasted}")
    lines.append(f"> 通知：{notice}")
    if card.cause:
        lines.append(f"> 原因：{card.cause}")
    lines += [f"> {line}" for line in _state_lines(card)]
    if card.found_late:
        lines.append('> <font color="warning">迟报</font>：补传数据或通知中断后才发出，时间以上方为准')
    lines.append(f"[{_button(card)}]({card.link})")
    return "\n".join(lines)


def _fitted_block(card: AlarmCard, number: int, budget: int, compact: bool) -> str:
    """The card's block, its free-text fields cut with '…' just enough to fit ``budget`` bytes.

    A card alone too big for a message is shortened rather than dropped; the link, the numbers and
    the times are never cut, because they are what the reader acts on. Binary search on one common
    character cap keeps short fields whole and cuts the longest ones first.
    """
    clean = _map_text(card, _clean)
    block = _card_block(clean, number, compact)
    if _utf8_len(block) <= budget:
        return block

    def capped(cap: int) -> str:
        return _card_block(_map_text(clean, lambda text: _cut(text, cap)), number, compact)

    low, high = 1, _longest_text(clean)
    if _utf8_len(capped(low)) > budget:
        raise ValueError(f"报警 {card.alarm_id} 的链接过长，无法放入一条企业微信消息（{WECOM_MAX_BYTES} 字节）")
    while low < high:  # largest cap that fits
        mid = (low + high + 1) // 2
        if _utf8_len(capped(mid)) <= budget:
            low = mid
        else:
            high = mid - 1
    return capped(low)


def _header_maker(cards: Sequence[AlarmCard], now: datetime) -> Callable[[int, int], str]:
    """The summary line: a burst reads as one event ('XX 等 3 个单位共 40 条'), split parts say which part."""
    first = _cut(_clean(cards[0].unit_name), 30)
    sent = f'<font color="comment">{beijing(now)} 发出</font>'
    if len(cards) == 1:
        title = f"## 【冷链报警】{first}"
    else:
        units = len({card.unit_code for card in cards})
        who = f"{first}等 {units} 个单位" if units > 1 else first
        title = f"## 【冷链报警】{who}共 {len(cards)} 条"

    def header(part: int, parts: int) -> str:
        marker = f"（第 {part}/{parts} 条消息）" if parts > 1 else ""
        return f"{title}{marker}\n{sent}"

    return header


def _next_fit(blocks: Sequence[str], room: Callable[[int], int]) -> list[list[str]]:
    """Consecutive groups, group k holding at most ``room(k)`` bytes: the fewest groups that keep the order.

    Greedy is optimal here: after each group it has covered at least as many blocks as any other
    split could, because a group that starts no earlier reaches no less far with the same room.
    """
    groups: list[list[str]] = []
    used = 0
    for block in blocks:
        size = _utf8_len(block)
        if groups and used + len(SEPARATOR) + size <= room(len(groups)):
            groups[-1].append(block)
            used += len(SEPARATOR) + size
        else:
            groups.append([block])
            used = size
    return groups


def wecom_markdown(cards: Sequence[AlarmCard], now: datetime) -> list[str]:
    """Markdown messages for one WeCom robot: every card exactly once, each message ≤ 4 096 UTF-8 bytes.

    One card gives one detailed message; many are listed compactly and merged into as few messages
    as fit, most severe first
    (stable, so the caller's order holds within a severity). Each message starts with the summary
    of the whole burst; when it takes several messages they are numbered, so "1/3" tells the group
    more is coming. WeCom counts bytes, not characters — a Chinese character is three — hence the
    byte arithmetic throughout.
    """
    if not cards:
        return []
    ordered = sorted(cards, key=lambda card: SEVERITY_ORDER[card.severity])
    header = _header_maker(ordered, now)
    compact = len(ordered) > 1
    # Try a single message first (no part marker), then part markers "第 k/P 条消息" with P of one,
    # two, three … digits. With P's width fixed, part k's header length is exact (digits are one
    # byte each), so each message may fill to the byte; a card cut to fit the widest header fits any.
    widths: list[int | None] = [None, *range(1, len(str(len(ordered))) + 1)]
    for width in widths:

        def room(part: int, width: int | None = width) -> int:
            shown = header(1, 1) if width is None else header(part, 10**width - 1)
            return WECOM_MAX_BYTES - _utf8_len(shown) - len(SEPARATOR)

        smallest = room(1) if width is None else room(10**width - 1)
        blocks = [_fitted_block(card, number, smallest, compact) for number, card in enumerate(ordered, start=1)]
        groups = _next_fit(blocks, room)
        if (width is None and len(groups) == 1) or (width is not None and len(str(len(groups))) <= width):
            parts = len(groups)
            return [
                header(part, parts) + SEPARATOR + SEPARATOR.join(group) for part, group in enumerate(groups, start=1)
            ]
    raise AssertionError("unreachable: the widest part marker always fits")  # pragma: no cover


class WecomMarkdown(TypedDict):
    content: str


class WecomPayload(TypedDict):
    msgtype: Literal["markdown"]
    markdown: WecomMarkdown


def wecom_payload(markdown: str) -> WecomPayload:
    """The JSON body the WeCom robot webhook takes; refuses oversize text, which WeCom would reject anyway."""
    if _utf8_len(markdown) > WECOM_MAX_BYTES:
        raise ValueError(f"企业微信 markdown 消息不能超过 {WECOM_MAX_BYTES} 字节，实际为 {_utf8_len(markdown)} 字节")
    return {"msgtype": "markdown", "markdown": {"content": markdown}}


class RobotRateLimiter:
    """WeCom allows a robot 20 messages a minute; this says when the next one may go.

    The sender delays to the returned slot and never drops: a burst becomes merged messages
    (:func:`wecom_markdown`) sent a little later, which is the whole point of DC4's rule.
    """

    WINDOW = timedelta(seconds=60)

    @staticmethod
    def next_slot(sent_times: Sequence[datetime], now: datetime, per_minute: int = 20) -> datetime:
        """``now`` if fewer than ``per_minute`` messages went in the last 60 s, else when enough leave the window.

        The window is sliding: a message sent at t counts until t + 60 s (exclusive), so with the
        limit reached the next slot is the moment the oldest message in the window falls out.
        """
        if per_minute < 1:
            raise ValueError(f"每分钟条数必须至少为 1，实际为 {per_minute}")
        recent = sorted(t for t in sent_times if t > now - RobotRateLimiter.WINDOW)
        if len(recent) < per_minute:
            return now
        # len(recent) - per_minute + 1 of them must leave; the last of those decides.
        return max(now, recent[len(recent) - per_minute] + RobotRateLimiter.WINDOW)


next_slot = RobotRateLimiter.next_slot
"""Module-level alias of :meth:`RobotRateLimiter.next_slot`, for callers that want a plain function."""


# ---------------------------------------------------------------------------------------------
# WeChat official-account template message


class TemplateField(TypedDict):
    value: str


class TemplateMessage(TypedDict):
    touser: str
    template_id: str
    url: str
    data: dict[str, TemplateField]


def template_message(openid: str, template_id: str, card: AlarmCard, link: str) -> TemplateMessage:
    """Body for WeChat's template-message API (``cgi-bin/message/template/send``).

    Since 2023-05-04 WeChat no longer shows ``first`` and ``remark`` and cuts each keyword to 20
    characters with no line breaks. So the essentials (unit, place, reading, time) live in
    ``keyword1``–``keyword4``, each cleaned to one line and cut to 20 characters here (so the cut is
    ours, with '…', not WeChat's), while ``first``/``remark`` carry the level and limits for
    clients that still show them. ``link`` is separate from ``card.link`` because the WeChat link
    may need to go through the official account's sign-in.
    """
    if not openid.strip() or not template_id.strip():
        raise ValueError("模板消息需要接收人 openid 和模板 ID")
    reading = card.kind_label if card.temperature is None else f"{card.kind_label} {card.temperature:.1f}℃"
    when = f"{beijing(card.since)}起，已{format_duration(card.duration, compact=True)}"
    if card.step_kind == "ack_notice" and card.handling is not None:
        when = f"{_clean(card.handling.by)}已确认"
    elif card.resolved_at is not None and card.is_over:
        when = f"已恢复，持续{format_duration(card.resolved_at - card.since, compact=True)}"
    limits = limits_text(card.t_min, card.t_max)
    remark_parts = [f"限值 {limits}" if limits else "", f"原因：{card.cause}" if card.cause else ""]
    if card.found_late:
        remark_parts.append("迟报：补传数据或通知中断后才发出")
    remark_parts += [f"处置：{handling_text(card)}", outcome_text(card) or "", closure_text(card) or ""]
    if card.asks_action:
        remark_parts.append(f"负责人：{people_text(card)}" if card.people else "")
        remark_parts.append("请尽快到场处置并在平台确认")
    elif card.is_over and card.step_kind != "closed_notice":
        remark_parts.append("请填写原因与处置并关闭")
    values = {
        "first": f"【冷链报警】{LEVEL_LABELS[card.level]}：{STEP_LABELS[card.step_kind]}",
        "keyword1": _cut(_clean(card.unit_name), WECHAT_FIELD_CHARS),
        "keyword2": _cut(_clean(f"{card.equipment_name} {card.compartment_name}"), WECHAT_FIELD_CHARS),
        "keyword3": _cut(_clean(reading), WECHAT_FIELD_CHARS),
        "keyword4": _cut(when, WECHAT_FIELD_CHARS),
        "remark": _clean("；".join(part for part in remark_parts if part)),
    }
    return {
        "touser": openid,
        "template_id": template_id,
        "url": link,
        "data": {name: {"value": value} for name, value in values.items()},
    }


# ---------------------------------------------------------------------------------------------
# WeCom text message that @mentions people


class WecomText(TypedDict):
    content: str
    mentioned_mobile_list: list[str]


class WecomTextPayload(TypedDict):
    msgtype: Literal["text"]
    text: WecomText


def wecom_mention(cards: Sequence[AlarmCard]) -> WecomTextPayload | None:
    """The text message that follows a markdown message sending people out: it @mentions the
    responsible people of those alarms by mobile (CM15), which only WeCom's text messages can.

    None when no card is a new alarm or a new level, or nobody has a mobile on file: a mention of no one would
    spend one of the robot's 20 messages a minute for nothing."""
    phones = mobiles(list(cards))
    if not phones:
        return None
    acting = [card for card in cards if card.step_kind in MENTION_KINDS]
    ids = "、".join(str(card.alarm_id) for card in acting[:20]) + (" 等" if len(acting) > 20 else "")
    content = _cut(f"请负责人处理冷链报警（报警编号 {ids}），到场后在平台或微信中确认。", 300)
    assert _utf8_len(content) <= WECOM_TEXT_MAX_BYTES
    return {"msgtype": "text", "text": {"content": content, "mentioned_mobile_list": phones[:100]}}
