"""Where a Prometheus's head series come from, before and after a change, side by side.

    python bench/prom_series.py --before CHECKOUT [--devices 100000] [--per-branch 50]
                                [--seconds 420] [--db-prefix atmfleet_bench]

One throw-away database filled as bench/scrape.py fills it (its devices fall silent
three minutes after the fill, so each one's state changes once while it is scraped:
``in_service`` -> ``offline``, and the scheduled-down set becomes the whole fleet), then
at once, side by side on the same machine: the BEFORE checkout's ``atmfleet serve``
(lean, as shipped) and this checkout's, each in a process of its own with its code on
PYTHONPATH, and one real ``prometheus`` (Debian's) for each, scraping its serve every
30 s and evaluating that checkout's ``exporters/prometheus/*.rules.yml`` every 30 s
(the groups' own ``interval`` where set), with the environment that checkout's
``deploy/prometheus/atmfleet.conf`` sets (``GOMEMLIMIT``). Both Prometheus start once
both serves show their full exposition, and run for ``--seconds``.

Printed per checkout: head series (``prometheus_tsdb_head_series``), the series each
family holds in the head (every series with a sample in the run: the old state's
series of a device whose state changed count too, as they stay in the head until it is
compacted), peak resident memory and the peak Go heap in use, CPU seconds, the samples
of the last scrape and the scrape's duration (median and worst of the run), and the rule
round (all groups' ``evaluationTime`` summed, median
and worst over the rounds seen after the first two) with each group's median.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any
from urllib.parse import quote
from urllib.request import urlopen

import psutil
import psycopg

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def get_json(url: str, timeout: float = 120) -> Any:
    with urlopen(url, timeout=timeout) as response:
        return json.load(response)


def serve_child(url: str, port: int) -> None:
    """Runs in the child: the checkout on PYTHONPATH serves (lean) until killed, its
    costlier parts in its own process (bench/rules_compare.py says why)."""
    from exporters.metrics import start_serving
    from rules.config import load_rules

    start_serving(url, load_rules(), port=port, isolate_slow=False)
    threading.Event().wait()


def shipped_environment(tree: Path) -> dict[str, str]:
    sys.path.insert(0, str(HERE))
    from promrun import shipped_environment as env

    return env(tree)


def write_config(folder: Path, jobs: dict[str, list[int]], **settings: Any) -> Path:
    sys.path.insert(0, str(HERE))
    from promrun import write_config as write

    return write(folder, jobs, **settings)


def rss_tree(proc: psutil.Process) -> int:
    total = 0
    for p in [proc, *proc.children(recursive=True)]:
        with contextlib.suppress(psutil.Error):
            total += p.memory_info().rss
    return total


def own_metrics(base: str) -> dict[str, float]:
    out = {}
    with urlopen(f"{base}/metrics", timeout=60) as response:
        for line in response.read().decode().splitlines():
            name, _, value = line.partition(" ")
            if name and not name.startswith("#"):
                with contextlib.suppress(ValueError):
                    out[name] = float(value)
    return out


class Side:
    """One checkout: its serve, its Prometheus, and what was seen of them."""

    def __init__(self, label: str, tree: Path, url: str) -> None:
        self.label, self.tree = label, tree
        self.port = free_port()
        self.serve = subprocess.Popen(
            [sys.executable, str(HERE / "prom_series.py"), "--serve", url,
             "--port", str(self.port)],
            env={**os.environ, "PYTHONPATH": str(tree)}, cwd=tree,
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        self.serve_ps = psutil.Process(self.serve.pid)
        self.peak_serve = 0
        self.prom: subprocess.Popen[bytes] | None = None
        self.tmp = Path(tempfile.mkdtemp(prefix=f"prom-series-{label}-"))
        self.peak_rss = 0
        self.peak_heap = 0.0
        self.rounds: dict[str, list[tuple[str, float]]] = {}
        self.started = 0.0

    def full(self) -> bool:
        self.peak_serve = max(self.peak_serve, rss_tree(self.serve_ps))
        try:
            body = urlopen(f"http://127.0.0.1:{self.port}/metrics", timeout=60).read()
        except OSError:
            return False
        return (
            b"\natmfleet_day_scheduled_seconds{" in body and b"\natmfleet_lowyield_devices{" in body
        )

    def start_prometheus(self) -> None:
        write_config(
            self.tmp,
            {"atmfleet": [self.port]},
            evaluation_interval="30s",
            rules_dir=self.tree / "exporters" / "prometheus",
        )
        self.prom_port = free_port()
        self.base = f"http://127.0.0.1:{self.prom_port}"
        self.env = shipped_environment(self.tree)
        env = {k: v for k, v in os.environ.items() if k != "GOMEMLIMIT"}
        self.prom = subprocess.Popen(
            [shutil.which("prometheus") or "/usr/bin/prometheus",
             f"--config.file={self.tmp / 'prometheus.yml'}",
             f"--storage.tsdb.path={self.tmp / 'data'}",
             f"--web.listen-address=127.0.0.1:{self.prom_port}"],
            cwd=self.tmp, env={**env, **self.env},
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        self.prom_ps = psutil.Process(self.prom.pid)

    def sample(self) -> None:
        assert self.prom is not None
        with contextlib.suppress(psutil.Error):
            self.peak_rss = max(self.peak_rss, self.prom_ps.memory_info().rss)
        self.peak_serve = max(self.peak_serve, rss_tree(self.serve_ps))
        try:
            own = own_metrics(self.base)
            self.peak_heap = max(self.peak_heap, own.get("go_memstats_heap_inuse_bytes", 0.0))
            groups = get_json(f"{self.base}/api/v1/rules", 30)["data"]["groups"]
        except (OSError, ValueError, KeyError):
            return
        for g in groups:
            last = g.get("lastEvaluation", "")
            if last[:4] <= "2000":
                continue
            got = self.rounds.setdefault(g["name"], [])
            if not got or got[-1][0] != last:
                got.append((last, float(g["evaluationTime"])))

    def results(self) -> dict[str, Any]:
        def instant(query: str) -> Any:
            return get_json(f"{self.base}/api/v1/query?query={quote(query)}", 600)["data"]["result"]

        own = own_metrics(self.base)
        cpu = self.prom_ps.cpu_times()
        # Every series the head holds: those with a sample since the start (the run is
        # shorter than the head's block range, so nothing was compacted away).
        window = int(time.time() - self.started) + 60
        by_name = {
            r["metric"].get("__name__", ""): float(r["value"][1])
            for r in instant(f'count by (__name__) (last_over_time({{__name__=~".+"}}[{window}s]))')
        }
        scrape = instant('scrape_samples_scraped{job="atmfleet"}')
        duration = 'scrape_duration_seconds{job="atmfleet"}'
        scrape_s = instant(f"quantile_over_time(0.5, {duration}[{window}s])")
        scrape_max = instant(f"max_over_time({duration}[{window}s])")
        per_group = {n: [t for _at, t in v[2:]] for n, v in self.rounds.items()}
        n = min((len(v) for v in per_group.values()), default=0)
        totals = [sum(v[i] for v in per_group.values()) for i in range(n)]
        return {
            "head_series": own.get("prometheus_tsdb_head_series", 0.0),
            "by_name": by_name,
            "peak_rss_mib": self.peak_rss / 2**20,
            "peak_heap_mib": self.peak_heap / 2**20,
            "heap_end_mib": own.get("go_memstats_heap_inuse_bytes", 0.0) / 2**20,
            "cpu_s": cpu.user + cpu.system,
            "gcs": own.get("go_gc_duration_seconds_count", 0.0),
            "samples": float(scrape[0]["value"][1]) if scrape else None,
            "scrape_s": float(scrape_s[0]["value"][1]) if scrape_s else None,
            "scrape_max_s": float(scrape_max[0]["value"][1]) if scrape_max else None,
            "round_s": totals,
            "groups": {k: statistics.median(v) for k, v in per_group.items() if v},
            "serve_rss_mib": self.peak_serve / 2**20,
            "env": self.env,
        }

    def close(self) -> None:
        for p in (self.prom, self.serve):
            if p is None:
                continue
            p.terminate()
            try:
                p.wait(timeout=60)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        shutil.rmtree(self.tmp, ignore_errors=True)


def run(before: Path, url: str, seconds: float) -> dict[str, dict[str, Any]]:
    sides = [Side("before", before, url), Side("after", ROOT, url)]
    try:
        t0 = time.monotonic()
        while not all(s.full() for s in sides):
            if time.monotonic() - t0 > 1800:
                raise SystemExit("a serve did not show its full exposition within 1800 s")
            time.sleep(2)
        print(f"both serves full after {time.monotonic() - t0:.0f} s", flush=True)
        for s in sides:
            s.start_prometheus()
            s.started = time.time()
        started = time.monotonic()
        while time.monotonic() - started < seconds:
            time.sleep(5)
            for s in sides:
                s.sample()
        load = os.getloadavg()[0]
        got = {s.label: s.results() for s in sides}
        for s in sides:
            got[s.label]["load"] = load
        return got
    finally:
        for s in sides:
            s.close()


def report(got: dict[str, dict[str, Any]], args: argparse.Namespace) -> None:
    b, a = got["before"], got["after"]
    print()
    print(f"{args.devices} devices, {args.per_branch} per branch, {args.seconds:.0f} s side by "
          f"side; load average at the end {a['load']:.1f}")  # fmt: skip
    print(f"{'measure':<58} {'before':>11} {'after':>11} {'ratio':>6}")

    def line(name: str, x: float | None, y: float | None, fmt: str = ",.0f") -> None:
        ratio = f"{x / y:6.2f}" if x and y else "     –"
        fx = f"{x:>11{fmt}}" if x is not None else f"{'–':>11}"
        fy = f"{y:>11{fmt}}" if y is not None else f"{'–':>11}"
        print(f"{name:<58} {fx} {fy} {ratio}")

    def med(v: list[float]) -> float | None:
        return statistics.median(v) if v else None

    line("head series (prometheus_tsdb_head_series)", b["head_series"], a["head_series"])
    names = sorted(set(b["by_name"]) | set(a["by_name"]),
                   key=lambda n: (-max(b["by_name"].get(n, 0), a["by_name"].get(n, 0)), n))  # fmt: skip
    for name in names:
        x, y = b["by_name"].get(name), a["by_name"].get(name)
        if max(x or 0, y or 0) >= 1000:
            line(f"  {name[:56]}", x, y)
    rest_b = sum(v for v in b["by_name"].values() if v < 1000)
    rest_a = sum(v for v in a["by_name"].values() if v < 1000)
    line("  (families under 1,000 series each)", rest_b, rest_a)
    line("samples per scrape", b["samples"], a["samples"])
    line("scrape duration, median over the run (s)", b["scrape_s"], a["scrape_s"], ".2f")
    line("scrape duration, worst (s)", b["scrape_max_s"], a["scrape_max_s"], ".2f")
    line("prometheus peak RSS (MiB)", b["peak_rss_mib"], a["peak_rss_mib"])
    line("prometheus peak Go heap in use (MiB)", b["peak_heap_mib"], a["peak_heap_mib"])
    line("prometheus Go heap in use at the end (MiB)", b["heap_end_mib"], a["heap_end_mib"])
    line("prometheus CPU (s)", b["cpu_s"], a["cpu_s"])
    line("prometheus garbage collections", b["gcs"], a["gcs"])
    line("rule round, all groups, median (s)", med(b["round_s"]), med(a["round_s"]), ".2f")
    line("rule round, all groups, worst (s)", max(b["round_s"], default=None),
         max(a["round_s"], default=None), ".2f")  # fmt: skip
    print(f"  rounds after two of warm-up: before {len(b['round_s'])}, after {len(a['round_s'])}")
    for name in sorted(set(b["groups"]) | set(a["groups"])):
        x, y = b["groups"].get(name), a["groups"].get(name)
        if max(x or 0, y or 0) >= 0.05:
            line(f"  {name} (median, s)", x, y, ".2f")
    line("serve peak RSS with children (MiB)", b["serve_rss_mib"], a["serve_rss_mib"])
    print(f"prometheus environment: before {b['env'] or '–'}, after {a['env'] or '–'}")


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--before", type=Path, help="checkout of the old code")
    parser.add_argument("--devices", type=int, default=100_000)
    parser.add_argument("--per-branch", type=int, default=50)
    parser.add_argument("--seconds", type=float, default=420.0)
    parser.add_argument("--admin-url", default="postgresql://postgres@127.0.0.1:5432/postgres")
    parser.add_argument("--db-prefix", default="atmfleet_bench")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    parser.add_argument("--serve", help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        # bench/ is first on the path (the script's folder): its cash.py is not cash/.
        sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != HERE]
        serve_child(args.serve, args.port)
        return
    if args.before is None:
        parser.error("--before CHECKOUT is required")
    sys.path.insert(0, str(HERE))
    from scrape import fill
    from scratch import scratch_database

    from atmfleet.store.migrate import Flavour, upgrade
    from rules.config import load_rules

    with scratch_database(args.admin_url, args.db_prefix) as url:
        with psycopg.connect(url, autocommit=True) as conn:
            upgrade(conn, timezone=load_rules().timezone, flavour=Flavour.POSTGRES)
        with psycopg.connect(url) as conn:
            fill(conn, args.devices, args.per_branch)
        got = run(args.before.resolve(), url, args.seconds)
    if args.json:
        args.json.write_text(json.dumps(got, indent=1))
    report(got, args)


if __name__ == "__main__":
    main()
