"""The pages in headless Chromium: they render, draw their charts, raise no script errors, and the
board follows new readings without a reload."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import psycopg
import pytest
from alarmhelp import add_readings
from apihelp import World, live_server
from browserhelp import browser_page, require_browser, sign_in

from alarms.life import new_link
from analytics.aggregates import refresh_aggregates
from coldchain.core import db
from coldchain.core.terms import BEIJING

pytestmark = pytest.mark.timeout(120)


def test_board_renders_and_follows_new_readings(world: World) -> None:
    require_browser()
    comp = world.compartments["T1/冷藏"]
    probe = world.probes["108601"]
    with db.connect(world.url) as conn:
        add_readings(conn, probe, [(datetime.now(UTC) - timedelta(minutes=2), 4.5)])
    with live_server(world.url) as base, browser_page(base) as (page, console):
        sign_in(page, "ba_K1", "/board?every=2")
        page.wait_for_selector("body[data-ready='1']")
        tile = page.locator(f"a.tile[data-compartment='{comp}']")
        assert tile.get_attribute("data-state") == "normal"
        assert "4.5 ℃" in tile.inner_text()
        assert page.locator("a.tile").count() == 2  # T1's two compartments, nothing outside K1

        with db.connect(world.url) as conn:
            add_readings(conn, probe, [(datetime.now(UTC), 9.3)])
        page.wait_for_function(
            f"document.querySelector(\"a.tile[data-compartment='{comp}']\").innerText.includes('9.3 ℃')",
            timeout=15000,
        )
        assert int(page.evaluate("document.body.dataset.updates")) >= 2
        assert console.problems == [], console.problems


def test_wechat_confirmation_button_acknowledges_the_alarm(world: World) -> None:
    """The page behind the link in a WeChat message: one tap, no password; the board then shows
    the compartment as acknowledged."""
    require_browser()
    comp = world.compartments["T1/冷藏"]
    with db.connect(world.url) as conn:
        add_readings(conn, world.probes["108601"], [(datetime.now(UTC) - timedelta(minutes=1), 9.8)])
        row = conn.execute(
            """INSERT INTO alarms (kind, severity, unit_id, equipment_id, compartment_id, condition_since, value)
               VALUES ('high', 'critical', %s, %s, %s, now() - interval '15 minutes', 9.8) RETURNING id""",
            (world.units["T1"], world.equipment["T1"], comp),
        ).fetchone()
        assert row
        conn.commit()
        token = new_link(conn, row[0], world.users["ba_T1"], 1)
        conn.commit()
    with live_server(world.url) as base, browser_page(base) as (page, console):
        page.goto(f"/alarm-confirm?token={token}")
        assert "温度超上限" in page.inner_text("h1")
        page.fill("#comment", "已转移疫苗")
        page.click("#confirm")
        page.wait_for_function("document.getElementById('msg').textContent.includes('已确认')")
        with db.connect(world.url) as conn:
            state = conn.execute(
                "SELECT state, ack_channel, ack_comment FROM alarms WHERE id = %s", (row[0],)
            ).fetchone()
        assert state == ("acknowledged", "wechat", "已转移疫苗")

        sign_in(page, "ba_T1", "/board")
        page.wait_for_selector("body[data-ready='1']")
        assert page.get_attribute(f"a.tile[data-compartment='{comp}']", "data-state") == "acknowledged"
        assert console.problems == [], console.problems


def test_alarm_page_acknowledges_and_closes(world: World) -> None:
    """The page a WeChat group message links to: acknowledge, then — once the temperature is back —
    close with cause, action and vaccine disposition; a sibling county's user cannot open it."""
    require_browser()
    with db.connect(world.url) as conn:
        row = conn.execute(
            """INSERT INTO alarms (kind, severity, unit_id, equipment_id, compartment_id, condition_since, value)
               VALUES ('high', 'critical', %s, %s, %s, now() - interval '40 minutes', 9.1) RETURNING id""",
            (world.units["T1"], world.equipment["T1"], world.compartments["T1/冷藏"]),
        ).fetchone()
        assert row
        conn.commit()
    alarm = row[0]
    with live_server(world.url) as base, browser_page(base) as (page, console):
        sign_in(page, "ba_T1", f"/alarms/{alarm}")
        page.wait_for_selector("body[data-ready='1']")
        assert "温度超上限 · 未处理" in page.inner_text("h1")
        page.fill("#ack-comment", "已到现场")
        page.click("#ack")
        page.wait_for_function("document.querySelector('h1').textContent.includes('已确认')")
        assert page.locator("#close").count() == 0  # still out of range: cannot be closed yet

        with db.connect(world.url) as conn:
            conn.execute("UPDATE alarms SET state = 'resolved', resolved_at = now() WHERE id = %s", (alarm,))
            conn.commit()
        page.reload()
        page.fill("input[name=cause]", "门未关好")
        page.fill("input[name=action]", "关门，复测正常")
        page.fill("input[name=vaccine_disposition]", "未受影响继续使用")
        page.click("#close button[type=submit]")
        page.wait_for_function("document.querySelector('h1').textContent.includes('已关闭')")
        with db.connect(world.url) as conn:
            stored = conn.execute(
                "SELECT ack_comment, closure->>'cause' FROM alarms WHERE id = %s", (alarm,)
            ).fetchone()
        assert stored == ("已到现场", "门未关好")
        assert console.problems == [], console.problems

    with live_server(world.url) as base, browser_page(base) as (page, _):
        sign_in(page, "ba_K2", "/board")
        response = page.goto(f"/alarms/{alarm}")
        assert response is not None and response.status == 404
        assert "报警" in page.inner_text("main")


def test_device_page_draws_30_days_and_zoom_fetches_raw_readings(world: World) -> None:
    """30 days come from the hourly aggregate; zooming into six hours fetches the readings."""
    require_browser()
    comp = world.compartments["T1/冷藏"]
    with db.connect(world.url) as conn:
        conn.execute(
            """INSERT INTO probe_readings (probe_id, ts, t)
               SELECT %s, ts, 5 + 2 * sin(extract(epoch FROM ts) / 7200.0)
               FROM generate_series(now() - interval '30 days', now() - interval '1 hour', interval '5 minutes') ts
               ON CONFLICT DO NOTHING""",
            (world.probes["108601"],),
        )
        conn.commit()
    refresh_aggregates(world.url)
    with live_server(world.url) as base, browser_page(base) as (page, console):
        sign_in(page, "ba_K1", f"/devices/{world.equipment['T1']}?range=30d")
        page.wait_for_selector("body[data-ready='1']")
        traces = page.evaluate(f"document.getElementById('chart-{comp}').data.map((t) => t.x.length)")
        assert traces and max(traces) <= 2000 and max(traces) >= 700  # ~720 hourly buckets

        beijing = datetime.now(UTC).astimezone(BEIJING)
        lo = (beijing - timedelta(days=3)).strftime("%Y-%m-%d %H:%M")
        hi = (beijing - timedelta(days=3) + timedelta(hours=6)).strftime("%Y-%m-%d %H:%M")
        with page.expect_response(lambda r: f"/compartments/{comp}/series?" in r.url) as finer:
            page.evaluate(
                f"Plotly.relayout(document.getElementById('chart-{comp}'), {{'xaxis.range': ['{lo}', '{hi}']}})"
            )
        body = finer.value.json()
        assert body["source"] == "raw" and 70 <= body["total"] <= 74  # six hours at 5 minutes
        page.wait_for_function("Number(document.body.dataset.loads || 0) >= 1")
        assert console.problems == [], console.problems


def test_monthly_report_page_draws_its_chart(world: World) -> None:
    """A county's report for this month: the share-of-problem-devices chart draws, the XLSX link is
    there, and the print stylesheet hides the navigation."""
    require_browser()
    with db.connect(world.url) as conn:
        add_readings(conn, world.probes["108601"], [(datetime.now(UTC) - timedelta(minutes=5), 9.9)])
    with live_server(world.url) as base, browser_page(base) as (page, console):
        sign_in(page, "ba_C1", "/reports/monthly")
        page.wait_for_selector("body[data-ready='1']")
        assert page.evaluate("document.querySelectorAll('#area-chart .main-svg').length") >= 1
        assert page.locator("#xlsx-link").count() == 1
        page.emulate_media(media="print")
        assert page.evaluate("getComputedStyle(document.querySelector('header.top')).display") == "none"
        assert console.problems == [], console.problems


def _raise(conn: psycopg.Connection, world: World, zone: str, value: float) -> int:
    """An alarm nobody has acknowledged yet on T1's ``zone``, as the engine opens it."""
    row = conn.execute(
        """INSERT INTO alarms (kind, severity, unit_id, equipment_id, compartment_id, condition_since, value,
                               t_min, t_max)
           VALUES ('high', 'major', %s, %s, %s, now() - interval '25 minutes', %s, %s, %s) RETURNING id""",
        (
            world.units["T1"],
            world.equipment["T1"],
            world.compartments[f"T1/{zone}"],
            value,
            2.0 if zone == "冷藏" else None,
            8.0 if zone == "冷藏" else -15.0,
        ),
    ).fetchone()
    assert row
    conn.commit()
    return int(row[0])


def test_from_the_red_tile_to_the_alarm_and_the_badge_falls(world: World) -> None:
    """On a phone: the board's red tile says since when, how long and the peak, and chimes when a
    new alarm appears (sound switched on with a tap); the tile opens the alarm, acknowledging it
    takes one off the navigation's count, and the inbox acknowledges the other."""
    require_browser()
    now = datetime.now(UTC)
    with db.connect(world.url) as conn:
        add_readings(conn, world.probes["108601"], [(now - timedelta(seconds=20), 9.8)])
        add_readings(conn, world.probes["108604"], [(now - timedelta(minutes=3), -20.0)])
        first = _raise(conn, world, "冷藏", 10.4)
    with live_server(world.url) as base, browser_page(base, viewport=(390, 844)) as (page, console):
        sign_in(page, "ba_K1", "/board?every=2")
        page.wait_for_selector("body[data-ready='1']")
        assert page.inner_text("#alarm-badge") == "1"
        tile = page.locator(f"a.tile[data-alarm='{first}']")
        assert tile.get_attribute("href") == f"/alarms/{first}" and tile.get_attribute("data-state") == "alarm"
        text = tile.inner_text()
        assert "刚刚" in text and "已持续 25 分钟" in text and "峰值 10.4 ℃" in text, text
        color = tile.locator(".t").evaluate("e => getComputedStyle(e).color")
        assert color == "rgb(192, 57, 43)"  # out of range: red
        calm = page.locator(f"a.tile[data-compartment='{world.compartments['T1/冷冻']}'] .t")
        assert calm.evaluate("e => getComputedStyle(e).color") == "rgb(26, 127, 55)"

        page.click("#sound")
        assert page.get_attribute("#sound", "aria-pressed") == "true"
        assert page.evaluate("localStorage.getItem('coldchain.board.sound')") == "on"
        assert page.evaluate("document.body.dataset.chimes || '0'") == "0"  # alarms already there are not news
        with db.connect(world.url) as conn:
            second = _raise(conn, world, "冷冻", -9.0)
        page.wait_for_function("document.body.dataset.chimes === '1'", timeout=15000)
        page.wait_for_selector(f"a.tile[data-alarm='{second}']")

        tile.click()
        page.wait_for_url(f"**/alarms/{first}")
        page.wait_for_selector("body[data-ready='1']")
        assert page.inner_text("#alarm-badge") == "2"
        page.click("#ack")
        page.wait_for_function("document.querySelector('h1').textContent.includes('已确认')")
        assert page.inner_text("#alarm-badge") == "1"
        assert "测试ba_K1" in page.inner_text("#ack-by")

        page.click("#nav-alarms")
        page.wait_for_url("**/alarms")
        page.wait_for_selector("body[data-ready='1']")
        assert page.evaluate("document.documentElement.scrollWidth") <= 390  # nothing wider than the phone
        assert page.locator("li.alarm").count() == 2
        page.click(f"li.alarm[data-id='{second}'] button.ack")
        page.wait_for_function(
            f"document.querySelector(\"li.alarm[data-id='{second}']\").dataset.state === 'acknowledged'"
        )
        assert page.locator("#alarm-badge").count() == 0  # nothing left to acknowledge

        with db.connect(world.url) as conn:  # back in range: the engine resolves it
            conn.execute("UPDATE alarms SET state = 'resolved', resolved_at = now() WHERE id = %s", (second,))
            conn.commit()
        page.click("nav.tabs a[data-tab='resolved']")
        page.wait_for_selector(f"li.alarm[data-id='{second}'][data-state='resolved']")
        page.click(f"li.alarm[data-id='{second}'] summary")
        row = f"li.alarm[data-id='{second}'] form.close"
        page.fill(f"{row} input[name=cause]", "门未关好")
        page.fill(f"{row} input[name=action]", "关门，复测正常")
        page.fill(f"{row} input[name=vaccine_disposition]", "未受影响继续使用")
        page.click(f"{row} button[type=submit]")
        page.wait_for_selector("#empty")  # closed: gone from the resolved tab
        with db.connect(world.url) as conn:
            closed = conn.execute("SELECT state, closure->>'cause' FROM alarms WHERE id = %s", (second,)).fetchone()
        assert closed == ("closed", "门未关好")

        page.goto(f"/devices/{world.equipment['T1']}")
        page.wait_for_selector("body[data-ready='1']")
        assert page.locator(f"ul.events a.alarm-link[href='/alarms/{first}']").count() == 1
        assert console.problems == [], console.problems
