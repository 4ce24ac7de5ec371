"""Database access shared by every part of the system.

One place opens connections, so that every connection carries an application name (visible in
``pg_stat_activity`` when an analyst asks "who is holding this lock?") and the session time zone
is UTC: values are stored as timestamptz and the code does its own Asia/Shanghai conversion
where a day or month is meant, so the server's zone setting never changes a figure.

The audit naming (:func:`set_actor`, :func:`set_action`) and the optimistic-concurrency update
(:func:`update_versioned`) are here too, because every domain writes through them: a domain must
be able to name what it does without importing the web layer.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal
from urllib.parse import urlsplit, urlunsplit

import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from psycopg.rows import dict_row
from psycopg_pool import ConnectionPool

from coldchain.core.errors import Refused

StoragePath = Literal["timescaledb", "postgresql"]


def connect(url: str, *, autocommit: bool = False, application: str = "coldchain") -> psycopg.Connection:
    return psycopg.connect(
        url,
        autocommit=autocommit,
        application_name=application,
        options="-c timezone=UTC",
    )


async def connect_async(
    url: str, *, autocommit: bool = False, application: str = "coldchain"
) -> psycopg.AsyncConnection:
    """The asyncio twin of :func:`connect`, with the same session settings."""
    return await psycopg.AsyncConnection.connect(
        url,
        autocommit=autocommit,
        application_name=application,
        options="-c timezone=UTC",
    )


def pool(url: str, *, application: str, min_size: int = 1, max_size: int = 10) -> ConnectionPool:
    """A connection pool for a long-lived service, with the same session settings as :func:`connect`.

    Opened by the caller (``pool.open(wait=True)``) so that a wrong URL fails at start-up.
    ``check``: an idle connection whose server went away (restart, ``pg_terminate_backend``, a
    dropped network path) is found dead before it is handed out, and replaced, instead of
    failing the next request."""
    return ConnectionPool(
        url,
        min_size=min_size,
        max_size=max_size,
        kwargs={"application_name": application, "options": "-c timezone=UTC"},
        check=ConnectionPool.check_connection,
        open=False,
    )


def fetch_all(
    conn: psycopg.Connection, query: str | sql.Composable, params: Mapping[str, Any] | None = None
) -> list[dict[str, Any]]:
    """Rows as dicts, for code that reads columns by name (the API, the scheduler)."""
    with conn.cursor(row_factory=dict_row) as cur:
        cur.execute(query, params)  # type: ignore[arg-type]  # queries are module constants or sql.Composed
        return cur.fetchall()


def fetch_one(
    conn: psycopg.Connection, query: str | sql.Composable, params: Mapping[str, Any] | None = None
) -> dict[str, Any] | None:
    with conn.cursor(row_factory=dict_row) as cur:
        cur.execute(query, params)  # type: ignore[arg-type]
        return cur.fetchone()


def set_actor(conn: psycopg.Connection, user_id: int) -> None:
    """Name the acting user for the audit triggers of migration 0004 (this transaction only)."""
    conn.execute("SELECT set_config('coldchain.actor_id', %s, true)", (str(user_id),))


def set_action(conn: psycopg.Connection, action: str) -> None:
    """Name the business action for the audit rows this transaction writes (e.g. ``form3.apply``)."""
    conn.execute("SELECT set_config('coldchain.action', %s, true)", (action,))


def update_versioned(
    conn: psycopg.Connection, table: str, row_id: int, version: int, changes: Mapping[str, Any], what: str
) -> dict[str, Any]:
    """Optimistic concurrency: the update applies only to the version the client read.

    Two administrators editing the same device: the second UPDATE waits for the first's row lock,
    then finds the version moved on and matches nothing — a clear 409, never a lost update.
    ``table`` is a caller's constant; ``changes`` keys are model field names (``extra="forbid"``
    models), quoted as identifiers."""
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


def with_database(url: str, dbname: str) -> str:
    """The same server and credentials as ``url``, another database."""
    if url.startswith(("postgresql://", "postgres://")):
        parts = urlsplit(url)
        return urlunsplit((parts.scheme, parts.netloc, "/" + dbname, parts.query, parts.fragment))
    params = conninfo_to_dict(url)
    params["dbname"] = dbname
    return make_conninfo(**params)  # type: ignore[arg-type]


def database_name(url: str) -> str:
    return str(conninfo_to_dict(url).get("dbname") or "")


def database_exists(server_url: str, dbname: str) -> bool:
    with connect(server_url, autocommit=True) as conn:
        row = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (dbname,)).fetchone()
    return row is not None


def create_database(server_url: str, dbname: str, *, template: str = "template0") -> None:
    """``template`` lets the tests copy one migrated database instead of migrating each one."""
    with connect(server_url, autocommit=True) as conn:
        conn.execute(
            sql.SQL("CREATE DATABASE {} ENCODING 'UTF8' TEMPLATE {}").format(
                sql.Identifier(dbname), sql.Identifier(template)
            )
        )


def drop_database(server_url: str, dbname: str) -> None:
    with connect(server_url, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(dbname)))


def storage_path(conn: psycopg.Connection) -> StoragePath:
    """Which path the schema was built on (decided once by migration 0001)."""
    row = conn.execute("SELECT cc_timescaledb()").fetchone()
    return "timescaledb" if row and row[0] else "postgresql"


# Seconds behind the primary, as of the start of the read transaction. Caught up (all WAL
# received has been replayed) is 0 even when the last replayed commit is old: an idle primary
# writes nothing new. Otherwise, the age of the last transaction replayed: what the primary
# committed since then is not visible yet. Not in recovery (the URL names a primary): 0, never
# stale. NULL: behind, and no transaction replayed since the replica started (age unknown).
# The API's lag header (api/deps.py) and ``coldchain doctor`` (coldchain/doctor_db.py) report it.
_LAG_SQL = """
SELECT CASE
    WHEN NOT pg_is_in_recovery() THEN 0
    WHEN pg_last_wal_receive_lsn() IS NOT DISTINCT FROM pg_last_wal_replay_lsn() THEN 0
    ELSE greatest(0, extract(epoch FROM now() - pg_last_xact_replay_timestamp()))::float8
END
"""


def measure_lag(conn: psycopg.Connection) -> float | None:
    """How stale reads on ``conn`` may be, in seconds (see ``_LAG_SQL``); None when unknown."""
    row = conn.execute(_LAG_SQL).fetchone()
    return None if row is None or row[0] is None else float(row[0])


def format_lag(lag: float) -> str:
    """The header's value: ``0`` when caught up, else seconds with one decimal."""
    return "0" if lag == 0 else f"{lag:.1f}"
