"""How far the incident engine runs behind the store, and a branch power cut of 500 devices.

    python bench/bench_incidents.py [--devices 100000] [--seconds 20] [--admin-url postgresql://postgres@127.0.0.1/postgres]

Creates a throw-away database (plain PostgreSQL) holding a fleet of DEVICES devices (12
sub-branches, a branch per 50 devices, one branch of 500 for the power cut, a maintainer
per vendor and sub-branch) and one state run per device, in service, as ingest leaves
them. Then, timed:

1. **start-up**: the engine reads the inventory, its cursor and every device's latest run;
2. **following the store** for SECONDS seconds while a writer does what the store does
   for a live fleet with 60 s heartbeats (each second extends the runs of 1/60 of the
   fleet) and, every 0.5 s, one device goes into ``fault``. The engine runs as
   ``atmfleet incidents run`` does (a pass every ``incidents.poll_s``); the lag of each
   fault is the wall time from the commit of its state run to the commit of its incident
   (both seen from outside the engine). The fault debounce is 0 here, so that the lag is
   the engine's own, not the rules' wait;
3. **a branch power cut**: the 500 devices of one branch report ``powered_off`` since
   10 minutes ago in one transaction, under a contract whose repair deadline (6 min from
   the outage's start) and first escalation level are already past: the one pass that
   sees them opens 500 incidents, evaluates their SLA and writes the warnings, breaches
   and escalations. Prints its time and the notification rows per recipient (one each).

The database is dropped at the end.
"""

from __future__ import annotations

import argparse
import io
import random
import statistics
import threading
import time
from collections import Counter

import psycopg
from scratch import upgraded_database

from atmfleet.inventory import (
    Branch,
    Device,
    DeviceType,
    Inventory,
    Maintainer,
    Placement,
    SubBranch,
    Tier,
)
from atmfleet.store.inventory import upsert_inventory
from incidents.engine import Engine
from rules.config import parse_rules

VENDORS = ("GRG", "Hitachi", "Nantian", "DieboldNixdorf")
CUT_BRANCH = "CUT-B"
CUT_SIZE = 500

RULES = """
incidents:
  debounce_s: {fault: 0, cash_out: 600, deposit_full: 600, communications: 300, power: 300,
               supervisor: 3600}
sla:
  contracts:
    - name: bench
      repair_hours: 0.1
      repair_from: started
      response_hours: 4
      warning_share: 0.5
      escalation:
        - {after_hours: 0, recipients: [branch, subbranch_manager]}
        - {after_hours: 2, recipients: [head_office, vendor_manager]}
"""


def fleet(n: int) -> Inventory:
    subs = tuple(
        SubBranch(id=f"S{k:02d}", name=f"二级分行{k}", tier=Tier(str(k % 3 + 1))) for k in range(12)
    )
    branches = [Branch(id=CUT_BRANCH, name="停电网点", subbranch="S00")]
    devices = [
        Device(id=f"CUT-{i:03d}", branch=CUT_BRANCH, type=DeviceType.ATM,
               placement=Placement.OFF_SITE, vendor=VENDORS[i % 4], model="M1",
               commissioned="2020-01-01")  # type: ignore[arg-type]
        for i in range(CUT_SIZE)
    ]  # fmt: skip
    rest = n - CUT_SIZE
    for b in range(max(1, rest // 50)):
        branch = Branch(id=f"B{b:05d}", name=f"网点{b}", subbranch=subs[b % 12].id)
        branches.append(branch)
        for i in range(50):
            devices.append(
                Device(id=f"D{b:05d}-{i:02d}", branch=branch.id, type=DeviceType.ATM,
                       placement=Placement.OFF_SITE, vendor=VENDORS[(b + i) % 4], model="M1",
                       commissioned="2020-01-01")  # type: ignore[arg-type]
            )  # fmt: skip
    maintainers = tuple(
        Maintainer(id=f"M-{v}-{s.id}", vendor=v, region=s.id, name=f"{v} {s.name}")
        for v in VENDORS
        for s in subs
    )
    return Inventory(subbranches=subs, branches=tuple(branches), devices=tuple(devices),
                     maintainers=maintainers)  # fmt: skip


def fill(conn: psycopg.Connection, inv: Inventory) -> None:
    upsert_inventory(conn, inv)
    rng = random.Random(1)
    buf = io.StringIO()
    for k, d in enumerate(inv.devices):
        lag = rng.randrange(60)
        buf.write(f"{d.id}\t{k * 2}\t{k * 2 + 1}\tin_service\t60\t120\t{lag}\n")
    conn.execute(
        "CREATE TEMP TABLE seed (device_id text, s bigint, l bigint, state text, hb int,"
        " samples int, lag int)"
    )
    with conn.cursor().copy("COPY seed FROM STDIN") as copy:
        copy.write(buf.getvalue())
    conn.execute(
        "INSERT INTO state_runs (device_id, start_ts, start_seq, last_ts, last_seq, state,"
        " heartbeat_s, samples) SELECT device_id, now() - interval '2 hours', s,"
        " now() - lag * interval '1 second', l, state, hb, samples FROM seed"
    )
    conn.commit()


class Writer(threading.Thread):
    """The store's side: heartbeats extend runs; now and then a device goes into fault."""

    def __init__(
        self, url: str, devices: list[str], faultable: list[str], stop: threading.Event
    ) -> None:
        super().__init__(daemon=True)
        self.url, self.devices, self.faultable, self.stop = url, devices, faultable, stop
        self.lags: list[float] = []
        self.heartbeats = 0

    def run(self) -> None:
        rng = random.Random(2)
        slices = [set(self.devices[k::60]) for k in range(60)]
        faulted: list[tuple[str, float]] = []
        seq = 10**9
        with psycopg.connect(self.url, autocommit=True) as conn:
            tick = 0
            next_fault = time.monotonic()
            while not self.stop.is_set():
                began = time.monotonic()
                ids = list(slices[tick % 60])
                conn.execute(
                    "UPDATE state_runs SET last_ts = now(), samples = samples + 1"
                    " WHERE device_id = ANY(%s) AND state = 'in_service'",
                    (ids,),
                )
                self.heartbeats += len(ids)
                tick += 1
                while time.monotonic() >= next_fault and not self.stop.is_set():
                    device = self.faultable.pop(rng.randrange(len(self.faultable)))
                    for part in slices:  # a device in fault no longer extends its run
                        part.discard(device)
                    seq += 2
                    conn.execute(
                        "INSERT INTO state_runs (device_id, start_ts, start_seq, last_ts,"
                        " last_seq, state, heartbeat_s, samples)"
                        " VALUES (%s, now(), %s, now(), %s, 'fault', 60, 1)",
                        (device, seq, seq + 1),
                    )
                    faulted.append((device, time.monotonic()))
                    next_fault += 0.5
                # Poll for the incidents of the faults not seen yet.
                pending = []
                for device, committed in faulted:
                    row = conn.execute(
                        "SELECT 1 FROM incidents WHERE device_id = %s", (device,)
                    ).fetchone()
                    if row is None:
                        pending.append((device, committed))
                    else:
                        self.lags.append(time.monotonic() - committed)
                faulted = pending
                rest = 1.0 - (time.monotonic() - began)
                # Poll the pending ones finely until the next heartbeat slice is due.
                end = time.monotonic() + max(0.0, rest)
                while faulted and time.monotonic() < end and not self.stop.is_set():
                    still = []
                    for device, committed in faulted:
                        row = conn.execute(
                            "SELECT 1 FROM incidents WHERE device_id = %s", (device,)
                        ).fetchone()
                        if row is None:
                            still.append((device, committed))
                        else:
                            self.lags.append(time.monotonic() - committed)
                    faulted = still
                    time.sleep(0.01)
                time.sleep(max(0.0, end - time.monotonic()))


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--devices", type=int, default=100_000)
    ap.add_argument("--seconds", type=float, default=20.0)
    ap.add_argument("--admin-url", default="postgresql://postgres@127.0.0.1/postgres")
    args = ap.parse_args()
    rules = parse_rules(RULES)
    inv = fleet(args.devices)
    print(f"fleet: {len(inv.devices):,} devices, {len(inv.branches):,} branches")
    with upgraded_database(args.admin_url) as url:
        with psycopg.connect(url) as conn:
            t0 = time.perf_counter()
            fill(conn, inv)
            print(f"filled in {time.perf_counter() - t0:.1f} s (not part of the figures)")
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("VACUUM ANALYZE")
        with psycopg.connect(url) as conn:
            engine = Engine(conn, rules, name="bench")
            t0 = time.perf_counter()
            engine.start()
            print(f"1. engine start-up: {time.perf_counter() - t0:.2f} s")
            engine.run_once()  # the first pass after start-up

            stop = threading.Event()
            others = [d.id for d in inv.devices if d.branch != CUT_BRANCH]
            writer = Writer(url, [d.id for d in inv.devices], others, stop)
            passes: list[float] = []
            follows: list[int] = []
            writer.start()
            deadline = time.monotonic() + args.seconds
            engine.run(
                stop=lambda: time.monotonic() > deadline,
                on_pass=lambda s: (passes.append(s.seconds), follows.append(s.followed)),
            )
            stop.set()
            writer.join(timeout=30)
            lags = writer.lags
            print(
                f"2. following the store for {args.seconds:.0f} s: {len(passes)} passes,"
                f" pass time median {statistics.median(passes):.3f} s, p95 {pct(passes, 0.95):.3f} s,"
                f" max {max(passes):.3f} s; runs followed per pass median"
                f" {statistics.median(follows):,.0f}; heartbeats written {writer.heartbeats:,}"
            )
            if lags:
                print(
                    f"   lag store -> incident over {len(lags)} faults: median"
                    f" {statistics.median(lags):.3f} s, p95 {pct(lags, 0.95):.3f} s,"
                    f" max {max(lags):.3f} s (poll_s {rules.incidents.poll_s})"
                )

            # 3. the power cut
            with psycopg.connect(url) as w:
                w.execute(
                    "UPDATE state_runs SET last_ts = now() - interval '601 seconds'"
                    " WHERE device_id LIKE 'CUT-%%'"
                )
                w.execute(
                    "INSERT INTO state_runs (device_id, start_ts, start_seq, last_ts, last_seq,"
                    " state, heartbeat_s, samples) SELECT id, now() - interval '600 seconds',"
                    " 2 * 10^12 + row_number() OVER (), now(), 3 * 10^12 + row_number() OVER (),"
                    " 'powered_off', 60, 10 FROM devices WHERE branch = %s",
                    (CUT_BRANCH,),
                )
                w.commit()
            before = conn.execute("SELECT coalesce(max(id), 0) FROM incident_events").fetchone()
            assert before is not None
            stats = engine.run_once()
            conn.commit()
            rows = conn.execute(
                "SELECT kind, recipients[1], cardinality(incident_ids) FROM incident_events"
                " WHERE id > %s AND recipients <> '{}' ORDER BY id",
                (before[0],),
            ).fetchall()
            cut_rows = [r for r in rows if r[2] > 1]
            per = Counter((k, r) for k, r, _ in cut_rows)
            print(
                f"3. branch power cut of {CUT_SIZE} devices: one pass {stats.seconds:.3f} s"
                f" (follow {stats.timings['follow']:.3f}, open {stats.timings['evaluate']:.3f},"
                f" SLA + escalation {stats.timings['sla']:.3f}); opened {stats.opened},"
                f" SLA marks {stats.marks}, notification rows {len(cut_rows)}"
                f" for {len(per)} (kind, recipient) pairs, at most {max(per.values())} per pair"
            )
            for (kind, recipient), _n in sorted(per.items()):
                size = next(c for k, r, c in cut_rows if (k, r) == (kind, recipient))
                print(f"   {kind:<12} {recipient:<28} 1 row covering {size} incidents")


if __name__ == "__main__":
    main()
