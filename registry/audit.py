"""Reading the audit log: who changed what, when, before and after.

Rows are written by the database's triggers (migration 0004), never by code, so this module only
reads: the log of a jurisdiction for the level above (RS1), and one device's history.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import psycopg

from coldchain.core.db import fetch_all
from coldchain.core.sqlparts import Filters
from registry.permissions import UnitRef
from registry.units import in_scope_or_unassigned

# The audited tables a reader may filter on.
ENTITIES = (
    "units",
    "equipment",
    "compartments",
    "gateways",
    "probes",
    "probe_bindings",
    "users",
    "unit_responsibles",
    "forms",
)

_LOG = """
SELECT a.id, a.ts, a.actor_id, u.username AS actor_username, a.action, a.entity, a.entity_id, a.op, a.unit_id,
       a.before, a.after
FROM audit_log a
LEFT JOIN users u ON u.id = a.actor_id
WHERE {where}
ORDER BY a.id DESC
LIMIT %(limit)s
"""
_EQUIPMENT_HISTORY = """
SELECT a.ts, u.username AS actor_username, a.action, a.entity, a.entity_id, a.before, a.after
FROM audit_log a LEFT JOIN users u ON u.id = a.actor_id
WHERE (a.entity = 'equipment' AND a.entity_id = %(id)s)
   OR (a.entity = 'compartments' AND a.entity_id IN (SELECT id FROM compartments WHERE equipment_id = %(id)s))
ORDER BY a.id
"""


def audit_log(
    conn: psycopg.Connection,
    scope: UnitRef,
    *,
    unit_id: int | None,
    entity: str | None,
    entity_id: int | None,
    actor_id: int | None,
    since: datetime | None,
    until: datetime | None,
    before_id: int | None,
    limit: int,
) -> list[dict[str, Any]]:
    """The rows of the jurisdiction of ``scope``, newest first; ``before_id`` pages back."""
    f = Filters({"scope": scope.id, "limit": limit}, in_scope_or_unassigned("a.unit_id", scope))
    f.eq("a.unit_id", "unit", unit_id).eq("a.entity", "entity", entity).eq("a.entity_id", "entity_id", entity_id)
    f.eq("a.actor_id", "actor", actor_id).at_least("a.ts", "since", since).before("a.ts", "until", until)
    f.before("a.id", "before_id", before_id)
    return fetch_all(conn, f.query(_LOG), f.params)


def equipment_history(conn: psycopg.Connection, equipment_id: int) -> list[dict[str, Any]]:
    """Every change to a device and its compartments (renames, limits, stops), oldest first."""
    return fetch_all(conn, _EQUIPMENT_HISTORY, {"id": equipment_id})
