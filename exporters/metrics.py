"""``atmfleet serve``: the fleet's Prometheus metrics (the contract is docs/metrics.md).

Three parts, one concern each:

- :class:`Snapshot` holds plain values (one row per exported device, sums per branch...);
  :func:`current_state` is the pure rule for a device's live state (docs/metrics.md,
  "Current state").
- :class:`DatabaseSource` reads a snapshot from the store: one query for every device's
  newest points (:data:`DEVICE_QUERY`, here rather than in ``rules/queries.sql`` because
  only the exporter needs it) plus the KPI feed (:mod:`rules.feed`) for today's uptime,
  transactions and the low-yield share. The uptime and the low-yield share are costlier
  and change slowly: they are recomputed less often than the device rows. The store's
  TimescaleDB jobs come from :func:`atmfleet.store.jobs.read_jobs`.
- :class:`FleetCollector` is a prometheus_client custom collector on a registry passed in:
  ``collect()`` yields fresh metric families from the current snapshot.
  :class:`Exporter` refreshes the snapshot in the background and renders the registry
  once per refresh, so a scrape of a 100,000-device fleet only sends bytes already made.

When the store cannot be read the snapshot is :meth:`Snapshot.database_down`: the three
target metrics and ``atmfleet_exporter_database_up 0``, nothing else (device alerts
resolve rather than fire on stale data).
"""

from __future__ import annotations

import gc
import json
import logging
import threading
import time
import zlib
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field, replace
from datetime import date, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
import psycopg
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from prometheus_client.samples import Sample
from prometheus_client.utils import floatToGoString

from atmfleet.child import ChildCancelled, Children
from atmfleet.errors import AtmfleetError, ConfigError
from atmfleet.inventory import (
    Device,
    DeviceType,
    Inventory,
)
from atmfleet.store.connect import connect
from atmfleet.store.jobs import Job, read_jobs
from atmfleet.store.runs import RUN_GAP
from atmfleet.store.unregistered import UnregisteredCount
from atmfleet.windows import ServiceWindow
from exporters import resource_metrics
from incidents.metrics import families as incident_families
from incidents.metrics import read as read_incidents
from notify.metrics import NotifyCollector
from rules.config import Rules
from rules.feed import Feed, uptime_day_columns
from rules.feed import _devices as feed_devices
from rules.feed import branches as feed_branches
from rules.feed import queries as feed_queries
from rules.feed import subbranches as feed_subbranches
from rules.fleet import fleet_devices
from rules.labels import Label
from rules.lowyield import YieldStatus
from rules.report import Context, Scope
from rules.timeline import from_ms, label_code, ms
from rules.uptime import FIGURES, day_span

if TYPE_CHECKING:
    from cash.metrics import CashMetrics

log = logging.getLogger(__name__)

#: Child processes computing the costlier parts at once (:meth:`DatabaseSource.refresh_slow`:
#: the low-yield share in one, today's times and resource-warning time in the other).
SLOW_PROCESSES = 2
#: States in which a device serves customers (``atmfleet_device_up`` 1).
UP_STATES = frozenset({"in_service", "degraded"})
#: States in which a device inside its service window is not scheduled to serve.
UNSCHEDULED_STATES = frozenset({"planned_maintenance", "unknown"})
#: Dispensing cash-unit types and the statuses that leave a unit out of the cash ratio.
DISPENSING = frozenset({"dispense", "recycle"})
UNUSABLE = frozenset({"inop", "missing"})


# --------------------------------------------------------------------------- pure core


@dataclass(frozen=True, slots=True)
class Newest:
    """A device's newest points, as stored (times in ms since the epoch)."""

    state_ts: int | None = None  # newest state message (by ts)
    state: str | None = None
    heartbeat_s: int | None = None
    run_start: int | None = None  # first message of the current run of that state
    presence_at: int | None = None  # newest presence, when it takes effect
    presence_offline: bool = False


def current_state(now: int, newest: Newest, timeout_factor: float) -> tuple[str, int | None]:
    """``(state, since)`` of a device at ``now`` (docs/metrics.md, "Current state")."""
    has_state = newest.state_ts is not None and newest.state is not None
    if (
        newest.presence_at is not None
        and newest.presence_offline
        and (not has_state or newest.presence_at >= (newest.state_ts or 0))
    ):
        return "offline", newest.presence_at
    if not has_state:
        return "unknown", None
    assert newest.state_ts is not None and newest.state is not None
    heartbeat = newest.heartbeat_s or 60
    if now - newest.state_ts > timeout_factor * heartbeat * 1000:
        return "offline", newest.state_ts
    since = newest.run_start if newest.run_start is not None else newest.state_ts
    return newest.state, min(since, newest.state_ts)


def cash_ratio(cash_units: Sequence[dict[str, Any]] | None) -> float | None:
    """Notes left over capacity in the dispensing units (None: no such unit)."""
    count = capacity = 0
    for unit in cash_units or ():
        cap = unit.get("capacity")
        if unit.get("type") not in DISPENSING or unit.get("status") in UNUSABLE or not cap:
            continue
        count += int(unit.get("count") or 0)
        capacity += int(cap)
    return count / capacity if capacity else None


@dataclass(frozen=True, slots=True)
class DeviceRow:
    """One exported device: inventory labels and live values (times in Unix seconds)."""

    device: str
    branch: str
    subbranch: str
    tier: str
    type: str
    vendor: str
    placement: str
    model: str
    state: str
    since: float | None
    last_seen: float | None
    cash_ratio: float | None
    in_window: bool


@dataclass(frozen=True, slots=True)
class DayTimes:
    """Today so far for one branch's devices, in seconds."""

    scheduled: float = 0.0
    available: float = 0.0
    tech_scheduled: float = 0.0
    tech_available: float = 0.0
    unknown: float = 0.0


@dataclass(frozen=True, slots=True)
class Targets:
    uptime: dict[str, float]  # by tier
    substitution: float
    on_site_substitution: float
    lowyield_max_share: float

    @classmethod
    def from_rules(cls, rules: Rules) -> Targets:
        return cls(
            {tier.value: value for tier, value in sorted(rules.uptime.targets.items())},
            rules.substitution.target,
            rules.substitution.on_site_target,
            rules.low_yield.max_share,
        )


BranchKey = tuple[str, str, str]  # branch, subbranch, tier


@dataclass(frozen=True)
class Snapshot:
    """Everything one exposition shows, as plain values."""

    targets: Targets
    database_up: bool
    read_seconds: float = 0.0
    devices: Sequence[DeviceRow] = ()
    subbranches: Sequence[tuple[str, str, str]] = ()  # id, tier, name
    branches: Sequence[tuple[str, str, str, str, str]] = ()  # id, subbranch, tier, kind, name
    day_start: float | None = None
    day: dict[BranchKey, DayTimes] = field(default_factory=dict)
    self_service: dict[tuple[str, str, str, str, bool], int] = field(default_factory=dict)
    teller: dict[tuple[str, str, str, bool], int] = field(default_factory=dict)
    lowyield_date: float | None = None
    lowyield: dict[tuple[str, str, str], tuple[int, int]] = field(default_factory=dict)
    #: The store's TimescaleDB jobs (``()`` on plain PostgreSQL; None: not read).
    jobs: Sequence[Job] | None = None
    unregistered: int = 0  # device ids not in the inventory that sent messages
    #: 资源预警率: today's seconds in a resource warning per branch (resource_metrics).
    resource_warning: dict[BranchKey, float] = field(default_factory=dict)
    #: Incidents (incidents/metrics.py; None: not read).
    incidents: Any = None
    #: Unix time the read ended (the staleness of everything above), and when each
    #: costlier part (day, low_yield, resource_warning) on show was computed.
    refreshed_at: float | None = None
    computed_at: dict[str, float] = field(default_factory=dict)

    @classmethod
    def database_down(cls, targets: Targets, read_seconds: float = 0.0) -> Snapshot:
        return cls(targets, False, read_seconds)


INFO_LABELS = ("device", "branch", "subbranch", "tier", "type", "vendor", "placement", "model")
UP_LABELS = INFO_LABELS[:-1]
#: ``atmfleet_device_state``'s: the routing labels and the state (it is also what says
#: whether a device serves: ``state`` in_service or degraded).
STATE_LABELS = (*UP_LABELS, "state")


def _flag(value: bool) -> str:
    return "true" if value else "false"


def families(snap: Snapshot) -> Iterator[Metric]:
    """The metric families of one snapshot, in the order of docs/metrics.md."""
    g = GaugeMetricFamily
    if snap.database_up:
        yield from _device_families(snap)
        yield from _fleet_families(snap)
    t = snap.targets
    up_target = g("atmfleet_uptime_target_ratio", "Uptime target by tier (rules file).",
                  labels=["tier"])  # fmt: skip
    for tier, value in t.uptime.items():
        up_target.add_metric([tier], value)
    yield up_target
    sub_target = g(
        "atmfleet_substitution_target_ratio",
        "Substitution rate targets (rules file).",
        labels=["placement"],
    )
    sub_target.add_metric(["all"], t.substitution)
    sub_target.add_metric(["on_site"], t.on_site_substitution)
    yield sub_target
    yield g(
        "atmfleet_lowyield_target_ratio",
        "Ceiling of the low-yield share (rules file).",
        value=t.lowyield_max_share,
    )
    yield g(
        "atmfleet_exporter_database_up",
        "1 if the last refresh read the database.",
        value=1 if snap.database_up else 0,
    )
    if not snap.database_up:
        return  # docs/metrics.md: the targets and database_up only
    yield g(
        "atmfleet_exporter_scrape_duration_seconds",
        "Time the last refresh took to read the database.",
        value=snap.read_seconds,
    )
    if snap.refreshed_at is not None:
        yield g(
            "atmfleet_exporter_refresh_timestamp_seconds",
            "When the last refresh read the device rows (time() minus this: their age).",
            value=snap.refreshed_at,
        )
    computed = g(
        "atmfleet_exporter_part_timestamp_seconds",
        "When each costlier part on show (day, low_yield, resource_warning) was computed.",
        labels=["part"],
    )
    for part, at in sorted(snap.computed_at.items()):
        computed.add_metric([part], at)
    yield computed
    if snap.jobs is not None:
        yield from _job_families(snap.jobs)
    # --- incidents (incidents/metrics.py) ---
    if snap.incidents is not None:
        yield from incident_families(snap.incidents)


JOB_LABELS = ("job_id", "proc", "relation")


def _job_families(jobs: Sequence[Job]) -> Iterator[Metric]:
    """The store's maintenance jobs (docs/metrics.md, "the store's jobs"). ``job_id``, not
    ``job``: Prometheus sets ``job`` to the scrape job."""
    g = GaugeMetricFamily
    yield g("atmfleet_store_jobs", "TimescaleDB jobs of the database (0 on plain PostgreSQL).",
            value=len(jobs))  # fmt: skip
    info = g("atmfleet_store_job_info", "A TimescaleDB job (policy) of the database.",
             labels=[*JOB_LABELS, "scheduled"])  # fmt: skip
    every = g("atmfleet_store_job_schedule_interval_seconds", "The job's schedule interval.",
              labels=list(JOB_LABELS))  # fmt: skip
    nxt = g("atmfleet_store_job_next_start_timestamp_seconds",
            "When the TimescaleDB scheduler starts the job next.",
            labels=list(JOB_LABELS))  # fmt: skip
    runner = [*JOB_LABELS, "runner"]
    last = g("atmfleet_store_job_last_run_timestamp_seconds",
             "When the runner's latest run of the job started.", labels=runner)  # fmt: skip
    success = g("atmfleet_store_job_last_success_timestamp_seconds",
                "When the runner's latest successful run of the job ended.",
                labels=runner)  # fmt: skip
    failures = g("atmfleet_store_job_failures",
                 "Failed runs in a row of the job by the runner (0 after a success).",
                 labels=runner)  # fmt: skip
    for j in jobs:
        key = [str(j.job_id), j.proc, j.relation or ""]
        info.add_metric([*key, _flag(j.scheduled)], 1)
        every.add_metric(key, j.every.total_seconds())
        if j.next_start is not None:
            nxt.add_metric(key, j.next_start.timestamp())
        for name, run in (("scheduler", j.scheduler), ("atmfleet", j.atmfleet)):
            if run is None:
                continue
            last.add_metric([*key, name], run.at.timestamp())
            if run.last_success is not None:
                success.add_metric([*key, name], run.last_success.timestamp())
            failures.add_metric([*key, name], run.failures)
    yield from (info, every, nxt, last, success, failures)


#: The per-device families, in the order of docs/metrics.md: (name, help, label names).
DEVICE_FAMILIES: tuple[tuple[str, str, tuple[str, ...]], ...] = (
    ("atmfleet_device_info", "Static properties of a device (inventory).", INFO_LABELS),
    (
        "atmfleet_device_up",
        "1 while the device serves customers (in_service or degraded), else 0.",
        UP_LABELS,
    ),
    ("atmfleet_device_state",
     "The device's current state (one series per device), with its routing labels.",
     STATE_LABELS),
    (
        "atmfleet_device_in_service_window",
        "1 while now is inside the device's service window.",
        ("device",),
    ),
    ("atmfleet_device_last_seen_timestamp_seconds",
     "Receive time of the device's newest stored message.", ("device",)),
    ("atmfleet_device_state_since_timestamp_seconds",
     "When the device's current state began.", ("device",)),
    ("atmfleet_device_cash_ratio",
     "Notes left over capacity in the dispensing cash units.", ("device",)),
    (
        "atmfleet_device_scheduled_down",
        "1 for each scheduled device (in its window, not planned maintenance, not unknown) "
        "that does not serve; absent for the others.",
        UP_LABELS,
    ),
    (
        "atmfleet_device_scheduled_down_since_timestamp_seconds",
        "When the current state of each scheduled device that does not serve began; "
        "absent for the others.",
        STATE_LABELS,
    ),
)  # fmt: skip


def _scheduled(d: DeviceRow) -> bool:
    return d.in_window and d.state not in UNSCHEDULED_STATES


def _info(d: DeviceRow) -> tuple[tuple[str, ...], float]:
    return (d.device, d.branch, d.subbranch, d.tier, d.type, d.vendor, d.placement, d.model), 1


def _up(d: DeviceRow) -> tuple[tuple[str, ...], float]:
    labels = (d.device, d.branch, d.subbranch, d.tier, d.type, d.vendor, d.placement)
    return labels, 1 if d.state in UP_STATES else 0


def _state(d: DeviceRow) -> tuple[tuple[str, ...], float]:
    return (d.device, d.branch, d.subbranch, d.tier, d.type, d.vendor, d.placement, d.state), 1


def _in_window(d: DeviceRow) -> tuple[tuple[str, ...], float]:
    return (d.device,), 1 if d.in_window else 0


def _last_seen(d: DeviceRow) -> tuple[tuple[str, ...], float] | None:
    return None if d.last_seen is None else ((d.device,), d.last_seen)


def _since(d: DeviceRow) -> tuple[tuple[str, ...], float] | None:
    return None if d.since is None else ((d.device,), d.since)


def _cash(d: DeviceRow) -> tuple[tuple[str, ...], float] | None:
    return None if d.cash_ratio is None else ((d.device,), d.cash_ratio)


def _scheduled_down(d: DeviceRow) -> tuple[tuple[str, ...], float] | None:
    if not _scheduled(d) or d.state in UP_STATES:
        return None
    return (d.device, d.branch, d.subbranch, d.tier, d.type, d.vendor, d.placement), 1


def _scheduled_down_since(d: DeviceRow) -> tuple[tuple[str, ...], float] | None:
    if d.since is None or _scheduled_down(d) is None:
        return None
    return _state(d)[0], d.since


#: A device's series in each of :data:`DEVICE_FAMILIES`, in its order.
_SERIES: tuple[Callable[[DeviceRow], tuple[tuple[str, ...], float] | None], ...] = (
    _info, _up, _state, _in_window, _last_seen, _since, _cash, _scheduled_down,
    _scheduled_down_since,
)  # fmt: skip


def device_series(d: DeviceRow) -> tuple[tuple[tuple[str, ...], float] | None, ...]:
    """A device's series in each of :data:`DEVICE_FAMILIES`: (label values, value), or
    None where it has none."""
    return tuple(series(d) for series in _SERIES)


class DeviceFamily(Metric):
    """One of :data:`DEVICE_FAMILIES` over a snapshot's devices. :func:`render` writes it
    from :class:`DeviceLines` (a device's lines are kept while its row stays the same);
    ``samples`` (what a plain ``generate_latest`` or ``get_sample_value`` reads) are
    built on demand from :func:`device_series`."""

    def __init__(self, index: int, lines: DeviceLines) -> None:
        name, documentation, labelnames = DEVICE_FAMILIES[index]
        super().__init__(name, documentation, "gauge")
        self.index = index
        self.labelnames = labelnames
        self.lines = lines

    @property
    def samples(self) -> list[Sample]:
        names, i = self.labelnames, self.index
        out = []
        for d in self.lines.devices:
            series = device_series(d)[i]
            if series is not None:
                out.append(Sample(self.name, dict(zip(names, series[0], strict=True)), series[1]))
        return out

    @samples.setter
    def samples(self, value: list[Sample]) -> None:  # Metric.__init__ sets []
        pass

    def text(self, out: list[bytes]) -> None:
        """Append its header and lines to ``out``."""
        out.append(_header(self.name, self.documentation))
        out.append(self.lines.family(self.index))


class DeviceLines:
    """The lines of a snapshot's devices in each per-device family, each family worked
    out the first time it is asked for (a family left out is never written) and joined
    into one bytes object (no bytes object per line is kept; the lines are written and
    joined a block of :data:`LINES_BLOCK` devices at a time).

    Against the last rendering (:data:`_RENDERED`: its rows, and each family's bytes
    with the offset of every device's line): when the devices are the same ones in the
    same order, only the lines of the devices whose :class:`DeviceRow` changed are
    written again (a line is a pure function of the row; a row equal to the last one
    keeps its lines, unless a time or ratio of it is 0: 0.0 and -0.0 are equal but render
    apart) and spliced into the last bytes, and a family none of whose lines changed is
    the last bytes themselves. Otherwise (or for a family the last rendering did not
    write) every line is written afresh."""

    def __init__(self, devices: Sequence[DeviceRow]) -> None:
        self.devices = devices
        self._mine: _Rendered | None = None  # this rendering, as the next one sees it
        self._before: _Rendered | None = None
        self._changed: list[int] | None = None

    def family(self, index: int) -> bytes:
        global _RENDERED
        mine = self._mine
        if mine is None:
            self._before = before = _RENDERED
            self._changed = None if before is None else self._changed_from(before)
            mine = self._mine = _RENDERED = _Rendered(self.devices, {})
        got = mine.families.get(index)
        if got is None:
            template, order = _template(DEVICE_FAMILIES[index][0], DEVICE_FAMILIES[index][2])
            before = self._before
            last = None if before is None else before.families.get(index)
            if last is None or self._changed is None:
                got = self._fresh(index, template, order)
            else:
                got = self._spliced(index, last, self._changed, template, order)
            mine.families[index] = got
        return got[0]

    def _changed_from(self, before: _Rendered) -> list[int] | None:
        """Indices of the devices whose lines may differ from the last rendering's; None
        if it is not the same devices in the same order."""
        devices = self.devices
        if len(before.devices) != len(devices):
            return None
        changed = []
        for i, (d, last) in enumerate(zip(devices, before.devices, strict=True)):
            if d is last:
                continue
            if d.device != last.device:
                return None
            if d == last and 0 not in (d.since, d.cash_ratio, d.last_seen):
                continue
            changed.append(i)
        return changed

    def _fresh(self, index: int, template: str, order: list[int]) -> tuple[bytes, np.ndarray]:
        series_of = _SERIES[index]
        devices = self.devices
        chunks: list[bytes] = []
        lengths = np.zeros(len(devices), np.int64)
        for at in range(0, len(devices), LINES_BLOCK):
            lines = []
            for d in devices[at : at + LINES_BLOCK]:
                series = series_of(d)
                lines.append(b"" if series is None else _line(template, order, *series))
            lengths[at : at + len(lines)] = np.fromiter(map(len, lines), np.int64, len(lines))
            chunks.append(b"".join(lines))
        return b"".join(chunks), _offsets(lengths)

    def _spliced(
        self,
        index: int,
        last: tuple[bytes, np.ndarray],
        changed: list[int],
        template: str,
        order: list[int],
    ) -> tuple[bytes, np.ndarray]:
        devices = self.devices
        series_of = _SERIES[index]
        blob, offs = last
        new: list[tuple[int, bytes]] = []
        for i in changed:
            one = series_of(devices[i])
            line = b"" if one is None else _line(template, order, *one)
            if line != blob[offs[i] : offs[i + 1]]:
                new.append((i, line))
        if not new:
            return last
        view = memoryview(blob)
        pieces: list[bytes | memoryview] = []
        lengths = np.diff(offs)
        at = 0
        for i, line in new:
            pieces.append(view[at : offs[i]])
            pieces.append(line)
            at = offs[i + 1]
            lengths[i] = len(line)
        pieces.append(view[at:])
        out = b"".join(pieces)
        del pieces
        view.release()
        return out, _offsets(lengths)


#: Devices whose lines are written, then joined, at a time (:class:`DeviceLines`).
LINES_BLOCK = 10_000


def _offsets(lengths: np.ndarray) -> np.ndarray:
    """Where each line starts (and, last, where the last ends) given their lengths."""
    out = np.zeros(len(lengths) + 1, np.int64)
    np.cumsum(lengths, out=out[1:])
    return out


@dataclass(frozen=True, slots=True)
class _Rendered:
    """The per-device families of the last rendering (see :class:`DeviceLines`)."""

    devices: Sequence[DeviceRow]
    #: Per family written: its lines joined, and where each device's line starts, then
    #: the end.
    families: dict[int, tuple[bytes, np.ndarray]]


#: The last rendering of the per-device families.
_RENDERED: _Rendered | None = None


def _device_families(snap: Snapshot) -> Iterator[Metric]:
    lines = DeviceLines(snap.devices)
    yield from (DeviceFamily(i, lines) for i in range(len(DEVICE_FAMILIES)))
    scheduled: dict[tuple[str, str, str], int] = {}
    for d in snap.devices:
        if _scheduled(d):
            key = (d.branch, d.subbranch, d.tier)
            scheduled[key] = scheduled.get(key, 0) + 1
    per_branch = ColumnFamily(
        "atmfleet_branch_scheduled_devices",
        "Devices of the branch scheduled to serve now (in their window, not planned "
        "maintenance, not unknown); only branches with one.",
        ("branch", "subbranch", "tier"),
    )
    for key, n in sorted(scheduled.items()):
        per_branch.add(key, n)
    yield per_branch


def _fleet_families(snap: Snapshot) -> Iterator[Metric]:
    g = GaugeMetricFamily
    counts: dict[tuple[str, str, str, str], int] = {}
    for d in snap.devices:
        key = (d.subbranch, d.tier, d.type, d.state)
        counts[key] = counts.get(key, 0) + 1
    devices = g("atmfleet_devices", "Devices by current state.",
                labels=["subbranch", "tier", "type", "state"])  # fmt: skip
    for key, n in sorted(counts.items()):
        devices.add_metric(list(key), n)
    yield devices
    subs = g("atmfleet_subbranch_info", "A sub-branch (二级分行).",
             labels=["subbranch", "tier", "name"])  # fmt: skip
    for sid, tier, name in snap.subbranches:
        subs.add_metric([sid, tier, name], 1)
    yield subs
    # The per-branch families (tens of thousands of series in a national fleet) as
    # columns, like the per-device ones: rendered without a Sample per series.
    c = ColumnFamily
    branches = c(
        "atmfleet_branch_info",
        "A branch (网点) or off-site self-service bank.",
        ("branch", "subbranch", "tier", "kind", "name"),
    )
    for row in snap.branches:
        branches.add(tuple(row), 1)
    yield branches
    if snap.day_start is not None:
        scheduled = c("atmfleet_day_scheduled_seconds", "Scheduled time S of today (local) so far.",
                      ("branch", "subbranch", "tier", "view"))  # fmt: skip
        available = c("atmfleet_day_available_seconds", "Available time A of today (local) so far.",
                      ("branch", "subbranch", "tier", "view"))  # fmt: skip
        unknown = c(
            "atmfleet_day_unknown_seconds",
            "Time of today (local) so far inside collector outages.",
            ("branch", "subbranch", "tier"),
        )
        for bkey, times in sorted(snap.day.items()):
            scheduled.add((*bkey, "business"), times.scheduled)
            scheduled.add((*bkey, "technical"), times.tech_scheduled)
            available.add((*bkey, "business"), times.available)
            available.add((*bkey, "technical"), times.tech_available)
            unknown.add(bkey, times.unknown)
        yield from (scheduled, available, unknown)
        yield from resource_metrics.families(snap.resource_warning)
        yield g("atmfleet_day_start_timestamp_seconds", "Today's local midnight.",
                value=snap.day_start)  # fmt: skip
        own = c(
            "atmfleet_day_self_service_transactions",
            "Today's device transactions so far (counted results).",
            ("branch", "subbranch", "tier", "placement", "financial"),
        )
        for (b, s, t, p, fin), n in sorted(snap.self_service.items()):
            own.add((b, s, t, p, _flag(fin)), n)
        yield own
        teller = c(
            "atmfleet_day_teller_transactions",
            "Today's teller-counter volume, once imported.",
            ("branch", "subbranch", "tier", "financial"),
        )
        for (b, s, t, fin), n in sorted(snap.teller.items()):
            teller.add((b, s, t, _flag(fin)), n)
        yield teller
    yield g(
        "atmfleet_unregistered_devices",
        "Device ids not in the inventory that sent messages (stored, counted nowhere).",
        value=snap.unregistered,
    )
    if snap.lowyield_date is not None:
        low = g("atmfleet_lowyield_devices", "Low-yield devices on the last evaluated date.",
                labels=["subbranch", "tier", "type"])  # fmt: skip
        evaluated = g(
            "atmfleet_lowyield_evaluated_devices",
            "Devices evaluated on the last evaluated date.",
            labels=["subbranch", "tier", "type"],
        )
        for group, (n_low, n_eval) in sorted(snap.lowyield.items()):
            low.add_metric(list(group), n_low)
            evaluated.add_metric(list(group), n_eval)
        yield from (low, evaluated)
        yield g(
            "atmfleet_lowyield_date_timestamp_seconds",
            "Local midnight starting the evaluated date.",
            value=snap.lowyield_date,
        )


# --------------------------------------------------------------------------- rendering


class ColumnFamily(Metric):
    """A gauge family held as columns (label tuples, values) rather than one
    ``prometheus_client`` Sample per series: the per-device families hold 100,000 rows
    each, and :func:`render` writes them without building a Sample for each. Anything
    else reading ``samples`` (a plain ``generate_latest``) still gets them, built on
    demand."""

    def __init__(self, name: str, documentation: str, labelnames: Sequence[str]) -> None:
        super().__init__(name, documentation, "gauge")
        self.labelnames = tuple(labelnames)
        self.rows: list[tuple[str, ...]] = []
        self.values: list[float] = []

    def add(self, labels: tuple[str, ...], value: float) -> None:
        self.rows.append(labels)
        self.values.append(value)

    @property
    def samples(self) -> list[Sample]:
        names = self.labelnames
        return [
            Sample(self.name, dict(zip(names, row, strict=True)), value)
            for row, value in zip(self.rows, self.values, strict=True)
        ]

    @samples.setter
    def samples(self, value: list[Sample]) -> None:  # Metric.__init__ sets []
        pass


_VALUES = {0: "0.0", 1: "1.0"}


def _escape(value: str) -> str:
    if "\\" in value or "\n" in value or '"' in value:
        return value.replace("\\", r"\\").replace("\n", r"\n").replace('"', r"\"")
    return value


def _header(name: str, documentation: str) -> bytes:
    doc = documentation.replace("\\", r"\\").replace("\n", r"\n")
    return f"# HELP {name} {doc}\n# TYPE {name} gauge\n".encode()


def _template(name: str, names: Sequence[str]) -> tuple[str, list[int]]:
    """A line's %-template for label values in the order of ``order`` (sorted by name,
    as ``generate_latest`` writes them) and then the value, and that order."""
    order = sorted(range(len(names)), key=names.__getitem__)
    return name + "{" + ",".join(f'{names[j]}="%s"' for j in order) + "} %s\n", order


def _line(template: str, order: list[int], row: tuple[str, ...], value: float) -> bytes:
    labels = [row[j] for j in order]
    joined = "".join(labels)
    if "\\" in joined or "\n" in joined or '"' in joined:
        labels = [_escape(v) for v in labels]
    text = _VALUES.get(value) if type(value) is int else None
    labels.append(text or floatToGoString(value))  # type: ignore[no-untyped-call]
    return (template % tuple(labels)).encode()


def _column_text(family: ColumnFamily, out: list[bytes]) -> None:
    """``family`` as ``generate_latest`` writes it (labels sorted by name)."""
    name = family.name
    out.append(_header(name, family.documentation))
    names = family.labelnames
    template, order = _template(name, names)
    # A line is a pure function of (family, row, value): the lines of the last rendering
    # are reused (most series keep their value from one refresh to the next). 0 is not
    # cached (0 and -0.0 are equal keys but render apart), nor are NaN (never equal).
    before = _LINES.get((name, names), {})
    lines: dict[tuple[tuple[str, ...], float], bytes] = {}
    for row, value in zip(family.rows, family.values, strict=True):
        key = (row, value)
        line = before.get(key) if value else None
        if line is None:
            line = _line(template, order, row, value)
        if value:
            lines[key] = line
        out.append(line)
    _LINES[(name, names)] = lines


#: The lines of each column family's last rendering (see :func:`_column_text`).
_LINES: dict[tuple[str, tuple[str, ...]], dict[tuple[tuple[str, ...], float], bytes]] = {}


class _Just(Collector):
    def __init__(self, metrics: list[Metric]) -> None:
        self._metrics = metrics

    def collect(self) -> Iterator[Metric]:
        return iter(self._metrics)


#: What ``atmfleet serve --lean`` leaves out: the families no shipped rule, alert or
#: dashboard reads (docs/metrics.md, "What a scrape carries"): five series per device
#: and two per branch. ``atmfleet serve`` leaves them out unless run with ``--full``.
#: ``atmfleet_device_up`` is ``atmfleet_device_state{state=~"in_service|degraded"}``
#: (the state carries the routing labels), and the state's since-time is shown for the
#: scheduled devices that are down (``atmfleet_device_scheduled_down_since_*``).
LEAN_FLEET_LEAVES_OUT = frozenset(
    {
        "atmfleet_device_info",
        "atmfleet_device_up",
        "atmfleet_device_state_since_timestamp_seconds",
        "atmfleet_device_last_seen_timestamp_seconds",
        "atmfleet_device_in_service_window",
        "atmfleet_branch_info",
        "atmfleet_day_unknown_seconds",
    }
)
#: The series of a family that lean leaves out, as ``family{label="value"}``: the
#: non-financial volumes (the substitution rules read ``financial="true"`` only).
LEAN_SERIES_LEAVES_OUT = frozenset(
    {
        'atmfleet_day_self_service_transactions{financial="false"}',
        'atmfleet_day_teller_transactions{financial="false"}',
    }
)
#: The cash-out forecast's per-device times (cash/metrics.py): the alert reads only the
#: service hours; ``atmfleet cash forecast`` and the web console show the times.
LEAN_CASH_LEAVES_OUT = frozenset(
    {
        "atmfleet_device_cash_out_forecast_timestamp_seconds",
        "atmfleet_device_cash_out_forecast_earliest_timestamp_seconds",
        "atmfleet_device_cash_out_forecast_latest_timestamp_seconds",
        "atmfleet_device_deposit_full_forecast_timestamp_seconds",
    }
)
LEAN_LEAVES_OUT = LEAN_FLEET_LEAVES_OUT | LEAN_SERIES_LEAVES_OUT | LEAN_CASH_LEAVES_OUT


def _left_out_series(leave_out: frozenset[str]) -> dict[str, tuple[str, str]]:
    """The ``family{label="value"}`` entries of ``leave_out``: family -> (label, value)."""
    out = {}
    for entry in leave_out:
        name, brace, selector = entry.partition("{")
        if brace:
            label, _, value = selector.removesuffix("}").partition("=")
            out[name] = (label, value.strip('"'))
    return out


def _without(family: ColumnFamily, label: str, value: str) -> ColumnFamily:
    """``family`` without its series whose ``label`` is ``value``."""
    j = family.labelnames.index(label)
    kept = ColumnFamily(family.name, family.documentation, family.labelnames)
    for row, v in zip(family.rows, family.values, strict=True):
        if row[j] != value:
            kept.add(row, v)
    return kept


def render(registry: Collector, leave_out: frozenset[str] = frozenset()) -> bytes:
    """The text exposition of ``registry``, byte for byte what ``generate_latest`` writes,
    with :class:`ColumnFamily` families written straight from their columns and the
    families named in ``leave_out`` left out."""
    return b"".join(render_parts(registry, leave_out))


def render_parts(registry: Collector, leave_out: frozenset[str] = frozenset()) -> list[bytes]:
    """:func:`render`'s exposition as the parts it is made of, in order (a per-device
    family is one part, kept from one rendering to the next while it does not change):
    what a scrape writes one after the other, with no copy of the whole joined."""
    out: list[bytes] = []
    plain: list[Metric] = []

    def flush() -> None:
        if plain:
            out.append(generate_latest(_Just(list(plain))))
            plain.clear()

    series = _left_out_series(leave_out)
    for metric in registry.collect():
        if metric.name in leave_out:
            continue
        if metric.name in series and isinstance(metric, ColumnFamily):
            metric = _without(metric, *series[metric.name])
        if isinstance(metric, DeviceFamily):
            flush()
            metric.text(out)
        elif isinstance(metric, ColumnFamily):
            flush()
            _column_text(metric, out)
        else:
            plain.append(metric)
    flush()
    return out


def _gzip(parts: Sequence[bytes]) -> bytes:
    """``parts`` joined and gzipped (level 1), without joining them first."""
    z = zlib.compressobj(1, zlib.DEFLATED, 31)
    out = [z.compress(part) for part in parts]
    out.append(z.flush())
    return b"".join(out)


#: A part at least this long (a per-device family) is gzipped as a member of its own.
GZIP_OWN_MEMBER = 1 << 20


def _gzip_members(
    parts: Sequence[bytes], last: dict[int, tuple[bytes, bytes]]
) -> tuple[list[bytes], dict[int, tuple[bytes, bytes]]]:
    """``parts`` gzipped as consecutive gzip members (RFC 1952 §2.2: one gzip file;
    what a client decompresses is ``parts`` joined): each long part a member of its own,
    taken from ``last`` (by identity) when it is the same bytes object as at the last
    rendering (a per-device family in which no line changed), and the parts between them
    one member each. Returns the members and what to pass as ``last`` next time."""
    members: list[bytes] = []
    kept: dict[int, tuple[bytes, bytes]] = {}
    run: list[bytes] = []
    for part in parts:
        if len(part) < GZIP_OWN_MEMBER:
            run.append(part)
            continue
        if run:
            members.append(_gzip(run))
            run = []
        cached = last.get(id(part))
        member = cached[1] if cached is not None and cached[0] is part else _gzip([part])
        kept[id(part)] = (part, member)
        members.append(member)
    if run or not members:
        members.append(_gzip(run))
    return members, kept


class FleetCollector(Collector):
    """A custom collector: fresh families from whatever snapshot ``current`` returns."""

    def __init__(self, current: Callable[[], Snapshot]) -> None:
        self._current = current

    def collect(self) -> Iterator[Metric]:
        return families(self._current())


# --------------------------------------------------------------------------- the store

#: Every exported device (in the fleet on ``today``) with its newest points. ``since``
#: walks back over the device's state runs while the state is the same, the gap between
#: two runs is within the heartbeat timeout and no offline presence lies between them.
DEVICE_QUERY = """
WITH RECURSIVE fleet AS (
    SELECT id FROM devices
    WHERE commissioned <= %(today)s AND (decommissioned IS NULL OR decommissioned > %(today)s)
    {changed}
), chain AS (
    SELECT f.id AS device_id, r.start_ts, r.start_seq, r.state, 0 AS depth
    FROM fleet f
    CROSS JOIN LATERAL (
        SELECT start_ts, start_seq, state FROM state_runs
        WHERE device_id = f.id ORDER BY start_ts DESC, start_seq DESC LIMIT 1
    ) r
    UNION ALL
    SELECT c.device_id, p.start_ts, p.start_seq, c.state, c.depth + 1
    FROM chain c
    CROSS JOIN LATERAL (
        SELECT start_ts, start_seq, last_ts, state, heartbeat_s FROM state_runs
        WHERE device_id = c.device_id AND (start_ts, start_seq) < (c.start_ts, c.start_seq)
        ORDER BY start_ts DESC, start_seq DESC LIMIT 1
    ) p
    WHERE p.state = c.state AND c.depth < 10000
      AND c.start_ts - p.last_ts <= p.heartbeat_s * %(factor)s * INTERVAL '1 second'
      AND NOT EXISTS (
          SELECT 1 FROM presence x
          WHERE x.device_id = c.device_id AND x.status = 'offline'
            AND presence_at(x.will, x.ts, x.received_at) > p.last_ts
            AND presence_at(x.will, x.ts, x.received_at) <= c.start_ts)
), since AS (
    SELECT device_id, min(start_ts) AS since,
           min(start_ts) FILTER (WHERE depth = 0) AS run_ts,
           min(start_seq) FILTER (WHERE depth = 0) AS run_seq
    FROM chain GROUP BY device_id
)
SELECT f.id, s.ts, s.state, s.heartbeat_s, s.cash_units::text, p.at, p.status,
       {seen}, r.since, s.seq, r.run_ts, r.run_seq
FROM fleet f
LEFT JOIN LATERAL (
    SELECT ts, seq, state, heartbeat_s, cash_units, received_at FROM state_samples
    WHERE device_id = f.id ORDER BY ts DESC, seq DESC LIMIT 1
) s ON true
LEFT JOIN LATERAL (
    SELECT presence_at(will, ts, received_at) AS at, status, received_at FROM presence
    WHERE device_id = f.id ORDER BY presence_at(will, ts, received_at) DESC LIMIT 1
) p ON true
{seen_joins}
LEFT JOIN since r ON r.device_id = f.id
ORDER BY f.id
"""

#: The newest receive time of any kind (``atmfleet_device_last_seen_timestamp_seconds``):
#: two more index lookups per device, left out of the query when that family is.
_SEEN = "greatest(s.received_at, p.received_at, e.received_at, t.received_at)"
_SEEN_JOINS = """LEFT JOIN LATERAL (
    SELECT received_at FROM events WHERE device_id = f.id ORDER BY ts DESC LIMIT 1
) e ON true
LEFT JOIN LATERAL (
    SELECT received_at FROM transactions WHERE device_id = f.id ORDER BY ts DESC LIMIT 1
) t ON true"""


#: The devices with a message received at or after ``%(after)s`` (the tables whose newest
#: rows :data:`DEVICE_QUERY` reads; BRIN indexes on received_at, migration 0021).
_CHANGED = (
    "AND id IN (SELECT device_id FROM state_samples WHERE received_at >= %(after)s"
    " UNION ALL SELECT device_id FROM presence WHERE received_at >= %(after)s{more})"
)
_CHANGED_SEEN = (
    " UNION ALL SELECT device_id FROM events WHERE received_at >= %(after)s"
    " UNION ALL SELECT device_id FROM transactions WHERE received_at >= %(after)s"
)


def device_query(last_seen: bool = True, changed: bool = False, ids: bool = False) -> str:
    """:data:`DEVICE_QUERY`, with each device's newest receive time or (without
    ``last_seen``) NULL in its place; with ``changed``, only for the devices with a
    message received at or after the parameter ``after`` (what that newest time reads
    included); with ``ids``, only for the devices of the parameter ``ids``."""
    only = _CHANGED.replace("{more}", _CHANGED_SEEN if last_seen else "") if changed else ""
    if ids:
        only += " AND id = ANY(%(ids)s)"
    query = DEVICE_QUERY.replace("{changed}", only)
    if last_seen:
        return query.replace("{seen}", _SEEN).replace("{seen_joins}", _SEEN_JOINS)
    return query.replace("{seen}", "NULL::timestamptz").replace("{seen_joins}", "")


#: The first step of a lean incremental read (:meth:`DatabaseSource._heard_rows`): for
#: each device with a state sample received at or after ``%(after)s``, the newest of
#: those samples, the earliest ``ts`` among them and the key of the device's latest state
#: run (times in ms since the epoch, as :func:`rules.timeline.ms` floors them), and
#: whether a presence message of its was received since then (the devices heard from by
#: presence alone too, with NULLs). One scan of what was received (BRIN on received_at)
#: and one index lookup per device, instead of :data:`DEVICE_QUERY`'s walk over each
#: device's runs and newest rows; one statement, so one snapshot.
HEARD_QUERY = """
WITH heard AS (
    SELECT DISTINCT ON (device_id) device_id, ts, seq, state, heartbeat_s, cash_units,
           min(ts) OVER (PARTITION BY device_id) AS earliest
    FROM state_samples WHERE received_at >= %(after)s
    ORDER BY device_id, ts DESC, seq DESC
), presence_heard AS (
    SELECT DISTINCT device_id FROM presence WHERE received_at >= %(after)s
)
SELECT coalesce(h.device_id, x.device_id), floor(extract(epoch FROM h.ts) * 1000)::int8,
       h.seq, h.state, h.heartbeat_s, h.cash_units::text,
       floor(extract(epoch FROM h.earliest) * 1000)::int8,
       floor(extract(epoch FROM r.start_ts) * 1000)::int8, r.start_seq, x.device_id IS NOT NULL
FROM heard h
FULL JOIN presence_heard x ON x.device_id = h.device_id
LEFT JOIN LATERAL (
    SELECT start_ts, start_seq FROM state_runs WHERE device_id = h.device_id
    ORDER BY start_ts DESC, start_seq DESC LIMIT 1
) r ON true
"""


#: Today's counted transactions of the devices in the fleet today, summed in the store
#: by branch and placement (what summing ``rules.feed.Feed.txn_days`` per device gives,
#: without a row per device through Python).
TXN_QUERY = """
SELECT d.branch, d.placement,
       coalesce(sum(t.txns) FILTER (WHERE t.type = ANY(%(financial)s)
                                      AND t.result = ANY(%(counted)s)), 0)::int8,
       coalesce(sum(t.txns) FILTER (WHERE t.type <> ALL(%(financial)s)
                                      AND t.result = ANY(%(counted)s)), 0)::int8
FROM txn_daily t
JOIN devices d ON d.id = t.device_id
WHERE t.bucket >= %(lo)s AND t.bucket < %(hi)s
  AND d.commissioned <= %(today)s AND (d.decommissioned IS NULL OR d.decommissioned > %(today)s)
GROUP BY d.branch, d.placement
"""


#: Changes whenever anything :meth:`rules.feed.Feed.inventory` reads changes: the
#: inventory (100,000 devices take seconds to build) is built again only then.
INVENTORY_SIGNATURE = """
SELECT (SELECT md5(coalesce(string_agg(concat_ws('|', id, name, tier), ',' ORDER BY id), ''))
        FROM subbranches),
       (SELECT md5(coalesce(string_agg(concat_ws('|', id, name, subbranch, kind, parent),
                                       ',' ORDER BY id), ''))
        FROM branches),
       (SELECT md5(coalesce(string_agg(concat_ws('|', id, branch, type, placement, vendor, model,
                                                 commissioned, decommissioned, service_window,
                                                 deposit_capable, heartbeat_s),
                                       ',' ORDER BY id), ''))
        FROM devices)
"""


class _Compactor:
    """Holds what a fleet's device models repeat once (see :func:`_compact`)."""

    def __init__(self) -> None:
        self._values: dict[tuple[type, object], object] = {}

    def devices(self, devices: Iterable[Device]) -> Iterable[Device]:
        values = self._values
        for d in devices:
            attrs = d.__dict__
            for name in _REPEATED:
                value = attrs[name]
                if value is not None:
                    attrs[name] = values.setdefault((type(value), value), value)
        return devices


def _compact(inventory: Inventory) -> Inventory:
    """``inventory`` with what its devices repeat held once (kept for as long as the
    inventory does not change): one object for each distinct value of its text and date
    fields (the fields-set is one already: rules.feed's _devices shares it). The models
    are the same (equal, with the same fields set)."""
    _Compactor().devices(inventory.devices)
    return inventory


#: The device fields whose values repeat across a fleet (see :func:`_compact`).
_REPEATED = ("branch", "vendor", "model", "commissioned", "decommissioned", "service_window")
#: Device rows read at a time (:meth:`DatabaseSource._device_rows`).
DEVICE_BLOCK = 5000
#: Inventory devices read and built at a time (:func:`read_inventory`).
INVENTORY_BLOCK = 5000


def read_inventory(conn: psycopg.Connection) -> Inventory:
    """:meth:`rules.feed.Feed.inventory`, :func:`_compact`-ed (equal models, the same
    fields set), with the devices read through a server-side cursor and built and
    compacted a block at a time: the rows of the whole fleet and a fields-set per device
    are never held at once (at 100,000 devices the build's peak was about 100 MiB over
    what is kept). Runs in the connection's transaction."""
    sql = feed_queries()
    with conn.cursor(binary=True) as cur:
        subs = feed_subbranches(cur.execute(sql["inventory_subbranches"]).fetchall())
        branches = feed_branches(cur.execute(sql["inventory_branches"]).fetchall())
    devices: list[Device] = []
    compactor = _Compactor()
    enabled = gc.isenabled()
    gc.disable()  # as the feed builds them: no collection pass per few hundred models
    try:
        with conn.cursor(name="atmfleet_serve_inventory", binary=True) as cur:
            cur.execute(sql["inventory_devices"])
            while block := cur.fetchmany(INVENTORY_BLOCK):
                devices.extend(compactor.devices(feed_devices(block)))
    finally:
        if enabled:
            gc.enable()
    return Inventory.model_construct(subbranches=subs, branches=branches, devices=tuple(devices))


def _s(at: datetime | None) -> float | None:
    return None if at is None else ms(at) / 1000


class Source(Protocol):
    """Where snapshots come from."""

    def read(self) -> Snapshot: ...


#: A device's newest points, cash ratio and last-seen time, and the keys an incremental
#: read compares (:meth:`DatabaseSource._heard_rows`): its newest sample's ``seq`` and its
#: latest run's ``(start ms, start seq)``; None when it has no run.
_Newest = tuple[Newest, float | None, float | None, tuple[int, int, int] | None]


@dataclass(slots=True)
class _Known:
    """The device rows of the last read, the base of the next incremental one."""

    signature: tuple[Any, ...]  # the inventory's (INVENTORY_SIGNATURE)
    today: date
    read_at: int  # the database's now (ms) just before the rows were read
    full_at: float  # the source's clock at the last full read
    #: Per exported device, in the query's order (``ORDER BY f.id``, the database's
    #: collation): its inventory labels (DeviceRow's first eight fields), its window spec.
    labels: list[tuple[str, str, str, str, str, str, str, str]]
    specs: list[str]
    #: Per device id: its newest points, cash ratio and last-seen time.
    newest: dict[str, _Newest]
    rows: list[DeviceRow]  # as read (aligned with ``labels``)


class DatabaseSource:
    """Reads snapshots from the store through one connection (reopened after a failure).

    Device rows are read at every :meth:`read`; today's uptime at most every
    ``day_every_s``; today's resource-warning time at most every ``resource_every_s``; the
    low-yield share when the evaluated date changes or at most every
    ``lowyield_every_s``.

    With ``background`` (what ``atmfleet serve`` runs) :meth:`read` never computes those
    three costlier parts: it shows the last ones :meth:`refresh_slow` computed (on a
    connection of its own, in another thread), so that a refresh of the device rows
    stays short; a part not computed yet is left out, and
    ``atmfleet_exporter_part_timestamp_seconds`` says how old each shown part is.
    """

    def __init__(
        self,
        url: str,
        rules: Rules,
        *,
        day_every_s: float = 120.0,
        lowyield_every_s: float = 3600.0,
        resource_every_s: float = 900.0,
        clock: Callable[[], float] = time.monotonic,
        background: bool = False,
        last_seen: bool = True,
        isolate_slow: bool = False,
        incremental: bool = True,
        full_every_s: float = 300.0,
        late_s: float = 60.0,
        now_ms: Callable[[], int] | None = None,
        children: Children | None = None,
    ) -> None:
        if rules.heartbeat.timeout_factor < RUN_GAP:  # the feed's own condition, at start-up
            raise ConfigError(
                f"heartbeat.timeout_factor: {rules.heartbeat.timeout_factor} is below "
                f"{RUN_GAP}, the gap at which the store breaks state runs; allowed: >= {RUN_GAP}"
            )
        self._url = url
        self.rules = rules
        self.targets = Targets.from_rules(rules)
        self._day_every = day_every_s
        self._lowyield_every = lowyield_every_s
        self._clock = clock
        self._conn: psycopg.Connection | None = None
        self._background = background
        self._device_query = device_query(last_seen)
        self._changed_query = device_query(last_seen, changed=True)
        self._ids_query = device_query(last_seen, ids=True)
        #: Lean (no last-seen time): an incremental read takes the devices only heard
        #: from by state samples that continue their latest run from HEARD_QUERY.
        self._heard = not last_seen
        self._incremental = incremental
        self._full_every = full_every_s
        self._late_ms = round(late_s * 1000)
        #: atmfleet_unregistered_devices, counted in full with the full reads of the
        #: device rows and from the messages received since the last read in between.
        self._unregistered = UnregisteredCount(self._late_ms)
        self._now_ms = now_ms
        self._known: _Known | None = None
        self._full_next = False  # forget_rows: the next read is a full one
        #: The local date of the last successful read (what :meth:`with_parts` shows for).
        self._read_today: date | None = None
        #: What the last read of the device rows was: "full" or "incremental", and how
        #: many devices the query returned.
        self.last_rows: tuple[str, int] = ("", 0)
        #: Of those, how many a lean incremental read settled without DEVICE_QUERY.
        self.last_settled = 0
        #: The ids that read heard from and that are not in the inventory (None: not a
        #: lean incremental read), for the unregistered count.
        self._heard_unlisted: list[str] | None = None
        self._isolate_slow = isolate_slow
        #: The child processes of the costlier parts (``isolate_slow``): closing it stops
        #: those running (their parts are not shown) and starts no more.
        self.children = children if children is not None else Children()
        self._slow_conn: psycopg.Connection | None = None
        self._computed_at: dict[str, float] = {}
        #: Seconds each part of the last successful read took (inventory and device rows,
        #: today's uptime, transactions, low-yield share; cached parts take ~0).
        self.timings: dict[str, float] = {}
        self._day: tuple[float, date, dict[BranchKey, DayTimes]] | None = None
        #: 资源预警率: (computed at, day, seconds per branch); its own cadence, since it
        #: scans the day's state messages (docs/metrics.md).
        self._resource: tuple[float, date, dict[BranchKey, float]] | None = None
        self._resource_every = resource_every_s
        self._lowyield: tuple[float, date, dict[tuple[str, str, str], tuple[int, int]]] | None = (
            None
        )
        #: (signature, inventory) of the last inventory built (:data:`INVENTORY_SIGNATURE`).
        self._inventory_cache: tuple[tuple[Any, ...], Inventory] | None = None
        self._inventory_lock = threading.Lock()
        self._cash_ratios: dict[str, float | None] = {}
        #: (inventory, day, the zeros of _transactions, branch keys): what the fleet of that
        #: inventory on that day shows before today's counts are added.
        self._txn_keys: (
            tuple[Inventory, date, dict[tuple[str, str, str, str, bool], int], dict[str, BranchKey]]
            | None
        ) = None

    def _cash_ratio(self, text: str | None, seen: dict[str, float | None]) -> float | None:
        """:func:`cash_ratio` of a stored ``cash_units`` (as text), decoded once per
        distinct value: a device reports the same units until its next transaction. The
        values decoded are kept in ``seen`` (a full read keeps only the values it saw:
        the cache holds at most about one value per device, not every value ever read)."""
        if text is None:
            return None
        if text in seen:
            return seen[text]
        cache = self._cash_ratios
        ratio = cache[text] if text in cache else cash_ratio(json.loads(text))
        if len(seen) > 400_000:
            seen.clear()
        seen[text] = ratio
        return ratio

    def _inventory(self, conn: psycopg.Connection, feed: Feed) -> Inventory:
        """The store's inventory, built again only when its signature changed."""
        return self._inventory_signed(conn, feed)[1]

    def _inventory_signed(
        self, conn: psycopg.Connection, feed: Feed
    ) -> tuple[tuple[Any, ...], Inventory]:
        """(signature, inventory) of the store (see :meth:`_inventory`)."""
        signature = tuple(conn.execute(INVENTORY_SIGNATURE).fetchone() or ())
        with self._inventory_lock:
            cached = self._inventory_cache
            if cached is not None and cached[0] == signature:
                return cached
        inventory = read_inventory(conn)
        with self._inventory_lock:
            self._inventory_cache = (signature, inventory)
        return signature, inventory

    def with_parts(self, snap: Snapshot) -> Snapshot:
        """``snap`` (a read of this source's) with the costlier parts on show now, as the
        next :meth:`read` would show them: its device rows stay those it was read with."""
        today = self._read_today
        if not snap.database_up or not self._background or today is None:
            return snap
        day, warning, low_date, lowyield = self._parts_on_show(today)
        tz = self.rules.tz
        return replace(
            snap,
            day=day,
            resource_warning=warning,
            lowyield_date=None if low_date is None else day_span(low_date, tz)[0] / 1000,
            lowyield=lowyield,
            computed_at=dict(self._computed_at),
        )

    def _parts_on_show(
        self, today: date
    ) -> tuple[
        dict[BranchKey, DayTimes],
        dict[BranchKey, float],
        date | None,
        dict[tuple[str, str, str], tuple[int, int]],
    ]:
        """The costlier parts last computed (:meth:`refresh_slow`) that are for ``today``
        (the low-yield share: for the day before), or none."""
        day = self._day[2] if self._day is not None and self._day[1] == today else {}
        res = self._resource
        warning = res[2] if res is not None and res[1] == today else {}
        low, on = self._lowyield, today - timedelta(days=1)
        low_date, lowyield = (on, low[2]) if low is not None and low[1] == on else (None, {})
        return day, warning, low_date, lowyield

    def forget_rows(self) -> None:
        """Make the next read a full one (see :meth:`_device_rows`)."""
        self._full_next = True

    def close(self) -> None:
        self._known = None  # the next read is a full one
        self._unregistered.forget()
        for conn in (self._conn, self._slow_conn):
            if conn is not None:
                conn.close()
        self._conn = self._slow_conn = None

    def _connect(self) -> psycopg.Connection:
        conn = connect(self._url, application_name="atmfleet-serve")
        # JIT compiling the device query costs more than running it (0.65 s of
        # 0.7 s at 2,000 devices): these are index lookups, not big scans.
        conn.execute("SET jit = off")
        conn.execute("SET statement_timeout = '5min'")
        conn.commit()
        return conn

    def _due(self, today: date) -> list[str]:
        """The costlier parts whose time has come (the checks of their methods)."""
        clock = self._clock()
        due = []
        if self._day is None or self._day[1] != today or clock - self._day[0] >= self._day_every:
            due.append("day")
        low, on = self._lowyield, today - timedelta(days=1)
        if low is None or low[1] != on or clock - low[0] >= self._lowyield_every:
            due.append("low_yield")
        res = self._resource
        if res is None or res[1] != today or clock - res[0] >= self._resource_every:
            due.append("resource_warning")
        return due

    def _refresh_slow_isolated(self, on_part: Callable[[], None]) -> bool:
        """:meth:`refresh_slow` with the parts computed in fresh child processes, which
        exit when done (the KPI core's memory at 100,000 devices is hundreds of MiB while
        it runs, and a long-running exporter would keep it): yesterday's low-yield day in
        one, today's times and resource-warning time (seconds each, from the day's
        columns and the devices that warned) together in another, both at once; each
        child's parts are shown (``on_part``) as soon as it is back."""
        now_dt = datetime.now(self.rules.tz)
        due = self._due(now_dt.date())
        if not due:
            return False
        done = False
        groups = [g for g in ([n for n in due if n != "low_yield"],
                              [n for n in due if n == "low_yield"]) if g]  # fmt: skip
        # A thread per child running at the same time, each waiting on its child.
        with ThreadPoolExecutor(min(SLOW_PROCESSES, len(groups))) as pool:
            futures = [
                pool.submit(self.children.run, compute_parts, self._url, self.rules, names)
                for names in groups
            ]
            for future in as_completed(futures):
                try:
                    results = future.result()
                except ChildCancelled:  # stopping (stop): nothing more to show
                    continue
                except Exception as exc:  # the child died or could not read: that part stays
                    log.warning("cannot compute the day figures: %s", exc)
                    continue
                clock = self._clock()
                for name, (on, out) in results.items():
                    if name == "day":
                        self._day = (clock, on, out)
                    elif name == "low_yield":
                        self._lowyield = (clock, on, out)
                    else:
                        self._resource = (clock, on, out)
                    self._computed_at[name] = time.time()
                if results:
                    done = True
                    on_part()
        return done

    def refresh_slow(self, on_part: Callable[[], None] = lambda: None) -> bool:
        """Compute the costlier parts whose time has come (today's uptime first, then the
        low-yield share, then the resource-warning time), calling ``on_part`` after each
        one computed (with ``isolate_slow``: after each child process, in the order they
        end); True if any was. Errors are logged (the parts on show stay)."""
        if self._isolate_slow:
            return self._refresh_slow_isolated(on_part)
        any_done = False
        try:
            if self._slow_conn is None or self._slow_conn.closed:
                self._slow_conn = self._connect()
            conn = self._slow_conn
            try:
                feed = Feed(conn, self.rules)
                now = feed.now_ms()
                today = from_ms(now).astimezone(self.rules.tz).date()
                inventory = self._inventory(conn, feed)
                devices = fleet_devices(inventory.devices, today)
                parts: list[tuple[str, Callable[[], object], Callable[[], object]]] = [
                    ("day", lambda: self._day,
                     lambda: self._day_times(feed, today, now, lambda: (inventory, devices))),
                    ("low_yield", lambda: self._lowyield,
                     lambda: self._low_yield(feed, inventory, devices, today, now)),
                    ("resource_warning", lambda: self._resource,
                     lambda: self._resource_warning(feed, today, now)),
                ]  # fmt: skip
                for _name, cached, compute in parts:
                    before = cached()
                    compute()
                    conn.rollback()
                    if cached() is not before:
                        any_done = True
                        on_part()
            finally:
                if not conn.closed:
                    conn.rollback()
        except (psycopg.Error, AtmfleetError) as exc:
            reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            log.warning("cannot compute the day figures: %s", reason)
            if self._slow_conn is not None:
                self._slow_conn.close()
                self._slow_conn = None
        return any_done

    def read(self) -> Snapshot:
        started = time.perf_counter()
        try:
            if self._conn is None or self._conn.closed:
                self._conn = self._connect()
            try:
                return self._read(self._conn, started)
            finally:
                if not self._conn.closed:
                    self._conn.rollback()
        except (psycopg.Error, AtmfleetError) as exc:
            reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            log.warning("cannot read the database: %s", reason)
            self.close()
            return Snapshot.database_down(self.targets, time.perf_counter() - started)

    def _read(self, conn: psycopg.Connection, started: float) -> Snapshot:
        rules = self.rules
        tz = rules.tz
        feed = Feed(conn, rules)
        now = feed.now_ms() if self._now_ms is None else self._now_ms()
        now_dt = from_ms(now)
        today = now_dt.astimezone(tz).date()
        signature, inventory = self._inventory_signed(conn, feed)
        subs = inventory.subbranch_by_id
        devices = fleet_devices(inventory.devices, today)
        rows = self._device_rows(conn, inventory, devices, signature, today, now)
        t_devices = time.perf_counter()
        low_date: date | None
        if self._background:  # refresh_slow computes them; show the last ones
            day, warning, low_date, lowyield = self._parts_on_show(today)
            t_day = t_warning = time.perf_counter()
        else:
            day = self._day_times(feed, today, now, lambda: (inventory, devices))
            t_day = time.perf_counter()
            warning = self._resource_warning(feed, today, now)
            t_warning = time.perf_counter()
        self_service, teller = self._transactions(conn, feed, inventory, devices, today)
        t_txn = time.perf_counter()
        if not self._background:
            low_date, lowyield = self._low_yield(feed, inventory, devices, today, now)
        unregistered = self._unregistered.count(
            conn, full=self.last_rows[0] == "full", heard=self._heard_unlisted
        )
        t_low = time.perf_counter()
        jobs = self._jobs(conn)
        incidents = self._incidents(conn)
        conn.rollback()
        self.timings = {
            "devices": t_devices - started,
            "day_uptime": t_day - t_devices,
            "resource_warning": t_warning - t_day,
            "transactions": t_txn - t_warning,
            "low_yield": t_low - t_txn,
        }
        log.debug("read times (s): %s", {k: round(v, 3) for k, v in self.timings.items()})
        self._read_today = today
        return Snapshot(
            targets=self.targets,
            database_up=True,
            read_seconds=time.perf_counter() - started,
            devices=rows,
            subbranches=[(s.id, s.tier.value, s.name) for s in inventory.subbranches],
            branches=[
                (b.id, b.subbranch, subs[b.subbranch].tier.value, b.kind.value, b.name)
                for b in inventory.branches
            ],
            day_start=day_span(today, tz)[0] / 1000,
            day=day,
            self_service=self_service,
            teller=teller,
            lowyield_date=None if low_date is None else day_span(low_date, tz)[0] / 1000,
            lowyield=lowyield,
            jobs=jobs,
            unregistered=unregistered,
            resource_warning=warning,
            incidents=incidents,
            refreshed_at=time.time(),
            computed_at=dict(self._computed_at),
        )

    def _device_rows(
        self,
        conn: psycopg.Connection,
        inventory: Inventory,
        devices: list[Device],
        signature: tuple[Any, ...],
        today: date,
        now: int,
    ) -> list[DeviceRow]:
        """Every exported device's row at ``now``.

        A full read runs :data:`DEVICE_QUERY` for the whole fleet. An incremental one
        (``incremental``, the default) runs it only for the devices with a message
        received since ``late_s`` before the last read's ``now`` (:func:`device_query`'s
        ``changed``), and keeps the last rows of the others: a device's newest points
        change only with a stored message. Lean (without the last-seen time), it first
        reads :data:`HEARD_QUERY` and runs :data:`DEVICE_QUERY` only for the devices it
        cannot settle (:meth:`_heard_rows`). The state and the window, which depend on
        ``now``, are worked out again for every device. A read is full when there is no
        last one, when the inventory or the day changed (the exported set and its order
        come from the full read) and every ``full_every_s`` (what the watermark cannot see:
        rows deleted, runs rebuilt, a message committed more than ``late_s`` after it was
        received)."""
        rules = self.rules
        factor = rules.heartbeat.timeout_factor
        known, self._known = self._known, None  # none kept if this read fails midway
        full = (
            not self._incremental
            or known is None
            or known.signature != signature
            or known.today != today
            or self._clock() - known.full_at >= self._full_every
            or self._full_next
        )
        self._full_next = False
        params: dict[str, Any] = {"today": today, "factor": factor}
        # A full read of the same fleet (inventory and day) keeps the last read's objects
        # where they are equal (labels, newest points, rows): one generation of them in
        # memory, not two, and a row kept is one whose lines are kept.
        same: _Known | None = None
        if full and known is not None and known.signature == signature and known.today == today:
            same = known
        old_labels = same.labels if same is not None else []
        old_specs = same.specs if same is not None else []
        old_newest = same.newest if same is not None else {}
        old_rows = same.rows if same is not None else []
        if full or known is None:
            full_at = self._clock()
            labels: list[tuple[str, str, str, str, str, str, str, str]] = []
            specs: list[str] = []
            newest: dict[str, _Newest] = {}
            before: list[DeviceRow] = []
            query = self._device_query
        else:
            full_at, labels, specs = known.full_at, known.labels, known.specs
            newest, before = known.newest, known.rows
            query = self._changed_query
            params["after"] = from_ms(known.read_at - self._late_ms)
        by_id: dict[str, Device] = {}
        changed: set[str] = set()
        branch_of = inventory.branch_by_id
        tier_of = {s.id: s.tier.value for s in inventory.subbranches}
        windows = rules.service_windows
        count = 0
        ratios: dict[str, float | None] = {} if full else self._cash_ratios
        settled = 0
        self._heard_unlisted = None
        if not full and self._heard:
            by_id = {d.id: d for d in devices}
            unsettled, settled, self._heard_unlisted = self._heard_rows(
                conn, params["after"], by_id, inventory.device_by_id, newest, changed
            )
            query, params = self._ids_query, {**params, "ids": unsettled}
            if not unsettled:
                query = ""
        # A server-side cursor read DEVICE_BLOCK rows at a time: the rows of the whole
        # fleet are never held at once (a full read's result was tens of MiB).
        with conn.cursor(name="atmfleet_serve_devices") as cur:
            cur.itersize = DEVICE_BLOCK
            if query:
                cur.execute(query, params)
            for dev_id, ts, st, hb, cash, p_at, p_status, seen, since, seq, r_ts, r_seq in (
                cur if query else ()
            ):
                if not by_id:
                    by_id = {d.id: d for d in devices}
                d = by_id.get(dev_id)
                if d is None:
                    continue
                count += 1
                changed.add(dev_id)
                entry = (
                    Newest(
                        state_ts=None if ts is None else ms(ts),
                        state=st,
                        heartbeat_s=hb,
                        run_start=None if since is None else ms(since),
                        presence_at=None if p_at is None else ms(p_at),
                        presence_offline=p_status == "offline",
                    ),
                    None if st is None else self._cash_ratio(cash, ratios),
                    _s(seen),
                    None if seq is None or r_ts is None else (seq, ms(r_ts), r_seq),
                )
                old = old_newest.get(dev_id)
                newest[dev_id] = old if old is not None and old == entry else entry
                if full:
                    at = len(labels)
                    if at < len(old_labels) and old_labels[at][0] == dev_id:
                        labels.append(old_labels[at])
                        specs.append(old_specs[at])
                        continue
                    branch = branch_of[d.branch]
                    labels.append(
                        (d.id, d.branch, branch.subbranch, tier_of[branch.subbranch],
                         d.type.value, d.vendor, d.placement.value, d.model)
                    )  # fmt: skip
                    specs.append(windows.spec_for(d))
        now_dt = from_ms(now)
        open_of: dict[str, bool] = {}
        rows: list[DeviceRow] = []
        append = rows.append
        for i, (static, spec) in enumerate(zip(labels, specs, strict=True)):
            dev_id = static[0]
            points, ratio, seen_s, _ = newest[dev_id]
            state, began = current_state(now, points, factor)
            since_s = None if began is None else began / 1000
            open_now = open_of.get(spec)
            if open_now is None:
                open_now = open_of[spec] = ServiceWindow.parse(spec).is_open(now_dt, rules.tz)
            if before:  # the last row, if alike (the same points, or new ones that show alike)
                last = before[i]
                if (
                    last.state == state
                    and last.since == since_s
                    and last.in_window == open_now
                    and (
                        dev_id not in changed
                        or (
                            last.cash_ratio == ratio
                            and last.last_seen == seen_s
                            and 0 not in (since_s, ratio, seen_s)  # 0.0 and -0.0 render apart
                        )
                    )
                ):
                    append(last)
                    continue
            if i < len(old_labels) and old_labels[i] is static:  # a full read: the last row
                last = old_rows[i]
                if (
                    last.state == state
                    and last.since == since_s
                    and last.in_window == open_now
                    and last.cash_ratio == ratio
                    and last.last_seen == seen_s
                    and 0 not in (since_s, ratio, seen_s)  # 0.0 and -0.0 render apart
                ):
                    append(last)
                    continue
            append(DeviceRow(*static, state, since_s, seen_s, ratio, open_now))
        self._cash_ratios = ratios
        self._known = _Known(signature, today, now, full_at, labels, specs, newest, rows)
        self.last_rows = ("full" if full else "incremental", count + settled)
        self.last_settled = settled
        return rows

    def _heard_rows(
        self,
        conn: psycopg.Connection,
        after: datetime,
        by_id: dict[str, Device],
        listed: dict[str, Device],
        newest: dict[str, _Newest],
        changed: set[str],
    ) -> tuple[list[str], int, list[str]]:
        """The lean incremental read's first step: settle from :data:`HEARD_QUERY` the
        devices whose state samples received since ``after`` only continue the latest
        run the last read saw, and return the others (to read with :data:`DEVICE_QUERY`)
        and how many were settled, and the ids heard from that are not in the inventory
        (``listed``: for :class:`UnregisteredCount`, which then reads no received rows).

        A device is settled when no presence message of its was received since
        ``after``, its latest run has the key the last read saw, and every sample
        received since ``after`` is later than that run's start (later than its first
        sample, so none of them can have changed an earlier run or cut the run's
        start). The chain of runs behind ``since`` is then the one the last read walked,
        and the device's newest sample is the newer of the last read's and the newest
        received: its state, heartbeat and cash counts are taken from it. Runs the
        collector rebuilt and rows deleted are what the periodic full read is for, as
        for the watermark itself."""
        unsettled: list[str] = []
        unlisted: list[str] = []
        count = 0  # settled
        ratios = self._cash_ratios
        with conn.cursor(name="atmfleet_serve_heard") as cur:
            cur.itersize = DEVICE_BLOCK
            cur.execute(HEARD_QUERY, {"after": after})
            for dev_id, t, seq, st, hb, cash, earliest, r_ts, r_seq, presence in cur:
                if dev_id not in by_id:
                    if dev_id not in listed:
                        unlisted.append(dev_id)
                    continue
                known = newest.get(dev_id)
                if known is None or presence or t is None:
                    unsettled.append(dev_id)
                    continue
                points, _, seen, key = known
                if key is None or key[1] != r_ts or key[2] != r_seq or earliest <= r_ts:
                    unsettled.append(dev_id)
                    continue
                assert points.state_ts is not None  # a device with a run has a sample
                count += 1
                if (t, seq) > (points.state_ts, key[0]):
                    at, offline = points.presence_at, points.presence_offline
                    newest[dev_id] = (
                        Newest(t, st, hb, points.run_start, at, offline),
                        self._cash_ratio(cash, ratios),
                        seen,
                        (seq, r_ts, r_seq),
                    )
                    changed.add(dev_id)
        return unsettled, count, unlisted

    @staticmethod
    def _jobs(conn: psycopg.Connection) -> tuple[Job, ...] | None:
        """The store's jobs; None (their series left out) if they cannot be read, so that
        the fleet's metrics do not depend on the job views' permissions."""
        try:
            with conn.transaction():
                jobs = read_jobs(conn)
        except psycopg.Error as exc:
            reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            log.warning("cannot read the TimescaleDB jobs: %s", reason)
            return None
        return () if jobs is None else tuple(jobs)

    @staticmethod
    def _incidents(conn: psycopg.Connection) -> Any:
        """The incident metrics' values (incidents/metrics.py); None (left out) if they
        cannot be read, so that the fleet's metrics do not depend on them."""
        try:
            with conn.transaction():
                return read_incidents(conn)
        except psycopg.Error as exc:
            reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            log.warning("cannot read the incidents: %s", reason)
            return None

    @staticmethod
    def _branch_key(inventory: Inventory, d: Device) -> BranchKey:
        branch = inventory.branch_by_id[d.branch]
        return d.branch, branch.subbranch, inventory.subbranch_by_id[branch.subbranch].tier.value

    def _day_times(
        self,
        feed: Feed,
        today: date,
        now: int,
        fleet: Callable[[], tuple[Inventory, list[Device]]],
    ) -> dict[BranchKey, DayTimes]:
        """Today's times per branch (:func:`day_times_columns`; ``fleet``: the inventory
        and the fleet on ``today``, asked for only where the columns do not apply)."""
        cached = self._day
        if (
            cached is not None
            and cached[1] == today
            and self._clock() - cached[0] < self._day_every
        ):
            return cached[2]
        out = day_times_columns(feed, today, now)
        if out is None:  # what the columns do not cover: the per-device reference
            inventory, devices = fleet()
            out = day_times_reference(feed, inventory, devices, today, now)
        self._day = (self._clock(), today, out)
        self._computed_at["day"] = time.time()
        return out

    def _resource_warning(self, feed: Feed, today: date, now: int) -> dict[BranchKey, float]:
        cached = self._resource
        if (
            cached is not None
            and cached[1] == today
            and self._clock() - cached[0] < self._resource_every
        ):
            return cached[2]
        out = resource_metrics.day_warning_read(feed, today, now)
        self._resource = (self._clock(), today, out)
        self._computed_at["resource_warning"] = time.time()
        return out

    def _transactions(
        self,
        conn: psycopg.Connection,
        feed: Feed,
        inventory: Inventory,
        devices: list[Device],
        today: date,
    ) -> tuple[dict[tuple[str, str, str, str, bool], int], dict[tuple[str, str, str, bool], int]]:
        cached = self._txn_keys
        if cached is None or cached[0] is not inventory or cached[1] != today:
            zeros: dict[tuple[str, str, str, str, bool], int] = {}
            keys: dict[str, BranchKey] = {}
            for d in devices:  # every branch and placement with a device shows, 0 or not
                key = keys.get(d.branch)
                if key is None:
                    key = keys[d.branch] = self._branch_key(inventory, d)
                zeros[(*key, d.placement.value, True)] = 0
                zeros[(*key, d.placement.value, False)] = 0
            cached = self._txn_keys = (inventory, today, zeros, keys)
        own, keys = dict(cached[2]), cached[3]
        tz = self.rules.tz
        txn = self.rules.transactions
        lo, hi = day_span(today, tz)
        with conn.cursor() as cur:
            cur.execute(
                TXN_QUERY,
                {
                    "lo": from_ms(lo), "hi": from_ms(hi), "today": today,
                    "financial": sorted(t.value for t in txn.financial_types),
                    "counted": sorted(r.value for r in txn.counted_results),
                },
            )  # fmt: skip
            for branch_id, placement, fin, non_fin in cur.fetchall():
                key = keys.get(branch_id)
                if key is None:
                    continue
                own[(*key, placement, True)] += int(fin)
                own[(*key, placement, False)] += int(non_fin)
        teller: dict[tuple[str, str, str, bool], int] = {}
        for branch_id, counts in feed.counters(today, today).get(today, {}).items():
            known = keys.get(branch_id)
            if known is None:
                continue
            teller[(*known, True)] = counts.financial
            teller[(*known, False)] = counts.non_financial
        return own, teller

    def _low_yield(
        self, feed: Feed, inventory: Inventory, devices: list[Device], today: date, now: int
    ) -> tuple[date, dict[tuple[str, str, str], tuple[int, int]]]:
        on = today - timedelta(days=1)
        cached = self._lowyield
        if (
            cached is not None
            and cached[1] == on
            and self._clock() - cached[0] < self._lowyield_every
        ):
            return on, cached[2]
        ctx = Context.make(feed, inventory, Scope("fleet", "fleet"), on, on, now)
        flags = ctx.flags()  # the report layer's (kpi low-yield, the bulletins)
        # (sub-branch, tier, type) of each flagged device, worked out once per branch
        # and type rather than once per device.
        subs = inventory.subbranch_by_id
        sub_of = {b.id: (b.subbranch, subs[b.subbranch].tier.value) for b in inventory.branches}
        type_value = {t: t.value for t in DeviceType}
        device_of = {d.id: d for d in inventory.devices}
        group_of: dict[tuple[str, DeviceType], tuple[str, str, str]] = {}
        counts: dict[tuple[str, str, str], list[int]] = {}
        for f in flags:
            d = device_of[f.device_id]
            group = group_of.get((d.branch, d.type))
            if group is None:
                group = group_of[(d.branch, d.type)] = (*sub_of[d.branch], type_value[d.type])
            acc = counts.setdefault(group, [0, 0])
            if f.evaluated:
                acc[1] += 1
                acc[0] += f.status is YieldStatus.LOW
        out = {k: (v[0], v[1]) for k, v in counts.items()}
        self._lowyield = (self._clock(), on, out)
        self._computed_at["low_yield"] = time.time()
        return on, out


def _branch_key(inventory: Inventory, d: Device) -> BranchKey:
    branch = inventory.branch_by_id[d.branch]
    return d.branch, branch.subbranch, inventory.subbranch_by_id[branch.subbranch].tier.value


def day_times_reference(
    feed: Feed, inventory: Inventory, devices: Sequence[Device], today: date, now: int
) -> dict[BranchKey, DayTimes]:
    """Today's times per branch of ``devices`` (the fleet on ``today``) from the report
    layer's 开机率 of each device (:meth:`rules.report.Context.uptime_days`)."""
    up = Context.make(feed, inventory, Scope("fleet", "fleet"), today, today, now).uptime_days()
    sums: dict[BranchKey, list[int]] = {}
    for d in devices:
        u = up.per_device[d.id][today]
        acc = sums.setdefault(_branch_key(inventory, d), [0, 0, 0, 0, 0])
        acc[0] += u.scheduled_ms
        acc[1] += u.available_ms
        acc[2] += u.tech_scheduled_ms
        acc[3] += u.tech_available_ms
        acc[4] += u.unknown_ms
    return {k: DayTimes(*(v / 1000 for v in acc)) for k, acc in sums.items()}


#: The columns of :data:`rules.uptime.FIGURES` that :class:`DayTimes` shows, in its order.
_DAY_FIGURES = ("scheduled_ms", "available_ms", "tech_scheduled_ms", "tech_available_ms")


def day_times_columns(feed: Feed, today: date, now: int) -> dict[BranchKey, DayTimes] | None:
    """:func:`day_times_reference` of the fleet on ``today`` from the day's columns
    (:func:`rules.feed.uptime_day_columns`: no inventory, no object per device), the
    same integers summed per branch; None where the columns do not apply (the caller
    takes the reference)."""
    cols = uptime_day_columns(feed, "fleet", "fleet", today, now)
    if cols is None:
        return None
    keys = list(zip(cols.groups["branch"], cols.groups["subbranch"], cols.groups["tier"],
                    strict=True))  # fmt: skip
    index: dict[BranchKey, int] = {}
    setdefault = index.setdefault
    code = np.fromiter((setdefault(k, len(index)) for k in keys), np.int64, len(keys))
    values = np.column_stack(
        [cols.figures[:, FIGURES.index(name)] for name in _DAY_FIGURES]
        + [cols.by_label[:, label_code(Label.UNKNOWN)]]
    ).astype(np.int64)
    sums = np.zeros((len(index), values.shape[1]), np.int64)
    np.add.at(sums, code, values)
    rows = sums.tolist()  # Python ints: v / 1000 as the reference divides
    return {k: DayTimes(*(v / 1000 for v in rows[i])) for k, i in index.items()}


def compute_parts(
    url: str, rules: Rules, names: Sequence[str], now_ms: int | None = None
) -> dict[str, tuple[date, Any]]:
    """The costlier parts ``names`` (day, low_yield, resource_warning) computed afresh, as
    :meth:`DatabaseSource.refresh_slow` computes them, each with the date it is for: what
    a child process hands back. ``now_ms``: the instant (default the database's now).
    The inventory is read only for a part that needs it (the low-yield share; today's
    times where the day's columns do not apply)."""
    source = DatabaseSource(url, rules)
    conn = source._connect()
    try:
        feed = Feed(conn, rules)
        now = feed.now_ms() if now_ms is None else now_ms
        today = from_ms(now).astimezone(rules.tz).date()
        read: list[tuple[Inventory, list[Device]]] = []

        def fleet() -> tuple[Inventory, list[Device]]:
            if not read:
                inventory = read_inventory(conn)
                read.append((inventory, fleet_devices(inventory.devices, today)))
            return read[0]

        out: dict[str, tuple[date, Any]] = {}
        for name in names:
            if name == "day":
                out[name] = (today, source._day_times(feed, today, now, fleet))
            elif name == "low_yield":
                out[name] = source._low_yield(feed, *fleet(), today, now)
            elif name == "resource_warning":
                out[name] = (today, source._resource_warning(feed, today, now))
            conn.rollback()
        return out
    finally:
        conn.close()


# --------------------------------------------------------------------------- serving


class Exporter:
    """Keeps a snapshot fresh and the exposition of ``registry`` rendered.

    :meth:`refresh` reads a snapshot from ``source`` and renders the registry (on which
    this exporter registers its :class:`FleetCollector`); :meth:`exposition` returns the
    bytes of the last refresh. :meth:`run` refreshes every ``every_s`` until stopped.

    A refresh that hangs (a database that stops answering) must not leave old device
    series on show as current: once the last rendering is older than ``stale_after_s``,
    :meth:`exposition` answers as if the database were down.
    """

    def __init__(
        self,
        source: Source,
        registry: CollectorRegistry,
        targets: Targets,
        *,
        stale_after_s: float | None = None,
        clock: Callable[[], float] = time.monotonic,
        leave_out: frozenset[str] = frozenset(),
    ) -> None:
        self._source = source
        self._leave_out = leave_out
        self._registry = registry
        self._stale_after = stale_after_s
        self._clock = clock
        self._lock = threading.Lock()
        self._refreshing = threading.Lock()  # one refresh at a time (two threads call it)
        #: Set once a refresh has rendered (the device rows are on show, or database down).
        self.refreshed = threading.Event()
        self._snapshot = Snapshot.database_down(targets)
        down = CollectorRegistry()
        down.register(FleetCollector(lambda: Snapshot.database_down(targets)))
        self._down = [render(down)]
        self._down_gzipped = [_gzip(self._down)]
        self._body, self._gzipped = self._down, self._down_gzipped
        #: The gzip members of the last rendering's long parts (:func:`_gzip_members`).
        self._gzip_kept: dict[int, tuple[bytes, bytes]] = {}
        self._rendered_at = clock()
        registry.register(FleetCollector(self.snapshot))

    def snapshot(self) -> Snapshot:
        return self._snapshot

    def refresh(self) -> Snapshot:
        """Read a snapshot from the source and render it."""
        return self._render(lambda _last: self._source.read())

    def rerender(self, update: Callable[[Snapshot], Snapshot]) -> Snapshot:
        """Render ``update(the snapshot on show)`` without reading the source (a costlier
        part that is ready shows at once, with the device rows of the last refresh)."""
        return self._render(update)

    def _render(self, make: Callable[[Snapshot], Snapshot]) -> Snapshot:
        with self._refreshing:
            snap = make(self._snapshot)
            self._snapshot = snap
            body = render_parts(self._registry, self._leave_out)
            gzipped, self._gzip_kept = _gzip_members(body, self._gzip_kept)
            with self._lock:
                self._body, self._gzipped = body, gzipped
                self._rendered_at = self._clock()
            del body, gzipped
            self.refreshed.set()
            return snap

    def exposition(self, gzipped: bool = False) -> bytes:
        """The exposition of the last refresh (gzipped with ``gzipped``)."""
        return b"".join(self.exposition_parts(gzipped))

    def exposition_parts(self, gzipped: bool = False) -> list[bytes]:
        """:meth:`exposition` as the parts to send one after the other (not joined: the
        per-device families are kept as parts from one rendering to the next)."""
        with self._lock:
            stale = (
                self._stale_after is not None
                and self._clock() - self._rendered_at > self._stale_after
            )
            if stale:
                return self._down_gzipped if gzipped else self._down
            return self._gzipped if gzipped else self._body

    def run(self, every_s: float, stop: threading.Event, *, at_once: bool = False) -> None:
        """Refresh every ``every_s`` (the first one at once with ``at_once``) until
        ``stop``."""
        if at_once and not stop.is_set():
            self._refresh_logged()
        while not stop.wait(every_s):
            self._refresh_logged()

    def run_slow(self, source: DatabaseSource, every_s: float, stop: threading.Event) -> None:
        """Compute the source's costlier parts (:meth:`DatabaseSource.refresh_slow`) at
        once, then every ``every_s``, rendering again as soon as each one is ready."""
        while not stop.is_set():
            try:
                source.refresh_slow(on_part=lambda: self._rerender_logged(source))
            except Exception:  # the loop must never end
                log.exception("computing the day figures failed")
            if stop.wait(every_s):
                return

    def _rerender_logged(self, source: DatabaseSource) -> None:
        try:
            self.rerender(source.with_parts)
        except Exception:  # the loop must never end
            log.exception("rendering failed")

    def _refresh_logged(self) -> None:
        started = time.monotonic()
        try:
            snap = self.refresh()
        except Exception:  # a refresh must never end the loop
            log.exception("refresh failed")
            return
        log.debug(
            "refreshed in %.3f s: %d devices, database %s",
            time.monotonic() - started,
            len(snap.devices),
            "up" if snap.database_up else "down",
        )


def make_server(exporter: Exporter, host: str, port: int) -> ThreadingHTTPServer:
    """An HTTP server answering ``/metrics`` (and ``/``) with the last exposition."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if self.path.split("?")[0] not in ("/metrics", "/"):
                self.send_error(404, "only /metrics is served")
                return
            wants_gzip = "gzip" in self.headers.get("Accept-Encoding", "")
            parts = exporter.exposition_parts(gzipped=wants_gzip)
            self.send_response(200)
            self.send_header("Content-Type", CONTENT_TYPE_LATEST)
            if wants_gzip:
                self.send_header("Content-Encoding", "gzip")
            self.send_header("Content-Length", str(sum(map(len, parts))))
            self.end_headers()
            for part in parts:
                self.wfile.write(part)

        def log_message(self, format: str, *args: Any) -> None:
            log.debug("%s " + format, self.address_string(), *args)

    server = ThreadingHTTPServer((host, port), Handler)
    server.daemon_threads = True
    return server


@dataclass
class Serving:
    """A running exporter: its HTTP server, refresh threads and their child processes.
    :meth:`close` stops them all."""

    exporter: Exporter
    source: DatabaseSource
    server: ThreadingHTTPServer
    stop: threading.Event
    threads: tuple[threading.Thread, ...]
    cash: CashMetrics | None = None

    @property
    def port(self) -> int:
        return self.server.server_port

    def wait_refreshed(self, timeout_s: float) -> bool:
        """Wait until the first refresh has rendered; False if ``timeout_s`` passed."""
        return self.exporter.refreshed.wait(timeout_s)

    def close(self) -> None:
        """Stop promptly, also while a costlier part or the cash-out forecast is being
        computed: their child processes are terminated (not waited for), so that the
        threads waiting on them end at once."""
        self.stop.set()
        self.source.children.close()
        if self.cash is not None:
            self.cash.close()
        self.server.shutdown()
        self.server.server_close()
        for t in self.threads:
            t.join(timeout=10)
        self.source.close()


def start_serving(
    url: str,
    rules: Rules,
    *,
    host: str = "127.0.0.1",
    port: int = 9310,
    refresh_s: float = 30.0,
    day_refresh_s: float = 120.0,
    registry: CollectorRegistry | None = None,
    lean: bool = True,
    isolate_slow: bool = True,
) -> Serving:
    """Serve ``/metrics`` at once and refresh in background threads (what ``atmfleet
    serve`` runs; also for embedding, e.g. in a demo). ``port`` 0 picks a free port (see
    :attr:`Serving.port`). Until the first refresh ends the exposition is the
    database-down one (targets, ``atmfleet_exporter_database_up 0``); the device rows
    come with the first refresh, today's uptime, the low-yield share and the
    resource-warning time as soon as the slow thread has each (docs/metrics.md). With
    ``lean`` (the default) the families of :data:`LEAN_LEAVES_OUT` are left out, and
    the device query does not look up what only they show. With ``isolate_slow`` (the
    default) the costlier parts are computed in a short-lived child process each time."""
    source = DatabaseSource(
        url, rules, day_every_s=day_refresh_s, background=True, last_seen=not lean,
        isolate_slow=isolate_slow,
    )  # fmt: skip
    # Three refreshes missed (or a costly one twice over): the read is stuck; say so.
    stale_after = max(3 * refresh_s, 2 * day_refresh_s, 300.0)
    registry = registry if registry is not None else CollectorRegistry()
    exporter = Exporter(
        source,
        registry,
        Targets.from_rules(rules),
        stale_after_s=stale_after,
        leave_out=LEAN_LEAVES_OUT if lean else frozenset(),
    )
    # Cash-out forecasts (cash/metrics.py): their own collector and refresh thread.
    from cash.metrics import CashCollector, CashMetrics

    cash = CashMetrics(url, rules, isolated=True)
    registry.register(CashCollector(cash))
    server = make_server(exporter, host, port)
    # notify/: the notifier's delivery counters and outbox (docs/notifications.md), from the
    # next refresh on; registered once the port is bound, so that its connection's
    # ephemeral port cannot be the one asked for.
    registry.register(
        NotifyCollector(
            lambda: connect(url, application_name="atmfleet-serve-notify", autocommit=True)
        )
    )
    stop = threading.Event()
    threads = (
        threading.Thread(target=server.serve_forever, name="atmfleet-serve-http", daemon=True),
        threading.Thread(
            target=exporter.run,
            args=(refresh_s, stop),
            kwargs={"at_once": True},
            name="atmfleet-serve-refresh",
            daemon=True,
        ),
        threading.Thread(
            target=exporter.run_slow,
            args=(source, min(day_refresh_s, refresh_s * 4), stop),
            name="atmfleet-serve-day",
            daemon=True,
        ),
        threading.Thread(target=cash.run, args=(stop,), name="atmfleet-serve-cash", daemon=True),
    )
    for t in threads:
        t.start()
    return Serving(exporter, source, server, stop, threads, cash)
