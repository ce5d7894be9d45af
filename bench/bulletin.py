"""The bulletins at fleet scale, BEFORE and AFTER side by side, through the command itself.

    python bench/bulletin.py --before CHECKOUT [--devices 100000 ...] [--kinds daily,monthly]
                             [--admin-url postgresql://postgres@127.0.0.1/postgres]

Creates a throw-away database (plain PostgreSQL) and fills it (bulk COPY, not timed) as
``bench/kpi_db.py`` does: the inventory, three local days of state runs around the day
measured, 30 days of txn_daily, the 29 kept closed days before it; plus teller-counter
volumes for every branch. Then, for each device count and each kind, runs

    atmfleet bulletin daily --date D --format all          (xlsx, csv, html, json)
    atmfleet bulletin monthly --month M --format all
    atmfleet bulletin quarterly --quarter Q --format all

as a process, once with the code of ``--before`` (a checkout of the earlier commit, put
first on PYTHONPATH) and once with this tree's, on the same database, one right after the
other (the machine is shared: compare the ratio, not the seconds). Before each run the
days the previous run kept are removed, so both start from the same store. Prints wall
seconds, the peak RSS and the CPU seconds of each run's process (the database's not in
them; on a shared machine the CPU ratio is the steadier one), and checks that the two JSON files
hold the same bulletin (every key but ``generated``): speed work must not change a figure.
The database is dropped at the end. ``--url`` runs on a database filled before (as this
script fills it, for one device count) instead, and leaves it there.

The fill keeps the 29 days before the day measured only: a monthly or quarterly run then
computes (and keeps) the period's later days itself. In operation the daily job
(``atmfleet kpi keep-days``) has kept every closed day of the month before the monthly
assessment runs: ``--kept`` does that first for each monthly or quarterly kind (this
tree's code, not timed) and then resets nothing, so both runs read the kept days.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from datetime import date, timedelta
from pathlib import Path

import psycopg

sys.path.insert(0, str(Path(__file__).resolve().parent))

from kpi_db import DAY, RUNNER, fill, keep_days
from scratch import scratch_database

from atmfleet.store.migrate import Flavour, upgrade
from exporters.bulletin.build import local_today
from exporters.bulletin_cli import parse_month, parse_quarter
from rules.config import load_rules
from rules.feed import Feed

HERE = Path(__file__).resolve().parent.parent


def add_counters(conn: psycopg.Connection) -> None:
    conn.execute(
        """
        INSERT INTO counter_volumes
        SELECT id, %(day)s::date, 200 + floor(random() * 400)::int, floor(random() * 200)::int,
               'core', now(), now()
        FROM branches WHERE kind = 'outlet'
        """,
        {"day": DAY},
    )
    conn.commit()


def reset(conn: psycopg.Connection) -> None:
    """Forget what a run kept: the kept days from the day measured on (and whatever a
    kept-days cache of the newer code holds for them), their dead rows vacuumed."""
    conn.execute("DELETE FROM kpi_device_days WHERE day >= %s", (DAY,))
    conn.commit()
    # Their dead rows vacuumed away, so that each run's upsert of the day finds the
    # same store (bench/kpi_db.py, reset).
    with psycopg.connect(conn.info.dsn, password=conn.info.password, autocommit=True) as c:
        c.execute("VACUUM (INDEX_CLEANUP ON) kpi_device_days")


def bulletin_json(folder: str) -> dict[str, object] | None:
    """The JSON bulletin a run wrote into ``folder``, without its ``generated`` time."""
    found = sorted(Path(folder).glob("*.json"))
    if not found:
        return None
    doc = json.loads(found[0].read_text(encoding="utf-8"))
    doc.pop("generated", None)
    return doc  # type: ignore[no-any-return]


def differences(a: object, b: object, at: str = "") -> list[str]:
    """Where two JSON documents differ (paths, the first few)."""
    if isinstance(a, dict) and isinstance(b, dict):
        out = [f"{at}/{k}: only on one side" for k in sorted(set(a) ^ set(b))]
        for k in sorted(set(a) & set(b)):
            out += differences(a[k], b[k], f"{at}/{k}")
        return out
    if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        return [d for i, (x, y) in enumerate(zip(a, b, strict=True))
                for d in differences(x, y, f"{at}[{i}]")]  # fmt: skip
    return [] if a == b else [f"{at}: {str(a)[:60]} != {str(b)[:60]}"]


def run(code: Path, url: str, args: list[str]) -> tuple[float, float, str, float]:
    """(seconds, peak RSS MiB, error text, CPU seconds of the process) of one run of the
    command with ``code``."""
    env = dict(os.environ, ATMFLEET_DATABASE_URL=url, PYTHONPATH=str(code))
    env.pop("ATMFLEET_RULES_FILE", None)
    t = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-c", RUNNER, *args], env=env, cwd=code, capture_output=True, text=True
    )
    took = time.perf_counter() - t
    rss = cpu = 0.0
    for line in done.stderr.splitlines():
        if line.startswith("maxrss "):
            rss, cpu = int(line.split()[1]) / 1024, float(line.split()[2])
    err = "" if done.returncode == 0 else done.stderr.strip().splitlines()[-2:]
    return took, rss, " | ".join(err) if err else "", cpu


def command(kind: str) -> list[str]:
    if kind == "daily":
        return ["bulletin", "daily", "--date", DAY.isoformat()]
    if kind == "monthly":
        return ["bulletin", "monthly", "--month", DAY.strftime("%Y-%m")]
    if kind == "quarterly":
        return ["bulletin", "quarterly", "--quarter", f"{DAY.year}-Q{(DAY.month - 1) // 3 + 1}"]
    raise SystemExit(f"--kinds: unknown kind {kind!r}; allowed: daily, monthly, quarterly")


def period(kind: str, conn: psycopg.Connection) -> tuple[date, date]:
    """The local days a monthly or quarterly run covers (a period in progress: up to
    yesterday, as the command takes it)."""
    rules = load_rules()
    first, last = (parse_month if kind == "monthly" else parse_quarter)(command(kind)[-1])
    today = local_today(Feed(conn, rules).now_ms(), rules)
    return first, min(last, today - timedelta(days=1))


def keep_period(kind: str, url: str, conn: psycopg.Connection) -> None:
    """What the daily job leaves before a monthly or quarterly run: every closed day of
    the period kept (``atmfleet kpi keep-days``, this tree's code, not timed)."""
    first, last = period(kind, conn)
    took = 0.0
    start = first
    while start <= last:  # a week at a time: the command holds its days' timelines
        end = min(last, start + timedelta(days=6))
        s, _, err, _ = run(HERE, url, ["kpi", "keep-days", "--from", str(start), "--to", str(end)])
        if err:
            raise SystemExit(f"kpi keep-days: {err}")
        took += s
        start = end + timedelta(days=1)
    print(f"  {kind:9s} kept {first}..{last} (kpi keep-days, {took:.0f} s, not measured)",
          flush=True)  # fmt: skip


def measure(
    n: int, url: str, conn: psycopg.Connection, kinds: list[str], before: Path,
    kept: bool = False,
) -> list[str]:  # fmt: skip
    """Each kind with the old code, then the new, on the same store; one line per kind.
    ``kept``: the period's closed days kept first, as in operation (then nothing is reset:
    a run keeps nothing more)."""
    results = []
    for kind in kinds:
        cmd = command(kind)
        got = {}
        docs = {}
        if kept and kind != "daily":
            keep_period(kind, url, conn)
        for label, code in (("before", before.resolve()), ("after", HERE)):
            if not kept:
                reset(conn)
            with tempfile.TemporaryDirectory() as out:
                got[label] = run(code, url, [*cmd, "--format", "all", "--out", out])
                docs[label] = bulletin_json(out)
            s, rss, err, cpu = got[label]
            print(f"  {kind:9s} {label:6s} {s:7.1f} s  {rss:7.0f} MiB  CPU {cpu:6.1f} s  {err}",
                  flush=True)  # fmt: skip
        (b, brss, _, bcpu), (a, arss, _, acpu) = got["before"], got["after"]
        if docs["before"] is None or docs["after"] is None:
            same = "JSON missing"
        else:
            diff = differences(docs["before"], docs["after"])
            same = "JSON equal" if not diff else f"JSON DIFFERS ({len(diff)}): {diff[:3]}"
        results.append(
            f"{n:>7} {kind:9s} all 4 formats  before {b:7.1f} s {brss:6.0f} MiB   "
            f"after {a:6.1f} s {arss:5.0f} MiB   x{b / a:5.1f} faster   "
            f"(CPU {bcpu:.1f} -> {acpu:.1f} s, x{bcpu / acpu if acpu else 0:4.1f})   {same}"
        )
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--before", type=Path, required=True, help="checkout of the old code")
    parser.add_argument("--devices", default="100000", help="comma-separated counts")
    parser.add_argument("--kinds", default="daily,monthly", help="daily,monthly,quarterly")
    parser.add_argument("--admin-url", default="postgresql://postgres@127.0.0.1:5432/postgres")
    parser.add_argument("--url", help="a database this script filled before (not dropped)")
    parser.add_argument(
        "--kept", action="store_true",
        help="monthly/quarterly: keep every closed day of the period first (kpi keep-days, "
        "as the daily job does in operation); without it the days from the bench's day on "
        "are not kept and each run computes (and keeps) them",
    )  # fmt: skip
    args = parser.parse_args()
    rules = load_rules()
    kinds = [k.strip() for k in args.kinds.split(",") if k.strip()]
    for kind in kinds:
        command(kind)  # refuses an unknown kind before the long set-up
    results: list[str] = []
    if args.url:
        with psycopg.connect(args.url) as conn:
            n = conn.execute("SELECT count(*) FROM devices").fetchone()[0]  # type: ignore[index]
            results += measure(n, args.url, conn, kinds, args.before, args.kept)
    for n in [] if args.url else [int(x) for x in args.devices.split(",")]:
        with scratch_database(args.admin_url) as url, psycopg.connect(url) as conn:
            t = time.perf_counter()
            # Plain PostgreSQL even where the server offers TimescaleDB: the fill writes
            # txn_daily as the trigger keeps it (a table there, a view under TimescaleDB).
            with psycopg.connect(url, autocommit=True) as admin:
                upgrade(admin, timezone=rules.timezone, flavour=Flavour.POSTGRES)
            fill(conn, n, random.Random(1))
            add_counters(conn)
            keep_days(Feed(conn, rules), conn, DAY - timedelta(days=29), DAY - timedelta(days=1))
            conn.execute("ANALYZE")
            conn.commit()
            print(f"{n} devices: setup {time.perf_counter() - t:.0f} s (not measured)", flush=True)
            results += measure(n, url, conn, kinds, args.before, args.kept)
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    print(f"\n{os.cpu_count()} CPUs, load average {load}")
    print("\n".join(results))


if __name__ == "__main__":
    main()
