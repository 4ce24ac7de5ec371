"""Alarms end to end (issue #5): readings as the ingester stores them → rules → alarms → outbox →
a fake WeCom robot over real HTTP, with escalation in seconds instead of half-hours.

Covered: the full ladder (acknowledging does not stop it, resolution does, a resolved but unclosed
alarm reminds level 1), flapping at the threshold, gateway outage suppression, late data, the
robot down then up, the robot's rate limit with merging, rule state surviving a restart, two
scheduler processes on one database, and a scheduler outage that must not skip a due escalation.
"""

from __future__ import annotations

import signal
import subprocess
import time
from collections import Counter
from collections.abc import Iterator
from datetime import datetime, timedelta
from decimal import Decimal
from pathlib import Path

import psycopg
import pytest
from alarmhelp import (
    add_compartments,
    add_readings,
    add_status,
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
    running_wecom,
    scheduler_env,
    set_params,
    settle,
    slow_down,
    start_scheduler,
    step_label,
    utcnow,
)
from apihelp import World
from fakewecom import FakeWecom

from alarms.delivery import deliver
from alarms.engine import check_silence, escalate, evaluate_compartments
from alarms.life import acknowledge
from coldchain.core import db

UNIT_T1 = "电子城街道社区卫生服务中心"
UNIT_T2 = "向阳街道卫生院"


@pytest.fixture
def wecom() -> Iterator[FakeWecom]:
    with running_wecom() as fake:
        yield fake


@pytest.fixture
def world(db_url: str) -> World:
    return alarm_world(db_url)


@pytest.fixture
def conn(db_url: str) -> Iterator[psycopg.Connection]:
    with db.connect(db_url) as c:
        yield c


def _sent(conn: psycopg.Connection, step: str, alarm_id: int | None = None) -> bool:
    return any(r["step"] == step and r["sent_at"] is not None for r in outbox(conn, alarm_id))


# ---------------------------------------------------------------------------------------------
# 1. The ladder


def test_full_ladder_acknowledged_then_resolved_then_daily_reminders(
    world: World, conn: psycopg.Connection, wecom: FakeWecom
) -> None:
    """open@0 → level2@2s → level3@4s → reminder-1@7s → reminder-2@10s, acknowledged at ~1 s and
    still escalating; resolved at ~10.5 s, after which only level-1 'resolved' reminders come."""
    settings = alarm_settings(wecom.url(), steps="2s,4s", reminder="3s", resolved="2s")
    comp, probe = world.compartments["T1/冷藏"], world.probes["108601"]
    set_params(conn, comp, delay=0, hold=0)
    add_readings(conn, probe, [(utcnow(), 9.0)])
    one_pass(conn, settings)

    (alarm,) = alarms(conn)
    assert (alarm["kind"], alarm["state"], alarm["value"], alarm["compartment_id"]) == ("high", "active", 9.0, comp)
    assert (alarm["t_min"], alarm["t_max"]) == (Decimal("2.0"), Decimal("8.0"))
    (first,) = wecom.messages()
    for text in (UNIT_T1, "6101130001", "海尔双温冰箱 / 冷藏", "温度超上限", "9.0 ℃", "限值 2.0～8.0 ℃"):
        assert text in first.content, (text, first.content)
    assert f"/alarms/{alarm['id']}" in first.content

    started = time.monotonic()
    acked = False
    while not _sent(conn, "reminder-2"):
        assert time.monotonic() - started < 13, [r["step"] for r in outbox(conn)]
        time.sleep(0.25)
        if not acked and time.monotonic() - started >= 1.0:
            (row,) = rows(conn, "SELECT * FROM alarms WHERE id = %s", (alarm["id"],))
            acknowledge(conn, row, world.users["ba_T1"], "web", True, None)
            conn.commit()
            acked = True
        one_pass(conn, settings)
    (mid,) = alarms(conn)
    assert mid["state"] == "acknowledged" and mid["ack_channel"] == "web" and mid["on_site"] is True

    # Back in range (hold 0): resolved at once; the ladder stops, level-1 reminders every 2 s begin.
    add_readings(conn, probe, [(utcnow(), 5.0)])
    run_passes(conn, settings, 8, until=lambda: _sent(conn, "resolved-2"))
    run_passes(conn, settings, 0.75)  # reminder-3 (raised + 13 s) was due by now, had it not been resolved

    (final,) = alarms(conn)
    assert final["state"] == "resolved" and final["acknowledged_at"] is not None
    sent = outbox(conn)
    # The acknowledgement is announced to the level already told; the ladder goes on; the end of
    # the condition is announced once to every level told; then level 1's daily reminders.
    assert [r["step"] for r in sent] == [
        "open",
        "ack",
        "level2",
        "level3",
        "reminder-1",
        "reminder-2",
        "resolved",
        "resolved-1",
        "resolved-2",
    ]
    assert [r["levels"] for r in sent] == [[1], [1], [1, 2], [1, 2, 3], [1, 2, 3], [1, 2, 3], [1, 2, 3], [1], [1]]
    raised = final["raised_at"]
    resolved = final["resolved_at"]
    offsets = [2, 4, 7, 10]
    assert [r["due_at"] - raised for r in sent[2:6]] == [timedelta(seconds=s) for s in offsets]
    assert sent[1]["due_at"] == final["acknowledged_at"] and sent[6]["due_at"] == resolved
    assert [r["due_at"] - resolved for r in sent[7:]] == [timedelta(seconds=2), timedelta(seconds=4)]
    assert all(r["attempts"] == 1 and r["last_error"] is None for r in sent)

    messages = wecom.messages()
    assert len(messages) == len(sent)  # one message per step, in step order
    for message, row in zip(messages, sent, strict=True):
        assert 0 <= row["sent_epoch"] - row["due_epoch"] <= 1.5, row
        assert 0 <= message.at - row["due_epoch"] <= 1.5, (row["step"], message.at - row["due_epoch"])
        assert notices([message]) == Counter({(alarm["id"], *step_label(row["step"], row["levels"])): 1})
        assert UNIT_T1 in message.content and "冷藏" in message.content and "限值 2.0～8.0 ℃" in message.content
        at_nine = ("open", "ack", "level2", "level3", "reminder-1", "reminder-2")
        shown = "9.0 ℃" if row["step"] in at_nine else "5.0 ℃"
        assert shown in message.content, (row["step"], message.content)
        # Every message says who is on it: nobody before the acknowledgement, the person after.
        if row["step"] == "open":
            assert "尚无人确认" in message.content
        else:
            assert "经平台确认，已在现场" in message.content, (row["step"], message.content)
    assert "恢复正常，持续" in messages[6].content and "期间最高 9.0 ℃" in messages[6].content
    assert "已恢复" in messages[-1].content

    # The acknowledgement came before level 2 and did not stop it.
    (ack,) = events(conn, alarm["id"], "acknowledged")
    assert ack["ts"] < sent[2]["sent_at"]
    assert len(events(conn, alarm["id"], "notified")) == 9


# ---------------------------------------------------------------------------------------------
# 2. Flapping at 8.0


def test_flapping_at_the_threshold_for_a_day_keeps_one_alarm(world: World, conn: psycopg.Connection) -> None:
    """A day at 1-minute spacing hovering at 7.9–8.0 with an isolated 8.1 every 12 minutes, one
    30-minute excursion at 9.0 from minute 600, hovering again, then 7.4 from minute 1200.
    Delivered hour by hour, received 2 s after measurement: one high alarm, opened at minute 610,
    still open through eight-minute stretches at ≤ 8.0 (inside the limit, not by the 0.5 margin),
    cleared at minute 1205 (5-minute hold at ≤ 7.5)."""
    settings = alarm_settings(None)
    probe = world.probes["108601"]
    # The day is replayed in a second: silence is judged on now(), so yesterday's receipts would
    # read as a probe silent since yesterday. Live, each hour is judged as it arrives.
    set_params(conn, world.compartments["T1/冷藏"], no_data_after="2d")
    start = (utcnow() - timedelta(days=1)).replace(second=0, microsecond=0)
    ts = [start + timedelta(minutes=i) for i in range(1440)]

    def value(i: int) -> float:
        if 600 <= i < 630:
            return 9.0
        if i >= 1200:
            return 7.4
        return (7.9, 8.0, 7.9, 8.0, 7.9, 8.0, 7.9, 8.0, 8.1, 8.0, 7.9, 8.0)[i % 12]

    for hour in range(24):
        batch = [(ts[i], value(i)) for i in range(hour * 60, hour * 60 + 60)]
        add_readings(conn, probe, batch, lag=timedelta(seconds=2))
        stats = evaluate_compartments(conn, settings)
        assert stats.errors == [] and stats.subjects == 1
        found = alarms(conn)
        if hour < 10:
            assert found == [], (hour, [(a["kind"], a["condition_since"]) for a in found])
        elif hour < 20:
            (alarm,) = found
            assert (alarm["kind"], alarm["state"]) == ("high", "active"), f"hour {hour}"
        else:
            (alarm,) = found
            assert alarm["state"] == "resolved", f"hour {hour}"

    (alarm,) = alarms(conn)
    assert alarm["condition_since"] == ts[600] and alarm["value"] == 9.0 and alarm["found_late"] is False
    (opened,) = events(conn, alarm["id"], "opened")
    assert datetime.fromisoformat(opened["details"]["condition_since"]) == ts[600]
    (cleared,) = events(conn, alarm["id"], "resolved")
    assert datetime.fromisoformat(cleared["details"]["condition_cleared_at"]) == ts[1205]
    assert events(conn, alarm["id"], "worsened") == []
    assert [r["step"] for r in outbox(conn)] == ["open"]


# ---------------------------------------------------------------------------------------------
# 3. Gateway outage


def test_gateway_outage_notifies_once_and_suppresses_its_probes(
    world: World, conn: psycopg.Connection, wecom: FakeWecom
) -> None:
    """Gateway 10001 reports online:false; its six probes then fall silent (no_data after 3 s here).
    One WeCom message, for the gateway; the six no_data alarms exist, tagged and suppressed."""
    settings = alarm_settings(wecom.url())
    extra = add_compartments(conn, world, "T1", 4)
    t1 = [world.compartments["T1/冷藏"], world.compartments["T1/冷冻"], *extra]
    for comp in t1:
        set_params(conn, comp, no_data_after="3s")
    settle(conn)  # every probe, T1's included, reports now
    one_pass(conn, settings, silence=True)
    assert alarms(conn) == []

    gateway = world.gateways["10001"]
    add_status(conn, gateway, utcnow(), online=False)
    one_pass(conn, settings, silence=True)
    (gw_alarm,) = alarms(conn)
    assert (gw_alarm["kind"], gw_alarm["severity"], gw_alarm["gateway_id"]) == ("gateway_offline", "critical", gateway)

    run_passes(conn, settings, 8, silence=True, until=lambda: len(alarms(conn)) == 1 + len(t1))
    run_passes(conn, settings, 0.5, silence=True)
    found = alarms(conn)
    silent = [a for a in found if a["kind"] == "no_data"]
    assert sorted(a["compartment_id"] for a in silent) == sorted(t1)
    assert all(a["suppressed"] and a["cause"] == "gateway_offline" and a["state"] == "active" for a in silent)
    assert {a["kind"] for a in found} == {"gateway_offline", "no_data"}
    for a in silent:
        assert outbox(conn, a["id"]) == []
    assert [(r["step"], r["sent_at"] is not None) for r in outbox(conn)] == [("open", True)]
    (message,) = wecom.messages()  # one for the outage, none per probe
    assert alarm_ids(message.content) == [gw_alarm["id"]]
    assert "网关离线" in message.content and "网关 10001" in message.content and UNIT_T1 in message.content


# ---------------------------------------------------------------------------------------------
# 4. Late data


def test_buffered_upload_raises_found_late_from_the_first_breach(
    world: World, conn: psycopg.Connection, wecom: FakeWecom
) -> None:
    """A gateway uploads 40 minutes of readings at once (ts 40 … 1 min ago, received now). T1's
    excursion (9.5 ℃ for 20 min) ended inside the upload; T2's is still going. Both are raised
    found late from their first breaching reading and notified; T1's, already over, owes nothing
    more, T2's escalates."""
    settings = alarm_settings(wecom.url(), steps="1s,2s")
    base = (utcnow() - timedelta(minutes=40)).replace(microsecond=0)
    ts = [base + timedelta(minutes=i) for i in range(40)]
    ended = [(ts[i], 9.5 if 5 <= i < 25 else 4.5) for i in range(40)]
    ongoing = [(ts[i], 9.5 if i >= 5 else 4.5) for i in range(40)]
    add_readings(conn, world.probes["108601"], ended)
    add_readings(conn, world.probes["208601"], ongoing)
    one_pass(conn, settings)

    by_comp = {a["compartment_id"]: a for a in alarms(conn)}
    over, still = by_comp[world.compartments["T1/冷藏"]], by_comp[world.compartments["T2/冷藏"]]
    assert len(by_comp) == 2
    for a in (over, still):
        assert (a["kind"], a["found_late"], a["condition_since"], a["value"]) == ("high", True, ts[5], 9.5)
        assert a["raised_at"] - a["condition_since"] > timedelta(minutes=30)
    assert over["state"] == "resolved" and over["resolved_at"] == over["raised_at"]
    (cleared,) = events(conn, over["id"], "resolved")
    assert datetime.fromisoformat(cleared["details"]["condition_cleared_at"]) == ts[30]  # back at 25, held 5 min
    assert still["state"] == "active"

    (message,) = wecom.messages()
    assert sorted(alarm_ids(message.content)) == sorted([over["id"], still["id"]])
    assert message.content.count("迟报") == 2 and UNIT_T1 in message.content and UNIT_T2 in message.content

    time.sleep(2.2)
    run_passes(conn, settings, 0.5)
    assert [r["step"] for r in outbox(conn, over["id"])] == ["open"]
    assert [r["step"] for r in outbox(conn, still["id"])] == ["open", "level2", "level3"]
    assert notices(wecom.messages()) == expected_notices(outbox(conn))


# ---------------------------------------------------------------------------------------------
# 5. The robot down, then up


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
# 6. Rate limit and merging


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
# 7. Rule state survives a restart


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
# 8. Two schedulers


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
# 9. A scheduler outage does not skip a due escalation


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
# 10. One compartment's broken parameters do not silence the others


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
