"""Alarm rules for cold-chain compartments and their gateways (issue #5; CM10–CM12, CM16).

Pure functions over readings, gateway statuses and registry data: no database, no I/O, no clock.
The caller passes ``now`` and the stored rule state, and stores the returned state (a jsonb column)
in the same transaction as the events it acts on, so a restart neither forgets a running delay nor
raises an alarm twice.

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

import copy
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from types import MappingProxyType
from typing import Any, Literal, TypeAlias, cast, get_args

from coldchain.core.terms import out_of_range

__all__ = [
    "CLOCK_SKEW",
    "DEFAULTS",
    "DRIFT_LIMIT",
    "DRIFT_NEAREST",
    "KINDS",
    "KIND_NAMES",
    "KIND_SEVERITY",
    "LATE_AFTER",
    "MODES",
    "OVERRIDABLE",
    "SEVERITY_NAMES",
    "AlarmCauseChanged",
    "AlarmCleared",
    "AlarmOpened",
    "AlarmWorsened",
    "CompartmentState",
    "DefaultValue",
    "DriftResult",
    "Event",
    "Excursion",
    "GatewayParams",
    "GatewayState",
    "GatewayStatus",
    "Reading",
    "RuleParams",
    "drift_check",
    "evaluate_gateway",
    "evaluate_readings",
    "evaluate_silence",
    "needs_vendor",
    "params_for",
]

Mode: TypeAlias = Literal["refrigerated", "frozen"]
Severity: TypeAlias = Literal["critical", "major", "minor"]
Kind: TypeAlias = Literal[
    "high",
    "low",
    "freeze",
    "cumulative",
    "wrong_place",
    "no_data",
    "gateway_offline",
    "gateway_power",
    "gateway_battery_low",
    "gateway_signal",
]
Cause: TypeAlias = Literal["gateway_offline"]
Power: TypeAlias = Literal["ac", "battery"]

MODES: tuple[str, ...] = get_args(Mode)
KINDS: tuple[str, ...] = get_args(Kind)

# ---------------------------------------------------------------------------------------------
# Kinds, severities and their Chinese names

KIND_NAMES: Mapping[str, str] = MappingProxyType(
    {
        "high": "温度超上限",
        "low": "温度低于下限",
        "freeze": "冷藏冻结风险",
        "cumulative": "累计超温",
        "wrong_place": "探头位置疑似错误",
        "no_data": "探头无数据",
        "gateway_offline": "网关离线",
        "gateway_power": "网关断电（电池供电）",
        "gateway_battery_low": "网关电量低",
        "gateway_signal": "网关信号弱",
    }
)
"""Chinese label of each kind, for notifications and pages (the delivery module reads it)."""

KIND_SEVERITY: Mapping[str, Severity] = MappingProxyType(
    {
        "high": "major",
        "low": "major",
        # Freezing destroys adsorbed vaccines (HepB, DTP…) irreversibly; heat damage accumulates slowly.
        "freeze": "critical",
        "cumulative": "major",
        "wrong_place": "minor",
        "no_data": "major",
        # Every probe behind an offline gateway is blind, so this one alarm stands for all of them.
        "gateway_offline": "critical",
        "gateway_power": "major",
        "gateway_battery_low": "major",
        "gateway_signal": "minor",
    }
)

SEVERITY_NAMES: Mapping[str, str] = MappingProxyType({"critical": "紧急", "major": "重要", "minor": "一般"})

# ---------------------------------------------------------------------------------------------
# Defaults, each with the reason it has that value


@dataclass(frozen=True)
class DefaultValue:
    """One default, its value as shown to people, and where it comes from (for the README)."""

    name: str
    value: float | int | timedelta | None
    text: str
    source_zh: str
    source_en: str


_REFRIGERATED_T_MIN = 2.0
_REFRIGERATED_T_MAX = 8.0
_FROZEN_T_MAX = -15.0
_DELAY = timedelta(minutes=10)
_FREEZE_THRESHOLD = -0.5
_FREEZE_DELAY = timedelta(minutes=5)
_CUMULATIVE_LIMIT = timedelta(minutes=60)
_CUMULATIVE_WINDOW = timedelta(hours=24)
_HYSTERESIS = 0.5
_HOLD = timedelta(minutes=5)
_NO_DATA_AFTER = timedelta(minutes=30)
_WRONG_PLACE_AFTER = timedelta(hours=3)
_WRONG_PLACE_REFRIGERATED = -10.0
_WRONG_PLACE_FROZEN = 2.0
_MAX_GAP = timedelta(minutes=10)
_WORSEN_STEP = 1.0

LATE_AFTER = timedelta(minutes=5)
"""A reading received more than this after its timestamp came in a buffered upload (found late)."""
CLOCK_SKEW = timedelta(minutes=5)
"""A reading stamped more than this after it was received has a clock running ahead: ignored."""

_GW_OFFLINE_AFTER = timedelta(minutes=15)
# The device contract gives the gateway's backup battery in volts (a single Li-ion cell: 4.2 V full,
# about 3.5 V at a fifth of its charge, 3.3 V cut-off), not in percent.
_GW_BATTERY_LOW = 3.5
_GW_BATTERY_HYSTERESIS = 0.1
_GW_WEAK_RSSI = -100
_GW_RSSI_HYSTERESIS = 5
_GW_WEAK_FOR = timedelta(minutes=15)
_GW_HOLD = timedelta(minutes=5)
_GW_MAX_GAP = timedelta(minutes=30)

DRIFT_LIMIT: Mapping[str, float] = MappingProxyType({"refrigerated": 0.5, "frozen": 1.0})
DRIFT_NEAREST = timedelta(minutes=5)
_VENDOR_COUNT = 3
_VENDOR_WINDOW = timedelta(days=30)

_OUR_CHOICE_ZH = "本系统取值，可按温区覆盖。"
_OUR_CHOICE_EN = "Our choice; overridable per compartment."


def _default_table() -> Mapping[str, DefaultValue]:
    rows = [
        DefaultValue(
            "refrigerated.t_min",
            _REFRIGERATED_T_MIN,
            "+2 ℃",
            "冷藏下限 +2 ℃：疫苗说明书和《疫苗储存和运输管理规范（2017 年版）》的冷藏储存温度 +2～+8 ℃，"
            "与 WHO 一致（PQS E003 冰箱）。温区登记的限值优先。",
            "Refrigerated +2 to +8 °C: storage range on vaccine labels and in China's 2017 storage and transport "
            "code, as WHO (PQS E003 refrigerators). The compartment's registered limits take precedence.",
        ),
        DefaultValue(
            "refrigerated.t_max",
            _REFRIGERATED_T_MAX,
            "+8 ℃",
            "冷藏上限 +8 ℃：同上。8.0 ℃ 本身在范围内，超过才算超限。",
            "Refrigerated upper limit +8 °C, as above; 8.0 °C itself is inside, only above it is out of range.",
        ),
        DefaultValue(
            "frozen.t_max",
            _FROZEN_T_MAX,
            "−15 ℃",
            "冷冻上限 −15 ℃：WHO 冷冻保存疫苗 −25～−15 ℃ 的上端（PQS E003 冷冻设备）；说明书另有规定时按温区覆盖。",
            "Frozen upper limit −15 °C: warm end of WHO's −25 to −15 °C for frozen vaccines (PQS E003 freezers); "
            "override per compartment when a label says otherwise.",
        ),
        DefaultValue(
            "frozen.t_min",
            None,
            "无",
            "冷冻室不设下限：更冷不损害冷冻保存的疫苗，因此冷冻温区不报低温。",
            "No lower limit for frozen compartments: colder does not harm frozen-stored vaccines, so no low alarm.",
        ),
        DefaultValue(
            "delay",
            _DELAY,
            "10 分钟",
            "持续超限 10 分钟才报警：开门取苗、压缩机启停和除霜会造成几分钟的短暂超限；这是常见远程温度监测（RTM）"
            "平台的默认延时。WHO PQS E006 30 天温度记录仪的高温报警是 +8 ℃ 持续 10 小时，那是给每天人工查看的"
            "记录仪定的；CM16 要求接报后 30 分钟到场，报警必须及时，所以这里短得多。",
            "Out of range continuously for 10 min before alarming: door openings, compressor cycles and defrost "
            "cause excursions of a few minutes; the usual remote temperature monitoring (RTM) default. The WHO PQS "
            "E006 30-day recorder's heat alarm (+8 °C for 10 h) suits a device read once a day; CM16 wants someone "
            "on site within 30 min, so the delay here is far shorter.",
        ),
        DefaultValue(
            "freeze_threshold",
            _FREEZE_THRESHOLD,
            "−0.5 ℃",
            "冷藏温区冻结风险 ≤ −0.5 ℃：与 WHO PQS E006 30 天温度记录仪的冻结报警温度相同。",
            "Freeze risk of a refrigerated compartment at ≤ −0.5 °C: the WHO PQS E006 30-day recorder's freeze "
            "alarm temperature.",
        ),
        DefaultValue(
            "freeze_delay",
            _FREEZE_DELAY,
            "5 分钟",
            "冻结风险持续 5 分钟即报（紧急）：30 天记录仪为 60 分钟；吸附型疫苗（乙肝、百白破等）冻结后不可逆失效，"
            "实时监测应尽早叫人到场，所以更短。",
            "Freeze risk for 5 min alarms (critical): the 30-day recorder waits 60 min, but frozen adsorbed vaccines "
            "(HepB, DTP…) are lost for good, and real-time monitoring can call someone much sooner.",
        ),
        DefaultValue(
            "cumulative_limit",
            _CUMULATIVE_LIMIT,
            "60 分钟",
            "24 小时内累计超限 60 分钟报警：捕捉多次短于延时的超限（频繁开门、门封不严、冰箱偏热）。30 天记录仪"
            "只按单次持续事件报警，累计时间只记录不报警；" + _OUR_CHOICE_ZH,
            "60 min out of range in total within 24 h: catches many excursions each shorter than the delay "
            "(frequent door openings, worn seals). 30-day recorders alarm on single events only and merely record "
            "the daily total. " + _OUR_CHOICE_EN,
        ),
        DefaultValue(
            "cumulative_window",
            _CUMULATIVE_WINDOW,
            "24 小时",
            "累计窗口为截至当前读数的 24 小时（滑动）；与 30 天记录仪按日统计的口径相近。" + _OUR_CHOICE_ZH,
            "Trailing 24 h ending at the reading being judged; close to the recorders' daily totals. " + _OUR_CHOICE_EN,
        ),
        DefaultValue(
            "hysteresis",
            _HYSTERESIS,
            "0.5 ℃",
            "解除报警需回到限值以内 0.5 ℃（如 ≤ 7.5 ℃）：读数在 8.0 ℃ 附近来回跳时不会整天反复开关报警。"
            "常见 RTM 做法；" + _OUR_CHOICE_ZH,
            "Clearing needs the reading 0.5 °C inside the limit (e.g. ≤ 7.5 °C), so a reading hovering at 8.0 °C "
            "does not open and close alarms all day. Common RTM practice. " + _OUR_CHOICE_EN,
        ),
        DefaultValue(
            "hold",
            _HOLD,
            "5 分钟",
            "回到范围内并保持 5 分钟才解除：一条好读数不能证明已恢复。" + _OUR_CHOICE_ZH,
            "Back inside for 5 min before clearing: one good reading does not prove recovery. " + _OUR_CHOICE_EN,
        ),
        DefaultValue(
            "no_data_after",
            _NO_DATA_AFTER,
            "30 分钟",
            "探头 30 分钟没有数据即报无数据：与 CM16 的 30 分钟到场时限一致，看不见温度的时间不应比它长。"
            + _OUR_CHOICE_ZH,
            "A probe silent for 30 min raises no-data: matches CM16's 30-minute response time; the platform should "
            "not be blind for longer than that. " + _OUR_CHOICE_EN,
        ),
        DefaultValue(
            "wrong_place_after",
            _WRONG_PLACE_AFTER,
            "3 小时",
            "冷藏探头连续 3 小时读数像冷冻室，或冷冻探头连续 3 小时像冷藏室，疑似探头被放错或调换（CM11）。"
            "3 小时排除除霜、断电、化霜等短时情况；" + _OUR_CHOICE_ZH,
            "A refrigerated probe reading like a freezer for 3 h, or the reverse, was probably moved or swapped "
            "(CM11); 3 h rules out defrost and power cuts. " + _OUR_CHOICE_EN,
        ),
        DefaultValue(
            "wrong_place_t.refrigerated",
            _WRONG_PLACE_REFRIGERATED,
            "≤ −10 ℃",
            "冷藏探头 ≤ −10 ℃ 视为“像冷冻室”：冷藏冰箱即使冻结故障也很少这么冷。" + _OUR_CHOICE_ZH,
            "A refrigerated probe at ≤ −10 °C reads like a freezer; a failing fridge rarely gets that cold. "
            + _OUR_CHOICE_EN,
        ),
        DefaultValue(
            "wrong_place_t.frozen",
            _WRONG_PLACE_FROZEN,
            "≥ +2 ℃",
            "冷冻探头 ≥ +2 ℃ 视为“像冷藏室”（进入冷藏范围）。" + _OUR_CHOICE_ZH,
            "A frozen probe at ≥ +2 °C reads like a refrigerator (inside the refrigerated range). " + _OUR_CHOICE_EN,
        ),
        DefaultValue(
            "max_gap",
            _MAX_GAP,
            "10 分钟",
            "两条读数间隔超过 10 分钟就不算连续：数据缺口既不证明超限也不证明恢复，延时和保持时间从缺口后重新计。"
            "取值等于延时：更长的缺口里可能藏着一次完整的超限。" + _OUR_CHOICE_ZH,
            "Readings more than 10 min apart are not continuous: a gap proves neither an excursion nor a recovery, "
            "so delays and holds restart after it. Equal to the delay: a longer gap could hide a whole excursion. "
            + _OUR_CHOICE_EN,
        ),
        DefaultValue(
            "worsen_step",
            _WORSEN_STEP,
            "1 ℃",
            "报警期间温度比上次通报又恶化 1 ℃ 时再记一次（AlarmWorsened）；" + _OUR_CHOICE_ZH,
            "While an alarm is open, record it again when the temperature is 1 °C worse than last reported. "
            + _OUR_CHOICE_EN,
        ),
        DefaultValue(
            "late_after",
            LATE_AFTER,
            "5 分钟",
            "读数在测量 5 分钟以后才收到，视为断线后补传：由此确认的报警标为“迟到发现”。",
            "A reading received more than 5 min after it was taken came in a buffered upload; an alarm it confirms "
            "is marked found late.",
        ),
        DefaultValue(
            "gateway.offline_after",
            _GW_OFFLINE_AFTER,
            "15 分钟",
            "网关 15 分钟没有任何消息（或平台报告 online:false）即离线（紧急）：短于探头无数据的 30 分钟，"
            "网关报警先到，其后的探头不再逐个报警（CM12）。" + _OUR_CHOICE_ZH,
            "A gateway silent for 15 min (or reported online:false) is offline (critical): shorter than the probes' "
            "30 min, so the gateway alarm comes first and its probes are not alarmed one by one (CM12). "
            + _OUR_CHOICE_EN,
        ),
        DefaultValue(
            "gateway.battery_low",
            _GW_BATTERY_LOW,
            "3.5 V",
            "网关备用电池电压低于 3.5 V 报警，回到 3.6 V 以上解除（CM12 电源稳定）。设备协议中 battery 为伏特；"
            "单节锂电池满电 4.2 V、3.5 V 约剩两成、3.3 V 关机。" + _OUR_CHOICE_ZH,
            "Gateway backup battery below 3.5 V alarms, above 3.6 V clears (CM12 stable power). The device "
            "contract gives volts; a Li-ion cell is 4.2 V full, about a fifth left at 3.5 V, cut off at 3.3 V. "
            + _OUR_CHOICE_EN,
        ),
        DefaultValue(
            "gateway.weak_rssi",
            _GW_WEAK_RSSI,
            "−100 dBm",
            "网关信号低于 −100 dBm 持续 15 分钟报信号弱，回到 −95 dBm 以上解除（CM12 信号正常）。"
            "蜂窝网络在此以下常丢数据；" + _OUR_CHOICE_ZH,
            "Gateway RSSI below −100 dBm for 15 min is weak signal, above −95 dBm clears (CM12 good signal); cellular "
            "links lose data below it. " + _OUR_CHOICE_EN,
        ),
        DefaultValue(
            "gateway.weak_for",
            _GW_WEAK_FOR,
            "15 分钟",
            "信号弱要持续 15 分钟才报：信号强度本身会短时波动。" + _OUR_CHOICE_ZH,
            "Weak signal must last 15 min: RSSI fluctuates by itself. " + _OUR_CHOICE_EN,
        ),
        DefaultValue(
            "gateway.hold",
            _GW_HOLD,
            "5 分钟",
            "网关恢复（在线、市电、电量、信号）保持 5 分钟才解除，避免反复断续时开关报警。" + _OUR_CHOICE_ZH,
            "A gateway must stay recovered for 5 min before its alarm clears, so flapping keeps one alarm. "
            + _OUR_CHOICE_EN,
        ),
        DefaultValue(
            "gateway.max_gap",
            _GW_MAX_GAP,
            "30 分钟",
            "网关状态消息比读数稀疏：两条状态间隔超过 30 分钟才算不连续。" + _OUR_CHOICE_ZH,
            "Gateway statuses are sparser than readings: only 30 min between two statuses breaks continuity. "
            + _OUR_CHOICE_EN,
        ),
        DefaultValue(
            "drift.refrigerated",
            DRIFT_LIMIT["refrigerated"],
            "±0.5 ℃",
            "探头与温度计相差超过 ±0.5 ℃（冷藏）要查找原因：陕西省方案（CM10）。恰好 0.5 ℃ 不算。",
            "Probe and thermometer more than ±0.5 °C apart (refrigerated) must be investigated: provincial plan "
            "(CM10). Exactly 0.5 °C is not beyond.",
        ),
        DefaultValue(
            "drift.frozen",
            DRIFT_LIMIT["frozen"],
            "±1 ℃",
            "冷冻超过 ±1 ℃ 要查找原因：陕西省方案（CM10）。恰好 1 ℃ 不算。",
            "Frozen: more than ±1 °C apart must be investigated: provincial plan (CM10). Exactly 1 °C is not beyond.",
        ),
        DefaultValue(
            "drift.nearest",
            DRIFT_NEAREST,
            "5 分钟",
            "温度计读数与前后 5 分钟内最近的一条探头读数比较；更远的读数不能说明当时的温度。" + _OUR_CHOICE_ZH,
            "A thermometer reading is compared with the probe reading nearest in time within 5 min; farther ones say "
            "nothing about that moment. " + _OUR_CHOICE_EN,
        ),
        DefaultValue(
            "vendor.count",
            _VENDOR_COUNT,
            "30 天内 3 次",
            "同一探头 30 天内 3 次偏差即标记联系厂家调试或更换（CM10、CM4 保修）：一次偏差可能是读数或摆放问题，"
            "CM10 要求先查原因；反复出现才说明是硬件。本系统取值。",
            "3 drift findings for one probe within 30 days mark it for the vendor (CM10, CM4 warranty): one finding "
            "may be a misread or placement, which CM10 says to investigate first; repeats point at the hardware. "
            "Our choice.",
        ),
        DefaultValue(
            "vendor.window",
            _VENDOR_WINDOW,
            "30 天",
            "计数窗口 30 天，约为每月设备分析（CM17）的周期。本系统取值。",
            "Counted over 30 days, about the monthly device review (CM17). Our choice.",
        ),
    ]
    return MappingProxyType({row.name: row for row in rows})


DEFAULTS: Mapping[str, DefaultValue] = _default_table()
"""Every default with its value and source, keyed by parameter name (``gateway.*``, ``drift.*`` …)."""

# ---------------------------------------------------------------------------------------------
# Parameters


def _require(ok: bool, message: str) -> None:
    if not ok:
        raise ValueError(message)


def _finite(value: float, name: str) -> None:
    _require(math.isfinite(value), f"参数 {name} 必须是有限数值，收到 {value!r}")


def _non_negative(value: timedelta, name: str) -> None:
    _require(value >= timedelta(0), f"参数 {name} 不能为负（收到 {value}）")


def _positive(value: timedelta, name: str) -> None:
    _require(value > timedelta(0), f"参数 {name} 必须大于 0（收到 {value}）")


@dataclass(frozen=True)
class RuleParams:
    """The rule parameters of one compartment; defaults and their sources are in ``DEFAULTS``.

    Validated on construction so a nonsense override never reaches the rules (ValueError, Chinese
    message, shown to the user who set it).
    """

    mode: Mode
    t_min: float | None
    t_max: float
    delay: timedelta = _DELAY
    freeze_threshold: float = _FREEZE_THRESHOLD
    freeze_delay: timedelta = _FREEZE_DELAY
    cumulative_limit: timedelta = _CUMULATIVE_LIMIT
    cumulative_window: timedelta = _CUMULATIVE_WINDOW
    hysteresis: float = _HYSTERESIS
    hold: timedelta = _HOLD
    no_data_after: timedelta = _NO_DATA_AFTER
    wrong_place_after: timedelta = _WRONG_PLACE_AFTER
    wrong_place_t: float | None = None
    """None: −10 ℃ for refrigerated (reading at or below), +2 ℃ for frozen (at or above)."""
    max_gap: timedelta = _MAX_GAP
    worsen_step: float = _WORSEN_STEP

    def __post_init__(self) -> None:
        _require(self.mode in MODES, f"温区模式只能是 refrigerated（冷藏）或 frozen（冷冻），收到 {self.mode!r}")
        _finite(self.t_max, "t_max")
        if self.t_min is not None:
            _finite(self.t_min, "t_min")
            _require(self.t_min < self.t_max, f"下限 t_min（{self.t_min}）必须低于上限 t_max（{self.t_max}）")
        for name in ("delay", "freeze_delay", "hold", "wrong_place_after"):
            _non_negative(getattr(self, name), name)
        for name in ("cumulative_limit", "cumulative_window", "no_data_after", "max_gap"):
            _positive(getattr(self, name), name)
        _require(
            self.cumulative_limit <= self.cumulative_window,
            f"累计超限时间 cumulative_limit（{self.cumulative_limit}）不能长于累计窗口（{self.cumulative_window}）",
        )
        _finite(self.hysteresis, "hysteresis")
        _require(self.hysteresis >= 0, f"回差 hysteresis 不能为负（收到 {self.hysteresis}）")
        if self.t_min is not None:
            _require(
                2 * self.hysteresis <= self.t_max - self.t_min,
                f"回差 hysteresis（{self.hysteresis} ℃）过大：上下限之间只有 {self.t_max - self.t_min:g} ℃，"
                "解除高温和解除低温的区间不能重叠",
            )
        _finite(self.freeze_threshold, "freeze_threshold")
        if self.mode == "refrigerated" and self.t_min is not None:
            _require(
                self.freeze_threshold < self.t_min,
                f"冻结风险温度 freeze_threshold（{self.freeze_threshold}）必须低于下限 t_min（{self.t_min}）",
            )
        _finite(self.worsen_step, "worsen_step")
        _require(self.worsen_step > 0, f"参数 worsen_step 必须大于 0（收到 {self.worsen_step}）")
        if self.wrong_place_t is not None:
            _finite(self.wrong_place_t, "wrong_place_t")
        limit = self.wrong_place_limit
        if self.mode == "refrigerated":
            lowest = self.t_min if self.t_min is not None else self.t_max
            _require(limit < lowest, f"放错位置判定温度 wrong_place_t（{limit}）必须低于冷藏下限（{lowest}）")
        else:
            _require(limit > self.t_max, f"放错位置判定温度 wrong_place_t（{limit}）必须高于冷冻上限（{self.t_max}）")

    @property
    def wrong_place_limit(self) -> float:
        """The temperature that makes this compartment's probe look like it sits in the other kind."""
        if self.wrong_place_t is not None:
            return self.wrong_place_t
        return _WRONG_PLACE_REFRIGERATED if self.mode == "refrigerated" else _WRONG_PLACE_FROZEN


_DURATION_FIELDS = frozenset(
    {
        "delay",
        "freeze_delay",
        "cumulative_limit",
        "cumulative_window",
        "hold",
        "no_data_after",
        "wrong_place_after",
        "max_gap",
    }
)
_FLOAT_FIELDS = frozenset({"freeze_threshold", "hysteresis", "worsen_step"})
_OPTIONAL_FLOAT_FIELDS = frozenset({"wrong_place_t"})
OVERRIDABLE: frozenset[str] = _DURATION_FIELDS | _FLOAT_FIELDS | _OPTIONAL_FLOAT_FIELDS
"""Keys ``params_for`` accepts in overrides (mode and limits come from the registry, not from here)."""

_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)\s*(d|h|m|s)")
_DURATION_UNITS = {"d": 86400.0, "h": 3600.0, "m": 60.0, "s": 1.0}
_CLOCK = re.compile(r"(?:(\d+) days?, )?(\d+):(\d{1,2}):(\d{1,2})")


def _parse_duration(name: str, value: object) -> timedelta:
    """A duration from an override: timedelta, a number of minutes, "15m" / "1h30m" / "90s" / "1d",
    or "[D day(s), ]H:MM:SS" (what ``str(timedelta)`` prints, so effective parameters read back)."""
    bad = f'参数 {name} 应为时长（分钟数，或如 "15m"、"1h30m"、"0:15:00"），收到 {value!r}'
    if isinstance(value, timedelta):
        return value
    if isinstance(value, bool):
        raise ValueError(bad)
    if isinstance(value, int | float):
        _require(math.isfinite(value), bad)
        return timedelta(minutes=value)
    if isinstance(value, str):
        text = value.strip().lower()
        sign = -1.0 if text.startswith("-") else 1.0
        text = text.lstrip("+-").strip()
        clock = _CLOCK.fullmatch(text)
        if clock:
            days, hours, minutes, seconds = (int(g or 0) for g in clock.groups())
            return sign * timedelta(days=days, hours=hours, minutes=minutes, seconds=seconds)
        compact = text.replace(" ", "")
        parts = _DURATION_PART.findall(compact)
        if parts and "".join(n + u for n, u in parts) == compact:
            return sign * timedelta(seconds=sum(float(n) * _DURATION_UNITS[u] for n, u in parts))
    raise ValueError(bad)


def _parse_float(name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise ValueError(f"参数 {name} 应为数值，收到 {value!r}")
    try:
        number = float(value)
    except ValueError:
        raise ValueError(f"参数 {name} 应为数值，收到 {value!r}") from None
    _finite(number, name)
    return number


def params_for(
    mode: str,
    t_min: float | None = None,
    t_max: float | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> RuleParams:
    """The parameters of a compartment: registry mode and limits, defaults, then its overrides.

    ``t_max`` None takes the mode's default (8 ℃ / −15 ℃). ``t_min`` None means the default +2 ℃
    for refrigerated and "no lower limit" for frozen (colder never harms frozen vaccines).
    Overrides come from a jsonb column edited by people: unknown keys and values that make no sense
    raise ValueError with a Chinese message instead of silently running with a broken rule.
    """
    _require(mode in MODES, f"温区模式只能是 refrigerated（冷藏）或 frozen（冷冻），收到 {mode!r}")
    low: float | None
    if mode == "refrigerated":
        low = _REFRIGERATED_T_MIN if t_min is None else t_min
        high = _REFRIGERATED_T_MAX if t_max is None else t_max
    else:
        low = t_min
        high = _FROZEN_T_MAX if t_max is None else t_max
    values: dict[str, Any] = {}
    for key, raw in (overrides or {}).items():
        if key in _DURATION_FIELDS:
            values[key] = _parse_duration(key, raw)
        elif key in _FLOAT_FIELDS:
            values[key] = _parse_float(key, raw)
        elif key in _OPTIONAL_FLOAT_FIELDS:
            values[key] = None if raw is None else _parse_float(key, raw)
        elif key in ("mode", "t_min", "t_max"):
            raise ValueError(f"参数 {key} 来自温区登记信息（表 1 变更），不能在报警参数里覆盖")
        else:
            raise ValueError(f"未知的报警参数：{key}（可用：{'、'.join(sorted(OVERRIDABLE))}）")
    return RuleParams(mode=cast(Mode, mode), t_min=low, t_max=high, **values)


# ---------------------------------------------------------------------------------------------
# Inputs and events


@dataclass(frozen=True)
class Reading:
    """One probe reading: measured at ``ts`` (device clock), stored at ``received_at`` (server clock)."""

    ts: datetime
    t: float
    received_at: datetime


@dataclass(frozen=True)
class AlarmOpened:
    """A condition confirmed.

    ``condition_since`` is when it began (first reading of the breach, or the last time the subject
    was heard for silence); ``confirmed_at`` the data time it was proven; ``detected_at`` when this
    system knew (the evaluation, never before the confirming reading was received). ``value`` is
    always a temperature in ℃ (the worst so far) or None, because notifications show it as one;
    gateway figures (battery %, RSSI dBm) go in ``measure`` and the cumulative total in ``total``.
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

# ---------------------------------------------------------------------------------------------
# State (stored as jsonb between runs)


def _iso(value: datetime | None) -> str | None:
    return None if value is None else value.isoformat()


def _dt(data: Mapping[str, Any], key: str) -> datetime | None:
    return _parse_dt(data.get(key), key)


def _parse_dt(value: object, key: str) -> datetime | None:
    if value is None:
        return None
    if isinstance(value, datetime):
        return value
    if isinstance(value, str):
        return datetime.fromisoformat(value)
    raise ValueError(f"规则状态字段 {key} 应为 ISO 时间字符串，收到 {value!r}")


def _num(data: Mapping[str, Any], key: str) -> float | None:
    value = data.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"规则状态字段 {key} 应为数值，收到 {value!r}")
    return float(value)


def _flag(data: Mapping[str, Any], key: str) -> bool:
    value = data.get(key, False)
    if not isinstance(value, bool):
        raise ValueError(f"规则状态字段 {key} 应为布尔值，收到 {value!r}")
    return value


def _section(data: Mapping[str, Any], key: str) -> Mapping[str, Any]:
    value = data.get(key) or {}
    if not isinstance(value, Mapping):
        raise ValueError(f"规则状态字段 {key} 应为对象，收到 {value!r}")
    return value


@dataclass
class Excursion:
    """One condition's state machine: a breach running since ``breach_since`` (the delay), whether
    its alarm is open, and a recovery running since ``clear_since`` (the hold)."""

    breach_since: datetime | None = None
    open: bool = False
    clear_since: datetime | None = None
    worst: float | None = None
    reported: float | None = None

    def reset(self) -> None:
        self.breach_since = None
        self.open = False
        self.clear_since = None
        self.worst = None
        self.reported = None

    def break_continuity(self) -> None:
        """A gap: the running delay (unless already confirmed) and the running hold restart."""
        self.clear_since = None
        if not self.open:
            self.breach_since = None
            self.worst = None

    def to_json(self) -> dict[str, Any]:
        return {
            "breach_since": _iso(self.breach_since),
            "open": self.open,
            "clear_since": _iso(self.clear_since),
            "worst": self.worst,
            "reported": self.reported,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Excursion:
        return cls(
            breach_since=_dt(data, "breach_since"),
            open=_flag(data, "open"),
            clear_since=_dt(data, "clear_since"),
            worst=_num(data, "worst"),
            reported=_num(data, "reported"),
        )


STATE_VERSION = 1


@dataclass
class CompartmentState:
    """Everything the rules remember about one compartment between runs.

    ``watermark`` is the last evaluated reading's timestamp; ``segments`` the out-of-range spans
    (first to last breaching reading of each run) still inside the cumulative window, oldest first.
    ``from_json`` accepts states missing newer keys, so adding a field never breaks stored rows.
    """

    watermark: datetime | None = None
    last_value: float | None = None
    last_received_at: datetime | None = None
    high: Excursion = field(default_factory=Excursion)
    low: Excursion = field(default_factory=Excursion)
    freeze: Excursion = field(default_factory=Excursion)
    wrong_place: Excursion = field(default_factory=Excursion)
    segments: list[tuple[datetime, datetime]] = field(default_factory=list)
    cumulative_open: bool = False
    no_data_open: bool = False
    no_data_cause: Cause | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "version": STATE_VERSION,
            "watermark": _iso(self.watermark),
            "last_value": self.last_value,
            "last_received_at": _iso(self.last_received_at),
            "high": self.high.to_json(),
            "low": self.low.to_json(),
            "freeze": self.freeze.to_json(),
            "wrong_place": self.wrong_place.to_json(),
            "segments": [[start.isoformat(), end.isoformat()] for start, end in self.segments],
            "cumulative_open": self.cumulative_open,
            "no_data_open": self.no_data_open,
            "no_data_cause": self.no_data_cause,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> CompartmentState:
        segments: list[tuple[datetime, datetime]] = []
        for pair in data.get("segments") or []:
            _require(
                isinstance(pair, list | tuple) and len(pair) == 2,
                f"规则状态字段 segments 的元素应为 [开始, 结束]，收到 {pair!r}",
            )
            start, end = _parse_dt(pair[0], "segments"), _parse_dt(pair[1], "segments")
            _require(start is not None and end is not None, f"规则状态字段 segments 有空时间：{pair!r}")
            assert start is not None and end is not None
            segments.append((start, end))
        cause = data.get("no_data_cause")
        _require(cause in (None, "gateway_offline"), f"规则状态字段 no_data_cause 无效：{cause!r}")
        return cls(
            watermark=_dt(data, "watermark"),
            last_value=_num(data, "last_value"),
            last_received_at=_dt(data, "last_received_at"),
            high=Excursion.from_json(_section(data, "high")),
            low=Excursion.from_json(_section(data, "low")),
            freeze=Excursion.from_json(_section(data, "freeze")),
            wrong_place=Excursion.from_json(_section(data, "wrong_place")),
            segments=segments,
            cumulative_open=_flag(data, "cumulative_open"),
            no_data_open=_flag(data, "no_data_open"),
            no_data_cause="gateway_offline" if cause == "gateway_offline" else None,
        )


# ---------------------------------------------------------------------------------------------
# The generic state machine


@dataclass(frozen=True)
class _Moment:
    """Where one observation sits in time: data time, when the system knew, and whether late."""

    at: datetime
    detected_at: datetime
    found_late: bool


def _moment(ts: datetime, received_at: datetime, now: datetime) -> _Moment:
    return _Moment(at=ts, detected_at=max(received_at, now), found_late=received_at - ts > LATE_AFTER)


def _step(
    ex: Excursion,
    kind: Kind,
    moment: _Moment,
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


# ---------------------------------------------------------------------------------------------
# Compartment readings


def _limit(value: float) -> float:
    """A derived threshold (limit ± margin) as the nearest decimal, so 8.0 − 0.3 compares like 7.7."""
    return round(value, 6)


def _out_of_range(params: RuleParams, t: float) -> bool:
    return out_of_range(t, params.t_min, params.t_max)


def _trim(segments: list[tuple[datetime, datetime]], window_start: datetime) -> list[tuple[datetime, datetime]]:
    return [(max(start, window_start), end) for start, end in segments if end > window_start]


def _usable(reading: Reading) -> bool:
    return math.isfinite(reading.t) and reading.ts - reading.received_at <= CLOCK_SKEW


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
        moment = _moment(reading.ts, reading.received_at, now)
        gap = st.watermark is not None and reading.ts - st.watermark > params.max_gap
        if gap:
            for ex in (st.high, st.low, st.freeze, st.wrong_place):
                ex.break_continuity()

        if refrigerated:
            events += _step(
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
            events += _step(
                st.freeze, "freeze", moment, breaching=False, clearing=True, delay=params.freeze_delay, hold=params.hold
            )
        if params.t_min is not None and low_clear is not None:
            events += _step(
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
            events += _step(st.low, "low", moment, breaching=False, clearing=True, delay=params.delay, hold=params.hold)
        events += _step(
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
        events += _step(
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


# ---------------------------------------------------------------------------------------------
# Gateways (CM12)


@dataclass(frozen=True)
class GatewayStatus:
    """One gateway status: ``online`` as the vendor platform reports it (None: not said), mains or
    battery power, battery percent, signal strength in dBm; None wherever the message did not say."""

    ts: datetime
    online: bool | None
    power: Power | None
    battery: float | None
    rssi: int | None
    received_at: datetime


@dataclass(frozen=True)
class GatewayParams:
    """Gateway rule parameters; defaults and sources under ``gateway.*`` in ``DEFAULTS``."""

    offline_after: timedelta = _GW_OFFLINE_AFTER
    battery_low: float = _GW_BATTERY_LOW
    battery_hysteresis: float = _GW_BATTERY_HYSTERESIS
    weak_rssi: int = _GW_WEAK_RSSI
    rssi_hysteresis: int = _GW_RSSI_HYSTERESIS
    weak_for: timedelta = _GW_WEAK_FOR
    hold: timedelta = _GW_HOLD
    max_gap: timedelta = _GW_MAX_GAP

    def __post_init__(self) -> None:
        _positive(self.offline_after, "offline_after")
        _non_negative(self.weak_for, "weak_for")
        _non_negative(self.hold, "hold")
        _positive(self.max_gap, "max_gap")
        _finite(self.battery_low, "battery_low")
        _require(0 <= self.battery_low <= 100, f"参数 battery_low（伏特）应在 0～100 之间（收到 {self.battery_low}）")
        _require(self.battery_hysteresis >= 0, f"参数 battery_hysteresis 不能为负（收到 {self.battery_hysteresis}）")
        _require(self.rssi_hysteresis >= 0, f"参数 rssi_hysteresis 不能为负（收到 {self.rssi_hysteresis}）")


@dataclass
class GatewayState:
    """What the gateway rules remember between runs (stored as jsonb, like ``CompartmentState``)."""

    watermark: datetime | None = None
    last_heard: datetime | None = None
    last_online: bool | None = None
    offline: Excursion = field(default_factory=Excursion)
    power: Excursion = field(default_factory=Excursion)
    battery_low: Excursion = field(default_factory=Excursion)
    signal: Excursion = field(default_factory=Excursion)

    def to_json(self) -> dict[str, Any]:
        return {
            "version": STATE_VERSION,
            "watermark": _iso(self.watermark),
            "last_heard": _iso(self.last_heard),
            "last_online": self.last_online,
            "offline": self.offline.to_json(),
            "power": self.power.to_json(),
            "battery_low": self.battery_low.to_json(),
            "signal": self.signal.to_json(),
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> GatewayState:
        online = data.get("last_online")
        _require(online is None or isinstance(online, bool), f"规则状态字段 last_online 无效：{online!r}")
        return cls(
            watermark=_dt(data, "watermark"),
            last_heard=_dt(data, "last_heard"),
            last_online=online,
            offline=Excursion.from_json(_section(data, "offline")),
            power=Excursion.from_json(_section(data, "power")),
            battery_low=Excursion.from_json(_section(data, "battery_low")),
            signal=Excursion.from_json(_section(data, "signal")),
        )


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
        (s for s in statuses if s.ts - s.received_at <= CLOCK_SKEW),
        key=lambda s: s.ts,
    )
    battery_clear = params.battery_low + params.battery_hysteresis
    rssi_clear = params.weak_rssi + params.rssi_hysteresis
    for status in fresh:
        if st.watermark is not None and status.ts <= st.watermark:
            continue
        moment = _moment(status.ts, status.received_at, now)
        if st.watermark is not None and status.ts - st.watermark > params.max_gap:
            for ex in (st.power, st.battery_low, st.signal):
                ex.break_continuity()
        down = status.online is False
        events += _step(
            st.offline,
            "gateway_offline",
            moment,
            breaching=down,
            clearing=not down,
            delay=timedelta(0),
            hold=params.hold,
            temperature=False,
        )
        if status.power is not None:
            events += _step(
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
            events += _step(
                st.battery_low,
                "gateway_battery_low",
                moment,
                breaching=status.battery < params.battery_low,
                clearing=status.battery >= battery_clear,
                delay=timedelta(0),
                hold=params.hold,
                value=status.battery,
                higher_is_worse=False,
                temperature=False,
            )
        if status.rssi is not None:
            events += _step(
                st.signal,
                "gateway_signal",
                moment,
                breaching=status.rssi < params.weak_rssi,
                clearing=status.rssi >= rssi_clear,
                delay=params.weak_for,
                hold=params.hold,
                value=float(status.rssi),
                higher_is_worse=False,
                temperature=False,
            )
        st.watermark = status.ts
        if status.online is not None:
            st.last_online = status.online
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
        events += _step(
            st.offline,
            "gateway_offline",
            _Moment(now, now, False),
            breaching=False,
            clearing=True,
            delay=timedelta(0),
            hold=params.hold,
            temperature=False,
        )
    return st, events


# ---------------------------------------------------------------------------------------------
# Thermometer drift (CM10)


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
    _require(mode in MODES, f"温区模式只能是 refrigerated（冷藏）或 frozen（冷冻），收到 {mode!r}")
    limit = DRIFT_LIMIT[mode]
    candidates = [
        (abs(ts - thermometer_ts), ts, t)
        for ts, t in probe_readings
        if abs(ts - thermometer_ts) <= DRIFT_NEAREST and math.isfinite(t)
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
    count: int = _VENDOR_COUNT,
    window: timedelta = _VENDOR_WINDOW,
) -> bool:
    """Whether a probe's drift findings are frequent enough to call the vendor (CM10, CM4).

    One finding may be a misread thermometer or a probe touching the wall — CM10 says to find the
    cause first; ``count`` findings within ``window`` (3 in 30 days, the monthly review of CM17)
    point at the hardware. Findings in ``[now − window, now]`` count; later ones (clock skew) do not.
    """
    _require(count >= 1, f"参数 count 必须至少为 1（收到 {count}）")
    _positive(window, "window")
    return sum(1 for ts in finding_times if now - window <= ts <= now) >= count
