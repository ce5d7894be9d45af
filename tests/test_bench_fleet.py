"""``bench/fleet.py``'s own pieces: the Prometheus it starts loads the shipped rules, and
the figures it prints say "–" for no data."""

from __future__ import annotations

import importlib
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
fleet: Any = importlib.import_module("fleet")


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool is not installed")
def test_prometheus_config_loads_the_shipped_rules(tmp_path: Path) -> None:
    conf = fleet.prometheus_config(tmp_path, 9310, [9311, 9312])
    out = subprocess.run(
        ["promtool", "check", "config", str(conf)], capture_output=True, text=True, check=False
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert "atmfleet.rules.yml" in out.stdout + out.stderr


def test_percentiles_and_no_data() -> None:
    assert fleet.pct([], 0.99) is None
    assert fleet.fmt(None) == "–"
    values = [float(i) for i in range(1, 101)]
    assert fleet.pct(values, 0.5) == 51.0
    assert fleet.pct(values, 0.99) == 100.0
    assert fleet.fmt(1.234) == "1.23s"


def test_the_bench_takes_the_priorities_of_the_shipped_units() -> None:
    got = fleet.shipped_priorities()
    assert set(got) == {"collector", "serve", "incidents", "prometheus"}
    for part, path in fleet.UNITS.items():
        text = (fleet.ROOT / path).read_text(encoding="utf-8")
        assert f"\nNice={got[part].nice}\n" in text
        assert f"\nCPUWeight={got[part].cpu_weight}\n" in text
    assert got["collector"].nice < got["serve"].nice


def test_a_unit_priority_is_read_from_its_service_section(tmp_path: Path) -> None:
    unit = tmp_path / "x.service"
    unit.write_text(
        "# Nice=7 in a comment\n[Unit]\nNice=3\n[Service]\nExecStart=/bin/true\n"
        "CPUWeight = 250\nNice=-4\n[Install]\nNice=9\n",
        encoding="utf-8",
    )
    assert fleet.unit_priority(unit) == fleet.Priority(-4, 250)
    assert fleet.unit_priority(tmp_path / "absent.service") == fleet.Priority(0, None)


def test_a_command_runs_at_an_absolute_nice_value() -> None:
    import os

    current = os.getpriority(os.PRIO_PROCESS, 0)
    assert fleet.niced(["x"], None) == ["x"]
    assert fleet.niced(["x"], current) == ["x"]
    assert fleet.niced(["x"], current + 3) == ["nice", "-n", "3", "x"]
    assert fleet.niced(["x"], current - 2) == ["nice", "-n", "-2", "x"]


def test_the_drain_waits_for_every_message_done() -> None:
    """A collector that has done every message and holds none is drained; one that holds
    none but is still behind (messages at the broker) is not."""
    from prometheus_client import CollectorRegistry, Counter, Gauge, start_http_server

    from app.embedded import free_port

    registry = CollectorRegistry()
    received = Counter("atmfleet_collector_messages_received", "", registry=registry)
    stored = Counter("atmfleet_collector_messages_stored", "", registry=registry)
    Gauge("atmfleet_collector_buffered_messages", "", registry=registry).set(0)
    port = free_port()
    server, thread = start_http_server(port, addr="127.0.0.1", registry=registry)
    try:
        store = fleet.Store("collector", "postgresql://unused", port)
        received.inc(5)
        stored.inc(3)
        assert fleet._drained(store) and store.done() == 3  # holds none, 2 still to come
        stored.inc(2)
        fleet.drain(store, 5, stall_s=60)  # returns: 5 of 5 done
        assert store.done() == 5
    finally:
        server.shutdown()
        thread.join(10)
