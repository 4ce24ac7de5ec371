"""Ledger throughput and the time of a full lot trace, on a database of its own.

    .venv/bin/python bench/ledger.py [--units 500] [--days 365] [--interval 5] [--movements 4000] [--threads 4]

1. Movements per second, every one booked through ``cc_post_movement`` (balance row locked, available
   stock checked, backdating checked, document number issued), one transaction each, from
   ``--threads`` connections over many units and lots. Baseline, same run and same threads: the same
   rows INSERTed straight into a copy of ``stock_movements`` with no balance at all.
   A second figure puts every thread on one single balance (the worst case: fully serialised).
2. A lot held by ``--units`` units (province → cities → counties → townships, each with a monitored
   fridge whose probe reported every ``--interval`` minutes for ``--days`` days), traced end to end:
   custody chain, per-interval temperatures with exact out-of-range minutes (from the excursion
   spans of sql/migrations/0009_excursions.sql, materialised by the first refresh), vaccinations,
   holders.
   Timed as the query layer (:func:`inventory.trace.trace_lot`) and as the API request with its JSON.
   Baseline, same run: the same per-interval min/max/mean read from the raw readings.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from apihelp import World, api_client, bearer
from ledgerhelp import build_catalogue

from analytics.aggregates import refresh_aggregates
from coldchain import services
from coldchain.core import db
from coldchain.core.migrate import migrate
from inventory import posting, receipts, trace, transfers
from inventory.lots import load_lot
from registry.auth import hash_password

CITIES, COUNTIES_PER_CITY = 10, 5


def build_tree(url: str, holders: int, days: int, interval: int) -> tuple[list[int], dict[int, int], datetime]:
    """Units, one fridge compartment and probe each, and ``days`` of readings; returns unit ids in
    tree order (province, cities, counties, townships), compartment per unit, and the start."""
    start = datetime.now(UTC).replace(minute=0, second=0, microsecond=0) - timedelta(days=days)
    townships = holders - 1 - CITIES - CITIES * COUNTIES_PER_CITY
    with db.connect(url) as conn:
        conn.execute("INSERT INTO units (code, name, level) VALUES ('6100000000', '省疾控', 'province')")
        conn.execute(
            """INSERT INTO units (code, name, level, parent_id)
               SELECT lpad((6101 + c)::text, 4, '0') || '000000', '市' || c, 'city', 1 FROM generate_series(0, %s) c""",
            (CITIES - 1,),
        )
        conn.execute(
            """INSERT INTO units (code, name, level, parent_id)
               SELECT substr(p.code, 1, 4) || lpad((k + 1)::text, 2, '0') || '0000', p.name || '县' || k, 'county', p.id
               FROM units p CROSS JOIN generate_series(0, %s) k WHERE p.level = 'city' ORDER BY p.id, k""",
            (COUNTIES_PER_CITY - 1,),
        )
        conn.execute(
            """INSERT INTO units (code, name, level, parent_id)
               SELECT substr(c.code, 1, 6) || lpad((n + 1)::text, 4, '0'), c.name || '乡' || n, 'township', c.id
               FROM (SELECT id, code, name, row_number() OVER (ORDER BY id) - 1 AS rn FROM units
                     WHERE level = 'county') c
               JOIN generate_series(0, %(n)s - 1) n ON n %% %(counties)s = c.rn""",
            {"n": townships, "counties": CITIES * COUNTIES_PER_CITY},
        )
        conn.execute(
            """INSERT INTO users (username, real_name, unit_id, role)
               SELECT 'ba_' || code, '业务' || name, id, 'business_admin' FROM units"""
        )
        conn.execute(
            """INSERT INTO equipment (unit_id, kind, name) SELECT id, 'medical_fridge', '医用冷藏柜' FROM units;
               INSERT INTO compartments (equipment_id, name, mode) SELECT id, '冷藏', 'refrigerated' FROM equipment;
               INSERT INTO gateways (serial, unit_id) SELECT 'G' || code, id FROM units;
               INSERT INTO probes (serial, unit_id) SELECT 'P' || code, id FROM units;"""
        )
        conn.execute(
            """INSERT INTO probe_bindings (probe_id, compartment_id, gateway_id, valid)
               SELECT p.id, c.id, g.id, tstzrange(%s, NULL)
               FROM probes p JOIN equipment e ON e.unit_id = p.unit_id JOIN compartments c ON c.equipment_id = e.id
               JOIN gateways g ON g.unit_id = p.unit_id""",
            (start - timedelta(days=1),),
        )
        # A fridge at 5 ℃ ± 1.5 through the day, and for each probe every tenth day a 20-minute
        # excursion to 9.5 ℃ — enough for the trace to find and measure out-of-range minutes.
        conn.execute(
            """INSERT INTO probe_readings (probe_id, ts, t)
               SELECT p.id, s.ts,
                      CASE WHEN (extract(epoch FROM s.ts - %(start)s)::bigint / 60) %% 14400 BETWEEN p.id * 37 %% 1400
                                AND p.id * 37 %% 1400 + 15 THEN 9.5
                           ELSE 5 + 1.5 * sin(extract(epoch FROM s.ts) / 13751.0 + p.id) END
               FROM probes p CROSS JOIN generate_series(%(start)s, %(end)s, %(step)s) AS s(ts)""",
            {"start": start, "end": datetime.now(UTC) - timedelta(minutes=1), "step": timedelta(minutes=interval)},
        )
        units = [r[0] for r in conn.execute("SELECT id FROM units ORDER BY cc_unit_level_rank(level), id").fetchall()]
        comps: dict[int, int] = dict(
            conn.execute(
                "SELECT e.unit_id, c.id FROM compartments c JOIN equipment e ON e.id = c.equipment_id"
            ).fetchall()
        )
        conn.commit()
    return units, comps, start


def flow_lot(url: str, lot: int, units: list[int], comps: dict[int, int], start: datetime) -> None:
    """The lot goes down the whole tree within the first half of the period and stays everywhere."""
    with db.connect(url) as conn:
        level: dict[int, str] = dict(conn.execute("SELECT id, level FROM units").fetchall())
        parent: dict[int, int | None] = dict(conn.execute("SELECT id, parent_id FROM units").fetchall())
        user: dict[int, int] = dict(conn.execute("SELECT unit_id, id FROM users").fetchall())
        children: dict[int, list[int]] = {}
        for u in units:
            up = parent[u]
            if up is not None:
                children.setdefault(up, []).append(u)
        total = 10 * len(units) * 4
        receipts.receive(
            conn,
            user[units[0]],
            units[0],
            [receipts.ReceiptLine(lot, total, comps[units[0]])],
            start + timedelta(hours=1),
            "生产企业",
        )
        span = datetime.now(UTC) - start
        order = {"province": 0, "city": 1, "county": 2, "township": 3}
        for i, u in enumerate(units):
            kids = children.get(u, [])
            if not kids:
                continue
            on_hand = conn.execute(
                "SELECT on_hand FROM stock_balances WHERE unit_id = %s AND lot_id = %s", (u, lot)
            ).fetchone()
            assert on_hand is not None
            share = on_hand[0] // (len(kids) + 1)
            for j, kid in enumerate(kids):
                shipped = start + span * (0.05 + 0.12 * order[level[u]]) + timedelta(hours=j, minutes=i % 60)
                t = transfers.ship(conn, user[u], "issue", u, kid, lot, share, shipped)
                transfers.receive_transfer(
                    conn, user[kid], t["id"], share, 0, shipped + timedelta(hours=6), compartment_id=comps[kid]
                )
        sites = [u for u in units if level[u] == "township"]
        with conn.cursor() as cur:
            cur.executemany(
                "INSERT INTO vaccinations (unit_id, lot_id, vaccinated_at, vaccinee_ref) VALUES (%s, %s, %s, %s)",
                [
                    (s, lot, start + span * 0.9 + timedelta(minutes=k), f"V{s:06d}{k:04d}")
                    for s in sites
                    for k in range(20)
                ],
            )
        conn.commit()


def timed(fn: Callable[[], object], runs: int) -> list[float]:
    out = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        out.append((time.perf_counter() - t0) * 1000)
    return out


def throughput(
    url: str, lots: list[int], units: list[int], total: int, threads: int, checked: bool, single: bool = False
) -> float:
    """Movements per second from ``threads`` connections, one transaction per movement."""
    per = total // threads
    barrier = threading.Barrier(threads + 1)
    errors: list[BaseException] = []

    def work(k: int) -> None:
        try:
            with db.connect(url) as conn:
                barrier.wait()
                for n in range(per):
                    pair = n // 2  # a receipt then a usage on the same balance
                    unit = units[0] if single else units[(k * per + pair) % len(units)]
                    lot = lots[0] if single else lots[pair % len(lots)]
                    # Receipts and usage alternate, so balances rise and fall but never fail.
                    qty = 5 if n % 2 == 0 else -3
                    if checked:
                        posting.post(
                            conn,
                            "receipt" if qty > 0 else "usage",
                            unit,
                            lot,
                            qty,
                            datetime.now(UTC),
                            None,
                            supplier="bench" if qty > 0 else None,
                        )
                    else:
                        conn.execute(
                            """INSERT INTO bench_plain_movements (doc_no, kind, unit_id, lot_id, quantity, occurred_at)
                               VALUES (%s, %s, %s, %s, %s, now())""",
                            (f"B{k}-{n}", "receipt" if qty > 0 else "usage", unit, lot, qty),
                        )
                    conn.commit()
        except BaseException as exc:
            errors.append(exc)
            raise

    workers = [threading.Thread(target=work, args=(k,)) for k in range(threads)]
    for w in workers:
        w.start()
    barrier.wait()
    t0 = time.perf_counter()
    for w in workers:
        w.join()
    elapsed = time.perf_counter() - t0
    if errors:
        raise errors[0]
    return per * threads / elapsed


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--units", type=int, default=500, help="持有该批号的单位数")
    ap.add_argument("--days", type=int, default=365)
    ap.add_argument("--interval", type=int, default=5, help="读数间隔（分钟）")
    ap.add_argument("--movements", type=int, default=4000)
    ap.add_argument("--threads", type=int, default=4)
    ap.add_argument("--runs", type=int, default=5)
    args = ap.parse_args()

    with tempfile.TemporaryDirectory(prefix="coldchain-bench-ledger-") as tmp:
        pg = services.find_postgres(os.environ.get("COLDCHAIN_BENCH_DATABASE_URL"), Path(tmp), prefer_docker=False)
        name = f"cc_bench_ledger_{os.getpid()}"
        db.create_database(pg.url, name)
        url = db.with_database(pg.url, name)
        try:
            migrate(url)
            t0 = time.perf_counter()
            units, comps, start = build_tree(url, args.units, args.days, args.interval)
            t1 = time.perf_counter()
            refreshed = refresh_aggregates(url)
            refresh_s = time.perf_counter() - t1
            with db.connect(url) as conn:
                readings = conn.execute("SELECT count(*) FROM probe_readings").fetchone()
            with db.connect(url, autocommit=True) as conn:
                conn.execute("VACUUM ANALYZE")
            print(
                f"数据：{len(units)} 个单位，{readings[0] if readings else 0:,} 条读数"
                f"（{args.days} 天，每 {args.interval} 分钟），准备用时 {time.perf_counter() - t0:.0f} s；"
                f"PostgreSQL {pg.source}"
            )
            print(
                f"首次刷新（小时 / 日聚合与超温时段，逐日提交）{refresh_s:.0f} s，"
                f"物化超温时段 {refreshed.excursion_spans:,} 段"
            )

            with db.connect(url) as conn:
                user_rows: dict[int, int] = dict(conn.execute("SELECT unit_id, id FROM users").fetchall())
                ba_p = conn.execute("SELECT id FROM users WHERE unit_id = %s", (units[0],)).fetchone()
            world = World(url, units={"P": units[0]}, users={"ba_P": ba_p[0] if ba_p else user_rows[units[0]]})
            cat = build_catalogue(world)
            lot = cat.lots["hepb"]
            flow_lot(url, lot, units, comps, start)

            # 1. Throughput: fresh lots so that the trace lot is untouched.
            with db.connect(url) as conn:
                bench_lots = [
                    r[0]
                    for r in conn.execute(
                        """INSERT INTO lots (spec_id, lot_no, production_date, expiry_date, release_no, unit_id)
                       SELECT %s, 'BENCH' || n, %s, %s, 'SJ' || n, %s FROM generate_series(1, 20) n RETURNING id""",
                        (cat.specs["hepb"], date(2026, 1, 1), date(2030, 1, 1), units[0]),
                    ).fetchall()
                ]
                conn.execute("CREATE TABLE bench_plain_movements (LIKE stock_movements INCLUDING DEFAULTS)")
                conn.execute("ALTER TABLE bench_plain_movements ALTER COLUMN id DROP DEFAULT")
                conn.execute("CREATE SEQUENCE bench_seq OWNED BY bench_plain_movements.id")
                conn.execute("ALTER TABLE bench_plain_movements ALTER COLUMN id SET DEFAULT nextval('bench_seq')")
                conn.commit()
            # Usage is booked at townships only in the API, but post() is the ledger core: any unit.
            plain = throughput(url, bench_lots, units, args.movements, args.threads, checked=False)
            checked = throughput(url, bench_lots, units, args.movements, args.threads, checked=True)
            single = throughput(url, bench_lots, units, args.movements // 2, args.threads, checked=True, single=True)
            print(f"记账吞吐（{args.threads} 个连接，每条一个事务）：")
            print(f"  基线 直接 INSERT（无余额）      {plain:8.0f} 条/秒")
            print(f"  cc_post_movement（多单位批号）  {checked:8.0f} 条/秒  = 基线 × {checked / plain:.2f}  目标 ≥ 500")
            print(f"  cc_post_movement（同一余额）    {single:8.0f} 条/秒  （全部串行在一行锁上）")

            # 2. Trace.
            now = datetime.now(UTC)
            with db.connect(url) as conn:
                lot_row = load_lot(conn, lot)
                result = trace.trace_lot(conn, lot_row, units[0], now)
                conn.rollback()
            segments = sum(len(c["storage"]) for c in result["custody"])
            day_rows = sum(len(s["days"]["day"]) for c in result["custody"] for s in c["storage"])
            print(
                f"追溯：{len(result['custody'])} 段保管（含在途），{segments} 个温区区间，{day_rows} 个日数据点，"
                f"超温 {result['minutes_out_of_range']:.0f} 分钟，{len(result['holders'])} 个持有单位，"
                f"接种 {result['vaccinations_total']} 人次"
            )

            def query_layer() -> None:
                with db.connect(url) as conn:
                    trace.trace_lot(conn, lot_row, units[0], datetime.now(UTC))
                    conn.rollback()

            intervals = [
                (s["compartment_id"], c["start"], c["end"] or now) for c in result["custody"] for s in c["storage"]
            ]

            def raw_baseline() -> None:
                with db.connect(url) as conn:
                    for comp, lo, hi in intervals:
                        conn.execute(
                            """SELECT count(*), min(t), max(t), avg(t),
                                      sum(CASE WHEN t > 8 OR t < 2 THEN 1 ELSE 0 END)
                               FROM probe_readings r JOIN probe_bindings b ON b.probe_id = r.probe_id
                               WHERE b.compartment_id = %s AND r.ts >= %s AND r.ts < %s""",
                            (comp, lo, hi),
                        ).fetchone()

            q = timed(query_layer, args.runs)
            print("整批追溯用时（中位数 / 最大，毫秒）：")
            print(f"  查询层 trace_lot（聚合 + 边界读数）  {statistics.median(q):7.0f} / {max(q):7.0f}  目标 < 1000")
            with api_client(url) as client:
                with db.connect(url) as conn:
                    conn.execute(
                        "UPDATE users SET password_hash = %s WHERE unit_id = %s",
                        (hash_password("Bench@2026pw"), units[0]),
                    )
                    username = conn.execute("SELECT username FROM users WHERE unit_id = %s", (units[0],)).fetchone()
                    conn.commit()
                assert username is not None
                headers = bearer(client, username[0], "Bench@2026pw")

                def http() -> None:
                    r = client.get(f"/api/v1/trace/lots/{lot}", headers=headers)
                    assert r.status_code == 200, r.text

                a = timed(http, args.runs)
            b = timed(raw_baseline, 1)
            print(f"  API GET /trace/lots/{{id}}（含 JSON）  {statistics.median(a):7.0f} / {max(a):7.0f}")
            print(
                f"  基线 同样区间直接扫原始读数          {b[0]:7.0f}"
                f"          = 查询层 × {b[0] / statistics.median(q):.1f}"
            )
        finally:
            db.drop_database(pg.url, name)
            pg.stop()


if __name__ == "__main__":
    main()
