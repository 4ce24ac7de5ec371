"""What each simulated probe measures and each gateway sends: pure, no clock and no sockets, so the
same fleet, seed, start and faults give the same bytes."""

from __future__ import annotations

import json
import logging
import math
import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Final

from coldchain.core.terms import BEIJING
from ingest.contract import TOPIC_PREFIX
from ingest.simulate._fleet import (
    _EPOCH,
    _MS,
    _READING_KINDS,
    AMBIENT,
    BUFFER_CHUNK,
    DRIFT_MAX,
    MALFORMED_KINDS,
    UNREGISTERED_GATEWAY,
    Fault,
    Fleet,
    SimGateway,
    SimProbe,
)

log = logging.getLogger("coldchain.simulate")

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
