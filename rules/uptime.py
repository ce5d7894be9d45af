"""开机率: scheduled time S, available time A and downtime by cause (docs/kpis.md, "Uptime").

Pure functions over a device's timeline (:mod:`rules.timeline`) and its scheduled spans
(service window ∩ period ∩ time in the fleet), all in integer milliseconds. Both views
are computed in one sweep: business (the bank's 开机率) and technical (vendor
assessment: causes outside the vendor's control taken out of S). Roll-ups add A and S;
a ratio is never averaged.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, time, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from atmfleet.inventory import Device, Inventory
from atmfleet.windows import ServiceWindow
from rules.config import Rules, UnknownTime
from rules.labels import CAUSES, Label
from rules.timeline import LABELS, Interval, Span, label_code, ms


@dataclass(frozen=True, slots=True)
class UptimePolicy:
    """The rules that decide S and A, resolved once for speed."""

    business_excluded: frozenset[Label] = frozenset()
    technical_excluded: frozenset[Label] = frozenset(
        {Label.CASH_OUT, Label.DEPOSIT_FULL, Label.COMMUNICATIONS, Label.POWER, Label.CLOSED}
    )
    planned_excluded: bool = True
    planned_cap_ms: int | None = None  # per call (one local day)
    unknown_time: UnknownTime = UnknownTime.EXCLUDE

    @classmethod
    def from_rules(cls, rules: Rules) -> UptimePolicy:
        cap = rules.planned_maintenance.max_excluded_s_per_day
        return cls(
            business_excluded=frozenset(rules.uptime.business_excluded_causes),
            technical_excluded=frozenset(rules.uptime.technical_excluded_causes),
            planned_excluded=rules.planned_maintenance.excluded,
            planned_cap_ms=None if cap is None else cap * 1000,
            unknown_time=rules.uptime.unknown_time,
        )


@dataclass(slots=True)
class Uptime:
    """Times (ms) of one device, or of a roll-up, over a period.

    ``by_label`` is the time inside the window (period ∩ service window ∩ in the fleet)
    by label; ``scheduled_ms``/``available_ms`` are S and A of the business view,
    ``tech_scheduled_ms``/``tech_available_ms`` of the technical view; ``devices`` how
    many devices a roll-up holds.
    """

    by_label: dict[Label, int] = field(default_factory=dict)
    scheduled_ms: int = 0
    available_ms: int = 0
    tech_scheduled_ms: int = 0
    tech_available_ms: int = 0
    planned_excluded_ms: int = 0
    monitored_ms: int = 0  # the part of S the store holds evidence about
    devices: int = 0

    @property
    def window_ms(self) -> int:
        return sum(self.by_label.values())

    @property
    def unknown_ms(self) -> int:
        return self.by_label.get(Label.UNKNOWN, 0)

    @property
    def coverage(self) -> float | None:
        """Monitored S / scheduled S (scheduled S = monitored S + unknown time in the
        window); None when nothing was scheduled."""
        scheduled = self.monitored_ms + self.unknown_ms
        return self.monitored_ms / scheduled if scheduled else None

    @property
    def has_data(self) -> bool:
        """S > 0: a ratio exists (otherwise "no data": never ranked, never compared)."""
        return self.scheduled_ms > 0

    @property
    def ratio(self) -> float | None:
        """Business 开机率 A/S; None ("no data") when S is 0."""
        return self.available_ms / self.scheduled_ms if self.scheduled_ms else None

    @property
    def tech_ratio(self) -> float | None:
        return self.tech_available_ms / self.tech_scheduled_ms if self.tech_scheduled_ms else None

    @property
    def down_ms(self) -> int:
        """Business downtime: S - A."""
        return self.scheduled_ms - self.available_ms

    def down_by_cause(self) -> dict[Label, int]:
        """Time in the window by downtime cause (planned: only the part counted as down)."""
        out = {c: self.by_label.get(c, 0) for c in CAUSES}
        out[Label.PLANNED] -= self.planned_excluded_ms
        return out

    def add(self, other: Uptime) -> None:
        mine = self.by_label
        get = mine.get
        for label, value in other.by_label.items():
            mine[label] = get(label, 0) + value
        self.scheduled_ms += other.scheduled_ms
        self.available_ms += other.available_ms
        self.tech_scheduled_ms += other.tech_scheduled_ms
        self.tech_available_ms += other.tech_available_ms
        self.planned_excluded_ms += other.planned_excluded_ms
        self.monitored_ms += other.monitored_ms


def label_totals(timeline: Sequence[Interval], spans: Sequence[Span]) -> dict[Label, int]:
    """Milliseconds of each label inside ``spans`` (both sorted and non-overlapping)."""
    totals: dict[Label, int] = {}
    j = 0
    n = len(timeline)
    for s0, s1 in spans:
        while j < n and timeline[j][1] <= s0:
            j += 1
        k = j
        while k < n:
            a, b, label = timeline[k]
            if a >= s1:
                break
            lo = a if a > s0 else s0
            hi = b if b < s1 else s1
            if hi > lo:
                totals[label] = totals.get(label, 0) + (hi - lo)
            if b > s1:
                break
            k += 1
    return totals


def uptime_from_totals(totals: dict[Label, int], policy: UptimePolicy) -> Uptime:
    """S and A of both views from the window's time by label (one device, one day)."""
    window = sum(totals.values())
    available = totals.get(Label.AVAILABLE, 0)
    unknown = totals.get(Label.UNKNOWN, 0)
    planned = totals.get(Label.PLANNED, 0)
    planned_excluded = 0
    if policy.planned_excluded and planned:
        cap = policy.planned_cap_ms
        planned_excluded = planned if cap is None or planned < cap else cap
    base = window - planned_excluded
    if policy.unknown_time is UnknownTime.EXCLUDE:
        base -= unknown
    elif policy.unknown_time is UnknownTime.AVAILABLE:
        available += unknown
    business = technical = base
    business_excluded = policy.business_excluded
    technical_excluded = policy.technical_excluded
    for label, value in totals.items():  # the few labels present, not every excluded one
        if label in business_excluded:
            business -= value
        if label in technical_excluded:
            technical -= value
    monitored = business if policy.unknown_time is UnknownTime.EXCLUDE else business - unknown
    return Uptime(
        by_label=totals,
        scheduled_ms=business,
        available_ms=available,
        tech_scheduled_ms=technical,
        tech_available_ms=available,
        planned_excluded_ms=planned_excluded,
        monitored_ms=monitored,
        devices=1,
    )


def device_uptime(
    timeline: Sequence[Interval], spans: Sequence[Span], policy: UptimePolicy
) -> Uptime:
    """One device over the scheduled ``spans`` (one local day when a planned cap is set)."""
    return uptime_from_totals(label_totals(timeline, spans), policy)


# --- days, windows and the fleet ------------------------------------------------------


def day_span(day: date, tz: ZoneInfo) -> Span:
    """``[local midnight, next local midnight)`` of ``day`` in ms (23 or 25 h across DST)."""
    lo = datetime.combine(day, time(0), tzinfo=tz)
    hi = datetime.combine(day + timedelta(days=1), time(0), tzinfo=tz)
    return ms(lo), ms(hi)


def days(first: date, last: date) -> list[date]:
    """Every local date from ``first`` to ``last`` inclusive."""
    return [first + timedelta(days=i) for i in range((last - first).days + 1)]


def fleet_span(device: Device, tz: ZoneInfo) -> Span:
    """When the device is in the fleet (:func:`rules.fleet.in_fleet`, in time): from local
    midnight of its commissioning date to local midnight of its decommissioning date
    (open-ended if none)."""
    lo = day_span(device.commissioned, tz)[0]
    hi = day_span(device.decommissioned, tz)[0] if device.decommissioned else 2**62
    return lo, hi


def intersect(spans: Sequence[Span], lo: int, hi: int) -> list[Span]:
    out: list[Span] = []
    for a, b in spans:
        a, b = max(a, lo), min(b, hi)
        if a < b:
            out.append((a, b))
    return out


class WindowSpans:
    """Open spans of service windows per local day, memoised per (spec, day).

    Many devices share a window; computing it once per day keeps the fleet fast. Build
    one per computation (it holds no global state).
    """

    def __init__(self, tz: ZoneInfo) -> None:
        self.tz = tz
        self._cache: dict[tuple[str, date], list[Span]] = {}
        self._fleet: dict[tuple[date, date | None], Span] = {}
        self._scheduled: dict[tuple[str, date, date, date | None, int | None], list[Span]] = {}

    def fleet_span(self, device: Device) -> Span:
        """:func:`fleet_span`, memoised per (commissioned, decommissioned)."""
        key = (device.commissioned, device.decommissioned)
        got = self._fleet.get(key)
        if got is None:
            got = self._fleet[key] = fleet_span(device, self.tz)
        return got

    def scheduled(self, spec: str, device: Device, day: date, until: int | None) -> list[Span]:
        """:func:`scheduled_spans` of a device whose window is ``spec``, memoised per
        (spec, day, time in the fleet, until): the fleet's devices share a few (do not
        change the list returned)."""
        key = (spec, day, device.commissioned, device.decommissioned, until)
        got = self._scheduled.get(key)
        if got is None:
            lo, hi = self.fleet_span(device)
            if until is not None:
                hi = min(hi, until)
            got = self._scheduled[key] = intersect(self.day(spec, day), lo, hi)
        return got

    def day(self, spec: str, day: date) -> list[Span]:
        key = (spec, day)
        got = self._cache.get(key)
        if got is None:
            window = ServiceWindow.parse(spec)
            lo = datetime.combine(day, time(0), tzinfo=self.tz)
            hi = datetime.combine(day + timedelta(days=1), time(0), tzinfo=self.tz)
            got = [(ms(a), ms(b)) for a, b in window.open_intervals(lo, hi, self.tz)]
            self._cache[key] = got
        return got


def scheduled_spans(
    device: Device, day: date, rules: Rules, windows: WindowSpans, until: int | None = None
) -> list[Span]:
    """Window ∩ local ``day`` ∩ the device's time in the fleet (∩ before ``until``)."""
    spans = windows.day(rules.service_windows.spec_for(device), day)
    lo, hi = windows.fleet_span(device)
    if until is not None:
        hi = min(hi, until)
    return intersect(spans, lo, hi)


def daily_uptime(
    device: Device,
    timeline: Sequence[Interval],
    local_days: Iterable[date],
    rules: Rules,
    windows: WindowSpans,
    policy: UptimePolicy,
    horizon: int | None = None,
) -> dict[date, Uptime]:
    """One device's uptime for each local day (a period is the :func:`total` of its days)."""
    spec = rules.service_windows.spec_for(device)
    return {
        day: device_uptime(timeline, windows.scheduled(spec, device, day, horizon), policy)
        for day in local_days
    }


# --- roll-ups -------------------------------------------------------------------------

DIMENSIONS = ("device", "branch", "subbranch", "tier", "type", "placement", "vendor", "fleet")


#: The last few inventories' dimension tables (an inventory is read once per command or
#: refresh; a report asks for the same dimension many times).
_KEYS: dict[int, tuple[Inventory, dict[str, dict[str, str]]]] = {}
_KEEP_INVENTORIES = 4


def _dimension_table(inventory: Inventory, dimension: str) -> dict[str, str]:
    got = _KEYS.get(id(inventory))
    if got is None or got[0] is not inventory:
        while len(_KEYS) >= _KEEP_INVENTORIES:
            del _KEYS[next(iter(_KEYS))]
        got = _KEYS[id(inventory)] = (inventory, {})
    tables = got[1]
    table = tables.get(dimension)
    if table is None:
        devices = inventory.device_by_id
        branches = inventory.branch_by_id
        subs = inventory.subbranch_by_id
        if dimension == "device":
            table = {d: d for d in devices}
        elif dimension == "branch":
            table = {d.id: d.branch for d in devices.values()}
        elif dimension == "type":
            table = {d.id: d.type.value for d in devices.values()}
        elif dimension == "placement":
            table = {d.id: d.placement.value for d in devices.values()}
        elif dimension == "vendor":
            table = {d.id: d.vendor for d in devices.values()}
        elif dimension == "fleet":
            table = dict.fromkeys(devices, "fleet")
        else:
            sub_of = {b.id: b.subbranch for b in branches.values()}
            if dimension == "subbranch":
                table = {d.id: sub_of.get(d.branch, "") for d in devices.values()}
            else:  # tier
                tier_of = {s.id: s.tier.value for s in subs.values()}
                table = {
                    d.id: tier_of.get(sub_of[d.branch], "") if d.branch in sub_of else ""
                    for d in devices.values()
                }
        tables[dimension] = table
    return table


def dimension_key(inventory: Inventory, dimension: str) -> Callable[[str], str | None]:
    """device id -> the group it belongs to in ``dimension`` (None: not in the inventory)."""
    if dimension not in DIMENSIONS:
        raise ValueError(f"unknown dimension {dimension!r}; allowed: {', '.join(DIMENSIONS)}")
    return _dimension_table(inventory, dimension).get


def rollup(
    per_device: Mapping[str, Uptime] | Iterable[tuple[str, Uptime]],
    key: Callable[[str], str | None],
) -> dict[str, Uptime]:
    """Σ of every time over the devices of each group: the group's ratio is ΣA/ΣS."""
    items = per_device.items() if isinstance(per_device, Mapping) else per_device
    out: dict[str, Uptime] = {}
    for device_id, up in items:
        group = key(device_id)
        if group is None:
            continue
        acc = out.get(group)
        if acc is None:
            acc = out[group] = Uptime()
        acc.add(up)
        acc.devices += 1
    return out


def total(parts: Iterable[Uptime]) -> Uptime:
    """One device over several days (or any set of parts): the sum, as one device."""
    it = iter(parts)
    first = next(it, None)
    if first is None:
        return Uptime(devices=1)
    # The first part copied: what adding it to an empty Uptime gives, labels in its order.
    out = Uptime(
        dict(first.by_label), first.scheduled_ms, first.available_ms, first.tech_scheduled_ms,
        first.tech_available_ms, first.planned_excluded_ms, first.monitored_ms, 1,
    )  # fmt: skip
    for part in it:
        out.add(part)
    return out


# --- columns (a fleet at once) --------------------------------------------------------

#: The figures of :class:`Uptime` besides its time by label, as columns of
#: :func:`uptime_columns`, in this order.
FIGURES = ("scheduled_ms", "available_ms", "tech_scheduled_ms", "tech_available_ms",
           "planned_excluded_ms", "monitored_ms")  # fmt: skip


def uptime_columns(totals: Any, policy: UptimePolicy) -> Any:
    """:func:`uptime_from_totals` of every row of ``totals`` (an ``(n, len(LABELS))``
    int64 array of time by label, codes :data:`rules.timeline.LABELS`) at once: an
    ``(n, len(FIGURES))`` int64 array, the same integers row by row."""
    import numpy as np

    def col(label: Label) -> Any:
        return totals[:, label_code(label)]

    window = totals.sum(axis=1)
    available = col(Label.AVAILABLE).copy()
    unknown = col(Label.UNKNOWN)
    planned = col(Label.PLANNED)
    if policy.planned_excluded:
        cap = policy.planned_cap_ms
        planned_excluded = planned.copy() if cap is None else np.minimum(planned, cap)
    else:
        planned_excluded = np.zeros_like(planned)
    base = window - planned_excluded
    if policy.unknown_time is UnknownTime.EXCLUDE:
        base = base - unknown
    elif policy.unknown_time is UnknownTime.AVAILABLE:
        available += unknown
    business = base.copy()
    technical = base.copy()
    for label in LABELS:
        if label in policy.business_excluded:
            business -= col(label)
        if label in policy.technical_excluded:
            technical -= col(label)
    monitored = business if policy.unknown_time is UnknownTime.EXCLUDE else business - unknown
    return np.stack(
        [business, available, technical, available, planned_excluded, monitored], axis=1
    )


def uptime_of_sums(by_label: Any, figures: Any, devices: int) -> Uptime:
    """An :class:`Uptime` (a roll-up of ``devices`` devices) from summed columns: time by
    label (codes :data:`rules.timeline.LABELS`; a label with no time left out) and
    :data:`FIGURES`."""
    s, a, ts, ta, planned, monitored = (int(v) for v in figures)
    labels = {LABELS[i]: int(v) for i, v in enumerate(by_label) if v}
    return Uptime(labels, s, a, ts, ta, planned, monitored, devices)
