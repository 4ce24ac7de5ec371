"""Signing in through the API, for the sign-in tests (tests/api/test_auth.py,
test_login_lockout.py, test_credentials.py): the routes, a wrong password and the refusal every
failed attempt gets, credentials and bearer headers, and the digests and WeChat binding as stored.
"""

from __future__ import annotations

import hashlib

import psycopg
from apihelp import PASSWORD
from fastapi.testclient import TestClient

API = "/api/v1"
SESSION = f"{API}/auth/session"
TOKEN = f"{API}/auth/token"
PASSWORD_URL = f"{API}/auth/password"
ME = f"{API}/users/me"
WECHAT = f"{API}/users/me/wechat"
WRONG = "Wrong#Pass2026"
NEW_PASSWORD = "Fresh#Cold2026"
BAD_CREDENTIALS = {"error": {"code": "bad_credentials", "message": "用户名或密码错误", "details": None}}


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


def wechat_of(conn: psycopg.Connection, user_id: int) -> str | None:
    row = conn.execute("SELECT wechat_openid FROM users WHERE id = %s", (user_id,)).fetchone()
    assert row is not None
    return row[0]  # type: ignore[no-any-return]


def wrong(client: TestClient, username: str, path: str = TOKEN) -> None:
    r = client.post(path, json=creds(username, WRONG))
    assert r.status_code == 401, r.text
    assert r.json() == BAD_CREDENTIALS
