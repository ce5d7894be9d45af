"""Retention: how long telemetry is kept."""

from __future__ import annotations

import logging
from datetime import timedelta

import psycopg
from psycopg import sql

from atmfleet.store.migrate import Flavour

log = logging.getLogger(__name__)

#: The time-partitioned tables (hypertables on TimescaleDB).
HYPERTABLES = ("state_samples", "events", "transactions", "presence")


def set_policy(conn: psycopg.Connection, flavour: Flavour, days: int | None) -> None:
    """TimescaleDB: (re)set the retention policy of every hypertable, or remove it when
    ``days`` is None. Plain PostgreSQL has no background jobs: see :func:`prune`."""
    if flavour is not Flavour.TIMESCALE:
        return
    with conn.transaction():
        for table in HYPERTABLES:
            conn.execute("SELECT remove_retention_policy(%s, if_exists => true)", (table,))
            if days is not None:
                conn.execute(
                    "SELECT add_retention_policy(%s, drop_after => %s)",
                    (table, timedelta(days=days)),
                )


def prune(conn: psycopg.Connection, days: int) -> dict[str, int]:
    """Delete telemetry and dead letters older than ``days``; rows deleted per table."""
    deleted: dict[str, int] = {}
    with conn.transaction():
        for table in HYPERTABLES:
            cur = conn.execute(
                sql.SQL("DELETE FROM {} WHERE ts < now() - %s").format(sql.Identifier(table)),
                (timedelta(days=days),),
            )
            deleted[table] = cur.rowcount
        deleted["dead_letters"] = prune_dead_letters(conn, days)
    log.info("pruned rows older than %d days: %s", days, deleted)
    return deleted


def prune_dead_letters(conn: psycopg.Connection, days: int) -> int:
    """Delete dead letters received more than ``days`` ago (not a hypertable: no policy
    drops them on TimescaleDB either)."""
    cur = conn.execute(
        "DELETE FROM dead_letters WHERE received_at < now() - %s", (timedelta(days=days),)
    )
    return cur.rowcount
