"""The device contract: what gateways publish, and how a message is checked.

Pure functions over bytes; nothing here touches the broker or the database, so every rule about
bad input is tested without either. What the registry must decide (is the gateway registered?
is the probe bound at that time?) is left to :mod:`ingest.store`, which asks the database inside
the transaction that stores the batch.

Topics: ``coldchain/v1/{gateway}/telemetry`` and ``coldchain/v1/{gateway}/status``.
"""

from __future__ import annotations

import json
import math
import re
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Final

TOPIC_PREFIX: Final = "coldchain/v1/"
TELEMETRY_FILTER: Final = "coldchain/v1/+/telemetry"
STATUS_FILTER: Final = "coldchain/v1/+/status"

T_MIN: Final = -90.0
T_MAX: Final = 60.0
# A gateway clock this far ahead of ours is wrong, not early (issue #3).
MAX_FUTURE: Final = timedelta(minutes=5)
# A gateway whose real-time clock lost power reports 1970 or 2000; no cold chain ran then.
EARLIEST: Final = datetime(2015, 1, 1, tzinfo=UTC)
_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND: Final = timedelta(microseconds=1)

# Reason codes (the CHECK of ingest_dead_letters.reason) with the text a person reads.
REASONS: Final[dict[str, str]] = {
    "bad_topic": "主题不符合 coldchain/v1/{网关号}/telemetry 或 /status",
    "bad_json": "消息不是有效的 UTF-8 JSON 对象",
    "bad_message": "消息结构不符合设备协议",
    "bad_ts": "时间戳缺失或无效（应为带时区的 RFC 3339 或毫秒级 Unix 时间）",
    "future_ts": "时间戳超前接收时刻 5 分钟以上",
    "missing_t": "读数缺少温度 t",
    "bad_t": "温度 t 不是数值",
    "out_of_range": "温度超出 −90…+60 ℃ 的可能范围",
    "bad_probe": "读数缺少探头编码 probe 或编码格式无效",
    "bad_field": "可选字段无效，已忽略该字段",
    "unknown_gateway": "网关号未登记",
    "db_rejected": "数据库拒绝了该消息",
}

# (probe serial, ts in µs since the epoch, t, rh, bat)
Reading = tuple[str, int, float, float | None, float | None]


@dataclass(frozen=True, slots=True)
class Problem:
    """One thing wrong with a message; ``reading`` is the index in ``readings``, None for the whole."""

    reason: str
    reading: int | None = None
    detail: str = ""

    def as_json(self) -> dict[str, Any]:
        return {"reason": self.reason, "reading": self.reading, "message": REASONS[self.reason], "detail": self.detail}


@dataclass(frozen=True, slots=True)
class GatewayStatus:
    ts_us: int
    online: bool | None
    power: str | None = None
    battery: float | None = None
    rssi: int | None = None


@dataclass(slots=True)
class Parsed:
    """A message after checking: what may be stored, and what must go to the dead-letter table."""

    gateway: str | None
    readings: list[Reading] = field(default_factory=list)
    status: GatewayStatus | None = None
    problems: list[Problem] = field(default_factory=list)
    retained: bool = False

    @property
    def whole_rejected(self) -> bool:
        return bool(self.problems) and not self.readings and self.status is None


def split_topic(topic: str) -> tuple[str, str] | None:
    """(gateway serial, kind) for a contract topic, else None."""
    if not topic.startswith(TOPIC_PREFIX):
        return None
    rest = topic[len(TOPIC_PREFIX) :].split("/")
    if len(rest) != 2 or rest[1] not in ("telemetry", "status") or not _valid_serial(rest[0]):
        return None
    return rest[0], rest[1]


# Same rule as the registry's CHECK on gateways.serial / probes.serial.
_SERIAL: Final = re.compile(r"[0-9A-Za-z_-]{1,32}")


def _valid_serial(value: str) -> bool:
    return _SERIAL.fullmatch(value) is not None


def _to_us(dt: datetime) -> int:
    return (dt - _EPOCH) // _MICROSECOND


def from_us(us: int) -> datetime:
    return _EPOCH + timedelta(microseconds=us)


def now_us() -> int:
    return time.time_ns() // 1000


def parse_ts(value: object) -> int | None:
    """µs since the epoch from RFC 3339 with an offset or integer epoch ms; None if neither."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        us = value * 1000
    elif isinstance(value, str):
        try:
            dt = datetime.fromisoformat(value)
        except ValueError:
            return None
        if dt.tzinfo is None or dt.utcoffset() is None:
            return None  # a time without an offset is ambiguous; RFC 3339 requires one
        us = _to_us(dt)
    else:
        return None
    if not _EARLIEST_US <= us <= _LATEST_US:
        return None
    return us


_EARLIEST_US: Final = _to_us(EARLIEST)
_LATEST_US: Final = _to_us(datetime(2100, 1, 1, tzinfo=UTC))


def _number(value: object) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    f = float(value)
    return f if math.isfinite(f) else None


def parse_message(topic: str, payload: bytes, now_us: int, *, retained: bool = False) -> Parsed:
    """Check one MQTT message against the contract.

    ``now_us`` is the receipt time: the future-timestamp rule is relative to when we got it, so a
    buffered upload after an outage (old timestamps) passes and a gateway with a fast clock does not.
    """
    where = split_topic(topic)
    if where is None:
        return Parsed(None, problems=[Problem("bad_topic", detail=topic[:200])])
    gateway, kind = where
    try:
        doc = json.loads(payload)
    except (UnicodeDecodeError, ValueError) as exc:
        return Parsed(gateway, problems=[Problem("bad_json", detail=str(exc)[:200])])
    if not isinstance(doc, dict):
        return Parsed(gateway, problems=[Problem("bad_json", detail="顶层不是 JSON 对象")])
    if kind == "status":
        status = _parse_status(gateway, doc, now_us)
        status.retained = retained
        return status
    return _parse_telemetry(gateway, doc, now_us)


def _parse_status(gateway: str, doc: dict[str, Any], now_us: int) -> Parsed:
    out = Parsed(gateway)
    online = doc.get("online")
    if not isinstance(online, bool):
        out.problems.append(Problem("bad_message", detail="status 消息需要布尔字段 online"))
        return out
    ts_us = now_us
    if "ts" in doc:
        parsed = parse_ts(doc["ts"])
        if parsed is None:
            out.problems.append(Problem("bad_ts", detail=repr(doc["ts"])[:100]))
            return out
        if parsed - now_us > _MAX_FUTURE_US:
            out.problems.append(Problem("future_ts", detail=repr(doc["ts"])[:100]))
            return out
        ts_us = parsed
    # A retained "online" replayed to a new subscription is not a new event; the store skips it
    # when the gateway's latest state already says the same.
    out.status = GatewayStatus(ts_us, online)
    return out


_MAX_FUTURE_US: Final = MAX_FUTURE // _MICROSECOND


def _parse_telemetry(gateway: str, doc: dict[str, Any], now_us: int) -> Parsed:
    out = Parsed(gateway)
    problems = out.problems
    msg_ts: int | None = None
    if "ts" in doc:
        msg_ts = parse_ts(doc["ts"])
        if msg_ts is None:
            problems.append(Problem("bad_ts", detail=f"消息 ts={doc['ts']!r}"[:100]))
        elif msg_ts - now_us > _MAX_FUTURE_US:
            problems.append(Problem("future_ts", detail=f"消息 ts={doc['ts']!r}"[:100]))
            msg_ts = None
    items = doc.get("readings")
    if not isinstance(items, list):
        problems.append(Problem("bad_message", detail="缺少 readings 数组"))
        return out
    limit = now_us + _MAX_FUTURE_US
    readings = out.readings
    valid_serial = _SERIAL.fullmatch
    # The common case (a plain float t, no optional fields) takes the fewest steps: this loop runs
    # for every reading the province sends.
    for i, item in enumerate(items):
        if type(item) is not dict:
            problems.append(Problem("bad_message", i, "读数不是 JSON 对象"))
            continue
        get = item.get
        probe = get("probe")
        if type(probe) is not str or valid_serial(probe) is None:
            problems.append(Problem("bad_probe", i, repr(probe)[:60]))
            continue
        raw_ts = get("ts")
        if raw_ts is not None:
            ts = parse_ts(raw_ts)
            if ts is None:
                problems.append(Problem("bad_ts", i, f"{probe} ts={raw_ts!r}"[:100]))
                continue
            if ts > limit:
                problems.append(Problem("future_ts", i, f"{probe} ts={raw_ts!r}"[:100]))
                continue
        elif msg_ts is not None:
            ts = msg_ts
        else:
            # The message-level problem (missing/bad/future ts) is already listed once.
            if "ts" not in doc:
                problems.append(Problem("bad_ts", i, f"{probe} 无 ts，消息也无 ts"))
            continue
        raw_t = get("t")
        kind = type(raw_t)
        if kind is float or kind is int:
            t = float(raw_t)  # type: ignore[arg-type]  # int or float, checked just above
            if not T_MIN <= t <= T_MAX:  # NaN fails this too
                problems.append(
                    Problem("out_of_range" if math.isfinite(t) else "bad_t", i, f"{probe} t={raw_t!r}"[:100])
                )
                continue
        elif raw_t is None:
            problems.append(Problem("missing_t", i, probe))
            continue
        else:
            problems.append(Problem("bad_t", i, f"{probe} t={raw_t!r}"[:100]))
            continue
        if len(item) > 3 or (len(item) == 3 and raw_ts is None):
            rh = _optional(item, "rh", 0.0, 100.0, i, problems)
            bat = _optional(item, "bat", 0.0, 100.0, i, problems)
            readings.append((probe, ts, t, rh, bat))
        else:
            readings.append((probe, ts, t, None, None))
    status_ts = msg_ts if msg_ts is not None else now_us
    power = doc.get("power")
    if power is not None and power not in ("ac", "battery"):
        problems.append(Problem("bad_field", None, f"power={power!r}"[:60]))
        power = None
    battery = _optional(doc, "battery", 0.0, 100.0, None, problems)
    rssi_f = _optional(doc, "rssi", -200.0, 0.0, None, problems)
    # Telemetry arriving is itself the sign that the gateway is online.
    out.status = GatewayStatus(status_ts, True, power, battery, None if rssi_f is None else round(rssi_f))
    if not readings and problems and power is None and battery is None and rssi_f is None:
        out.status = None  # nothing of it is usable; it is kept whole in the dead-letter table
    return out


def _optional(
    doc: dict[str, Any], key: str, lo: float, hi: float, index: int | None, problems: list[Problem]
) -> float | None:
    if key not in doc or doc[key] is None:
        return None
    value = _number(doc[key])
    if value is None or not lo <= value <= hi:
        problems.append(Problem("bad_field", index, f"{key}={doc[key]!r}"[:60]))
        return None
    return value
