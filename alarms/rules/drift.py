"""Thermometer drift (CM10, CM13): a manual thermometer reading against the probe, and when
repeated findings send a probe to its vendor.

Why pure: the comparison is a rule people argue about (which probe reading, how far is too far),
so it is stated over data alone and tested at its exact boundaries; storing the readings and
findings is :mod:`alarms.thermometer`'s job.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from alarms.rules import checks, defaults


@dataclass(frozen=True)
class DriftResult:
    """One thermometer reading compared with the probe: ``difference`` is probe − thermometer (℃)."""

    nearest_ts: datetime | None
    probe_t: float | None
    difference: float | None
    finding: bool
    reason: str


def drift_check(
    mode: str,
    thermometer_ts: datetime,
    thermometer_t: float,
    probe_readings: Sequence[tuple[datetime, float]],
) -> DriftResult:
    """Compare a manual thermometer reading with the probe reading nearest in time (CM10, CM13).

    Only a probe reading within ``DRIFT_NEAREST`` (5 min, either side) says what the probe showed at
    that moment; on a tie the earlier one wins. A finding is a difference *beyond* the limit
    (±0.5 ℃ refrigerated, ±1 ℃ frozen), so exactly 0.5 ℃ is not one. The difference is rounded to
    0.001 ℃ first, so binary float noise (4.3 − 3.8 = 0.5000000000000004) cannot make a finding.
    A finding asks the unit for a cause; repeated findings send the probe to the vendor
    (``needs_vendor``).
    """
    checks.known_mode(mode)
    limit = defaults.DRIFT_LIMIT[mode]
    candidates = [
        (abs(ts - thermometer_ts), ts, t)
        for ts, t in probe_readings
        if abs(ts - thermometer_ts) <= defaults.DRIFT_NEAREST and math.isfinite(t)
    ]
    if not candidates:
        return DriftResult(None, None, None, False, "5 分钟内没有探头读数")
    _, nearest_ts, probe_t = min(candidates, key=lambda c: (c[0], c[1]))
    difference = round(probe_t - thermometer_t, 3) + 0.0
    label = "冷藏" if mode == "refrigerated" else "冷冻"
    if abs(difference) > limit:
        reason = f"探头与温度计相差 {difference:+.2f} ℃，超过{label}允许的 ±{limit:g} ℃，请查找原因（CM10）"
        return DriftResult(nearest_ts, probe_t, difference, True, reason)
    reason = f"探头与温度计相差 {difference:+.2f} ℃，在{label}允许的 ±{limit:g} ℃ 以内"
    return DriftResult(nearest_ts, probe_t, difference, False, reason)


def needs_vendor(
    finding_times: Sequence[datetime],
    now: datetime,
    count: int = defaults.VENDOR_COUNT,
    window: timedelta = defaults.VENDOR_WINDOW,
) -> bool:
    """Whether a probe's drift findings are frequent enough to call the vendor (CM10, CM4).

    One finding may be a misread thermometer or a probe touching the wall — CM10 says to find the
    cause first; ``count`` findings within ``window`` (3 in 30 days, the monthly review of CM17)
    point at the hardware. Findings in ``[now − window, now]`` count; later ones (clock skew) do not.
    """
    checks.require(count >= 1, f"参数 count 必须至少为 1（收到 {count}）")
    checks.positive(window, "window")
    return sum(1 for ts in finding_times if now - window <= ts <= now) >= count
