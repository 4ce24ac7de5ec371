"""The alarm page behind the link in a WeChat group message (``/alarms/{id}``): what happened, who
was told and when, and the two actions a person takes — acknowledge, then close with cause, action
and vaccine disposition once the temperature is back. The page reads the alarm with the query
behind ``GET /api/v1/alarms/{id}`` (:func:`alarms.queries.alarm_detail`) and its buttons post to the
API, so the rules (who may see, who may act, in which state) are stated once."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Request
from fastapi.responses import HTMLResponse

from alarms.queries import alarm_detail
from alarms.rules import KIND_NAMES, SEVERITY_NAMES
from api.deps import Conn
from coldchain.core.errors import Refused
from dashboards.confirm import STATES
from dashboards.web import PageError, PageUser, render
from registry.permissions import may_write

router = APIRouter(include_in_schema=False)

ACTIONS = {
    "opened": "报警",
    "worsened": "加重",
    "cause_changed": "原因变化",
    "acknowledged": "确认",
    "resolved": "恢复",
    "closed": "关闭",
    "notified": "已通知",
    "notify_failed": "通知失败",
}


@router.get("/alarms/{alarm_id}", response_class=HTMLResponse)
def alarm_page(
    request: Request, user: PageUser, conn: Conn, alarm_id: Annotated[int, Path(ge=1, le=2**62)]
) -> HTMLResponse:
    try:
        alarm = alarm_detail(conn, user.unit_id, alarm_id)
    except Refused as exc:
        raise PageError(exc.status, exc.message) from exc
    return render(
        request,
        "alarm.html",
        user,
        alarm=alarm,
        kind_name=KIND_NAMES.get(alarm["kind"], alarm["kind"]),
        severity_name=SEVERITY_NAMES.get(alarm["severity"], alarm["severity"]),
        state_name=STATES.get(alarm["state"], alarm["state"]),
        actions=ACTIONS,
        may_write=may_write(user.actor),
    )
