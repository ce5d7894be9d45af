"""The ground truth of a simulated run: what was sent, and what it means.

A :class:`Ledger` records every :class:`~simulator.engine.Emission` as it is handed to the
broker and, at the end, derives per device the state intervals that the availability
semantics (``docs/simulator.md``, "Ground truth") give for exactly those messages: the
timeline the collector and the KPI engine must reconstruct. It is an independent
implementation of the contract, written from the rules, not from ``rules/``.

Also kept: each outlet's teller-counter volumes per day, and per device and local day the
transactions (successful financial, successful, all) and fee income.

:func:`simulate` runs a fleet in-process (no broker) and returns the emissions and the
ledger; :meth:`Ledger.write` / :func:`load_ledger` store and read it as a folder of CSV
and JSON files.
"""

from __future__ import annotations

import csv
import gzip
import io
import json
import os
import tempfile
from array import array
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import IO, Any, NamedTuple
from zoneinfo import ZoneInfo

from atmfleet.errors import ConfigError, UsageError
from atmfleet.inventory import Inventory
from atmfleet.inventory_io import load_inventory, save_inventory
from atmfleet.protocol import DeviceState
from simulator.config import SimConfig
from simulator.engine import (
    HOUR,
    Emission,
    Repair,
    device_heartbeat_s,
    device_profile,
    from_ms,
    generate,
    iso,
    ms,
)

#: How many heartbeats of silence make a gap offline.
TIMEOUT_FACTOR = 3

#: Downtime cause (label) of each reported state; "offline" is communications.
CAUSE: dict[str, str] = {
    DeviceState.IN_SERVICE: "available",
    DeviceState.DEGRADED: "available",
    DeviceState.FAULT: "fault",
    DeviceState.CASH_OUT: "cash_out",
    DeviceState.DEPOSIT_FULL: "deposit_full",
    DeviceState.SUPERVISOR: "supervisor",
    DeviceState.MAINTENANCE: "supervisor",
    DeviceState.PLANNED_MAINTENANCE: "planned",
    DeviceState.COMMS_DOWN: "communications",
    DeviceState.CLOSED: "closed",
    DeviceState.POWERED_OFF: "power",
    "offline": "communications",
}

_STATES: tuple[str, ...] = (*(s.value for s in DeviceState), "offline")
_CODE = {s: i for i, s in enumerate(_STATES)}
_OFFLINE = _CODE["offline"]
_ONLINE = 31  # a birth: a point for the gap rule that sets no state
_RUN_END = 0x40  # flag: the last point of a run (no silent gap since the run's first)

MESSAGE_FIELDS = (
    "published", "topic", "kind", "device_id", "seq", "txn_id", "ts", "retain", "control",
    "detail", "result",
)  # fmt: skip


class Interval(NamedTuple):
    """``[start, end)`` in ms; ``state`` is a reported state or ``offline``."""

    device_id: str
    start: int
    end: int
    state: str
    cause: str


class CounterRow(NamedTuple):
    branch_id: str
    date: str
    financial: int
    non_financial: int


@dataclass(slots=True)
class _DevicePoints:
    """A device's points, compressed into runs: consecutive points of one state, in ts
    order, no gap longer than the timeout (a day of heartbeats is one run). A point that
    arrives out of ts order (a store-and-forward backlog) starts a run of its own."""

    timeout: int
    start: array[int] = field(default_factory=lambda: array("q"))
    end: array[int] = field(default_factory=lambda: array("q"))
    code: array[int] = field(default_factory=lambda: array("b"))
    power: list[tuple[int, int]] = field(default_factory=list)

    def add(self, ts: int, code: int) -> None:
        if self.code and code != _ONLINE and self.code[-1] == code:
            last = self.end[-1]
            if last <= ts <= last + self.timeout:
                self.end[-1] = ts
                return
        self.start.append(ts)
        self.end.append(ts)
        self.code.append(code)

    def points(self) -> Iterator[tuple[int, int]]:
        """The runs as points (first and last of each), in arrival order."""
        for a, b, code in zip(self.start, self.end, self.code, strict=True):
            yield a, code
            if b != a:
                yield b, code | _RUN_END


def infer_intervals(
    device_id: str,
    points: Iterable[tuple[int, int]],
    power: Iterable[tuple[int, int]],
    end: int,
    timeout: int,
) -> list[Interval]:
    """The semantics, for one device. ``points`` are ``(ts, code)`` in arrival order; a
    code carrying ``_RUN_END`` closes a run of heartbeats (no silent gap inside it).

    A state sets the state from its ts; an offline presence sets ``offline``; a birth sets
    nothing. A gap longer than ``timeout`` between consecutive points (or up to ``end``)
    is offline from the earlier point. Inside ``[since, restored]`` of a power cut the
    cause is power.
    """
    ordered = sorted(points, key=lambda p: p[0])  # stable: ties keep arrival order
    raw: list[tuple[int, int, int]] = []  # (start, end, code)
    cur: int | None = None
    cur_start = 0
    last = 0

    def close(at: int) -> None:
        if cur is not None and at > cur_start:
            if raw and raw[-1][2] == cur and raw[-1][1] == cur_start:
                raw[-1] = (raw[-1][0], at, cur)
            else:
                raw.append((cur_start, at, cur))

    for ts, flagged in ordered:
        if ts >= end:
            break
        code = flagged & ~_RUN_END
        gap = not flagged & _RUN_END and ts - last > timeout
        if cur is not None and gap and cur != _OFFLINE:
            close(last)
            cur, cur_start = _OFFLINE, last
        if code != _ONLINE and code != cur:
            close(ts)
            cur, cur_start = code, ts
        elif cur is None:  # a birth first: nothing known yet
            last = ts
            continue
        last = ts
    if cur is not None:
        if end - last > timeout and cur != _OFFLINE:
            close(last)
            cur, cur_start = _OFFLINE, last
        close(end)

    spans = sorted(power)
    out: list[Interval] = []
    for a, b, code in raw:
        state = _STATES[code]
        pos = a
        for s0, s1 in spans:
            if s1 <= pos or s0 >= b:
                continue
            if s0 > pos:
                out.append(Interval(device_id, pos, s0, state, CAUSE[state]))
                pos = s0
            cut = min(s1, b)
            out.append(Interval(device_id, pos, cut, state, "power"))
            pos = cut
        if pos < b:
            out.append(Interval(device_id, pos, b, state, CAUSE[state]))
    merged: list[Interval] = []
    for iv in out:
        if merged and merged[-1].end == iv.start and merged[-1][3:] == iv[3:]:
            merged[-1] = merged[-1]._replace(end=iv.end)
        else:
            merged.append(iv)
    return merged


class LedgerPart(NamedTuple):
    """What a ledger recorded of its devices (:meth:`Ledger.part`), without the files."""

    counts: Counter[str]
    counters: list[CounterRow]
    txn_days: dict[tuple[str, str], list[int]]
    points: dict[str, _DevicePoints]
    repairs: list[Repair]
    first: int | None
    last: int | None


class Ledger:
    """Records emissions as they are sent; :meth:`finish` derives the intervals."""

    def __init__(
        self,
        inventory: Inventory,
        config: SimConfig,
        seed: int,
        *,
        heartbeat_s: int | None = None,
        messages_out: IO[str] | None = None,
    ) -> None:
        self.inventory = inventory
        self.config = config
        self.seed = seed
        self.heartbeat_s = heartbeat_s
        self.tz = ZoneInfo(config.timezone)
        self._points: dict[str, _DevicePoints] = {}
        self._writer = csv.writer(messages_out) if messages_out is not None else None
        if self._writer is not None:
            self._writer.writerow(MESSAGE_FIELDS)
        self._days: dict[int, str] = {}
        self.counts: Counter[str] = Counter()
        self.counters: list[CounterRow] = []
        #: (device_id, local date) -> [financial ok, ok, all, fee in fen]
        self.txn_days: dict[tuple[str, str], list[int]] = {}
        self.intervals: list[Interval] = []
        #: The incident truth of every fault (simulator.engine.Repair), in fault order.
        self.repairs: list[Repair] = []
        self.first: int | None = None
        self.last: int | None = None
        self.end: int | None = None

    def _local_date(self, t: int) -> str:
        h = t // HOUR
        got = self._days.get(h)
        if got is None:
            got = from_ms(h * HOUR).astimezone(self.tz).date().isoformat()
            self._days[h] = got
        return got

    def record(self, e: Emission) -> None:
        self.counts[e.kind] += 1
        if self.first is None:
            self.first = e.t
        self.last = e.t
        if self._writer is not None:
            published = iso(e.t)
            self._writer.writerow(
                (published, e.topic, e.kind, e.device_id, e.seq if e.seq >= 0 else "",
                 e.txn_id, published if e.ts == e.t else iso(e.ts), int(e.retain), e.control,
                 e.detail, e.result)
            )  # fmt: skip
        kind = e.kind
        if kind == "txn":
            key = (e.device_id, self._local_date(e.ts))
            row = self.txn_days.get(key)
            if row is None:
                row = self.txn_days[key] = [0, 0, 0, 0]
            row[2] += 1
            if e.result == "ok":
                row[1] += 1
                row[3] += e.amount
                if e.flag:
                    row[0] += 1
            return
        if kind == "counter":
            data = json.loads(e.payload)
            self.counters.append(
                CounterRow(e.device_id, data["date"], data["financial"], data["non_financial"])
            )
            return
        dev = self._points.get(e.device_id)
        if dev is None:
            dev = self._points[e.device_id] = _DevicePoints(self._timeout(e.device_id))
        if kind == "state":
            dev.add(e.ts, _CODE[e.detail])
        elif kind == "presence":
            if e.detail == "online":
                dev.add(e.ts, _ONLINE)
            else:
                # A broker's will takes effect when it is received (here: when sent).
                dev.add(e.t if e.result == "will" else e.ts, _OFFLINE)
        elif kind == "event" and e.detail == "power_restored":
            dev.power.append((e.since, e.ts))

    def part(self) -> LedgerPart:
        """What this ledger recorded, to be merged into another (a worker's slice)."""
        return LedgerPart(self.counts, self.counters, self.txn_days, self._points,
                          self.repairs, self.first, self.last)  # fmt: skip

    def absorb(self, part: LedgerPart) -> None:
        """Add what another ledger recorded of other devices (``part()``) to this one."""
        self.counts.update(part.counts)
        self.counters.extend(part.counters)
        self.txn_days.update(part.txn_days)
        self._points.update(part.points)
        self.repairs.extend(part.repairs)
        if part.first is not None:
            self.first = part.first if self.first is None else min(self.first, part.first)
        if part.last is not None:
            self.last = part.last if self.last is None else max(self.last, part.last)

    def record_repair(self, r: Repair) -> None:
        """The generator's ``on_repair``: one fault's truth."""
        self.repairs.append(r)

    def finish(self, end: int) -> None:
        """Derive the intervals up to ``end`` (ms): the run's end or when it was stopped.
        Of the repairs, what happened from ``end`` on did not happen (yet)."""
        self.end = end
        kept = []
        for r in self.repairs:
            if r.fault >= end:
                continue
            kept.append(
                r._replace(
                    dispatch=_before(r.dispatch, end),
                    arrival=_before(r.arrival, end),
                    repair=_before(r.repair, end),
                )
            )
        self.repairs = sorted(kept, key=lambda r: (r.fault, r.device_id))
        out: list[Interval] = []
        for device_id in sorted(self._points):
            dev = self._points[device_id]
            out.extend(infer_intervals(device_id, dev.points(), dev.power, end, dev.timeout))
        self.intervals = out

    def _timeout(self, device_id: str) -> int:
        device = self.inventory.device_by_id.get(device_id)
        hb = device_heartbeat_s(device, self.config, self.heartbeat_s) if device else 60
        return TIMEOUT_FACTOR * hb * 1000

    def intervals_of(self, device_id: str) -> list[Interval]:
        return [iv for iv in self.intervals if iv.device_id == device_id]

    def summary(self) -> dict[str, Any]:
        return {
            "seed": self.seed,
            "devices": len(self.inventory.devices),
            "first_published": iso(self.first) if self.first is not None else None,
            "last_published": iso(self.last) if self.last is not None else None,
            "end": iso(self.end) if self.end is not None else None,
            "heartbeat_s": self.heartbeat_s or self.config.heartbeat_s,
            "messages": sum(self.counts.values()),
            "by_kind": dict(sorted(self.counts.items())),
        }

    def write(self, folder: Path) -> None:
        """Write intervals.csv, counters.csv, txn_daily.csv, devices.csv, inventory/ (the
        inventory's CSV format), config.json and summary.json (messages.csv.gz is written while recording)."""
        folder.mkdir(parents=True, exist_ok=True)
        _atomic_csv(
            folder / "intervals.csv",
            ("device_id", "start", "end", "state", "cause"),
            ((iv.device_id, iso(iv.start), iso(iv.end), iv.state, iv.cause) for iv in self.intervals),
        )  # fmt: skip
        _atomic_csv(
            folder / "repairs.csv",
            REPAIR_FIELDS,
            (
                (r.device_id, r.vendor, r.model, r.component or "", r.code, int(r.software),
                 int(r.degraded), iso(r.fault), _iso_or_empty(r.dispatch),
                 _iso_or_empty(r.arrival), _iso_or_empty(r.repair))
                for r in self.repairs
            ),
        )  # fmt: skip
        _atomic_csv(
            folder / "counters.csv",
            ("branch_id", "date", "financial", "non_financial"),
            self.counters,
        )
        _atomic_csv(
            folder / "txn_daily.csv",
            ("device_id", "date", "financial_ok", "ok", "all", "fee"),
            (
                (d, day, r[0], r[1], r[2], f"{r[3] // 100}.{r[3] % 100:02d}")
                for (d, day), r in sorted(self.txn_days.items())
            ),
        )
        _atomic_csv(
            folder / "devices.csv",
            ("device_id", "heartbeat_s", "expected_txn_per_day", "low_yield"),
            (
                (
                    d.id,
                    device_heartbeat_s(d, self.config, self.heartbeat_s),
                    f"{(p := device_profile(d, self.config, self.seed)).volume:.1f}",
                    int(p.low_yield),
                )
                for d in self.inventory.devices
            ),
        )
        save_inventory(self.inventory, folder / "inventory")
        _atomic_text(folder / "config.json", self.config.model_dump_json(indent=1))
        _atomic_text(
            folder / "summary.json", json.dumps(self.summary(), indent=1, ensure_ascii=False)
        )


REPAIR_FIELDS = (
    "device_id", "vendor", "model", "component", "code", "software", "degraded", "fault",
    "dispatch", "arrival", "repair",
)  # fmt: skip


def _before(t: int | None, end: int) -> int | None:
    return t if t is not None and t < end else None


def _iso_or_empty(t: int | None) -> str:
    return "" if t is None else iso(t)


def _atomic_text(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as fh:
            fh.write(text)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _atomic_csv(path: Path, header: tuple[str, ...], rows: Iterable[Iterable[Any]]) -> None:
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(header)
    writer.writerows(rows)
    _atomic_text(path, buf.getvalue())


def open_messages(folder: Path) -> IO[str]:
    """The gzip'd CSV a ledger streams every sent message to."""
    folder.mkdir(parents=True, exist_ok=True)
    return gzip.open(
        folder / "messages.csv.gz", "wt", encoding="utf-8", newline="", compresslevel=3
    )


# --------------------------------------------------------------------------- loading back


@dataclass
class LedgerData:
    """A ledger folder read back."""

    folder: Path
    summary: dict[str, Any]
    inventory: Inventory
    intervals: list[Interval]
    counters: list[CounterRow]
    txn_days: dict[tuple[str, str], tuple[int, int, int, str]]
    low_yield: set[str]
    repairs: list[Repair] = field(default_factory=list)

    def messages(self) -> Iterator[dict[str, str]]:
        """Every message sent, as CSV rows (``MESSAGE_FIELDS``), in publish order."""
        path = self.folder / "messages.csv.gz"
        if not path.exists():
            return
        with gzip.open(path, "rt", encoding="utf-8", newline="") as fh:
            yield from csv.DictReader(fh)


def _ms_of(text: str) -> int:
    return ms(datetime.fromisoformat(text))


def _opt_ms(text: str) -> int | None:
    return _ms_of(text) if text else None


def load_ledger(folder: Path) -> LedgerData:
    """Read a folder written by :meth:`Ledger.write`."""
    try:
        summary = json.loads((folder / "summary.json").read_text(encoding="utf-8"))
        inventory = load_inventory(folder / "inventory")
        with (folder / "intervals.csv").open(encoding="utf-8", newline="") as fh:
            intervals = [
                Interval(
                    r["device_id"], _ms_of(r["start"]), _ms_of(r["end"]), r["state"], r["cause"]
                )
                for r in csv.DictReader(fh)
            ]
        with (folder / "counters.csv").open(encoding="utf-8", newline="") as fh:
            counters = [
                CounterRow(r["branch_id"], r["date"], int(r["financial"]), int(r["non_financial"]))
                for r in csv.DictReader(fh)
            ]
        with (folder / "txn_daily.csv").open(encoding="utf-8", newline="") as fh:
            days = {
                (r["device_id"], r["date"]): (
                    int(r["financial_ok"]),
                    int(r["ok"]),
                    int(r["all"]),
                    r["fee"],
                )
                for r in csv.DictReader(fh)
            }
        with (folder / "devices.csv").open(encoding="utf-8", newline="") as fh:
            low = {r["device_id"] for r in csv.DictReader(fh) if r["low_yield"] == "1"}
        repairs = []
        if (folder / "repairs.csv").exists():  # ledgers written before technicians had none
            with (folder / "repairs.csv").open(encoding="utf-8", newline="") as fh:
                repairs = [
                    Repair(r["device_id"], r["vendor"], r["model"], r["component"] or None,
                           r["code"], r["software"] == "1", r["degraded"] == "1",
                           _ms_of(r["fault"]), _opt_ms(r["dispatch"]), _opt_ms(r["arrival"]),
                           _opt_ms(r["repair"]))
                    for r in csv.DictReader(fh)
                ]  # fmt: skip
    except (OSError, KeyError, ValueError, ConfigError) as exc:
        raise UsageError(f"{folder} is not a complete simulator ledger: {exc}") from None
    return LedgerData(folder, summary, inventory, intervals, counters, days, low, repairs)


# ------------------------------------------------------------------------ in-process runs


@dataclass
class SimRun:
    """A run without a broker: what would be sent, and its ground truth."""

    emissions: list[Emission]
    ledger: Ledger

    def by_device(self, device_id: str) -> list[Emission]:
        return [e for e in self.emissions if e.device_id == device_id]


def simulate(
    inventory: Inventory,
    config: SimConfig,
    seed: int,
    start: datetime,
    end: datetime,
    *,
    real_wills: bool = False,
    heartbeat_s: int | None = None,
    keep_emissions: bool = True,
) -> SimRun:
    """Run the fleet over ``[start, end)`` in-process; ``keep_emissions=False`` for big
    runs whose messages are not needed (the ledger still counts them)."""
    ledger = Ledger(inventory, config, seed, heartbeat_s=heartbeat_s)
    kept: list[Emission] = []
    for e in generate(
        inventory,
        config,
        seed,
        start,
        end,
        real_wills=real_wills,
        heartbeat_s=heartbeat_s,
        on_repair=ledger.record_repair,
    ):
        ledger.record(e)
        if keep_emissions:
            kept.append(e)
    ledger.finish(ms(end))
    return SimRun(kept, ledger)
