"""The gateway fleet simulator at work: the fleet it reads from the registry's current
bindings, publishing to a real broker (on time in real time, through a broker restart, stopping
while the broker is unreachable), and the ``coldchain simulate`` command's options, refusals
(real units without ``--allow-real-units``), back-fill and Ctrl-C."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import secrets
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import aiomqtt
import pytest
from apihelp import build_world
from dbhelp import as_runtime
from simhelp import FLEET, MINUTE, START, _probe, _run

from coldchain import services
from coldchain.core import db
from coldchain.core.settings import SettingsError, load_settings, parse_mqtt_url
from coldchain.seed.demo import load_demo, plan_demo
from ingest.simulate import (
    Fleet,
    FleetSimulator,
    SimGateway,
    SimProbe,
    cmd_simulate,
    configure_parser,
    load_fleet,
    publish_forever,
)

# ---------------------------------------------------------------------------------------------
# The registry


def test_load_fleet_reads_the_current_bindings(db_url: str) -> None:
    plan = plan_demo(probes=40, seed=1)
    load_demo(db_url, plan)
    gateway_serial = {g[0]: g[1] for g in plan.gateways}
    probe_serial = {p[0]: p[1] for p in plan.probes}
    compartment = {c[0]: c for c in plan.compartments}
    equipment_kind = {e[0]: e[2] for e in plan.equipment}
    expected: dict[str, list[SimProbe]] = {}
    for probe_id, compartment_id, gateway_id, _ in plan.bindings:
        _, equipment_id, _, mode = compartment[compartment_id]
        expected.setdefault(gateway_serial[gateway_id], []).append(
            _probe(probe_serial[probe_id], mode, equipment_kind[equipment_id])
        )

    def as_fleet(groups: dict[str, list[SimProbe]]) -> Fleet:
        return tuple(SimGateway(g, tuple(sorted(ps, key=lambda p: p.serial))) for g, ps in sorted(groups.items()) if ps)

    with db.connect(db_url) as conn:
        fleet = load_fleet(conn)
        assert fleet == as_fleet(expected)
        assert len(fleet) == len(plan.gateways) and sum(len(g.probes) for g in fleet) == len(plan.probes)

        # Move a probe to another gateway, retire a gateway, narrow a compartment's limits, add an
        # unused gateway: the fleet follows the registry as it is now.
        first, second, third = fleet[0].serial, fleet[1].serial, fleet[2].serial
        moved = fleet[1].probes[0]
        conn.execute(
            "UPDATE probe_bindings b SET valid = tstzrange(lower(valid), now()) FROM probes p "
            "WHERE p.id = b.probe_id AND p.serial = %s AND upper_inf(b.valid)",
            (moved.serial,),
        )
        conn.execute(
            "INSERT INTO probe_bindings (probe_id, compartment_id, gateway_id, valid) "
            "SELECT p.id, b.compartment_id, g.id, tstzrange(now(), NULL) FROM probes p, probe_bindings b, gateways g "
            "WHERE p.serial = %s AND b.probe_id = p.id AND upper(b.valid) = now() AND g.serial = %s",
            (moved.serial, third),
        )
        conn.execute("UPDATE gateways SET status = 'decommissioned' WHERE serial = %s", (first,))
        narrowed = fleet[3].probes[0]
        conn.execute(
            "UPDATE compartments c SET t_min = CASE WHEN c.mode = 'refrigerated' THEN 2.5 END, "
            "t_max = CASE WHEN c.mode = 'refrigerated' THEN 7.5 ELSE -18.0 END "
            "FROM probe_bindings_current b JOIN probes p ON p.id = b.probe_id "
            "WHERE c.id = b.compartment_id AND p.serial = %s",
            (narrowed.serial,),
        )
        conn.execute("INSERT INTO gateways (serial, status) VALUES ('77777', 'active')")
        changed = load_fleet(conn)

    expected.pop(first)
    expected[second] = [p for p in expected[second] if p.serial != moved.serial]
    expected[third].append(moved)
    g4 = fleet[3].serial
    refrigerated = narrowed.mode == "refrigerated"
    expected[g4] = [
        SimProbe(p.serial, p.mode, p.kind, 2.5 if refrigerated else None, 7.5 if refrigerated else -18.0)
        if p.serial == narrowed.serial
        else p
        for p in expected[g4]
    ]
    assert changed == as_fleet(expected)
    assert first not in {g.serial for g in changed} and "77777" not in {g.serial for g in changed}


# ---------------------------------------------------------------------------------------------
# Publishing to a real broker


def _unique_fleet(tag: str) -> Fleet:
    """Serials no other test or process uses, so a shared broker cannot mix streams."""
    return (
        SimGateway(f"g{tag}a", (_probe(f"p{tag}1", "refrigerated", "fridge"), _probe(f"p{tag}2", "frozen", "fridge"))),
        SimGateway(f"g{tag}b", (_probe(f"p{tag}3", "refrigerated", "vehicle"),)),
    )


async def test_publishes_ticks_to_the_broker(mqtt_broker: services.Started) -> None:
    address = parse_mqtt_url(mqtt_broker.url)
    tag = secrets.token_hex(4)
    fleet = _unique_fleet(tag)
    expected = [m for _, ms in _run(FleetSimulator(fleet, seed=3, start=START), 3) for m in ms]
    sim = FleetSimulator(fleet, seed=3, start=START)
    ticks: list[tuple[datetime, int]] = []
    async with aiomqtt.Client(address.host, address.port, identifier=f"test-sub-{tag}") as sub:
        await sub.subscribe("coldchain/v1/+/telemetry", qos=1)
        count = await publish_forever(
            address,
            sim,
            until=START + 3 * MINUTE,
            stop=None,
            realtime=False,
            client_id=f"test-sim-{tag}",
            on_tick=lambda t, n: ticks.append((t, n)),
        )
        received: list[tuple[str, bytes]] = []
        want = sum(m.topic.endswith("/telemetry") for m in expected)
        async with asyncio.timeout(10):
            async for message in sub.messages:
                if tag in str(message.topic):
                    assert isinstance(message.payload, bytes)
                    received.append((str(message.topic), message.payload))
                    if len(received) == want:
                        break
    assert count == len(expected) and sim.now == START + 3 * MINUTE
    assert ticks == [(START + k * MINUTE, n) for k, n in zip((1, 2, 3), (4, 2, 2), strict=True)]
    assert sorted(received) == sorted((m.topic, m.payload) for m in expected if m.topic.endswith("/telemetry"))
    assert all(isinstance(json.loads(p)["readings"], list) for _, p in received)


async def test_realtime_never_publishes_a_tick_before_its_time(mqtt_broker: services.Started) -> None:
    address = parse_mqtt_url(mqtt_broker.url)
    tag = secrets.token_hex(4)
    second = timedelta(seconds=1)
    start = datetime.now(UTC) - 2.5 * second
    sim = FleetSimulator(_unique_fleet(tag), seed=3, start=start, interval=second)
    published_at: list[tuple[datetime, datetime]] = []
    began = time.monotonic()
    await publish_forever(
        address,
        sim,
        until=start + 4 * second,
        stop=None,
        realtime=True,
        client_id=f"test-sim-{tag}",
        on_tick=lambda t, _: published_at.append((t, datetime.now(UTC))),
    )
    assert [t for t, _ in published_at] == [start + k * second for k in (1, 2, 3, 4)]
    assert all(wall >= t for t, wall in published_at)
    assert published_at[1][1] - published_at[0][1] < timedelta(milliseconds=500)  # the back-fill went at once
    assert time.monotonic() - began >= 1.3


async def test_survives_a_broker_restart(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="coldchain.simulate")
    port = services.free_port()

    def start_broker() -> services.Started:
        try:
            return services.start_mosquitto(tmp_path / "mosquitto", port)
        except Exception:
            return services.start_amqtt(port)

    broker = await asyncio.to_thread(start_broker)
    tag = secrets.token_hex(4)
    interval = timedelta(milliseconds=300)
    sim = FleetSimulator(_unique_fleet(tag), seed=3, start=datetime.now(UTC), interval=interval)
    stop = asyncio.Event()
    ticks: list[datetime] = []
    ticked = asyncio.Event()

    def on_tick(t: datetime, _: int) -> None:
        ticks.append(t)
        ticked.set()

    async def until_ticks(n: int) -> None:
        while len(ticks) < n:
            ticked.clear()
            await ticked.wait()

    task = asyncio.create_task(
        publish_forever(
            parse_mqtt_url(broker.url), sim, until=None, stop=stop, client_id=f"test-sim-{tag}", on_tick=on_tick
        )
    )
    try:
        async with asyncio.timeout(10):
            await until_ticks(2)
            await asyncio.to_thread(broker.stop)
            await asyncio.sleep(1.0)
            before = len(ticks)
            broker = await asyncio.to_thread(start_broker)
            await until_ticks(before + 4)
    finally:
        stop.set()
        published = await asyncio.wait_for(task, 10)
        broker.stop()
    assert not task.exception() and published > 0
    # No tick was skipped: the ones due while the broker was away went out after the reconnect.
    assert ticks == [sim.start + k * interval for k in range(1, len(ticks) + 1)]
    text = caplog.text
    assert "重连" in text and "已重新连接" in text


async def test_stops_cleanly_while_the_broker_is_unreachable(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="coldchain.simulate")
    address = parse_mqtt_url(f"mqtt://127.0.0.1:{services.free_port()}")
    stop = asyncio.Event()
    asyncio.get_running_loop().call_later(0.5, stop.set)
    sim = FleetSimulator(FLEET, seed=1, start=START)
    assert await publish_forever(address, sim, until=None, stop=stop, realtime=False) == 0
    assert "连接失败" in caplog.text


# ---------------------------------------------------------------------------------------------
# CLI glue


def _parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    configure_parser(parser)
    return parser.parse_args(argv)


def test_parser_defaults_and_faults(capsys: pytest.CaptureFixture[str]) -> None:
    args = _parse()
    assert (args.seed, args.interval, args.backfill, args.fault, args.random_faults) == (
        20200106,
        60.0,
        timedelta(0),
        [],
        0,
    )
    assert args.malformed_rate == 0.0 and args.duration is None and args.client_id == "coldchain-simulator"
    args = _parse("--fault", "power_cut:10003:10m:3h", "--fault", "probe_offline:208601:0s:5m", "--backfill", "6h")
    assert [f.kind for f in args.fault] == ["power_cut", "probe_offline"] and args.backfill == timedelta(hours=6)
    with pytest.raises(SystemExit):
        _parse("--fault", "power_cut:10003")
    assert "故障格式应为" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        _parse("--malformed-rate", "2")


def test_cmd_simulate_refuses_without_broker_or_fleet(db_url: str) -> None:
    with pytest.raises(SettingsError, match="COLDCHAIN_MQTT_URL"):
        cmd_simulate(load_settings({}), _parse(), db_url)
    settings = load_settings({"COLDCHAIN_MQTT_URL": "mqtt://127.0.0.1:1"})
    with pytest.raises(ValueError, match="coldchain seed demo"):
        cmd_simulate(settings, _parse(), db_url)


async def test_cmd_simulate_backfills_then_stops_after_its_duration(
    db_url: str, mqtt_broker: services.Started, capsys: pytest.CaptureFixture[str]
) -> None:
    plan = plan_demo(probes=40, seed=1)
    load_demo(db_url, plan)
    settings = load_settings({"COLDCHAIN_MQTT_URL": mqtt_broker.url})
    args = _parse(
        "--backfill",
        "5m",
        "--duration",
        "1",
        "--client-id",
        f"test-sim-{secrets.token_hex(4)}",
        "--fault",
        f"gateway_battery:{plan.gateways[0][1]}:0s:1h",
    )
    # In a worker thread, as the CLI's own event loop must not be nested in the test's.
    assert await asyncio.to_thread(cmd_simulate, settings, args, db_url) == 0
    out = capsys.readouterr().out
    gateways = len(plan.gateways)
    assert f"模拟 {gateways} 个网关、{len(plan.probes)} 个探头" in out
    assert "注入故障：网关改用电池供电" in out
    # Five back-filled ticks (the sixth is a minute away): one presence and five readings per gateway.
    assert f"共发送 {6 * gateways} 条消息" in out


def test_cmd_simulate_stops_cleanly_on_ctrl_c(db_url: str, mqtt_broker: services.Started) -> None:
    load_demo(db_url, plan_demo(probes=40, seed=1))
    script = (
        "import argparse, sys\n"
        "from coldchain.core.settings import load_settings\n"
        "from ingest.simulate import cmd_simulate, configure_parser\n"
        "p = argparse.ArgumentParser(); configure_parser(p)\n"
        "sys.exit(cmd_simulate(load_settings(), p.parse_args(sys.argv[2:]), sys.argv[1]))\n"
    )
    env = {**os.environ, "COLDCHAIN_MQTT_URL": mqtt_broker.url, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-c", script, db_url, "--backfill", "2m", "--client-id", f"test-sim-{secrets.token_hex(4)}"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        cwd=Path(__file__).resolve().parents[2],
    )
    try:
        assert proc.stdout is not None
        lines = []
        for line in proc.stdout:
            lines.append(line)
            if line.startswith("已发送至"):
                break
        proc.send_signal(signal.SIGINT)
        rest, err = proc.communicate(timeout=15)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err
    assert "Traceback" not in err
    assert "模拟已停止" in rest


# ---------------------------------------------------------------------------------------------
# The command: never next to real units unasked


def _simulate(db_url: str, broker: services.Started, *args: str) -> subprocess.CompletedProcess[str]:
    """``coldchain simulate`` as a deployment runs it: the services' role, a broker of the test's own
    (the machine's shared one would carry the made-up readings to other tests' ingesters)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("COLDCHAIN_")}
    env.update({"COLDCHAIN_DATABASE_URL": as_runtime(db_url), "COLDCHAIN_MQTT_URL": broker.url})
    return subprocess.run(
        [sys.executable, "-m", "coldchain.cli", "simulate", "--client-id", f"test-sim-{secrets.token_hex(4)}", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_the_simulate_command_refuses_real_units_unless_asked(db_url: str, deploy_broker: services.Started) -> None:
    """The guard of ``seed demo`` and ``run --demo`` (coldchain.seed.demo.check_demo_registry):
    refused in Chinese before a message is made, naming the units and the option that overrides."""
    build_world(db_url, readings=False)  # a province with real codes, not the demo's plan
    refused = _simulate(db_url, deploy_broker, "--duration", "1")
    assert refused.returncode == 2, refused.stdout + refused.stderr
    assert "错误：数据库中已有非演示单位" in refused.stderr and "6101130000" in refused.stderr
    assert "请加 --allow-real-units" in refused.stderr and "Traceback" not in refused.stderr
    assert "模拟 " not in refused.stdout

    asked = _simulate(db_url, deploy_broker, "--allow-real-units", "--backfill", "2m", "--duration", "1")
    assert asked.returncode == 0, asked.stderr
    assert "模拟 3 个网关" in asked.stdout and "模拟已停止，共发送" in asked.stdout


def test_the_simulate_command_runs_on_the_demo_without_being_asked(
    db_url: str, deploy_broker: services.Started
) -> None:
    """The demo, loaded with the seed the simulator is given (as ``coldchain run`` passes it on)."""
    plan = plan_demo(probes=40, seed=7)
    load_demo(db_url, plan)
    proc = _simulate(db_url, deploy_broker, "--seed", "7", "--backfill", "2m", "--duration", "1")
    assert proc.returncode == 0, proc.stderr
    assert f"模拟 {len(plan.gateways)} 个网关、{len(plan.probes)} 个探头" in proc.stdout
