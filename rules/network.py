"""Network plan checks: self-service banks per outlet, and deposit coverage (docs/kpis.md)."""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from datetime import date
from enum import StrEnum

from atmfleet.inventory import BranchKind, Inventory
from rules.fleet import in_fleet


@dataclass(frozen=True, slots=True)
class BankRatio:
    """Off-site self-service banks per staffed outlet of one sub-branch (or the fleet)."""

    scope: str
    outlets: int
    self_service_banks: int
    target: float

    @property
    def ratio(self) -> float | None:
        return self.self_service_banks / self.outlets if self.outlets else None

    @property
    def meets_target(self) -> bool | None:
        ratio = self.ratio
        return None if ratio is None else ratio >= self.target


def self_service_bank_ratio(inventory: Inventory, target: float) -> dict[str, BankRatio]:
    """Per sub-branch id, plus ``"fleet"`` for the whole region."""
    counts: dict[str, list[int]] = {s.id: [0, 0] for s in inventory.subbranches}
    for b in inventory.branches:
        row = counts.setdefault(b.subbranch, [0, 0])
        row[0 if b.kind is BranchKind.OUTLET else 1] += 1
    out = {sub: BankRatio(sub, o, s, target) for sub, (o, s) in counts.items()}
    out["fleet"] = BankRatio(
        "fleet",
        sum(r.outlets for r in out.values()),
        sum(r.self_service_banks for r in out.values()),
        target,
    )
    return out


class CoverageGapReason(StrEnum):
    NONE_INSTALLED = "none_installed"
    TOO_FEW_INSTALLED = "too_few_installed"
    ALL_DOWN = "all_down"
    TOO_FEW_WORKING = "too_few_working"


@dataclass(frozen=True, slots=True)
class CoverageGap:
    branch_id: str
    subbranch: str
    reason: CoverageGapReason
    devices: tuple[str, ...]  # the deposit-capable devices installed
    working: int  # how many of them are in service


def deposit_coverage(
    inventory: Inventory, on: date, working: Collection[str], required: int = 1
) -> list[CoverageGap]:
    """Staffed outlets with fewer than ``required`` deposit-capable devices in service on
    ``on`` (``network.deposit_capable_per_outlet``; the plan asks for one).

    Only the outlet's own devices count (not those of its off-site self-service banks).
    ``working`` holds the devices that are in service: for the daily bulletin, those with
    available time that day; for a live view, those whose current state is available.
    """
    capable: dict[str, list[str]] = {}
    for d in inventory.devices:
        if d.can_deposit and in_fleet(d, on):
            capable.setdefault(d.branch, []).append(d.id)
    gaps = []
    for b in inventory.branches:
        if b.kind is not BranchKind.OUTLET:
            continue
        devices = tuple(sorted(capable.get(b.id, [])))
        up = sum(1 for d in devices if d in working)
        if not devices:
            reason = CoverageGapReason.NONE_INSTALLED
        elif len(devices) < required:
            reason = CoverageGapReason.TOO_FEW_INSTALLED
        elif up == 0:
            reason = CoverageGapReason.ALL_DOWN
        elif up < required:
            reason = CoverageGapReason.TOO_FEW_WORKING
        else:
            continue
        gaps.append(CoverageGap(b.id, b.subbranch, reason, devices, up))
    return sorted(gaps, key=lambda g: (g.subbranch, g.branch_id))
