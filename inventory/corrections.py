"""Setting the books right: a physical count books the differences as adjustments, each with its
reason, and a mistaken movement is undone by a linked reversal — never by an edit, at most once.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import psycopg

from coldchain.core.db import fetch_all, fetch_one
from coldchain.core.errors import Refused, conflict, not_found
from inventory import packages, transfers
from inventory.posting import post
from inventory.rules import count_differences


def book_count(
    conn: psycopg.Connection,
    user_id: int,
    unit_id: int,
    counted: dict[int, int],
    reasons: dict[int, tuple[str, str]],
    occurred_at: datetime,
) -> list[dict[str, Any]]:
    """A physical count sets the books to what is on the shelf; every difference needs its reason."""
    rows = fetch_all(
        conn,
        "SELECT lot_id, on_hand FROM cc_lock_balances(%(u)s)",  # FOR UPDATE, as the owner (0012)
        {"u": unit_id},
    )
    book = {r["lot_id"]: r["on_hand"] for r in rows}
    diffs = count_differences(book, counted)
    missing = [lot for lot in diffs if lot not in reasons]
    if missing:
        details = [{"lot_id": lot, "book": book.get(lot, 0), "counted": counted.get(lot, 0)} for lot in missing]
        raise Refused(
            422, "reason_required", f"有 {len(missing)} 个批号盘点数与账面不符，须逐一填写原因", details=details
        )
    return [
        post(
            conn,
            "adjustment",
            unit_id,
            lot,
            diff,
            occurred_at,
            user_id,
            reason=reasons[lot][0],
            note=reasons[lot][1] or None,
        )
        for lot, diff in diffs.items()
    ]


_REVERSIBLE = {"receipt", "issue", "return", "transfer_receipt", "usage", "scrap", "adjustment"}


def _not_reversible(message: str) -> Refused:
    return conflict("not_reversible", message)


def reverse(
    conn: psycopg.Connection, user_id: int, movement_id: int, reason: str, now: datetime
) -> list[dict[str, Any]]:
    """A mistake is undone by a linked reversing movement, at most once, never by an edit.

    Undoing one leg of a transfer undoes the transfer state with it: reversing the issue of a
    transfer still in transit cancels it; reversing its receipt puts it back in transit (and reverses
    the rejection booked with it), so stock is never counted in two places."""
    m = fetch_one(conn, "SELECT * FROM cc_lock_movement(%(id)s)", {"id": movement_id})
    if m is None:
        raise not_found("台账记录")
    if m["kind"] not in _REVERSIBLE:
        raise _not_reversible("冲销记录和拒收退回记录不能再冲销")
    if fetch_one(conn, "SELECT 1 FROM stock_movements WHERE reverses_id = %(id)s", {"id": movement_id}):
        raise conflict("already_reversed", f"单据 {m['doc_no']} 已冲销过，每条记录最多冲销一次")
    if m["kind"] == "receipt" and packages.moved_codes(conn, m["id"]):
        raise _not_reversible("按码入库的记录不能冲销：码已登记，请联系省级处理")
    targets = [m]
    if m["transfer_id"] is not None:
        t = transfers.lock(conn, m["transfer_id"])
        assert t is not None
        if m["kind"] in {"issue", "return"}:
            if t["state"] != "in_transit":
                raise _not_reversible("该调拨已收货：请先由收货单位冲销收货记录")
            packages.cancel_transit(conn, t["id"])
            transfers.cancel(conn, t["id"])
        else:  # transfer_receipt
            moved_on = packages.moved_on(conn, m["id"], m["unit_id"])
            if moved_on is not None:
                raise _not_reversible(f"本次收货的码 {moved_on} 已再次出库或使用，不能冲销收货")
            packages.back_in_transit(conn, m["id"], t["from_unit_id"], t["id"])
            rejection = fetch_one(
                conn,
                """SELECT * FROM stock_movements WHERE transfer_id = %(t)s AND kind = 'transfer_rejection'
                   AND NOT EXISTS (SELECT 1 FROM stock_movements r WHERE r.reverses_id = stock_movements.id)""",
                {"t": t["id"]},
            )
            if rejection is not None:
                targets.append(rejection)
            transfers.reopen(conn, t["id"])
    return [
        post(
            conn,
            "reversal",
            x["unit_id"],
            x["lot_id"],
            -x["quantity"],
            now,
            user_id,
            reverses=x["id"],
            reason=reason,
            counterparty=x["counterparty_unit_id"],
            transfer=x["transfer_id"],
        )
        for x in targets
    ]
