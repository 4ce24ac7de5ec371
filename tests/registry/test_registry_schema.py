"""Registry invariants that the schema itself enforces, whatever code writes to it."""

from __future__ import annotations

from collections.abc import Iterator

import psycopg
import pytest

from coldchain.core import db


@pytest.fixture
def conn(db_url: str) -> Iterator[psycopg.Connection]:
    with db.connect(db_url, autocommit=True) as c:
        yield c


def _unit(conn: psycopg.Connection, code: str, name: str, level: str, parent: int | None) -> int:
    row = conn.execute(
        "INSERT INTO units (code, name, level, parent_id) VALUES (%s, %s, %s, %s) RETURNING id",
        (code, name, level, parent),
    ).fetchone()
    assert row is not None
    return int(row[0])


@pytest.fixture
def tree(conn: psycopg.Connection) -> dict[str, int]:
    p = _unit(conn, "6100000000", "陕西省疾控", "province", None)
    xa = _unit(conn, "6101000000", "西安市疾控", "city", p)
    yt = _unit(conn, "6101130000", "雁塔区疾控", "county", xa)
    site = _unit(conn, "6101130001", "电子城街道社区卫生服务中心", "township", yt)
    wn = _unit(conn, "6105000000", "渭南市疾控", "city", p)
    # 韩城市 reports straight to the province although its code sits under 渭南 (6105…).
    hc = _unit(conn, "6105810000", "韩城市疾控", "county", p)
    hc_site = _unit(conn, "6105810001", "龙门镇卫生院", "township", hc)
    return {"province": p, "xian": xa, "yanta": yt, "site": site, "weinan": wn, "hancheng": hc, "hc_site": hc_site}


def _descendants(conn: psycopg.Connection, unit: int) -> set[int]:
    rows = conn.execute("SELECT descendant_id FROM unit_tree WHERE ancestor_id = %s", (unit,)).fetchall()
    return {r[0] for r in rows}


def test_jurisdiction_follows_parent_links_not_code_prefixes(conn: psycopg.Connection, tree: dict[str, int]) -> None:
    assert _descendants(conn, tree["weinan"]) == {tree["weinan"]}
    assert _descendants(conn, tree["xian"]) == {tree["xian"], tree["yanta"], tree["site"]}
    assert _descendants(conn, tree["province"]) == set(tree.values())
    depth = conn.execute(
        "SELECT depth FROM unit_tree WHERE ancestor_id = %s AND descendant_id = %s",
        (tree["province"], tree["hc_site"]),
    ).fetchone()
    assert depth == (2,)


def test_moving_a_county_moves_its_sites(conn: psycopg.Connection, tree: dict[str, int]) -> None:
    conn.execute("UPDATE units SET parent_id = %s WHERE id = %s", (tree["weinan"], tree["hancheng"]))
    assert _descendants(conn, tree["weinan"]) == {tree["weinan"], tree["hancheng"], tree["hc_site"]}
    assert tree["hc_site"] in _descendants(conn, tree["province"])
    assert _descendants(conn, tree["xian"]) == {tree["xian"], tree["yanta"], tree["site"]}


def test_parent_must_rank_above_and_cycles_are_refused(conn: psycopg.Connection, tree: dict[str, int]) -> None:
    with pytest.raises(psycopg.errors.CheckViolation, match="上级必须高于"):
        _unit(conn, "6101130002", "某卫生院", "township", tree["site"])
    with pytest.raises(psycopg.errors.CheckViolation):
        conn.execute("UPDATE units SET parent_id = %s WHERE id = %s", (tree["site"], tree["yanta"]))
    with pytest.raises(psycopg.errors.CheckViolation):
        _unit(conn, "610100000", "九位编码", "city", tree["province"])


def test_township_has_no_system_administrator(conn: psycopg.Connection, tree: dict[str, int]) -> None:
    with pytest.raises(psycopg.errors.CheckViolation, match="不设系统管理员"):
        conn.execute(
            "INSERT INTO users (username, real_name, unit_id, role) VALUES ('siteadmin', '张三', %s, 'system_admin')",
            (tree["site"],),
        )
    conn.execute(
        "INSERT INTO users (username, real_name, unit_id, role) VALUES ('countyadmin', '李四', %s, 'system_admin')",
        (tree["yanta"],),
    )


def _device(conn: psycopg.Connection, unit: int) -> dict[str, int]:
    eq = conn.execute(
        "INSERT INTO equipment (unit_id, kind, name) VALUES (%s, 'fridge', '海尔双温冰箱') RETURNING id", (unit,)
    ).fetchone()
    assert eq is not None
    ids = {"equipment": eq[0]}
    for name, mode in (("冷藏", "refrigerated"), ("冷冻", "frozen")):
        row = conn.execute(
            "INSERT INTO compartments (equipment_id, name, mode) VALUES (%s, %s, %s) RETURNING id", (eq[0], name, mode)
        ).fetchone()
        assert row is not None
        ids[mode] = row[0]
    gw = conn.execute("INSERT INTO gateways (serial, unit_id) VALUES ('10001', %s) RETURNING id", (unit,)).fetchone()
    pr = conn.execute("INSERT INTO probes (serial, unit_id) VALUES ('208601', %s) RETURNING id", (unit,)).fetchone()
    assert gw is not None and pr is not None
    ids["gateway"], ids["probe"] = gw[0], pr[0]
    return ids


def test_compartment_limits_default_by_mode(conn: psycopg.Connection, tree: dict[str, int]) -> None:
    ids = _device(conn, tree["site"])
    limits: dict[str, str] = dict(
        conn.execute(
            "SELECT mode, (t_min, t_max)::text FROM compartments WHERE equipment_id = %s", (ids["equipment"],)
        ).fetchall()
    )
    assert limits == {"refrigerated": "(2.0,8.0)", "frozen": "(,-15.0)"}


def test_readings_are_attributed_to_the_binding_at_their_time(conn: psycopg.Connection, tree: dict[str, int]) -> None:
    ids = _device(conn, tree["site"])
    # Bound to the refrigerated zone until 10:00, then (after a Form 1 swap) to the frozen zone.
    conn.execute(
        "INSERT INTO probe_bindings (probe_id, compartment_id, gateway_id, valid) VALUES "
        "(%(p)s, %(r)s, %(g)s, tstzrange('2026-11-01 00:00+08', '2026-11-01 10:00+08')), "
        "(%(p)s, %(f)s, %(g)s, tstzrange('2026-11-01 10:00+08', NULL))",
        {"p": ids["probe"], "r": ids["refrigerated"], "f": ids["frozen"], "g": ids["gateway"]},
    )
    conn.execute(
        "INSERT INTO probe_readings (probe_id, ts, t) VALUES "
        "(%(p)s, '2026-11-01 09:59+08', 4.5), (%(p)s, '2026-11-01 10:00+08', -18.0), "
        "(%(p)s, '2026-10-31 23:00+08', 5.0)",
        {"p": ids["probe"]},
    )
    rows = conn.execute(
        "SELECT t, compartment_id FROM probe_readings_attributed WHERE probe_id = %s ORDER BY ts", (ids["probe"],)
    ).fetchall()
    # The reading from before the first binding is not attributed to anything.
    assert rows == [(4.5, ids["refrigerated"]), (-18.0, ids["frozen"])]
    current = conn.execute(
        "SELECT compartment_id FROM probe_bindings_current WHERE probe_id = %s", (ids["probe"],)
    ).fetchall()
    assert current == [(ids["frozen"],)]


def test_a_probe_cannot_be_bound_twice_at_once(conn: psycopg.Connection, tree: dict[str, int]) -> None:
    ids = _device(conn, tree["site"])
    conn.execute(
        "INSERT INTO probe_bindings (probe_id, compartment_id, gateway_id, valid) "
        "VALUES (%s, %s, %s, tstzrange('2026-11-01', NULL))",
        (ids["probe"], ids["refrigerated"], ids["gateway"]),
    )
    with pytest.raises(psycopg.errors.ExclusionViolation):
        conn.execute(
            "INSERT INTO probe_bindings (probe_id, compartment_id, gateway_id, valid) "
            "VALUES (%s, %s, %s, tstzrange('2026-11-05', '2026-11-06'))",
            (ids["probe"], ids["frozen"], ids["gateway"]),
        )
    with pytest.raises(psycopg.errors.CheckViolation):
        conn.execute(
            "INSERT INTO probe_bindings (probe_id, compartment_id, gateway_id, valid) "
            "VALUES (%s, %s, %s, tstzrange(NULL, '2026-10-01'))",
            (ids["probe"], ids["frozen"], ids["gateway"]),
        )


def test_a_reading_is_stored_once_per_probe_and_time(conn: psycopg.Connection) -> None:
    for _ in range(2):
        conn.execute(
            "INSERT INTO probe_readings (probe_id, ts, t) VALUES (1, '2026-11-23 08:00+08', 4.6) "
            "ON CONFLICT (probe_id, ts) DO NOTHING"
        )
    assert conn.execute("SELECT count(*) FROM probe_readings").fetchone() == (1,)
    with pytest.raises(psycopg.errors.UniqueViolation):
        conn.execute("INSERT INTO probe_readings (probe_id, ts, t) VALUES (1, '2026-11-23 00:00Z', 9)")
    with pytest.raises(psycopg.errors.CheckViolation):
        conn.execute("INSERT INTO probe_readings (probe_id, ts, t) VALUES (1, '2026-11-23 01:00Z', 99)")
