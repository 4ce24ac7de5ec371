"""Per-request plumbing: one pooled connection and transaction per request, and the signed-in user.

Each request runs in one transaction (committed when the route returns, rolled back when it
raises), and the acting user is set on it with ``set_config('coldchain.actor_id', …, true)``
so that the audit triggers of migration 0004 record who made every write.
"""

from __future__ import annotations

import hmac
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Annotated, Any, Literal

import psycopg
from fastapi import Depends, Request
from psycopg import sql

from coldchain.core.db import fetch_one
from coldchain.core.errors import Refused, forbidden
from coldchain.core.terms import Role
from coldchain.core.tokens import token_hash
from registry.permissions import Actor, UnitRef, may_write

SESSION_COOKIE = "cc_session"
CSRF_COOKIE = "cc_csrf"
CSRF_HEADER = "X-CSRF-Token"
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


def get_conn(request: Request) -> Iterator[psycopg.Connection]:
    """One pooled connection and transaction per request, committed before the reply exists.

    Why ``scope="function"`` below: FastAPI runs a request-scoped dependency's exit after the
    response has been sent, so a client could be told 201 for a row that was never committed
    (or that a failed commit then lost). With function scope the exit — the pool's commit, or the
    rollback when the route raised — runs as soon as the route returns and before the response
    is sent; a commit that fails (deferred constraint, serialization failure, lost connection)
    raises into the error handlers and the client gets the one error shape, never a 2xx. A
    connection left broken is discarded by the pool on return, and idle ones are checked before
    they are handed out (:func:`coldchain.core.db.pool`)."""
    with request.app.state.pool.connection() as conn:
        yield conn


Conn = Annotated[psycopg.Connection, Depends(get_conn, scope="function")]


def update_versioned(
    conn: psycopg.Connection, table: str, row_id: int, version: int, changes: Mapping[str, Any], what: str
) -> dict[str, Any]:
    """Optimistic concurrency: the update applies only to the version the client read.

    Two administrators editing the same device: the second UPDATE waits for the first's row lock,
    then finds the version moved on and matches nothing — a clear 409, never a lost update.
    ``changes`` keys are model field names (``extra="forbid"`` models), quoted as identifiers."""
    if not changes:
        raise Refused(422, "invalid", "没有需要修改的字段")
    assignments = sql.SQL(", ").join(sql.SQL("{} = {}").format(sql.Identifier(k), sql.Placeholder(k)) for k in changes)
    query = sql.SQL(
        "UPDATE {} SET {}, version = version + 1 WHERE id = %(_id)s AND version = %(_version)s RETURNING *"
    ).format(sql.Identifier(table), assignments)
    row = fetch_one(conn, query, {**changes, "_id": row_id, "_version": version})
    if row is None:
        current = fetch_one(
            conn, sql.SQL("SELECT version FROM {} WHERE id = %(id)s").format(sql.Identifier(table)), {"id": row_id}
        )
        now = current["version"] if current else None
        raise Refused(
            409,
            "version_conflict",
            f"该{what}已被他人修改（当前版本 {now}，您提交的是版本 {version}），请刷新后重试",
            details={"current_version": now, "your_version": version},
        )
    return row


def set_action(conn: psycopg.Connection, action: str) -> None:
    """Name the business action for the audit rows this transaction writes (e.g. ``form3.apply``)."""
    conn.execute("SELECT set_config('coldchain.action', %s, true)", (action,))


@dataclass(frozen=True)
class Principal:
    actor: Actor
    username: str
    real_name: str
    session_id: int
    via: Literal["cookie", "bearer"]

    @property
    def user_id(self) -> int:
        return self.actor.user_id

    @property
    def unit_id(self) -> int:
        return self.actor.unit.id

    @property
    def role(self) -> Role:
        return self.actor.role


_SESSION = """
SELECT s.id AS session_id, s.csrf_hash, u.id AS user_id, u.username, u.real_name, u.role,
       n.id AS unit_id, n.level, n.parent_id
FROM auth_sessions s
JOIN users u ON u.id = s.user_id
JOIN units n ON n.id = u.unit_id
WHERE s.token_hash = %(hash)s AND s.kind = %(kind)s
  AND s.revoked_at IS NULL AND s.expires_at > now() AND u.status = 'active'
"""


def _credentials(request: Request) -> tuple[str, Literal["cookie", "bearer"]] | None:
    header = request.headers.get("authorization", "")
    scheme, _, value = header.partition(" ")
    if scheme.lower() == "bearer" and value.strip():
        return value.strip(), "bearer"
    cookie = request.cookies.get(SESSION_COOKIE)
    if cookie:
        return cookie, "cookie"
    return None


def current_principal(request: Request, conn: Conn) -> Principal:
    creds = _credentials(request)
    if creds is None:
        raise Refused(401, "unauthenticated", "请先登录", headers={"WWW-Authenticate": "Bearer"})
    token, via = creds
    row = fetch_one(conn, _SESSION, {"hash": token_hash(token), "kind": "api" if via == "bearer" else "web"})
    if row is None:
        raise Refused(401, "session_expired", "登录已失效或已过期，请重新登录", headers={"WWW-Authenticate": "Bearer"})
    if via == "cookie" and request.method not in SAFE_METHODS:
        # Cookie-authenticated writes must also carry the token the page read from its own
        # cookie: another site can make the browser send the cookie, but cannot read it.
        sent = request.headers.get(CSRF_HEADER, "")
        if not sent or not hmac.compare_digest(token_hash(sent), bytes(row["csrf_hash"])):
            raise Refused(403, "csrf_failed", f"缺少或错误的 {CSRF_HEADER} 请求头（防跨站请求伪造）")
    conn.execute("SELECT set_config('coldchain.actor_id', %s, true)", (str(row["user_id"]),))
    actor = Actor(row["user_id"], row["role"], UnitRef(row["unit_id"], row["level"], row["parent_id"]))
    return Principal(actor, row["username"], row["real_name"], row["session_id"], via)


CurrentUser = Annotated[Principal, Depends(current_principal)]


def require_writer(principal: Principal) -> None:
    if not may_write(principal.actor):
        raise forbidden("只读角色（督导、分析员）不能修改数据")


# ---------------------------------------------------------------------------------------------
# Jurisdiction: a user sees and changes their own unit and the units below it (UM1, RS1).

_IN_SCOPE = "SELECT 1 FROM unit_tree WHERE ancestor_id = %(scope)s AND descendant_id = %(unit)s"


def unit_in_scope(conn: psycopg.Connection, principal: Principal, unit_id: int | None) -> bool:
    if unit_id is None:
        return principal.actor.unit.level == "province"  # unassigned stock belongs to the province
    return fetch_one(conn, _IN_SCOPE, {"scope": principal.unit_id, "unit": unit_id}) is not None


def require_unit_in_scope(conn: psycopg.Connection, principal: Principal, unit_id: int | None) -> None:
    if not unit_in_scope(conn, principal, unit_id):
        raise Refused(404, "not_found", "单位不存在或不在您的辖区内")
