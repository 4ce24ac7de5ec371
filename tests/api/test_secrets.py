"""No secret leaves the places that need it (issue #15): a unit's webhook HMAC secret, the key in
a WeCom robot's URL (its whole secret), WeChat's account secret and access token, the link
secret. Distinctive values are planted through the API and the settings, the flows that touch
them are driven — routes saved, read back, saved back and changed; notifications delivered to
fakes successfully and failing (HTTP 500, connection refused); a refused save — and then every
place a secret could surface is searched: audit_log rows (SQL), every answer of the API and the
alarm page, the log records, the error columns of the outbox and the alarm history, the
settings' repr. And the rows an older database logged before migration 0011 are redacted by it."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from alarmhelp import add_readings, alarm_world, one_pass, probe_of, rows, set_params, utcnow
from apihelp import World, api_client, bearer, web_session
from fakewechat import ACCESS_TOKEN, FakeWechat
from fakewechat import SECRET as WECHAT_SECRET
from fakewecom import FakeWecom
from fastapi.testclient import TestClient

from alarms.delivery import deliver
from alarms.engine import evaluate_compartments
from coldchain import services
from coldchain.core import db
from coldchain.core.migrate import discover, migrate
from coldchain.core.settings import load_settings

ROBOT_KEY = "robotkey-PLANTED-5c1e9b"
DEAD_ROBOT_KEY = "deadkey-PLANTED-77aa01"
FALLBACK_KEY = "fallbackkey-PLANTED-3f2d"
WEBHOOK_SECRET = "hmac-PLANTED-8e4c2a9d7b"
NEW_WEBHOOK_SECRET = "hmac-PLANTED-new-0f9e8d7c"
HOOK_TOKEN = "hooktoken-PLANTED-1a2b"
LINK_SECRET = "linksecret-PLANTED-c0ffee"
PLANTED = (
    ROBOT_KEY,
    DEAD_ROBOT_KEY,
    FALLBACK_KEY,
    WEBHOOK_SECRET,
    NEW_WEBHOOK_SECRET,
    HOOK_TOKEN,
    LINK_SECRET,
    WECHAT_SECRET,
    ACCESS_TOKEN,
)


@pytest.fixture
def fakes() -> Iterator[tuple[FakeWecom, FakeWechat]]:
    wecom, wechat = FakeWecom(), FakeWechat()
    yield wecom, wechat
    wecom.close()
    wechat.close()


def _breach(world: World, compartment: str, t: float) -> None:
    with db.connect(world.url) as conn:
        comp = world.compartments[compartment]
        set_params(conn, comp, delay=0)
        add_readings(conn, probe_of(conn, comp), [(utcnow(), t)])


def _leaks(texts: dict[str, str]) -> dict[str, list[str]]:
    found = {where: [p for p in PLANTED if p in text] for where, text in texts.items()}
    return {where: planted for where, planted in found.items() if planted}


def test_planted_secrets_appear_nowhere(
    db_url: str, fakes: tuple[FakeWecom, FakeWechat], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    wecom, wechat = fakes
    world = alarm_world(db_url)
    port = wecom.server.server_address[1]
    dead = services.free_port()
    env = {
        **wechat.env,  # WeChat's secret, and the loopback escape the fakes need
        "COLDCHAIN_WECHAT_TEMPLATE_ID": "tmpl-cold-chain-alarm",
        "COLDCHAIN_LINK_SECRET": LINK_SECRET,
        "COLDCHAIN_WECOM_WEBHOOK_URL": wecom.url(FALLBACK_KEY),
    }
    settings = load_settings(env)
    seen: dict[str, str] = {"settings repr": repr(settings)}
    robot = wecom.url(ROBOT_KEY)
    dead_robot = f"http://127.0.0.1:{dead}/cgi-bin/webhook/send?key={DEAD_ROBOT_KEY}"
    hook = f"http://127.0.0.1:{port}/hook?token={HOOK_TOKEN}"

    with api_client(world.url, env) as client:
        k1 = bearer(client, "ba_K1")
        routes = f"/api/v1/units/{world.units['T1']}/notification-routes"

        def keep(name: str, response: Any) -> Any:
            seen[name] = response.text
            return response

        saved = keep("PUT routes", client.put(routes, json=_routes(robot, dead_robot, hook), headers=k1))
        assert saved.status_code == 200, saved.text
        shown = keep("GET routes", client.get(routes, headers=k1)).json()
        # Saved back exactly as read (masked URLs, no secret): everything is kept.
        back = [{k: r[k] for k in ("level", "channel", "url")} for r in shown]
        kept = keep("PUT masked back", client.put(routes, json=back, headers=k1))
        assert kept.status_code == 200, kept.text
        changed = [r | {"secret": NEW_WEBHOOK_SECRET} if r["channel"] == "webhook" else r for r in back]
        assert keep("PUT new secret", client.put(routes, json=changed, headers=k1)).status_code == 200
        for name, body in (
            ("PUT private address", [{"level": 1, "channel": "wecom", "url": f"https://10.0.0.9/x?key={ROBOT_KEY}"}]),
            ("PUT short secret", [{"level": 1, "channel": "webhook", "url": hook, "secret": HOOK_TOKEN[:10]}]),
            ("PUT unknown masked", [{"level": 2, "channel": "wecom", "url": robot.replace(ROBOT_KEY, "***") + "&x=1"}]),
        ):
            assert keep(name, client.put(routes, json=body, headers=k1)).status_code == 422

        with db.connect(world.url) as conn:
            conn.execute("UPDATE users SET wechat_openid = 'o-ba-T1-000001' WHERE username = 'ba_T1'")
            conn.execute(
                "INSERT INTO unit_responsibles (unit_id, level, user_id) VALUES (%s, 1, %s)",
                (world.units["T1"], world.users["ba_T1"]),
            )
            conn.commit()

        # Delivered: the unit's robot, its webhook, WeChat, and (for T2, which has no routes) the
        # fallback robot; failing: the robot whose port is closed.
        _breach(world, "T1/冷藏", 12.0)
        _breach(world, "T2/冷藏", 12.5)
        with db.connect(world.url) as conn:
            one_pass(conn, settings)
        assert {m.key for m in wecom.messages()} >= {ROBOT_KEY, FALLBACK_KEY, ""}  # "" is the webhook
        assert wechat.templates, "the template channel ran (with WeChat's secret)"
        # Failing: every endpoint down (HTTP 500) and the closed port again.
        wecom.mode = "down"
        _breach(world, "T1/冷冻", -5.0)
        with db.connect(world.url) as conn:
            one_pass(conn, settings)
        # Senders whose errors quote the URL (as httpx's do): stored and logged masked.
        _breach(world, "T3/冷藏", 13.0)  # T3 has no routes: the fallback robot
        with db.connect(world.url) as conn:
            evaluate_compartments(conn, settings)
            conn.commit()
            deliver(conn, settings, post=_quoting(OSError))
            errors = rows(conn, "SELECT last_error FROM notification_outbox WHERE last_error IS NOT NULL")
            assert any("HTTP 500" in e["last_error"] for e in errors), errors
            assert any("Connection" in e["last_error"] for e in errors), errors
            assert any("key=***" in e["last_error"] for e in errors), errors
            # Every destination due again, WeChat's among them (its URL carries the access token).
            conn.execute("UPDATE notification_outbox SET next_attempt_at = now(), sent_at = NULL")
            conn.commit()
            stats = deliver(conn, settings, post=_quoting(KeyError))  # escapes _send: logged by deliver
            assert {e.split("：", 1)[0] for e in stats.errors} == {"wecom", "webhook", "wechat_template"}, stats.errors
            assert any("access_token=***" in e for e in stats.errors), stats.errors
            seen["delivery errors"] = "\n".join(stats.errors)
            seen["outbox errors"] = "\n".join(e["last_error"] for e in errors)
            seen["alarm events"] = "\n".join(
                str(r["details"]) for r in rows(conn, "SELECT details FROM alarm_events WHERE details IS NOT NULL")
            )
            audit = rows(conn, "SELECT entity, op, before::text AS b, after::text AS a FROM audit_log ORDER BY id")
            alarm_ids = [r["id"] for r in rows(conn, "SELECT id FROM alarms ORDER BY id")]
        route_audit = [a for a in audit if a["entity"] == "notification_routes"]
        assert {a["op"] for a in route_audit} == {"INSERT", "DELETE"}
        assert any('"has_secret": true' in (a["a"] or "") for a in route_audit)
        assert any("key=***" in (a["a"] or "") for a in route_audit)
        seen["audit_log"] = "\n".join(f"{a['b']} {a['a']}" for a in audit)

        _read_everything(client, world, alarm_ids, seen)

    for record in caplog.records:
        seen[f"log {record.name} {record.levelname}"] = seen.get(f"log {record.name}", "") + logging.Formatter(
            "%(message)s"
        ).format(record)
    assert _leaks(seen) == {}


def _quoting(kind: type[Exception]) -> Any:
    def post(url: str, body: bytes, headers: Any) -> tuple[int, bytes]:
        raise kind(f"request to {url} failed")

    return post


def _routes(robot: str, dead_robot: str, hook: str) -> list[dict[str, Any]]:
    return [
        {"level": 1, "channel": "wecom", "url": robot},
        {"level": 1, "channel": "wecom", "url": dead_robot},
        {"level": 1, "channel": "webhook", "url": hook, "secret": WEBHOOK_SECRET},
    ]


def _read_everything(client: TestClient, world: World, alarm_ids: list[int], seen: dict[str, str]) -> None:
    """Every GET that could show a route, a notification or an audit row, as the people who may."""
    for who in ("sa_K1", "sa_P", "sup_P"):
        r = client.get("/api/v1/audit", params={"limit": 1000}, headers=bearer(client, who))
        assert r.status_code == 200, r.text
        seen[f"GET /audit as {who}"] = r.text
    assert any(row["entity"] == "notification_routes" for row in r.json())
    k1 = bearer(client, "ba_K1")
    for alarm_id in alarm_ids:
        seen[f"GET /alarms/{alarm_id}"] = client.get(f"/api/v1/alarms/{alarm_id}", headers=k1).text
    doc = client.get("/api/v1/openapi.json").json()
    province = bearer(client, "sa_P")
    for path, ops in doc["paths"].items():
        if "get" in ops and "{" not in path:
            seen[f"GET {path}"] = client.get(path, headers=province).text
    for unit in ("T1", "T2", "K1"):
        for path in (f"/api/v1/units/{world.units[unit]}/notification-routes", f"/api/v1/units/{world.units[unit]}"):
            seen[f"GET {path}"] = client.get(path, headers=province).text
    web_session(client, "ba_P")
    for alarm_id in alarm_ids:
        page = client.get(f"/alarms/{alarm_id}")
        assert page.status_code == 200
        seen[f"page /alarms/{alarm_id}"] = page.text


def test_secrets_already_in_the_audit_log_are_redacted_by_the_migration(empty_db: str, tmp_path: Path) -> None:
    """A database that logged routes before migration 0011: upgrading redacts those rows too."""
    for m in discover():
        if m.version < 11:
            (tmp_path / m.path.name).write_bytes(m.path.read_bytes())
    migrate(empty_db, directory=tmp_path)
    with db.connect(empty_db) as conn:
        unit = conn.execute(
            "INSERT INTO units (code, name, level) VALUES ('6100000000', '陕西省疾控', 'province') RETURNING id"
        ).fetchone()
        assert unit is not None
        conn.execute(
            "INSERT INTO notification_routes (unit_id, level, channel, url, secret) VALUES (%s, 1, 'webhook', %s, %s)",
            (unit[0], f"https://hooks.example/alarm?token={HOOK_TOKEN}", WEBHOOK_SECRET),
        )
        conn.commit()
        logged = conn.execute("SELECT after::text FROM audit_log WHERE entity = 'notification_routes'").fetchone()
    assert logged is not None and WEBHOOK_SECRET in logged[0]  # how it was
    migrate(empty_db)
    with db.connect(empty_db) as conn:
        after = conn.execute("SELECT after FROM audit_log WHERE entity = 'notification_routes'").fetchone()
        assert after is not None
        assert after[0]["has_secret"] is True and "secret" not in after[0]
        assert after[0]["url"] == "https://hooks.example/alarm?token=***"
        with pytest.raises(psycopg.errors.RestrictViolation):  # and the log is append-only again
            conn.execute("UPDATE audit_log SET after = NULL")
