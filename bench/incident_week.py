"""A simulated week of a fleet, end to end: simulator -> store -> incident engine (the
shipped rules) -> vendor scorecard, beside the simulator ledger's own truth.

    python bench/incident_week.py [--devices 1000] [--days 7] [--seed 1]
                                  [--admin-url postgresql://postgres@127.0.0.1:5432/postgres]

The default fleet and simulator settings (power cuts, network outages, link drops,
planned maintenance, in-hall service windows, degraded deposit modules: everything),
heartbeat 300 s. Messages go to a throw-away database through the collector's decoder and
writer (received at their publish time); the incident engine runs its own passes as of
the simulated instants (bench/incident_world.py); the duty operator acknowledges and
dispatches each incident at the ledger's dispatch time. Prints:

- incidents opened, by class; SLA warnings, breaches and escalations (the engine's marks);
- notification rows (``incident_events`` with recipients) and deliveries (recipients);
- the dispatches replayed, and those the operator could not make (why);
- per vendor: the scorecard of ``atmfleet kpi vendors`` beside the same figures from the
  ledger alone (simulator/truth.py), and where they differ, why.

The database is dropped at the end.
"""

from __future__ import annotations

import argparse
import re
import time
from collections import Counter
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import psycopg
from incident_world import COMPARED, World, ledger_incidents, ledger_scorecard, scorecard_rows
from scratch import upgraded_database

from rules.config import Rules, load_rules
from rules.feed import Feed
from rules.report import Context, Scope, display, vendors_report
from rules.timeline import ms
from simulator.config import make_config
from simulator.engine import generate, iso
from simulator.fleet import generate_inventory
from simulator.ledger import Ledger, simulate
from simulator.truth import TrueIncident

HB = 300
FIRST = datetime(2026, 11, 23)  # a Monday, local


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--devices", type=int, default=1000)
    parser.add_argument("--days", type=int, default=7)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--admin-url", default="postgresql://postgres@127.0.0.1:5432/postgres")
    args = parser.parse_args()
    rules = load_rules()
    tz = ZoneInfo(rules.timezone)
    start = FIRST.replace(tzinfo=tz).astimezone(UTC)
    end = start + timedelta(days=args.days)
    first, last = start.astimezone(tz).date(), (end - timedelta(seconds=1)).astimezone(tz).date()
    config = make_config({})
    inventory = generate_inventory(args.devices, args.seed, config=config)
    print(f"{len(inventory.devices):,} devices, {first}..{last} (local), seed {args.seed}, "
          f"heartbeat {HB} s, shipped rules (contract {rules.sla.contracts[0].name}: response "
          f"{rules.sla.contracts[0].response_hours} h, repair {rules.sla.contracts[0].repair_hours} h "
          f"from {rules.sla.contracts[0].repair_from})")  # fmt: skip

    t0 = time.monotonic()
    ledger = simulate(
        inventory, config, args.seed, start, end, heartbeat_s=HB, keep_emissions=False
    ).ledger
    print(f"ledger: {sum(ledger.counts.values()):,} messages, {len(ledger.repairs)} faults "
          f"({sum(r.software for r in ledger.repairs)} software, "
          f"{sum(r.degraded for r in ledger.repairs)} leaving the device available), "
          f"{time.monotonic() - t0:.0f} s")  # fmt: skip

    with upgraded_database(args.admin_url, rules.timezone) as url, psycopg.connect(url) as conn:
        world = World(
            conn, inventory, generate(inventory, config, args.seed, start, end, heartbeat_s=HB),
            ledger, rules,
        )  # fmt: skip
        world.setup()
        t0 = time.monotonic()
        world.play()
        played = time.monotonic() - t0
        print(f"store + engine: {world.messages:,} messages written, {world.passes} engine "
              f"passes, {played:.0f} s")  # fmt: skip
        print()
        report_store(conn)
        print(f"dispatches replayed by the duty operator: {world.dispatched}")
        why = Counter(_reason(w) for _d, _t, w in world.missed)
        for reason, n in why.most_common():
            print(f"  not dispatched: {n} ({reason})")
        feed = Feed(conn, rules)
        ctx = Context.make(feed, feed.inventory(), Scope("fleet", "fleet"), first, last,
                           ms(datetime.now(UTC)))  # fmt: skip
        report = vendors_report(ctx)
        stored = [
            (d, int(s), c, None if r is None else int(r))
            for d, s, c, r in conn.execute(
                "SELECT device_id, floor(extract(epoch FROM started_at) * 1000)::int8, cause,"
                " floor(extract(epoch FROM restored_at) * 1000)::int8 FROM incidents"
            )
        ]
    got = scorecard_rows(report.rows)
    assert ledger.end is not None
    truth = ledger_incidents(ledger, rules)
    expected = ledger_scorecard(truth, inventory, rules, ledger.end - 1, (ms(start), ms(end)))
    print()
    compare(got, expected)
    unmatched(stored, truth, rules, (ms(start), ms(end)), ledger)


def unmatched(
    stored: list[tuple[str, int, str, int | None]],
    truth: list[TrueIncident],
    rules: Rules,
    period: tuple[int, int],
    ledger: Ledger,
) -> None:
    """Incidents on one side only (vendor classes, outage started in the period)."""
    causes = {c.value for c in rules.vendors.incident_causes}
    mine = {(d, s): (c, r) for d, s, c, r in stored if c in causes and period[0] <= s < period[1]}
    theirs = {
        (i.device_id, i.started): (i.cause, i.restored)
        for i in truth
        if i.cause in causes and period[0] <= i.started < period[1]
    }
    only_store = sorted(set(mine) - set(theirs))
    only_ledger = sorted(set(theirs) - set(mine))
    if not only_store and not only_ledger:
        print("every incident is on both sides")
        return
    faults = {}
    for r in ledger.repairs:
        faults.setdefault(r.device_id, []).append(r)
    for side, keys, table in (("store", only_store, mine), ("ledger", only_ledger, theirs)):
        for d, s in keys:
            cause, restored = table[(d, s)]
            near = [r for r in faults.get(d, []) if abs(r.fault - s) < 86_400_000]
            what = ", ".join(
                f"fault {iso(r.fault)}{' software' if r.software else ''}"
                f"{' degraded' if r.degraded else ''}"
                for r in near
            )
            causes = [
                f"{iv.cause}@{iso(iv.start)}"
                for iv in ledger.intervals_of(d)
                if s - 3_600_000 <= iv.start <= (restored or s) + 60_000
            ]
            print(f"  only in the {side}: {d} {cause} from {iso(s)} to "
                  f"{iso(restored) if restored else 'open'}; ledger: {what or 'no fault'};"
                  f" timeline {' '.join(causes[:8])}")  # fmt: skip


def _reason(text: str) -> str:
    """A reason with its numbers left out, to count alike ones together."""
    return re.sub(r"\d+", "N", text)


def report_store(conn: psycopg.Connection[Any]) -> None:
    rows = conn.execute('SELECT "class", count(*) FROM incidents GROUP BY 1 ORDER BY 1').fetchall()
    total = sum(n for _c, n in rows)
    print(f"incidents opened: {total} ({', '.join(f'{c} {n}' for c, n in rows)})")
    marks = conn.execute(
        "SELECT kind, deadline, count(*) FROM incident_sla GROUP BY 1, 2 ORDER BY 1, 2"
    ).fetchall()
    for kind, deadline, n in marks:
        print(f"  SLA {kind} ({deadline}): {n}")
    sent = conn.execute(
        "SELECT kind, count(*), sum(cardinality(recipients)) FROM incident_events"
        " WHERE recipients <> '{}' GROUP BY 1 ORDER BY 1"
    ).fetchall()
    rows_n = sum(n for _k, n, _r in sent)
    print(f"notification rows (events with recipients): {rows_n}, deliveries "
          f"{sum(r for _k, _n, r in sent)}")  # fmt: skip
    for kind, n, r in sent:
        print(f"  {kind}: {n} rows to {r} recipients")
    esc = conn.execute(
        "SELECT count(*) FROM incident_events WHERE kind = 'escalation' AND recipients <> '{}'"
    ).fetchone()
    print(f"escalations sent: {esc[0] if esc else 0}")


def compare(got: dict[str, dict[str, Any]], expected: dict[str, dict[str, Any]]) -> None:
    vendors = sorted(g for g in set(got) | set(expected) if " " not in g)
    fields = (*COMPARED, "repeats")
    print("scorecard per vendor: atmfleet kpi vendors | the ledger's truth")
    head = f"{'vendor':<15}" + "".join(f"{f.replace('_ms', '_h'):>26}" for f in fields)
    print(head)
    for v in vendors:
        a, b = got.get(v, {}), expected.get(v, {})
        cells = []
        for f in fields:
            x, y = a.get(f), b.get(f)
            mark = "" if x == y else " *"
            cells.append(f"{display(f, x)} | {display(f, y)}{mark}".rjust(26))
        print(f"{v:<15}" + "".join(cells))
    groups = sorted(set(got) | set(expected))
    same = sum(
        1
        for g in groups
        if all(got.get(g, {}).get(f) == expected.get(g, {}).get(f) for f in fields)
        and g in expected
    )
    print(f"groups (vendors and models) equal in every figure: {same} of {len(groups)}"
          " (* = differs)")  # fmt: skip


if __name__ == "__main__":
    main()
