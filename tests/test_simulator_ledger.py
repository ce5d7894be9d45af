"""The ledger's ground truth follows the availability semantics (docs/simulator.md), and
live pacing never lets simulated time pass the wall clock."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from rules import timeline as tl
from simulator.config import make_config
from simulator.fleet import generate_inventory
from simulator.ledger import _CODE, _OFFLINE, _ONLINE, infer_intervals, simulate
from simulator.publisher import Pacing

S = 1000  # ms
HB = 60 * S
TIMEOUT = 3 * HB
IN, FAULT, DOWN = _CODE["in_service"], _CODE["fault"], _CODE["comms_down"]


def spans(points, end, power=()):
    return [
        (iv.start, iv.end, iv.state, iv.cause)
        for iv in infer_intervals("d", points, power, end, TIMEOUT)
    ]


class TestSemantics:
    """Hand-built message sequences and the intervals they mean."""

    def test_a_state_holds_from_its_ts_until_the_next_change(self) -> None:
        points = [(0, IN), (60 * S, IN), (90 * S, FAULT), (150 * S, IN)]
        assert spans(points, 200 * S) == [
            (0, 90 * S, "in_service", "available"),
            (90 * S, 150 * S, "fault", "fault"),
            (150 * S, 200 * S, "in_service", "available"),
        ]

    def test_a_gap_longer_than_the_timeout_is_offline_from_the_earlier_point(self) -> None:
        points = [(0, IN), (TIMEOUT + 1, IN)]
        assert spans(points, TIMEOUT + 10) == [
            (0, TIMEOUT + 1, "offline", "communications"),
            (TIMEOUT + 1, TIMEOUT + 10, "in_service", "available"),
        ]

    def test_a_gap_of_exactly_the_timeout_keeps_the_last_state(self) -> None:
        assert spans([(0, IN), (TIMEOUT, IN)], TIMEOUT + 1) == [
            (0, TIMEOUT + 1, "in_service", "available")
        ]

    def test_an_offline_presence_starts_offline_and_a_birth_sets_nothing(self) -> None:
        points = [(0, IN), (30 * S, _OFFLINE), (90 * S, _ONLINE), (90 * S, IN)]
        assert spans(points, 100 * S) == [
            (0, 30 * S, "in_service", "available"),
            (30 * S, 90 * S, "offline", "communications"),
            (90 * S, 100 * S, "in_service", "available"),
        ]

    def test_a_backlog_arriving_late_is_placed_by_its_ts(self) -> None:
        # Arrival order: offline, birth, then the buffered comms_down heartbeats, then state.
        points = [(0, IN), (30 * S, _OFFLINE), (300 * S, _ONLINE), (30 * S, DOWN), (90 * S, DOWN),
                  (150 * S, DOWN), (210 * S, DOWN), (270 * S, DOWN), (300 * S, IN)]  # fmt: skip
        assert [(a, b, c) for a, b, _, c in spans(points, 400 * S)] == [
            (0, 30 * S, "available"),
            (30 * S, 300 * S, "communications"),
            (300 * S, 400 * S, "available"),
        ]

    def test_offline_inside_a_power_cut_is_power(self) -> None:
        points = [(0, IN), (100 * S, _OFFLINE), (1000 * S, _ONLINE), (1000 * S, IN)]
        assert spans(points, 1100 * S, power=[(100 * S, 1000 * S)]) == [
            (0, 100 * S, "in_service", "available"),
            (100 * S, 1000 * S, "offline", "power"),
            (1000 * S, 1100 * S, "in_service", "available"),
        ]

    def test_silence_at_the_end_longer_than_the_timeout_is_offline(self) -> None:
        assert spans([(0, IN)], TIMEOUT + 5) == [(0, TIMEOUT + 5, "offline", "communications")]


@pytest.mark.slow
class TestAgreesWithTheKpiTimeline:
    """The ledger and rules.timeline, fed the same messages, give the same labels."""

    def test_every_device_of_a_busy_week(self) -> None:
        inv = generate_inventory(60, seed=21)
        config = make_config(
            {"incidents": {"branch_power_cuts_per_year": 30, "subbranch_network_outages_per_year": 40,
                           "device_link_drops_per_year": 60}}
        )  # fmt: skip
        start = datetime(2026, 11, 2, tzinfo=UTC)
        end = start + timedelta(days=7)
        run = simulate(inv, config, 21, start, end, heartbeat_s=300)
        checked = 0
        for d in inv.devices:
            em = run.by_device(d.id)
            samples = [tl.StateSample(e.ts, e.detail, 300, e.seq) for e in em if e.kind == "state"]
            presence = [
                tl.Presence(e.ts, e.detail == "online", e.result == "will", e.t)
                for e in em
                if e.kind == "presence"
            ]
            power = [tl.PowerRestored(e.since, e.ts) for e in em if e.detail == "power_restored"]
            runs = tl.compress(samples, 3, [p.at for p in presence])
            theirs = tl.build_timeline(
                runs, min(e.ts for e in em), tl.ms(end), presence=presence, power=power,
                default_heartbeat_s=300,
            )  # fmt: skip
            ours: list[tuple[int, int, str]] = []
            for iv in run.ledger.intervals_of(d.id):
                if ours and ours[-1][2] == iv.cause and ours[-1][1] == iv.start:
                    ours[-1] = (ours[-1][0], iv.end, iv.cause)
                else:
                    ours.append((iv.start, iv.end, iv.cause))
            assert ours == [(a, b, label.value) for a, b, label in theirs], d.id
            checked += any(c != "available" for _, _, c in ours)
        assert checked > 10


class TestLivePacing:
    """A message stamped t goes out at max(wall0 + (t - start) / speed, t)."""

    def test_replay_runs_fast_until_it_reaches_now_then_real_time(self) -> None:
        now = 1_800_000_000.0
        start_ms = int((now - 3600) * 1000)  # an hour ago
        pacing = Pacing(start_ms, speed=60, wall0=now)
        assert pacing.due(start_ms) == now
        # Ten simulated minutes take ten wall seconds while in the past...
        assert pacing.due(start_ms + 600_000) == pytest.approx(now + 10)
        # ...but a message stamped in the future waits for its own time.
        assert pacing.due(start_ms + 7200_000) == pytest.approx(now + 3600)

    def test_never_ahead_of_the_wall_clock(self) -> None:
        now = 1_800_000_000.0
        pacing = Pacing(int(now * 1000), speed=1000, wall0=now)
        for offset in (0, 1, 60_000, 3_600_000):
            t = int(now * 1000) + offset
            assert pacing.due(t) >= t / 1000
