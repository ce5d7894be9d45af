"""The simulated fleet's behaviour, checked on what it sends (no broker needed)."""

from __future__ import annotations

import random
from collections import defaultdict
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from atmfleet.inventory import CASH_DISPENSING_TYPES, DeviceType, Inventory
from atmfleet.protocol import (
    SERVING_STATES,
    EventMessage,
    PresenceMessage,
    StateMessage,
    TxnMessage,
    parse_message,
)
from atmfleet.windows import ServiceWindow
from simulator.config import SimConfig, make_config
from simulator.engine import Control, Emission, device_window, generate, ms
from simulator.fleet import generate_inventory
from simulator.ledger import simulate

START = datetime(2026, 11, 2, tzinfo=UTC)  # a Monday (local: 08:00)
LATER = datetime(2030, 1, 1, tzinfo=UTC)  # "now" for parsing: nothing is in the future


def by_device(emissions: list[Emission]) -> dict[str, list[Emission]]:
    out: dict[str, list[Emission]] = defaultdict(list)
    for e in emissions:
        if e.kind != "counter":
            out[e.device_id].append(e)
    return out


@pytest.fixture(scope="module")
def week() -> tuple[Inventory, list[Emission]]:
    """100 devices for a week, heartbeat 5 minutes, with busy incidents."""
    inv = generate_inventory(100, seed=7)
    config = make_config(
        {
            "incidents": {
                "branch_power_cuts_per_year": 20,
                "subbranch_network_outages_per_year": 30,
                "device_link_drops_per_year": 50,
            }
        }
    )
    run = simulate(inv, config, 7, START, START + timedelta(days=7), heartbeat_s=300)
    return inv, run.emissions


class TestDeterminism:
    """Same seed, same fleet history; another seed, another history."""

    def run(self, seed: int, inv: Inventory | None = None) -> tuple[list[Emission], list[object]]:
        inv = inv or generate_inventory(40, seed=3)
        r = simulate(inv, SimConfig(), seed, START, START + timedelta(days=2), heartbeat_s=300)
        return r.emissions, [r.ledger.intervals, r.ledger.counters, r.ledger.txn_days]

    def test_same_seed_gives_identical_messages_and_ledger(self) -> None:
        assert self.run(11) == self.run(11)

    def test_different_seed_gives_a_different_history(self) -> None:
        a, ledger_a = self.run(11)
        b, ledger_b = self.run(12)
        assert [e.payload for e in a] != [e.payload for e in b]
        assert ledger_a != ledger_b

    def test_history_does_not_depend_on_the_inventory_order(self) -> None:
        inv = generate_inventory(40, seed=3)
        devices = list(inv.devices)
        random.Random(1).shuffle(devices)
        shuffled = Inventory(
            subbranches=inv.subbranches, branches=inv.branches, devices=tuple(devices)
        )
        assert self.run(11, inv) == self.run(11, shuffled)


@pytest.mark.slow
class TestMessages:
    """Every message is valid protocol v1 and matches its ledger fields."""

    def test_every_payload_parses_and_matches_its_topic_seq_and_ts(self, week) -> None:
        _, emissions = week
        for e in emissions:
            msg = parse_message(e.topic, e.payload, received_at=LATER)
            if e.kind == "counter":
                continue
            assert isinstance(msg, StateMessage | EventMessage | TxnMessage | PresenceMessage)
            assert msg.device_id == e.device_id
            assert ms(msg.ts) == e.ts
            if isinstance(msg, PresenceMessage):
                assert e.retain
            else:
                assert msg.seq == e.seq and not e.retain

    def test_txn_ids_are_unique_and_inter_bank_withdrawals_carry_a_fee(self, week) -> None:
        _, emissions = week
        txns = [e for e in emissions if e.kind == "txn"]
        assert len({e.txn_id for e in txns}) == len(txns)
        fees = [
            m.fee
            for e in txns
            if isinstance(m := parse_message(e.topic, e.payload, received_at=LATER), TxnMessage)
            and not m.on_us
            and m.type == "withdrawal"
            and m.result == "ok"
        ]
        assert fees and all(2 <= f <= 4 for f in fees)


@pytest.mark.slow
class TestStateMachine:
    """Invariants of each device's life."""

    def test_seq_strictly_grows_per_device_in_publish_and_ts_order(self, week) -> None:
        _, emissions = week
        for device_id, items in by_device(emissions).items():
            seqs = [e.seq for e in items if e.seq >= 0]
            assert seqs == sorted(set(seqs)), device_id
            stamps = [e.ts for e in items if e.seq >= 0]
            assert stamps == sorted(stamps), device_id

    def test_no_transaction_while_not_serving(self, week) -> None:
        _, emissions = week
        for device_id, items in by_device(emissions).items():
            state = None
            for e in sorted((e for e in items if e.seq >= 0), key=lambda e: e.seq):
                if e.kind == "state":
                    state = e.detail
                elif e.kind == "txn":
                    assert state in SERVING_STATES, (device_id, e.ts, state)

    def test_a_technician_arrives_before_a_hardware_repair_ends(self, week) -> None:
        _, emissions = week
        repairs = 0
        for device_id, items in by_device(emissions).items():
            events = [e for e in items if e.kind == "event"]
            open_fault: str | None = None
            technician = False
            for e in events:
                if e.detail == "fault":
                    assert open_fault is None, device_id
                    open_fault, technician = e.ts and e.payload.decode(), False
                elif e.detail == "technician_arrived":
                    assert open_fault is not None
                    technician = True
                elif e.detail == "fault_cleared":
                    assert open_fault is not None
                    software = '"code":"SW-' in open_fault
                    assert technician or software, (device_id, e.ts)
                    repairs += not software
                    open_fault = None
                elif e.detail == "technician_left":
                    assert technician
                    technician = False
        assert repairs > 0

    def test_cash_out_only_on_cash_dispensing_types(self, week) -> None:
        inv, emissions = week
        types = {d.id: d.type for d in inv.devices}
        cash_outs = [e for e in emissions if e.detail == "cash_out"]
        assert cash_outs
        assert {types[e.device_id] for e in cash_outs} <= CASH_DISPENSING_TYPES
        full = [e for e in emissions if e.kind == "state" and e.detail == "deposit_full"]
        assert {types[e.device_id] for e in full} <= {DeviceType.DEPOSIT}

    def test_closed_exactly_outside_the_service_window(self, week) -> None:
        inv, emissions = week
        tz = ZoneInfo("Asia/Shanghai")
        windows = {d.id: ServiceWindow.parse(device_window(d)) for d in inv.devices}
        closed = 0
        for e in emissions:
            if e.kind == "state" and e.detail in ("closed", "in_service"):
                at = datetime.fromtimestamp(e.ts / 1000, UTC)
                assert windows[e.device_id].is_open(at, tz) == (e.detail == "in_service")
                closed += e.detail == "closed"
        assert closed > 0

    def test_power_restored_says_when_power_was_lost(self, week) -> None:
        _, emissions = week
        restored = [e for e in emissions if e.detail == "power_restored"]
        assert restored
        for device_id, items in by_device(emissions).items():
            drops = [e.t for e in items if e.control == Control.DROP]
            for e in (x for x in items if x.detail == "power_restored"):
                assert e.since in drops and e.since < e.ts, device_id


@pytest.fixture(scope="module")
def outage() -> tuple[Inventory, list[Emission], object]:
    """300 devices for a day; every sub-branch loses its network about once a day."""
    inv = generate_inventory(300, seed=5)
    config = make_config(
        {
            "incidents": {
                "branch_power_cuts_per_year": 0,
                "subbranch_network_outages_per_year": 365,
                "network_outage_min": 30,
                "device_link_drops_per_year": 0,
            }
        }
    )
    run = simulate(inv, config, 5, START, START + timedelta(days=1), heartbeat_s=60)
    return inv, run.emissions, run.ledger


@pytest.mark.slow
class TestSubBranchNetworkOutage:
    """Every device of the sub-branch goes offline at once and replays its backlog."""

    def test_offline_presence_for_every_device_of_the_subbranch_at_the_same_moment(
        self, outage
    ) -> None:
        inv, emissions, _ = outage
        drops: dict[int, set[str]] = defaultdict(set)
        for e in emissions:
            if e.control == Control.DROP:
                assert e.result == "gateway" and e.ts == e.t  # will false, ts = drop time
                drops[e.t].add(e.device_id)
        assert drops
        members: dict[str, set[str]] = defaultdict(set)
        for d in inv.devices:
            members[inv.branch_by_id[d.branch].subbranch].add(d.id)
        hundreds = False
        for devices in drops.values():
            subs = {inv.branch_by_id[inv.device_by_id[d].branch].subbranch for d in devices}
            assert len(subs) == 1
            assert devices == members[subs.pop()]
            hundreds |= len(devices) >= 40
        assert hundreds

    def test_backlog_follows_the_birth_with_original_ts_and_seq(self, outage) -> None:
        _, emissions, _ = outage
        for device_id, items in by_device(emissions).items():
            for i, e in enumerate(items):
                if e.control != Control.DROP:
                    continue
                birth_i = next(
                    j for j in range(i + 1, len(items)) if items[j].control == Control.CONNECT
                )
                birth = items[birth_i]
                backlog = [x for x in items[birth_i + 1 :] if x.t == birth.t and x.ts < birth.t]
                assert backlog, device_id
                assert backlog[0].kind == "state" and backlog[0].detail == "comms_down"
                assert backlog[0].ts == e.t
                assert all(e.t <= x.ts < birth.t for x in backlog)
                assert all(x.detail == "comms_down" for x in backlog if x.kind == "state")
                seqs = [x.seq for x in backlog]
                assert seqs == sorted(seqs)
                before = [x.seq for x in items[:i] if x.seq >= 0]
                assert seqs[0] == before[-1] + 1

    def test_ledger_blames_communications_for_the_whole_outage(self, outage) -> None:
        _, emissions, ledger = outage
        for device_id, items in list(by_device(emissions).items())[:50]:
            intervals = ledger.intervals_of(device_id)
            for i, e in enumerate(items):
                if e.control != Control.DROP:
                    continue
                back = next(x.t for x in items[i + 1 :] if x.control == Control.CONNECT)
                covering = [iv for iv in intervals if iv.start < back and iv.end > e.t]
                assert covering and all(iv.cause == "communications" for iv in covering)
                assert covering[0].start <= e.t and covering[-1].end >= back


class TestGenerateChecksItsInput:
    def test_end_before_start_is_refused(self) -> None:
        from atmfleet.errors import UsageError

        inv = generate_inventory(10, seed=1)
        with pytest.raises(UsageError, match="not after start"):
            list(generate(inv, SimConfig(), 1, START, START))
