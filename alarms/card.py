"""What one alarm notification is about, already resolved to names and labels (:class:`AlarmCard`),
and the few lines every channel words the same way: when, the limits, who is on it, who answers.

Why its own module: the WeCom markdown, the WeChat template message and the signed webhook all
carry the same facts, and the facts that close the loop (issue #17) — who acknowledged, when,
through which channel, with what comment, or that nobody has yet; the responsible people and their
phones (CM15); how long it lasted and its extremes; the cause and the vaccines' fate — must read the
same in each. Pure: no clock, no I/O.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Literal, get_args

from alarms.escalation import STEP_KINDS, StepKind
from coldchain.core.terms import BEIJING

Severity = Literal["critical", "major", "minor"]
SEVERITIES: frozenset[str] = frozenset(get_args(Severity))

ELLIPSIS = "…"
LEVEL_LABELS = {1: "一级负责人", 2: "二级负责人", 3: "三级负责人"}
LEVEL_SHORT = {1: "一级", 2: "二级", 3: "三级"}
SEVERITY_LABELS = {"critical": "严重", "major": "重要", "minor": "一般"}
SEVERITY_ORDER = {"critical": 0, "major": 1, "minor": 2}
STEP_LABELS: dict[str, str] = {
    "open": "报警通知",
    "escalate": "升级通知",
    "reminder": "持续未恢复提醒",
    "resolved_reminder": "已恢复待关闭",
    "ack_notice": "已确认通知",
    "resolved_notice": "恢复通知",
    "closed_notice": "关闭通知",
}
CHANNEL_LABELS = {"web": "平台", "api": "平台", "wechat": "微信"}
ACTION_KINDS: frozenset[str] = frozenset({"open", "escalate", "reminder"})
"""Steps that ask someone to go and act."""
MENTION_KINDS: frozenset[str] = frozenset({"open", "escalate"})
"""Steps that @mention the responsible people: a new alarm and each new level. Not the reminders:
those people were mentioned when their level was reached, and every mention is one more of the
robot's 20 requests a minute — under a burst, a reminder's mention would delay other alarms."""


@dataclass(frozen=True)
class Handling:
    """Who acknowledged the alarm, when, through which channel, and what they said."""

    by: str
    at: datetime
    channel: str
    on_site: bool
    comment: str | None = None


@dataclass(frozen=True)
class Person:
    """A responsible person of the unit at one level (CM15): named in messages, phoned by people."""

    level: int
    name: str
    phone: str | None = None


@dataclass(frozen=True)
class Closure:
    """What the person who closed the alarm put on record."""

    by: str
    cause: str
    action: str
    vaccine_disposition: str


@dataclass(frozen=True)
class AlarmCard:
    """Everything a person needs to act on one alarm, already resolved to names and labels.

    ``kind_label`` is passed in (the rule module owns the wording); ``level`` is the highest level
    this notification is for; ``found_late`` marks an alarm detected from back-filled data or a
    step sent after an outage, so the reader knows the times are not "just now". ``handling`` is
    the acknowledgement (None: nobody yet), ``people`` the responsible people of the levels this
    notice goes to; ``resolved_at`` and the extremes ``lowest``/``highest`` are set once the
    condition is over, ``closure`` once it is closed. Validated on construction so a bad card fails
    in the scheduler, not as a garbled message in a group chat.
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
    handling: Handling | None = None
    people: tuple[Person, ...] = field(default=())
    resolved_at: datetime | None = None
    lowest: float | None = None
    highest: float | None = None
    closure: Closure | None = None

    def __post_init__(self) -> None:
        if self.severity not in SEVERITIES:
            raise ValueError(f"严重程度应为 critical、major 或 minor，实际为 {self.severity!r}")
        if self.level not in LEVEL_LABELS:
            raise ValueError(f"负责人级别应为 1–3，实际为 {self.level!r}")
        if self.step_kind not in STEP_KINDS:
            raise ValueError(f"通知步骤类型无效：{self.step_kind!r}")
        for label, moment in (("报警开始时间", self.since), ("恢复时间", self.resolved_at)):
            if moment is not None and (moment.tzinfo is None or moment.utcoffset() is None):
                raise ValueError(f"{label}必须带时区：{moment.isoformat()}")
        if not self.link.startswith(("https://", "http://")) or any(ch.isspace() or ch in "()" for ch in self.link):
            # A space or parenthesis would end the markdown link early and the button would go nowhere.
            raise ValueError(f"报警链接应为不含空格和括号的 http(s) 地址，实际为 {self.link!r}")

    @property
    def asks_action(self) -> bool:
        """Whether this notice sends someone out (as opposed to telling them how it went)."""
        return self.step_kind in ACTION_KINDS

    @property
    def is_over(self) -> bool:
        return self.step_kind in ("resolved_reminder", "resolved_notice", "closed_notice")


# ---------------------------------------------------------------------------------------------
# Wording shared by every channel


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


def clean(text: str) -> str:
    """One line of text: a newline in a device name would break the markdown quote block."""
    return " ".join(text.split())


def cut(text: str, limit: int) -> str:
    """At most ``limit`` characters, the last of them '…' when anything was cut."""
    if len(text) <= limit:
        return text
    return text[: max(0, limit - 1)] + ELLIPSIS


def limits_text(t_min: float | None, t_max: float | None) -> str | None:
    if t_min is not None and t_max is not None:
        return f"{t_min:.1f}～{t_max:.1f} ℃"
    if t_min is not None:
        return f"≥{t_min:.1f} ℃"
    if t_max is not None:
        return f"≤{t_max:.1f} ℃"
    return None


def handling_text(card: AlarmCard) -> str:
    """Who is on it: '张三 05-06 15:12 经微信确认，已在现场：“马上到”', or that nobody has yet.

    Every message carries it, so the officer woken at level 3 knows whether to drive out."""
    h = card.handling
    if h is None:
        return "尚无人确认"
    where = "，已在现场" if h.on_site else ""
    said = f"：“{clean(h.comment)}”" if h.comment and h.comment.strip() else ""
    return f"{clean(h.by)} {beijing(h.at)} 经{CHANNEL_LABELS.get(h.channel, h.channel)}确认{where}{said}"


def people_text(card: AlarmCard) -> str | None:
    """'一级 张三 13800000000；二级 李四 13900000000' — the people this notice is for, with phones."""
    if not card.people:
        return None
    ordered = sorted(card.people, key=lambda p: (p.level, p.name))
    return "；".join(
        f"{LEVEL_SHORT.get(p.level, p.level)} {clean(p.name)}" + (f" {p.phone}" if p.phone else "") for p in ordered
    )


def outcome_text(card: AlarmCard) -> str | None:
    """For a notice that the condition is over: when it ended, how long it lasted, its extremes."""
    if card.resolved_at is None:
        return None
    lasted = format_duration(card.resolved_at - card.since)
    parts = [f"{beijing(card.resolved_at)} 恢复正常，持续 {lasted}"]
    if card.highest is not None and card.lowest is not None:
        parts.append(f"期间最高 {card.highest:.1f} ℃、最低 {card.lowest:.1f} ℃")
    return "，".join(parts)


def closure_text(card: AlarmCard) -> str | None:
    """The closing record: cause, action and what became of the vaccines, and who put it there."""
    c = card.closure
    if c is None:
        return None
    return f"{clean(c.by)} 关闭：原因 {clean(c.cause)}；处置 {clean(c.action)}；疫苗处理 {clean(c.vaccine_disposition)}"


def mobiles(cards: list[AlarmCard] | tuple[AlarmCard, ...]) -> list[str]:
    """The distinct phone numbers to @mention for the cards of a new alarm or a new level (WeCom
    text messages mention by mobile; markdown cannot)."""
    found: dict[str, None] = {}
    for card in cards:
        if card.step_kind in MENTION_KINDS:
            for person in card.people:
                phone = (person.phone or "").strip()
                if phone and phone.replace("+", "").replace("-", "").isdigit():
                    found[phone] = None
    return list(found)
