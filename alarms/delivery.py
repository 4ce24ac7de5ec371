"""The outbox worker: deliver what :mod:`alarms.engine` queued, losing nothing and sending nothing
twice once the endpoint has answered.

One destination (a WeCom robot, an openid, a webhook URL) at a time, in its own transaction, its
pending rows locked ``FOR UPDATE SKIP LOCKED``: a second scheduler takes other destinations, never
the same rows. The rows stay locked while the request is in flight and are marked sent in the
same transaction, so a crash before the commit means "retry" (at worst one duplicate after a
crash mid-request — the only case that exists without the endpoint's cooperation), never "lost".
A failure backs off (2 s, 4 s … 5 min, with jitter) and keeps the row.

WeCom robots take at most 20 messages a minute and 4 096 bytes each: everything pending for one
robot is merged into as few messages as fit, and what the minute's budget cannot take waits for
the next slot — delayed, never dropped.

Every request goes through :mod:`coldchain.core.outbound`: https to an allowed host only, never to an
internal address (checked after DNS resolution, on the very addresses connected to). A refused
destination is a permanent failure: its rows keep the reason and are not tried again. Nothing
stored or logged here carries a secret (a robot's key, a webhook's HMAC secret, WeChat's).
"""

from __future__ import annotations

import json
import logging
import random
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import psycopg
from psycopg.types.json import Jsonb

from alarms import requests, robot_budget
from alarms.card import AlarmCard, Closure, Handling, Person
from alarms.escalation import kind_of_key
from alarms.messages import WecomTextPayload, wecom_markdown, wecom_mention, wecom_payload
from alarms.messages import next_slot as robot_next_slot
from alarms.rules import KIND_NAMES
from coldchain.core import outbound
from coldchain.core.db import fetch_all
from coldchain.core.outbound import OutboundRefused
from coldchain.core.settings import Settings

log = logging.getLogger("coldchain.alarms.delivery")

WECOM_PER_MINUTE = 20
NOWHERE = "单位未配置通知去处（企业微信群机器人或 webhook），请在“设置”中为各级负责人配置"
MAX_BACKOFF = timedelta(minutes=5)

# (url, body bytes, headers) → (HTTP status, response body); replaceable for the benchmark's timing.
Post = Callable[[str, bytes, Mapping[str, str]], tuple[int, bytes]]


def http_post(settings: Settings) -> Post:
    """The real sender: a JSON POST through :func:`coldchain.core.outbound.request` (checked destination,
    no redirects followed)."""
    policy = outbound.policy_of(settings)

    def post(url: str, body: bytes, headers: Mapping[str, str]) -> tuple[int, bytes]:
        return outbound.request(
            "POST", url, policy, body=body, headers={"Content-Type": "application/json; charset=utf-8", **headers}
        )

    return post


@dataclass
class DeliveryStats:
    messages: int = 0
    rows_sent: int = 0
    failures: int = 0
    postponed: int = 0
    errors: list[str] = field(default_factory=list)


_DESTINATIONS = """
SELECT channel, target, min(due_at) AS first_due FROM notification_outbox
WHERE sent_at IS NULL AND next_attempt_at <= now()
GROUP BY channel, target ORDER BY first_due LIMIT %(limit)s
"""
# The destinations of the notices of the alarms named: a pass that just queued them sends those at
# once, before — and instead of — everyone else's due reminders, which the outbox job sends.
_DESTINATIONS_OF = """
SELECT channel, target, min(due_at) AS first_due FROM notification_outbox
WHERE alarm_id = ANY(%(alarms)s::bigint[]) AND sent_at IS NULL AND next_attempt_at <= now()
GROUP BY channel, target ORDER BY first_due
"""
_TAKE = """
SELECT id, alarm_id, step, levels::int[] AS levels, attempts FROM notification_outbox
WHERE channel = %(channel)s AND target = %(target)s AND sent_at IS NULL AND next_attempt_at <= now()
ORDER BY due_at, id
FOR UPDATE SKIP LOCKED
"""
_CARDS = """
SELECT a.id, a.kind, a.severity, a.condition_since, a.found_late, a.cause, a.value, a.t_min::float8 AS t_min,
       a.t_max::float8 AS t_max, a.state, a.unit_id, n.name AS unit_name, n.code AS unit_code,
       coalesce(e.name, '网关 ' || g.serial, '') AS equipment_name, coalesce(c.name, '') AS compartment_name,
       (SELECT pl.t FROM probe_latest pl WHERE pl.probe_id = a.probe_id) AS latest_t,
       a.acknowledged_at, a.ack_channel, a.ack_comment, a.on_site,
       coalesce(nullif(ack.real_name, ''), ack.username) AS acknowledged_by,
       a.resolved_at, a.closure, coalesce(nullif(cl.real_name, ''), cl.username) AS closed_by,
       x.lowest, x.highest
FROM alarms a
JOIN units n ON n.id = a.unit_id
LEFT JOIN equipment e ON e.id = a.equipment_id
LEFT JOIN compartments c ON c.id = a.compartment_id
LEFT JOIN gateways g ON g.id = a.gateway_id
LEFT JOIN users ack ON ack.id = a.acknowledged_by
LEFT JOIN users cl ON cl.id = a.closed_by
LEFT JOIN LATERAL (
    SELECT min(r.t)::float8 AS lowest, max(r.t)::float8 AS highest FROM probe_readings r
    WHERE r.probe_id = a.probe_id AND r.ts >= a.condition_since AND r.ts <= a.resolved_at
) x ON a.resolved_at IS NOT NULL AND a.probe_id IS NOT NULL
WHERE a.id = ANY(%(ids)s)
"""
# The responsible people of the alarms' units (CM15): named, with phones, in every message.
_PEOPLE = """
SELECT r.unit_id, r.level, coalesce(nullif(u.real_name, ''), u.username) AS name, u.phone
FROM unit_responsibles r JOIN users u ON u.id = r.user_id AND u.status = 'active'
WHERE r.unit_id = ANY(%(units)s)
ORDER BY r.unit_id, r.level, name
"""
_SENT = """
UPDATE notification_outbox
SET sent_at = clock_timestamp(), sent_in = %(first)s, attempts = attempts + 1, last_error = NULL
WHERE id = ANY(%(ids)s)
"""
_FAILED = """
UPDATE notification_outbox SET attempts = attempts + 1, last_error = %(error)s,
       next_attempt_at = now() + make_interval(secs => %(wait)s)
WHERE id = ANY(%(ids)s)
"""
_POSTPONE = "UPDATE notification_outbox SET next_attempt_at = %(at)s WHERE id = ANY(%(ids)s)"
# A destination this system does not send to: never due again (a date no pass reaches; not
# 'infinity', which clients cannot read back), kept unsent with the reason.
_REFUSED = """
UPDATE notification_outbox SET attempts = attempts + 1, last_error = %(error)s,
       next_attempt_at = '9999-12-31 00:00:00+00'
WHERE id = ANY(%(ids)s)
"""
_EVENT = """
INSERT INTO alarm_events (alarm_id, action, channel, details)
SELECT unnest(%(alarms)s::bigint[]), %(action)s, %(channel)s, %(details)s
"""


def backoff(attempts: int) -> float:
    """Seconds before the next try after ``attempts`` failures: doubling from 2 s, capped, jittered
    so that many rows failing together do not retry in lock-step."""
    base = min(2.0 ** max(1, attempts), MAX_BACKOFF.total_seconds())
    return base * random.uniform(0.8, 1.2)  # jitter, not security


def deliver(
    conn: psycopg.Connection,
    settings: Settings,
    *,
    post: Post | None = None,
    limit: int = 200,
    alarms: Sequence[int] | None = None,
) -> DeliveryStats:
    """Send what is due, one destination at a time (its rows merged into as few messages as its
    channel allows). ``alarms``: only the destinations with due notices of these alarms — the
    evaluation that just raised them sends them without waiting behind other alarms' reminders."""
    stats = DeliveryStats()
    send = post or http_post(settings)
    if alarms is None:
        destinations = fetch_all(conn, _DESTINATIONS, {"limit": limit})
    else:
        destinations = fetch_all(conn, _DESTINATIONS_OF, {"alarms": sorted(set(alarms))}) if alarms else []
    conn.commit()
    for dest in destinations:
        try:
            _deliver_to(conn, settings, dest["channel"], dest["target"], send, stats)
            conn.commit()
        except (psycopg.Error, ValueError, KeyError) as exc:
            # One destination's trouble (a database error, a message that cannot be built) must
            # not stop the others; its rows stay pending and the error is logged every pass —
            # without the traceback, whose messages could quote a robot's URL with its key.
            conn.rollback()
            error = _scrubbed(f"{type(exc).__name__}: {exc}", dest["target"], settings)
            stats.errors.append(f"{dest['channel']}：{error}")
            log.error("投递到 %s 失败：%s", dest["channel"], error)
    return stats


def _scrubbed(text: str, url: str, settings: Settings, *secrets: str | bytes | None) -> str:
    """An error message fit to store and log: the URL's query values and every secret masked."""
    return outbound.scrub(text, url, settings.wechat_secret, settings.link_secret, *secrets)[:500]


def _cards(
    conn: psycopg.Connection, settings: Settings, rows: Sequence[dict[str, Any]], now: datetime
) -> list[AlarmCard]:
    by_alarm = {r["id"]: r for r in fetch_all(conn, _CARDS, {"ids": sorted({row["alarm_id"] for row in rows})})}
    people: dict[int, list[Person]] = {}
    for p in fetch_all(conn, _PEOPLE, {"units": sorted({a["unit_id"] for a in by_alarm.values()})}):
        people.setdefault(p["unit_id"], []).append(Person(p["level"], p["name"], p["phone"]))
    cards: list[AlarmCard] = []
    for row in rows:
        a = by_alarm[row["alarm_id"]]
        temperature = a["latest_t"] if a["latest_t"] is not None else a["value"]
        handling = None
        if a["acknowledged_at"] is not None:
            handling = Handling(
                by=a["acknowledged_by"] or "（已注销用户）",
                at=a["acknowledged_at"],
                channel=a["ack_channel"] or "web",
                on_site=bool(a["on_site"]),
                comment=a["ack_comment"],
            )
        closure = None
        if a["closure"]:
            closure = Closure(
                by=a["closed_by"] or "（已注销用户）",
                cause=str(a["closure"].get("cause", "")),
                action=str(a["closure"].get("action", "")),
                vaccine_disposition=str(a["closure"].get("vaccine_disposition", "")),
            )
        levels = set(row["levels"])
        cards.append(
            AlarmCard(
                alarm_id=a["id"],
                unit_name=a["unit_name"],
                unit_code=a["unit_code"],
                equipment_name=a["equipment_name"],
                compartment_name=a["compartment_name"],
                kind_label=KIND_NAMES.get(a["kind"], a["kind"]),
                severity=a["severity"],
                temperature=temperature,
                t_min=a["t_min"],
                t_max=a["t_max"],
                since=a["condition_since"],
                duration=now - a["condition_since"],
                level=max(row["levels"]),
                step_kind=kind_of_key(row["step"]),
                link=f"{settings.public_url}/alarms/{a['id']}",
                found_late=a["found_late"],
                cause=a["cause"],
                handling=handling,
                people=tuple(p for p in people.get(a["unit_id"], []) if p.level in levels),
                resolved_at=a["resolved_at"],
                lowest=a["lowest"],
                highest=a["highest"],
                closure=closure,
            )
        )
    return cards


def _deliver_to(
    conn: psycopg.Connection, settings: Settings, channel: str, target: str, post: Post, stats: DeliveryStats
) -> None:
    # One sender per destination at a time, across schedulers: the per-minute budget of a robot is
    # counted from committed sends, which two concurrent senders would each see as unspent.
    locked = conn.execute(
        "SELECT pg_try_advisory_xact_lock(hashtext('coldchain.outbox'), hashtext(%s))", (target,)
    ).fetchone()
    if not locked or not locked[0]:
        return
    rows = fetch_all(conn, _TAKE, {"channel": channel, "target": target})
    if not rows:
        return
    now_row = conn.execute("SELECT now()").fetchone()
    assert now_row is not None
    now: datetime = now_row[0]
    alarms_of = [r["alarm_id"] for r in rows]
    if target.startswith("none:"):
        # Nowhere configured: each row keeps the reason (the alarm page shows it), the alarm's
        # history says so, the run log too — and it is not tried again.
        _refuse(conn, rows, channel, NOWHERE, stats, prefix="")
        log.warning("报警 %s 未能通知：%s", "、".join(map(str, sorted(set(alarms_of)))), NOWHERE)
        return
    # Checked before anything is built (and again by the sender, on the addresses it connects to).
    try:
        outbound.resolve(
            settings.wechat_api_base if channel == "wechat_template" else target, outbound.policy_of(settings)
        )
    except OutboundRefused as exc:
        _refuse(conn, rows, channel, str(exc), stats)
        return
    except OSError:
        pass  # a name that does not resolve now: the send below fails and is retried
    cards = _cards(conn, settings, rows, now)
    if channel == "wecom":
        _deliver_wecom(conn, settings, target, rows, cards, post, stats, now)
    elif channel == "webhook":
        _deliver_each(
            conn,
            settings,
            target,
            rows,
            cards,
            post,
            stats,
            lambda card, row: requests.webhook_request(conn, target, card, row),
        )
    else:
        token_cache: dict[str, str] = {}
        _deliver_each(
            conn,
            settings,
            target,
            rows,
            cards,
            post,
            stats,
            lambda card, row: requests.template_request(conn, settings, target, card, row, token_cache),
        )


def _refuse(
    conn: psycopg.Connection,
    rows: Sequence[dict[str, Any]],
    channel: str,
    reason: str,
    stats: DeliveryStats,
    *,
    prefix: str = "通知地址被拒绝，不再重试：",
) -> None:
    """A destination this system does not send to: each row keeps the reason, and is not retried."""
    error = f"{prefix}{reason}"[:500]
    conn.execute(_REFUSED, {"ids": [r["id"] for r in rows], "error": error})
    conn.execute(
        _EVENT,
        {
            "alarms": sorted({r["alarm_id"] for r in rows}),
            "action": "notify_failed",
            "channel": channel,
            "details": Jsonb({"error": error, "refused": True}),
        },
    )
    stats.failures += 1


def _send(
    conn: psycopg.Connection,
    settings: Settings,
    post: Post,
    url: str,
    body: bytes,
    headers: Mapping[str, str],
    rows: Sequence[dict[str, Any]],
    channel: str,
    stats: DeliveryStats,
    *,
    wecom: bool = False,
    secret: bytes | None = None,
) -> bool:
    """One request for ``rows``: mark them sent, or record the failure and schedule the retry."""
    ids = [r["id"] for r in rows]
    alarms_of = sorted({r["alarm_id"] for r in rows})
    started = time.monotonic()
    try:
        status, answer = post(url, body, headers)
        error = None if 200 <= status < 300 else f"HTTP {status}"
        if error is None and wecom:
            errcode = json.loads(answer or b"{}").get("errcode", 0)
            error = None if errcode == 0 else f"企业微信 errcode {errcode}"
    except OutboundRefused as exc:
        _refuse(conn, rows, channel, str(exc), stats)
        return False
    except (OSError, ValueError) as exc:
        error = _scrubbed(f"{type(exc).__name__}: {exc}", url, settings, secret)
    if error is None:
        conn.execute(_SENT, {"first": ids[0], "ids": ids})
        conn.execute(
            _EVENT,
            {
                "alarms": alarms_of,
                "action": "notified",
                "channel": channel,
                "details": Jsonb(
                    {"steps": sorted({r["step"] for r in rows}), "seconds": round(time.monotonic() - started, 3)}
                ),
            },
        )
        stats.messages += 1
        stats.rows_sent += len(ids)
        return True
    attempts = max(r["attempts"] for r in rows) + 1
    conn.execute(_FAILED, {"ids": ids, "error": error[:500], "wait": backoff(attempts)})
    conn.execute(
        _EVENT,
        {
            "alarms": alarms_of,
            "action": "notify_failed",
            "channel": channel,
            "details": Jsonb({"error": error[:500], "attempt": attempts}),
        },
    )
    stats.failures += 1
    return False


def _deliver_wecom(
    conn: psycopg.Connection,
    settings: Settings,
    target: str,
    rows: Sequence[dict[str, Any]],
    cards: Sequence[AlarmCard],
    post: Post,
    stats: DeliveryStats,
    now: datetime,
) -> None:
    robot = robot_budget.digest(target)
    recent = robot_budget.recent(conn, robot)
    # Greedy packing: each message takes as many pending cards as fit in 4 096 bytes.
    groups: list[list[int]] = []
    for i in range(len(cards)):
        if groups and len(wecom_markdown([cards[j] for j in groups[-1]] + [cards[i]], now)) == 1:
            groups[-1].append(i)
        else:
            groups.append([i])
    for n, group in enumerate(groups):
        group_rows = [rows[i] for i in group]
        group_cards = [cards[i] for i in group]
        mention = wecom_mention(group_cards)
        needed = 1 if mention is None else 2
        clock = robot_budget.clock(conn)
        # Room for ``needed`` requests: at most 20 − needed in the window now (sliding, by answer time).
        slot = robot_next_slot(recent, clock, WECOM_PER_MINUTE - needed + 1)
        if slot > clock:
            conn.execute(_POSTPONE, {"at": slot, "ids": [rows[i]["id"] for g in groups[n:] for i in g]})
            stats.postponed += sum(len(g) for g in groups[n:])
            return
        (markdown,) = wecom_markdown(group_cards, now)
        body = json.dumps(wecom_payload(markdown), ensure_ascii=False).encode()
        sent = _send(conn, settings, post, target, body, {}, group_rows, "wecom", stats, wecom=True)
        recent.append(robot_budget.record(conn, robot))
        if not sent:
            # The robot failed: the rest for it wait for the same retry instead of hammering it.
            rest = [rows[i]["id"] for g in groups[n + 1 :] for i in g]
            if rest:
                conn.execute(_POSTPONE, {"at": now + timedelta(seconds=backoff(1)), "ids": rest})
            return
        if mention is not None:
            _mention(conn, settings, post, target, mention, group_rows)
            recent.append(robot_budget.record(conn, robot))


def _mention(
    conn: psycopg.Connection,
    settings: Settings,
    post: Post,
    target: str,
    mention: WecomTextPayload,
    rows: Sequence[dict[str, Any]],
) -> None:
    """The follow-up that @mentions the responsible people. Best effort: the alarm message itself
    is already delivered (and marked so), so a failed mention is recorded in the alarms' history
    and not retried — a retry could only repeat a ping, never deliver the alarm."""
    body = json.dumps(mention, ensure_ascii=False).encode()
    try:
        status, answer = post(target, body, {})
        error = None if 200 <= status < 300 else f"HTTP {status}"
        if error is None:
            errcode = json.loads(answer or b"{}").get("errcode", 0)
            error = None if errcode == 0 else f"企业微信 errcode {errcode}"
    except (OSError, ValueError) as exc:
        error = _scrubbed(f"{type(exc).__name__}: {exc}", target, settings)
    details: dict[str, Any] = {"mention": len(mention["text"]["mentioned_mobile_list"])}
    if error is not None:
        details["error"] = f"@提醒负责人未发出：{error}"[:500]
    conn.execute(
        _EVENT,
        {
            "alarms": sorted({r["alarm_id"] for r in rows}),
            "action": "notified" if error is None else "notify_failed",
            "channel": "wecom",
            "details": Jsonb(details),
        },
    )


def _deliver_each(
    conn: psycopg.Connection,
    settings: Settings,
    target: str,
    rows: Sequence[dict[str, Any]],
    cards: Sequence[AlarmCard],
    post: Post,
    stats: DeliveryStats,
    request: Callable[[AlarmCard, dict[str, Any]], tuple[str, bytes, dict[str, str], bytes | None] | None],
) -> None:
    for i, (card, row) in enumerate(zip(cards, rows, strict=True)):
        try:
            built = request(card, row)
        except OutboundRefused as exc:  # WeChat's API base, refused when the token was fetched
            _refuse(conn, rows[i:], "wechat_template", str(exc), stats)
            return
        if built is None:
            continue
        url, body, headers, secret = built
        channel = "webhook" if url == target else "wechat_template"
        # WeChat answers 200 with an errcode; a webhook answers with its HTTP status alone.
        wechat = channel == "wechat_template"
        if not _send(conn, settings, post, url, body, headers, [row], channel, stats, wecom=wechat, secret=secret):
            return
