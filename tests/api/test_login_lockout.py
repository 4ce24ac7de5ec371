"""Sign-in attempts (CM14) and the lock-out against a real database through the API: every
attempt is a login event, a wrong password and an unknown user are indistinguishable, and five
failures in 15 minutes lock the account (unknown usernames too) until the instant Retry-After
promises — refused attempts do not prolong it, a success resets the count, parallel guesses get no
more than the limit, and re-entering the current password counts too."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import psycopg
import pytest
from apihelp import PASSWORD, World, api_client, error_code
from authhelp import API, BAD_CREDENTIALS, SESSION, TOKEN, WRONG, auth, creds, token_of, wrong
from fakewechat import FakeWechat
from fastapi.testclient import TestClient

from coldchain.core import db
from registry.auth import LOCK_WINDOW, MAX_FAILURES, locked_until


@pytest.fixture
def client(world: World, wechat: FakeWechat) -> Iterator[TestClient]:
    with api_client(world.url, wechat.env) as c:
        yield c


@pytest.fixture
def conn(db_url: str) -> Iterator[psycopg.Connection]:
    with db.connect(db_url, autocommit=True) as c:
        yield c


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
