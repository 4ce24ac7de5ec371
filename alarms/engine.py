"""The scheduler's database side of alarms: load what the pure rules need, run them, write what
they decide — alarms and their history (each transition through :mod:`alarms.life`), and the
notifications due — each subject in its own short transaction.

Concurrency: every subject's rule state row is taken ``FOR UPDATE SKIP LOCKED``, so two scheduler
instances split the work instead of doing it twice; an alarm is opened with ``ON CONFLICT DO
NOTHING`` on the one-open-alarm-per-subject index; notifications go into the outbox keyed by
(alarm, step, channel, target). A crash between any two statements leaves either the whole
transaction or none of it, so a restart neither forgets a running delay nor raises twice.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import psycopg
from psycopg.types.json import Jsonb

from alarms import life, rules
from alarms.escalation import AlarmTimeline, notices_due, policy_for
from alarms.escalation import due_steps as escalation_due_steps
from coldchain.core.db import fetch_all, fetch_one
from coldchain.core.settings import Settings

log = logging.getLogger("coldchain.alarms")

MAX_READINGS_PER_PASS = 20_000


@dataclass
class PassStats:
    subjects: int = 0
    opened: int = 0
    resolved: int = 0
    enqueued: int = 0
    notified: list[int] = field(default_factory=list)
    """The alarms this pass queued notices for: what the caller delivers at once (``deliver(alarms=…)``)."""
    skipped_locked: int = 0
    errors: list[str] = field(default_factory=list)

    def count_notices(self, alarm_id: int, queued: int) -> None:
        self.enqueued += queued
        if queued:
            self.notified.append(alarm_id)


def _now(conn: psycopg.Connection) -> datetime:
    row = conn.execute("SELECT now()").fetchone()
    assert row is not None
    when: datetime = row[0]
    return when


# ---------------------------------------------------------------------------------------------
# Compartments: new readings, then silence

# Compartments whose probe reported something the rules have not seen (probe_latest is updated by
# every ingest batch, so this reads one row per probe, never the readings hypertable).
_FRESH = """
SELECT b.compartment_id
FROM probe_bindings_current b
JOIN probe_latest pl ON pl.probe_id = b.probe_id
JOIN compartments c ON c.id = b.compartment_id AND c.status = 'active'
LEFT JOIN alarm_rule_state s ON s.subject = 'compartment' AND s.subject_id = b.compartment_id
WHERE pl.received_at > coalesce(s.cursor, '-infinity')
ORDER BY pl.received_at
LIMIT %(limit)s
"""
# The same test for the compartments a caller names (the ingester's notification): which of them
# have readings the rules have not seen — not those another pass has just judged, nor an id that
# is no monitored compartment.
_FRESH_AMONG = """
SELECT b.compartment_id
FROM probe_bindings_current b
JOIN probe_latest pl ON pl.probe_id = b.probe_id
JOIN compartments c ON c.id = b.compartment_id AND c.status = 'active'
LEFT JOIN alarm_rule_state s ON s.subject = 'compartment' AND s.subject_id = b.compartment_id
WHERE b.compartment_id = ANY(%(ids)b::bigint[]) AND pl.received_at > coalesce(s.cursor, '-infinity')
"""
_ACTIVE_COMPARTMENTS = """
SELECT b.compartment_id FROM probe_bindings_current b
JOIN compartments c ON c.id = b.compartment_id AND c.status = 'active'
ORDER BY b.compartment_id
"""
_ENSURE_STATES = """
INSERT INTO alarm_rule_state (subject, subject_id, state)
SELECT %(subject)s, id, %(empty)s FROM unnest(%(ids)b::bigint[]) AS id
ON CONFLICT DO NOTHING
"""
# Everything one compartment's rules need, for a batch of compartments, their state rows locked
# (SKIP LOCKED: rows another scheduler holds are simply not in this batch). Driven by the ids
# (one index lookup each) rather than by a scan of every compartment filtered to them.
_SUBJECTS = """
SELECT c.id AS compartment_id, c.mode, c.t_min::float8 AS t_min, c.t_max::float8 AS t_max, c.equipment_id,
       e.unit_id, b.probe_id, b.gateway_id, b.valid_from, coalesce(p.params, '{}'::jsonb) AS overrides,
       pl.received_at AS latest_received_at, s.state, s.cursor, now() AS now,
       EXISTS (SELECT 1 FROM alarms a WHERE a.gateway_id = b.gateway_id AND a.kind = 'gateway_offline'
                                        AND a.state IN ('active', 'acknowledged')) AS gateway_offline
FROM unnest(%(ids)b::bigint[]) AS w(id)
JOIN alarm_rule_state s ON s.subject = 'compartment' AND s.subject_id = w.id
JOIN compartments c ON c.id = w.id AND c.status = 'active'
JOIN equipment e ON e.id = c.equipment_id
JOIN LATERAL (
    SELECT probe_id, gateway_id, valid_from FROM probe_bindings_current
    WHERE compartment_id = c.id ORDER BY valid_from DESC LIMIT 1
) b ON true
LEFT JOIN probe_latest pl ON pl.probe_id = b.probe_id
LEFT JOIN alarm_rule_params p ON p.compartment_id = c.id
ORDER BY c.id
FOR UPDATE OF s SKIP LOCKED
"""
# The readings after each probe's watermark, for the whole batch in one statement (each probe's
# walk is an index range scan on the primary key).
_READINGS = """
SELECT w.probe_id, r.ts, r.t, r.received_at
FROM unnest(%(probes)b::bigint[], %(after)b::timestamptz[]) AS w(probe_id, after)
CROSS JOIN LATERAL (
    SELECT ts, t, received_at FROM probe_readings r
    WHERE r.probe_id = w.probe_id AND r.ts > w.after ORDER BY r.ts LIMIT %(limit)s
) r
"""
# Arrays go in binary (%b): psycopg's text form quotes each element (a regular expression over each
# JSON state, an isoformat per timestamp), which took a sixth of a whole evaluation pass.
_SAVE_STATES = """
UPDATE alarm_rule_state s SET state = v.state::jsonb, cursor = greatest(s.cursor, v.cursor), updated_at = now()
FROM unnest(%(ids)b::bigint[], %(states)b::text[], %(cursors)b::timestamptz[]) AS v(id, state, cursor)
WHERE s.subject = %(subject)s AND s.subject_id = v.id
"""
_LOCK_ONE = """
SELECT state, cursor FROM alarm_rule_state WHERE subject = %(s)s AND subject_id = %(id)s FOR UPDATE SKIP LOCKED
"""
BATCH = 500
# The silence check's transactions hold the state rows of this many compartments at a time: a
# compartment the ingester just named waits (SKIP LOCKED, then a retry) for at most one such batch,
# and 500 of them held for a few hundred ms set the tail of the reading-to-WeCom time (issue #17).
SILENCE_BATCH = 100


def _lock_state(
    conn: psycopg.Connection, subject: str, subject_id: int, empty: dict[str, Any]
) -> dict[str, Any] | None:
    """The subject's state row, locked for this transaction; None if another scheduler holds it."""
    conn.execute(_ENSURE_STATES, {"subject": subject, "ids": [subject_id], "empty": Jsonb(empty)})
    return fetch_one(conn, _LOCK_ONE, {"s": subject, "id": subject_id})


def fresh_compartments(conn: psycopg.Connection, *, limit: int = 5000) -> list[int]:
    """The compartments with readings the rules have not seen, those received earliest first."""
    ids = [r["compartment_id"] for r in fetch_all(conn, _FRESH, {"limit": limit})]
    conn.commit()
    return ids


def evaluate_compartments(conn: psycopg.Connection, settings: Settings, *, limit: int = 5000) -> PassStats:
    """One pass over the compartments with new readings, in batches of one transaction each."""
    return _evaluate_batches(conn, settings, fresh_compartments(conn, limit=limit))


def evaluate_compartment_ids(conn: psycopg.Connection, settings: Settings, ids: list[int]) -> PassStats:
    """The new readings of the compartments named, judged now: the scheduler's answer to the
    ingester's notification that it stored readings for them (docs/ingest.md), instead of waiting
    for the periodic pass. Names are a hint, not a fact (any database user can NOTIFY): only those
    with readings the rules have not seen are judged, so a compartment another pass or scheduler
    has just judged costs one index lookup, and an unknown id nothing. A compartment whose state
    row another pass holds is skipped (``skipped_locked``) and stays fresh for the next look.

    Readings only, no silence rules: a compartment that just reported is not silent, and whatever
    else the silence rules decide (a gateway back, a probe sending only unusable readings) is the
    periodic silence check's to find — doing it here too cost a third of every evaluation."""
    wanted = sorted(set(ids))
    if not wanted:
        return PassStats()
    fresh = [r["compartment_id"] for r in fetch_all(conn, _FRESH_AMONG, {"ids": wanted})]
    if not fresh:
        conn.commit()
        return PassStats()
    return _evaluate_batches(conn, settings, fresh, silence=False)  # in the first batch's transaction


def check_silence(conn: psycopg.Connection, settings: Settings) -> PassStats:
    """No-data checks for every monitored compartment (a probe that says nothing has no new rows)."""
    ids = [r["compartment_id"] for r in fetch_all(conn, _ACTIVE_COMPARTMENTS)]
    conn.commit()
    return _evaluate_batches(conn, settings, ids, readings=False, size=SILENCE_BATCH)


def _evaluate_batches(
    conn: psycopg.Connection,
    settings: Settings,
    ids: list[int],
    *,
    readings: bool = True,
    silence: bool = True,
    size: int = BATCH,
) -> PassStats:
    """The compartments' new readings (``readings``) and / or silence rules (``silence``), ``size``
    compartments per transaction."""
    stats = PassStats()
    ids = sorted(set(ids))  # two schedulers creating and locking state rows in one order cannot deadlock
    for i in range(0, len(ids), size):
        batch = ids[i : i + size]
        try:
            _evaluate_batch(conn, settings, batch, stats, readings=readings, silence=silence)
            conn.commit()
        except psycopg.Error as exc:
            conn.rollback()
            stats.errors.append(f"温区 {batch[0]}–{batch[-1]}：{exc}")
            log.exception("评估温区 %s–%s 失败", batch[0], batch[-1])
    return stats


def _evaluate_batch(
    conn: psycopg.Connection, settings: Settings, ids: list[int], stats: PassStats, *, readings: bool, silence: bool
) -> None:
    conn.execute(
        _ENSURE_STATES, {"subject": "compartment", "ids": ids, "empty": Jsonb(rules.CompartmentState().to_json())}
    )
    subjects = fetch_all(conn, _SUBJECTS, {"ids": ids})
    stats.skipped_locked += len(ids) - len(subjects)
    stats.subjects += len(subjects)
    if not subjects:
        return
    now: datetime = subjects[0]["now"]  # the transaction's time, as _now() would give
    states = {s["compartment_id"]: rules.CompartmentState.from_json(s["state"]) for s in subjects}
    new: dict[int, list[rules.Reading]] = {}
    if readings:
        after = [states[s["compartment_id"]].watermark or s["valid_from"] - timedelta(microseconds=1) for s in subjects]
        after = [max(a, s["valid_from"] - timedelta(microseconds=1)) for a, s in zip(after, subjects, strict=True)]
        for r in fetch_all(
            conn,
            _READINGS,
            {"probes": [s["probe_id"] for s in subjects], "after": after, "limit": MAX_READINGS_PER_PASS},
        ):
            new.setdefault(r["probe_id"], []).append(rules.Reading(r["ts"], r["t"], r["received_at"]))
    # Most compartments share their parameters (registry limits, no overrides): built and
    # validated once per batch instead of once per compartment.
    known: dict[tuple[Any, ...], rules.RuleParams] = {}
    saved_ids: list[int] = []
    saved_states: list[str] = []
    cursors: list[datetime | None] = []
    for subject in subjects:
        cid = subject["compartment_id"]
        key = (subject["mode"], subject["t_min"], subject["t_max"], json.dumps(subject["overrides"], sort_keys=True))
        try:
            params = known.get(key)
            if params is None:
                params = known[key] = rules.params_for(
                    subject["mode"], subject["t_min"], subject["t_max"], subject["overrides"]
                )
        except ValueError as exc:
            # Limits changed in the registry after the overrides were saved (or too narrow for the
            # defaults): this compartment is reported on every pass, and the rest of the batch —
            # other units' alarms — goes on instead of failing with it.
            stats.errors.append(f"温区 {cid} 的报警参数无效：{exc}")
            log.error("温区 %s 的报警参数无效：%s", cid, exc)
            continue
        state = states[cid]
        events: list[rules.Event] = []
        cursor = subject["cursor"]
        if readings:
            mine = new.get(subject["probe_id"], [])
            state, events = rules.evaluate_readings(params, state, mine, now)
            if len(mine) < MAX_READINGS_PER_PASS:
                cursor = subject["latest_received_at"] or cursor
        if silence:
            state, quiet = rules.evaluate_silence(
                params, state, now, subject["gateway_offline"], watch_since=subject["valid_from"]
            )
            events += quiet
        about = life.Subject(
            unit_id=subject["unit_id"],
            compartment_id=cid,
            gateway_id=subject["gateway_id"],
            equipment_id=subject["equipment_id"],
            probe_id=subject["probe_id"],
            t_min=subject["t_min"],
            t_max=subject["t_max"],
        )
        for event in events:
            _apply_event(conn, settings, event, about, stats, now)
        saved_ids.append(cid)
        saved_states.append(json.dumps(state.to_json()))
        cursors.append(cursor)
    if saved_ids:
        conn.execute(
            _SAVE_STATES, {"subject": "compartment", "ids": saved_ids, "states": saved_states, "cursors": cursors}
        )


# ---------------------------------------------------------------------------------------------
# Gateways

_GATEWAYS = """
SELECT g.id, g.unit_id, gl.last_seen_at, s.cursor
FROM gateways g
LEFT JOIN gateway_latest gl ON gl.gateway_id = g.id
LEFT JOIN alarm_rule_state s ON s.subject = 'gateway' AND s.subject_id = g.id
WHERE g.status = 'active' AND g.unit_id IS NOT NULL
  AND EXISTS (SELECT 1 FROM probe_bindings_current b WHERE b.gateway_id = g.id)
"""
_GATEWAY_STATUSES = """
SELECT ts, online, power, battery, rssi, received_at FROM gateway_status
WHERE gateway_id = %(g)s AND received_at > coalesce(%(cursor)s::timestamptz, '-infinity') ORDER BY ts LIMIT 10000
"""
_GATEWAY_SEEN = """
SELECT greatest((SELECT last_seen_at FROM gateway_latest WHERE gateway_id = %(g)s),
                (SELECT max(pl.received_at) FROM probe_latest pl
                 JOIN probe_bindings_current b ON b.probe_id = pl.probe_id WHERE b.gateway_id = %(g)s)) AS seen,
       (SELECT min(valid_from) FROM probe_bindings_current WHERE gateway_id = %(g)s) AS watch_since
"""


def evaluate_gateways(conn: psycopg.Connection, settings: Settings) -> PassStats:
    """Offline (status false, or silent), on battery, low battery, weak signal (CM12). A gateway is
    heard through its own status and through any reading of a probe behind it."""
    stats = PassStats()
    for g in fetch_all(conn, _GATEWAYS):
        conn.commit()
        try:
            locked = _lock_state(conn, "gateway", g["id"], rules.GatewayState().to_json())
            if locked is None:
                stats.skipped_locked += 1
                continue
            stats.subjects += 1
            now = _now(conn)
            state = rules.GatewayState.from_json(locked["state"])
            statuses = [
                rules.GatewayStatus(r["ts"], r["online"], r["power"], r["battery"], r["rssi"], r["received_at"])
                for r in fetch_all(conn, _GATEWAY_STATUSES, {"g": g["id"], "cursor": locked["cursor"]})
            ]
            seen = fetch_one(conn, _GATEWAY_SEEN, {"g": g["id"]}) or {}
            last_seen = seen.get("seen") or seen.get("watch_since")
            state, events = rules.evaluate_gateway(rules.GatewayParams(), state, statuses, last_seen, now)
            about = life.Subject(unit_id=g["unit_id"], gateway_id=g["id"])
            for event in events:
                _apply_event(conn, settings, event, about, stats, now)
            cursor = max((s.received_at for s in statuses), default=locked["cursor"])
            conn.execute(
                _SAVE_STATES,
                {"subject": "gateway", "ids": [g["id"]], "states": [json.dumps(state.to_json())], "cursors": [cursor]},
            )
            conn.commit()
        except psycopg.Error as exc:
            conn.rollback()
            stats.errors.append(f"网关 {g['id']}：{exc}")
            log.exception("评估网关 %s 失败", g["id"])
    conn.commit()
    return stats


# ---------------------------------------------------------------------------------------------
# Writing what the rules decided (each transition is :mod:`alarms.life`'s)


def _apply_event(
    conn: psycopg.Connection,
    settings: Settings,
    event: rules.Event,
    subject: life.Subject,
    stats: PassStats,
    now: datetime,
) -> None:
    if isinstance(event, rules.AlarmOpened):
        opened = life.open_alarm(conn, event, subject)
        if opened is None:
            return  # already open (another scheduler, or a replay): nothing to raise twice
        stats.opened += 1
        if not event.suppressed:
            stats.count_notices(opened, enqueue_due(conn, settings, opened, now))
        return
    alarm_id = life.open_alarm_of(conn, event.kind, subject)
    if alarm_id is None:
        return
    if isinstance(event, rules.AlarmCleared):
        life.resolve(conn, alarm_id, event.at)
        stats.resolved += 1
    elif isinstance(event, rules.AlarmWorsened):
        life.worsen(conn, alarm_id, event.value)
    elif isinstance(event, rules.AlarmCauseChanged):
        life.change_cause(conn, alarm_id, event.cause, event.suppressed)
        if not event.suppressed:
            stats.count_notices(alarm_id, enqueue_due(conn, settings, alarm_id, now))


# ---------------------------------------------------------------------------------------------
# Escalation: which steps are due, and to whom (CM15, CM16)

_ALARM_FOR_STEPS = """
SELECT a.id, a.unit_id, a.state, a.raised_at, a.resolved_at, a.closed_at, a.acknowledged_at, a.suppressed,
       u.steps, u.reminder, u.resolved_reminder,
       coalesce((SELECT array_agg(DISTINCT o.step) FROM notification_outbox o WHERE o.alarm_id = a.id), '{}') AS sent,
       coalesce((SELECT array_agg(DISTINCT l)::int[] FROM notification_outbox o CROSS JOIN unnest(o.levels) AS l
                 WHERE o.alarm_id = a.id AND o.step NOT IN ('ack', 'resolved', 'closed')), '{}') AS told,
       -- written by an earlier transaction than the one that resolved the alarm: told while open
       coalesce((SELECT array_agg(DISTINCT l)::int[] FROM notification_outbox o CROSS JOIN unnest(o.levels) AS l
                 WHERE o.alarm_id = a.id AND o.step NOT IN ('ack', 'resolved', 'closed')
                   AND o.created_at < (SELECT min(v.ts) FROM alarm_events v
                                       WHERE v.alarm_id = a.id AND v.action = 'resolved')), '{}') AS told_while_open
FROM alarms a LEFT JOIN unit_escalation u ON u.unit_id = a.unit_id
WHERE a.id = %(id)s
"""
# Every alarm not closed, and those closed in the last day whose closing notice is not written yet
# (a person closes through the API; the next pass tells level 2).
_ESCALATING = """
SELECT a.id FROM alarms a
WHERE NOT a.suppressed
  AND (a.state <> 'closed'
       OR (a.closed_at > now() - interval '1 day'
           AND NOT EXISTS (SELECT 1 FROM notification_outbox o WHERE o.alarm_id = a.id AND o.step = 'closed')))
ORDER BY a.id
FOR UPDATE OF a SKIP LOCKED
LIMIT %(limit)s
"""
_ROUTES = """
SELECT r.level, r.channel, r.url AS target FROM notification_routes r
WHERE r.unit_id = %(unit)s AND r.level = ANY(%(levels)s)
"""
_OPENIDS = """
SELECT r.level, u.id AS user_id, u.wechat_openid AS target FROM unit_responsibles r
JOIN users u ON u.id = r.user_id AND u.status = 'active' AND u.wechat_openid IS NOT NULL
WHERE r.unit_id = %(unit)s AND r.level = ANY(%(levels)s)
"""
_ENQUEUE = """
INSERT INTO notification_outbox (alarm_id, step, channel, target, levels, due_at)
VALUES (%(alarm)s, %(step)s, %(channel)s, %(target)s, %(levels)s, %(due)s)
ON CONFLICT (alarm_id, step, channel, target) DO NOTHING
"""


def enqueue_due(conn: psycopg.Connection, settings: Settings, alarm_id: int, now: datetime) -> int:
    """Put every notification now due for the alarm into the outbox (idempotent by its unique key).

    Called in the transaction that opens the alarm (so the first notice is written with it) and by
    the escalation pass; the notices that close the loop (acknowledged, over, closed) are written
    by the pass after the change. Each step goes to each of the unit's WeCom robots / webhooks of the levels
    it names (else the province-wide WeCom fallback), and — when a template is configured — to the
    WeChat of each responsible person of those levels."""
    alarm = fetch_one(conn, _ALARM_FOR_STEPS, {"id": alarm_id})
    if alarm is None or alarm["suppressed"]:
        return 0
    timeline = AlarmTimeline(
        raised_at=alarm["raised_at"],
        state=alarm["state"],
        resolved_at=alarm["resolved_at"],
        closed_at=alarm["closed_at"],
        acknowledged_at=alarm["acknowledged_at"],
    )
    sent = set(alarm["sent"])
    steps = escalation_due_steps(timeline, policy_for(settings, alarm), now, sent)
    told = set(alarm["told"]).union(*(step.levels for step in steps))
    steps += notices_due(timeline, told, sent, told_while_open=alarm["told_while_open"])
    written = 0
    for step in steps:
        levels = sorted(step.levels)
        routes = fetch_all(conn, _ROUTES, {"unit": alarm["unit_id"], "levels": levels})
        targets = [(r["channel"], r["target"]) for r in routes]
        if not any(c == "wecom" for c, _ in targets) and settings.wecom_webhook_url:
            targets.append(("wecom", settings.wecom_webhook_url))
        if settings.wechat_template_id:
            targets += [
                ("wechat_template", r["target"])
                for r in fetch_all(conn, _OPENIDS, {"unit": alarm["unit_id"], "levels": levels})
            ]
        if not targets:
            targets.append(("wecom", "none:未配置通知去处"))  # recorded, so the gap shows in the alarm's history
        for channel, target in dict.fromkeys(targets):
            cur = conn.execute(
                _ENQUEUE,
                {
                    "alarm": alarm_id,
                    "step": step.key,
                    "channel": channel,
                    "target": target,
                    "levels": levels,
                    "due": step.due_at,
                },
            )
            written += cur.rowcount
    return written


def escalate(conn: psycopg.Connection, settings: Settings, *, limit: int = 1000) -> PassStats:
    """One escalation pass: every alarm not closed, locked SKIP LOCKED so two schedulers split them."""
    stats = PassStats()
    now = _now(conn)
    for row in fetch_all(conn, _ESCALATING, {"limit": limit}):
        stats.subjects += 1
        stats.count_notices(row["id"], enqueue_due(conn, settings, row["id"], now))
    conn.commit()
    return stats
