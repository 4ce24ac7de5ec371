"""``coldchain doctor`` (issue #18): the real command, as an operator runs it, against the test
database and the local broker; the verdicts that cannot be staged on this machine (a skewed clock,
TimescaleDB's policies) through the functions that decide them, the policies' query inside the
WASM TimescaleDB."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import pytest
from dbhelp import as_runtime, execute
from oraclehelp import migration_steps, run_oracle

from coldchain import services
from coldchain.core import db, roles
from coldchain.doctor import Loaded, check_public_url, check_wechat, load_tolerant
from coldchain.doctor_db import EXPECTED_POLICIES, POLICIES_SQL, clock_verdict, policy_verdict
from coldchain.doctor_report import SYMBOLS, secrets_of

PASSWORD = "Doct0r-pa55-nobody-may-see"
ROBOT_KEY = "robot-key-0a1b2c3d4e5f"
ALLOWED_ROBOT = f"https://qyapi.weixin.qq.com/cgi-bin/webhook/send?key={ROBOT_KEY}"


def _doctor(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("COLDCHAIN_")}
    proc = subprocess.run(
        [sys.executable, "-m", "coldchain.cli", "doctor", *args],
        env={**clean, **env},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    everything = proc.stdout + proc.stderr
    assert "Traceback" not in everything, everything
    for secret in (PASSWORD, PASSWORD.replace("-", "%2D"), ROBOT_KEY):
        assert secret not in everything, everything
    return proc


def _lines(proc: subprocess.CompletedProcess[str]) -> dict[str, str]:
    """Each check's line by its title (the text before the first colon, after the symbol)."""
    found: dict[str, str] = {}
    for line in proc.stdout.splitlines()[:-1]:
        symbol, _, rest = line.partition(" ")
        assert symbol in SYMBOLS.values(), line
        found[rest.split("：", 1)[0]] = line
    assert proc.stdout.splitlines()[-1].startswith("共 "), proc.stdout
    return found


def _with_password(url: str, password: str) -> str:
    """``url`` with ``password`` added to its user (the test server trusts local connections)."""
    parts = urlsplit(url)
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit((parts.scheme, f"{parts.username}:{password}@{host}", parts.path, parts.query, ""))


def _runtime(db_url: str) -> str:
    """The runtime login's URL, carrying a password (the test server trusts local connections,
    so it connects all the same; the password must still never be printed)."""
    as_runtime(db_url)
    return roles.with_role(db_url, roles.DEFAULT_RUNTIME_LOGIN, PASSWORD)


def _env(db_url: str, broker: services.Started, **extra: str) -> dict[str, str]:
    return {"COLDCHAIN_DATABASE_URL": _runtime(db_url), "COLDCHAIN_MQTT_URL": broker.url, **extra}


def test_a_migrated_database_as_the_runtime_role_with_the_local_broker_is_all_clear(
    db_url: str, mqtt_broker: services.Started
) -> None:
    owner = _with_password(db_url, PASSWORD.replace("-", "%2D"))
    proc = _doctor(_env(db_url, mqtt_broker, COLDCHAIN_OWNER_DATABASE_URL=owner))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    lines = _lines(proc)
    for title in ("设置", "数据库（运行角色）", "数据库（属主）", "迁移", "存储路径", "运行角色权限", "MQTT 代理"):
        assert lines[title].startswith("✓ "), lines[title]
    # Nothing fails or warns: the default public URL is on loopback (fine for a test), the
    # TimescaleDB policies do not apply to the plain path this server has.
    assert not [line for line in lines.values() if line[0] in "✗!"], proc.stdout
    assert "coldchain_app：coldchain_runtime 成员" in lines["运行角色权限"]
    assert "MQTT CONNECT 成功" in lines["MQTT 代理"]
    assert "本机地址" in lines["公开地址"]
    assert "TimeZone=" in lines["时区"] and "Asia/Shanghai" in lines["时区"]
    assert lines["时钟"].startswith("✓ ")
    assert proc.stdout.splitlines()[-1].endswith("未发现必须修复的问题")


def test_the_owner_as_the_services_url_fails_the_privilege_check_with_the_fix(
    db_url: str, mqtt_broker: services.Started
) -> None:
    proc = _doctor({"COLDCHAIN_DATABASE_URL": db_url, "COLDCHAIN_MQTT_URL": mqtt_broker.url})
    assert proc.returncode == 1
    line = _lines(proc)["运行角色权限"]
    assert line.startswith("✗ ") and "超级用户" in line
    assert "修复：以属主运行 coldchain db runtime-login" in line and "COLDCHAIN_OWNER_DATABASE_URL" in line


def test_an_unmigrated_database_fails_the_migration_check(empty_db: str, mqtt_broker: services.Started) -> None:
    proc = _doctor(_env(empty_db, mqtt_broker))
    assert proc.returncode == 1
    lines = _lines(proc)
    assert lines["迁移"].startswith("✗ 迁移：数据库尚未迁移")
    assert "修复：以属主身份（设置 COLDCHAIN_OWNER_DATABASE_URL）运行 coldchain db migrate" in lines["迁移"]
    assert lines["存储路径"].startswith("– ")


def test_a_closed_broker_port_fails_with_the_reason_and_no_password(db_url: str) -> None:
    port = services.free_port()
    env = {
        "COLDCHAIN_DATABASE_URL": _runtime(db_url),
        "COLDCHAIN_MQTT_URL": f"mqtt://doctor:{PASSWORD}@127.0.0.1:{port}",
    }
    proc = _doctor(env)
    assert proc.returncode == 1
    line = _lines(proc)["MQTT 代理"]
    assert line.startswith(f"✗ MQTT 代理：无法连接 mqtt://127.0.0.1:{port}（连接被拒绝")
    assert line.endswith("相关设置：COLDCHAIN_MQTT_URL")


def test_a_closed_database_port_fails_and_the_checks_that_need_it_are_not_run(mqtt_broker: services.Started) -> None:
    port = services.free_port()
    url = f"postgresql://coldchain_app:{PASSWORD}@127.0.0.1:{port}/coldchain"
    proc = _doctor({"COLDCHAIN_DATABASE_URL": url, "COLDCHAIN_MQTT_URL": mqtt_broker.url})
    assert proc.returncode == 1
    lines = _lines(proc)
    assert lines["数据库（运行角色）"].startswith(
        f"✗ 数据库（运行角色）：无法连接 postgresql://coldchain_app@127.0.0.1:{port}/coldchain（连接被拒绝"
    )
    assert lines["数据库（运行角色）"].endswith("相关设置：COLDCHAIN_DATABASE_URL")
    for title in ("迁移", "存储路径", "运行角色权限", "通知去处", "时钟"):
        assert lines[title] == f"– {title}：未检查：数据库连接失败"
    assert lines["MQTT 代理"].startswith("✓ ")


def test_bad_server_addresses_are_findings_of_their_checks_and_hide_their_passwords() -> None:
    """A setting the services would refuse at start stops nothing here: each is told on the line
    of the server it names (the MQTT refusal quotes the URL it got without user or password)."""
    env = {
        "COLDCHAIN_DATABASE_URL": f"mysql://app:{PASSWORD}@db.example:3306/cc",
        "COLDCHAIN_MQTT_URL": f"tcp://doctor:{PASSWORD}@broker.example:8883",
    }
    proc = _doctor(env)
    assert proc.returncode == 1
    lines = _lines(proc)
    assert lines["设置"].startswith("✓ ")
    assert lines["数据库（运行角色）"].startswith(
        "✗ 数据库（运行角色）：COLDCHAIN_DATABASE_URL 应以 postgresql:// 开头"
    )
    assert lines["迁移"] == "– 迁移：未检查：未设置可用的 COLDCHAIN_DATABASE_URL"
    assert lines["MQTT 代理"].startswith("✗ MQTT 代理：COLDCHAIN_MQTT_URL 格式应为 mqtt://主机:端口")
    assert "tcp://broker.example:8883" in lines["MQTT 代理"]


def test_a_fallback_robot_on_a_host_not_on_the_allowlist_fails_and_its_key_is_hidden(
    db_url: str, mqtt_broker: services.Started
) -> None:
    """The settings refuse such a URL (every service would stop at start); the doctor reports it
    with the other findings instead of stopping."""
    robot = f"https://robots.example.com/send?key={ROBOT_KEY}"
    proc = _doctor(_env(db_url, mqtt_broker, COLDCHAIN_WECOM_WEBHOOK_URL=robot))
    assert proc.returncode == 1
    lines = _lines(proc)
    line = lines["兜底机器人"]
    assert line.startswith("✗ 兜底机器人：COLDCHAIN_WECOM_WEBHOOK_URL https://robots.example.com/send?key=*** 不能使用")
    assert "robots.example.com 不在允许外发的主机名单中" in line and "COLDCHAIN_OUTBOUND_HOSTS" in line
    assert lines["设置"].startswith("✓ ")  # told once, by the check it belongs to
    assert lines["迁移"].startswith("✓ ")  # and the rest still ran


def _unit_with_a_responsible(owner_url: str) -> None:
    execute(
        owner_url,
        """INSERT INTO units (code, name, level) VALUES ('6100000000', '陕西省疾病预防控制中心', 'province');
           INSERT INTO users (username, real_name, unit_id, role)
                SELECT 'sa_doctor', '张医生', id, 'system_admin' FROM units WHERE code = '6100000000';
           INSERT INTO unit_responsibles (unit_id, level, user_id)
                SELECT u.unit_id, 1, u.id FROM users u WHERE u.username = 'sa_doctor';""",
    )


def test_units_whose_alarms_reach_nobody_are_counted(db_url: str, mqtt_broker: services.Started) -> None:
    _unit_with_a_responsible(db_url)
    alone = _lines(_doctor(_env(db_url, mqtt_broker)))["通知去处"]
    assert alone.startswith("✗ 通知去处：1 个单位有负责人，但没有通知去处，也没有兜底机器人（如 6100000000 陕西省")
    assert "修复：为这些单位配置通知去处" in alone

    with_fallback = _doctor(_env(db_url, mqtt_broker, COLDCHAIN_WECOM_WEBHOOK_URL=ALLOWED_ROBOT))
    assert with_fallback.returncode == 0, with_fallback.stdout
    lines = _lines(with_fallback)
    robot = "https://qyapi.weixin.qq.com/cgi-bin/webhook/send?key=***"
    assert lines["兜底机器人"] == f"✓ 兜底机器人：{robot} 符合外发白名单"
    assert lines["通知去处"].startswith("✓ 通知去处：1 个单位未配置通知去处，其报警发到兜底机器人")


def test_a_saved_route_the_allowlist_no_longer_allows_fails(db_url: str, mqtt_broker: services.Started) -> None:
    """Routes are checked when saved; a host taken off COLDCHAIN_OUTBOUND_HOSTS later would make
    every notification to it refused."""
    _unit_with_a_responsible(db_url)
    with db.connect(db_url, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO notification_routes (unit_id, level, channel, url) SELECT id, 1, 'wecom', %s FROM units",
            (f"https://old-robots.example.com/send?key={ROBOT_KEY}",),
        )
    line = _lines(_doctor(_env(db_url, mqtt_broker)))["通知去处"]
    assert line.startswith("✗ 通知去处：1 条已保存的通知去处不符合当前外发白名单（6100000000 1 级")
    assert "old-robots.example.com/send?key=***" in line


def test_json_carries_the_same_verdicts_as_the_text(db_url: str, mqtt_broker: services.Started) -> None:
    env = {
        "COLDCHAIN_DATABASE_URL": _with_password(db_url, PASSWORD),
        "COLDCHAIN_MQTT_URL": f"mqtt://127.0.0.1:{services.free_port()}",
        "COLDCHAIN_PUBLIC_URL": "http://coldchain.example.cn/",
        "COLDCHAIN_WECHAT_APPID": "wx0123456789",
        "COLDCHAIN_WECHAT_SECRET": PASSWORD,
    }
    text, machine = _doctor(env), _doctor(env, "--json")
    assert text.returncode == machine.returncode == 1
    document: dict[str, Any] = json.loads(machine.stdout)
    assert document["ok"] is False and document["exit_code"] == 1
    checks = document["checks"]
    text_lines = text.stdout.splitlines()[:-1]
    assert len(checks) == len(text_lines)
    for check, line in zip(checks, text_lines, strict=True):
        assert line.startswith(f"{check['symbol']} {check['title']}：{check['message']}")
        assert check["symbol"] == SYMBOLS[check["status"]]
        assert (check["fix"] is not None) == (check["status"] in ("warn", "fail"))
        if check["status"] in ("warn", "fail"):
            assert line.endswith(f" → 修复：{check['fix']}")
    by_key = {c["key"]: c["status"] for c in checks}
    assert by_key["privileges"] == by_key["broker"] == "fail"
    assert by_key["public_url"] == "warn" and by_key["wechat"] == "warn"
    assert by_key["migrations"] == "ok"


# --- the verdicts, without the servers that would stage them -------------------------------------


def test_clock_skew_warns_over_two_seconds_and_fails_over_thirty() -> None:
    assert clock_verdict(0.4, 0.002).status == "ok"
    assert clock_verdict(-1.99, 0.002).status == "ok"
    late = clock_verdict(-5.0, 0.002)
    assert (late.status, late.message) == ("warn", "数据库时钟比本机慢 5.0 秒（往返 2 毫秒）")
    assert late.fix and "NTP" in late.fix
    assert clock_verdict(31.0, 0.002).status == "fail"


def _loaded(**env: str) -> Loaded:
    return load_tolerant({f"COLDCHAIN_{k}": v for k, v in env.items()})


def test_a_bad_setting_is_one_finding_and_the_rest_is_read() -> None:
    loaded = _loaded(API_PORT="abc", PUBLIC_URL="ftp://x", MQTT_URL="mqtt://127.0.0.1:1884")
    assert set(loaded.problems) == {"COLDCHAIN_API_PORT", "COLDCHAIN_PUBLIC_URL"}
    assert loaded.settings.mqtt_url == "mqtt://127.0.0.1:1884"
    assert check_public_url({}, loaded).status == "fail"


@pytest.mark.parametrize(
    ("url", "secure", "status"),
    [
        ("http://127.0.0.1:8000", "false", "ok"),
        ("http://localhost:8000", "false", "ok"),
        ("http://10.1.2.3", "false", "warn"),
        ("https://coldchain.example.cn", "false", "warn"),
        ("https://coldchain.example.cn/", "true", "warn"),
        ("https://coldchain.example.cn", "true", "ok"),
    ],
)
def test_the_public_url_is_https_in_production_and_has_no_trailing_slash(url: str, secure: str, status: str) -> None:
    env = {"COLDCHAIN_PUBLIC_URL": url, "COLDCHAIN_COOKIE_SECURE": secure}
    check = check_public_url(env, load_tolerant(env))
    assert check.status == status, check
    assert (check.fix is not None) == (status != "ok")


def test_wechat_settings_are_complete_or_absent() -> None:
    assert check_wechat(_loaded()).status == "ok"
    full = _loaded(WECHAT_APPID="wx1", WECHAT_SECRET="s3cret-value", WECHAT_TEMPLATE_ID="tpl")
    assert check_wechat(full).status == "ok" and "s3cret-value" not in check_wechat(full).message
    assert check_wechat(_loaded(WECHAT_APPID="wx1", WECHAT_SECRET="s3cret-value")).status == "warn"
    partial = check_wechat(_loaded(WECHAT_TEMPLATE_ID="tpl"))
    assert partial.status == "fail" and "缺少 COLDCHAIN_WECHAT_APPID、COLDCHAIN_WECHAT_SECRET" in partial.message


def test_every_secret_of_the_settings_is_collected_for_masking() -> None:
    secrets = secrets_of(
        {
            "COLDCHAIN_DATABASE_URL": "postgresql://app:p%40ss-word@db:5432/cc",
            "COLDCHAIN_WECOM_WEBHOOK_URL": ALLOWED_ROBOT,
            "COLDCHAIN_WECHAT_SECRET": "wechat-secret",
            "PATH": "/usr/bin",
        }
    )
    assert {"p%40ss-word", "p@ss-word", ROBOT_KEY, "wechat-secret"} <= set(secrets)


def test_policy_verdicts() -> None:
    complete = [(i, proc, target, True) for i, (proc, target) in enumerate(EXPECTED_POLICIES, start=1000)]
    assert policy_verdict(complete).status == "ok"
    missing = policy_verdict(complete[:-1])
    assert missing.status == "fail" and missing.message == "缺少策略：保留 gateway_status"
    assert missing.fix == "以属主身份执行：SELECT add_retention_policy('gateway_status', INTERVAL '8 years')"
    paused = policy_verdict([*complete[:-1], (1005, "policy_retention", "gateway_status", False)])
    assert paused.status == "warn" and paused.fix == "以属主身份执行：SELECT alter_job(1005, scheduled => true)"


@pytest.mark.oracle
def test_the_policy_query_finds_what_the_timescaledb_path_creates() -> None:
    """POLICIES_SQL inside the WASM TimescaleDB, after every migration: all six policies found,
    the continuous aggregates' named by their views; a policy removed is reported missing."""

    def rows(found: list[dict[str, Any]]) -> list[tuple[int, str, str, bool]]:
        return [(int(r["job_id"]), r["proc_name"], r["target"], bool(r["scheduled"])) for r in found]

    results = run_oracle(
        [
            *migration_steps(),
            {"name": "before", "sql": POLICIES_SQL},
            {"sql": "SELECT remove_retention_policy('gateway_status')"},
            {"name": "after", "sql": POLICIES_SQL},
        ]
    )
    before = rows(results["before"])
    assert {(p, t) for _, p, t, _ in before} == set(EXPECTED_POLICIES)
    assert policy_verdict(before).status == "ok"
    after = policy_verdict(rows(results["after"]))
    assert (after.status, after.message) == ("fail", "缺少策略：保留 gateway_status")
