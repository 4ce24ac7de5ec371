"""The loop closed for the people at the end of an alarm (issue #17), end to end: readings → rules →
outbox → a fake WeCom robot over real HTTP.

Acknowledgement is announced to the levels already told; the end of the condition once to every
level told, with its duration and extremes; closing tells level 2 the cause and the vaccines' fate;
every message names the responsible people with their phones, and a message sending people out is
followed by a text message that @mentions them by mobile — all within the robot's 20 requests a
minute counted on arrival. A unit with nowhere to send says so on the row, in the history and in
the log.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from datetime import timedelta

import psycopg
import pytest
from alarmhelp import (
    add_compartments,
    add_readings,
    alarm_settings,
    alarm_world,
    alarms,
    events,
    outbox,
    probe_of,
    rows,
    run_passes,
    running_wecom,
    set_params,
    utcnow,
)
from apihelp import World
from fakewecom import FakeWecom

from alarms.delivery import deliver
from alarms.engine import evaluate_compartments
from alarms.life import acknowledge, close
from coldchain.core import db

PHONES = {1: "13900000001", 2: "13900000002", 3: "13900000003"}


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


def _responsibles(conn: psycopg.Connection, world: World) -> dict[int, int]:
    """T1's three levels, one person each with a phone of their own: level → user id."""
    people: dict[int, int] = {}
    for level, phone in PHONES.items():
        row = conn.execute(
            """INSERT INTO users (username, real_name, phone, unit_id, role, password_hash)
               VALUES (%s, %s, %s, %s, 'business_admin', 'x') RETURNING id""",
            (f"duty{level}", f"值班{level}号", phone, world.units["T1"]),
        ).fetchone()
        assert row
        conn.execute(
            "INSERT INTO unit_responsibles (unit_id, level, user_id) VALUES (%s, %s, %s)",
            (world.units["T1"], level, row[0]),
        )
        people[level] = row[0]
    conn.commit()
    return people


def _markdown(fake: FakeWecom) -> list[str]:
    return [m.content for m in fake.messages() if m.body["msgtype"] == "markdown"]


def test_messages_say_who_is_on_it_and_when_it_is_over(
    world: World, conn: psycopg.Connection, wecom: FakeWecom
) -> None:
    settings = alarm_settings(wecom.url(), steps="2s,4s", reminder="1h", resolved="1h")
    people = _responsibles(conn, world)
    comp, probe = world.compartments["T1/冷藏"], world.probes["108601"]
    set_params(conn, comp, delay=0, hold=0)
    add_readings(conn, probe, [(utcnow(), 9.0)])
    run_passes(conn, settings, 1.0, until=lambda: len(wecom.messages()) >= 2)

    # The first notice: nobody yet, level 1 named with phone, then a text message @mentioning them.
    first, mention = wecom.messages()[:2]
    assert "尚无人确认" in first.content
    assert f"负责人：一级 值班1号 {PHONES[1]}" in first.content
    assert mention.body["msgtype"] == "text"
    assert mention.body["text"]["mentioned_mobile_list"] == [PHONES[1]]
    (alarm,) = alarms(conn)
    assert str(alarm["id"]) in mention.body["text"]["content"]

    # Level 1 acknowledges from WeChat, on site: level 1 (the only level told) hears it at once.
    (row,) = rows(conn, "SELECT * FROM alarms WHERE id = %s", (alarm["id"],))
    acknowledge(conn, row, people[1], "wechat", True, "已在现场")
    conn.commit()
    run_passes(conn, settings, 6, until=lambda: any(r["step"] == "level3" and r["sent_at"] for r in outbox(conn)))
    by_step = {r["step"]: r for r in outbox(conn)}
    assert by_step["ack"]["levels"] == [1]
    texts = _markdown(wecom)
    ack_notice = next(t for t in texts if "已确认通知" in t)
    assert "值班1号" in ack_notice and "经微信确认，已在现场：“已在现场”" in ack_notice
    # Escalations after the acknowledgement carry it: level 3 is not sent out blind.
    level3 = next(t for t in texts if "三级负责人 · 升级通知" in t)
    assert "经微信确认，已在现场" in level3 and "尚无人确认" not in level3
    assert f"三级 值班3号 {PHONES[3]}" in level3
    mentions = [m.body["text"]["mentioned_mobile_list"] for m in wecom.messages() if m.body["msgtype"] == "text"]
    assert sorted(PHONES.values()) in [sorted(m) for m in mentions]  # level 3's step mentions all three
    assert not any("已确认通知" in m.body["text"]["content"] for m in wecom.messages() if m.body["msgtype"] == "text")

    # Back in range: one resolution notice to every level told, with duration and extremes.
    add_readings(conn, probe, [(utcnow(), 5.0)])
    run_passes(conn, settings, 4, until=lambda: any(r["step"] == "resolved" and r["sent_at"] for r in outbox(conn)))
    over = [t for t in _markdown(wecom) if "恢复通知" in t]
    assert len(over) == 1
    assert (
        "三级负责人 · 恢复通知" in over[0] and "恢复正常，持续" in over[0] and "期间最高 9.0 ℃、最低 5.0 ℃" in over[0]
    )
    assert {r["step"]: r["levels"] for r in outbox(conn)}["resolved"] == [1, 2, 3]
    told_before = len(wecom.messages())
    run_passes(conn, settings, 1.0)
    assert len(wecom.messages()) == told_before  # announced once

    # Closed with cause and disposal: level 2 hears it, and nobody is @mentioned for it.
    (row,) = rows(conn, "SELECT * FROM alarms WHERE id = %s", (alarm["id"],))
    close(
        conn,
        row,
        people[1],
        "web",
        version=row["version"],
        cause="门未关严",
        action="关门并复核温度",
        vaccine_disposition="评估后继续使用",
    )
    conn.commit()
    run_passes(conn, settings, 4, until=lambda: any(r["step"] == "closed" and r["sent_at"] for r in outbox(conn)))
    closed_rows = [r for r in outbox(conn) if r["step"] == "closed"]
    assert [r["levels"] for r in closed_rows] == [[2]]
    (closing,) = [t for t in _markdown(wecom) if "关闭通知" in t]
    assert "二级负责人 · 关闭通知" in closing
    assert "原因 门未关严；处置 关门并复核温度；疫苗处理 评估后继续使用" in closing
    assert wecom.messages()[-1].body["msgtype"] == "markdown"
    run_passes(conn, settings, 0.6)
    assert len([r for r in outbox(conn) if r["step"] == "closed"]) == 1


def test_an_alarm_found_late_and_already_over_is_announced_once(
    world: World, conn: psycopg.Connection, wecom: FakeWecom
) -> None:
    """A gateway's buffered upload: the excursion began and ended before anyone could be told. One
    notice, saying it is over — not an alarm followed by a separate "it is over"."""
    settings = alarm_settings(wecom.url())
    comp, probe = world.compartments["T1/冷藏"], world.probes["108601"]
    set_params(conn, comp, delay=0, hold=0)
    now = utcnow()
    add_readings(conn, probe, [(now - timedelta(minutes=20), 9.5), (now - timedelta(minutes=10), 5.0)])
    run_passes(conn, settings, 1.5)
    (alarm,) = alarms(conn)
    assert alarm["state"] == "resolved" and alarm["found_late"]
    assert [r["step"] for r in outbox(conn)] == ["open"]
    (message,) = wecom.messages()
    assert "恢复正常，持续" in message.content and "期间最高 9.5 ℃" in message.content


def test_mentions_count_against_twenty_a_minute_by_arrival(
    world: World, conn: psycopg.Connection, wecom: FakeWecom
) -> None:
    """Alarm messages each followed by its @mention, on a robot whose last minute already took 15
    requests: never more than 20 requests in any 60 s by the robot's own arrival times."""
    settings = alarm_settings(wecom.url())
    _responsibles(conn, world)
    url = wecom.url()
    conn.execute(
        """INSERT INTO robot_posts (target_digest, posted_at)
           SELECT encode(sha256(convert_to(%s, 'UTF8')), 'hex'), clock_timestamp() - interval '58 seconds'
           FROM generate_series(1, 15)""",
        (url,),
    )
    conn.commit()
    comps = add_compartments(conn, world, "T1", 4)
    for comp in comps:
        set_params(conn, comp, delay=0)
        add_readings(conn, probe_of(conn, comp), [(utcnow(), 9.0)])
        # One alarm per pass, so each goes out as a message of its own (with its mention).
        run_passes(conn, settings, 0.3)
    stats = deliver(conn, settings)
    assert stats.errors == []
    run_passes(conn, settings, 8, until=lambda: all(r["sent_at"] for r in outbox(conn)))
    received = wecom.messages()
    assert sum(1 for m in received if m.body["msgtype"] == "text") >= 2
    posted = [
        r[0]
        for r in conn.execute("SELECT extract(epoch FROM posted_at)::float8 FROM robot_posts ORDER BY 1").fetchall()
    ]
    assert len(posted) == 15 + len(received)
    # The robot's arrival times, with the 15 earlier requests at their recorded moments.
    times = sorted(posted[:15] + [m.at for m in received])
    assert max(sum(1 for u in times if t - 60 < u <= t) for t in times) <= 20
    # Two messages with their mentions fit the five left; the third had to wait for the fifteen.
    assert len(received) >= 5 and received[4].at >= posted[0] + 60


def test_a_unit_with_nowhere_to_send_says_so(
    world: World, conn: psycopg.Connection, caplog: pytest.LogCaptureFixture
) -> None:
    settings = alarm_settings(None)
    comp, probe = world.compartments["T1/冷藏"], world.probes["108601"]
    set_params(conn, comp, delay=0)
    add_readings(conn, probe, [(utcnow(), 9.0)])
    caplog.set_level(logging.WARNING, logger="coldchain.alarms.delivery")
    evaluate_compartments(conn, settings)
    deliver(conn, settings)
    (alarm,) = alarms(conn)
    (row,) = outbox(conn)
    assert row["sent_at"] is None and "单位未配置通知去处" in row["last_error"]
    (failed,) = events(conn, alarm["id"], "notify_failed")
    assert "单位未配置通知去处" in failed["details"]["error"]
    assert any("单位未配置通知去处" in r.getMessage() and str(alarm["id"]) in r.getMessage() for r in caplog.records)
    deliver(conn, settings)
    assert len(events(conn, alarm["id"], "notify_failed")) == 1  # said once, not every pass
