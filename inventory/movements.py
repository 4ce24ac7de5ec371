"""Reading the ledger's movements back (VT6): as booked, with the names of the unit, lot, vaccine
and counterparty, and the reversal that undid each, if any.

Movements are written only through :func:`inventory.posting.post`; this is their read side.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import psycopg

from coldchain.core.db import fetch_all, fetch_one
from coldchain.core.sqlparts import Filters, in_scope

_MOVES = """
SELECT m.id, m.doc_no, m.kind, m.unit_id, u.name AS unit_name, m.lot_id, l.lot_no, v.name AS vaccine_name,
       m.quantity, m.occurred_at, m.posted_at, m.posted_by, m.counterparty_unit_id, cu.name AS counterparty_name,
       m.supplier, m.transfer_id, m.request_id, m.compartment_id, m.reason, m.note, m.reverses_id,
       (SELECT r.id FROM stock_movements r WHERE r.reverses_id = m.id) AS reversed_by
FROM stock_movements m JOIN units u ON u.id = m.unit_id JOIN lots l ON l.id = m.lot_id
JOIN vaccine_specs s ON s.id = l.spec_id JOIN vaccines v ON v.id = s.vaccine_id
LEFT JOIN units cu ON cu.id = m.counterparty_unit_id
"""


def by_ids(conn: psycopg.Connection, ids: list[int]) -> list[dict[str, Any]]:
    """The movements just booked, in the order booked."""
    return fetch_all(conn, _MOVES + " WHERE m.id = ANY(%(ids)s) ORDER BY m.id", {"ids": ids})


def list_movements(
    conn: psycopg.Connection,
    scope: int,
    *,
    unit_id: int | None,
    lot_id: int | None,
    kind: str | None,
    since: datetime | None,
    until: datetime | None,
    limit: int,
    offset: int,
) -> list[dict[str, Any]]:
    """Movements of units in the jurisdiction of ``scope``, in time order, filtered by what is given."""
    where = (
        Filters({"scope": scope, "limit": limit, "offset": offset}, in_scope("m.unit_id"))
        .eq("m.unit_id", "unit", unit_id)
        .eq("m.lot_id", "lot", lot_id)
        .eq("m.kind", "kind", kind)
        .at_least("m.occurred_at", "since", since)
        .before("m.occurred_at", "until", until)
    )
    return fetch_all(
        conn,
        where.query(_MOVES + " WHERE {where} ORDER BY m.occurred_at, m.id LIMIT %(limit)s OFFSET %(offset)s"),
        where.params,
    )


def movement(conn: psycopg.Connection, scope: int, movement_id: int) -> dict[str, Any] | None:
    """One movement, if its unit is in the jurisdiction of ``scope``."""
    return fetch_one(
        conn,
        _MOVES + f" WHERE m.id = %(id)s AND {in_scope('m.unit_id')}",
        {"id": movement_id, "scope": scope},
    )


def unit_of(conn: psycopg.Connection, movement_id: int) -> int | None:
    """The unit whose books a movement is in (None: no such movement)."""
    row = fetch_one(conn, "SELECT unit_id FROM stock_movements WHERE id = %(id)s", {"id": movement_id})
    return None if row is None else int(row["unit_id"])
