"""The simulator's technicians: every hardware fault is dispatched, reached and repaired
in that order, the ledger's repairs match the messages the devices sent, they survive a
write and a read, and they are the same for the same seed."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

from simulator.config import make_config
from simulator.fleet import generate_inventory
from simulator.ledger import load_ledger, simulate

START = datetime(2026, 11, 2, tzinfo=UTC)
END = datetime(2026, 11, 5, tzinfo=UTC)
CONFIG = make_config(
    {
        "vendors": {
            v: {"mtbf_days": 1.0, "dispatch_h": 0.8}
            for v in ("GRG", "Yihua", "KingTeller", "Hitachi", "NCR", "DieboldNixdorf")
        },
        "technicians": {"dispatch_after_min": 12},
    }
)


def run():  # type: ignore[no-untyped-def]
    inv = generate_inventory(40, 3, prefix="tc-", config=CONFIG)
    return simulate(inv, CONFIG, 3, START, END, heartbeat_s=300)


def test_each_hardware_fault_is_dispatched_then_reached_then_repaired() -> None:
    r = run()
    repairs = r.ledger.repairs
    hardware = [x for x in repairs if not x.software]
    assert len(hardware) >= 10
    for x in hardware:
        assert x.dispatch is not None and x.dispatch >= x.fault + 12 * 60_000
        if x.arrival is not None:
            assert x.arrival >= x.dispatch
        if x.repair is not None:
            assert x.arrival is not None and x.repair >= x.arrival
    for x in repairs:
        if x.software:
            assert (x.dispatch, x.arrival, x.component) == (None, None, None)
    # The truth is what the devices said: a technician_arrived and a fault_cleared event
    # (or a buffered one) at those instants.
    events = {(e.device_id, e.detail, e.ts) for e in r.emissions if e.kind == "event"}
    for x in hardware:
        if x.arrival is not None:
            assert (x.device_id, "technician_arrived", x.arrival) in events
        if x.repair is not None:
            assert (x.device_id, "fault_cleared", x.repair) in events


def test_repairs_are_written_read_back_and_deterministic(tmp_path: Path) -> None:
    first, second = run(), run()
    assert first.ledger.repairs == second.ledger.repairs
    first.ledger.write(tmp_path)
    assert load_ledger(tmp_path).repairs == first.ledger.repairs
