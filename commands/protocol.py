"""The remote-command wire format (docs/protocol.md §14): pure, no network, no database.

- a **request** goes to ``atmfleet/v1/command/<device>`` (only that device, or its gateway,
  may read it);
- the device answers on ``atmfleet/v1/result/<device>`` (MQTT 5: the request's response
  topic, with its correlation data; MQTT 3.1.1: ``reply_to`` and ``correlation`` in the
  request's JSON);
- a journal or log upload goes in chunks to ``atmfleet/v1/data/<device>``.

Result and data topics are outside ``atmfleet/v1/device/…`` on purpose: the collector
reads ``device/+/+``, and a journal (customer transactions) is not its to read.
"""

from __future__ import annotations

import json
from datetime import datetime
from enum import StrEnum
from typing import Any, Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, ValidationError

from atmfleet.protocol import DEVICE_ID_PATTERN, TOPIC_ROOT

COMMAND_ROOT = f"{TOPIC_ROOT}/command"
RESULT_ROOT = f"{TOPIC_ROOT}/result"
DATA_ROOT = f"{TOPIC_ROOT}/data"
COMMAND_SCHEMA_VERSION = 1
COMMAND_ID_PATTERN = r"^[A-Za-z0-9_.-]{1,64}$"


def command_topic(device_id: str) -> str:
    return f"{COMMAND_ROOT}/{device_id}"


def result_topic(device_id: str) -> str:
    return f"{RESULT_ROOT}/{device_id}"


def data_topic(device_id: str) -> str:
    return f"{DATA_ROOT}/{device_id}"


def device_of(topic: str, root: str) -> str | None:
    """The device id of ``<root>/<id>``, or None if the topic is not of that family."""
    prefix = root + "/"
    if not topic.startswith(prefix):
        return None
    rest = topic[len(prefix) :]
    return rest if rest and "/" not in rest else None


class CommandKind(StrEnum):
    RESTART = "restart"  # restart the application
    OUT_OF_SERVICE = "out_of_service"
    IN_SERVICE = "in_service"
    REFRESH = "refresh"  # send a fresh state message now
    JOURNAL = "journal"  # upload the electronic journal / logs for a time range


#: Commands that interrupt service: they need a confirmation (``--yes``).
DISRUPTIVE = frozenset({CommandKind.RESTART, CommandKind.OUT_OF_SERVICE})


class Outcome(StrEnum):
    """What a device answers (``expired`` also when the server gives up waiting)."""

    ACCEPTED = "accepted"
    DONE = "done"
    FAILED = "failed"
    REJECTED = "rejected"
    EXPIRED = "expired"


class State(StrEnum):
    """A command's state on the server."""

    QUEUED = "queued"  # stored, not yet handed to the broker
    SENT = "sent"  # the broker acknowledged the request
    ACCEPTED = "accepted"
    DONE = "done"
    FAILED = "failed"
    REJECTED = "rejected"
    EXPIRED = "expired"


FINAL = frozenset({State.DONE, State.FAILED, State.REJECTED, State.EXPIRED})
#: Allowed order of the states: a state is never followed by one of a lower rank.
RANK = {
    State.QUEUED: 0,
    State.SENT: 1,
    State.ACCEPTED: 2,
    State.DONE: 3,
    State.FAILED: 3,
    State.REJECTED: 3,
    State.EXPIRED: 3,
}


class _Model(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)


class CommandRequest(_Model):
    v: Literal[1] = 1
    command_id: str = Field(pattern=COMMAND_ID_PATTERN)
    device_id: str = Field(pattern=DEVICE_ID_PATTERN)
    kind: CommandKind
    params: dict[str, Any] = Field(default_factory=dict)
    issued_at: AwareDatetime
    expires_at: AwareDatetime
    #: Payload fallback for MQTT 3.1.1 (MQTT 5 devices use the properties).
    reply_to: str
    correlation: str


class ResultMessage(_Model):
    v: Literal[1] = 1
    command_id: str = Field(pattern=COMMAND_ID_PATTERN)
    device_id: str = Field(pattern=DEVICE_ID_PATTERN)
    result: Outcome
    ts: AwareDatetime
    correlation: str | None = None
    reason: str | None = Field(None, max_length=500)
    detail: dict[str, Any] = Field(default_factory=dict)


class ChunkHeader(_Model):
    v: Literal[1] = 1
    command_id: str = Field(pattern=COMMAND_ID_PATTERN)
    seq: int = Field(ge=0, lt=1_000_000)


class WireError(ValueError):
    """A command, result or chunk that cannot be read."""


def _dump(model: BaseModel) -> bytes:
    return model.model_dump_json(exclude_none=True).encode()


def encode_request(req: CommandRequest) -> bytes:
    return _dump(req)


def encode_result(msg: ResultMessage) -> bytes:
    return _dump(msg)


def decode_request(payload: bytes) -> CommandRequest:
    try:
        return CommandRequest.model_validate_json(payload)
    except ValidationError as exc:
        raise WireError(f"bad command request: {exc.errors()[0]['msg']}") from None


def decode_result(payload: bytes) -> ResultMessage:
    try:
        return ResultMessage.model_validate_json(payload)
    except ValidationError as exc:
        raise WireError(f"bad command result: {exc.errors()[0]['msg']}") from None


def encode_chunk(command_id: str, seq: int, data: bytes) -> bytes:
    """One upload chunk: a JSON header line, ``\\n``, then the raw bytes (no base64)."""
    header = json.dumps({"v": 1, "command_id": command_id, "seq": seq}, separators=(",", ":"))
    return header.encode() + b"\n" + data


def decode_chunk(payload: bytes) -> tuple[ChunkHeader, bytes]:
    head, sep, data = payload.partition(b"\n")
    if not sep:
        raise WireError("chunk without a header line")
    try:
        return ChunkHeader.model_validate_json(head), data
    except ValidationError as exc:
        raise WireError(f"bad chunk header: {exc.errors()[0]['msg']}") from None


def parse_range(params: dict[str, Any]) -> tuple[datetime, datetime]:
    """``since`` / ``until`` of a journal command (RFC 3339, with a zone)."""
    try:
        since = datetime.fromisoformat(str(params["since"]))
        until = datetime.fromisoformat(str(params["until"]))
    except (KeyError, ValueError) as exc:
        raise WireError(f"journal needs since and until as RFC 3339 times ({exc})") from None
    if since.tzinfo is None or until.tzinfo is None:
        raise WireError("journal since/until need a time zone")
    if until <= since:
        raise WireError("journal until must be after since")
    return since, until
