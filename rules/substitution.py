"""账务性交易替代率 (substitution) and 分流率 (diversion) (docs/kpis.md, "Substitution").

Pure functions over transaction counts. The unit is a staffed outlet (网点): the devices
of an off-site self-service bank count for the outlet it is attached to (``parent``).
A unit-day without counter data (no record, or zero counter transactions) is "no data":
it is left out of the rate and of every roll-up, never shown as 100 %; its self-service
volume is still reported (``self_financial_all``), with the reason the rate is missing.
The on-site (附行式) rate counts only unit-days with at least one on-site device in the
fleet: a unit without one has no on-site rate ("no data"), not 0 %.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import date

from atmfleet.inventory import BranchKind, Inventory, Placement
from rules.fleet import in_fleet


@dataclass(frozen=True, slots=True)
class DeviceCounts:
    """Counted (successful) transactions of one device over a day or period."""

    financial: int = 0
    non_financial: int = 0


@dataclass(frozen=True, slots=True)
class CounterCounts:
    """Teller-counter transactions of one branch (core banking feed)."""

    financial: int
    non_financial: int = 0


@dataclass(frozen=True, slots=True)
class Volumes:
    """One unit (outlet) over one day or period: self-service and counter volumes."""

    self_financial: int = 0
    self_total: int = 0
    on_site_financial: int = 0
    counter_financial: int | None = None  # None: no counter data
    counter_total: int | None = None
    on_site_devices: int = 0  # on-site devices of the unit in the fleet


def _ratio(num: int, den: int) -> float | None:
    return num / den if den else None


@dataclass(slots=True)
class Substitution:
    """Sums behind the three rates of a unit or a group of units."""

    financial_self: int = 0  # self-service financial, in unit-days with counter data
    financial_counter: int = 0
    on_site_self: int = 0
    on_site_counter: int = 0  # counter financial of unit-days with on-site devices
    financial_self_all: int = 0  # self-service financial, every unit-day
    all_self: int = 0  # all transactions, in unit-days with counter data
    all_counter: int = 0
    entries: int = 0
    entries_without_counter: int = 0

    @property
    def rate(self) -> float | None:
        """账务性交易替代率: self / (self + counter), financial only; None = no data."""
        if not self.financial_counter:
            return None
        return _ratio(self.financial_self, self.financial_self + self.financial_counter)

    @property
    def on_site_rate(self) -> float | None:
        """The same, counting only on-site (附行式) devices on the self-service side, over
        the unit-days that have on-site devices; None without any."""
        if not self.on_site_counter:
            return None
        return _ratio(self.on_site_self, self.on_site_self + self.on_site_counter)

    @property
    def reason(self) -> str | None:
        """Why the rate is missing: ``no_counter_data`` (no counter volume for any of
        its unit-days) or ``no_units``; None when there is a rate."""
        if self.rate is not None:
            return None
        return "no_counter_data" if self.entries else "no_units"

    @property
    def diversion(self) -> float | None:
        """分流率: the same ratio over all transactions, financial or not."""
        if not self.all_counter:
            return None
        return _ratio(self.all_self, self.all_self + self.all_counter)

    def add(self, v: Volumes) -> None:
        self.entries += 1
        self.financial_self_all += v.self_financial
        if v.counter_financial:
            self.financial_self += v.self_financial
            self.financial_counter += v.counter_financial
            if v.on_site_devices:
                self.on_site_self += v.on_site_financial
                self.on_site_counter += v.counter_financial
        else:
            self.entries_without_counter += 1
        if v.counter_total:
            self.all_self += v.self_total
            self.all_counter += v.counter_total


def unit_of(inventory: Inventory, device_id: str) -> str | None:
    """The outlet whose counters a device substitutes for (its self-service bank's parent)."""
    device = inventory.device_by_id.get(device_id)
    if device is None:
        return None
    branch = inventory.branch_by_id.get(device.branch)
    if branch is not None and branch.kind is BranchKind.SELF_SERVICE_BANK and branch.parent:
        return branch.parent
    return device.branch


def unit_volumes(
    inventory: Inventory,
    devices: Mapping[str, DeviceCounts],
    counters: Mapping[str, CounterCounts],
    on: date | None = None,
) -> dict[str, Volumes]:
    """Volumes per unit for one day ``on`` (or one period, ``on`` None) from device and
    counter counts.

    Every staffed outlet appears (with zeros if nothing happened); a self-service bank
    without a parent is its own unit, which has no counters and so no data. Devices out
    of the fleet on ``on`` count neither as volume nor as on-site devices.
    """
    acc: dict[str, list[int]] = {
        b.id: [0, 0, 0] for b in inventory.branches if b.kind is BranchKind.OUTLET
    }
    # Each branch's unit (unit_of: a self-service bank's parent, else the branch itself).
    unit_of_branch = {
        b.id: b.parent if b.kind is BranchKind.SELF_SERVICE_BANK and b.parent else b.id
        for b in inventory.branches
    }
    on_site_n: dict[str, int] = {}
    for d in inventory.devices:
        if d.placement is Placement.ON_SITE and (on is None or in_fleet(d, on)):
            unit = unit_of_branch.get(d.branch, d.branch)
            on_site_n[unit] = on_site_n.get(unit, 0) + 1
    by_id = inventory.device_by_id
    site = Placement.ON_SITE
    for device_id, counts in devices.items():
        device = by_id.get(device_id)
        if device is None:  # no unit
            continue
        if on is not None and not in_fleet(device, on):
            continue
        unit = unit_of_branch.get(device.branch, device.branch)
        row = acc.get(unit)
        if row is None:
            row = acc[unit] = [0, 0, 0]
        fin = counts.financial
        row[0] += fin
        row[1] += fin + counts.non_financial
        if device.placement is site:
            row[2] += fin
    out: dict[str, Volumes] = {}
    for unit, (fin, tot, on_site) in acc.items():
        counter = counters.get(unit)
        out[unit] = Volumes(
            self_financial=fin,
            self_total=tot,
            on_site_financial=on_site,
            counter_financial=counter.financial if counter else None,
            counter_total=counter.financial + counter.non_financial if counter else None,
            on_site_devices=on_site_n.get(unit, 0),
        )
    return out


BRANCH_DIMENSIONS = ("branch", "subbranch", "tier", "fleet")


def branch_key(inventory: Inventory, dimension: str) -> Callable[[str], str | None]:
    """branch id -> its group in ``dimension`` (branch, subbranch, tier or fleet)."""
    if dimension not in BRANCH_DIMENSIONS:
        raise ValueError(
            f"unknown dimension {dimension!r}; allowed: {', '.join(BRANCH_DIMENSIONS)}"
        )
    table: dict[str, str] = {}
    for b in inventory.branches:
        sub = inventory.subbranch_by_id.get(b.subbranch)
        table[b.id] = {
            "branch": b.id,
            "subbranch": b.subbranch,
            "tier": sub.tier.value if sub else "",
            "fleet": "fleet",
        }[dimension]
    return table.get


def substitution(
    entries: Iterable[tuple[str, Volumes]], key: Callable[[str], str | None]
) -> dict[str, Substitution]:
    """Group unit(-day) volumes by ``key`` and sum: a group's rate is Σself / Σ(self+counter)
    over its unit-days with counter data."""
    out: dict[str, Substitution] = {}
    for unit, volumes in entries:
        group = key(unit)
        if group is None:
            continue
        acc = out.get(group)
        if acc is None:
            acc = out[group] = Substitution()
        acc.add(volumes)
    return out
