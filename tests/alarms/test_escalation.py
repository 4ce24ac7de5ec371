"""The escalation ladder (CM15/CM16): who is told when, and that nothing is told twice or skipped.

Steps run in seconds here (10 s, 20 s, reminders every 15 s) — the same arithmetic as 30m/60m/60m,
which is why the settings take durations at all.
"""

from __future__ import annotations

from collections.abc import Collection
from datetime import UTC, datetime, timedelta

import pytest

from alarms.escalation import (
    AlarmTimeline,
    EscalationPolicy,
    Step,
    due_steps,
    kind_of_key,
    next_due,
    notices_due,
    parse_duration,
    parse_steps,
    policy_from,
)

T0 = datetime(2024, 5, 6, 6, 30, tzinfo=UTC)
FAST = EscalationPolicy(
    steps=(timedelta(seconds=10), timedelta(seconds=20)),
    reminder=timedelta(seconds=15),
    resolved_reminder=timedelta(seconds=30),
)


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def active(state: str = "active") -> AlarmTimeline:
    assert state in ("active", "acknowledged")
    return AlarmTimeline(raised_at=T0, state="active" if state == "active" else "acknowledged")


def resolved(after: float) -> AlarmTimeline:
    return AlarmTimeline(raised_at=T0, state="resolved", resolved_at=at(after))


def keys(steps: list[Step]) -> list[str]:
    return [step.key for step in steps]


def run_scheduler(timeline: AlarmTimeline, until: int, sent: Collection[str] = ()) -> list[tuple[int, Step]]:
    """A scheduler ticking every second that sends whatever is owed, as the real one does via the outbox."""
    done = set(sent)
    log: list[tuple[int, Step]] = []
    for second in range(until + 1):
        for step in due_steps(timeline, FAST, at(second), done):
            assert step.key not in done, f"{step.key} returned again at {second}s"
            done.add(step.key)
            log.append((second, step))
    return log


# --- parsing -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("45s", timedelta(seconds=45)),
        ("30m", timedelta(minutes=30)),
        ("1h", timedelta(hours=1)),
        ("1d", timedelta(days=1)),
        (" 90m ", timedelta(minutes=90)),
        ("30 m", timedelta(minutes=30)),
        ("366d", timedelta(days=366)),
    ],
)
def test_parse_duration(text: str, expected: timedelta) -> None:
    assert parse_duration(text) == expected


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("", "时长格式"),
        ("abc", "时长格式"),
        ("30", "时长格式"),
        ("1.5h", "时长格式"),
        ("30min", "时长格式"),
        ("30M", "时长格式"),
        ("0m", "大于零"),
        ("-5m", "大于零"),
        ("367d", "366 天"),
        ("99999999999999d", "366 天"),
    ],
)
def test_parse_duration_refuses_nonsense_in_chinese(text: str, fragment: str) -> None:
    with pytest.raises(ValueError, match=fragment):
        parse_duration(text)


def test_parse_steps() -> None:
    assert parse_steps("30m,60m") == (timedelta(minutes=30), timedelta(minutes=60))
    assert parse_steps("45s, 90s") == (timedelta(seconds=45), timedelta(seconds=90))
    assert parse_steps("1h") == (timedelta(hours=1),)
    assert len(parse_steps("1m,2m,3m,4m,5m")) == 5


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("", "逗号分隔"),
        ("30m,,60m", "逗号分隔"),
        ("30m,", "逗号分隔"),
        ("60m,30m", "逐级递增"),
        ("30m,30m", "逐级递增"),
        ("1m,2m,3m,4m,5m,6m", "最多 5 级"),
        ("30m,0m", "大于零"),
    ],
)
def test_parse_steps_refuses_bad_ladders(text: str, fragment: str) -> None:
    with pytest.raises(ValueError, match=fragment):
        parse_steps(text)


def test_default_policy_is_cm16() -> None:
    policy = EscalationPolicy()
    assert policy.steps == (timedelta(minutes=30), timedelta(minutes=60))
    assert policy.reminder == timedelta(minutes=60)
    assert policy.resolved_reminder == timedelta(hours=24)
    assert policy_from("30m,60m", "60m") == policy


def test_policy_refuses_impossible_values() -> None:
    with pytest.raises(ValueError, match="逐级递增"):
        EscalationPolicy(steps=(timedelta(minutes=60), timedelta(minutes=30)))
    with pytest.raises(ValueError, match="提醒间隔"):
        EscalationPolicy(reminder=timedelta(0))
    with pytest.raises(ValueError, match="1–5 级"):
        EscalationPolicy(steps=())


def test_unit_overrides_win_and_blank_means_setting() -> None:
    row = {"unit_id": 7, "version": 3, "steps": "45s,90s", "reminder": None, "resolved_reminder": " "}
    policy = policy_from("30m,60m", "60m", row, settings_resolved_reminder="12h")
    assert policy.steps == (timedelta(seconds=45), timedelta(seconds=90))
    assert policy.reminder == timedelta(minutes=60)
    assert policy.resolved_reminder == timedelta(hours=12)
    assert policy_from("30m,60m", "60m", {"reminder": "2m"}).reminder == timedelta(minutes=2)


def test_bad_override_names_the_unit_field() -> None:
    with pytest.raises(ValueError, match="单位的提醒间隔"):
        policy_from("30m,60m", "60m", {"reminder": "often"})
    with pytest.raises(ValueError, match="系统设置的升级时限"):
        policy_from("60m,30m", "60m", None)
    with pytest.raises(ValueError, match="单位的升级时限"):
        policy_from("30m,60m", "60m", {"steps": 30})


# --- the ladder ----------------------------------------------------------------------------------


def test_full_ladder_in_seconds() -> None:
    log = run_scheduler(active(), until=80)
    assert [(second, step.key, sorted(step.levels), step.kind) for second, step in log] == [
        (0, "open", [1], "open"),
        (10, "level2", [1, 2], "escalate"),
        (20, "level3", [1, 2, 3], "escalate"),
        (35, "reminder-1", [1, 2, 3], "reminder"),
        (50, "reminder-2", [1, 2, 3], "reminder"),
        (65, "reminder-3", [1, 2, 3], "reminder"),
        (80, "reminder-4", [1, 2, 3], "reminder"),
    ]
    assert [step.due_at for _, step in log] == [at(s) for s in (0, 10, 20, 35, 50, 65, 80)]


def test_not_due_one_microsecond_early() -> None:
    assert keys(due_steps(active(), FAST, at(10) - timedelta(microseconds=1), {"open"})) == []
    assert keys(due_steps(active(), FAST, at(10), {"open"})) == ["level2"]
    assert due_steps(active(), FAST, T0 - timedelta(seconds=1), set()) == []


def test_acknowledging_does_not_stop_escalation() -> None:
    assert run_scheduler(active("acknowledged"), until=80) == run_scheduler(active(), until=80)


def test_resolution_stops_escalation() -> None:
    # Resolved at 15 s: level2 (10 s) went out, level3 (20 s) and reminders never fall due.
    log = run_scheduler(resolved(after=15), until=40)
    assert [(second, step.key) for second, step in log] == [(0, "open"), (10, "level2")]


def test_step_due_before_resolution_but_unsent_is_still_owed() -> None:
    # The scheduler was down from 5 s; the alarm resolved at 25 s; it comes back at 40 s.
    owed = due_steps(resolved(after=25), FAST, at(40), {"open"})
    assert keys(owed) == ["level2", "level3"]
    assert [step.due_at for step in owed] == [at(10), at(20)]
    # A step due exactly at the moment of resolution counts as due ("due after resolved_at" is not).
    assert keys(due_steps(resolved(after=20), FAST, at(40), {"open", "level2"})) == ["level3"]
    # A reminder missed before resolution is owed too (only the latest), one due after it is not.
    assert keys(due_steps(resolved(after=52), FAST, at(55), {"open", "level2", "level3"})) == ["reminder-2"]


def test_restart_after_long_outage_sends_missed_escalations_and_only_the_latest_reminder() -> None:
    now = at(20 + 15 * 7 + 3)  # reminder-7 was due 3 s ago
    owed = due_steps(active(), FAST, now, {"open"})
    assert keys(owed) == ["level2", "level3", "reminder-7"]
    assert owed[-1].due_at == at(125)
    # Restart at the default CM16 ladder after five hours down, only 'open' had gone out.
    cm16 = AlarmTimeline(raised_at=T0, state="acknowledged")
    owed = due_steps(cm16, EscalationPolicy(), T0 + timedelta(hours=5, minutes=10), {"open"})
    assert [(s.key, s.due_at - T0) for s in owed] == [
        ("level2", timedelta(minutes=30)),
        ("level3", timedelta(hours=1)),
        ("reminder-4", timedelta(hours=5)),
    ]


def test_already_sent_keys_are_never_returned() -> None:
    # reminder-1 and -2 were never sent, but the latest (reminder-3) was: older ones are not dug up.
    everything = {"open", "level2", "level3", "reminder-3"}
    assert due_steps(active(), FAST, at(66), everything) == []
    assert keys(due_steps(active(), FAST, at(66), everything - {"level2"})) == ["level2"]
    assert keys(due_steps(active(), FAST, at(66), everything - {"reminder-3"})) == ["reminder-3"]


def test_two_schedulers_compute_the_same_keys() -> None:
    """Keys depend on the ladder, not on when a scheduler looks: racing passes collide in the outbox."""
    sent = {"open", "level2", "level3"}
    outbox: set[str] = set()
    inserts = 0
    for now in (at(35), at(36.5), at(49.9)):  # two schedulers and a restart, all within reminder-1's period
        for step in due_steps(active(), FAST, now, sent):
            if step.key not in outbox:  # INSERT … ON CONFLICT DO NOTHING
                outbox.add(step.key)
                inserts += 1
    assert outbox == {"reminder-1"}
    assert inserts == 1


def test_resolved_but_unclosed_reminds_level_one() -> None:
    timeline = AlarmTimeline(raised_at=T0, state="resolved", resolved_at=T0 + timedelta(hours=2))
    sent = {"open", "level2", "level3", "reminder-1"}
    policy = EscalationPolicy()
    assert due_steps(timeline, policy, T0 + timedelta(hours=25), sent) == []
    owed = due_steps(timeline, policy, T0 + timedelta(hours=26), sent)
    assert owed == [Step("resolved-1", frozenset({1}), T0 + timedelta(hours=26), "resolved_reminder")]
    # Three days later, after an outage: only the latest daily reminder.
    owed = due_steps(timeline, policy, T0 + timedelta(days=3, hours=3), sent | {"resolved-1"})
    assert [(s.key, s.levels, s.due_at) for s in owed] == [
        ("resolved-3", frozenset({1}), T0 + timedelta(days=3, hours=2)),
    ]
    assert next_due(timeline, policy, sent | {"resolved-1", "resolved-3"}, T0 + timedelta(days=3, hours=3)) == (
        T0 + timedelta(days=4, hours=2)
    )


def test_resolved_reminders_in_seconds() -> None:
    log = run_scheduler(resolved(after=25), until=100)
    assert [(second, step.key, sorted(step.levels)) for second, step in log] == [
        (0, "open", [1]),
        (10, "level2", [1, 2]),
        (20, "level3", [1, 2, 3]),
        (55, "resolved-1", [1]),
        (85, "resolved-2", [1]),
    ]


def test_closed_owes_nothing() -> None:
    closed = AlarmTimeline(raised_at=T0, state="closed", resolved_at=at(25), closed_at=at(30))
    assert due_steps(closed, FAST, at(1000), set()) == []
    assert next_due(closed, FAST, set(), at(1000)) is None
    closed_unresolved = AlarmTimeline(raised_at=T0, state="closed", closed_at=at(5))
    assert due_steps(closed_unresolved, FAST, at(1000), set()) == []


def test_more_than_two_steps_go_to_level_three_again() -> None:
    policy = EscalationPolicy(steps=(timedelta(seconds=10), timedelta(seconds=20), timedelta(seconds=40)))
    owed = due_steps(active(), policy, at(40), {"open"})
    assert [(s.key, sorted(s.levels), s.kind) for s in owed] == [
        ("level2", [1, 2], "escalate"),
        ("level3", [1, 2, 3], "escalate"),
        ("level3-step3", [1, 2, 3], "escalate"),
    ]
    # Reminders count from the last step.
    assert next_due(active(), policy, {"open", "level2", "level3", "level3-step3"}, at(40)) == at(40 + 3600)


def test_single_step_reminds_the_levels_reached() -> None:
    policy = EscalationPolicy(steps=(timedelta(seconds=10),), reminder=timedelta(seconds=5))
    owed = due_steps(active(), policy, at(15), {"open"})
    assert [(s.key, sorted(s.levels)) for s in owed] == [("level2", [1, 2]), ("reminder-1", [1, 2])]


# --- next_due ------------------------------------------------------------------------------------


def test_next_due_drives_the_scheduler() -> None:
    assert next_due(active(), FAST, set(), at(0)) == T0
    assert next_due(active(), FAST, {"open"}, at(3)) == at(10)
    assert next_due(active(), FAST, {"open", "level2"}, at(11)) == at(20)
    assert next_due(active(), FAST, {"open", "level2", "level3"}, at(21)) == at(35)
    assert next_due(active(), FAST, {"open", "level2", "level3", "reminder-1"}, at(35)) == at(50)
    # Something owed and unsent (scheduler was down): its past due time, i.e. "look now".
    assert next_due(active(), FAST, {"open"}, at(30)) == at(10)
    # The clock stepped back after reminder-1 went out: it is not scheduled again.
    assert next_due(active(), FAST, {"open", "level2", "level3", "reminder-1"}, at(30)) == at(50)
    # Resolved: escalation stops, the daily reminder is next.
    assert next_due(resolved(after=25), FAST, {"open", "level2", "level3"}, at(26)) == at(55)


def test_waking_at_next_due_always_finds_work() -> None:
    """A scheduler that sleeps until next_due reproduces the every-second scheduler exactly."""
    for timeline in (active(), resolved(after=25), resolved(after=20)):
        sent: set[str] = set()
        log: list[tuple[datetime, str]] = []
        now = T0
        while now <= at(100):
            owed = due_steps(timeline, FAST, now, sent)
            assert owed, f"woke at {now} with nothing to do"
            for step in owed:
                sent.add(step.key)
                log.append((now, step.key))
            wake = next_due(timeline, FAST, sent, now)
            assert wake is not None and wake > now
            now = wake
        expected = [(at(second), step.key) for second, step in run_scheduler(timeline, until=100)]
        assert log == expected


# --- input checks ----------------------------------------------------------------------------------


def test_naive_times_are_refused() -> None:
    with pytest.raises(ValueError, match="时区"):
        AlarmTimeline(raised_at=datetime(2024, 5, 6, 14, 30), state="active")
    with pytest.raises(ValueError, match="时区"):
        due_steps(active(), FAST, datetime(2024, 5, 6, 14, 30), set())


def test_inconsistent_timelines_are_refused() -> None:
    with pytest.raises(ValueError, match="恢复时间"):
        AlarmTimeline(raised_at=T0, state="resolved")
    with pytest.raises(ValueError, match="不应有恢复或关闭时间"):
        AlarmTimeline(raised_at=T0, state="active", resolved_at=at(5))
    with pytest.raises(ValueError, match="早于报警开始"):
        AlarmTimeline(raised_at=T0, state="resolved", resolved_at=at(-5))
    with pytest.raises(ValueError, match="关闭时间"):
        AlarmTimeline(raised_at=T0, state="closed")


@pytest.mark.parametrize(
    ("key", "kind"),
    [
        ("open", "open"),
        ("level2", "escalate"),
        ("level3", "escalate"),
        ("level3-step4", "escalate"),
        ("reminder-12", "reminder"),
        ("resolved-3", "resolved_reminder"),
    ],
)
def test_kind_of_key(key: str, kind: str) -> None:
    assert kind_of_key(key) == kind


def test_kind_of_unknown_key_is_refused() -> None:
    with pytest.raises(ValueError, match="未知的升级步骤"):
        kind_of_key("level4")


# --- the notices that close the loop (issue #17) -------------------------------------------------


def test_acknowledgement_is_announced_once_to_the_levels_told() -> None:
    acked = AlarmTimeline(raised_at=T0, state="acknowledged", acknowledged_at=at(5))
    assert notices_due(acked, {1}, {"open"}) == [Step("ack", frozenset({1}), at(5), "ack_notice")]
    assert notices_due(acked, {1}, {"open", "ack"}) == []
    assert notices_due(acked, set(), set()) == []  # nobody told, nobody to tell


def test_the_end_is_announced_to_the_levels_told_while_open_even_after_closing() -> None:
    closed = AlarmTimeline(raised_at=T0, state="closed", resolved_at=at(25), closed_at=at(30), acknowledged_at=at(3))
    owed = notices_due(closed, {1, 2, 3}, {"open", "level2", "level3", "ack"})
    assert owed == [
        Step("resolved", frozenset({1, 2, 3}), at(25), "resolved_notice"),
        Step("closed", frozenset({2}), at(30), "closed_notice"),
    ]
    # Closed before the acknowledgement was announced: the closing notice says it all.
    assert [s.key for s in notices_due(closed, {1}, {"open"})] == ["resolved", "closed"]
    # Found late and already over: the first notice itself says it is over; nothing is owed twice.
    late = AlarmTimeline(raised_at=T0, state="resolved", resolved_at=T0)
    assert notices_due(late, {1}, {"open"}, told_while_open=set()) == []
    assert notices_due(late, {1, 2}, {"open"}, told_while_open={1}) == [
        Step("resolved", frozenset({1}), T0, "resolved_notice")
    ]


@pytest.mark.parametrize(
    ("key", "kind"), [("ack", "ack_notice"), ("resolved", "resolved_notice"), ("closed", "closed_notice")]
)
def test_kind_of_notice_keys(key: str, kind: str) -> None:
    assert kind_of_key(key) == kind
