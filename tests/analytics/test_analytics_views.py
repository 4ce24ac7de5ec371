"""The analysts' SQL interface (migration 0007, docs/analyst.md) on plain PostgreSQL.

Everything runs against the real server, connected as real login roles: comments on every view and
column, privileges (nothing readable but the views and, on TimescaleDB, the extension's own catalog;
nothing in public), jurisdiction scoping by analyst_scopes, the
security barrier against a leaky function of the analyst's own, index use of time-bounded queries,
and every ``-- plain`` query of the guide, some of them checked against a reference computation.

The seed data below is plain SQL on purpose: tests/analytics/test_analytics_oracle.py loads the very same
statements into the WASM TimescaleDB and compares the guide's results across the two paths.
"""

from __future__ import annotations

import itertools
import math
import os
import re
import secrets
from datetime import datetime, timedelta
from fractions import Fraction
from typing import Any

import psycopg
import pytest
from analysthelp import (
    DOC,
    K1_CODE,
    READABLE_SQL,
    TIME_BOUNDED,
    VIEWS,
    Analysts,
    Roles,
    connect_as,
    doc_blocks,
    forbidden_readable,
    index_conditions,
    named_block,
    rows,
    time_indexes,
    unreached_indexes,
)
from apihelp import build_world
from psycopg import sql

from alarms.rules import KIND_NAMES, KIND_SEVERITY, SEVERITY_NAMES
from coldchain.core import db
from coldchain.core.migrate import migrate

# ---------------------------------------------------------------------------------------------
# Documentation in the catalogue


def test_every_view_and_every_column_has_a_chinese_comment(analysts: Analysts) -> None:
    with db.connect(analysts.url) as conn:
        views = conn.execute(
            """SELECT c.relname, c.relkind, obj_description(c.oid, 'pg_class')
               FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
               WHERE n.nspname = 'analytics' ORDER BY 1"""
        ).fetchall()
        columns = conn.execute(
            """SELECT c.relname, a.attname, d.description
               FROM pg_class c
               JOIN pg_namespace n ON n.oid = c.relnamespace
               JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
               LEFT JOIN pg_description d ON d.objoid = c.oid AND d.classoid = 'pg_class'::regclass
                                          AND d.objsubid = a.attnum
               WHERE n.nspname = 'analytics' ORDER BY 1, a.attnum"""
        ).fetchall()
    assert {name for name, _, _ in views} == VIEWS
    assert {kind for _, kind, _ in views} == {"v"}
    chinese_first = re.compile(r"^[\u4e00-\u9fff]")
    for name, _, comment in views:
        assert comment and chinese_first.match(comment), f"视图 analytics.{name} 缺少中文注释：{comment!r}"
    assert len(columns) > 200
    for view, column, comment in columns:
        assert comment and chinese_first.match(comment), f"analytics.{view}.{column} 缺少中文注释：{comment!r}"


def test_the_guide_lists_every_view(analysts: Analysts) -> None:
    listed = set(re.findall(r"^\| `analytics\.([a-z_]+)` \|", DOC.read_text(encoding="utf-8"), re.M))
    assert listed == VIEWS


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


def test_time_bounded_queries_reach_the_indexes(analysts: Analysts) -> None:
    """The analyst's time condition must reach the scan through the barrier as an index condition.
    Sequential scans are switched off because the test tables are small: what is checked is that
    the condition can be used, not the planner's taste for tiny tables. And the check can fail:
    with index scans switched off instead, every view misses it."""
    with db.connect(analysts.url) as conn:
        indexes = time_indexes(conn)
    with connect_as(analysts.url, analysts.k1) as conn:

        def plans() -> dict[str, dict[str, Any]]:
            found = {}
            for view, (_, query) in TIME_BOUNDED.items():
                row = conn.execute(f"EXPLAIN (FORMAT JSON) {query}".encode()).fetchone()
                assert row is not None
                found[view] = row[0][0]["Plan"]
            return found

        conn.execute("SET enable_seqscan = off")
        indexed = plans()
        conn.execute("SET enable_seqscan = on; SET enable_indexscan = off; SET enable_bitmapscan = off")
        scanned = plans()
    assert unreached_indexes(indexed, indexes) == [], indexed
    assert unreached_indexes(scanned, indexes) == list(TIME_BOUNDED)


def test_the_index_check_takes_the_hypertables_index_or_a_chunks_copy_and_nothing_else() -> None:
    cond = "((ts >= '2026-11-21 06:00:00+00'::timestamp with time zone) AND (ts < '2026-11-21 07:00:00+00'))"

    def scan(relation: str, index: str | None, bitmap: bool = False) -> dict[str, Any]:
        if index is None:
            return {"Node Type": "Seq Scan", "Relation Name": relation, "Filter": cond}
        if bitmap:
            return {
                "Node Type": "Bitmap Heap Scan",
                "Relation Name": relation,
                "Recheck Cond": cond,
                "Plans": [{"Node Type": "Bitmap Index Scan", "Index Name": index, "Index Cond": cond}],
            }
        return {"Node Type": "Index Scan", "Relation Name": relation, "Index Name": index, "Index Cond": cond}

    def reached(*nodes: dict[str, Any]) -> bool:
        plan = {"Node Type": "Nested Loop", "Plans": [{"Node Type": "Append", "Plans": list(nodes)}]}
        return bool(index_conditions(plan, "probe_readings", "probe_readings_ts_idx"))

    assert reached(scan("probe_readings", "probe_readings_ts_idx"))
    assert reached(scan("probe_readings", "probe_readings_ts_idx", bitmap=True))
    assert reached(scan("_hyper_1_3_chunk", "_hyper_1_3_chunk_probe_readings_ts_idx"))
    assert reached(scan("_hyper_1_2_chunk", "_hyper_1_2_chunk_probe_readings_ts_idx", bitmap=True))
    assert not reached(scan("probe_readings", None))
    assert not reached(scan("_hyper_1_3_chunk", None))
    assert not reached(scan("probe_readings", "probe_readings_pkey"))
    assert not reached(scan("_hyper_1_3_chunk", "3_3_probe_readings_pkey"))
    assert not reached(scan("_hyper_1_3_chunk", "_hyper_1_2_chunk_probe_readings_ts_idx"))  # another chunk's
    assert not reached(scan("_hyper_2_5_chunk", "_hyper_2_5_chunk_gateway_status_ts_idx"))
    assert not reached(scan("compress_hyper_5_8_chunk", "compress_hyper_5_8_chunk_probe_readings_ts_idx"))


# ---------------------------------------------------------------------------------------------
# Content of individual views


def test_readings_flag_excursions_against_the_compartment_limits(analysts: Analysts) -> None:
    """Strictly outside the limits; a frozen compartment has no lower limit and is never "low"."""
    got = rows(
        analysts.url,
        analysts.k1,
        "SELECT mode, out_of_range, count(*) FROM analytics.readings "
        "WHERE ts >= '2026-11-21 00:00+08' AND ts < '2026-11-22 00:00+08' GROUP BY 1, 2 ORDER BY 1, 2",
    )
    assert got == [("frozen", False, 288), ("refrigerated", False, 280), ("refrigerated", True, 8)]


def test_excursions_hold_the_out_of_range_readings(analysts: Analysts) -> None:
    """Each out-of-range reading of a day belongs to one span; a span lasts at least as long as
    its readings are apart and at most 30 minutes past its last one."""
    by_readings = rows(
        analysts.url,
        analysts.k1,
        "SELECT unit_name, count(*) FROM analytics.readings WHERE out_of_range "
        "AND ts >= '2026-11-21 00:00+08' AND ts < '2026-11-22 00:00+08' GROUP BY 1 ORDER BY 1",
    )
    by_spans = rows(
        analysts.url,
        analysts.k1,
        "SELECT unit_name, sum(readings) FROM analytics.excursions "
        "WHERE started_at >= '2026-11-21 00:00+08' AND started_at < '2026-11-22 00:00+08' GROUP BY 1 ORDER BY 1",
    )
    assert by_readings and by_spans == by_readings
    assert rows(
        analysts.url,
        analysts.k1,
        "SELECT count(*) FROM analytics.excursions WHERE minutes > 0 "
        "AND minutes <= 30 * readings AND (max_t > t_max OR min_t < t_min)",
    ) == rows(analysts.url, analysts.k1, "SELECT count(*) FROM analytics.excursions")


def test_alarm_kinds_are_those_of_the_rules(analysts: Analysts) -> None:
    got = rows(
        analysts.url, analysts.unscoped, "SELECT kind, kind_name, severity, severity_name FROM analytics.alarm_kinds"
    )
    assert sorted(got) == sorted(
        (kind, name, KIND_SEVERITY[kind], SEVERITY_NAMES[KIND_SEVERITY[kind]]) for kind, name in KIND_NAMES.items()
    )


def test_alarms_carry_response_times_and_levels(analysts: Analysts) -> None:
    got = rows(
        analysts.url,
        analysts.k1,
        """SELECT kind_name, state_name, minutes_to_acknowledge, acknowledged_by_level, escalated_to_level,
                  closure_cause, unit_name, equipment_name, compartment_name, probe_serial
           FROM analytics.alarms ORDER BY raised_at""",
    )
    assert [(r[0], r[1], float(r[2]) if r[2] is not None else None, *r[3:]) for r in got] == [
        (
            "温度超上限",
            "已关闭",
            15.0,
            2,
            2,
            "取疫苗时门未关严",
            "电子城街道社区卫生服务中心",
            "海尔双温冰箱",
            "冷藏",
            "108601",
        ),
        (
            "探头无数据",
            "已恢复",
            None,
            None,
            None,
            None,
            "电子城街道社区卫生服务中心",
            "海尔双温冰箱",
            "冷藏",
            "108601",
        ),
    ]


def test_ledger_views_name_vaccines_lots_and_counterparties(analysts: Analysts) -> None:
    movements = rows(
        analysts.url,
        analysts.k1,
        """SELECT kind_name, unit_name, counterparty_unit_name, vaccine_name, lot_no, quantity, doses
           FROM analytics.stock_movements ORDER BY occurred_at""",
    )
    assert [m[0] for m in movements] == ["采购入库", "出库", "调拨收货", "采购入库", "接种使用"]
    assert movements[1][1:] == (
        "雁塔区疾病预防控制中心",
        "电子城街道社区卫生服务中心",
        "重组乙型肝炎疫苗（酿酒酵母）",
        "202605A01",
        -50,
        -50,
    )
    balances = rows(
        analysts.url,
        analysts.k1,
        "SELECT unit_name, lot_no, on_hand, available FROM analytics.stock_balances ORDER BY 1, 2",
    )
    assert balances == [
        ("电子城街道社区卫生服务中心", "202605A01", 38, 38),
        ("雁塔区疾病预防控制中心", "202605A01", 150, 150),
        ("雁塔区疾病预防控制中心", "202608F04", 30, 30),
    ]


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


# ---------------------------------------------------------------------------------------------
# The guide


def test_every_plain_query_of_the_guide_runs_as_an_analyst(analysts: Analysts) -> None:
    blocks = doc_blocks()
    kinds = [b.kind for b in blocks]
    assert kinds.count("plain") >= 15 and "timescaledb" in kinds
    toolkit = "\n".join(b.sql for b in blocks if b.kind == "toolkit")
    for function in ("time_weight(", "heartbeat_agg(", "state_agg(", "lttb("):
        assert function in toolkit, f"指南缺少 timescaledb-toolkit 的 {function} 示例"
    with connect_as(analysts.url, analysts.k1) as conn:
        for block in blocks:
            if block.kind != "plain":
                continue
            cur = conn.execute(block.sql.encode())
            if cur.description is not None:
                assert cur.fetchall(), f"指南中的查询 {block.name} 在测试数据上没有返回任何行"


def _reference_lttb(points: list[tuple[Fraction, Fraction]], threshold: int) -> list[int]:
    """Steinarsson's Largest-Triangle-Three-Buckets, as timescaledb-toolkit implements it."""
    n = len(points)
    if n <= threshold:
        return list(range(n))
    every = Fraction(n - 2, threshold - 2)
    chosen, a = [0], 0
    for i in range(threshold - 2):
        nxt = points[math.floor((i + 1) * every) + 1 : min(math.floor((i + 2) * every) + 1, n)]
        avg_x = sum((p[0] for p in nxt), Fraction(0)) / len(nxt)
        avg_y = sum((p[1] for p in nxt), Fraction(0)) / len(nxt)
        ax, ay = points[a]
        best, best_area = -1, Fraction(-1)
        for j in range(math.floor(i * every) + 1, math.floor((i + 1) * every) + 1):
            bx, by = points[j]
            area = abs((ax - avg_x) * (by - ay) - (ax - bx) * (avg_y - ay))
            if area > best_area:
                best, best_area = j, area
        chosen.append(best)
        a = best
    chosen.append(n - 1)
    return chosen


def test_the_plain_equivalents_compute_what_the_toolkit_would(analysts: Analysts) -> None:
    day = ("2026-11-21 00:00+08", "2026-11-22 00:00+08")
    readings = rows(
        analysts.url,
        analysts.k1,
        "SELECT ts, t FROM analytics.readings WHERE unit_name = '电子城街道社区卫生服务中心' "
        "AND compartment_name = '冷藏' AND ts >= %s AND ts < %s ORDER BY ts",
        day,
    )
    assert len(readings) == 288

    # lttb: the same 24 points as the reference algorithm.
    points = [(Fraction(int(ts.timestamp())), Fraction(str(t))) for ts, t in readings]
    expected = [readings[i][0] for i in _reference_lttb(points, 24)]
    assert [r[0] for r in rows(analysts.url, analysts.k1, named_block("lttb"))] == expected

    # time_weight: LOCF and linear averages of the next day, from the raw readings.
    got = {r[0]: (r[1], r[2]) for r in rows(analysts.url, analysts.k1, named_block("time_weight"))}
    for compartment in ("冷藏", "冷冻"):
        series = rows(
            analysts.url,
            analysts.k1,
            "SELECT extract(epoch FROM ts)::float8, t FROM analytics.readings "
            "WHERE unit_name = '电子城街道社区卫生服务中心' AND compartment_name = %s "
            "AND ts >= '2026-11-22 00:00+08' AND ts < '2026-11-23 00:00+08' ORDER BY ts",
            (compartment,),
        )
        pairs = list(itertools.pairwise(series))
        span = series[-1][0] - series[0][0]
        locf = sum(t0 * (x1 - x0) for (x0, t0), (x1, _) in pairs) / span
        linear = sum((t0 + t1) / 2 * (x1 - x0) for (x0, t0), (x1, t1) in pairs) / span
        assert got[compartment] == (pytest.approx(locf), pytest.approx(linear))

    # heartbeat: the silence of 03:00–04:30 is down from 03:05 (10 minutes after 02:55) to 04:30.
    beijing = datetime.fromisoformat("2026-11-22T03:05:00+08:00")
    (dead,) = rows(analysts.url, analysts.k1, named_block("heartbeat"))
    assert dead[:4] == (beijing, beijing + timedelta(minutes=85), timedelta(minutes=85), timedelta(minutes=85))
    assert dead[4] == timedelta(days=1) - timedelta(minutes=85)

    # state durations and timeline: above 8 ℃ from 14:00 to 14:40.
    assert dict(rows(analysts.url, analysts.k1, named_block("state_durations"))) == {
        "正常": timedelta(hours=23, minutes=55) - timedelta(minutes=40),
        "超上限": timedelta(minutes=40),
    }
    timeline = rows(analysts.url, analysts.k1, named_block("state_timeline"))
    assert [(s, a.isoformat(), b.isoformat()) for s, a, b in timeline][1] == (
        "超上限",
        "2026-11-21T06:00:00+00:00",
        "2026-11-21T06:40:00+00:00",
    )

    # gap-filling: empty buckets carry the last value forward and interpolate linearly.
    filled = rows(analysts.url, analysts.k1, named_block("gapfill"))
    assert len(filled) == 16
    gap = [r for r in filled if r[1] is None]
    assert len(gap) == 6
    before, after = filled[3], filled[10]
    for bucket, _, locf_t, interpolated in gap:
        share = (bucket - before[0]) / (after[0] - before[0])
        assert locf_t == before[1]
        assert interpolated == pytest.approx(before[1] + (after[1] - before[1]) * share)
