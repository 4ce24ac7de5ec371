"""The units import's rules (issue #18): every problem with its spreadsheet row and Chinese text,
the plan of a valid file, reading CSV / XLSX, and applying a plan as the runtime role."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pytest
from dbhelp import as_runtime, query
from openpyxl import Workbook

from coldchain.core import db
from registry.units_import import (
    ExistingUnit,
    Table,
    apply_plan,
    check_rows,
    lock_and_load,
    read_table,
)

HEADER = ("code", "name", "parent_code", "level")
# A small Shaanxi: 韩城市 reports straight to the province although its code sits under 渭南.
TREE: list[tuple[str, str, str, str]] = [
    ("6100000000", "陕西省疾病预防控制中心", "", "province"),
    ("6101000000", "西安市疾病预防控制中心", "6100000000", "city"),
    ("6101130000", "雁塔区疾病预防控制中心", "6101000000", "county"),
    ("6101130001", "电子城街道社区卫生服务中心", "6101130000", "township"),
    ("6105810000", "韩城市疾病预防控制中心", "6100000000", "county"),
    ("6105810001", "龙门镇卫生院", "6105810000", "township"),
]


def _table(rows: Sequence[tuple[str, ...]], header: tuple[str, ...] = HEADER) -> Table:
    return Table(header, tuple((i, r) for i, r in enumerate(rows, start=2)))


def _problems(rows: Sequence[tuple[str, ...]], existing: dict[str, ExistingUnit] | None = None) -> list[str]:
    checked = check_rows(_table(rows), existing or {})
    assert checked.plan is None
    return [str(p) for p in checked.problems]


def _existing(rows: list[tuple[str, str, str, str]]) -> dict[str, ExistingUnit]:
    return {c: ExistingUnit(c, n, lv, p or None) for c, n, p, lv in rows}


# ---------------------------------------------------------------------------------------------
# Problems, each with its row.


def test_header_missing_repeated_and_extra_columns() -> None:
    checked = check_rows(_table([TREE[0][:3]], ("code", "name", "Code")), {})
    assert checked.plan is None
    assert [str(p) for p in checked.problems] == [
        "第 1 行：列 code 出现了 2 次（A、C 列）",
        "第 1 行：缺少列 parent_code、level（表头应为 code,name,parent_code,level）",
    ]
    extra = check_rows(_table([TREE[0] + ("省直",)], (*HEADER, "备注")), {})
    assert [str(p) for p in extra.problems] == [
        "第 1 行：多余的列「备注」（E 列）：只应有 code、name、parent_code、level 四列"
    ]


def test_columns_in_any_order_and_data_without_a_column_name() -> None:
    header = ("level", "code", "parent_code", "name")
    rows = [(lv, c, p, n) for c, n, p, lv in TREE]
    assert check_rows(_table(rows, header), {}).plan is not None
    stray = [(*rows[0], "", "多写了一格")]
    assert [str(p) for p in check_rows(_table(stray, header), {}).problems] == [
        "第 2 行：F 列有内容「多写了一格」，但该列没有列名"
    ]


def test_codes_empty_malformed_and_repeated() -> None:
    rows = [
        TREE[0],
        ("", "西安市疾控", "6100000000", "city"),
        ("610113000", "雁塔区疾控", "6100000000", "county"),
        ("6.10113E+09", "雁塔区疾控", "6100000000", "county"),
        ("６１０１０００００", "全角数字", "6100000000", "city"),
        ("6105810000", "韩城市疾控", "6100000000", "county"),
        ("6105810000", "韩城市疾控（重复）", "6100000000", "county"),
    ]
    assert _problems(rows) == [
        "第 3 行：单位编码 code 为空",
        "第 4 行：单位编码「610113000」应为 10 位数字",
        "第 5 行：单位编码「6.10113E+09」应为 10 位数字"
        "（Excel 把编码显示成了科学计数法，请把该列设为“文本”后重新输入）",
        "第 6 行：单位编码「６１０１０００００」应为 10 位数字",
        "第 8 行：单位编码 6105810000 与第 7 行重复",
    ]


def test_names_empty_too_long_or_with_control_characters() -> None:
    rows = [
        TREE[0],
        ("6101000000", "", "6100000000", "city"),
        ("6102000000", "铜" * 101, "6100000000", "city"),
        ("6103000000", "宝鸡\n市疾控", "6100000000", "city"),
        ("6104000000", "咸" * 100, "6100000000", "city"),  # exactly the limit: fine
    ]
    assert _problems(rows) == [
        "第 3 行：单位名称 name 为空",
        "第 4 行：单位名称过长：101 个字符，最多 100 个",
        "第 5 行：单位名称含有换行符或其他控制字符",
    ]


def test_bad_level_and_bad_parent_code() -> None:
    rows = [TREE[0], ("6101000000", "西安市疾控", "6100000000", "district"), ("6102000000", "铜川", "61", "city")]
    assert _problems(rows) == [
        "第 3 行：级别 level「district」无效，"
        "应为 province（省级）、city（市级）、county（县级）、township（乡级）之一",
        "第 4 行：上级编码「61」应为 10 位数字",
    ]
    assert _problems([(*TREE[0][:3], "")]) == [
        "第 2 行：级别 level 为空，应为 province（省级）、city（市级）、county（县级）、township（乡级）之一"
    ]


def test_unknown_parent_is_neither_in_the_file_nor_in_the_database() -> None:
    rows = [*TREE[:2], ("6102000000", "铜川市疾控", "6200000000", "city")]
    assert _problems(rows) == ["第 4 行：上级编码 6200000000 既不在文件中，也不在数据库中"]
    # The same parent already in the database is fine.
    db_only = _existing([("6200000000", "甘肃省", "", "province")])
    checked = check_rows(_table([("6201000000", "兰州市疾控", "6200000000", "city")]), db_only)
    assert checked.plan is not None and [u.code for u in checked.plan.new] == ["6201000000"]


def test_wrong_nesting() -> None:
    rows = [
        TREE[0],
        TREE[1],
        ("6101130001", "乡级挂在市下", "6101000000", "township"),
        ("6101130000", "雁塔区疾控", "6101000000", "county"),
        ("6101140000", "县挂在县下", "6101130000", "county"),
        ("6101150000", "市缺上级", "", "city"),
        ("6101160000", "自己的上级", "6101160000", "county"),
    ]
    assert _problems(rows) == [
        "第 4 行：乡级单位不能隶属于市级单位 6101000000（乡级单位的上级应为县级单位）",
        "第 6 行：县级单位不能隶属于县级单位 6101130000（县级单位的上级应为市级或省级单位）",
        "第 7 行：市级单位必须填写上级编码 parent_code",
        "第 8 行：单位不能是自己的上级",
    ]


def test_one_province_without_a_parent() -> None:
    rows = [
        TREE[0],
        ("6200000000", "甘肃省疾控", "", "province"),
        ("6300000000", "青海省疾控", "6100000000", "province"),
    ]
    assert _problems(rows) == [
        "第 3 行：省级单位只能有一个：已有 6100000000 陕西省疾病预防控制中心（第 2 行）",
        "第 4 行：省级单位不能有上级（上级编码 6100000000 应为空）",
        "第 4 行：省级单位只能有一个：已有 6100000000 陕西省疾病预防控制中心（第 2 行）",
    ]
    # The database's province counts too.
    assert _problems([("6200000000", "甘肃省疾控", "", "province")], _existing(TREE[:1])) == [
        "第 2 行：省级单位只能有一个：已有 6100000000 陕西省疾病预防控制中心（已在数据库中）"
    ]


def test_cycle_is_named_on_every_row_in_it() -> None:
    rows = [
        TREE[0],
        ("6101000000", "甲", "6102000000", "city"),
        ("6102000000", "乙", "6103000000", "city"),
        ("6103000000", "丙", "6101000000", "city"),
    ]
    problems = _problems(rows)
    ring = "上下级关系成环：6101000000 → 6102000000 → 6103000000 → 6101000000"
    assert [p for p in problems if "成环" in p] == [f"第 {n} 行：{ring}" for n in (3, 4, 5)]
    assert all("市级单位不能隶属于市级单位" in p for p in problems if "成环" not in p) and len(problems) == 6


def test_a_unit_the_database_has_at_another_level_or_under_another_parent_is_refused() -> None:
    existing = _existing(TREE)
    rows = [
        *TREE[:2],
        ("6101130000", "雁塔区疾控", "6100000000", "county"),  # moved under the province
        ("6101130001", "电子城街道社区卫生服务中心", "6101130000", "county"),  # a township made a county
        ("6105810000", "韩城市疾控", "", "county"),
    ]
    assert _problems(rows, existing) == [
        "第 4 行：单位 6101130000（雁塔区疾病预防控制中心）在数据库中隶属于 6101000000，"
        "文件中隶属于 6100000000：导入不移动单位",
        "第 5 行：县级单位不能隶属于县级单位 6101130000（县级单位的上级应为市级或省级单位）",
        "第 5 行：单位 6101130001（电子城街道社区卫生服务中心）在数据库中是乡级，文件中是县级：导入不更改单位级别",
        "第 6 行：县级单位必须填写上级编码 parent_code",
        "第 6 行：单位 6105810000（韩城市疾病预防控制中心）在数据库中隶属于 6100000000，文件中没有上级：导入不移动单位",
    ]


def test_one_bad_row_among_many_is_the_only_problem() -> None:
    rows: list[tuple[str, ...]] = [*TREE]
    rows += [(f"61011300{i:02d}", f"第{i}卫生院", "6101130000", "township") for i in range(2, 99)]
    rows[50] = (rows[50][0], rows[50][1], rows[50][2], "village")
    problems = _problems(rows)
    assert len(problems) == 1 and problems[0].startswith("第 52 行：级别 level「village」无效")


def test_header_only_and_blank_lines() -> None:
    assert _problems([]) == ["第 1 行：文件中只有表头，没有单位"]
    checked = check_rows(_table([TREE[0], ("", "", "", ""), TREE[1]]), {})
    assert checked.plan is not None and checked.plan.rows == 2


# ---------------------------------------------------------------------------------------------
# Plans.


def test_a_new_province_is_all_new_parents_first() -> None:
    checked = check_rows(_table(list(reversed(TREE))), {})
    assert checked.problems == () and checked.plan is not None
    plan = checked.plan
    assert [(u.code, u.level, u.parent_code) for u in plan.new] == [
        ("6100000000", "province", None),
        ("6101000000", "city", "6100000000"),
        ("6101130000", "county", "6101000000"),
        ("6105810000", "county", "6100000000"),
        ("6101130001", "township", "6101130000"),
        ("6105810001", "township", "6105810000"),
    ]
    assert plan.new[0].row == 7  # the province was the last row of the reversed file
    assert (plan.rows, plan.renamed, plan.unchanged, plan.not_in_file, plan.changes) == (6, (), 0, (), True)


def test_a_later_file_renames_adds_and_keeps_what_it_does_not_mention() -> None:
    existing = _existing([*TREE, ("6105000000", "渭南市疾病预防控制中心", "6100000000", "city")])
    rows = [
        *TREE[:2],
        ("6101130000", "西安市雁塔区疾病预防控制中心", "6101000000", "county"),
        *TREE[3:],
        ("6101130002", "丈八沟街道社区卫生服务中心", "6101130000", "township"),
    ]
    plan = check_rows(_table(rows), existing).plan
    assert plan is not None
    assert [(u.code, u.row) for u in plan.new] == [("6101130002", 8)]
    assert [(r.code, r.old_name, r.new_name, r.row) for r in plan.renamed] == [
        ("6101130000", "雁塔区疾病预防控制中心", "西安市雁塔区疾病预防控制中心", 4)
    ]
    assert plan.unchanged == 5 and [u.code for u in plan.not_in_file] == ["6105000000"]
    same = check_rows(_table(list(TREE)), _existing(TREE)).plan
    assert same is not None and not same.changes and same.unchanged == 6


# ---------------------------------------------------------------------------------------------
# Reading files.


def test_csv_with_and_without_bom_and_refused_encodings(tmp_path: Path) -> None:
    text = "code,name,parent_code,level\r\n" + "".join(",".join(r) + "\r\n" for r in TREE[:2]) + "\r\n\r\n"
    for encoding in ("utf-8-sig", "utf-8"):
        path = tmp_path / f"units-{encoding}.csv"
        path.write_text(text, encoding=encoding, newline="")
        table = read_table(path)
        assert table.header == HEADER
        assert table.rows == ((2, TREE[0]), (3, TREE[1]))
    gbk = tmp_path / "gbk.csv"
    gbk.write_bytes(text.encode("gbk"))
    with pytest.raises(ValueError, match="不是 UTF-8 编码"):
        read_table(gbk)
    with pytest.raises(ValueError, match=r"不支持的文件类型「\.xls」"):
        read_table(tmp_path / "units.xls")
    (tmp_path / "empty.csv").write_bytes(b"\xef\xbb\xbf\r\n")
    with pytest.raises(ValueError, match="是空的"):
        read_table(tmp_path / "empty.csv")
    (tmp_path / "fake.xlsx").write_text("not a zip")
    with pytest.raises(ValueError, match="无法按 XLSX 读取"):
        read_table(tmp_path / "fake.xlsx")


def test_xlsx_numbers_as_codes_and_row_numbers_as_shown(tmp_path: Path) -> None:
    book = Workbook()
    sheet = book.active
    assert sheet is not None
    sheet.append(list(HEADER))
    sheet.append([6100000000, " 陕西省疾病预防控制中心 ", None, "province"])
    sheet["A5"], sheet["B5"], sheet["C5"], sheet["D5"] = "6101000000", "西安市疾控", 6100000000.0, "city"
    path = tmp_path / "units.xlsx"
    book.save(path)
    table = read_table(path)
    assert table.rows[0] == (2, ("6100000000", "陕西省疾病预防控制中心", "", "province"))
    assert table.rows[-1] == (5, ("6101000000", "西安市疾控", "6100000000", "city"))
    assert check_rows(table, {}).plan is not None


# ---------------------------------------------------------------------------------------------
# Applying, as the runtime role.


def test_apply_as_runtime_role_builds_the_tree_and_audits_each_row(db_url: str) -> None:
    with db.connect(as_runtime(db_url)) as conn:
        plan = check_rows(_table(list(TREE)), lock_and_load(conn)).plan
        assert plan is not None
        apply_plan(conn, plan)
        conn.commit()
    with db.connect(as_runtime(db_url)) as conn:
        # A later file of 韩城 alone, its site renamed.
        rows = [TREE[0], TREE[4], ("6105810001", "龙门镇中心卫生院", "6105810000", "township")]
        plan = check_rows(_table(rows), lock_and_load(conn)).plan
        assert plan is not None and [r.code for r in plan.renamed] == ["6105810001"]
        apply_plan(conn, plan)
        conn.commit()
    # 韩城市 and its site are in the province's jurisdiction, not 西安's.
    tree = query(
        db_url,
        "SELECT a.code AS ancestor, count(*) AS n FROM unit_tree t JOIN units a ON a.id = t.ancestor_id "
        "GROUP BY a.code ORDER BY a.code",
    )
    assert [(r["ancestor"], r["n"]) for r in tree] == [
        ("6100000000", 6),
        ("6101000000", 3),
        ("6101130000", 2),
        ("6101130001", 1),
        ("6105810000", 2),
        ("6105810001", 1),
    ]
    site = query(db_url, "SELECT name, version FROM units WHERE code = '6105810001'")
    assert site == [{"name": "龙门镇中心卫生院", "version": 2}]
    audit = query(db_url, "SELECT action, op, count(*) AS n FROM audit_log WHERE entity = 'units' GROUP BY 1, 2")
    assert sorted((r["action"], r["op"], r["n"]) for r in audit) == [
        ("units.import", "INSERT", 6),
        ("units.import", "UPDATE", 1),
    ]
