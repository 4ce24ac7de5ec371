"""Registering the monitoring hardware a province buys from a vendor's delivery list (issue #18):
equipment with its compartments and limits, gateways, probes and the bindings between them.

Built like the units import (:mod:`registry.units_import`, whose file reader it uses), for the
same reasons: :func:`check_rows` is pure — the whole file against a snapshot of the registry, every
problem with its spreadsheet row in Chinese, or else the plan — and
:func:`~registry.hardware_store.apply_plan` writes the plan with one ``INSERT … SELECT FROM
unnest(…)`` per table, so a province of 15 000 probes goes in within seconds instead of 75 000
round trips.

One row per probe. Rows naming the same unit and equipment name are one piece of equipment, the
same equipment and compartment name one compartment, the same gateway serial one gateway; their
details must agree between rows. An import only adds: what is registered already must be in the
file as it is in the database. It never changes a binding, a detail or a limit: a probe moved to
another compartment is a swap with a form behind it (Forms 1, 3, 4; CM11), and details and limits
are edited in the system, where the version check and the alarm parameters guard them.

This module holds the entry points of the check (:func:`read_file`, :func:`check_rows`) and the
plan's types; the cells and columns are parsed in :mod:`registry.hardware_cells`, the registry is
read and the plan written in :mod:`registry.hardware_store`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import Any

from registry.hardware_cells import (
    COLUMNS,
    EQUIPMENT_ATTRS,
    GATEWAY_ATTRS,
    PROBE_ATTRS,
    CompartmentKey,
    EquipmentKey,
    Limits,
    Row,
    parse_row,
    read_columns,
    show,
)
from registry.units_import import Problem, Table, column_letter, read_table

REBIND = "导入只登记新硬件，不更改绑定：更换、移机、停用请在系统中填报附表1、附表3、附表4"


@dataclass(frozen=True)
class Registered:
    """Equipment, a compartment, a gateway or a probe the database has, in the file's terms:
    ``name`` (a serial for hardware), ``unit`` its unit's code (None: the province's stock),
    ``attrs`` by the file's column names (a compartment's: ``limits``); a compartment's
    ``parent`` equipment and the ``probes`` bound to it now; a probe's current binding in
    ``bound`` (compartment id, gateway serial, where that is in words)."""

    id: int
    unit: str | None
    name: str
    status: str
    attrs: Mapping[str, Any]
    parent: int | None = None
    probes: tuple[str, ...] = ()
    bound: tuple[int, str, str] | None = None


@dataclass(frozen=True)
class Registry:
    """What the database holds of the file's units (code → id, name, active) and hardware."""

    units: Mapping[str, tuple[int, str, bool]]
    equipment: Sequence[Registered] = ()
    compartments: Sequence[Registered] = ()
    gateways: Mapping[str, Registered] = field(default_factory=dict)
    probes: Mapping[str, Registered] = field(default_factory=dict)


@dataclass(frozen=True)
class NewEquipment:
    row: int
    key: EquipmentKey
    unit_id: int
    attrs: Mapping[str, Any]


@dataclass(frozen=True)
class NewCompartment:
    row: int
    key: CompartmentKey
    equipment_id: int | None  # None: equipment new in the same plan
    limits: Limits


@dataclass(frozen=True)
class NewHardware:
    row: int
    serial: str
    unit_id: int
    attrs: Mapping[str, Any]


@dataclass(frozen=True)
class NewProbe(NewHardware):
    """A probe and its binding; an id is None when that compartment or gateway is new as well."""

    compartment: CompartmentKey = ("", "", "")
    compartment_id: int | None = None
    gateway: str = ""
    gateway_id: int | None = None


@dataclass(frozen=True)
class Plan:
    """What applying the file adds (one binding per new probe); ``unchanged``: probes already
    registered and bound as the file says."""

    rows: int
    equipment: tuple[NewEquipment, ...]
    compartments: tuple[NewCompartment, ...]
    gateways: tuple[NewHardware, ...]
    probes: tuple[NewProbe, ...]
    unchanged: int

    @property
    def changes(self) -> bool:
        return bool(self.equipment or self.compartments or self.gateways or self.probes)


@dataclass(frozen=True)
class Checked:
    """Either ``problems`` (nothing may be applied) or a ``plan``, never both."""

    problems: tuple[Problem, ...]
    plan: Plan | None


@dataclass
class _Group:
    rows: list[Row]
    merged: dict[str, Any]  # the first value given for each attribute


def _label(attr: str) -> str:
    return "模式和限值" if attr == "limits" else COLUMNS[attr][0]


def _grouped(
    rows: Iterable[Row], key: Callable[[Row], Any], attrs: Sequence[str], what: str, out: list[Problem]
) -> dict[Any, _Group]:
    """Rows by ``key``, each group's attributes merged; a value that differs from an earlier row's
    is a problem of the later row (an empty cell states nothing). ``what`` is formatted per row."""
    groups: dict[Any, _Group] = {}
    for row in rows:
        group = groups.setdefault(key(row), _Group([], {}))
        group.rows.append(row)
        for attr in attrs:
            value = row.v.get(attr)
            if value is None:
                continue
            first, n = group.merged.setdefault(attr, (value, row.row))
            if first != value:
                name = what.format(*row.compartment, serial=row.v["gateway_serial"])
                if attr == "unit_code":
                    text = f"{name}在第 {n} 行属于单位 {first}，本行为单位 {value}：一个网关只能属于一个单位"
                else:
                    text = f"{name}的{_label(attr)}与第 {n} 行不同"
                    text += f"（第 {n} 行为「{show(first)}」，本行为「{show(value)}」）"
                out.append(Problem(row.row, text))
    for group in groups.values():
        group.merged = {a: value for a, (value, _) in group.merged.items()}
    return groups


def check_rows(table: Table, registry: Registry, today: date) -> Checked:
    """Check the whole file against ``registry`` (see :func:`registry.hardware_store.lock_and_load`); no I/O.

    Every problem is found, not only the first; a problem of a group (a gateway in another unit,
    a fridge registered otherwise) is reported once, on the group's first row."""
    columns, problems = read_columns(table)
    if columns is None:
        return Checked(tuple(problems), None)
    named = set(columns.values()) | {i for i, c in enumerate(table.header) if c.strip()}
    rows: list[Row] = []
    for number, cells in table.rows:
        if not any(c.strip() for c in cells):
            continue  # a blank line between blocks of the sheet
        for i, cell in enumerate(cells):
            if cell.strip() and i not in named:
                problems.append(Problem(number, f"{column_letter(i)} 列有内容「{cell.strip()[:20]}」，但该列没有列名"))
        row, messages = parse_row(number, cells, columns, today)
        rows.append(row)
        problems.extend(Problem(number, m) for m in messages)
    if not rows:
        problems.append(Problem(1, "文件中只有表头，没有硬件"))
    seen: dict[str, int] = {}
    for row in rows:
        if (serial := row.v["probe_serial"]) is not None and seen.setdefault(serial, row.row) != row.row:
            problems.append(Problem(row.row, f"探头编号 {serial} 与第 {seen[serial]} 行重复"))
    check = _Check(registry, problems)
    known = check.units([r for r in rows if r.keyed])
    equipment = _grouped(known, lambda r: r.equipment, EQUIPMENT_ATTRS, "设备「{1}」", problems)
    compartments = _grouped(known, lambda r: r.compartment, ("limits",), "温区「{1}/{2}」", problems)
    gateways = _grouped(
        known, lambda r: r.v["gateway_serial"], ("unit_code", *GATEWAY_ATTRS), "网关 {serial} ", problems
    )
    check.equipment(equipment)
    check.compartments(compartments)
    check.gateways(gateways)
    check.probes(known)
    if problems:
        return Checked(tuple(sorted(problems, key=lambda p: p.row)), None)
    return Checked((), check.plan(len(rows), equipment, compartments, gateways, known))


class _Check:
    """The file's groups against the registry, remembering what is registered for the plan."""

    def __init__(self, registry: Registry, problems: list[Problem]) -> None:
        self.registry = registry
        self.problems = problems
        self.equipment_ids: dict[EquipmentKey, int] = {}
        self.compartment_ids: dict[CompartmentKey, int] = {}
        self.unchanged: set[str] = set()
        # By the names the file uses (not unique in the schema, so lists): no scan per group.
        self.by_name: dict[tuple[Any, str], list[Registered]] = {}
        for item in (*registry.equipment, *registry.compartments):
            self.by_name.setdefault((item.unit if item.parent is None else item.parent, item.name), []).append(item)

    def add(self, row: int, text: str) -> None:
        self.problems.append(Problem(row, text))

    def differences(self, row: int, what: str, merged: Mapping[str, Any], found: Registered) -> bool:
        """What the file says otherwise about something registered (an import changes nothing)."""
        before = len(self.problems)
        for attr, value in merged.items():
            if attr in found.attrs and value != found.attrs[attr]:
                self.add(
                    row,
                    f"{what}已登记，{_label(attr)}为「{show(found.attrs[attr])}」，文件中为「{show(value)}」："
                    "导入不修改已登记的信息，请在系统中修改",
                )
        return len(self.problems) > before

    def units(self, rows: Sequence[Row]) -> list[Row]:
        """The rows whose unit is registered and active (once per unit for the others)."""
        by_unit: dict[str, list[Row]] = {}
        for row in rows:
            by_unit.setdefault(row.v["unit_code"], []).append(row)
        known: list[Row] = []
        for code, group in by_unit.items():
            unit = self.registry.units.get(code)
            if unit is None:
                n = len(group)
                self.add(
                    group[0].row, f"单位编码 {code} 不在数据库中（共 {n} 行）：请先导入单位（coldchain units import）"
                )
            elif not unit[2]:
                self.add(group[0].row, f"单位 {code}（{unit[1]}）已停用")
            else:
                known.extend(group)
        return sorted(known, key=lambda r: r.row)

    def equipment(self, groups: Mapping[EquipmentKey, _Group]) -> None:
        for (unit, name), group in groups.items():
            same = self.by_name.get((unit, name), [])
            row = group.rows[0].row
            if len(same) > 1:
                self.add(
                    row, f"单位 {unit} 已有 {len(same)} 台名为「{name}」的设备，无法确定是哪一台：请先在系统中改名"
                )
            elif same and same[0].status != "active":
                self.add(row, f"设备「{name}」已停用：导入不恢复已停用的设备，新设备请另起名称")
            elif same:
                self.equipment_ids[unit, name] = same[0].id
                self.differences(row, f"设备「{name}」", group.merged, same[0])

    def compartments(self, groups: Mapping[CompartmentKey, _Group]) -> None:
        for key, group in groups.items():
            equipment_id = self.equipment_ids.get(key[:2])
            if equipment_id is None:
                continue  # new equipment: all its compartments are new
            same = self.by_name.get((equipment_id, key[2]), [])
            row, what = group.rows[0].row, f"温区「{key[1]}/{key[2]}」"
            if len(same) > 1:
                self.add(row, f"{what}在数据库中有 {len(same)} 个同名温区，无法确定是哪一个")
            elif same and same[0].status != "active":
                self.add(row, f"{what}已停用：导入不恢复已停用的温区")
            elif same:
                self.compartment_ids[key] = same[0].id
                self.differences(row, what, group.merged, same[0])
                listed = {r.v["probe_serial"] for r in group.rows}
                if (absent := [s for s in same[0].probes if s not in listed]) and not listed <= set(same[0].probes):
                    self.add(
                        row,
                        f"{what}已绑定探头 {'、'.join(absent)}，文件未列出它们却为该温区新增探头：更换探头请在系统中"
                        "填报附表1；如为增加探头，请在文件中一并列出已有探头",
                    )

    def gateways(self, groups: Mapping[str, _Group]) -> None:
        for serial, group in groups.items():
            if (found := self.registry.gateways.get(serial)) is None:
                continue
            row, unit = group.rows[0].row, group.merged["unit_code"]
            if found.status == "decommissioned":
                self.add(row, f"网关 {serial} 已报废")
            elif found.unit != unit:
                self.add(row, f"网关 {serial} 已登记在{_owner(found)}，文件中为单位 {unit}：{REBIND}")
            elif found.status != "active":
                self.add(row, f"网关 {serial} 已登记为库存（未投入使用）：{REBIND}")
            else:
                self.differences(row, f"网关 {serial} ", group.merged, found)

    def probes(self, rows: Sequence[Row]) -> None:
        for row in rows:
            serial, gateway = row.v["probe_serial"], row.v["gateway_serial"]
            if (found := self.registry.probes.get(serial)) is None:
                continue
            if found.status == "decommissioned":
                self.add(row.row, f"探头 {serial} 已报废")
            elif found.bound is None:
                self.add(row.row, f"探头 {serial} 已登记（{_owner(found)}，未绑定）：{REBIND}")
            elif found.bound[0] != self.compartment_ids.get(row.compartment):
                self.add(row.row, f"探头 {serial} 已绑定在{found.bound[2]}：{REBIND}")
            elif found.bound[1] != gateway:
                self.add(row.row, f"探头 {serial} 当前经网关 {found.bound[1]} 上报，文件中为网关 {gateway}：{REBIND}")
            elif not self.differences(
                row.row, f"探头 {serial} ", {a: row.v[a] for a in PROBE_ATTRS if row.v[a]}, found
            ):
                self.unchanged.add(serial)

    def plan(
        self,
        count: int,
        equipment: Mapping[EquipmentKey, _Group],
        compartments: Mapping[CompartmentKey, _Group],
        gateways: Mapping[str, _Group],
        rows: Sequence[Row],
    ) -> Plan:
        units, registered = self.registry.units, self.registry.gateways
        new_equipment = [NewEquipment(g.rows[0].row, k, units[k[0]][0], g.merged) for k, g in equipment.items()]
        new_compartments = [
            NewCompartment(g.rows[0].row, k, self.equipment_ids.get(k[:2]), g.merged["limits"])
            for k, g in compartments.items()
        ]
        new_gateways = [
            NewHardware(g.rows[0].row, s, units[g.merged["unit_code"]][0], g.merged) for s, g in gateways.items()
        ]
        probes = tuple(
            NewProbe(
                r.row,
                r.v["probe_serial"],
                units[r.v["unit_code"]][0],
                {a: r.v[a] for a in PROBE_ATTRS},
                r.compartment,
                self.compartment_ids.get(r.compartment),
                r.v["gateway_serial"],
                registered[r.v["gateway_serial"]].id if r.v["gateway_serial"] in registered else None,
            )
            for r in rows
            if r.v["probe_serial"] not in self.unchanged
        )
        return Plan(
            count,
            tuple(e for e in new_equipment if e.key not in self.equipment_ids),
            tuple(c for c in new_compartments if c.key not in self.compartment_ids),
            tuple(g for g in new_gateways if g.serial not in registered),
            probes,
            len(self.unchanged),
        )


def _owner(found: Registered) -> str:
    return f"单位 {found.unit}" if found.unit else "省级库存"


def read_file(path: Path) -> Table:
    """The delivery list as text cells (:func:`registry.units_import.read_table`: CSV or XLSX)."""
    return read_table(path, tuple(COLUMNS))
