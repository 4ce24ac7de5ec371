"""Applying a filed form: making it true in the registry. Nothing is deleted: a swap closes one
binding interval and opens another, a stop decommissions, a removed user keeps their row; the
audit triggers record every write under the action the caller named.

The caller has re-checked the form against facts loaded with ``lock=True``.
"""

from __future__ import annotations

from typing import Any

import psycopg

from coldchain.core.db import fetch_all, fetch_one
from registry import responsibles, users
from registry.forms.facts import RegistryFacts, UserFacts, county_of
from registry.forms.payloads import MODIFIABLE, Form1, Form3, Form4, Form5
from registry.sessions import SETUP_TOKEN_TTL, open_session, revoke_sessions

_CLOSE_BINDING = """
UPDATE probe_bindings SET valid = tstzrange(lower(valid), now()) WHERE id = %(id)s AND upper_inf(valid)
"""
_OPEN_BINDING = """
INSERT INTO probe_bindings (probe_id, compartment_id, gateway_id, valid, reason, created_by)
VALUES (%(probe)s, %(compartment)s, %(gateway)s, tstzrange(now(), NULL), %(reason)s, %(actor)s)
RETURNING id
"""
_PROBE_TO_STOCK = "UPDATE probes SET status = 'in_stock', version = version + 1 WHERE id = %(id)s"
_PROBE_INTO_USE = """
UPDATE probes SET status = 'active', unit_id = %(unit)s, version = version + 1 WHERE id = %(id)s
"""
_GATEWAY_INTO_USE = """
UPDATE gateways SET status = 'active', unit_id = %(unit)s, version = version + 1
WHERE id = %(id)s AND (status <> 'active' OR unit_id IS DISTINCT FROM %(unit)s)
"""
_RENAME_EQUIPMENT = """
UPDATE equipment SET name = %(name)s, version = version + 1 WHERE id = %(id)s AND name <> %(name)s
"""
_STOP_EQUIPMENT = """
UPDATE equipment SET status = 'decommissioned', decommissioned_at = now(), version = version + 1
WHERE id = ANY(%(ids)s) AND status = 'active' RETURNING id
"""
_STOP_COMPARTMENTS = """
UPDATE compartments SET status = 'decommissioned', decommissioned_at = now(), version = version + 1
WHERE equipment_id = ANY(%(ids)s) AND status = 'active' RETURNING id
"""
_CLOSE_COMPARTMENT_BINDINGS = """
UPDATE probe_bindings SET valid = tstzrange(lower(valid), now())
WHERE upper_inf(valid) AND compartment_id IN (SELECT id FROM compartments WHERE equipment_id = ANY(%(ids)s))
RETURNING id, probe_id
"""
_CLOSE_PROBE_BINDINGS = """
UPDATE probe_bindings SET valid = tstzrange(lower(valid), now())
WHERE upper_inf(valid) AND probe_id IN (SELECT id FROM probes WHERE serial = ANY(%(serials)s))
RETURNING id, probe_id
"""
_PROBES_BACK_TO_COUNTY = """
UPDATE probes SET status = 'in_stock', unit_id = %(county)s, version = version + 1
WHERE (id = ANY(%(ids)s) OR serial = ANY(%(serials)s)) AND status <> 'decommissioned'
RETURNING serial
"""


def apply_form1(
    conn: psycopg.Connection, p: Form1, facts: RegistryFacts, *, actor_id: int, form_no: str
) -> dict[str, Any]:
    """Swap: the old interval ends and the new one starts at the same instant (now()), so every
    reading before it stays attributed to the old probe and every one after to the new."""
    rows: list[dict[str, Any]] = []
    for row in p.rows:
        c = facts.compartments[row.compartment_id]
        out: dict[str, Any] = {"compartment_id": c.id, "equipment_id": c.equipment_id}
        if row.probe_after != row.probe_before:
            before = facts.probes[row.probe_before]
            after = facts.probes[row.probe_after]
            conn.execute(_CLOSE_BINDING, {"id": before.binding_id})
            conn.execute(_PROBE_TO_STOCK, {"id": before.id})
            new = fetch_one(
                conn,
                _OPEN_BINDING,
                {
                    "probe": after.id,
                    "compartment": c.id,
                    "gateway": before.gateway_id,
                    "reason": f"{form_no} 更换探头 {before.serial} → {after.serial}",
                    "actor": actor_id,
                },
            )
            assert new is not None
            conn.execute(_PROBE_INTO_USE, {"id": after.id, "unit": facts.unit.id})
            out |= {
                "closed_binding_id": before.binding_id,
                "new_binding_id": new["id"],
                "probe_before": before.serial,
                "probe_after": after.serial,
            }
        if row.equipment_name_after is not None:
            conn.execute(_RENAME_EQUIPMENT, {"id": c.equipment_id, "name": row.equipment_name_after})
            out |= {"equipment_name_before": c.equipment_name, "equipment_name_after": row.equipment_name_after}
        rows.append(out)
    return {"rows": rows}


def apply_form3(
    conn: psycopg.Connection, p: Form3, facts: RegistryFacts, *, actor_id: int, form_no: str
) -> dict[str, Any]:
    """Bindings valid from now(): the ingester attributes the probe's readings from this instant."""
    bindings: list[dict[str, Any]] = []
    for row in p.rows:
        probe = facts.probes[row.probe_serial]
        gateway = facts.gateways[row.gateway_serial]
        new = fetch_one(
            conn,
            _OPEN_BINDING,
            {
                "probe": probe.id,
                "compartment": row.compartment_id,
                "gateway": gateway.id,
                "reason": f"{form_no} 软件绑定",
                "actor": actor_id,
            },
        )
        assert new is not None
        conn.execute(_PROBE_INTO_USE, {"id": probe.id, "unit": facts.unit.id})
        conn.execute(_GATEWAY_INTO_USE, {"id": gateway.id, "unit": facts.unit.id})
        bindings.append(
            {
                "binding_id": new["id"],
                "compartment_id": row.compartment_id,
                "probe_serial": probe.serial,
                "gateway_serial": gateway.serial,
            }
        )
    return {"bindings": bindings}


def apply_form4(conn: psycopg.Connection, p: Form4, facts: RegistryFacts) -> dict[str, Any]:
    """Stop: the equipment and its compartments are decommissioned (rows kept), every binding
    involved ends now() — so later readings of those probes are no longer attributed (CM8) — and
    the probes go back to the county's stock."""
    equipment_ids = [e.equipment_id for e in p.equipment if e.stop]
    probe_serials = [x.probe_serial for x in p.probes if x.stop]
    stopped: list[int] = []
    compartments: list[int] = []
    closed: list[dict[str, Any]] = []
    if equipment_ids:
        stopped = [r["id"] for r in fetch_all(conn, _STOP_EQUIPMENT, {"ids": equipment_ids})]
        compartments = [r["id"] for r in fetch_all(conn, _STOP_COMPARTMENTS, {"ids": equipment_ids})]
        closed = fetch_all(conn, _CLOSE_COMPARTMENT_BINDINGS, {"ids": equipment_ids})
    if probe_serials:
        closed += fetch_all(conn, _CLOSE_PROBE_BINDINGS, {"serials": probe_serials})
    county = county_of(facts.unit)
    returned = fetch_all(
        conn,
        _PROBES_BACK_TO_COUNTY,
        {
            "county": county,
            "ids": sorted({r["probe_id"] for r in closed}),
            "serials": probe_serials,
        },
    )
    return {
        "equipment_ids": sorted(stopped),
        "compartment_ids": sorted(compartments),
        "closed_binding_ids": sorted(r["id"] for r in closed),
        "probes_returned": sorted(r["serial"] for r in returned),
        "returned_to_unit_id": county,
    }


def apply_form5(
    conn: psycopg.Connection, p: Form5, facts: UserFacts, *, actor_id: int
) -> tuple[dict[str, Any], str | None]:
    """(result, one-time set-up token for a new user). The token goes back to the caller once and
    is never stored: only its digest is, in auth_sessions. A removed user's row stays."""
    if p.change_type == "add":
        after = p.after
        assert after is not None and facts.target_unit is not None
        # check_form5 has required these of a new user.
        assert after.username is not None and after.real_name is not None
        assert after.phone is not None and after.role is not None
        user_id = users.insert_user(
            conn,
            username=after.username,
            real_name=after.real_name,
            phone=after.phone,
            email=after.email,
            unit_id=facts.target_unit.id,
            role=after.role,
            department=after.department,
            created_by=actor_id,
        )
        setup = open_session(conn, user_id, "setup", SETUP_TOKEN_TTL, None, None)
        result = {
            "change_type": "add",
            "user_id": user_id,
            "username": after.username,
            "setup_token_expires_at": setup.expires_at.isoformat(),
        }
        return result, setup.token
    target = facts.target
    assert target is not None
    if p.change_type == "modify":
        assert p.after is not None
        changes = {k: getattr(p.after, k) for k in MODIFIABLE}
        users.modify_user(conn, target.id, **changes)
        changed = {k: v for k, v in changes.items() if v is not None and getattr(target, k) != v}
        return {"change_type": "modify", "user_id": target.id, "username": target.username, "changed": changed}, None
    users.end_user(conn, target.id, delete=p.change_type == "delete")
    revoke_sessions(conn, target.id)
    # A closed account can no longer be told of an alarm (CM15): it leaves the unit's three
    # levels (the audit log keeps that it was there), and the unit must name someone else.
    dropped = responsibles.drop_user(conn, target.id)
    result = {
        "change_type": p.change_type,
        "user_id": target.id,
        "username": target.username,
        "responsible_levels_dropped": dropped,
    }
    return result, None
