"""Monthly usage plans (VT5): a unit's plan for a month, pre-filled from the ledger with last
month's outflow, the doses given in its jurisdiction and its stock now, and reviewed by the level
above.

Why the pre-filled numbers are computed here and stored with each line: a reviewer must compare the
plan with the ledger as it was when the plan was written or submitted, never with numbers a client
sent.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date
from typing import Any, Literal

import psycopg

from coldchain.core.db import fetch_all, fetch_one
from coldchain.core.errors import conflict, invalid, not_found
from coldchain.core.sqlparts import Filters, in_scope
from coldchain.core.terms import MAX_PAGE, previous_month
from inventory.catalogue import active_specs

# What left the unit for use in a month (vials): its vaccination usage and its issues to other units,
# net of their reversals and of the vials the receiving unit refused (which came back); doses given in
# its jurisdiction; its stock now. Per spec. A reversal is booked when it is made and a refusal when
# the goods arrive, often the next month; both count in the month of what they correct (the original
# movement's time, the shipping time), else last month is overstated and this month goes
# negative, which usage_plan_lines refuses (prev_usage >= 0).
_PREFILL = f"""
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
    WHERE {in_scope("v.unit_id")}
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
"""  # noqa: S608 — constant fragment


def prefill(conn: psycopg.Connection, unit_id: int, month: date, specs: list[int]) -> list[dict[str, Any]]:
    """The pre-filled lines of ``unit_id``'s plan for ``month`` (its first day): every spec it used,
    gave or holds, and ``specs`` besides."""
    prev = previous_month(month)
    return fetch_all(conn, _PREFILL, {"unit": unit_id, "scope": unit_id, "from": prev, "to": month, "specs": specs})


@dataclass(frozen=True)
class Line:
    """What the planning unit writes on one line; the rest is pre-filled."""

    spec_id: int
    planned: int
    note: str | None = None


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
# Plans of the jurisdiction (``mine``), plans submitted to the unit itself (``to_review``), or both.
_ROLE = {
    "mine": in_scope("p.unit_id"),
    "to_review": "(p.reviewer_unit_id = %(scope)s AND p.state <> 'draft')",
    "any": f"({in_scope('p.unit_id')} OR (p.reviewer_unit_id = %(scope)s AND p.state <> 'draft'))",
}


def _lines(conn: psycopg.Connection, plan_id: int) -> list[dict[str, Any]]:
    return fetch_all(conn, _LINES, {"id": plan_id})


def plan(conn: psycopg.Connection, scope: int, plan_id: int) -> dict[str, Any]:
    """A plan with its lines, if it is of the jurisdiction of ``scope`` or submitted to it."""
    row = fetch_one(
        conn,
        _PLAN + f" WHERE p.id = %(id)s AND (p.reviewer_unit_id = %(scope)s OR {in_scope('p.unit_id')})",
        {"id": plan_id, "scope": scope},
    )
    if row is None:
        raise not_found("使用计划")
    row["lines"] = _lines(conn, plan_id)
    return row


def list_plans(
    conn: psycopg.Connection,
    scope: int,
    *,
    role: Literal["mine", "to_review", "any"],
    month: date | None,
    state: str | None,
) -> list[dict[str, Any]]:
    """Plans by ``role`` and the filters given, latest month first, at most one page."""
    where = Filters({"scope": scope, "limit": MAX_PAGE}, _ROLE[role]).eq("p.month", "month", month)
    where.eq("p.state", "state", state)
    rows = fetch_all(
        conn, where.query(_PLAN + " WHERE {where} ORDER BY p.month DESC, u.code LIMIT %(limit)s"), where.params
    )
    for row in rows:
        row["lines"] = _lines(conn, row["id"])
    return rows


def write_lines(conn: psycopg.Connection, plan: dict[str, Any], lines: Sequence[Line]) -> None:
    """Replace the plan's lines, each pre-filled afresh from the ledger."""
    specs = [x.spec_id for x in lines]
    if len(active_specs(conn, specs)) != len(set(specs)):
        raise invalid("计划中有不存在或已停用的疫苗品规")
    filled = {r["spec_id"]: r for r in prefill(conn, plan["unit_id"], plan["month"], specs)}
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


def create_plan(
    conn: psycopg.Connection, unit_id: int, month: date, reviewer: int, user_id: int, lines: Sequence[Line]
) -> int:
    """A draft plan of ``unit_id`` for ``month``, one per unit and month; returns its id."""
    row = fetch_one(
        conn,
        """INSERT INTO usage_plans (unit_id, month, reviewer_unit_id, created_by)
           VALUES (%(unit)s, %(month)s, %(reviewer)s, %(user)s)
           ON CONFLICT (unit_id, month) DO NOTHING RETURNING id, unit_id, month""",
        {"unit": unit_id, "month": month, "reviewer": reviewer, "user": user_id},
    )
    if row is None:
        raise conflict("plan_exists", f"本单位 {month:%Y-%m} 的使用计划已存在，请修改该计划")
    write_lines(conn, row, lines)
    return int(row["id"])
