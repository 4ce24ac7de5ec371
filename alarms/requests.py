"""The request each per-person or per-receiver channel makes for one notice: a signed webhook POST,
or a WeChat template message with a personal single-use confirmation link (CM16).

Why apart from :mod:`alarms.delivery`: the worker decides what to send when, and keeps the outbox;
building a request (signing, WeChat's access token, minting the link) is a different job, and
the WeChat part needs the account's secret, which this module alone touches.
"""

from __future__ import annotations

import json
import time
from typing import Any
from urllib.parse import urlencode

import psycopg

from alarms.card import AlarmCard
from alarms.life import new_link
from alarms.messages import template_message
from alarms.signing import signed_webhook
from coldchain.core import outbound
from coldchain.core.db import fetch_all
from coldchain.core.outbound import OutboundRefused
from coldchain.core.settings import Settings

Request = tuple[str, bytes, dict[str, str], bytes | None]
"""(url, body, headers, the secret to keep out of any error text)."""

_OPENID_USER = """
SELECT u.id, max(r.level) AS level FROM users u JOIN unit_responsibles r ON r.user_id = u.id
WHERE u.wechat_openid = %(openid)s GROUP BY u.id
"""


def webhook_request(conn: psycopg.Connection, target: str, card: AlarmCard, row: dict[str, Any]) -> Request:
    secret_row = conn.execute(
        "SELECT secret FROM notification_routes WHERE url = %s AND channel = 'webhook' LIMIT 1", (target,)
    ).fetchone()
    secret = (secret_row[0] if secret_row and secret_row[0] else "").encode()
    body = {
        "alarm_id": card.alarm_id,
        "step": row["step"],
        "levels": row["levels"],
        "unit": card.unit_name,
        "unit_code": card.unit_code,
        "equipment": card.equipment_name,
        "compartment": card.compartment_name,
        "kind": card.kind_label,
        "severity": card.severity,
        "temperature": card.temperature,
        "t_min": card.t_min,
        "t_max": card.t_max,
        "since": card.since.isoformat(),
        "found_late": card.found_late,
        "link": card.link,
    }
    data, headers = signed_webhook(body, secret, int(time.time()))
    return target, data, headers, secret


def template_request(
    conn: psycopg.Connection,
    settings: Settings,
    openid: str,
    card: AlarmCard,
    row: dict[str, Any],
    token_cache: dict[str, str],
) -> Request | None:
    """A template message with a personal, single-use confirmation link (CM16: confirm from WeChat)."""
    if not (settings.wechat_appid and settings.wechat_secret and settings.wechat_template_id):
        return None
    user = fetch_all(conn, _OPENID_USER, {"openid": openid})
    if not user:
        return None
    token = new_link(conn, card.alarm_id, user[0]["id"], max(row["levels"]))
    link = f"{settings.public_url}/alarm-confirm?token={token}"
    if "access" not in token_cache:
        token_cache["access"] = _access_token(settings)
    url = f"{settings.wechat_api_base}/cgi-bin/message/template/send?access_token={token_cache['access']}"
    body = json.dumps(template_message(openid, settings.wechat_template_id, card, link), ensure_ascii=False).encode()
    return url, body, {}, token_cache["access"].encode() or None


def _access_token(settings: Settings) -> str:
    """WeChat's access token ("" when it cannot be had now: the send then fails and is retried).
    Raises :class:`OutboundRefused` when the API base is not a destination this system sends to."""
    query = urlencode(
        {
            "grant_type": "client_credential",
            "appid": settings.wechat_appid or "",
            "secret": settings.wechat_secret or "",
        }
    )
    url = f"{settings.wechat_api_base}/cgi-bin/token?{query}"
    try:
        status, raw = outbound.request("GET", url, outbound.policy_of(settings), timeout=10)
        answer = json.loads(raw) if status == 200 else None
    except OutboundRefused:
        raise
    except (OSError, ValueError):
        return ""
    token = answer.get("access_token") if isinstance(answer, dict) else None
    return token if isinstance(token, str) else ""
