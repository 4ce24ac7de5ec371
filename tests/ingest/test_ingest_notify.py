"""The ingest statement's NOTIFY (issue #17, docs/ingest.md "Notification of new readings"): one
notification per committed batch on ``coldchain_readings`` naming the compartments with a stored
reading out of their limits, nothing for a batch rolled back or holding only duplicates or
in-range readings, ``{"all":true}`` when the list would not fit PostgreSQL's payload limit —
listened to, like the scheduler does, as the runtime role."""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime, timedelta

import psycopg
import pytest
from dbhelp import as_runtime
from ingesthelp import config, publish, running, seed_fleet, store_readings, telemetry, wait_until

from coldchain import services
from coldchain.core import db
from ingest.store import MOVE_READINGS, NOTIFY_PAYLOAD_LIMIT, READINGS_CHANNEL, STAGE_DDL, compartments_notified

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


@pytest.fixture
def listener(db_url: str) -> Iterator[psycopg.Connection]:
    """A connection LISTENing on the channel as the runtime role (the scheduler's role)."""
    with db.connect(as_runtime(db_url), autocommit=True) as conn:
        conn.execute(f'LISTEN "{READINGS_CHANNEL}"')
        yield conn


def heard(conn: psycopg.Connection, seconds: float = 1.0) -> list[str]:
    """The payloads of every notification arriving within ``seconds``."""
    out = []
    for note in conn.notifies(timeout=seconds):
        assert note.channel == READINGS_CHANNEL
        out.append(note.payload)
    return out


def bindings(url: str) -> dict[int, int]:
    """probe id → compartment id, for the bindings in force now."""
    with db.connect(url) as conn:
        return dict(conn.execute("SELECT probe_id, compartment_id FROM probe_bindings_current").fetchall())


def limits(url: str) -> dict[int, tuple[float | None, float]]:
    """compartment id → (t_min, t_max) from the registry."""
    with db.connect(url) as conn:
        rows = conn.execute("SELECT id, t_min::float8, t_max::float8 FROM compartments").fetchall()
    return {cid: (lo, hi) for cid, lo, hi in rows}


def inside(lo: float | None, hi: float) -> float:
    """A temperature within the limits (a freezer has no lower one)."""
    return hi - 1.0 if lo is None else (lo + hi) / 2


def test_a_committed_batch_names_the_compartments_with_readings_out_of_range(
    db_url: str, listener: psycopg.Connection
) -> None:
    seed_fleet(db_url, probes=40)
    bound = bindings(db_url)
    bounds = limits(db_url)
    cold = next(p for p in sorted(bound) if bounds[bound[p]][0] is not None)  # a compartment with a lower limit
    rest = [p for p in sorted(bound) if p != cold]
    hot, edge, calm = rest[:3], rest[3:5], rest[5:8]
    probes = [cold, *hot, *edge, *calm]
    now = datetime.now(UTC)
    rows = [(p, now, bounds[bound[p]][1] + 3.0) for p in hot]  # too warm
    rows.append((cold, now, (bounds[bound[cold]][0] or 0.0) - 0.1))  # too cold
    rows += [(p, now, bounds[bound[p]][1]) for p in edge]  # exactly on the limit: in range
    rows += [(p, now, inside(*bounds[bound[p]])) for p in calm]
    # An earlier out-of-range reading of a calm probe counts; one from before any binding is not stored.
    rows.append((calm[0], now - timedelta(seconds=5), bounds[bound[calm[0]]][1] + 0.5))
    rows.append((calm[1], datetime(2000, 1, 1, tzinfo=UTC), 99.0))
    assert store_readings(db_url, rows) == len(probes) + 1

    expected = sorted({bound[p] for p in [*hot, cold, calm[0]]})
    payloads = heard(listener)
    assert payloads == [json.dumps({"compartments": expected}, separators=(",", ":"))]  # the documented form
    assert compartments_notified(payloads[0]) == frozenset(expected)

    # A redelivered batch stores nothing new, so it names nothing; so does a batch all in range.
    assert store_readings(db_url, [(p, now, bounds[bound[p]][1] + 3.0) for p in hot]) == 0
    later = now + timedelta(seconds=1)
    assert store_readings(db_url, [(p, later, inside(*bounds[bound[p]])) for p in probes]) == len(probes)
    assert heard(listener, 0.5) == []


def _move(url: str, rows: Sequence[tuple[int, datetime, float]], *, commit: bool) -> None:
    """The ingest statement as the runtime role, then commit or roll back."""
    with db.connect(as_runtime(url)) as conn:
        conn.execute(STAGE_DDL)
        with conn.cursor() as cur:
            with cur.copy("COPY cc_stage_readings (probe_id, ts_us, t) FROM STDIN") as copy:
                for probe, ts, t in rows:
                    copy.write_row((probe, (ts - _EPOCH) // timedelta(microseconds=1), t))
            cur.execute(MOVE_READINGS)
            row = cur.fetchone()
            assert row is not None and row[2] == len(rows)  # stored, before the outcome is decided
        if commit:
            conn.commit()
        else:
            conn.rollback()


def test_a_rolled_back_batch_notifies_nothing(db_url: str, listener: psycopg.Connection) -> None:
    seed_fleet(db_url, probes=20)
    bound = bindings(db_url)
    probe = min(bound)
    now, hot = datetime.now(UTC), limits(db_url)[bound[probe]][1] + 3.0
    _move(db_url, [(probe, now, hot)], commit=False)
    assert heard(listener) == []
    # The same batch committed is heard: the listener was listening all along.
    _move(db_url, [(probe, now, hot)], commit=True)
    assert heard(listener) == [f'{{"compartments":[{bound[probe]}]}}']


def test_a_batch_too_large_to_list_says_look_at_everything(db_url: str, listener: psycopg.Connection) -> None:
    seed_fleet(db_url, probes=2000)
    bound = bindings(db_url)
    listed = ",".join(str(c) for c in sorted(set(bound.values())))
    assert len(listed) > NOTIFY_PAYLOAD_LIMIT  # the test's premise: 2 000 ids do not fit
    assert store_readings(db_url, [(p, datetime.now(UTC), 60.0) for p in bound]) == len(bound)  # all too warm
    payloads = heard(listener)
    assert payloads == ['{"all":true}']
    assert compartments_notified(payloads[0]) is None


def test_payloads_are_hints_and_nonsense_means_look_everywhere() -> None:
    assert compartments_notified('{"compartments":[3,1,3]}') == frozenset({1, 3})
    for nonsense in ('{"all":true}', "", "3,4", "[1,2]", '{"compartments":"all"}', '{"compartments":[1,true]}', "{"):
        assert compartments_notified(nonsense) is None, nonsense


async def test_the_ingester_notifies_once_its_batch_is_committed(
    db_url: str, mqtt_broker: services.Started, listener: psycopg.Connection
) -> None:
    fleet = seed_fleet(db_url, probes=40)
    gateway, probes = sorted(fleet.gateways.items())[0]
    with db.connect(db_url) as conn:
        compartments = sorted(
            r[0]
            for r in conn.execute(
                "SELECT b.compartment_id FROM probe_bindings_current b JOIN probes p ON p.id = b.probe_id"
                " WHERE p.serial = ANY(%s)",
                (probes,),
            ).fetchall()
        )
    ts_ms = int(datetime.now(UTC).timestamp() * 1000)
    async with running(config(db_url, mqtt_broker.url)) as ing:
        await publish(mqtt_broker.url, [telemetry(gateway, [{"probe": p, "t": 40.0, "ts": ts_ms} for p in probes])])
        await wait_until(lambda: ing.metrics.readings_stored == len(probes), what="readings stored")
    payloads = heard(listener)
    assert payloads == [json.dumps({"compartments": compartments}, separators=(",", ":"))]
