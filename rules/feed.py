"""The SQL feed: reads the store and hands the pure core plain values (docs/kpis.md,
"Feeding the engine"). Every query is in ``rules/queries.sql``.

:class:`Feed` reads; the ``*_for`` functions below put a read and the pure core together
(one device timeline per device, then :mod:`rules.uptime`, :mod:`rules.lowyield`...), so
the command line, the bulletins and the tests compute an indicator the same way.

Context: a timeline needs the points just outside the period (a silent gap across an edge
is judged whole). The feed reads runs, presence and outages from ``context`` before the
period to ``context`` after it (at most up to the horizon), where ``context`` is the
longest heartbeat timeout a device can have (``timeout_factor`` x the protocol's largest
``heartbeat_s``; 3 h by default): a point further away cannot change the period except
through a gap longer than any timeout, which is offline either way. (One exception, in
the core's own rule: after such a gap, a birth followed later by a state message carries
the state last seen before the gap; the feed then sees no state before the gap.)
"""

from __future__ import annotations

import gc
import hashlib
import json
import logging
import re
import struct
from collections.abc import Callable, Iterable, Iterator, MutableMapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from decimal import Decimal
from functools import cache, wraps
from importlib import resources
from typing import Any, ParamSpec, TypeVar

import psycopg
import psycopg.sql

from atmfleet.errors import ConfigError
from atmfleet.inventory import (
    Branch,
    BranchKind,
    Device,
    DeviceType,
    Inventory,
    Placement,
    SubBranch,
    Tier,
)
from atmfleet.protocol import StateMessage
from atmfleet.store.runs import RUN_GAP
from atmfleet.store.unregistered import unregistered_count
from rules.config import DaysCounted, Rules
from rules.labels import STATE_LABEL, Label
from rules.lowyield import DeviceDays, WindowSums, YieldFlag, evaluate, flag_of, window_bounds
from rules.substitution import CounterCounts, DeviceCounts
from rules.timeline import (
    STATE,
    Interval,
    Point,
    PowerRestored,
    Presence,
    Span,
    StateRun,
    from_ms,
    merge_spans,
    ms,
    points_totals,
    timeline_of_points,
)
from rules.uptime import (
    Uptime,
    UptimePolicy,
    WindowSpans,
    daily_uptime,
    day_span,
    days,
    uptime_from_totals,
)
from rules.vendors import HistoryRow, IncidentCycle, IncidentRow, cycles_from_events

log = logging.getLogger(__name__)

DAY_MS = 86_400_000
#: The longest heartbeat a device may declare (the protocol's bound on heartbeat_s).
MAX_HEARTBEAT_S = next(
    int(m.le) for m in StateMessage.model_fields["heartbeat_s"].metadata if hasattr(m, "le")
)
#: One run of ``runs_by_device``: start and last (µs since 2000-01-01), start_seq, heartbeat_s.
_RUN = struct.Struct("!qqqi")
#: 2000-01-01 (PostgreSQL's epoch of its binary timestamps) in µs since 1970-01-01.
_PG_EPOCH_US = 946_684_800_000_000
_NAME = re.compile(r"^-- name: ([a-z_]+)\s*$", re.MULTILINE)
#: work_mem for ``kept_sums`` alone: its hash table holds about 500 bytes a device (48
#: MiB at 100,000 devices, in each parallel worker), held in memory up to this (times
#: the server's hash_mem_multiplier) instead of spilled to disk.
KEPT_SUMS_WORK_MEM = "128MB"


@contextmanager
def gc_paused() -> Iterator[None]:
    """No cyclic garbage collection inside: reading a fleet allocates millions of small
    tuples and dicts (none of them in a cycle), and every collection the allocations
    trigger walks every object alive; at 100,000 devices that more than doubled the
    Python time of a day's uptime. Process-wide while it lasts; nests."""
    if not gc.isenabled():
        yield
        return
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


_P = ParamSpec("_P")
_R = TypeVar("_R")


def _without_gc(fn: Callable[_P, _R]) -> Callable[_P, _R]:
    @wraps(fn)
    def run(*args: _P.args, **kwargs: _P.kwargs) -> _R:
        with gc_paused():
            return fn(*args, **kwargs)

    return run


@cache
def queries() -> dict[str, str]:
    """The named queries of ``queries.sql``."""
    text = resources.files("rules").joinpath("queries.sql").read_text(encoding="utf-8")
    parts = _NAME.split(text)
    return {name: body.strip() for name, body in zip(parts[1::2], parts[2::2], strict=True)}


#: The columns of ``inventory_devices``, in its order (the model's fields, less ``gateway``).
_DEVICE_COLUMNS = (
    "id", "branch", "type", "placement", "vendor", "model", "commissioned", "decommissioned",
    "service_window", "deposit_capable", "heartbeat_s",
)  # fmt: skip


def _devices(rows: Iterable[tuple[Any, ...]]) -> tuple[Device, ...]:
    """``Device.model_construct(id=..., ...)`` of each row of ``inventory_devices``
    (enums converted), without its per-field loop: the same ``__dict__`` (the fields in
    the model's order, the defaults of those not read) and the same fields set, in a
    tenth of the time at 100,000 devices."""
    fields = list(Device.model_fields)
    n = len(_DEVICE_COLUMNS)
    # The columns are the model's first fields, in its order; the rest take defaults.
    assert tuple(fields[:n]) == _DEVICE_COLUMNS and not Device.__pydantic_post_init__
    defaults = [
        (name, Device.model_fields[name].get_default(call_default_factory=True))
        for name in fields[n:]
    ]
    types = {t.value: t for t in DeviceType}
    placements = {p.value: p for p in Placement}
    new = Device.__new__
    setattr_ = object.__setattr__
    # One fields-set for every device read (they all set the same fields) instead of
    # one each (728 bytes, 73 MB of a 100,000-device fleet): a frozen model never
    # changes it, and model_copy copies it (as simulator.fleet does for its devices).
    fields_set = set(_DEVICE_COLUMNS)
    out = []
    for row in rows:
        values = dict(zip(_DEVICE_COLUMNS, row, strict=True))
        values["type"] = types[values["type"]]
        values["placement"] = placements[values["placement"]]
        for name, default in defaults:
            values[name] = default
        m = new(Device)
        setattr_(m, "__dict__", values)
        setattr_(m, "__pydantic_fields_set__", fields_set)
        setattr_(m, "__pydantic_extra__", None)
        setattr_(m, "__pydantic_private__", None)
        out.append(m)
    return tuple(out)


@dataclass(slots=True)
class DeviceInputs:
    """What one device's timeline is built from."""

    runs: list[StateRun] = field(default_factory=list)
    presence: list[Presence] = field(default_factory=list)
    power: list[PowerRestored] = field(default_factory=list)
    stops: list[Span] = field(default_factory=list)  # approved registered planned stops


#: One device's kept day: (available ms, scheduled ms, counted financial transactions).
KeptDay = tuple[int, int, int]


@dataclass(slots=True)
class Window:
    """One device's days of a window, aligned to its first day (None: not known yet)."""

    available: list[int | None]
    scheduled: list[int | None]
    financial: list[int | None]

    @classmethod
    def empty(cls, n: int) -> Window:
        return cls([None] * n, [None] * n, [None] * n)


@dataclass(frozen=True, slots=True)
class ApprovedStop:
    """An approved planned stop of the register (stops/), as the bulletins list it."""

    id: int
    device_id: str | None
    branch_id: str | None
    subbranch: str | None
    start: int  # ms
    end: int  # ms
    reason: str
    requester: str
    approver: str
    retroactive: bool


@dataclass(frozen=True, slots=True)
class TxnDay:
    """Counted transactions of one device on one local day."""

    financial: int = 0
    non_financial: int = 0
    fee: Decimal = Decimal("0")
    fee_txns: int = 0


def _canonical(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _canonical(v) for k, v in sorted(value.items(), key=lambda kv: str(kv[0]))}
    if isinstance(value, (set, frozenset)):
        return sorted((_canonical(v) for v in value), key=lambda v: json.dumps(v, default=str))
    if isinstance(value, (list, tuple)):
        return [_canonical(v) for v in value]
    return value


def rules_text(rules: Rules) -> str:
    """The rules as text that is the same in every process for the same rules (sets
    sorted: their order depends on the process's string hashing)."""
    return json.dumps(
        _canonical(rules.model_dump(mode="python")), sort_keys=True, default=str, ensure_ascii=False
    )


#: The kept columns after the device and the day, with their types, as in ``kept_stage``
#: (rules/queries.sql): A, S and the financial count (every kept day), then the 开机率 in
#: full (migration 0018).
_KEPT_COLUMNS = (
    ("available_ms", "int8"), ("scheduled_ms", "int8"), ("financial", "int8"),
    ("tech_scheduled_ms", "int8"), ("tech_available_ms", "int8"),
    ("planned_excluded_ms", "int8"), ("monitored_ms", "int8"), ("labels", "text"),
    ("label_ms", "int8[]"),
)  # fmt: skip


class Feed:
    """Reads the store through one connection (a snapshot per call is not needed: each
    read is one statement)."""

    def __init__(self, conn: psycopg.Connection, rules: Rules) -> None:
        if rules.heartbeat.timeout_factor < RUN_GAP:
            raise ConfigError(
                f"heartbeat.timeout_factor: {rules.heartbeat.timeout_factor} is below "
                f"{RUN_GAP}, the gap at which the store breaks state runs; allowed: >= {RUN_GAP}"
            )
        self._conn = conn
        self.rules = rules
        self._aggregate: bool | None = None
        # False once this login may not keep days (a reader: serve, bulletins, Grafana's
        # role): the days are then computed each time, as correct, only slower.
        self.may_keep = True
        self._monitoring_start: tuple[int | None] | None = None

    def _rows(self, name: str, **params: Any) -> list[tuple[Any, ...]]:
        with self._conn.cursor(binary=True) as cur:
            return cur.execute(queries()[name], params).fetchall()

    def now_ms(self) -> int:
        return ms(self._rows("now")[0][0])

    def monitoring_start_ms(self) -> int | None:
        """When monitoring began: the earliest collector run or stored state/presence
        message (None: nothing yet). Read once per feed."""
        if self._monitoring_start is None:
            value = self._rows("monitoring_start")[0][0]
            self._monitoring_start = (None if value is None else int(value),)
        return self._monitoring_start[0]

    def unregistered_count(self) -> int:
        """Device ids not in the inventory that sent messages (atmfleet.store.unregistered)."""
        return unregistered_count(self._conn)

    def unknown_before(self, lo: int) -> list[Span]:
        """The unknown span before monitoring began, as an outage from ``lo`` (none when
        monitoring began before ``lo``)."""
        start = self.monitoring_start_ms()
        if start is None:
            return [(lo, 2**62)]
        return [(lo, start)] if start > lo else []

    @_without_gc
    def inventory(self) -> Inventory:
        """The inventory as loaded into the store (``atmfleet db load-inventory``)."""
        subs = tuple(
            SubBranch.model_construct(id=i, name=n, tier=Tier(t))
            for i, n, t in self._rows("inventory_subbranches")
        )
        branches = tuple(
            Branch.model_construct(id=i, name=n, subbranch=s, kind=BranchKind(k), parent=p)
            for i, n, s, k, p in self._rows("inventory_branches")
        )
        devices = _devices(self._rows("inventory_devices"))
        return Inventory.model_construct(subbranches=subs, branches=branches, devices=devices)

    def context_ms(self) -> int:
        """How far outside a period the feed reads: the longest heartbeat timeout a
        device can have (see the module docstring)."""
        return int(self.rules.heartbeat.timeout_factor * MAX_HEARTBEAT_S * 1000) + 1

    def timeline_inputs(
        self, lo: int, hi: int, horizon: int
    ) -> tuple[dict[str, DeviceInputs], list[Span]]:
        """Runs, presence, power cuts and approved planned stops per device, and collector
        outages, for a timeline
        of ``[lo, hi)`` evaluated at ``horizon``."""
        ctx = self.context_ms()
        a, b = from_ms(lo - ctx), from_ms(max(min(horizon, hi + ctx), lo))
        out: dict[str, DeviceInputs] = {}
        current: DeviceInputs | None = None
        current_id = None
        for device_id, start, seq, last, state, hb in self._rows("runs", lo=a, hi=b):
            if device_id != current_id:
                current_id = device_id
                current = out.get(device_id)
                if current is None:
                    current = out[device_id] = DeviceInputs()
            assert current is not None
            current.runs.append(StateRun(start, last, state, hb, seq))
        others, outages = self._other_inputs(lo, a, b, out)
        return others, outages

    def _other_inputs(
        self, lo: int, a: datetime, b: datetime, out: dict[str, DeviceInputs] | None = None
    ) -> tuple[dict[str, DeviceInputs], list[Span]]:
        """Presence, power cuts and approved planned stops per device (into ``out``), and
        the collector outages, read from ``a`` (``lo`` for power and stops) to ``b``."""
        out = {} if out is None else out
        for device_id, ts, online, will, received in self._rows("presence", lo=a, hi=b):
            inputs = out.get(device_id)
            if inputs is None:
                inputs = out[device_id] = DeviceInputs()
            inputs.presence.append(Presence(ts, online, will, received))
        for device_id, since, ts in self._rows("power", lo=from_ms(lo), hi=b):
            inputs = out.get(device_id)
            if inputs is None:
                inputs = out[device_id] = DeviceInputs()
            inputs.power.append(PowerRestored(since, ts))
        for device_id, start, end in self._rows("planned_stops", lo=from_ms(lo), hi=b):
            inputs = out.get(device_id)
            if inputs is None:
                inputs = out[device_id] = DeviceInputs()
            inputs.stops.append((start, end))
        outages = self.unknown_before(lo - self.context_ms())
        outages += [(s, e) for s, e in self._rows("outages", lo=a, hi=b)]
        return out, outages

    def timeline_points(
        self, lo: int, hi: int, horizon: int
    ) -> tuple[dict[str, list[Point]], dict[str, DeviceInputs], list[Span]]:
        """:meth:`timeline_inputs` with the runs as timeline points per device
        (:func:`rules.timeline.timeline_of_points`; the inputs hold no runs)."""
        ctx = self.context_ms()
        a, b = from_ms(lo - ctx), from_ms(max(min(horizon, hi + ctx), lo))
        points: dict[str, list[Point]] = {}
        unpack = _RUN.iter_unpack
        label = STATE_LABEL
        for device_id, packed, states in self._rows("runs_by_device", lo=a, hi=b):
            # floor(epoch ms) of the microseconds since 2000, as the runs query computes it
            points[device_id] = [
                ((s0 + _PG_EPOCH_US) // 1000, STATE, q, (s1 + _PG_EPOCH_US) // 1000, label[st], h)
                for (s0, q, s1, h), st in zip(unpack(packed), states.split(","), strict=True)
            ]
        out, outages = self._other_inputs(lo, a, b)
        return points, out, outages

    def warning_spans(
        self, lo: int, hi: int, horizon: int, params: dict[str, list[str]]
    ) -> dict[str, list[Span]]:
        """资源预警率: per device, the spans of state messages reporting a warning (to the
        next state message; open-ended: ``2**62``), for a timeline of ``[lo, hi)`` at
        ``horizon``; ``params`` from :meth:`rules.resource.WarningPolicy.query_params`."""
        # Before the period: the context (the message in force at lo may be that old).
        # After it: nothing (a span still open at the end is cut by the timeline there).
        a, b = from_ms(lo - self.context_ms()), from_ms(max(min(horizon, hi), lo))
        out: dict[str, list[Span]] = {}
        for device_id, start, until in self._rows("warning_spans", lo=a, hi=b, **params):
            out.setdefault(device_id, []).append((start, 2**62 if until is None else until))
        return out

    @_without_gc
    def txn_days(self, first: date, last: date) -> dict[str, dict[date, TxnDay]]:
        """Counted transactions per device and local day, ``first``..``last`` inclusive."""
        tz = self.rules.tz
        rows = self._rows(
            "txn_days",
            lo=from_ms(day_span(first, tz)[0]),
            hi=from_ms(day_span(last, tz)[1]),
            financial=sorted(t.value for t in self.rules.transactions.financial_types),
            counted=sorted(r.value for r in self.rules.transactions.counted_results),
        )
        out: dict[str, dict[date, TxnDay]] = {}
        local: dict[datetime, date] = {}
        for device_id, bucket, fin, non_fin, fee, fee_txns in rows:
            day = local.get(bucket)
            if day is None:
                day = local[bucket] = bucket.astimezone(tz).date()
            out.setdefault(device_id, {})[day] = TxnDay(int(fin), int(non_fin), fee, int(fee_txns))
        return out

    def fingerprint(self) -> str:
        """Identifies what a stored closed day was computed with (rules, inventory,
        recorded outages): a change makes a new cache, never a stale answer."""
        devices, outages = self._rows("fingerprint")[0]
        digest = hashlib.sha256(rules_text(self.rules).encode())
        # v2: days before monitoring began are unknown, not down.
        # v3: the rules in a canonical form (a set's order changed from one process to
        # the next, so no process found the days another had kept).
        digest.update(f"|{devices}|{outages}|{self.monitoring_start_ms()}|v3".encode())
        return digest.hexdigest()[:32]

    @_without_gc
    def kept_days(
        self, fingerprint: str, first: date, last: date, ids: Sequence[str] | None = None
    ) -> dict[str, Window]:
        """Kept closed days per device in ``first``..``last`` (days not kept are None);
        ``ids``: of those devices only (default: every device)."""
        n = (last - first).days + 1
        in_order = list(range(n))
        out: dict[str, Window] = {}
        params: dict[str, Any] = {"fingerprint": fingerprint, "first": first, "last": last}
        if ids is not None:
            params["ids"] = list(ids)
        with self._conn.cursor(binary=True) as cur:
            cur.execute(queries()["kept_days" if ids is None else "kept_days_of"], params)
            for device_id, values in cur:
                k = len(values) // 4
                if k == n and values[:k] == in_order:  # every day, in order: the window
                    out[device_id] = Window(
                        values[k : 2 * k], values[2 * k : 3 * k], values[3 * k :]
                    )
                    continue
                w = Window.empty(n)
                for j in range(k):
                    i = values[j]
                    w.available[i] = values[k + j]
                    w.scheduled[i] = values[2 * k + j]
                    w.financial[i] = values[3 * k + j]
                out[device_id] = w
        return out

    @_without_gc
    def kept_sums(
        self, fingerprint: str, first: date, last: date, in_service_only: bool
    ) -> dict[str, tuple[WindowSums, int]]:
        """Per device, the low-yield sums of its kept closed days in ``first``..``last``
        (every kept day added: :class:`rules.lowyield.WindowSums`) and which days are
        kept, as bits (bit i: ``first`` + i days; only the first 63 days)."""
        out: dict[str, tuple[WindowSums, int]] = {}
        params = {"fingerprint": fingerprint, "first": first, "last": last,
                  "in_service": in_service_only}  # fmt: skip
        with self._conn.cursor(binary=True) as cur:
            # The sums group 30 rows a device (3 M for 100,000 devices) into one per
            # device: with the server's default work_mem the hash table spilled to disk
            # in 9 batches and the partial groups were sorted on disk (twice as slow);
            # JIT compiled for longer than it saved. Both only for this statement: the
            # transaction's settings are put back after it (an error ends the
            # transaction, and its settings with it).
            before = cur.execute(
                "SELECT current_setting('work_mem'), current_setting('jit')"
            ).fetchone()
            cur.execute(
                "SELECT set_config('work_mem', %s, true), set_config('jit', 'off', true)",
                (KEPT_SUMS_WORK_MEM,),
            )
            rows = cur.execute(queries()["kept_sums"], params).fetchall()
            assert before is not None
            cur.execute(
                "SELECT set_config('work_mem', %s, true), set_config('jit', %s, true)", before
            )
        for device_id, monitored, a, s, counted, fin, kept in rows:
            out[device_id] = (WindowSums(monitored, a, s, counted, fin), kept or 0)
        return out

    @_without_gc
    def financial_days(self, first: date, last: date) -> dict[str, dict[date, int]]:
        """Counted financial transactions per device and local day."""
        tz = self.rules.tz
        out: dict[str, dict[date, int]] = {}
        local: dict[datetime, date] = {}
        for device_id, bucket, n in self._rows(
            "financial_days",
            lo=from_ms(day_span(first, tz)[0]),
            hi=from_ms(day_span(last, tz)[1]),
            financial=sorted(t.value for t in self.rules.transactions.financial_types),
            counted=sorted(r.value for r in self.rules.transactions.counted_results),
        ):
            day = local.get(bucket)
            if day is None:
                day = local[bucket] = bucket.astimezone(tz).date()
            out.setdefault(device_id, {})[day] = n
        return out

    def settle_txn_days(self, first: date, last: date) -> None:
        """Make txn_daily exact for ``first``..``last`` before those days are kept: on
        TimescaleDB refresh the continuous aggregate (late rows in an already materialised
        bucket only appear at a refresh); a no-op on plain PostgreSQL (a table kept by a
        trigger). Commits the connection's open transaction."""
        self._conn.commit()
        if self._aggregate is None:
            with self._conn.cursor() as cur:
                try:
                    row = cur.execute(queries()["txn_daily_is_aggregate"]).fetchone()
                    self._aggregate = bool(row and row[0])
                finally:
                    self._conn.commit()
        if not self._aggregate:
            return
        tz = self.rules.tz
        self._conn.autocommit = True
        try:
            self._conn.execute(
                queries()["refresh_txn_daily"],
                {"lo": from_ms(day_span(first, tz)[0]), "hi": from_ms(day_span(last, tz)[1])},
            )
        except psycopg.errors.InsufficientPrivilege:
            self._cannot_keep("refresh txn_daily")
        finally:
            self._conn.autocommit = False

    def _cannot_keep(self, what: str) -> None:
        if self.may_keep:
            log.info(
                "this database login may not %s (a reader): closed days are computed each "
                "time, not kept; `atmfleet kpi keep-days` as the writer keeps them",
                what,
            )
        self.may_keep = False

    def keep_days(self, fingerprint: str, values: Sequence[tuple[str, date, KeptDay]]) -> None:
        """Keep closed days per device; committed at once. Nothing is kept (and nothing
        fails) where the login may only read."""
        if not values or not self.may_keep:
            return
        try:
            self._keep_days(fingerprint, values)
        except psycopg.errors.InsufficientPrivilege:
            self._cannot_keep("keep days in kpi_device_days")

    def _keep_days(self, fingerprint: str, values: Sequence[tuple[str, date, KeptDay]]) -> None:
        rows = [(device_id, day, *value) for device_id, day, value in values]
        self._upsert_kept(fingerprint, "keep_days", _KEPT_COLUMNS[:3], rows)

    def keep_uptime_days(
        self, fingerprint: str, values: Sequence[tuple[str, date, Uptime, int]]
    ) -> None:
        """Keep closed days per device with their 开机率 in full (device, day, its
        uptime that day, counted financial transactions); committed at once. Nothing is
        kept (and nothing fails) where the login may only read."""
        if not values or not self.may_keep:
            return
        rows = [
            (device_id, day, u.available_ms, u.scheduled_ms, fin, u.tech_scheduled_ms,
             u.tech_available_ms, u.planned_excluded_ms, u.monitored_ms, ",".join(u.by_label),
             list(u.by_label.values()))
            for device_id, day, u, fin in values
        ]  # fmt: skip
        try:
            self._upsert_kept(fingerprint, "keep_uptime_days", _KEPT_COLUMNS, rows)
        except psycopg.errors.InsufficientPrivilege:
            self._cannot_keep("keep days in kpi_device_days")

    def _upsert_kept(
        self,
        fingerprint: str,
        query: str,
        columns: Sequence[tuple[str, str]],
        rows: list[tuple[Any, ...]],
    ) -> None:
        """Upsert kept days (device, day, then ``columns``) with ``query``, in one
        transaction: the rows copied in binary into a temporary table (not sent as
        arrays, element by element), then inserted from it in the key's order (each
        index walked page after page, not hit at random)."""
        copy_sql = psycopg.sql.SQL(
            "COPY kept_stage (device_id, day, {}) FROM STDIN (FORMAT BINARY)"
        )
        names = psycopg.sql.SQL(", ").join(psycopg.sql.Identifier(c) for c, _ in columns)
        with self._conn.transaction(), self._conn.cursor() as cur:
            cur.execute("DROP TABLE IF EXISTS pg_temp.kept_stage")
            cur.execute(queries()["kept_stage"])
            with cur.copy(copy_sql.format(names)) as copy:
                copy.set_types(["text", "date", *(t for _, t in columns)])
                for row in rows:
                    copy.write_row(row)
            cur.execute(queries()[query], {"fingerprint": fingerprint})

    @_without_gc
    def kept_uptime(self, fingerprint: str, day: date) -> dict[str, tuple[Uptime, int]]:
        """The devices whose closed ``day`` is kept in full: its uptime (as computed:
        :func:`uptime_of_day`) and its counted financial transactions."""
        out: dict[str, tuple[Uptime, int]] = {}
        names: dict[str, tuple[Label, ...]] = {}  # a fleet's days share a few label lists
        for device_id, a, s, ts, ta, planned, monitored, text, values, fin in self._rows(
            "kept_uptime", fingerprint=fingerprint, day=day
        ):
            labels = names.get(text)
            if labels is None:
                labels = names[text] = tuple(Label(x) for x in text.split(",")) if text else ()
            by_label = dict(zip(labels, values, strict=True))
            out[device_id] = (Uptime(by_label, s, a, ts, ta, planned, monitored, 1), fin)
        return out

    def kept_warnings(
        self, fingerprint: str, first: date, last: date
    ) -> dict[str, dict[date, tuple[int, int]]]:
        """资源预警率 of kept closed days: per device and day, (W ms, S ms)."""
        out: dict[str, dict[date, tuple[int, int]]] = {}
        for device_id, day, warning, scheduled in self._rows(
            "kept_warnings", fingerprint=fingerprint, first=first, last=last
        ):
            out.setdefault(device_id, {})[day] = (warning, scheduled)
        return out

    @_without_gc
    def kept_scheduled(
        self, fingerprint: str, first: date, last: date
    ) -> dict[str, dict[date, tuple[int | None, int]]]:
        """Every kept closed day: per device and day, (W ms or None where not computed,
        S ms)."""
        out: dict[str, dict[date, tuple[int | None, int]]] = {}
        for device_id, day, warning, scheduled in self._rows(
            "kept_scheduled", fingerprint=fingerprint, first=first, last=last
        ):
            got = out.get(device_id)
            if got is None:
                got = out[device_id] = {}
            got[day] = (warning, scheduled)
        return out

    def keep_warnings(self, fingerprint: str, values: Sequence[tuple[str, date, int, int]]) -> None:
        """Keep W (with the S it was computed over) of closed days in the kept days that
        hold them; committed at once. Nothing is kept where the login may only read."""
        if not values or not self.may_keep:
            return
        try:
            with self._conn.transaction(), self._conn.cursor() as cur:
                # One row per device and day, found by its key: the planner otherwise
                # hashes every kept day of every device (all the history) for the join.
                cur.execute("SET LOCAL enable_hashjoin = off")
                cur.execute("SET LOCAL enable_mergejoin = off")
                cur.execute(
                    queries()["keep_warnings"],
                    {
                        "fingerprint": fingerprint,
                        "ids": [v[0] for v in values],
                        "days": [v[1] for v in values],
                        "warning": [v[2] for v in values],
                        "scheduled": [v[3] for v in values],
                    },
                )
        except psycopg.errors.InsufficientPrivilege:
            self._cannot_keep("keep resource warnings in kpi_device_days")

    def counters(self, first: date, last: date) -> dict[date, dict[str, CounterCounts]]:
        out: dict[date, dict[str, CounterCounts]] = {}
        for branch_id, day, fin, non_fin in self._rows("counters", first=first, last=last):
            out.setdefault(day, {})[branch_id] = CounterCounts(fin, non_fin)
        return out

    def approved_stops(self, lo: int, hi: int) -> list[ApprovedStop]:
        """Approved registered planned stops overlapping ``[lo, hi)``, by start."""
        return [
            ApprovedStop(*row)
            for row in self._rows("approved_stops", lo=from_ms(lo), hi=from_ms(hi))
        ]

    def incident_cycles(self, lo: int, hi: int) -> list[IncidentCycle]:
        """The cycles of the incidents opened or reopened in ``[lo, hi)`` (ms), with their
        history and breach marks (rules/vendors.py)."""
        rows = [
            IncidentRow(int(i), d, c, cause, comp, int(start), rep)
            for i, d, c, cause, comp, start, rep in self._rows(
                "incident_rows", lo=from_ms(lo), hi=from_ms(hi)
            )
        ]
        if not rows:
            return []
        ids = [r.id for r in rows]
        history = [
            HistoryRow(int(i), int(at), kind, detail or {})
            for i, at, kind, detail in self._rows("incident_history", ids=ids)
        ]
        breaches = [(int(i), int(c), d) for i, c, d in self._rows("incident_breaches", ids=ids)]
        return cycles_from_events(rows, history, breaches)

    def _txn_params(self, first: date, last: date) -> dict[str, Any]:
        """The parameters of a txn_daily read of the local days ``first``..``last``."""
        tz = self.rules.tz
        return {
            "lo": from_ms(day_span(first, tz)[0]),
            "hi": from_ms(day_span(last, tz)[1]),
            "financial": sorted(t.value for t in self.rules.transactions.financial_types),
            "counted": sorted(r.value for r in self.rules.transactions.counted_results),
        }

    @_without_gc
    def txn_period(self, first: date, last: date) -> dict[str, TxnDay]:
        """Counted transactions per device summed over ``first``..``last`` (the sums of
        :meth:`txn_days` over the period, added up by the database)."""
        return {
            device_id: TxnDay(int(fin), int(non_fin), fee, int(fee_txns))
            for device_id, fin, non_fin, fee, fee_txns in self._rows(
                "txn_period", **self._txn_params(first, last)
            )
        }

    @_without_gc
    def txn_unit_days(
        self, first: date, last: date, devices: Sequence[tuple[str, str, bool, date, date | None]]
    ) -> list[tuple[str, date, date, date | None, int, int, int]]:
        """Counted transactions of ``devices`` (id, unit, on-site, commissioned,
        decommissioned) per unit, local day and commissioning dates, ``first``..``last``:
        (unit, day, commissioned, decommissioned, financial, non-financial, on-site
        financial)."""
        tz = self.rules.tz
        local: dict[datetime, date] = {}
        out = []
        for unit, bucket, since, until, fin, non_fin, on_site in self._rows(
            "txn_unit_days", **self._txn_params(first, last),
            ids=[d[0] for d in devices], units=[d[1] for d in devices],
            on_site=[d[2] for d in devices], commissioned=[d[3] for d in devices],
            decommissioned=[d[4] for d in devices],
        ):  # fmt: skip
            day = local.get(bucket)
            if day is None:
                day = local[bucket] = bucket.astimezone(tz).date()
            out.append((unit, day, since, until, fin, non_fin, on_site))
        return out


# ------------------------------------------------------------------ feed + pure core


def timelines(
    feed: Feed, devices: Iterable[Device], lo: int, hi: int, horizon: int
) -> dict[str, list[Interval]]:
    """Each device's labelled timeline of ``[lo, min(hi, horizon))``: the same as
    :func:`rules.timeline.build_timeline` of :meth:`Feed.timeline_inputs`, with the runs
    read packed per device (:meth:`Feed.timeline_points`)."""
    points, others, outages = feed.timeline_points(lo, hi, horizon)
    return _timelines_of(feed, devices, lo, hi, horizon, points, others, merge_spans(outages))


def _timelines_of(
    feed: Feed,
    devices: Iterable[Device],
    lo: int,
    hi: int,
    horizon: int,
    points: dict[str, list[Point]],
    others: dict[str, DeviceInputs],
    merged: list[Span],
) -> dict[str, list[Interval]]:
    factor = feed.rules.heartbeat.timeout_factor
    empty = DeviceInputs()
    out: dict[str, list[Interval]] = {}
    for d in devices:
        got = others.get(d.id, empty)
        out[d.id] = timeline_of_points(
            points.get(d.id, [])[:], lo, hi, horizon=horizon, presence=got.presence,
            power=got.power, outages=merged, timeout_factor=factor,
            default_heartbeat_s=d.heartbeat_s, stops=got.stops,
        )  # fmt: skip
    return out


class Timelines(MutableMapping[str, list[Interval]]):
    """Timelines per device, some built, the others built the first time any is asked
    for (``build``: those timelines, from the points already read), so a computation
    that never reads a timeline (``atmfleet kpi uptime``) does not build them. ``clear``
    forgets them all, built or not."""

    def __init__(
        self,
        built: dict[str, list[Interval]],
        build: Callable[[], dict[str, list[Interval]]] | None = None,
    ) -> None:
        self._lines = built
        self._build = build

    def _all(self) -> dict[str, list[Interval]]:
        if self._build is not None:
            build, self._build = self._build, None
            self._lines.update(build())
        return self._lines

    def __getitem__(self, key: str) -> list[Interval]:
        return self._all()[key]

    def __setitem__(self, key: str, value: list[Interval]) -> None:
        self._all()[key] = value

    def __delitem__(self, key: str) -> None:
        del self._all()[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._all())

    def __len__(self) -> int:
        return len(self._all())

    def clear(self) -> None:
        self._build = None
        self._lines.clear()

    @property
    def built(self) -> int:
        """How many are built so far."""
        return len(self._lines)


@dataclass
class UptimeDays:
    """Per device, the uptime of each local day of a period (and the timelines behind it)."""

    days: list[date]
    per_device: dict[str, dict[date, Uptime]]
    timelines: MutableMapping[str, list[Interval]]


@_without_gc
def uptime_for(
    feed: Feed, devices: Sequence[Device], first: date, last: date, horizon: int
) -> UptimeDays:
    """开机率 inputs: every device's uptime for each local day ``first``..``last``; time
    after ``horizon`` (now, for today) is not counted.

    A device with no power cut or registered stop in the read, when no collector outage
    (nor unknown time before monitoring began) touches it, has its time by label added
    up as its timeline's sweep goes (:func:`rules.timeline.points_totals`), and its
    timeline is built from the same points only if asked for (:class:`Timelines`); the
    others have their timeline built and summed (:func:`rules.uptime.daily_uptime`).
    Both give the same figures (:func:`uptime_for_reference`, every timeline built)."""
    rules = feed.rules
    tz = rules.tz
    lo, hi = day_span(first, tz)[0], day_span(last, tz)[1]
    windows = WindowSpans(tz)
    policy = UptimePolicy.from_rules(rules)
    period = days(first, last)
    points, others, outages = feed.timeline_points(lo, hi, horizon)
    merged = merge_spans(outages)
    factor = rules.heartbeat.timeout_factor
    spec_for = rules.service_windows.spec_for
    specs: dict[tuple[Any, ...], str] = {}
    scheduled = windows.scheduled
    from_totals = uptime_from_totals
    empty = DeviceInputs()
    per_device: dict[str, dict[date, Uptime]] = {}
    built: dict[str, list[Interval]] = {}
    swept: list[Device] = []  # whose timeline was not built
    for d in devices:
        got = others.get(d.id, empty)
        if merged or got.power or got.stops:
            line = built[d.id] = timeline_of_points(
                points.get(d.id, [])[:], lo, hi, horizon=horizon, presence=got.presence,
                power=got.power, outages=merged, timeout_factor=factor,
                default_heartbeat_s=d.heartbeat_s, stops=got.stops,
            )  # fmt: skip
            per_device[d.id] = daily_uptime(d, line, period, rules, windows, policy, horizon)
            continue
        key = (d.service_window, d.placement, d.type)  # all spec_for reads
        spec = specs.get(key)
        if spec is None:
            spec = specs[key] = spec_for(d)
        totals = points_totals(
            points.get(d.id, [])[:], lo, hi, horizon,
            [scheduled(spec, d, day, horizon) for day in period], presence=got.presence,
            timeout_factor=factor, default_heartbeat_s=d.heartbeat_s,
        )  # fmt: skip
        per_device[d.id] = {
            day: from_totals(t, policy) for day, t in zip(period, totals, strict=True)
        }
        swept.append(d)
    build = None
    if swept:
        build = lambda: _timelines_of(feed, swept, lo, hi, horizon, points, others, merged)  # noqa: E731
    return UptimeDays(period, per_device, Timelines(built, build))


@_without_gc
def uptime_for_reference(
    feed: Feed, devices: Sequence[Device], first: date, last: date, horizon: int
) -> UptimeDays:
    """:func:`uptime_for` with every device's timeline built and swept in Python (what
    the database's totals must equal)."""
    rules = feed.rules
    tz = rules.tz
    lo, hi = day_span(first, tz)[0], day_span(last, tz)[1]
    lines = timelines(feed, devices, lo, hi, horizon)
    windows = WindowSpans(tz)
    policy = UptimePolicy.from_rules(rules)
    period = days(first, last)
    per_device = {
        d.id: daily_uptime(d, lines[d.id], period, rules, windows, policy, horizon) for d in devices
    }
    return UptimeDays(period, per_device, lines)


@_without_gc
def uptime_of_day(
    feed: Feed, devices: Sequence[Device], day: date, horizon: int
) -> tuple[UptimeDays, dict[str, int] | None]:
    """:func:`uptime_for` of one local day, and for a closed day each device's counted
    financial transactions too. A closed day kept in full (by the daily ``kpi
    keep-days``, or a low-yield evaluation that computed it: :func:`computed_days`) is
    read, one row per device (:meth:`Feed.kept_uptime`); the devices not kept are
    computed, not kept here: keeping a fleet's day rewrites 100,000 scattered rows
    (seconds to tens of seconds of the database's time), more than computing it. The
    timelines of the devices read are built (read again) only if asked for. An open day
    is computed (None: no financial count)."""
    if not closed(feed, day, horizon):
        return uptime_for(feed, devices, day, day, horizon), None
    kept = feed.kept_uptime(feed.fingerprint(), day)
    missing = [d for d in devices if d.id not in kept]
    computed: UptimeDays | None = None
    if missing:
        computed = uptime_for(feed, missing, day, day, horizon)
        fin = feed.financial_days(day, day)
        for d in missing:
            kept[d.id] = (computed.per_device[d.id][day], fin.get(d.id, {}).get(day, 0))
    per_device: dict[str, dict[date, Uptime]] = {}
    financial: dict[str, int] = {}
    for d in devices:
        up, n = kept[d.id]
        per_device[d.id] = {day: up}
        financial[d.id] = n
    read = [d for d in devices if computed is None or d.id not in computed.per_device]

    def build() -> dict[str, list[Interval]]:
        lo, hi = day_span(day, feed.rules.tz)
        out = timelines(feed, read, lo, hi, horizon) if read else {}
        if computed is not None:
            out.update(computed.timelines)
        return {d.id: out[d.id] for d in devices}

    return UptimeDays([day], per_device, Timelines({}, build)), financial


def device_counts(txn: dict[str, dict[date, TxnDay]]) -> dict[str, DeviceCounts]:
    """Counted transactions per device over all the days given."""
    out: dict[str, DeviceCounts] = {}
    for device_id, per_day in txn.items():
        out[device_id] = DeviceCounts(
            sum(t.financial for t in per_day.values()),
            sum(t.non_financial for t in per_day.values()),
        )
    return out


def closed(feed: Feed, day: date, horizon: int) -> bool:
    """A day no longer changes when nothing later than a context after it can reach back
    into it, and the store invalidates a day on late telemetry only within a day."""
    context = feed.context_ms()
    return context <= DAY_MS + 1 and day_span(day, feed.rules.tz)[1] + context <= horizon


@_without_gc
def window_days(
    feed: Feed,
    devices: Sequence[Device],
    first: date,
    last: date,
    horizon: int,
    known: UptimeDays | None = None,
) -> dict[str, Window]:
    """Per device, the local days ``first``..``last``: available ms, scheduled ms and
    counted financial transactions. Kept closed days are read; the others are computed
    (uptime from the timeline, transactions from txn_daily) and kept when closed.
    ``known``: the uptime of one day already computed for these devices (at ``horizon``),
    used instead of computing that day again."""
    period = days(first, last)
    n = len(period)
    fp = feed.fingerprint()
    out = feed.kept_days(fp, first, last)
    missing: dict[int, list[Device]] = {}
    for d in devices:
        w = out.get(d.id)
        if w is None:
            w = out[d.id] = Window.empty(n)
        for i in range(n):
            if w.available[i] is None:
                missing.setdefault(i, []).append(d)
    for d, i, (a, s, f) in computed_days(feed, fp, period, missing, horizon, known):
        w = out[d.id]
        w.available[i], w.scheduled[i], w.financial[i] = a, s, f
    return out


def computed_days(
    feed: Feed,
    fingerprint: str,
    period: Sequence[date],
    missing: dict[int, list[Device]],
    horizon: int,
    known: UptimeDays | None = None,
) -> list[tuple[Device, int, KeptDay]]:
    """The days of ``period`` not kept (``missing``: day index -> devices), computed
    (uptime from the timeline, transactions from txn_daily) and kept when closed, as
    (device, day index, value); ``known``: see :func:`window_days`."""
    got: list[tuple[Device, int, KeptDay]] = []
    to_keep: list[tuple[str, date, Uptime, int]] = []
    for i in sorted(missing):
        day, chosen = period[i], missing[i]
        keep = closed(feed, day, horizon)
        if keep:
            feed.settle_txn_days(day, day)
        if (
            known is not None
            and known.days == [day]
            and all(d.id in known.per_device for d in chosen)
        ):
            up = known
        else:
            up = uptime_for(feed, chosen, day, day, horizon)
        fin = feed.financial_days(day, day)
        for d in chosen:
            u = up.per_device[d.id][day]
            value = (u.available_ms, u.scheduled_ms, fin.get(d.id, {}).get(day, 0))
            got.append((d, i, value))
            if keep:
                to_keep.append((d.id, day, u, value[2]))
    feed.keep_uptime_days(fingerprint, to_keep)
    return got


@_without_gc
def low_yield_for(
    feed: Feed,
    inventory: Inventory,
    devices: Sequence[Device],
    on: date,
    horizon: int,
    known: UptimeDays | None = None,
) -> list[YieldFlag]:
    """低产/低效 flags of ``devices`` on ``on``, over the rules' trailing window
    (``known``: see :func:`window_days`).

    The same flags as :func:`rules.lowyield.evaluate` of each device's
    :func:`window_days`, read cheaper: a device in the fleet the whole window is judged
    on the sums of its kept days (:meth:`Feed.kept_sums`, added up by the database) plus
    the days computed; only a device commissioned or decommissioned inside the window
    has its days read one by one."""
    rules = feed.rules
    window = rules.low_yield.window_days
    first = on - timedelta(days=window - 1)
    period = days(first, on)
    n = len(period)
    in_service_only = rules.low_yield.days_counted is DaysCounted.IN_SERVICE
    fp = feed.fingerprint()
    if n > 63:  # more days than kept_sums marks: every day read one by one
        return _low_yield_by_day(feed, inventory, devices, on, horizon, known)
    kept = feed.kept_sums(fp, first, on, in_service_only)
    sums: dict[str, WindowSums] = {}
    partial: list[Device] = []
    missing: dict[int, list[Device]] = {}
    not_kept: dict[int, list[int]] = {}  # kept bits -> the days not kept
    for d in devices:
        got = kept.get(d.id)
        bits = 0
        if got is None:
            sums[d.id] = WindowSums()
        else:
            sums[d.id], bits = got
        offsets = not_kept.get(bits)
        if offsets is None:
            offsets = not_kept[bits] = [i for i in range(n) if not bits >> i & 1]
        for i in offsets:
            missing.setdefault(i, []).append(d)
        if window_bounds(d.commissioned, d.decommissioned, first, on, window, n) != (0, n):
            partial.append(d)
    computed = computed_days(feed, fp, period, missing, horizon, known)
    windows: dict[str, Window] = {}
    if partial:
        windows = feed.kept_days(fp, first, on, [d.id for d in partial])
        for d in partial:
            windows.setdefault(d.id, Window.empty(n))
    for d, i, (a, s, f) in computed:
        w = windows.get(d.id)
        if w is not None:
            w.available[i], w.scheduled[i], w.financial[i] = a, s, f
        else:
            sums[d.id].add(a, s, f, in_service_only)
    flags: list[YieldFlag] = []
    targets = rules.uptime.targets
    by_branch: dict[str, float] = {}  # a branch's devices share their tier's target
    for d in devices:
        target = by_branch.get(d.branch)
        if target is None:
            target = by_branch[d.branch] = targets[inventory.subbranch_of(d).tier]
        w = windows.get(d.id)
        if w is None:
            flags.append(flag_of(d.id, d, d.type, sums[d.id], on, rules.low_yield, target))
            continue
        flags.append(evaluate(_series(d, first, w), on, rules.low_yield, target))
    return flags


def _series(d: Device, first: date, w: Window) -> DeviceDays:
    """A device's day-by-day window as the low-yield rule reads it (complete once computed)."""
    return DeviceDays(
        device_id=d.id,
        type=d.type,
        commissioned=d.commissioned,
        decommissioned=d.decommissioned,
        first_day=first,
        financial=w.financial,  # type: ignore[arg-type]
        available_ms=w.available,  # type: ignore[arg-type]
        scheduled_ms=w.scheduled,  # type: ignore[arg-type]
    )


@_without_gc
def _low_yield_by_day(
    feed: Feed,
    inventory: Inventory,
    devices: Sequence[Device],
    on: date,
    horizon: int,
    known: UptimeDays | None = None,
) -> list[YieldFlag]:
    """:func:`low_yield_for` from every device's :func:`window_days`, one day at a time
    (the reference the sums must equal; used for a window longer than 63 days)."""
    rules = feed.rules
    window = rules.low_yield.window_days
    first = on - timedelta(days=window - 1)
    per_day = window_days(feed, devices, first, on, horizon, known)
    flags: list[YieldFlag] = []
    targets = rules.uptime.targets
    for d in devices:
        tier = inventory.subbranch_of(d).tier
        flags.append(evaluate(_series(d, first, per_day[d.id]), on, rules.low_yield, targets[tier]))
    return flags
