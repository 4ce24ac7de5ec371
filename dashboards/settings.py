"""The settings pages (issue #17): what was API-only — a unit's escalation timing, its responsible
people and notification routes (``/settings``), a compartment's limits and rule parameters
(``/settings/compartments/{id}``) — on a phone, inside WeChat's browser.

Why pages over the same calls: a township's administrator has a phone, not an API client, and a
robot URL pasted wrong is found only when an alarm goes nowhere. The pages read through the domain
functions the API's GET routes call (:mod:`alarms.settings_store`, :mod:`registry.responsibles`,
:mod:`registry.equipment`), and every save is a fetch to the API's own PUT / PATCH with the version
read, so the checks, the refusals (in Chinese) and the audit are the API's, stated once. A robot's
key never reaches a page: routes come masked from :func:`alarms.settings_store.routes_of`.

Read-only roles (supervisor, analyst) see every value but no save or test button
(:func:`registry.permissions.may_write`); the API refuses them anyway.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from datetime import timedelta
from typing import Annotated, Any

from fastapi import APIRouter, Path, Query, Request
from fastapi.responses import HTMLResponse

from alarms import settings_store
from alarms.escalation import EscalationPolicy, policy_for
from alarms.rules import DEFAULTS
from api.deps import Conn, Principal
from coldchain.core.errors import Refused
from coldchain.core.terms import LEVEL_NAMES
from dashboards.web import PageError, PageUser, render, scoped_unit
from registry import responsibles
from registry.equipment import get_compartment, get_equipment, list_equipment
from registry.permissions import may_write
from registry.units import get_unit, list_units
from registry.users import list_users

router = APIRouter(include_in_schema=False)

LEVELS = (1, 2, 3)
LEVEL_LABELS = {1: "一级", 2: "二级", 3: "三级"}
CHANNEL_NAMES = {"wecom": "企业微信群机器人", "webhook": "签名 webhook"}
MODE_NAMES = {"refrigerated": "冷藏", "frozen": "冷冻"}
LIMIT_KEYS = frozenset({"mode", "t_min", "t_max"})
"""In ``effective`` but edited as the compartment's limits (registry), not as rule parameters."""

PARAM_NAMES: Mapping[str, str] = {
    "delay": "超限报警延时",
    "freeze_threshold": "冻结风险温度（℃）",
    "freeze_delay": "冻结风险延时",
    "cumulative_limit": "累计超限时长",
    "cumulative_window": "累计统计窗口",
    "hysteresis": "解除回差（℃）",
    "hold": "解除前保持时间",
    "no_data_after": "无数据报警时限",
    "wrong_place_after": "疑似放错位置的持续时间",
    "wrong_place_t": "疑似放错位置的温度（℃）",
    "max_gap": "读数连续的最大间隔",
    "worsen_step": "报警加重再记步长（℃）",
    "gateway.offline_after": "网关离线时限",
    "gateway.battery_low": "网关电池低电压（V）",
    "gateway.weak_rssi": "网关弱信号（dBm）",
    "gateway.weak_for": "弱信号持续时长",
    "gateway.hold": "网关恢复保持时间",
    "gateway.max_gap": "网关状态最大间隔",
}
MAX_MEMBERS = 200
MAX_CHILDREN = 1000

_CLOCK = re.compile(r"^(?:(\d+) days?, )?(\d+):(\d\d):(\d\d)$")


# ---------------------------------------------------------------------------------------------
# Words for values (pure)


def duration_words(value: timedelta) -> str:
    """'1 小时 30 分钟', '45 秒', '1 天': every unit that is not zero, so 90 s never reads as 1 minute."""
    seconds = int(value.total_seconds())
    if seconds <= 0:
        return "0"
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    parts = [(days, "天"), (hours, "小时"), (minutes, "分钟"), (secs, "秒")]
    return " ".join(f"{n} {unit}" for n, unit in parts if n)


def compact_duration(value: timedelta) -> str:
    """The form the escalation fields take ('30m', '1h', '1d'): the largest unit that divides it."""
    seconds = int(value.total_seconds())
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds % size == 0:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def value_words(value: Any) -> str:
    """A parameter as people read it: durations (``H:MM:SS`` as the API prints them) in words,
    numbers without trailing zeros."""
    if value is None:
        return "无"
    if isinstance(value, bool):
        return "是" if value else "否"
    if isinstance(value, int | float):
        return f"{value:g}"
    match = _CLOCK.match(str(value))
    if match:
        days, hours, minutes, seconds = (int(g or 0) for g in match.groups())
        return duration_words(timedelta(days=days, hours=hours, minutes=minutes, seconds=seconds))
    return str(value)


def _flat(values: Mapping[str, Any]) -> dict[str, Any]:
    """``{"gateway": {"offline_after": …}}`` as ``{"gateway.offline_after": …}``: one row per
    parameter, named as a client puts it in ``overrides``."""
    out: dict[str, Any] = {}
    for key, value in values.items():
        if isinstance(value, Mapping):
            out.update({f"{key}.{sub}": inner for sub, inner in value.items()})
        else:
            out[key] = value
    return out


def _default_words(key: str, value: Any, mode: str) -> str:
    """A default of None means "the mode's own" (``wrong_place_t``): say which, from the table."""
    if value is None and f"{key}.{mode}" in DEFAULTS:
        return DEFAULTS[f"{key}.{mode}"].text
    return value_words(value)


def _why(key: str, mode: str) -> str:
    """The first sentence of the default's documented reason: what the parameter is for."""
    entry = DEFAULTS.get(key) or DEFAULTS.get(f"{key}.{mode}")
    return entry.source_zh.split("。")[0] + "。" if entry else ""


def param_rows(
    mode: str, overrides: Mapping[str, Any], effective: Mapping[str, Any], defaults: Mapping[str, Any]
) -> list[dict[str, Any]]:
    """One row per parameter the API reports in effect (whatever the rules grow to), limits aside:
    its name, what it is for, the default, the override as saved ('' if none) and the value in effect."""
    flat_overrides = _flat(overrides)
    flat_defaults = _flat(defaults)
    rows = []
    for key, current in _flat(effective).items():
        if key in LIMIT_KEYS:
            continue
        saved = flat_overrides.get(key)
        rows.append(
            {
                "key": key,
                "name": PARAM_NAMES.get(key, key),
                "why": _why(key, mode),
                "default": _default_words(key, flat_defaults.get(key), mode),
                "override": "" if saved is None else saved,
                "current": _default_words(key, current, mode),
                "overridden": key in flat_overrides,
            }
        )
    return rows


def escalation_view(saved: Mapping[str, Any], system: EscalationPolicy) -> list[dict[str, Any]]:
    """The three timings, each with the unit's value ('' = system default), the default in the
    field's own form (the placeholder) and in words, and what is in effect."""
    steps_default = ",".join(compact_duration(s) for s in system.steps)
    return [
        {
            "field": "steps",
            "label": "升级时限（从报警开始计，逗号分隔）",
            "value": saved["steps"] or "",
            "placeholder": steps_default,
            "default": "、".join(duration_words(s) for s in system.steps),
            "current": "、".join(value_words(s) for s in saved["effective_steps"]),
        },
        {
            "field": "reminder",
            "label": "未恢复时的提醒间隔",
            "value": saved["reminder"] or "",
            "placeholder": compact_duration(system.reminder),
            "default": duration_words(system.reminder),
            "current": value_words(saved["effective_reminder"]),
        },
        {
            "field": "resolved_reminder",
            "label": "已恢复未关闭时的提醒间隔",
            "value": saved["resolved_reminder"] or "",
            "placeholder": compact_duration(system.resolved_reminder),
            "default": duration_words(system.resolved_reminder),
            "current": value_words(saved["effective_resolved_reminder"]),
        },
    ]


# ---------------------------------------------------------------------------------------------
# /settings


def _trail(conn: Conn, user: Principal, unit: dict[str, Any]) -> list[dict[str, Any]]:
    """The way down from the user's own unit to ``unit`` (for the picker's links)."""
    trail = [unit]
    while trail[0]["id"] != user.unit_id and trail[0]["parent_id"] is not None and len(trail) < 8:
        parent = get_unit(conn, user.actor.unit, trail[0]["parent_id"])
        if parent is None:
            break
        trail.insert(0, parent)
    return trail


@router.get("/settings", response_class=HTMLResponse)
def settings_page(
    request: Request,
    user: PageUser,
    conn: Conn,
    unit_id: Annotated[int | None, Query(ge=1, le=2**62)] = None,
) -> HTMLResponse:
    unit_key = scoped_unit(conn, user, unit_id)
    unit = get_unit(conn, user.actor.unit, unit_key)
    if unit is None:
        raise PageError(404, "单位不存在或不在您的辖区内")
    settings = request.app.state.settings
    try:
        escalation = settings_store.escalation_of(conn, settings, unit_key)
    except Refused as exc:  # only a row written around the API (psql) can fail here; say why
        raise PageError(exc.status, exc.message) from exc
    people = responsibles.responsibles(conn, unit_key)
    members = list_users(
        conn, user.actor.unit, unit_id=unit_key, role=None, status="active", limit=MAX_MEMBERS, offset=0
    )
    held = {(p["level"], p["user_id"]) for p in people}
    equipment = list_equipment(conn, user.actor.unit, unit_id=unit_key, status="active", kind=None, limit=500, offset=0)
    children = list_units(conn, user.actor.unit, level=None, parent_id=unit_key, limit=MAX_CHILDREN, offset=0)
    return render(
        request,
        "settings.html",
        user,
        unit=unit,
        unit_level=LEVEL_NAMES.get(unit["level"], unit["level"]),
        trail=_trail(conn, user, unit),
        children=children,
        writer=may_write(user.actor),
        escalation=escalation,
        timings=escalation_view(escalation, policy_for(settings, {})),
        levels=LEVELS,
        level_labels=LEVEL_LABELS,
        people={level: [p for p in people if p["level"] == level] for level in LEVELS},
        members=[{**m, "levels": [lv for lv in LEVELS if (lv, m["id"]) in held]} for m in members],
        routes=settings_store.routes_of(conn, unit_key),
        channel_names=CHANNEL_NAMES,
        equipment=equipment,
        mode_names=MODE_NAMES,
    )


# ---------------------------------------------------------------------------------------------
# /settings/compartments/{id}


@router.get("/settings/compartments/{compartment_id}", response_class=HTMLResponse)
def compartment_settings_page(
    request: Request,
    user: PageUser,
    conn: Conn,
    compartment_id: Annotated[int, Path(ge=1, le=2**62)],
) -> HTMLResponse:
    compartment = get_compartment(conn, user.actor.unit, compartment_id)
    if compartment is None:
        raise PageError(404, "温区不存在或不在您的辖区内")
    equipment = get_equipment(conn, user.actor.unit, compartment["equipment_id"])
    assert equipment is not None  # the compartment was found through it
    row = settings_store.params_row(conn, user.unit_id, compartment_id)
    defaults = settings_store.params_view({**row, "overrides": {}})["effective"]
    problem = None
    try:
        view = settings_store.params_view(row)
    except Refused as exc:
        # Overrides that no longer fit (limits changed in psql): show them with the defaults and
        # the reason, so the administrator can fix them here.
        problem = exc.message
        view = {"overrides": row["overrides"], "effective": defaults, "version": row["version"]}
    mode = compartment["mode"]
    return render(
        request,
        "settings_compartment.html",
        user,
        compartment=compartment,
        equipment=equipment,
        mode_name=MODE_NAMES.get(mode, mode),
        writer=may_write(user.actor) and compartment["status"] == "active",
        read_only_role=not may_write(user.actor),
        params=param_rows(mode, view["overrides"], view["effective"], defaults),
        params_version=view["version"],
        problem=problem,
        default_limits=(DEFAULTS[f"{mode}.t_min"].text, DEFAULTS[f"{mode}.t_max"].text),
    )
