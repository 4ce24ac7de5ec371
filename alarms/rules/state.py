"""What the rules remember between runs, stored as jsonb in ``alarm_rule_state``.

Why its own module: the state outlives every deployment — a restart must resume a running delay
from the stored row — so its JSON shape is a contract. ``from_json`` accepts states missing newer
keys, so adding a field never breaks stored rows, and refuses malformed ones with a Chinese message.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from alarms.rules import checks
from alarms.rules.kinds import Cause


def _iso(value: datetime | None) -> str | None:
    return None if value is None else value.isoformat()


def _dt(data: Mapping[str, Any], key: str) -> datetime | None:
    return _parse_dt(data.get(key), key)


def _parse_dt(value: object, key: str) -> datetime | None:
    if value is None:
        return None
    if isinstance(value, datetime):
        return value
    if isinstance(value, str):
        return datetime.fromisoformat(value)
    raise ValueError(f"规则状态字段 {key} 应为 ISO 时间字符串，收到 {value!r}")


def _num(data: Mapping[str, Any], key: str) -> float | None:
    value = data.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"规则状态字段 {key} 应为数值，收到 {value!r}")
    return float(value)


def _flag(data: Mapping[str, Any], key: str) -> bool:
    value = data.get(key, False)
    if not isinstance(value, bool):
        raise ValueError(f"规则状态字段 {key} 应为布尔值，收到 {value!r}")
    return value


def _section(data: Mapping[str, Any], key: str) -> Mapping[str, Any]:
    value = data.get(key) or {}
    if not isinstance(value, Mapping):
        raise ValueError(f"规则状态字段 {key} 应为对象，收到 {value!r}")
    return value


@dataclass
class Excursion:
    """One condition's state machine: a breach running since ``breach_since`` (the delay), whether
    its alarm is open, and a recovery running since ``clear_since`` (the hold)."""

    breach_since: datetime | None = None
    open: bool = False
    clear_since: datetime | None = None
    worst: float | None = None
    reported: float | None = None

    def reset(self) -> None:
        self.breach_since = None
        self.open = False
        self.clear_since = None
        self.worst = None
        self.reported = None

    def break_continuity(self) -> None:
        """A gap: the running delay (unless already confirmed) and the running hold restart."""
        self.clear_since = None
        if not self.open:
            self.breach_since = None
            self.worst = None

    def to_json(self) -> dict[str, Any]:
        return {
            "breach_since": _iso(self.breach_since),
            "open": self.open,
            "clear_since": _iso(self.clear_since),
            "worst": self.worst,
            "reported": self.reported,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Excursion:
        return cls(
            breach_since=_dt(data, "breach_since"),
            open=_flag(data, "open"),
            clear_since=_dt(data, "clear_since"),
            worst=_num(data, "worst"),
            reported=_num(data, "reported"),
        )


STATE_VERSION = 1


@dataclass
class CompartmentState:
    """Everything the rules remember about one compartment between runs.

    ``watermark`` is the last evaluated reading's timestamp; ``segments`` the out-of-range spans
    (first to last breaching reading of each run) still inside the cumulative window, oldest first.
    ``from_json`` accepts states missing newer keys, so adding a field never breaks stored rows.
    """

    watermark: datetime | None = None
    last_value: float | None = None
    last_received_at: datetime | None = None
    high: Excursion = field(default_factory=Excursion)
    low: Excursion = field(default_factory=Excursion)
    freeze: Excursion = field(default_factory=Excursion)
    wrong_place: Excursion = field(default_factory=Excursion)
    segments: list[tuple[datetime, datetime]] = field(default_factory=list)
    cumulative_open: bool = False
    no_data_open: bool = False
    no_data_cause: Cause | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "version": STATE_VERSION,
            "watermark": _iso(self.watermark),
            "last_value": self.last_value,
            "last_received_at": _iso(self.last_received_at),
            "high": self.high.to_json(),
            "low": self.low.to_json(),
            "freeze": self.freeze.to_json(),
            "wrong_place": self.wrong_place.to_json(),
            "segments": [[start.isoformat(), end.isoformat()] for start, end in self.segments],
            "cumulative_open": self.cumulative_open,
            "no_data_open": self.no_data_open,
            "no_data_cause": self.no_data_cause,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> CompartmentState:
        segments: list[tuple[datetime, datetime]] = []
        for pair in data.get("segments") or []:
            checks.require(
                isinstance(pair, list | tuple) and len(pair) == 2,
                f"规则状态字段 segments 的元素应为 [开始, 结束]，收到 {pair!r}",
            )
            start, end = _parse_dt(pair[0], "segments"), _parse_dt(pair[1], "segments")
            checks.require(start is not None and end is not None, f"规则状态字段 segments 有空时间：{pair!r}")
            assert start is not None and end is not None
            segments.append((start, end))
        cause = data.get("no_data_cause")
        checks.require(cause in (None, "gateway_offline"), f"规则状态字段 no_data_cause 无效：{cause!r}")
        return cls(
            watermark=_dt(data, "watermark"),
            last_value=_num(data, "last_value"),
            last_received_at=_dt(data, "last_received_at"),
            high=Excursion.from_json(_section(data, "high")),
            low=Excursion.from_json(_section(data, "low")),
            freeze=Excursion.from_json(_section(data, "freeze")),
            wrong_place=Excursion.from_json(_section(data, "wrong_place")),
            segments=segments,
            cumulative_open=_flag(data, "cumulative_open"),
            no_data_open=_flag(data, "no_data_open"),
            no_data_cause="gateway_offline" if cause == "gateway_offline" else None,
        )


@dataclass
class GatewayState:
    """What the gateway rules remember between runs (stored as jsonb, like ``CompartmentState``).

    Two watermarks: ``watermark`` for the telemetry (power, battery, signal) and
    ``online_watermark`` for the online flag. A gateway announces itself online with the time of
    connecting before it uploads what it buffered: with one watermark, that announcement made every
    buffered status "older than already seen" and the hours of weak signal in them were never
    judged (the demo's back-fill showed it)."""

    watermark: datetime | None = None
    last_heard: datetime | None = None
    last_online: bool | None = None
    online_watermark: datetime | None = None
    offline: Excursion = field(default_factory=Excursion)
    power: Excursion = field(default_factory=Excursion)
    battery_low: Excursion = field(default_factory=Excursion)
    signal: Excursion = field(default_factory=Excursion)

    def to_json(self) -> dict[str, Any]:
        return {
            "version": STATE_VERSION,
            "watermark": _iso(self.watermark),
            "last_heard": _iso(self.last_heard),
            "last_online": self.last_online,
            "online_watermark": _iso(self.online_watermark),
            "offline": self.offline.to_json(),
            "power": self.power.to_json(),
            "battery_low": self.battery_low.to_json(),
            "signal": self.signal.to_json(),
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> GatewayState:
        online = data.get("last_online")
        checks.require(online is None or isinstance(online, bool), f"规则状态字段 last_online 无效：{online!r}")
        return cls(
            watermark=_dt(data, "watermark"),
            last_heard=_dt(data, "last_heard"),
            last_online=online,
            # States written before the two watermarks were split had one for both.
            online_watermark=_dt(data, "online_watermark") if "online_watermark" in data else _dt(data, "watermark"),
            offline=Excursion.from_json(_section(data, "offline")),
            power=Excursion.from_json(_section(data, "power")),
            battery_low=Excursion.from_json(_section(data, "battery_low")),
            signal=Excursion.from_json(_section(data, "signal")),
        )
