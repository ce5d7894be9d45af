"""The collector's liveness: runs that beat, and the outages derived from their silence."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta

import psycopg


@dataclass(frozen=True)
class Outage:
    started_at: datetime
    ended_at: datetime


def start_run(
    conn: psycopg.Connection,
    run_id: uuid.UUID,
    collector_id: str,
    host: str,
    threshold: timedelta,
) -> Outage | None:
    """Register a run. If no collector beat for longer than ``threshold``, record the silence
    (from the newest beat of any run until now) as an outage and return it."""
    with conn.transaction():
        # Serialises start-ups, so one outage is recorded once. A table lock, not an
        # advisory one: this mode needs UPDATE on the table, which no reader has.
        conn.execute("LOCK TABLE collector_runs IN SHARE ROW EXCLUSIVE MODE")
        row = conn.execute("SELECT max(last_beat_at), now() FROM collector_runs").fetchone()
        assert row is not None
        last, now = row
        outage = None
        if last is not None and now - last > threshold:
            conn.execute(
                "INSERT INTO collector_outages (started_at, ended_at, detected_by)"
                " VALUES (%s, %s, %s) ON CONFLICT (started_at) DO NOTHING",
                (last, now, collector_id),
            )
            outage = Outage(last, now)
        conn.execute(
            "INSERT INTO collector_runs (run_id, collector_id, host, started_at, last_beat_at)"
            " VALUES (%s, %s, %s, now(), now())",
            (run_id, collector_id, host),
        )
    return outage


def beat(conn: psycopg.Connection, run_id: uuid.UUID) -> None:
    with conn.transaction():
        conn.execute("UPDATE collector_runs SET last_beat_at = now() WHERE run_id = %s", (run_id,))


def known_collector(conn: psycopg.Connection, collector_id: str) -> bool:
    """Whether a collector with this id (so this MQTT client id) has run before."""
    with conn.transaction():
        row = conn.execute(
            "SELECT EXISTS (SELECT FROM collector_runs WHERE collector_id = %s)", (collector_id,)
        ).fetchone()
    return bool(row and row[0])


def record_sessions_lost(
    conn: psycopg.Connection, run_id: uuid.UUID, count: int, last: datetime
) -> None:
    """How many lost broker sessions this run has met so far, and the last one's time."""
    with conn.transaction():
        conn.execute(
            "UPDATE collector_runs SET sessions_lost = %s, last_session_lost_at = %s"
            " WHERE run_id = %s",
            (count, last, run_id),
        )


def stop_run(conn: psycopg.Connection, run_id: uuid.UUID) -> None:
    with conn.transaction():
        conn.execute(
            "UPDATE collector_runs SET last_beat_at = now(), stopped_at = now() WHERE run_id = %s",
            (run_id,),
        )


def missing_messages(conn: psycopg.Connection) -> int:
    """Messages the devices numbered that were never stored, fleet-wide (numeric in the
    database: a sum over devices and epochs is not bounded by bigint)."""
    with conn.transaction():
        row = conn.execute("SELECT coalesce(sum(missing), 0) FROM sequence_gap_epochs").fetchone()
    return int(row[0]) if row else 0
