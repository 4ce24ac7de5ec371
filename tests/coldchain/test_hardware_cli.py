"""``coldchain hardware import`` as an administrator runs it (issue #18): a subprocess, the runtime
role as ``COLDCHAIN_DATABASE_URL``, the owner as ``COLDCHAIN_OWNER_DATABASE_URL``, on the small
province of :mod:`apihelp` (its units, and a fridge at each site with probes already bound)."""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

from apihelp import World
from dbhelp import as_runtime, query
from ingesthelp import store_readings
from openpyxl import Workbook

from registry.hardware_cells import COLUMNS
from registry.hardware_import import REBIND

HEADER = tuple(COLUMNS)
SITE, COUNTY = "6101130001", "6101130000"
_GATEWAY = {"gateway_vendor": "精创", "gateway_model": "RC-4GW", "gateway_installed_on": "2025-06-01"}
_PROBE = {"probe_vendor": "精创", "probe_model": "RC-W", "probe_installed_on": "2025-06-01"}
_FRIDGE = {"unit_code": SITE, "equipment_name": "美的医用冷藏柜", "equipment_kind": "medical_fridge"}
_ROOM = {"unit_code": COUNTY, "equipment_name": "1号冷库", "equipment_kind": "cold_room", "compartment_name": "库区"}
_GW2 = {**_GATEWAY, "gateway_serial": "40002", "gateway_warranty_end": "2028-05-31"}
# A vendor's delivery list: one row per probe.
DELIVERY: list[dict[str, str]] = [
    {**_FRIDGE, "equipment_brand": "美的", "equipment_model": "YC-260L", "compartment_name": "冷藏",
     "mode": "refrigerated", "t_min": "2", "t_max": "8", **_GATEWAY, "gateway_serial": "40001",
     "probe_serial": "408601", **_PROBE, "probe_warranty_end": "2028-05-31"},
    {**_ROOM, "mode": "冷藏", **_GW2, "probe_serial": "408611", **_PROBE},
    {**_ROOM, "mode": "冷藏", "gateway_serial": "40002", "probe_serial": "408612"},
    {"unit_code": COUNTY, "equipment_name": "低温冰柜", "equipment_kind": "冰柜", "compartment_name": "冷冻",
     "mode": "frozen", "t_min": "-25", "t_max": "-15", "gateway_serial": "40002", "probe_serial": "408613"},
    {"unit_code": COUNTY, "equipment_name": "冷藏车", "equipment_kind": "vehicle", "plate_no": "陕A12345",
     "compartment_name": "车厢", "mode": "refrigerated", **_GATEWAY, "gateway_serial": "40003",
     "probe_serial": "408621"},
]  # fmt: skip
_BOUND = """
SELECT p.serial AS probe, u.code AS unit, e.name AS equipment, c.name AS compartment, g.serial AS gateway
FROM probe_bindings_current b JOIN probes p ON p.id = b.probe_id JOIN gateways g ON g.id = b.gateway_id
JOIN compartments c ON c.id = b.compartment_id JOIN equipment e ON e.id = c.equipment_id
JOIN units u ON u.id = e.unit_id WHERE p.serial LIKE '4%' ORDER BY p.serial
"""
_COUNTS = """
SELECT (SELECT count(*) FROM equipment) AS equipment, (SELECT count(*) FROM compartments) AS compartments,
       (SELECT count(*) FROM gateways) AS gateways, (SELECT count(*) FROM probes) AS probes,
       (SELECT count(*) FROM probe_bindings) AS bindings, (SELECT count(*) FROM audit_log) AS audit
"""


def _import(db_url: str, path: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "coldchain.cli", "hardware", "import", str(path), *extra],
        env={**os.environ, "COLDCHAIN_DATABASE_URL": as_runtime(db_url), "COLDCHAIN_OWNER_DATABASE_URL": db_url},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def _csv(path: Path, rows: list[dict[str, str]]) -> Path:
    """As Excel saves "CSV UTF-8": a BOM and CRLF line ends."""
    lines = [HEADER, *(tuple(r.get(c, "") for c in HEADER) for r in rows)]
    path.write_text("".join(",".join(line) + "\r\n" for line in lines), encoding="utf-8-sig", newline="")
    return path


def _xlsx(path: Path, rows: list[dict[str, str]]) -> Path:
    """As typed into Excel: serials, codes and limits as numbers, dates as dates."""
    book = Workbook()
    sheet = book.active
    assert sheet is not None
    sheet.append(list(HEADER))
    for r in rows:
        cells: list[Any] = []
        for column in HEADER:
            text = r.get(column, "")
            kind = COLUMNS[column][1]
            if text and kind in ("code", "serial", "temp"):
                cells.append(float(text) if kind == "temp" else int(text))
            elif text and kind == "date":
                cells.append(date.fromisoformat(text))
            else:
                cells.append(text or None)
        sheet.append(cells)
    book.save(path)
    return path


def _bound(db_url: str) -> list[tuple[str, ...]]:
    return [tuple(r.values()) for r in query(db_url, _BOUND)]


EXPECTED_BINDINGS = [
    ("408601", SITE, "美的医用冷藏柜", "冷藏", "40001"),
    ("408611", COUNTY, "1号冷库", "库区", "40002"),
    ("408612", COUNTY, "1号冷库", "库区", "40002"),
    ("408613", COUNTY, "低温冰柜", "冷冻", "40002"),
    ("408621", COUNTY, "冷藏车", "车厢", "40003"),
]


def test_csv_imports_the_delivery_and_a_second_run_changes_nothing(db_url: str, world: World, tmp_path: Path) -> None:
    path = _csv(tmp_path / "供货清单.csv", DELIVERY)
    first = _import(db_url, path)
    assert first.returncode == 0, first.stderr
    assert "新增设备 4，温区 4，网关 3，探头 5（绑定 5）；已登记且绑定一致的探头 0" in first.stdout
    assert "6101130000 低温冰柜/冷冻：冷冻 -25～-15 ℃" in first.stdout
    assert "已导入并提交（审计动作 hardware.import）" in first.stdout
    assert _bound(db_url) == EXPECTED_BINDINGS
    details = query(
        db_url, "SELECT vendor, model, installed_on, warranty_end, unit_id FROM gateways WHERE serial = '40002'"
    )
    assert details == [
        {"vendor": "精创", "model": "RC-4GW", "installed_on": date(2025, 6, 1), "warranty_end": date(2028, 5, 31),
         "unit_id": world.units["K1"]}
    ]  # fmt: skip
    vehicle = query(db_url, "SELECT kind, plate_no FROM equipment WHERE name = '冷藏车'")
    assert vehicle == [{"kind": "vehicle", "plate_no": "陕A12345"}]
    audited = query(db_url, "SELECT count(*) AS n FROM audit_log WHERE action = 'hardware.import'")[0]["n"]
    assert audited == 4 + 4 + 3 + 5 + 5
    # The readings of an imported probe are attributed to its compartment from now on.
    probe = query(db_url, "SELECT id FROM probes WHERE serial = '408613'")[0]["id"]
    assert store_readings(db_url, [(probe, datetime.now(UTC), -19.0)]) == 1
    attributed = query(
        db_url,
        "SELECT c.name FROM probe_readings_attributed r JOIN compartments c ON c.id = r.compartment_id "
        "JOIN probes p ON p.id = r.probe_id WHERE p.serial = '408613'",
    )
    assert attributed == [{"name": "冷冻"}]

    before = query(db_url, _COUNTS)
    again = _import(db_url, path)
    assert again.returncode == 0, again.stderr
    assert "新增设备 0，温区 0，网关 0，探头 0（绑定 0）；已登记且绑定一致的探头 5" in again.stdout
    assert "无变化" in again.stdout
    assert query(db_url, _COUNTS) == before


def test_xlsx_dry_run_then_import_then_later_files_add_probes(db_url: str, world: World, tmp_path: Path) -> None:
    before = query(db_url, _COUNTS)
    book = _xlsx(tmp_path / "供货清单.xlsx", DELIVERY)
    dry = _import(db_url, book, "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert "新增设备 4" in dry.stdout and "试运行（--dry-run）" in dry.stdout
    assert query(db_url, _COUNTS) == before

    real = _import(db_url, book)
    assert real.returncode == 0, real.stderr
    assert _bound(db_url) == EXPECTED_BINDINGS
    limits = query(
        db_url, "SELECT t_min::text, t_max::text FROM compartments WHERE name = '冷冻' ORDER BY id DESC LIMIT 1"
    )
    assert limits == [{"t_min": "-25.0", "t_max": "-15.0"}]

    # A later list: the same rows and a second probe for the cold room.
    more = [*DELIVERY, {**_ROOM, "mode": "refrigerated", "gateway_serial": "40002", "probe_serial": "408614"}]
    later = _import(db_url, _csv(tmp_path / "第二批.csv", more))
    assert later.returncode == 0, later.stderr
    assert "新增设备 0，温区 0，网关 0，探头 1（绑定 1）；已登记且绑定一致的探头 5" in later.stdout
    assert "408614 → 6101130000 1号冷库/库区，网关 40002" in later.stdout
    # A list of new equipment alone is a valid update too: nothing else is touched.
    alone = [{**DELIVERY[0], "unit_code": "6105020001", "gateway_serial": "40005", "probe_serial": "408631"}]
    third = _import(db_url, _csv(tmp_path / "第三批.csv", alone))
    assert third.returncode == 0, third.stderr
    assert "新增设备 1，温区 1，网关 1，探头 1（绑定 1）；已登记且绑定一致的探头 0" in third.stdout
    assert len(_bound(db_url)) == len(EXPECTED_BINDINGS) + 2


def test_a_bad_file_of_many_rows_changes_nothing_and_prints_every_problem(
    db_url: str, world: World, tmp_path: Path
) -> None:
    rows = [
        {**_ROOM, "equipment_name": f"{i // 20 + 1}号冷库", "mode": "refrigerated", "gateway_serial": f"4100{i // 50}",
         "probe_serial": f"41{i:04d}"}
        for i in range(300)
    ]  # fmt: skip
    rows[8]["unit_code"] = "6101139999"  # row 10: no such unit
    rows[50]["probe_serial"] = rows[1]["probe_serial"]  # row 52: the serial of row 3
    rows[120]["probe_serial"] = "108601"  # row 122: bound at 电子城 already
    rows[198] |= {"t_min": "8", "t_max": "2"}  # row 200
    rows[248]["probe_warranty_end"] = "2026-13-01"  # row 250
    rows[278]["gateway_serial"] = "10001"  # row 280: 电子城's gateway
    before = query(db_url, _COUNTS)
    proc = _import(db_url, _csv(tmp_path / "bad.csv", rows))
    assert proc.returncode == 1
    where = "6101130001 电子城街道社区卫生服务中心 的「海尔双温冰箱/冷藏」（网关 10001）"
    assert [line.strip() for line in proc.stderr.splitlines()] == [
        "错误：文件 bad.csv 有 6 处问题，未导入任何硬件：",
        "第 10 行：单位编码 6101139999 不在数据库中（共 1 行）：请先导入单位（coldchain units import）",
        "第 52 行：探头编号 410001 与第 3 行重复",
        f"第 122 行：探头 108601 已绑定在{where}：{REBIND}",
        "第 200 行：温度下限必须低于上限（文件中为 冷藏 8～2 ℃）",
        "第 250 行：探头保修截止日期 probe_warranty_end「2026-13-01」不是有效日期（应为 YYYY-MM-DD，如 2026-03-15）",
        f"第 280 行：网关 10001 已登记在单位 6101130001，文件中为单位 6101130000：{REBIND}",
    ]
    assert query(db_url, _COUNTS) == before


def test_an_unreadable_file_is_refused_with_the_reason(db_url: str, tmp_path: Path) -> None:
    gbk = tmp_path / "gbk.csv"
    gbk.write_bytes((",".join(HEADER) + "\r\n").encode("gbk") + "6101130001,冰箱\r\n".encode("gbk"))
    proc = _import(db_url, gbk)
    assert proc.returncode == 2 and "不是 UTF-8 编码" in proc.stderr and "Traceback" not in proc.stderr
