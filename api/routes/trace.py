"""Trace of a lot or a code (VT1, CM2), the recall list, and the stock analyses (VT9, VT11).

The trace and the analyses are the inventory domain's (:mod:`inventory.trace`,
:mod:`inventory.findings`); these routes parse the request, check who is asking, call the domain and
shape the reply.
"""

from __future__ import annotations

from datetime import date, datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query, Response
from pydantic import BaseModel, Field

from api.deps import Conn, CurrentUser, require_unit_in_scope
from api.fields import Id, QId
from api.routes.lots import LotOut
from api.routes.plans import MONTH_PATTERN
from coldchain.core.errors import Refused, not_found
from coldchain.core.terms import parse_month
from inventory import findings, packages, trace
from inventory.analysis import OVERSTOCK_MONTHS, SHORTAGE_MONTHS
from inventory.codes import CodeError, parse_code
from inventory.lots import load_lot, lot_record

router = APIRouter(tags=["追溯与分析"])


class DaySeries(BaseModel):
    """One entry per Beijing day the store held the lot, in columns (as the device series)."""

    day: list[date]
    min_t: list[float]
    max_t: list[float]
    mean_t: list[float]


class Excursion(BaseModel):
    probe_id: int
    start: datetime
    end: datetime
    minutes: float
    min_t: float = Field(description="超温期间最低温度 ℃")
    max_t: float = Field(description="超温期间最高温度 ℃")


class Storage(BaseModel):
    compartment_id: int
    compartment_name: str
    equipment_name: str
    t_min: float | None
    t_max: float
    assumed: bool = Field(description="true：入库时未指定温区，按本单位同类温区全部列出")
    min_t: float | None
    max_t: float | None
    mean_t: float | None
    readings: int
    minutes_out_of_range: float
    excursions: list[Excursion] = Field(description="本区间内的超温时段（已截取到区间内）")
    days: DaySeries = Field(description="逐日（北京时间）最低、最高、平均温度，按列给出")


class Custody(BaseModel):
    state: Literal["held", "in_transit"]
    unit_id: int | None
    unit_name: str | None
    transfer_id: int | None
    from_unit_id: int | None
    to_unit_id: int | None
    start: datetime
    end: datetime | None
    minutes_out_of_range: float
    storage: list[Storage]


class TraceVaccination(BaseModel):
    id: int
    unit_id: int
    unit_name: str
    code: str | None
    vaccinated_at: datetime
    vaccinee_ref: str
    dose_no: int | None


class Holder(BaseModel):
    unit_id: int
    unit_name: str
    unit_code: str
    phone: str | None
    on_hand: int
    reserved: int
    transfer_id: int | None = Field(description="非空：在途，发往该单位")


class TraceOut(BaseModel):
    lot: LotOut
    code: str | None
    custody: list[Custody]
    minutes_out_of_range: float
    vaccinations: list[TraceVaccination]
    vaccinations_total: int
    holders: list[Holder] | None


def _json(trace_: dict[str, Any]) -> Response:
    """A lot held province-wide carries ~130 000 daily points: validated and written by
    pydantic-core in one pass, instead of FastAPI's generic route (validate to Python objects, then
    encode with the json module), which took three times as long. The schema is still TraceOut."""
    return Response(TraceOut.model_validate(trace_).model_dump_json(), media_type="application/json")


def _now() -> datetime:
    return datetime.now().astimezone()


@router.get(
    "/trace/lots/{lot_id}",
    response_model=TraceOut,
    summary="批号追溯：流向（含在途）、各环节温度与超温分钟数、接种记录、当前持有单位",
)
def trace_lot(lot_id: Id, principal: CurrentUser, conn: Conn) -> Response:
    out_lot = lot_record(conn, lot_id)
    if not trace.access_allowed(conn, lot_id, principal.unit_id):
        raise not_found("辖区内经手过的批号")
    result = trace.trace_lot(conn, load_lot(conn, lot_id), principal.unit_id, _now())
    return _json({"lot": out_lot, "code": None, **result})


@router.get("/trace/code", response_model=TraceOut, summary="按码追溯：该包装（或所在箱、盒）的流向、温度与接种")
def trace_code(
    principal: CurrentUser, conn: Conn, code: Annotated[str, Query(min_length=1, max_length=200)]
) -> Response:
    try:
        canonical = parse_code(code).code
    except CodeError as exc:
        raise Refused(422, "invalid_code", str(exc)) from exc
    row = packages.package(conn, canonical)
    if row is None or not trace.access_allowed(conn, row["lot_id"], principal.unit_id):
        raise not_found("辖区内经手过的码")
    result = trace.trace_code(conn, load_lot(conn, row["lot_id"]), row, principal.unit_id, _now())
    return _json({"lot": lot_record(conn, row["lot_id"]), "code": canonical, "holders": None, **result})


@router.get("/lots/{lot_id}/holders", response_model=list[Holder], summary="召回名单：现持有该批号的单位（含在途）")
def holders(lot_id: Id, principal: CurrentUser, conn: Conn) -> list[dict[str, Any]]:
    lot_record(conn, lot_id)
    return trace.recall_list(conn, lot_id, principal.unit_id)


# ---------------------------------------------------------------------------------------------
# Analyses


class StockLevel(BaseModel):
    unit_id: int
    unit_name: str
    unit_level: str
    spec_id: int
    vaccine_name: str
    spec: str
    on_hand: int
    monthly_outflow: float
    months_of_stock: float | None
    status: str


@router.get(
    "/analysis/stock-levels",
    response_model=list[StockLevel],
    summary="库存分析：库存可用月数（库存 ÷ 近几个月月均使用/出库），标出积压与短缺",
)
def stock_levels(
    principal: CurrentUser,
    conn: Conn,
    unit_id: QId = None,
    months: Annotated[int, Query(ge=1, le=12)] = 3,
    low: Annotated[float, Query(gt=0, le=12)] = SHORTAGE_MONTHS,
    high: Annotated[float, Query(gt=0, le=36)] = OVERSTOCK_MONTHS,
    only_findings: bool = False,
) -> list[dict[str, Any]]:
    scope = unit_id or principal.unit_id
    require_unit_in_scope(conn, principal, scope)
    if low >= high:
        raise Refused(422, "invalid", "短缺阈值须小于积压阈值")
    return findings.stock_levels(
        conn, scope, months=months, low=low, high=high, only_findings=only_findings, now=_now()
    )


class WastageRow(BaseModel):
    area_unit_id: int
    area_name: str
    spec_id: int
    vaccine_name: str
    spec: str
    vials_used: int
    doses_per_vial: int
    doses_administered: int
    coefficient: float | None
    reference: float
    flag: str


@router.get(
    "/analysis/wastage",
    response_model=list[WastageRow],
    summary="月度损耗系数：按疫苗品规与地区（下一级单位）及合计，对照国家推荐值标出超出者",
)
def wastage_analysis(
    principal: CurrentUser,
    conn: Conn,
    month: Annotated[str, Query(pattern=MONTH_PATTERN)],
    unit_id: QId = None,
    only_findings: bool = False,
) -> list[dict[str, Any]]:
    scope = unit_id or principal.unit_id
    require_unit_in_scope(conn, principal, scope)
    return findings.wastage_by_area(conn, scope, parse_month(month), only_findings=only_findings)
