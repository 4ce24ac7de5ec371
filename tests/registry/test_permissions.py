"""The UM1 permission matrix as pure functions (no database): who may manage which user, and who writes.

A small tree, with the parent links the rules follow (韩城市 reports straight to the province):

    P 陕西省 ─┬─ C1 西安市 ─┬─ K1 雁塔区 ─┬─ T1  电子城
              │             │             └─ T1b 小寨路
              │             └─ K4 碑林区 ─── T4  张家村
              ├─ C2 渭南市 ─── K2 临渭区 ─── T2  向阳
              └─ K3 韩城市 ─── T3 龙门镇

Users are written ``ROLE@UNIT``: SA system_admin, BA business_admin, SUP supervisor, ANA analyst.
Ids are deliberately unrelated to the tree's shape, so only the parent links can decide.
"""

from __future__ import annotations

from itertools import count

import pytest

from coldchain.core.terms import Level, Role
from registry.permissions import (
    LEVELS,
    ROLES,
    WRITER_ROLES,
    Actor,
    UnitRef,
    manager_unit,
    may_manage_user,
    may_write,
    role_allowed_at,
)

# key: (id, level, parent key)
_TREE: dict[str, tuple[int, Level, str | None]] = {
    "P": (501, "province", None),
    "C1": (37, "city", "P"),
    "C2": (912, "city", "P"),
    "K1": (44, "county", "C1"),
    "K4": (3, "county", "C1"),
    "K2": (610, "county", "C2"),
    "K3": (128, "county", "P"),
    "T1": (7, "township", "K1"),
    "T1b": (808, "township", "K1"),
    "T4": (19, "township", "K4"),
    "T2": (255, "township", "K2"),
    "T3": (64, "township", "K3"),
}
UNITS: dict[str, UnitRef] = {
    key: UnitRef(uid, level, _TREE[parent][0] if parent else None) for key, (uid, level, parent) in _TREE.items()
}
ROLE_OF: dict[str, Role] = {"SA": "system_admin", "BA": "business_admin", "SUP": "supervisor", "ANA": "analyst"}
ABBREV = {role: abbr for abbr, role in ROLE_OF.items()}
_user_ids = count(1000)


def parse(who: str) -> tuple[Role, UnitRef]:
    """``"SA@C1"`` → (system_admin, 西安市)."""
    abbr, _, key = who.partition("@")
    return ROLE_OF[abbr], UNITS[key]


def actor(who: str) -> Actor:
    role, unit = parse(who)
    return Actor(next(_user_ids), role, unit)


def manages(who: str, target: str) -> bool:
    role, unit = parse(target)
    return may_manage_user(actor(who), role, unit)


# Every user that can exist in the tree: SUP only at the province, no SA at a township.
ALL_USERS: list[str] = [
    f"{ABBREV[role]}@{key}"
    for key, unit in UNITS.items()
    for role in ROLES
    if role_allowed_at(role, unit.level) is None
]


def test_the_tree_is_what_the_docstring_draws() -> None:
    assert UNITS["K3"].parent_id == UNITS["P"].id  # 韩城市: a county whose level above is the province
    assert UNITS["K1"].parent_id == UNITS["C1"].id
    assert UNITS["T1"].parent_id == UNITS["K1"].id
    assert UNITS["P"].parent_id is None
    assert len(ALL_USERS) == 4 + 2 * 3 + 4 * 3 + 5 * 2  # province, cities, counties, townships


# ---------------------------------------------------------------------------------------------
# The matrix, row by row: (actor, target, may manage?). The relations named in the comments are
# the target unit's, seen from the actor's unit.

MATRIX: list[tuple[str, str, bool]] = [
    # Province system administrator. Own unit: everyone; the province's own SA is the platform's.
    ("SA@P", "SA@P", False),  # nobody manages the province SA, not even themselves
    ("SA@P", "BA@P", True),
    ("SA@P", "SUP@P", True),
    ("SA@P", "ANA@P", True),
    ("SA@P", "SA@C1", True),  # child city
    ("SA@P", "SA@C2", True),
    ("SA@P", "BA@C1", False),  # the city's own SA does
    ("SA@P", "ANA@C1", False),
    ("SA@P", "SA@K1", False),  # grandchild county: its city does
    ("SA@P", "BA@K1", False),
    ("SA@P", "BA@T1", False),  # great-grandchild township: its county does
    ("SA@P", "SA@K3", True),  # directly-reporting county: the province is its level above
    ("SA@P", "BA@K3", False),
    ("SA@P", "ANA@K3", False),
    ("SA@P", "BA@T3", False),  # township of the direct county: 韩城市 does
    # City system administrator (西安市).
    ("SA@C1", "SA@C1", False),  # own SA: the province does
    ("SA@C1", "BA@C1", True),
    ("SA@C1", "ANA@C1", True),
    ("SA@C1", "SA@K1", True),  # child county
    ("SA@C1", "SA@K4", True),
    ("SA@C1", "BA@K1", False),  # the county's own SA does
    ("SA@C1", "ANA@K1", False),
    ("SA@C1", "BA@T1", False),  # grandchild township: the county does, not the city
    ("SA@C1", "ANA@T1", False),
    ("SA@C1", "SA@P", False),  # parent
    ("SA@C1", "BA@P", False),
    ("SA@C1", "SUP@P", False),
    ("SA@C1", "ANA@P", False),
    ("SA@C1", "SA@C2", False),  # sibling city
    ("SA@C1", "BA@C2", False),
    ("SA@C1", "SA@K2", False),  # the sibling's county
    ("SA@C1", "SA@K3", False),  # directly-reporting county: not under any city
    ("SA@C1", "BA@T3", False),
    # County system administrator under a city (雁塔区).
    ("SA@K1", "SA@K1", False),  # own SA: the city does
    ("SA@K1", "BA@K1", True),
    ("SA@K1", "ANA@K1", True),
    ("SA@K1", "BA@T1", True),  # township under own county: the county makes and manages its BAs
    ("SA@K1", "ANA@T1", True),
    ("SA@K1", "BA@T1b", True),
    ("SA@K1", "ANA@T1b", True),
    ("SA@K1", "SA@C1", False),  # parent city
    ("SA@K1", "BA@C1", False),
    ("SA@K1", "ANA@C1", False),
    ("SA@K1", "SA@P", False),  # grandparent
    ("SA@K1", "BA@P", False),
    ("SA@K1", "SA@K4", False),  # sibling county
    ("SA@K1", "BA@K4", False),
    ("SA@K1", "BA@T4", False),  # the sibling's township
    ("SA@K1", "SA@K3", False),  # directly-reporting county
    ("SA@K1", "BA@K3", False),
    ("SA@K1", "BA@T3", False),
    ("SA@K1", "BA@T2", False),  # a township in another city
    # Directly-reporting county system administrator (韩城市).
    ("SA@K3", "SA@K3", False),  # own SA: the province does
    ("SA@K3", "BA@K3", True),
    ("SA@K3", "ANA@K3", True),
    ("SA@K3", "BA@T3", True),  # its township
    ("SA@K3", "ANA@T3", True),
    ("SA@K3", "SA@P", False),  # parent
    ("SA@K3", "BA@P", False),
    ("SA@K3", "SUP@P", False),
    ("SA@K3", "SA@C1", False),  # sibling (at the city level)
    ("SA@K3", "SA@K1", False),  # a county elsewhere
    ("SA@K3", "BA@T1", False),
    # Business administrators, supervisors and analysts manage nobody, even in their own unit.
    ("BA@P", "BA@P", False),
    ("BA@P", "ANA@P", False),
    ("BA@P", "SA@C1", False),
    ("BA@P", "SA@K3", False),
    ("SUP@P", "ANA@P", False),
    ("SUP@P", "SA@C1", False),
    ("SUP@P", "BA@T1", False),
    ("ANA@P", "ANA@P", False),
    ("ANA@P", "SA@C1", False),
    ("BA@C1", "ANA@C1", False),
    ("BA@C1", "SA@K1", False),
    ("BA@K1", "ANA@K1", False),
    ("BA@K1", "BA@T1", False),
    ("ANA@K1", "BA@T1", False),
    ("BA@K3", "BA@T3", False),
    ("BA@T1", "BA@T1", False),  # township roles
    ("BA@T1", "ANA@T1", False),
    ("ANA@T1", "BA@T1", False),
    ("BA@T1", "BA@T1b", False),  # sibling township
    ("BA@T1", "BA@K1", False),  # parent county
]


def _row_id(row: tuple[str, str, bool]) -> str:
    who, target, expected = row
    return f"{who} {'manages' if expected else 'does not manage'} {target}"


@pytest.mark.parametrize(("who", "target", "expected"), MATRIX, ids=[_row_id(r) for r in MATRIX])
def test_may_manage_user_matrix(who: str, target: str, expected: bool) -> None:
    assert manages(who, target) is expected


def test_matrix_rows_are_distinct_and_name_only_users_that_can_exist() -> None:
    pairs = [(who, target) for who, target, _ in MATRIX]
    assert len(pairs) == len(set(pairs))
    for who, target in pairs:
        assert who in ALL_USERS, who
        assert target in ALL_USERS, target


# Exactly whom each system administrator manages, over every user the tree can hold: the matrix
# above spot-checks, this leaves nothing out.
MANAGED_BY: dict[str, set[str]] = {
    "SA@P": {"BA@P", "SUP@P", "ANA@P", "SA@C1", "SA@C2", "SA@K3"},
    "SA@C1": {"BA@C1", "ANA@C1", "SA@K1", "SA@K4"},
    "SA@C2": {"BA@C2", "ANA@C2", "SA@K2"},
    "SA@K1": {"BA@K1", "ANA@K1", "BA@T1", "ANA@T1", "BA@T1b", "ANA@T1b"},
    "SA@K4": {"BA@K4", "ANA@K4", "BA@T4", "ANA@T4"},
    "SA@K2": {"BA@K2", "ANA@K2", "BA@T2", "ANA@T2"},
    "SA@K3": {"BA@K3", "ANA@K3", "BA@T3", "ANA@T3"},
}


@pytest.mark.parametrize("who", sorted(MANAGED_BY))
def test_each_system_admin_manages_exactly(who: str) -> None:
    assert {target for target in ALL_USERS if manages(who, target)} == MANAGED_BY[who]


def test_every_user_but_the_province_sa_has_exactly_one_manager() -> None:
    admins = [u for u in ALL_USERS if u.startswith("SA@")]
    assert sorted(admins) == sorted(MANAGED_BY)
    for target in ALL_USERS:
        managers = [who for who in admins if manages(who, target)]
        assert len(managers) == (0 if target == "SA@P" else 1), (target, managers)


@pytest.mark.parametrize("who", [u for u in ALL_USERS if not u.startswith("SA@")])
def test_non_system_admins_manage_nobody(who: str) -> None:
    assert [target for target in ALL_USERS if manages(who, target)] == []


@pytest.mark.parametrize(
    ("target", "key"),
    [("SA", "T1"), ("SA", "T3"), ("SUP", "C1"), ("SUP", "K1"), ("SUP", "K3"), ("SUP", "T1")],
)
def test_users_that_cannot_exist_are_managed_by_nobody(target: str, key: str) -> None:
    role, unit = ROLE_OF[target], UNITS[key]
    # The unit above would otherwise be the manager: SA@K1 for SA@T1, SA@C1 for SUP@C1, …
    for who in MANAGED_BY:
        assert may_manage_user(actor(who), role, unit) is False, who


# ---------------------------------------------------------------------------------------------
# Which roles may exist at which level.

ALLOWED_AT: list[tuple[Role, Level, bool]] = [
    ("system_admin", "province", True),
    ("system_admin", "city", True),
    ("system_admin", "county", True),
    ("system_admin", "township", False),
    ("business_admin", "province", True),
    ("business_admin", "city", True),
    ("business_admin", "county", True),
    ("business_admin", "township", True),
    ("supervisor", "province", True),
    ("supervisor", "city", False),
    ("supervisor", "county", False),
    ("supervisor", "township", False),
    ("analyst", "province", True),
    ("analyst", "city", True),
    ("analyst", "county", True),
    ("analyst", "township", True),
]


def test_allowed_table_covers_every_role_and_level() -> None:
    assert {(r, lv) for r, lv, _ in ALLOWED_AT} == {(r, lv) for r in ROLES for lv in LEVELS}
    assert len(ALLOWED_AT) == len(ROLES) * len(LEVELS) == 16


@pytest.mark.parametrize(("role", "level", "allowed"), ALLOWED_AT, ids=[f"{r}@{lv}" for r, lv, _ in ALLOWED_AT])
def test_role_allowed_at(role: Role, level: Level, allowed: bool) -> None:
    reason = role_allowed_at(role, level)
    if allowed:
        assert reason is None
    else:
        assert isinstance(reason, str)
        assert any("\u4e00" <= ch <= "\u9fff" for ch in reason), reason  # a Chinese reason a site can read


def test_refusal_reasons_name_the_rule() -> None:
    assert "乡级" in (role_allowed_at("system_admin", "township") or "")
    assert "县级" in (role_allowed_at("system_admin", "township") or "")
    assert "省级" in (role_allowed_at("supervisor", "county") or "")


# ---------------------------------------------------------------------------------------------
# Whose system administrator manages a user: the parent link, never the code.

MANAGER: list[tuple[str, str | None]] = [
    ("SA@P", None),  # the platform
    ("BA@P", "P"),
    ("SUP@P", "P"),
    ("ANA@P", "P"),
    ("SA@C1", "P"),
    ("BA@C1", "C1"),
    ("SA@K1", "C1"),
    ("BA@K1", "K1"),
    ("ANA@K1", "K1"),
    ("SA@K3", "P"),
    ("BA@K3", "K3"),
    ("BA@T1", "K1"),
    ("ANA@T1", "K1"),
    ("BA@T3", "K3"),
]


@pytest.mark.parametrize(("target", "manager"), MANAGER, ids=[f"{t}->{m}" for t, m in MANAGER])
def test_manager_unit(target: str, manager: str | None) -> None:
    role, unit = parse(target)
    assert manager_unit(role, unit) == (UNITS[manager].id if manager else None)


# ---------------------------------------------------------------------------------------------
# Who may write (RS1): administrators; supervisors and analysts only read.

WRITERS: list[tuple[str, bool]] = [
    ("SA@P", True),
    ("BA@P", True),
    ("SUP@P", False),
    ("ANA@P", False),
    ("SA@C1", True),
    ("BA@C1", True),
    ("ANA@C1", False),
    ("SA@K1", True),
    ("BA@K1", True),
    ("ANA@K1", False),
    ("SA@K3", True),
    ("BA@T1", True),
    ("ANA@T1", False),
]


@pytest.mark.parametrize(("who", "writes"), WRITERS, ids=[w for w, _ in WRITERS])
def test_may_write(who: str, writes: bool) -> None:
    assert may_write(actor(who)) is writes


def test_writer_roles() -> None:
    assert frozenset({"system_admin", "business_admin"}) == WRITER_ROLES
    assert {role for role in ROLES if may_write(Actor(1, role, UNITS["P"]))} == {"system_admin", "business_admin"}
