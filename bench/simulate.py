"""Simulator figures: generation rate, sustained publish rate with 100,000 devices, and the
wall time of ``atmfleet simulate --backfill 30`` for 1,000 devices.

    python bench/simulate.py [--devices 100000] [--publish-seconds 60]
                             [--backfill-devices 1000] [--backfill-days 30]
                             [--mqtt-url mqtt://127.0.0.1:1883]

By default a private Mosquitto (the ``mosquitto`` binary, default settings, a free port) is
started so the flood never reaches other users of a shared broker; ``--mqtt-url`` measures
an existing broker instead. Prints one line per figure.
"""

from __future__ import annotations

import argparse
import itertools
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

from atmfleet.settings import Settings
from simulator.config import SimConfig
from simulator.engine import generate
from simulator.fleet import generate_inventory
from simulator.publisher import DEFAULT_POOL, FleetPublisher


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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", type=int, default=100_000)
    parser.add_argument("--generate-messages", type=int, default=1_000_000)
    parser.add_argument("--publish-seconds", type=float, default=60)
    parser.add_argument("--backfill-devices", type=int, default=1000)
    parser.add_argument("--backfill-days", type=int, default=30)
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
    print(f"cpus: {os.cpu_count()}")


if __name__ == "__main__":
    main()
