"""Per-request plumbing: one pooled connection and transaction per request, the signed-in user,
and the jurisdiction checks every route makes.

Each request runs in one transaction (committed when the route returns, rolled back when it
raises), and the acting user is named on it (:func:`coldchain.core.db.set_actor`) so that the
audit triggers of migration 0004 record who made every write. The queries behind a session and a
jurisdiction are the registry's (:mod:`registry.sessions`, :mod:`registry.units`); this module
only reads the request and answers with the one error shape.
"""

from __future__ import annotations

import hmac
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Annotated, Literal

import psycopg
from fastapi import Depends, Request

from coldchain.core.db import set_action as set_action
from coldchain.core.db import set_actor
from coldchain.core.db import update_versioned as update_versioned
from coldchain.core.errors import Refused
from coldchain.core.terms import Role
from coldchain.core.tokens import token_hash
from registry.permissions import Actor, UnitRef, require_may_write
from registry.sessions import live_session
from registry.units import in_jurisdiction, require_in_jurisdiction

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
    row = live_session(conn, token, "api" if via == "bearer" else "web")
    if row is None:
        raise Refused(401, "session_expired", "登录已失效或已过期，请重新登录", headers={"WWW-Authenticate": "Bearer"})
    if via == "cookie" and request.method not in SAFE_METHODS:
        # Cookie-authenticated writes must also carry the token the page read from its own
        # cookie: another site can make the browser send the cookie, but cannot read it.
        sent = request.headers.get(CSRF_HEADER, "")
        if not sent or not hmac.compare_digest(token_hash(sent), bytes(row["csrf_hash"])):
            raise Refused(403, "csrf_failed", f"缺少或错误的 {CSRF_HEADER} 请求头（防跨站请求伪造）")
    set_actor(conn, row["user_id"])
    actor = Actor(row["user_id"], row["role"], UnitRef(row["unit_id"], row["level"], row["parent_id"]))
    return Principal(actor, row["username"], row["real_name"], row["session_id"], via)


CurrentUser = Annotated[Principal, Depends(current_principal)]


def require_writer(principal: Principal) -> None:
    """403 for a read-only role (supervisor, analyst): only administrators change data (RS1)."""
    require_may_write(principal.actor)


# ---------------------------------------------------------------------------------------------
# Jurisdiction: a user sees and changes their own unit and the units below it (UM1, RS1).


def unit_in_scope(conn: psycopg.Connection, principal: Principal, unit_id: int | None) -> bool:
    """Is ``unit_id`` in the user's jurisdiction? None (unassigned stock or hardware) is the province's."""
    return in_jurisdiction(conn, principal.actor.unit, unit_id)


def require_unit_in_scope(conn: psycopg.Connection, principal: Principal, unit_id: int | None) -> None:
    """404 for a unit outside the jurisdiction, the same answer as for one that does not exist."""
    require_in_jurisdiction(conn, principal.actor.unit, unit_id)


def require_filter_in_scope(conn: psycopg.Connection, principal: Principal, unit_id: int | None) -> None:
    """A list filter naming a unit outside the jurisdiction is refused like any other id (404),
    not answered with an empty list that would read as "this unit has nothing"; no filter is fine."""
    if unit_id is not None:
        require_unit_in_scope(conn, principal, unit_id)
