"""The incidents a simulated run's faults make, from its ledger alone.

Independent of the incident engine: from the ledger's own intervals (the ground truth of
what the devices' messages mean) and its repairs (``repairs.csv``: fault, dispatch,
arrival, repair), with the incident rules' few numbers given as plain values:

- an **outage** is a maximal run of the device's intervals whose cause is neither
  ``available`` nor ``closed`` (outside its service window a device that reports no
  fault is not down); it starts at its first interval and is restored at the next
  available or closed one (None when the ledger ends first);
- a fault's incident is the outage that holds the fault's time; several faults in one
  outage make one incident (the first fault's dispatch and arrival count);
- an outage shorter than ``debounce_ms`` opens nothing; one starting within ``merge_ms``
  of the device's previous restore continues that incident (a flap);
- class: the outage's first cause other than supervisor — ``fault`` gives ``component``
  when the fault named one, else ``software``; cash, network, power otherwise;
- repeat: a new incident on the same device and component within ``repeat_ms`` of the
  previous one's restore (a software fault names no component: software faults repeat
  one another, as the engine links them).

``docs/kpis.md`` ("Vendors") says why a scorecard from the store must equal these figures.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
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


def _outages(intervals: Sequence[Interval], end: int) -> list[tuple[int, int | None, str]]:
    """(start, restored, first cause other than supervisor) of each outage."""
    out: list[tuple[int, int | None, str]] = []
    start: int | None = None
    cause = "supervisor"
    for iv in intervals:
        if iv.cause in ("available", "closed"):
            if start is not None:
                out.append((start, iv.start, cause))
                start, cause = None, "supervisor"
            continue
        if start is None:
            start = iv.start
        if cause == "supervisor" and iv.cause != "supervisor":
            cause = iv.cause
    if start is not None:
        out.append((start, None, cause))
    return out


def true_incidents(
    repairs: Iterable[Repair],
    intervals: Iterable[Interval],
    end: int,
    *,
    debounce_ms: int,
    merge_ms: int,
    repeat_ms: int,
) -> list[TrueIncident]:
    """The incidents the ledger's faults make (sorted by start, then device)."""
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
        outages = _outages(sorted(by_device.get(device_id, []), key=lambda i: i.start), end)
        incidents: list[TrueIncident] = []
        last_restore: dict[str, int] = {}  # component ('' = software) -> restored
        for start, restored, cause in outages:
            inside = [
                r for r in mine if start <= r.fault and (restored is None or r.fault < restored)
            ]
            length = (restored if restored is not None else end) - start
            if not inside or length < debounce_ms:
                continue
            first = inside[0]
            if cause == "fault":
                cls = "component" if first.component else "software"
            else:
                cls = _CLASS.get(cause, "software")
            prev = incidents[-1] if incidents else None
            if prev is not None and prev.restored is not None and start - prev.restored < merge_ms:
                incidents[-1] = replace(prev, restored=restored)
                continue
            key = first.component or ""  # software faults repeat one another
            before = last_restore.get(key)
            repeat = before is not None and start - before <= repeat_ms
            inc = TrueIncident(device_id, first.vendor, first.model, cls, first.component,
                               start, restored, first.dispatch, first.arrival, repeat)  # fmt: skip
            incidents.append(inc)
            if restored is not None:
                last_restore[key] = restored
        result.extend(incidents)
    return sorted(result, key=lambda i: (i.started, i.device_id))
