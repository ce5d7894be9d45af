"""Storing batches: idempotent, sequence-accounted, a bad row isolated, on real PostgreSQL."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal

import psycopg
import pytest
from pydantic import BaseModel

from atmfleet.inventory import Branch, Device, Inventory, SubBranch
from atmfleet.protocol import (
    CounterMessage,
    EventMessage,
    PresenceMessage,
    StateMessage,
    TxnMessage,
    counter_topic,
    device_topic,
    encode,
)
from atmfleet.store.connect import ErrorClass, classify, redact_url
from atmfleet.store.inventory import upsert_inventory
from atmfleet.store.liveness import missing_messages
from atmfleet.store.migrate import upgrade
from atmfleet.store.retention import prune
from atmfleet.store.writer import Accepted, BatchWriter, Rejected

NOW = datetime.now(UTC).replace(microsecond=0)


@pytest.fixture
def conn(database_url: str) -> Iterator[psycopg.Connection]:
    with psycopg.connect(database_url, autocommit=True) as c:
        upgrade(c)
    with psycopg.connect(database_url) as c:
        yield c


@pytest.fixture
def writer(conn: psycopg.Connection) -> BatchWriter:
    return BatchWriter(conn, "test-collector")


def rec(msg: BaseModel, topic: str = "") -> Accepted:
    return Accepted(msg, NOW, topic or "atmfleet/v1/test", encode(msg))  # type: ignore[arg-type]


def st(seq: int, device: str = "atm-1", ts: datetime = NOW, **kw: object) -> Accepted:
    msg = StateMessage(
        **{"v": 1, "device_id": device, "ts": ts, "seq": seq, "state": "in_service", **kw}
    )
    return rec(msg, device_topic(device, "state"))


def txn(seq: int, txn_id: str, device: str = "atm-1") -> Accepted:
    msg = TxnMessage(
        v=1, device_id=device, ts=NOW, seq=seq, txn_id=txn_id, type="withdrawal",
        amount=Decimal("300.00"), fee=Decimal("2.00"), result="ok", duration_ms=1200,
    )  # fmt: skip
    return rec(msg, device_topic(device, "txn"))


def count(conn: psycopg.Connection, table: str) -> int:
    row = conn.execute(f"SELECT count(*) FROM {table}").fetchone()
    conn.commit()
    return int(row[0]) if row else 0


@pytest.mark.integration
class TestIdempotentStorage:
    """A redelivered message (same device, seq, ts) stores nothing the second time."""

    def test_every_kind_is_stored_once_however_often_it_is_written(
        self, conn: psycopg.Connection, writer: BatchWriter
    ) -> None:
        batch = [
            st(1, components={"cdm": "ok"}),
            rec(EventMessage(v=1, device_id="atm-1", ts=NOW, seq=2, event="fault", code="E7")),
            txn(3, "TX-1"),
            rec(PresenceMessage(v=1, device_id="atm-1", status="online", ts=NOW, session="s1")),
        ]
        first = writer.write(batch)
        second = writer.write(batch)
        assert first.stored == {"state": 1, "event": 1, "txn": 1, "presence": 1}
        assert first.duplicates == 0
        assert sum(second.stored.values()) == 0
        assert second.duplicates == 4
        for table in ("state_samples", "events", "transactions", "presence"):
            assert count(conn, table) == 1, table

    def test_a_batch_of_more_devices_than_the_shared_lock_table_holds_is_stored(
        self, conn: psycopg.Connection, writer: BatchWriter
    ) -> None:
        """20,000 devices in one batch (a large fleet's heartbeats, or a large batch_size):
        one lock per device in the transaction would exhaust PostgreSQL's shared lock
        table (6,400 slots by default) and fail with "out of shared memory"."""
        devices = 20_000
        result = writer.write([st(1, device=f"atm-{i}") for i in range(devices)])
        assert result.stored == {"state": devices}
        assert count(conn, "state_runs") == devices

    def test_a_batch_mixing_known_and_new_devices_is_stored(
        self, conn: psycopg.Connection, writer: BatchWriter
    ) -> None:
        writer.write([st(1, device="atm-1")])
        later = NOW + timedelta(seconds=60)
        result = writer.write([st(2, device="atm-1", ts=later), st(1, device="atm-2", ts=later)])
        assert result.stored == {"state": 2}

    def test_a_duplicate_inside_one_batch_is_stored_once(
        self, conn: psycopg.Connection, writer: BatchWriter
    ) -> None:
        result = writer.write([st(1), st(1), txn(2, "TX-2"), txn(2, "TX-2")])
        assert result.stored == {"state": 1, "txn": 1}
        assert result.duplicates == 2

    def test_a_transaction_id_seen_before_is_not_stored_again(
        self, conn: psycopg.Connection, writer: BatchWriter
    ) -> None:
        writer.write([txn(5, "TX-9")])
        writer.write([txn(6, "TX-9")])  # same txn_id and ts, new seq: the same transaction
        assert count(conn, "transactions") == 1

    def test_stored_values_keep_their_types(
        self, conn: psycopg.Connection, writer: BatchWriter
    ) -> None:
        cash = [{"id": "A", "type": "dispense", "denomination": 100, "count": 40, "status": "low"}]
        writer.write(
            [
                st(1, components={"cdm": "warning"}, cash_units=cash, faults=["CDM-17"]),
                txn(2, "TX-3"),
            ]
        )
        row = conn.execute(
            "SELECT state, components, cash_units, faults FROM state_samples"
        ).fetchone()
        assert row == (
            "in_service",
            {"cdm": "warning"},
            [{**cash[0], "currency": "CNY", "capacity": None}],
            ["CDM-17"],
        )
        t = conn.execute("SELECT type, financial, amount, fee, on_us FROM transactions").fetchone()
        assert t == ("withdrawal", True, Decimal("300.00"), Decimal("2.00"), True)


@pytest.mark.integration
class TestSequenceAccounting:
    """missing = max_seq - min_seq + 1 - distinct messages stored, per device."""

    def gaps(self, conn: psycopg.Connection) -> dict[str, tuple[int, int, int, int]]:
        rows = conn.execute(
            "SELECT device_id, min_seq, max_seq, received, missing FROM sequence_gaps"
        ).fetchall()
        conn.commit()
        return {r[0]: tuple(r[1:]) for r in rows}

    def test_missing_messages_are_counted_and_redelivery_does_not_hide_them(
        self, conn: psycopg.Connection, writer: BatchWriter
    ) -> None:
        writer.write([st(10), st(11), txn(14, "TX-14"), st(1, device="atm-2")])
        writer.write([st(11), txn(14, "TX-14")])  # redelivered: nothing new
        assert self.gaps(conn) == {"atm-1": (10, 14, 3, 2), "atm-2": (1, 1, 1, 0)}

    def test_a_late_backlog_fills_the_gap(
        self, conn: psycopg.Connection, writer: BatchWriter
    ) -> None:
        writer.write([st(10), st(14)])
        writer.write([st(11), st(12), st(13), st(9)])  # store-and-forward, out of order
        assert self.gaps(conn)["atm-1"] == (9, 14, 6, 0)

    def test_the_extreme_valid_seqs_do_not_overflow_the_gap_view(
        self, conn: psycopg.Connection, writer: BatchWriter
    ) -> None:
        writer.write([st(0), st(2**63 - 1)])
        # Two epochs (0 and 2^31 - 1), each with its one message: nothing missing.
        assert self.gaps(conn)["atm-1"] == (0, 2**63 - 1, 2, 0)
        assert missing_messages(conn) == 0
        writer.write([st(2**63 - 3)])
        assert missing_messages(conn) == 1  # 2^63-2 of the last epoch

    def test_a_reboot_in_the_boot_epoch_scheme_is_not_loss(
        self, conn: psycopg.Connection, writer: BatchWriter
    ) -> None:
        """seq = boot_count x 2^32 + counter_since_boot (docs/protocol.md §3)."""
        boot = 2**32
        writer.write([st(7 * boot + c) for c in range(5)])
        writer.write([st(8 * boot + c) for c in (0, 1, 3)])  # rebooted; 8·2^32+2 lost
        assert self.gaps(conn)["atm-1"] == (7 * boot, 8 * boot + 3, 8, 1)
        epochs = conn.execute(
            "SELECT epoch, min_seq, max_seq, received, missing FROM sequence_gap_epochs"
            " ORDER BY epoch"
        ).fetchall()
        conn.commit()
        assert epochs == [(7, 7 * boot, 7 * boot + 4, 5, 0), (8, 8 * boot, 8 * boot + 3, 3, 1)]
        assert missing_messages(conn) == 1

    def test_a_device_counting_from_a_persisted_mark_stays_in_epoch_0(
        self, conn: psycopg.Connection, writer: BatchWriter
    ) -> None:
        writer.write([st(184_467), st(184_470)])
        assert self.gaps(conn)["atm-1"] == (184_467, 184_470, 2, 2)
        assert conn.execute("SELECT epoch FROM device_sequences").fetchall() == [(0,)]


@pytest.mark.integration
class TestRowsTheDatabaseRefuses:
    def test_a_bad_row_is_dead_lettered_and_its_neighbours_are_stored(
        self, conn: psycopg.Connection, writer: BatchWriter
    ) -> None:
        bad = st(5, faults=["CDM\x00-17"])  # valid JSON, but text cannot hold NUL
        batch = [st(1), st(2), txn(3, "TX-3"), st(4), bad, st(6), st(7)]
        rejected = Rejected.of("atmfleet/v1/device/x/state", b"{", NOW, "bad_json", "oops")
        result = writer.write(batch, [rejected])
        assert result.stored == {"state": 5, "txn": 1}
        assert [d.reason for d in result.dead] == ["bad_json", "db_rejected"]
        rows = conn.execute(
            "SELECT reason, topic, payload, collector_id FROM dead_letters ORDER BY id"
        ).fetchall()
        assert rows[1] == ("db_rejected", bad.topic, bad.payload, "test-collector")
        assert "22021" in result.dead[1].detail
        assert count(conn, "state_samples") == 5

    def test_dead_letters_are_written_even_when_no_message_was_accepted(
        self, conn: psycopg.Connection, writer: BatchWriter
    ) -> None:
        writer.write([], [Rejected.of("t", b"\x00\xff" * 5000, NOW, "not_utf8", "byte 1")])
        size, stored = conn.execute(
            "SELECT payload_size, length(payload) FROM dead_letters"
        ).fetchone() or (0, 0)
        assert (size, stored) == (10_000, 4096)


@pytest.mark.integration
class TestTwoStatesAtOneInstant:
    """A device reporting two states with one seq within one millisecond (a clock with
    microseconds, a replay): both samples are stored, the run at that instant is the worse
    state whatever the order, and the batch does not fail (it used to stop the collector
    with SQLSTATE 21000 on every redelivery)."""

    TWINS = ("fault", "in_service")

    def twin(self, state: str, micros: int) -> Accepted:
        return st(7, ts=NOW.replace(microsecond=micros), state=state)

    def runs(self, conn: psycopg.Connection) -> list[tuple[object, ...]]:
        rows = conn.execute(
            "SELECT device_id, start_seq, state, samples FROM state_runs"
            " ORDER BY device_id, start_ts"
        ).fetchall()
        conn.commit()
        return rows

    @pytest.mark.parametrize("first", TWINS)
    def test_in_one_batch(self, conn: psycopg.Connection, writer: BatchWriter, first: str) -> None:
        second = next(s for s in self.TWINS if s != first)
        result = writer.write([st(6, device="atm-2"), self.twin(first, 100),
                               self.twin(second, 200), st(8, device="atm-2")])  # fmt: skip
        assert result.stored == {"state": 4}
        assert self.runs(conn) == [("atm-1", 7, "fault", 1), ("atm-2", 6, "in_service", 2)]

    @pytest.mark.parametrize("first", TWINS)
    def test_in_two_batches(
        self, conn: psycopg.Connection, writer: BatchWriter, first: str
    ) -> None:
        second = next(s for s in self.TWINS if s != first)
        writer.write([self.twin(first, 100)])
        result = writer.write([self.twin(second, 200)])
        assert result.stored == {"state": 1}
        assert self.runs(conn) == [("atm-1", 7, "fault", 1)]


@pytest.mark.integration
class TestCounterVolumes:
    def counter(self, financial: int, ts: datetime) -> Accepted:
        msg = CounterMessage(
            v=1, branch_id="br-1", date=date(2026, 11, 27), financial=financial, ts=ts
        )
        return rec(msg, counter_topic("br-1"))

    def test_a_later_report_replaces_an_earlier_one_and_an_older_one_is_ignored(
        self, conn: psycopg.Connection, writer: BatchWriter
    ) -> None:
        writer.write([self.counter(100, NOW - timedelta(hours=2))])
        writer.write([self.counter(120, NOW - timedelta(hours=1))])
        writer.write([self.counter(90, NOW - timedelta(hours=3))])
        rows = conn.execute("SELECT branch_id, financial FROM counter_volumes").fetchall()
        assert rows == [("br-1", 120)]

    def test_two_reports_in_one_batch_keep_the_latest(
        self, conn: psycopg.Connection, writer: BatchWriter
    ) -> None:
        writer.write([self.counter(7, NOW), self.counter(5, NOW - timedelta(minutes=1))])
        assert conn.execute("SELECT financial FROM counter_volumes").fetchall() == [(7,)]


@pytest.mark.integration
class TestInventoryAndRetention:
    def test_loading_the_inventory_twice_updates_in_place(self, conn: psycopg.Connection) -> None:
        inv = Inventory(
            subbranches=(SubBranch(id="sb-1", name="赤峰", tier="2"),),
            branches=(Branch(id="br-1", name="Main", subbranch="sb-1"),),
            devices=(
                Device(id="atm-1", branch="br-1", type="crs", placement="on_site", vendor="V",
                       model="M", commissioned=date(2024, 1, 1)),
            ),
        )  # fmt: skip
        assert upsert_inventory(conn, inv) == (1, 1, 1)
        moved = inv.model_copy(
            update={"devices": (inv.devices[0].model_copy(update={"vendor": "W"}),)}
        )
        upsert_inventory(conn, moved)
        assert conn.execute("SELECT id, vendor, deposit_capable FROM devices").fetchall() == [
            ("atm-1", "W", True)
        ]

    def test_prune_deletes_only_rows_older_than_the_retention(
        self, conn: psycopg.Connection, writer: BatchWriter
    ) -> None:
        writer.write([st(1, ts=NOW - timedelta(days=40)), st(2)])
        assert prune(conn, 30)["state_samples"] == 1
        assert count(conn, "state_samples") == 1


class TestErrorClassification:
    """Temporary errors are retried, data errors isolate a row, the rest stops the collector."""

    @pytest.mark.parametrize(
        ("sqlstate", "expected"),
        [
            ("08006", ErrorClass.TEMPORARY),  # connection failure
            ("57P01", ErrorClass.TEMPORARY),  # admin shutdown (pg_terminate_backend)
            ("40P01", ErrorClass.TEMPORARY),  # deadlock
            ("53100", ErrorClass.TEMPORARY),  # disk full
            ("55P03", ErrorClass.TEMPORARY),  # lock not available
            ("22021", ErrorClass.DATA),  # bad byte sequence
            ("23514", ErrorClass.DATA),  # check violation
            ("21000", ErrorClass.DATA),  # cardinality: one key twice in a batch's upsert
            ("42P01", ErrorClass.FATAL),  # undefined table: schema missing
            ("42501", ErrorClass.FATAL),  # insufficient privilege
        ],
    )
    def test_by_sqlstate(self, sqlstate: str, expected: ErrorClass) -> None:
        exc = psycopg.errors.lookup(sqlstate)("x")
        assert classify(exc) is expected

    def test_a_lost_connection_without_sqlstate_is_temporary(self) -> None:
        assert classify(psycopg.OperationalError("the connection is lost")) is ErrorClass.TEMPORARY

    def test_redact_url_hides_only_the_password(self) -> None:
        assert (
            redact_url("postgresql://ingest:p%40ss@db:5432/fleet?sslmode=verify-full")
            == "postgresql://ingest:***@db:5432/fleet?sslmode=verify-full"
        )
