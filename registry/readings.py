"""Raw readings of a compartment or a probe, newest first, over a bounded window.

A compartment's readings are those of whichever probe was bound to it at each reading's time
(the binding's interval contains the timestamp), so a probe swap never moves history from one
fridge to another. Longer spans are the aggregates' job (:mod:`analytics.series`); the window
is capped so that one request cannot read months of minute readings.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

import psycopg

from coldchain.core.db import fetch_all
from coldchain.core.errors import invalid

MAX_WINDOW = timedelta(days=31)
DEFAULT_WINDOW = timedelta(hours=24)

_COMPARTMENT = """
SELECT r.ts, r.t, r.rh, r.probe_id
FROM probe_bindings b
JOIN probe_readings r ON r.probe_id = b.probe_id AND b.valid @> r.ts
WHERE b.compartment_id = %(id)s AND r.ts >= %(since)s AND r.ts < %(until)s
ORDER BY r.ts DESC LIMIT %(limit)s
"""
_PROBE = """
SELECT r.ts, r.t, r.rh, r.probe_id FROM probe_readings r
WHERE r.probe_id = %(id)s AND r.ts >= %(since)s AND r.ts < %(until)s
ORDER BY r.ts DESC LIMIT %(limit)s
"""


def window(since: datetime | None, until: datetime | None) -> tuple[datetime, datetime]:
    """The window asked for: up to now and the 24 hours before by default, at most 31 days (422)."""
    end = until or datetime.now().astimezone()
    start = since or end - DEFAULT_WINDOW
    if start >= end:
        raise invalid("起始时间必须早于结束时间")
    if end - start > MAX_WINDOW:
        raise invalid("原始读数一次最多查询 31 天；更长的时间请用小时或日聚合")
    return start, end


def compartment_readings(
    conn: psycopg.Connection, compartment_id: int, since: datetime, until: datetime, limit: int
) -> list[dict[str, Any]]:
    return fetch_all(conn, _COMPARTMENT, {"id": compartment_id, "since": since, "until": until, "limit": limit})


def probe_readings(
    conn: psycopg.Connection, probe_id: int, since: datetime, until: datetime, limit: int
) -> list[dict[str, Any]]:
    return fetch_all(conn, _PROBE, {"id": probe_id, "since": since, "until": until, "limit": limit})
