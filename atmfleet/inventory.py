"""The fleet's static facts: sub-branches, branches, devices and their maintainers.

The models here are the contract; ``atmfleet.inventory_io`` loads and saves them from the
documented YAML and CSV formats (``docs/inventory.md``).
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import date
from enum import StrEnum
from functools import cached_property

from pydantic import BaseModel, ConfigDict, Field

from atmfleet.protocol import DEVICE_ID_PATTERN


class Tier(StrEnum):
    """梯队: the bank groups sub-branches in three tiers."""

    FIRST = "1"
    SECOND = "2"
    THIRD = "3"


class BranchKind(StrEnum):
    OUTLET = "outlet"  # 网点: staffed branch with teller counters
    SELF_SERVICE_BANK = "self_service_bank"  # 离行式自助银行: off-site, no tellers


class DeviceType(StrEnum):
    ATM = "atm"  # 取款机
    DEPOSIT = "deposit"  # 存款机
    CRS = "crs"  # 存取款一体机 (cash recycler)
    SMART_TELLER = "smart_teller"  # 智能柜员机
    PASSBOOK = "passbook"  # 补登机
    INQUIRY = "inquiry"  # 查询机


#: Types that accept cash deposits (存款功能).
DEPOSIT_CAPABLE_TYPES = frozenset({DeviceType.DEPOSIT, DeviceType.CRS})
#: Types that dispense cash.
CASH_DISPENSING_TYPES = frozenset({DeviceType.ATM, DeviceType.CRS})


class Placement(StrEnum):
    ON_SITE = "on_site"  # 附行式
    OFF_SITE = "off_site"  # 离行式
    SELF_SERVICE_BANK = "self_service_bank"  # 自助银行 room


class _Frozen(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SubBranch(_Frozen):
    id: str = Field(pattern=DEVICE_ID_PATTERN)
    name: str = Field(min_length=1, max_length=64)
    tier: Tier


class Branch(_Frozen):
    id: str = Field(pattern=DEVICE_ID_PATTERN)
    name: str = Field(min_length=1, max_length=128)
    subbranch: str = Field(pattern=DEVICE_ID_PATTERN)
    kind: BranchKind = BranchKind.OUTLET
    parent: str | None = Field(
        None, description="For a self-service bank: the staffed outlet it is attached to."
    )


class Device(_Frozen):
    id: str = Field(pattern=DEVICE_ID_PATTERN)
    branch: str = Field(pattern=DEVICE_ID_PATTERN)
    type: DeviceType
    placement: Placement
    vendor: str = Field(min_length=1, max_length=64)
    model: str = Field(min_length=1, max_length=64)
    commissioned: date
    decommissioned: date | None = None
    service_window: str | None = Field(
        None,
        description="Override of the rules-file default, e.g. '24x7' or 'mon-fri 09:00-17:00'.",
    )
    deposit_capable: bool | None = Field(None, description="Default: derived from type.")
    heartbeat_s: int = Field(60, ge=5, le=3600)
    gateway: str | None = Field(
        None,
        pattern=DEVICE_ID_PATTERN,
        description="The gateway (concentrator) that may publish for this device, if any.",
    )

    @property
    def can_deposit(self) -> bool:
        if self.deposit_capable is not None:
            return self.deposit_capable
        return self.type in DEPOSIT_CAPABLE_TYPES


#: A maintainer's region that covers every sub-branch without a team of its own.
ANY_REGION = "*"


class Maintainer(_Frozen):
    """A vendor's service team for a region (维保: the technicians an incident is
    dispatched to): a sub-branch id, or ``*`` for everywhere else."""

    id: str = Field(pattern=DEVICE_ID_PATTERN)
    vendor: str = Field(min_length=1, max_length=64)
    region: str = Field(ANY_REGION, pattern=r"^(\*|[A-Za-z0-9_.-]{1,64})$")
    name: str = Field(min_length=1, max_length=128)
    phone: str | None = Field(None, max_length=64)
    email: str | None = Field(None, max_length=254)
    wecom: str | None = Field(None, max_length=64, description="WeCom user id.")
    manager: str | None = Field(
        None, max_length=128, description="The vendor's manager escalations go to."
    )
    manager_phone: str | None = Field(None, max_length=64)
    manager_email: str | None = Field(None, max_length=254)


class Inventory(BaseModel):
    """A whole fleet. Cross-references are checked by the loader."""

    model_config = ConfigDict(frozen=True)

    subbranches: tuple[SubBranch, ...]
    branches: tuple[Branch, ...]
    devices: tuple[Device, ...]
    maintainers: tuple[Maintainer, ...] = ()

    @cached_property
    def subbranch_by_id(self) -> dict[str, SubBranch]:
        return {s.id: s for s in self.subbranches}

    @cached_property
    def branch_by_id(self) -> dict[str, Branch]:
        return {b.id: b for b in self.branches}

    @cached_property
    def device_by_id(self) -> dict[str, Device]:
        return {d.id: d for d in self.devices}

    def maintainer_for(self, vendor: str, subbranch_id: str) -> Maintainer | None:
        """The vendor's team for the sub-branch, else its team for every region."""
        fallback = None
        for m in self.maintainers:
            if m.vendor == vendor:
                if m.region == subbranch_id:
                    return m
                if m.region == ANY_REGION:
                    fallback = m
        return fallback

    def devices_of_branch(self, branch_id: str) -> Iterable[Device]:
        return (d for d in self.devices if d.branch == branch_id)

    def subbranch_of(self, device: Device) -> SubBranch:
        return self.subbranch_by_id[self.branch_by_id[device.branch].subbranch]
