"""Downsampling (analytics/downsample.py) and the pure parts of analytics/series.py: properties
over generated series, and the cases a chart depends on (spikes kept, swaps covered, gaps broken,
offline and power periods)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from itertools import pairwise

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from analytics.downsample import Bucket, coarsen, lttb, minmax
from analytics.series import (
    Binding,
    Period,
    Status,
    aggregate_trace,
    bucket_ceil,
    bucket_floor,
    choose_source,
    merge_buckets,
    offline_periods,
    plan_pieces,
    power_periods,
    raw_trace,
    with_prev,
)

T0 = datetime(2026, 3, 1, tzinfo=UTC)
MIN = timedelta(minutes=1)

values = st.lists(st.floats(min_value=-90, max_value=60, allow_nan=False), min_size=0, max_size=400)


def _xs(n: int) -> list[float]:
    return [float(i * 60) for i in range(n)]


@settings(max_examples=300, deadline=None)
@given(ys=values, threshold=st.integers(min_value=4, max_value=120))
def test_minmax_properties(ys: list[float], threshold: int) -> None:
    xs = _xs(len(ys))
    kept = minmax(xs, ys, threshold)
    assert len(kept) <= max(threshold, 0)
    assert kept == sorted(set(kept)), "strictly increasing indices: a subsequence, nothing repeated"
    assert all(0 <= i < len(ys) for i in kept)
    if len(ys) <= threshold:
        assert kept == list(range(len(ys)))
    if ys:
        assert kept[0] == 0 and kept[-1] == len(ys) - 1
        assert max(ys[i] for i in kept) == max(ys)
        assert min(ys[i] for i in kept) == min(ys)


@settings(max_examples=300, deadline=None)
@given(ys=values, threshold=st.integers(min_value=3, max_value=120))
def test_lttb_properties(ys: list[float], threshold: int) -> None:
    xs = _xs(len(ys))
    kept = lttb(xs, ys, threshold)
    assert len(kept) <= threshold
    assert kept == sorted(set(kept))
    assert all(0 <= i < len(ys) for i in kept)
    if len(ys) <= threshold:
        assert kept == list(range(len(ys)))
    else:
        assert len(kept) == threshold, "LTTB keeps exactly one point per bucket"
    if ys:
        assert kept[0] == 0 and kept[-1] == len(ys) - 1


def test_spike_survives_minmax() -> None:
    """One reading at +12 ℃ in a month of 5 ℃: the reason the chart is opened."""
    n = 30 * 24 * 60
    ys = [5.0 + 0.1 * (i % 7) for i in range(n)]
    ys[12345] = 12.0
    ys[23456] = -1.0
    kept = minmax(_xs(n), ys, 2000)
    assert len(kept) <= 2000
    assert 12345 in kept and 23456 in kept


def test_lttb_keeps_shape_of_a_step() -> None:
    ys = [4.0] * 500 + [9.0] * 500
    kept = lttb(_xs(1000), ys, 20)
    picked = [ys[i] for i in kept]
    assert 4.0 in picked and 9.0 in picked
    assert picked == sorted(picked), "a step up stays a step up"


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="至少"):
        minmax([0.0, 1.0], [1.0, 2.0], 3)
    with pytest.raises(ValueError, match="至少"):
        lttb([0.0, 1.0], [1.0, 2.0], 2)
    with pytest.raises(ValueError, match="不一致"):
        lttb([0.0, 1.0], [1.0], 10)


def _bucket(i: int, n: int, lo: float, hi: float, total: float) -> Bucket:
    return Bucket(T0 + i * timedelta(hours=1), T0 + (i + 1) * timedelta(hours=1), n, lo, hi, total)


@settings(max_examples=200, deadline=None)
@given(
    rows=st.lists(
        st.tuples(st.integers(1, 20), st.floats(-20, 20, allow_nan=False), st.floats(0, 10, allow_nan=False)),
        min_size=1,
        max_size=300,
    ),
    threshold=st.integers(1, 50),
)
def test_coarsen_is_exact(rows: list[tuple[int, float, float]], threshold: int) -> None:
    buckets = [_bucket(i, n, lo, lo + width, n * (lo + width / 2)) for i, (n, lo, width) in enumerate(rows)]
    out = coarsen(buckets, threshold)
    assert len(out) <= threshold
    assert sum(b.n for b in out) == sum(b.n for b in buckets)
    assert min(b.min_t for b in out) == min(b.min_t for b in buckets)
    assert max(b.max_t for b in out) == max(b.max_t for b in buckets)
    assert sum(b.sum_t for b in out) == pytest.approx(sum(b.sum_t for b in buckets))
    assert out[0].start == buckets[0].start and out[-1].end == buckets[-1].end
    if len(buckets) <= threshold:
        assert out == buckets


def test_choose_source_and_buckets() -> None:
    assert choose_source(T0, T0 + timedelta(days=1)) == "raw"
    assert choose_source(T0, T0 + timedelta(days=7)) == "raw"
    assert choose_source(T0, T0 + timedelta(days=7, minutes=1)) == "hourly"
    assert choose_source(T0, T0 + timedelta(days=80)) == "hourly"
    assert choose_source(T0, T0 + timedelta(days=80, hours=1)) == "daily"
    ts = datetime(2026, 3, 1, 17, 30, tzinfo=UTC)  # 01:30 Beijing on 3-2
    assert bucket_floor(ts, "hourly") == datetime(2026, 3, 1, 17, tzinfo=UTC)
    assert bucket_ceil(ts, "hourly") == datetime(2026, 3, 1, 18, tzinfo=UTC)
    assert bucket_floor(ts, "daily") == datetime(2026, 3, 1, 16, tzinfo=UTC)  # Beijing midnight of 3-2
    assert bucket_ceil(ts, "daily") == datetime(2026, 3, 2, 16, tzinfo=UTC)
    assert bucket_ceil(datetime(2026, 3, 1, 16, tzinfo=UTC), "daily") == datetime(2026, 3, 1, 16, tzinfo=UTC)


def test_plan_pieces_at_a_swap() -> None:
    """Swap at 10:20: whole hours from the aggregate, the swap hour from each probe's readings."""
    swap = T0 + timedelta(hours=10, minutes=20)
    bindings = [Binding(1, 9, T0 - timedelta(days=30), swap), Binding(2, 9, swap, None)]
    pieces = plan_pieces(bindings, T0 + timedelta(hours=1, minutes=30), T0 + timedelta(hours=20), "hourly")
    assert [(p.probe_id, p.lo - T0, p.hi - T0, p.whole) for p in pieces] == [
        (1, timedelta(hours=1), timedelta(hours=10), True),
        (1, timedelta(hours=10), timedelta(hours=10, minutes=20), False),
        (2, timedelta(hours=10, minutes=20), timedelta(hours=11), False),
        (2, timedelta(hours=11), timedelta(hours=20), True),
    ]
    # Together they cover the window exactly once.
    covered = sorted((p.lo, p.hi) for p in pieces)
    assert covered[0][0] == T0 + timedelta(hours=1) and covered[-1][1] == T0 + timedelta(hours=20)
    assert all(a[1] == b[0] for a, b in pairwise(covered))
    # A binding inside one bucket, and one outside the window.
    inside = plan_pieces([Binding(3, 9, T0 + 5 * MIN, T0 + 7 * MIN)], T0, T0 + timedelta(hours=3), "hourly")
    assert [(p.lo, p.hi, p.whole) for p in inside] == [(T0 + 5 * MIN, T0 + 7 * MIN, False)]
    assert plan_pieces([Binding(3, 9, T0 - timedelta(days=2), T0 - timedelta(days=1))], T0, T0 + MIN, "hourly") == []


def test_merge_buckets_combines_probes() -> None:
    h = timedelta(hours=1)
    rows = [(T0, 4, 3.0, 5.0, 16.0), (T0, 8, 2.0, 4.0, 24.0), (T0 + h, 12, 4.0, 4.0, 48.0), (T0 + 2 * h, 0, 0, 0, 0)]
    out = merge_buckets(rows, h)
    assert [(b.start, b.n, b.min_t, b.max_t, b.mean) for b in out] == [
        (T0, 12, 2.0, 5.0, 40.0 / 12),
        (T0 + h, 12, 4.0, 4.0, 4.0),
    ]


def test_raw_trace_breaks_at_gaps() -> None:
    readings = [(T0 + i * 5 * MIN, 4.0) for i in range(10)] + [(T0 + timedelta(hours=3), 5.0)]
    trace = raw_trace(readings, timedelta(minutes=10))
    assert [(g.start, g.end) for g in trace.gaps] == [(T0 + 45 * MIN, T0 + timedelta(hours=3))]
    assert trace.t.count(None) == 1
    i = trace.t.index(None)
    assert trace.ts[i - 1] < trace.ts[i] < trace.ts[i + 1]
    assert not trace.downsampled and trace.total == 11


def test_raw_trace_leaves_room_for_the_breaks() -> None:
    """Readings every minute with a 20-minute hole every 100: the arrays, breaks included, stay
    within the threshold."""
    readings = [(T0 + i * MIN, 4.0 + (i % 7)) for i in range(20000) if i % 100 < 80]
    trace = raw_trace(readings, timedelta(minutes=10), threshold=500)
    assert len(trace.gaps) == 199 and trace.t.count(None) == 199
    assert len(trace.ts) == len(trace.t) <= 500
    assert trace.downsampled and trace.total == 16000


def test_aggregate_trace_band_and_gap() -> None:
    buckets = [_bucket(0, 12, 3.0, 6.0, 54.0), _bucket(1, 12, 4.0, 9.5, 60.0), _bucket(5, 12, 4.0, 5.0, 54.0)]
    trace = aggregate_trace(buckets)
    assert trace.band_min == [3.0, 4.0, None, 4.0] and trace.band_max == [6.0, 9.5, None, 5.0]
    assert trace.ts[0] == T0 + timedelta(minutes=30), "plotted at the bucket's middle"
    assert trace.t[0] == 4.5


def _statuses(*rows: tuple[int, bool | None, str | None]) -> list[Status]:
    return with_prev((T0 + m * MIN, online, power) for m, online, power in rows)


def test_offline_reported_and_silent() -> None:
    after = timedelta(minutes=15)
    now = T0 + timedelta(hours=5)
    statuses = _statuses(
        (0, True, "ac"), (1, True, "ac"), (2, False, None), (3, False, None), (10, True, "ac"),
        (11, True, "battery"), (50, True, "battery"), (51, True, "ac"), (60, True, "ac"),
    )  # fmt: skip
    horizon = T0 + timedelta(hours=2)
    off = offline_periods(statuses, T0, horizon, now, after)
    assert [(p.start - T0, p.end - T0, p.kind, p.ongoing) for p in off] == [
        (2 * MIN, 10 * MIN, "reported", False),
        (11 * MIN, 50 * MIN, "silent", False),
        (60 * MIN, 120 * MIN, "silent", False),  # nothing after 60 min, horizon 120 min
    ]
    power = power_periods(statuses, T0, horizon, now, off)
    assert [(p.start - T0, p.end - T0, p.kind) for p in power] == [
        (0 * MIN, 2 * MIN, "ac"),
        (10 * MIN, 11 * MIN, "ac"),
        (50 * MIN, 51 * MIN, "battery"),
        (51 * MIN, 60 * MIN, "ac"),
    ]
    # Up to now, the trailing silence is ongoing.
    live = offline_periods(statuses, T0, T0 + 90 * MIN, T0 + 90 * MIN, after)
    assert live[-1].ongoing and live[-1].end == T0 + 90 * MIN
    assert offline_periods([], T0, horizon, now, after) == []


def test_offline_state_from_before_the_window() -> None:
    """Offline reported before the window opens: offline from its start, clipped."""
    statuses = _statuses((0, False, None), (100, True, "ac"), (101, True, "ac"))
    start = T0 + 30 * MIN
    off = offline_periods(statuses, start, T0 + 110 * MIN, T0 + 110 * MIN, timedelta(minutes=15))
    assert off == [Period(start, T0 + 100 * MIN, "reported")]


def test_filtered_statuses_give_the_same_periods() -> None:
    """What the SQL leaves out (statuses that change nothing) must not change the answer when each
    kept status carries the time of the one before it in the full series."""
    rows = [(m, m not in range(300, 320), "battery" if 500 <= m < 560 else "ac") for m in range(0, 1000)]
    rows = [r for r in rows if not 700 <= r[0] < 760]  # an hour of silence
    full = _statuses(*rows)
    kept = [s for i, s in enumerate(full) if i in (0, len(full) - 1) or
            s.online != full[i - 1].online or s.power != full[i - 1].power or
            (s.prev_ts is not None and s.ts - s.prev_ts > timedelta(minutes=15))]  # fmt: skip
    assert len(kept) < 12
    horizon = T0 + 1000 * MIN
    for statuses in (full, kept):
        off = offline_periods(statuses, T0, horizon, horizon, timedelta(minutes=15))
        assert [(p.start - T0, p.end - T0, p.kind) for p in off] == [
            (300 * MIN, 320 * MIN, "reported"),
            (699 * MIN, 760 * MIN, "silent"),
        ]
        power = power_periods(statuses, T0, horizon, horizon, off)
        assert [(p.start - T0, p.end - T0, p.kind) for p in power] == [
            (0 * MIN, 300 * MIN, "ac"),
            (320 * MIN, 500 * MIN, "ac"),
            (500 * MIN, 560 * MIN, "battery"),
            (560 * MIN, 699 * MIN, "ac"),
            (760 * MIN, 1000 * MIN, "ac"),
        ]
