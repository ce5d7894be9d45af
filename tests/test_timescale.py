"""The TimescaleDB flavour of the store, on a real server with the extension preloaded.

Skipped with the reason where the extension is not installed; the same relation names are
checked on plain PostgreSQL by the store tests.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

import psycopg
import pytest

from atmfleet.protocol import StateMessage, TxnMessage, encode
from atmfleet.store.migrate import Flavour, upgrade
from atmfleet.store.retention import HYPERTABLES, set_policy
from atmfleet.store.writer import Accepted, BatchWriter

pytestmark = [pytest.mark.integration, pytest.mark.timescale]


def _accepted(msg: StateMessage | TxnMessage, kind: str) -> Accepted:
    topic = f"atmfleet/v1/device/{msg.device_id}/{kind}"
    return Accepted(msg, datetime.now(UTC), topic, encode(msg))


def _batch(start: datetime, n: int) -> list[Accepted]:
    out = []
    for i in range(n):
        ts = start + timedelta(minutes=i)
        out.append(
            _accepted(
                StateMessage(v=1, device_id="TS-1", ts=ts, seq=2 * i, state="in_service"), "state"
            )
        )
        out.append(
            _accepted(
                TxnMessage(
                    v=1,
                    device_id="TS-1",
                    ts=ts,
                    seq=2 * i + 1,
                    txn_id=f"TS-1-{i}",
                    type="withdrawal",
                    amount=Decimal("100"),
                    result="ok",
                    duration_ms=900,
                ),
                "txn",
            )
        )
    return out


class TestTimescaleSchema:
    def test_upgrade_detects_the_extension_and_makes_hypertables(self, timescale_url: str) -> None:
        with psycopg.connect(timescale_url, autocommit=True) as conn:
            result = upgrade(conn)
            assert result.flavour is Flavour.TIMESCALE
            rows = conn.execute(
                "SELECT hypertable_name, compression_enabled FROM timescaledb_information.hypertables"
            ).fetchall()
            assert {name: comp for name, comp in rows} == {t: True for t in HYPERTABLES}
            segment = conn.execute(
                "SELECT DISTINCT hypertable_name FROM timescaledb_information.compression_settings "
                "WHERE attname = 'device_id' AND segmentby_column_index = 1"
            ).fetchall()
            assert {r[0] for r in segment} == set(HYPERTABLES)
            caggs = conn.execute(
                "SELECT view_name FROM timescaledb_information.continuous_aggregates"
            ).fetchall()
            assert {r[0] for r in caggs} == {"txn_hourly", "txn_daily"}
            assert upgrade(conn).applied == []  # idempotent

    def test_retention_policy_is_a_real_job(self, timescale_url: str) -> None:
        with psycopg.connect(timescale_url, autocommit=True) as conn:
            upgrade(conn)
            set_policy(conn, Flavour.TIMESCALE, 400)
            jobs = conn.execute(
                "SELECT hypertable_name, config->>'drop_after' FROM timescaledb_information.jobs "
                "WHERE proc_name = 'policy_retention'"
            ).fetchall()
            assert sorted(jobs) == sorted((t, "400 days") for t in HYPERTABLES)
            set_policy(conn, Flavour.TIMESCALE, None)
            assert conn.execute(
                "SELECT count(*) FROM timescaledb_information.jobs WHERE proc_name = 'policy_retention'"
            ).fetchone() == (0,)


class TestTimescaleStorage:
    def test_redelivery_is_a_no_op_and_compressed_chunks_still_dedup(
        self, timescale_url: str
    ) -> None:
        start = datetime(2026, 10, 1, tzinfo=UTC)
        batch = _batch(start, 30)
        with psycopg.connect(timescale_url, autocommit=True) as conn:
            upgrade(conn)
        with psycopg.connect(timescale_url) as conn:
            BatchWriter(conn, "c1").write(batch)
            conn.commit()
            conn.execute("SELECT compress_chunk(c) FROM show_chunks('state_samples') c")
            conn.execute("SELECT compress_chunk(c) FROM show_chunks('transactions') c")
            conn.commit()
            BatchWriter(conn, "c1").write(batch)  # redelivered after compression
            conn.commit()
            assert conn.execute("SELECT count(*) FROM state_samples").fetchone() == (30,)
            assert conn.execute("SELECT count(*) FROM transactions").fetchone() == (30,)

    def test_continuous_aggregates_count_like_the_raw_rows(self, timescale_url: str) -> None:
        start = datetime(2026, 10, 1, 15, 30, tzinfo=UTC)  # 23:30 in Shanghai
        with psycopg.connect(timescale_url, autocommit=True) as conn:
            upgrade(conn)
        with psycopg.connect(timescale_url) as conn:
            BatchWriter(conn, "c1").write(_batch(start, 60))
            conn.commit()
        with psycopg.connect(timescale_url, autocommit=True) as conn:
            conn.execute("CALL refresh_continuous_aggregate('txn_hourly', NULL, NULL)")
            conn.execute("CALL refresh_continuous_aggregate('txn_daily', NULL, NULL)")
            hourly = conn.execute("SELECT sum(txns) FROM txn_hourly").fetchone()
            assert hourly == (60,)
            daily = conn.execute(
                "SELECT (bucket AT TIME ZONE 'Asia/Shanghai')::date, sum(txns) "
                "FROM txn_daily GROUP BY 1 ORDER BY 1"
            ).fetchall()
            # 30 transactions before local midnight, 30 after: two local days.
            assert [(str(d), n) for d, n in daily] == [("2026-10-01", 30), ("2026-10-02", 30)]
