"""``atmfleet serve`` before and after a change, side by side, on the same database.

    python bench/serve_compare.py --before /path/to/old/checkout [--devices 1000,10000,100000]

For each fleet size: one throw-away database filled as bench/scrape.py fills it (not
timed: the inventory, today's state runs, newest samples, last wills, transactions, 30
days of txn_daily and kept closed days up to the day before yesterday, so yesterday is
not kept yet), then, for the BEFORE checkout and for this one in turn, a child process
importing that checkout's code (PYTHONPATH) runs ``start_serving`` as ``atmfleet serve``
does and reports:

- port open: seconds until ``start_serving`` returned with ``/metrics`` answering;
- first full: seconds from the start until the exposition holds the device rows,
  today's times per branch and the low-yield share;
- refresh: the next two refreshes of the device rows as the refresh thread runs them
  (best and worst);
- scrape: one plain HTTP GET of /metrics, its bytes and samples;
- peak RSS of the child.

Each child first keeps the closed days up to the day before yesterday under its own
fingerprint (not timed), so both read 29 kept days and compute yesterday. The two
children run one after the other on a shared machine: compare the ratio, not the
seconds alone.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path
from urllib.request import urlopen

import psycopg

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent


KEEP = """
INSERT INTO kpi_device_days (fingerprint, device_id, day, available_ms, scheduled_ms, financial)
SELECT %(fp)s, id, d::date, 86400000 - s, 86400000, f
FROM generate_series((now() AT TIME ZONE %(tz)s)::date - 30,
                     (now() AT TIME ZONE %(tz)s)::date - 2, INTERVAL '1 day') AS d
CROSS JOIN (SELECT id, (floor(random() * 4) * 1800000)::int8 AS s,
                   floor(random() * 120)::int8 AS f FROM devices ORDER BY id) dev
"""


def child(url: str) -> None:
    """Runs in the child: the checkout on PYTHONPATH is the one measured."""
    from exporters.metrics import start_serving
    from rules.config import load_rules
    from rules.feed import Feed

    rules = load_rules()
    # The closed days up to the day before yesterday kept under this checkout's
    # fingerprint (its rules model may differ from the other's), as bench/scrape.py's
    # fill keeps them, with a fixed seed: the same values for both checkouts. Not timed.
    with psycopg.connect(url) as conn:
        conn.execute("DELETE FROM kpi_device_days")
        conn.execute("SELECT setseed(0.42)")
        conn.execute(KEEP, {"fp": Feed(conn, rules).fingerprint(), "tz": rules.timezone})
        conn.execute("ANALYZE kpi_device_days")
    t0 = time.perf_counter()
    serving = start_serving(url, rules, port=0, refresh_s=3600, day_refresh_s=3600)
    endpoint = f"http://127.0.0.1:{serving.port}/metrics"
    urlopen(endpoint, timeout=60).read()
    port_open = time.perf_counter() - t0
    full = None
    while time.perf_counter() - t0 < 1800:
        body = urlopen(endpoint, timeout=60).read()
        if (
            b"atmfleet_exporter_database_up 1.0" in body
            and b"\natmfleet_lowyield_evaluated_devices{" in body
            and b"\natmfleet_day_scheduled_seconds{" in body
        ):
            full = time.perf_counter() - t0
            break
        time.sleep(0.2)
    refreshes = []
    for _ in range(2):
        t = time.perf_counter()
        serving.exporter.refresh()
        refreshes.append(time.perf_counter() - t)
    t = time.perf_counter()
    body = urlopen(endpoint, timeout=60).read()
    scrape_s = time.perf_counter() - t
    samples = sum(1 for line in body.splitlines() if line and not line.startswith(b"#"))
    families: dict[str, int] = {}
    for line in body.splitlines():
        if line and not line.startswith(b"#"):
            name = line.split(b"{", 1)[0].split(b" ", 1)[0].decode()
            families[name] = families.get(name, 0) + 1
    timings = dict(serving.source.timings)
    serving.close()
    print(
        json.dumps(
            {
                "port_open_s": port_open,
                "first_full_s": full,
                "refresh_s": refreshes,
                "scrape_s": scrape_s,
                "bytes": len(body),
                "samples": samples,
                "families": families,
                "reads_s": timings,
                "rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                # the largest child that ended (the cash-out forecast's process, if any)
                "child_rss_mib": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024,
            }
        )
    )


def run_child(tree: Path, url: str) -> dict:
    env = {**os.environ, "PYTHONPATH": str(tree)}
    out = subprocess.run(
        [sys.executable, str(HERE / "serve_compare.py"), "--before", ".", "--child", url],
        env=env, capture_output=True, text=True, check=False, cwd=tree,
    )  # fmt: skip
    if out.returncode != 0:
        raise SystemExit(f"child in {tree} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--before", type=Path, required=True, help="checkout of the old code")
    parser.add_argument("--devices", default="100000", help="comma-separated fleet sizes")
    parser.add_argument("--admin-url", default="postgresql://postgres@127.0.0.1:5432/postgres")
    parser.add_argument("--per-branch", type=int, default=50, help="devices per branch")
    parser.add_argument("--url", help="an already filled database to use (kept)")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        # bench/ is first on the path (the script's folder): its cash.py is not cash/.
        sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != HERE]
        child(args.child)
        return
    sys.path.insert(0, str(HERE))
    from scrape import fill
    from scratch import upgraded_database

    from atmfleet.store.migrate import Flavour
    from rules.config import load_rules

    rules = load_rules()
    rows = []

    def both(n: int, url: str) -> None:
        got = {}
        for label, tree in (("before", args.before.resolve()), ("after", ROOT)):
            load = os.getloadavg()[0]
            got[label] = run_child(tree, url)
            got[label]["load"] = load
            print(f"  {n} devices, {label}: {json.dumps(got[label])}", flush=True)
        rows.append((n, got))

    for n in [int(x) for x in args.devices.split(",")]:
        if args.url:  # filled already (by bench/scrape.py's fill, n devices)
            both(n, args.url)
            continue
        with upgraded_database(args.admin_url, rules.timezone, Flavour.POSTGRES) as url:
            with psycopg.connect(url) as conn:
                fill(conn, n, args.per_branch)
            both(n, url)
    print()
    print(f"{'devices':>8} {'measure':<28} {'before':>12} {'after':>12} {'ratio':>7}")
    for n, got in rows:
        b, a = got["before"], got["after"]
        lines = [
            ("port open (s)", b["port_open_s"], a["port_open_s"]),
            ("first full refresh (s)", b["first_full_s"], a["first_full_s"]),
            ("refresh, best (s)", min(b["refresh_s"]), min(a["refresh_s"])),
            ("refresh, worst (s)", max(b["refresh_s"]), max(a["refresh_s"])),
            ("scrape, plain (s)", b["scrape_s"], a["scrape_s"]),
            ("exposition (MB)", b["bytes"] / 1e6, a["bytes"] / 1e6),
            ("samples", b["samples"], a["samples"]),
            ("peak RSS (MiB)", b["rss_mib"], a["rss_mib"]),
            ("peak RSS of a child (MiB)", b.get("child_rss_mib", 0), a.get("child_rss_mib", 0)),
            ("load average at start", b["load"], a["load"]),
        ]
        for name, x, y in lines:
            ratio = f"{x / y:7.1f}" if x and y else "      –"
            print(f"{n:>8} {name:<28} {x:>12.2f} {y:>12.2f} {ratio}")
    print()
    n, got = rows[-1]
    print(f"series per family at {n} devices (after):")
    for name, count in sorted(got["after"]["families"].items(), key=lambda kv: -kv[1]):
        print(f"  {count:>8}  {name}")


if __name__ == "__main__":
    main()
