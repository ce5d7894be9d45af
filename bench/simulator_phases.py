"""The simulator before and after, side by side in one run: set-up time and peak RSS of a
big fleet, how the heartbeats spread over the seconds of a minute, the messages stamped
before the run's start, and a small backfill through a private Mosquitto.

    git worktree add /tmp/before-sim <commit>      # the code to compare against
    python bench/simulator_phases.py --before /tmp/before-sim
        [--devices 100000] [--spread-devices 5000] [--spread-hours 2]
        [--backfill-devices 100] [--backfill-days 3]

Each measurement runs in a child process of the same interpreter with ``PYTHONPATH`` set
to one tree (BEFORE: ``--before``; AFTER: this checkout), one after the other, so the two
see the same machine load. Peak RSS is the child's ``ru_maxrss``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent.parent

CHILD = r"""
import json, resource, sys, time
from collections import Counter
from datetime import UTC, datetime, timedelta
from simulator.config import SimConfig
from simulator.engine import generate, ms
from simulator.fleet import generate_inventory

what, devices, span = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
# 14:00 local (Asia/Shanghai): the first planned maintenance may fall earlier that day.
start = datetime(2026, 11, 2, 6, 0, tzinfo=UTC)
t0 = time.perf_counter()
inv = generate_inventory(devices, seed=1)
t_inv = time.perf_counter() - t0
out = {"inventory_s": t_inv}
if what == "setup":
    t1 = time.perf_counter()
    it = generate(inv, SimConfig(), 1, start, start + timedelta(days=30))
    first = next(it)
    out["first_message_s"] = time.perf_counter() - t1
    limit = ms(start) + int(span * 1000)
    n = 1
    for e in it:
        n += 1
        if e.t >= limit:
            break
    out["through_s"] = time.perf_counter() - t1
    out["messages"] = n
else:
    s0 = ms(start)
    before_start = 0
    devices_before = set()
    per_second = Counter()
    n = 0
    for e in generate(inv, SimConfig(), 1, start, start + timedelta(hours=span)):
        n += 1
        if e.ts < s0 or e.t < s0:
            before_start += 1
            devices_before.add(e.device_id)
        if e.kind == "state":
            per_second[e.ts // 1000] += 1
    minutes = {}
    for sec, k in per_second.items():
        m = minutes.setdefault(sec // 60, [0, 0])
        m[0] += k
        m[1] = max(m[1], k)
    # Whole minutes after the first heartbeat, so the start-up spread is not counted.
    full = [v for m, v in sorted(minutes.items()) if m >= s0 // 60000 + 2][:-1]
    shares = sorted(busy / total for total, busy in full if total)
    out.update(
        messages=n,
        before_start=before_start,
        devices_before=len(devices_before),
        busiest_second_share_median=shares[len(shares) // 2] if shares else None,
        busiest_second_share_max=shares[-1] if shares else None,
        state_per_minute=sum(t for t, _ in full) / len(full) if full else None,
    )
out["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(json.dumps(out))
"""


def child(tree: Path, *args: str) -> dict[str, float]:
    env = {**os.environ, "PYTHONPATH": str(tree)}
    t0 = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-c", CHILD, *args],
        env=env,
        cwd=tree,
        capture_output=True,
        text=True,
        check=False,
    )
    if proc.returncode != 0:
        raise SystemExit(f"{tree}: {proc.stderr.strip()[-2000:]}")
    got: dict[str, float] = json.loads(proc.stdout.strip().splitlines()[-1])
    got["wall_s"] = time.perf_counter() - t0
    return got


def backfill(tree: Path, devices: int, days: float, url: str, work: Path) -> dict[str, float]:
    ledger = work / f"ledger-{tree.name}"
    cmd = [
        sys.executable, "-m", "app.cli", "simulate", "--devices", str(devices),
        "--backfill", str(days), "--mqtt-url", url, "--ledger", str(ledger),
        "--id-prefix", f"bf{tree.name[-4:]}-",
    ]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(tree)}
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, env=env, cwd=tree, capture_output=True, text=True, check=False)
    seconds = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"backfill in {tree} failed: {proc.stderr.strip()[-2000:]}")
    summary = json.loads((ledger / "summary.json").read_text())
    return {"wall_s": seconds, "messages": summary["messages"]}


def row(name: str, before: float | None, after: float | None, fmt: str = "{:,.2f}") -> None:
    def f(v: float | None) -> str:
        return "–" if v is None else fmt.format(v)

    ratio = "–" if not before or after is None else f"{after / before:.2f}x"
    print(f"{name:<52} {f(before):>14} {f(after):>14} {ratio:>8}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--before", type=Path, required=True, help="checkout of the old code")
    parser.add_argument("--devices", type=int, default=100_000)
    parser.add_argument("--setup-seconds", type=float, default=120.0)
    parser.add_argument("--spread-devices", type=int, default=5000)
    parser.add_argument("--spread-hours", type=float, default=2.0)
    parser.add_argument("--backfill-devices", type=int, default=100)
    parser.add_argument("--backfill-days", type=float, default=3.0)
    args = parser.parse_args()
    trees = {"before": args.before.resolve(), "after": HERE}
    print(f"{'':<52} {'BEFORE':>14} {'AFTER':>14} {'after/before':>8}")

    setup = {
        k: child(t, "setup", str(args.devices), str(args.setup_seconds)) for k, t in trees.items()
    }
    b, a = setup["before"], setup["after"]
    row(f"{args.devices:,} devices: inventory (s)", b["inventory_s"], a["inventory_s"])
    row(
        f"{args.devices:,} devices: set-up to first message (s)",
        b["first_message_s"],
        a["first_message_s"],
    )
    row(
        f"{args.devices:,} devices: through first {args.setup_seconds:.0f} sim s (s)",
        b["through_s"],
        a["through_s"],
    )
    row(f"{args.devices:,} devices: peak RSS (MiB)", b["peak_rss_mb"], a["peak_rss_mb"], "{:,.0f}")

    spread = {
        k: child(t, "spread", str(args.spread_devices), str(args.spread_hours))
        for k, t in trees.items()
    }
    b, a = spread["before"], spread["after"]
    label = f"{args.spread_devices:,} devices, {args.spread_hours:g} h"
    row(f"{label}: busiest second, share of minute (median)",
        b["busiest_second_share_median"], a["busiest_second_share_median"], "{:.1%}")  # fmt: skip
    row(f"{label}: busiest second, share of minute (max)",
        b["busiest_second_share_max"], a["busiest_second_share_max"], "{:.1%}")  # fmt: skip
    row(
        f"{label}: state messages per minute",
        b["state_per_minute"],
        a["state_per_minute"],
        "{:,.0f}",
    )
    row(
        f"{label}: messages stamped before the start",
        b["before_start"],
        a["before_start"],
        "{:,.0f}",
    )
    row(f"{label}: devices with such messages", b["devices_before"], a["devices_before"], "{:,.0f}")
    row(f"{label}: messages", b["messages"], a["messages"], "{:,.0f}")

    if args.backfill_devices:
        sys.path.insert(0, str(HERE))
        from bench.simulate import start_mosquitto

        with tempfile.TemporaryDirectory(prefix="atmfleet-bench-") as tmp:
            proc, url = start_mosquitto(Path(tmp))
            try:
                bf = {
                    k: backfill(t, args.backfill_devices, args.backfill_days, url, Path(tmp))
                    for k, t in trees.items()
                }
            finally:
                proc.terminate()
                proc.wait(10)
        b, a = bf["before"], bf["after"]
        label = f"backfill {args.backfill_devices:,} devices x {args.backfill_days:g} d"
        row(f"{label}: wall (s)", b["wall_s"], a["wall_s"])
        row(f"{label}: messages", b["messages"], a["messages"], "{:,.0f}")
    print(f"cpus: {os.cpu_count()}; load: {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
