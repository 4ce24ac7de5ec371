"""What the analysts' views hold and how they are documented (migration 0007, docs/analyst.md),
on plain PostgreSQL, connected as a real analyst role: a Chinese comment on every view and column
and every view in the guide, index use of time-bounded queries through the security barrier, the
content of individual views, and every ``-- plain`` query of the guide, some of them checked against
a reference computation.

The seed data (tests/analysthelp.py) is plain SQL on purpose: tests/analytics/test_analytics_oracle.py
loads the very same statements into the WASM TimescaleDB and compares the guide's results across
the two paths.
"""

from __future__ import annotations

import itertools
import math
import re
from datetime import datetime, timedelta
from fractions import Fraction
from typing import Any

import pytest
from analysthelp import (
    DOC,
    TIME_BOUNDED,
    VIEWS,
    Analysts,
    connect_as,
    doc_blocks,
    index_conditions,
    named_block,
    rows,
    time_indexes,
    unreached_indexes,
)

from alarms.rules import KIND_NAMES, KIND_SEVERITY, SEVERITY_NAMES
from coldchain.core import db

# ---------------------------------------------------------------------------------------------
# Documentation in the catalogue


def test_every_view_and_every_column_has_a_chinese_comment(analysts: Analysts) -> None:
    with db.connect(analysts.url) as conn:
        views = conn.execute(
            """SELECT c.relname, c.relkind, obj_description(c.oid, 'pg_class')
               FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
               WHERE n.nspname = 'analytics' ORDER BY 1"""
        ).fetchall()
        columns = conn.execute(
            """SELECT c.relname, a.attname, d.description
               FROM pg_class c
               JOIN pg_namespace n ON n.oid = c.relnamespace
               JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
               LEFT JOIN pg_description d ON d.objoid = c.oid AND d.classoid = 'pg_class'::regclass
                                          AND d.objsubid = a.attnum
               WHERE n.nspname = 'analytics' ORDER BY 1, a.attnum"""
        ).fetchall()
    assert {name for name, _, _ in views} == VIEWS
    assert {kind for _, kind, _ in views} == {"v"}
    chinese_first = re.compile(r"^[\u4e00-\u9fff]")
    for name, _, comment in views:
        assert comment and chinese_first.match(comment), f"视图 analytics.{name} 缺少中文注释：{comment!r}"
    assert len(columns) > 200
    for view, column, comment in columns:
        assert comment and chinese_first.match(comment), f"analytics.{view}.{column} 缺少中文注释：{comment!r}"


def test_the_guide_lists_every_view(analysts: Analysts) -> None:
    listed = set(re.findall(r"^\| `analytics\.([a-z_]+)` \|", DOC.read_text(encoding="utf-8"), re.M))
    assert listed == VIEWS


# ---------------------------------------------------------------------------------------------
# Time-bounded queries reach the indexes


def test_time_bounded_queries_reach_the_indexes(analysts: Analysts) -> None:
    """The analyst's time condition must reach the scan through the barrier as an index condition.
    Sequential scans are switched off because the test tables are small: what is checked is that
    the condition can be used, not the planner's taste for tiny tables. And the check can fail:
    with index scans switched off instead, every view misses it."""
    with db.connect(analysts.url) as conn:
        indexes = time_indexes(conn)
    with connect_as(analysts.url, analysts.k1) as conn:

        def plans() -> dict[str, dict[str, Any]]:
            found = {}
            for view, (_, query) in TIME_BOUNDED.items():
                row = conn.execute(f"EXPLAIN (FORMAT JSON) {query}".encode()).fetchone()
                assert row is not None
                found[view] = row[0][0]["Plan"]
            return found

        conn.execute("SET enable_seqscan = off")
        indexed = plans()
        conn.execute("SET enable_seqscan = on; SET enable_indexscan = off; SET enable_bitmapscan = off")
        scanned = plans()
    assert unreached_indexes(indexed, indexes) == [], indexed
    assert unreached_indexes(scanned, indexes) == list(TIME_BOUNDED)


def test_the_index_check_takes_the_hypertables_index_or_a_chunks_copy_and_nothing_else() -> None:
    cond = "((ts >= '2026-11-21 06:00:00+00'::timestamp with time zone) AND (ts < '2026-11-21 07:00:00+00'))"

    def scan(relation: str, index: str | None, bitmap: bool = False) -> dict[str, Any]:
        if index is None:
            return {"Node Type": "Seq Scan", "Relation Name": relation, "Filter": cond}
        if bitmap:
            return {
                "Node Type": "Bitmap Heap Scan",
                "Relation Name": relation,
                "Recheck Cond": cond,
                "Plans": [{"Node Type": "Bitmap Index Scan", "Index Name": index, "Index Cond": cond}],
            }
        return {"Node Type": "Index Scan", "Relation Name": relation, "Index Name": index, "Index Cond": cond}

    def reached(*nodes: dict[str, Any]) -> bool:
        plan = {"Node Type": "Nested Loop", "Plans": [{"Node Type": "Append", "Plans": list(nodes)}]}
        return bool(index_conditions(plan, "probe_readings", "probe_readings_ts_idx"))

    assert reached(scan("probe_readings", "probe_readings_ts_idx"))
    assert reached(scan("probe_readings", "probe_readings_ts_idx", bitmap=True))
    assert reached(scan("_hyper_1_3_chunk", "_hyper_1_3_chunk_probe_readings_ts_idx"))
    assert reached(scan("_hyper_1_2_chunk", "_hyper_1_2_chunk_probe_readings_ts_idx", bitmap=True))
    assert not reached(scan("probe_readings", None))
    assert not reached(scan("_hyper_1_3_chunk", None))
    assert not reached(scan("probe_readings", "probe_readings_pkey"))
    assert not reached(scan("_hyper_1_3_chunk", "3_3_probe_readings_pkey"))
    assert not reached(scan("_hyper_1_3_chunk", "_hyper_1_2_chunk_probe_readings_ts_idx"))  # another chunk's
    assert not reached(scan("_hyper_2_5_chunk", "_hyper_2_5_chunk_gateway_status_ts_idx"))
    assert not reached(scan("compress_hyper_5_8_chunk", "compress_hyper_5_8_chunk_probe_readings_ts_idx"))


# ---------------------------------------------------------------------------------------------
# Content of individual views


def test_readings_flag_excursions_against_the_compartment_limits(analysts: Analysts) -> None:
    """Strictly outside the limits; a frozen compartment has no lower limit and is never "low"."""
    got = rows(
        analysts.url,
        analysts.k1,
        "SELECT mode, out_of_range, count(*) FROM analytics.readings "
        "WHERE ts >= '2026-11-21 00:00+08' AND ts < '2026-11-22 00:00+08' GROUP BY 1, 2 ORDER BY 1, 2",
    )
    assert got == [("frozen", False, 288), ("refrigerated", False, 280), ("refrigerated", True, 8)]


def test_excursions_hold_the_out_of_range_readings(analysts: Analysts) -> None:
    """Each out-of-range reading of a day belongs to one span; a span lasts at least as long as
    its readings are apart and at most 30 minutes past its last one."""
    by_readings = rows(
        analysts.url,
        analysts.k1,
        "SELECT unit_name, count(*) FROM analytics.readings WHERE out_of_range "
        "AND ts >= '2026-11-21 00:00+08' AND ts < '2026-11-22 00:00+08' GROUP BY 1 ORDER BY 1",
    )
    by_spans = rows(
        analysts.url,
        analysts.k1,
        "SELECT unit_name, sum(readings) FROM analytics.excursions "
        "WHERE started_at >= '2026-11-21 00:00+08' AND started_at < '2026-11-22 00:00+08' GROUP BY 1 ORDER BY 1",
    )
    assert by_readings and by_spans == by_readings
    assert rows(
        analysts.url,
        analysts.k1,
        "SELECT count(*) FROM analytics.excursions WHERE minutes > 0 "
        "AND minutes <= 30 * readings AND (max_t > t_max OR min_t < t_min)",
    ) == rows(analysts.url, analysts.k1, "SELECT count(*) FROM analytics.excursions")


def test_alarm_kinds_are_those_of_the_rules(analysts: Analysts) -> None:
    got = rows(
        analysts.url, analysts.unscoped, "SELECT kind, kind_name, severity, severity_name FROM analytics.alarm_kinds"
    )
    assert sorted(got) == sorted(
        (kind, name, KIND_SEVERITY[kind], SEVERITY_NAMES[KIND_SEVERITY[kind]]) for kind, name in KIND_NAMES.items()
    )


def test_alarms_carry_response_times_and_levels(analysts: Analysts) -> None:
    got = rows(
        analysts.url,
        analysts.k1,
        """SELECT kind_name, state_name, minutes_to_acknowledge, acknowledged_by_level, escalated_to_level,
                  closure_cause, unit_name, equipment_name, compartment_name, probe_serial
           FROM analytics.alarms ORDER BY raised_at""",
    )
    assert [(r[0], r[1], float(r[2]) if r[2] is not None else None, *r[3:]) for r in got] == [
        (
            "温度超上限",
            "已关闭",
            15.0,
            2,
            2,
            "取疫苗时门未关严",
            "电子城街道社区卫生服务中心",
            "海尔双温冰箱",
            "冷藏",
            "108601",
        ),
        (
            "探头无数据",
            "已恢复",
            None,
            None,
            None,
            None,
            "电子城街道社区卫生服务中心",
            "海尔双温冰箱",
            "冷藏",
            "108601",
        ),
    ]


def test_ledger_views_name_vaccines_lots_and_counterparties(analysts: Analysts) -> None:
    movements = rows(
        analysts.url,
        analysts.k1,
        """SELECT kind_name, unit_name, counterparty_unit_name, vaccine_name, lot_no, quantity, doses
           FROM analytics.stock_movements ORDER BY occurred_at""",
    )
    assert [m[0] for m in movements] == ["采购入库", "出库", "调拨收货", "采购入库", "接种使用"]
    assert movements[1][1:] == (
        "雁塔区疾病预防控制中心",
        "电子城街道社区卫生服务中心",
        "重组乙型肝炎疫苗（酿酒酵母）",
        "202605A01",
        -50,
        -50,
    )
    balances = rows(
        analysts.url,
        analysts.k1,
        "SELECT unit_name, lot_no, on_hand, available FROM analytics.stock_balances ORDER BY 1, 2",
    )
    assert balances == [
        ("电子城街道社区卫生服务中心", "202605A01", 38, 38),
        ("雁塔区疾病预防控制中心", "202605A01", 150, 150),
        ("雁塔区疾病预防控制中心", "202608F04", 30, 30),
    ]


# ---------------------------------------------------------------------------------------------
# The guide


def test_every_plain_query_of_the_guide_runs_as_an_analyst(analysts: Analysts) -> None:
    blocks = doc_blocks()
    kinds = [b.kind for b in blocks]
    assert kinds.count("plain") >= 15 and "timescaledb" in kinds
    toolkit = "\n".join(b.sql for b in blocks if b.kind == "toolkit")
    for function in ("time_weight(", "heartbeat_agg(", "state_agg(", "lttb("):
        assert function in toolkit, f"指南缺少 timescaledb-toolkit 的 {function} 示例"
    with connect_as(analysts.url, analysts.k1) as conn:
        for block in blocks:
            if block.kind != "plain":
                continue
            cur = conn.execute(block.sql.encode())
            if cur.description is not None:
                assert cur.fetchall(), f"指南中的查询 {block.name} 在测试数据上没有返回任何行"


def _reference_lttb(points: list[tuple[Fraction, Fraction]], threshold: int) -> list[int]:
    """Steinarsson's Largest-Triangle-Three-Buckets, as timescaledb-toolkit implements it."""
    n = len(points)
    if n <= threshold:
        return list(range(n))
    every = Fraction(n - 2, threshold - 2)
    chosen, a = [0], 0
    for i in range(threshold - 2):
        nxt = points[math.floor((i + 1) * every) + 1 : min(math.floor((i + 2) * every) + 1, n)]
        avg_x = sum((p[0] for p in nxt), Fraction(0)) / len(nxt)
        avg_y = sum((p[1] for p in nxt), Fraction(0)) / len(nxt)
        ax, ay = points[a]
        best, best_area = -1, Fraction(-1)
        for j in range(math.floor(i * every) + 1, math.floor((i + 1) * every) + 1):
            bx, by = points[j]
            area = abs((ax - avg_x) * (by - ay) - (ax - bx) * (avg_y - ay))
            if area > best_area:
                best, best_area = j, area
        chosen.append(best)
        a = best
    chosen.append(n - 1)
    return chosen


def test_the_plain_equivalents_compute_what_the_toolkit_would(analysts: Analysts) -> None:
    day = ("2026-11-21 00:00+08", "2026-11-22 00:00+08")
    readings = rows(
        analysts.url,
        analysts.k1,
        "SELECT ts, t FROM analytics.readings WHERE unit_name = '电子城街道社区卫生服务中心' "
        "AND compartment_name = '冷藏' AND ts >= %s AND ts < %s ORDER BY ts",
        day,
    )
    assert len(readings) == 288

    # lttb: the same 24 points as the reference algorithm.
    points = [(Fraction(int(ts.timestamp())), Fraction(str(t))) for ts, t in readings]
    expected = [readings[i][0] for i in _reference_lttb(points, 24)]
    assert [r[0] for r in rows(analysts.url, analysts.k1, named_block("lttb"))] == expected

    # time_weight: LOCF and linear averages of the next day, from the raw readings.
    got = {r[0]: (r[1], r[2]) for r in rows(analysts.url, analysts.k1, named_block("time_weight"))}
    for compartment in ("冷藏", "冷冻"):
        series = rows(
            analysts.url,
            analysts.k1,
            "SELECT extract(epoch FROM ts)::float8, t FROM analytics.readings "
            "WHERE unit_name = '电子城街道社区卫生服务中心' AND compartment_name = %s "
            "AND ts >= '2026-11-22 00:00+08' AND ts < '2026-11-23 00:00+08' ORDER BY ts",
            (compartment,),
        )
        pairs = list(itertools.pairwise(series))
        span = series[-1][0] - series[0][0]
        locf = sum(t0 * (x1 - x0) for (x0, t0), (x1, _) in pairs) / span
        linear = sum((t0 + t1) / 2 * (x1 - x0) for (x0, t0), (x1, t1) in pairs) / span
        assert got[compartment] == (pytest.approx(locf), pytest.approx(linear))

    # heartbeat: the silence of 03:00–04:30 is down from 03:05 (10 minutes after 02:55) to 04:30.
    beijing = datetime.fromisoformat("2026-11-22T03:05:00+08:00")
    (dead,) = rows(analysts.url, analysts.k1, named_block("heartbeat"))
    assert dead[:4] == (beijing, beijing + timedelta(minutes=85), timedelta(minutes=85), timedelta(minutes=85))
    assert dead[4] == timedelta(days=1) - timedelta(minutes=85)

    # state durations and timeline: above 8 ℃ from 14:00 to 14:40.
    assert dict(rows(analysts.url, analysts.k1, named_block("state_durations"))) == {
        "正常": timedelta(hours=23, minutes=55) - timedelta(minutes=40),
        "超上限": timedelta(minutes=40),
    }
    timeline = rows(analysts.url, analysts.k1, named_block("state_timeline"))
    assert [(s, a.isoformat(), b.isoformat()) for s, a, b in timeline][1] == (
        "超上限",
        "2026-11-21T06:00:00+00:00",
        "2026-11-21T06:40:00+00:00",
    )

    # gap-filling: empty buckets carry the last value forward and interpolate linearly.
    filled = rows(analysts.url, analysts.k1, named_block("gapfill"))
    assert len(filled) == 16
    gap = [r for r in filled if r[1] is None]
    assert len(gap) == 6
    before, after = filled[3], filled[10]
    for bucket, _, locf_t, interpolated in gap:
        share = (bucket - before[0]) / (after[0] - before[0])
        assert locf_t == before[1]
        assert interpolated == pytest.approx(before[1] + (after[1] - before[1]) * share)
