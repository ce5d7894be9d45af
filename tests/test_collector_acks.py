"""A batch's acknowledgements go to the broker as one write: the same PUBACKs as one
``ack`` per message, every message stored once, none left for the broker to redeliver."""

from __future__ import annotations

from collections.abc import Iterator

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion

from collector.mqtt import ack_all
from tests.test_collector_service import (
    Broker,
    publisher,
    running,
    scalar,
    settings_for,
    start_broker,
    states,
    stored,
    wait_until,
)

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Broker]:
    b = start_broker(tmp_path_factory.mktemp("mosquitto"))
    yield b
    b.process.terminate()
    b.process.wait(10)


def _queued(client: mqtt.Client) -> bytes:
    return b"".join(bytes(p["packet"]) for p in client._out_packet)


@pytest.mark.parametrize("protocol", [MQTTProtocolVersion.MQTTv5, MQTTProtocolVersion.MQTTv311])
def test_one_write_holds_the_same_pubacks_as_one_ack_per_message(
    protocol: MQTTProtocolVersion,
) -> None:
    mids = [1, 2, 300, 65535, 7, 1]
    reference = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=protocol, manual_ack=True)
    for mid in mids:
        reference.ack(mid, 1)
    batched = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=protocol, manual_ack=True)
    ack_all(batched, mids)
    assert len(batched._out_packet) == 1
    assert _queued(batched) == _queued(reference)
    ack_all(batched, [])
    assert len(batched._out_packet) == 1


class _NoQueue:
    """A client without paho's packet queue: acknowledged one by one."""

    def __init__(self) -> None:
        self.acks: list[tuple[int, int]] = []

    def ack(self, mid: int, qos: int) -> None:
        self.acks.append((mid, qos))


def test_without_the_packet_queue_each_message_is_acknowledged_in_order() -> None:
    client = _NoQueue()
    ack_all(client, [5, 3, 9])  # type: ignore[arg-type]
    assert client.acks == [(5, 1), (3, 1), (9, 1)]


class TestManyBatches:
    @pytest.mark.parametrize("protocol", ["5", "3.1.1"])
    def test_every_message_stored_once_and_none_redelivered(
        self, broker: Broker, db: str, run_id: str, protocol: str
    ) -> None:
        """30 batches of up to 100 from 12 devices: all stored once, every one
        acknowledged: a second run on the session receives only a message sent after it
        connected."""
        settings = settings_for(broker.url, db, top={"mqtt_protocol": protocol})
        devices = [f"t{run_id}-{i}" for i in range(12)]
        sent = 0
        with running(settings, f"c{run_id}") as first, publisher(broker.url) as pub:
            for device in devices:
                for topic, payload in states(device, range(250)):
                    pub.send(topic, payload)
                    sent += 1
            wait_until(lambda: stored(db) == sent, timeout=60, what=f"{sent} rows")
            wait_until(
                lambda: first.metric("buffered_messages") == 0, what="everything acknowledged"
            )
        assert first.metric("messages_received_total") == sent
        assert first.metric("messages_duplicate_total") == 0
        assert first.metric("batch_messages_count") >= 30
        assert scalar(db, "SELECT sum(received) FROM device_sequences") == sent
        assert scalar(db, "SELECT count(DISTINCT (device_id, seq)) FROM state_samples") == sent
        assert scalar(db, "SELECT coalesce(sum(missing), 0) FROM sequence_gaps") == 0
        with running(settings, f"c{run_id}") as second, publisher(broker.url) as pub:
            for topic, payload in states(f"t{run_id}-after", range(1)):
                pub.send(topic, payload)
            wait_until(lambda: stored(db) == sent + 1, what="the message sent after")
        assert second.metric("messages_received_total") == 1
