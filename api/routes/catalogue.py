"""The vaccine catalogue (VT2): categories, manufacturers, vaccines and their specifications.
Lots, their certificates and error reports, and scanning a code are :mod:`api.routes.lots`.

The catalogue is the province's: it is refreshed yearly from the tender results, so only province
writers change it. The records and their queries are :mod:`inventory.catalogue`'s; these routes
parse the request, check who is asking, call the domain and shape the reply.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Annotated, Any

from fastapi import APIRouter
from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from api.deps import Conn, CurrentUser, Principal, require_writer, set_action, update_versioned
from api.fields import Id, QId, Version
from coldchain.core.errors import forbidden
from inventory import catalogue

router = APIRouter(tags=["疫苗目录与批号"])

Name = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=100)]


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


@router.get("/catalogue/categories", response_model=list[CategoryOut], summary="疫苗大类")
def list_categories(principal: CurrentUser, conn: Conn) -> list[dict[str, Any]]:
    return catalogue.categories(conn)


@router.post("/catalogue/categories", response_model=CategoryOut, status_code=201, summary="新增疫苗大类（省级）")
def create_category(body: CategoryIn, principal: CurrentUser, conn: Conn) -> dict[str, Any]:
    require_province_writer(principal)
    return catalogue.create_category(conn, body.name)


@router.get("/catalogue/manufacturers", response_model=list[ManufacturerOut], summary="生产企业")
def list_manufacturers(principal: CurrentUser, conn: Conn) -> list[dict[str, Any]]:
    return catalogue.manufacturers(conn)


@router.post(
    "/catalogue/manufacturers", response_model=ManufacturerOut, status_code=201, summary="新增生产企业（省级）"
)
def create_manufacturer(body: ManufacturerIn, principal: CurrentUser, conn: Conn) -> dict[str, Any]:
    require_province_writer(principal)
    return catalogue.create_manufacturer(conn, body.name, body.credit_code)


@router.get("/catalogue/vaccines", response_model=list[VaccineOut], summary="疫苗名称")
def list_vaccines(principal: CurrentUser, conn: Conn) -> list[dict[str, Any]]:
    return catalogue.vaccines(conn)


@router.post("/catalogue/vaccines", response_model=VaccineOut, status_code=201, summary="新增疫苗（省级）")
def create_vaccine(body: VaccineIn, principal: CurrentUser, conn: Conn) -> dict[str, Any]:
    require_province_writer(principal)
    return catalogue.create_vaccine(conn, body.category_id, body.name, body.programme, body.storage_mode)


@router.get("/catalogue/specs", response_model=list[SpecOut], summary="疫苗品规（可按疫苗、是否免疫规划筛选）")
def list_specs(
    principal: CurrentUser,
    conn: Conn,
    vaccine_id: QId = None,
    programme: bool | None = None,
    active: bool | None = None,
) -> list[dict[str, Any]]:
    return catalogue.specs(conn, vaccine_id=vaccine_id, programme=programme, active=active)


@router.post("/catalogue/specs", response_model=SpecOut, status_code=201, summary="新增疫苗品规（省级）")
def create_spec(body: SpecIn, principal: CurrentUser, conn: Conn) -> dict[str, Any]:
    require_province_writer(principal)
    return catalogue.create_spec(
        conn,
        vaccine_id=body.vaccine_id,
        manufacturer_id=body.manufacturer_id,
        spec_name=body.spec,
        doses_per_vial=body.doses_per_vial,
        ref_wastage=body.ref_wastage,
        trace_prefix=body.trace_prefix,
        gtin=body.gtin,
        tender_year=body.tender_year,
    )


@router.patch("/catalogue/specs/{spec_id}", response_model=SpecOut, summary="修改疫苗品规（省级，带版本号）")
def patch_spec(spec_id: Id, body: SpecPatch, principal: CurrentUser, conn: Conn) -> dict[str, Any]:
    require_province_writer(principal)
    catalogue.spec(conn, spec_id)
    catalogue.check_gtin(body.gtin)
    set_action(conn, "catalogue.spec.update")
    update_versioned(
        conn,
        "vaccine_specs",
        spec_id,
        body.version,
        body.model_dump(exclude_unset=True, exclude={"version"}),
        "疫苗品规",
    )
    return catalogue.spec(conn, spec_id)
