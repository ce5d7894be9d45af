"""Feeding the pure KPI core with a simulated device's messages, as a test would by hand."""

from __future__ import annotations

from collections.abc import Sequence

from rules.config import load_rules
from rules.timeline import (
    Interval,
    PowerRestored,
    Presence,
    StateSample,
    build_timeline,
    compress,
)
from simulator.engine import Emission

RULES = load_rules()


def pure_timeline(
    emissions: Sequence[Emission],
    heartbeat_s: int,
    default_heartbeat_s: int,
    lo: int,
    hi: int,
    outages: Sequence[tuple[int, int]] = (),
) -> list[Interval]:
    """The pure core on every message of a device (the shipped rules' timeout factor)."""
    samples, presence, power = [], [], []
    for e in emissions:
        if e.kind == "state":
            samples.append(StateSample(e.ts, e.detail, heartbeat_s, e.seq))
        elif e.kind == "presence":
            presence.append(
                Presence(e.ts, e.detail == "online", will=e.result == "will", received=e.t)
            )
        elif e.kind == "event" and e.detail == "power_restored":
            power.append(PowerRestored(e.since, e.ts))
    runs = compress(samples, RULES.heartbeat.timeout_factor, breaks=[p.at for p in presence])
    return build_timeline(
        runs, lo, hi, presence=presence, power=power, outages=outages,
        timeout_factor=RULES.heartbeat.timeout_factor, default_heartbeat_s=default_heartbeat_s,
    )  # fmt: skip
