"""The store reads what a batch's presence, event and transaction rows change in one
statement (``_NEW_POINTS``), where it read them in three: the same rows, on real
PostgreSQL, for awkward batches (redeliveries mixed with new rows, wills and gateway
presence, ``power_restored`` among other events, several transactions per device, a
device with nothing new)."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import psycopg
import pytest
from pydantic import BaseModel

from atmfleet.protocol import (
    EventMessage,
    PresenceMessage,
    StateMessage,
    TxnMessage,
    device_topic,
    encode,
)
from atmfleet.store import runs, writer
from atmfleet.store.migrate import upgrade
from atmfleet.store.writer import Accepted, BatchWriter

NOW = datetime.now(UTC).replace(microsecond=0)

# The three statements the store ran before, one round trip each: the reference.
REFERENCE = {
    "c": """
SELECT p.device_id, presence_at(p.will, p.ts, p.received_at)
FROM _stage_presence g
CROSS JOIN LATERAL (
    SELECT * FROM presence p
    WHERE p.device_id = g.device_id AND p.ts = g.ts AND p.status = g.status
      AND p.session = g.session AND p.will = g.will AND p.received_at = g.received_at
) p
""",
    "p": """
SELECT e.device_id, e.since
FROM _stage_event g
CROSS JOIN LATERAL (
    SELECT * FROM events e
    WHERE e.device_id = g.device_id AND e.seq = g.seq AND e.ts = g.ts
      AND e.received_at = g.received_at
) e
WHERE g.event = 'power_restored' AND g.since IS NOT NULL
""",
    "t": """
SELECT t.device_id, min(t.ts)
FROM _stage_txn g
CROSS JOIN LATERAL (
    SELECT * FROM transactions t
    WHERE t.device_id = g.device_id AND t.seq = g.seq AND t.ts = g.ts
      AND t.received_at = g.received_at
) t
GROUP BY t.device_id
""",
}


def rec(msg: BaseModel, kind: str, at: datetime) -> Accepted:
    device = msg.device_id  # type: ignore[attr-defined]
    return Accepted(msg, at, device_topic(device, kind), encode(msg))  # type: ignore[arg-type]


def state(device: str, seq: int, ts: datetime, at: datetime, st: str = "in_service") -> Accepted:
    return rec(StateMessage(v=1, device_id=device, ts=ts, seq=seq, state=st), "state", at)


def presence(
    device: str, status: str, ts: datetime, at: datetime, session: str, will: bool
) -> Accepted:
    msg = PresenceMessage(v=1, device_id=device, status=status, ts=ts, session=session, will=will)
    return rec(msg, "presence", at)


def event(device: str, seq: int, ts: datetime, at: datetime, name: str, **kw: Any) -> Accepted:
    msg = EventMessage(v=1, device_id=device, ts=ts, seq=seq, event=name, **kw)
    return rec(msg, "event", at)


def txn(device: str, seq: int, ts: datetime, at: datetime, txn_id: str) -> Accepted:
    msg = TxnMessage(
        v=1, device_id=device, ts=ts, seq=seq, txn_id=txn_id, type="withdrawal",
        amount=Decimal("300.00"), fee=Decimal("0.01"), result="ok", duration_ms=900,
    )  # fmt: skip
    return rec(msg, "txn", at)


def power(device: str, seq: int, ts: datetime, at: datetime, since: datetime) -> Accepted:
    return event(device, seq, ts, at, "power_restored", since=since)


def batches() -> list[list[Accepted]]:
    t = NOW - timedelta(hours=2)
    m = timedelta(minutes=1)
    at1, at2 = NOW - 5 * m, NOW  # a redelivery is received anew
    first = [
        state("atm-1", 1, t, at1),
        state("atm-2", 1, t, at1),
        presence("atm-1", "online", t, at1, "s1", False),
        presence("atm-1", "offline", t + 3 * m, at1, "s1", True),  # a will
        presence("atm-2", "offline", t + m, at1, "gw-1", False),
        power("atm-1", 2, t + 4 * m, at1, since=t + 2 * m),
        event("atm-2", 2, t + 4 * m, at1, "cash_low"),
        txn("atm-1", 3, t + 5 * m, at1, "T1"),
        txn("atm-1", 4, t + 6 * m, at1, "T2"),
        txn("atm-2", 3, t + 7 * m, at1, "T3"),
    ]
    redelivered = [Accepted(r.message, at2, r.topic, r.payload) for r in first if r is not first[0]]
    second = [
        *redelivered,  # nothing of these is inserted again
        state("atm-3", 1, t, at2),  # a device whose only news is a state
        presence("atm-1", "online", t + 8 * m, at2, "s2", False),
        presence("atm-1", "online", t + 8 * m, at2, "s3", False),  # the same ts
        power("atm-1", 5, t + 9 * m, at2, since=t + 8.5 * m),
        power("atm-1", 6, t + 9 * m + timedelta(seconds=1), at2, since=t + m),  # lost earlier
        event("atm-2", 5, t + 9 * m, at2, "fault", code="E1", since=t),  # not a power point
        txn("atm-1", 7, t + m, at2, "T4"),  # earlier than T1
        txn("atm-4", 1, t + 2 * m, at2, "T5"),
        txn("atm-4", 2, t + 2 * m, at2, "T6"),  # the same ts
    ]
    only_duplicates = redelivered
    return [first, second, only_duplicates, [state("atm-1", 9, t + 10 * m, at2)]]


@pytest.fixture
def conn(database_url: str) -> Iterator[psycopg.Connection]:
    with psycopg.connect(database_url, autocommit=True) as c:
        upgrade(c)
    with psycopg.connect(database_url) as c:
        yield c


@pytest.mark.integration
def test_one_statement_reads_what_the_three_read(
    conn: psycopg.Connection, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: list[tuple[list[tuple[Any, ...]], list[tuple[Any, ...]]]] = []
    real = runs.update_runs

    def compared(cur: psycopg.Cursor[Any], *args: Any, **kwargs: Any) -> None:
        reference = [
            (kind, *row)
            for kind, sql in REFERENCE.items()
            for row in cur.execute(sql, prepare=False).fetchall()
        ]
        merged = [tuple(row) for row in cur.execute(runs._NEW_POINTS, prepare=False).fetchall()]
        seen.append((sorted(reference), sorted(merged)))
        real(cur, *args, **kwargs)

    monkeypatch.setattr(writer, "update_runs", compared)
    store = BatchWriter(conn, "test")
    for batch in batches():
        store.write(batch)
    assert len(seen) == 4
    for reference, merged in seen:
        assert merged == reference
    first, second, duplicates, quiet = seen
    assert {r[0] for r in first[0]} == {"c", "p", "t"}  # every kind has rows to compare
    assert len(second[0]) == 6  # 2 presence, 2 power_restored, atm-1's and atm-4's earliest
    assert duplicates[0] == [] and quiet[0] == []
