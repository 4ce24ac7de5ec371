"""The device contract's checks, as pure functions (no broker, no database)."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest

from ingest.contract import parse_message, parse_ts, split_topic

NOW = datetime(2026, 11, 23, 0, 0, tzinfo=UTC)
NOW_US = int(NOW.timestamp()) * 1_000_000


def _us(dt: datetime) -> int:
    return int(dt.timestamp()) * 1_000_000 + dt.microsecond


def test_topics() -> None:
    assert split_topic("coldchain/v1/10001/telemetry") == ("10001", "telemetry")
    assert split_topic("coldchain/v1/10001/status") == ("10001", "status")
    for bad in (
        "coldchain/v1/10001",
        "coldchain/v2/10001/telemetry",
        "coldchain/v1/10 01/telemetry",
        "coldchain/v1//telemetry",
        "coldchain/v1/10001/telemetry/x",
        "other/v1/10001/telemetry",
    ):
        assert split_topic(bad) is None, bad


def test_timestamps_rfc3339_with_offset_or_epoch_ms() -> None:
    beijing = "2026-11-23T08:00:00.250+08:00"
    assert parse_ts(beijing) == _us(datetime(2026, 11, 23, 0, 0, 0, 250000, tzinfo=UTC))
    assert parse_ts("2026-11-23T00:00:00Z") == NOW_US
    assert parse_ts(NOW_US // 1000) == NOW_US
    for bad in ("2026-11-23T08:00:00", "tomorrow", 1.5e12, True, None, 0, "1999-01-01T00:00:00Z"):
        assert parse_ts(bad) is None, bad


def _telemetry(doc: object, now_us: int = NOW_US) -> tuple[list[tuple[object, ...]], list[tuple[str, int | None]]]:
    parsed = parse_message("coldchain/v1/10001/telemetry", json.dumps(doc).encode(), now_us)
    return [tuple(r) for r in parsed.readings], [(p.reason, p.reading) for p in parsed.problems]


def test_reading_ts_overrides_message_ts_and_optional_fields() -> None:
    ms = NOW_US // 1000 - 300_000
    readings, problems = _telemetry(
        {
            "ts": "2026-11-23T08:00:00+08:00",
            "readings": [
                {"probe": "208601", "t": 4.6, "rh": 50, "bat": 3.1},
                {"probe": "208604", "t": -18.2, "ts": ms},
            ],
        }
    )
    assert problems == []
    assert readings == [("208601", NOW_US, 4.6, 50.0, 3.1), ("208604", ms * 1000, -18.2, None, None)]


def test_each_bad_reading_is_named_and_the_good_ones_kept() -> None:
    future = (NOW + timedelta(minutes=6)).isoformat()
    near_future = (NOW + timedelta(minutes=4)).isoformat()
    readings, problems = _telemetry(
        {
            "ts": NOW.isoformat(),
            "readings": [
                {"probe": "A", "t": 4.0},
                {"probe": "B", "t": "4.0"},
                {"probe": "C"},
                {"probe": "D", "t": 60.1},
                {"probe": "E", "t": -90.1},
                {"probe": "F", "t": 5, "ts": future},
                {"probe": "G", "t": 5, "ts": near_future},  # within 5 minutes: a clock a little ahead
                {"probe": "H/1", "t": 5},
                "junk",
                {"probe": "I", "t": 5, "rh": 140},  # bad optional field: reading kept without it
                {"probe": "J", "t": 60},
                {"probe": "K", "t": -90},
            ],
        }
    )
    assert [r[0] for r in readings] == ["A", "G", "I", "J", "K"]
    assert readings[2][3] is None
    assert problems == [
        ("bad_t", 1),
        ("missing_t", 2),
        ("out_of_range", 3),
        ("out_of_range", 4),
        ("future_ts", 5),
        ("bad_probe", 7),
        ("bad_message", 8),
        ("bad_field", 9),
    ]


def test_message_level_problems() -> None:
    assert _telemetry({"readings": [{"probe": "A", "t": 1}]})[1] == [("bad_ts", 0)]
    assert _telemetry({"ts": (NOW + timedelta(hours=1)).isoformat(), "readings": [{"probe": "A", "t": 1}]})[1] == [
        ("future_ts", None)
    ]
    assert _telemetry({"ts": NOW.isoformat()})[1] == [("bad_message", None)]
    parsed = parse_message("coldchain/v1/1/telemetry", b"\x00\xff", NOW_US)
    assert parsed.whole_rejected and parsed.problems[0].reason == "bad_json"


@pytest.mark.parametrize(
    ("payload", "online", "reason"),
    [
        (b'{"online": true}', True, None),
        (b'{"online": false}', False, None),
        (b'{"online": "yes"}', None, "bad_message"),
    ],
)
def test_status(payload: bytes, online: bool | None, reason: str | None) -> None:
    parsed = parse_message("coldchain/v1/10001/status", payload, NOW_US, retained=True)
    assert (parsed.status.online if parsed.status else None) == online
    assert [p.reason for p in parsed.problems] == ([reason] if reason else [])
    assert parsed.retained


def test_gateway_fields_become_status_series() -> None:
    parsed = parse_message(
        "coldchain/v1/10001/telemetry",
        json.dumps({"ts": NOW.isoformat(), "readings": [], "power": "battery", "battery": 3.6, "rssi": -97.4}).encode(),
        NOW_US,
    )
    assert parsed.status is not None
    assert (
        parsed.status.ts_us,
        parsed.status.online,
        parsed.status.power,
        parsed.status.battery,
        parsed.status.rssi,
    ) == (NOW_US, True, "battery", 3.6, -97)
    bad = parse_message(
        "coldchain/v1/10001/telemetry",
        b'{"ts": 1795392000000, "readings": [], "power": "solar", "battery": 3.9}',
        NOW_US,
    )
    assert bad.status is not None and bad.status.power is None and bad.status.battery == 3.9
    assert [p.reason for p in bad.problems] == ["bad_field"]


@pytest.mark.parametrize(
    "argv",
    [["--receive-maximum", "0"], ["--receive-maximum", "70000"], ["--batch-messages", "x"], ["--health-port", "0"]],
)
def test_ingest_command_refuses_bad_options(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    from coldchain.cli import build_parser

    with pytest.raises(SystemExit) as exit_info:
        build_parser().parse_args(["ingest", *argv])
    assert exit_info.value.code == 2
    assert "应" in capsys.readouterr().err
