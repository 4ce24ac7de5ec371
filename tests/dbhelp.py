"""The database roles of a test: fixtures set data up as the owner (the server's superuser, which
migrated the database), while every service under test — API, ingester, scheduler, CLI
services — connects as the runtime role, as in production, so a missing grant fails a test."""

from __future__ import annotations

import contextlib
import os
import secrets
import threading
from typing import Any

import psycopg
from psycopg.rows import dict_row

from coldchain.core import db, roles

_ready: set[str] = set()
_lock = threading.Lock()


def as_runtime(url: str) -> str:
    """``url`` (an owner's URL of a migrated test database) as the runtime login ``coldchain_app``.

    The login is cluster-wide: made once per server and run (idempotent, tolerant of a parallel
    run doing the same); its privileges come from the group role of migration 0012."""
    server = url.rsplit("/", 1)[0]
    with _lock:
        if server not in _ready:
            with db.connect(url, autocommit=True) as conn:  # a test may come before any migration
                exists = conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (roles.RUNTIME_GROUP,)).fetchone()
                if exists is None:
                    with contextlib.suppress(psycopg.errors.DuplicateObject, psycopg.errors.UniqueViolation):
                        conn.execute(f"CREATE ROLE {roles.RUNTIME_GROUP} NOLOGIN")
            roles.ensure_runtime_login(url)
            _ready.add(server)
    return roles.with_role(url, roles.DEFAULT_RUNTIME_LOGIN)


RUN_ID = f"{os.getpid()}_{secrets.token_hex(3)}"


class DatabaseFactory:
    """Creates databases named after this run and drops every one of them at the end."""

    def __init__(self, server_url: str) -> None:
        self.server_url = server_url
        self.created: list[str] = []

    def create(self, template: str | None = None) -> str:
        name = f"cc_test_{RUN_ID}_{len(self.created)}"
        db.create_database(self.server_url, name, template=template or "template0")
        self.created.append(name)
        return db.with_database(self.server_url, name)

    def drop_all(self) -> None:
        for name in reversed(self.created):
            db.drop_database(self.server_url, name)


Rows = list[dict[str, Any]]


def query(url: str, sql: str) -> Rows:
    with db.connect(url, autocommit=True) as conn, conn.cursor(row_factory=dict_row) as cur:
        return list(cur.execute(sql.encode()).fetchall())


def execute(url: str, sql: str) -> None:
    with db.connect(url, autocommit=True) as conn:
        conn.execute(sql.encode())


# Table privileges and the letter each is written as in :func:`table_privileges`.
PRIVILEGES = {
    "SELECT": "S",
    "INSERT": "I",
    "UPDATE": "U",
    "DELETE": "D",
    "TRUNCATE": "T",
    "TRIGGER": "G",
    "REFERENCES": "R",
}


def table_privileges(conn: psycopg.Connection) -> dict[str, str]:
    """What the connection's role may do to each table and view of schemas public and analytics,
    as letters of :data:`PRIVILEGES` (``"SI"``: select and insert) — the grant matrix of
    tests/core/test_roles.py in a form another test can compare: the backup drill
    (tests/ops/test_backup_restore.py) checks that a restored database grants what the original did."""
    rows = conn.execute(
        """SELECT c.oid::regclass::text,
                  coalesce(string_agg(p.letter, '' ORDER BY p.ord)
                           FILTER (WHERE has_table_privilege(c.oid, p.privilege)), '')
           FROM pg_class c
           JOIN pg_namespace n ON n.oid = c.relnamespace
           CROSS JOIN unnest(%s::text[], %s::text[]) WITH ORDINALITY AS p(privilege, letter, ord)
           WHERE n.nspname IN ('public', 'analytics') AND c.relkind IN ('r', 'p', 'v', 'm')
           GROUP BY 1 ORDER BY 1""",
        (list(PRIVILEGES), list(PRIVILEGES.values())),
    ).fetchall()
    return {table: letters for table, letters in rows}
