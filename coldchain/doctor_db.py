"""The database's checks of ``coldchain doctor``: reachable, migrated, on the storage path the
settings want (with TimescaleDB's policies), the services' role least-privileged, every unit's
alarms going somewhere, the time zones and the clock; and the read replica, when one is set.

Why apart from :mod:`coldchain.doctor`: these read the database, the others only the settings
and the broker. Each opens its own short connection as the URL's role (the runtime role, as the
services run), reads, and closes it; nothing is written.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from datetime import datetime
from urllib.parse import urlsplit
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import psycopg

from coldchain.core import db, roles
from coldchain.core.migrate import MigrationError, status, timescale_server
from coldchain.core.outbound import OutboundRefused, check_url, mask_url, policy_of
from coldchain.core.settings import Settings
from coldchain.doctor import TIMEOUT, Check, Status, unreachable_check
from coldchain.unreachable import database_failure, failure, url_passwords

RUNTIME_URL = "COLDCHAIN_DATABASE_URL"
OWNER_URL = "COLDCHAIN_OWNER_DATABASE_URL"
READ_URL = "COLDCHAIN_READ_DATABASE_URL"
_AS_OWNER = "以属主身份（设置 COLDCHAIN_OWNER_DATABASE_URL）运行 coldchain db migrate"
_NTP = "在本机和数据库服务器上启用 NTP 时间同步（如 chrony 或 systemd-timesyncd）"


def _connect(url: str) -> psycopg.Connection:
    """The doctor's own connection: read-only work, a short timeout, and the server's own session
    defaults (no ``timezone=UTC`` option), so that ``SHOW TimeZone`` shows what the server has."""
    return psycopg.connect(url, autocommit=True, application_name="coldchain-doctor", connect_timeout=int(TIMEOUT))


def db_address(url: str) -> str:
    """A database URL as it may be shown: user, host, port and database, never the password."""
    parts = urlsplit(url)
    user = f"{parts.username}@" if parts.username else ""
    return f"postgresql://{user}{parts.hostname or ''}:{parts.port or 5432}{parts.path}"


def check_database(settings: Settings, variable: str, problem: str | None = None) -> Check:
    """Reachable, as the runtime role (``COLDCHAIN_DATABASE_URL``) or the owner; ``problem`` is
    why the settings could not read that variable, when they could not."""
    key, title = ("database", "数据库（运行角色）") if variable == RUNTIME_URL else ("owner_database", "数据库（属主）")
    if problem is not None:
        return Check(key, title, "fail", problem, f"改正 {variable}，格式为 postgresql://用户:密码@主机:端口/库名")
    url = settings.database_url if variable == RUNTIME_URL else settings.owner_database_url
    if url is None and variable == RUNTIME_URL:
        return Check(
            key,
            title,
            "fail",
            "未设置 COLDCHAIN_DATABASE_URL：各命令将使用本机内置的演示数据库",
            "在 /etc/coldchain/coldchain.env 中设为运行角色的连接，如 postgresql://coldchain_app:…@db.example:5432/coldchain",
        )
    if url is None:
        return Check(key, title, "skip", "未设置：只有迁移等属主命令需要它（在命令行中设置，不写入服务的环境文件）")
    try:
        with _connect(url) as conn:
            version = conn.execute("SHOW server_version").fetchone()
    except psycopg.OperationalError as exc:
        return unreachable_check(key, title, database_failure(exc, settings, variable))
    number = str(version[0]).split()[0] if version else "?"  # '15.4 (Debian 15.4-1)' → '15.4'
    return Check(key, title, "ok", f"已连接 {db_address(url)}（PostgreSQL {number}）")


def check_migrations(url: str) -> Check:
    try:
        states = status(url)
    except MigrationError as exc:
        return Check(
            "migrations", "迁移", "fail", str(exc), "代码与数据库须一致：已应用的迁移不可修改，代码不能比数据库旧"
        )
    pending = [s.migration.path.name for s in states if s.applied_at is None]
    if not pending:
        return Check("migrations", "迁移", "ok", f"已是最新（{len(states)} 个，最新 {states[-1].migration.path.name}）")
    if len(pending) == len(states):
        return Check(
            "migrations",
            "迁移",
            "fail",
            f"数据库尚未迁移（{len(states)} 个迁移均未应用）",
            f"{_AS_OWNER}，再运行 coldchain db runtime-login 创建运行角色",
        )
    return Check(
        "migrations",
        "迁移",
        "fail",
        f"数据库结构不是最新，未应用：{'、'.join(pending)}",
        f"{_AS_OWNER}，再重启各服务（结构过旧时服务拒绝启动）",
    )


def _migrated(conn: psycopg.Connection) -> bool:
    row = conn.execute("SELECT to_regprocedure('cc_timescaledb()') IS NOT NULL").fetchone()
    return bool(row and row[0])


def check_storage(url: str, settings: Settings) -> Check:
    """The storage path the first migration chose, against ``COLDCHAIN_TIMESCALEDB`` and what the
    server offers (a TimescaleDB not in shared_preload_libraries cannot be used)."""
    key, title = "storage", "存储路径"
    with _connect(url) as conn:
        if not _migrated(conn):
            return Check(key, title, "skip", "数据库尚未迁移，存储路径在首次迁移时确定")
        path = db.storage_path(conn)
        server = timescale_server(conn)
    mode = settings.timescaledb
    new_database = "存储路径在首次迁移时确定：在预加载 timescaledb 的服务器上迁移一个新库，再把读数复制过去"
    if path == "timescaledb":
        if not server.preloaded:
            return Check(
                key,
                title,
                "fail",
                "TimescaleDB 存储路径，但 timescaledb 不在 shared_preload_libraries 中",
                "在 postgresql.conf 的 shared_preload_libraries 中加入 timescaledb，并重启 PostgreSQL",
            )
        return Check(key, title, "ok", "TimescaleDB（已预加载）")
    if mode == "off":
        return Check(key, title, "ok", "普通 PostgreSQL（COLDCHAIN_TIMESCALEDB=off）")
    if mode == "require":
        return Check(
            key,
            title,
            "fail",
            "本库为普通 PostgreSQL 存储路径，但设置要求 TimescaleDB（COLDCHAIN_TIMESCALEDB=require）",
            f"{new_database}；或改设 COLDCHAIN_TIMESCALEDB=auto",
        )
    if server.offered and not server.preloaded:
        return Check(
            key,
            title,
            "warn",
            "普通 PostgreSQL：服务器已安装 timescaledb 扩展，但它不在 shared_preload_libraries 中",
            "若要使用 TimescaleDB：在 shared_preload_libraries 中加入 timescaledb 并重启 PostgreSQL；"
            f"{new_database}。有意使用普通路径时设 COLDCHAIN_TIMESCALEDB=off",
        )
    if server.offered:
        return Check(
            key,
            title,
            "warn",
            "普通 PostgreSQL：服务器可用 TimescaleDB，但本库在首次迁移时建成了普通路径",
            f"{new_database}；有意使用普通路径时设 COLDCHAIN_TIMESCALEDB=off",
        )
    return Check(key, title, "ok", "普通 PostgreSQL（服务器未提供 TimescaleDB 扩展）")


# The policies migration 0002 creates on the TimescaleDB path, and the statement that re-creates
# each (run as the owner).
EXPECTED_POLICIES: dict[tuple[str, str], str] = {
    ("policy_refresh_continuous_aggregate", "probe_readings_hourly"): (
        "SELECT add_continuous_aggregate_policy('probe_readings_hourly', start_offset => INTERVAL '30 days', "
        "end_offset => INTERVAL '1 hour', schedule_interval => INTERVAL '15 minutes')"
    ),
    ("policy_refresh_continuous_aggregate", "probe_readings_daily"): (
        "SELECT add_continuous_aggregate_policy('probe_readings_daily', start_offset => INTERVAL '90 days', "
        "end_offset => INTERVAL '1 hour', schedule_interval => INTERVAL '1 hour')"
    ),
    ("policy_compression", "probe_readings"): "SELECT add_compression_policy('probe_readings', INTERVAL '7 days')",
    ("policy_compression", "gateway_status"): "SELECT add_compression_policy('gateway_status', INTERVAL '30 days')",
    ("policy_retention", "probe_readings"): "SELECT add_retention_policy('probe_readings', INTERVAL '8 years')",
    ("policy_retention", "gateway_status"): "SELECT add_retention_policy('gateway_status', INTERVAL '8 years')",
}
_POLICY_NAMES = {
    "policy_refresh_continuous_aggregate": "连续聚合刷新",
    "policy_compression": "压缩",
    "policy_retention": "保留",
}
# A refresh policy's job names the aggregate's materialisation hypertable: named by its view here.
POLICIES_SQL = """
SELECT j.job_id, j.proc_name, coalesce(c.view_name, j.hypertable_name)::text AS target, j.scheduled
FROM timescaledb_information.jobs j
LEFT JOIN timescaledb_information.continuous_aggregates c
       ON c.materialization_hypertable_schema = j.hypertable_schema
      AND c.materialization_hypertable_name = j.hypertable_name
WHERE j.proc_name IN ('policy_compression', 'policy_retention', 'policy_refresh_continuous_aggregate')
ORDER BY 1
"""


def policy_verdict(rows: Sequence[tuple[int, str, str, bool]]) -> Check:
    """The TimescaleDB policies found (job id, procedure, target, scheduled) against those 0002
    creates: a missing one means readings are never compressed, never dropped after 8 years, or
    the hourly / daily figures go stale."""
    key, title = "timescaledb_policies", "TimescaleDB 策略"
    found = {(proc, target): (job, scheduled) for job, proc, target, scheduled in rows}
    missing = [k for k in EXPECTED_POLICIES if k not in found]
    paused = [(k, found[k][0]) for k in EXPECTED_POLICIES if k in found and not found[k][1]]
    if missing:
        names = "、".join(f"{_POLICY_NAMES[p]} {t}" for p, t in missing)
        statements = "；".join(EXPECTED_POLICIES[k] for k in missing)
        return Check(key, title, "fail", f"缺少策略：{names}", f"以属主身份执行：{statements}")
    if paused:
        names = "、".join(f"{_POLICY_NAMES[p]} {t}（作业 {job}）" for (p, t), job in paused)
        statements = "；".join(f"SELECT alter_job({job}, scheduled => true)" for _, job in paused)
        return Check(key, title, "warn", f"策略已暂停：{names}", f"以属主身份执行：{statements}")
    return Check(key, title, "ok", "连续聚合刷新 2 个、压缩 2 个、保留（8 年）2 个策略均已启用")


def check_policies(url: str) -> Check:
    key, title = "timescaledb_policies", "TimescaleDB 策略"
    with _connect(url) as conn:
        if not _migrated(conn):
            return Check(key, title, "skip", "数据库尚未迁移")
        if db.storage_path(conn) != "timescaledb":
            return Check(
                key,
                title,
                "skip",
                "普通 PostgreSQL 存储路径：不适用（聚合由 coldchain scheduler 刷新；"
                "8 年保留期由属主运行 SELECT * FROM cc_retention_purge()）",
            )
        rows = conn.execute(POLICIES_SQL).fetchall()
    return policy_verdict([(int(j), str(p), str(t), bool(s)) for j, p, t, s in rows])


def check_privileges(url: str) -> Check:
    """The services' URL must be a runtime login (issue #15): the owner's or a superuser's works,
    but then nothing stops a bug or an intruder from rewriting the records."""
    key, title = "privileges", "运行角色权限"
    with _connect(url) as conn:
        problems = roles.privilege_problems(conn)
        row = conn.execute(
            "SELECT current_user, CASE WHEN EXISTS (SELECT FROM pg_roles WHERE rolname = %s)"
            " THEN pg_has_role(current_user, %s, 'MEMBER') ELSE false END",
            (roles.RUNTIME_GROUP, roles.RUNTIME_GROUP),
        ).fetchone()
    user, member = (str(row[0]), bool(row[1])) if row else ("?", False)
    if problems:
        return Check(
            key,
            title,
            "fail",
            f"COLDCHAIN_DATABASE_URL 的角色 {user} 权限超出运行角色的需要：{'；'.join(problems)}",
            "以属主运行 coldchain db runtime-login 创建运行角色，把它设为 COLDCHAIN_DATABASE_URL；"
            "属主连接只在迁移时设为 COLDCHAIN_OWNER_DATABASE_URL",
        )
    if not member:
        return Check(
            key,
            title,
            "fail",
            f"角色 {user} 不是 {roles.RUNTIME_GROUP} 的成员，服务将缺少所需的权限",
            f"迁移后以属主运行 coldchain db runtime-login --login {user}",
        )
    return Check(key, title, "ok", f"{user}：{roles.RUNTIME_GROUP} 成员，没有多余权限")


UNROUTED_UNITS_SQL = """
SELECT u.code, u.name FROM units u
WHERE u.active
  AND EXISTS (SELECT FROM unit_responsibles r JOIN users p ON p.id = r.user_id AND p.status = 'active'
              WHERE r.unit_id = u.id)
  AND NOT EXISTS (SELECT FROM notification_routes n WHERE n.unit_id = u.id)
ORDER BY u.code
"""
_ROUTES_SQL = """
SELECT u.code, n.level, n.url FROM notification_routes n JOIN units u ON u.id = n.unit_id ORDER BY u.code, n.level
"""


def check_routes(url: str, settings: Settings, fallback_ok: bool) -> Check:
    """Which units' alarms reach nobody: responsible people, no route of their own, no fallback;
    and which saved routes the allowlist now refuses (it may have shrunk since they were saved)."""
    key, title = "notification_routes", "通知去处"
    with _connect(url) as conn:
        if not _migrated(conn):
            return Check(key, title, "skip", "数据库尚未迁移")
        unrouted = conn.execute(UNROUTED_UNITS_SQL).fetchall()
        routes = conn.execute(_ROUTES_SQL).fetchall()
    policy = policy_of(settings)
    refused: list[str] = []
    for code, level, target in routes:
        try:
            check_url(target, policy)
        except OutboundRefused as exc:
            refused.append(f"{code} {level} 级 {mask_url(target)}：{exc}")
    if refused:
        return Check(
            key,
            title,
            "fail",
            f"{len(refused)} 条已保存的通知去处不符合当前外发白名单（{'；'.join(refused[:3])}）",
            "在这些单位的通知设置中改正地址（PUT /api/v1/units/{id}/notification-routes），"
            "或把其主机加入 COLDCHAIN_OUTBOUND_HOSTS",
        )
    sample = "、".join(f"{c} {n}" for c, n in unrouted[:5]) + (" 等" if len(unrouted) > 5 else "")
    if unrouted and fallback_ok:
        return Check(key, title, "ok", f"{len(unrouted)} 个单位未配置通知去处，其报警发到兜底机器人（如 {sample}）")
    if unrouted:
        wechat = settings.wechat_template_id is not None
        return Check(
            key,
            title,
            "warn" if wechat else "fail",
            f"{len(unrouted)} 个单位有负责人，但没有通知去处，也没有兜底机器人（如 {sample}）："
            + ("其报警只发到已绑定微信的负责人" if wechat else "其报警不会通知任何人"),
            "为这些单位配置通知去处（PUT /api/v1/units/{id}/notification-routes），"
            "或设置兜底机器人 COLDCHAIN_WECOM_WEBHOOK_URL",
        )
    return Check(key, title, "ok", f"有负责人的单位均已配置通知去处（共 {len(routes)} 条，均符合外发白名单）")


def check_timezones(url: str | None) -> Check:
    """The system stores and computes in UTC and shows Beijing time (coldchain/core/terms.py,
    coldchain/core/db.py): neither server's zone changes a figure, but both must know
    Asia/Shanghai, which days, months and reports are cut by."""
    key, title = "timezone", "时区"
    now = datetime.now().astimezone()
    offset = now.strftime("%z")
    here = f"本机时区 {now.tzname()}（UTC{offset[:3]}:{offset[3:]}）"
    try:
        ZoneInfo("Asia/Shanghai")
    except ZoneInfoNotFoundError:
        return Check(key, title, "fail", f"{here}；Python 找不到时区 Asia/Shanghai", "apt-get install tzdata")
    if url is None:
        return Check(key, title, "ok", f"{here}；数据库未检查（连接失败）")
    with _connect(url) as conn:
        zone = conn.execute("SHOW TimeZone").fetchone()
        try:
            conn.execute("SELECT now() AT TIME ZONE 'Asia/Shanghai'")
        except psycopg.errors.InvalidParameterValue:
            return Check(
                key, title, "fail", f"{here}；数据库不认识时区 Asia/Shanghai", "在数据库服务器上安装时区数据（tzdata）"
            )
    return Check(
        key,
        title,
        "ok",
        f"{here}，数据库 TimeZone={zone[0] if zone else '?'}；系统内部以 UTC 存储和计算，"
        "按北京时间（Asia/Shanghai）显示和划分日、月，不受两者影响",
    )


def clock_verdict(skew: float, round_trip: float) -> Check:
    """Skew = database clock − local clock, in seconds. Alarm durations, escalation deadlines and
    sessions compare times taken on both sides: over 2 s is worth fixing, over 30 s breaks them."""
    key, title = "clock", "时钟"
    ahead = "快" if skew > 0 else "慢"
    text = f"数据库时钟比本机{ahead} {abs(skew):.1f} 秒（往返 {round_trip * 1000:.0f} 毫秒）"
    if abs(skew) > 30:
        return Check(key, title, "fail", text + "：报警时限、升级与会话时间将出错", _NTP)
    if abs(skew) > 2:
        return Check(key, title, "warn", text, _NTP)
    return Check(key, title, "ok", f"本机与数据库时钟相差 {abs(skew):.2f} 秒")


def check_clock(url: str) -> Check:
    with _connect(url) as conn:
        before = time.time()
        row = conn.execute("SELECT clock_timestamp()").fetchone()
        after = time.time()
    assert row is not None
    return clock_verdict(row[0].timestamp() - (before + after) / 2, after - before)


# --- the read replica (issue #18) ------------------------------------------------------------------

#: Seconds behind the primary from which the replica is reported: a warning (reports and charts
#: lag visibly; the pages say so from 5 s on), then a failure (they are no longer "a few seconds
#: old": something is broken — the network, the replica's disk, a query holding replay back).
REPLICA_LAG_WARN = 30.0
REPLICA_LAG_FAIL = 300.0
_REPLICA_SQL = """
SELECT pg_is_in_recovery(), current_database(), (SELECT system_identifier FROM pg_control_system()),
       pg_is_in_recovery() AND pg_is_wal_replay_paused(), EXISTS (SELECT FROM pg_stat_wal_receiver)
"""
_IDENTITY_SQL = "SELECT current_database(), (SELECT system_identifier FROM pg_control_system())"
_MAKE_REPLICA = (
    "设为主库的流复制副本（pg_basebackup -R 制作，见 docs/operations.md「Read replica」），"
    "或删除 COLDCHAIN_READ_DATABASE_URL 以从主库读取"
)
_SEVERITY: dict[Status, int] = {"ok": 0, "skip": 0, "warn": 1, "fail": 2}


def _read_unreachable(exc: psycopg.OperationalError, url: str) -> Check:
    """Named by the read URL itself (:func:`database_failure` knows only the primary's and the
    owner's), without its password."""
    detail = str(exc)
    if exc.pgconn is not None and exc.pgconn.error_message:
        detail = exc.pgconn.error_message.decode(errors="replace").split(" failed: ", 1)[-1] or detail
    found = failure("数据库", db_address(url), detail, READ_URL, url_passwords(url))
    return unreachable_check("read_database", "只读副本", found)


def check_read_database(settings: Settings, primary_url: str | None, problem: str | None = None) -> Check:
    """``COLDCHAIN_READ_DATABASE_URL``: reachable; a replica (in recovery) of the primary's own
    cluster and database — else reports would come from another database altogether; replaying
    (not paused) and receiving (a WAL receiver runs); and how far behind, by the number the API
    puts in its ``X-Coldchain-Replica-Lag`` header (:func:`coldchain.core.db.measure_lag`).
    ``primary_url``: the services' URL when it was reached, to compare identities."""
    key, title = "read_database", "只读副本"
    if problem is not None:
        return Check(key, title, "fail", problem, f"改正 {READ_URL}，格式为 postgresql://用户:密码@主机:端口/库名")
    url = settings.read_database_url
    if url is None:
        return Check(key, title, "skip", f"未设置 {READ_URL}：报告与历史曲线从主库读取")
    try:
        with _connect(url) as conn:
            row = conn.execute(_REPLICA_SQL).fetchone()
            lag = db.measure_lag(conn)
    except psycopg.OperationalError as exc:
        return _read_unreachable(exc, url)
    assert row is not None
    in_recovery, name, system, paused, receiving = bool(row[0]), str(row[1]), int(row[2]), bool(row[3]), bool(row[4])
    primary: tuple[str, int] | None = None
    if primary_url is not None:
        with _connect(primary_url) as conn:
            found = conn.execute(_IDENTITY_SQL).fetchone()
        primary = (str(found[0]), int(found[1])) if found else None
    where = db_address(url)
    same = primary == (name, system)
    if not in_recovery:
        if same:
            return Check(
                key,
                title,
                "warn",
                f"{where} 就是主库本身（pg_is_in_recovery() 为 false）：报告与历史曲线仍由主库承担",
                _MAKE_REPLICA,
            )
        return Check(
            key,
            title,
            "fail",
            f"{where} 不是只读副本（pg_is_in_recovery() 为 false），报告与历史曲线将读自另一个数据库",
            _MAKE_REPLICA,
        )
    if primary is not None and primary[1] != system:
        return Check(
            key,
            title,
            "fail",
            f"{where} 是另一个数据库集群的副本（系统标识 {system}，主库为 {primary[1]}）",
            f"{READ_URL} 须指向 {RUNTIME_URL} 所在主库的流复制副本；{_MAKE_REPLICA}",
        )
    if primary is not None and primary[0] != name:
        return Check(
            key,
            title,
            "fail",
            f"{where} 的库名 {name} 与主库的 {primary[0]} 不同",
            f"把 {READ_URL} 的库名改为 {primary[0]}",
        )
    findings: list[tuple[Status, str, str]] = []
    if paused:
        findings.append(
            ("warn", "WAL 回放已暂停，数据停在暂停时刻", "在副本上以超级用户执行 SELECT pg_wal_replay_resume()")
        )
    if not receiving:
        findings.append(
            (
                "warn",
                "没有 WAL 接收进程（未连接主库），数据不再更新，落后时间可能显示为 0",
                "检查副本 postgresql.auto.conf 中的 primary_conninfo、主库 pg_hba.conf 的 replication 行"
                "与网络，并查看副本日志",
            )
        )
    shown = "未知（启动后尚未回放任何事务）" if lag is None else f"{db.format_lag(lag)} 秒"
    slow = (
        "查看主库 pg_stat_replication 与副本日志：网络带宽、副本磁盘，"
        "或副本上的长查询推迟了回放（max_standby_streaming_delay）"
    )
    if lag is None:
        findings.append(("warn", "无法判断落后多久", slow))
    elif lag > REPLICA_LAG_FAIL:
        findings.append(("fail", f"落后超过 {REPLICA_LAG_FAIL:g} 秒，报告与历史曲线明显过时", slow))
    elif lag > REPLICA_LAG_WARN:
        findings.append(("warn", f"落后超过 {REPLICA_LAG_WARN:g} 秒", slow))
    if not findings:
        return Check(key, title, "ok", f"已连接 {where}：主库的流复制副本，落后 {shown}")
    worst = max((s for s, _, _ in findings), key=_SEVERITY.__getitem__)
    return Check(
        key,
        title,
        worst,
        f"{where}（流复制副本，落后 {shown}）：" + "；".join(m for _, m, _ in findings),
        "；".join(f for _, _, f in findings),
    )
