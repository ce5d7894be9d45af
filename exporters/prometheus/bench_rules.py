"""What the shipped rules cost a real Prometheus on a large fleet.

Serves a synthetic exposition of ``--devices`` devices, shaped as docs/metrics.md
specifies (four series per device, as ``atmfleet serve`` sends them by default, the
scheduled-down set, plus the day and fleet families) and a healthy
collector, lets a real ``prometheus`` scrape it and evaluate
``exporters/prometheus/atmfleet.rules.yml``, and prints each rule group's evaluation time
over several evaluations, the scrape's duration and size, and Prometheus's memory.

    python exporters/prometheus/bench_rules.py --devices 100000 --evaluations 4

Needs /usr/bin/prometheus (Debian's ``prometheus`` package). Nothing is asserted: the
figures are for reading.
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import psutil

RULES_FILE = Path(__file__).resolve().parent / "atmfleet.rules.yml"
STATES = (
    ("in_service", 0.955),
    ("degraded", 0.01),
    ("fault", 0.01),
    ("offline", 0.008),
    ("cash_out", 0.005),
    ("supervisor", 0.005),
    ("planned_maintenance", 0.002),
    ("closed", 0.005),
)
TYPES = ("atm", "crs", "deposit", "smart_teller", "passbook", "inquiry")
VENDORS = ("GRG", "Hyosung", "NCR", "Diebold", "Cashway")
PLACEMENTS = ("on_site", "off_site", "self_service_bank")


def fleet_exposition(devices: int, seed: int = 7) -> bytes:
    """The fleet part of an ``atmfleet serve`` answer for a synthetic fleet; branch 0 of
    sub-branch 0 has every device down."""
    rng = random.Random(seed)
    per_branch = 8
    branches = max(1, devices // per_branch)
    subbranches = 12
    lines: dict[str, list[str]] = {
        name: []
        for name in (
            "atmfleet_device_state",
            "atmfleet_device_cash_ratio",
            "atmfleet_device_scheduled_down",
            "atmfleet_device_scheduled_down_since_timestamp_seconds",
        )
    }
    scheduled_by_branch: dict[tuple[str, str, str], int] = {}
    devices_by_state: dict[tuple[str, str, str, str], int] = {}
    day: dict[tuple[str, ...], list[float]] = {}
    now = time.time()
    weights = [w for _s, w in STATES]
    names = [s for s, _w in STATES]
    for i in range(devices):
        b = i % branches
        sb = b % subbranches
        device, branch, subbranch = f"D{i:06d}", f"B{b:05d}", f"SB{sb:02d}"
        tier = str(1 + sb % 3)
        kind = TYPES[rng.randrange(len(TYPES))]
        vendor = VENDORS[rng.randrange(len(VENDORS))]
        placement = PLACEMENTS[rng.randrange(len(PLACEMENTS))]
        state = "fault" if b == 0 else rng.choices(names, weights)[0]
        up = 1 if state in ("in_service", "degraded") else 0
        window = 1 if b == 0 or rng.random() < 0.9 else 0
        route = (
            f'branch="{branch}",device="{device}",placement="{placement}",'
            f'subbranch="{subbranch}",tier="{tier}",type="{kind}",vendor="{vendor}"'
        )
        rng.randrange(9)  # the model (atmfleet_device_info, --full only): the same fleet
        # The lean exposition: the state carries the routing labels (no up series).
        lines["atmfleet_device_state"].append(f'atmfleet_device_state{{{route},state="{state}"}} 1')
        # What atmfleet serve derives from the window and the state (exporters/metrics.py).
        if window and state not in ("planned_maintenance", "unknown"):
            key = (branch, subbranch, tier)
            scheduled_by_branch[key] = scheduled_by_branch.get(key, 0) + 1
            if not up:
                lines["atmfleet_device_scheduled_down"].append(
                    f"atmfleet_device_scheduled_down{{{route}}} 1"
                )
                lines["atmfleet_device_scheduled_down_since_timestamp_seconds"].append(
                    f"atmfleet_device_scheduled_down_since_timestamp_seconds"
                    f'{{{route},state="{state}"}} {now - 3600:.3f}'
                )
        skey = (subbranch, tier, kind, state)
        devices_by_state[skey] = devices_by_state.get(skey, 0) + 1
        if kind in ("atm", "crs"):
            lines["atmfleet_device_cash_ratio"].append(
                f'atmfleet_device_cash_ratio{{device="{device}"}} {rng.random():.3f}'
            )
        key = (branch, subbranch, tier)
        scheduled, available = day.setdefault(key, [0.0, 0.0])
        day[key] = [scheduled + 36000, available + (36000 if up else 30000)]
    out: list[str] = []
    for name, rows in lines.items():
        out.append(f"# TYPE {name} gauge")
        out.extend(rows)
    for metric, index in (
        ("atmfleet_day_scheduled_seconds", 0),
        ("atmfleet_day_available_seconds", 1),
    ):
        out.append(f"# TYPE {metric} gauge")
        for (branch, subbranch, tier), values in day.items():
            for view in ("business", "technical"):
                out.append(
                    f'{metric}{{branch="{branch}",subbranch="{subbranch}",tier="{tier}",'
                    f'view="{view}"}} {values[index]}'
                )
    out.append("# TYPE atmfleet_branch_scheduled_devices gauge")
    for (branch, subbranch, tier), n in scheduled_by_branch.items():
        out.append(
            f'atmfleet_branch_scheduled_devices{{branch="{branch}",subbranch="{subbranch}",'
            f'tier="{tier}"}} {n}'
        )
    out.append("# TYPE atmfleet_devices gauge")
    for (subbranch, tier, kind, state), n in devices_by_state.items():
        out.append(
            f'atmfleet_devices{{state="{state}",subbranch="{subbranch}",tier="{tier}",'
            f'type="{kind}"}} {n}'
        )
    out.append("# TYPE atmfleet_uptime_target_ratio gauge")
    out.extend(f'atmfleet_uptime_target_ratio{{tier="{t}"}} 0.97' for t in "123")
    out.append("# TYPE atmfleet_exporter_database_up gauge")
    out.append("atmfleet_exporter_database_up 1")
    return ("\n".join(out) + "\n").encode()


def collector_exposition() -> bytes:
    return (
        "# TYPE atmfleet_collector_last_commit_timestamp_seconds gauge\n"
        f"atmfleet_collector_last_commit_timestamp_seconds {time.time():.3f}\n"
        "# TYPE atmfleet_collector_mqtt_connected gauge\n"
        "atmfleet_collector_mqtt_connected 1\n"
        "# TYPE atmfleet_collector_lag_seconds gauge\n"
        "atmfleet_collector_lag_seconds 0.4\n"
    ).encode()


def serve(fleet: bytes) -> ThreadingHTTPServer:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = fleet if self.path.startswith("/fleet") else collector_exposition()
            self.send_response(200)
            self.send_header("Content-Type", "text/plain; version=0.0.4")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def get_json(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=30) as response:
        return json.loads(response.read())


def instant(base: str, query: str) -> list[dict[str, Any]]:
    data = get_json(f"{base}/api/v1/query?query={urllib.parse.quote(query)}")
    result: list[dict[str, Any]] = data["data"]["result"]
    return result


def evaluations(base: str, rounds: int, timeout: float) -> Iterator[dict[str, float]]:
    """Each group's evaluationTime (s), once per new evaluation round of every group."""
    seen: dict[str, str] = {}
    done = 0
    deadline = time.monotonic() + timeout
    while done < rounds and time.monotonic() < deadline:
        try:
            groups = get_json(f"{base}/api/v1/rules")["data"]["groups"]
        except OSError:  # not listening yet
            time.sleep(0.5)
            continue
        stamps = {g["name"]: g["lastEvaluation"] for g in groups}
        if (
            stamps
            and all(not s.startswith("0001") for s in stamps.values())
            and all(seen.get(n) != s for n, s in stamps.items())
        ):
            seen = stamps
            done += 1
            print(f"  evaluation round {done} of {rounds}", file=sys.stderr, flush=True)
            yield {g["name"]: float(g["evaluationTime"]) for g in groups}
        time.sleep(0.5)


def _expression_times(base: str) -> list[tuple[str, float, int]]:
    """(rule, best-of-3 milliseconds, result series) for every rule's expression."""
    import yaml

    groups = yaml.safe_load(RULES_FILE.read_text(encoding="utf-8"))["groups"]
    out = []
    for group in groups:
        for rule in group["rules"]:
            best = float("inf")
            series = 0
            for _ in range(3):
                started = time.perf_counter()
                series = len(instant(base, rule["expr"]))
                best = min(best, time.perf_counter() - started)
            out.append((rule.get("alert") or rule["record"], best * 1000, series))
    return out


def _stats(values: list[float]) -> str:
    return f"{min(values):9.1f} / {statistics.median(values):9.1f} / {max(values):9.1f}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--devices", type=int, default=100_000)
    parser.add_argument("--evaluations", type=int, default=4)
    parser.add_argument("--interval", type=int, default=15, help="scrape/evaluation seconds")
    parser.add_argument(
        "--per-expression",
        action="store_true",
        help="also time each rule's expression as a single query",
    )
    args = parser.parse_args(argv)
    binary = shutil.which("prometheus")
    if binary is None:
        print("prometheus is not installed (Debian: apt-get install prometheus)", file=sys.stderr)
        return 2

    started = time.perf_counter()
    fleet = fleet_exposition(args.devices)
    lines = fleet.count(b"\n")
    print(
        f"exposition: {args.devices} devices, {lines} lines, "
        f"{len(fleet) / 1e6:.1f} MB, generated in {time.perf_counter() - started:.1f} s"
    )
    server = serve(fleet)
    target = f"127.0.0.1:{server.server_address[1]}"
    with tempfile.TemporaryDirectory(prefix="atmfleet-bench-") as tmp:
        config = Path(tmp) / "prometheus.yml"
        config.write_text(
            json.dumps(
                {
                    "global": {
                        "scrape_interval": f"{args.interval}s",
                        "evaluation_interval": f"{args.interval}s",
                    },
                    "rule_files": [str(RULES_FILE)],
                    "scrape_configs": [
                        {
                            "job_name": "atmfleet",
                            "metrics_path": "/fleet",
                            "scrape_timeout": f"{args.interval - 1}s",
                            "static_configs": [{"targets": [target]}],
                        },
                        {
                            "job_name": "atmfleet-collector",
                            "static_configs": [{"targets": [target]}],
                        },
                    ],
                }
            ),
            encoding="utf-8",
        )
        port = free_port()
        base = f"http://127.0.0.1:{port}"
        proc = subprocess.Popen(
            [
                binary,
                f"--config.file={config}",
                f"--storage.tsdb.path={tmp}/data",
                f"--web.listen-address=127.0.0.1:{port}",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            # The first two rounds warm up (the first may even run before the first scrape).
            rounds = list(
                evaluations(base, args.evaluations + 2, timeout=args.interval * 30 + 120)
            )[2:]
            expressions = _expression_times(base) if args.per_expression else []
            scrape = instant(base, 'scrape_duration_seconds{job="atmfleet"}')
            samples = instant(base, 'scrape_samples_scraped{job="atmfleet"}')
            alerts = instant(base, "count by (alertname, alertstate) (ALERTS)")
            rss = psutil.Process(proc.pid).memory_info().rss
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            server.shutdown()
    if not rounds:
        print("no rule evaluation observed", file=sys.stderr)
        return 1
    print(f"\nrule group evaluation time over {len(rounds)} evaluations (ms): min / median / max")
    for name in sorted(rounds[0]):
        times = [r[name] * 1000 for r in rounds]
        print(f"  {name:36s} {_stats(times)}")
    print(f"  {'all groups':36s} {_stats([sum(r.values()) * 1000 for r in rounds])}")
    if scrape and samples:
        print(
            f"\nscrape of the fleet: {float(scrape[0]['value'][1]):.2f} s, "
            f"{int(float(samples[0]['value'][1]))} samples"
        )
    print(f"prometheus resident memory: {rss / 2**20:.0f} MiB")
    if expressions:
        print("each rule's expression as one instant query (ms, best of 3), slowest first:")
        for name, ms, series in sorted(expressions, key=lambda e: -e[1]):
            print(f"  {name:56s} {ms:9.1f}  {series:7d} series")
    print("alerts (pending/firing):")
    for a in alerts:
        m = a["metric"]
        print(f"  {m['alertname']:32s} {m['alertstate']:8s} {a['value'][1]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
