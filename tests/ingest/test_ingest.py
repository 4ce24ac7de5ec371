"""The ingester against the real broker and database: round trip, duplicates, bad input, registry rules."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime, timedelta

import pytest
from ingesthelp import (
    config,
    count,
    publish,
    running,
    scalar,
    seed_fleet,
    stream,
    telemetry,
    wait_until,
)

from coldchain import services
from coldchain.core import db


async def test_round_trip_stores_readings_latest_and_gateway_status(db_url: str, mqtt_broker: services.Started) -> None:
    fleet = seed_fleet(db_url)
    gateway, probes = sorted(fleet.gateways.items())[0]
    ts = datetime(2026, 11, 23, 8, 0, tzinfo=UTC)
    msg = telemetry(
        gateway,
        [{"probe": p, "t": 4.0 + i / 10, "rh": 55.5} for i, p in enumerate(probes)],
        ts=ts.isoformat(),
        power="battery",
        battery=3.7,
        rssi=-91,
    )
    later_ms = int((ts + timedelta(minutes=1)).timestamp() * 1000)
    later = telemetry(gateway, [{"probe": probes[0], "t": 5.5, "ts": later_ms}])
    async with running(config(db_url, mqtt_broker.url)) as ing:
        await publish(mqtt_broker.url, [msg, later])
        await wait_until(lambda: ing.metrics.readings_stored == len(probes) + 1, what="readings stored")
        assert ing.metrics.messages_acked == 2
    with db.connect(db_url) as conn:
        rows = conn.execute(
            "SELECT p.serial, r.ts, r.t, r.rh FROM probe_readings r JOIN probes p ON p.id = r.probe_id ORDER BY 1, 2"
        ).fetchall()
        latest: dict[str, float] = dict(
            conn.execute("SELECT p.serial, l.t FROM probe_latest l JOIN probes p ON p.id = l.probe_id").fetchall()
        )
        status = conn.execute(
            "SELECT s.ts, s.online, s.power, s.battery, s.rssi FROM gateway_status s"
            " JOIN gateways g ON g.id = s.gateway_id WHERE g.serial = %s ORDER BY s.ts",
            (gateway,),
        ).fetchall()
        gl = conn.execute(
            "SELECT l.online, l.power, l.rssi FROM gateway_latest l JOIN gateways g ON g.id = l.gateway_id"
            " WHERE g.serial = %s",
            (gateway,),
        ).fetchone()
    assert len(rows) == len(probes) + 1
    first = [r for r in rows if r[1] == ts]
    assert [(r[0], r[2], r[3]) for r in first] == [(p, pytest.approx(4.0 + i / 10), 55.5) for i, p in enumerate(probes)]
    assert latest[probes[0]] == 5.5  # the newer reading wins
    assert latest[probes[1]] == pytest.approx(4.1)
    assert status[0][:5] == (ts, True, "battery", pytest.approx(3.7), -91)
    assert gl == (True, "battery", -91)  # the second message had no power field: the last known stays


async def test_redelivered_and_repeated_readings_are_stored_once(db_url: str, mqtt_broker: services.Started) -> None:
    fleet = seed_fleet(db_url)
    msgs = stream(fleet, 50)
    async with running(config(db_url, mqtt_broker.url)) as ing:
        await publish(mqtt_broker.url, msgs)
        await publish(mqtt_broker.url, msgs[:20])  # a gateway re-uploading, or a broker redelivery
        await wait_until(lambda: ing.metrics.messages_acked == 70, what="all acked")
        assert ing.metrics.readings_stored == 400
        assert ing.metrics.readings_duplicate == 160
    assert count(db_url, "probe_readings") == 400


BAD_INPUT = [
    # (payload, reason, whole message refused?)
    (b"{not json", "bad_json", True),
    (b"\xff\xfe\x00", "bad_json", True),
    (b"[1, 2]", "bad_json", True),
    (b'{"ts": "2026-11-23T08:00:00+08:00"}', "bad_message", True),
    (b'{"ts": "yesterday", "readings": [{"probe": "P", "t": 4}]}', "bad_ts", True),
    (b'{"ts": "2026-11-23T08:00:00", "readings": [{"probe": "P", "t": 4}]}', "bad_ts", True),
    (b'{"ts": 0, "readings": [{"probe": "P", "t": 4}]}', "bad_ts", True),
    (b'{"ts": "NOW", "readings": [{"probe": "P"}]}', "bad_ts", True),
    (b'{"ts": "T", "readings": [{"probe": "P", "t": "abc", "ts": "T"}]}', "bad_t", True),
    (b'{"ts": "T", "readings": [{"probe": "P", "ts": "T"}]}', "missing_t", True),
    (b'{"ts": "T", "readings": [{"probe": "P", "t": 99.5, "ts": "T"}]}', "out_of_range", True),
    (b'{"ts": "T", "readings": [{"probe": "P", "t": -120, "ts": "T"}]}', "out_of_range", True),
    (b'{"ts": "T", "readings": [{"probe": "P", "t": true, "ts": "T"}]}', "bad_t", True),
    (b'{"ts": "T", "readings": [{"probe": "P", "t": NaN, "ts": "T"}]}', "bad_t", True),
    (b'{"ts": "FUTURE", "readings": [{"probe": "P", "t": 4}]}', "future_ts", True),
    (b'{"ts": "T", "readings": [{"t": 4, "ts": "T"}]}', "bad_probe", True),
]


async def test_every_bad_input_class_goes_to_dead_letters_with_raw_bytes(
    db_url: str, mqtt_broker: services.Started
) -> None:
    fleet = seed_fleet(db_url)
    gateway, probes = sorted(fleet.gateways.items())[0]
    now = datetime.now(UTC)
    good_ts = (now - timedelta(hours=1)).isoformat()
    future = (now + timedelta(minutes=10)).isoformat()
    topic = f"coldchain/v1/{gateway}/telemetry"
    cases = [
        (
            p.replace(b'"P"', json.dumps(probes[0]).encode())
            .replace(b'"T"', json.dumps(good_ts).encode())
            .replace(b'"FUTURE"', json.dumps(future).encode()),
            reason,
            whole,
        )
        for p, reason, whole in BAD_INPUT
    ]
    unknown_gateway = telemetry("99999", [{"probe": probes[0], "t": 4}], ts=good_ts)
    bad_topic = ("coldchain/v1/10001/extra/telemetry", b'{"readings": []}')
    # One bad reading among good ones: the good ones are stored, the message is kept for the bad one.
    mixed = telemetry(gateway, [{"probe": probes[0], "t": 4.2}, {"probe": probes[1], "t": 600}], ts=good_ts)
    messages = [(topic, p) for p, _, _ in cases] + [unknown_gateway, mixed]
    async with running(config(db_url, mqtt_broker.url)) as ing:
        await publish(mqtt_broker.url, messages)
        await wait_until(lambda: ing.metrics.messages_acked == len(messages), what="all acked")
        # A topic outside the contract is not subscribed to at all, so it cannot reach us:
        await publish(mqtt_broker.url, [bad_topic])
        await asyncio.sleep(0.3)
        assert ing.metrics.messages_received == len(messages)
    with db.connect(db_url) as conn:
        dead = conn.execute(
            "SELECT topic, payload, reason, whole, details FROM ingest_dead_letters ORDER BY id"
        ).fetchall()
        stored = conn.execute(
            "SELECT p.serial, r.t FROM probe_readings r JOIN probes p ON p.id = r.probe_id"
        ).fetchall()
    assert len(dead) == len(messages)
    for (payload, reason, whole), row in zip(cases, dead, strict=False):
        assert (row[0], bytes(row[1]), row[2], row[3]) == (topic, payload, reason, whole)
        assert row[4][0]["reason"] == reason and row[4][0]["message"]
    assert (dead[-2][2], bytes(dead[-2][1]), dead[-2][3]) == ("unknown_gateway", unknown_gateway[1], True)
    assert (dead[-1][2], dead[-1][3], dead[-1][4][0]["reading"]) == ("out_of_range", False, 1)
    assert stored == [(probes[0], 4.2)]  # only the good reading of the mixed message


async def test_unbound_decommissioned_and_unregistered_probes(db_url: str, mqtt_broker: services.Started) -> None:
    fleet = seed_fleet(db_url)
    gateway, probes = sorted(fleet.gateways.items())[0]
    bound, retired = probes[0], probes[1]
    cut = datetime.now(UTC) - timedelta(hours=2)
    with db.connect(db_url) as conn:
        # Decommission `retired` two hours ago (Form 4): its binding ends then.
        conn.execute(
            "UPDATE probe_bindings SET valid = tstzrange(lower(valid), %s)"
            " WHERE probe_id = (SELECT id FROM probes WHERE serial = %s) AND upper_inf(valid)",
            (cut, retired),
        )
        conn.execute("UPDATE probes SET status = 'decommissioned' WHERE serial = %s", (retired,))
        conn.execute("INSERT INTO probes (serial, status) VALUES ('777001', 'in_stock')")  # registered, never bound
    before = int((cut - timedelta(minutes=30)).timestamp() * 1000)
    after = int((cut + timedelta(minutes=30)).timestamp() * 1000)
    msg = telemetry(
        gateway,
        [
            {"probe": bound, "t": 5.0, "ts": after},
            {"probe": retired, "t": 5.1, "ts": before},  # still bound then: stored
            {"probe": retired, "t": 5.2, "ts": after},  # decommissioned by then: counted only
            {"probe": "777001", "t": 5.3, "ts": after},  # registered but never bound: counted only
            {"probe": "NEW-9", "t": 5.4, "ts": after},  # never registered: quarantine
        ],
    )
    async with running(config(db_url, mqtt_broker.url)) as ing:
        await publish(mqtt_broker.url, [msg])
        await wait_until(lambda: ing.metrics.messages_acked == 1, what="acked")
        m = ing.metrics
        assert (m.readings_stored, m.readings_unbound, m.readings_quarantined) == (2, 2, 1)
    with db.connect(db_url) as conn:
        stored = conn.execute(
            "SELECT p.serial, r.t FROM probe_readings r JOIN probes p ON p.id = r.probe_id ORDER BY 2"
        ).fetchall()
        unbound = conn.execute(
            "SELECT p.serial, u.n FROM probe_unbound_readings u JOIN probes p ON p.id = u.probe_id ORDER BY 1"
        ).fetchall()
        quarantine = conn.execute("SELECT probe_serial, gateway_serial, t FROM ingest_quarantine").fetchall()
        summary = conn.execute("SELECT probe_serial, readings FROM ingest_quarantine_summary").fetchall()
    assert stored == [(bound, 5.0), (retired, 5.1)]
    assert unbound == sorted([(retired, 1), ("777001", 1)])
    assert quarantine == [("NEW-9", gateway, 5.4)]
    assert summary == [("NEW-9", 1)]
    assert count(db_url, "ingest_dead_letters") == 0


async def test_status_messages_and_retained_replay(db_url: str, mqtt_broker: services.Started) -> None:
    fleet = seed_fleet(db_url)
    gateway = sorted(fleet.gateways)[0]
    topic = f"coldchain/v1/{gateway}/status"
    cfg = config(db_url, mqtt_broker.url)
    try:
        async with running(cfg) as ing:
            await publish(mqtt_broker.url, [(topic, b'{"online": false}')], retain=True)
            await wait_until(lambda: ing.metrics.messages_acked == 1, what="acked")
        assert scalar(db_url, "SELECT online FROM gateway_latest") is False
        assert count(db_url, "gateway_status") == 1
        # A new subscription gets the retained "offline" again: not a new event.
        async with running(config(db_url, mqtt_broker.url)) as ing:
            await wait_until(lambda: ing.metrics.messages_received >= 1, what="retained replay")
            await wait_until(lambda: ing.metrics.batches_committed >= 1, what="committed")
        assert count(db_url, "gateway_status") == 1
    finally:
        await publish(mqtt_broker.url, [(topic, b"")], retain=True)  # clear the retained message


async def test_two_ingesters_share_a_subscription(db_url: str, mqtt_broker: services.Started) -> None:
    fleet = seed_fleet(db_url)
    msgs = stream(fleet, 400)
    group = "t" + str(abs(hash(db_url)) % 10**8)
    async with (
        running(config(db_url, mqtt_broker.url, share_group=group)) as a,
        running(config(db_url, mqtt_broker.url, share_group=group)) as b,
    ):
        await publish(mqtt_broker.url, msgs)
        await wait_until(lambda: a.metrics.messages_acked + b.metrics.messages_acked == 400, what="all acked")
        assert a.metrics.messages_received > 0 and b.metrics.messages_received > 0
        assert a.metrics.messages_received + b.metrics.messages_received == 400
    assert count(db_url, "probe_readings") == 400 * 8


async def test_health_endpoint_reports_counters(db_url: str, mqtt_broker: services.Started) -> None:
    fleet = seed_fleet(db_url)
    port = services.free_port()
    async with running(config(db_url, mqtt_broker.url, health_port=port)) as ing:
        await publish(mqtt_broker.url, stream(fleet, 3))
        await wait_until(lambda: ing.metrics.messages_acked == 3, what="acked")
        status, body = await _get(port, "/healthz")
        assert status == 200
        health = json.loads(body)
        assert health["ok"] is True and health["readings_stored"] == 24
        status, text = await _get(port, "/metrics")
        assert status == 200 and "coldchain_ingest_readings_stored_total 24.0" in text
        status, _ = await _get(port, "/nope")
        assert status == 404


async def _get(port: int, path: str) -> tuple[int, str]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    data = await reader.read()
    writer.close()
    head, _, body = data.decode().partition("\r\n\r\n")
    return int(head.split()[1]), body


async def test_a_message_the_database_refuses_is_isolated_and_dead_lettered(
    db_url: str, mqtt_broker: services.Started
) -> None:
    """Checks in Python cover every constraint we know of; this is for the one we do not. A rule
    added in the database (here a CHECK) refuses one message of a batch: the batch is written
    message by message, the others are stored, the refused one is kept with the database's reason."""
    fleet = seed_fleet(db_url)
    with db.connect(db_url) as conn:
        conn.execute("ALTER TABLE probe_readings ADD CONSTRAINT test_no_13 CHECK (t <> 13.13)")
    gateway, probes = sorted(fleet.gateways.items())[0]
    ts = (datetime.now(UTC) - timedelta(hours=1)).isoformat()
    good = [telemetry(gateway, [{"probe": probes[0], "t": 4.0 + i, "ts": 1_790_000_000_000 + i}]) for i in range(5)]
    bad = telemetry(gateway, [{"probe": probes[1], "t": 13.13}], ts=ts)
    async with running(config(db_url, mqtt_broker.url, linger=0.5)) as ing:
        await publish(mqtt_broker.url, [*good[:3], bad, *good[3:]])
        await wait_until(lambda: ing.metrics.messages_acked == 6, what="all acked")
    assert count(db_url, "probe_readings") == 5
    row = scalar(db_url, "SELECT reason || ':' || (details -> 0 ->> 'detail') FROM ingest_dead_letters")
    assert isinstance(row, str) and row.startswith("db_rejected:") and "test_no_13" in row


async def test_falls_back_to_mqtt_311_on_a_broker_without_mqtt_5(db_url: str) -> None:
    """amqtt, the last fallback broker of the run command, speaks only MQTT 3.1.1."""
    broker = services.start_amqtt()
    try:
        fleet = seed_fleet(db_url)
        async with running(config(db_url, broker.url)) as ing:
            await publish(broker.url, stream(fleet, 20))
            await wait_until(lambda: ing.metrics.readings_stored == 160, what="stored via MQTT 3.1.1")
            assert ing.metrics.messages_acked == 20
    finally:
        broker.stop()
