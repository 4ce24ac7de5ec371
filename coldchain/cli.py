"""The ``coldchain`` command.

``coldchain run`` starts the whole system on embedded defaults; the other commands each do one
job against ``COLDCHAIN_DATABASE_URL`` (or, when it is not set, the same local database that
``run`` uses, so that ``coldchain db status`` next to a running demo just works).
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable, Sequence
from datetime import datetime

import psycopg

from analytics.aggregates import refresh_aggregates
from coldchain import databases
from coldchain.core import db, roles
from coldchain.core.migrate import MigrationError, require_current, status
from coldchain.core.runtime import run_until_signalled
from coldchain.core.settings import Settings, SettingsError, load_settings
from coldchain.doctor_report import cmd_doctor
from coldchain.doctor_report import configure as configure_doctor
from coldchain.hardware_cli import configure_import as configure_hardware_import
from coldchain.run import cmd_run
from coldchain.seed.demo import DEMO_PASSWORD, RealUnitsPresent, check_demo_registry, load_demo, plan_demo
from coldchain.seed.vaccines import load_vaccines
from coldchain.units_cli import configure_import as configure_units_import
from coldchain.unreachable import broker_unreachable as _broker_unreachable
from coldchain.unreachable import database_unreachable as _database_unreachable
from ingest.simulate import configure_parser as configure_simulator

log = logging.getLogger("coldchain")


def cmd_db_migrate(settings: Settings, args: argparse.Namespace) -> int:
    with databases.opened(settings) as database:
        applied = databases.migrate_as_owner(settings, database)
        if applied:
            for m in applied:
                print(f"已应用迁移 {m.path.name}")
        else:
            print("数据库结构已是最新，无需迁移")
        with db.connect(database.owner_url) as conn:
            print(f"存储路径：{db.storage_path(conn)}")
    return 0


def cmd_db_status(settings: Settings, args: argparse.Namespace) -> int:
    with databases.opened(settings) as database:
        for state in status(database.url):
            when = state.applied_at.isoformat(timespec="seconds") if state.applied_at else "未应用"
            print(f"{state.migration.path.name:40} {when}")
    return 0


def cmd_db_refresh(settings: Settings, args: argparse.Namespace) -> int:
    # As the owner: on TimescaleDB only the owner of a continuous aggregate may refresh it.
    with databases.opened(settings) as database:
        until = datetime.fromisoformat(args.until) if args.until else None
        result = refresh_aggregates(database.owner_url, until=until)
        if result.path == "timescaledb":
            print(f"已刷新 TimescaleDB 连续聚合（策略窗口内），超温时段 {result.excursion_spans} 段")
        else:
            print(
                f"已刷新聚合：小时 {result.hourly_rows} 行，日 {result.daily_rows} 行，"
                f"物化至 {result.materialized_until}；超温时段 {result.excursion_spans} 段"
            )
    return 0


def cmd_db_runtime_login(settings: Settings, args: argparse.Namespace) -> int:
    """Create the login role the services connect as (a member of coldchain_runtime, nothing
    else); the password, if any, is read from standard input, never from the command line."""
    password = sys.stdin.readline().rstrip("\n") if args.password_stdin else None
    with databases.opened(settings) as database:
        require_current(database.owner_url)
        roles.ensure_runtime_login(database.owner_url, args.login, password)
        url = roles.with_role(database.owner_url, args.login)
    print(f"已创建运行角色 {args.login}（coldchain_runtime 成员）。")
    print(f"请把各服务的 COLDCHAIN_DATABASE_URL 设为（如有密码请另行填入）：{url}")
    return 0


def cmd_seed_demo(settings: Settings, args: argparse.Namespace) -> int:
    with databases.opened(settings) as database:
        databases.migrate_as_owner(settings, database)
        url = database.owner_url
        plan = plan_demo(args.probes, args.seed)
        load_demo(url, plan)
        load_vaccines(url, args.seed)
        print(
            f"已载入演示省份：单位 {len(plan.units)}，设备 {len(plan.equipment)}，温区 {len(plan.compartments)}，"
            f"网关 {len(plan.gateways)}，探头 {len(plan.probes)}，用户 {len(plan.users)}（演示密码 {DEMO_PASSWORD}）"
        )
    return 0


def cmd_ingest(settings: Settings, args: argparse.Namespace) -> int:
    """Run the MQTT ingester until Ctrl-C / SIGTERM (it then commits and acknowledges what it holds)."""
    from ingest.ingester import IngestConfig, Ingester

    if settings.mqtt is None:
        raise SettingsError("未配置 COLDCHAIN_MQTT_URL（例如 mqtt://127.0.0.1:1883）")
    with databases.opened(settings) as database:
        url = database.url
        require_current(url)
        roles.warn_if_overprivileged(url, "ingest")
        config = IngestConfig(
            database_url=url,
            mqtt=settings.mqtt,
            client_id=args.client_id or settings.ingest_client_id,
            share_group=args.share_group or settings.ingest_share_group,
            health_port=args.health_port if args.health_port is not None else settings.ingest_health_port,
            receive_maximum=args.receive_maximum,
            batch_messages=args.batch_messages,
            leave=args.leave,
        )
        ingester = Ingester(config)
        print(f"采集服务：{settings.mqtt.url} → 数据库，客户端 {config.client_id}", flush=True)
        run_until_signalled(ingester.run)
        m = ingester.metrics
        print(
            f"采集服务已停止：入库读数 {m.readings_stored}，重复 {m.readings_duplicate}，"
            f"死信消息 {m.messages_dead_lettered}"
        )
    return 0


def cmd_simulate(settings: Settings, args: argparse.Namespace) -> int:
    """The gateway simulator publishes made-up readings for every bound probe of the registry, so
    like ``seed demo`` and ``run --demo`` it refuses a registry holding units the demo did not
    make (:func:`coldchain.seed.demo.check_demo_registry`) — unless ``--allow-real-units`` says
    that this is meant (a load test on a copy of a real registry)."""
    from ingest.simulate import cmd_simulate as simulate

    with databases.opened(settings) as database:
        if not args.allow_real_units:
            with db.connect(database.url, application="coldchain-simulator") as conn:
                try:  # the demo as large as what is loaded, planned with this seed (as run does)
                    check_demo_registry(conn, 0, args.seed)
                except RealUnitsPresent as exc:
                    raise RealUnitsPresent(
                        f"{exc}。确需向这些单位的探头发送模拟读数（如在正式库的副本上做压力测试），"
                        "请加 --allow-real-units"
                    ) from None
        return simulate(settings, args, database.url)


def cmd_api(settings: Settings, args: argparse.Namespace) -> int:
    """Serve the web API with uvicorn until Ctrl-C / SIGTERM (uvicorn drains requests first)."""
    import uvicorn

    from coldchain.app import create_app

    host = args.host or settings.api_host
    port = args.port or settings.api_port
    with databases.opened(settings) as database:
        url = database.url
        require_current(url)
        roles.warn_if_overprivileged(url, "api")
        app = create_app(settings, url)
        print(f"Web API：http://{host}:{port}/api/v1/docs", flush=True)
        uvicorn.run(
            app, host=host, port=port, log_level="info" if args.verbose else "warning", proxy_headers=args.proxy_headers
        )
    return 0


def cmd_scheduler(settings: Settings, args: argparse.Namespace) -> int:
    """Rule evaluation, escalation, notification delivery and aggregate refresh until SIGTERM."""
    from coldchain.scheduler import Intervals, run

    with databases.opened(settings) as database:
        url = database.url
        require_current(url)
        roles.warn_if_overprivileged(url, "scheduler")
        intervals = Intervals(
            evaluate=args.evaluate_every,
            deliver=args.deliver_every,
            escalate=args.escalate_every,
            silence=args.silence_every,
        )
        print(
            f"定时任务：评估每 {intervals.evaluate:g} 秒，通知每 {intervals.deliver:g} 秒，"
            f"升级每 {intervals.escalate:g} 秒；升级时限 {settings.escalation_steps}，"
            f"提醒间隔 {settings.reminder_interval}",
            flush=True,
        )
        run(settings, url, intervals, args.duration)
    return 0


def cmd_admin_create(settings: Settings, args: argparse.Namespace) -> int:
    """The platform creates a unit's system administrator (UM1) — on a fresh installation the
    province's, who then manages the rest through the API and Form 5. Prints the one-time link to
    the page where they set their password (and its token, for API clients); no password ever
    passes through the command line."""
    from registry.permissions import role_allowed_at
    from registry.sessions import SETUP_TOKEN_TTL, open_session, setup_link

    with databases.opened(settings) as database, db.connect(database.url, application="coldchain-cli") as conn:
        unit = conn.execute("SELECT id, level, name FROM units WHERE code = %s", (args.unit,)).fetchone()
        if unit is None:
            raise ValueError(f"没有编码为 {args.unit} 的单位")
        if problem := role_allowed_at("system_admin", unit[1]):
            raise ValueError(problem)
        conn.execute("SELECT set_config('coldchain.action', 'platform.create_system_admin', true)")
        row = conn.execute(
            """INSERT INTO users (username, real_name, phone, unit_id, role, department)
               VALUES (%s, %s, %s, %s, 'system_admin', '信息科') RETURNING id""",
            (args.username, args.real_name, args.phone, unit[0]),
        ).fetchone()
        assert row is not None
        token = open_session(conn, row[0], "setup", SETUP_TOKEN_TTL, None, None).token
        conn.commit()
    print(f"已为{unit[2]}创建系统管理员 {args.username}。")
    # The link is for the person (a page on a phone); the bare token stays last for API clients.
    print(f"请把此链接交给本人，在 72 小时内打开并设置密码（只能使用一次）：{setup_link(settings.public_url, token)}")
    print(f"API 客户端可用此一次性令牌设置密码（POST /api/v1/auth/setup-password）：{token}")
    return 0


def _bounded_int(lo: int, hi: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"应为整数，实际为 {text!r}") from None
        if not lo <= value <= hi:
            raise argparse.ArgumentTypeError(f"应在 {lo}–{hi} 之间，实际为 {value}")
        return value

    return parse


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="coldchain", description="陕西省疫苗追溯和冷链监测信息系统")
    parser.add_argument("-v", "--verbose", action="store_true", help="输出调试日志")
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="以内置默认配置启动整个系统")
    run.add_argument("--probes", type=int, default=200, help="空库时载入的演示探头数（默认 200）")
    run.add_argument("--seed", type=int, default=20200106, help="演示数据随机种子")
    run.add_argument("--duration", type=float, default=None, help="运行若干秒后自动停止（演示、测试用）")
    run.add_argument("--backfill", default="24h", help="模拟器从多久以前开始补发数据（默认 24h）")
    run.add_argument("--no-simulate", action="store_true", help="不启动网关模拟器（接真实网关时）")
    run.add_argument(
        "--demo",
        action="store_true",
        help="演示：空库时载入演示省份并启动网关模拟器（已配置数据库时须显式指定；库中有非演示单位时拒绝）",
    )
    run.set_defaults(func=cmd_run)

    dbp = sub.add_parser("db", help="数据库结构与聚合").add_subparsers(dest="db_command", required=True)
    dbp.add_parser("migrate", help="应用未应用的迁移").set_defaults(func=cmd_db_migrate)
    dbp.add_parser("status", help="列出迁移及其应用时间").set_defaults(func=cmd_db_status)
    login = dbp.add_parser("runtime-login", help="创建服务使用的运行角色（coldchain_runtime 成员，以属主连接执行）")
    login.add_argument("--login", default=roles.DEFAULT_RUNTIME_LOGIN, help="登录角色名（默认 coldchain_app）")
    login.add_argument("--password-stdin", action="store_true", help="从标准输入读取该角色的密码（一行）")
    login.set_defaults(func=cmd_db_runtime_login)
    refresh = dbp.add_parser("refresh-aggregates", help="刷新小时、日聚合")
    refresh.add_argument("--until", help="物化到此时刻之前的完整小时（ISO 8601，默认当前时间）")
    refresh.set_defaults(func=cmd_db_refresh)

    ing = sub.add_parser("ingest", help="MQTT 采集服务：读数入库（确认仅在提交之后）")
    ing.add_argument("--client-id", help="MQTT 客户端标识（默认 COLDCHAIN_INGEST_CLIENT_ID 或 coldchain-ingest）")
    ing.add_argument("--share-group", help="多实例分担负载的共享订阅组名（默认不共享）")
    ing.add_argument(
        "--health-port", type=_bounded_int(1, 65535), default=None, help="/healthz 与 /metrics 端口（默认不开启）"
    )
    ing.add_argument(
        "--receive-maximum",
        type=_bounded_int(1, 65535),
        default=2000,
        help="代理可同时未确认下发的消息数（内存上限，1–65535）",
    )
    ing.add_argument("--batch-messages", type=_bounded_int(1, 100_000), default=500, help="每批写入的消息数上限")
    ing.add_argument(
        "--leave",
        action="store_true",
        help="永久移出共享订阅组：以同一客户端标识接收并入库排队给它的消息，然后删除其会话后退出",
    )
    ing.set_defaults(func=cmd_ingest)

    apip = sub.add_parser("api", help="Web API（FastAPI，/api/v1，文档在 /api/v1/docs）")
    apip.add_argument("--host", help="监听地址（默认 COLDCHAIN_API_HOST 或 127.0.0.1）")
    apip.add_argument(
        "--port", type=_bounded_int(1, 65535), default=None, help="端口（默认 COLDCHAIN_API_PORT 或 8000）"
    )
    apip.add_argument(
        "--proxy-headers", action="store_true", help="信任反向代理的 X-Forwarded-* 头（部署在 nginx 后时）"
    )
    apip.set_defaults(func=cmd_api)

    sch = sub.add_parser("scheduler", help="定时任务：报警评估、升级、通知发送、聚合刷新（APScheduler）")
    for name, default, what in (
        ("evaluate-every", 1.0, "评估新读数"),
        ("deliver-every", 1.0, "发送通知"),
        ("escalate-every", 2.0, "检查报警升级"),
        ("silence-every", 15.0, "无数据与网关检查"),
    ):
        sch.add_argument(f"--{name}", type=float, default=default, help=f"{what}的间隔秒数（默认 {default:g}）")
    sch.add_argument("--duration", type=float, default=None, help="运行若干秒后停止（测试、演示用）")
    sch.set_defaults(func=cmd_scheduler)

    adm = sub.add_parser("admin", help="平台操作").add_subparsers(dest="admin_command", required=True)
    create = adm.add_parser("create", help="为单位创建系统管理员（UM1：系统管理员由平台生成），输出一次性设置密码令牌")
    create.add_argument("--unit", required=True, help="十位单位编码，如 6100000000")
    create.add_argument("--username", required=True)
    create.add_argument("--real-name", required=True, help="实名")
    create.add_argument("--phone", required=True)
    create.set_defaults(func=cmd_admin_create)

    sim = sub.add_parser("simulate", help="网关模拟器：为库中已绑定的探头发送读数，可注入故障")
    configure_simulator(sim)
    sim.add_argument(
        "--allow-real-units",
        action="store_true",
        help="库中有非演示单位时仍然发送模拟读数（如在正式库的副本上做压力测试）；默认拒绝，以免真实探头收到假读数",
    )
    sim.set_defaults(func=cmd_simulate)

    seed = sub.add_parser("seed", help="载入数据").add_subparsers(dest="seed_command", required=True)
    demo = seed.add_parser("demo", help="载入演示省份（陕西）")
    demo.add_argument("--probes", type=int, default=200, help="探头数（默认 200，可至 15000 以上）")
    demo.add_argument("--seed", type=int, default=20200106, help="随机种子（相同种子生成相同数据）")
    demo.set_defaults(func=cmd_seed_demo)

    units = sub.add_parser("units", help="单位登记").add_subparsers(dest="units_command", required=True)
    configure_units_import(units.add_parser("import", help="从 CSV / XLSX 导入行政区划单位树（只增不删，可重复导入）"))

    hardware = sub.add_parser("hardware", help="监测硬件登记").add_subparsers(dest="hardware_command", required=True)
    configure_hardware_import(
        hardware.add_parser("import", help="从厂家供货清单（CSV / XLSX）导入设备、温区、网关、探头及绑定（只增不改）")
    )
    configure_doctor(
        sub.add_parser("doctor", help="检查部署：数据库、迁移、权限、MQTT 代理、通知、公开地址、时钟，并给出修复方法")
    )
    return parser


#: Exit code of a command that could not reach its database or broker (2: a bad setting or input).
EXIT_UNREACHABLE = 3
# Commands that need the broker from their first second: checked before anything else.
_NEEDS_BROKER = frozenset({"ingest", "simulate"})


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    if args.command == "doctor":  # reads the settings itself: a bad one is a finding, not a stop
        return cmd_doctor(args)
    settings: Settings | None = None
    try:
        settings = load_settings()
        if args.command in _NEEDS_BROKER and (problem := _broker_unreachable(settings)):
            print(f"错误：{problem}", file=sys.stderr)
            return EXIT_UNREACHABLE
        result: int = args.func(settings, args)
        return result
    except psycopg.OperationalError as exc:
        # At connect, or a server that went away mid-command: one line, never a traceback.
        print(f"错误：{_database_unreachable(exc, settings)}", file=sys.stderr)
        return EXIT_UNREACHABLE
    except (SettingsError, MigrationError, ValueError, RuntimeError) as exc:
        print(f"错误：{exc}", file=sys.stderr)
        return 2
    except psycopg.errors.IntegrityError as exc:
        print(f"错误：数据不符合要求：{exc.diag.message_primary}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
