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
