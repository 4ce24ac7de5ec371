"""Stock analyses (VT9, VT11) as pure functions: months of stock against usage, and the monthly
wastage coefficient against the national reference.

Months of stock = stock on hand ÷ average monthly outflow over the look-back months. Outflow is what
leaves the unit for use: vaccination usage at a site, issues to other units at a CDC (returns and
scrap are not demand). The plan asks for "too much or too little" without numbers; the defaults
below (more than 3 months is overstock, less than 0.5 month a shortage) follow the common practice of
a one-to-two-month county buffer with a monthly supply cycle, and are parameters of the API.

Wastage coefficient (损耗系数) = doses consumed ÷ doses administered, where doses consumed = vials
used × doses per vial. 1.00 is no wastage; the national recommended value per product (e.g. 1.05 for
single-dose vials, higher for multi-dose vials) is the ceiling. Below 1.00 is impossible and points
at missing usage bookings or vaccinations recorded against the wrong lot: flagged as a data error.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

OVERSTOCK_MONTHS = 3.0
SHORTAGE_MONTHS = 0.5

StockStatus = Literal["shortage", "normal", "overstock", "idle", "empty"]
WastageFlag = Literal["normal", "over_reference", "below_one", "no_vaccinations", "used_without_vaccinations"]


@dataclass(frozen=True)
class StockFinding:
    months: float | None
    status: StockStatus


def stock_status(
    on_hand: int, monthly_outflow: float, *, low: float = SHORTAGE_MONTHS, high: float = OVERSTOCK_MONTHS
) -> StockFinding:
    """``idle``: stock but no outflow at all in the look-back (nothing to divide by — and a finding
    of its own); ``empty``: neither stock nor outflow."""
    if monthly_outflow <= 0:
        return StockFinding(None, "idle" if on_hand > 0 else "empty")
    months = on_hand / monthly_outflow
    if months < low:
        return StockFinding(months, "shortage")
    if months > high:
        return StockFinding(months, "overstock")
    return StockFinding(months, "normal")


@dataclass(frozen=True)
class Wastage:
    coefficient: float | None
    flag: WastageFlag


def wastage(vials_used: int, doses_per_vial: int, doses_administered: int, reference: float) -> Wastage:
    if doses_administered == 0:
        return Wastage(None, "used_without_vaccinations" if vials_used > 0 else "no_vaccinations")
    coefficient = vials_used * doses_per_vial / doses_administered
    # Compared at the reference's own precision (two decimals): 1.0500001 is 1.05, not over it.
    rounded = round(coefficient, 2)
    if rounded < 1.0:
        return Wastage(coefficient, "below_one")
    if rounded > reference:
        return Wastage(coefficient, "over_reference")
    return Wastage(coefficient, "normal")
