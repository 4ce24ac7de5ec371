"""Forms 1–5 through the API (tests/api/test_form_workflow.py, test_equipment_forms.py,
test_user_forms.py): the ``env`` fixture (tests/apihelp.py's province and an API client, with a
bearer token per user), submitting a form and pushing it up the chain to be filed and applied, a
new fridge without probes, plain SQL look-ups; and the units the pure rules of
:mod:`registry.forms` are checked against without a database.

A pytest plugin (tests/conftest.py), so that ``env`` is a fixture in every forms module.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
from apihelp import World, api_client, bearer, build_world, error_code
from fastapi.testclient import TestClient

from coldchain.core import db
from registry.forms import UnitFact

API = "/api/v1"
T1_CHAIN = ("ba_K1", "ba_C1")  # who forwards a T1 form on its way to the province


@dataclass
class Env:
    world: World
    client: TestClient
    tokens: dict[str, dict[str, str]] = field(default_factory=dict)

    def auth(self, username: str) -> dict[str, str]:
        if username not in self.tokens:
            self.tokens[username] = bearer(self.client, username)
        return self.tokens[username]

    def post(self, path: str, username: str, body: dict[str, Any] | None = None) -> httpx.Response:
        return self.client.post(API + path, json=body, headers=self.auth(username))

    def get(self, path: str, username: str, params: dict[str, Any] | None = None) -> httpx.Response:
        return self.client.get(API + path, params=params, headers=self.auth(username))


@pytest.fixture
def env(db_url: str) -> Iterator[Env]:
    world = build_world(db_url)
    with api_client(db_url) as client:
        yield Env(world, client)


def common(w: World, unit: str = "T1", **fields: Any) -> dict[str, Any]:
    return {"unit_id": w.units[unit], "submitter_name": "王芳", "submitter_phone": "029-88886666", **fields}


def submit(env: Env, username: str, body: dict[str, Any]) -> dict[str, Any]:
    r = env.post("/forms", username, body)
    assert r.status_code == 201, r.text
    form: dict[str, Any] = r.json()
    assert form["status"] == "submitted"
    return form


def refused(env: Env, username: str, body: dict[str, Any]) -> dict[str, Any]:
    """Submits a form that must be refused as invalid; returns the error."""
    r = env.post("/forms", username, body)
    assert (r.status_code, error_code(r)) == (422, "form_invalid"), r.text
    error: dict[str, Any] = r.json()["error"]
    return error


def to_filed(
    env: Env, form: dict[str, Any], forwarders: Sequence[str] = T1_CHAIN, filer: str = "ba_P"
) -> dict[str, Any]:
    """Pushes a submitted form up the chain and has the province file it."""
    for username in forwarders:
        r = env.post(f"/forms/{form['id']}/forward", username, {"version": form["version"], "comment": "同意上报"})
        assert r.status_code == 200, r.text
        form = r.json()
    r = env.post(f"/forms/{form['id']}/file", filer, {"version": form["version"]})
    assert r.status_code == 200, r.text
    filed: dict[str, Any] = r.json()
    assert filed["status"] == "filed" and filed["current_unit_id"] is None and filed["filed_at"]
    return filed


def apply(env: Env, username: str, form: dict[str, Any]) -> httpx.Response:
    return env.post(f"/forms/{form['id']}/apply", username, {"version": form["version"]})


def applied(env: Env, username: str, form: dict[str, Any]) -> dict[str, Any]:
    r = apply(env, username, form)
    assert r.status_code == 200, r.text
    out: dict[str, Any] = r.json()
    assert out["status"] == "applied" and out["applied_by_username"] == username
    return out


def add_fridge(env: Env, modes: Sequence[str] = ("refrigerated",), site: str = "T1") -> list[int]:
    """A new fridge at ``site`` whose compartments have no probe yet; their ids."""
    with db.connect(env.world.url) as conn:
        row = conn.execute(
            "INSERT INTO equipment (unit_id, kind, name) VALUES (%s, 'medical_fridge', '新医用冷藏柜') RETURNING id",
            (env.world.units[site],),
        ).fetchone()
        assert row
        ids = []
        for mode in modes:
            c = conn.execute(
                "INSERT INTO compartments (equipment_id, name, mode) VALUES (%s, %s, %s) RETURNING id",
                (row[0], "冷藏" if mode == "refrigerated" else "冷冻", mode),
            ).fetchone()
            assert c
            ids.append(c[0])
        conn.commit()
    return ids


def one(env: Env, query: str, params: Sequence[Any] = ()) -> tuple[Any, ...]:
    with db.connect(env.world.url) as conn:
        row = conn.execute(query, params).fetchone()
    assert row is not None, query
    return row


def rows(env: Env, query: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
    with db.connect(env.world.url) as conn:
        return conn.execute(query, params).fetchall()


def probe_state(env: Env, serial: str) -> tuple[Any, ...]:
    return one(env, "SELECT status, unit_id FROM probes WHERE id = %s", (env.world.probes[serial],))


def execute(env: Env, query: str, params: Sequence[Any] = ()) -> None:
    with db.connect(env.world.url) as conn:
        conn.execute(query, params)
        conn.commit()


P = UnitFact(1, "陕西省疾控", "province", None)
K1 = UnitFact(3, "雁塔区疾控", "county", 2, "西安市疾控")
T1 = UnitFact(4, "电子城", "township", 3, "雁塔区疾控")
