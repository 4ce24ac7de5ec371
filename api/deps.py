"""Per-request plumbing: one pooled connection and transaction per request, the signed-in user,
and the jurisdiction checks every route makes.

Each request runs in one transaction (committed when the route returns, rolled back when it
raises), and the acting user is named on it (:func:`coldchain.core.db.set_actor`) so that the
audit triggers of migration 0004 record who made every write. The queries behind a session and a
jurisdiction are the registry's (:mod:`registry.sessions`, :mod:`registry.units`); this module
only reads the request and answers with the one error shape.

Reads that may be a few seconds old — monthly reports, the devices' history — take a second
connection, :data:`ReadConn`, from the streaming replica when ``COLDCHAIN_READ_DATABASE_URL`` is
set (issue #18), and say how old in the :data:`LAG_HEADER` response header.
"""

from __future__ import annotations

import contextlib
import hmac
import logging
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Annotated, Literal

import psycopg
from fastapi import Depends, Request, Response
from psycopg_pool import ConnectionPool, PoolTimeout

from coldchain.core.db import format_lag, measure_lag, set_actor
from coldchain.core.db import set_action as set_action
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


# ---------------------------------------------------------------------------------------------
# Reads from a streaming replica (issue #18, COLDCHAIN_READ_DATABASE_URL)

log = logging.getLogger("coldchain.api")

LAG_HEADER = "X-Coldchain-Replica-Lag"
"""On every answer read from the replica: how many seconds behind the primary its data may be
(``0``: it has replayed all it received). Absent: the answer was read from the primary."""

READ_WAIT = 5.0
"""How long a request waits for a replica connection before it reads the primary instead: a
replica that is down must slow reports and charts down, not take them away."""


@dataclass(frozen=True)
class ReplicaRead:
    """This request read from the replica; ``lag`` as measured when its transaction began."""

    lag: float | None


_warned_at = 0.0
_warn_lock = threading.Lock()


def _warn_fallback(reason: str) -> None:
    """Once a minute at most: during an outage every report and chart request falls back."""
    global _warned_at
    with _warn_lock:
        if time.monotonic() - _warned_at < 60:
            return
        _warned_at = time.monotonic()
    log.warning(
        "只读副本暂时不可用（%s）：报告与历史曲线改由主库提供，副本恢复后自动改回（COLDCHAIN_READ_DATABASE_URL）",
        reason,
    )


def _replica_connection(read_pool: ConnectionPool) -> tuple[psycopg.Connection, float | None] | None:
    """A read-only connection of the replica's pool and its lag, or None when the replica cannot
    serve now (no connection within :data:`READ_WAIT`, or lost at its first query)."""
    try:
        read = read_pool.getconn(timeout=READ_WAIT)
    except PoolTimeout:
        _warn_fallback(f"{READ_WAIT:g} 秒内没有可用连接")
        return None
    try:
        # BEGIN READ ONLY: on a replica every transaction is, and a read URL that names a
        # primary by mistake must not let a "read" route write either.
        read.read_only = True
        lag = measure_lag(read)
    except psycopg.Error as exc:
        _give_back(read_pool, read)
        _warn_fallback(type(exc).__name__)
        return None
    return read, lag


def _give_back(read_pool: ConnectionPool, read: psycopg.Connection) -> None:
    """End the read transaction (nothing to commit) and return the connection; a broken one is
    discarded by the pool."""
    with contextlib.suppress(psycopg.Error):
        read.rollback()
    read_pool.putconn(read)


def get_read_conn(request: Request, response: Response, conn: Conn) -> Iterator[psycopg.Connection]:
    """A connection for reads that tolerate being a few seconds old: monthly reports and the
    devices' history. With ``COLDCHAIN_READ_DATABASE_URL`` set it is a read-only transaction on
    the streaming replica, and the answer carries :data:`LAG_HEADER` (set here for routes that
    return a model; :func:`lag_headers` for those that build their own response); unset, or with
    the replica unavailable, it is the request's own connection to the primary — the same
    transaction, not a second connection, so a request never holds two of the primary's pool
    (which, under load, could wait on itself).

    Sign-in and jurisdiction checks stay on ``conn`` (the primary): a session just ended or a
    user just moved must count at once. Anything that writes uses ``conn`` too."""
    request.state.replica = None
    read_pool: ConnectionPool | None = getattr(request.app.state, "read_pool", None)
    opened = _replica_connection(read_pool) if read_pool is not None else None
    if read_pool is None or opened is None:
        yield conn
        return
    read, lag = opened
    request.state.replica = ReplicaRead(lag)
    if lag is not None:
        response.headers[LAG_HEADER] = format_lag(lag)
    try:
        yield read
    finally:
        _give_back(read_pool, read)


ReadConn = Annotated[psycopg.Connection, Depends(get_read_conn, scope="function")]


def replica_read(request: Request) -> ReplicaRead | None:
    """The replica this request read from, or None when it read the primary."""
    found = getattr(request.state, "replica", None)
    return found if isinstance(found, ReplicaRead) else None


def lag_headers(request: Request) -> dict[str, str]:
    """:data:`LAG_HEADER` for a route or page that returns its own ``Response`` (FastAPI does not
    copy a dependency's headers onto those)."""
    read = replica_read(request)
    return {LAG_HEADER: format_lag(read.lag)} if read is not None and read.lag is not None else {}


def served_by_primary(request: Request, response: Response) -> None:
    """A route that took a ``ReadConn`` but answered from the primary after all (a final month's
    report generated and kept there) says so: no lag header, no replica note."""
    request.state.replica = None
    if LAG_HEADER in response.headers:
        del response.headers[LAG_HEADER]


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
