"""Receipts from suppliers (VT6): stock enters the province's tree only here, at a CDC, by lot or
by scanned package, put into one of the unit's own compartments.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import psycopg

from inventory import packages
from inventory.lots import load_lot
from inventory.packages import Package
from inventory.posting import beijing_day, check_compartment, load_node, post
from inventory.rules import check_not_expired, check_receipt_unit


@dataclass
class ReceiptLine:
    """One lot received: how many vials, into which compartment, and the scanned packages if any."""

    lot_id: int
    quantity: int
    compartment_id: int | None = None
    packages: list[Package] = field(default_factory=list)


def receive(
    conn: psycopg.Connection,
    user_id: int,
    unit_id: int,
    lines: Sequence[ReceiptLine],
    occurred_at: datetime,
    supplier: str,
    note: str | None = None,
) -> list[dict[str, Any]]:
    """One receipt movement per line; scanned packages are registered to the unit with it."""
    check_receipt_unit(load_node(conn, unit_id))
    out = []
    for line in lines:
        lot = load_lot(conn, line.lot_id)
        check_not_expired("receipt", lot["expiry_date"], beijing_day(occurred_at))
        check_compartment(conn, line.compartment_id, unit_id, lot["storage_mode"])
        m = post(
            conn,
            "receipt",
            unit_id,
            line.lot_id,
            line.quantity,
            occurred_at,
            user_id,
            supplier=supplier,
            compartment=line.compartment_id,
            note=note,
        )
        if line.packages:
            packages.register(conn, line.packages, lot, line.quantity, unit_id, m["id"])
        out.append(m)
    return out
