"""Monitoring hardware (CM4): gateways and probes, supplied by the province and kept by the units,
and the warranty ends a unit plans repairs by (inside the warranty they are free).

Gateways and probes have the same columns and rules, so one set of queries serves both tables.
Hardware with no unit is the province's stock, visible to the province only.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

import psycopg

from coldchain.core.db import fetch_all, fetch_one, set_action, update_versioned
from coldchain.core.sqlparts import Filters
from registry.permissions import UnitRef
from registry.units import in_scope_or_unassigned

HardwareTable = Literal["gateways", "probes"]
HARDWARE_NAMES: dict[HardwareTable, str] = {"gateways": "网关", "probes": "探头"}

_COLUMNS = """
h.id, h.serial, h.unit_id, n.name AS unit_name, h.vendor, h.model, h.installed_on, h.warranty_end, h.status, h.version
"""
# ``table`` is one of two literals, never input.
_ONE: dict[HardwareTable, str] = {
    table: f"SELECT {_COLUMNS} FROM {table} h LEFT JOIN units n ON n.id = h.unit_id WHERE {{where}}"  # noqa: S608
    for table in HARDWARE_NAMES
}
_LIST: dict[HardwareTable, str] = {
    table: f"{_ONE[table]} ORDER BY h.serial LIMIT %(limit)s OFFSET %(offset)s" for table in HARDWARE_NAMES
}
_INSERT: dict[HardwareTable, str] = {
    table: f"""INSERT INTO {table} (serial, unit_id, vendor, model, installed_on, warranty_end, status)
               VALUES (%(serial)s, %(unit_id)s, %(vendor)s, %(model)s, %(installed_on)s, %(warranty_end)s,
                       %(status)s) RETURNING id"""  # noqa: S608
    for table in HARDWARE_NAMES
}
_WARRANTIES = """
SELECT kind, h.id, h.serial, h.unit_id, n.name AS unit_name, h.vendor, h.model, h.warranty_end,
       h.warranty_end - %(today)s AS days_left
FROM (SELECT 'gateway' AS kind, id, serial, unit_id, vendor, model, warranty_end, status FROM gateways
      UNION ALL
      SELECT 'probe', id, serial, unit_id, vendor, model, warranty_end, status FROM probes) h
LEFT JOIN units n ON n.id = h.unit_id
WHERE {where}
ORDER BY h.warranty_end, kind, h.serial
LIMIT %(limit)s
"""


def list_hardware(
    conn: psycopg.Connection,
    table: HardwareTable,
    scope: UnitRef,
    *,
    unit_id: int | None,
    status: str | None,
    serial: str | None,
    limit: int,
    offset: int,
) -> list[dict[str, Any]]:
    """The gateways or probes of the jurisdiction of ``scope``, by serial."""
    f = Filters({"scope": scope.id, "limit": limit, "offset": offset}, in_scope_or_unassigned("h.unit_id", scope))
    f.eq("h.unit_id", "unit", unit_id).eq("h.status", "status", status).eq("h.serial", "serial", serial)
    return fetch_all(conn, f.query(_LIST[table]), f.params)


def get_hardware(conn: psycopg.Connection, table: HardwareTable, scope: UnitRef, item_id: int) -> dict[str, Any] | None:
    """One gateway or probe of the jurisdiction; None outside it or when there is none."""
    f = Filters({"scope": scope.id}, in_scope_or_unassigned("h.unit_id", scope)).eq("h.id", "id", item_id)
    return fetch_one(conn, f.query(_ONE[table]), f.params)


def create_hardware(conn: psycopg.Connection, table: HardwareTable, fields: Mapping[str, Any]) -> int:
    """Register a gateway or probe (unit None: the province's stock); its id."""
    set_action(conn, f"{table}.create")
    row = fetch_one(conn, _INSERT[table], fields)
    assert row is not None
    return int(row["id"])


def update_hardware(
    conn: psycopg.Connection, table: HardwareTable, item_id: int, version: int, changes: Mapping[str, Any]
) -> None:
    """Vendor, model, installation and warranty, at the version the client read (409 otherwise)."""
    set_action(conn, f"{table}.update")
    update_versioned(conn, table, item_id, version, changes, HARDWARE_NAMES[table])


def warranties(
    conn: psycopg.Connection, scope: UnitRef, *, days: int, unit_id: int | None, limit: int
) -> list[dict[str, Any]]:
    """Hardware in use or in stock whose warranty ends within ``days`` of today (Beijing), soonest
    first; ``unit_id`` narrows to that unit and the units below it."""
    row = conn.execute("SELECT (now() AT TIME ZONE 'Asia/Shanghai')::date").fetchone()
    assert row is not None
    f = Filters(
        {"scope": scope.id, "today": row[0], "days": days, "limit": limit},
        in_scope_or_unassigned("h.unit_id", scope),
        "h.status <> 'decommissioned'",
        "h.warranty_end BETWEEN %(today)s AND %(today)s + %(days)s",
    )
    f.in_subtree("h.unit_id", "unit", unit_id)
    return fetch_all(conn, f.query(_WARRANTIES), f.params)
