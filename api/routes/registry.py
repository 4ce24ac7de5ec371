"""The device registry: units, equipment and compartments with their limits, gateways, probes,
current and past bindings, warranty ends (CM4), and a compartment's or probe's readings.

Every query carries the jurisdiction condition itself, so an id outside it is simply not found
(404, the same answer as for an id that does not exist). Bindings are not written here: probes
are bound, swapped and unbound only through Forms 1, 3 and 4 (CM11).
"""

from __future__ import annotations

from datetime import date, datetime, timedelta
from decimal import Decimal
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query
from pydantic import BaseModel, ConfigDict, Field, StringConstraints, model_validator

from alarms.rules import params_for
from api.deps import Conn, CurrentUser, Principal, require_unit_in_scope, require_writer, set_action, update_versioned
from coldchain.core.db import fetch_all, fetch_one
from coldchain.core.errors import Refused, forbidden, invalid, not_found

router = APIRouter(tags=["设备登记"])

Id = Annotated[int, Field(ge=1, le=2**62)]
QId = Annotated[int | None, Query(ge=1, le=2**62)]
Limit = Annotated[int, Query(ge=1, le=5000)]
Offset = Annotated[int, Query(ge=0, le=10**7)]
Text = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=100)]
Serial = Annotated[str, StringConstraints(pattern=r"^[0-9A-Za-z_-]{1,32}$")]
Temperature = Annotated[Decimal, Field(ge=-90, le=60, max_digits=4, decimal_places=1)]
EquipmentKind = Literal["fridge", "freezer", "medical_fridge", "cold_room", "vehicle"]
Mode = Literal["refrigerated", "frozen"]

_SCOPE = "SELECT descendant_id FROM unit_tree WHERE ancestor_id = %(scope)s"


def _scope(principal: Principal) -> dict[str, Any]:
    return {"scope": principal.unit_id, "province": principal.actor.unit.level == "province"}


def _filter_in_scope(conn: Conn, principal: Principal, unit_id: int | None) -> None:
    """A filter naming a unit outside the jurisdiction is refused like any other id (404),
    not answered with an empty list that would read as "this unit has nothing"."""
    if unit_id is not None:
        require_unit_in_scope(conn, principal, unit_id)


def _require_hardware_manager(principal: Principal) -> None:
    """Hardware is supplied by the province and returned to the county (CM4, CM8): sites do not
    register or edit it themselves."""
    require_writer(principal)
    if principal.actor.unit.level == "township":
        raise forbidden("监测硬件由县级及以上单位登记和维护，接种单位请通过附表提交")


# ---------------------------------------------------------------------------------------------
# Units


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


_UNIT_COLUMNS = "u.id, u.code, u.name, u.level, u.parent_id, u.address, u.phone, u.active, u.version"
_UNITS = f"""
SELECT {_UNIT_COLUMNS} FROM units u
WHERE u.id IN ({_SCOPE})
  AND (%(level)s::text IS NULL OR u.level = %(level)s)
  AND (%(parent)s::bigint IS NULL OR u.parent_id = %(parent)s)
ORDER BY u.code LIMIT %(limit)s OFFSET %(offset)s
"""  # noqa: S608 — constant SQL fragments, parameters bound
_UNIT = f"SELECT {_UNIT_COLUMNS} FROM units u WHERE u.id = %(id)s AND u.id IN ({_SCOPE})"  # noqa: S608 — constant SQL fragments, parameters bound


@router.get("/units", response_model=list[UnitOut], summary="辖区内的单位")
def list_units(
    principal: CurrentUser,
    conn: Conn,
    level: Literal["province", "city", "county", "township"] | None = None,
    parent_id: QId = None,
    limit: Limit = 500,
    offset: Offset = 0,
) -> list[dict[str, Any]]:
    _filter_in_scope(conn, principal, parent_id)
    return fetch_all(
        conn, _UNITS, {**_scope(principal), "level": level, "parent": parent_id, "limit": limit, "offset": offset}
    )


@router.get("/units/{unit_id}", response_model=UnitOut, summary="单位详情")
def get_unit(unit_id: Id, principal: CurrentUser, conn: Conn) -> dict[str, Any]:
    row = fetch_one(conn, _UNIT, {**_scope(principal), "id": unit_id})
    if row is None:
        raise not_found("单位")
    return row


class UnitPatch(BaseModel):
    model_config = ConfigDict(extra="forbid")
    version: Annotated[int, Field(ge=1, le=2**31 - 1)]
    name: Text | None = None
    address: Annotated[str, StringConstraints(max_length=200)] | None = None
    phone: Annotated[str, StringConstraints(pattern=r"^[0-9+() -]{5,20}$")] | None = None


@router.patch("/units/{unit_id}", response_model=UnitOut, summary="修改单位名称、地址、电话（带版本号）")
def patch_unit(unit_id: Id, body: UnitPatch, principal: CurrentUser, conn: Conn) -> dict[str, Any]:
    get_unit(unit_id, principal, conn)
    if principal.role != "system_admin":
        raise forbidden("单位信息由系统管理员维护")
    set_action(conn, "unit.update")
    update_versioned(
        conn, "units", unit_id, body.version, body.model_dump(exclude={"version"}, exclude_unset=True), "单位"
    )
    return get_unit(unit_id, principal, conn)


# ---------------------------------------------------------------------------------------------
# Equipment and compartments


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


_COMPARTMENTS = """
SELECT c.id, c.equipment_id, c.name, c.mode, c.t_min::float8 AS t_min, c.t_max::float8 AS t_max, c.status,
       p.id AS probe_id, p.serial AS probe_serial, g.serial AS gateway_serial, b.valid_from AS bound_since, c.version
FROM compartments c
LEFT JOIN probe_bindings_current b ON b.compartment_id = c.id
LEFT JOIN probes p ON p.id = b.probe_id
LEFT JOIN gateways g ON g.id = b.gateway_id
WHERE c.equipment_id = ANY(%(ids)s)
ORDER BY c.equipment_id, c.id
"""
_EQUIPMENT_COLUMNS = """
e.id, e.unit_id, n.name AS unit_name, e.kind, e.name, e.brand, e.model, e.asset_no, e.plate_no, e.status,
e.commissioned_on, e.decommissioned_at, e.version
"""
_EQUIPMENT_LIST = f"""
SELECT {_EQUIPMENT_COLUMNS} FROM equipment e JOIN units n ON n.id = e.unit_id
WHERE e.unit_id IN ({_SCOPE})
  AND (%(unit)s::bigint IS NULL OR e.unit_id = %(unit)s)
  AND (%(status)s::text IS NULL OR e.status = %(status)s)
  AND (%(kind)s::text IS NULL OR e.kind = %(kind)s)
ORDER BY n.code, e.id LIMIT %(limit)s OFFSET %(offset)s
"""  # noqa: S608 — constant SQL fragments, parameters bound
_EQUIPMENT_ONE = f"""
SELECT {_EQUIPMENT_COLUMNS} FROM equipment e JOIN units n ON n.id = e.unit_id
WHERE e.id = %(id)s AND e.unit_id IN ({_SCOPE})
"""  # noqa: S608 — constant SQL fragments, parameters bound


def _with_compartments(conn: Conn, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    by_id = {r["id"]: {**r, "compartments": []} for r in rows}
    for c in fetch_all(conn, _COMPARTMENTS, {"ids": list(by_id)}):
        by_id[c["equipment_id"]]["compartments"].append(c)
    return list(by_id.values())


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
    _filter_in_scope(conn, principal, unit_id)
    rows = fetch_all(
        conn,
        _EQUIPMENT_LIST,
        {**_scope(principal), "unit": unit_id, "status": status, "kind": kind, "limit": limit, "offset": offset},
    )
    return _with_compartments(conn, rows)


@router.get("/equipment/{equipment_id}", response_model=EquipmentOut, summary="设备详情")
def get_equipment(equipment_id: Id, principal: CurrentUser, conn: Conn) -> dict[str, Any]:
    row = fetch_one(conn, _EQUIPMENT_ONE, {**_scope(principal), "id": equipment_id})
    if row is None:
        raise not_found("设备")
    return _with_compartments(conn, [row])[0]


def _check_limits(mode: str, t_min: Decimal | None, t_max: Decimal | None) -> None:
    if mode == "refrigerated" and t_max is not None and t_min is None:
        raise ValueError("冷藏温区必须有温度下限")
    if t_min is not None and t_max is not None and t_min >= t_max:
        raise ValueError("温度下限必须低于上限")


class CompartmentIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: Text
    mode: Mode
    t_min: Temperature | None = Field(None, description="缺省：冷藏 2 ℃，冷冻无下限")
    t_max: Temperature | None = Field(None, description="缺省：冷藏 8 ℃，冷冻 −15 ℃")

    @model_validator(mode="after")
    def _limits(self) -> CompartmentIn:
        _check_limits(self.mode, self.t_min, self.t_max)
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


@router.post("/equipment", response_model=EquipmentOut, status_code=201, summary="登记冷链设备及其温区")
def create_equipment(body: EquipmentIn, principal: CurrentUser, conn: Conn) -> dict[str, Any]:
    require_writer(principal)
    require_unit_in_scope(conn, principal, body.unit_id)
    set_action(conn, "equipment.create")
    row = fetch_one(
        conn,
        """INSERT INTO equipment (unit_id, kind, name, brand, model, asset_no, plate_no, commissioned_on)
           VALUES (%(unit_id)s, %(kind)s, %(name)s, %(brand)s, %(model)s, %(asset_no)s, %(plate_no)s,
                   %(commissioned_on)s) RETURNING id""",
        body.model_dump(exclude={"compartments"}),
    )
    assert row is not None
    for c in body.compartments:
        conn.execute(
            """INSERT INTO compartments (equipment_id, name, mode, t_min, t_max)
               VALUES (%(eq)s, %(name)s, %(mode)s, %(t_min)s, %(t_max)s)""",
            {"eq": row["id"], **c.model_dump()},
        )
    return get_equipment(row["id"], principal, conn)


class EquipmentPatch(BaseModel):
    """Renaming goes through Form 1 (CM5); these are the attributes an administrator keeps up."""

    model_config = ConfigDict(extra="forbid")
    version: Annotated[int, Field(ge=1, le=2**31 - 1)]
    brand: Text | None = None
    model: Text | None = None
    asset_no: Text | None = None
    plate_no: Text | None = None
    commissioned_on: date | None = None


@router.patch(
    "/equipment/{equipment_id}", response_model=EquipmentOut, summary="修改设备信息（带版本号，冲突返回 409）"
)
def patch_equipment(equipment_id: Id, body: EquipmentPatch, principal: CurrentUser, conn: Conn) -> dict[str, Any]:
    current = get_equipment(equipment_id, principal, conn)
    require_writer(principal)
    if current["status"] != "active":
        raise Refused(409, "decommissioned", "设备已停用，不能修改")
    set_action(conn, "equipment.update")
    update_versioned(
        conn, "equipment", equipment_id, body.version, body.model_dump(exclude={"version"}, exclude_unset=True), "设备"
    )
    return get_equipment(equipment_id, principal, conn)


class HistoryRow(BaseModel):
    ts: datetime
    actor_username: str | None
    action: str
    entity: str
    entity_id: int | None
    before: dict[str, Any] | None
    after: dict[str, Any] | None


_EQUIPMENT_HISTORY = """
SELECT a.ts, u.username AS actor_username, a.action, a.entity, a.entity_id, a.before, a.after
FROM audit_log a LEFT JOIN users u ON u.id = a.actor_id
WHERE (a.entity = 'equipment' AND a.entity_id = %(id)s)
   OR (a.entity = 'compartments' AND a.entity_id IN (SELECT id FROM compartments WHERE equipment_id = %(id)s))
ORDER BY a.id
"""


@router.get(
    "/equipment/{equipment_id}/history",
    response_model=list[HistoryRow],
    summary="设备及其温区的变更历史（更名、限值、停用）",
)
def equipment_history(equipment_id: Id, principal: CurrentUser, conn: Conn) -> list[dict[str, Any]]:
    get_equipment(equipment_id, principal, conn)
    return fetch_all(conn, _EQUIPMENT_HISTORY, {"id": equipment_id})


_COMPARTMENT_ONE = f"""
SELECT c.id, c.equipment_id, c.name, c.mode, c.t_min::float8 AS t_min, c.t_max::float8 AS t_max, c.status,
       p.id AS probe_id, p.serial AS probe_serial, g.serial AS gateway_serial, b.valid_from AS bound_since, c.version
FROM compartments c
JOIN equipment e ON e.id = c.equipment_id
LEFT JOIN probe_bindings_current b ON b.compartment_id = c.id
LEFT JOIN probes p ON p.id = b.probe_id
LEFT JOIN gateways g ON g.id = b.gateway_id
WHERE c.id = %(id)s AND e.unit_id IN ({_SCOPE})
"""  # noqa: S608 — constant SQL fragments, parameters bound


@router.get("/compartments/{compartment_id}", response_model=CompartmentOut, summary="温区详情（限值、当前探头）")
def get_compartment(compartment_id: Id, principal: CurrentUser, conn: Conn) -> dict[str, Any]:
    row = fetch_one(conn, _COMPARTMENT_ONE, {**_scope(principal), "id": compartment_id})
    if row is None:
        raise not_found("温区")
    return row


class CompartmentPatch(BaseModel):
    model_config = ConfigDict(extra="forbid")
    version: Annotated[int, Field(ge=1, le=2**31 - 1)]
    name: Text | None = None
    t_min: Temperature | None = None
    t_max: Temperature | None = None


@router.patch(
    "/compartments/{compartment_id}", response_model=CompartmentOut, summary="修改温区名称或温度上下限（带版本号）"
)
def patch_compartment(compartment_id: Id, body: CompartmentPatch, principal: CurrentUser, conn: Conn) -> dict[str, Any]:
    current = get_compartment(compartment_id, principal, conn)
    require_writer(principal)
    if current["status"] != "active":
        raise Refused(409, "decommissioned", "温区已停用，不能修改")
    changes = body.model_dump(exclude={"version"}, exclude_unset=True)
    if "t_max" in changes and changes["t_max"] is None:
        raise invalid("温度上限不能为空")
    t_min = changes["t_min"] if "t_min" in changes else current["t_min"]
    t_max = changes["t_max"] if "t_max" in changes else current["t_max"]
    try:
        _check_limits(current["mode"], None if t_min is None else Decimal(str(t_min)), Decimal(str(t_max)))
    except ValueError as exc:
        raise invalid(str(exc)) from None
    # The compartment's alarm parameters must still make sense within the new limits (a hysteresis
    # wider than the band would leave the compartment unmonitored).
    overrides = fetch_one(
        conn, "SELECT params FROM alarm_rule_params WHERE compartment_id = %(id)s", {"id": compartment_id}
    )
    try:
        params_for(
            current["mode"],
            None if t_min is None else float(t_min),
            float(t_max),
            overrides["params"] if overrides else {},
        )
    except ValueError as exc:
        raise invalid(f"新的温度限值与该温区的报警参数不相容：{exc}；请先调整报警参数") from None
    set_action(conn, "compartment.update")
    update_versioned(conn, "compartments", compartment_id, body.version, changes, "温区")
    return get_compartment(compartment_id, principal, conn)


# ---------------------------------------------------------------------------------------------
# Gateways and probes (monitoring hardware, CM4)


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


_HW_SCOPE = f"(h.unit_id IN ({_SCOPE}) OR (h.unit_id IS NULL AND %(province)s))"


def _hardware_queries(table: Literal["gateways", "probes"]) -> tuple[str, str]:
    columns = """h.id, h.serial, h.unit_id, n.name AS unit_name, h.vendor, h.model, h.installed_on, h.warranty_end,
                 h.status, h.version"""
    # ``table`` is one of two literals, never input.
    base = f"SELECT {columns} FROM {table} h LEFT JOIN units n ON n.id = h.unit_id WHERE {_HW_SCOPE}"  # noqa: S608
    listing = f"""{base}
      AND (%(unit)s::bigint IS NULL OR h.unit_id = %(unit)s)
      AND (%(status)s::text IS NULL OR h.status = %(status)s)
      AND (%(serial)s::text IS NULL OR h.serial = %(serial)s)
    ORDER BY h.serial LIMIT %(limit)s OFFSET %(offset)s"""
    return listing, f"{base} AND h.id = %(id)s"


_GATEWAYS, _GATEWAY = _hardware_queries("gateways")
_PROBES, _PROBE = _hardware_queries("probes")
HardwareStatus = Literal["in_stock", "active", "decommissioned"]


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
    version: Annotated[int, Field(ge=1, le=2**31 - 1)]
    vendor: Text | None = None
    model: Text | None = None
    installed_on: date | None = None
    warranty_end: date | None = None


def _hardware_routes(table: Literal["gateways", "probes"], what: str, listing: str, one: str) -> None:
    def get_one(item_id: Id, principal: CurrentUser, conn: Conn) -> dict[str, Any]:
        row = fetch_one(conn, one, {**_scope(principal), "id": item_id})
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
        _filter_in_scope(conn, principal, unit_id)
        return fetch_all(
            conn,
            listing,
            {
                **_scope(principal),
                "unit": unit_id,
                "status": status,
                "serial": serial,
                "limit": limit,
                "offset": offset,
            },
        )

    def create(body: HardwareIn, principal: CurrentUser, conn: Conn) -> dict[str, Any]:
        _require_hardware_manager(principal)
        require_unit_in_scope(conn, principal, body.unit_id)
        set_action(conn, f"{table}.create")
        row = fetch_one(
            conn,
            # ``table`` is one of two literals, never input.
            f"""INSERT INTO {table} (serial, unit_id, vendor, model, installed_on, warranty_end, status)
                VALUES (%(serial)s, %(unit_id)s, %(vendor)s, %(model)s, %(installed_on)s, %(warranty_end)s,
                        %(status)s) RETURNING id""",  # noqa: S608
            body.model_dump(),
        )
        assert row is not None
        return get_one(row["id"], principal, conn)

    def patch(item_id: Id, body: HardwarePatch, principal: CurrentUser, conn: Conn) -> dict[str, Any]:
        get_one(item_id, principal, conn)
        _require_hardware_manager(principal)
        set_action(conn, f"{table}.update")
        update_versioned(
            conn, table, item_id, body.version, body.model_dump(exclude={"version"}, exclude_unset=True), what
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


_hardware_routes("gateways", "网关", _GATEWAYS, _GATEWAY)
_hardware_routes("probes", "探头", _PROBES, _PROBE)


# ---------------------------------------------------------------------------------------------
# Bindings: current and past (CM7, CM8, CM11)


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


_BINDINGS = f"""
SELECT b.id, b.probe_id, p.serial AS probe_serial, b.compartment_id, c.name AS compartment_name,
       e.id AS equipment_id, e.name AS equipment_name, e.unit_id, g.serial AS gateway_serial,
       lower(b.valid) AS valid_from, upper(b.valid) AS valid_to, b.reason
FROM probe_bindings b
JOIN probes p ON p.id = b.probe_id
JOIN gateways g ON g.id = b.gateway_id
JOIN compartments c ON c.id = b.compartment_id
JOIN equipment e ON e.id = c.equipment_id
WHERE e.unit_id IN ({_SCOPE})
  AND (%(unit)s::bigint IS NULL OR e.unit_id = %(unit)s)
  AND (%(probe)s::bigint IS NULL OR b.probe_id = %(probe)s)
  AND (%(compartment)s::bigint IS NULL OR b.compartment_id = %(compartment)s)
  AND (NOT %(current)s OR upper_inf(b.valid))
ORDER BY e.unit_id, b.compartment_id, lower(b.valid)
LIMIT %(limit)s OFFSET %(offset)s
"""  # noqa: S608 — constant SQL fragments, parameters bound


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
    _filter_in_scope(conn, principal, unit_id)
    return fetch_all(
        conn,
        _BINDINGS,
        {
            **_scope(principal),
            "unit": unit_id,
            "probe": probe_id,
            "compartment": compartment_id,
            "current": current,
            "limit": limit,
            "offset": offset,
        },
    )


# ---------------------------------------------------------------------------------------------
# Readings of a compartment (attributed by the binding at each reading's time) or of a probe


class ReadingOut(BaseModel):
    ts: datetime
    t: float
    rh: float | None
    probe_id: int


_COMPARTMENT_READINGS = """
SELECT r.ts, r.t, r.rh, r.probe_id
FROM probe_bindings b
JOIN probe_readings r ON r.probe_id = b.probe_id AND b.valid @> r.ts
WHERE b.compartment_id = %(id)s AND r.ts >= %(since)s AND r.ts < %(until)s
ORDER BY r.ts DESC LIMIT %(limit)s
"""
_PROBE_READINGS = """
SELECT r.ts, r.t, r.rh, r.probe_id FROM probe_readings r
WHERE r.probe_id = %(id)s AND r.ts >= %(since)s AND r.ts < %(until)s
ORDER BY r.ts DESC LIMIT %(limit)s
"""


def _window(since: datetime | None, until: datetime | None) -> tuple[datetime, datetime]:
    end = until or datetime.now().astimezone()
    start = since or end - timedelta(hours=24)
    if start >= end:
        raise invalid("起始时间必须早于结束时间")
    if end - start > timedelta(days=31):
        raise invalid("原始读数一次最多查询 31 天；更长的时间请用小时或日聚合")
    return start, end


ReadingLimit = Annotated[int, Query(ge=1, le=20000)]


@router.get(
    "/compartments/{compartment_id}/readings",
    response_model=list[ReadingOut],
    summary="温区读数（按读数时刻的绑定归属，新在前；默认最近 24 小时）",
)
def compartment_readings(
    compartment_id: Id,
    principal: CurrentUser,
    conn: Conn,
    since: datetime | None = None,
    until: datetime | None = None,
    limit: ReadingLimit = 5000,
) -> list[dict[str, Any]]:
    get_compartment(compartment_id, principal, conn)
    start, end = _window(since, until)
    return fetch_all(conn, _COMPARTMENT_READINGS, {"id": compartment_id, "since": start, "until": end, "limit": limit})


@router.get("/probes/{item_id}/readings", response_model=list[ReadingOut], summary="探头原始读数（新在前）")
def probe_readings(
    item_id: Id,
    principal: CurrentUser,
    conn: Conn,
    since: datetime | None = None,
    until: datetime | None = None,
    limit: ReadingLimit = 5000,
) -> list[dict[str, Any]]:
    if fetch_one(conn, _PROBE, {**_scope(principal), "id": item_id}) is None:
        raise not_found("探头")
    start, end = _window(since, until)
    return fetch_all(conn, _PROBE_READINGS, {"id": item_id, "since": start, "until": end, "limit": limit})


# ---------------------------------------------------------------------------------------------
# Warranty ends (CM4): inside the warranty repairs are free; after it the unit pays.


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


_WARRANTIES = f"""
SELECT kind, h.id, h.serial, h.unit_id, n.name AS unit_name, h.vendor, h.model, h.warranty_end,
       h.warranty_end - %(today)s AS days_left
FROM (SELECT 'gateway' AS kind, id, serial, unit_id, vendor, model, warranty_end, status FROM gateways
      UNION ALL
      SELECT 'probe', id, serial, unit_id, vendor, model, warranty_end, status FROM probes) h
LEFT JOIN units n ON n.id = h.unit_id
WHERE {_HW_SCOPE}
  AND h.status <> 'decommissioned'
  AND h.warranty_end BETWEEN %(today)s AND %(today)s + %(days)s
  AND (%(unit)s::bigint IS NULL OR h.unit_id IN (SELECT descendant_id FROM unit_tree WHERE ancestor_id = %(unit)s))
ORDER BY h.warranty_end, kind, h.serial
LIMIT %(limit)s
"""  # noqa: S608 — constant SQL fragments, parameters bound


@router.get("/warranties", response_model=list[WarrantyOut], summary="N 天内到保的网关与探头（CM4）")
def warranties(
    principal: CurrentUser,
    conn: Conn,
    days: Annotated[int, Query(ge=0, le=3650, description="未来多少天内到保")] = 30,
    unit_id: QId = None,
    limit: Limit = 1000,
) -> list[dict[str, Any]]:
    if unit_id is not None:
        require_unit_in_scope(conn, principal, unit_id)
    row = conn.execute("SELECT (now() AT TIME ZONE 'Asia/Shanghai')::date").fetchone()
    assert row is not None
    return fetch_all(
        conn, _WARRANTIES, {**_scope(principal), "today": row[0], "days": days, "unit": unit_id, "limit": limit}
    )
