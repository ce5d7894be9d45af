"""The timeline agrees with the simulator's ground truth, an independent implementation of
the availability semantics, on a simulated fleet with power cuts, network outages and
link drops (both ways of announcing a drop: broker will, gateway offline)."""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime

import pytest

from rules.labels import Label
from rules.timeline import (
    Interval,
)
from simulator.config import make_config
from simulator.engine import Emission, device_heartbeat_s
from simulator.fleet import generate_inventory
from simulator.ledger import simulate
from tests.simulated import pure_timeline

START = datetime(2026, 11, 26, 16, tzinfo=UTC)
END = datetime(2026, 11, 28, 16, tzinfo=UTC)  # two local days


@pytest.mark.parametrize("real_wills", [True, False], ids=["broker-will", "gateway-offline"])
def test_timeline_matches_the_simulators_ground_truth(real_wills: bool) -> None:
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
    run = simulate(inventory, config, 7, START, END, real_wills=real_wills)
    by_device: dict[str, list[Emission]] = {}
    for e in run.emissions:
        by_device.setdefault(e.device_id, []).append(e)
    end = run.ledger.end
    assert end is not None
    seen: Counter[Label] = Counter()
    for device in inventory.devices:
        truth = run.ledger.intervals_of(device.id)
        expected: list[Interval] = []
        for iv in truth:
            label = Label(iv.cause)
            if expected and expected[-1][2] is label and expected[-1][1] == iv.start:
                expected[-1] = (expected[-1][0], iv.end, label)
            else:
                expected.append((iv.start, iv.end, label))
            seen[label] += iv.end - iv.start
        hb = device_heartbeat_s(device, config)
        got = pure_timeline(by_device.get(device.id, []), hb, hb, truth[0].start, end)
        assert got == expected, device.id
    # The run exercised what the test is about.
    for label in (Label.COMMUNICATIONS, Label.POWER, Label.FAULT, Label.SUPERVISOR):
        assert seen[label] > 0, label
