"""Sign-in and passwords: argon2id hashes, lock-out after repeated failures, signing in by
password or by WeChat, and changing or first setting a password.

Every attempt, good or bad, is a row of ``login_events`` (CM14 counts the good ones of each
site; the lock-out counts the bad ones), so the attempt record and the lock-out can never
disagree. The sessions a sign-in opens are :mod:`registry.sessions`.
"""

from __future__ import annotations

import secrets
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any, Literal

import psycopg
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

from coldchain.core.db import fetch_all, fetch_one, set_action, set_actor
from coldchain.core.errors import Refused, invalid
from registry.sessions import SessionKind, SignedIn, claim_setup_token, open_session, revoke_session, revoke_sessions

MAX_FAILURES = 5
LOCK_WINDOW = timedelta(minutes=15)
Channel = Literal["web", "wechat", "api"]

_hasher = PasswordHasher()  # argon2id with the library's current parameters
# Verified against when the username does not exist, so that a wrong username and a wrong
# password take the same time and cannot be told apart.
_DUMMY_HASH = _hasher.hash(secrets.token_urlsafe(16))


def hash_password(password: str) -> str:
    return _hasher.hash(password)


def verify_password(stored: str | None, password: str) -> bool:
    """False for a missing hash too, after the same work as a real check."""
    try:
        _hasher.verify(stored or _DUMMY_HASH, password)
    except (VerifyMismatchError, VerificationError, InvalidHashError):
        return False
    return stored is not None


def password_problem(password: str, username: str) -> str | None:
    """The reason a new password is refused, or None. Rules a site can follow without a manual."""
    if len(password) < 8:
        return "密码至少 8 位"
    if len(password) > 128:
        return "密码不能超过 128 位"
    classes = sum(
        any(test(c) for c in password) for test in (str.islower, str.isupper, str.isdigit, lambda c: not c.isalnum())
    )
    if classes < 3:
        return "密码须包含大写字母、小写字母、数字、符号中的至少三类"
    if username.lower() in password.lower():
        return "密码不能包含用户名"
    return None


def locked_until(failures: Sequence[datetime], now: datetime) -> datetime | None:
    """Failed attempts since the last success → until when sign-in is refused (None: not locked).

    Attempts refused because of the lock are not failures here, so a lock ends when the fifth-last
    real guess leaves LOCK_WINDOW and an attacker cannot keep the owner locked out merely by knocking."""
    recent = sorted(f for f in failures if now - f < LOCK_WINDOW)
    if len(recent) < MAX_FAILURES:
        return None
    return recent[-MAX_FAILURES] + LOCK_WINDOW  # the count drops below MAX_FAILURES then


_USER = """
SELECT u.id, u.unit_id, u.status, u.password_hash FROM users u WHERE u.username = %(username)s
"""
_WECHAT_USER = "SELECT id, unit_id, username, status FROM users WHERE wechat_openid = %(o)s"
_SET_PASSWORD = """
UPDATE users SET password_hash = %s, password_changed_at = now(), version = version + 1 WHERE id = %s
"""
_FAILURES = """
SELECT ts FROM login_events
WHERE username = %(username)s AND NOT success AND reason IN ('bad_password', 'unknown_user')
  AND ts > now() - %(window)s
  AND ts > coalesce((SELECT max(ts) FROM login_events WHERE username = %(username)s AND success), '-infinity')
"""
_RECORD = """
INSERT INTO login_events (user_id, unit_id, username, channel, success, reason, ip, user_agent)
VALUES (%(user_id)s, %(unit_id)s, %(username)s, %(channel)s, %(success)s, %(reason)s, %(ip)s, %(ua)s)
"""


def record_login(
    conn: psycopg.Connection,
    *,
    username: str,
    user_id: int | None,
    unit_id: int | None,
    channel: Channel,
    success: bool,
    reason: str | None,
    ip: str | None,
    user_agent: str | None,
) -> None:
    conn.execute(
        _RECORD,
        {
            "user_id": user_id,
            "unit_id": unit_id,
            "username": username[:64],
            "channel": channel,
            "success": success,
            "reason": reason,
            "ip": ip,
            "ua": (user_agent or "")[:300] or None,
        },
    )


def check_password(
    conn: psycopg.Connection,
    *,
    username: str,
    password: str,
    channel: Channel,
    ip: str | None,
    user_agent: str | None,
    bad: Refused | None = None,
) -> dict[str, Any]:
    """The lock-out and the password check that every password entry goes through (sign-in, and
    re-entering the current password to change it), so a stolen session cannot be used to guess
    it. Refusals are recorded and committed before raising; returns the active user's row.

    Attempts for one username are serialised (advisory lock): otherwise guesses sent at the same
    moment would all read the failure count before any of them added to it."""
    conn.execute("SELECT pg_advisory_xact_lock(hashtext('coldchain.login'), hashtext(%s))", (username,))
    user = fetch_one(conn, _USER, {"username": username})
    now_row = conn.execute("SELECT now()").fetchone()
    assert now_row is not None
    failures = [r["ts"] for r in fetch_all(conn, _FAILURES, {"username": username, "window": LOCK_WINDOW})]
    bad = bad or Refused(401, "bad_credentials", "用户名或密码错误")

    def refuse(reason: str, error: Refused) -> Refused:
        record_login(
            conn,
            username=username,
            user_id=user["id"] if user else None,
            unit_id=user["unit_id"] if user else None,
            channel=channel,
            success=False,
            reason=reason,
            ip=ip,
            user_agent=user_agent,
        )
        conn.commit()
        return error

    until = locked_until(failures, now_row[0])
    if until is not None:
        wait = max(1, int((until - now_row[0]).total_seconds()))
        raise refuse(
            "locked",
            Refused(
                429,
                "account_locked",
                f"连续 {MAX_FAILURES} 次密码错误，账号已暂时锁定，请 {-(-wait // 60)} 分钟后再试",
                headers={"Retry-After": str(wait)},
            ),
        )
    stored = user["password_hash"] if user else None
    ok = verify_password(stored, password)
    if user is None:
        raise refuse("unknown_user", bad)
    if not ok:
        raise refuse("bad_password", bad)
    if user["status"] != "active":
        raise refuse("closed", Refused(403, "account_closed", "该账号已关闭或注销，请联系管理单位"))
    if _hasher.check_needs_rehash(stored or ""):
        conn.execute("UPDATE users SET password_hash = %s WHERE id = %s", (_hasher.hash(password), user["id"]))
    return user


def sign_in(
    conn: psycopg.Connection,
    *,
    username: str,
    password: str,
    channel: Channel,
    kind: SessionKind,
    ttl: timedelta,
    ip: str | None,
    user_agent: str | None,
) -> SignedIn:
    """Check the password and open a session."""
    user = check_password(conn, username=username, password=password, channel=channel, ip=ip, user_agent=user_agent)
    record_login(
        conn,
        username=username,
        user_id=user["id"],
        unit_id=user["unit_id"],
        channel=channel,
        success=True,
        reason=None,
        ip=ip,
        user_agent=user_agent,
    )
    return open_session(conn, user["id"], kind, ttl, ip, user_agent)


def sign_in_wechat(
    conn: psycopg.Connection, *, openid: str, ttl: timedelta, ip: str | None, user_agent: str | None
) -> SignedIn:
    """Open a web session for the account bound to the WeChat user ``openid`` (recorded as a
    sign-in on the WeChat channel). ``openid`` comes from the server-side code exchange
    (:func:`registry.wechat.openid_for_code`), never from the client."""
    user = fetch_one(conn, _WECHAT_USER, {"o": openid})
    if user is None:
        raise Refused(401, "wechat_not_bound", "该微信尚未绑定账号：请先用用户名和密码登录，在“我的”中绑定微信")
    common: dict[str, Any] = {
        "username": user["username"],
        "user_id": user["id"],
        "unit_id": user["unit_id"],
        "channel": "wechat",
        "ip": ip,
        "user_agent": user_agent,
    }
    if user["status"] != "active":
        record_login(conn, success=False, reason="closed", **common)
        conn.commit()
        raise Refused(403, "account_closed", "该账号已关闭或注销，请联系管理单位")
    record_login(conn, success=True, reason=None, **common)
    return open_session(conn, user["id"], "web", ttl, ip, user_agent)


def set_password(conn: psycopg.Connection, user_id: int, password: str) -> None:
    """Store a new password's hash (the caller has checked it with :func:`password_problem`)."""
    conn.execute(_SET_PASSWORD, (hash_password(password), user_id))


def change_password(
    conn: psycopg.Connection,
    *,
    user_id: int,
    username: str,
    current: str,
    new: str,
    channel: Channel,
    session_id: int,
    ip: str | None,
    user_agent: str | None,
) -> None:
    """A user changes their own password: the current one is checked like a sign-in (lock-out
    included), and every other session of theirs ends — the one in use (``session_id``) stays."""
    check_password(
        conn,
        username=username,
        password=current,
        channel=channel,
        ip=ip,
        user_agent=user_agent,
        bad=Refused(403, "bad_credentials", "当前密码不正确"),
    )
    if problem := password_problem(new, username):
        raise invalid(problem)
    set_action(conn, "user.password")
    set_password(conn, user_id, new)
    revoke_sessions(conn, user_id, except_session=session_id)


def set_up_password(conn: psycopg.Connection, token: str, new: str) -> None:
    """A new user sets their first password with the one-time link Form 5 (or the platform) gave
    them; the link is then used up. The user is the actor of the audit rows, not signed in yet."""
    link = claim_setup_token(conn, token)
    if link is None:
        raise Refused(401, "setup_token_invalid", "设置密码的链接无效、已使用或已过期，请联系管理单位重新生成")
    if problem := password_problem(new, link["username"]):
        raise invalid(problem)
    set_actor(conn, link["user_id"])
    set_action(conn, "user.password_setup")
    set_password(conn, link["user_id"], new)
    revoke_session(conn, link["id"])
