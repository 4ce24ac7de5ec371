"""The vaccine catalogue (VT2): categories, manufacturers, vaccines and their specifications
(品规), with the product keys a scanned code is matched against.

Why the product keys live here: a code names a product by its 7-digit traceability prefix or its
GTIN, and only the catalogue knows which specification that is.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import psycopg

from coldchain.core.db import fetch_all, fetch_one
from coldchain.core.errors import invalid, not_found
from coldchain.core.sqlparts import Filters
from inventory.codes import CodeError, ParsedCode, parse_code

_SPECS = """
SELECT s.id, s.vaccine_id, v.name AS vaccine_name, c.name AS category_name, v.programme, v.storage_mode,
       s.manufacturer_id, m.name AS manufacturer_name, s.spec, s.doses_per_vial, s.ref_wastage::float8 AS ref_wastage,
       s.trace_prefix, s.gtin, s.tender_year, s.active, s.version
FROM vaccine_specs s JOIN vaccines v ON v.id = s.vaccine_id JOIN vaccine_categories c ON c.id = v.category_id
JOIN manufacturers m ON m.id = s.manufacturer_id
"""
_VACCINES = """
SELECT v.id, v.category_id, c.name AS category_name, v.name, v.programme, v.storage_mode, v.version
FROM vaccines v JOIN vaccine_categories c ON c.id = v.category_id
"""


def categories(conn: psycopg.Connection) -> list[dict[str, Any]]:
    """Vaccine categories by name."""
    return fetch_all(conn, "SELECT id, name, version FROM vaccine_categories ORDER BY name")


def create_category(conn: psycopg.Connection, name: str) -> dict[str, Any]:
    """A new category; a duplicate name is the database's unique refusal."""
    row = fetch_one(
        conn, "INSERT INTO vaccine_categories (name) VALUES (%(name)s) RETURNING id, name, version", {"name": name}
    )
    assert row is not None
    return row


def manufacturers(conn: psycopg.Connection) -> list[dict[str, Any]]:
    """Manufacturers by name."""
    return fetch_all(conn, "SELECT id, name, credit_code, version FROM manufacturers ORDER BY name")


def create_manufacturer(conn: psycopg.Connection, name: str, credit_code: str | None) -> dict[str, Any]:
    """A new manufacturer; its credit code, if given, is unique."""
    row = fetch_one(
        conn,
        "INSERT INTO manufacturers (name, credit_code) VALUES (%(name)s, %(credit_code)s) RETURNING *",
        {"name": name, "credit_code": credit_code},
    )
    assert row is not None
    return row


def vaccines(conn: psycopg.Connection) -> list[dict[str, Any]]:
    """Vaccines with their category, by category and name."""
    return fetch_all(conn, _VACCINES + " ORDER BY c.name, v.name")


def create_vaccine(
    conn: psycopg.Connection, category_id: int, name: str, programme: bool, storage_mode: str
) -> dict[str, Any]:
    """A new vaccine in an existing category."""
    if fetch_one(conn, "SELECT 1 FROM vaccine_categories WHERE id = %(id)s", {"id": category_id}) is None:
        raise not_found("疫苗大类")
    row = fetch_one(
        conn,
        """INSERT INTO vaccines (category_id, name, programme, storage_mode)
           VALUES (%(category_id)s, %(name)s, %(programme)s, %(storage_mode)s) RETURNING id""",
        {"category_id": category_id, "name": name, "programme": programme, "storage_mode": storage_mode},
    )
    assert row is not None
    out = fetch_one(conn, _VACCINES + " WHERE v.id = %(id)s", row)
    assert out is not None
    return out


def specs(
    conn: psycopg.Connection, *, vaccine_id: int | None, programme: bool | None, active: bool | None
) -> list[dict[str, Any]]:
    """Specifications with their vaccine and manufacturer, filtered by what is given."""
    where = (
        Filters()
        .eq("s.vaccine_id", "vaccine", vaccine_id)
        .eq("v.programme", "programme", programme)
        .eq("s.active", "active", active)
    )
    return fetch_all(conn, where.query(_SPECS + " WHERE {where} ORDER BY c.name, v.name, s.spec"), where.params)


def spec(conn: psycopg.Connection, spec_id: int) -> dict[str, Any]:
    """One specification with its vaccine and manufacturer, or 404."""
    row = fetch_one(conn, _SPECS + " WHERE s.id = %(id)s", {"id": spec_id})
    if row is None:
        raise not_found("疫苗品规")
    return row


def check_gtin(gtin: str | None) -> None:
    """A GTIN is checked as a scanner would read it, so a mistyped one never reaches the catalogue."""
    if gtin is None:
        return
    try:
        parse_code(f"01{gtin}")
    except CodeError as exc:
        raise invalid(f"GTIN 无效：{exc}") from exc


def create_spec(
    conn: psycopg.Connection,
    *,
    vaccine_id: int,
    manufacturer_id: int,
    spec_name: str,
    doses_per_vial: int,
    ref_wastage: Decimal,
    trace_prefix: str | None,
    gtin: str | None,
    tender_year: int | None,
) -> dict[str, Any]:
    """A new specification of an existing vaccine and manufacturer, its GTIN checked first."""
    if fetch_one(conn, "SELECT 1 FROM vaccines WHERE id = %(id)s", {"id": vaccine_id}) is None:
        raise not_found("疫苗")
    if fetch_one(conn, "SELECT 1 FROM manufacturers WHERE id = %(id)s", {"id": manufacturer_id}) is None:
        raise not_found("生产企业")
    check_gtin(gtin)
    row = fetch_one(
        conn,
        """INSERT INTO vaccine_specs (vaccine_id, manufacturer_id, spec, doses_per_vial, ref_wastage, trace_prefix,
                                      gtin, tender_year)
           VALUES (%(vaccine_id)s, %(manufacturer_id)s, %(spec)s, %(doses_per_vial)s, %(ref_wastage)s,
                   %(trace_prefix)s, %(gtin)s, %(tender_year)s) RETURNING id""",
        {
            "vaccine_id": vaccine_id,
            "manufacturer_id": manufacturer_id,
            "spec": spec_name,
            "doses_per_vial": doses_per_vial,
            "ref_wastage": ref_wastage,
            "trace_prefix": trace_prefix,
            "gtin": gtin,
            "tender_year": tender_year,
        },
    )
    assert row is not None
    return spec(conn, row["id"])


def spec_for_product(conn: psycopg.Connection, parsed: ParsedCode) -> dict[str, Any] | None:
    """The specification a code names: by traceability prefix, or by the GTIN's item digits (a case
    or box carries its own GTIN-14 whose digits 2–13 are the product's at every level)."""
    if parsed.kind == "cn20":
        return fetch_one(conn, _SPECS + " WHERE s.trace_prefix = %(k)s", {"k": parsed.product_key})
    return fetch_one(conn, _SPECS + " WHERE substr(s.gtin, 2, 12) = substr(%(k)s, 2, 12)", {"k": parsed.product_key})


def active_specs(conn: psycopg.Connection, spec_ids: list[int]) -> set[int]:
    """Which of ``spec_ids`` exist and are still in use."""
    rows = fetch_all(conn, "SELECT id FROM vaccine_specs WHERE id = ANY(%(ids)s) AND active", {"ids": spec_ids})
    return {int(r["id"]) for r in rows}
