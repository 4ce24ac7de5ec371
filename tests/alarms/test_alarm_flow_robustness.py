"""The alarm flow end to end (issue #5) when something on the way fails or doubles: readings as
the ingester stores them → rules → alarms → outbox → a fake WeCom robot over real HTTP, with
escalation in seconds instead of half-hours.

Covered: the robot down then up, the robot's rate limit with merging, rule state surviving a
restart, two scheduler processes on one database, a scheduler outage that must not skip a due
escalation, and one compartment's broken parameters that must not silence the others — nothing
lost, nothing sent twice.
"""

from __future__ import annotations

import signal
import subprocess
import time
from collections import Counter
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path

import psycopg
import pytest
from alarmhelp import (
    UNIT_T2,
    _sent,
    add_compartments,
    add_readings,
    alarm_ids,
    alarm_settings,
    alarm_world,
    alarms,
    events,
    expected_notices,
    notices,
    one_pass,
    outbox,
    probe_of,
    rows,
    run_passes,
    scheduler_env,
    set_params,
    settle,
    slow_down,
    start_scheduler,
    utcnow,
)
from apihelp import World
from fakewecom import FakeWecom

from alarms.delivery import deliver
from alarms.engine import check_silence, escalate, evaluate_compartments
from coldchain.core import db


@pytest.fixture
def world(db_url: str) -> World:
    return alarm_world(db_url)


@pytest.fixture
def conn(db_url: str) -> Iterator[psycopg.Connection]:
    with db.connect(db_url) as c:
        yield c


# ---------------------------------------------------------------------------------------------
# 1. The robot down, then up


def test_robot_down_then_up_loses_nothing_and_sends_nothing_twice(
    world: World, conn: psycopg.Connection, wecom: FakeWecom
) -> None:
    settings = alarm_settings(wecom.url())
    comps = [world.compartments[f"{site}/冷藏"] for site in ("T1", "T2", "T3")]
    for comp in comps:
        set_params(conn, comp, delay=0)
        add_readings(conn, probe_of(conn, comp), [(utcnow(), 9.0)])

    wecom.mode = "down"  # HTTP 500
    evaluate_compartments(conn, settings)
    stats = deliver(conn, settings)
    assert (stats.messages, stats.failures) == (0, 1)  # the three merged into one request, refused
    ids = [a["id"] for a in alarms(conn)]
    assert len(ids) == 3
    pending = outbox(conn)
    assert [(r["attempts"], r["last_error"], r["sent_at"]) for r in pending] == [(1, "HTTP 500", None)] * 3
    backoff = min(r["next_attempt_at"] for r in pending) - max(r["created_at"] for r in pending)
    assert timedelta(seconds=1.5) <= backoff <= timedelta(seconds=2.5)
    # Inside the back-off nothing is tried again.
    deliver(conn, settings)
    assert [r["attempts"] for r in outbox(conn)] == [1, 1, 1]

    wecom.mode = "limited"  # HTTP 200 with errcode 45009
    run_passes(conn, settings, 4, every=0.2, until=lambda: all(r["attempts"] == 2 for r in outbox(conn)))
    assert [(r["attempts"], r["last_error"], r["sent_at"]) for r in outbox(conn)] == [
        (2, "企业微信 errcode 45009", None)
    ] * 3
    assert wecom.messages() == []

    wecom.mode = "up"
    run_passes(conn, settings, 7, every=0.2, until=lambda: all(r["sent_at"] for r in outbox(conn)))
    run_passes(conn, settings, 0.6, every=0.2)  # more passes: nothing goes twice
    done = outbox(conn)
    assert [(r["step"], r["attempts"], r["last_error"]) for r in done] == [("open", 3, None)] * 3
    messages = wecom.messages()
    assert len(messages) == 1
    assert Counter(i for m in messages for i in alarm_ids(m.content)) == Counter(ids)
    assert notices(messages) == expected_notices(done)
    for alarm_id in ids:
        assert len(events(conn, alarm_id, "notify_failed")) == 2
        assert len(events(conn, alarm_id, "notified")) == 1


# ---------------------------------------------------------------------------------------------
# 2. Rate limit and merging


def test_burst_of_sixty_is_merged_and_kept_within_twenty_a_minute(
    world: World, conn: psycopg.Connection, wecom: FakeWecom
) -> None:
    """60 compartments of one cold room alarm at once, on a robot that already sent 18 messages
    this minute (10 of them 57 s ago, 8 of them 50 s ago): two merged messages now, the rest
    postponed — not dropped — to the moment the oldest 10 leave the window, then merged too."""
    settings = alarm_settings(wecom.url())
    url = wecom.url()
    comps = add_compartments(conn, world, "T1", 60)
    history = conn.execute(
        """INSERT INTO alarms (kind, severity, unit_id, compartment_id, condition_since, raised_at, state,
                               resolved_at, closed_at)
           VALUES ('high', 'major', %s, %s, now() - interval '3 days', now() - interval '3 days', 'closed',
                   now() - interval '3 days', now() - interval '2 days') RETURNING id""",
        (world.units["T1"], world.compartments["T1/冷冻"]),
    ).fetchone()
    assert history is not None
    for k in range(18):
        conn.execute(
            """INSERT INTO notification_outbox (alarm_id, step, channel, target, levels, due_at, sent_at, attempts)
               VALUES (%s, %s, 'wecom', %s, '{1}', now() - interval '60 s', now() - make_interval(secs => %s), 1)""",
            (history[0], f"reminder-{k + 1}", url, 57 if k < 10 else 50),
        )
    conn.execute("UPDATE notification_outbox SET sent_in = id WHERE alarm_id = %s", (history[0],))
    # What the robot's budget is counted on: the moments its answers came back (0014).
    before_rows = conn.execute(
        """INSERT INTO robot_posts (target_digest, posted_at)
           SELECT encode(sha256(convert_to(%s, 'UTF8')), 'hex'), clock_timestamp() - make_interval(secs => s)
           FROM unnest(array[57, 57, 57, 57, 57, 57, 57, 57, 57, 57, 50, 50, 50, 50, 50, 50, 50, 50]) AS s
           RETURNING extract(epoch FROM posted_at)::float8""",
        (url,),
    ).fetchall()
    conn.commit()
    before = [r[0] for r in before_rows]

    for comp in comps:
        set_params(conn, comp, delay=0)
        add_readings(conn, probe_of(conn, comp), [(utcnow(), 9.0)])
    assert evaluate_compartments(conn, settings).opened == 60
    ids = sorted(a["id"] for a in alarms(conn) if a["state"] == "active")
    assert len(ids) == 60

    stats = deliver(conn, settings)
    assert stats.messages == 2 and stats.rows_sent + stats.postponed == 60 and stats.postponed > 0
    waiting = [r for r in outbox(conn) if r["alarm_id"] != history[0] and r["sent_at"] is None]
    assert len(waiting) == stats.postponed
    assert all(r["attempts"] == 0 and r["last_error"] is None for r in waiting)
    assert {round(r["next_attempt_at"].timestamp() - min(before), 3) for r in waiting} == {60.0}
    assert stats.messages == len(wecom.messages())

    run_passes(conn, settings, 8, every=0.2, until=lambda: all(r["sent_at"] for r in outbox(conn)))
    messages = wecom.messages(url.rsplit("=", 1)[1])
    assert 3 <= len(messages) <= 10  # merged: far fewer than 60
    assert messages[2].at >= min(before) + 60  # the third waited for the window
    for m in messages:
        assert len(m.content.encode("utf-8")) <= 4096
        assert m.body["msgtype"] == "markdown"
    assert sorted(i for m in messages for i in alarm_ids(m.content)) == ids  # each exactly once
    times = sorted(before + [m.at for m in messages])
    assert max(sum(1 for u in times if t - 60 < u <= t) for t in times) <= 20
    sent = [r for r in outbox(conn) if r["alarm_id"] != history[0]]
    assert len({r["sent_in"] for r in sent}) == len(messages)
    assert notices(messages) == expected_notices(sent)


# ---------------------------------------------------------------------------------------------
# 3. Rule state survives a restart


def test_restart_resumes_a_running_delay_and_never_raises_twice(world: World, db_url: str) -> None:
    """Breaching from 15 min ago (1-minute readings, received 1 s after each): the first 9 readings
    (8 minutes) are judged by one "scheduler", which then goes away; a new one sees the rest and
    opens at the 10th minute, from the first breach. Judging it all again raises nothing."""
    settings = alarm_settings(None)
    probe, comp = world.probes["108601"], world.compartments["T1/冷藏"]
    base = (utcnow() - timedelta(minutes=15)).replace(microsecond=0)
    ts = [base + timedelta(minutes=i) for i in range(15)]
    lag = timedelta(seconds=1)

    with db.connect(db_url) as first:
        add_readings(first, probe, [(t, 9.0) for t in ts[:9]], lag=lag)
        assert evaluate_compartments(first, settings).opened == 0
        (state,) = rows(
            first, "SELECT state FROM alarm_rule_state WHERE subject = 'compartment' AND subject_id = %s", (comp,)
        )
        assert state["state"]["high"]["breach_since"] == ts[0].isoformat() and state["state"]["high"]["open"] is False

    with db.connect(db_url) as second:
        add_readings(second, probe, [(t, 9.0) for t in ts[9:]], lag=lag)
        assert evaluate_compartments(second, settings).opened == 1
        (alarm,) = alarms(second)
        assert (alarm["kind"], alarm["condition_since"], alarm["found_late"]) == ("high", ts[0], False)
        (opened,) = events(second, alarm["id"], "opened")
        assert datetime.fromisoformat(opened["details"]["detected_at"]) >= ts[10]

    with db.connect(db_url) as third:
        again = evaluate_compartments(third, settings)
        assert (again.subjects, again.opened) == (0, 0)  # nothing new since the cursor
        # Even with the rule state lost, the same readings cannot raise the open alarm twice.
        third.execute("UPDATE alarm_rule_state SET state = '{}', cursor = NULL WHERE subject = 'compartment'")
        third.commit()
        replay = evaluate_compartments(third, settings)
        assert (replay.subjects, replay.opened, replay.errors) == (1, 0, [])
        assert [a["id"] for a in alarms(third)] == [alarm["id"]]
        assert len(events(third, alarm["id"], "opened")) == 1
        assert [r["step"] for r in outbox(third)] == ["open"]


# ---------------------------------------------------------------------------------------------
# 4. Two schedulers


def _stop(proc: subprocess.Popen[str]) -> int:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    try:
        return proc.wait(20)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(10)
        return -9


def test_two_schedulers_never_notify_twice(
    world: World, db_url: str, conn: psycopg.Connection, wecom: FakeWecom, tmp_path: Path
) -> None:
    comps = [world.compartments[f"{site}/冷藏"] for site in ("T1", "T2", "T3")]
    for comp in comps:
        set_params(conn, comp, delay=0)
    settle(conn)  # nothing silent: only the three excursions below can alarm
    slow_down(wecom, 0.15)  # requests in flight long enough for the other scheduler to try the same rows
    env = scheduler_env(db_url, wecom_webhook_url=wecom.url(), escalation_steps="1s,2s", reminder_interval="2s")
    args = ("--evaluate-every", "0.2", "--deliver-every", "0.2", "--escalate-every", "0.2", "--silence-every", "1")
    procs = [start_scheduler(env, tmp_path / f"scheduler-{n}.log", *args) for n in (1, 2)]
    try:
        for comp in comps:
            add_readings(conn, probe_of(conn, comp), [(utcnow(), 9.0)])
        deadline = time.monotonic() + 20
        while not (len(alarms(conn)) == 3 and all(_sent(conn, "reminder-2", a["id"]) for a in alarms(conn))):
            assert time.monotonic() < deadline, [(r["alarm_id"], r["step"], r["sent_at"]) for r in outbox(conn)]
            assert all(p.poll() is None for p in procs), "a scheduler died"
            time.sleep(0.2)
    finally:
        codes = [_stop(p) for p in procs]
    logs = [(tmp_path / f"scheduler-{n}.log").read_text() for n in (1, 2)]
    assert codes == [0, 0], logs
    assert "Traceback" not in logs[0] + logs[1], logs

    found = alarms(conn)
    assert sorted(a["compartment_id"] for a in found) == sorted(comps)
    assert {a["kind"] for a in found} == {"high"}
    sent = [r for r in outbox(conn) if r["sent_at"] is not None]
    for a in found:
        steps = [r["step"] for r in sent if r["alarm_id"] == a["id"]]
        assert steps[:5] == ["open", "level2", "level3", "reminder-1", "reminder-2"], steps
    # Every sent (alarm, step) is in exactly one message, and nothing else is.
    messages = wecom.messages()
    assert notices(messages) == expected_notices(sent)
    assert Counter(i for m in messages for i in alarm_ids(m.content)) == Counter(r["alarm_id"] for r in sent)
    assert len({r["sent_in"] for r in sent}) == len(messages)


# ---------------------------------------------------------------------------------------------
# 5. A scheduler outage does not skip a due escalation


def test_restart_after_outage_sends_missed_escalations_and_only_the_latest_reminder(
    world: World, db_url: str, wecom: FakeWecom
) -> None:
    """Steps 1 s, 2 s, reminders every 1 s. The scheduler opens the alarm and sends 'open', then is
    away until 4.4 s: level2 (1 s) and level3 (2 s) are both still owed, of reminder-1 (3 s) and
    reminder-2 (4 s) only the latest."""
    settings = alarm_settings(wecom.url(), steps="1s,2s", reminder="1s")
    comp = world.compartments["T1/冷藏"]
    with db.connect(db_url) as before:
        set_params(before, comp, delay=0)
        add_readings(before, world.probes["108601"], [(utcnow(), 9.0)])
        one_pass(before, settings)
        (alarm,) = alarms(before)
        assert [r["step"] for r in outbox(before)] == ["open"]
    time.sleep(max(0.0, alarm["raised_at"].timestamp() + 4.4 - time.time()))

    with db.connect(db_url) as after:
        escalate(after, settings)
        deliver(after, settings)
        sent = outbox(after)
    assert [(r["step"], r["sent_at"] is not None) for r in sent] == [
        ("open", True),
        ("level2", True),
        ("level3", True),
        ("reminder-2", True),
    ]
    assert [r["due_at"] - alarm["raised_at"] for r in sent] == [timedelta(seconds=s) for s in (0, 1, 2, 4)]
    first, late = wecom.messages()
    assert notices([first]) == Counter({(alarm["id"], "一", "报警通知"): 1})
    assert notices([late]) == Counter(
        {
            (alarm["id"], "二", "升级通知"): 1,
            (alarm["id"], "三", "升级通知"): 1,
            (alarm["id"], "三", "持续未恢复提醒"): 1,
        }
    )


# ---------------------------------------------------------------------------------------------
# 6. One compartment's broken parameters do not silence the others


def test_parameters_that_no_longer_fit_the_limits_do_not_stop_other_compartments(
    world: World, conn: psycopg.Connection, wecom: FakeWecom
) -> None:
    """T1/冷藏's hysteresis 2.5 ℃ was valid for 2–8 ℃; its lower limit was then raised to 4 ℃ in
    the registry, leaving no room for it (2 × 2.5 > 8 − 4). T2/冷藏 breaches at the same time: its
    alarm must still be raised and sent, and the broken compartment reported, not the pass lost."""
    settings = alarm_settings(wecom.url())
    broken, fine = world.compartments["T1/冷藏"], world.compartments["T2/冷藏"]
    set_params(conn, broken, hysteresis=2.5, delay=0)
    set_params(conn, fine, delay=0)
    conn.execute("UPDATE compartments SET t_min = 4.0 WHERE id = %s", (broken,))
    conn.commit()
    settle(conn, skip=[probe_of(conn, broken)])  # nothing silent but the broken one, which is never judged
    for comp in (broken, fine):
        add_readings(conn, probe_of(conn, comp), [(utcnow(), 9.0)])

    stats = evaluate_compartments(conn, settings)
    assert stats.opened == 1 and len(stats.errors) == 1 and f"温区 {broken}" in stats.errors[0], stats
    silence = check_silence(conn, settings)
    assert len(silence.errors) == 1 and f"温区 {broken}" in silence.errors[0], silence
    deliver(conn, settings)
    (alarm,) = alarms(conn)
    assert (alarm["compartment_id"], alarm["kind"]) == (fine, "high")
    (message,) = wecom.messages()
    assert alarm_ids(message.content) == [alarm["id"]] and UNIT_T2 in message.content
