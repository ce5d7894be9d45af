"""What a simulated device holds while it waits in the merge: 100,000 of them fit in one
process only if each stays small (docs/simulator.md, "Scale"). Sizes, not times: every
figure here is the same on every machine.

The messages themselves are pinned by tests/test_simulator_stream.py (the reference
engine's hashes); this checks the shape that keeps them cheap: the merge holds no
message, devices of one kind share one class, and a device that has had no fault,
outage or link drop has no instance dict.
"""

from __future__ import annotations

import gc
import sys
from datetime import UTC, datetime, timedelta
from typing import Any

from simulator.config import SimConfig
from simulator.engine import _TOPIC, Emission, _Device, device_window, generate
from simulator.fleet import generate_inventory

START = datetime(2026, 11, 2, tzinfo=UTC)


def _waiting(devices: int, messages: int) -> tuple[list[tuple[Any, ...]], list[Emission]]:
    """The merge's heap after ``messages`` messages of a fleet, and those messages."""
    inv = generate_inventory(devices, seed=1, prefix="mem-")
    it = generate(inv, SimConfig(), 1, START, START + timedelta(days=30))
    taken = [e for _, e in zip(range(messages), it, strict=False)]
    assert it.gi_frame is not None
    return list(it.gi_frame.f_locals["heap"]), taken


def test_the_merge_holds_streams_not_messages() -> None:
    heap, taken = _waiting(300, 20_000)
    assert len(taken) == 20_000
    assert all(len(entry) == 3 and not isinstance(entry[2], Emission) for entry in heap)
    devices = [entry[2] for entry in heap if isinstance(entry[2], _Device)]
    assert len(devices) == 300  # every device is up: 20,000 messages is past the first minute
    # Most wait with nothing written: their next message is a heartbeat, made when taken.
    deferred = [d for d in devices if d.out is None and d.lz is not None]
    assert len(deferred) > 0.6 * len(devices)


def test_devices_of_a_kind_share_a_class_and_stay_small() -> None:
    heap, _ = _waiting(300, 20_000)
    devices = [entry[2] for entry in heap if isinstance(entry[2], _Device)]
    kinds: dict[type, set[tuple[Any, ...]]] = {}
    for d in devices:
        dev = d.dev
        kind = (dev.type, dev.placement, dev.vendor, dev.model, dev.can_deposit,
                device_window(dev))  # fmt: skip
        kinds.setdefault(type(d), set()).add(kind)
        # The slots of the device itself, not its Random (2.5 KB, the Mersenne Twister's).
        assert sys.getsizeof(d) <= 360  # 720 before the kinds and the defaults
    assert all(len(k) == 1 for k in kinds.values())  # one kind per class ...
    assert len(kinds) == len(set().union(*kinds.values()))  # ... and one class per kind
    assert len(kinds) < len(devices) / 3


def test_a_device_without_incidents_has_no_instance_dict() -> None:
    heap, _ = _waiting(300, 20_000)
    devices = [entry[2] for entry in heap if isinstance(entry[2], _Device)]
    # gc.get_referents lists an instance dict only when one has been made.
    with_dict = [d for d in devices if any(type(r) is dict for r in gc.get_referents(d))]
    quiet = [d for d in devices if d.fault is None and not d.link_down and not d.in_cut]
    assert len(quiet) > 0.9 * len(devices)
    assert len(with_dict) < 0.1 * len(devices)


def test_topics_are_the_protocols() -> None:
    from atmfleet.protocol import device_topic

    for kind in ("state", "event", "txn", "presence"):
        assert _TOPIC + "ATM-1/" + kind == device_topic("ATM-1", kind)
