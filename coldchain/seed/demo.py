"""``coldchain seed demo``: a realistic slice of Shaanxi, sized by the number of probes.

:func:`plan_demo` is pure (same probes and seed, same province) and returns rows;
:func:`load_demo` writes them with COPY, so 15 000 probes load in seconds.

Shape, by level (what a provincial roll-out looks like):
- 省疾控: a refrigerated and a frozen cold room, a refrigerated vehicle, a medical refrigerator;
- 市疾控: a cold room, a vehicle, a low-temperature freezer, a medical refrigerator;
- 县疾控: a cold room, a vehicle, a two-zone fridge (冷藏 + 冷冻);
- 乡级接种单位: a two-zone fridge and a medical refrigerator, some a freezer.
Counties are taken round-robin across the ten cities (so even 200 probes span several cities),
direct-reporting counties hang under the province, and once every county is in, more
townships are added per county until the probe budget is met.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from itertools import zip_longest
from typing import Literal

import psycopg
from argon2 import PasswordHasher
from psycopg import sql

from coldchain.core.db import connect
from coldchain.seed.shaanxi import (
    CITIES,
    PERSON_GIVEN,
    PERSON_SURNAMES,
    SITE_SUFFIXES,
    TOWNSHIP_NAMES,
    County,
)

PROVINCE_CODE = "6100000000"
DEMO_PASSWORD = "Coldchain@2026"  # documented in the README; every demo user has it
BINDINGS_FROM = datetime(2024, 1, 1, tzinfo=UTC) - timedelta(hours=8)  # 2024-01-01 00:00 Beijing
TOWNSHIPS_PER_COUNTY = 10

# (kind, name, [(compartment name, mode)])
EquipmentSpec = tuple[str, str, list[tuple[str, str]]]
_PROVINCE_EQUIPMENT: list[EquipmentSpec] = [
    ("cold_room", "1号冷藏库", [("冷藏", "refrigerated")]),
    ("cold_room", "低温冷冻库", [("冷冻", "frozen")]),
    ("vehicle", "疫苗冷藏车", [("车厢", "refrigerated")]),
    ("medical_fridge", "医用冷藏柜", [("冷藏", "refrigerated")]),
]
_CITY_EQUIPMENT: list[EquipmentSpec] = [
    ("cold_room", "冷藏库", [("冷藏", "refrigerated")]),
    ("vehicle", "疫苗冷藏车", [("车厢", "refrigerated")]),
    ("freezer", "低温冰柜", [("冷冻", "frozen")]),
    ("medical_fridge", "医用冷藏柜", [("冷藏", "refrigerated")]),
]
_COUNTY_EQUIPMENT: list[EquipmentSpec] = [
    ("cold_room", "冷藏库", [("冷藏", "refrigerated")]),
    ("vehicle", "疫苗冷藏车", [("车厢", "refrigerated")]),
    ("fridge", "双温冰箱", [("冷藏", "refrigerated"), ("冷冻", "frozen")]),
]
_FRIDGE_BRANDS = ("海尔", "美菱", "澳柯玛", "海信", "中科都菱")
_PROBE_VENDORS = (("精创", "RC-4HC"), ("华图", "WT-T20"), ("天创", "TC-P1"))
_GATEWAY_VENDORS = (("精创", "GW-300"), ("华图", "WT-G4"))


@dataclass
class DemoPlan:
    units: list[tuple[int, str, str, str, int | None]] = field(default_factory=list)
    equipment: list[tuple[int, int, str, str, str | None, str | None, date]] = field(default_factory=list)
    compartments: list[tuple[int, int, str, str]] = field(default_factory=list)
    gateways: list[tuple[int, str, int, str, str, date, date]] = field(default_factory=list)
    probes: list[tuple[int, str, int, str, str, date, date]] = field(default_factory=list)
    bindings: list[tuple[int, int, int, datetime]] = field(default_factory=list)
    users: list[tuple[int, str, str, str, int, str, str]] = field(default_factory=list)
    responsibles: list[tuple[int, int, int]] = field(default_factory=list)
    seed: int = 20200106  # what it was planned with: recognising a loaded demo re-plans it


def _round_robin_counties() -> list[tuple[int, County]]:
    per_city = [[(i, c) for c in city.counties] for i, city in enumerate(CITIES)]
    order = [x for group in zip_longest(*per_city) for x in group if x is not None]
    # Second in line: a county that reports straight to the province, so that even the small
    # default demo shows a hierarchy that code prefixes would get wrong.
    direct = next(x for x in order if x[1].direct)
    order.remove(direct)
    order.insert(1, direct)
    return order


class _Builder:
    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        self.plan = DemoPlan()
        self.next_gateway_serial = 10001
        self.next_probe_serial = 200001
        self.township_names = list(TOWNSHIP_NAMES)
        rng.shuffle(self.township_names)
        self.name_index = 0

    @property
    def probe_count(self) -> int:
        return len(self.plan.probes)

    def _person(self) -> str:
        return self.rng.choice(PERSON_SURNAMES) + self.rng.choice(PERSON_GIVEN)

    def unit(self, code: str, name: str, level: str, parent: int | None) -> int:
        uid = len(self.plan.units) + 1
        self.plan.units.append((uid, code, name, level, parent))
        titles = ("疫苗管理员", "科室负责人", "单位负责人")
        if level != "township":
            self._user(f"admin{code}", f"{name}系统管理员", uid, "system_admin", "信息科")
        for lvl, title in enumerate(titles, start=1):
            user_id = self._user(f"u{code}{lvl}", self._person(), uid, "business_admin", title)
            self.plan.responsibles.append((uid, lvl, user_id))
        return uid

    def _user(self, username: str, real_name: str, unit_id: int, role: str, department: str) -> int:
        user_id = len(self.plan.users) + 1
        phone = "1" + "".join(self.rng.choice("3589") + f"{self.rng.randrange(10**9):09d}")
        self.plan.users.append((user_id, username, real_name, phone, unit_id, role, department))
        return user_id

    def equipment(self, unit_id: int, specs: list[EquipmentSpec]) -> None:
        gateway_id: int | None = None
        for kind, name, zones in specs:
            # A vehicle carries its own gateway; fixed equipment shares one per about four probes.
            if kind == "vehicle" or gateway_id is None or self.rng.random() < 0.25:
                gateway_id = self._gateway(unit_id)
            eq_id = len(self.plan.equipment) + 1
            brand = self.rng.choice(_FRIDGE_BRANDS) if kind in ("fridge", "freezer", "medical_fridge") else None
            label = f"{brand}{name}" if brand else name
            plate = f"陕A{self.rng.randrange(10000, 99999)}" if kind == "vehicle" else None
            commissioned = date(2018, 8, 1) + timedelta(days=self.rng.randrange(0, 1800))
            self.plan.equipment.append((eq_id, unit_id, kind, label, brand, plate, commissioned))
            for zone_name, mode in zones:
                comp_id = len(self.plan.compartments) + 1
                self.plan.compartments.append((comp_id, eq_id, zone_name, mode))
                probe_id = self._probe(unit_id)
                self.plan.bindings.append((probe_id, comp_id, gateway_id, BINDINGS_FROM))
            if kind == "vehicle":
                gateway_id = None

    def _installed(self) -> tuple[date, date]:
        installed = date(2018, 8, 1) + timedelta(days=self.rng.randrange(0, 2400))
        return installed, installed + timedelta(days=365 * 3 + self.rng.randrange(0, 700))

    def _gateway(self, unit_id: int) -> int:
        gid = len(self.plan.gateways) + 1
        vendor, model = self.rng.choice(_GATEWAY_VENDORS)
        installed, warranty = self._installed()
        self.plan.gateways.append((gid, str(self.next_gateway_serial), unit_id, vendor, model, installed, warranty))
        self.next_gateway_serial += 1
        return gid

    def _probe(self, unit_id: int) -> int:
        pid = len(self.plan.probes) + 1
        vendor, model = self.rng.choice(_PROBE_VENDORS)
        installed, warranty = self._installed()
        self.plan.probes.append((pid, str(self.next_probe_serial), unit_id, vendor, model, installed, warranty))
        self.next_probe_serial += 1
        return pid

    def township(self, county: County, county_unit: int, index: int) -> None:
        base = self.township_names[self.name_index % len(self.township_names)]
        self.name_index += 1
        suffix = self.rng.choice(SITE_SUFFIXES)
        name = f"{county.name}{base}{suffix}"
        uid = self.unit(f"{county.code}{index:04d}", name, "township", county_unit)
        specs: list[EquipmentSpec] = [
            ("fridge", "双温冰箱", [("冷藏", "refrigerated"), ("冷冻", "frozen")]),
            ("medical_fridge", "医用冷藏柜", [("冷藏", "refrigerated")]),
        ]
        if self.rng.random() < 0.3:
            specs.append(("freezer", "低温冰柜", [("冷冻", "frozen")]))
        self.equipment(uid, specs)


def plan_demo(probes: int = 200, seed: int = 20200106) -> DemoPlan:
    if probes < 20:
        raise ValueError("演示省份至少需要 20 个探头")
    b = _Builder(random.Random(seed))
    b.plan.seed = seed
    province = b.unit(PROVINCE_CODE, "陕西省疾病预防控制中心", "province", None)
    b.equipment(province, _PROVINCE_EQUIPMENT)
    city_units: dict[int, int] = {}
    counties: list[tuple[County, int, int]] = []  # (county, unit id, townships so far)
    for city_index, county in _round_robin_counties():
        if b.probe_count >= probes:
            break
        if city_index not in city_units:
            city = CITIES[city_index]
            city_units[city_index] = b.unit(f"{city.code}0000", f"{city.name}疾病预防控制中心", "city", province)
            b.equipment(city_units[city_index], _CITY_EQUIPMENT)
        parent = province if county.direct else city_units[city_index]
        cu = b.unit(f"{county.code}0000", f"{county.name}疾病预防控制中心", "county", parent)
        b.equipment(cu, _COUNTY_EQUIPMENT)
        made = 0
        while made < TOWNSHIPS_PER_COUNTY and b.probe_count < probes:
            made += 1
            b.township(county, cu, made)
        counties.append((county, cu, made))
    # Every county is in and the budget is not spent: more sites per county, evenly.
    i = 0
    while b.probe_count < probes:
        county, cu, made = counties[i % len(counties)]
        counties[i % len(counties)] = (county, cu, made + 1)
        b.township(county, cu, made + 1)
        i += 1
    return b.plan


RegistryState = Literal["empty", "demo", "real"]
# A demo bigger than this is nobody's: beyond it, planning alone would take seconds.
_LARGEST_DEMO = 100_000


class RealUnitsPresent(RuntimeError):
    """The registry holds units the demo did not make: demo data must never be mixed with them
    (its users share a published password, and the simulator would feed fake readings to their
    probes). A RuntimeError, so the command line reports it in Chinese and exits non-zero."""


def demo_unit_codes(probes: int, seed: int) -> set[str]:
    """The unit codes of the demo of ``probes`` probes. Planning more probes only adds units (the
    counties come in the same order and fill up first), so a larger plan covers a smaller one."""
    return {u[1] for u in plan_demo(max(probes, 20), seed).units}


def registry_state(conn: psycopg.Connection, probes: int, seed: int) -> tuple[RegistryState, list[str]]:
    """Whether the registry is empty, holds only the demo, or holds real units — with a few of
    the latter (code and name) for the message that refuses to mix them.

    The demo is recognised by its province (:data:`PROVINCE_CODE`) and by every unit's code being
    one it plans; it is planned at least as large as the probes already there, so a province-sized
    demo is still the demo when the next start asks for the default size. A unit added by hand
    under the demo makes the registry real: nothing would tell its probes from the demo's."""
    codes = {code: name for code, name in conn.execute("SELECT code, name FROM units ORDER BY code").fetchall()}
    if not codes:
        return "empty", []
    foreign = list(codes)
    if PROVINCE_CODE in codes:
        row = conn.execute("SELECT count(*) FROM probes").fetchone()
        loaded = int(row[0]) if row else 0
        planned = demo_unit_codes(min(max(probes, loaded), _LARGEST_DEMO), seed)
        foreign = [code for code in codes if code not in planned]
    if not foreign:
        return "demo", []
    return "real", [f"{code} {codes[code]}" for code in foreign[:3]]


def check_demo_registry(conn: psycopg.Connection, probes: int, seed: int) -> Literal["empty", "demo"]:
    """Before the demo is loaded or simulated: the registry's state, or :class:`RealUnitsPresent`
    when it holds units that are not the demo's."""
    state, foreign = registry_state(conn, probes, seed)
    if state == "real":
        raise RealUnitsPresent(
            f"数据库中已有非演示单位（如 {'、'.join(foreign)}），拒绝载入或运行演示数据：演示账号的密码是公开的，"
            "网关模拟器还会给真实探头写入假读数。演示请使用一个空数据库"
        )
    return state


def load_demo(url: str, plan: DemoPlan) -> None:
    """Write the plan into an empty, migrated registry (refuses to mix with existing units, and
    says so differently when they are real ones: that is a wrong database, not a second load)."""
    password_hash = PasswordHasher().hash(DEMO_PASSWORD)
    with connect(url, application="coldchain-seed") as conn:
        if check_demo_registry(conn, len(plan.probes), plan.seed) != "empty":
            raise RuntimeError("数据库中已有单位数据（演示省份已载入），演示数据只能载入空的登记库")
        with conn.cursor() as cur:
            # Units level by level: each COPY's parents exist from an earlier statement, so the
            # tree triggers (level check, closure table) see them.
            for level in ("province", "city", "county", "township"):
                _copy(cur, "units", "id code name level parent_id", [u for u in plan.units if u[3] == level])
            _copy(cur, "equipment", "id unit_id kind name brand plate_no commissioned_on", plan.equipment)
            _copy(cur, "compartments", "id equipment_id name mode", plan.compartments)
            _copy(cur, "gateways", "id serial unit_id vendor model installed_on warranty_end", plan.gateways)
            _copy(cur, "probes", "id serial unit_id vendor model installed_on warranty_end", plan.probes)
            _copy(
                cur,
                "probe_bindings",
                "probe_id compartment_id gateway_id valid reason",
                [(p, c, g, f"[{since.isoformat()},)", "演示数据初始绑定") for p, c, g, since in plan.bindings],
            )
            _copy(
                cur,
                "users",
                "id username real_name phone unit_id role department password_hash",
                [(*u, password_hash) for u in plan.users],
            )
            _copy(cur, "unit_responsibles", "unit_id level user_id", plan.responsibles)
            for table in ("units", "equipment", "compartments", "gateways", "probes", "users"):
                cur.execute(
                    sql.SQL("SELECT setval(pg_get_serial_sequence(%s, 'id'), (SELECT max(id) FROM {}))").format(
                        sql.Identifier(table)
                    ),
                    (table,),
                )
        conn.commit()


def _copy(cur: psycopg.Cursor[tuple[object, ...]], table: str, columns: str, rows: Sequence[Sequence[object]]) -> None:
    """COPY rows into a fixed table; the three levels of the registry load in seconds this way."""
    statement = sql.SQL("COPY {} ({}) FROM STDIN").format(
        sql.Identifier(table), sql.SQL(", ").join(sql.Identifier(c) for c in columns.split())
    )
    with cur.copy(statement) as cp:
        for row in rows:
            cp.write_row(row)
