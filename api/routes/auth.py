"""Sign-in routes: a session cookie for the web pages, a bearer token for API clients.

The rules — lock-out, password checks, sessions — are :mod:`registry.auth` and
:mod:`registry.sessions`; here are the cookies and the client's address.
"""

from __future__ import annotations

import ipaddress
from datetime import datetime, timedelta
from typing import Annotated, Any

from fastapi import APIRouter, Request, Response
from pydantic import BaseModel, ConfigDict, Field

from api.deps import CSRF_COOKIE, SESSION_COOKIE, Conn, CurrentUser
from api.readonly import open_to_read_only
from registry.auth import change_password as change_own_password
from registry.auth import set_up_password, sign_in, sign_in_wechat
from registry.sessions import revoke_session
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
    signed = sign_in_wechat(conn, openid=openid, ttl=timedelta(hours=settings.session_hours), ip=ip, user_agent=ua)
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
    revoke_session(conn, principal.session_id)
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
    change_own_password(
        conn,
        user_id=principal.user_id,
        username=principal.username,
        current=body.current_password,
        new=body.new_password,
        channel="web" if principal.via == "cookie" else "api",
        session_id=principal.session_id,
        ip=ip,
        user_agent=ua,
    )
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
    set_up_password(conn, body.token, body.new_password)
    return Response(status_code=204)
