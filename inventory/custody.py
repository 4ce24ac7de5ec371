"""Custody (VT1): who held a lot or a package from when to when, derived from the ledger's movements
as pure functions, never stored twice.

A unit holds a lot while its running balance of that lot is above zero; a package is wherever the
last movement that scanned it (or a package containing it) put it, and in transit between an issue
and its receipt. :mod:`inventory.trace` reads the movements and hands them here.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime


@dataclass(frozen=True)
class Movement:
    """A movement of the lot as custody reads it (reversed ones and reversals are left out)."""

    id: int
    kind: str
    unit_id: int
    quantity: int
    occurred_at: datetime
    transfer_id: int | None = None
    compartment_id: int | None = None


@dataclass
class Interval:
    """One stretch of custody: a unit, or a transfer in transit (``unit_id`` None)."""

    unit_id: int | None
    start: datetime
    end: datetime | None
    transfer_id: int | None = None
    compartments: set[int] = field(default_factory=set)


def lot_custody(movements: Sequence[Movement]) -> list[Interval]:
    """Per unit, the stretches during which its running balance of the lot was above zero."""
    balance: dict[int, int] = defaultdict(int)
    open_: dict[int, Interval] = {}
    out: list[Interval] = []
    for m in sorted(movements, key=lambda m: (m.occurred_at, m.id)):
        before = balance[m.unit_id]
        balance[m.unit_id] = after = before + m.quantity
        if before <= 0 < after:
            iv = Interval(m.unit_id, m.occurred_at, None)
            open_[m.unit_id] = iv
            out.append(iv)
        if m.quantity > 0 and m.compartment_id is not None and m.unit_id in open_:
            open_[m.unit_id].compartments.add(m.compartment_id)
        if before > 0 >= after:
            open_.pop(m.unit_id).end = m.occurred_at
    return out


_TO_TRANSIT = {"issue", "return"}


def code_custody(movements: Sequence[Movement], used_at: datetime | None) -> list[Interval]:
    """The path of one package, from the movements that scanned it (or a package containing it)."""
    out: list[Interval] = []
    current: Interval | None = None
    for m in sorted(movements, key=lambda m: (m.occurred_at, m.id)):
        if current is not None:
            current.end = m.occurred_at
        if m.kind in _TO_TRANSIT:
            current = Interval(None, m.occurred_at, None, transfer_id=m.transfer_id)
        else:
            current = Interval(m.unit_id, m.occurred_at, None)
            if m.compartment_id is not None:
                current.compartments.add(m.compartment_id)
        out.append(current)
    if current is not None and used_at is not None:
        current.end = used_at
    return out
