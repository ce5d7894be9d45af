"""The device telemetry protocol, version 1: topics and payload models.

These models are the single source of truth for the wire contract described in
``docs/protocol.md``; every example in that document is validated against them by a
test. A message is parsed with :func:`parse_message`, which never raises anything but
:class:`ProtocolError` (whose ``reason`` is a short machine-readable code and whose
message says what was wrong).

Wire types are strict (pydantic strict mode, JSON input): a number is a JSON number, a
boolean ``true``/``false``, a timestamp an RFC 3339 string; ``"7"`` for 7, ``true`` for 1,
``"yes"`` for true, Unix time are refused (``invalid``). Models built in Python (the
counter file import, the simulator) keep pydantic's ordinary conversions.

Forward compatibility: unknown fields are ignored (a newer device may send more);
an unknown *schema version* is refused, because its known fields may mean something else.
"""

from __future__ import annotations

import json
import re
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidatorFunctionWrapHandler,
    WrapValidator,
    computed_field,
    field_validator,
    model_validator,
)

SCHEMA_VERSION = 1
TOPIC_ROOT = "atmfleet/v1"
MAX_PAYLOAD_BYTES = 16 * 1024
MAX_CLOCK_SKEW = timedelta(minutes=5)
DEFAULT_HEARTBEAT_S = 60
QOS = 1

DEVICE_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"
_DEVICE_ID_RE = re.compile(DEVICE_ID_PATTERN)

DeviceId = Annotated[str, Field(pattern=DEVICE_ID_PATTERN)]
BranchId = Annotated[str, Field(pattern=DEVICE_ID_PATTERN)]
Seq = Annotated[int, Field(ge=0, lt=2**63)]


#: A timestamp on the wire: an RFC 3339 date and time (the zone is checked afterwards).
_RFC3339_RE = re.compile(
    r"\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}:\d{2}(\.\d{1,9})?([Zz]|[+-]\d{2}:\d{2})?"
)


def _rfc3339(value: Any, handler: ValidatorFunctionWrapHandler) -> Any:
    """A timestamp string is parsed here: pydantic would also read Unix time (a number, or
    a string of digits), and in strict mode it takes no string at all."""
    if isinstance(value, str):
        if not _RFC3339_RE.fullmatch(value):
            raise ValueError(
                f"timestamp {value[:40]!r} is not RFC 3339, e.g. 2026-11-28T02:15:00.250Z"
            )
        try:
            value = datetime.fromisoformat(value.upper())
        except ValueError:
            raise ValueError(f"timestamp {value!r} is not a valid date and time") from None
    elif not isinstance(value, datetime):
        raise ValueError("timestamp must be an RFC 3339 string")
    return handler(value)


def _require_utc(value: datetime) -> datetime:
    if value.tzinfo is None or value.utcoffset() != timedelta(0):
        raise ValueError("timestamp must be UTC, e.g. 2026-11-28T02:15:00.250Z")
    return value.astimezone(UTC)


UtcTimestamp = Annotated[datetime, WrapValidator(_rfc3339), AfterValidator(_require_utc)]


class Kind(StrEnum):
    """The topic families: ``atmfleet/v1/device/<device_id>/<kind>``."""

    STATE = "state"
    EVENT = "event"
    TXN = "txn"
    PRESENCE = "presence"


class DeviceState(StrEnum):
    """What the device says it is doing. Offline is never sent: it is inferred."""

    IN_SERVICE = "in_service"
    DEGRADED = "degraded"  # serving with a function lost (e.g. deposit module down)
    FAULT = "fault"  # hardware or software fault, out of service
    CASH_OUT = "cash_out"  # no cash to dispense (缺钞)
    DEPOSIT_FULL = "deposit_full"  # deposit cassette full, cannot accept
    SUPERVISOR = "supervisor"  # replenishment / balancing (加钞/清机)
    MAINTENANCE = "maintenance"  # technician on site, unplanned
    PLANNED_MAINTENANCE = "planned_maintenance"  # declared planned maintenance
    COMMS_DOWN = "comms_down"  # host/network link lost; reported in a store-and-forward backlog
    CLOSED = "closed"  # outside its service window, by schedule
    POWERED_OFF = "powered_off"  # sent on UPS-backed shutdown


#: States in which the device serves customers.
SERVING_STATES = frozenset({DeviceState.IN_SERVICE, DeviceState.DEGRADED})


class ComponentStatus(StrEnum):
    OK = "ok"
    WARNING = "warning"
    FAULT = "fault"
    OFFLINE = "offline"
    ABSENT = "absent"
    OPEN = "open"  # safe door, shutter


class Component(StrEnum):
    """CEN/XFS device classes a device reports."""

    IDC = "idc"  # card reader
    CDM = "cdm"  # cash dispenser
    CIM = "cim"  # cash acceptor / deposit module
    PTR = "ptr"  # receipt printer
    PIN = "pin"  # PIN pad
    SHUTTER = "shutter"
    SAFE_DOOR = "safe_door"
    PBK = "pbk"  # passbook printer


class CashUnitType(StrEnum):
    DISPENSE = "dispense"
    DEPOSIT = "deposit"
    RECYCLE = "recycle"
    REJECT = "reject"
    RETRACT = "retract"


class CashUnitStatus(StrEnum):
    OK = "ok"
    LOW = "low"
    EMPTY = "empty"
    FULL = "full"
    HIGH = "high"
    INOP = "inop"
    MISSING = "missing"


class _Strict(BaseModel):
    """Nested objects: unknown fields ignored, types checked."""

    model_config = ConfigDict(extra="ignore", frozen=True)


class CashUnit(_Strict):
    id: str = Field(min_length=1, max_length=16)
    type: CashUnitType
    currency: str = Field("CNY", pattern=r"^[A-Z]{3}$")
    denomination: int = Field(
        ge=0, le=100_000, description="Note value in whole units (100 = ¥100)."
    )
    count: int = Field(ge=0, le=100_000)
    capacity: int | None = Field(None, ge=0, le=100_000)
    status: CashUnitStatus


class Envelope(_Strict):
    """Fields every device message carries."""

    v: Literal[1] = Field(description="Schema version.")
    device_id: DeviceId
    ts: UtcTimestamp = Field(description="Device clock, UTC, when the fact happened.")
    seq: Seq = Field(description="Per-device counter; only grows, across reboots too.")


_COMPONENT_NAMES = frozenset(c.value for c in Component)


class StateMessage(Envelope):
    """Heartbeat: sent every ``heartbeat_s`` seconds and at once on every change."""

    state: DeviceState
    heartbeat_s: int = Field(DEFAULT_HEARTBEAT_S, ge=5, le=3600)
    components: dict[Component, ComponentStatus] = Field(default_factory=dict)
    cash_units: list[CashUnit] = Field(default_factory=list, max_length=16)
    faults: list[str] = Field(
        default_factory=list, max_length=32, description="Active fault codes."
    )

    @field_validator("components", mode="before")
    @classmethod
    def _ignore_unknown_components(cls, value: Any) -> Any:
        """A component class this version does not know is ignored like an unknown field,
        so a newer device's heartbeat (which carries its state) is never refused for it."""
        if isinstance(value, dict) and not value.keys() <= _COMPONENT_NAMES:
            return {k: v for k, v in value.items() if k in _COMPONENT_NAMES}
        return value


class EventType(StrEnum):
    FAULT = "fault"  # a fault was raised
    FAULT_CLEARED = "fault_cleared"
    CASH_LOW = "cash_low"
    CASH_OUT = "cash_out"
    REPLENISHED = "replenished"
    DEPOSIT_FULL = "deposit_full"
    DEPOSIT_EMPTIED = "deposit_emptied"
    SUPERVISOR_ENTER = "supervisor_enter"
    SUPERVISOR_EXIT = "supervisor_exit"
    TECHNICIAN_ARRIVED = "technician_arrived"  # maintenance mode entered
    TECHNICIAN_LEFT = "technician_left"
    POWER_RESTORED = "power_restored"  # ``since`` = when power was lost
    REBOOT = "reboot"


class Severity(StrEnum):
    INFO = "info"
    WARNING = "warning"
    CRITICAL = "critical"


class EventMessage(Envelope):
    """A fault or an operational event."""

    event: EventType
    component: Component | None = None
    code: str | None = Field(None, max_length=32, pattern=r"^[A-Za-z0-9_.:-]+$")
    severity: Severity = Severity.INFO
    text: str | None = Field(None, max_length=500)
    since: UtcTimestamp | None = Field(
        None, description="For power_restored: when the power was lost."
    )

    @model_validator(mode="after")
    def _fault_has_code(self) -> EventMessage:
        if self.event in (EventType.FAULT, EventType.FAULT_CLEARED) and not self.code:
            raise ValueError(f"event {self.event.value!r} needs a fault code in 'code'")
        if self.event is EventType.POWER_RESTORED and self.since is None:
            raise ValueError("event 'power_restored' needs 'since' (when power was lost)")
        if self.since is not None and self.since > self.ts:
            raise ValueError("'since' is after 'ts'")
        return self


class TxnType(StrEnum):
    WITHDRAWAL = "withdrawal"
    DEPOSIT = "deposit"
    TRANSFER = "transfer"
    PAYMENT = "payment"
    INQUIRY = "inquiry"
    PIN_CHANGE = "pin_change"
    STATEMENT = "statement"
    PASSBOOK = "passbook"


#: Default financial (账务性) types: they move money or change an account. The rules
#: file may override which types count as financial for a KPI; the ``financial`` flag on
#: the wire is derived from this default.
FINANCIAL_TYPES = frozenset(
    {TxnType.WITHDRAWAL, TxnType.DEPOSIT, TxnType.TRANSFER, TxnType.PAYMENT}
)


class TxnResult(StrEnum):
    OK = "ok"
    DECLINED = "declined"
    FAILED = "failed"
    CANCELLED = "cancelled"
    TIMEOUT = "timeout"


Money = Annotated[Decimal, Field(ge=0, le=Decimal("10000000"), max_digits=12, decimal_places=2)]


class TxnMessage(Envelope):
    """One customer transaction, sent when it completes."""

    txn_id: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.:-]+$")
    type: TxnType
    amount: Money = Decimal("0")
    currency: str = Field("CNY", pattern=r"^[A-Z]{3}$")
    fee: Money = Decimal("0")
    result: TxnResult
    duration_ms: int = Field(ge=0, le=3_600_000)
    on_us: bool = Field(True, description="False for another bank's card (inter-bank).")

    @computed_field  # type: ignore[prop-decorator]
    @property
    def financial(self) -> bool:
        return self.type in FINANCIAL_TYPES


class PresenceStatus(StrEnum):
    ONLINE = "online"
    OFFLINE = "offline"


class PresenceMessage(_Strict):
    """Retained birth (``online``) and last will (``offline``).

    The will is registered at connect time, so its ``ts`` is the connect time, not
    the moment the connection died: the collector uses its own receive time for a will.
    ``session`` ties a will to the connection it belongs to; presence has no ``seq``.
    """

    v: Literal[1]
    device_id: DeviceId
    status: PresenceStatus
    ts: UtcTimestamp
    session: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.:-]+$")
    will: bool = Field(
        False,
        description="True when sent by the broker as the last will (ts = connect time); "
        "False when sent by the device or its gateway (ts = when the link was lost/restored).",
    )


class CounterMessage(_Strict):
    """Teller-counter transaction volumes of one branch for one local day (core banking).

    Topic ``atmfleet/v1/branch/<branch_id>/counter``; retained is allowed; a later message
    for the same branch and date replaces the earlier one.
    """

    v: Literal[1]
    branch_id: BranchId
    date: date
    financial: int = Field(ge=0, le=10_000_000)
    non_financial: int = Field(0, ge=0, le=10_000_000)
    source: str = Field("core", max_length=32)
    ts: UtcTimestamp


DeviceMessage = StateMessage | EventMessage | TxnMessage | PresenceMessage
AnyMessage = DeviceMessage | CounterMessage

_MODELS: dict[str, type[BaseModel]] = {
    Kind.STATE: StateMessage,
    Kind.EVENT: EventMessage,
    Kind.TXN: TxnMessage,
    Kind.PRESENCE: PresenceMessage,
}


class ProtocolError(Exception):
    """A message that cannot be accepted. ``reason`` is a stable short code."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


# Stable reason codes (dead-letter table, metrics label).
REASONS = (
    "bad_topic",
    "too_large",
    "not_utf8",
    "bad_json",
    "not_object",
    "unknown_version",
    "invalid",
    "device_mismatch",
    "future_timestamp",
)


def device_topic(device_id: str, kind: Kind | str) -> str:
    return f"{TOPIC_ROOT}/device/{device_id}/{Kind(kind).value}"


def counter_topic(branch_id: str) -> str:
    return f"{TOPIC_ROOT}/branch/{branch_id}/counter"


#: Subscriptions a collector makes: everything under the root, so that a message on any
#: other topic is seen and dead-lettered (``bad_topic``) instead of vanishing unseen.
SUBSCRIPTIONS = (f"{TOPIC_ROOT}/#",)
#: What collectors subscribed to before; unsubscribed from a resumed session (a message
#: would otherwise be delivered once per matching subscription).
LEGACY_SUBSCRIPTIONS = (f"{TOPIC_ROOT}/device/+/+", f"{TOPIC_ROOT}/branch/+/counter")


def parse_topic(topic: str) -> tuple[str, str, str]:
    """Return ``(scope, id, kind)``: ``("device", id, kind)`` or ``("branch", id, "counter")``."""
    parts = topic.split("/")
    if len(parts) != 5 or f"{parts[0]}/{parts[1]}" != TOPIC_ROOT:
        raise ProtocolError(
            "bad_topic", f"topic {topic[:200]!r} is not {TOPIC_ROOT}/<scope>/<id>/<kind>"
        )
    scope, ident, kind = parts[2], parts[3], parts[4]
    if not _DEVICE_ID_RE.fullmatch(ident):  # fullmatch: "$" alone would allow a final "\n"
        raise ProtocolError(
            "bad_topic", f"id {ident[:80]!r} in topic does not match {DEVICE_ID_PATTERN}"
        )
    if scope == "device" and kind in _MODELS:
        return scope, ident, kind
    if scope == "branch" and kind == "counter":
        return scope, ident, kind
    raise ProtocolError("bad_topic", f"unknown topic family {scope}/…/{kind[:40]}")


def _first_error(exc: ValidationError) -> str:
    errs = exc.errors()
    shown = []
    for err in errs[:3]:
        loc = ".".join(str(p) for p in err["loc"]) or "(message)"
        value = err.get("input")
        got = "" if isinstance(value, dict | list) else f" (got {str(value)[:60]!r})"
        shown.append(f"{loc}: {err['msg']}{got}")
    more = f" (+{len(errs) - 3} more)" if len(errs) > 3 else ""
    return "; ".join(shown) + more


def _refuse_constant(name: str) -> Any:
    """``NaN``/``Infinity`` are not JSON (RFC 8259), though Python's decoder accepts them."""
    raise ValueError(f"{name} is not a JSON value")


def _unstorable_text_at(data: Any) -> str | None:
    """Path of the first string (key or value) holding U+0000 or an unpaired surrogate.

    Both are legal JSON escapes but cannot be encoded as UTF-8 or stored in PostgreSQL
    text, so a message carrying them would fail later, in storage, instead of here.
    Iterative: the nesting depth is bounded only by the JSON decoder.
    """
    stack: list[tuple[str, Any]] = [("", data)]
    while stack:
        path, item = stack.pop()
        if isinstance(item, dict):
            for key, value in item.items():
                where = f"{path}.{key}" if path else key
                if _unstorable(key):
                    return where
                stack.append((where, value))
        elif isinstance(item, list):
            stack.extend((f"{path}.{i}", value) for i, value in enumerate(item))
        elif isinstance(item, str) and _unstorable(item):
            return path or "(message)"
    return None


def _unstorable(text: str) -> bool:
    if "\x00" in text:
        return True
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def _validate_checked(model: type[BaseModel], text: str) -> AnyMessage:
    """The reference path: each check in turn, so a refusal gets its precise reason."""
    try:
        data: Any = json.loads(text, parse_constant=_refuse_constant)
    except (ValueError, RecursionError) as exc:
        raise ProtocolError("bad_json", str(exc)[:200]) from None
    if not isinstance(data, dict):
        raise ProtocolError("not_object", f"payload is a JSON {type(data).__name__}, not an object")
    # Escapes are the only way to get U+0000 or a lone surrogate past the UTF-8 decoding.
    if "\\u" in text and (where := _unstorable_text_at(data)) is not None:
        where = where.encode("ascii", "backslashreplace").decode()[:80]
        raise ProtocolError(
            "bad_json", f"string at {where} holds \\u0000 or an unpaired surrogate escape"
        )
    version = data.get("v")
    if type(version) is not int or version != SCHEMA_VERSION:  # not true, not 1.0
        raise ProtocolError(
            "unknown_version",
            f"schema version {str(version)[:20]!r}; this collector reads v={SCHEMA_VERSION}",
        )
    try:
        msg: AnyMessage = model.model_validate_json(text, strict=True)  # type: ignore[assignment]
    except ValidationError as exc:
        raise ProtocolError("invalid", _first_error(exc)) from None
    return msg


#: ``"v": 1`` with any JSON whitespace, the 1 ending the value.
_VERSION_ONE = re.compile(rb'"v"[ \t\n\r]*:[ \t\n\r]*1[ \t\n\r]*[,}]')


def _validate_plain(model: type[BaseModel], payload: bytes) -> AnyMessage | None:
    """The fast path for a plain message: pydantic reads the JSON itself (no Python dict
    in between). None when the payload is not plain or not valid: the reference path
    then decides, with its reason.

    Plain means that validating the JSON directly cannot accept anything the reference
    path refuses: no escape (``\\u0000``, lone surrogates), no ``NaN``/``Infinity``
    (accepted by pydantic's parser, not by the reference), and exactly one ``"v"``, the
    integer 1 (``Literal[1]`` alone also takes ``1.0`` and ``true``). Control characters,
    invalid UTF-8 and nesting deeper than pydantic allows fail validation and fall back.
    """
    if (
        b"\\u" in payload
        or b"NaN" in payload
        or b"Infinity" in payload
        or payload.count(b'"v"') != 1
        or _VERSION_ONE.search(payload) is None
    ):
        return None
    try:
        return model.model_validate_json(payload, strict=True)  # type: ignore[return-value]
    except ValidationError:
        return None


def parse_message(topic: str, payload: bytes, received_at: datetime | None = None) -> AnyMessage:
    """Validate one MQTT message. Raises :class:`ProtocolError` and nothing else."""
    scope, ident, kind = parse_topic(topic)
    if len(payload) > MAX_PAYLOAD_BYTES:
        raise ProtocolError("too_large", f"{len(payload)} bytes > {MAX_PAYLOAD_BYTES}")
    try:
        text = payload.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ProtocolError("not_utf8", f"payload is not UTF-8 at byte {exc.start}") from None
    model = CounterMessage if scope == "branch" else _MODELS[kind]
    msg = _validate_plain(model, payload)
    if msg is None:
        msg = _validate_checked(model, text)
    payload_id = msg.branch_id if isinstance(msg, CounterMessage) else msg.device_id
    if payload_id != ident:
        raise ProtocolError("device_mismatch", f"payload id {payload_id!r} != topic id {ident!r}")
    now = received_at or datetime.now(UTC)
    if msg.ts - now > MAX_CLOCK_SKEW:
        raise ProtocolError(
            "future_timestamp",
            f"ts {msg.ts.isoformat()} is {(msg.ts - now).total_seconds():.0f}s ahead of the collector (max {MAX_CLOCK_SKEW.total_seconds():.0f}s)",
        )
    return msg


def encode(msg: BaseModel) -> bytes:
    """Serialise a message the way a device would (compact JSON, UTC ``Z`` timestamps)."""
    # Derived (computed) fields such as TxnMessage.financial are not sent; a *real* field of
    # the same name (CounterMessage.financial) is.
    derived = set(type(msg).model_computed_fields)
    data = msg.model_dump(mode="json", exclude_none=True, exclude=derived)
    return json.dumps(data, separators=(",", ":"), ensure_ascii=False).encode()
