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
    "float": pl.Float64,
    "share": pl.Float64,
    "date": pl.String,
    "bool": pl.String,
}
_FORBIDDEN = str.maketrans({c: "_" for c in "[]:*?/\\"})


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


def workbook(report: Mapping[str, Any]) -> bytes:
    """The workbook's bytes: each table on its own sheet, in report order, headings frozen."""
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
            shares = [c["label"] for c in table["columns"] if c["format"] == "share"]
            df.write_excel(
                book,
                worksheet=sheet_name(table["title"]),
                column_formats=dict.fromkeys(shares, "0.0%"),
                autofit=True,
                autofilter=df.height > 0,
                freeze_panes=(1, 0),
                float_precision=2,
            )
    return buffer.getvalue()
