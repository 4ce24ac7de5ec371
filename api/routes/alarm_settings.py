"""The alarm settings people keep: rule parameters per compartment, escalation timing per unit, and
where a unit's notifications go (CM15, DC4). Each is read back as saved and as in effect, and saved
over the version read. A route can be tried with a test message (:mod:`alarms.test_message`), so a
wrong robot URL is found when it is saved rather than when the first alarm goes nowhere.

The checks and the storage are :mod:`alarms.settings_store`'s; these routes parse, check the
jurisdiction and the right to write, and call it.
"""

from __future__ import annotations

from dataclasses import asdict
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Request
from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from alarms import settings_store, test_message
from api.deps import Conn, CurrentUser, require_unit_in_scope, require_writer
from api.fields import Id
from coldchain.core.errors import not_found
from coldchain.core.outbound import policy_of
from registry.units import get_unit

router = APIRouter(tags=["报警"])


# ---------------------------------------------------------------------------------------------
# Rule parameters per compartment


class ParamsOut(BaseModel):
    compartment_id: int
    overrides: dict[str, Any]
    effective: dict[str, Any]
    version: int


class ParamsIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    version: Annotated[int, Field(ge=0, le=2**31 - 1, description="读到的版本；尚未设置过时为 0")]
    overrides: dict[str, Annotated[str | float | int, Field()]] = Field(
        description='覆盖默认值的参数，如 {"delay": "15m", "hysteresis": 0.3}', max_length=20
    )


@router.get(
    "/compartments/{compartment_id}/alarm-params", response_model=ParamsOut, summary="温区报警参数（默认值与覆盖）"
)
def get_params(compartment_id: Id, principal: CurrentUser, conn: Conn) -> dict[str, Any]:
    return settings_store.params_view(settings_store.params_row(conn, principal.unit_id, compartment_id))


@router.put(
    "/compartments/{compartment_id}/alarm-params", response_model=ParamsOut, summary="设置温区报警参数（带版本号）"
)
def put_params(compartment_id: Id, body: ParamsIn, principal: CurrentUser, conn: Conn) -> dict[str, Any]:
    row = settings_store.params_row(conn, principal.unit_id, compartment_id, lock=True)
    require_writer(principal)
    settings_store.save_params(conn, row, principal.user_id, body.version, body.overrides)
    return get_params(compartment_id, principal, conn)


# ---------------------------------------------------------------------------------------------
# Per unit: escalation timing and where notifications go

Duration = Annotated[str, StringConstraints(strip_whitespace=True, pattern=r"^[1-9][0-9]*[smhd]$")]


class EscalationIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    version: Annotated[int, Field(ge=0, le=2**31 - 1, description="读到的版本；尚未设置过时为 0")]
    steps: Annotated[str, StringConstraints(strip_whitespace=True, pattern=r"^[0-9smhd,]{2,60}$")] | None = Field(
        None, description="升级时限，如 30m,60m；为空则用系统设置"
    )
    reminder: Duration | None = Field(None, description="提醒间隔，如 60m；为空则用系统设置")
    resolved_reminder: Duration | None = Field(None, description="恢复未关闭时的提醒间隔，如 24h")


class EscalationOut(BaseModel):
    unit_id: int
    steps: str | None
    reminder: str | None
    resolved_reminder: str | None
    effective_steps: list[str]
    effective_reminder: str
    effective_resolved_reminder: str
    version: int


@router.get("/units/{unit_id}/escalation", response_model=EscalationOut, summary="单位的报警升级时限（默认与覆盖）")
def get_escalation(unit_id: Id, request: Request, principal: CurrentUser, conn: Conn) -> dict[str, Any]:
    require_unit_in_scope(conn, principal, unit_id)
    return settings_store.escalation_of(conn, request.app.state.settings, unit_id)


@router.put("/units/{unit_id}/escalation", response_model=EscalationOut, summary="设置单位的报警升级时限（带版本号）")
def put_escalation(
    unit_id: Id, body: EscalationIn, request: Request, principal: CurrentUser, conn: Conn
) -> dict[str, Any]:
    require_unit_in_scope(conn, principal, unit_id)
    require_writer(principal)
    wanted = body.model_dump(exclude={"version"})
    return settings_store.save_escalation(conn, request.app.state.settings, unit_id, body.version, wanted)


class RouteIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    level: Annotated[int, Field(ge=1, le=3)]
    channel: Literal["wecom", "webhook"]
    url: Annotated[str, StringConstraints(pattern=r"^https?://[^\s]{3,500}$")] = Field(
        description="https 地址，主机须在 COLDCHAIN_OUTBOUND_HOSTS 中；读到的隐藏形式（key=***）原样提交即保留原地址"
    )
    secret: Annotated[str, StringConstraints(min_length=16, max_length=200)] | None = Field(
        None, description="webhook 的 HMAC 密钥（企业微信机器人不需要）；不填则保留同一地址原有的密钥"
    )


class RouteOut(BaseModel):
    id: int
    unit_id: int
    level: int
    channel: str
    url: str = Field(description="地址，查询参数的值（如企业微信机器人的 key）以 *** 隐藏")
    has_secret: bool


@router.get(
    "/units/{unit_id}/notification-routes",
    response_model=list[RouteOut],
    summary="单位各级的通知去处（企业微信群机器人、签名 webhook）",
)
def list_routes(unit_id: Id, principal: CurrentUser, conn: Conn) -> list[dict[str, Any]]:
    require_unit_in_scope(conn, principal, unit_id)
    return settings_store.routes_of(conn, unit_id)


@router.put(
    "/units/{unit_id}/notification-routes", response_model=list[RouteOut], summary="设置单位各级的通知去处（整体替换）"
)
def put_routes(
    unit_id: Id,
    body: Annotated[list[RouteIn], Field(max_length=30)],
    request: Request,
    principal: CurrentUser,
    conn: Conn,
) -> list[dict[str, Any]]:
    require_unit_in_scope(conn, principal, unit_id)
    require_writer(principal)
    routes = [settings_store.Route(r.level, r.channel, r.url, r.secret) for r in body]
    return settings_store.replace_routes(conn, policy_of(request.app.state.settings), unit_id, routes)


class RouteTestIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    route_id: Id = Field(description="通知去处的 id（GET /units/{unit_id}/notification-routes 中的 id）")


class RouteTestOut(BaseModel):
    ok: bool = Field(description="对方是否接收了测试消息")
    status: int | None = Field(description="对方答复的 HTTP 状态码；未发出（地址被拒绝、网络不通）时为空")
    error: str | None = Field(description="未成功时的原因（中文，不含机器人 key 或密钥）")


@router.post(
    "/units/{unit_id}/notification-routes/test",
    response_model=RouteTestOut,
    summary="向单位的一个通知去处立即发送一条测试消息（不经报警发件箱）",
)
def send_route_test(
    unit_id: Id, body: RouteTestIn, request: Request, principal: CurrentUser, conn: Conn
) -> dict[str, Any]:
    """Answers 200 whether or not the destination took the message: the send was tried, and
    ``ok``/``error`` say how it went; 404 for a unit out of the jurisdiction or a route not its own."""
    require_unit_in_scope(conn, principal, unit_id)
    require_writer(principal)
    unit = get_unit(conn, principal.actor.unit, unit_id)
    if unit is None:
        raise not_found("单位")
    outcome = test_message.send_test_message(
        conn,
        policy_of(request.app.state.settings),
        unit_id,
        body.route_id,
        unit_name=unit["name"],
        unit_code=unit["code"],
        sender=principal.real_name or principal.username,
        now=datetime.now(UTC),
    )
    return asdict(outcome)
