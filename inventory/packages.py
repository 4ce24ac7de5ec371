"""Package codes in the ledger: which scanned package (pallet → case → box → vial) a unit holds,
which transfer carries it, which vial went into which vaccination.

Why a module of its own: the bookings (receipts, transfers, reversals, vaccinations) each move
codes, and the codes must move exactly as the stock does; every read and write of
``package_codes`` and ``movement_codes`` is here so that the rules of a code's life — received
once, moved whole, used once — are stated once. Parsing a scan is :mod:`inventory.codes` (pure).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import psycopg

from coldchain.core.db import fetch_all, fetch_one
from coldchain.core.errors import Refused, conflict
from inventory.codes import CodeError, ParsedCode, parse_code, require_serial


@dataclass
class Package:
    """A scanned code and what the receipt data says is packed inside it (empty: a single vial)."""

    code: str
    contents: list[Package] = field(default_factory=list)


def parse_scanned(raw: str) -> ParsedCode:
    """A scan that identifies one package, or 422 ``invalid_code`` with the parser's words."""
    try:
        return require_serial(parse_code(raw))
    except CodeError as exc:
        raise Refused(422, "invalid_code", str(exc)) from exc


def canonical(raw_codes: Iterable[str]) -> list[str]:
    """The scanned codes in their canonical form, once each and sorted."""
    return sorted({parse_scanned(c).code for c in raw_codes})


def _gtin_item(gtin: str) -> str:
    # A case or box carries its own GTIN-14: the same company prefix and item reference with another
    # indicator digit and so another check digit. Digits 2–13 identify the product at every level.
    return gtin[1:13]


def check_code_matches(parsed: ParsedCode, lot: dict[str, Any]) -> None:
    """A code of another product, or whose own lot or expiry disagrees with our lot, is refused."""
    name = f"{lot['vaccine_name']}（{lot['spec']}）"
    if parsed.kind == "cn20":
        if lot["trace_prefix"] is None:
            raise Refused(422, "code_mismatch", f"{name}未登记追溯码药品标识码，无法核对此码")
        if parsed.product_key != lot["trace_prefix"]:
            raise Refused(
                422,
                "code_mismatch",
                f"追溯码 {parsed.code} 的药品标识码 {parsed.product_key} 不是{name}（应为 {lot['trace_prefix']}）",
            )
        return
    if lot["gtin"] is None:
        raise Refused(422, "code_mismatch", f"{name}未登记 GTIN，无法核对此码")
    if _gtin_item(parsed.product_key) != _gtin_item(lot["gtin"]):
        raise Refused(
            422, "code_mismatch", f"码 {parsed.code} 的 GTIN {parsed.product_key} 不是{name}（应为 {lot['gtin']}）"
        )
    if parsed.lot_no is not None and parsed.lot_no != lot["lot_no"]:
        raise Refused(422, "code_mismatch", f"码中批号 {parsed.lot_no} 与所选批号 {lot['lot_no']} 不符")
    if parsed.expiry is not None and parsed.expiry != lot["expiry_date"]:
        raise Refused(
            422, "code_mismatch", f"码中有效期 {parsed.expiry.isoformat()} 与批号有效期 {lot['expiry_date']} 不符"
        )


def _flatten(packages: Sequence[Package]) -> list[tuple[ParsedCode, str | None, int, int]]:
    """(code, parent code, pack level, vials inside) for every package, parents first."""
    out: list[tuple[ParsedCode, str | None, int, int]] = []

    def walk(p: Package, parent: str | None, depth: int) -> tuple[int, int]:
        if depth > 3:
            raise Refused(422, "invalid_code", "包装层级最多 4 层（托→箱→盒→支）")
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


def register(
    conn: psycopg.Connection,
    packages: Sequence[Package],
    lot: dict[str, Any],
    quantity: int,
    unit_id: int,
    movement_id: int,
) -> None:
    """The codes of a receipt: each of this lot's product, received once, adding up to the quantity."""
    flat = _flatten(packages)
    seen: set[str] = set()
    for parsed, _, _, _ in flat:
        if parsed.code in seen:
            raise Refused(422, "duplicate_code", f"码 {parsed.code} 在本次入库中重复出现")
        seen.add(parsed.code)
        check_code_matches(parsed, lot)
    vials = sum(units for _, parent, _, units in flat if parent is None)
    if vials != quantity:
        raise Refused(422, "code_count", f"扫码数量与入库数量不符：所扫包装共 {vials} 支，入库数量 {quantity} 支")
    known = fetch_all(conn, "SELECT code FROM package_codes WHERE code = ANY(%(codes)s)", {"codes": list(seen)})
    if known:
        first = known[0]["code"]
        raise conflict("code_already_received", f"码 {first} 已入库过（共 {len(known)} 个码重复），同一码只能入库一次")
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


def codes_for_move(
    conn: psycopg.Connection, raw_codes: Iterable[str], lot_id: int, holder: int, transfer: int | None, quantity: int
) -> list[str]:
    """Canonical codes that may move ``quantity`` vials of ``lot_id`` away from ``holder``.

    ``transfer`` None: the codes must be on hand (not in transit); otherwise they must be in that
    transfer. A case whose contents were partly taken out cannot move as a case any more."""
    codes = canonical(raw_codes)
    rows = fetch_all(conn, _SUBTREE + " ORDER BY p.code FOR UPDATE OF p", {"codes": codes})
    tops = {r["code"]: r for r in rows if r["code"] == r["top"]}
    for code in codes:
        top = tops.get(code)
        if top is None:
            raise Refused(422, "unknown_code", f"码 {code} 未入库登记")
        if top["lot_id"] != lot_id:
            raise Refused(422, "code_mismatch", f"码 {code} 不属于本批号")
    nested = [r["code"] for r in rows if r["code"] != r["top"] and r["code"] in tops]
    if nested:
        raise Refused(422, "duplicate_code", f"码 {nested[0]} 已包含在同时扫描的上级包装中")
    for r in rows:
        if r["holder_unit_id"] != holder or r["transfer_id"] != transfer or r["used_at"] is not None:
            where = "已使用" if r["used_at"] is not None else ("在途" if r["transfer_id"] else "不在本单位")
            raise conflict("code_not_available", f"码 {r['top']} 中的 {r['code']} {where}，不能整件移动")
    vials = sum(tops[c]["units"] for c in codes)
    if vials != quantity:
        raise Refused(422, "code_count", f"扫码数量与数量不符：所扫包装共 {vials} 支，数量 {quantity} 支")
    return [r["code"] for r in rows]


def link(conn: psycopg.Connection, movement_id: int, codes: Sequence[str]) -> None:
    """Record which packages (canonical codes) a movement moved."""
    conn.execute(
        "INSERT INTO movement_codes (movement_id, code) SELECT %s, unnest(%s::text[])", (movement_id, list(codes))
    )


def send(conn: psycopg.Connection, transfer_id: int, codes: Sequence[str]) -> None:
    """Put packages (and everything inside them) in transit with a transfer."""
    conn.execute("UPDATE package_codes SET transfer_id = %s WHERE code = ANY(%s)", (transfer_id, list(codes)))


def carried(conn: psycopg.Connection, transfer_id: int) -> bool:
    """Whether the transfer was shipped by code."""
    return bool(fetch_all(conn, "SELECT code FROM package_codes WHERE transfer_id = %(t)s", {"t": transfer_id}))


def arrive(
    conn: psycopg.Connection, transfer_id: int, back: Sequence[str], receiver: int, receipt_id: int | None
) -> None:
    """A transfer's packages leave transit: the refused ones (``back``) stay with the sender, the rest
    now belong to the receiver, and the receipt movement records the top-level ones it took in."""
    conn.execute(
        """UPDATE package_codes SET holder_unit_id = CASE WHEN code = ANY(%(back)s) THEN holder_unit_id
                                                      ELSE %(dst)s END,
                                    transfer_id = NULL
           WHERE transfer_id = %(t)s""",
        {"back": list(back), "dst": receiver, "t": transfer_id},
    )
    if receipt_id is not None:
        conn.execute(
            """INSERT INTO movement_codes (movement_id, code)
               SELECT %(m)s, mc.code FROM movement_codes mc JOIN stock_movements s ON s.id = mc.movement_id
               WHERE s.transfer_id = %(t)s AND s.kind IN ('issue', 'return')
                 AND NOT mc.code = ANY(%(back)s)""",
            {"m": receipt_id, "t": transfer_id, "back": list(back)},
        )


def moved_codes(conn: psycopg.Connection, movement_id: int) -> bool:
    """Whether a movement moved packages by code."""
    return fetch_one(conn, "SELECT 1 FROM movement_codes WHERE movement_id = %(m)s", {"m": movement_id}) is not None


def cancel_transit(conn: psycopg.Connection, transfer_id: int) -> None:
    """A cancelled transfer's packages are back on the sender's shelf."""
    if fetch_one(conn, "SELECT 1 FROM package_codes WHERE transfer_id = %(t)s", {"t": transfer_id}):
        conn.execute("UPDATE package_codes SET transfer_id = NULL WHERE transfer_id = %s", (transfer_id,))


def moved_on(conn: psycopg.Connection, movement_id: int, unit_id: int) -> str | None:
    """A package a receipt took in that has since left ``unit_id``, been shipped or used, if any."""
    row = fetch_one(
        conn,
        """SELECT code FROM package_codes
           WHERE code IN (SELECT code FROM movement_codes WHERE movement_id = %(m)s)
             AND (holder_unit_id <> %(u)s OR transfer_id IS NOT NULL OR used_at IS NOT NULL) LIMIT 1""",
        {"m": movement_id, "u": unit_id},
    )
    return None if row is None else str(row["code"])


def back_in_transit(conn: psycopg.Connection, movement_id: int, sender: int, transfer_id: int) -> None:
    """The packages of a reversed receipt are in transit again, still the sender's."""
    if moved_codes(conn, movement_id):
        conn.execute(
            """UPDATE package_codes SET holder_unit_id = %(src)s, transfer_id = %(t)s
               WHERE code IN (SELECT code FROM movement_codes WHERE movement_id = %(m)s)""",
            {"src": sender, "t": transfer_id, "m": movement_id},
        )


def use_vial(
    conn: psycopg.Connection, raw_code: str, unit_id: int, lot_id: int | None, at: datetime
) -> tuple[str, int]:
    """Mark a scanned vial used at ``at``: a registered single vial, held here, used once.

    Returns its canonical code and its lot."""
    code = parse_scanned(raw_code).code
    c = fetch_one(conn, "SELECT * FROM package_codes WHERE code = %(c)s FOR UPDATE", {"c": code})
    if c is None:
        raise Refused(422, "unknown_code", f"码 {code} 未入库登记")
    if lot_id is not None and lot_id != c["lot_id"]:
        raise Refused(422, "code_mismatch", "码与所填批号不符")
    if c["pack_level"] != 0:
        raise Refused(422, "invalid_code", "接种须扫描最小包装（支/瓶）上的码，不能扫描箱码或盒码")
    if c["holder_unit_id"] != unit_id or c["transfer_id"] is not None:
        raise conflict("code_not_available", f"码 {code} 不在本单位")
    if c["used_at"] is not None:
        raise conflict("code_used", f"码 {code} 已于 {c['used_at']:%Y-%m-%d} 用于接种")
    conn.execute("UPDATE package_codes SET used_at = %s WHERE code = %s", (at, code))
    return code, int(c["lot_id"])


def package(conn: psycopg.Connection, code: str) -> dict[str, Any] | None:
    """A registered package by its canonical code: lot, holder, transfer, use, level."""
    return fetch_one(conn, "SELECT * FROM package_codes WHERE code = %(c)s", {"c": code})
