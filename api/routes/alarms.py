"""Alarms in the user's jurisdiction: list and history, acknowledge ("on site"), close with the
closure form; the single-use confirmation link that WeChat messages carry (CM16).

Alarms are raised and resolved by the scheduler (:mod:`alarms.engine`); people only acknowledge
and close them. Every transition is :mod:`alarms.life`'s and every query :mod:`alarms.queries`';
these routes parse, check who may act, call them and shape the reply. Thermometer readings are in
:mod:`api.routes.thermometer`, the alarm settings in :mod:`api.routes.alarm_settings`.
"""

from __future__ import annotations

import ipaddress
from datetime import datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query, Request
from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from alarms import life, queries
from api.deps import Conn, CurrentUser, Principal, require_unit_in_scope, require_writer
from api.fields import Id, QId, Version
from api.readonly import open_to_read_only
from coldchain.core.terms import Level
from registry.auth import record_login

router = APIRouter(tags=["报警"])

Text = Annotated[str, StringConstraints(strip_whitespace=True, min_length=2, max_length=500)]
AlarmState = Literal["active", "acknowledged", "resolved", "closed"]
ORDER_HELP = "newest：最新在前（默认）；severity：未处理、已确认、已恢复、已关闭依次在前，同状态内最严重、最新在前"


class AlarmOut(BaseModel):
    id: int
    kind: str
    severity: str
    state: str
    unit_id: int
    unit_name: str
    unit_level: str
    equipment_id: int | None
    equipment_name: str | None
    compartment_id: int | None
    compartment_name: str | None
    gateway_id: int | None
    gateway_serial: str | None
    probe_id: int | None
    condition_since: datetime
    raised_at: datetime
    found_late: bool
    suppressed: bool
    cause: str | None
    value: float | None
    t_min: float | None
    t_max: float | None
    acknowledged_at: datetime | None
    acknowledged_by: int | None
    acknowledged_by_name: str | None = Field(description="确认人姓名")
    ack_channel: str | None
    ack_comment: str | None
    on_site: bool | None
    resolved_at: datetime | None
    closed_at: datetime | None
    closure: dict[str, Any] | None
    version: int
    current_t: float | None = Field(description="温区当前温度（最新读数）；网关报警为空")


class AlarmEventOut(BaseModel):
    ts: datetime
    action: str
    username: str | None
    channel: str | None
    details: dict[str, Any] | None


class NotificationOut(BaseModel):
    step: str
    channel: str
    levels: list[int]
    due_at: datetime
    sent_at: datetime | None
    attempts: int
    last_error: str | None
    unconfigured: bool = Field(description="单位未配置通知去处（此条未发出）")


class AlarmDetail(AlarmOut):
    events: list[AlarmEventOut]
    notifications: list[NotificationOut]


@router.get("/alarms", response_model=list[AlarmOut], summary="辖区内的报警（可按状态、类型、单位、时间筛选）")
def list_alarms(
    principal: CurrentUser,
    conn: Conn,
    unit_id: QId = None,
    state: AlarmState | None = None,
    open_only: bool = False,
    kind: Annotated[str | None, Query(pattern=r"^[a-z_]{2,40}$")] = None,
    compartment_id: QId = None,
    since: datetime | None = None,
    until: datetime | None = None,
    level: Annotated[Level | None, Query(description="只看此级别单位的报警")] = None,
    order: Annotated[queries.Order, Query(description=ORDER_HELP)] = "newest",
    limit: Annotated[int, Query(ge=1, le=1000)] = 200,
    offset: Annotated[int, Query(ge=0, le=10**6)] = 0,
) -> list[dict[str, Any]]:
    if unit_id is not None:
        require_unit_in_scope(conn, principal, unit_id)
    return queries.list_alarms(
        conn,
        principal.unit_id,
        unit_id=unit_id,
        state=state,
        open_only=open_only,
        kind=kind,
        compartment_id=compartment_id,
        since=since,
        until=until,
        level=level,
        order=order,
        limit=limit,
        offset=offset,
    )


@router.get("/alarms/{alarm_id}", response_model=AlarmDetail, summary="报警详情：每一次变化与每一条通知")
def get_alarm(alarm_id: Id, principal: CurrentUser, conn: Conn) -> dict[str, Any]:
    return queries.alarm_detail(conn, principal.unit_id, alarm_id)


def _channel(principal: Principal) -> life.Channel:
    return "web" if principal.via == "cookie" else "api"


class Acknowledge(BaseModel):
    model_config = ConfigDict(extra="forbid")
    on_site: bool = Field(True, description="已到现场处理")
    comment: Annotated[str, StringConstraints(strip_whitespace=True, max_length=500)] | None = None


@router.post("/alarms/{alarm_id}/acknowledge", response_model=AlarmOut, summary="确认报警（已到现场）")
def acknowledge_alarm(alarm_id: Id, body: Acknowledge, principal: CurrentUser, conn: Conn) -> dict[str, Any]:
    alarm = queries.alarm_in_scope(conn, principal.unit_id, alarm_id, lock=True)
    require_writer(principal)
    life.acknowledge(conn, alarm, principal.user_id, _channel(principal), body.on_site, body.comment)
    return queries.alarm_in_scope(conn, principal.unit_id, alarm_id)


class Closure(BaseModel):
    model_config = ConfigDict(extra="forbid")
    version: Version
    cause: Text = Field(description="原因，如 停电、冰箱故障、门未关好、探头故障")
    action: Text = Field(description="采取的措施")
    vaccine_disposition: Text = Field(description="疫苗处置：如 未受影响继续使用、转移至其他冰箱、暂停使用待评估、报废")


@router.post("/alarms/{alarm_id}/close", response_model=AlarmOut, summary="关闭报警（填写原因、措施与疫苗处置）")
def close_alarm(alarm_id: Id, body: Closure, principal: CurrentUser, conn: Conn) -> dict[str, Any]:
    alarm = queries.alarm_in_scope(conn, principal.unit_id, alarm_id, lock=True)
    require_writer(principal)
    life.close(
        conn,
        alarm,
        principal.user_id,
        _channel(principal),
        version=body.version,
        cause=body.cause,
        action=body.action,
        vaccine_disposition=body.vaccine_disposition,
    )
    return queries.alarm_in_scope(conn, principal.unit_id, alarm_id)


# ---------------------------------------------------------------------------------------------
# The link in a WeChat message: confirm without a password (the token is the credential)


class LinkConfirm(BaseModel):
    model_config = ConfigDict(extra="forbid")
    token: Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_-]{20,100}$")]
    comment: Annotated[str, StringConstraints(strip_whitespace=True, max_length=500)] | None = None


class LinkResult(BaseModel):
    alarm_id: int
    state: str
    acknowledged_by: str | None = Field(description="实际确认人（可能早已由他人确认）；关闭前无人确认时为空")


@router.post(
    "/alarm-links/confirm",
    response_model=LinkResult,
    summary="微信消息中的链接：免密确认报警（一次性）",
    openapi_extra=open_to_read_only("免登录：链接中的一次性令牌即授权，只发给负责人本人"),
)
def confirm_by_link(body: LinkConfirm, request: Request, conn: Conn) -> dict[str, Any]:
    used = life.confirm_by_link(conn, body.token, body.comment)
    # Opening the alarm from WeChat is a sign-in on the WeChat channel (CM14).
    record_login(
        conn,
        username=used.username,
        user_id=used.user_id,
        unit_id=used.unit_id,
        channel="wechat",
        success=True,
        reason="alarm_link",
        ip=_ip(request.client.host if request.client else None),
        user_agent=request.headers.get("user-agent"),
    )
    return {"alarm_id": used.alarm_id, "state": used.state, "acknowledged_by": used.acknowledged_by}


def _ip(host: str | None) -> str | None:
    try:
        return str(ipaddress.ip_address(host)) if host else None
    except ValueError:
        return None
