"""Login compliance (CM14) for the jurisdiction: per site and day, and the monthly table.

The rule and the tables are :mod:`analytics.logins`; this module only scopes and serialises.
"""

from __future__ import annotations

from dataclasses import asdict
from datetime import date, datetime
from typing import Annotated, Any

from fastapi import APIRouter, Query
from pydantic import BaseModel

from analytics.logins import beijing_today, monthly_table, site_days, sites_under
from api.deps import Conn, CurrentUser, require_unit_in_scope
from coldchain.core.errors import invalid

router = APIRouter(prefix="/login-compliance", tags=["登录检查"])


class SiteDayOut(BaseModel):
    unit_id: int
    code: str
    name: str
    day: date
    sign_ins: int
    first: datetime | None
    last: datetime | None
    compliant: bool


class MonthlyOut(BaseModel):
    unit_id: int
    code: str
    name: str
    days: int
    compliant_days: int
    noncompliant_days: int
    days_without_login: int
    rate: float | None


QUnit = Annotated[int | None, Query(ge=1, le=2**62, description="单位（默认本单位）；其下所有接种单位")]


@router.get("/daily", response_model=list[SiteDayOut], summary="某日各接种单位的登录次数及是否达标（两次且间隔≥6小时）")
def daily(principal: CurrentUser, conn: Conn, unit_id: QUnit = None, day: date | None = None) -> list[dict[str, Any]]:
    unit = unit_id or principal.unit_id
    require_unit_in_scope(conn, principal, unit)
    wanted = day or beijing_today()
    if not date(2000, 1, 1) <= wanted <= beijing_today():
        raise invalid("日期须在 2000-01-01 与今天之间")
    sites = {s.unit_id: s for s in sites_under(conn, unit)}
    return [
        {**asdict(d), "code": sites[d.unit_id].code, "name": sites[d.unit_id].name}
        for d in site_days(conn, unit, wanted, wanted)
        if d.unit_id in sites
    ]


@router.get("/monthly", response_model=list[MonthlyOut], summary="月度登录检查表（按达标率升序）")
def monthly(
    principal: CurrentUser,
    conn: Conn,
    unit_id: QUnit = None,
    month: Annotated[str | None, Query(pattern=r"^2[0-9]{3}-(0[1-9]|1[0-2])$", description="YYYY-MM，默认本月")] = None,
) -> list[dict[str, Any]]:
    unit = unit_id or principal.unit_id
    require_unit_in_scope(conn, principal, unit)
    first = date.fromisoformat(f"{month}-01") if month else beijing_today().replace(day=1)
    return [asdict(r) for r in monthly_table(conn, unit, first)]
