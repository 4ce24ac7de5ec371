"""The scheduler judges readings when the ingester says it stored them (issue #17): a real
``coldchain.scheduler.build()`` LISTENing as the runtime role, readings written by the real ingest
statement (through the ingester and broker, or directly), and the periodic look as the safety net
for a notification nobody heard. Plus the quieting of APScheduler's "skipped" warnings.

The periodic intervals are long (60 s) wherever the test is about the reactive path, so an alarm
within a second or two can only have come from the notification or the catch-up after a
reconnection.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest
from alarmhelp import add_readings, alarm_settings, alarm_world, notices, probe_of, running_wecom, set_params
from apihelp import World
from apscheduler.schedulers.background import BackgroundScheduler
from dbhelp import as_runtime
from fakewecom import FakeWecom
from ingesthelp import config, publish, running, store_readings, telemetry, wait_until

from coldchain import services
from coldchain.core import db
from coldchain.reactive import LISTEN_APPLICATION
from coldchain.scheduler import Intervals, Scheduler, _QuietSkips, build

# Every periodic job far away: only what a test means to exercise runs.
SLOW = Intervals(evaluate=60, deliver=60, escalate=60, silence=600, aggregates=600, evaluate_listening=60)


@pytest.fixture
def world(db_url: str) -> World:
    return alarm_world(db_url)


@pytest.fixture
def wecom() -> Iterator[FakeWecom]:
    with running_wecom() as fake:
        yield fake


@pytest.fixture
def conn(db_url: str) -> Iterator[psycopg.Connection]:
    with db.connect(db_url) as c:
        yield c


@contextmanager
def scheduler(db_url: str, wecom: FakeWecom, intervals: Intervals) -> Iterator[Scheduler]:
    """A real scheduler as the runtime role, running until the block ends, once it listens."""
    sched, pool = build(alarm_settings(wecom.url()), as_runtime(db_url), intervals)
    sched.start()
    try:
        wait_for(lambda: sched.reactive.listening, 10, "the listener")
        yield sched
    finally:
        sched.shutdown(wait=True)
        pool.close()


def wait_for(check: Callable[[], bool], seconds: float, what: str) -> float:
    """Poll ``check`` until it holds; the seconds it took."""
    started = time.monotonic()
    while not check():
        if time.monotonic() - started > seconds:
            raise AssertionError(f"{seconds} 秒内未等到：{what}")
        time.sleep(0.01)
    return time.monotonic() - started


def open_alarm(conn: psycopg.Connection, compartment: int) -> bool:
    row = conn.execute(
        "SELECT 1 FROM alarms WHERE compartment_id = %s AND kind = 'high' AND state = 'active'", (compartment,)
    ).fetchone()
    conn.commit()
    return row is not None


def zero_delay(conn: psycopg.Connection, world: World, *keys: str) -> list[int]:
    """The compartments named, each alarming on the first reading above +8 ℃."""
    out = []
    for key in keys:
        compartment = world.compartments[key]
        set_params(conn, compartment, delay=0)
        out.append(compartment)
    return out


def test_a_published_reading_alarms_within_seconds_though_the_pass_is_a_minute_away(
    db_url: str, world: World, wecom: FakeWecom, conn: psycopg.Connection, mqtt_broker: services.Started
) -> None:
    (compartment,) = zero_delay(conn, world, "T1/冷藏")

    async def ingest() -> float:
        async with running(config(db_url, mqtt_broker.url)) as ing:
            ts_ms = int(datetime.now(UTC).timestamp() * 1000)
            started = time.monotonic()
            await publish(mqtt_broker.url, [telemetry("10001", [{"probe": "108601", "t": 15.0, "ts": ts_ms}])])
            await wait_until(lambda: ing.metrics.readings_stored == 1, what="the reading stored")
            return started

    with scheduler(db_url, wecom, SLOW):
        time.sleep(0.5)  # the look at start is over: from here only a notification can help
        published = asyncio.run(ingest())
        wait_for(lambda: open_alarm(conn, compartment), 5, "the alarm")
        alarm_after = time.monotonic() - published
        wait_for(lambda: bool(wecom.messages()), 5, "the WeCom message")
        robot_after = time.monotonic() - published
    assert alarm_after < 2.0, f"报警在发布后 {alarm_after:.2f} 秒才开启"
    assert robot_after < 2.5, f"企业微信消息在发布后 {robot_after:.2f} 秒才到"
    assert [wording for _, _, wording in notices(wecom.messages())] == ["报警通知"]


def test_a_reading_nobody_announced_is_found_by_the_periodic_look(
    db_url: str, world: World, wecom: FakeWecom, conn: psycopg.Connection
) -> None:
    """Written without a NOTIFY (a notification lost, an older writer): only the look finds it."""
    (compartment,) = zero_delay(conn, world, "T1/冷藏")
    intervals = Intervals(evaluate=60, deliver=60, escalate=60, silence=600, aggregates=600, evaluate_listening=2)
    with scheduler(db_url, wecom, intervals) as sched:
        assert sched.reactive.listening
        add_readings(conn, probe_of(conn, compartment), [(datetime.now(UTC), 15.0)])
        took = wait_for(lambda: open_alarm(conn, compartment), 6, "the alarm from the periodic look")
    # Within one look period (2 s) and the judging; no lower bound: the look may fall right after
    # the insert (it did, once in a full run: 0.05 s). Nothing else could have found the reading —
    # add_readings sends no NOTIFY — so the alarm itself is the proof.
    assert took < 3.5


def _terminate_listener(owner: psycopg.Connection, db_url: str) -> None:
    owner.execute(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s AND application_name = %s",
        (db.database_name(db_url), LISTEN_APPLICATION),
    )
    owner.commit()


def _listeners(owner: psycopg.Connection, db_url: str) -> int:
    row = owner.execute(
        "SELECT count(*) FROM pg_stat_activity WHERE datname = %s AND application_name = %s",
        (db.database_name(db_url), LISTEN_APPLICATION),
    ).fetchone()
    owner.commit()
    assert row is not None
    return int(row[0])


def test_readings_stored_while_the_listener_reconnects_are_caught_up(
    db_url: str, world: World, wecom: FakeWecom, conn: psycopg.Connection
) -> None:
    first, second = zero_delay(conn, world, "T1/冷藏", "T2/冷藏")
    with scheduler(db_url, wecom, SLOW) as sched:
        _terminate_listener(conn, db_url)
        wait_for(lambda: not sched.reactive.listening, 5, "the listener to notice")
        # Stored by the ingest statement, NOTIFY and all, while nobody listens: the notification is lost.
        store_readings(db_url, [(probe_of(conn, first), datetime.now(UTC), 15.0)])
        assert _listeners(conn, db_url) == 0
        wait_for(lambda: sched.reactive.listening, 10, "the listener back")
        took = wait_for(lambda: open_alarm(conn, first), 3, "the alarm from the catch-up look")
        # And it listens again: the next reading is judged at once.
        started = time.monotonic()
        store_readings(db_url, [(probe_of(conn, second), datetime.now(UTC), 15.0)])
        wait_for(lambda: open_alarm(conn, second), 3, "the alarm from the notification")
        after = time.monotonic() - started
    assert took < 2.0
    assert after < 1.5


def test_while_the_listener_cannot_connect_the_periodic_look_runs_at_the_short_interval(
    db_url: str, world: World, wecom: FakeWecom, conn: psycopg.Connection
) -> None:
    """The database refuses the runtime role's new connections (a connection limit of 0; pooled
    connections stay): the listener stays down, and the look every ``evaluate`` second — not every
    ``evaluate_listening`` — finds the readings."""
    first, second = zero_delay(conn, world, "T1/冷藏", "T2/冷藏")
    name = db.database_name(db_url)
    intervals = Intervals(evaluate=1, deliver=60, escalate=60, silence=600, aggregates=600, evaluate_listening=60)
    with db.connect(db_url, autocommit=True) as admin, scheduler(db_url, wecom, intervals) as sched:
        time.sleep(0.5)  # the jobs that run at start have their pooled connections
        admin.execute(f'ALTER DATABASE "{name}" CONNECTION LIMIT 0')
        try:
            _terminate_listener(conn, db_url)
            wait_for(lambda: not sched.reactive.listening, 5, "the listener to notice")
            time.sleep(1.5)  # past the catch-up look the loss itself triggered
            add_readings(conn, probe_of(conn, first), [(datetime.now(UTC), 15.0)])
            took = wait_for(lambda: open_alarm(conn, first), 4, "the alarm from the periodic look")
            assert not sched.reactive.listening and _listeners(conn, db_url) == 0
        finally:
            admin.execute(f'ALTER DATABASE "{name}" CONNECTION LIMIT -1')
        wait_for(lambda: sched.reactive.listening, 40, "the listener back")
        store_readings(db_url, [(probe_of(conn, second), datetime.now(UTC), 15.0)])
        wait_for(lambda: open_alarm(conn, second), 3, "the alarm after the listener came back")
    assert took < 2.5


def test_two_listening_schedulers_raise_and_notify_each_alarm_once(
    db_url: str, world: World, wecom: FakeWecom, conn: psycopg.Connection
) -> None:
    compartments = zero_delay(conn, world, "T1/冷藏", "T2/冷藏", "T3/冷藏")
    with scheduler(db_url, wecom, SLOW), scheduler(db_url, wecom, SLOW):
        now = datetime.now(UTC)
        for k in range(5):  # five batches, each heard by both
            store_readings(db_url, [(probe_of(conn, c), now + timedelta(seconds=k), 15.0 + k) for c in compartments])
        wait_for(lambda: all(open_alarm(conn, c) for c in compartments), 5, "every alarm")
        time.sleep(1.0)  # time for a second notice, if one were ever to be sent
    count = conn.execute("SELECT count(*) FROM alarms").fetchone()
    assert count is not None and count[0] == len(compartments)
    sent = notices(wecom.messages())
    assert len(sent) == len(compartments) and set(sent.values()) == {1}, sent


# ---------------------------------------------------------------------------------------------
# APScheduler's "skipped: maximum number of running instances reached"


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@contextmanager
def _captured(*names: str) -> Iterator[_Records]:
    handler = _Records()
    loggers = [logging.getLogger(n) for n in names]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.addHandler(handler)
        lg.setLevel(logging.DEBUG)
    try:
        yield handler
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.removeHandler(handler)
            lg.setLevel(level)


def _overrun(logger: Any) -> None:
    """A job that takes 1 s on a 0.1 s interval, for 1.5 s, under a real APScheduler."""
    sched = BackgroundScheduler(
        logger=logger, job_defaults={"max_instances": 1, "coalesce": True, "misfire_grace_time": 30}
    )
    release = threading.Event()
    sched.add_job(lambda: release.wait(1.0), "interval", seconds=0.1, id="报警升级", name="报警升级")
    sched.start()
    time.sleep(1.5)
    release.set()
    sched.shutdown(wait=True)


def test_skipped_runs_of_our_jobs_do_not_flood_the_log_but_other_warnings_pass() -> None:
    apscheduler_log = logging.getLogger("apscheduler.scheduler")
    with _captured("apscheduler.scheduler", "coldchain.scheduler") as plain:
        _overrun(apscheduler_log)
    skipped = [r for r in plain.records if "maximum number of running instances" in r.getMessage()]
    assert len(skipped) >= 5  # the flood, without the adapter

    quiet = _QuietSkips(apscheduler_log, {"报警升级"})
    with _captured("apscheduler.scheduler", "coldchain.scheduler") as got:
        _overrun(quiet)
        quiet.warning("Run time of job %s was missed by %s", "报警升级", "0:00:31")
        quiet.warning('Execution of job "%s" skipped: maximum number of running instances reached (%d)', "other", 1)
    messages = [(r.levelno, r.name, r.getMessage()) for r in got.records]
    assert not [m for m in messages if "maximum number of running instances" in m[2] and "other" not in m[2]]
    summaries = [m for m in messages if m[1] == "coldchain.scheduler" and "上次运行尚未结束" in m[2]]
    assert len(summaries) == 1 and summaries[0][0] == logging.INFO
    assert (logging.WARNING, "apscheduler.scheduler", "Run time of job 报警升级 was missed by 0:00:31") in messages
    assert any("other" in m[2] and m[0] == logging.WARNING for m in messages)  # not one of our jobs: unchanged
