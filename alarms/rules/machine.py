"""The state machine every alarm condition runs: a delay to open, a hold to clear, worsening.

Why one machine for all conditions: high, low, freeze, wrong place and the four gateway conditions
differ only in what breaches and what clears; the timing rules — durations measured between
observations that both show the condition, only continuous evidence counting either way — are
stated once here, so no two conditions can disagree about them.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from alarms.rules import defaults
from alarms.rules.events import AlarmCleared, AlarmOpened, AlarmWorsened, Event
from alarms.rules.kinds import KIND_SEVERITY, Kind
from alarms.rules.state import Excursion


@dataclass(frozen=True)
class Moment:
    """Where one observation sits in time: data time, when the system knew, and whether late."""

    at: datetime
    detected_at: datetime
    found_late: bool


def moment_of(ts: datetime, received_at: datetime, now: datetime) -> Moment:
    """Known no earlier than received and evaluated; late when received ``LATE_AFTER`` after taken."""
    return Moment(at=ts, detected_at=max(received_at, now), found_late=received_at - ts > defaults.LATE_AFTER)


def step(
    ex: Excursion,
    kind: Kind,
    moment: Moment,
    *,
    breaching: bool,
    clearing: bool,
    delay: timedelta,
    hold: timedelta,
    value: float | None = None,
    higher_is_worse: bool = True,
    temperature: bool = True,
    worsen_step: float | None = None,
    can_open: bool = True,
) -> list[Event]:
    """Advance one condition by one observation.

    Breaching starts (or continues) the delay and opens the alarm once ``at − breach_since``
    reaches it; clearing starts (or continues) the hold and clears once it is reached; an
    observation in between (inside the limit but not by the margin) stops a running hold and, for
    an alarm not yet open, the running delay — only continuous evidence counts either way.
    """
    events: list[Event] = []
    if breaching:
        ex.clear_since = None
        if ex.breach_since is None:
            ex.breach_since = moment.at
            ex.worst = value
        elif value is not None:
            if ex.worst is None:
                ex.worst = value
            else:
                ex.worst = max(ex.worst, value) if higher_is_worse else min(ex.worst, value)
        if not ex.open:
            if can_open and moment.at - ex.breach_since >= delay:
                ex.open = True
                ex.reported = ex.worst
                events.append(
                    AlarmOpened(
                        kind=kind,
                        severity=KIND_SEVERITY[kind],
                        condition_since=ex.breach_since,
                        confirmed_at=moment.at,
                        detected_at=moment.detected_at,
                        value=ex.worst if temperature else None,
                        found_late=moment.found_late,
                        measure=None if temperature else ex.worst,
                    )
                )
        elif worsen_step is not None and ex.worst is not None and ex.reported is not None:
            delta = ex.worst - ex.reported if higher_is_worse else ex.reported - ex.worst
            if round(delta, 6) >= worsen_step:
                ex.reported = ex.worst
                events.append(AlarmWorsened(kind=kind, value=ex.worst, at=moment.at))
    elif clearing and ex.open:
        if ex.clear_since is None:
            ex.clear_since = moment.at
        if moment.at - ex.clear_since >= hold:
            events.append(AlarmCleared(kind=kind, at=moment.at, back_since=ex.clear_since))
            ex.reset()
    else:
        ex.clear_since = None
        if not ex.open:
            ex.reset()
    return events
