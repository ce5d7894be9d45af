"""``atmfleet serve``'s refresh at a live fleet's pace, BEFORE and AFTER side by side.

    python bench/serve_heard.py --before CHECKOUT [--devices 100000] [--rounds 6] [--pairs 2]

One database filled as bench/scrape.py fills it (not timed), kept as a template. Then,
``--pairs`` times, for the BEFORE checkout and for this one in turn, a child process
(that checkout's code on PYTHONPATH) works on a fresh copy of the template: a lean
``DatabaseSource`` (what ``atmfleet serve`` reads with) and its exporter on a clock of
their own, one full refresh, then ``--rounds`` rounds of a minute each: a heartbeat of
every device (its newest sample again, ``seq + 1``, stamped and received at the round's
instant, as a fleet with 60 s heartbeats sends them), and one refresh a second later.
Each refresh's window (the last refresh less the 60 s margin) holds the two last rounds'
heartbeats, as a live fleet's does. Printed per child: each refresh's seconds (the
device rows' read, and the whole refresh with the rendering), the median of all rounds
but the first, and how many devices the read settled without the full query. The
children run one after the other on a shared machine: compare the ratios, pair by pair.
The exposition of the last refresh is compared between the two checkouts, leaving out
the refresh's own timing series. The databases are dropped at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psycopg

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent

HEARD = """
INSERT INTO state_samples (device_id, seq, ts, received_at, state, heartbeat_s, components,
                           cash_units, faults)
SELECT device_id, seq + 1, %(t)s, %(t)s, state, heartbeat_s, components, cash_units, faults
FROM (SELECT DISTINCT ON (device_id) * FROM state_samples
      ORDER BY device_id, ts DESC, seq DESC) newest
"""
#: The refresh's own timing: they differ between two refreshes by construction.
TIMING = (
    b"atmfleet_exporter_scrape_duration_seconds",
    b"atmfleet_exporter_refresh_timestamp_seconds",
)


def child(url: str, rounds: int, start_ms: int, dump: Path) -> None:
    """Runs in the child: the checkout on PYTHONPATH is the one measured."""
    from prometheus_client import CollectorRegistry

    from exporters.metrics import LEAN_LEAVES_OUT, DatabaseSource, Exporter, Targets
    from rules.config import load_rules
    from rules.timeline import from_ms

    rules = load_rules()
    clock = [start_ms]
    source = DatabaseSource(url, rules, background=True, last_seen=False, now_ms=lambda: clock[0])
    exporter = Exporter(
        source, CollectorRegistry(), Targets.from_rules(rules), leave_out=LEAN_LEAVES_OUT
    )
    exporter.refresh()
    reads, refreshes, settled = [], [], []
    for _ in range(rounds):
        clock[0] += 59_000
        with psycopg.connect(url) as conn:
            conn.execute(HEARD, {"t": from_ms(clock[0])})
        clock[0] += 1_000
        t = time.perf_counter()
        exporter.refresh()
        refreshes.append(time.perf_counter() - t)
        reads.append(source.timings["devices"])
        settled.append(getattr(source, "last_settled", None))
    source.close()
    dump.write_bytes(
        b"".join(
            line for line in exporter.exposition().splitlines(True) if not line.startswith(TIMING)
        )
    )
    print(json.dumps({"reads": reads, "refreshes": refreshes, "settled": settled}))


def copy_of(admin_url: str, template: str, name: str) -> str:
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {name}")
        conn.execute(f"CREATE DATABASE {name} TEMPLATE {template}")
    return admin_url.rsplit("/", 1)[0] + f"/{name}"


def drop(admin_url: str, name: str) -> None:
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {name}")


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--before", type=Path, required=True, help="checkout of the old code")
    parser.add_argument("--devices", type=int, default=100_000)
    parser.add_argument("--per-branch", type=int, default=50)
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--pairs", type=int, default=2)
    parser.add_argument("--admin-url", default="postgresql://postgres@127.0.0.1:5432/postgres")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--start-ms", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--dump", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        # bench/ is first on the path (the script's folder): its cash.py is not cash/.
        sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != HERE]
        child(args.child, args.rounds, args.start_ms, args.dump)
        return
    sys.path.insert(0, str(HERE))
    from scrape import fill

    from atmfleet.store.migrate import Flavour, upgrade
    from rules.config import load_rules

    token = f"{os.getpid()}"
    template = f"atmfleet_bench_heard_{token}"
    work = f"atmfleet_bench_heard_{token}_run"
    template_url = copy_of(args.admin_url, "template0", template)
    try:
        with psycopg.connect(template_url, autocommit=True) as conn:
            upgrade(conn, timezone=load_rules().timezone, flavour=Flavour.POSTGRES)
        with psycopg.connect(template_url) as conn:
            fill(conn, args.devices, args.per_branch)
            (start,) = conn.execute(
                "SELECT floor(extract(epoch FROM max(received_at)) * 1000)::int8 FROM state_samples"
            ).fetchone() or (0,)
        results: dict[str, list[dict]] = {"before": [], "after": []}
        with tempfile.TemporaryDirectory(prefix="serve_heard") as tmp:
            for pair in range(args.pairs):
                for label, tree in (("before", args.before.resolve()), ("after", ROOT)):
                    url = copy_of(args.admin_url, template, work)
                    load = os.getloadavg()[0]
                    out = subprocess.run(
                        [sys.executable, str(HERE / "serve_heard.py"), "--before", ".",
                         "--child", url, "--rounds", str(args.rounds),
                         "--start-ms", str(start + 60_000), "--dump", f"{tmp}/{label}"],
                        env={**os.environ, "PYTHONPATH": str(tree)}, cwd=tree,
                        capture_output=True, text=True, check=False,
                    )  # fmt: skip
                    drop(args.admin_url, work)
                    if out.returncode != 0:
                        raise SystemExit(f"child in {tree} failed:\n{out.stderr[-3000:]}")
                    got = json.loads(out.stdout.strip().splitlines()[-1])
                    got["load"] = load
                    results[label].append(got)
                    print(f"  pair {pair + 1}, {label} (load {load:.1f}): device rows "
                          + " ".join(f"{x:.2f}" for x in got["reads"]) + " s; refresh "
                          + " ".join(f"{x:.2f}" for x in got["refreshes"])
                          + f" s; settled {got['settled'][-1]}", flush=True)  # fmt: skip
                b, a = (Path(tmp, k).read_bytes() for k in ("before", "after"))
                lines = a.count(b"\n")
                print(f"  pair {pair + 1}: last expositions "
                      + ("equal" if a == b else "DIFFERENT") + f" ({lines} lines)")  # fmt: skip
        print()
        print(f"{args.devices:,} devices, every device heard from each round; median of "
              f"rounds 2..{args.rounds}, each pair side by side")  # fmt: skip
        print(f"{'pair':>4} {'measure':<22} {'before':>8} {'after':>8} {'ratio':>6}")
        for pair in range(args.pairs):
            for key, name in (("reads", "device rows (s)"), ("refreshes", "refresh (s)")):
                b = statistics.median(results["before"][pair][key][1:])
                a = statistics.median(results["after"][pair][key][1:])
                print(f"{pair + 1:>4} {name:<22} {b:>8.2f} {a:>8.2f} {b / a:>6.2f}")
    finally:
        drop(args.admin_url, work)
        drop(args.admin_url, template)


if __name__ == "__main__":
    main()
