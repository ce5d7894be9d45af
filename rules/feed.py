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
import time
from collections.abc import (
    Callable,
    Collection,
    Iterable,
    Iterator,
    Mapping,
    MutableMapping,
    Sequence,
)
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from decimal import Decimal
from functools import cache, wraps
from importlib import resources
from itertools import repeat
from typing import Any, ParamSpec, TypeVar

import psycopg
import psycopg.sql
from pydantic import BaseModel

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
from atmfleet.store.runs import MAX_KEPT_CONTEXT_MS, RUN_GAP
from atmfleet.store.unregistered import unregistered_count
from rules.config import DaysCounted, Rules
from rules.fleet import in_fleet_during
from rules.labels import STATE_LABEL, Label
from rules.lowyield import DeviceDays, WindowSums, YieldFlag, evaluate, flag_maker
from rules.substitution import CounterCounts, DeviceCounts
from rules.timeline import (
    LABELS,
    STATE,
    Interval,
    Point,
    PointColumns,
    PowerRestored,
    Presence,
    Span,
    StateRun,
    from_ms,
    label_code,
    merge_spans,
    ms,
    points_totals,
    sweep_columns,
    timeline_of_points,
)
from rules.uptime import (
    FIGURES,
    Uptime,
    UptimePolicy,
    WindowSpans,
    daily_uptime,
    day_span,
    days,
    label_totals,
    uptime_columns,
    uptime_from_totals,
    uptime_of_sums,
)
from rules.vendors import HistoryRow, IncidentCycle, IncidentRow, cycles_from_events

log = logging.getLogger(__name__)

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


#: How long :meth:`Feed.settle_txn_days` waits for a concurrent refresh of txn_daily
#: (TimescaleDB's policy, another command) before it gives up.
REFRESH_WAIT_S = 60.0

_P = ParamSpec("_P")
_R = TypeVar("_R")
_M = TypeVar("_M", bound=BaseModel)


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


#: One fields-set for every device read, whichever call reads it (they all set the same
#: fields) instead of one each (728 bytes, 73 MB of a 100,000-device fleet): a frozen
#: model never changes it, and model_copy copies it (as simulator.fleet does).
_DEVICE_FIELDS_SET = set(_DEVICE_COLUMNS)


#: One fields-set each for every branch and sub-branch read (as for devices): a branch's
#: own set was 728 bytes, 24 MiB of a fleet's 34,091 branches.
_BRANCH_FIELDS_SET = set(Branch.model_fields)
_SUBBRANCH_FIELDS_SET = set(SubBranch.model_fields)


def subbranches(rows: Iterable[tuple[Any, ...]]) -> tuple[SubBranch, ...]:
    """``SubBranch.model_construct(id=..., name=..., tier=...)`` of each row of
    ``inventory_subbranches``, all sharing one fields-set."""
    return tuple(
        _constructed(SubBranch, _SUBBRANCH_FIELDS_SET, {"id": i, "name": n, "tier": Tier(t)})
        for i, n, t in rows
    )


def branches(rows: Iterable[tuple[Any, ...]]) -> tuple[Branch, ...]:
    """``Branch.model_construct(id=..., name=..., subbranch=..., kind=..., parent=...)`` of
    each row of ``inventory_branches``, all sharing one fields-set."""
    kinds = {k.value: k for k in BranchKind}
    return tuple(
        _constructed(
            Branch,
            _BRANCH_FIELDS_SET,
            {"id": i, "name": n, "subbranch": s, "kind": kinds[k], "parent": p},
        )
        for i, n, s, k, p in rows
    )


def _constructed(model: type[_M], fields_set: set[str], values: dict[str, Any]) -> _M:
    """``model.model_construct(**values)`` where ``values`` holds every field of the model
    in its order, with ``fields_set`` as its fields-set (shared: a frozen model never
    changes it, and model_copy copies it)."""
    m = model.__new__(model)
    object.__setattr__(m, "__dict__", values)
    object.__setattr__(m, "__pydantic_fields_set__", fields_set)
    object.__setattr__(m, "__pydantic_extra__", None)
    object.__setattr__(m, "__pydantic_private__", None)
    return m


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
    fields_set = _DEVICE_FIELDS_SET
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
#: NULL in COPY text.
_NULL = "\\N"
_COPY_ESCAPES = str.maketrans({"\\": "\\\\", "\t": "\\t", "\n": "\\n", "\r": "\\r"})


def _copy_escape(value: str) -> str:
    """``value`` as a field of COPY text (backslash, tab, newline and CR escaped)."""
    if "\\" in value or "\t" in value or "\n" in value or "\r" in value:
        return value.translate(_COPY_ESCAPES)
    return value


#: The low-yield window sums kept beside a day (migration 0022), in ``WindowSums`` order.
_WINDOW_COLUMNS = (
    ("win_monitored", "int4"), ("win_available_ms", "int8"), ("win_scheduled_ms", "int8"),
    ("win_counted", "int4"), ("win_financial", "int8"),
)  # fmt: skip
#: The window sums of a kept day that has none, as COPY text.
_NO_SUMS = "\t".join([_NULL] * len(_WINDOW_COLUMNS))


@contextmanager
def _statement_settings(cur: psycopg.Cursor[Any], serial: bool = False) -> Iterator[None]:
    """For the statements run inside: a work_mem of :data:`KEPT_SUMS_WORK_MEM` and no
    JIT, then the transaction's settings put back (an error ends the transaction, and
    its settings with it). The kept sums group 30 rows a device (3 M for 100,000
    devices) into one per device: with the server's default work_mem the hash table
    spilled to disk in 9 batches and the partial groups were sorted on disk (twice as
    slow); JIT compiled for longer than it saved. ``serial``: no parallel workers (on the
    spare connection, beside this process's own work: at 100,000 devices the parallel
    plan took 1.09 s against 1.28 s, in about 1.7 times the CPU, which the overlapped
    work then lacks)."""
    before = cur.execute(
        "SELECT current_setting('work_mem'), current_setting('jit'),"
        " current_setting('max_parallel_workers_per_gather')"
    ).fetchone()
    assert before is not None
    cur.execute(
        "SELECT set_config('work_mem', %s, true), set_config('jit', 'off', true),"
        " set_config('max_parallel_workers_per_gather', %s, true)",
        (KEPT_SUMS_WORK_MEM, "0" if serial else before[2]),
    )
    yield
    cur.execute(
        "SELECT set_config('work_mem', %s, true), set_config('jit', %s, true),"
        " set_config('max_parallel_workers_per_gather', %s, true)",
        before,
    )


#: A closed day to keep, one device's: (device id, day, its uptime, counted financial
#: transactions that day).
KeptValue = tuple[str, date, Uptime, int]


@dataclass
class DayRows:
    """Closed days to keep of one local day, as columns: rows ``rows`` of a day's
    :class:`DayColumns` (its figures, time by label and the order the sweep met the
    labels in) with their counted financial transactions. Written as COPY text made
    column by column (:meth:`lines`), without an :class:`~rules.uptime.Uptime` per
    device: the same text, line by line, as the device's ``KeptValue`` gives
    (tests/test_kept_day_rows.py)."""

    columns: DayColumns
    rows: Any  # numpy (m,) int64: rows of ``columns``
    financial: Any  # numpy (m,) int64

    @property
    def ids(self) -> list[str]:
        ids = self.columns.ids
        return [ids[r] for r in self.rows.tolist()]

    def __len__(self) -> int:
        return len(self.rows)

    def only(self, ids: Collection[str]) -> DayRows:
        """The rows of the devices ``ids``."""
        import numpy as np

        wanted = ids if isinstance(ids, (set, frozenset, dict)) else set(ids)
        keep = np.fromiter(map(wanted.__contains__, self.ids), bool, len(self.rows))
        return DayRows(self.columns, self.rows[keep], self.financial[keep])

    def lines(self, window: Mapping[str, WindowSums], window_day: date | None) -> Iterator[str]:
        """The rows as COPY text for ``kept_stage`` (``keep_uptime_days``), 8,192 lines
        at a time: each column made in one pass (numbers by ``str`` over a list), a
        device's labels found per pattern (the labels it has, in the order met; a
        fleet's day has few patterns), not per device."""
        cols = self.columns
        day = cols.day.isoformat()
        sums_too = window_day == cols.day and bool(window)
        for at in range(0, len(self.rows), 8192):
            rows = self.rows[at : at + 8192]
            ids = [cols.ids[r] for r in rows.tolist()]
            figures = cols.figures[rows]
            s, a, ts, ta, planned, monitored = (map(str, figures[:, k].tolist()) for k in range(6))
            fin = map(str, self.financial[at : at + 8192].tolist())
            labels, ms = _label_texts(
                cols.by_label[rows], None if cols.met is None else cols.met[rows]
            )
            if sums_too:
                win: Iterable[str] = [
                    _NO_SUMS if w is None else
                    f"{w.monitored}\t{w.available_ms}\t{w.scheduled_ms}\t{w.counted}\t{w.financial}"
                    for w in map(window.get, ids)
                ]  # fmt: skip
            else:
                win = repeat(_NO_SUMS)
            fields = zip(map(_copy_escape, ids), repeat(day), a, s, fin, ts, ta, planned,
                         monitored, labels, ms, win)  # fmt: skip
            yield "\n".join(map("\t".join, fields)) + "\n"


def _label_texts(by_label: Any, met: Any) -> tuple[list[str], list[str]]:
    """Per row of ``by_label`` (time by label code) the ``labels`` and ``label_ms``
    columns of a kept day as COPY text: the labels with time, joined by commas, in the
    order the sweep met them (``met``: per label its rank; None: :data:`LABELS` order),
    and their times as an array, as :meth:`Feed.keep_uptime_days` writes an Uptime's
    ``by_label``."""
    import numpy as np

    m, width = by_label.shape
    if met is None:
        order = np.broadcast_to(np.arange(width, dtype=np.int64), (m, width))
    else:
        order = np.argsort(met, axis=1, kind="stable")
    values = np.take_along_axis(by_label, order, axis=1)
    has = values != 0
    # A row's pattern: which label is at each place of its order, where it has time.
    key = ((order + 1) * has * (width + 1) ** np.arange(width, dtype=np.int64)).sum(axis=1)
    patterns, of_row = np.unique(key, return_inverse=True)
    labels: list[str] = [""] * m
    ms: list[str] = [""] * m
    for p in range(len(patterns)):
        at = np.flatnonzero(of_row == p)
        first = int(at[0])
        codes = order[first][has[first]].tolist()
        text = ",".join(LABELS[c] for c in codes)
        times = [map(str, by_label[at, c].tolist()) for c in codes]
        got = (
            ["{" + ",".join(t) + "}" for t in zip(*times, strict=True)]
            if codes
            else ["{}"] * len(at)
        )
        for row, t in zip(at.tolist(), got, strict=True):
            labels[row] = text
            ms[row] = t
    return labels, ms


def value_lines(
    values: Iterable[KeptValue], window: Mapping[str, WindowSums], window_day: date | None
) -> Iterator[str]:
    """Closed days to keep as COPY text for ``kept_stage`` (``keep_uptime_days``), a
    line per value, 8,192 at a time; ``window``: the window sums of the devices whose
    window ends ``window_day``, kept beside that day."""
    none = _NO_SUMS
    days: dict[date, str] = {}
    lines: list[str] = []
    for device_id, day, u, fin in values:
        text = days.get(day)
        if text is None:
            text = days[day] = day.isoformat()
        sums = window.get(device_id) if day == window_day else None
        by_label = u.by_label
        lines.append(
            f"{_copy_escape(device_id)}\t{text}\t{u.available_ms}\t{u.scheduled_ms}"
            f"\t{fin}\t{u.tech_scheduled_ms}\t{u.tech_available_ms}"
            f"\t{u.planned_excluded_ms}\t{u.monitored_ms}\t{','.join(by_label)}"
            f"\t{{{','.join(map(str, by_label.values()))}}}\t"
            + (none if sums is None else
               f"{sums.monitored}\t{sums.available_ms}\t{sums.scheduled_ms}"
               f"\t{sums.counted}\t{sums.financial}")
            + "\n"
        )  # fmt: skip
        if len(lines) == 8192:
            yield "".join(lines)
            lines.clear()
    if lines:
        yield "".join(lines)


@dataclass
class KeptRows:
    """Closed days to keep: ``values`` one by one, ``days`` as columns (:class:`DayRows`)."""

    values: list[KeptValue] = field(default_factory=list)
    days: list[DayRows] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.values) + sum(map(len, self.days))

    def only(self, ids: Collection[str]) -> KeptRows:
        """The rows of the devices ``ids``."""
        wanted = ids if isinstance(ids, (set, frozenset, dict)) else set(ids)
        return KeptRows(
            [v for v in self.values if v[0] in wanted], [d.only(wanted) for d in self.days]
        )

    def extend(self, other: KeptRows) -> None:
        self.values += other.values
        self.days += other.days


class Feed:
    """Reads the store through one connection (a snapshot per call is not needed: each
    read is one statement).

    ``spare``: opens a second connection to the same store. Given, a few statements of
    a fleet's evaluation run there on a thread of their own while this connection's
    work goes on (:meth:`soon`): the low-yield window's kept days added up while the day
    not kept is computed, and a computed day kept (:meth:`keep_uptime_days_soon`) while
    the flags and what follows are made. :meth:`close` waits for them (a write that
    failed raises there; it was one transaction: nothing of it is kept). Without it,
    every statement runs here, one after the other."""

    def __init__(
        self,
        conn: psycopg.Connection,
        rules: Rules,
        spare: Callable[[], psycopg.Connection] | None = None,
    ) -> None:
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
        self._spare = spare
        self._serial = False  # the spare's feed: its kept sums without parallel workers
        self._worker: ThreadPoolExecutor | None = None
        self._helper: Feed | None = None  # on the spare connection, opened by the worker
        self._writing: Future[None] | None = None  # a kept day being written there
        #: Work started early on the spare connection for a later call (low_yield_for's
        #: kept window: :func:`start_low_yield`), by key.
        self.started: dict[Any, tuple[Any, Future[Any]]] = {}

    def soon(self, fn: Callable[[Feed], _R]) -> Future[_R] | None:
        """``fn`` of a feed on the spare connection, run on the spare's thread (one call
        at a time, in the order asked); None without a spare connection (the caller runs
        it here). ``fn`` must read or write through the feed it is given only."""
        if self._spare is None:
            return None
        if self._helper is None:
            try:
                spare = self._spare()
            except (psycopg.Error, ConfigError) as exc:
                # No second connection to be had (a connection limit, say): one it is.
                log.info("no spare connection to the store (%s): one connection it is", exc)
                self._spare = None
                return None
            self._helper = Feed(spare, self.rules)
            self._helper._serial = True
            self._worker = ThreadPoolExecutor(1, thread_name_prefix="feed-spare")
        assert self._worker is not None
        return self._worker.submit(self._on_spare, self._helper, fn)

    def _on_spare(self, helper: Feed, fn: Callable[[Feed], _R]) -> _R:
        helper.may_keep = self.may_keep
        try:
            got = fn(helper)
        except BaseException:
            with suppress(psycopg.Error):
                helper._conn.rollback()
            raise
        # Its reads' transaction ended (no snapshot or lock held between calls).
        helper._conn.rollback()
        return got

    def keep_uptime_days_soon(
        self,
        fingerprint: str,
        values: Sequence[KeptValue] | KeptRows,
        window: Mapping[str, WindowSums] | None = None,
        window_day: date | None = None,
    ) -> None:
        """:meth:`keep_uptime_days`, on the spare connection while this one goes on
        (waited for by :meth:`wait_kept`, :meth:`close`, and before any other write of
        this feed); here and now without a spare connection. ``values`` and ``window``
        are not to be changed afterwards."""
        if not values or not self.may_keep:
            return
        self.wait_kept()
        # This connection's transaction ended first: it holds no lock the write could
        # wait for while this one waits for the write.
        self._conn.commit()
        writing = self.soon(lambda f: f.keep_uptime_days(fingerprint, values, window, window_day))
        if writing is None:
            self.keep_uptime_days(fingerprint, values, window, window_day)
            return
        self._writing = writing

    def wait_kept(self) -> None:
        """Wait for the day :meth:`keep_uptime_days_soon` is writing; its error raised
        here (the write was one transaction, rolled back: no part of the day kept)."""
        writing, self._writing = self._writing, None
        if writing is None:
            return
        writing.result()
        if self._helper is not None and not self._helper.may_keep:
            self.may_keep = False

    def close(self) -> None:
        """Wait for the work on the spare connection (a failed write raises), then close
        it. The feed's own connection is the caller's."""
        try:
            self.wait_kept()
        finally:
            started, self.started = list(self.started.values()), {}
            for _, future in started:
                future.cancel()
            if self._worker is not None:
                self._worker.shutdown(wait=True)
                self._worker = None
            if self._helper is not None:
                self._helper._conn.close()
                self._helper = None

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
        subs = subbranches(self._rows("inventory_subbranches"))
        branch_models = branches(self._rows("inventory_branches"))
        devices = _devices(self._rows("inventory_devices"))
        return Inventory.model_construct(subbranches=subs, branches=branch_models, devices=devices)

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
        self, lo: int, hi: int, horizon: int, only: Collection[str] | None = None
    ) -> tuple[dict[str, list[Point]], dict[str, DeviceInputs], list[Span]]:
        """:meth:`timeline_inputs` with the runs as timeline points per device
        (:func:`rules.timeline.timeline_of_points`; the inputs hold no runs); ``only``:
        the runs and inputs of those devices only (the outages are everyone's)."""
        ctx = self.context_ms()
        a, b = from_ms(lo - ctx), from_ms(max(min(horizon, hi + ctx), lo))
        points: dict[str, list[Point]] = {}
        unpack = _RUN.iter_unpack
        label = STATE_LABEL
        rows = (
            self._rows("runs_by_device", lo=a, hi=b)
            if only is None
            else self._rows("runs_by_device_of", lo=a, hi=b, ids=sorted(only))
        )
        for device_id, packed, states in rows:
            # floor(epoch ms) of the microseconds since 2000, as the runs query computes it
            points[device_id] = [
                ((s0 + _PG_EPOCH_US) // 1000, STATE, q, (s1 + _PG_EPOCH_US) // 1000, label[st], h)
                for (s0, q, s1, h), st in zip(unpack(packed), states.split(","), strict=True)
            ]
        out, outages = self._other_inputs(lo, a, b)
        if only is not None:
            out = {d: inputs for d, inputs in out.items() if d in only}
        return points, out, outages

    def up_between(self, lo: int, hi: int, states: Collection[str]) -> set[str]:
        """The devices whose timeline (of any period covering ``[lo, hi)``, at a horizon
        no earlier than ``hi``) is surely labelled by one of ``states`` (and not a power
        cut) at some moment of ``[lo, hi)``: a state run in one of them yields that time
        in the sweep. Give the states whose label is not a downtime cause: the devices
        not returned are then a superset of those down throughout ``[lo, hi)`` (the
        daily bulletin's down-for-long candidates), read without a timeline."""
        if hi <= lo:
            return set()
        rows = self._rows("up_between", lo=from_ms(lo), hi=from_ms(hi), states=sorted(states))
        return {device_id for (device_id,) in rows}

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
    def window_sums(self, fingerprint: str, day: date) -> dict[str, tuple[Any, ...]]:
        """The low-yield window sums kept beside ``day`` (migration 0022): per device
        whose window ending ``day`` was kept whole, the sums of its kept days, as
        :meth:`kept_sums` would add them up, as the row read: (device id, then the
        fields of :class:`rules.lowyield.WindowSums` in order; a fleet's rows are not
        made into 100,000 objects)."""
        return {row[0]: row for row in self._rows("window_sums", fingerprint=fingerprint, day=day)}

    def kept_on(self, fingerprint: str, day: date) -> set[str]:
        """The devices whose ``day`` is kept (under ``fingerprint``)."""
        return {row[0] for row in self._rows("kept_on", fingerprint=fingerprint, day=day)}

    @_without_gc
    def kept_sums(
        self,
        fingerprint: str,
        first: date,
        last: date,
        in_service_only: bool,
        ids: Sequence[str] | None = None,
    ) -> dict[str, tuple[WindowSums, int]]:
        """Per device, the low-yield sums of its kept closed days in ``first``..``last``
        (every kept day added: :class:`rules.lowyield.WindowSums`) and which days are
        kept, as bits (bit i: ``first`` + i days; only the first 63 days); ``ids``: of
        those devices only (default: every device)."""
        out: dict[str, tuple[WindowSums, int]] = {}
        params: dict[str, Any] = {
            "fingerprint": fingerprint, "first": first, "last": last,
            "in_service": in_service_only,
        }  # fmt: skip
        if ids is not None:
            params["ids"] = list(ids)
        with self._conn.cursor(binary=True) as cur, _statement_settings(cur, self._serial):
            query = queries()["kept_sums" if ids is None else "kept_sums_of"]
            rows = cur.execute(query, params).fetchall()
        for device_id, monitored, a, s, counted, fin, kept in rows:
            out[device_id] = (WindowSums(monitored, a, s, counted, fin), kept or 0)
        return out

    def kept_sums_slid(
        self, fingerprint: str, first: date, last: date, in_service_only: bool
    ) -> dict[str, tuple[WindowSums, int]]:
        """:meth:`kept_sums` of ``first``..``last`` for the devices whose window ending
        the day before ``last`` (``first`` - 1 .. ``last`` - 1) was kept whole, its sums
        kept beside that day: those sums slid by a day (the day leaving the window taken
        off, ``last`` added where it is kept), read from three days' rows instead of the
        window's. The same values and bits as :meth:`kept_sums` (tests/
        test_kpi_window_sums.py); for a window of at most 63 days."""
        n = (last - first).days + 1
        if not 2 <= n <= 63:
            return {}
        params = {
            "fingerprint": fingerprint, "before": last - timedelta(days=1),
            "drop": first - timedelta(days=1), "on": last, "in_service": in_service_only,
        }  # fmt: skip
        earlier = (1 << (n - 1)) - 1  # first .. last - 1: kept, as the whole window was
        out: dict[str, tuple[WindowSums, int]] = {}
        # None kept beside the day before (no evaluation of it yet): not the three days'
        # scan for nothing.
        if not self._rows("window_sums_any", fingerprint=fingerprint, day=params["before"])[0][0]:
            return out
        with self._conn.cursor(binary=True) as cur, _statement_settings(cur, self._serial):
            rows = cur.execute(queries()["kept_sums_slid"], params).fetchall()
        for device_id, monitored, a, s, counted, fin, on_kept in rows:
            bits = earlier | (1 << (n - 1)) if on_kept else earlier
            out[device_id] = (WindowSums(monitored, a, s, counted, fin), bits)
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
        self.wait_kept()
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
        span = {"lo": from_ms(day_span(first, tz)[0]), "hi": from_ms(day_span(last, tz)[1])}
        self._conn.autocommit = True
        try:
            # TimescaleDB refuses a refresh while another of the same aggregate overlaps
            # it (its refresh policy, another command): that one ends within seconds, so
            # wait for it and refresh then, for up to REFRESH_WAIT_S.
            deadline = time.monotonic() + REFRESH_WAIT_S
            pause = 0.05
            while True:
                try:
                    self._conn.execute(queries()["refresh_txn_daily"], span)
                    break
                except psycopg.errors.LockNotAvailable:
                    if time.monotonic() + pause > deadline:
                        raise
                    log.info("txn_daily: another refresh of these days is running; waiting")
                    time.sleep(pause)
                    pause = min(2 * pause, 1.0)
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
        self.wait_kept()
        if not values or not self.may_keep:
            return
        try:
            self._keep_days(fingerprint, values)
        except psycopg.errors.InsufficientPrivilege:
            self._cannot_keep("keep days in kpi_device_days")

    def _keep_days(self, fingerprint: str, values: Sequence[tuple[str, date, KeptDay]]) -> None:
        rows = [(device_id, day, *value) for device_id, day, value in values]
        self._upsert_kept(fingerprint, "keep_days", _KEPT_COLUMNS[:3], {r[1] for r in rows}, rows)

    def keep_uptime_days(
        self,
        fingerprint: str,
        values: Sequence[KeptValue] | KeptRows,
        window: Mapping[str, WindowSums] | None = None,
        window_day: date | None = None,
    ) -> None:
        """Keep closed days per device with their 开机率 in full (device, day, its
        uptime that day, counted financial transactions; or :class:`KeptRows`, some of
        them as a day's columns); committed at once. Nothing is kept (and nothing fails)
        where the login may only read. ``window``: per device, the low-yield sums of the
        window ending ``window_day`` once these days are kept (every day of it kept),
        kept beside that day."""
        self.wait_kept()
        if not len(values) or not self.may_keep:
            return
        window = window or {}
        rows = values if isinstance(values, KeptRows) else KeptRows(list(values))

        # The rows as COPY text, one line each (labels are identifiers: never escaped):
        # a tenth of the time of sending them value by value at 100,000 devices.
        def chunks() -> Iterator[str]:
            """The lines, 8,192 at a time (never the whole text at once)."""
            yield from value_lines(rows.values, window, window_day)
            for day_rows in rows.days:
                yield from day_rows.lines(window, window_day)

        try:
            self._upsert_kept(
                fingerprint,
                "keep_uptime_days",
                _KEPT_COLUMNS + _WINDOW_COLUMNS,
                {v[1] for v in rows.values} | {d.columns.day for d in rows.days},
                text=chunks(),
            )
        except psycopg.errors.InsufficientPrivilege:
            self._cannot_keep("keep days in kpi_device_days")

    def _upsert_kept(
        self,
        fingerprint: str,
        query: str,
        columns: Sequence[tuple[str, str]],
        days: Collection[date],
        rows: list[tuple[Any, ...]] | None = None,
        text: Iterable[str] | None = None,
    ) -> None:
        """Upsert kept days (device, day, then ``columns``) with ``query``, in one
        transaction: the rows copied into a temporary table (``rows`` in binary, or
        ``text``: the rows as pieces of COPY text; not sent as arrays, element by element), then
        inserted from it in the key's order (each index walked page after page, not hit
        at random). ``days``: the days the rows hold (none of them kept under
        ``fingerprint`` yet: the rows inserted, without the upsert's conflict check)."""
        copy_sql = psycopg.sql.SQL(
            "COPY kept_stage (device_id, day, {}) FROM STDIN"
            + (" (FORMAT BINARY)" if text is None else "")
        )
        names = psycopg.sql.SQL(", ").join(psycopg.sql.Identifier(c) for c, _ in columns)
        with self._conn.transaction(), self._conn.cursor() as cur:
            cur.execute("DROP TABLE IF EXISTS pg_temp.kept_stage")
            cur.execute(queries()["kept_stage"])
            with cur.copy(copy_sql.format(names)) as copy:
                if text is not None:
                    for chunk in text:
                        copy.write(chunk.encode())
                else:
                    copy.set_types(["text", "date", *(t for _, t in columns)])
                    for row in rows or ():
                        copy.write_row(row)
            # The sort into the key's order holds a fleet's day (20 MB at 100,000
            # devices with the 开机率 in full): in memory, not merged on disk, for this
            # statement only (put back after it, as in kept_sums).
            before = cur.execute("SELECT current_setting('work_mem')").fetchone()
            assert before is not None
            cur.execute("SELECT set_config('work_mem', %s, true)", (KEPT_SUMS_WORK_MEM,))
            said = {"fingerprint": fingerprint, "context_ms": self.context_ms()}
            cur.execute(queries()["keep_rules"], said)
            cur.execute(queries()["keep_rules_context"], said)  # a row lock only if changed
            upsert = queries()[query]
            fp = {"fingerprint": fingerprint}
            # Days not kept yet under these rules (a fleet's day computed the first time):
            # inserted without ON CONFLICT, a third less of the database's time at 100,000
            # devices (no speculative insertion: each row's key looked for, then inserted).
            # A row kept meanwhile by another writer fails that insert, undone to its
            # savepoint, and the upsert writes the rows instead.
            found = cur.execute(queries()["kept_any_on"], {**fp, "days": sorted(days)}).fetchone()
            done = False
            if found is not None and not found[0]:
                try:
                    with self._conn.transaction():
                        cur.execute(upsert[: upsert.index("ON CONFLICT")], fp)
                    done = True
                except psycopg.errors.UniqueViolation:
                    log.info("kept days written meanwhile by another: upserted instead")
            if not done:
                cur.execute(upsert, fp)
            cur.execute("SELECT set_config('work_mem', %s, true)", before)

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
        self.wait_kept()
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
    feed: Feed,
    devices: Iterable[Device],
    lo: int,
    hi: int,
    horizon: int,
    read_only_these: bool = False,
) -> dict[str, list[Interval]]:
    """Each device's labelled timeline of ``[lo, min(hi, horizon))``: the same as
    :func:`rules.timeline.build_timeline` of :meth:`Feed.timeline_inputs`, with the runs
    read packed per device (:meth:`Feed.timeline_points`). ``read_only_these``: only
    these devices' runs and inputs are read (for a few of a fleet; a device's timeline
    is made of its own and the outages only)."""
    devices = list(devices)
    only = {d.id for d in devices} if read_only_these else None
    points, others, outages = feed.timeline_points(lo, hi, horizon, only)
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
    devices computed are computed over columns when they are at least half of
    ``devices`` (:func:`day_of_columns`), else one by one (:func:`uptime_for`). The
    timelines of the devices read or computed over columns are built (read again) only
    if asked for. An open day is computed (None: no financial count)."""
    if not closed(feed, day, horizon):
        got = day_of_columns(feed, devices, day, horizon)
        return (uptime_for(feed, devices, day, day, horizon) if got is None else got[0]), None
    kept = feed.kept_uptime(feed.fingerprint(), day)
    missing = [d for d in devices if d.id not in kept]
    computed: UptimeDays | None = None
    if missing:
        got = (
            day_of_columns(feed, missing, day, horizon)
            if 2 * len(missing) >= len(devices)
            else None
        )
        if got is not None:
            computed, fin_of = got
            for d in missing:
                kept[d.id] = (computed.per_device[d.id][day], fin_of[d.id])
        else:
            computed = uptime_for(feed, missing, day, day, horizon)
            fin = feed.financial_days(day, day)
            for d in missing:
                kept[d.id] = (computed.per_device[d.id][day], fin.get(d.id, {}).get(day, 0))
    return _one_day(feed, devices, day, horizon, kept, computed)


def _one_day(
    feed: Feed,
    devices: Sequence[Device],
    day: date,
    horizon: int,
    got: Mapping[str, tuple[Uptime, int]],
    computed: UptimeDays | None,
) -> tuple[UptimeDays, dict[str, int]]:
    """One local day of ``devices`` from ``got`` (device id -> its uptime and counted
    financial transactions), as :func:`uptime_of_day` gives it: the timelines of the
    devices ``computed`` holds are its own, the others' are built (the day read again)
    only if asked for."""
    per_device: dict[str, dict[date, Uptime]] = {}
    financial: dict[str, int] = {}
    for d in devices:
        up, n = got[d.id]
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


@_without_gc
def day_of_columns(
    feed: Feed, devices: Sequence[Device], day: date, horizon: int
) -> tuple[UptimeDays, dict[str, int]] | None:
    """:func:`uptime_for` of ``devices`` on one local day, with each one's counted
    financial transactions that day (as :meth:`Feed.financial_days` counts them), for a
    fleet's day at once: the devices in the fleet that day computed over columns
    (:func:`uptime_day_columns`, the day computed even where it is kept), the few others
    (not in the fleet that day) by :func:`uptime_for`. The same :class:`Uptime`, device
    by device, labels in the same order (tests/test_kpi_lowyield_columns.py); the
    timelines are built (the day read again) only if asked for. None where the columns
    do not apply (:func:`uptime_day_columns` returns None): the caller takes
    :func:`uptime_for`."""
    parts = _day_parts(feed, devices, day, horizon)
    if parts is None:
        return None
    cols, got, others = parts
    got.update(
        zip(cols.ids, zip(cols.uptimes(), cols.financial.tolist(), strict=True), strict=True)
    )
    return _one_day(feed, devices, day, horizon, got, others)


def _day_parts(
    feed: Feed, devices: Sequence[Device], day: date, horizon: int
) -> tuple[DayColumns, dict[str, tuple[Uptime, int]], UptimeDays | None] | None:
    """:func:`day_of_columns` in its parts: the devices in the fleet that day as columns,
    the others (their uptime and counted financial transactions, and what
    :func:`uptime_for` gave for them); None where the columns do not apply."""
    if not devices:
        return None
    cols = uptime_day_columns(
        feed, "fleet", "fleet", day, horizon, only={d.id for d in devices}, read_kept=False
    )
    if cols is None:
        return None
    in_columns = set(cols.ids)
    rest = [d for d in devices if d.id not in in_columns]
    got: dict[str, tuple[Uptime, int]] = {}
    others: UptimeDays | None = None
    if rest:
        others = uptime_for(feed, rest, day, day, horizon)
        fin = feed.financial_days(day, day)
        for d in rest:
            got[d.id] = (others.per_device[d.id][day], fin.get(d.id, {}).get(day, 0))
    return cols, got, others


#: A state run of ``uptime_day_columns``: state position, start, start_seq, last,
#: heartbeat_s (big-endian, as PostgreSQL sends them).
_RUN_COLUMNS = [("state", ">i4"), ("start", ">i8"), ("seq", ">i8"), ("last", ">i8"),
                ("hb", ">i4")]  # fmt: skip
#: The dimensions a device's group is read in by :class:`DayColumns` (``fleet``: one group).
_COLUMN_DIMENSIONS = ("device", "branch", "subbranch", "tier", "type", "placement", "vendor")
_EPOCH_DATE = date(2000, 1, 1)


@dataclass
class DayColumns:
    """The 开机率 of one local day of the in-fleet devices of a scope, as columns (one row
    per device, in the inventory's order): what :func:`uptime_of_day` gives, without an
    :class:`~rules.uptime.Uptime` per device.

    ``ids``: the devices; ``groups``: per dimension (device, branch, subbranch, tier,
    type, placement, vendor), each device's group, as :func:`rules.uptime.dimension_key`
    names it; ``by_label``: time by label (codes :data:`rules.timeline.LABELS`);
    ``figures``: :data:`rules.uptime.FIGURES`; ``financial``: counted financial
    transactions that day; ``targets``: each device's uptime target (its tier's, tier
    1's without one); ``met``: for a day computed, per row a key per label whose order is
    the order the timeline's sweep meets the labels in (None for a day read as kept:
    the labels in :data:`rules.timeline.LABELS` order)."""

    day: date
    ids: list[str]
    groups: dict[str, list[str]]
    by_label: Any  # numpy (n, len(LABELS)) int64
    figures: Any  # numpy (n, len(FIGURES)) int64
    financial: Any  # numpy (n,) int64
    targets: Any  # numpy (n,) float64
    met: Any = None  # numpy (n, len(LABELS)) int64, or None

    def uptime(self, row: int) -> Uptime:
        """Row ``row`` as the :class:`~rules.uptime.Uptime` of one device (its labels in
        the order the sweep met them, as :func:`uptime_for` has them)."""
        if self.met is None:
            return uptime_of_sums(self.by_label[row], self.figures[row], 1)
        return self.uptimes([row])[0]

    def uptimes(self, rows: Sequence[int] | None = None) -> list[Uptime]:
        """:meth:`uptime` of each of ``rows`` (default: every row), made in one pass over
        the arrays as Python integers (not element by element)."""
        import numpy as np

        pick = slice(None) if rows is None else np.asarray(rows, np.int64)
        values = self.by_label[pick].tolist()
        figures = self.figures[pick].tolist()
        labels = LABELS
        if self.met is None:
            codes = [list(range(len(labels)))] * len(values)
        else:
            codes = np.argsort(self.met[pick], axis=1, kind="stable").tolist()
        out = []
        for v, c, (s, a, ts, ta, planned, monitored) in zip(values, codes, figures, strict=True):
            by_label = {labels[k]: v[k] for k in c if v[k]}
            out.append(Uptime(by_label, s, a, ts, ta, planned, monitored, 1))
        return out

    def group_of(self, by: str) -> list[str]:
        """Each device's group in dimension ``by`` (``fleet``: all one)."""
        return ["fleet"] * len(self.ids) if by == "fleet" else self.groups[by]


@_without_gc
def uptime_day_columns(
    feed: Feed,
    scope_kind: str,
    scope_value: str,
    day: date,
    horizon: int,
    only: Collection[str] | None = None,
    read_kept: bool = True,
) -> DayColumns | None:
    """:func:`uptime_of_day` of the devices of a scope (``scope_kind``: an inventory
    dimension or ``fleet``, as :class:`rules.report.Scope` holds it) in the fleet on
    ``day``, with its counted financial transactions, as columns: the inventory, the
    day's runs and its financial transactions read in one statement (packed, unpacked by
    numpy), the timelines swept over columns (:func:`rules.timeline.sweep_columns`) and
    both views computed over columns (:func:`rules.uptime.uptime_columns`), a collector
    outage (or the unknown time before monitoring began) included. A device a power cut
    or a registered stop touches has its timeline built and summed one by one, as
    :func:`uptime_for` does. The same integers as
    :func:`uptime_of_day`, device by device (tests/test_kpi_uptime_columns.py). A closed
    day kept in full for every device is read instead, with the inventory, as columns
    (``kept_day_columns``: one row per device, as :meth:`Feed.kept_uptime` reads it).

    ``only``: of those devices only (the others are not rows); ``read_kept=False``: the
    day computed even where it is kept (for the devices a caller found not kept).

    None where it does not apply, for the caller to take :func:`uptime_of_day`: a closed
    day kept for some devices and not for others (read_kept), a scope that matches no
    in-fleet device, or what the per-device read refuses (a state or an inventory value
    it does not know)."""
    import numpy as np

    rules = feed.rules
    tz = rules.tz
    kept: str | None = None  # the fingerprint of a closed day kept
    if read_kept and closed(feed, day, horizon):
        fingerprint = feed.fingerprint()
        if feed._rows("kept_uptime_any", fingerprint=fingerprint, day=day)[0][0]:
            kept = fingerprint
    lo, hi = day_span(day, tz)
    ctx = feed.context_ms()
    a, b = from_ms(lo - ctx), from_ms(max(min(horizon, hi + ctx), lo))
    states = list(STATE_LABEL)
    params: dict[str, Any] = {
        "states": states, "lo": a, "hi": b, "day_lo": from_ms(lo), "day_hi": from_ms(hi),
        "financial": sorted(t.value for t in rules.transactions.financial_types),
        "counted": sorted(r.value for r in rules.transactions.counted_results),
    }  # fmt: skip
    if kept is not None:
        params = {"fingerprint": kept, "day": day, "labels": [x.value for x in LABELS]}
    with feed._conn.cursor(binary=True) as cur:
        # JIT compiled for longer than the statement ran, and the inventory's sort by id
        # spilled to disk with the server's default work_mem; only for this statement
        # (the transaction's settings are put back after it).
        before = cur.execute(
            "SELECT current_setting('jit'), current_setting('work_mem')"
        ).fetchone()
        cur.execute(
            "SELECT set_config('jit', 'off', true), set_config('work_mem', %s, true)",
            (KEPT_SUMS_WORK_MEM,),
        )
        query = "uptime_day_columns" if kept is None else "kept_day_columns"
        row = cur.execute(queries()[query], params).fetchone()
        assert before is not None and row is not None
        cur.execute("SELECT set_config('jit', %s, true), set_config('work_mem', %s, true)", before)
    count, text = row[:2]
    fields = text.split("\x1f") if text is not None else []
    if not count or len(fields) != 9 * count:  # none, or a value holding the separator
        return None
    ids = fields[0::9]
    # A few values repeated over the fleet (a branch, a type, a window...): one string
    # each, not one a device (40 MiB less at 100,000 devices, held through the sweep).
    memo: dict[str, str] = {}
    branch, kinds, placement, vendor, window, since, until, beats = (
        list(map(memo.setdefault, col, col)) for col in (fields[k::9] for k in range(1, 9))
    )
    rest = row[2:]  # the runs and transactions (the inventory's text let go)
    del fields, text, row
    known_types = {t.value for t in DeviceType}
    known_placements = {p.value for p in Placement}
    if not set(kinds) <= known_types or not set(placement) <= known_placements:
        return None
    sub_of = {i: s for i, _n, s, _k, _p in feed._rows("inventory_branches")}
    tier_of = {i: Tier(t).value for i, _n, t in feed._rows("inventory_subbranches")}
    tier_of_branch = {i: tier_of.get(s, "") for i, s in sub_of.items()}
    subbranch = list(map(sub_of.get, branch, repeat("")))
    tier = list(map(tier_of_branch.get, branch, repeat("")))
    columns = dict(zip(_COLUMN_DIMENSIONS, (ids, branch, subbranch, tier, kinds, placement,
                                            vendor), strict=True))  # fmt: skip
    # Devices that share a window and their time in the fleet share scheduled spans.
    windows = WindowSpans(tz)
    spec_for = rules.service_windows.spec_for
    keys = list(zip(window, placement, kinds, since, until, strict=True))
    combos: dict[tuple[str, str, str, str, str], int] = {}
    span_sets: list[list[Span]] = []
    in_fleet: list[bool] = []
    for key in dict.fromkeys(keys):
        spec, where, kind, lo_day, hi_day = key
        d = Device.model_construct(
            id="", branch="", vendor="", model="", service_window=spec or None,
            placement=Placement(where), type=DeviceType(kind),
            commissioned=_EPOCH_DATE + timedelta(days=int(lo_day)),
            decommissioned=_EPOCH_DATE + timedelta(days=int(hi_day)) if hi_day else None,
        )  # fmt: skip
        combos[key] = len(span_sets)
        in_fleet.append(in_fleet_during(d, day, day))
        span_sets.append(windows.scheduled(spec_for(d), d, day, horizon))
    combo = np.fromiter(map(combos.__getitem__, keys), np.int64, count)
    wanted = np.asarray(in_fleet, bool)[combo]
    if scope_kind != "fleet":
        wanted &= np.fromiter(map(scope_value.__eq__, columns[scope_kind]), bool, count)
    if only is not None:
        chosen_ids = only if isinstance(only, (set, frozenset, dict)) else set(only)
        wanted &= np.fromiter(map(chosen_ids.__contains__, columns["device"]), bool, count)
    chosen = np.flatnonzero(wanted)
    n = len(chosen)
    if not n:
        return None
    span_set = combo[chosen]
    heartbeat = np.asarray(beats).astype(np.int64)[chosen]
    if n < count:
        columns = {dim: [col[i] for i in chosen.tolist()] for dim, col in columns.items()}
    ids = columns["device"]
    row_of = dict(zip(ids, range(n), strict=True))
    targets = rules.uptime.targets
    by_tier = {x.value: targets[x] for x in Tier}
    target = np.asarray([by_tier[x or "1"] for x in columns["tier"]], np.float64)
    if kept is not None:  # every device's day as kept (:meth:`Feed.kept_uptime`)
        kept_ids, packed = rest
        values = np.frombuffer(packed or b"", dtype=">i8")
        width = len(FIGURES) + 1 + len(LABELS)
        assert len(LABELS) == 10  # as many as kept_day_columns reads
        k_row = _rows_of(kept_ids, row_of, len(values) // width)
        mine = k_row >= 0
        if len(values) != width * len(k_row) or int(mine.sum()) != n:
            return None  # some devices not kept (or a kept value missing): the reference
        table = np.zeros((n, width), np.int64)
        table[k_row[mine]] = values.reshape(-1, width)[mine]
        fig = table[:, : len(FIGURES)]
        return DayColumns(
            day, ids, columns, table[:, len(FIGURES) + 1 :], fig, table[:, len(FIGURES)], target
        )
    run_ids, runs, txn_ids, txns = rest
    # The runs: a row per run, its device's row among the chosen (-1: not chosen).
    rec = np.frombuffer(runs or b"", dtype=np.dtype(_RUN_COLUMNS))
    if (rec["state"] == 0).any():  # a state the timeline does not know: the reference says
        return None
    to_label = np.asarray([label_code(STATE_LABEL[s]) for s in states], np.int64)
    r_row = _rows_of(run_ids, row_of, len(rec))
    mine = r_row >= 0
    rec = rec[mine]
    r_row = r_row[mine]
    r_start = (rec["start"].astype(np.int64) + _PG_EPOCH_US) // 1000
    r_last = (rec["last"].astype(np.int64) + _PG_EPOCH_US) // 1000
    r_seq = rec["seq"].astype(np.int64)
    r_label = to_label[rec["state"].astype(np.int64) - 1]
    r_hb = rec["hb"].astype(np.int64)
    others, outages = feed._other_inputs(lo, a, b)
    merged = merge_spans(outages)
    factor = rules.heartbeat.timeout_factor
    slow: list[int] = []  # rows whose timeline is built, as uptime_for builds it
    presence: list[tuple[int, Presence]] = []
    for device_id, got in others.items():
        r = row_of.get(device_id)
        if r is None:
            continue
        if got.power or got.stops:
            slow.append(r)
        else:
            presence.extend((r, p) for p in got.presence)
    slow.sort()
    by_label = np.zeros((n, len(LABELS)), np.int64)
    met = np.full((n, len(LABELS)), 2**62, np.int64)  # no label met
    if len(slow) < n:
        points = PointColumns.of((r_row, r_start, r_seq, r_last, r_label, r_hb), presence)
        by_label = sweep_columns(
            points, n, lo, horizon, factor, heartbeat, span_set, span_sets, met,
            outages=merged,
        )  # fmt: skip
    if slow:
        wanted = np.zeros(n, bool)
        wanted[np.asarray(slow, np.int64)] = True
        at = np.flatnonzero(wanted[r_row])
        at = at[np.argsort(r_row[at], kind="stable")]
        bounds = np.searchsorted(r_row[at], np.asarray(slow, np.int64), side="left").tolist()
        bounds.append(len(at))
        labels = [LABELS[int(x)] for x in range(len(LABELS))]
        empty = DeviceInputs()
        for k, r in enumerate(slow):
            part = at[bounds[k] : bounds[k + 1]]
            pts: list[Point] = [
                (s0, STATE, q, s1, labels[lab], h)
                for s0, q, s1, lab, h in zip(
                    r_start[part].tolist(), r_seq[part].tolist(), r_last[part].tolist(),
                    r_label[part].tolist(), r_hb[part].tolist(), strict=True,
                )
            ]  # fmt: skip
            got = others.get(ids[r], empty)
            line = timeline_of_points(
                pts, lo, hi, horizon=horizon, presence=got.presence, power=got.power,
                outages=merged, timeout_factor=factor, default_heartbeat_s=int(heartbeat[r]),
                stops=got.stops,
            )  # fmt: skip
            by_label[r] = 0
            met[r] = 2**62
            totals = label_totals(line, span_sets[span_set[r]])
            for k, (label, value) in enumerate(totals.items()):
                by_label[r, label_code(label)] = value
                met[r, label_code(label)] = k  # the order label_totals met them in
    figures = uptime_columns(by_label, UptimePolicy.from_rules(rules))
    financial = np.zeros(n, np.int64)
    t = np.frombuffer(txns or b"", dtype=">i8")
    t_row = _rows_of(txn_ids, row_of, len(t))
    counted = t_row >= 0
    np.add.at(financial, t_row[counted], t[counted].astype(np.int64))
    return DayColumns(day, ids, columns, by_label, figures, financial, target, met)


def _rows_of(ids: str | None, row_of: dict[str, int], n: int) -> Any:
    """The row of each of the ``n`` ids joined by U+001F (-1: not a row)."""
    import numpy as np

    got = ids.split("\x1f") if ids is not None else []
    if len(got) != n:
        raise ValueError(f"{len(got)} device ids for {n} rows (an id holding U+001F?)")
    return np.fromiter(map(row_of.get, got, repeat(-1)), np.int64, n)


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
    into it, and the store invalidates a kept day on late telemetry only within its
    rules' context (kept in kpi_kept_rules), which may be at most a day."""
    context = feed.context_ms()
    return context <= MAX_KEPT_CONTEXT_MS and day_span(day, feed.rules.tz)[1] + context <= horizon


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
    for d, i, (a, s, f) in computed_days(feed, fp, period, missing, horizon, known, len(devices)):
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
    of: int = 0,
) -> list[tuple[Device, int, KeptDay]]:
    """The days of ``period`` not kept (``missing``: day index -> devices), computed
    (uptime from the timeline, transactions from txn_daily) and kept when closed, as
    (device, day index, value); ``known``: see :func:`window_days`; ``of``: how many
    devices are evaluated (a day missing for at least half of them is computed over
    columns, :func:`day_of_columns`)."""
    got, to_keep = _compute_days(feed, period, missing, horizon, known, of)
    feed.keep_uptime_days(fingerprint, to_keep)
    return got


def _compute_days(
    feed: Feed,
    period: Sequence[date],
    missing: dict[int, list[Device]],
    horizon: int,
    known: UptimeDays | None = None,
    of: int = 0,
) -> tuple[list[tuple[Device, int, KeptDay]], KeptRows]:
    """:func:`computed_days` without the keeping: the values, and the closed days to keep
    (device id, day, uptime, counted financial transactions)."""
    got: list[tuple[Device, int, KeptDay]] = []
    to_keep = KeptRows()
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
            # Most of the devices miss this day (a fleet's day not kept yet): computed
            # over columns, with its financial count, and kept as columns (no Uptime
            # made per device); else device by device.
            parts = _day_parts(feed, chosen, day, horizon) if 2 * len(chosen) >= of else None
            if parts is not None:
                cols, rest, _ = parts
                row_of = dict(zip(cols.ids, range(len(cols.ids)), strict=True))
                figures = cols.figures
                a_of = figures[:, FIGURES.index("available_ms")].tolist()
                s_of = figures[:, FIGURES.index("scheduled_ms")].tolist()
                f_of = cols.financial.tolist()
                for d in chosen:
                    r = row_of.get(d.id)
                    if r is None:
                        u, f = rest[d.id]
                        got.append((d, i, (u.available_ms, u.scheduled_ms, f)))
                        if keep:
                            to_keep.values.append((d.id, day, u, f))
                    else:
                        got.append((d, i, (a_of[r], s_of[r], f_of[r])))
                if keep:
                    import numpy as np

                    every = np.arange(len(cols.ids), dtype=np.int64)
                    to_keep.days.append(DayRows(cols, every, cols.financial))
                continue
            up = uptime_for(feed, chosen, day, day, horizon)
        fin = feed.financial_days(day, day)
        fin_of = {d.id: fin.get(d.id, {}).get(day, 0) for d in chosen}
        for d in chosen:
            u = up.per_device[d.id][day]
            value = (u.available_ms, u.scheduled_ms, fin_of[d.id])
            got.append((d, i, value))
            if keep:
                to_keep.values.append((d.id, day, u, value[2]))
    return got, to_keep


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
    on the sums of its kept days plus the days computed. Those sums are the window sums
    kept beside ``on`` when its whole window was kept by an earlier evaluation
    (:meth:`Feed.window_sums`, one row per device), else added up by the database
    (:meth:`Feed.kept_sums`); the days computed here are kept with the sums of the
    window they complete. Only a device commissioned or decommissioned inside the window
    has its days read one by one."""
    rules = feed.rules
    window = rules.low_yield.window_days
    first = on - timedelta(days=window - 1)
    period = days(first, on)
    n = len(period)
    in_service_only = rules.low_yield.days_counted is DaysCounted.IN_SERVICE
    if n > 63:  # more days than kept_sums marks: every day read one by one
        return _low_yield_by_day(feed, inventory, devices, on, horizon, known)
    fp = feed.fingerprint()
    # In the fleet the whole window (window_bounds(...) == (0, n)), or not: judged on
    # its days one by one.
    partial = _partial(devices, first, on)
    windows: dict[str, Window] = {}
    if partial:
        windows = feed.kept_days(fp, first, on, [d.id for d in partial])
    missing: dict[int, list[Device]] = {}
    for d in partial:
        w = windows.get(d.id)
        if w is None:
            w = windows[d.id] = Window.empty(n)
        for i, a in enumerate(w.available):
            if a is None:
                missing.setdefault(i, []).append(d)
    # The kept part of the window (the window sums kept beside ``on``, and the others'
    # kept days added up): on the spare connection when the feed has one, while the day
    # not kept is computed here; started earlier by start_low_yield when it was.
    pending = _started_window(feed, fp, first, on, devices)
    if pending is None:
        pending = feed.soon(
            lambda f: _kept_window(f, fp, first, on, in_service_only, devices, frozenset(windows))
        )
    early: list[tuple[Device, int, KeptDay]] = []  # the day ``on`` computed before
    early_keep = KeptRows()
    if pending is not None:
        # Meanwhile, ``on`` for the devices it is not kept for (the day kept or not is
        # all the kept part can say of it): with the partial windows' missing days.
        kept_on = feed.kept_on(fp, on)
        ahead = dict(missing)
        ahead[n - 1] = ahead.get(n - 1, []) + [
            d for d in devices if d.id not in windows and d.id not in kept_on
        ]
        if not ahead[n - 1]:
            del ahead[n - 1]
        early, early_keep = _compute_days(feed, period, ahead, horizon, known, len(devices))
        missing = {}
        stored, kept = pending.result()
    else:
        stored, kept = _kept_window(feed, fp, first, on, in_service_only, devices, windows)
    whole = [d for d in devices if d.id not in stored and d.id not in windows]
    sums: dict[str, WindowSums] = {}  # of the others: their kept days added up
    # ``on`` computed early for these, not kept then: used where the kept part says it
    # is not kept (else the day was kept meanwhile, and is in its sums).
    computed_on = {d.id for d, i, _ in early if i == n - 1 and d.id not in windows}
    use_early: set[str] = set()
    # The devices whose window the days computed here complete: ``on`` among them, and
    # every day not kept closed (so kept now, as _compute_days keeps every closed day
    # it computes). Their sums are kept beside ``on``.
    done: list[Device] = []
    if whole:
        not_kept: dict[int, list[int]] = {}  # kept bits -> the days not kept
        completes: dict[int, bool] = {}  # kept bits -> the days kept now complete it
        shut = [closed(feed, day, horizon) for day in period]
        for d in whole:
            got = kept.get(d.id)
            bits = 0
            if got is None:
                sums[d.id] = WindowSums()
            else:
                sums[d.id], bits = got
            offsets = not_kept.get(bits)
            if offsets is None:
                offsets = not_kept[bits] = [i for i in range(n) if not bits >> i & 1]
                completes[bits] = (
                    bool(offsets) and offsets[-1] == n - 1 and all(shut[i] for i in offsets)
                )
            for i in offsets:
                if i == n - 1 and d.id in computed_on:
                    use_early.add(d.id)
                else:
                    missing.setdefault(i, []).append(d)
            if completes[bits]:
                done.append(d)
    computed, to_keep = _compute_days(feed, period, missing, horizon, known, len(devices))
    if early and not windows and len(use_early) == len(computed_on):
        # Every day computed early used (the daily case: no device's ``on`` kept
        # meanwhile, none judged day by day): taken as they are, not filtered.
        computed += early
        to_keep.extend(early_keep)
    elif early:
        computed += [c for c in early if c[0].id in windows or c[0].id in use_early]
        to_keep.extend(early_keep.only(windows.keys() | use_early))
    for d, i, (a, s, f) in computed:
        w = windows.get(d.id)
        if w is not None:
            w.available[i], w.scheduled[i], w.financial[i] = a, s, f
        else:
            sums[d.id].add(a, s, f, in_service_only)
    # The window sums of the devices whose window these days complete (``on`` kept now,
    # every earlier day kept or kept now), kept beside ``on``.
    complete = {d.id: sums[d.id] for d in done}
    # Kept on the spare connection while the flags (and what the caller does next) are
    # made, when the feed has one.
    feed.keep_uptime_days_soon(fp, to_keep, complete, on)
    flags: list[YieldFlag] = []
    targets = rules.uptime.targets
    by_branch: dict[str, float] = {}  # a branch's devices share their tier's target
    low = rules.low_yield
    make = flag_maker(on, low)
    for d in devices:
        target = by_branch.get(d.branch)
        if target is None:
            target = by_branch[d.branch] = targets[inventory.subbranch_of(d).tier]
        row = stored.get(d.id)
        if row is not None and d.id not in windows:
            flags.append(make(d.id, d, d.type, row[1], row[2], row[3], row[4], row[5], target))
            continue
        w = windows.get(d.id)
        if w is None:
            ws = sums[d.id]
            flags.append(
                make(d.id, d, d.type, ws.monitored, ws.available_ms, ws.scheduled_ms,
                     ws.counted, ws.financial, target)
            )  # fmt: skip
            continue
        flags.append(evaluate(_series(d, first, w), on, low, target))
    return flags


def _partial(devices: Sequence[Device], first: date, on: date) -> list[Device]:
    """The devices not in the fleet the whole window ``first``..``on``: judged on their
    days one by one."""
    return [
        d for d in devices
        if d.commissioned > first or (d.decommissioned is not None and d.decommissioned <= on)
    ]  # fmt: skip


def _kept_window(
    feed: Feed,
    fp: str,
    first: date,
    on: date,
    in_service_only: bool,
    devices: Sequence[Device],
    partial: Collection[str],
) -> tuple[dict[str, tuple[Any, ...]], dict[str, tuple[WindowSums, int]]]:
    """What :func:`low_yield_for` reads of the kept days for the devices in the fleet the
    whole window (not ``partial``): the window sums kept beside ``on`` (per device, the
    row read), and for the others the kept days' sums and bits (:meth:`Feed.kept_sums`:
    the sums kept beside the day before slid by a day where they are, else added up)."""
    stored = feed.window_sums(fp, on)
    whole = [d.id for d in devices if d.id not in stored and d.id not in partial]
    kept: dict[str, tuple[WindowSums, int]] = {}
    if whole:
        # The windows that ended yesterday kept whole slide by a day (the daily case:
        # yesterday's evaluation kept them); the others' kept days are added up.
        kept = feed.kept_sums_slid(fp, first, on, in_service_only)
        rest = [i for i in whole if i not in kept]
        if rest:
            ids = None if 4 * len(rest) > len(devices) else rest
            more = feed.kept_sums(fp, first, on, in_service_only, ids)
            kept.update((i, more[i]) for i in rest if i in more)
    return stored, kept


def start_low_yield(feed: Feed, devices: Sequence[Device], on: date) -> None:
    """Start reading the kept part of :func:`low_yield_for` of ``devices`` on ``on`` on
    the spare connection (nothing without one), for a caller that evaluates it later on
    the same feed with the same list of devices: its database time then passes while
    the caller does other work. Under the fingerprint of now: a later evaluation under
    another does not use it."""
    rules = feed.rules
    window = rules.low_yield.window_days
    first = on - timedelta(days=window - 1)
    if window > 63:
        return
    in_service_only = rules.low_yield.days_counted is DaysCounted.IN_SERVICE
    partial = {d.id for d in _partial(devices, first, on)}

    def read(f: Feed) -> tuple[str, Any]:
        fp = f.fingerprint()
        return fp, _kept_window(f, fp, first, on, in_service_only, devices, partial)

    future = feed.soon(read)
    if future is not None:
        feed.started[("low_yield", on)] = (devices, future)


def _started_window(
    feed: Feed, fp: str, first: date, on: date, devices: Sequence[Device]
) -> Future[tuple[dict[str, tuple[Any, ...]], dict[str, tuple[WindowSums, int]]]] | None:
    """The kept part :func:`start_low_yield` started for these devices on ``on``, as a
    future of :func:`_kept_window`'s result; None if none was (or it was read under
    another fingerprint, or for other devices)."""
    got = feed.started.pop(("low_yield", on), None)
    if got is None or got[0] is not devices:
        return None
    started: Future[tuple[str, Any]] = got[1]
    out: Future[tuple[dict[str, tuple[Any, ...]], dict[str, tuple[WindowSums, int]]]] = Future()
    read_fp, value = started.result()
    if read_fp != fp:
        return None
    out.set_result(value)
    return out


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
