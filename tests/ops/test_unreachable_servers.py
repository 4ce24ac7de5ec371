"""A server that cannot be reached ends a command with one Chinese line, not a traceback (issue #18).

The operator reads it in a terminal or in ``journalctl -u coldchain-ingest``: which server, its
address without the password, why, what to check and which setting; exit code 3, which the
systemd units restart on. Each test runs the real ``coldchain`` command against a port nothing
listens on (a free port, closed again), the same way a unit would start it.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from dbhelp import as_runtime

from coldchain import services
from coldchain.cli import EXIT_UNREACHABLE

PASSWORD = "Pa55-w0rd-nobody-may-see"


def _cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("COLDCHAIN_")}
    return subprocess.run(
        [sys.executable, "-m", "coldchain.cli", *args],
        env={**clean, **env},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def _one_line(proc: subprocess.CompletedProcess[str]) -> str:
    """The error as the operator sees it: exactly one line on stderr, no traceback, no secret."""
    assert proc.returncode == EXIT_UNREACHABLE, (proc.returncode, proc.stdout, proc.stderr)
    lines = proc.stderr.splitlines()
    assert len(lines) == 1, proc.stderr
    assert "Traceback" not in proc.stderr and "Traceback" not in proc.stdout
    assert PASSWORD not in proc.stderr + proc.stdout
    assert lines[0].startswith("错误：")
    return lines[0]


@pytest.mark.parametrize("command", [["db", "status"], ["db", "migrate"], ["scheduler"], ["api"]])
def test_a_closed_database_port_is_one_line_naming_server_address_and_setting(command: list[str]) -> None:
    port = services.free_port()
    url = f"postgresql://coldchain_app:{PASSWORD}@127.0.0.1:{port}/coldchain"
    line = _one_line(_cli({"COLDCHAIN_DATABASE_URL": url}, *command))
    assert f"数据库连接失败 postgresql://coldchain_app@127.0.0.1:{port}/coldchain" in line
    assert "连接被拒绝" in line and "请确认服务器已启动" in line
    assert line.endswith("相关设置：COLDCHAIN_DATABASE_URL")


def test_the_owners_url_is_named_when_it_is_the_one_that_fails(db_url: str) -> None:
    """Migrations connect as the owner: the line must point at that setting, not the runtime one;
    a password with URL-escaped characters is hidden in both its forms."""
    port = services.free_port()
    escaped = PASSWORD.replace("-", "%2D")
    env = {
        "COLDCHAIN_DATABASE_URL": as_runtime(db_url),
        "COLDCHAIN_OWNER_DATABASE_URL": f"postgresql://postgres:{escaped}@127.0.0.1:{port}/coldchain",
    }
    line = _one_line(_cli(env, "db", "migrate"))
    assert escaped not in line
    assert f"postgresql://postgres@127.0.0.1:{port}/coldchain" in line
    assert line.endswith("相关设置：COLDCHAIN_OWNER_DATABASE_URL")


def test_a_wrong_password_is_told_apart_from_a_server_that_is_down(db_url: str) -> None:
    """Reached but refused: the hint is about the credentials, not the network."""
    server = db_url.rsplit("@", 1)[1].split("/", 1)[0]
    url = f"postgresql://cc_no_such_role:{PASSWORD}@{server}/coldchain"
    line = _one_line(_cli({"COLDCHAIN_DATABASE_URL": url}, "db", "status"))
    assert "用户名或密码不被接受" in line and "cc_no_such_role" in line
    assert "请确认服务器已启动" not in line


def test_an_unknown_host_name_says_so() -> None:
    url = f"postgresql://coldchain_app:{PASSWORD}@no-such-host.invalid:5432/coldchain"
    line = _one_line(_cli({"COLDCHAIN_DATABASE_URL": url}, "db", "status"))
    assert "无法解析主机名" in line and "no-such-host.invalid" in line


def test_ingest_with_a_closed_broker_port_is_one_line_before_anything_starts() -> None:
    """The ingester retries a lost broker for ever; at start a missing one is an error. The
    database is closed too: the broker is checked first, and nothing else is tried."""
    port = services.free_port()
    env = {
        "COLDCHAIN_DATABASE_URL": f"postgresql://coldchain_app:{PASSWORD}@127.0.0.1:{services.free_port()}/x",
        "COLDCHAIN_MQTT_URL": f"mqtt://127.0.0.1:{port}",
    }
    line = _one_line(_cli(env, "ingest"))
    assert f"MQTT 代理连接失败 mqtt://127.0.0.1:{port}" in line and "连接被拒绝" in line
    assert line.endswith("相关设置：COLDCHAIN_MQTT_URL")


def test_ingest_with_the_broker_up_and_the_database_down_names_the_database(
    mqtt_broker: services.Started,
) -> None:
    port = services.free_port()
    env = {
        "COLDCHAIN_DATABASE_URL": f"postgresql://coldchain_app:{PASSWORD}@127.0.0.1:{port}/coldchain",
        "COLDCHAIN_MQTT_URL": mqtt_broker.url,
        "COLDCHAIN_INGEST_CLIENT_ID": f"unreachable-test-{os.getpid()}",
    }
    line = _one_line(_cli(env, "ingest"))
    assert f"数据库连接失败 postgresql://coldchain_app@127.0.0.1:{port}/coldchain" in line
