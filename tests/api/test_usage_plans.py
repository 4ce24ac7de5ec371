"""Monthly usage plans (VT5) over real HTTP and a real database: the form is pre-filled from
what the ledger says happened last month (corrections counted in the month they correct), a
township's plan is reviewed by its county, and higher levels plan to the level above — a plan is
decided only by the unit above, so each refusal is checked alongside the success it guards.
"""

from __future__ import annotations

from datetime import date, datetime, time, timedelta
from typing import Any

from apihelp import World, error_code
from fastapi.testclient import TestClient
from ledgerhelp import API, Catalogue, Headers, accept, message, receive, ship

from coldchain.core.terms import BEIJING

# ---------------------------------------------------------------------------------------------
# Usage plans (VT5)


def china_today() -> date:
    return datetime.now(BEIJING).date()


def month_of(day: date) -> str:
    return day.strftime("%Y-%m")


def previous_month_day(day_of_month: int) -> date:
    first = china_today().replace(day=1)
    return (first - timedelta(days=1)).replace(day=day_of_month)


def at(day: date, hour: int) -> str:
    return datetime.combine(day, time(hour), BEIJING).isoformat()


def book_history(world: World, cat: Catalogue, client: TestClient, h: dict[str, Headers]) -> None:
    """History in which every pre-filled number differs from the others and from zero, so a query
    that mixed them up, or counted the wrong month, could not pass. Last month the province receives
    100 hepb (3rd) and issues 40 to T1 (4th, accepted 5th); T1 vaccinates 3 and books 4 vials on the
    10th. Today's extra dose and vial must count in the stock but not in last month."""
    lot = cat.lots["hepb"]
    receive(client, h["P"], lot, 100, occurred_at=at(previous_month_day(3), 9))
    t = ship(client, h["P"], world.units["T1"], lot, 40, occurred_at=at(previous_month_day(4), 9))["transfer"]
    accept(client, h["T1"], t["id"], 40, occurred_at=at(previous_month_day(5), 9))
    day = previous_month_day(10)
    for i in range(3):
        r = client.post(
            f"{API}/vaccinations",
            json={"vaccinee_ref": f"CHILD{i:06d}", "lot_id": lot, "vaccinated_at": at(day, 9 + i), "dose_no": 1},
            headers=h["T1"],
        )
        assert r.status_code == 201, r.text
    r = client.post(
        f"{API}/stock/usage", json={"day": day.isoformat(), "lines": [{"lot_id": lot, "vials": 4}]}, headers=h["T1"]
    )
    assert r.status_code == 201, r.text
    now = datetime.now(BEIJING)
    r = client.post(
        f"{API}/vaccinations",
        json={"vaccinee_ref": "CHILD999999", "lot_id": lot, "vaccinated_at": now.isoformat()},
        headers=h["T1"],
    )
    assert r.status_code == 201, r.text
    r = client.post(
        f"{API}/stock/usage",
        json={"day": now.date().isoformat(), "lines": [{"lot_id": lot, "vials": 1}]},
        headers=h["T1"],
    )
    assert r.status_code == 201, r.text


def prefill_of(client: TestClient, headers: Headers, month: str) -> dict[int, tuple[int, int, int]]:
    r = client.get(f"{API}/usage-plans/prefill", params={"month": month}, headers=headers)
    assert r.status_code == 200, r.text
    return {x["spec_id"]: (x["prev_usage"], x["administered"], x["stock"]) for x in r.json()}


def lines_of(plan: dict[str, Any]) -> dict[int, tuple[int, int, int, int]]:
    return {x["spec_id"]: (x["prev_usage"], x["administered"], x["stock"], x["planned"]) for x in plan["lines"]}


def test_prefill_reads_last_month_from_the_ledger(
    world: World, cat: Catalogue, client: TestClient, h: dict[str, Headers]
) -> None:
    """The plan is checked against what the ledger says happened last month; each level sees its
    own outflow and stock but the doses given anywhere in its jurisdiction."""
    book_history(world, cat, client, h)
    month = month_of(china_today())
    hepb = cat.specs["hepb"]
    assert prefill_of(client, h["T1"], month) == {hepb: (4, 3, 35)}
    assert prefill_of(client, h["K1"], month) == {hepb: (0, 3, 0)}
    assert prefill_of(client, h["P"], month) == {hepb: (40, 3, 60)}  # its issue to T1 left the province
    assert prefill_of(client, h["T2"], month) == {}
    # Looking at the plan for last month, the month before it was empty; the stock is today's.
    assert prefill_of(client, h["T1"], month_of(previous_month_day(1))) == {hepb: (0, 0, 35)}
    r = client.get(f"{API}/usage-plans/prefill", params={"month": "2026-13"}, headers=h["T1"])
    assert r.status_code == 422


def next_month() -> str:
    first = china_today().replace(day=1)
    return month_of((first + timedelta(days=32)).replace(day=1))


def test_prefill_nets_corrections_into_the_month_they_correct(
    world: World, cat: Catalogue, client: TestClient, h: dict[str, Headers]
) -> None:
    """A reversal is booked today but undoes last month's usage, and vials a township refused went
    back to the county: counting either in the month it was booked would overstate last month and
    leave this month negative, which the plan table refuses (prev_usage >= 0), blocking next
    month's plan altogether."""
    lot, other = cat.lots["hepb"], cat.lots["hepb2"]  # two lots of the same spec
    for each, quantity in ((lot, 50), (other, 20)):
        receive(client, h["P"], each, quantity, occurred_at=at(previous_month_day(3), 9))
        t = ship(client, h["P"], world.units["K1"], each, quantity, occurred_at=at(previous_month_day(4), 9))
        accept(client, h["K1"], t["transfer"]["id"], quantity, occurred_at=at(previous_month_day(5), 9))
    t = ship(client, h["K1"], world.units["T1"], lot, 30, occurred_at=at(previous_month_day(6), 9))
    accept(client, h["T1"], t["transfer"]["id"], 30, occurred_at=at(previous_month_day(7), 9))
    t = ship(client, h["K1"], world.units["T1"], other, 10, occurred_at=at(previous_month_day(8), 9))
    accept(client, h["T1"], t["transfer"]["id"], 6, rejected=4, reject_reason="外包装破损")  # received today
    day = previous_month_day(10).isoformat()
    r = client.post(f"{API}/stock/usage", json={"day": day, "lines": [{"lot_id": lot, "vials": 4}]}, headers=h["T1"])
    assert r.status_code == 201, r.text
    wrong = r.json()[0]["id"]
    r = client.post(f"{API}/stock/movements/{wrong}/reverse", json={"reason": "数量录错"}, headers=h["T1"])
    assert r.status_code == 201, r.text
    r = client.post(f"{API}/stock/usage", json={"day": day, "lines": [{"lot_id": lot, "vials": 3}]}, headers=h["T1"])
    assert r.status_code == 201, r.text

    hepb = cat.specs["hepb"]
    this = month_of(china_today())
    # T1: 4 booked, reversed, 3 booked. K1: 30 + 10 issued, 4 of them refused and back.
    assert prefill_of(client, h["T1"], this) == {hepb: (3, 0, 30 - 3 + 6)}
    assert prefill_of(client, h["K1"], this) == {hepb: (36, 0, 20 + 10 + 4)}
    assert prefill_of(client, h["T1"], next_month()) == {hepb: (0, 0, 33)}
    assert prefill_of(client, h["K1"], next_month()) == {hepb: (0, 0, 34)}
    lines = [{"spec_id": hepb, "planned": 20}]
    for who in ("T1", "K1"):
        r = client.post(f"{API}/usage-plans", json={"month": next_month(), "lines": lines}, headers=h[who])
        assert r.status_code == 201, (who, r.text)
        assert lines_of(r.json())[hepb][0] == 0


def test_township_plan_is_reviewed_by_its_county(
    world: World, cat: Catalogue, client: TestClient, h: dict[str, Headers]
) -> None:
    """The county's approval is what the township is supplied against, so the numbers it approves
    must be the ledger's, a return must tell the township why, only the county may decide, and an
    approved plan must not change underneath it."""
    book_history(world, cat, client, h)
    month = month_of(china_today())
    hepb, opv = cat.specs["hepb"], cat.specs["opv"]
    lines: list[dict[str, Any]] = [{"spec_id": hepb, "planned": 40, "note": "含补种"}, {"spec_id": opv, "planned": 5}]

    # The pre-filled numbers are the server's: a client cannot send its own.
    forged = [{**lines[0], "prev_usage": 999, "stock": 0}, lines[1]]
    r = client.post(f"{API}/usage-plans", json={"month": month, "lines": forged}, headers=h["T1"])
    assert r.status_code == 422 and error_code(r) == "invalid_request" and "prev_usage" in r.text
    r = client.post(f"{API}/usage-plans", json={"month": month, "lines": [lines[0], lines[0]]}, headers=h["T1"])
    assert r.status_code == 422
    r = client.post(f"{API}/usage-plans", json={"month": month, "lines": lines}, headers=h["sup_P"])
    assert r.status_code == 403

    r = client.post(f"{API}/usage-plans", json={"month": month, "lines": lines}, headers=h["T1"])
    assert r.status_code == 201, r.text
    plan = r.json()
    assert (plan["state"], plan["unit_id"], plan["reviewer_unit_id"], plan["month"], plan["version"]) == (
        "draft",
        world.units["T1"],
        world.units["K1"],
        f"{month}-01",
        1,
    )
    assert lines_of(plan) == {hepb: (4, 3, 35, 40), opv: (0, 0, 0, 5)}
    assert next(x["note"] for x in plan["lines"] if x["spec_id"] == hepb) == "含补种"
    r = client.post(f"{API}/usage-plans", json={"month": month, "lines": lines}, headers=h["T1"])
    assert r.status_code == 409 and error_code(r) == "plan_exists"
    # A draft is the township's own business until submitted.
    assert client.get(f"{API}/usage-plans", params={"role": "to_review"}, headers=h["K1"]).json() == []
    pid = plan["id"]
    base = f"{API}/usage-plans/{pid}"

    # A usage booked late for last month is in the numbers the reviewer sees: submission refreshes them.
    r = client.post(
        f"{API}/stock/usage",
        json={"day": previous_month_day(11).isoformat(), "lines": [{"lot_id": cat.lots["hepb"], "vials": 1}]},
        headers=h["T1"],
    )
    assert r.status_code == 201, r.text
    r = client.post(f"{base}/submit", json={"version": 1}, headers=h["T1"])
    assert r.status_code == 200, r.text
    plan = r.json()
    assert (plan["state"], plan["version"]) == ("submitted", 2) and plan["submitted_at"] is not None
    assert lines_of(plan)[hepb] == (5, 3, 34, 40)

    todo = client.get(f"{API}/usage-plans", params={"role": "to_review", "month": month}, headers=h["K1"]).json()
    assert [x["id"] for x in todo] == [pid]
    assert client.get(f"{API}/usage-plans", params={"role": "to_review"}, headers=h["C1"]).json() == []
    assert [x["id"] for x in client.get(f"{API}/usage-plans", params={"role": "mine"}, headers=h["T1"]).json()] == [pid]
    # C1 is in charge of K1's area and so may read T1's plan, but the decision is K1's: 403, not 404.
    assert client.get(base, headers=h["C1"]).status_code == 200
    r = client.post(f"{base}/decision", json={"version": 2, "approve": True}, headers=h["C1"])
    assert r.status_code == 403 and error_code(r) == "forbidden"
    # Outside the jurisdiction the plan does not exist at all.
    r = client.post(f"{base}/decision", json={"version": 2, "approve": True}, headers=h["K2"])
    assert r.status_code == 404
    r = client.post(f"{base}/decision", json={"version": 2, "approve": True}, headers=h["ana_K1"])
    assert r.status_code == 403
    # While submitted, the township cannot change it.
    r = client.put(f"{base}/lines", json={"version": 2, "lines": lines}, headers=h["T1"])
    assert r.status_code == 409 and error_code(r) == "plan_state"

    r = client.post(f"{base}/decision", json={"version": 2, "approve": False}, headers=h["K1"])
    assert r.status_code == 422 and "原因" in message(r)
    reason = "乙肝疫苗计划偏高，请按上月使用量调整"
    r = client.post(f"{base}/decision", json={"version": 2, "approve": False, "reason": reason}, headers=h["K1"])
    assert r.status_code == 200, r.text
    plan = r.json()
    assert (plan["state"], plan["return_reason"], plan["decided_by"], plan["version"]) == (
        "returned",
        reason,
        world.users["ba_K1"],
        3,
    )

    new_lines = [{"spec_id": hepb, "planned": 30}, {"spec_id": opv, "planned": 5}]
    r = client.put(f"{base}/lines", json={"version": 3, "lines": new_lines}, headers=h["K1"])
    assert r.status_code == 403  # the reviewer does not write the township's plan
    r = client.put(f"{base}/lines", json={"version": 2, "lines": new_lines}, headers=h["T1"])
    assert r.status_code == 409 and error_code(r) == "version_conflict"
    r = client.put(f"{base}/lines", json={"version": 3, "lines": new_lines}, headers=h["T1"])
    assert r.status_code == 200, r.text
    plan = r.json()
    assert (plan["state"], plan["version"]) == ("returned", 4)
    assert lines_of(plan) == {hepb: (5, 3, 34, 30), opv: (0, 0, 0, 5)}
    r = client.post(f"{base}/submit", json={"version": 4}, headers=h["T1"])
    assert r.status_code == 200 and r.json()["state"] == "submitted"

    r = client.post(f"{base}/decision", json={"version": 5, "approve": True}, headers=h["K1"])
    assert r.status_code == 200, r.text
    plan = r.json()
    assert (plan["state"], plan["return_reason"], plan["version"]) == ("approved", None, 6)

    r = client.put(f"{base}/lines", json={"version": 6, "lines": lines}, headers=h["T1"])
    assert r.status_code == 409 and error_code(r) == "plan_state"
    r = client.post(f"{base}/submit", json={"version": 6}, headers=h["T1"])
    assert r.status_code == 409 and error_code(r) == "plan_state"
    r = client.post(f"{base}/decision", json={"version": 6, "approve": False, "reason": "撤销批准"}, headers=h["K1"])
    assert r.status_code == 409 and error_code(r) == "plan_state"
    assert lines_of(client.get(base, headers=h["T1"]).json())[hepb][3] == 30


def test_higher_levels_plan_to_the_level_above(
    world: World, cat: Catalogue, client: TestClient, h: dict[str, Headers]
) -> None:
    """A county reports to its city, a county under the province (韩城) to the province, and the
    province, with nobody above it, makes no plan."""
    month = month_of(china_today())
    lines = [{"spec_id": cat.specs["hepb"], "planned": 200}]
    r = client.post(f"{API}/usage-plans", json={"month": month, "lines": lines}, headers=h["K1"])
    assert r.status_code == 201, r.text
    plan = r.json()
    assert plan["reviewer_unit_id"] == world.units["C1"]
    r = client.post(f"{API}/usage-plans/{plan['id']}/submit", json={"version": 1}, headers=h["K1"])
    assert r.status_code == 200
    todo = client.get(f"{API}/usage-plans", params={"role": "to_review"}, headers=h["C1"]).json()
    assert [x["id"] for x in todo] == [plan["id"]]
    r = client.post(f"{API}/usage-plans/{plan['id']}/decision", json={"version": 2, "approve": True}, headers=h["K1"])
    assert r.status_code == 403  # nobody approves their own plan
    r = client.post(f"{API}/usage-plans/{plan['id']}/decision", json={"version": 2, "approve": True}, headers=h["C1"])
    assert r.status_code == 200 and r.json()["state"] == "approved" and r.json()["decided_by"] == world.users["ba_C1"]

    r = client.post(f"{API}/usage-plans", json={"month": month, "lines": lines}, headers=h["K3"])
    assert r.status_code == 201 and r.json()["reviewer_unit_id"] == world.units["P"]

    r = client.post(f"{API}/usage-plans", json={"month": month, "lines": lines}, headers=h["P"])
    assert r.status_code == 422 and error_code(r) == "invalid" and "省级" in message(r)
