"""What the rules take in and what they give out: readings and gateway statuses in, alarm events out.

Why plain frozen dataclasses: the rules are pure, so everything crossing their boundary is data the
caller (the scheduler's engine, a test) builds and reads, with no database row or clock behind it.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TypeAlias

from alarms.rules.kinds import Cause, Kind, Power, Severity


@dataclass(frozen=True)
class Reading:
    """One probe reading: measured at ``ts`` (device clock), stored at ``received_at`` (server clock)."""

    ts: datetime
    t: float
    received_at: datetime


@dataclass(frozen=True)
class GatewayStatus:
    """One gateway status: ``online`` as the vendor platform reports it (None: not said), mains or
    battery power, backup battery in volts, signal strength in dBm; None wherever the message did not say."""

    ts: datetime
    online: bool | None
    power: Power | None
    battery: float | None
    rssi: int | None
    received_at: datetime


@dataclass(frozen=True)
class AlarmOpened:
    """A condition confirmed.

    ``condition_since`` is when it began (first reading of the breach, or the last time the subject
    was heard for silence); ``confirmed_at`` the data time it was proven; ``detected_at`` when this
    system knew (the evaluation, never before the confirming reading was received). ``value`` is
    always a temperature in ℃ (the worst so far) or None, because notifications show it as one;
    gateway figures (battery V, RSSI dBm) go in ``measure`` and the cumulative total in ``total``.
    """

    kind: Kind
    severity: Severity
    condition_since: datetime
    confirmed_at: datetime
    detected_at: datetime
    value: float | None
    found_late: bool
    cause: Cause | None = None
    suppressed: bool = False
    total: timedelta | None = None
    measure: float | None = None


@dataclass(frozen=True)
class AlarmCleared:
    """The condition is gone: ``at`` when that was proven (data time for readings, ``now`` for
    silence), ``back_since`` when the subject came back (start of the hold), if known."""

    kind: Kind
    at: datetime
    back_since: datetime | None = None


@dataclass(frozen=True)
class AlarmWorsened:
    """An open temperature alarm got ``worsen_step`` worse than last announced."""

    kind: Kind
    value: float
    at: datetime


@dataclass(frozen=True)
class AlarmCauseChanged:
    """An open alarm's cause changed, e.g. a probe's silence no longer explained by its gateway:
    the same condition continues (same ``condition_since``), but from now on it is notified."""

    kind: Kind
    cause: Cause | None
    suppressed: bool
    at: datetime


Event: TypeAlias = AlarmOpened | AlarmCleared | AlarmWorsened | AlarmCauseChanged
