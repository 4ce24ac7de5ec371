"""Terms the whole system shares, defined once: China's time zone and months, unit levels and
roles with their Chinese names, and when a temperature is out of range.

Why here: these were defined two to four times in different packages (the time zone under two
names, the month arithmetic twice, the out-of-range test in the alarm rules and in the trace),
and two definitions drift apart.
"""

from __future__ import annotations

from datetime import date, datetime
from typing import Literal
from zoneinfo import ZoneInfo

# China has one time zone and no daylight saving time since 1991; days and months of reports,
# logins and the ledger are Beijing days.
BEIJING = ZoneInfo("Asia/Shanghai")

Level = Literal["province", "city", "county", "township"]
Role = Literal["system_admin", "business_admin", "supervisor", "analyst"]

# The township level is where vaccination sites (接种单位) are; its level is named 乡级.
LEVEL_NAMES: dict[str, str] = {"province": "省级", "city": "市级", "county": "县级", "township": "乡级"}
ROLE_NAMES: dict[str, str] = {
    "system_admin": "系统管理员",
    "business_admin": "业务管理员",
    "supervisor": "督导（只读）",
    "analyst": "数据分析员",
}

# The longest page any list returns; a client pages on with ``before`` / ``offset``.
MAX_PAGE = 1000


def out_of_range(t: float, t_min: float | None, t_max: float) -> bool:
    """A reading exactly on a limit is in range; a compartment without a lower limit (a freezer)
    is only ever too warm."""
    return t > t_max or (t_min is not None and t < t_min)


def parse_month(text: str) -> date:
    """'YYYY-MM' → the month's first day; a Chinese ValueError otherwise."""
    try:
        year, mon = text.split("-")
        if len(year) != 4 or len(mon) != 2:
            raise ValueError(text)
        return date(int(year), int(mon), 1)
    except ValueError:
        raise ValueError(f"月份格式应为 YYYY-MM（如 2026-10），收到 {text!r}") from None


def next_month(month: date) -> date:
    return date(month.year + 1, 1, 1) if month.month == 12 else date(month.year, month.month + 1, 1)


def previous_month(month: date) -> date:
    return date(month.year - 1, 12, 1) if month.month == 1 else date(month.year, month.month - 1, 1)


def current_month(now: datetime) -> date:
    """The first day of ``now``'s month in Beijing."""
    return now.astimezone(BEIJING).date().replace(day=1)
