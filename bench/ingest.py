"""Ingest throughput: the real ingester against a bare subscriber and a raw COPY, in one run.

    .venv/bin/python bench/ingest.py [--messages 25000] [--probes 2000] [--outage 0]

Same broker (a Mosquitto started with ingest/mosquitto.conf), same database server, same
messages (8 readings each, every (probe, ts) distinct):

(a) bare aiomqtt subscriber: receives and JSON-decodes the QoS 1 messages, nothing else;
(b) raw binary COPY of the same rows into a table shaped like probe_readings (with its key);
(c) the ingester end to end: messages → checked → staged → committed → acknowledged.

(a) and (c) drain a queue that the broker holds for their persistent session (published while
they were away, as after an outage), so each measures what the consumer can take, not what one
publisher can push. (c) is also run "live": a publisher sends while the ingester runs, timed from
the first publish to the last commit. With ``--outage S`` the ingester, as a separate process,
rides out an S-second database outage while 5 000 readings/s keep arriving, and its peak RSS
is reported (target: < 300 MB for 600 s).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import aiomqtt
import psycopg
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from coldchain import services
from coldchain.core import db, roles
from coldchain.core.migrate import migrate
from coldchain.core.settings import parse_mqtt_url
from coldchain.seed.demo import load_demo, plan_demo
from ingest.ingester import IngestConfig, Ingester

Message = tuple[str, bytes]
READINGS_PER_MESSAGE = 8


def fleet(url: str) -> list[tuple[str, str, int]]:
    """(gateway serial, probe serial, probe id) of every bound probe."""
    with db.connect(url) as conn:
        return [
            (g, p, i)
            for g, p, i in conn.execute(
                "SELECT g.serial, p.serial, p.id FROM probe_bindings_current b JOIN gateways g ON g.id = b.gateway_id"
                " JOIN probes p ON p.id = b.probe_id ORDER BY p.id"
            ).fetchall()
        ]


Row = tuple[int, datetime, float]


def build(probes: list[tuple[str, str, int]], n: int, start: datetime) -> tuple[list[Message], list[Row]]:
    """n messages of 8 readings (realistic JSON as a gateway sends it) and the same rows for COPY."""
    messages: list[Message] = []
    rows: list[Row] = []
    k = 0
    base_ms = int(start.timestamp()) * 1000
    for _ in range(n):
        readings = []
        for _ in range(READINGS_PER_MESSAGE):
            gateway, serial, pid = probes[k % len(probes)]
            ms = base_ms + (k // len(probes)) * 60_000
            t = round(4.0 + ((k * 7919) % 40) / 10, 1)
            readings.append({"probe": serial, "t": t, "ts": ms})
            rows.append((pid, datetime.fromtimestamp(ms / 1000, UTC), t))
            k += 1
        doc = {"ts": ms, "readings": readings, "power": "ac", "battery": 4.1, "rssi": -67}
        messages.append((f"coldchain/v1/{gateway}/telemetry", json.dumps(doc, separators=(",", ":")).encode()))
    return messages, rows


async def publish(broker: str, messages: Sequence[Message], window: int = 1000) -> float:
    addr = parse_mqtt_url(broker)
    t0 = time.perf_counter()
    async with aiomqtt.Client(
        addr.host, addr.port, identifier=f"bench-pub-{os.getpid()}", max_inflight_messages=window
    ) as c:
        c.pending_calls_threshold = window + 1  # a full window in flight is the point, not a warning
        for i in range(0, len(messages), window):
            await asyncio.gather(*(c.publish(t, p, qos=1) for t, p in messages[i : i + window]))
    return time.perf_counter() - t0


def _v5(
    client_id: str, receive_maximum: int, broker: str, queue_type: type[asyncio.Queue[aiomqtt.Message]] | None = None
) -> aiomqtt.Client:
    addr = parse_mqtt_url(broker)
    props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
    props.SessionExpiryInterval = 3600
    props.ReceiveMaximum = receive_maximum
    return aiomqtt.Client(
        addr.host,
        addr.port,
        identifier=client_id,
        protocol=aiomqtt.ProtocolVersion.V5,
        clean_start=False,
        properties=props,
        queue_type=queue_type,
    )


async def bare_subscriber(broker: str, messages: list[Message], receive_maximum: int) -> float:
    """(a): readings/s of a subscriber that only receives and decodes."""
    cid = f"bench-bare-{os.getpid()}"
    async with _v5(cid, receive_maximum, broker) as c:
        await c.subscribe("coldchain/v1/+/telemetry", qos=1)
    await publish(broker, messages)
    n = 0
    readings = 0
    t0 = time.perf_counter()
    async with _v5(cid, receive_maximum, broker) as c:
        async for m in c.messages:
            readings += len(json.loads(m.payload)["readings"])
            n += 1
            if n == len(messages):
                break
    return readings / (time.perf_counter() - t0)


async def bare_handoff_subscriber(broker: str, messages: list[Message], receive_maximum: int) -> float:
    """(a'): as (a), but messages taken through aiomqtt's queue_type hook, as the ingester takes them."""
    cid = f"bench-handoff-{os.getpid()}"
    async with _v5(cid, receive_maximum, broker) as c:
        await c.subscribe("coldchain/v1/+/telemetry", qos=1)
    await publish(broker, messages)
    counts = [0, 0]
    done = asyncio.Event()

    class Handoff(asyncio.Queue[aiomqtt.Message]):
        def put_nowait(self, item: aiomqtt.Message) -> None:
            counts[1] += len(json.loads(item.payload)["readings"])
            counts[0] += 1
            if counts[0] == len(messages):
                done.set()

    client = _v5(cid, receive_maximum, broker, queue_type=Handoff)
    t0 = time.perf_counter()
    async with client:
        await done.wait()
    return counts[1] / (time.perf_counter() - t0)


def raw_copy(url: str, rows: list[tuple[int, datetime, float]]) -> float:
    """(b): readings/s of a binary COPY of the same rows into a table shaped like probe_readings."""
    with db.connect(url) as conn:
        conn.execute("DROP TABLE IF EXISTS bench_copy")
        conn.execute("CREATE UNLOGGED TABLE bench_copy (LIKE probe_readings INCLUDING DEFAULTS INCLUDING CONSTRAINTS)")
        conn.execute("ALTER TABLE bench_copy SET LOGGED")
        conn.execute("ALTER TABLE bench_copy ADD PRIMARY KEY (probe_id, ts)")
        conn.commit()
        t0 = time.perf_counter()
        with conn.cursor() as cur, cur.copy("COPY bench_copy (probe_id, ts, t) FROM STDIN (FORMAT BINARY)") as copy:
            copy.set_types(["int8", "timestamptz", "float8"])
            for row in rows:
                copy.write_row(row)
        conn.commit()
        elapsed = time.perf_counter() - t0
        conn.execute("DROP TABLE bench_copy")
        conn.commit()
    return len(rows) / elapsed


def _stored(url: str) -> int:
    with db.connect(url) as conn:
        row = conn.execute("SELECT count(*) FROM probe_readings").fetchone()
    return int(row[0]) if row else 0


def _reset(url: str) -> None:
    """Between runs of the bench, in its own database, as the superuser that made it: readings are
    append-only (0010's triggers), so the triggers are bypassed for this one statement."""
    with db.connect(url) as conn:
        conn.execute("SET LOCAL session_replication_role = replica")
        conn.execute("TRUNCATE probe_readings, probe_latest, gateway_status, gateway_latest")
        conn.commit()


async def ingester_drain(url: str, broker: str, messages: list[Message], cfg: IngestConfig) -> float:
    """(c) drain: readings/s from connecting to the last commit of a queue waiting at the broker."""
    _reset(url)
    ingester = Ingester(cfg)
    stop = asyncio.Event()
    task = asyncio.create_task(ingester.run(stop))
    await ingester.subscribed.wait()  # creates the session and its subscription
    stop.set()
    await task
    await publish(broker, messages)
    total = len(messages) * READINGS_PER_MESSAGE
    ingester = Ingester(cfg)
    stop = asyncio.Event()
    t0 = time.perf_counter()
    task = asyncio.create_task(ingester.run(stop))
    while ingester.metrics.readings_stored < total:  # noqa: ASYNC110 — polling a counter is the measurement
        await asyncio.sleep(0.005)
    elapsed = time.perf_counter() - t0
    stop.set()
    await task
    assert _stored(url) == total, "readings missing"
    return total / elapsed


async def ingester_live(url: str, broker: str, messages: list[Message], cfg: IngestConfig) -> tuple[float, float]:
    """(c) live: readings/s from the first publish to the last commit, publisher running alongside."""
    _reset(url)
    ingester = Ingester(cfg)
    stop = asyncio.Event()
    task = asyncio.create_task(ingester.run(stop))
    await ingester.subscribed.wait()
    total = len(messages) * READINGS_PER_MESSAGE
    t0 = time.perf_counter()
    # The publisher is a separate process so that it does not share the ingester's event loop.
    pub = await asyncio.create_subprocess_exec(
        sys.executable,
        __file__,
        "--publish-only",
        broker,
        str(len(messages)),
        stdin=asyncio.subprocess.PIPE,
    )
    assert pub.stdin is not None
    pub.stdin.write(json.dumps([[t, p.decode()] for t, p in messages]).encode())
    pub.stdin.close()
    while ingester.metrics.readings_stored < total:  # noqa: ASYNC110 — polling a counter is the measurement
        await asyncio.sleep(0.005)
    elapsed = time.perf_counter() - t0
    await pub.wait()
    stop.set()
    await task
    return total / elapsed, ingester.metrics.last_commit_lag_s


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


async def outage(seconds: float, broker: str, probes: list[tuple[str, str, int]], work: Path) -> None:
    """The ingester process through a database outage at 5 000 readings/s; prints its peak RSS."""
    cluster = services.start_local_cluster(work / "outage-pg", services.free_port())
    port = cluster.url.rsplit(":", 1)[1].split("/")[0]
    url = db.with_database(cluster.url, "coldchain")
    db.create_database(cluster.url, "coldchain")
    migrate(url)
    roles.ensure_runtime_login(url)
    load_demo(url, plan_demo(len(probes), seed=1))
    rate_msgs = 5000 // READINGS_PER_MESSAGE
    total_msgs = int(rate_msgs * (seconds + 20))
    messages, _ = build(fleet(url), total_msgs, datetime.now(UTC) - timedelta(days=3))
    runtime = roles.with_role(url, roles.DEFAULT_RUNTIME_LOGIN)
    env = {**os.environ, "COLDCHAIN_DATABASE_URL": runtime, "COLDCHAIN_MQTT_URL": broker}
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "coldchain.cli",
        "ingest",
        "--client-id",
        "bench-outage",
        env=env,
        stdout=asyncio.subprocess.DEVNULL,
    )
    peak = 0.0
    try:
        await asyncio.sleep(2)
        addr = parse_mqtt_url(broker)
        async with aiomqtt.Client(addr.host, addr.port, identifier="bench-outage-pub", max_inflight_messages=200) as c:
            c.pending_calls_threshold = 1000
            t0 = time.perf_counter()
            stopped = started = False
            for i in range(0, total_msgs, rate_msgs // 10):
                await asyncio.gather(*(c.publish(t, p, qos=1) for t, p in messages[i : i + rate_msgs // 10]))
                elapsed = time.perf_counter() - t0
                if elapsed > 10 and not stopped:
                    cluster.stop()
                    stopped = True
                    print(f"  数据库已停止（{seconds:.0f} 秒）", flush=True)
                if stopped and not started and elapsed > 10 + seconds:
                    cluster = services.start_local_cluster(work / "outage-pg", int(port))
                    started = True
                    print("  数据库已恢复", flush=True)
                peak = max(peak, _rss_mb(proc.pid))
                await asyncio.sleep(max(0.0, (i + rate_msgs // 10) / rate_msgs - (time.perf_counter() - t0)))
        deadline = time.monotonic() + 600
        while _stored(url) < total_msgs * READINGS_PER_MESSAGE and time.monotonic() < deadline:
            peak = max(peak, _rss_mb(proc.pid))
            await asyncio.sleep(1)
        stored = _stored(url)
        print(f"  停库 {seconds:.0f} 秒期间采集进程峰值 RSS：{peak:.0f} MB；恢复后入库 {stored}/{total_msgs * 8} 条")
    finally:
        proc.terminate()
        await proc.wait()
        cluster.stop()


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--messages", type=int, default=25_000)
    ap.add_argument("--probes", type=int, default=2000)
    ap.add_argument("--receive-maximum", type=int, default=2000)
    ap.add_argument("--batch-messages", type=int, default=500)
    ap.add_argument("--outage", type=float, default=0, help="秒；>0 时测量停库期间的内存")
    ap.add_argument("--publish-only", nargs=2, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.publish_only:
        msgs = [(t, p.encode()) for t, p in json.loads(sys.stdin.read())]
        await publish(args.publish_only[0], msgs)
        return

    with tempfile.TemporaryDirectory(prefix="coldchain-bench-") as tmp:
        work = Path(tmp)
        broker = services.start_mosquitto(work / "broker")
        pg = services.find_postgres(os.environ.get("COLDCHAIN_BENCH_DATABASE_URL"), work, prefer_docker=False)
        name = f"cc_bench_{os.getpid()}"
        db.create_database(pg.url, name)
        url = db.with_database(pg.url, name)
        try:
            migrate(url)
            roles.ensure_runtime_login(url)  # the ingester runs as the runtime role, as deployed
            load_demo(url, plan_demo(args.probes, seed=1))
            probes = fleet(url)
            messages, rows = build(probes, args.messages, datetime.now(UTC) - timedelta(days=2))
            total = len(rows)
            print(
                f"数据：{len(probes)} 个探头，{len(messages)} 条消息 × {READINGS_PER_MESSAGE} = {total} 条读数；"
                f"PostgreSQL {pg.source}，Mosquitto {broker.source}"
            )
            runtime = roles.with_role(url, roles.DEFAULT_RUNTIME_LOGIN)
            cfg = IngestConfig(
                runtime,
                parse_mqtt_url(broker.url),
                client_id=f"bench-ingest-{os.getpid()}",
                receive_maximum=args.receive_maximum,
                batch_messages=args.batch_messages,
                session_expiry=3600,
            )
            a = await bare_subscriber(broker.url, messages, args.receive_maximum)
            print(f"(a) 裸 aiomqtt 订阅（async for 迭代，接收 + JSON 解码）：{a:10.0f} 读数/秒")
            a2 = await bare_handoff_subscriber(broker.url, messages, args.receive_maximum)
            print(f"(a') 裸 aiomqtt 订阅（queue_type 直交，与采集服务同一路径）：{a2:10.0f} 读数/秒")
            b = raw_copy(url, rows)
            print(f"(b) 同样行的二进制 COPY：            {b:10.0f} 读数/秒")
            c = await ingester_drain(url, broker.url, messages, cfg)
            print(f"(c) 采集服务端到端（积压排空）：      {c:10.0f} 读数/秒")
            live, lag = await ingester_live(url, broker.url, messages, replace_id(cfg, "live"))
            print(f"(c') 采集服务端到端（边发边收）：     {live:10.0f} 读数/秒（末批提交延迟 {lag * 1000:.0f} ms）")
            print(f"c/a = {c / a:.2f}   c/a' = {c / a2:.2f}   c/b = {c / b:.2f}   c'/a = {live / a:.2f}")
            if args.outage > 0:
                await outage(args.outage, broker.url, probes, work)
        finally:
            db.drop_database(pg.url, name)
            pg.stop()
            broker.stop()


def replace_id(cfg: IngestConfig, suffix: str) -> IngestConfig:
    return replace(cfg, client_id=f"{cfg.client_id}-{suffix}")


if __name__ == "__main__":
    try:
        asyncio.run(main())
    except psycopg.Error as exc:
        sys.exit(f"数据库错误：{exc}")
