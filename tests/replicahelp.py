"""A real primary and a real physical streaming replica of it, for the read-replica tests (issue #18).

Why not the session's server: a replica is made of a whole cluster (``pg_basebackup`` copies every
database, and pausing replay pauses them all), so the tests get a primary of their own from the
machine's ``initdb`` (:func:`coldchain.services.start_local_cluster`, as root run as the
``postgres`` user) and a replica of it, made the way docs/operations.md ("Read replica") says:
``pg_basebackup -D <dir> -R -X stream``, then started on another port. Nothing is simulated: the
replica is in recovery, streams WAL from the primary and replays it; :func:`pause` and
:func:`resume` use the server's own ``pg_wal_replay_pause()`` / ``pg_wal_replay_resume()``.

No hook in services.py is needed: PostgreSQL 15's defaults already suit streaming
(``wal_level = replica``, ``max_wal_senders = 10``, ``hot_standby = on``), and the pg_hba.conf that
``initdb --auth=trust`` writes lets replication connections in from 127.0.0.1 (checked by
:func:`_replication_allowed`, so a changed default fails here with the reason, not as a
``pg_basebackup`` error).
"""

from __future__ import annotations

import contextlib
import shutil
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psycopg
from psycopg.conninfo import conninfo_to_dict

from coldchain import services
from coldchain.core import db


def machine_has_replication_tools() -> str | None:
    """Why the replica cannot be made on this machine, or None when it can."""
    bindir = services._machine_pg_bindir()
    if bindir is None or not (bindir / "pg_basebackup").exists():
        return "本机没有 PostgreSQL 服务器程序（initdb、pg_ctl、pg_basebackup），无法建立流复制副本"
    return None


@dataclass
class ReplicaPair:
    """``primary`` and ``replica``: server-level URLs (as ``postgres``, a superuser: trust)."""

    primary: services.Started
    replica: services.Started
    primary_dir: Path
    replica_dir: Path
    replica_port: int

    def stop_replica(self) -> None:
        self.replica.stop()

    def start_replica(self) -> None:
        """Start the replica again on its port (after :meth:`stop_replica`)."""
        self.replica = _start(self.replica_dir, self.replica_port)
        wait_ready(self.replica.url)


def _start(data_dir: Path, port: int | None = None) -> services.Started:
    try:
        return services.start_local_cluster(data_dir, port)
    except RuntimeError:
        # pg_ctl stopped waiting (a loaded machine) while the server may still have come up:
        # adopt it to stop it, rather than leave a server running on a directory pytest deletes.
        if services._running_cluster_port(data_dir.resolve()) is not None:
            services.start_local_cluster(data_dir).stop()
        raise


def _port(url: str) -> int:
    port = conninfo_to_dict(url).get("port")
    assert port is not None, url
    return int(port)


def _replication_allowed(primary_url: str) -> bool:
    """Does the primary's pg_hba.conf let a replication connection in from 127.0.0.1 without a
    password (the rule ``initdb --auth=trust`` writes)?"""
    with db.connect(primary_url, autocommit=True) as conn:
        row = conn.execute(
            """SELECT EXISTS (SELECT FROM pg_hba_file_rules
                              WHERE type = 'host' AND 'replication' = ANY(database) AND auth_method = 'trust'
                                AND address IN ('127.0.0.1', 'all', 'samehost'))"""
        ).fetchone()
    return bool(row and row[0])


def base_backup(primary_url: str, target: Path) -> None:
    """``pg_basebackup -D <target> -R -X stream`` as the ``postgres`` user: a copy of the whole
    cluster with ``standby.signal`` and ``primary_conninfo`` written (``-R``), and the WAL of the
    copy's own duration streamed alongside (``-X stream``), so it starts consistent."""
    bindir = services._machine_pg_bindir()
    assert bindir is not None
    target = target.resolve()
    target.mkdir(parents=True)
    if services._is_root():
        services._let_others_traverse(target.parent)
        shutil.chown(target, "postgres", "postgres")
    target.chmod(0o700)
    services._run_logged(
        services._as_postgres_user(
            [
                str(bindir / "pg_basebackup"),
                "-D",
                str(target),
                "-R",
                "-X",
                "stream",
                "--checkpoint=fast",
                "--no-sync",  # a test cluster: no fsync of every file
                "-h",
                "127.0.0.1",
                "-p",
                str(_port(primary_url)),
                "-U",
                "postgres",
            ]
        ),
        "制作副本（pg_basebackup）",
        cwd=target,
    )


def wait_ready(replica_url: str, timeout: float = 60) -> None:
    """Until the replica accepts connections and is in recovery (a hot standby)."""
    deadline = time.monotonic() + timeout
    while True:
        with contextlib.suppress(psycopg.OperationalError), db.connect(replica_url, autocommit=True) as conn:
            row = conn.execute("SELECT pg_is_in_recovery()").fetchone()
            if row and row[0]:
                return
            raise AssertionError(f"{replica_url} 不在恢复状态：不是副本")
        if time.monotonic() > deadline:
            raise TimeoutError(f"副本 {replica_url} 在 {timeout} 秒内没有就绪")
        time.sleep(0.2)


@contextlib.contextmanager
def replica_pair() -> Iterator[ReplicaPair]:
    """A primary and its streaming replica in a new directory of their own; both stopped and
    removed at the end.

    Not under pytest's ``tmp_path``: the servers run as ``postgres``, which must traverse every
    directory above their data, and any pytest run on the machine (another engineer's, in
    parallel) takes the "others" bits off ``/tmp/pytest-of-<user>`` again as it starts — the
    servers would then lose their own files mid-test. A ``mkdtemp`` directory in ``/tmp`` is ours."""
    work = Path(tempfile.mkdtemp(prefix="coldchain-replica-"))
    primary_dir, replica_dir = work / "primary", work / "replica"
    primary = _start(primary_dir)
    replica: services.Started | None = None
    try:
        assert _replication_allowed(primary.url), "主库的 pg_hba.conf 不允许来自 127.0.0.1 的 replication 连接"
        base_backup(primary.url, replica_dir)
        replica = _start(replica_dir)
        pair = ReplicaPair(primary, replica, primary_dir, replica_dir, _port(replica.url))
        wait_ready(replica.url)
        yield pair
        replica = pair.replica
    finally:
        if replica is not None:
            replica.stop()
        primary.stop()
        shutil.rmtree(work, ignore_errors=True)


def wait_replayed(primary_url: str, replica_url: str, timeout: float = 30) -> None:
    """Until the replica has replayed everything the primary had written when this was called
    (asked on the replica's ``postgres`` database: the test's own may not be there yet)."""
    with db.connect(primary_url, autocommit=True) as conn:
        row = conn.execute("SELECT pg_current_wal_lsn()::text").fetchone()
    assert row is not None
    target = row[0]
    deadline = time.monotonic() + timeout
    with db.connect(db.with_database(replica_url, "postgres"), autocommit=True) as conn:
        while True:
            done = conn.execute("SELECT pg_last_wal_replay_lsn() >= %s::pg_lsn", (target,)).fetchone()
            if done and done[0]:
                return
            if time.monotonic() > deadline:
                raise TimeoutError(f"副本在 {timeout} 秒内没有回放到主库的 {target}")
            time.sleep(0.05)


def pause(primary_url: str, replica_url: str, timeout: float = 30) -> None:
    """Stop the replica replaying WAL, and wait until it has stopped: a pause takes effect before
    the next record, so the primary writes one (a logical message, no table) to reach it."""
    wait_replayed(primary_url, replica_url)
    with db.connect(db.with_database(replica_url, "postgres"), autocommit=True) as conn:
        conn.execute("SELECT pg_wal_replay_pause()")
        deadline = time.monotonic() + timeout
        while True:
            row = conn.execute("SELECT pg_get_wal_replay_pause_state()").fetchone()
            if row and row[0] == "paused":
                return
            if time.monotonic() > deadline:
                raise TimeoutError(f"副本在 {timeout} 秒内没有暂停回放（{row[0] if row else '?'}）")
            with db.connect(primary_url, autocommit=True) as primary:
                primary.execute("SELECT pg_logical_emit_message(false, 'coldchain-test', 'pause')")
            time.sleep(0.05)


def resume(primary_url: str, replica_url: str) -> None:
    """Let the replica replay again, and wait until it has caught up."""
    with db.connect(replica_url, autocommit=True) as conn:
        conn.execute("SELECT pg_wal_replay_resume()")
    wait_replayed(primary_url, replica_url)
