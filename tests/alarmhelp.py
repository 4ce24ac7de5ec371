"""Shared by the alarm flow tests: data written exactly as the ingester writes it, a fake WeCom
robot, the scheduler's passes run in-process or as real ``coldchain scheduler`` processes, and
reading the notifications back out of the messages the robot received.

The ingester (ingest/store.py) writes a batch as: readings into ``probe_readings`` (ON CONFLICT DO
NOTHING, ``received_at`` the batch's receipt time) and the newest of them into ``probe_latest``
(only moving forward, ``received_at`` refreshed); statuses into ``gateway_status`` and the newest
into ``gateway_latest`` with ``last_seen_at``. The helpers do the same with an explicit ``ts`` and
``received_at``, so a test can say "measured 40 minutes ago, received now" (a buffered upload) or
"measured a day ago, received two seconds later" (a day of live data, replayed quickly).

Also a pytest plugin (tests/conftest.py): the ``wecom`` fixture, a running fake robot; a module
that wants another robot defines its own.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest
from apihelp import BOUND_FROM, World, build_world
from dbhelp import as_runtime
from fakewecom import FakeWecom, Received
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb
from psycopg.types.range import Range

from alarms.delivery import deliver
from alarms.engine import check_silence, escalate, evaluate_compartments, evaluate_gateways
from coldchain.core import db
from coldchain.core.settings import Settings, load_settings

UNIT_T1 = "电子城街道社区卫生服务中心"
UNIT_T2 = "向阳街道卫生院"


def utcnow() -> datetime:
    return datetime.now(UTC)


# ---------------------------------------------------------------------------------------------
# The world: apihelp's province, with no readings yet


def alarm_world(url: str) -> World:
    """apihelp's province (T1/T2/T3, a two-zone fridge each behind one gateway), minus the few
    readings build_world leaves: they are stamped "now − 10…30 min" and would sit in the middle of
    any time line a test builds."""
    return build_world(url, readings=False)


def probe_of(conn: psycopg.Connection, compartment_id: int) -> int:
    row = conn.execute(
        "SELECT probe_id FROM probe_bindings_current WHERE compartment_id = %s", (compartment_id,)
    ).fetchone()
    assert row is not None, f"温区 {compartment_id} 没有绑定探头"
    return int(row[0])


def set_params(conn: psycopg.Connection, compartment_id: int, **params: object) -> None:
    """Per-compartment rule overrides (alarm_rule_params), as the web form stores them."""
    conn.execute(
        """INSERT INTO alarm_rule_params (compartment_id, params) VALUES (%s, %s)
           ON CONFLICT (compartment_id) DO UPDATE
               SET params = excluded.params, version = alarm_rule_params.version + 1""",
        (compartment_id, Jsonb(params)),
    )
    conn.commit()


def add_compartments(conn: psycopg.Connection, world: World, site: str, count: int) -> list[int]:
    """``count`` more refrigerated compartments at ``site`` (one cold room), each with its own probe
    bound through the site's gateway since BOUND_FROM. Returns the compartment ids."""
    unit = world.units[site]
    gateway = world.gateways[f"{site[1]}0001"]
    eq = conn.execute(
        "INSERT INTO equipment (unit_id, kind, name) VALUES (%s, 'cold_room', '冷库') RETURNING id", (unit,)
    ).fetchone()
    assert eq is not None
    made: list[int] = []
    for n in range(1, count + 1):
        comp = conn.execute(
            "INSERT INTO compartments (equipment_id, name, mode) VALUES (%s, %s, 'refrigerated') RETURNING id",
            (eq[0], f"货架{n:02d}"),
        ).fetchone()
        probe = conn.execute(
            """INSERT INTO probes (serial, unit_id, vendor, installed_on, warranty_end)
               VALUES (%s, %s, '精创', '2024-01-01', current_date + 400) RETURNING id""",
            (f"{site[1]}9{n:04d}", unit),
        ).fetchone()
        assert comp is not None and probe is not None
        conn.execute(
            "INSERT INTO probe_bindings (probe_id, compartment_id, gateway_id, valid) VALUES (%s, %s, %s, %s)",
            (probe[0], comp[0], gateway, Range(BOUND_FROM, None, "[)")),
        )
        made.append(comp[0])
    conn.commit()
    return made


# ---------------------------------------------------------------------------------------------
# Data as the ingester writes it


def add_readings(
    conn: psycopg.Connection,
    probe_id: int,
    readings: Sequence[tuple[datetime, float]],
    *,
    received_at: datetime | None = None,
    lag: timedelta | None = None,
) -> None:
    """One ingest batch for one probe: each reading received at ``received_at`` (default: the
    database's now(), as the ingester does), or ``lag`` after its own ts (live data replayed)."""
    assert received_at is None or lag is None
    stored: list[tuple[datetime, float, datetime]] = []
    with conn.cursor() as cur:
        for ts, t in readings:
            cur.execute(
                """INSERT INTO probe_readings (probe_id, ts, t, received_at)
                   VALUES (%s, %s, %s, coalesce(%s::timestamptz, now()))
                   ON CONFLICT (probe_id, ts) DO NOTHING RETURNING ts, t, received_at""",
                (probe_id, ts, t, ts + lag if lag is not None else received_at),
            )
            row = cur.fetchone()
            if row is not None:
                stored.append((row[0], row[1], row[2]))
    if stored:
        ts, t, at = max(stored)
        conn.execute(
            """INSERT INTO probe_latest AS l (probe_id, ts, t, received_at) VALUES (%s, %s, %s, %s)
               ON CONFLICT (probe_id) DO UPDATE SET ts = excluded.ts, t = excluded.t, rh = NULL, bat = NULL,
                   received_at = excluded.received_at
               WHERE l.ts < excluded.ts""",
            (probe_id, ts, t, at),
        )
    conn.commit()


def add_status(
    conn: psycopg.Connection,
    gateway_id: int,
    ts: datetime,
    *,
    online: bool | None = None,
    power: str | None = None,
    battery: float | None = None,
    rssi: int | None = None,
    received_at: datetime | None = None,
) -> None:
    """One gateway status, stored as the ingester stores it (gateway_status, then gateway_latest)."""
    row = conn.execute(
        """INSERT INTO gateway_status (gateway_id, ts, online, power, battery, rssi, received_at)
           VALUES (%s, %s, %s, %s, %s, %s, coalesce(%s::timestamptz, now()))
           ON CONFLICT (gateway_id, ts) DO NOTHING RETURNING received_at""",
        (gateway_id, ts, online, power, battery, rssi, received_at),
    ).fetchone()
    if row is not None:
        conn.execute(
            """INSERT INTO gateway_latest AS g (gateway_id, ts, online, power, battery, rssi, last_seen_at)
               VALUES (%s, %s, %s, %s, %s, %s, %s)
               ON CONFLICT (gateway_id) DO UPDATE
                   SET ts = excluded.ts, online = coalesce(excluded.online, g.online),
                       power = coalesce(excluded.power, g.power), battery = coalesce(excluded.battery, g.battery),
                       rssi = coalesce(excluded.rssi, g.rssi), last_seen_at = excluded.last_seen_at
                   WHERE g.ts <= excluded.ts""",
            (gateway_id, ts, online, power, battery, rssi, row[0]),
        )
    conn.commit()


def settle(conn: psycopg.Connection, *, skip: Sequence[int] = ()) -> None:
    """Every bound probe (but those in ``skip``) reports an in-range reading now, so that no
    compartment is silent and no gateway looks offline: only what a test sets up can alarm."""
    rows = conn.execute(
        """SELECT b.probe_id, c.mode FROM probe_bindings_current b JOIN compartments c ON c.id = b.compartment_id
           ORDER BY b.probe_id"""
    ).fetchall()
    at = utcnow() - timedelta(seconds=1)
    for probe_id, mode in rows:
        if probe_id not in skip:
            add_readings(conn, probe_id, [(at, 4.5 if mode == "refrigerated" else -20.0)])


# ---------------------------------------------------------------------------------------------
# Settings, the fake robot, passes


def alarm_settings(
    wecom_url: str | None,
    *,
    steps: str = "30m,60m",
    reminder: str = "60m",
    resolved: str = "24h",
) -> Settings:
    env = {
        "COLDCHAIN_ESCALATION_STEPS": steps,
        "COLDCHAIN_REMINDER_INTERVAL": reminder,
        "COLDCHAIN_RESOLVED_REMINDER_INTERVAL": resolved,
        "COLDCHAIN_OUTBOUND_ALLOW_INSECURE_LOOPBACK": "true",  # the fake robot is on http://127.0.0.1
    }
    if wecom_url:
        env["COLDCHAIN_WECOM_WEBHOOK_URL"] = wecom_url
    return load_settings(env)


@contextmanager
def running_wecom() -> Iterator[FakeWecom]:
    """A FakeWecom for a ``with`` block or a fixture: closed however the test ends."""
    fake = FakeWecom()
    try:
        yield fake
    finally:
        fake.close()


@pytest.fixture
def wecom() -> Iterator[FakeWecom]:
    with running_wecom() as fake:
        yield fake


def slow_down(fake: FakeWecom, seconds: float) -> None:
    """Make this robot answer ``seconds`` late, as a slow endpoint does: a delivery then keeps its
    rows in flight long enough for a second scheduler to reach for the same ones."""
    handler = fake.server.RequestHandlerClass  # a class of this FakeWecom's own
    post = getattr(handler, "do_POST")  # noqa: B009 — mypy sees a Callable, not the class

    def do_post(self: object) -> None:
        time.sleep(seconds)
        post(self)

    setattr(handler, "do_POST", do_post)  # noqa: B010


def one_pass(conn: psycopg.Connection, settings: Settings, *, silence: bool = False) -> None:
    """What one tick of every scheduler job does, in the scheduler's order — as the runtime role,
    on a connection of its own, after committing what the test set up on ``conn``."""
    conn.commit()
    info = conn.info
    owner = f"postgresql://{info.user}@{info.host}:{info.port}/{info.dbname}"
    with db.connect(as_runtime(owner), application="coldchain-scheduler") as runtime:
        evaluate_compartments(runtime, settings)
        if silence:
            evaluate_gateways(runtime, settings)
            check_silence(runtime, settings)
        escalate(runtime, settings)
        deliver(runtime, settings)


def run_passes(
    conn: psycopg.Connection,
    settings: Settings,
    seconds: float,
    every: float = 0.25,
    *,
    silence: bool = False,
    until: Callable[[], bool] | None = None,
) -> float:
    """Passes every ``every`` seconds for ``seconds`` (or until ``until()`` holds); the time taken."""
    started = time.monotonic()
    while True:
        one_pass(conn, settings, silence=silence)
        elapsed = time.monotonic() - started
        if (until is not None and until()) or elapsed >= seconds:
            return elapsed
        time.sleep(every)


# ---------------------------------------------------------------------------------------------
# Reading results back


def rows(conn: psycopg.Connection, query: str, params: Sequence[object] = ()) -> list[dict[str, Any]]:
    with conn.cursor(row_factory=dict_row) as cur:
        cur.execute(query, params)
        found = cur.fetchall()
    conn.commit()
    return found


def alarms(conn: psycopg.Connection) -> list[dict[str, Any]]:
    return rows(conn, "SELECT * FROM alarms ORDER BY id")


def outbox(conn: psycopg.Connection, alarm_id: int | None = None) -> list[dict[str, Any]]:
    return rows(
        conn,
        """SELECT o.*, o.levels::int[] AS levels, extract(epoch FROM o.due_at)::float8 AS due_epoch,
                  extract(epoch FROM o.sent_at)::float8 AS sent_epoch
           FROM notification_outbox o WHERE %s::bigint IS NULL OR o.alarm_id = %s ORDER BY o.due_at, o.id""",
        (alarm_id, alarm_id),
    )


def events(conn: psycopg.Connection, alarm_id: int, action: str | None = None) -> list[dict[str, Any]]:
    return rows(
        conn,
        "SELECT * FROM alarm_events WHERE alarm_id = %s AND (%s::text IS NULL OR action = %s) ORDER BY id",
        (alarm_id, action, action),
    )


def _sent(conn: psycopg.Connection, step: str, alarm_id: int | None = None) -> bool:
    return any(r["step"] == step and r["sent_at"] is not None for r in outbox(conn, alarm_id))


# One notice in a WeCom message: "一级负责人 · 报警通知 · 报警编号 7" (one alarm, detailed) or
# "一级负责人：报警通知 · 报警编号 7" (a merged list). Together they name the outbox row's step.
_NOTICE = re.compile(
    r"([一二三])级负责人(?:：| · )"
    r"(报警通知|升级通知|持续未恢复提醒|已恢复待关闭|已确认通知|恢复通知|关闭通知) · 报警编号 (\d+)"
)
_ALARM_ID = re.compile(r"报警编号 (\d+)")


_LEVEL_WORDS = {1: "一", 2: "二", 3: "三"}
_NOTICE_WORDS = {"ack": "已确认通知", "resolved": "恢复通知", "closed": "关闭通知"}


def step_label(step: str, levels: Sequence[int] = ()) -> tuple[str, str]:
    """What a step's notice says: (highest level, wording) — see alarms/card.py STEP_LABELS. The
    notices closing the loop go to the levels already told, so their level is the row's."""
    if step in _NOTICE_WORDS:
        return _LEVEL_WORDS[max(levels)], _NOTICE_WORDS[step]
    if step == "open":
        return "一", "报警通知"
    if step == "level2":
        return "二", "升级通知"
    if step == "level3":
        return "三", "升级通知"
    if step.startswith("reminder-"):
        return "三", "持续未恢复提醒"
    assert step.startswith("resolved-"), step
    return "一", "已恢复待关闭"


def notices(messages: Sequence[Received]) -> Counter[tuple[int, str, str]]:
    """(alarm id, level, wording) of every notice in the messages, counted."""
    return Counter((int(m[3]), m[1], m[2]) for r in messages for m in _NOTICE.finditer(r.content))


def expected_notices(sent_rows: Sequence[dict[str, Any]]) -> Counter[tuple[int, str, str]]:
    return Counter(
        (int(r["alarm_id"]), *step_label(r["step"], r.get("levels") or ()))
        for r in sent_rows
        if r["sent_at"] is not None
    )


def alarm_ids(content: str) -> list[int]:
    return [int(m) for m in _ALARM_ID.findall(content)]


# ---------------------------------------------------------------------------------------------
# Real scheduler processes


def scheduler_env(db_url: str, **settings: str) -> dict[str, str]:
    """The process environment without any COLDCHAIN_* of the machine, plus these settings."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("COLDCHAIN_")}
    env["COLDCHAIN_DATABASE_URL"] = as_runtime(db_url)
    env["COLDCHAIN_OUTBOUND_ALLOW_INSECURE_LOOPBACK"] = "true"  # the fakes are on http://127.0.0.1
    env.update({f"COLDCHAIN_{k.upper()}": v for k, v in settings.items()})
    return env


def start_scheduler(env: dict[str, str], log: Path, *args: str) -> subprocess.Popen[str]:
    """``python -m coldchain.cli scheduler …``, returned once it has printed its start line. Its
    log (stderr) goes to ``log``: a pipe nobody reads would stall it once full."""
    with log.open("w") as err:
        proc = subprocess.Popen(
            [sys.executable, "-m", "coldchain.cli", "scheduler", *args],
            env=env,
            stdout=subprocess.PIPE,
            stderr=err,
            text=True,
        )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if not line.startswith("定时任务"):
        proc.kill()
        proc.wait(10)
        raise AssertionError(f"调度进程没有启动：{line!r} {log.read_text()}")
    return proc
