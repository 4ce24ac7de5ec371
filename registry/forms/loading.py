"""Loading a form's facts: the rows it names, as they are now, and at apply time locked until
commit in one fixed order, so that two forms applied at once wait for each other instead of both
acting on what they read.
"""

from __future__ import annotations

import psycopg

from coldchain.core.db import fetch_all, fetch_one
from coldchain.core.errors import not_found
from registry.forms.facts import (
    CompartmentFact,
    EquipmentFact,
    GatewayFact,
    ProbeFact,
    RegistryFacts,
    RequestFact,
    UnitFact,
    UserFact,
    UserFacts,
)
from registry.forms.payloads import Form1, Form3, Form5, RegistryForm
from registry.units import within

_UNIT = """
SELECT n.id, n.name, n.level, n.parent_id, p.name AS parent_name
FROM units n LEFT JOIN units p ON p.id = n.parent_id WHERE n.id = %(id)s
"""
_COMPARTMENTS = """
SELECT c.id, c.name, c.mode, c.status = 'active' AS active, e.id AS equipment_id, e.name AS equipment_name,
       e.unit_id AS equipment_unit_id, e.status = 'active' AS equipment_active,
       coalesce(array_agg(p.serial ORDER BY p.serial) FILTER (WHERE p.serial IS NOT NULL), '{}') AS bound_probes
FROM compartments c
JOIN equipment e ON e.id = c.equipment_id
LEFT JOIN probe_bindings_current b ON b.compartment_id = c.id
LEFT JOIN probes p ON p.id = b.probe_id
WHERE c.id = ANY(%(ids)s)
GROUP BY c.id, e.id
"""
_PROBES = """
SELECT p.id, p.serial, p.unit_id, p.status, b.id AS binding_id, b.compartment_id, b.gateway_id
FROM probes p LEFT JOIN probe_bindings_current b ON b.probe_id = p.id
WHERE p.serial = ANY(%(serials)s)
"""
_GATEWAYS = "SELECT id, serial, unit_id, status FROM gateways WHERE serial = ANY(%(serials)s)"
_EQUIPMENT = "SELECT id, name, unit_id, status = 'active' AS active FROM equipment WHERE id = ANY(%(ids)s)"
_REQUEST = "SELECT id, form_type, unit_id, status FROM forms WHERE id = %(id)s"

# Taken at apply time, always in this order (equipment, compartments, probes, gateways), so that
# two forms applied at once wait for each other instead of both acting on what they read.
_LOCK_EQUIPMENT = "SELECT id FROM equipment WHERE id = ANY(%(ids)s) ORDER BY id FOR UPDATE"
_LOCK_COMPARTMENTS = """
SELECT id FROM compartments WHERE id = ANY(%(ids)s) OR equipment_id = ANY(%(equipment)s) ORDER BY id FOR UPDATE
"""
_LOCK_PROBES = "SELECT id FROM probes WHERE serial = ANY(%(serials)s) ORDER BY id FOR UPDATE"
_LOCK_GATEWAYS = "SELECT id FROM gateways WHERE serial = ANY(%(serials)s) ORDER BY id FOR UPDATE"

_USER = """
SELECT u.id, u.username, u.real_name, u.phone, u.email, u.role, u.department, u.status, u.version,
       n.id AS unit_id, n.name AS unit_name, n.level, n.parent_id, p.name AS parent_name
FROM users u JOIN units n ON n.id = u.unit_id LEFT JOIN units p ON p.id = n.parent_id
WHERE u.id = %(id)s
"""
_USERNAME_TAKEN = "SELECT 1 FROM users WHERE lower(username) = lower(%(username)s)"
_LOCK_USER = "SELECT id FROM users WHERE id = %(id)s FOR UPDATE"


def load_unit(conn: psycopg.Connection, unit_id: int) -> UnitFact | None:
    """A unit with its parent's name (for messages naming who manages whom)."""
    row = fetch_one(conn, _UNIT, {"id": unit_id})
    return UnitFact(**row) if row else None


def _mentioned(p: RegistryForm) -> tuple[list[int], list[str], list[str], list[int]]:
    """(compartment ids, probe serials, gateway serials, equipment ids) a form names."""
    if isinstance(p, Form1):
        serials = sorted({s for r in p.rows for s in (r.probe_before, r.probe_after)})
        return [r.compartment_id for r in p.rows], serials, [], []
    if isinstance(p, Form3):
        return (
            [r.compartment_id for r in p.rows],
            sorted({r.probe_serial for r in p.rows}),
            sorted({r.gateway_serial for r in p.rows}),
            [],
        )
    return [], sorted({x.probe_serial for x in p.probes}), [], [e.equipment_id for e in p.equipment]


def load_registry_facts(conn: psycopg.Connection, p: RegistryForm, *, lock: bool = False) -> RegistryFacts:
    """The rows Form 1/3/4 names, as they are now. ``lock`` (apply) holds them until commit."""
    unit = load_unit(conn, p.unit_id)
    if unit is None:
        raise not_found("单位")
    compartment_ids, probe_serials, gateway_serials, equipment_ids = _mentioned(p)
    if lock:
        conn.execute(_LOCK_EQUIPMENT, {"ids": equipment_ids})
        conn.execute(_LOCK_COMPARTMENTS, {"ids": compartment_ids, "equipment": equipment_ids})
        conn.execute(_LOCK_PROBES, {"serials": probe_serials})
        conn.execute(_LOCK_GATEWAYS, {"serials": gateway_serials})
    compartments = {
        r["id"]: CompartmentFact(**{**r, "bound_probes": tuple(r["bound_probes"])})
        for r in (fetch_all(conn, _COMPARTMENTS, {"ids": compartment_ids}) if compartment_ids else [])
    }
    probes = {
        r["serial"]: ProbeFact(**r)
        for r in (fetch_all(conn, _PROBES, {"serials": probe_serials}) if probe_serials else [])
    }
    gateways = {
        r["serial"]: GatewayFact(**r)
        for r in (fetch_all(conn, _GATEWAYS, {"serials": gateway_serials}) if gateway_serials else [])
    }
    equipment = {
        r["id"]: EquipmentFact(**r)
        for r in (fetch_all(conn, _EQUIPMENT, {"ids": equipment_ids}) if equipment_ids else [])
    }
    request = None
    if isinstance(p, Form3) and p.request_form_id is not None:
        row = fetch_one(conn, _REQUEST, {"id": p.request_form_id})
        request = RequestFact(**row) if row else None
    return RegistryFacts(unit, compartments, probes, gateways, equipment, request)


def load_target_user(conn: psycopg.Connection, user_id: int) -> UserFact | None:
    """The user a Form 5 changes, with their unit."""
    row = fetch_one(conn, _USER, {"id": user_id})
    if row is None:
        return None
    unit = UnitFact(
        row.pop("unit_id"), row.pop("unit_name"), row.pop("level"), row.pop("parent_id"), row.pop("parent_name")
    )
    return UserFact(**row, unit=unit)


def load_user_facts(conn: psycopg.Connection, p: Form5, *, lock: bool = False) -> UserFacts:
    """The units and user a Form 5 names, as they are now. ``lock`` (apply) holds the user row."""
    form_unit = load_unit(conn, p.unit_id)
    if form_unit is None:
        raise not_found("单位")
    if p.change_type == "add":
        after = p.after
        target_unit = load_unit(conn, after.unit_id) if after is not None and after.unit_id is not None else None
        taken = (
            after is not None
            and after.username is not None
            and fetch_one(conn, _USERNAME_TAKEN, {"username": after.username}) is not None
        )
        under = target_unit is not None and within(conn, form_unit.id, target_unit.id)
        return UserFacts(form_unit, target_unit=target_unit, under_form_unit=under, username_taken=taken)
    if p.target_user_id is None:
        return UserFacts(form_unit)
    if lock:
        conn.execute(_LOCK_USER, {"id": p.target_user_id})
    target = load_target_user(conn, p.target_user_id)
    under = target is not None and within(conn, form_unit.id, target.unit.id)
    return UserFacts(form_unit, target=target, under_form_unit=under)
