"""``coldchain units import`` as an administrator runs it (issue #18): a subprocess, the runtime
role as ``COLDCHAIN_DATABASE_URL``, the owner as ``COLDCHAIN_OWNER_DATABASE_URL``."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from dbhelp import as_runtime, query
from openpyxl import Workbook

HEADER = ("code", "name", "parent_code", "level")
TREE: list[tuple[str, str, str, str]] = [
    ("6100000000", "陕西省疾病预防控制中心", "", "province"),
    ("6101000000", "西安市疾病预防控制中心", "6100000000", "city"),
    ("6101130000", "雁塔区疾病预防控制中心", "6101000000", "county"),
    ("6101130001", "电子城街道社区卫生服务中心", "6101130000", "township"),
    ("6101130002", "小寨路街道社区卫生服务中心", "6101130000", "township"),
    ("6105000000", "渭南市疾病预防控制中心", "6100000000", "city"),
    ("6105020000", "临渭区疾病预防控制中心", "6105000000", "county"),
    ("6105020001", "双王街道社区卫生服务中心", "6105020000", "township"),
    # 韩城市 reports straight to the province.
    ("6105810000", "韩城市疾病预防控制中心", "6100000000", "county"),
    ("6105810001", "龙门镇卫生院", "6105810000", "township"),
]

_UNITS = "SELECT code, name, level, (SELECT p.code FROM units p WHERE p.id = u.parent_id) AS parent FROM units u"


def _import(db_url: str, path: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "coldchain.cli", "units", "import", str(path), *extra],
        env={
            **os.environ,
            "COLDCHAIN_DATABASE_URL": as_runtime(db_url),
            "COLDCHAIN_OWNER_DATABASE_URL": db_url,
        },
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def _csv(path: Path, rows: list[tuple[str, str, str, str]]) -> Path:
    """As Excel saves "CSV UTF-8": a BOM and CRLF line ends."""
    text = "".join(",".join(r) + "\r\n" for r in [HEADER, *rows])
    path.write_text(text, encoding="utf-8-sig", newline="")
    return path


def _units(db_url: str) -> set[tuple[str, str, str, str | None]]:
    return {(r["code"], r["name"], r["level"], r["parent"]) for r in query(db_url, _UNITS)}


def _as_db(rows: list[tuple[str, str, str, str]]) -> set[tuple[str, str, str, str | None]]:
    return {(c, n, lv, p or None) for c, n, p, lv in rows}


def test_csv_with_bom_imports_the_tree_and_a_second_run_changes_nothing(db_url: str, tmp_path: Path) -> None:
    path = _csv(tmp_path / "陕西.csv", TREE)
    first = _import(db_url, path)
    assert first.returncode == 0, first.stderr
    assert "新增 10，改名 0，未变 0，文件中未出现（保留） 0" in first.stdout
    assert "6105810000 韩城市疾病预防控制中心（县级，上级 6100000000）" in first.stdout
    assert _units(db_url) == _as_db(TREE)
    # The closure table: 韩城's site is in the province's jurisdiction and not 渭南's.
    ancestors = query(
        db_url,
        "SELECT a.code FROM unit_tree t JOIN units a ON a.id = t.ancestor_id JOIN units d ON d.id = t.descendant_id "
        "WHERE d.code = '6105810001' ORDER BY t.depth",
    )
    assert [r["code"] for r in ancestors] == ["6105810001", "6105810000", "6100000000"]
    audited = query(db_url, "SELECT count(*) AS n FROM audit_log WHERE action = 'units.import'")[0]["n"]
    assert audited == 10

    again = _import(db_url, path)
    assert again.returncode == 0, again.stderr
    assert "新增 0，改名 0，未变 10" in again.stdout and "无变化" in again.stdout
    assert query(db_url, "SELECT count(*) AS n FROM audit_log")[0]["n"] == audited


def test_xlsx_dry_run_writes_nothing_then_imports(db_url: str, tmp_path: Path) -> None:
    book = Workbook()
    sheet = book.active
    assert sheet is not None
    sheet.title = "单位"
    sheet.append(list(HEADER))
    for code, name, parent, level in TREE:
        # Codes typed as numbers, as they are when someone keys them into Excel.
        sheet.append([int(code), name, int(parent) if parent else None, level])
    path = tmp_path / "units.xlsx"
    book.save(path)

    dry = _import(db_url, path, "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert "新增 10" in dry.stdout and "试运行（--dry-run）" in dry.stdout
    assert _units(db_url) == set()

    real = _import(db_url, path)
    assert real.returncode == 0, real.stderr
    assert "已导入并提交" in real.stdout
    assert _units(db_url) == _as_db(TREE)


def test_a_later_file_adds_a_township_renames_a_county_and_deletes_nothing(db_url: str, tmp_path: Path) -> None:
    assert _import(db_url, _csv(tmp_path / "first.csv", TREE)).returncode == 0
    # The next file covers 西安 only: a new site, 雁塔 renamed; 渭南 and 韩城 are not in it.
    later = [
        *TREE[:2],
        ("6101130000", "西安市雁塔区疾病预防控制中心", "6101000000", "county"),
        *TREE[3:5],
        ("6101130003", "大雁塔街道社区卫生服务中心", "6101130000", "township"),
    ]
    proc = _import(db_url, _csv(tmp_path / "later.csv", later))
    assert proc.returncode == 0, proc.stderr
    assert "新增 1，改名 1，未变 4，文件中未出现（保留） 5" in proc.stdout
    assert "6101130000 雁塔区疾病预防控制中心 → 西安市雁塔区疾病预防控制中心" in proc.stdout
    assert "文件中未出现（保留）：" in proc.stdout and "6105810000 韩城市疾病预防控制中心（县级）" in proc.stdout

    expected = _as_db(TREE) - {("6101130000", "雁塔区疾病预防控制中心", "county", "6101000000")}
    expected |= {
        ("6101130000", "西安市雁塔区疾病预防控制中心", "county", "6101000000"),
        ("6101130003", "大雁塔街道社区卫生服务中心", "township", "6101130000"),
    }
    assert _units(db_url) == expected
    # History kept: the rename's audit row holds both names; the new site's its insert.
    changes = query(
        db_url,
        "SELECT op, before ->> 'name' AS before, after ->> 'name' AS after, after ->> 'code' AS code "
        "FROM audit_log WHERE action = 'units.import' AND entity = 'units' ORDER BY id OFFSET 10",
    )
    assert changes == [
        {"op": "INSERT", "before": None, "after": "大雁塔街道社区卫生服务中心", "code": "6101130003"},
        {
            "op": "UPDATE",
            "before": "雁塔区疾病预防控制中心",
            "after": "西安市雁塔区疾病预防控制中心",
            "code": "6101130000",
        },
    ]


def test_a_bad_file_changes_nothing_and_prints_every_problem(db_url: str, tmp_path: Path) -> None:
    assert _import(db_url, _csv(tmp_path / "first.csv", TREE)).returncode == 0
    before = _units(db_url)
    rows = [*TREE]
    rows += [(f"6101130{i + 100:03d}", f"第{i}社区卫生服务站", "6101130000", "township") for i in range(200)]
    rows[8] = ("6105810000", "韩城市疾病预防控制中心", "6105000000", "county")  # row 10: moves 韩城
    rows[30] = ("6101130120", "", "6101130000", "township")  # row 32: no name
    rows[120] = ("6101130210", "挂在市下的站", "6101000000", "township")  # row 122: under a city
    rows[150] = ("61011302400", "编码多一位", "6101130000", "township")  # row 152: 11 digits
    proc = _import(db_url, _csv(tmp_path / "bad.csv", rows))
    assert proc.returncode == 1
    assert [line.strip() for line in proc.stderr.splitlines()] == [
        "错误：文件 bad.csv 有 4 处问题，未导入任何单位：",
        "第 10 行：单位 6105810000（韩城市疾病预防控制中心）在数据库中隶属于 6100000000，文件中隶属于 6105000000："
        "导入不移动单位",
        "第 32 行：单位名称 name 为空",
        "第 122 行：乡级单位不能隶属于市级单位 6101000000（乡级单位的上级应为县级单位）",
        "第 152 行：单位编码「61011302400」应为 10 位数字",
    ]
    assert _units(db_url) == before


def test_an_unreadable_file_is_refused_with_the_reason(db_url: str, tmp_path: Path) -> None:
    gbk = tmp_path / "gbk.csv"
    gbk.write_bytes(("code,name,parent_code,level\r\n" + ",".join(TREE[0]) + "\r\n").encode("gbk"))
    proc = _import(db_url, gbk)
    assert proc.returncode == 2 and "不是 UTF-8 编码" in proc.stderr and "Traceback" not in proc.stderr
    missing = _import(db_url, tmp_path / "nowhere.csv")
    assert missing.returncode == 2 and "无法打开文件" in missing.stderr
