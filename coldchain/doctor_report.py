"""``coldchain doctor`` run and shown: every check in order, then a line per check for a person
or JSON for a machine.

Why apart from the checks (:mod:`coldchain.doctor`, :mod:`coldchain.doctor_db`): the two forms
must carry the same verdicts, so both are made from the one list of
:class:`~coldchain.doctor.Check`; and both pass through
:func:`redact`, the last guard that no password, robot key or secret of the settings is printed,
whatever a check or a server's error message happened to quote.
"""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import Callable, Mapping, Sequence
from urllib.parse import unquote, urlsplit

import psycopg

from coldchain.core.settings import PREFIX, SettingsError
from coldchain.doctor import (
    TIMEOUT,
    Check,
    check_broker,
    check_fallback_robot,
    check_public_url,
    check_settings,
    check_wechat,
    load_tolerant,
)
from coldchain.doctor_db import (
    OWNER_URL,
    READ_URL,
    RUNTIME_URL,
    check_clock,
    check_database,
    check_migrations,
    check_policies,
    check_privileges,
    check_read_database,
    check_routes,
    check_storage,
    check_timezones,
)
from coldchain.unreachable import explain, hide, url_passwords

SYMBOLS = {"ok": "✓", "warn": "!", "fail": "✗", "skip": "–"}
NAMES = {"ok": "通过", "warn": "警告", "fail": "失败", "skip": "不适用或未检查"}
# Settings whose whole value is a secret.
_SECRET_SETTINGS = ("COLDCHAIN_WECHAT_SECRET", "COLDCHAIN_LINK_SECRET", "COLDCHAIN_MQTT_PASSWORD")


def secrets_of(environ: Mapping[str, str]) -> list[str]:
    """Everything in the ``COLDCHAIN_*`` settings that must never be printed: the passwords of
    URLs (as written and decoded), query values (a WeCom robot's ``key``) and secret settings;
    longest first, so a secret that contains another is hidden whole."""
    found: set[str] = set()
    for name, value in environ.items():
        value = value.strip()
        if not name.startswith(PREFIX) or not value:
            continue
        if name in _SECRET_SETTINGS:
            found.add(value)
        found.update(url_passwords(value))
        try:
            query = urlsplit(value).query
        except ValueError:
            continue
        for part in query.split("&"):
            secret = part.partition("=")[2]
            found.update(s for s in (secret, unquote(secret)) if len(s) >= 4)
    return sorted(found, key=len, reverse=True)


def redact(text: str, secrets: Sequence[str]) -> str:
    return hide(text, list(secrets))


def _guarded(key: str, title: str, check: Callable[[], Check]) -> Check:
    """A check that fails unexpectedly is a finding, never a traceback (nor a URL in one)."""
    try:
        return check()
    except psycopg.OperationalError as exc:
        reason, hint = explain(str(exc))
        return Check(key, title, "fail", f"检查时数据库连接中断（{reason}）", hint)
    except Exception as exc:
        return Check(key, title, "fail", f"检查时出错：{type(exc).__name__}：{exc}", "请把这一行报告给系统维护人员")


def run_checks(environ: Mapping[str, str] | None = None, *, timeout: float = TIMEOUT) -> list[Check]:
    """Every check, in the order an operator fixes things: settings, database, schema, roles,
    read replica, broker, notifications, links, time."""
    env = os.environ if environ is None else environ
    try:
        loaded = load_tolerant(env)
    except SettingsError as exc:
        return [Check("settings", "设置", "fail", str(exc), "改正这一设置（docs/operations.md「Settings」）")]
    settings, problems = loaded.settings, loaded.problems
    checks = [
        check_settings(loaded),
        _guarded(
            "database", "数据库（运行角色）", lambda: check_database(settings, RUNTIME_URL, problems.get(RUNTIME_URL))
        ),
        _guarded(
            "owner_database", "数据库（属主）", lambda: check_database(settings, OWNER_URL, problems.get(OWNER_URL))
        ),
    ]
    url = settings.database_url if checks[1].status == "ok" else None
    why_not = "未检查：数据库连接失败" if settings.database_url else "未检查：未设置可用的 COLDCHAIN_DATABASE_URL"

    def on_database(key: str, title: str, check: Callable[[str], Check]) -> Check:
        if url is None:
            return Check(key, title, "skip", why_not)
        reached = url
        return _guarded(key, title, lambda: check(reached))

    checks.append(on_database("migrations", "迁移", check_migrations))
    checks.append(on_database("storage", "存储路径", lambda u: check_storage(u, settings)))
    checks.append(on_database("timescaledb_policies", "TimescaleDB 策略", check_policies))
    checks.append(on_database("privileges", "运行角色权限", check_privileges))
    checks.append(
        _guarded("read_database", "只读副本", lambda: check_read_database(settings, url, problems.get(READ_URL)))
    )
    mqtt_problem = problems.get("COLDCHAIN_MQTT_URL")
    checks.append(_guarded("broker", "MQTT 代理", lambda: check_broker(settings.mqtt, timeout, mqtt_problem)))
    fallback = _guarded("fallback_robot", "兜底机器人", lambda: check_fallback_robot(env, settings))
    checks.append(fallback)
    fallback_ok = fallback.status == "ok" and bool(settings.wecom_webhook_url)
    checks.append(on_database("notification_routes", "通知去处", lambda u: check_routes(u, settings, fallback_ok)))
    checks.append(_guarded("wechat", "微信公众号", lambda: check_wechat(loaded)))
    checks.append(_guarded("public_url", "公开地址", lambda: check_public_url(env, loaded)))
    checks.append(_guarded("timezone", "时区", lambda: check_timezones(url)))
    checks.append(on_database("clock", "时钟", check_clock))
    return checks


def exit_code(checks: Sequence[Check]) -> int:
    """0 when nothing fails (warnings allowed), 1 otherwise."""
    return 1 if any(c.status == "fail" for c in checks) else 0


def render_text(checks: Sequence[Check], secrets: Sequence[str] = ()) -> str:
    """One line per check: symbol, title, finding, and for a warning or a failure its fix."""
    lines = []
    for c in checks:
        line = f"{SYMBOLS[c.status]} {c.title}：{c.message}"
        if c.fix and c.status in ("warn", "fail"):
            line += f" → 修复：{c.fix}"
        lines.append(line)
    counts = "，".join(f"{NAMES[s]} {n}" for s in SYMBOLS if (n := sum(c.status == s for c in checks)))
    verdict = "有需要修复的问题" if exit_code(checks) else "未发现必须修复的问题"
    lines.append(f"共 {len(checks)} 项检查：{counts}。{verdict}")
    return redact("\n".join(lines), secrets)


def render_json(checks: Sequence[Check], secrets: Sequence[str] = ()) -> str:
    """The same verdicts for a monitoring script: ``status`` is ok / warn / fail / skip."""
    document = {
        "ok": exit_code(checks) == 0,
        "exit_code": exit_code(checks),
        "checks": [
            {
                "key": c.key,
                "title": c.title,
                "status": c.status,
                "symbol": SYMBOLS[c.status],
                # Each text is redacted before encoding: JSON escapes would hide a secret from
                # a search in the encoded document, not from its reader.
                "message": redact(c.message, secrets),
                "fix": redact(c.fix, secrets) if c.fix else None,
            }
            for c in checks
        ],
    }
    return json.dumps(document, ensure_ascii=False, indent=2)


def configure(p: argparse.ArgumentParser) -> None:
    """The ``doctor`` arguments (registered by :func:`coldchain.cli.build_parser`)."""
    p.add_argument("--json", action="store_true", help="以 JSON 输出（供监控脚本读取）")


def cmd_doctor(args: argparse.Namespace, environ: Mapping[str, str] | None = None) -> int:
    """Run every check and print the findings. Called by :func:`coldchain.cli.main` before the
    settings are loaded: a bad setting is one of the findings, not a reason to stop."""
    env = os.environ if environ is None else environ
    checks = run_checks(env)
    secrets = secrets_of(env)
    print(render_json(checks, secrets) if args.json else render_text(checks, secrets), flush=True)
    return exit_code(checks)
