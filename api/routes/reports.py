"""Monthly cold-chain report (CM17, CM3) as JSON and as an XLSX workbook.

The figures, their definitions and the keeping of final months are :mod:`analytics.report`; this
module scopes (a user sees reports of their unit and below), validates the month and serialises.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any
from urllib.parse import quote

from fastapi import APIRouter, Query
from fastapi.responses import Response
from pydantic import BaseModel

from analytics.report.build import ReportRefused, monthly_report
from analytics.report.xlsx import workbook
from api.deps import Conn, CurrentUser, Principal, require_unit_in_scope
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
    change: float | None
    better: bool | None


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


def report_for(conn: Conn, principal: Principal, unit_id: int | None, month: str | None) -> dict[str, Any]:
    """The report a user asked for: in their jurisdiction (else 404), for a county, city or the
    province, for a month that has begun (else 422 with the reason). Shared with the page."""
    unit = unit_id or principal.unit_id
    require_unit_in_scope(conn, principal, unit)
    now = datetime.now(UTC)
    try:
        first = parse_month(month) if month else current_month(now)
        return monthly_report(conn, unit, first, now)
    except ReportRefused as exc:
        raise invalid(str(exc)) from exc
    except ValueError as exc:
        raise invalid(str(exc)) from exc


@router.get(
    "/monthly",
    response_model=MonthlyReportOut,
    summary="月度冷链报告：设备报警、超温、离线、数据完整率、问题设备、地区占比、报警响应、网关、登录、保修、环比",
)
def monthly(principal: CurrentUser, conn: Conn, unit_id: QUnit = None, month: QMonth = None) -> dict[str, Any]:
    return report_for(conn, principal, unit_id, month)


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
def monthly_xlsx(principal: CurrentUser, conn: Conn, unit_id: QUnit = None, month: QMonth = None) -> Response:
    report = report_for(conn, principal, unit_id, month)
    return Response(workbook(report), media_type=XLSX, headers={"Content-Disposition": xlsx_filename(report)})
