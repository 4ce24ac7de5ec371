"""Alarms in the user's jurisdiction: list and history, acknowledge ("on site"), close with the
closure form; manual thermometer readings with the drift check (CM10, CM13); rule parameters per
compartment; the single-use confirmation link that WeChat messages carry (CM16).

Alarms are raised and resolved by the scheduler (:mod:`alarms.engine`); people only acknowledge
and close them. Every change is an ``alarm_events`` row, in the same transaction.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from decimal import Decimal
from typing import Annotated, Any, Literal

import psycopg
from fastapi import APIRouter, Query, Request
from psycopg.types.json import Jsonb
from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, StringConstraints

from alarms.escalation import policy_from
from alarms.rules import drift_check, needs_vendor, params_for
from api.deps import Conn, CurrentUser, Principal, require_unit_in_scope, require_writer, set_action
from api.readonly import open_to_read_only
from coldchain.core.db import fetch_all, fetch_one
from coldchain.core.errors import Refused, conflict, invalid, not_found
from coldchain.core.outbound import OutboundRefused, check_url, mask_url, policy_of
from coldchain.core.tokens import token_hash
from registry.auth import record_login

router = APIRouter(tags=["报警"])

Id = Annotated[int, Field(ge=1, le=2**62)]
QId = Annotated[int | None, Query(ge=1, le=2**62)]
Version = Annotated[int, Field(ge=1, le=2**31 - 1)]
Text = Annotated[str, StringConstraints(strip_whitespace=True, min_length=2, max_length=500)]
AlarmState = Literal["active", "acknowledged", "resolved", "closed"]

_SCOPE = "SELECT descendant_id FROM unit_tree WHERE ancestor_id = %(scope)s"


class AlarmOut(BaseModel):
    id: int
    kind: str
    severity: str
    state: str
    unit_id: int
    unit_name: str
    equipment_id: int | None
    equipment_name: str | None
    compartment_id: int | None
    compartment_name: str | None
    gateway_id: int | None
    gateway_serial: str | None
    probe_id: int | None
    condition_since: datetime
    raised_at: datetime
    found_late: bool
    suppressed: bool
    cause: str | None
    value: float | None
    t_min: float | None
    t_max: float | None
    acknowledged_at: datetime | None
    acknowledged_by: int | None
    ack_channel: str | None
    ack_comment: str | None
    on_site: bool | None
    resolved_at: datetime | None
    closed_at: datetime | None
    closure: dict[str, Any] | None
    version: int


class AlarmEventOut(BaseModel):
    ts: datetime
    action: str
    username: str | None
    channel: str | None
    details: dict[str, Any] | None


class NotificationOut(BaseModel):
    step: str
    channel: str
    levels: list[int]
    due_at: datetime
    sent_at: datetime | None
    attempts: int
    last_error: str | None


class AlarmDetail(AlarmOut):
    events: list[AlarmEventOut]
    notifications: list[NotificationOut]


_COLUMNS = """
a.id, a.kind, a.severity, a.state, a.unit_id, n.name AS unit_name, a.equipment_id, e.name AS equipment_name,
a.compartment_id, c.name AS compartment_name, a.gateway_id, g.serial AS gateway_serial, a.probe_id,
a.condition_since, a.raised_at, a.found_late, a.suppressed, a.cause, a.value, a.t_min::float8 AS t_min,
a.t_max::float8 AS t_max, a.acknowledged_at, a.acknowledged_by, a.ack_channel, a.ack_comment, a.on_site,
a.resolved_at, a.closed_at, a.closure, a.version
"""
_FROM = """
FROM alarms a
JOIN units n ON n.id = a.unit_id
LEFT JOIN equipment e ON e.id = a.equipment_id
LEFT JOIN compartments c ON c.id = a.compartment_id
LEFT JOIN gateways g ON g.id = a.gateway_id
"""
_LIST = f"""
SELECT {_COLUMNS} {_FROM}
WHERE a.unit_id IN ({_SCOPE})
  AND (%(unit)s::bigint IS NULL OR a.unit_id IN (SELECT descendant_id FROM unit_tree WHERE ancestor_id = %(unit)s))
  AND (%(state)s::text IS NULL OR a.state = %(state)s)
  AND (%(open_only)s IS FALSE OR a.state IN ('active', 'acknowledged'))
  AND (%(kind)s::text IS NULL OR a.kind = %(kind)s)
  AND (%(compartment)s::bigint IS NULL OR a.compartment_id = %(compartment)s)
  AND (%(since)s::timestamptz IS NULL OR a.raised_at >= %(since)s)
  AND (%(until)s::timestamptz IS NULL OR a.raised_at < %(until)s)
ORDER BY a.raised_at DESC, a.id DESC
LIMIT %(limit)s OFFSET %(offset)s
"""  # noqa: S608 — constant SQL fragments, parameters bound
_ONE = f"SELECT {_COLUMNS} {_FROM} WHERE a.id = %(id)s AND a.unit_id IN ({_SCOPE})"
_EVENTS = """
SELECT v.ts, v.action, u.username, v.channel, v.details
FROM alarm_events v LEFT JOIN users u ON u.id = v.user_id WHERE v.alarm_id = %(id)s ORDER BY v.id
"""
_NOTIFICATIONS = """
SELECT step, channel, levels::int[] AS levels, due_at, sent_at, attempts, last_error
FROM notification_outbox WHERE alarm_id = %(id)s ORDER BY due_at, id
"""


@router.get("/alarms", response_model=list[AlarmOut], summary="辖区内的报警（可按状态、类型、单位、时间筛选）")
def list_alarms(
    principal: CurrentUser,
    conn: Conn,
    unit_id: QId = None,
    state: AlarmState | None = None,
    open_only: bool = False,
    kind: Annotated[str | None, Query(pattern=r"^[a-z_]{2,40}$")] = None,
    compartment_id: QId = None,
    since: datetime | None = None,
    until: datetime | None = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 200,
    offset: Annotated[int, Query(ge=0, le=10**6)] = 0,
) -> list[dict[str, Any]]:
    if unit_id is not None:
        require_unit_in_scope(conn, principal, unit_id)
    return fetch_all(
        conn,
        _LIST,
        {
            "scope": principal.unit_id,
            "unit": unit_id,
            "state": state,
            "open_only": open_only,
            "kind": kind,
            "compartment": compartment_id,
            "since": since,
            "until": until,
            "limit": limit,
            "offset": offset,
        },
    )


def _alarm(conn: psycopg.Connection, principal: Principal, alarm_id: int, *, lock: bool = False) -> dict[str, Any]:
    row = fetch_one(conn, _ONE, {"id": alarm_id, "scope": principal.unit_id})
    if row is None:
        raise not_found("报警")
    if lock:
        conn.execute("SELECT 1 FROM alarms WHERE id = %s FOR UPDATE", (alarm_id,))
        row = fetch_one(conn, _ONE, {"id": alarm_id, "scope": principal.unit_id})
        assert row is not None
    return row


@router.get("/alarms/{alarm_id}", response_model=AlarmDetail, summary="报警详情：每一次变化与每一条通知")
def get_alarm(alarm_id: Id, principal: CurrentUser, conn: Conn) -> dict[str, Any]:
    row = _alarm(conn, principal, alarm_id)
    return {
        **row,
        "events": fetch_all(conn, _EVENTS, {"id": alarm_id}),
        "notifications": fetch_all(conn, _NOTIFICATIONS, {"id": alarm_id}),
    }


class Acknowledge(BaseModel):
    model_config = ConfigDict(extra="forbid")
    on_site: bool = Field(True, description="已到现场处理")
    comment: Annotated[str, StringConstraints(strip_whitespace=True, max_length=500)] | None = None


def acknowledge(
    conn: psycopg.Connection, alarm: dict[str, Any], user_id: int, channel: str, on_site: bool, comment: str | None
) -> None:
    """Acknowledging records who is on it; it does not stop escalation (CM16: "still abnormal"
    is the rule) — resolution does. An alarm already resolved can still be acknowledged."""
    if alarm["state"] == "closed":
        raise Refused(409, "alarm_state", "报警已关闭，不能再确认")
    if alarm["acknowledged_at"] is not None:
        raise Refused(409, "alarm_state", "报警已被确认")
    set_action(conn, "alarm.acknowledge")
    conn.execute(
        """UPDATE alarms SET state = CASE WHEN state = 'active' THEN 'acknowledged' ELSE state END,
                  acknowledged_at = now(), acknowledged_by = %s, ack_channel = %s, ack_comment = %s, on_site = %s,
                  version = version + 1
           WHERE id = %s""",
        (user_id, channel, comment, on_site, alarm["id"]),
    )
    conn.execute(
        """INSERT INTO alarm_events (alarm_id, action, user_id, channel, details)
           VALUES (%s, 'acknowledged', %s, %s, %s)""",
        (alarm["id"], user_id, channel, Jsonb({"on_site": on_site, "comment": comment})),
    )


@router.post("/alarms/{alarm_id}/acknowledge", response_model=AlarmOut, summary="确认报警（已到现场）")
def acknowledge_alarm(alarm_id: Id, body: Acknowledge, principal: CurrentUser, conn: Conn) -> dict[str, Any]:
    alarm = _alarm(conn, principal, alarm_id, lock=True)
    require_writer(principal)
    acknowledge(
        conn, alarm, principal.user_id, "web" if principal.via == "cookie" else "api", body.on_site, body.comment
    )
    return _alarm(conn, principal, alarm_id)


class Closure(BaseModel):
    model_config = ConfigDict(extra="forbid")
    version: Version
    cause: Text = Field(description="原因，如 停电、冰箱故障、门未关好、探头故障")
    action: Text = Field(description="采取的措施")
    vaccine_disposition: Text = Field(description="疫苗处置：如 未受影响继续使用、转移至其他冰箱、暂停使用待评估、报废")


@router.post("/alarms/{alarm_id}/close", response_model=AlarmOut, summary="关闭报警（填写原因、措施与疫苗处置）")
def close_alarm(alarm_id: Id, body: Closure, principal: CurrentUser, conn: Conn) -> dict[str, Any]:
    alarm = _alarm(conn, principal, alarm_id, lock=True)
    require_writer(principal)
    if alarm["version"] != body.version:
        raise conflict(
            "version_conflict",
            f"报警已被他人处理（当前版本 {alarm['version']}），请刷新后重试",
            {"current_version": alarm["version"], "your_version": body.version},
        )
    if alarm["state"] != "resolved":
        reason = "已关闭" if alarm["state"] == "closed" else "仍在异常中，须恢复正常后才能关闭"
        raise Refused(409, "alarm_state", f"报警{reason}")
    closure = {"cause": body.cause, "action": body.action, "vaccine_disposition": body.vaccine_disposition}
    set_action(conn, "alarm.close")
    conn.execute(
        """UPDATE alarms SET state = 'closed', closed_at = now(), closed_by = %s, closure = %s, version = version + 1
           WHERE id = %s""",
        (principal.user_id, Jsonb(closure), alarm_id),
    )
    conn.execute(
        "INSERT INTO alarm_events (alarm_id, action, user_id, channel, details) VALUES (%s, 'closed', %s, %s, %s)",
        (alarm_id, principal.user_id, "web" if principal.via == "cookie" else "api", Jsonb(closure)),
    )
    return _alarm(conn, principal, alarm_id)


# ---------------------------------------------------------------------------------------------
# The link in a WeChat message: confirm without a password (signed by being a 256-bit random
# secret whose digest only the database holds; short-lived; single use).


class LinkConfirm(BaseModel):
    model_config = ConfigDict(extra="forbid")
    token: Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_-]{20,100}$")]
    comment: Annotated[str, StringConstraints(strip_whitespace=True, max_length=500)] | None = None


class LinkResult(BaseModel):
    alarm_id: int
    state: str
    acknowledged_by: str | None = Field(description="实际确认人（可能早已由他人确认）；关闭前无人确认时为空")


@router.post(
    "/alarm-links/confirm",
    response_model=LinkResult,
    summary="微信消息中的链接：免密确认报警（一次性）",
    openapi_extra=open_to_read_only("免登录：链接中的一次性令牌即授权，只发给负责人本人"),
)
def confirm_by_link(body: LinkConfirm, request: Request, conn: Conn) -> dict[str, Any]:
    link = fetch_one(
        conn,
        """SELECT l.alarm_id, l.user_id, l.used_at, l.expires_at > now() AS fresh, u.username, u.unit_id, u.status
           FROM alarm_links l LEFT JOIN users u ON u.id = l.user_id
           WHERE l.token_hash = %(h)s FOR UPDATE OF l""",
        {"h": token_hash(body.token)},
    )
    if link is None or link["used_at"] is not None or not link["fresh"] or link["user_id"] is None:
        raise Refused(401, "link_invalid", "确认链接无效、已使用或已过期，请登录平台处理")
    if link["status"] != "active":
        raise Refused(403, "account_closed", "该账号已关闭或注销，请联系管理单位")
    conn.execute("SELECT set_config('coldchain.actor_id', %s, true)", (str(link["user_id"]),))
    conn.execute("UPDATE alarm_links SET used_at = now() WHERE token_hash = %s", (token_hash(body.token),))
    alarm = fetch_one(conn, "SELECT * FROM alarms WHERE id = %(id)s FOR UPDATE", {"id": link["alarm_id"]})
    assert alarm is not None
    if alarm["acknowledged_at"] is None and alarm["state"] != "closed":
        acknowledge(conn, alarm, link["user_id"], "wechat", True, body.comment)
    # Opening the alarm from WeChat is a sign-in on the WeChat channel (CM14).
    ip = request.client.host if request.client else None
    record_login(
        conn,
        username=link["username"],
        user_id=link["user_id"],
        unit_id=link["unit_id"],
        channel="wechat",
        success=True,
        reason="alarm_link",
        ip=_ip(ip),
        user_agent=request.headers.get("user-agent"),
    )
    row = fetch_one(
        conn,
        "SELECT a.state, u.username FROM alarms a LEFT JOIN users u ON u.id = a.acknowledged_by WHERE a.id = %(id)s",
        {"id": link["alarm_id"]},
    )
    assert row is not None
    return {"alarm_id": link["alarm_id"], "state": row["state"], "acknowledged_by": row["username"]}


def _ip(host: str | None) -> str | None:
    import ipaddress

    try:
        return str(ipaddress.ip_address(host)) if host else None
    except ValueError:
        return None


# ---------------------------------------------------------------------------------------------
# Manual thermometer readings and the drift check (CM10, CM13)


class ThermometerIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    ts: AwareDatetime = Field(description="读温度计的时刻（带时区）")
    t: Annotated[Decimal, Field(ge=-90, le=60, max_digits=4, decimal_places=1)]
    note: Annotated[str, StringConstraints(strip_whitespace=True, max_length=200)] | None = None


class ThermometerCorrectionIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    t: Annotated[Decimal, Field(ge=-90, le=60, max_digits=4, decimal_places=1, description="正确的温度")]
    ts: AwareDatetime | None = Field(None, description="正确的读数时刻；不填则沿用原记录的时刻")
    reason: Annotated[str, StringConstraints(strip_whitespace=True, min_length=2, max_length=200)] = Field(
        description="更正原因，如 录入时看错刻度"
    )


class DriftOut(BaseModel):
    id: int
    thermometer_reading_id: int
    compartment_id: int
    ts: datetime
    thermometer_t: float
    entered_by: int
    entered_at: datetime
    note: str | None
    corrects_id: int | None = Field(description="本条是更正记录时：被更正的原读数 id")
    correction_reason: str | None
    corrected_by_reading_id: int | None = Field(description="本条已被更正时：更正记录的读数 id（本条不再计入比对）")
    probe_id: int | None
    probe_ts: datetime | None
    probe_t: float | None
    difference: float | None
    finding: bool
    reason: str | None
    cause: str | None
    probe_flagged_for_vendor: bool


_COMPARTMENT = f"""
SELECT c.id, c.mode, e.unit_id FROM compartments c JOIN equipment e ON e.id = c.equipment_id
WHERE c.id = %(id)s AND e.unit_id IN ({_SCOPE})
"""  # noqa: S608 — constant SQL fragments, parameters bound
_PROBE_NEAR = """
SELECT b.probe_id, r.ts, r.t FROM probe_bindings b
JOIN probe_readings r ON r.probe_id = b.probe_id AND b.valid @> r.ts
WHERE b.compartment_id = %(c)s AND r.ts BETWEEN %(ts)s - interval '5 minutes' AND %(ts)s + interval '5 minutes'
ORDER BY abs(extract(epoch FROM r.ts - %(ts)s)) LIMIT 20
"""
_DRIFTS = """
SELECT f.id, f.thermometer_reading_id, f.compartment_id, t.ts, f.thermometer_t::float8 AS thermometer_t,
       t.entered_by, t.entered_at, t.note, t.corrects_id, t.reason AS correction_reason,
       (SELECT c.id FROM thermometer_readings c WHERE c.corrects_id = t.id) AS corrected_by_reading_id,
       f.probe_id, f.probe_ts, f.probe_t, f.difference, f.finding, f.reason, f.cause,
       EXISTS (SELECT 1 FROM probe_vendor_flags v WHERE v.probe_id = f.probe_id AND v.cleared_at IS NULL)
           AS probe_flagged_for_vendor
FROM drift_findings f JOIN thermometer_readings t ON t.id = f.thermometer_reading_id
WHERE f.compartment_id = %(c)s AND (%(id)s::bigint IS NULL OR f.id = %(id)s)
ORDER BY t.ts DESC, t.id DESC LIMIT %(limit)s
"""


def _compartment(conn: psycopg.Connection, principal: Principal, compartment_id: int) -> dict[str, Any]:
    row = fetch_one(conn, _COMPARTMENT, {"id": compartment_id, "scope": principal.unit_id})
    if row is None:
        raise not_found("温区")
    return row


@router.post(
    "/compartments/{compartment_id}/thermometer-readings",
    response_model=DriftOut,
    status_code=201,
    summary="录入温度计读数，并与最近的探头读数比对（±0.5 ℃ 冷藏 / ±1 ℃ 冷冻）",
)
def add_thermometer_reading(
    compartment_id: Id, body: ThermometerIn, principal: CurrentUser, conn: Conn
) -> dict[str, Any]:
    comp = _compartment(conn, principal, compartment_id)
    require_writer(principal)
    now_row = conn.execute("SELECT now()").fetchone()
    assert now_row is not None
    if body.ts > now_row[0] + timedelta(minutes=5):
        raise invalid("读数时间不能晚于现在")
    set_action(conn, "thermometer.add")
    return _record_thermometer(conn, comp, principal, body.ts, body.t, body.note, now_row[0])


def _record_thermometer(
    conn: psycopg.Connection,
    comp: dict[str, Any],
    principal: Principal,
    ts: datetime,
    t: Decimal,
    note: str | None,
    now: datetime,
    corrects: tuple[int, str] | None = None,
) -> dict[str, Any]:
    """Store a thermometer reading (or the correction of one) and compare it with the probe."""
    compartment_id = comp["id"]
    reading = fetch_one(
        conn,
        """INSERT INTO thermometer_readings (compartment_id, ts, t, entered_by, note, corrects_id, reason)
           VALUES (%(c)s, %(ts)s, %(t)s, %(u)s, %(note)s, %(corrects)s, %(why)s) RETURNING id""",
        {
            "c": compartment_id,
            "ts": ts,
            "t": t,
            "u": principal.user_id,
            "note": note,
            "corrects": corrects[0] if corrects else None,
            "why": corrects[1] if corrects else None,
        },
    )
    assert reading is not None
    near = fetch_all(conn, _PROBE_NEAR, {"c": compartment_id, "ts": ts})
    result = drift_check(comp["mode"], ts, float(t), [(r["ts"], r["t"]) for r in near])
    probe_id = next((r["probe_id"] for r in near if r["ts"] == result.nearest_ts), None)
    finding = fetch_one(
        conn,
        """INSERT INTO drift_findings (thermometer_reading_id, compartment_id, probe_id, probe_ts, probe_t,
                                       thermometer_t, difference, finding, reason)
           VALUES (%(r)s, %(c)s, %(p)s, %(pts)s, %(pt)s, %(t)s, %(d)s, %(f)s, %(why)s) RETURNING id""",
        {
            "r": reading["id"],
            "c": compartment_id,
            "p": probe_id,
            "pts": result.nearest_ts,
            "pt": result.probe_t,
            "t": t,
            "d": result.difference,
            "f": result.finding,
            "why": result.reason,
        },
    )
    assert finding is not None
    if result.finding and probe_id is not None:
        # Findings of readings since corrected no longer count towards the vendor flag.
        times = [
            r["created_at"]
            for r in fetch_all(
                conn,
                """SELECT f.created_at FROM drift_findings f
                   JOIN thermometer_readings_current r ON r.id = f.thermometer_reading_id
                   WHERE f.probe_id = %(p)s AND f.finding""",
                {"p": probe_id},
            )
        ]
        if needs_vendor(times, now):
            conn.execute(
                """INSERT INTO probe_vendor_flags (probe_id, reason) VALUES (%s, '反复漂移，待厂家调试或更换')
                   ON CONFLICT (probe_id) WHERE cleared_at IS NULL DO NOTHING""",
                (probe_id,),
            )
    rows = fetch_all(conn, _DRIFTS, {"c": compartment_id, "id": finding["id"], "limit": 1})
    return rows[0]


@router.post(
    "/compartments/{compartment_id}/thermometer-readings/{reading_id}/corrections",
    response_model=DriftOut,
    status_code=201,
    summary="更正录错的温度计读数：新增一条引用原读数的更正记录（原读数保留，不可修改）",
)
def correct_thermometer_reading(
    compartment_id: Id, reading_id: Id, body: ThermometerCorrectionIn, principal: CurrentUser, conn: Conn
) -> dict[str, Any]:
    comp = _compartment(conn, principal, compartment_id)
    require_writer(principal)
    # Two corrections of one reading at once: the second waits here, then finds it corrected.
    conn.execute("SELECT pg_advisory_xact_lock(hashtextextended('thermometer:' || %s, 0))", (str(reading_id),))
    original = fetch_one(
        conn,
        """SELECT r.id, r.ts, r.note,
                  (SELECT c.id FROM thermometer_readings c WHERE c.corrects_id = r.id) AS corrected_by
           FROM thermometer_readings r WHERE r.id = %(id)s AND r.compartment_id = %(c)s""",
        {"id": reading_id, "c": compartment_id},
    )
    if original is None:
        raise not_found("温度计读数")
    if original["corrected_by"] is not None:
        raise conflict(
            "already_corrected",
            f"该读数已被更正（更正记录 {original['corrected_by']}），请更正最新的一条",
            details={"corrected_by_reading_id": original["corrected_by"]},
        )
    now_row = conn.execute("SELECT now()").fetchone()
    assert now_row is not None
    ts = body.ts or original["ts"]
    if ts > now_row[0] + timedelta(minutes=5):
        raise invalid("读数时间不能晚于现在")
    set_action(conn, "thermometer.correct")
    return _record_thermometer(
        conn, comp, principal, ts, body.t, original["note"], now_row[0], corrects=(reading_id, body.reason)
    )


@router.get(
    "/compartments/{compartment_id}/thermometer-readings",
    response_model=list[DriftOut],
    summary="温度计读数及比对结果（新在前）",
)
def thermometer_readings(
    compartment_id: Id, principal: CurrentUser, conn: Conn, limit: Annotated[int, Query(ge=1, le=1000)] = 100
) -> list[dict[str, Any]]:
    _compartment(conn, principal, compartment_id)
    return fetch_all(conn, _DRIFTS, {"c": compartment_id, "id": None, "limit": limit})


class DriftCause(BaseModel):
    model_config = ConfigDict(extra="forbid")
    cause: Text = Field(description="漂移原因，如 探头位置不当、探头故障、温度计误差")


@router.post(
    "/compartments/{compartment_id}/drift-findings/{finding_id}/cause", response_model=DriftOut, summary="填写漂移原因"
)
def drift_cause(
    compartment_id: Id, finding_id: Id, body: DriftCause, principal: CurrentUser, conn: Conn
) -> dict[str, Any]:
    _compartment(conn, principal, compartment_id)
    require_writer(principal)
    set_action(conn, "drift.cause")
    updated = conn.execute(
        """UPDATE drift_findings SET cause = %s, cause_by = %s, cause_at = now()
           WHERE id = %s AND compartment_id = %s AND finding""",
        (body.cause, principal.user_id, finding_id, compartment_id),
    )
    if updated.rowcount == 0:
        raise not_found("漂移发现")
    return fetch_all(conn, _DRIFTS, {"c": compartment_id, "id": finding_id, "limit": 1})[0]


# ---------------------------------------------------------------------------------------------
# Rule parameters per compartment


class ParamsOut(BaseModel):
    compartment_id: int
    overrides: dict[str, Any]
    effective: dict[str, Any]
    version: int


class ParamsIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    version: Annotated[int, Field(ge=0, le=2**31 - 1, description="读到的版本；尚未设置过时为 0")]
    overrides: dict[str, Annotated[str | float | int, Field()]] = Field(
        description='覆盖默认值的参数，如 {"delay": "15m", "hysteresis": 0.3}', max_length=20
    )


def _effective(mode: str, t_min: Any, t_max: Any, overrides: dict[str, Any]) -> dict[str, Any]:
    try:
        params = params_for(mode, None if t_min is None else float(t_min), float(t_max), overrides)
    except (ValueError, TypeError) as exc:
        raise invalid(f"报警参数无效：{exc}") from None
    return {k: (str(v) if isinstance(v, timedelta) else v) for k, v in vars(params).items()}


_PARAMS = f"""
SELECT c.id, c.mode, c.t_min, c.t_max, coalesce(p.params, '{{}}'::jsonb) AS overrides, coalesce(p.version, 0) AS version
FROM compartments c JOIN equipment e ON e.id = c.equipment_id
LEFT JOIN alarm_rule_params p ON p.compartment_id = c.id
WHERE c.id = %(id)s AND e.unit_id IN ({_SCOPE})
"""  # noqa: S608 — constant SQL fragments, parameters bound


@router.get(
    "/compartments/{compartment_id}/alarm-params", response_model=ParamsOut, summary="温区报警参数（默认值与覆盖）"
)
def get_params(compartment_id: Id, principal: CurrentUser, conn: Conn) -> dict[str, Any]:
    row = fetch_one(conn, _PARAMS, {"id": compartment_id, "scope": principal.unit_id})
    if row is None:
        raise not_found("温区")
    return {
        "compartment_id": compartment_id,
        "overrides": row["overrides"],
        "version": row["version"],
        "effective": _effective(row["mode"], row["t_min"], row["t_max"], row["overrides"]),
    }


@router.put(
    "/compartments/{compartment_id}/alarm-params", response_model=ParamsOut, summary="设置温区报警参数（带版本号）"
)
def put_params(compartment_id: Id, body: ParamsIn, principal: CurrentUser, conn: Conn) -> dict[str, Any]:
    row = fetch_one(conn, _PARAMS + " FOR UPDATE OF c", {"id": compartment_id, "scope": principal.unit_id})
    if row is None:
        raise not_found("温区")
    require_writer(principal)
    if row["version"] != body.version:
        raise _params_conflict(row["version"], body.version)
    _effective(row["mode"], row["t_min"], row["t_max"], body.overrides)
    set_action(conn, "alarm_params.update")
    # The version is checked again in the write: after waiting for the compartment's lock, the row
    # read above is as of this statement's start, so a save committed meanwhile was not seen there.
    written = conn.execute(
        """INSERT INTO alarm_rule_params (compartment_id, params, updated_by) VALUES (%(c)s, %(p)s, %(u)s)
           ON CONFLICT (compartment_id) DO UPDATE
           SET params = EXCLUDED.params, version = alarm_rule_params.version + 1, updated_at = now(),
               updated_by = EXCLUDED.updated_by
           WHERE alarm_rule_params.version = %(v)s""",
        {"c": compartment_id, "p": Jsonb(body.overrides), "u": principal.user_id, "v": body.version},
    )
    if written.rowcount == 0:
        current = fetch_one(
            conn, "SELECT version FROM alarm_rule_params WHERE compartment_id = %(c)s", {"c": compartment_id}
        )
        raise _params_conflict(current["version"] if current else 0, body.version)
    return get_params(compartment_id, principal, conn)


def _params_conflict(current: int, yours: int) -> Refused:
    return conflict(
        "version_conflict",
        f"报警参数已被他人修改（当前版本 {current}），请刷新后重试",
        {"current_version": current, "your_version": yours},
    )


# ---------------------------------------------------------------------------------------------
# Per unit: escalation timing and where notifications go (CM15, DC4)

Duration = Annotated[str, StringConstraints(strip_whitespace=True, pattern=r"^[1-9][0-9]*[smhd]$")]


class EscalationIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    version: Annotated[int, Field(ge=0, le=2**31 - 1, description="读到的版本；尚未设置过时为 0")]
    steps: Annotated[str, StringConstraints(strip_whitespace=True, pattern=r"^[0-9smhd,]{2,60}$")] | None = Field(
        None, description="升级时限，如 30m,60m；为空则用系统设置"
    )
    reminder: Duration | None = Field(None, description="提醒间隔，如 60m；为空则用系统设置")
    resolved_reminder: Duration | None = Field(None, description="恢复未关闭时的提醒间隔，如 24h")


class EscalationOut(BaseModel):
    unit_id: int
    steps: str | None
    reminder: str | None
    resolved_reminder: str | None
    effective_steps: list[str]
    effective_reminder: str
    effective_resolved_reminder: str
    version: int


_ESCALATION = "SELECT steps, reminder, resolved_reminder, version FROM unit_escalation WHERE unit_id = %(u)s"


def _escalation_out(request: Request, unit_id: int, row: dict[str, Any] | None) -> dict[str, Any]:
    settings = request.app.state.settings
    overrides = row or {}
    try:
        policy = policy_from(
            settings.escalation_steps,
            settings.reminder_interval,
            overrides,
            settings_resolved_reminder=settings.resolved_reminder_interval,
        )
    except ValueError as exc:
        raise invalid(str(exc)) from None
    return {
        "unit_id": unit_id,
        "steps": overrides.get("steps"),
        "reminder": overrides.get("reminder"),
        "resolved_reminder": overrides.get("resolved_reminder"),
        "version": overrides.get("version", 0),
        "effective_steps": [str(s) for s in policy.steps],
        "effective_reminder": str(policy.reminder),
        "effective_resolved_reminder": str(policy.resolved_reminder),
    }


@router.get("/units/{unit_id}/escalation", response_model=EscalationOut, summary="单位的报警升级时限（默认与覆盖）")
def get_escalation(unit_id: Id, request: Request, principal: CurrentUser, conn: Conn) -> dict[str, Any]:
    require_unit_in_scope(conn, principal, unit_id)
    return _escalation_out(request, unit_id, fetch_one(conn, _ESCALATION, {"u": unit_id}))


@router.put("/units/{unit_id}/escalation", response_model=EscalationOut, summary="设置单位的报警升级时限（带版本号）")
def put_escalation(
    unit_id: Id, body: EscalationIn, request: Request, principal: CurrentUser, conn: Conn
) -> dict[str, Any]:
    require_unit_in_scope(conn, principal, unit_id)
    require_writer(principal)
    conn.execute("SELECT 1 FROM units WHERE id = %s FOR UPDATE", (unit_id,))
    row = fetch_one(conn, _ESCALATION, {"u": unit_id})
    current = row["version"] if row else 0
    if current != body.version:
        raise conflict(
            "version_conflict",
            f"升级时限已被他人修改（当前版本 {current}），请刷新后重试",
            {"current_version": current, "your_version": body.version},
        )
    wanted = body.model_dump(exclude={"version"})
    _escalation_out(request, unit_id, wanted)  # refuses nonsense (e.g. steps not increasing) before writing
    set_action(conn, "unit.escalation")
    conn.execute(
        """INSERT INTO unit_escalation (unit_id, steps, reminder, resolved_reminder)
           VALUES (%(u)s, %(steps)s, %(reminder)s, %(resolved_reminder)s)
           ON CONFLICT (unit_id) DO UPDATE SET steps = EXCLUDED.steps, reminder = EXCLUDED.reminder,
               resolved_reminder = EXCLUDED.resolved_reminder, version = unit_escalation.version + 1""",
        {"u": unit_id, **wanted},
    )
    return _escalation_out(request, unit_id, fetch_one(conn, _ESCALATION, {"u": unit_id}))


class RouteIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    level: Annotated[int, Field(ge=1, le=3)]
    channel: Literal["wecom", "webhook"]
    url: Annotated[str, StringConstraints(pattern=r"^https?://[^\s]{3,500}$")] = Field(
        description="https 地址，主机须在 COLDCHAIN_OUTBOUND_HOSTS 中；读到的隐藏形式（key=***）原样提交即保留原地址"
    )
    secret: Annotated[str, StringConstraints(min_length=16, max_length=200)] | None = Field(
        None, description="webhook 的 HMAC 密钥（企业微信机器人不需要）；不填则保留同一地址原有的密钥"
    )


class RouteOut(BaseModel):
    id: int
    unit_id: int
    level: int
    channel: str
    url: str = Field(description="地址，查询参数的值（如企业微信机器人的 key）以 *** 隐藏")
    has_secret: bool


_ROUTES = """
SELECT id, unit_id, level, channel, url, secret IS NOT NULL AS has_secret FROM notification_routes
WHERE unit_id = %(u)s ORDER BY level, channel, id
"""


def _routes_out(conn: psycopg.Connection, unit_id: int) -> list[dict[str, Any]]:
    """A robot's key and a webhook's secret never leave the server: URLs masked, secrets as a flag."""
    return [{**r, "url": mask_url(r["url"])} for r in fetch_all(conn, _ROUTES, {"u": unit_id})]


@router.get(
    "/units/{unit_id}/notification-routes",
    response_model=list[RouteOut],
    summary="单位各级的通知去处（企业微信群机器人、签名 webhook）",
)
def list_routes(unit_id: Id, principal: CurrentUser, conn: Conn) -> list[dict[str, Any]]:
    require_unit_in_scope(conn, principal, unit_id)
    return _routes_out(conn, unit_id)


@router.put(
    "/units/{unit_id}/notification-routes", response_model=list[RouteOut], summary="设置单位各级的通知去处（整体替换）"
)
def put_routes(
    unit_id: Id,
    body: Annotated[list[RouteIn], Field(max_length=30)],
    request: Request,
    principal: CurrentUser,
    conn: Conn,
) -> list[dict[str, Any]]:
    require_unit_in_scope(conn, principal, unit_id)
    require_writer(principal)
    conn.execute("SELECT 1 FROM units WHERE id = %s FOR UPDATE", (unit_id,))
    # What the client read back was masked: a masked URL names the saved one, a missing secret
    # keeps the one saved for the same webhook URL.
    saved = fetch_all(
        conn, "SELECT channel, url, secret FROM notification_routes WHERE unit_id = %(u)s", {"u": unit_id}
    )
    policy = policy_of(request.app.state.settings)
    wanted: dict[tuple[int, str, str], str | None] = {}
    for n, r in enumerate(body, start=1):
        url = r.url
        if "***" in url:
            url = next((s["url"] for s in saved if s["channel"] == r.channel and mask_url(s["url"]) == url), "")
            if not url:
                raise invalid(f"第 {n} 条通知去处：地址中的 *** 是隐藏的密钥，新地址请填写完整")
        try:
            check_url(url, policy)
        except OutboundRefused as exc:
            raise invalid(f"第 {n} 条通知去处（{r.level} 级）：{exc}", details={"index": n - 1}) from None
        secret = r.secret
        if r.channel == "webhook" and not secret:
            secret = next((s["secret"] for s in saved if s["channel"] == "webhook" and s["url"] == url), None)
            if not secret:
                raise invalid("webhook 必须设置 HMAC 密钥（至少 16 个字符），接收方据此验证消息来自本系统")
        wanted[(r.level, r.channel, url)] = secret
    set_action(conn, "unit.notification_routes")
    conn.execute("DELETE FROM notification_routes WHERE unit_id = %s", (unit_id,))
    for (level, channel, url), secret in wanted.items():
        conn.execute(
            "INSERT INTO notification_routes (unit_id, level, channel, url, secret) VALUES (%s, %s, %s, %s, %s)",
            (unit_id, level, channel, url, secret),
        )
    return _routes_out(conn, unit_id)
