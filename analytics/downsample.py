"""Downsampling of time series for charts: a browser on a phone draws ~2 000 points per trace
smoothly, a month of one-minute readings is 43 000.

Two methods over raw (ts, value) points, both returning the *indices* of the points to keep, so
the result is always a subsequence of the input (nothing invented, nothing moved) and callers can
pick any other column (the probe, the reading's exact time) with the same indices:

* :func:`minmax` keeps, per bucket, the lowest and the highest point. Every extreme survives —
  for a cold chain the reason a chart is opened is usually "how warm did it get, and when", and a
  one-reading spike above +8 ℃ must not vanish from a 30-day view. It is what the device page uses.
* :func:`lttb` (Largest-Triangle-Three-Buckets, Steinarsson 2013) keeps, per bucket, the point
  spanning the largest triangle with its neighbours: the line's shape, with fewer zigzags than
  min-max, but a lone extreme may be dropped. For values whose shape matters more than their
  extremes (battery voltage).

And one for series that are already aggregates: :func:`coarsen` merges neighbouring buckets,
which is exact for count, minimum, maximum and sum (a mean of means would not be).

Pure functions on plain sequences: no numpy (not a dependency), and a few thousand points take
milliseconds in Python.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

__all__ = ["Bucket", "coarsen", "lttb", "minmax"]


def _check(xs: Sequence[float], ys: Sequence[float], threshold: int, least: int, name: str) -> None:
    if len(xs) != len(ys):
        raise ValueError(f"{name}：时间与数值个数不一致（{len(xs)} 与 {len(ys)}）")
    if threshold < least:
        raise ValueError(f"{name}：目标点数至少为 {least}（收到 {threshold}）")


def lttb(xs: Sequence[float], ys: Sequence[float], threshold: int) -> list[int]:
    """Indices of at most ``threshold`` points (first and last always) that keep the line's shape.

    ``xs`` must be ascending (timestamps as epoch seconds, say). The interior points are cut into
    ``threshold - 2`` buckets of equal count; from each, the point forming the largest triangle with
    the point kept from the previous bucket and the average of the next bucket is kept."""
    _check(xs, ys, threshold, 3, "LTTB")
    n = len(xs)
    if n <= threshold:
        return list(range(n))
    every = (n - 2) / (threshold - 2)
    kept = [0]
    a = 0
    for i in range(threshold - 2):
        lo = int(i * every) + 1
        hi = min(int((i + 1) * every) + 1, n - 1)
        next_lo = hi
        next_hi = min(int((i + 2) * every) + 1, n)
        if next_lo >= next_hi:  # the last bucket's neighbour is the last point
            next_lo, next_hi = n - 1, n
        span = next_hi - next_lo
        avg_x = sum(xs[next_lo:next_hi]) / span
        avg_y = sum(ys[next_lo:next_hi]) / span
        ax, ay = xs[a], ys[a]
        best, best_area = lo, -1.0
        for j in range(lo, max(hi, lo + 1)):
            # Twice the triangle's area; the factor does not change which point wins.
            area = abs((ax - avg_x) * (ys[j] - ay) - (ax - xs[j]) * (avg_y - ay))
            if area > best_area:
                best, best_area = j, area
        kept.append(best)
        a = best
    kept.append(n - 1)
    return kept


def minmax(xs: Sequence[float], ys: Sequence[float], threshold: int) -> list[int]:
    """Indices of at most ``threshold`` points (first and last always) including, for each of
    ``(threshold - 2) // 2`` equal-count buckets of the interior, its lowest and highest point in
    time order — so the series' global minimum and maximum are always among them."""
    _check(xs, ys, threshold, 4, "最小最大值抽样")
    n = len(xs)
    if n <= threshold:
        return list(range(n))
    buckets = (threshold - 2) // 2
    every = (n - 2) / buckets
    kept = [0]
    for i in range(buckets):
        lo = int(i * every) + 1
        hi = n - 1 if i == buckets - 1 else int((i + 1) * every) + 1
        if lo >= hi:
            continue
        lowest = min(range(lo, hi), key=ys.__getitem__)
        highest = max(range(lo, hi), key=ys.__getitem__)
        kept.extend(sorted({lowest, highest}))
    kept.append(n - 1)
    return kept


@dataclass(frozen=True)
class Bucket:
    """One aggregate bucket: readings ``n`` in ``[start, end)`` with their min, max and sum."""

    start: datetime
    end: datetime
    n: int
    min_t: float
    max_t: float
    sum_t: float

    @property
    def mean(self) -> float:
        return self.sum_t / self.n

    def merge(self, other: Bucket) -> Bucket:
        return Bucket(
            min(self.start, other.start),
            max(self.end, other.end),
            self.n + other.n,
            min(self.min_t, other.min_t),
            max(self.max_t, other.max_t),
            self.sum_t + other.sum_t,
        )


def coarsen(buckets: Sequence[Bucket], threshold: int) -> list[Bucket]:
    """At most ``threshold`` buckets, by merging runs of ``ceil(len / threshold)`` neighbours.

    Exact: the merged bucket's min, max and mean are those of all its readings, so the band of an
    aggregated chart never narrows when it is coarsened (which picking every k-th bucket would)."""
    if threshold < 1:
        raise ValueError(f"合并聚合桶：目标个数至少为 1（收到 {threshold}）")
    if len(buckets) <= threshold:
        return list(buckets)
    k = math.ceil(len(buckets) / threshold)
    out: list[Bucket] = []
    for i in range(0, len(buckets), k):
        merged = buckets[i]
        for b in buckets[i + 1 : i + k]:
            merged = merged.merge(b)
        out.append(merged)
    return out
