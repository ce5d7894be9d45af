"""The wire contract v1: every documented example, and the edges of ``parse_message``."""

from __future__ import annotations

import json
import re
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any, ClassVar

import pytest

from atmfleet.protocol import (
    MAX_CLOCK_SKEW,
    MAX_PAYLOAD_BYTES,
    REASONS,
    SUBSCRIPTIONS,
    Component,
    CounterMessage,
    DeviceState,
    EventMessage,
    EventType,
    PresenceMessage,
    ProtocolError,
    StateMessage,
    TxnMessage,
    TxnType,
    counter_topic,
    device_topic,
    encode,
    parse_message,
    parse_topic,
)

DOC = Path(__file__).resolve().parent.parent / "docs" / "protocol.md"
#: The receive time the documented examples are checked against (stated in the document).
DOC_RECEIVED_AT = datetime(2026, 11, 28, 2, 20, tzinfo=UTC)
NOW = datetime(2026, 11, 28, 2, 20, tzinfo=UTC)

_BLOCK_RE = re.compile(r"^```json (?P<info>[^\n]*)\n(?P<body>.*?)^```$", re.M | re.S)


def doc_examples() -> list[tuple[str, str | None, str]]:
    """``(topic, expected reject reason or None, payload)`` of every marked block."""
    out = []
    for match in _BLOCK_RE.finditer(DOC.read_text(encoding="utf-8")):
        attrs = dict(part.split("=", 1) for part in match["info"].split())
        out.append((attrs["topic"], attrs.get("reject"), match["body"]))
    return out


EXAMPLES = doc_examples()


def _state(**over: Any) -> dict[str, Any]:
    data: dict[str, Any] = {
        "v": 1,
        "device_id": "ATM-0001",
        "ts": "2026-11-28T02:15:00Z",
        "seq": 1,
        "state": "in_service",
    }
    data.update(over)
    return data


def _parse(kind: str, data: Any, device: str = "ATM-0001", received_at: datetime = NOW) -> Any:
    payload = json.dumps(data, ensure_ascii=False).encode()
    return parse_message(device_topic(device, kind), payload, received_at)


def _reason(topic: str, payload: bytes, received_at: datetime = NOW) -> str:
    with pytest.raises(ProtocolError) as info:
        parse_message(topic, payload, received_at)
    assert info.value.reason in REASONS
    return info.value.reason


STATE_TOPIC = device_topic("ATM-0001", "state")


class TestDocumentedExamples:
    """Every JSON example in docs/protocol.md is accepted or refused as it says."""

    def test_the_document_has_accepted_and_refused_examples_of_every_kind(self) -> None:
        accepted = {parse_topic(t)[2] for t, reason, _ in EXAMPLES if reason is None}
        refused = {reason for _, reason, _ in EXAMPLES if reason is not None}
        assert accepted == {"state", "event", "txn", "presence", "counter"}
        assert len(refused) >= 6
        assert refused <= set(REASONS)

    @pytest.mark.parametrize(
        ("topic", "payload"),
        [(t, p) for t, r, p in EXAMPLES if r is None],
        ids=lambda v: v if isinstance(v, str) and v.startswith("atmfleet/") else "",
    )
    def test_accepted_example_parses_and_round_trips(self, topic: str, payload: str) -> None:
        msg = parse_message(topic, payload.encode(), DOC_RECEIVED_AT)
        assert parse_message(topic, encode(msg), DOC_RECEIVED_AT) == msg

    @pytest.mark.parametrize(
        ("topic", "reason", "payload"),
        [(t, r, p) for t, r, p in EXAMPLES if r is not None],
        ids=lambda v: v if isinstance(v, str) and "\n" not in v else "",
    )
    def test_refused_example_gives_exactly_its_reason(
        self, topic: str, reason: str, payload: str
    ) -> None:
        assert _reason(topic, payload.encode(), DOC_RECEIVED_AT) == reason

    def test_every_reason_code_is_documented(self) -> None:
        text = DOC.read_text(encoding="utf-8")
        for reason in REASONS:
            assert f"| `{reason}` |" in text


class TestRoundTrip:
    """``encode`` produces what ``parse_message`` reads back unchanged."""

    def test_full_state_message(self) -> None:
        msg = _parse(
            "state",
            _state(
                components={"cdm": "ok", "cim": "fault"},
                cash_units=[
                    {
                        "id": "C1",
                        "type": "dispense",
                        "denomination": 100,
                        "count": 5,
                        "status": "low",
                    }
                ],
                faults=["CIM:JAM"],
                heartbeat_s=30,
            ),
        )
        assert parse_message(STATE_TOPIC, encode(msg), NOW) == msg

    def test_counter_message_keeps_its_financial_count(self) -> None:
        msg = CounterMessage(v=1, branch_id="BR-1", date=date(2026, 11, 27), financial=412, ts=NOW)
        again = parse_message(counter_topic("BR-1"), encode(msg), NOW)
        assert again == msg
        assert json.loads(encode(msg))["financial"] == 412

    def test_txn_amount_is_exact_and_the_derived_flag_is_not_sent(self) -> None:
        msg = TxnMessage(
            v=1,
            device_id="ATM-0001",
            ts=NOW,
            seq=9,
            txn_id="T-1",
            type=TxnType.DEPOSIT,
            amount=Decimal("1234.56"),
            result="ok",
            duration_ms=1,
        )
        wire = json.loads(encode(msg))
        assert "financial" not in wire
        again = parse_message(device_topic("ATM-0001", "txn"), encode(msg), NOW)
        assert isinstance(again, TxnMessage)
        assert again.amount == Decimal("1234.56")

    def test_encoded_timestamps_are_utc_with_z(self) -> None:
        msg = _parse("state", _state(ts="2026-11-28T02:15:00.250+00:00"))
        assert json.loads(encode(msg))["ts"] == "2026-11-28T02:15:00.250000Z"

    def test_chinese_text_is_sent_as_utf8_not_escaped(self) -> None:
        msg = _parse(
            "event",
            {**_state(), "event": "fault", "code": "CDM:1", "text": "钞箱故障"},
        )
        assert "钞箱故障".encode() in encode(msg)


def _txn(**over: Any) -> dict[str, Any]:
    data: dict[str, Any] = {
        "v": 1, "device_id": "ATM-0001", "ts": "2026-11-28T02:15:00Z", "seq": 1,
        "txn_id": "T1", "type": "withdrawal", "amount": "100.00", "result": "ok",
        "duration_ms": 30000, "on_us": False,
    }  # fmt: skip
    data.update(over)
    return data


class TestStrictWireTypes:
    """Nothing on the wire is converted: each lax form is refused on both parse paths
    (the direct JSON one, and the checked one a ``\\u`` escape sends a message to)."""

    REFUSED: ClassVar[list[tuple[str, dict[str, Any], str]]] = [
        ("state", _state(ts=1764296100), "ts"),
        ("state", _state(ts=1764296100.5), "ts"),
        ("state", _state(ts="1764296100"), "ts"),
        ("state", _state(seq=True), "seq"),
        ("state", _state(seq="7"), "seq"),
        ("state", _state(seq=7.0), "seq"),
        ("state", _state(heartbeat_s="60"), "heartbeat_s"),
        ("txn", _txn(on_us="yes"), "on_us"),
        ("txn", _txn(on_us=1), "on_us"),
        ("txn", _txn(duration_ms="30000"), "duration_ms"),
        ("event", {**_state(), "event": "power_restored", "since": 1764290000}, "since"),
    ]

    @pytest.mark.parametrize("escaped", [False, True], ids=["direct", "checked"])
    @pytest.mark.parametrize(("kind", "data", "field"), REFUSED)
    def test_a_lax_form_is_refused_naming_the_field(
        self, kind: str, data: dict[str, Any], field: str, escaped: bool
    ) -> None:
        payload = json.dumps({**data, "note": "\u00e9"} if escaped else data).encode()
        assert (b"\\u" in payload) is escaped
        with pytest.raises(ProtocolError) as info:
            parse_message(device_topic("ATM-0001", kind), payload, NOW)
        assert info.value.reason == "invalid"
        assert info.value.detail.startswith(field)

    @pytest.mark.parametrize("escaped", [False, True], ids=["direct", "checked"])
    def test_the_strict_forms_are_accepted(self, escaped: bool) -> None:
        data = _txn(amount=2000.5, fee="2.00", ts="2026-11-28T02:15:00.123456789Z")
        payload = json.dumps({**data, "note": "\u00e9"} if escaped else data).encode()
        msg = parse_message(device_topic("ATM-0001", "txn"), payload, NOW)
        assert (msg.amount, msg.on_us) == (Decimal("2000.5"), False)
        assert msg.ts == datetime(2026, 11, 28, 2, 15, 0, 123456, tzinfo=UTC)

    def test_models_built_in_python_keep_their_conversions(self) -> None:
        msg = CounterMessage.model_validate(
            {"v": 1, "branch_id": "B1", "date": "2026-11-27", "financial": "412", "ts": NOW}
        )
        assert msg.financial == 412


class TestTimestamps:
    """``ts`` is UTC; at most ``MAX_CLOCK_SKEW`` ahead of the collector."""

    def test_naive_timestamp_is_refused_naming_the_field(self) -> None:
        with pytest.raises(ProtocolError) as info:
            _parse("state", _state(ts="2026-11-28T10:15:00"))
        assert info.value.reason == "invalid"
        assert "ts" in info.value.detail and "UTC" in info.value.detail

    def test_local_offset_is_refused(self) -> None:
        with pytest.raises(ProtocolError) as info:
            _parse("state", _state(ts="2026-11-28T10:15:00+08:00"))
        assert info.value.reason == "invalid"

    def test_plus_zero_offset_is_utc(self) -> None:
        msg = _parse("state", _state(ts="2026-11-28T02:15:00+00:00"))
        assert msg.ts == datetime(2026, 11, 28, 2, 15, tzinfo=UTC)

    def test_exactly_the_maximum_skew_ahead_is_accepted(self) -> None:
        ts = NOW + MAX_CLOCK_SKEW
        msg = _parse("state", _state(ts=ts.isoformat()))
        assert msg.ts == ts

    def test_one_millisecond_past_the_maximum_skew_is_refused(self) -> None:
        ts = NOW + MAX_CLOCK_SKEW + timedelta(milliseconds=1)
        payload = json.dumps(_state(ts=ts.isoformat())).encode()
        assert _reason(STATE_TOPIC, payload) == "future_timestamp"

    def test_days_old_timestamps_are_accepted_for_store_and_forward(self) -> None:
        msg = _parse("state", _state(ts="2026-11-21T02:15:00Z", state="comms_down"))
        assert msg.state is DeviceState.COMMS_DOWN

    def test_skew_is_checked_for_presence_and_counter_too(self) -> None:
        future = (NOW + timedelta(hours=1)).isoformat()
        presence = {"v": 1, "device_id": "ATM-0001", "status": "online", "ts": future}
        presence["session"] = "s1"
        assert (
            _reason(device_topic("ATM-0001", "presence"), json.dumps(presence).encode())
            == "future_timestamp"
        )
        counter = {"v": 1, "branch_id": "B1", "date": "2026-11-27", "financial": 1, "ts": future}
        assert _reason(counter_topic("B1"), json.dumps(counter).encode()) == "future_timestamp"


class TestPayloadShape:
    """Size, encoding, JSON syntax and version are checked before the fields."""

    def test_payload_of_exactly_the_maximum_size_is_read(self) -> None:
        data = _state(note="")
        base = len(json.dumps(data).encode())
        data["note"] = "x" * (MAX_PAYLOAD_BYTES - base)
        payload = json.dumps(data).encode()
        assert len(payload) == MAX_PAYLOAD_BYTES
        assert isinstance(parse_message(STATE_TOPIC, payload, NOW), StateMessage)

    def test_one_byte_more_is_too_large(self) -> None:
        data = _state(note="")
        data["note"] = "x" * (MAX_PAYLOAD_BYTES - len(json.dumps(data).encode()) + 1)
        assert _reason(STATE_TOPIC, json.dumps(data).encode()) == "too_large"

    def test_gbk_text_is_not_utf8(self) -> None:
        payload = json.dumps(_state(text="钞箱"), ensure_ascii=False).encode("gbk")
        assert _reason(STATE_TOPIC, payload) == "not_utf8"

    @pytest.mark.parametrize(
        "payload",
        [b"", b"{", b'{"v":1,}', b"{'v': 1}", b"[" * 5000 + b"]" * 5000, b'{"v":NaN}'],
        ids=["empty", "truncated", "trailing-comma", "single-quotes", "deep-nesting", "nan"],
    )
    def test_broken_json_is_bad_json(self, payload: bytes) -> None:
        assert _reason(STATE_TOPIC, payload) == "bad_json"

    @pytest.mark.parametrize("payload", [b"[]", b'"state"', b"42", b"null", b"true"])
    def test_json_that_is_not_an_object_is_refused(self, payload: bytes) -> None:
        assert _reason(STATE_TOPIC, payload) == "not_object"

    @pytest.mark.parametrize(
        "escape", ["\\u0000", "\\ud800", "\\udc00x"], ids=["nul", "high", "low"]
    )
    def test_strings_that_cannot_be_stored_as_text_are_bad_json(self, escape: str) -> None:
        payload = json.dumps(_state(faults=["F"])).replace('"F"', f'"{escape}"').encode()
        assert _reason(STATE_TOPIC, payload) == "bad_json"

    def test_unstorable_text_in_a_key_is_bad_json_and_the_detail_stays_encodable(self) -> None:
        payload = json.dumps(_state()).replace('"seq"', '"\\ud800"').encode()
        with pytest.raises(ProtocolError) as info:
            parse_message(STATE_TOPIC, payload, NOW)
        assert info.value.reason == "bad_json"
        str(info.value).encode("utf-8")

    def test_a_paired_surrogate_escape_is_an_ordinary_character(self) -> None:
        payload = json.dumps(_state(faults=["F"])).replace('"F"', '"\\ud83d\\ude00"').encode()
        msg = parse_message(STATE_TOPIC, payload, NOW)
        assert isinstance(msg, StateMessage)
        assert msg.faults == ["\U0001f600"]

    @pytest.mark.parametrize(
        "version", [2, 0, "1", 1.0, True, None], ids=["2", "0", "str", "float", "bool", "null"]
    )
    def test_anything_but_the_integer_one_is_an_unknown_version(self, version: Any) -> None:
        assert _reason(STATE_TOPIC, json.dumps(_state(v=version)).encode()) == "unknown_version"

    def test_missing_version_is_an_unknown_version(self) -> None:
        data = _state()
        del data["v"]
        assert _reason(STATE_TOPIC, json.dumps(data).encode()) == "unknown_version"

    def test_unknown_version_wins_over_invalid_fields(self) -> None:
        data = {"v": 2, "device_id": "ATM-0001", "whatever": True}
        assert _reason(STATE_TOPIC, json.dumps(data).encode()) == "unknown_version"


class TestTopicsAndIds:
    """The topic decides the model; ids are safe everywhere; payload id equals topic id."""

    @pytest.mark.parametrize(
        "ident",
        [
            "ATM'0001",
            'ATM"1',
            "x';DROP TABLE t;--",
            "ATM 1",
            "ATM+",
            "#",
            "+",
            "ATM-1\n",
            "",
            "-ATM",
            "自助1",
            "A" * 65,
        ],
        ids=[
            "quote",
            "dquote",
            "sql",
            "space",
            "plus",
            "hash",
            "plus-only",
            "newline",
            "empty",
            "leading-dash",
            "non-ascii",
            "too-long",
        ],
    )
    def test_hostile_id_in_topic_is_bad_topic(self, ident: str) -> None:
        topic = f"atmfleet/v1/device/{ident}/state"
        assert _reason(topic, json.dumps(_state(device_id=ident)).encode()) == "bad_topic"

    @pytest.mark.parametrize(
        "topic",
        [
            "atmfleet/v1/device/ATM/1/state",
            "atmfleet/v1/device/ATM-0001/state/",
            "atmfleet/v1/device/ATM-0001/counter",
            "atmfleet/v1/branch/BR-1/state",
            "atmfleet/v2/device/ATM-0001/state",
            "other/v1/device/ATM-0001/state",
            "atmfleet/v1/device/ATM-0001/#",
            "",
        ],
    )
    def test_topic_outside_the_two_families_is_bad_topic(self, topic: str) -> None:
        assert _reason(topic, json.dumps(_state()).encode()) == "bad_topic"

    def test_bad_topic_is_checked_before_the_payload(self) -> None:
        assert _reason("atmfleet/v1/device/A+B/state", b"\xff" * (MAX_PAYLOAD_BYTES + 1)) == (
            "bad_topic"
        )

    def test_the_longest_allowed_id_is_accepted(self) -> None:
        ident = "A" + "b.-_9" * 12 + "xyz"
        assert len(ident) == 64
        assert _parse("state", _state(device_id=ident), device=ident).device_id == ident

    def test_payload_for_another_device_is_device_mismatch(self) -> None:
        data = _state(device_id="ATM-0002")
        assert _reason(STATE_TOPIC, json.dumps(data).encode()) == "device_mismatch"

    def test_ids_are_case_sensitive(self) -> None:
        data = _state(device_id="atm-0001")
        assert _reason(STATE_TOPIC, json.dumps(data).encode()) == "device_mismatch"

    def test_counter_for_another_branch_is_device_mismatch(self) -> None:
        data = {
            "v": 1,
            "branch_id": "B2",
            "date": "2026-11-27",
            "financial": 1,
            "ts": "2026-11-28T01:00:00Z",
        }
        assert _reason(counter_topic("B1"), json.dumps(data).encode()) == "device_mismatch"

    def test_subscriptions_cover_every_topic_the_helpers_build(self) -> None:
        assert SUBSCRIPTIONS == ("atmfleet/v1/#",)
        for kind in ("state", "event", "txn", "presence"):
            assert parse_topic(device_topic("D1", kind)) == ("device", "D1", kind)
        assert parse_topic(counter_topic("B1")) == ("branch", "B1", "counter")


class TestForwardCompatibility:
    """Unknown fields and component classes are ignored; unknown values are not."""

    def test_unknown_top_level_and_nested_fields_are_ignored(self) -> None:
        data = _state(
            firmware="5.2",
            cash_units=[
                {
                    "id": "C1",
                    "type": "dispense",
                    "denomination": 100,
                    "count": 1,
                    "status": "ok",
                    "sensor": {"temp": 31},
                }
            ],
        )
        msg = _parse("state", data)
        assert msg.cash_units[0].count == 1
        assert b"firmware" not in encode(msg)

    def test_unknown_component_class_is_ignored_and_the_heartbeat_kept(self) -> None:
        msg = _parse("state", _state(components={"siu": "ok", "cdm": "fault"}))
        assert msg.components == {Component.CDM: "fault"}

    def test_unknown_status_of_a_known_component_is_invalid(self) -> None:
        with pytest.raises(ProtocolError) as info:
            _parse("state", _state(components={"cdm": "melted"}))
        assert info.value.reason == "invalid"
        assert "components.cdm" in info.value.detail and "melted" in info.value.detail

    def test_unknown_state_is_invalid_and_the_detail_names_field_and_value(self) -> None:
        with pytest.raises(ProtocolError) as info:
            _parse("state", _state(state="sleeping"))
        assert info.value.reason == "invalid"
        assert "state" in info.value.detail and "'sleeping'" in info.value.detail

    def test_components_that_are_not_an_object_are_invalid(self) -> None:
        with pytest.raises(ProtocolError) as info:
            _parse("state", _state(components=["cdm"]))
        assert info.value.reason == "invalid"


class TestEvents:
    """Rules between event fields."""

    def _event(self, **over: Any) -> dict[str, Any]:
        data = _state(**over)
        del data["state"]
        return data

    @pytest.mark.parametrize("event", ["fault", "fault_cleared"])
    def test_fault_without_code_is_invalid(self, event: str) -> None:
        with pytest.raises(ProtocolError) as info:
            _parse("event", self._event(event=event, component="cdm"))
        assert info.value.reason == "invalid"
        assert "code" in info.value.detail

    def test_fault_with_code_is_accepted(self) -> None:
        msg = _parse("event", self._event(event="fault", code="CDM:PICK", component="cdm"))
        assert isinstance(msg, EventMessage)
        assert (msg.event, msg.code, msg.component) == (EventType.FAULT, "CDM:PICK", Component.CDM)

    def test_power_restored_without_since_is_invalid(self) -> None:
        with pytest.raises(ProtocolError) as info:
            _parse("event", self._event(event="power_restored"))
        assert info.value.reason == "invalid"
        assert "since" in info.value.detail

    def test_power_restored_since_after_ts_is_invalid(self) -> None:
        with pytest.raises(ProtocolError) as info:
            _parse("event", self._event(event="power_restored", since="2026-11-28T02:16:00Z"))
        assert info.value.reason == "invalid"

    def test_power_restored_keeps_since(self) -> None:
        msg = _parse("event", self._event(event="power_restored", since="2026-11-28T01:40:00Z"))
        assert msg.since == datetime(2026, 11, 28, 1, 40, tzinfo=UTC)

    def test_fault_code_with_spaces_is_invalid(self) -> None:
        with pytest.raises(ProtocolError) as info:
            _parse("event", self._event(event="fault", code="CDM PICK"))
        assert info.value.reason == "invalid"


class TestTransactions:
    """Financial is derived from the type, never taken from the device."""

    def _txn(self, **over: Any) -> dict[str, Any]:
        fields: dict[str, Any] = {
            "txn_id": "T-1",
            "type": "withdrawal",
            "result": "ok",
            "duration_ms": 1000,
        }
        data = _state(**{**fields, **over})
        del data["state"]
        return data

    @pytest.mark.parametrize(
        ("txn_type", "financial"),
        [
            ("withdrawal", True),
            ("deposit", True),
            ("transfer", True),
            ("payment", True),
            ("inquiry", False),
            ("pin_change", False),
            ("statement", False),
            ("passbook", False),
        ],
    )
    def test_financial_follows_the_type(self, txn_type: str, financial: bool) -> None:
        assert _parse("txn", self._txn(type=txn_type)).financial is financial

    def test_a_financial_flag_sent_by_the_device_is_ignored(self) -> None:
        assert _parse("txn", self._txn(type="inquiry", financial=True)).financial is False
        assert _parse("txn", self._txn(type="withdrawal", financial=False)).financial is True

    def test_more_than_two_decimals_is_invalid(self) -> None:
        with pytest.raises(ProtocolError) as info:
            _parse("txn", self._txn(amount="10.001"))
        assert info.value.reason == "invalid"
        assert "amount" in info.value.detail

    def test_negative_amount_is_invalid(self) -> None:
        with pytest.raises(ProtocolError) as info:
            _parse("txn", self._txn(amount=-5))
        assert info.value.reason == "invalid"

    def test_amount_as_number_or_string_is_the_same_decimal(self) -> None:
        assert _parse("txn", self._txn(amount=100.5)).amount == Decimal("100.50")
        assert _parse("txn", self._txn(amount="100.50")).amount == Decimal("100.50")

    def test_defaults(self) -> None:
        msg = _parse("txn", self._txn())
        assert (msg.amount, msg.fee, msg.currency, msg.on_us) == (
            Decimal(0),
            Decimal(0),
            "CNY",
            True,
        )


class TestPresence:
    """Presence carries a session and says whether it is the broker's will."""

    def _presence(self, **over: Any) -> dict[str, Any]:
        data = {
            "v": 1,
            "device_id": "ATM-0001",
            "status": "offline",
            "ts": "2026-11-28T01:00:00Z",
            "session": "s-1",
        }
        data.update(over)
        return data

    def test_will_defaults_to_false(self) -> None:
        msg = _parse("presence", self._presence())
        assert isinstance(msg, PresenceMessage)
        assert msg.will is False

    def test_presence_needs_a_session(self) -> None:
        data = self._presence()
        del data["session"]
        with pytest.raises(ProtocolError) as info:
            _parse("presence", data)
        assert info.value.reason == "invalid"
        assert "session" in info.value.detail

    def test_presence_has_no_seq_and_an_unknown_status_is_invalid(self) -> None:
        assert not hasattr(_parse("presence", self._presence(seq=5)), "seq")
        with pytest.raises(ProtocolError):
            _parse("presence", self._presence(status="sleeping"))


class TestNothingButProtocolError:
    """Whatever arrives, ``parse_message`` raises ``ProtocolError`` or returns a model."""

    @pytest.mark.parametrize(
        "value",
        [None, [], {}, "x" * 600, -1, 2**64, 1e308, True, {"a": [1, {"b": None}]}],
        ids=["null", "list", "obj", "long-str", "neg", "huge", "float", "bool", "nested"],
    )
    @pytest.mark.parametrize(
        "field", ["ts", "seq", "state", "components", "cash_units", "faults", "heartbeat_s"]
    )
    def test_any_json_value_in_any_field(self, field: str, value: Any) -> None:
        try:
            _parse("state", _state(**{field: value}))
        except ProtocolError as exc:
            assert exc.reason in REASONS
            str(exc).encode("utf-8")
