"""What the analyst-interface tests share (tests/analytics/test_analytics_views.py and
test_analytics_access.py on the server, test_analytics_oracle.py in the WASM TimescaleDB): the seed
SQL, the views, the readable-relation check, the guide's code blocks, analyst roles, the index
check — and, as a pytest plugin loaded by tests/conftest.py, the ``analysts`` and ``roles``
fixtures."""

from __future__ import annotations

import os
import re
import secrets
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import psycopg
import pytest
from apihelp import World, build_world
from dbhelp import DatabaseFactory
from psycopg import sql
from psycopg.conninfo import make_conninfo

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
    "my_scope",
    "units",
    "unit_tree",
    "equipment",
    "compartments",
    "probe_bindings",
    "readings",
    "readings_hourly",
    "readings_daily",
    "gateway_status",
    "alarm_kinds",
    "alarms",
    "alarm_events",
    "stock_movements",
    "stock_balances",
    "vaccinations",
    "excursions",
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
