"""The live board's data (CM2): the page polls this; other screens (a county's wall display) may too.

The tiles and their states are :mod:`analytics.board`; this module only scopes and serialises."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any, Literal

import psycopg
from fastapi import APIRouter, Query, Response
from pydantic import BaseModel, Field

from analytics.board import STATE_NAMES, summary, tiles
from api.deps import Conn, CurrentUser, require_unit_in_scope

router = APIRouter(tags=["实时看板"])


class TileOut(BaseModel):
    compartment_id: int
    compartment_name: str
    mode: str
    t_min: float | None
    t_max: float
    equipment_id: int
    equipment_name: str
    unit_id: int
    unit_name: str
    city_id: int | None
    city_name: str | None
    county_id: int | None
    county_name: str | None
    t: float | None
    ts: datetime | None
    minutes_since: int | None
    reading_age: str = Field(description="最新读数距今：刚刚、N 分钟前、N 小时前、N 天前、无读数")
    t_flag: Literal["high", "low", "ok"] | None = Field(description="当前温度相对上下限：超上限、低于下限、正常")
    state: Literal["unbound", "alarm", "offline", "acknowledged", "normal"]
    state_name: str
    alarms: list[str]
    power: str | None
    battery: float | None
    battery_low: bool
    gateway_online: bool | None
    alarm_id: int | None = Field(description="此温区（或其网关）最需处理的未关闭报警；看板方块链接到它")
    alarm_state: Literal["active", "acknowledged"] | None
    alarm_name: str | None
    alarm_since: datetime | None = Field(description="异常开始时间")
    alarm_since_text: str | None = Field(description="异常开始时间（北京时间，MM-DD HH:MM）")
    alarm_lasted: str | None = Field(description="异常已持续多久")
    alarm_peak: float | None = Field(description="报警通报过的最严重温度（峰值）")


class BoardOut(BaseModel):
    generated_at: datetime
    unit_id: int
    summary: dict[str, int]
    state_names: dict[str, str]
    tiles: list[TileOut]


QUnit = Annotated[int | None, Query(ge=1, le=2**62, description="只看此单位及其下级（默认本单位的全部辖区）")]


def board_data(conn: psycopg.Connection, unit_id: int) -> dict[str, Any]:
    now = datetime.now(UTC)
    board = tiles(conn, unit_id, now)
    return {
        "generated_at": now,
        "unit_id": unit_id,
        "summary": summary(board),
        "state_names": dict(STATE_NAMES),
        "tiles": board,
    }


@router.get("/board", response_model=BoardOut, summary="实时看板：每个温区的当前温度、上下限、状态、网关供电")
def board(principal: CurrentUser, conn: Conn, response: Response, unit_id: QUnit = None) -> dict[str, Any]:
    unit = unit_id or principal.unit_id
    require_unit_in_scope(conn, principal, unit)
    response.headers["Cache-Control"] = "no-store"
    return board_data(conn, unit)
