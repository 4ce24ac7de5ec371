"""The live temperature board page (CM2): tiles drawn in the browser from the same JSON the page then
polls, so the first paint and every update go through one renderer and cannot disagree."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Request
from fastapi.responses import HTMLResponse

from analytics.board import filter_units
from api.deps import Conn
from api.routes.board import BoardOut, board_data
from dashboards.web import PageUser, render, scoped_unit

router = APIRouter(include_in_schema=False)


@router.get("/board", response_class=HTMLResponse)
def board_page(
    request: Request,
    user: PageUser,
    conn: Conn,
    unit_id: Annotated[int | None, Query(ge=1, le=2**62)] = None,
    every: Annotated[int, Query(ge=2, le=300, description="刷新间隔（秒）")] = 15,
) -> HTMLResponse:
    unit = scoped_unit(conn, user, unit_id)
    data = BoardOut.model_validate(board_data(conn, unit)).model_dump(mode="json")
    return render(
        request, "board.html", user, board=data, units=filter_units(conn, user.unit_id), unit_id=unit, every=every
    )
