"""How long the KPIs take at fleet scale INCLUDING the database reads.

    python bench/kpi_db.py [--devices 100000] [--admin-url postgresql://postgres@127.0.0.1/postgres]

Creates a throw-away database (plain PostgreSQL), fills it (not timed) with what ingest
would have left there for a fleet of DEVICES devices:

- the inventory (12 sub-branches, a branch per 50 devices);
- state runs for three local days around the day measured (heartbeats every 60 s,
  a supervisor visit a day, a fault on 1 device in 12, a link drop on 1 in 20), and
  presence (birth/offline) for the link drops;
- txn_daily for 30 days (3 rows per device and day, as the trigger keeps it);
- kept closed days (kpi_device_days) for the 29 days before the day measured, under the
  fingerprint the feed computes, as the daily job would have left them;

then times, through rules.feed and the pure core:

1. uptime of one local day for every device: inventory, runs, presence, power and
   outages read, timelines, both views, and the roll-ups by sub-branch and fleet;
2. the 30-day low-yield evaluation (low-yield, low-efficiency, share by sub-branch,
   tier, type, fleet): kept days read, the one day not yet kept computed and kept,
   transactions read from txn_daily; then again with all 30 days kept.

Prints seconds for each; the database is dropped at the end.
"""

from __future__ import annotations

import argparse
import io
import random
import time
from datetime import date, timedelta

import psycopg
from scratch import upgraded_database

from atmfleet.inventory import DeviceType, Placement
from rules.config import load_rules
from rules.feed import Feed, low_yield_for, uptime_for, window_days
from rules.lowyield import low_yield_share
from rules.timeline import from_ms
from rules.uptime import day_span, dimension_key, rollup, total

DAY = date(2026, 11, 20)
HB_MS = 60_000
TYPES = (
    DeviceType.ATM,
    DeviceType.ATM,
    DeviceType.CRS,
    DeviceType.DEPOSIT,
    DeviceType.SMART_TELLER,
)
PLACEMENTS = (Placement.ON_SITE, Placement.OFF_SITE, Placement.SELF_SERVICE_BANK)


def copy_text(conn: psycopg.Connection, statement: str, lines: list[str]) -> None:
    with conn.cursor().copy(statement) as copy:
        buf = io.StringIO()
        for i, line in enumerate(lines):
            buf.write(line)
            if i % 100_000 == 99_999:
                copy.write(buf.getvalue())
                buf = io.StringIO()
        copy.write(buf.getvalue())


def fill(conn: psycopg.Connection, n: int, rng: random.Random) -> None:
    tz = load_rules().tz
    subs = [f"S{i:02d}\ts{i}\t{i % 3 + 1}\n" for i in range(12)]
    nb = max(1, n // 50)
    branches = [f"B{i:05d}\tb{i}\tS{i % 12:02d}\toutlet\t\\N\n" for i in range(nb)]
    devices = []
    for i in range(n):
        t = TYPES[i % len(TYPES)]
        dep = "t" if t in (DeviceType.CRS, DeviceType.DEPOSIT) else "f"
        devices.append(
            f"D{i:06d}\tB{i % nb:05d}\t{t.value}\t{PLACEMENTS[i % 3].value}\tV{i % 5}\tM{i % 3}"
            f"\t2025-01-01\t\\N\t\\N\t{dep}\t60\n"
        )
    copy_text(conn, "COPY subbranches FROM STDIN", subs)
    copy_text(conn, "COPY branches FROM STDIN", branches)
    copy_text(
        conn,
        "COPY devices (id, branch, type, placement, vendor, model, commissioned,"
        " decommissioned, service_window, deposit_capable, heartbeat_s) FROM STDIN",
        devices,
    )
    # Runs: three local days around DAY, built like ingest would (a run ends at its last
    # heartbeat; the next starts one heartbeat later).
    lo = day_span(DAY - timedelta(days=1), tz)[0]
    hi = day_span(DAY + timedelta(days=1), tz)[1]
    runs: list[str] = []
    presence: list[str] = []
    for i in range(n):
        dev = f"D{i:06d}"
        changes: list[tuple[int, str]] = [(lo, "in_service")]
        for d in range(3):
            base = lo + d * 86_400_000
            visit = base + rng.randrange(8, 20) * 3_600_000
            changes += [(visit, "supervisor"), (visit + 30 * HB_MS, "in_service")]
            if i % 12 == d:
                f = base + rng.randrange(1, 22) * 3_600_000 + 7 * HB_MS
                changes += [(f, "fault"), (f + 60 * HB_MS, "in_service")]
        drop = None
        if i % 20 == 0:
            drop = lo + 86_400_000 + rng.randrange(1, 20) * 3_600_000 + 13 * HB_MS
        changes.sort()
        seq = 0
        for k, (start, state) in enumerate(changes):
            end = (changes[k + 1][0] if k + 1 < len(changes) else hi) - HB_MS
            pieces = [(start, end)]
            if drop is not None and start <= drop < end:
                pieces = [(start, drop), (drop + 20 * HB_MS, end)]  # 20 silent minutes
                back = drop + 20 * HB_MS
                presence.append(f"{dev}\tonline\t{from_ms(back).isoformat()}\t"
                                f"{from_ms(back).isoformat()}\ts{i}\tf\n")  # fmt: skip
            for a, b in pieces:
                if b < a:
                    continue
                samples = (b - a) // HB_MS + 1
                runs.append(
                    f"{dev}\t{from_ms(a).isoformat()}\t{seq}\t{from_ms(b).isoformat()}"
                    f"\t{seq + samples - 1}\t{state}\t60\t{samples}\n"
                )
                seq += samples
    conn.execute("DROP INDEX state_runs_span_idx")
    copy_text(
        conn,
        "COPY state_runs (device_id, start_ts, start_seq, last_ts, last_seq, state,"
        " heartbeat_s, samples) FROM STDIN",
        runs,
    )
    conn.execute(
        "CREATE INDEX state_runs_span_idx ON state_runs"
        " USING gist (tstzrange(start_ts, last_ts, '[]'))"
    )
    copy_text(conn, "COPY presence FROM STDIN", presence)
    first = DAY - timedelta(days=29)
    conn.execute(
        """
        INSERT INTO txn_daily
        SELECT (d::date)::timestamp AT TIME ZONE %(tz)s, dev.id, k.type, k.financial, k.result,
               true, 1 + floor(random() * k.mean * 2)::int, 0, 0
        FROM generate_series(%(first)s::date, %(last)s::date, INTERVAL '1 day') AS d
        CROSS JOIN devices dev
        CROSS JOIN (VALUES ('withdrawal', true, 'ok', 60), ('inquiry', false, 'ok', 20),
                           ('withdrawal', true, 'failed', 2)) AS k (type, financial, result, mean)
        """,
        {"tz": tz.key, "first": first, "last": DAY},
    )
    conn.execute("ANALYZE")
    conn.commit()
    print(
        f"filled: {n} devices, {len(runs)} state runs (3 days), {len(presence)} presence,"
        f" txn_daily for 30 days",
        flush=True,
    )


def keep_days(feed: Feed, conn: psycopg.Connection, first: date, last: date) -> None:
    """The kept closed days a daily job would have left: available, scheduled time and
    financial transactions per device."""
    conn.execute(
        """
        INSERT INTO kpi_device_days (fingerprint, device_id, day, available_ms, scheduled_ms,
                                     financial)
        SELECT %(fp)s, id, d::date, 86400000 - s, 86400000, f
        FROM generate_series(%(first)s::date, %(last)s::date, INTERVAL '1 day') AS d
        CROSS JOIN (SELECT id, (floor(random() * 4) * 1800000)::int8 AS s,
                           floor(random() * 120)::int8 AS f FROM devices) dev
        """,
        {"fp": feed.fingerprint(), "first": first, "last": last},
    )
    conn.commit()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", type=int, default=100_000)
    parser.add_argument("--admin-url", default="postgresql://postgres@127.0.0.1:5432/postgres")
    args = parser.parse_args()
    rules = load_rules()
    with upgraded_database(args.admin_url, rules.timezone) as url, psycopg.connect(url) as conn:
        t = time.perf_counter()
        fill(conn, args.devices, random.Random(1))
        feed = Feed(conn, rules)
        keep_days(feed, conn, DAY - timedelta(days=29), DAY - timedelta(days=1))
        conn.execute("ANALYZE kpi_device_days")  # as autovacuum would have
        conn.commit()
        print(f"setup {time.perf_counter() - t:.0f} s (not measured)", flush=True)
        horizon = day_span(DAY, rules.tz)[1] + 2 * 86_400_000  # the day is closed

        t0 = time.perf_counter()
        inventory = feed.inventory()
        t1 = time.perf_counter()
        up = uptime_for(feed, inventory.devices, DAY, DAY, horizon)
        t2 = time.perf_counter()
        per_device = {d: total(v.values()) for d, v in up.per_device.items()}
        for dim in ("subbranch", "fleet"):
            groups = rollup(per_device, dimension_key(inventory, dim))
        t3 = time.perf_counter()
        fleet = groups["fleet"]
        print(
            f"uptime, {len(per_device)} devices x 1 day, with the database reads:"
            f" {t3 - t0:.2f} s (inventory {t1 - t0:.2f} s, reads+timelines+uptime"
            f" {t2 - t1:.2f} s, roll-ups {t3 - t2:.2f} s); fleet 开机率 {fleet.ratio:.4f}",
            flush=True,
        )
        for label in ("first (29 kept days + 1 computed and kept)", "again (30 kept days)"):
            t0 = time.perf_counter()
            inventory = feed.inventory()
            flags = low_yield_for(feed, inventory, inventory.devices, DAY, horizon)
            for dim in ("subbranch", "tier", "type", "fleet"):
                shares = low_yield_share(
                    flags, dimension_key(inventory, dim), rules.low_yield.max_share
                )
            t1 = time.perf_counter()
            print(
                f"low-yield, {len(flags)} devices x 30 days, {label}, with the database"
                f" reads: {t1 - t0:.2f} s; fleet share {shares['fleet'].share:.4f}",
                flush=True,
            )
        t0 = time.perf_counter()
        kept = window_days(feed, inventory.devices, DAY - timedelta(days=29), DAY, horizon)
        print(f"  of which kept days read: {time.perf_counter() - t0:.2f} s ({len(kept)} devices)")
        t0 = time.perf_counter()
        feed.txn_days(DAY, DAY)
        print(
            f"  txn_daily read for one day (when a day is computed): {time.perf_counter() - t0:.2f} s"
        )


if __name__ == "__main__":
    main()
