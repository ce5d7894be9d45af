"""Prometheus's ``GOMEMLIMIT`` side by side: one ``atmfleet serve``, several Prometheus.

    python bench/prom_memlimit.py [--limits 1280MiB,3GiB,none] [--devices 100000]
                                  [--per-branch 50] [--seconds 420] [--url URL]

One throw-away database filled as bench/scrape.py fills it (or ``--url``, filled before),
one ``atmfleet serve`` on it (lean, as shipped), and one real ``prometheus`` (Debian's)
per value of ``--limits``, all at once: each scrapes that serve every 30 s and evaluates
the shipped rules every 30 s, with ``GOMEMLIMIT`` set to its value (``none``: unset; the
caller's own setting is dropped). They run side by side for ``--seconds``, so each sees
the same scrapes and the same machine. Printed per Prometheus: its CPU seconds, peak
resident memory, Go heap in use and garbage collections at the end (its own
``/metrics``), head series, and the last round of the rules (the groups'
``evaluationTime``, summed, and each group's).

The shipped drop-in ``deploy/prometheus/atmfleet.conf`` sets the limit; this is how to
see what a value costs on a fleet's head (docs/metrics.md, "Prometheus's memory").
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import psutil
import psycopg

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
# The checkout's packages first, bench/ last: its cash.py is not the cash/ package.
sys.path[:] = [str(ROOT), *(p for p in sys.path if Path(p or ".").resolve() != HERE), str(HERE)]

import promrun  # noqa: E402


def config(folder: Path, serve_port: int) -> Path:
    return promrun.write_config(folder, {"atmfleet": [serve_port]}, evaluation_interval="30s")


def own_metric(text: str, name: str) -> float | None:
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    return None


def run(url: str, limits: list[str], seconds: float) -> None:
    from exporters.metrics import start_serving
    from rules.config import load_rules

    serving = start_serving(url, load_rules(), port=0, refresh_s=30, day_refresh_s=120)
    if not serving.wait_refreshed(600):
        raise SystemExit("serve did not refresh within 600 s")
    with tempfile.TemporaryDirectory(prefix="prom_memlimit") as tmp:
        proms = {}
        for i, limit in enumerate(limits):
            folder = Path(tmp) / f"p{i}"
            folder.mkdir()
            env = {k: v for k, v in os.environ.items() if k != "GOMEMLIMIT"}
            if limit != "none":
                env["GOMEMLIMIT"] = limit
            port = free_port()
            log = (folder / "prometheus.log").open("wb")
            popen = subprocess.Popen(
                [promrun.binary(), f"--config.file={config(folder, serving.port)}",
                 f"--storage.tsdb.path={folder / 'data'}",
                 f"--web.listen-address=127.0.0.1:{port}"],
                cwd=folder, env=env, stdout=log, stderr=log,
            )  # fmt: skip
            proms[limit] = (popen, port, psutil.Process(popen.pid))
        peak = dict.fromkeys(proms, 0)
        started = time.monotonic()
        try:
            while time.monotonic() - started < seconds:
                time.sleep(5)
                for limit, (_, _, proc) in proms.items():
                    peak[limit] = max(peak[limit], proc.memory_info().rss)
            elapsed = time.monotonic() - started
            print(f"{len(proms)} Prometheus side by side for {elapsed:.0f} s, one serve; "
                  f"load average {os.getloadavg()[0]:.1f}")  # fmt: skip
            print(f"{'GOMEMLIMIT':>10} {'CPU s':>7} {'peak RSS':>9} {'heap in use':>12} "
                  f"{'GCs':>5} {'head series':>12} {'rule round':>11}")  # fmt: skip
            details = []
            for limit, (_, port, proc) in proms.items():
                cpu = proc.cpu_times()
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics") as resp:
                    own = resp.read().decode()
                groups = promrun.api(port, "/api/v1/rules")["groups"]
                times = {g["name"]: float(g["evaluationTime"]) for g in groups}
                heap = own_metric(own, "go_memstats_heap_inuse_bytes") or 0.0
                print(f"{limit:>10} {cpu.user + cpu.system:>7.0f} "
                      f"{peak[limit] / 2**20:>5.0f} MiB {heap / 2**20:>8.0f} MiB "
                      f"{own_metric(own, 'go_gc_duration_seconds_count') or 0:>5.0f} "
                      f"{own_metric(own, 'prometheus_tsdb_head_series') or 0:>12,.0f} "
                      f"{sum(times.values()):>9.2f} s")  # fmt: skip
                slow = sorted(times.items(), key=lambda g: -g[1])[:4]
                details.append(f"  {limit}: " + ", ".join(f"{n} {s:.2f} s" for n, s in slow))
            print("the longest groups of the last round:")
            print("\n".join(details))
        finally:
            for popen, _, _ in proms.values():
                popen.terminate()
            for popen, _, _ in proms.values():
                popen.wait(60)
            serving.close()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--limits", default="1280MiB,3GiB,none")
    parser.add_argument("--devices", type=int, default=100_000)
    parser.add_argument("--per-branch", type=int, default=50)
    parser.add_argument("--seconds", type=float, default=420.0)
    parser.add_argument("--url", help="a database filled by bench/scrape.py's fill (kept)")
    parser.add_argument("--admin-url", default="postgresql://postgres@127.0.0.1:5432/postgres")
    args = parser.parse_args()
    limits = [x.strip() for x in args.limits.split(",") if x.strip()]
    if args.url:
        run(args.url, limits, args.seconds)
        return
    from scrape import fill
    from scratch import upgraded_database

    from atmfleet.store.migrate import Flavour
    from rules.config import load_rules

    with upgraded_database(args.admin_url, load_rules().timezone, Flavour.POSTGRES) as url:
        with psycopg.connect(url) as conn:
            fill(conn, args.devices, args.per_branch)
        run(url, limits, args.seconds)


if __name__ == "__main__":
    main()
