"""A small catalogue and lots on top of the API tests' province (:mod:`apihelp`).

Specs: 乙肝疫苗 10μg single dose (programme, reference wastage 1.05, 7-digit trace prefix 8612345, GTIN
06901234567892); 脊灰减毒活疫苗 ten doses a vial (programme, 1.33); 流感疫苗 (non-programme, 1.05).

Also a pytest plugin (tests/conftest.py): the ``cat`` and ``h`` fixtures of the catalogue, code
scanning and usage plan tests (tests/api/test_catalogue.py, test_code_scanning.py,
test_usage_plans.py); a module that wants other headers defines its own ``h``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date
from typing import Any

import pytest
from apihelp import World, bearer
from fastapi.testclient import TestClient

from coldchain.core import db
from inventory.codes import gtin_check_digit

API = "/api/v1"
HEPB_PREFIX = "8612345"
HEPB_GTIN = "0690123456789" + str(gtin_check_digit("0690123456789"))
FLU_PREFIX = "8699999"


def gtin_at_level(indicator: int, gtin: str = HEPB_GTIN) -> str:
    """The GTIN-14 of a case or box of the same product: another indicator digit and check digit."""
    body = f"{indicator}{gtin[1:13]}"
    return body + str(gtin_check_digit(body))


def cn20(serial: int, prefix: str = HEPB_PREFIX) -> str:
    return f"{prefix}{serial:013d}"


@dataclass
class Catalogue:
    specs: dict[str, int] = field(default_factory=dict)  # hepb, opv, flu
    lots: dict[str, int] = field(default_factory=dict)


def build_catalogue(world: World) -> Catalogue:
    cat = Catalogue()
    with db.connect(world.url) as conn:

        def one(query: str, params: tuple[Any, ...]) -> int:
            row = conn.execute(query, params).fetchone()
            assert row is not None
            return int(row[0])

        manufacturer = one("INSERT INTO manufacturers (name) VALUES ('华北制药') RETURNING id", ())
        for key, category, name, programme, spec, doses, ref, prefix, gtin in (
            (
                "hepb",
                "乙肝疫苗",
                "重组乙型肝炎疫苗（酿酒酵母）",
                True,
                "10μg/0.5mL/支",
                1,
                1.05,
                HEPB_PREFIX,
                HEPB_GTIN,
            ),
            ("opv", "脊灰疫苗", "二价脊灰减毒活疫苗", True, "1.0mL/瓶（10人份）", 10, 1.33, "8622222", None),
            ("flu", "流感疫苗", "四价流感病毒裂解疫苗", False, "0.5mL/支", 1, 1.05, FLU_PREFIX, None),
        ):
            category_id = one("INSERT INTO vaccine_categories (name) VALUES (%s) RETURNING id", (category,))
            vaccine = one(
                "INSERT INTO vaccines (category_id, name, programme) VALUES (%s, %s, %s) RETURNING id",
                (category_id, name, programme),
            )
            cat.specs[key] = one(
                """INSERT INTO vaccine_specs (vaccine_id, manufacturer_id, spec, doses_per_vial, ref_wastage,
                                              trace_prefix, gtin)
                   VALUES (%s, %s, %s, %s, %s, %s, %s) RETURNING id""",
                (vaccine, manufacturer, spec, doses, ref, prefix, gtin),
            )
        entered = world.users["ba_P"]
        for key, spec, lot_no, expiry in (
            ("hepb", "hepb", "202605A01", date(2028, 5, 31)),
            ("hepb2", "hepb", "202606B02", date(2028, 6, 30)),
            ("opv", "opv", "202604C03", date(2027, 10, 31)),
            ("flu", "flu", "202608F04", date(2027, 8, 31)),
            ("old", "hepb", "202301X09", date(2025, 1, 31)),
        ):
            cat.lots[key] = one(
                """INSERT INTO lots (spec_id, lot_no, production_date, expiry_date, release_no, unit_id, entered_by)
                   VALUES (%s, %s, %s, %s, %s, %s, %s) RETURNING id""",
                (cat.specs[spec], lot_no, date(2023, 1, 1), expiry, f"SJ{lot_no}", world.units["P"], entered),
            )
        conn.commit()
    return cat


def receive(client: TestClient, headers: dict[str, str], lot: int, quantity: int, **extra: Any) -> dict[str, Any]:
    line = {"lot_id": lot, "quantity": quantity, **{k: v for k, v in extra.items() if k != "occurred_at"}}
    body: dict[str, Any] = {"supplier": "华北制药配送中心", "lines": [line]}
    if "occurred_at" in extra:
        body["occurred_at"] = extra["occurred_at"]
    r = client.post(f"{API}/stock/receipts", json=body, headers=headers)
    assert r.status_code == 201, r.text
    return dict(r.json()[0])


def ship(client: TestClient, headers: dict[str, str], to: int, lot: int, quantity: int, **extra: Any) -> dict[str, Any]:
    r = client.post(
        f"{API}/stock/transfers", json={"to_unit_id": to, "lot_id": lot, "quantity": quantity, **extra}, headers=headers
    )
    assert r.status_code == 201, r.text
    return dict(r.json())


def accept(client: TestClient, headers: dict[str, str], transfer: int, accepted: int, **extra: Any) -> dict[str, Any]:
    r = client.post(f"{API}/stock/transfers/{transfer}/receive", json={"accepted": accepted, **extra}, headers=headers)
    assert r.status_code == 200, r.text
    return dict(r.json())


def balance(world: World, unit: str, lot: int) -> tuple[int, int]:
    """(on hand, reserved) straight from the database."""
    with db.connect(world.url) as conn:
        row = conn.execute(
            "SELECT on_hand, reserved FROM stock_balances WHERE unit_id = %s AND lot_id = %s",
            (world.units[unit], lot),
        ).fetchone()
    return (row[0], row[1]) if row else (0, 0)


def ledger_sum(world: World, unit: str, lot: int) -> int:
    """The balance recomputed from the movements: the books must agree with the balance row."""
    with db.connect(world.url) as conn:
        row = conn.execute(
            "SELECT coalesce(sum(quantity), 0) FROM stock_movements WHERE unit_id = %s AND lot_id = %s",
            (world.units[unit], lot),
        ).fetchone()
    assert row is not None
    return int(row[0])


# ---------------------------------------------------------------------------------------------
# Fixtures and checks of the catalogue, scanning and usage plan tests

Headers = dict[str, str]


@pytest.fixture
def cat(world: World) -> Catalogue:
    return build_catalogue(world)


@pytest.fixture
def h(client: TestClient) -> dict[str, Headers]:
    """Bearer headers by unit key for each unit's business administrator, plus the read-only ones."""
    heads = {k: bearer(client, f"ba_{k}") for k in ("P", "C1", "K1", "T1", "C2", "K2", "T2", "K3", "T3")}
    heads["sup_P"] = bearer(client, "sup_P")
    heads["ana_K1"] = bearer(client, "ana_K1")
    return heads


def has_chinese(text: str) -> bool:
    return any("\u4e00" <= ch <= "\u9fff" for ch in text)


def message(r: Any) -> str:
    return str(r.json()["error"]["message"])
