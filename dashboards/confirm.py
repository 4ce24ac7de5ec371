"""The page behind the link in a WeChat alarm message (CM16): shows the alarm and confirms it
with one tap, without a password.

Opening the page does not use the link up: WeChat and other apps fetch links to preview them, and
a GET that confirmed would be spent by a robot. The button posts the token to
``POST /api/v1/alarm-links/confirm``, which checks it (single use, 24 h) and records the
acknowledgement through WeChat and the WeChat sign-in (CM14).
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query
from fastapi.responses import HTMLResponse

from alarms.queries import link_preview
from alarms.rules import KIND_NAMES
from api.deps import Conn
from coldchain.core.terms import BEIJING
from dashboards.web import templates

router = APIRouter(include_in_schema=False)
STATES = {"active": "未处理", "acknowledged": "已确认", "resolved": "已恢复（待关闭）", "closed": "已关闭"}


@router.get("/alarm-confirm", response_class=HTMLResponse)
def confirm_page(conn: Conn, token: Annotated[str, Query(pattern=r"^[A-Za-z0-9_-]{20,100}$")]) -> HTMLResponse:
    link = link_preview(conn, token)
    context: dict[str, Any] = {
        "api": "/api/v1",
        "token": token,
        "alarm": None,
        "usable": False,
        "reason": "链接不存在或已失效，请登录平台处理报警。",
    }
    if link is not None:
        context["alarm"] = {
            "kind_label": KIND_NAMES.get(link["kind"], link["kind"]),
            "unit_name": link["unit_name"],
            "place": link["place"],
            "value": link["value"],
            "state_label": STATES.get(link["state"], link["state"]),
            "since": link["condition_since"].astimezone(BEIJING).strftime("%m-%d %H:%M"),
        }
        if link["used_at"] is not None:
            context["reason"] = "此链接已使用过。"
        elif not link["fresh"]:
            context["reason"] = "此链接已过期（24 小时），请登录平台处理报警。"
        elif link["state"] == "closed":
            context["reason"] = "报警已关闭。"
        else:
            context["usable"] = True
    status = 200 if link is not None else 404
    return HTMLResponse(templates.get_template("alarm_confirm.html").render(**context), status_code=status)
