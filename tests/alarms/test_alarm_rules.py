"""The pure temperature rules of a compartment (alarms/rules/): out of range, freeze risk,
cumulative time out of range and wrong place (CM11), each at its exact boundary, with the flapping
and gap cases the issue names; a kind that no longer applies clears; and restarts through the JSON
state, redelivery and late uploads, which must never raise an alarm twice or lose one. No servers."""

from __future__ import annotations

import json
import random
from datetime import timedelta

from rulehelp import FRZ, REF, at, cleared, live, opened, run, series

from alarms.rules import (
    AlarmCleared,
    AlarmOpened,
    AlarmWorsened,
    CompartmentState,
    Reading,
    evaluate_readings,
    evaluate_silence,
)

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
# A compartment that changes mode


def test_a_kind_that_no_longer_applies_clears_instead_of_staying_open() -> None:
    st, events = run(REF, series(0, [-1.0] * 6))
    assert [e.kind for e in opened(events)] == ["freeze"]
    # Form 1 turned the compartment into a freezer: freeze risk no longer applies.
    st, events = run(FRZ, series(6, [-20.0] * 6), st)
    assert events == [AlarmCleared(kind="freeze", at=at(11), back_since=at(6))]
