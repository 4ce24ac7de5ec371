"""The alarm API against a real database: alarms in the jurisdiction (filters, history,
another county's ids answered as not found, read-only roles refused), acknowledging from the API,
from the web and through the single-use confirmation link of a WeChat message (CM16, which also
counts as that day's sign-in for CM14), and closing with the closure form once the alarm has
resolved.

Alarms are raised the way production raises them (tests/alarmapihelp.py): a reading goes into
``probe_readings`` and ``probe_latest`` as the ingester writes it, and
:func:`alarms.engine.evaluate_compartments` runs.
"""

from __future__ import annotations

import time
from datetime import datetime
from typing import Any

import pytest
from alarmapihelp import (
    API,
    alarm_row,
    audit_rows,
    db_now,
    evaluate,
    feed,
    ids,
    raise_alarm,
    resolve,
    sql_one,
    sql_rows,
)
from apihelp import World, api_client, bearer, error_code, web_session
from fastapi.testclient import TestClient

from alarms.life import new_link
from coldchain.core import db

CLOSURE = {"cause": "冰箱门未关好", "action": "关好冰箱门并复核温度", "vaccine_disposition": "未受影响继续使用"}


# ---------------------------------------------------------------------------------------------
# Listing, filters, history


@pytest.fixture
def three_alarms(world: World) -> dict[str, Any]:
    """T1/冷藏 high (active), T1/冷冻 high (resolved), then — after ``mid`` — T2/冷藏 low (active)."""
    a1 = raise_alarm(world, "T1/冷藏", 12.0, "high")
    a2 = raise_alarm(world, "T1/冷冻", -5.0, "high")
    resolve(world, "T1/冷冻", -20.0)
    mid = db_now(world)
    time.sleep(0.01)
    a3 = raise_alarm(world, "T2/冷藏", 1.0, "low")
    return {"a1": a1, "a2": a2, "a3": a3, "mid": mid}


def test_list_filters(client: TestClient, world: World, three_alarms: dict[str, Any]) -> None:
    a1, a2, a3, mid = three_alarms["a1"], three_alarms["a2"], three_alarms["a3"], three_alarms["mid"]
    h = bearer(client, "sa_P")

    def listed(**params: Any) -> list[int]:
        return ids(client.get(f"{API}/alarms", params=params, headers=h))

    assert listed() == [a3, a2, a1]  # newest first
    assert listed(state="active") == [a3, a1]
    assert listed(state="resolved") == [a2]
    assert listed(state="closed") == []
    assert listed(open_only="true") == [a3, a1]
    assert listed(open_only="false") == [a3, a2, a1]
    assert listed(kind="low") == [a3]
    assert listed(kind="high") == [a2, a1]
    assert listed(kind="freeze") == []
    assert listed(unit_id=world.units["T1"]) == [a2, a1]
    assert listed(unit_id=world.units["K1"]) == [a2, a1]
    assert listed(unit_id=world.units["C2"]) == [a3]
    assert listed(unit_id=world.units["T3"]) == []
    assert listed(compartment_id=world.compartments["T1/冷冻"]) == [a2]
    assert listed(since=mid.isoformat()) == [a3]
    assert listed(until=mid.isoformat()) == [a2, a1]
    assert listed(unit_id=world.units["T1"], state="active") == [a1]
    assert listed(limit=1) == [a3]
    assert listed(limit=1, offset=1) == [a2]

    for bad in ({"state": "open"}, {"kind": "HIGH!"}, {"limit": 0}, {"unit_id": 0}, {"since": "yesterday"}):
        r = client.get(f"{API}/alarms", params=bad, headers=h)
        assert r.status_code == 422, (bad, r.text)
        assert error_code(r) == "invalid_request"

    # What a row says about the alarm.
    row = client.get(f"{API}/alarms", params={"kind": "low"}, headers=h).json()[0]
    assert row["kind"] == "low" and row["severity"] == "major" and row["state"] == "active"
    assert row["unit_id"] == world.units["T2"] and row["unit_name"] == "向阳街道卫生院"
    assert row["equipment_id"] == world.equipment["T2"] and row["equipment_name"] == "海尔双温冰箱"
    assert row["compartment_id"] == world.compartments["T2/冷藏"] and row["compartment_name"] == "冷藏"
    assert row["gateway_id"] == world.gateways["20001"] and row["gateway_serial"] == "20001"
    assert row["probe_id"] == world.probes["208601"]
    assert row["value"] == 1.0 and row["t_min"] == 2.0 and row["t_max"] == 8.0
    assert row["acknowledged_at"] is None and row["closed_at"] is None and row["closure"] is None
    assert row["version"] == 1


def test_alarm_detail_holds_its_history_and_notifications(
    client: TestClient, world: World, three_alarms: dict[str, Any]
) -> None:
    h = bearer(client, "ba_T1")
    r = client.get(f"{API}/alarms/{three_alarms['a2']}", headers=h)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["state"] == "resolved" and body["resolved_at"] is not None and body["version"] == 2
    assert [e["action"] for e in body["events"]] == ["opened", "resolved"]
    assert all(e["username"] is None for e in body["events"])  # the scheduler, not a person
    assert body["events"][0]["details"]["value"] == -5.0
    assert body["events"][0]["details"]["found_late"] is False
    # The first notice was written with the alarm (no route configured: recorded as such).
    assert [(n["step"], n["levels"]) for n in body["notifications"]] == [("open", [1])]
    assert body["notifications"][0]["channel"] == "wecom"


# ---------------------------------------------------------------------------------------------
# Jurisdiction


def test_jurisdiction_lists_and_ids(client: TestClient, world: World) -> None:
    t1 = raise_alarm(world, "T1/冷藏", 12.0, "high")
    t2 = raise_alarm(world, "T2/冷藏", 12.0, "high")
    t3 = raise_alarm(world, "T3/冷藏", 12.0, "high")
    expected = {
        "ba_T1": [t1],
        "sa_K1": [t1],
        "ba_K1": [t1],
        "ana_K1": [t1],
        "sa_C1": [t1],
        "ba_C1": [t1],
        "sa_P": [t3, t2, t1],
        "sup_P": [t3, t2, t1],
        "ana_P": [t3, t2, t1],
        "sa_K2": [t2],
        "ba_K2": [t2],
        "ba_T2": [t2],
        "sa_K3": [t3],
        "sa_C2": [t2],
    }
    for who, visible in expected.items():
        h = bearer(client, who)
        assert ids(client.get(f"{API}/alarms", headers=h)) == visible, who
        for alarm in (t1, t2, t3):
            r = client.get(f"{API}/alarms/{alarm}", headers=h)
            assert r.status_code == (200 if alarm in visible else 404), (who, alarm, r.text)


@pytest.mark.parametrize("who", ["sa_K2", "ba_K2"])
def test_another_county_gets_not_found_for_every_id_and_write(client: TestClient, world: World, who: str) -> None:
    t1 = raise_alarm(world, "T1/冷藏", 12.0, "high")
    t1_frozen = raise_alarm(world, "T1/冷冻", -5.0, "high")
    resolve(world, "T1/冷冻", -20.0)  # closable, were it in scope
    t2 = raise_alarm(world, "T2/冷藏", 12.0, "high")
    h = bearer(client, who)
    out_of_scope = [t1, t1_frozen, t2 + 1, 2**40]
    for alarm in out_of_scope:
        version = alarm_row(world, alarm)["version"] if alarm in (t1, t1_frozen) else 1
        attempts = [
            client.get(f"{API}/alarms/{alarm}", headers=h),
            client.post(f"{API}/alarms/{alarm}/acknowledge", json={"on_site": True}, headers=h),
            client.post(f"{API}/alarms/{alarm}/close", json={"version": version, **CLOSURE}, headers=h),
        ]
        for r in attempts:
            assert r.status_code == 404, (alarm, r.request.url, r.text)
            assert error_code(r) == "not_found"
            assert r.json()["error"]["message"] == "报警不存在或不在您的辖区内"
    assert ids(client.get(f"{API}/alarms", headers=h)) == [t2]
    assert ids(client.get(f"{API}/alarms", params={"state": "resolved"}, headers=h)) == []
    r = client.get(f"{API}/alarms", params={"unit_id": world.units["T1"]}, headers=h)
    assert r.status_code == 404 and error_code(r) == "not_found"
    # Nothing happened to T1's alarms.
    assert alarm_row(world, t1)["state"] == "active" and alarm_row(world, t1)["acknowledged_at"] is None
    assert alarm_row(world, t1_frozen)["state"] == "resolved" and alarm_row(world, t1_frozen)["version"] == 2
    assert sql_rows(world, "SELECT 1 FROM alarm_events WHERE action IN ('acknowledged', 'closed')") == []
    # Its own alarm is there for it.
    assert client.get(f"{API}/alarms/{t2}", headers=h).status_code == 200


def test_read_only_roles_cannot_write(client: TestClient, world: World) -> None:
    alarm = raise_alarm(world, "T1/冷藏", 12.0, "high")
    frozen = raise_alarm(world, "T1/冷冻", -5.0, "high")
    resolve(world, "T1/冷冻", -20.0)
    cold = world.compartments["T1/冷藏"]
    for who in ("sup_P", "ana_P", "ana_K1"):
        h = bearer(client, who)
        assert client.get(f"{API}/alarms/{alarm}", headers=h).status_code == 200
        writes = [
            client.post(f"{API}/alarms/{alarm}/acknowledge", json={"on_site": True}, headers=h),
            client.post(f"{API}/alarms/{frozen}/close", json={"version": 2, **CLOSURE}, headers=h),
            client.post(
                f"{API}/compartments/{cold}/thermometer-readings",
                json={"ts": db_now(world).isoformat(), "t": 4.5},
                headers=h,
            ),
            client.put(f"{API}/compartments/{cold}/alarm-params", json={"version": 1, "overrides": {}}, headers=h),
        ]
        for r in writes:
            assert r.status_code == 403, (who, r.request.url, r.text)
            assert error_code(r) == "forbidden"
    # Out of an analyst's jurisdiction too: a read-only role is refused before any id is looked up,
    # so every id gets the same 403 and nothing shows whether another unit's alarm exists.
    t2 = raise_alarm(world, "T2/冷藏", 12.0, "high")
    r = client.post(f"{API}/alarms/{t2}/acknowledge", json={}, headers=bearer(client, "ana_K1"))
    assert r.status_code == 403 and error_code(r) == "forbidden"
    r = client.post(f"{API}/alarms/{2**40}/acknowledge", json={}, headers=bearer(client, "ana_K1"))
    assert r.status_code == 403 and error_code(r) == "forbidden"
    assert alarm_row(world, alarm)["acknowledged_at"] is None
    assert alarm_row(world, frozen)["state"] == "resolved"
    assert sql_rows(world, "SELECT 1 FROM thermometer_readings") == []
    assert sql_one(world, "SELECT params FROM alarm_rule_params WHERE compartment_id = %s", (cold,)) == {
        "params": {"delay": 0, "hold": 0}
    }


# ---------------------------------------------------------------------------------------------
# Acknowledge


def test_acknowledge_with_a_bearer_token_records_who_when_and_api(client: TestClient, world: World) -> None:
    alarm = raise_alarm(world, "T1/冷藏", 12.0, "high")
    h = bearer(client, "ba_T1")
    before = db_now(world)
    r = client.post(
        f"{API}/alarms/{alarm}/acknowledge", json={"on_site": True, "comment": "  已到现场，关好冰箱门 "}, headers=h
    )
    after = db_now(world)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["state"] == "acknowledged"
    assert body["acknowledged_by"] == world.users["ba_T1"]
    assert body["ack_channel"] == "api"
    assert body["on_site"] is True
    assert body["ack_comment"] == "已到现场，关好冰箱门"
    assert body["version"] == 2
    assert before <= datetime.fromisoformat(body["acknowledged_at"]) <= after

    events = client.get(f"{API}/alarms/{alarm}", headers=h).json()["events"]
    assert [e["action"] for e in events] == ["opened", "acknowledged"]
    assert events[1]["username"] == "ba_T1" and events[1]["channel"] == "api"
    assert events[1]["details"] == {"on_site": True, "comment": "已到现场，关好冰箱门"}

    # A second acknowledgement, by anyone, is refused and changes nothing.
    r = client.post(f"{API}/alarms/{alarm}/acknowledge", json={"on_site": True}, headers=bearer(client, "sa_K1"))
    assert r.status_code == 409 and error_code(r) == "alarm_state"
    stored = alarm_row(world, alarm)
    assert stored["acknowledged_by"] == world.users["ba_T1"] and stored["version"] == 2

    # Audit: who, which action, before and after.
    audit = audit_rows(world, "alarm.acknowledge", "alarms")
    assert len(audit) == 1
    assert audit[0]["actor_id"] == world.users["ba_T1"] and audit[0]["entity_id"] == alarm
    assert audit[0]["unit_id"] == world.units["T1"] and audit[0]["op"] == "UPDATE"
    assert audit[0]["before"]["state"] == "active" and audit[0]["after"]["state"] == "acknowledged"

    # Unknown fields are refused.
    r = client.post(f"{API}/alarms/{alarm}/acknowledge", json={"on_site": True, "who": "x"}, headers=h)
    assert r.status_code == 422


def test_acknowledge_from_the_web_needs_csrf_and_records_web(world: World) -> None:
    alarm = raise_alarm(world, "T2/冷藏", 1.0, "low")
    with api_client(world.url) as web:
        csrf = web_session(web, "ba_K2")
        r = web.post(f"{API}/alarms/{alarm}/acknowledge", json={"on_site": False})
        assert r.status_code == 403 and error_code(r) == "csrf_failed"
        assert alarm_row(world, alarm)["acknowledged_at"] is None
        r = web.post(f"{API}/alarms/{alarm}/acknowledge", json={"on_site": False}, headers=csrf)
        assert r.status_code == 200, r.text
        assert r.json()["ack_channel"] == "web"
        assert r.json()["on_site"] is False and r.json()["ack_comment"] is None
        assert r.json()["acknowledged_by"] == world.users["ba_K2"]
        event = web.get(f"{API}/alarms/{alarm}").json()["events"][-1]
        assert (event["action"], event["username"], event["channel"]) == ("acknowledged", "ba_K2", "web")


def test_a_resolved_alarm_can_still_be_acknowledged_and_stays_resolved(client: TestClient, world: World) -> None:
    alarm = raise_alarm(world, "T1/冷藏", 12.0, "high")
    resolve(world, "T1/冷藏", 4.0)
    r = client.post(f"{API}/alarms/{alarm}/acknowledge", json={}, headers=bearer(client, "ba_T1"))
    assert r.status_code == 200, r.text
    assert r.json()["state"] == "resolved"
    assert r.json()["acknowledged_by"] == world.users["ba_T1"] and r.json()["on_site"] is True


# ---------------------------------------------------------------------------------------------
# Close


def test_close_only_after_resolution_with_the_current_version(client: TestClient, world: World) -> None:
    alarm = raise_alarm(world, "T1/冷藏", 12.0, "high")
    h = bearer(client, "ba_T1")
    r = client.post(f"{API}/alarms/{alarm}/close", json={"version": 1, **CLOSURE}, headers=h)
    assert r.status_code == 409 and error_code(r) == "alarm_state"
    assert "仍在异常中" in r.json()["error"]["message"]

    assert client.post(f"{API}/alarms/{alarm}/acknowledge", json={}, headers=h).status_code == 200
    r = client.post(f"{API}/alarms/{alarm}/close", json={"version": 2, **CLOSURE}, headers=h)
    assert r.status_code == 409 and error_code(r) == "alarm_state"  # acknowledged is not resolved

    resolve(world, "T1/冷藏", 4.0)
    assert alarm_row(world, alarm)["version"] == 3
    r = client.post(f"{API}/alarms/{alarm}/close", json={"version": 2, **CLOSURE}, headers=h)
    assert r.status_code == 409 and error_code(r) == "version_conflict"
    assert r.json()["error"]["details"] == {"current_version": 3, "your_version": 2}

    for bad in (
        {"version": 3, **CLOSURE, "cause": "x"},
        {"version": 3, "cause": CLOSURE["cause"], "action": CLOSURE["action"]},
        {"version": 0, **CLOSURE},
        {"version": 3, **CLOSURE, "closed_by": 1},
    ):
        r = client.post(f"{API}/alarms/{alarm}/close", json=bad, headers=h)
        assert r.status_code == 422, (bad, r.text)
    assert alarm_row(world, alarm)["state"] == "resolved"

    before = db_now(world)
    r = client.post(f"{API}/alarms/{alarm}/close", json={"version": 3, **CLOSURE}, headers=h)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["state"] == "closed" and body["closure"] == CLOSURE and body["version"] == 4
    assert datetime.fromisoformat(body["closed_at"]) >= before
    stored = alarm_row(world, alarm)
    assert stored["closed_by"] == world.users["ba_T1"] and stored["closure"] == CLOSURE

    events = client.get(f"{API}/alarms/{alarm}", headers=h).json()["events"]
    assert [e["action"] for e in events] == ["opened", "acknowledged", "resolved", "closed"]
    assert events[-1]["username"] == "ba_T1" and events[-1]["channel"] == "api"
    assert events[-1]["details"] == CLOSURE

    # Closed is final.
    r = client.post(f"{API}/alarms/{alarm}/close", json={"version": 4, **CLOSURE}, headers=h)
    assert r.status_code == 409 and error_code(r) == "alarm_state"
    assert "已关闭" in r.json()["error"]["message"]
    r = client.post(f"{API}/alarms/{alarm}/acknowledge", json={}, headers=h)
    assert r.status_code == 409  # already acknowledged (and closed)

    audit = audit_rows(world, "alarm.close", "alarms")
    assert len(audit) == 1 and audit[0]["actor_id"] == world.users["ba_T1"] and audit[0]["entity_id"] == alarm
    assert audit[0]["before"]["state"] == "resolved" and audit[0]["after"]["state"] == "closed"
    assert audit[0]["after"]["closure"] == CLOSURE


def test_a_closed_alarm_that_was_never_acknowledged_cannot_be_acknowledged(client: TestClient, world: World) -> None:
    alarm = raise_alarm(world, "T1/冷藏", 12.0, "high")
    resolve(world, "T1/冷藏", 4.0)
    h = bearer(client, "sa_K1")
    assert client.post(f"{API}/alarms/{alarm}/close", json={"version": 2, **CLOSURE}, headers=h).status_code == 200
    r = client.post(f"{API}/alarms/{alarm}/acknowledge", json={}, headers=h)
    assert r.status_code == 409 and error_code(r) == "alarm_state"
    assert alarm_row(world, alarm)["acknowledged_at"] is None
    # A new excursion on the same compartment is a new alarm; the closed one stays closed.
    feed(world, "T1/冷藏", 12.5)
    assert evaluate(world).opened == 1
    states = sql_rows(
        world,
        "SELECT state FROM alarms WHERE compartment_id = %s ORDER BY id",
        (alarm_row(world, alarm)["compartment_id"],),
    )
    assert [s["state"] for s in states] == ["closed", "active"]


# ---------------------------------------------------------------------------------------------
# The confirmation link in a WeChat message


def make_link(world: World, alarm_id: int, username: str) -> str:
    with db.connect(world.url) as conn:
        return new_link(conn, alarm_id, world.users[username], 1)


def daily_sign_ins(client: TestClient, world: World, site: str) -> int:
    r = client.get(
        f"{API}/login-compliance/daily", params={"unit_id": world.units[site]}, headers=bearer(client, "sa_K1")
    )
    assert r.status_code == 200, r.text
    (row,) = [d for d in r.json() if d["unit_id"] == world.units[site]]
    count: int = row["sign_ins"]
    return count


def wechat_logins(world: World) -> list[dict[str, Any]]:
    return sql_rows(
        world,
        "SELECT user_id, unit_id, username, success, reason, user_agent FROM login_events WHERE channel = 'wechat'",
    )


def test_link_confirms_once_through_wechat_and_counts_as_a_sign_in(client: TestClient, world: World) -> None:
    alarm = raise_alarm(world, "T1/冷藏", 12.0, "high")
    token = make_link(world, alarm, "ba_T1")
    assert daily_sign_ins(client, world, "T1") == 0

    ua = {"User-Agent": "Mozilla/5.0 MicroMessenger/8.0"}
    r = client.post(f"{API}/alarm-links/confirm", json={"token": token}, headers=ua)
    assert r.status_code == 200, r.text
    assert r.json() == {"alarm_id": alarm, "state": "acknowledged", "acknowledged_by": "ba_T1"}

    stored = alarm_row(world, alarm)
    assert stored["ack_channel"] == "wechat" and stored["acknowledged_by"] == world.users["ba_T1"]
    assert stored["on_site"] is True and stored["state"] == "acknowledged"
    event = client.get(f"{API}/alarms/{alarm}", headers=bearer(client, "sa_K1")).json()["events"][-1]
    assert (event["action"], event["username"], event["channel"]) == ("acknowledged", "ba_T1", "wechat")
    assert sql_one(world, "SELECT used_at IS NOT NULL AS used FROM alarm_links")["used"] is True

    assert wechat_logins(world) == [
        {
            "user_id": world.users["ba_T1"],
            "unit_id": world.units["T1"],
            "username": "ba_T1",
            "success": True,
            "reason": "alarm_link",
            "user_agent": "Mozilla/5.0 MicroMessenger/8.0",
        }
    ]
    assert daily_sign_ins(client, world, "T1") == 1

    audit = audit_rows(world, "alarm.acknowledge", "alarms")
    assert len(audit) == 1 and audit[0]["actor_id"] == world.users["ba_T1"]

    # Single use: the second click is refused and signs nobody in.
    r = client.post(f"{API}/alarm-links/confirm", json={"token": token}, headers=ua)
    assert r.status_code == 401 and error_code(r) == "link_invalid"
    assert len(wechat_logins(world)) == 1
    assert daily_sign_ins(client, world, "T1") == 1


def test_expired_unknown_and_malformed_links_are_refused(client: TestClient, world: World) -> None:
    alarm = raise_alarm(world, "T2/冷藏", 12.0, "high")
    token = make_link(world, alarm, "ba_T2")
    with db.connect(world.url) as conn:
        conn.execute("UPDATE alarm_links SET expires_at = now() - interval '1 second'")
    r = client.post(f"{API}/alarm-links/confirm", json={"token": token})
    assert r.status_code == 401 and error_code(r) == "link_invalid"
    r = client.post(f"{API}/alarm-links/confirm", json={"token": "A" * 43})
    assert r.status_code == 401 and error_code(r) == "link_invalid"
    r = client.post(f"{API}/alarm-links/confirm", json={"token": "short"})
    assert r.status_code == 422
    assert alarm_row(world, alarm)["acknowledged_at"] is None
    assert sql_one(world, "SELECT used_at FROM alarm_links")["used_at"] is None
    assert wechat_logins(world) == []


def test_link_after_someone_else_acknowledged_signs_in_but_keeps_the_first_acknowledgement(
    client: TestClient, world: World
) -> None:
    alarm = raise_alarm(world, "T1/冷藏", 12.0, "high")
    token = make_link(world, alarm, "ba_T1")
    r = client.post(f"{API}/alarms/{alarm}/acknowledge", json={}, headers=bearer(client, "sa_K1"))
    assert r.status_code == 200
    r = client.post(f"{API}/alarm-links/confirm", json={"token": token})
    assert r.status_code == 200, r.text
    assert r.json() == {"alarm_id": alarm, "state": "acknowledged", "acknowledged_by": "sa_K1"}
    stored = alarm_row(world, alarm)
    assert stored["acknowledged_by"] == world.users["sa_K1"] and stored["ack_channel"] == "api"
    assert len(wechat_logins(world)) == 1
    assert sql_one(world, "SELECT count(*) AS n FROM alarm_events WHERE action = 'acknowledged'") == {"n": 1}
