"""Hourly and daily aggregates on the plain-PostgreSQL path behave like real-time continuous
aggregates: same rows before and after a refresh, late data re-materialised, Beijing days."""

from __future__ import annotations

import threading
import time
from datetime import datetime
from typing import Any

import aggdata
import psycopg
import pytest
from dbhelp import execute, query

from analytics.aggregates import refresh_aggregates
from coldchain.core import db
from coldchain.core.migrate import migrate

Rows = list[dict[str, Any]]


@pytest.fixture
def plain_url(empty_db: str) -> str:
    migrate(empty_db, timescaledb="off")
    return empty_db


def test_views_match_raw_data_before_and_after_refresh(plain_url: str) -> None:
    r = aggdata.run_plain_scenario(plain_url)
    # Before the late data arrives, the raw readings are those of INITIAL: refresh changes nothing.
    assert r["hourly_1"] == r["hourly_2"]
    assert r["daily_1"] == r["daily_2"]
    assert len(r["hourly_1"]) > 300
    # After the second refresh the aggregates equal a direct computation from every reading.
    assert r["hourly_4"] == r["raw_hourly"]
    assert r["daily_4"] == r["raw_daily"]


def test_late_data_below_the_watermark_waits_for_the_next_refresh(plain_url: str) -> None:
    r = aggdata.run_plain_scenario(plain_url)
    # Like TimescaleDB: materialised buckets keep their values until a refresh re-materialises them.
    assert r["hourly_3"] == r["hourly_2"]
    assert r["daily_3"] == r["daily_2"]
    assert r["hourly_4"] != r["hourly_3"]
    late = [row for row in r["hourly_4"] if row["probe_id"] == "7"]
    assert [(row["n"], row["min_t"], row["max_t"]) for row in late] == [("2", "5.5", "6.5")]
    # The repeated readings (probe 1, t + 10) were ignored: a reading is stored once.
    assert max(float(row["max_t"]) for row in r["hourly_4"] if row["probe_id"] == "1") < 10


def test_days_are_beijing_days(plain_url: str) -> None:
    r = aggdata.run_plain_scenario(plain_url)
    days = {(row["bucket"], row["n"]) for row in r["daily_4"] if row["probe_id"] == "9"}
    beijing_midnight_20 = int(datetime.fromisoformat("2026-11-20T00:00:00+08:00").timestamp())
    beijing_midnight_21 = int(datetime.fromisoformat("2026-11-21T00:00:00+08:00").timestamp())
    # 23:59:59 on the 20th is the 20th; 00:00 and 07:59:59 on the 21st (still the 20th in UTC) are the 21st.
    assert days == {(str(beijing_midnight_20), "1"), (str(beijing_midnight_21), "2")}


def test_refresh_is_incremental(plain_url: str) -> None:
    execute(plain_url, aggdata.INITIAL)
    first = refresh_aggregates(plain_url, until=datetime.fromisoformat(aggdata.REFRESH_1))
    again = refresh_aggregates(plain_url, until=datetime.fromisoformat(aggdata.REFRESH_1))
    assert first.hourly_rows and first.hourly_rows > 200
    assert (again.hourly_rows, again.daily_rows) == (0, 0)
    execute(plain_url, "INSERT INTO probe_readings (probe_id, ts, t) VALUES (3, '2026-11-21 10:01:01+08', 3.3)")
    late = refresh_aggregates(plain_url, until=datetime.fromisoformat(aggdata.REFRESH_1))
    # One hour and one day of one probe are re-materialised, nothing else.
    assert (late.hourly_rows, late.daily_rows) == (1, 1)


def test_a_reading_written_during_a_refresh_is_not_lost(plain_url: str) -> None:
    """A writer that read the old invalidation threshold holds it FOR SHARE until it commits, so the
    refresh cannot take its snapshot before that reading is visible."""
    execute(plain_url, aggdata.INITIAL)
    refresh_aggregates(plain_url, until=datetime.fromisoformat(aggdata.REFRESH_1))
    writer = db.connect(plain_url)
    try:
        # Above the current watermark (not logged as an invalidation), below the next one.
        writer.execute("INSERT INTO probe_readings (probe_id, ts, t) VALUES (3, '2026-11-22 20:01:01+08', 11.5)")
        errors: list[BaseException] = []

        def refresh() -> None:
            try:
                refresh_aggregates(plain_url, until=datetime.fromisoformat(aggdata.REFRESH_2))
            except BaseException as exc:
                errors.append(exc)

        t = threading.Thread(target=refresh)
        t.start()
        time.sleep(0.5)
        assert t.is_alive(), "the refresh must wait for the open writer"
        writer.commit()
        t.join(30)
        assert errors == []
    finally:
        writer.close()
    assert query(plain_url, aggdata.HOURLY) == query(plain_url, aggdata.RAW_HOURLY)
    assert query(plain_url, aggdata.DAILY) == query(plain_url, aggdata.RAW_DAILY)


def test_time_bucket_compatibility_function(plain_url: str) -> None:
    with db.connect(plain_url) as conn:
        row = conn.execute(
            "SELECT time_bucket('15 minutes', timestamptz '2026-11-23 08:07+08')::text, "
            "time_bucket('1 day', timestamptz '2026-11-23 07:59+08', 'Asia/Shanghai')::text, "
            "time_bucket('1 month', timestamptz '2026-11-23 07:59+08', 'Asia/Shanghai')::text, "
            "time_bucket('1 week', timestamptz '2026-11-26 12:00Z')::text"
        ).fetchone()
    assert row == (
        "2026-11-23 00:00:00+00",
        "2026-11-22 16:00:00+00",
        "2026-10-31 16:00:00+00",
        "2026-11-23 00:00:00+00",  # weeks start on Monday, like TimescaleDB's origin 2000-01-03
    )


def test_plain_path_keeps_the_trigger_cheap_for_current_data(plain_url: str) -> None:
    """Readings newer than the threshold (the normal live stream) write no invalidation rows."""
    execute(plain_url, aggdata.INITIAL)
    refresh_aggregates(plain_url, until=datetime.fromisoformat(aggdata.REFRESH_1))
    execute(plain_url, "INSERT INTO probe_readings (probe_id, ts, t) VALUES (1, '2026-11-23 07:00+08', 4)")
    with db.connect(plain_url) as conn:
        assert conn.execute("SELECT count(*) FROM agg_invalidations").fetchone() == (0,)
        with pytest.raises(psycopg.errors.UndefinedFunction):
            conn.execute("SELECT refresh_continuous_aggregate('probe_readings_hourly', NULL, NULL)")
