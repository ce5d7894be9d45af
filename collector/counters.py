"""Teller-counter volumes from a file (the core banking export), as counter messages.

CSV with a header: ``branch_id,date,financial[,non_financial][,source]``; ``date`` is the
local day (YYYY-MM-DD). Each line becomes a :class:`CounterMessage` stored exactly as one
received on ``atmfleet/v1/branch/<branch_id>/counter``: a later import replaces the volumes
of the same branch and day.
"""

from __future__ import annotations

import csv
from collections.abc import Iterable
from datetime import UTC, datetime

from pydantic import ValidationError

from atmfleet.errors import ConfigError
from atmfleet.protocol import CounterMessage
from atmfleet.settings import format_validation_error

REQUIRED = ("branch_id", "date", "financial")


def parse_counter_csv(
    lines: Iterable[str], source_name: str, now: datetime | None = None
) -> list[CounterMessage]:
    """Parse the file; a bad line raises :class:`ConfigError` naming the line and the field."""
    reader = csv.DictReader(lines)
    header = reader.fieldnames or []
    missing = [c for c in REQUIRED if c not in header]
    if missing:
        raise ConfigError(
            f"{source_name}: header lacks {', '.join(missing)} "
            f"(expected branch_id,date,financial[,non_financial][,source])"
        )
    ts = now or datetime.now(UTC)
    messages = []
    for row in reader:
        data: dict[str, object] = {k: v for k, v in row.items() if k and v not in (None, "")}
        data.setdefault("source", "file")
        try:
            messages.append(CounterMessage.model_validate({**data, "v": 1, "ts": ts}))
        except ValidationError as exc:
            raise ConfigError(
                format_validation_error(exc, source=f"{source_name} line {reader.line_num}")
            ) from None
    return messages
