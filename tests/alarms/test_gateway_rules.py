"""The pure rules for data that stops coming and for the gateways (alarms/rules/, CM12): a
probe silent for 30 minutes, tagged and suppressed behind an offline gateway; a gateway offline by
its status or by silence, on battery, with a low battery or a weak signal, each at its boundary,
its state through JSON and redelivered statuses ignored; and a healthy gateway as the device
contract describes it raises nothing. No servers."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Literal

from rulehelp import REF, at, live, opened, run

from alarms.rules import (
    AlarmCauseChanged,
    AlarmCleared,
    AlarmOpened,
    CompartmentState,
    Event,
    GatewayParams,
    GatewayState,
    GatewayStatus,
    evaluate_gateway,
    evaluate_readings,
    evaluate_silence,
)

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


def test_a_healthy_gateway_as_the_contract_describes_it_raises_nothing() -> None:
    """The README's example status (AC power, a 3.9 V battery, −67 dBm) and the simulator's
    (4.12 V) are healthy: battery is in volts, not percent."""
    _, events = gw_run([status(m, power="ac", battery=b, rssi=-67) for m, b in ((0, 3.9), (30, 4.12), (60, 4.12))])
    assert events == []
