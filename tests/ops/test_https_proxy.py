"""deploy/nginx/coldchain.conf in front of a live API (issue #18): TLS, the redirect, HSTS, the
client's address passed on, no caching of API answers, the body limit and the API's error shape
from nginx itself.

The shipped file is used as it is, with only what a test cannot have replaced: the ports (80 and
443 → free ports on 127.0.0.1, the IPv6 listeners dropped), the upstream (127.0.0.1:8000 → the
live server's port) and the certificate (a self-signed one made here with openssl). Each
replacement must match exactly, so an edit of the file that changes its shape fails here rather
than testing something else. Skipped, with the reason, only where nginx is not installed
(Debian: ``apt-get install nginx``).
"""

from __future__ import annotations

import os
import shutil
import ssl
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from apihelp import PASSWORD, World, live_server

from coldchain import services
from coldchain.core import db

CONF = Path(__file__).resolve().parents[2] / "deploy" / "nginx" / "coldchain.conf"
OPENSSL = shutil.which("openssl") or "/usr/bin/openssl"


def _nginx() -> str:
    found = shutil.which("nginx") or next((p for p in ("/usr/sbin/nginx",) if Path(p).exists()), None)
    if found is None:
        pytest.skip("本机没有 nginx（Debian：apt-get install nginx），无法检查反向代理配置")
    return found


def _replace(text: str, old: str, new: str, count: int) -> str:
    assert text.count(old) == count, f"deploy/nginx/coldchain.conf 中应有 {count} 处 {old!r}"
    return text.replace(old, new)


@dataclass(frozen=True)
class Proxy:
    https: str
    http: str
    ca: ssl.SSLContext


def _certificate(directory: Path) -> tuple[Path, Path]:
    cert, key = directory / "fullchain.pem", directory / "privkey.pem"
    subprocess.run(
        [OPENSSL, "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
         "-days", "2", "-subj", "/CN=coldchain.test", "-addext", "subjectAltName=IP:127.0.0.1",
         "-keyout", str(key), "-out", str(cert)],
        capture_output=True, check=True, timeout=60,
    )  # fmt: skip
    return cert, key


def _configuration(directory: Path, api_port: int, http_port: int, https_port: int) -> Path:
    cert, key = _certificate(directory)
    site = CONF.read_text(encoding="utf-8")
    site = _replace(site, "server 127.0.0.1:8000;", f"server 127.0.0.1:{api_port};", 1)
    site = _replace(site, "    listen [::]:80;\n", "", 1)
    site = _replace(site, "    listen [::]:443 ssl http2;\n", "", 1)
    site = _replace(site, "listen 80;", f"listen 127.0.0.1:{http_port};", 1)
    site = _replace(site, "listen 443 ssl http2;", f"listen 127.0.0.1:{https_port} ssl http2;", 1)
    site = _replace(site, "/etc/ssl/coldchain/fullchain.pem", str(cert), 1)
    site = _replace(site, "/etc/ssl/coldchain/privkey.pem", str(key), 1)
    (directory / "coldchain.conf").write_text(site, encoding="utf-8")
    # The http {} around it, as /etc/nginx/nginx.conf gives it, with everything written kept here.
    # As root the workers run as root too: they only need this test's directory.
    main = directory / "nginx.conf"
    main.write_text(
        f"""{"user root;" if os.geteuid() == 0 else ""}
worker_processes 1;
daemon off;
pid {directory}/nginx.pid;
error_log {directory}/error.log warn;
events {{ worker_connections 64; }}
http {{
    access_log {directory}/access.log;
    client_body_temp_path {directory}/body;
    proxy_temp_path {directory}/proxy;
    fastcgi_temp_path {directory}/fastcgi;
    uwsgi_temp_path {directory}/uwsgi;
    scgi_temp_path {directory}/scgi;
    include {directory}/coldchain.conf;
}}
""",
        encoding="utf-8",
    )
    return main


@contextmanager
def _running_proxy(tmp_path: Path, api_port: int) -> Iterator[Proxy]:
    nginx = _nginx()
    http_port, https_port = services.free_port(), services.free_port()
    main = _configuration(tmp_path, api_port, http_port, https_port)
    check = subprocess.run(
        [nginx, "-t", "-p", str(tmp_path), "-c", str(main)], capture_output=True, text=True, timeout=60, check=False
    )
    # nginx -t reports on stderr; a warning (a directive nginx ignores, a duplicate) fails too.
    problems = [line for line in check.stderr.splitlines() if "[warn]" in line or "[emerg]" in line]
    assert check.returncode == 0 and "test is successful" in check.stderr and not problems, check.stderr
    proc = subprocess.Popen(
        [nginx, "-p", str(tmp_path), "-c", str(main)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    try:
        deadline = time.monotonic() + 30
        while not services.port_open("127.0.0.1", https_port):
            assert proc.poll() is None, (tmp_path / "error.log").read_text(errors="replace")
            assert time.monotonic() < deadline, "nginx 未在 30 秒内开始监听"
            time.sleep(0.05)
        ca = ssl.create_default_context(cafile=str(tmp_path / "fullchain.pem"))
        yield Proxy(f"https://127.0.0.1:{https_port}", f"http://127.0.0.1:{http_port}", ca)
    finally:
        proc.terminate()  # nginx's fast shutdown
        proc.wait(timeout=30)


def test_the_api_through_the_https_proxy(world: World, tmp_path: Path) -> None:
    with live_server(world.url) as base:
        api_port = int(base.rsplit(":", 1)[1])
        with _running_proxy(tmp_path, api_port) as proxy:
            with httpx.Client(base_url=proxy.https, verify=proxy.ca) as client:
                health = client.get("/api/v1/health")
                assert health.status_code == 200 and health.json() == {"status": "ok"}
                assert health.headers["strict-transport-security"] == "max-age=31536000"
                assert health.headers["cache-control"] == "no-store"
                assert health.headers["x-content-type-options"] == "nosniff"
                # A page (location /): HSTS from the server block; the app's own redirect kept.
                home = client.get("/")
                assert home.status_code == 303 and home.headers["location"] == "/board"
                assert home.headers["strict-transport-security"] == "max-age=31536000"
                # Outside /api/ the app's own Cache-Control stays (its icon, its Plotly script).
                icon = client.get("/favicon.ico")
                assert icon.headers["cache-control"] == "public, max-age=604800"

                # Over 8 MB: refused by nginx, in the API's error shape.
                big = client.post("/api/v1/auth/token", content=b"x" * (9 * 1024 * 1024))
                assert big.status_code == 413 and big.json()["error"]["code"] == "too_large"

            # The client's address reaches the app through X-Forwarded-For: a client on 127.0.0.2
            # signs in (nginx connects from 127.0.0.1), claiming another address in its own header.
            transport = httpx.HTTPTransport(local_address="127.0.0.2", verify=proxy.ca)
            with httpx.Client(base_url=proxy.https, transport=transport) as client:
                r = client.post(
                    "/api/v1/auth/token",
                    json={"username": "ba_P", "password": PASSWORD},
                    headers={"X-Forwarded-For": "203.0.113.9"},
                )
                assert r.status_code == 200, r.text
                assert r.headers["cache-control"] == "no-store"
                board = client.get("/api/v1/board", headers={"Authorization": f"Bearer {r.json()['access_token']}"})
                assert board.status_code == 200 and board.json()
            with db.connect(world.url) as conn:
                row = conn.execute(
                    "SELECT host(ip) FROM auth_sessions WHERE user_id = %s ORDER BY id DESC LIMIT 1",
                    (world.users["ba_P"],),
                ).fetchone()
            assert row == ("127.0.0.2",)

            # Plain HTTP: a permanent redirect to the same path over HTTPS, nothing served.
            with httpx.Client(base_url=proxy.http) as plain:
                redirect = plain.get("/board?unit=1")
                assert redirect.status_code == 301
                assert redirect.headers["location"] == "https://127.0.0.1/board?unit=1"

    # The API gone (stopped, restarting): nginx answers in the API's error shape, not HTML.
    deadline = time.monotonic() + 30
    while services.port_open("127.0.0.1", api_port):
        assert time.monotonic() < deadline, "uvicorn 未在 30 秒内停止"
        time.sleep(0.05)
    (tmp_path / "down").mkdir()
    with _running_proxy(tmp_path / "down", api_port) as proxy, httpx.Client(verify=proxy.ca) as client:
        down = client.get(f"{proxy.https}/api/v1/health")
        assert down.status_code == 503 and down.json()["error"]["code"] == "service_unavailable"
        assert down.headers["cache-control"] == "no-store"
