"""The analysts' views on the TimescaleDB path, inside the WASM TimescaleDB (see test_timescale_oracle).

Same registry as tests/apihelp.py, same seed statements as tests/analytics/test_analytics_views.py; the
readings are partly compressed and the continuous aggregates partly materialised. Roles work in
the single-user WASM database through SET ROLE (logging in as a role cannot be tried there: it has
no connections), so scoping, privileges and the guide's queries run as the analyst, and every
``-- plain`` query of the guide must return what it returns on plain PostgreSQL.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from analysthelp import (
    K1_CODE,
    K2_CODE,
    READABLE_SQL,
    REFRESH_UNTIL,
    SEED_SQL,
    TIME_BOUNDED,
    TIMESCALEDB_TIME_INDEXES_SQL,
    VIEWS,
    Analysts,
    DocBlock,
    connect_as,
    doc_blocks,
    forbidden_readable,
    unreached_indexes,
)
from apihelp import _SITE_SERIALS, _UNITS, BOUND_FROM
from oraclehelp import migration_steps, refresh_steps, run_oracle

Results = dict[str, list[dict[str, Any]]]


def _q(value: object) -> str:
    """A literal for the oracle, which takes SQL text only (the values are this module's constants)."""
    return "NULL" if value is None else "'" + str(value).replace("'", "''") + "'"


def _id(table: str, where: str) -> str:
    return f"(SELECT id FROM {table} WHERE {where})"  # noqa: S608 - constants of tests/apihelp.py


def _insert(table: str, columns: str, *values: str) -> str:
    return f"INSERT INTO {table} ({columns}) VALUES ({', '.join(values)});"  # noqa: S608 - as above


def registry_sql() -> str:
    """tests/apihelp.py's province as SQL (the oracle speaks nothing else): units, and per site a
    two-zone fridge, its gateway, a bound probe per zone and a spare probe, in the same order."""
    codes = {key: code for key, code, *_ in _UNITS}
    out = [
        _insert(
            "units",
            "code, name, level, parent_id",
            _q(code),
            _q(name),
            _q(level),
            _id("units", f"code = {_q(codes[parent])}") if parent else "NULL",
        )
        for _, code, name, level, parent in _UNITS
    ]
    for site, digit in _SITE_SERIALS.items():
        unit = _id("units", f"code = {_q(codes[site])}")
        equipment = _id("equipment", f"unit_id = {unit}")
        gateway = f"{digit}0001"
        out.append(_insert("equipment", "unit_id, kind, name, brand", unit, "'fridge'", "'海尔双温冰箱'", "'海尔'"))
        out.append(
            _insert(
                "gateways",
                "serial, unit_id, vendor, installed_on, warranty_end",
                _q(gateway),
                unit,
                "'精创'",
                "'2024-01-01'",
                "current_date + 20",
            )
        )
        for zone, mode, tail in (("冷藏", "refrigerated", "8601"), ("冷冻", "frozen", "8604")):
            probe = f"{digit}0{tail}"
            out += [
                _insert("compartments", "equipment_id, name, mode", equipment, _q(zone), _q(mode)),
                _insert(
                    "probes",
                    "serial, unit_id, vendor, installed_on, warranty_end",
                    _q(probe),
                    unit,
                    "'精创'",
                    "'2024-01-01'",
                    "current_date + 400",
                ),
                _insert(
                    "probe_bindings",
                    "probe_id, compartment_id, gateway_id, valid",
                    _id("probes", f"serial = {_q(probe)}"),
                    _id("compartments", f"equipment_id = {equipment} AND name = {_q(zone)}"),
                    _id("gateways", f"serial = {_q(gateway)}"),
                    f"tstzrange({_q(BOUND_FROM.isoformat())}, NULL)",
                ),
            ]
        out.append(
            _insert(
                "probes",
                "serial, unit_id, vendor, status, warranty_end",
                _q(f"{digit}08602"),
                unit,
                "'精创'",
                "'in_stock'",
                "current_date + 10",
            )
        )
    return "\n".join(out)


def _json_rows(query: str) -> str:
    """One text value for any query, rendered by PostgreSQL itself, so both paths compare as equal text."""
    body = query.rstrip().rstrip(";")
    return f"SELECT coalesce(json_agg(q), '[]')::text AS j FROM (\n{body}\n) q"  # noqa: S608 - the guide's own SQL


def _units_by_view() -> str:
    parts = [
        f"SELECT '{view}' AS view_name, coalesce(string_agg(DISTINCT unit_name, ','), '') AS units "  # noqa: S608
        f"FROM analytics.{view}"
        for view in sorted(VIEWS - {"alarm_kinds", "unit_tree"})
    ]
    return " UNION ALL ".join(parts) + " ORDER BY 1"


def _row_counts() -> str:
    return " UNION ALL ".join(
        f"SELECT '{view}' AS view_name, count(*)::int AS n FROM analytics.{view}"  # noqa: S608 - fixed names
        for view in sorted(VIEWS - {"alarm_kinds"})
    )


# Every relation an analyst must not read: the business tables (each one tried) and, on this path,
# the chunks, compressed chunks and materialisation hypertables behind them (their privileges
# asked: TimescaleDB refuses a direct scan of a compressed chunk before any privilege check). Its
# own statistics views there are readable by everyone and hold none of our data.
_READABLE = """
DO $do$
DECLARE
    r record;
    readable text[] := '{}';
BEGIN
    FOR r IN
        SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
        WHERE n.nspname = 'public' AND c.relkind IN ('r', 'p', 'v', 'm', 'f')
    LOOP
        BEGIN
            EXECUTE format('SELECT 1 FROM public.%I LIMIT 1', r.relname);
            readable := readable || ('public.' || r.relname);
        EXCEPTION WHEN insufficient_privilege THEN
            NULL;
        END;
    END LOOP;
    PERFORM set_config('cc_test.readable', array_to_string(readable, ','), false);
END
$do$;
"""

_PRIVILEGED = """
SELECT count(*)::int AS checked,
       coalesce(string_agg(n.nspname || '.' || c.relname, ',') FILTER (
           WHERE has_table_privilege(c.oid, 'SELECT') OR has_table_privilege(c.oid, 'INSERT')
              OR has_table_privilege(c.oid, 'UPDATE') OR has_table_privilege(c.oid, 'DELETE')), '') AS granted
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE c.relkind IN ('r', 'p', 'v', 'm', 'f')
  AND (n.nspname = 'public'
       OR n.nspname = '_timescaledb_internal'
          AND c.relname ~ '^(_hyper_|compress_hyper_|_materialized_hypertable_|_partial_view_|_direct_view_)')
"""

_RLS = """
DO $do$
BEGIN
    ALTER TABLE probe_readings ENABLE ROW LEVEL SECURITY;
    PERFORM set_config('cc_test.rls', 'enabled', false);
EXCEPTION WHEN OTHERS THEN
    PERFORM set_config('cc_test.rls', SQLERRM, false);
END
$do$;
"""

BOUNDED = TIME_BOUNDED["readings"][1]


def _plan_steps(prefix: str) -> list[dict[str, str]]:
    return [
        {"name": f"{prefix}{view}", "sql": f"EXPLAIN (FORMAT JSON) {query}"}
        for view, (_, query) in TIME_BOUNDED.items()
    ]


def _is_setting(block: DocBlock) -> bool:
    """A SET statement (the guide's time zone advice): run, but it has no rows to compare."""
    return block.sql.split("\n", 1)[1].lstrip().upper().startswith("SET ")


def _guide_steps(prefix: str) -> list[dict[str, str]]:
    steps = [{"sql": "SET TIME ZONE 'UTC'"}]
    for i, block in enumerate(doc_blocks()):
        if block.kind == "plain" and _is_setting(block):
            steps.append({"sql": block.sql})
        elif block.kind in ("plain", "timescaledb"):
            steps.append({"name": f"{prefix}{i}", "sql": _json_rows(block.sql)})
    return steps


@pytest.fixture(scope="module")
def oracle() -> Results:
    steps = [
        *migration_steps(),
        {"sql": registry_sql()},
        *({"sql": statement} for statement in SEED_SQL),
        {"sql": f"SELECT cc_grant_analyst('ana_k1', '{K1_CODE}'), cc_grant_analyst('ana_k2', '{K2_CODE}')"},
        {"sql": "CREATE ROLE ana_none LOGIN IN ROLE coldchain_analyst"},
        *refresh_steps(REFRESH_UNTIL),
        {
            "name": "compressed",
            "sql": "SELECT count(compress_chunk(c))::int AS n FROM show_chunks('probe_readings', "
            "older_than => timestamptz '2026-11-22 00:00+08') c",
        },
        {"name": "chunks", "sql": "SELECT c::text AS chunk FROM show_chunks('probe_readings') c"},
        {"sql": _RLS},
        {"name": "rls", "sql": "SELECT current_setting('cc_test.rls') AS outcome"},
        {"name": "time_indexes", "sql": TIMESCALEDB_TIME_INDEXES_SQL},
        {"name": "column_stats", "sql": "SELECT count(*)::int AS n FROM _timescaledb_catalog.chunk_column_stats"},
        {"sql": "SET ROLE ana_k1"},
        {"name": "k1_units", "sql": _units_by_view()},
        {"sql": _READABLE},
        {"name": "k1_readable", "sql": "SELECT current_setting('cc_test.readable') AS readable"},
        {"name": "k1_privileged", "sql": _PRIVILEGED},
        {"name": "k1_bounded_plan", "sql": f"EXPLAIN {BOUNDED}"},
        {"name": "k1_unbounded_plan", "sql": "EXPLAIN SELECT * FROM analytics.readings"},
        {"name": "k1_may_read", "sql": READABLE_SQL.format(role="current_user")},
        {"name": "group_may_read", "sql": READABLE_SQL.format(role="'coldchain_analyst'")},
        {"sql": "SET enable_seqscan = off"},
        *_plan_steps("k1_indexed_"),
        {"sql": "SET enable_seqscan = on; SET enable_indexscan = off; SET enable_bitmapscan = off"},
        *_plan_steps("k1_scanned_"),
        {"sql": "RESET enable_seqscan; RESET enable_indexscan; RESET enable_bitmapscan"},
        *_guide_steps("k1_doc_"),
        {"sql": "RESET ROLE; SET ROLE ana_k2"},
        {"name": "k2_units", "sql": _units_by_view()},
        {"sql": "RESET ROLE; SET ROLE ana_none"},
        {"name": "none_counts", "sql": _row_counts()},
        {"sql": "RESET ROLE"},
    ]
    return run_oracle(steps)


def test_scoping_on_hypertables_and_continuous_aggregates(oracle: Results) -> None:
    assert oracle["compressed"] == [{"n": 2}]
    k1 = {r["view_name"]: set(filter(None, r["units"].split(","))) for r in oracle["k1_units"]}
    k2 = {r["view_name"]: set(filter(None, r["units"].split(","))) for r in oracle["k2_units"]}
    county_1 = {"雁塔区疾病预防控制中心", "电子城街道社区卫生服务中心"}
    county_2 = {"临渭区疾病预防控制中心", "向阳街道卫生院"}
    for view, names in k1.items():
        assert names and names <= county_1, f"analytics.{view}: {names}"
    for view, names in k2.items():
        assert names <= county_2, f"analytics.{view}: {names}"
    # Compressed chunks, materialised and real-time aggregate parts all pass through the scope.
    assert k1["readings"] == k1["readings_hourly"] == k1["readings_daily"] == {"电子城街道社区卫生服务中心"}
    assert k2["readings"] == {"向阳街道卫生院"}
    assert oracle["none_counts"] and all(r["n"] == 0 for r in oracle["none_counts"]), oracle["none_counts"]


def test_no_table_chunk_or_materialisation_is_readable(oracle: Results) -> None:
    assert oracle["k1_readable"] == [{"readable": ""}]
    (row,) = oracle["k1_privileged"]
    assert row["checked"] > 60  # tables, views, chunks, compressed chunks, materialisations
    assert row["granted"] == ""


def test_an_analyst_reads_the_views_and_the_timescaledb_catalog_only(oracle: Results) -> None:
    """Every relation the analyst (and the group role) holds SELECT on, in every schema: the views,
    and the metadata the extension grants to PUBLIC; no chunk, no materialisation, nothing in public."""
    for name in ("k1_may_read", "group_may_read"):
        readable = [(r["schema_name"], r["relname"], r["kind"], r["extname"]) for r in oracle[name]]
        assert forbidden_readable(readable) == [], name
        assert {relation for schema, relation, _, _ in readable if schema == "analytics"} == VIEWS
        catalog = {schema for schema, _, _, extension in readable if extension == "timescaledb"}
        assert {"_timescaledb_catalog", "timescaledb_information"} <= catalog  # the rule is not vacuous here
    # Chunk skipping (enable_chunk_skipping) would put each chunk's min / max of a column in the
    # catalog the analysts read; the schema does not use it.
    assert oracle["column_stats"] == [{"n": 0}]


def test_time_bounded_queries_reach_each_chunks_copy_of_the_index(oracle: Results) -> None:
    indexes = {r["view_name"]: (r["relation"], r["index_name"]) for r in oracle["time_indexes"]}
    assert indexes["readings_hourly"][0].startswith("_materialized_hypertable_"), indexes

    def plans(prefix: str) -> dict[str, dict[str, Any]]:
        return {view: oracle[f"{prefix}{view}"][0]["QUERY PLAN"][0]["Plan"] for view in TIME_BOUNDED}

    indexed = plans("k1_indexed_")
    assert unreached_indexes(indexed, indexes) == [], indexed
    assert all("_hyper_" in json.dumps(plan) for plan in indexed.values())  # chunks, not the hypertables
    assert unreached_indexes(plans("k1_scanned_"), indexes) == list(TIME_BOUNDED)


def test_row_level_security_is_refused_on_the_compressed_hypertable(oracle: Results) -> None:
    """Why the scope is not RLS: TimescaleDB will not enable it on probe_readings."""
    (row,) = oracle["rls"]
    assert row["outcome"] != "enabled"
    assert "columnstore" in row["outcome"] or "compress" in row["outcome"], row["outcome"]


def test_a_time_bounded_query_reads_one_chunk(oracle: Results) -> None:
    chunks = [r["chunk"].rsplit(".", 1)[-1] for r in oracle["chunks"]]
    assert len(chunks) == 4

    def scanned(plan: list[dict[str, Any]]) -> set[str]:
        text = "\n".join(r["QUERY PLAN"] for r in plan)
        return {c for c in chunks if c in text}

    assert len(scanned(oracle["k1_bounded_plan"])) == 1
    assert scanned(oracle["k1_unbounded_plan"]) == set(chunks)


def _normalised(text: str) -> Any:
    """Ids come from sequences and role names differ per run; floats may differ in the last bit
    because the two paths sum in different orders."""

    def walk(value: Any) -> Any:
        if isinstance(value, dict):
            return {k: walk(v) for k, v in value.items() if not k.endswith("_id") and k != "role_name"}
        if isinstance(value, list):
            return [walk(v) for v in value]
        if isinstance(value, float):
            return float(f"{value:.9g}")
        return value

    return walk(json.loads(text))


def test_the_guide_gives_the_same_rows_on_both_paths(oracle: Results, analysts: Analysts) -> None:
    blocks = doc_blocks()
    plain = {i: b for i, b in enumerate(blocks) if b.kind == "plain" and f"k1_doc_{i}" in oracle}
    assert len(plain) >= 15
    with connect_as(analysts.url, analysts.k1) as conn:
        conn.execute("SET TIME ZONE 'UTC'")
        for i, block in enumerate(blocks):
            if block.kind != "plain":
                continue
            if i not in plain:
                conn.execute(block.sql.encode())
                continue
            row = conn.execute(_json_rows(block.sql).encode()).fetchone()
            assert row is not None
            on_plain, on_timescale = _normalised(row[0]), _normalised(oracle[f"k1_doc_{i}"][0]["j"])
            assert on_plain, f"{block.name}: no rows"
            assert on_timescale == on_plain, f"指南查询 {block.name} 在两种存储路径上结果不同"


def test_gapfill_of_timescaledb_equals_the_plain_equivalent(oracle: Results) -> None:
    blocks = doc_blocks()
    by_name = {(b.kind, b.name): i for i, b in enumerate(blocks)}
    timescale = _normalised(oracle[f"k1_doc_{by_name[('timescaledb', 'gapfill')]}"][0]["j"])
    plain = _normalised(oracle[f"k1_doc_{by_name[('plain', 'gapfill')]}"][0]["j"])
    assert len(timescale) == 16
    assert [r["avg_t_locf"] for r in timescale if r["avg_t"] is None]  # the gap is there
    assert timescale == plain
