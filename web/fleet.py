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
#: How the wall groups states into colours (a tile shows the worst).
SEVERITY = {"fault": 0, "cash_out": 1, "deposit_full": 1, "offline": 2, "comms_down": 2,
            "powered_off": 2, "degraded": 3, "maintenance": 4, "supervisor": 4,
            "planned_maintenance": 5, "closed": 7, "in_service": 8, "unknown": 9}  # fmt: skip
#: Late telemetry: a refresh rereads this far before the previous one.
OVERLAP = timedelta(minutes=2)


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


@dataclass(slots=True)
class Seen:
    state: str
    last: datetime
    heartbeat_s: int
    offline_at: datetime | None = None  # latest presence offline, if after last


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

    # ------------------------------------------------------------------ refresh

    def fresh(self) -> Fleet:
        """Refresh what is older than its interval (one caller at a time), then self."""
        now = self._clock()
        if now - self._inv_at < self._inv_every and now - self._state_at < self._state_every:
            return self
        with self._lock:
            now = self._clock()
            with self._pool.connection() as conn:
                if now - self._inv_at >= self._inv_every:
                    self._load_inventory(conn)
                    self._inv_at = now
                if now - self._state_at >= self._state_every:
                    self._load_states(conn)
                    self._state_at = now
        return self

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
            for device_id, state, last, hb in cur:
                old = self._seen.get(device_id)
                if old is None or last >= old.last:
                    self._seen[device_id] = Seen(state, last, hb)
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

    # -------------------------------------------------------------------- reads

    def state_of(self, device_id: str) -> str:
        seen = self._seen.get(device_id)
        if seen is None:
            return "unknown"
        presence = self._presence.get(device_id)
        if presence is not None and not presence[0] and presence[1] > seen.last:
            return "offline"
        now = self.now
        if now is not None and now - seen.last > timedelta(
            seconds=self._factor * max(seen.heartbeat_s, 1)
        ):
            return "offline"
        return seen.state

    def last_seen(self, device_id: str) -> datetime | None:
        seen = self._seen.get(device_id)
        return None if seen is None else seen.last

    def visible(self, user: User) -> Iterable[DeviceRow]:
        """The devices the user may see (the scope check of every wall read)."""
        devices = self.inventory.devices.values()
        if user.scope_kind == "fleet":
            return devices
        if user.scope_kind == "subbranch":
            return (d for d in devices if d.subbranch == user.scope_id)
        return (d for d in devices if d.branch == user.scope_id)

    def device(self, user: User, device_id: str) -> DeviceRow | None:
        """The device, or None when it does not exist or is outside the user's scope."""
        d = self.inventory.devices.get(device_id)
        if d is None or not sees(user, d.subbranch, d.branch):
            return None
        return d

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
        for d in self.visible(user):
            if subbranch and d.subbranch != subbranch:
                continue
            if branch and d.branch != branch:
                continue
            if type_ and d.type != type_:
                continue
            if vendor and d.vendor != vendor:
                continue
            s = self.state_of(d.id)
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
             "counts": v, "worst": min(v, key=lambda s: SEVERITY.get(s, 10))}
            for k, v in sorted(groups.items())
        ]  # fmt: skip
        listed.sort(key=lambda x: (SEVERITY.get(x[1], 9), x[0].id))
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
