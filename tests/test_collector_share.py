"""Several collectors: one shared subscription, and a failover list of brokers.

Mosquitto hands a shared group's messages out one by one in turn, with no regard for the
device: consecutive messages of one device are stored by different collectors, in
concurrent transactions. The store must not care who stores what: exactly once, no gap,
and the state runs equal to compressing every stored sample from scratch.
"""

from __future__ import annotations

import random
import signal
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import psycopg
import pytest

from atmfleet.errors import ConfigError
from atmfleet.protocol import StateMessage, device_topic, encode
from atmfleet.settings import load_settings
from atmfleet.store.runs import rebuild_runs
from tests.test_collector_service import (
    Broker,
    publisher,
    running,
    scalar,
    settings_for,
    start_broker,
    stored,
    wait_until,
)

pytestmark = pytest.mark.integration

DEVICES = 12
MESSAGES = 40  # per device


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Broker]:
    b = start_broker(tmp_path_factory.mktemp("mosquitto"))
    yield b
    b.process.terminate()
    b.process.wait(10)


def tap(seen: dict[tuple[str, int], str], client_id: str) -> Callable[[mqtt.MQTTMessage], None]:
    """Records which collector got each (device, seq)."""

    def record(message: mqtt.MQTTMessage) -> None:
        seq = int(message.payload.split(b'"seq":')[1].split(b",")[0])
        seen[(message.topic.split("/")[3], seq)] = client_id

    return record


def history(run_id: str) -> list[tuple[str, bytes]]:
    """Every device's states (a minute apart, changing every 7 samples), the devices
    interleaved at random, and each device's samples locally out of order (a
    store-and-forward backlog): a run is extended, split and merged by messages that
    arrive at different collectors."""
    rng = random.Random(16)
    base = datetime.now(UTC).replace(microsecond=0) - timedelta(hours=2)
    queues = []
    for d in range(DEVICES):
        device = f"s{run_id}-{d}"
        msgs = [
            (
                device_topic(device, "state"),
                encode(
                    StateMessage(
                        v=1,
                        device_id=device,
                        ts=base + timedelta(minutes=s),
                        seq=s + 1,
                        state="fault" if (s // 7) % 2 else "in_service",
                        heartbeat_s=60,
                    )
                ),
            )
            for s in range(MESSAGES)
        ]
        for i in range(0, len(msgs) - 2, 5):  # swap neighbours now and then
            msgs[i], msgs[i + 1] = msgs[i + 1], msgs[i]
        queues.append(msgs)
    out = []
    while any(queues):
        q = rng.choice([q for q in queues if q])
        out.append(q.pop(0))
    return out


def runs(db: str) -> list[tuple[Any, ...]]:
    with psycopg.connect(db) as conn:
        return conn.execute(
            "SELECT device_id, start_ts, start_seq, last_ts, last_seq, state, samples"
            " FROM state_runs ORDER BY 1, 2, 3"
        ).fetchall()


class TestSharedSubscription:
    def test_two_collectors_split_each_device_and_the_store_stays_exact(
        self, broker: Broker, db: str, run_id: str
    ) -> None:
        settings = settings_for(broker.url, db, share_group=f"g{run_id}", batch_size=25)
        seen: dict[tuple[str, int], str] = {}
        total = DEVICES * MESSAGES
        with (
            running(settings, f"a{run_id}", tap(seen, f"a{run_id}")),
            running(settings, f"b{run_id}", tap(seen, f"b{run_id}")),
            publisher(broker.url) as pub,
        ):
            for topic, payload in history(run_id):
                pub.send(topic, payload)
            wait_until(lambda: stored(db) == total, what=f"{total} samples")
        # Mosquitto: no stickiness; a device's consecutive messages alternate collectors.
        switches = sum(
            seen[(f"s{run_id}-{d}", s)] != seen[(f"s{run_id}-{d}", s + 1)]
            for d in range(DEVICES)
            for s in range(1, MESSAGES)
        )
        assert switches > DEVICES * (MESSAGES - 1) // 4, switches
        assert len(seen) == total
        # Exactly once, no gap, every message counted once.
        assert scalar(db, "SELECT count(DISTINCT (device_id, seq)) FROM state_samples") == total
        assert scalar(db, "SELECT sum(received) FROM device_sequences") == total
        assert scalar(db, "SELECT sum(missing) FROM sequence_gaps") == 0
        # The runs maintained by two concurrent writers = compressing from scratch.
        maintained = runs(db)
        assert len(maintained) == DEVICES * len(range(0, MESSAGES, 7))
        with psycopg.connect(db) as conn:
            rebuild_runs(conn)
        assert runs(db) == maintained


class TestBrokerList:
    def test_the_list_is_validated_and_read_in_order(self, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setenv("ATMFLEET_MQTT_URLS", " mqtt://a:1883, mqtt://b:1884 ,")
        assert load_settings().broker_urls() == ["mqtt://a:1883", "mqtt://b:1884"]
        monkeypatch.setenv("ATMFLEET_MQTT_URLS", "mqtt://a:1883,mqtts://b:8883")
        with pytest.raises(ConfigError, match=r"ATMFLEET_MQTT_URLS.*mix of"):
            load_settings()
        monkeypatch.setenv("ATMFLEET_MQTT_URLS", "mqtt://a:1883,http://b")
        with pytest.raises(ConfigError, match="URL 2: scheme 'http'"):
            load_settings()
        monkeypatch.delenv("ATMFLEET_MQTT_URLS")
        monkeypatch.setenv("ATMFLEET_MQTT_URL", "mqtt://one:1883")
        assert load_settings().broker_urls() == ["mqtt://one:1883"]

    def test_the_collector_moves_to_the_next_broker_when_its_own_dies(
        self, tmp_path: Path, db: str, run_id: str
    ) -> None:
        (tmp_path / "a").mkdir()
        (tmp_path / "b").mkdir()
        first, second = start_broker(tmp_path / "a"), start_broker(tmp_path / "b")
        try:
            settings = settings_for(first.url, db).model_copy(
                update={"mqtt_urls": f"{first.url},{second.url}"}
            )
            with running(settings, f"f{run_id}") as r:
                collector = r.collector
                assert collector.broker_url == first.url
                with publisher(first.url) as pub:
                    pub.send(*history(run_id)[0])
                wait_until(lambda: stored(db) == 1, what="the first broker's message")
                first.process.send_signal(signal.SIGKILL)
                first.process.wait(10)
                wait_until(
                    lambda: collector.connected.is_set() and collector.broker_url == second.url,
                    what="the collector on the second broker",
                )
                with publisher(second.url) as pub:
                    for topic, payload in history(run_id)[1:6]:
                        pub.send(topic, payload)
                wait_until(lambda: stored(db) == 6, what="the second broker's messages")
        finally:
            for b in (first, second):
                if b.process.poll() is None:
                    b.process.terminate()
                    b.process.wait(10)
