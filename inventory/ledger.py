"""Booking stock: receipts with their package codes, transfers through an explicit in-transit state,
approval requests with reservations, counts, the day's usage, vaccinations and reversals.

Every function takes an open connection inside the caller's transaction and books through
``cc_post_movement`` (migration 0006), the single place that locks the balance row and refuses a
movement that would take stock below zero, now or at any instant after a backdated time. Rules about
*who may move what where* are the pure functions of :mod:`inventory.rules`; this module applies them
to rows read from the database, and raises :class:`LedgerError` (or ``RuleError``) with the reason.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, time, timedelta
from typing import Any

import psycopg

from coldchain.core.db import fetch_all, fetch_one
from coldchain.core.terms import BEIJING
from inventory.codes import CodeError, ParsedCode, parse_code, require_serial
from inventory.rules import (
    Node,
    check_not_expired,
    check_receipt_unit,
    check_usage_unit,
    count_differences,
    scrap_route,
    transfer_route,
    vials_needed,
)


class LedgerError(Exception):
    """A refused booking: ``status`` and ``code`` for the API, ``message`` in Chinese for the user."""

    def __init__(self, status: int, code: str, message: str, details: Any = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.details = details


def _not_found(what: str) -> LedgerError:
    return LedgerError(404, "not_found", f"{what}不存在或不在您的辖区内")


# ---------------------------------------------------------------------------------------------
# Reading the tree and the lot

_NODE = """
SELECT u.id, u.level, u.name, u.active,
       coalesce(array_agg(t.ancestor_id ORDER BY t.depth DESC) FILTER (WHERE t.depth > 0), '{}') AS ancestors
FROM units u LEFT JOIN unit_tree t ON t.descendant_id = u.id
WHERE u.id = %(id)s
GROUP BY u.id
"""


def load_node(conn: psycopg.Connection, unit_id: int) -> Node:
    row = fetch_one(conn, _NODE, {"id": unit_id})
    if row is None:
        raise _not_found("单位")
    return Node(row["id"], row["level"], tuple(row["ancestors"]), row["name"], row["active"])


_LOT = """
SELECT l.id, l.lot_no, l.expiry_date, l.production_date, l.spec_id, s.doses_per_vial, s.trace_prefix, s.gtin,
       v.programme, v.storage_mode, v.name AS vaccine_name, s.spec
FROM lots l JOIN vaccine_specs s ON s.id = l.spec_id JOIN vaccines v ON v.id = s.vaccine_id
WHERE l.id = %(id)s
"""


def load_lot(conn: psycopg.Connection, lot_id: int) -> dict[str, Any]:
    row = fetch_one(conn, _LOT, {"id": lot_id})
    if row is None:
        raise _not_found("批号")
    return row


def _day(ts: datetime) -> date:
    return ts.astimezone(BEIJING).date()


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


_POST_ARGS = frozenset(
    {"counterparty", "transfer", "request", "compartment", "reason", "note", "reverses", "supplier", "release"}
)


def _check_compartment(conn: psycopg.Connection, compartment_id: int | None, unit_id: int, mode: str) -> None:
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
        raise LedgerError(422, "invalid", "存放温区不属于本单位")
    if row["status"] != "active":
        raise LedgerError(422, "invalid", "存放温区已停用")
    if row["mode"] != mode:
        raise LedgerError(422, "invalid", "存放温区的温度类型与疫苗储存条件不符（冷藏/冷冻）")


# ---------------------------------------------------------------------------------------------
# Package codes


@dataclass
class Package:
    """A scanned code and what the receipt data says is packed inside it (empty: a single vial)."""

    code: str
    contents: list[Package] = field(default_factory=list)


def _gtin_item(gtin: str) -> str:
    # A case or box carries its own GTIN-14: the same company prefix and item reference with another
    # indicator digit and so another check digit. Digits 2–13 identify the product at every level.
    return gtin[1:13]


def check_code_matches(parsed: ParsedCode, lot: dict[str, Any]) -> None:
    """A code of another product, or whose own lot or expiry disagrees with our lot, is refused."""
    name = f"{lot['vaccine_name']}（{lot['spec']}）"
    if parsed.kind == "cn20":
        if lot["trace_prefix"] is None:
            raise LedgerError(422, "code_mismatch", f"{name}未登记追溯码药品标识码，无法核对此码")
        if parsed.product_key != lot["trace_prefix"]:
            raise LedgerError(
                422,
                "code_mismatch",
                f"追溯码 {parsed.code} 的药品标识码 {parsed.product_key} 不是{name}（应为 {lot['trace_prefix']}）",
            )
        return
    if lot["gtin"] is None:
        raise LedgerError(422, "code_mismatch", f"{name}未登记 GTIN，无法核对此码")
    if _gtin_item(parsed.product_key) != _gtin_item(lot["gtin"]):
        raise LedgerError(
            422, "code_mismatch", f"码 {parsed.code} 的 GTIN {parsed.product_key} 不是{name}（应为 {lot['gtin']}）"
        )
    if parsed.lot_no is not None and parsed.lot_no != lot["lot_no"]:
        raise LedgerError(422, "code_mismatch", f"码中批号 {parsed.lot_no} 与所选批号 {lot['lot_no']} 不符")
    if parsed.expiry is not None and parsed.expiry != lot["expiry_date"]:
        raise LedgerError(
            422, "code_mismatch", f"码中有效期 {parsed.expiry.isoformat()} 与批号有效期 {lot['expiry_date']} 不符"
        )


def parse_scanned(raw: str) -> ParsedCode:
    try:
        return require_serial(parse_code(raw))
    except CodeError as exc:
        raise LedgerError(422, "invalid_code", str(exc)) from exc


def _flatten(packages: Sequence[Package]) -> list[tuple[ParsedCode, str | None, int, int]]:
    """(code, parent code, pack level, vials inside) for every package, parents first."""
    out: list[tuple[ParsedCode, str | None, int, int]] = []

    def walk(p: Package, parent: str | None, depth: int) -> tuple[int, int]:
        if depth > 3:
            raise LedgerError(422, "invalid_code", "包装层级最多 4 层（托→箱→盒→支）")
        parsed = parse_scanned(p.code)
        index = len(out)
        out.append((parsed, parent, 0, 1))
        if not p.contents:
            return 0, 1
        levels, units = zip(*(walk(c, parsed.code, depth + 1) for c in p.contents), strict=True)
        level, total = max(levels) + 1, sum(units)
        out[index] = (parsed, parent, level, total)
        return level, total

    for p in packages:
        walk(p, None, 0)
    return out


def _register_codes(
    conn: psycopg.Connection,
    packages: Sequence[Package],
    lot: dict[str, Any],
    quantity: int,
    unit_id: int,
    movement_id: int,
) -> None:
    flat = _flatten(packages)
    seen: set[str] = set()
    for parsed, _, _, _ in flat:
        if parsed.code in seen:
            raise LedgerError(422, "duplicate_code", f"码 {parsed.code} 在本次入库中重复出现")
        seen.add(parsed.code)
        check_code_matches(parsed, lot)
    vials = sum(units for _, parent, _, units in flat if parent is None)
    if vials != quantity:
        raise LedgerError(422, "code_count", f"扫码数量与入库数量不符：所扫包装共 {vials} 支，入库数量 {quantity} 支")
    known = fetch_all(conn, "SELECT code FROM package_codes WHERE code = ANY(%(codes)s)", {"codes": list(seen)})
    if known:
        first = known[0]["code"]
        raise LedgerError(
            409, "code_already_received", f"码 {first} 已入库过（共 {len(known)} 个码重复），同一码只能入库一次"
        )
    with conn.cursor() as cur:
        cur.executemany(
            """INSERT INTO package_codes (code, kind, lot_id, parent_code, pack_level, units, holder_unit_id,
                                          received_movement_id)
               VALUES (%s, %s, %s, %s, %s, %s, %s, %s)""",
            [
                (p.code, p.kind, lot["id"], parent, level, units, unit_id, movement_id)
                for p, parent, level, units in flat
            ],
        )
        cur.executemany(
            "INSERT INTO movement_codes (movement_id, code) VALUES (%s, %s)",
            [(movement_id, p.code) for p, parent, _, _ in flat if parent is None],
        )


_SUBTREE = """
WITH RECURSIVE sub AS (
    SELECT code, code AS top FROM package_codes WHERE code = ANY(%(codes)s)
    UNION ALL
    SELECT c.code, sub.top FROM package_codes c JOIN sub ON c.parent_code = sub.code
)
SELECT p.code, sub.top, p.lot_id, p.holder_unit_id, p.transfer_id, p.used_at, p.pack_level, p.units,
       p.parent_code
FROM sub JOIN package_codes p ON p.code = sub.code
"""


def _codes_for_move(
    conn: psycopg.Connection, raw_codes: Iterable[str], lot_id: int, holder: int, transfer: int | None, quantity: int
) -> list[str]:
    """Canonical codes that may move ``quantity`` vials of ``lot_id`` away from ``holder``.

    ``transfer`` None: the codes must be on hand (not in transit); otherwise they must be in that
    transfer. A case whose contents were partly taken out cannot move as a case any more."""
    codes = sorted({parse_scanned(c).code for c in raw_codes})
    rows = fetch_all(conn, _SUBTREE + " ORDER BY p.code FOR UPDATE OF p", {"codes": codes})
    tops = {r["code"]: r for r in rows if r["code"] == r["top"]}
    for code in codes:
        top = tops.get(code)
        if top is None:
            raise LedgerError(422, "unknown_code", f"码 {code} 未入库登记")
        if top["lot_id"] != lot_id:
            raise LedgerError(422, "code_mismatch", f"码 {code} 不属于本批号")
    nested = [r["code"] for r in rows if r["code"] != r["top"] and r["code"] in tops]
    if nested:
        raise LedgerError(422, "duplicate_code", f"码 {nested[0]} 已包含在同时扫描的上级包装中")
    for r in rows:
        if r["holder_unit_id"] != holder or r["transfer_id"] != transfer or r["used_at"] is not None:
            where = "已使用" if r["used_at"] is not None else ("在途" if r["transfer_id"] else "不在本单位")
            raise LedgerError(409, "code_not_available", f"码 {r['top']} 中的 {r['code']} {where}，不能整件移动")
    vials = sum(tops[c]["units"] for c in codes)
    if vials != quantity:
        raise LedgerError(422, "code_count", f"扫码数量与数量不符：所扫包装共 {vials} 支，数量 {quantity} 支")
    return [r["code"] for r in rows]


# ---------------------------------------------------------------------------------------------
# Receipts from suppliers


@dataclass
class ReceiptLine:
    lot_id: int
    quantity: int
    compartment_id: int | None = None
    packages: list[Package] = field(default_factory=list)


def receive(
    conn: psycopg.Connection,
    user_id: int,
    unit_id: int,
    lines: Sequence[ReceiptLine],
    occurred_at: datetime,
    supplier: str,
    note: str | None = None,
) -> list[dict[str, Any]]:
    check_receipt_unit(load_node(conn, unit_id))
    out = []
    for line in lines:
        lot = load_lot(conn, line.lot_id)
        check_not_expired("receipt", lot["expiry_date"], _day(occurred_at))
        _check_compartment(conn, line.compartment_id, unit_id, lot["storage_mode"])
        m = post(
            conn,
            "receipt",
            unit_id,
            line.lot_id,
            line.quantity,
            occurred_at,
            user_id,
            supplier=supplier,
            compartment=line.compartment_id,
            note=note,
        )
        if line.packages:
            _register_codes(conn, line.packages, lot, line.quantity, unit_id, m["id"])
        out.append(m)
    return out


# ---------------------------------------------------------------------------------------------
# Transfers: issue (down or sideways) and return (up), in transit until received


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
    lot = load_lot(conn, lot_id)
    if kind == "issue":
        check_not_expired("issue", lot["expiry_date"], _day(occurred_at))
    scanned = sorted({parse_scanned(c).code for c in codes})
    moving = _codes_for_move(conn, scanned, lot_id, src, None, quantity) if codes else []
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
        conn.execute("UPDATE package_codes SET transfer_id = %s WHERE code = ANY(%s)", (transfer["id"], moving))
        conn.execute(
            "INSERT INTO movement_codes (movement_id, code) SELECT %s, unnest(%s::text[])",
            (m["id"], scanned),
        )
    transfer["movement"] = m
    return transfer


def transfer_directly(
    conn: psycopg.Connection,
    user_id: int,
    src: int,
    dst: int,
    lot_id: int,
    quantity: int,
    occurred_at: datetime,
    *,
    codes: Sequence[str] = (),
    vehicle_compartment_id: int | None = None,
    note: str | None = None,
    reason: str | None = None,
) -> dict[str, Any]:
    """Ship at once when the rules allow it, else open a request for the approving unit."""
    route = transfer_route(load_node(conn, src), load_node(conn, dst))
    if route.needs_approval:
        assert route.approver is not None
        return {
            "request": open_request(
                conn, user_id, route.kind, src, dst, lot_id, quantity, route.approver, reason or note
            )
        }
    return {
        "transfer": ship(
            conn,
            user_id,
            route.kind,
            src,
            dst,
            lot_id,
            quantity,
            occurred_at,
            codes=codes,
            vehicle_compartment_id=vehicle_compartment_id,
            note=note,
        )
    }


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
    t = fetch_one(conn, "SELECT * FROM stock_transfers WHERE id = %(id)s FOR UPDATE", {"id": transfer_id})
    if t is None:
        raise _not_found("调拨单")
    if t["state"] != "in_transit":
        raise LedgerError(409, "not_in_transit", "该调拨单已收货或已撤销")
    if accepted + rejected != t["quantity"]:
        raise LedgerError(422, "quantity_mismatch", f"实收 {accepted} + 拒收 {rejected} 应等于发货数量 {t['quantity']}")
    if rejected and not reject_reason:
        raise LedgerError(422, "invalid", "拒收须填写原因")
    if occurred_at < t["shipped_at"]:
        raise LedgerError(422, "invalid", "收货时间不能早于发货时间")
    lot = load_lot(conn, t["lot_id"])
    _check_compartment(conn, compartment_id, t["to_unit_id"], lot["storage_mode"])
    carried = fetch_all(conn, "SELECT code FROM package_codes WHERE transfer_id = %(t)s", {"t": transfer_id})
    back: list[str] = []
    if rejected and carried:
        if not rejected_codes:
            raise LedgerError(422, "code_count", "该调拨单按码发货，拒收须扫描拒收的码")
        back = _codes_for_move(conn, rejected_codes, t["lot_id"], t["from_unit_id"], transfer_id, rejected)
    elif rejected_codes:
        raise LedgerError(422, "invalid", "该调拨单未按码发货或无拒收数量，不应扫描拒收码")
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
            conn.execute(
                "INSERT INTO movement_codes (movement_id, code) SELECT %s, unnest(%s::text[])",
                (out["rejection"]["id"], sorted({parse_scanned(c).code for c in rejected_codes})),
            )
    if carried:
        conn.execute(
            """UPDATE package_codes SET holder_unit_id = CASE WHEN code = ANY(%(back)s) THEN holder_unit_id
                                                          ELSE %(dst)s END,
                                        transfer_id = NULL
               WHERE transfer_id = %(t)s""",
            {"back": back, "dst": t["to_unit_id"], "t": transfer_id},
        )
        if out["receipt"] is not None:
            conn.execute(
                """INSERT INTO movement_codes (movement_id, code)
                   SELECT %(m)s, mc.code FROM movement_codes mc JOIN stock_movements s ON s.id = mc.movement_id
                   WHERE s.transfer_id = %(t)s AND s.kind IN ('issue', 'return')
                     AND NOT mc.code = ANY(%(back)s)""",
                {"m": out["receipt"]["id"], "t": transfer_id, "back": back},
            )
    conn.execute(
        """UPDATE stock_transfers SET state = 'received', received_at = %(at)s, accepted = %(a)s, rejected = %(r)s,
                  reject_reason = %(why)s, version = version + 1 WHERE id = %(id)s""",
        {"at": occurred_at, "a": accepted, "r": rejected, "why": reject_reason, "id": transfer_id},
    )
    return out


# ---------------------------------------------------------------------------------------------
# Requests that wait for the level above (VT8, VT10): the quantity is reserved meanwhile


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


def request_scrap(
    conn: psycopg.Connection,
    user_id: int,
    unit_id: int,
    lot_id: int,
    quantity: int,
    reason: str,
    note: str | None,
    occurred_at: datetime,
) -> dict[str, Any]:
    """Scrap with approval (VT10), or booked at once by the province, which has no level above."""
    route = scrap_route(load_node(conn, unit_id))
    if route.approver is None:
        return {
            "movement": post(conn, "scrap", unit_id, lot_id, -quantity, occurred_at, user_id, reason=reason, note=note)
        }
    text = reason if not note else f"{reason}：{note}"
    return {"request": open_request(conn, user_id, "scrap", unit_id, None, lot_id, quantity, route.approver, text)}


def decide_request(
    conn: psycopg.Connection, user_id: int, request_id: int, approve: bool, note: str | None, occurred_at: datetime
) -> dict[str, Any]:
    """Approval books the movement with the reserved quantity; refusal releases the reservation."""
    r = fetch_one(conn, "SELECT * FROM stock_requests WHERE id = %(id)s FOR UPDATE", {"id": request_id})
    if r is None:
        raise _not_found("申请")
    if r["state"] != "pending":
        raise LedgerError(409, "already_decided", "该申请已处理")
    transfer_id = None
    if not approve:
        conn.execute("SELECT cc_release(%s, %s, %s)", (r["unit_id"], r["lot_id"], r["quantity"]))
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
    r = fetch_one(conn, "SELECT * FROM stock_requests WHERE id = %(id)s FOR UPDATE", {"id": request_id})
    if r is None:
        raise _not_found("申请")
    if r["state"] != "pending":
        raise LedgerError(409, "already_decided", "该申请已处理，不能撤回")
    conn.execute("SELECT cc_release(%s, %s, %s)", (r["unit_id"], r["lot_id"], r["quantity"]))
    row = fetch_one(
        conn,
        """UPDATE stock_requests SET state = 'cancelled', decided_by = %(user)s, decided_at = now(),
                  version = version + 1 WHERE id = %(id)s RETURNING *""",
        {"user": user_id, "id": request_id},
    )
    assert row is not None
    return row


# ---------------------------------------------------------------------------------------------
# Counts, day usage, vaccinations, reversals


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
        raise LedgerError(
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


def end_of_day(day: date, now: datetime) -> datetime:
    """The instant a day's usage is booked at: that day's end in China, or now if the day is today."""
    end = datetime.combine(day + timedelta(days=1), time(0), BEIJING) - timedelta(seconds=1)
    return min(end, now)


def book_day_usage(
    conn: psycopg.Connection, user_id: int, unit_id: int, day: date, lines: dict[int, int], now: datetime
) -> list[dict[str, Any]]:
    """The end-of-day usage booking (VT7): never fewer vials than the day's recorded doses need."""
    check_usage_unit(load_node(conn, unit_id))
    if day > now.astimezone(BEIJING).date():
        raise LedgerError(422, "invalid", "不能登记未来日期的使用")
    at = end_of_day(day, now)
    start = datetime.combine(day, time(0), BEIJING)
    out = []
    for lot_id, vials in sorted(lines.items()):
        lot = load_lot(conn, lot_id)
        check_not_expired("usage", lot["expiry_date"], day)
        done = fetch_one(
            conn,
            """SELECT (SELECT count(*) FROM vaccinations WHERE unit_id = %(u)s AND lot_id = %(l)s
                         AND vaccinated_at >= %(s)s AND vaccinated_at < %(e)s) AS doses,
                      (SELECT coalesce(-sum(quantity), 0) FROM stock_movements WHERE unit_id = %(u)s AND lot_id = %(l)s
                         AND kind = 'usage' AND occurred_at >= %(s)s AND occurred_at < %(e)s) AS booked""",
            {"u": unit_id, "l": lot_id, "s": start, "e": start + timedelta(days=1)},
        )
        assert done is not None
        need = vials_needed(done["doses"], lot["doses_per_vial"])
        if done["booked"] + vials < need:
            raise LedgerError(
                422,
                "usage_below_doses",
                f"批号 {lot['lot_no']} 当日接种 {done['doses']} 人次，至少需使用 {need} 支，"
                f"已登记 {done['booked']} 支，本次 {vials} 支",
            )
        out.append(post(conn, "usage", unit_id, lot_id, -vials, at, user_id, note=f"{day.isoformat()} 接种使用"))
    return out


_ID_NUMBER = re.compile(r"^\d{17}[\dXx]$|^\d{15}$")
_PHONE = re.compile(r"^1\d{10}$")


def check_vaccinee_ref(ref: str) -> None:
    """The ledger may reach the person but must not hold who they are (VT1 without personal data)."""
    if _ID_NUMBER.match(ref):
        raise LedgerError(422, "personal_data", "受种者编号看起来是身份证号：台账只接收接种信息系统的化名编号")
    if _PHONE.match(ref):
        raise LedgerError(422, "personal_data", "受种者编号看起来是手机号：台账只接收接种信息系统的化名编号")


def record_vaccination(
    conn: psycopg.Connection,
    user_id: int,
    unit_id: int,
    vaccinated_at: datetime,
    vaccinee_ref: str,
    *,
    lot_id: int | None = None,
    code: str | None = None,
    dose_no: int | None = None,
) -> dict[str, Any]:
    check_vaccinee_ref(vaccinee_ref)
    check_usage_unit(load_node(conn, unit_id))
    canonical = None
    if code is not None:
        canonical = parse_scanned(code).code
        c = fetch_one(conn, "SELECT * FROM package_codes WHERE code = %(c)s FOR UPDATE", {"c": canonical})
        if c is None:
            raise LedgerError(422, "unknown_code", f"码 {canonical} 未入库登记")
        if lot_id is not None and lot_id != c["lot_id"]:
            raise LedgerError(422, "code_mismatch", "码与所填批号不符")
        if c["pack_level"] != 0:
            raise LedgerError(422, "invalid_code", "接种须扫描最小包装（支/瓶）上的码，不能扫描箱码或盒码")
        if c["holder_unit_id"] != unit_id or c["transfer_id"] is not None:
            raise LedgerError(409, "code_not_available", f"码 {canonical} 不在本单位")
        if c["used_at"] is not None:
            raise LedgerError(409, "code_used", f"码 {canonical} 已于 {c['used_at']:%Y-%m-%d} 用于接种")
        lot_id = c["lot_id"]
        conn.execute("UPDATE package_codes SET used_at = %s WHERE code = %s", (vaccinated_at, canonical))
    if lot_id is None:
        raise LedgerError(422, "invalid", "须提供批号或扫描疫苗码")
    lot = load_lot(conn, lot_id)
    check_not_expired("vaccination", lot["expiry_date"], _day(vaccinated_at))
    held = fetch_one(
        conn, "SELECT 1 FROM stock_balances WHERE unit_id = %(u)s AND lot_id = %(l)s", {"u": unit_id, "l": lot_id}
    )
    if held is None:
        raise LedgerError(422, "not_held", f"本单位从未入库批号 {lot['lot_no']}")
    row = fetch_one(
        conn,
        """INSERT INTO vaccinations (unit_id, lot_id, code, vaccinated_at, vaccinee_ref, dose_no, recorded_by)
           VALUES (%(u)s, %(l)s, %(c)s, %(at)s, %(ref)s, %(dose)s, %(user)s) RETURNING *""",
        {
            "u": unit_id,
            "l": lot_id,
            "c": canonical,
            "at": vaccinated_at,
            "ref": vaccinee_ref,
            "dose": dose_no,
            "user": user_id,
        },
    )
    assert row is not None
    return row


_REVERSIBLE = {"receipt", "issue", "return", "transfer_receipt", "usage", "scrap", "adjustment"}


def reverse(
    conn: psycopg.Connection, user_id: int, movement_id: int, reason: str, now: datetime
) -> list[dict[str, Any]]:
    """A mistake is undone by a linked reversing movement, at most once, never by an edit.

    Undoing one leg of a transfer undoes the transfer state with it: reversing the issue of a
    transfer still in transit cancels it; reversing its receipt puts it back in transit (and reverses
    the rejection booked with it), so stock is never counted in two places."""
    m = fetch_one(conn, "SELECT * FROM cc_lock_movement(%(id)s)", {"id": movement_id})
    if m is None:
        raise _not_found("台账记录")
    if m["kind"] not in _REVERSIBLE:
        raise LedgerError(409, "not_reversible", "冲销记录和拒收退回记录不能再冲销")
    if fetch_one(conn, "SELECT 1 FROM stock_movements WHERE reverses_id = %(id)s", {"id": movement_id}):
        raise LedgerError(409, "already_reversed", f"单据 {m['doc_no']} 已冲销过，每条记录最多冲销一次")
    if m["kind"] == "receipt" and fetch_one(
        conn, "SELECT 1 FROM movement_codes WHERE movement_id = %(m)s", {"m": m["id"]}
    ):
        raise LedgerError(409, "not_reversible", "按码入库的记录不能冲销：码已登记，请联系省级处理")
    targets = [m]
    if m["transfer_id"] is not None:
        t = fetch_one(conn, "SELECT * FROM stock_transfers WHERE id = %(id)s FOR UPDATE", {"id": m["transfer_id"]})
        assert t is not None
        if m["kind"] in {"issue", "return"}:
            if t["state"] != "in_transit":
                raise LedgerError(409, "not_reversible", "该调拨已收货：请先由收货单位冲销收货记录")
            if fetch_one(conn, "SELECT 1 FROM package_codes WHERE transfer_id = %(t)s", {"t": t["id"]}):
                conn.execute("UPDATE package_codes SET transfer_id = NULL WHERE transfer_id = %s", (t["id"],))
            conn.execute(
                "UPDATE stock_transfers SET state = 'cancelled', version = version + 1 WHERE id = %s", (t["id"],)
            )
        else:  # transfer_receipt
            moved_on = fetch_one(
                conn,
                """SELECT code FROM package_codes
                   WHERE code IN (SELECT code FROM movement_codes WHERE movement_id = %(m)s)
                     AND (holder_unit_id <> %(u)s OR transfer_id IS NOT NULL OR used_at IS NOT NULL) LIMIT 1""",
                {"m": m["id"], "u": m["unit_id"]},
            )
            if moved_on is not None:
                raise LedgerError(
                    409, "not_reversible", f"本次收货的码 {moved_on['code']} 已再次出库或使用，不能冲销收货"
                )
            if fetch_one(conn, "SELECT 1 FROM movement_codes WHERE movement_id = %(m)s", {"m": m["id"]}):
                conn.execute(
                    """UPDATE package_codes SET holder_unit_id = %(src)s, transfer_id = %(t)s
                       WHERE code IN (SELECT code FROM movement_codes WHERE movement_id = %(m)s)""",
                    {"src": t["from_unit_id"], "t": t["id"], "m": m["id"]},
                )
            rejection = fetch_one(
                conn,
                """SELECT * FROM stock_movements WHERE transfer_id = %(t)s AND kind = 'transfer_rejection'
                   AND NOT EXISTS (SELECT 1 FROM stock_movements r WHERE r.reverses_id = stock_movements.id)""",
                {"t": t["id"]},
            )
            if rejection is not None:
                targets.append(rejection)
            conn.execute(
                """UPDATE stock_transfers SET state = 'in_transit', received_at = NULL, accepted = NULL,
                          rejected = NULL, reject_reason = NULL, version = version + 1 WHERE id = %s""",
                (t["id"],),
            )
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
