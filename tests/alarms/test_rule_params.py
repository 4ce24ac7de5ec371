"""The numbers behind the pure rules (alarms/rules/): a compartment's parameters read from its
mode, limits and overrides (durations in every accepted form, nonsense refused in Chinese), the
defaults table agreeing with the code and saying where each value comes from, every alarm kind's
Chinese name and severity; and the thermometer drift check (CM10) with its ±0.5 ℃ / ±1 ℃ limits and
the repeated findings that send a probe to the vendor. No servers."""

from __future__ import annotations

from dataclasses import fields
from datetime import timedelta

import pytest
from rulehelp import FRZ, REF, at

from alarms.rules import (
    DEFAULTS,
    DRIFT_LIMIT,
    KIND_NAMES,
    KIND_SEVERITY,
    KINDS,
    SEVERITY_NAMES,
    GatewayParams,
    RuleParams,
    drift_check,
    needs_vendor,
    params_for,
)

# ---------------------------------------------------------------------------------------------
# Thermometer drift (CM10)


def test_drift_boundaries_refrigerated() -> None:
    probe = [(at(0), 5.5)]
    assert drift_check("refrigerated", at(1), 5.0, probe).finding is False
    result = drift_check("refrigerated", at(1), 5.0, [(at(0), 5.51)])
    assert (result.finding, result.difference, result.nearest_ts, result.probe_t) == (True, 0.51, at(0), 5.51)
    assert "±0.5 ℃" in result.reason and "查找原因" in result.reason
    assert drift_check("refrigerated", at(0), 5.0, [(at(0), 4.49)]).finding is True
    # 4.3 − 3.8 is 0.5000000000000004 in binary floating point: still exactly 0.5, not beyond.
    assert drift_check("refrigerated", at(0), 3.8, [(at(0), 4.3)]).finding is False


def test_drift_boundaries_frozen() -> None:
    assert drift_check("frozen", at(0), -20.0, [(at(0), -19.0)]).finding is False
    result = drift_check("frozen", at(0), -20.0, [(at(0), -18.99)])
    assert (result.finding, result.difference) == (True, 1.01)
    assert drift_check("frozen", at(0), -20.0, [(at(0), -21.01)]).finding is True


def test_drift_uses_the_nearest_reading_within_5_minutes() -> None:
    readings = [(at(-3), 5.9), (at(1), 5.2), (at(4), 9.0)]
    result = drift_check("refrigerated", at(0), 5.0, readings)
    assert (result.nearest_ts, result.probe_t, result.finding) == (at(1), 5.2, False)
    result = drift_check("refrigerated", at(0), 5.0, [(at(-6), 5.0), (at(5) + timedelta(seconds=1), 5.0)])
    assert result == type(result)(None, None, None, False, "5 分钟内没有探头读数")
    result = drift_check("refrigerated", at(0), 5.0, [(at(5), 6.0)])
    assert (result.nearest_ts, result.finding) == (at(5), True)
    result = drift_check("refrigerated", at(0), 5.0, [(at(2), 6.0), (at(-2), 5.1)])  # tie: the earlier one
    assert (result.nearest_ts, result.finding) == (at(-2), False)


def test_needs_vendor_after_repeated_findings() -> None:
    now = at(0)
    assert needs_vendor([now - timedelta(days=d) for d in (1, 10)], now) is False
    assert needs_vendor([now - timedelta(days=d) for d in (1, 10, 30)], now) is True
    assert needs_vendor([now - timedelta(days=d) for d in (1, 10, 31)], now) is False
    assert needs_vendor([now + timedelta(days=1)] * 3, now) is False
    assert needs_vendor([now] * 2, now, count=2) is True


# ---------------------------------------------------------------------------------------------
# Parameters, defaults, names


def test_params_for_defaults_by_mode() -> None:
    assert (REF.mode, REF.t_min, REF.t_max) == ("refrigerated", 2.0, 8.0)
    assert (FRZ.mode, FRZ.t_min, FRZ.t_max) == ("frozen", None, -15.0)
    assert REF.delay == timedelta(minutes=10) and REF.freeze_delay == timedelta(minutes=5)
    assert REF.wrong_place_limit == -10.0 and FRZ.wrong_place_limit == 2.0
    own = params_for("refrigerated", 3.0, 7.0)
    assert (own.t_min, own.t_max) == (3.0, 7.0)


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (15, timedelta(minutes=15)),
        (2.5, timedelta(minutes=2, seconds=30)),
        ("15m", timedelta(minutes=15)),
        ("1h30m", timedelta(minutes=90)),
        ("90s", timedelta(seconds=90)),
        ("1d", timedelta(days=1)),
        ("0:15:00", timedelta(minutes=15)),
        (timedelta(minutes=7), timedelta(minutes=7)),
    ],
)
def test_params_for_reads_durations(raw: object, expected: timedelta) -> None:
    assert params_for("refrigerated", 2.0, 8.0, {"delay": raw}).delay == expected


def test_params_for_reads_back_the_effective_parameters() -> None:
    p = params_for("frozen", None, -18.0, {"hold": "3m", "hysteresis": "0.3", "wrong_place_t": 0})
    effective = {f.name: getattr(p, f.name) for f in fields(p) if f.name not in ("mode", "t_min", "t_max")}
    again = params_for(
        "frozen", None, -18.0, {k: str(v) if isinstance(v, timedelta) else v for k, v in effective.items()}
    )
    assert again == p
    assert p.hold == timedelta(minutes=3) and p.hysteresis == 0.3 and p.wrong_place_limit == 0.0


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"delay": -5}, "不能为负"),
        ({"delay": "-5m"}, "不能为负"),
        ({"hold": "soon"}, "应为时长"),
        ({"delay": True}, "应为时长"),
        ({"no_data_after": 0}, "必须大于 0"),
        ({"hysteresis": -0.1}, "不能为负"),
        ({"hysteresis": 3.5}, "过大"),
        ({"hysteresis": float("nan")}, "有限数值"),
        ({"cumulative_limit": "25h"}, "不能长于"),
        ({"freeze_threshold": 3}, "必须低于下限"),
        ({"wrong_place_t": 5}, "必须低于冷藏下限"),
        ({"t_max": 9}, "不能在报警参数里覆盖"),
        ({"delays": 5}, "未知的报警参数"),
    ],
)
def test_params_for_refuses_nonsense(overrides: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        params_for("refrigerated", 2.0, 8.0, overrides)


def test_params_for_refuses_bad_registry_values() -> None:
    with pytest.raises(ValueError, match="温区模式"):
        params_for("cold", 2.0, 8.0)
    with pytest.raises(ValueError, match="必须低于上限"):
        params_for("refrigerated", 8.0, 8.0)
    with pytest.raises(ValueError, match="必须高于冷冻上限"):
        params_for("frozen", None, -15.0, {"wrong_place_t": -20})
    with pytest.raises(ValueError, match="battery_low"):
        GatewayParams(battery_low=120.0)


def test_defaults_table_matches_the_parameters_and_says_why() -> None:
    for f in fields(RuleParams):
        if f.name in DEFAULTS:
            assert DEFAULTS[f.name].value == f.default, f.name
    documented = {f.name for f in fields(GatewayParams)} - {"battery_hysteresis", "rssi_hysteresis"}
    for f in fields(GatewayParams):
        if f.name in documented:
            assert DEFAULTS[f"gateway.{f.name}"].value == f.default, f.name
    assert DEFAULTS["refrigerated.t_min"].value == REF.t_min and DEFAULTS["refrigerated.t_max"].value == REF.t_max
    assert DEFAULTS["frozen.t_max"].value == FRZ.t_max and DEFAULTS["frozen.t_min"].value is None
    assert DEFAULTS["drift.refrigerated"].value == DRIFT_LIMIT["refrigerated"] == 0.5
    assert DEFAULTS["drift.frozen"].value == DRIFT_LIMIT["frozen"] == 1.0
    assert "E006" in DEFAULTS["delay"].source_en and "E006" in DEFAULTS["freeze_threshold"].source_zh
    for name in (
        "delay",
        "hold",
        "hysteresis",
        "max_gap",
        "cumulative_limit",
        "no_data_after",
        "wrong_place_after",
        "gateway.offline_after",
        "gateway.battery_low",
        "gateway.weak_rssi",
        "vendor.count",
    ):
        assert name in DEFAULTS, name
    for row in DEFAULTS.values():
        assert row.text and row.source_zh and row.source_en, row.name
        assert any("\u4e00" <= ch <= "\u9fff" for ch in row.source_zh), row.name


def test_every_kind_has_a_chinese_name_and_a_severity() -> None:
    assert set(KIND_NAMES) == set(KINDS) == set(KIND_SEVERITY)
    assert KIND_NAMES["freeze"] == "冷藏冻结风险" and KIND_SEVERITY["freeze"] == "critical"
    assert KIND_SEVERITY["gateway_offline"] == "critical" and KIND_SEVERITY["wrong_place"] == "minor"
    assert set(KIND_SEVERITY.values()) <= set(SEVERITY_NAMES)
