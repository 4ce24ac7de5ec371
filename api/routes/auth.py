"""Sign-in routes: a session cookie for the web pages, a bearer token for API clients."""

from __future__ import annotations

import ipaddress
from datetime import datetime, timedelta
from typing import Annotated, Any

from fastapi import APIRouter, Request, Response
from pydantic import BaseModel, ConfigDict, Field

from api.deps import CSRF_COOKIE, SESSION_COOKIE, Conn, CurrentUser, set_action
from api.readonly import open_to_read_only
from coldchain.core.db import fetch_one
from coldchain.core.errors import Refused, invalid
from coldchain.core.tokens import token_hash
from registry.auth import (
    SETUP_TOKEN_TTL,
    check_password,
    hash_password,
    open_session,
    password_problem,
    record_login,
    revoke_sessions,
    sign_in,
)
from registry.wechat import openid_for_code

router = APIRouter(prefix="/auth", tags=["登录"])


class Credentials(BaseModel):
    model_config = ConfigDict(extra="forbid")
    username: Annotated[str, Field(min_length=1, max_length=64)]
    password: Annotated[str, Field(min_length=1, max_length=128)]


class SessionOut(BaseModel):
    user_id: int
    expires_at: datetime
    csrf_token: str = Field(
        description=f"Cookie 登录后的写请求须在请求头 X-CSRF-Token 中带上此值（也在 {CSRF_COOKIE} Cookie 中）"
    )


class TokenOut(BaseModel):
    access_token: str
    token_type: str = "bearer"
    expires_at: datetime


def _client(request: Request) -> tuple[str | None, str | None]:
    """Peer address (None when it is not an IP, e.g. a test transport) and user agent."""
    host = request.client.host if request.client else None
    try:
        ip = str(ipaddress.ip_address(host)) if host else None
    except ValueError:
        ip = None
    return ip, request.headers.get("user-agent")


@router.post(
    "/session",
    response_model=SessionOut,
    summary="网页登录（会话 Cookie）",
    openapi_extra=open_to_read_only("登录：尚未认证"),
)
def web_sign_in(body: Credentials, request: Request, response: Response, conn: Conn) -> dict[str, Any]:
    settings = request.app.state.settings
    ip, ua = _client(request)
    signed = sign_in(
        conn,
        username=body.username,
        password=body.password,
        channel="web",
        kind="web",
        ttl=timedelta(hours=settings.session_hours),
        ip=ip,
        user_agent=ua,
    )
    _set_session_cookies(response, settings, signed.token, signed.csrf_token or "")
    return {"user_id": signed.user_id, "expires_at": signed.expires_at, "csrf_token": signed.csrf_token}


class WechatCode(BaseModel):
    model_config = ConfigDict(extra="forbid")
    code: Annotated[str, Field(pattern=r"^[A-Za-z0-9_-]{8,128}$", description="微信网页授权回调中的 code（一次性）")]


def _set_session_cookies(response: Response, settings: Any, token: str, csrf: str) -> None:
    max_age = settings.session_hours * 3600
    response.set_cookie(
        SESSION_COOKIE,
        token,
        max_age=max_age,
        httponly=True,
        samesite="strict",
        secure=settings.cookie_secure,
        path="/",
    )
    response.set_cookie(
        CSRF_COOKIE, csrf, max_age=max_age, httponly=False, samesite="strict", secure=settings.cookie_secure, path="/"
    )


@router.post(
    "/wechat",
    response_model=SessionOut,
    summary="微信内登录（公众号网页授权 code，记为微信渠道登录）",
    openapi_extra=open_to_read_only("登录：尚未认证"),
)
def wechat_sign_in(body: WechatCode, request: Request, response: Response, conn: Conn) -> dict[str, Any]:
    settings = request.app.state.settings
    openid = openid_for_code(settings, body.code)
    ip, ua = _client(request)
    user = fetch_one(conn, "SELECT id, unit_id, username, status FROM users WHERE wechat_openid = %(o)s", {"o": openid})
    if user is None:
        raise Refused(401, "wechat_not_bound", "该微信尚未绑定账号：请先用用户名和密码登录，在“我的”中绑定微信")
    common = {
        "username": user["username"],
        "user_id": user["id"],
        "unit_id": user["unit_id"],
        "channel": "wechat",
        "ip": ip,
        "user_agent": ua,
    }
    if user["status"] != "active":
        record_login(conn, success=False, reason="closed", **common)
        conn.commit()
        raise Refused(403, "account_closed", "该账号已关闭或注销，请联系管理单位")
    record_login(conn, success=True, reason=None, **common)
    signed = open_session(conn, user["id"], "web", timedelta(hours=settings.session_hours), ip, ua)
    _set_session_cookies(response, settings, signed.token, signed.csrf_token or "")
    return {"user_id": signed.user_id, "expires_at": signed.expires_at, "csrf_token": signed.csrf_token}


@router.post(
    "/token",
    response_model=TokenOut,
    summary="API 客户端登录（Bearer 令牌）",
    openapi_extra=open_to_read_only("登录：尚未认证"),
)
def token_sign_in(body: Credentials, request: Request, conn: Conn) -> dict[str, Any]:
    settings = request.app.state.settings
    ip, ua = _client(request)
    signed = sign_in(
        conn,
        username=body.username,
        password=body.password,
        channel="api",
        kind="api",
        ttl=timedelta(hours=settings.token_hours),
        ip=ip,
        user_agent=ua,
    )
    return {"access_token": signed.token, "expires_at": signed.expires_at}


@router.post(
    "/logout",
    status_code=204,
    summary="退出登录（作废当前会话或令牌）",
    openapi_extra=open_to_read_only("本人操作：作废自己的会话"),
)
def sign_out(principal: CurrentUser, response: Response, conn: Conn) -> Response:
    conn.execute("UPDATE auth_sessions SET revoked_at = now() WHERE id = %s", (principal.session_id,))
    response.status_code = 204
    response.delete_cookie(SESSION_COOKIE, path="/")
    response.delete_cookie(CSRF_COOKIE, path="/")
    return response


class PasswordChange(BaseModel):
    model_config = ConfigDict(extra="forbid")
    current_password: Annotated[str, Field(min_length=1, max_length=128)]
    new_password: Annotated[str, Field(min_length=1, max_length=128)]


@router.post(
    "/password",
    status_code=204,
    summary="修改本人密码（其他会话随之作废）",
    openapi_extra=open_to_read_only("本人操作：修改自己的密码"),
)
def change_password(body: PasswordChange, request: Request, principal: CurrentUser, conn: Conn) -> Response:
    ip, ua = _client(request)
    check_password(
        conn,
        username=principal.username,
        password=body.current_password,
        channel="web" if principal.via == "cookie" else "api",
        ip=ip,
        user_agent=ua,
        bad=Refused(403, "bad_credentials", "当前密码不正确"),
    )
    if problem := password_problem(body.new_password, principal.username):
        raise invalid(problem)
    set_action(conn, "user.password")
    conn.execute(
        "UPDATE users SET password_hash = %s, password_changed_at = now(), version = version + 1 WHERE id = %s",
        (hash_password(body.new_password), principal.user_id),
    )
    revoke_sessions(conn, principal.user_id, except_session=principal.session_id)
    return Response(status_code=204)


class PasswordSetup(BaseModel):
    model_config = ConfigDict(extra="forbid")
    token: Annotated[str, Field(min_length=10, max_length=100)]
    new_password: Annotated[str, Field(min_length=1, max_length=128)]


@router.post(
    "/setup-password",
    status_code=204,
    summary="用一次性令牌设置初始密码（新用户）",
    openapi_extra=open_to_read_only("尚未认证：凭一次性令牌设置自己的初始密码"),
)
def setup_password(body: PasswordSetup, conn: Conn) -> Response:
    row = fetch_one(
        conn,
        """SELECT s.id, u.id AS user_id, u.username FROM auth_sessions s JOIN users u ON u.id = s.user_id
           WHERE s.token_hash = %(hash)s AND s.kind = 'setup' AND s.revoked_at IS NULL AND s.expires_at > now()
             AND u.status = 'active'
           FOR UPDATE OF s""",
        {"hash": token_hash(body.token)},
    )
    if row is None:
        raise Refused(401, "setup_token_invalid", "设置密码的链接无效、已使用或已过期，请联系管理单位重新生成")
    if problem := password_problem(body.new_password, row["username"]):
        raise invalid(problem)
    conn.execute("SELECT set_config('coldchain.actor_id', %s, true)", (str(row["user_id"]),))
    set_action(conn, "user.password_setup")
    conn.execute(
        "UPDATE users SET password_hash = %s, password_changed_at = now(), version = version + 1 WHERE id = %s",
        (hash_password(body.new_password), row["user_id"]),
    )
    conn.execute("UPDATE auth_sessions SET revoked_at = now() WHERE id = %s", (row["id"],))
    return Response(status_code=204)


__all__ = ["SETUP_TOKEN_TTL", "router"]
