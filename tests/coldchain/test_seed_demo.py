"""The demo province: real divisions, the full equipment mix, three responsible people per unit."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from coldchain.core import db
from coldchain.seed.demo import load_demo, plan_demo
from coldchain.seed.shaanxi import CITIES


def test_plan_is_deterministic_and_sized_by_probes() -> None:
    a, b = plan_demo(200, seed=7), plan_demo(200, seed=7)
    assert a == b
    assert plan_demo(200, seed=8) != a
    assert 200 <= len(a.probes) <= 210
    big = plan_demo(15000)
    assert 15000 <= len(big.probes) <= 15010
    county_codes = {c.code for city in CITIES for c in city.counties}
    assert {u[1][:6] for u in big.units if u[3] == "county"} == county_codes


def test_small_plan_refuses_absurd_sizes() -> None:
    with pytest.raises(ValueError, match="至少"):
        plan_demo(5)


def test_demo_loads_a_consistent_registry(db_url: str) -> None:
    load_demo(db_url, plan_demo(200))
    with db.connect(db_url) as conn:
        kinds = {r[0] for r in conn.execute("SELECT DISTINCT kind FROM equipment").fetchall()}
        assert kinds == {"fridge", "freezer", "medical_fridge", "cold_room", "vehicle"}
        modes = {r[0] for r in conn.execute("SELECT DISTINCT mode FROM compartments").fetchall()}
        assert modes == {"refrigerated", "frozen"}
        # Every compartment has exactly one current probe binding; every probe is bound.
        assert conn.execute(
            "SELECT count(*) FROM compartments c WHERE (SELECT count(*) FROM probe_bindings_current b "
            "WHERE b.compartment_id = c.id) <> 1"
        ).fetchone() == (0,)
        assert conn.execute(
            "SELECT count(*) FROM probes p WHERE NOT EXISTS "
            "(SELECT 1 FROM probe_bindings_current b WHERE b.probe_id = p.id)"
        ).fetchone() == (0,)
        # Three levels of responsibility for every unit.
        assert conn.execute(
            "SELECT count(*) FROM units u WHERE (SELECT count(DISTINCT level) FROM unit_responsibles r "
            "WHERE r.unit_id = u.id) <> 3"
        ).fetchone() == (0,)
        # A direct-reporting county hangs under the province although its code is under a city.
        direct = conn.execute(
            "SELECT c.name, p.level FROM units c JOIN units p ON p.id = c.parent_id "
            "WHERE c.level = 'county' AND p.level = 'province'"
        ).fetchall()
        assert direct and all(level == "province" for _, level in direct)
        # Sequences continue after the explicit ids used by COPY.
        conn.execute("INSERT INTO probes (serial) VALUES ('999999')")
        # Some warranties run out within a year of the demo's time frame (CM4 has something to show).
        assert conn.execute("SELECT count(*) FROM probes WHERE warranty_end < date '2027-12-31'").fetchone() != (0,)


def test_demo_refuses_a_registry_that_has_units(db_url: str) -> None:
    load_demo(db_url, plan_demo(50))
    with pytest.raises(RuntimeError, match="已有单位"):
        load_demo(db_url, plan_demo(50))


def _cli(*args: str, url: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "COLDCHAIN_DATABASE_URL": url}
    return subprocess.run(
        [sys.executable, "-m", "coldchain.cli", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def test_cli_migrate_twice_then_seed_15000_probes(empty_db: str) -> None:
    first = _cli("db", "migrate", url=empty_db)
    assert first.returncode == 0, first.stderr
    assert "已应用迁移 0001_registry.sql" in first.stdout
    second = _cli("db", "migrate", url=empty_db)
    assert second.returncode == 0 and "无需迁移" in second.stdout
    status = _cli("db", "status", url=empty_db)
    assert "未应用" not in status.stdout and "0002_readings.sql" in status.stdout
    seeded = _cli("seed", "demo", "--probes", "15000", url=empty_db)
    assert seeded.returncode == 0, seeded.stderr
    with db.connect(empty_db) as conn:
        assert conn.execute("SELECT count(*) FROM probes").fetchone()[0] >= 15000  # type: ignore[index]
    refresh = _cli("db", "refresh-aggregates", url=empty_db)
    assert refresh.returncode == 0 and "已刷新" in refresh.stdout


def test_cli_reports_bad_settings_in_chinese(empty_db: str) -> None:
    bad = _cli("db", "migrate", url="mysql://nope")
    assert bad.returncode == 2
    assert "COLDCHAIN_DATABASE_URL" in bad.stderr and "错误" in bad.stderr


def test_demo_ledger_is_booked_through_the_ledger_and_consistent(db_url: str) -> None:
    from coldchain.seed.vaccines import load_vaccines

    load_demo(db_url, plan_demo(40, seed=3))
    counts = load_vaccines(db_url, seed=3)
    assert counts["lots"] == 7 and counts["movements"] > 7 and counts["vaccinations"] > 0
    with db.connect(db_url) as conn:
        bad = conn.execute(
            """SELECT count(*) FROM stock_balances b
               WHERE b.on_hand < 0 OR b.on_hand <> (SELECT coalesce(sum(quantity), 0) FROM stock_movements m
                                                   WHERE m.unit_id = b.unit_id AND m.lot_id = b.lot_id)"""
        ).fetchone()
        sites = conn.execute("""SELECT count(DISTINCT unit_id) FROM stock_movements WHERE kind = 'usage'""").fetchone()
        in_transit = conn.execute("SELECT count(*) FROM stock_transfers WHERE state = 'in_transit'").fetchone()
    assert bad == (0,) and sites is not None and sites[0] > 0 and in_transit == (0,)
    with pytest.raises(RuntimeError, match="已有数据"):
        load_vaccines(db_url)
