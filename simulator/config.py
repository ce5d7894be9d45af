"""The simulator's parameters: one pydantic model with embedded defaults.

A YAML file (``atmfleet simulate --config FILE``) overrides any part of it; nested
mappings are merged key by key, so a file may hold a single value, e.g.::

    heartbeat_s: 30
    vendors:
      NCR: {mtbf_days: 20}

Every rate is checked once, at start-up; an error names the field, the bad value and
what is allowed (``ConfigError``). See ``docs/simulator.md`` for the meaning of each field.
"""

from __future__ import annotations

from calendar import monthrange
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from atmfleet.errors import ConfigError
from atmfleet.inventory import DeviceType, Placement
from atmfleet.protocol import TxnType
from atmfleet.settings import format_validation_error
from atmfleet.windows import ServiceWindow

PositiveFloat = float


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Reliability(_Model):
    """Fault behaviour of a vendor or model (exponential MTBF, log-normal times)."""

    mtbf_days: float = Field(gt=0, le=10_000, description="Mean days between faults.")
    response_h: float = Field(
        gt=0, le=240, description="Mean hours from the dispatch to the technician on site."
    )
    repair_h: float = Field(gt=0, le=240, description="Mean hours the technician works.")
    dispatch_h: float = Field(
        0.5,
        gt=0,
        le=240,
        description="Mean hours from a hardware fault to the bank dispatching the maintainer.",
    )
    software_share: float = Field(
        0.25, ge=0, le=1, description="Share of faults cleared by a remote reboot."
    )


class VendorProfile(Reliability):
    models: dict[str, Reliability] = Field(
        default_factory=dict, description="Per-model overrides of the vendor's figures."
    )
    share: float = Field(1.0, ge=0, description="Relative weight in a generated fleet.")


def _default_vendors() -> dict[str, VendorProfile]:
    def v(
        mtbf: float, resp: float, rep: float, share: float, **models: Reliability
    ) -> VendorProfile:
        return VendorProfile(
            mtbf_days=mtbf, response_h=resp, repair_h=rep, share=share, models=models
        )

    return {
        "GRG": v(
            40, 2.0, 1.5, 0.32, **{"H68N": Reliability(mtbf_days=45, response_h=2.0, repair_h=1.2)}
        ),
        "Yihua": v(35, 2.5, 1.8, 0.22),
        "KingTeller": v(28, 3.0, 2.0, 0.12),
        "Hitachi": v(50, 3.0, 1.5, 0.10),
        "NCR": v(
            45,
            3.5,
            2.0,
            0.14,
            **{"SelfServ 84": Reliability(mtbf_days=55, response_h=3.0, repair_h=1.8)},
        ),
        "DieboldNixdorf": v(42, 4.0, 2.2, 0.10),
    }


#: Models a generated fleet uses, by vendor and device type.
DEFAULT_MODELS: dict[str, dict[DeviceType, str]] = {
    "GRG": {
        DeviceType.ATM: "H22N",
        DeviceType.CRS: "H68N",
        DeviceType.DEPOSIT: "CDS6040",
        DeviceType.SMART_TELLER: "STM-G80",
        DeviceType.PASSBOOK: "PBM-G1",
        DeviceType.INQUIRY: "KQ-G2",
    },
    "Yihua": {
        DeviceType.ATM: "YH-5050",
        DeviceType.CRS: "YH-6040W",
        DeviceType.DEPOSIT: "YH-C3",
        DeviceType.SMART_TELLER: "YH-STM3",
        DeviceType.PASSBOOK: "YH-PB2",
        DeviceType.INQUIRY: "YH-Q1",
    },
    "KingTeller": {
        DeviceType.ATM: "KT-A30",
        DeviceType.CRS: "KT-R50",
        DeviceType.DEPOSIT: "KT-D20",
        DeviceType.SMART_TELLER: "KT-S10",
        DeviceType.PASSBOOK: "KT-P5",
        DeviceType.INQUIRY: "KT-Q5",
    },
    "Hitachi": {
        DeviceType.ATM: "HT-2845V",
        DeviceType.CRS: "HT-2845SR",
        DeviceType.DEPOSIT: "HT-DP1",
        DeviceType.SMART_TELLER: "HT-STM",
        DeviceType.PASSBOOK: "HT-PB",
        DeviceType.INQUIRY: "HT-Q",
    },
    "NCR": {
        DeviceType.ATM: "SelfServ 22",
        DeviceType.CRS: "SelfServ 84",
        DeviceType.DEPOSIT: "SelfServ 36",
        DeviceType.SMART_TELLER: "SelfServ 90",
        DeviceType.PASSBOOK: "SelfServ PB",
        DeviceType.INQUIRY: "SelfServ Q",
    },
    "DieboldNixdorf": {
        DeviceType.ATM: "CS 280",
        DeviceType.CRS: "CS 5550",
        DeviceType.DEPOSIT: "CS 4060",
        DeviceType.SMART_TELLER: "BEETLE STM",
        DeviceType.PASSBOOK: "BEETLE PB",
        DeviceType.INQUIRY: "BEETLE Q",
    },
}


class TxnProfile(_Model):
    """Transactions of one device type: mean per day and the mix of types (weights)."""

    per_day: float = Field(ge=0, le=10_000)
    mix: dict[TxnType, float] = Field(min_length=1)
    low_yield_threshold: float | None = Field(
        None,
        ge=0,
        description="Successful financial transactions per day below which a device "
        "of this type is low-yield (what the chronically low-yield devices stay under).",
    )

    @field_validator("mix")
    @classmethod
    def _weights(cls, value: dict[TxnType, float]) -> dict[TxnType, float]:
        for key, weight in value.items():
            if weight < 0:
                raise ValueError(f"weight of {key.value!r} is {weight}; weights must be >= 0")
        if sum(value.values()) <= 0:
            raise ValueError("weights sum to 0; at least one must be positive")
        return value


def _default_txn() -> dict[DeviceType, TxnProfile]:
    T = TxnType
    return {
        DeviceType.ATM: TxnProfile(
            per_day=150,
            mix={T.WITHDRAWAL: 60, T.INQUIRY: 24, T.TRANSFER: 10, T.PIN_CHANGE: 3, T.STATEMENT: 3},
            low_yield_threshold=40,
        ),
        DeviceType.CRS: TxnProfile(
            per_day=190,
            mix={T.WITHDRAWAL: 40, T.DEPOSIT: 25, T.INQUIRY: 20, T.TRANSFER: 12, T.PIN_CHANGE: 3},
            low_yield_threshold=60,
        ),
        DeviceType.DEPOSIT: TxnProfile(
            per_day=90,
            mix={T.DEPOSIT: 70, T.INQUIRY: 25, T.STATEMENT: 5},
            low_yield_threshold=20,
        ),
        DeviceType.SMART_TELLER: TxnProfile(
            per_day=70,
            mix={T.TRANSFER: 30, T.PAYMENT: 25, T.STATEMENT: 20, T.INQUIRY: 15, T.PIN_CHANGE: 10},
            low_yield_threshold=15,
        ),
        DeviceType.PASSBOOK: TxnProfile(per_day=45, mix={T.PASSBOOK: 100}),
        DeviceType.INQUIRY: TxnProfile(
            per_day=35, mix={T.INQUIRY: 70, T.STATEMENT: 20, T.PAYMENT: 10}
        ),
    }


def _flat(day: float = 1.0) -> list[float]:
    return [day] * 24


#: Relative transaction intensity per local hour (0..23); normalised to a daily sum.
_ON_SITE_HOURS = [0.1, 0.05, 0.03, 0.03, 0.05, 0.1, 0.3, 0.6, 1.0, 1.6, 2.0, 2.0,
                  1.6, 1.6, 1.8, 1.9, 1.8, 1.6, 1.3, 1.0, 0.8, 0.6, 0.4, 0.2]  # fmt: skip
_OFF_SITE_HOURS = [0.2, 0.1, 0.05, 0.05, 0.05, 0.1, 0.2, 0.4, 0.7, 1.0, 1.3, 1.5,
                   1.6, 1.5, 1.5, 1.6, 1.7, 1.8, 1.9, 1.9, 1.7, 1.3, 0.8, 0.4]  # fmt: skip


class Rhythm(_Model):
    """Daily and weekly rhythm of one placement."""

    hourly: list[float] = Field(min_length=24, max_length=24)
    weekly: list[float] = Field(
        min_length=7, max_length=7, description="Monday..Sunday factors (mean about 1)."
    )
    volume: float = Field(1.0, ge=0, description="Volume factor of this placement.")

    @field_validator("hourly", "weekly")
    @classmethod
    def _non_negative(cls, value: list[float]) -> list[float]:
        if any(x < 0 for x in value) or sum(value) <= 0:
            raise ValueError(f"factors must be >= 0 and not all 0 (got {value})")
        return value


def _default_rhythm() -> dict[Placement, Rhythm]:
    return {
        Placement.ON_SITE: Rhythm(
            hourly=_ON_SITE_HOURS, weekly=[1.15, 1.05, 1.0, 1.0, 1.15, 0.85, 0.8], volume=1.0
        ),
        Placement.SELF_SERVICE_BANK: Rhythm(
            hourly=_ON_SITE_HOURS, weekly=[1.1, 1.0, 1.0, 1.0, 1.1, 0.9, 0.9], volume=0.9
        ),
        Placement.OFF_SITE: Rhythm(
            hourly=_OFF_SITE_HOURS, weekly=[0.9, 0.9, 0.9, 0.95, 1.1, 1.2, 1.15], volume=0.8
        ),
    }


class Cash(_Model):
    """Cash handling: notes loaded, deposit cassette, replenishment visits."""

    notes_loaded: int = Field(3000, ge=1, le=100_000, description="¥100 notes per load.")
    low_share: float = Field(0.1, gt=0, lt=1, description="cash_low below this share.")
    deposit_capacity: int = Field(3000, ge=1, le=100_000, description="Notes.")
    crs_recycle_share: float = Field(
        0.6, ge=0, le=1, description="Share of a CRS's deposited notes recycled to dispense."
    )
    replenish_every_days: list[int] = Field(
        [2, 3, 4], min_length=1, description="Visit interval, drawn per device."
    )
    replenish_hour: float = Field(10.0, ge=0, lt=24, description="Local hour of a visit.")
    emergency_response_h: float = Field(
        3.0, gt=0, le=240, description="Mean hours from cash-out/deposit-full to a visit."
    )
    supervisor_min: float = Field(25.0, gt=0, le=600, description="Mean minutes of a visit.")

    @field_validator("replenish_every_days")
    @classmethod
    def _positive_days(cls, value: list[int]) -> list[int]:
        if any(d < 1 for d in value):
            raise ValueError(f"intervals must be >= 1 day (got {value})")
        return value


class HolidaySpan(_Model):
    name: str = Field(min_length=1)
    first: date = Field(alias="from")
    last: date = Field(alias="to")

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


class Calendar(_Model):
    """Days on which customers draw more cash (pay days, the days before a holiday) or
    less (holidays): a factor on the rate of withdrawals only (other types unchanged)."""

    pay_days: list[int] = Field([10, 25], description="Days of the month (31 = last day).")
    pay_day_span_days: int = Field(2, ge=1, le=10)
    pay_day_factor: float = Field(1.4, gt=0, le=10)
    pre_holiday_days: int = Field(2, ge=0, le=10)
    pre_holiday_factor: float = Field(1.6, gt=0, le=10)
    holiday_factor: float = Field(0.75, gt=0, le=10)
    holidays: list[HolidaySpan] = Field(
        default_factory=lambda: [
            HolidaySpan(name="国庆节", first=date(2026, 10, 1), last=date(2026, 10, 7)),
            HolidaySpan(name="元旦", first=date(2027, 1, 1), last=date(2027, 1, 1)),
            HolidaySpan(name="春节", first=date(2027, 2, 6), last=date(2027, 2, 12)),
        ]
    )

    @field_validator("pay_days")
    @classmethod
    def _days(cls, value: list[int]) -> list[int]:
        if any(not 1 <= d <= 31 for d in value):
            raise ValueError(f"pay days must be days of the month 1-31 (got {value})")
        return value

    def withdrawal_factor(self, day: date) -> float:
        """The factor on withdrawals of a local day."""
        for h in self.holidays:
            if h.first <= day <= h.last:
                return self.holiday_factor
        for h in self.holidays:
            if h.first - timedelta(days=self.pre_holiday_days) <= day < h.first:
                return self.pre_holiday_factor
        for back in range(self.pay_day_span_days):
            d = day - timedelta(days=back)
            last = monthrange(d.year, d.month)[1]
            if any(min(p, last) == d.day for p in self.pay_days):
                return self.pay_day_factor
        return 1.0


class Incidents(_Model):
    """Correlated and individual outages (rates per unit per year, durations in minutes)."""

    branch_power_cuts_per_year: float = Field(1.0, ge=0, le=100_000)
    power_cut_min: float = Field(90.0, gt=0, le=7 * 1440)
    subbranch_network_outages_per_year: float = Field(3.0, ge=0, le=100_000)
    network_outage_min: float = Field(40.0, gt=0, le=7 * 1440)
    device_link_drops_per_year: float = Field(6.0, ge=0, le=10_000_000)
    link_drop_min: float = Field(8.0, gt=0, le=1440)
    planned_every_days: float = Field(90.0, gt=0, le=3650)
    planned_min: float = Field(120.0, gt=0, le=7 * 1440)


class CommandSide(_Model):
    """How simulated devices answer remote commands (``atmfleet simulate-devices``)."""

    silent_share: float = Field(
        0.0, ge=0, le=1, description="Share of commands never answered (they expire)."
    )
    fail_share: float = Field(0.0, ge=0, le=1, description="Share of commands that fail.")
    work_s: float = Field(0.0, ge=0, le=600, description="Time from accepted to done.")
    restart_s: float = Field(1.0, ge=0, le=600, description="Time an application restart takes.")
    remember_ids: int = Field(
        10_000, ge=1, le=10_000_000, description="Recent command ids a device keeps."
    )
    journal_bytes_per_hour: int = Field(
        50_000, ge=0, le=10**9, description="Size of a device's journal per hour."
    )
    heartbeat_s: int = Field(60, ge=5, le=3600, description="Heartbeat of the state messages.")
    fault_share: float = Field(
        0.0, ge=0, le=1, description="Share of devices that start in a fault."
    )


class Technicians(_Model):
    """The vendors' technicians: when the bank dispatches one (``docs/simulator.md``)."""

    dispatch_after_min: float = Field(
        10.0,
        ge=0,
        le=1440,
        description="The earliest dispatch after a fault, in minutes counted inside the "
        "device's service window (keep it above the incident engine's debounce: the "
        "operator dispatches an incident that exists).",
    )


class SimConfig(_Model):
    """Everything the simulated fleet does; all defaults embedded."""

    timezone: str = "Asia/Shanghai"
    heartbeat_s: int | None = Field(
        None,
        ge=5,
        le=3600,
        description="Heartbeat of every device; None = the inventory's value (default 60).",
    )
    backfill_heartbeat_s: int = Field(
        300, ge=5, le=3600, description="Heartbeat used by --backfill (keeps history small)."
    )
    start_spread_heartbeats: float = Field(
        1.0,
        ge=0,
        le=100,
        description="Each device comes up at its own moment within this many heartbeats of "
        "the run's start (0 = all at once), so the fleet's heartbeats spread over the minute.",
    )
    heartbeat_drift: float = Field(
        0.001,
        ge=0,
        le=0.05,
        description="Each device's heartbeat period is off by up to this share (its own "
        "clock), so the phases keep drifting apart.",
    )
    vendors: dict[str, VendorProfile] = Field(default_factory=_default_vendors, min_length=1)
    default_reliability: Reliability = Reliability(mtbf_days=40, response_h=3.0, repair_h=2.0)
    technicians: Technicians = Technicians()
    txn: dict[DeviceType, TxnProfile] = Field(default_factory=_default_txn)
    rhythm: dict[Placement, Rhythm] = Field(default_factory=_default_rhythm)
    txn_result_weights: dict[str, float] = Field(
        default_factory=lambda: {"ok": 95.0, "declined": 3.0, "failed": 1.0, "cancelled": 1.0}
    )
    inter_bank_share: float = Field(0.2, ge=0, le=1, description="Cards of another bank.")
    inter_bank_fee: list[float] = Field(
        [2.0, 2.5, 3.0, 4.0], min_length=1, description="Fee (¥) of an inter-bank withdrawal."
    )
    low_yield_share: float = Field(
        0.05, ge=0, le=1, description="Share of devices that are chronically low-yield."
    )
    volume_sigma: float = Field(
        0.3, ge=0, le=2, description="Log-normal spread of normal devices' volume."
    )
    substitution_median: float = Field(
        0.6, gt=0, lt=1, description="Median substitution rate of the outlets."
    )
    substitution_spread: float = Field(
        0.1, ge=0, le=0.5, description="Standard deviation of outlets' substitution rates."
    )
    counter_hour: float = Field(
        20.0, ge=0, lt=24, description="Local hour the core system reports the day's counters."
    )
    cash: Cash = Cash()
    calendar: Calendar = Calendar()
    incidents: Incidents = Incidents()
    commands: CommandSide = CommandSide()
    store_forward_max: int = Field(
        20_000, ge=0, description="Messages a device buffers while its link is down."
    )
    degraded_share: float = Field(
        0.3,
        ge=0,
        le=1,
        description="Share of a CRS's deposit-module faults that leave it degraded.",
    )

    @field_validator("timezone")
    @classmethod
    def _tz(cls, value: str) -> str:
        from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"unknown time zone {value!r} (e.g. Asia/Shanghai)") from None
        return value

    @field_validator("txn_result_weights")
    @classmethod
    def _results(cls, value: dict[str, float]) -> dict[str, float]:
        allowed = {"ok", "declined", "failed", "cancelled", "timeout"}
        for key, weight in value.items():
            if key not in allowed:
                raise ValueError(f"unknown result {key!r}; allowed: {', '.join(sorted(allowed))}")
            if weight < 0:
                raise ValueError(f"weight of {key!r} is {weight}; weights must be >= 0")
        if value.get("ok", 0) <= 0:
            raise ValueError("the weight of 'ok' must be positive")
        return value

    @field_validator("inter_bank_fee")
    @classmethod
    def _fees(cls, value: list[float]) -> list[float]:
        if any(f < 0 or f > 1000 for f in value):
            raise ValueError(f"fees must be between 0 and 1000 (got {value})")
        return value

    @model_validator(mode="after")
    def _complete(self) -> SimConfig:
        missing = [t.value for t in DeviceType if t not in self.txn]
        if missing:
            raise ValueError(f"txn has no profile for device type(s) {', '.join(missing)}")
        missing = [p.value for p in Placement if p not in self.rhythm]
        if missing:
            raise ValueError(f"rhythm has no profile for placement(s) {', '.join(missing)}")
        return self

    def reliability(self, vendor: str, model: str) -> Reliability:
        profile = self.vendors.get(vendor)
        if profile is None:
            return self.default_reliability
        return profile.models.get(model, profile)


DEFAULT_WINDOWS: dict[tuple[Placement, DeviceType | None], str] = {
    (Placement.OFF_SITE, None): "24x7",
    (Placement.SELF_SERVICE_BANK, None): "24x7",
    (Placement.ON_SITE, DeviceType.ATM): "24x7",
    (Placement.ON_SITE, DeviceType.CRS): "24x7",
    (Placement.ON_SITE, DeviceType.DEPOSIT): "24x7",
}
#: In-hall devices without their own window: business hours (as rules/default.yaml).
BUSINESS_HOURS = "daily 09:00-17:00"


def default_window(placement: Placement, device_type: DeviceType) -> str:
    """The window a device without one gets: lobby and off-site 24x7, in-hall business hours."""
    return (
        DEFAULT_WINDOWS.get((placement, None))
        or DEFAULT_WINDOWS.get((placement, device_type))
        or BUSINESS_HOURS
    )


def _merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def make_config(override: dict[str, Any] | None = None, source: str = "config") -> SimConfig:
    """Defaults merged with ``override``; ``ConfigError`` names the bad field."""
    base = SimConfig().model_dump(mode="json")
    try:
        return SimConfig.model_validate(_merge(base, override or {}))
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, source=source)) from None


def load_config(path: Path) -> SimConfig:
    """Read a YAML override file."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read simulator config {path}: {exc.strerror}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of settings, got {type(data).__name__}")
    return make_config(data, source=str(path))


def check_window(spec: str, where: str) -> ServiceWindow:
    try:
        return ServiceWindow.parse(spec)
    except ValueError as exc:
        raise ConfigError(f"{where}: service window {spec!r}: {exc}") from None
