"""docs/go-live.md followed as a test, against real servers (issue #18, "Go live").

The page is read, not paraphrased: the two CSV files, the owner role's statement, the environment
file, the certificate commands, the gateway loop, the ``mosquitto_pub`` line, the backup and every
``coldchain …`` command are taken from its code blocks and run with only what a test cannot have
replaced — names (the owner role, the runtime login and the database get names of their own on
the machine's shared server, dropped at the end), the paths under ``/root/coldchain`` (a temporary
directory, which also holds the broker's CA instead of ``/etc/coldchain/mqtt-ca.crt``), the ports,
and the broker's host name (``localhost``, which the certificate made by the page's own openssl
commands then names). Each replacement must match, so a page edited out of shape fails here
instead of testing something else.

Then, as the page says: an owner role with its database, ``db migrate`` and ``db runtime-login``
through the CLI, the units and hardware imports, ``admin create`` and the password set through
the printed link's page, Mosquitto with the shipped configuration, ACL and one user per gateway
(started by tests/tlshelp.py's ``tls_broker``), ``coldchain ingest`` and
``coldchain api`` as processes with the systemd units' command lines and the page's environment
file, gateway 30001 publishing with ``mosquitto_pub``, the new administrator finding the reading on
the board, ``coldchain doctor`` with nothing to fix, and the backup. Steps 10–11 (systemd, nginx)
are tested in test_service_units.py and test_https_proxy.py.
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
from psycopg.conninfo import conninfo_to_dict
from tlshelp import INGEST_USER, Pki, tls_broker, tool

from coldchain import services
from coldchain.cli import build_parser
from coldchain.core import db
from registry.hardware_cells import COLUMNS as HARDWARE_COLUMNS
from registry.hardware_cells import REQUIRED as HARDWARE_REQUIRED
from registry.units_import import COLUMNS as UNIT_COLUMNS

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "go-live.md"
SECRETS = "/root/coldchain/"  # where the page keeps passwords and import files
NEW_PASSWORD = "Baoji@Admin2026"
pytestmark = pytest.mark.timeout(120)


# ------------------------------------------------------------------------------------ reading the page


def _page() -> str:
    return DOC.read_text(encoding="utf-8")


def _bash_lines(text: str) -> list[str]:
    """Every command line of the page's ```bash blocks, continuation lines joined."""
    lines: list[str] = []
    for block in re.findall(r"```bash\n(.*?)```", text, flags=re.S):
        for line in block.replace("\\\n", " ").splitlines():
            if line.strip():
                lines.append(re.sub(r" {2,}", " ", line.strip()))
    return lines


def _line(text: str, start: str) -> str:
    found = [line for line in _bash_lines(text) if line.startswith(start)]
    assert len(found) == 1, f"docs/go-live.md 中应恰有一行命令以 {start!r} 开头，实际 {len(found)} 行"
    return found[0]


def _heredoc(text: str, target: str) -> str:
    """The body of ``cat > target <<EOF`` (quoted or not) in the page."""
    found = re.findall(rf"cat > {re.escape(target)} <<'?EOF'?\n(.*?)\nEOF\n", text, flags=re.S)
    assert len(found) == 1, f"docs/go-live.md 中应恰有一处 cat > {target} <<EOF"
    return str(found[0])


def _replace(text: str, old: str, new: str) -> str:
    assert old in text, f"docs/go-live.md 的命令中应有 {old!r}"
    return text.replace(old, new)


def _csv_rows(body: str) -> list[dict[str, str]]:
    header, *rows = body.splitlines()
    names = header.split(",")
    return [dict(zip(names, row.split(","), strict=True)) for row in rows]


def _gateway_loop(text: str) -> list[str]:
    found = re.findall(r"^for gw in ([0-9 ]+); do$", text, flags=re.M)
    assert len(found) == 1, "docs/go-live.md 中应恰有一个 for gw in …; do 循环"
    return str(found[0]).split()


def _names(text: str) -> dict[str, str]:
    """Step 0's two names, as the page sets them."""
    return {key: _line(text, f"{key}=").split("=", 1)[1] for key in ("WEB", "MQTT")}


# ------------------------------------------------------------------------------------ the page agrees with the code


def test_the_page_agrees_with_the_importers_the_parser_and_the_repository() -> None:
    text = _page()
    units = _heredoc(text, f"{SECRETS}units.csv")
    hardware = _heredoc(text, f"{SECRETS}hardware.csv")
    # The units file: exactly the importer's columns, in its order (the page names them too).
    assert units.splitlines()[0].split(",") == list(UNIT_COLUMNS)
    # The hardware file: the importer's column names only, every required one present.
    header = hardware.splitlines()[0].split(",")
    assert set(header) <= set(HARDWARE_COLUMNS) and set(HARDWARE_REQUIRED) <= set(header), header
    for required in HARDWARE_REQUIRED:
        assert f"`{required}`" in text
    # Every `coldchain …` command is one the parser takes, with these options.
    parser = build_parser()
    commands = [line for line in _bash_lines(text) if line.startswith("coldchain ")]
    assert {" ".join(c.split()[:3]) for c in commands} >= {
        "coldchain db migrate",
        "coldchain db runtime-login",
        "coldchain units import",
        "coldchain hardware import",
        "coldchain admin create",
        "coldchain doctor",
    }
    for command in commands:
        parser.parse_args(shlex.split(command.split(" < ")[0])[1:])  # SystemExit on anything unknown
    # The administrator's unit, the broker users and the stand-in gateway belong to the files.
    unit_rows, probe_rows = _csv_rows(units), _csv_rows(hardware)
    admin = shlex.split(_line(text, "coldchain admin create"))
    assert admin[admin.index("--unit") + 1] in {r["code"] for r in unit_rows}
    gateways = sorted({r["gateway_serial"] for r in probe_rows})
    assert _gateway_loop(text) == gateways
    publish = shlex.split(_line(text, "mosquitto_pub"))
    gateway = publish[publish.index("-u") + 1]
    assert publish[publish.index("-t") + 1] == f"coldchain/v1/{gateway}/telemetry"
    probe = re.search(r'"probe": "(\d+)"', publish[publish.index("-m") + 1])
    assert (
        probe
        and {"gateway_serial": gateway, "probe_serial": probe[1]}.items()
        <= next(r for r in probe_rows if r["probe_serial"] == probe[1]).items()
    )
    # What the page installs from the release exists in it.
    for path in sorted(set(re.findall(r"/opt/coldchain/src/(\S+)", text))):
        assert list(ROOT.glob(path)), path
    # The nightly backup is the command run by hand.
    by_hand = _line(text, "pg_dump ")
    cron = _heredoc(text, "/etc/cron.d/coldchain-backup")
    assert by_hand.replace("%F", "\\%F") in cron
    assert _names(text)["WEB"] and _names(text)["MQTT"]


# ------------------------------------------------------------------------------------ the walkthrough


@dataclass(frozen=True)
class Fresh:
    """An empty server's worth of names on the shared server: owner role, runtime login, database."""

    server: dict[str, Any]
    owner: str
    login: str
    name: str

    @property
    def host_port(self) -> str:
        return f"{self.server.get('host') or '127.0.0.1'}:{self.server.get('port') or 5432}"


@pytest.fixture
def fresh(pg_server: services.Started) -> Iterator[Fresh]:
    suffix = secrets.token_hex(4)
    fresh = Fresh(
        conninfo_to_dict(pg_server.url), f"cc_golive_owner_{suffix}", f"cc_golive_app_{suffix}", f"cc_golive_{suffix}"
    )
    try:
        yield fresh
    finally:
        with db.connect(pg_server.url, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{fresh.name}" WITH (FORCE)')
            conn.execute(f'DROP ROLE IF EXISTS "{fresh.login}"')
            conn.execute(f'DROP ROLE IF EXISTS "{fresh.owner}"')


def _bash(script: str, cwd: Path, env: dict[str, str] | None = None) -> str:
    proc = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", script],
        cwd=cwd,
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, f"{script}\n{proc.stdout}{proc.stderr}"
    return proc.stdout


def _service_command(unit: str) -> list[str]:
    """A systemd unit's ExecStart, with this environment's Python in place of the venv's script."""
    text = (ROOT / "deploy" / "systemd" / unit).read_text(encoding="utf-8")
    (line,) = re.findall(r"^ExecStart=(.*)$", text, flags=re.M)
    words = shlex.split(line)
    assert words[0] == "/opt/coldchain/venv/bin/coldchain"
    return [sys.executable, "-m", "coldchain.cli", *words[1:]]


@contextlib.contextmanager
def _service(argv: list[str], env: dict[str, str], ready: str | None = None) -> Iterator[list[str]]:
    """A long-running command; its output collected; waits for ``ready`` in it; SIGTERM at the end."""
    proc = subprocess.Popen(argv, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    output: list[str] = []
    seen = threading.Event()

    def read() -> None:
        assert proc.stdout is not None
        for raw in proc.stdout:
            output.append(raw.decode(errors="replace"))
            if ready and ready in output[-1]:
                seen.set()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        if ready:
            assert seen.wait(30), "".join(output)
        yield output
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        reader.join(5)


def _wait_for(check: Callable[[], bool], seconds: float, what: Callable[[], str]) -> None:
    deadline = time.monotonic() + seconds
    while True:
        with contextlib.suppress(httpx.TransportError):
            if check():
                return
        assert time.monotonic() < deadline, f"等待超时：{what()}"
        time.sleep(0.1)


def test_a_new_city_goes_live_by_following_the_page(fresh: Fresh, tmp_path: Path) -> None:
    for name, fallback in (
        ("mosquitto", "/usr/sbin/mosquitto"),
        ("mosquitto_passwd", "/usr/bin/mosquitto_passwd"),
        ("mosquitto_pub", "/usr/bin/mosquitto_pub"),
        ("openssl", "/usr/bin/openssl"),
    ):
        tool(name, fallback)  # skips, saying what to install
    createdb, pg_restore = shutil.which("createdb"), shutil.which("pg_restore")
    if not (createdb and pg_restore and shutil.which("psql") and shutil.which("curl")):
        pytest.skip("本机没有 PostgreSQL 客户端程序或 curl（Debian：apt-get install postgresql-client curl）")
    text = _page()
    home = tmp_path / "root-coldchain"  # /root/coldchain
    home.mkdir(mode=0o700)

    def here(line: str) -> str:
        return line.replace(SECRETS, f"{home}/")

    names = {"WEB": _names(text)["WEB"], "MQTT": "localhost"}  # the broker's certificate names localhost
    shell_vars = "".join(f"{k}={v}\n" for k, v in names.items())
    server = {
        "PGHOST": str(fresh.server.get("host") or "127.0.0.1"),
        "PGPORT": str(fresh.server.get("port") or "5432"),
        "PGUSER": str(fresh.server.get("user") or "postgres"),
    }

    # -- 2. secrets
    _bash(here(_line(text, "for name in ")), tmp_path)
    owner_password = (home / "db-owner.password").read_text().strip()
    app_password = (home / "db-app.password").read_text().strip()
    assert len(owner_password) == len(app_password) == 48

    # -- 3. the owner and its database, as the server's administrator
    create_role = _replace(_line(text, "runuser -u postgres -- psql "), "runuser -u postgres -- ", "")
    create_role = _replace(create_role, "CREATE ROLE coldchain LOGIN", f"CREATE ROLE {fresh.owner} LOGIN")
    _bash(here(create_role), tmp_path, server)
    create_db = _replace(_line(text, "runuser -u postgres -- createdb "), "runuser -u postgres -- ", "")
    create_db = _replace(create_db, "--owner=coldchain ", f"--owner={fresh.owner} ")
    assert create_db.endswith(" coldchain")
    _bash(create_db.removesuffix(" coldchain") + f" {fresh.name}", tmp_path, server)

    # -- 4. the broker's certificates, by the page's openssl commands (the broker itself starts below)
    for line in _bash_lines(text):
        if line.startswith(("openssl req ", "printf 'subjectAltName", "openssl x509 ")):
            _bash(f"{shell_vars}{line}", home)
    assert (home / "ca.crt").exists() and (home / "server.crt").exists()

    # -- 5. the environment file, and the owner's URL for the shell
    database = f"@{fresh.host_port}/{fresh.name}"
    body = _heredoc(text, "/etc/coldchain/coldchain.env")
    body = _replace(body, "postgresql://coldchain_app:", f"postgresql://{fresh.login}:")
    body = _replace(body, "@127.0.0.1:5432/coldchain\n", f"{database}\n")
    api_port, health_port = services.free_port(), services.free_port()
    body = _replace(body, "=/etc/coldchain/mqtt-ca.crt\n", f"={home}/ca.crt\n")  # made in step 4
    body = _replace(body, "COLDCHAIN_API_PORT=8000\n", f"COLDCHAIN_API_PORT={api_port}\n")
    body = _replace(body, "COLDCHAIN_INGEST_HEALTH_PORT=9101", f"COLDCHAIN_INGEST_HEALTH_PORT={health_port}")
    evaluated = _bash(here(f"{shell_vars}cat <<EOF\n{body}\nEOF\n"), tmp_path)
    settings = dict(line.split("=", 1) for line in evaluated.splitlines())
    assert settings["COLDCHAIN_PUBLIC_URL"] == f"https://{names['WEB']}"
    assert settings["COLDCHAIN_MQTT_URL"] == f"mqtts://{INGEST_USER}@localhost:8883"  # the port: once the broker runs
    owner_line = _line(text, "export COLDCHAIN_OWNER_DATABASE_URL=")
    owner_line = _replace(owner_line, "postgresql://coldchain:", f"postgresql://{fresh.owner}:")
    owner_line = _replace(owner_line, "@127.0.0.1:5432/coldchain", database)
    owner_url = _bash(here(f'{owner_line}\necho "$COLDCHAIN_OWNER_DATABASE_URL"'), tmp_path).strip()
    assert urlsplit(owner_url).password == owner_password
    base = {k: v for k, v in os.environ.items() if not k.startswith("COLDCHAIN_")}

    def services_env() -> dict[str, str]:
        """What systemd gives the services: the environment file."""
        return {**base, **settings, "PYTHONUNBUFFERED": "1"}

    def coldchain(line: str, *extra: str) -> str:
        """A ``coldchain …`` line of the page, through ``python -m coldchain.cli``, in the page's
        shell: the environment file loaded and the owner's URL exported."""
        assert line in _bash_lines(text), line
        command, _, stdin = here(line).partition(" < ")
        words = shlex.split(command)
        assert words[0] == "coldchain"
        proc = subprocess.run(
            [sys.executable, "-m", "coldchain.cli", *words[1:], *extra],
            env={**services_env(), "COLDCHAIN_OWNER_DATABASE_URL": owner_url},
            input=Path(stdin).read_text() if stdin else None,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert proc.returncode == 0, f"{line}\n{proc.stdout}{proc.stderr}"
        return proc.stdout

    # -- 6. schema and the services' login (under a name of its own on this shared server)
    assert "存储路径：postgresql" in coldchain("coldchain db migrate")
    login = coldchain(
        "coldchain db runtime-login --password-stdin < /root/coldchain/db-app.password", "--login", fresh.login
    )
    assert f"已创建运行角色 {fresh.login}（coldchain_runtime 成员）" in login

    # -- 7., 8. units and hardware, the files exactly as the page writes them
    for name in ("units.csv", "hardware.csv"):
        (home / name).write_text(_heredoc(text, f"{SECRETS}{name}") + "\n", encoding="utf-8")
    assert "新增 4，改名 0" in coldchain("coldchain units import /root/coldchain/units.csv --dry-run")
    assert "已导入并提交" in coldchain("coldchain units import /root/coldchain/units.csv")
    dry = coldchain("coldchain hardware import /root/coldchain/hardware.csv --dry-run")
    assert "新增设备 2，温区 3，网关 2，探头 3" in dry
    assert "已导入并提交" in coldchain("coldchain hardware import /root/coldchain/hardware.csv")

    # -- 9. the first administrator: the one-time link
    created = coldchain(_line(text, "coldchain admin create"))
    link = re.search(rf"https://{re.escape(names['WEB'])}(/setup-password\?token=([\w-]+))", created)
    assert link, created

    # -- 4., 8. the broker's users: the ingesters' (step 4) and one per gateway of the loop (step 8)
    users = {INGEST_USER: (home / f"mqtt-{INGEST_USER}.password").read_text().strip()}
    for gateway in _gateway_loop(text):
        users[gateway] = secrets.token_hex(16)
        (home / f"mqtt-{gateway}.password").write_text(users[gateway] + "\n")
    # _broker uses the broker's certificate, key and CA; it has no use for the client fields.
    made = Pki(
        home / "ca.crt",
        home / "server.crt",
        home / "server.key",
        home / "server.crt",
        home / "server.key",
        home / "ca.crt",
    )
    with contextlib.ExitStack() as stack:
        broker = stack.enter_context(tls_broker(tmp_path / "mosquitto", made, users))
        settings["COLDCHAIN_MQTT_URL"] = settings["COLDCHAIN_MQTT_URL"].replace(":8883", f":{broker.port}")
        # The API starts while the ingester connects and subscribes (both take seconds to import).
        api_out = stack.enter_context(_service(_service_command("coldchain-api.service"), services_env()))
        ingest_out = stack.enter_context(_service(_service_command("coldchain-ingest.service"), services_env(), "订阅"))
        web = stack.enter_context(httpx.Client(base_url=f"http://127.0.0.1:{api_port}", timeout=10))
        _wait_for(
            lambda: web.get("/api/v1/health").status_code == 200, 30, lambda: f"coldchain api\n{''.join(api_out)}"
        )

        # -- 9. (continued) the link's page, then the password its form sets
        page = web.get(link[1])
        assert page.status_code == 200 and "张伟" in page.text and "bj_admin" in page.text
        assert "/api/v1/auth/setup-password" in page.text
        answer = web.post("/api/v1/auth/setup-password", json={"token": link[2], "new_password": NEW_PASSWORD})
        assert answer.status_code == 204, answer.text

        # -- 13. the first gateway, by the page's mosquitto_pub line; the ingester's count
        publish = _replace(_line(text, "mosquitto_pub"), " -p 8883 ", f" -p {broker.port} ")
        publish = _replace(publish, "/etc/coldchain/mqtt-ca.crt", f"{home}/ca.crt")
        _bash(here(f"{shell_vars}{publish}"), tmp_path)
        metrics = _replace(_line(text, "curl -s http://127.0.0.1:9101/metrics"), ":9101/", f":{health_port}/")

        shown: list[str] = []

        def stored() -> bool:
            grep = subprocess.run(["bash", "-c", metrics], capture_output=True, text=True, timeout=10, check=False)
            shown[:] = [grep.stdout]
            return "coldchain_ingest_readings_stored_total 1.0\n" in grep.stdout

        _wait_for(stored, 20, lambda: f"the reading stored: {shown}\n{''.join(ingest_out)}")

        # The new administrator signs in and finds it on the board.
        signed_in = web.post("/api/v1/auth/token", json={"username": "bj_admin", "password": NEW_PASSWORD})
        assert signed_in.status_code == 200, signed_in.text
        board = web.get("/api/v1/board", headers={"Authorization": f"Bearer {signed_in.json()['access_token']}"})
        assert board.status_code == 200, board.text
        tiles = {(t["unit_name"], t["equipment_name"], t["compartment_name"]): t for t in board.json()["tiles"]}
        assert len(tiles) == 3, tiles
        tile = tiles[("渭滨区疾病预防控制中心", "1号冷库", "库区")]
        assert (tile["t"], tile["t_flag"], tile["state"], tile["reading_age"]) == (4.6, "ok", "normal", "刚刚"), tile

        # -- 12. coldchain doctor, in the same shell: nothing to fix, nothing to warn about
        doctor = coldchain("coldchain doctor")
        verdicts = [line[0] for line in doctor.splitlines() if line[:2] in ("✓ ", "! ", "✗ ", "– ")]
        assert len(verdicts) >= 10 and set(verdicts) <= {"✓", "–"}, doctor
        assert "未发现必须修复的问题" in doctor and f"已连接 mqtts://localhost:{broker.port}" in doctor
        printed = doctor + "".join(ingest_out + api_out)
        for secret in (owner_password, app_password, *users.values()):
            assert secret not in printed

    # -- 14. the backup, as the page takes it by hand
    backup = _replace(_line(text, "pg_dump "), "/var/backups/coldchain/", f"{tmp_path}/")
    backup = _replace(
        backup, "postgresql://coldchain@127.0.0.1:5432/coldchain", f"postgresql://{fresh.owner}{database}"
    )
    _bash(backup, tmp_path)
    (dump,) = tmp_path.glob("coldchain-*.dump")
    listing = subprocess.run([pg_restore, "--list", str(dump)], capture_output=True, text=True, check=True).stdout
    assert "TABLE DATA public probe_readings" in listing and "TABLE DATA public units" in listing
