"""The state and transaction payloads are written from templates, not ``json.dumps``: they
must be byte for byte what the JSON encoder makes of the same values, for every kind of
device, with faults, cash levels, backlogs and calendar days."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

from simulator.config import make_config
from simulator.engine import _dumps, generate, iso
from simulator.fleet import generate_inventory


def test_every_payload_is_what_the_json_encoder_writes() -> None:
    inv = generate_inventory(40, seed=5, prefix="pl-")
    config = make_config({"vendors": {v: {"mtbf_days": 2} for v in ("GRG", "NCR", "Yihua")}})
    start = datetime(2026, 9, 29, 6, tzinfo=UTC)  # 国庆节 and the days before it
    kinds: set[str] = set()
    faulted = 0
    for e in generate(inv, config, 5, start, start + timedelta(days=4)):
        data = json.loads(e.payload)
        assert _dumps(data) == e.payload, e.payload
        kinds.add(e.kind)
        faulted += e.kind == "state" and "faults" in data
    assert {"state", "txn", "event", "presence", "counter"} <= kinds
    assert faulted > 0


def test_iso_writes_milliseconds_in_utc() -> None:
    for value in (0, 999, 1_764_547_199_999, 1_764_547_200_000, 1_800_000_061_001):
        stamp = datetime.fromtimestamp(value / 1000, UTC)
        assert iso(value) == stamp.strftime("%Y-%m-%dT%H:%M:%S.") + f"{value % 1000:03d}Z"


def _reference_packet(topic: str, payload: bytes, mid: int, retain: bool, v5: bool) -> bytes:
    """MQTT's PUBLISH (QoS 1) as the standard spells it: fixed header, remaining length as
    a variable byte integer, topic, packet id, (v5: no properties), payload."""
    name = topic.encode()
    body = len(name).to_bytes(2, "big") + name + mid.to_bytes(2, "big")
    body += (b"\x00" if v5 else b"") + payload
    length, n = b"", len(body)
    while True:
        n, digit = divmod(n, 128)
        length += bytes((digit | (0x80 if n else 0),))
        if not n:
            break
    return bytes((0x32 | retain,)) + length + body


def test_publish_packets_are_mqtts_for_every_length_class() -> None:
    from simulator.publisher import publish_packet

    topic = "atm/v1/device/HHHT-0001-01/state"
    fixed = 4 + len(topic)
    # Remaining lengths around the one-, two- and three-byte boundaries (127/128, 16383/16384).
    for remaining in (fixed, 127, 128, 129, 16_383, 16_384, 16_385, 2_097_151, 2_097_152):
        for v5 in (False, True):
            payload = b"x" * (remaining - fixed - v5)
            for retain, mid in ((False, 1), (True, 65_535), (False, 256)):
                got = publish_packet(topic, payload, mid, retain, v5)
                assert got == _reference_packet(topic, payload, mid, retain, v5), remaining
