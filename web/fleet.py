"""The fleet as the console shows it: the inventory and every device's current state, kept
in memory and refreshed incrementally, so the wall aggregates 100,000 devices without a
full read per request.

The current state of a device is its last state run (atmfleet/store/runs.py): the state
it last reported, unless it has been silent longer than the rules' heartbeat timeout
(``timeout_factor`` x its heartbeat) or its latest presence message says offline, then
``offline``; a device that never reported is ``unknown``. A refresh reads only the runs
and presence messages that changed since the previous one (the range index on runs, the
time index on presence).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from psycopg_pool import ConnectionPool

from atmfleet.store.audit import User
from web.scope import sees

#: The wall's colours: each reported state, and the two the console infers.
STATES = ("in_service", "degraded", "fault", "cash_out", "deposit_full", "supervisor",
          "maintenance", "planned_maintenance", "comms_down", "closed", "powered_off",
          "offline", "unknown")  # fmt: skip
#: How the wall orders states (a tile shows the worst; closed by schedule and no data
#: colour a tile only when nothing else is in it).
SEVERITY = {"fault": 0, "cash_out": 1, "deposit_full": 1, "offline": 2, "comms_down": 2,
            "powered_off": 2, "degraded": 3, "maintenance": 4, "supervisor": 4,
            "planned_maintenance": 5, "in_service": 8, "closed": 9, "unknown": 10}  # fmt: skip
#: Late telemetry: a refresh rereads this far before the previous one.
OVERLAP = timedelta(seconds=30)

log = logging.getLogger(__name__)


@dataclass(slots=True)
class DeviceRow:
    id: str
    branch: str
    subbranch: str
    type: str
    vendor: str
    model: str
    placement: str
    heartbeat_s: int


@dataclass
class Inventory:
    devices: dict[str, DeviceRow] = field(default_factory=dict)
    branches: dict[str, tuple[str, str]] = field(default_factory=dict)  # id -> (name, sub)
    subbranches: dict[str, tuple[str, str]] = field(default_factory=dict)  # id -> (name, tier)
    types: list[str] = field(default_factory=list)
    vendors: list[str] = field(default_factory=list)
    by_subbranch: dict[str, list[DeviceRow]] = field(default_factory=dict)
    by_branch: dict[str, list[DeviceRow]] = field(default_factory=dict)


@dataclass(slots=True)
class Seen:
    state: str
    last: datetime
    silent_after: float  # epoch seconds: past it, the device is offline (heartbeat timeout)


class Fleet:
    """The shared snapshot; every method that answers a user takes the user and answers
    only within their scope."""

    def __init__(
        self,
        pool: ConnectionPool[Any],
        timeout_factor: float,
        state_refresh_s: float,
        inventory_refresh_s: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._pool = pool
        self._factor = timeout_factor
        self._state_every = state_refresh_s
        self._inv_every = inventory_refresh_s
        self._clock = clock
        self._lock = threading.Lock()
        self.inventory = Inventory()
        self._inv_at = -1e18
        self._seen: dict[str, Seen] = {}
        self._presence: dict[str, tuple[bool, datetime]] = {}
        self._since: datetime | None = None
        self._state_at = -1e18
        self.now: datetime | None = None
        self._states: dict[str, str] = {}
        self._sub_counts: dict[str, dict[str, int]] = {}
        self._branch_counts: dict[str, dict[str, int]] = {}
        self._now_s = 0.0
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()

    # ------------------------------------------------------------------ refresh

    def fresh(self) -> Fleet:
        """The snapshot; refreshed first by the caller when no thread keeps it fresh."""
        if self._thread is None or self.now is None:
            self._refresh()
        return self

    def _refresh(self) -> None:
        """Refresh what is older than its interval (one caller at a time)."""
        now = self._clock()
        if now - self._inv_at < self._inv_every and now - self._state_at < self._state_every:
            return
        with self._lock:
            now = self._clock()
            with self._pool.connection() as conn:
                if now - self._inv_at >= self._inv_every:
                    self._load_inventory(conn)
                    self._inv_at = now
                    self._state_at = -1e18  # new devices get their states at once
                if now - self._state_at >= self._state_every:
                    self._load_states(conn)
                    self._state_at = now

    def start(self) -> None:
        """Load everything now, then keep it fresh from a thread: requests never wait for a
        refresh (a live fleet changes most devices' runs within any few seconds)."""
        self.fresh()
        if self._thread is None:
            self._thread = threading.Thread(target=self._loop, name="fleet-refresh", daemon=True)
            self._thread.start()

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)

    def _loop(self) -> None:
        while not self._stop.wait(min(self._state_every, self._inv_every)):
            try:
                self._refresh()
            except Exception:  # a database hiccup: the snapshot stays, the next pass retries
                log.warning("refreshing the fleet snapshot failed", exc_info=True)

    def invalidate(self) -> None:
        self._inv_at = self._state_at = -1e18

    def _load_inventory(self, conn: Any) -> None:
        inv = Inventory()
        for i, n, t in conn.execute("SELECT id, name, tier FROM subbranches"):
            inv.subbranches[i] = (n, t)
        for i, n, s in conn.execute("SELECT id, name, subbranch FROM branches"):
            inv.branches[i] = (n, s)
        with conn.cursor(binary=True) as cur:
            cur.execute(
                "SELECT id, branch, type, vendor, model, placement, heartbeat_s FROM devices"
                " WHERE decommissioned IS NULL OR decommissioned >= current_date ORDER BY id"
            )
            for i, b, t, v, m, p, hb in cur:
                sub = inv.branches.get(b, ("", ""))[1]
                inv.devices[i] = DeviceRow(i, b, sub, t, v, m, p, hb)
        for d in inv.devices.values():
            inv.by_subbranch.setdefault(d.subbranch, []).append(d)
            inv.by_branch.setdefault(d.branch, []).append(d)
        inv.types = sorted({d.type for d in inv.devices.values()})
        inv.vendors = sorted({d.vendor for d in inv.devices.values()})
        self.inventory = inv

    def _load_states(self, conn: Any) -> None:
        since = self._since
        with conn.cursor(binary=True) as cur:
            now = cur.execute("SELECT now()").fetchone()[0]
            if since is None:
                cur.execute(
                    "SELECT DISTINCT ON (device_id) device_id, state, last_ts, heartbeat_s"
                    " FROM state_runs ORDER BY device_id, start_ts DESC, start_seq DESC"
                )
            else:
                cur.execute(
                    "SELECT DISTINCT ON (device_id) device_id, state, last_ts, heartbeat_s"
                    " FROM state_runs WHERE tstzrange(start_ts, last_ts, '[]')"
                    " && tstzrange(%s, NULL) ORDER BY device_id, start_ts DESC, start_seq DESC",
                    (since,),
                )
            factor = self._factor
            for device_id, state, last, hb in cur:
                old = self._seen.get(device_id)
                if old is None or last >= old.last:
                    self._seen[device_id] = Seen(
                        state, last, last.timestamp() + factor * max(hb, 1)
                    )
            cur.execute(
                "SELECT DISTINCT ON (device_id) device_id, status = 'online',"
                " presence_at(will, ts, received_at) AS at FROM presence"
                " WHERE presence_at(will, ts, received_at) >= %s"
                " ORDER BY device_id, presence_at(will, ts, received_at) DESC",
                (since if since is not None else datetime.min.replace(tzinfo=now.tzinfo),),
            )
            for device_id, online, at in cur:
                old_p = self._presence.get(device_id)
                if old_p is None or at >= old_p[1]:
                    self._presence[device_id] = (online, at)
        self._since = now - OVERLAP
        self.now = now
        self._now_s = now.timestamp()
        states = {d: self._compute(d) for d in self.inventory.devices}
        # Counts per sub-branch and per branch, for the wall without a filter.
        by_sub: dict[str, dict[str, int]] = {}
        by_branch: dict[str, dict[str, int]] = {}
        for d in self.inventory.devices.values():
            st = states[d.id]
            g = by_sub.setdefault(d.subbranch, {})
            g[st] = g.get(st, 0) + 1
            g = by_branch.setdefault(d.branch, {})
            g[st] = g.get(st, 0) + 1
        self._states, self._sub_counts, self._branch_counts = states, by_sub, by_branch

    # -------------------------------------------------------------------- reads

    def state_of(self, device_id: str) -> str:
        got = self._states.get(device_id)
        return got if got is not None else self._compute(device_id)

    def _compute(self, device_id: str) -> str:
        seen = self._seen.get(device_id)
        if seen is None:
            return "unknown"
        presence = self._presence.get(device_id)
        if presence is not None and not presence[0] and presence[1] > seen.last:
            return "offline"
        if self._now_s > seen.silent_after:
            return "offline"
        return seen.state

    def last_seen(self, device_id: str) -> datetime | None:
        seen = self._seen.get(device_id)
        return None if seen is None else seen.last

    def visible(
        self, user: User, subbranch: str | None = None, branch: str | None = None
    ) -> Iterable[DeviceRow]:
        """The devices the user may see (the scope check of every wall read), narrowed to
        a sub-branch or branch."""
        inv = self.inventory
        if branch:
            chosen: Iterable[DeviceRow] = inv.by_branch.get(branch, [])
        elif subbranch:
            chosen = inv.by_subbranch.get(subbranch, [])
        elif user.scope_kind == "subbranch":
            return inv.by_subbranch.get(user.scope_id or "", [])
        elif user.scope_kind == "branch":
            return inv.by_branch.get(user.scope_id or "", [])
        else:
            return inv.devices.values()
        if user.scope_kind == "fleet":
            return chosen
        return [d for d in chosen if sees(user, d.subbranch, d.branch)]

    def choices(self, user: User, subbranch: str | None) -> tuple[list[str], list[str]]:
        """The sub-branches and branches (of ``subbranch``, or all) the filters offer."""
        inv = self.inventory
        subs = sorted(s for s in inv.by_subbranch if sees(user, s, None)
                      or (user.scope_kind == "branch"
                          and inv.branches.get(user.scope_id or "", ("", ""))[1] == s))  # fmt: skip
        branches = sorted(
            b for b, (_, sub) in inv.branches.items()
            if (not subbranch or sub == subbranch) and sees(user, sub, b) and b in inv.by_branch
        )  # fmt: skip
        return subs, branches

    def device(self, user: User, device_id: str) -> DeviceRow | None:
        """The device, or None when it does not exist or is outside the user's scope."""
        d = self.inventory.devices.get(device_id)
        if d is None or not sees(user, d.subbranch, d.branch):
            return None
        return d

    def _aggregated(
        self, user: User, level: str, subbranch: str | None, inv: Inventory
    ) -> dict[str, Any]:
        """The wall without a filter, from the counts kept at refresh."""
        if level == "fleet":
            if user.scope_kind == "fleet":
                keys = list(self._sub_counts)
            elif user.scope_kind == "subbranch":
                keys = [user.scope_id or ""]
            else:
                keys = []  # a branch user: its branch's sub-branch, counted below
            source, names = self._sub_counts, inv.subbranches
            groups = {k: source[k] for k in keys if k in source}
            if user.scope_kind == "branch":
                b = user.scope_id or ""
                sub = inv.branches.get(b, ("", ""))[1]
                if b in self._branch_counts:
                    groups = {sub: self._branch_counts[b]}
        else:
            names = inv.branches
            groups = {}
            for b, per_state in self._branch_counts.items():
                if inv.branches.get(b, ("", ""))[1] != subbranch:
                    continue
                if not sees(user, subbranch, b):
                    continue
                groups[b] = per_state
        counts: dict[str, int] = {}
        for g in groups.values():
            for st, n in g.items():
                counts[st] = counts.get(st, 0) + n
        tiles = [
            {"id": k, "name": names.get(k, ("", ""))[0], "total": sum(v.values()),
             "counts": dict(v), "worst": min(v, key=lambda st: SEVERITY.get(st, 11))}
            for k, v in sorted(groups.items())
        ]  # fmt: skip
        return {
            "level": level, "total": sum(counts.values()), "counts": counts, "tiles": tiles,
            "devices": [], "device_total": 0, "page": 1, "pages": 1,
            "as_of": None if self.now is None else self.now.isoformat(),
        }  # fmt: skip

    def wall(
        self,
        user: User,
        subbranch: str | None = None,
        branch: str | None = None,
        type_: str | None = None,
        vendor: str | None = None,
        state: str | None = None,
        page: int = 1,
        page_size: int = 200,
    ) -> dict[str, Any]:
        """The wall at one level: sub-branches (fleet), branches (a sub-branch) or devices
        (a branch, or any filter down to devices), with counts by state, paged."""
        inv = self.inventory
        counts: dict[str, int] = {}
        groups: dict[str, dict[str, int]] = {}
        level = "branch" if branch else ("subbranch" if subbranch else "fleet")
        listed: list[tuple[DeviceRow, str]] = []
        states = self._states
        if level != "branch" and not (type_ or vendor or state):
            return self._aggregated(user, level, subbranch, inv)
        for d in self.visible(user, subbranch, branch):
            if subbranch and d.subbranch != subbranch:
                continue
            if type_ and d.type != type_:
                continue
            if vendor and d.vendor != vendor:
                continue
            s = states.get(d.id) or self._compute(d.id)
            if state and s != state:
                continue
            counts[s] = counts.get(s, 0) + 1
            key = d.subbranch if level == "fleet" else d.branch
            g = groups.setdefault(key, {})
            g[s] = g.get(s, 0) + 1
            if level == "branch" or state:
                listed.append((d, s))
        names = inv.subbranches if level == "fleet" else inv.branches
        tiles = [
            {"id": k, "name": names.get(k, ("", ""))[0], "total": sum(v.values()),
             "counts": v, "worst": min(v, key=lambda s: SEVERITY.get(s, 11))}
            for k, v in sorted(groups.items())
        ]  # fmt: skip
        listed.sort(key=lambda x: (SEVERITY.get(x[1], 11), x[0].id))
        pages = max(1, -(-len(listed) // page_size))
        page = min(max(page, 1), pages)
        chunk = listed[(page - 1) * page_size : page * page_size]
        return {
            "level": level,
            "total": sum(counts.values()),
            "counts": counts,
            "tiles": tiles,
            "devices": [
                {
                    "id": d.id,
                    "branch": d.branch,
                    "subbranch": d.subbranch,
                    "type": d.type,
                    "vendor": d.vendor,
                    "model": d.model,
                    "state": s,
                }
                for d, s in chunk
            ],
            "device_total": len(listed),
            "page": page,
            "pages": pages,
            "as_of": None if self.now is None else self.now.isoformat(),
        }
