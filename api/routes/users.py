"""Users: reading them within the jurisdiction, and what a user changes about themselves.

Adding, closing, deleting or changing a user is not here: every such change goes through Form 5
(UM2) and is carried out, when the form is filed, by the system administrator UM1 names
(:func:`registry.permissions.may_manage_user`). What stays here is a user's own WeChat binding
(CM15) and the three levels of alarm responsibility per unit.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query, Request, Response
from pydantic import BaseModel, ConfigDict, Field

from api.deps import Conn, CurrentUser, require_unit_in_scope, require_writer, set_action
from api.readonly import open_to_read_only
from coldchain.core.db import fetch_all, fetch_one
from coldchain.core.errors import conflict, invalid, not_found
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


_USER_COLUMNS = """
u.id, u.username, u.real_name, u.phone, u.email, u.unit_id, n.name AS unit_name, u.role, u.department, u.status,
u.wechat_openid IS NOT NULL AS wechat_bound, u.created_at, u.version
"""
_IN_SCOPE = "u.unit_id IN (SELECT descendant_id FROM unit_tree WHERE ancestor_id = %(scope)s)"
_LIST = f"""
SELECT {_USER_COLUMNS} FROM users u JOIN units n ON n.id = u.unit_id
WHERE {_IN_SCOPE}
  AND (%(unit)s::bigint IS NULL OR u.unit_id = %(unit)s)
  AND (%(role)s::text IS NULL OR u.role = %(role)s)
  AND (%(status)s::text IS NULL OR u.status = %(status)s)
ORDER BY n.code, u.username
LIMIT %(limit)s OFFSET %(offset)s
"""  # noqa: S608 — constant SQL fragments, parameters bound
_ONE = f"SELECT {_USER_COLUMNS} FROM users u JOIN units n ON n.id = u.unit_id WHERE u.id = %(id)s AND {_IN_SCOPE}"  # noqa: S608 — constant SQL fragments, parameters bound


@router.get("/users/me", response_model=UserOut, summary="当前登录用户")
def me(principal: CurrentUser, conn: Conn) -> dict[str, Any]:
    row = fetch_one(conn, _ONE, {"id": principal.user_id, "scope": principal.unit_id})
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
    if unit_id is not None:
        require_unit_in_scope(conn, principal, unit_id)
    return fetch_all(
        conn,
        _LIST,
        {"scope": principal.unit_id, "unit": unit_id, "role": role, "status": status, "limit": limit, "offset": offset},
    )


@router.get("/users/{user_id}", response_model=UserOut, summary="用户详情")
def get_user(user_id: Annotated[int, Field(ge=1, le=2**62)], principal: CurrentUser, conn: Conn) -> dict[str, Any]:
    row = fetch_one(conn, _ONE, {"id": user_id, "scope": principal.unit_id})
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
    taken = fetch_one(
        conn,
        "SELECT id FROM users WHERE wechat_openid = %(o)s AND id <> %(id)s",
        {"o": openid, "id": principal.user_id},
    )
    if taken:
        raise conflict("wechat_taken", "该微信已绑定其他账号，请先在原账号解除绑定")
    set_action(conn, "user.wechat_bind")
    conn.execute(
        "UPDATE users SET wechat_openid = %s, wechat_bound_at = now(), version = version + 1 WHERE id = %s",
        (openid, principal.user_id),
    )
    return Response(status_code=204)


@router.delete(
    "/users/me/wechat",
    status_code=204,
    summary="解除本人微信绑定",
    openapi_extra=open_to_read_only("本人操作：解除自己的微信绑定"),
)
def unbind_wechat(principal: CurrentUser, conn: Conn) -> Response:
    set_action(conn, "user.wechat_unbind")
    conn.execute(
        "UPDATE users SET wechat_openid = NULL, wechat_bound_at = NULL, version = version + 1 WHERE id = %s",
        (principal.user_id,),
    )
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


_RESPONSIBLES = """
SELECT r.level, u.id AS user_id, u.username, u.real_name, u.phone, u.wechat_openid IS NOT NULL AS wechat_bound
FROM unit_responsibles r JOIN users u ON u.id = r.user_id
WHERE r.unit_id = %(unit)s ORDER BY r.level, u.username
"""


@router.get("/units/{unit_id}/responsibles", response_model=list[Responsible], summary="单位三级负责人")
def responsibles(
    unit_id: Annotated[int, Field(ge=1, le=2**62)], principal: CurrentUser, conn: Conn
) -> list[dict[str, Any]]:
    require_unit_in_scope(conn, principal, unit_id)
    return fetch_all(conn, _RESPONSIBLES, {"unit": unit_id})


@router.put("/units/{unit_id}/responsibles", response_model=list[Responsible], summary="设置单位三级负责人")
def set_responsibles(
    unit_id: Annotated[int, Field(ge=1, le=2**62)], body: ResponsiblesIn, principal: CurrentUser, conn: Conn
) -> list[dict[str, Any]]:
    require_unit_in_scope(conn, principal, unit_id)
    require_writer(principal)
    wanted = [(1, u) for u in body.level1] + [(2, u) for u in body.level2] + [(3, u) for u in body.level3]
    ids = sorted({u for _, u in wanted})
    found = fetch_all(
        conn,
        "SELECT id FROM users WHERE id = ANY(%(ids)s) AND unit_id = %(unit)s AND status = 'active'",
        {"ids": ids, "unit": unit_id},
    )
    missing = sorted(set(ids) - {r["id"] for r in found})
    if missing:
        raise invalid(
            f"负责人必须是本单位的在用账号：用户 {', '.join(map(str, missing))} 不符合", {"user_ids": missing}
        )
    set_action(conn, "unit.responsibles")
    conn.execute("SELECT 1 FROM units WHERE id = %s FOR UPDATE", (unit_id,))
    conn.execute("DELETE FROM unit_responsibles WHERE unit_id = %s", (unit_id,))
    with conn.cursor() as cur:
        cur.executemany(
            "INSERT INTO unit_responsibles (unit_id, level, user_id) VALUES (%s, %s, %s)",
            [(unit_id, lvl, uid) for lvl, uid in wanted],
        )
    return fetch_all(conn, _RESPONSIBLES, {"unit": unit_id})
