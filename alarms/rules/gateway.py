"""The gateway rules (CM12): offline, on battery, low battery and weak signal.

Why apart from the compartment rules: a gateway has no temperature and its own, system-wide
parameters; its offline alarm stands for every probe behind it, whose no-data alarms the
compartment rules then record as caused by it and do not notify one by one.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta

from alarms.rules import checks, defaults
from alarms.rules.events import AlarmOpened, Event, GatewayStatus
from alarms.rules.kinds import KIND_SEVERITY
from alarms.rules.machine import Moment, moment_of, step
from alarms.rules.state import GatewayState


@dataclass(frozen=True)
class GatewayParams:
    """Gateway rule parameters; defaults and sources under ``gateway.*`` in ``DEFAULTS``."""

    offline_after: timedelta = defaults.GW_OFFLINE_AFTER
    battery_low: float = defaults.GW_BATTERY_LOW
    battery_hysteresis: float = defaults.GW_BATTERY_HYSTERESIS
    weak_rssi: int = defaults.GW_WEAK_RSSI
    rssi_hysteresis: int = defaults.GW_RSSI_HYSTERESIS
    weak_for: timedelta = defaults.GW_WEAK_FOR
    hold: timedelta = defaults.GW_HOLD
    max_gap: timedelta = defaults.GW_MAX_GAP

    def __post_init__(self) -> None:
        checks.positive(self.offline_after, "offline_after")
        checks.non_negative(self.weak_for, "weak_for")
        checks.non_negative(self.hold, "hold")
        checks.positive(self.max_gap, "max_gap")
        checks.finite(self.battery_low, "battery_low")
        checks.require(
            0 <= self.battery_low <= 100, f"参数 battery_low（伏特）应在 0～100 之间（收到 {self.battery_low}）"
        )
        checks.require(
            self.battery_hysteresis >= 0, f"参数 battery_hysteresis 不能为负（收到 {self.battery_hysteresis}）"
        )
        checks.require(self.rssi_hysteresis >= 0, f"参数 rssi_hysteresis 不能为负（收到 {self.rssi_hysteresis}）")


def _telemetry(params: GatewayParams, st: GatewayState, status: GatewayStatus, moment: Moment) -> list[Event]:
    """Power, battery and signal advanced by one status (in time order of the telemetry)."""
    events: list[Event] = []
    if status.power is not None:
        events += step(
            st.power,
            "gateway_power",
            moment,
            breaching=status.power == "battery",
            clearing=status.power == "ac",
            delay=timedelta(0),
            hold=params.hold,
            temperature=False,
        )
    if status.battery is not None and math.isfinite(status.battery):
        events += step(
            st.battery_low,
            "gateway_battery_low",
            moment,
            breaching=status.battery < params.battery_low,
            clearing=status.battery >= params.battery_low + params.battery_hysteresis,
            delay=timedelta(0),
            hold=params.hold,
            value=status.battery,
            higher_is_worse=False,
            temperature=False,
        )
    if status.rssi is not None:
        events += step(
            st.signal,
            "gateway_signal",
            moment,
            breaching=status.rssi < params.weak_rssi,
            clearing=status.rssi >= params.weak_rssi + params.rssi_hysteresis,
            delay=params.weak_for,
            hold=params.hold,
            value=float(status.rssi),
            higher_is_worse=False,
            temperature=False,
        )
    return events


def evaluate_gateway(
    params: GatewayParams,
    state: GatewayState,
    statuses: Iterable[GatewayStatus],
    last_seen: datetime | None,
    now: datetime,
) -> tuple[GatewayState, list[Event]]:
    """Offline, on battery, low battery and weak signal for one gateway (CM12).

    ``last_seen`` is the last time anything arrived from the gateway (its statuses or any reading of
    a probe behind it). Statuses are judged in time order like readings (redeliveries ignored).

    * gateway_offline (critical): a status saying ``online: false`` opens it at once (the vendor
      platform has already waited); so does nothing heard for ``offline_after`` — judged at ``now``,
      with ``condition_since`` the last time it was heard. It clears after the gateway has been up
      (heard, and not reported offline) for ``hold``, from the first status or pass that saw it up.
    * gateway_power (major): on battery, at once (the fridge is probably without mains too); clears
      after ``hold`` on mains.
    * gateway_battery_low (major): below ``battery_low`` V; clears at ``battery_low + battery_hysteresis`` for hold.
    * gateway_signal (minor): RSSI below ``weak_rssi`` for ``weak_for``; clears at ``weak_rssi + 5``
      for hold.

    A status that does not mention a field leaves that condition as it was. A gateway never heard
    from (``last_seen`` None, no statuses) raises nothing: that is a registry question, not an alarm.
    """
    st = copy.deepcopy(state)
    events: list[Event] = []
    fresh = sorted(
        (s for s in statuses if s.ts - s.received_at <= defaults.CLOCK_SKEW),
        key=lambda s: s.ts,
    )
    for status in fresh:
        telemetry = status.power is not None or status.battery is not None or status.rssi is not None
        new_telemetry = telemetry and (st.watermark is None or status.ts > st.watermark)
        # A status heard is the gateway up, unless it says otherwise; only the newest such word counts.
        new_online = (status.online is not None or new_telemetry) and (
            st.online_watermark is None or status.ts > st.online_watermark
        )
        if not new_telemetry and not new_online:
            continue  # a redelivery, or older than what was already judged
        moment = moment_of(status.ts, status.received_at, now)
        if new_online:
            down = status.online is False
            events += step(
                st.offline,
                "gateway_offline",
                moment,
                breaching=down,
                clearing=not down,
                delay=timedelta(0),
                hold=params.hold,
                temperature=False,
            )
            st.online_watermark = status.ts
            if status.online is not None:
                st.last_online = status.online
        if new_telemetry:
            if st.watermark is not None and status.ts - st.watermark > params.max_gap:
                for ex in (st.power, st.battery_low, st.signal):
                    ex.break_continuity()
            events += _telemetry(params, st, status, moment)
            st.watermark = status.ts
        if st.last_heard is None or status.received_at > st.last_heard:
            st.last_heard = status.received_at
    if last_seen is not None and (st.last_heard is None or last_seen > st.last_heard):
        st.last_heard = last_seen

    if st.last_heard is None:
        return st, events
    silent = now - st.last_heard >= params.offline_after
    if silent and not st.offline.open:
        st.offline.reset()
        st.offline.breach_since = st.last_heard
        st.offline.open = True
        events.append(
            AlarmOpened(
                kind="gateway_offline",
                severity=KIND_SEVERITY["gateway_offline"],
                condition_since=st.last_heard,
                confirmed_at=st.last_heard + params.offline_after,
                detected_at=now,
                value=None,
                found_late=False,
            )
        )
    elif silent or st.last_online is False:
        st.offline.clear_since = None
    elif st.offline.open:
        events += step(
            st.offline,
            "gateway_offline",
            Moment(now, now, False),
            breaching=False,
            clearing=True,
            delay=timedelta(0),
            hold=params.hold,
            temperature=False,
        )
    return st, events
