"""Feeding the pure KPI core with a simulated device's messages, as a test would by hand."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import UTC, datetime

import psycopg

from atmfleet.inventory import Inventory
from atmfleet.store.inventory import upsert_inventory
from atmfleet.store.writer import Accepted, BatchWriter
from collector.decode import decode
from rules.config import load_rules
from rules.timeline import (
    Interval,
    PowerRestored,
    Presence,
    StateSample,
    build_timeline,
    compress,
)
from simulator.config import SimConfig
from simulator.engine import Emission, generate

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


def store_simulated(
    url: str,
    inventory: Inventory,
    config: SimConfig,
    seed: int,
    start: datetime,
    end: datetime,
    heartbeat_s: int,
    keep: Callable[[Emission], bool] = lambda e: True,
) -> None:
    """Store the inventory and every message the simulator sends from ``start`` to
    ``end`` (those ``keep`` lets through), decoded as the collector decodes them, each
    received at its send time."""
    msgs = []
    for e in generate(inventory, config, seed, start, end, heartbeat_s=heartbeat_s):
        if not keep(e):
            continue
        got = decode(e.topic, e.payload, datetime.fromtimestamp(e.t / 1000, UTC))
        if isinstance(got, Accepted):
            msgs.append(got)
    with psycopg.connect(url) as conn:
        upsert_inventory(conn, inventory)
        BatchWriter(conn, "test").write(msgs)
