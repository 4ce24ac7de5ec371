"""Users: reading them within the jurisdiction, and what a user changes about themselves.

Adding, closing, deleting or changing a user is not here: every such change goes through Form 5
(UM2) and is carried out, when the form is filed, by the system administrator UM1 names
(:func:`registry.permissions.may_manage_user`). What stays here is a user's own WeChat binding
(CM15) and the three levels of alarm responsibility per unit. The queries are
:mod:`registry.users` and :mod:`registry.responsibles`.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query, Request, Response
from pydantic import BaseModel, ConfigDict, Field

from api.deps import Conn, CurrentUser, require_filter_in_scope, require_unit_in_scope, require_writer
from api.readonly import open_to_read_only
from coldchain.core.errors import not_found
from registry import responsibles as unit_responsibles
from registry import users
from registry.wechat import openid_for_code

router = APIRouter(tags=["用户"])


class UserOut(BaseModel):
    id: int
    username: str
    real_name: str
    phone: str | None
    email: str | None
    unit_id: int
    unit_name: str
    role: str
    department: str | None
    status: str
    wechat_bound: bool
    created_at: datetime
    version: int


@router.get("/users/me", response_model=UserOut, summary="当前登录用户")
def me(principal: CurrentUser, conn: Conn) -> dict[str, Any]:
    row = users.get_user(conn, principal.actor.unit, principal.user_id)
    assert row is not None
    return row


@router.get("/users", response_model=list[UserOut], summary="辖区内的用户")
def list_users(
    principal: CurrentUser,
    conn: Conn,
    unit_id: Annotated[int | None, Query(ge=1, le=2**62)] = None,
    role: Literal["system_admin", "business_admin", "supervisor", "analyst"] | None = None,
    status: Literal["active", "closed", "deleted"] | None = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 200,
    offset: Annotated[int, Query(ge=0, le=10**6)] = 0,
) -> list[dict[str, Any]]:
    require_filter_in_scope(conn, principal, unit_id)
    return users.list_users(
        conn, principal.actor.unit, unit_id=unit_id, role=role, status=status, limit=limit, offset=offset
    )


@router.get("/users/{user_id}", response_model=UserOut, summary="用户详情")
def get_user(user_id: Annotated[int, Field(ge=1, le=2**62)], principal: CurrentUser, conn: Conn) -> dict[str, Any]:
    row = users.get_user(conn, principal.actor.unit, user_id)
    if row is None:
        raise not_found("用户")
    return row


class WechatBinding(BaseModel):
    model_config = ConfigDict(extra="forbid")
    code: Annotated[str, Field(pattern=r"^[A-Za-z0-9_-]{8,128}$", description="微信网页授权回调中的 code（一次性）")]


@router.put(
    "/users/me/wechat",
    status_code=204,
    summary="绑定本人微信（接收报警，CM15；用网页授权 code，服务端换取 openid）",
    openapi_extra=open_to_read_only("本人操作：绑定自己的微信"),
)
def bind_wechat(body: WechatBinding, request: Request, principal: CurrentUser, conn: Conn) -> Response:
    openid = openid_for_code(request.app.state.settings, body.code)
    users.bind_wechat(conn, principal.user_id, openid)
    return Response(status_code=204)


@router.delete(
    "/users/me/wechat",
    status_code=204,
    summary="解除本人微信绑定",
    openapi_extra=open_to_read_only("本人操作：解除自己的微信绑定"),
)
def unbind_wechat(principal: CurrentUser, conn: Conn) -> Response:
    users.unbind_wechat(conn, principal.user_id)
    return Response(status_code=204)


# ---------------------------------------------------------------------------------------------
# Three levels of responsibility per unit (CM15): who is told of an alarm, and when.


class Responsible(BaseModel):
    level: Annotated[int, Field(ge=1, le=3)]
    user_id: int
    username: str
    real_name: str
    phone: str | None
    wechat_bound: bool


class ResponsiblesIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    level1: Annotated[list[Annotated[int, Field(ge=1, le=2**62)]], Field(min_length=1, max_length=10)]
    level2: Annotated[list[Annotated[int, Field(ge=1, le=2**62)]], Field(min_length=1, max_length=10)]
    level3: Annotated[list[Annotated[int, Field(ge=1, le=2**62)]], Field(min_length=1, max_length=10)]


@router.get("/units/{unit_id}/responsibles", response_model=list[Responsible], summary="单位三级负责人")
def responsibles(
    unit_id: Annotated[int, Field(ge=1, le=2**62)], principal: CurrentUser, conn: Conn
) -> list[dict[str, Any]]:
    require_unit_in_scope(conn, principal, unit_id)
    return unit_responsibles.responsibles(conn, unit_id)


@router.put("/units/{unit_id}/responsibles", response_model=list[Responsible], summary="设置单位三级负责人")
def set_responsibles(
    unit_id: Annotated[int, Field(ge=1, le=2**62)], body: ResponsiblesIn, principal: CurrentUser, conn: Conn
) -> list[dict[str, Any]]:
    require_unit_in_scope(conn, principal, unit_id)
    require_writer(principal)
    wanted = [(1, u) for u in body.level1] + [(2, u) for u in body.level2] + [(3, u) for u in body.level3]
    return unit_responsibles.replace_responsibles(conn, unit_id, wanted)
