"""The read side at province scale: the live board, a device's 30-day chart and a city's monthly
report, each timed on the path the system uses (latest tables / aggregates) and on the raw readings,
at two data sizes so that the growth shows.

    .venv/bin/python bench/queries.py [--sizes 1000,3000] [--days 30] [--interval 5] [--runs 5]

Each size is its own database: a province tree (10 cities × 5 counties, then townships) with one
monitored fridge, probe and gateway per unit, ``--days`` of readings every ``--interval`` minutes
(a 20-minute excursion every tenth day per probe), hourly gateway status, and two alarms per
probe and month with their acknowledgements and escalations. Targets on this machine: board for
the whole province < 300 ms, a 30-day chart < 500 ms, a city's monthly report < 3 s.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from apihelp import api_client, bearer

from analytics import board, series
from analytics.aggregates import refresh_aggregates
from analytics.report.build import compute
from analytics.report.maths import month_period
from bench.ledger import build_tree, timed
from coldchain import services
from coldchain.core import db
from coldchain.core.db import fetch_all
from coldchain.core.migrate import migrate
from coldchain.core.terms import current_month
from registry.auth import hash_password

PASSWORD = "Bench@2026pw"


def add_state(url: str, start: datetime) -> None:
    """What the ingester and the alarm engine would have left: latest tables, gateway status every
    hour (on battery and weak a few hours a month), and alarms with their life cycle."""
    with db.connect(url) as conn:
        conn.execute(
            """INSERT INTO probe_latest (probe_id, ts, t)
               SELECT DISTINCT ON (probe_id) probe_id, ts, t FROM probe_readings ORDER BY probe_id, ts DESC"""
        )
        conn.execute(
            """INSERT INTO gateway_status (gateway_id, ts, online, power, battery, rssi)
               SELECT g.id, s.ts, true,
                      CASE WHEN extract(hour FROM s.ts)::int = g.id %% 24 AND extract(day FROM s.ts)::int %% 10 = 0
                           THEN 'battery' ELSE 'ac' END,
                      4.0, CASE WHEN (g.id + extract(day FROM s.ts)::int) %% 29 = 0 THEN -101 ELSE -70 END
               FROM gateways g CROSS JOIN generate_series(%(start)s, now(), interval '1 hour') s(ts)""",
            {"start": start},
        )
        conn.execute(
            """INSERT INTO gateway_latest (gateway_id, ts, online, power, battery, rssi)
               SELECT DISTINCT ON (gateway_id) gateway_id, ts, online, power, battery, rssi
               FROM gateway_status ORDER BY gateway_id, ts DESC"""
        )
        # Two alarms per compartment every 30 days: one acknowledged in 10 minutes, one after 50
        # (escalated to level 2); both resolved an hour later and closed.
        conn.execute(
            """INSERT INTO alarms (kind, severity, unit_id, equipment_id, compartment_id, state, condition_since,
                                   raised_at, acknowledged_at, ack_channel, resolved_at, closed_at, value, t_min, t_max)
               SELECT 'high', 'critical', e.unit_id, e.id, c.id, 'closed', t0, t0 + interval '5 minutes',
                      t0 + CASE k WHEN 0 THEN interval '15 minutes' ELSE interval '55 minutes' END, 'web',
                      t0 + interval '1 hour', t0 + interval '2 hours', 9.5, 2, 8
               FROM compartments c JOIN equipment e ON e.id = c.equipment_id
               CROSS JOIN LATERAL (
                   SELECT k, %(start)s::timestamptz + (c.id %% 600) * interval '1 hour' + k * interval '13 days'
                              + m * interval '30 days' AS t0
                   FROM generate_series(0, 1) k, generate_series(0, %(months)s) m
               ) a
               WHERE a.t0 < now() - interval '3 hours'""",
            {"start": start, "months": max(0, int((datetime.now(UTC) - start).days // 30))},
        )
        conn.execute(
            """INSERT INTO notification_outbox (alarm_id, step, channel, target, levels, created_at, due_at, sent_at)
               SELECT id, 'level2', 'webhook', 'bench', '{1,2}', raised_at + interval '30 minutes',
                      raised_at + interval '30 minutes', raised_at + interval '30 minutes'
               FROM alarms WHERE acknowledged_at - raised_at > interval '30 minutes'"""
        )
        conn.execute("UPDATE users SET password_hash = %s WHERE unit_id = 1", (hash_password(PASSWORD),))
        conn.commit()


def thirty_days() -> dict[str, str]:
    end = datetime.now(UTC)
    return {"start": (end - timedelta(days=30)).isoformat(), "end": end.isoformat()}


def median_max(values: list[float]) -> str:
    return f"{statistics.median(values):7.0f} / {max(values):7.0f}"


def one_size(server_url: str, probes: int, days: int, interval: int, runs: int) -> dict[str, list[float]]:
    name = f"cc_bench_queries_{os.getpid()}_{probes}"
    db.create_database(server_url, name)
    url = db.with_database(server_url, name)
    out: dict[str, list[float]] = {}
    try:
        migrate(url)
        t0 = time.perf_counter()
        units, _, start = build_tree(url, probes, days, interval)
        add_state(url, start)
        refresh_aggregates(url)
        with db.connect(url, autocommit=True) as conn:
            conn.execute("VACUUM ANALYZE")
            n = conn.execute("SELECT count(*) FROM probe_readings").fetchone()
            alarms = conn.execute("SELECT count(*) FROM alarms").fetchone()
        print(
            f"\n== {probes} 个探头 × {days} 天（每 {interval} 分钟）：{n[0] if n else 0:,} 条读数，"
            f"{alarms[0] if alarms else 0:,} 条报警；准备 {time.perf_counter() - t0:.0f} s"
        )
        province = units[0]

        def run(label: str, fn: Callable[[], object], target: float | None = None) -> None:
            fn()  # warm the cache: the figures are for a running system, not a cold start
            times = timed(fn, runs)
            out[label] = times
            goal = f"  目标 < {target:.0f}" if target else ""
            print(f"  {label:<34} {median_max(times)}{goal}")

        print("  （中位数 / 最大，毫秒）")

        # 1. The board for the whole province.
        def board_latest() -> None:
            with db.connect(url) as conn:
                board.tiles(conn, province, datetime.now(UTC))

        raw_tiles = board._TILES.replace(
            "LEFT JOIN probe_latest l ON l.probe_id = b.probe_id",
            """LEFT JOIN LATERAL (SELECT ts, t FROM probe_readings r WHERE r.probe_id = b.probe_id
                                  ORDER BY ts DESC LIMIT 1) l ON true""",
        )
        assert raw_tiles != board._TILES

        def board_raw() -> None:
            with db.connect(url) as conn:
                conn.execute(raw_tiles, {"scope": province}).fetchall()

        run("看板 全省（最新值表）", board_latest, 300)
        run("看板 全省（原始读数取最新）", board_raw)
        with api_client(url) as client:
            with db.connect(url) as conn:
                user = conn.execute("SELECT username FROM users WHERE unit_id = %s", (province,)).fetchone()
            assert user is not None
            headers = bearer(client, user[0], PASSWORD)

            def board_http() -> None:
                r = client.get("/api/v1/board", headers=headers)
                assert r.status_code == 200, r.text

            run("看板 全省 API（含 JSON）", board_http, 300)

            # 2. One device's 30-day chart: a township fridge in the middle of the tree.
            with db.connect(url) as conn:
                comp = conn.execute(
                    """SELECT c.id FROM compartments c JOIN equipment e ON e.id = c.equipment_id
                       WHERE e.unit_id = %s""",
                    (units[len(units) // 2],),
                ).fetchone()
            assert comp is not None
            cid = comp[0]

            def chart(source: str) -> Callable[[], object]:
                def go() -> None:
                    end = datetime.now(UTC)
                    start = end - timedelta(days=30)
                    with db.connect(url) as conn:
                        row = series.compartment_row(conn, cid)
                        assert row is not None
                        if source == "aggregates":
                            series.compartment_series(conn, row, start, end, end)
                            return
                        bindings = [
                            series.Binding(r["probe_id"], r["gateway_id"], r["lo"], r["hi"])
                            for r in fetch_all(conn, series._BINDINGS, {"id": cid, "start": start, "end": end})
                        ]
                        series.temperature_trace(conn, cid, bindings, start, end, "raw", timedelta(minutes=30))

                return go

            def chart_http() -> None:
                r = client.get(f"/api/v1/compartments/{cid}/series", headers=headers, params=thirty_days())
                assert r.status_code == 200 and r.json()["source"] == "hourly", r.text

            run("30 天曲线（小时聚合，整页数据）", chart("aggregates"), 500)
            run("30 天曲线（原始读数 + 最值抽稀）", chart("raw"))
            run("30 天曲线 API（含 JSON）", chart_http, 500)

            # 3. A city's monthly report: the current month (provisional, computed live, never kept),
            # so every run does the whole computation.
            city = units[1]
            now = datetime.now(UTC)
            month = current_month(now)
            period = month_period(month, now)
            with db.connect(url) as conn:
                probes_in_city = conn.execute(
                    """SELECT count(*) FROM unit_tree t JOIN probes p ON p.unit_id = t.descendant_id
                       WHERE t.ancestor_id = %s""",
                    (city,),
                ).fetchone()
            print(
                f"  （月报：{probes_in_city[0] if probes_in_city else 0} 个探头的市，"
                f"{period.label} 月 {period.start:%m-%d} 至 {period.cut:%m-%d %H:%M}）"
            )

            def report_aggregates() -> None:
                with db.connect(url) as conn:
                    compute(conn, city, month, datetime.now(UTC))
                    conn.rollback()

            def report_raw() -> None:
                # Baseline: only the temperature part of the report (count, min, max, mean and readings
                # out of range per compartment), straight from the readings.
                with db.connect(url) as conn:
                    conn.execute(
                        """SELECT r.compartment_id, count(*), min(r.t), max(r.t), avg(r.t),
                                  count(*) FILTER (WHERE r.t > c.t_max OR r.t < c.t_min)
                           FROM probe_readings_attributed r JOIN compartments c ON c.id = r.compartment_id
                           JOIN equipment e ON e.id = c.equipment_id
                           WHERE e.unit_id IN (SELECT descendant_id FROM unit_tree WHERE ancestor_id = %s)
                             AND r.ts >= %s AND r.ts < %s
                           GROUP BY 1""",
                        (city, period.start, period.cut),
                    ).fetchall()

            def report_http() -> None:
                r = client.get(
                    "/api/v1/reports/monthly", headers=headers, params={"unit_id": city, "month": period.label}
                )
                assert r.status_code == 200, r.text

            run("市月报（聚合 + 越限小时的读数）", report_aggregates, 3000)
            run("市月报 仅温度部分（原始读数）", report_raw)
            run("市月报 API（含 JSON）", report_http, 3000)
        return out
    finally:
        db.drop_database(server_url, name)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="1000,3000", help="探头数（逗号分隔，每个规模一个数据库）")
    ap.add_argument("--days", type=int, default=30)
    ap.add_argument("--interval", type=int, default=5, help="读数间隔（分钟）")
    ap.add_argument("--runs", type=int, default=5)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="coldchain-bench-queries-") as tmp:
        pg = services.find_postgres(os.environ.get("COLDCHAIN_BENCH_DATABASE_URL"), Path(tmp), prefer_docker=False)
        print(f"PostgreSQL {pg.source}")
        try:
            for size in (int(s) for s in args.sizes.split(",")):
                one_size(pg.url, size, args.days, args.interval, args.runs)
        finally:
            pg.stop()


if __name__ == "__main__":
    main()
