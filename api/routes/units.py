"""Units of the jurisdiction: listing, one unit, and the details a system administrator keeps up.

The queries are :mod:`registry.units`; a unit outside the jurisdiction is not found (404), the
same answer as for one that does not exist.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter
from pydantic import BaseModel, ConfigDict, StringConstraints

from api.deps import Conn, CurrentUser, Principal, require_filter_in_scope
from api.fields import Id, Limit, Offset, QId, Text, Version
from coldchain.core.errors import forbidden, not_found
from registry import units

router = APIRouter(tags=["设备登记"])


class UnitOut(BaseModel):
    id: int
    code: str
    name: str
    level: str
    parent_id: int | None
    address: str | None
    phone: str | None
    active: bool
    version: int


class UnitPatch(BaseModel):
    model_config = ConfigDict(extra="forbid")
    version: Version
    name: Text | None = None
    address: Annotated[str, StringConstraints(max_length=200)] | None = None
    phone: Annotated[str, StringConstraints(pattern=r"^[0-9+() -]{5,20}$")] | None = None


def _unit(conn: Conn, principal: Principal, unit_id: int) -> dict[str, Any]:
    row = units.get_unit(conn, principal.actor.unit, unit_id)
    if row is None:
        raise not_found("单位")
    return row


@router.get("/units", response_model=list[UnitOut], summary="辖区内的单位")
def list_units(
    principal: CurrentUser,
    conn: Conn,
    level: Literal["province", "city", "county", "township"] | None = None,
    parent_id: QId = None,
    limit: Limit = 500,
    offset: Offset = 0,
) -> list[dict[str, Any]]:
    require_filter_in_scope(conn, principal, parent_id)
    return units.list_units(conn, principal.actor.unit, level=level, parent_id=parent_id, limit=limit, offset=offset)


@router.get("/units/{unit_id}", response_model=UnitOut, summary="单位详情")
def get_unit(unit_id: Id, principal: CurrentUser, conn: Conn) -> dict[str, Any]:
    return _unit(conn, principal, unit_id)


@router.patch("/units/{unit_id}", response_model=UnitOut, summary="修改单位名称、地址、电话（带版本号）")
def patch_unit(unit_id: Id, body: UnitPatch, principal: CurrentUser, conn: Conn) -> dict[str, Any]:
    _unit(conn, principal, unit_id)
    if principal.role != "system_admin":
        raise forbidden("单位信息由系统管理员维护")
    units.update_unit(conn, unit_id, body.version, body.model_dump(exclude={"version"}, exclude_unset=True))
    return _unit(conn, principal, unit_id)
