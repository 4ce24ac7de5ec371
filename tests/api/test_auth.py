"""Sign-in (UM1, CM14, CM15) against a real database through the API: session cookies and CSRF,
bearer tokens, login_events, lock-out, expiry and logout, password changes, WeChat binding,
closed accounts — and that no password or hash is ever returned or logged."""

from __future__ import annotations

import hashlib
import logging
import secrets
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest
from apihelp import PASSWORD, World, api_client, bearer, error_code, web_session
from fakewechat import FakeWechat
from fastapi.testclient import TestClient

from coldchain.core import db
from registry.auth import LOCK_WINDOW, MAX_FAILURES, locked_until

API = "/api/v1"
SESSION = f"{API}/auth/session"
TOKEN = f"{API}/auth/token"
LOGOUT = f"{API}/auth/logout"
PASSWORD_URL = f"{API}/auth/password"
SETUP = f"{API}/auth/setup-password"
ME = f"{API}/users/me"
WECHAT = f"{API}/users/me/wechat"
WRONG = "Wrong#Pass2026"
NEW_PASSWORD = "Fresh#Cold2026"
BAD_CREDENTIALS = {"error": {"code": "bad_credentials", "message": "用户名或密码错误", "details": None}}


@pytest.fixture
def client(world: World, wechat: FakeWechat) -> Iterator[TestClient]:
    with api_client(world.url, wechat.env) as c:
        yield c


@pytest.fixture
def conn(db_url: str) -> Iterator[psycopg.Connection]:
    with db.connect(db_url, autocommit=True) as c:
        yield c


def sha256(text: str) -> bytes:
    return hashlib.sha256(text.encode()).digest()


def creds(username: str, password: str = PASSWORD) -> dict[str, str]:
    return {"username": username, "password": password}


def token_of(client: TestClient, username: str, password: str = PASSWORD) -> str:
    r = client.post(TOKEN, json=creds(username, password))
    assert r.status_code == 200, r.text
    return str(r.json()["access_token"])


def auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def set_cookies(response: Any) -> dict[str, tuple[str, set[str]]]:
    """Set-Cookie headers by name → (value, lower-cased attributes such as 'httponly', 'path=/')."""
    out: dict[str, tuple[str, set[str]]] = {}
    for header in response.headers.get_list("set-cookie"):
        first, *attrs = (part.strip() for part in header.split(";"))
        name, _, value = first.partition("=")
        out[name] = (value.strip('"'), {a.lower() for a in attrs})
    return out


def wechat_of(conn: psycopg.Connection, user_id: int) -> str | None:
    row = conn.execute("SELECT wechat_openid FROM users WHERE id = %s", (user_id,)).fetchone()
    assert row is not None
    return row[0]  # type: ignore[no-any-return]


def reasons(conn: psycopg.Connection, username: str) -> list[str | None]:
    rows = conn.execute("SELECT reason FROM login_events WHERE username = %s ORDER BY id", (username,)).fetchall()
    return [r[0] for r in rows]


def add_login_events(
    conn: psycopg.Connection, username: str, ages: list[timedelta], reason: str = "bad_password"
) -> None:
    """Failed attempts in the past: login_events refuses UPDATE, so old rows are inserted as such."""
    for age in ages:
        conn.execute(
            """INSERT INTO login_events (user_id, unit_id, username, ts, channel, success, reason)
               SELECT id, unit_id, username, now() - %s, 'web', false, %s FROM users WHERE username = %s""",
            (age, reason, username),
        )


def minutes(*values: float) -> list[timedelta]:
    return [timedelta(minutes=v) for v in values]


def wrong(client: TestClient, username: str, path: str = TOKEN) -> None:
    r = client.post(path, json=creds(username, WRONG))
    assert r.status_code == 401, r.text
    assert r.json() == BAD_CREDENTIALS


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
# login_events (CM14) and refusals


def test_every_attempt_is_a_login_event(
    client: TestClient, world: World, conn: psycopg.Connection, wechat: FakeWechat
) -> None:
    conn.execute("UPDATE users SET wechat_openid = 'oWx_T3_bound_00001' WHERE username = 'ba_T3'")
    row = conn.execute("SELECT count(*) FROM login_events").fetchone()
    assert row == (0,)
    assert client.post(SESSION, json=creds("ba_K1")).status_code == 200
    assert client.post(TOKEN, json=creds("ba_K1")).status_code == 200
    wrong(client, "ba_K1", TOKEN)
    wrong(client, "no_such_user", SESSION)
    wrong(client, "sa_C1", SESSION)
    assert client.post(SESSION, json=creds("ba_T3")).status_code == 200
    assert client.post(f"{API}/auth/wechat", json=wechat.code_for("oWx_T3_bound_00001")).status_code == 200

    rows = conn.execute(
        """SELECT username, user_id, unit_id, channel, success, reason, ip, user_agent, now() - ts < interval '1 minute'
           FROM login_events ORDER BY id"""
    ).fetchall()
    u, n = world.users, world.units
    assert rows == [
        ("ba_K1", u["ba_K1"], n["K1"], "web", True, None, None, "testclient", True),
        ("ba_K1", u["ba_K1"], n["K1"], "api", True, None, None, "testclient", True),
        ("ba_K1", u["ba_K1"], n["K1"], "api", False, "bad_password", None, "testclient", True),
        ("no_such_user", None, None, "web", False, "unknown_user", None, "testclient", True),
        ("sa_C1", u["sa_C1"], n["C1"], "web", False, "bad_password", None, "testclient", True),
        ("ba_T3", u["ba_T3"], n["T3"], "web", True, None, None, "testclient", True),
        ("ba_T3", u["ba_T3"], n["T3"], "wechat", True, None, None, "testclient", True),
    ]
    assert WRONG not in repr(rows)


def test_wrong_password_and_unknown_user_are_indistinguishable(client: TestClient, conn: psycopg.Connection) -> None:
    conn.execute("UPDATE users SET password_hash = NULL WHERE username = 'ba_K3'")  # no password set yet
    for path in (TOKEN, SESSION):
        responses = [
            client.post(path, json=creds("ba_K1", WRONG)),
            client.post(path, json=creds("no_such_user", PASSWORD)),
            client.post(path, json=creds("no_such_user", WRONG)),
            client.post(path, json=creds("ba_K3", PASSWORD)),
            client.post(path, json=creds("BA_K1", PASSWORD)),  # usernames are exact
        ]
        for r in responses:
            assert r.status_code == 401, r.text
            assert r.json() == BAD_CREDENTIALS
            assert "set-cookie" not in r.headers
            assert "retry-after" not in r.headers
        assert len({r.content for r in responses}) == 1
    assert reasons(conn, "no_such_user") == ["unknown_user"] * 4
    assert reasons(conn, "ba_K3") == ["bad_password"] * 2


# ---------------------------------------------------------------------------------------------
# Lock-out: 5 failures in 15 minutes

NOW = datetime(2026, 11, 23, 8, 0, tzinfo=UTC)


def ago(*mins: float) -> list[datetime]:
    return [NOW - timedelta(minutes=m) for m in mins]


def test_lock_out_constants() -> None:
    assert MAX_FAILURES == 5
    assert timedelta(minutes=15) == LOCK_WINDOW


def test_locked_until_counts_five_failures_within_the_window() -> None:
    assert locked_until([], NOW) is None
    assert locked_until(ago(1, 2, 3, 4), NOW) is None
    assert locked_until(ago(1, 2, 3, 4, 5), NOW) is not None
    assert locked_until(ago(5, 1, 3, 2, 4), NOW) == locked_until(ago(1, 2, 3, 4, 5), NOW)  # any order
    # A failure exactly 15 minutes old no longer counts; one a second younger does.
    assert locked_until([*ago(1, 2, 3, 4), NOW - LOCK_WINDOW], NOW) is None
    assert locked_until([*ago(1, 2, 3, 4), NOW - LOCK_WINDOW + timedelta(seconds=1)], NOW) is not None
    assert locked_until(ago(16, 17, 18, 19, 20, 30, 60), NOW) is None  # many, but all old
    assert locked_until([*ago(16, 17, 18, 19, 20), *ago(1, 2, 3, 4)], NOW) is None  # 4 recent
    # Moving the clock on instead of the failures back: 16 minutes later the same failures lock nothing.
    assert locked_until(ago(0, 0, 0, 0, 0), NOW) == NOW + LOCK_WINDOW
    assert locked_until(ago(0, 0, 0, 0, 0), NOW + timedelta(minutes=16)) is None


@pytest.mark.parametrize(
    ("failures", "until"),
    [
        (ago(0, 0, 0, 0, 0), NOW + timedelta(minutes=15)),  # a burst: 15 minutes
        (ago(5, 4, 3, 2, 1), NOW + timedelta(minutes=10)),  # the oldest of the five ages out first
        (ago(14, 12, 10, 8, 6), NOW + timedelta(minutes=1)),
        (ago(14, 12, 10, 8, 6, 1), NOW + timedelta(minutes=3)),  # six: the fifth most recent decides
    ],
    ids=["burst", "one-a-minute", "spread", "six"],
)
def test_locked_until_is_when_the_lock_really_ends(failures: list[datetime], until: datetime) -> None:
    """What Retry-After promises must hold: locked until that instant, free from it on (with no new
    failures, which a locked account cannot make: refused attempts are not counted)."""
    assert locked_until(failures, NOW) == until
    for t in (NOW, NOW + (until - NOW) / 2, until - timedelta(microseconds=1)):
        assert locked_until(failures, t) is not None, t
    assert locked_until(failures, until) is None


def test_five_wrong_passwords_lock_the_account(client: TestClient, world: World, conn: psycopg.Connection) -> None:
    for path in (SESSION, SESSION, SESSION, TOKEN, TOKEN):  # both channels count
        wrong(client, "ba_K1", path)
    for path in (TOKEN, SESSION):  # the right password is refused now, on either channel
        r = client.post(path, json=creds("ba_K1"))
        assert r.status_code == 429, r.text
        assert error_code(r) == "account_locked"
        retry = int(r.headers["retry-after"])
        assert 880 <= retry <= 899
        assert "连续 5 次密码错误" in r.json()["error"]["message"]
        assert "请 15 分钟后再试" in r.json()["error"]["message"]
        assert "set-cookie" not in r.headers
    r = client.post(TOKEN, json=creds("ba_K1", WRONG))  # a locked account tells a guesser nothing
    assert (r.status_code, error_code(r)) == (429, "account_locked")
    assert reasons(conn, "ba_K1") == ["bad_password"] * 5 + ["locked"] * 3
    assert conn.execute("SELECT count(*) FROM auth_sessions").fetchone() == (0,)
    # Only that account: another user of the same unit signs in.
    assert client.post(TOKEN, json=creds("ana_K1")).status_code == 200


def test_old_failures_do_not_lock(client: TestClient, world: World, conn: psycopg.Connection) -> None:
    add_login_events(conn, "ba_K1", minutes(16, 17, 18, 20, 30, 60))  # all older than 15 minutes
    add_login_events(conn, "ba_K1", minutes(1, 2, 3, 4))  # four recent ones
    r = client.post(TOKEN, json=creds("ba_K1"))
    assert r.status_code == 200, r.text

    # The same through the database's clock: five in the window lock, until the oldest leaves it.
    add_login_events(conn, "ba_T1", minutes(14, 12, 10, 8, 6))
    r = client.post(TOKEN, json=creds("ba_T1"))
    assert (r.status_code, error_code(r)) == (429, "account_locked")
    assert 50 <= int(r.headers["retry-after"]) <= 60
    assert "请 1 分钟后再试" in r.json()["error"]["message"] or "请 2 分钟后再试" in r.json()["error"]["message"]


def test_refused_attempts_do_not_prolong_the_lock(client: TestClient, world: World, conn: psycopg.Connection) -> None:
    add_login_events(conn, "ba_K1", minutes(10, 10, 10, 10, 10))
    first = client.post(TOKEN, json=creds("ba_K1", WRONG))
    assert first.status_code == 429
    for _ in range(3):  # knocking on a locked door
        assert client.post(TOKEN, json=creds("ba_K1", WRONG)).status_code == 429
    last = client.post(TOKEN, json=creds("ba_K1"))
    assert last.status_code == 429
    assert 290 <= int(last.headers["retry-after"]) <= int(first.headers["retry-after"]) <= 300
    assert reasons(conn, "ba_K1") == ["bad_password"] * 5 + ["locked"] * 5

    # Refusals that are not guesses never count: locked or closed attempts, however many.
    add_login_events(conn, "ba_T1", minutes(1, 1, 1, 1, 1, 1), reason="locked")
    add_login_events(conn, "ba_T1", minutes(1, 1, 1, 1, 1, 1), reason="closed")
    assert client.post(TOKEN, json=creds("ba_T1")).status_code == 200


def test_unknown_usernames_are_locked_out_too(client: TestClient, conn: psycopg.Connection) -> None:
    for _ in range(5):
        wrong(client, "ghost_user")
    r = client.post(TOKEN, json=creds("ghost_user"))
    assert (r.status_code, error_code(r)) == (429, "account_locked")  # the same as for a real account
    assert reasons(conn, "ghost_user") == ["unknown_user"] * 5 + ["locked"]


def test_a_success_resets_the_count(client: TestClient, conn: psycopg.Connection) -> None:
    for _ in range(4):
        wrong(client, "ba_K1")
    assert client.post(SESSION, json=creds("ba_K1")).status_code == 200  # a success, on the other channel
    for _ in range(4):  # eight failures in all, four since the success
        wrong(client, "ba_K1")
    wrong(client, "ba_K1")  # still 401, not 429: the fifth since the success
    r = client.post(TOKEN, json=creds("ba_K1"))
    assert (r.status_code, error_code(r)) == (429, "account_locked")
    assert reasons(conn, "ba_K1") == ["bad_password"] * 4 + [None] + ["bad_password"] * 5 + ["locked"]


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


def test_guesses_sent_at_the_same_moment_get_no_more_than_the_limit(client: TestClient, world: World) -> None:
    """Attempts for one username are serialised, so a burst of parallel guesses cannot all read
    'fewer than five failures' before any of them is recorded."""
    results: list[int] = []
    lock = threading.Lock()

    def guess() -> None:
        r = client.post(TOKEN, json=creds("ba_T2", WRONG))
        with lock:
            results.append(r.status_code)

    threads = [threading.Thread(target=guess) for _ in range(12)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert sorted(results) == [401] * MAX_FAILURES + [429] * (12 - MAX_FAILURES)


def test_re_entering_the_current_password_counts_towards_the_lock_out(
    client: TestClient, world: World, conn: psycopg.Connection
) -> None:
    """A stolen session must not become a way to guess the password behind it."""
    h = auth(token_of(client, "ba_T3"))
    for _ in range(MAX_FAILURES):
        r = client.post(
            "/api/v1/auth/password", json={"current_password": WRONG, "new_password": "New@Pass2026x"}, headers=h
        )
        assert (r.status_code, error_code(r)) == (403, "bad_credentials")
    r = client.post(
        "/api/v1/auth/password", json={"current_password": PASSWORD, "new_password": "New@Pass2026x"}, headers=h
    )
    assert (r.status_code, error_code(r)) == (429, "account_locked")
    assert client.post(TOKEN, json=creds("ba_T3")).status_code == 429
    assert reasons(conn, "ba_T3")[-2:] == ["locked", "locked"]
