"""Least privilege and append-only records (issue #15 §2, §3), on the real server.

The services run as the runtime login (a member of ``coldchain_runtime``, migration 0012); the
fixtures here set data up as the owner that migrated the database. What the runtime role may do
to every table is written out below: a new table without a decision, a grant too many or one
too few fails here.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import psycopg
import pytest
from apihelp import World
from dbhelp import as_runtime
from psycopg import errors as pg_errors
from psycopg import sql

from coldchain.core import db, roles

# The runtime role's writes, table by table ("" = read only). Everything else in public is
# readable, except the analysts' scopes.
RUNTIME_WRITES: dict[str, str] = {
    # temperature records, logs, ledger events: added, never changed
    "probe_readings": "I",
    "gateway_status": "I",
    "thermometer_readings": "I",
    "ingest_dead_letters": "I",
    "ingest_quarantine": "I",
    "login_events": "I",
    "form_steps": "I",
    "alarm_events": "I",
    "movement_codes": "I",
    "vaccinations": "I",
    "lot_certificates": "I",
    "probe_vendor_flags": "I",
    "monthly_reports": "I",
    "excursion_invalidations": "I",  # the ingest statement logs late readings (0013)
    # records with a life
    **dict.fromkeys(
        [
            "units",
            "equipment",
            "compartments",
            "gateways",
            "probes",
            "probe_bindings",
            "users",
            "forms",
            "auth_sessions",
            "probe_latest",
            "gateway_latest",
            "probe_unbound_readings",
            "alarms",
            "alarm_links",
            "alarm_rule_state",
            "alarm_rule_params",
            "unit_escalation",
            "notification_outbox",
            "drift_findings",
            "vaccine_categories",
            "manufacturers",
            "vaccines",
            "vaccine_specs",
            "lots",
            "package_codes",
            "stock_transfers",
            "stock_requests",
            "usage_plans",
            "lot_error_reports",
        ],
        "IU",
    ),
    # lists edited by replacing entries
    "unit_responsibles": "IUD",
    "notification_routes": "IUD",
    "usage_plan_lines": "IUD",
    # a rate-limit ledger the sender prunes (0014)
    "robot_posts": "ID",
    # only through the owner's SECURITY DEFINER functions and triggers
    **dict.fromkeys(
        [
            "stock_balances",
            "stock_movements",
            "audit_log",
            "unit_tree",
            "lot_revisions",
            "schema_migrations",
            "coldchain_meta",
            "agg_probe_hourly",
            "agg_probe_daily",
            "agg_state",
            "agg_invalidation_threshold",
            "agg_invalidations",
            "excursion_spans",
            "excursion_state",
            "excursion_threshold",
        ],
        "",
    ),
}
NOT_READABLE = {"analyst_scopes"}


@pytest.fixture
def runtime(db_url: str) -> Iterator[psycopg.Connection]:
    with db.connect(as_runtime(db_url)) as conn:
        yield conn


def _refused(conn: psycopg.Connection, statement: str, error: type[Exception]) -> str:
    with pytest.raises(error) as caught:
        conn.execute(statement)
    conn.rollback()
    return str(caught.value)


def test_the_runtime_role_has_exactly_its_grants(runtime: psycopg.Connection) -> None:
    tables = [
        r[0]
        for r in runtime.execute(
            """SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
               WHERE n.nspname = 'public' AND c.relkind IN ('r', 'p') ORDER BY 1"""
        ).fetchall()
    ]
    undecided = sorted(set(tables) - set(RUNTIME_WRITES) - NOT_READABLE)
    assert undecided == [], f"新表须在 0012 之后的迁移中授予运行角色所需权限，并在此登记：{undecided}"
    actual = {}
    for table in tables:
        privileges = runtime.execute(
            """SELECT has_table_privilege(%(t)s, 'SELECT'), has_table_privilege(%(t)s, 'INSERT'),
                      has_table_privilege(%(t)s, 'UPDATE'), has_table_privilege(%(t)s, 'DELETE'),
                      has_table_privilege(%(t)s, 'TRUNCATE'), has_table_privilege(%(t)s, 'TRIGGER'),
                      has_table_privilege(%(t)s, 'REFERENCES')""",
            {"t": table},
        ).fetchone()
        assert privileges is not None
        select, insert, update, delete, truncate, trigger, references = privileges
        assert not (truncate or trigger or references), table
        assert select == (table not in NOT_READABLE), table
        actual[table] = "I" * insert + "U" * update + "D" * delete
    expected = {t: RUNTIME_WRITES.get(t, "") for t in tables}
    assert actual == expected


def test_the_runtime_role_owns_nothing_and_can_do_no_ddl(runtime: psycopg.Connection, db_url: str) -> None:
    assert roles.privilege_problems(runtime) == []
    runtime.rollback()
    _refused(runtime, "CREATE TABLE public.x (i int)", pg_errors.InsufficientPrivilege)
    _refused(runtime, "CREATE SCHEMA x", pg_errors.InsufficientPrivilege)
    _refused(runtime, "ALTER TABLE probe_readings DISABLE TRIGGER ALL", pg_errors.InsufficientPrivilege)
    _refused(runtime, "ALTER TABLE units ADD COLUMN x int", pg_errors.InsufficientPrivilege)
    _refused(runtime, "DROP TABLE alarms", pg_errors.InsufficientPrivilege)
    _refused(runtime, "SET session_replication_role = replica", pg_errors.InsufficientPrivilege)
    _refused(runtime, "CREATE ROLE intruder", pg_errors.InsufficientPrivilege)
    _refused(runtime, "GRANT coldchain_runtime TO coldchain_analyst", pg_errors.InsufficientPrivilege)
    # Its one scratch space: the ingester's per-connection staging tables.
    runtime.execute("CREATE TEMP TABLE staging (i int)")
    runtime.rollback()


def test_temperature_records_are_append_only_for_the_runtime_role(runtime: psycopg.Connection, world: World) -> None:
    probe, gateway, comp = world.probes["108601"], world.gateways["10001"], world.compartments["T1/冷藏"]
    runtime.execute("INSERT INTO probe_readings (probe_id, ts, t) VALUES (%s, now(), 4.0)", (probe,))
    runtime.execute("INSERT INTO gateway_status (gateway_id, ts, online) VALUES (%s, now(), true)", (gateway,))
    runtime.execute(
        "INSERT INTO thermometer_readings (compartment_id, ts, t, entered_by) VALUES (%s, now(), 4.1, %s)",
        (comp, world.users["ba_T1"]),
    )
    runtime.commit()
    for table in ("probe_readings", "gateway_status", "thermometer_readings", "audit_log", "stock_movements"):
        for template in ("UPDATE {} SET id = id", "DELETE FROM {}", "TRUNCATE {}"):
            if "UPDATE" in template and table in ("probe_readings", "gateway_status"):
                template = "UPDATE {} SET ts = ts"
            statement = sql.SQL(template).format(sql.Identifier(table)).as_string()
            message = _refused(runtime, statement, pg_errors.InsufficientPrivilege)
            assert "permission denied" in message, (statement, message)
    _refused(runtime, "UPDATE stock_balances SET on_hand = on_hand + 1", pg_errors.InsufficientPrivilege)
    forged = "INSERT INTO audit_log (action, entity, op) VALUES ('x', 'y', 'INSERT')"
    _refused(runtime, forged, pg_errors.InsufficientPrivilege)
    _refused(runtime, "SELECT cc_retention_purge()", pg_errors.InsufficientPrivilege)
    with db.connect(world.url) as owner:
        counts = owner.execute(
            """SELECT (SELECT count(*) FROM probe_readings WHERE probe_id = %s),
                      (SELECT count(*) FROM gateway_status), (SELECT count(*) FROM thermometer_readings)""",
            (probe,),
        ).fetchone()
    assert counts == (4, 1, 1)  # the world's three readings and ours, nothing lost


def test_even_the_owner_cannot_change_temperature_records(world: World) -> None:
    with db.connect(world.url) as owner:
        for statement in (
            "UPDATE probe_readings SET t = 2.0",
            "DELETE FROM probe_readings",
            "UPDATE gateway_status SET online = false",
            "DELETE FROM gateway_status",
            "UPDATE thermometer_readings SET t = 3.0",
            "DELETE FROM thermometer_readings",
        ):
            owner.execute("INSERT INTO gateway_status (gateway_id, ts, online) VALUES (%s, now(), true)",
                          (world.gateways["10001"],))  # fmt: skip
            owner.execute(
                "INSERT INTO thermometer_readings (compartment_id, ts, t, entered_by) VALUES (%s, now(), 4.1, %s)",
                (world.compartments["T1/冷藏"], world.users["ba_T1"]),
            )
            message = _refused(owner, statement, pg_errors.RestrictViolation)
            assert "只可追加" in message
        for table in ("probe_readings", "gateway_status", "thermometer_readings"):
            statement = sql.SQL("TRUNCATE {} CASCADE").format(sql.Identifier(table)).as_string()
            assert "只可追加" in _refused(owner, statement, pg_errors.RestrictViolation)


def test_retention_removes_only_what_is_past_the_legal_period(world: World) -> None:
    probe = world.probes["108601"]
    old = datetime.now(UTC) - timedelta(days=365 * 8 + 10)
    with db.connect(world.url) as owner:
        if db.storage_path(owner) == "timescaledb":
            pytest.skip("TimescaleDB：保留期由 add_retention_policy 按块删除（见 0002）")
        owner.execute("INSERT INTO probe_readings (probe_id, ts, t) VALUES (%s, %s, 4.0)", (probe, old))
        owner.commit()
        with pytest.raises(pg_errors.InvalidParameterValue):
            owner.execute("SELECT * FROM cc_retention_purge(interval '4 years')")
        owner.rollback()
        purged = owner.execute("SELECT readings, statuses FROM cc_retention_purge()").fetchone()
        owner.commit()
        left = owner.execute("SELECT count(*) FROM probe_readings WHERE probe_id = %s", (probe,)).fetchone()
        # The purge's permission does not outlive it: a plain DELETE is refused again.
        message = _refused(owner, "DELETE FROM probe_readings", pg_errors.RestrictViolation)
    assert purged == (1, 0) and left == (3,)
    assert "只可追加" in message


def test_guarded_functions_are_the_runtime_roles_alone(world: World, db_url: str) -> None:
    """SECURITY DEFINER functions write as the owner: nobody but the runtime role may call them."""
    with db.connect(db_url, autocommit=True) as owner:
        owner.execute("DROP ROLE IF EXISTS cc_test_outsider")
        owner.execute("CREATE ROLE cc_test_outsider LOGIN IN ROLE coldchain_analyst")
    try:
        with db.connect(roles.with_role(db_url, "cc_test_outsider")) as outsider:
            for call in (
                "SELECT cc_post_movement('receipt', 1, 1, 1, now(), 1)",
                "SELECT cc_reserve(1, 1, 1)",
                "SELECT * FROM cc_agg_refresh()",
                "SELECT * FROM cc_excursion_refresh()",
                "SELECT * FROM cc_lock_balances(1)",
            ):
                _refused(outsider, call, pg_errors.InsufficientPrivilege)
    finally:
        with db.connect(db_url, autocommit=True) as owner:
            owner.execute("DROP ROLE cc_test_outsider")


def test_a_service_given_the_owners_url_warns(db_url: str, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="coldchain.core.roles"):
        assert roles.warn_if_overprivileged(as_runtime(db_url), "api") == []
        assert caplog.records == []
        problems = roles.warn_if_overprivileged(db_url, "api")
    assert any("超级用户" in p for p in problems) and any("拥有数据库对象" in p for p in problems)
    assert len(caplog.records) == 1 and "COLDCHAIN_OWNER_DATABASE_URL" in caplog.records[0].getMessage()
