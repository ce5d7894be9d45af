"""The feed on a real database gives the pure core's values on the same points.

Messages are stored through the real BatchWriter (so state runs are maintained as in
production), redelivered and out of order; the feed's timelines, uptime and transaction
counts must equal the pure core's on the very same messages, on plain PostgreSQL and on
TimescaleDB.
"""

from __future__ import annotations

import random
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, date, datetime, timedelta

import psycopg
import pytest

from atmfleet.inventory import Device, DeviceType, Placement
from atmfleet.protocol import (
    EventMessage,
    PresenceMessage,
    StateMessage,
    TxnMessage,
    device_topic,
    encode,
)
from atmfleet.store.inventory import upsert_inventory
from atmfleet.store.migrate import upgrade
from atmfleet.store.runs import MAX_KEPT_CONTEXT_MS
from atmfleet.store.writer import Accepted, BatchWriter
from collector.decode import decode
from rules.config import load_rules
from rules.feed import Feed, timelines, uptime_for
from rules.labels import Label
from rules.timeline import (
    Interval,
    Presence,
    StateSample,
    build_timeline,
    compress,
    ms,
)
from rules.uptime import UptimePolicy, WindowSpans, daily_uptime
from simulator.config import make_config
from simulator.fleet import generate_inventory
from simulator.ledger import simulate
from tests.simulated import pure_timeline

pytestmark = pytest.mark.integration

RULES = load_rules()
START = datetime(2026, 11, 26, 16, tzinfo=UTC)  # local midnight, 2026-11-27
END = datetime(2026, 11, 28, 16, tzinfo=UTC)  # two local days
HB = 180  # heartbeat of the simulated fleet (fewer messages, same rules)


@contextmanager
def connect(request: pytest.FixtureRequest, flavour: str) -> Iterator[psycopg.Connection]:
    url = request.getfixturevalue("database_url" if flavour == "postgres" else "timescale_url")
    with psycopg.connect(url, autocommit=True) as c:
        upgrade(c, timezone=RULES.timezone)
    with psycopg.connect(url) as c:
        yield c


@pytest.fixture(params=["postgres", pytest.param("timescale", marks=pytest.mark.timescale)])
def db(request: pytest.FixtureRequest) -> Iterator[psycopg.Connection]:
    with connect(request, request.param) as conn:
        yield conn


def write(conn: psycopg.Connection, batches: Sequence[Sequence[Accepted]]) -> None:
    writer = BatchWriter(conn, "test")
    for batch in batches:
        result = writer.write(batch)
        assert not result.dead, result.dead


class TestSimulatedFleetThroughTheWriter:
    """A simulated fleet with power cuts, network outages and link drops, its messages
    redelivered, shuffled and cut into random batches, plus a collector outage."""

    @pytest.mark.slow
    @pytest.mark.parametrize(
        ("flavour", "real_wills"),
        [("postgres", True), pytest.param("timescale", False, marks=pytest.mark.timescale)],
        ids=["postgres-broker-will", "timescale-gateway-offline"],
    )
    def test_timelines_uptime_and_volumes_equal_the_pure_core_on_the_same_messages(
        self, request: pytest.FixtureRequest, flavour: str, real_wills: bool
    ) -> None:
        with connect(request, flavour) as db:
            self.check(db, real_wills)

    def check(self, db: psycopg.Connection, real_wills: bool) -> None:
        config = make_config(
            {
                "incidents": {
                    "branch_power_cuts_per_year": 200,
                    "subbranch_network_outages_per_year": 300,
                    "device_link_drops_per_year": 500,
                }
            }
        )
        inventory = generate_inventory(30, 7, config=config)
        upsert_inventory(db, inventory)
        # Every device comes up within a heartbeat of the simulation's start: started one
        # heartbeat early, the whole fleet is up from START on.
        run = simulate(
            inventory, config, 7, START - timedelta(seconds=HB), END,
            real_wills=real_wills, heartbeat_s=HB,
        )  # fmt: skip
        rng = random.Random(9)
        records: list[Accepted] = []
        for e in run.emissions:
            decoded = decode(e.topic, e.payload, datetime.fromtimestamp(e.t / 1000, UTC))
            assert isinstance(decoded, Accepted)
            records.append(decoded)
        # Redeliveries (later, same message) and local disorder.
        records += [
            Accepted(r.message, r.received_at + timedelta(seconds=5), r.topic, r.payload)
            for r in rng.sample(records, len(records) // 10)
        ]
        for i in range(0, len(records) - 50, 200):
            window = records[i : i + 50]
            rng.shuffle(window)
            records[i : i + 50] = window
        batches, i = [], 0
        while i < len(records):
            n = rng.randrange(1, 1500)
            batches.append(records[i : i + n])
            i += n
        write(db, batches)
        outage = (ms(START) + 30 * 3_600_000, ms(START) + 31 * 3_600_000 + 123)
        db.execute(
            "INSERT INTO collector_outages (started_at, ended_at, detected_by)"
            " VALUES (%s, %s, 'test')",
            (
                datetime.fromtimestamp(outage[0] / 1000, UTC),
                datetime.fromtimestamp(outage[1] / 1000, UTC),
            ),
        )
        db.commit()

        feed = Feed(db, RULES)
        stored = feed.inventory()
        assert {d.id for d in stored.devices} == {d.id for d in inventory.devices}
        lo, hi = ms(START), ms(END)
        got = timelines(feed, stored.devices, lo, hi, horizon=hi)
        seen: set[Label] = set()
        for device in inventory.devices:
            expected = pure_timeline(
                run.by_device(device.id), HB, device.heartbeat_s, lo, hi, [outage]
            )
            assert got[device.id] == expected, device.id
            seen |= {label for _, _, label in expected}
        assert {Label.COMMUNICATIONS, Label.POWER, Label.FAULT, Label.UNKNOWN} <= seen

        first, last = date(2026, 11, 27), date(2026, 11, 28)
        up = uptime_for(feed, stored.devices, first, last, horizon=hi)
        windows, policy = WindowSpans(RULES.tz), UptimePolicy.from_rules(RULES)
        for device in stored.devices:
            line = pure_timeline(run.by_device(device.id), HB, device.heartbeat_s, lo, hi, [outage])
            expected_days = daily_uptime(device, line, [first, last], RULES, windows, policy, hi)
            assert up.per_device[device.id] == expected_days, device.id

        volumes = feed.txn_days(first, last)
        by_key = {
            (d, day.isoformat()): (t.financial, t.financial + t.non_financial, t.fee)
            for d, per_day in volumes.items()
            for day, t in per_day.items()
        }
        days = {first.isoformat(), last.isoformat()}  # the run starts a heartbeat earlier
        ledger = {
            k: (v[0], v[1], v[3]) for k, v in run.ledger.txn_days.items() if v[1] and k[1] in days
        }
        assert {k: (f, n, int(fee * 100)) for k, (f, n, fee) in by_key.items() if n} == ledger


# ------------------------------------------------------------------------ hand-made cases

T = datetime(2026, 11, 27, 2, 0, tzinfo=UTC)  # 10:00 local


def at(minutes: float) -> datetime:
    return T + timedelta(minutes=minutes)


def m(minutes: float) -> int:
    return ms(at(minutes))


def acc(
    msg: StateMessage | PresenceMessage | EventMessage | TxnMessage, received: datetime
) -> Accepted:
    kind = {StateMessage: "state", PresenceMessage: "presence", EventMessage: "event",
            TxnMessage: "txn"}  # fmt: skip
    return Accepted(msg, received, device_topic(msg.device_id, kind[type(msg)]), encode(msg))


def state(device: str, seq: int, minute: float, value: str = "in_service") -> StateMessage:
    return StateMessage(v=1, device_id=device, ts=at(minute), seq=seq, state=value)


def txn(device: str, seq: int, minute: float) -> TxnMessage:
    return TxnMessage(
        v=1, device_id=device, ts=at(minute), seq=seq, txn_id=f"{device}-{seq}",
        type="withdrawal", amount=100, result="ok", duration_ms=900,
    )  # fmt: skip


class TestWillThenReconnectWithBacklog:
    def test_the_backlog_arriving_after_the_birth_is_placed_by_its_timestamps(
        self, db: psycopg.Connection
    ) -> None:
        """In service, link lost at 10:10 (the device buffers comms_down heartbeats), the
        broker's will is received at 10:11.5, the device reconnects at 10:30: birth, its
        current state, then the backlog, with one heartbeat redelivered."""
        d = "feed-will"
        before = [state(d, i, i) for i in range(0, 11)]
        backlog = [state(d, 11 + i, 10 + i, "comms_down") for i in range(0, 20)]
        will = PresenceMessage(
            v=1, device_id=d, status="offline", ts=at(-60), session="a", will=True
        )
        birth = PresenceMessage(v=1, device_id=d, status="online", ts=at(30), session="b")
        now = state(d, 40, 30)
        after = [state(d, 40 + i, 30 + i) for i in range(1, 31)]
        write(
            db,
            [
                [acc(s, s.ts) for s in before],
                [acc(will, at(11.5))],
                [acc(birth, at(30)), acc(now, at(30))],
                [acc(s, at(30.1)) for s in reversed(backlog)],
                [acc(before[-1], at(31))],  # redelivered
                [acc(s, at(31)) for s in after],
            ],
        )
        feed = Feed(db, RULES)
        line = timelines_of(feed, d, m(0), m(60), horizon=m(60))
        assert line == [
            (m(0), m(10), Label.AVAILABLE),
            (m(10), m(30), Label.COMMUNICATIONS),
            (m(30), m(60), Label.AVAILABLE),
        ]
        samples = [
            StateSample(ms(s.ts), s.state.value, s.heartbeat_s, s.seq)
            for s in before + backlog + [now] + after
        ]
        presence = [Presence(ms(will.ts), False, True, m(11.5)), Presence(m(30), True)]
        pure = build_timeline(
            compress(samples, breaks=[p.at for p in presence]), m(0), m(60),
            horizon=m(60), presence=presence,
        )  # fmt: skip
        assert line == pure


def timelines_of(feed: Feed, device_id: str, lo: int, hi: int, horizon: int) -> list[Interval]:
    return timelines(feed, [_device(device_id)], lo, hi, horizon)[device_id]


class TestCollectorOutage:
    def test_our_outage_is_unknown_and_the_device_is_not_blamed_for_the_silence(
        self, db: psycopg.Connection
    ) -> None:
        """The collector was down 10:20-10:40: nothing was stored then. Unknown inside,
        and the silences on either side (10 min then 5 min) are judged up to our outage's
        edges, which are within the timeout: no offline time."""
        d = "feed-outage"
        samples = [state(d, i, i) for i in range(0, 21)] + [
            state(d, 100 + i, 40 + i) for i in range(0, 21)
        ]
        write(db, [[acc(s, s.ts) for s in samples]])
        db.execute(
            "INSERT INTO collector_outages (started_at, ended_at, detected_by) VALUES (%s, %s, 't')",
            (at(20), at(40)),
        )
        db.commit()
        feed = Feed(db, RULES)
        assert timelines_of(feed, d, m(0), m(60), horizon=m(60)) == [
            (m(0), m(20), Label.AVAILABLE),
            (m(20), m(40), Label.UNKNOWN),
            (m(40), m(60), Label.AVAILABLE),
        ]


class TestPowerCut:
    def test_the_power_restored_event_explains_the_silence(self, db: psycopg.Connection) -> None:
        d = "feed-power"
        before = [state(d, i, i) for i in range(0, 11)]
        birth = PresenceMessage(v=1, device_id=d, status="online", ts=at(40), session="b")
        restored = EventMessage(
            v=1, device_id=d, ts=at(40), seq=20, event="power_restored", since=at(10.5)
        )
        after = [state(d, 21 + i, 40 + i) for i in range(0, 21)]
        write(
            db,
            [
                [acc(s, s.ts) for s in before],
                [acc(birth, at(40)), acc(restored, at(40))],
                [acc(s, s.ts) for s in after],
            ],
        )
        feed = Feed(db, RULES)
        assert timelines_of(feed, d, m(0), m(60), horizon=m(60)) == [
            (m(0), m(10), Label.AVAILABLE),
            (m(10), m(10.5), Label.COMMUNICATIONS),
            (m(10.5), m(40), Label.POWER),
            (m(40), m(60), Label.AVAILABLE),
        ]


class TestKeptClosedDays:
    """Closed days' uptime is kept in the store; late telemetry makes it recomputed."""

    def test_kept_days_equal_a_fresh_computation_and_late_data_replaces_them(
        self, db: psycopg.Connection
    ) -> None:
        from rules.feed import window_days

        d = "feed-kept"
        samples = [state(d, i, i * 5) for i in range(0, 12 * 24 * 2)]  # two days, every 5 min
        txns = [txn(d, 5000 + i, 60 + i) for i in range(7)]  # the 27th, 11:00 local
        write(db, [[acc(s, s.ts) for s in samples], [acc(t, t.ts) for t in txns]])
        feed = Feed(db, RULES)
        device = _device(d)
        first, last = date(2026, 11, 27), date(2026, 11, 28)
        horizon = m(60) + 5 * 86_400_000  # both days closed

        def fresh() -> dict[date, tuple[int, int, int]]:
            up = uptime_for(feed, [device], first, last, horizon).per_device[d]
            txn = feed.txn_days(first, last).get(d, {})
            return {
                day: (u.available_ms, u.scheduled_ms, txn[day].financial if day in txn else 0)
                for day, u in up.items()
            }

        def window() -> dict[date, tuple[int | None, int | None, int | None]]:
            w = window_days(feed, [device], first, last, horizon)[d]
            return {
                day: (w.available[i], w.scheduled[i], w.financial[i])
                for i, day in enumerate([first, last])
            }

        def kept_rows() -> int:
            row = db.execute(
                "SELECT count(*) FROM kpi_device_days WHERE device_id = %s", (d,)
            ).fetchone()
            db.commit()
            assert row is not None
            return int(row[0])

        assert window() == fresh()
        assert kept_rows() == 2
        assert window() == fresh()

        # A late backlog: the device was in fault for an hour on the 28th (local).
        late = [state(d, 10_000 + i, 24 * 60 + 2 + i * 5, "fault") for i in range(12)]
        write(db, [[acc(s, at(48 * 60)) for s in late]])
        # The late point (10:02 on the 28th) reaches back 3 h: the 28th's kept day is gone,
        # the 27th's stays.
        assert kept_rows() == 1
        again = window()
        assert again == fresh()
        assert (again[last][0] or 0) < (again[last][1] or 0)  # the fault is there
        assert again[first][2] == 7
        assert kept_rows() == 2

        # A late transaction on the 27th is counted too.
        late_txn = txn(d, 6000, 120)
        write(db, [[acc(late_txn, at(48 * 60))]])
        assert window()[first][2] == 8

    def test_late_telemetry_deletes_kept_days_only_as_far_back_as_it_reaches(
        self, db: psycopg.Connection
    ) -> None:
        """A point at t changes the timeline from t - context on (3 h by default): the
        day before t stays kept once t is 3 h into its day, and is deleted (and
        recomputed equal to a fresh computation) when t is closer to midnight."""
        from rules.feed import window_days

        d = "feed-reach"
        hour = 60
        midnight = -10 * hour  # 00:00 local on the 27th, in minutes from T

        def hourly(seq: int, hours: float) -> StateMessage:
            return StateMessage(
                v=1, device_id=d, ts=at(midnight + hours * hour), seq=seq, state="in_service",
                heartbeat_s=3600,
            )  # fmt: skip

        # Hourly on the 27th up to 22:00 local, then silent until 04:00 on the 28th (a
        # gap longer than the 3 h timeout: offline from 22:00), hourly again to 23:00.
        hours = [*range(0, 23), *range(24 + 4, 48)]
        write(db, [[acc(hourly(i, h), at(midnight + h * hour)) for i, h in enumerate(hours)]])
        feed = Feed(db, RULES)
        device = _device(d)
        first, last = date(2026, 11, 27), date(2026, 11, 28)
        horizon = m(60) + 5 * 86_400_000
        assert feed.context_ms() == 3 * 3600 * 1000 + 1

        def fresh() -> dict[date, tuple[int, int]]:
            up = uptime_for(feed, [device], first, last, horizon).per_device[d]
            return {day: (u.available_ms, u.scheduled_ms) for day, u in up.items()}

        def window() -> dict[date, tuple[int | None, int | None]]:
            w = window_days(feed, [device], first, last, horizon)[d]
            return {day: (w.available[i], w.scheduled[i]) for i, day in enumerate([first, last])}

        def kept_days() -> list[date]:
            rows = db.execute(
                "SELECT day FROM kpi_device_days WHERE device_id = %s ORDER BY day", (d,)
            ).fetchall()
            db.commit()
            return [r[0] for r in rows]

        assert window() == fresh()
        assert kept_days() == [first, last]
        before = window()

        # 10:30 on the 28th reaches back to 07:30: the 27th stays kept.
        write(db, [[acc(hourly(100, 24 + 10.5), at(midnight + 48 * hour))]])
        assert kept_days() == [first]
        assert window() == fresh() == before
        assert kept_days() == [first, last]

        # 10:00 on the 29th reaches no kept day (the newest is the 28th).
        write(db, [[acc(hourly(99, 48 + 10), at(midnight + 58 * hour))]])
        assert kept_days() == [first, last]

        # 00:30 on the 28th reaches back to 21:30 on the 27th and does change it: the
        # silence from 22:00 is now two gaps shorter than the timeout, not one longer.
        write(db, [[acc(hourly(101, 24 + 0.5), at(midnight + 48 * hour))]])
        assert kept_days() == []
        after = window()
        assert after == fresh()
        assert (after[first][0] or 0) - (before[first][0] or 0) == 2 * 3_600_000
        assert kept_days() == [first, last]

        # A day kept with a wider context (a day and a millisecond: the rows kept before
        # the context was kept beside them) is deleted from the local day before t.
        db.execute("UPDATE kpi_kept_rules SET context_ms = %s", (MAX_KEPT_CONTEXT_MS,))
        db.commit()
        write(db, [[acc(hourly(102, 24 + 11.5), at(midnight + 48 * hour))]])
        assert kept_days() == []
        assert window() == fresh()

    def test_days_written_by_anyone_are_deleted_by_late_telemetry_a_day_back(
        self, db: psycopg.Connection
    ) -> None:
        """Days written without saying their rules' context (by hand, or kept before the
        context was kept) take the widest, a day and a millisecond; the newest day of
        their fingerprint is kept whoever writes them."""
        d = "feed-by-hand"
        db.execute(
            "INSERT INTO kpi_device_days (fingerprint, device_id, day, available_ms, "
            "scheduled_ms, financial) SELECT 'hand', %s, day, 1, 2, 3 "
            "FROM unnest(%s::date[]) AS day",
            (d, [date(2026, 11, 25), date(2026, 11, 28), date(2026, 11, 26)]),
        )
        db.commit()

        def rules() -> list[tuple[object, ...]]:
            rows = db.execute("SELECT * FROM kpi_kept_rules WHERE fingerprint = 'hand'")
            out = rows.fetchall()
            db.commit()
            return out

        def kept() -> list[date]:
            rows = db.execute(
                "SELECT day FROM kpi_device_days WHERE device_id = %s ORDER BY day", (d,)
            ).fetchall()
            db.commit()
            return [r[0] for r in rows]

        assert rules() == [("hand", MAX_KEPT_CONTEXT_MS, date(2026, 11, 28))]
        # 10:00 local on the 27th (T): the 26th on are gone, the 25th stays.
        write(db, [[acc(state(d, 1, 0), at(0))]])
        assert kept() == [date(2026, 11, 25)]
        assert rules() == [("hand", MAX_KEPT_CONTEXT_MS, date(2026, 11, 28))]


def _device(device_id: str) -> Device:
    return Device(
        id=device_id, branch="B", type=DeviceType.ATM, placement=Placement.OFF_SITE,
        vendor="V", model="M", commissioned=date(2026, 1, 1),
    )  # fmt: skip
