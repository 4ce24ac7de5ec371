"""Settings, read from ``COLDCHAIN_*`` environment variables in this one place.

Every process (CLI, ingester, scheduler, API, tests) builds its configuration with
:func:`load_settings`, so a variable means the same thing everywhere and a bad value
is refused at start-up, not halfway through a night of ingest.
"""

from __future__ import annotations

import os
import re
import ssl
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal
from urllib.parse import unquote, urlsplit

from coldchain.core.outbound import DEFAULT_HOSTS, OutboundPolicy, OutboundRefused, check_url, mask_url, parse_hosts

TimescaleMode = Literal["auto", "require", "off"]
_TIMESCALE_MODES: tuple[TimescaleMode, ...] = ("auto", "require", "off")

PREFIX = "COLDCHAIN_"


class SettingsError(ValueError):
    """A ``COLDCHAIN_*`` variable has a value the system cannot use."""


#: The port of each scheme when the URL names none (IANA: 1883 plain MQTT, 8883 MQTT over TLS).
MQTT_DEFAULT_PORTS: Mapping[str, int] = {"mqtt": 1883, "mqtts": 8883}


@dataclass(frozen=True)
class MqttAddress:
    """The broker and how to sign in to it (issue #18): ``COLDCHAIN_MQTT_URL`` together with
    ``COLDCHAIN_MQTT_USERNAME`` / ``_PASSWORD`` / ``_CA_FILE`` / ``_CERT_FILE`` / ``_KEY_FILE``.

    A deployment's broker refuses anonymous clients and speaks TLS to gateways outside the CDC
    network, so every client of it (ingester, simulator, doctor) connects through
    :meth:`client_options`, the one place that turns these settings into aiomqtt's arguments.
    The password is left out of ``repr`` and :attr:`url`: both end up in logs and errors.
    """

    host: str
    port: int
    tls: bool = False
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    # None: the system's CA bundle (a broker with a certificate from a public CA).
    ca_file: Path | None = None
    # A client certificate, for a broker that requires one (``require_certificate true``).
    cert_file: Path | None = None
    key_file: Path | None = None

    @property
    def scheme(self) -> str:
        return "mqtts" if self.tls else "mqtt"

    @property
    def url(self) -> str:
        """The address as it may be shown in logs, errors and the doctor: never a user or password
        (the same form as :func:`coldchain.core.outbound.mask_url`)."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.scheme}://{host}:{self.port}"

    def tls_context(self) -> ssl.SSLContext | None:
        """For ``mqtts``: verify the broker's certificate and host name against ``ca_file`` (or the
        system CAs), TLS 1.2 at least, and present the client certificate when one is set. Built
        anew for each connection, so a renewed certificate is picked up at the next reconnect."""
        if not self.tls:
            return None
        context = ssl.create_default_context(cafile=str(self.ca_file) if self.ca_file else None)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        if self.cert_file is not None:
            context.load_cert_chain(self.cert_file, self.key_file, password=_no_key_passphrase)
        return context

    def client_options(self) -> dict[str, Any]:
        """``aiomqtt.Client`` keyword arguments for the credentials and TLS of these settings."""
        options: dict[str, Any] = {}
        if self.username is not None:
            options["username"] = self.username
            options["password"] = self.password
        if (context := self.tls_context()) is not None:
            options["tls_context"] = context
        return options


def _no_key_passphrase() -> str:
    """Called by OpenSSL for an encrypted private key. Without it OpenSSL would prompt on the
    terminal, and a service under systemd would hang there; refused instead."""
    raise SettingsError("COLDCHAIN_MQTT_KEY_FILE 的私钥已加密；请使用未加密的私钥，并只允许服务的运行用户读取")


@dataclass(frozen=True)
class Settings:
    # None means "not configured": the run command then starts an embedded server.
    # database_url is the runtime role's (services); owner_database_url the owner's (migrations,
    # refreshing TimescaleDB's continuous aggregates by hand, loading the demo). Unset: the same
    # URL, and each service warns at start-up that it runs with more privileges than it needs.
    database_url: str | None = field(repr=False)  # may carry a password
    mqtt_url: str | None = field(repr=False)  # may carry a password; shown as ``mqtt.url``
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
    # The broker's sign-in and TLS files, beside COLDCHAIN_MQTT_URL (see parse_mqtt_url).
    mqtt_username: str | None = None
    mqtt_password: str | None = field(default=None, repr=False)
    mqtt_ca_file: Path | None = None
    mqtt_cert_file: Path | None = None
    mqtt_key_file: Path | None = None
    # A streaming replica of the system database (issue #18), as the runtime role: the API reads
    # monthly reports and the devices' history from it, so the province's heaviest reads stay off
    # the primary that ingest and the alarms write to. None: everything reads the primary.
    read_database_url: str | None = field(default=None, repr=False)  # may carry a password

    @property
    def migration_url(self) -> str | None:
        """Where migrations and other owner work connect: the owner URL, else the one URL."""
        return self.owner_database_url or self.database_url

    @property
    def mqtt(self) -> MqttAddress | None:
        if not self.mqtt_url:
            return None
        return parse_mqtt_url(
            self.mqtt_url,
            username=self.mqtt_username,
            password=self.mqtt_password,
            ca_file=self.mqtt_ca_file,
            cert_file=self.mqtt_cert_file,
            key_file=self.mqtt_key_file,
        )


def parse_mqtt_url(
    url: str,
    *,
    username: str | None = None,
    password: str | None = None,
    ca_file: Path | None = None,
    cert_file: Path | None = None,
    key_file: Path | None = None,
) -> MqttAddress:
    """``mqtt://[user[:password]@]host[:port]`` (port 1883) or ``mqtts://…`` (TLS, port 8883).

    User and password in the URL are percent-decoded (a ``@`` in a password is written ``%40``).
    ``username`` / ``password`` — ``COLDCHAIN_MQTT_USERNAME`` / ``_PASSWORD`` — win over the
    URL's, each on its own: the password can then live in a variable of its own while the
    URL, which is shown more widely, carries none. Messages show the URL masked.
    """
    shown = _masked_mqtt_url(url)
    try:
        parts = urlsplit(url)
        scheme, host = parts.scheme.lower(), parts.hostname
        port = parts.port
    except ValueError as exc:
        raise SettingsError(f"COLDCHAIN_MQTT_URL 端口无效：{shown}") from exc
    if scheme not in MQTT_DEFAULT_PORTS or not host:
        raise SettingsError(
            f"COLDCHAIN_MQTT_URL 格式应为 mqtt://主机:端口 或 mqtts://主机:端口（可含 用户:密码@），实际为 {shown}"
        )
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        # Also how a password with an unencoded / ? # shows itself: it splits the URL there.
        raise SettingsError(
            "COLDCHAIN_MQTT_URL 不能含路径、查询或片段（密码中的 / ? # @ 等须按 URL 编码，如 / 写作 %2F），"
            f"实际为 {shown}"
        )
    tls = scheme == "mqtts"
    url_user = unquote(parts.username) if parts.username else None
    url_password = unquote(parts.password) if parts.password else None
    user = username if username is not None else url_user
    secret = password if password is not None else url_password
    if secret is not None and user is None:
        where = "COLDCHAIN_MQTT_PASSWORD" if password is not None else "COLDCHAIN_MQTT_URL"
        raise SettingsError(f"{where} 设置了密码但没有用户名；请设置 COLDCHAIN_MQTT_USERNAME 或在地址中写明用户")
    if not tls:
        for name, value in (("CA_FILE", ca_file), ("CERT_FILE", cert_file), ("KEY_FILE", key_file)):
            if value is not None:
                raise SettingsError(f"COLDCHAIN_MQTT_{name} 仅用于 TLS 连接；请把 COLDCHAIN_MQTT_URL 改为 mqtts://…")
    if key_file is not None and cert_file is None:
        raise SettingsError("COLDCHAIN_MQTT_KEY_FILE 须与客户端证书 COLDCHAIN_MQTT_CERT_FILE 一起设置")
    return MqttAddress(
        host,
        port or MQTT_DEFAULT_PORTS[scheme],
        tls=tls,
        username=user,
        password=secret,
        ca_file=ca_file,
        cert_file=cert_file,
        key_file=key_file,
    )


def _masked_mqtt_url(url: str) -> str:
    """``url`` as a message may show it: everything before the last ``@`` of the address is
    dropped, not only what the URL parser takes for user and password — a password with an
    unencoded ``/``, ``?`` or ``#`` would otherwise reach the message as host, port or path."""
    scheme, sep, rest = url.partition("://")
    bare = f"{scheme}{sep}{rest.rsplit('@', 1)[-1]}" if sep else url.rsplit("@", 1)[-1]
    masked = mask_url(bare)
    return bare if masked == "（无效地址）" else masked


def _mqtt_address(get: Callable[[str], str | None], url: str) -> MqttAddress:
    """``COLDCHAIN_MQTT_URL`` with its companion settings, and the TLS files opened once now: a
    missing or unreadable CA bundle, certificate or key stops start-up with a message naming the
    variable, instead of a TLS failure at every reconnect of a service that keeps retrying."""
    files = {name: _readable_file(get, name) for name in ("MQTT_CA_FILE", "MQTT_CERT_FILE", "MQTT_KEY_FILE")}
    address = parse_mqtt_url(
        url,
        username=get("MQTT_USERNAME"),
        password=get("MQTT_PASSWORD"),
        ca_file=files["MQTT_CA_FILE"],
        cert_file=files["MQTT_CERT_FILE"],
        key_file=files["MQTT_KEY_FILE"],
    )
    if not address.tls:
        return address
    try:
        context = ssl.create_default_context(cafile=str(address.ca_file) if address.ca_file else None)
    except (OSError, ssl.SSLError) as exc:
        raise SettingsError(f"COLDCHAIN_MQTT_CA_FILE {address.ca_file} 不是可用的 CA 证书（PEM 格式）：{exc}") from None
    if address.cert_file is not None:
        try:
            context.load_cert_chain(address.cert_file, address.key_file, password=_no_key_passphrase)
        except (OSError, ssl.SSLError) as exc:
            raise SettingsError(
                f"COLDCHAIN_MQTT_CERT_FILE {address.cert_file} 与 COLDCHAIN_MQTT_KEY_FILE"
                f" 不是一对可用的客户端证书和私钥（PEM 格式，私钥未加密）：{exc}"
            ) from None
    return address


def _readable_file(get: Callable[[str], str | None], name: str) -> Path | None:
    raw = get(name)
    if raw is None:
        return None
    path = Path(raw)
    try:
        with path.open("rb") as f:
            f.read(1)
    except FileNotFoundError:
        raise SettingsError(f"COLDCHAIN_{name} 指向的文件不存在：{path}") from None
    except PermissionError:
        raise SettingsError(f"COLDCHAIN_{name} 指向的文件无法读取（权限不足，服务以其运行用户读取）：{path}") from None
    except OSError as exc:
        raise SettingsError(f"COLDCHAIN_{name} 指向的文件无法读取：{path}（{exc.strerror or exc}）") from None
    return path


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
    read_url = get("READ_DATABASE_URL")
    if read_url and not read_url.startswith(("postgresql://", "postgres://")):
        raise SettingsError("COLDCHAIN_READ_DATABASE_URL 应以 postgresql:// 开头")
    if read_url and not database_url:
        # A replica of the embedded demo database cannot exist: it is made by pg_basebackup of a
        # configured primary.
        raise SettingsError("设置了 COLDCHAIN_READ_DATABASE_URL（只读副本）时，也须设置主库的 COLDCHAIN_DATABASE_URL")
    mqtt_url = get("MQTT_URL")
    mqtt = _mqtt_address(get, mqtt_url) if mqtt_url else None
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
        read_database_url=read_url,
        mqtt_username=mqtt.username if mqtt else None,
        mqtt_password=mqtt.password if mqtt else None,
        mqtt_ca_file=mqtt.ca_file if mqtt else None,
        mqtt_cert_file=mqtt.cert_file if mqtt else None,
        mqtt_key_file=mqtt.key_file if mqtt else None,
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
