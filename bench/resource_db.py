"""How long 资源预警率 takes for one local day INCLUDING the database reads.

    python bench/resource_db.py [--devices 10000] [--heartbeat-s 300]
                                [--admin-url postgresql://postgres@127.0.0.1/postgres]

Creates a throw-away database (plain PostgreSQL) and fills it (not timed) with what
ingest would have left for DEVICES devices over the day measured and 3 h either side:
every heartbeat in ``state_samples`` (with components and cash units), one state run per
device in ``state_runs``, the inventory. One device in four has its dispense unit low for
a few hours, one in ten its receipt paper low.

Then times, through rules.feed and the pure core: the warning spans read (the one query
that scans the day's state messages), and the whole computation behind ``atmfleet kpi
resource-warnings`` (the 开机率 timelines, the spans, W and S per device, the roll-up by
sub-branch); then keeps the day as ``kpi keep-days`` does and times reading its kept W.
Prints seconds for each; the database is dropped at the end.
"""

from __future__ import annotations

import argparse
import io
import json
import random
import time
from datetime import date

import psycopg
from scratch import upgraded_database

from rules.config import load_rules
from rules.feed import Feed, uptime_for, window_days
from rules.resource import WarningPolicy, resource_for, rollup, total
from rules.timeline import from_ms
from rules.uptime import day_span, dimension_key

DAY = date(2026, 11, 20)
CONTEXT_MS = 3 * 3_600_000
OK = [{"id": "CST1", "type": "dispense", "currency": "CNY", "denomination": 100, "count": 2000,
       "capacity": 3000, "status": "ok"}]  # fmt: skip
LOW = [{**OK[0], "count": 200, "status": "low"}]


def fill(conn: psycopg.Connection, n: int, hb_s: int, rng: random.Random) -> int:
    tz = load_rules().tz
    lo, hi = day_span(DAY, tz)
    lo, hi = lo - CONTEXT_MS, hi + CONTEXT_MS
    nb = max(1, n // 50)
    with conn.cursor() as cur:
        with cur.copy("COPY subbranches (id, name, tier) FROM STDIN") as copy:
            for i in range(12):
                copy.write(f"S{i:02d}\ts{i}\t{i % 3 + 1}\n")
        with cur.copy("COPY branches (id, name, subbranch, kind, parent) FROM STDIN") as copy:
            for i in range(nb):
                copy.write(f"B{i:05d}\tb{i}\tS{i % 12:02d}\toutlet\t\\N\n")
        with cur.copy(
            "COPY devices (id, branch, type, placement, vendor, model, commissioned,"
            " decommissioned, service_window, deposit_capable, heartbeat_s) FROM STDIN"
        ) as copy:
            for i in range(n):
                copy.write(
                    f"D{i:06d}\tB{i % nb:05d}\tatm\toff_site\tV{i % 5}\tM\t2025-01-01\t\\N\t\\N"
                    f"\tf\t{hb_s}\n"
                )
    ok_cash, low_cash = json.dumps(OK), json.dumps(LOW)
    ok_comp = json.dumps({"cdm": "ok", "ptr": "ok", "idc": "ok"})
    low_comp = json.dumps({"cdm": "ok", "ptr": "warning", "idc": "ok"})
    step = hb_s * 1000
    rows = 0
    with conn.cursor() as cur:
        with cur.copy(
            "COPY state_samples (device_id, seq, ts, received_at, state, heartbeat_s,"
            " components, cash_units, faults) FROM STDIN"
        ) as copy:
            for i in range(n):
                dev = f"D{i:06d}"
                cash = (lo + rng.randrange(0, hi - lo), rng.randrange(1, 6) * 3_600_000)
                paper = (lo + rng.randrange(0, hi - lo), rng.randrange(1, 4) * 3_600_000)
                buf = io.StringIO()
                for k, t in enumerate(range(lo, hi + 1, step)):
                    low = i % 4 == 0 and cash[0] <= t < cash[0] + cash[1]
                    ptr = i % 10 == 0 and paper[0] <= t < paper[0] + paper[1]
                    ts = from_ms(t).isoformat()
                    buf.write(
                        f"{dev}\t{k}\t{ts}\t{ts}\tin_service\t{hb_s}\t"
                        f"{low_comp if ptr else ok_comp}\t{low_cash if low else ok_cash}\t{{}}\n"
                    )
                    rows += 1
                copy.write(buf.getvalue())
        cur.execute(
            "INSERT INTO state_runs (device_id, start_ts, start_seq, last_ts, last_seq, state,"
            " heartbeat_s, samples)"
            " SELECT device_id, min(ts), min(seq), max(ts), max(seq), 'in_service', %s, count(*)"
            " FROM state_samples GROUP BY device_id",
            (hb_s,),
        )
    conn.execute("ANALYZE")
    conn.commit()
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", type=int, default=10_000)
    parser.add_argument("--heartbeat-s", type=int, default=300)
    parser.add_argument("--admin-url", default="postgresql://postgres@127.0.0.1:5432/postgres")
    args = parser.parse_args()
    rules = load_rules()
    with upgraded_database(args.admin_url, rules.timezone) as url, psycopg.connect(url) as conn:
        t = time.perf_counter()
        rows = fill(conn, args.devices, args.heartbeat_s, random.Random(1))
        print(f"filled: {args.devices} devices, {rows} state messages "
              f"(heartbeat {args.heartbeat_s} s, 1 day + 3 h either side) in "
              f"{time.perf_counter() - t:.0f} s (not measured)", flush=True)  # fmt: skip
        feed = Feed(conn, rules)
        horizon = day_span(DAY, rules.tz)[1] + 2 * 86_400_000
        lo, hi = day_span(DAY, rules.tz)

        t0 = time.perf_counter()
        spans = feed.warning_spans(lo, hi, horizon, WarningPolicy.from_rules(rules).query_params())
        t1 = time.perf_counter()
        print(f"warning spans read: {t1 - t0:.2f} s ({sum(map(len, spans.values()))} spans, "
              f"{len(spans)} devices)", flush=True)  # fmt: skip

        t0 = time.perf_counter()
        inventory = feed.inventory()
        up = uptime_for(feed, inventory.devices, DAY, DAY, horizon)
        t1 = time.perf_counter()
        rw = resource_for(feed, inventory.devices, up, horizon)
        per_device = {d: total(days.values()) for d, days in rw.items()}
        fleet = rollup(per_device, dimension_key(inventory, "fleet"))["fleet"]
        rollup(per_device, dimension_key(inventory, "subbranch"))
        t2 = time.perf_counter()
        print(
            f"资源预警率, {len(per_device)} devices x 1 day, with the database reads: "
            f"{t2 - t0:.2f} s (开机率 timelines {t1 - t0:.2f} s, spans + W + roll-ups "
            f"{t2 - t1:.2f} s); fleet rate {fleet.rate:.4f}",
            flush=True,
        )

        # As the daily job does (kpi keep-days): keep the day, with its W; then read it.
        window_days(feed, inventory.devices, DAY, DAY, horizon)
        resource_for(feed, inventory.devices, up, horizon)
        t0 = time.perf_counter()
        rw = resource_for(feed, inventory.devices, up, horizon)
        t1 = time.perf_counter()
        again = rollup({d: total(v.values()) for d, v in rw.items()},
                       dimension_key(inventory, "fleet"))["fleet"]  # fmt: skip
        print(f"the same day kept (W beside S in kpi_device_days): {t1 - t0:.2f} s, "
              f"fleet rate {again.rate:.4f}", flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
