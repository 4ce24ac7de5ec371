"""The parts of tests/ops/test_scale_out.py that are not the scenario itself: the real processes,
the fleet and its robots, the MQTT load with its record of what was published, and the
"exactly once" comparisons (issue #18).

Nothing here is a mock: ``coldchain ingest``, ``coldchain scheduler`` and ``coldchain api`` run as
the commands a deployment runs, against a database of the test's own, a Mosquitto of its own and
the fake WeCom robot of tests/fakewecom.py over real HTTP.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from collections import Counter, deque
from collections.abc import Callable, Hashable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import aiomqtt
from apihelp import PASSWORD
from fakewecom import FakeWecom
from psycopg.types.json import Jsonb

from alarms.card import LEVEL_LABELS, STEP_LABELS
from alarms.escalation import kind_of_key
from coldchain.core import db
from coldchain.core.settings import parse_mqtt_url
from coldchain.seed.demo import load_demo, plan_demo
from registry.auth import hash_password

# ---------------------------------------------------------------------------------------------
# "Exactly once", as one comparison that names what is wrong


def once_problems(expected: Iterable[Hashable], got: Iterable[Hashable], what: str, show: int = 5) -> list[str]:
    """What keeps ``got`` from holding each item of ``expected`` exactly as often as expected holds
    it (once, for a list of distinct items): missing, duplicated, unexpected. Empty when equal.
    Both are sequences: a mapping would count its values, not its keys."""
    want, have = Counter(expected), Counter(got)
    problems = []
    missing = want - have
    extra = have - want
    doubled = {k: n for k, n in extra.items() if k in want}
    unknown = {k: n for k, n in extra.items() if k not in want}
    if missing:
        problems.append(f"{what}：缺 {sum(missing.values())} 条，如 {sorted(missing.items(), key=str)[:show]}")
    if doubled:
        problems.append(f"{what}：重复 {sum(doubled.values())} 条，如 {sorted(doubled.items(), key=str)[:show]}")
    if unknown:
        problems.append(f"{what}：多出 {sum(unknown.values())} 条，如 {sorted(unknown.items(), key=str)[:show]}")
    return problems


async def wait_for(check: Callable[[], bool], seconds: float, what: str) -> None:
    deadline = time.monotonic() + seconds
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"{seconds:g} 秒内未等到：{what}")
        await asyncio.sleep(0.25)


# ---------------------------------------------------------------------------------------------
# Processes


@dataclass
class Child:
    name: str
    proc: subprocess.Popen[bytes]
    log: Path

    def tail(self, lines: int = 25) -> str:
        text = self.log.read_text(encoding="utf-8", errors="replace").splitlines()
        return f"--- {self.name} (exit {self.proc.poll()}) {self.log}\n" + "\n".join(text[-lines:])


@dataclass
class Children:
    """The real commands, each logging to a file of its own; all stopped at the end."""

    env: dict[str, str]
    logs: Path
    started: list[Child] = field(default_factory=list)

    def start(self, name: str, *args: str, env: Mapping[str, str] | None = None) -> Child:
        log = self.logs / f"{name}-{len(self.started)}.log"
        with log.open("wb") as out:
            proc = subprocess.Popen(
                [sys.executable, "-m", "coldchain.cli", *args],
                env={**self.env, **(env or {})},
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        child = Child(name, proc, log)
        self.started.append(child)
        return child

    def stop_all(self, timeout: float = 30) -> dict[str, int | None]:
        """SIGTERM to every child still running, then wait; a child that will not stop is killed."""
        for c in self.started:
            if c.proc.poll() is None:
                c.proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout
        for c in self.started:
            try:
                c.proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                c.proc.kill()
                c.proc.wait(10)
        return {f"{c.name}#{i}": c.proc.returncode for i, c in enumerate(self.started)}

    def tails(self) -> str:
        return "\n".join(c.tail() for c in self.started)


def clean_env(**settings: str) -> dict[str, str]:
    return {**{k: v for k, v in os.environ.items() if not k.startswith("COLDCHAIN_")}, **settings}


def http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=1) as r:
            return bool(200 <= r.status < 300)
    except OSError:
        return False


def wait_http(url: str, child: Child, seconds: float = 60) -> None:
    deadline = time.monotonic() + seconds
    while not http_ok(url):
        if child.proc.poll() is not None or time.monotonic() > deadline:
            raise AssertionError(f"{url} 未就绪\n{child.tail()}")
        time.sleep(0.1)


# ---------------------------------------------------------------------------------------------
# The fleet, its robots and the people who acknowledge


@dataclass(frozen=True)
class Probe:
    serial: str
    compartment: int
    unit: int
    base: float  # a temperature well inside the compartment's limits


@dataclass
class Fleet:
    gateways: dict[str, list[Probe]]
    targets: list[Probe]  # one refrigerated compartment per unit, each with a zero-delay rule
    users: list[str]  # one per API process

    @property
    def probes(self) -> list[Probe]:
        return [p for ps in self.gateways.values() for p in ps]


def robot_key(url: str) -> str:
    return parse_qs(urlsplit(url).query)["key"][0]


def build_fleet(url: str, wecom: FakeWecom, *, probes: int, targets: int, apis: int) -> Fleet:
    """The demo province of ``probes`` probes; a WeCom robot per unit and level (key
    ``u<unit>-l<level>``: one shared robot would spend its 20 messages a minute on everyone); the
    first refrigerated compartment of ``targets`` units with delay 0 and hold 0; a province-level
    business administrator per API process (``scale_api<n>``, :data:`apihelp.PASSWORD`)."""
    load_demo(url, plan_demo(probes, seed=1))
    base = wecom.url("").rsplit("=", 1)[0] + "="
    with db.connect(url) as conn:
        conn.execute(
            """INSERT INTO notification_routes (unit_id, level, channel, url)
               SELECT u.id, l, 'wecom', %s || 'u' || u.id || '-l' || l
               FROM units u CROSS JOIN generate_series(1, 3) l""",
            (base,),
        )
        users = [f"scale_api{n + 1}" for n in range(apis)]
        for username in users:
            conn.execute(
                """INSERT INTO users (username, real_name, phone, unit_id, role, password_hash)
                   SELECT %s, %s, '13900000000', id, 'business_admin', %s FROM units WHERE level = 'province'""",
                (username, f"扩容测试{username[-1]}号", hash_password(PASSWORD)),
            )
        gateways: dict[str, list[Probe]] = {}
        for g, p, comp, unit, low, high in conn.execute(
            """SELECT g.serial, p.serial, c.id, e.unit_id, c.t_min::float8, c.t_max::float8
               FROM probe_bindings_current b JOIN gateways g ON g.id = b.gateway_id
               JOIN probes p ON p.id = b.probe_id JOIN compartments c ON c.id = b.compartment_id
               JOIN equipment e ON e.id = c.equipment_id ORDER BY g.serial, p.serial"""
        ).fetchall():
            gateways.setdefault(g, []).append(Probe(p, comp, unit, round(high - 4.0 if low is None else low + 2.0, 1)))
        chosen: dict[int, Probe] = {}
        for probe in sorted((p for ps in gateways.values() for p in ps), key=lambda p: p.compartment):
            mode = conn.execute("SELECT mode FROM compartments WHERE id = %s", (probe.compartment,)).fetchone()
            if mode and mode[0] == "refrigerated" and probe.unit not in chosen and len(chosen) < targets:
                chosen[probe.unit] = probe
        for probe in chosen.values():
            conn.execute(
                "INSERT INTO alarm_rule_params (compartment_id, params) VALUES (%s, %s)",
                (probe.compartment, Jsonb({"delay": 0, "hold": 0})),
            )
        conn.commit()
    assert len(chosen) == targets, f"演示省份只有 {len(chosen)} 个单位有冷藏温区"
    return Fleet(gateways, list(chosen.values()), users)


# ---------------------------------------------------------------------------------------------
# The load


EXCURSION_T = 12.0  # above every refrigerated compartment's +8 ℃


@dataclass
class Load:
    """Gateways reporting over MQTT QoS 1 as real ones do — each gateway every ``every`` s, one
    message holding each of its probes' readings of that span (``per_probe`` a second) — and a
    record of every distinct (probe serial, ts in ms) → temperature published. Some messages are
    published twice (a gateway's retry), and some repeat a reading of the gateway's previous
    message; neither may be stored twice."""

    fleet: Fleet
    excursions: dict[str, tuple[int, int]]  # probe serial → [start, end) in epoch ms: EXCURSION_T
    per_probe: int = 10
    every: float = 0.5
    expected: dict[tuple[str, int], float] = field(default_factory=dict)
    messages: int = 0
    readings: int = 0
    repeated_messages: int = 0
    repeated_readings: int = 0
    _last: dict[str, int] = field(default_factory=dict)
    _k: int = 0

    def _readings(self, probes: list[Probe], now_ms: int) -> list[dict[str, object]]:
        out: list[dict[str, object]] = []
        n = max(1, round(self.per_probe * self.every))
        step = int(self.every * 1000) // n
        for p in probes:
            for i in range(n):
                ts = max(now_ms - (n - 1 - i) * step, self._last.get(p.serial, 0) + 1)
                self._last[p.serial] = ts
                start, end = self.excursions.get(p.serial, (0, 0))
                self._k += 1
                t = EXCURSION_T if start <= ts < end else round(p.base + (self._k % 20) / 10, 1)
                self.expected[(p.serial, ts)] = t
                out.append({"probe": p.serial, "t": t, "ts": ts})
        return out

    async def run(self, broker_url: str, seconds: float) -> None:
        addr = parse_mqtt_url(broker_url)
        gateways = sorted(self.fleet.gateways.items())
        slices = 5
        tick = self.every / slices
        again: deque[tuple[float, str, bytes]] = deque()  # (when, topic, payload) published a second time
        previous: dict[str, dict[str, object]] = {}
        client = aiomqtt.Client(addr.host, addr.port, identifier=f"scale-load-{os.getpid()}", max_inflight_messages=500)
        client.pending_calls_threshold = 10_000
        async with client:
            t0 = time.monotonic()
            n = 0
            while time.monotonic() - t0 < seconds:
                now_ms = int(time.time() * 1000)
                batch: list[tuple[str, bytes]] = []
                for g, probes in gateways[n % slices :: slices]:
                    readings = self._readings(probes, now_ms)
                    if g in previous and (self.messages + len(batch)) % 53 == 0:
                        readings.append(previous[g])  # a reading of the last message, again
                        self.repeated_readings += 1
                    previous[g] = readings[0]
                    body = json.dumps({"readings": readings, "power": "ac", "battery": 4.1, "rssi": -70}).encode()
                    batch.append((f"coldchain/v1/{g}/telemetry", body))
                    self.readings += len(readings)
                    if (self.messages + len(batch)) % 37 == 0:
                        again.append((time.monotonic() + 2.0, batch[-1][0], body))
                while again and again[0][0] <= time.monotonic():
                    _, topic, body = again.popleft()
                    batch.append((topic, body))
                    self.repeated_messages += 1
                self.messages += len(batch)
                await asyncio.gather(*(client.publish(t, b, qos=1) for t, b in batch))
                n += 1
                await asyncio.sleep(max(0.0, t0 + n * tick - time.monotonic()))
            rest = list(again)
            self.repeated_messages += len(rest)
            self.messages += len(rest)
            await asyncio.gather(*(client.publish(t, b, qos=1) for _, t, b in rest))


def stored_readings(url: str) -> list[tuple[str, int, float]]:
    """Every stored reading, duplicates and all (the key forbids them; the comparison still looks)."""
    with db.connect(url) as conn:
        rows = conn.execute(
            """SELECT p.serial, (extract(epoch FROM r.ts) * 1000)::bigint, r.t FROM probe_readings r
               JOIN probes p ON p.id = r.probe_id"""
        ).fetchall()
    return [(s, int(ms), float(t)) for s, ms, t in rows]


# ---------------------------------------------------------------------------------------------
# Alarms and what their ladder owes

ALARMS = """
SELECT a.id, a.compartment_id, a.kind, a.state, a.raised_at, a.resolved_at, a.acknowledged_by, a.acknowledged_at,
       (SELECT count(*) FROM alarm_events v WHERE v.alarm_id = a.id AND v.action = 'opened') AS opened,
       (SELECT count(*) FROM alarm_events v WHERE v.alarm_id = a.id AND v.action = 'acknowledged') AS acked,
       (SELECT count(*) FROM alarm_events v WHERE v.alarm_id = a.id AND v.action = 'closed') AS closed,
       (SELECT count(*) FROM audit_log l WHERE l.action = 'alarm.acknowledge' AND l.entity = 'alarms'
          AND l.entity_id = a.id) AS audited
FROM alarms a ORDER BY a.id
"""


def owed_steps(alarm: dict[str, Any], steps: tuple[float, ...], reminder: float) -> set[str]:
    """The steps the ladder owes an alarm that opened at ``raised_at`` and ended at ``resolved_at``
    (docs/alarms.md: a step due after the end is not owed; of the reminders only the latest missed
    one is certain), plus the acknowledgement and end notices."""
    raised, resolved = alarm["raised_at"], alarm["resolved_at"]
    owed = {"open", "ack", "resolved"}
    owed |= {f"level{k + 2}" for k, s in enumerate(steps) if raised + timedelta(seconds=s) <= resolved}
    reminders = int((resolved - raised - timedelta(seconds=steps[-1])) / timedelta(seconds=reminder))
    if reminders >= 1:
        owed.add(f"reminder-{reminders}")
    return owed


# ---------------------------------------------------------------------------------------------
# Notifications: what the outbox says was sent, and what the robot got


_NOTICE = re.compile(
    "(" + "|".join(LEVEL_LABELS.values()) + ")(?:：| · )(" + "|".join(STEP_LABELS.values()) + r") · 报警编号 (\d+)"
)
Notice = tuple[str, int, str, str]  # (robot key, alarm id, step label, level label)


def notices_in(markdown: str) -> list[tuple[int, str, str]]:
    """(alarm id, step label, level label) of each alarm card in a WeCom markdown message."""
    return [(int(m.group(3)), m.group(2), m.group(1)) for m in _NOTICE.finditer(markdown)]


def robot_requests(wecom: FakeWecom) -> tuple[list[tuple[str, tuple[tuple[int, str, str], ...]]], list[str]]:
    """Each markdown request the robot got, as (key, its cards sorted); and the key of each text
    request (the @mention that follows a message sending people out)."""
    markdown, texts = [], []
    for r in wecom.messages():
        if r.body.get("msgtype") == "markdown":
            markdown.append((r.key, tuple(sorted(notices_in(r.content)))))
        else:
            texts.append(r.key)
    return markdown, texts


OUTBOX = """
SELECT id, alarm_id, step, channel, target, levels::int[] AS levels, attempts, sent_at, sent_in, due_at, last_error
FROM notification_outbox ORDER BY id
"""


def outbox_requests(rows: list[dict[str, Any]]) -> list[tuple[str, tuple[tuple[int, str, str], ...]]]:
    """The requests the outbox says it made: rows sent together share ``sent_in``."""
    groups: dict[tuple[str, int], list[tuple[int, str, str]]] = {}
    for r in rows:
        if r["sent_at"] is not None:
            card = (r["alarm_id"], STEP_LABELS[kind_of_key(r["step"])], LEVEL_LABELS[max(r["levels"])])
            groups.setdefault((robot_key(r["target"]), r["sent_in"]), []).append(card)
    return [(key, tuple(sorted(cards))) for (key, _), cards in groups.items()]


def busiest_minute(wecom: FakeWecom) -> tuple[str, int]:
    """The robot with the most requests in any 60 s, and that count (WeCom allows 20)."""
    by_key: dict[str, list[float]] = {}
    for r in wecom.messages():
        by_key.setdefault(r.key, []).append(r.at)
    best = ("", 0)
    for key, times in by_key.items():
        times.sort()
        j = 0
        for i, t in enumerate(times):
            while times[j] <= t - 60:
                j += 1
            if i - j + 1 > best[1]:
                best = (key, i - j + 1)
    return best


VOLATILE_TILE = {"minutes_since", "reading_age", "alarm_lasted"}


def board_view(body: dict[str, Any]) -> dict[str, Any]:
    """A board answer without what depends on the moment it was asked, its tiles by compartment
    (tiles that tie on the board's own order may come in either order)."""
    tiles = sorted(body["tiles"], key=lambda t: t["compartment_id"])
    kept = [{k: v for k, v in t.items() if k not in VOLATILE_TILE} for t in tiles]
    return {"summary": body["summary"], "tiles": kept}
