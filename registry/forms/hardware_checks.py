"""The rules of Forms 1–4 (CM5–CM8): pure functions from a payload and its facts to every
problem, used when a form is submitted and again when it is applied, because the registry may
have moved in between (another form bound the probe, the fridge was stopped).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from typing import Any

from registry.forms.facts import CompartmentFact, ProbeFact, RegistryFacts, stock_units
from registry.forms.payloads import MODE_NAMES, Form1, Form2, Form3, Form4, RegistryForm
from registry.forms.problems import Problem


def _duplicates(values: Iterable[Any]) -> set[Any]:
    return {v for v, n in Counter(values).items() if n > 1}


def _compartment_problems(
    row: int, compartment_id: int, mode: str, facts: RegistryFacts, problems: list[Problem]
) -> CompartmentFact | None:
    """The compartment if it can be used by this unit in this mode; else records why not."""
    c = facts.compartments.get(compartment_id)
    if c is None or c.equipment_unit_id != facts.unit.id:
        problems.append(Problem(row, "rows.compartment_id", f"温区 {compartment_id} 不存在或不属于本单位"))
        return None
    if not (c.active and c.equipment_active):
        problems.append(Problem(row, "rows.compartment_id", f"温区{c.label}已停用"))
        return None
    if mode != c.mode:
        problems.append(
            Problem(
                row,
                "rows.mode",
                f"模式不符：温区{c.label}为{MODE_NAMES[c.mode]}，填写为{MODE_NAMES.get(mode, mode)}",
            )
        )
    return c


def _usable_probe(row: int, fld: str, serial: str, facts: RegistryFacts, problems: list[Problem]) -> ProbeFact | None:
    """A probe that exists, is not scrapped and is the unit's (or its county's or the province's) stock."""
    p = facts.probes.get(serial)
    if p is None:
        problems.append(Problem(row, fld, f"探头 {serial} 不存在"))
        return None
    if p.status == "decommissioned":
        problems.append(Problem(row, fld, f"探头 {serial} 已报废"))
        return None
    if p.unit_id not in stock_units(facts.unit):
        problems.append(Problem(row, fld, f"探头 {serial} 属于其他单位，不能在本单位使用"))
        return None
    return p


def check_form1(p: Form1, facts: RegistryFacts) -> list[Problem]:
    """Probe swaps and renames: the old probe must be the one on that compartment, the new one free."""
    problems: list[Problem] = []
    used: list[str] = []
    for row in p.rows:
        used.extend({row.probe_before, row.probe_after})
    twice = _duplicates(used)
    repeated_compartments = _duplicates(r.compartment_id for r in p.rows)
    new_names: dict[int, set[str]] = {}
    for i, row in enumerate(p.rows, 1):
        if row.compartment_id in repeated_compartments:
            problems.append(Problem(i, "rows.compartment_id", f"温区 {row.compartment_id} 在本表中重复出现"))
        c = _compartment_problems(i, row.compartment_id, row.mode, facts, problems)
        if c is not None and row.equipment_name_after is not None:
            new_names.setdefault(c.equipment_id, set()).add(row.equipment_name_after)
        before = facts.probes.get(row.probe_before)
        if before is None:
            problems.append(Problem(i, "rows.probe_before", f"探头 {row.probe_before} 不存在"))
        elif c is not None and before.compartment_id != c.id:
            problems.append(Problem(i, "rows.probe_before", f"探头 {row.probe_before} 当前并未绑定在温区{c.label}"))
        if row.probe_after == row.probe_before:
            if row.equipment_name_after is None:
                problems.append(Problem(i, "rows.probe_after", "本行没有任何变更（探头相同，也未改冰箱名称）"))
        else:
            after = _usable_probe(i, "rows.probe_after", row.probe_after, facts, problems)
            if after is not None and after.binding_id is not None:
                problems.append(Problem(i, "rows.probe_after", f"探头 {row.probe_after} 已绑定在其他温区，须先解绑"))
        for serial in sorted({row.probe_before, row.probe_after} & twice):
            fld = "rows.probe_before" if serial == row.probe_before else "rows.probe_after"
            problems.append(Problem(i, fld, f"探头 {serial} 在本表中重复出现"))
    for equipment_id, names in sorted(new_names.items()):
        if len(names) > 1:
            problems.append(
                Problem(
                    None,
                    "rows.equipment_name_after",
                    f"同一冰箱（设备 {equipment_id}）填写了不同的新名称：{'、'.join(sorted(names))}",
                )
            )
    return problems


def check_form2(p: Form2) -> list[Problem]:
    if p.fridges == 0 and p.gateways == 0 and p.probes == 0:
        return [Problem(None, "fridges", "冰箱、网关、探头个数至少一项大于 0")]
    return []


def check_form3(p: Form3, facts: RegistryFacts) -> list[Problem]:
    """New bindings: a free probe on an empty compartment through a usable gateway."""
    problems: list[Problem] = []
    if p.request_form_id is not None:
        r = facts.request
        if r is None or r.form_type != 2 or r.unit_id != facts.unit.id or r.status not in ("filed", "applied"):
            problems.append(Problem(None, "request_form_id", f"申请单 {p.request_form_id} 不是本单位已备案的附表2"))
    twice_probes = _duplicates(r.probe_serial for r in p.rows)
    twice_compartments = _duplicates(r.compartment_id for r in p.rows)
    for i, row in enumerate(p.rows, 1):
        if row.compartment_id in twice_compartments:
            problems.append(Problem(i, "rows.compartment_id", f"温区 {row.compartment_id} 在本表中重复出现"))
        if row.probe_serial in twice_probes:
            problems.append(Problem(i, "rows.probe_serial", f"探头 {row.probe_serial} 在本表中重复出现"))
        c = _compartment_problems(i, row.compartment_id, row.mode, facts, problems)
        if c is not None and c.bound_probes:
            problems.append(
                Problem(
                    i,
                    "rows.compartment_id",
                    f"该温区已有探头（温区{c.label}已绑定 {'、'.join(c.bound_probes)}），更换请用附表1",
                )
            )
        g = facts.gateways.get(row.gateway_serial)
        if g is None:
            problems.append(Problem(i, "rows.gateway_serial", f"网关 {row.gateway_serial} 不存在"))
        elif g.status == "decommissioned":
            problems.append(Problem(i, "rows.gateway_serial", f"网关 {row.gateway_serial} 已报废"))
        elif g.unit_id not in stock_units(facts.unit):
            problems.append(
                Problem(i, "rows.gateway_serial", f"网关 {row.gateway_serial} 属于其他单位，不能在本单位使用")
            )
        probe = _usable_probe(i, "rows.probe_serial", row.probe_serial, facts, problems)
        if probe is not None and probe.binding_id is not None:
            problems.append(
                Problem(i, "rows.probe_serial", f"探头 {row.probe_serial} 已绑定，更换请用附表1，停用请用附表4")
            )
    return problems


def check_form4(p: Form4, facts: RegistryFacts) -> list[Problem]:
    """Stops: only the unit's own active equipment and its own probes."""
    problems: list[Problem] = []
    if not any(e.stop for e in p.equipment) and not any(x.stop for x in p.probes):
        problems.append(Problem(None, "equipment", "没有选择任何要停用的设备或探头"))
    twice_equipment = _duplicates(e.equipment_id for e in p.equipment)
    for i, e in enumerate(p.equipment, 1):
        if e.equipment_id in twice_equipment:
            problems.append(Problem(i, "equipment.equipment_id", f"设备 {e.equipment_id} 在本表中重复出现"))
        eq = facts.equipment.get(e.equipment_id)
        if eq is None or eq.unit_id != facts.unit.id:
            problems.append(Problem(i, "equipment.equipment_id", f"设备 {e.equipment_id} 不存在或不属于本单位"))
        elif not eq.active:
            problems.append(Problem(i, "equipment.equipment_id", f"设备「{eq.name}」已停用"))
    twice_probes = _duplicates(x.probe_serial for x in p.probes)
    for i, x in enumerate(p.probes, 1):
        if x.probe_serial in twice_probes:
            problems.append(Problem(i, "probes.probe_serial", f"探头 {x.probe_serial} 在本表中重复出现"))
        probe = facts.probes.get(x.probe_serial)
        if probe is None:
            problems.append(Problem(i, "probes.probe_serial", f"探头 {x.probe_serial} 不存在"))
        elif probe.unit_id != facts.unit.id:
            problems.append(Problem(i, "probes.probe_serial", f"探头 {x.probe_serial} 不属于本单位"))
        elif probe.status == "decommissioned":
            problems.append(Problem(i, "probes.probe_serial", f"探头 {x.probe_serial} 已报废"))
    return problems


def check_registry_form(p: RegistryForm, facts: RegistryFacts) -> list[Problem]:
    if isinstance(p, Form1):
        return check_form1(p, facts)
    if isinstance(p, Form3):
        return check_form3(p, facts)
    return check_form4(p, facts)
