"""The default fleet looks like the bank's: tiers, type mix, low-yield share, substitution."""

from __future__ import annotations

import statistics
from collections import Counter
from datetime import UTC, datetime, timedelta

import pytest

from atmfleet.inventory import BranchKind, DeviceType, Inventory, Placement, Tier
from simulator.config import SimConfig
from simulator.fleet import SUBBRANCHES, generate_inventory
from simulator.ledger import SimRun, simulate

DAYS = 6
START = datetime(2026, 11, 1, 16, tzinfo=UTC)  # local midnight, Asia/Shanghai


@pytest.fixture(scope="module")
def fleet() -> tuple[Inventory, SimConfig, SimRun]:
    inv = generate_inventory(600, seed=9)
    config = SimConfig()
    run = simulate(
        inv, config, 9, START, START + timedelta(days=DAYS), heartbeat_s=3600, keep_emissions=False
    )
    return inv, config, run


class TestInventory:
    """generate_inventory: a realistic topology of any size."""

    @pytest.mark.parametrize("size", [10, 137, 2000])
    def test_exactly_the_requested_number_of_devices_with_unique_ids(self, size: int) -> None:
        inv = generate_inventory(size, seed=1)
        assert len(inv.devices) == size
        assert len(inv.device_by_id) == size
        assert {d.branch for d in inv.devices} <= set(inv.branch_by_id)

    def test_a_dozen_subbranches_in_three_tiers_with_the_seed_names(self) -> None:
        inv = generate_inventory(1000, seed=1)
        assert len(inv.subbranches) == len(SUBBRANCHES) == 12
        second = {s.name for s in inv.subbranches if s.tier is Tier.SECOND}
        assert {"呼伦贝尔", "赤峰", "通辽", "锡盟", "乌海"} <= second
        used = {inv.branch_by_id[d.branch].subbranch for d in inv.devices}
        assert used == {s.id for s in inv.subbranches}

    def test_a_few_hundred_branches_and_off_site_banks_attached_to_outlets(self) -> None:
        inv = generate_inventory(1000, seed=1)
        outlets = [b for b in inv.branches if b.kind is BranchKind.OUTLET]
        banks = [b for b in inv.branches if b.kind is BranchKind.SELF_SERVICE_BANK]
        assert 150 <= len(outlets) <= 400
        assert banks and all(
            inv.branch_by_id[b.parent or ""].kind is BranchKind.OUTLET for b in banks
        )
        assert all(
            d.placement is Placement.OFF_SITE
            for d in inv.devices
            if d.branch in {b.id for b in banks}
        )

    def test_type_mix_and_several_vendors(self) -> None:
        inv = generate_inventory(1000, seed=1)
        types = Counter(d.type for d in inv.devices)
        assert set(types) == set(DeviceType)
        assert types[DeviceType.ATM] + types[DeviceType.CRS] > len(inv.devices) / 2
        assert len({d.vendor for d in inv.devices}) >= 6

    def test_same_seed_same_fleet(self) -> None:
        assert generate_inventory(300, seed=4) == generate_inventory(300, seed=4)
        assert generate_inventory(300, seed=4) != generate_inventory(300, seed=5)


@pytest.mark.slow
class TestVolumes:
    """Transactions and counters over six simulated days."""

    def test_all_three_tiers_carry_transactions(self, fleet) -> None:
        inv, _, run = fleet
        tiers = {inv.subbranch_of(inv.device_by_id[d]).tier for d, _ in run.ledger.txn_days}
        assert tiers == set(Tier)

    def test_low_yield_share_is_between_3_and_8_percent(self, fleet) -> None:
        inv, config, run = fleet
        financial: Counter[str] = Counter()
        for (device_id, _), row in run.ledger.txn_days.items():
            financial[device_id] += row[0]
        evaluated = [d for d in inv.devices if config.txn[d.type].low_yield_threshold is not None]
        low = [
            d
            for d in evaluated
            if financial[d.id] / DAYS < (config.txn[d.type].low_yield_threshold or 0)
        ]
        assert 0.03 <= len(low) / len(evaluated) <= 0.08

    def test_substitution_rates_spread_around_60_percent(self, fleet) -> None:
        inv, _, run = fleet
        self_service: Counter[str] = Counter()
        for (device_id, _), row in run.ledger.txn_days.items():
            self_service[inv.device_by_id[device_id].branch] += row[0]
        counter: Counter[str] = Counter()
        for row in run.ledger.counters:
            counter[row.branch_id] += row.financial
        rates = sorted(
            self_service[b] / (self_service[b] + counter[b])
            for b in counter
            if self_service[b] + counter[b]
        )
        assert len(rates) > 50
        assert 0.5 <= statistics.median(rates) <= 0.7
        assert rates[len(rates) // 10] < 0.55 and rates[9 * len(rates) // 10] > 0.65

    def test_one_counter_report_per_outlet_per_day(self, fleet) -> None:
        inv, _, run = fleet
        outlets = {b.id for b in inv.branches if b.kind is BranchKind.OUTLET}
        per_branch = Counter(row.branch_id for row in run.ledger.counters)
        assert set(per_branch) == outlets and set(per_branch.values()) == {DAYS}

    def test_weekends_are_quieter_on_site(self, fleet) -> None:
        inv, _, run = fleet
        by_day: Counter[str] = Counter()
        for (device_id, day), row in run.ledger.txn_days.items():
            if inv.device_by_id[device_id].placement is Placement.ON_SITE:
                by_day[day] += row[2]
        weekday = [n for day, n in by_day.items() if datetime.fromisoformat(day).weekday() < 5]
        weekend = [n for day, n in by_day.items() if datetime.fromisoformat(day).weekday() >= 5]
        assert weekend and statistics.mean(weekend) < statistics.mean(weekday)
