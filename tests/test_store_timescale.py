"""The TimescaleDB flavour, on a private PostgreSQL started with timescaledb preloaded.

Skipped (with the reason) where the server binaries have no timescaledb extension.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

import psycopg
import pytest

from atmfleet.protocol import StateMessage, TxnMessage, device_topic, encode
from atmfleet.store.migrate import Flavour, upgrade
from atmfleet.store.retention import HYPERTABLES, set_policy
from atmfleet.store.writer import Accepted, BatchWriter
from tests.test_store_migrations import RELATIONS

pytestmark = [pytest.mark.integration, pytest.mark.timescale]


@pytest.fixture
def ts_url(timescale_url: str) -> str:
    """A new database on the private TimescaleDB server (tests/conftest.py), upgraded."""
    with psycopg.connect(timescale_url, autocommit=True) as conn:
        assert upgrade(conn).flavour is Flavour.TIMESCALE
    return timescale_url


def column(url: str, query: str) -> list[object]:
    with psycopg.connect(url) as conn:
        return [r[0] for r in conn.execute(query.encode())]


class TestTimescaleSchema:
    def test_the_same_relations_exist_as_on_plain_postgresql(self, ts_url: str) -> None:
        names = column(
            ts_url,
            "SELECT table_name FROM information_schema.tables WHERE table_schema = 'public'",
        )
        names += column(
            ts_url, "SELECT view_name FROM timescaledb_information.continuous_aggregates"
        )
        assert set(names) >= RELATIONS

    def test_telemetry_tables_are_hypertables_compressed_by_device(self, ts_url: str) -> None:
        hypertables = column(
            ts_url, "SELECT hypertable_name FROM timescaledb_information.hypertables"
        )
        assert sorted(hypertables) == sorted(HYPERTABLES)  # type: ignore[type-var]
        segmentby = column(
            ts_url,
            "SELECT DISTINCT hypertable::text || ':' || coalesce(segmentby, '-')"
            " FROM timescaledb_information.hypertable_compression_settings"
            " WHERE hypertable::text NOT LIKE '\\_timescaledb%'",
        )
        assert sorted(segmentby) == sorted(f"{t}:device_id" for t in HYPERTABLES)  # type: ignore[type-var]

    def test_transaction_counts_are_continuous_aggregates(self, ts_url: str) -> None:
        views = column(
            ts_url, "SELECT view_name FROM timescaledb_information.continuous_aggregates"
        )
        assert sorted(views) == ["txn_daily", "txn_hourly"]  # type: ignore[type-var]

    def test_retention_is_a_policy_that_can_be_changed_and_removed(self, ts_url: str) -> None:
        query = (
            "SELECT hypertable_name || ' ' || (config->>'drop_after')"
            " FROM timescaledb_information.jobs WHERE proc_name = 'policy_retention'"
        )
        with psycopg.connect(ts_url) as conn:
            set_policy(conn, Flavour.TIMESCALE, 30)
            set_policy(conn, Flavour.TIMESCALE, 90)
        assert sorted(column(ts_url, query)) == sorted(f"{t} 90 days" for t in HYPERTABLES)  # type: ignore[type-var]
        with psycopg.connect(ts_url) as conn:
            set_policy(conn, Flavour.TIMESCALE, None)
        assert column(ts_url, query) == []


class TestTimescaleIngest:
    def test_redelivery_is_a_no_op_even_into_a_compressed_chunk(self, ts_url: str) -> None:
        ts = datetime.now(UTC) - timedelta(days=10)
        msgs = [
            StateMessage(v=1, device_id="atm-1", ts=ts, seq=s, state="in_service") for s in range(5)
        ]
        batch = [Accepted(m, ts, device_topic("atm-1", "state"), encode(m)) for m in msgs]
        with psycopg.connect(ts_url) as conn:
            writer = BatchWriter(conn, "test")
            assert writer.write(batch).stored == {"state": 5}
            conn.execute("SELECT compress_chunk(c) FROM show_chunks('state_samples') c")
            conn.commit()
            again = writer.write(batch)
        assert sum(again.stored.values()) == 0 and again.duplicates == 5
        assert column(ts_url, "SELECT count(*) FROM state_samples") == [5]

    def test_real_time_aggregates_count_fresh_transactions_by_local_day(self, ts_url: str) -> None:
        at = datetime(2026, 11, 27, 17, 30, tzinfo=UTC)  # 01:30 on the 28th in Shanghai
        msg = TxnMessage(
            v=1, device_id="atm-1", ts=at, seq=1, txn_id="T1", type="withdrawal",
            amount=Decimal("200"), result="ok", duration_ms=800,
        )  # fmt: skip
        with psycopg.connect(ts_url) as conn:
            BatchWriter(conn, "test").write([Accepted(msg, at, device_topic("atm-1", "txn"), b"")])
        daily = column(
            ts_url, "SELECT (bucket AT TIME ZONE 'Asia/Shanghai')::date::text FROM txn_daily"
        )
        assert daily == ["2026-11-28"]
        assert column(ts_url, "SELECT sum(txns) FROM txn_hourly") == [1]
