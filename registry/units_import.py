"""Bootstrapping a real province: the administrative tree from a CSV or XLSX file (issue #18).

Three parts, kept apart so that the rules are tested without a file or a server:

- :func:`read_table` reads a file into rows of text, numbered as a person sees them in the
  spreadsheet (the header is row 1);
- :func:`check_rows` (pure) checks the whole file against the units already in the database and
  returns either every problem, each with its row number and a Chinese message an administrator
  can act on, or the plan: which units are new, which are renamed, which are unchanged and which
  the file does not mention;
- :func:`apply_plan` writes a plan with one statement per kind of change (one INSERT per level,
  parents before children, so the tree triggers of migration 0001 find each parent; one UPDATE
  for all renames), so a province of a few thousand units goes in well under a second.

An import only ever adds units and renames them. Moving a unit or changing its level changes
jurisdictions, users' rights and report lines, so the file is refused with the reason instead;
units the file does not mention are kept (nothing in the registry is deleted, 0004).
"""

from __future__ import annotations

import csv
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import date, datetime
from pathlib import Path

import psycopg

from coldchain.core.db import set_action
from coldchain.core.terms import LEVEL_NAMES

COLUMNS: tuple[str, ...] = ("code", "name", "parent_code", "level")
LEVEL_ORDER: tuple[str, ...] = ("province", "city", "county", "township")
# The levels a unit may report to. A county may report straight to the province (杨陵区, 韩城市,
# 神木市, 府谷县); a township is always under a county.
ALLOWED_PARENTS: dict[str, tuple[str, ...]] = {
    "province": (),
    "city": ("province",),
    "county": ("city", "province"),
    "township": ("county",),
}
# The same bound as a unit name edited through the API (api/fields.py ``Text``).
NAME_MAX = 100
ACTION = "units.import"

_CODE = re.compile(r"[0-9]{10}")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_SCIENTIFIC = re.compile(r"[0-9.]+E\+?[0-9]+", re.IGNORECASE)


@dataclass(frozen=True)
class Table:
    """A file's cells as text: ``header`` is row 1, each of ``rows`` is ``(row number, cells)``."""

    header: tuple[str, ...]
    rows: tuple[tuple[int, tuple[str, ...]], ...]


@dataclass(frozen=True)
class ExistingUnit:
    """A unit already in the database, its parent named by code (the file's terms)."""

    code: str
    name: str
    level: str
    parent_code: str | None


@dataclass(frozen=True)
class Problem:
    """One thing wrong with the file; ``row`` is the spreadsheet row (1 = header)."""

    row: int
    message: str

    def __str__(self) -> str:
        return f"第 {self.row} 行：{self.message}"


@dataclass(frozen=True)
class NewUnit:
    row: int
    code: str
    name: str
    level: str
    parent_code: str | None


@dataclass(frozen=True)
class Rename:
    row: int
    code: str
    old_name: str
    new_name: str


@dataclass(frozen=True)
class Plan:
    """What applying the file does. ``new`` is ordered parents first (by level, then code)."""

    rows: int
    new: tuple[NewUnit, ...]
    renamed: tuple[Rename, ...]
    unchanged: int
    not_in_file: tuple[ExistingUnit, ...]

    @property
    def changes(self) -> bool:
        return bool(self.new or self.renamed)


@dataclass(frozen=True)
class Checked:
    """Either ``problems`` (nothing may be applied) or a ``plan``, never both."""

    problems: tuple[Problem, ...]
    plan: Plan | None


@dataclass(frozen=True)
class _Row:
    row: int
    code: str
    name: str
    parent_code: str
    level: str


def _level(level: str) -> str:
    return LEVEL_NAMES.get(level, level)


def column_letter(index: int) -> str:
    """0 → A, 26 → AA: how a spreadsheet names a column."""
    letters = ""
    index += 1
    while index:
        index, rest = divmod(index - 1, 26)
        letters = chr(ord("A") + rest) + letters
    return letters


def code_problem(what: str, value: str) -> str | None:
    if _CODE.fullmatch(value):
        return None
    hint = "（Excel 把编码显示成了科学计数法，请把该列设为“文本”后重新输入）" if _SCIENTIFIC.fullmatch(value) else ""
    return f"{what}「{value}」应为 10 位数字{hint}"


def _read_columns(table: Table) -> tuple[dict[str, int] | None, list[Problem]]:
    """Where each of the four columns is; header problems (missing, repeated, extra columns)."""
    problems: list[Problem] = []
    where: dict[str, list[int]] = {}
    for i, cell in enumerate(table.header):
        name = cell.strip().lower()
        if name:
            where.setdefault(name, []).append(i)
    for name, places in where.items():
        if name not in COLUMNS:
            problems.append(
                Problem(1, f"多余的列「{name}」（{column_letter(places[0])} 列）：只应有 {'、'.join(COLUMNS)} 四列")
            )
        elif len(places) > 1:
            letters = "、".join(column_letter(i) for i in places)
            problems.append(Problem(1, f"列 {name} 出现了 {len(places)} 次（{letters} 列）"))
    missing = [c for c in COLUMNS if c not in where]
    if missing:
        problems.append(Problem(1, f"缺少列 {'、'.join(missing)}（表头应为 {','.join(COLUMNS)}）"))
    if missing or any(len(where[c]) > 1 for c in COLUMNS):
        return None, problems
    return {c: where[c][0] for c in COLUMNS}, problems


def _row_problems(row: _Row, seen: Mapping[str, int]) -> list[str]:
    """The problems of one row on its own (and a code already used by an earlier row)."""
    out: list[str] = []
    if not row.code:
        out.append("单位编码 code 为空")
    elif problem := code_problem("单位编码", row.code):
        out.append(problem)
    elif row.code in seen:
        out.append(f"单位编码 {row.code} 与第 {seen[row.code]} 行重复")
    if not row.name:
        out.append("单位名称 name 为空")
    elif len(row.name) > NAME_MAX:
        out.append(f"单位名称过长：{len(row.name)} 个字符，最多 {NAME_MAX} 个")
    elif _CONTROL.search(row.name):
        out.append("单位名称含有换行符或其他控制字符")
    if row.level not in ALLOWED_PARENTS:
        shown = f"「{row.level}」无效" if row.level else " 为空"
        choices = "、".join(f"{lv}（{_level(lv)}）" for lv in LEVEL_ORDER)
        out.append(f"级别 level{shown}，应为 {choices}之一")
    if row.parent_code and (problem := code_problem("上级编码", row.parent_code)):
        out.append(problem)
    return out


def _tree_problems(row: _Row, in_file: Mapping[str, _Row], existing: Mapping[str, ExistingUnit]) -> list[str]:
    """Parent known, nesting by level, and no change to a unit the database already has."""
    out: list[str] = []
    level_ok = row.level in ALLOWED_PARENTS
    parent = row.parent_code
    if not parent:
        if level_ok and row.level != "province":
            out.append(f"{_level(row.level)}单位必须填写上级编码 parent_code")
    elif _CODE.fullmatch(parent):
        if parent == row.code:
            out.append("单位不能是自己的上级")
        elif row.level == "province":
            out.append(f"省级单位不能有上级（上级编码 {parent} 应为空）")
        else:
            if parent in in_file:
                parent_level: str | None = in_file[parent].level
            elif parent in existing:
                parent_level = existing[parent].level
            else:
                parent_level = None
                out.append(f"上级编码 {parent} 既不在文件中，也不在数据库中")
            allowed = ALLOWED_PARENTS.get(row.level, ())
            if level_ok and parent_level in ALLOWED_PARENTS and parent_level not in allowed:
                should = "或".join(f"{_level(lv)}" for lv in allowed)
                out.append(
                    f"{_level(row.level)}单位不能隶属于{_level(parent_level)}单位 {parent}"
                    f"（{_level(row.level)}单位的上级应为{should}单位）"
                )
    old = existing.get(row.code)
    if old is not None:
        if level_ok and old.level != row.level:
            out.append(
                f"单位 {row.code}（{old.name}）在数据库中是{_level(old.level)}，文件中是{_level(row.level)}："
                "导入不更改单位级别"
            )
        if (parent == "" or _CODE.fullmatch(parent)) and (parent or None) != old.parent_code:
            before = f"隶属于 {old.parent_code}" if old.parent_code else "没有上级"
            after = f"隶属于 {parent}" if parent else "没有上级"
            out.append(f"单位 {row.code}（{old.name}）在数据库中{before}，文件中{after}：导入不移动单位")
    return out


def _province_problems(rows: Sequence[_Row], existing: Mapping[str, ExistingUnit]) -> list[Problem]:
    """One province: the database's, or the file's first; every other province row is refused."""
    first: tuple[str, str, str] | None = None  # code, name, where
    for unit in sorted(existing.values(), key=lambda u: u.code):
        if unit.level == "province":
            first = (unit.code, unit.name, "已在数据库中")
            break
    out: list[Problem] = []
    for row in rows:
        if row.level != "province" or (first is not None and row.code == first[0]):
            continue
        if first is None:
            first = (row.code, row.name, f"第 {row.row} 行")
        else:
            out.append(Problem(row.row, f"省级单位只能有一个：已有 {first[0]} {first[1]}（{first[2]}）"))
    return out


def _cycle_problems(in_file: Mapping[str, _Row]) -> list[Problem]:
    """Parent links among the file's rows that come back to where they started (each unit has one
    parent, so following links from each unit once finds every cycle)."""
    state: dict[str, int] = {}  # 1 on the current path, 2 done
    out: list[Problem] = []
    for start in in_file:
        path: list[str] = []
        code = start
        while code in in_file and code not in state:
            state[code] = 1
            path.append(code)
            code = in_file[code].parent_code
        if code in in_file and state.get(code) == 1 and code != path[-1]:  # a self-parent is said apart
            ring = path[path.index(code) :]
            shown = " → ".join([*ring, ring[0]])
            out.extend(Problem(in_file[c].row, f"上下级关系成环：{shown}") for c in ring)
        for c in path:
            state[c] = 2
    return out


def check_rows(table: Table, existing: Mapping[str, ExistingUnit]) -> Checked:
    """Check the whole file against ``existing`` (the database's units by code); no I/O.

    Every problem is found, not only the first: an administrator fixes the spreadsheet once."""
    columns, problems = _read_columns(table)
    if columns is None:
        return Checked(tuple(sorted(problems, key=lambda p: p.row)), None)
    named = set(columns.values()) | {i for i, c in enumerate(table.header) if c.strip()}
    rows: list[_Row] = []
    for number, cells in table.rows:
        if not any(c.strip() for c in cells):
            continue  # a blank line between blocks of the sheet
        for i, cell in enumerate(cells):
            if cell.strip() and i not in named:
                shown = cell.strip()[:20]
                problems.append(Problem(number, f"{column_letter(i)} 列有内容「{shown}」，但该列没有列名"))
        get = [cells[columns[c]].strip() if columns[c] < len(cells) else "" for c in COLUMNS]
        rows.append(_Row(number, *get))
    if not rows:
        problems.append(Problem(1, "文件中只有表头，没有单位"))
    in_file: dict[str, _Row] = {}
    seen: dict[str, int] = {}
    for row in rows:
        problems.extend(Problem(row.row, m) for m in _row_problems(row, seen))
        if _CODE.fullmatch(row.code) and row.code not in seen:
            seen[row.code] = row.row
            in_file[row.code] = row
    for row in in_file.values():
        problems.extend(Problem(row.row, m) for m in _tree_problems(row, in_file, existing))
    problems.extend(_province_problems(list(in_file.values()), existing))
    problems.extend(_cycle_problems(in_file))
    if problems:
        return Checked(tuple(sorted(problems, key=lambda p: p.row)), None)
    return Checked((), _plan(len(rows), in_file, existing))


def _plan(count: int, in_file: Mapping[str, _Row], existing: Mapping[str, ExistingUnit]) -> Plan:
    new: list[NewUnit] = []
    renamed: list[Rename] = []
    for row in in_file.values():
        old = existing.get(row.code)
        if old is None:
            new.append(NewUnit(row.row, row.code, row.name, row.level, row.parent_code or None))
        elif old.name != row.name:
            renamed.append(Rename(row.row, row.code, old.name, row.name))
    new.sort(key=lambda u: (LEVEL_ORDER.index(u.level), u.code))
    renamed.sort(key=lambda r: r.code)
    missing = tuple(sorted((u for c, u in existing.items() if c not in in_file), key=lambda u: u.code))
    return Plan(count, tuple(new), tuple(renamed), len(in_file) - len(new) - len(renamed), missing)


# ---------------------------------------------------------------------------------------------
# The file.


def _text(value: object) -> str:
    """A cell as the text a person sees: whole numbers without ``.0`` (a code typed into a number
    cell is still a code), dates as ISO dates, nothing as ``""``."""
    if value is None:
        return ""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    if isinstance(value, datetime | date):
        return value.isoformat()
    return str(value).strip()


def read_table(path: Path, columns: Sequence[str] = COLUMNS) -> Table:
    """A ``.csv`` (UTF-8, with or without BOM) or ``.xlsx`` file (its first sheet) as text cells;
    ``columns`` is the header the caller expects, named when the file is empty (the hardware
    import reads its files here too).

    Raises ValueError with a Chinese message when the file cannot be read at all."""
    suffix = path.suffix.lower()
    if suffix == ".csv":
        rows = _read_csv(path)
    elif suffix in (".xlsx", ".xlsm"):
        rows = _read_xlsx(path)
    else:
        raise ValueError(f"不支持的文件类型「{path.suffix or '无扩展名'}」：请提供 .csv（UTF-8）或 .xlsx 文件")
    while rows and not any(rows[-1]):
        rows.pop()  # trailing empty lines a spreadsheet leaves behind
    if not rows:
        raise ValueError(f"文件 {path.name} 是空的：第 1 行应为表头 {','.join(columns)}")
    return Table(rows[0], tuple((i, r) for i, r in enumerate(rows[1:], start=2)))


def _read_csv(path: Path) -> list[tuple[str, ...]]:
    try:
        with path.open(encoding="utf-8-sig", newline="") as f:
            return [tuple(c.strip() for c in record) for record in csv.reader(f)]
    except UnicodeDecodeError:
        raise ValueError(
            f"文件 {path.name} 不是 UTF-8 编码（可能是 GBK）：请在 Excel 中“另存为 → CSV UTF-8（逗号分隔）”"
        ) from None
    except csv.Error as exc:
        raise ValueError(f"无法按 CSV 读取 {path.name}：{exc}") from None
    except OSError as exc:
        raise ValueError(f"无法打开文件 {path}：{exc.strerror}") from None


def _read_xlsx(path: Path) -> list[tuple[str, ...]]:
    from zipfile import BadZipFile

    from openpyxl import load_workbook
    from openpyxl.utils.exceptions import InvalidFileException

    try:
        book = load_workbook(path, read_only=True, data_only=True)
    except (BadZipFile, InvalidFileException, KeyError) as exc:
        raise ValueError(f"无法按 XLSX 读取 {path.name}：{exc}") from None
    except OSError as exc:
        raise ValueError(f"无法打开文件 {path}：{exc.strerror}") from None
    try:
        sheet = book.worksheets[0]
        sheet.reset_dimensions()  # some writers record a wrong size; read what is there
        return [tuple(_text(v) for v in values) for values in sheet.iter_rows(min_row=1, values_only=True)]
    finally:
        book.close()


# ---------------------------------------------------------------------------------------------
# The database.

_EXISTING = """
SELECT u.code, u.name, u.level, p.code
FROM units u LEFT JOIN units p ON p.id = u.parent_id
"""

_INSERT = """
INSERT INTO units (code, name, level, parent_id)
SELECT v.code, v.name, %(level)s, p.id
FROM unnest(%(codes)s::text[], %(names)s::text[], %(parents)s::text[]) AS v (code, name, parent_code)
LEFT JOIN units p ON p.code = v.parent_code
ORDER BY v.code
"""

_RENAME = """
UPDATE units u SET name = v.name, version = u.version + 1
FROM unnest(%(codes)s::text[], %(names)s::text[]) AS v (code, name)
WHERE u.code = v.code
"""


def lock_and_load(conn: psycopg.Connection) -> dict[str, ExistingUnit]:
    """The database's units by code, with the table locked against other writers until the
    transaction ends, so the plan checked is the plan applied (reads go on meanwhile)."""
    conn.execute("LOCK TABLE units IN SHARE ROW EXCLUSIVE MODE")
    return {r[0]: ExistingUnit(r[0], r[1], r[2], r[3]) for r in conn.execute(_EXISTING).fetchall()}


def apply_plan(conn: psycopg.Connection, plan: Plan) -> None:
    """Write ``plan`` in the caller's transaction; every row's audit entry says ``units.import``.

    One INSERT per level, parents' level first: the parent check and the closure table (0001's
    row triggers) then find every parent, inserted by an earlier statement or already there."""
    set_action(conn, ACTION)
    for level in LEVEL_ORDER:
        units = [u for u in plan.new if u.level == level]
        if units:
            conn.execute(
                _INSERT,
                {
                    "level": level,
                    "codes": [u.code for u in units],
                    "names": [u.name for u in units],
                    "parents": [u.parent_code for u in units],
                },
            )
    if plan.renamed:
        conn.execute(_RENAME, {"codes": [r.code for r in plan.renamed], "names": [r.new_name for r in plan.renamed]})
