"""A compartment's readings fed to the pure alarm rules (alarms/rules/) one at a time, as a
scheduler running every minute would, on a time line starting at :data:`T0`; and picking the opened
and cleared alarms out of the events. Shared by tests/alarms/test_alarm_rules.py,
test_gateway_rules.py and test_rule_params.py. No servers.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import UTC, datetime, timedelta

from alarms.rules import (
    AlarmCleared,
    AlarmOpened,
    CompartmentState,
    Event,
    Reading,
    RuleParams,
    evaluate_readings,
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
