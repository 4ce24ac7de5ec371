"""Error reports on lots: a unit that finds a shared lot wrong cannot correct it (only the province
or whoever entered it may), so it reports the error to the province's queue, which resolves or
dismisses it.
"""

from __future__ import annotations

from typing import Any

import psycopg

from coldchain.core.db import fetch_all, fetch_one
from coldchain.core.errors import conflict, not_found
from coldchain.core.sqlparts import Filters

_REPORTS = """
SELECT r.id, r.lot_id, l.lot_no, r.unit_id, u.name AS unit_name, r.reported_by, r.message, r.state, r.created_at,
       r.resolved_by, r.resolved_at, r.resolution, r.version
FROM lot_error_reports r JOIN lots l ON l.id = r.lot_id JOIN units u ON u.id = r.unit_id
"""


def report(conn: psycopg.Connection, report_id: int) -> dict[str, Any]:
    """One report with its lot number and reporting unit, or 404."""
    row = fetch_one(conn, _REPORTS + " WHERE r.id = %(id)s", {"id": report_id})
    if row is None:
        raise not_found("报错")
    return row


def create_report(conn: psycopg.Connection, lot_id: int, unit_id: int, user_id: int, message: str) -> dict[str, Any]:
    """File a report for the province's queue; it starts ``open``."""
    row = fetch_one(
        conn,
        """INSERT INTO lot_error_reports (lot_id, unit_id, reported_by, message)
           VALUES (%(lot)s, %(unit)s, %(user)s, %(message)s) RETURNING id""",
        {"lot": lot_id, "unit": unit_id, "user": user_id, "message": message},
    )
    assert row is not None
    return report(conn, row["id"])


def list_reports(
    conn: psycopg.Connection, *, unit_id: int | None, state: str | None, limit: int, offset: int
) -> list[dict[str, Any]]:
    """``unit_id`` None: every unit's reports (the province's queue); else that unit's own."""
    where = Filters({"limit": limit, "offset": offset}).eq("r.unit_id", "unit", unit_id).eq("r.state", "state", state)
    return fetch_all(
        conn,
        where.query(_REPORTS + " WHERE {where} ORDER BY r.created_at, r.id LIMIT %(limit)s OFFSET %(offset)s"),
        where.params,
    )


def require_open(conn: psycopg.Connection, report_id: int) -> None:
    """A report is decided once."""
    row = fetch_one(conn, "SELECT state FROM lot_error_reports WHERE id = %(id)s", {"id": report_id})
    if row is None:
        raise not_found("报错")
    if row["state"] != "open":
        raise conflict("already_decided", "该报错已处理")
