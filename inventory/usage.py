"""What a vaccination site uses (VT7): each vaccination, by scanned vial or by lot, and the
end-of-day usage booking, which may never be fewer vials than the day's recorded doses need.

The ledger reaches the person vaccinated only through the immunisation system's pseudonymous
reference (VT1 without personal data): an ID card or phone number is refused at the door.
"""

from __future__ import annotations

import re
from datetime import date, datetime, time, timedelta
from typing import Any

import psycopg

from coldchain.core.db import fetch_all, fetch_one
from coldchain.core.errors import Refused, invalid
from coldchain.core.sqlparts import Filters, in_scope
from coldchain.core.terms import BEIJING
from inventory import packages
from inventory.lots import load_lot
from inventory.posting import beijing_day, load_node, post
from inventory.rules import check_not_expired, check_usage_unit, vials_needed


def end_of_day(day: date, now: datetime) -> datetime:
    """The instant a day's usage is booked at: that day's end in China, or now if the day is today."""
    end = datetime.combine(day + timedelta(days=1), time(0), BEIJING) - timedelta(seconds=1)
    return min(end, now)


_DAY_SO_FAR = """
SELECT (SELECT count(*) FROM vaccinations WHERE unit_id = %(u)s AND lot_id = %(l)s
          AND vaccinated_at >= %(s)s AND vaccinated_at < %(e)s) AS doses,
       (SELECT coalesce(-sum(quantity), 0) FROM stock_movements WHERE unit_id = %(u)s AND lot_id = %(l)s
          AND kind = 'usage' AND occurred_at >= %(s)s AND occurred_at < %(e)s) AS booked
"""


def book_day_usage(
    conn: psycopg.Connection, user_id: int, unit_id: int, day: date, lines: dict[int, int], now: datetime
) -> list[dict[str, Any]]:
    """The end-of-day usage booking (VT7): never fewer vials than the day's recorded doses need."""
    check_usage_unit(load_node(conn, unit_id))
    if day > now.astimezone(BEIJING).date():
        raise invalid("不能登记未来日期的使用")
    at = end_of_day(day, now)
    start = datetime.combine(day, time(0), BEIJING)
    out = []
    for lot_id, vials in sorted(lines.items()):
        lot = load_lot(conn, lot_id)
        check_not_expired("usage", lot["expiry_date"], day)
        done = fetch_one(conn, _DAY_SO_FAR, {"u": unit_id, "l": lot_id, "s": start, "e": start + timedelta(days=1)})
        assert done is not None
        need = vials_needed(done["doses"], lot["doses_per_vial"])
        if done["booked"] + vials < need:
            raise Refused(
                422,
                "usage_below_doses",
                f"批号 {lot['lot_no']} 当日接种 {done['doses']} 人次，至少需使用 {need} 支，"
                f"已登记 {done['booked']} 支，本次 {vials} 支",
            )
        out.append(post(conn, "usage", unit_id, lot_id, -vials, at, user_id, note=f"{day.isoformat()} 接种使用"))
    return out


_ID_NUMBER = re.compile(r"^\d{17}[\dXx]$|^\d{15}$")
_PHONE = re.compile(r"^1\d{10}$")


def check_vaccinee_ref(ref: str) -> None:
    """The ledger may reach the person but must not hold who they are (VT1 without personal data)."""
    if _ID_NUMBER.match(ref):
        raise Refused(422, "personal_data", "受种者编号看起来是身份证号：台账只接收接种信息系统的化名编号")
    if _PHONE.match(ref):
        raise Refused(422, "personal_data", "受种者编号看起来是手机号：台账只接收接种信息系统的化名编号")


def record_vaccination(
    conn: psycopg.Connection,
    user_id: int,
    unit_id: int,
    vaccinated_at: datetime,
    vaccinee_ref: str,
    *,
    lot_id: int | None = None,
    code: str | None = None,
    dose_no: int | None = None,
) -> dict[str, Any]:
    """One dose given here, of a lot this unit holds; a scanned vial is marked used with it."""
    check_vaccinee_ref(vaccinee_ref)
    check_usage_unit(load_node(conn, unit_id))
    canonical = None
    if code is not None:
        canonical, lot_id = packages.use_vial(conn, code, unit_id, lot_id, vaccinated_at)
    if lot_id is None:
        raise invalid("须提供批号或扫描疫苗码")
    lot = load_lot(conn, lot_id)
    check_not_expired("vaccination", lot["expiry_date"], beijing_day(vaccinated_at))
    held = fetch_one(
        conn, "SELECT 1 FROM stock_balances WHERE unit_id = %(u)s AND lot_id = %(l)s", {"u": unit_id, "l": lot_id}
    )
    if held is None:
        raise Refused(422, "not_held", f"本单位从未入库批号 {lot['lot_no']}")
    row = fetch_one(
        conn,
        """INSERT INTO vaccinations (unit_id, lot_id, code, vaccinated_at, vaccinee_ref, dose_no, recorded_by)
           VALUES (%(u)s, %(l)s, %(c)s, %(at)s, %(ref)s, %(dose)s, %(user)s) RETURNING *""",
        {
            "u": unit_id,
            "l": lot_id,
            "c": canonical,
            "at": vaccinated_at,
            "ref": vaccinee_ref,
            "dose": dose_no,
            "user": user_id,
        },
    )
    assert row is not None
    return row


def list_vaccinations(
    conn: psycopg.Connection,
    scope: int,
    *,
    unit_id: int | None,
    lot_id: int | None,
    vaccinee_ref: str | None,
    since: datetime | None,
    until: datetime | None,
    limit: int,
    offset: int,
) -> list[dict[str, Any]]:
    """Vaccinations in the jurisdiction of ``scope``, oldest first, filtered by what is given."""
    where = (
        Filters({"scope": scope, "limit": limit, "offset": offset}, in_scope("unit_id"))
        .eq("unit_id", "unit", unit_id)
        .eq("lot_id", "lot", lot_id)
        .eq("vaccinee_ref", "ref", vaccinee_ref)
        .at_least("vaccinated_at", "since", since)
        .before("vaccinated_at", "until", until)
    )
    return fetch_all(
        conn,
        where.query(
            """SELECT id, unit_id, lot_id, code, vaccinated_at, vaccinee_ref, dose_no FROM vaccinations
               WHERE {where} ORDER BY vaccinated_at, id LIMIT %(limit)s OFFSET %(offset)s"""
        ),
        where.params,
    )
