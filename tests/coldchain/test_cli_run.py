"""``coldchain run --demo`` on configured servers: migrates, seeds an empty registry, stops cleanly.

(Without ``--demo`` a configured database gets no demo: tests/coldchain/test_demo_only_when_asked.py.)"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import httpx
from dbhelp import as_runtime

from coldchain import services
from coldchain.core import db
from coldchain.seed.demo import DEMO_PASSWORD, PROVINCE_CODE


def _env(db_url: str, broker: services.Started) -> dict[str, str]:
    # A client id of its own, so that no other test's queued messages are delivered to this run.
    # Deployed as documented: migrations as the owner, the services as the runtime role.
    return {
        **os.environ,
        "COLDCHAIN_DATABASE_URL": as_runtime(db_url),
        "COLDCHAIN_OWNER_DATABASE_URL": db_url,
        "COLDCHAIN_MQTT_URL": broker.url,
        "COLDCHAIN_INGEST_CLIENT_ID": f"run-{db.database_name(db_url)}",
    }


def test_run_migrates_seeds_simulates_ingests_and_stops(empty_db: str, deploy_broker: services.Started) -> None:
    """The broker is our own (deploy_broker): the run command's ingester keeps a persistent
    session, which must not be left queueing on the machine's shared broker."""
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "coldchain.cli",
            "run",
            "--demo",
            "--duration",
            "12",  # past the scheduler's first look after start-up (10 s), which judges in-range readings
            "--probes",
            "60",
            "--backfill",
            "30m",
        ],
        env=_env(empty_db, deploy_broker),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert "系统已启动" in proc.stdout and deploy_broker.url in proc.stdout
    # No robot configured: the demo's alarms go to the stand-in, and its fault is announced.
    assert "报警通知发往演示替身 http://127.0.0.1:" in proc.stdout
    assert "停电（power_cut）" in proc.stdout and "开始后 30m30s 起，持续 2m" in proc.stdout
    with db.connect(empty_db) as conn:
        probes = conn.execute("SELECT count(*) FROM probes").fetchone()
        # The simulator back-filled 30 minutes for every bound probe and the ingester stored them.
        stored = conn.execute(
            "SELECT count(DISTINCT probe_id), count(*) FROM probe_readings WHERE ts < now() - interval '20 minutes'"
        ).fetchone()
        bound = conn.execute("SELECT count(*) FROM probe_bindings_current").fetchone()
        # The scheduler ran too: the rules have state for the compartments the simulator fed.
        judged = conn.execute("SELECT count(*) FROM alarm_rule_state WHERE subject = 'compartment'").fetchone()
    assert probes is not None and probes[0] >= 60
    assert stored is not None and bound is not None
    assert stored[0] >= bound[0] - 3  # a random fault may silence a probe or two
    assert stored[1] >= 5 * (bound[0] - 3)
    assert judged is not None and judged[0] >= bound[0] - 3
    # A second start finds the registry populated and leaves it alone; it is still the demo
    # although the default size (200 probes) is asked for this time, so --demo is not refused.
    again = subprocess.run(
        [sys.executable, "-m", "coldchain.cli", "run", "--demo", "--duration", "0.2", "--no-simulate"],
        env=_env(empty_db, deploy_broker),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert again.returncode == 0, again.stderr
    assert "已载入演示省份" not in again.stdout


def test_run_serves_the_api_and_stops_on_sigterm(empty_db: str, deploy_broker: services.Started) -> None:
    port = services.free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "coldchain.cli", "run", "--demo", "--probes", "30", "--backfill", "10m"],
        env={**_env(empty_db, deploy_broker), "COLDCHAIN_API_PORT": str(port)},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    deadline = time.monotonic() + 60
    api_line = ""
    for line in proc.stdout:
        if line.startswith("Web API："):
            api_line = line
        if "系统已启动" in line or time.monotonic() > deadline:
            break
    try:
        # The printed URL is the one that answers, and the demo's administrator can sign in.
        assert f"http://127.0.0.1:{port}/api/v1/docs" in api_line
        base = f"http://127.0.0.1:{port}/api/v1"
        token = httpx.post(f"{base}/auth/token", json={"username": f"admin{PROVINCE_CODE}", "password": DEMO_PASSWORD})
        assert token.status_code == 200, token.text
        units = httpx.get(f"{base}/units", headers={"Authorization": f"Bearer {token.json()['access_token']}"})
        assert units.status_code == 200 and len(units.json()) > 3
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
