"""CM14 login compliance: two sign-ins a Beijing day at least 6 hours apart, per vaccination site,
and the monthly table per county — the rule as pure functions, and the figures from a real database."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from zoneinfo import ZoneInfo

import psycopg
import pytest

from analytics.logins import (
    COUNTED_CHANNELS,
    MIN_GAP,
    MonthlyRow,
    Site,
    SiteDay,
    day_compliant,
    month_days,
    monthly_rows,
    monthly_table,
    site_day,
    site_days,
)
from coldchain.core import db

BJ = ZoneInfo("Asia/Shanghai")


def bj(y: int, mo: int, d: int, h: int, mi: int = 0, s: int = 0) -> datetime:
    return datetime(y, mo, d, h, mi, s, tzinfo=BJ)


def utc(y: int, mo: int, d: int, h: int, mi: int = 0, s: int = 0) -> datetime:
    return datetime(y, mo, d, h, mi, s, tzinfo=UTC)


# ---------------------------------------------------------------------------------------------
# Pure logic


def test_constants() -> None:
    assert timedelta(hours=6) == MIN_GAP
    assert COUNTED_CHANNELS == ("web", "wechat")


def test_exactly_six_hours_is_compliant_one_second_less_is_not() -> None:
    assert day_compliant([bj(2026, 11, 3, 8), bj(2026, 11, 3, 14)]) is True
    assert day_compliant([bj(2026, 11, 3, 8), bj(2026, 11, 3, 13, 59, 59)]) is False


def test_single_or_no_sign_in_is_not_compliant() -> None:
    assert day_compliant([bj(2026, 11, 3, 8)]) is False
    assert day_compliant([]) is False
    assert day_compliant([bj(2026, 11, 3, 8), bj(2026, 11, 3, 8)]) is False


def test_only_first_and_last_need_the_gap_and_order_does_not_matter() -> None:
    assert day_compliant([bj(2026, 11, 3, 8), bj(2026, 11, 3, 11), bj(2026, 11, 3, 14)]) is True
    assert day_compliant([bj(2026, 11, 3, 14), bj(2026, 11, 3, 8), bj(2026, 11, 3, 11)]) is True
    assert day_compliant([bj(2026, 11, 3, 8), bj(2026, 11, 3, 11), bj(2026, 11, 3, 13)]) is False


def test_site_day_verdict_uses_first_and_last() -> None:
    day = date(2026, 11, 3)
    assert site_day(1, day, 2, bj(2026, 11, 3, 8), bj(2026, 11, 3, 14)).compliant is True
    assert site_day(1, day, 5, bj(2026, 11, 3, 8), bj(2026, 11, 3, 13)).compliant is False
    assert site_day(1, day, 1, bj(2026, 11, 3, 8), bj(2026, 11, 3, 8)).compliant is False
    assert site_day(1, day, 0, None, None) == SiteDay(1, day, 0, None, None, False)


def test_month_days_past_current_future() -> None:
    february = [date(2026, 2, 1) + timedelta(days=i) for i in range(28)]
    assert month_days(date(2026, 2, 15), date(2026, 11, 10)) == february
    assert len(month_days(date(2028, 2, 1), date(2028, 12, 31))) == 29
    assert month_days(date(2026, 11, 20), date(2026, 11, 3)) == [date(2026, 11, d) for d in (1, 2, 3)]
    assert month_days(date(2026, 12, 1), date(2026, 11, 30)) == []
    assert len(month_days(date(2026, 12, 1), date(2026, 12, 31))) == 31


def test_monthly_rows_counts_rates_and_order() -> None:
    days = [date(2026, 11, 1), date(2026, 11, 2), date(2026, 11, 3), date(2026, 11, 4)]
    sites = [Site(1, "6101130001", "甲"), Site(2, "6101130002", "乙"), Site(3, "6101130003", "丙")]
    ok = (bj(2026, 11, 1, 8), bj(2026, 11, 1, 15))
    records = [
        SiteDay(1, days[0], 2, *ok, True),
        SiteDay(1, days[1], 1, ok[0], ok[0], False),
        SiteDay(1, days[2], 0, None, None, False),
        SiteDay(2, days[0], 2, *ok, True),
        SiteDay(2, days[1], 2, *ok, True),
        SiteDay(2, days[2], 3, *ok, True),
        SiteDay(2, date(2026, 11, 5), 2, *ok, True),  # outside the days: ignored
        SiteDay(9, days[0], 2, *ok, True),  # not a listed site: ignored
    ]
    assert monthly_rows(sites, days, records) == [
        MonthlyRow(3, "6101130003", "丙", 4, 0, 0, 4, 0.0),
        MonthlyRow(1, "6101130001", "甲", 4, 1, 1, 2, 0.25),
        MonthlyRow(2, "6101130002", "乙", 4, 3, 0, 1, 0.75),
    ]
    assert monthly_rows(sites[:1], [], records) == [MonthlyRow(1, "6101130001", "甲", 0, 0, 0, 0, None)]


# ---------------------------------------------------------------------------------------------
# Against the database


@pytest.fixture
def conn(db_url: str) -> Iterator[psycopg.Connection]:
    with db.connect(db_url, autocommit=True) as c:
        yield c


def _unit(conn: psycopg.Connection, code: str, name: str, level: str, parent: int | None, active: bool = True) -> int:
    row = conn.execute(
        "INSERT INTO units (code, name, level, parent_id, active) VALUES (%s, %s, %s, %s, %s) RETURNING id",
        (code, name, level, parent, active),
    ).fetchone()
    assert row is not None
    return int(row[0])


def _user(conn: psycopg.Connection, username: str, unit: int) -> int:
    row = conn.execute(
        "INSERT INTO users (username, real_name, unit_id, role) "
        "VALUES (%s, '测试用户', %s, 'business_admin') RETURNING id",
        (username, unit),
    ).fetchone()
    assert row is not None
    return int(row[0])


class World:
    def __init__(self, conn: psycopg.Connection) -> None:
        self.conn = conn
        self.province = _unit(conn, "6100000000", "陕西省疾控", "province", None)
        self.xian = _unit(conn, "6101000000", "西安市疾控", "city", self.province)
        self.yanta = _unit(conn, "6101130000", "雁塔区疾控", "county", self.xian)
        self.s1 = _unit(conn, "6101130001", "电子城街道社区卫生服务中心", "township", self.yanta)
        self.s2 = _unit(conn, "6101130002", "小寨路街道社区卫生服务中心", "township", self.yanta)
        self.s3 = _unit(conn, "6101130003", "曲江街道社区卫生服务中心", "township", self.yanta)
        self.closed = _unit(conn, "6101130009", "已撤销接种点", "township", self.yanta, active=False)
        self.beilin = _unit(conn, "6101030000", "碑林区疾控", "county", self.xian)
        self.other = _unit(conn, "6101030001", "张家村街道社区卫生服务中心", "township", self.beilin)
        self.users = {
            self.s1: _user(conn, "s1user", self.s1),
            self.s2: _user(conn, "s2user", self.s2),
            self.closed: _user(conn, "closeduser", self.closed),
            self.other: _user(conn, "otheruser", self.other),
            self.yanta: _user(conn, "yantauser", self.yanta),
        }

    def login(self, unit: int, ts: datetime, channel: str = "web", success: bool = True) -> None:
        user = self.users[unit]
        self.conn.execute(
            "INSERT INTO login_events (user_id, unit_id, username, ts, channel, success, reason) "
            "VALUES (%s, %s, (SELECT username FROM users WHERE id = %s), %s, %s, %s, %s)",
            (user, unit, user, ts, channel, success, None if success else "密码错误"),
        )


@pytest.fixture
def world(conn: psycopg.Connection) -> World:
    return World(conn)


def _by_day(records: list[SiteDay], unit: int) -> dict[date, SiteDay]:
    return {r.day: r for r in records if r.unit_id == unit}


def test_only_successful_staff_sign_ins_of_the_site_count(conn: psycopg.Connection, world: World) -> None:
    d = date(2026, 11, 3)
    # Nov 3, site 1: web 08:00 and WeChat 14:00 count; api, failed and the county user's do not.
    world.login(world.s1, bj(2026, 11, 3, 8), "web")
    world.login(world.s1, bj(2026, 11, 3, 14), "wechat")
    world.login(world.s1, bj(2026, 11, 3, 20), "api")
    world.login(world.s1, bj(2026, 11, 3, 21), "web", success=False)
    # Site 2: one real sign-in; api and a failed one 8 hours later would make it compliant if counted.
    world.login(world.s2, bj(2026, 11, 3, 8), "web")
    world.login(world.s2, bj(2026, 11, 3, 16), "api")
    world.login(world.s2, bj(2026, 11, 3, 17), "wechat", success=False)
    # The county's user signing in at 18:00 does not count for any site.
    world.login(world.yanta, bj(2026, 11, 3, 18), "web")

    records = site_days(conn, world.yanta, d, d)
    assert [(r.unit_id, r.day) for r in records] == [(world.s1, d), (world.s2, d), (world.s3, d)]
    s1, s2, s3 = records
    assert s1 == SiteDay(world.s1, d, 2, bj(2026, 11, 3, 8), bj(2026, 11, 3, 14), True)
    assert s2 == SiteDay(world.s2, d, 1, bj(2026, 11, 3, 8), bj(2026, 11, 3, 8), False)
    assert s3 == SiteDay(world.s3, d, 0, None, None, False)


def test_one_second_short_of_six_hours_in_the_database(conn: psycopg.Connection, world: World) -> None:
    world.login(world.s1, bj(2026, 11, 3, 8), "web")
    world.login(world.s1, bj(2026, 11, 3, 13, 59, 59), "wechat")
    world.login(world.s1, bj(2026, 11, 4, 8), "wechat")
    world.login(world.s1, bj(2026, 11, 4, 10), "web")
    world.login(world.s1, bj(2026, 11, 4, 14), "web")
    days = _by_day(site_days(conn, world.yanta, date(2026, 11, 3), date(2026, 11, 4)), world.s1)
    assert (days[date(2026, 11, 3)].sign_ins, days[date(2026, 11, 3)].compliant) == (2, False)
    assert (days[date(2026, 11, 4)].sign_ins, days[date(2026, 11, 4)].compliant) == (3, True)


def test_days_are_beijing_days(conn: psycopg.Connection, world: World) -> None:
    world.login(world.s1, bj(2026, 11, 3, 10))  # 02:00 UTC Nov 3
    world.login(world.s1, bj(2026, 11, 3, 23, 30))  # 15:30 UTC Nov 3 → Beijing Nov 3
    world.login(world.s1, bj(2026, 11, 4, 0, 10))  # 16:10 UTC Nov 3 → Beijing Nov 4
    world.login(world.s1, bj(2026, 11, 5, 7, 59))  # 23:59 UTC Nov 4 → Beijing Nov 5

    days = _by_day(site_days(conn, world.yanta, date(2026, 11, 3), date(2026, 11, 5)), world.s1)
    nov3, nov4, nov5 = days[date(2026, 11, 3)], days[date(2026, 11, 4)], days[date(2026, 11, 5)]
    assert (nov3.sign_ins, nov3.compliant) == (2, True)
    assert (nov3.first, nov3.last) == (utc(2026, 11, 3, 2), utc(2026, 11, 3, 15, 30))
    assert (nov4.sign_ins, nov4.first, nov4.compliant) == (1, utc(2026, 11, 3, 16, 10), False)
    assert nov5.sign_ins == 1
    assert nov3.first is not None and nov3.first.utcoffset() == timedelta(hours=8)

    # A range of a single day takes exactly that Beijing day's sign-ins.
    (only_nov4,) = site_days(conn, world.s1, date(2026, 11, 4), date(2026, 11, 4))
    assert (only_nov4.day, only_nov4.sign_ins, only_nov4.first) == (date(2026, 11, 4), 1, bj(2026, 11, 4, 0, 10))
    (only_nov3,) = site_days(conn, world.s1, date(2026, 11, 3), date(2026, 11, 3))
    assert only_nov3.sign_ins == 2


def test_every_site_and_day_appears_only_active_sites_below(conn: psycopg.Connection, world: World) -> None:
    world.login(world.other, bj(2026, 11, 2, 8))
    world.login(world.closed, bj(2026, 11, 2, 8))
    records = site_days(conn, world.yanta, date(2026, 11, 1), date(2026, 11, 5))
    assert len(records) == 15
    assert {r.unit_id for r in records} == {world.s1, world.s2, world.s3}
    assert all(r.sign_ins == 0 and r.first is None and r.last is None and not r.compliant for r in records)
    assert [r.day for r in records if r.unit_id == world.s3] == [date(2026, 11, d) for d in range(1, 6)]
    assert site_days(conn, world.yanta, date(2026, 11, 5), date(2026, 11, 4)) == []
    assert len(site_days(conn, world.xian, date(2026, 11, 1), date(2026, 11, 1))) == 4


def _month_scenario(world: World) -> None:
    # Site 1: compliant Nov 3 and Nov 5, a single sign-in on Nov 4, compliant Nov 12 (after "today").
    world.login(world.s1, bj(2026, 11, 3, 10))
    world.login(world.s1, bj(2026, 11, 3, 23, 30))
    world.login(world.s1, bj(2026, 11, 4, 0, 10))
    world.login(world.s1, bj(2026, 11, 5, 8))
    world.login(world.s1, bj(2026, 11, 5, 14), "wechat")
    world.login(world.s1, bj(2026, 11, 12, 8))
    world.login(world.s1, bj(2026, 11, 12, 16))
    # Site 2: compliant every day of November.
    for day in range(1, 31):
        world.login(world.s2, bj(2026, 11, day, 8, 30))
        world.login(world.s2, bj(2026, 11, day, 17), "wechat")
    # October and December sign-ins must not leak into November.
    world.login(world.s1, bj(2026, 10, 31, 8))
    world.login(world.s1, bj(2026, 10, 31, 23, 59))
    world.login(world.s1, bj(2026, 12, 1, 0, 0))
    world.login(world.s1, bj(2026, 12, 1, 7))
    # Another county's site, compliant: never in 雁塔区's table.
    world.login(world.other, bj(2026, 11, 3, 8))
    world.login(world.other, bj(2026, 11, 3, 18))


def test_monthly_table_current_month_is_cut_at_today(conn: psycopg.Connection, world: World) -> None:
    _month_scenario(world)
    rows = monthly_table(conn, world.yanta, date(2026, 11, 1), today=date(2026, 11, 10))
    assert rows == [
        MonthlyRow(world.s3, "6101130003", "曲江街道社区卫生服务中心", 10, 0, 0, 10, 0.0),
        MonthlyRow(world.s1, "6101130001", "电子城街道社区卫生服务中心", 10, 2, 1, 7, 0.2),
        MonthlyRow(world.s2, "6101130002", "小寨路街道社区卫生服务中心", 10, 10, 0, 0, 1.0),
    ]


def test_monthly_table_past_month_counts_every_day(conn: psycopg.Connection, world: World) -> None:
    _month_scenario(world)
    rows = {r.code: r for r in monthly_table(conn, world.yanta, date(2026, 11, 17), today=date(2026, 12, 5))}
    assert set(rows) == {"6101130001", "6101130002", "6101130003"}
    s1, s2, s3 = rows["6101130001"], rows["6101130002"], rows["6101130003"]
    assert (s1.days, s1.compliant_days, s1.noncompliant_days, s1.days_without_login) == (30, 3, 1, 26)
    assert s1.rate == pytest.approx(0.1)
    assert (s2.days, s2.compliant_days, s2.rate) == (30, 30, 1.0)
    assert (s3.days, s3.days_without_login, s3.rate) == (30, 30, 0.0)


def test_monthly_table_for_a_city_includes_all_its_counties(conn: psycopg.Connection, world: World) -> None:
    _month_scenario(world)
    rows = monthly_table(conn, world.xian, date(2026, 11, 1), today=date(2026, 11, 10))
    assert [r.code for r in rows] == ["6101130003", "6101030001", "6101130001", "6101130002"]
    other = rows[1]
    assert (other.days, other.compliant_days, other.days_without_login, other.rate) == (10, 1, 9, 0.1)
    assert [r.code for r in monthly_table(conn, world.province, date(2026, 11, 1), today=date(2026, 11, 10))] == [
        r.code for r in rows
    ]


def test_monthly_table_future_month_has_no_days_and_no_rate(conn: psycopg.Connection, world: World) -> None:
    _month_scenario(world)
    rows = monthly_table(conn, world.yanta, date(2026, 12, 1), today=date(2026, 11, 30))
    assert [(r.code, r.days, r.days_without_login, r.rate) for r in rows] == [
        ("6101130001", 0, 0, None),
        ("6101130002", 0, 0, None),
        ("6101130003", 0, 0, None),
    ]


def test_monthly_table_defaults_to_beijing_today(conn: psycopg.Connection, world: World) -> None:
    rows = monthly_table(conn, world.yanta, date(2020, 1, 1))
    assert [(r.days, r.days_without_login) for r in rows] == [(31, 31)] * 3
