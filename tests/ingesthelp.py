"""Shared by the ingest tests: a seeded fleet, messages in the device contract, publishing, waiting."""

from __future__ import annotations

import asyncio
import contextlib
import json
import secrets
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import aiomqtt
from dbhelp import as_runtime

from coldchain.core import db
from coldchain.core.settings import parse_mqtt_url
from coldchain.seed.demo import load_demo, plan_demo
from ingest.ingester import IngestConfig, Ingester
from ingest.store import MOVE_READINGS, STAGE_DDL

Message = tuple[str, bytes]


@dataclass(frozen=True)
class Fleet:
    # gateway serial → serials of the probes bound behind it now
    gateways: dict[str, list[str]]

    @property
    def probes(self) -> list[tuple[str, str]]:
        """(gateway, probe) pairs in a stable order."""
        return [(g, p) for g, ps in sorted(self.gateways.items()) for p in ps]


def seed_fleet(url: str, probes: int = 40) -> Fleet:
    load_demo(url, plan_demo(probes, seed=1))
    with db.connect(url) as conn:
        rows = conn.execute(
            "SELECT g.serial, p.serial FROM probe_bindings_current b"
            " JOIN gateways g ON g.id = b.gateway_id JOIN probes p ON p.id = b.probe_id ORDER BY 1, 2"
        ).fetchall()
    fleet: dict[str, list[str]] = {}
    for g, p in rows:
        fleet.setdefault(g, []).append(p)
    return Fleet(fleet)


def telemetry(gateway: str, readings: Sequence[dict[str, object]], **fields: object) -> Message:
    return f"coldchain/v1/{gateway}/telemetry", json.dumps({**fields, "readings": list(readings)}).encode()


def stream(fleet: Fleet, messages: int, per_message: int = 8, start: datetime | None = None) -> list[Message]:
    """``messages`` telemetry messages of ``per_message`` readings, every (probe, ts) distinct.

    Readings of one message come from several probes at one or more timestamps (as a gateway
    uploading buffered readings would send them); the ingester attributes by probe, not by topic.
    """
    pairs = fleet.probes
    base = start or datetime.now(UTC) - timedelta(days=1)
    base_ms = int(base.timestamp()) * 1000
    out: list[Message] = []
    k = 0
    for _ in range(messages):
        readings: list[dict[str, object]] = []
        for _ in range(per_message):
            probe = pairs[k % len(pairs)][1]
            ts = base_ms + (k // len(pairs)) * 1000
            readings.append({"probe": probe, "t": round(2.0 + (k % 60) / 10, 1), "ts": ts})
            k += 1
        out.append(telemetry(pairs[(k - 1) % len(pairs)][0], readings, power="ac", battery=4.1, rssi=-70))
    return out


def unique_id(prefix: str) -> str:
    return f"{prefix}-{secrets.token_hex(4)}"


async def publish(broker_url: str, messages: Sequence[Message], *, window: int = 200, retain: bool = False) -> None:
    """Publish at QoS 1 and return once the broker has acknowledged every message."""
    addr = parse_mqtt_url(broker_url)
    client = aiomqtt.Client(addr.host, addr.port, identifier=unique_id("test-pub"), max_inflight_messages=window)
    client.pending_calls_threshold = window + 1
    async with client as c:
        for i in range(0, len(messages), window):
            await asyncio.gather(
                *(c.publish(topic, payload, qos=1, retain=retain) for topic, payload in messages[i : i + window])
            )


def config(db_url: str, broker_url: str, **overrides: object) -> IngestConfig:
    base: dict[str, object] = {
        "database_url": as_runtime(db_url),
        "mqtt": parse_mqtt_url(broker_url),
        "client_id": unique_id("test-ingest"),
        # Test sessions must not outlive the test on a shared broker.
        "session_expiry": 120,
        "linger": 0.02,
    }
    base.update(overrides)
    return IngestConfig(**base)  # type: ignore[arg-type]


@contextlib.asynccontextmanager
async def running(cfg: IngestConfig) -> AsyncIterator[Ingester]:
    ingester = Ingester(cfg)
    stop = asyncio.Event()
    task = asyncio.create_task(ingester.run(stop))
    try:
        async with asyncio.timeout(15):
            await ingester.subscribed.wait()
        yield ingester
    finally:
        stop.set()
        await asyncio.wait_for(task, 20)


async def wait_until(check: Callable[[], bool], seconds: float = 20.0, what: str = "condition") -> None:
    deadline = time.monotonic() + seconds
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {seconds}s waiting for {what}")
        await asyncio.sleep(0.05)


def scalar(url: str, query: str, params: Sequence[object] = ()) -> object:
    with db.connect(url) as conn:
        row = conn.execute(query, params).fetchone()
    return None if row is None else row[0]


def count(url: str, table: str) -> int:
    value = scalar(url, f"SELECT count(*) FROM {table}")  # noqa: S608 — test code, fixed table names
    assert isinstance(value, int)
    return value


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def store_readings(url: str, rows: Sequence[tuple[int, datetime, float]]) -> int:
    """Readings stored by the ingester's own statement (``ingest.store.MOVE_READINGS``: binding
    check, duplicates once, latest values, late readings logged), as the runtime role, without a
    broker in between; returns how many were stored."""
    with db.connect(as_runtime(url)) as conn:
        conn.execute(STAGE_DDL)
        with conn.cursor() as cur:
            with cur.copy("COPY cc_stage_readings (probe_id, ts_us, t) FROM STDIN") as copy:
                for probe, ts, t in rows:
                    copy.write_row((probe, (ts - _EPOCH) // timedelta(microseconds=1), t))
            cur.execute(MOVE_READINGS)
            row = cur.fetchone()
        conn.commit()
    assert row is not None
    return int(row[2])
