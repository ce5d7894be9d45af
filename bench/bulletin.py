"""How long the daily bulletin takes for a large fleet, in each format.

    python bench/bulletin.py [--devices 100000] [--admin-url postgresql://postgres@127.0.0.1/postgres]

Creates a throw-away database (plain PostgreSQL) and fills it (bulk COPY, not timed) as
``bench/kpi_db.py`` does: the inventory, three local days of state runs, 30 days of
txn_daily, the 29 kept closed days before the day measured; plus teller-counter volumes
for every branch. Then, through the same code as ``atmfleet bulletin daily``:

1. gather: every read of the store and the KPI core (uptime of the day and the day
   before, transactions, counters, the 30-day low-yield window);
2. build: the bulletin model (roll-ups, ranks, tail, lists), pure;
3. per format (xlsx, csv, html, json) and language: render and write atomically.

Prints seconds for each step, the time to write the bulletin in each format (gather +
build + that format), file sizes and the peak memory; the database is dropped at the end.
"""

from __future__ import annotations

import argparse
import os
import random
import resource
import sys
import tempfile
import time
from datetime import timedelta
from pathlib import Path

import psycopg

sys.path.insert(0, str(Path(__file__).resolve().parent))

from kpi_db import DAY, fill, keep_days
from scratch import upgraded_database

from exporters.bulletin import build
from exporters.bulletin.messages import Messages
from exporters.bulletin.output import write_atomic
from exporters.bulletin.render import FORMATS
from exporters.bulletin_cli import file_name, render
from rules.config import load_rules
from rules.feed import Feed
from rules.uptime import day_span


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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", type=int, default=100_000)
    parser.add_argument("--admin-url", default="postgresql://postgres@127.0.0.1:5432/postgres")
    args = parser.parse_args()
    rules = load_rules()
    with (
        upgraded_database(args.admin_url, rules.timezone) as url,
        psycopg.connect(url) as conn,
        tempfile.TemporaryDirectory() as tmp,
    ):
        t = time.perf_counter()
        fill(conn, args.devices, random.Random(1))
        add_counters(conn)
        feed = Feed(conn, rules)
        keep_days(feed, conn, DAY - timedelta(days=29), DAY - timedelta(days=1))
        conn.execute("ANALYZE")
        conn.commit()
        print(f"setup {time.perf_counter() - t:.0f} s (not measured)", flush=True)
        horizon = day_span(DAY, rules.tz)[1] + 2 * 86_400_000  # the day is closed

        t0 = time.perf_counter()
        inventory = feed.inventory()
        inputs = build.gather_daily(feed, inventory, DAY, horizon)
        gather = time.perf_counter() - t0
        print(f"gather (store reads + KPI core), {len(inputs.devices)} devices: {gather:.2f} s")
        for lang in ("zh-CN", "en"):
            m = Messages(lang)
            t0 = time.perf_counter()
            b = build.daily(inputs, rules, m, build.now_text(horizon, rules))
            model = time.perf_counter() - t0
            rows = sum(len(x.rows) for x in b.tables)
            print(
                f"[{lang}] build the model: {model:.2f} s ({rows} rows in {len(b.tables)} tables)"
            )
            for fmt in FORMATS:
                t0 = time.perf_counter()
                path = write_atomic(Path(tmp) / file_name(b, fmt), render(b, fmt, m))
                took = time.perf_counter() - t0
                print(
                    f"[{lang}] {fmt:5s} render+write {took:6.2f} s; the daily bulletin in"
                    f" {fmt}: {gather + model + took:6.2f} s; {path.stat().st_size / 1e6:.2f} MB",
                    flush=True,
                )
        load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
        print(f"{os.cpu_count()} CPUs, load average {load}")
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print(f"peak memory (RSS) {peak:.0f} MB")


if __name__ == "__main__":
    main()
