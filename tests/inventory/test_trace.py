"""Package codes through receipt, transfer and vaccination, and the trace of a lot or a code: the
custody chain with its in-transit leg, the temperatures of the compartments behind each link with
the exact minutes out of range, the vaccinations, and the recall list (VT1, VT4, CM2).
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from apihelp import World, api_client, bearer, error_code
from fastapi.testclient import TestClient
from ledgerhelp import API, FLU_PREFIX, HEPB_GTIN, Catalogue, accept, build_catalogue, cn20, receive, ship

from coldchain.core import db


@pytest.fixture
def cat(world: World) -> Catalogue:
    return build_catalogue(world)


@pytest.fixture
def client(world: World) -> Iterator[TestClient]:
    with api_client(world.url) as c:
        yield c


@pytest.fixture
def h(client: TestClient) -> dict[str, dict[str, str]]:
    return {k: bearer(client, f"ba_{k}") for k in ("P", "C1", "K1", "T1", "K2")}


def box(serial: int, vials: range) -> dict[str, Any]:
    return {"code": cn20(serial), "contents": [{"code": cn20(v)} for v in vials]}


def resolve(client: TestClient, headers: dict[str, str], code: str) -> dict[str, Any]:
    r = client.post(f"{API}/codes/resolve", json={"code": code}, headers=headers)
    assert r.status_code == 200, r.text
    return dict(r.json())


def test_a_code_is_received_once_of_its_own_product_with_its_packing_from_the_receipt(
    world: World, cat: Catalogue, client: TestClient, h: dict[str, dict[str, str]]
) -> None:
    lot = cat.lots["hepb"]
    receive(client, h["P"], lot, 4, packages=[box(1, range(2, 6))])
    seen = resolve(client, h["P"], cn20(1))
    assert (seen["registered"], seen["pack_level"], seen["units"], seen["holder_unit_id"]) == (
        True,
        1,
        4,
        world.units["P"],
    )
    assert resolve(client, h["P"], cn20(3))["pack_level"] == 0

    def refused(packages: list[dict[str, Any]], quantity: int, lot_id: int = lot) -> tuple[int, str, str]:
        r = client.post(
            f"{API}/stock/receipts",
            json={"supplier": "配送公司", "lines": [{"lot_id": lot_id, "quantity": quantity, "packages": packages}]},
            headers=h["P"],
        )
        return r.status_code, error_code(r), r.json()["error"]["message"]

    status, code, message = refused([{"code": cn20(3)}], 1)
    assert (status, code) == (409, "code_already_received") and cn20(3) in message
    status, code, message = refused([{"code": cn20(7, FLU_PREFIX)}], 1)
    assert (status, code) == (422, "code_mismatch") and FLU_PREFIX in message
    status, code, message = refused([box(10, range(11, 13))], 3)
    assert (status, code) == (422, "code_count") and "共 2 支" in message
    status, code, _ = refused([{"code": "86123450000000000001X"}], 1)
    assert (status, code) == (422, "invalid_code")
    status, code, _ = refused([{"code": cn20(20)}, {"code": cn20(20)}], 2)
    assert (status, code) == (422, "duplicate_code")
    gs1_wrong_lot = f"(01){HEPB_GTIN}(10)OTHERLOT(21)S0001"
    status, code, message = refused([{"code": gs1_wrong_lot}], 1)
    assert (status, code) == (422, "code_mismatch") and "OTHERLOT" in message
    gs1 = f"]d2\x1d01{HEPB_GTIN}10202605A01\x1d21S0001"
    receive(client, h["P"], lot, 1, packages=[{"code": gs1}])
    assert resolve(client, h["P"], f"(01){HEPB_GTIN}(21)S0001(10)202605A01")["registered"] is True
    with db.connect(world.url) as conn:
        n = conn.execute("SELECT count(*) FROM package_codes").fetchone()
    assert n is not None and n[0] == 6  # nothing of the refused receipts was kept


def test_codes_move_with_the_transfer_and_a_broken_case_no_longer_moves_whole(
    world: World, cat: Catalogue, client: TestClient, h: dict[str, dict[str, str]]
) -> None:
    lot = cat.lots["hepb"]
    receive(client, h["P"], lot, 8, packages=[box(1, range(2, 6)), box(6, range(7, 11))])
    t = ship(client, h["P"], world.units["T1"], lot, 4, codes=[cn20(1)])["transfer"]
    assert resolve(client, h["P"], cn20(4))["in_transit"] is True
    single = ship(client, h["P"], world.units["T1"], lot, 1, codes=[cn20(7)])["transfer"]
    r = client.post(
        f"{API}/stock/transfers",
        json={"to_unit_id": world.units["T1"], "lot_id": lot, "quantity": 4, "codes": [cn20(6)]},
        headers=h["P"],
    )
    assert r.status_code == 409 and error_code(r) == "code_not_available" and cn20(7) in r.text
    r = client.post(
        f"{API}/stock/transfers",
        json={"to_unit_id": world.units["T1"], "lot_id": lot, "quantity": 2, "codes": [cn20(8)]},
        headers=h["P"],
    )
    assert r.status_code == 422 and error_code(r) == "code_count"
    # A rejection of a transfer shipped by code names the codes that go back.
    r = client.post(
        f"{API}/stock/transfers/{t['id']}/receive",
        json={"accepted": 3, "rejected": 1, "reject_reason": "破损"},
        headers=h["T1"],
    )
    assert r.status_code == 422 and error_code(r) == "code_count"
    accept(client, h["T1"], t["id"], 3, rejected=1, reject_reason="破损", rejected_codes=[cn20(5)])
    assert resolve(client, h["T1"], cn20(3))["holder_unit_id"] == world.units["T1"]
    assert resolve(client, h["P"], cn20(5))["holder_unit_id"] == world.units["P"]
    accept(client, h["T1"], single["id"], 1)
    now = datetime.now(UTC)
    r = client.post(
        f"{API}/vaccinations",
        json={"vaccinee_ref": "PSEUDO0001", "code": cn20(1), "vaccinated_at": now.isoformat()},
        headers=h["T1"],
    )
    assert r.status_code == 422 and "最小包装" in r.json()["error"]["message"]
    r = client.post(
        f"{API}/vaccinations",
        json={"vaccinee_ref": "PSEUDO0001", "code": cn20(3), "vaccinated_at": now.isoformat()},
        headers=h["T1"],
    )
    assert r.status_code == 201 and r.json()["lot_id"] == lot
    r = client.post(
        f"{API}/vaccinations",
        json={"vaccinee_ref": "PSEUDO0002", "code": cn20(3), "vaccinated_at": now.isoformat()},
        headers=h["T1"],
    )
    assert r.status_code == 409 and error_code(r) == "code_used"
    r = client.post(
        f"{API}/vaccinations",
        json={"vaccinee_ref": "PSEUDO0003", "code": cn20(5), "vaccinated_at": now.isoformat()},
        headers=h["T1"],
    )
    assert r.status_code == 409 and error_code(r) == "code_not_available"

    trace = client.get(f"{API}/trace/code", params={"code": cn20(3)}, headers=h["K1"]).json()
    chain = [(c["state"], c["unit_id"]) for c in trace["custody"]]
    assert chain == [("held", world.units["P"]), ("in_transit", None), ("held", world.units["T1"])]
    assert trace["custody"][-1]["end"] is not None  # the vial's custody ends at its vaccination
    assert [(v["vaccinee_ref"], v["code"]) for v in trace["vaccinations"]] == [("PSEUDO0001", cn20(3))]
    assert client.get(f"{API}/trace/code", params={"code": cn20(3)}, headers=h["K2"]).status_code == 404


def add_readings(world: World, probe: int, points: list[tuple[datetime, float]]) -> None:
    with db.connect(world.url) as conn, conn.cursor() as cur:
        cur.executemany(
            "INSERT INTO probe_readings (probe_id, ts, t) VALUES (%s, %s, %s) ON CONFLICT DO NOTHING",
            [(probe, ts, t) for ts, t in points],
        )
        conn.commit()


def test_lot_trace_has_the_chain_the_temperatures_and_the_exact_minutes_out_of_range(
    world: World, cat: Catalogue, client: TestClient, h: dict[str, dict[str, str]]
) -> None:
    lot = cat.lots["hepb"]
    now = datetime.now(UTC).replace(second=7, microsecond=0)
    t_receipt, t_ship, t_arrive = now - timedelta(days=10), now - timedelta(days=8), now - timedelta(days=7)
    fridge = world.compartments["T1/冷藏"]
    probe = world.probes["108601"]
    # Every 5 minutes from an hour before arrival: 4.5 ℃, with two excursions. The first is before the
    # lot arrived and must not count; then one reading above 8 ℃ just after arrival (5 minutes) and
    # three in a row three days ago (15 minutes); a reading exactly at 8.0 is in range.
    points: list[tuple[datetime, float]] = []
    ts = t_arrive - timedelta(hours=1)
    while ts < now - timedelta(hours=1):
        points.append((ts, 4.5))
        ts += timedelta(minutes=5)
    excursion_before = {t_arrive - timedelta(minutes=40), t_arrive - timedelta(minutes=35)}
    start = now - timedelta(days=3)
    excursion = {start, start + timedelta(minutes=5), start + timedelta(minutes=10)}
    on_limit = start + timedelta(hours=5)
    at_edge = t_arrive + timedelta(minutes=5)  # in the partial hour of arrival: read from the readings
    values = {p: 12.0 for p in excursion_before} | {p: 9.0 for p in excursion} | {on_limit: 8.0, at_edge: 9.5}
    add_readings(world, probe, [(p, values.get(p, t)) for p, t in points])

    receive(client, h["P"], lot, 100, occurred_at=t_receipt.isoformat())
    t = ship(client, h["P"], world.units["T1"], lot, 40, occurred_at=t_ship.isoformat())["transfer"]
    accept(client, h["T1"], t["id"], 40, compartment_id=fridge, occurred_at=t_arrive.isoformat())
    r = client.post(
        f"{API}/vaccinations",
        json={
            "vaccinee_ref": "PSEUDO0042",
            "lot_id": lot,
            "dose_no": 2,
            "vaccinated_at": (now - timedelta(days=1)).isoformat(),
        },
        headers=h["T1"],
    )
    assert r.status_code == 201

    trace = client.get(f"{API}/trace/lots/{lot}", headers=h["P"]).json()
    chain = {(c["state"], c["unit_id"]): c for c in trace["custody"]}
    assert set(chain) == {("held", world.units["P"]), ("in_transit", None), ("held", world.units["T1"])}
    transit = chain[("in_transit", None)]
    assert (transit["from_unit_id"], transit["to_unit_id"]) == (world.units["P"], world.units["T1"])
    assert _ts(transit["start"]) == t_ship and _ts(transit["end"]) == t_arrive
    site = chain[("held", world.units["T1"])]
    assert _ts(site["start"]) == t_arrive and site["end"] is None
    [store] = site["storage"]
    assert store["compartment_id"] == fridge and store["assumed"] is False
    assert store["minutes_out_of_range"] == pytest.approx(20.0)
    assert [(_ts(x["start"]), x["minutes"], x["max_t"]) for x in store["excursions"]] == [
        (at_edge, 5.0, 9.5),
        (start, 15.0, 9.0),
    ]
    assert store["max_t"] == 9.5 and store["t_max"] == 8.0 and store["min_t"] == 4.5
    days = store["days"]
    beijing = ZoneInfo("Asia/Shanghai")
    # Every Beijing day with a reading of the probe since arrival — the world's own recent readings
    # included, which fall on the next Beijing day when the test runs between 16:00 and 24:00 UTC.
    with db.connect(world.url) as conn:
        stored = [
            r[0]
            for r in conn.execute(
                "SELECT ts FROM probe_readings WHERE probe_id = %s AND ts >= %s", (probe, t_arrive)
            ).fetchall()
        ]
    assert days["day"] == sorted({p.astimezone(beijing).date().isoformat() for p in stored})
    assert all(lo <= mean <= hi for lo, mean, hi in zip(days["min_t"], days["mean_t"], days["max_t"], strict=True))
    assert trace["minutes_out_of_range"] == pytest.approx(20.0)
    assert chain[("held", world.units["P"])]["storage"] == []  # the province has no monitored store here
    assert [(v["vaccinee_ref"], v["dose_no"]) for v in trace["vaccinations"]] == [("PSEUDO0042", 2)]
    assert sorted((x["unit_id"], x["on_hand"]) for x in trace["holders"]) == sorted(
        [(world.units["P"], 60), (world.units["T1"], 40)]
    )

    # The county sees the whole chain of a lot its jurisdiction held; another county does not.
    assert client.get(f"{API}/trace/lots/{lot}", headers=h["K1"]).status_code == 200
    assert client.get(f"{API}/trace/lots/{lot}", headers=h["K2"]).status_code == 404


def test_recall_list_includes_stock_in_transit_and_unassigned_storage_is_marked_assumed(
    world: World, cat: Catalogue, client: TestClient, h: dict[str, dict[str, str]]
) -> None:
    lot = cat.lots["hepb2"]
    receive(client, h["P"], lot, 30)
    accept(client, h["T1"], ship(client, h["P"], world.units["T1"], lot, 10)["transfer"]["id"], 10)
    moving = ship(client, h["P"], world.units["C1"], lot, 15)["transfer"]
    holders = client.get(f"{API}/lots/{lot}/holders", headers=h["P"]).json()
    assert sorted((x["unit_id"], x["on_hand"], x["transfer_id"]) for x in holders) == sorted(
        [(world.units["P"], 5, None), (world.units["T1"], 10, None), (world.units["C1"], 15, moving["id"])]
    )
    assert [x["unit_id"] for x in client.get(f"{API}/lots/{lot}/holders", headers=h["K1"]).json()] == [
        world.units["T1"]
    ]
    trace = client.get(f"{API}/trace/lots/{lot}", headers=h["T1"]).json()
    site = next(c for c in trace["custody"] if c["unit_id"] == world.units["T1"])
    assert [(s["compartment_id"], s["assumed"]) for s in site["storage"]] == [(world.compartments["T1/冷藏"], True)]


def _ts(value: str) -> datetime:
    return datetime.fromisoformat(value).astimezone(UTC)


def test_piecewise_temperatures_equal_the_raw_readings_for_any_boundaries(world: World) -> None:
    """Whole days from the daily aggregate, edge hours from the hourly one, edge minutes from the
    readings: for random custody boundaries the result must equal a plain scan of the readings,
    with the aggregates partly materialised and partly live."""
    import random

    from analytics.aggregates import refresh_aggregates
    from inventory.custody import Interval
    from inventory.exposure import Segment, out_of_range_minutes, temperatures

    rng = random.Random(24)
    probe, fridge = world.probes["208601"], world.compartments["T2/冷藏"]
    t0 = datetime(2026, 3, 1, 15, 2, 11, tzinfo=UTC)
    points = [
        (t0 + timedelta(minutes=5 * i + rng.choice([0, 0, 1])), rng.choice([4.0, 5.5, 7.9, 8.0, 8.4, 1.2]))
        for i in range(12 * 24 * 4)
    ]
    add_readings(world, probe, points)
    refresh_aggregates(world.url, until=t0 + timedelta(days=2, hours=7))
    segments = []
    for key in range(25):
        lo = t0 + timedelta(minutes=rng.randint(-60, 3 * 24 * 60))
        hi = lo + timedelta(minutes=rng.choice([7, 55, 61, 600, 1440, 1500, 2900, 4000]))
        segments.append(Segment(key, Interval(world.units["T2"], lo, hi), fridge, lo, hi))
    segments.append(
        Segment(
            25,
            Interval(world.units["T2"], t0, t0),
            fridge,
            datetime(2026, 3, 2, 16, tzinfo=UTC),
            datetime(2026, 3, 3, 16, tzinfo=UTC),
        )
    )
    with db.connect(world.url) as conn:
        got = temperatures(conn, segments)
    for s in segments:
        inside = sorted((ts, t) for ts, t in points if s.start <= ts < s.end)
        g = got[s.key]
        assert g["readings"] == len(inside), s
        if inside:
            assert (g["min_t"], g["max_t"]) == (min(t for _, t in inside), max(t for _, t in inside))
            assert g["mean_t"] == pytest.approx(sum(t for _, t in inside) / len(inside))
        following = [(ts, t) for ts, t in sorted(points) if ts >= s.end][:1]
        before = [(ts, t) for ts, t in sorted(points) if ts < s.start][-1:]
        expected = out_of_range_minutes(before + inside + following, 2.0, 8.0, s.start, s.end)
        assert g["minutes_out_of_range"] == pytest.approx(expected), s
