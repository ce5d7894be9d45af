"""Memory of the collector draining a backlog of oversized payloads (all refused as
``too_large``): the peak and the final RSS of `atmfleet collect` and of its store worker.

    python bench/oversized.py [COUNT] [SIZE_KIB]      # default 1500 payloads of 1024 KiB

Needs PostgreSQL (ATMFLEET_TEST_PG_URL, default postgresql://postgres@127.0.0.1:5432/postgres)
and the mosquitto binary. A throw-away database and a private Mosquitto; the backlog is
queued for the collector's persistent session while it is stopped, then drained by a new
run while its memory is sampled every 50 ms.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import paho.mqtt.client as mqtt
import psutil
import psycopg
from bench_collector import start_broker
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion
from scratch import upgraded_database

from atmfleet.protocol import device_topic

ADMIN = os.environ.get("ATMFLEET_TEST_PG_URL", "postgresql://postgres@127.0.0.1:5432/postgres")


def collect(env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    out = log.open("ab")
    return subprocess.Popen(
        [sys.executable, "-m", "app.cli", "collect"], env=env, stdout=out, stderr=out
    )


def dead_letters(url: str) -> int:
    with psycopg.connect(url) as conn:
        row = conn.execute("SELECT count(*) FROM dead_letters").fetchone()
    return int(row[0]) if row else 0


def runs(url: str) -> int:
    with psycopg.connect(url) as conn:
        row = conn.execute("SELECT count(*) FROM collector_runs").fetchone()
    return int(row[0]) if row else 0


def main() -> None:
    count = int(sys.argv[1]) if len(sys.argv) > 1 else 1500
    size = (int(sys.argv[2]) if len(sys.argv) > 2 else 1024) * 1024
    folder = Path(tempfile.mkdtemp())
    broker, port = start_broker(folder)
    try:
        with upgraded_database(ADMIN) as url:
            env = {
                **os.environ,
                "ATMFLEET_MQTT_URL": f"mqtt://127.0.0.1:{port}",
                "ATMFLEET_DATABASE_URL": url,
                "ATMFLEET_COLLECTOR__CLIENT_ID": "bench-oversized",
                "ATMFLEET_COLLECTOR__SESSION_EXPIRY_S": "600",
            }
            first = collect(env, folder / "collector.log")
            while runs(url) == 0:  # registered; subscribed a moment later
                time.sleep(0.1)
            time.sleep(2)
            first.send_signal(signal.SIGTERM)
            first.wait(60)
            pub = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=MQTTProtocolVersion.MQTTv5)
            pub.connect("127.0.0.1", port)
            pub.loop_start()
            payload = b"x" * size
            infos = [
                pub.publish(device_topic("ATM-BIG", "state"), payload, qos=1) for _ in range(count)
            ]
            for info in infos:
                info.wait_for_publish(600)
            pub.disconnect()
            pub.loop_stop()
            print(f"queued {count} payloads of {size // 1024} KiB at the broker")
            started = time.perf_counter()
            second = collect(env, folder / "collector.log")
            proc = psutil.Process(second.pid)
            peak_main = peak_total = 0
            while dead_letters(url) < count:
                try:
                    main_rss = proc.memory_info().rss
                    total = main_rss + sum(c.memory_info().rss for c in proc.children())
                except psutil.Error:
                    continue
                peak_main, peak_total = max(peak_main, main_rss), max(peak_total, total)
                time.sleep(0.05)
            elapsed = time.perf_counter() - started
            final_main = proc.memory_info().rss
            final_total = final_main + sum(c.memory_info().rss for c in proc.children())
            second.send_signal(signal.SIGTERM)
            code = second.wait(60)
            mib = 1024 * 1024
            print(f"dead-lettered {count} (too_large) in {elapsed:.1f} s; exit {code}")
            print(
                f"collector RSS: peak {peak_main / mib:.0f} MiB, after {final_main / mib:.0f} MiB"
            )
            print(
                f"collector + store worker RSS: peak {peak_total / mib:.0f} MiB, "
                f"after {final_total / mib:.0f} MiB"
            )
    finally:
        broker.terminate()
        broker.wait(10)


if __name__ == "__main__":
    main()
