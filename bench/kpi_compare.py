"""``kpi uptime`` for a day and the 30-day low-yield, before and after a change, side by side.

    python bench/kpi_compare.py --before /path/to/old/checkout [--devices 1000,10000,100000]

For each fleet size one throw-away database is filled as bench/kpi_db.py fills it (not
timed: three days of state runs, txn_daily for 30 days, kept closed days for the 29
days before the day measured). Then a child process per checkout (its code on
PYTHONPATH) times, through that checkout's ``rules``:

- uptime of one local day for every device with the database reads and the roll-ups
  by sub-branch and fleet (what ``atmfleet kpi uptime --by subbranch`` computes);
- the 30-day low-yield evaluation with the day measured not yet kept (computed, then
  kept), and the share by sub-branch, tier, type and fleet.

Each child keeps the 29 days under its own fingerprint first (not timed), so both read
29 kept days and compute the day measured.
The children run one after the other on a shared machine: compare the ratios.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path

import psycopg

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent


def child(url: str) -> None:
    from kpi_db import DAY, keep_days

    from rules.config import load_rules
    from rules.feed import Feed, low_yield_for, uptime_for
    from rules.lowyield import low_yield_share
    from rules.uptime import day_span, dimension_key, rollup, total

    rules = load_rules()
    with psycopg.connect(url) as conn:
        feed = Feed(conn, rules)
        # The 29 closed days before DAY kept under this checkout's fingerprint (its rules
        # model may differ from the other's), as its daily job would have left them.
        conn.execute("DELETE FROM kpi_device_days")
        conn.execute("SELECT setseed(0.42)")  # the same kept values for both checkouts
        keep_days(feed, conn, DAY - timedelta(days=29), DAY - timedelta(days=1))
        conn.execute("ANALYZE kpi_device_days")
        conn.commit()
        horizon = day_span(DAY, rules.tz)[1] + 2 * 86_400_000
        t0 = time.perf_counter()
        inventory = feed.inventory()
        up = uptime_for(feed, inventory.devices, DAY, DAY, horizon)
        per_device = {d: total(v.values()) for d, v in up.per_device.items()}
        for dim in ("subbranch", "fleet"):
            groups = rollup(per_device, dimension_key(inventory, dim))
        uptime_s = time.perf_counter() - t0
        ratio = groups["fleet"].ratio
        t0 = time.perf_counter()
        inventory = feed.inventory()
        flags = low_yield_for(feed, inventory, inventory.devices, DAY, horizon)
        for dim in ("subbranch", "tier", "type", "fleet"):
            shares = low_yield_share(
                flags, dimension_key(inventory, dim), rules.low_yield.max_share
            )
        low_s = time.perf_counter() - t0
    print(
        json.dumps(
            {
                "uptime_s": uptime_s,
                "fleet_uptime": ratio,
                "lowyield_s": low_s,
                "fleet_share": shares["fleet"].share,
            }
        )
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--before", type=Path, required=True, help="checkout of the old code")
    parser.add_argument("--devices", default="100000", help="comma-separated fleet sizes")
    parser.add_argument("--admin-url", default="postgresql://postgres@127.0.0.1:5432/postgres")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    sys.path.insert(0, str(HERE))
    if args.child:
        child(args.child)
        return
    from kpi_db import fill
    from scratch import upgraded_database

    from rules.config import load_rules

    rules = load_rules()
    rows = []
    for n in [int(x) for x in args.devices.split(",")]:
        with upgraded_database(args.admin_url, rules.timezone) as url:
            with psycopg.connect(url) as conn:
                fill(conn, n, random.Random(1))
            got = {}
            for label, tree in (("before", args.before.resolve()), ("after", ROOT)):
                load = os.getloadavg()[0]
                out = subprocess.run(
                    [sys.executable, str(HERE / "kpi_compare.py"), "--before", ".", "--child", url],
                    env={**os.environ, "PYTHONPATH": str(tree)},
                    capture_output=True, text=True, check=False, cwd=tree,
                )  # fmt: skip
                if out.returncode != 0:
                    raise SystemExit(f"child in {tree} failed:\n{out.stderr[-3000:]}")
                got[label] = json.loads(out.stdout.strip().splitlines()[-1]) | {"load": load}
                print(f"  {n} devices, {label}: {json.dumps(got[label])}", flush=True)
            rows.append((n, got))
    print()
    print(f"{'devices':>8} {'measure':<36} {'before':>10} {'after':>10} {'ratio':>7}")
    for n, got in rows:
        b, a = got["before"], got["after"]
        for name, key in (
            ("kpi uptime, one day (s)", "uptime_s"),
            ("low-yield, 30 days, 1 not kept (s)", "lowyield_s"),
            ("load average at start", "load"),
        ):
            x, y = b[key], a[key]
            print(f"{n:>8} {name:<36} {x:>10.2f} {y:>10.2f} {x / y:>7.2f}")
        same = b["fleet_uptime"] == a["fleet_uptime"] and b["fleet_share"] == a["fleet_share"]
        print(f"{n:>8} {'same fleet uptime and share':<36} {'yes' if same else 'NO':>10}")


if __name__ == "__main__":
    main()
