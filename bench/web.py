"""The web console at fleet scale: 100,000 devices and 5,000 open incidents.

    python bench/web.py [--devices 100000] [--incidents 5000] [--admin-url postgresql://postgres@127.0.0.1/postgres]

Creates a throw-away database, fills it directly (not timed): the inventory (12
sub-branches, a branch per 50 devices), three state runs per device over the last day
(1 in 12 in a fault now, 1 in 40 silent for an hour), txn_daily for 8 days, and open
incidents on as many devices; then starts ``atmfleet web`` as its own process and asks it,
with an API token, for:

1. the wall's first paint (the first GET /wall after start: inventory and every device's
   state read), then the wall again (warm), the JSON the page polls, a sub-branch drill-down;
2. a device page (today's and 7 days' timeline, uptime, transactions, incidents, stops);
3. the incidents board with every open incident counted and the first page listed.

Each figure is the server's own time (its Server-Timing header), the median of 5 after
the first; the process's resident memory is read at the end. The database is dropped.
"""

from __future__ import annotations

import argparse
import importlib
import os
import random
import statistics
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import psutil
import psycopg
from kpi_db import copy_text
from scratch import upgraded_database

from app.embedded import free_port
from atmfleet.store.audit import Actor
from rules.config import load_rules

# This file is named web.py, as the console's package: take the package, not this file.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]
sys.modules.pop("web", None)
auth = importlib.import_module("web.auth")

TYPES = ("atm", "atm", "crs", "deposit", "smart_teller")
PLACEMENTS = ("on_site", "off_site", "self_service_bank")
TARGETS = {"wall": 1000.0, "device": 300.0, "incidents": 500.0}
RSS_LIMIT_MB = 300


def fill(conn: psycopg.Connection, n: int, incidents: int) -> None:
    rng = random.Random(1)
    now = datetime.now(UTC).replace(microsecond=0)
    subs = [f"S{i:02d}\t支行{i}\t{i % 3 + 1}\n" for i in range(12)]
    nb = max(1, n // 50)
    branches = [f"B{i:05d}\t网点{i}\tS{i % 12:02d}\toutlet\t\\N\n" for i in range(nb)]
    devices = [
        f"D{i:06d}\tB{i % nb:05d}\t{TYPES[i % 5]}\t{PLACEMENTS[i % 3]}\tV{i % 5}\tM{i % 3}"
        f"\t2025-01-01\t\\N\t\\N\t{'t' if TYPES[i % 5] in ('crs', 'deposit') else 'f'}\t60\n"
        for i in range(n)
    ]
    copy_text(conn, "COPY subbranches FROM STDIN", subs)
    copy_text(conn, "COPY branches FROM STDIN", branches)
    copy_text(conn, "COPY devices (id, branch, type, placement, vendor, model, commissioned,"
              " decommissioned, service_window, deposit_capable, heartbeat_s) FROM STDIN",
              devices)  # fmt: skip
    lo = now - timedelta(days=1)
    runs = []
    for i in range(n):
        dev = f"D{i:06d}"
        a = lo + timedelta(minutes=rng.randrange(5, 600))
        b = a + timedelta(minutes=30)
        last_state = "fault" if i % 12 == 0 else "in_service"
        end = now - (timedelta(hours=1) if i % 40 == 0 else timedelta(seconds=30))
        pieces = [(lo, a - timedelta(minutes=1), "in_service"), (a, b, "supervisor"),
                  (b + timedelta(minutes=1), end, last_state)]  # fmt: skip
        for k, (s, e, state) in enumerate(pieces):
            samples = int((e - s).total_seconds() // 60) + 1
            runs.append(f"{dev}\t{s.isoformat()}\t{k * 10_000}\t{e.isoformat()}"
                        f"\t{k * 10_000 + samples - 1}\t{state}\t60\t{samples}\n")  # fmt: skip
    conn.execute("DROP INDEX state_runs_span_idx")
    copy_text(conn, "COPY state_runs (device_id, start_ts, start_seq, last_ts, last_seq, state,"
              " heartbeat_s, samples) FROM STDIN", runs)  # fmt: skip
    conn.execute("CREATE INDEX state_runs_span_idx ON state_runs"
                 " USING gist (tstzrange(start_ts, last_ts, '[]'))")  # fmt: skip
    conn.execute(
        """
        INSERT INTO txn_daily
        SELECT (d::date)::timestamp AT TIME ZONE 'Asia/Shanghai', dev.id, k.type, k.financial,
               k.result, true, 1 + floor(random() * k.mean * 2)::int, 0, 0
        FROM generate_series(current_date - 7, current_date, INTERVAL '1 day') AS d
        CROSS JOIN devices dev
        CROSS JOIN (VALUES ('withdrawal', true, 'ok', 60), ('inquiry', false, 'ok', 20))
            AS k (type, financial, result, mean)
        """
    )
    conn.execute(
        """
        INSERT INTO incidents (device_id, subbranch_id, branch_id, vendor, model, class, cause,
                               component, state, started_at, opened_at, cycle_at, contract)
        SELECT d.id, b.subbranch, d.branch, d.vendor, d.model, 'component', 'fault', 'cdm',
               (ARRAY['open', 'acknowledged', 'dispatched', 'on_site'])[1 + (n %% 4)],
               now() - (n %% 600) * INTERVAL '1 minute', now() - (n %% 600) * INTERVAL '1 minute',
               now() - (n %% 600) * INTERVAL '1 minute', 'default'
        FROM (SELECT id, branch, vendor, model, row_number() OVER (ORDER BY id) AS n
              FROM devices ORDER BY id LIMIT %s) d JOIN branches b ON b.id = d.branch
        """,
        (incidents,),
    )
    conn.execute("ANALYZE")
    auth.add_user(conn, Actor("bench", "cli"), "bench", "admin", "fleet", "bench-password-1")
    conn.commit()
    print(f"filled: {n:,} devices, {len(runs):,} state runs, {incidents:,} open incidents",
          flush=True)  # fmt: skip


def server_ms(r: httpx.Response) -> float:
    assert r.status_code == 200, (r.status_code, r.text[:300])
    return float(r.headers["server-timing"].split("dur=")[1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", type=int, default=100_000)
    parser.add_argument("--incidents", type=int, default=5_000)
    parser.add_argument("--admin-url", default="postgresql://postgres@127.0.0.1:5432/postgres")
    args = parser.parse_args()
    rules = load_rules()
    with upgraded_database(args.admin_url, rules.timezone) as url:
        t = time.perf_counter()
        with psycopg.connect(url) as conn:
            fill(conn, args.devices, args.incidents)
            token = auth.issue_token(conn, Actor("bench", "cli"), "bench", "bench", None)[1]
            conn.commit()
        print(f"setup {time.perf_counter() - t:.0f} s (not measured)", flush=True)
        port = free_port()
        env = {**os.environ, "ATMFLEET_DATABASE_URL": url, "ATMFLEET_OUTPUT_DIR": "/tmp"}
        exe = Path(sys.executable).parent / "atmfleet"
        proc = subprocess.Popen([str(exe), "web", "--port", str(port)], env=env)
        try:
            ps = psutil.Process(proc.pid)
            c = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=120,
                             headers={"Authorization": f"Bearer {token}"})  # fmt: skip
            deadline = time.monotonic() + 60
            while True:
                try:
                    c.get("/api/me")
                    break
                except httpx.TransportError:
                    if time.monotonic() > deadline or proc.poll() is not None:
                        raise SystemExit("atmfleet web did not start") from None
                    time.sleep(0.2)
            figures: dict[str, float] = {}
            figures["wall first paint"] = server_ms(c.get("/wall"))
            peak = ps.memory_info().rss

            def median(path: str, paths: list[str] | None = None) -> float:
                nonlocal peak
                times = []
                for p in paths or [path] * 5:
                    times.append(server_ms(c.get(p)))
                    peak = max(peak, ps.memory_info().rss)
                return statistics.median(times)

            time.sleep(2.5)  # past the state refresh interval: a warm wall reads new states
            figures["wall (warm)"] = median("/wall")
            figures["wall JSON (the poll)"] = median("/api/wall")
            figures["wall, one sub-branch"] = median("/wall?subbranch=S03")
            figures["wall, state filter"] = median("/wall?state=fault")
            devices = [
                f"/devices/D{random.Random(i).randrange(args.devices):06d}" for i in range(5)
            ]
            figures["device page"] = median("", devices)
            figures["incidents board"] = median("/incidents")
            figures["incidents JSON"] = median("/api/incidents")
            rss = max(peak, ps.memory_info().rss) / 2**20
        finally:
            proc.terminate()
            proc.wait(30)
    print(f"\natmfleet web at {args.devices:,} devices, {args.incidents:,} open incidents"
          " (server time, ms; median of 5 after the first):")  # fmt: skip
    for name, value in figures.items():
        key = "wall" if name.startswith("wall first") else (
            "device" if name.startswith("device") else (
                "incidents" if name == "incidents board" else None))  # fmt: skip
        target = f"  (target <= {TARGETS[key]:.0f})" if key else ""
        print(f"  {name:<24} {value:8.1f}{target}")
    print(f"  {'RSS, peak':<24} {rss:8.1f} MB  (target < {RSS_LIMIT_MB})")
    ok = (figures["wall first paint"] <= TARGETS["wall"] and figures["device page"] <= TARGETS["device"]
          and figures["incidents board"] <= TARGETS["incidents"] and rss < RSS_LIMIT_MB)  # fmt: skip
    print("targets met" if ok else "TARGETS MISSED")


if __name__ == "__main__":
    main()
