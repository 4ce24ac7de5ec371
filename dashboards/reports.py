"""The monthly cold-chain report page (CM17): the same report document the API serves (kept or
live), laid out for reading on a phone and for printing, with the per-area chart and the workbook
link. Nothing is computed here but the chart.

Like the API, the page reads the report from the streaming replica when one is configured
(issue #18); when the replica is more than :data:`NOTE_AFTER` behind, the page says so in one line
(:func:`replica_note`, also used by the device page), so a county that has just corrected
something is not puzzled to find the old figure."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any

import plotly.graph_objects as go
from fastapi import APIRouter, Query, Request
from fastapi.responses import HTMLResponse

from analytics.report.build import REPORT_LEVELS, ReportRefused
from api.deps import Conn, ReadConn, ReplicaRead, lag_headers, replica_read
from api.routes.plans import MONTH_PATTERN
from api.routes.reports import read_report
from coldchain.core.db import fetch_all
from coldchain.core.terms import current_month, parse_month
from dashboards.web import API, PageError, PageUser, figure_json, render, scoped_unit

router = APIRouter(include_in_schema=False)

# Headline cards, in reading order: (indicator key, how to show it).
CARDS: tuple[tuple[str, str], ...] = (
    ("devices", "int"),
    ("problem_devices", "int"),
    ("problem_share", "share"),
    ("alarms", "int"),
    ("ack_within_30_share", "share"),
    ("level2_share", "share"),
    ("out_of_range_hours", "float"),
    ("offline_hours", "int"),
    ("completeness", "share"),
    ("drift_findings", "int"),
    ("gateway_problems", "int"),
    ("login_rate", "share"),
    ("warranties_due", "int"),
)

_UNITS = """
SELECT u.id, u.name, u.level FROM unit_tree t JOIN units u ON u.id = t.descendant_id
WHERE t.ancestor_id = %(scope)s AND u.level = ANY(%(levels)s) AND u.active
ORDER BY cc_unit_level_rank(u.level), u.code
"""


NOTE_AFTER = 5.0
"""Seconds behind the primary from which a page read from the replica says so: below, replication
is working normally and the note would only be noise."""


def _ago(seconds: float) -> str:
    if seconds < 120:
        return f"{round(seconds)} 秒"
    if seconds < 7200:
        return f"{round(seconds / 60)} 分钟"
    return f"{round(seconds / 3600)} 小时"


def replica_note(replica: ReplicaRead | None) -> str | None:
    """The line a report or history page shows when its data came from a replica that is behind
    by more than :data:`NOTE_AFTER` (or by an unknown time); None otherwise."""
    if replica is None:
        return None
    if replica.lag is None:
        return "数据来自只读副本，落后主库的时间未知；刚录入的内容可能尚未显示"
    if replica.lag < NOTE_AFTER:
        return None
    return f"数据来自只读副本，约 {_ago(replica.lag)}前；刚录入的内容可能尚未显示"


_AGENCY_SUFFIXES = ("疾病预防控制中心", "疾控中心")


def short_area_name(name: str) -> str:
    """An area's name for the chart's axis: "西安市疾病预防控制中心" reads as "西安市" (the full
    name stays in the hover text and the table); "本级" is kept."""
    for suffix in _AGENCY_SUFFIXES:
        name = name.replace(suffix, "")
    return name or "—"


def area_figure(areas: dict[str, Any]) -> dict[str, Any] | None:
    """Share of problem devices per area, as Plotly JSON (None when no area has devices).

    Horizontal bars, one area per row, the first area on top: on a 390 px phone a province's dozen
    city names under vertical bars overlapped whatever their angle, while rows never do and the
    chart grows with the areas instead; the axis names are shortened and the margin fits them."""
    rows = [r for r in areas["rows"] if r["problem_share"] is not None]
    if not rows:
        return None
    fig = go.Figure(
        go.Bar(
            orientation="h",
            y=[short_area_name(r["area_name"]) for r in rows],
            x=[round(r["problem_share"] * 100, 1) for r in rows],
            text=[f"{r['problem_devices']}/{r['devices']}" for r in rows],
            customdata=[r["area_name"] for r in rows],
            textposition="outside",
            cliponaxis=False,
            marker_color=["#c0392b" if r["problem_share"] >= 0.5 else "#1f4e79" for r in rows],
            hovertemplate="%{customdata}<br>问题设备占比 %{x}%<br>问题设备/设备 %{text}<extra></extra>",
        )
    )
    fig.update_layout(
        margin={"l": 10, "r": 40, "t": 10, "b": 40},
        height=70 + 30 * len(rows),
        xaxis={"title": "问题设备占比（%）", "range": [0, 115], "nticks": 6, "automargin": True},
        yaxis={"autorange": "reversed", "automargin": True, "type": "category"},
    )
    return figure_json(fig)


@router.get("/reports/monthly", response_class=HTMLResponse)
def report_page(
    request: Request,
    user: PageUser,
    conn: Conn,
    read: ReadConn,
    unit_id: Annotated[int | None, Query(ge=1, le=2**62)] = None,
    month: Annotated[str | None, Query(pattern=MONTH_PATTERN)] = None,
) -> HTMLResponse:
    unit = scoped_unit(conn, user, unit_id)
    now = datetime.now(UTC)
    try:
        first = parse_month(month) if month else current_month(now)
        report, from_read = read_report(conn, read, unit, first, now)
    except ReportRefused as exc:
        raise PageError(422, str(exc)) from exc
    query = f"unit_id={unit}&month={report['month']}"
    replica = replica_read(request) if from_read else None
    page = render(
        request,
        "report_monthly.html",
        user,
        plotly=True,
        report=report,
        cards=CARDS,
        changes={c["key"]: c for c in report["changes"]},
        area_figure=area_figure(report["tables"]["areas"]),
        units=fetch_all(conn, _UNITS, {"scope": user.unit_id, "levels": list(REPORT_LEVELS)}),
        unit_id=unit,
        xlsx_url=f"{API}/reports/monthly.xlsx?{query}",
        json_url=f"{API}/reports/monthly?{query}",
        replica_note=replica_note(replica),
    )
    if replica is not None:
        page.headers.update(lag_headers(request))
    return page
