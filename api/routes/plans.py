"""Monthly usage plans (VT5): a township's plan is pre-filled with last month's usage, vaccinations
and its current stock, reviewed by its county, approved or returned with a reason; county and city
plans go to their own level above. The pre-filled numbers are recomputed by the server, never taken
from the client, so a reviewer compares the plan with the ledger as it is.
"""

from __future__ import annotations

from datetime import date, datetime
from typing import Annotated, Any, Literal

import psycopg
from fastapi import APIRouter, Query
from pydantic import BaseModel, ConfigDict, Field, StringConstraints, model_validator

from api.deps import Conn, CurrentUser, Principal, require_writer, set_action, update_versioned
from coldchain.core.db import fetch_all, fetch_one
from coldchain.core.errors import conflict, forbidden, invalid, not_found
from coldchain.core.terms import previous_month

router = APIRouter(tags=["疫苗使用计划"])

Id = Annotated[int, Field(ge=1, le=2**62)]
Version = Annotated[int, Field(ge=1, le=2**31 - 1)]
MONTH_PATTERN = r"^20[0-9]{2}-(0[1-9]|1[0-2])$"
Month = Annotated[str, StringConstraints(pattern=MONTH_PATTERN)]
QMonth = Annotated[str | None, Query(pattern=MONTH_PATTERN)]


def month_start(month: str) -> date:
    year, mon = month.split("-")
    return date(int(year), int(mon), 1)


# What left the unit for use in a month (vials): its vaccination usage and its issues to other units,
# net of their reversals and of the vials the receiving unit refused (which came back); doses given in
# its jurisdiction; its stock now. Per spec. A reversal is booked when it is made and a refusal when
# the goods arrive, often the next month; both count in the month of what they correct (the original
# movement's time, the shipping time), else last month is overstated and this month goes
# negative, which usage_plan_lines refuses (prev_usage >= 0).
_PREFILL = """
WITH outflow AS (
    SELECT l.spec_id, -sum(m.quantity)::int AS vials
    FROM stock_movements m LEFT JOIN stock_movements o ON o.id = m.reverses_id
    LEFT JOIN stock_transfers t ON t.id = coalesce(o.transfer_id, m.transfer_id)
    JOIN lots l ON l.id = m.lot_id
    WHERE m.unit_id = %(unit)s
      AND (coalesce(o.kind, m.kind) IN ('usage', 'issue')
           OR (coalesce(o.kind, m.kind) = 'transfer_rejection' AND t.kind = 'issue'))
      AND coalesce(t.shipped_at, o.occurred_at, m.occurred_at)
          >= %(from)s::date::timestamp AT TIME ZONE 'Asia/Shanghai'
      AND coalesce(t.shipped_at, o.occurred_at, m.occurred_at)
          < %(to)s::date::timestamp AT TIME ZONE 'Asia/Shanghai'
    GROUP BY l.spec_id
), given AS (
    SELECT l.spec_id, count(*)::int AS doses
    FROM vaccinations v JOIN lots l ON l.id = v.lot_id
    WHERE v.unit_id IN (SELECT descendant_id FROM unit_tree WHERE ancestor_id = %(unit)s)
      AND v.vaccinated_at >= %(from)s::date::timestamp AT TIME ZONE 'Asia/Shanghai'
      AND v.vaccinated_at < %(to)s::date::timestamp AT TIME ZONE 'Asia/Shanghai'
    GROUP BY l.spec_id
), stock AS (
    SELECT l.spec_id, sum(b.on_hand)::int AS vials
    FROM stock_balances b JOIN lots l ON l.id = b.lot_id WHERE b.unit_id = %(unit)s GROUP BY l.spec_id
)
SELECT s.id AS spec_id, v.name AS vaccine_name, s.spec, coalesce(outflow.vials, 0) AS prev_usage,
       coalesce(given.doses, 0) AS administered, coalesce(stock.vials, 0) AS stock
FROM vaccine_specs s JOIN vaccines v ON v.id = s.vaccine_id
LEFT JOIN outflow ON outflow.spec_id = s.id LEFT JOIN given ON given.spec_id = s.id
LEFT JOIN stock ON stock.spec_id = s.id
WHERE (s.id = ANY(%(specs)s) OR outflow.vials IS NOT NULL OR given.doses IS NOT NULL OR stock.vials > 0)
ORDER BY v.name, s.spec
"""


def prefill(conn: psycopg.Connection, unit_id: int, first: date, specs: list[int]) -> list[dict[str, Any]]:
    prev = previous_month(first)
    return fetch_all(conn, _PREFILL, {"unit": unit_id, "from": prev, "to": first, "specs": specs})


class PrefillLine(BaseModel):
    spec_id: int
    vaccine_name: str
    spec: str
    prev_usage: int
    administered: int
    stock: int


@router.get(
    "/usage-plans/prefill",
    response_model=list[PrefillLine],
    summary="计划预填：上月使用量、上月接种人次与当前库存（本单位）",
)
def get_prefill(
    principal: CurrentUser, conn: Conn, month: Annotated[str, Query(pattern=MONTH_PATTERN)]
) -> list[dict[str, Any]]:
    return prefill(conn, principal.unit_id, month_start(month), [])


class PlanLineIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    spec_id: Id
    planned: int = Field(ge=0, le=10_000_000, description="计划数（支/瓶）")
    note: Annotated[str, StringConstraints(strip_whitespace=True, max_length=500)] | None = None


class PlanIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    month: Month
    lines: list[PlanLineIn] = Field(min_length=1, max_length=500)

    @model_validator(mode="after")
    def _unique(self) -> PlanIn:
        specs = [x.spec_id for x in self.lines]
        if len(set(specs)) != len(specs):
            raise ValueError("同一品规在计划中出现多次")
        return self


class PlanLinesIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    version: Version
    lines: list[PlanLineIn] = Field(min_length=1, max_length=500)


class VersionIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    version: Version


class PlanDecisionIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    version: Version
    approve: bool
    reason: Annotated[str, StringConstraints(strip_whitespace=True, min_length=2, max_length=500)] | None = None

    @model_validator(mode="after")
    def _return_has_reason(self) -> PlanDecisionIn:
        if not self.approve and not self.reason:
            raise ValueError("退回计划须说明原因")
        return self


class PlanLineOut(BaseModel):
    spec_id: int
    vaccine_name: str
    spec: str
    prev_usage: int
    administered: int
    stock: int
    planned: int
    note: str | None


class PlanOut(BaseModel):
    id: int
    unit_id: int
    unit_name: str
    month: date
    state: str
    reviewer_unit_id: int
    reviewer_unit_name: str
    created_by: int
    submitted_at: datetime | None
    decided_by: int | None
    decided_at: datetime | None
    return_reason: str | None
    version: int
    lines: list[PlanLineOut]


_PLAN = """
SELECT p.id, p.unit_id, u.name AS unit_name, p.month, p.state, p.reviewer_unit_id, r.name AS reviewer_unit_name,
       p.created_by, p.submitted_at, p.decided_by, p.decided_at, p.return_reason, p.version
FROM usage_plans p JOIN units u ON u.id = p.unit_id JOIN units r ON r.id = p.reviewer_unit_id
"""
_LINES = """
SELECT pl.spec_id, v.name AS vaccine_name, s.spec, pl.prev_usage, pl.administered, pl.stock, pl.planned, pl.note
FROM usage_plan_lines pl JOIN vaccine_specs s ON s.id = pl.spec_id JOIN vaccines v ON v.id = s.vaccine_id
WHERE pl.plan_id = %(id)s ORDER BY v.name, s.spec
"""


def _plan(conn: psycopg.Connection, principal: Principal, plan_id: int) -> dict[str, Any]:
    row = fetch_one(
        conn,
        _PLAN  # noqa: S608 — constant fragments, parameters bound
        + """ WHERE p.id = %(id)s AND (p.reviewer_unit_id = %(scope)s OR p.unit_id IN
                      (SELECT descendant_id FROM unit_tree WHERE ancestor_id = %(scope)s))""",
        {"id": plan_id, "scope": principal.unit_id},
    )
    if row is None:
        raise not_found("使用计划")
    row["lines"] = fetch_all(conn, _LINES, {"id": plan_id})
    return row


def _write_lines(conn: psycopg.Connection, plan: dict[str, Any], lines: list[PlanLineIn]) -> None:
    known = fetch_all(
        conn, "SELECT id FROM vaccine_specs WHERE id = ANY(%(ids)s) AND active", {"ids": [x.spec_id for x in lines]}
    )
    if len(known) != len({x.spec_id for x in lines}):
        raise invalid("计划中有不存在或已停用的疫苗品规")
    filled = {r["spec_id"]: r for r in prefill(conn, plan["unit_id"], plan["month"], [x.spec_id for x in lines])}
    conn.execute("DELETE FROM usage_plan_lines WHERE plan_id = %s", (plan["id"],))
    with conn.cursor() as cur:
        cur.executemany(
            """INSERT INTO usage_plan_lines (plan_id, spec_id, prev_usage, administered, stock, planned, note)
               VALUES (%s, %s, %s, %s, %s, %s, %s)""",
            [
                (
                    plan["id"],
                    x.spec_id,
                    filled[x.spec_id]["prev_usage"],
                    filled[x.spec_id]["administered"],
                    filled[x.spec_id]["stock"],
                    x.planned,
                    x.note,
                )
                for x in lines
            ],
        )


@router.post("/usage-plans", response_model=PlanOut, status_code=201, summary="新建本单位的月度使用计划（草稿）")
def create_plan(body: PlanIn, principal: CurrentUser, conn: Conn) -> dict[str, Any]:
    require_writer(principal)
    reviewer = principal.actor.unit.parent_id
    if reviewer is None:
        raise invalid("省级没有上级审核单位，不报使用计划")
    first = month_start(body.month)
    set_action(conn, "plan.create")
    row = fetch_one(
        conn,
        """INSERT INTO usage_plans (unit_id, month, reviewer_unit_id, created_by)
           VALUES (%(unit)s, %(month)s, %(reviewer)s, %(user)s)
           ON CONFLICT (unit_id, month) DO NOTHING RETURNING id, unit_id, month""",
        {"unit": principal.unit_id, "month": first, "reviewer": reviewer, "user": principal.user_id},
    )
    if row is None:
        raise conflict("plan_exists", f"本单位 {body.month} 的使用计划已存在，请修改该计划")
    _write_lines(conn, row, body.lines)
    return _plan(conn, principal, row["id"])


@router.get("/usage-plans", response_model=list[PlanOut], summary="使用计划：本单位及下级的，或待本单位审核的")
def list_plans(
    principal: CurrentUser,
    conn: Conn,
    role: Literal["mine", "to_review", "any"] = "any",
    month: QMonth = None,
    state: Literal["draft", "submitted", "approved", "returned"] | None = None,
) -> list[dict[str, Any]]:
    rows = fetch_all(
        conn,
        _PLAN  # noqa: S608 — constant fragments, parameters bound
        + """ WHERE ((%(role)s <> 'to_review' AND p.unit_id IN
                             (SELECT descendant_id FROM unit_tree WHERE ancestor_id = %(scope)s))
                        OR (%(role)s <> 'mine' AND p.reviewer_unit_id = %(scope)s AND p.state <> 'draft'))
                      AND (%(month)s::date IS NULL OR p.month = %(month)s)
                      AND (%(state)s::text IS NULL OR p.state = %(state)s)
                    ORDER BY p.month DESC, u.code LIMIT 1000""",
        {"role": role, "scope": principal.unit_id, "month": month_start(month) if month else None, "state": state},
    )
    for row in rows:
        row["lines"] = fetch_all(conn, _LINES, {"id": row["id"]})
    return rows


@router.get("/usage-plans/{plan_id}", response_model=PlanOut, summary="使用计划详情")
def get_plan(plan_id: Id, principal: CurrentUser, conn: Conn) -> dict[str, Any]:
    return _plan(conn, principal, plan_id)


def _own_editable(conn: psycopg.Connection, principal: Principal, plan_id: int) -> dict[str, Any]:
    plan = _plan(conn, principal, plan_id)
    require_writer(principal)
    if plan["unit_id"] != principal.unit_id:
        raise forbidden("只能修改本单位的使用计划")
    if plan["state"] not in {"draft", "returned"}:
        raise conflict("plan_state", "计划已提交或已批准，不能修改")
    return plan


@router.put("/usage-plans/{plan_id}/lines", response_model=PlanOut, summary="修改计划明细（草稿或被退回时）")
def put_lines(plan_id: Id, body: PlanLinesIn, principal: CurrentUser, conn: Conn) -> dict[str, Any]:
    plan = _own_editable(conn, principal, plan_id)
    specs = [x.spec_id for x in body.lines]
    if len(set(specs)) != len(specs):
        raise invalid("同一品规在计划中出现多次")
    set_action(conn, "plan.edit")
    update_versioned(conn, "usage_plans", plan_id, body.version, {"state": plan["state"]}, "使用计划")
    _write_lines(conn, plan, body.lines)
    return _plan(conn, principal, plan_id)


@router.post("/usage-plans/{plan_id}/submit", response_model=PlanOut, summary="提交计划给上级审核")
def submit_plan(plan_id: Id, body: VersionIn, principal: CurrentUser, conn: Conn) -> dict[str, Any]:
    plan = _own_editable(conn, principal, plan_id)
    set_action(conn, "plan.submit")
    # Pre-filled numbers are refreshed at submission: the reviewer sees the ledger as it is now.
    _write_lines(
        conn, plan, [PlanLineIn(spec_id=x["spec_id"], planned=x["planned"], note=x["note"]) for x in plan["lines"]]
    )
    update_versioned(
        conn,
        "usage_plans",
        plan_id,
        body.version,
        {
            "state": "submitted",
            "submitted_by": principal.user_id,
            "submitted_at": datetime.now().astimezone(),
            "return_reason": None,  # the reviewer's earlier reason has been answered by this version
        },
        "使用计划",
    )
    return _plan(conn, principal, plan_id)


@router.post("/usage-plans/{plan_id}/decision", response_model=PlanOut, summary="审核计划：批准或退回（须说明原因）")
def decide_plan(plan_id: Id, body: PlanDecisionIn, principal: CurrentUser, conn: Conn) -> dict[str, Any]:
    plan = _plan(conn, principal, plan_id)
    require_writer(principal)
    if plan["reviewer_unit_id"] != principal.unit_id:
        raise forbidden("此计划须由其上级单位审核")
    if plan["state"] != "submitted":
        raise conflict("plan_state", "只有已提交的计划可以审核")
    set_action(conn, "plan.decide")
    update_versioned(
        conn,
        "usage_plans",
        plan_id,
        body.version,
        {
            "state": "approved" if body.approve else "returned",
            "decided_by": principal.user_id,
            "decided_at": datetime.now().astimezone(),
            "return_reason": None if body.approve else body.reason,
        },
        "使用计划",
    )
    return _plan(conn, principal, plan_id)
