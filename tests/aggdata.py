"""One fixed data set and the queries that read it back, for both storage paths.

Pure SQL, integer arithmetic only (no random(), no sin()), so the very same statements give
the very same readings in PostgreSQL and in the WASM TimescaleDB build.
"""

from __future__ import annotations

from datetime import datetime

from dbhelp import Rows, execute, query

from analytics.aggregates import refresh_aggregates

# Four probes, every 5 minutes, 2026-11-20 00:00 to 2026-11-23 06:00 Beijing time; probe 4 frozen.
INITIAL = """
INSERT INTO probe_readings (probe_id, ts, t)
SELECT p, ts,
       CASE WHEN p = 4 THEN -20.0 + ((extract(epoch FROM ts)::bigint / 300 * 7 + p * 13) % 40) / 10.0
            ELSE 2.5 + ((extract(epoch FROM ts)::bigint / 300 * 7 + p * 13) % 50) / 10.0 END
FROM generate_series(1, 4) AS p,
     generate_series(timestamptz '2026-11-20 00:00+08', timestamptz '2026-11-23 06:00+08', INTERVAL '5 minutes') AS ts;
-- Around Beijing midnight: the first belongs to 11-20, the second to 11-21 (local days, not UTC days).
INSERT INTO probe_readings (probe_id, ts, t) VALUES
    (9, '2026-11-20 23:59:59+08', 7.5), (9, '2026-11-21 00:00:00+08', 8.5), (9, '2026-11-21 07:59:59+08', 9.5);
"""

# Late and repeated readings, all below the watermark that REFRESH_1 leaves.
LATE = """
INSERT INTO probe_readings (probe_id, ts, t) VALUES
    (2, '2026-11-21 03:02:30+08', 12.5),
    (7, '2026-11-20 10:00:00+08', 5.5),
    (7, '2026-11-20 10:30:00+08', 6.5)
ON CONFLICT (probe_id, ts) DO NOTHING;
INSERT INTO probe_readings (probe_id, ts, t)
SELECT probe_id, ts, t + 10 FROM probe_readings WHERE probe_id = 1 AND ts < '2026-11-20 02:00+08'
ON CONFLICT (probe_id, ts) DO NOTHING;
"""

REFRESH_1 = "2026-11-22T12:30:00+08:00"
REFRESH_2 = "2026-11-23T06:30:00+08:00"

_COLUMNS = """probe_id::text AS probe_id, extract(epoch FROM bucket)::bigint::text AS bucket, n::text AS n,
    min_t::text AS min_t, max_t::text AS max_t, round(avg_t::numeric, 6)::text AS avg_t,
    round(sum_t::numeric, 6)::text AS sum_t,
    extract(epoch FROM first_ts)::bigint::text AS first_ts, extract(epoch FROM last_ts)::bigint::text AS last_ts"""

HOURLY = f"SELECT {_COLUMNS} FROM probe_readings_hourly ORDER BY probe_id, bucket"  # noqa: S608 - constants
DAILY = f"SELECT {_COLUMNS} FROM probe_readings_daily ORDER BY probe_id, bucket"  # noqa: S608 - constants

# The same figures straight from the raw readings: what a fully refreshed aggregate must equal.
_RAW = """SELECT probe_id, {bucket} AS bucket, count(*) AS n, min(t) AS min_t, max(t) AS max_t,
    avg(t) AS avg_t, sum(t) AS sum_t, min(ts) AS first_ts, max(ts) AS last_ts
    FROM probe_readings GROUP BY 1, 2"""
_RAW_HOURLY = _RAW.format(bucket="time_bucket('1 hour', ts)")
_RAW_DAILY = _RAW.format(bucket="time_bucket('1 day', ts, 'Asia/Shanghai')")
RAW_HOURLY = f"SELECT {_COLUMNS} FROM ({_RAW_HOURLY}) r ORDER BY 1, 2"  # noqa: S608 - constants
RAW_DAILY = f"SELECT {_COLUMNS} FROM ({_RAW_DAILY}) r ORDER BY 1, 2"  # noqa: S608 - constants


def run_plain_scenario(url: str) -> dict[str, Rows]:
    """The scenario of the TimescaleDB oracle, on plain PostgreSQL."""
    out: dict[str, Rows] = {}
    execute(url, INITIAL)
    out["hourly_1"], out["daily_1"] = query(url, HOURLY), query(url, DAILY)
    refresh_aggregates(url, until=datetime.fromisoformat(REFRESH_1))
    out["hourly_2"], out["daily_2"] = query(url, HOURLY), query(url, DAILY)
    execute(url, LATE)
    out["hourly_3"], out["daily_3"] = query(url, HOURLY), query(url, DAILY)
    refresh_aggregates(url, until=datetime.fromisoformat(REFRESH_2))
    out["hourly_4"], out["daily_4"] = query(url, HOURLY), query(url, DAILY)
    out["raw_hourly"], out["raw_daily"] = query(url, RAW_HOURLY), query(url, RAW_DAILY)
    return out
