"""Monitoring hardware (CM4): gateways and probes — listing, registering and keeping up their
details — their bindings, current and past, and the warranty ends coming up.

The queries are :mod:`registry.hardware` and :mod:`registry.bindings`. Gateways and probes have
the same routes, made once for each table. Sites do not register or edit hardware: it is
supplied by the province and returned to the county (CM4, CM8), and bindings change only through
Forms 1, 3 and 4 (CM11).
"""

from __future__ import annotations

from datetime import date, datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query
from pydantic import BaseModel, ConfigDict, Field

from api.deps import Conn, CurrentUser, Principal, require_filter_in_scope, require_unit_in_scope, require_writer
from api.fields import Id, Limit, Offset, QId, Serial, Text, Version
from coldchain.core.errors import forbidden, not_found
from registry import bindings, hardware
from registry.hardware import HARDWARE_NAMES, HardwareTable

router = APIRouter(tags=["设备登记"])

HardwareStatus = Literal["in_stock", "active", "decommissioned"]


class HardwareOut(BaseModel):
    id: int
    serial: str
    unit_id: int | None
    unit_name: str | None
    vendor: str | None
    model: str | None
    installed_on: date | None
    warranty_end: date | None
    status: str
    version: int


class HardwareIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    serial: Serial
    unit_id: Id | None = Field(None, description="所属单位；为空表示省级库存")
    vendor: Text | None = None
    model: Text | None = None
    installed_on: date | None = None
    warranty_end: date | None = None
    status: Literal["in_stock", "active"] = "in_stock"


class HardwarePatch(BaseModel):
    model_config = ConfigDict(extra="forbid")
    version: Version
    vendor: Text | None = None
    model: Text | None = None
    installed_on: date | None = None
    warranty_end: date | None = None


class BindingOut(BaseModel):
    id: int
    probe_id: int
    probe_serial: str
    compartment_id: int
    compartment_name: str
    equipment_id: int
    equipment_name: str
    unit_id: int
    gateway_serial: str
    valid_from: datetime
    valid_to: datetime | None
    reason: str | None


class WarrantyOut(BaseModel):
    kind: Literal["gateway", "probe"]
    id: int
    serial: str
    unit_id: int | None
    unit_name: str | None
    vendor: str | None
    model: str | None
    warranty_end: date
    days_left: int


def _require_hardware_manager(principal: Principal) -> None:
    """Hardware is supplied by the province and returned to the county (CM4, CM8): sites do not
    register or edit it themselves."""
    require_writer(principal)
    if principal.actor.unit.level == "township":
        raise forbidden("监测硬件由县级及以上单位登记和维护，接种单位请通过附表提交")


def _hardware_routes(table: HardwareTable) -> None:
    what = HARDWARE_NAMES[table]

    def get_one(item_id: Id, principal: CurrentUser, conn: Conn) -> dict[str, Any]:
        row = hardware.get_hardware(conn, table, principal.actor.unit, item_id)
        if row is None:
            raise not_found(what)
        return row

    def list_all(
        principal: CurrentUser,
        conn: Conn,
        unit_id: QId = None,
        status: HardwareStatus | None = None,
        serial: Serial | None = None,
        limit: Limit = 500,
        offset: Offset = 0,
    ) -> list[dict[str, Any]]:
        require_filter_in_scope(conn, principal, unit_id)
        return hardware.list_hardware(
            conn, table, principal.actor.unit, unit_id=unit_id, status=status, serial=serial, limit=limit, offset=offset
        )

    def create(body: HardwareIn, principal: CurrentUser, conn: Conn) -> dict[str, Any]:
        _require_hardware_manager(principal)
        require_unit_in_scope(conn, principal, body.unit_id)
        item_id = hardware.create_hardware(conn, table, body.model_dump())
        return get_one(item_id, principal, conn)

    def patch(item_id: Id, body: HardwarePatch, principal: CurrentUser, conn: Conn) -> dict[str, Any]:
        get_one(item_id, principal, conn)
        _require_hardware_manager(principal)
        hardware.update_hardware(
            conn, table, item_id, body.version, body.model_dump(exclude={"version"}, exclude_unset=True)
        )
        return get_one(item_id, principal, conn)

    router.add_api_route(
        f"/{table}", list_all, methods=["GET"], response_model=list[HardwareOut], summary=f"辖区内的{what}"
    )
    router.add_api_route(
        f"/{table}",
        create,
        methods=["POST"],
        response_model=HardwareOut,
        status_code=201,
        summary=f"登记{what}（县级及以上）",
    )
    router.add_api_route(
        f"/{table}/{{item_id}}", get_one, methods=["GET"], response_model=HardwareOut, summary=f"{what}详情"
    )
    router.add_api_route(
        f"/{table}/{{item_id}}",
        patch,
        methods=["PATCH"],
        response_model=HardwareOut,
        summary=f"修改{what}信息（带版本号）",
    )


_hardware_routes("gateways")
_hardware_routes("probes")


@router.get("/bindings", response_model=list[BindingOut], summary="探头绑定（当前与历史）")
def list_bindings(
    principal: CurrentUser,
    conn: Conn,
    unit_id: QId = None,
    probe_id: QId = None,
    compartment_id: QId = None,
    current: bool = False,
    limit: Limit = 1000,
    offset: Offset = 0,
) -> list[dict[str, Any]]:
    require_filter_in_scope(conn, principal, unit_id)
    return bindings.list_bindings(
        conn,
        principal.actor.unit,
        unit_id=unit_id,
        probe_id=probe_id,
        compartment_id=compartment_id,
        current=current,
        limit=limit,
        offset=offset,
    )


@router.get("/warranties", response_model=list[WarrantyOut], summary="N 天内到保的网关与探头（CM4）")
def warranties(
    principal: CurrentUser,
    conn: Conn,
    days: Annotated[int, Query(ge=0, le=3650, description="未来多少天内到保")] = 30,
    unit_id: QId = None,
    limit: Limit = 1000,
) -> list[dict[str, Any]]:
    require_filter_in_scope(conn, principal, unit_id)
    return hardware.warranties(conn, principal.actor.unit, days=days, unit_id=unit_id, limit=limit)
