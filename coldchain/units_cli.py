"""``coldchain units import FILE [--dry-run]``: the administrative tree of a real province from a
CSV or XLSX file (issue #18), until now only the demo could create units.

Why the runtime role (``COLDCHAIN_DATABASE_URL``) and not the owner: the runtime role may insert
and rename units (migration 0012), and the closure table and the audit log are written by the
owner's SECURITY DEFINER triggers whoever inserts, so the import needs no more privilege than the
API's own unit edits — least privilege holds for the administrator's one-shot job too.

The file is read, checked as a whole against the database and applied in one transaction with
the units table locked against other writers; a file with any problem changes nothing, prints
every problem with its spreadsheet row and exits with code 1.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TypeVar

from coldchain import databases
from coldchain.core import db
from coldchain.core.migrate import require_current
from coldchain.core.settings import Settings
from coldchain.core.terms import LEVEL_NAMES
from registry.units_import import Plan, apply_plan, check_rows, lock_and_load, read_table

# How many units of one kind the summary names; the counts are always complete.
SHOWN = 50
EXIT_REFUSED = 1

_T = TypeVar("_T")


def configure_import(p: argparse.ArgumentParser) -> None:
    """The ``units import`` arguments (registered by :func:`coldchain.cli.build_parser`)."""
    p.add_argument("file", type=Path, help="CSV（UTF-8，可带 BOM）或 XLSX 文件，列为 code,name,parent_code,level")
    p.add_argument("--dry-run", action="store_true", help="只检查并列出将要做的变更，不写入数据库")
    p.set_defaults(func=cmd_units_import)


def cmd_units_import(settings: Settings, args: argparse.Namespace) -> int:
    """Read, check, apply (or, with ``--dry-run``, only report) one file of units."""
    started = time.perf_counter()
    table = read_table(args.file)
    with databases.opened(settings) as database:
        require_current(database.url)
        with db.connect(database.url, application="coldchain-units-import") as conn:
            existing = lock_and_load(conn)
            checked = check_rows(table, existing)
            if checked.plan is None:
                conn.rollback()
                print(
                    f"错误：文件 {args.file.name} 有 {len(checked.problems)} 处问题，未导入任何单位：", file=sys.stderr
                )
                for problem in checked.problems:
                    print(f"  {problem}", file=sys.stderr)
                return EXIT_REFUSED
            plan = checked.plan
            if plan.changes and not args.dry_run:
                apply_plan(conn, plan)
                conn.commit()
            else:
                conn.rollback()
    _print_summary(args.file, plan, dry_run=args.dry_run, seconds=time.perf_counter() - started)
    return 0


def _shown(items: Sequence[_T]) -> tuple[Sequence[_T], str]:
    """The first :data:`SHOWN` items and, when there are more, the line that says so."""
    if len(items) <= SHOWN:
        return items, ""
    return items[:SHOWN], f"    ……另有 {len(items) - SHOWN} 个未列出"


def _print_summary(path: Path, plan: Plan, *, dry_run: bool, seconds: float) -> None:
    print(f"单位导入：文件 {path.name}，{plan.rows} 个单位")
    print(
        f"新增 {len(plan.new)}，改名 {len(plan.renamed)}，未变 {plan.unchanged}，"
        f"文件中未出现（保留） {len(plan.not_in_file)}"
    )
    if plan.new:
        print("新增：")
        new, more = _shown(plan.new)
        for u in new:
            parent = f"，上级 {u.parent_code}" if u.parent_code else ""
            print(f"    {u.code} {u.name}（{LEVEL_NAMES[u.level]}{parent}）")
        if more:
            print(more)
    if plan.renamed:
        print("改名：")
        renamed, more = _shown(plan.renamed)
        for r in renamed:
            print(f"    {r.code} {r.old_name} → {r.new_name}")
        if more:
            print(more)
    if plan.not_in_file:
        print("文件中未出现（保留）：")
        kept, more = _shown(plan.not_in_file)
        for k in kept:
            print(f"    {k.code} {k.name}（{LEVEL_NAMES.get(k.level, k.level)}）")
        if more:
            print(more)
    if not plan.changes:
        print("无变化：数据库中已有文件中的全部单位，名称一致")
    elif dry_run:
        print("试运行（--dry-run）：以上变更未写入数据库")
    else:
        print(f"已导入并提交（审计动作 units.import），用时 {seconds:.2f} 秒")
