"""The schema: versioned migrations applied by `atmfleet db upgrade`, on plain PostgreSQL."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import psycopg
import pytest
from click.testing import CliRunner

from app.cli import cli
from atmfleet.errors import ConfigError
from atmfleet.protocol import TxnMessage, device_topic
from atmfleet.store.migrate import Flavour, discover, split_statements, upgrade
from atmfleet.store.writer import Accepted, BatchWriter

pytestmark = pytest.mark.integration

#: Every relation downstream code may query, on both flavours.
RELATIONS = {
    "schema_migrations",
    "subbranches",
    "branches",
    "devices",
    "state_samples",
    "events",
    "transactions",
    "presence",
    "counter_volumes",
    "dead_letters",
    "device_sequences",
    "sequence_gaps",
    "sequence_gap_epochs",
    "collector_runs",
    "collector_outages",
    "store_job_runs",
    "timeline_points",
    "txn_hourly",
    "txn_daily",
}


@pytest.fixture
def conn(database_url: str) -> Iterator[psycopg.Connection]:
    with psycopg.connect(database_url, autocommit=True) as c:
        yield c


def relations(conn: psycopg.Connection) -> set[str]:
    rows = conn.execute(
        "SELECT table_name FROM information_schema.tables WHERE table_schema = 'public'"
    ).fetchall()
    return {r[0] for r in rows}


class TestUpgrade:
    def test_creates_every_relation_and_records_each_version(
        self, conn: psycopg.Connection
    ) -> None:
        result = upgrade(conn, flavour=Flavour.POSTGRES)
        assert relations(conn) >= RELATIONS
        versions = [m.version for m in discover()]
        assert result.applied == versions
        recorded = conn.execute(
            "SELECT version, flavour FROM schema_migrations ORDER BY version"
        ).fetchall()
        assert recorded == [(v, "postgres") for v in versions]

    def test_a_second_upgrade_applies_nothing(self, conn: psycopg.Connection) -> None:
        upgrade(conn)
        again = upgrade(conn)
        assert again.applied == []
        assert again.current == max(m.version for m in discover())

    def test_sequence_accounting_is_split_into_boot_epochs_on_upgrade(
        self, conn: psycopg.Connection
    ) -> None:
        """Rows written before 0007 (one per device) become one row per epoch; a row
        spanning epochs is recounted from the stored messages."""
        before = [m for m in discover() if m.version < 7]
        upgrade(conn, migrations=before)
        boot = 2**32
        now = datetime.now(UTC)
        for device, seqs in (("atm-1", [3, 4, 6]), ("atm-2", [boot + 0, boot + 1, 2 * boot])):
            for seq in seqs:
                conn.execute(
                    "INSERT INTO state_samples VALUES (%s, %s, %s, %s, 'in_service', 60,"
                    " '{}', '[]', '{}')",
                    (device, seq, now, now),
                )
            conn.execute(
                "INSERT INTO device_sequences VALUES (%s, %s, %s, %s, now())",
                (device, min(seqs), max(seqs), len(seqs)),
            )
        upgrade(conn)
        rows = conn.execute(
            "SELECT device_id, epoch, min_seq, max_seq, received, missing"
            " FROM sequence_gap_epochs ORDER BY device_id, epoch"
        ).fetchall()
        assert rows == [
            ("atm-1", 0, 3, 6, 3, 1),
            ("atm-2", 1, boot, boot + 1, 2, 0),
            ("atm-2", 2, 2 * boot, 2 * boot, 1, 0),
        ]

    def test_detects_plain_postgresql_when_timescaledb_is_not_preloaded(
        self, conn: psycopg.Connection
    ) -> None:
        assert upgrade(conn).flavour is Flavour.POSTGRES

    def test_a_migration_edited_after_it_was_applied_is_refused(
        self, conn: psycopg.Connection
    ) -> None:
        migrations = discover()
        upgrade(conn, migrations=migrations)
        first = migrations[0]
        assert first.common is not None
        edited = dataclasses.replace(first, common=first.common + "\n-- edited\n")
        with pytest.raises(ConfigError, match=r"0001_core was changed after it was applied"):
            upgrade(conn, migrations=[edited, *migrations[1:]])

    def test_needs_an_autocommit_connection(self, database_url: str) -> None:
        with psycopg.connect(database_url) as c, pytest.raises(ValueError, match="autocommit"):
            upgrade(c)


class TestTransactionAggregates:
    """txn_hourly and txn_daily answer the same on both flavours; days are local days."""

    def test_daily_buckets_are_local_days_in_the_configured_zone(
        self, conn: psycopg.Connection, database_url: str
    ) -> None:
        upgrade(conn, timezone="Asia/Shanghai")
        # 17:30 UTC on the 27th is 01:30 on the 28th in Shanghai.
        times = [
            datetime(2026, 11, 27, 17, 30, tzinfo=UTC),
            datetime(2026, 11, 27, 15, 0, tzinfo=UTC),
        ]
        records = [
            Accepted(
                TxnMessage(
                    v=1,
                    device_id="atm-1",
                    ts=ts,
                    seq=i,
                    txn_id=f"t{i}",
                    type="withdrawal",
                    amount=Decimal("100"),
                    result="ok",
                    duration_ms=900,
                ),
                ts,
                device_topic("atm-1", "txn"),
                b"",
            )
            for i, ts in enumerate(times)
        ]
        with psycopg.connect(database_url) as wconn:
            BatchWriter(wconn, "test").write(records)
        daily = conn.execute(
            "SELECT (bucket AT TIME ZONE 'Asia/Shanghai')::date, txns, amount FROM txn_daily"
            " ORDER BY 1"
        ).fetchall()
        assert [(d.isoformat(), n, a) for d, n, a in daily] == [
            ("2026-11-27", 1, Decimal("100.00")),
            ("2026-11-28", 1, Decimal("100.00")),
        ]
        hourly = conn.execute("SELECT count(*), sum(txns) FROM txn_hourly").fetchone()
        assert hourly == (2, 2)

    def test_an_unknown_time_zone_is_refused_by_name(self, conn: psycopg.Connection) -> None:
        with pytest.raises(ConfigError, match="ATMFLEET_TIMEZONE: 'Mars/Olympus'"):
            upgrade(conn, timezone="Mars/Olympus")


class TestSplitStatements:
    def test_statements_end_at_a_semicolon_at_line_end_and_comments_are_skipped(self) -> None:
        text = "-- header\nCREATE VIEW a AS\nSELECT 1;\n\n-- note\nSELECT f('x;y',\n  2);\n"
        assert split_statements(text) == ["CREATE VIEW a AS\nSELECT 1;", "SELECT f('x;y',\n  2);"]


class TestDbCommand:
    def test_db_upgrade_reports_the_version_and_is_idempotent(
        self, database_url: str, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        monkeypatch.setenv("ATMFLEET_DATABASE_URL", database_url)
        runner = CliRunner()
        first = runner.invoke(cli, ["db", "upgrade"])
        assert first.exit_code == 0, first.output
        versions = [m.version for m in discover()]
        applied = ", ".join(f"{v:04d}" for v in versions)
        assert (
            f"schema at version {versions[-1]:04d} (postgres); applied: {applied}" in first.output
        )
        second = runner.invoke(cli, ["db", "upgrade"])
        assert "applied: none" in second.output
        status = runner.invoke(cli, ["db", "status"])
        assert "0001_core: applied (postgres)" in status.output

    def test_load_inventory_upserts_the_example_fleet(
        self, database_url: str, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        monkeypatch.setenv("ATMFLEET_DATABASE_URL", database_url)
        runner = CliRunner()
        runner.invoke(cli, ["db", "upgrade"])
        example = Path(__file__).parent.parent / "docs/examples/inventory.yaml"
        first = runner.invoke(cli, ["db", "load-inventory", str(example)])
        again = runner.invoke(cli, ["db", "load-inventory", str(example)])
        assert first.exit_code == 0, first.output
        assert first.output == again.output
        with psycopg.connect(database_url) as conn:
            row = conn.execute(
                "SELECT (SELECT count(*) FROM subbranches), (SELECT count(*) FROM devices)"
            ).fetchone()
        assert row is not None
        subbranches, devices = row
        assert subbranches == 4  # the example's HLBE, CF, TL, WH
        assert first.output.startswith(f"loaded {subbranches} sub-branches")
        assert f", {devices} devices" in first.output
        assert first.output.rstrip().endswith(", 6 maintainers")  # docs/examples' teams
        with psycopg.connect(database_url) as conn:
            teams = conn.execute("SELECT count(*) FROM maintainers").fetchone()
        assert teams == (6,)

    def test_counters_import_stores_and_a_later_import_replaces(
        self, database_url: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
    ) -> None:
        monkeypatch.setenv("ATMFLEET_DATABASE_URL", database_url)
        runner = CliRunner()
        runner.invoke(cli, ["db", "upgrade"])
        first, second = tmp_path / "d1.csv", tmp_path / "d2.csv"
        first.write_text("branch_id,date,financial,non_financial\nbr-1,2026-11-27,400,80\n")
        second.write_text("branch_id,date,financial\nbr-1,2026-11-27,410\n")
        result = runner.invoke(cli, ["counters", "import", str(first)])
        assert result.exit_code == 0, result.output
        assert "imported 1 of 1 branch-days" in result.output
        runner.invoke(cli, ["counters", "import", str(second)])
        with psycopg.connect(database_url) as conn:
            rows = conn.execute(
                "SELECT branch_id, date::text, financial, non_financial, source"
                " FROM counter_volumes"
            ).fetchall()
        assert rows == [("br-1", "2026-11-27", 410, 0, "file")]

    def test_a_bad_counter_file_is_a_one_line_error(
        self, database_url: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
    ) -> None:
        monkeypatch.setenv("ATMFLEET_DATABASE_URL", database_url)
        bad = tmp_path / "bad.csv"
        bad.write_text("branch_id,date,financial\nbr-1,27/11/2026,400\n")
        result = CliRunner().invoke(cli, ["counters", "import", str(bad)])
        assert result.exit_code == 2
        assert "bad.csv line 2: date" in result.output

    def test_an_unreachable_database_is_a_one_line_error_without_the_password(
        self, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        monkeypatch.setenv("ATMFLEET_DATABASE_URL", "postgresql://u:s3cret@127.0.0.1:1/db")
        result = CliRunner().invoke(cli, ["db", "upgrade"])
        assert result.exit_code == 2
        assert "cannot connect to postgresql://u:***@127.0.0.1:1/db" in result.output
        assert "s3cret" not in result.output
