"""The alarm pages: the inbox (``/alarms``) where a county officer sees every alarm of the
jurisdiction and acts on it from the phone, and the alarm page behind the link in a WeChat group
message (``/alarms/{id}``): what happened, who was told and when, and the two actions a person
takes — acknowledge, then close with cause, action and vaccine disposition once the temperature is
back.

Both read through :mod:`alarms.queries` (the queries behind ``GET /api/v1/alarms`` and
``GET /api/v1/alarms/{id}``) and their buttons post to the API, so the rules (who may see, who may
act, in which state) are stated once; this module only parses, authorises, calls and words.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Annotated, Any, Literal
from urllib.parse import urlencode

from fastapi import APIRouter, Path, Query, Request
from fastapi.responses import HTMLResponse
from pydantic import BeforeValidator

from alarms.escalation import kind_of_key
from alarms.messages import STEP_LABELS, format_duration
from alarms.queries import alarm_detail, inbox
from alarms.rules import KIND_NAMES, SEVERITY_NAMES
from alarms.rules.kinds import Kind
from analytics.board import filter_units
from api.deps import Conn
from coldchain.core.errors import Refused
from coldchain.core.terms import BEIJING, LEVEL_NAMES, Level
from dashboards.confirm import STATES
from dashboards.web import PageError, PageUser, render, scoped_unit
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
CHANNELS = {
    "wecom": "企业微信群",
    "webhook": "webhook",
    "wechat_template": "微信模板消息",
    "wechat": "微信",
    "web": "网页",
    "api": "接口",
}
UNCONFIGURED = "未配置通知去处"

Tab = Literal["open", "active", "acknowledged", "resolved", "closed"]
TAB_NAMES: Mapping[str, str] = {
    "open": "未关闭",
    "active": "未处理",
    "acknowledged": "已确认",
    "resolved": "已恢复待关闭",
    "closed": "已关闭（历史）",
}
# The filter form sends "" for "全部"; that means no filter, not a malformed value.
Blank = BeforeValidator(lambda value: None if value == "" else value)
PER_PAGE = 30
"""A page a phone scrolls through in a few swipes; the open alarms of a county rarely fill two."""


def step_label(key: str) -> str:
    """A notification step in words ('level2' → 升级通知). A key this version does not know (new
    steps are added over time, and old rows stay) is shown as it is rather than failing the page."""
    try:
        kind = kind_of_key(key)
    except ValueError:
        return key
    labels: Mapping[str, str] = STEP_LABELS
    return labels.get(kind, key)


def failure_reason(notification: Mapping[str, Any], failures: Mapping[str, str]) -> str:
    """Why a notification did not go out: the outbox row's own error; else "nobody configured"
    (those rows are settled without a send, so they carry no error); else, for a row still waiting
    after a failed attempt, the last ``notify_failed`` event of its channel."""
    if notification["last_error"]:
        return str(notification["last_error"])
    if notification["unconfigured"]:
        return UNCONFIGURED
    if notification["sent_at"] is None and notification["attempts"] > 0:
        return failures.get(notification["channel"], "")
    return ""


def event_note(event: Mapping[str, Any]) -> str:
    """The one line of an event's details a person needs: a failure's reason (the "nobody
    configured" failure in the words the notifications table uses), the steps a message carried."""
    details = event["details"] or {}
    error = details.get("error")
    if error:
        return UNCONFIGURED if str(error).startswith("单位未配置通知去处") else str(error)
    steps = details.get("steps")
    if isinstance(steps, list):
        return "、".join(step_label(str(s)) for s in steps)
    return ""


def _when(moment: datetime | None, now: datetime) -> str:
    if moment is None:
        return ""
    local = moment.astimezone(BEIJING)
    return local.strftime("%m-%d %H:%M" if local.year == now.astimezone(BEIJING).year else "%Y-%m-%d %H:%M")


def inbox_row(alarm: Mapping[str, Any], now: datetime) -> dict[str, Any]:
    """One inbox row in words: what, how severe, where, since when and for how long (to now while
    the condition lasts, to its end once resolved), the peak and — while open — the current value."""
    ongoing = alarm["resolved_at"] is None
    lasted = format_duration((now if ongoing else alarm["resolved_at"]) - alarm["condition_since"])
    if alarm["equipment_name"]:
        place = f"{alarm['equipment_name']} / {alarm['compartment_name'] or ''}".rstrip(" /")
    else:
        place = f"网关 {alarm['gateway_serial'] or ''}".strip()
    return {
        **alarm,
        "kind_name": KIND_NAMES.get(alarm["kind"], alarm["kind"]),
        "severity_name": SEVERITY_NAMES.get(alarm["severity"], alarm["severity"]),
        "state_name": STATES.get(alarm["state"], alarm["state"]),
        "place": place,
        "since_text": _when(alarm["condition_since"], now),
        "lasted": f"已持续 {lasted}" if ongoing else f"持续 {lasted}",
        "current": alarm["current_t"] if alarm["state"] in ("active", "acknowledged") else None,
        "ack_text": _ack_text(alarm, now),
    }


def _ack_text(alarm: Mapping[str, Any], now: datetime) -> str:
    """Who acknowledged, when, and through what ('张三 05-02 10:31（微信）'); empty if nobody has."""
    if alarm["acknowledged_at"] is None:
        return ""
    parts = [alarm["acknowledged_by_name"] or "", _when(alarm["acknowledged_at"], now)]
    channel = CHANNELS.get(alarm["ack_channel"] or "")
    return " ".join(p for p in parts if p) + (f"（{channel}）" if channel else "")


def _href(params: Mapping[str, Any]) -> str:
    """``/alarms`` with the non-empty filters, so tabs and pages keep the others."""
    given = {k: v for k, v in params.items() if v is not None and not (k == "tab" and v == "open")}
    given = {k: v for k, v in given.items() if not (k == "page" and v == 1)}
    return "/alarms" + (f"?{urlencode(given)}" if given else "")


def _unit_choices(units: Sequence[Mapping[str, Any]], chosen: int | None) -> list[Mapping[str, Any]]:
    """Units offered by the filter: every unit down to the counties (a province has thousands of
    sites, too many for a phone's list), and the chosen site; a site is reached from a row's link."""
    return [u for u in units if u["level"] != "township" or u["id"] == chosen]


@router.get("/alarms", response_class=HTMLResponse)
def inbox_page(
    request: Request,
    user: PageUser,
    conn: Conn,
    tab: Tab = "open",
    level: Annotated[Level | None, Blank] = None,
    unit_id: Annotated[int | None, Query(ge=1, le=2**62), Blank] = None,
    kind: Annotated[Kind | None, Blank] = None,
    page: Annotated[int, Query(ge=1, le=100_000)] = 1,
) -> HTMLResponse:
    if unit_id is not None:
        scoped_unit(conn, user, unit_id)
    found = inbox(
        conn,
        user.unit_id,
        tab=tab,
        unit_id=unit_id,
        kind=kind,
        level=level,
        limit=PER_PAGE,
        offset=(page - 1) * PER_PAGE,
    )
    now = datetime.now(UTC)
    filters = {"tab": tab, "level": level, "unit_id": unit_id, "kind": kind}
    pages = max(1, -(-found["counts"][tab] // PER_PAGE))
    return render(
        request,
        "alarms.html",
        user,
        rows=[inbox_row(a, now) for a in found["rows"]],
        tabs=[(key, name, found["counts"][key], _href({**filters, "tab": key})) for key, name in TAB_NAMES.items()],
        tab=tab,
        level=level,
        unit_id=unit_id,
        kind=kind,
        levels=LEVEL_NAMES,
        kinds=KIND_NAMES,
        units=_unit_choices(filter_units(conn, user.unit_id), unit_id),
        page=page,
        pages=pages,
        previous=_href({**filters, "page": page - 1}) if page > 1 else None,
        next=_href({**filters, "page": page + 1}) if page < pages else None,
        unit_href=lambda unit: _href({**filters, "unit_id": unit}),
        clear=_href({"tab": tab}),
        may_write=may_write(user.actor),
    )


@router.get("/alarms/{alarm_id}", response_class=HTMLResponse)
def alarm_page(
    request: Request, user: PageUser, conn: Conn, alarm_id: Annotated[int, Path(ge=1, le=2**62)]
) -> HTMLResponse:
    try:
        alarm = alarm_detail(conn, user.unit_id, alarm_id)
    except Refused as exc:
        raise PageError(exc.status, exc.message) from exc
    failures: dict[str, str] = {}
    for e in alarm["events"]:  # in order: the last failure of each channel wins
        if e["action"] == "notify_failed" and e["channel"]:
            failures[e["channel"]] = event_note(e)
    notifications = [
        {
            **n,
            "step_label": step_label(n["step"]),
            "channel_name": CHANNELS.get(n["channel"], n["channel"]),
            "reason": failure_reason(n, failures),
        }
        for n in alarm["notifications"]
    ]
    events = [
        {**e, "channel_name": CHANNELS.get(e["channel"] or "", e["channel"] or ""), "note": event_note(e)}
        for e in alarm["events"]
    ]
    return render(
        request,
        "alarm.html",
        user,
        alarm=alarm,
        row=inbox_row(alarm, datetime.now(UTC)),
        notifications=notifications,
        events=events,
        kind_name=KIND_NAMES.get(alarm["kind"], alarm["kind"]),
        severity_name=SEVERITY_NAMES.get(alarm["severity"], alarm["severity"]),
        state_name=STATES.get(alarm["state"], alarm["state"]),
        actions=ACTIONS,
        may_write=may_write(user.actor),
    )
