"""Issue #18, part 1: demo data only when asked for.

``coldchain run`` seeds and simulates on the embedded default or with ``--demo``, never on a
configured database by itself (it says what to do instead); ``seed demo`` and ``run --demo`` refuse
a registry that holds units the demo did not make, in Chinese, with a non-zero exit."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from apihelp import build_world
from dbhelp import as_runtime

from coldchain import services
from coldchain.core import db
from coldchain.run import DemoPolicy, demo_policy
from coldchain.seed.demo import (
    PROVINCE_CODE,
    RealUnitsPresent,
    check_demo_registry,
    demo_unit_codes,
    load_demo,
    plan_demo,
    registry_state,
)

SEED = 20200106
pytestmark = pytest.mark.timeout(180)


def _cli(env: dict[str, str], *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "coldchain.cli", *args],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def _configured(db_url: str, mqtt_url: str = "mqtt://127.0.0.1:9") -> dict[str, str]:
    """A deployment as documented: the services as the runtime role, migrations as the owner."""
    return {
        "COLDCHAIN_DATABASE_URL": as_runtime(db_url),
        "COLDCHAIN_OWNER_DATABASE_URL": db_url,
        "COLDCHAIN_MQTT_URL": mqtt_url,
        "COLDCHAIN_INGEST_CLIENT_ID": f"demo-asked-{db.database_name(db_url)}",
    }


def _units(db_url: str) -> list[str]:
    with db.connect(db_url) as conn:
        return [r[0] for r in conn.execute("SELECT code FROM units ORDER BY code").fetchall()]


def test_the_demo_runs_on_the_embedded_default_or_when_asked_never_by_itself_on_a_configured_database() -> None:
    assert demo_policy(embedded=True, asked=False, no_simulate=False) == DemoPolicy(demo=True, simulate=True)
    assert demo_policy(embedded=True, asked=False, no_simulate=True) == DemoPolicy(demo=True, simulate=False)
    assert demo_policy(embedded=False, asked=False, no_simulate=False) == DemoPolicy(demo=False, simulate=False)
    assert demo_policy(embedded=False, asked=True, no_simulate=False) == DemoPolicy(demo=True, simulate=True)
    assert demo_policy(embedded=False, asked=True, no_simulate=True) == DemoPolicy(demo=True, simulate=False)


def test_a_larger_demo_plan_covers_a_smaller_one() -> None:
    """What recognising a loaded demo rests on: the next start may ask for another size."""
    small, large = demo_unit_codes(60, SEED), demo_unit_codes(400, SEED)
    assert PROVINCE_CODE in small and small < large


def test_registry_state_tells_empty_demo_and_real_apart(db_url: str) -> None:
    with db.connect(db_url) as conn:
        assert registry_state(conn, 200, SEED) == ("empty", [])
    load_demo(db_url, plan_demo(60, SEED))
    with db.connect(db_url) as conn:
        # Asked for the default size, or for less than is loaded: still the demo.
        assert registry_state(conn, 200, SEED) == ("demo", [])
        assert registry_state(conn, 20, SEED) == ("demo", [])
        assert check_demo_registry(conn, 20, SEED) == "demo"
        # One unit added by hand under the demo's county: nothing tells its probes from the demo's.
        county = conn.execute("SELECT id, code FROM units WHERE level = 'county' ORDER BY id LIMIT 1").fetchone()
        assert county is not None
        code = f"{county[1][:6]}0999"
        conn.execute(
            "INSERT INTO units (code, name, level, parent_id) VALUES (%s, '真实接种点', 'township', %s)",
            (code, county[0]),
        )
        conn.commit()
        assert registry_state(conn, 200, SEED) == ("real", [f"{code} 真实接种点"])
        with pytest.raises(RealUnitsPresent, match=f"已有非演示单位.*{code}"):
            check_demo_registry(conn, 200, SEED)


def test_load_demo_refuses_real_units_and_says_so(db_url: str) -> None:
    build_world(db_url, readings=False)  # a province with real codes, not the demo's plan
    before = _units(db_url)
    with pytest.raises(RealUnitsPresent, match="已有非演示单位"):
        load_demo(db_url, plan_demo(60, SEED))
    assert _units(db_url) == before


def test_seed_demo_refuses_a_registry_with_real_units_in_chinese(db_url: str) -> None:
    build_world(db_url, readings=False)
    before = _units(db_url)
    proc = _cli({"COLDCHAIN_DATABASE_URL": db_url}, "seed", "demo", "--probes", "60")
    assert proc.returncode != 0, proc.stdout
    assert "错误：数据库中已有非演示单位" in proc.stderr and "6101130000" in proc.stderr
    assert "Traceback" not in proc.stderr and "已载入演示省份" not in proc.stdout
    assert _units(db_url) == before


def test_run_demo_refuses_real_units_before_starting_anything(db_url: str) -> None:
    """The broker address answers nothing: the refusal must come before the broker is needed."""
    build_world(db_url, readings=False)
    before = _units(db_url)
    proc = _cli(_configured(db_url), "run", "--demo", "--duration", "1", "--probes", "60")
    assert proc.returncode != 0, proc.stdout
    assert "错误：数据库中已有非演示单位" in proc.stderr
    assert "MQTT 代理" not in proc.stdout and "系统已启动" not in proc.stdout
    assert _units(db_url) == before


def test_run_on_a_configured_database_seeds_and_simulates_nothing_unasked(
    empty_db: str, deploy_broker: services.Started
) -> None:
    env = _configured(empty_db, deploy_broker.url)
    first = _cli(env, "run", "--duration", "0.5", "--probes", "30")
    assert first.returncode == 0, first.stderr
    # An empty registry on a configured database is a new installation: what to do instead.
    assert "不会自动载入演示数据" in first.stdout
    assert "coldchain units import FILE" in first.stdout and "coldchain admin create" in first.stdout
    assert "coldchain run --demo" in first.stdout
    assert "已载入演示省份" not in first.stdout and "Coldchain@2026" not in first.stdout
    assert "网关模拟器：未启动" in first.stdout and "系统已启动" in first.stdout
    assert _units(empty_db) == []

    # Probes bound in the registry get no fake readings unless --demo says so.
    assert _cli({"COLDCHAIN_DATABASE_URL": empty_db}, "seed", "demo", "--probes", "30").returncode == 0
    second = _cli(env, "run", "--duration", "3", "--backfill", "10m")
    assert second.returncode == 0, second.stderr
    assert "网关模拟器：未启动" in second.stdout and "网关模拟器：回填" not in second.stdout
    assert "登记库为空" not in second.stdout
    with db.connect(empty_db) as conn:
        assert conn.execute("SELECT count(*) FROM probe_readings").fetchone() == (0,)
