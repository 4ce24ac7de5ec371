"""The database roles of a test: fixtures set data up as the owner (the server's superuser, which
migrated the database), while every service under test — API, ingester, scheduler, CLI
services — connects as the runtime role, as in production, so a missing grant fails a test."""

from __future__ import annotations

import contextlib
import threading

import psycopg

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
