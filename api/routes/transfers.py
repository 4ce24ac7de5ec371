"""Transfers, scrap and approval requests over HTTP (VT8, VT10): issue down directly (in transit
until received), issue sideways and return up through a request the unit above decides, scrap
through a request (or directly at the province), and the receiver's booking of what arrived.

The rules of who may send what where, and the bookings, are the inventory domain's
(:mod:`inventory.outgoing`, :mod:`inventory.transfers`, :mod:`inventory.requests`); these routes
parse the request, check who is asking, call the domain and shape the reply. Movement rows come
back in the shape of :class:`api.routes.stock.MovementOut`.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from fastapi import APIRouter
from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, model_validator

from api.deps import Conn, CurrentUser, require_writer, set_action, unit_in_scope
from api.fields import Id, Limit, Offset
from api.routes.stock import CodeStr, MovementOut, Note, Qty, now
from coldchain.core.errors import forbidden, invalid, not_found
from inventory import movements, outgoing, requests, transfers
from inventory.posting import check_vehicle
from inventory.rules import SCRAP_REASONS

router = APIRouter(tags=["出入库台账"])


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
        check_vehicle(conn, body.vehicle_compartment_id, principal.unit_id)
    set_action(conn, "stock.transfer")
    out = outgoing.transfer_directly(
        conn,
        principal.user_id,
        principal.unit_id,
        body.to_unit_id,
        body.lot_id,
        body.quantity,
        body.occurred_at or now(),
        codes=body.codes,
        vehicle_compartment_id=body.vehicle_compartment_id,
        note=body.note,
        reason=body.reason,
    )
    if "request" in out and body.codes:
        raise invalid("需审核的出库暂不支持按码出库：请在审核通过后扫码收货")
    return {
        "transfer": transfers.transfer(conn, out["transfer"]["id"]) if "transfer" in out else None,
        "request": requests.request(conn, out["request"]["id"]) if "request" in out else None,
    }


@router.get("/stock/transfers", response_model=list[TransferOut], summary="调拨单（本单位发出或收到的；可只看在途）")
def list_transfers(
    principal: CurrentUser,
    conn: Conn,
    state: Literal["in_transit", "received", "cancelled"] | None = None,
    direction: Literal["in", "out", "any"] = "any",
    limit: Limit = 200,
    offset: Offset = 0,
) -> list[dict[str, Any]]:
    return transfers.list_transfers(
        conn, principal.unit_id, direction=direction, state=state, limit=limit, offset=offset
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
    if transfers.receiver_of(conn, transfer_id) != principal.unit_id:
        raise not_found("发往本单位的调拨单")
    require_writer(principal)
    set_action(conn, "stock.transfer_receive")
    out = transfers.receive_transfer(
        conn,
        principal.user_id,
        transfer_id,
        body.accepted,
        body.rejected,
        body.occurred_at or now(),
        reject_reason=body.reject_reason,
        compartment_id=body.compartment_id,
        rejected_codes=body.rejected_codes,
    )
    ids = [m["id"] for m in out.values() if m is not None]
    return {"transfer": transfers.transfer(conn, transfer_id), "movements": movements.by_ids(conn, ids)}


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
    out = outgoing.request_scrap(
        conn,
        principal.user_id,
        principal.unit_id,
        body.lot_id,
        body.quantity,
        body.reason,
        body.note,
        body.occurred_at or now(),
    )
    return {
        "request": requests.request(conn, out["request"]["id"]) if "request" in out else None,
        "movement": movements.by_ids(conn, [out["movement"]["id"]])[0] if "movement" in out else None,
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
    return requests.list_requests(conn, principal.unit_id, role=role, state=state, limit=limit, offset=offset)


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
    r = requests.parties(conn, request_id)
    if r is None or (r["approver_unit_id"] != principal.unit_id and not unit_in_scope(conn, principal, r["unit_id"])):
        raise not_found("申请")
    require_writer(principal)
    if r["approver_unit_id"] != principal.unit_id:
        raise forbidden("此申请须由审核单位审核")
    set_action(conn, "stock.request_decision")
    requests.decide_request(conn, principal.user_id, request_id, body.approve, body.note, body.occurred_at or now())
    return requests.request(conn, request_id)


@router.post("/stock/requests/{request_id}/cancel", response_model=RequestOut, summary="撤回待审申请（释放预留）")
def cancel_request(request_id: Id, principal: CurrentUser, conn: Conn) -> dict[str, Any]:
    r = requests.parties(conn, request_id)
    if r is None or not unit_in_scope(conn, principal, r["unit_id"]):
        raise not_found("申请")
    require_writer(principal)
    if r["unit_id"] != principal.unit_id:
        raise forbidden("只有申请单位可以撤回申请")
    set_action(conn, "stock.request_cancel")
    requests.cancel_request(conn, principal.user_id, request_id)
    return requests.request(conn, request_id)
