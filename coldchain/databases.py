"""Where a command connects: the configured database, or the run command's local one.

Why apart from the CLI: the one-shot commands (:mod:`coldchain.cli`) and the run command
(:mod:`coldchain.run`) find the database, its owner and its runtime login the same way.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass

from coldchain import services
from coldchain.core import db, roles
from coldchain.core.migrate import Migration, migrate
from coldchain.core.settings import Settings

RUN_DATABASE = "coldchain"


@dataclass(frozen=True)
class Database:
    """Where a command connects: ``url`` as the runtime role (services), ``owner_url`` as the owner
    (migrations, the demo, refreshing TimescaleDB's continuous aggregates by hand)."""

    url: str
    owner_url: str
    server: services.Started | None


def database_urls(settings: Settings) -> Database:
    """The configured database, or the run command's local one (its server found or started),
    where the server's superuser is the owner and the login ``coldchain_app`` the runtime role."""
    if settings.database_url:
        return Database(settings.database_url, settings.migration_url or settings.database_url, None)
    server = services.find_postgres(None, settings.state_dir, prefer_docker=False)
    if not db.database_exists(server.url, RUN_DATABASE):
        db.create_database(server.url, RUN_DATABASE)
    owner = db.with_database(server.url, RUN_DATABASE)
    ensure_embedded_runtime(owner)
    return Database(roles.with_role(owner, roles.DEFAULT_RUNTIME_LOGIN), owner, server)


def ensure_embedded_runtime(owner_url: str) -> None:
    """On the embedded default the run command sets the runtime login up itself (its group role
    exists once migration 0012 ran; before that there is nothing a service could do anyway)."""
    with db.connect(owner_url, autocommit=True, application="coldchain-cli") as conn:
        group = conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (roles.RUNTIME_GROUP,)).fetchone()
    if group is not None:
        roles.ensure_runtime_login(owner_url)


@contextlib.contextmanager
def opened(settings: Settings) -> Iterator[Database]:
    """For one-shot commands: the database, and any server started for it stopped after."""
    database = database_urls(settings)
    try:
        yield database
    finally:
        if database.server and not database.server.reused:
            database.server.stop()


def migrate_as_owner(settings: Settings, database: Database) -> list[Migration]:
    """Migrate as the owner; on the embedded default, then make sure the runtime login exists."""
    applied = migrate(database.owner_url, timescaledb=settings.timescaledb)
    if database.server is not None:
        roles.ensure_runtime_login(database.owner_url)
    return applied
