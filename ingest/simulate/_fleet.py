"""The simulated fleet: gateways and probes from the registry, durations, and the faults to inject."""

from __future__ import annotations

import logging
import random
import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Final, Literal

import psycopg

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
