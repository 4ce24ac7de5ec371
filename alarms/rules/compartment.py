"""The compartment rules: high, low, freeze risk, wrong place and cumulative time out of range over
a compartment's readings, and no data over its silence (CM11, CM16).

Why readings and silence are two functions: readings carry their own time, so they are judged on
data time however late they arrive; silence has no readings to carry time and is judged against
``now``. The scheduler runs both in each pass, readings first (a reading clears a no-data alarm).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Iterable
from datetime import datetime, timedelta

from alarms.rules import defaults
from alarms.rules.events import AlarmCauseChanged, AlarmCleared, AlarmOpened, Event, Reading
from alarms.rules.kinds import KIND_SEVERITY
from alarms.rules.machine import moment_of, step
from alarms.rules.params import RuleParams
from alarms.rules.state import CompartmentState
from coldchain.core.terms import out_of_range


def _limit(value: float) -> float:
    """A derived threshold (limit ± margin) as the nearest decimal, so 8.0 − 0.3 compares like 7.7."""
    return round(value, 6)


def _out_of_range(params: RuleParams, t: float) -> bool:
    return out_of_range(t, params.t_min, params.t_max)


def _trim(segments: list[tuple[datetime, datetime]], window_start: datetime) -> list[tuple[datetime, datetime]]:
    return [(max(start, window_start), end) for start, end in segments if end > window_start]


def _usable(reading: Reading) -> bool:
    return math.isfinite(reading.t) and reading.ts - reading.received_at <= defaults.CLOCK_SKEW


def evaluate_readings(
    params: RuleParams, state: CompartmentState, readings: Iterable[Reading], now: datetime
) -> tuple[CompartmentState, list[Event]]:
    """Judge new readings of one compartment, in time order, and return the new state and events.

    Readings may come in any order and may repeat ones already judged: they are sorted by ``ts``
    and anything at or before the watermark is ignored, so a redelivered batch raises nothing
    twice. The input state is not modified. A reading after a no-data alarm clears it first.
    """
    st = copy.deepcopy(state)
    events: list[Event] = []
    fresh = sorted((r for r in readings if _usable(r)), key=lambda r: r.ts)
    new: list[Reading] = []
    for reading in fresh:
        if (new and reading.ts <= new[-1].ts) or (st.watermark is not None and reading.ts <= st.watermark):
            continue
        new.append(reading)
    if not new:
        return st, events
    if st.no_data_open:
        events.append(AlarmCleared(kind="no_data", at=min(r.received_at for r in new), back_since=None))
        st.no_data_open = False
        st.no_data_cause = None

    refrigerated = params.mode == "refrigerated"
    high_clear = _limit(params.t_max - params.hysteresis)
    low_clear = None if params.t_min is None else _limit(params.t_min + params.hysteresis)
    freeze_clear = _limit(params.freeze_threshold + params.hysteresis)
    wrong = params.wrong_place_limit
    wrong_clear = _limit(wrong + params.hysteresis if refrigerated else wrong - params.hysteresis)

    for reading in new:
        t = reading.t
        moment = moment_of(reading.ts, reading.received_at, now)
        gap = st.watermark is not None and reading.ts - st.watermark > params.max_gap
        if gap:
            for ex in (st.high, st.low, st.freeze, st.wrong_place):
                ex.break_continuity()

        if refrigerated:
            events += step(
                st.freeze,
                "freeze",
                moment,
                breaching=t <= params.freeze_threshold,
                clearing=t > freeze_clear,
                delay=params.freeze_delay,
                hold=params.hold,
                value=t,
                higher_is_worse=False,
                worsen_step=params.worsen_step,
            )
        else:  # a compartment that became frozen: an old freeze alarm has no condition left
            events += step(
                st.freeze, "freeze", moment, breaching=False, clearing=True, delay=params.freeze_delay, hold=params.hold
            )
        if params.t_min is not None and low_clear is not None:
            events += step(
                st.low,
                "low",
                moment,
                breaching=t < params.t_min,
                clearing=t >= low_clear,
                delay=params.delay,
                hold=params.hold,
                value=t,
                higher_is_worse=False,
                worsen_step=params.worsen_step,
                can_open=not st.freeze.open,
            )
        else:
            events += step(st.low, "low", moment, breaching=False, clearing=True, delay=params.delay, hold=params.hold)
        events += step(
            st.high,
            "high",
            moment,
            breaching=t > params.t_max,
            clearing=t <= high_clear,
            delay=params.delay,
            hold=params.hold,
            value=t,
            worsen_step=params.worsen_step,
        )
        events += step(
            st.wrong_place,
            "wrong_place",
            moment,
            breaching=t <= wrong if refrigerated else t >= wrong,
            clearing=t > wrong_clear if refrigerated else t < wrong_clear,
            delay=params.wrong_place_after,
            hold=params.hold,
            value=t,
            higher_is_worse=not refrigerated,
        )

        # Cumulative: extend the running span or start one, drop what left the window, compare.
        out = _out_of_range(params, t)
        continuing = not gap and st.last_value is not None and _out_of_range(params, st.last_value)
        if out:
            if continuing and st.segments:
                st.segments[-1] = (st.segments[-1][0], reading.ts)
            else:
                st.segments.append((reading.ts, reading.ts))
        st.segments = _trim(st.segments, reading.ts - params.cumulative_window)
        total = sum((end - start for start, end in st.segments), timedelta(0))
        if not st.cumulative_open and total >= params.cumulative_limit:
            st.cumulative_open = True
            events.append(
                AlarmOpened(
                    kind="cumulative",
                    severity=KIND_SEVERITY["cumulative"],
                    condition_since=st.segments[0][0],
                    confirmed_at=moment.at,
                    detected_at=moment.detected_at,
                    value=None,
                    found_late=moment.found_late,
                    total=total,
                )
            )
        elif st.cumulative_open and total < params.cumulative_limit:
            st.cumulative_open = False
            events.append(AlarmCleared(kind="cumulative", at=moment.at, back_since=None))

        st.watermark = reading.ts
        st.last_value = t
        if st.last_received_at is None or reading.received_at > st.last_received_at:
            st.last_received_at = reading.received_at
    return st, events


def evaluate_silence(
    params: RuleParams,
    state: CompartmentState,
    now: datetime,
    gateway_offline: bool,
    watch_since: datetime | None = None,
) -> tuple[CompartmentState, list[Event]]:
    """No data: nothing received for ``no_data_after`` since the last reading was received (or since
    ``watch_since`` — e.g. the probe's binding — if it never sent one).

    Silence is measured on receipt time, not reading time: while a gateway is uploading its backlog
    the probe is talking, even though its newest reading is still old. When the gateway is offline
    the alarm opens with ``cause='gateway_offline'`` and ``suppressed=True``: the gateway's own
    alarm is the one notified. If the gateway comes back and the probe stays silent, the same alarm
    continues — an ``AlarmCauseChanged`` to cause None, unsuppressed — rather than a close and a
    re-open, because it is one continuous silence with one start. The reverse is not done: a probe
    that went silent while its gateway was up is not explained by a later gateway outage, so it
    stays notified. Run ``evaluate_readings`` first in each pass: readings clear the alarm.
    """
    st = copy.deepcopy(state)
    last = st.last_received_at or watch_since
    if last is None or now - last < params.no_data_after:
        return st, []
    if not st.no_data_open:
        st.no_data_open = True
        st.no_data_cause = "gateway_offline" if gateway_offline else None
        return st, [
            AlarmOpened(
                kind="no_data",
                severity=KIND_SEVERITY["no_data"],
                condition_since=last,
                confirmed_at=last + params.no_data_after,
                detected_at=now,
                value=None,
                found_late=False,
                cause=st.no_data_cause,
                suppressed=gateway_offline,
            )
        ]
    if st.no_data_cause == "gateway_offline" and not gateway_offline:
        st.no_data_cause = None
        return st, [AlarmCauseChanged(kind="no_data", cause=None, suppressed=False, at=now)]
    return st, []
