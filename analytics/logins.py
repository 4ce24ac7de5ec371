"""Login compliance (CM14): every vaccination site signs in twice a day, at least 6 hours apart.

The rule exists so that someone at the site looks at the fridges in the morning and again in the
afternoon; one sign-in, or two within a few minutes, does not show that. This module answers, per
site and Beijing day, how many sign-ins there were and whether two of them were at least 6 hours
apart, and builds the monthly table per county (or any unit above it: all sites below it).

The rule itself lives in pure functions (:func:`day_compliant`, :func:`site_day`,
:func:`month_days`, :func:`monthly_rows`), so it is stated once and testable without a database.
The SQL only gathers facts — count, first and last successful sign-in per site and day — and
never decides compliance, so the rule cannot drift between SQL and Python.

Days are Beijing days (Asia/Shanghai): the connection's session zone is UTC (see
:mod:`coldchain.core.db`), so the SQL converts explicitly. A sign-in at 23:30 Beijing belongs to that
day, one at 00:10 Beijing to the next, whatever their UTC dates.
"""

from __future__ import annotations

import calendar
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import date, datetime, timedelta

import psycopg

from coldchain.core.terms import BEIJING

MIN_GAP = timedelta(hours=6)
"""Two sign-ins must be at least this far apart (exactly 6 hours counts): a morning and an
afternoon check of the fridges, not two sign-ins in one sitting."""

COUNTED_CHANNELS: tuple[str, ...] = ("web", "wechat")
"""Channels on which staff sign in. API-token sign-ins ('api') are programs (interfaces, scripts,
the provincial platform's data exchange), not a person at the site checking that the fridges run,
so they never count towards CM14."""

COLUMN_LABELS: dict[str, str] = {
    "code": "单位编码",
    "name": "接种单位",
    "days": "统计天数",
    "compliant_days": "达标天数",
    "noncompliant_days": "未达标天数（有登录）",
    "days_without_login": "无登录天数",
    "rate": "达标率",
}
"""Column headings of the monthly table, for reports and pages."""


# ---------------------------------------------------------------------------------------------
# Pure logic


@dataclass(frozen=True)
class Site:
    """A vaccination site (township-level unit) as it appears in the monthly table."""

    unit_id: int
    code: str
    name: str


@dataclass(frozen=True)
class SiteDay:
    """One site on one Beijing day: counted sign-ins (successful, web or WeChat, by the site's own
    users), the first and last of them (``None`` when there were none), and the verdict."""

    unit_id: int
    day: date
    sign_ins: int
    first: datetime | None
    last: datetime | None
    compliant: bool


@dataclass(frozen=True)
class MonthlyRow:
    """One site's month. ``compliant_days``, ``noncompliant_days`` (signed in, but too few or too
    close together) and ``days_without_login`` partition ``days``, so a reader sees at once whether
    a site signs in carelessly or not at all. ``rate`` is ``None`` when no day is counted yet
    (a month in the future): 0 % would accuse a site of something it could not yet have done."""

    unit_id: int
    code: str
    name: str
    days: int
    compliant_days: int
    noncompliant_days: int
    days_without_login: int
    rate: float | None


def day_compliant(sign_ins: Sequence[datetime]) -> bool:
    """True iff two of the sign-ins are at least :data:`MIN_GAP` apart.

    The widest pair is the first and the last, so this is ``last - first >= MIN_GAP``; sign-ins in
    between neither help nor hurt (08:00, 11:00, 14:00 is compliant). Order does not matter. The
    datetimes must all be aware or all naive, as Python requires for comparing them.
    """
    if len(sign_ins) < 2:
        return False
    return max(sign_ins) - min(sign_ins) >= MIN_GAP


def site_day(unit_id: int, day: date, sign_ins: int, first: datetime | None, last: datetime | None) -> SiteDay:
    """A :class:`SiteDay` from the facts the database gives (count, first, last), with the verdict
    decided by :func:`day_compliant` on [first, last] — the only pair that matters."""
    compliant = sign_ins >= 2 and first is not None and last is not None and day_compliant([first, last])
    return SiteDay(unit_id=unit_id, day=day, sign_ins=sign_ins, first=first, last=last, compliant=compliant)


def beijing_today() -> date:
    """Today's date in Beijing, whatever the machine's zone."""
    return datetime.now(BEIJING).date()


def month_days(month: date, today: date) -> list[date]:
    """The days of ``month``'s calendar month that are counted: all of them for a past month, up to
    and including ``today`` for the current one (today is counted as it goes: the table shows the
    state so far), none for a future month — a day that has not come cannot be missed."""
    first = month.replace(day=1)
    last = month.replace(day=calendar.monthrange(month.year, month.month)[1])
    end = min(last, today)
    return [first + timedelta(days=i) for i in range((end - first).days + 1)]


def monthly_rows(sites: Iterable[Site], days: Sequence[date], site_days: Iterable[SiteDay]) -> list[MonthlyRow]:
    """The monthly table: one row per site over ``days``, sorted by rate ascending (the sites to
    follow up first), then by code; rows without a rate (no day counted) come last.

    A (site, day) without a :class:`SiteDay` counts as a day without login, so a caller may pass
    only the days that had sign-ins. Site-days of other sites or other days are ignored.
    """
    wanted = set(days)
    by_key: dict[tuple[int, date], SiteDay] = {(d.unit_id, d.day): d for d in site_days if d.day in wanted}
    rows: list[MonthlyRow] = []
    for site in sites:
        compliant = noncompliant = without = 0
        for day in wanted:
            record = by_key.get((site.unit_id, day))
            if record is None or record.sign_ins == 0:
                without += 1
            elif record.compliant:
                compliant += 1
            else:
                noncompliant += 1
        counted = len(wanted)
        rows.append(
            MonthlyRow(
                unit_id=site.unit_id,
                code=site.code,
                name=site.name,
                days=counted,
                compliant_days=compliant,
                noncompliant_days=noncompliant,
                days_without_login=without,
                rate=compliant / counted if counted else None,
            )
        )
    rows.sort(key=lambda r: (r.rate is None, r.rate if r.rate is not None else 0.0, r.code))
    return rows


# ---------------------------------------------------------------------------------------------
# Database access

SITES_SQL = """
SELECT u.id, u.code, u.name
FROM unit_tree t
JOIN units u ON u.id = t.descendant_id
WHERE t.ancestor_id = %(ancestor)s AND u.level = 'township' AND u.active
ORDER BY u.code
"""
"""Active vaccination sites at or below a unit (closure table, so 杨陵区-style direct reports to
the province are found by their parent links, not by code prefix)."""

SITE_DAYS_SQL = """
WITH sites AS (
    SELECT u.id, u.code
    FROM unit_tree t
    JOIN units u ON u.id = t.descendant_id
    WHERE t.ancestor_id = %(ancestor)s AND u.level = 'township' AND u.active
),
days AS (
    SELECT d::date AS day
    FROM generate_series(%(start)s::date::timestamp, %(end)s::date::timestamp, interval '1 day') AS d
),
counted AS (
    SELECT e.unit_id, (e.ts AT TIME ZONE 'Asia/Shanghai')::date AS day,
           count(*) AS sign_ins, min(e.ts) AS first, max(e.ts) AS last
    FROM login_events e
    JOIN sites s ON s.id = e.unit_id
    WHERE e.success
      AND e.channel = ANY(%(channels)s::text[])
      AND e.ts >= (%(start)s::date::timestamp AT TIME ZONE 'Asia/Shanghai')
      AND e.ts < ((%(end)s::date + 1)::timestamp AT TIME ZONE 'Asia/Shanghai')
    GROUP BY 1, 2
)
SELECT s.id, d.day, coalesce(c.sign_ins, 0), c.first, c.last
FROM sites s
CROSS JOIN days d
LEFT JOIN counted c ON c.unit_id = s.id AND c.day = d.day
ORDER BY s.code, d.day
"""
"""Per active site below the unit and per Beijing day in [start, end]: count, first and last
successful sign-in on a counted channel whose login_events.unit_id is the site (the signer's unit
at sign-in time, so a county user's sign-in never counts for a site). Every (site, day) appears,
with 0 and NULLs when nobody signed in. The ts range is on Beijing midnights so the index on
(unit_id, ts) is used."""


def sites_under(conn: psycopg.Connection, ancestor_unit_id: int) -> list[Site]:
    """Active vaccination sites at or below ``ancestor_unit_id``, by code."""
    rows = conn.execute(SITES_SQL, {"ancestor": ancestor_unit_id}).fetchall()
    return [Site(unit_id=int(r[0]), code=str(r[1]), name=str(r[2])) for r in rows]


def site_days(conn: psycopg.Connection, ancestor_unit_id: int, start: date, end: date) -> list[SiteDay]:
    """Every (active site at or below ``ancestor_unit_id``, Beijing day in [start, end]), days
    without sign-ins included, ordered by site code then day. ``first``/``last`` are in Beijing
    time. Empty when ``start > end``."""
    params = {"ancestor": ancestor_unit_id, "start": start, "end": end, "channels": list(COUNTED_CHANNELS)}
    rows = conn.execute(SITE_DAYS_SQL, params).fetchall()
    return [
        site_day(
            unit_id=int(r[0]),
            day=r[1],
            sign_ins=int(r[2]),
            first=r[3].astimezone(BEIJING) if r[3] is not None else None,
            last=r[4].astimezone(BEIJING) if r[4] is not None else None,
        )
        for r in rows
    ]


def monthly_table(
    conn: psycopg.Connection, ancestor_unit_id: int, month: date, today: date | None = None
) -> list[MonthlyRow]:
    """The CM14 monthly table for every active site at or below ``ancestor_unit_id`` (a county, or
    a city or the province for all their sites), for the calendar month containing ``month``.

    ``today`` (default: today in Beijing) cuts the current month; see :func:`month_days`. Sorted by
    rate ascending, then code (see :func:`monthly_rows`).
    """
    days = month_days(month, today if today is not None else beijing_today())
    sites = sites_under(conn, ancestor_unit_id)
    records = site_days(conn, ancestor_unit_id, days[0], days[-1]) if days else []
    return monthly_rows(sites, days, records)
