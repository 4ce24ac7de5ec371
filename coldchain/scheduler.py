"""``coldchain scheduler``: the periodic work, on APScheduler — rule evaluation, no-data and gateway
checks, escalation, the outbox worker, and the aggregate refresh.

Each job is a short function over a pooled connection; APScheduler runs them in a thread pool
with ``max_instances=1`` (a slow pass is never overlapped by its own next run) and ``coalesce``
(a backlog of missed runs becomes one). Running two schedulers is safe: the jobs lock what they
work on with SKIP LOCKED and write idempotently (see :mod:`alarms.engine`).
"""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from apscheduler.executors.pool import ThreadPoolExecutor
from apscheduler.schedulers.background import BackgroundScheduler

from alarms.delivery import deliver
from alarms.engine import check_silence, escalate, evaluate_compartments, evaluate_gateways
from analytics.aggregates import refresh_aggregates
from analytics.report.build import generate_missing
from coldchain.core import db
from coldchain.core.settings import Settings

log = logging.getLogger("coldchain.scheduler")
SILENCE_JOB = "无数据与网关检查"
REPORT_JOB = "月度冷链报告"


@dataclass(frozen=True)
class Intervals:
    """Seconds between runs of each job. The defaults keep a reading-to-webhook time of about two
    seconds (evaluate + deliver each at most one interval late)."""

    evaluate: float = 1.0
    deliver: float = 1.0
    escalate: float = 2.0
    silence: float = 15.0
    aggregates: float = 60.0


def build(settings: Settings, database_url: str, intervals: Intervals) -> tuple[BackgroundScheduler, Any]:
    pool = db.pool(database_url, application="coldchain-scheduler", max_size=6)
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

    # APScheduler logs every run at INFO (several lines a second); only its warnings matter here.
    logging.getLogger("apscheduler").setLevel(logging.WARNING)
    scheduler = BackgroundScheduler(
        executors={"default": ThreadPoolExecutor(6)},
        job_defaults={"max_instances": 1, "coalesce": True, "misfire_grace_time": 30},
        timezone="Asia/Shanghai",
    )

    def then_deliver(conn: Any, stats: Any) -> Any:
        """A pass that queued notices delivers them at once instead of waiting for the outbox job:
        that wait was up to a whole interval of the reading-to-WeCom time."""
        if stats.enqueued:
            deliver(conn, settings)
        return stats

    jobs: list[tuple[str, Callable[[Any], Any], float]] = [
        ("评估读数", lambda c: then_deliver(c, evaluate_compartments(c, settings)), intervals.evaluate),
        ("发送通知", lambda c: deliver(c, settings), intervals.deliver),
        ("报警升级", lambda c: then_deliver(c, escalate(c, settings)), intervals.escalate),
        (
            SILENCE_JOB,
            lambda c: (evaluate_gateways(c, settings), check_silence(c, settings))[1],
            intervals.silence,
        ),
        ("刷新聚合", lambda c: refresh_aggregates(database_url), intervals.aggregates),
    ]
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
