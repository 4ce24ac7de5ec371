"""The pure alarm rules (alarms/rules/): every rule at its exact boundary, the flapping and gap
cases the issue names, restarts through the JSON state, redelivery and late uploads. No servers."""

from __future__ import annotations

import json
import random
from collections.abc import Iterable, Sequence
from dataclasses import fields
from datetime import UTC, datetime, timedelta
from typing import Literal

import pytest

from alarms.rules import (
    DEFAULTS,
    DRIFT_LIMIT,
    KIND_NAMES,
    KIND_SEVERITY,
    KINDS,
    SEVERITY_NAMES,
    AlarmCauseChanged,
    AlarmCleared,
    AlarmOpened,
    AlarmWorsened,
    CompartmentState,
    Event,
    GatewayParams,
    GatewayState,
    GatewayStatus,
    Reading,
    RuleParams,
    drift_check,
    evaluate_gateway,
    evaluate_readings,
    evaluate_silence,
    needs_vendor,
    params_for,
)

T0 = datetime(2026, 1, 5, 8, 0, tzinfo=UTC)
REF = params_for("refrigerated")
FRZ = params_for("frozen")


def at(minutes: float) -> datetime:
    return T0 + timedelta(minutes=minutes)


def live(minute: float, t: float) -> Reading:
    """A reading received the moment it was taken."""
    return Reading(at(minute), t, at(minute))


def series(start: float, values: Sequence[float], step: float = 1.0) -> list[Reading]:
    return [live(start + i * step, t) for i, t in enumerate(values)]


def run(
    params: RuleParams, readings: Iterable[Reading], state: CompartmentState | None = None
) -> tuple[CompartmentState, list[Event]]:
    """Evaluate readings one by one, as a scheduler running every minute would."""
    st = state or CompartmentState()
    events: list[Event] = []
    for reading in readings:
        st, new = evaluate_readings(params, st, [reading], reading.received_at)
        events += new
    return st, events


def opened(events: Iterable[Event], kind: str | None = None) -> list[AlarmOpened]:
    return [e for e in events if isinstance(e, AlarmOpened) and (kind is None or e.kind == kind)]


def cleared(events: Iterable[Event], kind: str | None = None) -> list[AlarmCleared]:
    return [e for e in events if isinstance(e, AlarmCleared) and (kind is None or e.kind == kind)]


# ---------------------------------------------------------------------------------------------
# Out of range: delay, door openings, flapping, clearing


def test_high_opens_exactly_at_the_delay_and_not_before() -> None:
    values = [8.1, 8.4, 9.0, 8.6, 8.5, 8.5, 8.5, 8.5, 8.5, 8.5]  # minutes 0..9
    st, events = run(REF, series(0, values))
    assert events == []
    assert st.high.breach_since == at(0)
    assert not st.high.open

    st, events = run(REF, [live(10, 8.5)], st)
    assert events == [
        AlarmOpened(
            kind="high",
            severity="major",
            condition_since=at(0),
            confirmed_at=at(10),
            detected_at=at(10),
            value=9.0,
            found_late=False,
        )
    ]
    st, events = run(REF, series(11, [8.7] * 5), st)
    assert events == []  # open once, not again


def test_detected_at_is_the_evaluation_when_later_than_receipt() -> None:
    st, _ = run(REF, series(0, [8.5] * 10))
    st, events = evaluate_readings(REF, st, [live(10, 8.5)], now=at(12))
    assert opened(events)[0].detected_at == at(12)
    assert opened(events)[0].confirmed_at == at(10)


def test_door_opening_shorter_than_the_delay_raises_nothing() -> None:
    st, events = run(REF, series(0, [9.5] * 10 + [5.0] * 30))  # out of range 0..9 = 9 minutes
    assert events == []
    assert st.high.breach_since is None
    assert st.segments == [(at(0), at(9))]


def test_low_opens_at_the_delay_and_frozen_without_t_min_never_goes_low() -> None:
    _, events = run(REF, series(0, [1.9] * 11))
    assert [(e.kind, e.condition_since, e.confirmed_at, e.value) for e in opened(events)] == [
        ("low", at(0), at(10), 1.9)
    ]
    _, events = run(FRZ, series(0, [-40.0] * 240))
    assert events == []


def test_boundaries_are_strict_for_out_of_range() -> None:
    _, events = run(REF, series(0, [8.0] * 30 + [2.0] * 30))
    assert events == []
    _, events = run(FRZ, series(0, [-15.0] * 30))
    assert events == []
    _, events = run(FRZ, series(0, [-14.9] * 11))
    assert [(e.kind, e.confirmed_at) for e in opened(events)] == [("high", at(10))]


def test_flapping_around_8_for_a_day_keeps_one_alarm() -> None:
    readings = series(0, [8.1, 7.9] * 360)  # 00:00–12:00 alternating every minute
    readings += series(720, [8.3] * 13)  # 12:00–12:12, 12 minutes out of range
    hover = [7.8, 8.2, 7.9, 8.1, 8.0]
    readings += series(733, [hover[i % 5] for i in range(1440 - 733)])  # until the end of the day
    st, events = run(REF, readings)

    assert opened(events) == [
        AlarmOpened(
            kind="high",
            severity="major",
            condition_since=at(720),
            confirmed_at=at(730),
            detected_at=at(730),
            value=8.3,
            found_late=False,
        )
    ]
    assert cleared(events) == []
    assert st.high.open
    assert not st.cumulative_open  # single blips count 0 minutes; the 12-minute run counts 12


def test_clearing_needs_the_margin_for_the_hold() -> None:
    st, events = run(REF, series(0, [9.0] * 11))
    assert len(opened(events, "high")) == 1
    # 7.6 is inside the limit but not by the 0.5 margin: the hold does not start.
    st, events = run(REF, series(11, [7.6] * 10), st)
    assert events == []
    assert st.high.open and st.high.clear_since is None
    # 7.5 from minute 21; one 7.6 at 23 restarts the hold; 24..29 at 7.5 clears at 29.
    st, events = run(REF, series(21, [7.5, 7.5, 7.6, 7.5, 7.5, 7.5, 7.5, 7.5]), st)
    assert events == []
    assert st.high.clear_since == at(24)
    st, events = run(REF, [live(29, 7.5)], st)
    assert events == [AlarmCleared(kind="high", at=at(29), back_since=at(24))]
    assert not st.high.open and st.high.breach_since is None


def test_worsened_is_reported_per_step() -> None:
    st, events = run(REF, series(0, [8.5] * 11))
    assert opened(events)[0].value == 8.5
    st, events = run(REF, series(11, [9.4, 9.0]), st)
    assert events == []
    st, events = run(REF, series(13, [9.5, 10.4, 10.5]), st)
    assert events == [AlarmWorsened("high", 9.5, at(13)), AlarmWorsened("high", 10.5, at(15))]


# ---------------------------------------------------------------------------------------------
# Freeze risk


def test_freeze_risk_is_critical_at_5_minutes_and_low_follows_when_it_clears() -> None:
    st, events = run(REF, series(0, [-0.5] * 5))  # minutes 0..4
    assert events == []
    st, events = run(REF, [live(5, -0.6)], st)
    assert events == [
        AlarmOpened(
            kind="freeze",
            severity="critical",
            condition_since=at(0),
            confirmed_at=at(5),
            detected_at=at(5),
            value=-0.6,
            found_late=False,
        )
    ]
    # Below t_min for 10+ minutes, but the open freeze alarm stands for it.
    st, events = run(REF, series(6, [-1.0] * 14), st)  # 6..19
    assert opened(events) == []
    assert st.low.breach_since == at(0) and not st.low.open
    # Warming to 1.0 ℃ (> −0.5 + 0.5) for the hold: freeze clears, low opens with the same start.
    st, events = run(REF, series(20, [1.0] * 6), st)  # 20..25
    assert [type(e).__name__ + ":" + e.kind for e in events] == ["AlarmCleared:freeze", "AlarmOpened:low"]
    assert events[0] == AlarmCleared(kind="freeze", at=at(25), back_since=at(20))
    low = opened(events, "low")[0]
    assert (low.condition_since, low.confirmed_at, low.value, low.severity) == (at(0), at(25), -1.0, "major")
    # Back to 2.5 ℃ (t_min + margin) for the hold clears low.
    st, events = run(REF, series(26, [2.5] * 6), st)
    assert events == [AlarmCleared(kind="low", at=at(31), back_since=at(26))]


def test_a_low_alarm_already_open_stays_open_when_freezing_starts() -> None:
    st, events = run(REF, series(0, [1.5] * 11))
    assert [e.kind for e in opened(events)] == ["low"]
    st, events = run(REF, series(11, [-1.0] * 6), st)  # 11..16
    assert [(e.kind, e.condition_since, e.confirmed_at) for e in opened(events)] == [("freeze", at(11), at(16))]
    assert [e for e in events if isinstance(e, AlarmWorsened)] == [AlarmWorsened("low", -1.0, at(11))]
    assert cleared(events) == []
    assert st.low.open and st.freeze.open


def test_freeze_is_not_a_frozen_compartment_rule() -> None:
    _, events = run(FRZ, series(0, [-30.0] * 30))
    assert events == []


# ---------------------------------------------------------------------------------------------
# Cumulative


def test_cumulative_over_many_short_excursions() -> None:
    readings: list[Reading] = []
    for hour in range(6):  # each hour: 10 readings at 9.0 (9 minutes), then in range
        readings += series(hour * 60, [9.0] * 10 + [5.0] * 50)
    readings += series(6 * 60, [9.0] * 7)  # 6 more minutes: 60 in all
    readings += series(6 * 60 + 7, [5.0] * (24 * 60 + 2 - 6 * 60 - 7))  # in range until 24:01
    st, events = run(REF, readings)

    assert opened(events, "high") == []  # each excursion is shorter than the delay
    cumulative = opened(events, "cumulative")
    assert cumulative == [
        AlarmOpened(
            kind="cumulative",
            severity="major",
            condition_since=at(0),
            confirmed_at=at(6 * 60 + 6),  # 6 × 9 + 6 = 60 minutes
            detected_at=at(6 * 60 + 6),
            value=None,
            found_late=False,
            total=timedelta(minutes=60),
        )
    ]
    # At 24:00 the window still holds 00:00–00:09; at 24:01 one minute of it has aged out.
    assert cleared(events, "cumulative") == [AlarmCleared(kind="cumulative", at=at(24 * 60 + 1))]
    assert st.segments[0] == (at(1), at(9))  # the aged-out minute is trimmed off
    assert not st.cumulative_open


def test_cumulative_counts_one_long_excursion_too() -> None:
    _, events = run(REF, series(0, [8.6] * 61))
    assert [(e.kind, e.confirmed_at) for e in opened(events)] == [("high", at(10)), ("cumulative", at(60))]


# ---------------------------------------------------------------------------------------------
# Gaps


def test_a_gap_breaks_continuity() -> None:
    readings = series(0, [8.5] * 6) + series(16, [8.5] * 11)  # 0..5, gap of 11 minutes, 16..26
    st, events = run(REF, readings[:-1])
    assert events == []  # 16..25 is only 9 minutes
    assert st.high.breach_since == at(16)
    _, events = run(REF, readings[-1:], st)
    assert [(e.condition_since, e.confirmed_at) for e in opened(events)] == [(at(16), at(26))]
    # The segments split at the gap too: 5 + 10 minutes, not 26.
    st, _ = run(REF, readings)
    assert st.segments == [(at(0), at(5)), (at(16), at(26))]


def test_a_gap_of_exactly_max_gap_is_still_continuous() -> None:
    _, events = run(REF, [*series(0, [8.5] * 6), live(15, 8.5)])
    assert [(e.condition_since, e.confirmed_at) for e in opened(events)] == [(at(0), at(15))]


def test_a_gap_restarts_the_clearing_hold() -> None:
    st, _ = run(REF, series(0, [9.0] * 11))
    st, events = run(REF, series(11, [7.0] * 4) + series(25, [7.0] * 6), st)  # 11..14, gap 11, 25..30
    assert events == [AlarmCleared(kind="high", at=at(30), back_since=at(25))]


# ---------------------------------------------------------------------------------------------
# Restart, redelivery, late data


def test_state_round_trips_through_json_mid_delay_and_the_delay_completes_once() -> None:
    st, events = run(REF, series(0, [8.7] * 7))  # 0..6, delay running
    assert events == []
    stored = json.loads(json.dumps(st.to_json()))
    restored = CompartmentState.from_json(stored)
    assert restored == st
    assert stored["high"]["breach_since"] == at(0).isoformat()

    restored, events = run(REF, series(7, [8.7] * 6), restored)  # 7..12
    assert [(e.kind, e.condition_since, e.confirmed_at) for e in opened(events)] == [("high", at(0), at(10))]

    again = CompartmentState.from_json(json.loads(json.dumps(restored.to_json())))
    again, events = run(REF, series(13, [8.9] * 5), again)
    assert opened(events) == []
    assert again.high.open


def test_full_state_round_trip_keeps_every_field() -> None:
    st, _ = run(REF, series(0, [9.0] * 15 + [-1.0] * 10 + [1.0] * 3))
    st, _ = evaluate_silence(REF, st, at(200), gateway_offline=True)
    assert st.no_data_open and st.no_data_cause == "gateway_offline" and st.segments
    assert CompartmentState.from_json(json.loads(json.dumps(st.to_json()))) == st
    assert CompartmentState.from_json({}) == CompartmentState()


def test_duplicate_and_redelivered_readings_raise_nothing_twice() -> None:
    batch = series(0, [8.8] * 13)
    shuffled = batch + batch[:5]
    random.Random(7).shuffle(shuffled)
    st, events = evaluate_readings(REF, CompartmentState(), shuffled, now=at(13))
    assert [(e.kind, e.condition_since, e.confirmed_at) for e in opened(events)] == [("high", at(0), at(10))]
    assert st.watermark == at(12)

    again, events = evaluate_readings(REF, st, batch, now=at(14))
    assert events == []
    assert again.to_json() == st.to_json()


def test_input_state_is_not_modified() -> None:
    st, _ = run(REF, series(0, [8.8] * 5))
    before = st.to_json()
    evaluate_readings(REF, st, series(5, [8.8] * 10), now=at(20))
    evaluate_silence(REF, st, at(300), gateway_offline=False)
    assert st.to_json() == before


def test_late_buffered_upload_raises_the_excursion_found_late() -> None:
    st, _ = run(REF, series(0, [5.0] * 61))  # live until 09:00, then the gateway goes offline
    st, events = evaluate_silence(REF, st, at(100), gateway_offline=True)
    assert [(e.kind, e.cause, e.suppressed) for e in opened(events)] == [("no_data", "gateway_offline", True)]

    # Back at 11:05 with the buffered readings of 09:01–11:00; 10:00–10:30 was 8.6 ℃.
    received = at(185)
    values = [5.0 if m < 120 or m > 150 else 8.6 for m in range(61, 181)]
    upload = [Reading(at(61 + i), t, received) for i, t in enumerate(values)]
    st, events = evaluate_readings(REF, st, upload, now=at(186))

    assert events[0] == AlarmCleared(kind="no_data", at=received)
    high = opened(events, "high")
    assert high == [
        AlarmOpened(
            kind="high",
            severity="major",
            condition_since=at(120),
            confirmed_at=at(130),
            detected_at=at(186),
            value=8.6,
            found_late=True,
        )
    ]
    assert cleared(events, "high") == [AlarmCleared(kind="high", at=at(156), back_since=at(151))]
    assert not st.no_data_open and st.watermark == at(180)


def test_a_reading_received_within_5_minutes_is_not_late() -> None:
    readings = [Reading(at(m), 9.0, at(m + 5)) for m in range(11)]
    _, events = evaluate_readings(REF, CompartmentState(), readings, now=at(16))
    assert opened(events)[0].found_late is False
    readings = [Reading(at(m), 9.0, at(m + 5.5)) for m in range(11)]
    _, events = evaluate_readings(REF, CompartmentState(), readings, now=at(16))
    assert opened(events)[0].found_late is True


def test_a_reading_from_the_future_is_ignored() -> None:
    st, _ = run(REF, series(0, [5.0] * 3))
    future = Reading(at(600), 5.0, at(3))  # probe clock ten hours ahead
    st2, events = evaluate_readings(REF, st, [future, live(3, 5.1)], now=at(3))
    assert events == []
    assert st2.watermark == at(3) and st2.last_value == 5.1


# ---------------------------------------------------------------------------------------------
# No data


def test_no_data_opens_at_30_minutes_and_clears_on_the_next_reading() -> None:
    st, _ = run(REF, [live(0, 5.0)])
    st, events = evaluate_silence(REF, st, at(29.99), gateway_offline=False)
    assert events == []
    st, events = evaluate_silence(REF, st, at(30), gateway_offline=False)
    assert events == [
        AlarmOpened(
            kind="no_data",
            severity="major",
            condition_since=at(0),
            confirmed_at=at(30),
            detected_at=at(30),
            value=None,
            found_late=False,
            cause=None,
            suppressed=False,
        )
    ]
    st, events = evaluate_silence(REF, st, at(45), gateway_offline=False)
    assert events == []
    st, events = evaluate_readings(REF, st, [live(50, 5.0)], now=at(50))
    assert events == [AlarmCleared(kind="no_data", at=at(50))]
    assert not st.no_data_open


def test_no_data_behind_an_offline_gateway_is_tagged_and_suppressed_then_unsuppressed() -> None:
    st, _ = run(REF, [live(0, 5.0)])
    st, events = evaluate_silence(REF, st, at(31), gateway_offline=True)
    assert [(e.kind, e.cause, e.suppressed, e.condition_since) for e in opened(events)] == [
        ("no_data", "gateway_offline", True, at(0))
    ]
    st, events = evaluate_silence(REF, st, at(40), gateway_offline=True)
    assert events == []
    st, events = evaluate_silence(REF, st, at(50), gateway_offline=False)  # gateway back, probe still silent
    assert events == [AlarmCauseChanged(kind="no_data", cause=None, suppressed=False, at=at(50))]
    assert st.no_data_open and st.no_data_cause is None
    st, events = evaluate_silence(REF, st, at(60), gateway_offline=False)
    assert events == []


def test_a_probe_silent_before_its_gateway_went_down_stays_notified() -> None:
    st, _ = run(REF, [live(0, 5.0)])
    st, events = evaluate_silence(REF, st, at(30), gateway_offline=False)
    assert opened(events)[0].suppressed is False
    st, events = evaluate_silence(REF, st, at(60), gateway_offline=True)
    assert events == []
    assert st.no_data_cause is None


def test_no_data_for_a_probe_that_never_reported_counts_from_watch_since() -> None:
    _, events = evaluate_silence(REF, CompartmentState(), at(100), gateway_offline=False)
    assert events == []  # nothing to count from
    _, events = evaluate_silence(REF, CompartmentState(), at(29), gateway_offline=False, watch_since=at(0))
    assert events == []
    _, events = evaluate_silence(REF, CompartmentState(), at(30), gateway_offline=False, watch_since=at(0))
    assert [(e.kind, e.condition_since, e.confirmed_at) for e in opened(events)] == [("no_data", at(0), at(30))]


# ---------------------------------------------------------------------------------------------
# Gateways (CM12)


GW = GatewayParams()


def status(
    minute: float,
    online: bool | None = True,
    power: Literal["ac", "battery"] | None = None,
    battery: float | None = None,
    rssi: int | None = None,
) -> GatewayStatus:
    return GatewayStatus(at(minute), online, power, battery, rssi, at(minute))


def gw_run(statuses: Sequence[GatewayStatus], state: GatewayState | None = None) -> tuple[GatewayState, list[Event]]:
    st = state or GatewayState()
    events: list[Event] = []
    for s in statuses:
        st, new = evaluate_gateway(GW, st, [s], s.received_at, s.received_at)
        events += new
    return st, events


def test_gateway_offline_by_status_false_opens_at_once_and_clears_after_the_hold() -> None:
    st, events = gw_run([status(0), status(1, online=False)])
    assert events == [
        AlarmOpened(
            kind="gateway_offline",
            severity="critical",
            condition_since=at(1),
            confirmed_at=at(1),
            detected_at=at(1),
            value=None,
            found_late=False,
        )
    ]
    st, events = gw_run([status(3), status(4, online=False), status(5), status(9)], st)
    assert events == []  # back at 3, down again at 4: the hold restarted at 5
    st, events = gw_run([status(10)], st)
    assert events == [AlarmCleared(kind="gateway_offline", at=at(10), back_since=at(5))]


def test_gateway_offline_by_silence() -> None:
    st, events = gw_run([status(0)])
    st, events = evaluate_gateway(GW, st, [], at(0), at(14.99))
    assert events == []
    st, events = evaluate_gateway(GW, st, [], at(0), at(15))
    assert events == [
        AlarmOpened(
            kind="gateway_offline",
            severity="critical",
            condition_since=at(0),
            confirmed_at=at(15),
            detected_at=at(15),
            value=None,
            found_late=False,
        )
    ]
    st, events = evaluate_gateway(GW, st, [], at(0), at(30))
    assert events == []
    # Heard again through a probe reading at 40 (no status): up from the pass at 40, cleared at 45.
    st, events = evaluate_gateway(GW, st, [], at(40), at(40))
    assert events == [] and st.offline.clear_since == at(40)
    st, events = evaluate_gateway(GW, st, [], at(44), at(44))
    assert events == []
    st, events = evaluate_gateway(GW, st, [], at(45), at(45))
    assert events == [AlarmCleared(kind="gateway_offline", at=at(45), back_since=at(40))]


def test_gateway_never_heard_raises_nothing() -> None:
    _, events = evaluate_gateway(GW, GatewayState(), [], None, at(1000))
    assert events == []


def test_gateway_power_on_battery_and_back() -> None:
    st, events = gw_run([status(0, power="ac"), status(1, power="battery")])
    assert [(e.kind, e.severity, e.condition_since) for e in opened(events)] == [("gateway_power", "major", at(1))]
    st, events = gw_run([status(2, power=None), status(3, power="ac"), status(7, power="ac")], st)
    assert events == []
    st, events = gw_run([status(8, power="ac")], st)
    assert events == [AlarmCleared(kind="gateway_power", at=at(8), back_since=at(3))]


def test_gateway_battery_low_boundary_and_clearing_margin() -> None:
    st, events = gw_run([status(0, battery=3.5)])
    assert events == []  # 3.5 V is not below 3.5 V
    st, events = gw_run([status(1, battery=3.49)], st)
    assert events == [
        AlarmOpened(
            kind="gateway_battery_low",
            severity="major",
            condition_since=at(1),
            confirmed_at=at(1),
            detected_at=at(1),
            value=None,
            found_late=False,
            measure=3.49,
        )
    ]
    st, events = gw_run([status(2, battery=3.59), status(10, battery=3.59)], st)
    assert events == []  # inside the 0.1 V margin
    st, events = gw_run([status(11, battery=3.6), status(16, battery=4.1)], st)
    assert events == [AlarmCleared(kind="gateway_battery_low", at=at(16), back_since=at(11))]


def test_gateway_weak_signal_needs_15_minutes() -> None:
    st, events = gw_run([status(0, rssi=-100), status(5, rssi=-101), status(10, rssi=-105), status(19, rssi=-101)])
    assert events == []  # -100 is not below -100; weak since 5, 14 minutes at 19
    st, events = gw_run([status(20, rssi=-102)], st)
    assert [(e.kind, e.severity, e.condition_since, e.confirmed_at, e.measure) for e in opened(events)] == [
        ("gateway_signal", "minor", at(5), at(20), -105.0)
    ]
    st, events = gw_run([status(21, rssi=-96), status(30, rssi=-95), status(35, rssi=-90)], st)
    assert events == [AlarmCleared(kind="gateway_signal", at=at(35), back_since=at(30))]


def test_gateway_state_round_trips_through_json() -> None:
    st, _ = gw_run([status(0, power="battery", battery=3.4, rssi=-110), status(1, online=False)])
    assert GatewayState.from_json(json.loads(json.dumps(st.to_json()))) == st
    assert GatewayState.from_json({}) == GatewayState()


def test_gateway_redelivered_statuses_are_ignored() -> None:
    statuses = [status(0, online=False), status(1, online=False)]
    st, events = evaluate_gateway(GW, GatewayState(), statuses, at(1), at(1))
    assert len(opened(events)) == 1
    _, events = evaluate_gateway(GW, st, statuses, at(1), at(2))
    assert events == []


# ---------------------------------------------------------------------------------------------
# Wrong place (CM11)


def test_refrigerated_probe_reading_like_a_freezer_for_3_hours() -> None:
    readings = series(0, [-12.0] * 19, step=10)  # every 10 minutes, 0..180
    st, events = run(REF, readings[:-1])
    assert opened(events, "wrong_place") == []
    # Low is covered by the open freeze alarm; −12 ℃ is out of range, so cumulative opens at 60.
    assert [e.kind for e in opened(events)] == ["freeze", "cumulative"]
    st, events = run(REF, readings[-1:], st)
    assert [(e.kind, e.severity, e.condition_since, e.confirmed_at, e.value) for e in opened(events)] == [
        ("wrong_place", "minor", at(0), at(180), -12.0)
    ]


def test_frozen_probe_reading_like_a_refrigerator_for_3_hours() -> None:
    _, events = run(FRZ, series(0, [2.0] * 19, step=10))
    assert [(e.kind, e.confirmed_at) for e in opened(events)] == [
        ("high", at(10)),
        ("cumulative", at(60)),
        ("wrong_place", at(180)),
    ]
    _, events = run(FRZ, series(0, [1.9] * 19, step=10))
    assert opened(events, "wrong_place") == []


# ---------------------------------------------------------------------------------------------
# Thermometer drift (CM10)


def test_drift_boundaries_refrigerated() -> None:
    probe = [(at(0), 5.5)]
    assert drift_check("refrigerated", at(1), 5.0, probe).finding is False
    result = drift_check("refrigerated", at(1), 5.0, [(at(0), 5.51)])
    assert (result.finding, result.difference, result.nearest_ts, result.probe_t) == (True, 0.51, at(0), 5.51)
    assert "±0.5 ℃" in result.reason and "查找原因" in result.reason
    assert drift_check("refrigerated", at(0), 5.0, [(at(0), 4.49)]).finding is True
    # 4.3 − 3.8 is 0.5000000000000004 in binary floating point: still exactly 0.5, not beyond.
    assert drift_check("refrigerated", at(0), 3.8, [(at(0), 4.3)]).finding is False


def test_drift_boundaries_frozen() -> None:
    assert drift_check("frozen", at(0), -20.0, [(at(0), -19.0)]).finding is False
    result = drift_check("frozen", at(0), -20.0, [(at(0), -18.99)])
    assert (result.finding, result.difference) == (True, 1.01)
    assert drift_check("frozen", at(0), -20.0, [(at(0), -21.01)]).finding is True


def test_drift_uses_the_nearest_reading_within_5_minutes() -> None:
    readings = [(at(-3), 5.9), (at(1), 5.2), (at(4), 9.0)]
    result = drift_check("refrigerated", at(0), 5.0, readings)
    assert (result.nearest_ts, result.probe_t, result.finding) == (at(1), 5.2, False)
    result = drift_check("refrigerated", at(0), 5.0, [(at(-6), 5.0), (at(5) + timedelta(seconds=1), 5.0)])
    assert result == type(result)(None, None, None, False, "5 分钟内没有探头读数")
    result = drift_check("refrigerated", at(0), 5.0, [(at(5), 6.0)])
    assert (result.nearest_ts, result.finding) == (at(5), True)
    result = drift_check("refrigerated", at(0), 5.0, [(at(2), 6.0), (at(-2), 5.1)])  # tie: the earlier one
    assert (result.nearest_ts, result.finding) == (at(-2), False)


def test_needs_vendor_after_repeated_findings() -> None:
    now = at(0)
    assert needs_vendor([now - timedelta(days=d) for d in (1, 10)], now) is False
    assert needs_vendor([now - timedelta(days=d) for d in (1, 10, 30)], now) is True
    assert needs_vendor([now - timedelta(days=d) for d in (1, 10, 31)], now) is False
    assert needs_vendor([now + timedelta(days=1)] * 3, now) is False
    assert needs_vendor([now] * 2, now, count=2) is True


# ---------------------------------------------------------------------------------------------
# Parameters, defaults, names


def test_params_for_defaults_by_mode() -> None:
    assert (REF.mode, REF.t_min, REF.t_max) == ("refrigerated", 2.0, 8.0)
    assert (FRZ.mode, FRZ.t_min, FRZ.t_max) == ("frozen", None, -15.0)
    assert REF.delay == timedelta(minutes=10) and REF.freeze_delay == timedelta(minutes=5)
    assert REF.wrong_place_limit == -10.0 and FRZ.wrong_place_limit == 2.0
    own = params_for("refrigerated", 3.0, 7.0)
    assert (own.t_min, own.t_max) == (3.0, 7.0)


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (15, timedelta(minutes=15)),
        (2.5, timedelta(minutes=2, seconds=30)),
        ("15m", timedelta(minutes=15)),
        ("1h30m", timedelta(minutes=90)),
        ("90s", timedelta(seconds=90)),
        ("1d", timedelta(days=1)),
        ("0:15:00", timedelta(minutes=15)),
        (timedelta(minutes=7), timedelta(minutes=7)),
    ],
)
def test_params_for_reads_durations(raw: object, expected: timedelta) -> None:
    assert params_for("refrigerated", 2.0, 8.0, {"delay": raw}).delay == expected


def test_params_for_reads_back_the_effective_parameters() -> None:
    p = params_for("frozen", None, -18.0, {"hold": "3m", "hysteresis": "0.3", "wrong_place_t": 0})
    effective = {f.name: getattr(p, f.name) for f in fields(p) if f.name not in ("mode", "t_min", "t_max")}
    again = params_for(
        "frozen", None, -18.0, {k: str(v) if isinstance(v, timedelta) else v for k, v in effective.items()}
    )
    assert again == p
    assert p.hold == timedelta(minutes=3) and p.hysteresis == 0.3 and p.wrong_place_limit == 0.0


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"delay": -5}, "不能为负"),
        ({"delay": "-5m"}, "不能为负"),
        ({"hold": "soon"}, "应为时长"),
        ({"delay": True}, "应为时长"),
        ({"no_data_after": 0}, "必须大于 0"),
        ({"hysteresis": -0.1}, "不能为负"),
        ({"hysteresis": 3.5}, "过大"),
        ({"hysteresis": float("nan")}, "有限数值"),
        ({"cumulative_limit": "25h"}, "不能长于"),
        ({"freeze_threshold": 3}, "必须低于下限"),
        ({"wrong_place_t": 5}, "必须低于冷藏下限"),
        ({"t_max": 9}, "不能在报警参数里覆盖"),
        ({"delays": 5}, "未知的报警参数"),
    ],
)
def test_params_for_refuses_nonsense(overrides: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        params_for("refrigerated", 2.0, 8.0, overrides)


def test_params_for_refuses_bad_registry_values() -> None:
    with pytest.raises(ValueError, match="温区模式"):
        params_for("cold", 2.0, 8.0)
    with pytest.raises(ValueError, match="必须低于上限"):
        params_for("refrigerated", 8.0, 8.0)
    with pytest.raises(ValueError, match="必须高于冷冻上限"):
        params_for("frozen", None, -15.0, {"wrong_place_t": -20})
    with pytest.raises(ValueError, match="battery_low"):
        GatewayParams(battery_low=120.0)


def test_defaults_table_matches_the_parameters_and_says_why() -> None:
    for f in fields(RuleParams):
        if f.name in DEFAULTS:
            assert DEFAULTS[f.name].value == f.default, f.name
    documented = {f.name for f in fields(GatewayParams)} - {"battery_hysteresis", "rssi_hysteresis"}
    for f in fields(GatewayParams):
        if f.name in documented:
            assert DEFAULTS[f"gateway.{f.name}"].value == f.default, f.name
    assert DEFAULTS["refrigerated.t_min"].value == REF.t_min and DEFAULTS["refrigerated.t_max"].value == REF.t_max
    assert DEFAULTS["frozen.t_max"].value == FRZ.t_max and DEFAULTS["frozen.t_min"].value is None
    assert DEFAULTS["drift.refrigerated"].value == DRIFT_LIMIT["refrigerated"] == 0.5
    assert DEFAULTS["drift.frozen"].value == DRIFT_LIMIT["frozen"] == 1.0
    assert "E006" in DEFAULTS["delay"].source_en and "E006" in DEFAULTS["freeze_threshold"].source_zh
    for name in (
        "delay",
        "hold",
        "hysteresis",
        "max_gap",
        "cumulative_limit",
        "no_data_after",
        "wrong_place_after",
        "gateway.offline_after",
        "gateway.battery_low",
        "gateway.weak_rssi",
        "vendor.count",
    ):
        assert name in DEFAULTS, name
    for row in DEFAULTS.values():
        assert row.text and row.source_zh and row.source_en, row.name
        assert any("\u4e00" <= ch <= "\u9fff" for ch in row.source_zh), row.name


def test_every_kind_has_a_chinese_name_and_a_severity() -> None:
    assert set(KIND_NAMES) == set(KINDS) == set(KIND_SEVERITY)
    assert KIND_NAMES["freeze"] == "冷藏冻结风险" and KIND_SEVERITY["freeze"] == "critical"
    assert KIND_SEVERITY["gateway_offline"] == "critical" and KIND_SEVERITY["wrong_place"] == "minor"
    assert set(KIND_SEVERITY.values()) <= set(SEVERITY_NAMES)


def test_a_kind_that_no_longer_applies_clears_instead_of_staying_open() -> None:
    st, events = run(REF, series(0, [-1.0] * 6))
    assert [e.kind for e in opened(events)] == ["freeze"]
    # Form 1 turned the compartment into a freezer: freeze risk no longer applies.
    st, events = run(FRZ, series(6, [-20.0] * 6), st)
    assert events == [AlarmCleared(kind="freeze", at=at(11), back_since=at(6))]


def test_a_healthy_gateway_as_the_contract_describes_it_raises_nothing() -> None:
    """The README's example status (AC power, a 3.9 V battery, −67 dBm) and the simulator's
    (4.12 V) are healthy: battery is in volts, not percent."""
    _, events = gw_run([status(m, power="ac", battery=b, rssi=-67) for m, b in ((0, 3.9), (30, 4.12), (60, 4.12))])
    assert events == []
