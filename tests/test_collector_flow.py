"""Flow control while draining a backlog: the MQTT network thread is never held up, so the
keep-alive holds however slow the store is (a private Mosquitto, a 2 s keep-alive)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import paho.mqtt.client as mqtt
import psycopg
import pytest
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion

from atmfleet.protocol import device_topic
from atmfleet.store.writer import DEAD_LETTER_PAYLOAD_BYTES
from collector.mqtt import MAX_HELD_BYTES, receive_maximum
from tests.test_collector_service import (
    Broker,
    publisher,
    running,
    settings_for,
    start_broker,
    states,
    stored,
    wait_until,
)

pytestmark = pytest.mark.integration

KEEPALIVE_S = 2


@pytest.fixture
def own_broker(tmp_path: Path) -> Iterator[Broker]:
    b = start_broker(tmp_path, "log_type all\n")  # PINGREQs show in its log
    yield b
    b.process.terminate()
    b.process.wait(10)


def pings(tmp_path: Path, client_id: str) -> int:
    text = (tmp_path / "mosquitto.log").read_text(errors="replace")
    return text.count(f"Received PINGREQ from {client_id}\n")


class TestDrainingABacklog:
    """The store is stuck (a table lock) while the backlog waits; the collector must keep
    its connection: several keep-alive pings answered, and one connection throughout."""

    def test_a_qos_1_backlog_drains_on_one_connection(
        self, own_broker: Broker, tmp_path: Path, db: str, run_id: str
    ) -> None:
        total, client_id = 6000, f"c{run_id}"
        settings = settings_for(
            own_broker.url, db, keepalive_s=KEEPALIVE_S, max_inflight=400, batch_size=100
        )
        with running(settings, client_id):
            pass  # the persistent session exists: the backlog queues for it
        with publisher(own_broker.url) as pub:
            for topic, payload in states(f"t{run_id}", range(total)):
                pub.send(topic, payload)
        with psycopg.connect(db) as locker:
            locker.execute("LOCK TABLE state_samples IN ACCESS EXCLUSIVE MODE")
            with running(settings, client_id) as run:
                wait_until(lambda: run.metric("buffered_messages") >= 400, what="a full buffer")
                before = pings(tmp_path, client_id)
                wait_until(lambda: pings(tmp_path, client_id) >= before + 3, what="3 pings")
                locker.rollback()
                wait_until(lambda: stored(db) == total, timeout=120, what="the whole backlog")
                assert run.metric("mqtt_connects_total") == 1  # 0 reconnects
                assert run.metric("messages_received_total") == total  # none sent twice

    def test_a_qos_0_flood_is_dropped_beyond_the_bound_not_the_connection(
        self, own_broker: Broker, tmp_path: Path, db: str, run_id: str
    ) -> None:
        """QoS 0 (outside the protocol) is not flow-controlled by the broker: a full
        buffer used to block paho's network thread until the broker dropped the link."""
        total, client_id = 3000, f"c{run_id}"
        settings = settings_for(
            own_broker.url, db, keepalive_s=KEEPALIVE_S, max_inflight=400, batch_size=100
        )
        host, port = own_broker.url.removeprefix("mqtt://").split(":")
        sender = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=MQTTProtocolVersion.MQTTv5)
        sender.connect(host, int(port))
        sender.loop_start()
        with psycopg.connect(db) as locker:
            locker.execute("LOCK TABLE state_samples IN ACCESS EXCLUSIVE MODE")
            with running(settings, client_id) as run:
                infos = [sender.publish(t, p, qos=0) for t, p in states(f"t{run_id}", range(total))]
                for info in infos:
                    info.wait_for_publish(30)
                wait_until(
                    lambda: run.metric("messages_received_total") == total, what="all received"
                )
                before = pings(tmp_path, client_id)
                wait_until(lambda: pings(tmp_path, client_id) >= before + 3, what="3 pings")
                locker.rollback()
                dropped = run.metric("messages_dropped_total", reason="qos0_overflow")
                wait_until(lambda: stored(db) == total - dropped, what="the rest stored")
                assert run.metric("mqtt_connects_total") == 1
                assert 0 < dropped <= total - 400
        sender.disconnect()
        sender.loop_stop()


class TestByteBound:
    def test_oversized_payloads_are_held_truncated_and_within_the_byte_bound(
        self, own_broker: Broker, db: str, run_id: str
    ) -> None:
        """1 MiB payloads (refused as too_large): the collector holds only the dead
        letter's copy of each, and the broker sends no more than fit the byte bound."""
        bound, total, mib = 1024 * 1024, 150, 1024 * 1024
        settings = settings_for(
            own_broker.url, db, max_inflight=400, batch_size=100, max_buffered_bytes=bound
        )
        window = receive_maximum(settings)
        assert window == bound // MAX_HELD_BYTES < total
        with psycopg.connect(db) as locker:
            locker.execute("LOCK TABLE dead_letters IN ACCESS EXCLUSIVE MODE")
            with running(settings, f"c{run_id}") as run, publisher(own_broker.url) as pub:
                for _ in range(total):
                    pub.send(device_topic(f"t{run_id}", "state"), b"x" * mib)
                wait_until(lambda: run.metric("buffered_messages") == window, what="the window")
                held = run.metric("buffered_bytes")
                assert window * DEAD_LETTER_PAYLOAD_BYTES < held <= bound
                assert run.metric("messages_received_total") == window
                locker.rollback()
                wait_until(
                    lambda: run.metric("messages_rejected_total", reason="too_large") == total,
                    what="all dead-lettered",
                )
        with psycopg.connect(db) as conn:
            rows = conn.execute(
                "SELECT DISTINCT payload_size, length(payload), detail FROM dead_letters"
            ).fetchall()
        assert rows == [(mib, DEAD_LETTER_PAYLOAD_BYTES, f"{mib} bytes > 16384")]


def test_receive_maximum_fits_the_byte_bound_at_the_largest_message() -> None:
    def window(**collector: int) -> int:
        return receive_maximum(settings_for("mqtt://127.0.0.1:1", "postgresql://x", **collector))

    assert window() == 40_000  # the defaults: 1 GiB holds 40,000 of the largest
    assert window(max_buffered_bytes=256 * 1024 * 1024) == 256 * 1024 * 1024 // MAX_HELD_BYTES
    assert window(max_inflight=100_000, max_buffered_bytes=2**40) == 65_535
