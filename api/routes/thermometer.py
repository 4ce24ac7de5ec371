"""Manual thermometer readings and the drift check (CM10, CM13): enter a reading, correct a wrong
entry by a new one, list them with their comparison, give a finding its cause.

What is stored and how it is compared is :mod:`alarms.thermometer`'s; these routes parse, check
the compartment is in the user's jurisdiction and that they may write, and call it.
"""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Annotated, Any

from fastapi import APIRouter, Query
from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, StringConstraints

from alarms import thermometer
from api.deps import Conn, CurrentUser, require_writer
from api.fields import Id

router = APIRouter(tags=["报警"])

Text = Annotated[str, StringConstraints(strip_whitespace=True, min_length=2, max_length=500)]


class ThermometerIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    ts: AwareDatetime = Field(description="读温度计的时刻（带时区）")
    t: Annotated[Decimal, Field(ge=-90, le=60, max_digits=4, decimal_places=1)]
    note: Annotated[str, StringConstraints(strip_whitespace=True, max_length=200)] | None = None


class ThermometerCorrectionIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    t: Annotated[Decimal, Field(ge=-90, le=60, max_digits=4, decimal_places=1, description="正确的温度")]
    ts: AwareDatetime | None = Field(None, description="正确的读数时刻；不填则沿用原记录的时刻")
    reason: Annotated[str, StringConstraints(strip_whitespace=True, min_length=2, max_length=200)] = Field(
        description="更正原因，如 录入时看错刻度"
    )


class DriftOut(BaseModel):
    id: int
    thermometer_reading_id: int
    compartment_id: int
    ts: datetime
    thermometer_t: float
    entered_by: int
    entered_at: datetime
    note: str | None
    corrects_id: int | None = Field(description="本条是更正记录时：被更正的原读数 id")
    correction_reason: str | None
    corrected_by_reading_id: int | None = Field(description="本条已被更正时：更正记录的读数 id（本条不再计入比对）")
    probe_id: int | None
    probe_ts: datetime | None
    probe_t: float | None
    difference: float | None
    finding: bool
    reason: str | None
    cause: str | None
    probe_flagged_for_vendor: bool


@router.post(
    "/compartments/{compartment_id}/thermometer-readings",
    response_model=DriftOut,
    status_code=201,
    summary="录入温度计读数，并与最近的探头读数比对（±0.5 ℃ 冷藏 / ±1 ℃ 冷冻）",
)
def add_thermometer_reading(
    compartment_id: Id, body: ThermometerIn, principal: CurrentUser, conn: Conn
) -> dict[str, Any]:
    compartment = thermometer.compartment_in_scope(conn, principal.unit_id, compartment_id)
    require_writer(principal)
    return thermometer.add_reading(conn, compartment, principal.user_id, body.ts, body.t, body.note)


@router.post(
    "/compartments/{compartment_id}/thermometer-readings/{reading_id}/corrections",
    response_model=DriftOut,
    status_code=201,
    summary="更正录错的温度计读数：新增一条引用原读数的更正记录（原读数保留，不可修改）",
)
def correct_thermometer_reading(
    compartment_id: Id, reading_id: Id, body: ThermometerCorrectionIn, principal: CurrentUser, conn: Conn
) -> dict[str, Any]:
    compartment = thermometer.compartment_in_scope(conn, principal.unit_id, compartment_id)
    require_writer(principal)
    return thermometer.correct_reading(conn, compartment, principal.user_id, reading_id, body.t, body.ts, body.reason)


@router.get(
    "/compartments/{compartment_id}/thermometer-readings",
    response_model=list[DriftOut],
    summary="温度计读数及比对结果（新在前）",
)
def thermometer_readings(
    compartment_id: Id, principal: CurrentUser, conn: Conn, limit: Annotated[int, Query(ge=1, le=1000)] = 100
) -> list[dict[str, Any]]:
    thermometer.compartment_in_scope(conn, principal.unit_id, compartment_id)
    return thermometer.readings(conn, compartment_id, limit=limit)


class DriftCause(BaseModel):
    model_config = ConfigDict(extra="forbid")
    cause: Text = Field(description="漂移原因，如 探头位置不当、探头故障、温度计误差")


@router.post(
    "/compartments/{compartment_id}/drift-findings/{finding_id}/cause", response_model=DriftOut, summary="填写漂移原因"
)
def drift_cause(
    compartment_id: Id, finding_id: Id, body: DriftCause, principal: CurrentUser, conn: Conn
) -> dict[str, Any]:
    thermometer.compartment_in_scope(conn, principal.unit_id, compartment_id)
    require_writer(principal)
    return thermometer.set_cause(conn, compartment_id, finding_id, principal.user_id, body.cause)
