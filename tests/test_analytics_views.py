"""The analysts' SQL interface (migration 0007, docs/analyst.md) on plain PostgreSQL.

Everything runs against the real server, connected as real login roles: comments on every view and
column, privileges (nothing readable but the views and, on TimescaleDB, the extension's own catalog;
nothing in public), jurisdiction scoping by analyst_scopes, the
security barrier against a leaky function of the analyst's own, index use of time-bounded queries,
and every ``-- plain`` query of the guide, some of them checked against a reference computation.

The seed data below is plain SQL on purpose: tests/test_analytics_oracle.py loads the very same
statements into the WASM TimescaleDB and compares the guide's results across the two paths.
"""

from __future__ import annotations

import itertools
import math
import os
import re
import secrets
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from fractions import Fraction
from pathlib import Path
from typing import Any

import psycopg
import pytest
from apihelp import World, build_world
from conftest import DatabaseFactory
from psycopg import sql
from psycopg.conninfo import make_conninfo

from alarms.rules import KIND_NAMES, KIND_SEVERITY, SEVERITY_NAMES
from analytics.aggregates import refresh_aggregates
from coldchain.core import db
from coldchain.core.migrate import migrate

# ---------------------------------------------------------------------------------------------
# Seed data, shared with the TimescaleDB oracle test (plain SQL, integer arithmetic).

# Every currently bound probe, every 5 minutes, 2026-11-20 to 11-22 Beijing time. The refrigerated
# compartment of 电子城 (probe 108601) is above 8 ℃ from 14:00 to 14:40 on the 21st and silent from
# 03:00 to 04:30 on the 22nd.
READINGS_SQL = """
INSERT INTO probe_readings (probe_id, ts, t)
SELECT p.id, ts,
       CASE WHEN c.mode = 'frozen'
                THEN -20.0 + ((extract(epoch FROM ts)::bigint / 300 * 7 + p.serial::bigint * 13) % 40) / 10.0
            WHEN p.serial = '108601' AND ts >= '2026-11-21 14:00+08' AND ts < '2026-11-21 14:40+08'
                THEN 9.0 + ((extract(epoch FROM ts)::bigint / 300) % 5) / 10.0
            ELSE 2.5 + ((extract(epoch FROM ts)::bigint / 300 * 7 + p.serial::bigint * 13) % 50) / 10.0 END
FROM probe_bindings b
JOIN probes p ON p.id = b.probe_id
JOIN compartments c ON c.id = b.compartment_id
CROSS JOIN generate_series(timestamptz '2026-11-20 00:00+08', timestamptz '2026-11-22 23:55+08',
                           INTERVAL '5 minutes') AS ts
WHERE upper_inf(b.valid)
  AND NOT (p.serial = '108601' AND ts >= '2026-11-22 03:00+08' AND ts < '2026-11-22 04:30+08')
ON CONFLICT (probe_id, ts) DO NOTHING;
"""

GATEWAY_SQL = """
INSERT INTO gateway_status (gateway_id, ts, online, power, battery, rssi)
SELECT g.id, ts, true,
       CASE WHEN g.serial = '10001' AND ts >= '2026-11-21 20:00+08' AND ts < '2026-11-21 22:00+08'
            THEN 'battery' ELSE 'ac' END,
       4.1, -70
FROM gateways g
CROSS JOIN generate_series(timestamptz '2026-11-21 00:00+08', timestamptz '2026-11-21 23:45+08',
                           INTERVAL '15 minutes') AS ts;
"""

ALARMS_SQL = """
INSERT INTO alarms (kind, severity, unit_id, equipment_id, compartment_id, probe_id, state, condition_since,
                    raised_at, value, t_min, t_max, acknowledged_at, ack_channel, on_site, resolved_at, closed_at,
                    closure)
SELECT x.kind, x.severity, e.unit_id, e.id, c.id, p.id, x.state, x.since, x.raised, x.value, c.t_min, c.t_max,
       x.acked, x.channel, x.on_site, x.resolved, x.closed, x.closure::jsonb
FROM (VALUES
    ('108601', 'high', 'major', 'closed', timestamptz '2026-11-21 14:00+08', timestamptz '2026-11-21 14:10+08', 9.4,
     timestamptz '2026-11-21 14:25+08', 'wechat', true, timestamptz '2026-11-21 14:40+08',
     timestamptz '2026-11-21 16:00+08',
     '{"cause": "取疫苗时门未关严", "action": "关门并检查门封", "vaccine_disposition": "评估后继续使用"}'),
    ('108601', 'no_data', 'major', 'resolved', timestamptz '2026-11-22 02:55+08', timestamptz '2026-11-22 03:25+08',
     NULL, NULL, NULL, NULL, timestamptz '2026-11-22 04:30+08', NULL, NULL),
    ('208601', 'no_data', 'major', 'active', timestamptz '2026-11-22 09:30+08', timestamptz '2026-11-22 10:00+08',
     NULL, NULL, NULL, NULL, NULL, NULL, NULL)
) AS x (serial, kind, severity, state, since, raised, value, acked, channel, on_site, resolved, closed, closure)
JOIN probes p ON p.serial = x.serial
JOIN probe_bindings b ON b.probe_id = p.id AND upper_inf(b.valid)
JOIN compartments c ON c.id = b.compartment_id
JOIN equipment e ON e.id = c.equipment_id;
INSERT INTO alarm_events (alarm_id, ts, action, channel, details)
SELECT a.id, x.ts, x.action, x.channel, x.details::jsonb
FROM alarms a
JOIN (VALUES
    ('high', 'opened', timestamptz '2026-11-21 14:10+08', NULL, '{"value": 9.2}'),
    ('high', 'acknowledged', timestamptz '2026-11-21 14:25+08', 'wechat', NULL),
    ('high', 'worsened', timestamptz '2026-11-21 14:30+08', NULL, '{"value": 9.4}'),
    ('high', 'resolved', timestamptz '2026-11-21 14:40+08', NULL, NULL),
    ('high', 'closed', timestamptz '2026-11-21 16:00+08', 'web', NULL),
    ('no_data', 'opened', timestamptz '2026-11-22 03:25+08', NULL, NULL)
) AS x (kind, action, ts, channel, details) ON x.kind = a.kind AND a.state <> 'active';
INSERT INTO alarm_events (alarm_id, ts, action)
SELECT id, raised_at, 'opened' FROM alarms WHERE state = 'active';
INSERT INTO notification_outbox (alarm_id, step, channel, target, levels, due_at, sent_at)
SELECT a.id, x.step, 'wecom', 'none:未配置通知去处', x.levels::smallint[], x.due, x.due
FROM alarms a
JOIN (VALUES ('open', '{1}', timestamptz '2026-11-21 14:10+08'),
             ('level2', '{1,2}', timestamptz '2026-11-21 14:40+08')) AS x (step, levels, due)
  ON a.kind = 'high';
"""

LEDGER_SQL = """
INSERT INTO vaccine_categories (name) VALUES ('乙肝疫苗'), ('流感疫苗');
INSERT INTO manufacturers (name) VALUES ('华北制药');
INSERT INTO vaccines (category_id, name, programme)
SELECT id, CASE name WHEN '乙肝疫苗' THEN '重组乙型肝炎疫苗（酿酒酵母）' ELSE '四价流感病毒裂解疫苗' END,
       name = '乙肝疫苗'
FROM vaccine_categories;
INSERT INTO vaccine_specs (vaccine_id, manufacturer_id, spec, doses_per_vial, ref_wastage)
SELECT v.id, m.id, CASE WHEN v.programme THEN '10μg/0.5mL/支' ELSE '0.5mL/支' END, 1, 1.05
FROM vaccines v CROSS JOIN manufacturers m;
INSERT INTO lots (spec_id, lot_no, production_date, expiry_date, release_no, unit_id)
SELECT s.id, x.lot_no, '2026-05-01', x.expiry, 'SJ' || x.lot_no, (SELECT id FROM units WHERE code = '6100000000')
FROM (VALUES (true, '202605A01', date '2028-05-31'), (false, '202608F04', date '2027-01-31'))
    AS x (programme, lot_no, expiry)
JOIN vaccines v ON v.programme = x.programme
JOIN vaccine_specs s ON s.vaccine_id = v.id;
-- One posting after another: a balance must exist before it is spent.
DO $do$
DECLARE
    x record;
BEGIN
    FOR x IN
        SELECT v.kind, u.id AS unit_id, l.id AS lot_id, v.quantity, v.occurred, v.supplier,
               cu.id AS counterparty_id, b.compartment_id
        FROM (VALUES
            (1, 'receipt', '6101130000', '202605A01', 200, timestamptz '2026-11-20 09:00+08', NULL, '华北制药配送中心',
             NULL),
            (2, 'receipt', '6105020000', '202605A01', 100, timestamptz '2026-11-20 09:30+08', NULL, '华北制药配送中心',
             NULL),
            (3, 'issue', '6101130000', '202605A01', -50, timestamptz '2026-11-20 10:00+08', '6101130001', NULL, NULL),
            (4, 'transfer_receipt', '6101130001', '202605A01', 50, timestamptz '2026-11-20 15:00+08', '6101130000',
             NULL, '108601'),
            (5, 'receipt', '6101130000', '202608F04', 30, timestamptz '2026-11-21 09:00+08', NULL, '华北制药配送中心',
             NULL),
            (6, 'usage', '6101130001', '202605A01', -12, timestamptz '2026-11-21 17:00+08', NULL, NULL, NULL)
        ) AS v (seq, kind, unit_code, lot_no, quantity, occurred, counterparty, supplier, probe_serial)
        JOIN units u ON u.code = v.unit_code
        JOIN lots l ON l.lot_no = v.lot_no
        LEFT JOIN units cu ON cu.code = v.counterparty
        LEFT JOIN probes p ON p.serial = v.probe_serial
        LEFT JOIN probe_bindings b ON b.probe_id = p.id AND upper_inf(b.valid)
        ORDER BY v.seq
    LOOP
        PERFORM cc_post_movement(x.kind, x.unit_id, x.lot_id, x.quantity, x.occurred, NULL,
                                 p_counterparty => x.counterparty_id, p_supplier => x.supplier,
                                 p_compartment => x.compartment_id);
    END LOOP;
END
$do$;
INSERT INTO vaccinations (unit_id, lot_id, vaccinated_at, vaccinee_ref, dose_no)
SELECT u.id, l.id, timestamptz '2026-11-21 09:00+08' + g * INTERVAL '20 minutes',
       'VREF2026' || lpad(g::text, 4, '0'), 1 + g % 3
FROM units u, lots l, generate_series(1, 12) AS g
WHERE u.code = '6101130001' AND l.lot_no = '202605A01';
"""

SEED_SQL = (READINGS_SQL, GATEWAY_SQL, ALARMS_SQL, LEDGER_SQL)

# Materialised below this instant, live above it: the views must join both parts.
REFRESH_UNTIL = "2026-11-22T12:00:00+08:00"

K1_CODE, K2_CODE, PROVINCE_CODE = "6101130000", "6105020000", "6100000000"

VIEWS = {
    "my_scope", "units", "unit_tree", "equipment", "compartments", "probe_bindings", "readings", "readings_hourly",
    "readings_daily", "gateway_status", "alarm_kinds", "alarms", "alarm_events", "stock_movements",
    "stock_balances", "vaccinations", "excursions",
}

# What an analyst may read besides the views (docs/analyst.md §3): the TimescaleDB extension's own
# catalog, which the extension grants to PUBLIC: hypertable and chunk definitions, chunk time
# ranges, sizes and row counts, policies and job statistics. Metadata, as pg_catalog gives every
# role (pg_class.reltuples), never a reading, an aggregate or a ledger row. The chunks, compressed
# chunks and materialisation hypertables in _timescaledb_internal hold rows: they carry their
# hypertable's grants (none for analysts) and are never allowed, whatever they belong to.
TIMESCALEDB_CATALOG_SCHEMAS = frozenset(
    {
        "_timescaledb_catalog",
        "_timescaledb_config",
        "_timescaledb_cache",
        "_timescaledb_internal",
        "timescaledb_information",
        "timescaledb_experimental",
    }
)
_STORED_ROWS = re.compile(
    r"^(_hyper_|compress_hyper_|_materialized_hypertable_|_compressed_hypertable_|_partial_view_|_direct_view_)"
)

# Every relation (sequences too) {role} holds SELECT on, in every schema but PostgreSQL's own
# catalogs, with the extension it belongs to. The same text runs on the server and in the oracle.
READABLE_SQL = """
SELECT n.nspname AS schema_name, c.relname, c.relkind::text AS kind, e.extname
FROM pg_class c
JOIN pg_namespace n ON n.oid = c.relnamespace
LEFT JOIN pg_depend d ON d.classid = 'pg_class'::regclass AND d.objid = c.oid AND d.deptype = 'e'
LEFT JOIN pg_extension e ON e.oid = d.refobjid
WHERE n.nspname NOT IN ('pg_catalog', 'information_schema')
  AND c.relkind IN ('r', 'p', 'v', 'm', 'f', 'S')
  AND has_table_privilege({role}, c.oid, 'SELECT')
ORDER BY 1, 2
"""


def forbidden_readable(readable: list[tuple[str, str, str, str | None]]) -> list[str]:
    """The relations among READABLE_SQL's rows that an analyst must not be able to read."""

    def allowed(schema: str, name: str, kind: str, extension: str | None) -> bool:
        if schema == "analytics":
            return kind == "v" and name in VIEWS
        return extension == "timescaledb" and schema in TIMESCALEDB_CATALOG_SCHEMAS and not _STORED_ROWS.match(name)

    return sorted(f"{r[0]}.{r[1]}" for r in readable if not allowed(*r))


# ---------------------------------------------------------------------------------------------
# The guide's SQL blocks: the first line says where a block runs (see the table in docs/analyst.md).

DOC = Path(__file__).resolve().parents[1] / "docs" / "analyst.md"
_MARKER = re.compile(r"^-- (plain|timescaledb|toolkit|admin)(?:: ([a-z_]+))?\s*$")


@dataclass(frozen=True)
class DocBlock:
    kind: str
    name: str | None
    sql: str


def doc_blocks() -> list[DocBlock]:
    blocks = []
    for body in re.findall(r"^```sql\n(.*?)^```", DOC.read_text(encoding="utf-8"), re.S | re.M):
        first = body.splitlines()[0]
        match = _MARKER.match(first)
        assert match, f"docs/analyst.md 中的 SQL 代码块第一行须标明运行环境（-- plain 等），实际为：{first!r}"
        blocks.append(DocBlock(match.group(1), match.group(2), body))
    return blocks


def named_block(name: str) -> str:
    found = [b.sql for b in doc_blocks() if b.kind == "plain" and b.name == name]
    assert len(found) == 1, f"docs/analyst.md 应有且只有一个 -- plain: {name} 代码块"
    return found[0]


# ---------------------------------------------------------------------------------------------
# Login roles are cluster-wide: unique names per run, dropped again however the test ends.


class Roles:
    def __init__(self, url: str) -> None:
        self.url = url
        self.made: list[str] = []

    def name(self, tag: str) -> str:
        return f"cc_ana_{os.getpid()}_{secrets.token_hex(3)}_{tag}"

    def analyst(self, tag: str, *unit_codes: str) -> str:
        """A login analyst scoped to the units (through cc_grant_analyst), or unscoped without any."""
        role = self.name(tag)
        self.made.append(role)
        with db.connect(self.url, autocommit=True) as conn:
            if not unit_codes:
                conn.execute(sql.SQL("CREATE ROLE {} LOGIN IN ROLE coldchain_analyst").format(sql.Identifier(role)))
            for code in unit_codes:
                conn.execute("SELECT cc_grant_analyst(%s, %s)", (role, code))
        return role

    def drop_all(self) -> None:
        with db.connect(self.url, autocommit=True) as conn:
            for role in self.made:
                exists = conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (role,)).fetchone()
                if exists:
                    conn.execute(sql.SQL("DROP OWNED BY {}").format(sql.Identifier(role)))
                    conn.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(role)))


def connect_as(url: str, role: str) -> psycopg.Connection:
    return db.connect(make_conninfo(url, user=role), autocommit=True, application="coldchain-analyst-test")


def rows(url: str, role: str, query: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    with connect_as(url, role) as conn:
        return conn.execute(query.encode(), params).fetchall()


def seed(world: World) -> None:
    with db.connect(world.url) as conn:
        for statement in SEED_SQL:
            conn.execute(statement.encode())
        # Who acknowledged the excursion, and which level of responsibility that person holds.
        conn.execute(
            "INSERT INTO unit_responsibles (unit_id, level, user_id) VALUES (%s, 2, %s)",
            (world.units["T1"], world.users["ba_T1"]),
        )
        conn.execute("UPDATE alarms SET acknowledged_by = %s WHERE kind = 'high'", (world.users["ba_T1"],))
        conn.commit()
    refresh_aggregates(world.url, until=datetime.fromisoformat(REFRESH_UNTIL))
    with db.connect(world.url, autocommit=True) as conn:
        conn.execute("ANALYZE")


@dataclass(frozen=True)
class Analysts:
    world: World
    k1: str  # 雁塔区 (K1) and below
    k2: str  # 临渭区 (K2), K1's cousin under another city
    province: str  # the province, plus K1 again: overlapping scopes must not duplicate rows
    unscoped: str  # in coldchain_analyst, no scope

    @property
    def url(self) -> str:
        return self.world.url


@pytest.fixture(scope="module")
def analysts(databases: DatabaseFactory, migrated_template: str | None) -> Iterator[Analysts]:
    """One seeded database for the read-only tests of this module."""
    url = databases.create(template=migrated_template)
    if migrated_template is None:
        migrate(url)
    with db.connect(url, autocommit=True) as conn:
        if db.storage_path(conn) == "timescaledb":
            # The policies run whenever the scheduler reaches this database: compression would turn
            # the seed's November 2026 chunks columnar mid-module and change the plans under test.
            # Compressed chunks are checked in the oracle (test_analytics_oracle).
            conn.execute(
                "SELECT alter_job(job_id, scheduled => false) FROM timescaledb_information.jobs "
                "WHERE hypertable_name IS NOT NULL"
            )
    world = build_world(url)
    seed(world)
    roles = Roles(url)
    try:
        yield Analysts(
            world,
            k1=roles.analyst("k1", K1_CODE),
            k2=roles.analyst("k2", K2_CODE),
            province=roles.analyst("prov", PROVINCE_CODE, K1_CODE),
            unscoped=roles.analyst("none"),
        )
    finally:
        roles.drop_all()


@pytest.fixture
def roles(db_url: str) -> Iterator[Roles]:
    made = Roles(db_url)
    try:
        yield made
    finally:
        made.drop_all()


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
    assert rows(analysts.url, analysts.k1, "SELECT unit_name, city_name, county_name FROM analytics.units "
                                          "WHERE level = 'township'") == [
        ("电子城街道社区卫生服务中心", "西安市疾病预防控制中心", "雁塔区疾病预防控制中心")
    ]


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
# Plans


# Time-bounded reads of the three reading views: the time condition must reach an index on the time
# column of the table holding the rows. On plain PostgreSQL that is the table's own index; on
# TimescaleDB the same index of the hypertable (probe_readings, the aggregates' materialisation
# hypertables), which a plan names by each chunk's copy of it.
TIME_BOUNDED = {
    "readings": (
        "ts",
        "SELECT * FROM analytics.readings WHERE ts >= '2026-11-21 14:00+08' AND ts < '2026-11-21 15:00+08'",
    ),
    "readings_hourly": (
        "bucket",
        "SELECT * FROM analytics.readings_hourly "
        "WHERE bucket >= '2026-11-21 00:00+08' AND bucket < '2026-11-21 06:00+08'",
    ),
    "readings_daily": (
        "bucket",
        "SELECT * FROM analytics.readings_daily "
        "WHERE bucket >= '2026-11-20 00:00+08' AND bucket < '2026-11-21 00:00+08'",
    ),
}
PLAIN_TIME_INDEXES = {
    "readings": ("probe_readings", "probe_readings_ts_idx"),
    "readings_hourly": ("agg_probe_hourly", "agg_probe_hourly_bucket_idx"),
    "readings_daily": ("agg_probe_daily", "agg_probe_daily_bucket_idx"),
}
TIMESCALEDB_TIME_INDEXES_SQL = """
SELECT 'readings' AS view_name, 'probe_readings' AS relation, 'probe_readings_ts_idx' AS index_name
UNION ALL
SELECT replace(view_name, 'probe_', ''), materialization_hypertable_name,
       materialization_hypertable_name || '_bucket_idx'
FROM timescaledb_information.continuous_aggregates
WHERE view_name IN ('probe_readings_hourly', 'probe_readings_daily')
"""
_CHUNK = re.compile(r"_hyper_\d+_\d+_chunk")


def _nodes(plan: dict[str, Any]) -> Iterator[dict[str, Any]]:
    yield plan
    for child in plan.get("Plans", []):
        yield from _nodes(child)


def index_conditions(plan: dict[str, Any], relation: str, index: str) -> list[str]:
    """The condition of every scan by ``index`` of ``relation``, bitmap scans included, or of one of
    its chunks (``_hyper_N_M_chunk``) by the chunk's copy of it (``_hyper_N_M_chunk_<index>``)."""
    found = []
    for node in _nodes(plan):
        scanned = node.get("Relation Name")
        if scanned == relation:
            expected = index
        elif scanned and _CHUNK.fullmatch(scanned):
            expected = f"{scanned}_{index}"
        else:
            continue
        if node.get("Index Name") == expected and "Index Cond" in node:
            found.append(node["Index Cond"])
        for child in _nodes(node):
            if child.get("Node Type") == "Bitmap Index Scan" and child["Index Name"] == expected:
                found.append(child["Index Cond"])
    return found


def unreached_indexes(plans: dict[str, dict[str, Any]], indexes: dict[str, tuple[str, str]]) -> list[str]:
    """The views of TIME_BOUNDED whose plan does not bound the time column in the expected index."""
    missing = []
    for view, (column, _) in TIME_BOUNDED.items():
        relation, index = indexes[view]
        conditions = index_conditions(plans[view], relation, index)
        if not any(f"{column} >=" in c and f"{column} <" in c for c in conditions):
            missing.append(view)
    return missing


def time_indexes(conn: psycopg.Connection) -> dict[str, tuple[str, str]]:
    if db.storage_path(conn) != "timescaledb":
        return PLAIN_TIME_INDEXES
    return {view: (relation, index) for view, relation, index in conn.execute(TIMESCALEDB_TIME_INDEXES_SQL)}


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
    assert rows(analysts.url, analysts.k1, "SELECT count(*) FROM analytics.excursions WHERE minutes > 0 "
                                           "AND minutes <= 30 * readings AND (max_t > t_max OR min_t < t_min)") == rows(
        analysts.url, analysts.k1, "SELECT count(*) FROM analytics.excursions"
    )


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
        ("温度超上限", "已关闭", 15.0, 2, 2, "取疫苗时门未关严", "电子城街道社区卫生服务中心", "海尔双温冰箱",
         "冷藏", "108601"),
        ("探头无数据", "已恢复", None, None, None, None, "电子城街道社区卫生服务中心", "海尔双温冰箱",
         "冷藏", "108601"),
    ]


def test_ledger_views_name_vaccines_lots_and_counterparties(analysts: Analysts) -> None:
    movements = rows(
        analysts.url,
        analysts.k1,
        """SELECT kind_name, unit_name, counterparty_unit_name, vaccine_name, lot_no, quantity, doses
           FROM analytics.stock_movements ORDER BY occurred_at""",
    )
    assert [m[0] for m in movements] == ["采购入库", "出库", "调拨收货", "采购入库", "接种使用"]
    assert movements[1][1:] == ("雁塔区疾病预防控制中心", "电子城街道社区卫生服务中心", "重组乙型肝炎疫苗（酿酒酵母）",
                                "202605A01", -50, -50)
    balances = rows(analysts.url, analysts.k1,
                    "SELECT unit_name, lot_no, on_hand, available FROM analytics.stock_balances ORDER BY 1, 2")
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
        assert conn.execute("SELECT count(*) FROM pg_roles WHERE rolname LIKE %s", (f"cc_ana_{os.getpid()}_%_nounit",)
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
        assert conn.execute(
            "SELECT has_schema_privilege('coldchain_analyst', 'analytics', 'USAGE')"
        ).fetchone() == (True,)


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
        "超上限", "2026-11-21T06:00:00+00:00", "2026-11-21T06:40:00+00:00"
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
