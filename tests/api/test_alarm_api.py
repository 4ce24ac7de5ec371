"""The alarm API against a real database: alarms in the jurisdiction (filters, history),
acknowledge, close with the closure form, the single-use WeChat confirmation link (CM16, and a
sign-in for CM14), manual thermometer readings with the drift check (CM10, CM13), and the rule
parameters of a compartment.

Alarms are raised the way production raises them: a reading goes into ``probe_readings`` and
``probe_latest`` as the ingester writes it, and :func:`alarms.engine.evaluate_compartments` runs.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from datetime import datetime, timedelta
from typing import Any

import psycopg
import pytest
from apihelp import World, api_client, bearer, error_code, web_session
from fastapi.testclient import TestClient
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb

from alarms.engine import PassStats, evaluate_compartments
from alarms.life import new_link
from coldchain.core import db
from coldchain.core.settings import load_settings

API = "/api/v1"
SETTINGS = load_settings({})
CLOSURE = {"cause": "冰箱门未关好", "action": "关好冰箱门并复核温度", "vaccine_disposition": "未受影响继续使用"}


@pytest.fixture
def client(world: World) -> Iterator[TestClient]:
    with api_client(world.url) as c:
        yield c


# ---------------------------------------------------------------------------------------------
# Helpers: readings as the ingester writes them, the scheduler's pass, and plain SQL look-ups


def probe_of(world: World, compartment: str) -> int:
    site, zone = compartment.split("/")
    digit = site[1]
    return world.probes[f"{digit}0{'8601' if zone == '冷藏' else '8604'}"]


def sql_rows(world: World, query: str, params: tuple[Any, ...] = ()) -> list[dict[str, Any]]:
    with db.connect(world.url) as conn, conn.cursor(row_factory=dict_row) as cur:
        cur.execute(query, params)
        return cur.fetchall()


def sql_one(world: World, query: str, params: tuple[Any, ...] = ()) -> dict[str, Any]:
    rows = sql_rows(world, query, params)
    assert len(rows) == 1, rows
    return rows[0]


def db_now(world: World) -> datetime:
    value: datetime = sql_one(world, "SELECT clock_timestamp() AS now")["now"]
    return value


def set_rule_params(world: World, compartment: str, params: dict[str, Any]) -> None:
    with db.connect(world.url) as conn:
        conn.execute(
            """INSERT INTO alarm_rule_params (compartment_id, params) VALUES (%s, %s)
               ON CONFLICT (compartment_id) DO UPDATE SET params = EXCLUDED.params""",
            (world.compartments[compartment], Jsonb(params)),
        )


def feed(world: World, compartment: str, t: float, ts: datetime | None = None) -> datetime:
    """One probe reading, stored as the ingester stores it (reading + probe_latest); returns its ts."""
    probe = probe_of(world, compartment)
    with db.connect(world.url) as conn:
        row = conn.execute(
            "INSERT INTO probe_readings (probe_id, ts, t) VALUES (%s, coalesce(%s, now()), %s) RETURNING ts",
            (probe, ts, t),
        ).fetchone()
        assert row is not None
        conn.execute(
            """INSERT INTO probe_latest (probe_id, ts, t, received_at) VALUES (%s, %s, %s, now())
               ON CONFLICT (probe_id) DO UPDATE
               SET ts = EXCLUDED.ts, t = EXCLUDED.t, received_at = EXCLUDED.received_at""",
            (probe, row[0], t),
        )
        stamp: datetime = row[0]
        return stamp


def evaluate(world: World) -> PassStats:
    with db.connect(world.url) as conn:
        stats = evaluate_compartments(conn, SETTINGS)
    assert stats.errors == []
    return stats


def raise_alarm(world: World, compartment: str, t: float, kind: str) -> int:
    """Delay and hold 0 for the compartment, one breaching reading, one scheduler pass."""
    set_rule_params(world, compartment, {"delay": 0, "hold": 0})
    feed(world, compartment, t)
    assert evaluate(world).opened == 1
    row = sql_one(
        world,
        "SELECT id FROM alarms WHERE compartment_id = %s AND kind = %s AND state = 'active'",
        (world.compartments[compartment], kind),
    )
    alarm_id: int = row["id"]
    return alarm_id


def resolve(world: World, compartment: str, t: float) -> None:
    feed(world, compartment, t)
    assert evaluate(world).resolved == 1


def alarm_row(world: World, alarm_id: int) -> dict[str, Any]:
    return sql_one(world, "SELECT * FROM alarms WHERE id = %s", (alarm_id,))


def audit_rows(world: World, action: str, entity: str) -> list[dict[str, Any]]:
    return sql_rows(
        world,
        "SELECT actor_id, entity_id, op, unit_id, before, after FROM audit_log WHERE action = %s AND entity = %s "
        "ORDER BY id",
        (action, entity),
    )


def ids(response: Any) -> list[int]:
    assert response.status_code == 200, response.text
    return [a["id"] for a in response.json()]


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


# ---------------------------------------------------------------------------------------------
# Thermometer readings and the drift check (CM10, CM13)


def probe_reading_at(world: World, compartment: str, ago: timedelta, t: float) -> datetime:
    """A probe reading ``ago`` before now, on a whole second (well away from the world's readings)."""
    row = sql_one(world, "SELECT date_trunc('second', now() - %s) AS ts", (ago,))
    ts: datetime = row["ts"]
    with db.connect(world.url) as conn:
        conn.execute(
            "INSERT INTO probe_readings (probe_id, ts, t) VALUES (%s, %s, %s)", (probe_of(world, compartment), ts, t)
        )
    return ts


def thermometer(client: TestClient, world: World, compartment: str, ts: datetime, t: float, who: str = "ba_T1") -> Any:
    return client.post(
        f"{API}/compartments/{world.compartments[compartment]}/thermometer-readings",
        json={"ts": ts.isoformat(), "t": t},
        headers=bearer(client, who),
    )


def test_drift_limits_refrigerated(client: TestClient, world: World) -> None:
    t0 = probe_reading_at(world, "T1/冷藏", timedelta(hours=2), 4.3)
    r = thermometer(client, world, "T1/冷藏", t0 + timedelta(minutes=1), 3.8)
    assert r.status_code == 201, r.text
    ok = r.json()
    assert ok["finding"] is False and ok["difference"] == 0.5  # exactly the limit is not beyond it
    assert ok["probe_id"] == world.probes["108601"] and ok["probe_t"] == 4.3
    assert datetime.fromisoformat(ok["probe_ts"]) == t0 and ok["thermometer_t"] == 3.8
    assert "以内" in ok["reason"]

    r = thermometer(client, world, "T1/冷藏", t0 + timedelta(minutes=1), 3.7)
    assert r.status_code == 201, r.text
    bad = r.json()
    assert bad["finding"] is True and bad["difference"] == 0.6
    assert "超过冷藏允许的 ±0.5 ℃" in bad["reason"]
    assert bad["probe_flagged_for_vendor"] is False
    r = thermometer(client, world, "T1/冷藏", t0 - timedelta(minutes=2), 4.9)  # probe lower than thermometer
    assert r.json()["finding"] is True and r.json()["difference"] == -0.6

    listed = client.get(
        f"{API}/compartments/{world.compartments['T1/冷藏']}/thermometer-readings", headers=bearer(client, "sa_K1")
    )
    assert listed.status_code == 200
    # Newest first; two readings of the same moment in the order they were entered, newest first.
    assert [(d["thermometer_t"], d["finding"]) for d in listed.json()] == [(3.7, True), (3.8, False), (4.9, True)]
    rows = sql_rows(world, "SELECT entered_by, t::float8 AS t FROM thermometer_readings ORDER BY id")
    assert rows == [{"entered_by": world.users["ba_T1"], "t": t} for t in (3.8, 3.7, 4.9)]


def test_a_wrong_thermometer_entry_is_corrected_by_a_new_row_and_both_stay(client: TestClient, world: World) -> None:
    comp = world.compartments["T1/冷藏"]
    t0 = probe_reading_at(world, "T1/冷藏", timedelta(hours=2), 4.3)
    wrong = thermometer(client, world, "T1/冷藏", t0, 7.3)  # misread: a drift finding that is not one
    assert wrong.status_code == 201 and wrong.json()["finding"] is True
    wrong_id = wrong.json()["thermometer_reading_id"]
    url = f"{API}/compartments/{comp}/thermometer-readings/{wrong_id}/corrections"

    refused = client.post(url, json={"t": 4.2}, headers=bearer(client, "ba_T1"))
    assert refused.status_code == 422  # a reason is required
    assert client.post(url, json={"t": 4.2, "reason": "看错"}, headers=bearer(client, "sup_P")).status_code == 403

    fixed = client.post(url, json={"t": 4.2, "reason": "录入时看错刻度"}, headers=bearer(client, "ba_K1"))
    assert fixed.status_code == 201, fixed.text
    body = fixed.json()
    assert body["corrects_id"] == wrong_id and body["correction_reason"] == "录入时看错刻度"
    assert body["thermometer_t"] == 4.2 and body["finding"] is False and body["entered_by"] == world.users["ba_K1"]
    assert datetime.fromisoformat(body["ts"]) == t0  # the original's moment when none is given

    again = client.post(url, json={"t": 4.1, "reason": "再改"}, headers=bearer(client, "ba_T1"))
    assert again.status_code == 409 and again.json()["error"]["code"] == "already_corrected"

    history = client.get(f"{API}/compartments/{comp}/thermometer-readings", headers=bearer(client, "ba_T1")).json()
    by_reading = {d["thermometer_reading_id"]: d for d in history}
    assert by_reading[wrong_id]["corrected_by_reading_id"] == body["thermometer_reading_id"]
    assert by_reading[wrong_id]["thermometer_t"] == 7.3  # the original is kept as it was entered
    assert by_reading[body["thermometer_reading_id"]]["corrected_by_reading_id"] is None
    rows = sql_rows(world, "SELECT id, t::float8 AS t, corrects_id, reason FROM thermometer_readings ORDER BY id")
    assert [(r["t"], r["corrects_id"]) for r in rows] == [(7.3, None), (4.2, wrong_id)]
    current = sql_rows(world, "SELECT id FROM thermometer_readings_current")
    assert [r["id"] for r in current] == [body["thermometer_reading_id"]]
    audit = audit_rows(world, "thermometer.correct", "thermometer_readings")
    assert [(a["actor_id"], a["op"]) for a in audit] == [(world.users["ba_K1"], "INSERT")]

    # A correction of the correction chains on; the original cannot be edited by anyone.
    chained = client.post(
        f"{API}/compartments/{comp}/thermometer-readings/{body['thermometer_reading_id']}/corrections",
        json={"t": 4.0, "reason": "复核后更正"},
        headers=bearer(client, "ba_T1"),
    )
    assert chained.status_code == 201 and chained.json()["corrects_id"] == body["thermometer_reading_id"]
    with db.connect(world.url) as conn, pytest.raises(psycopg.errors.RestrictViolation):
        conn.execute("UPDATE thermometer_readings SET t = 4.2 WHERE id = %s", (wrong_id,))


def test_drift_limits_frozen(client: TestClient, world: World) -> None:
    t0 = probe_reading_at(world, "T1/冷冻", timedelta(hours=2), -20.0)
    r = thermometer(client, world, "T1/冷冻", t0, -21.0)
    assert r.status_code == 201 and r.json()["finding"] is False and r.json()["difference"] == 1.0
    r = thermometer(client, world, "T1/冷冻", t0, -21.1)
    assert r.status_code == 201 and r.json()["finding"] is True and r.json()["difference"] == 1.1
    assert "超过冷冻允许的 ±1 ℃" in r.json()["reason"]
    r = thermometer(client, world, "T1/冷冻", t0, -19.4)  # 0.6 off: a finding in 冷藏, not in 冷冻
    assert r.json()["finding"] is False


def test_no_probe_reading_within_five_minutes(client: TestClient, world: World) -> None:
    t0 = probe_reading_at(world, "T1/冷藏", timedelta(hours=2), 4.3)
    r = thermometer(client, world, "T1/冷藏", t0 + timedelta(minutes=5), 9.9)  # exactly 5 min: compared
    assert r.json()["finding"] is True and datetime.fromisoformat(r.json()["probe_ts"]) == t0
    r = thermometer(client, world, "T1/冷藏", t0 + timedelta(minutes=5, seconds=1), 9.9)
    assert r.status_code == 201
    body = r.json()
    assert body["finding"] is False and body["reason"] == "5 分钟内没有探头读数"
    assert body["probe_id"] is None and body["probe_ts"] is None and body["difference"] is None
    r = thermometer(client, world, "T1/冷藏", t0 - timedelta(hours=1), 4.3)
    assert r.json()["finding"] is False and r.json()["reason"] == "5 分钟内没有探头读数"
    # The other zone's probe does not count for this one.
    other = probe_reading_at(world, "T1/冷冻", timedelta(hours=4), -20.0)
    r = thermometer(client, world, "T1/冷藏", other, 4.3)
    assert r.json()["probe_id"] is None and r.json()["finding"] is False


def test_three_findings_in_thirty_days_flag_the_probe_for_the_vendor(client: TestClient, world: World) -> None:
    t0 = probe_reading_at(world, "T1/冷藏", timedelta(hours=2), 4.3)
    flagged = []
    for minutes, t in ((1, 3.0), (2, 4.3), (3, 3.0)):  # finding, no finding, finding
        r = thermometer(client, world, "T1/冷藏", t0 + timedelta(minutes=minutes), t)
        assert r.status_code == 201
        flagged.append(r.json()["probe_flagged_for_vendor"])
    assert flagged == [False, False, False]
    # The first finding is older than 30 days: the next one makes only two in the window.
    with db.connect(world.url) as conn:
        conn.execute(
            """UPDATE drift_findings SET created_at = now() - interval '31 days'
               WHERE id = (SELECT min(id) FROM drift_findings WHERE finding)"""
        )
    r = thermometer(client, world, "T1/冷藏", t0 + timedelta(minutes=4), 3.0)
    assert r.json()["finding"] is True and r.json()["probe_flagged_for_vendor"] is False
    assert sql_rows(world, "SELECT 1 FROM probe_vendor_flags") == []
    r = thermometer(client, world, "T1/冷藏", t0 + timedelta(minutes=4), 3.1)
    assert r.json()["finding"] is True and r.json()["probe_flagged_for_vendor"] is True
    r = thermometer(client, world, "T1/冷藏", t0 + timedelta(minutes=4), 3.2)
    assert r.json()["probe_flagged_for_vendor"] is True
    flags = sql_rows(world, "SELECT probe_id, reason, cleared_at FROM probe_vendor_flags")
    assert flags == [{"probe_id": world.probes["108601"], "reason": "反复漂移，待厂家调试或更换", "cleared_at": None}]


def test_drift_cause_is_recorded_for_findings_only(client: TestClient, world: World) -> None:
    t0 = probe_reading_at(world, "T1/冷藏", timedelta(hours=2), 4.3)
    cold = world.compartments["T1/冷藏"]
    finding = thermometer(client, world, "T1/冷藏", t0, 2.0).json()
    fine = thermometer(client, world, "T1/冷藏", t0, 4.2).json()
    h = bearer(client, "ba_T1")
    r = client.post(
        f"{API}/compartments/{cold}/drift-findings/{finding['id']}/cause", json={"cause": "探头贴壁"}, headers=h
    )
    assert r.status_code == 200, r.text
    assert r.json()["cause"] == "探头贴壁" and r.json()["id"] == finding["id"]
    stored = sql_one(
        world, "SELECT cause, cause_by, cause_at IS NOT NULL AS at FROM drift_findings WHERE id = %s", (finding["id"],)
    )
    assert stored == {"cause": "探头贴壁", "cause_by": world.users["ba_T1"], "at": True}
    # Not a finding, another compartment's finding, or another county: not found.
    r = client.post(
        f"{API}/compartments/{cold}/drift-findings/{fine['id']}/cause", json={"cause": "探头贴壁"}, headers=h
    )
    assert r.status_code == 404
    frozen = world.compartments["T1/冷冻"]
    r = client.post(
        f"{API}/compartments/{frozen}/drift-findings/{finding['id']}/cause", json={"cause": "探头贴壁"}, headers=h
    )
    assert r.status_code == 404
    r = client.post(
        f"{API}/compartments/{cold}/drift-findings/{finding['id']}/cause",
        json={"cause": "别人改的"},
        headers=bearer(client, "ba_K2"),
    )
    assert r.status_code == 404
    r = client.post(f"{API}/compartments/{cold}/drift-findings/{finding['id']}/cause", json={"cause": "x"}, headers=h)
    assert r.status_code == 422
    assert sql_one(world, "SELECT cause FROM drift_findings WHERE id = %s", (finding["id"],))["cause"] == "探头贴壁"
    r = client.post(
        f"{API}/compartments/{cold}/drift-findings/{finding['id']}/cause",
        json={"cause": "督导改的原因"},
        headers=bearer(client, "sup_P"),
    )
    assert r.status_code == 403 and error_code(r) == "forbidden"


def test_thermometer_reading_times_and_jurisdiction(client: TestClient, world: World) -> None:
    now = db_now(world)
    cold = world.compartments["T1/冷藏"]
    r = thermometer(client, world, "T1/冷藏", now + timedelta(minutes=10), 4.5)
    assert r.status_code == 422 and error_code(r) == "invalid"
    assert r.json()["error"]["message"] == "读数时间不能晚于现在"
    # A time without a zone is ambiguous: refused, not guessed (and not a server error).
    r = client.post(
        f"{API}/compartments/{cold}/thermometer-readings",
        json={"ts": now.replace(tzinfo=None).isoformat(), "t": 4.5},
        headers=bearer(client, "ba_T1"),
    )
    assert r.status_code == 422, r.text
    for t in (61, -91, 4.55, "abc"):
        r = client.post(
            f"{API}/compartments/{cold}/thermometer-readings",
            json={"ts": now.isoformat(), "t": t},
            headers=bearer(client, "ba_T1"),
        )
        assert r.status_code == 422, (t, r.text)
    assert sql_rows(world, "SELECT 1 FROM thermometer_readings") == []
    # Another county's compartment does not exist for it.
    r = thermometer(client, world, "T1/冷藏", now, 4.5, who="ba_K2")
    assert r.status_code == 404
    assert (
        client.get(f"{API}/compartments/{cold}/thermometer-readings", headers=bearer(client, "ba_K2")).status_code
        == 404
    )
    # The audit log names the action.
    r = thermometer(client, world, "T1/冷藏", now, 4.5)
    assert r.status_code == 201
    audit = audit_rows(world, "thermometer.add", "thermometer_readings")
    assert len(audit) == 1 and audit[0]["actor_id"] == world.users["ba_T1"] and audit[0]["unit_id"] == world.units["T1"]


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
