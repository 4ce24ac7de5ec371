"""The stock ledger over HTTP (VT6, VT7, VT9): receipts, counts, the day's usage, vaccinations,
reversals, and the balances and movements derived. Transfers, scrap and approval requests are
:mod:`api.routes.transfers`.

A user books for their own unit. Booking and reading the ledger are the inventory domain's
(:mod:`inventory.receipts`, :mod:`inventory.corrections`, :mod:`inventory.usage`,
:mod:`inventory.movements`, :mod:`inventory.balances`); these routes parse the request, check who
is asking, call the domain and shape the reply.
"""

from __future__ import annotations

from datetime import date, datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query
from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, StringConstraints

from api.deps import Conn, CurrentUser, require_unit_in_scope, require_writer, set_action, unit_in_scope
from api.fields import Id, Limit, Offset, QId
from coldchain.core.errors import forbidden, invalid, not_found
from inventory import balances, corrections, movements, receipts, usage
from inventory.packages import Package
from inventory.rules import ADJUSTMENT_REASONS

router = APIRouter(tags=["出入库台账"])

Qty = Annotated[int, Field(ge=1, le=10_000_000)]
Note = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=500)]
CodeStr = Annotated[str, StringConstraints(min_length=1, max_length=200)]


def now() -> datetime:
    return datetime.now().astimezone()


class MovementOut(BaseModel):
    id: int
    doc_no: str
    kind: str
    unit_id: int
    unit_name: str
    lot_id: int
    lot_no: str
    vaccine_name: str
    quantity: int
    occurred_at: datetime
    posted_at: datetime
    posted_by: int | None
    counterparty_unit_id: int | None
    counterparty_name: str | None
    supplier: str | None
    transfer_id: int | None
    request_id: int | None
    compartment_id: int | None
    reason: str | None
    note: str | None
    reverses_id: int | None
    reversed_by: int | None


# ---------------------------------------------------------------------------------------------
# Receipts


class PackageIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    code: CodeStr
    contents: list[PackageIn] = Field(default_factory=list, max_length=2000, description="包装内的下级码")


class ReceiptLineIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    lot_id: Id
    quantity: Qty = Field(description="数量（支/瓶）")
    compartment_id: Id | None = Field(None, description="存放温区")
    packages: list[PackageIn] = Field(default_factory=list, max_length=5000, description="扫描的码及其包装层级")


class ReceiptIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    supplier: Annotated[str, StringConstraints(strip_whitespace=True, min_length=2, max_length=200)]
    occurred_at: AwareDatetime | None = Field(None, description="实物入库时间，缺省为现在")
    note: Note | None = None
    lines: list[ReceiptLineIn] = Field(min_length=1, max_length=200)


def _package(p: PackageIn) -> Package:
    return Package(p.code, [_package(c) for c in p.contents])


@router.post("/stock/receipts", response_model=list[MovementOut], status_code=201, summary="采购入库（扫码或按批号）")
def post_receipt(body: ReceiptIn, principal: CurrentUser, conn: Conn) -> list[dict[str, Any]]:
    require_writer(principal)
    set_action(conn, "stock.receipt")
    lines = [
        receipts.ReceiptLine(x.lot_id, x.quantity, x.compartment_id, [_package(p) for p in x.packages])
        for x in body.lines
    ]
    moves = receipts.receive(
        conn, principal.user_id, principal.unit_id, lines, body.occurred_at or now(), body.supplier, body.note
    )
    return movements.by_ids(conn, [m["id"] for m in moves])


# ---------------------------------------------------------------------------------------------
# Counts and the day's usage


class CountLineIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    lot_id: Id
    counted: int = Field(ge=0, le=10_000_000)
    reason: Literal["breakage", "loss", "miscount", "found", "temperature", "other"] | None = Field(
        None, description="账实不符时必填：" + "; ".join(f"{k} {v}" for k, v in ADJUSTMENT_REASONS.items())
    )
    note: Note | None = None


class CountIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    occurred_at: AwareDatetime | None = None
    lines: list[CountLineIn] = Field(max_length=2000, description="全部在库批号的实盘数；未列出的批号按 0 计")


@router.post(
    "/stock/counts", response_model=list[MovementOut], status_code=201, summary="盘点：以实盘数为准，差异逐条记原因"
)
def post_count(body: CountIn, principal: CurrentUser, conn: Conn) -> list[dict[str, Any]]:
    require_writer(principal)
    lots = [x.lot_id for x in body.lines]
    if len(set(lots)) != len(lots):
        raise invalid("同一批号在盘点中出现多次")
    set_action(conn, "stock.count")
    moves = corrections.book_count(
        conn,
        principal.user_id,
        principal.unit_id,
        {x.lot_id: x.counted for x in body.lines},
        {x.lot_id: (x.reason, x.note or "") for x in body.lines if x.reason is not None},
        body.occurred_at or now(),
    )
    return movements.by_ids(conn, [m["id"] for m in moves])


class UsageLineIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    lot_id: Id
    vials: Qty = Field(description="当日使用（含开启后废弃）的支/瓶数")


class UsageIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    day: date
    lines: list[UsageLineIn] = Field(min_length=1, max_length=500)


@router.post(
    "/stock/usage", response_model=list[MovementOut], status_code=201, summary="接种日结束后汇总使用出库（账苗一致）"
)
def post_usage(body: UsageIn, principal: CurrentUser, conn: Conn) -> list[dict[str, Any]]:
    require_writer(principal)
    lots = [x.lot_id for x in body.lines]
    if len(set(lots)) != len(lots):
        raise invalid("同一批号在使用登记中出现多次")
    set_action(conn, "stock.usage")
    moves = usage.book_day_usage(
        conn, principal.user_id, principal.unit_id, body.day, {x.lot_id: x.vials for x in body.lines}, now()
    )
    return movements.by_ids(conn, [m["id"] for m in moves])


# ---------------------------------------------------------------------------------------------
# Vaccinations


class VaccinationIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    vaccinee_ref: Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_-]{8,64}$")] = Field(
        description="受种者化名编号（由接种信息系统给出，不得为姓名、身份证号或手机号）"
    )
    vaccinated_at: AwareDatetime
    lot_id: Id | None = None
    code: CodeStr | None = Field(None, description="最小包装上的码")
    dose_no: int | None = Field(None, ge=1, le=10)


class VaccinationOut(BaseModel):
    id: int
    unit_id: int
    lot_id: int
    code: str | None
    vaccinated_at: datetime
    vaccinee_ref: str
    dose_no: int | None


@router.post("/vaccinations", response_model=VaccinationOut, status_code=201, summary="登记接种（按码或批号）")
def post_vaccination(body: VaccinationIn, principal: CurrentUser, conn: Conn) -> dict[str, Any]:
    require_writer(principal)
    if body.lot_id is None and body.code is None:
        raise invalid("须提供批号或扫描疫苗码")
    if body.vaccinated_at > now():
        raise invalid("接种时间不能晚于当前时间")
    set_action(conn, "vaccination.record")
    return usage.record_vaccination(
        conn,
        principal.user_id,
        principal.unit_id,
        body.vaccinated_at,
        body.vaccinee_ref,
        lot_id=body.lot_id,
        code=body.code,
        dose_no=body.dose_no,
    )


@router.get("/vaccinations", response_model=list[VaccinationOut], summary="接种记录（辖区内）")
def list_vaccinations(
    principal: CurrentUser,
    conn: Conn,
    lot_id: QId = None,
    unit_id: QId = None,
    vaccinee_ref: Annotated[str | None, Query(pattern=r"^[A-Za-z0-9_-]{8,64}$")] = None,
    since: datetime | None = None,
    until: datetime | None = None,
    limit: Limit = 500,
    offset: Offset = 0,
) -> list[dict[str, Any]]:
    if unit_id is not None:
        require_unit_in_scope(conn, principal, unit_id)
    return usage.list_vaccinations(
        conn,
        principal.unit_id,
        unit_id=unit_id,
        lot_id=lot_id,
        vaccinee_ref=vaccinee_ref,
        since=since,
        until=until,
        limit=limit,
        offset=offset,
    )


# ---------------------------------------------------------------------------------------------
# Movements, reversal, balances


@router.get(
    "/stock/movements", response_model=list[MovementOut], summary="出入库台账（辖区内；可按单位、批号、类型、时间筛选）"
)
def list_movements(
    principal: CurrentUser,
    conn: Conn,
    unit_id: QId = None,
    lot_id: QId = None,
    kind: Annotated[str | None, Query(pattern=r"^[a-z_]{2,20}$")] = None,
    since: datetime | None = None,
    until: datetime | None = None,
    limit: Limit = 500,
    offset: Offset = 0,
) -> list[dict[str, Any]]:
    if unit_id is not None:
        require_unit_in_scope(conn, principal, unit_id)
    return movements.list_movements(
        conn,
        principal.unit_id,
        unit_id=unit_id,
        lot_id=lot_id,
        kind=kind,
        since=since,
        until=until,
        limit=limit,
        offset=offset,
    )


@router.get("/stock/movements/{movement_id}", response_model=MovementOut, summary="一条台账记录")
def get_movement(movement_id: Id, principal: CurrentUser, conn: Conn) -> dict[str, Any]:
    row = movements.movement(conn, principal.unit_id, movement_id)
    if row is None:
        raise not_found("台账记录")
    return row


class ReverseIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    reason: Annotated[str, StringConstraints(strip_whitespace=True, min_length=2, max_length=500)]


@router.post(
    "/stock/movements/{movement_id}/reverse",
    response_model=list[MovementOut],
    status_code=201,
    summary="冲销一条记录（每条最多一次；不修改、不删除原记录）",
)
def reverse_movement(movement_id: Id, body: ReverseIn, principal: CurrentUser, conn: Conn) -> list[dict[str, Any]]:
    unit = movements.unit_of(conn, movement_id)
    if unit is None or not unit_in_scope(conn, principal, unit):
        raise not_found("台账记录")
    require_writer(principal)
    if unit != principal.unit_id:
        raise forbidden("只能冲销本单位的记录")
    set_action(conn, "stock.reverse")
    moves = corrections.reverse(conn, principal.user_id, movement_id, body.reason, now())
    return movements.by_ids(conn, [x["id"] for x in moves])


class BalanceOut(BaseModel):
    unit_id: int
    unit_name: str
    unit_level: str
    lot_id: int
    lot_no: str
    expiry_date: date
    spec_id: int
    vaccine_name: str
    spec: str
    programme: bool
    on_hand: int
    reserved: int
    available: int
    doses: int


@router.get(
    "/stock/balances", response_model=list[BalanceOut], summary="库存（辖区内；可按单位、品规、批号、近效期筛选）"
)
def list_balances(
    principal: CurrentUser,
    conn: Conn,
    unit_id: QId = None,
    spec_id: QId = None,
    lot_id: QId = None,
    expires_before: date | None = None,
    include_zero: bool = False,
    limit: Limit = 1000,
    offset: Offset = 0,
) -> list[dict[str, Any]]:
    if unit_id is not None:
        require_unit_in_scope(conn, principal, unit_id)
    return balances.list_balances(
        conn,
        principal.unit_id,
        unit_id=unit_id,
        spec_id=spec_id,
        lot_id=lot_id,
        expires_before=expires_before,
        include_zero=include_zero,
        limit=limit,
        offset=offset,
    )
