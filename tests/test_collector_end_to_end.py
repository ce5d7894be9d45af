"""Simulator -> Mosquitto -> collector -> rows: the rows equal the simulator's ledger."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import psycopg
import pytest

from atmfleet.settings import Settings
from atmfleet.store.migrate import upgrade
from simulator.config import SimConfig
from simulator.engine import generate
from simulator.fleet import generate_inventory
from simulator.ledger import Ledger
from simulator.publisher import FleetPublisher
from tests.test_collector_service import Broker, running, settings_for, start_broker, wait_until

pytestmark = [pytest.mark.integration, pytest.mark.slow]

SEED = 11
#: Three simulated days with few heartbeats: faults, offline spells and counters happen.
HEARTBEAT_S = 600


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Broker]:
    b = start_broker(tmp_path_factory.mktemp("mosquitto"))
    yield b
    b.process.terminate()
    b.process.wait(10)


def counts(db: str) -> dict[str, int]:
    with psycopg.connect(db) as conn:
        row = conn.execute(
            "SELECT (SELECT count(*) FROM state_samples), (SELECT count(*) FROM events),"
            " (SELECT count(*) FROM transactions), (SELECT count(*) FROM presence),"
            " (SELECT count(*) FROM dead_letters)"
        ).fetchone()
    assert row is not None
    return dict(zip(("state", "event", "txn", "presence", "dead"), row, strict=True))


class TestSimulatedFleet:
    def test_every_message_the_fleet_sent_is_a_row_and_nothing_more(
        self, broker: Broker, database_url: str, run_id: str
    ) -> None:
        with psycopg.connect(database_url, autocommit=True) as conn:
            upgrade(conn)
        config = SimConfig()
        inventory = generate_inventory(25, SEED, prefix=f"t{run_id}", config=config)
        end = datetime.now(UTC).replace(second=0, microsecond=0) - timedelta(minutes=10)
        start = end - timedelta(days=3)
        ledger = Ledger(inventory, config, SEED, heartbeat_s=HEARTBEAT_S)
        branch = {d.id: d.branch for d in inventory.devices}
        with running(settings_for(broker.url, database_url), f"c{run_id}"):
            publisher = FleetPublisher(Settings(mqtt_url=broker.url), per_device=False, pool_size=2)
            stats = publisher.run(
                generate(inventory, config, SEED, start, end, heartbeat_s=HEARTBEAT_S),
                branch_of=branch.__getitem__,
                on_sent=ledger.record,
            )
            assert stats.complete
            expected = {k: ledger.counts[k] for k in ("state", "event", "txn", "presence")}
            assert sum(expected.values()) > 1000
            wait_until(
                lambda: {k: v for k, v in counts(database_url).items() if k != "dead"} == expected,
                timeout=60,
                what=f"rows == ledger {expected}",
            )
        assert counts(database_url)["dead"] == 0

        with psycopg.connect(database_url) as conn:
            days = conn.execute(
                "SELECT device_id, (ts AT TIME ZONE %s)::date::text,"
                " count(*) FILTER (WHERE financial AND result = 'ok'),"
                " count(*) FILTER (WHERE result = 'ok'), count(*),"
                " coalesce(sum(fee) FILTER (WHERE result = 'ok'), 0)"
                " FROM transactions GROUP BY 1, 2",
                (config.timezone,),
            ).fetchall()
            counters = conn.execute(
                "SELECT branch_id, date::text, financial, non_financial FROM counter_volumes"
            ).fetchall()
            missing = conn.execute("SELECT coalesce(sum(missing), 0) FROM sequence_gaps").fetchone()
        stored_days = {(d, day): [fin, ok, n, int(fee * 100)] for d, day, fin, ok, n, fee in days}
        assert stored_days == ledger.txn_days
        latest = {(c.branch_id, c.date): (c.financial, c.non_financial) for c in ledger.counters}
        assert {(b, d): (f, nf) for b, d, f, nf in counters} == latest
        assert missing is not None and missing[0] == 0
