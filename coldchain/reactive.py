"""Rule evaluation as soon as readings out of range arrive, with a periodic look as the net.

Why a module of its own: it is the scheduler's one piece with threads and state of its own (a
listener and the evaluators sharing two queues), and the part of the reading-to-WeCom time that
issue #17 set a target for (p95 ≤ 300 ms at 5 000 readings/s, ``bench/alarms.py``).

The ingester NOTIFYs the compartments whose stored readings are out of their limits
(``ingest.store.READINGS_CHANNEL``, docs/ingest.md) — the only readings that can open or worsen an
alarm. They are *urgent*: judged before anything else, in their own chunk. Everything else with
unseen readings (in-range readings, which can only end an excursion after its hold; what a lost
notification or a locked row left behind) is found by a *look* at every fresh compartment: at
start, after every (re)connection of the listener, when a batch was too large to list, and every
``evaluate_listening`` seconds — every ``evaluate`` seconds while nobody listens. What a look finds
is judged in smaller chunks, so an urgent compartment never waits behind a whole province.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable
from typing import Any

import psycopg
from psycopg import sql
from psycopg.conninfo import make_conninfo
from psycopg_pool import ConnectionPool

from alarms.engine import PassStats, evaluate_compartment_ids, fresh_compartments
from coldchain.core import db
from coldchain.core.settings import Settings
from ingest.store import READINGS_CHANNEL, compartments_notified

log = logging.getLogger("coldchain.scheduler")
EVALUATE_JOB = "评估读数"
LISTEN_APPLICATION = "coldchain-scheduler-listen"
# Urgent compartments judged per transaction. Out-of-range readings are rare in service (a few
# compartments a second in a province), so a chunk is usually one notification's few ids; the
# bound only matters when a whole site's power fails.
CHUNK = 250
# Compartments a look found, judged per transaction between urgent chunks: each such chunk is the
# longest an urgent compartment can wait for a free thread (≈ 1 ms a compartment on two cores).
LOOK_CHUNK = 100
# Threads judging chunks side by side (disjoint compartments, so they never wait for each other).
# The first takes only urgent work, so a named compartment never waits for a look's chunk (100
# compartments with ten seconds of readings each take a few hundred ms on two busy cores); the
# others take urgent work first, then the looks.
EVALUATORS = 2
# After an urgent chunk met state rows another pass holds (the silence check, a look's chunk on
# the other thread, a second scheduler), judge it again this soon: only the compartments still
# fresh are judged again, so those the holder judged cost one index lookup.
RETRY_URGENT = 0.05
# After a look's chunk met locked rows, look again this soon: they stay fresh, the look finds them.
RETRY_LOCKED = 0.2
# While compartments wait, a requested look (a back-fill sends {"all":true} with every batch)
# comes at most this often: each look queries every compartment, and what it finds waits anyway.
LOOK_GAP = 0.25


class ReactiveEvaluation:
    """Judge compartments as the ingester reports readings out of range; look at the rest periodically.

    The listener's thread holds a dedicated autocommit connection (a pooled one would lose its
    LISTEN when returned) and only collects: each notification's compartments go into the urgent
    queue, an ordered set — a compartment named again while it waits keeps its place, so a burst
    coalesces into one evaluation per compartment — or, for ``{"all":true}``, a request to look at
    everything fresh. The first of the :data:`EVALUATORS` threads takes only urgent work, up to
    :data:`CHUNK` compartments; the others take, in this order, a due look, urgent work, or up to
    :data:`LOOK_CHUNK` compartments that a look found. Each chunk is judged in one transaction on
    a pooled connection, and what it queued is delivered at once (``then_deliver``).

    A notification can be missed — the listener was reconnecting, a state row was locked, an error
    rolled a batch back — but the readings stay "fresh" (``probe_latest.received_at`` past the rule
    state's cursor) until judged, so a look at everything fresh finds them all.
    """

    def __init__(
        self,
        pool: ConnectionPool,
        settings: Settings,
        database_url: str,
        every: tuple[float, float],
        then_deliver: Callable[[Any, PassStats], PassStats],
    ) -> None:
        """``every``: seconds between looks while nobody listens, and while listening."""
        self._pool = pool
        self._settings = settings
        self._url = database_url
        self._every_alone, self._every_listening = every
        self._then_deliver = then_deliver
        self._cond = threading.Condition()
        self._urgent: dict[int, None] = {}  # named by notifications, in the order first named
        self._found: dict[int, None] = {}  # found by looks
        self._retry: dict[int, None] = {}  # urgent ones that met a locked row, judged again at _retry_at
        self._retry_at = 0.0
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
                threading.Thread(target=self._evaluate, args=(n == 0,), name=f"coldchain-evaluate-{n}", daemon=True)
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
                        self._every_alone,
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
                self._look_at = min(self._look_at, time.monotonic() + self._every_alone)
            self._listening = up
            self._cond.notify_all()

    def _heard(self, payload: str) -> None:
        ids = compartments_notified(payload)
        with self._cond:
            if ids is None:
                self._look = True
            else:
                for cid in sorted(ids):
                    self._urgent.setdefault(cid)
            self._cond.notify_all()

    # ------------------------------------------------------------------ evaluator
    def _next(self, urgent_only: bool = False) -> tuple[str, list[int]] | None:
        """Wait for work: ("look", []), ("urgent", ids) or ("found", ids); None when stopping."""
        with self._cond:
            while not self._stop.is_set():
                now = time.monotonic()
                if self._retry and now >= self._retry_at:
                    for cid in self._retry:
                        self._urgent.setdefault(cid)
                    self._retry.clear()
                if urgent_only:
                    if self._urgent:
                        return "urgent", self._take_urgent()
                    self._cond.wait(max((self._retry_at if self._retry else now + 1.0) - now, 0.001))
                    continue
                waiting = self._urgent or self._found
                if now >= self._look_at or (self._look and (not waiting or now - self._looked >= LOOK_GAP)):
                    self._look = False
                    self._look_at = now + (self._every_listening if self._listening else self._every_alone)
                    self._looked = now
                    return "look", []
                if self._urgent:
                    return "urgent", self._take_urgent()
                if self._found:
                    return "found", _take(self._found, LOOK_CHUNK)
                wake = min(self._look_at, self._retry_at if self._retry else self._look_at)
                self._cond.wait(max(wake - now, 0.001))  # a look, a retry or a notification wakes us earlier
        return None

    def _take_urgent(self) -> list[int]:
        chunk = _take(self._urgent, CHUNK)
        for cid in chunk:
            self._found.pop(cid, None)  # judged now: no need to judge it again from the look's queue
        return chunk

    def _evaluate(self, urgent_only: bool) -> None:
        while not self._stop.is_set():
            try:
                # One pooled connection per thread for as long as it works: checking one out per
                # chunk cost the pool's health check, a round trip, every time.
                with self._pool.connection() as conn:
                    while (work := self._next(urgent_only)) is not None:
                        self._judge(conn, *work)
                return
            except Exception:
                # The database is away or the connection broke: what was not judged stays fresh,
                # and the look after the pause finds it.
                log.exception("定时任务 %s 失败", EVALUATE_JOB)
                with self._cond:
                    self._look_at = min(self._look_at, time.monotonic() + 1.0)
                self._stop.wait(1.0)

    def _judge(self, conn: Any, kind: str, chunk: list[int]) -> None:
        started = time.monotonic()
        if kind == "look":
            fresh = fresh_compartments(conn)
            with self._cond:
                for cid in fresh:
                    if cid not in self._urgent:
                        self._found.setdefault(cid)
                self._cond.notify_all()
            log.debug("新读数：全面查看，%d 个温区待评估（%.0f ms）", len(fresh), _ms(started))
            return
        stats = evaluate_compartment_ids(conn, self._settings, chunk)
        judged = _ms(started)
        self._then_deliver(conn, stats)
        log.debug(
            "新读数（%s）：评估 %d/%d 个温区，跳过 %d，开启 %d，通知 %d（评估 %.0f ms，共 %.0f ms）",
            "超限通知" if kind == "urgent" else "全面查看",
            stats.subjects,
            len(chunk),
            stats.skipped_locked,
            stats.opened,
            stats.enqueued,
            judged,
            _ms(started),
        )
        if stats.errors:
            log.warning("%s：%d 个对象出错，首个：%s", EVALUATE_JOB, len(stats.errors), stats.errors[0])
        if stats.skipped_locked:
            with self._cond:
                if kind == "urgent":
                    # Which ones were locked is not known: the chunk again, where only the fresh count.
                    if not self._retry:
                        self._retry_at = time.monotonic() + RETRY_URGENT
                    for cid in chunk:
                        self._retry.setdefault(cid)
                else:
                    self._look_at = min(self._look_at, time.monotonic() + RETRY_LOCKED)
                self._cond.notify_all()


def _take(queue: dict[int, None], size: int) -> list[int]:
    """The first ``size`` ids of an ordered set, removed from it."""
    chunk: list[int] = []
    for cid in queue:
        chunk.append(cid)
        if len(chunk) == size:
            break
    for cid in chunk:
        del queue[cid]
    return chunk


def _ms(since: float) -> float:
    return (time.monotonic() - since) * 1000
