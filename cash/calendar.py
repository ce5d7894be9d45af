"""The cash calendar: the kind of each local day (rules ``cash.calendar``).

Kinds, most specific first: a holiday; the days just before a holiday (people draw cash
for it); a pay day (and the days after it, ``pay_day_span_days``); a normal day.
"""

from __future__ import annotations

import calendar as _cal
from datetime import date, timedelta

from rules.config import CashCalendar

NORMAL, PAY_DAY, PRE_HOLIDAY, HOLIDAY = 0, 1, 2, 3
KINDS = ("normal", "pay_day", "pre_holiday", "holiday")


def _pay_day(day: date, cal: CashCalendar) -> bool:
    for back in range(cal.pay_day_span_days):
        d = day - timedelta(days=back)
        end = _cal.monthrange(d.year, d.month)[1]
        if any(min(p, end) == d.day for p in cal.pay_days):
            return True
    return False


def day_kind(day: date, cal: CashCalendar) -> int:
    for h in cal.holidays:
        if h.first <= day <= h.last:
            return HOLIDAY
    for h in cal.holidays:
        if h.first - timedelta(days=cal.pre_holiday_days) <= day < h.first:
            return PRE_HOLIDAY
    return PAY_DAY if _pay_day(day, cal) else NORMAL
