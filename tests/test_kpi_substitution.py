"""账务性交易替代率, the on-site-only rate and 分流率 (docs/kpis.md, "Substitution")."""

from __future__ import annotations

from datetime import date

import pytest

from atmfleet.inventory import (
    Branch,
    BranchKind,
    Device,
    DeviceType,
    Inventory,
    Placement,
    SubBranch,
    Tier,
)
from rules.substitution import (
    CounterCounts,
    DeviceCounts,
    Volumes,
    branch_key,
    substitution,
    unit_volumes,
)


def dev(ident: str, branch: str, placement: Placement) -> Device:
    return Device(
        id=ident,
        branch=branch,
        type=DeviceType.ATM,
        placement=placement,
        vendor="V",
        model="M",
        commissioned=date(2025, 1, 1),
    )


INV = Inventory(
    subbranches=(
        SubBranch(id="S1", name="赤峰", tier=Tier.SECOND),
        SubBranch(id="S2", name="乌海", tier=Tier.SECOND),
    ),
    branches=(
        Branch(id="B1", name="b1", subbranch="S1"),
        Branch(id="B2", name="b2", subbranch="S1"),
        Branch(id="B3", name="b3", subbranch="S2"),
        Branch(
            id="SSB1", name="ssb", subbranch="S1", kind=BranchKind.SELF_SERVICE_BANK, parent="B1"
        ),
    ),
    devices=(
        dev("D1", "B1", Placement.ON_SITE),
        dev("D2", "SSB1", Placement.OFF_SITE),
        dev("D3", "B2", Placement.ON_SITE),
        dev("D4", "B3", Placement.ON_SITE),
    ),
)


def volumes() -> dict[str, Volumes]:
    devices = {
        "D1": DeviceCounts(financial=300, non_financial=100),
        "D2": DeviceCounts(financial=300, non_financial=200),
        "D3": DeviceCounts(financial=50, non_financial=50),
        "D4": DeviceCounts(financial=80, non_financial=20),
    }
    counters = {
        "B1": CounterCounts(financial=400, non_financial=100),
        "B2": CounterCounts(financial=0, non_financial=0),  # zero: no data
        # B3: no counter record at all
    }
    return unit_volumes(INV, devices, counters)


class TestBranch:
    def test_self_service_bank_counts_for_its_parent_outlet(self) -> None:
        b1 = substitution(volumes().items(), branch_key(INV, "branch"))["B1"]
        # self-service financial 300 + 300 against 400 at the counter
        assert b1.rate == pytest.approx(600 / 1000)
        # on-site only: D1's 300 against the same 400
        assert b1.on_site_rate == pytest.approx(300 / 700)
        # all transactions: 400 + 500 self against 500 counter
        assert b1.diversion == pytest.approx(900 / 1400)

    def test_zero_counter_transactions_is_no_data_not_100_percent(self) -> None:
        b2 = substitution(volumes().items(), branch_key(INV, "branch"))["B2"]
        assert (b2.rate, b2.on_site_rate, b2.diversion) == (None, None, None)

    def test_missing_counter_record_is_no_data(self) -> None:
        b3 = substitution(volumes().items(), branch_key(INV, "branch"))["B3"]
        assert b3.rate is None and b3.entries_without_counter == 1


class TestRollups:
    def test_subbranch_sums_only_units_with_counter_data(self) -> None:
        s1 = substitution(volumes().items(), branch_key(INV, "subbranch"))["S1"]
        assert s1.rate == pytest.approx(600 / 1000)  # B2 (no data) left out of both sides
        assert (s1.entries, s1.entries_without_counter) == (2, 1)

    def test_subbranch_of_only_no_data_is_no_data(self) -> None:
        s2 = substitution(volumes().items(), branch_key(INV, "subbranch"))["S2"]
        assert s2.rate is None

    def test_day_without_counter_data_is_left_out_of_the_period(self) -> None:
        day1 = Volumes(self_financial=60, self_total=80, counter_financial=40, counter_total=50)
        day2 = Volumes(self_financial=70, self_total=90)  # counter feed missing that day
        got = substitution([("B1", day1), ("B1", day2)], branch_key(INV, "fleet"))["fleet"]
        assert got.rate == pytest.approx(0.6)
        assert got.diversion == pytest.approx(80 / 130)

    def test_tier_and_fleet_add_the_sums(self) -> None:
        v = volumes()
        tier = substitution(v.items(), branch_key(INV, "tier"))["2"]
        fleet = substitution(v.items(), branch_key(INV, "fleet"))["fleet"]
        assert tier.rate == fleet.rate == pytest.approx(0.6)
