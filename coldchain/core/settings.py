"""Settings, read from ``COLDCHAIN_*`` environment variables in this one place.

Every process (CLI, ingester, scheduler, API, tests) builds its configuration with
:func:`load_settings`, so a variable means the same thing everywhere and a bad value
is refused at start-up, not halfway through a night of ingest.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit

from coldchain.core.outbound import DEFAULT_HOSTS, OutboundPolicy, OutboundRefused, check_url, mask_url, parse_hosts

TimescaleMode = Literal["auto", "require", "off"]
_TIMESCALE_MODES: tuple[TimescaleMode, ...] = ("auto", "require", "off")

PREFIX = "COLDCHAIN_"


class SettingsError(ValueError):
    """A ``COLDCHAIN_*`` variable has a value the system cannot use."""


@dataclass(frozen=True)
class MqttAddress:
    host: str
    port: int

    @property
    def url(self) -> str:
        return f"mqtt://{self.host}:{self.port}"


@dataclass(frozen=True)
class Settings:
    # None means "not configured": the run command then starts an embedded server.
    # database_url is the runtime role's (services); owner_database_url the owner's (migrations,
    # refreshing TimescaleDB's continuous aggregates by hand, loading the demo). Unset: the same
    # URL, and each service warns at start-up that it runs with more privileges than it needs.
    database_url: str | None = field(repr=False)  # may carry a password
    mqtt_url: str | None
    # auto: use TimescaleDB when the server offers the extension; require: refuse to
    # migrate without it; off: build the plain-PostgreSQL path even if it is offered.
    timescaledb: TimescaleMode
    # Where embedded servers keep their data between runs of the run command.
    state_dir: Path
    local_timezone: str
    # The ingester's MQTT client id: a restart with the same id resumes the same broker session.
    ingest_client_id: str = "coldchain-ingest"
    # When set, ingesters share the load through $share/<group>/…; None for a lone ingester.
    ingest_share_group: str | None = None
    # Port of the ingester's /healthz and /metrics (127.0.0.1); None: not served.
    ingest_health_port: int | None = None
    # The web API (``coldchain api``): where it listens, and how long a sign-in lasts.
    api_host: str = "127.0.0.1"
    api_port: int = 8000
    session_hours: int = 12
    token_hours: int = 24
    # Secure cookies need HTTPS; the embedded demo serves plain HTTP on 127.0.0.1.
    cookie_secure: bool = False
    # The WeChat official account (公众号) whose web authorisation gives staff's openids: sign-in
    # from WeChat's browser and the binding for alarm delivery (CM14, CM15). Unset: WeChat is off.
    wechat_appid: str | None = None
    wechat_secret: str | None = field(default=None, repr=False)  # secrets stay out of any repr / log
    wechat_api_base: str = "https://api.weixin.qq.com"
    # Alarms (issue #5): escalation timing (durations like 30m, 1h, 45s), delivery, links.
    escalation_steps: str = "30m,60m"
    reminder_interval: str = "60m"
    resolved_reminder_interval: str = "24h"
    wecom_webhook_url: str | None = field(default=None, repr=False)  # its key= is the robot's secret
    # Outbound requests (robots, webhooks, WeChat) go only over https to these hosts, never to an
    # internal address (coldchain/outbound.py); the loopback escape is for tests' fakes only.
    outbound_hosts: tuple[str, ...] = DEFAULT_HOSTS
    outbound_allow_insecure_loopback: bool = False
    wechat_template_id: str | None = None
    public_url: str = "http://127.0.0.1:8000"
    link_secret: str | None = field(default=None, repr=False)
    owner_database_url: str | None = field(default=None, repr=False)  # may carry a password

    @property
    def migration_url(self) -> str | None:
        """Where migrations and other owner work connect: the owner URL, else the one URL."""
        return self.owner_database_url or self.database_url

    @property
    def mqtt(self) -> MqttAddress | None:
        return parse_mqtt_url(self.mqtt_url) if self.mqtt_url else None


def parse_mqtt_url(url: str) -> MqttAddress:
    """Accept ``mqtt://host[:port]``; the port defaults to 1883."""
    parts = urlsplit(url)
    if parts.scheme != "mqtt" or not parts.hostname:
        raise SettingsError(f"COLDCHAIN_MQTT_URL 格式应为 mqtt://主机:端口，实际为 {url!r}")
    try:
        port = parts.port or 1883
    except ValueError as exc:
        raise SettingsError(f"COLDCHAIN_MQTT_URL 端口无效：{url!r}") from exc
    return MqttAddress(parts.hostname, port)


def load_settings(environ: Mapping[str, str] | None = None) -> Settings:
    env = os.environ if environ is None else environ

    def get(name: str) -> str | None:
        value = env.get(PREFIX + name, "").strip()
        return value or None

    database_url = get("DATABASE_URL")
    if database_url and not database_url.startswith(("postgresql://", "postgres://")):
        # The value is not echoed: a URL may carry a password.
        raise SettingsError("COLDCHAIN_DATABASE_URL 应以 postgresql:// 开头")
    owner_url = get("OWNER_DATABASE_URL")
    if owner_url and not owner_url.startswith(("postgresql://", "postgres://")):
        raise SettingsError("COLDCHAIN_OWNER_DATABASE_URL 应以 postgresql:// 开头")
    if owner_url and not database_url:
        raise SettingsError("设置了 COLDCHAIN_OWNER_DATABASE_URL 时，也须设置运行角色的 COLDCHAIN_DATABASE_URL")
    mqtt_url = get("MQTT_URL")
    if mqtt_url:
        parse_mqtt_url(mqtt_url)
    raw_mode = get("TIMESCALEDB") or "auto"
    mode: TimescaleMode | None = next((m for m in _TIMESCALE_MODES if m == raw_mode), None)
    if mode is None:
        raise SettingsError(f"COLDCHAIN_TIMESCALEDB 只能是 auto、require 或 off，实际为 {raw_mode!r}")
    state_dir = Path(get("STATE_DIR") or Path.cwd() / ".coldchain")
    health_port: int | None = None
    if raw_port := get("INGEST_HEALTH_PORT"):
        if not raw_port.isdigit() or not 0 < int(raw_port) < 65536:
            raise SettingsError(f"COLDCHAIN_INGEST_HEALTH_PORT 应为 1–65535 的端口号，实际为 {raw_port!r}")
        health_port = int(raw_port)
    api_port = _int_setting(get, "API_PORT", 8000, 1, 65535)
    session_hours = _int_setting(get, "SESSION_HOURS", 12, 1, 24 * 30)
    token_hours = _int_setting(get, "TOKEN_HOURS", 24, 1, 24 * 365)
    raw_secure = (get("COOKIE_SECURE") or "false").lower()
    if raw_secure not in ("true", "false", "1", "0"):
        raise SettingsError(f"COLDCHAIN_COOKIE_SECURE 只能是 true 或 false，实际为 {raw_secure!r}")
    try:
        outbound_hosts = parse_hosts(get("OUTBOUND_HOSTS") or ",".join(DEFAULT_HOSTS))
    except ValueError as exc:
        raise SettingsError(f"COLDCHAIN_OUTBOUND_HOSTS {exc}") from None
    raw_loopback = (get("OUTBOUND_ALLOW_INSECURE_LOOPBACK") or "false").lower()
    if raw_loopback not in ("true", "false", "1", "0"):
        raise SettingsError(f"COLDCHAIN_OUTBOUND_ALLOW_INSECURE_LOOPBACK 只能是 true 或 false，实际为 {raw_loopback!r}")
    outbound = OutboundPolicy(frozenset(outbound_hosts), raw_loopback in ("true", "1"))
    client_id = get("INGEST_CLIENT_ID") or "coldchain-ingest"
    share_group = get("INGEST_SHARE_GROUP")
    for name, value in (("INGEST_CLIENT_ID", client_id), ("INGEST_SHARE_GROUP", share_group)):
        if value is not None and (len(value) > 64 or any(c in value for c in "/+#$ ")):
            raise SettingsError(f"COLDCHAIN_{name} 不能含有 / + # $ 或空格，且不超过 64 个字符：{value!r}")
    return Settings(
        database_url=database_url,
        mqtt_url=mqtt_url,
        timescaledb=mode,
        state_dir=state_dir,
        local_timezone="Asia/Shanghai",
        ingest_client_id=client_id,
        ingest_share_group=share_group,
        ingest_health_port=health_port,
        api_host=get("API_HOST") or "127.0.0.1",
        api_port=api_port,
        session_hours=session_hours,
        token_hours=token_hours,
        cookie_secure=raw_secure in ("true", "1"),
        wechat_appid=get("WECHAT_APPID"),
        wechat_secret=get("WECHAT_SECRET"),
        wechat_api_base=(
            _outbound_url(get, "WECHAT_API_BASE", outbound, check=get("WECHAT_APPID") is not None)
            or "https://api.weixin.qq.com"
        ).rstrip("/"),
        escalation_steps=_durations(get, "ESCALATION_STEPS", "30m,60m"),
        reminder_interval=_durations(get, "REMINDER_INTERVAL", "60m", single=True),
        resolved_reminder_interval=_durations(get, "RESOLVED_REMINDER_INTERVAL", "24h", single=True),
        wecom_webhook_url=_outbound_url(get, "WECOM_WEBHOOK_URL", outbound),
        outbound_hosts=outbound_hosts,
        outbound_allow_insecure_loopback=outbound.allow_insecure_loopback,
        wechat_template_id=get("WECHAT_TEMPLATE_ID"),
        public_url=(_url(get, "PUBLIC_URL") or "http://127.0.0.1:8000").rstrip("/"),
        link_secret=get("LINK_SECRET"),
        owner_database_url=owner_url,
    )


_DURATION = re.compile(r"^[1-9][0-9]*(s|m|h|d)$")


def _durations(get: Callable[[str], str | None], name: str, default: str, *, single: bool = False) -> str:
    """Checked for shape here (so a typo stops start-up); alarms.escalation turns them into timedeltas."""
    raw = (get(name) or default).replace(" ", "")
    parts = raw.split(",")
    if (single and len(parts) != 1) or not all(_DURATION.match(p) for p in parts):
        what = "一个时长" if single else "逗号分隔的时长"
        raise SettingsError(f"COLDCHAIN_{name} 应为{what}（如 30m、1h、45s），实际为 {raw!r}")
    return raw


def _url(get: Callable[[str], str | None], name: str) -> str | None:
    raw = get(name)
    if raw is not None and not raw.startswith(("http://", "https://")):
        # Masked: the URL of a WeCom robot carries its key.
        raise SettingsError(f"COLDCHAIN_{name} 应以 http:// 或 https:// 开头，实际为 {mask_url(raw)!r}")
    return raw


def _outbound_url(
    get: Callable[[str], str | None], name: str, policy: OutboundPolicy, *, check: bool = True
) -> str | None:
    """A URL this system sends to: refused at start-up unless coldchain/outbound.py allows it
    (checked again, after DNS, at every request)."""
    raw = _url(get, name)
    if raw is not None and check:
        try:
            check_url(raw, policy)
        except OutboundRefused as exc:
            raise SettingsError(f"COLDCHAIN_{name}：{exc}") from None
    return raw


def _int_setting(get: Callable[[str], str | None], name: str, default: int, lo: int, hi: int) -> int:
    raw = get(name)
    if raw is None:
        return default
    if not raw.isdigit() or not lo <= int(raw) <= hi:
        raise SettingsError(f"COLDCHAIN_{name} 应为 {lo}–{hi} 的整数，实际为 {raw!r}")
    return int(raw)
