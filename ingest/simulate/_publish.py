"""Publishing the simulated fleet to the broker, and the ``coldchain simulate`` command."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import math
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Final

import aiomqtt

from coldchain.core import db
from coldchain.core.runtime import run_until_signalled
from coldchain.core.settings import MqttAddress, Settings, SettingsError
from coldchain.core.terms import BEIJING
from ingest.simulate._fleet import (
    FAULT_KINDS,
    Fault,
    format_duration,
    load_fleet,
    parse_duration,
    parse_fault,
    random_faults,
)
from ingest.simulate._model import FleetSimulator, Outgoing

log = logging.getLogger("coldchain.simulate")

# ---------------------------------------------------------------------------------------------
# Publishing


_PUBLISH_BATCH: Final = 64


async def _wait(stop: asyncio.Event | None, seconds: float) -> bool:
    """Sleep up to ``seconds``; True when ``stop`` was set meanwhile."""
    if seconds > 0:
        if stop is None:
            await asyncio.sleep(seconds)
        else:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=seconds)
    return stop is not None and stop.is_set()


async def publish_forever(
    mqtt: MqttAddress,
    sim: FleetSimulator,
    *,
    until: datetime | None,
    stop: asyncio.Event | None,
    realtime: bool = True,
    client_id: str = "coldchain-simulator",
    on_tick: Callable[[datetime, int], None] | None = None,
) -> int:
    """Publish tick after tick until the simulated time passes ``until`` or ``stop`` is set.

    With ``realtime`` a tick waits until its time has come on the wall clock, because the ingester
    refuses timestamps from the future; ticks already in the past (a back-fill) go out at once.
    A lost broker is retried with backoff and the interrupted tick is published again from the
    first message not acknowledged: QoS 1 is at-least-once anyway, and the ingester de-duplicates.
    Returns the number of messages acknowledged.
    """
    published = 0
    pending: list[Outgoing] = []
    tick_time = sim.now
    tick_count = 0
    backoff = 1.0
    while True:
        if not pending and stop is not None and stop.is_set():
            return published
        try:
            # A deployment's broker wants a user (and TLS); client_options() is empty for the embedded one.
            options = mqtt.client_options()
            async with aiomqtt.Client(mqtt.host, mqtt.port, identifier=client_id, **options) as client:
                client.pending_calls_threshold = _PUBLISH_BATCH + 1  # a full batch in flight is intended
                log.info("已%s连接 MQTT 代理 %s", "重新" if backoff > 1.0 else "", mqtt.url)
                backoff = 1.0
                while True:
                    if not pending:
                        if until is not None and sim.next_time > until:
                            return published
                        if stop is not None and stop.is_set():
                            return published
                        if realtime:
                            delay = (sim.next_time - datetime.now(UTC)).total_seconds()
                            if await _wait(stop, delay):
                                return published
                        pending = sim.step()
                        tick_time, tick_count = sim.now, len(pending)
                    while pending:
                        batch = pending[:_PUBLISH_BATCH]
                        results = await asyncio.gather(
                            *(client.publish(m.topic, m.payload, qos=m.qos, timeout=10) for m in batch),
                            return_exceptions=True,
                        )
                        done = 0
                        for result in results:
                            if isinstance(result, BaseException):
                                pending = pending[done:]
                                published += done
                                raise result
                            done += 1
                        pending = pending[done:]
                        published += done
                    if on_tick is not None:
                        on_tick(tick_time, tick_count)
        except (aiomqtt.MqttError, OSError) as exc:
            log.warning("MQTT 代理 %s 连接失败或中断（%s），%.0f 秒后重连", mqtt.url, exc, backoff)
            if await _wait(stop, backoff):
                return published
            backoff = min(backoff * 2, 30.0)


# ---------------------------------------------------------------------------------------------
# CLI glue


def _duration_arg(text: str) -> timedelta:
    try:
        return parse_duration(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc


def _fault_arg(text: str) -> Fault:
    try:
        return parse_fault(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc


def _positive_seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"应为秒数，实际为 {text!r}") from exc
    if not value > 0 or not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"秒数必须大于 0，实际为 {text!r}")
    return value


def _rate(text: str) -> float:
    try:
        value = float(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"应为 0 到 1 之间的小数，实际为 {text!r}") from exc
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"应为 0 到 1 之间的小数，实际为 {text!r}")
    return value


def _count(text: str) -> int:
    try:
        value = int(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"应为非负整数，实际为 {text!r}") from exc
    if value < 0:
        raise argparse.ArgumentTypeError(f"应为非负整数，实际为 {text!r}")
    return value


def configure_parser(p: argparse.ArgumentParser) -> None:
    p.add_argument("--seed", type=int, default=20200106, help="随机种子（相同种子、起点和故障产生相同的消息）")
    p.add_argument("--interval", type=_positive_seconds, default=60.0, help="每个网关的上报间隔，秒（默认 60）")
    p.add_argument(
        "--backfill",
        type=_duration_arg,
        default=timedelta(0),
        help="从多久以前开始模拟，如 6h；过去的部分尽快补发，之后按实时发送（默认 0s）",
    )
    p.add_argument(
        "--fault",
        type=_fault_arg,
        action="append",
        default=[],
        metavar="类型:目标:开始:时长",
        help="注入故障，可重复；开始时间从模拟起点（含回填）算起，如 power_cut:10003:10m:3h。"
        f"类型：{'、'.join(FAULT_KINDS)}",
    )
    p.add_argument("--random-faults", type=_count, default=0, metavar="N", help="另外随机注入 N 个故障（由种子决定）")
    p.add_argument("--malformed-rate", type=_rate, default=0.0, help="替换为畸形消息的遥测消息比例，0～1（默认 0）")
    p.add_argument(
        "--duration", type=_positive_seconds, default=None, help="运行若干秒（墙上时间）后停止；默认一直运行"
    )
    p.add_argument("--client-id", default="coldchain-simulator", help="MQTT 客户端标识（默认 coldchain-simulator）")


def cmd_simulate(settings: Settings, args: argparse.Namespace, url: str) -> int:
    """Simulate the registry's fleet against the configured broker until stopped."""
    mqtt = settings.mqtt
    if mqtt is None:
        raise SettingsError("未配置 COLDCHAIN_MQTT_URL")
    with db.connect(url, application="coldchain-simulator") as conn:
        fleet = load_fleet(conn)
    if not fleet:
        raise ValueError("数据库中没有已绑定探头的网关，请先运行 coldchain seed demo")
    interval = timedelta(seconds=args.interval)
    backfill: timedelta = args.backfill
    start = datetime.now(BEIJING).replace(microsecond=0) - backfill
    horizon = backfill + (timedelta(seconds=args.duration) if args.duration is not None else timedelta(hours=24))
    faults = [*args.fault, *random_faults(fleet, args.random_faults, args.seed, horizon)]
    sim = FleetSimulator(
        fleet, seed=args.seed, start=start, interval=interval, faults=faults, malformed_rate=args.malformed_rate
    )
    probes = sum(len(g.probes) for g in fleet)
    print(
        f"模拟 {len(fleet)} 个网关、{probes} 个探头，发往 {mqtt.url}（客户端 {args.client_id}）；"
        f"起点 {start.isoformat(timespec='seconds')}（回填 {format_duration(backfill)}），"
        f"间隔 {args.interval:g} 秒，种子 {args.seed}，畸形消息比例 {args.malformed_rate:g}"
    )
    for f in faults:
        print(f"注入故障：{f.describe()}")
    print("按 Ctrl-C 停止。", flush=True)

    last_hour: list[datetime] = []

    def report(t: datetime, count: int) -> None:
        hour = t.astimezone(BEIJING).replace(minute=0, second=0, microsecond=0)
        if not last_hour or hour != last_hour[0]:
            last_hour[:] = [hour]
            print(f"已发送至 {t.astimezone(BEIJING).isoformat(timespec='seconds')}", flush=True)

    published = run_until_signalled(
        lambda stop: publish_forever(
            mqtt, sim, until=None, stop=stop, realtime=True, client_id=args.client_id, on_tick=report
        ),
        duration=args.duration,
    )
    reached = sim.now.astimezone(BEIJING).isoformat(timespec="seconds")
    print(f"模拟已停止，共发送 {published} 条消息，模拟时间至 {reached}")
    return 0
