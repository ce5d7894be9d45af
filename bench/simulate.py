"""Simulator figures: generation rate, sustained publish rate with 100,000 devices, and the
wall time of ``atmfleet simulate --backfill 30`` for 1,000 devices.

    python bench/simulate.py [--devices 100000] [--publish-seconds 60]
                             [--backfill-devices 1000] [--backfill-days 30]
                             [--mqtt-url mqtt://127.0.0.1:1883]
    git worktree add /tmp/sim-before main
    python bench/simulate.py --before /tmp/sim-before [...]     # BEFORE and AFTER side by side

By default a private Mosquitto (the ``mosquitto`` binary, default settings, a free port) is
started so the flood never reaches other users of a shared broker; ``--mqtt-url`` measures
an existing broker instead. Prints one line per figure.

With ``--before CHECKOUT`` every figure is measured twice, one run after the other, in
child processes with that checkout (BEFORE) or this one (AFTER) first on ``PYTHONPATH``:
generation in-process; the publish rate and the backfill through each tree's own
``atmfleet simulate`` (its default connections and processes), the publish run stopped
with SIGTERM after ``--publish-seconds``. The RSS of a command is its process tree's,
sampled every 0.2 s: the sum, and the largest process.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import os
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psutil

from atmfleet.settings import Settings
from simulator.config import SimConfig
from simulator.engine import generate
from simulator.fleet import generate_inventory
from simulator.publisher import DEFAULT_POOL, FleetPublisher

HERE = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def start_mosquitto(workdir: Path) -> tuple[subprocess.Popen[bytes], str]:
    binary = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
    port = free_port()
    conf = workdir / "mosquitto.conf"
    conf.write_text(f"listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n")
    proc = subprocess.Popen(
        [binary, "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return proc, f"mqtt://127.0.0.1:{port}"
        except OSError:
            time.sleep(0.05)
    proc.terminate()
    raise SystemExit("mosquitto did not start")


def rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def bench_generation(devices: int, messages: int) -> None:
    inv = generate_inventory(devices, seed=1)
    start = datetime(2026, 11, 2, tzinfo=UTC)
    t0 = time.perf_counter()
    it = generate(inv, SimConfig(), 1, start, start + timedelta(days=30))
    first = next(it)
    setup = time.perf_counter() - t0
    t1 = time.perf_counter()
    n = 0
    last_t = first.t
    for e in it:
        n += 1
        last_t = e.t
        if n >= messages:
            break
    seconds = time.perf_counter() - t1
    print(
        f"generation: {devices:,} devices, set-up {setup:.1f}s, then {n:,} messages in "
        f"{seconds:.1f}s = {n / seconds:,.0f} msgs/s (simulated up to "
        f"{(last_t - first.t) / 1000:.0f}s after start); peak RSS {rss_mb():,.0f} MB"
    )


def bench_publish(devices: int, seconds: float, url: str) -> None:
    inv = generate_inventory(devices, seed=1, prefix="bench-")
    start = datetime.now(UTC) - timedelta(days=1)
    stop = threading.Event()
    publisher = FleetPublisher(
        Settings(mqtt_url=url),
        per_device=False,
        pool_size=DEFAULT_POOL,
        client_prefix="bench",
        stop=stop,
    )
    branch_of = {d.id: d.branch for d in inv.devices}.__getitem__
    t0 = time.perf_counter()
    emissions = generate(inv, SimConfig(), 1, start, start + timedelta(days=1))
    first = next(emissions)  # every device's state machine is set up here
    setup = time.perf_counter() - t0
    timer = threading.Timer(seconds, stop.set)
    timer.start()
    stats = publisher.run(itertools.chain([first], emissions), branch_of=branch_of)
    timer.cancel()
    print(
        f"publish: {devices:,} devices (set-up {setup:.0f}s) over {stats.connections} "
        f"gateway connections, QoS 1: "
        f"{stats.published:,} messages acknowledged in {stats.seconds:.1f}s = "
        f"{stats.rate:,.0f} msgs/s sustained; peak RSS {rss_mb():,.0f} MB"
    )


def bench_backfill(devices: int, days: int, url: str, workdir: Path) -> None:
    ledger = workdir / "ledger"
    cmd = [
        sys.executable, "-m", "app.cli", "simulate", "--devices", str(devices),
        "--backfill", str(days), "--mqtt-url", url, "--ledger", str(ledger),
        "--id-prefix", "bf-",
    ]  # fmt: skip
    t0 = time.perf_counter()
    out = subprocess.run(cmd, capture_output=True, text=True, check=False)
    seconds = time.perf_counter() - t0
    if out.returncode != 0:
        raise SystemExit(f"backfill failed: {out.stderr.strip()}")
    size = sum(p.stat().st_size for p in ledger.rglob("*") if p.is_file()) / 1e6
    print(
        f"backfill: `atmfleet simulate --devices {devices} --backfill {days}` took "
        f"{seconds:.0f}s wall ({out.stdout.strip()}); ledger {size:,.0f} MB"
    )


# ---------------------------------------------------------------- before / after, side by side

GENERATE_CHILD = r"""
import hashlib, json, resource, sys, time
from datetime import UTC, datetime, timedelta
from simulator.config import SimConfig
from simulator.engine import generate
from simulator.fleet import generate_inventory
devices, messages = int(sys.argv[1]), int(sys.argv[2])
inv = generate_inventory(devices, seed=1)
start = datetime(2026, 11, 2, tzinfo=UTC)
t0 = time.perf_counter()
it = generate(inv, SimConfig(), 1, start, start + timedelta(days=30))
first = next(it)
setup = time.perf_counter() - t0
# Every device is up (born) within one heartbeat (60 s) of device time from the start.
all_up = int(start.timestamp() * 1000) + 60_000
up_s = None
# Every field of every message, in order, hashed (the time spent hashing is left out).
digest = hashlib.sha256()
hashing = 0.0
def fold(e):
    global hashing
    h0 = time.perf_counter()
    digest.update(repr((*e[:4], int(e[4]), *e[5:])).encode())
    hashing += time.perf_counter() - h0
fold(first)
t1 = time.perf_counter()
n = 0
for e in it:
    n += 1
    fold(e)
    if up_s is None and e.t >= all_up:
        up_s = time.perf_counter() - t0 - hashing
    if n >= messages:
        break
print(json.dumps({"setup_s": setup, "up_s": up_s, "rate": n / (time.perf_counter() - t1 - hashing),
                  "rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                  "sha256": digest.hexdigest(), "messages": n + 1}))
"""


def _tree_rss(proc: psutil.Process) -> tuple[float, float]:
    """(sum, largest) resident MiB of a process and its descendants."""
    sizes = []
    for p in [proc, *proc.children(recursive=True)]:
        with contextlib.suppress(psutil.Error):
            sizes.append(p.memory_info().rss / 2**20)
    return sum(sizes), max(sizes, default=0.0)


def run_measured(
    cmd: list[str], tree: Path, stop_after: float | None = None
) -> tuple[subprocess.CompletedProcess[str], float, float, float]:
    """Run ``cmd`` in ``tree``; (result, wall s, peak RSS sum MiB, peak largest MiB).
    ``stop_after``: send SIGTERM this many seconds after the command's first line on
    stderr (``simulating ...``: its signal handler is in place, so a live run stops
    cleanly however long a loaded machine took to get there)."""
    env = {**os.environ, "PYTHONPATH": str(tree)}
    t0 = time.perf_counter()
    popen = subprocess.Popen(
        cmd, env=env, cwd=tree, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    err_lines: list[str] = []
    started: list[float] = []

    def read_stderr() -> None:
        assert popen.stderr is not None
        for line in popen.stderr:
            if not started:
                started.append(time.perf_counter())
            err_lines.append(line)

    reader = threading.Thread(target=read_stderr, daemon=True)
    reader.start()
    proc = psutil.Process(popen.pid)
    peak_sum = peak_max = 0.0
    stopped = False
    while popen.poll() is None:
        total, largest = _tree_rss(proc)
        peak_sum, peak_max = max(peak_sum, total), max(peak_max, largest)
        if (stop_after is not None and not stopped and started
                and time.perf_counter() - started[0] > stop_after):  # fmt: skip
            popen.send_signal(signal.SIGTERM)
            stopped = True
        time.sleep(0.2)
    assert popen.stdout is not None
    out = popen.stdout.read()
    reader.join()
    seconds = time.perf_counter() - t0
    result = subprocess.CompletedProcess(cmd, popen.returncode, out, "".join(err_lines))
    return result, seconds, peak_sum, peak_max


def _rate(stdout: str) -> float | None:
    """msgs/s from ``published N messages in Xs: R msgs/s ...``."""
    for line in stdout.splitlines():
        if line.startswith("published") and " msgs/s" in line:
            return float(line.split(": ")[1].split(" msgs/s")[0].replace(",", ""))
    return None


def row(name: str, before: float | None, after: float | None, fmt: str = "{:,.1f}") -> None:
    def f(v: float | None) -> str:
        return "–" if v is None else fmt.format(v)

    ratio = "–" if not before or after is None else f"{after / before:.2f}x"
    print(f"{name:<58} {f(before):>12} {f(after):>12} {ratio:>8}", flush=True)


def compare(args: argparse.Namespace, url: str, workdir: Path) -> None:
    trees = {"before": args.before.resolve(), "after": HERE}
    print(f"{'':<58} {'BEFORE':>12} {'AFTER':>12} {'ratio':>8}", flush=True)
    if "generate" not in args.skip:
        got = {}
        for k, tree in trees.items():
            cmd = [sys.executable, "-c", GENERATE_CHILD, str(args.devices),
                   str(args.generate_messages)]  # fmt: skip
            res, *_ = run_measured(cmd, tree)
            if res.returncode != 0:
                raise SystemExit(f"{tree}: {res.stderr.strip()[-2000:]}")
            got[k] = json.loads(res.stdout.strip().splitlines()[-1])
        b, a = got["before"], got["after"]
        label = f"generation, {args.devices:,} devices"
        row(f"{label}: set-up to first message (s)", b["setup_s"], a["setup_s"])
        row(f"{label}: all up, 60 s of device time (s)", b["up_s"], a["up_s"])
        row(f"{label}: msgs/s (one process)", b["rate"], a["rate"], "{:,.0f}")
        row(f"{label}: peak RSS (MiB)", b["rss_mb"], a["rss_mb"], "{:,.0f}")
        same = "equal" if b["sha256"] == a["sha256"] else "DIFFERENT"
        print(
            f"{label}: sha256 of every field of the first {a['messages']:,} messages: "
            f"{same} (before {b['sha256'][:16]}, after {a['sha256'][:16]})",
            flush=True,
        )
    if "publish" not in args.skip:
        got = {}
        start = (datetime.now(UTC) - timedelta(hours=12)).strftime("%Y-%m-%dT%H:%M:%SZ")
        for k, tree in trees.items():
            cmd = [sys.executable, "-m", "app.cli", "simulate", "--devices", str(args.devices),
                   "--start", start, "--speed", "1000000", "--duration", "1d",
                   "--mqtt-url", url, "--id-prefix", f"pub{k[0]}-"]  # fmt: skip
            res, wall, rss_sum, rss_max = run_measured(cmd, tree, stop_after=args.publish_seconds)
            if res.returncode != 0:
                raise SystemExit(f"{tree}: exit {res.returncode}: {res.stderr.strip()[-2000:]}")
            got[k] = (_rate(res.stdout), rss_sum, rss_max, res.stderr.strip().splitlines()[0])
        b, a = got["before"], got["after"]
        label = f"publish, {args.devices:,} devices, {args.publish_seconds:.0f} s"
        row(f"{label}: msgs/s acknowledged", b[0], a[0], "{:,.0f}")
        row(f"{label}: peak RSS, all processes (MiB)", b[1], a[1], "{:,.0f}")
        row(f"{label}: peak RSS, largest process (MiB)", b[2], a[2], "{:,.0f}")
        print(f"  before: {b[3]}\n  after:  {a[3]}")
    if "backfill" not in args.skip:
        got = {}
        for k, tree in trees.items():
            ledger = workdir / f"ledger-{k}"
            cmd = [sys.executable, "-m", "app.cli", "simulate",
                   "--devices", str(args.backfill_devices), "--backfill", str(args.backfill_days),
                   "--mqtt-url", url, "--ledger", str(ledger), "--id-prefix", f"bf{k[0]}-"]  # fmt: skip
            res, wall, rss_sum, rss_max = run_measured(cmd, tree)
            if res.returncode != 0:
                raise SystemExit(f"{tree}: {res.stderr.strip()[-2000:]}")
            summary = json.loads((ledger / "summary.json").read_text())
            got[k] = (wall, summary["messages"], _rate(res.stdout), rss_sum)
        b, a = got["before"], got["after"]
        label = f"backfill, {args.backfill_devices:,} devices x {args.backfill_days:g} d"
        row(f"{label}: wall (s)", b[0], a[0])
        row(f"{label}: messages", b[1], a[1], "{:,.0f}")
        row(f"{label}: msgs/s acknowledged", b[2], a[2], "{:,.0f}")
        row(f"{label}: peak RSS, all processes (MiB)", b[3], a[3], "{:,.0f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", type=int, default=100_000)
    parser.add_argument("--generate-messages", type=int, default=1_000_000)
    parser.add_argument("--publish-seconds", type=float, default=60)
    parser.add_argument("--backfill-devices", type=int, default=1000)
    parser.add_argument("--backfill-days", type=float, default=30)
    parser.add_argument("--before", type=Path, default=None, help="checkout of the old code")
    parser.add_argument("--mqtt-url", default=None)
    parser.add_argument(
        "--skip", action="append", default=[], choices=["generate", "publish", "backfill"]
    )
    args = parser.parse_args()
    # SIGTERM unwinds like Ctrl-C, so the private broker is stopped and the folder removed.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    with tempfile.TemporaryDirectory(prefix="atmfleet-bench-") as tmp:
        workdir = Path(tmp)
        proc = None
        url = args.mqtt_url
        if url is None:
            proc, url = start_mosquitto(workdir)
        try:
            if args.before is not None:
                compare(args, url, workdir)
            else:
                if "generate" not in args.skip:
                    bench_generation(args.devices, args.generate_messages)
                if "publish" not in args.skip:
                    bench_publish(args.devices, args.publish_seconds, url)
                if "backfill" not in args.skip:
                    bench_backfill(args.backfill_devices, args.backfill_days, url, workdir)
        finally:
            if proc is not None:
                proc.terminate()
                proc.wait(10)
    print(f"cpus: {os.cpu_count()}; load: {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
