"""Every default of the alarm rules, with the reason it has that value, and the README's table of them.

Why the values and their sources live together: a default without its reason gets changed by the
next person who finds it odd, and a README table typed by hand drifts from the code. The README's
table is :func:`defaults_table_markdown`'s output, and a test fails when the two differ.

The constants are read by the parameter, gateway and drift modules as their defaults; ``DEFAULTS``
is what people read.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import timedelta
from types import MappingProxyType


@dataclass(frozen=True)
class DefaultValue:
    """One default, its value as shown to people, and where it comes from (for the README)."""

    name: str
    value: float | int | timedelta | None
    text: str
    source_zh: str
    source_en: str


REFRIGERATED_T_MIN = 2.0
REFRIGERATED_T_MAX = 8.0
FROZEN_T_MAX = -15.0
DELAY = timedelta(minutes=10)
FREEZE_THRESHOLD = -0.5
FREEZE_DELAY = timedelta(minutes=5)
CUMULATIVE_LIMIT = timedelta(minutes=60)
CUMULATIVE_WINDOW = timedelta(hours=24)
HYSTERESIS = 0.5
HOLD = timedelta(minutes=5)
NO_DATA_AFTER = timedelta(minutes=30)
WRONG_PLACE_AFTER = timedelta(hours=3)
WRONG_PLACE_REFRIGERATED = -10.0
WRONG_PLACE_FROZEN = 2.0
MAX_GAP = timedelta(minutes=10)
WORSEN_STEP = 1.0

LATE_AFTER = timedelta(minutes=5)
"""A reading received more than this after its timestamp came in a buffered upload (found late)."""
CLOCK_SKEW = timedelta(minutes=5)
"""A reading stamped more than this after it was received has a clock running ahead: ignored."""

GW_OFFLINE_AFTER = timedelta(minutes=15)
# The device contract gives the gateway's backup battery in volts (a single Li-ion cell: 4.2 V full,
# about 3.5 V at a fifth of its charge, 3.3 V cut-off), not in percent.
GW_BATTERY_LOW = 3.5
GW_BATTERY_HYSTERESIS = 0.1
GW_WEAK_RSSI = -100
GW_RSSI_HYSTERESIS = 5
GW_WEAK_FOR = timedelta(minutes=15)
GW_HOLD = timedelta(minutes=5)
GW_MAX_GAP = timedelta(minutes=30)

DRIFT_LIMIT: Mapping[str, float] = MappingProxyType({"refrigerated": 0.5, "frozen": 1.0})
DRIFT_NEAREST = timedelta(minutes=5)
VENDOR_COUNT = 3
VENDOR_WINDOW = timedelta(days=30)

_OUR_CHOICE_ZH = "本系统取值，可按温区覆盖。"
_OUR_CHOICE_EN = "Our choice; overridable per compartment."
# Gateway rules and the drift comparison have one set of values for every gateway and compartment.
_SYSTEM_CHOICE_ZH = "本系统取值，全系统统一。"
_SYSTEM_CHOICE_EN = "Our choice; one value for the whole system."


def _default_table() -> Mapping[str, DefaultValue]:
    rows = [
        DefaultValue(
            "refrigerated.t_min",
            REFRIGERATED_T_MIN,
            "+2 ℃",
            "冷藏下限 +2 ℃：疫苗说明书和《疫苗储存和运输管理规范（2017 年版）》的冷藏储存温度 +2～+8 ℃，"
            "与 WHO 一致（PQS E003 冰箱）。温区登记的限值优先。",
            "Refrigerated +2 to +8 °C: storage range on vaccine labels and in China's 2017 storage and transport "
            "code, as WHO (PQS E003 refrigerators). The compartment's registered limits take precedence.",
        ),
        DefaultValue(
            "refrigerated.t_max",
            REFRIGERATED_T_MAX,
            "+8 ℃",
            "冷藏上限 +8 ℃：同上。8.0 ℃ 本身在范围内，超过才算超限。",
            "Refrigerated upper limit +8 °C, as above; 8.0 °C itself is inside, only above it is out of range.",
        ),
        DefaultValue(
            "frozen.t_max",
            FROZEN_T_MAX,
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
            DELAY,
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
            FREEZE_THRESHOLD,
            "−0.5 ℃",
            "冷藏温区冻结风险 ≤ −0.5 ℃：与 WHO PQS E006 30 天温度记录仪的冻结报警温度相同。",
            "Freeze risk of a refrigerated compartment at ≤ −0.5 °C: the WHO PQS E006 30-day recorder's freeze "
            "alarm temperature.",
        ),
        DefaultValue(
            "freeze_delay",
            FREEZE_DELAY,
            "5 分钟",
            "冻结风险持续 5 分钟即报（紧急）：30 天记录仪为 60 分钟；吸附型疫苗（乙肝、百白破等）冻结后不可逆失效，"
            "实时监测应尽早叫人到场，所以更短。",
            "Freeze risk for 5 min alarms (critical): the 30-day recorder waits 60 min, but frozen adsorbed vaccines "
            "(HepB, DTP…) are lost for good, and real-time monitoring can call someone much sooner.",
        ),
        DefaultValue(
            "cumulative_limit",
            CUMULATIVE_LIMIT,
            "60 分钟",
            "24 小时内累计超限 60 分钟报警：捕捉多次短于延时的超限（频繁开门、门封不严、冰箱偏热）。30 天记录仪"
            "只按单次持续事件报警，累计时间只记录不报警；" + _OUR_CHOICE_ZH,
            "60 min out of range in total within 24 h: catches many excursions each shorter than the delay "
            "(frequent door openings, worn seals). 30-day recorders alarm on single events only and merely record "
            "the daily total. " + _OUR_CHOICE_EN,
        ),
        DefaultValue(
            "cumulative_window",
            CUMULATIVE_WINDOW,
            "24 小时",
            "累计窗口为截至当前读数的 24 小时（滑动）；与 30 天记录仪按日统计的口径相近。" + _OUR_CHOICE_ZH,
            "Trailing 24 h ending at the reading being judged; close to the recorders' daily totals. " + _OUR_CHOICE_EN,
        ),
        DefaultValue(
            "hysteresis",
            HYSTERESIS,
            "0.5 ℃",
            "解除报警需回到限值以内 0.5 ℃（如 ≤ 7.5 ℃）：读数在 8.0 ℃ 附近来回跳时不会整天反复开关报警。"
            "常见 RTM 做法；" + _OUR_CHOICE_ZH,
            "Clearing needs the reading 0.5 °C inside the limit (e.g. ≤ 7.5 °C), so a reading hovering at 8.0 °C "
            "does not open and close alarms all day. Common RTM practice. " + _OUR_CHOICE_EN,
        ),
        DefaultValue(
            "hold",
            HOLD,
            "5 分钟",
            "回到范围内并保持 5 分钟才解除：一条好读数不能证明已恢复。" + _OUR_CHOICE_ZH,
            "Back inside for 5 min before clearing: one good reading does not prove recovery. " + _OUR_CHOICE_EN,
        ),
        DefaultValue(
            "no_data_after",
            NO_DATA_AFTER,
            "30 分钟",
            "探头 30 分钟没有数据即报无数据：与 CM16 的 30 分钟到场时限一致，看不见温度的时间不应比它长。"
            + _OUR_CHOICE_ZH,
            "A probe silent for 30 min raises no-data: matches CM16's 30-minute response time; the platform should "
            "not be blind for longer than that. " + _OUR_CHOICE_EN,
        ),
        DefaultValue(
            "wrong_place_after",
            WRONG_PLACE_AFTER,
            "3 小时",
            "冷藏探头连续 3 小时读数像冷冻室，或冷冻探头连续 3 小时像冷藏室，疑似探头被放错或调换（CM11）。"
            "3 小时排除除霜、断电、化霜等短时情况；" + _OUR_CHOICE_ZH,
            "A refrigerated probe reading like a freezer for 3 h, or the reverse, was probably moved or swapped "
            "(CM11); 3 h rules out defrost and power cuts. " + _OUR_CHOICE_EN,
        ),
        DefaultValue(
            "wrong_place_t.refrigerated",
            WRONG_PLACE_REFRIGERATED,
            "≤ −10 ℃",
            "冷藏探头 ≤ −10 ℃ 视为“像冷冻室”：冷藏冰箱即使冻结故障也很少这么冷。" + _OUR_CHOICE_ZH,
            "A refrigerated probe at ≤ −10 °C reads like a freezer; a failing fridge rarely gets that cold. "
            + _OUR_CHOICE_EN,
        ),
        DefaultValue(
            "wrong_place_t.frozen",
            WRONG_PLACE_FROZEN,
            "≥ +2 ℃",
            "冷冻探头 ≥ +2 ℃ 视为“像冷藏室”（进入冷藏范围）。" + _OUR_CHOICE_ZH,
            "A frozen probe at ≥ +2 °C reads like a refrigerator (inside the refrigerated range). " + _OUR_CHOICE_EN,
        ),
        DefaultValue(
            "max_gap",
            MAX_GAP,
            "10 分钟",
            "两条读数间隔超过 10 分钟就不算连续：数据缺口既不证明超限也不证明恢复，延时和保持时间从缺口后重新计。"
            "取值等于延时：更长的缺口里可能藏着一次完整的超限。" + _OUR_CHOICE_ZH,
            "Readings more than 10 min apart are not continuous: a gap proves neither an excursion nor a recovery, "
            "so delays and holds restart after it. Equal to the delay: a longer gap could hide a whole excursion. "
            + _OUR_CHOICE_EN,
        ),
        DefaultValue(
            "worsen_step",
            WORSEN_STEP,
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
            GW_OFFLINE_AFTER,
            "15 分钟",
            "网关 15 分钟没有任何消息（或平台报告 online:false）即离线（紧急）：短于探头无数据的 30 分钟，"
            "网关报警先到，其后的探头不再逐个报警（CM12）。" + _SYSTEM_CHOICE_ZH,
            "A gateway silent for 15 min (or reported online:false) is offline (critical): shorter than the probes' "
            "30 min, so the gateway alarm comes first and its probes are not alarmed one by one (CM12). "
            + _SYSTEM_CHOICE_EN,
        ),
        DefaultValue(
            "gateway.battery_low",
            GW_BATTERY_LOW,
            "3.5 V",
            "网关备用电池电压低于 3.5 V 报警，回到 3.6 V 以上解除（CM12 电源稳定）。设备协议中 battery 为伏特；"
            "单节锂电池满电 4.2 V、3.5 V 约剩两成、3.3 V 关机。" + _SYSTEM_CHOICE_ZH,
            "Gateway backup battery below 3.5 V alarms, above 3.6 V clears (CM12 stable power). The device "
            "contract gives volts; a Li-ion cell is 4.2 V full, about a fifth left at 3.5 V, cut off at 3.3 V. "
            + _SYSTEM_CHOICE_EN,
        ),
        DefaultValue(
            "gateway.weak_rssi",
            GW_WEAK_RSSI,
            "−100 dBm",
            "网关信号低于 −100 dBm 持续 15 分钟报信号弱，回到 −95 dBm 以上解除（CM12 信号正常）。"
            "蜂窝网络在此以下常丢数据；" + _SYSTEM_CHOICE_ZH,
            "Gateway RSSI below −100 dBm for 15 min is weak signal, above −95 dBm clears (CM12 good signal); cellular "
            "links lose data below it. " + _SYSTEM_CHOICE_EN,
        ),
        DefaultValue(
            "gateway.weak_for",
            GW_WEAK_FOR,
            "15 分钟",
            "信号弱要持续 15 分钟才报：信号强度本身会短时波动。" + _SYSTEM_CHOICE_ZH,
            "Weak signal must last 15 min: RSSI fluctuates by itself. " + _SYSTEM_CHOICE_EN,
        ),
        DefaultValue(
            "gateway.hold",
            GW_HOLD,
            "5 分钟",
            "网关恢复（在线、市电、电量、信号）保持 5 分钟才解除，避免反复断续时开关报警。" + _SYSTEM_CHOICE_ZH,
            "A gateway must stay recovered for 5 min before its alarm clears, so flapping keeps one alarm. "
            + _SYSTEM_CHOICE_EN,
        ),
        DefaultValue(
            "gateway.max_gap",
            GW_MAX_GAP,
            "30 分钟",
            "网关状态消息比读数稀疏：两条状态间隔超过 30 分钟才算不连续。" + _SYSTEM_CHOICE_ZH,
            "Gateway statuses are sparser than readings: only 30 min between two statuses breaks continuity. "
            + _SYSTEM_CHOICE_EN,
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
            "温度计读数与前后 5 分钟内最近的一条探头读数比较；更远的读数不能说明当时的温度。" + _SYSTEM_CHOICE_ZH,
            "A thermometer reading is compared with the probe reading nearest in time within 5 min; farther ones say "
            "nothing about that moment. " + _SYSTEM_CHOICE_EN,
        ),
        DefaultValue(
            "vendor.count",
            VENDOR_COUNT,
            "30 天内 3 次",
            "同一探头 30 天内 3 次偏差即标记联系厂家调试或更换（CM10、CM4 保修）：一次偏差可能是读数或摆放问题，"
            "CM10 要求先查原因；反复出现才说明是硬件。本系统取值。",
            "3 drift findings for one probe within 30 days mark it for the vendor (CM10, CM4 warranty): one finding "
            "may be a misread or placement, which CM10 says to investigate first; repeats point at the hardware. "
            "Our choice.",
        ),
        DefaultValue(
            "vendor.window",
            VENDOR_WINDOW,
            "30 天",
            "计数窗口 30 天，约为每月设备分析（CM17）的周期。本系统取值。",
            "Counted over 30 days, about the monthly device review (CM17). Our choice.",
        ),
    ]
    return MappingProxyType({row.name: row for row in rows})


DEFAULTS: Mapping[str, DefaultValue] = _default_table()
"""Every default with its value and source, keyed by parameter name (``gateway.*``, ``drift.*`` …)."""


def defaults_table_markdown() -> str:
    """The README's table of defaults (parameter, default, English source), one row per default.

    Regenerate the README's copy with
    ``python -c "from alarms.rules import defaults_table_markdown as t; print(t(), end='')"``.
    """
    lines = ["| parameter | default | source |", "| --- | --- | --- |"]
    for row in DEFAULTS.values():
        lines.append(f"| `{row.name}` | {_cell(row.text)} | {_cell(row.source_en)} |")
    return "\n".join(lines) + "\n"


def _cell(text: str) -> str:
    """A Markdown table cell: a ``|`` in the text would end the cell."""
    return text.replace("|", "\\|")
