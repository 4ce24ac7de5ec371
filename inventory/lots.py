"""Lots (VT3): one row per manufacturer lot, entered by whoever receives it first and then shared
province-wide, corrected in versions (``lot_revisions``, migration 0006) and carrying its
batch-release certificates.

Why one module: every read of a lot — as shown to people, and as the ledger checks it before
booking — is here, so the two cannot drift apart in what they call a lot.
"""

from __future__ import annotations

import hashlib
from datetime import date
from typing import Any

import psycopg

from coldchain.core.db import fetch_all, fetch_one
from coldchain.core.errors import conflict, invalid, not_found
from coldchain.core.sqlparts import Filters

_LOTS = """
SELECT l.id, l.spec_id, v.name AS vaccine_name, s.spec, m.name AS manufacturer_name, v.programme, l.lot_no,
       l.production_date, l.expiry_date, l.release_no, l.unit_id, u.name AS unit_name, l.entered_by,
       EXISTS (SELECT 1 FROM lot_certificates c WHERE c.lot_id = l.id) AS has_certificate, l.version, l.updated_at
FROM lots l JOIN vaccine_specs s ON s.id = l.spec_id JOIN vaccines v ON v.id = s.vaccine_id
JOIN manufacturers m ON m.id = s.manufacturer_id JOIN units u ON u.id = l.unit_id
"""

# What a booking checks a lot against: its expiry, storage mode, doses per vial and product keys.
_FOR_BOOKING = """
SELECT l.id, l.lot_no, l.expiry_date, l.production_date, l.spec_id, s.doses_per_vial, s.trace_prefix, s.gtin,
       v.programme, v.storage_mode, v.name AS vaccine_name, s.spec
FROM lots l JOIN vaccine_specs s ON s.id = l.spec_id JOIN vaccines v ON v.id = s.vaccine_id
WHERE l.id = %(id)s
"""


def lot_record(conn: psycopg.Connection, lot_id: int) -> dict[str, Any]:
    """The lot as people see it (product, who entered it, version), or 404."""
    row = fetch_one(conn, _LOTS + " WHERE l.id = %(id)s", {"id": lot_id})
    if row is None:
        raise not_found("批号")
    return row


def load_lot(conn: psycopg.Connection, lot_id: int) -> dict[str, Any]:
    """The lot as a booking checks it (expiry, storage mode, doses per vial, product keys), or 404."""
    row = fetch_one(conn, _FOR_BOOKING, {"id": lot_id})
    if row is None:
        raise not_found("批号")
    return row


def list_lots(
    conn: psycopg.Connection,
    *,
    spec_id: int | None,
    lot_no: str | None,
    expires_before: date | None,
    limit: int,
    offset: int,
) -> list[dict[str, Any]]:
    """Lots are province-wide: no jurisdiction filter, only the filters given."""
    where = (
        Filters({"limit": limit, "offset": offset})
        .eq("l.spec_id", "spec", spec_id)
        .eq("l.lot_no", "lot_no", lot_no)
        .before("l.expiry_date", "before", expires_before)
    )
    return fetch_all(
        conn,
        where.query(_LOTS + " WHERE {where} ORDER BY l.expiry_date, l.id LIMIT %(limit)s OFFSET %(offset)s"),
        where.params,
    )


def find_lot(conn: psycopg.Connection, spec_id: int, lot_no: str) -> int | None:
    """The id of a product's lot by its number (unique per product), if entered."""
    row = fetch_one(conn, "SELECT id FROM lots WHERE spec_id = %(s)s AND lot_no = %(l)s", {"s": spec_id, "l": lot_no})
    return None if row is None else int(row["id"])


def check_dates(production: date, expiry: date) -> None:
    """A lot expires after it was made; the database refuses it too, this says so in words."""
    if expiry <= production:
        raise invalid("失效日期必须晚于生产日期")


def create_lot(
    conn: psycopg.Connection,
    *,
    spec_id: int,
    lot_no: str,
    production_date: date,
    expiry_date: date,
    release_no: str,
    unit_id: int,
    user_id: int,
) -> int:
    """A lot is entered once for the whole province: a second entry points at the first."""
    existing = find_lot(conn, spec_id, lot_no)
    if existing is not None:
        raise conflict(
            "lot_exists",
            f"批号 {lot_no} 已由他人录入（全省共享），请直接选用；如信息有误请报错",
            {"lot_id": existing},
        )
    row = fetch_one(
        conn,
        """INSERT INTO lots (spec_id, lot_no, production_date, expiry_date, release_no, unit_id, entered_by)
           VALUES (%(spec)s, %(lot_no)s, %(production)s, %(expiry)s, %(release)s, %(unit)s, %(user)s)
           RETURNING id""",
        {
            "spec": spec_id,
            "lot_no": lot_no,
            "production": production_date,
            "expiry": expiry_date,
            "release": release_no,
            "unit": unit_id,
            "user": user_id,
        },
    )
    assert row is not None
    return int(row["id"])


def revisions(conn: psycopg.Connection, lot_id: int) -> list[dict[str, Any]]:
    """Every earlier version of the lot with who changed it, when and why (the trigger's rows)."""
    return fetch_all(
        conn,
        "SELECT version, data, changed_by, changed_at, reason FROM lot_revisions WHERE lot_id = %(id)s "
        "ORDER BY version",
        {"id": lot_id},
    )


def record_reason(conn: psycopg.Connection, reason: str) -> None:
    """Why this transaction corrects a lot: the revision trigger (migration 0006) stores it."""
    conn.execute("SELECT set_config('coldchain.reason', %s, true)", (reason,))


def store_certificate(conn: psycopg.Connection, lot_id: int, content_type: str, body: bytes, user_id: int) -> None:
    """A new version of the certificate; earlier ones are kept."""
    conn.execute(
        """INSERT INTO lot_certificates (lot_id, content_type, size, sha256, content, uploaded_by)
           VALUES (%s, %s, %s, %s, %s, %s)""",
        (lot_id, content_type, len(body), hashlib.sha256(body).digest(), body, user_id),
    )


def latest_certificate(conn: psycopg.Connection, lot_id: int) -> dict[str, Any] | None:
    """``content_type`` and ``content`` of the newest certificate, if any."""
    return fetch_one(
        conn,
        "SELECT content_type, content FROM lot_certificates WHERE lot_id = %(id)s ORDER BY id DESC LIMIT 1",
        {"id": lot_id},
    )
