"""The report's headline indicators and their change from the previous month: which way is
better for each, so that a fall is not painted as good when it is not."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import polars as pl

from analytics.report.tables import login_rate

# ---------------------------------------------------------------------------------------------
# Headline and the change from the previous month


@dataclass(frozen=True)
class Indicator:
    key: str
    label: str
    unit: str
    higher_is_better: bool
    definition: str
    integer: bool = False
    """A count (devices, alarms, whole hours): shown and compared as a whole number, never "25.00"."""
    per_device: bool = False
    """A sum over the devices: when the number of devices changed, last month's figure is compared
    per device (see :func:`compare`), so a fall that only comes from fewer devices is not "better"."""


INDICATORS: tuple[Indicator, ...] = (
    Indicator(
        "devices", "设备数", "台", True, "月内在用（未在月初前停用）的冷链设备，按台计，含其全部温区。", integer=True
    ),
    Indicator(
        "problem_devices",
        "问题设备数",
        "台",
        False,
        "月内有报警、超温累计 ≥ 1 小时、数据完整率 < 90% 或有温度计比对偏差的设备。",
        integer=True,
    ),
    Indicator("problem_share", "问题设备占比", "%", False, "问题设备数 ÷ 设备数。"),
    Indicator(
        "alarms",
        "报警数",
        "次",
        False,
        "月内发出的报警（含网关报警；网关离线时其后探头的无数据状态并入网关报警，不单独计）。",
        integer=True,
    ),
    Indicator(
        "out_of_range_hours",
        "超温小时数",
        "小时",
        False,
        "各温区超出上下限的时长之和：每条读数持续到下一条读数，最长 30 分钟；恰在限值上不算超温。",
        per_device=True,
    ),
    Indicator(
        "offline_hours",
        "离线小时数",
        "小时",
        False,
        "各设备离线小时数之和；设备离线小时数 = 其温区中整点小时内没有任何读数的小时数的最大值。",
        integer=True,
        per_device=True,
    ),
    Indicator(
        "completeness",
        "数据完整率",
        "%",
        True,
        "收到的读数 ÷ 应收读数；应收 = 探头在月内绑定的时长 ÷ 标称间隔 1 分钟（网关每分钟上报），最高 100%。",
    ),
    Indicator(
        "drift_findings",
        "温度计比对偏差",
        "次",
        False,
        "温度计读数与探头相差超过 ±0.5 ℃（冷藏）/ ±1 ℃（冷冻）的次数，按温度计读数时间计入月份（CM10）。",
        integer=True,
        per_device=True,
    ),
    Indicator(
        "ack_within_30_share",
        "30 分钟内确认率",
        "%",
        True,
        "月内发出的报警中，自报警起 30 分钟内在平台或微信确认的比例（CM16）。",
    ),
    Indicator(
        "level2_share",
        "升级到二级的比例",
        "%",
        False,
        "月内发出的报警中，解除前到了二级负责人通知时限（默认 30 分钟）的比例。",
    ),
    Indicator(
        "level3_share",
        "升级到三级的比例",
        "%",
        False,
        "月内发出的报警中，解除前到了三级负责人通知时限（默认 60 分钟）的比例。",
    ),
    Indicator(
        "gateway_problems",
        "电源或信号有问题的网关",
        "个",
        False,
        "月内有离线、断电（电池供电）、电量低（< 3.5 V）或信号弱（< −100 dBm 持续 15 分钟）报警的网关。",
        integer=True,
    ),
    Indicator(
        "login_rate",
        "登录达标率",
        "%",
        True,
        "各接种单位每天两次、间隔至少 6 小时登录（平台或微信）的天数 ÷ 统计天数（CM14）。",
    ),
    Indicator(
        "warranties_due",
        "保修即将到期",
        "件",
        False,
        "网关和探头中保修在本月内或月末后 90 天内到期的件数（CM4）。",
        integer=True,
    ),
)
INDICATOR_BY_KEY: Mapping[str, Indicator] = {i.key: i for i in INDICATORS}


def headline(
    devices: pl.DataFrame,
    alarms: pl.DataFrame,
    response: pl.DataFrame,
    gateways: pl.DataFrame,
    logins: pl.DataFrame,
    warranties: pl.DataFrame,
) -> dict[str, float | int | None]:
    """The month's indicators (see :data:`INDICATORS`); shares are fractions (0.25 = 25 %)."""
    count = devices.height
    problems = int(devices["problem"].sum()) if count else 0
    expected = float(devices["expected"].sum()) if count else 0.0
    # Capped per device: a probe sending faster than nominal does not make up for another's gaps.
    received = int(devices.select(pl.min_horizontal("received", "expected").sum()).item()) if count else 0
    total = response.filter(pl.col("area_name") == "合计").to_dicts()
    total_row = total[0] if total else {}
    notified = alarms.filter(pl.col("raised_in_period") & ~pl.col("suppressed")).height
    return {
        "devices": count,
        "problem_devices": problems,
        "problem_share": round(problems / count, 4) if count else None,
        "alarms": notified,
        "out_of_range_hours": round(float(devices["out_of_range_hours"].sum()), 2) if count else 0.0,
        "offline_hours": int(devices["offline_hours"].sum()) if count else 0,
        "completeness": round(min(received / expected, 1.0), 4) if expected > 0 else None,
        "drift_findings": int(devices["drift_findings"].sum()) if count else 0,
        "ack_within_30_share": total_row.get("ack_within_30_share"),
        "level2_share": total_row.get("level2_share"),
        "level3_share": total_row.get("level3_share"),
        "gateway_problems": int(gateways["problem"].sum()) if gateways.height else 0,
        "login_rate": login_rate(logins),
        "warranties_due": warranties.height,
    }


def _number(value: float | int, integer: bool) -> float | int:
    """A figure as the reader sees it: a count as a whole number, anything else to 4 decimals."""
    return round(value) if integer else round(float(value), 4)


def compare(
    ind: Indicator,
    current: float | int | None,
    previous: float | int | None,
    devices_now: int | None,
    devices_before: int | None,
) -> dict[str, Any]:
    """This month against last for one indicator: the change (this − last) and whether it is better.

    A sum over the devices (offline hours, hours out of range, drift findings) grows and shrinks
    with the number of devices: 25 devices dark 10 hours each make 250 hours, 20 devices dark 12
    hours each make 240 — fewer hours, yet every device was worse. So when the device count changed,
    the verdict is taken on the figure per device (``basis`` "per_device", the per-device figures
    beside it); when one month had no devices at all there is nothing to divide by and the change
    is marked not comparable (``basis`` "not_comparable", no verdict). ``note`` says so in Chinese."""
    out: dict[str, Any] = {"change": None, "better": None, "basis": "total", "note": ""}
    out |= {"per_device_current": None, "per_device_previous": None, "per_device_change": None}
    if current is None or previous is None:
        return out | {"basis": "none"}
    change = _number(current - previous, ind.integer)
    out["change"] = change
    delta: float = float(change)
    if ind.per_device and devices_now is not None and devices_before is not None and devices_now != devices_before:
        moved = f"设备数由 {devices_before} 台变为 {devices_now} 台"
        if not devices_now or not devices_before:
            return out | {"basis": "not_comparable", "note": f"{moved}，{ind.label}与上月不可比"}
        now_each = round(float(current) / devices_now, 4)
        before_each = round(float(previous) / devices_before, 4)
        delta = round(now_each - before_each, 4)
        out |= {"basis": "per_device", "per_device_current": now_each, "per_device_previous": before_each}
        out |= {"per_device_change": delta}
        out["note"] = f"{moved}，按每台比较：本月 {now_each:.2f}、上月 {before_each:.2f} {ind.unit}/台"
    if not math.isclose(delta, 0.0, abs_tol=1e-12):
        out["better"] = (delta > 0) == ind.higher_is_better
    return out


def changes(
    current: Mapping[str, float | int | None], previous: Mapping[str, float | int | None] | None
) -> list[dict[str, Any]]:
    """Each indicator this month and last, the change (this − last; shares in fractions, so 0.05
    is five percentage points; counts as whole numbers), and whether the change is an improvement
    (None when either month has no value, nothing changed, or the months are not comparable) —
    per device for the sums over devices when the device count changed (:func:`compare`)."""
    devices_now = current.get("devices")
    devices_before = previous.get("devices") if previous is not None else None
    rows: list[dict[str, Any]] = []
    for ind in INDICATORS:
        now_value = current.get(ind.key)
        before = previous.get(ind.key) if previous is not None else None
        if ind.integer:
            now_value = None if now_value is None else int(now_value)
            before = None if before is None else int(before)
        verdict = compare(
            ind,
            now_value,
            before,
            None if devices_now is None else int(devices_now),
            None if devices_before is None else int(devices_before),
        )
        rows.append(
            {
                "key": ind.key,
                "label": ind.label,
                "unit": ind.unit,
                "integer": ind.integer,
                "current": now_value,
                "previous": before,
                **verdict,
            }
        )
    return rows


def change_rows(changes: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """The changes for reading: counts as whole numbers (never "25.00 台"), shares as percentages
    and their change in percentage points, the rest to two decimals; the verdict says when it was
    taken per device or the months are not comparable (:func:`compare`)."""
    rows = []
    for c in changes:
        share = c["unit"] == "%"
        scale = 100.0 if share else 1.0
        integer = bool(c.get("integer"))

        def shown(v: Any, scale: float = scale, integer: bool = integer) -> float | int | None:
            if v is None:
                return None
            return round(v) if integer else round(float(v) * scale, 2)

        verdict = {True: "好转", False: "变差", None: "—"}[c["better"]]
        if c.get("basis") == "not_comparable":
            verdict = "不可比"
        elif c.get("basis") == "per_device" and c["better"] is not None:
            verdict += "（按每台）"
        rows.append(
            {
                "key": c["key"],
                "label": c["label"],
                "current": shown(c["current"]),
                "previous": shown(c["previous"]),
                "change": shown(c["change"]),
                "unit": "%（变化为百分点）" if share else c["unit"],
                "verdict": verdict,
                "note": c.get("note") or "",
            }
        )
    return rows
