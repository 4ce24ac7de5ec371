"""``coldchain run``: the whole system on embedded defaults, as one process tree.

Finds or starts PostgreSQL and the MQTT broker, migrates as the owner, loads the demo into an empty
registry when the demo is wanted (:func:`demo_policy`), then starts the ingester, the web API, the
gateway simulator (demo only) and the scheduler as child processes (the machine has more than one
core) and supervises them until Ctrl-C / SIGTERM, when it stops them in reverse order — the
ingester commits and acknowledges what it holds first. With no WeCom robot configured, the demo's
alarms go to a stand-in (:mod:`coldchain.demo_robot`).
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from dataclasses import dataclass

from coldchain import databases, services
from coldchain.core import db
from coldchain.core.outbound import mask_url
from coldchain.core.settings import Settings
from coldchain.demo_robot import StandInRobot, demo_fault, demo_robot_env, first_gateway
from coldchain.seed.demo import (
    DEMO_PASSWORD,
    PROVINCE_CODE,
    check_demo_registry,
    load_demo,
    plan_demo,
    registry_state,
)
from coldchain.seed.vaccines import load_vaccines
from ingest.simulate import parse_duration

log = logging.getLogger("coldchain")


def _child(argv: list[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
    """A service of the run command, in its own process (the machine has more than one core)."""
    return subprocess.Popen([sys.executable, "-m", "coldchain.cli", *argv], env=env, stdin=subprocess.DEVNULL)


def _stop_children(children: dict[str, subprocess.Popen[bytes]]) -> None:
    """SIGTERM, then wait: the ingester commits and acknowledges what it holds before it exits."""
    for proc in children.values():
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
    for name, proc in children.items():
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            log.warning("%s 未在 30 秒内退出，强制结束", name)
            proc.kill()
            proc.wait()


@dataclass(frozen=True)
class DemoPolicy:
    """What ``run`` may do with demo data: ``demo`` — load the demo into an empty registry and
    show the demo accounts; ``simulate`` — start the gateway simulator, which publishes made-up
    readings for every bound probe in the registry."""

    demo: bool
    simulate: bool


def demo_policy(*, embedded: bool, asked: bool, no_simulate: bool) -> DemoPolicy:
    """The demo only where it cannot reach real data unasked: on the embedded default (nothing was
    configured, so this is someone trying the system) or when ``--demo`` says so. A configured
    database is presumed to be a real one: an empty registry there is a new installation, to be
    filled by importing units, and its probes are real ones that must get no fake readings."""
    demo = asked or embedded
    return DemoPolicy(demo=demo, simulate=demo and not no_simulate)


FIRST_START = """登记库为空。已配置数据库（COLDCHAIN_DATABASE_URL），不会自动载入演示数据。正式启用：
  1. 导入单位：coldchain units import FILE
  2. 创建第一位系统管理员：coldchain admin create --unit 单位编码 --username 用户名 --real-name 实名 --phone 手机号
     （输出一个设置密码的链接，本人在 72 小时内打开并设置密码）
仅作演示：coldchain run --demo（演示账号的密码是公开的，切勿用于正式数据库）"""


def cmd_run(settings: Settings, args: argparse.Namespace) -> int:
    """Start what is needed, migrate, seed an empty registry if the demo is wanted, start the
    ingester and (demo only) the simulator, then run until Ctrl-C / SIGTERM and stop everything
    in reverse order."""
    started: list[services.Started] = []
    children: dict[str, subprocess.Popen[bytes]] = {}
    stop = threading.Event()
    # Before anything starts: a SIGTERM during start-up must still stop the servers we started.
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        database = databases.database_urls(settings)
        server = database.server
        if server:
            started.append(server)
        print(f"数据库：{server.source if server else '环境变量 COLDCHAIN_DATABASE_URL'}")
        applied = databases.migrate_as_owner(settings, database)
        print(f"迁移：新应用 {len(applied)} 个")
        url = database.owner_url
        policy = demo_policy(embedded=server is not None, asked=args.demo, no_simulate=args.no_simulate)
        with db.connect(url) as conn:
            print(f"存储路径：{db.storage_path(conn)}")
            if args.demo:  # refuses (RealUnitsPresent) before anything starts
                check_demo_registry(conn, args.probes, args.seed)
            elif policy.demo and registry_state(conn, args.probes, args.seed)[0] == "real":
                # The embedded default holding imported units: no fake readings for their probes.
                policy = DemoPolicy(demo=False, simulate=False)
            empty = conn.execute("SELECT NOT EXISTS (SELECT 1 FROM units)").fetchone() == (True,)
        if empty and not policy.demo:
            print(FIRST_START)
        elif empty:
            plan = plan_demo(args.probes, args.seed)
            load_demo(url, plan)
            booked = load_vaccines(url, args.seed)
            print(
                f"已载入演示省份：{len(plan.units)} 个单位，{len(plan.probes)} 个探头；"
                f"疫苗台账 {booked['lots']} 个批号，{booked['movements']} 条出入库，{booked['vaccinations']} 人次接种"
            )
        broker = services.find_mqtt(settings.mqtt_url, settings.state_dir, prefer_docker=False)
        started.append(broker)
        print(f"MQTT 代理：{mask_url(broker.url)}（{broker.source}）")  # a configured URL may carry a password
        env = {
            **os.environ,
            "COLDCHAIN_DATABASE_URL": database.url,
            "COLDCHAIN_OWNER_DATABASE_URL": database.owner_url,
            "COLDCHAIN_MQTT_URL": broker.url,
        }
        health_port = settings.ingest_health_port or services.free_port()
        children["采集服务"] = _child(["ingest", "--health-port", str(health_port)], env)
        print(f"采集服务：健康检查 http://127.0.0.1:{health_port}/healthz ，指标 /metrics")
        api_port = settings.api_port
        if not services.port_free(settings.api_host, api_port):
            api_port = services.free_port()
            print(f"端口 {settings.api_port} 已被占用，Web API 改用 {api_port}")
        children["Web API"] = _child(["api", "--port", str(api_port)], env)
        # The simulator starts once the ingester is subscribed: on a first run its broker session
        # does not exist yet, and messages published before it would have no one to queue for.
        if not _wait_healthy(f"http://127.0.0.1:{health_port}/healthz", children["采集服务"], stop):
            print("错误：采集服务未能就绪", file=sys.stderr)
            return 1
        api_base = f"http://{settings.api_host}:{api_port}/api/v1"
        if not _wait_healthy(f"{api_base}/health", children["Web API"], stop):
            print("错误：Web API 未能就绪", file=sys.stderr)
            return 1
        demo_accounts = f" （演示账号如 admin{PROVINCE_CODE}，密码 {DEMO_PASSWORD}）" if policy.demo else ""
        print(f"Web API：{api_base}/docs{demo_accounts}")
        scheduler_env = env
        if not policy.demo:
            print("网关模拟器：未启动（登记库不是演示数据，读数只来自真实网关；演示请加 --demo）")
        if policy.simulate:
            faults = ["--random-faults", "3"]
            if not settings.wecom_webhook_url:  # the loop made visible: a stand-in robot and a fault
                robot = StandInRobot().start()
                started.append(services.Started(robot.url, "演示替身", robot.stop))
                scheduler_env = {**env, **demo_robot_env(robot)}
                faults += [
                    "--fault",
                    demo_fault(first_gateway(url), parse_duration(args.backfill).total_seconds() / 60),
                ]
                print(f"未配置企业微信群机器人：报警通知发往演示替身 {robot.url}（回填结束约半分钟后注入一次停电）")
            sim = [
                "simulate",
                "--seed",
                str(args.seed),
                "--backfill",
                args.backfill,
                *faults,
                "--malformed-rate",
                "0.002",
            ]
            children["网关模拟器"] = _child(sim, env)
            print(f"网关模拟器：回填 {args.backfill}，随机故障 3 个，畸形消息 0.2%")
        # Last: its first no-data check comes one interval after the simulator's back-fill began.
        children["定时任务"] = _child(["scheduler"], scheduler_env)
        print(f"定时任务：报警评估、升级（{settings.escalation_steps}）、通知发送、聚合刷新")
        print("系统已启动。按 Ctrl-C 停止。", flush=True)
        failed = _supervise(children, stop, args.duration)
        print("正在停止……", flush=True)
        return 1 if failed else 0
    finally:
        _stop_children(children)
        for s in reversed(started):
            s.stop()


def _wait_healthy(url: str, proc: subprocess.Popen[bytes], stop: threading.Event, seconds: float = 60) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and proc.poll() is None and not stop.is_set():
        with contextlib.suppress(OSError), urllib.request.urlopen(url, timeout=1):
            return True
        stop.wait(0.2)
    return False


def _supervise(children: dict[str, subprocess.Popen[bytes]], stop: threading.Event, duration: float | None) -> bool:
    """Wait for a stop; True if a service died on its own. (The scheduler refreshes the aggregates.)"""
    deadline = None if duration is None else time.monotonic() + duration
    try:
        while not stop.wait(0.5):
            for name, proc in children.items():
                if proc.poll() is not None:
                    print(f"错误：{name}意外退出（退出码 {proc.returncode}），系统停止", file=sys.stderr)
                    return True
            now = time.monotonic()
            if deadline is not None and now >= deadline:
                break
    except KeyboardInterrupt:
        pass
    return False
