"""The stock ledger over real HTTP and a real database: receipts, transfers through the in-transit
state, approvals with reservations, scrap, counts, the day's usage, vaccinations, reversals and
backdated entries (VT6–VT8, VT10). Every balance is also recomputed from the movements.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import psycopg
import pytest
from apihelp import World, api_client, bearer, error_code
from fastapi.testclient import TestClient
from ledgerhelp import API, Catalogue, accept, balance, build_catalogue, ledger_sum, receive, ship

from coldchain.core import db
from coldchain.core.terms import BEIJING


@pytest.fixture
def cat(world: World) -> Catalogue:
    return build_catalogue(world)


@pytest.fixture
def client(world: World) -> Iterator[TestClient]:
    with api_client(world.url) as c:
        yield c


@pytest.fixture
def h(client: TestClient) -> dict[str, dict[str, str]]:
    """Bearer headers by unit key, for each unit's business administrator."""
    return {k: bearer(client, f"ba_{k}") for k in ("P", "C1", "K1", "T1", "C2", "K2", "T2", "K3", "T3")}


def books_agree(world: World, lot: int) -> None:
    for unit in world.units:
        assert balance(world, unit, lot)[0] == ledger_sum(world, unit, lot), unit


# ---------------------------------------------------------------------------------------------


def test_receipt_books_stock_with_a_document_number(
    world: World, cat: Catalogue, client: TestClient, h: dict[str, dict[str, str]]
) -> None:
    m = receive(client, h["P"], cat.lots["hepb"], 1000)
    assert m["kind"] == "receipt" and m["quantity"] == 1000 and m["supplier"] == "华北制药配送中心"
    assert m["doc_no"].startswith("RK6100000000") and len(m["doc_no"]) == 2 + 10 + 8 + 8
    assert balance(world, "P", cat.lots["hepb"]) == (1000, 0)
    r = client.get(f"{API}/stock/balances", headers=h["P"])
    assert [(b["lot_id"], b["on_hand"], b["doses"]) for b in r.json()] == [(cat.lots["hepb"], 1000, 1000)]


def test_receipt_refusals(world: World, cat: Catalogue, client: TestClient, h: dict[str, dict[str, str]]) -> None:
    body = {"supplier": "华北制药配送中心", "lines": [{"lot_id": cat.lots["hepb"], "quantity": 10}]}
    r = client.post(f"{API}/stock/receipts", json=body, headers=h["T1"])
    assert r.status_code == 422 and error_code(r) == "rule_violation" and "接种单位" in r.json()["error"]["message"]
    expired = {"supplier": "华北制药配送中心", "lines": [{"lot_id": cat.lots["old"], "quantity": 10}]}
    r = client.post(f"{API}/stock/receipts", json=expired, headers=h["P"])
    assert r.status_code == 422 and "失效" in r.json()["error"]["message"]
    future = {**body, "occurred_at": (datetime.now(UTC) + timedelta(hours=2)).isoformat()}
    r = client.post(f"{API}/stock/receipts", json=future, headers=h["P"])
    assert r.status_code == 422 and "晚于当前时间" in r.json()["error"]["message"]
    wrong_zone = {
        "supplier": "x公司",
        "lines": [{"lot_id": cat.lots["hepb"], "quantity": 1, "compartment_id": world.compartments["T1/冷藏"]}],
    }
    r = client.post(f"{API}/stock/receipts", json=wrong_zone, headers=h["P"])
    assert r.status_code == 422 and "不属于本单位" in r.json()["error"]["message"]
    r = client.post(f"{API}/stock/receipts", json=body, headers=bearer(client, "sup_P"))
    assert r.status_code == 403
    assert balance(world, "P", cat.lots["hepb"]) == (0, 0)


def test_issue_down_is_in_transit_until_received_with_rejections_going_back(
    world: World, cat: Catalogue, client: TestClient, h: dict[str, dict[str, str]]
) -> None:
    lot = cat.lots["hepb"]
    receive(client, h["P"], lot, 500)
    out = ship(client, h["P"], world.units["C1"], lot, 200)
    t = out["transfer"]
    assert out["request"] is None and t["state"] == "in_transit" and t["kind"] == "issue"
    assert balance(world, "P", lot) == (300, 0) and balance(world, "C1", lot) == (0, 0)
    r = client.get(f"{API}/stock/transfers", params={"direction": "in", "state": "in_transit"}, headers=h["C1"])
    assert [x["id"] for x in r.json()] == [t["id"]]
    # Only the receiving unit receives, and the quantities must add up.
    r = client.post(f"{API}/stock/transfers/{t['id']}/receive", json={"accepted": 200}, headers=h["C2"])
    assert r.status_code == 404
    r = client.post(f"{API}/stock/transfers/{t['id']}/receive", json={"accepted": 150, "rejected": 40}, headers=h["C1"])
    assert r.status_code == 422 and error_code(r) == "quantity_mismatch"
    r = client.post(f"{API}/stock/transfers/{t['id']}/receive", json={"accepted": 190, "rejected": 10}, headers=h["C1"])
    assert r.status_code == 422 and "原因" in r.json()["error"]["message"]
    got = accept(client, h["C1"], t["id"], 190, rejected=10, reject_reason="外包装破损", compartment_id=None)
    assert got["transfer"]["state"] == "received"
    assert sorted((m["kind"], m["unit_id"], m["quantity"]) for m in got["movements"]) == [
        ("transfer_receipt", world.units["C1"], 190),
        ("transfer_rejection", world.units["P"], 10),
    ]
    assert balance(world, "P", lot) == (310, 0) and balance(world, "C1", lot) == (190, 0)
    r = client.post(f"{API}/stock/transfers/{t['id']}/receive", json={"accepted": 200}, headers=h["C1"])
    assert r.status_code == 409 and error_code(r) == "not_in_transit"
    books_agree(world, lot)


def test_same_level_issue_waits_for_the_level_above_and_reserves_the_stock(
    world: World, cat: Catalogue, client: TestClient, h: dict[str, dict[str, str]]
) -> None:
    lot = cat.lots["hepb"]
    receive(client, h["P"], lot, 100)
    accept(client, h["C1"], ship(client, h["P"], world.units["C1"], lot, 100)["transfer"]["id"], 100)
    out = ship(client, h["C1"], world.units["C2"], lot, 60, reason="渭南市短缺，平级调剂")
    req = out["request"]
    assert out["transfer"] is None and req["state"] == "pending" and req["approver_unit_id"] == world.units["P"]
    assert balance(world, "C1", lot) == (100, 60)
    # The reserved doses cannot be spent twice: neither by a second request nor by a direct issue.
    r = client.post(
        f"{API}/stock/transfers", json={"to_unit_id": world.units["C2"], "lot_id": lot, "quantity": 50}, headers=h["C1"]
    )
    assert r.status_code == 409 and error_code(r) == "insufficient_stock" and "已预留 60" in r.text
    r = client.post(
        f"{API}/stock/transfers", json={"to_unit_id": world.units["K1"], "lot_id": lot, "quantity": 41}, headers=h["C1"]
    )
    assert r.status_code == 409 and error_code(r) == "insufficient_stock"
    # Only the approving unit decides; the parties see the request but cannot decide it.
    r = client.post(f"{API}/stock/requests/{req['id']}/decision", json={"approve": True}, headers=h["C1"])
    assert r.status_code == 403
    r = client.post(f"{API}/stock/requests/{req['id']}/decision", json={"approve": True}, headers=h["K2"])
    assert r.status_code == 404
    todo = client.get(f"{API}/stock/requests", params={"role": "to_approve", "state": "pending"}, headers=h["P"])
    assert [x["id"] for x in todo.json()] == [req["id"]]
    r = client.post(
        f"{API}/stock/requests/{req['id']}/decision", json={"approve": True, "note": "同意"}, headers=h["P"]
    )
    assert r.status_code == 200 and r.json()["state"] == "approved" and r.json()["transfer_id"]
    assert balance(world, "C1", lot) == (40, 0)
    r = client.post(f"{API}/stock/requests/{req['id']}/decision", json={"approve": True}, headers=h["P"])
    assert r.status_code == 409 and error_code(r) == "already_decided"
    accept(client, h["C2"], _transfer_of(world, req["id"]), 60)
    assert balance(world, "C2", lot) == (60, 0)
    books_agree(world, lot)


def _transfer_of(world: World, request_id: int) -> int:
    with db.connect(world.url) as conn:
        row = conn.execute("SELECT transfer_id FROM stock_requests WHERE id = %s", (request_id,)).fetchone()
    assert row and row[0]
    return int(row[0])


def test_refusal_and_cancellation_release_the_reservation(
    world: World, cat: Catalogue, client: TestClient, h: dict[str, dict[str, str]]
) -> None:
    lot = cat.lots["hepb"]
    receive(client, h["P"], lot, 100)
    accept(client, h["K1"], ship(client, h["P"], world.units["K1"], lot, 100)["transfer"]["id"], 100)
    first = ship(client, h["K1"], world.units["K2"], lot, 70, reason="调剂")["request"]
    assert first["approver_unit_id"] == world.units["P"]  # counties of two cities: the province decides
    r = client.post(f"{API}/stock/requests/{first['id']}/decision", json={"approve": False}, headers=h["P"])
    assert r.status_code == 422  # a refusal must say why
    r = client.post(
        f"{API}/stock/requests/{first['id']}/decision", json={"approve": False, "note": "渭南库存充足"}, headers=h["P"]
    )
    assert r.json()["state"] == "refused" and balance(world, "K1", lot) == (100, 0)
    second = ship(client, h["K1"], world.units["C1"], lot, 30, reason="退回市级")["request"]
    assert second["kind"] == "return" and second["approver_unit_id"] == world.units["C1"]
    assert balance(world, "K1", lot) == (100, 30)
    r = client.post(f"{API}/stock/requests/{second['id']}/cancel", headers=h["C1"])
    assert r.status_code == 403
    r = client.post(f"{API}/stock/requests/{second['id']}/cancel", headers=h["K1"])
    assert r.json()["state"] == "cancelled" and balance(world, "K1", lot) == (100, 0)


@pytest.mark.parametrize(
    ("src", "dst", "message"),
    [
        ("T1", "T2", "接种单位不能平级出库"),
        ("T1", "C1", "不能越级退回"),
        ("K1", "P", "不能越级退回"),
        ("K1", "C2", "向上只能退回"),
        ("K1", "K1", "不能出库给本单位"),
    ],
)
def test_transfer_rules(
    world: World, cat: Catalogue, client: TestClient, h: dict[str, dict[str, str]], src: str, dst: str, message: str
) -> None:
    r = client.post(
        f"{API}/stock/transfers",
        json={"to_unit_id": world.units[dst], "lot_id": cat.lots["hepb"], "quantity": 1},
        headers=h[src],
    )
    assert r.status_code == 422 and error_code(r) == "rule_violation" and message in r.json()["error"]["message"]


def test_return_up_and_scrap_need_the_level_above(
    world: World, cat: Catalogue, client: TestClient, h: dict[str, dict[str, str]]
) -> None:
    lot = cat.lots["hepb"]
    receive(client, h["P"], lot, 51)
    accept(client, h["T1"], ship(client, h["P"], world.units["T1"], lot, 50)["transfer"]["id"], 50)
    ret = ship(client, h["T1"], world.units["K1"], lot, 5, reason="近效期退回")["request"]
    assert ret["kind"] == "return" and ret["approver_unit_id"] == world.units["K1"]
    r = client.post(f"{API}/stock/requests/{ret['id']}/decision", json={"approve": True}, headers=h["K1"])
    assert r.status_code == 200
    accept(client, h["K1"], r.json()["transfer_id"], 5)
    assert balance(world, "K1", lot) == (5, 0) and balance(world, "T1", lot) == (45, 0)

    r = client.post(f"{API}/stock/scrap", json={"lot_id": lot, "quantity": 3, "reason": "breakage"}, headers=h["T1"])
    req = r.json()["request"]
    assert r.status_code == 201 and req["approver_unit_id"] == world.units["K1"] and r.json()["movement"] is None
    assert balance(world, "T1", lot) == (45, 3)
    r = client.post(f"{API}/stock/requests/{req['id']}/decision", json={"approve": True}, headers=h["K1"])
    assert r.status_code == 200
    scrap = client.get(f"{API}/stock/movements", params={"kind": "scrap"}, headers=h["T1"]).json()
    assert [(m["quantity"], m["reason"], m["request_id"]) for m in scrap] == [(-3, "breakage", req["id"])]
    assert balance(world, "T1", lot) == (42, 0)
    # The province has no level above: its scrap is booked at once.
    r = client.post(f"{API}/stock/scrap", json={"lot_id": lot, "quantity": 1, "reason": "other"}, headers=h["P"])
    assert r.status_code == 422  # "other" must say what
    r = client.post(
        f"{API}/stock/scrap",
        json={"lot_id": lot, "quantity": 1, "reason": "temperature", "note": "冷库停电"},
        headers=h["P"],
    )
    assert r.status_code == 201 and r.json()["request"] is None and r.json()["movement"]["quantity"] == -1
    books_agree(world, lot)


def test_reversal_is_linked_at_most_once_and_never_takes_stock_below_zero(
    world: World, cat: Catalogue, client: TestClient, h: dict[str, dict[str, str]]
) -> None:
    lot = cat.lots["hepb"]
    wrong = receive(client, h["P"], lot, 70)
    r = client.post(f"{API}/stock/movements/{wrong['id']}/reverse", json={"reason": "数量录错"}, headers=h["C1"])
    assert r.status_code == 404  # not in C1's jurisdiction
    r = client.post(f"{API}/stock/movements/{wrong['id']}/reverse", json={"reason": "数量录错"}, headers=h["P"])
    assert r.status_code == 201
    rev = r.json()[0]
    assert rev["kind"] == "reversal" and rev["quantity"] == -70 and rev["reverses_id"] == wrong["id"]
    assert rev["doc_no"].startswith("CX")
    assert client.get(f"{API}/stock/movements/{wrong['id']}", headers=h["P"]).json()["reversed_by"] == rev["id"]
    r = client.post(f"{API}/stock/movements/{wrong['id']}/reverse", json={"reason": "再冲一次"}, headers=h["P"])
    assert r.status_code == 409 and error_code(r) == "already_reversed"
    r = client.post(f"{API}/stock/movements/{rev['id']}/reverse", json={"reason": "冲销冲销"}, headers=h["P"])
    assert r.status_code == 409 and error_code(r) == "not_reversible"

    good = receive(client, h["P"], lot, 100)
    t = ship(client, h["P"], world.units["C1"], lot, 80)["transfer"]
    r = client.post(f"{API}/stock/movements/{good['id']}/reverse", json={"reason": "错录"}, headers=h["P"])
    assert r.status_code == 409 and error_code(r) == "insufficient_stock"
    # Reversing the issue of a transfer still in transit cancels the transfer.
    issue = client.get(f"{API}/stock/movements", params={"kind": "issue"}, headers=h["P"]).json()[0]
    r = client.post(f"{API}/stock/movements/{issue['id']}/reverse", json={"reason": "发错单位"}, headers=h["P"])
    assert r.status_code == 201
    transfers = client.get(f"{API}/stock/transfers", headers=h["P"]).json()
    assert [(x["id"], x["state"]) for x in transfers] == [(t["id"], "cancelled")]
    assert balance(world, "P", lot) == (100, 0)
    r = client.post(f"{API}/stock/transfers/{t['id']}/receive", json={"accepted": 80}, headers=h["C1"])
    assert r.status_code == 409
    books_agree(world, lot)


def test_reversing_a_receipt_puts_the_transfer_back_in_transit(
    world: World, cat: Catalogue, client: TestClient, h: dict[str, dict[str, str]]
) -> None:
    lot = cat.lots["hepb"]
    receive(client, h["P"], lot, 100)
    t = ship(client, h["P"], world.units["C1"], lot, 100)["transfer"]
    got = accept(client, h["C1"], t["id"], 90, rejected=10, reject_reason="冷链中断")
    receipt = next(m for m in got["movements"] if m["kind"] == "transfer_receipt")
    r = client.post(f"{API}/stock/movements/{receipt['id']}/reverse", json={"reason": "数量点错"}, headers=h["C1"])
    assert r.status_code == 201 and len(r.json()) == 2  # the receipt and the rejection booked with it
    assert balance(world, "C1", lot) == (0, 0) and balance(world, "P", lot) == (0, 0)
    accept(client, h["C1"], t["id"], 100)
    assert balance(world, "C1", lot) == (100, 0)
    books_agree(world, lot)


def test_backdated_issue_may_not_make_any_past_balance_negative(
    world: World, cat: Catalogue, client: TestClient, h: dict[str, dict[str, str]]
) -> None:
    lot = cat.lots["hepb"]
    now = datetime.now(UTC).replace(microsecond=0)
    receive(client, h["P"], lot, 100, occurred_at=(now - timedelta(days=3)).isoformat())
    # Today there are 100, but five days ago there were none.
    r = client.post(
        f"{API}/stock/transfers",
        json={
            "to_unit_id": world.units["C1"],
            "lot_id": lot,
            "quantity": 10,
            "occurred_at": (now - timedelta(days=5)).isoformat(),
        },
        headers=h["P"],
    )
    assert r.status_code == 409 and error_code(r) == "insufficient_stock" and "补录" in r.json()["error"]["message"]
    ship(client, h["P"], world.units["C1"], lot, 70, occurred_at=(now - timedelta(days=1)).isoformat())
    # Two days ago there were 100 and 70 left the day after: a backdated 40 would leave −10 then.
    r = client.post(
        f"{API}/stock/transfers",
        json={
            "to_unit_id": world.units["K3"],
            "lot_id": lot,
            "quantity": 40,
            "occurred_at": (now - timedelta(days=2)).isoformat(),
        },
        headers=h["P"],
    )
    assert r.status_code == 409 and error_code(r) == "insufficient_stock"
    ship(client, h["P"], world.units["K3"], lot, 30, occurred_at=(now - timedelta(days=2)).isoformat())
    assert balance(world, "P", lot) == (0, 0)
    with db.connect(world.url) as conn:
        lowest = conn.execute(
            """SELECT min(run) FROM (SELECT sum(quantity) OVER (ORDER BY occurred_at, id) AS run
               FROM stock_movements WHERE unit_id = %s AND lot_id = %s) s""",
            (world.units["P"], lot),
        ).fetchone()
    assert lowest is not None and lowest[0] == 0
    books_agree(world, lot)


def test_count_sets_the_balance_and_every_difference_needs_a_reason(
    world: World, cat: Catalogue, client: TestClient, h: dict[str, dict[str, str]]
) -> None:
    receive(client, h["P"], cat.lots["hepb"], 100)
    receive(client, h["P"], cat.lots["flu"], 20)
    counted = {"lines": [{"lot_id": cat.lots["hepb"], "counted": 97}]}
    r = client.post(f"{API}/stock/counts", json=counted, headers=h["P"])
    assert r.status_code == 422 and error_code(r) == "reason_required"
    assert sorted(d["lot_id"] for d in r.json()["error"]["details"]) == sorted([cat.lots["hepb"], cat.lots["flu"]])
    r = client.post(
        f"{API}/stock/counts",
        json={
            "lines": [
                {"lot_id": cat.lots["hepb"], "counted": 97, "reason": "breakage", "note": "搬运中摔碎 3 支"},
                {"lot_id": cat.lots["flu"], "counted": 20},
            ]
        },
        headers=h["P"],
    )
    assert r.status_code == 201
    assert [(m["kind"], m["quantity"], m["reason"]) for m in r.json()] == [("adjustment", -3, "breakage")]
    assert balance(world, "P", cat.lots["hepb"]) == (97, 0) and balance(world, "P", cat.lots["flu"]) == (20, 0)


def test_day_usage_covers_the_recorded_vaccinations(
    world: World, cat: Catalogue, client: TestClient, h: dict[str, dict[str, str]]
) -> None:
    lot = cat.lots["opv"]  # ten doses a vial
    receive(client, h["P"], lot, 20)
    accept(client, h["T1"], ship(client, h["P"], world.units["T1"], lot, 20)["transfer"]["id"], 20)
    today = datetime.now(UTC)
    for i in range(12):
        r = client.post(
            f"{API}/vaccinations",
            json={"vaccinee_ref": f"HASH{i:08d}", "lot_id": lot, "vaccinated_at": today.isoformat(), "dose_no": 1},
            headers=h["T1"],
        )
        assert r.status_code == 201, r.text
    for personal in ("610113199001011234", "61011319900101123X", "13800138000"):
        r = client.post(
            f"{API}/vaccinations",
            json={"vaccinee_ref": personal, "lot_id": lot, "vaccinated_at": today.isoformat()},
            headers=h["T1"],
        )
        assert r.status_code == 422 and error_code(r) == "personal_data"
    r = client.post(
        f"{API}/vaccinations",
        json={"vaccinee_ref": "HASH0000X", "lot_id": lot, "vaccinated_at": today.isoformat()},
        headers=h["K1"],
    )
    assert r.status_code == 422 and error_code(r) == "rule_violation"  # only sites vaccinate
    day = today.astimezone(BEIJING).date().isoformat()
    r = client.post(f"{API}/stock/usage", json={"day": day, "lines": [{"lot_id": lot, "vials": 1}]}, headers=h["T1"])
    assert r.status_code == 422 and error_code(r) == "usage_below_doses" and "至少需使用 2 支" in r.text
    r = client.post(f"{API}/stock/usage", json={"day": day, "lines": [{"lot_id": lot, "vials": 2}]}, headers=h["T1"])
    assert r.status_code == 201 and r.json()[0]["kind"] == "usage" and r.json()[0]["doc_no"].startswith("JZ")
    assert balance(world, "T1", lot) == (18, 0)
    r = client.post(f"{API}/stock/usage", json={"day": day, "lines": [{"lot_id": lot, "vials": 1}]}, headers=h["K1"])
    assert r.status_code == 422 and error_code(r) == "rule_violation"
    month = day[:7]
    rows = client.get(f"{API}/analysis/wastage", params={"month": month}, headers=h["K1"]).json()
    total = next(x for x in rows if x["area_unit_id"] == world.units["K1"])
    assert (total["vials_used"], total["doses_administered"], total["reference"]) == (2, 12, 1.33)
    assert total["coefficient"] == pytest.approx(20 / 12) and total["flag"] == "over_reference"


def test_ledger_rows_cannot_be_edited_or_deleted(
    world: World, cat: Catalogue, client: TestClient, h: dict[str, dict[str, str]]
) -> None:
    m = receive(client, h["P"], cat.lots["hepb"], 10)
    with db.connect(world.url) as conn:
        for statement in (
            "UPDATE stock_movements SET quantity = 11 WHERE id = %s",
            "DELETE FROM stock_movements WHERE id = %s",
        ):
            with pytest.raises(psycopg.errors.RestrictViolation):
                conn.execute(statement, (m["id"],))
            conn.rollback()
        with pytest.raises(psycopg.errors.CheckViolation):
            conn.execute("UPDATE stock_balances SET on_hand = -1 WHERE lot_id = %s", (cat.lots["hepb"],))


@pytest.mark.parametrize("who", ["ba_K2", "ba_T1", "ba_C1", "ana_K1", "sup_P"])
def test_ledger_is_visible_exactly_within_the_jurisdiction(
    world: World, cat: Catalogue, client: TestClient, h: dict[str, dict[str, str]], who: str
) -> None:
    lot = cat.lots["hepb"]
    receive(client, h["P"], lot, 100)
    for site in ("T1", "T2", "T3"):
        accept(client, h[site], ship(client, h["P"], world.units[site], lot, 20)["transfer"]["id"], 20)
        r = client.post(
            f"{API}/vaccinations",
            json={"vaccinee_ref": f"REF{site}00001", "lot_id": lot, "vaccinated_at": datetime.now(UTC).isoformat()},
            headers=h[site],
        )
        assert r.status_code == 201
    ship(client, h["P"], world.units["K2"], lot, 5)
    with db.connect(world.url) as conn:
        scope = {
            r[0]
            for r in conn.execute(
                "SELECT descendant_id FROM unit_tree WHERE ancestor_id = %s", (world.units[who.split("_", 1)[1]],)
            ).fetchall()
        }
        owners: dict[int, int] = dict(conn.execute("SELECT id, unit_id FROM stock_movements").fetchall())
    headers = bearer(client, who)
    visible = {m for m in owners if client.get(f"{API}/stock/movements/{m}", headers=headers).status_code == 200}
    assert visible == {m for m, unit in owners.items() if unit in scope}
    lists = {
        "movements": {x["unit_id"] for x in client.get(f"{API}/stock/movements", headers=headers).json()},
        "balances": {x["unit_id"] for x in client.get(f"{API}/stock/balances", headers=headers).json()},
        "vaccinations": {x["unit_id"] for x in client.get(f"{API}/vaccinations", headers=headers).json()},
    }
    for name, units in lists.items():
        assert units and units <= scope, name
    transfers = client.get(f"{API}/stock/transfers", headers=headers).json()
    assert all(t["from_unit_id"] in scope or t["to_unit_id"] in scope for t in transfers)
    assert client.get(f"{API}/stock/movements", params={"unit_id": world.units["P"]}, headers=headers).status_code == (
        200 if world.units["P"] in scope else 404
    )
