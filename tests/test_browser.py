"""The pages in headless Chromium: they render, draw their charts, raise no script errors, and the
board follows new readings without a reload."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from alarmhelp import add_readings
from apihelp import World
from browserhelp import browser_page, live_server, require_browser, sign_in

from coldchain import db

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
