"""The fast scenarios of the chaos suite (``bench/chaos.py``), scaled down, same code.

Each runs against a Mosquitto and a PostgreSQL cluster of its own (temporary folder,
free ports), never the shared services, and checks counts from the database.
"""

from __future__ import annotations

import importlib
import random
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from atmfleet.protocol import REASONS

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
chaos: Any = importlib.import_module("chaos")

pytestmark = [pytest.mark.integration, pytest.mark.slow]

SCALE = chaos.Scale(
    devices=200,
    kills=2,
    rate=1_000,
    broker_devices=20,
    broker_rounds=20,  # 400 messages per restart, twice what a busy collector holds
    fuzz=2_000,
    backend_kills=2,
    pg_outage_s=3,
    pg_inflight=2_000,
)


@pytest.fixture(scope="module")
def lab() -> Iterator[Any]:
    with chaos.lab() as the_lab:
        yield the_lab


def show(result: Any) -> None:
    print("\n" + chaos.HEADER + "\n" + chaos.row(result))
    for note in result.notes:
        print("    " + note)


def test_fuzzed_payloads_crash_nothing_and_each_seen_one_is_stored_or_dead_lettered(
    lab: Any,
) -> None:
    result = chaos.fuzz(lab, SCALE, random.Random(12))
    show(result)
    d = result.details
    assert not d["crashed"] and d["tracebacks"] == 0
    # Every message the collector's subscriptions deliver is a row or a dead letter.
    assert d["lost_seen"] == 0
    # Messages outside the root are not the collector's (never delivered, not lost).
    assert result.lost == 0
    assert d["neighbours_stored"] == d["neighbours_sent"]
    assert d["neighbour_gaps"] == 0
    assert result.duplicates == 0
    assert set(d["dead_by_reason"]) <= {*REASONS, "db_rejected"}
    assert result.dead > SCALE.fuzz // 4  # the generator does produce hostile input


def test_sigkilled_collector_loses_nothing_and_stores_nothing_twice(lab: Any) -> None:
    result = chaos.sigkill_collector(lab, SCALE, random.Random(12))
    show(result)
    assert result.sent > SCALE.devices
    assert (result.lost, result.duplicates, result.gaps) == (0, 0, 0)
    assert result.stored == result.sent


def test_broker_restarted_with_persistence_keeps_the_offline_backlog(lab: Any) -> None:
    case = next(c for c in chaos.BROKER_CASES if c.key == "broker-term-persist-away")
    result = chaos.broker_case(lab, SCALE, case)
    show(result)
    assert (result.lost, result.duplicates, result.gaps) == (0, 0, 0)
    assert result.sent == SCALE.broker_devices * (SCALE.broker_rounds + 2)


def test_broker_killed_without_persistence_every_loss_is_in_the_gap_view(lab: Any) -> None:
    case = next(c for c in chaos.BROKER_CASES if c.key == "broker-kill-mem-away")
    result = chaos.broker_case(lab, SCALE, case)
    show(result)
    assert result.lost == SCALE.broker_devices * SCALE.broker_rounds  # the whole backlog
    assert result.gaps == result.lost
    assert result.duplicates == 0


def test_backends_terminated_inside_a_batch_lose_nothing(lab: Any) -> None:
    result = chaos.backend_kills(lab, SCALE, random.Random(12))
    show(result)
    assert result.details["killed"] == SCALE.backend_kills
    assert result.details["retries"] >= SCALE.backend_kills
    assert (result.lost, result.duplicates, result.gaps) == (0, 0, 0)


def test_a_stopped_database_stops_the_reading_at_max_inflight_and_loses_nothing(
    lab: Any,
) -> None:
    result = chaos.postgres_outage(lab, SCALE, random.Random(12))
    show(result)
    # The stream (1,000/s for 3 s) outruns the buffer: it fills, then reading stops.
    assert result.details["peak_held"] == SCALE.pg_inflight
    assert (result.lost, result.duplicates, result.gaps) == (0, 0, 0)
