"""Users: reading them within the jurisdiction, their WeChat binding (CM15), and the writes Form 5
makes to them (UM2).

A user is never deleted: closing or deleting one changes the status and keeps the row, so the
audit log and every form that names them still resolve.
"""

from __future__ import annotations

from typing import Any

import psycopg

from coldchain.core.db import fetch_all, fetch_one, set_action
from coldchain.core.errors import conflict
from coldchain.core.sqlparts import Filters, in_scope
from coldchain.core.terms import Role
from registry.permissions import UnitRef

_COLUMNS = """
u.id, u.username, u.real_name, u.phone, u.email, u.unit_id, n.name AS unit_name, u.role, u.department, u.status,
u.wechat_openid IS NOT NULL AS wechat_bound, u.created_at, u.version
"""
_FROM = "users u JOIN units n ON n.id = u.unit_id"
_LIST = f"""
SELECT {_COLUMNS} FROM {_FROM} WHERE {{where}}
ORDER BY n.code, u.username
LIMIT %(limit)s OFFSET %(offset)s
"""  # noqa: S608 — constant SQL fragments, parameters bound
_ONE = f"SELECT {_COLUMNS} FROM {_FROM} WHERE u.id = %(id)s AND {in_scope('u.unit_id')}"  # noqa: S608 — constant SQL

_OPENID_TAKEN = "SELECT id FROM users WHERE wechat_openid = %(o)s AND id <> %(id)s"
_INSERT = """
INSERT INTO users (username, real_name, phone, email, unit_id, role, department, created_by)
VALUES (%(username)s, %(real_name)s, %(phone)s, %(email)s, %(unit)s, %(role)s, %(department)s, %(actor)s)
RETURNING id
"""
_CLOSE = "UPDATE users SET status = 'closed', closed_at = now(), version = version + 1 WHERE id = %(id)s"
_DELETE = """
UPDATE users SET status = 'deleted', closed_at = coalesce(closed_at, now()), version = version + 1 WHERE id = %(id)s
"""
_MODIFY = """
UPDATE users SET real_name = coalesce(%(real_name)s, real_name), phone = coalesce(%(phone)s, phone),
                 email = coalesce(%(email)s, email), role = coalesce(%(role)s, role),
                 department = coalesce(%(department)s, department), version = version + 1
WHERE id = %(id)s
"""


def list_users(
    conn: psycopg.Connection,
    scope: UnitRef,
    *,
    unit_id: int | None,
    role: Role | None,
    status: str | None,
    limit: int,
    offset: int,
) -> list[dict[str, Any]]:
    """The users of the units in the jurisdiction of ``scope``, by unit code and username."""
    f = Filters({"scope": scope.id, "limit": limit, "offset": offset}, in_scope("u.unit_id"))
    f.eq("u.unit_id", "unit", unit_id).eq("u.role", "role", role).eq("u.status", "status", status)
    return fetch_all(conn, f.query(_LIST), f.params)


def get_user(conn: psycopg.Connection, scope: UnitRef, user_id: int) -> dict[str, Any] | None:
    """One user of the jurisdiction of ``scope``; None outside it or when there is none."""
    return fetch_one(conn, _ONE, {"id": user_id, "scope": scope.id})


def bind_wechat(conn: psycopg.Connection, user_id: int, openid: str) -> None:
    """Bind the WeChat user ``openid`` to ``user_id``; one WeChat user is one account (409)."""
    if fetch_one(conn, _OPENID_TAKEN, {"o": openid, "id": user_id}):
        raise conflict("wechat_taken", "该微信已绑定其他账号，请先在原账号解除绑定")
    set_action(conn, "user.wechat_bind")
    conn.execute(
        "UPDATE users SET wechat_openid = %s, wechat_bound_at = now(), version = version + 1 WHERE id = %s",
        (openid, user_id),
    )


def unbind_wechat(conn: psycopg.Connection, user_id: int) -> None:
    set_action(conn, "user.wechat_unbind")
    conn.execute(
        "UPDATE users SET wechat_openid = NULL, wechat_bound_at = NULL, version = version + 1 WHERE id = %s",
        (user_id,),
    )


def insert_user(
    conn: psycopg.Connection,
    *,
    username: str,
    real_name: str,
    phone: str,
    unit_id: int,
    role: Role,
    email: str | None = None,
    department: str | None = None,
    created_by: int | None = None,
) -> int:
    """A new active user without a password (they set it with a one-time link); their id."""
    row = fetch_one(
        conn,
        _INSERT,
        {
            "username": username,
            "real_name": real_name,
            "phone": phone,
            "email": email,
            "unit": unit_id,
            "role": role,
            "department": department,
            "actor": created_by,
        },
    )
    assert row is not None
    return int(row["id"])


def end_user(conn: psycopg.Connection, user_id: int, *, delete: bool) -> None:
    """Close the account (``delete``: mark it deleted); the row stays."""
    conn.execute(_DELETE if delete else _CLOSE, {"id": user_id})


def modify_user(
    conn: psycopg.Connection,
    user_id: int,
    *,
    real_name: str | None,
    phone: str | None,
    email: str | None,
    role: Role | None,
    department: str | None,
) -> None:
    """Change the fields given a value (None: keep as is); username and unit never change — a
    move to another unit is a close and an add."""
    conn.execute(
        _MODIFY,
        {
            "id": user_id,
            "real_name": real_name,
            "phone": phone,
            "email": email,
            "role": role,
            "department": department,
        },
    )
