"""The backup and restore drill of docs/operations.md ("Backup and restore"), end to end (issue #18).

A database with a province, three days of readings, alarms, ledger movements, refreshed
aggregates and an analyst is dumped with ``pg_dump -Fc`` and restored, step by documented step,
into a new cluster made here with the machine's ``initdb``, one that has never seen the system's
roles (pg_dump does not dump roles: the drill must recreate them as the guide says). Then:
every table's rows (count and checksum), the aggregates, the sequences, the triggers, every
table's, function's and schema's grants and the runtime role's effective privileges are those
of the original; the append-only records still refuse the owner and the runtime role; the analyst
sees their scope again; ``coldchain db migrate`` finds nothing to do and ``coldchain db status``
runs as the runtime role; the API serves health, sign-in and the board from it.

Plain PostgreSQL only: the TimescaleDB path is restored with the extension's own pre- and
post-restore functions (in the guide), and TimescaleDB cannot be installed on this machine.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from pprint import pformat
from typing import Any

import psycopg
import pytest
from aggdata import DAILY, HOURLY
from analysthelp import K1_CODE, Roles, seed
from apihelp import PASSWORD, World, api_client, build_world
from dbhelp import as_runtime, table_privileges
from fastapi.testclient import TestClient
from psycopg import sql

from coldchain import services
from coldchain.app import create_app
from coldchain.core import db
from coldchain.core import roles as db_roles
from coldchain.core.settings import load_settings

RESTORED = "coldchain"  # the database's name on the new server, as in the guide


def _bindir() -> Path:
    """pg_dump, pg_restore, psql and initdb of one PostgreSQL version (Debian: postgresql-15)."""
    bindir = services._machine_pg_bindir()
    if bindir is None or not all((bindir / tool).exists() for tool in ("pg_dump", "pg_restore", "psql")):
        pytest.skip("本机没有 PostgreSQL 服务器与客户端程序（initdb、pg_dump、pg_restore），无法演练备份恢复")
    return bindir


def _run(*cmd: str | Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        [str(c) for c in cmd], capture_output=True, text=True, timeout=300, check=False, env=env or None
    )
    assert proc.returncode == 0, (cmd, proc.stdout, proc.stderr)
    return proc


def _cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("COLDCHAIN_")}
    return _run(sys.executable, "-m", "coldchain.cli", *args, env={**clean, **env})


# ---------------------------------------------------------------------------------------------
# What must survive: read as the owner (a superuser on both servers here).

_TABLES = """
SELECT n.nspname, c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE c.relkind IN ('r', 'p') AND n.nspname NOT IN ('pg_catalog', 'information_schema')
  AND n.nspname NOT LIKE 'pg\\_%' ORDER BY 1, 2
"""
_SEQUENCES = "SELECT schemaname || '.' || sequencename, last_value FROM pg_sequences ORDER BY 1"
_TRIGGERS = """
SELECT tgrelid::regclass::text, tgname, tgenabled, pg_get_triggerdef(oid) FROM pg_trigger
WHERE NOT tgisinternal ORDER BY 1, 2
"""
# Effective ACLs: NULL (the default) spelt out, because a table whose grants were all revoked again
# comes back with the default; entries sorted, because GRANTs are replayed in another order.
_RELATION_ACLS = """
SELECT c.oid::regclass::text, c.relkind::text, pg_get_userbyid(c.relowner),
       (SELECT array_agg(a::text ORDER BY a::text)
        FROM unnest(coalesce(c.relacl, acldefault(CASE WHEN c.relkind = 'S' THEN 's' ELSE 'r' END::"char",
                                                  c.relowner))) a)
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE n.nspname IN ('public', 'analytics') AND c.relkind IN ('r', 'p', 'v', 'm', 'S') ORDER BY 1
"""
_FUNCTION_ACLS = """
SELECT p.oid::regprocedure::text, p.prosecdef, pg_get_userbyid(p.proowner),
       (SELECT array_agg(a::text ORDER BY a::text) FROM unnest(coalesce(p.proacl, acldefault('f', p.proowner))) a)
FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
WHERE n.nspname IN ('public', 'analytics') ORDER BY 1
"""
_SCHEMA_ACLS = """
SELECT nspname::text,
       (SELECT array_agg(a::text ORDER BY a::text) FROM unnest(coalesce(nspacl, acldefault('n', nspowner))) a)
FROM pg_namespace WHERE nspname IN ('public', 'analytics') ORDER BY 1
"""


def _facts(owner_url: str, runtime_url: str) -> dict[str, Any]:
    facts: dict[str, Any] = {}
    with db.connect(owner_url, autocommit=True) as conn:
        for schema, table in conn.execute(_TABLES).fetchall():
            row = conn.execute(
                sql.SQL(
                    "SELECT count(*), md5(coalesce(string_agg(x::text, E'\\n' ORDER BY x::text), '')) FROM {} x"
                ).format(sql.Identifier(schema, table))
            ).fetchone()
            facts[f"rows {schema}.{table}"] = row
        for name, query in (
            ("hourly", HOURLY),
            ("daily", DAILY),
            ("sequences", _SEQUENCES),
            ("triggers", _TRIGGERS),
            ("relation acls", _RELATION_ACLS),
            ("function acls", _FUNCTION_ACLS),
            ("schema acls", _SCHEMA_ACLS),
        ):
            facts[name] = conn.execute(query.encode()).fetchall()
    with db.connect(runtime_url, autocommit=True) as runtime:
        facts["runtime grants"] = table_privileges(runtime)
        facts["runtime problems"] = db_roles.privilege_problems(runtime)
    return facts


def _differences(before: dict[str, Any], after: dict[str, Any]) -> dict[str, Any]:
    """Per fact that changed: what only the original had, and what only the restored copy has."""
    changed: dict[str, dict[str, Any]] = {}
    for key in before.keys() | after.keys():
        old, new = before.get(key), after.get(key)
        if old != new:
            if isinstance(old, list) and isinstance(new, list):
                changed[key] = {"lost": [x for x in old if x not in new], "gained": [x for x in new if x not in old]}
            else:
                changed[key] = {"before": old, "after": new}
    return changed


def _analyst_rows(url: str, analyst: str) -> int:
    with db.connect(db_roles.with_role(url, analyst), autocommit=True) as conn:
        row = conn.execute("SELECT count(*) FROM analytics.readings").fetchone()
    assert row is not None
    return int(row[0])


def _board(client: TestClient) -> list[tuple[Any, ...]]:
    r = client.post("/api/v1/auth/token", json={"username": "ba_P", "password": PASSWORD})
    assert r.status_code == 200, r.text
    board = client.get("/api/v1/board", headers={"Authorization": f"Bearer {r.json()['access_token']}"})
    assert board.status_code == 200, board.text
    return sorted((t["compartment_id"], t["t"], t["t_flag"], t["alarm_id"]) for t in board.json()["tiles"])


@pytest.fixture
def new_server() -> Iterator[str]:
    """A cluster of its own, empty: no coldchain roles, no databases.

    Not under pytest's ``tmp_path``: the server runs as ``postgres``, which must traverse every
    directory above its data, and any other pytest run starting on the machine takes the "others"
    bits off ``/tmp/pytest-of-<user>`` — the server then loses its own files mid-test (the drill's
    rare failure; found by the read-replica tests, ``tests/replicahelp.py``)."""
    _bindir()
    work = Path(tempfile.mkdtemp(prefix="coldchain-restore-"))
    data = work / "restore-cluster"
    try:
        server = services.start_local_cluster(data)
    except RuntimeError:
        # pg_ctl stopped waiting (a loaded machine) while the server may still have come up:
        # adopt it to stop it, rather than leave a server running on a directory pytest deletes.
        if services._running_cluster_port(data.resolve()) is not None:
            services.start_local_cluster(data).stop()
        raise
    try:
        yield server.url
    finally:
        server.stop()
        shutil.rmtree(work, ignore_errors=True)


def test_the_backup_and_restore_drill(db_url: str, roles: Roles, tmp_path: Path, new_server: str) -> None:
    bindir = _bindir()
    with db.connect(db_url) as conn:
        if db.storage_path(conn) == "timescaledb":
            pytest.skip(
                "TimescaleDB 库的恢复须用 timescaledb_pre_restore()/post_restore()（见文档），本机无法安装 TimescaleDB"
            )
    world: World = build_world(db_url)
    seed(world)  # three days of readings, an excursion, alarms, ledger movements; aggregates refreshed
    analyst = roles.analyst("drill", K1_CODE)
    with api_client(db_url) as client:
        board_before = _board(client)
    seen_by_analyst = _analyst_rows(db_url, analyst)
    assert seen_by_analyst > 0
    before = _facts(db_url, as_runtime(db_url))
    assert before["hourly"] and before["daily"] and before["rows public.stock_movements"][0] > 0
    assert before["runtime grants"]["probe_readings"] == "SI" and before["runtime problems"] == []

    # 1. The backup, as the owner (docs: pg_dump -Fc --file=… "$COLDCHAIN_OWNER_DATABASE_URL").
    dump = tmp_path / "coldchain.dump"
    _run(bindir / "pg_dump", "-Fc", f"--file={dump}", db_url)

    # 2. On the new server, as its administrator: the roles the dump refers to, then the database.
    admin = new_server
    _run(
        bindir / "psql", "-X", "-v", "ON_ERROR_STOP=1", "-d", admin,
        "-c", "CREATE ROLE coldchain_runtime NOLOGIN",
        "-c", "CREATE ROLE coldchain_analyst NOLOGIN",
        "-c", f"CREATE DATABASE {RESTORED} ENCODING 'UTF8' TEMPLATE template0",
    )  # fmt: skip
    owner = db.with_database(admin, RESTORED)

    # 3. The restore, all or nothing, stopping at the first error.
    _run(bindir / "pg_restore", "--exit-on-error", "--single-transaction", f"--dbname={owner}", dump)

    # 4. The services' login (docs: coldchain db runtime-login), then the analysts again.
    runtime = db_roles.with_role(owner, db_roles.DEFAULT_RUNTIME_LOGIN)
    env = {"COLDCHAIN_DATABASE_URL": runtime, "COLDCHAIN_OWNER_DATABASE_URL": owner}
    assert "已创建运行角色 coldchain_app" in _cli(env, "db", "runtime-login").stdout
    _run(
        bindir / "psql", "-X", "-v", "ON_ERROR_STOP=1", "-d", owner,
        "-c", "SELECT cc_grant_analyst(s.role_name, u.code) FROM analyst_scopes s JOIN units u ON u.id = s.unit_id",
        "-c", "ANALYZE",
    )  # fmt: skip

    # The data, the aggregates, the grants: as they were.
    after = _facts(owner, runtime)
    assert after.keys() == before.keys()
    changed = _differences(before, after)
    assert not changed, pformat(changed)
    assert _analyst_rows(owner, analyst) == seen_by_analyst

    # Append-only still holds, for the owner (triggers) and for the runtime role (grants).
    with db.connect(owner) as conn:
        with pytest.raises(psycopg.errors.RestrictViolation, match="只可追加"):
            conn.execute("UPDATE probe_readings SET t = t + 1")
        conn.rollback()
        with pytest.raises(psycopg.errors.RestrictViolation, match="只可追加"):
            conn.execute("TRUNCATE gateway_status")
    with db.connect(runtime) as conn:
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("DELETE FROM probe_readings")
        conn.rollback()
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("UPDATE stock_balances SET on_hand = on_hand + 1")

    # The system starts on it: nothing to migrate, status as the runtime role, the API.
    assert "数据库结构已是最新，无需迁移" in _cli(env, "db", "migrate").stdout
    status = _cli(env, "db", "status").stdout.splitlines()
    assert len(status) == len(list((Path(__file__).parents[2] / "sql" / "migrations").glob("*.sql")))
    assert not any("未应用" in line for line in status)
    app = create_app(load_settings({}), runtime, pool_size=2)
    with TestClient(app, raise_server_exceptions=False) as client:
        assert client.get("/api/v1/health").json() == {"status": "ok"}
        # Signing in writes a session row: the restored sequences hand out fresh ids.
        assert _board(client) == board_before
