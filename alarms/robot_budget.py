"""A WeCom robot's budget of 20 requests a minute, counted on the moments its answers came back.

Why its own module: the outbox worker (:mod:`alarms.delivery`) and the settings page's test
message (:mod:`alarms.test_message`) post to the same robots, and a robot counts both. Each request
is a row of ``robot_posts`` (0014), stamped with ``clock_timestamp()`` after the answer: a request
that has answered has arrived, so a window counted on these times is never shorter than the
robot's own. Rows hold the URL's SHA-256 digest, never the URL (it carries the robot's key).
"""

from __future__ import annotations

import hashlib
from datetime import datetime

import psycopg

__all__ = ["clock", "digest", "recent", "record"]

_RECENT = """
SELECT posted_at FROM robot_posts
WHERE target_digest = %(digest)s AND posted_at > clock_timestamp() - interval '60 seconds'
ORDER BY posted_at
"""
_RECORD = "INSERT INTO robot_posts (target_digest) VALUES (%(digest)s) RETURNING posted_at"
_PRUNE = "DELETE FROM robot_posts WHERE target_digest = %(digest)s AND posted_at < now() - interval '1 day'"
_CLOCK = "SELECT clock_timestamp()"


def digest(url: str) -> str:
    """What a robot is known by in ``robot_posts``: the digest of its URL, key included."""
    return hashlib.sha256(url.encode()).hexdigest()


def recent(conn: psycopg.Connection, robot: str) -> list[datetime]:
    """The answer times of the robot's requests in the last 60 s, oldest first; rows older than a
    day, which no window needs, are pruned on the way."""
    conn.execute(_PRUNE, {"digest": robot})
    return [row[0] for row in conn.execute(_RECENT, {"digest": robot}).fetchall()]


def record(conn: psycopg.Connection, robot: str) -> datetime:
    """Count one request to the robot, now that its answer (whatever it said) has come back."""
    row = conn.execute(_RECORD, {"digest": robot}).fetchone()
    assert row is not None
    posted: datetime = row[0]
    return posted


def clock(conn: psycopg.Connection) -> datetime:
    """The database's clock now (not the transaction's start), the clock the budget is kept on."""
    row = conn.execute(_CLOCK).fetchone()
    assert row is not None
    moment: datetime = row[0]
    return moment
