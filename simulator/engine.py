"""The fleet's behaviour: a pure, deterministic generator of what the devices send.

:func:`generate` turns (inventory, config, seed, start, end) into :class:`Emission` s in
non-decreasing simulated publish time. Nothing here touches the network or the clock:
the publisher decides when an emission goes out, the ledger records it.

Each device is a small state machine run by its own generator with its own
``random.Random`` seeded from ``(seed, device_id)``, so a device's history does not
depend on the rest of the fleet or on the inventory's order; the devices' streams are
merged with ``heapq.merge`` (ties in device id order). Correlated incidents (a branch's
power cut, a sub-branch's network outage) are drawn from a generator seeded by the
branch or sub-branch id, so every device of it sees the same outage.

Times are integer milliseconds since the Unix epoch (UTC).
"""

from __future__ import annotations

import bisect
import heapq
import json
import math
import random
import time
from collections.abc import Callable, Hashable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from enum import IntEnum
from operator import attrgetter
from typing import Any, NamedTuple, TypeVar, cast
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
_V = TypeVar("_V")
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


def iso(value: int) -> str:
    """``2026-11-28T02:15:00.250Z``."""
    sec, milli = divmod(value, 1000)
    hour, rest = divmod(sec, 3600)
    prefix = _ISO_HOURS.get(hour)
    if prefix is None:
        if len(_ISO_HOURS) > 100_000:
            _ISO_HOURS.clear()
        prefix = _ISO_HOURS[hour] = time.strftime("%Y-%m-%dT%H:", time.gmtime(hour * 3600))
    minute, second = divmod(rest, 60)
    return f"{prefix}{minute:02d}:{second:02d}.{milli:03d}Z"


#: One encoder for every payload: ``json.dumps`` with options builds a new one per call.
_ENCODER = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False)
_json = _ENCODER.encode


def _dumps(data: dict[str, Any]) -> bytes:
    return _json(data).encode()


def device_heartbeat_s(device: Device, config: SimConfig, override: int | None = None) -> int:
    """The heartbeat a simulated device uses: the run's override, the config's, its own."""
    return override or config.heartbeat_s or device.heartbeat_s


def device_phase(device: Device, config: SimConfig, seed: int, hb_ms: int) -> tuple[int, int]:
    """(start offset ms, heartbeat period ms) of a device: when, after the run's start (or
    its commissioning), it comes up, and its own slightly drifting heartbeat period. Drawn
    from ``(seed, "phase", device_id)``, apart from the device's own sequence of draws."""
    rng = random.Random(f"{seed}:phase:{device.id}")
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
    _power: dict[str, list[tuple[int, int]]] = field(default_factory=dict)
    _network: dict[str, list[tuple[int, int]]] = field(default_factory=dict)
    _shared: dict[Hashable, Any] = field(default_factory=dict)
    #: Each device's (start offset, heartbeat period), drawn once when the run is set up.
    phases: dict[str, tuple[int, int]] = field(default_factory=dict)
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

    def local_time(self, day: date, hour: float) -> int:
        """UTC ms of ``hour`` (fractional) on local ``day``."""
        base = datetime(day.year, day.month, day.day, tzinfo=self.tz)
        return ms(base) + int(hour * HOUR)

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
        rng = random.Random(f"{self.seed}:{key}")
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


def _lognormal(rng: random.Random, mean: float, sigma: float) -> float:
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
    rng = random.Random(f"{seed}:profile:{device.id}")
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
    rng = random.Random(f"{seed}:counter:{branch_id}")
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
    pending: list[tuple[int, int, Device]] = []
    for i, dev in enumerate(devices[lo:hi], start=lo + 1):
        hb_ms = device_heartbeat_s(dev, ctx.config, ctx.heartbeat_override) * 1000
        phase = device_phase(dev, ctx.config, ctx.seed, hb_ms)
        t0 = max(ctx.start, ctx.local_time(dev.commissioned, 0)) + phase[0]
        if t0 < ctx.end:
            ctx.phases[dev.id] = phase
            pending.append((t0, i, dev))
    pending.sort(key=lambda p: (p[0], p[1]))
    pending.reverse()  # popped from the end, earliest first
    heap: list[tuple[int, int, Emission, Iterator[Emission]]] = []
    if counters:
        stream = _counters(ctx)
        first = next(stream, None)
        if first is not None:
            heap.append((first.t, 0, first, stream))
    while heap or pending:
        while pending and (not heap or pending[-1][0] <= heap[0][0]):
            _, i, dev = pending.pop()
            stream = _device(ctx, dev)
            e = next(stream, None)
            if e is not None:
                heapq.heappush(heap, (e.t, i, e, stream))
        if not heap:
            continue
        _, i, e, stream = heap[0]
        yield e
        nxt = next(stream, None)
        if nxt is None:
            heapq.heappop(heap)
        else:
            heapq.heapreplace(heap, (nxt.t, i, nxt, stream))


def _counters(ctx: _Context) -> Iterator[Emission]:
    """The core banking feed: each outlet's teller-counter volumes, once a local day.

    Counter volume = the outlet's own devices' expected self-service financial volume that
    day x (1 - r) / r, with r the outlet's substitution rate (spread around the median),
    and a little day-to-day noise.
    """
    inv, config = ctx.inventory, ctx.config
    outlets = sorted(b.id for b in inv.branches if b.kind is BranchKind.OUTLET)
    devices: dict[str, list[tuple[Device, DeviceProfile]]] = {b: [] for b in outlets}
    for d in inv.devices:
        if d.branch in devices:
            devices[d.branch].append((d, ctx.profile(d)))
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
                for d, prof in devices[branch_id]:
                    if d.commissioned > day or (d.decommissioned and d.decommissioned <= day):
                        continue
                    rhythm = config.rhythm[d.placement]
                    weekly = rhythm.weekly[day.weekday()] / (sum(rhythm.weekly) / 7)
                    boost = withdrawal_boost(config, d.type, config.calendar.withdrawal_factor(day))
                    fin = financial_share(config, d.type, config.calendar.withdrawal_factor(day))
                    expected += prof.volume * weekly * boost * fin * ok_share
                rng = random.Random(f"{ctx.seed}:counter:{branch_id}:{day.isoformat()}")
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


def _device(ctx: _Context, dev: Device) -> Iterator[Emission]:
    """One device's life: a small discrete-event loop over its next due times."""
    config, cash_cfg, inc = ctx.config, ctx.config.cash, ctx.config.incidents
    d_id = dev.id
    rng = random.Random(f"{ctx.seed}:{d_id}")
    # The technician's dispatch is drawn apart, so adding it left the device's own
    # sequence of draws (and every other behaviour) as it was.
    # Made at the first fault (the same stream, 2.5 KB a device less until then).
    tech_rng: random.Random | None = None
    dispatch_floor = int(config.technicians.dispatch_after_min * MINUTE)
    sink = ctx.on_repair
    #: The fault being handled: [fault, component, code, software, degraded, dispatch,
    #: arrival].
    pending: list[Any] | None = None
    prof = ctx.profiles.pop(d_id, None) or device_profile(dev, config, ctx.seed)
    rel = config.reliability(dev.vendor, dev.model)
    hb = device_heartbeat_s(dev, config, ctx.heartbeat_override)
    hb_ms = hb * 1000
    dtype = dev.type
    has_cash = dtype in CASH_DISPENSING_TYPES
    has_deposit = dev.can_deposit
    handles_cash = has_cash or has_deposit
    branch = ctx.inventory.branch_by_id[dev.branch]
    topic_state = device_topic(d_id, "state")
    topic_event = device_topic(d_id, "event")
    topic_txn = device_topic(d_id, "txn")
    topic_presence = device_topic(d_id, "presence")

    # Devices come up at their own moments and their clocks drift: the fleet's heartbeats
    # spread over the seconds of a minute instead of all beating at once.
    phase = ctx.phases.pop(d_id, None)
    offset, hb_period = phase or device_phase(dev, config, ctx.seed, hb_ms)
    t0 = max(ctx.start, ctx.local_time(dev.commissioned, 0)) + offset
    t_end = ctx.end
    if dev.decommissioned is not None:
        t_end = min(t_end, ctx.local_time(dev.decommissioned, 0))
    if t0 >= t_end:
        return

    # Transactions: types, hourly intensity (per ms) and weekly rhythm. Tables are shared
    # by every device of a type or placement: a 100,000-device fleet holds them once.
    txp = config.txn[dtype]
    tx_types, tx_cum = ctx.shared(
        ("txn", dtype), lambda: (list(txp.mix), _cum(list(txp.mix.values())))
    )

    def boosted(factor: float) -> tuple[list[TxnType], list[float], float]:
        """Types, cumulative weights and rate factor on a day of withdrawals x factor."""

        def make() -> tuple[list[TxnType], list[float], float]:
            mix = _mix(config, dtype, factor)
            return list(mix), _cum(list(mix.values())), withdrawal_boost(config, dtype, factor)

        return ctx.shared(("boosted", dtype, factor), make)

    rhythm = config.rhythm[dev.placement]
    hour_rate = ctx.shared(
        ("hourly", dev.placement), lambda: _hourly_per_ms(rhythm.hourly, rhythm.weekly)
    )
    volume = prof.volume
    weekly = rhythm.weekly
    res_names, res_cum = ctx.shared(
        "results",
        lambda: (list(config.txn_result_weights), _cum(list(config.txn_result_weights.values()))),
    )
    comps = _COMPONENTS[dtype]
    comp_names, comp_cum = ctx.shared(
        ("components", dtype), lambda: (list(comps), _cum(list(comps.values())))
    )
    w_notes, w_notes_cum = _WITHDRAW_NOTES[0], _WITHDRAW_CUM
    d_notes, d_notes_cum = _DEPOSIT_NOTES[0], _DEPOSIT_CUM
    fees = config.inter_bank_fee
    window_bounds = ctx.window_bounds(device_window(dev))

    # Conditions.
    seq = 0
    powered = True
    link_down = 0  # number of reasons the link is down (network outage, own drop)
    connected = False
    session = ""
    connect_ts = 0
    buffer: list[tuple[str, bytes, str, int, str, int, str, str, int]] = []
    fault: str | None = None  # active fault code
    fault_comp = ""
    fault_degrades = False
    tech = False
    supervisor = False
    planned = False
    cash = cash_cfg.notes_loaded if has_cash else 0
    cash_low_sent = False
    cash_out = False
    deposit = 0
    deposit_full = False
    reported: str | None = None
    t_hb = NEVER  # next heartbeat
    t_emergency = NEVER  # an unscheduled cash visit after a cash-out or full cassette

    def report(repaired: int | None) -> None:
        nonlocal pending
        if pending is not None and sink is not None:
            f_at, comp_, code_, soft, degraded, dispatched, arrived = pending
            sink(Repair(d_id, dev.vendor, dev.model, comp_, code_, soft, degraded, f_at,
                        dispatched, arrived, repaired))  # fmt: skip
        pending = None

    def is_open(t: int) -> bool:
        return bisect.bisect_right(window_bounds, t) % 2 == 1

    window_open = is_open(t0)

    def state_now() -> str:
        if link_down:
            return "comms_down"
        if planned:
            return "planned_maintenance"
        if tech:
            return "maintenance"
        if fault is not None and not fault_degrades:
            return "fault"
        if supervisor:
            return "supervisor"
        if not window_open:
            return "closed"
        if cash_out:
            return "cash_out"
        if deposit_full and dtype is DeviceType.DEPOSIT:
            return "deposit_full"
        if fault is not None or deposit_full:
            return "degraded"
        return "in_service"

    # The state and txn payloads are written from templates: byte for byte what
    # ``_dumps`` makes of the same dict (tests/test_simulator_payloads.py), at a
    # fraction of the cost. Every value not known to be a plain number or an ASCII
    # constant goes through the JSON encoder.
    j_id = _json(d_id)
    head = '{"v":1,"device_id":' + j_id + ',"ts":"'
    txn_head = ',"txn_id":' + j_id[:-1] + "-"
    res_json = ctx.shared("results_json", lambda: {r: _json(r) for r in res_names})
    j_hb = _json(hb)
    comps_ok = ctx.shared(
        ("components_json", dtype), lambda: ",".join(f'"{c}":"ok"' for c in comp_names)
    )

    def comps_json() -> str:
        if fault is None or fault_comp not in comps:
            return comps_ok
        return ctx.shared(
            ("components_json", dtype, fault_comp),
            lambda: ",".join(f'"{c}":"{"fault" if c == fault_comp else "ok"}"' for c in comp_names),
        )

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

    def state_payload(t: int, state: str) -> bytes:
        parts = [head, iso(t), '","seq":', str(seq), ',"state":"', state, '","heartbeat_s":',
                 j_hb, ',"components":{', comps_json(), "}"]  # fmt: skip
        if has_cash:
            status = "empty" if cash_out else ("low" if cash_low_sent else "ok")
            parts += (cdm_head, str(cash), cdm_tail, status, '"}')
        if has_deposit:
            parts += (cim_head, str(deposit), cim_tail, "full" if deposit_full else "ok", '"}')
        if has_cash or has_deposit:
            parts.append("]")
        if fault is not None:
            parts += (',"faults":[', _json(fault), "]")
        parts.append("}")
        return "".join(parts).encode()

    out: list[Emission] = []

    def send(t: int, kind: str, topic: str, payload: bytes, detail: str,
             txn_id: str = "", result: str = "", since: int = -1,
             amount: int = 0, flag: bool = False) -> None:  # fmt: skip
        """A sequenced message: published now, buffered while the link is down."""
        if not powered:
            return
        if connected:
            out.append(Emission(t, topic, payload, False, Control.NONE, d_id, kind, seq,
                                txn_id, t, detail, result, since, b"", amount, flag))  # fmt: skip
        elif len(buffer) < config.store_forward_max:
            buffer.append((topic, payload, kind, t, detail, seq, txn_id, result, since))

    def next_seq() -> int:
        nonlocal seq
        seq += 1
        return seq

    def emit_state(t: int, force: bool = False) -> None:
        nonlocal reported, t_hb
        if not powered:
            return
        state = state_now()
        if state == reported and not force:
            return
        reported = state
        next_seq()
        send(t, "state", topic_state, state_payload(t, state), state)
        t_hb = t + hb_period

    def emit_event(t: int, event: str, component: str | None = None, code: str | None = None,
                   severity: str = "info", text: str | None = None, since: int = -1) -> None:  # fmt: skip
        if not powered:
            return
        next_seq()
        data: dict[str, Any] = {"v": 1, "device_id": d_id, "ts": iso(t), "seq": seq, "event": event}
        if component:
            data["component"] = component
        if code:
            data["code"] = code
        data["severity"] = severity
        if text:
            data["text"] = text
        if since >= 0:
            data["since"] = iso(since)
        send(t, "event", topic_event, _dumps(data), event, since=since)

    def presence(t: int, status: str, will: bool, sess: str) -> bytes:
        return _dumps(
            {"v": 1, "device_id": d_id, "status": status, "ts": iso(t), "session": sess,
             "will": will}
        )  # fmt: skip

    def connect(t: int) -> None:
        """Birth, then the store-and-forward backlog with original ts and seq."""
        nonlocal connected, session, connect_ts
        connected = True
        session = f"{d_id[-20:]}.{t:x}"
        connect_ts = t
        will = presence(t, "offline", True, session) if ctx.real_wills else b""
        out.append(Emission(t, topic_presence, presence(t, "online", False, session), True,
                            Control.CONNECT, d_id, "presence", -1, "", t, "online", "", -1,
                            will))  # fmt: skip
        for topic, payload, kind, ts, detail, s, txn_id, result, since in buffer:
            out.append(Emission(t, topic, payload, False, Control.NONE, d_id, kind, s,
                                txn_id, ts, detail, result, since, b""))  # fmt: skip
        buffer.clear()

    def drop(t: int) -> None:
        nonlocal connected
        connected = False
        if ctx.real_wills:
            payload, ts, how = presence(connect_ts, "offline", True, session), connect_ts, "will"
        else:
            payload, ts, how = presence(t, "offline", False, session), t, "gateway"
        out.append(Emission(t, topic_presence, payload, True, Control.DROP, d_id, "presence",
                            -1, "", ts, "offline", how, -1, b""))  # fmt: skip

    def update_link(t: int) -> None:
        """Connect or drop after a change of power or link."""
        want = powered and link_down == 0
        if want and not connected:
            connect(t)
        elif not want and connected:
            drop(t)

    # Next due times.
    def next_txn(t: int) -> int:
        while t < t_end:
            h_end = (t // HOUR + 1) * HOUR
            local_hour, weekday = ctx.hour(t)
            lam = volume * hour_rate[local_hour] * weekly[weekday]
            factor = ctx.withdrawal_factor(t)
            if factor != 1.0:
                lam *= boosted(factor)[2]
            if lam > 0:
                t_next = t + int(rng.expovariate(lam)) + 1
                if t_next < h_end:
                    return t_next
            t = h_end
        return NEVER

    def next_fault(t: int) -> int:
        return t + int(rng.expovariate(1.0 / (rel.mtbf_days * DAY))) + 1

    def next_visit(t: int, days: int) -> int:
        day = ctx.local_date(t) + timedelta(days=days)
        return ctx.local_time(day, cash_cfg.replenish_hour + rng.uniform(-1.0, 1.0))

    def next_planned(t: int, first: bool) -> int:
        every = inc.planned_every_days * DAY
        gap = rng.uniform(0, every) if first else every * rng.uniform(0.9, 1.1)
        day = ctx.local_date(t + int(gap))
        hour = rng.uniform(9.5, 14.0)
        # A weekday, and never before ``t``: the first one may fall earlier the same day.
        while day.weekday() >= 5 or ctx.local_time(day, hour) < t:
            day += timedelta(days=1)
        return ctx.local_time(day, hour)

    def next_link_drop(t: int) -> int:
        if inc.device_link_drops_per_year <= 0:
            return NEVER
        return t + int(rng.expovariate(inc.device_link_drops_per_year / (365 * DAY))) + 1

    # Shared incident schedules (one list per branch / sub-branch, read with an index):
    # outages that started before this device did are skipped.
    cuts = ctx.power_cuts(branch.id)
    outages = ctx.network_outages(branch.subbranch)
    cut_i = bisect.bisect_left(cuts, (t0, -1))
    outage_i = bisect.bisect_left(outages, (t0, -1))
    in_cut = in_outage = False

    def transaction(t: int) -> None:
        """A customer at the device; cash and deposit levels follow."""
        nonlocal cash, cash_low_sent, cash_out, deposit, deposit_full, t_emergency
        factor = ctx.withdrawal_factor(t)
        types, cum = (tx_types, tx_cum) if factor == 1.0 else boosted(factor)[:2]
        ttype = types[bisect.bisect_left(cum, rng.random() * cum[-1])]
        if ttype is TxnType.DEPOSIT and (deposit_full or fault_degrades):
            return  # deposits are refused right now: the customer goes elsewhere
        result = res_names[bisect.bisect_left(res_cum, rng.random() * res_cum[-1])]
        notes = 0
        fee = 0
        on_us = True
        if ttype is TxnType.WITHDRAWAL:
            notes = w_notes[bisect.bisect_left(w_notes_cum, rng.random() * w_notes_cum[-1])]
            on_us = rng.random() >= config.inter_bank_share
            if result == "ok" and notes > cash:
                result = "declined"  # not enough notes left in the device
            if result == "ok" and not on_us:
                fee = round(rng.choice(fees) * 100)
            amount = notes * 100
        elif ttype is TxnType.DEPOSIT:
            notes = d_notes[bisect.bisect_left(d_notes_cum, rng.random() * d_notes_cum[-1])]
            amount = notes * 100
        elif ttype in (TxnType.TRANSFER, TxnType.PAYMENT):
            amount = rng.randint(20, 5000)
        else:
            amount = 0
        s = next_seq()
        txn_id = f"{d_id}-{s}"
        financial = ttype in FINANCIAL_TYPES
        payload = (
            f'{head}{iso(t)}","seq":{s}{txn_head}{s}","type":"{ttype.value}",'
            f'"amount":"{amount}.00","currency":"CNY","fee":"{fee // 100}.{fee % 100:02d}",'
            f'"result":{res_json.get(result) or _json(result)},"duration_ms":'
            f"{int(_DURATION_MS[ttype] * rng.uniform(0.6, 1.6))},"
            f'"on_us":{"true" if on_us else "false"}}}'
        ).encode()
        send(t, "txn", topic_txn, payload, ttype.value, txn_id=txn_id, result=result,
             amount=fee, flag=financial)  # fmt: skip
        if result != "ok":
            return
        changed = False
        if ttype is TxnType.WITHDRAWAL:
            cash -= notes
            if not cash_low_sent and cash < cash_cfg.low_share * cash_cfg.notes_loaded:
                cash_low_sent = True
                emit_event(t, "cash_low", component="cdm", severity="warning")
            if cash < CASH_OUT_NOTES:
                cash_out = changed = True
                emit_event(t, "cash_out", component="cdm", severity="critical")
        elif ttype is TxnType.DEPOSIT:
            if dtype is DeviceType.CRS:
                recycled = min(
                    round(notes * cash_cfg.crs_recycle_share), cash_cfg.notes_loaded - cash
                )
                cash += recycled
                notes -= recycled
            deposit += notes
            if deposit >= cash_cfg.deposit_capacity:
                deposit_full = changed = True
                emit_event(t, "deposit_full", component="cim", severity="critical")
        if changed:
            if t_emergency == NEVER and not supervisor:
                t_emergency = t + max(
                    10 * MINUTE, int(_lognormal(rng, cash_cfg.emergency_response_h * HOUR, 0.5))
                )
            emit_state(t)

    t_txn = next_txn(t0)
    i_win = bisect.bisect_right(window_bounds, t0)
    t_win = window_bounds[i_win] if i_win < len(window_bounds) else NEVER
    t_fault = next_fault(t0)
    t_reboot = NEVER
    t_tech = NEVER
    t_repair = NEVER
    t_visit = (
        next_visit(t0, rng.randint(0, prof.replenish_every_days - 1)) if handles_cash else NEVER
    )
    if t_visit < t0:
        t_visit = next_visit(t0, prof.replenish_every_days)
    t_visit_end = NEVER
    t_plan = next_planned(t0, True)
    t_plan_end = NEVER
    t_link = next_link_drop(t0)
    t_link_up = NEVER
    power_back = NEVER
    power_lost = t0

    connect(t0)
    emit_state(t0, force=True)
    yield from out
    out.clear()

    while True:
        t_cut = cuts[cut_i][in_cut] if cut_i < len(cuts) else NEVER
        t_outage = outages[outage_i][in_outage] if outage_i < len(outages) else NEVER
        t = min(t_hb, t_txn, t_win, t_fault, t_reboot, t_tech, t_repair, t_visit, t_emergency,
                t_visit_end, t_plan, t_plan_end, t_link, t_link_up, t_cut, t_outage)  # fmt: skip
        if t >= t_end:
            report(None)
            return
        if not powered and t in (t_fault, t_reboot, t_tech, t_repair, t_visit, t_emergency,
                                 t_visit_end, t_plan, t_plan_end, t_link, t_link_up):  # fmt: skip
            # A dead device does nothing until the power is back; its clocks wait.
            later = max(power_back, t + 1)
            if t_fault == t:
                t_fault = later
            if t_reboot == t:
                t_reboot = later
            if t_tech == t:
                t_tech = later
            if t_repair == t:
                t_repair = later
            if t_visit == t:
                t_visit = later
            if t_emergency == t:
                t_emergency = later
            if t_visit_end == t:
                t_visit_end = later
            if t_plan == t:
                t_plan = later
            if t_plan_end == t:
                t_plan_end = later
            if t_link == t:
                t_link = later
            if t_link_up == t:
                t_link_up = later
            continue

        if t == t_win:
            window_open = is_open(t)
            i = bisect.bisect_right(window_bounds, t)
            t_win = window_bounds[i] if i < len(window_bounds) else NEVER
            emit_state(t)
        elif t == t_cut:
            if not in_cut:  # the branch loses power: the device falls silent
                in_cut = True
                powered = False
                power_lost, power_back = t, cuts[cut_i][1]
                update_link(t)
                t_hb = NEVER
                reported = None
            else:
                in_cut = False
                cut_i += 1
                powered = True
                power_back = NEVER
                update_link(t)
                emit_event(t, "power_restored", severity="warning", since=power_lost,
                           text="mains power restored")  # fmt: skip
                emit_state(t, force=True)
        elif t == t_outage:
            if not in_outage:  # the sub-branch's network is down
                in_outage = True
                link_down += 1
            else:
                in_outage = False
                outage_i += 1
                link_down -= 1
            update_link(t)
            emit_state(t)
        elif t == t_hb:
            emit_state(t, force=True)
        elif t == t_txn:
            t_txn = next_txn(t)
            if connected and reported in ("in_service", "degraded"):
                transaction(t)
        elif t == t_fault:
            t_fault = NEVER
            comp = comp_names[bisect.bisect_left(comp_cum, rng.random() * comp_cum[-1])]
            software = rng.random() < rel.software_share
            if software:
                code = f"SW-{rng.randint(1, 40):04d}"
                comp = "ptr" if "ptr" in comps else comp_names[0]
                fault, fault_comp, fault_degrades = code, "", False
                emit_event(t, "fault", code=code, severity="critical", text="application error")
                t_reboot = t + int(rng.uniform(4, 15) * MINUTE)
                pending = [t, None, code, True, False, None, None]
            else:
                code = f"{comp.upper()}-{rng.randint(1, 9999):04d}"
                fault, fault_comp = code, comp
                fault_degrades = (
                    comp == "cim"
                    and dtype is DeviceType.CRS
                    and rng.random() < config.degraded_share
                )
                emit_event(t, "fault", component=comp, code=code,
                           severity="warning" if fault_degrades else "critical")  # fmt: skip
                if tech_rng is None:
                    tech_rng = random.Random(f"{ctx.seed}:tech:{d_id}")
                # The bank dispatches an incident that exists: never before the floor
                # has passed inside the service window (the engine's debounce counts
                # only there), so a fault at night is dispatched after the window opens.
                dispatch = max(
                    in_window_after(window_bounds, t, dispatch_floor),
                    t + int(_lognormal(tech_rng, rel.dispatch_h * HOUR, 0.6)),
                )
                # The technician sets out when dispatched; response_h is dispatch -> on site.
                t_tech = dispatch + max(MINUTE, int(_lognormal(rng, rel.response_h * HOUR, 0.7)))
                pending = [t, comp, code, False, fault_degrades, dispatch, None]
            emit_state(t)
        elif t == t_reboot:
            t_reboot = NEVER
            code = fault or "SW"
            emit_event(t, "reboot", text="remote restart")
            emit_event(t, "fault_cleared", code=code)
            fault = None
            t_fault = next_fault(t)
            emit_state(t)
            report(t)
        elif t == t_tech:
            t_tech = NEVER
            tech = True
            emit_event(t, "technician_arrived", component=fault_comp or None, code=fault)
            if pending is not None:
                pending[6] = t
            t_repair = t + max(5 * MINUTE, int(_lognormal(rng, rel.repair_h * HOUR, 0.6)))
            emit_state(t)
        elif t == t_repair:
            t_repair = NEVER
            emit_event(t, "fault_cleared", component=fault_comp or None, code=fault or "HW")
            emit_event(t, "technician_left")
            fault, fault_comp, fault_degrades, tech = None, "", False, False
            t_fault = next_fault(t)
            emit_state(t)
            report(t)
        elif t in (t_visit, t_emergency):
            if t == t_visit:
                t_visit = next_visit(t, prof.replenish_every_days)
            else:
                t_emergency = NEVER
            if not supervisor:
                supervisor = True
                emit_event(t, "supervisor_enter", text="replenishment")
                t_visit_end = t + max(
                    5 * MINUTE, int(_lognormal(rng, cash_cfg.supervisor_min * MINUTE, 0.4))
                )
                emit_state(t)
        elif t == t_visit_end:
            t_visit_end = NEVER
            if has_cash:
                cash, cash_out, cash_low_sent = cash_cfg.notes_loaded, False, False
                emit_event(t, "replenished", component="cdm")
            if has_deposit:
                deposit, deposit_full = 0, False
                emit_event(t, "deposit_emptied", component="cim")
            supervisor = False
            t_emergency = NEVER
            emit_event(t, "supervisor_exit")
            emit_state(t)
        elif t == t_plan:
            t_plan = next_planned(t, False)
            if not planned:
                planned = True
                t_plan_end = t + max(
                    10 * MINUTE, int(_lognormal(rng, inc.planned_min * MINUTE, 0.3))
                )
                emit_state(t)
        elif t == t_plan_end:
            t_plan_end = NEVER
            planned = False
            emit_state(t)
        elif t == t_link:
            t_link = NEVER
            link_down += 1
            t_link_up = t + max(1000, int(_lognormal(rng, inc.link_drop_min * MINUTE, 0.8)))
            update_link(t)
            emit_state(t)
        elif t == t_link_up:
            t_link_up = NEVER
            link_down -= 1
            update_link(t)
            emit_state(t)
            t_link = next_link_drop(t)
        if out:
            yield from out
            out.clear()
