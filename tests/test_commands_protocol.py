"""The remote-command wire format (docs/protocol.md §14), without a broker."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from pathlib import Path

import pytest

from commands.protocol import (
    DATA_ROOT,
    RESULT_ROOT,
    Outcome,
    WireError,
    decode_chunk,
    decode_request,
    decode_result,
    device_of,
    encode_chunk,
    encode_request,
    encode_result,
    parse_range,
)
from simulator.devices import journal_bytes

DOC = Path(__file__).resolve().parent.parent / "docs" / "protocol.md"
_BLOCK_RE = re.compile(r"^```jsonc kind=(?P<kind>\w+)\n(?P<body>.*?)^```$", re.M | re.S)
EXAMPLES = [(m["kind"], m["body"]) for m in _BLOCK_RE.finditer(DOC.read_text(encoding="utf-8"))]


class TestDocumentedExamples:
    def test_there_is_an_example_of_each_message(self) -> None:
        assert {k for k, _ in EXAMPLES} == {"request", "result", "chunk"}

    @pytest.mark.parametrize(("kind", "body"), EXAMPLES)
    def test_each_example_parses_and_round_trips(self, kind: str, body: str) -> None:
        payload = body.encode()
        if kind == "request":
            req = decode_request(payload)
            assert decode_request(encode_request(req)) == req
            assert req.reply_to == f"{RESULT_ROOT}/{req.device_id}"
        elif kind == "result":
            msg = decode_result(payload)
            assert decode_result(encode_result(msg)) == msg
        else:
            header, data = decode_chunk(payload.rstrip(b"\n") + b"\nabc")
            assert header.seq == 0 and data == b"abc"


class TestChunks:
    def test_raw_bytes_survive_the_framing_newlines_included(self) -> None:
        data = bytes(range(256)) * 10 + b"\n\n"
        header, got = decode_chunk(encode_chunk("c-1", 7, data))
        assert (header.command_id, header.seq, got) == ("c-1", 7, data)

    def test_a_chunk_without_a_header_line_is_refused(self) -> None:
        with pytest.raises(WireError):
            decode_chunk(b'{"v":1,"command_id":"c","seq":0}')
        with pytest.raises(WireError):
            decode_chunk(b'{"v":1,"command_id":"c/../x","seq":0}\nabc')


class TestTopicsAndParams:
    def test_device_of_takes_only_one_level(self) -> None:
        assert device_of(f"{DATA_ROOT}/ATM-1", DATA_ROOT) == "ATM-1"
        assert device_of(f"{DATA_ROOT}/ATM-1/x", DATA_ROOT) is None
        assert device_of(f"{RESULT_ROOT}/ATM-1", DATA_ROOT) is None
        assert device_of(f"{DATA_ROOT}/", DATA_ROOT) is None

    def test_a_journal_range_needs_zones_and_order(self) -> None:
        since, until = parse_range({"since": "2026-12-01T00:00:00Z", "until": "2026-12-01T01:00Z"})
        assert until - since == until.replace(hour=1) - since
        for bad in (
            {"since": "2026-12-01T00:00:00", "until": "2026-12-01T01:00:00"},
            {"since": "2026-12-01T01:00:00Z", "until": "2026-12-01T00:00:00Z"},
            {"since": "yesterday", "until": "2026-12-01T00:00:00Z"},
            {"until": "2026-12-01T00:00:00Z"},
        ):
            with pytest.raises(WireError):
                parse_range(bad)

    def test_an_unknown_result_is_refused(self) -> None:
        with pytest.raises(WireError):
            decode_result(
                b'{"v":1,"command_id":"c","device_id":"A","result":"maybe","ts":"2026-12-01T00:00:00Z"}'
            )
        assert {o.value for o in Outcome} == {"accepted", "done", "failed", "rejected", "expired"}


def test_the_simulated_journal_is_deterministic_and_of_the_asked_size() -> None:
    since, until = datetime(2026, 12, 1, tzinfo=UTC), datetime(2026, 12, 1, 2, tzinfo=UTC)
    one = journal_bytes("ATM-1", since, until, 100_000)
    assert one == journal_bytes("ATM-1", since, until, 100_000) and len(one) == 200_000
    assert one != journal_bytes("ATM-2", since, until, 100_000)


def test_simulate_devices_refuses_a_device_the_inventory_does_not_have() -> None:
    from click.testing import CliRunner

    from app.cli import cli

    inventory = Path(__file__).resolve().parent.parent / "docs" / "examples" / "inventory.yaml"
    result = CliRunner().invoke(cli, ["simulate-devices", str(inventory), "--device", "NOPE"])
    assert result.exit_code == 2 and "NOPE" in result.output
