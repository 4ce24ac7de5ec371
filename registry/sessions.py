"""Sessions and their tokens: web sessions (cookie + CSRF token), API bearer tokens and one-time
set-up links for a new user's first password.

Only SHA-256 digests of tokens are stored, so a copy of the database signs no one in; the token
itself is handed to the caller once. Every query on ``auth_sessions`` is here.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Literal
from urllib.parse import urlencode

import psycopg

from coldchain.core.db import fetch_one
from coldchain.core.tokens import token_hash

SETUP_TOKEN_TTL = timedelta(hours=72)
SETUP_PATH = "/setup-password"
"""The page where a new user sets the first password from the one-time link (dashboards)."""
SessionKind = Literal["web", "api", "setup"]


def setup_link(public_url: str, token: str) -> str:
    """The link to hand a new user: the set-up page on the address people reach the system at
    (``COLDCHAIN_PUBLIC_URL``). Here, beside the token it carries, because the CLI, the forms API
    and the page itself all hand it out."""
    return f"{public_url.rstrip('/')}{SETUP_PATH}?{urlencode({'token': token})}"


def new_secret() -> str:
    return secrets.token_urlsafe(32)


@dataclass(frozen=True)
class SignedIn:
    user_id: int
    token: str
    csrf_token: str | None
    expires_at: datetime


_NEW = """
INSERT INTO auth_sessions (token_hash, csrf_hash, user_id, kind, expires_at, ip, user_agent)
VALUES (%(hash)s, %(csrf)s, %(user_id)s, %(kind)s, now() + %(ttl)s, %(ip)s, %(ua)s)
RETURNING expires_at
"""
# The signed-in user behind a live token, with what a request needs to know of them.
_LIVE = """
SELECT s.id AS session_id, s.csrf_hash, u.id AS user_id, u.username, u.real_name, u.role,
       n.id AS unit_id, n.level, n.parent_id
FROM auth_sessions s
JOIN users u ON u.id = s.user_id
JOIN units n ON n.id = u.unit_id
WHERE s.token_hash = %(hash)s AND s.kind = %(kind)s
  AND s.revoked_at IS NULL AND s.expires_at > now() AND u.status = 'active'
"""
_SETUP = """
SELECT s.id, u.id AS user_id, u.username FROM auth_sessions s JOIN users u ON u.id = s.user_id
WHERE s.token_hash = %(hash)s AND s.kind = 'setup' AND s.revoked_at IS NULL AND s.expires_at > now()
  AND u.status = 'active'
FOR UPDATE OF s
"""

# The same link as _SETUP, read without locking or spending it: for the page that shows whose
# account it is before the password is chosen (link previews fetch it too).
_PEEK_SETUP = """
SELECT u.username, u.real_name, n.name AS unit_name, s.expires_at
FROM auth_sessions s JOIN users u ON u.id = s.user_id JOIN units n ON n.id = u.unit_id
WHERE s.token_hash = %(hash)s AND s.kind = 'setup' AND s.revoked_at IS NULL AND s.expires_at > now()
  AND u.status = 'active'
"""


def open_session(
    conn: psycopg.Connection, user_id: int, kind: SessionKind, ttl: timedelta, ip: str | None, user_agent: str | None
) -> SignedIn:
    """A new session of ``kind`` for ``user_id``; a web session gets its CSRF token too."""
    token = new_secret()
    csrf = new_secret() if kind == "web" else None
    row = fetch_one(
        conn,
        _NEW,
        {
            "hash": token_hash(token),
            "csrf": token_hash(csrf) if csrf else None,
            "user_id": user_id,
            "kind": kind,
            "ttl": ttl,
            "ip": ip,
            "ua": (user_agent or "")[:300] or None,
        },
    )
    assert row is not None
    return SignedIn(user_id, token, csrf, row["expires_at"])


def live_session(conn: psycopg.Connection, token: str, kind: Literal["web", "api"]) -> dict[str, Any] | None:
    """The session and active user behind ``token``, or None (unknown, revoked, expired, closed)."""
    return fetch_one(conn, _LIVE, {"hash": token_hash(token), "kind": kind})


def claim_setup_token(conn: psycopg.Connection, token: str) -> dict[str, Any] | None:
    """The live set-up link behind ``token`` (``id``, ``user_id``, ``username``), locked until
    commit so that it is used once; None if there is none."""
    return fetch_one(conn, _SETUP, {"hash": token_hash(token)})


def peek_setup_token(conn: psycopg.Connection, token: str) -> dict[str, Any] | None:
    """Whose live set-up link ``token`` is (``username``, ``real_name``, ``unit_name``,
    ``expires_at``), or None — read only: the link stays usable, since opening a page (or a chat
    app previewing the link) must not spend it. :func:`claim_setup_token` is what uses it."""
    return fetch_one(conn, _PEEK_SETUP, {"hash": token_hash(token)})


def revoke_session(conn: psycopg.Connection, session_id: int) -> None:
    conn.execute("UPDATE auth_sessions SET revoked_at = now() WHERE id = %s", (session_id,))


def revoke_sessions(conn: psycopg.Connection, user_id: int, *, except_session: int | None = None) -> None:
    """End every session of ``user_id`` (but ``except_session``, the one in use)."""
    conn.execute(
        """UPDATE auth_sessions SET revoked_at = now()
           WHERE user_id = %s AND revoked_at IS NULL AND id IS DISTINCT FROM %s""",
        (user_id, except_session),
    )
