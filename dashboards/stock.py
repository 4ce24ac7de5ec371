"""Stock pages (VT9, VT11): balances by level, lots near expiry, over- and under-stock, wastage.

The numbers come from the inventory domain functions the API calls too (:mod:`inventory.balances`
behind ``/stock/balances``, :mod:`inventory.findings` behind ``/analysis/stock-levels`` and
``/analysis/wastage``), so a page and an API client can never disagree. The page asks them for the
chosen unit's whole subtree, filtered and summed in SQL and never cut at a page size; only the
by-level pivot is the page's own, done in polars.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Annotated, Any

import plotly.graph_objects as go
import polars as pl
from fastapi import APIRouter, Query, Request
from fastapi.responses import HTMLResponse

from api.deps import Conn
from api.routes.plans import MONTH_PATTERN
from coldchain.core.db import fetch_all, fetch_one
from coldchain.core.terms import BEIJING, parse_month, previous_month
from dashboards.web import PageUser, figure_json, render, scoped_unit
from inventory import balances, findings
from inventory.analysis import OVERSTOCK_MONTHS, SHORTAGE_MONTHS

router = APIRouter(include_in_schema=False)

LEVEL_NAMES = {"province": "省级", "city": "市级", "county": "县级", "township": "接种单位"}
STOCK_STATUS_NAMES = {
    "shortage": "短缺",
    "overstock": "积压",
    "idle": "无出库（闲置）",
    "normal": "正常",
    "empty": "无",
}
WASTAGE_FLAG_NAMES = {
    "normal": "正常",
    "over_reference": "超过推荐值",
    "below_one": "低于 1（数据有误）",
    "no_vaccinations": "无接种",
    "used_without_vaccinations": "有使用无接种记录",
}
NEAR_EXPIRY_DAYS = 90
"""A quarter ahead: enough time to move a lot to a unit that will use it before it expires."""


def by_level(rows: list[dict[str, Any]]) -> pl.DataFrame:
    """Doses per vaccine (rows) and level (columns, province → sites), with a total column."""
    if not rows:
        return pl.DataFrame(schema={"疫苗": pl.String, "规格": pl.String, "合计": pl.Int64})
    frame = pl.DataFrame(rows).with_columns(pl.col("level").replace_strict(LEVEL_NAMES).alias("level"))
    wide = frame.pivot(on="level", index=["vaccine_name", "spec"], values="doses", aggregate_function="sum")
    levels = [name for name in LEVEL_NAMES.values() if name in wide.columns]
    return (
        wide.select("vaccine_name", "spec", *levels)
        .with_columns(pl.col(levels).fill_null(0))
        .with_columns(pl.sum_horizontal(levels).alias("合计"))
        .rename({"vaccine_name": "疫苗", "spec": "规格"})
        .sort("疫苗", "规格")
    )


def wastage_figure(rows: list[dict[str, Any]], area_id: int) -> dict[str, Any] | None:
    """Coefficient against the reference per vaccine for the whole area, as Plotly JSON."""
    whole = [r for r in rows if r["area_unit_id"] == area_id and r["coefficient"] is not None]
    if not whole:
        return None
    labels = [f"{r['vaccine_name']} {r['spec']}" for r in whole]
    fig = go.Figure(
        [
            go.Bar(name="损耗系数", x=labels, y=[r["coefficient"] for r in whole], marker_color="#1f4e79"),
            go.Scatter(
                name="国家推荐值",
                x=labels,
                y=[r["reference"] for r in whole],
                mode="markers",
                marker={"symbol": "line-ew-open", "size": 28, "color": "#c0392b", "line": {"width": 3}},
            ),
        ]
    )
    fig.update_layout(
        margin={"l": 40, "r": 10, "t": 10, "b": 80},
        height=320,
        legend={"orientation": "h", "y": 1.1},
        yaxis={"title": "损耗系数", "rangemode": "tozero"},
    )
    return figure_json(fig)


@router.get("/stock", response_class=HTMLResponse)
def stock_page(
    request: Request,
    user: PageUser,
    conn: Conn,
    unit_id: Annotated[int | None, Query(ge=1, le=2**62)] = None,
    month: Annotated[str | None, Query(pattern=MONTH_PATTERN)] = None,
) -> HTMLResponse:
    unit = scoped_unit(conn, user, unit_id)
    today = datetime.now(BEIJING).date()
    month = month or previous_month(today.replace(day=1)).strftime("%Y-%m")
    name = fetch_one(conn, "SELECT name FROM units WHERE id = %(id)s", {"id": unit})
    # The API filters one unit exactly; the page shows the chosen unit's whole subtree.
    near = balances.expiring(conn, unit, today + timedelta(days=NEAR_EXPIRY_DAYS))
    stock_findings = findings.stock_levels(
        conn,
        unit,
        months=3,
        low=SHORTAGE_MONTHS,
        high=OVERSTOCK_MONTHS,
        only_findings=True,
        now=datetime.now().astimezone(),
    )
    wastage = findings.wastage_by_area(conn, unit, parse_month(month), only_findings=False)
    levels = by_level(balances.by_level(conn, unit))
    return render(
        request,
        "stock.html",
        user,
        plotly=True,
        unit_id=unit,
        unit_name=name["name"] if name else "",
        month=month,
        today=today,
        near_days=NEAR_EXPIRY_DAYS,
        levels_columns=levels.columns,
        levels_rows=levels.rows(),
        near=[{**r, "days_left": (r["expiry_date"] - today).days} for r in near],
        findings=stock_findings,
        wastage=wastage,
        wastage_figure=wastage_figure(wastage, unit),
        status_names=STOCK_STATUS_NAMES,
        flag_names=WASTAGE_FLAG_NAMES,
        low=SHORTAGE_MONTHS,
        high=OVERSTOCK_MONTHS,
        units=fetch_all(
            conn,
            """SELECT u.id, u.name FROM unit_tree t JOIN units u ON u.id = t.descendant_id
                                 WHERE t.ancestor_id = %(s)s AND u.level <> 'township' ORDER BY u.code""",
            {"s": user.unit_id},
        ),
    )
