"""A report as an XLSX workbook: one sheet per table, Chinese sheet names and headings.

Written from the report document itself (kept or live), never from fresh queries, so the workbook
of a kept month is the kept report, cell for cell.
"""

from __future__ import annotations

import io
from collections.abc import Mapping
from typing import Any

import polars as pl
import xlsxwriter  # type: ignore[import-untyped]

_DTYPES: Mapping[str, Any] = {
    "text": pl.String,
    "int": pl.Int64,
    "number": pl.Float64,
    "float": pl.Float64,
    "temp": pl.Float64,
    "share": pl.Float64,
    "date": pl.String,
    "bool": pl.String,
}
_FORBIDDEN = str.maketrans({c: "_" for c in "[]:*?/\\"})
_NUMBER_FORMATS: Mapping[str, str] = {
    "share": "0.0%",
    # Counts and hours in one column: Excel's General shows 25 as 25 and 2.5 as 2.5, never "25.00".
    "number": "General",
    "temp": "0.0",
}


def sheet_name(title: str) -> str:
    """Excel's rules: at most 31 characters, none of []:*?/\\."""
    return title.translate(_FORBIDDEN)[:31]


def table_frame(table: Mapping[str, Any]) -> pl.DataFrame:
    """A report table as a frame with its Chinese headings (yes/no for flags)."""
    columns = table["columns"]
    data: dict[str, list[Any]] = {}
    for col in columns:
        values = [row.get(col["key"]) for row in table["rows"]]
        if col["format"] == "bool":
            values = [None if v is None else ("是" if v else "否") for v in values]
        data[col["label"]] = values
    schema = {col["label"]: _DTYPES.get(col["format"], pl.String) for col in columns}
    return pl.DataFrame(data, schema=schema)


def title_row(report: Mapping[str, Any], table_title: str) -> str:
    """The first row of every sheet: a sheet printed or forwarded alone still says whose report it
    is, for which month, and whether its figures are final (最终) or may still change (临时)."""
    state = "临时" if report.get("provisional") else "最终"
    return f"{report['unit']['name']} {report['month']} 月度冷链报告 · {table_title} · {state}"


def workbook(report: Mapping[str, Any]) -> bytes:
    """The workbook's bytes: each table on its own sheet, in report order, under a title row
    (:func:`title_row`), headings frozen."""
    buffer = io.BytesIO()
    with xlsxwriter.Workbook(buffer, {"in_memory": True}) as book:
        book.set_properties(
            {
                "title": f"{report['unit']['name']} {report['month']} 月度冷链报告",
                "subject": "月度冷链报告（CM17）",
                "comments": "临时（本月尚未结束或尚在补传期内）" if report.get("provisional") else "已定稿",
            }
        )
        for key in report.get("table_order") or list(report["tables"]):
            table = report["tables"][key]
            df = table_frame(table)
            formats = {
                c["label"]: _NUMBER_FORMATS[c["format"]] for c in table["columns"] if c["format"] in _NUMBER_FORMATS
            }
            name = sheet_name(table["title"])
            df.write_excel(
                book,
                worksheet=name,
                position="A2",
                column_formats=formats,
                autofit=True,
                autofilter=df.height > 0,
                freeze_panes=(2, 0),
                float_precision=2,
            )
            sheet = book.get_worksheet_by_name(name)
            sheet.write_string(0, 0, title_row(report, table["title"]), book.add_format({"bold": True}))
    return buffer.getvalue()
