"""``coldchain scheduler``: the periodic work, on APScheduler — no-data and gateway checks,
escalation, the outbox worker, the aggregate refresh — and rule evaluation as soon as readings
arrive.

Each job is a short function over a pooled connection; APScheduler runs them in a thread pool
with ``max_instances=1`` (a slow pass is never overlapped by its own next run) and ``coalesce``
(a backlog of missed runs becomes one). Running two schedulers is safe: the jobs lock what they
work on with SKIP LOCKED and write idempotently (see :mod:`alarms.engine`).

Rule evaluation is not an interval job (issue #17). Waiting for a one-second tick made the tick
most of the time from a reading to its WeCom message; instead the ingester NOTIFYs the
compartments with readings out of their limits (``ingest.store.READINGS_CHANNEL``,
docs/ingest.md), and :class:`coldchain.reactive.ReactiveEvaluation` LISTENs on a connection of its
own and judges them at once. A look at every compartment with unseen readings (the old periodic
pass) judges the rest: at start, after every (re)connection of the listener, when a batch was too
large to list, and every ``Intervals.evaluate_listening`` seconds — or every ``Intervals.evaluate``
seconds while nobody is listening.
"""

from __future__ import annotations

import logging
import signal
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from apscheduler.executors.pool import ThreadPoolExecutor
from apscheduler.schedulers.background import BackgroundScheduler

from alarms.delivery import deliver
from alarms.engine import check_silence, escalate, evaluate_gateways
from analytics.aggregates import refresh_aggregates
from analytics.report.build import generate_missing
from coldchain.core import db
from coldchain.core.settings import Settings
from coldchain.reactive import EVALUATORS, ReactiveEvaluation

log = logging.getLogger("coldchain.scheduler")
SILENCE_JOB = "无数据与网关检查"
SWITCH_INTERVAL = 0.0005  # seconds; Python's default is 0.005 (see run())
REPORT_JOB = "月度冷链报告"


@dataclass(frozen=True)
class Intervals:
    """Seconds between runs of each job.

    ``evaluate`` and ``evaluate_listening`` are the look at every compartment with unseen
    readings: every ``evaluate`` seconds while the listener is down, every ``evaluate_listening``
    seconds while notifications arrive. Then the look judges the in-range readings — which can only
    end an excursion, after its hold, so ten seconds more cost nothing — and whatever a lost
    notification or a locked row left behind; judging the whole province every second was what
    kept the evaluation from reacting at once."""

    evaluate: float = 1.0
    deliver: float = 1.0
    escalate: float = 2.0
    silence: float = 15.0
    aggregates: float = 60.0
    evaluate_listening: float = 10.0


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
        if stats.notified:
            deliver(conn, settings, alarms=stats.notified)
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
        ReactiveEvaluation(
            pool, settings, database_url, (intervals.evaluate, intervals.evaluate_listening), then_deliver
        ),
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
    # The urgent evaluator spends its time in short waits for the database; each time it comes
    # back it must wait for the GIL while a look's thread runs the rules, by default up to 5 ms a
    # time — with some twenty round trips from a reading to its message, a tenth of a second. A
    # shorter switch interval hands the GIL over sooner; the look's thread loses little.
    sys.setswitchinterval(SWITCH_INTERVAL)
    scheduler, pool = build(settings, database_url, intervals)
    scheduler.start()
    try:
        stop.wait(duration)
    finally:
        scheduler.shutdown(wait=True)
        pool.close()
