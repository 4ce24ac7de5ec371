"""The monthly report's month and its pieces (analytics/report/maths.py), on small values
computed by hand: the Beijing calendar month, cut at now while current and final two days after its
end; and per piece of a compartment's month, the hours and readings expected and received and the silent hours."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta

import pytest
from reporthelp import NOW, OCT, ts

from analytics.report import maths
from analytics.report.build import final_months
from analytics.report.maths import Piece
from coldchain.core import terms

# ---------------------------------------------------------------------------------------------
# The month


def test_month_is_beijing_calendar_month() -> None:
    p = maths.month_period(OCT, NOW)
    assert p.start == datetime(2026, 9, 30, 16, 0, tzinfo=UTC)
    assert p.end == datetime(2026, 10, 31, 16, 0, tzinfo=UTC)
    assert p.cut == p.end and p.closed
    assert p.last_day == date(2026, 10, 31)
    assert p.label == "2026-10"


def test_current_month_is_cut_at_now_and_final_two_days_after_its_end() -> None:
    nov = maths.month_period(date(2026, 11, 1), NOW)
    assert nov.cut == NOW and not nov.closed
    assert not nov.keepable(NOW)
    oct_ = maths.month_period(OCT, NOW)
    assert oct_.keepable(oct_.end + timedelta(days=2))
    assert not oct_.keepable(oct_.end + timedelta(days=2) - timedelta(seconds=1))
    # 2026-11-30 23:00 Beijing is still November there, although December has begun in no zone yet.
    assert terms.current_month(datetime(2026, 11, 30, 16, 30, tzinfo=UTC)) == date(2026, 12, 1)
    assert terms.current_month(datetime(2026, 11, 30, 15, 30, tzinfo=UTC)) == date(2026, 11, 1)


def test_month_parsing_and_refusals() -> None:
    assert terms.parse_month("2026-02") == date(2026, 2, 1)
    for bad in ("2026-13", "2026-2", "26-02", "2026/02", ""):
        with pytest.raises(ValueError, match="月份格式"):
            terms.parse_month(bad)
    assert maths.month_problem(date(2026, 12, 1), NOW) == "2026-12 尚未到来，不能生成该月的报告"
    assert maths.month_problem(date(2014, 12, 1), NOW) is not None
    assert maths.month_problem(date(2026, 11, 1), NOW) is None
    assert terms.previous_month(date(2026, 1, 1)) == date(2025, 12, 1)
    assert terms.next_month(date(2026, 12, 1)) == date(2027, 1, 1)


def test_final_months_start_at_the_first_data_and_skip_the_grace_period() -> None:
    # 1 December 01:00 Beijing: November is not final yet, October is.
    early_december = datetime(2026, 11, 30, 17, 0, tzinfo=UTC)
    assert final_months(date(2026, 8, 1), early_december) == [date(2026, 8, 1), date(2026, 9, 1), OCT]
    assert final_months(date(2026, 8, 1), early_december, months_back=2) == [date(2026, 9, 1), OCT]
    assert final_months(None, early_december) == []
    assert final_months(date(2026, 12, 1), early_december) == []


# ---------------------------------------------------------------------------------------------
# Pieces: expected, received, silence (minutes out of range: the compartments', from the excursion
# spans — tests/analytics/test_report_director.py)


def piece(lo: datetime, hi: datetime) -> Piece:
    return Piece(key=0, probe_id=1, compartment_id=1, equipment_id=1, lo=lo, hi=hi)


def test_piece_hours_edges_and_expected_readings() -> None:
    p = piece(ts(5, 10, 20), ts(5, 13, 40))
    assert (p.hour_lo, p.hour_hi, p.whole_hours) == (ts(5, 11), ts(5, 13), 2)
    assert p.edges == [(ts(5, 10, 20), ts(5, 11)), (ts(5, 13), ts(5, 13, 40))]
    assert p.expected == 200.0
    inside = piece(ts(5, 10, 10), ts(5, 10, 50))
    assert inside.whole_hours == 0 and inside.edges == [(ts(5, 10, 10), ts(5, 10, 50))]
    whole = piece(ts(1, 0), ts(2, 0))
    assert whole.edges == [] and whole.whole_hours == 24 and whole.expected == 1440


def test_piece_figures_received_and_silence() -> None:
    p = piece(ts(1, 0, 30), ts(1, 3))
    # Two whole hours (01:00, 02:00) from the aggregate, one of them with data; the partial first
    # hour's readings counted one by one.
    f = maths.piece_figures(p, hourly_received=60, hours_with_data=1, edge_readings=25)
    assert (f.received, f.silent_hours, f.expected) == (85, 1, 150.0)
