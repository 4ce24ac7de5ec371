"""``coldchain scheduler``: the periodic work, on APScheduler — no-data and gateway checks,
escalation, the outbox worker, the aggregate refresh — and rule evaluation as soon as readings
arrive.

Each job is a short function over a pooled connection; APScheduler runs them in a thread pool
with ``max_instances=1`` (a slow pass is never overlapped by its own next run) and ``coalesce``
(a backlog of missed runs becomes one). Running two schedulers is safe: the jobs lock what they
work on with SKIP LOCKED and write idempotently (see :mod:`alarms.engine`).

Rule evaluation is not an interval job (issue #17). Waiting for a one-second tick made the tick
most of the time from a reading to its WeCom message; instead the ingester NOTIFYs the
compartments each batch stored (``ingest.store.READINGS_CHANNEL``, docs/ingest.md), and
:class:`ReactiveEvaluation` LISTENs on a connection of its own and judges them at once. A look at
every compartment with unseen readings (the old periodic pass) stays as the safety net: at start,
after every (re)connection of the listener, when a batch was too large to list, and every
``Intervals.evaluate_listening`` seconds — or every ``Intervals.evaluate`` seconds while nobody is
listening.
"""

from __future__ import annotations

import logging
import random
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
from apscheduler.executors.pool import ThreadPoolExecutor
from apscheduler.schedulers.background import BackgroundScheduler
from psycopg import sql
from psycopg.conninfo import make_conninfo
from psycopg_pool import ConnectionPool

from alarms.delivery import deliver
from alarms.engine import (
    PassStats,
    check_silence,
    escalate,
    evaluate_compartment_ids,
    evaluate_gateways,
    fresh_compartments,
)
from analytics.aggregates import refresh_aggregates
from analytics.report.build import generate_missing
from coldchain.core import db
from coldchain.core.settings import Settings
from ingest.store import READINGS_CHANNEL, compartments_notified

log = logging.getLogger("coldchain.scheduler")
EVALUATE_JOB = "评估读数"
SILENCE_JOB = "无数据与网关检查"
REPORT_JOB = "月度冷链报告"
LISTEN_APPLICATION = "coldchain-scheduler-listen"
# Compartments judged per transaction by the reactive path. A notification names about one ingest
# batch's worth (≈ 250 at 5 000 readings/s); what piles up while a chunk runs is taken next,
# oldest notification first, so no compartment waits behind a whole province. (Sharing what waits
# among idle threads, in chunks down to 50, was tried: more transactions, no lower p95.)
CHUNK = 250
# Threads judging chunks side by side (disjoint compartments, so they never wait for each other):
# while one waits for the database the other runs the rules. One thread could not keep up with
# 5 000 readings/s for 2 000 compartments on the benchmark's two cores; two do.
EVALUATORS = 2
# After a chunk met state rows another pass holds (the silence check, a second scheduler), look
# again this soon: those compartments stay fresh, and the next look finds them.
RETRY_LOCKED = 0.2
# While compartments wait, a requested look (a back-fill sends {"all":true} with every batch)
# comes at most this often: each look queries every compartment, and what it finds waits anyway.
LOOK_GAP = 0.25


@dataclass(frozen=True)
class Intervals:
    """Seconds between runs of each job.

    ``evaluate`` and ``evaluate_listening`` are the safety-net look at every compartment with unseen
    readings: every ``evaluate`` seconds while the listener is down, every ``evaluate_listening``
    seconds while notifications arrive (then it only finds what a lost notification or a skipped
    compartment left behind, and running it every second would judge the whole province twice)."""

    evaluate: float = 1.0
    deliver: float = 1.0
    escalate: float = 2.0
    silence: float = 15.0
    aggregates: float = 60.0
    evaluate_listening: float = 10.0


class ReactiveEvaluation:
    """Judge compartments as the ingester reports their readings, with a periodic look as the net.

    The listener's thread holds a dedicated autocommit connection (a pooled one would lose its
    LISTEN when returned) and only collects: each notification's compartments go into an ordered
    set — a compartment named again while it waits keeps its place, so a burst coalesces into one
    evaluation per compartment — or, for ``{"all":true}``, a request to look at everything fresh.
    Each of the :data:`EVALUATORS` threads takes up to :data:`CHUNK` compartments, oldest first,
    judges them in one transaction on a pooled connection and delivers at once what that queued
    (``then_deliver``).

    A notification can be missed — the listener was reconnecting, a state row was locked, an error
    rolled a batch back — but the readings stay "fresh" (``probe_latest.received_at`` past the rule
    state's cursor) until judged, so a look at everything fresh finds them all: one is taken after
    every (re)connection of the listener, after a chunk met locked rows, and periodically.
    """

    def __init__(
        self,
        pool: ConnectionPool,
        settings: Settings,
        database_url: str,
        intervals: Intervals,
        then_deliver: Callable[[Any, PassStats], PassStats],
    ) -> None:
        self._pool = pool
        self._settings = settings
        self._url = database_url
        self._intervals = intervals
        self._then_deliver = then_deliver
        self._cond = threading.Condition()
        self._pending: dict[int, None] = {}  # compartment ids, in the order first named
        self._look = True  # look at every fresh compartment first thing: whatever came while we were away
        self._look_at = 0.0  # time.monotonic() of the next periodic look
        self._looked = -LOOK_GAP  # time.monotonic() of the last look
        self._listening = False
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    @property
    def listening(self) -> bool:
        """True while the listener's connection is up and LISTENing."""
        return self._listening

    def start(self) -> None:
        self._stop.clear()
        self._threads = [
            threading.Thread(target=self._listen, name="coldchain-listen", daemon=True),
            *(
                threading.Thread(target=self._evaluate, name=f"coldchain-evaluate-{n}", daemon=True)
                for n in range(EVALUATORS)
            ),
        ]
        for thread in self._threads:
            thread.start()

    def stop(self, timeout: float = 30.0) -> None:
        """Stop the threads; a chunk being judged is finished first (its transaction commits)."""
        self._stop.set()
        with self._cond:
            self._cond.notify_all()
        for thread in self._threads:
            thread.join(timeout)

    # ------------------------------------------------------------------ listener
    def _listen(self) -> None:
        delay = 0.5
        lost_at: float | None = None
        while not self._stop.is_set():
            try:
                # TCP keepalives: a silently vanished server (no RST) is noticed within ~30 s.
                url = make_conninfo(self._url, keepalives_idle=10, keepalives_interval=5, keepalives_count=3)
                with db.connect(url, autocommit=True, application=LISTEN_APPLICATION) as conn:
                    conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(READINGS_CHANNEL)))
                    # From here on nothing committed is missed; what came before, the look finds.
                    self._set_listening(True)
                    if lost_at is not None:
                        log.info("已恢复监听新读数通知（中断 %.1f 秒）", time.monotonic() - lost_at)
                        lost_at = None
                    delay = 0.5
                    while not self._stop.is_set():
                        for note in conn.notifies(timeout=0.5):
                            self._heard(note.payload)
            except Exception as exc:
                if lost_at is None:
                    lost_at = time.monotonic()
                    log.warning(
                        "监听新读数通知中断（%s）：改为每 %g 秒检查一次新读数，%.1f 秒后重连",
                        str(exc).strip() or type(exc).__name__,
                        self._intervals.evaluate,
                        delay,
                        exc_info=not isinstance(exc, psycopg.Error),  # a bug, not the database: show where
                    )
            finally:
                self._set_listening(False)
            self._stop.wait(delay * (1 + random.random() / 2))
            delay = min(delay * 2, 30.0)

    def _set_listening(self, up: bool) -> None:
        with self._cond:
            if up and not self._listening:
                self._look = True
            elif not up and self._listening:
                self._look_at = min(self._look_at, time.monotonic() + self._intervals.evaluate)
            self._listening = up
            self._cond.notify_all()

    def _heard(self, payload: str) -> None:
        ids = compartments_notified(payload)
        with self._cond:
            if ids is None:
                self._look = True
            else:
                for cid in ids:
                    self._pending.setdefault(cid)
            self._cond.notify_all()

    # ------------------------------------------------------------------ evaluator
    def _next(self) -> tuple[bool, list[int]] | None:
        """Wait for work: (look at everything fresh, compartments to judge); None when stopping."""
        with self._cond:
            while not self._stop.is_set():
                now = time.monotonic()
                if now >= self._look_at or (self._look and (not self._pending or now - self._looked >= LOOK_GAP)):
                    self._look = False
                    period = self._intervals.evaluate_listening if self._listening else self._intervals.evaluate
                    self._look_at = now + period
                    self._looked = now
                    return True, []
                if self._pending:
                    chunk = []
                    for cid in self._pending:
                        chunk.append(cid)
                        if len(chunk) == CHUNK:
                            break
                    for cid in chunk:
                        del self._pending[cid]
                    return False, chunk
                self._cond.wait(self._look_at - now)  # a look or a notification wakes us earlier
        return None

    def _evaluate(self) -> None:
        while not self._stop.is_set():
            try:
                # One pooled connection per thread for as long as it works: checking one out per
                # chunk cost the pool's health check, a round trip, every time.
                with self._pool.connection() as conn:
                    while (work := self._next()) is not None:
                        self._judge(conn, *work)
                return
            except Exception:
                # The database is away or the connection broke: what was not judged stays fresh,
                # and the look after the pause finds it.
                log.exception("定时任务 %s 失败", EVALUATE_JOB)
                with self._cond:
                    self._look_at = min(self._look_at, time.monotonic() + 1.0)
                self._stop.wait(1.0)

    def _judge(self, conn: Any, look: bool, chunk: list[int]) -> None:
        started = time.monotonic()
        if look:
            fresh = fresh_compartments(conn)
            with self._cond:
                for cid in fresh:
                    self._pending.setdefault(cid)
            log.debug("新读数：全面查看，%d 个温区待评估（%.0f ms）", len(fresh), _ms(started))
            return
        stats = evaluate_compartment_ids(conn, self._settings, chunk)
        judged = _ms(started)
        self._then_deliver(conn, stats)
        log.debug(
            "新读数：评估 %d/%d 个温区，跳过 %d，开启 %d，通知 %d，仍待 %d（评估 %.0f ms，共 %.0f ms）",
            stats.subjects,
            len(chunk),
            stats.skipped_locked,
            stats.opened,
            stats.enqueued,
            len(self._pending),
            judged,
            _ms(started),
        )
        if stats.errors:
            log.warning("%s：%d 个对象出错，首个：%s", EVALUATE_JOB, len(stats.errors), stats.errors[0])
        if stats.skipped_locked:
            with self._cond:
                self._look_at = min(self._look_at, time.monotonic() + RETRY_LOCKED)


def _ms(since: float) -> float:
    return (time.monotonic() - since) * 1000


class _QuietSkips(logging.LoggerAdapter):  # type: ignore[type-arg]
    """APScheduler's own log, minus the flood of "skipped: maximum number of running instances
    reached" for our interval jobs.

    A job still running at its next tick skips that tick (``max_instances=1``), and APScheduler
    warns every time — during the demo's back-fill, every second. For a periodic pass that is
    expected and harmless: the next run does the work. So those lines are counted and summed up
    at most once per :attr:`EVERY` seconds per job, at INFO; every other message, warnings
    included, passes unchanged."""

    EVERY = 600.0
    _SKIPPED = 'Execution of job "%s" skipped: maximum number of running instances reached'

    def __init__(self, logger: logging.Logger, jobs: set[str]) -> None:
        super().__init__(logger, {})
        self._jobs = jobs
        self._skips: dict[str, tuple[int, float]] = {}  # job id → (skips since the last line, its time)
        self._lock = threading.Lock()

    def log(self, level: int, msg: object, *args: object, **kwargs: Any) -> None:
        job = getattr(args[0], "id", None) if args else None
        if isinstance(msg, str) and msg.startswith(self._SKIPPED) and job in self._jobs:
            self._skipped(job)
            return
        super().log(level, msg, *args, **kwargs)

    def _skipped(self, job: str) -> None:
        now = time.monotonic()
        with self._lock:
            count, since = self._skips.get(job, (0, -self.EVERY))
            if now - since < self.EVERY:
                self._skips[job] = (count + 1, since)
                return
            self._skips[job] = (0, now)
        log.info(
            "定时任务 %s 上次运行尚未结束，跳过本次（属正常；上次记录以来又跳过 %d 次，此类消息每 %d 分钟至多一条）",
            job,
            count,
            self.EVERY // 60,
        )


class Scheduler(BackgroundScheduler):  # type: ignore[misc]  # APScheduler has no type hints
    """APScheduler's background scheduler that also starts and stops the reactive evaluation, so
    that ``start()`` / ``shutdown()`` cover all of the scheduler's work."""

    def __init__(self, reactive: ReactiveEvaluation, **options: Any) -> None:
        super().__init__(**options)
        self.reactive = reactive

    def start(self, *args: Any, **kwargs: Any) -> None:
        super().start(*args, **kwargs)
        self.reactive.start()

    def shutdown(self, wait: bool = True) -> None:
        self.reactive.stop()
        super().shutdown(wait)


def build(settings: Settings, database_url: str, intervals: Intervals) -> tuple[Scheduler, Any]:
    # Six job threads and the evaluators; the listener has a connection of its own.
    pool = db.pool(database_url, application="coldchain-scheduler", max_size=6 + EVALUATORS)
    pool.open(wait=True, timeout=30)

    def job(name: str, work: Callable[[Any], Any]) -> Callable[[], None]:
        def run() -> None:
            try:
                with pool.connection() as conn:
                    result = work(conn)
                errors = getattr(result, "errors", None)
                if errors:
                    log.warning("%s：%d 个对象出错，首个：%s", name, len(errors), errors[0])
            except Exception:
                log.exception("定时任务 %s 失败", name)

        return run

    def then_deliver(conn: Any, stats: Any) -> Any:
        """A pass that queued notices delivers them at once instead of waiting for the outbox job:
        that wait was up to a whole interval of the reading-to-WeCom time."""
        if stats.enqueued:
            deliver(conn, settings)
        return stats

    jobs: list[tuple[str, Callable[[Any], Any], float]] = [
        ("发送通知", lambda c: deliver(c, settings), intervals.deliver),
        ("报警升级", lambda c: then_deliver(c, escalate(c, settings)), intervals.escalate),
        (
            SILENCE_JOB,
            lambda c: (evaluate_gateways(c, settings), check_silence(c, settings))[1],
            intervals.silence,
        ),
        ("刷新聚合", lambda c: refresh_aggregates(database_url), intervals.aggregates),
    ]
    # APScheduler logs every run at INFO (several lines a second); only its warnings matter here.
    logging.getLogger("apscheduler").setLevel(logging.WARNING)
    scheduler = Scheduler(
        ReactiveEvaluation(pool, settings, database_url, intervals, then_deliver),
        executors={"default": ThreadPoolExecutor(6)},
        job_defaults={"max_instances": 1, "coalesce": True, "misfire_grace_time": 30},
        timezone="Asia/Shanghai",
        logger=_QuietSkips(logging.getLogger("apscheduler.scheduler"), {name for name, _, _ in jobs}),
    )
    for name, work, every in jobs:
        # First run at once, then every interval — except the silence check, which first gives the
        # ingester one interval to deliver what queued while we were away (else a restart would
        # open no-data alarms for every probe and resolve them a moment later).
        first = datetime.now(UTC) + (timedelta(seconds=every) if name == SILENCE_JOB else timedelta())
        scheduler.add_job(job(name, work), "interval", seconds=every, id=name, name=name, next_run_time=first)
    # Monthly cold-chain reports (CM17): every night at 02:00 Beijing, and a minute after start-up
    # (a scheduler that was down at 02:00 catches up), keep every final month's report still missing.
    scheduler.add_job(
        job(REPORT_JOB, lambda c: generate_missing(c, datetime.now(UTC))),
        "cron",
        hour=2,
        minute=0,
        id=REPORT_JOB,
        name=REPORT_JOB,
        next_run_time=datetime.now(UTC) + timedelta(minutes=1),
        misfire_grace_time=3600,
    )
    return scheduler, pool


def run(settings: Settings, database_url: str, intervals: Intervals, duration: float | None = None) -> None:
    """Run until SIGTERM / Ctrl-C (or ``duration`` seconds), then let running jobs finish."""
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    scheduler, pool = build(settings, database_url, intervals)
    scheduler.start()
    try:
        stop.wait(duration)
    finally:
        scheduler.shutdown(wait=True)
        pool.close()
