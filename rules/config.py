"""The rules file: every indicator's definition choices, targets and thresholds.

One pydantic model (:class:`Rules`), loaded once at start-up by :func:`load_rules`. The
shipped defaults are ``rules/default.yaml``; a bank points ``ATMFLEET_RULES_FILE`` at its
own copy. A bad file is refused with a :class:`~atmfleet.errors.ConfigError` whose message
names the file, the line, the field, the bad value and what is allowed.
"""

from __future__ import annotations

import math
from enum import StrEnum
from importlib import resources
from pathlib import Path
from typing import Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

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


class IncidentClassName(StrEnum):
    """The incident engine's classes (incidents.model.IncidentClass)."""

    COMPONENT = "component"
    CASH = "cash"
    NETWORK = "network"
    POWER = "power"
    SOFTWARE = "software"


class VendorRules(_Model):
    repeat_fault_days: int = Field(
        7, ge=1, le=365, description="Same device and component again within this many days."
    )
    worst_devices: int = Field(5, ge=0, le=1000)
    device_month_days: float = Field(30.0, gt=0, description="Days in one device-month.")
    incident_classes: list[IncidentClassName] = Field(
        default_factory=lambda: [IncidentClassName.COMPONENT, IncidentClassName.SOFTWARE],
        min_length=1,
        description="Incident classes the vendor answers for (counted in the scorecard).",
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
    for part in loc:
        if isinstance(part, int):
            continue
        is_model = isinstance(model, type) and issubclass(model, BaseModel)
        field = model.model_fields.get(str(part)) if is_model else None
        if field is None:
            return []
        annotation = field.annotation
        # tuple[WindowRule, ...] -> WindowRule
        args = getattr(annotation, "__args__", ())
        model = args[0] if args and not isinstance(annotation, type) else annotation
    if isinstance(model, type) and issubclass(model, BaseModel):
        return list(model.model_fields)
    return []
