"""Who may read what through the analysts' SQL interface (migration 0007, docs/analyst.md), on
plain PostgreSQL, connected as real login roles: privileges (nothing readable but the views and, on
TimescaleDB, the extension's own catalog; nothing in public; no writes), jurisdiction scoping by
analyst_scopes, the security barrier against a leaky function of the analyst's own, and granting
analysts with ``cc_grant_analyst`` (quoting, refusals, the cluster-wide group role).
"""

from __future__ import annotations

import os
import secrets

import psycopg
import pytest
from analysthelp import K1_CODE, READABLE_SQL, VIEWS, Analysts, Roles, connect_as, forbidden_readable, rows
from apihelp import build_world
from psycopg import sql

from coldchain.core import db
from coldchain.core.migrate import migrate

# ---------------------------------------------------------------------------------------------
# Privileges


def test_views_are_barriers_and_the_group_role_reads_only_them(analysts: Analysts) -> None:
    with db.connect(analysts.url) as conn:
        barrier = conn.execute(
            """SELECT c.relname, coalesce('security_barrier=true' = ANY (c.reloptions), false)
               FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = 'analytics'"""
        ).fetchall()
        # Nothing but SELECT, anywhere (every relation kind, every schema).
        granted = conn.execute(
            """SELECT n.nspname, c.relname, p.privilege
               FROM pg_class c
               JOIN pg_namespace n ON n.oid = c.relnamespace
               CROSS JOIN unnest(ARRAY['INSERT', 'UPDATE', 'DELETE', 'TRUNCATE', 'REFERENCES',
                                       'TRIGGER']) AS p (privilege)
               WHERE n.nspname NOT IN ('pg_catalog', 'information_schema')
                 AND c.relkind IN ('r', 'p', 'v', 'm', 'f')
                 AND has_table_privilege('coldchain_analyst', c.oid, p.privilege)"""
        ).fetchall()
        readable = {
            role: conn.execute(sql.SQL(READABLE_SQL).format(role=sql.Literal(role))).fetchall()
            for role in ("coldchain_analyst", analysts.k1)
        }
        schema = conn.execute(
            """SELECT has_schema_privilege('coldchain_analyst', 'analytics', 'USAGE'),
                      has_schema_privilege('coldchain_analyst', 'analytics', 'CREATE'),
                      has_function_privilege('coldchain_analyst', 'cc_grant_analyst(text, text)', 'EXECUTE')"""
        ).fetchone()
    assert barrier and all(flag for _, flag in barrier), barrier
    assert granted == []
    for role, relations in readable.items():
        assert forbidden_readable(relations) == [], role
        assert {name for schema_name, name, _, _ in relations if schema_name == "analytics"} == VIEWS
    assert schema == (True, False, False)


def test_what_an_analyst_may_read_is_the_views_and_the_timescaledb_catalog() -> None:
    """The rule itself, on rows as READABLE_SQL gives them."""
    allowed = [
        ("analytics", "readings", "v", None),
        ("_timescaledb_catalog", "dimension_slice", "r", "timescaledb"),
        ("_timescaledb_catalog", "chunk_id_seq", "S", "timescaledb"),
        ("_timescaledb_internal", "bgw_job_stat", "r", "timescaledb"),
        ("timescaledb_information", "chunks", "v", "timescaledb"),
    ]
    refused = [
        ("analytics", "mine", "v", None),  # a view nobody reviewed
        ("analytics", "readings", "r", None),
        ("public", "probe_readings", "r", None),
        ("public", "pg_stat_statements", "v", "pg_stat_statements"),
        ("_timescaledb_internal", "_hyper_1_3_chunk", "r", None),
        ("_timescaledb_internal", "compress_hyper_5_8_chunk", "r", None),
        ("_timescaledb_internal", "_materialized_hypertable_3", "r", None),
        ("_timescaledb_internal", "_hyper_3_6_chunk", "r", "timescaledb"),  # rows, whoever owns them
        ("_timescaledb_catalog", "copied_here", "r", None),
        ("toolkit_experimental", "anything", "v", "timescaledb"),
    ]
    assert forbidden_readable(allowed) == []
    assert forbidden_readable(allowed + refused) == sorted(f"{r[0]}.{r[1]}" for r in refused)


def test_an_analyst_can_read_no_public_table_or_view(analysts: Analysts) -> None:
    with db.connect(analysts.url) as conn:
        relations = [
            r[0]
            for r in conn.execute(
                """SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
                   WHERE n.nspname = 'public' AND c.relkind IN ('r', 'p', 'v', 'm', 'f') ORDER BY 1"""
            ).fetchall()
        ]
    assert {"probe_readings", "units", "stock_movements", "analyst_scopes", "cc_analyst_units"} <= set(relations)
    readable = []
    with connect_as(analysts.url, analysts.k1) as conn:
        for relation in relations:
            try:
                conn.execute(sql.SQL("SELECT 1 FROM public.{} LIMIT 1").format(sql.Identifier(relation)))
            except psycopg.errors.InsufficientPrivilege:
                continue
            readable.append(relation)
        assert conn.execute("SELECT count(*) FROM analytics.readings").fetchone() == (1716,)
        for statement in (
            "DELETE FROM analytics.unit_tree",
            "UPDATE analytics.units SET unit_name = 'x'",
            "INSERT INTO analytics.unit_tree (ancestor_id, descendant_id, depth) VALUES (1, 1, 0)",
            "CREATE VIEW analytics.mine AS SELECT 1",
            "SELECT cc_grant_analyst(current_user, '6100000000')",
        ):
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                conn.execute(statement.encode())
    assert readable == []


# ---------------------------------------------------------------------------------------------
# Jurisdiction


def _units_seen(url: str, role: str) -> dict[str, set[int]]:
    seen: dict[str, set[int]] = {}
    with connect_as(url, role) as conn:
        for view in sorted(VIEWS - {"alarm_kinds", "unit_tree"}):
            query = sql.SQL("SELECT DISTINCT unit_id FROM analytics.{}").format(sql.Identifier(view))
            seen[view] = {r[0] for r in conn.execute(query).fetchall()}
        tree = conn.execute("SELECT ancestor_id, descendant_id FROM analytics.unit_tree").fetchall()
        seen["unit_tree"] = {u for pair in tree for u in pair}
    return seen


def test_a_county_analyst_sees_their_county_and_not_the_neighbour(analysts: Analysts) -> None:
    units = analysts.world.units
    k1_tree, k2_tree = {units["K1"], units["T1"]}, {units["K2"], units["T2"]}
    seen_k1 = _units_seen(analysts.url, analysts.k1)
    seen_k2 = _units_seen(analysts.url, analysts.k2)
    for view, ids in seen_k1.items():
        assert ids, f"雁塔区分析员在 analytics.{view} 中应看到数据"
        assert ids <= k1_tree, f"analytics.{view} 泄露了辖区外单位 {ids - k1_tree}"
    for view, ids in seen_k2.items():
        assert ids <= k2_tree, f"analytics.{view} 泄露了辖区外单位 {ids - k2_tree}"
    # The seed gives 临渭区 stock and 向阳街道卫生院 readings and an alarm, but no vaccinations.
    assert seen_k2["readings"] == {units["T2"]}
    assert seen_k2["alarms"] == {units["T2"]}
    assert seen_k2["stock_movements"] == {units["K2"]}
    assert seen_k2["vaccinations"] == set()
    # Names too: what a county analyst reads about sites is their own sites' data only.
    names = {r[0] for r in rows(analysts.url, analysts.k1, "SELECT DISTINCT unit_name FROM analytics.readings")}
    assert names == {"电子城街道社区卫生服务中心"}
    assert rows(
        analysts.url,
        analysts.k1,
        "SELECT unit_name, city_name, county_name FROM analytics.units WHERE level = 'township'",
    ) == [("电子城街道社区卫生服务中心", "西安市疾病预防控制中心", "雁塔区疾病预防控制中心")]


def test_an_analyst_without_a_scope_sees_nothing(analysts: Analysts) -> None:
    with connect_as(analysts.url, analysts.unscoped) as conn:
        for view in sorted(VIEWS - {"alarm_kinds"}):
            count = conn.execute(sql.SQL("SELECT count(*) FROM analytics.{}").format(sql.Identifier(view))).fetchone()
            assert count == (0,), f"无辖区的角色在 analytics.{view} 中看到了 {count} 行"
    # A scoped analyst acting as the bare group role (which has no scope) sees nothing either.
    with connect_as(analysts.url, analysts.k1) as conn:
        assert conn.execute("SELECT count(*) FROM analytics.readings").fetchone() == (1716,)
        conn.execute("SET ROLE coldchain_analyst")
        assert conn.execute("SELECT count(*) FROM analytics.readings").fetchone() == (0,)


def test_the_province_sees_every_row_once(analysts: Analysts) -> None:
    base = {
        "readings": "SELECT count(*) FROM probe_readings_attributed",
        "readings_hourly": """SELECT count(*) FROM probe_readings_hourly h
                              JOIN probe_bindings b ON b.probe_id = h.probe_id AND b.valid @> h.first_ts""",
        "readings_daily": """SELECT count(*) FROM probe_readings_daily d
                             JOIN probe_bindings b ON b.probe_id = d.probe_id AND b.valid @> d.first_ts""",
        "units": "SELECT count(*) FROM units",
        "unit_tree": "SELECT count(*) FROM unit_tree",
        "compartments": "SELECT count(*) FROM compartments",
        "alarms": "SELECT count(*) FROM alarms",
        "alarm_events": "SELECT count(*) FROM alarm_events",
        "stock_movements": "SELECT count(*) FROM stock_movements",
        "vaccinations": "SELECT count(*) FROM vaccinations",
        "gateway_status": "SELECT count(*) FROM gateway_status",
        "excursions": "SELECT count(*) FROM excursion_spans",
    }
    with db.connect(analysts.url) as conn:
        expected = {view: conn.execute(query.encode()).fetchone() for view, query in base.items()}
    with connect_as(analysts.url, analysts.province) as conn:
        actual = {
            view: conn.execute(sql.SQL("SELECT count(*) FROM analytics.{}").format(sql.Identifier(view))).fetchone()
            for view in base
        }
    assert actual == expected
    assert expected["readings"] == (5184,)


def test_a_leaky_function_of_the_analyst_sees_only_rows_in_scope(analysts: Analysts) -> None:
    """security_barrier: the analyst's own predicate runs after the scope filter, however cheap it
    claims to be. The same probe through a view without the barrier shows that it would leak."""
    outside = {"临渭区疾病预防控制中心", "向阳街道卫生院", "龙门镇卫生院", "韩城市疾病预防控制中心"}
    unsafe = f"cc_unsafe_units_{secrets.token_hex(3)}"
    with db.connect(analysts.url, autocommit=True) as conn:
        # The same definition, scope filter included, only without the barrier.
        row = conn.execute("SELECT pg_get_viewdef('analytics.units'::regclass)").fetchone()
        assert row is not None
        conn.execute(sql.SQL("CREATE VIEW {} AS {}").format(sql.Identifier(unsafe), sql.SQL(row[0].rstrip(";"))))
        conn.execute(sql.SQL("GRANT SELECT ON {} TO {}").format(sql.Identifier(unsafe), sql.Identifier(analysts.k1)))
    try:
        notices: list[str] = []
        with connect_as(analysts.url, analysts.k1) as conn:
            conn.add_notice_handler(lambda diag: notices.append(diag.message_primary or ""))
            conn.execute(
                """CREATE FUNCTION pg_temp.leak(text) RETURNS boolean LANGUAGE plpgsql COST 0.0000001
                   AS $$ BEGIN RAISE NOTICE 'saw %', $1; RETURN true; END $$"""
            )
            conn.execute("SELECT count(*) FROM analytics.units WHERE pg_temp.leak(unit_name)")
            conn.execute(
                "SELECT count(*) FROM analytics.readings WHERE ts >= '2026-11-21 14:00+08' "
                "AND ts < '2026-11-21 14:30+08' AND pg_temp.leak(unit_name || ' ' || t)"
            )
            conn.execute("SELECT count(*) FROM analytics.stock_balances WHERE pg_temp.leak(unit_name)")
            seen_through_barrier = list(notices)
            notices.clear()
            leaky = sql.SQL("SELECT count(*) FROM {} WHERE pg_temp.leak(unit_name)").format(sql.Identifier(unsafe))
            conn.execute(leaky)
            seen_without_barrier = list(notices)
            conn.execute("DROP FUNCTION pg_temp.leak(text)")
    finally:
        with db.connect(analysts.url, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP VIEW {}").format(sql.Identifier(unsafe)))
    assert any("电子城" in n for n in seen_through_barrier)
    assert not [n for n in seen_through_barrier if any(name in n for name in outside)]
    assert {n.removeprefix("saw ") for n in seen_without_barrier} >= outside


# ---------------------------------------------------------------------------------------------
# Granting analysts


def test_grant_quotes_the_role_name_and_can_be_repeated(db_url: str, roles: Roles) -> None:
    build_world(db_url)
    hostile = roles.name('x"; DROP TABLE units; --')
    roles.made.append(hostile)
    with db.connect(db_url, autocommit=True) as conn:
        conn.execute("SELECT cc_grant_analyst(%s, %s)", (hostile, K1_CODE))
        conn.execute("SELECT cc_grant_analyst(%s, %s)", (hostile, K1_CODE))
        assert conn.execute("SELECT to_regclass('public.units') IS NOT NULL").fetchone() == (True,)
        assert conn.execute(
            "SELECT rolcanlogin, pg_has_role(rolname, 'coldchain_analyst', 'MEMBER') FROM pg_roles WHERE rolname = %s",
            (hostile,),
        ).fetchone() == (True, True)
        assert conn.execute("SELECT count(*) FROM analyst_scopes WHERE role_name = %s", (hostile,)).fetchone() == (1,)
    seen = rows(db_url, hostile, "SELECT DISTINCT unit_name FROM analytics.readings")
    assert seen == [("电子城街道社区卫生服务中心",)]
    with db.connect(db_url, autocommit=True) as conn:
        assert conn.execute("SELECT cc_revoke_analyst(%s)", (hostile,)).fetchone() == (1,)
    assert rows(db_url, hostile, "SELECT count(*) FROM analytics.readings") == [(0,)]


def test_grant_refuses_unknown_units_reserved_names_and_roles_that_read_tables(db_url: str, roles: Roles) -> None:
    build_world(db_url)
    with db.connect(db_url) as conn:
        row = conn.execute("SELECT current_user::text").fetchone()
    assert row is not None
    for role, unit, error in (
        (roles.name("nounit"), "6199999999", "没有编码为 6199999999 的单位"),
        ("coldchain_analyst", K1_CODE, "保留的角色名"),
        ("pg_monitor", K1_CODE, "保留的角色名"),
        (row[0], K1_CODE, "已能直接读取业务表"),  # the owner: nothing to restrict
    ):
        with db.connect(db_url, autocommit=True) as conn, pytest.raises(psycopg.Error, match=error):
            conn.execute("SELECT cc_grant_analyst(%s, %s)", (role, unit))
    with db.connect(db_url, autocommit=True) as conn:
        assert conn.execute("SELECT count(*) FROM analyst_scopes").fetchone() == (0,)
        # The refused unknown unit created no role either.
        assert conn.execute(
            "SELECT count(*) FROM pg_roles WHERE rolname LIKE %s", (f"cc_ana_{os.getpid()}_%_nounit",)
        ).fetchone() == (0,)


def test_migrating_another_database_reuses_the_cluster_wide_group_role(
    empty_db: str, migrated_template: str | None
) -> None:
    """Roles belong to the cluster: the template's migration made the group role, and another
    database (a parallel test run, a second deployment) must migrate with it already there."""
    with db.connect(empty_db) as conn:
        assert conn.execute("SELECT count(*) FROM pg_roles WHERE rolname = 'coldchain_analyst'").fetchone() == (1,)
    assert "analytics" in [m.name for m in migrate(empty_db)]
    with db.connect(empty_db) as conn:
        assert conn.execute("SELECT has_schema_privilege('coldchain_analyst', 'analytics', 'USAGE')").fetchone() == (
            True,
        )
