"""The migrator: applied once each, in a transaction, checksummed, serialised between processes."""

from __future__ import annotations

import shutil
import threading
from pathlib import Path

import psycopg
import pytest

from coldchain import db
from coldchain.migrate import MigrationError, discover, migrate, status
from sql import MIGRATIONS_DIR


def _copy_migrations(tmp_path: Path) -> Path:
    target = tmp_path / "migrations"
    shutil.copytree(MIGRATIONS_DIR, target)
    return target


def test_migrate_applies_everything_once_then_is_a_no_op(empty_db: str) -> None:
    first = migrate(empty_db)
    assert [m.version for m in first] == [m.version for m in discover()]
    assert migrate(empty_db) == []
    states = status(empty_db)
    assert all(s.applied_at is not None for s in states)
    with db.connect(empty_db) as conn:
        rows = conn.execute("SELECT version, checksum FROM schema_migrations ORDER BY version").fetchall()
    assert rows == [(m.version, m.checksum) for m in discover()]


def test_changed_applied_migration_is_refused(empty_db: str, tmp_path: Path) -> None:
    directory = _copy_migrations(tmp_path)
    migrate(empty_db, directory=directory)
    first = sorted(directory.glob("*.sql"))[0]
    first.write_text(first.read_text(encoding="utf-8") + "\n-- edited after release\n", encoding="utf-8")
    with pytest.raises(MigrationError, match="已被修改"):
        migrate(empty_db, directory=directory)
    with pytest.raises(MigrationError, match="已被修改"):
        status(empty_db, directory=directory)


def test_applied_migration_missing_from_disk_is_refused(empty_db: str, tmp_path: Path) -> None:
    directory = _copy_migrations(tmp_path)
    migrate(empty_db, directory=directory)
    sorted(directory.glob("*.sql"))[-1].unlink()
    with pytest.raises(MigrationError, match="没有该文件"):
        migrate(empty_db, directory=directory)


def test_failing_migration_rolls_back_whole_and_is_not_recorded(empty_db: str, tmp_path: Path) -> None:
    directory = _copy_migrations(tmp_path)
    (directory / "9001_broken.sql").write_text(
        "CREATE TABLE half_done (id int);\nSELECT no_such_function();\n", encoding="utf-8"
    )
    with pytest.raises(MigrationError, match=r"9001_broken\.sql"):
        migrate(empty_db, directory=directory)
    with db.connect(empty_db) as conn:
        assert conn.execute("SELECT to_regclass('half_done')").fetchone() == (None,)
        versions = [r[0] for r in conn.execute("SELECT version FROM schema_migrations").fetchall()]
    assert 9001 not in versions
    # Everything before the broken file was applied and stays applied.
    assert versions == [m.version for m in discover()]


def test_bad_file_name_is_refused(tmp_path: Path) -> None:
    directory = _copy_migrations(tmp_path)
    (directory / "3_missing_padding.sql").write_text("SELECT 1;", encoding="utf-8")
    with pytest.raises(MigrationError, match=r"NNNN_name\.sql"):
        discover(directory)


def test_racing_migrators_are_serialised(empty_db: str, tmp_path: Path) -> None:
    directory = _copy_migrations(tmp_path)
    # A slow migration keeps the first migrator inside the lock while the others arrive.
    (directory / "9002_slow.sql").write_text(
        "SELECT pg_sleep(0.5);\nCREATE TABLE slow_marker (id int);\n", encoding="utf-8"
    )
    results: list[int] = []
    errors: list[BaseException] = []

    def run() -> None:
        try:
            results.append(len(migrate(empty_db, directory=directory)))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=run) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert errors == []
    assert sorted(results) == [0, 0, len(discover(directory))]


def test_timescaledb_require_fails_without_the_extension(empty_db: str) -> None:
    with db.connect(empty_db) as conn:
        offered = conn.execute(
            "SELECT EXISTS (SELECT 1 FROM pg_available_extensions WHERE name = 'timescaledb')"
        ).fetchone() == (True,)
    if offered:
        pytest.skip("该服务器提供 timescaledb 扩展，require 模式不会失败")
    with pytest.raises(MigrationError, match="TimescaleDB"):
        migrate(empty_db, timescaledb="require")
    with db.connect(empty_db) as conn:
        assert conn.execute("SELECT count(*) FROM schema_migrations").fetchone() == (0,)


def test_timescaledb_off_builds_the_plain_path(empty_db: str) -> None:
    migrate(empty_db, timescaledb="off")
    with db.connect(empty_db) as conn:
        assert db.storage_path(conn) == "postgresql"
        kinds: dict[str, str] = dict(conn.execute(
            "SELECT relname, relkind::text FROM pg_class WHERE relname IN "
            "('probe_readings', 'probe_readings_hourly', 'probe_readings_daily', 'agg_probe_hourly')"
        ).fetchall())
    assert kinds == {"probe_readings": "r", "probe_readings_hourly": "v", "probe_readings_daily": "v",
                     "agg_probe_hourly": "r"}


def test_migrations_leave_no_session_setting_behind(empty_db: str) -> None:
    migrate(empty_db)
    with db.connect(empty_db) as conn:
        value = conn.execute("SELECT current_setting('coldchain.timescaledb', true)").fetchone()
    assert value in ((None,), ("",))
    with pytest.raises(psycopg.errors.UndefinedTable), db.connect(empty_db) as conn:
        conn.execute("SELECT * FROM half_done")
