"""Posting one movement, the single way stock changes, and what every booking reads first.

Every booking (receipts, transfers, requests, counts, usage, reversals) goes through :func:`post`,
which calls ``cc_post_movement`` (migration 0006): the one place that locks the balance row and
refuses a movement that would take stock below zero, now or at any instant after a backdated time.
Rules about *who may move what where* are the pure functions of :mod:`inventory.rules`; the
booking modules apply them to the rows read here (:func:`load_node`, and
:func:`inventory.lots.load_lot`).
"""

from __future__ import annotations

from datetime import date, datetime
from typing import Any

import psycopg

from coldchain.core.db import fetch_one
from coldchain.core.errors import invalid, not_found
from coldchain.core.terms import BEIJING
from inventory.rules import Node

_NODE = """
SELECT u.id, u.level, u.name, u.active,
       coalesce(array_agg(t.ancestor_id ORDER BY t.depth DESC) FILTER (WHERE t.depth > 0), '{}') AS ancestors
FROM units u LEFT JOIN unit_tree t ON t.descendant_id = u.id
WHERE u.id = %(id)s
GROUP BY u.id
"""


def load_node(conn: psycopg.Connection, unit_id: int) -> Node:
    """The unit with its ancestors, as the pure rules take it."""
    row = fetch_one(conn, _NODE, {"id": unit_id})
    if row is None:
        raise not_found("单位")
    return Node(row["id"], row["level"], tuple(row["ancestors"]), row["name"], row["active"])


def beijing_day(ts: datetime) -> date:
    """The Beijing day of an instant: expiry is judged on the day the vaccine was moved or used."""
    return ts.astimezone(BEIJING).date()


_POST_ARGS = frozenset(
    {"counterparty", "transfer", "request", "compartment", "reason", "note", "reverses", "supplier", "release"}
)


def post(
    conn: psycopg.Connection,
    kind: str,
    unit_id: int,
    lot_id: int,
    quantity: int,
    occurred_at: datetime,
    user_id: int | None,
    **extra: Any,
) -> dict[str, Any]:
    """Book one movement through ``cc_post_movement``; ``extra`` are its optional p_* arguments."""
    args = {
        "kind": kind,
        "unit": unit_id,
        "lot": lot_id,
        "quantity": quantity,
        "occurred": occurred_at,
        "user": user_id,
    }
    names = [
        "p_kind => %(kind)s",
        "p_unit => %(unit)s",
        "p_lot => %(lot)s",
        "p_quantity => %(quantity)s",
        "p_occurred => %(occurred)s",
        "p_user => %(user)s",
    ]
    for key, value in extra.items():
        if value is not None:
            if key not in _POST_ARGS:
                raise TypeError(key)
            names.append(f"p_{key} => %({key})s")
            args[key] = value
    row = fetch_one(conn, f"SELECT * FROM cc_post_movement({', '.join(names)})", args)  # noqa: S608 — fixed names
    assert row is not None
    return row


def check_compartment(conn: psycopg.Connection, compartment_id: int | None, unit_id: int, mode: str) -> None:
    """Where the stock is put decides whose temperatures the trace shows: it must be this unit's."""
    if compartment_id is None:
        return
    row = fetch_one(
        conn,
        """SELECT c.mode, c.status, e.unit_id FROM compartments c JOIN equipment e ON e.id = c.equipment_id
           WHERE c.id = %(id)s""",
        {"id": compartment_id},
    )
    if row is None or row["unit_id"] != unit_id:
        raise invalid("存放温区不属于本单位")
    if row["status"] != "active":
        raise invalid("存放温区已停用")
    if row["mode"] != mode:
        raise invalid("存放温区的温度类型与疫苗储存条件不符（冷藏/冷冻）")


def check_vehicle(conn: psycopg.Connection, compartment_id: int, unit_id: int) -> None:
    """Stock in transit is traced through the vehicle it rides in: one of the sender's own vehicles."""
    row = fetch_one(
        conn,
        """SELECT e.unit_id, e.kind FROM compartments c JOIN equipment e ON e.id = c.equipment_id
           WHERE c.id = %(id)s""",
        {"id": compartment_id},
    )
    if row is None or row["unit_id"] != unit_id or row["kind"] != "vehicle":
        raise invalid("运输温区须为本单位冷藏车的温区")
