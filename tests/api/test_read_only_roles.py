"""Supervisors and analysts never write (RS1, issue #15): every POST / PUT / PATCH / DELETE of the
OpenAPI document, tried as the provincial supervisor and both analysts, is refused with 403
``forbidden`` and changes nothing in the database — except the few writes listed below, each
with its reason, which the document itself marks (``x-read-only-roles``, api/readonly.py).

Path parameters are real ids of the test world (a form, an alarm, a lot, a transfer, …, made by
administrators first), so a refusal is the role's and not a missing row's."""

from __future__ import annotations

import re
from collections.abc import Iterator
from datetime import datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from apihelp import World, api_client, bearer, error_code
from fastapi.testclient import TestClient
from ledgerhelp import build_catalogue, cn20, receive, ship

from api.readonly import READ_ONLY_MAY
from coldchain.core import db

API = "/api/v1"
READ_ONLY_USERS = ("sup_P", "ana_P", "ana_K1")

# The writes a read-only user may make, and why. The OpenAPI document must mark exactly these.
OPEN_TO_READ_ONLY: dict[tuple[str, str], str] = {
    ("POST", "/api/v1/auth/session"): "sign-in: no one is authenticated yet (401 without credentials)",
    ("POST", "/api/v1/auth/token"): "sign-in: no one is authenticated yet",
    ("POST", "/api/v1/auth/wechat"): "sign-in from WeChat: no one is authenticated yet",
    ("POST", "/api/v1/auth/setup-password"): "pre-auth: a new user sets a first password with a one-time token",
    ("POST", "/api/v1/auth/logout"): "self-service: ends the caller's own session",
    ("POST", "/api/v1/auth/password"): "self-service: changes the caller's own password",
    ("PUT", "/api/v1/users/me/wechat"): "self-service: binds the caller's own WeChat (alarm delivery, CM15)",
    ("DELETE", "/api/v1/users/me/wechat"): "self-service: unbinds the caller's own WeChat",
    ("POST", "/api/v1/alarm-links/confirm"): "pre-auth: the single-use token sent to one person is the authority",
    ("POST", "/api/v1/codes/resolve"): "a lookup sent as POST (the scanned code is the body); writes nothing",
}
WRITE_METHODS = ("post", "put", "patch", "delete")


@pytest.fixture
def client(world: World) -> Iterator[TestClient]:
    with api_client(world.url) as c:
        yield c


def _next_month() -> str:
    today = datetime.now(ZoneInfo("Asia/Shanghai")).date().replace(day=1)
    return (today + timedelta(days=32)).strftime("%Y-%m")


def _created(response: Any) -> dict[str, Any]:
    assert response.status_code in (200, 201), response.text
    body: dict[str, Any] = response.json()
    return body


def _real_ids(client: TestClient, world: World) -> dict[str, int]:
    """One real object of every kind a write path names, made by administrators."""
    cat = build_catalogue(world)
    lot = cat.lots["hepb"]
    k1, t1 = bearer(client, "ba_K1"), bearer(client, "ba_T1")
    movement = receive(client, k1, lot, 100)["id"]
    transfer = ship(client, k1, world.units["T1"], lot, 10)["transfer"]["id"]
    scrap = _created(
        client.post(f"{API}/stock/scrap", json={"lot_id": lot, "quantity": 1, "reason": "breakage"}, headers=k1)
    )
    report = _created(client.post(f"{API}/lots/{lot}/error-reports", json={"message": "批签发号有误"}, headers=k1))
    plan = _created(
        client.post(
            f"{API}/usage-plans",
            json={"month": _next_month(), "lines": [{"spec_id": cat.specs["hepb"], "planned": 20}]},
            headers=t1,
        )
    )
    form = _created(
        client.post(
            f"{API}/forms",
            json={
                "form_type": 2,
                "unit_id": world.units["T1"],
                "submitter_name": "王芳",
                "submitter_phone": "029-88886666",
                "fridges": 1,
                "gateways": 0,
                "probes": 1,
            },
            headers=t1,
        )
    )
    compartment = world.compartments["T1/冷藏"]
    drift = _created(
        client.post(
            f"{API}/compartments/{compartment}/thermometer-readings",
            json={"ts": datetime.now(ZoneInfo("UTC")).isoformat(), "t": "4.5"},
            headers=t1,
        )
    )
    with db.connect(world.url) as conn:
        row = conn.execute(
            """INSERT INTO alarms (kind, severity, unit_id, equipment_id, compartment_id, condition_since, value)
               VALUES ('high', 'major', %s, %s, %s, now() - interval '20 minutes', 9.5) RETURNING id""",
            (world.units["T1"], world.equipment["T1"], compartment),
        ).fetchone()
        conn.commit()
    assert row is not None
    return {
        "unit_id": world.units["K1"],
        "equipment_id": world.equipment["T1"],
        "compartment_id": compartment,
        "gateways": world.gateways["10001"],
        "probes": world.probes["108601"],
        "form_id": form["id"],
        "alarm_id": row[0],
        "reading_id": drift["thermometer_reading_id"],
        "finding_id": drift["id"],
        "spec_id": cat.specs["hepb"],
        "lot_id": lot,
        "report_id": report["id"],
        "transfer_id": transfer,
        "request_id": scrap["request"]["id"],
        "movement_id": movement,
        "plan_id": plan["id"],
    }


def _fill(path: str, ids: dict[str, int]) -> str:
    def one(match: re.Match[str]) -> str:
        name = match.group(1)
        if name == "item_id":  # /gateways/{item_id}, /probes/{item_id}
            name = path.split("/")[3]
        return str(ids[name])

    return re.sub(r"\{([a-z_]+)\}", one, path)


def _fingerprint(world: World) -> dict[str, str]:
    """Every table's whole content, hashed: an insert, update or delete anywhere shows."""
    with db.connect(world.url) as conn:
        tables = [
            r[0]
            for r in conn.execute(
                "SELECT tablename FROM pg_tables WHERE schemaname = 'public' ORDER BY tablename"
            ).fetchall()
        ]
        out = {}
        for table in tables:
            row = conn.execute(
                f"SELECT count(*), md5(coalesce(string_agg(t::text, '|' ORDER BY t::text), '')) FROM {table} t"  # noqa: S608 — names from the catalogue
            ).fetchone()
            assert row is not None
            out[table] = f"{row[0]}:{row[1]}"
    return out


def test_the_document_marks_exactly_the_writes_open_to_read_only_roles(client: TestClient) -> None:
    doc = client.get(f"{API}/openapi.json").json()
    marked = {
        (method.upper(), path)
        for path, ops in doc["paths"].items()
        for method, op in ops.items()
        if method in WRITE_METHODS and READ_ONLY_MAY in op
    }
    assert marked == set(OPEN_TO_READ_ONLY)


def test_every_write_is_refused_to_supervisors_and_analysts(client: TestClient, world: World) -> None:
    ids = _real_ids(client, world)
    doc = client.get(f"{API}/openapi.json").json()
    writes = [
        (method.upper(), path)
        for path, ops in doc["paths"].items()
        for method in ops
        if method in WRITE_METHODS and (method.upper(), path) not in OPEN_TO_READ_ONLY
    ]
    assert len(writes) >= 40  # the whole document, not a part of it
    sessions = {who: bearer(client, who) for who in READ_ONLY_USERS}  # signing in writes; done first
    before = _fingerprint(world)
    answers: dict[tuple[str, str, str], tuple[int, str]] = {}
    for who, headers in sessions.items():
        for method, path in writes:
            r = client.request(method, _fill(path, ids), json={}, headers=headers)
            answers[(who, method, path)] = (r.status_code, error_code(r) if r.status_code >= 400 else "")
        # The lookup sent as POST answers the read-only roles too.
        scan = client.post(f"{API}/codes/resolve", json={"code": cn20(1)}, headers=headers)
        assert scan.status_code == 200, scan.text
    refused = {key: answer for key, answer in answers.items() if answer != (403, "forbidden")}
    assert refused == {}
    assert _fingerprint(world) == before


def test_lot_error_reports_are_filed_by_administrators(client: TestClient, world: World) -> None:
    """README: any unit's administrators report a lot's errors; the read-only roles cannot."""
    lot = build_catalogue(world).lots["hepb"]
    for who, status in (("ba_T1", 201), ("sa_K1", 201), ("sup_P", 403), ("ana_K1", 403)):
        r = client.post(f"{API}/lots/{lot}/error-reports", json={"message": "有效期录错"}, headers=bearer(client, who))
        assert r.status_code == status, (who, r.text)
    with db.connect(world.url) as conn:
        reporters = conn.execute("SELECT reported_by FROM lot_error_reports ORDER BY id").fetchall()
    assert reporters == [(world.users["ba_T1"],), (world.users["sa_K1"],)]
