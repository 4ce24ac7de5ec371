"""A compartment's temperature series for charts (issue #7, the device page): readings or hourly /
daily aggregates chosen by the range's length and thinned on the server to about 2 000 points, with
the limits, alarm intervals, thermometer readings and the gateways' power and offline periods.

What is read and how is :mod:`analytics.series`; this module checks the range and the jurisdiction
(the compartment's equipment's unit; outside it, 404 like a compartment that does not exist).

The series itself is history, and is read from the streaming replica when one is configured
(:data:`api.deps.ReadConn`, issue #18), with its lag in the ``X-Coldchain-Replica-Lag`` header;
the compartment, its current limits and the jurisdiction check come from the primary, so a
compartment registered a moment ago is found and its limits are the ones the alarms use now.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query
from pydantic import AwareDatetime, BaseModel, Field

from analytics.series import MAX_RANGE, compartment_row, compartment_series
from api.deps import Conn, CurrentUser, ReadConn, unit_in_scope
from api.fields import Id
from coldchain.core.errors import invalid, not_found

router = APIRouter(tags=["温度曲线"])

DEFAULT_SPAN = timedelta(hours=24)
_EARLIEST = datetime(2015, 1, 1, tzinfo=UTC)  # the device contract refuses readings before 2015
_LATEST = datetime(2100, 1, 1, tzinfo=UTC)


class PointsOut(BaseModel):
    ts: list[datetime]
    t: list[float | None] = Field(description="读数（原始）或桶内平均值（聚合）；null 表示数据缺口，曲线在此断开")


class BandOut(BaseModel):
    min: list[float | None]
    max: list[float | None]


class LimitsOut(BaseModel):
    t_min: float | None
    t_max: float


class PeriodOut(BaseModel):
    start: datetime
    end: datetime
    kind: str
    ongoing: bool


class AlarmIntervalOut(BaseModel):
    id: int
    kind: str
    label: str
    severity: str
    severity_label: str
    state: str
    start: datetime
    end: datetime = Field(description="恢复时刻；未恢复的报警为现在（ongoing 为 true）")
    ongoing: bool
    value: float | None
    found_late: bool
    suppressed: bool


class ThermometerOut(BaseModel):
    ts: datetime
    t: float
    note: str | None
    drift: bool | None = Field(description="与探头比对是否超出允许偏差；null 表示附近没有探头读数可比")
    difference: float | None
    probe_t: float | None


class GatewaySeriesOut(BaseModel):
    id: int
    serial: str
    heard: bool = Field(description="范围内或之前是否收到过该网关的任何状态")
    power: list[PeriodOut] = Field(description="供电：kind 为 ac（市电）或 battery（电池）；离线期间未知，不列出")
    offline: list[PeriodOut] = Field(description="离线：kind 为 reported（网关报告离线）或 silent（超过阈值无消息）")


class SeriesOut(BaseModel):
    compartment_id: int
    compartment_name: str
    mode: str
    equipment_id: int
    equipment_name: str
    start: datetime
    end: datetime
    source: Literal["raw", "hourly", "daily"] = Field(
        description="raw 原始读数 / hourly 小时聚合 / daily 日聚合（北京时间）"
    )
    bucket_seconds: int | None
    total: int = Field(description="抽样前的读数（或聚合桶）个数")
    downsampled: bool
    points: PointsOut
    band: BandOut | None = Field(description="聚合时每桶的最低、最高温度")
    gaps: list[PeriodOut]
    limits: LimitsOut
    alarms: list[AlarmIntervalOut]
    thermometer: list[ThermometerOut]
    gateways: list[GatewaySeriesOut]
    offline_after_seconds: int


def series_window(start: datetime | None, end: datetime | None, now: datetime) -> tuple[datetime, datetime]:
    """Defaults: the last 24 hours; with only one bound given, the 24 hours after ``start`` or
    before ``end``. Bounds outside 2015–2100 are refused before any arithmetic on them."""
    for value in (start, end):
        if value is not None and not _EARLIEST <= value <= _LATEST:
            raise invalid("时间应在 2015 年至 2100 年之间")
    if end is None:
        end = now if start is None else start + DEFAULT_SPAN
    if start is None:
        start = end - DEFAULT_SPAN
    if end <= start:
        raise invalid("结束时间必须晚于开始时间")
    if end - start > MAX_RANGE:
        raise invalid(f"时间范围最长 {MAX_RANGE.days} 天，请缩短查询范围")
    return start, end


@router.get(
    "/compartments/{compartment_id}/series",
    response_model=SeriesOut,
    summary="温区温度曲线（按跨度取原始读数或小时/日聚合，抽样至约 2000 点；含限值、报警、温度计、网关供电与离线）",
    description=(
        "配置了只读副本（COLDCHAIN_READ_DATABASE_URL）时曲线从副本读取，响应头 X-Coldchain-Replica-Lag "
        "给出副本落后主库的秒数（0 表示已同步）；没有该响应头表示从主库读取。"
    ),
)
def get_series(
    compartment_id: Id,
    principal: CurrentUser,
    conn: Conn,
    read: ReadConn,
    start: Annotated[AwareDatetime | None, Query(description="开始时间（带时区），缺省为结束前 24 小时")] = None,
    end: Annotated[AwareDatetime | None, Query(description="结束时间（带时区），缺省为现在")] = None,
) -> dict[str, Any]:
    row = compartment_row(conn, compartment_id)
    if row is None or not unit_in_scope(conn, principal, row["unit_id"]):
        raise not_found("温区")
    now = datetime.now(UTC)
    lo, hi = series_window(start, end, now)
    return compartment_series(read, row, lo, hi, now)
