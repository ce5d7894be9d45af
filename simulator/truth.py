"""The incidents a simulated run's faults make, from its ledger alone.

Independent of the incident engine: from the ledger's own intervals (the ground truth of
what the devices' messages mean) and its repairs (``repairs.csv``: fault, dispatch,
arrival, repair), with the incident rules' few numbers given as plain values:

- an **outage** is a maximal run of the device's intervals whose cause is a down cause
  (fault, cash-out, deposit full, communications, power, supervisor); any other
  (available, closed, planned) ends it. It starts at its first interval; it is restored
  at the start of the next ``available`` interval (None when the ledger ends first);
- a fault's incident is the outage that holds the fault's time; several faults in one
  outage make one incident (the first fault's dispatch and arrival count);
- an outage with less than ``debounce_ms`` inside the device's service window
  (``scheduled``) opens nothing; one starting within ``merge_ms`` of the device's
  previous restore continues that incident (a flap);
- class: the outage's first cause other than supervisor — ``fault`` gives ``component``
  when the fault named one, else ``software``; cash, network, power otherwise;
- repeat: a new incident on the same device and component within ``repeat_ms`` of the
  previous one's restore (a software fault names no component: software faults repeat
  one another, as the engine links them).

``docs/kpis.md`` ("Vendors") says why a scorecard from the store must equal these figures.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, replace

from simulator.engine import Repair
from simulator.ledger import Interval

_CLASS = {"cash_out": "cash", "deposit_full": "cash", "communications": "network",
          "power": "power"}  # fmt: skip


@dataclass(frozen=True, slots=True)
class TrueIncident:
    device_id: str
    vendor: str
    model: str
    cls: str
    cause: str  # the outage's first cause other than supervisor
    component: str | None
    started: int
    restored: int | None
    dispatched: int | None
    on_site: int | None
    repeat: bool = False

    @property
    def response_ms(self) -> int | None:
        if self.dispatched is None or self.on_site is None:
            return None
        return self.on_site - self.dispatched

    @property
    def repair_ms(self) -> int | None:
        return None if self.restored is None else self.restored - self.started


#: Causes that make an outage (docs/incidents.md, "Opening"); any other ends it.
DOWN = frozenset({"fault", "cash_out", "deposit_full", "communications", "power", "supervisor"})


def _outages(intervals: Sequence[Interval]) -> list[tuple[int, int, int | None, str]]:
    """(start, end, restored, first cause other than supervisor) of each outage: a
    maximal run of down intervals; restored = the start of the next ``available``
    interval (a closed or planned stretch in between ends the outage, not the incident)."""
    out: list[tuple[int, int, int | None, str]] = []
    start: int | None = None
    cause = "supervisor"
    last_end = 0
    pending: list[tuple[int, int, str]] = []  # outages waiting for the next available
    for iv in intervals:
        if iv.cause in DOWN:
            if start is None:
                start, cause = iv.start, "supervisor"
            if cause == "supervisor" and iv.cause != "supervisor":
                cause = iv.cause
            last_end = iv.end
            continue
        if start is not None:
            pending.append((start, last_end, cause))
            start = None
        if iv.cause == "available":
            out.extend((a, b, iv.start, c) for a, b, c in pending)
            pending = []
    if start is not None:
        pending.append((start, last_end, cause))
    out.extend((a, b, None, c) for a, b, c in pending)
    return out


def _inside(a: int, b: int, spans: Sequence[tuple[int, int]]) -> int:
    return sum(max(0, min(b, s1) - max(a, s0)) for s0, s1 in spans)


def true_incidents(
    repairs: Iterable[Repair],
    intervals: Iterable[Interval],
    end: int,
    *,
    debounce_ms: int,
    merge_ms: int,
    repeat_ms: int,
    scheduled: Callable[[str], Sequence[tuple[int, int]]] | None = None,
) -> list[TrueIncident]:
    """The incidents the ledger's faults make (sorted by start, then device).
    ``scheduled``: a device's service-window spans over the run (None: always open)."""
    by_device: dict[str, list[Interval]] = {}
    for iv in intervals:
        by_device.setdefault(iv.device_id, []).append(iv)
    faults: dict[str, list[Repair]] = {}
    for r in repairs:
        if not r.degraded:
            faults.setdefault(r.device_id, []).append(r)
    result: list[TrueIncident] = []
    for device_id, mine in sorted(faults.items()):
        mine.sort(key=lambda r: r.fault)
        outages = _outages(sorted(by_device.get(device_id, []), key=lambda i: i.start))
        spans = scheduled(device_id) if scheduled is not None else [(0, end)]
        incidents: list[TrueIncident] = []
        last_restore: dict[str, int] = {}  # component ('' = software) -> restored
        for start, stop, restored, cause in outages:
            inside = [r for r in mine if start <= r.fault < stop]
            if not inside or _inside(start, stop, spans) < debounce_ms:
                continue
            first = inside[0]
            if cause == "fault":
                cls = "component" if first.component else "software"
            else:
                cls = _CLASS.get(cause, "software")
            prev = incidents[-1] if incidents else None
            if prev is not None and prev.restored is not None and start - prev.restored <= merge_ms:
                incidents[-1] = replace(prev, restored=restored)
                continue
            key = first.component or ""  # software faults repeat one another
            before = last_restore.get(key)
            repeat = before is not None and start - before <= repeat_ms
            inc = TrueIncident(device_id, first.vendor, first.model, cls, cause, first.component,
                               start, restored, first.dispatch, first.arrival, repeat)  # fmt: skip
            incidents.append(inc)
            if restored is not None:
                last_restore[key] = restored
        result.extend(incidents)
    return sorted(result, key=lambda i: (i.started, i.device_id))
