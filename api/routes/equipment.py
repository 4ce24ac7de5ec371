"""Cold-chain equipment and its compartments: listing, registering, the attributes an
administrator keeps up, a compartment's limits, and a device's history.

The queries are :mod:`registry.equipment` and :mod:`registry.audit`; an id outside the
jurisdiction is not found (404). A compartment's new limits must still make sense with its
alarm parameters, which the alarm domain keeps (:mod:`alarms.settings_store`).
"""

from __future__ import annotations

from datetime import date, datetime
from decimal import Decimal
from typing import Annotated, Any, Literal

from fastapi import APIRouter
from pydantic import BaseModel, ConfigDict, Field, model_validator

from alarms.rules import params_for
from alarms.settings_store import params_row
from api.deps import Conn, CurrentUser, Principal, require_filter_in_scope, require_unit_in_scope, require_writer
from api.fields import Id, Limit, Mode, Offset, QId, Temperature, Text, Version
from coldchain.core.errors import Refused, invalid, not_found
from registry import audit, equipment
from registry.limits import check_limits

router = APIRouter(tags=["设备登记"])

EquipmentKind = Literal["fridge", "freezer", "medical_fridge", "cold_room", "vehicle"]


class CompartmentOut(BaseModel):
    id: int
    equipment_id: int
    name: str
    mode: str
    t_min: float | None
    t_max: float
    status: str
    probe_id: int | None
    probe_serial: str | None
    gateway_serial: str | None
    bound_since: datetime | None
    version: int


class EquipmentOut(BaseModel):
    id: int
    unit_id: int
    unit_name: str
    kind: str
    name: str
    brand: str | None
    model: str | None
    asset_no: str | None
    plate_no: str | None
    status: str
    commissioned_on: date | None
    decommissioned_at: datetime | None
    version: int
    compartments: list[CompartmentOut]


class CompartmentIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: Text
    mode: Mode
    t_min: Temperature | None = Field(None, description="缺省：冷藏 2 ℃，冷冻无下限")
    t_max: Temperature | None = Field(None, description="缺省：冷藏 8 ℃，冷冻 −15 ℃")

    @model_validator(mode="after")
    def _limits(self) -> CompartmentIn:
        check_limits(self.mode, self.t_min, self.t_max)
        return self


class EquipmentIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    unit_id: Id
    kind: EquipmentKind
    name: Text
    brand: Text | None = None
    model: Text | None = None
    asset_no: Text | None = None
    plate_no: Text | None = None
    commissioned_on: date | None = None
    compartments: Annotated[list[CompartmentIn], Field(min_length=1, max_length=6)]


class EquipmentPatch(BaseModel):
    """Renaming goes through Form 1 (CM5); these are the attributes an administrator keeps up."""

    model_config = ConfigDict(extra="forbid")
    version: Version
    brand: Text | None = None
    model: Text | None = None
    asset_no: Text | None = None
    plate_no: Text | None = None
    commissioned_on: date | None = None


class CompartmentPatch(BaseModel):
    model_config = ConfigDict(extra="forbid")
    version: Version
    name: Text | None = None
    t_min: Temperature | None = None
    t_max: Temperature | None = None


class HistoryRow(BaseModel):
    ts: datetime
    actor_username: str | None
    action: str
    entity: str
    entity_id: int | None
    before: dict[str, Any] | None
    after: dict[str, Any] | None


def _equipment(conn: Conn, principal: Principal, equipment_id: int) -> dict[str, Any]:
    row = equipment.get_equipment(conn, principal.actor.unit, equipment_id)
    if row is None:
        raise not_found("设备")
    return row


def _compartment(conn: Conn, principal: Principal, compartment_id: int) -> dict[str, Any]:
    row = equipment.get_compartment(conn, principal.actor.unit, compartment_id)
    if row is None:
        raise not_found("温区")
    return row


@router.get("/equipment", response_model=list[EquipmentOut], summary="冷链设备（含温区及当前探头）")
def list_equipment(
    principal: CurrentUser,
    conn: Conn,
    unit_id: QId = None,
    status: Literal["active", "decommissioned"] | None = None,
    kind: EquipmentKind | None = None,
    limit: Limit = 500,
    offset: Offset = 0,
) -> list[dict[str, Any]]:
    require_filter_in_scope(conn, principal, unit_id)
    return equipment.list_equipment(
        conn, principal.actor.unit, unit_id=unit_id, status=status, kind=kind, limit=limit, offset=offset
    )


@router.get("/equipment/{equipment_id}", response_model=EquipmentOut, summary="设备详情")
def get_equipment(equipment_id: Id, principal: CurrentUser, conn: Conn) -> dict[str, Any]:
    return _equipment(conn, principal, equipment_id)


@router.post("/equipment", response_model=EquipmentOut, status_code=201, summary="登记冷链设备及其温区")
def create_equipment(body: EquipmentIn, principal: CurrentUser, conn: Conn) -> dict[str, Any]:
    require_writer(principal)
    require_unit_in_scope(conn, principal, body.unit_id)
    equipment_id = equipment.create_equipment(
        conn, body.model_dump(exclude={"compartments"}), [c.model_dump() for c in body.compartments]
    )
    return _equipment(conn, principal, equipment_id)


@router.patch(
    "/equipment/{equipment_id}", response_model=EquipmentOut, summary="修改设备信息（带版本号，冲突返回 409）"
)
def patch_equipment(equipment_id: Id, body: EquipmentPatch, principal: CurrentUser, conn: Conn) -> dict[str, Any]:
    current = _equipment(conn, principal, equipment_id)
    require_writer(principal)
    if current["status"] != "active":
        raise Refused(409, "decommissioned", "设备已停用，不能修改")
    equipment.update_equipment(
        conn, equipment_id, body.version, body.model_dump(exclude={"version"}, exclude_unset=True)
    )
    return _equipment(conn, principal, equipment_id)


@router.get(
    "/equipment/{equipment_id}/history",
    response_model=list[HistoryRow],
    summary="设备及其温区的变更历史（更名、限值、停用）",
)
def equipment_history(equipment_id: Id, principal: CurrentUser, conn: Conn) -> list[dict[str, Any]]:
    _equipment(conn, principal, equipment_id)
    return audit.equipment_history(conn, equipment_id)


@router.get("/compartments/{compartment_id}", response_model=CompartmentOut, summary="温区详情（限值、当前探头）")
def get_compartment(compartment_id: Id, principal: CurrentUser, conn: Conn) -> dict[str, Any]:
    return _compartment(conn, principal, compartment_id)


@router.patch(
    "/compartments/{compartment_id}", response_model=CompartmentOut, summary="修改温区名称或温度上下限（带版本号）"
)
def patch_compartment(compartment_id: Id, body: CompartmentPatch, principal: CurrentUser, conn: Conn) -> dict[str, Any]:
    current = _compartment(conn, principal, compartment_id)
    require_writer(principal)
    if current["status"] != "active":
        raise Refused(409, "decommissioned", "温区已停用，不能修改")
    changes = body.model_dump(exclude={"version"}, exclude_unset=True)
    if "t_max" in changes and changes["t_max"] is None:
        raise invalid("温度上限不能为空")
    t_min = changes["t_min"] if "t_min" in changes else current["t_min"]
    t_max = changes["t_max"] if "t_max" in changes else current["t_max"]
    try:
        check_limits(current["mode"], None if t_min is None else Decimal(str(t_min)), Decimal(str(t_max)))
    except ValueError as exc:
        raise invalid(str(exc)) from None
    # The compartment's alarm parameters must still make sense within the new limits (a hysteresis
    # wider than the band would leave the compartment unmonitored).
    overrides = params_row(conn, principal.unit_id, compartment_id)["overrides"]
    try:
        params_for(current["mode"], None if t_min is None else float(t_min), float(t_max), overrides)
    except ValueError as exc:
        raise invalid(f"新的温度限值与该温区的报警参数不相容：{exc}；请先调整报警参数") from None
    equipment.update_compartment(conn, compartment_id, body.version, changes)
    return _compartment(conn, principal, compartment_id)
