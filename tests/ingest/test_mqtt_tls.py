"""Gateways and the ingester on authenticated TLS (issue #18), against a real Mosquitto.

The broker runs the shipped ``deploy/mosquitto/coldchain.conf`` with only its paths and port
replaced, and the shipped ``deploy/mosquitto/coldchain.acl`` itself (not a copy written here):
what is proved here is what a deployment installs. Certificates are made with openssl, users
with ``mosquitto_passwd -b``. Skipped, with the reason, where mosquitto, mosquitto_passwd or
openssl is missing (Debian: ``apt-get install mosquitto mosquitto-clients openssl``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import signal
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from urllib.parse import quote

import aiomqtt
import pytest
from aiomqtt.exceptions import MqttConnectError
from dbhelp import as_runtime
from ingesthelp import config, running, scalar, seed_fleet, telemetry, unique_id, wait_until
from tlshelp import CONF, INGEST_USER, Broker, Pki, tls_broker

from coldchain import services
from coldchain.core.settings import MqttAddress, load_settings
from coldchain.doctor import check_broker
from coldchain.doctor_report import secrets_of

ROOT = Path(__file__).resolve().parents[2]
SETTINGS = ROOT / "ingest" / "mosquitto.conf"
# Characters a URL must percent-encode: the password reaches the broker decoded, or not at all.
INGEST_PASSWORD = f"In:ge@st/{secrets.token_hex(6)}%"
# The demo plan of seed_fleet (40 probes, seed 1) numbers its gateways from 10001.
GATEWAY, OTHER_GATEWAY = "10001", "10002"
GATEWAY_PASSWORD = f"Gw-{secrets.token_hex(8)}"
OTHER_PASSWORD = f"Gw-{secrets.token_hex(8)}"


# ------------------------------------------------------------------------------------ the broker


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory, pki: Pki) -> Iterator[Broker]:
    users = {INGEST_USER: INGEST_PASSWORD, GATEWAY: GATEWAY_PASSWORD, OTHER_GATEWAY: OTHER_PASSWORD}
    with tls_broker(tmp_path_factory.mktemp("mosquitto-tls"), pki, users) as b:
        yield b


def _ingest_env(broker: Broker, pki: Pki, **extra: str) -> dict[str, str]:
    """The ingester's settings as a deployment writes them: the password in its own variable."""
    return {
        "COLDCHAIN_MQTT_URL": f"mqtts://{INGEST_USER}@127.0.0.1:{broker.port}",
        "COLDCHAIN_MQTT_PASSWORD": INGEST_PASSWORD,
        "COLDCHAIN_MQTT_CA_FILE": str(pki.ca),
        **extra,
    }


def _ingest_address(broker: Broker, pki: Pki) -> MqttAddress:
    mqtt = load_settings(_ingest_env(broker, pki)).mqtt
    assert mqtt is not None
    return mqtt


def _context(ca: Path | None) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(ca) if ca else None)


@contextlib.asynccontextmanager
async def _client(
    broker: Broker, user: str | None, password: str | None, *, ca: Path | None, **options: object
) -> AsyncIterator[aiomqtt.Client]:
    """A client as a gateway connects: TLS against ``ca``, MQTT 3.1.1 (what most gateways speak)."""
    client = aiomqtt.Client(
        "127.0.0.1",
        broker.port,
        username=user,
        password=password,
        identifier=unique_id(f"test-{user or 'anonymous'}"),
        tls_context=_context(ca),
        timeout=10,
        **options,  # type: ignore[arg-type]
    )
    async with asyncio.timeout(15), client:
        yield client


def _stored(db_url: str, gateway: str) -> int:
    """Readings stored for the probes bound behind ``gateway``."""
    value = scalar(
        db_url,
        "SELECT count(*) FROM probe_readings WHERE probe_id IN (SELECT b.probe_id FROM probe_bindings_current b"
        " JOIN gateways g ON g.id = b.gateway_id WHERE g.serial = %s)",
        (gateway,),
    )
    assert isinstance(value, int)
    return value


def _online(db_url: str, gateway: str) -> object:
    return scalar(
        db_url,
        "SELECT l.online FROM gateway_latest l JOIN gateways g ON g.id = l.gateway_id WHERE g.serial = %s",
        (gateway,),
    )


def _status_rows(db_url: str, gateway: str) -> int:
    value = scalar(
        db_url,
        "SELECT count(*) FROM gateway_status s JOIN gateways g ON g.id = s.gateway_id WHERE g.serial = %s",
        (gateway,),
    )
    assert isinstance(value, int)
    return value


# ------------------------------------------------------------------------------------ the shipped files


def test_the_shipped_broker_file_keeps_every_setting_of_ingest_mosquitto_conf() -> None:
    """ingest/mosquitto.conf says why each queue and persistence line is needed; the production
    file must not drift from it (a lost max_queued_messages 0 silently drops readings)."""
    shipped = {line.strip() for line in CONF.read_text(encoding="utf-8").splitlines()}
    needed = [
        line.strip()
        for line in SETTINGS.read_text(encoding="utf-8").splitlines()
        if line.strip() and not line.lstrip().startswith("#")
    ]
    assert needed and [line for line in needed if line not in shipped] == []
    for line in ("allow_anonymous false", "per_listener_settings false", "require_certificate false"):
        assert line in shipped


# ------------------------------------------------------------------------------------ (1) the way in


def test_a_gateway_publishes_over_tls_and_the_ingest_command_stores_it(db_url: str, broker: Broker, pki: Pki) -> None:
    """The real ``coldchain ingest`` with the deployment's settings: user in the URL, password in
    its own variable, the CA file; a gateway signed in as itself; the reading reaches the table,
    and nothing the command prints carries the password."""
    fleet = seed_fleet(db_url)
    probes = fleet.gateways[GATEWAY]
    health = services.free_port()
    env = {
        **os.environ,
        "COLDCHAIN_DATABASE_URL": as_runtime(db_url),
        **_ingest_env(broker, pki),
        "COLDCHAIN_INGEST_CLIENT_ID": unique_id("test-ingest-tls"),
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "coldchain.cli", "--verbose", "ingest", "--health-port", str(health)],
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    output: list[str] = []
    subscribed = threading.Event()

    def read() -> None:
        assert proc.stdout is not None
        for raw in proc.stdout:
            line = raw.decode(errors="replace")
            output.append(line)
            if "订阅" in line:
                subscribed.set()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        assert subscribed.wait(30), "".join(output)

        async def publish() -> None:
            # Both of its topics: presence on connecting, readings, and offline on a clean shutdown
            # (the last one shows that the status topic got through: readings mark it online).
            async with _client(broker, GATEWAY, GATEWAY_PASSWORD, ca=pki.ca) as gw:
                status = f"coldchain/v1/{GATEWAY}/status"
                await gw.publish(status, b'{"online": true}', qos=1, retain=True)
                topic, payload = telemetry(
                    GATEWAY, [{"probe": p, "t": 4.2} for p in probes], ts="2026-11-23T08:00:00+08:00"
                )
                await gw.publish(topic, payload, qos=1)
                await gw.publish(status, b'{"online": false}', qos=1, retain=True)

        asyncio.run(publish())
        deadline = time.monotonic() + 20
        while _stored(db_url, GATEWAY) < len(probes) or _online(db_url, GATEWAY) is not False:
            assert time.monotonic() < deadline, "".join(output)
            time.sleep(0.1)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)
        reader.join(5)

    async def forget_retained() -> None:  # the other tests of this broker start without it
        async with _client(broker, GATEWAY, GATEWAY_PASSWORD, ca=pki.ca) as gw:
            await gw.publish(f"coldchain/v1/{GATEWAY}/status", b"", qos=1, retain=True)

    asyncio.run(forget_retained())
    text = "".join(output)
    assert proc.returncode == 0, text
    assert f"mqtts://127.0.0.1:{broker.port}" in text
    assert INGEST_PASSWORD not in text and quote(INGEST_PASSWORD, safe="") not in text
    assert _status_rows(db_url, GATEWAY) >= 2


def test_the_ingest_command_stops_at_start_on_a_missing_ca_file(tmp_path: Path, broker: Broker, pki: Pki) -> None:
    """A settings error (exit code 2, one Chinese line naming the variable), not a TLS failure at
    every reconnect of a service that retries for ever; no password in what it prints."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("COLDCHAIN_")}
    env.update(_ingest_env(broker, pki, COLDCHAIN_MQTT_CA_FILE=str(tmp_path / "gone.pem")))
    env["COLDCHAIN_DATABASE_URL"] = "postgresql://coldchain_app@127.0.0.1:9/coldchain"
    proc = subprocess.run(
        [sys.executable, "-m", "coldchain.cli", "ingest"], env=env, capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 2, proc.stderr
    assert f"COLDCHAIN_MQTT_CA_FILE 指向的文件不存在：{tmp_path / 'gone.pem'}" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert INGEST_PASSWORD not in proc.stdout + proc.stderr


# ------------------------------------------------------------------------------------ (2) only as itself


async def _denied(broker: Broker, user: str, password: str, pki: Pki, topic: str, payload: bytes) -> None:
    """A publish the ACL refuses. Mosquitto 2.0 acknowledges it at QoS 1 (PUBACK; reason code
    0x87 for an MQTT 5 client), drops it, and then closes the client's connection (eclipse-
    mosquitto/mosquitto#2579): the publish returns, and the connection ends by itself."""
    async with _client(broker, user, password, ca=pki.ca) as client:
        await client.publish(topic, payload, qos=1, timeout=5)  # acknowledged
        with pytest.raises(aiomqtt.MqttError):
            async with asyncio.timeout(5):
                async for _ in client.messages:
                    pass


async def test_a_gateway_cannot_publish_as_another_nor_read_and_the_ingester_cannot_publish(
    db_url: str, broker: Broker, pki: Pki, caplog: pytest.LogCaptureFixture
) -> None:
    """The broker's QoS 1 acknowledgement proves nothing, so the proof is on the receiving side:
    the ingester (and a second subscriber with the ingester's full read) get the gateway's own
    message, sent after the forged ones, and never a forged one."""
    caplog.set_level(logging.DEBUG)
    fleet = seed_fleet(db_url)
    own, others = fleet.gateways[GATEWAY], fleet.gateways[OTHER_GATEWAY]
    ts = "2026-11-23T08:00:00+08:00"
    forged = telemetry(OTHER_GATEWAY, [{"probe": p, "t": 30.0} for p in others], ts=ts)
    mine = telemetry(GATEWAY, [{"probe": p, "t": 4.4} for p in own], ts=ts)
    seen: list[str] = []
    async with (
        running(config(db_url, "mqtt://unused:1", mqtt=_ingest_address(broker, pki))) as ing,
        _client(broker, INGEST_USER, INGEST_PASSWORD, ca=pki.ca) as watcher,
    ):
        await watcher.subscribe([("coldchain/v1/+/telemetry", 1), ("coldchain/v1/+/status", 1)])

        async def watch() -> None:
            async for message in watcher.messages:
                seen.append(message.topic.value)

        watching = asyncio.create_task(watch())
        # As another gateway: its readings, its presence; and outside the device topics.
        await _denied(broker, GATEWAY, GATEWAY_PASSWORD, pki, *forged)
        await _denied(
            broker, GATEWAY, GATEWAY_PASSWORD, pki, f"coldchain/v1/{OTHER_GATEWAY}/status", b'{"online": false}'
        )
        await _denied(broker, GATEWAY, GATEWAY_PASSWORD, pki, f"coldchain/other/{GATEWAY}", b"{}")
        # The ingesters' user writes nothing either.
        await _denied(broker, INGEST_USER, INGEST_PASSWORD, pki, *forged)
        gateway_got: list[str] = []
        async with _client(broker, GATEWAY, GATEWAY_PASSWORD, ca=pki.ca) as gw:
            # A gateway reads nothing. Mosquitto 2.0 grants the subscription and checks each
            # message against the ACL as it would deliver it: none reaches the gateway.
            await gw.subscribe("coldchain/v1/#", qos=1)
            await gw.publish(*mine, qos=1)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(1.0):
                    async for message in gw.messages:
                        gateway_got.append(message.topic.value)
        await wait_until(lambda: _stored(db_url, GATEWAY) == len(own), what="the gateway's own readings")
        await wait_until(lambda: seen == [f"coldchain/v1/{GATEWAY}/telemetry"], 5, what="the watcher's message")
        await asyncio.sleep(0.5)  # a forged message, if let through, would have come by now
        watching.cancel()
        await asyncio.gather(watching, return_exceptions=True)
        assert ing.metrics.messages_received == 1
    assert gateway_got == []
    assert seen == [f"coldchain/v1/{GATEWAY}/telemetry"]
    assert _stored(db_url, OTHER_GATEWAY) == 0 and _status_rows(db_url, OTHER_GATEWAY) == 0
    assert scalar(db_url, "SELECT count(*) FROM ingest_dead_letters") == 0
    log = broker.log()
    assert f"'coldchain/v1/{OTHER_GATEWAY}/telemetry'" in log and "Denied PUBLISH" in log
    assert INGEST_PASSWORD not in caplog.text and quote(INGEST_PASSWORD, safe="") not in caplog.text
    assert f"mqtts://127.0.0.1:{broker.port}" in caplog.text


async def test_ingesters_sharing_the_load_read_through_share_subscriptions(
    db_url: str, broker: Broker, pki: Pki
) -> None:
    """COLDCHAIN_INGEST_SHARE_GROUP subscribes $share/<group>/coldchain/v1/+/…: the ACL's read
    lines must cover those too."""
    fleet = seed_fleet(db_url)
    own = fleet.gateways[GATEWAY]
    cfg = config(db_url, "mqtt://unused:1", mqtt=_ingest_address(broker, pki), share_group=unique_id("g"))
    async with running(cfg):
        async with _client(broker, GATEWAY, GATEWAY_PASSWORD, ca=pki.ca) as gw:
            mine = telemetry(GATEWAY, [{"probe": p, "t": 4.4} for p in own], ts="2026-11-23T08:00:00+08:00")
            await gw.publish(*mine, qos=1)
        await wait_until(lambda: _stored(db_url, GATEWAY) == len(own), what="readings through $share")


# ------------------------------------------------------------------------------------ (3) (4) refused


async def test_a_wrong_password_is_refused_and_the_doctor_says_so_without_it(broker: Broker, pki: Pki) -> None:
    with pytest.raises(MqttConnectError) as refused:
        async with _client(broker, GATEWAY, "not-" + GATEWAY_PASSWORD, ca=pki.ca):
            pass
    assert str(refused.value.rc) == "Not authorized"  # Mosquitto answers a bad password so
    with pytest.raises(MqttConnectError):  # an unknown user likewise
        async with _client(broker, "10999", GATEWAY_PASSWORD, ca=pki.ca):
            pass
    # The doctor's broker check connects exactly as the ingester does.
    wrong = "Wrong:pw@" + secrets.token_hex(4)
    env = _ingest_env(broker, pki, COLDCHAIN_MQTT_PASSWORD=wrong)
    verdict = await asyncio.to_thread(check_broker, load_settings(env).mqtt, 5.0)
    assert verdict.status == "fail" and "代理拒绝连接" in verdict.message, verdict
    assert wrong not in f"{verdict.message} {verdict.fix}"
    assert wrong in secrets_of(env)  # the doctor's last guard hides the variable's value too
    ok = await asyncio.to_thread(check_broker, _ingest_address(broker, pki), 5.0)
    assert ok.status == "ok" and ok.message == f"已连接 mqtts://127.0.0.1:{broker.port}（MQTT CONNECT 成功）"


async def test_anonymous_clients_are_refused_over_tls_and_plain_tcp(broker: Broker, pki: Pki) -> None:
    with pytest.raises(MqttConnectError) as refused:
        async with _client(broker, None, None, ca=pki.ca):
            pass
    assert str(refused.value.rc) == "Not authorized"
    # Plain MQTT to the TLS port: no handshake, no session.
    with pytest.raises(aiomqtt.MqttError):
        async with asyncio.timeout(15), aiomqtt.Client("127.0.0.1", broker.port, timeout=3):
            pass


# ------------------------------------------------------------------------------------ (5) TLS verification


@pytest.mark.parametrize("trust", ["system CAs", "another CA"])
async def test_a_client_that_does_not_trust_the_brokers_ca_fails_verification(
    broker: Broker, pki: Pki, trust: str
) -> None:
    ca = None if trust == "system CAs" else pki.other_ca
    with pytest.raises(aiomqtt.MqttError, match="CERTIFICATE_VERIFY_FAILED"):
        async with _client(broker, GATEWAY, GATEWAY_PASSWORD, ca=ca):
            pass


async def test_the_ingester_settings_without_the_ca_file_fail_verification(broker: Broker, pki: Pki) -> None:
    """No COLDCHAIN_MQTT_CA_FILE means the system's CAs, which do not know a private CA."""
    env = _ingest_env(broker, pki)
    del env["COLDCHAIN_MQTT_CA_FILE"]
    mqtt = load_settings(env).mqtt
    assert mqtt is not None
    with pytest.raises(aiomqtt.MqttError, match="CERTIFICATE_VERIFY_FAILED"):
        async with asyncio.timeout(15), aiomqtt.Client(mqtt.host, mqtt.port, timeout=10, **mqtt.client_options()):
            pass
    verdict = await asyncio.to_thread(check_broker, mqtt, 5.0)
    assert verdict.status == "fail" and "TLS 握手失败" in verdict.message, verdict


async def test_a_broker_requiring_client_certificates_takes_the_ingesters_certificate(tmp_path: Path, pki: Pki) -> None:
    """``require_certificate true`` (the shipped file's option): the ingester's settings with
    COLDCHAIN_MQTT_CERT_FILE / _KEY_FILE connect, the same settings without them do not."""
    with tls_broker(tmp_path / "broker", pki, {INGEST_USER: INGEST_PASSWORD}, require_certificate=True) as strict:
        env = _ingest_env(
            strict, pki, COLDCHAIN_MQTT_CERT_FILE=str(pki.client_cert), COLDCHAIN_MQTT_KEY_FILE=str(pki.client_key)
        )
        with_cert = load_settings(env).mqtt
        assert with_cert is not None and with_cert.cert_file == pki.client_cert
        verdict = await asyncio.to_thread(check_broker, with_cert, 5.0)
        assert verdict.status == "ok", verdict
        without = _ingest_address(strict, pki)
        with pytest.raises(aiomqtt.MqttError) as refused:
            async with (
                asyncio.timeout(15),
                aiomqtt.Client(without.host, without.port, timeout=5, **without.client_options()) as c,
            ):
                await c.subscribe("coldchain/v1/+/telemetry", qos=1, timeout=5)
        # TLS 1.3 tells the client only by closing; the broker says why.
        assert "peer did not return a certificate" in strict.log(), refused.value


async def test_a_gateway_added_with_mosquitto_passwd_connects_after_a_reload(broker: Broker, pki: Pki) -> None:
    serial, password = "10777", f"Gw-{secrets.token_hex(8)}"
    with pytest.raises(MqttConnectError):
        async with _client(broker, serial, password, ca=pki.ca):
            pass
    broker.add_user(serial, password)
    deadline = time.monotonic() + 10
    while True:
        try:
            async with _client(broker, serial, password, ca=pki.ca) as gw:
                await gw.publish(f"coldchain/v1/{serial}/status", b'{"online": true}', qos=1)
            break
        except MqttConnectError:
            assert time.monotonic() < deadline, broker.log()
            await asyncio.sleep(0.1)
