"""设备服务厂商考核: fault incidents and the vendor scorecard (docs/kpis.md, "Vendors").

A fault incident is read off a device's timeline: it starts when the device enters the
``fault`` state and lasts until it is next available (back in service), whatever it went
through meanwhile (maintenance, offline, cash-out): overlapping faults are one incident.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, timedelta

from atmfleet.inventory import Device
from rules.config import VendorRules
from rules.labels import Label
from rules.timeline import Interval
from rules.uptime import Uptime

#: A fault event this much before the state change still belongs to the incident.
EVENT_SLACK_MS = 60_000
DAY_MS = 86_400_000


@dataclass(frozen=True, slots=True)
class FaultEvent:
    """An ``event`` ``fault`` message: when, and which component."""

    ts: int
    component: str | None = None
    code: str | None = None


@dataclass(frozen=True, slots=True)
class Incident:
    device_id: str
    start: int
    end: int | None  # back in service; None = not yet
    component: str | None
    response_at: int | None  # technician on site (maintenance mode / technician_arrived)
    repeat: bool = False

    @property
    def repair_ms(self) -> int | None:
        return None if self.end is None else self.end - self.start

    @property
    def response_ms(self) -> int | None:
        return None if self.response_at is None else self.response_at - self.start


def incidents(
    device_id: str,
    timeline: Sequence[Interval],
    faults: Sequence[FaultEvent] = (),
    arrivals: Sequence[int] = (),
) -> list[Incident]:
    """The device's fault incidents on ``timeline``; give it the history the repeat and
    the response need (the timeline should start before the period)."""
    out: list[Incident] = []
    faults = sorted(faults, key=lambda f: f.ts)
    arrivals = sorted(arrivals)
    start: int | None = None
    supervisor_at: int | None = None
    for a, _b, label in timeline:
        if start is None:
            if label is Label.FAULT:
                start, supervisor_at = a, None
            continue
        if label is Label.AVAILABLE:
            out.append(_incident(device_id, start, a, supervisor_at, faults, arrivals))
            start = None
        elif label is Label.SUPERVISOR and supervisor_at is None:
            supervisor_at = a
    if start is not None:
        out.append(_incident(device_id, start, None, supervisor_at, faults, arrivals))
    return out


def _incident(
    device_id: str,
    start: int,
    end: int | None,
    supervisor_at: int | None,
    faults: Sequence[FaultEvent],
    arrivals: Sequence[int],
) -> Incident:
    stop = end if end is not None else 2**62
    component = next((f.component for f in faults if start - EVENT_SLACK_MS <= f.ts < stop), None)
    arrived = next((t for t in arrivals if start <= t < stop), None)
    candidates = [t for t in (supervisor_at, arrived) if t is not None]
    return Incident(device_id, start, end, component, min(candidates) if candidates else None)


def mark_repeats(items: Iterable[Incident], repeat_days: int) -> list[Incident]:
    """Flag an incident that follows a repaired one on the same device and component
    within ``repeat_days`` (from back in service to the new fault)."""
    last_end: dict[tuple[str, str], int] = {}
    out = []
    for inc in sorted(items, key=lambda i: (i.device_id, i.start)):
        repeat = False
        if inc.component is not None:
            key = (inc.device_id, inc.component)
            prev = last_end.get(key)
            repeat = prev is not None and inc.start - prev <= repeat_days * DAY_MS
            if inc.end is not None:
                last_end[key] = inc.end
        out.append(
            Incident(inc.device_id, inc.start, inc.end, inc.component, inc.response_at, repeat)
        )
    return out


@dataclass(frozen=True, slots=True)
class WorstDevice:
    device_id: str
    tech_down_ms: int
    incidents: int


@dataclass(slots=True)
class VendorScore:
    vendor: str
    model: str
    devices: int = 0
    device_days: int = 0
    uptime: Uptime = field(default_factory=Uptime)
    faults: int = 0
    repeat_faults: int = 0
    open_incidents: int = 0
    repair_ms: list[int] = field(default_factory=list)
    response_ms: list[int] = field(default_factory=list)
    worst: list[WorstDevice] = field(default_factory=list)
    device_month_days: float = 30.0

    @property
    def technical_availability(self) -> float | None:
        return self.uptime.tech_ratio

    @property
    def faults_per_device_month(self) -> float | None:
        months = self.device_days / self.device_month_days
        return self.faults / months if months else None

    @property
    def mttr_ms(self) -> float | None:
        """Mean time to repair over the incidents repaired."""
        return sum(self.repair_ms) / len(self.repair_ms) if self.repair_ms else None

    @property
    def mean_response_ms(self) -> float | None:
        return sum(self.response_ms) / len(self.response_ms) if self.response_ms else None


def days_in_fleet(device: Device, first: date, last: date) -> int:
    """Local days from ``first`` to ``last`` (inclusive) the device was in the fleet."""
    lo = max(first, device.commissioned)
    hi = (
        last
        if device.decommissioned is None
        else min(last, device.decommissioned - timedelta(days=1))
    )
    return max(0, (hi - lo).days + 1)


def scorecard(
    devices: Iterable[Device],
    uptime: Mapping[str, Uptime],
    all_incidents: Iterable[Incident],
    period: tuple[int, int],
    first_day: date,
    last_day: date,
    rules: VendorRules,
) -> list[VendorScore]:
    """Per vendor and model over ``period`` (ms; the local days ``first_day``..``last_day``):
    incidents are counted in the period they start in."""
    lo, hi = period
    by_device: dict[str, list[Incident]] = {}
    for inc in all_incidents:
        if lo <= inc.start < hi:
            by_device.setdefault(inc.device_id, []).append(inc)
    scores: dict[tuple[str, str], VendorScore] = {}
    ranked: dict[tuple[str, str], list[WorstDevice]] = {}
    for d in devices:
        fleet_days = days_in_fleet(d, first_day, last_day)
        if fleet_days == 0:
            continue
        key = (d.vendor, d.model)
        score = scores.get(key)
        if score is None:
            score = scores[key] = VendorScore(
                d.vendor, d.model, device_month_days=rules.device_month_days
            )
            ranked[key] = []
        score.devices += 1
        score.device_days += fleet_days
        up = uptime.get(d.id)
        if up is not None:
            score.uptime.add(up)
        mine = by_device.get(d.id, [])
        score.faults += len(mine)
        for inc in mine:
            score.repeat_faults += inc.repeat
            if inc.repair_ms is None:
                score.open_incidents += 1
            else:
                score.repair_ms.append(inc.repair_ms)
            if inc.response_ms is not None:
                score.response_ms.append(inc.response_ms)
        tech_down = (up.tech_scheduled_ms - up.tech_available_ms) if up else 0
        if tech_down or mine:
            ranked[key].append(WorstDevice(d.id, tech_down, len(mine)))
    for key, score in scores.items():
        score.uptime.devices = score.devices
        ranked[key].sort(key=lambda w: (-w.tech_down_ms, -w.incidents, w.device_id))
        score.worst = ranked[key][: rules.worst_devices]
    return sorted(scores.values(), key=lambda s: (s.vendor, s.model))
