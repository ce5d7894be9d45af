"""``atmfleet serve``'s incremental refresh equals a full one.

A source that re-reads only the devices heard from since its last read (the default)
must render, after every change in the store, the exposition a fresh source reading the
whole fleet renders at the same instant, byte for byte but for the refresh's own
timing series. The fleet is tests/test_serve.py's (stored with the real writer); the
changes are new messages (a new state, a heartbeat that ends an offline gap, new cash
counts, a broker will), a new device, a device leaving the fleet and a new local day.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta

import psycopg
import pytest
from prometheus_client import CollectorRegistry

from atmfleet.protocol import CashUnit, PresenceMessage, StateMessage, device_topic, encode
from atmfleet.store.writer import Accepted, BatchWriter
from exporters.metrics import LEAN_LEAVES_OUT, DatabaseSource, Exporter, Targets
from rules.timeline import from_ms, ms
from rules.uptime import day_span
from tests.test_serve import HB, Fleet, store_fleet

#: The refresh's own timing (how long it took, when it ended): they differ between two
#: reads by construction.
TIMING = (
    "atmfleet_exporter_scrape_duration_seconds",
    "atmfleet_exporter_refresh_timestamp_seconds",
)


class Clock:
    """The instant both sources read at (ms), set by the test."""

    def __init__(self) -> None:
        self.at = ms(datetime.now(UTC))

    def now(self) -> int:
        return self.at

    def to_wall(self) -> None:
        self.at = ms(datetime.now(UTC))


def exposition(source: DatabaseSource, fleet: Fleet, lean: bool) -> str:
    """One refresh of ``source`` rendered, without the lines of :data:`TIMING`."""
    exporter = Exporter(
        source,
        CollectorRegistry(),
        Targets.from_rules(fleet.rules),
        leave_out=LEAN_LEAVES_OUT if lean else frozenset(),
    )
    exporter.refresh()
    text = exporter.exposition().decode()
    return "".join(line for line in text.splitlines(True) if not line.startswith(TIMING))


class Pair:
    """The source under test (kept across reads) and a fresh full read to compare with."""

    def __init__(self, fleet: Fleet, clock: Clock, lean: bool) -> None:
        self.fleet, self.clock, self.lean = fleet, clock, lean
        self.source = self._source(incremental=True)

    def _source(self, incremental: bool) -> DatabaseSource:
        return DatabaseSource(
            self.fleet.url, self.fleet.rules, background=True, last_seen=not self.lean,
            incremental=incremental, now_ms=self.clock.now,
        )  # fmt: skip

    def check(self) -> tuple[str, int]:
        """Assert the kept source's exposition is the full one's; return what it read."""
        got = exposition(self.source, self.fleet, self.lean)
        reference = self._source(incremental=False)
        try:
            want = exposition(reference, self.fleet, self.lean)
        finally:
            reference.close()
        assert "atmfleet_exporter_database_up 1.0" in want
        assert got == want
        return self.source.last_rows

    def close(self) -> None:
        self.source.close()


@pytest.fixture
def fleet(database_url: str, run_id: str) -> Fleet:
    return store_fleet(database_url, run_id)


@pytest.fixture(params=[True, False], ids=["lean", "full"])
def pair(request: pytest.FixtureRequest, fleet: Fleet) -> Iterator[Pair]:
    p = Pair(fleet, Clock(), lean=request.param)
    try:
        yield p
    finally:
        p.close()


def store(
    fleet: Fleet, *messages: StateMessage | PresenceMessage, received: datetime | None = None
) -> None:
    """Store ``messages`` through the real writer, received now (or at ``received``)."""
    received = received or datetime.now(UTC)
    batch = []
    for m in messages:
        kind = "state" if isinstance(m, StateMessage) else "presence"
        batch.append(Accepted(m, received, device_topic(m.device_id, kind), encode(m)))
    with psycopg.connect(fleet.url) as conn:
        BatchWriter(conn, "test").write(batch)


def device(fleet: Fleet, key: str) -> str:
    with psycopg.connect(fleet.url) as conn:
        row = conn.execute("SELECT id FROM devices WHERE id LIKE %s", (f"{key}-%",)).fetchone()
    assert row is not None
    return str(row[0])


def heartbeat(fleet: Fleet, dev: str) -> StateMessage:
    """A heartbeat of ``dev`` in service now, its seq after every stored one."""
    with psycopg.connect(fleet.url) as conn:
        (seq,) = conn.execute(
            "SELECT max(seq) FROM state_samples WHERE device_id = %s", (dev,)
        ).fetchone() or (0,)
    return state(dev, "in_service", (seq or 0) + 1)


def state(dev: str, state: str, seq: int, **kw: object) -> StateMessage:
    ts = datetime.now(UTC).replace(microsecond=0) - timedelta(seconds=1)
    return StateMessage(v=1, device_id=dev, ts=ts, seq=seq, state=state, heartbeat_s=HB, **kw)  # type: ignore[arg-type]


class TestNewMessages:
    def test_a_new_state_a_heartbeat_after_silence_and_new_cash_counts(self, pair: Pair) -> None:
        fleet = pair.fleet
        assert pair.check()[0] == "full"  # the first read
        pair.clock.to_wall()
        cash = [CashUnit(id="1", type="dispense", denomination=100, count=5, capacity=1000,
                         status="low")]  # fmt: skip
        store(
            fleet,
            state(device(fleet, "B"), "in_service", 5000),  # the fault ends
            state(device(fleet, "C"), "in_service", 5000),  # back after 30 minutes' silence
            state(device(fleet, "A"), "in_service", 5000, cash_units=cash),
        )
        pair.clock.to_wall()
        kind, read = pair.check()
        assert kind == "incremental"
        assert 3 <= read < 6  # B, C, A (and whatever was received within late_s)

    def test_a_broker_will_then_nothing_new(self, pair: Pair) -> None:
        fleet = pair.fleet
        pair.check()
        pair.clock.to_wall()
        will = PresenceMessage(v=1, device_id=device(fleet, "G"), status="offline",
                               ts=datetime.now(UTC), session="s2", will=True)  # fmt: skip
        store(fleet, will)
        pair.clock.to_wall()
        assert pair.check()[0] == "incremental"
        pair.clock.at += 20 * 60_000  # later, with no message: timeouts pass, windows turn
        assert pair.check()[0] == "incremental"


class TestTheFleetChanging:
    def test_a_new_device_and_a_device_leaving_read_everything_again(self, pair: Pair) -> None:
        fleet = pair.fleet
        pair.check()
        today = from_ms(pair.clock.now()).astimezone(fleet.rules.tz).date()
        new = device(fleet, "A").replace("A-", "H-")
        with psycopg.connect(fleet.url) as conn:
            conn.execute(
                "INSERT INTO devices (id, branch, type, placement, vendor, model, commissioned,"
                " deposit_capable, heartbeat_s) VALUES (%s, 'B2', 'crs', 'off_site', 'GRG',"
                " 'H68N', '2025-01-01', true, %s)",
                (new, HB),
            )
        pair.clock.to_wall()
        assert pair.check()[0] == "full"
        store(fleet, state(new, "in_service", 1))
        pair.clock.to_wall()
        assert pair.check()[0] == "incremental"
        with psycopg.connect(fleet.url) as conn:
            conn.execute(
                "UPDATE devices SET decommissioned = %s WHERE id = %s", (today, device(fleet, "B"))
            )
        pair.clock.to_wall()
        assert pair.check()[0] == "full"


class TestTime:
    def test_a_new_local_day_reads_everything_again(self, pair: Pair) -> None:
        fleet = pair.fleet
        today = from_ms(pair.clock.now()).astimezone(fleet.rules.tz).date()
        midnight = day_span(today + timedelta(days=1), fleet.rules.tz)[0]
        pair.clock.at = midnight - 1000
        assert pair.check()[0] == "full"
        store(fleet, state(device(fleet, "B"), "in_service", 5000))
        pair.clock.at = midnight + 1000
        assert pair.check()[0] == "full"

    def test_every_full_every_s_the_read_is_full(self, fleet: Fleet) -> None:
        ticks = [0.0]
        clock: Callable[[], float] = lambda: ticks[0]  # noqa: E731
        source = DatabaseSource(fleet.url, fleet.rules, background=True, clock=clock,
                                full_every_s=300)  # fmt: skip
        try:
            kinds = []
            for at in (0.0, 299.0, 300.0, 301.0):
                ticks[0] = at
                source.read()
                kinds.append(source.last_rows[0])
            assert kinds == ["full", "incremental", "full", "incremental"]
        finally:
            source.close()


@pytest.mark.timescale
class TestOnTimescaleDB:
    @pytest.mark.parametrize("lean", [False, True], ids=["full", "lean"])
    def test_with_every_chunk_compressed_the_incremental_read_equals_the_full_one(
        self, timescale_url: str, run_id: str, lean: bool
    ) -> None:
        """Hypertables partitioned by ts, compressed chunks, the BRIN indexes of
        migration 0021 on each chunk: the same equality."""
        fleet = store_fleet(timescale_url, run_id)
        with psycopg.connect(timescale_url, autocommit=True) as conn:
            for table in ("state_samples", "presence"):
                conn.execute(f"SELECT compress_chunk(c) FROM show_chunks('{table}') c")
            indexes = conn.execute(
                "SELECT count(*) FROM pg_indexes WHERE indexname LIKE '%received_brin'"
            ).fetchone()
        assert indexes is not None and indexes[0] >= 4
        pair = Pair(fleet, Clock(), lean=lean)
        try:
            assert pair.check()[0] == "full"
            pair.clock.to_wall()
            store(fleet, state(device(fleet, "B"), "in_service", 5000))
            pair.clock.to_wall()
            assert pair.check()[0] == "incremental"
            a = device(fleet, "A")  # a heartbeat continuing A's run (settled when lean)
            store(fleet, heartbeat(fleet, a))
            pair.clock.to_wall()
            assert pair.check()[0] == "incremental"
        finally:
            pair.close()


class TestHeardFrom:
    """A lean source settles the devices whose new samples only continue their latest
    run from the samples received (HEARD_QUERY); anything else is read in full. Every
    read still equals the full one."""

    def test_a_heartbeat_continuing_the_run_is_settled(self, fleet: Fleet) -> None:
        pair = Pair(fleet, Clock(), lean=True)
        try:
            pair.check()
            a = device(fleet, "A")
            store(fleet, heartbeat(fleet, a))
            pair.clock.to_wall()
            assert pair.check()[0] == "incremental"
            assert pair.source.last_settled >= 1
        finally:
            pair.close()

    def test_two_states_in_one_read_a_new_run_of_the_old_state(self, pair: Pair) -> None:
        fleet = pair.fleet
        pair.check()
        a = device(fleet, "A")
        now = datetime.now(UTC).replace(microsecond=0)
        fault = state(a, "fault", 6000)
        back = state(a, "in_service", 6001)
        store(fleet, fault.model_copy(update={"ts": now - timedelta(seconds=2)}),
              back.model_copy(update={"ts": now - timedelta(seconds=1)}))  # fmt: skip
        pair.clock.to_wall()
        pair.check()  # in service again, since a second ago: not since yesterday

    def test_a_late_sample_of_another_state_inside_the_run(self, pair: Pair) -> None:
        fleet = pair.fleet
        pair.check()
        a = device(fleet, "A")
        late = state(a, "fault", 7000)
        store(fleet, late.model_copy(update={"ts": late.ts - timedelta(minutes=42)}))
        pair.clock.to_wall()
        pair.check()  # the run in service now starts after the fault

    def test_a_sample_at_the_start_of_the_latest_run(self, pair: Pair) -> None:
        fleet = pair.fleet
        pair.check()
        b = device(fleet, "B")  # in fault for 20 minutes
        with psycopg.connect(fleet.url) as conn:
            (start,) = conn.execute(
                "SELECT max(start_ts) FROM state_runs WHERE device_id = %s", (b,)
            ).fetchone() or (None,)
        assert start is not None
        store(fleet, StateMessage(v=1, device_id=b, ts=start, seq=1, state="in_service",
                                  heartbeat_s=HB))  # fmt: skip
        pair.clock.to_wall()
        pair.check()

    def test_a_late_sample_that_joins_the_run_to_an_earlier_one(self, fleet: Fleet) -> None:
        """C, silent for 30 minutes (timeout 15), is heard from: in service since now.
        Two minutes later a store-and-forward sample of 10 minutes ago arrives: the
        latest run keeps its start, but the gap behind it is now within the timeout, so
        C has been in service since 10 minutes ago."""
        pair = Pair(fleet, Clock(), lean=True)
        try:
            pair.check()
            c = device(fleet, "C")
            store(fleet, state(c, "in_service", 8000))
            pair.clock.to_wall()
            pair.check()
            pair.clock.at += 120_000  # the first sample of the run is out of the window now
            at = from_ms(pair.clock.at)
            late = state(c, "in_service", 7999)
            store(fleet, late.model_copy(update={"ts": late.ts - timedelta(minutes=10)}),
                  received=at)  # fmt: skip
            assert pair.check()[0] == "incremental"  # C read in full: in service since then
        finally:
            pair.close()

    def test_a_heartbeat_then_a_broker_will_in_one_read(self, fleet: Fleet) -> None:
        pair = Pair(fleet, Clock(), lean=True)
        try:
            pair.check()
            a = device(fleet, "A")
            will = PresenceMessage(v=1, device_id=a, status="offline", ts=datetime.now(UTC),
                                   session="s3", will=True)  # fmt: skip
            store(fleet, state(a, "in_service", 9000), will)
            pair.clock.to_wall()
            pair.check()  # offline since the will, though its run goes on
        finally:
            pair.close()

    @pytest.mark.parametrize("seed", [1, 2, 3])
    def test_any_sequence_of_messages(self, pair: Pair, seed: int) -> None:
        """Random messages, each batch checked: heartbeats, new states, late samples
        (store-and-forward), several samples of one device in a batch, presence
        messages and broker wills; then the clock alone moves on."""
        fleet = pair.fleet
        rng = random.Random(seed)
        keys = "ABCDEG"
        states = ["in_service", "in_service", "fault", "degraded", "supervisor", "cash_out"]
        seq = 10_000
        pair.check()
        for _ in range(12):
            batch: list[StateMessage | PresenceMessage] = []
            for _ in range(rng.randint(1, 4)):
                dev = device(fleet, rng.choice(keys))
                seq += 1
                now = datetime.now(UTC).replace(microsecond=0)
                kind = rng.random()
                if kind < 0.45:  # now, maybe a new state
                    m = state(dev, rng.choice(states), seq)
                    batch.append(m.model_copy(update={"ts": now - timedelta(seconds=len(batch))}))
                elif kind < 0.7:  # late: from a store-and-forward backlog
                    back = timedelta(seconds=rng.randint(1, 7200))
                    m = state(dev, rng.choice(states), seq)
                    batch.append(m.model_copy(update={"ts": now - back}))
                else:
                    batch.append(
                        PresenceMessage(
                            v=1, device_id=dev, status=rng.choice(["online", "offline"]),
                            ts=now - timedelta(seconds=rng.randint(0, 1200)),
                            session=f"s{seq}", will=rng.random() < 0.5,
                        )
                    )  # fmt: skip
            store(fleet, *batch)
            pair.clock.to_wall()
            pair.check()
        pair.clock.at += 20 * 60_000  # later, with no message: timeouts pass, windows turn
        pair.check()
