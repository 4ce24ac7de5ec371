"""Traceability (VT1, CM2): for a lot or a code, who held it from when to when
(:mod:`inventory.custody`), the temperatures of the compartments it sat in during each interval and
the minutes out of range (:mod:`inventory.exposure`), and the vaccinations it went into; for a lot,
everyone holding it now (the recall list).

Custody is derived from the ledger, never stored twice. A reversed movement and its reversal are
left out — a corrected mistake never happened.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from datetime import datetime
from typing import Any

import psycopg

from coldchain.core.db import fetch_all, fetch_one
from coldchain.core.sqlparts import Filters, in_scope
from inventory.custody import Interval, Movement, code_custody, lot_custody
from inventory.exposure import Segment, segments_of, temperatures

# ---------------------------------------------------------------------------------------------
# Reading the ledger

_LOT_MOVES = """
SELECT m.id, m.kind, m.unit_id, m.quantity, m.occurred_at, m.transfer_id, m.compartment_id
FROM stock_movements m
WHERE m.lot_id = %(lot)s AND m.kind <> 'reversal'
  AND NOT EXISTS (SELECT 1 FROM stock_movements r WHERE r.reverses_id = m.id)
"""

_TRANSFERS = """
SELECT id, from_unit_id, to_unit_id, shipped_at, received_at, vehicle_compartment_id, state
FROM stock_transfers WHERE lot_id = %(lot)s AND state <> 'cancelled'
"""

_CODE_MOVES = """
WITH RECURSIVE up AS (
    SELECT code, parent_code FROM package_codes WHERE code = %(code)s
    UNION ALL
    SELECT p.code, p.parent_code FROM package_codes p JOIN up ON p.code = up.parent_code
)
SELECT DISTINCT m.id, m.kind, m.unit_id, m.quantity, m.occurred_at, m.transfer_id, m.compartment_id
FROM up JOIN movement_codes mc ON mc.code = up.code JOIN stock_movements m ON m.id = mc.movement_id
WHERE m.kind <> 'reversal' AND NOT EXISTS (SELECT 1 FROM stock_movements r WHERE r.reverses_id = m.id)
"""


def _movements(rows: Iterable[dict[str, Any]]) -> list[Movement]:
    return [Movement(**r) for r in rows]


def _transit_intervals(transfers: Iterable[dict[str, Any]]) -> list[Interval]:
    return [
        Interval(
            None,
            t["shipped_at"],
            t["received_at"],
            transfer_id=t["id"],
            compartments={t["vehicle_compartment_id"]} if t["vehicle_compartment_id"] else set(),
        )
        for t in transfers
    ]


# ---------------------------------------------------------------------------------------------
# The whole trace

_UNITS = "SELECT id, name, code, level, phone FROM units WHERE id = ANY(%(ids)s)"
_COMPARTMENTS = """
SELECT c.id, c.name, c.t_min::float8 AS t_min, c.t_max::float8 AS t_max, e.name AS equipment_name, e.unit_id
FROM compartments c JOIN equipment e ON e.id = c.equipment_id WHERE c.id = ANY(%(ids)s)
"""
_VACCINATIONS = """
SELECT v.id, v.unit_id, u.name AS unit_name, v.code, v.vaccinated_at, v.vaccinee_ref, v.dose_no
FROM vaccinations v JOIN units u ON u.id = v.unit_id
WHERE {where}
ORDER BY v.vaccinated_at, v.id
LIMIT %(limit)s
"""
_VACCINATIONS_TOTAL = "SELECT count(*) AS n FROM vaccinations v WHERE {where}"
_HOLDERS = f"""
SELECT b.unit_id, u.name AS unit_name, u.code AS unit_code, u.phone, b.on_hand, b.reserved, NULL::bigint AS transfer_id
FROM stock_balances b JOIN units u ON u.id = b.unit_id
WHERE b.lot_id = %(lot)s AND b.on_hand > 0 AND {in_scope("b.unit_id")}
UNION ALL
SELECT t.to_unit_id, u.name, u.code, u.phone, t.quantity, 0, t.id
FROM stock_transfers t JOIN units u ON u.id = t.to_unit_id
WHERE t.lot_id = %(lot)s AND t.state = 'in_transit'
  AND ({in_scope("t.to_unit_id")} OR {in_scope("t.from_unit_id")})
ORDER BY 2
"""  # noqa: S608 — constant fragments


def recall_list(conn: psycopg.Connection, lot_id: int, scope_unit: int) -> list[dict[str, Any]]:
    """Everyone who holds the lot now, in transit included (as the receiving unit)."""
    return fetch_all(conn, _HOLDERS, {"lot": lot_id, "scope": scope_unit})


def build_trace(
    conn: psycopg.Connection,
    lot: dict[str, Any],
    intervals: list[Interval],
    transfers: dict[int, dict[str, Any]],
    scope_unit: int,
    now: datetime,
    *,
    code: str | None = None,
    vaccination_limit: int = 1000,
) -> dict[str, Any]:
    """The custody chain with each link's storage temperatures, and the vaccinations of the lot
    (or of one code) in the jurisdiction of ``scope_unit``, at most ``vaccination_limit`` of them."""
    parts = segments_of(conn, intervals, lot["storage_mode"], now)
    comp_rows = {r["id"]: r for r in fetch_all(conn, _COMPARTMENTS, {"ids": sorted({s.compartment_id for s in parts})})}
    temps = temperatures(conn, parts)
    unit_ids = sorted({iv.unit_id for iv in intervals if iv.unit_id is not None})
    units = {r["id"]: r for r in fetch_all(conn, _UNITS, {"ids": unit_ids})}
    by_interval: dict[int, list[Segment]] = defaultdict(list)
    for s in parts:
        by_interval[id(s.interval)].append(s)
    chain = []
    for iv in sorted(intervals, key=lambda iv: (iv.start, iv.unit_id or 0)):
        t = transfers.get(iv.transfer_id) if iv.transfer_id else None
        stores = []
        for s in by_interval[id(iv)]:
            c = comp_rows[s.compartment_id]
            stores.append(
                {
                    "compartment_id": s.compartment_id,
                    "compartment_name": c["name"],
                    "equipment_name": c["equipment_name"],
                    "t_min": c["t_min"],
                    "t_max": c["t_max"],
                    "assumed": s.compartment_id not in iv.compartments,
                    **temps[s.key],
                }
            )
        chain.append(
            {
                "state": "in_transit" if iv.unit_id is None else "held",
                "unit_id": iv.unit_id,
                "unit_name": units[iv.unit_id]["name"] if iv.unit_id is not None else None,
                "transfer_id": iv.transfer_id,
                "from_unit_id": t["from_unit_id"] if t else None,
                "to_unit_id": t["to_unit_id"] if t else None,
                "start": iv.start,
                "end": iv.end,
                "minutes_out_of_range": sum(s["minutes_out_of_range"] for s in stores),
                "storage": stores,
            }
        )
    where = Filters({"lot": lot["id"], "scope": scope_unit}, "v.lot_id = %(lot)s", in_scope("v.unit_id"))
    where.eq("v.code", "code", code)
    vaccinations = fetch_all(conn, where.query(_VACCINATIONS), where.params | {"limit": vaccination_limit + 1})
    total = fetch_one(conn, where.query(_VACCINATIONS_TOTAL), where.params)
    return {
        "custody": chain,
        "minutes_out_of_range": sum(c["minutes_out_of_range"] for c in chain),
        "vaccinations": vaccinations[:vaccination_limit],
        "vaccinations_total": total["n"] if total else 0,
    }


def trace_lot(conn: psycopg.Connection, lot: dict[str, Any], scope_unit: int, now: datetime) -> dict[str, Any]:
    """The whole trace of a lot: held and in-transit links, vaccinations, and the recall list."""
    transfers = _transfers(conn, lot["id"])
    intervals = lot_custody(_movements(fetch_all(conn, _LOT_MOVES, {"lot": lot["id"]})))
    intervals += _transit_intervals(transfers.values())
    out = build_trace(conn, lot, intervals, transfers, scope_unit, now)
    out["holders"] = recall_list(conn, lot["id"], scope_unit)
    return out


def trace_code(
    conn: psycopg.Connection, lot: dict[str, Any], code: dict[str, Any], scope_unit: int, now: datetime
) -> dict[str, Any]:
    """The trace of one package (``code``, its ``package_codes`` row): the links of the movements
    that scanned it or a package containing it, with the vehicle it rode in while in transit."""
    moves = _movements(fetch_all(conn, _CODE_MOVES, {"code": code["code"]}))
    intervals = code_custody(moves, code["used_at"])
    transfers = _transfers(conn, lot["id"])
    for iv in intervals:
        vehicle = transfers[iv.transfer_id]["vehicle_compartment_id"] if iv.transfer_id in transfers else None
        if vehicle:
            iv.compartments.add(vehicle)
    return build_trace(conn, lot, intervals, transfers, scope_unit, now, code=code["code"])


def _transfers(conn: psycopg.Connection, lot_id: int) -> dict[int, dict[str, Any]]:
    """The lot's transfers (cancelled ones left out), read once per trace."""
    return {t["id"]: t for t in fetch_all(conn, _TRANSFERS, {"lot": lot_id})}


def access_allowed(conn: psycopg.Connection, lot_id: int, scope_unit: int) -> bool:
    """A lot's whole chain is shown to anyone whose jurisdiction held it: its quality depends on
    every link, upstream included (VT1). Vaccinations and holders stay scoped."""
    row = fetch_one(
        conn,
        f"SELECT 1 FROM stock_balances WHERE lot_id = %(lot)s AND {in_scope('unit_id')} LIMIT 1",  # noqa: S608
        {"lot": lot_id, "scope": scope_unit},
    )
    return row is not None
