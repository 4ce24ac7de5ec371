"""A compartment's temperature limits, checked the same way when it is registered and when its
limits change (a pure rule: the web layer turns its ``ValueError`` into a 422)."""

from __future__ import annotations

from decimal import Decimal


def check_limits(mode: str, t_min: Decimal | None, t_max: Decimal | None) -> None:
    """Raise ``ValueError`` (Chinese) unless the limits make a band: a refrigerated compartment
    needs a lower limit, and the lower limit must lie below the upper."""
    if mode == "refrigerated" and t_max is not None and t_min is None:
        raise ValueError("冷藏温区必须有温度下限")
    if t_min is not None and t_max is not None and t_min >= t_max:
        raise ValueError("温度下限必须低于上限")
