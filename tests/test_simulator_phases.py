"""Devices come up at their own moments and drift; nothing is sent before the run's start."""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime, timedelta

from simulator.config import SimConfig, make_config
from simulator.engine import Control, device_heartbeat_s, device_start, generate, ms
from simulator.fleet import generate_inventory

# 14:00 local (Asia/Shanghai), a Monday: a planned maintenance may fall earlier that day.
START = datetime(2026, 11, 2, 6, 0, tzinfo=UTC)


def test_nothing_is_stamped_or_sent_before_the_start() -> None:
    # Planned maintenance every day: the first one of most devices would fall on the
    # start's day, often before 14:00.
    config = make_config({"incidents": {"planned_every_days": 1.0}})
    inv = generate_inventory(60, seed=3, config=config)
    out = list(generate(inv, config, 3, START, START + timedelta(hours=30), heartbeat_s=300))
    s0 = ms(START)
    assert out
    assert min(e.t for e in out) >= s0
    assert min(e.ts for e in out) >= s0
    planned = {e.device_id for e in out if e.kind == "state" and e.detail == "planned_maintenance"}
    assert len(planned) > 30  # the maintenance still happens, from the start on


def test_each_device_comes_up_at_its_own_start_within_a_heartbeat() -> None:
    config = SimConfig()
    inv = generate_inventory(200, seed=5)
    out = list(generate(inv, config, 5, START, START + timedelta(minutes=5)))
    first: dict[str, tuple[int, int]] = {}
    for e in out:
        if e.kind != "counter" and e.device_id not in first:
            first[e.device_id] = (e.t, e.control)
    s0 = ms(START)
    starts = []
    for d in inv.devices:
        hb = device_heartbeat_s(d, config) * 1000
        t0 = device_start(d, config, 5, s0, hb)
        assert first[d.id] == (t0, Control.CONNECT)  # its birth, at its own moment
        assert s0 <= t0 < s0 + hb
        starts.append((t0 - s0) // 1000)
    assert len(set(starts)) > 40  # spread over the seconds of the first minute


def test_heartbeats_spread_over_the_minute_and_stay_deterministic() -> None:
    config = SimConfig()
    inv = generate_inventory(300, seed=7)
    end = START + timedelta(minutes=30)
    out = list(generate(inv, config, 7, START, end))
    again = list(generate(inv, config, 7, START, end))
    assert out == again
    per_second: Counter[int] = Counter(e.ts // 1000 for e in out if e.kind == "state")
    s0 = ms(START) // 1000
    for minute in range(2, 29):
        secs = [per_second[s0 + minute * 60 + k] for k in range(60)]
        total = sum(secs)
        assert total >= 250  # about one heartbeat per device and minute
        assert max(secs) / total < 0.1  # no second carries the fleet (before: 99.8 %)


def test_all_at_once_is_still_a_choice() -> None:
    config = make_config({"start_spread_heartbeats": 0})
    inv = generate_inventory(20, seed=2)
    out = list(generate(inv, config, 2, START, START + timedelta(minutes=1)))
    births = [e.t for e in out if e.control == Control.CONNECT]
    assert len(births) == 20 and set(births) == {ms(START)}
