"""The unregistered-devices count of ``atmfleet serve``: the whole-history count against
the kept one, side by side on one filled database.

    python bench/unregistered.py [--devices 100000] [--runs 30] [--presence 5]

Fills a throw-away database (not timed): ``--devices`` registered devices with
``--runs`` state runs and ``--presence`` presence messages each (a history of weeks),
one state sample each received an hour ago, 20 unregistered devices with the same
history; then times, per refresh as serve runs it, the reference
(:func:`atmfleet.store.unregistered.unregistered_count`, what every refresh ran before)
and :class:`atmfleet.store.unregistered.UnregisteredCount` (full, then in between full
reads with a heartbeat of every other device and one new unregistered device received
since the last read). Prints the seconds of each, their ratio, whether the counts are
equal, and the plans (EXPLAIN ANALYZE) of the in-between query.
"""

from __future__ import annotations

import argparse
import sys
import time
import uuid
from datetime import timedelta
from pathlib import Path

import psycopg

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from atmfleet.store.migrate import upgrade  # noqa: E402
from atmfleet.store.unregistered import (  # noqa: E402
    IDS_SINCE,
    UnregisteredCount,
    unregistered_count,
)

FILL = """
INSERT INTO subbranches VALUES ('S1', 'S1', '1');
INSERT INTO branches (id, name, subbranch, kind) VALUES ('B1', 'B1', 'S1', 'outlet');
INSERT INTO devices (id, branch, type, placement, vendor, model, commissioned,
                     deposit_capable, heartbeat_s)
SELECT 'D' || lpad(i::text, 7, '0'), 'B1', 'atm', 'off_site', 'GRG', 'H68N', '2025-01-01',
       false, 60
FROM generate_series(1, %(n)s) i;
INSERT INTO state_runs
SELECT d, now() - (r + 1) * interval '1 hour', r, now() - r * interval '1 hour', r,
       'in_service', 60, 60
FROM (SELECT 'D' || lpad(i::text, 7, '0') AS d FROM generate_series(1, %(n)s) i
      UNION ALL SELECT 'X' || i FROM generate_series(1, 20) i) ids,
     generate_series(1, %(runs)s) r;
INSERT INTO presence
SELECT d, 'online', now() - p * interval '1 day', now() - p * interval '1 day', 's' || p, false
FROM (SELECT 'D' || lpad(i::text, 7, '0') AS d FROM generate_series(1, %(n)s) i
      UNION ALL SELECT 'X' || i FROM generate_series(1, 20) i) ids,
     generate_series(1, %(presence)s) p
ORDER BY p DESC;
INSERT INTO state_samples
SELECT d, 1, now() - interval '1 hour', now() - interval '1 hour', 'in_service', 60,
       '{}', '[]', '{}'
FROM (SELECT 'D' || lpad(i::text, 7, '0') AS d FROM generate_series(1, %(n)s) i) ids;
"""

HEARTBEATS = """
INSERT INTO state_samples
SELECT d, %(seq)s, now(), now(), 'in_service', 60, '{}', '[]', '{}'
FROM (SELECT 'D' || lpad(i::text, 7, '0') AS d FROM generate_series(1, %(n)s, 2) i
      UNION ALL SELECT %(new)s) ids
"""
NEW_RUN = """
INSERT INTO state_runs VALUES (%(new)s, now(), %(seq)s, now(), %(seq)s, 'in_service', 60, 1)
"""


def _timed(fn):  # type: ignore[no-untyped-def]
    started = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--admin-url", default="postgresql://postgres@127.0.0.1:5432/postgres")
    parser.add_argument("--devices", type=int, default=100_000)
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--presence", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    name = f"atmfleet_bench_unreg_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(args.admin_url, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    url = args.admin_url.rsplit("/", 1)[0] + "/" + name
    try:
        with psycopg.connect(url, autocommit=True) as conn:
            upgrade(conn, timezone="UTC")
        with psycopg.connect(url) as conn:
            conn.execute(FILL.replace("%(n)s", str(args.devices))
                         .replace("%(runs)s", str(args.runs))
                         .replace("%(presence)s", str(args.presence)))  # fmt: skip
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("VACUUM ANALYZE")
        print(f"{args.devices:,} devices, {args.devices * args.runs:,} state runs, "
              f"{args.devices * args.presence:,} presence rows, 20 unregistered")  # fmt: skip
        kept = UnregisteredCount()
        with psycopg.connect(url) as conn:
            ref, t_ref = _timed(lambda: unregistered_count(conn))
            conn.rollback()
            full, t_full = _timed(lambda: kept.count(conn, full=True))
            conn.rollback()
        print(f"full read:   reference {t_ref:.3f} s  kept (full) {t_full:.3f} s  "
              f"counts {ref} / {full}")  # fmt: skip
        equal = ref == full
        for r in range(args.rounds):
            new = f"X-new-{r}"
            with psycopg.connect(url) as conn:
                beat = {"n": args.devices, "seq": 100 + r, "new": new}
                conn.execute(HEARTBEATS, beat)
                conn.execute(NEW_RUN, beat)
            with psycopg.connect(url) as conn:
                ref, t_ref = _timed(lambda: unregistered_count(conn))
                conn.rollback()
                got, t_kept = _timed(lambda: kept.count(conn, full=False))
                conn.rollback()
            equal = equal and ref == got
            print(f"in between: reference {t_ref:.3f} s  kept {t_kept:.4f} s  "
                  f"ratio {t_ref / t_kept:.0f}x  counts {ref} / {got}")  # fmt: skip
        with psycopg.connect(url) as conn:
            plan = conn.execute(
                "EXPLAIN (ANALYZE, COSTS OFF) " + IDS_SINCE,
                {
                    "kept": [f"X{i}" for i in range(1, 21)],
                    "after": kept._at - timedelta(minutes=1),
                },  # as the last round's
            ).fetchall()
        print("plan of the in-between query:")
        print("\n".join("  " + line for (line,) in plan))
        print(f"counts equal: {equal}")
    finally:
        with psycopg.connect(args.admin_url, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


if __name__ == "__main__":
    main()
