"""The two channels besides WeCom robots, end to end over real HTTP: the HMAC-signed JSON webhook
and WeChat template messages with a personal single-use confirmation link (CM15, CM16, DC4)."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from datetime import timedelta
from urllib.parse import parse_qs, urlsplit

import pytest
from apihelp import World, api_client, error_code
from fakewechat import FakeWechat
from fakewecom import FakeWecom
from psycopg.types.json import Jsonb

from alarms.delivery import deliver
from alarms.engine import evaluate_compartments
from alarms.messages import verify_signature
from coldchain.core import db
from coldchain.core.settings import load_settings

SECRET = "webhook-secret-of-the-county"


@pytest.fixture
def wecom() -> Iterator[FakeWecom]:
    fake = FakeWecom()
    yield fake
    fake.close()


def _raise(world: World, site: str = "T1", t: float = 11.5) -> int:
    """A breaching reading on ``site``/冷藏 with a zero-delay rule, as the ingester would write it."""
    comp, probe = world.compartments[f"{site}/冷藏"], world.probes[f"{site[1:]}08601"]
    with db.connect(world.url) as conn:
        conn.execute(
            "INSERT INTO alarm_rule_params (compartment_id, params) VALUES (%s, %s)", (comp, Jsonb({"delay": 0}))
        )
        conn.execute("INSERT INTO probe_readings (probe_id, ts, t) VALUES (%s, now(), %s)", (probe, t))
        conn.execute(
            """INSERT INTO probe_latest (probe_id, ts, t) VALUES (%s, now(), %s)
               ON CONFLICT (probe_id) DO UPDATE SET ts = EXCLUDED.ts, t = EXCLUDED.t, received_at = now()""",
            (probe, t),
        )
        conn.commit()
        row = conn.execute("SELECT id FROM alarms WHERE compartment_id = %s", (comp,)).fetchone()
        assert row is None
    return comp


def test_signed_webhook_carries_the_alarm_and_a_verifiable_signature(world: World, wecom: FakeWecom) -> None:
    hook = wecom.url("county-hook")
    with db.connect(world.url) as conn:
        conn.execute(
            "INSERT INTO notification_routes (unit_id, level, channel, url, secret) VALUES (%s, 1, 'webhook', %s, %s)",
            (world.units["T1"], hook, SECRET),
        )
        conn.commit()
    _raise(world)
    settings = load_settings({"COLDCHAIN_OUTBOUND_ALLOW_INSECURE_LOOPBACK": "true"})  # the fake is on 127.0.0.1
    with db.connect(world.url) as conn:
        assert evaluate_compartments(conn, settings).opened == 1
        deliver(conn, settings)
        sent = conn.execute("SELECT channel, target, sent_at IS NOT NULL FROM notification_outbox").fetchall()
    assert sent == [("webhook", hook, True)]
    (got,) = wecom.messages("county-hook")
    raw = json.dumps(got.body, ensure_ascii=False, sort_keys=True, separators=(",", ":")).encode()
    headers = {k: v for k, v in got.headers.items() if k.lower().startswith("x-coldchain")}
    assert verify_signature(raw, headers, SECRET.encode(), int(time.time()))
    assert not verify_signature(raw, headers, b"another-secret-entirely", int(time.time()))
    assert (got.body["unit_code"], got.body["compartment"], got.body["temperature"], got.body["t_max"]) == (
        "6101130001",
        "冷藏",
        11.5,
        8.0,
    )
    assert got.body["step"] == "open" and got.body["levels"] == [1]


def test_template_message_to_each_responsible_with_a_personal_single_use_link(world: World) -> None:
    wechat = FakeWechat()
    try:
        with db.connect(world.url) as conn:
            conn.execute("UPDATE users SET wechat_openid = 'o-ba-T1-000001' WHERE username = 'ba_T1'")
            conn.execute(
                "INSERT INTO unit_responsibles (unit_id, level, user_id) VALUES (%s, 1, %s)",
                (world.units["T1"], world.users["ba_T1"]),
            )
            conn.commit()
        env = {
            **wechat.env,
            "COLDCHAIN_WECHAT_TEMPLATE_ID": "tmpl-cold-chain-alarm",
            "COLDCHAIN_PUBLIC_URL": "https://coldchain.example.org",
        }
        settings = load_settings(env)
        _raise(world)
        with db.connect(world.url) as conn:
            assert evaluate_compartments(conn, settings).opened == 1
            deliver(conn, settings)
            targets = conn.execute(
                "SELECT channel, target, sent_at IS NOT NULL FROM notification_outbox ORDER BY channel"
            ).fetchall()
        assert ("wechat_template", "o-ba-T1-000001", True) in targets
        (message,) = wechat.templates
        assert message["touser"] == "o-ba-T1-000001" and message["template_id"] == "tmpl-cold-chain-alarm"
        link = str(message["url"])
        assert link.startswith("https://coldchain.example.org/alarm-confirm?token=")
        token = parse_qs(urlsplit(link).query)["token"][0]
        with api_client(world.url, env) as client:
            # The page the link opens shows the alarm and does not spend the link (previews fetch it).
            for _ in range(2):
                page = client.get(f"/alarm-confirm?token={token}")
                assert page.status_code == 200 and "电子城街道社区卫生服务中心" in page.text
                assert "海尔双温冰箱 / 冷藏" in page.text and "我已到现场，确认报警" in page.text
            assert client.get("/alarm-confirm?token=" + "x" * 43).status_code == 404
            r = client.post("/api/v1/alarm-links/confirm", json={"token": token})
            assert r.status_code == 200, r.text
            assert (r.json()["state"], r.json()["acknowledged_by"]) == ("acknowledged", "ba_T1")
            again = client.post("/api/v1/alarm-links/confirm", json={"token": token})
            assert (again.status_code, error_code(again)) == (401, "link_invalid")
            spent = client.get(f"/alarm-confirm?token={token}")
            assert "此链接已使用过" in spent.text and "我已到现场" not in spent.text
        with db.connect(world.url) as conn:
            ack = conn.execute("SELECT ack_channel, acknowledged_by FROM alarms").fetchone()
            expires = conn.execute("SELECT expires_at - created_at FROM alarm_links").fetchone()
        assert ack == ("wechat", world.users["ba_T1"])
        assert expires == (timedelta(hours=24),)
    finally:
        wechat.close()


def test_a_pass_sends_its_own_notices_first_and_leaves_the_rest_to_the_outbox_job(
    world: World, wecom: FakeWecom
) -> None:
    """The evaluation that raised an alarm delivers ``alarms=`` its own notices at once; another
    alarm's due notice at another robot waits for the outbox job instead of going first."""
    with db.connect(world.url) as conn:
        for site in ("T1", "T2"):
            conn.execute(
                "INSERT INTO notification_routes (unit_id, level, channel, url) VALUES (%s, 1, 'wecom', %s)",
                (world.units[site], wecom.url(f"robot-{site}")),
            )
        conn.commit()
    settings = load_settings({"COLDCHAIN_OUTBOUND_ALLOW_INSECURE_LOOPBACK": "true"})
    _raise(world)  # T1
    with db.connect(world.url) as conn:
        first = evaluate_compartments(conn, settings)
    assert first.opened == 1 and len(first.notified) == 1
    _raise(world, "T2", 12.0)  # a second alarm, at T2: its pass names only it
    with db.connect(world.url) as conn:
        second = evaluate_compartments(conn, settings)
        assert second.opened == 1 and second.notified != first.notified

        assert deliver(conn, settings, alarms=[]).messages == 0  # nothing named, nothing sent
        deliver(conn, settings, alarms=second.notified)
        assert {m.key for m in wecom.messages()} == {"robot-T2"}
        pending = conn.execute("SELECT alarm_id FROM notification_outbox WHERE sent_at IS NULL").fetchall()
        assert pending == [(first.notified[0],)]
        deliver(conn, settings)  # the outbox job
        assert conn.execute("SELECT count(*) FROM notification_outbox WHERE sent_at IS NULL").fetchone() == (0,)
    assert {m.key for m in wecom.messages()} == {"robot-T1", "robot-T2"}
