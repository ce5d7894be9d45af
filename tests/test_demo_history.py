"""The demo's history, stored directly through the collector's decoder and writer, is the
same as what the collector stores from the broker: every row, every figure.

The collector decodes each message as it receives it and writes batches of at most 100
(the embedded broker's in-flight window); the demo's history (:mod:`app.history`) decodes each
message with its publish time as its receive time and writes batches of 5,000, in two
processes side by side (each for its own branches). The same simulated day stored both ways into two databases gives the same rows in
every table (but the receive time and the collector's id, which say how a row came) and
the same daily bulletin.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql

from app.demo import Progress, write_bulletin
from app.history import HistoryWriters
from atmfleet.store.inventory import upsert_inventory
from atmfleet.store.migrate import upgrade
from atmfleet.store.writer import Accepted, BatchWriter, Rejected
from collector.decode import decode
from rules.config import load_rules
from simulator.config import SimConfig
from simulator.engine import Emission, generate, ms
from simulator.fleet import generate_inventory
from tests.conftest import create_database, drop_database

pytestmark = pytest.mark.integration

#: Columns that say how a row came, not what it holds (and those that default to now()).
HOW = {"received_at", "collector_id", "updated_at"}


@pytest.fixture
def two_databases() -> Iterator[tuple[str, str]]:
    urls = (create_database(), create_database())
    try:
        yield urls
    finally:
        for url in urls:
            drop_database(url)


def as_the_collector_stores(url: str, emissions: list[Emission]) -> int:
    """Batches of 100, each message received now (the broker delivered the history at
    once), through the collector's decoder and writer."""
    stored = 0
    with psycopg.connect(url) as conn:
        writer = BatchWriter(conn, "atmfleet-demo-collector")
        for i in range(0, len(emissions), 100):
            got = [decode(e.topic, e.payload, datetime.now(UTC)) for e in emissions[i : i + 100]]
            result = writer.write(
                [g for g in got if isinstance(g, Accepted)],
                [g for g in got if isinstance(g, Rejected)],
            )
            stored += sum(result.stored.values()) + result.duplicates + len(result.dead)
    return stored


def table_contents(url: str) -> dict[str, list[tuple[Any, ...]]]:
    """Every row of every table, but the columns in HOW, sorted."""
    out: dict[str, list[tuple[Any, ...]]] = {}
    with psycopg.connect(url) as conn:
        tables = [
            r[0]
            for r in conn.execute(
                "SELECT table_name FROM information_schema.tables WHERE table_schema = 'public'"
                " AND table_type = 'BASE TABLE' ORDER BY 1"
            )
        ]
        for table in tables:
            columns = [
                r[0]
                for r in conn.execute(
                    "SELECT column_name, coalesce(column_default, '') FROM"
                    " information_schema.columns WHERE table_schema = 'public' AND table_name = %s"
                    " ORDER BY ordinal_position",
                    (table,),
                )
                if r[0] not in HOW and "now()" not in r[1]  # when the row was written
            ]
            query = sql.SQL("SELECT {} FROM {}").format(
                sql.SQL(", ").join(map(sql.Identifier, columns)), sql.Identifier(table)
            )
            out[table] = sorted(conn.execute(query).fetchall(), key=repr)
    return out


def test_the_history_stored_directly_equals_what_the_collector_stores(
    two_databases: tuple[str, str], tmp_path: Path
) -> None:
    rules = load_rules()
    inventory = generate_inventory(12, 3)
    config = SimConfig()
    start = datetime(2026, 11, 26, tzinfo=rules.tz).astimezone(UTC)  # a local midnight
    now = start + timedelta(days=1, hours=5)
    emissions = list(
        generate(inventory, config, 3, start, now, heartbeat_s=config.backfill_heartbeat_s)
    )
    for url in two_databases:
        with psycopg.connect(url, autocommit=True) as conn:
            upgrade(conn, timezone=rules.timezone)
        with psycopg.connect(url) as conn:
            upsert_inventory(conn, inventory)
            conn.commit()
    broker_path, direct_path = two_databases

    assert as_the_collector_stores(broker_path, emissions) == len(emissions)
    progress = Progress()
    writers = HistoryWriters()
    try:
        branch_of = {d.id: d.branch for d in inventory.devices}.__getitem__
        left = writers.store(
            direct_path, iter(emissions), ms(now), progress, threading.Event(), branch_of
        )
    finally:
        writers.close()
    assert left is None
    assert progress.sent == progress.stored == len(emissions)

    via_broker, direct = table_contents(broker_path), table_contents(direct_path)
    assert via_broker.keys() == direct.keys()
    for table in via_broker:
        assert direct[table] == via_broker[table], table
    assert len(direct["state_samples"]) > 1000 and direct["transactions"]
    assert not direct["dead_letters"]

    day = start.astimezone(rules.tz).date()
    bulletins = [
        json.loads(
            next(
                p for p in write_bulletin(url, rules, day, tmp_path / name) if p.suffix == ".json"
            ).read_text()
        )
        for name, url in (("broker", broker_path), ("direct", direct_path))
    ]
    for b in bulletins:  # when each was made
        b.pop("generated", None)
    assert bulletins[0] == bulletins[1]
    assert bulletins[1]["summary"]["uptime"]["value"] is not None
