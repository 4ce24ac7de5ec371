"""Stock leaving a unit — to another unit, or to scrap — booked at once when the rules allow it, else
opened as a request for the unit the rules name (:func:`inventory.rules.transfer_route`,
:func:`inventory.rules.scrap_route`).

Why apart from :mod:`inventory.transfers` and :mod:`inventory.requests`: choosing between the two
needs both, and an approved request ships through the transfers module itself.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

import psycopg

from inventory.posting import load_node, post
from inventory.requests import open_request
from inventory.rules import scrap_route, transfer_route
from inventory.transfers import ship


def transfer_directly(
    conn: psycopg.Connection,
    user_id: int,
    src: int,
    dst: int,
    lot_id: int,
    quantity: int,
    occurred_at: datetime,
    *,
    codes: Sequence[str] = (),
    vehicle_compartment_id: int | None = None,
    note: str | None = None,
    reason: str | None = None,
) -> dict[str, Any]:
    """Ship at once when the rules allow it, else open a request for the approving unit.

    Returns ``{"transfer": …}`` or ``{"request": …}``."""
    route = transfer_route(load_node(conn, src), load_node(conn, dst))
    if route.needs_approval:
        assert route.approver is not None
        return {
            "request": open_request(
                conn, user_id, route.kind, src, dst, lot_id, quantity, route.approver, reason or note
            )
        }
    return {
        "transfer": ship(
            conn,
            user_id,
            route.kind,
            src,
            dst,
            lot_id,
            quantity,
            occurred_at,
            codes=codes,
            vehicle_compartment_id=vehicle_compartment_id,
            note=note,
        )
    }


def request_scrap(
    conn: psycopg.Connection,
    user_id: int,
    unit_id: int,
    lot_id: int,
    quantity: int,
    reason: str,
    note: str | None,
    occurred_at: datetime,
) -> dict[str, Any]:
    """Scrap with approval (VT10), or booked at once by the province, which has no level above.

    Returns ``{"movement": …}`` or ``{"request": …}``."""
    route = scrap_route(load_node(conn, unit_id))
    if route.approver is None:
        return {
            "movement": post(conn, "scrap", unit_id, lot_id, -quantity, occurred_at, user_id, reason=reason, note=note)
        }
    text = reason if not note else f"{reason}：{note}"
    return {"request": open_request(conn, user_id, "scrap", unit_id, None, lot_id, quantity, route.approver, text)}
