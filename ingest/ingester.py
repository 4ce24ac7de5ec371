"""``coldchain ingest``: MQTT → PostgreSQL/TimescaleDB without losing a reading.

How "acknowledge only after commit" is done with aiomqtt 2.x
-------------------------------------------------------------
aiomqtt hands messages to an asyncio queue from paho-mqtt's ``on_message`` callback, and paho
sends the QoS 1 PUBACK as soon as that callback returns — before we have even looked at the
message. A crash between that PUBACK and our commit would lose the message: the broker has
forgotten it. aiomqtt has no switch for this, but the paho client it wraps does: paho 2.x's
``Client.manual_ack_set(True)`` makes paho leave the PUBACK to the application, which sends it
with ``Client.ack(mid, qos)``. aiomqtt keeps that client as ``Client._client`` and runs it on the
event loop's own thread (socket callbacks, no network thread), so calling ``ack`` from our
coroutines is safe. We switch manual acknowledgement on *before* connecting — with a persistent
session the broker starts sending queued messages right after CONNACK — and acknowledge every
message of a batch, in the order received (MQTT requires PUBACKs in order), right after the batch's
transaction has committed. This reaches into one private attribute of aiomqtt; the test suite's
kill -9 test fails if an aiomqtt upgrade ever breaks it.

What follows from it:
- A crash (``kill -9``) at any moment leaves every unacknowledged message with the broker, which
  sends it again when we reconnect with the same client id (persistent session: MQTT v5
  ``clean_start=False`` with a session expiry). A message that was committed but not yet
  acknowledged arrives twice; the readings' primary key (probe, ts) stores it once.
- Memory is bounded by the broker, not by us: we announce a v5 *Receive Maximum*, and the broker
  never has more than that many unacknowledged messages out to us. While the database is down we
  stop acknowledging, so the broker stops sending and queues for us instead (which is why the
  broker's per-client queue limits matter: see ``ingest/mosquitto.conf``).
- Acknowledgements belong to one network connection. Messages received on a connection that has
  since dropped are still written (harmless: the broker will redeliver them and they deduplicate)
  but not acknowledged on the new connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from dataclasses import dataclass
from typing import Any, Final

import aiomqtt
import psycopg
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from coldchain.core.db import connect_async
from coldchain.core.settings import MqttAddress
from ingest.contract import STATUS_FILTER, TELEMETRY_FILTER, now_us, parse_message
from ingest.health import Metrics, serve_health
from ingest.store import BatchResult, Incoming, RegistryCache, dead_letter_row, prepare, write_batch, write_dead_letters

log = logging.getLogger("coldchain.ingest")

# Errors caused by the data of a batch (a value the database refuses): retrying cannot help, so the
# batch is split to find the message at fault, which goes to the dead-letter table.
_DATA_ERRORS: Final = (psycopg.errors.DataError, psycopg.errors.IntegrityError)
_MAX_BACKOFF: Final = 30.0


@dataclass(frozen=True)
class IngestConfig:
    database_url: str
    mqtt: MqttAddress
    client_id: str = "coldchain-ingest"
    # Set for several ingesters sharing the load ($share/<group>/...); None for a lone ingester.
    share_group: str | None = None
    # Unacknowledged messages the broker may have out to us: the bound on our memory.
    receive_maximum: int = 2000
    # A batch is written when it has this many messages or its first message is `linger` s old.
    batch_messages: int = 500
    linger: float = 0.05
    # How long the broker keeps our session (and queues for us) while we are away.
    session_expiry: int = 7 * 24 * 3600
    keepalive: int = 30
    # Leave the share group for good (``coldchain ingest --leave``): resume the session, subscribe
    # to nothing, store what was queued for it until nothing has come for ``leave_quiet`` s, then
    # delete the session, so that the broker routes no more of the group's share to it.
    leave: bool = False
    leave_quiet: float = 3.0
    health_host: str = "127.0.0.1"
    health_port: int | None = None

    def topics(self) -> list[str]:
        prefix = f"$share/{self.share_group}/" if self.share_group else ""
        return [prefix + TELEMETRY_FILTER, prefix + STATUS_FILTER]


class Ingester:
    def __init__(self, config: IngestConfig) -> None:
        self.config = config
        self.metrics = Metrics()
        self._cache = RegistryCache()
        self._conn: psycopg.AsyncConnection | None = None
        self._client: aiomqtt.Client | None = None
        self._generation = 0
        # MQTT v5 for Receive Maximum and session expiry; 3.1.1 when the broker has no v5 (amqtt).
        self._protocol = aiomqtt.ProtocolVersion.V5
        # The batch being filled by the consumer; the writer takes it whole.
        self._current: list[Incoming] = []
        self._current_since = 0.0
        self._has_data = asyncio.Event()
        self._full = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        # Reading from the broker's socket is paused while this many messages wait (see _receive).
        self._cap = max(2 * config.receive_maximum, 2 * config.batch_messages)
        self._paused = False
        # Set while subscribed (tests and the run command wait for it before publishing).
        self.subscribed = asyncio.Event()

    # ------------------------------------------------------------------ lifecycle
    async def run(self, stop: asyncio.Event) -> None:
        """Run until ``stop`` is set; then write and acknowledge what is in hand, and disconnect."""
        health = None
        if self.config.health_port is not None:
            health = await serve_health(self.metrics, self.config.health_host, self.config.health_port)
        try:
            await self._connection()  # early, so /healthz tells at once whether the database answers
        except psycopg.Error as exc:
            log.error("数据库暂不可用（%s）；收到的消息在入库前不会确认", str(exc).strip())
        writer = asyncio.create_task(self._writer(), name="ingest-writer")
        reporter = asyncio.create_task(self._report(), name="ingest-report")
        try:
            await self._mqtt_loop(stop, writer)
        finally:
            writer.cancel()
            reporter.cancel()
            await asyncio.gather(writer, reporter, return_exceptions=True)
            if self._conn is not None:
                await self._conn.close()
            if health is not None:
                health.close()
                await health.wait_closed()

    async def _mqtt_loop(self, stop: asyncio.Event, writer: asyncio.Task[None]) -> None:
        delay = 0.5
        while not stop.is_set():
            # The new connection's number and client are in place before connecting: with a kept
            # session the broker sends queued messages right after CONNACK, and the writer must be
            # able to acknowledge them on this connection from the first one on.
            self._generation += 1
            client = self._new_client(self._generation)
            self._client = client
            left = False
            try:
                async with client:
                    if self.metrics.mqtt_connects == 0 and self._protocol is aiomqtt.ProtocolVersion.V311:
                        log.warning("MQTT 代理不支持 MQTT 5，使用 3.1.1（持久会话 clean_session=false）")
                    self.metrics.mqtt_connected = True
                    self.metrics.mqtt_connects += 1
                    delay = 0.5
                    if self.config.leave:
                        # What was queued for this member arrives after CONNACK whatever we do;
                        # unsubscribing stops the broker adding more to it.
                        await client.unsubscribe(self.config.topics())
                        log.info("离开共享订阅组：取消订阅，接收排队给 %s 的消息", self.config.client_id)
                    else:
                        # Always subscribe, even when the broker says our session was kept: Mosquitto
                        # 2.0.11 does not restore a durable client's $share subscription (fixed in
                        # 2.0.12), and subscribing again to an existing subscription changes nothing.
                        await client.subscribe([(t, 1) for t in self.config.topics()])
                        self.subscribed.set()
                        log.info("已连接 MQTT 代理 %s，订阅 %s", self.config.mqtt.url, "、".join(self.config.topics()))
                    # Messages arrive through the handoff queue; iterating only surfaces a lost connection.
                    consume = asyncio.create_task(self._until_disconnected(client))
                    stopping = asyncio.create_task(self._quiet(stop) if self.config.leave else stop.wait())
                    done, _ = await asyncio.wait({consume, stopping, writer}, return_when=asyncio.FIRST_COMPLETED)
                    stopping.cancel()
                    if writer in done:
                        consume.cancel()
                        writer.result()  # a bug in the writer: let it surface
                    if consume in done:
                        consume.result()  # raises MqttError on a lost connection
                    else:
                        consume.cancel()
                        await asyncio.gather(consume, return_exceptions=True)
                        await self._drain(10.0)
                        left = self.config.leave and not stop.is_set()
            except aiomqtt.MqttError as exc:
                if self.metrics.mqtt_connects == 0:
                    # Never connected yet: the broker may not speak MQTT 5 (amqtt answers with code
                    # 0x84 or, given v5 properties, not at all), so alternate until one version
                    # connects. On 3.1.1 the broker's own in-flight limit (max_inflight_messages)
                    # bounds our unacknowledged messages; acknowledgement after commit is unchanged.
                    self._protocol = (
                        aiomqtt.ProtocolVersion.V311
                        if self._protocol is aiomqtt.ProtocolVersion.V5
                        else aiomqtt.ProtocolVersion.V5
                    )
                    log.warning(
                        "无法连接 MQTT 代理（%s），%.1f 秒后改用 MQTT %s 重试",
                        exc,
                        delay,
                        "3.1.1" if self._protocol is aiomqtt.ProtocolVersion.V311 else "5",
                    )
                else:
                    log.warning("MQTT 连接中断或无法连接（%s），%.1f 秒后重连", exc, delay)
            finally:
                self._client = None
                self._paused = False
                # Not yet handed to the writer and never acknowledged: the broker sends them again on
                # the next connection, so holding on to them would only keep two copies in memory.
                self._current = [m for m in self._current if m.ack is None]
                self.subscribed.clear()
                self.metrics.mqtt_connected = False
            if left:
                await self._forget_session()
                return
            if stop.is_set():
                break
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), delay * (1 + random.random() / 2))
            delay = min(delay * 2, _MAX_BACKOFF)

    async def _quiet(self, stop: asyncio.Event) -> None:
        """Return once no message has arrived for ``leave_quiet`` seconds and all are committed, or
        when asked to stop (then the session stays: the queue is not known to be empty)."""
        seen, since = -1, 0.0
        loop = asyncio.get_running_loop()
        while not stop.is_set():
            now = loop.time()
            if self.metrics.messages_received != seen:
                seen, since = self.metrics.messages_received, now
            elif now - since >= self.config.leave_quiet and not self._current and self._idle.is_set():
                return
            await asyncio.sleep(0.1)

    async def _forget_session(self) -> None:
        """Connect once more with a clean start and no expiry: the broker deletes the session (and
        with it this member's place in the share group), then disconnect."""
        options: dict[str, Any] = {
            "identifier": self.config.client_id,
            "timeout": 10,
            **self.config.mqtt.client_options(),
        }
        if self._protocol is aiomqtt.ProtocolVersion.V5:
            clean = aiomqtt.Client(
                self.config.mqtt.host, self.config.mqtt.port, protocol=self._protocol, clean_start=True, **options
            )
        else:
            clean = aiomqtt.Client(
                self.config.mqtt.host, self.config.mqtt.port, protocol=self._protocol, clean_session=True, **options
            )
        async with clean:
            pass
        log.info("已离开共享订阅组：会话 %s 已删除，代理不再为它排队", self.config.client_id)

    @staticmethod
    async def _until_disconnected(client: aiomqtt.Client) -> None:
        async for _ in client.messages:
            pass

    def _new_client(self, generation: int) -> aiomqtt.Client:
        common: dict[str, Any] = {
            "identifier": self.config.client_id,
            "keepalive": self.config.keepalive,
            "timeout": 10,
            "queue_type": self._handoff_queue(generation),
            # User, password and TLS of a deployment's broker (issue #18); none for the embedded one.
            **self.config.mqtt.client_options(),
        }
        if self._protocol is aiomqtt.ProtocolVersion.V5:
            props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
            props.SessionExpiryInterval = self.config.session_expiry
            props.ReceiveMaximum = self.config.receive_maximum
            client = aiomqtt.Client(
                self.config.mqtt.host,
                self.config.mqtt.port,
                protocol=aiomqtt.ProtocolVersion.V5,
                clean_start=False,
                properties=props,
                **common,
            )
        else:
            client = aiomqtt.Client(
                self.config.mqtt.host,
                self.config.mqtt.port,
                protocol=aiomqtt.ProtocolVersion.V311,
                clean_session=False,
                **common,
            )
        # See the module docstring: PUBACK only after commit. Must precede connect().
        client._client.manual_ack_set(True)
        return client

    async def _drain(self, seconds: float) -> None:
        """On shutdown: let the writer commit and acknowledge what was received, if the DB allows."""
        try:
            async with asyncio.timeout(seconds):
                while self._current or not self._idle.is_set():
                    self._full.set()
                    await asyncio.sleep(0.01)
        except TimeoutError:
            log.warning("停止时仍有 %d 条消息未能入库；它们未被确认，代理会重发", len(self._current))

    # ------------------------------------------------------------------ receive
    def _handoff_queue(self, generation: int) -> type[asyncio.Queue[aiomqtt.Message]]:
        """A queue class for aiomqtt's public ``queue_type`` hook that hands each message to the
        batch as paho decodes it, instead of parking it in a queue for an async iterator. The
        iterator costs a task per message, a third of what a bare subscriber spends; this path has
        no per-message task. Nothing is buffered here beyond the batch: what we hold unacknowledged
        is bounded by Receive Maximum (QoS 1), so there is no need to push back on paho."""
        receive = self._receive

        class Handoff(asyncio.Queue[aiomqtt.Message]):
            def put_nowait(self, item: aiomqtt.Message) -> None:
                receive(item, generation)

        return Handoff

    def _receive(self, msg: aiomqtt.Message, generation: int) -> None:
        received = now_us()
        payload = msg.payload if isinstance(msg.payload, bytes) else str(msg.payload).encode()
        topic = msg.topic.value
        parsed = parse_message(topic, payload, received, retained=msg.retain)
        current = self._current
        current.append(Incoming(topic, payload, parsed, received, (generation, msg.mid, msg.qos) if msg.qos else None))
        metrics = self.metrics
        metrics.messages_received += 1
        metrics.readings_received += len(parsed.readings)
        if not self._has_data.is_set():
            self._current_since = asyncio.get_running_loop().time()
            self._has_data.set()
        metrics.pending_messages = len(current)
        if len(current) > metrics.pending_peak:
            metrics.pending_peak = len(current)
        if len(current) >= self.config.batch_messages:
            self._full.set()
            if len(current) >= self._cap and not self._paused:
                self._pause_reading()

    # Mosquitto 2.0.11 does not keep to Receive Maximum while it drains a queue it held for us
    # (measured: 3 131 unacknowledged messages with Receive Maximum 200), so the broker alone does
    # not bound our memory. When the batch in hand reaches the cap we stop reading the socket;
    # TCP flow control then holds the rest at the broker. The writer resumes reading when it takes
    # the batch. Only public paho (socket(), loop_read()) and asyncio (add/remove_reader) calls are
    # used; aiomqtt registered the socket's reader, which pausing removes and resuming replaces.
    def _pause_reading(self) -> None:
        sock = self._client._client.socket() if self._client is not None else None
        if sock is None:
            return
        asyncio.get_running_loop().remove_reader(sock.fileno())
        self._paused = True
        self.metrics.read_pauses += 1

    def _resume_reading(self) -> None:
        self._paused = False
        paho = self._client._client if self._client is not None else None
        sock = paho.socket() if paho is not None else None
        if paho is None or sock is None:
            return
        asyncio.get_running_loop().add_reader(sock.fileno(), self._read_socket, paho)

    @staticmethod
    def _read_socket(paho: Any) -> None:
        try:
            paho.loop_read()  # a broken connection ends in paho's on_disconnect, which aiomqtt watches
        except Exception as exc:
            log.warning("读取 MQTT 连接失败（%s），断开重连", exc)
            with contextlib.suppress(Exception):
                paho.disconnect()

    # ------------------------------------------------------------------ write
    async def _writer(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await self._has_data.wait()
            wait = self._current_since + self.config.linger - loop.time()
            if wait > 0 and not self._full.is_set():
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._full.wait(), wait)
            batch, self._current = self._current, []
            self._has_data.clear()
            self._full.clear()
            if self._paused:
                self._resume_reading()
            self.metrics.pending_messages = 0
            if not batch:
                continue
            self._idle.clear()
            try:
                result = await self._store(batch)
                self._acknowledge(batch)
                self._account(batch, result)
            finally:
                self._idle.set()

    async def _connection(self) -> psycopg.AsyncConnection:
        if self._conn is None or self._conn.closed:
            self._conn = await connect_async(self.config.database_url, application="coldchain-ingest")
            await prepare(self._conn)
            if not self.metrics.db_connected:
                log.info("已连接数据库")
        self.metrics.db_connected = True
        return self._conn

    async def _store(self, batch: list[Incoming]) -> BatchResult:
        """Commit the batch, however long the database takes to come back."""
        delay = 0.2
        while True:
            try:
                conn = await self._connection()
                try:
                    return await write_batch(conn, batch, self._cache)
                except _DATA_ERRORS as exc:
                    log.warning("批次被数据库拒绝（%s），逐条写入以找出问题消息", exc)
                    return await self._store_one_by_one(conn, batch)
            except psycopg.Error as exc:
                # Connection lost, server shutting down, failover, lock timeout…: nothing is
                # acknowledged, so nothing is lost; the consumer stops once its buffer is full.
                self.metrics.db_errors += 1
                if self.metrics.db_connected:
                    log.error("数据库不可用（%s）：暂停确认消息，%.1f 秒后重试", str(exc).strip(), delay)
                self.metrics.db_connected = False
                if self._conn is not None:
                    await self._conn.close()
                    self._conn = None
                await asyncio.sleep(delay * (1 + random.random() / 2))
                delay = min(delay * 2, _MAX_BACKOFF)

    async def _store_one_by_one(self, conn: psycopg.AsyncConnection, batch: list[Incoming]) -> BatchResult:
        total = BatchResult()
        for m in batch:
            try:
                total.add(await write_batch(conn, [m], self._cache))
            except _DATA_ERRORS as exc:
                async with conn.transaction(), conn.cursor() as cur:
                    await write_dead_letters(cur, [dead_letter_row(m, "db_rejected", str(exc).strip())])
                total.add(BatchResult(messages=1, dead_letters=1, rejected_readings=len(m.parsed.readings)))
        return total

    def _acknowledge(self, batch: list[Incoming]) -> None:
        client = self._client
        if client is None:
            return
        paho = client._client  # see the module docstring
        generation = self._generation
        acked = 0
        for m in batch:
            if m.ack is not None and m.ack[0] == generation:
                paho.ack(m.ack[1], m.ack[2])
                acked += 1
        self.metrics.messages_acked += acked

    def _account(self, batch: list[Incoming], r: BatchResult) -> None:
        m = self.metrics
        m.batches_committed += 1
        m.readings_stored += r.stored
        m.readings_duplicate += r.duplicates
        m.readings_unbound += r.unbound
        m.readings_quarantined += r.quarantined
        m.readings_rejected += r.rejected_readings
        m.messages_dead_lettered += r.dead_letters
        now = time.time()
        m.last_commit_at = now
        m.last_commit_lag_s = now - batch[0].received_us / 1e6
        if r.newest_reading_us is not None:
            m.last_reading_age_s = now - r.newest_reading_us / 1e6

    async def _report(self) -> None:
        while True:
            await asyncio.sleep(60)
            m = self.metrics
            log.info(
                "累计：收到消息 %d、读数 %d；入库 %d，重复 %d，未绑定 %d，隔离 %d，拒收读数 %d，死信消息 %d",
                m.messages_received,
                m.readings_received,
                m.readings_stored,
                m.readings_duplicate,
                m.readings_unbound,
                m.readings_quarantined,
                m.readings_rejected,
                m.messages_dead_lettered,
            )
