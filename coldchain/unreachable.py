"""Why a server could not be reached, in one Chinese line an operator can act on.

Why a module of its own: the ``coldchain`` command (:mod:`coldchain.cli`) ends with this line
when its database or broker is down, and ``coldchain doctor`` (:mod:`coldchain.doctor`) reports
the same reasons for each check. One table of libpq's and the system's words keeps the two from
telling the same failure in two ways.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from urllib.parse import unquote, urlsplit

import psycopg

from coldchain.core.settings import Settings

CHECK_NETWORK = "请确认服务器已启动、地址和端口正确、网络与防火墙放行"
# libpq's or the OS's words → the reason in Chinese and what to check (first match wins).
FAILURES = (
    (("refused",), "连接被拒绝，该地址和端口上没有服务在监听", CHECK_NETWORK),
    (("timeout", "timed out", "no route", "unreachable"), "连接超时或网络不通", CHECK_NETWORK),
    (("resolve", "name or service", "host name"), "无法解析主机名", "请确认主机名拼写正确、本机 DNS 可用"),
    (("password", "role"), "用户名或密码不被接受", "请确认用户名和密码（密码中的特殊字符须按 URL 编码）"),
    (("pg_hba.conf",), "服务器不允许此连接", "请在数据库服务器的 pg_hba.conf 中放行本机地址与该用户"),
    (("does not exist",), "数据库不存在", "请确认数据库名；新安装先建库，再执行 coldchain db migrate"),
    (("starting up", "shutting down", "recovery"), "数据库服务器正在启动或停止", "请稍候；持续出现请查看服务器日志"),
    (("too many",), "数据库连接数已满", "请检查服务器的 max_connections 与各服务的连接数"),
    (
        ("certificate", "[ssl:", "ssl error", "handshake"),
        "TLS 握手失败",
        "请确认服务器证书由受信任的 CA 签发、证书中的主机名与地址一致",
    ),
)


def explain(detail: str) -> tuple[str, str]:
    """(the reason in Chinese with the server's own words, what to check) for a failure message."""
    lines = detail.replace("FATAL:", "").strip().splitlines()
    detail = " ".join(lines[0].split()) if lines else "原因不明"
    for needles, chinese, advice in FAILURES:
        if any(n in detail.lower() for n in needles):
            return f"{chinese}：{detail}", advice
    return detail, CHECK_NETWORK


def hide(text: str, secrets: list[str]) -> str:
    """``text`` with every secret replaced by ``***``."""
    for secret in filter(None, secrets):
        text = text.replace(secret, "***")
    return text


@dataclass(frozen=True)
class Unreachable:
    """A failed connection, told apart: the command prints :meth:`line`, the doctor its parts."""

    server: str  # 数据库 / MQTT 代理
    address: str  # never with a password
    reason: str
    hint: str
    variable: str
    secrets: tuple[str, ...] = field(default=(), repr=False)

    def line(self) -> str:
        """One line for an operator (or the journal) instead of a traceback whose last line is
        libpq's English: which server, where, why, what to check, and which setting."""
        text = f"{self.server}连接失败 {self.address}（{self.reason}）。{self.hint}；相关设置：{self.variable}"
        return hide(text, list(self.secrets))


def failure(server: str, address: str, detail: str, variable: str, secrets: list[str]) -> Unreachable:
    reason, hint = explain(detail)
    return Unreachable(server, address, reason, hint, variable, tuple(secrets))


def one_line(server: str, address: str, detail: str, variable: str, secrets: list[str]) -> str:
    return failure(server, address, detail, variable, secrets).line()


def url_passwords(*urls: str | None) -> list[str]:
    """The passwords in these URLs, as written and percent-decoded: both must stay hidden."""
    found: list[str] = []
    for url in filter(None, urls):
        try:
            password = urlsplit(url).password
        except ValueError:
            continue
        if password:
            found += [password, unquote(password)]
    return found


def database_unreachable(exc: psycopg.OperationalError, settings: Settings | None) -> str:
    """The command's one line for a database it could not reach."""
    return database_failure(exc, settings).line()


def database_failure(
    exc: psycopg.OperationalError, settings: Settings | None, variable: str | None = None
) -> Unreachable:
    """Names the database by the setting that points at it: runtime role or owner (``variable``
    when the caller knows which one it used, else found by user, host and port)."""
    urls = (
        {"COLDCHAIN_DATABASE_URL": settings.database_url, "COLDCHAIN_OWNER_DATABASE_URL": settings.owner_database_url}
        if settings
        else {}
    )
    configured = {name: urlsplit(url) for name, url in urls.items() if url}
    secrets = url_passwords(*(url for url in urls.values()))
    if exc.pgconn is not None:
        info = exc.pgconn
        user, host, port, name = (
            v.decode(errors="replace") if v else "" for v in (info.user, info.host, info.port, info.db)
        )
        # 'connection to server at "127.0.0.1", port 5432 failed: <reason>'
        detail = (info.error_message or b"").decode(errors="replace").split(" failed: ", 1)[-1] or str(exc)
    else:  # failed before libpq had a connection to describe (a host name that does not resolve)
        first = configured.get(variable or "") or next(iter(configured.values()), None)
        user, host, port, name = (
            (unquote(first.username or ""), first.hostname or "", str(first.port or 5432), first.path.lstrip("/"))
            if first
            else ("", "127.0.0.1", "5432", "coldchain")  # the run command's local default
        )
        detail = str(exc)
    variable = variable or next(
        (
            n
            for n, u in configured.items()
            if (unquote(u.username or ""), u.hostname, str(u.port or 5432)) == (user, host, port)
        ),
        "COLDCHAIN_DATABASE_URL",
    )
    address = f"postgresql://{user}@{host}:{port}/{name}" if user else f"postgresql://{host}:{port}/{name}"
    return failure("数据库", address, detail, variable, secrets)


def broker_unreachable(settings: Settings) -> str | None:
    """The ingester and the simulator retry a lost broker for ever (a broker restart must not stop
    them), so a broker missing at start (a wrong address, nothing started) would show only as a
    warning every few seconds: checked once before starting, with a plain TCP connect."""
    import socket

    if (mqtt := settings.mqtt) is None:
        return None  # the command itself says that the setting is missing
    try:
        with socket.create_connection((mqtt.host, mqtt.port), timeout=5):
            return None
    except OSError as exc:
        detail = "timed out" if isinstance(exc, TimeoutError) else exc.strerror or str(exc)
    return one_line("MQTT 代理", mqtt.url, detail, "COLDCHAIN_MQTT_URL", [])
