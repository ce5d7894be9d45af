"""How long the KPIs take at fleet scale INCLUDING the database reads, BEFORE and AFTER.

    python bench/kpi_db.py [--before CHECKOUT] [--devices 100000] [--database URL]
                           [--admin-url postgresql://postgres@127.0.0.1/postgres]

Creates a throw-away database (plain PostgreSQL), fills it (not timed) with what ingest
would have left there for a fleet of DEVICES devices:

- the inventory (12 sub-branches, a branch per 50 devices);
- state runs for three local days around the day measured (heartbeats every 60 s,
  a supervisor visit a day, a fault on 1 device in 12, a link drop on 1 in 20), and
  presence (birth/offline) for the link drops;
- txn_daily for 30 days (3 rows per device and day, as the trigger keeps it), laid day
  after day as a store filled while the days pass holds them (in the join's order, each
  day's rows were spread over the whole table: a day's read read all 30 days);
- kept closed days (kpi_device_days) for the 29 days before the day measured, under the
  fingerprint the feed computes, as the daily job would have left them;

then times, through rules.feed and the pure core (in a fresh process per code):

1. uptime of one local day for every device: inventory, runs, presence, power and
   outages read, timelines, both views, and the roll-ups by sub-branch and fleet;
2. the 30-day low-yield evaluation (low-yield, low-efficiency, share by sub-branch,
   tier, type, fleet): kept days read, the one day not yet kept computed and kept,
   transactions read from txn_daily; then again with all 30 days kept;
3. the command ``atmfleet kpi uptime --date D`` end to end, as a process (imports,
   settings, inventory, report, output): first with the day not kept, then
   ``atmfleet kpi keep-days --date D`` (the daily job: it keeps the day, in full since
   migration 0018), then the command again (a closed day kept in full is read).
   The command ``atmfleet kpi low-yield --date D`` too, with the day not kept yet,
   then with all 30 days kept.

With ``--before CHECKOUT`` (a checkout of the earlier code, e.g. ``git worktree add
../kpi-before main``, put first on PYTHONPATH) each step runs with that code and with
this tree's, one right after the other on the same database (the day a run kept is
removed first, so both start from the same store), and prints both, the ratio, and
whether every figure is equal: a digest of every device's uptime of the day, of every
low-yield flag, and the commands' output. The machine may be shared: compare the
ratios. ``--database URL``: an already filled database (not dropped). The database
made here is dropped at the end.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import random
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import psycopg

sys.path.insert(0, str(Path(__file__).resolve().parent))

from scratch import upgraded_database

from atmfleet.inventory import DeviceType, Placement
from rules.config import load_rules
from rules.feed import Feed
from rules.timeline import from_ms
from rules.uptime import day_span

HERE = Path(__file__).resolve().parent.parent

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
        ORDER BY d, dev.id
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


#: Steps 1 and 2 in a process of their own, through the public API only (so the code of
#: an earlier checkout runs it too); prints one JSON line: seconds and digests.
MEASURE = r"""
import hashlib, json, sys, time
from datetime import date, timedelta
import psycopg
from rules.config import load_rules
from rules.feed import Feed, low_yield_for, uptime_for, window_days
from rules.lowyield import low_yield_share
from rules.uptime import day_span, dimension_key, rollup, total

url, day = sys.argv[1], date.fromisoformat(sys.argv[2])
rules = load_rules()
out = {}
def digest(value):
    return hashlib.sha256(repr(value).encode()).hexdigest()[:16]
with psycopg.connect(url) as conn:
    feed = Feed(conn, rules)
    horizon = day_span(day, rules.tz)[1] + 2 * 86_400_000  # the day is closed
    c0, t0 = time.process_time(), time.perf_counter()
    inventory = feed.inventory()
    t1 = time.perf_counter()
    up = uptime_for(feed, inventory.devices, day, day, horizon)
    t2 = time.perf_counter()
    per_device = {d: total(v.values()) for d, v in up.per_device.items()}
    for dim in ("subbranch", "fleet"):
        groups = rollup(per_device, dimension_key(inventory, dim))
    t3 = time.perf_counter()
    out["uptime"] = [t3 - t0, t1 - t0, t2 - t1, t3 - t2]
    out["uptime_cpu"] = time.process_time() - c0
    out["uptime_ratio"] = groups["fleet"].ratio
    out["uptime_digest"] = digest(sorted((d, repr(u)) for d, u in up.per_device.items()))
    out["devices"] = len(per_device)
    for key in ("low_yield_first", "low_yield_again"):
        c0, t0 = time.process_time(), time.perf_counter()
        inventory = feed.inventory()
        flags = low_yield_for(feed, inventory, inventory.devices, day, horizon)
        for dim in ("subbranch", "tier", "type", "fleet"):
            shares = low_yield_share(flags, dimension_key(inventory, dim), rules.low_yield.max_share)
        out[key] = time.perf_counter() - t0
        out[key + "_cpu"] = time.process_time() - c0
        out[key + "_digest"] = digest(sorted(map(repr, flags)))
        out["low_yield_share"] = shares["fleet"].share
    t0 = time.perf_counter()
    kept = window_days(feed, inventory.devices, day - timedelta(days=29), day, horizon)
    out["window_days"] = time.perf_counter() - t0
    out["window_days_digest"] = digest(sorted((d, repr(w)) for d, w in kept.items()))
print(json.dumps(out))
"""

#: Runs the command in this process and prints, last on stderr, its peak RSS (KiB) and
#: CPU seconds. The peak is ``VmHWM`` of /proc/self/status, which exec starts afresh;
#: ``ru_maxrss`` would not do: Linux carries the parent's high-water mark over the
#: vfork+exec of ``subprocess``, so under a bench whose peak holds a whole fill it
#: reports at least that (bench/cost_curve.py's ``LAUNCH``).
RUNNER = (
    "import resource, sys\n"
    "from app.cli import cli\n"
    "try:\n"
    "    cli.main(sys.argv[1:], prog_name='atmfleet', standalone_mode=False)\n"
    "finally:\n"
    "    r = resource.getrusage(resource.RUSAGE_SELF)\n"
    "    hwm = next(line.split()[1] for line in open('/proc/self/status')\n"
    "               if line.startswith('VmHWM:'))\n"
    "    print('maxrss', hwm, r.ru_utime + r.ru_stime, file=sys.stderr)\n"
)


def reset(url: str) -> None:
    """Forget what a run kept: the kept days from the day measured on, and their dead
    rows vacuumed away (index entries too: a few dead pages would let VACUUM skip the
    indexes). Without it each reset leaves 100,000 dead entries in the day's range of
    the key, which the next upsert of the day checks one by one: on a server with
    autovacuum off, kpi_device_days held 3.8 M dead rows after some forty resets, and
    a code measured later paid for the earlier runs."""
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("DELETE FROM kpi_device_days WHERE day >= %s", (DAY,))
        conn.execute("VACUUM (INDEX_CLEANUP ON) kpi_device_days")


def _env(code: Path, url: str) -> dict[str, str]:
    env = dict(os.environ, ATMFLEET_DATABASE_URL=url, PYTHONPATH=str(code))
    env.pop("ATMFLEET_RULES_FILE", None)
    return env


def measure(code: Path, url: str) -> dict[str, Any]:
    """Steps 1 and 2 with the code of ``code``, in a process of its own."""
    reset(url)
    done = subprocess.run(
        [sys.executable, "-c", MEASURE, url, DAY.isoformat()],
        env=_env(code, url), cwd=code, capture_output=True, text=True,
    )  # fmt: skip
    if done.returncode != 0:
        raise SystemExit(f"{code}: {done.stderr.strip()[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


def command(code: Path, url: str, args: list[str]) -> tuple[float, float, str, float]:
    """(wall seconds, peak RSS MiB, stdout, CPU seconds) of ``atmfleet ARGS`` with
    ``code``."""
    t = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-c", RUNNER, *args],
        env=_env(code, url), cwd=code, capture_output=True, text=True,
    )  # fmt: skip
    took = time.perf_counter() - t
    if done.returncode != 0:
        raise SystemExit(f"{code}: atmfleet {' '.join(args)}: {done.stderr.strip()[-2000:]}")
    rss = cpu = 0.0
    for line in done.stderr.splitlines():
        if line.startswith("maxrss "):
            rss, cpu = int(line.split()[1]) / 1024, float(line.split()[2])
    return took, rss, done.stdout, cpu


def report(url: str, before: Path | None) -> None:
    codes = ([("before", before.resolve())] if before else []) + [("after", HERE)]
    got = {label: measure(code, url) for label, code in codes}
    cmd = ["kpi", "uptime", "--date", DAY.isoformat()]
    runs: dict[str, tuple[float, float, str, float]] = {}
    again: dict[str, tuple[float, float, str, float]] = {}
    keep: dict[str, tuple[float, float, str, float]] = {}
    for label, code in codes:
        reset(url)  # the day not kept, as the first command of the day finds it
        runs[label] = command(code, url, cmd)
        keep[label] = command(code, url, ["kpi", "keep-days", "--date", DAY.isoformat()])
        again[label] = command(code, url, cmd)
    # The low-yield command, with the day measured not kept yet (each code from the same
    # store), then with all 30 days kept.
    ly_cmd = ["kpi", "low-yield", "--date", DAY.isoformat()]
    ly_first = {}
    for label, code in codes:
        reset(url)
        ly_first[label] = command(code, url, ly_cmd)
    ly_again = {label: command(code, url, ly_cmd) for label, code in codes}
    cpu = "  its CPU (this process; the database's is not in it)"
    rows: list[tuple[str, Callable[[dict[str, Any]], float]]] = [
        ("uptime, 1 day, with the database reads", lambda g: g["uptime"][0]),
        ("  inventory", lambda g: g["uptime"][1]),
        ("  reads+timelines+uptime", lambda g: g["uptime"][2]),
        ("  roll-ups", lambda g: g["uptime"][3]),
        (cpu, lambda g: g["uptime_cpu"]),
        ("low-yield, 30 days, first (29 kept + 1 computed and kept)",
         lambda g: g["low_yield_first"]),
        (cpu, lambda g: g["low_yield_first_cpu"]),
        ("low-yield, 30 days, again (30 kept days)", lambda g: g["low_yield_again"]),
        (cpu, lambda g: g["low_yield_again_cpu"]),
        ("window_days, 30 kept days read", lambda g: g["window_days"]),
    ]  # fmt: skip
    after = got["after"]
    print(f"\n{after['devices']} devices, {os.cpu_count()} CPUs, load average "
          + ", ".join(f"{x:.1f}" for x in os.getloadavg()))  # fmt: skip
    print(f"{'':58s} {'before':>9s} {'after':>9s}")
    for name, value in rows:
        b = f"{value(got['before']):8.2f}s" if before else ""
        a = value(after)
        ratio = f"  x{value(got['before']) / a:5.1f} faster" if before and a else ""
        print(f"{name:58s} {b:>9s} {a:8.2f}s{ratio}")
    for cmd_text, got_runs in (
        ("atmfleet " + " ".join(cmd) + " (a process)", runs),
        (f"then atmfleet kpi keep-days --date {DAY} (the daily job)", keep),
        ("then atmfleet " + " ".join(cmd) + " again", again),
    ):
        b_run = got_runs.get("before")
        a_run = got_runs["after"]
        b = f"{b_run[0]:8.2f}s" if b_run else ""
        ratio = f"  x{b_run[0] / a_run[0]:5.1f} faster" if b_run else ""
        print(f"{cmd_text:58s} {b:>9s} {a_run[0]:8.2f}s{ratio}")
        b = f"{b_run[3]:8.2f}s" if b_run else ""
        ratio = f"  x{b_run[3] / a_run[3]:5.1f} less" if b_run and a_run[3] else ""
        print(
            f"{'  its CPU (the process; the database not in it)':58s} {b:>9s} {a_run[3]:8.2f}s{ratio}"
        )
        print(f"{'  peak RSS, MiB':58s} {f'{b_run[1]:8.0f}' if b_run else '':>9s}"
              f" {a_run[1]:8.0f}")  # fmt: skip
    for what, got_runs in (("day not kept", ly_first), ("30 days kept", ly_again)):
        _command_rows(f"atmfleet {' '.join(ly_cmd)} ({what})", got_runs)
    print(f"fleet 开机率 {after['uptime_ratio']:.4f}, fleet low-yield share "
          f"{after['low_yield_share']:.4f}")  # fmt: skip
    if before:
        keys = ("uptime_digest", "low_yield_first_digest", "low_yield_again_digest",
                "window_days_digest", "uptime_ratio", "low_yield_share")  # fmt: skip
        differ = [k for k in keys if got["before"][k] != after[k]]
        outputs = {runs["before"][2], again["before"][2], runs["after"][2], again["after"][2]}
        if len(outputs) != 1:
            differ.append("the command's output")
        for what, got_runs in (("first", ly_first), ("again", ly_again)):
            if got_runs["before"][2] != got_runs["after"][2]:
                differ.append(f"the low-yield command's output ({what})")
        print("figures: " + ("EQUAL (every device's uptime, every flag, the kept days, the "
              "commands' output, both runs)" if not differ else "DIFFER: " + ", ".join(differ)))  # fmt: skip


def _command_rows(name: str, runs: dict[str, tuple[float, float, str, float]]) -> None:
    """A command's wall seconds, CPU and peak RSS, before and after."""
    pick: Callable[[tuple[float, float, str, float]], float]
    b_run, a_run = runs.get("before"), runs["after"]
    for label, pick, unit in (
        (name, lambda r: r[0], "s"),
        ("  its CPU (the process)", lambda r: r[3], "s"),
        ("  peak RSS, MiB", lambda r: r[1], ""),
    ):
        after = pick(a_run)
        b = f"{pick(b_run):8.2f}{unit}" if b_run else ""
        ratio = f"  x{pick(b_run) / after:5.1f}" if b_run and after and unit else ""
        print(f"{label:58s} {b:>9s} {after:8.2f}{unit}{ratio}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", type=int, default=100_000)
    parser.add_argument("--before", type=Path, help="checkout of the old code")
    parser.add_argument("--database", help="an already filled database (kept)")
    parser.add_argument("--admin-url", default="postgresql://postgres@127.0.0.1:5432/postgres")
    args = parser.parse_args()
    if args.database:
        report(args.database, args.before)
        return
    with filled_database(args.admin_url, args.devices) as url:
        report(url, args.before)


@contextlib.contextmanager
def filled_database(admin_url: str, devices: int) -> Iterator[str]:
    """A throw-away database filled as this script fills it (not timed), its URL; dropped
    at the end."""
    rules = load_rules()
    with upgraded_database(admin_url, rules.timezone) as url:
        with psycopg.connect(url) as conn:
            t = time.perf_counter()
            fill(conn, devices, random.Random(1))
            feed = Feed(conn, rules)
            keep_days(feed, conn, DAY - timedelta(days=29), DAY - timedelta(days=1))
            conn.execute("ANALYZE kpi_device_days")  # as autovacuum would have
            conn.commit()
            print(f"setup {time.perf_counter() - t:.0f} s (not measured)", flush=True)
        yield url


if __name__ == "__main__":
    main()
