"""The clock of the monthly report tests (tests/analytics/test_report_month.py,
test_monthly_report.py): "now" late in November 2026, the October being reported on, and moments in
it.
"""

from __future__ import annotations

from datetime import UTC, date, datetime

NOW = datetime(2026, 11, 24, 8, 0, tzinfo=UTC)
OCT = date(2026, 10, 1)


def ts(day: int, hour: int, minute: int = 0, month: int = 10) -> datetime:
    return datetime(2026, month, day, hour, minute, tzinfo=UTC)
