"""Collector throughput: the writer alone, and a broker backlog drained end to end.

    python bench/bench_collector.py [MESSAGES]      # default 100000

Needs PostgreSQL (ATMFLEET_TEST_PG_URL, default postgresql://postgres@127.0.0.1:5432/postgres)
and the mosquitto binary. Creates a throw-away database and a private Mosquitto, and prints:
- writer: rows/s of BatchWriter.write (binary COPY + ON CONFLICT) in batches of 5000, and of
  writing the same batches again (all duplicates: the redelivery path);
- end to end: MESSAGES state messages from 1000 devices queued at the broker for the
  collector's persistent session, then the time for `Collector` to store and ack them all,
  the most messages it held at once, and how often it had to reconnect to the broker
  (BENCH_KEEPALIVE_S sets the keep-alive, default 30).
"""

from __future__ import annotations

import getpass
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import paho.mqtt.client as mqtt
import psycopg
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion
from prometheus_client import CollectorRegistry

from atmfleet.protocol import StateMessage, device_topic, encode
from atmfleet.settings import CollectorSettings, Settings
from atmfleet.store.migrate import upgrade
from atmfleet.store.writer import Accepted, BatchWriter
from collector.service import Collector
from collector.stats import CollectorStats

ADMIN = os.environ.get("ATMFLEET_TEST_PG_URL", "postgresql://postgres@127.0.0.1:5432/postgres")


def new_database() -> str:
    name = f"atmfleet_bench_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(ADMIN, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"'.encode())
    url = ADMIN.rsplit("/", 1)[0] + "/" + name
    with psycopg.connect(url, autocommit=True) as conn:
        upgrade(conn)
    return url


def drop_database(url: str) -> None:
    name = url.rsplit("/", 1)[1]
    with psycopg.connect(ADMIN, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'.encode())


def messages(n: int, devices: int = 1000) -> list[StateMessage]:
    ts = datetime.now(UTC) - timedelta(minutes=1)
    return [
        StateMessage(
            v=1, device_id=f"bench-{i % devices:04d}", ts=ts + timedelta(milliseconds=i),
            seq=i // devices, state="in_service", components={"cdm": "ok", "idc": "ok"},
        )
        for i in range(n)
    ]  # fmt: skip


def bench_writer(msgs: list[StateMessage]) -> None:
    url = new_database()
    try:
        with psycopg.connect(url) as conn:
            writer = BatchWriter(conn, "bench")
            for label in ("new rows", "redelivered (duplicates)"):
                # A redelivered message is received anew: same payload, later received_at.
                now = datetime.now(UTC)
                records = [
                    Accepted(m, now, device_topic(m.device_id, "state"), encode(m)) for m in msgs
                ]
                batches = [records[i : i + 5000] for i in range(0, len(records), 5000)]
                started = time.perf_counter()
                for batch in batches:
                    writer.write(batch)
                elapsed = time.perf_counter() - started
                print(f"writer, {label}: {len(records)} in {elapsed:.2f} s = "
                      f"{len(records) / elapsed:,.0f} rows/s")  # fmt: skip
    finally:
        drop_database(url)


def start_broker(folder: Path) -> tuple[subprocess.Popen[bytes], int]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = int(s.getsockname()[1])
    user = f"user {getpass.getuser()}\n" if os.geteuid() == 0 else ""
    conf = folder / "mosquitto.conf"
    conf.write_text(
        f"listener {port} 127.0.0.1\nallow_anonymous true\nmax_queued_messages 0\n{user}"
    )
    binary = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
    proc = subprocess.Popen([binary, "-c", str(conf)], stderr=subprocess.DEVNULL)
    for _ in range(100):
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            return proc, port
        except OSError:
            time.sleep(0.05)
    raise SystemExit("mosquitto did not start")


def bench_end_to_end(msgs: list[StateMessage]) -> None:
    url = new_database()
    proc, port = start_broker(Path(tempfile.mkdtemp()))
    try:
        settings = Settings(
            mqtt_url=f"mqtt://127.0.0.1:{port}",
            database_url=url,
            collector=CollectorSettings(
                session_expiry_s=600, keepalive_s=int(os.environ.get("BENCH_KEEPALIVE_S", "30"))
            ),
        )

        def collector() -> tuple[Collector, CollectorRegistry]:
            registry = CollectorRegistry()
            return Collector(settings, CollectorStats(registry), client_id="bench"), registry

        stop = threading.Event()
        first, _ = collector()
        thread = threading.Thread(target=first.run, args=(stop,))
        thread.start()
        first.connected.wait(10)
        stop.set()
        thread.join()
        pub = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=MQTTProtocolVersion.MQTTv5)
        pub.max_inflight_messages_set(2000)
        pub.connect("127.0.0.1", port)
        pub.loop_start()
        started = time.perf_counter()
        for i in range(0, len(msgs), 1000):
            infos = [
                pub.publish(device_topic(m.device_id, "state"), encode(m), qos=1)
                for m in msgs[i : i + 1000]
            ]
            for info in infos:
                info.wait_for_publish(120)
        print(f"publishing {len(msgs)} (one paho client): {time.perf_counter() - started:.2f} s")
        pub.disconnect()
        pub.loop_stop()

        second, registry = collector()
        stop = threading.Event()
        thread = threading.Thread(target=second.run, args=(stop,))
        peak = 0.0
        started = time.perf_counter()
        thread.start()
        while True:
            stored = registry.get_sample_value(
                "atmfleet_collector_messages_stored_total", {"kind": "state"}
            )
            peak = max(peak, registry.get_sample_value("atmfleet_collector_buffered_messages") or 0)
            if stored and stored >= len(msgs):
                break
            time.sleep(0.01)
        elapsed = time.perf_counter() - started
        connects = registry.get_sample_value("atmfleet_collector_mqtt_connects_total") or 0
        stop.set()
        thread.join()
        print(f"end to end, backlog drained: {len(msgs)} in {elapsed:.2f} s = "
              f"{len(msgs) / elapsed:,.0f} msg/s (stored and acknowledged); "
              f"most held at once: {peak:,.0f} (max_inflight {settings.collector.max_inflight}); "
              f"reconnects: {connects - 1:.0f} (keep-alive {settings.collector.keepalive_s} s)")  # fmt: skip
    finally:
        proc.terminate()
        drop_database(url)


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 100_000
    msgs = messages(n)
    bench_writer(msgs)
    bench_end_to_end(msgs)


if __name__ == "__main__":
    main()
