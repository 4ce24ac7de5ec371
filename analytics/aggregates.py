"""Bring the hourly and daily probe aggregates and the excursion spans up to date, on either
storage path.

TimescaleDB refreshes its continuous aggregates by policy; calling this there is still useful
after a bulk back-fill (it asks for an immediate refresh of the policy window). On plain
PostgreSQL nothing runs by itself: the scheduler calls :func:`refresh_aggregates` every few
minutes, and it is incremental (only new hours and the hours that late readings touched).
The excursion spans (sql/migrations/0009_excursions.sql) are ours on both paths, and refreshed
here on both.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

import psycopg

from coldchain.core.db import connect, storage_path

# Same windows as the TimescaleDB policies in sql/migrations/0002_readings.sql.
TIMESCALE_WINDOWS = {
    "probe_readings_hourly": timedelta(days=30),
    "probe_readings_daily": timedelta(days=90),
}


@dataclass(frozen=True)
class RefreshResult:
    path: str
    hourly_rows: int | None
    daily_rows: int | None
    materialized_until: datetime | None
    excursion_spans: int


def refresh_aggregates(url: str, *, until: datetime | None = None) -> RefreshResult:
    """Materialise every complete hour before ``until`` (default: now)."""
    with connect(url, autocommit=True, application="coldchain-aggregates") as conn:
        path = storage_path(conn)
        spans = _refresh_excursions(conn, until)
        if path == "timescaledb":
            # Only the owner may refresh a continuous aggregate by hand; the runtime role (the
            # scheduler) leaves it to the refresh policies, which run as the owner.
            if not _owns(conn, "probe_readings_hourly"):
                return RefreshResult(path, None, None, None, spans)
            # CALL refresh_continuous_aggregate cannot run inside a transaction: autocommit.
            for view, window in TIMESCALE_WINDOWS.items():
                conn.execute(
                    "CALL refresh_continuous_aggregate(%s::regclass, "
                    "coalesce(%s, now()) - %s::interval, time_bucket('1 hour', coalesce(%s, now())))",
                    (view, until, window, until),
                )
            return RefreshResult(path, None, None, None, spans)
        # Two transactions on purpose: the threshold must be visible to writers before the
        # refresh takes its snapshot (see the comment in 0002_readings.sql).
        row = conn.execute("SELECT cc_agg_advance_threshold(coalesce(%s, now()))", (until,)).fetchone()
        assert row is not None
        threshold: datetime = row[0]
        with conn.transaction():
            counts = conn.execute("SELECT hourly_rows, daily_rows FROM cc_agg_refresh()").fetchone()
        assert counts is not None
        return RefreshResult(path, int(counts[0]), int(counts[1]), threshold, spans)


def _owns(conn: psycopg.Connection, relation: str) -> bool:
    row = conn.execute(
        "SELECT pg_has_role(current_user, relowner, 'USAGE') FROM pg_class WHERE oid = %s::regclass", (relation,)
    ).fetchone()
    return bool(row and row[0])


def _refresh_excursions(conn: psycopg.Connection, until: datetime | None) -> int:
    """Two transactions at least, as for the plain aggregates: writers of late readings must see
    the new threshold before the recomputation takes its snapshot. Then one transaction per day of
    readings until caught up (a first run over years of history commits as it goes). Returns the
    spans written."""
    conn.execute("SELECT cc_excursion_advance_threshold(coalesce(%s, now()))", (until,))
    total = 0
    while True:
        with conn.transaction():
            row = conn.execute("SELECT spans, caught_up FROM cc_excursion_refresh()").fetchone()
        assert row is not None
        total += int(row[0])
        if row[1]:
            return total
