"""The rules file: every indicator's definition choices, targets and thresholds.

One pydantic model (:class:`Rules`), loaded once at start-up by :func:`load_rules`. The
shipped defaults are ``rules/default.yaml``; a bank points ``ATMFLEET_RULES_FILE`` at its
own copy. A bad file is refused with a :class:`~atmfleet.errors.ConfigError` whose message
names the file, the line, the field, the bad value and what is allowed.
"""

from __future__ import annotations

import math
from datetime import date
from enum import StrEnum
from importlib import resources
from pathlib import Path
from typing import Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from atmfleet.errors import ConfigError
from atmfleet.inventory import Device, DeviceType, Placement, Tier
from atmfleet.protocol import TxnResult, TxnType
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


class VendorRules(_Model):
    repeat_fault_days: int = Field(
        7, ge=1, le=365, description="Same device and component again within this many days."
    )
    worst_devices: int = Field(5, ge=0, le=1000)
    device_month_days: float = Field(30.0, gt=0, description="Days in one device-month.")


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
    service_windows: ServiceWindowRules = ServiceWindowRules()
    transactions: TransactionRules = TransactionRules()
    substitution: SubstitutionRules = SubstitutionRules()
    low_yield: LowYieldRules = LowYieldRules()
    tail: TailRules = TailRules()
    network: NetworkRules = NetworkRules()
    vendors: VendorRules = VendorRules()
    assessment: AssessmentRules = AssessmentRules()
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
