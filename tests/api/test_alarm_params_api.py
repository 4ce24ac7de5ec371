"""Where an alarm's rules and notices are configured, through the API: a compartment's
rule parameters (defaults, versioned overrides, validation, concurrent first saves, taking effect
in the next evaluation, limits that would leave them unusable), a unit's escalation timing, and a
unit's notification routes deciding where its alarms go.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from datetime import datetime
from typing import Any

import pytest
from alarmapihelp import API, audit_rows, evaluate, feed, raise_alarm, sql_one, sql_rows
from apihelp import World, api_client, bearer, error_code
from fastapi.testclient import TestClient
from psycopg.types.json import Jsonb

from coldchain.core import db

# ---------------------------------------------------------------------------------------------
# Rule parameters per compartment

DEFAULT_EFFECTIVE = {
    "mode": "refrigerated",
    "t_min": 2.0,
    "t_max": 8.0,
    "delay": "0:10:00",
    "freeze_threshold": -0.5,
    "freeze_delay": "0:05:00",
    "cumulative_limit": "1:00:00",
    "cumulative_window": "1 day, 0:00:00",
    "hysteresis": 0.5,
    "hold": "0:05:00",
    "no_data_after": "0:30:00",
    "wrong_place_after": "3:00:00",
    "wrong_place_t": None,
    "max_gap": "0:10:00",
    "worsen_step": 1.0,
}


def test_alarm_params_defaults_versioned_updates_and_validation(client: TestClient, world: World) -> None:
    cold = world.compartments["T1/冷藏"]
    path = f"{API}/compartments/{cold}/alarm-params"
    h = bearer(client, "ba_T1")
    r = client.get(path, headers=h)
    assert r.status_code == 200, r.text
    assert r.json() == {"compartment_id": cold, "overrides": {}, "effective": DEFAULT_EFFECTIVE, "version": 0}
    frozen = client.get(f"{API}/compartments/{world.compartments['T1/冷冻']}/alarm-params", headers=h).json()
    assert frozen["effective"]["t_max"] == -15.0 and frozen["effective"]["t_min"] is None

    r = client.put(path, json={"version": 0, "overrides": {"delay": "15m", "hysteresis": 0.3}}, headers=h)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["version"] == 1 and body["overrides"] == {"delay": "15m", "hysteresis": 0.3}
    assert body["effective"] == {**DEFAULT_EFFECTIVE, "delay": "0:15:00", "hysteresis": 0.3}
    assert client.get(path, headers=bearer(client, "sa_K1")).json() == body

    r = client.put(path, json={"version": 0, "overrides": {"delay": "20m"}}, headers=h)
    assert r.status_code == 409 and error_code(r) == "version_conflict"
    assert r.json()["error"]["details"] == {"current_version": 1, "your_version": 0}

    nonsense: list[tuple[dict[str, Any], str]] = [
        ({"delay": -5}, "参数 delay 不能为负"),
        ({"delay": "soon"}, "参数 delay 应为时长"),
        ({"colour": 1}, "未知的报警参数：colour"),
        ({"t_max": 9}, "参数 t_max 来自温区登记信息"),
        ({"gateway.offline_after": "5m"}, "参数 gateway.offline_after 全系统统一（一个网关服务多个温区）"),
        ({"hysteresis": 4}, "回差 hysteresis（4.0 ℃）过大"),
        ({"cumulative_limit": "2d"}, "不能长于累计窗口"),
    ]
    for overrides, words in nonsense:
        r = client.put(path, json={"version": 1, "overrides": overrides}, headers=h)
        assert r.status_code == 422, (overrides, r.text)
        assert error_code(r) == "invalid"
        message = r.json()["error"]["message"]
        assert message.startswith("报警参数无效：") and words in message, message
    r = client.put(path, json={"version": 1, "overrides": {"delay": [1]}}, headers=h)
    assert r.status_code == 422
    r = client.put(path, json={"version": 1, "overrides": {}, "extra": 1}, headers=h)
    assert r.status_code == 422
    assert client.get(path, headers=h).json()["version"] == 1  # none of it was stored

    r = client.put(path, json={"version": 1, "overrides": {}}, headers=h)
    assert r.status_code == 200 and r.json()["version"] == 2 and r.json()["effective"] == DEFAULT_EFFECTIVE

    # Another county: not found, for reading and for writing.
    k2 = bearer(client, "sa_K2")
    assert client.get(path, headers=k2).status_code == 404
    assert client.put(path, json={"version": 2, "overrides": {}}, headers=k2).status_code == 404

    audit = audit_rows(world, "alarm_params.update", "alarm_rule_params")
    assert [(a["op"], a["actor_id"], a["unit_id"]) for a in audit] == [
        ("INSERT", world.users["ba_T1"], world.units["T1"]),
        ("UPDATE", world.users["ba_T1"], world.units["T1"]),
    ]
    assert audit[0]["after"]["params"] == {"delay": "15m", "hysteresis": 0.3}
    assert audit[1]["before"]["params"] == {"delay": "15m", "hysteresis": 0.3} and audit[1]["after"]["params"] == {}


def test_params_set_through_the_api_take_effect_in_evaluation(client: TestClient, world: World) -> None:
    # Default delay (10 min): one breaching reading raises nothing yet.
    feed(world, "T1/冷藏", 12.0)
    assert evaluate(world).opened == 0
    # The same on a compartment whose delay was set to 0 through the API: raised at once.
    t2 = world.compartments["T2/冷藏"]
    r = client.put(
        f"{API}/compartments/{t2}/alarm-params",
        json={"version": 0, "overrides": {"delay": 0}},
        headers=bearer(client, "ba_T2"),
    )
    assert r.status_code == 200 and r.json()["effective"]["delay"] == "0:00:00"
    ts = feed(world, "T2/冷藏", 12.0)
    assert evaluate(world).opened == 1
    alarms = client.get(f"{API}/alarms", headers=bearer(client, "sa_P")).json()
    assert [(a["compartment_id"], a["kind"], a["value"]) for a in alarms] == [(t2, "high", 12.0)]
    assert datetime.fromisoformat(alarms[0]["condition_since"]) == ts


def test_concurrent_first_saves_of_params_lose_nothing(client: TestClient, world: World) -> None:
    """Two people save a compartment's first parameters (both read version 0) at the same moment:
    one is stored, the other is told the version moved on — never silently overwritten."""
    cold = world.compartments["T1/冷藏"]
    h = bearer(client, "ba_T1")
    result: dict[str, Any] = {}
    with db.connect(world.url) as other:
        # The other writer holds the compartment while it saves its parameters …
        other.execute("SELECT 1 FROM compartments WHERE id = %s FOR UPDATE", (cold,))
        other.execute(
            "INSERT INTO alarm_rule_params (compartment_id, params, updated_by) VALUES (%s, %s, %s)",
            (cold, Jsonb({"delay": "30m"}), world.users["sa_K1"]),
        )

        def save() -> None:
            result["r"] = client.put(
                f"{API}/compartments/{cold}/alarm-params", json={"version": 0, "overrides": {"delay": "5m"}}, headers=h
            )

        thread = threading.Thread(target=save)
        thread.start()
        _wait_for_lock_waiter(world.url)
        other.commit()  # … and commits while this request waits for it.
        thread.join(30)
    r = result["r"]
    assert r.status_code == 409, r.text
    assert error_code(r) == "version_conflict"
    assert r.json()["error"]["details"] == {"current_version": 1, "your_version": 0}
    stored = sql_one(world, "SELECT params, version FROM alarm_rule_params WHERE compartment_id = %s", (cold,))
    assert stored == {"params": {"delay": "30m"}, "version": 1}


def _wait_for_lock_waiter(url: str) -> None:
    deadline = time.monotonic() + 20
    with db.connect(url, autocommit=True) as conn:
        while time.monotonic() < deadline:
            row = conn.execute(
                """SELECT count(*) FROM pg_stat_activity
                   WHERE datname = current_database() AND wait_event_type = 'Lock'
                     AND application_name = 'coldchain-api'"""
            ).fetchone()
            if row and row[0] >= 1:
                return
            time.sleep(0.05)
    raise AssertionError("请求没有等待行锁")


def test_new_limits_that_would_leave_the_rules_unusable_are_refused(client: TestClient, world: World) -> None:
    """Narrowing a compartment's band below what its alarm parameters need would make every
    evaluation of it fail; the registry refuses the change and says why."""
    h = bearer(client, "sa_K1")
    cold = world.compartments["T1/冷藏"]
    r = client.put(
        f"/api/v1/compartments/{cold}/alarm-params", json={"version": 0, "overrides": {"hysteresis": 2.5}}, headers=h
    )
    assert r.status_code == 200, r.text
    r = client.patch(f"/api/v1/compartments/{cold}", json={"version": 1, "t_min": 4.0}, headers=h)
    assert r.status_code == 422 and "报警参数" in r.json()["error"]["message"]
    r = client.patch(f"/api/v1/compartments/{cold}", json={"version": 1, "t_min": 2.5}, headers=h)
    assert r.status_code == 200 and r.json()["t_min"] == 2.5


def test_unit_escalation_timing_is_overridable_and_checked(client: TestClient, world: World) -> None:
    t1 = world.units["T1"]
    h = bearer(client, "ba_K1")
    r = client.get(f"/api/v1/units/{t1}/escalation", headers=h)
    assert r.json()["effective_steps"] == ["0:30:00", "1:00:00"] and r.json()["version"] == 0
    r = client.put(
        f"/api/v1/units/{t1}/escalation", json={"version": 0, "steps": "5m,10m", "reminder": "20m"}, headers=h
    )
    assert r.status_code == 200, r.text
    body = r.json()
    assert (body["effective_steps"], body["effective_reminder"], body["version"]) == (
        ["0:05:00", "0:10:00"],
        "0:20:00",
        1,
    )
    assert body["effective_resolved_reminder"] == "1 day, 0:00:00"  # the setting, not overridden
    stale = client.put(f"/api/v1/units/{t1}/escalation", json={"version": 0, "steps": "1m,2m"}, headers=h)
    assert (stale.status_code, error_code(stale)) == (409, "version_conflict")
    bad = client.put(f"/api/v1/units/{t1}/escalation", json={"version": 1, "steps": "10m,5m"}, headers=h)
    assert bad.status_code == 422 and "升级时限" in bad.json()["error"]["message"]
    other = client.get(f"/api/v1/units/{t1}/escalation", headers=bearer(client, "ba_K2"))
    assert other.status_code == 404


@pytest.fixture
def hooks_client(world: World) -> Iterator[TestClient]:
    """An API whose outbound allowlist also names the county's own webhook host."""
    with api_client(world.url, {"COLDCHAIN_OUTBOUND_HOSTS": "qyapi.weixin.qq.com,example.org"}) as c:
        yield c


def test_unit_notification_routes_decide_where_an_alarm_goes(hooks_client: TestClient, world: World) -> None:
    client = hooks_client
    t1 = world.units["T1"]
    h = bearer(client, "ba_K1")
    robot = "https://qyapi.weixin.qq.com/cgi-bin/webhook/send?key=t1-level1"
    no_secret = client.put(
        f"/api/v1/units/{t1}/notification-routes",
        json=[{"level": 1, "channel": "webhook", "url": "https://example.org/hook"}],
        headers=h,
    )
    assert no_secret.status_code == 422 and "HMAC" in no_secret.json()["error"]["message"]
    r = client.put(
        f"/api/v1/units/{t1}/notification-routes",
        json=[
            {"level": 1, "channel": "wecom", "url": robot},
            {"level": 2, "channel": "webhook", "url": "https://example.org/hook", "secret": "s" * 20},
        ],
        headers=h,
    )
    assert r.status_code == 200, r.text
    assert [(x["level"], x["channel"], x["has_secret"]) for x in r.json()] == [
        (1, "wecom", False),
        (2, "webhook", True),
    ]
    assert "secret" not in r.json()[1]
    assert r.json()[0]["url"] == "https://qyapi.weixin.qq.com/cgi-bin/webhook/send?key=***"  # the key is the secret
    assert client.get(f"/api/v1/units/{t1}/notification-routes", headers=bearer(client, "ba_K2")).status_code == 404
    alarm_id = raise_alarm(world, "T1/冷藏", 12.0, "high")
    outbox = sql_rows(world, "SELECT step, channel, target FROM notification_outbox WHERE alarm_id = %s", (alarm_id,))
    assert outbox == [{"step": "open", "channel": "wecom", "target": robot}]
