"""``coldchain hardware import FILE [--dry-run]``: the monitoring hardware of a province — equipment
with its compartments and limits, gateways, probes and their bindings — from a vendor's delivery
list in CSV or XLSX (issue #18); until now only the API (one device at a time) and the demo could.

Why the runtime role (``COLDCHAIN_DATABASE_URL``), as the units import: it may insert equipment,
compartments, gateways, probes and bindings (migration 0012), and the audit log is written by the
owner's SECURITY DEFINER trigger whoever inserts, so a one-shot job needs no more privilege.

The file is read, checked as a whole against the registry and applied in one transaction with
the hardware tables locked against other writers; a file with any problem changes nothing,
prints every problem with its spreadsheet row and exits with code 1.
"""

from __future__ import annotations

import argparse
import sys
import time
from datetime import datetime
from pathlib import Path

from coldchain import databases
from coldchain.core import db
from coldchain.core.migrate import require_current
from coldchain.core.settings import Settings
from coldchain.core.terms import BEIJING
from coldchain.units_cli import EXIT_REFUSED, SHOWN
from registry.hardware_cells import REQUIRED, show
from registry.hardware_import import Plan, check_rows, read_file
from registry.hardware_store import apply_plan, lock_and_load


def configure_import(p: argparse.ArgumentParser) -> None:
    """The ``hardware import`` arguments (registered by :func:`coldchain.cli.build_parser`)."""
    p.add_argument(
        "file", type=Path, help=f"CSV（UTF-8，可带 BOM）或 XLSX 文件，每行一个探头；必填列 {','.join(REQUIRED)}"
    )
    p.add_argument("--dry-run", action="store_true", help="只检查并列出将要新增的硬件，不写入数据库")
    p.set_defaults(func=cmd_hardware_import)


def cmd_hardware_import(settings: Settings, args: argparse.Namespace) -> int:
    """Read, check, apply (or, with ``--dry-run``, only report) one delivery list."""
    started = time.perf_counter()
    table = read_file(args.file)
    today = datetime.now(BEIJING).date()
    with databases.opened(settings) as database:
        require_current(database.url)
        with db.connect(database.url, application="coldchain-hardware-import") as conn:
            checked = check_rows(table, lock_and_load(conn, table), today)
            if checked.plan is None:
                conn.rollback()
                print(
                    f"错误：文件 {args.file.name} 有 {len(checked.problems)} 处问题，未导入任何硬件：", file=sys.stderr
                )
                for problem in checked.problems:
                    print(f"  {problem}", file=sys.stderr)
                return EXIT_REFUSED
            plan = checked.plan
            if plan.changes and not args.dry_run:
                apply_plan(conn, plan, f"硬件导入 {args.file.name}")
                conn.commit()
            else:
                conn.rollback()
    _print_summary(args.file, plan, dry_run=args.dry_run, seconds=time.perf_counter() - started)
    return 0


def _listed(title: str, lines: list[str]) -> None:
    """A heading and at most :data:`SHOWN` lines of it; the counts above are always complete."""
    if lines:
        print(f"{title}：")
        for line in lines[:SHOWN]:
            print(f"    {line}")
        if len(lines) > SHOWN:
            print(f"    ……另有 {len(lines) - SHOWN} 项未列出")


def _print_summary(path: Path, plan: Plan, *, dry_run: bool, seconds: float) -> None:
    print(f"硬件导入：文件 {path.name}，{plan.rows} 行（每行一个探头）")
    print(
        f"新增设备 {len(plan.equipment)}，温区 {len(plan.compartments)}，网关 {len(plan.gateways)}，"
        f"探头 {len(plan.probes)}（绑定 {len(plan.probes)}）；已登记且绑定一致的探头 {plan.unchanged}"
    )
    _listed(
        "新增设备",
        [f"{e.key[0]} {e.key[1]}（{show(e.attrs['equipment_kind'])}，第 {e.row} 行）" for e in plan.equipment],
    )
    _listed("新增温区", [f"{c.key[0]} {c.key[1]}/{c.key[2]}：{show(c.limits)}" for c in plan.compartments])
    _listed("新增网关", [f"{g.serial}（单位 {g.attrs['unit_code']}）" for g in plan.gateways])
    _listed(
        "新增探头及绑定",
        [
            f"{p.serial} → {p.compartment[0]} {p.compartment[1]}/{p.compartment[2]}，网关 {p.gateway}"
            for p in plan.probes
        ],
    )
    if not plan.changes:
        print("无变化：文件中的硬件均已登记，绑定一致")
    elif dry_run:
        print("试运行（--dry-run）：以上变更未写入数据库")
    else:
        print(f"已导入并提交（审计动作 hardware.import），用时 {seconds:.2f} 秒")
