"""The page behind a new user's one-time link (issue #18): ``/setup-password?token=…``.

``coldchain admin create`` and Form 5 give a new user a one-time token; a person on a phone cannot
be expected to POST it to the API, so the link opens this page. It shows whose account the link is
for, the password rules, and asks for the new password twice; the form posts to the API's own
``POST /api/v1/auth/setup-password`` so the rules, the Chinese refusals and the audit are the
API's, and on success the person goes on to ``/login``.

Opening the page does not spend the link (:func:`registry.sessions.peek_setup_token` only reads):
WeChat and other apps fetch links to preview them, and a GET that used the token would leave the
person with a dead link. The page is never cached and sends no referrer, so the token stays off
proxies and other sites' logs.
"""

from __future__ import annotations

import re

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse

from api.deps import Conn
from dashboards.web import render
from registry.sessions import SETUP_PATH, SETUP_TOKEN_TTL, peek_setup_token

router = APIRouter(include_in_schema=False)

# The API takes 10–100 characters (api/routes/auth.py); the tokens made are URL-safe base64.
_TOKEN = re.compile(r"[A-Za-z0-9_-]{10,100}")
# What registry.auth.password_problem checks, in the words a site can follow (tested against it).
PASSWORD_RULES = (
    "至少 8 位，不能超过 128 位",
    "包含大写字母、小写字母、数字、符号中的至少三类",
    "不能包含用户名",
)
INVALID = "设置密码的链接无效、已使用或已过期，请联系管理单位重新生成。"


@router.get(SETUP_PATH, response_class=HTMLResponse)
def setup_password_page(request: Request, conn: Conn, token: str | None = None) -> HTMLResponse:
    """Whose account, the rules, two password fields — or, for a link that is unknown, used or
    expired, the reason (404: there is nothing to set up behind it)."""
    account = peek_setup_token(conn, token) if token and _TOKEN.fullmatch(token) else None
    response = render(
        request,
        "setup_password.html",
        None,
        status=200 if account else 404,
        account=account,
        token=token if account else None,
        rules=PASSWORD_RULES,
        invalid=INVALID,
        valid_hours=int(SETUP_TOKEN_TTL.total_seconds() // 3600),
    )
    response.headers["Cache-Control"] = "no-store"
    response.headers["Referrer-Policy"] = "no-referrer"
    return response
