"""No loss under faults: the ingester killed with SIGKILL mid-stream, the database stopped mid-stream."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest
from dbhelp import as_runtime
from ingesthelp import config, count, publish, running, seed_fleet, stream, unique_id, wait_until

from coldchain import services
from coldchain.core import db
from coldchain.core.migrate import migrate


def _start_ingest(db_url: str, broker_url: str, client_id: str, port: int) -> subprocess.Popen[bytes]:
    env = {**os.environ, "COLDCHAIN_DATABASE_URL": as_runtime(db_url), "COLDCHAIN_MQTT_URL": broker_url}
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "coldchain.cli",
            "ingest",
            "--client-id",
            client_id,
            "--health-port",
            str(port),
            "--batch-messages",
            "100",
        ],
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )


def _healthy(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=1) as r:
            return bool(json.load(r)["ok"])
    except OSError:
        return False


def _expected(messages: list[tuple[str, bytes]]) -> set[tuple[str, int]]:
    return {(r["probe"], r["ts"]) for _, p in messages for r in json.loads(p)["readings"]}


def _stored(db_url: str) -> set[tuple[str, int]]:
    with db.connect(db_url) as conn:
        rows = conn.execute(
            "SELECT p.serial, (extract(epoch FROM r.ts) * 1000)::bigint FROM probe_readings r"
            " JOIN probes p ON p.id = r.probe_id"
        ).fetchall()
    return {(s, int(ms)) for s, ms in rows}


async def test_kill_9_mid_stream_then_restart_stores_every_reading_exactly_once(
    db_url: str, deploy_broker: services.Started
) -> None:
    fleet = seed_fleet(db_url)
    messages = stream(fleet, 3000)  # 24 000 readings
    total = 3000 * 8
    client_id, port = unique_id("kill9"), services.free_port()
    first = _start_ingest(db_url, deploy_broker.url, client_id, port)
    second = None
    try:
        await wait_until(lambda: _healthy(port), 30, "ingester healthy")
        await publish(deploy_broker.url, messages[:1000])
        await wait_until(lambda: count(db_url, "probe_readings") > 0, what="first commits")
        publishing = asyncio.create_task(publish(deploy_broker.url, messages[1000:2000]))
        await asyncio.sleep(0.2)
        first.send_signal(signal.SIGKILL)
        first.wait(10)
        await publishing
        at_kill = count(db_url, "probe_readings")
        assert 0 < at_kill < total, "the kill must happen mid-stream"
        await publish(deploy_broker.url, messages[2000:])  # while no ingester runs: the broker queues
        second = _start_ingest(db_url, deploy_broker.url, client_id, port)
        await wait_until(lambda: count(db_url, "probe_readings") >= total, 60, "all readings stored")
        await asyncio.sleep(1.0)  # anything redelivered late must not add rows either
        assert count(db_url, "probe_readings") == total
        assert _stored(db_url) == _expected(messages)
    finally:
        for p in (first, second):
            if p is not None and p.poll() is None:
                p.terminate()
                p.wait(20)
    assert second is not None and second.returncode == 0, second.stderr.read().decode() if second.stderr else ""


async def test_database_stopped_and_restarted_mid_stream(tmp_path: Path, deploy_broker: services.Started) -> None:
    try:
        cluster = services.start_local_cluster(tmp_path / "pg", services.free_port())
    except RuntimeError as exc:  # pragma: no cover - depends on the machine
        pytest.skip(f"无法启动可停止的本地 PostgreSQL：{exc}")
    url = db.with_database(cluster.url, "coldchain")
    port = int(cluster.url.rsplit(":", 1)[1].split("/")[0])
    try:
        db.create_database(cluster.url, "coldchain")
        migrate(url)
        fleet = seed_fleet(url)
        messages = stream(fleet, 800)
        cfg = config(url, deploy_broker.url, receive_maximum=200, batch_messages=50)
        async with running(cfg) as ing:
            await publish(deploy_broker.url, messages[:300])
            await wait_until(lambda: ing.metrics.readings_stored == 300 * 8, what="before the outage")
            cluster.stop()
            await publish(deploy_broker.url, messages[300:])
            await wait_until(lambda: not ing.metrics.db_connected, what="outage noticed")
            await asyncio.sleep(1.5)
            m = ing.metrics
            unacked = m.messages_received - m.messages_acked
            # Bounded memory: the broker holds the rest, we hold at most Receive Maximum messages.
            assert 0 < unacked <= cfg.receive_maximum
            assert m.messages_acked == 300
            cluster = services.start_local_cluster(tmp_path / "pg", port)
            await wait_until(lambda: ing.metrics.readings_stored == 800 * 8, 60, "after the outage")
            assert ing.metrics.db_connected
        assert count(url, "probe_readings") == 800 * 8
        assert _stored(url) == _expected(messages)
    finally:
        cluster.stop()


async def test_memory_stays_bounded_when_the_broker_drains_a_backlog(
    db_url: str, deploy_broker: services.Started
) -> None:
    """Mosquitto 2.0.11 sends more than Receive Maximum unacknowledged messages while it drains a
    queue held for us; the ingester must bound what it holds itself (it pauses reading)."""
    fleet = seed_fleet(db_url)
    messages = stream(fleet, 4000)
    cfg = config(db_url, deploy_broker.url, receive_maximum=50, batch_messages=20)
    async with running(cfg):
        pass  # creates the session and its subscription
    await publish(deploy_broker.url, messages)  # queued at the broker while we are away
    async with running(cfg) as ing:
        await wait_until(lambda: ing.metrics.readings_stored == 4000 * 8, 60, "backlog drained")
        cap = max(2 * cfg.receive_maximum, 2 * cfg.batch_messages)
        assert ing.metrics.pending_peak <= cap
    assert count(db_url, "probe_readings") == 4000 * 8
