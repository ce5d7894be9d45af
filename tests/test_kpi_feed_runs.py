"""State runs: the pure rule, and the relation the writer maintains at ingest.

The claim: whatever order and batching the messages arrive in (duplicates, store-and-forward
backlogs, late wills), ``state_runs`` equals compressing every stored sample from scratch.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import psycopg
import pytest

from atmfleet.protocol import PresenceMessage, StateMessage, device_topic, encode
from atmfleet.store.migrate import discover, upgrade
from atmfleet.store.runs import Run, Sample, compress, from_ms, rebuild_runs
from atmfleet.store.writer import Accepted, BatchWriter
from rules import timeline

T0 = datetime(2026, 11, 27, 0, 0, tzinfo=UTC)
T0_MS = int(T0.timestamp() * 1000)
STATES = ("in_service", "in_service", "in_service", "fault", "supervisor", "comms_down")


def random_history(rng: random.Random, n: int) -> tuple[list[Sample], list[int]]:
    """Samples every 60 s (sometimes jittered, sometimes a silence), a few state changes,
    some at the same ts as another sample, and presence cuts in between."""
    samples: list[Sample] = []
    t = T0_MS
    state = "in_service"
    for seq in range(n):
        r = rng.random()
        if r < 0.08:
            state = rng.choice(STATES)
        gap = rng.choice((60_000, 60_000, 60_000, 90_000, 90_001, 200_000, 0, 1))
        t += gap
        samples.append(Sample(t, seq, state, rng.choice((60, 60, 60, 30))))
    cuts = [rng.randrange(T0_MS, t + 1) for _ in range(rng.randrange(0, 6))]
    cuts += [samples[rng.randrange(n)].ts for _ in range(2)]  # exactly on a sample
    return samples, cuts


def as_runs(runs: list[Run]) -> list[tuple[int, int, str]]:
    return [(r.start, r.last, r.state) for r in runs]


class TestCompress:
    def test_agrees_with_the_engines_own_compress_at_the_run_gap(self) -> None:
        rng = random.Random(1)
        for _ in range(200):
            samples, cuts = random_history(rng, rng.randrange(1, 60))
            ours = compress(samples, cuts)
            theirs = timeline.compress(
                [timeline.StateSample(s.ts, s.state, s.heartbeat_s, s.seq) for s in samples],
                timeout_factor=1.5,
                breaks=cuts,
            )
            assert as_runs(ours) == [(r.start, r.end, r.state) for r in theirs]
            assert sum(r.samples for r in ours) == len(samples)

    def test_a_gap_of_exactly_one_and_a_half_heartbeats_keeps_the_run(self) -> None:
        runs = compress([Sample(0, 1, "fault", 60), Sample(90_000, 2, "fault", 60)])
        assert as_runs(runs) == [(0, 90_000, "fault")]
        runs = compress([Sample(0, 1, "fault", 60), Sample(90_001, 2, "fault", 60)])
        assert as_runs(runs) == [(0, 0, "fault"), (90_001, 90_001, "fault")]

    def test_a_presence_between_two_samples_cuts_but_one_on_the_earlier_does_not(self) -> None:
        samples = [Sample(0, 1, "in_service", 60), Sample(60_000, 2, "in_service", 60)]
        assert len(compress(samples, [60_000])) == 2
        assert len(compress(samples, [0])) == 1

    def test_splicing_between_a_seed_and_a_follower_equals_compressing_everything(self) -> None:
        rng = random.Random(2)
        for _ in range(300):
            samples, cuts = random_history(rng, rng.randrange(2, 50))
            whole = compress(samples, cuts)
            if len(whole) < 3:
                continue
            i = rng.randrange(0, len(whole) - 1)
            j = rng.randrange(i + 1, len(whole))
            seed, follow = whole[i], whole[j]
            # Everything strictly between the seed's last sample and the follower's first.
            middle = [s for s in samples if seed.key < (s.ts, s.seq) < follow.key]
            middle = [s for s in middle if (s.ts, s.seq) > (seed.last, seed.last_seq)]
            spliced = compress(middle, cuts, seed=seed, follow=follow)
            assert whole[:i] + spliced + whole[j + 1 :] == whole


# ------------------------------------------------------------------------- in the store


@pytest.fixture
def conn(flavour_url: str) -> Iterator[psycopg.Connection]:
    url = flavour_url
    with psycopg.connect(url, autocommit=True) as c:
        upgrade(c)
    with psycopg.connect(url) as c:
        yield c


def state(device: str, s: Sample, received: datetime) -> Accepted:
    msg = StateMessage(
        v=1, device_id=device, ts=from_ms(s.ts), seq=s.seq, state=s.state,
        heartbeat_s=max(5, s.heartbeat_s),
    )  # fmt: skip
    return Accepted(msg, received, device_topic(device, "state"), encode(msg))


def will(device: str, at: int) -> Accepted:
    """A broker's last will, received at ``at`` (its ts is the connect time)."""
    msg = PresenceMessage(
        v=1, device_id=device, status="offline", ts=T0, session=f"s{at}", will=True
    )
    return Accepted(msg, from_ms(at), device_topic(device, "presence"), b"{}")


def stored_runs(conn: psycopg.Connection, device: str) -> list[Run]:
    rows = conn.execute(
        "SELECT start_ts, start_seq, last_ts, last_seq, state, heartbeat_s, samples"
        " FROM state_runs WHERE device_id = %s ORDER BY start_ts, start_seq",
        (device,),
    ).fetchall()
    conn.commit()
    from atmfleet.store.runs import ms

    return [Run(ms(a), b, ms(c), d, e, f, g) for a, b, c, d, e, f, g in rows]


@pytest.mark.integration
class TestMaintainedAtIngest:
    def test_shuffled_batches_with_duplicates_and_late_wills_equal_a_compress_from_scratch(
        self, conn: psycopg.Connection
    ) -> None:
        rng = random.Random(3)
        writer = BatchWriter(conn, "test")
        expected: dict[str, list[Run]] = {}
        messages: list[Accepted] = []
        for d in range(6):
            device = f"dev-{d}"
            samples, _ = random_history(rng, 80)
            samples = [Sample(s.ts, s.seq, s.state, 60) for s in samples]
            wills = [rng.randrange(T0_MS, samples[-1].ts) for _ in range(3)]
            expected[device] = compress(samples, wills)
            base = T0 + timedelta(days=1)
            messages += [
                state(device, s, base + timedelta(microseconds=i)) for i, s in enumerate(samples)
            ]
            messages += [will(device, w) for w in wills]
            # Redeliveries: the very same message again, later.
            messages += [
                state(device, s, base + timedelta(hours=1)) for s in rng.sample(samples, 10)
            ]
        # Mostly in order, with a backlog delivered late and a few stragglers.
        messages.sort(key=lambda a: a.message.ts)
        late = [messages.pop(rng.randrange(len(messages))) for _ in range(60)]
        messages += late
        rng.shuffle(messages[-80:])
        i = 0
        while i < len(messages):
            n = rng.randrange(1, 40)
            writer.write(messages[i : i + n])
            i += n
        for device, runs in expected.items():
            assert stored_runs(conn, device) == runs, device
        assert rebuild_runs(conn) == sum(len(r) for r in expected.values())
        for device, runs in expected.items():
            assert stored_runs(conn, device) == runs, device

    def test_a_backlog_between_two_runs_merges_them(self, conn: psycopg.Connection) -> None:
        writer = BatchWriter(conn, "test")
        now = T0 + timedelta(days=1)
        before = [Sample(T0_MS + i * 60_000, i, "in_service", 60) for i in range(5)]
        backlog = [Sample(T0_MS + i * 60_000, i, "in_service", 60) for i in range(5, 20)]
        after = [Sample(T0_MS + i * 60_000, i, "in_service", 60) for i in range(20, 25)]
        writer.write([state("d", s, now) for s in before + after])
        assert [(r.start - T0_MS, r.last - T0_MS) for r in stored_runs(conn, "d")] == [
            (0, 240_000),
            (1_200_000, 1_440_000),
        ]
        writer.write([state("d", s, now) for s in reversed(backlog)])
        assert stored_runs(conn, "d") == [
            Run(T0_MS, 0, T0_MS + 1_440_000, 24, "in_service", 60, 25)
        ]


@pytest.mark.integration
def test_the_migration_backfills_runs_from_samples_already_stored(database_url: str) -> None:
    rng = random.Random(4)
    samples, _ = random_history(rng, 120)
    samples = [Sample(s.ts, s.seq, s.state, 60) for s in samples]
    wills = [rng.randrange(T0_MS, samples[-1].ts) for _ in range(4)]
    with psycopg.connect(database_url, autocommit=True) as c:
        upgrade(c, migrations=[m for m in discover() if m.version < 4])
        c.execute(
            "INSERT INTO state_samples SELECT 'd', seq, ts, ts, state, 60, '{}', '[]', '{}'"
            " FROM unnest(%s::int8[], %s::timestamptz[], %s::text[]) AS u (seq, ts, state)",
            (
                [s.seq for s in samples],
                [from_ms(s.ts) for s in samples],
                [s.state for s in samples],
            ),
        )
        for w in wills:
            c.execute(
                "INSERT INTO presence VALUES ('d', 'offline', %s, %s, %s, true)",
                (T0, from_ms(w), f"s{w}"),
            )
        upgrade(c)
    with psycopg.connect(database_url) as c:
        assert stored_runs(c, "d") == compress(samples, wills)
