"""Through the real broker: a plain subscriber receives exactly what the ledger says was sent,
including real last wills when devices have their own connections."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
import time
from collections import defaultdict
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from urllib.parse import urlsplit

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion
from paho.mqtt.subscribeoptions import SubscribeOptions

from atmfleet.inventory import Inventory
from atmfleet.protocol import TOPIC_ROOT, counter_topic, device_topic
from atmfleet.settings import Settings
from simulator.config import make_config
from simulator.engine import Emission, generate, ms
from simulator.fleet import generate_inventory
from simulator.ledger import Ledger
from simulator.publisher import FleetPublisher, Pacing

pytestmark = pytest.mark.integration


class Subscriber:
    """A plain paho client collecting every message of the devices it follows.

    It subscribes to those devices' topics only (and their branches' counters), never to a
    wildcard: other traffic on the shared broker, and the retained messages earlier runs left
    there, would count against the broker's queue for this client and could make it drop
    messages of the test's own.
    """

    def __init__(self, url: str, prefix: str) -> None:
        self.prefix = prefix
        self.received: list[tuple[str, bytes]] = []
        self.lock = threading.Lock()
        self.connected = threading.Event()
        self.subscribed = threading.Event()
        self.filters: list[str] = []
        parts = urlsplit(url)
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=f"sub-{prefix}",
            protocol=MQTTProtocolVersion.MQTTv5,
        )
        self.client.on_connect = self._on_connect
        self.client.on_subscribe = lambda *a: self.subscribed.set()
        self.client.on_message = self._on_message
        self.client.connect(parts.hostname or "127.0.0.1", parts.port or 1883)
        self.client.loop_start()
        assert self.connected.wait(10), "not connected"

    def follow(self, inventory: Inventory) -> None:
        """Subscribe to every topic of ``inventory``'s devices and branches; wait for SUBACK."""
        self.filters = [f"{TOPIC_ROOT}/device/{d.id}/+" for d in inventory.devices] + [
            counter_topic(b.id) for b in inventory.branches
        ]
        self.subscribed.clear()
        self._subscribe(self.client)
        assert self.subscribed.wait(10), "subscription not acknowledged"

    def _subscribe(self, client: mqtt.Client) -> None:
        # Retained messages already on the broker are not wanted (v5 retain handling 2).
        options = SubscribeOptions(qos=1, retainHandling=SubscribeOptions.RETAIN_DO_NOT_SEND)
        client.subscribe([(f, options) for f in self.filters])

    def _on_connect(self, client, _u, _f, _rc, _p) -> None:
        if self.filters:
            self._subscribe(client)  # again after a reconnect
        self.connected.set()

    def _on_message(self, _c, _u, msg) -> None:
        if msg.topic.split("/")[3].startswith(self.prefix) and msg.payload:
            with self.lock:
                self.received.append((msg.topic, bytes(msg.payload)))

    def wait_for(self, count: int, timeout: float = 20) -> list[tuple[str, bytes]]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self.lock:
                if len(self.received) >= count:
                    break
            time.sleep(0.05)
        time.sleep(0.3)  # anything extra would show up now
        with self.lock:
            return list(self.received)

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


def clear_retained(url: str, inventory: Inventory) -> None:
    parts = urlsplit(url)
    client = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=MQTTProtocolVersion.MQTTv5)
    client.connect(parts.hostname or "127.0.0.1", parts.port or 1883)
    client.loop_start()
    infos = [
        client.publish(device_topic(d.id, "presence"), b"", qos=1, retain=True)
        for d in inventory.devices
    ]
    for info in infos:
        info.wait_for_publish(10)
    client.loop_stop()
    client.disconnect()


@pytest.fixture
def subscriber(mqtt_url: str, run_id: str) -> Iterator[Subscriber]:
    sub = Subscriber(mqtt_url, f"sim{run_id}")
    yield sub
    sub.close()


def per_device(items: list[tuple[str, bytes]]) -> dict[str, list[tuple[str, bytes]]]:
    out: dict[str, list[tuple[str, bytes]]] = defaultdict(list)
    for topic, payload in items:
        out[topic.split("/")[3]].append((topic, payload))
    return out


def publish(
    inventory: Inventory, emissions: Iterator[Emission], url: str, *, per_device_mode: bool,
    pacing: Pacing | None, ledger: Ledger,
) -> tuple[list[Emission], int]:  # fmt: skip
    sent: list[Emission] = []

    def on_sent(e: Emission) -> None:
        sent.append(e)
        ledger.record(e)

    publisher = FleetPublisher(
        Settings(mqtt_url=url), per_device=per_device_mode, pool_size=3,
        client_prefix=f"test-{inventory.devices[0].id}",
    )  # fmt: skip
    branch_of = {d.id: d.branch for d in inventory.devices}.__getitem__
    stats = publisher.run(emissions, branch_of=branch_of, pacing=pacing, on_sent=on_sent)
    assert stats.complete
    return sent, stats.wills


class TestPooledGateways:
    """History through a few gateway connections, with a sub-branch outage and backlog."""

    def test_subscriber_receives_exactly_the_ledger(self, mqtt_url, run_id, subscriber) -> None:
        inv = generate_inventory(10, seed=2, prefix=f"sim{run_id}-")
        # Two outages an hour per sub-branch: with the random run_id in the device ids (the
        # simulator seeds each device by its id), fewer left some runs without a backlog.
        config = make_config({"incidents": {"subbranch_network_outages_per_year": 365 * 48}})
        start = datetime(2026, 11, 2, tzinfo=UTC)
        end = start + timedelta(hours=5)
        ledger = Ledger(inv, config, 2, heartbeat_s=600)
        subscriber.follow(inv)
        try:
            sent, wills = publish(
                inv, generate(inv, config, 2, start, end, heartbeat_s=600), mqtt_url,
                per_device_mode=False, pacing=None, ledger=ledger,
            )  # fmt: skip
            got = subscriber.wait_for(len(sent))
        finally:
            clear_retained(mqtt_url, inv)
        assert wills == 0
        assert 0 < len(sent) < 1000  # the broker queues at most 1000 for a subscriber
        assert len(got) == len(sent) == sum(ledger.counts.values())
        expected = per_device([(e.topic, e.payload) for e in sent])
        assert per_device(got) == expected  # same messages, same order per device
        backlog = [e for e in sent if e.kind == "state" and e.ts < e.t]
        assert backlog, "the outage should leave a store-and-forward backlog"


class TestPerDeviceConnections:
    """Live, one connection per device: a dropped link is the broker's last will."""

    def test_real_last_wills_reach_the_subscriber(self, mqtt_url, run_id, subscriber) -> None:
        inv = generate_inventory(6, seed=3, prefix=f"sim{run_id}-")
        config = make_config(
            # Every device up for the whole 5 s (not coming up within its heartbeat): a
            # short run with many link drops, to see the broker's wills.
            {
                "incidents": {"device_link_drops_per_year": 10_000_000, "link_drop_min": 0.04},
                "start_spread_heartbeats": 0,
            }
        )
        start = datetime.now(UTC).replace(microsecond=0)
        end = start + timedelta(seconds=5)
        ledger = Ledger(inv, config, 3, heartbeat_s=5)
        subscriber.follow(inv)
        try:
            sent, wills = publish(
                inv, generate(inv, config, 3, start, end, real_wills=True, heartbeat_s=5),
                mqtt_url, per_device_mode=True, pacing=Pacing(ms(start), 1.0), ledger=ledger,
            )  # fmt: skip
            got = subscriber.wait_for(len(sent))
        finally:
            clear_retained(mqtt_url, inv)
        ledger_wills = [e for e in sent if e.result == "will"]
        assert wills == len(ledger_wills) > 0
        assert len(got) == len(sent)
        assert per_device(got) == per_device([(e.topic, e.payload) for e in sent])
        for e in ledger_wills:
            data = json.loads(e.payload)
            assert data["status"] == "offline" and data["will"] is True
            assert (e.topic, e.payload) in got


class TestStopping:
    """SIGTERM stops a live run cleanly: acknowledged, disconnected (no wills), ledger written."""

    def test_sigterm_writes_the_ledger_and_fires_no_wills(
        self, mqtt_url, run_id, subscriber, tmp_path
    ) -> None:
        prefix = f"sim{run_id}-"
        subscriber.follow(generate_inventory(5, seed=1, prefix=prefix))
        cmd = [
            sys.executable, "-m", "app.cli", "simulate", "--devices", "5", "--heartbeat", "5",
            "--id-prefix", prefix, "--mqtt-url", mqtt_url, "--ledger", str(tmp_path),
        ]  # fmt: skip
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            got = subscriber.wait_for(10, timeout=20)  # births and first states are out
            proc.send_signal(signal.SIGTERM)
            out, err = proc.communicate(timeout=30)
        finally:
            if proc.poll() is None:
                proc.kill()
            clear_retained(mqtt_url, generate_inventory(5, seed=1, prefix=prefix))
        assert proc.returncode == 0, err
        assert "published" in out
        summary = json.loads((tmp_path / "summary.json").read_text())
        assert summary["messages"] >= len(got) > 0
        time.sleep(0.5)
        offline = [
            p for t, p in subscriber.received if t.endswith("/presence") and b'"offline"' in p
        ]
        assert offline == []


class TestDuration:
    """``--duration`` is wall time: a small quiet fleet stays connected until it has passed,
    however early its last message was due."""

    def test_a_live_run_lasts_its_duration_and_names_its_connections(
        self, mqtt_url, run_id, subscriber
    ) -> None:
        prefix = f"sim{run_id}-"
        inv = generate_inventory(3, seed=1, prefix=prefix)
        subscriber.follow(inv)
        cmd = [
            sys.executable, "-m", "app.cli", "simulate", "--devices", "3",
            "--heartbeat", "300", "--duration", "4s", "--id-prefix", prefix,
            "--mqtt-url", mqtt_url,
        ]  # fmt: skip
        started = time.monotonic()
        try:
            run = subprocess.run(cmd, capture_output=True, text=True, timeout=60, check=False)
        finally:
            clear_retained(mqtt_url, inv)
        elapsed = time.monotonic() - started
        assert run.returncode == 0, run.stderr
        # Heartbeats every 300 s: every message of the run is due in its first second.
        assert elapsed >= 4.0, (elapsed, run.stderr)
        assert "over one connection per device" in run.stderr
        assert "over per-device" not in run.stderr
        assert "published" in run.stdout
        assert not [p for t, p in subscriber.received if b'"offline"' in p and b'"will"' in p]
