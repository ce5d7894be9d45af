"""Service windows: parsing, and open time in the bank's local time."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from atmfleet.windows import ServiceWindow

SH = ZoneInfo("Asia/Shanghai")


def local(y: int, m: int, d: int, hh: int = 0, mm: int = 0) -> datetime:
    return datetime(y, m, d, hh, mm, tzinfo=SH)


class TestParse:
    @pytest.mark.parametrize("spec", ["24x7", "ALWAYS", " 24/7 ", "daily 00:00-24:00"])
    def test_always(self, spec: str) -> None:
        assert ServiceWindow.parse(spec).always

    @pytest.mark.parametrize(
        ("spec", "message"),
        [
            ("", "empty service window"),
            ("mon-fry 09:00-17:00", "'mon-fry' in 'mon-fry 09:00-17:00' is not a day"),
            ("mon-fri 9-17", "'9' in 'mon-fri 9-17' is not a time HH:MM"),
            ("mon-fri 09:00-25:00", "between 00:00 and 24:00"),
            ("mon-fri 09:00-09:00", "is empty"),
            ("mon-fri", "needs days and times"),
            ("mon-fri 09:00", "is not a time range"),
        ],
    )
    def test_bad_spec_says_what_is_wrong(self, spec: str, message: str) -> None:
        with pytest.raises(ValueError, match=message):
            ServiceWindow.parse(spec)

    def test_wrapping_day_range(self) -> None:
        w = ServiceWindow.parse("fri-mon 10:00-11:00")
        assert len(w.ranges) == 4


class TestOpenIntervals:
    def test_business_hours_one_local_day(self) -> None:
        w = ServiceWindow.parse("mon-fri 09:00-17:00")
        day = local(2026, 11, 27)  # a Friday
        got = w.open_intervals(day, day + timedelta(days=1), SH)
        assert got == [
            (datetime(2026, 11, 27, 1, 0, tzinfo=UTC), datetime(2026, 11, 27, 9, 0, tzinfo=UTC))
        ]

    def test_weekend_closed(self) -> None:
        w = ServiceWindow.parse("mon-fri 09:00-17:00")
        sat = local(2026, 11, 28)
        assert w.open_intervals(sat, sat + timedelta(days=1), SH) == []
        assert w.open_seconds(sat, sat + timedelta(days=2), SH) == 0

    def test_overnight_range_runs_into_next_day(self) -> None:
        w = ServiceWindow.parse("fri 22:00-06:00")
        sat = local(2026, 11, 28)
        assert w.open_seconds(sat, sat + timedelta(days=1), SH) == 6 * 3600
        fri = local(2026, 11, 27)
        assert w.open_seconds(fri, fri + timedelta(days=1), SH) == 2 * 3600

    def test_long_merged_range_seen_from_its_middle(self) -> None:
        w = ServiceWindow.parse("mon-fri 00:00-24:00")
        wed = local(2026, 11, 25)
        assert w.open_seconds(wed, wed + timedelta(days=1), SH) == 86400
        assert w.open_seconds(wed, wed + timedelta(days=7), SH) == 3 * 86400 + 2 * 86400

    def test_clipped_to_period(self) -> None:
        w = ServiceWindow.parse("daily 08:00-20:00")
        start = local(2026, 11, 27, 12)
        assert w.open_seconds(start, start + timedelta(hours=12), SH) == 8 * 3600

    def test_is_open(self) -> None:
        w = ServiceWindow.parse("mon-fri 09:00-17:00")
        assert w.is_open(local(2026, 11, 27, 9), SH)
        assert not w.is_open(local(2026, 11, 27, 17), SH)
        assert not w.is_open(local(2026, 11, 28, 12), SH)
