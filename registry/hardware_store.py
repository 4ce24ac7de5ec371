"""The hardware import's database side: :func:`lock_and_load` locks the hardware tables and reads
what the registry holds of a delivery list, :func:`apply_plan` writes a checked plan with one
``INSERT … SELECT FROM unnest(…)`` per table — and the SQL of both.

Apart from :mod:`registry.hardware_import` so that the check stays pure (no connection, no SQL:
it is tested against a hand-made :class:`~registry.hardware_import.Registry`), and so that the
statements, which follow the migrations, are read together in one place.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import psycopg

from coldchain.core.db import set_action
from registry.hardware_cells import EQUIPMENT_ATTRS, GATEWAY_ATTRS, PROBE_ATTRS, CompartmentKey, EquipmentKey
from registry.hardware_import import NewEquipment, NewHardware, Plan, Registered, Registry
from registry.units_import import Table

ACTION = "hardware.import"

_LOCK = "LOCK TABLE equipment, compartments, gateways, probes, probe_bindings IN SHARE ROW EXCLUSIVE MODE"
_UNITS = "SELECT code, id, name, active FROM units WHERE code = ANY(%(units)s)"
_EQUIPMENT = """
SELECT e.id, u.code, e.name, e.status, e.kind, e.brand, e.model, e.asset_no, e.plate_no, e.commissioned_on
FROM equipment e JOIN units u ON u.id = e.unit_id WHERE u.code = ANY(%(units)s)
"""
_COMPARTMENTS = """
SELECT c.id, u.code, c.name, c.status, c.mode, c.t_min, c.t_max, c.equipment_id,
       array_remove(array_agg(p.serial ORDER BY p.serial), NULL)
FROM compartments c JOIN equipment e ON e.id = c.equipment_id JOIN units u ON u.id = e.unit_id
LEFT JOIN probe_bindings_current b ON b.compartment_id = c.id LEFT JOIN probes p ON p.id = b.probe_id
WHERE u.code = ANY(%(units)s) GROUP BY c.id, u.code
"""
_HARDWARE = """
SELECT h.id, u.code, h.serial, h.status, h.vendor, h.model, h.installed_on, h.warranty_end{binding}
FROM {table} h LEFT JOIN units u ON u.id = h.unit_id {joins}
WHERE h.serial = ANY(%({table})s)
"""
_BINDING = """, b.compartment_id, g.serial,
       format('%%s %%s 的「%%s/%%s」（网关 %%s）', bu.code, bu.name, e.name, c.name, g.serial)"""
_BINDING_JOINS = """
LEFT JOIN probe_bindings_current b ON b.probe_id = h.id LEFT JOIN gateways g ON g.id = b.gateway_id
LEFT JOIN compartments c ON c.id = b.compartment_id LEFT JOIN equipment e ON e.id = c.equipment_id
LEFT JOIN units bu ON bu.id = e.unit_id
"""
_INSERT_EQUIPMENT = """
INSERT INTO equipment (unit_id, name, kind, brand, model, asset_no, plate_no, commissioned_on)
SELECT * FROM unnest(%(unit)s::bigint[], %(name)s::text[], %(kind)s::text[], %(brand)s::text[], %(model)s::text[],
                     %(asset_no)s::text[], %(plate_no)s::text[], %(commissioned_on)s::date[])
RETURNING id, unit_id, name
"""
_INSERT_COMPARTMENTS = """
INSERT INTO compartments (equipment_id, name, mode, t_min, t_max)
SELECT * FROM unnest(%(equipment)s::bigint[], %(name)s::text[], %(mode)s::text[], %(t_min)s::numeric[],
                     %(t_max)s::numeric[])
RETURNING id, equipment_id, name
"""
_INSERT_HARDWARE = """
INSERT INTO {table} (serial, unit_id, vendor, model, installed_on, warranty_end, status)
SELECT *, 'active' FROM unnest(%(serial)s::text[], %(unit)s::bigint[], %(vendor)s::text[], %(model)s::text[],
                               %(installed_on)s::date[], %(warranty_end)s::date[])
RETURNING id, serial
"""
# Valid from the transaction's now(), like a binding of Form 3: the probe's readings are
# attributed from the moment it is registered, never to a past the registry did not know.
_INSERT_BINDINGS = """
INSERT INTO probe_bindings (probe_id, compartment_id, gateway_id, valid, reason)
SELECT v.probe, v.compartment, v.gateway, tstzrange(now(), NULL), %(reason)s
FROM unnest(%(probe)s::bigint[], %(compartment)s::bigint[], %(gateway)s::bigint[]) AS v (probe, compartment, gateway)
"""


def _wanted(table: Table, column: str) -> list[str]:
    """The distinct values of one column, as written (the check judges them)."""
    header = [c.strip().lower() for c in table.header]
    i = header.index(column) if column in header else -1
    return sorted({cells[i].strip() for _, cells in table.rows if 0 <= i < len(cells) and cells[i].strip()})


def lock_and_load(conn: psycopg.Connection, table: Table) -> Registry:
    """What the registry holds of the file's units, gateways and probes, with the hardware tables
    locked against other writers until the transaction ends, so that the plan checked is the plan
    applied (readings go on meanwhile: the ingester and the pages only read these tables)."""
    conn.execute(_LOCK)
    want = {"units": _wanted(table, "unit_code"), "gateways": _wanted(table, "gateway_serial")}
    want["probes"] = _wanted(table, "probe_serial")
    units = {r[0]: (r[1], r[2], r[3]) for r in conn.execute(_UNITS, want).fetchall()}
    equipment = [
        Registered(r[0], r[1], r[2], r[3], dict(zip(EQUIPMENT_ATTRS, r[4:], strict=True)))
        for r in conn.execute(_EQUIPMENT, want).fetchall()
    ]
    compartments = [
        Registered(r[0], r[1], r[2], r[3], {"limits": (r[4], r[5], r[6])}, r[7], tuple(r[8]))
        for r in conn.execute(_COMPARTMENTS, want).fetchall()
    ]
    found: dict[str, dict[str, Registered]] = {}
    for kind, attrs in (("gateways", GATEWAY_ATTRS), ("probes", PROBE_ATTRS)):
        probe = kind == "probes"
        sql = _HARDWARE.format(table=kind, binding=_BINDING if probe else "", joins=_BINDING_JOINS if probe else "")
        found[kind] = {
            r[2]: Registered(r[0], r[1], r[2], r[3], dict(zip(attrs, r[4:8], strict=True)), bound=_bound(r[8:]))
            for r in conn.execute(sql.encode(), want).fetchall()
        }
    return Registry(units, equipment, compartments, found["gateways"], found["probes"])


def _bound(cells: Sequence[Any]) -> tuple[int, str, str] | None:
    return (cells[0], cells[1], cells[2]) if cells and cells[0] is not None else None


def _params(items: Sequence[NewEquipment | NewHardware], attrs: Sequence[str], prefix: str) -> dict[str, Any]:
    """The columns of ``items`` as arrays, one per attribute, named without the file's prefix."""
    return {a.removeprefix(prefix): [item.attrs.get(a) for item in items] for a in attrs}


def apply_plan(conn: psycopg.Connection, plan: Plan, reason: str) -> None:
    """Write ``plan`` in the caller's transaction, one statement per table, each row audited as
    ``hardware.import`` by the triggers of migration 0004; ``reason`` goes on every new binding."""
    set_action(conn, ACTION)
    equipment: dict[EquipmentKey, int] = {}
    if plan.equipment:
        codes = {e.unit_id: e.key[0] for e in plan.equipment}
        params = _params(plan.equipment, EQUIPMENT_ATTRS, "equipment_")
        params |= {"unit": [e.unit_id for e in plan.equipment], "name": [e.key[1] for e in plan.equipment]}
        for id_, unit_id, name in conn.execute(_INSERT_EQUIPMENT, params).fetchall():
            equipment[codes[unit_id], name] = id_
    compartments: dict[CompartmentKey, int] = {}
    if plan.compartments:
        ids = [c.equipment_id or equipment[c.key[:2]] for c in plan.compartments]
        keys = {(i, c.key[2]): c.key for i, c in zip(ids, plan.compartments, strict=True)}
        params = {"equipment": ids, "name": [c.key[2] for c in plan.compartments]}
        params |= {k: [c.limits[i] for c in plan.compartments] for i, k in enumerate(("mode", "t_min", "t_max"))}
        for id_, equipment_id, name in conn.execute(_INSERT_COMPARTMENTS, params).fetchall():
            compartments[keys[equipment_id, name]] = id_
    ids_by_serial: dict[str, dict[str, int]] = {"gateways": {}, "probes": {}}
    for table, items, attrs in (("gateways", plan.gateways, GATEWAY_ATTRS), ("probes", plan.probes, PROBE_ATTRS)):
        if items:
            params = _params(items, attrs, table[:-1] + "_")
            params |= {"serial": [h.serial for h in items], "unit": [h.unit_id for h in items]}
            rows = conn.execute(_INSERT_HARDWARE.format(table=table).encode(), params).fetchall()
            ids_by_serial[table] = {serial: id_ for id_, serial in rows}
    if plan.probes:
        probes, gateways = ids_by_serial["probes"], ids_by_serial["gateways"]
        params = {
            "probe": [probes[p.serial] for p in plan.probes],
            "compartment": [p.compartment_id or compartments[p.compartment] for p in plan.probes],
            "gateway": [p.gateway_id or gateways[p.gateway] for p in plan.probes],
            "reason": reason,
        }
        conn.execute(_INSERT_BINDINGS, params)
