"""A deterministic fleet of gateways that speaks the device contract, for the demo and the tests.

The registry in the database says which gateways exist and which probes hang off them; the
simulator makes up what those probes would measure and publishes it the way real gateways do.
The model is pure (:class:`FleetSimulator` has no clock and no sockets): given the fleet, the seed,
the start and the faults, every run produces the same bytes, so a test can name the exact message
it expects and a demo can be replayed. I/O lives at the edges: :func:`load_fleet` reads the
registry, :func:`publish_forever` talks to the broker, :func:`cmd_simulate` is the CLI glue.

Faults are what make the rest of the system worth watching: a power cut that warms a fridge past
8 ℃ over a few hours, a failing freezer, a drifting or silent probe, a gateway on battery or with
weak signal, and a gateway that drops off the network and later uploads what it buffered (each
reading with its own timestamp, which is the case the ingester must not get wrong). A share of
messages can be replaced by garbage, because real gateways send garbage.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import math
import random
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Final, Literal

import aiomqtt
import psycopg

from coldchain.core import db
from coldchain.core.runtime import run_until_signalled
from coldchain.core.settings import MqttAddress, Settings, SettingsError
from coldchain.core.terms import BEIJING
from ingest.contract import TOPIC_PREFIX

log = logging.getLogger("coldchain.simulate")

_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)
_MS: Final = timedelta(milliseconds=1)

UNREGISTERED_GATEWAY: Final = "99999"
# A gateway uploading its buffer after an outage splits it into messages of at most this many readings.
BUFFER_CHUNK: Final = 8
AMBIENT: Final = 25.0

Mode = Literal["refrigerated", "frozen"]

GATEWAY_FAULTS: Final = frozenset({"power_cut", "gateway_battery", "weak_signal", "gateway_offline"})
PROBE_FAULTS: Final = frozenset({"freezer_failure", "probe_drift", "probe_offline"})
FAULT_KINDS: Final = tuple(sorted(GATEWAY_FAULTS | PROBE_FAULTS))
FAULT_NAMES: Final[dict[str, str]] = {
    "power_cut": "停电",
    "freezer_failure": "冷冻设备故障",
    "probe_drift": "探头漂移",
    "probe_offline": "探头离线",
    "gateway_battery": "网关改用电池供电",
    "weak_signal": "网关信号弱",
    "gateway_offline": "网关离线（恢复后补传）",
}
DRIFT_MAX: Final = 1.5

MALFORMED_KINDS: Final = (
    "not_json",
    "truncated",
    "t_not_number",
    "t_missing",
    "t_out_of_range",
    "ts_future",
    "unknown_gateway",
)
# These spoil one reading, so they need a message that has one.
_READING_KINDS: Final = frozenset({"t_not_number", "t_missing", "t_out_of_range"})

_FAULT_FORMAT: Final = "故障格式应为 类型:目标:开始:时长，例如 power_cut:10003:10m:3h"
_DURATION_RE: Final = re.compile(r"(\d+(?:\.\d+)?)([smhd])")
_UNITS: Final = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


# ---------------------------------------------------------------------------------------------
# The fleet and its faults


@dataclass(frozen=True)
class SimProbe:
    serial: str
    mode: Mode
    kind: str  # the equipment's kind: fridge, freezer, medical_fridge, cold_room, vehicle
    t_min: float | None
    t_max: float | None


@dataclass(frozen=True)
class SimGateway:
    serial: str
    probes: tuple[SimProbe, ...]


Fleet = tuple[SimGateway, ...]


def load_fleet(conn: psycopg.Connection) -> Fleet:
    """What is wired up now: active gateways and the probes currently bound through them.

    Ordered by serial in the C collation, so that the fleet (and with it every simulated byte)
    does not depend on the database's locale or on row order.
    """
    rows = conn.execute(
        """
        SELECT g.serial, p.serial, c.mode, e.kind, c.t_min, c.t_max
        FROM gateways g
        JOIN probe_bindings_current b ON b.gateway_id = g.id
        JOIN probes p ON p.id = b.probe_id
        JOIN compartments c ON c.id = b.compartment_id
        JOIN equipment e ON e.id = c.equipment_id
        WHERE g.status = 'active'
        ORDER BY g.serial COLLATE "C", p.serial COLLATE "C"
        """
    ).fetchall()
    grouped: dict[str, list[SimProbe]] = {}
    for gateway, probe, mode, kind, t_min, t_max in rows:
        grouped.setdefault(gateway, []).append(
            SimProbe(
                serial=probe,
                mode="frozen" if mode == "frozen" else "refrigerated",
                kind=kind,
                t_min=None if t_min is None else float(t_min),
                t_max=None if t_max is None else float(t_max),
            )
        )
    return tuple(SimGateway(serial, tuple(probes)) for serial, probes in grouped.items())


def parse_duration(text: str) -> timedelta:
    """``90s``, ``10m``, ``2h``, ``1d``, combinations such as ``1h30m``, or ``0``."""
    value = text.strip().lower()
    if value == "0":
        return timedelta(0)
    if not value or _DURATION_RE.sub("", value):
        raise ValueError(f"时长格式无效：{text!r}，应为如 90s、10m、2h、1d 或 1h30m")
    seconds = sum(float(n) * _UNITS[u] for n, u in _DURATION_RE.findall(value))
    return timedelta(seconds=seconds)


def format_duration(delta: timedelta) -> str:
    """The inverse of :func:`parse_duration` for whole seconds, for messages a person reads."""
    seconds = int(delta.total_seconds())
    if seconds == 0:
        return "0s"
    parts = []
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        count, seconds = divmod(seconds, size)
        if count:
            parts.append(f"{count}{unit}")
    return "".join(parts)


@dataclass(frozen=True)
class Fault:
    """One injected fault; ``start`` counts from the simulator's start."""

    kind: str
    target: str
    start: timedelta
    duration: timedelta

    def __post_init__(self) -> None:
        if self.kind not in FAULT_KINDS:
            raise ValueError(f"未知的故障类型 {self.kind!r}，可选：{'、'.join(FAULT_KINDS)}")
        if not re.fullmatch(r"[0-9A-Za-z_-]{1,32}", self.target):
            raise ValueError(f"故障目标 {self.target!r} 不是有效的网关号或探头编码")
        if self.start < timedelta(0):
            raise ValueError("故障开始时间不能为负")
        if self.duration <= timedelta(0):
            raise ValueError("故障时长必须大于 0")

    @property
    def on_gateway(self) -> bool:
        return self.kind in GATEWAY_FAULTS

    def active(self, elapsed: timedelta) -> bool:
        return self.start <= elapsed < self.start + self.duration

    def describe(self) -> str:
        what = "网关" if self.on_gateway else "探头"
        return (
            f"{FAULT_NAMES[self.kind]}（{self.kind}）：{what} {self.target}，"
            f"开始后 {format_duration(self.start)} 起，持续 {format_duration(self.duration)}"
        )


def parse_fault(text: str) -> Fault:
    parts = text.strip().split(":")
    if len(parts) != 4 or not all(parts):
        raise ValueError(_FAULT_FORMAT)
    kind, target, start, duration = parts
    if kind not in FAULT_KINDS:
        raise ValueError(f"未知的故障类型 {kind!r}，可选：{'、'.join(FAULT_KINDS)}。{_FAULT_FORMAT}")
    try:
        return Fault(kind, target, parse_duration(start), parse_duration(duration))
    except ValueError as exc:
        raise ValueError(f"{exc}。{_FAULT_FORMAT}") from exc


# Minutes: (shortest, longest) duration of a random fault of each kind.
_RANDOM_DURATIONS: Final[dict[str, tuple[int, int]]] = {
    "power_cut": (60, 360),
    "freezer_failure": (60, 240),
    "probe_drift": (120, 720),
    "probe_offline": (10, 120),
    "gateway_battery": (60, 480),
    "weak_signal": (60, 360),
    "gateway_offline": (10, 180),
}


def random_faults(fleet: Fleet, n: int, seed: int, horizon: timedelta) -> list[Fault]:
    """``n`` faults spread over the first ``horizon`` of a run, the same for the same arguments.

    Own random stream (not the simulator's), so asking for faults never changes the readings.
    """
    if n < 0:
        raise ValueError("随机故障数不能为负")
    if n == 0:
        return []
    if not fleet:
        raise ValueError("没有网关，无法注入随机故障")
    rng = random.Random(f"{seed}/faults")
    probes = [p for g in fleet for p in g.probes]
    frozen = [p for p in probes if p.mode == "frozen"]
    kinds = [k for k in FAULT_KINDS if k != "freezer_failure" or frozen]
    latest_start = max(0, int(horizon.total_seconds() * 0.7) // 60)
    faults = []
    for _ in range(n):
        kind = rng.choice(kinds)
        if kind in GATEWAY_FAULTS:
            target = rng.choice(fleet).serial
        elif kind == "freezer_failure":
            target = rng.choice(frozen).serial
        else:
            target = rng.choice(probes).serial
        lo, hi = _RANDOM_DURATIONS[kind]
        start = timedelta(minutes=rng.randint(0, latest_start))
        faults.append(Fault(kind, target, start, timedelta(minutes=rng.randint(lo, hi))))
    return sorted(faults, key=lambda f: (f.start, f.kind, f.target))


# ---------------------------------------------------------------------------------------------
# Temperature models


@dataclass(frozen=True)
class _Profile:
    """How one kind of compartment behaves; numbers chosen to look like real logger traces."""

    amplitude: float  # half the compressor swing, ℃
    period_min: tuple[float, float]  # compressor cycle, minutes (each probe draws its own)
    wander: float  # std of the slow drift of the average (load, ambient, thermostat), ℃
    wander_tau_h: float
    noise: float  # sensor noise std, ℃
    doors_per_hour: float  # during working hours
    door_jump: tuple[float, float]
    door_tau_min: float
    warm_tau_h: float  # cooling lost: approach to ambient
    cool_tau_h: float  # cooling back: approach to the normal cycle


_PROFILES: Final[dict[tuple[str, str], _Profile]] = {
    ("refrigerated", "fridge"): _Profile(1.2, (20, 40), 0.15, 1.0, 0.08, 0.5, (1.5, 4.0), 3.5, 4.0, 0.5),
    ("refrigerated", "medical_fridge"): _Profile(0.8, (20, 35), 0.1, 1.0, 0.06, 0.6, (1.5, 3.5), 3.5, 5.0, 0.5),
    ("refrigerated", "cold_room"): _Profile(0.5, (45, 90), 0.1, 2.0, 0.05, 0.4, (1.0, 2.0), 6.0, 8.0, 1.0),
    ("refrigerated", "vehicle"): _Profile(1.0, (15, 25), 0.45, 0.5, 0.25, 0.0, (0.0, 0.0), 1.0, 1.5, 0.4),
    ("frozen", "cold_room"): _Profile(0.8, (60, 120), 0.2, 2.0, 0.08, 0.3, (1.0, 2.0), 6.0, 5.0, 1.0),
    ("frozen", "vehicle"): _Profile(1.2, (15, 25), 0.5, 0.5, 0.25, 0.0, (0.0, 0.0), 1.0, 1.5, 0.5),
}
_DEFAULT_PROFILES: Final[dict[str, _Profile]] = {
    "refrigerated": _PROFILES[("refrigerated", "fridge")],
    "frozen": _Profile(1.5, (25, 45), 0.3, 1.0, 0.1, 0.3, (1.5, 3.5), 3.5, 2.5, 0.75),
}


def _profile(probe: SimProbe) -> _Profile:
    return _PROFILES.get((probe.mode, probe.kind), _DEFAULT_PROFILES[probe.mode])


def _working_hours(t: datetime) -> bool:
    local = t.astimezone(BEIJING)
    return local.weekday() < 5 and 8 <= local.hour < 17


class _ProbeModel:
    """One compartment as one probe sees it.

    The physical temperature is a normal trace (set point + compressor cycle + slow wander) plus
    an ``excess`` that is zero while cooling works. When cooling stops the actual temperature
    approaches ambient exponentially and the excess follows from it; when cooling returns the
    excess decays. The probe's random stream is drawn the same way every tick whatever the
    faults, so a fault changes only what it is meant to change.
    """

    def __init__(self, probe: SimProbe, seed: int) -> None:
        self.probe = probe
        self.rng = random.Random(f"{seed}/probe/{probe.serial}")
        rng = self.rng
        p = self.profile = _profile(probe)
        if probe.mode == "refrigerated":
            hi = probe.t_max if probe.t_max is not None else 8.0
            lo = probe.t_min if probe.t_min is not None else hi - 6.0
            span = hi - lo
            self.setpoint = (lo + hi) / 2 - 0.2 + rng.uniform(-0.3, 0.3) * span / 6
        else:
            hi = probe.t_max if probe.t_max is not None else -15.0
            lo = probe.t_min if probe.t_min is not None else hi - 10.0
            span = hi - lo
            self.setpoint = (lo + hi) / 2 + rng.uniform(-0.5, 0.5) * span / 10
        scale = min(1.0, span / 6.0) if probe.mode == "refrigerated" else min(1.0, span / 10.0)
        self.amplitude = p.amplitude * scale * rng.uniform(0.85, 1.15)
        self.period_s = rng.uniform(*p.period_min) * 60.0
        self.phase = rng.random()
        self.warming_share = rng.uniform(0.6, 0.75)
        self.ambient = AMBIENT + rng.uniform(-2.0, 2.0)
        self.wander = rng.gauss(0.0, p.wander)
        self.door = 0.0
        self.excess = 0.0
        self.last_normal: float | None = None
        # Half the probes are wireless and report their own battery; cold rooms and vehicles
        # carry combined temperature/humidity probes.
        self.bat = round(rng.uniform(2.9, 3.6), 2) if rng.random() < 0.5 else None
        self.rh_base = rng.uniform(55.0, 80.0) if probe.kind in ("cold_room", "vehicle") else None

    def _cycle(self, t: datetime) -> float:
        x = ((t - _EPOCH).total_seconds() / self.period_s + self.phase) % 1.0
        w = self.warming_share
        shape = -1.0 + 2.0 * x / w if x < w else 1.0 - 2.0 * (x - w) / (1.0 - w)
        return self.amplitude * shape

    def advance(self, t: datetime, dt_s: float, cooling: bool) -> tuple[float, float | None]:
        """Physical temperature and relative humidity at ``t``, ``dt_s`` after the previous tick."""
        p, rng = self.profile, self.rng
        decay = math.exp(-dt_s / (p.wander_tau_h * 3600))
        self.wander = self.wander * decay + p.wander * math.sqrt(1 - decay * decay) * rng.gauss(0.0, 1.0)
        self.door *= math.exp(-dt_s / (p.door_tau_min * 60))
        door_draw = rng.random()
        if p.doors_per_hour > 0 and _working_hours(t) and door_draw < p.doors_per_hour * dt_s / 3600:
            self.door += rng.uniform(*p.door_jump)
        noise = rng.gauss(0.0, p.noise)
        rh_noise = rng.gauss(0.0, 1.5)
        normal = self.setpoint + self._cycle(t) + self.wander
        previous = normal if self.last_normal is None else self.last_normal
        if cooling:
            self.excess *= math.exp(-dt_s / (p.cool_tau_h * 3600))
            if abs(self.excess) < 0.01:
                self.excess = 0.0
        else:
            actual = previous + self.excess
            actual = self.ambient + (actual - self.ambient) * math.exp(-dt_s / (p.warm_tau_h * 3600))
            self.excess = actual - normal
        self.last_normal = normal
        rh = None
        if self.rh_base is not None:
            rh = min(99.0, max(20.0, self.rh_base + rh_noise))
        return normal + self.excess + self.door + noise, rh


@dataclass
class _GatewayState:
    gateway: SimGateway
    rng: random.Random
    rssi_base: float
    battery: float = 4.12
    online: bool | None = None  # None: nothing said yet
    buffer: list[tuple[datetime, dict[str, Any]]] = field(default_factory=list)


def _gateway_state(gateway: SimGateway, seed: int) -> _GatewayState:
    rng = random.Random(f"{seed}/gateway/{gateway.serial}")
    return _GatewayState(gateway, rng, rssi_base=rng.uniform(-78.0, -62.0))


# ---------------------------------------------------------------------------------------------
# The simulator


@dataclass(frozen=True)
class Outgoing:
    topic: str
    payload: bytes
    qos: int = 1


def _rfc3339(t: datetime) -> str:
    local = t.astimezone(BEIJING)
    return local.isoformat(timespec="milliseconds" if local.microsecond else "seconds")


def _epoch_ms(t: datetime) -> int:
    return (t - _EPOCH) // _MS


def _encode(doc: dict[str, Any]) -> bytes:
    return json.dumps(doc, ensure_ascii=False, separators=(",", ":")).encode()


def _t(value: float) -> float:
    return round(value, 1) + 0.0  # + 0.0 turns -0.0 into 0.0


class FleetSimulator:
    """Ticks of the whole fleet, one :meth:`step` at a time.

    Ticks fall at ``start + k × interval`` for k = 1, 2, …: :meth:`step` first advances the
    clock, then reports what the fleet sends at that moment. No wall clock is read, so the caller
    decides whether a tick is published at once (back-fill, tests) or when its time has come.
    """

    def __init__(
        self,
        fleet: Fleet,
        *,
        seed: int,
        start: datetime,
        interval: timedelta = timedelta(seconds=60),
        faults: Sequence[Fault] = (),
        malformed_rate: float = 0.0,
    ) -> None:
        if start.tzinfo is None or start.utcoffset() is None:
            raise ValueError("模拟起始时间必须带时区")
        if interval <= timedelta(0):
            raise ValueError("上报间隔必须大于 0")
        if not 0.0 <= malformed_rate <= 1.0:
            raise ValueError("畸形消息比例应在 0 到 1 之间")
        gateways = {g.serial: g for g in fleet}
        probes = {p.serial: p for g in fleet for p in g.probes}
        for f in faults:
            if f.on_gateway and f.target not in gateways:
                raise ValueError(f"故障 {f.kind} 的目标网关 {f.target} 不在模拟的网关中")
            if not f.on_gateway and f.target not in probes:
                raise ValueError(f"故障 {f.kind} 的目标探头 {f.target} 不在模拟的探头中")
            if f.kind == "freezer_failure" and probes[f.target].mode != "frozen":
                raise ValueError(f"freezer_failure 只能作用于冷冻温区的探头，{f.target} 是冷藏温区")
        self.fleet = fleet
        self.seed = seed
        self.start = start
        self.interval = interval
        self.faults = tuple(faults)
        self.malformed_rate = malformed_rate
        self._tick = 0
        self._models = {p.serial: _ProbeModel(p, seed) for p in probes.values()}
        self._gateways = [_gateway_state(g, seed) for g in fleet]
        self._malformed_rng = random.Random(f"{seed}/malformed")
        self._unregistered = UNREGISTERED_GATEWAY
        while self._unregistered in gateways:
            self._unregistered += "9"

    @property
    def now(self) -> datetime:
        """The time of the tick just produced (``start`` before the first)."""
        return self.start + self.interval * self._tick

    @property
    def next_time(self) -> datetime:
        return self.start + self.interval * (self._tick + 1)

    def _active(self, elapsed: timedelta, kind: str, target: str) -> bool:
        return any(f.kind == kind and f.target == target and f.active(elapsed) for f in self.faults)

    def _drift(self, elapsed: timedelta, probe: str) -> float:
        """A drifted probe stays drifted after its fault window: only recalibration would fix it."""
        offset = 0.0
        for f in self.faults:
            if f.kind == "probe_drift" and f.target == probe and elapsed >= f.start:
                offset += DRIFT_MAX * min(1.0, (elapsed - f.start) / f.duration)
        return offset

    def step(self) -> list[Outgoing]:
        self._tick += 1
        t = self.now
        elapsed = t - self.start
        dt_s = self.interval.total_seconds()
        out: list[Outgoing] = []
        for gw in self._gateways:
            serial = gw.gateway.serial
            power_cut = self._active(elapsed, "power_cut", serial)
            on_battery = power_cut or self._active(elapsed, "gateway_battery", serial)
            weak = self._active(elapsed, "weak_signal", serial)
            online = not self._active(elapsed, "gateway_offline", serial)

            readings: list[dict[str, Any]] = []
            for probe in gw.gateway.probes:
                cooling = not (power_cut or self._active(elapsed, "freezer_failure", probe.serial))
                model = self._models[probe.serial]
                temp, rh = model.advance(t, dt_s, cooling)
                if self._active(elapsed, "probe_offline", probe.serial):
                    continue
                reading: dict[str, Any] = {"probe": probe.serial, "t": _t(temp + self._drift(elapsed, probe.serial))}
                if rh is not None:
                    reading["rh"] = round(rh, 1)
                if model.bat is not None:
                    reading["bat"] = model.bat
                readings.append(reading)

            if on_battery:
                gw.battery = max(3.3, gw.battery - 0.06 * dt_s / 3600)
            else:
                gw.battery += (4.12 - gw.battery) * (1 - math.exp(-dt_s / 3600))
            battery = round(gw.battery + gw.rng.uniform(-0.01, 0.01), 2)
            lo, hi = (-110.0, -100.0) if weak else (-80.0, -60.0)
            rssi = round(min(hi, max(lo, (-105.0 if weak else gw.rssi_base) + gw.rng.gauss(0.0, 2.0))))
            gateway_fields = {"power": "battery" if on_battery else "ac", "battery": battery, "rssi": rssi}
            malformed_draw = self._malformed_rng.random()
            malformed_kind = self._malformed_rng.random()
            malformed_pick = self._malformed_rng.random()

            status_topic = f"{TOPIC_PREFIX}{serial}/status"
            if online != gw.online:
                out.append(Outgoing(status_topic, _encode({"online": online})))
                gw.online = online
            if not online:
                gw.buffer.extend((t, r) for r in readings)
                continue
            if gw.buffer:
                out.extend(self._upload_buffer(gw, t, gateway_fields))
            doc = {"ts": _rfc3339(t), "readings": readings, **gateway_fields}
            topic = f"{TOPIC_PREFIX}{serial}/telemetry"
            if malformed_draw < self.malformed_rate:
                out.append(self._malformed(topic, doc, malformed_kind, malformed_pick))
            else:
                out.append(Outgoing(topic, _encode(doc)))
        return out

    def _upload_buffer(self, gw: _GatewayState, t: datetime, gateway_fields: dict[str, Any]) -> list[Outgoing]:
        """What a gateway sends after an outage: every buffered reading once, with its own time."""
        topic = f"{TOPIC_PREFIX}{gw.gateway.serial}/telemetry"
        stamped = [{**r, "ts": _epoch_ms(when)} for when, r in gw.buffer]
        gw.buffer.clear()
        return [
            Outgoing(topic, _encode({"ts": _rfc3339(t), "readings": stamped[i : i + BUFFER_CHUNK], **gateway_fields}))
            for i in range(0, len(stamped), BUFFER_CHUNK)
        ]

    def _malformed(self, topic: str, doc: dict[str, Any], kind_draw: float, pick_draw: float) -> Outgoing:
        """Replace one message by one of the kinds of garbage gateways are known to send."""
        kinds = [k for k in MALFORMED_KINDS if doc["readings"] or k not in _READING_KINDS]
        kind = kinds[int(kind_draw * len(kinds))]
        readings = [dict(r) for r in doc["readings"]]
        bad = {**doc, "readings": readings}
        if kind in _READING_KINDS:
            victim = readings[int(pick_draw * len(readings))]
            if kind == "t_not_number":
                victim["t"] = "abc"
            elif kind == "t_missing":
                del victim["t"]
            else:
                victim["t"] = 999
        elif kind == "ts_future":
            bad["ts"] = _rfc3339(self.now + timedelta(hours=2))
        elif kind == "unknown_gateway":
            topic = f"{TOPIC_PREFIX}{self._unregistered}/telemetry"
        elif kind == "truncated":
            full = _encode(doc)
            return Outgoing(topic, full[: max(1, int(len(full) * (0.2 + 0.7 * pick_draw)))])
        else:  # not_json: what a gateway firmware prints when its sensor bus hangs
            serial = topic[len(TOPIC_PREFIX) :].split("/")[0]
            return Outgoing(topic, f"GW{serial} ERR 0x1F sensor bus timeout".encode())
        return Outgoing(topic, _encode(bad))


# ---------------------------------------------------------------------------------------------
# Publishing


_PUBLISH_BATCH: Final = 64


async def _wait(stop: asyncio.Event | None, seconds: float) -> bool:
    """Sleep up to ``seconds``; True when ``stop`` was set meanwhile."""
    if seconds > 0:
        if stop is None:
            await asyncio.sleep(seconds)
        else:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=seconds)
    return stop is not None and stop.is_set()


async def publish_forever(
    mqtt: MqttAddress,
    sim: FleetSimulator,
    *,
    until: datetime | None,
    stop: asyncio.Event | None,
    realtime: bool = True,
    client_id: str = "coldchain-simulator",
    on_tick: Callable[[datetime, int], None] | None = None,
) -> int:
    """Publish tick after tick until the simulated time passes ``until`` or ``stop`` is set.

    With ``realtime`` a tick waits until its time has come on the wall clock, because the ingester
    refuses timestamps from the future; ticks already in the past (a back-fill) go out at once.
    A lost broker is retried with backoff and the interrupted tick is published again from the
    first message not acknowledged: QoS 1 is at-least-once anyway, and the ingester de-duplicates.
    Returns the number of messages acknowledged.
    """
    published = 0
    pending: list[Outgoing] = []
    tick_time = sim.now
    tick_count = 0
    backoff = 1.0
    while True:
        if not pending and stop is not None and stop.is_set():
            return published
        try:
            async with aiomqtt.Client(mqtt.host, mqtt.port, identifier=client_id) as client:
                client.pending_calls_threshold = _PUBLISH_BATCH + 1  # a full batch in flight is intended
                log.info("已%s连接 MQTT 代理 %s", "重新" if backoff > 1.0 else "", mqtt.url)
                backoff = 1.0
                while True:
                    if not pending:
                        if until is not None and sim.next_time > until:
                            return published
                        if stop is not None and stop.is_set():
                            return published
                        if realtime:
                            delay = (sim.next_time - datetime.now(UTC)).total_seconds()
                            if await _wait(stop, delay):
                                return published
                        pending = sim.step()
                        tick_time, tick_count = sim.now, len(pending)
                    while pending:
                        batch = pending[:_PUBLISH_BATCH]
                        results = await asyncio.gather(
                            *(client.publish(m.topic, m.payload, qos=m.qos, timeout=10) for m in batch),
                            return_exceptions=True,
                        )
                        done = 0
                        for result in results:
                            if isinstance(result, BaseException):
                                pending = pending[done:]
                                published += done
                                raise result
                            done += 1
                        pending = pending[done:]
                        published += done
                    if on_tick is not None:
                        on_tick(tick_time, tick_count)
        except (aiomqtt.MqttError, OSError) as exc:
            log.warning("MQTT 代理 %s 连接失败或中断（%s），%.0f 秒后重连", mqtt.url, exc, backoff)
            if await _wait(stop, backoff):
                return published
            backoff = min(backoff * 2, 30.0)


# ---------------------------------------------------------------------------------------------
# CLI glue


def _duration_arg(text: str) -> timedelta:
    try:
        return parse_duration(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc


def _fault_arg(text: str) -> Fault:
    try:
        return parse_fault(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc


def _positive_seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"应为秒数，实际为 {text!r}") from exc
    if not value > 0 or not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"秒数必须大于 0，实际为 {text!r}")
    return value


def _rate(text: str) -> float:
    try:
        value = float(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"应为 0 到 1 之间的小数，实际为 {text!r}") from exc
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"应为 0 到 1 之间的小数，实际为 {text!r}")
    return value


def _count(text: str) -> int:
    try:
        value = int(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"应为非负整数，实际为 {text!r}") from exc
    if value < 0:
        raise argparse.ArgumentTypeError(f"应为非负整数，实际为 {text!r}")
    return value


def configure_parser(p: argparse.ArgumentParser) -> None:
    p.add_argument("--seed", type=int, default=20200106, help="随机种子（相同种子、起点和故障产生相同的消息）")
    p.add_argument("--interval", type=_positive_seconds, default=60.0, help="每个网关的上报间隔，秒（默认 60）")
    p.add_argument(
        "--backfill", type=_duration_arg, default=timedelta(0),
        help="从多久以前开始模拟，如 6h；过去的部分尽快补发，之后按实时发送（默认 0s）",
    )
    p.add_argument(
        "--fault", type=_fault_arg, action="append", default=[], metavar="类型:目标:开始:时长",
        help="注入故障，可重复；开始时间从模拟起点（含回填）算起，如 power_cut:10003:10m:3h。"
        f"类型：{'、'.join(FAULT_KINDS)}",
    )
    p.add_argument("--random-faults", type=_count, default=0, metavar="N", help="另外随机注入 N 个故障（由种子决定）")
    p.add_argument("--malformed-rate", type=_rate, default=0.0, help="替换为畸形消息的遥测消息比例，0～1（默认 0）")
    p.add_argument(
        "--duration", type=_positive_seconds, default=None, help="运行若干秒（墙上时间）后停止；默认一直运行"
    )
    p.add_argument("--client-id", default="coldchain-simulator", help="MQTT 客户端标识（默认 coldchain-simulator）")


def cmd_simulate(settings: Settings, args: argparse.Namespace, url: str) -> int:
    """Simulate the registry's fleet against the configured broker until stopped."""
    mqtt = settings.mqtt
    if mqtt is None:
        raise SettingsError("未配置 COLDCHAIN_MQTT_URL")
    with db.connect(url, application="coldchain-simulator") as conn:
        fleet = load_fleet(conn)
    if not fleet:
        raise ValueError("数据库中没有已绑定探头的网关，请先运行 coldchain seed demo")
    interval = timedelta(seconds=args.interval)
    backfill: timedelta = args.backfill
    start = datetime.now(BEIJING).replace(microsecond=0) - backfill
    horizon = backfill + (timedelta(seconds=args.duration) if args.duration is not None else timedelta(hours=24))
    faults = [*args.fault, *random_faults(fleet, args.random_faults, args.seed, horizon)]
    sim = FleetSimulator(
        fleet, seed=args.seed, start=start, interval=interval, faults=faults, malformed_rate=args.malformed_rate
    )
    probes = sum(len(g.probes) for g in fleet)
    print(
        f"模拟 {len(fleet)} 个网关、{probes} 个探头，发往 {mqtt.url}（客户端 {args.client_id}）；"
        f"起点 {start.isoformat(timespec='seconds')}（回填 {format_duration(backfill)}），"
        f"间隔 {args.interval:g} 秒，种子 {args.seed}，畸形消息比例 {args.malformed_rate:g}"
    )
    for f in faults:
        print(f"注入故障：{f.describe()}")
    print("按 Ctrl-C 停止。", flush=True)

    last_hour: list[datetime] = []

    def report(t: datetime, count: int) -> None:
        hour = t.astimezone(BEIJING).replace(minute=0, second=0, microsecond=0)
        if not last_hour or hour != last_hour[0]:
            last_hour[:] = [hour]
            print(f"已发送至 {t.astimezone(BEIJING).isoformat(timespec='seconds')}", flush=True)

    published = run_until_signalled(
        lambda stop: publish_forever(
            mqtt, sim, until=None, stop=stop, realtime=True, client_id=args.client_id, on_tick=report
        ),
        duration=args.duration,
    )
    reached = sim.now.astimezone(BEIJING).isoformat(timespec="seconds")
    print(f"模拟已停止，共发送 {published} 条消息，模拟时间至 {reached}")
    return 0
