"""``coldchain run`` on configured servers: migrates, seeds an empty registry, stops cleanly."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

from coldchain import db, services


def _env(db_url: str, broker: services.Started) -> dict[str, str]:
    return {**os.environ, "COLDCHAIN_DATABASE_URL": db_url, "COLDCHAIN_MQTT_URL": broker.url}


def test_run_migrates_seeds_and_stops_after_duration(empty_db: str, mqtt_broker: services.Started) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "coldchain.cli", "run", "--duration", "0.5", "--probes", "60"],
        env=_env(empty_db, mqtt_broker), capture_output=True, text=True, timeout=120, check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert "系统已启动" in proc.stdout and mqtt_broker.url in proc.stdout
    with db.connect(empty_db) as conn:
        row = conn.execute("SELECT count(*) FROM probes").fetchone()
    assert row is not None and row[0] >= 60
    # A second start finds the registry populated and leaves it alone.
    again = subprocess.run(
        [sys.executable, "-m", "coldchain.cli", "run", "--duration", "0.2"],
        env=_env(empty_db, mqtt_broker), capture_output=True, text=True, timeout=120, check=False,
    )
    assert again.returncode == 0 and "已载入演示省份" not in again.stdout


def test_run_stops_on_sigterm(empty_db: str, mqtt_broker: services.Started) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "coldchain.cli", "run", "--probes", "30"],
        env=_env(empty_db, mqtt_broker), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    assert proc.stdout is not None
    deadline = time.monotonic() + 60
    for line in proc.stdout:
        if "系统已启动" in line or time.monotonic() > deadline:
            break
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(30) == 0
