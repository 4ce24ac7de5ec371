"""The parameters of one compartment's rules: the registry's mode and limits, the defaults, and
the overrides people set per compartment (``PUT /compartments/{id}/alarm-params``).

Why validated here, on construction: overrides come from a jsonb column edited by people, and a
nonsense value (a negative hold, a hysteresis wider than the range) must be refused with a Chinese
message when it is saved, never run as a broken rule.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, cast

from alarms.rules import checks, defaults
from alarms.rules.kinds import Mode


@dataclass(frozen=True)
class RuleParams:
    """The rule parameters of one compartment; defaults and their sources are in ``DEFAULTS``.

    Validated on construction so a nonsense override never reaches the rules (ValueError, Chinese
    message, shown to the user who set it).
    """

    mode: Mode
    t_min: float | None
    t_max: float
    delay: timedelta = defaults.DELAY
    freeze_threshold: float = defaults.FREEZE_THRESHOLD
    freeze_delay: timedelta = defaults.FREEZE_DELAY
    cumulative_limit: timedelta = defaults.CUMULATIVE_LIMIT
    cumulative_window: timedelta = defaults.CUMULATIVE_WINDOW
    hysteresis: float = defaults.HYSTERESIS
    hold: timedelta = defaults.HOLD
    no_data_after: timedelta = defaults.NO_DATA_AFTER
    wrong_place_after: timedelta = defaults.WRONG_PLACE_AFTER
    wrong_place_t: float | None = None
    """None: −10 ℃ for refrigerated (reading at or below), +2 ℃ for frozen (at or above)."""
    max_gap: timedelta = defaults.MAX_GAP
    worsen_step: float = defaults.WORSEN_STEP

    def __post_init__(self) -> None:
        checks.known_mode(self.mode)
        checks.finite(self.t_max, "t_max")
        if self.t_min is not None:
            checks.finite(self.t_min, "t_min")
            checks.require(self.t_min < self.t_max, f"下限 t_min（{self.t_min}）必须低于上限 t_max（{self.t_max}）")
        for name in ("delay", "freeze_delay", "hold", "wrong_place_after"):
            checks.non_negative(getattr(self, name), name)
        for name in ("cumulative_limit", "cumulative_window", "no_data_after", "max_gap"):
            checks.positive(getattr(self, name), name)
        checks.require(
            self.cumulative_limit <= self.cumulative_window,
            f"累计超限时间 cumulative_limit（{self.cumulative_limit}）不能长于累计窗口（{self.cumulative_window}）",
        )
        checks.finite(self.hysteresis, "hysteresis")
        checks.require(self.hysteresis >= 0, f"回差 hysteresis 不能为负（收到 {self.hysteresis}）")
        if self.t_min is not None:
            checks.require(
                2 * self.hysteresis <= self.t_max - self.t_min,
                f"回差 hysteresis（{self.hysteresis} ℃）过大：上下限之间只有 {self.t_max - self.t_min:g} ℃，"
                "解除高温和解除低温的区间不能重叠",
            )
        checks.finite(self.freeze_threshold, "freeze_threshold")
        if self.mode == "refrigerated" and self.t_min is not None:
            checks.require(
                self.freeze_threshold < self.t_min,
                f"冻结风险温度 freeze_threshold（{self.freeze_threshold}）必须低于下限 t_min（{self.t_min}）",
            )
        checks.finite(self.worsen_step, "worsen_step")
        checks.require(self.worsen_step > 0, f"参数 worsen_step 必须大于 0（收到 {self.worsen_step}）")
        if self.wrong_place_t is not None:
            checks.finite(self.wrong_place_t, "wrong_place_t")
        limit = self.wrong_place_limit
        if self.mode == "refrigerated":
            lowest = self.t_min if self.t_min is not None else self.t_max
            checks.require(limit < lowest, f"放错位置判定温度 wrong_place_t（{limit}）必须低于冷藏下限（{lowest}）")
        else:
            checks.require(
                limit > self.t_max, f"放错位置判定温度 wrong_place_t（{limit}）必须高于冷冻上限（{self.t_max}）"
            )

    @property
    def wrong_place_limit(self) -> float:
        """The temperature that makes this compartment's probe look like it sits in the other kind."""
        if self.wrong_place_t is not None:
            return self.wrong_place_t
        return defaults.WRONG_PLACE_REFRIGERATED if self.mode == "refrigerated" else defaults.WRONG_PLACE_FROZEN


_DURATION_FIELDS = frozenset(
    {
        "delay",
        "freeze_delay",
        "cumulative_limit",
        "cumulative_window",
        "hold",
        "no_data_after",
        "wrong_place_after",
        "max_gap",
    }
)
_FLOAT_FIELDS = frozenset({"freeze_threshold", "hysteresis", "worsen_step"})
_OPTIONAL_FLOAT_FIELDS = frozenset({"wrong_place_t"})
OVERRIDABLE: frozenset[str] = _DURATION_FIELDS | _FLOAT_FIELDS | _OPTIONAL_FLOAT_FIELDS
"""Keys ``params_for`` accepts in overrides (mode and limits come from the registry, not from here)."""

_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)\s*(d|h|m|s)")
_DURATION_UNITS = {"d": 86400.0, "h": 3600.0, "m": 60.0, "s": 1.0}
_CLOCK = re.compile(r"(?:(\d+) days?, )?(\d+):(\d{1,2}):(\d{1,2})")


def _parse_duration(name: str, value: object) -> timedelta:
    """A duration from an override: timedelta, a number of minutes, "15m" / "1h30m" / "90s" / "1d",
    or "[D day(s), ]H:MM:SS" (what ``str(timedelta)`` prints, so effective parameters read back)."""
    bad = f'参数 {name} 应为时长（分钟数，或如 "15m"、"1h30m"、"0:15:00"），收到 {value!r}'
    if isinstance(value, timedelta):
        return value
    if isinstance(value, bool):
        raise ValueError(bad)
    if isinstance(value, int | float):
        checks.require(math.isfinite(value), bad)
        return timedelta(minutes=value)
    if isinstance(value, str):
        text = value.strip().lower()
        sign = -1.0 if text.startswith("-") else 1.0
        text = text.lstrip("+-").strip()
        clock = _CLOCK.fullmatch(text)
        if clock:
            days, hours, minutes, seconds = (int(g or 0) for g in clock.groups())
            return sign * timedelta(days=days, hours=hours, minutes=minutes, seconds=seconds)
        compact = text.replace(" ", "")
        parts = _DURATION_PART.findall(compact)
        if parts and "".join(n + u for n, u in parts) == compact:
            return sign * timedelta(seconds=sum(float(n) * _DURATION_UNITS[u] for n, u in parts))
    raise ValueError(bad)


def _parse_float(name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise ValueError(f"参数 {name} 应为数值，收到 {value!r}")
    try:
        number = float(value)
    except ValueError:
        raise ValueError(f"参数 {name} 应为数值，收到 {value!r}") from None
    checks.finite(number, name)
    return number


def params_for(
    mode: str,
    t_min: float | None = None,
    t_max: float | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> RuleParams:
    """The parameters of a compartment: registry mode and limits, defaults, then its overrides.

    ``t_max`` None takes the mode's default (8 ℃ / −15 ℃). ``t_min`` None means the default +2 ℃
    for refrigerated and "no lower limit" for frozen (colder never harms frozen vaccines).
    Overrides come from a jsonb column edited by people: unknown keys and values that make no sense
    raise ValueError with a Chinese message instead of silently running with a broken rule.
    """
    checks.known_mode(mode)
    low: float | None
    if mode == "refrigerated":
        low = defaults.REFRIGERATED_T_MIN if t_min is None else t_min
        high = defaults.REFRIGERATED_T_MAX if t_max is None else t_max
    else:
        low = t_min
        high = defaults.FROZEN_T_MAX if t_max is None else t_max
    values: dict[str, Any] = {}
    for key, raw in (overrides or {}).items():
        if key in _DURATION_FIELDS:
            values[key] = _parse_duration(key, raw)
        elif key in _FLOAT_FIELDS:
            values[key] = _parse_float(key, raw)
        elif key in _OPTIONAL_FLOAT_FIELDS:
            values[key] = None if raw is None else _parse_float(key, raw)
        elif key in ("mode", "t_min", "t_max"):
            raise ValueError(f"参数 {key} 来自温区登记信息（表 1 变更），不能在报警参数里覆盖")
        elif key.startswith(("gateway.", "drift.")):
            # A gateway serves several compartments (and units): one value of its own per
            # compartment would contradict itself, so these hold for the whole system (docs/alarms.md).
            raise ValueError(
                f"参数 {key} 全系统统一（一个网关服务多个温区），不能按温区覆盖；"
                f"可按温区设置的参数：{'、'.join(sorted(OVERRIDABLE))}"
            )
        else:
            raise ValueError(f"未知的报警参数：{key}（可用：{'、'.join(sorted(OVERRIDABLE))}）")
    return RuleParams(mode=cast(Mode, mode), t_min=low, t_max=high, **values)
