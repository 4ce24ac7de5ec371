"""Demo vaccine catalogue and a month of ledger history on top of the demo province, so that the
ledger, trace and analysis routes have something to show after ``./dev run``.

Everything is booked through the inventory domain exactly as users book it (receipts, transfers
down the tree received into a compartment, vaccinations and the day's usage), backdated over the
last month; nothing is written into the ledger tables directly. Product codes, GTINs and lot numbers
are made up; names and specifications follow the national immunisation programme.
"""

from __future__ import annotations

import random
from datetime import UTC, date, datetime, timedelta
from typing import Any

import psycopg

from coldchain.core.db import connect, fetch_all, fetch_one
from coldchain.core.terms import BEIJING
from inventory import receipts, transfers, usage
from inventory.codes import gtin_check_digit
from inventory.lots import load_lot
from inventory.rules import vials_needed

# category, vaccine, programme, spec, doses per vial, reference wastage, 7-digit product identifier
CATALOGUE = [
    ("乙肝疫苗", "重组乙型肝炎疫苗（酿酒酵母）", True, "10μg/0.5mL/支", 1, 1.05, "8610001"),
    ("卡介苗", "皮内注射用卡介苗", True, "0.5mg/瓶（5人份）", 5, 2.50, "8610002"),
    ("脊灰疫苗", "二价脊灰减毒活疫苗（人二倍体细胞）", True, "1.0mL/瓶（10人份）", 10, 1.33, "8610003"),
    ("百白破疫苗", "吸附无细胞百白破联合疫苗", True, "0.5mL/支", 1, 1.05, "8610004"),
    ("麻腮风疫苗", "麻腮风联合减毒活疫苗", True, "0.5mL/瓶", 1, 1.05, "8610005"),
    ("乙脑疫苗", "乙型脑炎减毒活疫苗", True, "0.5mL/瓶", 1, 1.05, "8610006"),
    ("流感疫苗", "四价流感病毒裂解疫苗", False, "0.5mL/支", 1, 1.05, "8690001"),
]
MANUFACTURER = "演示生物制品有限公司"


def load_vaccines(url: str, seed: int = 20200106, now: datetime | None = None) -> dict[str, int]:
    """Catalogue, lots and a month of bookings; returns counts of what was booked."""
    rng = random.Random(seed)
    now = now or datetime.now(UTC)
    start = now - timedelta(days=30)
    with connect(url, application="coldchain-seed") as conn:
        if fetch_one(conn, "SELECT 1 FROM vaccine_specs LIMIT 1") is not None:
            raise RuntimeError("疫苗目录已有数据，演示台账只能载入空目录")
        province = fetch_one(conn, "SELECT id FROM units WHERE level = 'province'")
        if province is None:
            raise RuntimeError("请先载入演示省份")
        writer = _writers(conn)
        store = _stores(conn)
        manufacturer = _one(conn, "INSERT INTO manufacturers (name) VALUES (%s) RETURNING id", (MANUFACTURER,))
        lots: list[int] = []
        for i, (category, name, programme, spec, doses, ref, prefix) in enumerate(CATALOGUE):
            cat = _one(conn, "INSERT INTO vaccine_categories (name) VALUES (%s) RETURNING id", (category,))
            vaccine = _one(
                conn,
                "INSERT INTO vaccines (category_id, name, programme) VALUES (%s, %s, %s) RETURNING id",
                (cat, name, programme),
            )
            body = f"069{i + 1:09d}0"[:13]
            spec_id = _one(
                conn,
                """INSERT INTO vaccine_specs (vaccine_id, manufacturer_id, spec, doses_per_vial, ref_wastage,
                                              trace_prefix, gtin, tender_year)
                   VALUES (%s, %s, %s, %s, %s, %s, %s, %s) RETURNING id""",
                (vaccine, manufacturer, spec, doses, ref, prefix, body + str(gtin_check_digit(body)), now.year),
            )
            lots.append(
                _one(
                    conn,
                    """INSERT INTO lots (spec_id, lot_no, production_date, expiry_date, release_no, unit_id,
                                         entered_by)
                       VALUES (%s, %s, %s, %s, %s, %s, %s) RETURNING id""",
                    (
                        spec_id,
                        f"{now:%Y%m}{i + 1:02d}A",
                        date(now.year, 1, 15),
                        date(now.year + 2, 1, 14),
                        f"SJ{now.year}{i + 1:05d}",
                        province["id"],
                        writer[province["id"]],
                    ),
                )
            )
        tree = fetch_all(conn, "SELECT id, level, parent_id FROM units ORDER BY id")
        children: dict[int, list[int]] = {}
        for u in tree:
            if u["parent_id"] is not None:
                children.setdefault(u["parent_id"], []).append(u["id"])
        level = {u["id"]: u["level"] for u in tree}
        moves = 0

        def send_down(unit: int, lot: int, at: datetime, quantity: int) -> None:
            nonlocal moves
            # Every CDC, but only the first few sites of each county: the demo stays quick at any size.
            kids = [k for k in children.get(unit, []) if level[k] != "township"] or children.get(unit, [])[:3]
            if not kids or quantity < 2 * (len(kids) + 1):
                return
            share = quantity // (len(kids) + 1)
            for k, kid in enumerate(kids):
                shipped = at + timedelta(hours=2 + k % 6)
                t = transfers.ship(conn, writer[unit], "issue", unit, kid, lot, share, shipped)
                transfers.receive_transfer(
                    conn, writer[kid], t["id"], share, 0, shipped + timedelta(hours=5), compartment_id=store.get(kid)
                )
                moves += 2
                send_down(kid, lot, shipped + timedelta(days=3), share)

        for lot in lots:
            size = 40 * len(tree)
            receipts.receive(
                conn,
                writer[province["id"]],
                province["id"],
                [receipts.ReceiptLine(lot, size, store.get(province["id"]))],
                start,
                "演示疫苗配送企业",
            )
            moves += 1
            send_down(province["id"], lot, start + timedelta(days=1), size)
        holders = _holders(conn)
        stocked = [u for u in level if level[u] == "township" and u in holders]
        vaccinations = _vaccinate(conn, rng, writer, stocked[:30], lots, now)
        conn.commit()
    return {"lots": len(lots), "movements": moves, "vaccinations": vaccinations}


def _vaccinate(
    conn: psycopg.Connection,
    rng: random.Random,
    writer: dict[int, int],
    sites: list[int],
    lots: list[int],
    now: datetime,
) -> int:
    """A week of vaccination days at each site, each closed by its usage booking (VT7)."""
    done = 0
    today = now.astimezone(BEIJING).date()
    for site in sites:
        for back in range(7, 0, -1):
            day = today - timedelta(days=back)
            per_lot: dict[int, int] = {}
            for lot in rng.sample(lots, 2):
                held = fetch_one(
                    conn,
                    "SELECT on_hand FROM stock_balances WHERE unit_id = %(u)s AND lot_id = %(l)s",
                    {"u": site, "l": lot},
                )
                if held is None or held["on_hand"] < 3:
                    continue
                info = load_lot(conn, lot)
                doses = rng.randint(1, min(6, held["on_hand"]))
                for n in range(doses):
                    at = datetime.combine(day, datetime.min.time(), BEIJING) + timedelta(hours=9, minutes=7 * n)
                    usage.record_vaccination(
                        conn, writer[site], site, at, f"DEMO{site:05d}{day:%m%d}{lot:03d}{n:02d}", lot_id=lot
                    )
                    done += 1
                per_lot[lot] = min(held["on_hand"], vials_needed(doses, info["doses_per_vial"]))
            if per_lot:
                usage.book_day_usage(conn, writer[site], site, day, per_lot, now)
    return done


def _holders(conn: psycopg.Connection) -> set[int]:
    return {r["unit_id"] for r in fetch_all(conn, "SELECT DISTINCT unit_id FROM stock_balances WHERE on_hand > 0")}


def _writers(conn: psycopg.Connection) -> dict[int, int]:
    """A business administrator per unit books for it (the demo has one at every unit)."""
    rows = fetch_all(
        conn,
        """SELECT DISTINCT ON (unit_id) unit_id, id FROM users WHERE role IN ('business_admin', 'system_admin')
           ORDER BY unit_id, role, id""",
    )
    return {r["unit_id"]: r["id"] for r in rows}


def _stores(conn: psycopg.Connection) -> dict[int, int]:
    """Each unit's first refrigerated, non-vehicle compartment: where received vaccines are put."""
    rows = fetch_all(
        conn,
        """SELECT DISTINCT ON (e.unit_id) e.unit_id, c.id FROM compartments c JOIN equipment e ON e.id = c.equipment_id
           WHERE c.mode = 'refrigerated' AND e.kind <> 'vehicle' AND c.status = 'active' ORDER BY e.unit_id, c.id""",
    )
    return {r["unit_id"]: r["id"] for r in rows}


def _one(conn: psycopg.Connection, query: str, params: tuple[Any, ...]) -> int:
    row = conn.execute(query, params).fetchone()
    assert row is not None
    return int(row[0])
