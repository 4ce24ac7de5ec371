"""Issue #18, part 2: the page behind a new user's one-time link, ``/setup-password?token=…``.

Opening it shows whose account it is without spending the link; a link that is unknown, used or
expired says so; the rules it shows are the ones the API applies; ``coldchain admin create`` prints
the link; and in a phone-sized Chromium the form refuses two different entries, shows the API's
Chinese refusal of a weak password, and on success sends the person to ``/login``, where the new
password signs them in."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from urllib.parse import urlsplit

import pytest
from apihelp import World, api_client, build_world, live_server
from browserhelp import browser_page, require_browser
from dbhelp import as_runtime

from coldchain.core import db
from dashboards.setup_password import PASSWORD_RULES
from registry.auth import password_problem
from registry.sessions import SETUP_TOKEN_TTL, open_session, peek_setup_token, setup_link

API = "/api/v1"
NEW_PASSWORD = "Xin@Mima2026"
pytestmark = pytest.mark.timeout(180)


def new_user_link(world: World, username: str = "li_xin") -> str:
    """A user as Form 5 or the platform leaves them: no password yet, a one-time set-up token."""
    with db.connect(world.url) as conn:
        row = conn.execute(
            """INSERT INTO users (username, real_name, phone, unit_id, role)
               VALUES (%s, '李新', '13900000001', %s, 'business_admin') RETURNING id""",
            (username, world.units["K1"]),
        ).fetchone()
        assert row is not None
        token = open_session(conn, row[0], "setup", SETUP_TOKEN_TTL, None, None).token
        conn.commit()
    return token


def test_the_page_shows_whose_account_without_spending_the_link(world: World) -> None:
    token = new_user_link(world)
    with api_client(world.url) as client:
        for _ in range(2):  # a chat app's preview, then the person: both see the page
            r = client.get(f"/setup-password?token={token}")
            assert r.status_code == 200, r.text
        html = r.text
        assert "李新" in html and "li_xin" in html and "雁塔区疾病预防控制中心" in html
        assert 'name="new_password"' in html and 'name="confirm"' in html
        assert f"{API}/auth/setup-password" in html
        # The token is in the URL: never cached, never sent on as a referrer.
        assert r.headers["cache-control"] == "no-store" and r.headers["referrer-policy"] == "no-referrer"
        assert "http://" not in html.replace("http://www.w3.org", "") and "https://" not in html  # no CDN
        # The link still works, once.
        body = {"token": token, "new_password": NEW_PASSWORD}
        assert client.post(f"{API}/auth/setup-password", json=body).status_code == 204
        again = client.get(f"/setup-password?token={token}")
        assert again.status_code == 404 and "已使用或已过期" in again.text and "new_password" not in again.text


@pytest.mark.parametrize("token", [None, "", "abc", "x" * 43, "<script>alert(1)</script>" * 2])
def test_a_link_that_is_not_one_says_so(world: World, token: str | None) -> None:
    with api_client(world.url) as client:
        r = client.get("/setup-password", params={} if token is None else {"token": token})
    assert r.status_code == 404 and "链接无效" in r.text and "已使用或已过期" in r.text
    assert 'name="new_password"' not in r.text and "<script" not in r.text  # no form, nothing echoed
    assert not token or token not in r.text


def test_an_expired_link_is_not_shown(world: World) -> None:
    token = new_user_link(world)
    with db.connect(world.url) as conn:
        assert peek_setup_token(conn, token) is not None
        conn.execute(
            """UPDATE auth_sessions SET created_at = now() - interval '73 hours', expires_at = now() - interval '1 hour'
               WHERE kind = 'setup'"""
        )
        conn.commit()
        assert peek_setup_token(conn, token) is None
    with api_client(world.url) as client:
        assert client.get(f"/setup-password?token={token}").status_code == 404


def test_the_rules_shown_are_the_ones_the_api_applies() -> None:
    """Each refusal of registry.auth.password_problem is a rule the page lists."""
    refusals = {
        password_problem("Ab1@", "li_xin"),
        password_problem("A" * 129 + "b1@", "li_xin"),
        password_problem("abcdefgh1", "li_xin"),
        password_problem("Li_Xin@2026", "li_xin"),
    }
    assert None not in refusals and len(refusals) == 4
    shown = "；".join(PASSWORD_RULES)
    for refusal in refusals:
        assert refusal is not None
        words = refusal.removeprefix("密码").removeprefix("须")
        assert words in shown, (refusal, shown)


def test_admin_create_prints_the_page_link(db_url: str) -> None:
    world = build_world(db_url, readings=False)
    person = ["--username", "yanta_new", "--real-name", "王建国", "--phone", "13900000000"]
    proc = subprocess.run(
        [sys.executable, "-m", "coldchain.cli", "admin", "create", "--unit", "6101130000", *person],
        env={
            **os.environ,
            "COLDCHAIN_DATABASE_URL": as_runtime(db_url),
            "COLDCHAIN_PUBLIC_URL": "https://coldchain.example.cn/",
        },
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    token = proc.stdout.strip().rsplit("：", 1)[1]  # the bare token stays last, for API clients
    link = setup_link("https://coldchain.example.cn/", token)
    assert link == f"https://coldchain.example.cn/setup-password?token={token}"
    assert link in proc.stdout
    with api_client(world.url) as client:
        parts = urlsplit(link)
        page = client.get(f"{parts.path}?{parts.query}")
        assert page.status_code == 200 and "王建国" in page.text and "yanta_new" in page.text


def test_on_a_phone_the_form_checks_refuses_and_sends_to_login(world: World) -> None:
    require_browser()
    token = new_user_link(world)
    with live_server(world.url) as base, browser_page(base) as (page, console):
        page.goto(f"/setup-password?token={token}")
        assert page.locator("#real-name").inner_text() == "李新"
        assert "雁塔区疾病预防控制中心" in page.locator("#unit").inner_text()
        for rule in PASSWORD_RULES:
            assert rule in page.locator("#rules").inner_text()
        # Two different entries: refused on the page, nothing sent.
        page.fill("input[name=new_password]", NEW_PASSWORD)
        page.fill("input[name=confirm]", NEW_PASSWORD + "x")
        page.click("button[type=submit]")
        page.wait_for_function("document.getElementById('msg').textContent.includes('两次输入的密码不一致')")
        # A weak password: the API's own Chinese refusal, and the link is not spent.
        page.fill("input[name=new_password]", "abcdefgh1")
        page.fill("input[name=confirm]", "abcdefgh1")
        page.click("button[type=submit]")
        page.wait_for_function("document.getElementById('msg').textContent.includes('至少三类')")
        assert page.locator("button[type=submit]").is_enabled()
        # A good one: on to the login page, where it signs the person in.
        page.fill("input[name=new_password]", NEW_PASSWORD)
        page.fill("input[name=confirm]", NEW_PASSWORD)
        page.click("button[type=submit]")
        page.wait_for_url("**/login")
        page.goto("/login?next=/board")
        page.fill("input[name=username]", "li_xin")
        page.fill("input[name=password]", NEW_PASSWORD)
        page.click("button[type=submit]")
        page.wait_for_url("**/board")
    # The one expected complaint: the browser logs the 422 the weak password was answered with.
    unexpected = [p for p in console.problems if not re.search(r"status of 422", p)]
    assert unexpected == [], console.problems
    assert len(console.problems) == 1, console.problems
