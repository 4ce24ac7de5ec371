"""The live temperature board (CM2, RS1): one tile per monitored compartment in a jurisdiction.

Site staff open it twice a day from WeChat's browser, county staff leave it open on a wall; both
need the same answer to "is any fridge in trouble right now?". One query reads the small "latest"
tables (``probe_latest``, ``gateway_latest``), the current bindings and the open alarms — never the
readings hypertable — so the whole province is one cheap query, however long the history.

The state of a tile is decided by :func:`tile_state`, a pure function, so the precedence between
"alarm", "offline" and the rest is written once and tested without a database. A tile with open
alarms names the one someone should open (:func:`primary_alarm`), since when and for how long its
condition has lasted and the worst value announced, so the wall display answers "how bad, how long"
without a click; the texts are written here, once, for the page and for any other screen.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

import psycopg

from alarms.messages import format_duration
from alarms.rules import KIND_NAMES, GatewayParams, params_for
from coldchain.core.db import fetch_all
from coldchain.core.terms import BEIJING, out_of_range

State = Literal["unbound", "alarm", "offline", "acknowledged", "normal"]
Reading = Literal["high", "low", "ok"]

STATE_NAMES: Mapping[State, str] = {
    "alarm": "报警",
    "offline": "离线",
    "acknowledged": "已确认",
    "unbound": "未绑定探头",
    "normal": "正常",
}
# Tiles needing someone first: what the eye should meet at the top of the board.
STATE_ORDER: Mapping[State, int] = {"alarm": 0, "offline": 1, "acknowledged": 2, "normal": 3, "unbound": 4}


@dataclass(frozen=True)
class TileFacts:
    bound: bool
    last_reading_at: datetime | None
    open_alarms: Sequence[tuple[str, str]]
    """(kind, state) of the compartment's open alarms and of its gateway's."""
    no_data_after: timedelta
    gateway_online: bool | None


def tile_state(f: TileFacts, now: datetime) -> State:
    """Unbound first (nothing to show); then an alarm nobody has acknowledged (someone must act);
    then offline — a stale temperature cannot be trusted, so "acknowledged" or "normal" would
    mislead; then acknowledged alarms still open; otherwise normal."""
    if not f.bound:
        return "unbound"
    if any(state == "active" for _, state in f.open_alarms):
        return "alarm"
    stale = f.last_reading_at is None or now - f.last_reading_at >= f.no_data_after
    if stale or f.gateway_online is False:
        return "offline"
    if f.open_alarms:
        return "acknowledged"
    return "normal"


@dataclass(frozen=True)
class OpenAlarm:
    id: int
    kind: str
    state: str
    severity: str
    since: datetime
    value: float | None


_SEVERITY_RANK = {"critical": 0, "major": 1, "minor": 2}


def primary_alarm(open_alarms: Sequence[OpenAlarm]) -> OpenAlarm | None:
    """The alarm a tile links to and describes: one nobody acknowledged before an acknowledged one
    (the tile is red because of it), then the most severe, then the one that began first (the
    longest-lasting condition is the one the vaccines have suffered most)."""
    return min(
        open_alarms,
        key=lambda a: (a.state != "active", _SEVERITY_RANK.get(a.severity, 9), a.since, a.id),
        default=None,
    )


def reading_age(seconds: float | None) -> str:
    """How old the last reading is, as a person says it: "刚刚" under a minute — "0 分钟前" read as
    a fault — then minutes, hours, days."""
    if seconds is None:
        return "无读数"
    minutes = max(0, int(seconds // 60))
    if minutes < 1:
        return "刚刚"
    if minutes < 60:
        return f"{minutes} 分钟前"
    if minutes < 1440:
        return f"{minutes // 60} 小时前"
    return f"{minutes // 1440} 天前"


def reading_flag(t: float | None, t_min: float | None, t_max: float) -> Reading | None:
    """Which side of its limits a temperature is on, for its colour: the same in-range test as the
    alarm rules (a reading on a limit is in range)."""
    if t is None:
        return None
    if not out_of_range(t, t_min, t_max):
        return "ok"
    return "high" if t > t_max else "low"


_TILES = """
WITH scope AS (
    SELECT descendant_id AS unit_id FROM unit_tree WHERE ancestor_id = %(scope)s
), comps AS (
    SELECT c.id, c.name, c.mode, c.t_min::float8 AS t_min, c.t_max::float8 AS t_max,
           e.id AS equipment_id, e.name AS equipment_name, e.kind AS equipment_kind, e.unit_id
    FROM scope s
    JOIN equipment e ON e.unit_id = s.unit_id AND e.status = 'active'
    JOIN compartments c ON c.equipment_id = e.id AND c.status = 'active'
), latest AS (
    -- A compartment may carry several probes; the tile shows the freshest reading among them.
    SELECT DISTINCT ON (b.compartment_id) b.compartment_id, b.probe_id, b.gateway_id, l.ts, l.t
    FROM probe_bindings b
    JOIN comps c ON c.id = b.compartment_id
    LEFT JOIN probe_latest l ON l.probe_id = b.probe_id
    WHERE upper_inf(b.valid)
    ORDER BY b.compartment_id, l.ts DESC NULLS LAST
), open_alarms AS MATERIALIZED (
    SELECT id, compartment_id, gateway_id, kind, state, severity, condition_since, value
    FROM alarms WHERE state IN ('active', 'acknowledged')
), areas AS (
    SELECT t.descendant_id AS unit_id,
           max(a.id) FILTER (WHERE a.level = 'city') AS city_id,
           max(a.name) FILTER (WHERE a.level = 'city') AS city_name,
           max(a.id) FILTER (WHERE a.level = 'county') AS county_id,
           max(a.name) FILTER (WHERE a.level = 'county') AS county_name
    FROM unit_tree t JOIN units a ON a.id = t.ancestor_id
    WHERE t.descendant_id IN (SELECT DISTINCT unit_id FROM comps)
    GROUP BY t.descendant_id
)
SELECT c.id AS compartment_id, c.name AS compartment_name, c.mode, c.t_min, c.t_max,
       c.equipment_id, c.equipment_name, c.equipment_kind,
       u.id AS unit_id, u.name AS unit_name, ar.city_id, ar.city_name, ar.county_id, ar.county_name,
       l.probe_id IS NOT NULL AS bound, l.ts, l.t,
       g.power, g.battery, g.online AS gateway_online, g.last_seen_at AS gateway_seen_at,
       (SELECT jsonb_agg(jsonb_build_object(
                            'id', o.id, 'kind', o.kind, 'state', o.state, 'severity', o.severity,
                            'since_us', (extract(epoch FROM o.condition_since) * 1000000)::bigint,
                            'value', o.value) ORDER BY o.kind, o.id)
                 FROM open_alarms o
                 WHERE o.compartment_id = c.id
                    OR (o.compartment_id IS NULL AND o.gateway_id = l.gateway_id)) AS open_alarms,
       p.params
FROM comps c
JOIN units u ON u.id = c.unit_id
JOIN areas ar ON ar.unit_id = c.unit_id
LEFT JOIN latest l ON l.compartment_id = c.id
LEFT JOIN gateway_latest g ON g.gateway_id = l.gateway_id
LEFT JOIN alarm_rule_params p ON p.compartment_id = c.id
"""


def _no_data_after(row: Mapping[str, Any], known: dict[tuple[Any, ...], timedelta]) -> timedelta:
    """The compartment's own no-data threshold (an override in ``alarm_rule_params``), so the board
    calls a compartment offline exactly when the alarm rules would; a broken override falls back to
    the default rather than hiding the tile. ``known``: thresholds already worked out for the same
    mode, limits and overrides — most compartments share them, and building and validating the
    parameters once per tile was a third of a province board's time."""
    key = (row["mode"], row["t_min"], row["t_max"], json.dumps(row["params"], sort_keys=True))
    if key not in known:
        try:
            known[key] = params_for(row["mode"], row["t_min"], row["t_max"], row["params"] or {}).no_data_after
        except ValueError:
            known[key] = params_for(row["mode"], row["t_min"], row["t_max"]).no_data_after
    return known[key]


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def _open_alarms(raw: Sequence[Mapping[str, Any]] | None) -> list[OpenAlarm]:
    """The open alarms the tile query gathers as JSON (times as whole microseconds since the epoch,
    so nothing is lost to a float or to the session's time zone); NULL, not '[]', for none — most
    tiles have none, and decoding thousands of empty lists cost more than the query."""
    return [
        OpenAlarm(
            a["id"], a["kind"], a["state"], a["severity"], _EPOCH + timedelta(microseconds=a["since_us"]), a["value"]
        )
        for a in raw or ()
    ]


def alarm_facts(alarm: OpenAlarm | None, now: datetime) -> dict[str, Any]:
    """What a tile says about its primary alarm: which one (the link), since when in Beijing time,
    how long so far, and the worst value announced (``alarms.value``), all empty without one."""
    if alarm is None:
        return dict.fromkeys(_ALARM_FIELDS)
    return {
        "alarm_id": alarm.id,
        "alarm_state": alarm.state,
        "alarm_name": KIND_NAMES.get(alarm.kind, alarm.kind),
        "alarm_since": alarm.since,
        "alarm_since_text": alarm.since.astimezone(BEIJING).strftime("%m-%d %H:%M"),
        "alarm_lasted": format_duration(now - alarm.since),
        "alarm_peak": alarm.value,
    }


_ALARM_FIELDS = (
    "alarm_id",
    "alarm_state",
    "alarm_name",
    "alarm_since",
    "alarm_since_text",
    "alarm_lasted",
    "alarm_peak",
)


def tiles(conn: psycopg.Connection, scope_unit: int, now: datetime) -> list[dict[str, Any]]:
    """Every active compartment under ``scope_unit``, most urgent first."""
    battery_low = GatewayParams().battery_low
    out: list[dict[str, Any]] = []
    known: dict[tuple[Any, ...], timedelta] = {}
    for r in fetch_all(conn, _TILES, {"scope": scope_unit}):
        alarms = _open_alarms(r["open_alarms"])
        open_alarms = [(a.kind, a.state) for a in alarms]
        facts = TileFacts(r["bound"], r["ts"], open_alarms, _no_data_after(r, known), r["gateway_online"])
        state = tile_state(facts, now)
        age = None if r["ts"] is None else (now - r["ts"]).total_seconds()
        out.append(
            {
                "compartment_id": r["compartment_id"],
                "compartment_name": r["compartment_name"],
                "mode": r["mode"],
                "t_min": r["t_min"],
                "t_max": r["t_max"],
                "equipment_id": r["equipment_id"],
                "equipment_name": r["equipment_name"],
                "unit_id": r["unit_id"],
                "unit_name": r["unit_name"],
                "city_id": r["city_id"],
                "city_name": r["city_name"],
                "county_id": r["county_id"],
                "county_name": r["county_name"],
                "t": r["t"],
                "ts": r["ts"],
                "minutes_since": None if age is None else int(age // 60),
                "reading_age": reading_age(age),
                "t_flag": reading_flag(r["t"], r["t_min"], r["t_max"]),
                "state": state,
                "state_name": STATE_NAMES[state],
                "alarms": [KIND_NAMES.get(kind, kind) for kind, _ in open_alarms],
                "power": r["power"],
                "battery": r["battery"],
                "battery_low": r["battery"] is not None and r["battery"] < battery_low,
                "gateway_online": r["gateway_online"],
                **alarm_facts(primary_alarm(alarms), now),
            }
        )
    out.sort(key=lambda t: (STATE_ORDER[t["state"]], t["unit_name"], t["equipment_name"], t["compartment_name"]))
    return out


def summary(board: Sequence[Mapping[str, Any]]) -> dict[str, int]:
    counts: dict[str, int] = dict.fromkeys(STATE_NAMES, 0)
    for t in board:
        counts[t["state"]] += 1
    return counts


_FILTER_UNITS = """
SELECT u.id, u.name, u.level, u.parent_id
FROM unit_tree t JOIN units u ON u.id = t.descendant_id
WHERE t.ancestor_id = %(scope)s AND u.active
ORDER BY cc_unit_level_rank(u.level), u.code
"""


def filter_units(conn: psycopg.Connection, scope_unit: int) -> list[dict[str, Any]]:
    """The units the filters offer: the user's own and every unit below it."""
    return fetch_all(conn, _FILTER_UNITS, {"scope": scope_unit})
