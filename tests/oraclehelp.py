"""Running SQL inside the WASM build of PostgreSQL + TimescaleDB 2.23 (tests/tsdb_oracle/, Node.js
in-process): the only place the TimescaleDB path runs on this machine. Used by every oracle test."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from coldchain.core.migrate import discover

ORACLE_DIR = Path(__file__).parent / "tsdb_oracle"


def node() -> str:
    node = shutil.which("node")
    if node is None:
        if os.environ.get("CI"):
            pytest.fail("CI 上必须运行 TimescaleDB 预言测试，但没有找到 Node.js")
        pytest.skip("没有 Node.js：无法运行 WASM 版 TimescaleDB（README 的测试命令会检查并安装依赖）")
    if not (ORACLE_DIR / "node_modules" / "@unni-craftsman" / "pglite").exists():
        pytest.fail(f"缺少 npm 依赖：请运行 npm ci --prefix {ORACLE_DIR}（README 的测试命令会自动运行）")
    return node


def run_oracle(steps: list[dict[str, str]]) -> dict[str, list[dict[str, Any]]]:
    proc = subprocess.run(
        [node(), str(ORACLE_DIR / "runner.mjs")],
        input=json.dumps({"steps": steps}).encode(),
        capture_output=True,
        timeout=240,
        check=False,
    )
    try:
        out = json.loads(proc.stdout)
    except json.JSONDecodeError:
        pytest.fail(f"oracle produced no JSON (exit {proc.returncode}): {proc.stderr.decode()[-2000:]}")
    if not out["ok"]:
        step = steps[out["step"]]
        pytest.fail(f"oracle step {out['step']} failed: {out['error']}\n--- step:\n{step['sql'][:1500]}")
    results: dict[str, list[dict[str, Any]]] = out["results"]
    return results


def migration_steps() -> list[dict[str, str]]:
    return [
        {"sql": f"BEGIN;\nSELECT set_config('coldchain.timescaledb', 'require', true);\n{m.sql}\nCOMMIT;"}
        for m in discover()
    ]


def refresh_steps(until: str) -> list[dict[str, str]]:
    """What analytics.aggregates.refresh_aggregates does on TimescaleDB: the excursion spans (one
    day per call, until caught up), then the continuous aggregates."""
    # Not inside a transaction block: one CALL per step.
    return [
        {"sql": f"SELECT cc_excursion_advance_threshold(timestamptz '{until}')"},
        {"sql": "DO $$ BEGIN LOOP EXIT WHEN (SELECT caught_up FROM cc_excursion_refresh()); END LOOP; END $$"},
    ] + [
        {"sql": f"CALL refresh_continuous_aggregate('{view}', NULL, time_bucket('1 hour', timestamptz '{until}'))"}
        for view in ("probe_readings_hourly", "probe_readings_daily")
    ]
