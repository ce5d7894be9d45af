"""How long a scrape of ``atmfleet serve`` takes at fleet scale, and how big it is.

    python bench/scrape.py [--devices 100000] [--scrapes 5] [--admin-url postgresql://postgres@127.0.0.1/postgres]

Creates a throw-away database (plain PostgreSQL) and fills it with COPY (not timed),
relative to now, with what ingest would have left there for DEVICES devices:

- the inventory (12 sub-branches, a branch per 50 devices);
- a state run per device from an hour before local midnight, in service, a fault on
  1 device in 30 for the last 20 minutes, 1 in 50 silent for the last 30 minutes, 1 in
  100 with a broker last will; each device's newest state sample (with cash units);
- two transactions per device today (txn_daily kept by its trigger), txn_daily for the
  29 days before and the kept closed days (kpi_device_days) a daily job would have left.

Then times, through ``exporters.metrics``: the first refresh (it computes and keeps
yesterday for the low-yield share), a second refresh (everything read again, the
low-yield share cached), and SCRAPES HTTP scrapes of the rendered exposition, plain and
gzip. Prints seconds, bytes and samples; the database is dropped at the end.
"""

from __future__ import annotations

import argparse
import os
import resource
import threading
import time
from datetime import UTC, datetime, timedelta
from urllib.request import Request, urlopen

import psycopg
from prometheus_client import CollectorRegistry
from scratch import upgraded_database

from atmfleet.store.migrate import Flavour
from exporters.metrics import DatabaseSource, Exporter, Targets, make_server
from rules.config import load_rules
from rules.feed import Feed

TYPES = ("atm", "atm", "crs", "deposit", "smart_teller")
PLACEMENTS = ("on_site", "off_site", "self_service_bank")
CASH = (
    '[{"id":"1","type":"dispense","currency":"CNY","denomination":100,"count":%d,'
    '"capacity":2500,"status":"ok"},{"id":"2","type":"reject","currency":"CNY",'
    '"denomination":0,"count":3,"capacity":200,"status":"ok"}]'
)


def copy_lines(conn: psycopg.Connection, statement: str, lines: list[str]) -> None:
    with conn.cursor().copy(statement) as copy:
        for i in range(0, len(lines), 100_000):
            copy.write("".join(lines[i : i + 100_000]))


def fill(conn: psycopg.Connection, n: int, per_branch: int = 50) -> None:
    rules = load_rules()
    tz = rules.tz
    now = datetime.now(UTC).replace(microsecond=0)
    today = now.astimezone(tz).date()
    midnight = datetime(today.year, today.month, today.day, tzinfo=tz).astimezone(UTC)
    start = midnight - timedelta(hours=1)
    nb = max(1, n // per_branch)
    copy_lines(conn, "COPY subbranches FROM STDIN",
               [f"S{i:02d}\ts{i}\t{i % 3 + 1}\n" for i in range(12)])  # fmt: skip
    copy_lines(conn, "COPY branches FROM STDIN",
               [f"B{i:05d}\tb{i}\tS{i % 12:02d}\toutlet\t\\N\n" for i in range(nb)])  # fmt: skip
    devices, runs, samples, presence, txns = [], [], [], [], []
    for i in range(n):
        dev, t = f"D{i:06d}", TYPES[i % len(TYPES)]
        dep = "t" if t in ("crs", "deposit") else "f"
        devices.append(f"{dev}\tB{i % nb:05d}\t{t}\t{PLACEMENTS[i % 3]}\tV{i % 5}\tM{i % 3}"
                       f"\t2025-01-01\t\\N\t\\N\t{dep}\t60\n")  # fmt: skip
        last = now - timedelta(seconds=30)
        if i % 50 == 1:
            last = now - timedelta(minutes=30)
        pieces = [(start, last, "in_service")]
        if i % 30 == 0:
            fault = now - timedelta(minutes=20)
            pieces = [(start, fault - timedelta(minutes=1), "in_service"), (fault, last, "fault")]
        seq = 0
        for a, b, state in pieces:
            count = int((b - a).total_seconds()) // 60 + 1
            runs.append(f"{dev}\t{a.isoformat()}\t{seq}\t{b.isoformat()}\t{seq + count - 1}"
                        f"\t{state}\t60\t{count}\n")  # fmt: skip
            seq += count
        cash = CASH % (i % 2500) if t in ("atm", "crs") else "[]"
        samples.append(f"{dev}\t{seq - 1}\t{last.isoformat()}\t{(last + timedelta(seconds=1)).isoformat()}"
                       f"\t{pieces[-1][2]}\t60\t{{}}\t{cash}\t{{}}\n")  # fmt: skip
        if i % 100 == 2:
            will_at = now - timedelta(minutes=5)
            presence.append(f"{dev}\toffline\t{start.isoformat()}\t{will_at.isoformat()}"
                            f"\ts{i}\tt\n")  # fmt: skip
        for k in range(2):
            at = now - timedelta(minutes=10 + k)
            txns.append(f"{dev}\t{seq + k}\t{at.isoformat()}\t{at.isoformat()}\tT{i}-{k}"
                        f"\twithdrawal\tt\t100\tCNY\t0\tok\t1000\tt\n")  # fmt: skip
    copy_lines(conn, "COPY devices (id, branch, type, placement, vendor, model, commissioned,"
               " decommissioned, service_window, deposit_capable, heartbeat_s) FROM STDIN",
               devices)  # fmt: skip
    copy_lines(conn, "COPY state_runs (device_id, start_ts, start_seq, last_ts, last_seq, state,"
               " heartbeat_s, samples) FROM STDIN", runs)  # fmt: skip
    copy_lines(conn, "COPY state_samples (device_id, seq, ts, received_at, state, heartbeat_s,"
               " components, cash_units, faults) FROM STDIN", samples)  # fmt: skip
    copy_lines(conn, "COPY presence FROM STDIN", presence)
    copy_lines(conn, "COPY transactions (device_id, seq, ts, received_at, txn_id, type, financial,"
               " amount, currency, fee, result, duration_ms, on_us) FROM STDIN", txns)  # fmt: skip
    first, last_day = today - timedelta(days=30), today - timedelta(days=1)
    conn.execute(
        """
        INSERT INTO txn_daily
        SELECT (d::date)::timestamp AT TIME ZONE %(tz)s, dev.id, 'withdrawal', true, 'ok',
               true, 1 + floor(random() * 80)::int, 0, 0
        FROM generate_series(%(first)s::date, %(last)s::date, INTERVAL '1 day') AS d
        CROSS JOIN devices dev
        ON CONFLICT DO NOTHING  -- just after midnight: today's transactions fell yesterday
        """,
        {"tz": tz.key, "first": first, "last": last_day},
    )
    conn.commit()
    fp = Feed(conn, rules).fingerprint()
    conn.execute(
        """
        INSERT INTO kpi_device_days (fingerprint, device_id, day, available_ms, scheduled_ms,
                                     financial)
        SELECT %(fp)s, id, d::date, 86400000 - s, 86400000, f
        FROM generate_series(%(first)s::date, %(last)s::date, INTERVAL '1 day') AS d
        CROSS JOIN (SELECT id, (floor(random() * 4) * 1800000)::int8 AS s,
                           floor(random() * 120)::int8 AS f FROM devices) dev
        """,
        {"fp": fp, "first": first, "last": last_day - timedelta(days=1)},
    )
    conn.execute("ANALYZE")
    conn.commit()
    print(f"filled: {n} devices, {len(runs)} state runs, {len(presence)} last wills, "
          f"{len(txns)} transactions today", flush=True)  # fmt: skip


def scrape(url: str, gzip: bool) -> tuple[float, int]:
    headers = {"Accept-Encoding": "gzip"} if gzip else {}
    t = time.perf_counter()
    with urlopen(Request(url, headers=headers), timeout=60) as response:
        body = response.read()
    return time.perf_counter() - t, len(body)


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--devices", type=int, default=100_000)
    parser.add_argument("--scrapes", type=int, default=5)
    parser.add_argument("--admin-url", default="postgresql://postgres@127.0.0.1:5432/postgres")
    args = parser.parse_args()
    load = os.getloadavg()
    print(f"{os.cpu_count()} CPUs, load average {load[0]:.1f} {load[1]:.1f} {load[2]:.1f}")
    rules = load_rules()
    with upgraded_database(args.admin_url, rules.timezone, Flavour.POSTGRES) as url:
        with psycopg.connect(url) as conn:
            t = time.perf_counter()
            fill(conn, args.devices)
            print(f"setup {time.perf_counter() - t:.0f} s (not measured)", flush=True)
        source = DatabaseSource(url, rules, day_every_s=0)  # today's uptime at every refresh
        registry = CollectorRegistry()
        exporter = Exporter(source, registry, Targets.from_rules(rules))
        for label in ("first refresh (yesterday computed and kept)", "second refresh"):
            t = time.perf_counter()
            snap = exporter.refresh()
            total = time.perf_counter() - t
            print(
                f"{label}: {total:.2f} s (database reads and KPI core {snap.read_seconds:.2f} s,"
                f" rendering {total - snap.read_seconds:.2f} s), {len(snap.devices)} devices",
                flush=True,
            )
            parts = ", ".join(f"{k} {v:.2f} s" for k, v in source.timings.items())
            print(f"  reads: {parts}", flush=True)
        body = exporter.exposition()
        samples = sum(1 for line in body.splitlines() if line and not line.startswith(b"#"))
        server = make_server(exporter, "127.0.0.1", 0)
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        endpoint = f"http://127.0.0.1:{server.server_port}/metrics"
        try:
            for gzip in (False, True):
                times, size = [], 0
                for _ in range(args.scrapes):
                    took, size = scrape(endpoint, gzip)
                    times.append(took)
                print(
                    f"scrape ({'gzip' if gzip else 'plain'}): {size / 1e6:.1f} MB, {samples} samples,"
                    f" {min(times):.3f} s best, {max(times):.3f} s worst of {args.scrapes}",
                    flush=True,
                )
            # While a refresh runs (it holds the interpreter for seconds at a time).
            for gzip in (False, True):
                busy = threading.Thread(target=exporter.refresh)
                busy.start()
                times = []
                while busy.is_alive() or not times:
                    took, size = scrape(endpoint, gzip)
                    times.append(took)
                busy.join()
                print(
                    f"scrape ({'gzip' if gzip else 'plain'}) while a refresh runs:"
                    f" {min(times):.3f} s best, {max(times):.3f} s worst of {len(times)}",
                    flush=True,
                )
        finally:
            server.shutdown()
            server.server_close()
            source.close()
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print(f"peak RSS of this process (fill included): {rss:.0f} MiB")


if __name__ == "__main__":
    main()
