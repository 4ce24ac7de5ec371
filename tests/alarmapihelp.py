"""Alarms for the alarm API tests, raised the way production raises them: a reading goes into
``probe_readings`` and ``probe_latest`` as the ingester writes it, and
:func:`alarms.engine.evaluate_compartments` runs, as the scheduler's pass does; and plain SQL
look-ups to check what the API stored.

Shared by tests/api/test_alarm_api.py, test_thermometer_readings.py and test_alarm_params_api.py,
which all work in tests/apihelp.py's province.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from apihelp import World
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb

from alarms.engine import PassStats, evaluate_compartments
from coldchain.core import db
from coldchain.core.settings import load_settings

API = "/api/v1"
SETTINGS = load_settings({})


def probe_of(world: World, compartment: str) -> int:
    site, zone = compartment.split("/")
    digit = site[1]
    return world.probes[f"{digit}0{'8601' if zone == '冷藏' else '8604'}"]


def sql_rows(world: World, query: str, params: tuple[Any, ...] = ()) -> list[dict[str, Any]]:
    with db.connect(world.url) as conn, conn.cursor(row_factory=dict_row) as cur:
        cur.execute(query, params)
        return cur.fetchall()


def sql_one(world: World, query: str, params: tuple[Any, ...] = ()) -> dict[str, Any]:
    rows = sql_rows(world, query, params)
    assert len(rows) == 1, rows
    return rows[0]


def db_now(world: World) -> datetime:
    value: datetime = sql_one(world, "SELECT clock_timestamp() AS now")["now"]
    return value


def set_rule_params(world: World, compartment: str, params: dict[str, Any]) -> None:
    with db.connect(world.url) as conn:
        conn.execute(
            """INSERT INTO alarm_rule_params (compartment_id, params) VALUES (%s, %s)
               ON CONFLICT (compartment_id) DO UPDATE SET params = EXCLUDED.params""",
            (world.compartments[compartment], Jsonb(params)),
        )


def feed(world: World, compartment: str, t: float, ts: datetime | None = None) -> datetime:
    """One probe reading, stored as the ingester stores it (reading + probe_latest); returns its ts."""
    probe = probe_of(world, compartment)
    with db.connect(world.url) as conn:
        row = conn.execute(
            "INSERT INTO probe_readings (probe_id, ts, t) VALUES (%s, coalesce(%s, now()), %s) RETURNING ts",
            (probe, ts, t),
        ).fetchone()
        assert row is not None
        conn.execute(
            """INSERT INTO probe_latest (probe_id, ts, t, received_at) VALUES (%s, %s, %s, now())
               ON CONFLICT (probe_id) DO UPDATE
               SET ts = EXCLUDED.ts, t = EXCLUDED.t, received_at = EXCLUDED.received_at""",
            (probe, row[0], t),
        )
        stamp: datetime = row[0]
        return stamp


def evaluate(world: World) -> PassStats:
    with db.connect(world.url) as conn:
        stats = evaluate_compartments(conn, SETTINGS)
    assert stats.errors == []
    return stats


def raise_alarm(world: World, compartment: str, t: float, kind: str) -> int:
    """Delay and hold 0 for the compartment, one breaching reading, one scheduler pass."""
    set_rule_params(world, compartment, {"delay": 0, "hold": 0})
    feed(world, compartment, t)
    assert evaluate(world).opened == 1
    row = sql_one(
        world,
        "SELECT id FROM alarms WHERE compartment_id = %s AND kind = %s AND state = 'active'",
        (world.compartments[compartment], kind),
    )
    alarm_id: int = row["id"]
    return alarm_id


def resolve(world: World, compartment: str, t: float) -> None:
    feed(world, compartment, t)
    assert evaluate(world).resolved == 1


def alarm_row(world: World, alarm_id: int) -> dict[str, Any]:
    return sql_one(world, "SELECT * FROM alarms WHERE id = %s", (alarm_id,))


def audit_rows(world: World, action: str, entity: str) -> list[dict[str, Any]]:
    return sql_rows(
        world,
        "SELECT actor_id, entity_id, op, unit_id, before, after FROM audit_log WHERE action = %s AND entity = %s "
        "ORDER BY id",
        (action, entity),
    )


def ids(response: Any) -> list[int]:
    assert response.status_code == 200, response.text
    return [a["id"] for a in response.json()]
