"""What the collector's delete of kept days costs a batch, BEFORE and AFTER.

    python bench/invalidate.py [--before CHECKOUT] [--devices 100000] [--days 30]
                               [--batch 1200] [--rounds 5]

Every stored batch deletes the kept closed days its points reach
(``atmfleet.store.runs._INVALIDATE``, in the batch's transaction). Per code
(``--before CHECKOUT``: a checkout of the earlier code, put first on PYTHONPATH), in a
throw-away database of its own migrated by that code:

1. *The whole batch, the writer started before any day was kept* (as the collector is
   when ``serve`` keeps a month at its first refresh): the code's ``BatchWriter`` stores
   8 batches of ``--batch`` heartbeats (1,200: the mean batch of bench/fleet.py at
   100,000 devices), then ``--days`` kept days are written for each of ``--devices``
   devices (newest yesterday, the default rules' 3 h context; not analysed, as right
   after a keep), then the same writer stores ``--rounds`` more batches: the median
   time of a batch before and after the days were kept.
2. *The statement alone*, the days written again and analysed: on a batch of ``--batch`` points of as
   many devices spread over the fleet, at 13:00 local (live telemetry of the afternoon)
   and at 01:00 (reaching back into yesterday), each in a transaction rolled back: the
   best of ``--rounds``, and the kept days it deleted.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import uuid
from datetime import date, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import psycopg

HERE = Path(__file__).resolve().parent.parent

TZ = "Asia/Shanghai"
TODAY = date(2026, 12, 3)

#: Run with a code's PYTHONPATH: its migrations, then step 1 (the writer's batches).
BATCHES = r"""
import statistics, sys, time
from datetime import UTC, datetime, timedelta
import psycopg
from atmfleet.protocol import StateMessage, device_topic, encode
from atmfleet.store.migrate import upgrade
from atmfleet.store.writer import Accepted, BatchWriter
url, tz, devices, batch, rounds, fill = sys.argv[1:]
devices, batch, rounds = int(devices), int(batch), int(rounds)
with psycopg.connect(url, autocommit=True) as conn:
    upgrade(conn, timezone=tz)
step = max(devices // batch, 1)
ids = [f"D{i:06d}" for i in range(1, devices + 1, step)][:batch]
now = datetime.now(UTC)
with psycopg.connect(url) as conn:
    writer = BatchWriter(conn, "bench")
    def batches(first, n):
        took = []
        for b in range(first, first + n):
            got = []
            for device_id in ids:
                m = StateMessage(v=1, device_id=device_id, ts=now + timedelta(seconds=b),
                                 seq=b + 1, state="in_service")
                got.append(Accepted(m, now, device_topic(device_id, "state"), encode(m)))
            t = time.perf_counter()
            writer.write(got)
            took.append(time.perf_counter() - t)
        return statistics.median(took)
    empty = batches(0, 8)
    with psycopg.connect(url, autocommit=True) as other:
        other.execute(fill)
    kept = batches(8, rounds)
print(empty, kept)
"""

#: Run with a code's PYTHONPATH: step 2, the statement timed on the batch given.
TIME = r"""
import sys, time
import psycopg
from atmfleet.store.runs import _INVALIDATE
url, rounds, at_ms, *ids = sys.argv[1:]
best, deleted = float("inf"), -1
with psycopg.connect(url) as conn:
    for _ in range(int(rounds)):
        with conn.transaction(force_rollback=True):
            t = time.perf_counter()
            cur = conn.execute(_INVALIDATE, (ids, [int(at_ms)] * len(ids)))
            best, deleted = min(best, time.perf_counter() - t), cur.rowcount
print(best, deleted)
"""

#: The kept days (one fingerprint), and the rules' context as a keep says it
#: (rules/feed.py, Feed._upsert_kept) where the code keeps it.
FILL = """
INSERT INTO kpi_device_days (fingerprint, device_id, day, available_ms, scheduled_ms, financial)
SELECT 'bench', 'D' || lpad(i::text, 6, '0'), DATE '{today}' - d, 1, 2, 3
FROM generate_series(1, {days}) d, generate_series(1, {devices}) i ORDER BY 3, 2;
DO $$ BEGIN
    IF to_regclass('kpi_kept_rules') IS NOT NULL THEN
        UPDATE kpi_kept_rules SET context_ms = 3 * 3600000 + 1;
    END IF;
END $$;
"""


def run(code: Path, script: str, *argv: str) -> list[str]:
    done = subprocess.run(
        [sys.executable, "-c", script, *argv],
        env=dict(os.environ, PYTHONPATH=str(code)), cwd=code, capture_output=True, text=True,
    )  # fmt: skip
    if done.returncode != 0:
        raise SystemExit(f"{code}: {done.stderr.strip()[-2000:]}")
    return done.stdout.split()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--before", type=Path, help="checkout of the old code")
    parser.add_argument("--devices", type=int, default=100_000)
    parser.add_argument("--days", type=int, default=30)
    parser.add_argument("--batch", type=int, default=1200)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--admin-url", default="postgresql://postgres@127.0.0.1:5432/postgres")
    args = parser.parse_args()
    name = f"atmfleet_bench_invalidate_{uuid.uuid4().hex[:8]}"
    base = args.admin_url.rsplit("/", 1)[0]
    codes = ([("before", args.before.resolve())] if args.before else []) + [("after", HERE)]
    step = max(args.devices // args.batch, 1)
    ids = [f"D{i:06d}" for i in range(1, args.devices + 1, step)][: args.batch]
    tz = ZoneInfo(TZ)
    times = {
        "13:00 local": datetime(2026, 12, 3, 13, tzinfo=tz),
        "01:00 local": datetime(2026, 12, 3, 1, tzinfo=tz),
    }
    fill = FILL.format(today=TODAY, days=args.days, devices=args.devices)
    urls = {label: f"{base}/{name}_{label}" for label, _ in codes}
    with psycopg.connect(args.admin_url, autocommit=True) as admin:
        for url in urls.values():
            admin.execute(f'CREATE DATABASE "{url.rsplit("/", 1)[1]}"')
    try:
        print(f"{args.devices:,} devices x {args.days} kept days (newest "
              f"{TODAY - timedelta(days=1)}), batches of {len(ids):,} points; "
              f"{os.cpu_count()} CPUs")  # fmt: skip
        print(f"{'':44s} " + " ".join(f"{label:>24s}" for label, _ in codes))
        whole = {label: run(code, BATCHES, urls[label], TZ, str(args.devices), str(len(ids)),
                            str(args.rounds), fill)
                 for label, code in codes}  # fmt: skip
        for i, title in enumerate(("1. a batch, no day kept (median of 8)",
                                   f"   then, the days kept (median of {args.rounds})")):  # fmt: skip
            cells = [f"{1000 * float(got[i]):8.1f} ms" for got in whole.values()]
            ratio = ""
            if "before" in whole:
                ratio = (
                    f"  before / after x{float(whole['before'][i]) / float(whole['after'][i]):.1f}"
                )
            print(f"{title:44s} " + " ".join(f"{c:>24s}" for c in cells) + ratio)
        for url in urls.values():  # as filled again (step 1's batches deleted some)
            with psycopg.connect(url, autocommit=True) as conn:
                conn.execute("TRUNCATE kpi_device_days")
                conn.execute(fill)
                conn.execute("VACUUM ANALYZE kpi_device_days")
        for title, at in times.items():
            at_ms = str(int(at.timestamp() * 1000))
            got = {label: run(code, TIME, urls[label], str(args.rounds), at_ms, *ids)
                   for label, code in codes}  # fmt: skip
            cells = [f"{1000 * float(t):8.1f} ms, {int(n):>5,} deleted" for t, n in got.values()]
            ratio = ""
            if "before" in got:
                ratio = f"  before / after x{float(got['before'][0]) / float(got['after'][0]):.1f}"
            print(f"{'2. the statement, ' + title:44s} " + " ".join(f"{c:>24s}" for c in cells)
                  + ratio)  # fmt: skip
        print("load average " + ", ".join(f"{x:.1f}" for x in os.getloadavg()))
    finally:
        with psycopg.connect(args.admin_url, autocommit=True) as admin:
            for url in urls.values():
                admin.execute(f'DROP DATABASE IF EXISTS "{url.rsplit("/", 1)[1]}" WITH (FORCE)')


if __name__ == "__main__":
    main()
