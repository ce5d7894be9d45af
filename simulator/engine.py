"""The fleet's behaviour: a pure, deterministic generator of what the devices send.

:func:`generate` turns (inventory, config, seed, start, end) into :class:`Emission` s in
non-decreasing simulated publish time. Nothing here touches the network or the clock:
the publisher decides when an emission goes out, the ledger records it.

Each device is a small state machine (:class:`_Device`, its state in slots) with its own
random stream seeded from ``(seed, device_id)``, so a device's history does not depend on
the rest of the fleet or on the inventory's order; the devices' streams are merged as
``heapq.merge`` would (ties in device id order). Correlated incidents (a branch's
power cut, a sub-branch's network outage) are drawn from a generator seeded by the
branch or sub-branch id, so every device of it sees the same outage.

Times are integer milliseconds since the Unix epoch (UTC).
"""

from __future__ import annotations

import _random
import bisect
import hashlib
import heapq
import json
import math
import random
import time
from collections.abc import Callable, Hashable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from enum import IntEnum
from operator import attrgetter
from typing import TYPE_CHECKING, Any, NamedTuple, Protocol, TypeVar, cast
from zoneinfo import ZoneInfo

from atmfleet.errors import UsageError
from atmfleet.inventory import (
    CASH_DISPENSING_TYPES,
    BranchKind,
    Device,
    DeviceType,
    Inventory,
)
from atmfleet.protocol import FINANCIAL_TYPES, TxnType, counter_topic, device_topic
from atmfleet.windows import ServiceWindow
from simulator.config import SimConfig, default_window

HOUR = 3_600_000
DAY = 24 * HOUR
MINUTE = 60_000
NEVER = 2**62
# ``t | 0`` where a device keeps a time for long: CPython allocates a sum one digit longer
# than its value needs (a timestamp in a 48-byte block instead of 32); ``| 0`` is an
# exact copy, the same number. 16 bytes for each of a device's half-dozen due times.
_V = TypeVar("_V")
#: A device's topics: this, its id, ``/`` and the kind (``device_topic``'s).
_TOPIC = device_topic("d", "state").removesuffix("d/state")
#: A dispenser with fewer notes than this reports cash_out.
CASH_OUT_NOTES = 5


class Control(IntEnum):
    """What the publisher does besides publishing."""

    NONE = 0
    #: Open the device's connection (per-device mode) with ``will`` as its last will;
    #: the payload is the birth.
    CONNECT = 1
    #: The device's link is lost. With a real will the publisher kills the socket and the
    #: broker publishes the payload (the will); otherwise it publishes the payload itself.
    DROP = 2


class Emission(NamedTuple):
    """One message the fleet sends, with what the publisher and the ledger need."""

    t: int  # simulated publish time (ms); backlogs go out after their ts
    topic: str
    payload: bytes
    retain: bool
    control: int  # Control
    device_id: str  # the branch id for counters
    kind: str  # state, event, txn, presence, counter
    seq: int  # -1 when the message has none
    txn_id: str  # "" unless a transaction
    ts: int  # the message's ts (ms)
    detail: str  # state / event / txn type / presence status / counter date
    result: str  # txn result; for presence "will" or "gateway" on an offline
    since: int  # power_restored: when the power was lost; else -1
    will: bytes  # CONNECT: the last will to register; else b""
    amount: int = 0  # txn: fee in fen (1/100 ¥); counter: financial volume
    flag: bool = False  # txn: financial


_T = attrgetter("t")


class Repair(NamedTuple):
    """The incident truth of one fault: what the simulated world did about it.

    ``dispatch``: when the bank dispatched the vendor's technician (no message: an
    operator's call, replayed through the incident service by tests); ``arrival``: the
    technician on site (the device enters ``maintenance``); ``repair``: the fault cleared
    (hardware: the technician leaves; software: the remote reboot). ``None``: not by the
    end of the run (or never: a software fault has no technician).
    """

    device_id: str
    vendor: str
    model: str
    component: str | None  # None for a software fault
    code: str
    software: bool
    degraded: bool  # the device stayed available (a CRS deposit module): no outage
    fault: int
    dispatch: int | None
    arrival: int | None
    repair: int | None


#: Receives each fault's truth once: when it is repaired, or at the end of the run.
RepairSink = Callable[[Repair], None]


def ms(at: datetime) -> int:
    delta = at - datetime(1970, 1, 1, tzinfo=UTC)
    return (delta.days * 86_400 + delta.seconds) * 1000 + delta.microseconds // 1000


def from_ms(value: int) -> datetime:
    return datetime(1970, 1, 1, tzinfo=UTC) + timedelta(milliseconds=value)


_ISO_HOURS: dict[int, str] = {}
#: ``MM:SS.`` of each second of an hour, ``mmmZ`` of each millisecond of a second.
_ISO_SECONDS = tuple(f"{m:02d}:{s:02d}." for m in range(60) for s in range(60))
_ISO_MILLIS = tuple(f"{m:03d}Z" for m in range(1000))


def iso(value: int) -> str:
    """``2026-11-28T02:15:00.250Z``."""
    sec, milli = divmod(value, 1000)
    hour, rest = divmod(sec, 3600)
    prefix = _ISO_HOURS.get(hour)
    if prefix is None:
        if len(_ISO_HOURS) > 100_000:
            _ISO_HOURS.clear()
        prefix = _ISO_HOURS[hour] = time.strftime("%Y-%m-%dT%H:", time.gmtime(hour * 3600))
    return prefix + _ISO_SECONDS[rest] + _ISO_MILLIS[milli]


#: One encoder for every payload: ``json.dumps`` with options builds a new one per call.
_ENCODER = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False)
_json = _ENCODER.encode


def _dumps(data: dict[str, Any]) -> bytes:
    return _json(data).encode()


class _Rng(_random.Random):
    """``random.Random`` seeded from a str, without its instance dict (350 bytes a device):
    the same seeding (version 2: the str and its SHA-512 as one integer) and the same
    methods, so the same numbers (tests/test_simulator_stream.py)."""

    __slots__ = ("gauss_next",)

    def __init__(self, seed: str) -> None:
        a = seed.encode()
        super().seed(int.from_bytes(a + hashlib.sha512(a).digest(), "big"))
        self.gauss_next: float | None = None

    if TYPE_CHECKING:

        def uniform(self, a: float, b: float) -> float: ...
        def expovariate(self, lambd: float) -> float: ...
        def randint(self, a: int, b: int) -> int: ...
        def choice(self, seq: Sequence[_V]) -> _V: ...
        def gauss(self, mu: float, sigma: float) -> float: ...

    else:
        _randbelow = random.Random._randbelow_with_getrandbits
        randrange = random.Random.randrange
        randint = random.Random.randint
        choice = random.Random.choice
        uniform = random.Random.uniform
        expovariate = random.Random.expovariate
        gauss = random.Random.gauss


def device_heartbeat_s(device: Device, config: SimConfig, override: int | None = None) -> int:
    """The heartbeat a simulated device uses: the run's override, the config's, its own."""
    return override or config.heartbeat_s or device.heartbeat_s


def device_phase(device: Device, config: SimConfig, seed: int, hb_ms: int) -> tuple[int, int]:
    """(start offset ms, heartbeat period ms) of a device: when, after the run's start (or
    its commissioning), it comes up, and its own slightly drifting heartbeat period. Drawn
    from ``(seed, "phase", device_id)``, apart from the device's own sequence of draws."""
    rng = _Rng(f"{seed}:phase:{device.id}")
    offset = int(rng.random() * config.start_spread_heartbeats * hb_ms)
    drift = config.heartbeat_drift
    period = max(1000, round(hb_ms * (1 + rng.uniform(-drift, drift))))
    return offset, period


def device_start(device: Device, config: SimConfig, seed: int, start: int, hb_ms: int) -> int:
    """When a device's first message (its birth) goes out in a run from ``start`` (ms);
    the run's start or later, never earlier."""
    offset, _ = device_phase(device, config, seed, hb_ms)
    base = datetime(
        device.commissioned.year,
        device.commissioned.month,
        device.commissioned.day,
        tzinfo=ZoneInfo(config.timezone),
    )
    return max(start, ms(base)) + offset


def device_window(device: Device) -> str:
    return device.service_window or default_window(device.placement, device.type)


# --------------------------------------------------------------------------- shared context


@dataclass
class _Context:
    """Read-only facts shared by the devices of one run, with lazily filled caches."""

    inventory: Inventory
    config: SimConfig
    seed: int
    start: int
    end: int
    real_wills: bool
    heartbeat_override: int | None
    tz: ZoneInfo
    on_repair: RepairSink | None = None
    _hours: dict[int, tuple[int, int]] = field(default_factory=dict)
    _factors: dict[int, float] = field(default_factory=dict)
    _windows: dict[str, list[int]] = field(default_factory=dict)
    _midnights: dict[date, int] = field(default_factory=dict)
    _power: dict[str, list[tuple[int, int]]] = field(default_factory=dict)
    _network: dict[str, list[tuple[int, int]]] = field(default_factory=dict)
    _shared: dict[Hashable, Any] = field(default_factory=dict)
    #: Device profiles drawn for the counters, reused by the devices' own streams.
    profiles: dict[str, DeviceProfile] = field(default_factory=dict)

    def profile(self, device: Device) -> DeviceProfile:
        got = self.profiles.get(device.id)
        if got is None:
            got = self.profiles[device.id] = device_profile(device, self.config, self.seed)
        return got

    def shared(self, key: Hashable, make: Callable[[], _V]) -> _V:
        """A table computed once per run and shared by the devices that need it."""
        got = self._shared.get(key)
        if got is None:
            got = self._shared[key] = make()
        return cast(_V, got)

    def boosted(self, dtype: DeviceType, factor: float) -> tuple[list[TxnType], list[float], float]:
        """Types, cumulative weights and rate factor of a type on a day of withdrawals x
        ``factor``."""
        key = ("boosted", dtype, factor)
        got = self._shared.get(key)
        if got is None:
            mix = _mix(self.config, dtype, factor)
            got = self._shared[key] = (
                list(mix),
                _cum(list(mix.values())),
                withdrawal_boost(self.config, dtype, factor),
            )
        return cast(tuple[list[TxnType], list[float], float], got)

    def hour(self, t: int) -> tuple[int, int]:
        """(local hour 0..23, local weekday 0..6) of the UTC hour holding ``t``."""
        h = t // HOUR
        got = self._hours.get(h)
        if got is None:
            local = from_ms(h * HOUR).astimezone(self.tz)
            got = (local.hour, local.weekday())
            self._hours[h] = got
        return got

    def withdrawal_factor(self, t: int) -> float:
        """The calendar's factor on withdrawals in the UTC hour holding ``t``."""
        h = t // HOUR
        got = self._factors.get(h)
        if got is None:
            day = from_ms(h * HOUR).astimezone(self.tz).date()
            got = self._factors[h] = self.config.calendar.withdrawal_factor(day)
        return got

    def local_date(self, t: int) -> date:
        return from_ms(t).astimezone(self.tz).date()

    def midnight(self, day: date) -> int:
        """UTC ms of local midnight on ``day`` (cached: a fleet's commissioning dates)."""
        got = self._midnights.get(day)
        if got is None:
            got = self._midnights[day] = self.local_time(day, 0)
        return got

    def local_time(self, day: date, hour: float) -> int:
        """UTC ms of ``hour`` (fractional) on local ``day``."""
        base = datetime(day.year, day.month, day.day, tzinfo=self.tz)
        return (ms(base) + int(hour * HOUR)) | 0

    def window_bounds(self, spec: str) -> list[int]:
        """Sorted open/close times: open iff ``bisect_right(bounds, t)`` is odd."""
        got = self._windows.get(spec)
        if got is None:
            window = ServiceWindow.parse(spec)
            lo, hi = from_ms(self.start - DAY), from_ms(self.end + DAY)
            got = []
            for a, b in window.open_intervals(lo, hi, self.tz):
                got.extend((ms(a), ms(b)))
            self._windows[spec] = got
        return got

    def _outages(self, key: str, per_year: float, mean_min: float) -> list[tuple[int, int]]:
        """A Poisson schedule of non-overlapping outages of one branch or sub-branch."""
        out: list[tuple[int, int]] = []
        if per_year <= 0:
            return out
        rng = _Rng(f"{self.seed}:{key}")
        rate = per_year / (365 * DAY)
        t = self.start
        while True:
            t += int(rng.expovariate(rate))
            if t >= self.end:
                return out
            length = max(MINUTE, int(_lognormal(rng, mean_min * MINUTE, 0.6)))
            out.append((t, t + length))
            t += length

    def power_cuts(self, branch_id: str) -> list[tuple[int, int]]:
        got = self._power.get(branch_id)
        if got is None:
            inc = self.config.incidents
            got = self._outages(
                f"power:{branch_id}", inc.branch_power_cuts_per_year, inc.power_cut_min
            )
            self._power[branch_id] = got
        return got

    def network_outages(self, subbranch_id: str) -> list[tuple[int, int]]:
        got = self._network.get(subbranch_id)
        if got is None:
            inc = self.config.incidents
            got = self._outages(
                f"network:{subbranch_id}",
                inc.subbranch_network_outages_per_year,
                inc.network_outage_min,
            )
            self._network[subbranch_id] = got
        return got


def _lognormal(rng: _Rng, mean: float, sigma: float) -> float:
    """A log-normal variate with the given mean."""
    return mean * math.exp(rng.gauss(-sigma * sigma / 2, sigma))


# ------------------------------------------------------------------------- device profile


@dataclass(frozen=True, slots=True)
class DeviceProfile:
    """A device's constant traits, drawn from ``(seed, "profile", device_id)``."""

    volume: float  # expected transactions per day (before the weekly rhythm)
    low_yield: bool
    replenish_every_days: int
    substitution: float  # for outlets only: the branch's target substitution rate


def _mix(config: SimConfig, device_type: DeviceType, factor: float) -> dict[TxnType, float]:
    """The type mix with withdrawals weighted by the calendar's ``factor``."""
    mix = config.txn[device_type].mix
    if factor == 1.0:
        return dict(mix)
    return {t: w * factor if t is TxnType.WITHDRAWAL else w for t, w in mix.items()}


def financial_share(config: SimConfig, device_type: DeviceType, factor: float = 1.0) -> float:
    mix = _mix(config, device_type, factor)
    total = sum(mix.values())
    return sum(w for t, w in mix.items() if t in FINANCIAL_TYPES) / total


def withdrawal_boost(config: SimConfig, device_type: DeviceType, factor: float) -> float:
    """How much more a device transacts on a day whose withdrawals are ``factor`` x."""
    if factor == 1.0:
        return 1.0
    base = config.txn[device_type].mix
    return sum(_mix(config, device_type, factor).values()) / sum(base.values())


def device_profile(device: Device, config: SimConfig, seed: int) -> DeviceProfile:
    """Expected volume and low-yield flag; the same for the device's stream and the counters."""
    rng = _Rng(f"{seed}:profile:{device.id}")
    prof = config.txn[device.type]
    rhythm = config.rhythm[device.placement]
    base = prof.per_day * rhythm.volume
    ok_share = config.txn_result_weights["ok"] / sum(config.txn_result_weights.values())
    fin_per_txn = financial_share(config, device.type) * ok_share
    low = rng.random() < config.low_yield_share
    mult = _lognormal(rng, 1.0, config.volume_sigma) if config.volume_sigma else 1.0
    threshold = prof.low_yield_threshold
    if threshold is not None and fin_per_txn > 0:
        if low:
            # Chronically low-yield: well under the threshold even on a good day.
            volume = threshold * rng.uniform(0.2, 0.7) / fin_per_txn
        else:
            # Everyone else stays clear of it (a bad week may still dip).
            volume = max(base * mult, 1.6 * threshold / fin_per_txn)
    else:
        volume = base * (rng.uniform(0.1, 0.3) if low else mult)
    every = rng.choice(config.cash.replenish_every_days)
    return DeviceProfile(volume, low, every, 0.0)


def branch_substitution(branch_id: str, config: SimConfig, seed: int) -> float:
    rng = _Rng(f"{seed}:counter:{branch_id}")
    r = rng.gauss(config.substitution_median, config.substitution_spread)
    return min(0.95, max(0.2, r))


# ------------------------------------------------------------------------------ the run


def check_run(inventory: Inventory, start: datetime, end: datetime) -> None:
    if start.tzinfo is None or end.tzinfo is None:
        raise UsageError("start and end must be timezone-aware (UTC)")
    if end <= start:
        raise UsageError(f"end {end.isoformat()} is not after start {start.isoformat()}")
    if not inventory.devices:
        raise UsageError("the inventory has no devices; a fleet needs at least one")
    checked: set[str] = set()
    for device in inventory.devices:
        spec = device_window(device)
        if spec in checked:
            continue
        try:
            ServiceWindow.parse(spec)
        except ValueError as exc:
            raise UsageError(f"device {device.id}: service window: {exc}") from None
        checked.add(spec)


def generate(
    inventory: Inventory,
    config: SimConfig,
    seed: int,
    start: datetime,
    end: datetime,
    *,
    real_wills: bool = False,
    heartbeat_s: int | None = None,
    on_repair: RepairSink | None = None,
    part: tuple[int, int] | None = None,
) -> Iterator[Emission]:
    """Everything the fleet sends in ``[start, end)``, in publish-time order.

    ``part=(k, n)``: only the ``k``-th of ``n`` contiguous slices of the devices (in id
    order), the counters in the first; each device's messages are exactly those of the
    whole run, and merging the parts by publish time (ties: the lower part first)
    gives the whole run's order. Several processes publish a big fleet this way.

    ``on_repair`` receives the incident truth of every fault (:class:`Repair`) as the
    generator passes its repair (or the end of the run): the ledger's ``repairs.csv``.

    ``real_wills``: a dropped link is announced by the broker's last will (the publisher
    kills the device's own connection); otherwise by a presence message with
    ``will: false`` and ``ts`` = the drop time, as a gateway would send.
    ``heartbeat_s`` overrides every device's heartbeat (backfill uses a longer one).
    """
    check_run(inventory, start, end)
    ctx = _Context(
        inventory=inventory,
        config=config,
        seed=seed,
        start=ms(start),
        end=ms(end),
        real_wills=real_wills,
        heartbeat_override=heartbeat_s,
        tz=ZoneInfo(config.timezone),
        on_repair=on_repair,
    )
    devices = sorted(inventory.devices, key=attrgetter("id"))
    if part is None:
        return _merge(ctx, devices)
    k, n = part
    if not 0 <= k < n:
        raise UsageError(f"part {k} of {n} does not exist")
    lo, hi = len(devices) * k // n, len(devices) * (k + 1) // n
    return _merge(ctx, devices, lo, hi, counters=k == 0)


def _merge(
    ctx: _Context, devices: list[Device], lo: int = 0, hi: int | None = None, *,
    counters: bool = True,
) -> Iterator[Emission]:  # fmt: skip
    """The counters' and the devices' streams merged by publish time, ties in stream order
    (the counters, then the devices by id), as ``heapq.merge`` would.

    A device's stream is set up only when the run reaches the moment it comes up (its
    first message is its birth at that moment): the first message of a big fleet goes
    out at once, and a device that comes up after the run's end costs nothing."""
    #: (when it comes up, its index, the device, its heartbeat period), drawn once.
    pending: list[tuple[int, int, Device, int]] = []
    for i, dev in enumerate(devices[lo:hi], start=lo + 1):
        hb_ms = device_heartbeat_s(dev, ctx.config, ctx.heartbeat_override) * 1000
        phase = device_phase(dev, ctx.config, ctx.seed, hb_ms)
        t0 = (max(ctx.start, ctx.midnight(dev.commissioned)) + phase[0]) | 0
        if t0 < ctx.end:
            pending.append((t0, i, dev, phase[1]))
    pending.sort(key=lambda p: (p[0], p[1]))
    pending.reverse()  # popped from the end, earliest first
    # Each stream waits in the heap under the publish time of its next message; the
    # message itself is taken (a device's heartbeat written) only when its turn comes.
    heap: list[tuple[int, int, _Stream]] = []
    if counters:
        ahead = _Ahead(_counters(ctx))
        t = ahead.peek()
        if t is not None:
            heap.append((t, 0, ahead))
    while heap or pending:
        while pending and (not heap or pending[-1][0] <= heap[0][0]):
            t0, i, dev, period = pending.pop()
            device = _device(ctx, dev, t0, period)
            t = device.peek()
            if t is not None:
                heapq.heappush(heap, (t, i, device))
        if not heap:
            continue
        _, i, stream = heap[0]
        yield stream.take()
        t = stream.peek()
        if t is None:
            heapq.heappop(heap)
        else:
            heapq.heapreplace(heap, (t, i, stream))


class _Stream(Protocol):
    """What the merge needs of a stream: the publish time of its next message (None: the
    stream has ended), and that message."""

    def peek(self) -> int | None: ...
    def take(self) -> Emission: ...


class _Ahead:
    """A stream over an iterator of emissions (the counters), one message ahead."""

    __slots__ = ("_it", "_next")

    def __init__(self, it: Iterator[Emission]) -> None:
        self._it = it
        self._next: Emission | None = None

    def peek(self) -> int | None:
        if self._next is None:
            self._next = next(self._it, None)
        return None if self._next is None else self._next.t

    def take(self) -> Emission:
        e = self._next
        assert e is not None
        self._next = None
        return e


def _counters(ctx: _Context) -> Iterator[Emission]:
    """The core banking feed: each outlet's teller-counter volumes, once a local day.

    Counter volume = the outlet's own devices' expected self-service financial volume that
    day x (1 - r) / r, with r the outlet's substitution rate (spread around the median),
    and a little day-to-day noise.
    """
    inv, config = ctx.inventory, ctx.config
    outlets = sorted(b.id for b in inv.branches if b.kind is BranchKind.OUTLET)
    #: The devices of each outlet with their expected volume (the profile's only figure
    #: needed here; the profile itself goes to the device's stream).
    devices: dict[str, list[tuple[Device, float]]] = {b: [] for b in outlets}
    for d in inv.devices:
        if d.branch in devices:
            devices[d.branch].append((d, ctx.profile(d).volume))
    ok_share = config.txn_result_weights["ok"] / sum(config.txn_result_weights.values())
    day = ctx.local_date(ctx.start) - timedelta(days=1)
    last = ctx.local_date(ctx.end)
    while day <= last:
        t = ctx.local_time(day, config.counter_hour)
        if ctx.start <= t < ctx.end:
            stamp = iso(t)
            for branch_id in outlets:
                rate = branch_substitution(branch_id, config, ctx.seed)
                expected = 0.0
                for d, volume in devices[branch_id]:
                    if d.commissioned > day or (d.decommissioned and d.decommissioned <= day):
                        continue
                    rhythm = config.rhythm[d.placement]
                    weekly = rhythm.weekly[day.weekday()] / (sum(rhythm.weekly) / 7)
                    boost = withdrawal_boost(config, d.type, config.calendar.withdrawal_factor(day))
                    fin = financial_share(config, d.type, config.calendar.withdrawal_factor(day))
                    expected += volume * weekly * boost * fin * ok_share
                rng = _Rng(f"{ctx.seed}:counter:{branch_id}:{day.isoformat()}")
                fin = round(expected * (1 - rate) / rate * _lognormal(rng, 1.0, 0.1))
                non_fin = round(fin * rng.uniform(0.3, 0.5))
                payload = _dumps(
                    {
                        "v": 1,
                        "branch_id": branch_id,
                        "date": day.isoformat(),
                        "financial": fin,
                        "non_financial": non_fin,
                        "source": "core",
                        "ts": stamp,
                    }
                )
                yield Emission(
                    t, counter_topic(branch_id), payload, False, Control.NONE, branch_id,
                    "counter", -1, "", t, day.isoformat(), "", -1, b"", fin, False,
                )  # fmt: skip
        day += timedelta(days=1)


# Components each type reports, and the weights with which a fault hits them.
_COMPONENTS: dict[DeviceType, dict[str, float]] = {
    DeviceType.ATM: {"cdm": 40, "idc": 22, "ptr": 14, "pin": 6, "shutter": 8},
    DeviceType.CRS: {"cdm": 28, "cim": 26, "idc": 18, "ptr": 12, "pin": 5, "shutter": 6},
    DeviceType.DEPOSIT: {"cim": 50, "idc": 22, "ptr": 16, "pin": 6, "shutter": 6},
    DeviceType.SMART_TELLER: {"idc": 35, "ptr": 30, "pin": 15},
    DeviceType.PASSBOOK: {"pbk": 70, "idc": 10},
    DeviceType.INQUIRY: {"idc": 50, "ptr": 30},
}
_WITHDRAW_NOTES = ([1, 2, 3, 5, 10, 20, 30, 50], [10, 14, 10, 22, 22, 12, 6, 4])
_DEPOSIT_NOTES = ([1, 2, 5, 10, 20, 50, 100], [8, 10, 22, 25, 18, 12, 5])
_DURATION_MS = {
    TxnType.WITHDRAWAL: 38_000, TxnType.DEPOSIT: 65_000, TxnType.TRANSFER: 70_000,
    TxnType.PAYMENT: 60_000, TxnType.INQUIRY: 20_000, TxnType.PIN_CHANGE: 35_000,
    TxnType.STATEMENT: 30_000, TxnType.PASSBOOK: 45_000,
}  # fmt: skip


def _cum(weights: list[float]) -> list[float]:
    out, total = [], 0.0
    for w in weights:
        total += w
        out.append(total)
    return out


_WITHDRAW_CUM = _cum([float(x) for x in _WITHDRAW_NOTES[1]])
_DEPOSIT_CUM = _cum([float(x) for x in _DEPOSIT_NOTES[1]])


def _hourly_per_ms(hourly: list[float], weekly: list[float]) -> list[float]:
    """Share of a day's transactions per ms, by local hour (weekly factors average 1)."""
    scale = sum(hourly) * HOUR * sum(weekly) / 7
    return [h / scale for h in hourly]


def in_window_after(bounds: list[int], t: int, need: int) -> int:
    """The first instant at which ``need`` ms of the window (``bounds``: sorted open,
    close, open, ... instants) have passed since ``t`` (NEVER if the window ends first)."""
    i = bisect.bisect_right(bounds, t)
    at = t
    while True:
        if i % 2 == 1:  # open from ``at`` until bounds[i]
            close = bounds[i] if i < len(bounds) else NEVER
            if close - at >= need:
                return at + need
            need -= close - at
        if i + 1 >= len(bounds):
            return NEVER
        at = bounds[i] if i % 2 == 0 else bounds[i + 1]
        i += 1 if i % 2 == 0 else 2


#: Slots of :class:`_Device` (one per device: no generator frame, closures or cells).
_DEVICE_SLOTS = (
    # the device's own constant facts (those of its kind are its class's: _kind_class)
    "dev", "d_id", "rng", "hb_period", "replenish_days", "t_end", "volume", "j_id", "cuts",
    "outages",
    # conditions
    "seq", "powered", "connected", "connect_ts", "supervisor", "cash", "cash_low_sent",
    "cash_out", "deposit", "deposit_full", "reported", "window_open",
    # next due times
    "t_hb", "t_emergency", "t_txn", "t_win", "t_fault", "t_visit", "t_visit_end", "t_plan",
    "t_link",
    # what it sends next
    "out", "pos", "done", "lz", "lz_t", "lz_seq",
    # what most devices never change in a short run (faults, technicians, power cuts,
    # outages, link drops): class attributes (_Device's defaults) until first set here
    "__dict__",
)  # fmt: skip


def _device(ctx: _Context, dev: Device, t0: int, period: int) -> _Device:
    """A device's state machine, an instance of its kind's class (:func:`_kind_class`)."""
    hb = device_heartbeat_s(dev, ctx.config, ctx.heartbeat_override)
    spec = device_window(dev)
    key = ("kind", dev.type, dev.placement, dev.vendor, dev.model, dev.can_deposit, hb, spec)
    cls = ctx.shared(key, lambda: _kind_class(ctx, dev, hb, spec))
    return cls(ctx, dev, t0, period)


def _kind_class(ctx: _Context, dev: Device, hb: int, spec: str) -> type[_Device]:
    """A subclass of :class:`_Device` holding, as class attributes, what every device of
    ``dev``'s kind shares: the run's configuration, its tables and payload templates.
    Tables are shared by every device of a type or placement: a 100,000-device fleet holds
    them once."""
    config = ctx.config
    cash_cfg = config.cash
    dtype = dev.type
    has_cash = dtype in CASH_DISPENSING_TYPES
    has_deposit = dev.can_deposit
    # Transactions: types, hourly intensity (per ms) and weekly rhythm.
    txp = config.txn[dtype]
    tx_types, tx_cum = ctx.shared(
        ("txn", dtype), lambda: (list(txp.mix), _cum(list(txp.mix.values())))
    )
    rhythm = config.rhythm[dev.placement]
    res_names, res_cum = ctx.shared(
        "results",
        lambda: (list(config.txn_result_weights), _cum(list(config.txn_result_weights.values()))),
    )
    comps = _COMPONENTS[dtype]
    comp_names, comp_cum = ctx.shared(
        ("components", dtype), lambda: (list(comps), _cum(list(comps.values())))
    )
    cdm_head, cdm_tail, cim_head, cim_tail = ctx.shared(
        ("cash_units", has_cash, has_deposit),
        lambda: _cash_unit_templates(cash_cfg, has_cash, has_deposit),
    )
    facts: dict[str, Any] = {
        "__slots__": (),
        "ctx": ctx,
        "config": config,
        "cash_cfg": cash_cfg,
        "inc": config.incidents,
        # (a function as a class attribute would be bound to the device)
        "sink": None if ctx.on_repair is None else staticmethod(ctx.on_repair),
        "dispatch_floor": int(config.technicians.dispatch_after_min * MINUTE),
        "rel": config.reliability(dev.vendor, dev.model),
        "dtype": dtype,
        "has_cash": has_cash,
        "has_deposit": has_deposit,
        "tx_types": tx_types,
        "tx_cum": tx_cum,
        "hour_rate": ctx.shared(
            ("hourly", dev.placement), lambda: _hourly_per_ms(rhythm.hourly, rhythm.weekly)
        ),
        "weekly": rhythm.weekly,
        "res_names": res_names,
        "res_cum": res_cum,
        "comps": comps,
        "comp_names": comp_names,
        "comp_cum": comp_cum,
        "fees": config.inter_bank_fee,
        "window_bounds": ctx.window_bounds(spec),
        # The state and txn payloads are written from templates: byte for byte what
        # ``_dumps`` makes of the same dict (tests/test_simulator_payloads.py), at a
        # fraction of the cost. Every value not known to be a plain number or an ASCII
        # constant goes through the JSON encoder.
        "res_json": ctx.shared("results_json", lambda: {r: _json(r) for r in res_names}),
        "j_hb": _json(hb),
        "comps_ok": ctx.shared(
            ("components_json", dtype), lambda: ",".join(f'"{c}":"ok"' for c in comp_names)
        ),
        "cdm_head": cdm_head,
        "cdm_tail": cdm_tail,
        "cim_head": cim_head,
        "cim_tail": cim_tail,
        "forward_max": config.store_forward_max,
    }
    return type("_Device", (_Device,), facts)


class _Device:
    """One device's life: a small discrete-event loop over its next due times, iterated
    for its emissions (set up when made, advanced only when its last emission is taken).

    The device's state lives in slots: a generator with closures held a frame, about
    twenty functions and eighty cells per device (8 KB of a 100,000-device fleet's 13 KB
    a device)."""

    __slots__ = _DEVICE_SLOTS

    # The facts every device of a kind (type, placement, vendor, model, heartbeat, service
    # window) shares, and the run's: attributes of the kind's class (:func:`_kind_class`),
    # not 29 slots of every device.
    ctx: _Context
    config: SimConfig
    cash_cfg: Any
    inc: Any
    sink: RepairSink | None
    dispatch_floor: int
    rel: Any
    dtype: DeviceType
    has_cash: bool
    has_deposit: bool
    tx_types: list[TxnType]
    tx_cum: list[float]
    hour_rate: list[float]
    weekly: list[float]
    res_names: list[str]
    res_cum: list[float]
    comps: dict[str, float]
    comp_names: list[str]
    comp_cum: list[float]
    fees: list[float]
    window_bounds: list[int]
    res_json: dict[str, str]
    j_hb: str
    comps_ok: str
    cdm_head: str
    cdm_tail: str
    cim_head: str
    cim_tail: str
    forward_max: int

    # Conditions and due times at their defaults for most of a run: read from the class
    # until the device first sets them (in its own __dict__, made then): 20 slots fewer.
    #: Draws made from the technician's stream (seeded from the device): at a fault it is
    #: made again and these replayed, not kept (2.5 KB a device that has had a fault).
    tech_draws = 0
    #: The fault being handled: [fault, component, code, software, degraded, dispatch,
    #: arrival].
    pending: list[Any] | None = None
    #: Number of reasons the link is down (network outage, own drop).
    link_down = 0
    #: What the device stores while its link is down (made at the first drop).
    buffer: list[tuple[str, bytes, str, int, str, int, str, str, int]] | None = None
    fault: str | None = None  # active fault code
    fault_comp = ""
    fault_degrades = False
    tech = False
    planned = False
    cut_i = 0
    outage_i = 0
    in_cut = False
    in_outage = False
    t_reboot = NEVER
    t_tech = NEVER
    t_repair = NEVER
    t_plan_end = NEVER
    t_link_up = NEVER
    power_back = NEVER
    power_lost = -1  # set by a power cut

    def __init__(self, ctx: _Context, dev: Device, t0: int, period: int) -> None:
        """``t0``: when it comes up; ``period``: its heartbeat's (:func:`device_phase`)."""
        config = ctx.config
        cash_cfg = config.cash
        self.dev = dev
        self.d_id = d_id = dev.id
        #: Messages ready to go (None: none), taken from ``pos``; then the deferred state
        #: message, if any (``lz``: its state, at ``lz_t`` with ``lz_seq``).
        self.out: list[Emission] | None = None
        self.pos = 0
        self.done = False
        self.lz: str | None = None
        self.lz_t = self.lz_seq = 0
        self.rng = rng = _Rng(f"{ctx.seed}:{d_id}")
        # The technician's dispatch is drawn apart (tech_draws), so adding it left the
        # device's own sequence of draws (and every other behaviour) as it was.
        prof = ctx.profiles.pop(d_id, None) or device_profile(dev, config, ctx.seed)
        self.replenish_days = prof.replenish_every_days
        has_cash = self.has_cash
        handles_cash = has_cash or self.has_deposit
        branch = ctx.inventory.branch_by_id[dev.branch]

        # Devices come up at their own moments and their clocks drift: the fleet's
        # heartbeats spread over the seconds of a minute instead of all beating at once.
        self.hb_period = period
        t_end = ctx.end
        if dev.decommissioned is not None:
            t_end = min(t_end, ctx.midnight(dev.decommissioned))
        self.t_end = t_end
        if t0 >= t_end:
            self.done = True
            return

        self.volume = prof.volume
        window_bounds = self.window_bounds

        # Conditions.
        self.seq = 0
        self.powered = True
        self.connected = False
        self.connect_ts = 0
        self.supervisor = False
        self.cash = cash_cfg.notes_loaded if has_cash else 0
        self.cash_low_sent = False
        self.cash_out = False
        self.deposit = 0
        self.deposit_full = False
        self.reported: str | None = None
        self.t_hb = NEVER  # next heartbeat
        self.t_emergency = NEVER  # an unscheduled cash visit after a cash-out or full cassette
        self.window_open = bisect.bisect_right(window_bounds, t0) % 2 == 1

        # For the payload templates (see _kind_class): None when the id needs no escaping,
        # as ids never do (docs/inventory.md); the quoted id is made when written.
        j_id = _json(d_id)
        self.j_id = None if j_id == f'"{d_id}"' else j_id

        # Shared incident schedules (one list per branch / sub-branch, read with an
        # index): outages that started before this device did are skipped.
        self.cuts = cuts = ctx.power_cuts(branch.id)
        self.outages = outages = ctx.network_outages(branch.subbranch)
        if cut_i := bisect.bisect_left(cuts, (t0, -1)):
            self.cut_i = cut_i
        if outage_i := bisect.bisect_left(outages, (t0, -1)):
            self.outage_i = outage_i

        self.t_txn = self.next_txn(t0)
        i_win = bisect.bisect_right(window_bounds, t0)
        self.t_win = window_bounds[i_win] if i_win < len(window_bounds) else NEVER
        self.t_fault = self.next_fault(t0)
        t_visit = (
            self.next_visit(t0, rng.randint(0, self.replenish_days - 1)) if handles_cash else NEVER
        )
        if t_visit < t0:
            t_visit = self.next_visit(t0, self.replenish_days)
        self.t_visit = t_visit
        self.t_visit_end = NEVER
        self.t_plan = self.next_planned(t0, True)
        self.t_link = self.next_link_drop(t0)

        self.connect(t0)
        self.emit_state(t0, force=True)

    # ------------------------------------------------------------------ iteration

    def __iter__(self) -> _Device:
        return self

    def __next__(self) -> Emission:
        if self.peek() is None:
            raise StopIteration
        return self.take()

    def peek(self) -> int | None:
        """The publish time of the device's next message (None: it has no more). The
        device runs on to its next message only when the last one has been taken."""
        out = self.out
        if out is not None:
            return out[self.pos].t
        if self.lz is not None:
            return self.lz_t
        if self.done or not self._advance():
            self.done = True
            return None
        out = self.out
        return out[0].t if out is not None else self.lz_t

    def take(self) -> Emission:
        """The next message (after :meth:`peek`). A state message is written only now:
        a fleet's devices each wait in the merge with their next heartbeat, and its
        payload (a third of a kilobyte) is made when it goes out. Nothing the device
        reports changes in between: it runs on only after this."""
        out = self.out
        if out is not None:
            pos = self.pos
            e = out[pos]
            if pos + 1 < len(out):
                self.pos = pos + 1
            else:
                self.out = None
                self.pos = 0
            return e
        state = self.lz
        assert state is not None
        self.lz = None
        t, seq = self.lz_t, self.lz_seq
        return Emission(t, _TOPIC + self.d_id + "/state", self.state_payload(t, state, seq), False,
                        Control.NONE, self.d_id, "state", seq, "", t, state, "", -1, b"")  # fmt: skip

    def _put(self, e: Emission) -> None:
        """Queue a message; a deferred state message queued before it is written first
        (nothing it reports has changed since)."""
        if self.lz is not None:
            self._settle()
        out = self.out
        if out is None:
            self.out = [e]
        else:
            out.append(e)

    def _settle(self) -> None:
        state = self.lz
        assert state is not None
        self.lz = None
        t, seq = self.lz_t, self.lz_seq
        e = Emission(t, self.topic("state"), self.state_payload(t, state, seq), False, Control.NONE,
                     self.d_id, "state", seq, "", t, state, "", -1, b"")  # fmt: skip
        if self.out is None:
            self.out = [e]
        else:
            self.out.append(e)

    def topic(self, kind: str) -> str:
        """The device's topic of ``kind``, made when sent (not kept: 96 bytes a device)."""
        return _TOPIC + self.d_id + "/" + kind

    # ------------------------------------------------------------------ conditions

    def report(self, repaired: int | None) -> None:
        pending = self.pending
        if pending is not None and self.sink is not None:
            f_at, comp_, code_, soft, degraded, dispatched, arrived = pending
            dev = self.dev
            self.sink(Repair(self.d_id, dev.vendor, dev.model, comp_, code_, soft, degraded,
                             f_at, dispatched, arrived, repaired))  # fmt: skip
        self.pending = None

    def state_now(self) -> str:
        if self.link_down:
            return "comms_down"
        if self.planned:
            return "planned_maintenance"
        if self.tech:
            return "maintenance"
        fault = self.fault
        if fault is not None and not self.fault_degrades:
            return "fault"
        if self.supervisor:
            return "supervisor"
        if not self.window_open:
            return "closed"
        if self.cash_out:
            return "cash_out"
        if self.deposit_full and self.dtype is DeviceType.DEPOSIT:
            return "deposit_full"
        if fault is not None or self.deposit_full:
            return "degraded"
        return "in_service"

    def comps_json(self) -> str:
        fault_comp = self.fault_comp
        if self.fault is None or fault_comp not in self.comps:
            return self.comps_ok
        comp_names = self.comp_names
        return self.ctx.shared(
            ("components_json", self.dtype, fault_comp),
            lambda: ",".join(f'"{c}":"{"fault" if c == fault_comp else "ok"}"' for c in comp_names),
        )

    def state_payload(self, t: int, state: str, seq: int) -> bytes:
        parts = ['{"v":1,"device_id":', self.j_id or f'"{self.d_id}"', ',"ts":"', iso(t), '","seq":', str(seq), ',"state":"', state,
                 '","heartbeat_s":', self.j_hb, ',"components":{', self.comps_json(), "}"]  # fmt: skip
        has_cash, has_deposit = self.has_cash, self.has_deposit
        if has_cash:
            status = "empty" if self.cash_out else ("low" if self.cash_low_sent else "ok")
            parts += (self.cdm_head, str(self.cash), self.cdm_tail, status, '"}')
        if has_deposit:
            parts += (self.cim_head, str(self.deposit), self.cim_tail,
                      "full" if self.deposit_full else "ok", '"}')  # fmt: skip
        if has_cash or has_deposit:
            parts.append("]")
        if self.fault is not None:
            parts += (',"faults":[', _json(self.fault), "]")
        parts.append("}")
        return "".join(parts).encode()

    # ------------------------------------------------------------------ messages

    def send(self, t: int, kind: str, topic: str, payload: bytes, detail: str,
             txn_id: str = "", result: str = "", since: int = -1,
             amount: int = 0, flag: bool = False) -> None:  # fmt: skip
        """A sequenced message: published now, buffered while the link is down."""
        if not self.powered:
            return
        if self.connected:
            self._put(Emission(t, topic, payload, False, Control.NONE, self.d_id, kind, self.seq,
                               txn_id, t, detail, result, since, b"", amount, flag))  # fmt: skip
        else:
            buffer = self.buffer
            if buffer is None:
                buffer = self.buffer = []
            if len(buffer) < self.forward_max:
                buffer.append((topic, payload, kind, t, detail, self.seq, txn_id, result, since))

    def emit_state(self, t: int, force: bool = False) -> None:
        if not self.powered:
            return
        state = self.state_now()
        if state == self.reported and not force:
            return
        self.reported = state
        self.seq = seq = self.seq + 1
        if self.connected:
            # Deferred: written when taken (or when another message follows it).
            if self.lz is not None:
                self._settle()
            self.lz, self.lz_t, self.lz_seq = state, t, seq
        else:
            self.send(t, "state", self.topic("state"), self.state_payload(t, state, seq), state)
        self.t_hb = (t + self.hb_period) | 0

    def emit_event(self, t: int, event: str, component: str | None = None,
                   code: str | None = None, severity: str = "info", text: str | None = None,
                   since: int = -1) -> None:  # fmt: skip
        if not self.powered:
            return
        self.seq += 1
        data: dict[str, Any] = {"v": 1, "device_id": self.d_id, "ts": iso(t), "seq": self.seq,
                                "event": event}  # fmt: skip
        if component:
            data["component"] = component
        if code:
            data["code"] = code
        data["severity"] = severity
        if text:
            data["text"] = text
        if since >= 0:
            data["since"] = iso(since)
        self.send(t, "event", self.topic("event"), _dumps(data), event, since=since)

    def presence(self, t: int, status: str, will: bool, sess: str) -> bytes:
        return _dumps(
            {"v": 1, "device_id": self.d_id, "status": status, "ts": iso(t), "session": sess,
             "will": will}
        )  # fmt: skip

    def connect(self, t: int) -> None:
        """Birth, then the store-and-forward backlog with original ts and seq."""
        d_id = self.d_id
        self.connected = True
        session = f"{d_id[-20:]}.{t:x}"
        self.connect_ts = t
        will = self.presence(t, "offline", True, session) if self.ctx.real_wills else b""
        put = self._put
        put(Emission(t, self.topic("presence"), self.presence(t, "online", False, session), True,
                     Control.CONNECT, d_id, "presence", -1, "", t, "online", "", -1,
                     will))  # fmt: skip
        if self.buffer:
            for topic, payload, kind, ts, detail, s, txn_id, result, since in self.buffer:
                put(Emission(t, topic, payload, False, Control.NONE, d_id, kind, s, txn_id, ts,
                             detail, result, since, b""))  # fmt: skip
            self.buffer.clear()

    def drop(self, t: int) -> None:
        self.connected = False
        session = f"{self.d_id[-20:]}.{self.connect_ts:x}"  # the one connect() made
        if self.ctx.real_wills:
            connect_ts = self.connect_ts
            payload = self.presence(connect_ts, "offline", True, session)
            ts, how = connect_ts, "will"
        else:
            payload, ts, how = self.presence(t, "offline", False, session), t, "gateway"
        self._put(Emission(t, self.topic("presence"), payload, True, Control.DROP, self.d_id,
                           "presence", -1, "", ts, "offline", how, -1, b""))  # fmt: skip

    def update_link(self, t: int) -> None:
        """Connect or drop after a change of power or link."""
        want = self.powered and self.link_down == 0
        if want and not self.connected:
            self.connect(t)
        elif not want and self.connected:
            self.drop(t)

    # ------------------------------------------------------------------ next due times

    def next_txn(self, t: int) -> int:
        ctx, rng, t_end = self.ctx, self.rng, self.t_end
        volume, hour_rate, weekly = self.volume, self.hour_rate, self.weekly
        while t < t_end:
            h_end = (t // HOUR + 1) * HOUR
            local_hour, weekday = ctx.hour(t)
            lam = volume * hour_rate[local_hour] * weekly[weekday]
            factor = ctx.withdrawal_factor(t)
            if factor != 1.0:
                lam *= ctx.boosted(self.dtype, factor)[2]
            if lam > 0:
                t_next = t + int(rng.expovariate(lam)) + 1
                if t_next < h_end:
                    return t_next | 0
            t = h_end
        return NEVER

    def next_fault(self, t: int) -> int:
        return (t + int(self.rng.expovariate(1.0 / (self.rel.mtbf_days * DAY))) + 1) | 0

    def next_visit(self, t: int, days: int) -> int:
        ctx = self.ctx
        day = ctx.local_date(t) + timedelta(days=days)
        return ctx.local_time(day, self.cash_cfg.replenish_hour + self.rng.uniform(-1.0, 1.0))

    def next_planned(self, t: int, first: bool) -> int:
        ctx, rng = self.ctx, self.rng
        every = self.inc.planned_every_days * DAY
        gap = rng.uniform(0, every) if first else every * rng.uniform(0.9, 1.1)
        day = ctx.local_date(t + int(gap))
        hour = rng.uniform(9.5, 14.0)
        # A weekday, and never before ``t``: the first one may fall earlier the same day.
        while day.weekday() >= 5 or ctx.local_time(day, hour) < t:
            day += timedelta(days=1)
        return ctx.local_time(day, hour)

    def next_link_drop(self, t: int) -> int:
        per_year = self.inc.device_link_drops_per_year
        if per_year <= 0:
            return NEVER
        return (t + int(self.rng.expovariate(per_year / (365 * DAY))) + 1) | 0

    # ------------------------------------------------------------------ a customer

    def transaction(self, t: int) -> None:
        """A customer at the device; cash and deposit levels follow."""
        rng, ctx = self.rng, self.ctx
        factor = ctx.withdrawal_factor(t)
        types, cum = (
            (self.tx_types, self.tx_cum) if factor == 1.0 else ctx.boosted(self.dtype, factor)[:2]
        )
        ttype = types[bisect.bisect_left(cum, rng.random() * cum[-1])]
        if ttype is TxnType.DEPOSIT and (self.deposit_full or self.fault_degrades):
            return  # deposits are refused right now: the customer goes elsewhere
        res_cum = self.res_cum
        result = self.res_names[bisect.bisect_left(res_cum, rng.random() * res_cum[-1])]
        notes = 0
        fee = 0
        on_us = True
        if ttype is TxnType.WITHDRAWAL:
            notes = _WITHDRAW_NOTES[0][
                bisect.bisect_left(_WITHDRAW_CUM, rng.random() * _WITHDRAW_CUM[-1])
            ]
            on_us = rng.random() >= self.config.inter_bank_share
            if result == "ok" and notes > self.cash:
                result = "declined"  # not enough notes left in the device
            if result == "ok" and not on_us:
                fee = round(rng.choice(self.fees) * 100)
            amount = notes * 100
        elif ttype is TxnType.DEPOSIT:
            notes = _DEPOSIT_NOTES[0][
                bisect.bisect_left(_DEPOSIT_CUM, rng.random() * _DEPOSIT_CUM[-1])
            ]
            amount = notes * 100
        elif ttype in (TxnType.TRANSFER, TxnType.PAYMENT):
            amount = rng.randint(20, 5000)
        else:
            amount = 0
        self.seq = s = self.seq + 1
        txn_id = f"{self.d_id}-{s}"
        j_id = self.j_id or f'"{self.d_id}"'
        financial = ttype in FINANCIAL_TYPES
        payload = (
            f'{{"v":1,"device_id":{j_id},"ts":"{iso(t)}","seq":{s},"txn_id":{j_id[:-1]}-{s}",'
            f'"type":"{ttype.value}",'
            f'"amount":"{amount}.00","currency":"CNY","fee":"{fee // 100}.{fee % 100:02d}",'
            f'"result":{self.res_json.get(result) or _json(result)},"duration_ms":'
            f"{int(_DURATION_MS[ttype] * rng.uniform(0.6, 1.6))},"
            f'"on_us":{"true" if on_us else "false"}}}'
        ).encode()
        self.send(t, "txn", self.topic("txn"), payload, ttype.value, txn_id=txn_id, result=result,
                  amount=fee, flag=financial)  # fmt: skip
        if result != "ok":
            return
        changed = False
        cash_cfg = self.cash_cfg
        if ttype is TxnType.WITHDRAWAL:
            self.cash -= notes
            if not self.cash_low_sent and self.cash < cash_cfg.low_share * cash_cfg.notes_loaded:
                self.cash_low_sent = True
                self.emit_event(t, "cash_low", component="cdm", severity="warning")
            if self.cash < CASH_OUT_NOTES:
                self.cash_out = changed = True
                self.emit_event(t, "cash_out", component="cdm", severity="critical")
        elif ttype is TxnType.DEPOSIT:
            if self.dtype is DeviceType.CRS:
                recycled = min(
                    round(notes * cash_cfg.crs_recycle_share), cash_cfg.notes_loaded - self.cash
                )
                self.cash += recycled
                notes -= recycled
            self.deposit += notes
            if self.deposit >= cash_cfg.deposit_capacity:
                self.deposit_full = changed = True
                self.emit_event(t, "deposit_full", component="cim", severity="critical")
        if changed:
            if self.t_emergency == NEVER and not self.supervisor:
                self.t_emergency = t + max(
                    10 * MINUTE, int(_lognormal(rng, cash_cfg.emergency_response_h * HOUR, 0.5))
                )
            self.emit_state(t)

    # ------------------------------------------------------------------ the loop

    def _advance(self) -> bool:
        """Run the device until it has something to send (True) or its run ends (False)."""
        cuts, outages = self.cuts, self.outages
        while True:
            cut_i, outage_i = self.cut_i, self.outage_i
            t_cut = cuts[cut_i][self.in_cut] if cut_i < len(cuts) else NEVER
            t_outage = outages[outage_i][self.in_outage] if outage_i < len(outages) else NEVER
            t_hb, t_txn, t_win = self.t_hb, self.t_txn, self.t_win
            t = min(t_hb, t_txn, t_win, self.t_fault, self.t_reboot, self.t_tech,
                    self.t_repair, self.t_visit, self.t_emergency, self.t_visit_end,
                    self.t_plan, self.t_plan_end, self.t_link, self.t_link_up, t_cut,
                    t_outage)  # fmt: skip
            if t >= self.t_end:
                self.report(None)
                return False
            if not self.powered and self._wait_for_power(t):
                continue
            if t == t_win:
                bounds = self.window_bounds
                self.window_open = bisect.bisect_right(bounds, t) % 2 == 1
                i = bisect.bisect_right(bounds, t)
                self.t_win = bounds[i] if i < len(bounds) else NEVER
                self.emit_state(t)
            elif t == t_cut:
                self._power(t)
            elif t == t_outage:
                if not self.in_outage:  # the sub-branch's network is down
                    self.in_outage = True
                    self.link_down += 1
                else:
                    self.in_outage = False
                    self.outage_i += 1
                    self.link_down -= 1
                self.update_link(t)
                self.emit_state(t)
            elif t == t_hb:
                self.emit_state(t, force=True)
            elif t == t_txn:
                self.t_txn = self.next_txn(t)
                if self.connected and self.reported in ("in_service", "degraded"):
                    self.transaction(t)
            else:
                self._incident(t)
            if self.out is not None or self.lz is not None:
                return True

    def _wait_for_power(self, t: int) -> bool:
        """A dead device does nothing until the power is back; its clocks wait. True if
        ``t`` was one of them (moved to when the power is back)."""
        if t not in (self.t_fault, self.t_reboot, self.t_tech, self.t_repair, self.t_visit,
                     self.t_emergency, self.t_visit_end, self.t_plan, self.t_plan_end,
                     self.t_link, self.t_link_up):  # fmt: skip
            return False
        later = max(self.power_back, t + 1)
        if self.t_fault == t:
            self.t_fault = later
        if self.t_reboot == t:
            self.t_reboot = later
        if self.t_tech == t:
            self.t_tech = later
        if self.t_repair == t:
            self.t_repair = later
        if self.t_visit == t:
            self.t_visit = later
        if self.t_emergency == t:
            self.t_emergency = later
        if self.t_visit_end == t:
            self.t_visit_end = later
        if self.t_plan == t:
            self.t_plan = later
        if self.t_plan_end == t:
            self.t_plan_end = later
        if self.t_link == t:
            self.t_link = later
        if self.t_link_up == t:
            self.t_link_up = later
        return True

    def _power(self, t: int) -> None:
        if not self.in_cut:  # the branch loses power: the device falls silent
            self.in_cut = True
            self.powered = False
            self.power_lost, self.power_back = t, self.cuts[self.cut_i][1]
            self.update_link(t)
            self.t_hb = NEVER
            self.reported = None
        else:
            self.in_cut = False
            self.cut_i += 1
            self.powered = True
            self.power_back = NEVER
            self.update_link(t)
            self.emit_event(t, "power_restored", severity="warning", since=self.power_lost,
                            text="mains power restored")  # fmt: skip
            self.emit_state(t, force=True)

    def _incident(self, t: int) -> None:
        """Faults, repairs, cash visits, planned maintenance and the device's own link."""
        rng = self.rng
        if t == self.t_fault:
            self.t_fault = NEVER
            comp_names, comp_cum = self.comp_names, self.comp_cum
            comp = comp_names[bisect.bisect_left(comp_cum, rng.random() * comp_cum[-1])]
            rel = self.rel
            software = rng.random() < rel.software_share
            if software:
                code = f"SW-{rng.randint(1, 40):04d}"
                comp = "ptr" if "ptr" in self.comps else comp_names[0]
                self.fault, self.fault_comp, self.fault_degrades = code, "", False
                self.emit_event(t, "fault", code=code, severity="critical",
                                text="application error")  # fmt: skip
                self.t_reboot = t + int(rng.uniform(4, 15) * MINUTE)
                self.pending = [t, None, code, True, False, None, None]
            else:
                code = f"{comp.upper()}-{rng.randint(1, 9999):04d}"
                self.fault, self.fault_comp = code, comp
                self.fault_degrades = degrades = (
                    comp == "cim"
                    and self.dtype is DeviceType.CRS
                    and rng.random() < self.config.degraded_share
                )
                self.emit_event(t, "fault", component=comp, code=code,
                                severity="warning" if degrades else "critical")  # fmt: skip
                tech_rng = _Rng(f"{self.ctx.seed}:tech:{self.d_id}")
                # Where the stream stood: a normal variate's draws do not depend on its
                # mean and spread, so replaying them leaves it in the same state.
                for _ in range(self.tech_draws):
                    tech_rng.gauss(0.0, 1.0)
                self.tech_draws += 1
                # The bank dispatches an incident that exists: never before the floor
                # has passed inside the service window (the engine's debounce counts
                # only there), so a fault at night is dispatched after the window opens.
                dispatch = max(
                    in_window_after(self.window_bounds, t, self.dispatch_floor),
                    t + int(_lognormal(tech_rng, rel.dispatch_h * HOUR, 0.6)),
                )
                # The technician sets out when dispatched; response_h is dispatch -> on site.
                self.t_tech = dispatch + max(
                    MINUTE, int(_lognormal(rng, rel.response_h * HOUR, 0.7))
                )
                self.pending = [t, comp, code, False, degrades, dispatch, None]
            self.emit_state(t)
        elif t == self.t_reboot:
            self.t_reboot = NEVER
            code = self.fault or "SW"
            self.emit_event(t, "reboot", text="remote restart")
            self.emit_event(t, "fault_cleared", code=code)
            self.fault = None
            self.t_fault = self.next_fault(t)
            self.emit_state(t)
            self.report(t)
        elif t == self.t_tech:
            self.t_tech = NEVER
            self.tech = True
            self.emit_event(t, "technician_arrived", component=self.fault_comp or None,
                            code=self.fault)  # fmt: skip
            if self.pending is not None:
                self.pending[6] = t
            self.t_repair = t + max(5 * MINUTE, int(_lognormal(rng, self.rel.repair_h * HOUR, 0.6)))
            self.emit_state(t)
        elif t == self.t_repair:
            self.t_repair = NEVER
            self.emit_event(t, "fault_cleared", component=self.fault_comp or None,
                            code=self.fault or "HW")  # fmt: skip
            self.emit_event(t, "technician_left")
            self.fault, self.fault_comp, self.fault_degrades, self.tech = None, "", False, False
            self.t_fault = self.next_fault(t)
            self.emit_state(t)
            self.report(t)
        elif t in (self.t_visit, self.t_emergency):
            if t == self.t_visit:
                self.t_visit = self.next_visit(t, self.replenish_days)
            else:
                self.t_emergency = NEVER
            if not self.supervisor:
                self.supervisor = True
                self.emit_event(t, "supervisor_enter", text="replenishment")
                self.t_visit_end = t + max(
                    5 * MINUTE, int(_lognormal(rng, self.cash_cfg.supervisor_min * MINUTE, 0.4))
                )
                self.emit_state(t)
        elif t == self.t_visit_end:
            self.t_visit_end = NEVER
            if self.has_cash:
                self.cash, self.cash_out, self.cash_low_sent = (
                    self.cash_cfg.notes_loaded,
                    False,
                    False,
                )
                self.emit_event(t, "replenished", component="cdm")
            if self.has_deposit:
                self.deposit, self.deposit_full = 0, False
                self.emit_event(t, "deposit_emptied", component="cim")
            self.supervisor = False
            self.t_emergency = NEVER
            self.emit_event(t, "supervisor_exit")
            self.emit_state(t)
        elif t == self.t_plan:
            self.t_plan = self.next_planned(t, False)
            if not self.planned:
                self.planned = True
                self.t_plan_end = t + max(
                    10 * MINUTE, int(_lognormal(rng, self.inc.planned_min * MINUTE, 0.3))
                )
                self.emit_state(t)
        elif t == self.t_plan_end:
            self.t_plan_end = NEVER
            self.planned = False
            self.emit_state(t)
        elif t == self.t_link:
            self.t_link = NEVER
            self.link_down += 1
            self.t_link_up = t + max(
                1000, int(_lognormal(rng, self.inc.link_drop_min * MINUTE, 0.8))
            )
            self.update_link(t)
            self.emit_state(t)
        elif t == self.t_link_up:
            self.t_link_up = NEVER
            self.link_down -= 1
            self.update_link(t)
            self.emit_state(t)
            self.t_link = self.next_link_drop(t)


def _cash_unit_templates(
    cash_cfg: Any, has_cash: bool, has_deposit: bool
) -> tuple[str, str, str, str]:
    """The cash-unit parts of a state payload (around the counts and statuses)."""
    cdm_head = (
        ',"cash_units":[{"id":"CDM1","type":"'
        + ("recycle" if has_deposit else "dispense")
        + '","denomination":100,"count":'
    )
    cdm_tail = ',"capacity":' + _json(cash_cfg.notes_loaded) + ',"status":"'
    cim_head = (
        ",{" if has_cash else ',"cash_units":[{'
    ) + '"id":"CIM1","type":"deposit","denomination":100,"count":'
    cim_tail = ',"capacity":' + _json(cash_cfg.deposit_capacity) + ',"status":"'
    return cdm_head, cdm_tail, cim_head, cim_tail
