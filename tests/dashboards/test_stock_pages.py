"""Stock pages: the by-level pivot (pure) and the page over a real ledger."""

from __future__ import annotations

from datetime import date, datetime, timedelta

from apihelp import World, api_client, bearer, web_session
from ledgerhelp import accept, build_catalogue, receive, ship

from coldchain.core import db
from coldchain.core.terms import BEIJING
from dashboards.stock import by_level


def _beijing_today() -> date:
    """The page counts days in Beijing, whatever the machine's zone (between 16:00 and 24:00 UTC
    Beijing is already on the next day)."""
    return datetime.now(BEIJING).date()


def test_by_level_pivots_doses_and_totals() -> None:
    rows = [
        {"level": "township", "vaccine_name": "乙肝", "spec": "10μg", "vials": 5, "doses": 5},
        {"level": "province", "vaccine_name": "乙肝", "spec": "10μg", "vials": 70, "doses": 70},
        {"level": "province", "vaccine_name": "脊灰", "spec": "10人份", "vials": 3, "doses": 30},
    ]
    frame = by_level(rows)
    assert frame.columns == ["疫苗", "规格", "省级", "接种单位", "合计"]  # no city or county stock: no column
    assert frame.rows() == [("乙肝", "10μg", 70, 5, 75), ("脊灰", "10人份", 30, 0, 30)]
    assert by_level([]).columns == ["疫苗", "规格", "合计"]


def test_stock_page_shows_levels_expiry_and_findings(world: World) -> None:
    cat = build_catalogue(world)
    soon = _beijing_today() + timedelta(days=40)
    with db.connect(world.url) as conn:
        row = conn.execute(
            """INSERT INTO lots (spec_id, lot_no, production_date, expiry_date, release_no, unit_id, entered_by)
               VALUES (%s, 'NEAR0001', '2024-01-01', %s, 'SJNEAR', %s, %s) RETURNING id""",
            (cat.specs["hepb"], soon, world.units["P"], world.users["ba_P"]),
        ).fetchone()
        conn.commit()
    assert row
    near_lot = row[0]
    with api_client(world.url) as client:
        p = bearer(client, "ba_P")
        receive(client, p, cat.lots["hepb"], 100)
        receive(client, p, near_lot, 20)
        transfer = ship(client, p, world.units["C1"], cat.lots["hepb"], 30)
        accept(client, bearer(client, "ba_C1"), transfer["transfer"]["id"], 30)

        web_session(client, "ba_P")
        page = client.get("/stock")
        assert page.status_code == 200, page.text
        html = page.text
        by_level_table = html[html.index('id="by-level"') : html.index('id="near-expiry"')]
        # Province 70 + 20 doses of 乙肝, city 30; one dose per vial.
        assert "省级" in by_level_table and "市级" in by_level_table
        assert ">90<" in by_level_table and ">30<" in by_level_table and ">120<" in by_level_table
        near_table = html[html.index('id="near-expiry"') : html.index('id="stock-findings"')]
        assert "NEAR0001" in near_table and ">40<" in near_table and "202605A01" not in near_table
        findings = html[html.index('id="stock-findings"') : html.index('id="wastage"')]
        # The province issued 30 in three months (10 a month) and holds 90: overstock; the city has no outflow.
        assert "积压" in findings and "无出库（闲置）" in findings and ">9.0<" in findings
        assert "本月没有使用或接种记录" in html

    with api_client(world.url) as client:
        web_session(client, "ba_K1")
        outside = client.get("/stock", params={"unit_id": world.units["C1"]})
        assert outside.status_code == 404 and "不在您的辖区内" in outside.text
        assert client.get("/stock", params={"month": "2026-13"}).status_code == 422


def test_stock_page_lists_every_expiring_balance_however_many(world: World) -> None:
    """The near-expiry list is filtered in SQL over the unit's subtree, not a page of the API list
    filtered afterwards: one more balance than the API's largest page (5 000) is still all listed."""
    cat = build_catalogue(world)
    soon = _beijing_today() + timedelta(days=30)
    many = 5001
    with db.connect(world.url) as conn:
        conn.execute(
            """INSERT INTO lots (spec_id, lot_no, production_date, expiry_date, release_no, unit_id, entered_by)
               SELECT %s, 'CAP' || lpad(g::text, 5, '0'), '2024-01-01', %s, 'SJCAP' || g, %s, %s
               FROM generate_series(1, %s) g""",
            (cat.specs["hepb"], soon, world.units["P"], world.users["ba_P"], many),
        )
        conn.execute(
            """SELECT cc_post_movement(p_kind => 'receipt', p_unit => %s, p_lot => id, p_quantity => 2,
                                       p_occurred => now(), p_user => %s, p_supplier => '配送中心')
               FROM lots WHERE lot_no LIKE 'CAP%%' ORDER BY id""",
            (world.units["P"], world.users["ba_P"]),
        )
        expected = conn.execute(
            """SELECT count(*), sum(b.on_hand) FROM stock_balances b JOIN lots l ON l.id = b.lot_id
               WHERE b.on_hand > 0 AND l.expiry_date < %s""",
            (_beijing_today() + timedelta(days=90),),
        ).fetchone()
        conn.commit()
    assert expected == (many, 2 * many)
    with api_client(world.url) as client:
        web_session(client, "ba_P")
        page = client.get("/stock")
        assert page.status_code == 200, page.text
        near_table = page.text[page.text.index('id="near-expiry"') : page.text.index('id="stock-findings"')]
        assert near_table.count("<td>CAP") == many
