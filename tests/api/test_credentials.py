"""What a user signs in with (UM1, CM15), against a real database through the API: no
password or hash is ever returned or logged; changing a password and setting one with a
single-use setup token; binding and unbinding WeChat."""

from __future__ import annotations

import logging
import secrets
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from apihelp import PASSWORD, World, api_client, bearer, error_code, web_session
from authhelp import (
    API,
    BAD_CREDENTIALS,
    ME,
    NEW_PASSWORD,
    PASSWORD_URL,
    SESSION,
    TOKEN,
    WECHAT,
    WRONG,
    auth,
    creds,
    sha256,
    token_of,
    wechat_of,
)
from fakewechat import FakeWechat
from fastapi.testclient import TestClient

from coldchain.core import db

SETUP = f"{API}/auth/setup-password"


@pytest.fixture
def client(world: World, wechat: FakeWechat) -> Iterator[TestClient]:
    with api_client(world.url, wechat.env) as c:
        yield c


@pytest.fixture
def conn(db_url: str) -> Iterator[psycopg.Connection]:
    with db.connect(db_url, autocommit=True) as c:
        yield c


# ---------------------------------------------------------------------------------------------
# Passwords: never returned, never logged; changing and setting them


def _keys(value: Any) -> set[str]:
    if isinstance(value, dict):
        return set(value) | {k for v in value.values() for k in _keys(v)}
    if isinstance(value, list):
        return {k for v in value for k in _keys(v)}
    return set()


def test_passwords_and_hashes_are_never_returned(client: TestClient, world: World, conn: psycopg.Connection) -> None:
    me = bearer(client, "ba_K1")
    r = client.post(PASSWORD_URL, json={"current_password": PASSWORD, "new_password": NEW_PASSWORD}, headers=me)
    assert r.status_code == 204, r.text
    assert r.content == b""
    sa = bearer(client, "sa_P")
    uid = world.users["ba_K1"]

    user_views = {
        "me": client.get(ME, headers=me),
        "list": client.get(f"{API}/users", params={"limit": 1000}, headers=sa),
        "one": client.get(f"{API}/users/{uid}", headers=sa),
    }
    audit = client.get(f"{API}/audit", params={"entity": "users", "limit": 1000}, headers=sa)
    for name, r in [*user_views.items(), ("audit", audit)]:
        assert r.status_code == 200, (name, r.text)
        assert "$argon2" not in r.text, name
        assert PASSWORD not in r.text and NEW_PASSWORD not in r.text, name
        assert not {"password", "password_hash", "hash"} & _keys(r.json()), name
    for name, r in user_views.items():
        assert not [k for k in _keys(r.json()) if "password" in k], name
    assert len(user_views["list"].json()) == len(world.users) == 18
    assert user_views["one"].json()["username"] == "ba_K1"

    rows = [a for a in audit.json() if a["entity_id"] == uid and a["action"] == "user.password"]
    assert len(rows) == 1
    assert rows[0]["actor_id"] == uid and rows[0]["op"] == "UPDATE"
    assert rows[0]["after"]["password_changed"] is True
    assert "password_changed" not in rows[0]["before"]
    # The insert rows of every user are in the log too, without their hashes.
    assert {a["entity_id"] for a in audit.json() if a["op"] == "INSERT"} == set(world.users.values())
    row = conn.execute(
        "SELECT count(*) FROM audit_log WHERE (before::text || after::text) LIKE '%$argon2%' "
        "OR before ? 'password_hash' OR after ? 'password_hash'"
    ).fetchone()
    assert row == (0,)


def test_passwords_are_never_logged(client: TestClient, caplog: pytest.LogCaptureFixture) -> None:
    secret = "Unique#Wrong-4711"
    too_long = "Aa1!" * 40
    with caplog.at_level(logging.DEBUG):
        assert client.post(SESSION, json=creds("ba_K1", secret)).status_code == 401
        assert client.post(SESSION, json=creds("ba_K1")).status_code == 200
        assert client.post(TOKEN, json=creds("no_such_user", secret)).status_code == 401
        rejected = client.post(TOKEN, json=creds("ba_K1", too_long))
        weak = client.post(
            PASSWORD_URL,
            json={"current_password": PASSWORD, "new_password": "weakpass"},
            headers=bearer(client, "ba_K1"),
        )
    assert caplog.records, "nothing captured: the check below would prove nothing"
    assert any("/api/v1/auth/session" in rec.getMessage() for rec in caplog.records)
    for rec in caplog.records:
        text = f"{rec.getMessage()} {rec.args!r} {rec.exc_text or ''} {vars(rec)!r}"
        for pw in (PASSWORD, secret, too_long, "weakpass"):
            assert pw not in text, (pw, rec.name, rec.getMessage())
    assert (rejected.status_code, error_code(rejected)) == (422, "invalid_request")  # longer than 128
    assert too_long not in rejected.text  # the refusal does not echo the input
    assert (weak.status_code, error_code(weak)) == (422, "invalid")
    assert "weakpass" not in weak.text


def test_change_password(client: TestClient, world: World, conn: psycopg.Connection) -> None:
    uid = world.users["ba_K1"]
    current, other = token_of(client, "ba_K1"), token_of(client, "ba_K1")
    web_session(client, "ba_K1")  # a browser session of the same user, in the client's cookie jar
    row = conn.execute("SELECT password_hash FROM users WHERE id = %s", (uid,)).fetchone()
    assert row is not None
    old_hash = row[0]

    r = client.post(PASSWORD_URL, json={"current_password": WRONG, "new_password": NEW_PASSWORD}, headers=auth(current))
    assert (r.status_code, error_code(r)) == (403, "bad_credentials")
    assert r.json()["error"]["message"] == "当前密码不正确"
    for weak, reason in [
        ("Ab1!xyz", "密码至少 8 位"),
        ("alllowercase1", "密码须包含大写字母、小写字母、数字、符号中的至少三类"),
        ("ALLUPPER#", "密码须包含大写字母、小写字母、数字、符号中的至少三类"),
        ("My_ba_K1#2026", "密码不能包含用户名"),
        ("my-BA_k1-2026", "密码不能包含用户名"),  # whatever the case
    ]:
        r = client.post(PASSWORD_URL, json={"current_password": PASSWORD, "new_password": weak}, headers=auth(current))
        assert r.status_code == 422, (weak, r.text)
        assert error_code(r) == "invalid"
        assert r.json()["error"]["message"] == reason
    assert conn.execute("SELECT password_hash FROM users WHERE id = %s", (uid,)).fetchone() == (old_hash,)
    assert client.get(ME, headers=auth(other)).status_code == 200  # refusals revoke nothing

    r = client.post(
        PASSWORD_URL, json={"current_password": PASSWORD, "new_password": NEW_PASSWORD}, headers=auth(current)
    )
    assert r.status_code == 204, r.text
    r = client.get(ME, headers=auth(other))
    assert (r.status_code, error_code(r)) == (401, "session_expired")
    assert client.get(ME).status_code == 401  # the browser session went too
    assert client.get(ME, headers=auth(current)).json()["username"] == "ba_K1"

    assert client.post(TOKEN, json=creds("ba_K1")).json() == BAD_CREDENTIALS
    assert client.post(TOKEN, json=creds("ba_K1", NEW_PASSWORD)).status_code == 200
    row = conn.execute(
        "SELECT password_hash, password_changed_at IS NOT NULL FROM users WHERE id = %s", (uid,)
    ).fetchone()
    assert row is not None
    assert row[0].startswith("$argon2id$") and row[0] != old_hash and row[1] is True
    live = conn.execute(
        "SELECT token_hash FROM auth_sessions WHERE user_id = %s AND revoked_at IS NULL ORDER BY id", (uid,)
    ).fetchall()
    assert live[0] == (sha256(current),) and len(live) == 2  # the current one and the new sign-in

    audit = conn.execute(
        "SELECT actor_id, op, before ? 'password_hash', after ? 'password_hash', after -> 'password_changed' "
        "FROM audit_log WHERE entity = 'users' AND entity_id = %s AND action = 'user.password'",
        (uid,),
    ).fetchall()
    assert audit == [(uid, "UPDATE", False, False, True)]


def test_setup_password_token_is_single_use(client: TestClient, world: World, conn: psycopg.Connection) -> None:
    uid = world.users["ba_T3"]
    conn.execute("UPDATE users SET password_hash = NULL WHERE id = %s", (uid,))  # a new user, no password yet
    token = secrets.token_urlsafe(32)
    conn.execute(
        """INSERT INTO auth_sessions (token_hash, user_id, kind, expires_at)
           VALUES (%s, %s, 'setup', now() + interval '72 hours')""",
        (sha256(token), uid),
    )
    assert client.post(TOKEN, json=creds("ba_T3")).json() == BAD_CREDENTIALS
    r = client.get(ME, headers=auth(token))  # a set-up token signs nobody in
    assert (r.status_code, error_code(r)) == (401, "session_expired")

    r = client.post(SETUP, json={"token": token, "new_password": "alllowercase1"})
    assert (r.status_code, error_code(r)) == (422, "invalid")
    r = client.post(SETUP, json={"token": token, "new_password": NEW_PASSWORD})
    assert r.status_code == 204, r.text
    assert client.post(TOKEN, json=creds("ba_T3", NEW_PASSWORD)).status_code == 200
    r = client.post(SETUP, json={"token": token, "new_password": "Another#Pass2026"})
    assert (r.status_code, error_code(r)) == (401, "setup_token_invalid")

    stale = secrets.token_urlsafe(32)
    conn.execute(
        """INSERT INTO auth_sessions (token_hash, user_id, kind, created_at, expires_at)
           VALUES (%s, %s, 'setup', now() - interval '73 hours', now() - interval '1 hour')""",
        (sha256(stale), uid),
    )
    r = client.post(SETUP, json={"token": stale, "new_password": "Another#Pass2026"})
    assert (r.status_code, error_code(r)) == (401, "setup_token_invalid")
    assert client.post(TOKEN, json=creds("ba_T3", NEW_PASSWORD)).status_code == 200

    audit = conn.execute(
        "SELECT actor_id, after -> 'password_changed', after ? 'password_hash' FROM audit_log "
        "WHERE entity = 'users' AND entity_id = %s AND action = 'user.password_setup'",
        (uid,),
    ).fetchall()
    assert audit == [(uid, True, False)]


# ---------------------------------------------------------------------------------------------
# WeChat binding (CM15)


def test_wechat_binding(client: TestClient, world: World, conn: psycopg.Connection, wechat: FakeWechat) -> None:
    t1, t2 = bearer(client, "ba_T1"), bearer(client, "ba_T2")
    u1, u2 = world.users["ba_T1"], world.users["ba_T2"]
    openid = "oWx_T1_abcdefghij0123"
    assert client.get(ME, headers=t1).json()["wechat_bound"] is False

    assert client.put(WECHAT, json=wechat.code_for(openid), headers=t1).status_code == 204
    assert client.get(ME, headers=t1).json()["wechat_bound"] is True
    row = conn.execute("SELECT wechat_openid, wechat_bound_at IS NOT NULL FROM users WHERE id = %s", (u1,)).fetchone()
    assert row == (openid, True)
    assert client.put(WECHAT, json=wechat.code_for(openid), headers=t1).status_code == 204  # again: no conflict

    r = client.put(WECHAT, json=wechat.code_for(openid), headers=t2)  # the same WeChat user, another account
    assert (r.status_code, error_code(r)) == (409, "wechat_taken")
    assert wechat_of(conn, u2) is None
    assert client.get(ME, headers=t2).json()["wechat_bound"] is False
    # The openid comes only from WeChat: a client cannot name one, nor reuse a code.
    r = client.put(WECHAT, json={"openid": "oWx_T2_chosen_by_me"}, headers=t2)
    assert (r.status_code, error_code(r)) == (422, "invalid_request")
    used = wechat.code_for("oWx_T2_own_000001")
    assert client.put(WECHAT, json=used, headers=t2).status_code == 204
    r = client.put(WECHAT, json=used, headers=t2)
    assert (r.status_code, error_code(r)) == (401, "wechat_code_invalid")
    for bad in ("short", "has spaces in it!", "x" * 129, ""):
        r = client.put(WECHAT, json={"code": bad}, headers=t2)
        assert (r.status_code, error_code(r)) == (422, "invalid_request"), bad
    assert wechat_of(conn, u2) == "oWx_T2_own_000001"
    assert client.delete(WECHAT, headers=t2).status_code == 204

    assert client.delete(WECHAT, headers=t1).status_code == 204
    assert client.get(ME, headers=t1).json()["wechat_bound"] is False
    row = conn.execute("SELECT wechat_openid, wechat_bound_at FROM users WHERE id = %s", (u1,)).fetchone()
    assert row == (None, None)
    assert client.put(WECHAT, json=wechat.code_for(openid), headers=t2).status_code == 204  # free again
    assert wechat_of(conn, u2) == openid

    rows = conn.execute(
        "SELECT action, actor_id, after ->> 'wechat_openid' FROM audit_log "
        "WHERE entity = 'users' AND entity_id = %s AND op = 'UPDATE' ORDER BY id",
        (u1,),
    ).fetchall()
    assert rows == [
        ("user.wechat_bind", u1, openid),
        ("user.wechat_bind", u1, openid),
        ("user.wechat_unbind", u1, None),
    ]
    # And the county reads it through the API.
    r = client.get(f"{API}/audit", params={"entity": "users", "entity_id": u1}, headers=bearer(client, "sa_K1"))
    assert r.status_code == 200, r.text
    assert [a["action"] for a in r.json() if a["op"] == "UPDATE"] == [
        "user.wechat_unbind",
        "user.wechat_bind",
        "user.wechat_bind",
    ]
    assert {a["actor_username"] for a in r.json() if a["op"] == "UPDATE"} == {"ba_T1"}
