"""Trace of a lot or a code (VT1, CM2), the recall list, and the stock analyses (VT9, VT11)."""

from __future__ import annotations

from collections import defaultdict
from datetime import date, datetime, timedelta
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query, Response
from pydantic import BaseModel, Field

from api.deps import Conn, CurrentUser, require_unit_in_scope
from api.routes.catalogue import LotOut, lot_row
from api.routes.plans import MONTH_PATTERN, month_start
from coldchain.core.db import fetch_all, fetch_one
from coldchain.core.errors import Refused, not_found
from coldchain.core.terms import BEIJING
from inventory import trace
from inventory.analysis import OVERSTOCK_MONTHS, SHORTAGE_MONTHS, stock_status, wastage
from inventory.codes import CodeError, parse_code
from inventory.ledger import load_lot

router = APIRouter(tags=["追溯与分析"])

Id = Annotated[int, Field(ge=1, le=2**62)]
QId = Annotated[int | None, Query(ge=1, le=2**62)]


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
    out_lot = lot_row(conn, lot_id)
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
    row = fetch_one(conn, "SELECT * FROM package_codes WHERE code = %(c)s", {"c": canonical})
    if row is None or not trace.access_allowed(conn, row["lot_id"], principal.unit_id):
        raise not_found("辖区内经手过的码")
    result = trace.trace_code(conn, load_lot(conn, row["lot_id"]), row, principal.unit_id, _now())
    return _json({"lot": lot_row(conn, row["lot_id"]), "code": canonical, "holders": None, **result})


@router.get("/lots/{lot_id}/holders", response_model=list[Holder], summary="召回名单：现持有该批号的单位（含在途）")
def holders(lot_id: Id, principal: CurrentUser, conn: Conn) -> list[dict[str, Any]]:
    lot_row(conn, lot_id)
    return trace.recall_list(conn, lot_id, principal.unit_id)


# ---------------------------------------------------------------------------------------------
# Analyses

_OUTFLOW = """
SELECT m.unit_id, l.spec_id, -sum(m.quantity)::int AS vials
FROM stock_movements m LEFT JOIN stock_movements o ON o.id = m.reverses_id JOIN lots l ON l.id = m.lot_id
WHERE m.unit_id IN (SELECT descendant_id FROM unit_tree WHERE ancestor_id = %(unit)s)
  AND coalesce(o.kind, m.kind) = ANY(%(kinds)s) AND m.occurred_at >= %(from)s AND m.occurred_at < %(to)s
GROUP BY 1, 2
"""
_STOCK = """
SELECT b.unit_id, u.name AS unit_name, u.level AS unit_level, l.spec_id, v.name AS vaccine_name, s.spec,
       sum(b.on_hand)::int AS on_hand
FROM stock_balances b JOIN units u ON u.id = b.unit_id JOIN lots l ON l.id = b.lot_id
JOIN vaccine_specs s ON s.id = l.spec_id JOIN vaccines v ON v.id = s.vaccine_id
WHERE b.unit_id IN (SELECT descendant_id FROM unit_tree WHERE ancestor_id = %(unit)s)
GROUP BY 1, 2, 3, 4, 5, 6
"""
_NAMES = """
SELECT u.id AS unit_id, u.name AS unit_name, u.level AS unit_level, s.id AS spec_id, v.name AS vaccine_name, s.spec,
       s.doses_per_vial, s.ref_wastage::float8 AS ref_wastage
FROM units u CROSS JOIN vaccine_specs s JOIN vaccines v ON v.id = s.vaccine_id
WHERE u.id = ANY(%(units)s) AND s.id = ANY(%(specs)s)
"""


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
    now = _now()
    outflow = {
        (r["unit_id"], r["spec_id"]): r["vials"]
        for r in fetch_all(
            conn,
            _OUTFLOW,
            {"unit": scope, "kinds": ["usage", "issue"], "from": now - timedelta(days=30 * months), "to": now},
        )
    }
    stock = {(r["unit_id"], r["spec_id"]): r for r in fetch_all(conn, _STOCK, {"unit": scope})}
    keys = set(stock) | set(outflow)
    names = {
        (r["unit_id"], r["spec_id"]): r
        for r in fetch_all(conn, _NAMES, {"units": sorted({k[0] for k in keys}), "specs": sorted({k[1] for k in keys})})
    }
    out = []
    for key in sorted(keys):
        per_month = outflow.get(key, 0) / months
        on_hand = stock[key]["on_hand"] if key in stock else 0
        finding = stock_status(on_hand, per_month, low=low, high=high)
        if only_findings and finding.status in {"normal", "empty"}:
            continue
        n = names[key]
        out.append(
            {
                "unit_id": key[0],
                "unit_name": n["unit_name"],
                "unit_level": n["unit_level"],
                "spec_id": key[1],
                "vaccine_name": n["vaccine_name"],
                "spec": n["spec"],
                "on_hand": on_hand,
                "monthly_outflow": per_month,
                "months_of_stock": finding.months,
                "status": finding.status,
            }
        )
    return out


_SITES = """
SELECT t.descendant_id AS site,
       (SELECT a.descendant_id FROM unit_tree a JOIN unit_tree b ON b.ancestor_id = a.descendant_id
        WHERE a.ancestor_id = %(unit)s AND a.depth = 1 AND b.descendant_id = t.descendant_id) AS area
FROM unit_tree t WHERE t.ancestor_id = %(unit)s
"""
_GIVEN = """
SELECT v.unit_id, l.spec_id, count(*)::int AS doses
FROM vaccinations v JOIN lots l ON l.id = v.lot_id
WHERE v.unit_id IN (SELECT descendant_id FROM unit_tree WHERE ancestor_id = %(unit)s)
  AND v.vaccinated_at >= %(from)s AND v.vaccinated_at < %(to)s
GROUP BY 1, 2
"""


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
    first = month_start(month)
    nxt = date(first.year + 1, 1, 1) if first.month == 12 else date(first.year, first.month + 1, 1)
    span = {
        "unit": scope,
        "from": datetime(first.year, first.month, 1, tzinfo=BEIJING),
        "to": datetime(nxt.year, nxt.month, 1, tzinfo=BEIJING),
    }
    area_of = {r["site"]: r["area"] or scope for r in fetch_all(conn, _SITES, {"unit": scope})}
    vials: dict[tuple[int, int], int] = defaultdict(int)
    doses: dict[tuple[int, int], int] = defaultdict(int)
    for r in fetch_all(conn, _OUTFLOW, {**span, "kinds": ["usage"]}):
        for area in {area_of[r["unit_id"]], scope}:
            vials[(area, r["spec_id"])] += r["vials"]
    for r in fetch_all(conn, _GIVEN, span):
        for area in {area_of[r["unit_id"]], scope}:
            doses[(area, r["spec_id"])] += r["doses"]
    keys = set(vials) | set(doses)
    names = {
        (r["unit_id"], r["spec_id"]): r
        for r in fetch_all(conn, _NAMES, {"units": sorted({k[0] for k in keys}), "specs": sorted({k[1] for k in keys})})
    }
    out = []
    # The whole area first, then its parts, each by vaccine.
    for key in sorted(keys, key=lambda k: (k[0] != scope, k[0], names[k]["vaccine_name"], names[k]["spec"])):
        n = names[key]
        w = wastage(vials[key], n["doses_per_vial"], doses[key], n["ref_wastage"])
        if only_findings and w.flag in {"normal", "no_vaccinations"}:
            continue
        out.append(
            {
                "area_unit_id": key[0],
                "area_name": n["unit_name"],
                "spec_id": key[1],
                "vaccine_name": n["vaccine_name"],
                "spec": n["spec"],
                "vials_used": vials[key],
                "doses_per_vial": n["doses_per_vial"],
                "doses_administered": doses[key],
                "coefficient": w.coefficient,
                "reference": n["ref_wastage"],
                "flag": w.flag,
            }
        )
    return out
