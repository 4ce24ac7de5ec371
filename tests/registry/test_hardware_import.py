"""The hardware import's rules (issue #18): every problem with its spreadsheet row and Chinese text,
the plan of a valid file, and applying a plan as the runtime role — after which the imported
probes' readings are attributed to their compartments by the ingester's own statement."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, date, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from apihelp import World
from dbhelp import as_runtime, query
from ingesthelp import store_readings
from openpyxl import Workbook

from coldchain.core import db
from registry.hardware_cells import PROBE_ATTRS
from registry.hardware_import import REBIND, Checked, Registered, Registry, check_rows, read_file
from registry.hardware_store import apply_plan, lock_and_load
from registry.units_import import Table

TODAY = date(2026, 3, 1)
HEADER = (
    "unit_code",
    "equipment_name",
    "equipment_kind",
    "equipment_brand",
    "compartment_name",
    "mode",
    "t_min",
    "t_max",
    "gateway_serial",
    "gateway_vendor",
    "probe_serial",
    "probe_installed_on",
    "probe_warranty_end",
)
SITE, COUNTY = "6101130001", "6101130000"
UNITS = {SITE: (4, "电子城街道社区卫生服务中心", True), COUNTY: (3, "雁塔区疾病预防控制中心", True)}
BASE = {
    "unit_code": SITE,
    "equipment_name": "海尔医用冰箱",
    "equipment_kind": "medical_fridge",
    "equipment_brand": "海尔",
    "compartment_name": "冷藏",
    "mode": "refrigerated",
    "t_min": "2",
    "t_max": "8",
    "gateway_serial": "50001",
    "gateway_vendor": "精创",
    "probe_serial": "508601",
    "probe_installed_on": "2026-01-15",
    "probe_warranty_end": "2029-01-14",
}


def row(**changes: str) -> tuple[str, ...]:
    cells = {**BASE, **changes}
    return tuple(cells[c] for c in HEADER)


def _table(rows: Sequence[tuple[str, ...]], header: tuple[str, ...] = HEADER) -> Table:
    return Table(header, tuple((i, r) for i, r in enumerate(rows, start=2)))


def _check(rows: Sequence[tuple[str, ...]], registry: Registry | None = None) -> Checked:
    return check_rows(_table(rows), registry or Registry(UNITS), TODAY)


def _problems(rows: Sequence[tuple[str, ...]], registry: Registry | None = None) -> list[str]:
    checked = _check(rows, registry)
    assert checked.plan is None
    return [str(p) for p in checked.problems]


# A registry with one fridge at the site: 冷藏 holds probe 108601, 冷冻 probe 108604 (gateway 10001).
FRIDGE = Registered(11, SITE, "海尔双温冰箱", "active", {"equipment_kind": "fridge", "equipment_brand": "海尔"})
COLD = Registered(
    21, SITE, "冷藏", "active", {"limits": ("refrigerated", Decimal("2.0"), Decimal("8.0"))}, 11, ("108601",)
)
FROZEN = Registered(22, SITE, "冷冻", "active", {"limits": ("frozen", None, Decimal("-15.0"))}, 11, ("108604",))
GATEWAY = Registered(31, SITE, "10001", "active", {"gateway_vendor": "精创"})
WHERE = "6101130001 电子城街道社区卫生服务中心 的「海尔双温冰箱/冷藏」（网关 10001）"
PROBE = Registered(41, SITE, "108601", "active", {"probe_vendor": None}, bound=(21, "10001", WHERE))
REGISTRY = Registry(UNITS, [FRIDGE], [COLD, FROZEN], {"10001": GATEWAY}, {"108601": PROBE})
EXISTING = {"equipment_name": "海尔双温冰箱", "equipment_kind": "fridge", "gateway_serial": "10001"}


# ---------------------------------------------------------------------------------------------
# A valid file and its plan.


def test_a_valid_file_is_planned_by_equipment_compartment_gateway_and_probe() -> None:
    rows = [
        row(),
        row(compartment_name="冷冻", mode="冷冻", t_min="", t_max="", probe_serial="508604"),
        # A cold room with two probes in one compartment, its kind and mode in Chinese, no limits.
        row(equipment_name="1号冷库", equipment_kind="冷库", equipment_brand="", compartment_name="库区", t_min="",
            t_max="", gateway_serial="50002", probe_serial="508611", probe_installed_on="2026/2/1"),
        row(equipment_name="1号冷库", equipment_kind="cold_room", equipment_brand="", compartment_name="库区",
            t_min="", t_max="", gateway_serial="50002", gateway_vendor="", probe_serial="508612"),
        ("",) * len(HEADER),  # a blank line is skipped
        row(unit_code=COUNTY, equipment_name="冷藏车", equipment_kind="vehicle", compartment_name="车厢",
            t_min="2.5", t_max="7.5", gateway_serial="50003", probe_serial="508621"),
    ]  # fmt: skip
    checked = _check(rows)
    assert checked.problems == () and checked.plan is not None
    plan = checked.plan
    assert plan.rows == 5 and plan.unchanged == 0 and plan.changes
    assert [(e.row, e.key, e.unit_id, e.attrs["equipment_kind"]) for e in plan.equipment] == [
        (2, (SITE, "海尔医用冰箱"), 4, "medical_fridge"),
        (4, (SITE, "1号冷库"), 4, "cold_room"),
        (7, (COUNTY, "冷藏车"), 3, "vehicle"),
    ]
    assert [(c.key[1:], c.equipment_id, c.limits) for c in plan.compartments] == [
        (("海尔医用冰箱", "冷藏"), None, ("refrigerated", Decimal(2), Decimal(8))),
        (("海尔医用冰箱", "冷冻"), None, ("frozen", None, Decimal(-15))),
        (("1号冷库", "库区"), None, ("refrigerated", Decimal(2), Decimal(8))),
        (("冷藏车", "车厢"), None, ("refrigerated", Decimal("2.5"), Decimal("7.5"))),
    ]
    # One gateway per serial, its vendor from the row that names it.
    assert [(g.serial, g.unit_id, g.attrs["gateway_vendor"]) for g in plan.gateways] == [
        ("50001", 4, "精创"),
        ("50002", 4, "精创"),
        ("50003", 3, "精创"),
    ]
    assert [(p.serial, p.compartment[1:], p.gateway, p.attrs["probe_installed_on"]) for p in plan.probes] == [
        ("508601", ("海尔医用冰箱", "冷藏"), "50001", date(2026, 1, 15)),
        ("508604", ("海尔医用冰箱", "冷冻"), "50001", date(2026, 1, 15)),
        ("508611", ("1号冷库", "库区"), "50002", date(2026, 2, 1)),
        ("508612", ("1号冷库", "库区"), "50002", date(2026, 1, 15)),
        ("508621", ("冷藏车", "车厢"), "50003", date(2026, 1, 15)),
    ]


def test_columns_in_any_order_optional_ones_left_out() -> None:
    header = (
        "probe_serial",
        "gateway_serial",
        "mode",
        "compartment_name",
        "equipment_kind",
        "equipment_name",
        "unit_code",
    )
    table = _table([("508601", "50001", "refrigerated", "冷藏", "fridge", "冰箱", SITE)], header)
    plan = check_rows(table, Registry(UNITS), TODAY).plan
    assert plan is not None and plan.compartments[0].limits == ("refrigerated", Decimal(2), Decimal(8))
    assert plan.probes[0].attrs == dict.fromkeys(PROBE_ATTRS)


def test_the_same_file_against_a_registry_that_has_it_all_changes_nothing() -> None:
    rows = [row(**EXISTING, probe_serial="108601", gateway_vendor="", probe_installed_on="", probe_warranty_end="")]
    plan = _check(rows, REGISTRY).plan
    assert plan is not None and not plan.changes and plan.unchanged == 1


def test_a_later_file_adds_a_probe_to_registered_equipment_and_gateway() -> None:
    rows = [
        row(**EXISTING, probe_serial="108601", probe_installed_on="", probe_warranty_end=""),
        row(**EXISTING, probe_serial="108605"),  # a second probe in 冷藏, next to 108601
        row(**EXISTING, compartment_name="变温", probe_serial="108606", t_min="0", t_max="10"),  # a new zone
    ]
    plan = _check(rows, REGISTRY).plan
    assert plan is not None and plan.unchanged == 1 and plan.equipment == () and plan.gateways == ()
    assert [(c.key[2], c.equipment_id) for c in plan.compartments] == [("变温", 11)]
    assert [(p.serial, p.compartment_id, p.gateway_id) for p in plan.probes] == [
        ("108605", 21, 31),
        ("108606", None, 31),
    ]


# ---------------------------------------------------------------------------------------------
# Problems, each with its row and the reason.


def test_header_missing_repeated_and_unknown_columns() -> None:
    header = ("unit_code", "equipment_name", "Unit_Code", "备注", "probe_serial")
    checked = check_rows(_table([], header), Registry(UNITS), TODAY)
    assert [str(p) for p in checked.problems] == [
        "第 1 行：列 unit_code 出现了 2 次（A、C 列）",
        "第 1 行：未知的列「备注」（D 列）：可用的列见 docs/operations.md",
        "第 1 行：缺少必填列 equipment_kind、compartment_name、mode、gateway_serial（必填列为 unit_code,equipment_name,"
        "equipment_kind,compartment_name,mode,gateway_serial,probe_serial）",
    ]


def test_cells_empty_malformed_or_out_of_range() -> None:
    changes: list[dict[str, str]] = [
        {"unit_code": "610113001", "equipment_name": ""},
        {"equipment_kind": "冰箱柜", "mode": "冷藏室", "probe_serial": "2.08601E+05"},
        {"gateway_serial": "30 001", "equipment_brand": "海\n尔"},
        {"t_min": "两度", "t_max": "8.25"},
        {"t_min": "-95"},
        {"probe_installed_on": "2026-02-30", "probe_warranty_end": "明年"},
        {"probe_installed_on": "2026-01-15", "probe_warranty_end": "2025-12-31"},
        {"probe_installed_on": "2026-03-02", "probe_warranty_end": "2030-01-01"},
        {"probe_installed_on": "1999-12-31", "probe_warranty_end": ""},
    ]
    rows = [row(**{"probe_serial": f"5086{i:02d}", **c}) for i, c in enumerate(changes)]
    assert _problems(rows) == [
        "第 2 行：单位编码「610113001」应为 10 位数字",
        "第 2 行：设备名称 equipment_name 为空",
        "第 3 行：设备类型 equipment_kind「冰箱柜」无效，应为 fridge（冰箱）、freezer（冰柜）、"
        "medical_fridge（医用冷藏柜）、cold_room（冷库）、vehicle（冷藏车）之一",
        "第 3 行：温区模式 mode「冷藏室」无效，应为 refrigerated（冷藏）、frozen（冷冻）之一",
        "第 3 行：探头编号「2.08601E+05」应为 1～32 位字母、数字、“-”或“_”"
        "（Excel 把编号显示成了科学计数法，请把该列设为“文本”后重新输入）",
        "第 4 行：设备品牌含有换行符或其他控制字符",
        "第 4 行：网关编号「30 001」应为 1～32 位字母、数字、“-”或“_”",
        "第 5 行：温度下限 t_min「两度」不是数字",
        "第 5 行：温度上限「8.25」最多一位小数",
        "第 6 行：温度下限 -95 ℃ 超出探头量程 −90～60 ℃",
        "第 7 行：探头安装日期 probe_installed_on「2026-02-30」不是有效日期（应为 YYYY-MM-DD，如 2026-03-15）",
        "第 7 行：探头保修截止日期 probe_warranty_end「明年」不是有效日期（应为 YYYY-MM-DD，如 2026-03-15）",
        "第 8 行：探头保修截止日期 2025-12-31 早于安装日期 2026-01-15",
        "第 9 行：探头安装日期 2026-03-02 晚于今天（2026-03-01）",
        "第 10 行：探头安装日期 1999-12-31 不在 2000～2099 年之间",
    ]


def test_limits_that_make_no_band_or_no_sense() -> None:
    limits = [
        ("refrigerated", "8", "2"),
        ("refrigerated", "", "8"),
        ("refrigerated", "2", "30"),
        ("refrigerated", "-20", "-15"),  # refrigerated by mistake
        ("frozen", "", "5"),
        ("refrigerated", "4.5", "5"),
        ("frozen", "-25", ""),  # fine: −25…−15 ℃
        ("refrigerated", "3℃", "７"),  # fine: a unit typed along, a full-width digit
    ]
    rows = [
        row(equipment_name=f"冰箱{i}", probe_serial=f"5086{i:02d}", mode=mode, t_min=low, t_max=high)
        for i, (mode, low, high) in enumerate(limits)
    ]
    assert _problems(rows) == [
        "第 2 行：温度下限必须低于上限（文件中为 冷藏 8～2 ℃）",
        "第 3 行：冷藏温区必须有温度下限（文件中为 冷藏 ≤ 8 ℃）",
        "第 4 行：冷藏温区的限值应在 0～25 ℃ 之间（文件中为 冷藏 2～30 ℃）：请检查模式是否填错、小数点是否漏写",
        "第 5 行：冷藏温区的限值应在 0～25 ℃ 之间（文件中为 冷藏 -20～-15 ℃）：请检查模式是否填错、小数点是否漏写",
        "第 6 行：冷冻温区的温度上限应不高于 0 ℃（文件中为 冷冻 ≤ 5 ℃）：请检查模式是否填错",
        "第 7 行：上下限相差不足 1 ℃（文件中为 冷藏 4.5～5 ℃）：报警回差为 0.5 ℃，报警将无法解除",
    ]


def test_rows_of_one_thing_that_disagree() -> None:
    rows = [
        row(),
        row(probe_serial="508602", t_max="10"),  # 冷藏 of the same fridge, other limits
        row(probe_serial="508601", compartment_name="冷冻", mode="frozen", t_min="", t_max=""),  # serial again
        row(probe_serial="508603", compartment_name="冷冻", mode="frozen", t_min="", t_max="", equipment_kind="fridge"),
        row(probe_serial="508604", equipment_name="冰柜", gateway_vendor="宇电"),
        row(probe_serial="508605", equipment_name="冷藏车", unit_code=COUNTY),  # gateway 50001 in two units
    ]
    assert _problems(rows) == [
        "第 3 行：温区「海尔医用冰箱/冷藏」的模式和限值与第 2 行不同"
        "（第 2 行为「冷藏 2～8 ℃」，本行为「冷藏 2～10 ℃」）",
        "第 4 行：探头编号 508601 与第 2 行重复",
        "第 5 行：设备「海尔医用冰箱」的设备类型与第 2 行不同（第 2 行为「医用冷藏柜」，本行为「冰箱」）",
        "第 6 行：网关 50001 的网关厂家与第 2 行不同（第 2 行为「精创」，本行为「宇电」）",
        "第 7 行：网关 50001 在第 2 行属于单位 6101130001，本行为单位 6101130000：一个网关只能属于一个单位",
    ]


def test_unknown_or_closed_units_are_named_once_with_their_row_count() -> None:
    units = {**UNITS, COUNTY: (3, "雁塔区疾病预防控制中心", False)}
    rows = [row(unit_code="6199990001", probe_serial=f"50860{i}") for i in range(3)]
    rows.append(row(unit_code=COUNTY, probe_serial="508609", gateway_serial="50009"))
    assert _problems(rows, Registry(units)) == [
        "第 2 行：单位编码 6199990001 不在数据库中（共 3 行）：请先导入单位（coldchain units import）",
        "第 5 行：单位 6101130000（雁塔区疾病预防控制中心）已停用",
    ]


def test_registered_hardware_is_never_rebound_or_changed() -> None:
    stock = Registered(42, COUNTY, "108602", "in_stock", {"probe_vendor": "精创"})
    frozen_probe = Registered(44, SITE, "108604", "active", {}, bound=(22, "10001", WHERE.replace("冷藏", "冷冻")))
    scrapped = Registered(43, SITE, "108603", "decommissioned", {})
    elsewhere = Registered(32, "6105020001", "20001", "active", {})
    spare_gateway = Registered(33, None, "20002", "in_stock", {})
    twins = [Registered(i, SITE, "冰柜", "active", {}) for i in (13, 14)]
    registry = Registry(
        UNITS,
        [FRIDGE, Registered(12, SITE, "旧冰箱", "decommissioned", {}), *twins],
        [COLD, FROZEN],
        {"10001": GATEWAY, "20001": elsewhere, "20002": spare_gateway},
        {"108601": PROBE, "108602": stock, "108603": scrapped, "108604": frozen_probe},
    )  # fmt: skip
    rows = [
        row(**EXISTING, equipment_brand="美的", probe_serial="108609"),  # other brand, 冷藏 probe missing
        row(**{**EXISTING, "equipment_name": "旧冰箱"}, probe_serial="108610"),
        row(**{**EXISTING, "equipment_name": "冰柜"}, probe_serial="108611"),
        row(**EXISTING, compartment_name="冷冻", mode="frozen", t_min="", t_max="-20", probe_serial="108612",
            equipment_brand=""),
        row(**EXISTING, compartment_name="新温区", probe_serial="108601", equipment_brand=""),  # bound to 冷藏
        row(probe_serial="108602"),
        row(probe_serial="108603"),
        row(gateway_serial="20001", probe_serial="108613"),
        row(gateway_serial="20002", probe_serial="108614"),
        row(**{**EXISTING, "gateway_serial": "50001"}, probe_serial="108604", compartment_name="冷冻", mode="frozen",
            t_min="", t_max="-20", equipment_brand=""),  # right compartment, another gateway
    ]  # fmt: skip
    assert _problems(rows, registry) == [
        "第 2 行：设备「海尔双温冰箱」已登记，设备品牌为「海尔」，文件中为「美的」："
        "导入不修改已登记的信息，请在系统中修改",
        "第 2 行：温区「海尔双温冰箱/冷藏」已绑定探头 108601，文件未列出它们却为该温区新增探头：更换探头请在系统中"
        "填报附表1；如为增加探头，请在文件中一并列出已有探头",
        "第 3 行：设备「旧冰箱」已停用：导入不恢复已停用的设备，新设备请另起名称",
        "第 4 行：单位 6101130001 已有 2 台名为「冰柜」的设备，无法确定是哪一台：请先在系统中改名",
        "第 5 行：温区「海尔双温冰箱/冷冻」已登记，模式和限值为「冷冻 ≤ -15 ℃」，文件中为「冷冻 ≤ -20 ℃」："
        "导入不修改已登记的信息，请在系统中修改",
        f"第 6 行：探头 108601 已绑定在{WHERE}：{REBIND}",
        f"第 7 行：探头 108602 已登记（单位 6101130000，未绑定）：{REBIND}",
        "第 8 行：探头 108603 已报废",
        f"第 9 行：网关 20001 已登记在单位 6105020001，文件中为单位 6101130001：{REBIND}",
        f"第 10 行：网关 20002 已登记在省级库存，文件中为单位 6101130001：{REBIND}",
        f"第 11 行：探头 108604 当前经网关 10001 上报，文件中为网关 50001：{REBIND}",
    ]


def test_data_without_a_column_name_header_only_and_blank_lines() -> None:
    stray = check_rows(_table([(*row(), "", "多写了一格")], (*HEADER, "", "")), Registry(UNITS), TODAY)
    assert [str(p) for p in stray.problems] == ["第 2 行：O 列有内容「多写了一格」，但该列没有列名"]
    assert _problems([]) == ["第 1 行：文件中只有表头，没有硬件"]


# ---------------------------------------------------------------------------------------------
# Reading files.


def test_csv_and_xlsx_read_as_the_same_rows(tmp_path: Path) -> None:
    csv_path = tmp_path / "供货清单.csv"
    csv_path.write_text("".join(",".join(r) + "\r\n" for r in [HEADER, row()]), encoding="utf-8-sig", newline="")
    book = Workbook()
    sheet = book.active
    assert sheet is not None
    sheet.append(list(HEADER))
    # As typed into Excel: codes and serials as numbers, limits as numbers, dates as dates.
    cells: list[Any] = [int(SITE), "海尔医用冰箱", "医用冷藏柜", "海尔", "冷藏", "冷藏", 2, 8.0, 50001, "精创", 508601]
    sheet.append([*cells, datetime(2026, 1, 15), date(2029, 1, 14)])
    book.save(xlsx_path := tmp_path / "供货清单.xlsx")
    plans = [check_rows(read_file(p), Registry(UNITS), TODAY).plan for p in (csv_path, xlsx_path)]
    assert plans[0] is not None and plans[0] == plans[1]
    (tmp_path / "empty.csv").write_bytes(b"\xef\xbb\xbf")
    with pytest.raises(ValueError, match="第 1 行应为表头 unit_code,equipment_name,equipment_kind,"):
        read_file(tmp_path / "empty.csv")


# ---------------------------------------------------------------------------------------------
# Applying, as the runtime role.


def test_apply_as_runtime_role_binds_the_probes_so_their_readings_are_attributed(db_url: str, world: World) -> None:
    rows = [
        row(),
        row(compartment_name="冷冻", mode="frozen", t_min="", t_max="", probe_serial="508604"),
        row(**EXISTING, probe_serial="108601", probe_installed_on="", probe_warranty_end=""),
        row(**EXISTING, compartment_name="变温", t_min="0", t_max="10", probe_serial="108606"),
    ]
    with db.connect(as_runtime(db_url)) as conn:
        registry = lock_and_load(conn, _table(rows))
        checked = check_rows(_table(rows), registry, TODAY)
        assert checked.plan is not None, checked.problems
        apply_plan(conn, checked.plan, "硬件导入 test.csv")
        conn.commit()
    bound = query(
        db_url,
        """SELECT p.serial, p.status, u.code, e.name AS equipment, e.kind, c.name AS compartment, c.mode,
                  c.t_min::text, c.t_max::text, g.serial AS gateway, b.reason
           FROM probe_bindings_current b JOIN probes p ON p.id = b.probe_id JOIN gateways g ON g.id = b.gateway_id
           JOIN compartments c ON c.id = b.compartment_id JOIN equipment e ON e.id = c.equipment_id
           JOIN units u ON u.id = e.unit_id WHERE p.serial IN ('508601', '508604', '108606') ORDER BY p.serial""",
    )
    assert {r.pop("reason") for r in bound} == {"硬件导入 test.csv"}
    assert [tuple(r.values()) for r in bound] == [
        ("108606", "active", SITE, "海尔双温冰箱", "fridge", "变温", "refrigerated", "0.0", "10.0", "10001"),
        ("508601", "active", SITE, "海尔医用冰箱", "medical_fridge", "冷藏", "refrigerated", "2.0", "8.0", "50001"),
        ("508604", "active", SITE, "海尔医用冰箱", "medical_fridge", "冷冻", "frozen", None, "-15.0", "50001"),
    ]
    audit = query(
        db_url, "SELECT entity, op, count(*) AS n FROM audit_log WHERE action = 'hardware.import' GROUP BY 1, 2"
    )
    assert sorted((r["entity"], r["op"], r["n"]) for r in audit) == [
        ("compartments", "INSERT", 3),
        ("equipment", "INSERT", 1),
        ("gateways", "INSERT", 1),
        ("probe_bindings", "INSERT", 3),
        ("probes", "INSERT", 3),
    ]
    # End to end: a reading of an imported probe, stored by the ingester's own statement, is
    # attributed to the compartment of the file.
    ids = {r["serial"]: r["id"] for r in query(db_url, "SELECT serial, id FROM probes")}
    assert (
        store_readings(db_url, [(ids["508604"], datetime.now(UTC), -18.5), (ids["108606"], datetime.now(UTC), 5.0)])
        == 2
    )
    attributed = query(
        db_url,
        """SELECT c.name, r.t FROM probe_readings_attributed r JOIN compartments c ON c.id = r.compartment_id
           JOIN probes p ON p.id = r.probe_id WHERE p.serial IN ('508604', '108606')""",
    )
    assert sorted((r["name"], r["t"]) for r in attributed) == sorted([("冷冻", -18.5), ("变温", 5.0)])
