"""The checks every rule input goes through, raising ``ValueError`` with a Chinese message.

Why: parameters and stored states come from people and from jsonb rows; a nonsense value must be
refused with a message the person who set it can act on, never run as a broken rule. One set of
checks keeps those messages worded alike across parameters, gateway settings, drift and state.
"""

from __future__ import annotations

import math
from datetime import timedelta

from alarms.rules.kinds import MODES


def require(ok: bool, message: str) -> None:
    if not ok:
        raise ValueError(message)


def finite(value: float, name: str) -> None:
    require(math.isfinite(value), f"参数 {name} 必须是有限数值，收到 {value!r}")


def non_negative(value: timedelta, name: str) -> None:
    require(value >= timedelta(0), f"参数 {name} 不能为负（收到 {value}）")


def positive(value: timedelta, name: str) -> None:
    require(value > timedelta(0), f"参数 {name} 必须大于 0（收到 {value}）")


def known_mode(mode: str) -> None:
    """Refrigerated or frozen: the two kinds of compartment the rules know."""
    require(mode in MODES, f"温区模式只能是 refrigerated（冷藏）或 frozen（冷冻），收到 {mode!r}")
