"""低产 (low-yield) and 低效 (low-efficiency) flags, and the low-yield share (docs/kpis.md).

Pure functions over per-device daily series: successful financial transactions, and the
available and scheduled time of each local day (from :mod:`rules.uptime`).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import date
from enum import StrEnum
from operator import attrgetter

from atmfleet.inventory import DeviceType
from rules.config import DaysCounted, LowYieldRules
from rules.fleet import InService, in_fleet


class YieldStatus(StrEnum):
    LOW = "low"  # 低产
    OK = "ok"
    EXEMPT = "exempt"  # ramp-up: commissioned less than ramp_up_days ago
    NOT_EVALUATED = "not_evaluated"  # no threshold for its type, or not in the fleet
    COVERAGE = "not_evaluated_coverage"  # fewer monitored days than min_monitored_days


@dataclass(frozen=True, slots=True)
class DeviceDays:
    """One device's daily series; index 0 is ``first_day`` (a local date)."""

    device_id: str
    type: DeviceType
    commissioned: date
    decommissioned: date | None
    first_day: date
    financial: Sequence[int]
    available_ms: Sequence[int]
    scheduled_ms: Sequence[int]


@dataclass(slots=True)
class YieldFlag:
    """A device's flags on a date (read only once made: not frozen, because a frozen
    dataclass takes several times as long to make, and a fleet makes 100,000)."""

    device_id: str
    on: date
    status: YieldStatus
    days_counted: int
    daily_average: float | None
    threshold: float | None
    uptime: float | None  # ΣA/ΣS over the window's days in the fleet
    low_efficiency: bool | None  # uptime below target; None when not evaluated or S is 0
    monitored_days: int = 0  # days in the fleet with monitored scheduled time

    @property
    def low_yield(self) -> bool:
        return self.status is YieldStatus.LOW

    @property
    def evaluated(self) -> bool:
        return self.status in (YieldStatus.LOW, YieldStatus.OK)

    @property
    def margin(self) -> float | None:
        """Average minus threshold (negative: low-yield); None when not evaluated."""
        if not self.evaluated or self.daily_average is None or self.threshold is None:
            return None
        return self.daily_average - self.threshold


@dataclass(slots=True)
class WindowSums:
    """What a flag is judged on: the sums over a device's days in the window and in the
    fleet that have monitored scheduled time (S > 0). Integers, so a sum is the same
    whatever the order its days are added in (in Python, or in SQL over kept days)."""

    monitored: int = 0  # days with S > 0
    available_ms: int = 0  # ΣA over those days
    scheduled_ms: int = 0  # ΣS over those days
    counted: int = 0  # the days counted for the average (in service, if the rules say so)
    financial: int = 0  # counted financial transactions over the counted days

    def add(self, available: int, scheduled: int, financial: int, in_service_only: bool) -> None:
        """One day (nothing if S <= 0: not a monitored day)."""
        if scheduled <= 0:
            return  # nothing scheduled the store can vouch for: not a monitored day
        self.monitored += 1
        self.available_ms += available
        self.scheduled_ms += scheduled
        if in_service_only and available <= 0:
            return
        self.counted += 1
        self.financial += financial


def window_bounds(
    commissioned: date, decommissioned: date | None, first_day: date, on: date, window: int, n: int
) -> tuple[int, int]:
    """``[lo, hi)``: the indexes (from ``first_day``, ``n`` days held) of the days of the
    window ending ``on`` (inclusive) that a device is in the fleet."""
    end = (on - first_day).days + 1  # exclusive index
    start = end - window
    first_in = (commissioned - first_day).days
    last_out = (decommissioned - first_day).days if decommissioned else end  # exclusive
    return max(start, first_in, 0), min(end, last_out, n)


def evaluate(days: DeviceDays, on: date, rules: LowYieldRules, uptime_target: float) -> YieldFlag:
    """Flags of one device on date ``on`` over the window ending that day (inclusive)."""
    lo, hi = window_bounds(
        days.commissioned, days.decommissioned, days.first_day, on, rules.window_days,
        len(days.financial),
    )  # fmt: skip
    sums = WindowSums()
    in_service_only = rules.days_counted is DaysCounted.IN_SERVICE
    fin = days.financial
    avail = days.available_ms
    sched = days.scheduled_ms
    for i in range(lo, hi):
        sums.add(avail[i], sched[i], fin[i], in_service_only)
    return flag_of(days.device_id, days, days.type, sums, on, rules, uptime_target)


def flag_of(
    device_id: str,
    dates: InService,
    type: DeviceType,
    sums: WindowSums,
    on: date,
    rules: LowYieldRules,
    uptime_target: float,
) -> YieldFlag:
    """The flags of a device (``dates``: its commissioning dates) from its window's sums."""
    return flag_maker(on, rules)(
        device_id, dates, type, sums.monitored, sums.available_ms, sums.scheduled_ms,
        sums.counted, sums.financial, uptime_target,
    )  # fmt: skip


#: ``make(device_id, dates, type, monitored, available_ms, scheduled_ms, counted,
#: financial, uptime_target)``: :func:`flag_of` with the sums as plain values.
FlagMaker = Callable[[str, InService, DeviceType, int, int, int, int, int, float], YieldFlag]


def flag_maker(on: date, rules: LowYieldRules) -> FlagMaker:
    """:func:`flag_of` on ``on`` under ``rules``, the rules read once for a fleet's
    devices, the window's sums given as plain values (no :class:`WindowSums` made)."""
    thresholds = rules.thresholds.get
    min_days = min(rules.min_monitored_days, rules.window_days)
    ramp_up = rules.ramp_up_days
    low, ok, exempt, not_evaluated, coverage = (
        YieldStatus.LOW, YieldStatus.OK, YieldStatus.EXEMPT, YieldStatus.NOT_EVALUATED,
        YieldStatus.COVERAGE,
    )  # fmt: skip

    def make(
        device_id: str,
        dates: InService,
        type: DeviceType,
        monitored: int,
        available: int,
        scheduled: int,
        counted: int,
        total: int,
        target: float,
    ) -> YieldFlag:
        uptime = available / scheduled if scheduled else None
        threshold = thresholds(type)
        average = total / counted if counted else None
        covered = monitored >= min_days
        fleet = in_fleet(dates, on)
        if not fleet:
            status = not_evaluated
        elif (on - dates.commissioned).days < ramp_up:
            status = exempt
        elif threshold is None:
            status = not_evaluated
        elif not covered:
            status = coverage
        elif average is None:
            status = not_evaluated  # monitored, but not one day in service
        else:
            status = low if average < threshold else ok
        # 低效 needs only the window's uptime: judged for every device in the fleet with
        # enough monitored days (during ramp-up too, whatever its type).
        low_eff = None if uptime is None or not (covered and fleet) else uptime < target
        return YieldFlag(
            device_id, on, status, counted, average, threshold, uptime, low_eff, monitored
        )

    return make


@dataclass(slots=True)
class Share:
    """Low-yield devices among the devices evaluated (low or ok) in a group."""

    low: int = 0
    evaluated: int = 0
    low_efficiency: int = 0
    exempt: int = 0
    not_evaluated_coverage: int = 0
    max_share: float = 0.05

    @property
    def share(self) -> float | None:
        return self.low / self.evaluated if self.evaluated else None

    @property
    def meets_target(self) -> bool | None:
        share = self.share
        return None if share is None else share <= self.max_share


def low_yield_share(
    flags: Iterable[YieldFlag], key: Callable[[str], str | None], max_share: float
) -> dict[str, Share]:
    """Low-yield share by group (sub-branch, tier, type, fleet: see ``uptime.dimension_key``).

    The flags are counted by (group, status, low-efficiency) in C first, then each count
    added to its group: the same counts, the groups in the order their first flag comes."""
    flags = flags if isinstance(flags, list) else list(flags)
    counts = Counter(
        zip(
            map(key, map(_DEVICE_ID, flags)),
            map(_STATUS, flags),
            map(_LOW_EFFICIENCY, flags),
            strict=True,
        )
    )
    out: dict[str, Share] = {}
    exempt, coverage, not_evaluated = (
        YieldStatus.EXEMPT, YieldStatus.COVERAGE, YieldStatus.NOT_EVALUATED,
    )  # fmt: skip
    low = YieldStatus.LOW
    for (group, status, low_eff), n in counts.items():
        if group is None:
            continue
        acc = out.get(group)
        if acc is None:
            acc = out[group] = Share(max_share=max_share)
        if status is exempt:
            acc.exempt += n
        elif status is coverage:
            acc.not_evaluated_coverage += n
        elif status is not not_evaluated:
            acc.evaluated += n
            if status is low:
                acc.low += n
        if low_eff:
            acc.low_efficiency += n
    return out


_DEVICE_ID = attrgetter("device_id")
_STATUS = attrgetter("status")
_LOW_EFFICIENCY = attrgetter("low_efficiency")
