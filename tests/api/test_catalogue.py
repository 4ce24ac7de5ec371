"""The shared vaccine records over real HTTP and a real database: the catalogue of
specifications (VT2), lots (VT3) with their corrections, the batch-release certificates of a lot,
and error reports on a lot record.

Who may change what is the heart of these features: the catalogue is the province's and a lot
belongs to whoever entered it plus the province; any unit may report an error, only the province
decides. Each refusal is therefore checked alongside the success it guards.
"""

from __future__ import annotations

import struct
import zlib
from typing import Any

from apihelp import World, error_code
from fastapi.testclient import TestClient
from ledgerhelp import API, HEPB_GTIN, HEPB_PREFIX, Catalogue, Headers, has_chinese, message

from coldchain.core import db
from inventory.codes import gtin_check_digit

# ---------------------------------------------------------------------------------------------
# Catalogue (VT2)


def test_only_province_writers_maintain_the_catalogue(
    world: World, cat: Catalogue, client: TestClient, h: dict[str, Headers]
) -> None:
    """The catalogue follows the provincial tender, so a county (or a read-only province user) that
    could add a vaccine would put products into circulation nobody procured."""
    for who in ("K1", "C1", "sup_P"):
        r = client.post(f"{API}/catalogue/categories", json={"name": "狂犬病疫苗"}, headers=h[who])
        assert r.status_code == 403, (who, r.text)
        assert error_code(r) == "forbidden"
    r = client.post(f"{API}/catalogue/categories", json={"name": "狂犬病疫苗"}, headers=h["P"])
    assert r.status_code == 201, r.text
    category = r.json()
    assert category["name"] == "狂犬病疫苗" and category["version"] == 1

    body = {"name": "成都康华生物", "credit_code": "91510100MA6C2XYZ12"}
    assert client.post(f"{API}/catalogue/manufacturers", json=body, headers=h["K1"]).status_code == 403
    assert client.post(f"{API}/catalogue/manufacturers", json=body, headers=h["sup_P"]).status_code == 403
    r = client.post(f"{API}/catalogue/manufacturers", json=body, headers=h["P"])
    assert r.status_code == 201, r.text
    maker = r.json()
    assert maker["credit_code"] == "91510100MA6C2XYZ12"

    vaccine_body = {"category_id": category["id"], "name": "人用狂犬病疫苗（Vero细胞）", "programme": False}
    assert client.post(f"{API}/catalogue/vaccines", json=vaccine_body, headers=h["K1"]).status_code == 403
    assert client.post(f"{API}/catalogue/vaccines", json=vaccine_body, headers=h["sup_P"]).status_code == 403
    r = client.post(f"{API}/catalogue/vaccines", json=vaccine_body, headers=h["P"])
    assert r.status_code == 201, r.text
    vaccine = r.json()
    assert (vaccine["category_name"], vaccine["programme"], vaccine["storage_mode"]) == (
        "狂犬病疫苗",
        False,
        "refrigerated",
    )

    body13 = "0690123456801"
    good_gtin = body13 + str(gtin_check_digit(body13))
    spec_body: dict[str, Any] = {
        "vaccine_id": vaccine["id"],
        "manufacturer_id": maker["id"],
        "spec": "0.5mL/支",
        "doses_per_vial": 1,
        "ref_wastage": "1.05",
        "trace_prefix": "8677777",
        "gtin": good_gtin,
        "tender_year": 2026,
    }
    assert client.post(f"{API}/catalogue/specs", json=spec_body, headers=h["K1"]).status_code == 403
    assert client.post(f"{API}/catalogue/specs", json=spec_body, headers=h["sup_P"]).status_code == 403
    r = client.post(f"{API}/catalogue/specs", json=spec_body, headers=h["P"])
    assert r.status_code == 201, r.text
    spec = r.json()
    assert (spec["vaccine_name"], spec["manufacturer_name"], spec["gtin"], spec["ref_wastage"], spec["version"]) == (
        "人用狂犬病疫苗（Vero细胞）",
        "成都康华生物",
        good_gtin,
        1.05,
        1,
    )

    # Nothing the refused writers sent reached the database.
    names = [c["name"] for c in client.get(f"{API}/catalogue/categories", headers=h["T1"]).json()]
    assert names.count("狂犬病疫苗") == 1


def test_spec_gtin_must_carry_a_valid_check_digit(
    world: World, cat: Catalogue, client: TestClient, h: dict[str, Headers]
) -> None:
    """A mistyped GTIN would make every scan of that product fail later, at a clinic, in front of a
    queue; it is refused when the province types it, in words the province's staff read."""
    vaccine = client.get(f"{API}/catalogue/vaccines", headers=h["P"]).json()[0]
    maker = client.get(f"{API}/catalogue/manufacturers", headers=h["P"]).json()[0]
    body13 = "0690123456818"
    wrong = body13 + str((gtin_check_digit(body13) + 1) % 10)
    spec_body = {
        "vaccine_id": vaccine["id"],
        "manufacturer_id": maker["id"],
        "spec": "20μg/1.0mL/支",
        "doses_per_vial": 1,
        "ref_wastage": "1.05",
        "gtin": wrong,
    }
    r = client.post(f"{API}/catalogue/specs", json=spec_body, headers=h["P"])
    assert r.status_code == 422 and error_code(r) == "invalid"
    assert "GTIN" in message(r) and "校验位" in message(r) and has_chinese(message(r))
    # The same check guards a correction.
    r = client.patch(f"{API}/catalogue/specs/{cat.specs['opv']}", json={"version": 1, "gtin": wrong}, headers=h["P"])
    assert r.status_code == 422 and "校验位" in message(r)
    specs = client.get(f"{API}/catalogue/specs", headers=h["P"]).json()
    assert wrong not in [s["gtin"] for s in specs]


def test_spec_patch_is_versioned(world: World, cat: Catalogue, client: TestClient, h: dict[str, Headers]) -> None:
    """Two province staff editing the same spec must not silently overwrite each other."""
    url = f"{API}/catalogue/specs/{cat.specs['opv']}"
    r = client.patch(url, json={"version": 1, "ref_wastage": "1.25", "tender_year": 2026}, headers=h["K1"])
    assert r.status_code == 403
    r = client.patch(url, json={"version": 1, "ref_wastage": "1.25", "tender_year": 2026}, headers=h["P"])
    assert r.status_code == 200, r.text
    assert (r.json()["ref_wastage"], r.json()["tender_year"], r.json()["version"]) == (1.25, 2026, 2)
    assert r.json()["spec"] == "1.0mL/瓶（10人份）"  # fields not sent are left alone
    r = client.patch(url, json={"version": 1, "active": False}, headers=h["P"])
    assert r.status_code == 409 and error_code(r) == "version_conflict"
    assert r.json()["error"]["details"] == {"current_version": 2, "your_version": 1}
    assert client.get(f"{API}/catalogue/specs", params={"active": False}, headers=h["P"]).json() == []


def test_spec_list_filters(world: World, cat: Catalogue, client: TestClient, h: dict[str, Headers]) -> None:
    """Programme (免疫规划) and non-programme vaccines are planned and paid for differently, so every
    unit, not only the province, lists them apart."""
    programme = client.get(f"{API}/catalogue/specs", params={"programme": True}, headers=h["T1"]).json()
    assert sorted(s["id"] for s in programme) == sorted([cat.specs["hepb"], cat.specs["opv"]])
    assert all(s["programme"] for s in programme)
    other = client.get(f"{API}/catalogue/specs", params={"programme": "false"}, headers=h["T1"]).json()
    assert [s["id"] for s in other] == [cat.specs["flu"]]
    everything = client.get(f"{API}/catalogue/specs", headers=h["T1"]).json()
    assert len(everything) == 3
    hepb = next(s for s in everything if s["id"] == cat.specs["hepb"])
    assert (hepb["trace_prefix"], hepb["gtin"], hepb["doses_per_vial"]) == (HEPB_PREFIX, HEPB_GTIN, 1)
    vaccine_id = hepb["vaccine_id"]
    only = client.get(f"{API}/catalogue/specs", params={"vaccine_id": vaccine_id}, headers=h["T1"]).json()
    assert [s["id"] for s in only] == [cat.specs["hepb"]]
    r = client.get(f"{API}/catalogue/specs", params={"programme": "maybe"}, headers=h["T1"])
    assert r.status_code == 422


# ---------------------------------------------------------------------------------------------
# Lots (VT3)


def _lot_body(spec: int, lot_no: str, **extra: Any) -> dict[str, Any]:
    return {
        "spec_id": spec,
        "lot_no": lot_no,
        "production_date": "2026-06-01",
        "expiry_date": "2028-05-31",
        "release_no": f"SJ{lot_no}",
        **extra,
    }


def test_lot_is_entered_once_and_then_shared(
    world: World, cat: Catalogue, client: TestClient, h: dict[str, Headers]
) -> None:
    """The first unit to receive a lot enters it (a township too); a second entry of the same lot
    would split its stock and its trace in two, so the second unit is pointed to the existing one."""
    r = client.post(f"{API}/lots", json=_lot_body(cat.specs["hepb"], "202611T01"), headers=h["T1"])
    assert r.status_code == 201, r.text
    lot = r.json()
    assert (lot["unit_id"], lot["entered_by"], lot["version"], lot["has_certificate"]) == (
        world.units["T1"],
        world.users["ba_T1"],
        1,
        False,
    )
    r = client.post(f"{API}/lots", json=_lot_body(cat.specs["hepb"], "202611T01"), headers=h["K2"])
    assert r.status_code == 409 and error_code(r) == "lot_exists"
    assert r.json()["error"]["details"] == {"lot_id": lot["id"]}
    # A lot number is unique per spec, not across products.
    r = client.post(f"{API}/lots", json=_lot_body(cat.specs["flu"], "202611T01"), headers=h["K2"])
    assert r.status_code == 201 and r.json()["id"] != lot["id"]
    # Everyone in the province finds it.
    found = client.get(
        f"{API}/lots", params={"lot_no": "202611T01", "spec_id": cat.specs["hepb"]}, headers=h["T3"]
    ).json()
    assert [x["id"] for x in found] == [lot["id"]]

    r = client.post(
        f"{API}/lots", json=_lot_body(cat.specs["hepb"], "202611T02", expiry_date="2026-05-31"), headers=h["K1"]
    )
    assert r.status_code == 422 and message(r) == "失效日期必须晚于生产日期"
    r = client.post(
        f"{API}/lots", json=_lot_body(cat.specs["hepb"], "202611T02", expiry_date="2026-06-01"), headers=h["K1"]
    )
    assert r.status_code == 422
    r = client.post(f"{API}/lots", json=_lot_body(cat.specs["hepb"], "202611T02"), headers=h["sup_P"])
    assert r.status_code == 403


def test_lot_correction_keeps_every_version(
    world: World, cat: Catalogue, client: TestClient, h: dict[str, Headers]
) -> None:
    """A lot's dates decide whether stock may still be used; a silent edit would rewrite what the
    units relied on, so every correction is a new version with a reason, and the old one is kept."""
    r = client.post(f"{API}/lots", json=_lot_body(cat.specs["hepb"], "202611K01"), headers=h["K1"])
    assert r.status_code == 201, r.text
    lot_id = r.json()["id"]
    url = f"{API}/lots/{lot_id}"
    fix = {"version": 1, "reason": "失效日期录入错误，按说明书更正", "expiry_date": "2028-04-30"}
    # Neither the enterer nor the province: not even the county's own city, nor a reader.
    for who in ("K2", "C1", "T1", "sup_P"):
        r = client.patch(url, json=fix, headers=h[who])
        assert r.status_code == 403, (who, r.text)
    r = client.patch(url, json={"version": 1, "expiry_date": "2028-04-30"}, headers=h["K1"])
    assert r.status_code == 422 and error_code(r) == "invalid_request" and "reason" in r.text
    r = client.patch(url, json={**fix, "production_date": "2028-05-01"}, headers=h["K1"])
    assert r.status_code == 422 and message(r) == "失效日期必须晚于生产日期"

    r = client.patch(url, json=fix, headers=h["K1"])
    assert r.status_code == 200, r.text
    assert (r.json()["expiry_date"], r.json()["version"]) == ("2028-04-30", 2)
    detail = client.get(url, headers=h["T3"]).json()
    revisions = detail["revisions"]
    assert [x["version"] for x in revisions] == [1, 2]
    assert revisions[0]["data"]["expiry_date"] == "2028-05-31" and revisions[0]["reason"] is None
    assert revisions[1]["data"]["expiry_date"] == "2028-04-30"
    assert revisions[1]["reason"] == "失效日期录入错误，按说明书更正"
    assert revisions[1]["changed_by"] == world.users["ba_K1"]

    # The province corrects any lot, including one it did not enter.
    r = client.patch(url, json={"version": 2, "reason": "批签发号更正", "release_no": "SJ2026K01-A"}, headers=h["P"])
    assert r.status_code == 200 and r.json()["version"] == 3 and r.json()["release_no"] == "SJ2026K01-A"
    r = client.patch(url, json={"version": 2, "reason": "再次更正", "release_no": "SJ-X"}, headers=h["K1"])
    assert r.status_code == 409 and error_code(r) == "version_conflict"
    assert r.json()["error"]["details"]["current_version"] == 3
    revisions = client.get(url, headers=h["K1"]).json()["revisions"]
    assert [(x["version"], x["changed_by"]) for x in revisions][1:] == [
        (2, world.users["ba_K1"]),
        (3, world.users["ba_P"]),
    ]
    # The province's own lots are corrected by the province alone.
    r = client.patch(f"{API}/lots/{cat.lots['hepb']}", json=fix, headers=h["K1"])
    assert r.status_code == 403


def test_lot_correction_cannot_blank_a_field(
    world: World, cat: Catalogue, client: TestClient, h: dict[str, Headers]
) -> None:
    """Every field of a lot is required; sending null for one must be a clear refusal, not a crash."""
    url = f"{API}/lots/{cat.lots['hepb']}"
    for field in ("expiry_date", "production_date", "lot_no", "release_no"):
        r = client.patch(url, json={"version": 1, "reason": "清空字段", field: None}, headers=h["P"])
        assert r.status_code == 422, (field, r.status_code, r.text)
        assert error_code(r) == "invalid" and "不能清空" in message(r) and field in message(r)
    assert client.get(url, headers=h["P"]).json()["version"] == 1
    # A spec's required fields likewise: the schema's NOT NULL refuses it (422, not 500).
    r = client.patch(f"{API}/catalogue/specs/{cat.specs['hepb']}", json={"version": 1, "spec": None}, headers=h["P"])
    assert r.status_code == 422


# ---------------------------------------------------------------------------------------------
# Batch-release certificates


def tiny_png() -> bytes:
    """A real 1×1 PNG, so the test exercises what a phone camera upload starts with."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", 1, 1, 8, 2, 0, 0, 0)
    pixels = zlib.compress(b"\x00\xff\x00\x00")
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", pixels) + chunk(b"IEND", b"")


def certificate_rows(world: World, lot: int) -> int:
    with db.connect(world.url) as conn:
        row = conn.execute("SELECT count(*) FROM lot_certificates WHERE lot_id = %s", (lot,)).fetchone()
    assert row is not None
    return int(row[0])


def test_certificate_upload_checks_type_size_and_uploader(
    world: World, cat: Catalogue, client: TestClient, h: dict[str, Headers]
) -> None:
    """The certificate is evidence for an inspection: its declared type must match its content (a
    renamed file would not open for the inspector), it has a size limit, and only those who may
    correct the lot may attach one."""
    lot = cat.lots["hepb"]
    url = f"{API}/lots/{lot}/certificate"
    png = tiny_png()
    assert client.get(url, headers=h["T1"]).status_code == 404

    def put(body: bytes, content_type: str, who: str = "P") -> Any:
        return client.put(url, content=body, headers={**h[who], "Content-Type": content_type})

    r = put(png, "image/png")
    assert r.status_code == 204, r.text
    r = client.get(url, headers=h["T1"])
    assert r.status_code == 200 and r.content == png and r.headers["content-type"] == "image/png"
    assert client.get(f"{API}/lots/{lot}", headers=h["T1"]).json()["has_certificate"] is True

    r = put(png, "image/jpeg")
    assert r.status_code == 415 and error_code(r) == "unsupported_type" and "image/png" in message(r)
    r = put(bytes(range(256)) * 4, "image/png")
    assert r.status_code == 415 and error_code(r) == "unsupported_type"
    big = b"\x89PNG\r\n\x1a\n" + b"\x00" * (5 * 1024 * 1024)
    r = put(big, "image/png")
    assert r.status_code == 413 and error_code(r) == "too_large"
    # Without a Content-Length (chunked upload) the limit is enforced while reading.
    r = client.put(url, content=iter([big[: 1024 * 1024]] * 6), headers={**h["P"], "Content-Type": "image/png"})
    assert r.status_code == 413 and error_code(r) == "too_large"
    r = put(b"", "image/png")
    assert r.status_code == 422 and error_code(r) == "invalid"
    # Not the enterer (ba_P), not the province: a county, and a province reader.
    assert put(png, "image/png", "K1").status_code == 403
    assert put(png, "image/png", "sup_P").status_code == 403
    assert certificate_rows(world, lot) == 1

    pdf = b"%PDF-1.4\n1 0 obj<<>>endobj\ntrailer<<>>\n%%EOF\n"
    r = put(pdf, "application/pdf")
    assert r.status_code == 204
    assert certificate_rows(world, lot) == 2  # the earlier one is kept
    r = client.get(url, headers=h["K3"])
    assert r.content == pdf and r.headers["content-type"] == "application/pdf"


def test_enterer_attaches_the_certificate_of_its_own_lot(
    world: World, cat: Catalogue, client: TestClient, h: dict[str, Headers]
) -> None:
    """The unit that received the lot first holds the paper certificate, so it may upload it."""
    r = client.post(f"{API}/lots", json=_lot_body(cat.specs["opv"], "202611K02"), headers=h["K1"])
    lot = r.json()["id"]
    url = f"{API}/lots/{lot}/certificate"
    jpeg = b"\xff\xd8\xff\xe0" + b"\x00\x10JFIF\x00" + b"\x00" * 32
    r = client.put(url, content=jpeg, headers={**h["K1"], "Content-Type": "image/jpeg; charset=binary"})
    assert r.status_code == 204, r.text
    r = client.put(url, content=jpeg, headers={**h["T1"], "Content-Type": "image/jpeg"})
    assert r.status_code == 403
    r = client.get(url, headers=h["T1"])
    assert r.content == jpeg and r.headers["content-type"] == "image/jpeg"


# ---------------------------------------------------------------------------------------------
# Error reports


def test_error_reports_go_to_the_province_queue(
    world: World, cat: Catalogue, client: TestClient, h: dict[str, Headers]
) -> None:
    """Any unit's administrators report a wrong lot record; the read-only roles (supervisor,
    analyst) write nothing, this included; only the province, which owns the shared record, decides."""
    lot = cat.lots["hepb"]
    url = f"{API}/lots/{lot}/error-reports"
    r = client.post(url, json={"message": "实物包装上的有效期为 2028-04-30"}, headers=h["T1"])
    assert r.status_code == 201, r.text
    from_t1 = r.json()
    assert (from_t1["unit_id"], from_t1["reported_by"], from_t1["state"], from_t1["lot_no"]) == (
        world.units["T1"],
        world.users["ba_T1"],
        "open",
        "202605A01",
    )
    r = client.post(url, json={"message": "督导检查发现批签发号与证明不符"}, headers=h["sup_P"])
    assert r.status_code == 403 and error_code(r) == "forbidden"
    r = client.post(url, json={"message": "生产日期疑似录错"}, headers=h["K1"])
    assert r.status_code == 201
    from_k1 = r.json()
    r = client.post(url, json={"message": "x"}, headers=h["K1"])
    assert r.status_code == 422

    queue = client.get(f"{API}/lot-error-reports", params={"state": "open"}, headers=h["P"]).json()
    assert [x["id"] for x in queue] == [from_t1["id"], from_k1["id"]]
    # A county sees what its own unit reported, not its townships' nor the province's.
    mine = client.get(f"{API}/lot-error-reports", headers=h["K1"]).json()
    assert [x["id"] for x in mine] == [from_k1["id"]]
    assert [x["id"] for x in client.get(f"{API}/lot-error-reports", headers=h["T2"]).json()] == []

    decide = f"{API}/lot-error-reports/{from_t1['id']}/decision"
    resolution = {"version": 1, "state": "resolved", "resolution": "已核对说明书并更正失效日期"}
    for who in ("K1", "C1", "T1", "sup_P"):
        r = client.post(decide, json=resolution, headers=h[who])
        assert r.status_code == 403, (who, r.text)
    r = client.post(decide, json={"version": 1, "state": "resolved"}, headers=h["P"])
    assert r.status_code == 422  # a decision says what was done
    r = client.post(decide, json={**resolution, "version": 2}, headers=h["P"])
    assert r.status_code == 409 and error_code(r) == "version_conflict"
    r = client.post(decide, json=resolution, headers=h["P"])
    assert r.status_code == 200, r.text
    done = r.json()
    assert (done["state"], done["resolution"], done["resolved_by"], done["version"]) == (
        "resolved",
        "已核对说明书并更正失效日期",
        world.users["ba_P"],
        2,
    )
    assert done["resolved_at"] is not None
    r = client.post(decide, json={"version": 2, "state": "dismissed", "resolution": "重复处理"}, headers=h["P"])
    assert r.status_code == 409 and error_code(r) == "already_decided"

    queue = client.get(f"{API}/lot-error-reports", params={"state": "open"}, headers=h["P"]).json()
    assert [x["id"] for x in queue] == [from_k1["id"]]
    seen = client.get(f"{API}/lot-error-reports", params={"state": "resolved"}, headers=h["T1"]).json()
    assert [(x["id"], x["resolution"]) for x in seen] == [(from_t1["id"], "已核对说明书并更正失效日期")]
