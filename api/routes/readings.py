"""Raw readings of a compartment (attributed by the binding at each reading's time) or of a probe,
newest first, over a bounded window (:mod:`registry.readings`).

The compartment or probe must be in the user's jurisdiction (404 otherwise), checked before the
window, so an id outside it is never told apart from one that does not exist. The check reads the
primary; the readings themselves — history, and the heaviest read of a probe — come from the
streaming replica when one is configured (:data:`api.deps.ReadConn`, issue #18), with its lag in
the ``X-Coldchain-Replica-Lag`` header.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Query
from pydantic import BaseModel

from api.deps import Conn, CurrentUser, ReadConn
from api.fields import Id
from coldchain.core.errors import not_found
from registry import equipment, hardware, readings

router = APIRouter(tags=["设备登记"])

ReadingLimit = Annotated[int, Query(ge=1, le=20000)]


class ReadingOut(BaseModel):
    ts: datetime
    t: float
    rh: float | None
    probe_id: int


@router.get(
    "/compartments/{compartment_id}/readings",
    response_model=list[ReadingOut],
    summary="温区读数（按读数时刻的绑定归属，新在前；默认最近 24 小时）",
)
def compartment_readings(
    compartment_id: Id,
    principal: CurrentUser,
    conn: Conn,
    read: ReadConn,
    since: datetime | None = None,
    until: datetime | None = None,
    limit: ReadingLimit = 5000,
) -> list[dict[str, Any]]:
    if equipment.get_compartment(conn, principal.actor.unit, compartment_id) is None:
        raise not_found("温区")
    start, end = readings.window(since, until)
    return readings.compartment_readings(read, compartment_id, start, end, limit)


@router.get("/probes/{item_id}/readings", response_model=list[ReadingOut], summary="探头原始读数（新在前）")
def probe_readings(
    item_id: Id,
    principal: CurrentUser,
    conn: Conn,
    read: ReadConn,
    since: datetime | None = None,
    until: datetime | None = None,
    limit: ReadingLimit = 5000,
) -> list[dict[str, Any]]:
    if hardware.get_hardware(conn, "probes", principal.actor.unit, item_id) is None:
        raise not_found("探头")
    start, end = readings.window(since, until)
    return readings.probe_readings(read, item_id, start, end, limit)
