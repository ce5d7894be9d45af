"""The shipped Prometheus rules on a real Prometheus scraping a real ``atmfleet serve``,
before and after a change, side by side.

    python bench/rules_compare.py --before CHECKOUT [--devices 100000] [--per-branch 3] [--rounds 3]

One throw-away database filled as bench/scrape.py fills it (``--per-branch`` devices per
branch: 3 gives the 34,000 branches of a national 100,000-device fleet), then for the
BEFORE checkout and for this one in turn: that checkout's ``atmfleet serve`` (its code on
PYTHONPATH), and once its exposition holds today's figures, a real ``prometheus``
(Debian's) scraping it every 60 s and evaluating that checkout's
``exporters/prometheus/atmfleet.rules.yml``, with the environment that checkout's
``deploy/prometheus/atmfleet.conf`` sets (``GOMEMLIMIT``; none if it has none).
Printed per checkout: each rule group's evaluation time (``/api/v1/rules``
``evaluationTime``) over ``--rounds`` rounds after two of warm-up, the sum of all groups
per round, the scrape's duration and samples, Prometheus's peak resident memory and
serve's (with its children), the peak of Prometheus's Go heap in use (its own
``/metrics``) and what its head holds at the end (``/api/v1/status/tsdb``: series in all,
and the ten families with the most). The two run one after the other on a shared
machine: compare the ratios. Then, on the AFTER run's Prometheus, every rule whose
expression changed is evaluated in both versions at one instant, and the result sets
(labels and values) are compared. No collector is scraped, so
``fleet:atmfleet_collector_impaired:bool`` is 1 and the device alerts are held (their
templates cost nothing here). The fill is relative to when it was made: with ``--url``
a database filled more than a few minutes before shows its devices offline.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote
from urllib.request import urlopen

import psutil
import psycopg
import yaml
from promrun import shipped_environment

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def get_json(url: str) -> Any:
    with urlopen(url, timeout=60) as response:
        return json.load(response)


def serve_child(url: str, port: int) -> None:
    """Runs in the child: the checkout on PYTHONPATH serves until killed. Its costlier
    parts are computed in its own process (``isolate_slow=False``), not in a pool of
    child processes: on Python 3.11 a ``ProcessPoolExecutor`` with
    ``max_tasks_per_child`` can stop starting workers (CPython gh-115634), and a part
    left queued never shows, so the bench would wait for it until its time-out. serve's
    peak RSS here therefore holds its KPI core's too."""
    import threading

    from exporters.metrics import start_serving
    from rules.config import load_rules

    start_serving(url, load_rules(), port=port, isolate_slow=False)
    threading.Event().wait()


def rss_tree(proc: psutil.Process) -> int:
    total = 0
    for p in [proc, *proc.children(recursive=True)]:
        with contextlib.suppress(psutil.Error):
            total += p.memory_info().rss
    return total


GATE = "unless on() (fleet:atmfleet_collector_impaired:bool == 1)"
RECORDING = re.compile(r"(?<![\w:])([a-z]+:atmfleet_[a-z0-9_]+:[a-z0-9_]+)")


def rule_exprs(path: Path) -> dict[str, tuple[str, str]]:
    """Each rule's name -> (its group, its expression) in a rules file."""
    out = {}
    for group in yaml.safe_load(path.read_text(encoding="utf-8"))["groups"]:
        for rule in group["rules"]:
            out[rule.get("alert") or rule["record"]] = (group["name"], rule["expr"])
    return out


def result_set(base: str, expr: str, at: float) -> list[tuple[tuple[tuple[str, str], ...], str]]:
    """An instant query's result at ``at``: sorted (labels, value) pairs, without the
    metric name (a recording rule sets its own, an alert drops it)."""
    query = f"{base}/api/v1/query?query={quote(expr)}&time={at:.3f}"
    result = get_json(query)["data"]["result"]
    return sorted(
        (tuple(sorted((k, v) for k, v in r["metric"].items() if k != "__name__")), r["value"][1])
        for r in result
    )


def same_results(base: str, old_rules: Path, new_rules: Path) -> dict[str, Any]:
    """Every rule whose expression changed, old and new expression evaluated on the same
    data at the same instant: the last evaluation of the group recording what the new
    one reads (so a recording and the series it was computed from are from one time).
    The collector gate is taken off both (no collector is scraped here, so it would hold
    every device alert and make the comparison empty)."""
    old, new = rule_exprs(old_rules), rule_exprs(new_rules)
    evaluated = {
        g["name"]: g["lastEvaluation"] for g in get_json(f"{base}/api/v1/rules")["data"]["groups"]
    }
    out: dict[str, Any] = {}
    for name, (_group, expr) in sorted(new.items()):
        if name not in old or old[name][1] == expr:
            continue
        groups = {new[r][0] for r in RECORDING.findall(expr) if r in new}
        stamps = [prom_instant(evaluated[g]) for g in groups if g in evaluated] or [time.time()]
        at = max(stamps)
        a = result_set(base, old[name][1].replace(GATE, ""), at)
        b = result_set(base, expr.replace(GATE, ""), at)
        out[name] = {"equal": a == b, "series": len(b)}
    return out


def go_memory(base: str) -> dict[str, float]:
    """Prometheus's own Go heap figures from its /metrics (bytes)."""
    wanted = ("go_memstats_heap_inuse_bytes", "go_memstats_next_gc_bytes",
              "process_resident_memory_bytes")  # fmt: skip
    out = {}
    with urlopen(f"{base}/metrics", timeout=30) as response:
        for line in response.read().decode().splitlines():
            name, _, value = line.partition(" ")
            if name in wanted:
                out[name] = float(value)
    return out


def prom_instant(text: str) -> float:
    """Seconds since the epoch of an RFC 3339 time of the API (nanoseconds cut)."""
    head, _, frac = text.rstrip("Z").partition(".")
    digits = "".join(c for c in frac if c.isdigit())[:6].ljust(6, "0")
    return datetime.fromisoformat(f"{head}.{digits}").replace(tzinfo=UTC).timestamp()


def measure(tree: Path, url: str, rounds: int, compare_with: Path | None = None) -> dict[str, Any]:
    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(tree)}
    serve = subprocess.Popen(
        [sys.executable, str(HERE / "rules_compare.py"), "--serve", url, "--port", str(port)],
        env=env, cwd=tree, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    serve_ps = psutil.Process(serve.pid)
    peak_serve = 0
    t0 = time.perf_counter()
    endpoint = f"http://127.0.0.1:{port}/metrics"
    full = None
    while time.perf_counter() - t0 < 1800:
        peak_serve = max(peak_serve, rss_tree(serve_ps))
        try:
            body = urlopen(endpoint, timeout=60).read()
        except OSError:
            body = b""
        if b"\natmfleet_day_scheduled_seconds{" in body and b"\natmfleet_lowyield_devices{" in body:
            full = time.perf_counter() - t0
            break
        time.sleep(1)
    tmp = Path(tempfile.mkdtemp(prefix="atmfleet-rules-"))
    shutil.copy(tree / "exporters" / "prometheus" / "atmfleet.rules.yml", tmp / "rules.yml")
    (tmp / "prometheus.yml").write_text(
        json.dumps(
            {
                "global": {"scrape_interval": "60s", "evaluation_interval": "60s"},
                "rule_files": ["rules.yml"],
                "scrape_configs": [
                    {
                        "job_name": "atmfleet",
                        "scrape_timeout": "50s",
                        "static_configs": [{"targets": [f"127.0.0.1:{port}"]}],
                    }
                ],
            }
        )
    )
    prom_port = free_port()
    prom_env = {**os.environ, **shipped_environment(tree)}  # that checkout's deploy/ drop-in
    prom = subprocess.Popen(
        [
            shutil.which("prometheus") or "/usr/bin/prometheus",
            f"--config.file={tmp / 'prometheus.yml'}",
            f"--storage.tsdb.path={tmp / 'data'}",
            f"--web.listen-address=127.0.0.1:{prom_port}",
        ],
        cwd=tmp, env=prom_env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    prom_ps = psutil.Process(prom.pid)
    base = f"http://127.0.0.1:{prom_port}"
    seen: dict[str, list[tuple[str, float]]] = {}
    peak_prom = 0
    peak_heap = 0.0
    try:
        deadline = time.perf_counter() + (rounds + 4) * 60 + 300
        while time.perf_counter() < deadline:
            time.sleep(3)
            peak_prom = max(peak_prom, prom_ps.memory_info().rss)
            peak_serve = max(peak_serve, rss_tree(serve_ps))
            try:
                heap = go_memory(base).get("go_memstats_heap_inuse_bytes", 0.0)
                peak_heap = max(peak_heap, heap)
                groups = get_json(f"{base}/api/v1/rules")["data"]["groups"]
            except (OSError, ValueError, KeyError):
                continue
            for g in groups:
                last = g.get("lastEvaluation", "")
                if last[:4] <= "2000":
                    continue
                got = seen.setdefault(g["name"], [])
                if not got or got[-1][0] != last:
                    got.append((last, float(g["evaluationTime"])))
            if seen and all(len(v) >= rounds + 2 for v in seen.values()):
                break

        def instant(query: str) -> float | None:
            res = get_json(f"{base}/api/v1/query?query={quote(query)}")["data"]["result"]
            return float(res[0]["value"][1]) if res else None

        scrape_s = instant('scrape_duration_seconds{job="atmfleet"}')
        samples = instant('scrape_samples_scraped{job="atmfleet"}')
        alerts = get_json(f"{base}/api/v1/query?query={quote('count by (alertstate) (ALERTS)')}")
        # What the head holds: series in all, and the families holding most of them.
        tsdb = get_json(f"{base}/api/v1/status/tsdb")["data"]
        head_series = tsdb["headStats"]["numSeries"]
        by_name = {e["name"]: e["value"] for e in tsdb["seriesCountByMetricName"]}
        same: dict[str, Any] = {}
        if compare_with is not None:
            try:
                same = same_results(base, compare_with, tmp / "rules.yml")
            except (OSError, ValueError, KeyError) as exc:  # the timings stand without it
                same = {"(comparison failed)": {"equal": False, "series": 0, "error": repr(exc)}}
    finally:
        for p in (prom, serve):
            p.terminate()
            try:
                p.wait(timeout=60)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        shutil.rmtree(tmp, ignore_errors=True)
    per_group = {name: [t for _at, t in v[2 : 2 + rounds]] for name, v in seen.items()}
    n = min((len(v) for v in per_group.values()), default=0)
    totals = [sum(v[i] for v in per_group.values()) for i in range(n)]
    return {
        "first_full_s": full,
        "groups": per_group,
        "round_s": totals,
        "scrape_s": scrape_s,
        "samples": samples,
        "alerts": {
            a["metric"].get("alertstate", ""): a["value"][1] for a in alerts["data"]["result"]
        },
        "same_results": same,
        "prometheus_rss_mib": peak_prom / 2**20,
        "prometheus_env": shipped_environment(tree),
        "prometheus_heap_inuse_mib": peak_heap / 2**20,
        "head_series": head_series,
        "head_series_by_name": by_name,
        "serve_rss_mib": peak_serve / 2**20,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--before", type=Path, help="checkout of the old code")
    parser.add_argument("--devices", type=int, default=100_000)
    parser.add_argument("--per-branch", type=int, default=3, help="devices per branch")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--admin-url", default="postgresql://postgres@127.0.0.1:5432/postgres")
    parser.add_argument(
        "--url", help="an already filled database to use (kept), instead of a fresh one"
    )
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
    from scratch import upgraded_database

    from atmfleet.store.migrate import Flavour
    from rules.config import load_rules

    rules = load_rules()
    got: dict[str, dict[str, Any]] = {}

    def both(url: str) -> None:
        old_rules = args.before.resolve() / "exporters" / "prometheus" / "atmfleet.rules.yml"
        for label, tree in (("before", args.before.resolve()), ("after", ROOT)):
            load = os.getloadavg()[0]
            got[label] = measure(tree, url, args.rounds, old_rules if label == "after" else None)
            got[label]["load"] = load
            print(f"  {label}: {json.dumps(got[label])}", flush=True)

    if args.url:
        both(args.url)
    else:
        with upgraded_database(args.admin_url, rules.timezone, Flavour.POSTGRES) as url:
            with psycopg.connect(url) as conn:
                fill(conn, args.devices, args.per_branch)
            both(url)
    b, a = got["before"], got["after"]
    print()
    print(f"{args.devices} devices, {args.per_branch} per branch")
    print(f"{'measure':<44} {'before':>10} {'after':>10} {'ratio':>7}")

    def line(name: str, x: float | None, y: float | None) -> None:
        ratio = f"{x / y:7.1f}" if x and y else "      –"
        fx = f"{x:10.2f}" if x is not None else f"{'–':>10}"
        fy = f"{y:10.2f}" if y is not None else f"{'–':>10}"
        print(f"{name:<44} {fx} {fy} {ratio}")

    def med(v: list[float]) -> float | None:
        return statistics.median(v) if v else None

    line("rule round, all groups, median (s)", med(b["round_s"]), med(a["round_s"]))
    line("rule round, all groups, worst (s)", max(b["round_s"], default=None),
         max(a["round_s"], default=None))  # fmt: skip
    for name in sorted(set(b["groups"]) | set(a["groups"])):
        line(f"  {name} (median, s)", med(b["groups"].get(name, [])),
             med(a["groups"].get(name, [])))  # fmt: skip
    line("prometheus peak RSS (MiB)", b["prometheus_rss_mib"], a["prometheus_rss_mib"])
    line("prometheus peak Go heap in use (MiB)", b["prometheus_heap_inuse_mib"],
         a["prometheus_heap_inuse_mib"])  # fmt: skip
    line("head series (/api/v1/status/tsdb)", b["head_series"], a["head_series"])
    names = sorted(set(b["head_series_by_name"]) | set(a["head_series_by_name"]),
                   key=lambda n: -max(b["head_series_by_name"].get(n, 0),
                                      a["head_series_by_name"].get(n, 0)))  # fmt: skip
    for name in names:
        line(f"  {name[:42]}", b["head_series_by_name"].get(name),
             a["head_series_by_name"].get(name))  # fmt: skip
    line("scrape duration (s)", b["scrape_s"], a["scrape_s"])
    line("samples scraped", b["samples"], a["samples"])
    line("serve first full exposition (s)", b["first_full_s"], a["first_full_s"])
    line("serve peak RSS with children (MiB)", b["serve_rss_mib"], a["serve_rss_mib"])
    line("load average at start", b["load"], a["load"])
    print(f"prometheus environment (deploy/prometheus/atmfleet.conf): before "
          f"{b['prometheus_env'] or '–'}, after {a['prometheus_env'] or '–'}")  # fmt: skip
    same = a["same_results"]
    print()
    print(
        "rules whose expression changed, the before and after expressions on the after run's"
        " data at one instant (collector gate off):"
    )
    for name, got_one in same.items():
        verdict = "equal" if got_one["equal"] else "DIFFERENT"
        print(f"  {name:<60} {verdict:>9} ({got_one['series']} series)")
    if not same:
        print("  none")


if __name__ == "__main__":
    main()
