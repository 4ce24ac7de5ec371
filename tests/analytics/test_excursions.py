"""Excursion spans (sql/migrations/0009_excursions.sql): materialised out-of-range time must equal
the rule stated in Python (inventory.exposure.out_of_range_minutes) whatever arrives late, whatever the
refresh boundaries, across a probe moved to another compartment and a change of limits — and the
TimescaleDB path must store the very same spans."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from apihelp import World, build_world
from dbhelp import execute, query
from ingesthelp import store_readings

from analytics.aggregates import refresh_aggregates
from coldchain.core import db
from coldchain.core.migrate import migrate
from ingest.store import MOVE_READINGS, STAGE_DDL
from inventory.custody import Interval
from inventory.exposure import Segment, out_of_range_minutes, temperatures

T0 = datetime(2026, 3, 1, 15, 2, 11, tzinfo=UTC)


def _insert(url: str, probe: int, points: list[tuple[datetime, float]]) -> None:
    """Readings stored as the ingester stores them (its staging table and its one statement, as
    the runtime role), so late ones are logged exactly as in production."""
    store_readings(url, [(probe, ts, t) for ts, t in points])


def _minutes(url: str, segments: list[Segment]) -> dict[int, float]:
    with db.connect(url) as conn:
        got = temperatures(conn, segments)
        conn.rollback()
    return {k: v["minutes_out_of_range"] for k, v in got.items()}


def _stored(url: str) -> list[dict[str, Any]]:
    with db.connect(url) as conn:
        return db.fetch_all(conn, "SELECT * FROM excursion_spans ORDER BY probe_id, started_at")


def _recomputed(url: str, probe: int) -> list[dict[str, Any]]:
    with db.connect(url) as conn:
        return db.fetch_all(
            conn,
            """SELECT * FROM cc_excursion_spans(ARRAY[%(p)s]::bigint[], ARRAY['-infinity']::timestamptz[],
                                                 (SELECT materialized_until FROM excursion_state))
               ORDER BY probe_id, started_at""",
            {"p": probe},
        )


def _merged(spans: list[dict[str, Any]]) -> list[tuple[int, int, datetime, datetime]]:
    """Spans with the cuts of refresh boundaries healed, to compare two ways of computing them."""
    out: list[list[Any]] = []
    for s in spans:
        if out and out[-1][0] == s["probe_id"] and out[-1][1] == s["compartment_id"] and out[-1][3] == s["started_at"]:
            out[-1][3] = s["ended_at"]
        else:
            out.append([s["probe_id"], s["compartment_id"], s["started_at"], s["ended_at"]])
    return [(a, b, c, d) for a, b, c, d in out]


def test_spans_follow_the_rule_through_refreshes_late_readings_and_a_probe_move(world: World) -> None:
    rng = random.Random(9)
    probe = world.probes["208601"]
    fridge, freezer = world.compartments["T2/冷藏"], world.compartments["T2/冷冻"]
    # Three days every ~5 minutes, with silences of 35–90 minutes; values on, near and past the limits.
    points: list[tuple[datetime, float]] = []
    ts = T0
    while ts < T0 + timedelta(days=3):
        points.append((ts, rng.choice([5.0, 5.0, 7.9, 8.0, 8.4, 9.5, 2.0, 1.9, -16.0, -14.0])))
        ts += timedelta(minutes=rng.choice([5, 5, 5, 4, 6, 12, 31, 35, 90]), seconds=rng.choice([0, 0, 17]))
    moved_at = T0 + timedelta(days=2, hours=3, minutes=7)
    late = set(rng.sample(range(len(points)), 60))
    on_time = [p for i, p in enumerate(points) if i not in late]

    # Readings arrive in order, a day at a time, with a refresh after each day; the late ones come
    # after the last refresh that passed them. (Readings are never corrected: they are append-only.)
    for day in range(3):
        lo, hi = T0 + timedelta(days=day), T0 + timedelta(days=day + 1)
        _insert(world.url, probe, [(ts, t) for ts, t in on_time if lo <= ts < hi])
        if day == 2:
            # The probe is moved to the freezer; history after the move is judged by its limits.
            with db.connect(world.url) as conn:
                conn.execute(
                    "UPDATE probe_bindings SET valid = tstzrange(lower(valid), %s) WHERE id = %s",
                    (moved_at, world.bindings["208601"]),
                )
                conn.execute(
                    """INSERT INTO probe_bindings (probe_id, compartment_id, gateway_id, valid)
                       SELECT probe_id, %s, gateway_id, tstzrange(%s, NULL) FROM probe_bindings WHERE id = %s""",
                    (freezer, moved_at, world.bindings["208601"]),
                )
                conn.commit()
        if day == 1:
            _insert(world.url, probe, [points[i] for i in sorted(late) if points[i][0] < lo])
        refresh_aggregates(world.url, until=hi + timedelta(hours=rng.choice([0, 1, 3])))
    _insert(world.url, probe, [points[i] for i in sorted(late) if points[i][0] >= T0 + timedelta(days=1)])

    # Whatever is still pending is logged, not lost: before the next refresh the stored spans may be
    # stale; after it they equal a recomputation from scratch.
    with db.connect(world.url) as conn:
        pending = db.fetch_one(conn, "SELECT count(*) AS n FROM excursion_invalidations")
    assert pending is not None and pending["n"] > 0
    refresh_aggregates(world.url, until=T0 + timedelta(days=2, hours=20))
    stored = [s for s in _stored(world.url) if s["probe_id"] == probe]
    assert stored and _merged(stored) == _merged(_recomputed(world.url, probe))
    assert {s["compartment_id"] for s in stored} == {fridge, freezer}

    # Any window, on either compartment, partly materialised and partly live: the rule's minutes.
    ordered = sorted(points)
    before_move = [p for p in ordered if p[0] < moved_at]
    after_move = [p for p in ordered if p[0] >= moved_at]
    segments: list[Segment] = []
    expected: dict[int, float] = {}
    for key in range(80):
        lo = T0 + timedelta(minutes=rng.randint(-60, 3 * 24 * 60))
        hi = lo + timedelta(minutes=rng.choice([7, 55, 61, 600, 1440, 2900, 5000]))
        comp = rng.choice([fridge, freezer])
        segments.append(Segment(key, Interval(world.units["T2"], lo, hi), comp, lo, hi))
        if comp == fridge:
            # A reading's hold ends with its binding: the window is clipped at the move.
            readings = before_move + after_move[:1]
            expected[key] = out_of_range_minutes(readings, 2.0, 8.0, lo, min(hi, moved_at)) if lo < moved_at else 0
        else:
            # Readings from before the move were not the freezer's: none carries into it.
            expected[key] = out_of_range_minutes(after_move, None, -15.0, max(lo, moved_at), hi) if hi > moved_at else 0
    got = _minutes(world.url, segments)
    for s in segments:
        assert got[s.key] == pytest.approx(expected[s.key]), s


def test_current_readings_cost_nothing_and_late_ones_are_logged(world: World) -> None:
    probe = world.probes["108601"]
    refresh_aggregates(world.url)
    now = datetime.now(UTC)

    def logged() -> int:
        with db.connect(world.url) as conn:
            row = db.fetch_one(
                conn, "SELECT count(*) AS n FROM excursion_invalidations WHERE probe_id = %(p)s", {"p": probe}
            )
        assert row is not None
        return int(row["n"])

    _insert(world.url, probe, [(now - timedelta(minutes=3), 9.0), (now - timedelta(minutes=2), 9.5)])
    assert logged() == 0
    _insert(world.url, probe, [(now - timedelta(hours=3), 9.0)])
    assert logged() == 1
    result = refresh_aggregates(world.url)
    assert logged() == 0
    assert result.excursion_spans >= 1
    spans = [s for s in _stored(world.url) if s["probe_id"] == probe]
    assert [(s["started_at"], s["readings"], s["max_t"]) for s in spans] == [(now - timedelta(hours=3), 1, 9.0)]
    # Nothing new: nothing rewritten.
    assert refresh_aggregates(world.url).excursion_spans == 0


def test_a_hold_is_stored_only_once_the_reading_that_ends_it_can_no_longer_arrive_unseen(world: World) -> None:
    """The threshold passes a reading before its successor (on time, so never logged) arrives:
    had its hold been stored then as 30 minutes, it would stay 30 minutes."""
    probe, fridge = world.probes["108601"], world.compartments["T1/冷藏"]
    at = T0 + timedelta(hours=5)
    _insert(world.url, probe, [(at - timedelta(minutes=5), 5.0), (at, 9.0)])
    refresh_aggregates(world.url, until=at + timedelta(hours=2, minutes=10))  # threshold: at + 10 min
    _insert(world.url, probe, [(at + timedelta(minutes=20), 5.0)])
    segment = Segment(0, Interval(world.units["T1"], T0, T0), fridge, at - timedelta(hours=1), at + timedelta(hours=1))
    assert _minutes(world.url, [segment]) == {0: pytest.approx(20.0)}
    refresh_aggregates(world.url, until=at + timedelta(hours=4))
    assert _minutes(world.url, [segment]) == {0: pytest.approx(20.0)}
    assert [(s["started_at"], s["ended_at"]) for s in _stored(world.url) if s["probe_id"] == probe] == [
        (at, at + timedelta(minutes=20))
    ]


def test_a_first_refresh_without_readings_finishes_and_later_history_is_logged(empty_db: str) -> None:
    migrate(empty_db, timescaledb="off")
    world = build_world(empty_db, readings=False)
    assert refresh_aggregates(empty_db, until=T0).excursion_spans == 0
    with db.connect(empty_db) as conn:
        row = db.fetch_one(conn, "SELECT materialized_until FROM excursion_state")
    assert store_readings(empty_db, [(world.probes["108601"], T0 - timedelta(days=3), 9.0)]) == 1
    with db.connect(empty_db) as conn:
        logged = db.fetch_one(conn, "SELECT count(*) AS n FROM excursion_invalidations")
    assert row == {"materialized_until": T0 - timedelta(hours=2, minutes=30)}
    assert logged == {"n": 1}


def test_a_change_of_limits_rejudges_the_compartments_history(world: World) -> None:
    probe, fridge = world.probes["108601"], world.compartments["T1/冷藏"]
    _insert(world.url, probe, [(T0 + timedelta(minutes=5 * i), 7.5) for i in range(12)])
    refresh_aggregates(world.url, until=T0 + timedelta(days=1))
    segment = Segment(0, Interval(world.units["T1"], T0, T0), fridge, T0, T0 + timedelta(hours=2))
    assert _minutes(world.url, [segment]) == {0: 0.0}
    with db.connect(world.url) as conn:
        conn.execute("UPDATE compartments SET t_max = 7.0 WHERE id = %s", [fridge])
        conn.commit()
    refresh_aggregates(world.url, until=T0 + timedelta(days=1))
    # Twelve readings, the last holding 30 minutes: 55 + 30 minutes.
    assert _minutes(world.url, [segment]) == {0: pytest.approx(85.0)}


# ---------------------------------------------------------------------------------------------
# The TimescaleDB path: the same statements in the WASM build, the same spans.

_REGISTRY = """
INSERT INTO units (id, code, name, level) VALUES (1, '6100000000', '省疾控', 'province');
INSERT INTO equipment (id, unit_id, kind, name) VALUES (1, 1, 'medical_fridge', '双温冰箱');
INSERT INTO compartments (id, equipment_id, name, mode) VALUES (1, 1, '冷藏', 'refrigerated'), (2, 1, '冷冻', 'frozen');
INSERT INTO gateways (id, serial, unit_id) VALUES (1, 'G1', 1);
INSERT INTO probes (id, serial, unit_id) VALUES (1, 'P1', 1), (2, 'P2', 1), (3, 'P3', 1);
INSERT INTO probe_bindings (probe_id, compartment_id, gateway_id, valid) VALUES
    (1, 1, 1, tstzrange('2026-01-01', NULL)),
    (2, 1, 1, tstzrange('2026-01-01', '2026-01-11 09:07+08')),
    (2, 2, 1, tstzrange('2026-01-11 09:07+08', NULL)),
    (3, 2, 1, tstzrange('2026-01-01', NULL));
"""

# Integer arithmetic only, so both databases hold the very same readings; every 17th step is skipped
# and every 41st is 40 minutes late, so silences and gaps occur.
_READINGS = "\n".join(
    [
        STAGE_DDL,
        """
INSERT INTO cc_stage_readings (probe_id, ts_us, t)
SELECT p, (extract(epoch FROM timestamptz '2026-01-10 00:00+08' + n * INTERVAL '5 minutes'
                   + (n % 41 = 0)::int * INTERVAL '40 minutes') * 1000000)::bigint,
       CASE WHEN p = 3 THEN -18.0 + ((n * 7 + p * 3) % 50) / 10.0
            ELSE 1.0 + ((n * 7 + p * 3) % 90) / 10.0 END
FROM generate_series(1, 3) AS p, generate_series(0, 12 * 48) AS n
WHERE n % 17 <> 0;
""",
        MOVE_READINGS + ";",
    ]
)

# Late readings arrive as the ingester stores them: staged, then moved by its one statement, which
# logs those older than the threshold (migration 0013) on both paths alike.
_LATE = "\n".join(
    [
        STAGE_DDL,
        """
INSERT INTO cc_stage_readings (probe_id, ts_us, t) VALUES
    (1, extract(epoch FROM timestamptz '2026-01-10 03:02:30+08')::bigint * 1000000, 12.5),
    (2, extract(epoch FROM timestamptz '2026-01-10 07:01:00+08')::bigint * 1000000, 1.5),
    (3, extract(epoch FROM timestamptz '2026-01-10 05:00:30+08')::bigint * 1000000, -12.0);
""",
        MOVE_READINGS + ";",
        "UPDATE compartments SET t_min = -25 WHERE id = 2;",
    ]
)

_SPANS = """SELECT probe_id::text AS probe_id, compartment_id::text AS compartment_id,
    extract(epoch FROM started_at)::bigint::text AS started_at, extract(epoch FROM ended_at)::bigint::text AS ended_at,
    readings::text AS readings, min_t::text AS min_t, max_t::text AS max_t
FROM excursion_spans ORDER BY probe_id, started_at"""


_REFRESH = "SELECT spans::text, caught_up::text FROM cc_excursion_refresh()"


def _scenario() -> list[dict[str, str]]:
    def refresh(until: str) -> list[dict[str, str]]:
        # One day of readings per call: three calls catch up with these two days.
        return [{"sql": f"SELECT cc_excursion_advance_threshold('{until}')"}] + [
            {"name": f"refresh_{until[:10]}_{k}", "sql": _REFRESH} for k in range(3)
        ]

    return [
        {"sql": _REGISTRY},
        {"sql": _READINGS},
        *refresh("2026-01-11 06:00+08"),
        {"name": "spans_1", "sql": _SPANS},
        {"sql": _LATE},
        {
            # One row per probe and statement: where each probe starts again.
            "name": "logged",
            "sql": "SELECT probe_id::text AS probe_id, extract(epoch FROM min(since))::text AS since "
            "FROM excursion_invalidations GROUP BY 1 ORDER BY 1",
        },
        *refresh("2026-01-12 06:00+08"),
        {"name": "spans_2", "sql": _SPANS},
    ]


def _run_plain(url: str, steps: list[dict[str, str]]) -> dict[str, list[dict[str, Any]]]:
    out: dict[str, list[dict[str, Any]]] = {}
    for step in steps:
        if "name" in step:
            out[step["name"]] = query(url, step["sql"])
        else:
            execute(url, step["sql"])
    return out


def test_the_timescaledb_path_stores_the_same_spans(empty_db: str) -> None:
    from oraclehelp import migration_steps, run_oracle

    steps = _scenario()
    oracle = run_oracle(migration_steps() + steps)
    migrate(empty_db, timescaledb="off")
    plain = _run_plain(empty_db, steps)
    assert plain["spans_1"] and plain["spans_2"] != plain["spans_1"]
    assert {r["probe_id"] for r in plain["logged"]} == {"1", "2", "3"}
    assert [plain[f"refresh_2026-01-11_{k}"][0]["caught_up"] for k in range(3)] == ["false", "true", "true"]
    for name in ("spans_1", "logged", "spans_2"):
        assert oracle[name] == plain[name], f"{name}: TimescaleDB and plain PostgreSQL differ"
