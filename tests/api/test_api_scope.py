"""Jurisdiction (UM1, RS1) through the API: a user sees and changes only their own unit and the
units below it, whatever id they try; read-only roles never write; concurrent edits of one
device lose nothing (optimistic version check)."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from apihelp import World, api_client, bearer, error_code
from fastapi.testclient import TestClient

from coldchain.core import db


@pytest.fixture
def client(world: World) -> Iterator[TestClient]:
    with api_client(world.url) as c:
        yield c


def _scope(world: World, unit_key: str) -> set[int]:
    with db.connect(world.url) as conn:
        rows = conn.execute(
            "SELECT descendant_id FROM unit_tree WHERE ancestor_id = %s", (world.units[unit_key],)
        ).fetchall()
    return {r[0] for r in rows}


def _ids_by_unit(world: World, query: str) -> dict[int, int | None]:
    """id → owning unit, for every row of a resource (all of them, in anyone's jurisdiction)."""
    with db.connect(world.url) as conn:
        return {r[0]: r[1] for r in conn.execute(query).fetchall()}


# Each resource: the GET path template and the SQL giving every id with its owning unit.
RESOURCES: dict[str, tuple[str, str]] = {
    "units": ("/api/v1/units/{}", "SELECT id, id FROM units"),
    "equipment": ("/api/v1/equipment/{}", "SELECT id, unit_id FROM equipment"),
    "equipment history": ("/api/v1/equipment/{}/history", "SELECT id, unit_id FROM equipment"),
    "compartments": (
        "/api/v1/compartments/{}",
        "SELECT c.id, e.unit_id FROM compartments c JOIN equipment e ON e.id = c.equipment_id",
    ),
    "compartment readings": (
        "/api/v1/compartments/{}/readings",
        "SELECT c.id, e.unit_id FROM compartments c JOIN equipment e ON e.id = c.equipment_id",
    ),
    "gateways": ("/api/v1/gateways/{}", "SELECT id, unit_id FROM gateways"),
    "probes": ("/api/v1/probes/{}", "SELECT id, unit_id FROM probes"),
    "probe readings": ("/api/v1/probes/{}/readings", "SELECT id, unit_id FROM probes"),
    "users": ("/api/v1/users/{}", "SELECT id, unit_id FROM users"),
    "responsibles": ("/api/v1/units/{}/responsibles", "SELECT id, id FROM units"),
}


@pytest.mark.parametrize("who", ["sa_K2", "ba_K2", "ba_T1", "sa_C1", "ana_K1"])
@pytest.mark.parametrize("resource", list(RESOURCES))
def test_every_id_is_visible_exactly_within_the_jurisdiction(
    client: TestClient, world: World, who: str, resource: str
) -> None:
    path, query = RESOURCES[resource]
    owners = _ids_by_unit(world, query)
    unit_key = who.split("_", 1)[1]
    scope = _scope(world, unit_key)
    headers = bearer(client, who)
    seen: dict[int, int] = {}
    for item in [*range(1, max(owners) + 3), 2**40]:
        r = client.get(path.format(item), headers=headers)
        seen[item] = r.status_code
        if r.status_code == 404:
            assert error_code(r) == "not_found"
    visible = {i for i, s in seen.items() if s == 200}
    assert visible == {i for i, unit in owners.items() if unit in scope}
    assert set(seen.values()) <= {200, 404}, seen


def test_another_countys_resources_are_not_found_for_writes_and_filters(client: TestClient, world: World) -> None:
    h = bearer(client, "sa_K2")
    t1, k1 = world.units["T1"], world.units["K1"]
    fridge, cold = world.equipment["T1"], world.compartments["T1/冷藏"]
    gateway, probe = world.gateways["10001"], world.probes["108601"]
    attempts: list[tuple[str, str, dict[str, Any] | None]] = [
        ("PATCH", f"/api/v1/units/{t1}", {"version": 1, "name": "改名"}),
        ("PATCH", f"/api/v1/equipment/{fridge}", {"version": 1, "brand": "美菱"}),
        ("PATCH", f"/api/v1/compartments/{cold}", {"version": 1, "t_max": 7.5}),
        ("PATCH", f"/api/v1/gateways/{gateway}", {"version": 1, "vendor": "华图"}),
        ("PATCH", f"/api/v1/probes/{probe}", {"version": 1, "vendor": "华图"}),
        (
            "POST",
            "/api/v1/equipment",
            {
                "unit_id": t1,
                "kind": "fridge",
                "name": "冰箱",
                "compartments": [{"name": "冷藏", "mode": "refrigerated"}],
            },
        ),
        ("POST", "/api/v1/probes", {"serial": "777001", "unit_id": k1}),
        ("PUT", f"/api/v1/units/{t1}/responsibles", {"level1": [1], "level2": [1], "level3": [1]}),
        ("GET", f"/api/v1/equipment?unit_id={t1}", None),
        ("GET", f"/api/v1/probes?unit_id={t1}", None),
        ("GET", f"/api/v1/gateways?unit_id={t1}", None),
        ("GET", f"/api/v1/bindings?unit_id={t1}", None),
        ("GET", f"/api/v1/users?unit_id={t1}", None),
        ("GET", f"/api/v1/units?parent_id={k1}", None),
        ("GET", f"/api/v1/warranties?unit_id={t1}", None),
        ("GET", f"/api/v1/audit?unit_id={t1}", None),
        ("GET", f"/api/v1/login-compliance/daily?unit_id={t1}", None),
        ("GET", f"/api/v1/login-compliance/monthly?unit_id={k1}", None),
    ]
    for method, path, body in attempts:
        r = client.request(method, path, json=body, headers=h)
        assert r.status_code == 404, (method, path, r.text)
        assert error_code(r) == "not_found"
    # Nothing was changed by any of it.
    with db.connect(world.url) as conn:
        assert conn.execute("SELECT name FROM units WHERE id = %s", (t1,)).fetchone() == ("电子城街道社区卫生服务中心",)
        assert conn.execute("SELECT brand FROM equipment WHERE id = %s", (fridge,)).fetchone() == ("海尔",)
        assert conn.execute("SELECT count(*) FROM probes WHERE serial = '777001'").fetchone() == (0,)


def test_unfiltered_lists_hold_only_the_jurisdiction(client: TestClient, world: World) -> None:
    h = bearer(client, "ba_K2")
    k2_scope = {world.units["K2"], world.units["T2"]}
    assert {u["id"] for u in client.get("/api/v1/units", headers=h).json()} == k2_scope
    assert {e["unit_id"] for e in client.get("/api/v1/equipment", headers=h).json()} == {world.units["T2"]}
    assert {p["serial"] for p in client.get("/api/v1/probes", headers=h).json()} == {"208601", "208604", "208602"}
    assert {b["unit_id"] for b in client.get("/api/v1/bindings", headers=h).json()} == {world.units["T2"]}
    assert {u["unit_id"] for u in client.get("/api/v1/users", headers=h).json()} <= k2_scope
    assert {w["serial"] for w in client.get("/api/v1/warranties?days=30", headers=h).json()} == {"20001", "208602"}
    sa = bearer(client, "sa_K2")
    audit_units = {a["unit_id"] for a in client.get("/api/v1/audit?limit=1000", headers=sa).json()}
    assert audit_units and audit_units <= k2_scope


def test_the_province_sees_everything_a_city_only_its_own(client: TestClient, world: World) -> None:
    everything = set(world.units.values())
    assert {u["id"] for u in client.get("/api/v1/units", headers=bearer(client, "sup_P")).json()} == everything
    c1 = {u["id"] for u in client.get("/api/v1/units", headers=bearer(client, "ba_C1")).json()}
    assert c1 == {world.units[k] for k in ("C1", "K1", "T1")}
    # 韩城 reports to the province, not to 渭南, although its code starts with 6105.
    c2 = {u["id"] for u in client.get("/api/v1/units", headers=bearer(client, "ba_C2")).json()}
    assert world.units["K3"] not in c2


@pytest.mark.parametrize("who", ["sup_P", "ana_P", "ana_K1"])
def test_read_only_roles_cannot_write_even_inside_their_jurisdiction(
    client: TestClient, world: World, who: str
) -> None:
    h = bearer(client, who)
    fridge = world.equipment["T1"]
    assert client.get(f"/api/v1/equipment/{fridge}", headers=h).status_code == 200
    r = client.patch(f"/api/v1/equipment/{fridge}", json={"version": 1, "brand": "美菱"}, headers=h)
    assert r.status_code == 403 and error_code(r) == "forbidden"
    r = client.post(
        "/api/v1/equipment",
        json={
            "unit_id": world.units["T1"],
            "kind": "fridge",
            "name": "冰箱",
            "compartments": [{"name": "冷藏", "mode": "refrigerated"}],
        },
        headers=h,
    )
    assert r.status_code == 403


def test_sites_do_not_register_hardware(client: TestClient, world: World) -> None:
    r = client.post(
        "/api/v1/probes", json={"serial": "555001", "unit_id": world.units["T1"]}, headers=bearer(client, "ba_T1")
    )
    assert r.status_code == 403 and "县级及以上" in r.json()["error"]["message"]
    r = client.post(
        "/api/v1/probes", json={"serial": "555001", "unit_id": world.units["T1"]}, headers=bearer(client, "ba_K1")
    )
    assert r.status_code == 201 and r.json()["unit_id"] == world.units["T1"]


def test_two_administrators_editing_one_device_lose_no_update(client: TestClient, world: World) -> None:
    """Both read version 1 and save at the same moment: one wins, the other gets a conflict that
    names the current version, and the winner's change is what is stored."""
    fridge = world.equipment["T1"]
    heads = {"sa_K1": bearer(client, "sa_K1"), "ba_T1": bearer(client, "ba_T1")}
    results: dict[str, Any] = {}
    # Hold the row so that both requests are inside their UPDATE before either can finish.
    with db.connect(world.url) as blocker:
        blocker.execute("SELECT 1 FROM equipment WHERE id = %s FOR UPDATE", (fridge,))

        def edit(who: str, brand: str) -> None:
            results[who] = client.patch(
                f"/api/v1/equipment/{fridge}", json={"version": 1, "brand": brand}, headers=heads[who]
            )

        threads = [threading.Thread(target=edit, args=a) for a in (("sa_K1", "美菱"), ("ba_T1", "海信"))]
        for t in threads:
            t.start()
        _wait_for_lock_waiters(world.url, 2)
        blocker.commit()
        for t in threads:
            t.join(30)
    statuses = sorted(r.status_code for r in results.values())
    assert statuses == [200, 409]
    winner = next(w for w, r in results.items() if r.status_code == 200)
    loser = next(w for w, r in results.items() if r.status_code == 409)
    assert error_code(results[loser]) == "version_conflict"
    assert results[loser].json()["error"]["details"] == {"current_version": 2, "your_version": 1}
    stored = client.get(f"/api/v1/equipment/{fridge}", headers=heads["sa_K1"]).json()
    assert stored["version"] == 2
    assert stored["brand"] == results[winner].json()["brand"]
    # The audit log holds exactly one change, by the winner.
    audit = client.get(f"/api/v1/audit?entity=equipment&entity_id={fridge}", headers=heads["sa_K1"]).json()
    updates = [a for a in audit if a["op"] == "UPDATE"]
    assert len(updates) == 1 and updates[0]["actor_username"] == winner


def _wait_for_lock_waiters(url: str, n: int) -> None:
    import time

    deadline = time.monotonic() + 20
    with db.connect(url, autocommit=True) as conn:
        while time.monotonic() < deadline:
            row = conn.execute(
                """SELECT count(*) FROM pg_stat_activity
                   WHERE datname = current_database() AND wait_event_type = 'Lock'
                     AND application_name = 'coldchain-api'"""
            ).fetchone()
            if row and row[0] >= n:
                return
            time.sleep(0.05)
    raise AssertionError("两个请求没有同时等待行锁")


def test_every_write_is_in_the_audit_log_with_before_and_after(client: TestClient, world: World) -> None:
    h = bearer(client, "sa_K1")
    cold = world.compartments["T1/冷藏"]
    r = client.patch(f"/api/v1/compartments/{cold}", json={"version": 1, "t_max": 7.5}, headers=h)
    assert r.status_code == 200 and r.json()["t_max"] == 7.5
    rows = client.get(f"/api/v1/audit?entity=compartments&entity_id={cold}", headers=h).json()
    assert rows[0]["action"] == "compartment.update"
    assert rows[0]["actor_username"] == "sa_K1"
    assert rows[0]["before"]["t_max"] == 8.0 and rows[0]["after"]["t_max"] == 7.5
    # The level above reads it; the site itself (no system administrator) does not.
    assert client.get("/api/v1/audit", headers=bearer(client, "ba_T1")).status_code == 403
    assert any(a["entity_id"] == cold for a in client.get("/api/v1/audit", headers=bearer(client, "sa_C1")).json())
    # Append-only, whoever tries.
    with db.connect(world.url) as conn, pytest.raises(psycopg.errors.RestrictViolation):
        conn.execute("UPDATE audit_log SET action = 'x'")
    with db.connect(world.url) as conn, pytest.raises(psycopg.errors.RestrictViolation):
        conn.execute("DELETE FROM audit_log")


def test_registry_history_cannot_be_deleted(world: World) -> None:
    with db.connect(world.url) as conn:
        conn.execute("INSERT INTO login_events (username, channel, success) VALUES ('sa_K1', 'web', true)")
        conn.commit()
    for table in ("probe_bindings", "equipment", "users", "login_events"):
        with db.connect(world.url) as conn, pytest.raises(psycopg.errors.RestrictViolation):
            conn.execute(f"DELETE FROM {table}")  # noqa: S608 — fixed table names
