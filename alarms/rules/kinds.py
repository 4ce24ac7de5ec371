"""What an alarm can be about: the kinds, their severities and their Chinese names.

Why a module of its own: the names are read far from the rules — notifications, pages, the
monthly report, the series API — and those readers need the vocabulary, not the state machines.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import Literal, TypeAlias, get_args

Mode: TypeAlias = Literal["refrigerated", "frozen"]
Severity: TypeAlias = Literal["critical", "major", "minor"]
Kind: TypeAlias = Literal[
    "high",
    "low",
    "freeze",
    "cumulative",
    "wrong_place",
    "no_data",
    "gateway_offline",
    "gateway_power",
    "gateway_battery_low",
    "gateway_signal",
]
Cause: TypeAlias = Literal["gateway_offline"]
Power: TypeAlias = Literal["ac", "battery"]

MODES: tuple[str, ...] = get_args(Mode)
KINDS: tuple[str, ...] = get_args(Kind)

KIND_NAMES: Mapping[str, str] = MappingProxyType(
    {
        "high": "温度超上限",
        "low": "温度低于下限",
        "freeze": "冷藏冻结风险",
        "cumulative": "累计超温",
        "wrong_place": "探头位置疑似错误",
        "no_data": "探头无数据",
        "gateway_offline": "网关离线",
        "gateway_power": "网关断电（电池供电）",
        "gateway_battery_low": "网关电量低",
        "gateway_signal": "网关信号弱",
    }
)
"""Chinese label of each kind, for notifications and pages (the delivery module reads it)."""

KIND_SEVERITY: Mapping[str, Severity] = MappingProxyType(
    {
        "high": "major",
        "low": "major",
        # Freezing destroys adsorbed vaccines (HepB, DTP…) irreversibly; heat damage accumulates slowly.
        "freeze": "critical",
        "cumulative": "major",
        "wrong_place": "minor",
        "no_data": "major",
        # Every probe behind an offline gateway is blind, so this one alarm stands for all of them.
        "gateway_offline": "critical",
        "gateway_power": "major",
        "gateway_battery_low": "major",
        "gateway_signal": "minor",
    }
)

SEVERITY_NAMES: Mapping[str, str] = MappingProxyType({"critical": "紧急", "major": "重要", "minor": "一般"})
