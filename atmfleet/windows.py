"""Service windows: when a device is meant to serve customers, in the bank's local time.

Grammar (case-insensitive; clauses separated by ``;``)::

    24x7                                  always open (also: ``always``)
    mon-fri 08:30-17:30; sat,sun 09:00-16:00
    daily 07:00-22:00
    mon-fri 09:00-12:00,14:00-17:30       several ranges on the same days
    fri 22:00-06:00                       a range past midnight ends the next day
    daily 00:00-24:00                     24:00 is the end of the day

Time outside the window is not downtime: it is outside the scheduled time S.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from functools import lru_cache
from zoneinfo import ZoneInfo

DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
MINUTES_PER_WEEK = 7 * 24 * 60
ALWAYS_SPECS = ("24x7", "always", "24/7")

_TIME_RE = re.compile(r"^(\d{1,2}):(\d{2})$")


def _minutes(text: str, clause: str) -> int:
    match = _TIME_RE.match(text)
    if not match:
        raise ValueError(f"{text!r} in {clause!r} is not a time HH:MM")
    hours, minutes = int(match.group(1)), int(match.group(2))
    if minutes >= 60 or hours > 24 or (hours == 24 and minutes):
        raise ValueError(f"{text!r} in {clause!r} is not a time between 00:00 and 24:00")
    return hours * 60 + minutes


def _days(text: str, clause: str) -> list[int]:
    if text == "daily":
        return list(range(7))
    out: list[int] = []
    for part in text.split(","):
        bounds = part.split("-")
        if len(bounds) > 2 or any(b not in DAYS for b in bounds):
            raise ValueError(
                f"{part!r} in {clause!r} is not a day or day range; use daily or "
                f"{', '.join(DAYS)} (e.g. mon-fri or sat,sun)"
            )
        first, last = DAYS.index(bounds[0]), DAYS.index(bounds[-1])
        day = first
        while True:
            out.append(day)
            if day == last:
                break
            day = (day + 1) % 7
    return out


@dataclass(frozen=True)
class ServiceWindow:
    """A weekly schedule: sorted, merged ``(start, end)`` minute-of-week ranges."""

    spec: str
    ranges: tuple[tuple[int, int], ...]

    @property
    def always(self) -> bool:
        return self.ranges == ((0, MINUTES_PER_WEEK),)

    @classmethod
    def parse(cls, spec: str) -> ServiceWindow:
        """Parse a window; ``ValueError`` says which part is wrong and what is allowed."""
        return _parse(spec.strip().lower())

    def is_open(self, at: datetime, tz: ZoneInfo) -> bool:
        if self.always:
            return True
        local = at.astimezone(tz)
        minute = local.weekday() * 1440 + local.hour * 60 + local.minute
        return any(start <= minute < end for start, end in self.ranges)

    def open_intervals(
        self, start: datetime, end: datetime, tz: ZoneInfo
    ) -> list[tuple[datetime, datetime]]:
        """The open parts of ``[start, end)`` as UTC datetimes, merged and sorted."""
        if end <= start:
            return []
        if self.always:
            return [(start.astimezone(UTC), end.astimezone(UTC))]
        # A merged range may start up to a week before ``start`` (e.g. mon-fri 00:00-24:00).
        first_day = start.astimezone(tz).date() - timedelta(days=7)
        last_day = end.astimezone(tz).date()
        out: list[tuple[datetime, datetime]] = []
        day = first_day
        while day <= last_day:
            for lo, hi in _day_ranges(self.ranges, day.weekday()):
                a = _local(day, lo, tz)
                b = _local(day, hi, tz)
                a, b = max(a, start), min(b, end)
                if a < b:
                    if out and out[-1][1] >= a:
                        out[-1] = (out[-1][0], max(out[-1][1], b))
                    else:
                        out.append((a, b))
            day += timedelta(days=1)
        return [(a.astimezone(UTC), b.astimezone(UTC)) for a, b in out]

    def open_seconds(self, start: datetime, end: datetime, tz: ZoneInfo) -> int:
        return sum(int((b - a).total_seconds()) for a, b in self.open_intervals(start, end, tz))


def _local(day: date, minute: int, tz: ZoneInfo) -> datetime:
    """Local wall time ``minute`` minutes after midnight of ``day`` (may pass midnight)."""
    extra_days, minute = divmod(minute, 1440)
    d = day + timedelta(days=extra_days)
    return datetime.combine(d, time(minute // 60, minute % 60), tzinfo=tz)


@lru_cache(maxsize=64)
def _day_ranges(ranges: tuple[tuple[int, int], ...], weekday: int) -> tuple[tuple[int, int], ...]:
    """Ranges starting on ``weekday``, as minutes from that day's midnight (end may pass 1440)."""
    lo_day, hi_day = weekday * 1440, (weekday + 1) * 1440
    out = []
    for start, end in ranges:
        if lo_day <= start < hi_day:
            out.append((start - lo_day, end - lo_day))
    return tuple(out)


@lru_cache(maxsize=1024)
def _parse(spec: str) -> ServiceWindow:
    if spec in ALWAYS_SPECS:
        return ServiceWindow(spec, ((0, MINUTES_PER_WEEK),))
    if not spec:
        raise ValueError("empty service window; use 24x7 or e.g. 'mon-fri 09:00-17:00'")
    raw: list[tuple[int, int]] = []
    for clause in (c.strip() for c in spec.split(";")):
        if not clause:
            continue
        parts = clause.split(None, 1)
        if len(parts) != 2:
            raise ValueError(f"clause {clause!r} needs days and times, e.g. 'mon-fri 09:00-17:00'")
        days = _days(parts[0], clause)
        for rng in parts[1].replace(" ", "").split(","):
            bounds = rng.split("-")
            if len(bounds) != 2:
                raise ValueError(f"{rng!r} in {clause!r} is not a time range HH:MM-HH:MM")
            lo, hi = _minutes(bounds[0], clause), _minutes(bounds[1], clause)
            if lo == hi:
                raise ValueError(f"{rng!r} in {clause!r} is empty")
            if hi < lo:
                hi += 1440  # past midnight: ends the next day
            for day in days:
                raw.append((day * 1440 + lo, day * 1440 + hi))
    # Unfold the week's wrap (Sunday past midnight -> Monday) and merge.
    pieces: list[tuple[int, int]] = []
    for lo, hi in raw:
        if hi > MINUTES_PER_WEEK:
            pieces.append((lo, MINUTES_PER_WEEK))
            pieces.append((0, hi - MINUTES_PER_WEEK))
        else:
            pieces.append((lo, hi))
    pieces.sort()
    merged: list[tuple[int, int]] = []
    for lo, hi in pieces:
        if merged and lo <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], hi))
        else:
            merged.append((lo, hi))
    return ServiceWindow(spec, tuple(merged))
