"""The bulletins at fleet scale, BEFORE and AFTER side by side, through the command itself.

    python bench/bulletin.py --before CHECKOUT [--devices 100000 ...] [--kinds daily,monthly]
                             [--admin-url postgresql://postgres@127.0.0.1/postgres]

Creates a throw-away database (plain PostgreSQL) and fills it (bulk COPY, not timed) as
``bench/kpi_db.py`` does: the inventory, three local days of state runs around the day
measured, 30 days of txn_daily, the 29 kept closed days before it; plus teller-counter
volumes for every branch. Then, for each device count and each kind, runs

    atmfleet bulletin daily --date D --format all          (xlsx, csv, html, json)
    atmfleet bulletin monthly --month M --format all

as a process, once with the code of ``--before`` (a checkout of the earlier commit, put
first on PYTHONPATH) and once with this tree's, on the same database, one right after the
other (the machine is shared: compare the ratio, not the seconds). Before each run the
days the previous run kept are removed, so both start from the same store. Prints wall
seconds and the peak RSS of each run, and the ratio. The database is dropped at the end.
"""

from __future__ import annotations

import argparse
import os
import random
import subprocess
import sys
import tempfile
import time
from datetime import timedelta
from pathlib import Path

import psycopg

sys.path.insert(0, str(Path(__file__).resolve().parent))

from kpi_db import DAY, fill, keep_days
from scratch import upgraded_database

from rules.config import load_rules
from rules.feed import Feed

HERE = Path(__file__).resolve().parent.parent

#: Runs the command in this process and prints its peak RSS (KiB) last, on stderr.
RUNNER = (
    "import resource, sys\n"
    "from app.cli import cli\n"
    "try:\n"
    "    cli.main(sys.argv[1:], prog_name='atmfleet', standalone_mode=False)\n"
    "finally:\n"
    "    print('maxrss', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, file=sys.stderr)\n"
)


def add_counters(conn: psycopg.Connection) -> None:
    conn.execute(
        """
        INSERT INTO counter_volumes
        SELECT id, %(day)s::date, 200 + floor(random() * 400)::int, floor(random() * 200)::int,
               'core', now(), now()
        FROM branches WHERE kind = 'outlet'
        """,
        {"day": DAY},
    )
    conn.commit()


def reset(conn: psycopg.Connection) -> None:
    """Forget what a run kept: the kept days from the day measured on (and whatever a
    kept-days cache of the newer code holds for them)."""
    conn.execute("DELETE FROM kpi_device_days WHERE day >= %s", (DAY,))
    conn.commit()


def run(code: Path, url: str, args: list[str]) -> tuple[float, float, str]:
    """(seconds, peak RSS MiB, error text) of one run of the command with ``code``."""
    env = dict(os.environ, ATMFLEET_DATABASE_URL=url, PYTHONPATH=str(code))
    env.pop("ATMFLEET_RULES_FILE", None)
    t = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-c", RUNNER, *args], env=env, cwd=code, capture_output=True, text=True
    )
    took = time.perf_counter() - t
    rss = 0.0
    for line in done.stderr.splitlines():
        if line.startswith("maxrss "):
            rss = int(line.split()[1]) / 1024
    err = "" if done.returncode == 0 else done.stderr.strip().splitlines()[-2:]
    return took, rss, " | ".join(err) if err else ""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--before", type=Path, required=True, help="checkout of the old code")
    parser.add_argument("--devices", default="100000", help="comma-separated counts")
    parser.add_argument("--kinds", default="daily,monthly")
    parser.add_argument("--admin-url", default="postgresql://postgres@127.0.0.1:5432/postgres")
    args = parser.parse_args()
    rules = load_rules()
    kinds = [k.strip() for k in args.kinds.split(",") if k.strip()]
    results: list[str] = []
    for n in [int(x) for x in args.devices.split(",")]:
        with upgraded_database(args.admin_url, rules.timezone) as url, psycopg.connect(url) as conn:
            t = time.perf_counter()
            fill(conn, n, random.Random(1))
            add_counters(conn)
            keep_days(Feed(conn, rules), conn, DAY - timedelta(days=29), DAY - timedelta(days=1))
            conn.execute("ANALYZE")
            conn.commit()
            print(f"{n} devices: setup {time.perf_counter() - t:.0f} s (not measured)", flush=True)
            for kind in kinds:
                if kind == "daily":
                    cmd = ["bulletin", "daily", "--date", DAY.isoformat()]
                else:
                    cmd = ["bulletin", kind, f"--{'month' if kind == 'monthly' else 'quarter'}",
                           DAY.strftime("%Y-%m") if kind == "monthly"
                           else f"{DAY.year}-Q{(DAY.month - 1) // 3 + 1}"]  # fmt: skip
                got = {}
                for label, code in (("before", args.before.resolve()), ("after", HERE)):
                    reset(conn)
                    with tempfile.TemporaryDirectory() as out:
                        got[label] = run(code, url, [*cmd, "--format", "all", "--out", out])
                    s, rss, err = got[label]
                    print(f"  {kind:9s} {label:6s} {s:7.1f} s  {rss:7.0f} MiB  {err}", flush=True)
                (b, brss, _), (a, arss, _) = got["before"], got["after"]
                results.append(
                    f"{n:>7} {kind:9s} all 4 formats  before {b:7.1f} s {brss:6.0f} MiB   "
                    f"after {a:6.1f} s {arss:5.0f} MiB   x{b / a:5.1f} faster"
                )
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    print(f"\n{os.cpu_count()} CPUs, load average {load}")
    print("\n".join(results))


if __name__ == "__main__":
    main()
