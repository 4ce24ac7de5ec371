"""The gateway fleet simulator's output, in memory: determinism and the device contract's
message format, realistic normal operation, each fault's effect (power cut, freezer failure, probe
drift and offline, gateway offline with buffered upload, battery and weak signal), bad input on
demand, and faults from the command line's text or at random."""

from __future__ import annotations

import itertools
import json
from collections import Counter
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from simhelp import FLEET, MINUTE, START, Tick, _run

from coldchain.core.terms import BEIJING
from ingest.simulate import (
    BUFFER_CHUNK,
    FAULT_KINDS,
    MALFORMED_KINDS,
    Fault,
    FleetSimulator,
    Outgoing,
    SimProbe,
    parse_duration,
    parse_fault,
    random_faults,
)

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
PROBES = {p.serial: p for g in FLEET for p in g.probes}


def _sim(
    faults: list[Fault] | None = None, *, seed: int = 7, rate: float = 0.0, start: datetime = START
) -> FleetSimulator:
    return FleetSimulator(FLEET, seed=seed, start=start, faults=faults or [], malformed_rate=rate)


def _gateway(topic: str) -> str:
    return topic.split("/")[2]


def _ts(value: object) -> datetime:
    if isinstance(value, int):
        return EPOCH + timedelta(milliseconds=value)
    assert isinstance(value, str)
    return datetime.fromisoformat(value)


def _telemetry(ticks: list[Tick], gateway: str) -> dict[datetime, dict[str, Any]]:
    """The regular (not buffered) telemetry message of one gateway, by tick."""
    found: dict[datetime, dict[str, Any]] = {}
    for t, messages in ticks:
        for m in messages:
            if m.topic == f"coldchain/v1/{gateway}/telemetry":
                doc = json.loads(m.payload)
                if all("ts" not in r for r in doc["readings"]):
                    assert t not in found
                    found[t] = doc
    return found


def _series(ticks: list[Tick], probe: str) -> dict[datetime, float]:
    """One probe's regular readings by tick time."""
    gateway = next(g.serial for g in FLEET if any(p.serial == probe for p in g.probes))
    series = {}
    for t, doc in _telemetry(ticks, gateway).items():
        assert _ts(doc["ts"]) == t
        for r in doc["readings"]:
            if r["probe"] == probe:
                series[t] = r["t"]
    return series


def _in_limits(probe: SimProbe, t: float) -> bool:
    return (probe.t_min is None or t >= probe.t_min) and (probe.t_max is None or t <= probe.t_max)


# ---------------------------------------------------------------------------------------------
# Determinism and the message format


def test_same_seed_gives_the_same_bytes_and_another_seed_does_not() -> None:
    faults = [parse_fault("power_cut:10001:10m:1h"), parse_fault("gateway_offline:10003:20m:15m")]
    a = _run(_sim(faults, seed=11, rate=0.1), 120)
    b = _run(_sim(faults, seed=11, rate=0.1), 120)
    c = _run(_sim(faults, seed=12, rate=0.1), 120)
    assert a == b
    assert [m.payload for _, ms in a for m in ms] != [m.payload for _, ms in c for m in ms]


def test_ticks_follow_the_device_contract() -> None:
    sim = _sim()
    assert sim.now == START
    ticks = _run(sim, 30)
    first_time, first = ticks[0]
    assert first_time == START + MINUTE
    # A gateway announces itself first, then sends its readings.
    statuses = [m for m in first if m.topic.endswith("/status")]
    online = [(g.serial, {"online": True}) for g in FLEET]
    assert [(_gateway(m.topic), json.loads(m.payload)) for m in statuses] == online
    assert all(m.topic.endswith("/telemetry") for _, ms in ticks[1:] for m in ms)
    for t, messages in ticks:
        telemetry = [m for m in messages if m.topic.endswith("/telemetry")]
        assert [_gateway(m.topic) for m in telemetry] == [g.serial for g in FLEET]
        for m, gateway in zip(telemetry, FLEET, strict=True):
            assert m.qos == 1
            doc = json.loads(m.payload.decode("utf-8"))
            assert doc["ts"] == t.isoformat(timespec="seconds") and doc["ts"].endswith("+08:00")
            assert [r["probe"] for r in doc["readings"]] == [p.serial for p in gateway.probes]
            assert all(isinstance(r["t"], float) and round(r["t"], 1) == r["t"] for r in doc["readings"])
            assert doc["power"] == "ac" and 4.0 <= doc["battery"] <= 4.2 and -80 <= doc["rssi"] <= -60


def test_rejects_what_it_cannot_simulate() -> None:
    with pytest.raises(ValueError, match="时区"):
        FleetSimulator(FLEET, seed=1, start=datetime(2026, 11, 23))
    with pytest.raises(ValueError, match="目标网关 10009"):
        _sim([parse_fault("power_cut:10009:0s:1h")])
    with pytest.raises(ValueError, match="目标探头 299999"):
        _sim([parse_fault("probe_drift:299999:0s:1h")])
    with pytest.raises(ValueError, match="冷冻"):
        _sim([parse_fault("freezer_failure:200001:0s:1h")])
    with pytest.raises(ValueError, match="0 到 1"):
        _sim(rate=1.5)


# ---------------------------------------------------------------------------------------------
# Normal operation


def test_normal_operation_stays_within_limits_and_doors_open_in_working_hours() -> None:
    friday = datetime(2026, 11, 27, 0, 0, tzinfo=BEIJING)
    assert friday.weekday() == 4
    ticks = _run(_sim(start=friday), 2 * 24 * 60)  # Friday and Saturday
    door_jumps = []
    for serial, probe in PROBES.items():
        series = _series(ticks, serial)
        assert len(series) == len(ticks)
        inside = sum(_in_limits(probe, t) for t in series.values()) / len(series)
        assert inside >= 0.95, (serial, inside)
        centre = sum(series.values()) / len(series)
        assert (3.5 <= centre <= 6.5) if probe.mode == "refrigerated" else (-22.0 <= centre <= -18.0), serial
        assert max(series.values()) - min(series.values()) >= 1.0, f"{serial} is flat"
        if probe.kind in ("fridge", "medical_fridge") and probe.mode == "refrigerated":
            values = sorted(series.items())
            door_jumps += [t for (_, a), (t, b) in itertools.pairwise(values) if b - a > 1.2]
    assert door_jumps, "no door was opened on a working day"
    assert all(t.weekday() == 4 and 8 <= t.hour < 17 for t in door_jumps), door_jumps


# ---------------------------------------------------------------------------------------------
# Faults


def test_power_cut_warms_the_compartments_behind_the_gateway_and_runs_it_on_battery() -> None:
    cut = parse_fault("power_cut:10001:2h:4h")  # 02:00–06:00
    ticks = _run(_sim([cut]), 9 * 60)
    baseline = _run(_sim(), 9 * 60)
    messages = _telemetry(ticks, "10001")
    during = [t for t in messages if START + cut.start <= t < START + cut.start + cut.duration]
    assert len(during) == 240
    assert all((messages[t]["power"] == "battery") == (t in during) for t in messages)
    assert messages[during[-1]]["battery"] < messages[during[0]]["battery"] - 0.15

    fridge, frozen = _series(ticks, "200001"), _series(ticks, "200002")
    at = START.replace(hour=5)
    assert all(2.0 <= v <= 8.0 for t, v in fridge.items() if t < START.replace(hour=2, minute=10))
    assert fridge[at] > 8.0 and frozen[at] > -15.0
    assert fridge[START.replace(hour=5, minute=59)] > fridge[START.replace(hour=3)]  # still warming
    # Cooling back once the power returns.
    assert 2.0 <= fridge[START.replace(hour=8, minute=30)] <= 8.0 and frozen[START.replace(hour=8, minute=30)] < -15.0
    # Nothing else is touched.
    for gateway in ("10002", "10003", "10004"):
        assert _telemetry(ticks, gateway) == _telemetry(baseline, gateway)


def test_freezer_failure_warms_only_that_freezer() -> None:
    failure = parse_fault("freezer_failure:200004:1h:3h")
    ticks, baseline = _run(_sim([failure]), 6 * 60), _run(_sim(), 6 * 60)
    freezer = _series(ticks, "200004")
    assert all(v <= -15.0 for t, v in freezer.items() if t < START + failure.start)
    assert freezer[START.replace(hour=3)] > -15.0
    assert max(freezer.values()) > 0.0
    for other in ("200005", "200006", "200001"):
        assert _series(ticks, other) == _series(baseline, other)
    assert {d["power"] for d in _telemetry(ticks, "10003").values()} == {"ac"}


def test_probe_drift_grows_to_its_full_offset_and_stays() -> None:
    drift = parse_fault("probe_drift:200006:1h:2h")
    ticks, baseline = _run(_sim([drift]), 5 * 60), _run(_sim(), 5 * 60)
    drifted, true = _series(ticks, "200006"), _series(baseline, "200006")
    offset = {t: drifted[t] - true[t] for t in true}
    tol = 0.1 + 1e-9  # both sides are rounded to 0.1
    assert all(offset[t] == 0.0 for t in offset if t <= START + drift.start)
    assert abs(offset[START.replace(hour=2)] - 0.75) <= tol
    assert all(abs(offset[t] - 1.5) <= tol for t in offset if t >= START.replace(hour=3))
    assert _series(ticks, "200005") == _series(baseline, "200005")


def test_probe_offline_leaves_its_readings_out() -> None:
    ticks = _run(_sim([parse_fault("probe_offline:200005:30m:1h")]), 3 * 60)
    present = _series(ticks, "200005")
    window = {t for t, _ in ticks if START.replace(minute=30) <= t < START.replace(hour=1, minute=30)}
    assert len(window) == 60
    assert set(present) == {t for t, _ in ticks} - window
    assert len(_series(ticks, "200004")) == len(_series(ticks, "200006")) == len(ticks)


def test_gateway_offline_buffers_and_uploads_every_reading_once() -> None:
    outage = parse_fault("gateway_offline:10003:1h:25m")  # 01:00–01:25
    ticks, baseline = _run(_sim([outage]), 3 * 60), _run(_sim(), 3 * 60)
    begin, end = START + outage.start, START + outage.start + outage.duration
    outage_ticks = [t for t, _ in ticks if begin <= t < end]
    assert len(outage_ticks) == 25

    statuses = [
        (t, json.loads(m.payload)["online"]) for t, ms in ticks for m in ms if m.topic == "coldchain/v1/10003/status"
    ]
    assert statuses == [(START + MINUTE, True), (begin, False), (end, True)]
    regular = _telemetry(ticks, "10003")
    assert not any(begin <= t < end for t in regular)

    at_end = [m for t, ms in ticks if t == end for m in ms if _gateway(m.topic) == "10003"]
    assert at_end[0].topic.endswith("/status")
    uploads = [json.loads(m.payload) for m in at_end[1:-1]]
    assert json.loads(at_end[-1].payload) == regular[end]  # then back to normal in the same tick
    assert uploads and all(1 <= len(u["readings"]) <= BUFFER_CHUNK for u in uploads)
    buffered = [(r["probe"], _ts(r["ts"]), r["t"]) for u in uploads for r in u["readings"]]
    assert all(isinstance(r["ts"], int) for u in uploads for r in u["readings"])
    expected = [(p, t) for t in outage_ticks for p in ("200004", "200005", "200006")]
    assert sorted((p, t) for p, t, _ in buffered) == sorted(expected)  # each exactly once
    # What was buffered is what the probes measured then.
    truth = {p: _series(baseline, p) for p in ("200004", "200005", "200006")}
    assert all(truth[p][t] == v for p, t, v in buffered)
    # No buffered reading appears anywhere else, and other gateways carry on.
    later = [m for t, ms in ticks if t != end for m in ms if b'"ts":1' in m.payload]
    assert later == []
    assert _telemetry(ticks, "10001") == _telemetry(baseline, "10001")


def test_gateway_battery_and_weak_signal_touch_only_the_gateway_fields() -> None:
    faults = [parse_fault("gateway_battery:10002:1h:2h"), parse_fault("weak_signal:10004:1h:1h")]
    ticks, baseline = _run(_sim(faults), 4 * 60), _run(_sim(), 4 * 60)
    battery = _telemetry(ticks, "10002")
    window = sorted(t for t in battery if START.replace(hour=1) <= t < START.replace(hour=3))
    assert {battery[t]["power"] for t in window} == {"battery"}
    assert {battery[t]["power"] for t in battery if t not in window} == {"ac"}
    first, last = battery[window[0]]["battery"], battery[window[-1]]["battery"]
    assert first >= 4.05 and last < first - 0.08
    assert _series(ticks, "200003") == _series(baseline, "200003")
    weak = _telemetry(ticks, "10004")
    assert all((weak[t]["rssi"] <= -100) == (START.replace(hour=1) <= t < START.replace(hour=2)) for t in weak)
    assert _series(ticks, "200008") == _series(baseline, "200008")


# ---------------------------------------------------------------------------------------------
# Malformed input


def _malformed_kind(bad: Outgoing, good: Outgoing) -> str | None:
    """Which kind of garbage ``bad`` is, proven against the message it replaced."""
    if bad == good:
        return None
    if _gateway(bad.topic) == "99999":
        assert bad.payload == good.payload
        return "unknown_gateway"
    assert bad.topic == good.topic
    if not bad.payload.startswith(b"{"):
        return "not_json"
    try:
        doc = json.loads(bad.payload)
    except ValueError:
        assert good.payload.startswith(bad.payload)
        return "truncated"
    ref = json.loads(good.payload)
    if doc["ts"] != ref["ts"]:
        assert _ts(doc["ts"]) - _ts(ref["ts"]) == timedelta(hours=2)
        assert doc["readings"] == ref["readings"]
        return "ts_future"
    changed = [(r, s) for r, s in zip(doc["readings"], ref["readings"], strict=True) if r != s]
    assert len(changed) == 1
    r, s = changed[0]
    assert {k: v for k, v in r.items() if k != "t"} == {k: v for k, v in s.items() if k != "t"}
    if "t" not in r:
        return "t_missing"
    return {"abc": "t_not_number", 999: "t_out_of_range"}[r["t"]]


def test_malformed_rate_produces_every_kind_and_leaves_the_rest_intact() -> None:
    baseline = _run(_sim(), 60)
    for rate, low, high in ((1.0, 1.0, 1.0), (0.25, 0.15, 0.35)):
        ticks = _run(_sim(rate=rate), 60)
        kinds: Counter[str] = Counter()
        telemetry = 0
        for (t, bad), (u, good) in zip(ticks, baseline, strict=True):
            assert t == u and len(bad) == len(good)
            for b, g in zip(bad, good, strict=True):
                if g.topic.endswith("/status"):
                    assert b == g
                    continue
                telemetry += 1
                kind = _malformed_kind(b, g)
                if kind:
                    kinds[kind] += 1
        assert low <= sum(kinds.values()) / telemetry <= high
        if rate == 1.0:
            assert set(kinds) == set(MALFORMED_KINDS)


# ---------------------------------------------------------------------------------------------
# Faults from text and at random


def test_parse_fault_accepts_the_cli_form() -> None:
    assert parse_fault("power_cut:10003:10m:3h") == Fault(
        "power_cut", "10003", timedelta(minutes=10), timedelta(hours=3)
    )
    assert parse_fault("probe_drift:208601:90s:1d") == Fault(
        "probe_drift", "208601", timedelta(seconds=90), timedelta(days=1)
    )
    assert parse_fault(" gateway_offline:10001:0:1h30m ").duration == timedelta(minutes=90)
    assert parse_duration("2h") == timedelta(hours=2)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "故障格式应为"),
        ("power_cut:10003:10m", "故障格式应为"),
        ("power_cut:10003:10m:3h:x", "故障格式应为"),
        ("power_cut::10m:3h", "故障格式应为"),
        ("explode:10003:10m:3h", "未知的故障类型"),
        ("power_cut:10003:soon:3h", "时长格式无效"),
        ("power_cut:10003:10m:3", "时长格式无效"),
        ("power_cut:10003:10m:0s", "大于 0"),
        ("power_cut:网关:10m:3h", "目标"),
    ],
)
def test_parse_fault_refuses_bad_input_in_chinese(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message) as caught:
        parse_fault(text)
    assert "power_cut:10003:10m:3h" in str(caught.value)


def test_random_faults_are_deterministic_and_fit_the_fleet() -> None:
    a = random_faults(FLEET, 40, seed=5, horizon=timedelta(hours=6))
    assert a == random_faults(FLEET, 40, seed=5, horizon=timedelta(hours=6))
    assert a != random_faults(FLEET, 40, seed=6, horizon=timedelta(hours=6))
    assert len(a) == 40 and random_faults(FLEET, 0, seed=5, horizon=timedelta(hours=6)) == []
    assert {f.kind for f in a} == set(FAULT_KINDS)
    assert all(f.start <= timedelta(hours=6) for f in a)
    frozen = {p.serial for p in PROBES.values() if p.mode == "frozen"}
    assert all(f.target in frozen for f in a if f.kind == "freezer_failure")
    _run(_sim(a), 5)  # the simulator accepts every one of them
