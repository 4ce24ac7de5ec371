"""WeChat sign-in and binding (CM14, CM15) through the official account's web authorisation.

WeChat's API server is played by tests/fakewechat.py; everything on our side — the database,
the login record, the session — is real.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from apihelp import World, api_client, bearer, error_code
from fakewechat import APPID, FakeWechat
from fastapi.testclient import TestClient

from coldchain import services
from coldchain.core import db


@pytest.fixture
def client(world: World, wechat: FakeWechat) -> Iterator[TestClient]:
    with api_client(world.url, wechat.env) as c:
        yield c


def test_bind_then_sign_in_from_wechat_is_recorded_on_the_wechat_channel(
    client: TestClient, world: World, wechat: FakeWechat
) -> None:
    h = bearer(client, "ba_T1")
    r = client.put(
        "/api/v1/users/me/wechat", json={"code": wechat.issue("code-bind-0001", "oT1-openid-0001")}, headers=h
    )
    assert r.status_code == 204, r.text
    assert client.get("/api/v1/users/me", headers=h).json()["wechat_bound"] is True
    with db.connect(world.url) as conn:
        assert conn.execute("SELECT wechat_openid FROM users WHERE username = 'ba_T1'").fetchone() == (
            "oT1-openid-0001",
        )

    r = client.post("/api/v1/auth/wechat", json={"code": wechat.issue("code-login-0001", "oT1-openid-0001")})
    assert r.status_code == 200, r.text
    assert r.json()["user_id"] == world.users["ba_T1"]
    assert client.get("/api/v1/users/me").json()["username"] == "ba_T1"  # the session cookie works
    with db.connect(world.url) as conn:
        last = conn.execute(
            "SELECT channel, success, unit_id FROM login_events WHERE username = 'ba_T1' ORDER BY id DESC LIMIT 1"
        ).fetchone()
    assert last == ("wechat", True, world.units["T1"])
    # Web and WeChat sign-ins both count for the site's CM14 check; the API token one does not.
    day = client.get(f"/api/v1/login-compliance/daily?unit_id={world.units['T1']}", headers=h).json()
    assert [(d["code"], d["sign_ins"]) for d in day] == [("6101130001", 1)]


def test_a_code_is_good_once_and_an_unbound_wechat_is_told_to_bind(
    client: TestClient, world: World, wechat: FakeWechat
) -> None:
    code = wechat.issue("code-unbound-01", "o-nobody-0001")
    r = client.post("/api/v1/auth/wechat", json={"code": code})
    assert r.status_code == 401 and error_code(r) == "wechat_not_bound"
    r = client.post("/api/v1/auth/wechat", json={"code": code})  # used
    assert r.status_code == 401 and error_code(r) == "wechat_code_invalid"
    assert wechat.requests[0]["appid"] == [APPID]


def test_one_wechat_binds_one_account(client: TestClient, world: World, wechat: FakeWechat) -> None:
    first = client.put(
        "/api/v1/users/me/wechat",
        json={"code": wechat.issue("code-a-000001", "o-shared-0001")},
        headers=bearer(client, "ba_T1"),
    )
    assert first.status_code == 204
    second = client.put(
        "/api/v1/users/me/wechat",
        json={"code": wechat.issue("code-b-000001", "o-shared-0001")},
        headers=bearer(client, "ba_K1"),
    )
    assert second.status_code == 409 and error_code(second) == "wechat_taken"


def test_wechat_down_or_not_configured_is_said_plainly(world: World, wechat: FakeWechat) -> None:
    dead = f"http://127.0.0.1:{services.free_port()}"
    env = {**wechat.env, "COLDCHAIN_WECHAT_API_BASE": dead}
    with api_client(world.url, env) as c:
        r = c.post("/api/v1/auth/wechat", json={"code": "code-any-00001"})
        assert r.status_code == 502 and error_code(r) == "wechat_unreachable"
    with api_client(world.url) as c:
        r = c.post("/api/v1/auth/wechat", json={"code": "code-any-00001"})
        assert r.status_code == 503 and error_code(r) == "wechat_not_configured"


def test_a_closed_account_cannot_sign_in_from_wechat(client: TestClient, world: World, wechat: FakeWechat) -> None:
    assert (
        client.put(
            "/api/v1/users/me/wechat",
            json={"code": wechat.issue("code-c-000001", "o-closed-0001")},
            headers=bearer(client, "ba_T1"),
        ).status_code
        == 204
    )
    with db.connect(world.url) as conn:
        conn.execute("UPDATE users SET status = 'closed' WHERE username = 'ba_T1'")
        conn.commit()
    r = client.post("/api/v1/auth/wechat", json={"code": wechat.issue("code-c-000002", "o-closed-0001")})
    assert r.status_code == 403 and error_code(r) == "account_closed"
