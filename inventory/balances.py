"""Stock on hand (VT9): the balances ``cc_post_movement`` keeps per unit and lot, read for the API
list, for the stock page (near expiry, doses by level) and for the stock-level analysis.

Every figure is filtered and summed in SQL over the jurisdiction asked for, never fetched
wholesale and filtered in Python: a province holds tens of thousands of balances, and a list
that silently stopped at a page size would under-report stock.
"""

from __future__ import annotations

from datetime import date
from typing import Any

import psycopg

from coldchain.core.db import fetch_all
from coldchain.core.sqlparts import Filters, in_scope

_BALANCES = """
SELECT b.unit_id, u.name AS unit_name, u.level AS unit_level, b.lot_id, l.lot_no, l.expiry_date,
       l.spec_id, v.name AS vaccine_name, s.spec, v.programme, b.on_hand, b.reserved,
       b.on_hand - b.reserved AS available, b.on_hand * s.doses_per_vial AS doses
FROM stock_balances b JOIN units u ON u.id = b.unit_id JOIN lots l ON l.id = b.lot_id
JOIN vaccine_specs s ON s.id = l.spec_id JOIN vaccines v ON v.id = s.vaccine_id
WHERE {where}
ORDER BY u.code, v.name, l.expiry_date, l.id
"""


def _conditions(scope: int, *, include_zero: bool) -> Filters:
    always = [in_scope("b.unit_id")] + ([] if include_zero else ["b.on_hand > 0"])
    return Filters({"scope": scope}, *always)


def list_balances(
    conn: psycopg.Connection,
    scope: int,
    *,
    unit_id: int | None,
    spec_id: int | None,
    lot_id: int | None,
    expires_before: date | None,
    include_zero: bool,
    limit: int,
    offset: int,
) -> list[dict[str, Any]]:
    """One page of balances in the jurisdiction of ``scope``, by unit, vaccine and expiry."""
    where = (
        _conditions(scope, include_zero=include_zero)
        .eq("b.unit_id", "unit", unit_id)
        .eq("l.spec_id", "spec", spec_id)
        .eq("b.lot_id", "lot", lot_id)
        .before("l.expiry_date", "before", expires_before)
    )
    where.params |= {"limit": limit, "offset": offset}
    return fetch_all(conn, where.query(_BALANCES + " LIMIT %(limit)s OFFSET %(offset)s"), where.params)


def expiring(conn: psycopg.Connection, unit: int, before: date) -> list[dict[str, Any]]:
    """Every balance still in stock in ``unit``'s subtree whose lot expires before ``before``: all of
    them, for a page that must not miss one."""
    where = _conditions(unit, include_zero=False).before("l.expiry_date", "before", before)
    return fetch_all(conn, where.query(_BALANCES), where.params)


_BY_LEVEL = f"""
SELECT u.level, v.name AS vaccine_name, s.spec, sum(b.on_hand)::int AS vials,
       sum(b.on_hand * s.doses_per_vial)::int AS doses
FROM stock_balances b JOIN units u ON u.id = b.unit_id JOIN lots l ON l.id = b.lot_id
JOIN vaccine_specs s ON s.id = l.spec_id JOIN vaccines v ON v.id = s.vaccine_id
WHERE {in_scope("b.unit_id")} AND b.on_hand > 0
GROUP BY 1, 2, 3
"""  # noqa: S608 — constant fragment


def by_level(conn: psycopg.Connection, unit: int) -> list[dict[str, Any]]:
    """Vials and doses per unit level and vaccine specification in ``unit``'s subtree."""
    return fetch_all(conn, _BY_LEVEL, {"scope": unit})


_BY_UNIT_SPEC = f"""
SELECT b.unit_id, u.name AS unit_name, u.level AS unit_level, l.spec_id, v.name AS vaccine_name, s.spec,
       sum(b.on_hand)::int AS on_hand
FROM stock_balances b JOIN units u ON u.id = b.unit_id JOIN lots l ON l.id = b.lot_id
JOIN vaccine_specs s ON s.id = l.spec_id JOIN vaccines v ON v.id = s.vaccine_id
WHERE {in_scope("b.unit_id")}
GROUP BY 1, 2, 3, 4, 5, 6
"""  # noqa: S608 — constant fragment


def by_unit_and_spec(conn: psycopg.Connection, scope: int) -> list[dict[str, Any]]:
    """Vials on hand per unit and vaccine specification (all lots together) in the jurisdiction."""
    return fetch_all(conn, _BY_UNIT_SPEC, {"scope": scope})
