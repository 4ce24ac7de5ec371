"""What an alarm notification says, per channel (DC4): pure formatting, signing and rate arithmetic.

Three channels, one content model (:class:`AlarmCard`):

* WeCom group robots (企业微信群机器人), per unit and level: markdown, at most 4 096 bytes per
  message and 20 messages per minute per robot. A burst (a site's power cut, a gateway coming
  back after an outage) is merged into as few messages as fit — never dropped — so that the group
  reads one event rather than a wall of pings, and the rate limit is not blown.
* WeChat official-account template messages to each responsible person's openid.
* A generic JSON webhook, signed with HMAC-SHA256 so receivers can trust and de-duplicate it.

Nothing here sends anything or reads the clock; the sender passes ``now`` and does the I/O.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Literal, TypedDict, get_args

from alarms.escalation import STEP_KINDS, StepKind
from coldchain.core.terms import BEIJING

__all__ = [
    "WECOM_MAX_BYTES",
    "AlarmCard",
    "RobotRateLimiter",
    "Severity",
    "TemplateField",
    "TemplateMessage",
    "WecomMarkdown",
    "WecomPayload",
    "format_duration",
    "next_slot",
    "signed_webhook",
    "template_message",
    "verify_signature",
    "wecom_markdown",
    "wecom_payload",
]

Severity = Literal["critical", "major", "minor"]
SEVERITIES: frozenset[str] = frozenset(get_args(Severity))

WECOM_MAX_BYTES = 4096
WECHAT_FIELD_CHARS = 20
ELLIPSIS = "…"
SEPARATOR = "\n\n"

LEVEL_LABELS = {1: "一级负责人", 2: "二级负责人", 3: "三级负责人"}
SEVERITY_LABELS = {"critical": "严重", "major": "重要", "minor": "一般"}
SEVERITY_COLORS = {"critical": "warning", "major": "warning", "minor": "comment"}
SEVERITY_ORDER = {"critical": 0, "major": 1, "minor": 2}
STEP_LABELS = {
    "open": "报警通知",
    "escalate": "升级通知",
    "reminder": "持续未恢复提醒",
    "resolved_reminder": "已恢复待关闭",
}


@dataclass(frozen=True)
class AlarmCard:
    """Everything a person needs to act on one alarm, already resolved to names and labels.

    ``kind_label`` is passed in (the rule module owns the wording); ``level`` is the highest level
    this notification is for; ``found_late`` marks an alarm detected from back-filled data or a
    step sent after an outage, so the reader knows the times are not "just now". Validated on
    construction so a bad card fails in the scheduler, not as a garbled message in a group chat.
    """

    alarm_id: int
    unit_name: str
    unit_code: str
    equipment_name: str
    compartment_name: str
    kind_label: str
    severity: Severity
    temperature: float | None
    t_min: float | None
    t_max: float | None
    since: datetime
    duration: timedelta
    level: int
    step_kind: StepKind
    link: str
    found_late: bool = False
    cause: str | None = None

    def __post_init__(self) -> None:
        if self.severity not in SEVERITIES:
            raise ValueError(f"严重程度应为 critical、major 或 minor，实际为 {self.severity!r}")
        if self.level not in LEVEL_LABELS:
            raise ValueError(f"负责人级别应为 1–3，实际为 {self.level!r}")
        if self.step_kind not in STEP_KINDS:
            raise ValueError(f"通知步骤类型无效：{self.step_kind!r}")
        if self.since.tzinfo is None or self.since.utcoffset() is None:
            raise ValueError(f"报警开始时间必须带时区：{self.since.isoformat()}")
        if not self.link.startswith(("https://", "http://")) or any(ch.isspace() or ch in "()" for ch in self.link):
            # A space or parenthesis would end the markdown link early and the button would go nowhere.
            raise ValueError(f"报警链接应为不含空格和括号的 http(s) 地址，实际为 {self.link!r}")


# ---------------------------------------------------------------------------------------------
# Small formatting helpers


def beijing(moment: datetime) -> str:
    """'MM-DD HH:MM' in Beijing time: what every reader in Shaanxi expects, whatever the server's zone."""
    if moment.tzinfo is None or moment.utcoffset() is None:
        raise ValueError(f"时间必须带时区：{moment.isoformat()}")
    return f"{moment.astimezone(BEIJING):%m-%d %H:%M}"


def format_duration(duration: timedelta, *, compact: bool = False) -> str:
    """'35 分钟', '2 小时 5 分钟', '1 天 3 小时'; minutes dropped beyond a day, where they no longer matter.

    Negative durations (a gateway clock slightly ahead of ours) read as under a minute rather than
    failing a notification over a cosmetic value. ``compact`` drops the spaces for the 20-character
    WeChat template fields.
    """
    minutes = max(0, int(duration.total_seconds()) // 60)
    days, rest = divmod(minutes, 24 * 60)
    hours, mins = divmod(rest, 60)
    if days:
        parts = [f"{days} 天"] + ([f"{hours} 小时"] if hours else [])
    elif hours:
        parts = [f"{hours} 小时"] + ([f"{mins} 分钟"] if mins else [])
    elif mins:
        parts = [f"{mins} 分钟"]
    else:
        parts = ["不足 1 分钟"]
    text = " ".join(parts)
    return text.replace(" ", "") if compact else text


def _clean(text: str) -> str:
    """One line of text: a newline in a device name would break the markdown quote block."""
    return " ".join(text.split())


def _cut(text: str, limit: int) -> str:
    """At most ``limit`` characters, the last of them '…' when anything was cut."""
    if len(text) <= limit:
        return text
    return text[: max(0, limit - 1)] + ELLIPSIS


def _limits(t_min: float | None, t_max: float | None) -> str | None:
    if t_min is not None and t_max is not None:
        return f"{t_min:.1f}～{t_max:.1f} ℃"
    if t_min is not None:
        return f"≥{t_min:.1f} ℃"
    if t_max is not None:
        return f"≤{t_max:.1f} ℃"
    return None


def _utf8_len(text: str) -> int:
    return len(text.encode("utf-8"))


# ---------------------------------------------------------------------------------------------
# WeCom group robot markdown


def _map_text(card: AlarmCard, change: Callable[[str], str]) -> AlarmCard:
    """The card with ``change`` applied to every free-text field — all text but the link."""
    return replace(
        card,
        unit_name=change(card.unit_name),
        unit_code=change(card.unit_code),
        equipment_name=change(card.equipment_name),
        compartment_name=change(card.compartment_name),
        kind_label=change(card.kind_label),
        cause=None if card.cause is None else change(card.cause),
    )


def _longest_text(card: AlarmCard) -> int:
    texts = (card.unit_name, card.unit_code, card.equipment_name, card.compartment_name, card.kind_label, card.cause)
    return max(len(text or "") for text in texts)


def _card_block(card: AlarmCard, number: int, compact: bool) -> str:
    """One alarm as a WeCom markdown block (bold, <font>, > quotes and links only).

    ``compact`` is the list form for merged messages: the same facts in three or four lines instead
    of six to nine, so a burst takes fewer messages (and less of the robot's per-minute budget).
    """
    color = SEVERITY_COLORS[card.severity]
    limits = _limits(card.t_min, card.t_max)
    lasted = format_duration(card.duration)
    resolved = card.step_kind == "resolved_reminder"
    if compact:
        reading = "无读数" if card.temperature is None else f'<font color="warning">{card.temperature:.1f} ℃</font>'
        facts = [
            reading + (f"（限值 {limits}）" if limits else ""),
            f"{beijing(card.since)} 起" + (f"持续 {lasted}" if resolved else f"已 {lasted}"),
            f"{LEVEL_LABELS[card.level]}：{STEP_LABELS[card.step_kind]}",
            f"报警编号 {card.alarm_id}",
        ]
        if card.found_late:
            facts.append('<font color="warning">迟报</font>')
        lines = [
            f'**{number}. {card.kind_label}** <font color="{color}">{SEVERITY_LABELS[card.severity]}</font> '
            f"{card.unit_name}（{card.unit_code}）{card.equipment_name} / {card.compartment_name}",
            "> " + " · ".join(facts),
        ]
        if card.cause:
            lines.append(f"> 原因：{card.cause}")
        lines.append(f"[{'关闭' if resolved else '详情'}]({card.link})")
        return "\n".join(lines)
    lines = [
        f'**{number}. {card.kind_label}** <font color="{color}">{SEVERITY_LABELS[card.severity]}</font>',
        f"> 单位：{card.unit_name}（{card.unit_code}）",
        f"> 位置：{card.equipment_name} / {card.compartment_name}",
    ]
    reading = "无读数" if card.temperature is None else f'<font color="warning">{card.temperature:.1f} ℃</font>'
    lines.append(f"> 温度：{reading}" + (f"，限值 {limits}" if limits else ""))
    if resolved:
        lines.append(f'> 时间：{beijing(card.since)} 起，持续 {lasted}，<font color="info">已恢复</font>')
    else:
        lines.append(f"> 时间：{beijing(card.since)} 起，已持续 {lasted}")
    lines.append(f"> 通知：{LEVEL_LABELS[card.level]} · {STEP_LABELS[card.step_kind]} · 报警编号 {card.alarm_id}")
    if card.cause:
        lines.append(f"> 原因：{card.cause}")
    if card.found_late:
        lines.append('> <font color="warning">迟报</font>：补传数据或通知中断后才发出，时间以上方为准')
    if resolved:
        lines.append(f"[填写原因与处置并关闭]({card.link})")
    else:
        lines.append(f"[查看并确认到场]({card.link})")
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
    limits = _limits(card.t_min, card.t_max)
    remark_parts = [f"限值 {limits}" if limits else "", f"原因：{card.cause}" if card.cause else ""]
    if card.found_late:
        remark_parts.append("迟报：补传数据或通知中断后才发出")
    resolved = card.step_kind == "resolved_reminder"
    remark_parts.append("请填写原因与处置并关闭" if resolved else "请尽快到场处置并在平台确认")
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
# Signed JSON webhook

TIMESTAMP_HEADER = "X-Coldchain-Timestamp"
SIGNATURE_HEADER = "X-Coldchain-Signature"


def canonical_json(body: Mapping[str, object]) -> bytes:
    """The one byte form of ``body`` that is signed: sorted keys, compact, UTF-8 Chinese as-is.

    No silent conversions (a datetime must be made a string by the caller) and no NaN, which is not
    JSON and which a strict receiver would refuse after the signature had already been checked.
    """
    return json.dumps(body, sort_keys=True, ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode("utf-8")


def _signature(body: bytes, secret: bytes, timestamp: int) -> str:
    return hmac.new(secret, f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()


def signed_webhook(body: Mapping[str, object], secret: bytes, timestamp: int) -> tuple[bytes, dict[str, str]]:
    """Bytes to POST and the headers that let the receiver check them.

    The timestamp is inside the signed text so a captured request cannot be replayed later with a
    fresh timestamp; receivers check it with :func:`verify_signature`.
    """
    if not secret:
        raise ValueError("Webhook 签名密钥不能为空")
    payload = canonical_json(body)
    headers = {
        "Content-Type": "application/json; charset=utf-8",
        TIMESTAMP_HEADER: str(timestamp),
        SIGNATURE_HEADER: f"sha256={_signature(payload, secret, timestamp)}",
    }
    return payload, headers


def verify_signature(body: bytes, headers: Mapping[str, str], secret: bytes, now: int, tolerance: int = 300) -> bool:
    """For receivers: true only for the exact bytes, signed with ``secret``, within ``tolerance`` seconds of ``now``.

    Header names are matched case-insensitively (HTTP frameworks differ); any malformed input is
    simply "not verified" rather than an exception, and the comparison is constant-time.
    """
    if not secret:
        return False
    lowered = {name.lower(): value for name, value in headers.items()}
    raw_timestamp = lowered.get(TIMESTAMP_HEADER.lower(), "").strip()
    claimed = lowered.get(SIGNATURE_HEADER.lower(), "").strip()
    if not (raw_timestamp.isascii() and raw_timestamp.isdigit() and len(raw_timestamp) <= 12):
        return False
    if not claimed.startswith("sha256="):
        return False
    timestamp = int(raw_timestamp)
    if abs(now - timestamp) > tolerance:
        return False
    expected = _signature(body, secret, timestamp).encode()
    return hmac.compare_digest(claimed.removeprefix("sha256=").encode("utf-8", "replace"), expected)
