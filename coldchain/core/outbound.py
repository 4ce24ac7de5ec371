"""Where this system may send requests: WeCom group robots, signed webhooks and WeChat's API.

Every outbound URL is checked here twice (issue #15): when it is saved (a unit's notification
routes, the settings) with :func:`check_url`, and again when a request is sent, after DNS
resolution, by :func:`request`, which connects to exactly the addresses it has checked (a name
that resolves to a public address at the check and to an internal one a moment later cannot
slip through) and never follows a redirect.

The rule: ``https`` only, to a host on the allowlist (``COLDCHAIN_OUTBOUND_HOSTS``, by default
WeCom's robot host and WeChat's API host), and never to a loopback, private (RFC 1918, unique
local), carrier-grade NAT, link-local (cloud metadata at 169.254.169.254), unspecified,
multicast or reserved address — nor to an IPv6 form that embeds one (``::ffff:127.0.0.1``,
6to4, NAT64). The one exception is for tests, which run fakes on ``http://127.0.0.1:<port>``:
``COLDCHAIN_OUTBOUND_ALLOW_INSECURE_LOOPBACK=true`` lets literal loopback addresses through,
over http or https, and nothing else.

Messages are Chinese and name the host, never the rest of the URL: the key of a WeCom robot is
in its query string. :func:`mask_url` is how a URL is shown anywhere (API answers, errors).
"""

from __future__ import annotations

import http.client
import ipaddress
import re
import socket
import ssl
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import SplitResult, urlsplit

if TYPE_CHECKING:
    from coldchain.core.settings import Settings

DEFAULT_HOSTS: tuple[str, ...] = ("qyapi.weixin.qq.com", "api.weixin.qq.com")
MAX_ANSWER = 1 << 20  # bytes read from an answer: robots and WeChat answer with a few hundred

IpAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
GetAddrInfo = Callable[..., Sequence[tuple[Any, ...]]]

_HOST_RE = re.compile(r"^(?=.{1,253}$)[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?(?:\.[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?)*$")
_QUERY_VALUE = re.compile(r"([?&][^=&#]*=)[^&#]*")
_QUOTED_QUERY_VALUE = re.compile(r"([?&][^=&#\s'\"]*=)[^&#\s'\"]*")
_CGNAT = ipaddress.ip_network("100.64.0.0/10")
_NAT64 = (ipaddress.ip_network("64:ff9b::/96"), ipaddress.ip_network("64:ff9b:1::/48"))
_V4_COMPATIBLE = ipaddress.ip_network("::/96")


class OutboundRefused(ValueError):
    """A URL this system will not send to; the message is Chinese and safe to show and store."""


@dataclass(frozen=True)
class OutboundPolicy:
    hosts: frozenset[str] = frozenset(DEFAULT_HOSTS)
    allow_insecure_loopback: bool = False


@dataclass(frozen=True)
class Target:
    """A checked URL: where to connect and what to ask for."""

    scheme: str
    host: str
    port: int
    path: str  # path and query, as sent in the request line


def policy_of(settings: Settings) -> OutboundPolicy:
    return OutboundPolicy(frozenset(settings.outbound_hosts), settings.outbound_allow_insecure_loopback)


def parse_hosts(raw: str) -> tuple[str, ...]:
    """The allowlist setting: host names separated by commas (no scheme, port or wildcard)."""
    hosts = tuple(dict.fromkeys(h.strip().lower().rstrip(".") for h in raw.split(",") if h.strip()))
    bad = [h for h in hosts if not _HOST_RE.match(h) or _literal_ip(h) is not None]
    if bad:
        raise ValueError(f"应为逗号分隔的主机名（不含 https://、端口或通配符，也不能是 IP 地址）：{'、'.join(bad)}")
    return hosts


def mask_url(url: str) -> str:
    """A URL as it may be shown: no user or password, every query value replaced by ``***`` (a
    WeCom robot's ``key`` is its whole secret), no fragment. The audit trigger of migration 0011
    masks the same way."""
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
        port = f":{parts.port}" if parts.port else ""
    except ValueError:
        return "（无效地址）"
    if ":" in host:
        host = f"[{host}]"
    query = _QUERY_VALUE.sub(r"\1***", f"?{parts.query}")[1:] if parts.query else ""
    return f"{parts.scheme}://{host}{port}{parts.path}" + (f"?{query}" if query else "")


def scrub(text: str, url: str, *secrets: str | bytes | None) -> str:
    """``text`` (an error message) fit to store and log: ``url``'s query values and the given
    secrets masked wherever they appear, and the query values of any other URL it quotes (a
    WeChat call's ``access_token``) too."""
    out = text.replace(url, mask_url(url)) if url else text
    try:
        values = [v for _, v in (p.partition("=")[::2] for p in urlsplit(url).query.split("&"))]
    except ValueError:
        values = []
    for secret in (*values, *secrets):
        word = secret.decode(errors="replace") if isinstance(secret, bytes) else secret
        if word and len(word) >= 4:
            out = out.replace(word, "***")
    return _QUOTED_QUERY_VALUE.sub(r"\1***", out)


def _literal_ip(host: str) -> IpAddress | None:
    try:
        return ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return None


def _embedded_v4(ip: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    if ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    if ip.sixtofour is not None:
        return ip.sixtofour
    if any(ip in net for net in _NAT64) or (ip in _V4_COMPATIBLE and int(ip) > 1):
        return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    if ip.teredo is not None:
        return ip.teredo[1]
    return None


def forbidden_reason(ip: IpAddress) -> str | None:
    """Why this system never sends to ``ip`` (Chinese), or None for an ordinary public address."""
    if isinstance(ip, ipaddress.IPv6Address):
        embedded = _embedded_v4(ip)
        if embedded is not None and (reason := forbidden_reason(embedded)) is not None:
            return f"{reason}（IPv6 形式）"
    if ip.is_loopback:
        return "本机回环地址"
    if ip.is_link_local:
        return "链路本地地址（含云主机元数据地址 169.254.169.254）"
    if ip.is_unspecified:
        return "未指定地址"
    if ip.is_multicast:
        return "组播地址"
    if isinstance(ip, ipaddress.IPv4Address) and ip in _CGNAT:
        return "运营商级 NAT 共享地址（100.64.0.0/10，含部分云的元数据地址）"
    if ip.is_private:
        return "内网地址"
    if ip.is_reserved or not ip.is_global:
        return "保留或非公网地址"
    return None


def check_url(url: str, policy: OutboundPolicy) -> Target:
    """The check when a URL is saved (and the first half of the one when it is used)."""
    if not isinstance(url, str) or not url or len(url) > 2000:
        raise OutboundRefused("地址为空或过长")
    if any(ord(c) < 0x21 or c in "\\\x7f" for c in url):
        raise OutboundRefused("地址含有空白、控制字符或反斜杠")
    try:
        parts: SplitResult = urlsplit(url)
        port = parts.port
    except ValueError:
        raise OutboundRefused("地址格式无效") from None
    scheme = parts.scheme.lower()
    host = (parts.hostname or "").rstrip(".")
    if scheme not in ("http", "https") or not host:
        raise OutboundRefused("地址应为 https:// 开头的完整网址")
    if "@" in parts.netloc:
        raise OutboundRefused("地址不能含有用户名或密码")
    ip = _literal_ip(host)
    if ip is not None and ip.is_loopback and policy.allow_insecure_loopback:
        pass  # the tests' fakes (COLDCHAIN_OUTBOUND_ALLOW_INSECURE_LOOPBACK)
    elif ip is not None and (reason := forbidden_reason(ip)) is not None:
        raise OutboundRefused(f"不允许向{reason}发送（{host}）")
    elif scheme != "https":
        raise OutboundRefused(f"只允许 https 地址（{host} 用的是 {scheme}）")
    elif host not in policy.hosts:
        allowed = "、".join(sorted(policy.hosts)) or "无"
        raise OutboundRefused(
            f"主机 {host} 不在允许外发的主机名单中（当前允许：{allowed}；由 COLDCHAIN_OUTBOUND_HOSTS 设置）"
        )
    path = parts.path or "/"
    if parts.query:
        path += f"?{parts.query}"
    return Target(scheme, host, port or (443 if scheme == "https" else 80), path)


def resolve(
    url: str, policy: OutboundPolicy, *, getaddrinfo: GetAddrInfo = socket.getaddrinfo
) -> tuple[Target, list[str]]:
    """The check when a URL is used: :func:`check_url`, then every address its host resolves to.

    One forbidden address refuses the whole name (a name with a public and an internal address is
    not a name to trust). A name that does not resolve raises ``OSError`` (try again later); a
    refusal raises :class:`OutboundRefused` (do not)."""
    target = check_url(url, policy)
    literal = _literal_ip(target.host)
    if literal is not None and literal.is_loopback and policy.allow_insecure_loopback:
        return target, [str(literal)]
    infos = getaddrinfo(target.host, target.port, type=socket.SOCK_STREAM)
    addresses: list[str] = []
    for info in infos:
        address = str(info[4][0])
        ip = _literal_ip(address)
        if ip is None:
            raise OutboundRefused(f"{target.host} 解析出无法识别的地址，拒绝发送")
        if (reason := forbidden_reason(ip)) is not None:
            raise OutboundRefused(f"{target.host} 解析到{reason} {ip}，拒绝发送")
        if address not in addresses:
            addresses.append(address)
    if not addresses:
        raise OSError(f"{target.host} 没有可用的地址")
    return target, addresses


def _connect(addresses: Iterable[str], port: int, timeout: float | None) -> socket.socket:
    last: OSError | None = None
    for address in addresses:
        try:
            return socket.create_connection((address, port), timeout)
        except OSError as exc:
            last = exc
    raise last or OSError("无可用地址")


class _PinnedHTTP(http.client.HTTPConnection):
    def __init__(self, target: Target, addresses: Sequence[str], timeout: float) -> None:
        super().__init__(target.host, target.port, timeout=timeout)
        self._addresses = list(addresses)

    def connect(self) -> None:
        self.sock = _connect(self._addresses, self.port, self.timeout)


class _PinnedHTTPS(http.client.HTTPSConnection):
    def __init__(self, target: Target, addresses: Sequence[str], timeout: float) -> None:
        self._tls = ssl.create_default_context()
        super().__init__(target.host, target.port, timeout=timeout, context=self._tls)
        self._addresses = list(addresses)

    def connect(self) -> None:
        # The certificate is checked against the host name, as for any https request.
        raw = _connect(self._addresses, self.port, self.timeout)
        self.sock = self._tls.wrap_socket(raw, server_hostname=self.host)


def request(
    method: str,
    url: str,
    policy: OutboundPolicy,
    *,
    body: bytes | None = None,
    headers: Mapping[str, str] | None = None,
    timeout: float = 10,
    getaddrinfo: GetAddrInfo = socket.getaddrinfo,
) -> tuple[int, bytes]:
    """One request to a checked destination: (HTTP status, answer). Redirects are not followed.

    Raises :class:`OutboundRefused` for a destination this system does not send to, ``OSError``
    for a network failure; neither message contains the URL's query."""
    target, addresses = resolve(url, policy, getaddrinfo=getaddrinfo)
    conn: http.client.HTTPConnection = (
        _PinnedHTTPS(target, addresses, timeout)
        if target.scheme == "https"
        else _PinnedHTTP(target, addresses, timeout)
    )
    try:
        conn.request(method, target.path, body=body, headers=dict(headers or {}))
        answer = conn.getresponse()
        return answer.status, answer.read(MAX_ANSWER)
    except http.client.HTTPException as exc:
        raise OSError(f"HTTP 协议错误（{type(exc).__name__}）") from None
    finally:
        conn.close()
