"""Sessions (UM1) against a real database through the API: the web session's HTTP-only
cookie and the CSRF token every cookie-authenticated write needs, bearer tokens that need none, a
token working only the way it was issued, expiry and logout, and a closed account losing its
sessions — with only SHA-256 digests of tokens stored."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest
from apihelp import PASSWORD, World, api_client, error_code, web_session
from authhelp import (
    API,
    ME,
    NEW_PASSWORD,
    PASSWORD_URL,
    SESSION,
    TOKEN,
    WECHAT,
    auth,
    creds,
    sha256,
    token_of,
    wechat_of,
    wrong,
)
from fakewechat import FakeWechat
from fastapi.testclient import TestClient

from coldchain.core import db

LOGOUT = f"{API}/auth/logout"


@pytest.fixture
def client(world: World, wechat: FakeWechat) -> Iterator[TestClient]:
    with api_client(world.url, wechat.env) as c:
        yield c


@pytest.fixture
def conn(db_url: str) -> Iterator[psycopg.Connection]:
    with db.connect(db_url, autocommit=True) as c:
        yield c


def set_cookies(response: Any) -> dict[str, tuple[str, set[str]]]:
    """Set-Cookie headers by name → (value, lower-cased attributes such as 'httponly', 'path=/')."""
    out: dict[str, tuple[str, set[str]]] = {}
    for header in response.headers.get_list("set-cookie"):
        first, *attrs = (part.strip() for part in header.split(";"))
        name, _, value = first.partition("=")
        out[name] = (value.strip('"'), {a.lower() for a in attrs})
    return out


# ---------------------------------------------------------------------------------------------
# Web sessions and CSRF


def test_web_sign_in_sets_http_only_session_cookie(client: TestClient, world: World, conn: psycopg.Connection) -> None:
    before = datetime.now(UTC)
    r = client.post(SESSION, json=creds("ba_K1"))
    assert r.status_code == 200, r.text
    body = r.json()
    assert set(body) == {"user_id", "expires_at", "csrf_token"}
    assert body["user_id"] == world.users["ba_K1"]
    expires = datetime.fromisoformat(body["expires_at"])
    assert before + timedelta(hours=12) - timedelta(seconds=5) < expires < datetime.now(UTC) + timedelta(hours=12)

    cookies = set_cookies(r)
    token, session_attrs = cookies["cc_session"]
    csrf, csrf_attrs = cookies["cc_csrf"]
    assert {"httponly", "samesite=strict", "path=/", "max-age=43200"} <= session_attrs
    assert "secure" not in session_attrs  # the default: the embedded demo serves plain HTTP
    assert "httponly" not in csrf_attrs  # the page must read it to send it back
    assert "samesite=strict" in csrf_attrs
    assert csrf == body["csrf_token"]
    assert len(token) >= 40 and token != csrf

    # Only SHA-256 digests are stored: a copy of the table signs nobody in.
    rows = conn.execute(
        "SELECT kind, token_hash, csrf_hash, expires_at - created_at, revoked_at FROM auth_sessions WHERE user_id = %s",
        (world.users["ba_K1"],),
    ).fetchall()
    assert rows == [("web", sha256(token), sha256(csrf), timedelta(hours=12), None)]
    assert token not in repr(rows) and csrf not in repr(rows)

    me = client.get(ME)  # the cookie from the jar, no header
    assert me.status_code == 200, me.text
    assert me.json()["username"] == "ba_K1"
    assert me.json()["unit_id"] == world.units["K1"]


def test_cookie_writes_need_the_sessions_csrf_token(
    client: TestClient, world: World, conn: psycopg.Connection, wechat: FakeWechat
) -> None:
    other_csrf = web_session(client, "ba_T1")["X-CSRF-Token"]  # another session's token, then replaced
    good = web_session(client, "ba_K1")
    assert client.cookies.get("cc_csrf") == good["X-CSRF-Token"]
    uid = world.users["ba_K1"]
    openid = "oWx_csrf_test_0001"
    body = wechat.code_for(openid)

    for headers in ({}, {"X-CSRF-Token": ""}, {"X-CSRF-Token": "x" * 43}, {"X-CSRF-Token": other_csrf}):
        r = client.put(WECHAT, json=body, headers=headers)
        assert r.status_code == 403, (headers, r.text)
        assert error_code(r) == "csrf_failed"
        assert "X-CSRF-Token" in r.json()["error"]["message"]
        assert wechat_of(conn, uid) is None
    assert wechat.requests == []  # refused before anything is done: the code was not even exchanged

    # Every cookie-authenticated write is covered, not only this route.
    r = client.delete(WECHAT)
    assert (r.status_code, error_code(r)) == (403, "csrf_failed")
    r = client.post(PASSWORD_URL, json={"current_password": PASSWORD, "new_password": NEW_PASSWORD})
    assert (r.status_code, error_code(r)) == (403, "csrf_failed")
    r = client.post(LOGOUT)
    assert (r.status_code, error_code(r)) == (403, "csrf_failed")
    assert client.get(ME).status_code == 200  # reads need no token; the session is still open

    r = client.put(WECHAT, json=body, headers=good)
    assert r.status_code == 204, r.text
    assert wechat_of(conn, uid) == openid
    assert client.get(ME).json()["wechat_bound"] is True
    assert client.delete(WECHAT, headers=good).status_code == 204
    assert wechat_of(conn, uid) is None


def test_bearer_writes_need_no_csrf_header(
    client: TestClient, world: World, conn: psycopg.Connection, wechat: FakeWechat
) -> None:
    r = client.post(TOKEN, json=creds("ba_T1"))
    assert r.status_code == 200, r.text
    assert set(r.json()) == {"access_token", "token_type", "expires_at"}
    assert r.json()["token_type"] == "bearer"
    assert "set-cookie" not in r.headers  # API clients get no cookie
    token = r.json()["access_token"]
    row = conn.execute(
        "SELECT kind, csrf_hash, expires_at - created_at FROM auth_sessions WHERE token_hash = %s", (sha256(token),)
    ).fetchone()
    assert row == ("api", None, timedelta(hours=24))

    r = client.put(WECHAT, json=wechat.code_for("oWx_bearer_000001"), headers=auth(token))
    assert r.status_code == 204, r.text
    assert wechat_of(conn, world.users["ba_T1"]) == "oWx_bearer_000001"


def test_tokens_only_work_the_way_they_were_issued(client: TestClient, world: World) -> None:
    api_token = token_of(client, "ba_K1")
    web_session(client, "ba_T1")
    web_token = client.cookies.get("cc_session")
    assert web_token
    client.cookies.clear()

    assert client.get(ME).status_code == 401
    assert error_code(client.get(ME)) == "unauthenticated"
    r = client.get(ME, headers={"Cookie": f"cc_session={api_token}"})  # a bearer token is not a session cookie
    assert (r.status_code, error_code(r)) == (401, "session_expired")
    r = client.get(ME, headers=auth(web_token))  # nor a session cookie a bearer token
    assert (r.status_code, error_code(r)) == (401, "session_expired")
    assert r.headers["www-authenticate"] == "Bearer"
    assert client.get(ME, headers=auth(api_token)).json()["username"] == "ba_K1"
    assert client.get(ME, headers={"Cookie": f"cc_session={web_token}"}).json()["username"] == "ba_T1"


# ---------------------------------------------------------------------------------------------
# Expiry and logout


def _expire(conn: psycopg.Connection, token: str, expires_in: str) -> None:
    # created_at goes back too: a session must expire after it was made (CHECK).
    cur = conn.execute(
        """UPDATE auth_sessions SET created_at = now() - interval '30 hours', expires_at = now() + %s::interval
           WHERE token_hash = %s""",
        (expires_in, sha256(token)),
    )
    assert cur.rowcount == 1


def test_tokens_and_sessions_expire(
    client: TestClient, world: World, conn: psycopg.Connection, wechat: FakeWechat
) -> None:
    token = token_of(client, "ba_K1")
    _expire(conn, token, "1 minute")
    assert client.get(ME, headers=auth(token)).status_code == 200  # not yet
    _expire(conn, token, "-1 second")
    r = client.get(ME, headers=auth(token))
    assert (r.status_code, error_code(r)) == (401, "session_expired")
    assert r.headers["www-authenticate"] == "Bearer"
    assert client.put(WECHAT, json=wechat.code_for("oWx_expired_00001"), headers=auth(token)).status_code == 401
    assert wechat_of(conn, world.users["ba_K1"]) is None

    csrf = web_session(client, "ba_T1")
    cookie = client.cookies.get("cc_session")
    assert cookie
    assert client.get(ME).status_code == 200
    _expire(conn, cookie, "-1 second")
    r = client.get(ME)
    assert (r.status_code, error_code(r)) == (401, "session_expired")
    r = client.put(WECHAT, json=wechat.code_for("oWx_expired_00002"), headers=csrf)
    assert (r.status_code, error_code(r)) == (401, "session_expired")
    assert wechat.requests == []


def test_logout_revokes_that_token_only(client: TestClient, world: World, conn: psycopg.Connection) -> None:
    a, b = token_of(client, "ba_K1"), token_of(client, "ba_K1")
    r = client.post(LOGOUT, headers=auth(a))
    assert r.status_code == 204, r.text
    r = client.get(ME, headers=auth(a))
    assert (r.status_code, error_code(r)) == (401, "session_expired")
    assert client.post(LOGOUT, headers=auth(a)).status_code == 401
    assert client.get(ME, headers=auth(b)).status_code == 200
    rows = conn.execute(
        "SELECT token_hash, revoked_at IS NOT NULL FROM auth_sessions WHERE user_id = %s ORDER BY id",
        (world.users["ba_K1"],),
    ).fetchall()
    assert rows == [(sha256(a), True), (sha256(b), False)]


def test_web_logout_clears_the_cookies_and_ends_the_session(client: TestClient) -> None:
    csrf = web_session(client, "ba_K1")
    cookie = client.cookies.get("cc_session")
    assert cookie
    r = client.post(LOGOUT, headers=csrf)
    assert r.status_code == 204, r.text
    cleared = set_cookies(r)
    assert cleared["cc_session"][0] == "" and "max-age=0" in cleared["cc_session"][1]
    assert cleared["cc_csrf"][0] == "" and "max-age=0" in cleared["cc_csrf"][1]
    assert client.cookies.get("cc_session") is None
    r = client.get(ME, headers={"Cookie": f"cc_session={cookie}"})  # the old cookie, replayed
    assert (r.status_code, error_code(r)) == (401, "session_expired")


# ---------------------------------------------------------------------------------------------
# Closed accounts


@pytest.mark.parametrize("status", ["closed", "deleted"])
def test_closed_user_cannot_sign_in_and_loses_their_sessions(
    client: TestClient, world: World, conn: psycopg.Connection, status: str
) -> None:
    uid = world.users["ba_K1"]
    token = token_of(client, "ba_K1")
    web_session(client, "ba_K1")
    assert client.get(ME, headers=auth(token)).status_code == 200
    conn.execute("UPDATE users SET status = %s, closed_at = now() WHERE id = %s", (status, uid))

    for path in (TOKEN, SESSION):
        r = client.post(path, json=creds("ba_K1"))
        assert (r.status_code, error_code(r)) == (403, "account_closed"), path
        assert "set-cookie" not in r.headers
    wrong(client, "ba_K1")  # a wrong password says nothing about the account's state
    r = client.get(ME, headers=auth(token))
    assert (r.status_code, error_code(r)) == (401, "session_expired")
    r = client.get(ME)  # the browser session
    assert (r.status_code, error_code(r)) == (401, "session_expired")

    rows = conn.execute(
        "SELECT channel, success, reason FROM login_events WHERE user_id = %s ORDER BY id", (uid,)
    ).fetchall()
    assert rows == [
        ("api", True, None),
        ("web", True, None),
        ("api", False, "closed"),
        ("web", False, "closed"),
        ("api", False, "bad_password"),
    ]
    assert client.post(TOKEN, json=creds("ana_K1")).status_code == 200  # others of the unit are unaffected
