"""A simulated week of a fleet through the incident engine, against the simulator's truth.

    python bench/bench_incidents_week.py [--devices 1000] [--days 7] [--heartbeat 600] [--step 60]

Creates a throw-away database, generates DEVICES devices (the simulator's default fleet,
with its maintainers) and DAYS days of their state, event and presence messages ending
now (``simulator.engine.generate``; transactions are left out: the engine does not read
them), stores them through the collector's own decode and batch writer (the ingest path
without the broker), and then runs the engine over the stored history: one pass every
STEP simulated seconds from the first day to now, each pass seeing only what was stored
by its horizon (as if it had followed the store live), with the shipped rules.

Prints the incidents opened (by class and cause), merged flaps, repeats, restored, still
open; the SLA marks and the notification rows by kind and recipient; and, from the
simulator's ledger (what the devices reported), the outages an engine following the
rules should have opened: the trailing down stretches of incident causes whose time in
the service window reached their debounce, a stretch beginning within merge_flaps_s of
the previous counted one's end being the same outage. Nobody dispatches in a simulation
(technicians are the simulator's business), so response deadlines never start; repair
deadlines, warnings and escalations do.
"""

from __future__ import annotations

import argparse
import time
from collections import Counter
from datetime import UTC, datetime, timedelta

import psycopg
from scratch import upgraded_database

from atmfleet.store.inventory import upsert_inventory
from atmfleet.store.writer import Accepted, BatchWriter
from collector.decode import decode
from incidents.engine import Engine
from rules.config import INCIDENT_CAUSES, load_rules
from rules.labels import Label
from rules.timeline import from_ms, ms
from rules.uptime import WindowSpans, days, scheduled_spans
from simulator.config import SimConfig
from simulator.engine import generate
from simulator.fleet import generate_inventory
from simulator.ledger import Ledger


def expected_incidents(ledger: Ledger, inventory, rules, begin: int, end: int) -> Counter[str]:  # type: ignore[no-untyped-def]
    """Outages per cause the rules say should open an incident (see the docstring), of
    those still going on when the engine began (``begin``)."""
    windows = WindowSpans(rules.tz)
    debounce = rules.incidents.debounce_s
    merge = rules.incidents.merge_flaps_s * 1000
    down = set(INCIDENT_CAUSES)
    out: Counter[str] = Counter()
    for device in inventory.devices:
        intervals = [(iv.start, iv.end, Label(iv.cause)) for iv in ledger.intervals_of(device.id)]
        stretches: list[tuple[int, int, list[Label]]] = []
        for a, b, label in intervals:
            if label in down:
                if stretches and stretches[-1][1] == a:
                    stretches[-1] = (stretches[-1][0], b, [*stretches[-1][2], label])
                else:
                    stretches.append((a, b, [label]))
        last_end: int | None = None
        for a, b, labels in stretches:
            cause = next((x for x in labels if x is not Label.SUPERVISOR), Label.SUPERVISOR)
            if cause not in debounce:
                continue
            first = from_ms(a).astimezone(rules.tz).date()
            last = from_ms(b).astimezone(rules.tz).date()
            spans = [
                s
                for d in days(first, last)
                for s in scheduled_spans(device, d, rules, windows, end)
            ]
            inside = sum(max(0, min(b, s1) - max(a, s0)) for s0, s1 in spans)
            if inside <= 0 or inside < debounce[cause] * 1000:
                continue
            if last_end is not None and 0 <= a - last_end <= merge:
                last_end = b
                continue
            last_end = b
            if b > begin:
                out[cause.value] += 1
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--devices", type=int, default=1000)
    ap.add_argument("--days", type=float, default=7)
    ap.add_argument("--heartbeat", type=int, default=600)
    ap.add_argument("--step", type=int, default=60)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--admin-url", default="postgresql://postgres@127.0.0.1/postgres")
    args = ap.parse_args()
    rules = load_rules()
    config = SimConfig()
    inventory = generate_inventory(args.devices, args.seed, config=config)
    end = datetime.now(UTC).replace(second=0, microsecond=0)
    start = end - timedelta(days=args.days)
    ledger = Ledger(inventory, config, args.seed, heartbeat_s=args.heartbeat)
    with upgraded_database(args.admin_url) as url, psycopg.connect(url) as conn:
        upsert_inventory(conn, inventory)
        writer = BatchWriter(conn, "bench-week")
        t0 = time.perf_counter()
        batch: list[Accepted] = []
        stored = 0
        for e in generate(inventory, config, args.seed, start, end, heartbeat_s=args.heartbeat):
            ledger.record(e)
            if e.kind not in ("state", "event", "presence"):
                continue
            got = decode(e.topic, e.payload, from_ms(max(e.t, e.ts)))
            if isinstance(got, Accepted):
                batch.append(got)
            if len(batch) >= 5000:
                writer.write(batch)
                stored += len(batch)
                batch = []
        if batch:
            writer.write(batch)
            stored += len(batch)
        ledger.finish(ms(end))
        print(
            f"{args.devices} devices, {args.days:g} days to {end:%Y-%m-%d %H:%M} UTC:"
            f" {stored:,} state/event/presence messages stored in"
            f" {time.perf_counter() - t0:.0f} s"
        )

        engine = Engine(conn, rules, name="week")
        t0 = time.perf_counter()
        begin = at = start + timedelta(minutes=10)
        passes = 0
        while at <= end:
            engine.run_once(at)
            passes += 1
            at += timedelta(seconds=args.step)
        conn.commit()
        print(f"engine: {passes:,} passes of {args.step} s in {time.perf_counter() - t0:.0f} s")

        rows = conn.execute(
            'SELECT "class", cause, state, repeat_of IS NOT NULL, count(*) FROM incidents'
            " GROUP BY 1, 2, 3, 4 ORDER BY 1, 2, 3, 4"
        ).fetchall()
        total = sum(r[4] for r in rows)
        by_cause: Counter[str] = Counter()
        print(f"incidents opened: {total}")
        for cls, cause, state, repeat, n in rows:
            by_cause[cause] += n
            print(f"  {cls:<10} {cause:<15} {state:<10} {'repeat' if repeat else '':<7} {n}")
        merged = conn.execute(
            "SELECT count(*) FROM incident_events WHERE kind = 'merged'"
        ).fetchone()
        print(f"  flaps merged into an incident: {merged[0] if merged else 0}")
        marks = conn.execute(
            "SELECT deadline, kind, level, count(*) FROM incident_sla GROUP BY 1, 2, 3 ORDER BY 1, 2, 3"
        ).fetchall()
        print("SLA marks (incidents):")
        for deadline, kind, level, n in marks:
            print(f"  {deadline:<8} {kind:<10} level {level}  {n}")
        notes = conn.execute(
            "SELECT kind, count(*), count(DISTINCT recipients[1]), sum(cardinality(incident_ids))"
            " FROM incident_events WHERE recipients <> '{}' GROUP BY 1 ORDER BY 1"
        ).fetchall()
        print("notification rows (kind: rows, distinct recipients, incidents covered):")
        for kind, n, recipients, covered in notes:
            print(f"  {kind:<12} {n:>5} rows  {recipients:>4} recipients  {covered:>6} incidents")
        expected = expected_incidents(ledger, inventory, rules, ms(begin), ms(end))
        print("outages by cause, engine vs. the simulator's ledger under the same rules:")
        for cause in sorted(set(expected) | set(by_cause)):
            print(
                f"  {cause:<15} engine {by_cause.get(cause, 0):>5}   ledger {expected.get(cause, 0):>5}"
            )


if __name__ == "__main__":
    main()
