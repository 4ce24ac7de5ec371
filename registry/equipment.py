"""Cold-chain equipment (fridges, freezers, cold rooms, vehicles) and their compartments, with each
compartment's limits and the probe bound to it now.

Every read carries the jurisdiction condition itself, so an id outside it is simply not found.
Renaming a device and binding probes are not here: they go through Forms 1 and 3 (CM5, CM11).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import psycopg

from coldchain.core.db import fetch_all, fetch_one, set_action, update_versioned
from coldchain.core.sqlparts import Filters, in_scope
from registry.permissions import UnitRef

_COMPARTMENT_COLUMNS = """
c.id, c.equipment_id, c.name, c.mode, c.t_min::float8 AS t_min, c.t_max::float8 AS t_max, c.status,
p.id AS probe_id, p.serial AS probe_serial, g.serial AS gateway_serial, b.valid_from AS bound_since, c.version
"""
_CURRENT_PROBE = """
LEFT JOIN probe_bindings_current b ON b.compartment_id = c.id
LEFT JOIN probes p ON p.id = b.probe_id
LEFT JOIN gateways g ON g.id = b.gateway_id
"""
_COMPARTMENTS = f"""
SELECT {_COMPARTMENT_COLUMNS} FROM compartments c {_CURRENT_PROBE}
WHERE c.equipment_id = ANY(%(ids)s)
ORDER BY c.equipment_id, c.id
"""  # noqa: S608 — constant SQL fragments, parameters bound
_COMPARTMENT_ONE = f"""
SELECT {_COMPARTMENT_COLUMNS} FROM compartments c JOIN equipment e ON e.id = c.equipment_id {_CURRENT_PROBE}
WHERE c.id = %(id)s AND {in_scope("e.unit_id")}
"""  # noqa: S608 — constant SQL fragments, parameters bound

_EQUIPMENT_COLUMNS = """
e.id, e.unit_id, n.name AS unit_name, e.kind, e.name, e.brand, e.model, e.asset_no, e.plate_no, e.status,
e.commissioned_on, e.decommissioned_at, e.version
"""
_EQUIPMENT_FROM = "equipment e JOIN units n ON n.id = e.unit_id"
_EQUIPMENT_LIST = f"""
SELECT {_EQUIPMENT_COLUMNS} FROM {_EQUIPMENT_FROM} WHERE {{where}}
ORDER BY n.code, e.id LIMIT %(limit)s OFFSET %(offset)s
"""  # noqa: S608 — constant SQL fragments, parameters bound
_EQUIPMENT_ONE = f"""
SELECT {_EQUIPMENT_COLUMNS} FROM {_EQUIPMENT_FROM} WHERE e.id = %(id)s AND {in_scope("e.unit_id")}
"""  # noqa: S608 — constant SQL fragments, parameters bound

_INSERT_EQUIPMENT = """
INSERT INTO equipment (unit_id, kind, name, brand, model, asset_no, plate_no, commissioned_on)
VALUES (%(unit_id)s, %(kind)s, %(name)s, %(brand)s, %(model)s, %(asset_no)s, %(plate_no)s, %(commissioned_on)s)
RETURNING id
"""
_INSERT_COMPARTMENT = """
INSERT INTO compartments (equipment_id, name, mode, t_min, t_max)
VALUES (%(eq)s, %(name)s, %(mode)s, %(t_min)s, %(t_max)s)
"""


def _with_compartments(conn: psycopg.Connection, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    by_id = {r["id"]: {**r, "compartments": []} for r in rows}
    for c in fetch_all(conn, _COMPARTMENTS, {"ids": list(by_id)}):
        by_id[c["equipment_id"]]["compartments"].append(c)
    return list(by_id.values())


def list_equipment(
    conn: psycopg.Connection,
    scope: UnitRef,
    *,
    unit_id: int | None,
    status: str | None,
    kind: str | None,
    limit: int,
    offset: int,
) -> list[dict[str, Any]]:
    """The devices of the jurisdiction of ``scope``, each with its compartments."""
    f = Filters({"scope": scope.id, "limit": limit, "offset": offset}, in_scope("e.unit_id"))
    f.eq("e.unit_id", "unit", unit_id).eq("e.status", "status", status).eq("e.kind", "kind", kind)
    return _with_compartments(conn, fetch_all(conn, f.query(_EQUIPMENT_LIST), f.params))


def get_equipment(conn: psycopg.Connection, scope: UnitRef, equipment_id: int) -> dict[str, Any] | None:
    """One device of the jurisdiction with its compartments; None outside it or when there is none."""
    row = fetch_one(conn, _EQUIPMENT_ONE, {"scope": scope.id, "id": equipment_id})
    return None if row is None else _with_compartments(conn, [row])[0]


def create_equipment(
    conn: psycopg.Connection, equipment: Mapping[str, Any], compartments: Sequence[Mapping[str, Any]]
) -> int:
    """Register a device and its compartments (limits absent: the schema's defaults by mode); its id."""
    set_action(conn, "equipment.create")
    row = fetch_one(conn, _INSERT_EQUIPMENT, equipment)
    assert row is not None
    for c in compartments:
        conn.execute(_INSERT_COMPARTMENT, {"eq": row["id"], **c})
    return int(row["id"])


def update_equipment(conn: psycopg.Connection, equipment_id: int, version: int, changes: Mapping[str, Any]) -> None:
    """The attributes an administrator keeps up, at the version the client read (409 otherwise)."""
    set_action(conn, "equipment.update")
    update_versioned(conn, "equipment", equipment_id, version, changes, "设备")


def get_compartment(conn: psycopg.Connection, scope: UnitRef, compartment_id: int) -> dict[str, Any] | None:
    """One compartment of the jurisdiction with its current probe; None outside it or when there is none."""
    return fetch_one(conn, _COMPARTMENT_ONE, {"scope": scope.id, "id": compartment_id})


def update_compartment(conn: psycopg.Connection, compartment_id: int, version: int, changes: Mapping[str, Any]) -> None:
    """Name or limits, at the version the client read (409 otherwise); the caller has checked the
    new limits (:func:`registry.limits.check_limits`)."""
    set_action(conn, "compartment.update")
    update_versioned(conn, "compartments", compartment_id, version, changes, "温区")
