"""Probe bindings, current and past (CM7, CM8, CM11): which probe measured which compartment,
through which gateway, from when to when.

Read-only here: bindings are opened, swapped and closed only by applying Forms 1, 3 and 4
(:mod:`registry.forms`), so that every change of attribution has a filed form behind it.
"""

from __future__ import annotations

from typing import Any

import psycopg

from coldchain.core.db import fetch_all
from coldchain.core.sqlparts import Filters, in_scope
from registry.permissions import UnitRef

_LIST = """
SELECT b.id, b.probe_id, p.serial AS probe_serial, b.compartment_id, c.name AS compartment_name,
       e.id AS equipment_id, e.name AS equipment_name, e.unit_id, g.serial AS gateway_serial,
       lower(b.valid) AS valid_from, upper(b.valid) AS valid_to, b.reason
FROM probe_bindings b
JOIN probes p ON p.id = b.probe_id
JOIN gateways g ON g.id = b.gateway_id
JOIN compartments c ON c.id = b.compartment_id
JOIN equipment e ON e.id = c.equipment_id
WHERE {where}
ORDER BY e.unit_id, b.compartment_id, lower(b.valid)
LIMIT %(limit)s OFFSET %(offset)s
"""


def list_bindings(
    conn: psycopg.Connection,
    scope: UnitRef,
    *,
    unit_id: int | None,
    probe_id: int | None,
    compartment_id: int | None,
    current: bool,
    limit: int,
    offset: int,
) -> list[dict[str, Any]]:
    """The bindings of the jurisdiction's equipment; ``current``: only those still open."""
    always = [in_scope("e.unit_id"), *(["upper_inf(b.valid)"] if current else [])]
    f = Filters({"scope": scope.id, "limit": limit, "offset": offset}, *always)
    f.eq("e.unit_id", "unit", unit_id).eq("b.probe_id", "probe", probe_id)
    f.eq("b.compartment_id", "compartment", compartment_id)
    return fetch_all(conn, f.query(_LIST), f.params)
