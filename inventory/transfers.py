"""Transfers between units (VT8): an issue (down or sideways) or a return (up) leaves the sender at
once and stays in transit, in no unit's stock, until the receiver books what arrived and what it
refused; refused vials go back to the sender.

Whether a transfer may be shipped at once or needs approval first is decided in
:mod:`inventory.outgoing`; this module books the shipment and the receipt and reads transfers back.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any, Literal

import psycopg

from coldchain.core.db import fetch_all, fetch_one
from coldchain.core.errors import Refused, conflict, invalid, not_found
from coldchain.core.sqlparts import Filters, in_scope
from inventory import packages
from inventory.lots import load_lot
from inventory.posting import beijing_day, check_compartment, post
from inventory.rules import check_not_expired


def ship(
    conn: psycopg.Connection,
    user_id: int,
    kind: str,
    src: int,
    dst: int,
    lot_id: int,
    quantity: int,
    occurred_at: datetime,
    *,
    codes: Sequence[str] = (),
    vehicle_compartment_id: int | None = None,
    request_id: int | None = None,
    release: int = 0,
    note: str | None = None,
) -> dict[str, Any]:
    """Book the sender's movement and open the transfer in transit; scanned packages go with it.

    ``release``: the quantity an approved request had reserved, freed by this movement."""
    lot = load_lot(conn, lot_id)
    if kind == "issue":
        check_not_expired("issue", lot["expiry_date"], beijing_day(occurred_at))
    scanned = packages.canonical(codes)
    moving = packages.codes_for_move(conn, scanned, lot_id, src, None, quantity) if codes else []
    transfer = fetch_one(
        conn,
        """INSERT INTO stock_transfers (kind, from_unit_id, to_unit_id, lot_id, quantity, shipped_at,
                                        vehicle_compartment_id)
           VALUES (%(kind)s, %(src)s, %(dst)s, %(lot)s, %(q)s, %(at)s, %(vehicle)s) RETURNING *""",
        {
            "kind": kind,
            "src": src,
            "dst": dst,
            "lot": lot_id,
            "q": quantity,
            "at": occurred_at,
            "vehicle": vehicle_compartment_id,
        },
    )
    assert transfer is not None
    m = post(
        conn,
        kind,
        src,
        lot_id,
        -quantity,
        occurred_at,
        user_id,
        counterparty=dst,
        transfer=transfer["id"],
        request=request_id,
        release=release,
        note=note,
    )
    if moving:
        packages.send(conn, transfer["id"], moving)
        packages.link(conn, m["id"], scanned)
    transfer["movement"] = m
    return transfer


def receive_transfer(
    conn: psycopg.Connection,
    user_id: int,
    transfer_id: int,
    accepted: int,
    rejected: int,
    occurred_at: datetime,
    *,
    reject_reason: str | None = None,
    compartment_id: int | None = None,
    rejected_codes: Sequence[str] = (),
) -> dict[str, Any]:
    """The receiver books what it accepted (``receipt``) and sends back what it refused
    (``rejection``, to the sender); together they must be the quantity shipped."""
    t = lock(conn, transfer_id)
    if t is None:
        raise not_found("调拨单")
    if t["state"] != "in_transit":
        raise conflict("not_in_transit", "该调拨单已收货或已撤销")
    if accepted + rejected != t["quantity"]:
        raise Refused(422, "quantity_mismatch", f"实收 {accepted} + 拒收 {rejected} 应等于发货数量 {t['quantity']}")
    if rejected and not reject_reason:
        raise invalid("拒收须填写原因")
    if occurred_at < t["shipped_at"]:
        raise invalid("收货时间不能早于发货时间")
    lot = load_lot(conn, t["lot_id"])
    check_compartment(conn, compartment_id, t["to_unit_id"], lot["storage_mode"])
    by_code = packages.carried(conn, transfer_id)
    back: list[str] = []
    if rejected and by_code:
        if not rejected_codes:
            raise Refused(422, "code_count", "该调拨单按码发货，拒收须扫描拒收的码")
        back = packages.codes_for_move(conn, rejected_codes, t["lot_id"], t["from_unit_id"], transfer_id, rejected)
    elif rejected_codes:
        raise invalid("该调拨单未按码发货或无拒收数量，不应扫描拒收码")
    out: dict[str, Any] = {"receipt": None, "rejection": None}
    if accepted:
        out["receipt"] = post(
            conn,
            "transfer_receipt",
            t["to_unit_id"],
            t["lot_id"],
            accepted,
            occurred_at,
            user_id,
            counterparty=t["from_unit_id"],
            transfer=transfer_id,
            compartment=compartment_id,
        )
    if rejected:
        out["rejection"] = post(
            conn,
            "transfer_rejection",
            t["from_unit_id"],
            t["lot_id"],
            rejected,
            occurred_at,
            user_id,
            counterparty=t["to_unit_id"],
            transfer=transfer_id,
            reason=reject_reason,
        )
        if back:
            packages.link(conn, out["rejection"]["id"], packages.canonical(rejected_codes))
    if by_code:
        receipt = out["receipt"]
        packages.arrive(conn, transfer_id, back, t["to_unit_id"], receipt["id"] if receipt is not None else None)
    conn.execute(
        """UPDATE stock_transfers SET state = 'received', received_at = %(at)s, accepted = %(a)s, rejected = %(r)s,
                  reject_reason = %(why)s, version = version + 1 WHERE id = %(id)s""",
        {"at": occurred_at, "a": accepted, "r": rejected, "why": reject_reason, "id": transfer_id},
    )
    return out


def lock(conn: psycopg.Connection, transfer_id: int) -> dict[str, Any] | None:
    """The transfer row, locked until the transaction ends (receipt and reversal change its state)."""
    return fetch_one(conn, "SELECT * FROM stock_transfers WHERE id = %(id)s FOR UPDATE", {"id": transfer_id})


def cancel(conn: psycopg.Connection, transfer_id: int) -> None:
    """The shipment was reversed while in transit: the transfer never happened."""
    conn.execute("UPDATE stock_transfers SET state = 'cancelled', version = version + 1 WHERE id = %s", (transfer_id,))


def reopen(conn: psycopg.Connection, transfer_id: int) -> None:
    """The receipt was reversed: the transfer is in transit again, as if never received."""
    conn.execute(
        """UPDATE stock_transfers SET state = 'in_transit', received_at = NULL, accepted = NULL,
                  rejected = NULL, reject_reason = NULL, version = version + 1 WHERE id = %s""",
        (transfer_id,),
    )


# ---------------------------------------------------------------------------------------------
# Reading transfers back

_TRANSFERS = """
SELECT t.id, t.kind, t.from_unit_id, fu.name AS from_unit_name, t.to_unit_id, tu.name AS to_unit_name, t.lot_id,
       l.lot_no, t.quantity, t.state, t.shipped_at, t.vehicle_compartment_id, t.received_at, t.accepted, t.rejected,
       t.reject_reason, t.version
FROM stock_transfers t JOIN units fu ON fu.id = t.from_unit_id JOIN units tu ON tu.id = t.to_unit_id
JOIN lots l ON l.id = t.lot_id
"""

# Which side of a transfer must be in the jurisdiction, by direction.
_DIRECTION = {
    "in": in_scope("t.to_unit_id"),
    "out": in_scope("t.from_unit_id"),
    "any": f"({in_scope('t.to_unit_id')} OR {in_scope('t.from_unit_id')})",
}


def transfer(conn: psycopg.Connection, transfer_id: int) -> dict[str, Any]:
    """A transfer with its units' and lot's names."""
    row = fetch_one(conn, _TRANSFERS + " WHERE t.id = %(id)s", {"id": transfer_id})
    assert row is not None
    return row


def list_transfers(
    conn: psycopg.Connection,
    scope: int,
    *,
    direction: Literal["in", "out", "any"],
    state: str | None,
    limit: int,
    offset: int,
) -> list[dict[str, Any]]:
    """Transfers into (``in``), out of (``out``) or either side of (``any``) the jurisdiction, newest first."""
    where = Filters({"scope": scope, "limit": limit, "offset": offset}, _DIRECTION[direction]).eq(
        "t.state", "state", state
    )
    return fetch_all(
        conn,
        where.query(
            _TRANSFERS + " WHERE {where} ORDER BY t.shipped_at DESC, t.id DESC LIMIT %(limit)s OFFSET %(offset)s"
        ),
        where.params,
    )


def receiver_of(conn: psycopg.Connection, transfer_id: int) -> int | None:
    """The unit a transfer is addressed to (None: no such transfer)."""
    row = fetch_one(conn, "SELECT to_unit_id FROM stock_transfers WHERE id = %(id)s", {"id": transfer_id})
    return None if row is None else int(row["to_unit_id"])
