"""Alarms end to end (issue #5): readings as the ingester stores them → rules → alarms → outbox →
a fake WeCom robot over real HTTP, with escalation in seconds instead of half-hours.

Covered: the full ladder (acknowledging does not stop it, resolution does, a resolved but unclosed
alarm reminds level 1), flapping at the threshold, gateway outage suppression and late data. What
must survive when something on the way fails is in test_alarm_flow_robustness.py.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterator
from datetime import datetime, timedelta
from decimal import Decimal

import psycopg
import pytest
from alarmhelp import (
    UNIT_T1,
    UNIT_T2,
    _sent,
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
    rows,
    run_passes,
    set_params,
    settle,
    step_label,
    utcnow,
)
from apihelp import World
from fakewecom import FakeWecom

from alarms.engine import evaluate_compartments
from alarms.life import acknowledge
from coldchain.core import db


@pytest.fixture
def world(db_url: str) -> World:
    return alarm_world(db_url)


@pytest.fixture
def conn(db_url: str) -> Iterator[psycopg.Connection]:
    with db.connect(db_url) as c:
        yield c


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
