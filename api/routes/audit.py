"""The audit log, for the level above: who changed what, when, before and after.

Rows are written by the database's triggers (migration 0004), never by route code, and read by
:mod:`registry.audit`. A user reads the rows of their own unit and the units below it; only
system administrators and the provincial supervisor read it (RS1: the level above inspects).
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Query
from pydantic import BaseModel

from api.deps import Conn, CurrentUser, require_filter_in_scope
from coldchain.core.errors import forbidden
from registry import audit
from registry.audit import ENTITIES

router = APIRouter(tags=["审计日志"])


class AuditRow(BaseModel):
    id: int
    ts: datetime
    actor_id: int | None
    actor_username: str | None
    action: str
    entity: str
    entity_id: int | None
    op: str
    unit_id: int | None
    before: dict[str, Any] | None
    after: dict[str, Any] | None


@router.get("/audit", response_model=list[AuditRow], summary="审计日志（本单位及下级，新在前）")
def audit_log(
    principal: CurrentUser,
    conn: Conn,
    unit_id: Annotated[int | None, Query(ge=1, le=2**62)] = None,
    entity: Annotated[str | None, Query(pattern="^(" + "|".join(ENTITIES) + ")$")] = None,
    entity_id: Annotated[int | None, Query(ge=1, le=2**62)] = None,
    actor_id: Annotated[int | None, Query(ge=1, le=2**62)] = None,
    since: datetime | None = None,
    until: datetime | None = None,
    before_id: Annotated[int | None, Query(ge=1, le=2**62, description="翻页：只返回 id 小于此值的记录")] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 200,
) -> list[dict[str, Any]]:
    if principal.role not in ("system_admin", "supervisor"):
        raise forbidden("审计日志仅供系统管理员和省级督导查阅")
    require_filter_in_scope(conn, principal, unit_id)
    return audit.audit_log(
        conn,
        principal.actor.unit,
        unit_id=unit_id,
        entity=entity,
        entity_id=entity_id,
        actor_id=actor_id,
        since=since,
        until=until,
        before_id=before_id,
        limit=limit,
    )
