"""The migrator: applied once each, in a transaction, checksummed, serialised between processes."""

from __future__ import annotations

import logging
import secrets
import shutil
import threading
from pathlib import Path

import psycopg
import pytest
from dbhelp import DatabaseFactory
from psycopg import sql
from psycopg.conninfo import make_conninfo

from coldchain.core import db
from coldchain.core import migrate as migrator
from coldchain.core.migrate import (
    NOT_OFFERED_REFUSAL,
    NOT_PRELOADED_REFUSAL,
    NOT_PRELOADED_WARNING,
    MigrationError,
    TimescaleServer,
    discover,
    migrate,
    preload_libraries,
    status,
    storage_choice,
    timescale_server,
)
from coldchain.core.settings import TimescaleMode
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
    with pytest.raises(MigrationError, match=r"TimescaleDB.*没有提供 timescaledb 扩展"):
        migrate(empty_db, timescaledb="require")
    with db.connect(empty_db) as conn:
        assert conn.execute("SELECT count(*) FROM schema_migrations").fetchone() == (0,)


def test_timescaledb_off_builds_the_plain_path(empty_db: str) -> None:
    migrate(empty_db, timescaledb="off")
    with db.connect(empty_db) as conn:
        assert db.storage_path(conn) == "postgresql"
        kinds: dict[str, str] = dict(
            conn.execute(
                "SELECT relname, relkind::text FROM pg_class WHERE relname IN "
                "('probe_readings', 'probe_readings_hourly', 'probe_readings_daily', 'agg_probe_hourly')"
            ).fetchall()
        )
    assert kinds == {
        "probe_readings": "r",
        "probe_readings_hourly": "v",
        "probe_readings_daily": "v",
        "agg_probe_hourly": "r",
    }


def test_migrations_leave_no_session_setting_behind(empty_db: str) -> None:
    migrate(empty_db)
    with db.connect(empty_db) as conn:
        value = conn.execute("SELECT current_setting('coldchain.timescaledb', true)").fetchone()
    assert value in ((None,), ("",))
    with pytest.raises(psycopg.errors.UndefinedTable), db.connect(empty_db) as conn:
        conn.execute("SELECT * FROM half_done")


# ---------------------------------------------------------------------------------------------
# Whether 0001 may try TimescaleDB: the server is asked before, because with the package installed
# but not preloaded CREATE EXTENSION fails past 0001's EXCEPTION block (issue #15).


@pytest.mark.parametrize(
    ("value", "names"),
    [
        ("", []),
        ("timescaledb", ["timescaledb"]),
        ("pg_stat_statements,timescaledb", ["pg_stat_statements", "timescaledb"]),
        (" pg_stat_statements ,  timescaledb ", ["pg_stat_statements", "timescaledb"]),
        ('"timescaledb"', ["timescaledb"]),
        ("'timescaledb'", ["'timescaledb'"]),  # single quotes belong to postgresql.conf, not to the value
        ("$libdir/timescaledb", ["timescaledb"]),
        ("/usr/lib/postgresql/15/lib/timescaledb.so, auto_explain", ["timescaledb", "auto_explain"]),
        ('"my, lib", "say ""hi""",timescaledb', ["my, lib", 'say "hi"', "timescaledb"]),
        ("timescaledb-2.28.3", ["timescaledb-2.28.3"]),  # a versioned library is not the loader
        ("timescaledb_toolkit,pg_cron", ["timescaledb_toolkit", "pg_cron"]),
        (",timescaledb,", ["timescaledb"]),
    ],
)
def test_preload_libraries_are_split_as_postgresql_splits_them(value: str, names: list[str]) -> None:
    assert preload_libraries(value) == names


# (offered, created, preloaded) → what auto and require become; off is always off, quietly.
_CHOICES: dict[tuple[bool, bool, bool], tuple[tuple[str, str | None], tuple[str, str | None] | str]] = {
    (False, False, False): (("off", None), NOT_OFFERED_REFUSAL),
    (False, False, True): (("off", None), NOT_OFFERED_REFUSAL),  # loader listed, package gone
    (True, False, False): (("off", NOT_PRELOADED_WARNING), NOT_PRELOADED_REFUSAL),
    (True, False, True): (("auto", None), ("require", None)),
    # Already created in this database (by a DBA, or a template): used as it is.
    (False, True, False): (("auto", None), ("require", None)),
    (False, True, True): (("auto", None), ("require", None)),
    (True, True, False): (("auto", None), ("require", None)),
    (True, True, True): (("auto", None), ("require", None)),
}


@pytest.mark.parametrize(("offered", "created", "preloaded"), list(_CHOICES))
def test_storage_choice_for_every_server(offered: bool, created: bool, preloaded: bool) -> None:
    server = TimescaleServer(offered=offered, created=created, preloaded=preloaded)
    auto, require = _CHOICES[offered, created, preloaded]
    assert storage_choice("auto", server) == auto
    assert storage_choice("off", server) == ("off", None)
    if isinstance(require, str):
        with pytest.raises(MigrationError) as refused:
            storage_choice("require", server)
        assert str(refused.value) == require
    else:
        assert storage_choice("require", server) == require


def test_the_refusals_and_the_warning_say_how_to_fix_it() -> None:
    for text in (NOT_PRELOADED_WARNING, NOT_PRELOADED_REFUSAL):
        assert "shared_preload_libraries" in text and "postgresql.conf" in text and "重启" in text
    assert "普通 PostgreSQL" in NOT_PRELOADED_WARNING
    assert "COLDCHAIN_TIMESCALEDB=require" in NOT_OFFERED_REFUSAL


def _preload_list(conn: psycopg.Connection) -> str:
    row = conn.execute("SHOW shared_preload_libraries").fetchone()
    assert row is not None
    return str(row[0])


def test_the_migrator_reads_this_servers_settings_as_owner_and_as_a_plain_role(empty_db: str) -> None:
    """What the server here says, read the way the migrator reads it: as a superuser from
    shared_preload_libraries, as any other owner (who may not read it) from the loader's setting."""
    with db.connect(empty_db, autocommit=True) as conn:
        offered = conn.execute("SELECT count(*) FROM pg_available_extensions WHERE name = 'timescaledb'").fetchone()
        expected = TimescaleServer(
            offered=offered == (1,), created=False, preloaded="timescaledb" in _preload_list(conn)
        )
        assert timescale_server(conn) == expected
        role = f"cc_owner_{secrets.token_hex(3)}"
        conn.execute(sql.SQL("CREATE ROLE {} LOGIN NOSUPERUSER").format(sql.Identifier(role)))
    try:
        with db.connect(make_conninfo(empty_db, user=role), autocommit=True) as conn:
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                _preload_list(conn)
            assert timescale_server(conn) == expected
    finally:
        with db.connect(empty_db, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(role)))


def test_auto_takes_the_path_this_server_offers_without_a_warning_unless_it_falls_back(
    empty_db: str, caplog: pytest.LogCaptureFixture
) -> None:
    with db.connect(empty_db, autocommit=True) as conn:
        server = timescale_server(conn)
    with caplog.at_level(logging.WARNING, logger="coldchain.core.migrate"):
        migrate(empty_db)
    with db.connect(empty_db) as conn:
        path = db.storage_path(conn)
    assert path == ("timescaledb" if server.offered and server.preloaded else "postgresql")
    warned = [r.getMessage() for r in caplog.records if r.name == "coldchain.core.migrate"]
    assert warned == ([NOT_PRELOADED_WARNING] if server.offered and not server.preloaded else [])


@pytest.mark.parametrize("mode", ["auto", "require"])
def test_an_installed_but_not_preloaded_timescaledb_is_never_tried(
    mode: TimescaleMode,
    databases: DatabaseFactory,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The server of issue #15 (package installed, loader not preloaded), which this machine cannot
    be: only the migrator's question to the server is answered for it. auto builds the plain path
    with the warning; require refuses before applying anything."""
    monkeypatch.setattr(
        migrator, "timescale_server", lambda conn: TimescaleServer(offered=True, created=False, preloaded=False)
    )
    url = databases.create()
    with caplog.at_level(logging.WARNING, logger="coldchain.core.migrate"):
        if mode == "require":
            with pytest.raises(MigrationError, match="shared_preload_libraries"):
                migrate(url, timescaledb=mode)
        else:
            assert len(migrate(url, timescaledb=mode)) == len(discover())
    with db.connect(url) as conn:
        applied = conn.execute("SELECT count(*) FROM schema_migrations").fetchone()
        path = db.storage_path(conn) if mode == "auto" else None
    warned = [(r.levelno, r.getMessage()) for r in caplog.records if r.name == "coldchain.core.migrate"]
    if mode == "require":
        assert applied == (0,)
        assert warned == []
    else:
        assert path == "postgresql"
        assert warned == [(logging.WARNING, NOT_PRELOADED_WARNING)]


def test_the_server_is_asked_only_while_0001_is_pending(empty_db: str, monkeypatch: pytest.MonkeyPatch) -> None:
    migrate(empty_db, timescaledb="off")

    def must_not_ask(conn: psycopg.Connection) -> TimescaleServer:
        raise AssertionError("0001 已应用，不应再询问服务器")

    monkeypatch.setattr(migrator, "timescale_server", must_not_ask)
    assert migrate(empty_db, timescaledb="require") == []


def test_a_migration_that_loses_its_connection_is_named_in_the_error(empty_db: str, tmp_path: Path) -> None:
    """As CREATE EXTENSION timescaledb did once without the preload: the server closes the
    connection. The error names the migration; unlocking the closed connection must not hide it."""
    directory = _copy_migrations(tmp_path)
    (directory / "9003_lost.sql").write_text("SELECT pg_terminate_backend(pg_backend_pid());\n", encoding="utf-8")
    with pytest.raises(MigrationError, match=r"9003_lost\.sql"):
        migrate(empty_db, directory=directory)
    assert [s.migration.version for s in status(empty_db, directory=directory) if s.applied_at is None] == [9003]
