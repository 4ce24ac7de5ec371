"""The pure ledger logic without a database: transfer routes over the unit tree (VT8, VT10), count
differences, vials for doses, custody from movements, minutes out of range, stock status and the
wastage coefficient (VT9, VT11)."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta

import pytest

from inventory.analysis import stock_status, wastage
from inventory.custody import Movement, code_custody, lot_custody
from inventory.exposure import out_of_range_minutes
from inventory.rules import (
    Node,
    RuleError,
    check_not_expired,
    count_differences,
    lowest_common_ancestor,
    scrap_route,
    transfer_route,
    vials_needed,
)

# P ─┬─ C1 ─┬─ K1 ─┬─ T1
#    │      │      └─ T1b
#    │      └─ K1b ── T1c
#    ├─ C2 ── K2 ── T2
#    └─ K3 ── T3            (韩城: a county straight under the province)
P = Node(1, "province", ())
C1 = Node(2, "city", (1,))
K1 = Node(3, "county", (1, 2))
T1 = Node(4, "township", (1, 2, 3))
T1b = Node(5, "township", (1, 2, 3))
K1b = Node(6, "county", (1, 2))
T1c = Node(7, "township", (1, 2, 6))
C2 = Node(8, "city", (1,))
K2 = Node(9, "county", (1, 8))
T2 = Node(10, "township", (1, 8, 9))
K3 = Node(11, "county", (1,))
T3 = Node(12, "township", (1, 11))


@pytest.mark.parametrize(
    ("src", "dst", "kind", "approver"),
    [
        (P, C1, "issue", None),
        (P, T1, "issue", None),  # anywhere down its own tree
        (C1, T1, "issue", None),
        (K1, T1, "issue", None),
        (T1, K1, "return", K1.id),  # back up: the parent approves
        (K1, C1, "return", C1.id),
        (K3, P, "return", P.id),  # 韩城's level above is the province
        (C1, C2, "issue", P.id),  # same level: the unit above both
        (K1, K1b, "issue", C1.id),
        (K1, K2, "issue", P.id),
        (K1, K3, "issue", P.id),
        (C1, K2, "issue", P.id),  # lower, but another jurisdiction
        (K1, T1c, "issue", C1.id),
    ],
)
def test_transfer_routes(src: Node, dst: Node, kind: str, approver: int | None) -> None:
    route = transfer_route(src, dst)
    assert (route.kind, route.approver, route.needs_approval) == (kind, approver, approver is not None)


@pytest.mark.parametrize(
    ("src", "dst", "words"),
    [
        (T1, T1b, "接种单位不能平级出库"),
        (T1, T2, "接种单位不能平级出库"),
        (T1, C1, "不能越级退回"),
        (K1, P, "不能越级退回"),
        (K1, C2, "向上只能退回"),
        (T1, K2, "向上只能退回"),
        (C1, C1, "不能出库给本单位"),
        (C1, Node(2, "city", (1,), "西安", active=True), "不能出库给本单位"),
        (K1, Node(99, "county", (1, 2), "已撤销区", active=False), "已停用"),
    ],
)
def test_transfer_refusals(src: Node, dst: Node, words: str) -> None:
    with pytest.raises(RuleError, match=words):
        transfer_route(src, dst)


def test_lowest_common_ancestor_and_scrap_approver() -> None:
    assert lowest_common_ancestor(T1, T1b) == K1.id
    assert lowest_common_ancestor(T1, T2) == P.id
    assert lowest_common_ancestor(K1, T1) == K1.id
    assert scrap_route(T1).approver == K1.id and scrap_route(K3).approver == P.id
    assert scrap_route(P).approver is None  # the province books its own scrap


def test_expired_lots_only_go_back_or_to_scrap() -> None:
    expiry = date(2026, 5, 31)
    check_not_expired("issue", expiry, expiry)  # valid through its last day
    for kind in ("receipt", "issue", "usage", "vaccination"):
        with pytest.raises(RuleError, match="失效"):
            check_not_expired(kind, expiry, expiry + timedelta(days=1))
    for kind in ("return", "scrap"):
        check_not_expired(kind, expiry, expiry + timedelta(days=100))


def test_count_differences_treat_an_uncounted_lot_as_zero() -> None:
    assert count_differences({1: 10, 2: 5, 3: 7}, {1: 10, 2: 4, 4: 2}) == {2: -1, 3: -7, 4: 2}
    assert count_differences({1: 3}, {1: 3}) == {}


@pytest.mark.parametrize(
    ("doses", "per_vial", "vials"), [(0, 10, 0), (1, 10, 1), (10, 10, 1), (11, 10, 2), (12, 1, 12)]
)
def test_vials_needed(doses: int, per_vial: int, vials: int) -> None:
    assert vials_needed(doses, per_vial) == vials


T0 = datetime(2026, 11, 1, tzinfo=UTC)


def at(minutes: float) -> datetime:
    return T0 + timedelta(minutes=minutes)


def test_lot_custody_follows_the_running_balance_per_unit() -> None:
    moves = [
        Movement(1, "receipt", P.id, 100, at(0), compartment_id=50),
        Movement(2, "issue", P.id, -100, at(10), transfer_id=7),
        Movement(3, "transfer_receipt", C1.id, 100, at(20), transfer_id=7, compartment_id=60),
        Movement(4, "receipt", P.id, 5, at(30)),
        Movement(5, "issue", C1.id, -40, at(40)),
        Movement(6, "usage", C1.id, -60, at(50)),
    ]
    custody = lot_custody(moves)
    assert [(c.unit_id, c.start, c.end, c.compartments) for c in custody] == [
        (P.id, at(0), at(10), {50}),
        (C1.id, at(20), at(50), {60}),
        (P.id, at(30), None, set()),
    ]


def test_code_custody_includes_transit_and_ends_at_vaccination() -> None:
    moves = [
        Movement(1, "receipt", P.id, 10, at(0)),
        Movement(2, "issue", P.id, -10, at(10), transfer_id=3),
        Movement(3, "transfer_receipt", T1.id, 10, at(30), transfer_id=3, compartment_id=9),
    ]
    custody = code_custody(moves, used_at=at(90))
    assert [(c.unit_id, c.transfer_id, c.start, c.end) for c in custody] == [
        (P.id, None, at(0), at(10)),
        (None, 3, at(10), at(30)),
        (T1.id, None, at(30), at(90)),
    ]


def test_minutes_out_of_range_carry_each_reading_forward_with_a_cap() -> None:
    readings = [(at(0), 4.0), (at(5), 9.0), (at(10), 9.1), (at(15), 8.0), (at(20), 1.5), (at(25), 5.0)]
    assert out_of_range_minutes(readings, 2.0, 8.0, at(0), at(60)) == 15.0  # 9.0, 9.1, 1.5; 8.0 is in range
    assert out_of_range_minutes(readings, 2.0, 8.0, at(7), at(22)) == 10.0  # clipped: 3 + 5 + 2
    assert out_of_range_minutes(readings, None, 8.0, at(0), at(60)) == 10.0  # no lower limit (frozen)
    silent = [(at(0), 12.0), (at(120), 4.0)]
    assert out_of_range_minutes(silent, 2.0, 8.0, at(0), at(200)) == 30.0  # silence is not an excursion
    assert out_of_range_minutes([], 2.0, 8.0, at(0), at(60)) == 0.0


@pytest.mark.parametrize(
    ("on_hand", "monthly", "months", "status"),
    [
        (100, 100.0, 1.0, "normal"),
        (40, 100.0, 0.4, "shortage"),
        (350, 100.0, 3.5, "overstock"),
        (300, 100.0, 3.0, "normal"),
        (50, 100.0, 0.5, "normal"),
        (10, 0.0, None, "idle"),
        (0, 0.0, None, "empty"),
    ],
)
def test_stock_status(on_hand: int, monthly: float, months: float | None, status: str) -> None:
    found = stock_status(on_hand, monthly)
    assert found.status == status and found.months == (None if months is None else pytest.approx(months))


@pytest.mark.parametrize(
    ("vials", "per_vial", "doses", "reference", "coefficient", "flag"),
    [
        (105, 1, 100, 1.05, 1.05, "normal"),
        (106, 1, 100, 1.05, 1.06, "over_reference"),
        (2, 10, 12, 1.33, 20 / 12, "over_reference"),
        (2, 10, 16, 1.33, 1.25, "normal"),
        (9, 1, 10, 1.05, 0.9, "below_one"),
        (0, 1, 0, 1.05, None, "no_vaccinations"),
        (3, 1, 0, 1.05, None, "used_without_vaccinations"),
    ],
)
def test_wastage(vials: int, per_vial: int, doses: int, reference: float, coefficient: float | None, flag: str) -> None:
    w = wastage(vials, per_vial, doses, reference)
    assert w.flag == flag
    assert w.coefficient == (None if coefficient is None else pytest.approx(coefficient))
