"""Writing a batch of checked messages in one transaction.

Readings are COPYed into a temporary staging table and moved from there by one statement that
(1) keeps only readings whose probe was bound at the reading's time — the registry is asked inside
this transaction, so a binding made a second ago counts and a decommissioning takes effect
exactly when it was recorded (CM8); (2) inserts them with ``ON CONFLICT DO NOTHING`` so that a
redelivered message is stored once; (3) moves ``probe_latest`` forward for the live board; and
(4) counts the readings of unbound probes; (5) logs the late ones for the excursion spans; and (6)
tells listeners which compartments got readings out of their limits (``NOTIFY`` on
:data:`READINGS_CHANNEL`, see docs/ingest.md), so the scheduler judges them at once instead of at
its next periodic pass. Dead
letters, quarantined readings and gateway status go in the same transaction, so that when it
commits everything about every message of the batch is durable and the messages may be
acknowledged — and a notification is delivered only then: PostgreSQL sends a transaction's
notifications when it commits and drops them when it rolls back.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, fields
from typing import Final, NamedTuple

import psycopg

from ingest.contract import Parsed, Problem, from_us

# The NOTIFY channel of the ingest statement (docs/ingest.md, "Notification of new readings").
READINGS_CHANNEL: Final = "coldchain_readings"
# PostgreSQL refuses a payload of 8000 bytes or more (the default build's limit).
NOTIFY_PAYLOAD_LIMIT: Final = 8000

STAGE_DDL: Final = """
CREATE TEMP TABLE IF NOT EXISTS cc_stage_readings (
    probe_id bigint NOT NULL, ts_us bigint NOT NULL, t double precision NOT NULL, rh real, bat real
) ON COMMIT DELETE ROWS;
CREATE TEMP TABLE IF NOT EXISTS cc_stage_status (
    gateway_id bigint NOT NULL, ts_us bigint NOT NULL, online boolean, power text, battery real,
    rssi smallint, retained boolean NOT NULL
) ON COMMIT DELETE ROWS;
"""

MOVE_READINGS: Final = """
WITH staged AS MATERIALIZED (
    -- Bindings of a probe never overlap, so the one that started last at or before ts is the only
    -- candidate; asking for it this way walks probe_bindings_probe_idx once per reading (a plain
    -- "valid @> ts" lets the planner pick the exclusion index, which matches every binding).
    SELECT s.probe_id, x.ts, s.t, s.rh, s.bat, coalesce(b.valid @> x.ts, false) AS bound, b.compartment_id
    FROM cc_stage_readings s
    CROSS JOIN LATERAL (SELECT timestamptz 'epoch' + s.ts_us * interval '1 microsecond' AS ts) x
    LEFT JOIN LATERAL (
        SELECT pb.valid, pb.compartment_id FROM probe_bindings pb
        WHERE pb.probe_id = s.probe_id AND lower(pb.valid) <= x.ts
        ORDER BY lower(pb.valid) DESC LIMIT 1
    ) b ON true
), stored AS (
    INSERT INTO probe_readings (probe_id, ts, t, rh, bat)
    SELECT probe_id, ts, t, rh, bat FROM staged WHERE bound
    ON CONFLICT (probe_id, ts) DO NOTHING
    RETURNING probe_id, ts, t, rh, bat
), latest AS (
    INSERT INTO probe_latest AS l (probe_id, ts, t, rh, bat)
    SELECT DISTINCT ON (probe_id) probe_id, ts, t, rh, bat FROM stored ORDER BY probe_id, ts DESC
    ON CONFLICT (probe_id) DO UPDATE
        SET ts = excluded.ts, t = excluded.t, rh = excluded.rh, bat = excluded.bat, received_at = now()
        WHERE l.ts < excluded.ts
), late AS (
    -- Readings older than the excursion threshold (a gateway's upload after an outage, a
    -- redelivery) are logged for the next refresh of the excursion spans (0009). The threshold is
    -- read FOR SHARE, through the owner's function, so that a refresh advancing it waits for this
    -- transaction or is seen by it. Logged here, in the one statement that writes readings, on
    -- both storage paths: no trigger is paid per row (migration 0013).
    -- The threshold stays at least two hours behind now, so a batch of current readings never
    -- reaches the subquery: PostgreSQL runs it (and takes the lock) only on first use.
    INSERT INTO excursion_invalidations (probe_id, since)
    SELECT probe_id, min(ts) FROM stored
    WHERE ts < now() - interval '1 hour' AND ts < (SELECT cc_excursion_threshold_for_writers())
    GROUP BY probe_id
), unbound AS (
    INSERT INTO probe_unbound_readings AS u (probe_id, day, n, first_ts, last_ts)
    SELECT probe_id, (ts AT TIME ZONE 'Asia/Shanghai')::date, count(*), min(ts), max(ts)
    FROM staged WHERE NOT bound
    GROUP BY 1, 2
    ON CONFLICT (probe_id, day) DO UPDATE
        SET n = u.n + excluded.n, first_ts = least(u.first_ts, excluded.first_ts),
            last_ts = greatest(u.last_ts, excluded.last_ts)
), notified AS (
    -- One notification per batch naming the compartments (binding at each reading's time) with a
    -- stored reading out of their limits (strictly, as coldchain.core.terms.out_of_range): only
    -- those can open or worsen an alarm, and judging every in-range reading at once made the
    -- scheduler judge the whole province several times a second. In-range readings — which can
    -- only end an excursion, after its hold — wait for the scheduler's periodic look. None for a
    -- batch of duplicates or of in-range readings only. A list too long for the payload limit
    -- becomes {"all":true}: "look at every compartment with unseen readings". Queued now, sent by
    -- PostgreSQL at commit, dropped on rollback. A plain SELECT in WITH runs only if referenced:
    -- the final SELECT counts it for that reason.
    SELECT pg_notify('coldchain_readings',
                     CASE WHEN octet_length(n.payload) < 8000 THEN n.payload ELSE '{"all":true}' END)
    FROM (
        SELECT '{"compartments":[' || string_agg(d.compartment_id::text, ',' ORDER BY d.compartment_id) || ']}'
               AS payload
        FROM (
            SELECT DISTINCT s.compartment_id
            FROM stored st JOIN staged s USING (probe_id, ts) JOIN compartments c ON c.id = s.compartment_id
            WHERE st.t > c.t_max::double precision OR st.t < c.t_min::double precision
        ) d
        HAVING count(*) > 0
    ) n
)
SELECT count(*) FILTER (WHERE bound) AS bound, count(*) FILTER (WHERE NOT bound) AS unbound,
       (SELECT count(*) FROM stored) AS stored, (SELECT count(*) FROM notified) AS notified
FROM staged
"""

_MOVE_STATUS: Final = """
WITH staged AS (
    SELECT s.gateway_id, timestamptz 'epoch' + s.ts_us * interval '1 microsecond' AS ts,
           s.online, s.power, s.battery, s.rssi
    FROM cc_stage_status s
    -- A retained status replayed on (re)subscription is news only if it differs from what we know.
    WHERE NOT (s.retained AND EXISTS (
        SELECT 1 FROM gateway_latest g WHERE g.gateway_id = s.gateway_id AND g.online IS NOT DISTINCT FROM s.online))
), stored AS (
    INSERT INTO gateway_status (gateway_id, ts, online, power, battery, rssi)
    SELECT gateway_id, ts, online, power, battery, rssi FROM staged
    ON CONFLICT (gateway_id, ts) DO NOTHING
    RETURNING gateway_id, ts, online, power, battery, rssi
)
INSERT INTO gateway_latest AS g (gateway_id, ts, online, power, battery, rssi, last_seen_at)
-- Per gateway, the newest value of each field that was reported in this batch.
SELECT gateway_id, max(ts),
       (array_agg(online ORDER BY ts DESC) FILTER (WHERE online IS NOT NULL))[1],
       (array_agg(power ORDER BY ts DESC) FILTER (WHERE power IS NOT NULL))[1],
       (array_agg(battery ORDER BY ts DESC) FILTER (WHERE battery IS NOT NULL))[1],
       (array_agg(rssi ORDER BY ts DESC) FILTER (WHERE rssi IS NOT NULL))[1],
       now()
FROM stored GROUP BY gateway_id
ON CONFLICT (gateway_id) DO UPDATE
    SET ts = excluded.ts,
        online = coalesce(excluded.online, g.online),
        power = coalesce(excluded.power, g.power),
        battery = coalesce(excluded.battery, g.battery),
        rssi = coalesce(excluded.rssi, g.rssi),
        last_seen_at = now()
    WHERE g.ts <= excluded.ts
"""

# Gateways heard from whose status did not move gateway_latest (a repeated ts): only the
# "last seen" time changes. Rows the status upsert just wrote already carry now().
_TOUCH_GATEWAYS: Final = """
UPDATE gateway_latest SET last_seen_at = now() WHERE gateway_id = ANY(%s) AND last_seen_at < now()
"""


@dataclass(slots=True)
class Incoming:
    """One MQTT message on its way to the database, with what is needed to acknowledge it."""

    topic: str
    payload: bytes
    parsed: Parsed
    received_us: int
    # (connection generation, packet id, qos); None for QoS 0, which is never acknowledged.
    ack: tuple[int, int, int] | None = None


@dataclass(slots=True)
class BatchResult:
    messages: int = 0
    readings: int = 0  # readings that passed the checks of the contract
    stored: int = 0
    duplicates: int = 0
    unbound: int = 0
    quarantined: int = 0
    dead_letters: int = 0
    rejected_readings: int = 0
    notified: int = 0  # NOTIFYs sent on READINGS_CHANNEL (one per transaction that stored a reading out of range)
    newest_reading_us: int | None = None

    def add(self, other: BatchResult) -> None:
        for f in fields(self):
            if f.name != "newest_reading_us":
                setattr(self, f.name, getattr(self, f.name) + getattr(other, f.name))
        if other.newest_reading_us is not None:
            self.newest_reading_us = max(self.newest_reading_us or 0, other.newest_reading_us)


class RegistryCache:
    """Serial → id of gateways and probes.

    A serial never changes its id and registry rows are never deleted, so a positive entry never goes
    stale. Misses are not cached: an unknown serial is looked up again in the next batch's
    transaction, so a gateway registered a moment ago is found at once.
    """

    def __init__(self) -> None:
        self.gateways: dict[str, int] = {}
        self.probes: dict[str, int] = {}

    async def resolve(self, conn: psycopg.AsyncConnection, gateways: set[str], probes: set[str]) -> None:
        missing_g = [s for s in gateways if s not in self.gateways]
        missing_p = [s for s in probes if s not in self.probes]
        async with conn.cursor() as cur:
            if missing_g:
                await cur.execute("SELECT serial, id FROM gateways WHERE serial = ANY(%s)", (missing_g,))
                self.gateways.update(await cur.fetchall())
            if missing_p:
                await cur.execute("SELECT serial, id FROM probes WHERE serial = ANY(%s)", (missing_p,))
                self.probes.update(await cur.fetchall())


async def prepare(conn: psycopg.AsyncConnection) -> None:
    """Create the per-connection staging tables (temporary, emptied at every commit)."""
    await conn.execute(STAGE_DDL)
    await conn.commit()


def _copy_value(v: object) -> str:
    return "\\N" if v is None else repr(v) if isinstance(v, float) else str(v)


def _reading_line(pid: int, ts_us: int, t: float, rh: float | None, bat: float | None) -> str:
    """One row of COPY text for cc_stage_readings; the common case (no rh, no bat) formats once."""
    if rh is None and bat is None:
        return f"{pid}\t{ts_us}\t{t!r}\t\\N\t\\N\n"
    return f"{pid}\t{ts_us}\t{t!r}\t{_copy_value(rh)}\t{_copy_value(bat)}\n"


async def write_batch(conn: psycopg.AsyncConnection, messages: Sequence[Incoming], cache: RegistryCache) -> BatchResult:
    """Store a batch in one transaction and commit it; raises (after rollback) on any database error."""
    result = BatchResult(messages=len(messages))
    try:
        await _write(conn, messages, cache, result)
        await conn.commit()
    except BaseException:
        if not conn.closed:
            await conn.rollback()
        raise
    return result


async def _write(
    conn: psycopg.AsyncConnection, messages: Sequence[Incoming], cache: RegistryCache, result: BatchResult
) -> None:
    gateways = {
        m.parsed.gateway
        for m in messages
        if m.parsed.gateway is not None and (m.parsed.readings or m.parsed.status is not None)
    }
    await cache.resolve(conn, gateways, set())
    g_ids, p_ids = cache.gateways, cache.probes

    lines: list[str] = []
    status_lines: list[str] = []
    unknown: list[tuple[str, str | None, int, float, float | None, float | None]] = []
    quarantine: list[tuple[str, str | None, int, float, float | None, float | None]] = []
    dead: list[DeadLetter] = []
    seen_gateways: set[int] = set()
    newest = 0
    for m in messages:
        p = m.parsed
        problems = p.problems
        gid = g_ids.get(p.gateway) if p.gateway is not None else None
        if gid is None and (p.readings or p.status is not None):
            # The readings are not stored but nothing is lost: the raw message is in the dead letter.
            problems = [Problem("unknown_gateway", detail=p.gateway or ""), *problems]
            dead.append(DeadLetter(m.topic, m.payload, "unknown_gateway", True, _details(problems), m.received_us))
            result.rejected_readings += len(p.readings) + sum(1 for q in p.problems if q.reading is not None)
            continue
        if problems:
            whole = p.whole_rejected
            dead.append(DeadLetter(m.topic, m.payload, problems[0].reason, whole, _details(problems), m.received_us))
            result.rejected_readings += len({q.reading for q in problems if q.reading is not None})
        if gid is None:
            continue
        seen_gateways.add(gid)
        for probe, ts_us, t, rh, bat in p.readings:
            pid = p_ids.get(probe)
            result.readings += 1
            if ts_us > newest:
                newest = ts_us
            if pid is None:
                # Looked up once for the whole batch below; what stays unknown goes to quarantine.
                unknown.append((probe, p.gateway, ts_us, t, rh, bat))
            else:
                lines.append(_reading_line(pid, ts_us, t, rh, bat))
        s = p.status
        if s is not None:
            status_lines.append(
                f"{gid}\t{s.ts_us}\t{_copy_value(s.online)}\t{_copy_value(s.power)}\t{_copy_value(s.battery)}"
                f"\t{_copy_value(s.rssi)}\t{p.retained}\n"
            )
    result.newest_reading_us = newest or None
    if unknown:
        await cache.resolve(conn, set(), {r[0] for r in unknown})
        for r in unknown:
            pid = p_ids.get(r[0])
            if pid is None:
                quarantine.append(r)
            else:
                lines.append(_reading_line(pid, *r[2:]))
    result.quarantined = len(quarantine)

    async with conn.cursor() as cur:
        if lines:
            async with cur.copy("COPY cc_stage_readings (probe_id, ts_us, t, rh, bat) FROM STDIN") as copy:
                await copy.write("".join(lines))
            await cur.execute(MOVE_READINGS)
            row = await cur.fetchone()
            assert row is not None
            bound, unbound, stored, notified = row
            result.stored, result.duplicates, result.unbound = stored, bound - stored, unbound
            result.notified = notified
        if status_lines:
            async with cur.copy(
                "COPY cc_stage_status (gateway_id, ts_us, online, power, battery, rssi, retained) FROM STDIN"
            ) as copy:
                await copy.write("".join(status_lines))
            await cur.execute(_MOVE_STATUS)
        if seen_gateways:
            await cur.execute(_TOUCH_GATEWAYS, (sorted(seen_gateways),))
        if quarantine:
            async with cur.copy(
                "COPY ingest_quarantine (probe_serial, gateway_serial, ts, t, rh, bat) FROM STDIN"
            ) as copy:
                for probe, gw, ts_us, t, rh, bat in quarantine:
                    await copy.write_row((probe, gw, from_us(ts_us), t, rh, bat))
        if dead:
            await write_dead_letters(cur, dead)
            result.dead_letters = len(dead)


def _details(problems: Iterable[Problem]) -> str:
    return json.dumps([q.as_json() for q in problems], ensure_ascii=False)


class DeadLetter(NamedTuple):
    topic: str
    payload: bytes
    reason: str
    whole: bool
    details: str  # JSON array of Problem.as_json()
    received_us: int


def dead_letter_row(m: Incoming, reason: str, detail: str) -> DeadLetter:
    """A whole message refused, e.g. by the database itself when stored alone."""
    problems = [Problem(reason, detail=detail[:500]), *m.parsed.problems]
    return DeadLetter(m.topic, m.payload, reason, True, _details(problems), m.received_us)


async def write_dead_letters(cur: psycopg.AsyncCursor[tuple[object, ...]], rows: Sequence[DeadLetter]) -> None:
    async with cur.copy(
        "COPY ingest_dead_letters (topic, payload, reason, whole, details, received_at) FROM STDIN"
    ) as copy:
        for topic, payload, reason, whole, details, received_us in rows:
            await copy.write_row((topic, payload, reason, whole, details, from_us(received_us)))


def compartments_notified(payload: str) -> frozenset[int] | None:
    """The compartment ids a :data:`READINGS_CHANNEL` payload names, or None for "look at every
    compartment with unseen readings": the ``{"all":true}`` of a batch too large to list, and
    also whatever cannot be read — any database user may NOTIFY on any channel, so a listener
    takes a payload as a hint of where to look, never as a fact, and a look at everything is the
    safe answer to nonsense."""
    try:
        message = json.loads(payload)
        ids = message["compartments"]
        if isinstance(ids, list) and all(type(i) is int for i in ids):
            return frozenset(ids)
    except (ValueError, TypeError, KeyError):
        pass
    return None
