"""Stock findings over a jurisdiction (VT9, VT11): months of stock per unit and vaccine against the
recent outflow, and the month's wastage coefficient per area and vaccine against the national
reference.

The judgements are the pure functions of :mod:`inventory.analysis`; this module reads the ledger
for them, summed in SQL per unit and specification. The API and the stock page both call it, so
they cannot disagree.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from datetime import date, datetime, timedelta
from typing import Any

import psycopg

from coldchain.core.db import fetch_all
from coldchain.core.sqlparts import in_scope
from coldchain.core.terms import BEIJING, next_month
from inventory.analysis import stock_status, wastage
from inventory.balances import by_unit_and_spec

# Vials that left each unit as ``kinds`` (net of their reversals) within [from, to), per spec.
_OUTFLOW = f"""
SELECT m.unit_id, l.spec_id, -sum(m.quantity)::int AS vials
FROM stock_movements m LEFT JOIN stock_movements o ON o.id = m.reverses_id JOIN lots l ON l.id = m.lot_id
WHERE {in_scope("m.unit_id")}
  AND coalesce(o.kind, m.kind) = ANY(%(kinds)s) AND m.occurred_at >= %(from)s AND m.occurred_at < %(to)s
GROUP BY 1, 2
"""  # noqa: S608 — constant fragment
_NAMES = """
SELECT u.id AS unit_id, u.name AS unit_name, u.level AS unit_level, s.id AS spec_id, v.name AS vaccine_name, s.spec,
       s.doses_per_vial, s.ref_wastage::float8 AS ref_wastage
FROM units u CROSS JOIN vaccine_specs s JOIN vaccines v ON v.id = s.vaccine_id
WHERE u.id = ANY(%(units)s) AND s.id = ANY(%(specs)s)
"""
# Every unit of the jurisdiction with the area (unit one level below ``scope``) it lies in; None
# for ``scope`` itself.
_SITES = """
SELECT t.descendant_id AS site,
       (SELECT a.descendant_id FROM unit_tree a JOIN unit_tree b ON b.ancestor_id = a.descendant_id
        WHERE a.ancestor_id = %(scope)s AND a.depth = 1 AND b.descendant_id = t.descendant_id) AS area
FROM unit_tree t WHERE t.ancestor_id = %(scope)s
"""
_GIVEN = f"""
SELECT v.unit_id, l.spec_id, count(*)::int AS doses
FROM vaccinations v JOIN lots l ON l.id = v.lot_id
WHERE {in_scope("v.unit_id")} AND v.vaccinated_at >= %(from)s AND v.vaccinated_at < %(to)s
GROUP BY 1, 2
"""  # noqa: S608 — constant fragment

Key = tuple[int, int]
"""(unit, vaccine specification)"""


def _names(conn: psycopg.Connection, keys: Iterable[Key]) -> dict[Key, dict[str, Any]]:
    keys = list(keys)
    params = {"units": sorted({k[0] for k in keys}), "specs": sorted({k[1] for k in keys})}
    return {(r["unit_id"], r["spec_id"]): r for r in fetch_all(conn, _NAMES, params)}


def stock_levels(
    conn: psycopg.Connection,
    scope: int,
    *,
    months: int,
    low: float,
    high: float,
    only_findings: bool,
    now: datetime,
) -> list[dict[str, Any]]:
    """Per unit and specification in the jurisdiction: stock on hand, average monthly outflow
    (usage and issues) over the last ``months`` months, months of stock and the finding."""
    outflow = {
        (r["unit_id"], r["spec_id"]): r["vials"]
        for r in fetch_all(
            conn,
            _OUTFLOW,
            {"scope": scope, "kinds": ["usage", "issue"], "from": now - timedelta(days=30 * months), "to": now},
        )
    }
    stock = {(r["unit_id"], r["spec_id"]): r for r in by_unit_and_spec(conn, scope)}
    keys = set(stock) | set(outflow)
    names = _names(conn, keys)
    out = []
    for key in sorted(keys):
        per_month = outflow.get(key, 0) / months
        on_hand = stock[key]["on_hand"] if key in stock else 0
        finding = stock_status(on_hand, per_month, low=low, high=high)
        if only_findings and finding.status in {"normal", "empty"}:
            continue
        n = names[key]
        out.append(
            {
                "unit_id": key[0],
                "unit_name": n["unit_name"],
                "unit_level": n["unit_level"],
                "spec_id": key[1],
                "vaccine_name": n["vaccine_name"],
                "spec": n["spec"],
                "on_hand": on_hand,
                "monthly_outflow": per_month,
                "months_of_stock": finding.months,
                "status": finding.status,
            }
        )
    return out


def wastage_by_area(conn: psycopg.Connection, scope: int, month: date, *, only_findings: bool) -> list[dict[str, Any]]:
    """The wastage coefficient of ``month`` (its first day) per specification, for the whole
    jurisdiction first, then for each area one level below it."""
    following = next_month(month)
    span = {
        "scope": scope,
        "from": datetime(month.year, month.month, 1, tzinfo=BEIJING),
        "to": datetime(following.year, following.month, 1, tzinfo=BEIJING),
    }
    area_of = {r["site"]: r["area"] or scope for r in fetch_all(conn, _SITES, {"scope": scope})}
    vials: dict[Key, int] = defaultdict(int)
    doses: dict[Key, int] = defaultdict(int)
    for r in fetch_all(conn, _OUTFLOW, {**span, "kinds": ["usage"]}):
        for area in {area_of[r["unit_id"]], scope}:
            vials[(area, r["spec_id"])] += r["vials"]
    for r in fetch_all(conn, _GIVEN, span):
        for area in {area_of[r["unit_id"]], scope}:
            doses[(area, r["spec_id"])] += r["doses"]
    keys = set(vials) | set(doses)
    names = _names(conn, keys)
    out = []
    # The whole area first, then its parts, each by vaccine.
    for key in sorted(keys, key=lambda k: (k[0] != scope, k[0], names[k]["vaccine_name"], names[k]["spec"])):
        n = names[key]
        w = wastage(vials[key], n["doses_per_vial"], doses[key], n["ref_wastage"])
        if only_findings and w.flag in {"normal", "no_vaccinations"}:
            continue
        out.append(
            {
                "area_unit_id": key[0],
                "area_name": n["unit_name"],
                "spec_id": key[1],
                "vaccine_name": n["vaccine_name"],
                "spec": n["spec"],
                "vials_used": vials[key],
                "doses_per_vial": n["doses_per_vial"],
                "doses_administered": doses[key],
                "coefficient": w.coefficient,
                "reference": n["ref_wastage"],
                "flag": w.flag,
            }
        )
    return out
