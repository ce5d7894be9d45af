"""One MQTT message -> an accepted record or a dead letter. Pure; never raises."""

from __future__ import annotations

import logging
from datetime import datetime

from atmfleet.protocol import MAX_PAYLOAD_BYTES, ProtocolError, parse_message
from atmfleet.store.writer import Accepted, Rejected

log = logging.getLogger(__name__)


def decode(
    topic: str, payload: bytes, received_at: datetime, size: int | None = None
) -> Accepted | Rejected:
    """Validate one message against the protocol; anything wrong becomes a dead letter.

    ``size`` is the payload's size as received when ``payload`` is only its first bytes
    (the collector keeps no more of an oversized payload than the dead letter does)."""
    if size is not None and size > len(payload):
        return Rejected.of(
            topic,
            payload,
            received_at,
            "too_large",
            f"{size} bytes > {MAX_PAYLOAD_BYTES}",
            payload_size=size,
        )
    try:
        message = parse_message(topic, payload, received_at)
    except ProtocolError as exc:
        return Rejected.of(topic, payload, received_at, exc.reason, exc.detail)
    except Exception as exc:  # a device must never be able to crash the collector
        log.exception("unexpected error while parsing a message on %r", topic[:200])
        return Rejected.of(topic, payload, received_at, "internal", f"{type(exc).__name__}: {exc}")
    return Accepted(message, received_at, topic, payload)
