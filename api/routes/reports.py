"""Monthly cold-chain report (CM17, CM3) as JSON and as an XLSX workbook.

The figures, their definitions and the keeping of final months are :mod:`analytics.report`; this
module scopes (a user sees reports of their unit and below), validates the month and serialises.

Reports are read from the streaming replica when one is configured (:data:`api.deps.ReadConn`,
issue #18): a report is the heaviest read of the system, and a provisional month a few seconds
old, or a kept one (which never changes), is as good from there. Generating and keeping a final
month's report is a write, and goes to the primary (:func:`read_report`).
"""

from __future__ import annotations

from datetime import UTC, date, datetime
from typing import Annotated, Any
from urllib.parse import quote

import psycopg
from fastapi import APIRouter, Query, Request
from fastapi.responses import Response
from pydantic import BaseModel, Field

from analytics.report.build import ReportRefused, kept_report, monthly_report
from analytics.report.maths import month_period
from analytics.report.xlsx import workbook
from api.deps import (
    Conn,
    CurrentUser,
    Principal,
    ReadConn,
    lag_headers,
    require_unit_in_scope,
    served_by_primary,
)
from api.routes.plans import MONTH_PATTERN
from coldchain.core.errors import invalid
from coldchain.core.terms import current_month, parse_month

router = APIRouter(prefix="/reports", tags=["月度报告"])

XLSX = "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet"

Number = int | float | None


class UnitOut(BaseModel):
    id: int
    code: str
    name: str
    level: str


class PeriodOut(BaseModel):
    start: datetime
    end: datetime
    cut: datetime


class PreviousOut(BaseModel):
    month: str
    headline: dict[str, Number] | None
    kept: bool


class ChangeOut(BaseModel):
    key: str
    label: str
    unit: str
    current: Number
    previous: Number
    change: Number
    better: bool | None
    basis: str = Field(
        "total",
        description="判断依据：total 总量；per_device 设备数变化时按每台；not_comparable 不可比；none 无上月数据",
    )
    note: str = Field("", description="说明（中文），如按每台比较的原因")
    per_device_current: float | None = None
    per_device_previous: float | None = None
    per_device_change: float | None = None


class ColumnOut(BaseModel):
    key: str
    label: str
    format: str


class TableOut(BaseModel):
    title: str
    columns: list[ColumnOut]
    rows: list[dict[str, Any]]


class MonthlyReportOut(BaseModel):
    format: int
    unit: UnitOut
    month: str
    period: PeriodOut
    provisional: bool
    kept: bool
    content_sha256: str | None
    generated_at: datetime
    headline: dict[str, Number]
    previous: PreviousOut
    changes: list[ChangeOut]
    tables: dict[str, TableOut]
    table_order: list[str]


QUnit = Annotated[int | None, Query(ge=1, le=2**62, description="县（区）、市或省（默认本单位）")]
QMonth = Annotated[str | None, Query(pattern=MONTH_PATTERN, description="YYYY-MM，默认本月（本月为临时报告）")]


def read_report(
    conn: psycopg.Connection, read: psycopg.Connection, unit_id: int, month: date, now: datetime
) -> tuple[dict[str, Any], bool]:
    """:func:`analytics.report.build.monthly_report` on the read connection where that only
    reads — a provisional month (computed live), or a final month whose kept report the replica
    already has — else on the primary ``conn``: a final month not kept yet (on the replica, which
    may lag behind the primary's copy) is generated and kept there, or found there.

    Returns the report and whether it came from ``read``. Shared with the page. With no replica
    ``read`` is ``conn`` and this is ``monthly_report(conn, …)`` as before."""
    if read is not conn and (
        not month_period(month, now).keepable(now) or kept_report(read, unit_id, month) is not None
    ):
        try:
            return monthly_report(read, unit_id, month, now), True
        except LookupError:
            pass  # a unit so new the replica has not replayed it yet: the primary has it
    return monthly_report(conn, unit_id, month, now), read is conn


def report_for(
    request: Request,
    response: Response,
    conn: psycopg.Connection,
    read: psycopg.Connection,
    principal: Principal,
    unit_id: int | None,
    month: str | None,
) -> dict[str, Any]:
    """The report a user asked for: in their jurisdiction (else 404, checked on the primary), for
    a county, city or the province, for a month that has begun (else 422 with the reason)."""
    unit = unit_id or principal.unit_id
    require_unit_in_scope(conn, principal, unit)
    now = datetime.now(UTC)
    try:
        first = parse_month(month) if month else current_month(now)
        report, from_read = read_report(conn, read, unit, first, now)
    except ReportRefused as exc:
        raise invalid(str(exc)) from exc
    except ValueError as exc:
        raise invalid(str(exc)) from exc
    if not from_read:
        served_by_primary(request, response)
    return report


@router.get(
    "/monthly",
    response_model=MonthlyReportOut,
    summary="月度冷链报告：设备报警、超温、离线、数据完整率、问题设备、地区占比、报警响应、网关、登录、保修、环比",
    description=(
        "配置了只读副本（COLDCHAIN_READ_DATABASE_URL）时从副本读取，响应头 X-Coldchain-Replica-Lag "
        "给出副本落后主库的秒数（0 表示已同步）；没有该响应头表示从主库读取。"
    ),
)
def monthly(
    request: Request,
    response: Response,
    principal: CurrentUser,
    conn: Conn,
    read: ReadConn,
    unit_id: QUnit = None,
    month: QMonth = None,
) -> dict[str, Any]:
    return report_for(request, response, conn, read, principal, unit_id, month)


def xlsx_filename(report: dict[str, Any]) -> str:
    """Content-Disposition: an ASCII name for old clients, the Chinese one (RFC 6266) for the rest."""
    unit, month = report["unit"], report["month"]
    ascii_name = f"coldchain-monthly-{unit['code']}-{month}.xlsx"
    chinese = f"{unit['name']}{month}月度冷链报告{'（临时）' if report['provisional'] else ''}.xlsx"
    return f"attachment; filename=\"{ascii_name}\"; filename*=UTF-8''{quote(chinese)}"


@router.get(
    "/monthly.xlsx",
    response_class=Response,
    responses={200: {"content": {XLSX: {}}, "description": "每张表一个工作表"}},
    summary="月度冷链报告（XLSX，每张表一个工作表）",
)
def monthly_xlsx(
    request: Request,
    response: Response,
    principal: CurrentUser,
    conn: Conn,
    read: ReadConn,
    unit_id: QUnit = None,
    month: QMonth = None,
) -> Response:
    report = report_for(request, response, conn, read, principal, unit_id, month)
    headers = {"Content-Disposition": xlsx_filename(report), **lag_headers(request)}
    return Response(workbook(report), media_type=XLSX, headers=headers)
