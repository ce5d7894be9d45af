"""设备服务厂商考核: the vendor scorecard, from the incidents (docs/kpis.md, "Vendors").

The incident engine (``incidents/``) opens one incident per outage and records its
lifecycle in ``incident_events``; an incident reopened for a repeat fault has several
cycles. The scorecard counts **cycles** (:class:`IncidentCycle`, read back from the
history by :func:`cycles_from_events`) of the classes the vendor answers for
(``vendors.incident_causes``: incidents a fault opened, of class component or
software, by default), in the period
their outage starts in:

- response time = on site - dispatched (the technician's travel, what the contract's
  response deadline measures);
- repair time = restored - **outage start** (``started_at``: when the device became
  unavailable, not when the engine opened the incident after its debounce);
- breaches: the engine's own ``incident_sla`` breach marks (they count in calendar or
  service hours, with suspensions, as the contract says);
- median and p90 by the nearest-rank method: the smallest value with at least that share
  of the values at or below it (an exact value of the data, no interpolation).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from typing import Any

from atmfleet.inventory import Device
from rules.config import VendorRules
from rules.timeline import ms
from rules.uptime import Uptime

DAY_MS = 86_400_000


@dataclass(frozen=True, slots=True)
class IncidentCycle:
    """One outage of an incident (its first cycle, or one reopening)."""

    incident_id: int
    cycle: int
    device_id: str
    cls: str
    cause: str  # the timeline label that opened it
    component: str | None
    started: int  # outage start, ms
    dispatched: int | None = None
    on_site: int | None = None
    restored: int | None = None
    repeat: bool = False
    response_breach: bool = False
    repair_breach: bool = False

    @property
    def response_ms(self) -> int | None:
        if self.dispatched is None or self.on_site is None:
            return None
        return self.on_site - self.dispatched

    @property
    def repair_ms(self) -> int | None:
        return None if self.restored is None else self.restored - self.started


@dataclass(frozen=True, slots=True)
class HistoryRow:
    """What :func:`cycles_from_events` needs of one ``incident_events`` row."""

    incident_id: int
    at: int  # ms
    kind: str
    detail: Mapping[str, Any]


@dataclass(frozen=True, slots=True)
class IncidentRow:
    """What the scorecard needs of one ``incidents`` row."""

    id: int
    device_id: str
    cls: str
    cause: str
    component: str | None
    started: int  # ms
    repeat_of: int | None


def cycles_from_events(
    incidents: Iterable[IncidentRow],
    events: Iterable[HistoryRow],
    breaches: Iterable[tuple[int, int, str]] = (),
) -> list[IncidentCycle]:
    """The cycles of ``incidents`` from their history (events in id order): ``opened``
    starts cycle 0 at the incident's ``started_at``; ``reopened`` starts the next at its
    ``detail.started_at`` when given, else at the event; ``dispatched``, ``on_site`` and
    ``restored`` set the cycle's first such time. ``breaches``: (incident, cycle,
    deadline) of the engine's breach marks."""
    rows = {i.id: i for i in incidents}
    breached = set(breaches)
    current: dict[int, dict[str, Any]] = {}
    done: list[dict[str, Any]] = []
    for e in events:
        inc = rows.get(e.incident_id)
        if inc is None:
            continue
        if e.kind in ("opened", "reopened"):
            if e.incident_id in current:
                done.append(current.pop(e.incident_id))
            if e.kind == "opened":
                cycle, start, repeat = 0, inc.started, inc.repeat_of is not None
            else:
                cycle = int(e.detail.get("cycle", 1))
                start = _ms_or(e.detail.get("started_at"), e.at)
                repeat = True
            current[e.incident_id] = {
                "id": e.incident_id, "cycle": cycle, "started": start, "repeat": repeat,
            }  # fmt: skip
        elif e.kind in ("dispatched", "on_site", "restored"):
            c = current.get(e.incident_id)
            if c is not None and e.kind not in c:
                c[e.kind] = e.at
    done.extend(current.values())
    cycles: list[IncidentCycle] = []
    for c in done:
        inc = rows[c["id"]]
        cycles.append(
            IncidentCycle(
                inc.id, c["cycle"], inc.device_id, inc.cls, inc.cause, inc.component,
                c["started"],
                c.get("dispatched"), c.get("on_site"), c.get("restored"), c["repeat"],
                (inc.id, c["cycle"], "response") in breached,
                (inc.id, c["cycle"], "repair") in breached,
            )
        )  # fmt: skip
    return sorted(cycles, key=lambda c: (c.started, c.device_id, c.incident_id, c.cycle))


def _ms_or(text: Any, default: int) -> int:
    if not isinstance(text, str) or not text:
        return default
    return ms(datetime.fromisoformat(text))


def quantile(values: Sequence[int], share: float) -> int | None:
    """Nearest rank: the smallest value with at least ``share`` of ``values`` at or below
    it; None without values."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, math.ceil(share * len(ordered) - 1e-9))
    return ordered[rank - 1]


@dataclass(frozen=True, slots=True)
class WorstDevice:
    device_id: str
    tech_down_ms: int
    incidents: int


@dataclass(slots=True)
class VendorScore:
    """A vendor (``model`` None: all its models) or one of its models over the period."""

    vendor: str
    model: str | None
    devices: int = 0
    device_days: int = 0
    uptime: Uptime = field(default_factory=Uptime)
    incidents: int = 0
    repeats: int = 0
    open_incidents: int = 0  # not restored (yet)
    dispatched: int = 0  # cycles with a dispatch and an arrival (response measured)
    response_ms: list[int] = field(default_factory=list)
    repair_ms: list[int] = field(default_factory=list)
    response_breaches: int = 0
    repair_breaches: int = 0
    worst: list[WorstDevice] = field(default_factory=list)
    device_month_days: float = 30.0

    @property
    def technical_availability(self) -> float | None:
        return self.uptime.tech_ratio

    @property
    def incidents_per_device_month(self) -> float | None:
        months = self.device_days / self.device_month_days
        return self.incidents / months if months else None

    @property
    def repeat_rate(self) -> float | None:
        return self.repeats / self.incidents if self.incidents else None

    def response(self, share: float) -> int | None:
        return quantile(self.response_ms, share)

    def repair(self, share: float) -> int | None:
        return quantile(self.repair_ms, share)


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
    cycles: Iterable[IncidentCycle],
    period: tuple[int, int],
    first_day: date,
    last_day: date,
    rules: VendorRules,
) -> list[VendorScore]:
    """Per vendor, then per model of it, over ``period`` (ms; the local days
    ``first_day``..``last_day``): cycles opened by ``rules.incident_causes`` counted in the
    period their outage starts in, on the devices given."""
    lo, hi = period
    causes = {c.value for c in rules.incident_causes}
    by_device: dict[str, list[IncidentCycle]] = {}
    for c in cycles:
        if lo <= c.started < hi and c.cause in causes:
            by_device.setdefault(c.device_id, []).append(c)
    scores: dict[tuple[str, str | None], VendorScore] = {}
    ranked: dict[tuple[str, str | None], list[WorstDevice]] = {}
    for d in devices:
        fleet_days = days_in_fleet(d, first_day, last_day)
        if fleet_days == 0:
            continue
        up = uptime.get(d.id)
        mine = by_device.get(d.id, [])
        tech_down = (up.tech_scheduled_ms - up.tech_available_ms) if up else 0
        keys: tuple[tuple[str, str | None], ...] = ((d.vendor, None), (d.vendor, d.model))
        for key in keys:
            score = scores.get(key)
            if score is None:
                score = scores[key] = VendorScore(
                    key[0], key[1], device_month_days=rules.device_month_days
                )
                ranked[key] = []
            score.devices += 1
            score.device_days += fleet_days
            if up is not None:
                score.uptime.add(up)
            for c in mine:
                score.incidents += 1
                score.repeats += c.repeat
                score.response_breaches += c.response_breach
                score.repair_breaches += c.repair_breach
                if c.repair_ms is None:
                    score.open_incidents += 1
                else:
                    score.repair_ms.append(c.repair_ms)
                if c.response_ms is not None:
                    score.dispatched += 1
                    score.response_ms.append(c.response_ms)
            if tech_down or mine:
                ranked[key].append(WorstDevice(d.id, tech_down, len(mine)))
    for key, score in scores.items():
        score.uptime.devices = score.devices
        ranked[key].sort(key=lambda w: (-w.tech_down_ms, -w.incidents, w.device_id))
        score.worst = ranked[key][: rules.worst_devices]
    return sorted(scores.values(), key=lambda s: (s.vendor, s.model is not None, s.model or ""))
