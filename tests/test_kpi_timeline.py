"""The availability timeline: built only from what a device sent (docs/kpis.md, "Timeline")."""

from __future__ import annotations

import random
from datetime import UTC, datetime

from atmfleet.protocol import DeviceState
from rules.labels import STATE_LABEL, Label
from rules.timeline import (
    Interval,
    PowerRestored,
    Presence,
    StateRun,
    StateSample,
    build_timeline,
    compress,
    ms,
)

T0 = ms(datetime(2026, 11, 27, 2, 0, tzinfo=UTC))  # 10:00 local


def t(seconds: int) -> int:
    """T0 + seconds, in ms."""
    return T0 + seconds * 1000


def heartbeats(
    first: int, last: int, state: str = "in_service", every: int = 60, seq0: int = 0
) -> list[StateSample]:
    return [
        StateSample(t(s), state, every, seq0 + i)
        for i, s in enumerate(range(first, last + 1, every))
    ]


def timeline_of(samples: list[StateSample], start: int, end: int, **kw: object) -> list[Interval]:
    presence = kw.get("presence", ())
    breaks = [p.at for p in presence]  # type: ignore[attr-defined]
    return build_timeline(compress(samples, breaks=breaks), t(start), t(end), **kw)  # type: ignore[arg-type]


A, C, F = Label.AVAILABLE, Label.COMMUNICATIONS, Label.FAULT


class TestSilentGap:
    """A gap longer than 3 x heartbeat_s is offline for the whole gap; a shorter one is not."""

    def test_gap_just_under_the_timeout_keeps_the_state(self) -> None:
        samples = [*heartbeats(0, 60), *heartbeats(239, 600, seq0=10)]  # gap 179 s
        assert timeline_of(samples, 0, 600) == [(t(0), t(600), A)]

    def test_gap_equal_to_the_timeout_keeps_the_state(self) -> None:
        samples = [*heartbeats(0, 60), *heartbeats(240, 600, seq0=10)]  # gap 180 s
        assert timeline_of(samples, 0, 600) == [(t(0), t(600), A)]

    def test_gap_just_over_the_timeout_is_offline_from_the_earlier_point(self) -> None:
        samples = [*heartbeats(0, 60), *heartbeats(241, 600, seq0=10)]  # gap 181 s
        assert timeline_of(samples, 0, 600) == [
            (t(0), t(60), A),
            (t(60), t(241), C),
            (t(241), t(600), A),
        ]

    def test_timeout_follows_the_devices_heartbeat(self) -> None:
        samples = [*heartbeats(0, 300, every=300), *heartbeats(1200, 1500, every=300, seq0=5)]
        # heartbeat 300 s -> timeout 900 s: a 900 s gap is not offline.
        assert timeline_of(samples, 0, 1500) == [(t(0), t(1500), A)]

    def test_silence_up_to_the_horizon_is_judged_like_a_gap(self) -> None:
        samples = heartbeats(0, 600)
        short = build_timeline(compress(samples), t(0), t(3600), horizon=t(700))
        assert short == [(t(0), t(700), A)]
        long = build_timeline(compress(samples), t(0), t(3600), horizon=t(900))
        assert long == [(t(0), t(600), A), (t(600), t(900), C)]

    def test_a_gap_across_the_period_start_is_judged_whole(self) -> None:
        # Context point before the period, next point inside: 400 s gap -> offline.
        samples = [
            StateSample(t(-100), "in_service", 60, 1),
            StateSample(t(300), "in_service", 60, 2),
        ]
        assert timeline_of(samples, 0, 360) == [(t(0), t(300), C), (t(300), t(360), A)]

    def test_before_the_first_point_ever_is_offline(self) -> None:
        assert timeline_of(heartbeats(120, 600), 0, 600) == [(t(0), t(120), C), (t(120), t(600), A)]

    def test_no_point_at_all_is_offline(self) -> None:
        assert build_timeline([], t(0), t(600)) == [(t(0), t(600), C)]


class TestPresence:
    def test_will_starts_offline_at_its_receive_time_not_its_ts(self) -> None:
        samples = heartbeats(0, 60)
        will = Presence(ts=t(-5000), online=False, will=True, received=t(150))
        got = timeline_of(samples, 0, 600, presence=[will], horizon=t(600))
        # 60 -> 150 is a 90 s silence (under the timeout): last state kept until the will.
        assert got == [(t(0), t(150), A), (t(150), t(600), C)]

    def test_gateway_offline_uses_its_ts(self) -> None:
        samples = heartbeats(0, 60)
        gone = Presence(ts=t(90), online=False, will=False, received=t(400))
        got = timeline_of(samples, 0, 600, presence=[gone])
        assert got == [(t(0), t(90), A), (t(90), t(600), C)]

    def test_birth_alone_does_not_set_a_state(self) -> None:
        will = Presence(ts=t(-5000), online=False, will=True, received=t(100))
        birth = Presence(ts=t(300), online=True)
        samples = [*heartbeats(0, 60), *heartbeats(302, 600, seq0=10)]
        got = timeline_of(samples, 0, 600, presence=[will, birth])
        assert got == [(t(0), t(100), A), (t(100), t(302), C), (t(302), t(600), A)]

    def test_will_then_reconnect_with_a_store_and_forward_backlog(self) -> None:
        """Link lost at 30 s; the will arrives at 120 s; the device buffered comms_down
        heartbeats from 30 s and publishes them after its birth at 600 s."""
        before = heartbeats(0, 0)
        will = Presence(ts=t(-3600), online=False, will=True, received=t(120))
        birth = Presence(ts=t(600), online=True)
        backlog = [
            StateSample(t(30), "comms_down", 60, 1),
            *heartbeats(90, 570, "comms_down", seq0=2),
        ]
        after = heartbeats(601, 900, seq0=50)
        # Arrival order: before, will, birth, backlog, after; placed by ts.
        got = timeline_of(before + backlog + after, 0, 900, presence=[will, birth], horizon=t(900))
        assert got == [(t(0), t(30), A), (t(30), t(601), C), (t(601), t(900), A)]


class TestPower:
    def test_offline_inside_a_power_cut_is_power(self) -> None:
        samples = [*heartbeats(0, 60), *heartbeats(1202, 1500, seq0=10)]
        will = Presence(ts=t(-3600), online=False, will=True, received=t(200))
        restored = PowerRestored(since=t(100), ts=t(1201))
        got = timeline_of(samples, 0, 1500, presence=[will], power=[restored])
        assert got == [
            (t(0), t(100), A),
            (t(100), t(1201), Label.POWER),
            (t(1201), t(1202), C),
            (t(1202), t(1500), A),
        ]

    def test_duplicated_power_event_counts_once(self) -> None:
        samples = [*heartbeats(0, 60), *heartbeats(1202, 1500, seq0=10)]
        restored = PowerRestored(since=t(100), ts=t(1201))
        once = timeline_of(samples, 0, 1500, power=[restored])
        twice = timeline_of(samples, 0, 1500, power=[restored, restored])
        assert once == twice


class TestCollectorOutage:
    def test_outage_is_unknown_and_its_edges_do_not_blame_the_device(self) -> None:
        # Device heartbeats until 60 s, collector down 90..1000 s, next point at 1020 s.
        samples = [*heartbeats(0, 60), *heartbeats(1020, 1200, seq0=10)]
        got = timeline_of(samples, 0, 1200, outages=[(t(90), t(1000))])
        assert got == [(t(0), t(90), A), (t(90), t(1000), Label.UNKNOWN), (t(1000), t(1200), A)]

    def test_outage_hides_what_the_device_said(self) -> None:
        samples = heartbeats(0, 1200, "fault")
        got = timeline_of(samples, 0, 1200, outages=[(t(100), t(200)), (t(150), t(300))])
        assert got == [(t(0), t(100), F), (t(100), t(300), Label.UNKNOWN), (t(300), t(1200), F)]


class TestStates:
    def test_every_protocol_state_has_a_label(self) -> None:
        assert set(STATE_LABEL) == set(DeviceState)

    def test_fault_overlapping_a_cash_out_is_counted_once_by_reported_state(self) -> None:
        samples = [
            *heartbeats(0, 60),
            *heartbeats(120, 1800, "fault", seq0=10),
            *heartbeats(1800, 5400, "cash_out", seq0=100),
            *heartbeats(5400, 6000, seq0=300),
        ]
        # The cash_out at 1800 s shares its ts with the last fault heartbeat: seq decides.
        got = timeline_of(samples, 0, 6000)
        assert got == [
            (t(0), t(120), A),
            (t(120), t(1800), F),
            (t(1800), t(5400), Label.CASH_OUT),
            (t(5400), t(6000), A),
        ]
        assert sum(b - a for a, b, lab in got if lab is not A) == 5280 * 1000

    def test_degraded_counts_as_available(self) -> None:
        samples = [*heartbeats(0, 300), *heartbeats(360, 600, "degraded", seq0=10)]
        assert timeline_of(samples, 0, 600) == [(t(0), t(600), A)]

    def test_duplicated_and_out_of_order_messages_give_the_same_timeline(self) -> None:
        samples = [
            *heartbeats(0, 600),
            *heartbeats(660, 1200, "fault", seq0=20),
            *heartbeats(1260, 3600, seq0=40),
        ]
        expected = timeline_of(samples, 0, 3600)
        noisy = samples + samples[5:30]
        random.Random(7).shuffle(noisy)
        assert timeline_of(noisy, 0, 3600) == expected
        assert expected == [(t(0), t(660), A), (t(660), t(1260), F), (t(1260), t(3600), A)]


class TestCompress:
    def test_runs_give_the_same_timeline_as_every_sample(self) -> None:
        samples = [
            *heartbeats(0, 600),
            *heartbeats(900, 1200, seq0=20),  # same state after a gap
            *heartbeats(1210, 2400, "cash_out", seq0=40),
            *heartbeats(2410, 3600, seq0=60),
        ]
        raw = [StateRun(s.ts, s.ts, s.state, s.heartbeat_s, s.seq) for s in samples]
        assert build_timeline(compress(samples), t(0), t(3600)) == build_timeline(
            raw, t(0), t(3600)
        )
        assert len(compress(samples)) == 4  # a gap splits the first run

    def test_presence_breaks_a_run(self) -> None:
        runs = compress(heartbeats(0, 600), breaks=[t(330)])
        assert [(r.start, r.end) for r in runs] == [(t(0), t(300)), (t(360), t(600))]
