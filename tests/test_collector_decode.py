"""The collector's pure parts: decoding a message, the bounded buffer, counter files."""

from __future__ import annotations

import dataclasses
import json
import time
from datetime import UTC, datetime, timedelta

import pytest

from atmfleet.errors import ConfigError
from atmfleet.protocol import StateMessage, device_topic, encode
from atmfleet.store.writer import DEAD_LETTER_PAYLOAD_BYTES, Accepted, Rejected
from collector.buffer import Buffer, Inbound, Put
from collector.counters import parse_counter_csv
from collector.decode import decode
from collector.service import subscriptions

NOW = datetime(2026, 11, 28, 2, 15, tzinfo=UTC)


def state(device_id: str = "atm-001", seq: object = 1, **extra: object) -> dict[str, object]:
    body: dict[str, object] = {
        "v": 1,
        "device_id": device_id,
        "ts": "2026-11-28T02:14:59Z",
        "seq": seq,
        "state": "in_service",
    }
    body.update(extra)
    return body


def payload(body: object) -> bytes:
    return json.dumps(body).encode()


class TestDecodeAccepts:
    def test_a_valid_state_message_becomes_a_record_with_its_raw_payload(self) -> None:
        raw = payload(state())
        record = decode(device_topic("atm-001", "state"), raw, NOW)
        assert isinstance(record, Accepted)
        assert isinstance(record.message, StateMessage)
        assert record.payload == raw
        assert record.received_at == NOW


class TestDecodeRejectsWithAReason:
    """Every kind of bad input becomes a dead letter whose reason says what was wrong."""

    @pytest.mark.parametrize(
        ("topic", "raw", "reason"),
        [
            (device_topic("atm-001", "state"), b'{"v":1,', "bad_json"),
            (device_topic("atm-001", "state"), payload(state(seq="one")), "invalid"),
            (device_topic("atm-001", "state"), payload(state(state="flying")), "invalid"),
            (device_topic("atm-002", "state"), payload(state("atm-001")), "device_mismatch"),
            (device_topic("atm-001", "state"), payload({**state(), "v": 2}), "unknown_version"),
            (
                device_topic("atm-001", "state"),
                payload(state(ts="2026-11-28T03:00:00Z")),
                "future_timestamp",
            ),
            (device_topic("atm-001", "state"), b"\xff\xfe\x00garbage\x80", "not_utf8"),
            (device_topic("atm-001", "state"), b"[1, 2]", "not_object"),
            (device_topic("atm-001", "state"), b"x" * (16 * 1024 + 1), "too_large"),
            ("atmfleet/v1/device/x';DROP TABLE state_samples;--/state", b"{}", "bad_topic"),
            (
                device_topic("atm-001", "state"),
                payload(state("atm'; DELETE FROM devices; --")),
                "invalid",
            ),
            ("atmfleet/v1/device/atm-001/telemetry", payload(state()), "bad_topic"),
        ],
        ids=[
            "malformed-json",
            "wrong-type",
            "unknown-state",
            "device-mismatch",
            "unknown-schema-version",
            "future-timestamp",
            "binary-garbage",
            "json-array",
            "oversized",
            "hostile-topic-id",
            "hostile-payload-id",
            "unknown-kind",
        ],
    )
    def test_reason(self, topic: str, raw: bytes, reason: str) -> None:
        record = decode(topic, raw, NOW)
        assert isinstance(record, Rejected)
        assert record.reason == reason
        assert record.detail
        assert record.topic == topic
        assert record.payload_size == len(raw)

    def test_the_dead_letter_keeps_a_truncated_payload_and_the_full_size(self) -> None:
        raw = b"y" * 40_000
        record = decode(device_topic("atm-001", "state"), raw, NOW)
        assert isinstance(record, Rejected)
        assert record.payload == raw[:DEAD_LETTER_PAYLOAD_BYTES]
        assert record.payload_size == 40_000

    def test_a_truncated_copy_of_an_oversized_payload_is_dead_lettered_with_its_size(
        self,
    ) -> None:
        copy = b"{" * DEAD_LETTER_PAYLOAD_BYTES  # all the collector kept of 1 MiB
        record = decode(device_topic("atm-001", "state"), copy, NOW, size=1024 * 1024)
        assert isinstance(record, Rejected)
        assert (record.reason, record.payload_size, record.payload) == (
            "too_large",
            1024 * 1024,
            copy,
        )
        assert record.detail == "1048576 bytes > 16384"

    def test_a_nul_in_the_detail_is_escaped_so_the_database_accepts_it(self) -> None:
        record = Rejected.of("t", b"", NOW, "invalid", "code\x00x")
        assert "\x00" not in record.detail


def inbound(mid: int, size: int = 10, arrived: float | None = None) -> Inbound:
    item = Inbound(mid, 1, "t", b"x" * size, NOW.timestamp(), 0)
    if arrived is not None:
        item.arrived = arrived
    return item


class TestBufferBatches:
    def test_a_full_batch_is_returned_at_once(self) -> None:
        buf = Buffer(100)
        for mid in range(5):
            buf.put(inbound(mid))
        started = time.monotonic()
        batch = buf.take(max_items=3, max_bytes=10_000, max_age_s=10, idle_s=10)
        assert [i.mid for i in batch] == [0, 1, 2]
        assert time.monotonic() - started < 1

    def test_a_batch_is_bounded_by_bytes(self) -> None:
        buf = Buffer(100)
        for mid in range(4):
            buf.put(inbound(mid, size=400))
        batch = buf.take(max_items=100, max_bytes=1000, max_age_s=10, idle_s=10)
        assert [i.mid for i in batch] == [0, 1]

    def test_a_partial_batch_waits_until_its_oldest_message_is_due(self) -> None:
        buf = Buffer(100)
        buf.put(inbound(1))
        started = time.monotonic()
        batch = buf.take(max_items=100, max_bytes=10_000, max_age_s=0.2, idle_s=10)
        assert [i.mid for i in batch] == [1]
        assert time.monotonic() - started >= 0.15

    def test_nothing_waiting_returns_an_empty_batch_after_the_idle_time(self) -> None:
        assert Buffer(10).take(10, 10_000, 1.0, idle_s=0.05) == []


class TestBufferIsBounded:
    """The network thread never waits: QoS 1 messages are bounded by the broker (Receive
    Maximum), QoS 0 ones are dropped while the buffer is full."""

    def test_put_never_waits_and_unacknowledged_messages_still_count(self) -> None:
        buf = Buffer(2)
        assert [buf.put(inbound(m)) for m in (1, 2)] == [Put.HELD, Put.HELD]
        taken = buf.take(10, 10_000, 0, idle_s=0)
        assert len(taken) == 2 and buf.full()  # taken but not acknowledged: still held
        started = time.monotonic()
        assert buf.put(inbound(3)) is Put.HELD  # QoS 1: never refused, never waits
        assert time.monotonic() - started < 0.1
        assert buf.held == 3
        buf.release(taken)
        assert buf.held == 1 and not buf.full()

    def test_a_qos_0_message_is_dropped_while_full_by_count_or_by_bytes(self) -> None:
        by_count = Buffer(1)
        by_count.put(inbound(1))
        assert by_count.put(dataclasses.replace(inbound(2), qos=0)) is Put.FULL
        one = inbound(1, size=1000).held_bytes
        by_bytes = Buffer(100, max_bytes=one)
        assert by_bytes.put(inbound(1, size=1000)) is Put.HELD
        assert by_bytes.held_bytes == one
        assert by_bytes.put(dataclasses.replace(inbound(2), qos=0)) is Put.FULL
        by_bytes.release(by_bytes.take(10, 10_000, 0, idle_s=0))
        assert by_bytes.held_bytes == 0
        assert by_bytes.put(dataclasses.replace(inbound(2), qos=0)) is Put.HELD

    def test_a_closed_buffer_refuses(self) -> None:
        buf = Buffer(1)
        buf.close()
        assert buf.put(inbound(1)) is Put.CLOSED

    def test_qos_1_messages_of_an_earlier_connection_are_discarded_for_redelivery(
        self,
    ) -> None:
        buf = Buffer(10)
        old = [dataclasses.replace(inbound(m), generation=0) for m in (1, 2)]
        qos0 = dataclasses.replace(inbound(3), generation=0, qos=0)
        new = dataclasses.replace(inbound(1), generation=1)
        for item in [*old, qos0, new]:
            buf.put(item)
        assert buf.discard_unacknowledgeable(1) == 2
        assert buf.held == 2 and buf.held_bytes == qos0.held_bytes + new.held_bytes
        assert buf.take(10, 10_000, 0, idle_s=0) == [qos0, new]  # QoS 0 is never resent


class TestSubscriptions:
    def test_without_a_group_the_plain_topics(self) -> None:
        assert subscriptions(None) == ["atmfleet/v1/#"]

    def test_a_share_group_prefixes_every_topic(self) -> None:
        assert subscriptions("fleet") == ["$share/fleet/atmfleet/v1/#"]


class TestCounterFile:
    def test_lines_become_counter_messages(self) -> None:
        lines = ["branch_id,date,financial,non_financial", "br-01,2026-11-27,412,90"]
        (msg,) = parse_counter_csv(lines, "c.csv", now=NOW)
        assert (msg.branch_id, msg.date.isoformat(), msg.financial, msg.non_financial) == (
            "br-01",
            "2026-11-27",
            412,
            90,
        )
        assert msg.source == "file"
        assert msg.ts == NOW

    def test_a_bad_value_names_the_file_line_and_field(self) -> None:
        lines = ["branch_id,date,financial", "br-01,2026-11-27,12", "br-02,2026-11-27,-5"]
        with pytest.raises(ConfigError, match=r"c\.csv line 3: financial"):
            parse_counter_csv(lines, "c.csv")

    def test_a_missing_column_is_named(self) -> None:
        with pytest.raises(ConfigError, match="header lacks financial"):
            parse_counter_csv(["branch_id,date", "br-01,2026-11-27"], "c.csv")


def test_encode_roundtrip_is_accepted() -> None:
    msg = StateMessage(v=1, device_id="atm-9", ts=NOW - timedelta(seconds=1), seq=4, state="fault")
    assert isinstance(decode(device_topic("atm-9", "state"), encode(msg), NOW), Accepted)
