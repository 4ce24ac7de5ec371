"""Reports and the devices' history read from a real streaming replica (issue #18).

A primary and a physical replica made with ``pg_basebackup -R -X stream`` (tests/replicahelp.py),
the schema migrated on the primary by the project's migrator and the small province of
tests/apihelp.py loaded there; the API runs as the runtime role with ``COLDCHAIN_DATABASE_URL`` on
the primary and ``COLDCHAIN_READ_DATABASE_URL`` on the replica. That an answer came from the
replica is shown, not assumed: with the replica's replay paused, what was just written through the
API (on the primary) is missing from the report, the series and their pages, and the lag header
says how far behind they are; after ``pg_wal_replay_resume()`` it is there and the lag is gone.
Sign-in, the jurisdiction checks and every write stay on the primary; without the read URL
everything reads the primary; a replica that is down is read around; the device page's script
keeps its note in step with each chart it fetches (in Chromium); ``coldchain doctor`` reports the
replica's lag and a read URL that is no replica.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import uvicorn
from apihelp import World, api_client, bearer, build_world, web_session
from browserhelp import browser_page, require_browser, sign_in
from dbhelp import as_runtime
from fastapi.testclient import TestClient
from replicahelp import ReplicaPair, machine_has_replication_tools, pause, replica_pair, resume, wait_replayed

import api.deps
from analytics.report import maths
from api.deps import LAG_HEADER
from coldchain import services
from coldchain.app import create_app
from coldchain.core import db, roles
from coldchain.core.migrate import migrate
from coldchain.core.settings import load_settings
from coldchain.core.terms import current_month, previous_month
from dashboards.reports import NOTE_AFTER

API = "/api/v1"
TEMPLATE = "cc_replica_template"
NOTE = "数据来自只读副本"
PASSWORD = "Repl1ca-pa55-never-shown"

if (_why := machine_has_replication_tools()) is not None:
    pytest.skip(_why, allow_module_level=True)


@pytest.fixture(scope="module")
def pair() -> Iterator[ReplicaPair]:
    with replica_pair() as made:
        # One migrated database to copy for each test (CREATE DATABASE … TEMPLATE is replicated too).
        db.create_database(made.primary.url, TEMPLATE)
        migrate(db.with_database(made.primary.url, TEMPLATE))
        yield made


@dataclass
class Setup:
    pair: ReplicaPair
    world: World
    primary: str  # the owner's URL (a superuser here) of the test's database on the primary
    replica: str  # the same database on the replica, as the superuser (to pause and resume)
    primary_runtime: str
    replica_runtime: str

    def pause(self) -> None:
        pause(self.primary, self.replica)

    def resume(self) -> None:
        resume(self.primary, self.replica)

    def env(self) -> dict[str, str]:
        return {"COLDCHAIN_DATABASE_URL": self.primary_runtime, "COLDCHAIN_READ_DATABASE_URL": self.replica_runtime}


_count = 0


@pytest.fixture
def setup(pair: ReplicaPair) -> Iterator[Setup]:
    global _count
    _count += 1
    name = f"cc_replica_{os.getpid()}_{_count}"
    db.create_database(pair.primary.url, name, template=TEMPLATE)
    primary = db.with_database(pair.primary.url, name)
    world = build_world(primary)
    runtime = as_runtime(primary)  # the login is the cluster's: replicated with everything else
    replica = db.with_database(pair.replica.url, name)
    made = Setup(pair, world, primary, replica, runtime, roles.with_role(replica, roles.DEFAULT_RUNTIME_LOGIN))
    wait_replayed(primary, replica)
    try:
        yield made
    finally:
        with db.connect(replica, autocommit=True) as conn:  # never leave the pair paused
            conn.execute("SELECT pg_wal_replay_resume()")


def _series(client: TestClient, setup: Setup, headers: dict[str, str]) -> Any:
    now = datetime.now(UTC)
    params = {"start": (now - timedelta(hours=2)).isoformat(), "end": (now + timedelta(minutes=1)).isoformat()}
    return client.get(
        f"{API}/compartments/{setup.world.compartments['T1/冷藏']}/series", params=params, headers=headers
    )


def _thermometer(client: TestClient, setup: Setup, headers: dict[str, str], t: float) -> Any:
    ts = datetime.now(UTC) - timedelta(minutes=1)
    body = {"ts": ts.isoformat(), "t": t, "note": "副本测试"}
    comp = setup.world.compartments["T1/冷藏"]
    return client.post(f"{API}/compartments/{comp}/thermometer-readings", json=body, headers=headers)


def _lag(response: Any) -> float:
    assert LAG_HEADER in response.headers, dict(response.headers)
    return float(response.headers[LAG_HEADER])


def _report(client: TestClient, setup: Setup, headers: dict[str, str], month: str | None = None) -> Any:
    params: dict[str, Any] = {"unit_id": setup.world.units["K1"]}
    if month:
        params["month"] = month
    return client.get(f"{API}/reports/monthly", params=params, headers=headers)


def _one(url: str, sql: str, params: tuple[Any, ...] = ()) -> Any:
    with db.connect(url, autocommit=True) as conn:
        row = conn.execute(sql.encode(), params).fetchone()
    assert row is not None
    return row[0]


def test_reports_and_history_come_from_the_replica_with_its_lag(setup: Setup) -> None:
    w = setup.world
    with api_client(w.url, setup.env()) as client:
        admin = bearer(client, "sa_K1")
        staff = bearer(client, "ba_T1")
        wait_replayed(setup.primary, setup.replica)
        before = _series(client, setup, staff)
        assert before.status_code == 200, before.text
        assert _lag(before) < NOTE_AFTER and before.json()["thermometer"] == []
        report = _report(client, setup, admin)
        assert report.status_code == 200, report.text
        assert report.json()["unit"]["name"] == "雁塔区疾病预防控制中心" and _lag(report) < NOTE_AFTER

        setup.pause()
        # Writes go to the primary, and so do sign-in and the reads that follow a write.
        written = _thermometer(client, setup, staff, 3.9)
        assert written.status_code == 201, written.text
        unit = client.get(f"{API}/units/{w.units['K1']}", headers=admin).json()
        renamed = client.patch(
            f"{API}/units/{w.units['K1']}",
            json={"version": unit["version"], "name": "雁塔区疾控（更名）"},
            headers=admin,
        )
        assert renamed.status_code == 200, renamed.text
        listed = client.get(f"{API}/compartments/{w.compartments['T1/冷藏']}/thermometer-readings", headers=staff)
        assert [r["thermometer_t"] for r in listed.json()] == [3.9]
        assert _one(setup.primary, "SELECT count(*) FROM thermometer_readings") == 1
        assert _one(setup.replica, "SELECT count(*) FROM thermometer_readings") == 0  # paused: not yet there
        # A probe reading stored meanwhile (as the ingester would) is on the primary only.
        probe = w.probes["108601"]
        with db.connect(setup.primary) as conn:
            conn.execute("INSERT INTO probe_readings (probe_id, ts, t) VALUES (%s, now(), 7.7)", (probe,))
            conn.commit()
        fresh = bearer(client, "ba_T1")  # a session the replica has not seen: checked on the primary
        time.sleep(NOTE_AFTER + 1)

        stale = _series(client, setup, fresh)
        assert stale.status_code == 200, stale.text
        assert stale.json()["thermometer"] == []  # from the replica, where the reading is not yet
        assert _lag(stale) >= NOTE_AFTER + 1
        raw = client.get(f"{API}/probes/{probe}/readings", headers=fresh)
        assert raw.status_code == 200 and 7.7 not in [r["t"] for r in raw.json()] and _lag(raw) >= NOTE_AFTER + 1
        old = _report(client, setup, admin)
        assert old.json()["unit"]["name"] == "雁塔区疾病预防控制中心" and _lag(old) >= NOTE_AFTER + 1
        xlsx = client.get(f"{API}/reports/monthly.xlsx", params={"unit_id": w.units["K1"]}, headers=admin)
        assert xlsx.status_code == 200 and _lag(xlsx) >= NOTE_AFTER + 1
        # The live board is not moved: it reads the primary, with no lag header.
        board = client.get(f"{API}/board", headers=admin)
        assert board.status_code == 200 and LAG_HEADER not in board.headers

        # The pages say it, in Chinese, beside the same stale figures.
        web_session(client, "sa_K1")
        page = client.get("/reports/monthly", params={"unit_id": w.units["K1"]})
        assert page.status_code == 200 and _lag(page) >= NOTE_AFTER + 1
        assert NOTE in page.text and "秒前" in page.text
        # The report (its heading) is the replica's; the unit picker, like every check, the primary's.
        assert "月度冷链报告 · 雁塔区疾病预防控制中心 ·" in page.text and ">雁塔区疾控（更名）</option>" in page.text
        device = client.get(f"/devices/{w.equipment['T1']}")
        assert device.status_code == 200 and NOTE in device.text and _lag(device) >= NOTE_AFTER + 1

        setup.resume()
        caught_up = _series(client, setup, staff)
        assert [r["t"] for r in caught_up.json()["thermometer"]] == [3.9]
        assert _lag(caught_up) < NOTE_AFTER
        raw = client.get(f"{API}/probes/{probe}/readings", headers=staff)
        assert raw.json()[0]["t"] == 7.7 and _lag(raw) < NOTE_AFTER
        new = _report(client, setup, admin)
        assert new.json()["unit"]["name"] == "雁塔区疾控（更名）" and _lag(new) < NOTE_AFTER
        page = client.get("/reports/monthly", params={"unit_id": w.units["K1"]})
        assert "月度冷链报告 · 雁塔区疾控（更名） ·" in page.text and NOTE not in page.text


def test_a_final_months_report_is_kept_on_the_primary_then_read_from_the_replica(setup: Setup) -> None:
    now = datetime.now(UTC)
    month = previous_month(previous_month(current_month(now)))  # final whatever today is
    assert maths.month_period(month, now).keepable(now)
    label = f"{month:%Y-%m}"
    with api_client(setup.world.url, setup.env()) as client:
        admin = bearer(client, "sa_K1")
        setup.pause()
        first = _report(client, setup, admin, label)
        assert first.status_code == 200, first.text
        assert first.json()["kept"] is True
        assert LAG_HEADER not in first.headers  # generated and kept on the primary, and answered from there
        kept = "SELECT count(*) FROM monthly_reports WHERE unit_id = %s AND month = %s"
        assert _one(setup.primary, kept, (setup.world.units["K1"], month)) == 1
        assert _one(setup.replica, kept, (setup.world.units["K1"], month)) == 0
        again = _report(client, setup, admin, label)  # the replica still has none: the primary's is served
        assert again.json()["content_sha256"] == first.json()["content_sha256"] and LAG_HEADER not in again.headers

        setup.resume()
        served = _report(client, setup, admin, label)
        assert served.status_code == 200 and _lag(served) < NOTE_AFTER  # from the replica now
        assert served.json()["content_sha256"] == first.json()["content_sha256"]


def test_without_a_read_url_everything_reads_the_primary(setup: Setup) -> None:
    w = setup.world
    with api_client(w.url, {"COLDCHAIN_DATABASE_URL": setup.primary_runtime}) as client:
        admin = bearer(client, "sa_K1")
        staff = bearer(client, "ba_T1")
        setup.pause()  # a replica that is behind: unused, so nothing is missing
        assert _thermometer(client, setup, staff, 4.1).status_code == 201
        series = _series(client, setup, staff)
        assert [r["t"] for r in series.json()["thermometer"]] == [4.1] and LAG_HEADER not in series.headers
        unit = client.get(f"{API}/units/{w.units['K1']}", headers=admin).json()
        client.patch(
            f"{API}/units/{w.units['K1']}", json={"version": unit["version"], "name": "雁塔区（主库）"}, headers=admin
        )
        report = _report(client, setup, admin)
        assert report.json()["unit"]["name"] == "雁塔区（主库）" and LAG_HEADER not in report.headers
        web_session(client, "sa_K1")
        page = client.get("/reports/monthly", params={"unit_id": w.units["K1"]})
        assert "月度冷链报告 · 雁塔区（主库） ·" in page.text
        assert NOTE not in page.text and LAG_HEADER not in page.headers


def test_a_replica_that_is_down_is_read_around_and_used_again_when_back(
    setup: Setup, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(api.deps, "READ_WAIT", 1.0)  # the wait before reading the primary instead
    with api_client(setup.world.url, setup.env()) as client:
        staff = bearer(client, "ba_T1")
        assert _lag(_series(client, setup, staff)) < NOTE_AFTER
        setup.pair.stop_replica()
        try:
            assert _thermometer(client, setup, staff, 4.4).status_code == 201
            around = _series(client, setup, staff)
            assert around.status_code == 200, around.text
            assert [r["t"] for r in around.json()["thermometer"]] == [4.4] and LAG_HEADER not in around.headers
        finally:
            setup.pair.start_replica()
        wait_replayed(setup.primary, setup.replica)
        deadline = time.monotonic() + 30
        while LAG_HEADER not in (back := _series(client, setup, staff)).headers:  # the pool reconnects
            assert time.monotonic() < deadline, "副本恢复后 30 秒内仍未改回从副本读取"
            time.sleep(0.5)
        assert [r["t"] for r in back.json()["thermometer"]] == [4.4]


@contextlib.contextmanager
def _live_server(url: str, env: dict[str, str]) -> Iterator[str]:
    """The whole app with these settings on 127.0.0.1 (apihelp.live_server takes no settings)."""
    app = create_app(load_settings(env), as_runtime(url), pool_size=4)
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=services.free_port(), log_level="warning", lifespan="on")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        assert time.monotonic() < deadline and thread.is_alive(), "uvicorn did not start"
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{server.config.port}"
    finally:
        server.should_exit = True
        thread.join(10)


def test_the_device_page_in_a_browser_notes_the_lag_and_follows_each_fetch(setup: Setup) -> None:
    """The note the page comes with, and the one its script keeps up from each chart's lag header."""
    require_browser()
    setup.pause()
    with db.connect(setup.primary, autocommit=True) as conn:  # WAL the paused replica has not applied
        conn.execute("UPDATE units SET address = '副本测试' WHERE code = '6101130000'")
    time.sleep(NOTE_AFTER + 1)
    with _live_server(setup.world.url, setup.env()) as base, browser_page(base) as (page, console):
        sign_in(page, "ba_K1", f"/devices/{setup.world.equipment['T1']}")
        page.wait_for_selector("body[data-ready='1']")
        assert NOTE in page.inner_text("#replica-note") and page.is_visible("#replica-note")
        with page.expect_response(lambda r: "/series?" in r.url) as fetched:
            page.click("#ranges button[data-range='7d']")
        assert float(fetched.value.headers[LAG_HEADER.lower()]) >= NOTE_AFTER
        page.wait_for_function("Number(document.body.dataset.loads || 0) >= 2")  # both compartments
        assert page.is_visible("#replica-note") and "秒前" in page.inner_text("#replica-note")

        setup.resume()
        with page.expect_response(lambda r: "/series?" in r.url) as fetched:
            page.click("#ranges button[data-range='24h']")
        assert float(fetched.value.headers[LAG_HEADER.lower()]) < NOTE_AFTER
        page.wait_for_function("Number(document.body.dataset.loads || 0) >= 4")
        assert page.is_hidden("#replica-note")
        assert console.problems == [], console.problems


# ---------------------------------------------------------------------------------------------
# coldchain doctor


def _doctor(env: dict[str, str]) -> dict[str, Any]:
    """The real command (``--json``), its read-replica verdict; no password anywhere in the output."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("COLDCHAIN_")}
    proc = subprocess.run(
        [sys.executable, "-m", "coldchain.cli", "doctor", "--json"],
        env={**clean, **env},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        cwd=Path(__file__).parents[2],
    )
    assert "Traceback" not in proc.stdout + proc.stderr, proc.stderr
    assert PASSWORD not in proc.stdout + proc.stderr
    checks = {c["key"]: c for c in json.loads(proc.stdout)["checks"]}
    return dict(checks["read_database"])


def _with_password(url: str) -> str:
    """The runtime login's URL with a password (the test servers trust local connections, so it
    connects all the same, and the password must still never be printed)."""
    return roles.with_role(url, roles.DEFAULT_RUNTIME_LOGIN, PASSWORD)


def test_doctor_reports_the_replicas_lag_and_a_paused_replay(setup: Setup) -> None:
    env = {
        "COLDCHAIN_DATABASE_URL": _with_password(setup.primary),
        "COLDCHAIN_READ_DATABASE_URL": _with_password(setup.replica),
    }
    healthy = _doctor(env)
    assert healthy["status"] == "ok", healthy
    assert "主库的流复制副本" in healthy["message"] and "落后" in healthy["message"]

    setup.pause()
    with db.connect(setup.primary, autocommit=True) as conn:
        conn.execute("UPDATE units SET address = '副本测试' WHERE code = '6101130000'")
    time.sleep(2)
    behind = _doctor(env)
    assert behind["status"] == "warn", behind
    seconds = float(behind["message"].split("落后 ", 1)[1].split(" 秒", 1)[0])
    assert seconds >= 2 and "WAL 回放已暂停" in behind["message"]
    assert "pg_wal_replay_resume()" in behind["fix"]
    setup.resume()
    assert _doctor(env)["status"] == "ok"


def test_doctor_fails_a_read_url_that_is_no_replica(setup: Setup, db_url: str) -> None:
    primary = _with_password(setup.primary)
    itself = _doctor({"COLDCHAIN_DATABASE_URL": primary, "COLDCHAIN_READ_DATABASE_URL": primary})
    assert itself["status"] == "warn" and "就是主库本身" in itself["message"], itself

    as_runtime(db_url)  # a database of the session's server: another cluster, and no replica
    elsewhere = _doctor({"COLDCHAIN_DATABASE_URL": primary, "COLDCHAIN_READ_DATABASE_URL": _with_password(db_url)})
    assert elsewhere["status"] == "fail", elsewhere
    assert "不是只读副本" in elsewhere["message"] and "pg_is_in_recovery()" in elsewhere["message"]
    assert "pg_basebackup -R" in elsewhere["fix"]

    closed = _doctor(
        {
            "COLDCHAIN_DATABASE_URL": primary,
            "COLDCHAIN_READ_DATABASE_URL": f"postgresql://coldchain_app:{PASSWORD}@127.0.0.1:1/coldchain",
        }
    )
    assert closed["status"] == "fail" and "连接被拒绝" in closed["message"]
    assert "COLDCHAIN_READ_DATABASE_URL" in closed["fix"]


def test_pages_note_only_a_lag_worth_mentioning() -> None:
    from api.deps import ReplicaRead
    from dashboards.reports import replica_note

    assert replica_note(None) is None
    assert replica_note(ReplicaRead(0.0)) is None and replica_note(ReplicaRead(NOTE_AFTER - 0.1)) is None
    assert replica_note(ReplicaRead(12.4)) == "数据来自只读副本，约 12 秒前；刚录入的内容可能尚未显示"
    assert "约 5 分钟前" in (replica_note(ReplicaRead(300)) or "")
    assert "未知" in (replica_note(ReplicaRead(None)) or "")
