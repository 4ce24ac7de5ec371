"""When an alarm's people must be told: the escalation ladder of CM15/CM16 as pure arithmetic.

The scheduler asks :func:`due_steps` "what is owed for this alarm now, given what was already sent?"
and writes one outbox row per (alarm, step key, channel, target). Everything here is a function of
its arguments — no clock, no database — so the same question always gets the same answer. That is
what makes the delivery guarantees hold:

* **Two schedulers never notify twice.** Step keys are deterministic (``open``, ``level2``,
  ``level3``, ``reminder-N``, ``resolved-N``), so both schedulers compute the same key and the
  outbox's unique (alarm_id, step, channel, target) lets only one insert win.
* **A restart never skips a due escalation.** A step is owed from its due time until it is in
  ``sent``; nothing depends on the scheduler having been awake at the right moment.

The ladder (``steps`` are offsets from ``raised_at``, default 30m, 60m):

======================  ==============  ==========================  ============================
key                     levels          due at                      kind
======================  ==============  ==========================  ============================
``open``                {1}             raised_at                   ``open``
``level2``              {1, 2}          raised_at + steps[0]        ``escalate``
``level3``              {1, 2, 3}       raised_at + steps[1]        ``escalate``
``level3-stepK``        {1, 2, 3}       raised_at + steps[K-1]      ``escalate`` (K ≥ 3)
``reminder-N``          all reached     steps[-1] + N × reminder    ``reminder``
``resolved-N``          {1}             resolved_at + N × daily     ``resolved_reminder``
======================  ==============  ==========================  ============================

Beside the ladder, three notices close the loop for the people already told (:func:`notices_due`):

======================  =====================  ===================  =========================
key                     levels                 due at               kind
======================  =====================  ===================  =========================
``ack``                 every level told       acknowledged_at      ``ack_notice``
``resolved``            every level told       resolved_at          ``resolved_notice``
``closed``              {2}                    closed_at            ``closed_notice``
======================  =====================  ===================  =========================

Decisions:

* Level 2 is notified "as well": the ``level2`` message goes to levels 1 and 2, so level 1 knows
  the matter has gone up; ``level3`` likewise goes to all three.
* There are only three levels. A third, fourth or fifth configured step notifies level 3 (and
  1, 2) again under its own key; with a single step, reminders go to levels 1 and 2 only —
  reminders go to every level the ladder has reached.
* Acknowledging does not stop the ladder (CM16 says "still abnormal", not "unacknowledged");
  resolution does. A step due at or before ``resolved_at`` that was never sent (the scheduler
  was down) is still owed after resolution — never skip a due escalation — and the message
  layer tells the reader the alarm was found late. A step due after ``resolved_at`` is not owed.
* After an outage, every missed escalation step (``open``, ``level2``, ``level3`` …) is returned,
  but only the latest missed reminder: three "still abnormal" reminders at once say nothing the
  latest does not. The same holds for the daily ``resolved-N`` reminders.
* A closed alarm owes nothing, not even unsent steps: its cause and disposal are on record and a
  late "go on site" would only mislead.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Collection, Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Literal, get_args

from coldchain.core.settings import Settings

__all__ = [
    "AlarmState",
    "AlarmTimeline",
    "EscalationPolicy",
    "Step",
    "StepKind",
    "due_steps",
    "kind_of_key",
    "next_due",
    "notices_due",
    "parse_duration",
    "parse_steps",
    "policy_for",
    "policy_from",
]

AlarmState = Literal["active", "acknowledged", "resolved", "closed"]
StepKind = Literal[
    "open", "escalate", "reminder", "resolved_reminder", "ack_notice", "resolved_notice", "closed_notice"
]

ALARM_STATES: frozenset[str] = frozenset(get_args(AlarmState))
STEP_KINDS: frozenset[str] = frozenset(get_args(StepKind))

MAX_STEPS = 5
# Longer than any sensible escalation or reminder; also keeps timedelta far from OverflowError.
MAX_DURATION = timedelta(days=366)

_UNITS = {"s": timedelta(seconds=1), "m": timedelta(minutes=1), "h": timedelta(hours=1), "d": timedelta(days=1)}
_DURATION = re.compile(r"([+-]?[0-9]+)\s*([smhd])")


def parse_duration(text: str) -> timedelta:
    """Turn '45s', '30m', '1h' or '1d' into a timedelta.

    Same shape as ``coldchain.core.settings`` checks at start-up (so a value that passed there parses
    here), and used again for per-unit overrides typed in the web UI, hence the Chinese errors.
    Zero and negative durations are refused: a zero reminder interval would notify in a loop.
    """
    raw = text.strip()
    match = _DURATION.fullmatch(raw)
    if match is None:
        raise ValueError(f"时长格式应为数字加单位 s/m/h/d（如 45s、30m、1h、1d），实际为 {text!r}")
    amount = int(match.group(1))
    if amount <= 0:
        raise ValueError(f"时长必须大于零，实际为 {text!r}")
    if amount > MAX_DURATION // _UNITS[match.group(2)]:
        raise ValueError(f"时长不能超过 366 天，实际为 {text!r}")
    return amount * _UNITS[match.group(2)]


def parse_steps(text: str) -> tuple[timedelta, ...]:
    """Turn '30m,60m' into offsets from the alarm's start: 1 to 5 of them, strictly increasing.

    Offsets (not gaps) because CM16 says "after 30 minutes … after 1 hour", both counted from the
    start; increasing because a later level must not be told before an earlier one.
    """
    parts = [p.strip() for p in text.split(",")]
    if not parts or any(p == "" for p in parts):
        raise ValueError(f"升级时限应为逗号分隔的时长（如 30m,60m），实际为 {text!r}")
    if len(parts) > MAX_STEPS:
        raise ValueError(f"升级时限最多 {MAX_STEPS} 级，实际为 {len(parts)} 级：{text!r}")
    steps = tuple(parse_duration(p) for p in parts)
    _check_increasing(steps, text)
    return steps


def _check_increasing(steps: tuple[timedelta, ...], shown: object) -> None:
    for earlier, later in itertools.pairwise(steps):
        if later <= earlier:
            raise ValueError(f"升级时限必须逐级递增（从报警开始计算），实际为 {shown!r}")


@dataclass(frozen=True)
class EscalationPolicy:
    """Escalation timing for one unit.

    Frozen so a policy read at the start of a scheduler pass cannot change half-way through it;
    validated on construction so an impossible policy fails where it is built, not at 3 a.m.
    """

    steps: tuple[timedelta, ...] = (timedelta(minutes=30), timedelta(minutes=60))
    reminder: timedelta = timedelta(minutes=60)
    resolved_reminder: timedelta = timedelta(hours=24)

    def __post_init__(self) -> None:
        if not 1 <= len(self.steps) <= MAX_STEPS:
            raise ValueError(f"升级时限应为 1–{MAX_STEPS} 级，实际为 {len(self.steps)} 级")
        for name, value in (("升级时限", min(self.steps)), ("提醒间隔", self.reminder)):
            if value <= timedelta(0):
                raise ValueError(f"{name}必须大于零，实际为 {value}")
        if self.resolved_reminder <= timedelta(0):
            raise ValueError(f"恢复后提醒间隔必须大于零，实际为 {self.resolved_reminder}")
        _check_increasing(self.steps, self.steps)


_OVERRIDE_KEYS = ("steps", "reminder", "resolved_reminder")
_OVERRIDE_NAMES = {"steps": "升级时限", "reminder": "提醒间隔", "resolved_reminder": "恢复后提醒间隔"}


def policy_from(
    settings_steps: str,
    settings_reminder: str,
    unit_overrides: Mapping[str, object] | None = None,
    *,
    settings_resolved_reminder: str = "24h",
) -> EscalationPolicy:
    """Build a unit's policy: its own ``unit_escalation`` values where set, the settings otherwise.

    ``unit_overrides`` may be the ``unit_escalation`` row as-is: keys other than ``steps``,
    ``reminder`` and ``resolved_reminder`` (``unit_id``, ``version``) are ignored, and a ``None``
    or blank value means "use the setting", so clearing a field in the UI restores the default.
    Errors name the unit-level field, because that is what a person must go and fix.
    """
    chosen: dict[str, str] = {
        "steps": settings_steps,
        "reminder": settings_reminder,
        "resolved_reminder": settings_resolved_reminder,
    }
    overridden: set[str] = set()
    for key in _OVERRIDE_KEYS:
        value = (unit_overrides or {}).get(key)
        if value is None or (isinstance(value, str) and value.strip() == ""):
            continue
        if not isinstance(value, str):
            raise ValueError(f"单位的{_OVERRIDE_NAMES[key]}应为文字（如 30m），实际为 {value!r}")
        chosen[key] = value
        overridden.add(key)
    try:
        steps = parse_steps(chosen["steps"])
    except ValueError as exc:
        raise ValueError(f"{_source('steps', overridden)}：{exc}") from exc
    durations: dict[str, timedelta] = {}
    for key in ("reminder", "resolved_reminder"):
        try:
            durations[key] = parse_duration(chosen[key])
        except ValueError as exc:
            raise ValueError(f"{_source(key, overridden)}：{exc}") from exc
    return EscalationPolicy(
        steps=steps, reminder=durations["reminder"], resolved_reminder=durations["resolved_reminder"]
    )


def policy_for(settings: Settings, unit_overrides: Mapping[str, object] | None) -> EscalationPolicy:
    """A unit's policy from the system settings and the unit's ``unit_escalation`` row (or the
    values about to be saved there): the one way the scheduler and the settings API both build it."""
    return policy_from(
        settings.escalation_steps,
        settings.reminder_interval,
        unit_overrides,
        settings_resolved_reminder=settings.resolved_reminder_interval,
    )


def _source(key: str, overridden: set[str]) -> str:
    return f"单位的{_OVERRIDE_NAMES[key]}" if key in overridden else f"系统设置的{_OVERRIDE_NAMES[key]}"


@dataclass(frozen=True)
class AlarmTimeline:
    """What escalation needs to know about one alarm, and nothing more.

    Times must carry a timezone: they come from timestamptz columns, and a naive time compared with
    an aware one would either crash or silently shift a step by eight hours.
    """

    raised_at: datetime
    state: AlarmState
    resolved_at: datetime | None = None
    closed_at: datetime | None = None
    acknowledged_at: datetime | None = None

    def __post_init__(self) -> None:
        if self.state not in ALARM_STATES:
            raise ValueError(f"报警状态应为 active、acknowledged、resolved 或 closed，实际为 {self.state!r}")
        times = (("开始时间", self.raised_at), ("恢复时间", self.resolved_at), ("关闭时间", self.closed_at))
        for label, value in times:
            if value is not None:
                _require_aware(value, label)
                if value < self.raised_at:
                    raise ValueError(f"{label}不能早于报警开始时间：{value.isoformat()}")
        if self.acknowledged_at is not None:
            _require_aware(self.acknowledged_at, "确认时间")
        if self.state in ("active", "acknowledged") and (self.resolved_at is not None or self.closed_at is not None):
            raise ValueError(f"状态为 {self.state} 的报警不应有恢复或关闭时间")
        if self.state == "resolved" and (self.resolved_at is None or self.closed_at is not None):
            raise ValueError("状态为 resolved 的报警必须有恢复时间、且没有关闭时间")
        if self.state == "closed" and self.closed_at is None:
            raise ValueError("状态为 closed 的报警必须有关闭时间")


@dataclass(frozen=True)
class Step:
    """One notification owed for an alarm: its outbox key, who gets it, since when, and why."""

    key: str
    levels: frozenset[int]
    due_at: datetime
    kind: StepKind


def kind_of_key(key: str) -> StepKind:
    """The kind of a stored outbox step key ('level2' → 'escalate'), for code that only has the key.

    Message wording depends on the kind, and the outbox keeps only the key; deriving it here keeps
    the key scheme in one module.
    """
    if key == "open":
        return "open"
    if key in ("level2", "level3") or re.fullmatch(r"level3-step[3-9]", key):
        return "escalate"
    if re.fullmatch(r"reminder-[1-9][0-9]*", key):
        return "reminder"
    if re.fullmatch(r"resolved-[1-9][0-9]*", key):
        return "resolved_reminder"
    if key in _NOTICE_KINDS:
        return _NOTICE_KINDS[key]
    raise ValueError(f"未知的升级步骤：{key!r}")


_NOTICE_KINDS: dict[str, StepKind] = {"ack": "ack_notice", "resolved": "resolved_notice", "closed": "closed_notice"}


def _require_aware(value: datetime, label: str) -> None:
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError(f"{label}必须带时区：{value.isoformat()}")


def _ladder(timeline: AlarmTimeline, policy: EscalationPolicy) -> Iterator[Step]:
    """The fixed part of the ladder: ``open`` and one step per configured offset."""
    yield Step("open", frozenset({1}), timeline.raised_at, "open")
    for number, offset in enumerate(policy.steps, start=1):
        level = min(3, number + 1)
        key = f"level{level}" if number <= 2 else f"level3-step{number}"
        yield Step(key, frozenset(range(1, level + 1)), timeline.raised_at + offset, "escalate")


def _reminder(timeline: AlarmTimeline, policy: EscalationPolicy, number: int) -> Step:
    reached = min(3, len(policy.steps) + 1)
    due = timeline.raised_at + policy.steps[-1] + number * policy.reminder
    return Step(f"reminder-{number}", frozenset(range(1, reached + 1)), due, "reminder")


def _resolved_reminder(resolved_at: datetime, policy: EscalationPolicy, number: int) -> Step:
    due = resolved_at + number * policy.resolved_reminder
    return Step(f"resolved-{number}", frozenset({1}), due, "resolved_reminder")


def _latest_number(start: datetime, interval: timedelta, until: datetime) -> int:
    """How many whole intervals after ``start`` have passed by ``until`` (0 if none)."""
    if until < start + interval:
        return 0
    return (until - start) // interval


def _escalation_cutoff(timeline: AlarmTimeline, now: datetime) -> datetime | None:
    """Latest due time an escalation step or reminder may have and still be owed, or None if none is."""
    if timeline.state == "closed":
        return None
    if timeline.state == "resolved":
        assert timeline.resolved_at is not None  # guaranteed by AlarmTimeline.__post_init__
        return min(now, timeline.resolved_at)
    return now


def due_steps(timeline: AlarmTimeline, policy: EscalationPolicy, now: datetime, sent: Collection[str]) -> list[Step]:
    """Steps owed at ``now`` that are not in ``sent`` (the step keys already in the outbox), oldest first.

    See the module docstring for the ladder and the rules on resolution, outages and closing.
    ``sent`` should hold every key already written to the outbox for this alarm, whether or not its
    delivery has succeeded yet: retrying delivery is the outbox's job, not the ladder's.
    """
    _require_aware(now, "当前时间")
    cutoff = _escalation_cutoff(timeline, now)
    if cutoff is None:
        return []
    owed = [step for step in _ladder(timeline, policy) if step.due_at <= cutoff and step.key not in sent]
    last_step_at = timeline.raised_at + policy.steps[-1]
    number = _latest_number(last_step_at, policy.reminder, cutoff)
    if number >= 1:
        reminder = _reminder(timeline, policy, number)
        if reminder.key not in sent:
            owed.append(reminder)
    if timeline.state == "resolved":
        assert timeline.resolved_at is not None
        number = _latest_number(timeline.resolved_at, policy.resolved_reminder, now)
        if number >= 1:
            again = _resolved_reminder(timeline.resolved_at, policy, number)
            if again.key not in sent:
                owed.append(again)
    owed.sort(key=lambda step: step.due_at)
    return owed


def next_due(
    timeline: AlarmTimeline, policy: EscalationPolicy, sent: Collection[str], now: datetime
) -> datetime | None:
    """When the scheduler should next look at this alarm, assuming its state does not change.

    If something is owed already, that is its (past) due time, meaning "now"; otherwise the due
    time of the next step that is not yet sent; ``None`` when nothing more can ever fall due
    (closed). A state change (acknowledge does not matter, resolve or close does) must trigger a
    fresh look anyway, so this never has to predict one.
    """
    owed = due_steps(timeline, policy, now, sent)
    if owed:
        return owed[0].due_at
    if timeline.state == "closed":
        return None
    limit = timeline.resolved_at if timeline.state == "resolved" else None
    candidates: list[datetime] = []

    def consider(due_at: datetime) -> None:
        if due_at > now and (limit is None or due_at <= limit):
            candidates.append(due_at)

    for step in _ladder(timeline, policy):
        if step.key not in sent:
            consider(step.due_at)
    last_step_at = timeline.raised_at + policy.steps[-1]
    number = _latest_number(last_step_at, policy.reminder, now) + 1
    while _reminder(timeline, policy, number).key in sent:
        number += 1
    consider(_reminder(timeline, policy, number).due_at)
    if timeline.resolved_at is not None:
        resolved_at = timeline.resolved_at
        number = _latest_number(resolved_at, policy.resolved_reminder, now) + 1
        while _resolved_reminder(resolved_at, policy, number).key in sent:
            number += 1
        due_at = _resolved_reminder(resolved_at, policy, number).due_at
        if due_at > now:
            candidates.append(due_at)
    return min(candidates, default=None)


def notices_due(
    timeline: AlarmTimeline,
    told: Collection[int],
    sent: Collection[str],
    *,
    told_while_open: Collection[int] | None = None,
) -> list[Step]:
    """The notices that close the loop, owed once each and not yet in ``sent`` (issue #17).

    ``told`` is every level a ladder step has been (or is now being) written for: only they hear
    that someone acknowledged or that the condition is over — a level never woken is not woken to
    be told all is well. Acknowledgement is announced while the alarm is still open or resolved (once
    closed, the closing notice says it all); resolution is announced even if the alarm was closed
    before the scheduler saw it, because the people driving out must hear that it is over. Closing
    tells level 2 the cause and the vaccines' fate — the county that answers for the doses — and
    only for an alarm anyone was told of.

    ``told_while_open`` (default: ``told``) are the levels told before the condition ended: only
    they are told it is over. An alarm found late and already over (a gateway's buffered upload)
    is announced once, its message saying it is over, not twice.
    """
    levels = frozenset(told)
    if not levels:
        return []
    open_levels = levels if told_while_open is None else frozenset(told_while_open)
    owed: list[Step] = []
    if timeline.acknowledged_at is not None and timeline.state != "closed" and "ack" not in sent:
        owed.append(Step("ack", levels, timeline.acknowledged_at, "ack_notice"))
    if timeline.resolved_at is not None and open_levels and "resolved" not in sent:
        owed.append(Step("resolved", open_levels, timeline.resolved_at, "resolved_notice"))
    if timeline.state == "closed" and timeline.closed_at is not None and "closed" not in sent:
        owed.append(Step("closed", frozenset({2}), timeline.closed_at, "closed_notice"))
    owed.sort(key=lambda step: step.due_at)
    return owed
