"""Manual thermometer readings through the API and the drift check against the probe
(CM10, CM13): the ±0.5 ℃ (冷藏) and ±1 ℃ (冷冻) limits, the nearest probe reading within five
minutes, three findings in thirty days flagging the probe for the vendor, the cause of a finding,
corrections kept beside the original, and which times and compartments are accepted from whom.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

import psycopg
import pytest
from alarmapihelp import API, audit_rows, db_now, probe_of, sql_one, sql_rows
from apihelp import World, bearer, error_code
from fastapi.testclient import TestClient

from coldchain.core import db

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
