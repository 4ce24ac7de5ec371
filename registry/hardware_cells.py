"""The hardware import's cells and columns: the delivery list's columns, what each cell may hold and
the sane limits of a compartment, a row parsed into its values (:class:`Row`) and the header read
into where each column is — every problem worded for the spreadsheet row it is on.

Apart from :mod:`registry.hardware_import` because reading one cell or one header needs nothing of
the registry: these rules change with the vendors' files (a new column, another date format), the
check of the whole file against the database changes with the schema and the forms.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import date
from decimal import Decimal, InvalidOperation
from typing import Any

from registry.forms.payloads import MODE_NAMES
from registry.limits import check_limits
from registry.units_import import NAME_MAX, Problem, Table, code_problem, column_letter

# Column → (Chinese name, kind of value, required). The header may hold them in any order; an
# optional column may be left out entirely.
COLUMNS: dict[str, tuple[str, str, bool]] = {
    "unit_code": ("单位编码", "code", True),
    "equipment_name": ("设备名称", "name", True),
    "equipment_kind": ("设备类型", "kind", True),
    "equipment_brand": ("设备品牌", "text", False),
    "equipment_model": ("设备型号", "text", False),
    "asset_no": ("资产编号", "text", False),
    "plate_no": ("车牌号", "text", False),
    "commissioned_on": ("设备启用日期", "date", False),
    "compartment_name": ("温区名称", "name", True),
    "mode": ("温区模式", "mode", True),
    "t_min": ("温度下限", "temp", False),
    "t_max": ("温度上限", "temp", False),
    "gateway_serial": ("网关编号", "serial", True),
    "gateway_vendor": ("网关厂家", "text", False),
    "gateway_model": ("网关型号", "text", False),
    "gateway_installed_on": ("网关安装日期", "date", False),
    "gateway_warranty_end": ("网关保修截止日期", "date", False),
    "probe_serial": ("探头编号", "serial", True),
    "probe_vendor": ("探头厂家", "text", False),
    "probe_model": ("探头型号", "text", False),
    "probe_installed_on": ("探头安装日期", "date", False),
    "probe_warranty_end": ("探头保修截止日期", "date", False),
}
REQUIRED = tuple(c for c, (_, _, required) in COLUMNS.items() if required)
EQUIPMENT_ATTRS = ("equipment_kind", "equipment_brand", "equipment_model", "asset_no", "plate_no", "commissioned_on")
GATEWAY_ATTRS = ("gateway_vendor", "gateway_model", "gateway_installed_on", "gateway_warranty_end")
PROBE_ATTRS = ("probe_vendor", "probe_model", "probe_installed_on", "probe_warranty_end")
# The kinds migration 0001 allows; a cell may hold the code or the Chinese name.
KIND_NAMES = {
    "fridge": "冰箱",
    "freezer": "冰柜",
    "medical_fridge": "医用冷藏柜",
    "cold_room": "冷库",
    "vehicle": "冷藏车",
}
# The schema's defaults by mode (0001, cc_compartments_default_limits), written out by the import.
DEFAULT_LIMITS: dict[str, tuple[Decimal | None, Decimal]] = {
    "refrigerated": (Decimal("2.0"), Decimal("8.0")),
    "frozen": (None, Decimal("-15.0")),
}
# Sane limits, stricter than the schema so that a typo is caught before it drives the alarms: the
# probes' range; a refrigerated band above the freezing risk (−0.5 ℃) and below room heat; a
# frozen compartment below 0 ℃; a band wide enough for the alarms' hysteresis (2 × 0.5 ℃).
PROBE_RANGE = (Decimal(-90), Decimal(60))
REFRIGERATED_RANGE = (Decimal(0), Decimal(25))
FROZEN_T_MAX = Decimal(0)
MIN_BAND = Decimal(1)
FIRST_DAY, LAST_DAY = date(2000, 1, 1), date(2099, 12, 31)

_CHOICES = {"kind": KIND_NAMES, "mode": MODE_NAMES}
_SERIAL = re.compile(r"[0-9A-Za-z_-]{1,32}")
_SCIENTIFIC = re.compile(r"[0-9.]+E\+?[0-9]+", re.IGNORECASE)
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_DATE = re.compile(r"(\d{4})[-/.](\d{1,2})[-/.](\d{1,2})(?:[ T]\d{1,2}:\d{2}(?::\d{2})?)?")

EquipmentKey = tuple[str, str]  # unit code, equipment name
CompartmentKey = tuple[str, str, str]  # unit code, equipment name, compartment name
Limits = tuple[str, Decimal | None, Decimal]  # mode, t_min, t_max (defaults filled in)


@dataclass
class Row:
    row: int
    v: dict[str, Any]  # parsed cells by column (None: empty or wrong) and the compartment's ``limits``
    keyed: bool  # every required cell is right, so the row can be grouped

    @property
    def equipment(self) -> EquipmentKey:
        return self.v["unit_code"], self.v["equipment_name"]

    @property
    def compartment(self) -> CompartmentKey:
        return self.v["unit_code"], self.v["equipment_name"], self.v["compartment_name"]


def show(value: Any) -> str:
    """A value as messages and the summary print it."""
    if value is None:
        return "空"
    if isinstance(value, Decimal):
        return format(value.normalize(), "f")
    if isinstance(value, tuple):  # Limits
        mode, low, high = value
        return f"{MODE_NAMES[mode]} {f'≤ {show(high)}' if low is None else f'{show(low)}～{show(high)}'} ℃"
    return KIND_NAMES.get(value, str(value)) if isinstance(value, str) else str(value)


def _parse(column: str, text: str) -> tuple[Any, str | None]:
    """A cell as the value its column holds, or the problem; ``(None, None)`` when empty."""
    label, kind, required = COLUMNS[column]
    if not text:
        return None, (f"{label} {column} 为空" if required else None)
    if kind == "code":
        problem = code_problem(label, text)
        return (None, problem) if problem else (text, None)
    if kind == "serial":
        if _SERIAL.fullmatch(text):
            return text, None
        hint = "（Excel 把编号显示成了科学计数法，请把该列设为“文本”后重新输入）" if _SCIENTIFIC.fullmatch(text) else ""
        return None, f"{label}「{text}」应为 1～32 位字母、数字、“-”或“_”{hint}"
    if kind in ("name", "text"):
        if len(text) > NAME_MAX:
            return None, f"{label}过长：{len(text)} 个字符，最多 {NAME_MAX} 个"
        return (None, f"{label}含有换行符或其他控制字符") if _CONTROL.search(text) else (text, None)
    if kind in _CHOICES:
        names = _CHOICES[kind]
        found = next((code for code, name in names.items() if text.lower() == code or text == name), None)
        choices = "、".join(f"{code}（{name}）" for code, name in names.items())
        return (found, None) if found else (None, f"{label} {column}「{text}」无效，应为 {choices}之一")
    return _temperature(label, column, text) if kind == "temp" else _date(label, column, text)


def _temperature(label: str, column: str, text: str) -> tuple[Decimal | None, str | None]:
    plain = text.replace("℃", "").replace("°C", "").replace("−", "-").replace("－", "-").strip()
    try:
        value = Decimal(plain).normalize()
    except InvalidOperation:
        value = Decimal("NaN")
    if not value.is_finite():
        return None, f"{label} {column}「{text}」不是数字"
    if int(value.as_tuple().exponent) < -1:
        return None, f"{label}「{text}」最多一位小数"
    if not PROBE_RANGE[0] <= value <= PROBE_RANGE[1]:
        return None, f"{label} {show(value)} ℃ 超出探头量程 −90～60 ℃"
    return value, None


def _date(label: str, column: str, text: str) -> tuple[date | None, str | None]:
    m = _DATE.fullmatch(text)
    try:
        value = date(int(m[1]), int(m[2]), int(m[3])) if m else None
    except ValueError:
        value = None
    if value is None:
        return None, f"{label} {column}「{text}」不是有效日期（应为 YYYY-MM-DD，如 2026-03-15）"
    if not FIRST_DAY <= value <= LAST_DAY:
        return None, f"{label} {value} 不在 2000～2099 年之间"
    return value, None


def limit_problem(mode: str, t_min: Decimal | None, t_max: Decimal | None) -> tuple[Limits | None, str | None]:
    """The limits a compartment gets (the schema's defaults by mode filled in), or why not."""
    if t_max is None:
        low, t_max = DEFAULT_LIMITS[mode]
        t_min = low if mode == "refrigerated" and t_min is None else t_min
    given = f"（文件中为 {show((mode, t_min, t_max))}）"
    try:
        check_limits(mode, t_min, t_max)
    except ValueError as exc:
        return None, f"{exc}{given}"
    lowest = t_max if t_min is None else t_min
    if mode == "refrigerated" and not (REFRIGERATED_RANGE[0] <= lowest and t_max <= REFRIGERATED_RANGE[1]):
        return None, f"冷藏温区的限值应在 0～25 ℃ 之间{given}：请检查模式是否填错、小数点是否漏写"
    if mode == "frozen" and t_max > FROZEN_T_MAX:
        return None, f"冷冻温区的温度上限应不高于 0 ℃{given}：请检查模式是否填错"
    if t_min is not None and t_max - t_min < MIN_BAND:
        return None, f"上下限相差不足 1 ℃{given}：报警回差为 0.5 ℃，报警将无法解除"
    return (mode, t_min, t_max), None


def parse_row(number: int, cells: Sequence[str], columns: Mapping[str, int], today: date) -> tuple[Row, list[str]]:
    out: list[str] = []
    v: dict[str, Any] = {}
    text = {c: cells[i].strip() if (i := columns.get(c)) is not None and i < len(cells) else "" for c in COLUMNS}
    for column in COLUMNS:
        v[column], problem = _parse(column, text[column])
        out.extend([problem] if problem else [])
    if v["mode"] is not None and all(v[c] is not None or not text[c] for c in ("t_min", "t_max")):
        v["limits"], problem = limit_problem(v["mode"], v["t_min"], v["t_max"])
        out.extend([problem] if problem else [])
    for what in ("gateway", "probe"):
        installed, warranty = v[f"{what}_installed_on"], v[f"{what}_warranty_end"]
        if installed and warranty and warranty < installed:
            out.append(f"{COLUMNS[f'{what}_warranty_end'][0]} {warranty} 早于安装日期 {installed}")
    for column in ("commissioned_on", "gateway_installed_on", "probe_installed_on"):
        if v[column] and v[column] > today:
            out.append(f"{COLUMNS[column][0]} {v[column]} 晚于今天（{today}）")
    return Row(number, v, all(v[c] is not None for c in REQUIRED)), out


def read_columns(table: Table) -> tuple[dict[str, int] | None, list[Problem]]:
    """Where each column is; header problems (a required column missing, one repeated or unknown)."""
    problems: list[Problem] = []
    where: dict[str, list[int]] = {}
    for i, cell in enumerate(table.header):
        if name := cell.strip().lower():
            where.setdefault(name, []).append(i)
    for name, places in where.items():
        letters = "、".join(column_letter(i) for i in places)
        if name not in COLUMNS:
            problems.append(Problem(1, f"未知的列「{name}」（{letters} 列）：可用的列见 docs/operations.md"))
        elif len(places) > 1:
            problems.append(Problem(1, f"列 {name} 出现了 {len(places)} 次（{letters} 列）"))
    if missing := [c for c in REQUIRED if c not in where]:
        problems.append(Problem(1, f"缺少必填列 {'、'.join(missing)}（必填列为 {','.join(REQUIRED)}）"))
    return (None, problems) if problems else ({name: places[0] for name, places in where.items()}, [])
