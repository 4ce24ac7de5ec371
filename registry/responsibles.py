"""The three levels of responsibility per unit (CM15): who is told of an alarm, and when.

Kept with the registry because they are a unit's users; the alarm domain only reads them. A
unit's list is replaced as a whole, and a closed or deleted user leaves every list they were on.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import psycopg

from coldchain.core.db import fetch_all, set_action
from coldchain.core.errors import invalid

_LIST = """
SELECT r.level, u.id AS user_id, u.username, u.real_name, u.phone, u.wechat_openid IS NOT NULL AS wechat_bound
FROM unit_responsibles r JOIN users u ON u.id = r.user_id
WHERE r.unit_id = %(unit)s ORDER BY r.level, u.username
"""
_ACTIVE_MEMBERS = "SELECT id FROM users WHERE id = ANY(%(ids)s) AND unit_id = %(unit)s AND status = 'active'"
_DROP_USER = "DELETE FROM unit_responsibles WHERE user_id = %(id)s RETURNING unit_id, level"


def responsibles(conn: psycopg.Connection, unit_id: int) -> list[dict[str, Any]]:
    """The unit's responsibles, level by level."""
    return fetch_all(conn, _LIST, {"unit": unit_id})


def replace_responsibles(
    conn: psycopg.Connection, unit_id: int, wanted: Sequence[tuple[int, int]]
) -> list[dict[str, Any]]:
    """Make ``wanted`` — (level, user id) pairs — the unit's responsibles; each must be an active
    account of the unit itself (422 naming those that are not)."""
    ids = sorted({u for _, u in wanted})
    found = fetch_all(conn, _ACTIVE_MEMBERS, {"ids": ids, "unit": unit_id})
    missing = sorted(set(ids) - {r["id"] for r in found})
    if missing:
        raise invalid(
            f"负责人必须是本单位的在用账号：用户 {', '.join(map(str, missing))} 不符合", {"user_ids": missing}
        )
    set_action(conn, "unit.responsibles")
    conn.execute("SELECT 1 FROM units WHERE id = %s FOR UPDATE", (unit_id,))
    conn.execute("DELETE FROM unit_responsibles WHERE unit_id = %s", (unit_id,))
    with conn.cursor() as cur:
        cur.executemany(
            "INSERT INTO unit_responsibles (unit_id, level, user_id) VALUES (%s, %s, %s)",
            [(unit_id, lvl, uid) for lvl, uid in wanted],
        )
    return responsibles(conn, unit_id)


def drop_user(conn: psycopg.Connection, user_id: int) -> list[tuple[int, int]]:
    """Take a user off every unit's levels; the (unit id, level) pairs they held, sorted."""
    return sorted({(r["unit_id"], r["level"]) for r in fetch_all(conn, _DROP_USER, {"id": user_id})})
