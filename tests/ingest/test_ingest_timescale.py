"""The ingester's SQL on the TimescaleDB path, inside the WASM TimescaleDB (see test_timescale_oracle).

The staging move (binding check, ON CONFLICT, probe_latest, unbound counts) and the gateway status
move must work on hypertables too — including readings that land in an already compressed chunk,
as a gateway's buffered upload after a long outage can. COPY cannot run in the oracle, so the
staging tables are filled with INSERT; the statements under test are the ones the ingester runs.
"""

from __future__ import annotations

from datetime import UTC, datetime

from oraclehelp import migration_steps, run_oracle

from ingest import store

REGISTRY = """
INSERT INTO units (id, code, name, level) VALUES (1, '6100000000', '陕西省疾控中心', 'province');
INSERT INTO equipment (id, unit_id, kind, name) VALUES (1, 1, 'fridge', '1号冰箱');
INSERT INTO compartments (id, equipment_id, name, mode, t_min, t_max) VALUES (1, 1, '冷藏室', 'refrigerated', 2, 8);
INSERT INTO gateways (id, serial, unit_id) VALUES (1, '10001', 1);
INSERT INTO probes (id, serial, unit_id) VALUES (1, '200001', 1), (2, '200002', 1);
INSERT INTO probe_bindings (probe_id, compartment_id, gateway_id, valid)
VALUES (1, 1, 1, tstzrange('2026-01-01 00:00+00', NULL));
"""


def _us(text: str) -> int:
    dt = datetime.fromisoformat(text).replace(tzinfo=UTC)
    return int(dt.timestamp()) * 1_000_000


def _batch(name: str, rows: list[tuple[int, str, float]]) -> list[dict[str, str]]:
    values = ", ".join(f"({pid}, {_us(ts)}, {t}, NULL, NULL)" for pid, ts, t in rows)
    return [
        # The oracle's exec() takes SQL text only; the values are this test's own numbers.
        {"sql": f"BEGIN; INSERT INTO cc_stage_readings VALUES {values};"},  # noqa: S608
        {"sql": store.MOVE_READINGS, "name": name},
        {"sql": "COMMIT;"},
    ]


def test_ingest_statements_on_hypertables_and_compressed_chunks() -> None:
    steps = [
        *migration_steps(),
        {"sql": REGISTRY},
        {"sql": store.STAGE_DDL},
        *_batch("first", [(1, "2026-11-20 00:00", 4.5), (1, "2026-11-20 00:01", 9.5), (2, "2026-11-20 00:00", 5.0)]),
        *_batch("again", [(1, "2026-11-20 00:00", 4.5), (1, "2026-11-20 00:01", 9.5)]),
        {"sql": "SELECT count(compress_chunk(c)) AS n FROM show_chunks('probe_readings') c", "name": "compressed"},
        # A buffered upload into the compressed chunk: one new reading, one already stored.
        *_batch("late", [(1, "2026-11-20 00:02", 4.9), (1, "2026-11-20 00:01", 9.5)]),
        {
            "sql": (
                f"BEGIN; INSERT INTO cc_stage_status VALUES (1, {_us('2026-11-20 00:00')}, true, 'battery', 3.7, -95,"  # noqa: S608
                f" false), (1, {_us('2026-11-20 00:01')}, NULL, NULL, NULL, NULL, false);"
            )
        },
        {"sql": store._MOVE_STATUS},
        {"sql": "COMMIT;"},
        {"sql": "SELECT count(*)::int AS n, max(t) AS max_t FROM probe_readings", "name": "readings"},
        {"sql": "SELECT probe_id::int, t FROM probe_latest", "name": "latest"},
        {"sql": "SELECT probe_id::int, n::int FROM probe_unbound_readings", "name": "unbound"},
        {"sql": "SELECT online, power, rssi::int FROM gateway_latest", "name": "gateway"},
        {"sql": "SELECT count(*)::int AS n FROM gateway_status", "name": "status_rows"},
    ]
    out = run_oracle(steps)
    # One notification for a batch that stored a reading out of range (issue #17), none for
    # duplicates only, none for in-range readings only.
    assert out["first"] == [{"bound": 2, "unbound": 1, "stored": 2, "notified": 1}]
    assert out["again"] == [{"bound": 2, "unbound": 0, "stored": 0, "notified": 0}]
    assert out["compressed"] == [{"n": 1}]
    assert out["late"] == [{"bound": 2, "unbound": 0, "stored": 1, "notified": 0}]
    assert out["readings"] == [{"n": 3, "max_t": 9.5}]
    assert out["latest"] == [{"probe_id": 1, "t": 4.9}]
    assert out["unbound"] == [{"probe_id": 2, "n": 1}]
    assert out["gateway"] == [{"online": True, "power": "battery", "rssi": -95}]
    assert out["status_rows"] == [{"n": 2}]
