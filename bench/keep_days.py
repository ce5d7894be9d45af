"""How long keeping a closed day takes (``atmfleet kpi keep-days --date D``), BEFORE and
AFTER, and whether the kept rows are the same.

    python bench/keep_days.py [--before CHECKOUT] [--devices 100000] [--database URL]
                              [--rounds 1]

Fills a throw-away database as bench/kpi_db.py does (the inventory, three days of state
runs, 30 days of txn_daily, 29 kept closed days before the day measured), then, per code
(``--before CHECKOUT``: a checkout of the earlier code, put first on PYTHONPATH), from the
same store (the day measured removed and the table vacuumed first) runs the daily job
``atmfleet kpi keep-days --date D`` as a process, and hashes every row of
``kpi_device_days`` (all columns but ``computed_at``, ordered by the key); then times the
write alone: the day just kept read back (``Feed.kept_uptime``), removed, and kept again
through ``Feed.keep_uptime_days`` in a process of its own per code. Prints the wall and
CPU seconds of both, the ratios, the load average, and whether the hashes are equal.
``--database URL``: an already filled database (not dropped).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

import psycopg

sys.path.insert(0, str(Path(__file__).resolve().parent))

from kpi_db import DAY, HERE, command, filled_database

#: Every kept column but computed_at (the time of the write), in the key's order.
ROWS_HASH = """
SELECT md5(string_agg(concat_ws('|', fingerprint, device_id, day, available_ms, scheduled_ms,
                                financial, warning_ms, tech_scheduled_ms, tech_available_ms,
                                planned_excluded_ms, monitored_ms, labels, label_ms::text,
                                array_ndims(label_ms)), E'\\n'
                      ORDER BY fingerprint, device_id, day)),
       count(*), count(*) FILTER (WHERE day = %s)
FROM kpi_device_days
"""


def reset(url: str) -> None:
    """The day measured not kept, the dead rows of the last run vacuumed away."""
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("DELETE FROM kpi_device_days WHERE day >= %s", (DAY,))
        conn.execute("VACUUM ANALYZE kpi_device_days")


def rows_hash(url: str) -> tuple[str, int, int]:
    with psycopg.connect(url) as conn:
        row = conn.execute(ROWS_HASH, (DAY,)).fetchone()
        assert row is not None
        return row[0], row[1], row[2]


#: The write alone, through the public API only (so an earlier checkout runs it too).
WRITE = r"""
import sys, time
from datetime import date
import psycopg
from rules.config import load_rules
from rules.feed import Feed
url, day = sys.argv[1], date.fromisoformat(sys.argv[2])
with psycopg.connect(url) as conn:
    feed = Feed(conn, load_rules())
    fp = feed.fingerprint()
    values = [(d, day, u, fin) for d, (u, fin) in feed.kept_uptime(fp, day).items()]
    conn.execute("DELETE FROM kpi_device_days WHERE day = %s", (day,))
    conn.commit()
    conn.autocommit = True
    conn.execute("VACUUM kpi_device_days")
    conn.autocommit = False
    t, c = time.perf_counter(), time.process_time()
    feed.keep_uptime_days(fp, values)
    print(time.perf_counter() - t, time.process_time() - c, len(values))
"""


def write_alone(code: Path, url: str) -> tuple[float, float]:
    """(wall, CPU seconds) of ``Feed.keep_uptime_days`` of the day kept, with ``code``."""
    done = subprocess.run(
        [sys.executable, "-c", WRITE, url, str(DAY)],
        env=dict(os.environ, PYTHONPATH=str(code)), cwd=code, capture_output=True, text=True,
    )  # fmt: skip
    if done.returncode != 0:
        raise SystemExit(f"{code}: {done.stderr.strip()[-2000:]}")
    took, used, _n = done.stdout.split()
    return float(took), float(used)


def report(url: str, before: Path | None, rounds: int) -> None:
    codes = ([("before", before.resolve())] if before else []) + [("after", HERE)]
    wall: dict[str, list[float]] = {label: [] for label, _ in codes}
    cpu: dict[str, list[float]] = {label: [] for label, _ in codes}
    wall_write: dict[str, list[float]] = {label: [] for label, _ in codes}
    cpu_write: dict[str, list[float]] = {label: [] for label, _ in codes}
    # Per step (the job keeps W too; the write alone does not), the rows every code left.
    hashes: dict[str, set[tuple[str, int, int]]] = {"job": set(), "write": set()}
    for _ in range(rounds):
        for label, code in codes:
            reset(url)
            took, _rss, _out, used = command(code, url, ["kpi", "keep-days", "--date", str(DAY)])
            wall[label].append(took)
            cpu[label].append(used)
            hashes["job"].add(rows_hash(url))
            took, used = write_alone(code, url)
            wall_write[label].append(took)
            cpu_write[label].append(used)
            hashes["write"].add(rows_hash(url))
    print(f"\n{rows_hash(url)[2]} devices kept for {DAY}, {rows_hash(url)[1]} kept rows in all, "
          f"{os.cpu_count()} CPUs, load average "
          + ", ".join(f"{x:.1f}" for x in os.getloadavg()))  # fmt: skip
    print(f"{'':50s} {'before':>9s} {'after':>9s}")
    for name, got in (("atmfleet kpi keep-days --date D (wall, best)", wall),
                      ("  its CPU (the process; the database not in it)", cpu),
                      ("the write alone, Feed.keep_uptime_days (wall, best)", wall_write),
                      ("  its CPU (the process; the database not in it)", cpu_write)):  # fmt: skip
        a = min(got["after"])
        b = f"{min(got['before']):8.2f}s" if before else ""
        ratio = f"  x{min(got['before']) / a:5.1f} faster" if before and a else ""
        print(f"{name:50s} {b:>9s} {a:8.2f}s{ratio}")
        for label in got:
            print(f"  {label} each run: " + ", ".join(f"{x:.2f}s" for x in got[label]))
    for step, got_hashes in hashes.items():
        print(f"kept rows after the {step} (md5 of every row but computed_at), every code "
              f"and run: " + (f"EQUAL {next(iter(got_hashes))[0]}" if len(got_hashes) == 1
                              else f"DIFFER: {sorted(got_hashes)}"))  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", type=int, default=100_000)
    parser.add_argument("--before", type=Path, help="checkout of the old code")
    parser.add_argument("--database", help="an already filled database (kept)")
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--admin-url", default="postgresql://postgres@127.0.0.1:5432/postgres")
    args = parser.parse_args()
    if args.database:
        report(args.database, args.before, args.rounds)
        return
    with filled_database(args.admin_url, args.devices) as url:
        report(url, args.before, args.rounds)


if __name__ == "__main__":
    main()
