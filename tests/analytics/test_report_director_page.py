"""The monthly report page on a phone (390 × 844, as site staff open it from WeChat), in headless
Chromium: the page itself does not scroll sideways, wide tables scroll inside their box instead of
squeezing their cells to one character per line, and the per-area chart's labels do not overlap."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from itertools import pairwise

import pytest
from alarmhelp import add_readings
from apihelp import World, live_server
from browserhelp import PHONE, browser_page, require_browser, sign_in

from coldchain.core import db

pytestmark = pytest.mark.timeout(120)

_LABEL_BOXES = """
() => [...document.querySelectorAll('#area-chart .ytick text')].map((e) => {
    const r = e.getBoundingClientRect();
    return [r.left, r.top, r.right, r.bottom, e.textContent];
})
"""


def test_report_page_reads_on_a_phone(world: World) -> None:
    require_browser()
    with db.connect(world.url) as conn:
        add_readings(conn, world.probes["108601"], [(datetime.now(UTC) - timedelta(minutes=5), 9.9)])
    with live_server(world.url) as base, browser_page(base, viewport=PHONE) as (page, console):
        sign_in(page, "ba_P", "/reports/monthly")  # the province: one chart row per city / county
        page.wait_for_selector("body[data-ready='1']")
        width = PHONE[0]
        # Nothing pushes the page wider than the phone: wide tables scroll inside their box.
        assert page.evaluate("document.documentElement.scrollWidth") <= width
        devices = page.locator("#table-devices")
        box = page.evaluate(
            "(() => { const s = document.querySelector('#table-devices').parentElement;"
            " return [s.scrollWidth, s.clientWidth, getComputedStyle(s).overflowX]; })()"
        )
        assert box[0] > box[1] and box[2] == "auto", box
        # A heading keeps its words on one line: one line high, not a column of single characters.
        for label in ("数据完整率", "冷藏平均（℃）", "设备"):
            cell = devices.locator("th", has_text=label).first
            height = cell.evaluate("e => e.getBoundingClientRect().height")
            line = cell.evaluate("e => parseFloat(getComputedStyle(e).lineHeight) || 20")
            assert height < 2 * line + 10, (label, height, line)
        # The chart's area labels: all drawn, inside the phone's width, none overlapping another.
        labels = page.evaluate(_LABEL_BOXES)
        assert len(labels) == 3, labels  # 西安市, 渭南市, 韩城市
        ordered = sorted(labels, key=lambda x: x[1])
        assert [x[4] for x in ordered] == ["西安市", "渭南市", "韩城市"]  # top to bottom, as in the table
        for left, _, right, _, text in labels:
            assert left >= 0 and right <= width, (text, left, right)
        for above, below in pairwise(ordered):
            assert above[3] <= below[1], (above, below)
        assert console.problems == [], console.problems
