"""Numbered SQL migrations: each applied once, in its own transaction, recorded with a checksum.

Why not an ORM migration tool: the schema has two storage paths chosen inside the SQL itself
(TimescaleDB or plain PostgreSQL), and the same files must also run inside the WASM TimescaleDB
oracle, which only speaks SQL. Plain files with a small runner keep one source of truth.
"""

from __future__ import annotations

import hashlib
import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import psycopg

from coldchain.core.db import connect
from coldchain.core.settings import TimescaleMode
from sql import MIGRATIONS_DIR

log = logging.getLogger(__name__)

# pg_advisory_lock key shared by every migrator: two of them racing are serialised, and the
# second finds the work done.
MIGRATION_LOCK_KEY = 0x636F6C64636D6967  # "coldcmig"

_FILE_RE = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")

# The migration that decides the storage path (it creates the timescaledb extension, or not).
STORAGE_PATH_MIGRATION = 1

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


# ---------------------------------------------------------------------------------------------
# Whether 0001 may try TimescaleDB. With the package installed but the library not preloaded,
# CREATE EXTENSION timescaledb fails in a way 0001's EXCEPTION block does not contain (seen on a
# real 2.28.3 server: the migration stopped, once with the connection closed), so the migrator
# asks the server first and tells 0001 which path to take.

NOT_PRELOADED_WARNING = (
    "服务器已安装 timescaledb 扩展，但它不在 shared_preload_libraries 中（未预加载），"
    "本库改用普通 PostgreSQL 存储路径。若要使用 TimescaleDB：在 postgresql.conf 的 "
    "shared_preload_libraries 中加入 timescaledb 并重启 PostgreSQL，再对一个新库运行 coldchain db migrate"
    "（存储路径在首次迁移时确定，之后不再改变）"
)
NOT_PRELOADED_REFUSAL = (
    "要求使用 TimescaleDB（COLDCHAIN_TIMESCALEDB=require），但 timescaledb 扩展未预加载（不在 "
    "shared_preload_libraries 中）。请在 postgresql.conf 的 shared_preload_libraries 中加入 timescaledb，"
    "重启 PostgreSQL 后重新运行 coldchain db migrate"
)
NOT_OFFERED_REFUSAL = (
    "要求使用 TimescaleDB（COLDCHAIN_TIMESCALEDB=require），但数据库服务器没有提供 timescaledb 扩展（未安装其软件包）"
)


@dataclass(frozen=True)
class TimescaleServer:
    """What the server says about TimescaleDB, before 0001 runs."""

    offered: bool  # in pg_available_extensions: the package is installed
    created: bool  # in pg_extension: already created in this database
    preloaded: bool  # the loader is in shared_preload_libraries


def preload_libraries(value: str) -> list[str]:
    """The library names of a ``shared_preload_libraries`` value, split as PostgreSQL splits it:
    comma-separated, blanks around an item ignored, an item in double quotes may hold commas and
    blanks (``""`` is a quote). An item may be a path or carry the file suffix: each of
    ``timescaledb``, ``"timescaledb"``, ``$libdir/timescaledb`` and ``/usr/lib/x/timescaledb.so``
    names the library ``timescaledb``."""
    names: list[str] = []
    i, n = 0, len(value)
    while i < n:
        while i < n and value[i].isspace():
            i += 1
        if i < n and value[i] == '"':
            item, i = [], i + 1
            while i < n and not (value[i] == '"' and value[i + 1 : i + 2] != '"'):
                item.append(value[i])
                i += 2 if value[i] == '"' else 1
            name = "".join(item)
            i = value.find(",", i)
        else:
            end = value.find(",", i)
            name = value[i : n if end < 0 else end].strip()
            i = end
        if name:
            base = re.split(r"[/\\]", name)[-1]
            names.append(re.sub(r"\.(so|dylib|dll)$", "", base))
        if i < 0:
            break
        i += 1
    return names


def timescale_server(conn: psycopg.Connection) -> TimescaleServer:
    """Ask the server (autocommit connection). Only superusers and members of pg_read_all_settings
    may read shared_preload_libraries; for another owner the loader's own setting tells instead:
    a preloaded loader defines timescaledb.disable_load in every backend, and pg_settings lists
    no setting of a library that is not loaded."""
    row = conn.execute(
        "SELECT EXISTS (SELECT FROM pg_available_extensions WHERE name = 'timescaledb'),"
        "       EXISTS (SELECT FROM pg_extension WHERE extname = 'timescaledb')"
    ).fetchone()
    assert row is not None
    try:
        setting = conn.execute("SELECT current_setting('shared_preload_libraries')").fetchone()
        assert setting is not None
        preloaded = "timescaledb" in preload_libraries(str(setting[0]))
    except psycopg.errors.InsufficientPrivilege:
        defined = conn.execute(
            "SELECT EXISTS (SELECT FROM pg_settings WHERE name = 'timescaledb.disable_load')"
        ).fetchone()
        preloaded = defined == (True,)
    return TimescaleServer(offered=bool(row[0]), created=bool(row[1]), preloaded=preloaded)


def storage_choice(mode: TimescaleMode, server: TimescaleServer) -> tuple[TimescaleMode, str | None]:
    """What 0001 is told (``coldchain.timescaledb``) and the warning to show, for ``mode`` on this
    server; MigrationError when ``require`` cannot be met. ``auto`` tries TimescaleDB only where
    trying can work; an extension already created (by a DBA, say) is used as it is."""
    if mode == "off" or server.created:
        return mode, None
    if not server.offered:
        if mode == "require":
            raise MigrationError(NOT_OFFERED_REFUSAL)
        return "off", None
    if not server.preloaded:
        if mode == "require":
            raise MigrationError(NOT_PRELOADED_REFUSAL)
        return "off", NOT_PRELOADED_WARNING
    return mode, None


def status(url: str, directory: Path = MIGRATIONS_DIR) -> list[MigrationState]:
    migrations = discover(directory)
    with connect(url, autocommit=True, application="coldchain-migrate") as conn:
        # Read-only: the runtime role, which checks this at every service start, may not create
        # tables; an unmigrated database simply has everything pending.
        exists = conn.execute("SELECT to_regclass('schema_migrations') IS NOT NULL").fetchone()
        applied = _applied(conn) if exists and exists[0] else {}
    _check_consistent(migrations, applied)
    return [MigrationState(m, applied[m.version][2] if m.version in applied else None) for m in migrations]


def migrate(url: str, *, timescaledb: TimescaleMode = "auto", directory: Path = MIGRATIONS_DIR) -> list[Migration]:
    """Apply what is pending; return what was applied (empty when up to date)."""
    migrations = discover(directory)
    done: list[Migration] = []
    with connect(url, autocommit=True, application="coldchain-migrate") as conn:
        conn.execute("SELECT pg_advisory_lock(%s)", (MIGRATION_LOCK_KEY,))
        try:
            conn.execute(_BOOTSTRAP)
            applied = _applied(conn)
            _check_consistent(migrations, applied)
            mode = timescaledb
            if STORAGE_PATH_MIGRATION not in applied and any(m.version == STORAGE_PATH_MIGRATION for m in migrations):
                mode, warning = storage_choice(timescaledb, timescale_server(conn))
                if warning:
                    log.warning("%s", warning)
            for m in migrations:
                if m.version in applied:
                    continue
                try:
                    with conn.transaction():
                        conn.execute("SELECT set_config('coldchain.timescaledb', %s, true)", (mode,))
                        conn.execute(m.sql.encode("utf-8"))
                        conn.execute(
                            "INSERT INTO schema_migrations (version, name, checksum) VALUES (%s, %s, %s)",
                            (m.version, m.name, m.checksum),
                        )
                except psycopg.Error as exc:
                    raise MigrationError(f"迁移 {m.path.name} 执行失败，已整体回滚：{exc}") from exc
                done.append(m)
        finally:
            # A connection the server closed (a crashing extension, say) holds no lock any more,
            # and unlocking it would hide the error that closed it.
            if not conn.closed:
                conn.execute("SELECT pg_advisory_unlock(%s)", (MIGRATION_LOCK_KEY,))
    return done


def require_current(url: str, directory: Path = MIGRATIONS_DIR) -> None:
    """Refuse to start a service on a schema older than its code (it would fail at the first write)."""
    pending = [s.migration.path.name for s in status(url, directory) if s.applied_at is None]
    if pending:
        raise MigrationError(f"数据库结构不是最新（未应用：{'、'.join(pending)}），请先运行 coldchain db migrate")
