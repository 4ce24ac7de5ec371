"""The vaccine catalogue (VT2), lots (VT3) with their batch-release certificates and error reports,
and scanning a code to see what it is (VT4).

The catalogue is the province's: it is refreshed yearly from the tender results, so only province
writers change it. A lot is entered by whoever receives it first and is then shared province-wide;
the province or the user who entered it corrects it, each correction a new version with its reason
(``lot_revisions``). Everyone else reports an error to the province's queue.
"""

from __future__ import annotations

import hashlib
from datetime import date, datetime
from decimal import Decimal
from typing import Annotated, Any

import psycopg
from fastapi import APIRouter, Query, Request, Response
from pydantic import BaseModel, ConfigDict, Field, StringConstraints
from starlette.concurrency import run_in_threadpool

from api.deps import Conn, CurrentUser, Principal, require_writer, set_action, unit_in_scope, update_versioned
from api.readonly import open_to_read_only
from coldchain.core.db import fetch_all, fetch_one
from coldchain.core.errors import Refused, conflict, forbidden, invalid, not_found
from inventory.codes import CodeError, parse_code

router = APIRouter(tags=["疫苗目录与批号"])

Id = Annotated[int, Field(ge=1, le=2**62)]
QId = Annotated[int | None, Query(ge=1, le=2**62)]
Version = Annotated[int, Field(ge=1, le=2**31 - 1)]
Name = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=100)]
LotNo = Annotated[str, StringConstraints(strip_whitespace=True, pattern=r"^[0-9A-Za-z-]{1,20}$")]
Reason = Annotated[str, StringConstraints(strip_whitespace=True, min_length=2, max_length=500)]
Limit = Annotated[int, Query(ge=1, le=1000)]
Offset = Annotated[int, Query(ge=0, le=10**6)]

CERTIFICATE_MAX_BYTES = 5 * 1024 * 1024
_MAGIC = {b"\xff\xd8\xff": "image/jpeg", b"\x89PNG\r\n\x1a\n": "image/png", b"%PDF-": "application/pdf"}


def require_province_writer(principal: Principal) -> None:
    require_writer(principal)
    if principal.actor.unit.level != "province":
        raise forbidden("疫苗目录由省级根据招标结果维护")


# ---------------------------------------------------------------------------------------------
# Catalogue


class CategoryIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: Name


class CategoryOut(BaseModel):
    id: int
    name: str
    version: int


class ManufacturerIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: Name
    credit_code: Annotated[str, StringConstraints(pattern=r"^[0-9A-Z]{18}$")] | None = None


class ManufacturerOut(BaseModel):
    id: int
    name: str
    credit_code: str | None
    version: int


class VaccineIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    category_id: Id
    name: Name
    programme: bool = Field(description="true 免疫规划疫苗 / false 非免疫规划疫苗")
    storage_mode: str = Field("refrigerated", pattern=r"^(refrigerated|frozen)$")


class VaccineOut(BaseModel):
    id: int
    category_id: int
    category_name: str
    name: str
    programme: bool
    storage_mode: str
    version: int


class SpecIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    vaccine_id: Id
    manufacturer_id: Id
    spec: Name = Field(description="品规，如 10μg/0.5mL/支")
    doses_per_vial: int = Field(ge=1, le=50)
    ref_wastage: Decimal = Field(ge=1, le=5, max_digits=3, decimal_places=2, description="国家推荐损耗系数")
    trace_prefix: Annotated[str, StringConstraints(pattern=r"^[0-9]{7}$")] | None = None
    gtin: Annotated[str, StringConstraints(pattern=r"^[0-9]{14}$")] | None = None
    tender_year: int | None = Field(None, ge=2000, le=2100)


class SpecPatch(BaseModel):
    model_config = ConfigDict(extra="forbid")
    version: Version
    spec: Name | None = None
    doses_per_vial: int | None = Field(None, ge=1, le=50)
    ref_wastage: Decimal | None = Field(None, ge=1, le=5, max_digits=3, decimal_places=2)
    trace_prefix: Annotated[str, StringConstraints(pattern=r"^[0-9]{7}$")] | None = None
    gtin: Annotated[str, StringConstraints(pattern=r"^[0-9]{14}$")] | None = None
    tender_year: int | None = Field(None, ge=2000, le=2100)
    active: bool | None = None


class SpecOut(BaseModel):
    id: int
    vaccine_id: int
    vaccine_name: str
    category_name: str
    programme: bool
    storage_mode: str
    manufacturer_id: int
    manufacturer_name: str
    spec: str
    doses_per_vial: int
    ref_wastage: float
    trace_prefix: str | None
    gtin: str | None
    tender_year: int | None
    active: bool
    version: int


_SPECS = """
SELECT s.id, s.vaccine_id, v.name AS vaccine_name, c.name AS category_name, v.programme, v.storage_mode,
       s.manufacturer_id, m.name AS manufacturer_name, s.spec, s.doses_per_vial, s.ref_wastage::float8 AS ref_wastage,
       s.trace_prefix, s.gtin, s.tender_year, s.active, s.version
FROM vaccine_specs s JOIN vaccines v ON v.id = s.vaccine_id JOIN vaccine_categories c ON c.id = v.category_id
JOIN manufacturers m ON m.id = s.manufacturer_id
"""
_VACCINES = """
SELECT v.id, v.category_id, c.name AS category_name, v.name, v.programme, v.storage_mode, v.version
FROM vaccines v JOIN vaccine_categories c ON c.id = v.category_id
"""


@router.get("/catalogue/categories", response_model=list[CategoryOut], summary="疫苗大类")
def list_categories(principal: CurrentUser, conn: Conn) -> list[dict[str, Any]]:
    return fetch_all(conn, "SELECT id, name, version FROM vaccine_categories ORDER BY name")


@router.post("/catalogue/categories", response_model=CategoryOut, status_code=201, summary="新增疫苗大类（省级）")
def create_category(body: CategoryIn, principal: CurrentUser, conn: Conn) -> dict[str, Any]:
    require_province_writer(principal)
    row = fetch_one(
        conn, "INSERT INTO vaccine_categories (name) VALUES (%(name)s) RETURNING id, name, version", body.model_dump()
    )
    assert row is not None
    return row


@router.get("/catalogue/manufacturers", response_model=list[ManufacturerOut], summary="生产企业")
def list_manufacturers(principal: CurrentUser, conn: Conn) -> list[dict[str, Any]]:
    return fetch_all(conn, "SELECT id, name, credit_code, version FROM manufacturers ORDER BY name")


@router.post(
    "/catalogue/manufacturers", response_model=ManufacturerOut, status_code=201, summary="新增生产企业（省级）"
)
def create_manufacturer(body: ManufacturerIn, principal: CurrentUser, conn: Conn) -> dict[str, Any]:
    require_province_writer(principal)
    row = fetch_one(
        conn,
        "INSERT INTO manufacturers (name, credit_code) VALUES (%(name)s, %(credit_code)s) RETURNING *",
        body.model_dump(),
    )
    assert row is not None
    return row


@router.get("/catalogue/vaccines", response_model=list[VaccineOut], summary="疫苗名称")
def list_vaccines(principal: CurrentUser, conn: Conn) -> list[dict[str, Any]]:
    return fetch_all(conn, _VACCINES + " ORDER BY c.name, v.name")


@router.post("/catalogue/vaccines", response_model=VaccineOut, status_code=201, summary="新增疫苗（省级）")
def create_vaccine(body: VaccineIn, principal: CurrentUser, conn: Conn) -> dict[str, Any]:
    require_province_writer(principal)
    if fetch_one(conn, "SELECT 1 FROM vaccine_categories WHERE id = %(id)s", {"id": body.category_id}) is None:
        raise not_found("疫苗大类")
    row = fetch_one(
        conn,
        """INSERT INTO vaccines (category_id, name, programme, storage_mode)
           VALUES (%(category_id)s, %(name)s, %(programme)s, %(storage_mode)s) RETURNING id""",
        body.model_dump(),
    )
    assert row is not None
    out = fetch_one(conn, _VACCINES + " WHERE v.id = %(id)s", row)
    assert out is not None
    return out


@router.get("/catalogue/specs", response_model=list[SpecOut], summary="疫苗品规（可按疫苗、是否免疫规划筛选）")
def list_specs(
    principal: CurrentUser,
    conn: Conn,
    vaccine_id: QId = None,
    programme: bool | None = None,
    active: bool | None = None,
) -> list[dict[str, Any]]:
    return fetch_all(
        conn,
        _SPECS
        + """ WHERE (%(vaccine)s::bigint IS NULL OR s.vaccine_id = %(vaccine)s)
                       AND (%(programme)s::boolean IS NULL OR v.programme = %(programme)s)
                       AND (%(active)s::boolean IS NULL OR s.active = %(active)s)
                     ORDER BY c.name, v.name, s.spec""",
        {"vaccine": vaccine_id, "programme": programme, "active": active},
    )


def _spec(conn: psycopg.Connection, spec_id: int) -> dict[str, Any]:
    row = fetch_one(conn, _SPECS + " WHERE s.id = %(id)s", {"id": spec_id})
    if row is None:
        raise not_found("疫苗品规")
    return row


@router.post("/catalogue/specs", response_model=SpecOut, status_code=201, summary="新增疫苗品规（省级）")
def create_spec(body: SpecIn, principal: CurrentUser, conn: Conn) -> dict[str, Any]:
    require_province_writer(principal)
    if fetch_one(conn, "SELECT 1 FROM vaccines WHERE id = %(id)s", {"id": body.vaccine_id}) is None:
        raise not_found("疫苗")
    if fetch_one(conn, "SELECT 1 FROM manufacturers WHERE id = %(id)s", {"id": body.manufacturer_id}) is None:
        raise not_found("生产企业")
    _check_gtin(body.gtin)
    row = fetch_one(
        conn,
        """INSERT INTO vaccine_specs (vaccine_id, manufacturer_id, spec, doses_per_vial, ref_wastage, trace_prefix,
                                      gtin, tender_year)
           VALUES (%(vaccine_id)s, %(manufacturer_id)s, %(spec)s, %(doses_per_vial)s, %(ref_wastage)s,
                   %(trace_prefix)s, %(gtin)s, %(tender_year)s) RETURNING id""",
        body.model_dump(),
    )
    assert row is not None
    return _spec(conn, row["id"])


def _check_gtin(gtin: str | None) -> None:
    if gtin is None:
        return
    try:
        parse_code(f"01{gtin}")
    except CodeError as exc:
        raise invalid(f"GTIN 无效：{exc}") from exc


@router.patch("/catalogue/specs/{spec_id}", response_model=SpecOut, summary="修改疫苗品规（省级，带版本号）")
def patch_spec(spec_id: Id, body: SpecPatch, principal: CurrentUser, conn: Conn) -> dict[str, Any]:
    require_province_writer(principal)
    _spec(conn, spec_id)
    _check_gtin(body.gtin)
    set_action(conn, "catalogue.spec.update")
    update_versioned(
        conn,
        "vaccine_specs",
        spec_id,
        body.version,
        body.model_dump(exclude_unset=True, exclude={"version"}),
        "疫苗品规",
    )
    return _spec(conn, spec_id)


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


_LOTS = """
SELECT l.id, l.spec_id, v.name AS vaccine_name, s.spec, m.name AS manufacturer_name, v.programme, l.lot_no,
       l.production_date, l.expiry_date, l.release_no, l.unit_id, u.name AS unit_name, l.entered_by,
       EXISTS (SELECT 1 FROM lot_certificates c WHERE c.lot_id = l.id) AS has_certificate, l.version, l.updated_at
FROM lots l JOIN vaccine_specs s ON s.id = l.spec_id JOIN vaccines v ON v.id = s.vaccine_id
JOIN manufacturers m ON m.id = s.manufacturer_id JOIN units u ON u.id = l.unit_id
"""


def lot_row(conn: psycopg.Connection, lot_id: int) -> dict[str, Any]:
    row = fetch_one(conn, _LOTS + " WHERE l.id = %(id)s", {"id": lot_id})
    if row is None:
        raise not_found("批号")
    return row


def _check_dates(production: date, expiry: date) -> None:
    if expiry <= production:
        raise invalid("失效日期必须晚于生产日期")


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
    return fetch_all(
        conn,
        _LOTS
        + """ WHERE (%(spec)s::bigint IS NULL OR l.spec_id = %(spec)s)
                      AND (%(lot_no)s::text IS NULL OR l.lot_no = %(lot_no)s)
                      AND (%(before)s::date IS NULL OR l.expiry_date < %(before)s)
                    ORDER BY l.expiry_date, l.id LIMIT %(limit)s OFFSET %(offset)s""",
        {"spec": spec_id, "lot_no": lot_no, "before": expires_before, "limit": limit, "offset": offset},
    )


@router.post("/lots", response_model=LotOut, status_code=201, summary="录入批号（首次入库时）")
def create_lot(body: LotIn, principal: CurrentUser, conn: Conn) -> dict[str, Any]:
    require_writer(principal)
    _check_dates(body.production_date, body.expiry_date)
    _spec(conn, body.spec_id)
    existing = fetch_one(
        conn, "SELECT id FROM lots WHERE spec_id = %(spec_id)s AND lot_no = %(lot_no)s", body.model_dump()
    )
    if existing is not None:
        raise conflict(
            "lot_exists",
            f"批号 {body.lot_no} 已由他人录入（全省共享），请直接选用；如信息有误请报错",
            {"lot_id": existing["id"]},
        )
    set_action(conn, "lot.create")
    row = fetch_one(
        conn,
        """INSERT INTO lots (spec_id, lot_no, production_date, expiry_date, release_no, unit_id, entered_by)
           VALUES (%(spec_id)s, %(lot_no)s, %(production_date)s, %(expiry_date)s, %(release_no)s, %(unit)s, %(user)s)
           RETURNING id""",
        {**body.model_dump(), "unit": principal.unit_id, "user": principal.user_id},
    )
    assert row is not None
    return lot_row(conn, row["id"])


@router.get("/lots/{lot_id}", response_model=LotDetail, summary="批号详情与更正历史")
def get_lot(lot_id: Id, principal: CurrentUser, conn: Conn) -> dict[str, Any]:
    row = lot_row(conn, lot_id)
    row["revisions"] = fetch_all(
        conn,
        "SELECT version, data, changed_by, changed_at, reason FROM lot_revisions WHERE lot_id = %(id)s "
        "ORDER BY version",
        {"id": lot_id},
    )
    return row


@router.patch("/lots/{lot_id}", response_model=LotOut, summary="更正批号信息（省级或录入人；每次更正保留版本）")
def correct_lot(lot_id: Id, body: LotPatch, principal: CurrentUser, conn: Conn) -> dict[str, Any]:
    lot = lot_row(conn, lot_id)
    require_writer(principal)
    if principal.actor.unit.level != "province" and lot["entered_by"] != principal.user_id:
        raise forbidden("批号信息只能由省级或录入人更正；发现错误请使用“报错”")
    changes = body.model_dump(exclude_unset=True, exclude={"version", "reason"})
    blank = sorted(k for k, v in changes.items() if v is None)
    if blank:
        # Every field of a lot is required: an explicit null is a refusal, not a crash in _check_dates.
        raise invalid(f"批号信息不能清空：{'、'.join(blank)}", {"fields": blank})
    _check_dates(changes.get("production_date", lot["production_date"]), changes.get("expiry_date", lot["expiry_date"]))
    set_action(conn, "lot.correct")
    conn.execute("SELECT set_config('coldchain.reason', %s, true)", (body.reason,))
    update_versioned(conn, "lots", lot_id, body.version, {**changes, "updated_at": datetime.now().astimezone()}, "批号")
    return lot_row(conn, lot_id)


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
    lot = lot_row(conn, lot_id)
    require_writer(principal)
    if principal.actor.unit.level != "province" and lot["entered_by"] != principal.user_id:
        raise forbidden("批签发证明只能由省级或录入人上传")


def _store_certificate(
    conn: psycopg.Connection, principal: Principal, lot_id: int, content_type: str, body: bytes
) -> None:
    set_action(conn, "lot.certificate")
    conn.execute(
        """INSERT INTO lot_certificates (lot_id, content_type, size, sha256, content, uploaded_by)
           VALUES (%s, %s, %s, %s, %s, %s)""",
        (lot_id, content_type, len(body), hashlib.sha256(body).digest(), body, principal.user_id),
    )


@router.get(
    "/lots/{lot_id}/certificate",
    summary="批签发证明（最新一版）",
    responses={200: {"content": {"image/jpeg": {}, "image/png": {}, "application/pdf": {}}}},
)
def get_certificate(lot_id: Id, principal: CurrentUser, conn: Conn) -> Response:
    lot_row(conn, lot_id)
    row = fetch_one(
        conn,
        "SELECT content_type, content FROM lot_certificates WHERE lot_id = %(id)s ORDER BY id DESC LIMIT 1",
        {"id": lot_id},
    )
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


_REPORTS = """
SELECT r.id, r.lot_id, l.lot_no, r.unit_id, u.name AS unit_name, r.reported_by, r.message, r.state, r.created_at,
       r.resolved_by, r.resolved_at, r.resolution, r.version
FROM lot_error_reports r JOIN lots l ON l.id = r.lot_id JOIN units u ON u.id = r.unit_id
"""


@router.post(
    "/lots/{lot_id}/error-reports",
    response_model=ErrorReportOut,
    status_code=201,
    summary="报告批号信息错误（各单位管理员；进入省级待办）",
)
def report_lot_error(lot_id: Id, body: ErrorReportIn, principal: CurrentUser, conn: Conn) -> dict[str, Any]:
    lot_row(conn, lot_id)
    require_writer(principal)  # reported by any unit's administrators; supervisors and analysts only read
    set_action(conn, "lot.report_error")
    row = fetch_one(
        conn,
        """INSERT INTO lot_error_reports (lot_id, unit_id, reported_by, message)
           VALUES (%(lot)s, %(unit)s, %(user)s, %(message)s) RETURNING id""",
        {"lot": lot_id, "unit": principal.unit_id, "user": principal.user_id, "message": body.message},
    )
    assert row is not None
    out = fetch_one(conn, _REPORTS + " WHERE r.id = %(id)s", row)
    assert out is not None
    return out


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
    return fetch_all(
        conn,
        _REPORTS
        + """ WHERE (%(province)s OR r.unit_id = %(unit)s) AND (%(state)s::text IS NULL OR r.state = %(state)s)
                       ORDER BY r.created_at, r.id LIMIT %(limit)s OFFSET %(offset)s""",
        {"province": province, "unit": principal.unit_id, "state": state, "limit": limit, "offset": offset},
    )


@router.post("/lot-error-reports/{report_id}/decision", response_model=ErrorReportOut, summary="处理批号报错（省级）")
def decide_error_report(report_id: Id, body: ErrorReportDecision, principal: CurrentUser, conn: Conn) -> dict[str, Any]:
    require_province_writer(principal)
    row = fetch_one(conn, "SELECT state FROM lot_error_reports WHERE id = %(id)s", {"id": report_id})
    if row is None:
        raise not_found("报错")
    if row["state"] != "open":
        raise conflict("already_decided", "该报错已处理")
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
    out = fetch_one(conn, _REPORTS + " WHERE r.id = %(id)s", {"id": report_id})
    assert out is not None
    return out


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
    if parsed.kind == "cn20":
        spec = fetch_one(conn, _SPECS + " WHERE s.trace_prefix = %(k)s", {"k": parsed.product_key})
    else:
        spec = fetch_one(
            conn, _SPECS + " WHERE substr(s.gtin, 2, 12) = substr(%(k)s, 2, 12)", {"k": parsed.product_key}
        )
    if spec is None:
        raise Refused(422, "unknown_product", f"药品标识 {parsed.product_key} 不在全省疫苗目录中，请报省级核实")
    registered = fetch_one(conn, "SELECT * FROM package_codes WHERE code = %(c)s", {"c": parsed.code})
    lot = None
    if registered is not None:
        lot = lot_row(conn, registered["lot_id"])
    elif parsed.lot_no is not None:
        found = fetch_one(
            conn, "SELECT id FROM lots WHERE spec_id = %(s)s AND lot_no = %(l)s", {"s": spec["id"], "l": parsed.lot_no}
        )
        lot = lot_row(conn, found["id"]) if found else None
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
