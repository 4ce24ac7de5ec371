"""Numbered SQL migrations: each applied once, in its own transaction, recorded with a checksum.

Why not an ORM migration tool: the schema has two storage paths chosen inside the SQL itself
(TimescaleDB or plain PostgreSQL), and the same files must also run inside the WASM TimescaleDB
oracle, which only speaks SQL. Plain files with a small runner keep one source of truth.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import psycopg

from coldchain.db import connect
from coldchain.settings import TimescaleMode
from sql import MIGRATIONS_DIR

# pg_advisory_lock key shared by every migrator: two of them racing are serialised, and the
# second finds the work done.
MIGRATION_LOCK_KEY = 0x636F6C64636D6967  # "coldcmig"

_FILE_RE = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")

_BOOTSTRAP = """
CREATE TABLE IF NOT EXISTS schema_migrations (
    version    integer PRIMARY KEY,
    name       text NOT NULL,
    checksum   text NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now()
)
"""


class MigrationError(RuntimeError):
    """The migrations on disk and those recorded in the database do not agree."""


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    path: Path
    sql: str
    checksum: str


@dataclass(frozen=True)
class MigrationState:
    migration: Migration
    applied_at: datetime | None


def discover(directory: Path = MIGRATIONS_DIR) -> list[Migration]:
    found: dict[int, Migration] = {}
    for path in sorted(directory.glob("*.sql")):
        match = _FILE_RE.match(path.name)
        if not match:
            raise MigrationError(f"迁移文件名不符合 NNNN_name.sql 格式：{path.name}")
        version = int(match.group(1))
        if version in found:
            raise MigrationError(f"迁移编号重复：{found[version].path.name} 与 {path.name}")
        data = path.read_bytes()
        found[version] = Migration(
            version=version,
            name=match.group(2),
            path=path,
            sql=data.decode("utf-8"),
            checksum=hashlib.sha256(data).hexdigest(),
        )
    return [found[v] for v in sorted(found)]


def _applied(conn: psycopg.Connection) -> dict[int, tuple[str, str, datetime]]:
    rows = conn.execute("SELECT version, name, checksum, applied_at FROM schema_migrations").fetchall()
    return {int(v): (str(n), str(c), a) for v, n, c, a in rows}


def _check_consistent(migrations: Sequence[Migration], applied: dict[int, tuple[str, str, datetime]]) -> None:
    on_disk = {m.version: m for m in migrations}
    for version, (name, checksum, _) in sorted(applied.items()):
        m = on_disk.get(version)
        if m is None:
            raise MigrationError(
                f"数据库已应用迁移 {version:04d}_{name}，但代码中没有该文件：代码版本比数据库旧，请升级代码"
            )
        if m.checksum != checksum:
            raise MigrationError(
                f"迁移 {m.path.name} 已应用，但文件内容已被修改（校验和不一致）。"
                "已应用的迁移不可修改，请新增一个迁移文件"
            )


def status(url: str, directory: Path = MIGRATIONS_DIR) -> list[MigrationState]:
    migrations = discover(directory)
    with connect(url, autocommit=True, application="coldchain-migrate") as conn:
        conn.execute(_BOOTSTRAP)
        applied = _applied(conn)
    _check_consistent(migrations, applied)
    return [MigrationState(m, applied[m.version][2] if m.version in applied else None) for m in migrations]


def migrate(
    url: str, *, timescaledb: TimescaleMode = "auto", directory: Path = MIGRATIONS_DIR
) -> list[Migration]:
    """Apply what is pending; return what was applied (empty when up to date)."""
    migrations = discover(directory)
    done: list[Migration] = []
    with connect(url, autocommit=True, application="coldchain-migrate") as conn:
        conn.execute("SELECT pg_advisory_lock(%s)", (MIGRATION_LOCK_KEY,))
        try:
            conn.execute(_BOOTSTRAP)
            applied = _applied(conn)
            _check_consistent(migrations, applied)
            for m in migrations:
                if m.version in applied:
                    continue
                try:
                    with conn.transaction():
                        conn.execute("SELECT set_config('coldchain.timescaledb', %s, true)", (timescaledb,))
                        conn.execute(m.sql.encode("utf-8"))
                        conn.execute(
                            "INSERT INTO schema_migrations (version, name, checksum) VALUES (%s, %s, %s)",
                            (m.version, m.name, m.checksum),
                        )
                except psycopg.Error as exc:
                    raise MigrationError(f"迁移 {m.path.name} 执行失败，已整体回滚：{exc}") from exc
                done.append(m)
        finally:
            conn.execute("SELECT pg_advisory_unlock(%s)", (MIGRATION_LOCK_KEY,))
    return done


def require_current(url: str, directory: Path = MIGRATIONS_DIR) -> None:
    """Refuse to start a service on a schema older than its code (it would fail at the first write)."""
    pending = [s.migration.path.name for s in status(url, directory) if s.applied_at is None]
    if pending:
        raise MigrationError(f"数据库结构不是最新（未应用：{'、'.join(pending)}），请先运行 coldchain db migrate")
