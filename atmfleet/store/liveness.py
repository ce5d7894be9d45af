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


def stop_run(conn: psycopg.Connection, run_id: uuid.UUID) -> None:
    with conn.transaction():
        conn.execute(
            "UPDATE collector_runs SET last_beat_at = now(), stopped_at = now() WHERE run_id = %s",
            (run_id,),
        )


def missing_messages(conn: psycopg.Connection) -> int:
    """Messages the devices numbered that were never stored, fleet-wide."""
    with conn.transaction():
        row = conn.execute("SELECT coalesce(sum(missing), 0)::bigint FROM sequence_gaps").fetchone()
    return int(row[0]) if row else 0
