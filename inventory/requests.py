"""Requests that wait for the level above (VT8, VT10): a sideways issue, a return or a scrap the
rules send for approval. The quantity is reserved while the request is pending, so two requests
cannot spend the same doses; approval books the movement with the reserved quantity, refusal or
withdrawal releases it.
"""

from __future__ import annotations

from datetime import date, datetime
from typing import Any, Literal

import psycopg

from coldchain.core.db import fetch_all, fetch_one
from coldchain.core.errors import conflict, not_found
from coldchain.core.sqlparts import Filters, in_scope
from inventory.lots import load_lot
from inventory.posting import post
from inventory.rules import check_not_expired
from inventory.transfers import ship


def open_request(
    conn: psycopg.Connection,
    user_id: int,
    kind: str,
    unit_id: int,
    to_unit_id: int | None,
    lot_id: int,
    quantity: int,
    approver: int,
    reason: str | None,
) -> dict[str, Any]:
    """Reserve the quantity and put the request before ``approver``."""
    lot = load_lot(conn, lot_id)
    if kind == "issue":
        check_not_expired("issue", lot["expiry_date"], date.today())
    conn.execute("SELECT cc_reserve(%s, %s, %s)", (unit_id, lot_id, quantity))
    row = fetch_one(
        conn,
        """INSERT INTO stock_requests (kind, unit_id, to_unit_id, lot_id, quantity, reason, approver_unit_id,
                                       requested_by)
           VALUES (%(kind)s, %(unit)s, %(to)s, %(lot)s, %(q)s, %(reason)s, %(approver)s, %(user)s) RETURNING *""",
        {
            "kind": kind,
            "unit": unit_id,
            "to": to_unit_id,
            "lot": lot_id,
            "q": quantity,
            "reason": reason,
            "approver": approver,
            "user": user_id,
        },
    )
    assert row is not None
    return row


def _pending(conn: psycopg.Connection, request_id: int, decided: str) -> dict[str, Any]:
    """The request, locked, if it is still pending; ``decided`` is the refusal's words if not."""
    r = fetch_one(conn, "SELECT * FROM stock_requests WHERE id = %(id)s FOR UPDATE", {"id": request_id})
    if r is None:
        raise not_found("申请")
    if r["state"] != "pending":
        raise conflict("already_decided", decided)
    return r


def _release(conn: psycopg.Connection, r: dict[str, Any]) -> None:
    conn.execute("SELECT cc_release(%s, %s, %s)", (r["unit_id"], r["lot_id"], r["quantity"]))


def decide_request(
    conn: psycopg.Connection, user_id: int, request_id: int, approve: bool, note: str | None, occurred_at: datetime
) -> dict[str, Any]:
    """Approval books the movement with the reserved quantity; refusal releases the reservation."""
    r = _pending(conn, request_id, "该申请已处理")
    transfer_id = None
    if not approve:
        _release(conn, r)
    elif r["kind"] == "scrap":
        reason, _, detail = (r["reason"] or "other").partition("：")
        post(
            conn,
            "scrap",
            r["unit_id"],
            r["lot_id"],
            -r["quantity"],
            occurred_at,
            user_id,
            reason=reason,
            note=detail or None,
            request=request_id,
            release=r["quantity"],
        )
    else:
        t = ship(
            conn,
            user_id,
            r["kind"],
            r["unit_id"],
            r["to_unit_id"],
            r["lot_id"],
            r["quantity"],
            occurred_at,
            request_id=request_id,
            release=r["quantity"],
        )
        transfer_id = t["id"]
    row = fetch_one(
        conn,
        """UPDATE stock_requests SET state = %(state)s, decided_by = %(user)s, decided_at = now(),
                  decision_note = %(note)s, transfer_id = %(t)s, version = version + 1
           WHERE id = %(id)s RETURNING *""",
        {
            "state": "approved" if approve else "refused",
            "user": user_id,
            "note": note,
            "t": transfer_id,
            "id": request_id,
        },
    )
    assert row is not None
    return row


def cancel_request(conn: psycopg.Connection, user_id: int, request_id: int) -> dict[str, Any]:
    """The requesting unit withdraws a pending request; its reservation is released."""
    r = _pending(conn, request_id, "该申请已处理，不能撤回")
    _release(conn, r)
    row = fetch_one(
        conn,
        """UPDATE stock_requests SET state = 'cancelled', decided_by = %(user)s, decided_at = now(),
                  version = version + 1 WHERE id = %(id)s RETURNING *""",
        {"user": user_id, "id": request_id},
    )
    assert row is not None
    return row


# ---------------------------------------------------------------------------------------------
# Reading requests back

_REQUESTS = """
SELECT r.id, r.kind, r.unit_id, u.name AS unit_name, r.to_unit_id, tu.name AS to_unit_name, r.lot_id, l.lot_no,
       r.quantity, r.reason, r.approver_unit_id, au.name AS approver_unit_name, r.state, r.requested_by,
       r.requested_at, r.decided_by, r.decided_at, r.decision_note, r.transfer_id, r.version
FROM stock_requests r JOIN units u ON u.id = r.unit_id LEFT JOIN units tu ON tu.id = r.to_unit_id
JOIN units au ON au.id = r.approver_unit_id JOIN lots l ON l.id = r.lot_id
"""

# Requests the jurisdiction made (``mine``), those waiting for the unit itself (``to_approve``), or both.
_ROLE = {
    "mine": in_scope("r.unit_id"),
    "to_approve": "r.approver_unit_id = %(scope)s",
    "any": f"({in_scope('r.unit_id')} OR r.approver_unit_id = %(scope)s)",
}


def request(conn: psycopg.Connection, request_id: int) -> dict[str, Any]:
    """A request with its units' and lot's names."""
    row = fetch_one(conn, _REQUESTS + " WHERE r.id = %(id)s", {"id": request_id})
    assert row is not None
    return row


def list_requests(
    conn: psycopg.Connection,
    scope: int,
    *,
    role: Literal["mine", "to_approve", "any"],
    state: str | None,
    limit: int,
    offset: int,
) -> list[dict[str, Any]]:
    """Requests by ``role``, newest first, filtered by state if given."""
    where = Filters({"scope": scope, "limit": limit, "offset": offset}, _ROLE[role]).eq("r.state", "state", state)
    return fetch_all(
        conn,
        where.query(
            _REQUESTS + " WHERE {where} ORDER BY r.requested_at DESC, r.id DESC LIMIT %(limit)s OFFSET %(offset)s"
        ),
        where.params,
    )


def parties(conn: psycopg.Connection, request_id: int) -> dict[str, Any] | None:
    """The requesting unit (``unit_id``) and the approving one (``approver_unit_id``), if it exists."""
    return fetch_one(conn, "SELECT approver_unit_id, unit_id FROM stock_requests WHERE id = %(id)s", {"id": request_id})
