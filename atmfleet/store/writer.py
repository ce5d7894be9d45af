"""Writing accepted messages and dead letters: binary COPY into staging, then one INSERT.

Each batch is copied (binary COPY) into session-local staging tables and moved into the
real tables by one statement with ``ON CONFLICT DO NOTHING``, which also updates the
per-device sequence accounting from the rows actually inserted. A redelivered message
(same device, seq and ts; same txn_id and ts) inserts nothing and is not counted twice.

A row the database refuses for good (SQLSTATE class 22/23, e.g. a NUL character inside
a text) is isolated by splitting the batch in halves until it stands alone; it is then
dead-lettered (reason ``db_rejected``) and its neighbours are stored. Temporary and fatal
errors propagate to the caller, who retries or stops (:func:`atmfleet.store.connect.classify`).
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime

import psycopg
from psycopg.types.json import Jsonb
from pydantic import TypeAdapter

from atmfleet.protocol import (
    AnyMessage,
    CashUnit,
    Component,
    ComponentStatus,
    CounterMessage,
    EventMessage,
    PresenceMessage,
    StateMessage,
    TxnMessage,
)
from atmfleet.store.connect import ErrorClass, classify
from atmfleet.store.runs import Sample, ms, update_runs

#: Dead letters keep at most this much of the payload (``payload_size`` keeps the size).
DEAD_LETTER_PAYLOAD_BYTES = 4096
_DETAIL_CHARS = 1000


def _clean(text: str, limit: int) -> str:
    """Text PostgreSQL accepts: no NUL, no lone surrogates, bounded."""
    text = text[:limit].replace("\x00", "\\x00")
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


@dataclass(frozen=True, slots=True)
class Accepted:
    """A message that passed validation, with what is needed to dead-letter it later."""

    message: AnyMessage
    received_at: datetime
    topic: str
    payload: bytes


@dataclass(frozen=True, slots=True)
class Rejected:
    """A message that cannot be stored, and why."""

    received_at: datetime
    topic: str
    payload: bytes  # already truncated
    payload_size: int
    reason: str
    detail: str

    @classmethod
    def of(
        cls,
        topic: str,
        payload: bytes,
        received_at: datetime,
        reason: str,
        detail: str,
        payload_size: int | None = None,
    ) -> Rejected:
        """``payload_size``: the original size when ``payload`` is already truncated."""
        return cls(
            received_at=received_at,
            topic=_clean(topic, 1024),
            payload=bytes(payload[:DEAD_LETTER_PAYLOAD_BYTES]),
            payload_size=len(payload) if payload_size is None else payload_size,
            reason=_clean(reason, 64),
            detail=_clean(detail, _DETAIL_CHARS),
        )


@dataclass
class WriteResult:
    """What one batch did: rows inserted per kind, redelivered duplicates, dead letters."""

    stored: Counter[str] = field(default_factory=Counter)
    duplicates: int = 0
    dead: list[Rejected] = field(default_factory=list)
    #: Seconds (wall clock) the batch spent in each part of its transaction: ``copy``
    #: (the rows made and copied into staging), ``move`` (inserted, sequences counted),
    #: ``runs`` (state runs and kept days), ``commit``; a split batch adds up its parts.
    seconds: dict[str, float] = field(default_factory=dict)

    def add_seconds(self, parts: dict[str, float]) -> None:
        for name, value in parts.items():
            self.seconds[name] = self.seconds.get(name, 0.0) + value


_KINDS = ("state", "event", "txn", "presence", "counter")

_STAGING = """
CREATE TEMP TABLE IF NOT EXISTS _stage_state (LIKE state_samples) ON COMMIT DELETE ROWS;
CREATE TEMP TABLE IF NOT EXISTS _stage_event (LIKE events) ON COMMIT DELETE ROWS;
CREATE TEMP TABLE IF NOT EXISTS _stage_txn (LIKE transactions) ON COMMIT DELETE ROWS;
CREATE TEMP TABLE IF NOT EXISTS _stage_presence (LIKE presence) ON COMMIT DELETE ROWS;
CREATE TEMP TABLE IF NOT EXISTS _stage_counter (LIKE counter_volumes) ON COMMIT DELETE ROWS;
"""

_COPY = {
    "state": (
        "COPY _stage_state (device_id, seq, ts, received_at, state, heartbeat_s, components,"
        " cash_units, faults) FROM STDIN (FORMAT BINARY)",
        ["text", "int8", "timestamptz", "timestamptz", "text", "int4", "jsonb", "jsonb", "text[]"],
    ),
    "event": (
        "COPY _stage_event (device_id, seq, ts, received_at, event, component, code, severity,"
        " text, since) FROM STDIN (FORMAT BINARY)",
        ["text", "int8", "timestamptz", "timestamptz", "text", "text", "text", "text", "text",
         "timestamptz"],
    ),
    "txn": (
        "COPY _stage_txn (device_id, seq, ts, received_at, txn_id, type, financial, amount,"
        " currency, fee, result, duration_ms, on_us) FROM STDIN (FORMAT BINARY)",
        ["text", "int8", "timestamptz", "timestamptz", "text", "text", "bool", "numeric", "text",
         "numeric", "text", "int4", "bool"],
    ),
    "presence": (
        "COPY _stage_presence (device_id, status, ts, received_at, session, will)"
        " FROM STDIN (FORMAT BINARY)",
        ["text", "text", "timestamptz", "timestamptz", "text", "bool"],
    ),
    "counter": (
        "COPY _stage_counter (branch_id, date, financial, non_financial, source, ts,"
        " received_at) FROM STDIN (FORMAT BINARY)",
        ["text", "date", "int4", "int4", "text", "timestamptz", "timestamptz"],
    ),
}  # fmt: skip

_MOVE = """
WITH s AS (
    INSERT INTO state_samples SELECT * FROM _stage_state
    ON CONFLICT DO NOTHING RETURNING device_id, seq
), e AS (
    INSERT INTO events SELECT * FROM _stage_event
    ON CONFLICT DO NOTHING RETURNING device_id, seq
), t AS (
    INSERT INTO transactions SELECT * FROM _stage_txn
    ON CONFLICT DO NOTHING RETURNING device_id, seq
), p AS (
    INSERT INTO presence SELECT * FROM _stage_presence
    ON CONFLICT DO NOTHING RETURNING 1
), c AS (
    INSERT INTO counter_volumes
    SELECT DISTINCT ON (branch_id, date) * FROM _stage_counter
    ORDER BY branch_id, date, ts DESC
    ON CONFLICT (branch_id, date) DO UPDATE
    SET financial = excluded.financial, non_financial = excluded.non_financial,
        source = excluded.source, ts = excluded.ts, received_at = excluded.received_at
    WHERE counter_volumes.ts < excluded.ts
    RETURNING 1
), n AS (
    SELECT device_id, seq FROM s
    UNION ALL SELECT device_id, seq FROM e
    UNION ALL SELECT device_id, seq FROM t
), q AS (
    -- Per boot epoch (seq >> 32, docs/protocol.md §3). Ordered by device and epoch so
    -- that concurrent collectors lock rows in the same order.
    INSERT INTO device_sequences AS d (device_id, epoch, min_seq, max_seq, received, updated_at)
    SELECT device_id, seq >> 32, min(seq), max(seq), count(*), now() FROM n
    GROUP BY device_id, seq >> 32 ORDER BY device_id, seq >> 32
    ON CONFLICT (device_id, epoch) DO UPDATE
    SET min_seq = least(d.min_seq, excluded.min_seq),
        max_seq = greatest(d.max_seq, excluded.max_seq),
        received = d.received + excluded.received,
        updated_at = excluded.updated_at
    RETURNING 1
)
SELECT (SELECT count(*) FROM s), (SELECT count(*) FROM e), (SELECT count(*) FROM t),
       (SELECT count(*) FROM p), (SELECT count(*) FROM c), (SELECT count(*) FROM q)
"""

_DEAD_COPY = (
    "COPY dead_letters (received_at, topic, payload, payload_size, reason, detail, collector_id)"
    " FROM STDIN (FORMAT BINARY)"
)
_DEAD_TYPES = ["timestamptz", "text", "bytea", "int4", "text", "text", "text"]


def _kind(msg: AnyMessage) -> str:
    if isinstance(msg, StateMessage):
        return "state"
    if isinstance(msg, EventMessage):
        return "event"
    if isinstance(msg, TxnMessage):
        return "txn"
    if isinstance(msg, PresenceMessage):
        return "presence"
    return "counter"


# The JSON columns are serialised by pydantic (one call per column, no dict per cash unit).
_COMPONENTS_JSON = TypeAdapter(dict[Component, ComponentStatus]).dump_json
_CASH_UNITS_JSON = TypeAdapter(list[CashUnit]).dump_json


def _row(rec: Accepted) -> tuple[object, ...]:
    m, at = rec.message, rec.received_at
    if isinstance(m, StateMessage):
        return (
            m.device_id, m.seq, m.ts, at, m.state.value, m.heartbeat_s,
            Jsonb(m.components, dumps=_COMPONENTS_JSON),
            Jsonb(m.cash_units, dumps=_CASH_UNITS_JSON),
            list(m.faults),
        )  # fmt: skip
    if isinstance(m, EventMessage):
        return (
            m.device_id, m.seq, m.ts, at, m.event.value,
            m.component.value if m.component else None, m.code, m.severity.value, m.text,
            m.since,
        )  # fmt: skip
    if isinstance(m, TxnMessage):
        return (
            m.device_id, m.seq, m.ts, at, m.txn_id, m.type.value, m.financial, m.amount,
            m.currency, m.fee, m.result.value, m.duration_ms, m.on_us,
        )  # fmt: skip
    if isinstance(m, PresenceMessage):
        return (m.device_id, m.status.value, m.ts, at, m.session, m.will)
    assert isinstance(m, CounterMessage)
    return (m.branch_id, m.date, m.financial, m.non_financial, m.source, m.ts, at)


def _samples(states: Sequence[Accepted]) -> dict[str, set[Sample]]:
    out: dict[str, set[Sample]] = {}
    for rec in states:
        m = rec.message
        assert isinstance(m, StateMessage)
        out.setdefault(m.device_id, set()).add(
            Sample(ms(m.ts), m.seq, m.state.value, m.heartbeat_s)
        )
    return out


class BatchWriter:
    """Stores batches through one connection (not in autocommit: each batch is a transaction)."""

    def __init__(self, conn: psycopg.Connection, collector_id: str) -> None:
        self._conn = conn
        self._collector_id = collector_id

    def write(self, accepted: Sequence[Accepted], rejected: Sequence[Rejected] = ()) -> WriteResult:
        """Store a batch and its dead letters. Returns once everything is committed.

        Raises the psycopg error for temporary or fatal errors; nothing is committed then
        unless a permanently bad row had been isolated first (the rest is idempotent).
        """
        result = WriteResult()
        try:
            with self._conn.transaction():
                self._store(accepted, result)
                self._dead(rejected)
                committing = time.perf_counter()
            result.add_seconds({"commit": time.perf_counter() - committing})
            result.dead.extend(rejected)
            return result
        except psycopg.Error as exc:
            if classify(exc) is not ErrorClass.DATA:
                raise
        result = WriteResult()
        bad: list[Rejected] = []
        self._isolate(list(accepted), result, bad)
        dead = [*rejected, *bad]
        with self._conn.transaction():
            self._dead(dead)
        result.dead.extend(dead)
        return result

    def _isolate(self, rows: list[Accepted], result: WriteResult, bad: list[Rejected]) -> None:
        if not rows:
            return
        try:
            with self._conn.transaction():
                part = WriteResult()
                self._store(rows, part)
        except psycopg.Error as exc:
            if classify(exc) is not ErrorClass.DATA:
                raise
            if len(rows) == 1:
                rec = rows[0]
                detail = f"{exc.sqlstate}: {str(exc).strip().splitlines()[0] if str(exc) else ''}"
                bad.append(
                    Rejected.of(rec.topic, rec.payload, rec.received_at, "db_rejected", detail)
                )
                return
            half = len(rows) // 2
            self._isolate(rows[:half], result, bad)
            self._isolate(rows[half:], result, bad)
            return
        result.stored.update(part.stored)
        result.duplicates += part.duplicates
        result.add_seconds(part.seconds)

    def _store(self, accepted: Iterable[Accepted], result: WriteResult) -> None:
        by_kind: dict[str, list[Accepted]] = {k: [] for k in _KINDS}
        for rec in accepted:
            by_kind[_kind(rec.message)].append(rec)
        total = sum(len(v) for v in by_kind.values())
        if not total:
            return
        t0 = time.perf_counter()
        cur = self._conn.cursor()
        cur.execute(_STAGING.encode())
        for kind, recs in by_kind.items():
            if not recs:
                continue
            statement, types = _COPY[kind]
            with cur.copy(statement) as copy:
                copy.set_types(types)
                for rec in recs:
                    copy.write_row(_row(rec))
        t1 = time.perf_counter()
        row = cur.execute(_MOVE).fetchone()
        assert row is not None
        t2 = time.perf_counter()
        # State runs (and kept KPI days) up to date; when every staged sample was inserted
        # (no redelivery), from the messages in hand rather than read back.
        states = by_kind["state"]
        inserted = _samples(states) if states and row[0] == len(states) else None
        update_runs(cur, stored_states=row[0], inserted=inserted)
        t3 = time.perf_counter()
        result.add_seconds({"copy": t1 - t0, "move": t2 - t1, "runs": t3 - t2})
        for kind, n in zip(_KINDS, row[:5], strict=True):
            if n:
                result.stored[kind] += n
            result.duplicates += len(by_kind[kind]) - n

    def _dead(self, rejected: Sequence[Rejected]) -> None:
        if not rejected:
            return
        with self._conn.cursor().copy(_DEAD_COPY) as copy:
            copy.set_types(_DEAD_TYPES)
            for r in rejected:
                copy.write_row(
                    (r.received_at, r.topic, r.payload, r.payload_size, r.reason, r.detail,
                     self._collector_id)
                )  # fmt: skip
