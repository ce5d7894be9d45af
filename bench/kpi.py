"""How long the KPI engine's pure core takes at fleet scale.

    python bench/kpi.py [DEVICES]      # default 100000

Builds synthetic input (not timed), then times:

1. uptime for one local day: per device, the timeline from its state runs (as the feed
   hands them over: a day of heartbeats collapsed into runs), presence and outages, the
   scheduled spans of its service window, both views; then roll-ups by sub-branch, type
   and fleet;
2. low-yield and low-efficiency flags on one date over a 30-day window, and the share by
   sub-branch;
3. for scale, ``compress`` of raw heartbeats (one per minute) on 1 % of the devices:
   the feed does this step in SQL, so it is not part of (1).

Prints seconds for each.
"""

from __future__ import annotations

import random
import sys
import time
from datetime import date, timedelta
from zoneinfo import ZoneInfo

from atmfleet.inventory import (
    Branch,
    Device,
    DeviceType,
    Inventory,
    Placement,
    SubBranch,
    Tier,
)
from rules.config import load_rules
from rules.lowyield import DeviceDays, evaluate, low_yield_share
from rules.timeline import Presence, StateRun, StateSample, build_timeline, compress
from rules.uptime import (
    Uptime,
    UptimePolicy,
    WindowSpans,
    day_span,
    device_uptime,
    dimension_key,
    rollup,
    scheduled_spans,
)

TYPES = (DeviceType.ATM, DeviceType.CRS, DeviceType.DEPOSIT, DeviceType.SMART_TELLER)
PLACEMENTS = (Placement.ON_SITE, Placement.OFF_SITE, Placement.SELF_SERVICE_BANK)
DAY = date(2026, 11, 27)
HB = 60_000


def fleet(n: int, rng: random.Random) -> Inventory:
    subs = tuple(
        SubBranch(id=f"S{i:02d}", name=f"s{i}", tier=Tier(str(i % 3 + 1))) for i in range(12)
    )
    branches = tuple(
        Branch(id=f"B{i:05d}", name=f"b{i}", subbranch=subs[i % 12].id)
        for i in range(max(1, n // 50))
    )
    devices = tuple(
        Device(
            id=f"D{i:06d}",
            branch=branches[i % len(branches)].id,
            type=rng.choice(TYPES),
            placement=rng.choice(PLACEMENTS),
            vendor=f"V{i % 5}",
            model=f"M{i % 3}",
            commissioned=date(2025, 1, 1),
        )
        for i in range(n)
    )
    return Inventory(subbranches=subs, branches=branches, devices=devices)


def day_runs(rng: random.Random, lo: int, hi: int) -> tuple[list[StateRun], list[Presence]]:
    """A plausible day: in service, a supervisor visit or two, maybe a fault or an outage."""
    runs: list[StateRun] = []
    presence: list[Presence] = []
    t = lo - 30_000  # context: the last sample before the day
    events = sorted(rng.sample(range(lo + HB, hi - 4 * 3_600_000, HB), 3))
    kinds = ["supervisor"]
    roll = rng.random()
    if roll < 0.15:
        kinds.append("fault")
    elif roll < 0.20:
        kinds.append("offline")
    elif roll < 0.25:
        kinds.append("cash_out")
    for at, kind in zip(events, kinds, strict=False):
        runs.append(StateRun(t, at - HB, "in_service"))
        length = rng.randrange(10, 180) * HB
        if kind == "offline":
            presence.append(Presence(ts=0, online=False, will=True, received=at))
            presence.append(Presence(ts=at + length, online=True))
        else:
            runs.append(StateRun(at, at + length - HB, kind))
        t = at + length
    runs.append(StateRun(t, hi + 30_000, "in_service"))  # and the first sample after
    return runs, presence


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 100_000
    rng = random.Random(42)
    rules = load_rules()
    tz = ZoneInfo(rules.timezone)
    policy = UptimePolicy.from_rules(rules)
    inv = fleet(n, rng)
    lo, hi = day_span(DAY, tz)
    inputs = [(d, *day_runs(rng, lo, hi)) for d in inv.devices]
    outages = [(lo + 5 * 3_600_000, lo + 5 * 3_600_000 + 600_000)]
    runs_total = sum(len(r) for _, r, _ in inputs)

    started = time.perf_counter()
    windows = WindowSpans(tz)
    per_device: dict[str, Uptime] = {}
    for device, runs, presence in inputs:
        tl = build_timeline(runs, lo, hi, presence=presence, outages=outages)
        spans = scheduled_spans(device, DAY, rules, windows)
        per_device[device.id] = device_uptime(tl, spans, policy)
    built = time.perf_counter()
    for dim in ("subbranch", "type", "fleet"):
        rollup(per_device, dimension_key(inv, dim))
    uptime_s = time.perf_counter() - started
    fleet_ratio = rollup(per_device, dimension_key(inv, "fleet"))["fleet"].ratio
    print(
        f"uptime, {n} devices x 1 day ({runs_total} state runs): "
        f"{uptime_s:.2f} s (timelines+uptime {built - started:.2f} s); fleet 开机率 {fleet_ratio:.4f}"
    )

    window = rules.low_yield.window_days
    first = DAY - timedelta(days=window - 1)
    series = [
        DeviceDays(
            d.id,
            d.type,
            d.commissioned,
            None,
            first,
            [rng.randrange(0, 120) for _ in range(window)],
            [86_400_000 if rng.random() > 0.02 else 0 for _ in range(window)],
            [86_400_000] * window,
        )
        for d in inv.devices
    ]
    targets = {d.id: rules.uptime.targets[inv.subbranch_of(d).tier] for d in inv.devices}
    started = time.perf_counter()
    flags = [evaluate(s, DAY, rules.low_yield, targets[s.device_id]) for s in series]
    shares = low_yield_share(flags, dimension_key(inv, "subbranch"), rules.low_yield.max_share)
    yield_s = time.perf_counter() - started
    low = sum(s.low for s in shares.values())
    print(f"low-yield, {n} devices x {window} days: {yield_s:.2f} s ({low} low-yield)")

    sample = max(1, n // 100)
    raw = [
        [StateSample(t, "in_service", 60, i) for i, t in enumerate(range(lo - HB, hi + HB, HB))]
        for _ in range(sample)
    ]
    started = time.perf_counter()
    for samples in raw:
        compress(samples)
    compress_s = time.perf_counter() - started
    print(
        f"compress of raw heartbeats, {sample} devices x {len(raw[0])} samples: "
        f"{compress_s:.2f} s (x{n // sample} = {compress_s * n / sample:.0f} s in Python; "
        "done in SQL by the feed)"
    )


if __name__ == "__main__":
    main()
