"""The rules file: every indicator's definition choices, targets and thresholds.

One pydantic model (:class:`Rules`), loaded once at start-up by :func:`load_rules`. The
shipped defaults are ``rules/default.yaml``; a bank points ``ATMFLEET_RULES_FILE`` at its
own copy. A bad file is refused with a :class:`~atmfleet.errors.ConfigError` whose message
names the file, the line, the field, the bad value and what is allowed.
"""

from __future__ import annotations

import math
import re
from datetime import date
from enum import StrEnum
from importlib import resources
from pathlib import Path
from typing import Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from atmfleet.errors import ConfigError
from atmfleet.inventory import Device, DeviceType, Placement, Tier
from atmfleet.protocol import (
    CashUnitStatus,
    CashUnitType,
    Component,
    ComponentStatus,
    DeviceState,
    TxnResult,
    TxnType,
)
from atmfleet.windows import ServiceWindow
from rules.labels import CAUSES, Label

DEFAULT_RULES_RESOURCE = "default.yaml"


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class HeartbeatRules(_Model):
    timeout_factor: float = Field(
        3.0,
        ge=1.0,
        le=100.0,
        description="A silent gap longer than timeout_factor x the device's heartbeat_s is offline.",
    )


class UnknownTime(StrEnum):
    EXCLUDE = "exclude"  # not in S (default): the bank is not penalised for our outage
    AVAILABLE = "available"  # counted as available
    DOWN = "down"  # counted as down, cause "unknown"


class UptimeRules(_Model):
    targets: dict[Tier, float] = Field(
        default_factory=lambda: {Tier.FIRST: 0.98, Tier.SECOND: 0.97, Tier.THIRD: 0.96},
        description="开机率 target by sub-branch tier (business view).",
    )
    business_excluded_causes: tuple[Label, ...] = Field(
        (),
        description="Causes taken out of S in the business view (planned: see planned_maintenance).",
    )
    technical_excluded_causes: tuple[Label, ...] = Field(
        (
            Label.CASH_OUT,
            Label.DEPOSIT_FULL,
            Label.COMMUNICATIONS,
            Label.POWER,
            Label.CLOSED,
        ),
        description="Causes outside the vendor's control, taken out of S in the technical view.",
    )
    unknown_time: UnknownTime = UnknownTime.EXCLUDE

    @field_validator("targets", mode="before")
    @classmethod
    def _tier_keys_as_text(cls, value: Any) -> Any:
        # YAML reads an unquoted tier 1 as a number.
        if isinstance(value, dict):
            return {str(k): v for k, v in value.items()}
        return value

    @field_validator("targets")
    @classmethod
    def _targets(cls, value: dict[Tier, float]) -> dict[Tier, float]:
        missing = [t.value for t in Tier if t not in value]
        if missing:
            raise ValueError(f"a target is needed for every tier; missing tier(s) {missing}")
        for tier, target in value.items():
            if not 0 < target <= 1:
                raise ValueError(
                    f"target for tier {tier.value} is {target}; allowed: a ratio in (0, 1]"
                )
        return value

    @field_validator("business_excluded_causes", "technical_excluded_causes")
    @classmethod
    def _causes(cls, value: tuple[Label, ...]) -> tuple[Label, ...]:
        allowed = [c.value for c in CAUSES if c is not Label.PLANNED]
        for cause in value:
            if cause not in CAUSES or cause is Label.PLANNED:
                raise ValueError(
                    f"{cause.value!r} cannot be listed here (planned maintenance is set in "
                    f"planned_maintenance.excluded); allowed: {allowed}"
                )
        return tuple(dict.fromkeys(value))


class PlannedMaintenanceRules(_Model):
    excluded: bool = Field(
        True, description="Declared planned maintenance is taken out of S (both views)."
    )
    max_excluded_s_per_day: int | None = Field(
        None,
        ge=0,
        description="Planned time beyond this many seconds per device per local day counts "
        "as down (cause planned); null = no cap.",
    )


class PlannedStopsRules(_Model):
    """The planned-stop register (stops/, docs/stops.md)."""

    max_retroactive_days: int = Field(
        3,
        ge=0,
        le=3660,
        description="A stop registered after it started may start at most this many local "
        "days before today (0: today only); it needs an approver like any other.",
    )
    approver_role: Literal["operator", "admin"] = Field(
        "operator",
        description="The least role that may approve or reject a stop (never the requester).",
    )


class WindowRule(_Model):
    placement: Placement | None = None
    type: DeviceType | None = None
    window: str

    @field_validator("window")
    @classmethod
    def _window(cls, value: str) -> str:
        ServiceWindow.parse(value)  # ValueError says what is wrong
        return value

    def matches(self, device: Device) -> bool:
        return (self.placement is None or self.placement is device.placement) and (
            self.type is None or self.type is device.type
        )


class ServiceWindowRules(_Model):
    default: str = Field("24x7", description="Window of a device no rule matches.")
    rules: tuple[WindowRule, ...] = Field(
        tuple(
            WindowRule(placement=Placement.ON_SITE, type=kind, window="daily 09:00-17:00")
            for kind in (DeviceType.SMART_TELLER, DeviceType.PASSBOOK, DeviceType.INQUIRY)
        ),
        description="First matching rule wins; a device's own service_window beats them all.",
    )

    @field_validator("default")
    @classmethod
    def _default(cls, value: str) -> str:
        ServiceWindow.parse(value)
        return value

    def spec_for(self, device: Device) -> str:
        if device.service_window:
            return device.service_window
        for rule in self.rules:
            if rule.matches(device):
                return rule.window
        return self.default

    def window_for(self, device: Device) -> ServiceWindow:
        return ServiceWindow.parse(self.spec_for(device))


class TransactionRules(_Model):
    financial_types: frozenset[TxnType] = Field(
        frozenset({TxnType.WITHDRAWAL, TxnType.DEPOSIT, TxnType.TRANSFER, TxnType.PAYMENT}),
        min_length=1,
        description="账务性: types that move money or change an account.",
    )
    counted_results: frozenset[TxnResult] = Field(
        frozenset({TxnResult.OK}),
        min_length=1,
        description="Results that count as a transaction done (volumes, yield, fees).",
    )


class SubstitutionRules(_Model):
    target: float = Field(0.60, gt=0, le=1, description="账务性交易替代率 target.")
    on_site_target: float = Field(0.60, gt=0, le=1, description="Target for on-site devices only.")


class DaysCounted(StrEnum):
    IN_SERVICE = "in_service"  # in the fleet and available at some time that day
    IN_FLEET = "in_fleet"  # in the fleet (commissioned, not decommissioned)


class LowYieldRules(_Model):
    thresholds: dict[DeviceType, float | None] = Field(
        default_factory=lambda: {
            DeviceType.ATM: 40.0,
            DeviceType.DEPOSIT: 20.0,
            DeviceType.CRS: 60.0,
            DeviceType.SMART_TELLER: 15.0,
            DeviceType.PASSBOOK: None,
            DeviceType.INQUIRY: None,
        },
        description="Daily average of successful financial transactions below which a device "
        "is low-yield; null = the type is not evaluated.",
    )
    window_days: int = Field(30, ge=1, le=366)
    ramp_up_days: int = Field(
        30, ge=0, le=366, description="Devices commissioned fewer days ago are exempt."
    )
    days_counted: DaysCounted = DaysCounted.IN_SERVICE
    min_monitored_days: int = Field(
        20,
        ge=1,
        le=366,
        description="A device with fewer monitored days in the window is not evaluated (coverage).",
    )
    max_share: float = Field(0.05, gt=0, le=1, description="Target: low-yield share at most this.")

    @field_validator("thresholds")
    @classmethod
    def _thresholds(cls, value: dict[DeviceType, float | None]) -> dict[DeviceType, float | None]:
        missing = [t.value for t in DeviceType if t not in value]
        if missing:
            raise ValueError(f"a threshold (or null) is needed for every type; missing {missing}")
        for kind, threshold in value.items():
            if threshold is not None and (threshold < 0 or not math.isfinite(threshold)):
                raise ValueError(
                    f"threshold for {kind.value} is {threshold}; allowed: a number >= 0 or null"
                )
        return value


class TailRules(_Model):
    size: int = Field(10, ge=1, le=10_000, description="How many sit in the tail (bottom N).")
    period: Literal["day", "week", "month"] = "month"
    history_periods: int = Field(
        3, ge=0, le=24, description="Earlier periods looked at for a streak in the tail."
    )


class NetworkRules(_Model):
    self_service_banks_per_outlet: float = Field(
        3.0, gt=0, description="Target ratio of off-site self-service banks to staffed outlets."
    )
    deposit_capable_per_outlet: int = Field(
        1, ge=1, le=100, description="Deposit-capable devices each outlet should have in service."
    )


IncidentClassName = Literal["component", "cash", "network", "power", "software"]


class VendorRules(_Model):
    repeat_fault_days: int = Field(
        7, ge=1, le=365, description="Same device and component again within this many days."
    )
    worst_devices: int = Field(5, ge=0, le=1000)
    device_month_days: float = Field(30.0, gt=0, description="Days in one device-month.")
    incident_causes: list[Label] = Field(
        default_factory=lambda: [Label.FAULT],
        min_length=1,
        description="Causes of the incidents the vendor answers for (counted in the "
        "scorecard): fault, cash_out, deposit_full, communications, power, supervisor.",
    )
    high_quantile: float = Field(
        0.9, gt=0.5, le=1, description="The upper quantile shown beside the median (p90)."
    )


class AssessmentComponent(StrEnum):
    UPTIME = "uptime"
    SUBSTITUTION = "substitution"
    LOW_YIELD = "low_yield"
    REVENUE = "revenue"


class AssessmentRules(_Model):
    weights: dict[AssessmentComponent, float] = Field(
        default_factory=lambda: {
            AssessmentComponent.UPTIME: 0.3,
            AssessmentComponent.SUBSTITUTION: 0.3,
            AssessmentComponent.LOW_YIELD: 0.2,
            AssessmentComponent.REVENUE: 0.2,
        }
    )

    @field_validator("weights")
    @classmethod
    def _weights(cls, value: dict[AssessmentComponent, float]) -> dict[AssessmentComponent, float]:
        for name, weight in value.items():
            if weight < 0 or not math.isfinite(weight):
                raise ValueError(f"weight of {name.value} is {weight}; allowed: a number >= 0")
        total = sum(value.values())
        if abs(total - 1.0) > 1e-9:
            raise ValueError(f"weights must sum to 1; they sum to {total:g}")
        return value


#: Timeline labels a resource warning can never count in: planned maintenance is out of S
#: (or, past a cap, down for being planned), and unknown time holds no evidence.
_NEVER_WARNING_LABELS = (Label.PLANNED, Label.UNKNOWN)


_DEFAULT_COMPONENT_WARNINGS: dict[Component, tuple[ComponentStatus, ...]] = {
    Component.PTR: (ComponentStatus.WARNING,),
    Component.PBK: (ComponentStatus.WARNING,),
}


class ResourceWarningRules(_Model):
    """资源预警率: what counts as a cash or consumables warning (docs/kpis.md)."""

    states: tuple[DeviceState, ...] = Field(
        (DeviceState.CASH_OUT, DeviceState.DEPOSIT_FULL),
        description="Device states that are a warning by themselves (断钞, 钞箱满).",
    )
    cash_units: dict[CashUnitType, tuple[CashUnitStatus, ...]] = Field(
        default_factory=lambda: {
            CashUnitType.DISPENSE: (CashUnitStatus.LOW, CashUnitStatus.EMPTY),
            CashUnitType.RECYCLE: (
                CashUnitStatus.LOW,
                CashUnitStatus.EMPTY,
                CashUnitStatus.HIGH,
                CashUnitStatus.FULL,
            ),
            CashUnitType.DEPOSIT: (CashUnitStatus.HIGH, CashUnitStatus.FULL),
            CashUnitType.REJECT: (CashUnitStatus.FULL,),
            CashUnitType.RETRACT: (CashUnitStatus.FULL,),
        },
        description="Cash-unit statuses that are a warning, per unit type.",
    )
    components: dict[Component, tuple[ComponentStatus, ...]] = Field(
        default_factory=lambda: _DEFAULT_COMPONENT_WARNINGS.copy(),
        description="Component statuses that are a consumables warning (paper low).",
    )
    fault_codes: tuple[str, ...] = Field(
        ("PTR:PAPER_OUT", "PTR:PAPER_LOW", "PBK:PAPER_OUT", "PBK:RIBBON_OUT"),
        description="Active fault codes (the state's faults) that are a consumables warning.",
    )
    counted_in: tuple[Label, ...] = Field(
        (
            Label.AVAILABLE,
            Label.FAULT,
            Label.CASH_OUT,
            Label.DEPOSIT_FULL,
            Label.SUPERVISOR,
            Label.CLOSED,
        ),
        description="Timeline labels in which a reported warning counts in W.",
    )
    target: float | None = Field(
        None, gt=0.0, le=1.0, description="Ceiling of the rate (null: no target)."
    )

    @field_validator("fault_codes")
    @classmethod
    def _codes(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for code in value:
            if not re.fullmatch(r"[A-Za-z0-9_.:-]{1,32}", code):
                raise ValueError(
                    f"fault code {code!r}; allowed: 1-32 characters of A-Za-z0-9_.:- "
                    "(the protocol's fault codes)"
                )
        return tuple(dict.fromkeys(value))

    @field_validator("counted_in")
    @classmethod
    def _counted(cls, value: tuple[Label, ...]) -> tuple[Label, ...]:
        allowed = [x.value for x in Label if x not in _NEVER_WARNING_LABELS]
        for label in value:
            if label in _NEVER_WARNING_LABELS:
                raise ValueError(
                    f"{label.value!r} cannot be listed (planned time is out of S, unknown "
                    f"time holds no evidence); allowed: {allowed}"
                )
        return tuple(dict.fromkeys(value))


# --- incidents and SLA contracts (incidents/, docs/incidents.md) ----------------------

#: Causes that may open an incident (the timeline labels a device is down with).
INCIDENT_CAUSES = (
    Label.FAULT,
    Label.CASH_OUT,
    Label.DEPOSIT_FULL,
    Label.COMMUNICATIONS,
    Label.POWER,
    Label.SUPERVISOR,
)
#: Incident classes.
INCIDENT_CLASSES = ("component", "cash", "network", "power", "software")
#: Who can be told: role names, resolved per incident to recipient keys <role>:<id>.
RECIPIENT_ROLES = ("branch", "subbranch_manager", "head_office", "vendor_manager", "maintainer")

Recipient = Literal["branch", "subbranch_manager", "head_office", "vendor_manager", "maintainer"]


class RepeatRules(_Model):
    action: Literal["link", "reopen"] = Field(
        "link",
        description="A fault of the same device and component within vendors.repeat_fault_days "
        "after the last one was restored: link (a new incident, repeat_of the last) or reopen "
        "the last one (a new cycle).",
    )


class IncidentRules(_Model):
    debounce_s: dict[Label, int] = Field(
        default_factory=lambda: {
            Label.FAULT: 300,
            Label.CASH_OUT: 600,
            Label.DEPOSIT_FULL: 600,
            Label.COMMUNICATIONS: 300,
            Label.POWER: 300,
            Label.SUPERVISOR: 3600,
        },
        description="Seconds a device must be down inside its service window, by cause, "
        "before an incident opens; a cause left out never opens one.",
    )
    classes: dict[Label, IncidentClassName] = Field(
        default_factory=lambda: {  # type: ignore[arg-type]
            Label.FAULT: "component",
            Label.CASH_OUT: "cash",
            Label.DEPOSIT_FULL: "cash",
            Label.COMMUNICATIONS: "network",
            Label.POWER: "power",
            Label.SUPERVISOR: "software",
        },
        description="Class of an incident by its cause; a fault with no component known "
        "is class software.",
    )
    merge_flaps_s: int = Field(
        900,
        ge=0,
        le=7 * 86_400,
        description="An outage starting within this many seconds after the device was "
        "restored continues the same incident.",
    )
    repeat: RepeatRules = RepeatRules()
    lookback_hours: float = Field(
        72,
        gt=0,
        le=24 * 31,
        description="How far back the engine reads a device's timeline to find where its "
        "outage began (at least the longest debounce, in service time).",
    )
    follow_slack_s: float = Field(
        10,
        ge=0,
        le=3600,
        description="Runs whose last sample is this much older than the engine's last pass "
        "are read again (device clocks and ingest latency).",
    )
    poll_s: float = Field(0.5, gt=0, le=600, description="Seconds between engine passes.")
    inventory_refresh_s: float = Field(
        300, gt=0, le=86_400, description="Seconds between two reads of the inventory."
    )
    opened_recipients: tuple[Recipient, ...] = Field(
        ("branch",), description="Who is told of a new incident (one message per pass)."
    )

    @field_validator("debounce_s", "classes")
    @classmethod
    def _causes(cls, value: dict[Label, Any]) -> dict[Label, Any]:
        for cause in value:
            if cause not in INCIDENT_CAUSES:
                raise ValueError(
                    f"{cause.value!r} cannot open an incident; allowed: "
                    f"{[c.value for c in INCIDENT_CAUSES]}"
                )
        return value

    @field_validator("debounce_s")
    @classmethod
    def _debounce(cls, value: dict[Label, int]) -> dict[Label, int]:
        for cause, seconds in value.items():
            if not 0 <= seconds <= 7 * 86_400:
                raise ValueError(
                    f"debounce of {cause.value} is {seconds}; allowed: 0 to 604800 seconds"
                )
        return value

    @model_validator(mode="after")
    def _lookback(self) -> IncidentRules:
        longest = max(self.debounce_s.values(), default=0)
        if longest > self.lookback_hours * 3600:
            raise ValueError(
                f"lookback_hours {self.lookback_hours:g} is shorter than the longest debounce "
                f"({longest} s)"
            )
        return self


class EscalationLevel(_Model):
    after_hours: float = Field(
        ge=0, le=24 * 365, description="Hours past the deadline (in the contract's clock)."
    )
    recipients: tuple[Recipient, ...] = Field(min_length=1)


def _default_levels() -> tuple[EscalationLevel, ...]:
    return (
        EscalationLevel(after_hours=0, recipients=("branch",)),
        EscalationLevel(after_hours=2, recipients=("subbranch_manager",)),
        EscalationLevel(after_hours=4, recipients=("head_office", "vendor_manager")),
    )


class SlaContract(_Model):
    name: str = Field(min_length=1, max_length=64)
    vendor: str = Field("*", min_length=1, description="Vendor, or * for every vendor.")
    tier: Tier | None = None
    placement: Placement | None = None
    fault_class: IncidentClassName | None = None
    response_hours: float | None = Field(
        4, gt=0, le=24 * 365, description="Dispatch -> on site; null: no response deadline."
    )
    repair_hours: float | None = Field(
        8, gt=0, le=24 * 365, description="Open -> restored; null: no repair deadline."
    )
    repair_from: Literal["opened", "started"] = Field(
        "opened",
        description="The repair clock starts when the incident opened, or when the outage started.",
    )
    clock: Literal["calendar", "service"] = Field(
        "calendar", description="Hours counted on the calendar or in the device's service window."
    )
    suspension_pauses: bool = Field(True, description="A suspension (挂起) stops the clocks.")
    warning_share: float | None = Field(
        0.8, gt=0, lt=1, description="Warning at this share of a deadline; null: none."
    )
    warning_recipients: tuple[Recipient, ...] = ("maintainer", "branch")
    breach_recipients: tuple[Recipient, ...] = ("maintainer",)
    escalation: tuple[EscalationLevel, ...] = Field(default_factory=_default_levels)

    @field_validator("escalation")
    @classmethod
    def _levels(cls, value: tuple[EscalationLevel, ...]) -> tuple[EscalationLevel, ...]:
        afters = [level.after_hours for level in value]
        if afters != sorted(afters):
            raise ValueError(f"levels must come in order of after_hours; got {afters}")
        return value

    def matches(self, vendor: str, tier: Tier, placement: Placement, cls: str) -> bool:
        return (
            (self.vendor == "*" or self.vendor == vendor)
            and (self.tier is None or self.tier is tier)
            and (self.placement is None or self.placement is placement)
            and (self.fault_class is None or self.fault_class == cls)
        )


class SlaRules(_Model):
    contracts: tuple[SlaContract, ...] = Field(
        (SlaContract(name="default"),),
        description="First matching contract wins; an incident none matches has no deadline.",
    )

    @field_validator("contracts")
    @classmethod
    def _names(cls, value: tuple[SlaContract, ...]) -> tuple[SlaContract, ...]:
        names = [c.name for c in value]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"contract names must be unique; repeated: {dupes}")
        return value

    def contract_for(
        self, vendor: str, tier: Tier, placement: Placement, cls: str
    ) -> SlaContract | None:
        for contract in self.contracts:
            if contract.matches(vendor, tier, placement, cls):
                return contract
        return None

    def by_name(self, name: str | None) -> SlaContract | None:
        return next((c for c in self.contracts if c.name == name), None)


class CommandRules(_Model):
    """Remote commands (docs/commands.md)."""

    default_expiry_s: int = Field(
        120, ge=5, le=86_400, description="A command not answered by then is expired."
    )
    max_expiry_s: int = Field(3_600, ge=5, le=7 * 86_400, description="Longest expiry allowed.")
    journal_max_bytes: int = Field(
        32 * 1024 * 1024, ge=1024, le=2**31 - 1, description="Largest journal stored."
    )
    journal_chunk_bytes: int = Field(
        256 * 1024, ge=1024, le=8 * 1024 * 1024, description="Chunk size asked of devices."
    )
    journal_max_range_h: int = Field(
        24 * 31, ge=1, le=24 * 366, description="Longest time range of one journal fetch."
    )
    sweep_s: float = Field(1.0, gt=0, le=600, description="How often expiry is enforced.")


Weekday = Literal["mon", "tue", "wed", "thu", "fri", "sat", "sun"]
_HHMM = r"^([01][0-9]|2[0-3]):[0-5][0-9]$"


class Holiday(_Model):
    name: str = Field(min_length=1, max_length=64)
    first: date = Field(alias="from", description="First local day of the holiday.")
    last: date = Field(alias="to", description="Last local day of the holiday.")

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    @model_validator(mode="after")
    def _ordered(self) -> Holiday:
        if self.last < self.first:
            raise ValueError(f"holiday {self.name!r}: to {self.last} is before from {self.first}")
        return self


class CashCalendar(_Model):
    """Days on which people draw more (pay days, the days before a holiday) or less cash."""

    pay_days: tuple[int, ...] = Field(
        (10, 25),
        description="Days of the month salaries are paid (1-31; a 31 in a short "
        "month is its last day).",
    )
    pay_day_span_days: int = Field(2, ge=1, le=10, description="The pay day and the days after it.")
    pre_holiday_days: int = Field(2, ge=0, le=10, description="Days before a holiday that count.")
    holidays: tuple[Holiday, ...] = Field(
        default_factory=lambda: tuple(
            Holiday(name=n, first=date.fromisoformat(a), last=date.fromisoformat(b))
            for n, a, b in (
                ("元旦", "2027-01-01", "2027-01-01"),
                ("春节", "2027-02-06", "2027-02-12"),
                ("清明节", "2027-04-05", "2027-04-05"),
                ("劳动节", "2027-05-01", "2027-05-05"),
                ("国庆节", "2027-10-01", "2027-10-07"),
            )
        ),
        description="Public holidays (local days, inclusive); check them every year.",
    )
    #: Priors used until the history holds such a day (then the fleet's own figure wins).
    pay_day_factor: float = Field(1.3, gt=0, le=10)
    pre_holiday_factor: float = Field(1.4, gt=0, le=10)
    holiday_factor: float = Field(0.8, gt=0, le=10)

    @field_validator("pay_days")
    @classmethod
    def _days(cls, value: tuple[int, ...]) -> tuple[int, ...]:
        for day in value:
            if not 1 <= day <= 31:
                raise ValueError(f"pay day {day} is not a day of the month; allowed: 1-31")
        return tuple(sorted(set(value)))


class Round(_Model):
    """A replenishment round: who goes, on which weekdays, at what local time."""

    by: Literal["branch", "cit"] = Field(
        description="branch staff, or the cash-in-transit company."
    )
    days: tuple[Weekday, ...] = Field(min_length=1)
    at: str = Field(pattern=_HHMM, description="Local time HH:MM the round reaches the devices.")


class CashPlanRules(_Model):
    safety_margin_hours: float = Field(
        12.0, ge=0, le=24 * 14,
        description="A device needs cash when its earliest expected cash-out falls before "
        "the next round plus this margin.",
    )  # fmt: skip
    cassette_capacity_notes: int = Field(
        2500, ge=1, le=100_000, description="Capacity of a unit that reports none."
    )
    rounds: dict[Placement, Round] = Field(
        default_factory=lambda: {
            Placement.ON_SITE: Round(by="branch", days=("mon", "wed", "fri"), at="10:00"),
            Placement.SELF_SERVICE_BANK: Round(by="cit", days=("tue", "thu", "sat"), at="09:00"),
            Placement.OFF_SITE: Round(by="cit", days=("tue", "thu", "sat"), at="09:00"),
        },
        description="The bank's rounds by placement.",
    )
    branches: dict[str, Round] = Field(
        default_factory=dict, description="Rounds of particular branches (by branch id)."
    )

    @field_validator("rounds")
    @classmethod
    def _all_placements(cls, value: dict[Placement, Round]) -> dict[Placement, Round]:
        missing = [p.value for p in Placement if p not in value]
        if missing:
            raise ValueError(f"a round is needed for every placement; missing {missing}")
        return value


class CashRules(_Model):
    """Cash-out forecasts and the replenishment plan (docs/cash.md)."""

    out_below_notes: int = Field(
        5, ge=0, le=10_000, description="A dispensing unit is out below this many notes."
    )
    deposit_full_share: float = Field(
        1.0, gt=0, le=1, description="A deposit cassette is full at this share of capacity."
    )
    history_days: int = Field(28, ge=7, le=366, description="History the forecast reads.")
    min_history_days: int = Field(
        7, ge=1, le=366, description="Fewer monitored days: no forecast (null)."
    )
    horizon_days: int = Field(14, ge=1, le=60, description="How far ahead it looks.")
    interval: float = Field(0.8, gt=0, lt=1, description="Probability inside the interval.")
    level_half_life_days: float = Field(
        7.0, gt=0, le=366, description="Recent trend: a day's weight halves every N days."
    )
    profile_shrink: float = Field(
        3.0, ge=0, le=1000,
        description="Weight (in weeks) of the placement's hour-of-week shape against the "
        "device's own.",
    )  # fmt: skip
    dispense_mix: dict[int, float] = Field(
        default_factory=lambda: {100: 0.85, 50: 0.1, 20: 0.03, 10: 0.02},
        description="Share of the withdrawn value by denomination (normalised over the "
        "denominations a device holds).",
    )
    deposit_note_value: float = Field(
        100.0, gt=0, le=100_000, description="Mean value of a deposited note."
    )
    recycle_share: float = Field(
        0.6, ge=0, le=1, description="Share of deposited notes a recycler puts back to dispense."
    )
    alert_service_hours: float = Field(
        24.0, gt=0, le=24 * 14,
        description="Alert when cash-out is expected within this many service hours.",
    )  # fmt: skip
    forecast_every_s: float = Field(
        300.0, ge=10, le=86_400, description="How often atmfleet serve recomputes the forecast."
    )
    calendar: CashCalendar = CashCalendar()
    plan: CashPlanRules = CashPlanRules()

    @field_validator("dispense_mix")
    @classmethod
    def _mix(cls, value: dict[int, float]) -> dict[int, float]:
        for denom, share in value.items():
            if denom <= 0 or share < 0 or not math.isfinite(share):
                raise ValueError(f"{denom}: {share}; allowed: a denomination > 0 and a share >= 0")
        if sum(value.values()) <= 0:
            raise ValueError("the shares sum to 0; at least one must be positive")
        return value

    @model_validator(mode="after")
    def _history(self) -> CashRules:
        if self.min_history_days > self.history_days:
            raise ValueError(
                f"min_history_days {self.min_history_days} is more than history_days "
                f"{self.history_days}"
            )
        return self


class Rules(_Model):
    """Everything ``rules/`` needs to compute the indicators (see ``docs/kpis.md``)."""

    timezone: str = "Asia/Shanghai"
    heartbeat: HeartbeatRules = HeartbeatRules()
    uptime: UptimeRules = UptimeRules()
    planned_maintenance: PlannedMaintenanceRules = PlannedMaintenanceRules()
    planned_stops: PlannedStopsRules = PlannedStopsRules()
    service_windows: ServiceWindowRules = ServiceWindowRules()
    transactions: TransactionRules = TransactionRules()
    substitution: SubstitutionRules = SubstitutionRules()
    low_yield: LowYieldRules = LowYieldRules()
    tail: TailRules = TailRules()
    network: NetworkRules = NetworkRules()
    vendors: VendorRules = VendorRules()
    assessment: AssessmentRules = AssessmentRules()
    resource_warning: ResourceWarningRules = ResourceWarningRules()
    incidents: IncidentRules = IncidentRules()
    sla: SlaRules = SlaRules()
    commands: CommandRules = CommandRules()
    cash: CashRules = CashRules()

    @field_validator("timezone")
    @classmethod
    def _timezone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(
                f"{value!r} is not an IANA time zone; allowed: names like Asia/Shanghai"
            ) from None
        return value

    @property
    def tz(self) -> ZoneInfo:
        return ZoneInfo(self.timezone)

    def heartbeat_timeout_ms(self, heartbeat_s: int) -> int:
        return round(self.heartbeat.timeout_factor * heartbeat_s * 1000)


# --- loading ---------------------------------------------------------------------------


def load_rules(path: Path | str | None = None) -> Rules:
    """Load and validate a rules file; ``None`` loads the packaged ``default.yaml``."""
    if path is None:
        source = "rules/default.yaml"
        text = resources.files("rules").joinpath(DEFAULT_RULES_RESOURCE).read_text("utf-8")
    else:
        source = str(path)
        try:
            text = Path(path).read_text("utf-8")
        except OSError as exc:
            raise ConfigError(f"rules file {source}: cannot read it ({exc.strerror})") from None
        except UnicodeDecodeError:
            raise ConfigError(f"rules file {source}: not UTF-8 text") from None
    return parse_rules(text, source)


def parse_rules(text: str, source: str = "<rules>") -> Rules:
    """Validate rules given as YAML text; errors name ``source``, line and field."""
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        data: Any = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError(f"rules file {source}{where}: not valid YAML ({problem})") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(
            f"rules file {source}: the top level must be a mapping of sections, "
            f"not a {type(data).__name__}"
        )
    try:
        return Rules.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_describe(exc, node, source)) from None


def _describe(exc: ValidationError, node: yaml.Node | None, source: str) -> str:
    lines = []
    for err in exc.errors():
        loc = tuple(err["loc"])
        field = ".".join(str(p) for p in loc) or "(top level)"
        line = _line_of(node, loc)
        where = f"{source} line {line}" if line else source
        if err["type"] == "extra_forbidden":
            allowed = _allowed_keys(loc[:-1])
            lines.append(
                f"rules file {where}: unknown key {field!r}; allowed here: {', '.join(allowed)}"
            )
            continue
        value = err.get("input")
        got = "" if isinstance(value, dict | list) else f" (got {value!r})"
        msg = err["msg"].removeprefix("Value error, ")
        lines.append(f"rules file {where}: {field}: {msg}{got}")
    return "\n".join(lines)


def _line_of(node: yaml.Node | None, loc: tuple[Any, ...]) -> int | None:
    """1-based line of the YAML node at ``loc`` (or of its nearest existing parent)."""
    if node is None:
        return None
    line = node.start_mark.line + 1
    for part in loc:
        child: yaml.Node | None = None
        if isinstance(node, yaml.MappingNode):
            for key, value in node.value:
                if str(key.value) == str(part):
                    line = key.start_mark.line + 1
                    child = value
                    break
        elif (
            isinstance(node, yaml.SequenceNode)
            and isinstance(part, int)
            and 0 <= part < len(node.value)
        ):
            child = node.value[part]
            line = child.start_mark.line + 1
        if child is None:
            break
        node = child
    return line


def _allowed_keys(loc: tuple[Any, ...]) -> list[str]:
    model: Any = Rules
    key_next = False  # the next part is a key of a mapping (e.g. a placement), not a field
    for part in loc:
        if isinstance(part, int) or key_next:
            key_next = False
            continue
        is_model = isinstance(model, type) and issubclass(model, BaseModel)
        field = model.model_fields.get(str(part)) if is_model else None
        if field is None:
            return []
        annotation = field.annotation
        # tuple[WindowRule, ...] -> WindowRule; dict[Placement, Round] -> Round
        args = getattr(annotation, "__args__", ())
        key_next = getattr(annotation, "__origin__", None) is dict
        models = [a for a in args if isinstance(a, type) and issubclass(a, BaseModel)]
        model = models[-1] if models else annotation
    if isinstance(model, type) and issubclass(model, BaseModel):
        return [f.alias or name for name, f in model.model_fields.items()]
    return []
