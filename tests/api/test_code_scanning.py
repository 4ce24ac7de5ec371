"""Scanning a code (VT4) over real HTTP: ``/codes/resolve`` names the product and lot of a
code nothing has registered yet, from the catalogue; a code registered at receipt carries its
packaging level and holder, and where a package sits is shown only within the holder's
jurisdiction.
"""

from __future__ import annotations

from typing import Any

from apihelp import World, error_code
from fastapi.testclient import TestClient
from ledgerhelp import (
    API,
    HEPB_GTIN,
    HEPB_PREFIX,
    Catalogue,
    Headers,
    accept,
    cn20,
    gtin_at_level,
    has_chinese,
    message,
    ship,
)

from inventory.codes import gtin_check_digit

# ---------------------------------------------------------------------------------------------
# Scanning (VT4)


def resolve(client: TestClient, headers: Headers, code: str) -> Any:
    return client.post(f"{API}/codes/resolve", json={"code": code}, headers=headers)


def test_resolve_names_the_product_of_unregistered_codes(
    world: World, cat: Catalogue, client: TestClient, h: dict[str, Headers]
) -> None:
    """A clinic scans before anything is registered (e.g. to pick the lot at receipt): the product
    comes from the catalogue, the lot from the code when it carries one."""
    r = resolve(client, h["T1"], cn20(42))
    assert r.status_code == 200, r.text
    out = r.json()
    assert (out["kind"], out["product_key"], out["serial"], out["spec"]["id"]) == (
        "cn20",
        HEPB_PREFIX,
        f"{42:013d}",
        cat.specs["hepb"],
    )
    assert out["registered"] is False and out["lot"] is None and out["holder_unit_id"] is None
    assert out["pack_level"] is None and out["units"] is None

    r = resolve(client, h["T1"], f"(01){HEPB_GTIN}(17)280531(10)202605A01(21)SN0001")
    assert r.status_code == 200, r.text
    out = r.json()
    assert (out["kind"], out["code"], out["lot_no"], out["expiry"], out["serial"]) == (
        "gs1",
        f"01{HEPB_GTIN}21SN0001",
        "202605A01",
        "2028-05-31",
        "SN0001",
    )
    assert out["spec"]["id"] == cat.specs["hepb"] and out["lot"]["id"] == cat.lots["hepb"]
    assert out["registered"] is False

    case = gtin_at_level(1)
    assert case != HEPB_GTIN
    r = resolve(client, h["T1"], f"(01){case}(10)202606B02(21)C0001")
    assert r.status_code == 200, r.text
    assert r.json()["spec"]["id"] == cat.specs["hepb"] and r.json()["lot"]["id"] == cat.lots["hepb2"]
    # A lot number the province has not entered leaves the lot empty rather than guessing.
    r = resolve(client, h["T1"], f"(01){HEPB_GTIN}(10)NOSUCHLOT(21)C0002")
    assert r.status_code == 200 and r.json()["lot"] is None

    r = resolve(client, h["T1"], cn20(1, prefix="8600000"))
    assert r.status_code == 422 and error_code(r) == "unknown_product" and "8600000" in message(r)
    other = "0690123456900"
    r = resolve(client, h["T1"], f"(01){other}{gtin_check_digit(other)}(21)X1")
    assert r.status_code == 422 and error_code(r) == "unknown_product"
    bad_check = HEPB_GTIN[:-1] + str((int(HEPB_GTIN[-1]) + 1) % 10)
    for bad in ("12345", "8612345ABC0000000001", f"(01){bad_check}(21)X1", f"(01){HEPB_GTIN}(99)X"):
        r = resolve(client, h["T1"], bad)
        assert r.status_code == 422 and error_code(r) == "invalid_code" and has_chinese(message(r)), bad


def test_resolve_shows_the_holder_only_within_jurisdiction(
    world: World, cat: Catalogue, client: TestClient, h: dict[str, Headers]
) -> None:
    """Codes registered at receipt carry their packaging level and holder; where a package sits is
    stock information, so a unit outside the holder's jurisdiction is not told."""
    box, vial1, vial2 = cn20(1000), cn20(1001), cn20(1002)
    line = {
        "lot_id": cat.lots["hepb"],
        "quantity": 2,
        "packages": [{"code": box, "contents": [{"code": vial1}, {"code": vial2}]}],
    }
    r = client.post(f"{API}/stock/receipts", json={"supplier": "华北制药配送中心", "lines": [line]}, headers=h["P"])
    assert r.status_code == 201, r.text

    out = resolve(client, h["P"], vial1).json()
    assert out["registered"] is True and out["lot"]["id"] == cat.lots["hepb"]
    assert (out["pack_level"], out["units"], out["holder_unit_id"]) == (0, 1, world.units["P"])
    assert out["in_transit"] is False and out["used"] is False
    out = resolve(client, h["P"], box).json()
    assert (out["pack_level"], out["units"], out["holder_unit_id"]) == (1, 2, world.units["P"])

    out = resolve(client, h["K1"], vial1).json()
    assert out["registered"] is True and out["spec"]["id"] == cat.specs["hepb"]
    assert out["holder_unit_id"] is None

    # Once issued down to K1 and received, K1 sees where it is and the province still does.
    t = ship(client, h["P"], world.units["K1"], cat.lots["hepb"], 2, codes=[box])["transfer"]
    assert resolve(client, h["P"], vial2).json()["in_transit"] is True
    accept(client, h["K1"], t["id"], 2)
    for who in ("K1", "P", "C1"):
        out = resolve(client, h[who], vial2).json()
        assert out["holder_unit_id"] == world.units["K1"] and out["in_transit"] is False, who
    assert resolve(client, h["K2"], vial2).json()["holder_unit_id"] is None
