"""Storage figures for sizing: messages per device per day, bytes per stored row, and what
TimescaleDB's compression makes of them.

    python bench/storage.py [--devices 60] [--days 2] [--heartbeat-s 60]

The simulator's defaults (``simulator/config.py``) for ``--devices`` devices over
``--days`` days of live history (heartbeat ``--heartbeat-s``, the inventory's default 60 s)
are generated once and counted: messages per device per day by kind, and the busiest
minute and hour of the fleet. The messages are then stored through the collector's own
writer (``BatchWriter``, 10,000 a transaction, no broker in between) into a private
PostgreSQL with TimescaleDB preloaded (``bench/services.py``; the schema's Timescale
flavour: hypertables, 1-day chunks for samples and transactions). Printed per table: rows,
bytes per row (heap + indexes + TOAST) and index bytes per row before compression, after
``compress_chunk`` on every chunk, and the ratio; and the writer's own rate.
Without the timescaledb extension the script says so and stores into plain PostgreSQL.
"""

from __future__ import annotations

import argparse
import glob
import sys
import tempfile
import time
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg

sys.path.insert(0, str(Path(__file__).resolve().parent))  # run as a script or imported
from services import Postgres

from atmfleet.store.writer import Accepted, BatchWriter
from collector.decode import decode
from simulator.config import SimConfig
from simulator.engine import generate
from simulator.fleet import generate_inventory

HYPERTABLES = ("state_samples", "events", "transactions", "presence")
PLAIN = ("state_runs", "device_sequences", "txn_daily")


def timescale_available() -> bool:
    return bool(glob.glob("/usr/share/postgresql/*/extension/timescaledb.control"))


def sizes(conn: psycopg.Connection, timescale: bool) -> dict[str, tuple[int, int, int]]:
    """Per table: rows, total bytes, index bytes."""
    out = {}
    for table in (*HYPERTABLES, *PLAIN):
        exists = conn.execute(b"SELECT to_regclass(%s)", (table,)).fetchone()
        if not exists or exists[0] is None:
            continue
        n = conn.execute(f"SELECT count(*) FROM {table}".encode()).fetchone()
        if timescale and table in HYPERTABLES:
            row = conn.execute(
                b"SELECT total_bytes, index_bytes FROM hypertable_detailed_size(%s)", (table,)
            ).fetchone()
        else:
            row = conn.execute(
                b"SELECT pg_total_relation_size(%s::regclass), pg_indexes_size(%s::regclass)",
                (table, table),
            ).fetchone()
        assert n is not None and row is not None
        out[table] = (int(n[0]), int(row[0] or 0), int(row[1] or 0))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--devices", type=int, default=60)
    parser.add_argument("--days", type=float, default=2)
    parser.add_argument("--heartbeat-s", type=int, default=60)
    args = parser.parse_args()

    config = SimConfig()
    inventory = generate_inventory(args.devices, seed=16, prefix="st-", config=config)
    end = datetime.now(UTC).replace(second=0, microsecond=0) - timedelta(hours=1)
    start = end - timedelta(days=args.days)
    t = time.monotonic()
    items = []
    minutes: Counter[int] = Counter()
    hours: Counter[int] = Counter()
    for e in generate(inventory, config, 16, start, end, heartbeat_s=args.heartbeat_s):
        items.append((e.topic, e.payload, e.kind))
        minutes[e.t // 60_000] += 1
        hours[e.t // 3_600_000] += 1
    gen_s = time.monotonic() - t
    kinds = Counter(kind for _t, _p, kind in items)
    device_days = args.devices * args.days
    print(
        f"simulator defaults, {args.devices:,} devices, {args.days:g} days, heartbeat "
        f"{args.heartbeat_s}s: {len(items):,} messages (generated in {gen_s:.0f}s)"
    )
    for kind, n in sorted(kinds.items(), key=lambda kv: -kv[1]):
        print(f"   {kind:9} {n / device_days:>9,.1f} per device per day")
    per_day = len(items) / device_days
    print(
        f"   all       {per_day:>9,.1f} per device per day = {per_day / 86_400:.4f} msgs/s "
        f"per device; mean payload {sum(len(p) for _t, p, _k in items) / len(items):.0f} B"
    )
    mean_min = len(items) / (args.days * 1440)
    mean_hour = len(items) / (args.days * 24)
    print(
        f"   busiest minute {max(minutes.values()):,} msgs = {max(minutes.values()) / mean_min:.2f}"
        f" x the mean minute; busiest hour {max(hours.values()) / mean_hour:.2f} x the mean hour"
    )
    with tempfile.TemporaryDirectory(prefix="atmfleet-storage-") as tmp:
        root = Path(tmp)
        root.chmod(0o755)
        timescale = timescale_available()
        settings = {"shared_preload_libraries": "timescaledb"} if timescale else {}
        if timescale:
            settings["timescaledb.telemetry_level"] = "off"
        pg = Postgres(root / "pg", settings=settings)
        pg.start()
        try:
            db = pg.database()
            print(
                "store: "
                + (
                    "TimescaleDB (hypertables)"
                    if timescale
                    else "plain PostgreSQL (no timescaledb)"
                )
            )
            received = datetime.now(UTC)
            with psycopg.connect(db) as conn:
                writer = BatchWriter(conn, "bench-storage")
                t = time.monotonic()
                batch: list[Accepted] = []
                for topic, payload, _kind in items:
                    rec = decode(topic, payload, received)
                    if isinstance(rec, Accepted):
                        batch.append(rec)
                    if len(batch) == 10_000:
                        writer.write(batch)
                        batch = []
                if batch:
                    writer.write(batch)
                write_s = time.monotonic() - t
            print(
                f"   the writer alone (decode + COPY + runs + commit, one process): "
                f"{len(items) / write_s:,.0f} msgs/s"
            )
            with psycopg.connect(db, autocommit=True) as conn:
                conn.execute(b"VACUUM ANALYZE")
                before = sizes(conn, timescale)
                after = before
                if timescale:
                    for table in HYPERTABLES:
                        conn.execute(
                            f"SELECT compress_chunk(c, true) FROM show_chunks('{table}') c".encode()
                        )
                    conn.execute(b"VACUUM ANALYZE")
                    after = sizes(conn, timescale)
            print(
                f"   {'table':17} {'rows':>9} {'B/row':>7} {'index B/row':>11} "
                f"{'compressed B/row':>16} {'ratio':>6}"
            )
            for table, (rows, total, index) in before.items():
                if not rows:
                    continue
                _r, total_after, _i = after[table]
                ratio = total / total_after if total_after else float("nan")
                compressed = f"{total_after / rows:,.1f}" if table in HYPERTABLES else "–"
                print(
                    f"   {table:17} {rows:>9,} {total / rows:>7,.0f} {index / rows:>11,.0f} "
                    f"{compressed:>16} {ratio if table in HYPERTABLES else float('nan'):>6.1f}"
                )
        finally:
            pg.stop()


if __name__ == "__main__":
    main()
