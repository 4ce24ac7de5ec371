"""The stock ledger over HTTP (VT6–VT8, VT10): receipts, transfers and returns, approval requests,
scrap, counts, the day's usage, vaccinations, reversals, and the balances and movements derived.

A user books for their own unit; approvals are decided by the unit the rules name. Booking logic is
in :mod:`inventory.ledger`; these routes check who is asking and translate the requests.
"""

from __future__ import annotations

from datetime import date, datetime
from typing import Annotated, Any, Literal

import psycopg
from fastapi import APIRouter, Query
from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, StringConstraints, model_validator

from api.deps import Conn, CurrentUser, Principal, require_unit_in_scope, require_writer, set_action, unit_in_scope
from coldchain.core.db import fetch_all, fetch_one
from coldchain.core.errors import forbidden, invalid, not_found
from inventory import ledger
from inventory.rules import ADJUSTMENT_REASONS, SCRAP_REASONS

router = APIRouter(tags=["出入库台账"])

Id = Annotated[int, Field(ge=1, le=2**62)]
QId = Annotated[int | None, Query(ge=1, le=2**62)]
Qty = Annotated[int, Field(ge=1, le=10_000_000)]
Note = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=500)]
CodeStr = Annotated[str, StringConstraints(min_length=1, max_length=200)]
Limit = Annotated[int, Query(ge=1, le=5000)]
Offset = Annotated[int, Query(ge=0, le=10**7)]


def _now() -> datetime:
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


_MOVES = """
SELECT m.id, m.doc_no, m.kind, m.unit_id, u.name AS unit_name, m.lot_id, l.lot_no, v.name AS vaccine_name,
       m.quantity, m.occurred_at, m.posted_at, m.posted_by, m.counterparty_unit_id, cu.name AS counterparty_name,
       m.supplier, m.transfer_id, m.request_id, m.compartment_id, m.reason, m.note, m.reverses_id,
       (SELECT r.id FROM stock_movements r WHERE r.reverses_id = m.id) AS reversed_by
FROM stock_movements m JOIN units u ON u.id = m.unit_id JOIN lots l ON l.id = m.lot_id
JOIN vaccine_specs s ON s.id = l.spec_id JOIN vaccines v ON v.id = s.vaccine_id
LEFT JOIN units cu ON cu.id = m.counterparty_unit_id
"""
_SCOPE = "SELECT descendant_id FROM unit_tree WHERE ancestor_id = %(scope)s"


def _movements_by_id(conn: psycopg.Connection, ids: list[int]) -> list[dict[str, Any]]:
    return fetch_all(conn, _MOVES + " WHERE m.id = ANY(%(ids)s) ORDER BY m.id", {"ids": ids})


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


def _package(p: PackageIn) -> ledger.Package:
    return ledger.Package(p.code, [_package(c) for c in p.contents])


@router.post("/stock/receipts", response_model=list[MovementOut], status_code=201, summary="采购入库（扫码或按批号）")
def post_receipt(body: ReceiptIn, principal: CurrentUser, conn: Conn) -> list[dict[str, Any]]:
    require_writer(principal)
    set_action(conn, "stock.receipt")
    lines = [
        ledger.ReceiptLine(x.lot_id, x.quantity, x.compartment_id, [_package(p) for p in x.packages])
        for x in body.lines
    ]
    moves = ledger.receive(
        conn, principal.user_id, principal.unit_id, lines, body.occurred_at or _now(), body.supplier, body.note
    )
    return _movements_by_id(conn, [m["id"] for m in moves])


# ---------------------------------------------------------------------------------------------
# Transfers


class TransferOut(BaseModel):
    id: int
    kind: str
    from_unit_id: int
    from_unit_name: str
    to_unit_id: int
    to_unit_name: str
    lot_id: int
    lot_no: str
    quantity: int
    state: str
    shipped_at: datetime
    vehicle_compartment_id: int | None
    received_at: datetime | None
    accepted: int | None
    rejected: int | None
    reject_reason: str | None
    version: int


class RequestOut(BaseModel):
    id: int
    kind: str
    unit_id: int
    unit_name: str
    to_unit_id: int | None
    to_unit_name: str | None
    lot_id: int
    lot_no: str
    quantity: int
    reason: str | None
    approver_unit_id: int
    approver_unit_name: str
    state: str
    requested_by: int
    requested_at: datetime
    decided_by: int | None
    decided_at: datetime | None
    decision_note: str | None
    transfer_id: int | None
    version: int


class ShipOut(BaseModel):
    """Either the transfer is on its way, or it waits as a request for the approving unit."""

    transfer: TransferOut | None
    request: RequestOut | None


_TRANSFERS = """
SELECT t.id, t.kind, t.from_unit_id, fu.name AS from_unit_name, t.to_unit_id, tu.name AS to_unit_name, t.lot_id,
       l.lot_no, t.quantity, t.state, t.shipped_at, t.vehicle_compartment_id, t.received_at, t.accepted, t.rejected,
       t.reject_reason, t.version
FROM stock_transfers t JOIN units fu ON fu.id = t.from_unit_id JOIN units tu ON tu.id = t.to_unit_id
JOIN lots l ON l.id = t.lot_id
"""
_REQUESTS = """
SELECT r.id, r.kind, r.unit_id, u.name AS unit_name, r.to_unit_id, tu.name AS to_unit_name, r.lot_id, l.lot_no,
       r.quantity, r.reason, r.approver_unit_id, au.name AS approver_unit_name, r.state, r.requested_by,
       r.requested_at, r.decided_by, r.decided_at, r.decision_note, r.transfer_id, r.version
FROM stock_requests r JOIN units u ON u.id = r.unit_id LEFT JOIN units tu ON tu.id = r.to_unit_id
JOIN units au ON au.id = r.approver_unit_id JOIN lots l ON l.id = r.lot_id
"""


def _transfer(conn: psycopg.Connection, transfer_id: int) -> dict[str, Any]:
    row = fetch_one(conn, _TRANSFERS + " WHERE t.id = %(id)s", {"id": transfer_id})
    assert row is not None
    return row


def _request(conn: psycopg.Connection, request_id: int) -> dict[str, Any]:
    row = fetch_one(conn, _REQUESTS + " WHERE r.id = %(id)s", {"id": request_id})
    assert row is not None
    return row


class ShipIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    to_unit_id: Id
    lot_id: Id
    quantity: Qty
    occurred_at: AwareDatetime | None = None
    codes: list[CodeStr] = Field(default_factory=list, max_length=5000, description="按码出库时扫描的码")
    vehicle_compartment_id: Id | None = Field(None, description="运输车辆温区（用于追溯在途温度）")
    reason: Note | None = Field(None, description="平级出库、退回须说明原因")
    note: Note | None = None


@router.post(
    "/stock/transfers",
    response_model=ShipOut,
    status_code=201,
    summary="出库/退回：下级直接出库（在途），平级出库与退回上级先提交上级审核（预留库存）",
)
def post_transfer(body: ShipIn, principal: CurrentUser, conn: Conn) -> dict[str, Any]:
    require_writer(principal)
    if body.vehicle_compartment_id is not None:
        _own_vehicle(conn, principal, body.vehicle_compartment_id)
    set_action(conn, "stock.transfer")
    out = ledger.transfer_directly(
        conn,
        principal.user_id,
        principal.unit_id,
        body.to_unit_id,
        body.lot_id,
        body.quantity,
        body.occurred_at or _now(),
        codes=body.codes,
        vehicle_compartment_id=body.vehicle_compartment_id,
        note=body.note,
        reason=body.reason,
    )
    if "request" in out and body.codes:
        raise invalid("需审核的出库暂不支持按码出库：请在审核通过后扫码收货")
    return {
        "transfer": _transfer(conn, out["transfer"]["id"]) if "transfer" in out else None,
        "request": _request(conn, out["request"]["id"]) if "request" in out else None,
    }


def _own_vehicle(conn: psycopg.Connection, principal: Principal, compartment_id: int) -> None:
    row = fetch_one(
        conn,
        """SELECT e.unit_id, e.kind FROM compartments c JOIN equipment e ON e.id = c.equipment_id
                             WHERE c.id = %(id)s""",
        {"id": compartment_id},
    )
    if row is None or row["unit_id"] != principal.unit_id or row["kind"] != "vehicle":
        raise invalid("运输温区须为本单位冷藏车的温区")


@router.get("/stock/transfers", response_model=list[TransferOut], summary="调拨单（本单位发出或收到的；可只看在途）")
def list_transfers(
    principal: CurrentUser,
    conn: Conn,
    state: Literal["in_transit", "received", "cancelled"] | None = None,
    direction: Literal["in", "out", "any"] = "any",
    limit: Limit = 200,
    offset: Offset = 0,
) -> list[dict[str, Any]]:
    return fetch_all(
        conn,
        _TRANSFERS
        + f""" WHERE ((%(dir)s <> 'out' AND t.to_unit_id IN ({_SCOPE}))
                             OR (%(dir)s <> 'in' AND t.from_unit_id IN ({_SCOPE})))
                            AND (%(state)s::text IS NULL OR t.state = %(state)s)
                          ORDER BY t.shipped_at DESC, t.id DESC LIMIT %(limit)s OFFSET %(offset)s""",
        {"scope": principal.unit_id, "dir": direction, "state": state, "limit": limit, "offset": offset},
    )


class ReceiveIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    accepted: int = Field(ge=0, le=10_000_000)
    rejected: int = Field(0, ge=0, le=10_000_000)
    reject_reason: Note | None = None
    compartment_id: Id | None = None
    rejected_codes: list[CodeStr] = Field(default_factory=list, max_length=5000)
    occurred_at: AwareDatetime | None = None


class ReceiveOut(BaseModel):
    transfer: TransferOut
    movements: list[MovementOut]


@router.post(
    "/stock/transfers/{transfer_id}/receive", response_model=ReceiveOut, summary="调拨收货：实收入库，拒收退回发货单位"
)
def receive_transfer(transfer_id: Id, body: ReceiveIn, principal: CurrentUser, conn: Conn) -> dict[str, Any]:
    t = fetch_one(conn, "SELECT to_unit_id FROM stock_transfers WHERE id = %(id)s", {"id": transfer_id})
    if t is None or t["to_unit_id"] != principal.unit_id:
        raise not_found("发往本单位的调拨单")
    require_writer(principal)
    set_action(conn, "stock.transfer_receive")
    out = ledger.receive_transfer(
        conn,
        principal.user_id,
        transfer_id,
        body.accepted,
        body.rejected,
        body.occurred_at or _now(),
        reject_reason=body.reject_reason,
        compartment_id=body.compartment_id,
        rejected_codes=body.rejected_codes,
    )
    ids = [m["id"] for m in out.values() if m is not None]
    return {"transfer": _transfer(conn, transfer_id), "movements": _movements_by_id(conn, ids)}


# ---------------------------------------------------------------------------------------------
# Requests: scrap, and the decisions of the approving unit


class ScrapIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    lot_id: Id
    quantity: Qty
    reason: Literal["expired", "breakage", "temperature", "quality", "opened", "other"] = Field(
        description="; ".join(f"{k} {v}" for k, v in SCRAP_REASONS.items())
    )
    note: Note | None = None
    occurred_at: AwareDatetime | None = None


class ScrapOut(BaseModel):
    request: RequestOut | None
    movement: MovementOut | None


@router.post("/stock/scrap", response_model=ScrapOut, status_code=201, summary="报废申请（上级审核后自动记账）")
def post_scrap(body: ScrapIn, principal: CurrentUser, conn: Conn) -> dict[str, Any]:
    require_writer(principal)
    if body.reason == "other" and not body.note:
        raise invalid("报废原因为“其他”时须说明")
    set_action(conn, "stock.scrap")
    out = ledger.request_scrap(
        conn,
        principal.user_id,
        principal.unit_id,
        body.lot_id,
        body.quantity,
        body.reason,
        body.note,
        body.occurred_at or _now(),
    )
    return {
        "request": _request(conn, out["request"]["id"]) if "request" in out else None,
        "movement": _movements_by_id(conn, [out["movement"]["id"]])[0] if "movement" in out else None,
    }


@router.get(
    "/stock/requests",
    response_model=list[RequestOut],
    summary="申请：本单位提交的（mine）或待本单位审核的（to_approve）",
)
def list_requests(
    principal: CurrentUser,
    conn: Conn,
    role: Literal["mine", "to_approve", "any"] = "any",
    state: Literal["pending", "approved", "refused", "cancelled"] | None = None,
    limit: Limit = 200,
    offset: Offset = 0,
) -> list[dict[str, Any]]:
    return fetch_all(
        conn,
        _REQUESTS
        + f""" WHERE ((%(role)s <> 'to_approve' AND r.unit_id IN ({_SCOPE}))
                            OR (%(role)s <> 'mine' AND r.approver_unit_id = %(unit)s))
                           AND (%(state)s::text IS NULL OR r.state = %(state)s)
                         ORDER BY r.requested_at DESC, r.id DESC LIMIT %(limit)s OFFSET %(offset)s""",
        {
            "scope": principal.unit_id,
            "unit": principal.unit_id,
            "role": role,
            "state": state,
            "limit": limit,
            "offset": offset,
        },
    )


class DecisionIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    approve: bool
    note: Note | None = None
    occurred_at: AwareDatetime | None = Field(None, description="通过时的出库/报废时间，缺省为现在")

    @model_validator(mode="after")
    def _refusal_has_reason(self) -> DecisionIn:
        if not self.approve and not self.note:
            raise ValueError("不同意时须说明理由")
        return self


@router.post(
    "/stock/requests/{request_id}/decision",
    response_model=RequestOut,
    summary="审核申请：同意即记账（出库在途或报废），不同意释放预留",
)
def decide_request(request_id: Id, body: DecisionIn, principal: CurrentUser, conn: Conn) -> dict[str, Any]:
    r = fetch_one(conn, "SELECT approver_unit_id, unit_id FROM stock_requests WHERE id = %(id)s", {"id": request_id})
    if r is None or (r["approver_unit_id"] != principal.unit_id and not unit_in_scope(conn, principal, r["unit_id"])):
        raise not_found("申请")
    require_writer(principal)
    if r["approver_unit_id"] != principal.unit_id:
        raise forbidden("此申请须由审核单位审核")
    set_action(conn, "stock.request_decision")
    ledger.decide_request(conn, principal.user_id, request_id, body.approve, body.note, body.occurred_at or _now())
    return _request(conn, request_id)


@router.post("/stock/requests/{request_id}/cancel", response_model=RequestOut, summary="撤回待审申请（释放预留）")
def cancel_request(request_id: Id, principal: CurrentUser, conn: Conn) -> dict[str, Any]:
    r = fetch_one(conn, "SELECT unit_id FROM stock_requests WHERE id = %(id)s", {"id": request_id})
    if r is None or not unit_in_scope(conn, principal, r["unit_id"]):
        raise not_found("申请")
    require_writer(principal)
    if r["unit_id"] != principal.unit_id:
        raise forbidden("只有申请单位可以撤回申请")
    set_action(conn, "stock.request_cancel")
    ledger.cancel_request(conn, principal.user_id, request_id)
    return _request(conn, request_id)


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
    moves = ledger.book_count(
        conn,
        principal.user_id,
        principal.unit_id,
        {x.lot_id: x.counted for x in body.lines},
        {x.lot_id: (x.reason, x.note or "") for x in body.lines if x.reason is not None},
        body.occurred_at or _now(),
    )
    return _movements_by_id(conn, [m["id"] for m in moves])


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
    moves = ledger.book_day_usage(
        conn, principal.user_id, principal.unit_id, body.day, {x.lot_id: x.vials for x in body.lines}, _now()
    )
    return _movements_by_id(conn, [m["id"] for m in moves])


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
    if body.vaccinated_at > _now():
        raise invalid("接种时间不能晚于当前时间")
    set_action(conn, "vaccination.record")
    return ledger.record_vaccination(
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
    return fetch_all(
        conn,
        f"""SELECT id, unit_id, lot_id, code, vaccinated_at, vaccinee_ref, dose_no FROM vaccinations
            WHERE unit_id IN ({_SCOPE}) AND (%(unit)s::bigint IS NULL OR unit_id = %(unit)s)
              AND (%(lot)s::bigint IS NULL OR lot_id = %(lot)s)
              AND (%(ref)s::text IS NULL OR vaccinee_ref = %(ref)s)
              AND (%(since)s::timestamptz IS NULL OR vaccinated_at >= %(since)s)
              AND (%(until)s::timestamptz IS NULL OR vaccinated_at < %(until)s)
            ORDER BY vaccinated_at, id LIMIT %(limit)s OFFSET %(offset)s""",  # noqa: S608 — constant fragment
        {
            "scope": principal.unit_id,
            "unit": unit_id,
            "lot": lot_id,
            "ref": vaccinee_ref,
            "since": since,
            "until": until,
            "limit": limit,
            "offset": offset,
        },
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
    return fetch_all(
        conn,
        _MOVES
        + f""" WHERE m.unit_id IN ({_SCOPE}) AND (%(unit)s::bigint IS NULL OR m.unit_id = %(unit)s)
                        AND (%(lot)s::bigint IS NULL OR m.lot_id = %(lot)s)
                        AND (%(kind)s::text IS NULL OR m.kind = %(kind)s)
                        AND (%(since)s::timestamptz IS NULL OR m.occurred_at >= %(since)s)
                        AND (%(until)s::timestamptz IS NULL OR m.occurred_at < %(until)s)
                      ORDER BY m.occurred_at, m.id LIMIT %(limit)s OFFSET %(offset)s""",
        {
            "scope": principal.unit_id,
            "unit": unit_id,
            "lot": lot_id,
            "kind": kind,
            "since": since,
            "until": until,
            "limit": limit,
            "offset": offset,
        },
    )


@router.get("/stock/movements/{movement_id}", response_model=MovementOut, summary="一条台账记录")
def get_movement(movement_id: Id, principal: CurrentUser, conn: Conn) -> dict[str, Any]:
    row = fetch_one(
        conn,
        _MOVES + f" WHERE m.id = %(id)s AND m.unit_id IN ({_SCOPE})",
        {"id": movement_id, "scope": principal.unit_id},
    )
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
    m = fetch_one(conn, "SELECT unit_id FROM stock_movements WHERE id = %(id)s", {"id": movement_id})
    if m is None or not unit_in_scope(conn, principal, m["unit_id"]):
        raise not_found("台账记录")
    require_writer(principal)
    if m["unit_id"] != principal.unit_id:
        raise forbidden("只能冲销本单位的记录")
    set_action(conn, "stock.reverse")
    moves = ledger.reverse(conn, principal.user_id, movement_id, body.reason, _now())
    return _movements_by_id(conn, [x["id"] for x in moves])


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
    return fetch_all(
        conn,
        f"""SELECT b.unit_id, u.name AS unit_name, u.level AS unit_level, b.lot_id, l.lot_no, l.expiry_date,
                   l.spec_id, v.name AS vaccine_name, s.spec, v.programme, b.on_hand, b.reserved,
                   b.on_hand - b.reserved AS available, b.on_hand * s.doses_per_vial AS doses
            FROM stock_balances b JOIN units u ON u.id = b.unit_id JOIN lots l ON l.id = b.lot_id
            JOIN vaccine_specs s ON s.id = l.spec_id JOIN vaccines v ON v.id = s.vaccine_id
            WHERE b.unit_id IN ({_SCOPE}) AND (%(unit)s::bigint IS NULL OR b.unit_id = %(unit)s)
              AND (%(spec)s::bigint IS NULL OR l.spec_id = %(spec)s) AND (%(lot)s::bigint IS NULL OR b.lot_id = %(lot)s)
              AND (%(before)s::date IS NULL OR l.expiry_date < %(before)s)
              AND (%(zero)s OR b.on_hand > 0)
            ORDER BY u.code, v.name, l.expiry_date, l.id LIMIT %(limit)s OFFSET %(offset)s""",  # noqa: S608
        {
            "scope": principal.unit_id,
            "unit": unit_id,
            "spec": spec_id,
            "lot": lot_id,
            "before": expires_before,
            "zero": include_zero,
            "limit": limit,
            "offset": offset,
        },
    )
