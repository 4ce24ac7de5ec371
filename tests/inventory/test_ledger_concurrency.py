"""Many concurrent issues, transfers, requests, approvals and receipts against one balance: the stock
of the lot is conserved across all units and transit, no balance or reservation ever goes below zero,
and every refusal is the ledger saying "not enough stock", never a lost or doubled update.

The bookings run through the inventory domain's booking modules on their own connections and transactions, as the
API's worker threads do, so the races are the database's real ones.
"""

from __future__ import annotations

import random
import threading
from collections import Counter
from datetime import UTC, datetime
from typing import Any

import psycopg
from apihelp import World
from ledgerhelp import Catalogue, build_catalogue

from coldchain.core import db
from coldchain.core.errors import Refused
from inventory import outgoing, receipts, requests, transfers

START = 1000


def test_concurrent_bookings_conserve_stock_and_never_go_negative(world: World) -> None:
    cat: Catalogue = build_catalogue(world)
    lot = cat.lots["hepb"]
    u, users = world.units, world.users
    now = datetime.now(UTC)
    with db.connect(world.url) as conn:
        receipts.receive(conn, users["ba_P"], u["C1"], [receipts.ReceiptLine(lot, START)], now, "配送中心")
        conn.commit()

    outcomes: Counter[str] = Counter()
    lock = threading.Lock()
    errors: list[BaseException] = []

    def attempt(op: Any) -> None:
        for _ in range(20):  # a deadlock victim retries, as a client would
            try:
                with db.connect(world.url) as conn:
                    result = op(conn)
                    conn.commit()
                with lock:
                    outcomes[result] += 1
                return
            except psycopg.errors.DeadlockDetected:
                continue
            except psycopg.Error as exc:
                if exc.sqlstate == "CC001":
                    with lock:
                        outcomes["insufficient"] += 1
                    return
                raise
            except Refused as exc:
                with lock:
                    outcomes[exc.code] += 1
                return
        raise AssertionError("20 deadlocks in a row")

    def issue_down(conn: psycopg.Connection) -> str:
        dst = random.choice([u["K1"], u["T1"]])
        outgoing.transfer_directly(conn, users["ba_C1"], u["C1"], dst, lot, random.randint(5, 40), datetime.now(UTC))
        return "issued"

    def request_sideways(conn: psycopg.Connection) -> str:
        outgoing.transfer_directly(
            conn, users["ba_C1"], u["C1"], u["C2"], lot, random.randint(5, 40), datetime.now(UTC), reason="调剂"
        )
        return "requested"

    def decide_one(conn: psycopg.Connection) -> str:
        row = conn.execute(
            "SELECT id FROM stock_requests WHERE state = 'pending' ORDER BY random() LIMIT 1 FOR UPDATE SKIP LOCKED"
        ).fetchone()
        if row is None:
            return "nothing_to_decide"
        approve = random.random() < 0.7
        requests.decide_request(conn, users["ba_P"], row[0], approve, None if approve else "不同意", datetime.now(UTC))
        return "approved" if approve else "refused"

    def receive_one(conn: psycopg.Connection) -> str:
        row = conn.execute(
            "SELECT id, to_unit_id, quantity FROM stock_transfers WHERE state = 'in_transit' "
            "ORDER BY random() LIMIT 1 FOR UPDATE SKIP LOCKED"
        ).fetchone()
        if row is None:
            return "nothing_to_receive"
        rejected = random.choice([0, 0, 1])
        receiver = {u[k]: f"ba_{k}" for k in ("C1", "K1", "T1", "C2")}[row[1]]
        transfers.receive_transfer(
            conn,
            users[receiver],
            row[0],
            row[2] - rejected,
            rejected,
            datetime.now(UTC),
            reject_reason="破损" if rejected else None,
        )
        return "received"

    def k1_returns(conn: psycopg.Connection) -> str:
        outgoing.transfer_directly(
            conn, users["ba_K1"], u["K1"], u["C1"], lot, random.randint(1, 10), datetime.now(UTC), reason="退回"
        )
        return "return_requested"

    ops = [issue_down] * 30 + [request_sideways] * 30 + [decide_one] * 30 + [receive_one] * 40 + [k1_returns] * 10
    random.Random(6).shuffle(ops)
    barrier = threading.Barrier(8)

    def worker(chunk: list[Any]) -> None:
        try:
            barrier.wait()
            for op in chunk:
                attempt(op)
        except BaseException as exc:  # surfaced below: a thread's failure must fail the test
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(ops[i::8],)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not errors, errors
    assert outcomes["issued"] > 0 and outcomes["approved"] > 0 and outcomes["received"] > 0, outcomes
    assert outcomes["insufficient"] > 0, f"the test must actually exhaust the balance: {outcomes}"

    with db.connect(world.url) as conn:
        held, reserved, negative = conn.execute(
            """SELECT sum(on_hand), sum(reserved), count(*) FILTER (WHERE on_hand < 0 OR reserved < 0
                                                                        OR reserved > on_hand)
               FROM stock_balances WHERE lot_id = %s""",
            (lot,),
        ).fetchone() or (None, None, None)
        in_transit = conn.execute(
            "SELECT coalesce(sum(quantity), 0) FROM stock_transfers WHERE lot_id = %s AND state = 'in_transit'",
            (lot,),
        ).fetchone()
        pending = conn.execute(
            "SELECT coalesce(sum(quantity), 0) FROM stock_requests WHERE lot_id = %s AND state = 'pending'", (lot,)
        ).fetchone()
        mismatched = conn.execute(
            """SELECT count(*) FROM stock_balances b
               WHERE b.lot_id = %s AND b.on_hand <> (SELECT coalesce(sum(quantity), 0) FROM stock_movements m
                                                     WHERE m.unit_id = b.unit_id AND m.lot_id = b.lot_id)""",
            (lot,),
        ).fetchone()
    assert negative == 0
    assert in_transit is not None and pending is not None and mismatched is not None
    assert held + in_transit[0] == START  # conserved: nothing used or scrapped here
    assert reserved == pending[0]  # every reservation belongs to a pending request, and vice versa
    assert mismatched[0] == 0  # every balance is the sum of its movements
