"""A 2xx means committed (issue #15 §1): against the real app served by uvicorn, every kind of
write is visible to a second connection the moment its reply arrives; a commit that fails never
answers 2xx; a connection lost between the route's work and the commit loses nothing it
acknowledged and does not poison the pool.

The in-process TestClient cannot show this: it returns only once the whole ASGI call has ended,
dependency exits included. A real server and a real client can.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from apihelp import PASSWORD, World, live_server
from ledgerhelp import build_catalogue

from alarms.life import new_link
from coldchain.core import db

API = "/api/v1"


@pytest.fixture
def served(world: World) -> Iterator[httpx.Client]:
    with live_server(world.url) as base, httpx.Client(base_url=base + API, timeout=30) as client:
        yield client


def token(client: httpx.Client, username: str) -> dict[str, str]:
    r = client.post("/auth/token", json={"username": username, "password": PASSWORD})
    assert r.status_code == 200, r.text
    return {"Authorization": f"Bearer {r.json()['access_token']}"}


def one(world: World, query: str, params: tuple[Any, ...]) -> Any:
    """A second connection, opened after the reply: what any other client would see now."""
    with db.connect(world.url, autocommit=True) as conn:
        row = conn.execute(query, params).fetchone()
    return None if row is None else row[0]


def form2(world: World) -> dict[str, Any]:
    return {
        "form_type": 2,
        "unit_id": world.units["T1"],
        "submitter_name": "王芳",
        "submitter_phone": "029-88886666",
        "fridges": 1,
        "gateways": 0,
        "probes": 1,
    }


def test_a_token_works_at_once_and_its_session_is_stored(served: httpx.Client, world: World) -> None:
    # Each round signs in (an Argon2 verification, ~0.2 s): 50 rounds, not 200, keep the suite's time.
    failures = []
    for i in range(50):
        r = served.post("/auth/token", json={"username": "ba_T1", "password": PASSWORD})
        assert r.status_code == 200, r.text
        me = served.get("/users/me", headers={"Authorization": f"Bearer {r.json()['access_token']}"})
        if me.status_code != 200:
            failures.append((i, me.status_code, me.text[:80]))
    assert failures == []
    assert one(world, "SELECT count(*) FROM auth_sessions WHERE kind = 'api'", ()) == 50


def test_every_kind_of_write_is_visible_the_moment_it_is_answered(served: httpx.Client, world: World) -> None:
    t1, k1, p = token(served, "ba_T1"), token(served, "ba_K1"), token(served, "ba_P")
    for _ in range(40):
        r = served.post("/forms", json=form2(world), headers=t1)
        assert r.status_code == 201, r.text
        form = r.json()
        assert one(world, "SELECT status FROM forms WHERE id = %s", (form["id"],)) == "submitted"
        got = served.get(f"/forms/{form['id']}", headers=t1)
        assert got.status_code == 200, got.text
        step = served.post(f"/forms/{form['id']}/forward", json={"version": form["version"]}, headers=k1)
        assert step.status_code == 200, step.text
        assert one(world, "SELECT count(*) FROM form_steps WHERE form_id = %s", (form["id"],)) == 2

    cat = build_catalogue(world)
    for _ in range(20):
        r = served.post(
            "/stock/receipts",
            json={"supplier": "华北制药配送中心", "lines": [{"lot_id": cat.lots["hepb"], "quantity": 10}]},
            headers=p,
        )
        assert r.status_code == 201, r.text
        movement = r.json()[0]["id"]
        assert one(world, "SELECT quantity FROM stock_movements WHERE id = %s", (movement,)) == 10
    assert one(world, "SELECT on_hand FROM stock_balances WHERE lot_id = %s", (cat.lots["hepb"],)) == 200

    # One open alarm per compartment and kind at a time: ten different ones, all at T1's level 1.
    places = [(zone, kind) for zone in ("冷藏", "冷冻") for kind in ("high", "low", "no_data", "power", "door")]
    for i, (zone, kind) in enumerate(places):
        with db.connect(world.url) as conn:
            row = conn.execute(
                """INSERT INTO alarms (kind, severity, unit_id, equipment_id, compartment_id, condition_since, value)
                   VALUES (%s, 'critical', %s, %s, %s, now() - interval '5 minutes', 9.8) RETURNING id""",
                (kind, world.units["T1"], world.equipment["T1"], world.compartments[f"T1/{zone}"]),
            ).fetchone()
            assert row is not None
            conn.commit()
            link = new_link(conn, row[0], world.users["ba_T1"], 1) if i % 2 else None
            conn.commit()
        if link is None:  # the alarm page's button
            r = served.post(f"/alarms/{row[0]}/acknowledge", json={"on_site": True}, headers=t1)
        else:  # the WeChat confirmation page's button
            r = served.post("/alarm-links/confirm", json={"token": link, "comment": "已在现场"})
        assert r.status_code == 200, r.text
        assert one(world, "SELECT state FROM alarms WHERE id = %s", (row[0],)) == "acknowledged"


def test_a_commit_that_fails_is_never_answered_2xx(served: httpx.Client, world: World) -> None:
    """A deferred constraint fires at COMMIT, after the route has returned its 201 body."""
    with db.connect(world.url) as conn:
        conn.execute(
            """CREATE FUNCTION test_refuse_at_commit() RETURNS trigger LANGUAGE plpgsql AS $$
               BEGIN RAISE EXCEPTION '测试：提交时被延迟约束拒绝' USING ERRCODE = 'check_violation'; END $$"""
        )
        conn.execute(
            """CREATE CONSTRAINT TRIGGER forms_refuse_at_commit AFTER INSERT ON forms
               DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION test_refuse_at_commit()"""
        )
        conn.commit()
    t1 = token(served, "ba_T1")
    before = one(world, "SELECT count(*) FROM forms", ())
    for _ in range(10):
        r = served.post("/forms", json=form2(world), headers=t1)
        assert r.status_code == 422, r.text
        assert r.json()["error"]["message"] == "测试：提交时被延迟约束拒绝"
    assert one(world, "SELECT count(*) FROM forms", ()) == before


def test_a_connection_lost_before_the_commit_loses_nothing_acknowledged(served: httpx.Client, world: World) -> None:
    """The backend dies at COMMIT (a deferred trigger terminates it): the client gets an error,
    not a 201; the pool throws the dead connection away and the next requests are served."""
    t1 = token(served, "ba_T1")
    with db.connect(world.url) as conn:
        conn.execute(
            """CREATE FUNCTION test_die_at_commit() RETURNS trigger LANGUAGE plpgsql AS $$
               BEGIN PERFORM pg_terminate_backend(pg_backend_pid()); RETURN NULL; END $$"""
        )
        conn.execute(
            """CREATE CONSTRAINT TRIGGER forms_die_at_commit AFTER INSERT ON forms
               DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION test_die_at_commit()"""
        )
        conn.commit()
    before = one(world, "SELECT count(*) FROM forms", ())
    for _ in range(5):
        r = served.post("/forms", json=form2(world), headers=t1)
        assert r.status_code == 503, r.text
        assert r.json()["error"]["code"] == "database_unavailable"
    assert one(world, "SELECT count(*) FROM forms", ()) == before
    with db.connect(world.url) as conn:
        conn.execute("DROP TRIGGER forms_die_at_commit ON forms")
        conn.commit()
    created = []
    for _ in range(10):
        r = served.post("/forms", json=form2(world), headers=t1)
        assert r.status_code == 201, r.text
        created.append(r.json()["id"])
    assert one(world, "SELECT count(*) FROM forms WHERE id = ANY(%s)", (created,)) == 10


def test_idle_connections_killed_under_the_pool_are_replaced(served: httpx.Client, world: World) -> None:
    """The database restarts or a network path drops: the pool's idle connections are dead. The
    next requests must be served, not answered 500 on a dead connection."""
    t1 = token(served, "ba_T1")
    for _ in range(3):
        with db.connect(world.url, autocommit=True) as conn:
            killed = conn.execute(
                """SELECT count(*) FILTER (WHERE pg_terminate_backend(pid)) FROM pg_stat_activity
                   WHERE datname = current_database() AND application_name = 'coldchain-api'"""
            ).fetchone()
        assert killed is not None and killed[0] >= 1
        for _ in range(6):
            r = served.post("/forms", json=form2(world), headers=t1)
            assert r.status_code == 201, r.text
            assert one(world, "SELECT 1 FROM forms WHERE id = %s", (r.json()["id"],)) == 1
