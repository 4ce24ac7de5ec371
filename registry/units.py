"""Units and the jurisdiction they span: a user sees and changes their own unit and the units below
it (UM1, RS1), and hardware or rows with no unit are the province's.

The jurisdiction test lives here once, for the web layer's checks (``api/deps.py``) and for the
domain's own (Form 5 asks whether a user is under the applying unit); every listing of units
goes through :class:`~coldchain.core.sqlparts.Filters`, so a filter the client left out is not
in the query at all.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import psycopg

from coldchain.core.db import fetch_all, fetch_one, set_action, update_versioned
from coldchain.core.errors import not_found
from coldchain.core.sqlparts import Filters, in_scope
from coldchain.core.terms import Level
from registry.permissions import UnitRef

# Is %(unit)s the unit %(scope)s or below it.
_WITHIN = f"SELECT 1 FROM units u WHERE u.id = %(unit)s AND {in_scope('u.id')}"  # noqa: S608 — constant SQL

_COLUMNS = "u.id, u.code, u.name, u.level, u.parent_id, u.address, u.phone, u.active, u.version"
_LIST = f"SELECT {_COLUMNS} FROM units u WHERE {{where}} ORDER BY u.code LIMIT %(limit)s OFFSET %(offset)s"  # noqa: S608 — constant SQL
_ONE = f"SELECT {_COLUMNS} FROM units u WHERE u.id = %(id)s AND {in_scope('u.id')}"  # noqa: S608 — constant SQL


def within(conn: psycopg.Connection, scope: int, unit_id: int) -> bool:
    """Is ``unit_id`` the unit ``scope`` or one below it (following parent links, never codes)?"""
    return fetch_one(conn, _WITHIN, {"scope": scope, "unit": unit_id}) is not None


def in_jurisdiction(conn: psycopg.Connection, scope: UnitRef, unit_id: int | None) -> bool:
    """Is ``unit_id`` within the jurisdiction of ``scope``? No unit (unassigned hardware or stock)
    belongs to the province."""
    if unit_id is None:
        return scope.level == "province"
    return within(conn, scope.id, unit_id)


def require_in_jurisdiction(conn: psycopg.Connection, scope: UnitRef, unit_id: int | None) -> None:
    """404 for a unit outside the jurisdiction: it looks exactly like one that does not exist."""
    if not in_jurisdiction(conn, scope, unit_id):
        raise not_found("单位")


def in_scope_or_unassigned(column: str, scope: UnitRef) -> str:
    """``column`` within the jurisdiction of ``scope``; rows with no unit count too when ``scope``
    is the province. The query binds ``scope`` to ``scope.id``; ``column`` is a caller's constant."""
    if scope.level == "province":
        return f"({in_scope(column)} OR {column} IS NULL)"
    return in_scope(column)


def list_units(
    conn: psycopg.Connection,
    scope: UnitRef,
    *,
    level: Level | None,
    parent_id: int | None,
    limit: int,
    offset: int,
) -> list[dict[str, Any]]:
    """The units of the jurisdiction, by code."""
    f = Filters({"scope": scope.id, "limit": limit, "offset": offset}, in_scope("u.id"))
    f.eq("u.level", "level", level).eq("u.parent_id", "parent", parent_id)
    return fetch_all(conn, f.query(_LIST), f.params)


def get_unit(conn: psycopg.Connection, scope: UnitRef, unit_id: int) -> dict[str, Any] | None:
    """One unit of the jurisdiction; None outside it or when there is no such unit."""
    return fetch_one(conn, _ONE, {"scope": scope.id, "id": unit_id})


def update_unit(conn: psycopg.Connection, unit_id: int, version: int, changes: Mapping[str, Any]) -> None:
    """Name, address or phone, at the version the client read (409 otherwise)."""
    set_action(conn, "unit.update")
    update_versioned(conn, "units", unit_id, version, changes, "单位")
