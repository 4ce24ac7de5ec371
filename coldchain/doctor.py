"""``coldchain doctor``: check a deployment and say, in Chinese, what is wrong and how to fix it.

Why one command: a province's installation fails in ways the services only show later or
elsewhere — a broker address that is wrong shows as a reconnect warning every few seconds, the
owner's URL given to the services only as a start-up warning, a robot refused by the allowlist
only when the first alarm is not delivered, a skewed clock as alarms escalating too early. The
doctor asks each server once, the way the services would, and reports every finding on one line
with its fix, so an operator (or a monitoring script, with ``--json``) sees them all at once.

Each check is a function returning a :class:`Check`; none writes, none starts a server. Here are
the checks of the settings and the broker; the database's are in :mod:`coldchain.doctor_db`;
:mod:`coldchain.doctor_report` runs them all and prints the text or JSON form of the one list,
where no secret of the settings reaches either.
"""

from __future__ import annotations

import asyncio
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal
from urllib.parse import urlsplit

from coldchain.core.outbound import OutboundRefused, check_url, mask_url, policy_of
from coldchain.core.settings import MqttAddress, Settings, SettingsError, load_settings
from coldchain.unreachable import Unreachable, failure

Status = Literal["ok", "warn", "fail", "skip"]

#: How long the doctor waits for a server before calling it unreachable (a service waits longer).
TIMEOUT = 5.0
# Setting problems reported by the check that covers the setting, not by the settings line.
_COVERED = {
    "COLDCHAIN_DATABASE_URL": "database",
    "COLDCHAIN_OWNER_DATABASE_URL": "owner_database",
    "COLDCHAIN_READ_DATABASE_URL": "read_database",
    "COLDCHAIN_MQTT_URL": "broker",
    "COLDCHAIN_WECOM_WEBHOOK_URL": "fallback_robot",
    "COLDCHAIN_WECHAT_API_BASE": "wechat",
    "COLDCHAIN_PUBLIC_URL": "public_url",
}
_VARIABLE = re.compile(r"COLDCHAIN_[A-Z_]+")


@dataclass(frozen=True)
class Check:
    """One finding: ``key`` is stable for ``--json``; ``fix`` is set for every warn and fail."""

    key: str
    title: str
    status: Status
    message: str
    fix: str | None = None


@dataclass(frozen=True)
class Loaded:
    """The settings as the services would read them, with each bad variable left out (and kept
    in ``problems``, variable → message) so that one typo does not hide every other finding."""

    settings: Settings
    problems: dict[str, str]


def load_tolerant(environ: Mapping[str, str]) -> Loaded:
    """Read the settings as :func:`load_settings` does, leaving out each variable it refuses."""
    env = dict(environ)
    problems: dict[str, str] = {}
    while True:
        try:
            return Loaded(load_settings(env), problems)
        except SettingsError as exc:
            named = [n for n in _VARIABLE.findall(str(exc)) if n in env and n not in problems]
            if not named:
                raise
            problems[named[0]] = str(exc)
            del env[named[0]]


def unreachable_check(key: str, title: str, problem: Unreachable) -> Check:
    return Check(
        key,
        title,
        "fail",
        f"无法连接 {problem.address}（{problem.reason}）",
        f"{problem.hint}；相关设置：{problem.variable}",
    )


# --- settings --------------------------------------------------------------------------------------


def check_settings(loaded: Loaded) -> Check:
    problems = [m for v, m in loaded.problems.items() if v not in _COVERED]
    if not problems:
        return Check("settings", "设置", "ok", "COLDCHAIN_* 设置均可读取")
    return Check(
        "settings",
        "设置",
        "fail",
        "；".join(problems),
        "改正这些设置（docs/operations.md「Settings」）；服务遇到无效设置会拒绝启动。其余检查按该设置未设置进行",
    )


# --- the broker ------------------------------------------------------------------------------------


def mqtt_client_options(mqtt: MqttAddress) -> dict[str, Any]:
    """aiomqtt's connection options for the parsed ``COLDCHAIN_MQTT_URL``: user, password and TLS
    (CA bundle, client certificate) exactly as the ingester connects, so that the check proves
    what the ingester will meet."""
    return mqtt.client_options()


async def _mqtt_connect(mqtt: MqttAddress, seconds: float) -> None:
    import aiomqtt

    # An id of its own: connecting as the ingester's id would take over (end) its session.
    client = aiomqtt.Client(
        mqtt.host,
        mqtt.port,
        identifier=f"coldchain-doctor-{os.getpid()}",
        timeout=seconds,
        keepalive=max(5, int(seconds)),
        **mqtt_client_options(mqtt),
    )
    async with asyncio.timeout(seconds), client:
        pass


def broker_problem(mqtt: MqttAddress, timeout: float = TIMEOUT) -> Unreachable | None:
    """A real MQTT CONNECT (and DISCONNECT) — a TCP port that answers may still be no broker, or
    one that refuses these credentials."""
    import aiomqtt
    from aiomqtt.exceptions import MqttConnectError

    secrets = [s for s in (getattr(mqtt, "password", None),) if s]
    try:
        asyncio.run(_mqtt_connect(mqtt, timeout))
        return None
    except TimeoutError:
        detail = "timed out"
    except MqttConnectError as exc:  # CONNACK with a refusal: the broker answered
        return Unreachable(
            "MQTT 代理",
            mqtt.url,
            f"代理拒绝连接：{exc}",
            "请确认用户名、密码与代理的访问控制设置",
            "COLDCHAIN_MQTT_URL",
            tuple(secrets),
        )
    except (aiomqtt.MqttError, OSError) as exc:
        detail = str(exc)
    return failure("MQTT 代理", mqtt.url, detail, "COLDCHAIN_MQTT_URL", secrets)


def check_broker(mqtt: MqttAddress | None, timeout: float = TIMEOUT, problem: str | None = None) -> Check:
    """``problem``: why the settings could not read ``COLDCHAIN_MQTT_URL``, when they could not."""
    key, title = "broker", "MQTT 代理"
    if problem is not None:
        return Check(
            key, title, "fail", problem, "设为 mqtt://主机:端口 或 mqtts://主机:8883，如 mqtt://127.0.0.1:1883"
        )
    if mqtt is None:
        return Check(
            key,
            title,
            "fail",
            "未设置 COLDCHAIN_MQTT_URL",
            "设为代理地址，如 mqtt://127.0.0.1:1883（采集服务 coldchain ingest 需要）",
        )
    if (failed := broker_problem(mqtt, timeout)) is not None:
        return unreachable_check(key, title, failed)
    return Check(key, title, "ok", f"已连接 {mqtt.url}（MQTT CONNECT 成功）")


# --- notifications -------------------------------------------------------------------------------


def check_fallback_robot(environ: Mapping[str, str], settings: Settings) -> Check:
    """Read from the environment itself: the settings drop a URL the allowlist refuses."""
    key, title = "fallback_robot", "兜底机器人"
    raw = environ.get("COLDCHAIN_WECOM_WEBHOOK_URL", "").strip()
    if not raw:
        return Check(key, title, "ok", "未设置 COLDCHAIN_WECOM_WEBHOOK_URL（未配置企业微信机器人的单位没有兜底去处）")
    try:
        check_url(raw, policy_of(settings))
    except OutboundRefused as exc:
        return Check(
            key,
            title,
            "fail",
            f"COLDCHAIN_WECOM_WEBHOOK_URL {mask_url(raw)} 不能使用：{exc}",
            "改用企业微信群机器人地址 https://qyapi.weixin.qq.com/cgi-bin/webhook/send?key=…，"
            "或把该主机（须为 https 公网地址）加入 COLDCHAIN_OUTBOUND_HOSTS",
        )
    return Check(key, title, "ok", f"{mask_url(raw)} 符合外发白名单")


def check_wechat(loaded: Loaded) -> Check:
    """Sign-in needs the app id and secret; messages to people's WeChat need the template too."""
    key, title = "wechat", "微信公众号"
    s = loaded.settings
    values = {
        "COLDCHAIN_WECHAT_APPID": s.wechat_appid,
        "COLDCHAIN_WECHAT_SECRET": s.wechat_secret,
        "COLDCHAIN_WECHAT_TEMPLATE_ID": s.wechat_template_id,
    }
    present = [n for n, v in values.items() if v]
    if not present:
        return Check(key, title, "ok", "未配置（微信登录与微信消息均关闭）")
    if (problem := loaded.problems.get("COLDCHAIN_WECHAT_API_BASE")) is not None:
        return Check(
            key, title, "fail", problem, "改正 COLDCHAIN_WECHAT_API_BASE，或删除它以使用 https://api.weixin.qq.com"
        )
    if len(present) == len(values):
        return Check(key, title, "ok", f"已配置：公众号 {s.wechat_appid}，消息模板 {s.wechat_template_id}")
    missing = [n for n in values if n not in present]
    if missing == ["COLDCHAIN_WECHAT_TEMPLATE_ID"]:
        return Check(
            key,
            title,
            "warn",
            "已配置微信登录，但未设置消息模板：报警不发到负责人的微信",
            "设置 COLDCHAIN_WECHAT_TEMPLATE_ID（公众号后台的模板 ID）；有意不发微信消息时可忽略",
        )
    return Check(
        key,
        title,
        "fail",
        f"微信设置不完整：已设置 {'、'.join(present)}，缺少 {'、'.join(missing)}",
        "补齐 COLDCHAIN_WECHAT_APPID、COLDCHAIN_WECHAT_SECRET、COLDCHAIN_WECHAT_TEMPLATE_ID，或全部删除以关闭微信",
    )


# --- the public URL --------------------------------------------------------------------------------


def _loopback(host: str) -> bool:
    return host == "localhost" or host.startswith("127.") or host == "::1"


def check_public_url(environ: Mapping[str, str], loaded: Loaded) -> Check:
    """Message and set-up links are built from it; a set-up link carries a one-time token."""
    key, title = "public_url", "公开地址"
    if (problem := loaded.problems.get("COLDCHAIN_PUBLIC_URL")) is not None:
        return Check(key, title, "fail", problem, "设为 https://<域名>，如 https://coldchain.example.cn")
    raw = environ.get("COLDCHAIN_PUBLIC_URL", "").strip()
    url = raw or loaded.settings.public_url
    parts = urlsplit(url)
    shown = mask_url(url) + ("" if raw else "（未设置，默认值）")
    if "@" in parts.netloc:
        return Check(key, title, "fail", f"{shown} 含有用户名或密码", "去掉地址中的用户名和密码")
    if raw.endswith("/"):
        return Check(
            key, title, "warn", f"{shown} 以 / 结尾", "去掉末尾的 /（链接按 <地址>/setup-password?token=… 拼接）"
        )
    if parts.scheme == "http" and _loopback(parts.hostname or ""):
        return Check(key, title, "ok", f"{shown}：本机地址，仅适合演示和测试（生产部署用 https://<域名>）")
    if parts.scheme == "http":
        return Check(
            key,
            title,
            "warn",
            f"{shown} 使用 http：报警链接和设置密码链接（含一次性令牌）将以明文传输",
            "在 nginx 后启用 HTTPS（deploy/nginx/coldchain.conf），设 COLDCHAIN_PUBLIC_URL=https://<域名> "
            "与 COLDCHAIN_COOKIE_SECURE=true",
        )
    if not loaded.settings.cookie_secure:
        return Check(
            key, title, "warn", f"{shown} 为 https，但 Cookie 未标记 Secure", "设 COLDCHAIN_COOKIE_SECURE=true"
        )
    return Check(key, title, "ok", f"{shown}（https）")
