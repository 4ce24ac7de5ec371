"""The audit log, for the level above: who changed what, when, before and after.

Rows are written by the database's triggers (migration 0004), never by route code. A user reads
the rows of their own unit and the units below it; only system administrators and the
provincial supervisor read it (RS1: the level above inspects).
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Query
from pydantic import BaseModel

from api.deps import Conn, CurrentUser, require_unit_in_scope
from coldchain.core.db import fetch_all
from coldchain.core.errors import forbidden

router = APIRouter(tags=["审计日志"])

ENTITIES = (
    "units",
    "equipment",
    "compartments",
    "gateways",
    "probes",
    "probe_bindings",
    "users",
    "unit_responsibles",
    "forms",
)


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


_QUERY = """
SELECT a.id, a.ts, a.actor_id, u.username AS actor_username, a.action, a.entity, a.entity_id, a.op, a.unit_id,
       a.before, a.after
FROM audit_log a
LEFT JOIN users u ON u.id = a.actor_id
WHERE (a.unit_id IN (SELECT descendant_id FROM unit_tree WHERE ancestor_id = %(scope)s)
       OR (a.unit_id IS NULL AND %(province)s))
  AND (%(unit)s::bigint IS NULL OR a.unit_id = %(unit)s)
  AND (%(entity)s::text IS NULL OR a.entity = %(entity)s)
  AND (%(entity_id)s::bigint IS NULL OR a.entity_id = %(entity_id)s)
  AND (%(actor)s::bigint IS NULL OR a.actor_id = %(actor)s)
  AND (%(since)s::timestamptz IS NULL OR a.ts >= %(since)s)
  AND (%(until)s::timestamptz IS NULL OR a.ts < %(until)s)
  AND (%(before_id)s::bigint IS NULL OR a.id < %(before_id)s)
ORDER BY a.id DESC
LIMIT %(limit)s
"""


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
    if unit_id is not None:
        require_unit_in_scope(conn, principal, unit_id)
    return fetch_all(
        conn,
        _QUERY,
        {
            "scope": principal.unit_id,
            "province": principal.actor.unit.level == "province",
            "unit": unit_id,
            "entity": entity,
            "entity_id": entity_id,
            "actor": actor_id,
            "since": since,
            "until": until,
            "before_id": before_id,
            "limit": limit,
        },
    )
