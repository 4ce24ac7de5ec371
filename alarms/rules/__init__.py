"""Alarm rules for cold-chain compartments and their gateways (issue #5; CM10–CM12, CM16).

Pure functions over readings, gateway statuses and registry data: no database, no I/O, no clock.
The caller passes ``now`` and the stored rule state, and stores the returned state (a jsonb column)
in the same transaction as the events it acts on, so a restart neither forgets a running delay nor
raises an alarm twice.

The package, by concern: :mod:`~alarms.rules.kinds` (kinds, severities, names),
:mod:`~alarms.rules.defaults` (every default with its source, and the README's table of them),
:mod:`~alarms.rules.params` (a compartment's parameters and overrides), :mod:`~alarms.rules.events`
(what goes in and comes out), :mod:`~alarms.rules.state` (what is stored between runs),
:mod:`~alarms.rules.machine` (the delay/hold state machine), :mod:`~alarms.rules.compartment`,
:mod:`~alarms.rules.gateway` and :mod:`~alarms.rules.drift` (the rules). This module re-exports
what the rest of the system uses, so importers name ``alarms.rules`` and not a file in it.

Decisions worth knowing before changing anything here (the README's alarm section quotes them):

* **Time is data time.** Delays, holds and the cumulative window run on reading timestamps, never
  on ``now``; a buffered upload after an outage is therefore judged exactly as if it had arrived
  live, and an excursion inside it is still raised — marked ``found_late``. Only silence (no data,
  gateway offline) is judged against ``now``, because silence has no readings to carry time.
* **A gap in data is not evidence.** Two readings further apart than ``max_gap`` break continuity:
  a running delay and a running clearing hold both restart at the next reading. An open alarm
  stays open across a gap (the silence rules speak for the gap itself).
* **Durations are measured between readings that both show the condition.** A breach that starts
  at reading A is confirmed by a later reading B still breaching with ``B.ts - A.ts >= delay``; the
  cumulative rule adds up exactly the same spans (first to last breaching reading of each run), so
  the two rules never disagree about how long an excursion lasted. One isolated out-of-range
  reading counts 0 minutes — nothing shows how long it lasted; each run is undercounted by at most
  one reading interval (1 minute at the usual rate).
* **Boundaries.** Out of range is strict (8.0 ℃ is inside 2–8 ℃). Freeze risk is ``t <= −0.5``.
  Clearing needs the reading back inside by the hysteresis margin (high: ``t <= t_max − 0.5``,
  low: ``t >= t_min + 0.5``, freeze: ``t > −0.5 + 0.5``) continuously for ``hold``; between the
  limit and the margin nothing changes, so a probe hovering around 8.0 ℃ keeps one alarm open
  instead of opening and closing it all day.
* **Freeze and low.** In a refrigerated compartment freezing always passes through "below 2 ℃",
  so while a freeze alarm is open a *new* low alarm is not opened (one critical alarm says it
  all). Its delay keeps running, though: if the freeze alarm clears while the temperature is still
  below ``t_min``, the low alarm opens at once with the original ``condition_since``, so the
  excursion is never unalarmed. A low alarm that was already open when freezing began stays open
  (closing it would falsely say the temperature came back).
* **Cumulative** counts time out of the compartment's limits (high or low) within the trailing
  window ending at the reading being evaluated. It is independent of the single-excursion alarms:
  it is about exposure of the vaccines, which matters however it accumulated.
* **Kinds that no longer apply** (freeze after a compartment became frozen, low after ``t_min`` was
  removed) are treated as "condition absent" and clear after the hold instead of staying open.
* **Readings ignored:** non-finite values, and readings stamped more than ``CLOCK_SKEW`` after
  they were received (a probe whose clock runs ahead would otherwise push the watermark into the
  future and silence every later reading; ignored instead, it shows up as a no-data alarm).
  Readings at or before the watermark are redeliveries and are ignored too, so replaying a batch
  raises nothing twice. A probe must therefore deliver its readings in time order per batch
  boundary: an older reading arriving after a newer one has been evaluated is stored for history by
  ingest but is not re-judged here.
"""

from __future__ import annotations

from alarms.rules.compartment import evaluate_readings, evaluate_silence
from alarms.rules.defaults import DEFAULTS, DRIFT_LIMIT, defaults_table_markdown
from alarms.rules.drift import drift_check, needs_vendor
from alarms.rules.events import (
    AlarmCauseChanged,
    AlarmCleared,
    AlarmOpened,
    AlarmWorsened,
    Event,
    GatewayStatus,
    Reading,
)
from alarms.rules.gateway import GatewayParams, evaluate_gateway
from alarms.rules.kinds import KIND_NAMES, KIND_SEVERITY, KINDS, SEVERITY_NAMES
from alarms.rules.params import RuleParams, params_for
from alarms.rules.state import CompartmentState, GatewayState

__all__ = [
    "DEFAULTS",
    "DRIFT_LIMIT",
    "KINDS",
    "KIND_NAMES",
    "KIND_SEVERITY",
    "SEVERITY_NAMES",
    "AlarmCauseChanged",
    "AlarmCleared",
    "AlarmOpened",
    "AlarmWorsened",
    "CompartmentState",
    "Event",
    "GatewayParams",
    "GatewayState",
    "GatewayStatus",
    "Reading",
    "RuleParams",
    "defaults_table_markdown",
    "drift_check",
    "evaluate_gateway",
    "evaluate_readings",
    "evaluate_silence",
    "needs_vendor",
    "params_for",
]
