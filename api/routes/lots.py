"""Lots (VT3) with their batch-release certificates and error reports, and scanning a code to see
what it is (VT4).

A lot is entered by whoever receives it first and is then shared province-wide; the province or the
user who entered it corrects it, each correction a new version with its reason (``lot_revisions``).
Everyone else reports an error to the province's queue. The records and their queries are the
inventory domain's (:mod:`inventory.lots`, :mod:`inventory.lot_reports`, :mod:`inventory.catalogue`,
:mod:`inventory.packages`); these routes parse the request, check who is asking, call the domain and
shape the reply.
"""

from __future__ import annotations

from datetime import date, datetime
from typing import Annotated, Any

import psycopg
from fastapi import APIRouter, Query, Request, Response
from pydantic import BaseModel, ConfigDict, Field, StringConstraints
from starlette.concurrency import run_in_threadpool

from api.deps import Conn, CurrentUser, Principal, require_writer, set_action, unit_in_scope, update_versioned
from api.fields import Id, QId, Version
from api.readonly import open_to_read_only
from api.routes.catalogue import SpecOut, require_province_writer
from coldchain.core.errors import Refused, forbidden, invalid, not_found
from inventory import catalogue, lot_reports, lots, packages
from inventory.codes import CodeError, parse_code

router = APIRouter(tags=["疫苗目录与批号"])

LotNo = Annotated[str, StringConstraints(strip_whitespace=True, pattern=r"^[0-9A-Za-z-]{1,20}$")]
Reason = Annotated[str, StringConstraints(strip_whitespace=True, min_length=2, max_length=500)]
Limit = Annotated[int, Query(ge=1, le=1000)]
Offset = Annotated[int, Query(ge=0, le=10**6)]

CERTIFICATE_MAX_BYTES = 5 * 1024 * 1024
_MAGIC = {b"\xff\xd8\xff": "image/jpeg", b"\x89PNG\r\n\x1a\n": "image/png", b"%PDF-": "application/pdf"}


# ---------------------------------------------------------------------------------------------
# Lots


class LotIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    spec_id: Id
    lot_no: LotNo
    production_date: date
    expiry_date: date
    release_no: Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=40)] = Field(
        description="批签发号"
    )


class LotPatch(BaseModel):
    model_config = ConfigDict(extra="forbid")
    version: Version
    reason: Reason = Field(description="更正原因")
    lot_no: LotNo | None = None
    production_date: date | None = None
    expiry_date: date | None = None
    release_no: Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=40)] | None = None


class LotOut(BaseModel):
    id: int
    spec_id: int
    vaccine_name: str
    spec: str
    manufacturer_name: str
    programme: bool
    lot_no: str
    production_date: date
    expiry_date: date
    release_no: str
    unit_id: int
    unit_name: str
    entered_by: int | None
    has_certificate: bool
    version: int
    updated_at: datetime


class LotRevision(BaseModel):
    version: int
    data: dict[str, Any]
    changed_by: int | None
    changed_at: datetime
    reason: str | None


class LotDetail(LotOut):
    revisions: list[LotRevision]


@router.get("/lots", response_model=list[LotOut], summary="批号（全省共享；可按品规、批号、效期筛选）")
def list_lots(
    principal: CurrentUser,
    conn: Conn,
    spec_id: QId = None,
    lot_no: Annotated[str | None, Query(pattern=r"^[0-9A-Za-z-]{1,20}$")] = None,
    expires_before: date | None = None,
    limit: Limit = 200,
    offset: Offset = 0,
) -> list[dict[str, Any]]:
    return lots.list_lots(
        conn, spec_id=spec_id, lot_no=lot_no, expires_before=expires_before, limit=limit, offset=offset
    )


@router.post("/lots", response_model=LotOut, status_code=201, summary="录入批号（首次入库时）")
def create_lot(body: LotIn, principal: CurrentUser, conn: Conn) -> dict[str, Any]:
    require_writer(principal)
    lots.check_dates(body.production_date, body.expiry_date)
    catalogue.spec(conn, body.spec_id)
    set_action(conn, "lot.create")
    lot_id = lots.create_lot(
        conn,
        spec_id=body.spec_id,
        lot_no=body.lot_no,
        production_date=body.production_date,
        expiry_date=body.expiry_date,
        release_no=body.release_no,
        unit_id=principal.unit_id,
        user_id=principal.user_id,
    )
    return lots.lot_record(conn, lot_id)


@router.get("/lots/{lot_id}", response_model=LotDetail, summary="批号详情与更正历史")
def get_lot(lot_id: Id, principal: CurrentUser, conn: Conn) -> dict[str, Any]:
    row = lots.lot_record(conn, lot_id)
    row["revisions"] = lots.revisions(conn, lot_id)
    return row


@router.patch("/lots/{lot_id}", response_model=LotOut, summary="更正批号信息（省级或录入人；每次更正保留版本）")
def correct_lot(lot_id: Id, body: LotPatch, principal: CurrentUser, conn: Conn) -> dict[str, Any]:
    lot = lots.lot_record(conn, lot_id)
    require_writer(principal)
    if principal.actor.unit.level != "province" and lot["entered_by"] != principal.user_id:
        raise forbidden("批号信息只能由省级或录入人更正；发现错误请使用“报错”")
    changes = body.model_dump(exclude_unset=True, exclude={"version", "reason"})
    blank = sorted(k for k, v in changes.items() if v is None)
    if blank:
        # Every field of a lot is required: an explicit null is a refusal, not a crash in _check_dates.
        raise invalid(f"批号信息不能清空：{'、'.join(blank)}", {"fields": blank})
    lots.check_dates(
        changes.get("production_date", lot["production_date"]), changes.get("expiry_date", lot["expiry_date"])
    )
    set_action(conn, "lot.correct")
    lots.record_reason(conn, body.reason)
    update_versioned(conn, "lots", lot_id, body.version, {**changes, "updated_at": datetime.now().astimezone()}, "批号")
    return lots.lot_record(conn, lot_id)


@router.put(
    "/lots/{lot_id}/certificate",
    status_code=204,
    summary="上传批签发证明（JPEG / PNG / PDF，≤ 5 MB）",
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {
                t: {"schema": {"type": "string", "format": "binary"}}
                for t in ("image/jpeg", "image/png", "application/pdf")
            },
        }
    },
)
async def put_certificate(lot_id: Id, request: Request, principal: CurrentUser, conn: Conn) -> Response:
    # Async only to read the body in chunks and stop at the limit; the database work runs in the
    # thread pool like every other route, never on the event loop.
    await run_in_threadpool(_may_upload, conn, principal, lot_id)
    declared = request.headers.get("content-type", "").split(";")[0].strip().lower()
    length = request.headers.get("content-length")
    if length is not None and length.isdigit() and int(length) > CERTIFICATE_MAX_BYTES:
        raise Refused(413, "too_large", "批签发证明不能超过 5 MB")
    body = bytearray()
    async for chunk in request.stream():
        body.extend(chunk)
        if len(body) > CERTIFICATE_MAX_BYTES:
            raise Refused(413, "too_large", "批签发证明不能超过 5 MB")
    if not body:
        raise invalid("批签发证明为空")
    actual = next((t for magic, t in _MAGIC.items() if body.startswith(magic)), None)
    if actual is None:
        raise Refused(415, "unsupported_type", "批签发证明只接受 JPEG、PNG 图片或 PDF 文件")
    if declared != actual:
        raise Refused(415, "unsupported_type", f"文件内容是 {actual}，与声明的类型 {declared or '（无）'} 不符")
    await run_in_threadpool(_store_certificate, conn, principal, lot_id, actual, bytes(body))
    return Response(status_code=204)


def _may_upload(conn: psycopg.Connection, principal: Principal, lot_id: int) -> None:
    lot = lots.lot_record(conn, lot_id)
    require_writer(principal)
    if principal.actor.unit.level != "province" and lot["entered_by"] != principal.user_id:
        raise forbidden("批签发证明只能由省级或录入人上传")


def _store_certificate(
    conn: psycopg.Connection, principal: Principal, lot_id: int, content_type: str, body: bytes
) -> None:
    set_action(conn, "lot.certificate")
    lots.store_certificate(conn, lot_id, content_type, body, principal.user_id)


@router.get(
    "/lots/{lot_id}/certificate",
    summary="批签发证明（最新一版）",
    responses={200: {"content": {"image/jpeg": {}, "image/png": {}, "application/pdf": {}}}},
)
def get_certificate(lot_id: Id, principal: CurrentUser, conn: Conn) -> Response:
    lots.lot_record(conn, lot_id)
    row = lots.latest_certificate(conn, lot_id)
    if row is None:
        raise not_found("批签发证明")
    return Response(
        bytes(row["content"]),
        media_type=row["content_type"],
        headers={"Cache-Control": "private, no-cache", "X-Content-Type-Options": "nosniff"},
    )


# ---------------------------------------------------------------------------------------------
# Error reports: anyone reports, the province resolves


class ErrorReportIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    message: Annotated[str, StringConstraints(strip_whitespace=True, min_length=2, max_length=1000)]


class ErrorReportDecision(BaseModel):
    model_config = ConfigDict(extra="forbid")
    version: Version
    state: str = Field(pattern=r"^(resolved|dismissed)$")
    resolution: Reason


class ErrorReportOut(BaseModel):
    id: int
    lot_id: int
    lot_no: str
    unit_id: int
    unit_name: str
    reported_by: int
    message: str
    state: str
    created_at: datetime
    resolved_by: int | None
    resolved_at: datetime | None
    resolution: str | None
    version: int


@router.post(
    "/lots/{lot_id}/error-reports",
    response_model=ErrorReportOut,
    status_code=201,
    summary="报告批号信息错误（各单位管理员；进入省级待办）",
)
def report_lot_error(lot_id: Id, body: ErrorReportIn, principal: CurrentUser, conn: Conn) -> dict[str, Any]:
    lots.lot_record(conn, lot_id)
    require_writer(principal)  # reported by any unit's administrators; supervisors and analysts only read
    set_action(conn, "lot.report_error")
    return lot_reports.create_report(conn, lot_id, principal.unit_id, principal.user_id, body.message)


@router.get(
    "/lot-error-reports",
    response_model=list[ErrorReportOut],
    summary="批号报错：省级看全部待办，其他单位看本单位提交的",
)
def list_error_reports(
    principal: CurrentUser,
    conn: Conn,
    state: Annotated[str | None, Query(pattern=r"^(open|resolved|dismissed)$")] = None,
    limit: Limit = 200,
    offset: Offset = 0,
) -> list[dict[str, Any]]:
    province = principal.actor.unit.level == "province"
    return lot_reports.list_reports(
        conn, unit_id=None if province else principal.unit_id, state=state, limit=limit, offset=offset
    )


@router.post("/lot-error-reports/{report_id}/decision", response_model=ErrorReportOut, summary="处理批号报错（省级）")
def decide_error_report(report_id: Id, body: ErrorReportDecision, principal: CurrentUser, conn: Conn) -> dict[str, Any]:
    require_province_writer(principal)
    lot_reports.require_open(conn, report_id)
    set_action(conn, "lot.report_decided")
    update_versioned(
        conn,
        "lot_error_reports",
        report_id,
        body.version,
        {
            "state": body.state,
            "resolution": body.resolution,
            "resolved_by": principal.user_id,
            "resolved_at": datetime.now().astimezone(),
        },
        "报错",
    )
    return lot_reports.report(conn, report_id)


# ---------------------------------------------------------------------------------------------
# Scanning


class ScanIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    code: Annotated[str, StringConstraints(min_length=1, max_length=200)]


class ScanOut(BaseModel):
    kind: str
    code: str
    product_key: str
    serial: str | None
    lot_no: str | None
    expiry: date | None
    production_date: date | None
    spec: SpecOut | None
    lot: LotOut | None
    registered: bool
    holder_unit_id: int | None
    in_transit: bool
    used: bool
    pack_level: int | None
    units: int | None


@router.post(
    "/codes/resolve",
    response_model=ScanOut,
    summary="扫码识别：品规、批号与当前所在单位",
    openapi_extra=open_to_read_only("只读查询：不写入任何数据，用 POST 只因扫码内容放在请求体中"),
)
def resolve_code(body: ScanIn, principal: CurrentUser, conn: Conn) -> dict[str, Any]:
    try:
        parsed = parse_code(body.code)
    except CodeError as exc:
        raise Refused(422, "invalid_code", str(exc)) from exc
    spec = catalogue.spec_for_product(conn, parsed)
    if spec is None:
        raise Refused(422, "unknown_product", f"药品标识 {parsed.product_key} 不在全省疫苗目录中，请报省级核实")
    registered = packages.package(conn, parsed.code)
    lot = None
    if registered is not None:
        lot = lots.lot_record(conn, registered["lot_id"])
    elif parsed.lot_no is not None:
        found = lots.find_lot(conn, spec["id"], parsed.lot_no)
        lot = lots.lot_record(conn, found) if found is not None else None
    visible = registered is not None and unit_in_scope(conn, principal, registered["holder_unit_id"])
    return {
        "kind": parsed.kind,
        "code": parsed.code,
        "product_key": parsed.product_key,
        "serial": parsed.serial,
        "lot_no": parsed.lot_no,
        "expiry": parsed.expiry,
        "production_date": parsed.production_date,
        "spec": spec,
        "lot": lot,
        "registered": registered is not None,
        "holder_unit_id": registered["holder_unit_id"] if visible and registered else None,
        "in_transit": bool(registered and registered["transfer_id"]),
        "used": bool(registered and registered["used_at"]),
        "pack_level": registered["pack_level"] if registered else None,
        "units": registered["units"] if registered else None,
    }
