"""The ingest statement's NOTIFY (issue #17, docs/ingest.md "Notification of new readings"): one
notification per committed batch on ``coldchain_readings`` naming the compartments of the readings
it stored, nothing for a batch rolled back or holding only duplicates, ``{"all":true}`` when the
list would not fit PostgreSQL's payload limit — listened to, like the scheduler does, as the
runtime role."""

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


def test_a_committed_batch_names_the_compartments_it_stored(db_url: str, listener: psycopg.Connection) -> None:
    seed_fleet(db_url, probes=40)
    bound = bindings(db_url)
    probes = sorted(bound)[:7]
    now = datetime.now(UTC)
    # Two readings of one probe, and one from long before any binding (not stored: unbound).
    rows = [(p, now, 4.0) for p in probes] + [(probes[0], now - timedelta(seconds=5), 4.1)]
    rows.append((probes[-1], datetime(2000, 1, 1, tzinfo=UTC), 4.0))
    assert store_readings(db_url, rows) == len(probes) + 1

    expected = sorted({bound[p] for p in probes})
    payloads = heard(listener)
    assert payloads == [json.dumps({"compartments": expected}, separators=(",", ":"))]  # the documented form
    assert compartments_notified(payloads[0]) == frozenset(expected)

    # A redelivered batch stores nothing new, so it names nothing.
    assert store_readings(db_url, [(p, now, 4.0) for p in probes]) == 0
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
    now = datetime.now(UTC)
    _move(db_url, [(probe, now, 4.0)], commit=False)
    assert heard(listener) == []
    # The same batch committed is heard: the listener was listening all along.
    _move(db_url, [(probe, now, 4.0)], commit=True)
    assert heard(listener) == [f'{{"compartments":[{bound[probe]}]}}']


def test_a_batch_too_large_to_list_says_look_at_everything(db_url: str, listener: psycopg.Connection) -> None:
    seed_fleet(db_url, probes=2000)
    bound = bindings(db_url)
    listed = ",".join(str(c) for c in sorted(set(bound.values())))
    assert len(listed) > NOTIFY_PAYLOAD_LIMIT  # the test's premise: 2 000 ids do not fit
    assert store_readings(db_url, [(p, datetime.now(UTC), 4.0) for p in bound]) == len(bound)
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
        await publish(mqtt_broker.url, [telemetry(gateway, [{"probe": p, "t": 4.5, "ts": ts_ms} for p in probes])])
        await wait_until(lambda: ing.metrics.readings_stored == len(probes), what="readings stored")
    payloads = heard(listener)
    assert payloads == [json.dumps({"compartments": compartments}, separators=(",", ":"))]
