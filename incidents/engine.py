"""The incident engine: follows the store, opens, restores and escalates incidents.

``atmfleet incidents run`` calls :meth:`Engine.run` (a pass every ``incidents.poll_s``);
``--once`` makes one pass. A pass (docs/incidents.md, "The engine"):

1. **Follow**: the state runs touched since the previous pass (a ``follow_slack_s`` margin
   for device clocks and ingest latency) and the presence messages taking effect since
   then. Devices whose latest run is available and that the engine is not watching need
   nothing more (a heartbeat of a healthy device costs a tuple).
2. **Evaluate** the candidates: the devices the engine watches (down, or with an active
   incident), the ones whose latest run is not available, the ones with presence news,
   and the ones silent past their heartbeat timeout (not those whose incident is open and
   that sent nothing new since they were last looked at). For each, the indicators' own
   timeline (:func:`rules.timeline.build_timeline`) over ``lookback_hours`` and the
   scheduled spans 开机率 counts (:func:`rules.uptime.scheduled_spans`) give the outage
   (:mod:`incidents.detect`); then: open (after the debounce, unless an approved planned
   stop covers the device), merge a flap into the incident restored just before, link or
   reopen a repeat fault, mark the technician on site (maintenance mode), restore (the
   device available again).
3. **SLA**: every incident whose clocks may still set a mark gets its due instants from
   its stored timestamps (:mod:`incidents.sla`); marks now due are inserted into
   ``incident_sla`` (the primary key makes them once-only) and announced with one
   notification row per recipient for the whole pass, however many incidents it covers.
4. The cursor (``incident_engine``) is saved in the pass's transaction.

Every read is bounded by the pass's horizon (``run_once(at)``): a pass at a past horizon
sees only what was stored by then, so history can be replayed. All writes of a pass are
one transaction (a device whose step fails is rolled back to its
savepoint, logged and retried next pass); a crash loses only the pass in flight.
"""

from __future__ import annotations

import heapq
import logging
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime
from typing import Any

import psycopg

from atmfleet.errors import AtmfleetError
from atmfleet.inventory import Device, Inventory
from atmfleet.store.audit import Actor
from incidents import service
from incidents.detect import DOWN_LABELS, Observation, Outage, observe
from incidents.model import (
    ACTIVE_STATES,
    SELECT_COLUMNS,
    Incident,
    IncidentClass,
    from_row,
    load,
)
from incidents.sla import Clock, Mark, marks, pauses_from
from rules.config import Rules, SlaContract
from rules.feed import DeviceInputs, Feed, queries
from rules.labels import STATE_LABEL, Label
from rules.timeline import PowerRestored, Presence, Span, StateRun, build_timeline, from_ms, ms
from rules.uptime import WindowSpans, days, scheduled_spans

log = logging.getLogger(__name__)

#: Reported states that are available (the labels say which).
AVAILABLE_STATES = frozenset(s for s, label in STATE_LABEL.items() if label is Label.AVAILABLE)
#: Reported states whose label may open an incident (fault, cash_out, ..., supervisor).
DOWN_STATES = frozenset(s for s, label in STATE_LABEL.items() if label in DOWN_LABELS)
#: The raw state that means a technician is working on the device.
MAINTENANCE_STATE = "maintenance"
SYSTEM = Actor.system(service.ENGINE_SURFACE)

#: Covering hook: device ids -> those inside an approved planned stop at ``at``.
Covering = Callable[[psycopg.Connection[Any], Iterable[str], datetime], set[str]]


def planned_stop_covering(
    conn: psycopg.Connection[Any], device_ids: Iterable[str], at: datetime
) -> set[str]:
    """The planned-stop register's ``covering`` (stops/service.py)."""
    from stops.service import covering

    return covering(conn, device_ids, at)


_MS = "floor(extract(epoch FROM {}) * 1000)::int8"
# Every read is bounded by the horizon ``at`` (the database's now when live; a time in
# the past when replaying history: nothing stored after it is seen).
Q_LATEST = f"""
SELECT DISTINCT ON (device_id) device_id, {_MS.format("least(last_ts, %(at)s)")}, state,
       heartbeat_s
FROM state_runs WHERE start_ts <= %(at)s ORDER BY device_id, start_ts DESC, start_seq DESC
"""
Q_FOLLOW = f"""
SELECT device_id, {_MS.format("least(last_ts, %(at)s)")}, state, heartbeat_s FROM state_runs
WHERE tstzrange(start_ts, last_ts, '[]') && tstzrange(%(since)s, NULL) AND start_ts <= %(at)s
ORDER BY last_ts, start_ts
"""
Q_FOLLOW_PRESENCE = """
SELECT DISTINCT device_id FROM presence
WHERE presence_at(will, ts, received_at) >= %(since)s AND presence_at(will, ts, received_at) <= %(at)s
"""
Q_RUNS = f"""
SELECT device_id, {_MS.format("start_ts")}, start_seq, {_MS.format("last_ts")}, state, heartbeat_s
FROM state_runs
WHERE device_id = ANY(%(ids)s) AND tstzrange(start_ts, last_ts, '[]') && tstzrange(%(lo)s, %(hi)s, '[)')
ORDER BY device_id, start_ts, start_seq
"""
Q_PRESENCE = f"""
SELECT device_id, {_MS.format("ts")}, status = 'online', will, {_MS.format("received_at")}
FROM presence
WHERE device_id = ANY(%(ids)s) AND presence_at(will, ts, received_at) >= %(lo)s
  AND presence_at(will, ts, received_at) < %(hi)s
"""
Q_POWER = f"""
SELECT DISTINCT device_id, {_MS.format("since")}, {_MS.format("ts")} FROM events
WHERE device_id = ANY(%(ids)s) AND event = 'power_restored' AND since IS NOT NULL
  AND ts >= %(lo)s AND since < %(hi)s AND ts <= %(hi)s
"""
Q_OUTAGES = f"""
SELECT {_MS.format("started_at")}, {_MS.format("ended_at")} FROM collector_outages
WHERE ended_at >= %(lo)s AND started_at < %(hi)s ORDER BY 1
"""
Q_FAULTS = f"""
SELECT device_id, {_MS.format("ts")}, component FROM events
WHERE device_id = ANY(%(ids)s) AND event = 'fault' AND component IS NOT NULL
  AND ts >= %(lo)s AND ts <= %(hi)s
ORDER BY device_id, ts
"""


@dataclass
class PassStats:
    """What one pass did (the CLI prints it; the bench times it)."""

    started: float = 0.0
    seconds: float = 0.0
    followed: int = 0
    candidates: int = 0
    opened: int = 0
    merged: int = 0
    repeats: int = 0
    restored: int = 0
    on_site: int = 0
    skipped_planned: int = 0
    marks: int = 0
    notifications: int = 0
    errors: int = 0
    timings: dict[str, float] = field(default_factory=dict)

    def line(self) -> str:
        return (
            f"pass {self.seconds:.3f}s: followed {self.followed}, evaluated {self.candidates},"
            f" opened {self.opened} (merged {self.merged}, repeats {self.repeats}),"
            f" on site {self.on_site}, restored {self.restored},"
            f" planned-stop skips {self.skipped_planned}, SLA marks {self.marks},"
            f" notifications {self.notifications}, errors {self.errors}"
        )


def recipient_keys(roles: Iterable[str], incident: Incident) -> list[str]:
    """Role names -> recipient keys ``<role>:<id>`` for this incident (docs/incidents.md).
    A maintainer role with no maintainer known resolves to nothing."""
    out: list[str] = []
    for role in roles:
        if role == "branch":
            out.append(f"branch:{incident.branch_id}")
        elif role == "subbranch_manager":
            out.append(f"subbranch_manager:{incident.subbranch_id}")
        elif role == "head_office":
            out.append("head_office:")
        elif role == "vendor_manager":
            out.append(f"vendor_manager:{incident.vendor}")
        elif role == "maintainer" and incident.maintainer_id:
            out.append(f"maintainer:{incident.maintainer_id}")
    return list(dict.fromkeys(out))


@dataclass
class _Notice:
    items: list[dict[str, Any]] = field(default_factory=list)
    incident_ids: list[int] = field(default_factory=list)


class Engine:
    """One engine over one connection (autocommit off is not required: each pass opens
    its own transaction)."""

    def __init__(
        self,
        conn: psycopg.Connection[Any],
        rules: Rules,
        *,
        name: str = "default",
        covering: Covering | None = planned_stop_covering,
    ) -> None:
        self.conn = conn
        self.rules = rules
        self.name = name
        self.covering = covering
        self.feed = Feed(conn, rules)
        self.inventory: Inventory | None = None
        self._inventory_at = 0.0
        self.tiers: dict[str, Any] = {}
        self.maintainers: dict[tuple[str, str], str] = {}
        self.windows = WindowSpans(rules.tz)
        # What the engine knows of each device: last sample ms, latest state, heartbeat.
        self.last_seen: dict[str, int] = {}
        self.latest_state: dict[str, str] = {}
        self.heartbeat: dict[str, int] = {}
        self.watch: set[str] = set()
        # Silence: each known device's instant (ms) after which it is silent past its
        # heartbeat timeout, in a heap (one live entry a device: ``_due``), and the devices
        # silent at the last pass's horizon ``_silent_at``; a pass pops only the entries
        # now due instead of looking at every device.
        self._due_heap: list[tuple[float, str]] = []
        self._due: dict[str, float] = {}
        self._silent: set[str] = set()
        self._silent_at: int | None = None
        # Devices with an active incident -> their last sample when last evaluated.
        self._settled: dict[str, int] = {}
        self.cursor: int | None = None
        self.started = False
        # SLA: incident id -> (version, marks it can set); marks stored per incident.
        self._sla_cache: dict[int, tuple[int, list[Mark]]] = {}
        self._stored_marks: dict[int, set[tuple[int, str, str, int]]] = defaultdict(set)

    # ------------------------------------------------------------------ start-up

    def _load_inventory(self) -> None:
        self.inventory = self.feed.inventory()
        self.tiers = {s.id: s.tier for s in self.inventory.subbranches}
        rows = self.conn.execute("SELECT vendor, region, id FROM maintainers").fetchall()
        self.maintainers = {(v, r): i for v, r, i in rows}
        self._inventory_at = time.monotonic()

    def start(self, at: datetime | None = None) -> None:
        """Read the inventory, the cursor and every device's latest run by ``at`` (default
        the database's now), once."""
        self._load_inventory()
        if at is None:
            at = self.conn.execute("SELECT now()").fetchone()[0]  # type: ignore[index]
        row = self.conn.execute(
            f"SELECT {_MS.format('cursor_at')} FROM incident_engine WHERE name = %s",
            (self.name,),
        ).fetchone()
        self.cursor = None if row is None or row[0] is None else int(row[0])
        for device_id, last, state, hb in self.conn.execute(Q_LATEST, {"at": at}).fetchall():
            self._seen(device_id, last, state, hb)
        active = self.conn.execute(
            "SELECT device_id FROM incidents WHERE state = ANY(%s)",
            ([s.value for s in ACTIVE_STATES],),
        ).fetchall()
        self.watch = {d for (d,) in active}
        self.watch |= {d for d, s in self.latest_state.items() if s in DOWN_STATES}
        self.conn.commit()
        self.started = True

    def _seen(self, device_id: str, last: int, state: str, hb: int) -> None:
        if last >= self.last_seen.get(device_id, -1):
            self.last_seen[device_id] = last
            self.latest_state[device_id] = state
            self.heartbeat[device_id] = hb
            due = last + self.rules.heartbeat.timeout_factor * hb * 1000
            if self._due.get(device_id) != due:
                self._due[device_id] = due
                heapq.heappush(self._due_heap, (due, device_id))
                self._silent.discard(device_id)

    def _silent_now(self, now_ms: int) -> set[str]:
        """The known devices silent past their heartbeat timeout at ``now_ms``
        (``now_ms - last > timeout_factor x heartbeat``): the entries of the heap now due,
        each checked with that very expression; everything again when the horizon went
        back (a replay)."""
        factor = self.rules.heartbeat.timeout_factor
        last_seen, heartbeat = self.last_seen, self.heartbeat

        def silent(device_id: str) -> bool:
            return now_ms - last_seen[device_id] > factor * heartbeat.get(device_id, 60) * 1000

        if self._silent_at is not None and now_ms < self._silent_at:
            self._silent = {d for d in last_seen if silent(d)}
            self._due_heap = [(due, d) for d, due in self._due.items() if d not in self._silent]
            heapq.heapify(self._due_heap)
        heap, due_of = self._due_heap, self._due
        again: list[tuple[float, str]] = []
        # A millisecond of margin: the heap's sum and the check's difference may round
        # apart in the last bit.
        while heap and heap[0][0] <= now_ms + 1:
            due, device_id = heapq.heappop(heap)
            if due_of.get(device_id) != due:
                continue  # superseded by a later sample's entry
            if silent(device_id):
                self._silent.add(device_id)
            else:
                again.append((due, device_id))
        for entry in again:
            heapq.heappush(heap, entry)
        self._silent_at = now_ms
        return self._silent

    # ------------------------------------------------------------------ one pass

    def run_once(self, now: datetime | None = None) -> PassStats:
        """One pass; ``now`` (default: the database's clock) is the horizon evaluated."""
        if not self.started:
            self.start(now)
        stats = PassStats(started=time.monotonic())
        conn = self.conn
        try:
            # Everything a pass reads and writes is in its one transaction (a read outside
            # it would leave an implicit transaction open, and the pass's own would then be
            # a savepoint inside it, never committed).
            with conn.transaction():
                if time.monotonic() - self._inventory_at > self.rules.incidents.inventory_refresh_s:
                    self._load_inventory()
                at = now or conn.execute("SELECT now()").fetchone()[0]  # type: ignore[index]
                now_ms = ms(at)
                t0 = time.perf_counter()
                candidates = self._follow(now_ms, stats)
                stats.timings["follow"] = time.perf_counter() - t0
                t0 = time.perf_counter()
                opened = self._evaluate(candidates, at, now_ms, stats)
                stats.timings["evaluate"] = time.perf_counter() - t0
                t0 = time.perf_counter()
                self._announce_opened(opened, at, stats)
                self._sla(at, now_ms, stats)
                stats.timings["sla"] = time.perf_counter() - t0
                conn.execute(
                    "INSERT INTO incident_engine (name, cursor_at, last_pass_at, passes)"
                    " VALUES (%s, %s, clock_timestamp(), 1) ON CONFLICT (name) DO UPDATE SET"
                    " cursor_at = excluded.cursor_at, last_pass_at = excluded.last_pass_at,"
                    " passes = incident_engine.passes + 1, updated_at = clock_timestamp()",
                    (self.name, at),
                )
        except BaseException:
            self._sla_cache.clear()
            self._stored_marks.clear()
            self._settled.clear()
            raise
        self.cursor = now_ms
        stats.seconds = time.monotonic() - stats.started
        return stats

    def run(self, *, stop: Callable[[], bool] = lambda: False, on_pass: Any = None) -> None:
        """Pass after pass until ``stop()``; a database error is logged and the pass retried
        after ``poll_s`` (the cursor did not move)."""
        poll = self.rules.incidents.poll_s
        while not stop():
            began = time.monotonic()
            try:
                stats = self.run_once()
                if on_pass is not None:
                    on_pass(stats)
            except (psycopg.OperationalError, psycopg.errors.InsufficientPrivilege):
                raise  # the connection is gone, or this login may never do it
            except psycopg.Error as exc:
                log.warning("incident engine pass failed (%s); retrying", exc)
                self.conn.rollback()
            time.sleep(max(0.0, poll - (time.monotonic() - began)))

    # ------------------------------------------------------------------ follow

    def _follow(self, now_ms: int, stats: PassStats) -> set[str]:
        assert self.inventory is not None
        slack = int(self.rules.incidents.follow_slack_s * 1000)
        since = (now_ms if self.cursor is None else self.cursor) - slack
        bounds = {"since": from_ms(since), "at": from_ms(now_ms)}
        rows = self.conn.execute(Q_FOLLOW, bounds).fetchall()
        stats.followed = len(rows)
        changed: set[str] = set()
        for device_id, last, state, hb in rows:
            self._seen(device_id, last, state, hb)
            changed.add(device_id)
        presence = {d for (d,) in self.conn.execute(Q_FOLLOW_PRESENCE, bounds)}
        candidates = set(self.watch) | presence
        # A new run in a state that can open an incident (closed by schedule and declared
        # planned maintenance cannot; the timeline's silence is caught below).
        candidates |= {d for d in changed if self.latest_state.get(d) in DOWN_STATES}
        candidates |= self._silent_now(now_ms)
        known = self.inventory.device_by_id
        # A device whose incident is open and which sent nothing new since it was last
        # looked at cannot change it (on site and restored need new data): skipped, so a
        # long outage of thousands of devices does not re-read them every pass.
        settled = self._settled
        return {
            d
            for d in candidates
            if d in known and (d in presence or settled.get(d, -2) != self.last_seen.get(d, -1))
        }

    # ------------------------------------------------------------------ evaluate

    def _inputs(
        self, ids: list[str], lo: int, hi: int
    ) -> tuple[dict[str, DeviceInputs], list[Span]]:
        ctx = self.feed.context_ms()
        params = {"ids": ids, "lo": from_ms(lo - ctx), "hi": from_ms(hi)}
        out: dict[str, DeviceInputs] = defaultdict(DeviceInputs)
        wanted = set(ids)
        with self.conn.cursor(binary=True) as cur:
            for device_id, start, seq, last, state, hb in cur.execute(Q_RUNS, params):
                out[device_id].runs.append(StateRun(start, last, state, hb, seq))
            for device_id, ts, online, will, received in cur.execute(Q_PRESENCE, params):
                out[device_id].presence.append(Presence(ts, online, will, received))
            for device_id, since, ts in cur.execute(Q_POWER, {**params, "lo": from_ms(lo)}):
                out[device_id].power.append(PowerRestored(since, ts))
            # Approved planned stops: planned time in the timeline, as for 开机率.
            for device_id, a, b in cur.execute(
                queries()["planned_stops"], {"lo": from_ms(lo), "hi": from_ms(hi)}
            ):
                if device_id in wanted:
                    out[device_id].stops.append((a, b))
            outages = self.feed.unknown_before(lo - ctx)
            outages += [(a, b) for a, b in cur.execute(Q_OUTAGES, params)]
        return out, outages

    def _scheduled(self, device: Device, lo: int, now_ms: int) -> list[Span]:
        tz = self.rules.tz
        first = from_ms(lo).astimezone(tz).date()
        last = from_ms(now_ms).astimezone(tz).date()
        spans: list[Span] = []
        for day in days(first, last):
            spans += scheduled_spans(device, day, self.rules, self.windows, now_ms)
        return spans

    def _evaluate(
        self, candidates: set[str], at: datetime, now_ms: int, stats: PassStats
    ) -> list[Incident]:
        assert self.inventory is not None
        stats.candidates = len(candidates)
        if not candidates:
            return []
        rules = self.rules
        lo = now_ms - int(rules.incidents.lookback_hours * 3_600_000)
        ids = sorted(candidates)
        inputs, outages = self._inputs(ids, lo, now_ms)
        factor = rules.heartbeat.timeout_factor
        empty = DeviceInputs()
        observations: dict[str, tuple[Observation, DeviceInputs]] = {}
        for device_id in ids:
            device = self.inventory.device_by_id[device_id]
            got = inputs.get(device_id, empty)
            timeline = build_timeline(
                got.runs, lo, now_ms, horizon=now_ms, presence=got.presence, power=got.power,
                outages=outages, timeout_factor=factor, default_heartbeat_s=device.heartbeat_s,
                stops=got.stops,
            )  # fmt: skip
            if not got.runs and not got.presence and device_id not in self.last_seen:
                continue  # never heard from: not installed yet, not an outage
            observations[device_id] = (
                observe(timeline, self._scheduled(device, lo, now_ms)),
                got,
            )
        active = self._incidents(
            "device_id = ANY(%s) AND state = ANY(%s)", ids, [s.value for s in ACTIVE_STATES]
        )
        by_device = {i.device_id: i for i in active}
        to_open = {
            d: obs.outage
            for d, (obs, _) in observations.items()
            if d not in by_device and obs.outage is not None
            and obs.outage.due(rules.incidents.debounce_s)
        }  # fmt: skip
        planned = (
            self.covering(self.conn, list(to_open), at) if to_open and self.covering else set()
        )
        recent = self._recent(list(to_open), now_ms) if to_open else {}
        components = self._components(list(to_open), lo, now_ms) if to_open else {}
        opened: list[Incident] = []
        for device_id, (obs, got) in observations.items():
            incident = by_device.get(device_id)
            self._settled.pop(device_id, None)
            try:
                with self.conn.transaction():
                    if incident is not None:
                        self._follow_incident(incident, obs, got, now_ms, stats)
                        self.watch.add(device_id)
                        if not obs.available:
                            self._settled[device_id] = self.last_seen.get(device_id, -1)
                    elif device_id in to_open:
                        if device_id in planned:
                            stats.skipped_planned += 1
                            self.watch.add(device_id)
                            continue
                        outage = to_open[device_id]
                        merged_before = stats.merged
                        new = self._open(
                            device_id, outage, components.get(device_id, []),
                            recent.get(device_id, []), at, now_ms, got, stats,
                        )  # fmt: skip
                        if new is not None:
                            opened.append(new)
                        if new is not None or stats.merged > merged_before:
                            self._settled[device_id] = self.last_seen.get(device_id, -1)
                        self.watch.add(device_id)
                    elif obs.outage is not None:
                        self.watch.add(device_id)  # down, its debounce still running
                    else:
                        # Available, or closed/planned/unknown: nothing can open until it
                        # sends something new or falls silent.
                        self.watch.discard(device_id)
            except (AtmfleetError, psycopg.errors.IntegrityError) as exc:
                stats.errors += 1
                log.warning("incident engine: device %s: %s", device_id, exc)
        return opened

    def _incidents(self, where: str, *params: Any) -> list[Incident]:
        rows = self.conn.execute(
            f"SELECT {SELECT_COLUMNS} FROM incidents WHERE {where}", params
        ).fetchall()
        return [from_row(r) for r in rows]

    def _recent(self, ids: list[str], now_ms: int) -> dict[str, list[Incident]]:
        """Restored or closed incidents of these devices recent enough to merge a flap or
        to be repeated (newest first)."""
        reach = max(
            self.rules.incidents.merge_flaps_s * 1000,
            self.rules.vendors.repeat_fault_days * 86_400_000,
        )
        since = from_ms(now_ms - reach - int(self.rules.incidents.lookback_hours * 3_600_000))
        out: dict[str, list[Incident]] = defaultdict(list)
        for incident in self._incidents(
            "device_id = ANY(%s) AND state IN ('restored', 'closed') AND restored_at >= %s"
            " ORDER BY restored_at DESC, id DESC",
            ids,
            since,
        ):
            out[incident.device_id].append(incident)
        return out

    def _components(self, ids: list[str], lo: int, now_ms: int) -> dict[str, list[tuple[int, str]]]:
        out: dict[str, list[tuple[int, str]]] = defaultdict(list)
        params = {"ids": ids, "lo": from_ms(lo), "hi": from_ms(now_ms)}
        for device_id, ts, component in self.conn.execute(Q_FAULTS, params):
            out[device_id].append((ts, component))
        return out

    def _follow_incident(
        self,
        incident: Incident,
        obs: Observation,
        got: DeviceInputs,
        now_ms: int,
        stats: PassStats,
    ) -> None:
        """An active incident: restored when the device is available, on site when it
        entered maintenance mode during the outage."""
        actor = Actor(f"device:{incident.device_id}", service.ENGINE_SURFACE)
        if obs.available:
            assert obs.since is not None
            service.restore(
                self.conn, incident.id, actor, at=from_ms(obs.since), source="device in service"
            )
            stats.restored += 1
            return
        if incident.state in ("open", "acknowledged", "dispatched") and not incident.suspended:
            since = ms(incident.cycle_at) - int(self.rules.incidents.merge_flaps_s * 1000)
            since = max(since, ms(incident.started_at))
            arrival = next(
                (
                    r.start
                    for r in got.runs
                    if r.state == MAINTENANCE_STATE and r.end >= since and r.start < now_ms
                ),
                None,
            )
            if arrival is not None:
                service.arrive(
                    self.conn, incident.id, actor, at=from_ms(max(arrival, since)),
                    source="maintenance mode",
                )  # fmt: skip
                stats.on_site += 1

    def _open(
        self,
        device_id: str,
        outage: Outage,
        faults: Sequence[tuple[int, str]],
        recent: Sequence[Incident],
        at: datetime,
        now_ms: int,
        got: DeviceInputs,
        stats: PassStats,
    ) -> Incident | None:
        assert self.inventory is not None
        rules = self.rules
        device = self.inventory.device_by_id[device_id]
        branch = self.inventory.branch_by_id[device.branch]
        component = None
        if outage.cause is Label.FAULT:
            # The fault the device named at the outage's start (a heartbeat's slack).
            slack = 2 * device.heartbeat_s * 1000
            component = next(
                (c for ts, c in reversed(faults) if outage.start - slack <= ts <= now_ms), None
            )
        cls_name = rules.incidents.classes.get(outage.cause, "software")
        if outage.cause is Label.FAULT and component is None:
            cls_name = "software"
        started = from_ms(outage.start)
        # A flap: the outage began soon after an incident of the device was restored.
        merge_ms = rules.incidents.merge_flaps_s * 1000
        for prev in recent:
            if prev.state == "restored" and prev.restored_at is not None:
                gap = outage.start - ms(prev.restored_at)
                if -1 <= gap <= merge_ms:
                    self._merge(prev, outage)
                    stats.merged += 1
                    return None
        # A repeat: the same device and component (or class) within repeat_fault_days.
        repeat_ms = rules.vendors.repeat_fault_days * 86_400_000
        previous = next(
            (
                p
                for p in recent
                if outage.cause is Label.FAULT
                and p.restored_at is not None
                and outage.start - ms(p.restored_at) <= repeat_ms
                and (p.component == component if component else p.cls == cls_name)
                and p.cause == outage.cause.value
            ),
            None,
        )
        if previous is not None and rules.incidents.repeat.action == "reopen":
            service.reopen(
                self.conn, previous.id, SYSTEM, at=at, started_at=started,
                reason=f"repeat {outage.cause.value} within {rules.vendors.repeat_fault_days} days",
            )  # fmt: skip
            stats.repeats += 1
            return load(self.conn, previous.id)
        maintainer = self.maintainers.get(
            (device.vendor, branch.subbranch)
        ) or self.maintainers.get((device.vendor, "*"))
        contract = rules.sla.contract_for(
            device.vendor, self.tiers[branch.subbranch], device.placement, cls_name
        )
        incident = service.open_incident(
            self.conn,
            device_id=device_id,
            subbranch_id=branch.subbranch,
            branch_id=branch.id,
            vendor=device.vendor,
            model=device.model,
            cls=IncidentClass(cls_name),
            cause=outage.cause.value,
            component=component,
            started_at=started,
            opened_at=max(at, started),
            maintainer_id=maintainer,
            contract=contract.name if contract else None,
            repeat_of=previous.id if previous is not None else None,
        )
        if incident is not None:
            stats.opened += 1
            if previous is not None:
                stats.repeats += 1
            # Already in maintenance mode when it opened: the technician is there.
            self._follow_incident(incident, Observation(None, None, outage), got, now_ms, stats)
        return incident

    def _merge(self, incident: Incident, outage: Outage) -> None:
        """A flap: the restored incident continues (back to the state it was restored
        from), as one outage."""
        row = self.conn.execute(
            "SELECT from_state FROM incident_events WHERE incident_id = %s AND kind = 'restored'"
            " ORDER BY id DESC LIMIT 1",
            (incident.id,),
        ).fetchone()
        back = row[0] if row and row[0] in {s.value for s in ACTIVE_STATES} else "open"
        service.continue_outage(
            self.conn, incident.id, SYSTEM, to_state=back, at=from_ms(outage.start),
            detail={"cause": outage.cause.value, "restored_at": incident.restored_at},
        )  # fmt: skip

    # ------------------------------------------------------------------ notifications

    def _write_notices(
        self, kind: str, groups: dict[str, _Notice], at: datetime, stats: PassStats
    ) -> dict[str, int]:
        out: dict[str, int] = {}
        for recipient in sorted(groups):
            notice = groups[recipient]
            out[recipient] = service.write_event(
                self.conn, incident_ids=notice.incident_ids, kind=kind, actor=SYSTEM.name, at=at,
                detail={"notification": True, "count": len(notice.items), "items": notice.items},
                recipients=[recipient],
            )  # fmt: skip
            stats.notifications += 1
        return out

    def _announce_opened(self, opened: list[Incident], at: datetime, stats: PassStats) -> None:
        roles = self.rules.incidents.opened_recipients
        if not opened or not roles:
            return
        groups: dict[str, _Notice] = defaultdict(_Notice)
        for incident in opened:
            for key in recipient_keys(roles, incident):
                groups[key].incident_ids.append(incident.id)
                groups[key].items.append(_item(incident))
        self._write_notices("opened", groups, at, stats)

    # ------------------------------------------------------------------ SLA

    def _local_date(self, value: int) -> date:
        return from_ms(value).astimezone(self.rules.tz).date()

    def _marks_of(self, incident: Incident, pauses: list[Span]) -> list[Mark]:
        assert self.inventory is not None
        contract = self.rules.sla.by_name(incident.contract)
        if contract is None:
            return []
        device = self.inventory.device_by_id.get(incident.device_id)
        day_spans = None
        if device is not None and contract.clock == "service":
            rules, windows = self.rules, self.windows

            def day_spans(day: date) -> list[Span]:
                return scheduled_spans(device, day, rules, windows)

        repair_start = (
            incident.started_at
            if contract.repair_from == "started" and incident.cycle == 0
            else incident.cycle_at
        )
        clocks = [
            Clock(
                "response",
                ms(incident.dispatched_at) if incident.dispatched_at else None,
                ms(incident.on_site_at) if incident.on_site_at else None,
                contract.response_hours,
            ),
            Clock(
                "repair",
                ms(repair_start),
                ms(incident.restored_at) if incident.restored_at else None,
                contract.repair_hours,
            ),
        ]
        return marks(contract, clocks, pauses, day_spans, self._local_date)

    def _sla(self, at: datetime, now_ms: int, stats: PassStats) -> None:
        lookback = from_ms(now_ms - int(self.rules.incidents.lookback_hours * 3_600_000))
        # Not closed (the partial index), and closed ones opened within the lookback whose
        # marks may have fallen due while no engine ran.
        incidents = self._incidents(
            "contract IS NOT NULL AND (state <> 'closed' OR (state = 'closed' AND opened_at >= %s))",
            lookback,
        )
        if not incidents:
            return
        stale = [i for i in incidents if self._sla_cache.get(i.id, (-1, []))[0] != i.version]
        if stale:
            ids = [i.id for i in stale]
            history: dict[int, list[tuple[str, int]]] = defaultdict(list)
            for incident_id, kind, when in self.conn.execute(
                f"SELECT incident_id, kind, {_MS.format('at')} FROM incident_events"
                " WHERE incident_id = ANY(%s) AND kind IN ('suspended', 'resumed') ORDER BY id",
                (ids,),
            ):
                history[incident_id].append((kind, when))
            for incident_id, cycle, deadline, kind, level in self.conn.execute(
                "SELECT incident_id, cycle, deadline, kind, level FROM incident_sla"
                " WHERE incident_id = ANY(%s)",
                (ids,),
            ):
                self._stored_marks[incident_id].add((cycle, deadline, kind, level))
            for incident in stale:
                pauses = pauses_from(history[incident.id], ms(incident.cycle_at))
                self._sla_cache[incident.id] = (incident.version, self._marks_of(incident, pauses))
        live = {i.id for i in incidents}
        for gone in [k for k in self._sla_cache if k not in live]:
            del self._sla_cache[gone]
            self._stored_marks.pop(gone, None)

        due: list[tuple[Incident, Mark]] = []
        for incident in incidents:
            for mark in self._sla_cache[incident.id][1]:
                key = (incident.cycle, mark.deadline, mark.kind, mark.level)
                if mark.due <= now_ms and key not in self._stored_marks[incident.id]:
                    due.append((incident, mark))
        if not due:
            return
        # Insert the marks first: only the ones no one stored before are announced.
        with self.conn.cursor() as cur:
            cur.executemany(
                "INSERT INTO incident_sla (incident_id, cycle, deadline, kind, level, due_at)"
                " VALUES (%s, %s, %s, %s, %s, %s) ON CONFLICT DO NOTHING RETURNING incident_id",
                [(i.id, i.cycle, m.deadline, m.kind, m.level, from_ms(m.due)) for i, m in due],
                returning=True,
            )
            inserted: list[bool] = []
            while True:
                inserted.append(cur.fetchone() is not None)
                if not cur.nextset():
                    break
        fresh = [pair for pair, new in zip(due, inserted, strict=True) if new]
        for incident, mark in due:
            self._stored_marks[incident.id].add(
                (incident.cycle, mark.deadline, mark.kind, mark.level)
            )
        stats.marks += len(fresh)
        by_kind: dict[str, dict[str, _Notice]] = defaultdict(lambda: defaultdict(_Notice))
        for incident, mark in fresh:
            contract = self.rules.sla.by_name(incident.contract)
            assert contract is not None
            kind, roles = _announcement(contract, mark)
            for recipient in recipient_keys(roles, incident):
                notice = by_kind[kind][recipient]
                if incident.id not in notice.incident_ids:
                    notice.incident_ids.append(incident.id)
                notice.items.append(
                    {**_item(incident), "deadline": mark.deadline, "level": mark.level,
                     "due_at": from_ms(mark.due).isoformat(), "contract": contract.name}
                )  # fmt: skip
        first_event: dict[tuple[int, str, str, int], int] = {}
        for kind, groups in by_kind.items():
            events = self._write_notices(kind, groups, at, stats)
            for recipient, event_id in events.items():
                for item in groups[recipient].items:
                    mark_key = (item["incident_id"], item["deadline"], kind, item["level"])
                    first_event.setdefault(mark_key, event_id)
        cycle_of = {i.id: i.cycle for i, _ in fresh}
        with self.conn.cursor() as cur:
            cur.executemany(
                "UPDATE incident_sla SET event_id = %s WHERE incident_id = %s AND cycle = %s"
                " AND deadline = %s AND kind = %s AND level = %s AND event_id IS NULL",
                [
                    (event_id, incident_id, cycle_of[incident_id], deadline, _MARK_KIND[k], level)
                    for (incident_id, deadline, k, level), event_id in first_event.items()
                ],
            )


#: Notification kind of each mark kind, and back.
_EVENT_KIND = {"warning": "sla_warning", "breach": "sla_breach", "escalation": "escalation"}
_MARK_KIND = {v: k for k, v in _EVENT_KIND.items()}


def _announcement(contract: SlaContract, mark: Mark) -> tuple[str, Sequence[str]]:
    if mark.kind == "warning":
        return "sla_warning", contract.warning_recipients
    if mark.kind == "breach":
        return "sla_breach", contract.breach_recipients
    return "escalation", contract.escalation[mark.level - 1].recipients


def _item(incident: Incident) -> dict[str, Any]:
    return {
        "incident_id": incident.id,
        "device_id": incident.device_id,
        "branch_id": incident.branch_id,
        "subbranch_id": incident.subbranch_id,
        "vendor": incident.vendor,
        "class": incident.cls,
        "cause": incident.cause,
        "started_at": incident.started_at.isoformat(),
    }
