"""Alarm latency and escalation punctuality under load, with every part real.

    .venv/bin/python bench/alarms.py [--probes 2000] [--rate 5000] [--trials 20] [--spacing 2]

A Mosquitto of its own, the database, ``coldchain ingest`` and ``coldchain scheduler`` as separate
processes, a publisher process sending ``--rate`` readings/s of ordinary in-range background, and
a WeCom robot stand-in over real HTTP in this process. Each trial publishes one reading that
breaks a zero-delay rule on a compartment of its own and times:

- baseline: publish → the reading committed in ``probe_readings`` (ingest alone, same run);
- alarm: publish → the WeCom request carrying that compartment's alarm arriving (target p95 ≤ 300
  ms since issue #17, 3 s before).

Where an alarm's time went is shown stage by stage (medians and the slowest trial): the ingest
transaction (``probe_readings.received_at``, its start), the evaluating transaction
(``alarms.raised_at``, its start), the notice marked sent, the robot's receipt. And the CPU each
process used during the trials, since everything shares the machine's cores.

Then the escalation ladder runs on second-scale settings (steps 10 s, 20 s; reminders every 10 s)
and each step's lateness is ``sent_at − due_at`` from the outbox (target ≤ 30 s).
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import aiomqtt

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from fakewecom import FakeWecom

from coldchain import services
from coldchain.core import db, roles
from coldchain.core.migrate import migrate
from coldchain.core.settings import parse_mqtt_url
from coldchain.seed.demo import load_demo, plan_demo

TARGET_P95_MS = 300


@dataclass
class Trial:
    label: str
    published: float  # time.time()
    committed: float | None = None  # seen in probe_readings by polling
    robot: float | None = None  # the WeCom request's arrival


def _fleet(url: str) -> dict[str, list[tuple[str, float]]]:
    """Gateway serial → (probe serial, a temperature inside its compartment's limits) for each
    probe bound behind it: the background must be the quiet of a working province, not a freezer
    reading +4 ℃ (which alarmed every frozen compartment and measured an alarm storm)."""
    out: dict[str, list[tuple[str, float]]] = {}
    with db.connect(url) as conn:
        for g, p, low, high in conn.execute(
            """SELECT g.serial, p.serial, c.t_min::float8, c.t_max::float8 FROM probe_bindings_current b
               JOIN gateways g ON g.id = b.gateway_id JOIN probes p ON p.id = b.probe_id
               JOIN compartments c ON c.id = b.compartment_id ORDER BY g.serial, p.serial"""
        ).fetchall():
            out.setdefault(g, []).append((p, high - 3.5 if low is None else low + 2.0))
    return out


async def publish_load(broker: str, fleet: dict[str, list[tuple[str, float]]], rate: int) -> None:
    """Background: ``rate`` in-range readings/s, shaped as gateways report — each gateway once a
    second, one message carrying its probes' readings of that second (``rate`` / probes each, e.g.
    2–3 at 5 000 readings/s for 2 000 probes), the gateways spread over 20 slices of the second."""
    addr = parse_mqtt_url(broker)
    gateways = sorted(fleet.items())
    probes = sum(len(ps) for _, ps in gateways)
    per_probe = rate / probes  # readings per probe per second
    slices = 20
    async with aiomqtt.Client(
        addr.host, addr.port, identifier=f"bench-load-{os.getpid()}", max_inflight_messages=500
    ) as client:
        client.pending_calls_threshold = 10_000
        owed = 0.0  # readings due but not yet sent (the fractional part carries over)
        k = 0
        t0 = time.perf_counter()
        for tick in itertools.count():
            ms = int(time.time() * 1000)
            sends = []
            for g, ps in gateways[tick % slices :: slices]:
                readings: list[dict[str, object]] = []
                for p, base in ps:
                    owed += per_probe
                    n, owed = int(owed), owed - int(owed)
                    for i in range(n):
                        # within 3 ℃ above the base (still in range), spread over the past second
                        readings.append({"probe": p, "t": round(base + (k % 30) / 10, 1), "ts": ms - 1000 * i // n})
                        k += 1
                if readings:
                    sends.append(
                        client.publish(f"coldchain/v1/{g}/telemetry", json.dumps({"readings": readings}), qos=1)
                    )
            await asyncio.gather(*sends)
            await asyncio.sleep(max(0.0, (tick + 1) / slices - (time.perf_counter() - t0)))


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


async def trials(
    url: str, broker: str, wecom: FakeWecom, targets: list[tuple[str, str, str]], spacing: float
) -> list[Trial]:
    addr = parse_mqtt_url(broker)
    done: list[Trial] = []
    async with aiomqtt.Client(addr.host, addr.port, identifier=f"bench-trial-{os.getpid()}") as client:
        with db.connect(url, autocommit=True) as conn:
            for gateway, probe, label in targets:
                ts_ms = int(time.time() * 1000)
                body = json.dumps({"readings": [{"probe": probe, "t": 15.0, "ts": ts_ms}]}).encode()
                t0 = time.time()
                await client.publish(f"coldchain/v1/{gateway}/telemetry", body, qos=1)
                got_row = got_alarm = None
                deadline = t0 + 30
                while time.time() < deadline and (got_row is None or got_alarm is None):
                    if (
                        got_row is None
                        and conn.execute(
                            """SELECT 1 FROM probe_readings r JOIN probes p ON p.id = r.probe_id
                           WHERE p.serial = %s AND r.ts = %s""",
                            (probe, datetime.fromtimestamp(ts_ms / 1000, UTC)),
                        ).fetchone()
                    ):
                        got_row = time.time()
                    if got_alarm is None:
                        hit = [m.at for m in wecom.messages() if label in m.content]
                        got_alarm = min(hit) if hit else None
                    await asyncio.sleep(0.005)
                done.append(Trial(label, t0, got_row, got_alarm))
                if got_alarm is None:
                    print(f"  试验 {label}：30 秒内未收到报警消息")
                await asyncio.sleep(spacing)
    return done


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--probes", type=int, default=2000)
    ap.add_argument("--rate", type=int, default=5000, help="背景负载（读数/秒）")
    ap.add_argument("--trials", type=int, default=20)
    ap.add_argument("--spacing", type=float, default=2.0, help="两次试验的间隔秒数")
    ap.add_argument("--load-only", nargs=2, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.load_only:
        asyncio.run(publish_load(args.load_only[0], json.loads(Path(args.load_only[1]).read_text()), args.rate))
        return

    with tempfile.TemporaryDirectory(prefix="coldchain-bench-alarms-") as tmp:
        work = Path(tmp)
        broker = services.start_mosquitto(work / "broker")
        pg = services.find_postgres(os.environ.get("COLDCHAIN_BENCH_DATABASE_URL"), work, prefer_docker=False)
        name = f"cc_bench_alarms_{os.getpid()}"
        db.create_database(pg.url, name)
        url = db.with_database(pg.url, name)
        wecom = FakeWecom()
        children: list[subprocess.Popen[bytes]] = []
        try:
            migrate(url)
            roles.ensure_runtime_login(url)  # the services run as the runtime role, as deployed
            load_demo(url, plan_demo(args.probes, seed=1))
            fleet = _fleet(url)
            targets = _trial_targets(url, args.trials, wecom)
            env = {
                **os.environ,
                "COLDCHAIN_DATABASE_URL": roles.with_role(url, roles.DEFAULT_RUNTIME_LOGIN),
                "COLDCHAIN_OWNER_DATABASE_URL": url,
                "COLDCHAIN_MQTT_URL": broker.url,
                "COLDCHAIN_WECOM_WEBHOOK_URL": wecom.url("bench"),
                "COLDCHAIN_OUTBOUND_ALLOW_INSECURE_LOOPBACK": "true",  # the fake robot is on http://127.0.0.1
                "COLDCHAIN_ESCALATION_STEPS": "10s,20s",
                "COLDCHAIN_REMINDER_INTERVAL": "10s",
                "COLDCHAIN_INGEST_CLIENT_ID": f"bench-alarms-{os.getpid()}",
            }
            health = services.free_port()
            cli = [sys.executable, "-m", "coldchain.cli"]
            children.append(
                subprocess.Popen([*cli, "ingest", "--health-port", str(health)], env=env, stdout=subprocess.DEVNULL)
            )
            _wait_http(f"http://127.0.0.1:{health}/healthz")
            fleet_file = work / "fleet.json"
            fleet_file.write_text(json.dumps(fleet))
            children.append(
                subprocess.Popen(
                    [sys.executable, __file__, "--rate", str(args.rate), "--load-only", broker.url, str(fleet_file)],
                    env=env,
                    stdout=subprocess.DEVNULL,
                )
            )
            time.sleep(5)  # every probe has spoken before the scheduler's first no-data check
            children.append(subprocess.Popen([*cli, "scheduler"], env=env, stdout=subprocess.DEVNULL))
            time.sleep(3)
            print(
                f"数据：{sum(len(p) for p in fleet.values())} 个探头，背景负载 {args.rate} 读数/秒；"
                f"PostgreSQL {pg.source}，Mosquitto {broker.source}；{len(targets)} 次试验"
            )
            roles_of = {children[0].pid: "ingest", children[1].pid: "publisher", children[2].pid: "scheduler"}
            cpu_before, started = _cpu_ticks(roles_of), time.monotonic()
            done = asyncio.run(trials(url, broker.url, wecom, targets, args.spacing))
            cpu = _cpu_use(cpu_before, _cpu_ticks(roles_of), time.monotonic() - started)
            time.sleep(25)  # let the ladder (10 s, 20 s, reminders every 10 s) run for the last trial too
            lateness = _lateness(url, wecom)
            ingest_ms = [(t.committed - t.published) * 1000 for t in done if t.committed is not None]
            alarm_ms = [(t.robot - t.published) * 1000 for t in done if t.robot is not None]
            _report(ingest_ms, alarm_ms, lateness)
            _report_stages(url, done)
            print("试验期间 CPU（核）：" + "，".join(f"{k} {v:.2f}" for k, v in cpu.items()))
        finally:
            for child in reversed(children):
                child.terminate()
                child.wait(30)
            wecom.close()
            if os.environ.get("COLDCHAIN_BENCH_KEEP"):  # to look into a run afterwards
                print(f"保留数据库：{url}")
            else:
                db.drop_database(pg.url, name)
            pg.stop()
            broker.stop()


def _trial_targets(url: str, n: int, wecom: FakeWecom) -> list[tuple[str, str, str]]:
    """n refrigerated compartments, each renamed so its alarm message can be recognised, with a
    zero-delay rule: (gateway serial, probe serial, label). Each unit gets a robot per level, as
    deployed: one shared robot would spend its 20 messages a minute on everyone's escalations,
    and the figure would measure the rate limit instead of the system."""
    with db.connect(url) as conn:
        conn.execute(
            """INSERT INTO notification_routes (unit_id, level, channel, url)
               SELECT u.id, l, 'wecom', %s || 'u' || u.id || '-l' || l
               FROM units u CROSS JOIN generate_series(1, 3) l""",
            (wecom.url("").rsplit("=", 1)[0] + "=",),
        )
        rows = conn.execute(
            """SELECT g.serial, p.serial, c.id, c.equipment_id FROM probe_bindings_current b
               JOIN compartments c ON c.id = b.compartment_id AND c.mode = 'refrigerated'
               JOIN gateways g ON g.id = b.gateway_id JOIN probes p ON p.id = b.probe_id
               ORDER BY c.id LIMIT %s""",
            (n,),
        ).fetchall()
        targets = []
        for k, (gateway, probe, compartment, equipment) in enumerate(rows):
            label = f"基准冰箱{k:03d}"
            conn.execute("UPDATE equipment SET name = %s WHERE id = %s", (label, equipment))
            conn.execute(
                """INSERT INTO alarm_rule_params (compartment_id, params) VALUES (%s, '{"delay": 0}')
                   ON CONFLICT (compartment_id) DO UPDATE SET params = EXCLUDED.params""",
                (compartment,),
            )
            targets.append((gateway, probe, label))
        conn.commit()
    return targets


_STAGES = """
SELECT e.name, extract(epoch FROM min(r.received_at)) AS ingest, extract(epoch FROM a.raised_at) AS evaluation,
       extract(epoch FROM min(o.sent_at)) AS sent
FROM alarms a JOIN equipment e ON e.id = a.equipment_id
JOIN probe_readings r ON r.probe_id = a.probe_id AND r.t = 15.0
LEFT JOIN notification_outbox o ON o.alarm_id = a.id AND o.step = 'open'
WHERE e.name LIKE '基准冰箱%%'
GROUP BY e.name, a.raised_at
"""


def _report_stages(url: str, done: list[Trial]) -> None:
    """Where each trial's time went, in ms after publishing: the ingest transaction started
    (``received_at`` is its now()), the evaluating transaction started (``raised_at``), the notice
    was marked sent, the robot had it. Same clock: everything runs on this machine."""
    with db.connect(url) as conn:
        stamps = {r[0]: r[1:] for r in conn.execute(_STAGES).fetchall()}
    rows: list[tuple[float, ...]] = []
    for t in done:
        ingest, evaluation, sent = stamps.get(t.label, (None, None, None))
        if None in (ingest, evaluation, sent, t.robot):
            continue
        rows.append(tuple((float(x) - t.published) * 1000 for x in (ingest, evaluation, sent, t.robot)))  # type: ignore[arg-type]
    if not rows:
        return
    names = ("入库事务开始", "评估事务开始", "通知标记已发", "机器人收到")
    medians = [statistics.median(r[i] for r in rows) for i in range(4)]
    print("分解（发布后 ms）：" + "，".join(f"{n} {m:.0f}" for n, m in zip(names, medians, strict=True)) + "（中位数）")
    for k, worst in enumerate(sorted(rows, key=lambda r: -r[3])[:3]):
        print(f"          最慢第 {k + 1}：" + "，".join(f"{n} {m:.0f}" for n, m in zip(names, worst, strict=True)))


def _cpu_ticks(roles_of: dict[int, str]) -> dict[int, tuple[str, int]]:
    """Clock ticks each process has used so far (Linux /proc), named by its part in the run."""
    out: dict[int, tuple[str, int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            command = (entry / "cmdline").read_bytes().split(b"\0")[0].decode(errors="replace")
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        pid = int(entry.name)
        name = roles_of.get(pid) or Path(command.split(" ")[0]).name or "?"
        if pid == os.getpid():
            name = "bench（本进程：试验、机器人替身）"
        elif command.startswith("postgres"):  # a backend's title: "postgres: 15/main: user db …"
            name = "PostgreSQL（整台服务器）"
        out[pid] = (name, int(fields[11]) + int(fields[12]))
    return out


def _cpu_use(before: dict[int, tuple[str, int]], after: dict[int, tuple[str, int]], seconds: float) -> dict[str, float]:
    """Cores used per part over ``seconds``, busiest first, parts under 0.01 core left out."""
    ticks: dict[str, int] = {}
    for pid, (name, used) in after.items():
        ticks[name] = ticks.get(name, 0) + used - before.get(pid, (name, 0))[1]
    hz = os.sysconf("SC_CLK_TCK")
    cores = {name: t / hz / seconds for name, t in sorted(ticks.items(), key=lambda x: -x[1])}
    return {name: c for name, c in cores.items() if c >= 0.01}


def _lateness(url: str, wecom: FakeWecom) -> list[float]:
    """Each step's ``sent_at − due_at``; and, printed, the latest of each kind of step with the
    number of requests its robot had received in the minute before (the budget is 20)."""
    with db.connect(url) as conn:
        rows = conn.execute(
            """SELECT step, extract(epoch FROM sent_at - due_at), extract(epoch FROM sent_at), target
               FROM notification_outbox WHERE step <> 'open' AND sent_at IS NOT NULL"""
        ).fetchall()
    worst: dict[str, tuple[float, float, str]] = {}
    for step_of_row, late, sent, target in rows:
        step = step_of_row.split("-")[0]  # reminder-1, reminder-2… as one kind
        if step not in worst or float(late) > worst[step][0]:
            worst[step] = (float(late), float(sent), target.rsplit("=", 1)[-1])
    parts = []
    for step, (late, sent, key) in sorted(worst.items()):
        before = sum(1 for m in wecom.messages(key) if sent - 60 <= m.at < sent)
        parts.append(f"{step} {late:.1f} s（此前 60 s 该机器人已收 {before} 条）")
    print("每类步骤最迟：" + "，".join(parts))
    return [float(r[1]) for r in rows]


def _wait_http(url: str, seconds: float = 60) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=1):
                return
        except OSError:
            time.sleep(0.2)
    raise SystemExit(f"{url} 未就绪")


def _report(ingest_ms: list[float], alarm_ms: list[float], lateness: list[float]) -> None:
    if ingest_ms:
        print(
            f"基线：发布 → 读数入库        p50 {statistics.median(ingest_ms):7.0f} ms   "
            f"p95 {_percentile(ingest_ms, 0.95):7.0f} ms   （{len(ingest_ms)} 次）"
        )
    if alarm_ms:
        p50, p95 = statistics.median(alarm_ms), _percentile(alarm_ms, 0.95)
        print(
            f"报警：发布 → 企业微信收到请求 p50 {p50:7.0f} ms   p95 {p95:7.0f} ms   "
            f"（{len(alarm_ms)} 次；目标 p95 ≤ {TARGET_P95_MS} ms）"
        )
        if ingest_ms:
            print(f"报警 / 基线（p50）= {p50 / statistics.median(ingest_ms):.1f}")
    if lateness:
        print(
            f"升级步骤迟到（sent_at − due_at）：p50 {statistics.median(lateness):.1f} s   "
            f"p95 {_percentile(lateness, 0.95):.1f} s   最大 {max(lateness):.1f} s   "
            f"（{len(lateness)} 步；目标 ≤ 30 s）"
        )


if __name__ == "__main__":
    main()
