"""The TimescaleDB path, checked inside the WASM build of PostgreSQL + TimescaleDB 2.23.

Every migration is applied there exactly as the migrator applies it (one transaction each,
coldchain.timescaledb set), then the aggregate scenario of tests/aggdata.py runs in both worlds
and every query must return the same rows. This is the only place the hypertable, continuous
aggregate and policy DDL runs on this machine, so it must not be skipped in CI.
"""

from __future__ import annotations

from typing import Any

import aggdata
import pytest
from oraclehelp import migration_steps, refresh_steps, run_oracle

from coldchain.core.migrate import migrate


@pytest.fixture(scope="module")
def oracle() -> dict[str, list[dict[str, Any]]]:
    steps = migration_steps()
    steps += [
        {
            "name": "path",
            "sql": "SELECT cc_timescaledb() AS ts, (SELECT extversion FROM pg_extension "
            "WHERE extname = 'timescaledb') AS version",
        },
        {
            "name": "hypertables",
            "sql": "SELECT hypertable_name, compression_enabled::text AS compressed "
            "FROM timescaledb_information.hypertables ORDER BY 1",
        },
        {
            "name": "dimensions",
            "sql": "SELECT hypertable_name, column_name, time_interval::text AS interval "
            "FROM timescaledb_information.dimensions ORDER BY 1",
        },
        {
            "name": "caggs",
            "sql": "SELECT view_name, materialized_only::text AS materialized_only, "
            "hypertable_name FROM timescaledb_information.continuous_aggregates ORDER BY 1",
        },
        {
            "name": "jobs",
            "sql": "SELECT proc_name, coalesce(hypertable_name, '') AS target, "
            "coalesce(config->>'drop_after', config->>'compress_after', "
            "config->>'start_offset', '') AS setting "
            "FROM timescaledb_information.jobs WHERE proc_name LIKE 'policy_%' "
            "AND proc_name <> 'policy_job_stat_history_retention' ORDER BY 1, 2",
        },
        {
            "name": "segmentby",
            "sql": "SELECT hypertable_name, attname AS column_name "
            "FROM timescaledb_information.compression_settings "
            "WHERE segmentby_column_index IS NOT NULL ORDER BY 1",
        },
        {
            "name": "plain_objects",
            "sql": "SELECT count(*)::text AS n FROM pg_class WHERE relname IN "
            "('agg_probe_hourly', 'agg_state', 'agg_invalidations')",
        },
        {"sql": aggdata.INITIAL},
        {"name": "hourly_1", "sql": aggdata.HOURLY},
        {"name": "daily_1", "sql": aggdata.DAILY},
        *refresh_steps(aggdata.REFRESH_1),
        {"name": "hourly_2", "sql": aggdata.HOURLY},
        {"name": "daily_2", "sql": aggdata.DAILY},
        {"sql": aggdata.LATE},
        {"name": "hourly_3", "sql": aggdata.HOURLY},
        {"name": "daily_3", "sql": aggdata.DAILY},
        *refresh_steps(aggdata.REFRESH_2),
        {"name": "hourly_4", "sql": aggdata.HOURLY},
        {"name": "daily_4", "sql": aggdata.DAILY},
        {"name": "raw_hourly", "sql": aggdata.RAW_HOURLY},
        {"name": "raw_daily", "sql": aggdata.RAW_DAILY},
        {"name": "compress", "sql": "SELECT count(compress_chunk(c))::text AS n FROM show_chunks('probe_readings') c"},
        {"name": "after_compress", "sql": aggdata.RAW_HOURLY},
        {"sql": _APPEND_ONLY},
        {"name": "append_only", "sql": "SELECT refused FROM append_only_result"},
        {
            "name": "retention",
            "sql": "SELECT count(*)::text AS dropped "
            "FROM drop_chunks('probe_readings', older_than => now() + interval '1 day')",
        },
        {"name": "retained", "sql": "SELECT count(*)::text AS left FROM probe_readings"},
    ]
    return run_oracle(steps)


# Every way of changing a stored reading, on compressed chunks too: each must be refused by 0010's
# triggers (as the owner: the runtime role has no such privilege at all).
_APPEND_ONLY = """
DO $$
DECLARE
    refused text := '';
BEGIN
    BEGIN UPDATE probe_readings SET t = t + 1 WHERE probe_id = 1;
    EXCEPTION WHEN restrict_violation THEN refused := refused || 'U'; END;
    BEGIN DELETE FROM probe_readings WHERE probe_id = 1;
    EXCEPTION WHEN restrict_violation THEN refused := refused || 'D'; END;
    BEGIN TRUNCATE probe_readings;
    EXCEPTION WHEN restrict_violation THEN refused := refused || 'T'; END;
    INSERT INTO gateway_status (gateway_id, ts, online) VALUES (1, now(), true);
    BEGIN UPDATE gateway_status SET online = NOT online;
    EXCEPTION WHEN restrict_violation THEN refused := refused || 'g'; END;
    CREATE TEMP TABLE append_only_result AS SELECT refused;
END $$
"""


def test_every_migration_builds_the_timescaledb_path(oracle: dict[str, list[dict[str, Any]]]) -> None:
    assert oracle["path"][0]["ts"] is True
    assert oracle["path"][0]["version"].startswith("2.")
    assert oracle["plain_objects"] == [{"n": "0"}]


def test_hypertables_with_chunk_intervals_and_compression(oracle: dict[str, list[dict[str, Any]]]) -> None:
    assert oracle["hypertables"] == [
        {"hypertable_name": "gateway_status", "compressed": "true"},
        {"hypertable_name": "probe_readings", "compressed": "true"},
    ]
    intervals = {
        r["hypertable_name"]: (r["column_name"], r["interval"])
        for r in oracle["dimensions"]
        if r["hypertable_name"] in ("probe_readings", "gateway_status")
    }
    assert intervals == {"probe_readings": ("ts", "1 day"), "gateway_status": ("ts", "7 days")}
    assert {(r["hypertable_name"], r["column_name"]) for r in oracle["segmentby"]} >= {
        ("probe_readings", "probe_id"),
        ("gateway_status", "gateway_id"),
    }


def test_real_time_continuous_aggregates_hourly_and_daily(oracle: dict[str, list[dict[str, Any]]]) -> None:
    caggs = {r["view_name"]: r["materialized_only"] for r in oracle["caggs"]}
    assert caggs == {"probe_readings_hourly": "false", "probe_readings_daily": "false"}
    daily = next(r for r in oracle["caggs"] if r["view_name"] == "probe_readings_daily")
    # Hierarchical: the daily aggregate is built on the hourly one.
    assert daily["hypertable_name"].startswith("_materialized_hypertable_")


def test_refresh_compression_and_retention_policies(oracle: dict[str, list[dict[str, Any]]]) -> None:
    jobs = {(r["proc_name"], r["setting"]) for r in oracle["jobs"]}
    assert ("policy_refresh_continuous_aggregate", "30 days") in jobs
    assert ("policy_refresh_continuous_aggregate", "90 days") in jobs
    assert ("policy_compression", "7 days") in jobs
    assert ("policy_compression", "30 days") in jobs
    assert ("policy_retention", "8 years") in jobs


def test_both_paths_return_the_same_aggregate_rows(oracle: dict[str, list[dict[str, Any]]], empty_db: str) -> None:
    migrate(empty_db, timescaledb="off")
    plain = aggdata.run_plain_scenario(empty_db)
    for name in (
        "hourly_1",
        "daily_1",
        "hourly_2",
        "daily_2",
        "hourly_3",
        "daily_3",
        "hourly_4",
        "daily_4",
        "raw_hourly",
        "raw_daily",
    ):
        assert oracle[name] == plain[name], f"{name}: TimescaleDB and plain PostgreSQL differ"
    # And on TimescaleDB too, the refreshed aggregates equal the raw computation.
    assert oracle["hourly_4"] == oracle["raw_hourly"]
    assert oracle["daily_4"] == oracle["raw_daily"]


def test_compressed_chunks_read_the_same(oracle: dict[str, list[dict[str, Any]]]) -> None:
    assert int(oracle["compress"][0]["n"]) >= 3
    assert oracle["after_compress"] == oracle["raw_hourly"]


def test_readings_are_append_only_and_retention_drops_whole_chunks(oracle: dict[str, list[dict[str, Any]]]) -> None:
    assert oracle["append_only"] == [{"refused": "UDTg"}]
    # The retention policy's drop_chunks is not a DELETE: the triggers let it through.
    assert int(oracle["retention"][0]["dropped"]) >= 3 and oracle["retained"] == [{"left": "0"}]
