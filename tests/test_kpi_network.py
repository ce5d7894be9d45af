"""Network plan checks: 3:1 self-service banks per outlet; deposit coverage."""

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
from rules.network import CoverageGapReason, deposit_coverage, self_service_bank_ratio

TODAY = date(2026, 11, 28)


def dev(ident: str, branch: str, kind: DeviceType, **kw: object) -> Device:
    fields: dict[str, object] = {
        "id": ident,
        "branch": branch,
        "type": kind,
        "placement": Placement.ON_SITE,
        "vendor": "V",
        "model": "M",
        "commissioned": date(2025, 1, 1),
    }
    fields.update(kw)
    return Device.model_validate(fields)


def ssb(ident: str, sub: str, parent: str) -> Branch:
    return Branch(
        id=ident, name=ident, subbranch=sub, kind=BranchKind.SELF_SERVICE_BANK, parent=parent
    )


INV = Inventory(
    subbranches=(
        SubBranch(id="S1", name="通辽", tier=Tier.SECOND),
        SubBranch(id="S2", name="锡盟", tier=Tier.SECOND),
        SubBranch(id="S3", name="new", tier=Tier.THIRD),
    ),
    branches=(
        Branch(id="B1", name="b1", subbranch="S1"),
        Branch(id="B2", name="b2", subbranch="S1"),
        Branch(id="B3", name="b3", subbranch="S2"),
        Branch(id="B4", name="b4", subbranch="S2"),
        *(ssb(f"X{i}", "S1", "B1") for i in range(6)),
        ssb("Y1", "S2", "B3"),
        ssb("Y2", "S2", "B3"),
    ),
    devices=(
        dev("D1", "B1", DeviceType.CRS),
        dev("D2", "B1", DeviceType.ATM),
        dev("D3", "B2", DeviceType.DEPOSIT),
        dev("D4", "B2", DeviceType.CRS),
        dev("D5", "B3", DeviceType.ATM),
        dev("D6", "B3", DeviceType.CRS, decommissioned=date(2026, 11, 1)),
        dev("D7", "B3", DeviceType.CRS, commissioned=date(2026, 12, 1)),
        dev("D8", "X0", DeviceType.CRS, placement=Placement.OFF_SITE),
        dev("D9", "B4", DeviceType.ATM, deposit_capable=True),
    ),
)


class TestSelfServiceBanks:
    def test_ratio_per_subbranch_against_3_to_1(self) -> None:
        got = self_service_bank_ratio(INV, target=3.0)
        assert (got["S1"].ratio, got["S1"].meets_target) == (3.0, True)
        assert (got["S2"].ratio, got["S2"].meets_target) == (1.0, False)
        assert got["fleet"].ratio == pytest.approx(8 / 4)

    def test_subbranch_without_outlets_is_no_data(self) -> None:
        got = self_service_bank_ratio(INV, target=3.0)["S3"]
        assert got.ratio is None and got.meets_target is None


class TestDepositCoverage:
    def test_outlets_with_none_installed_or_all_down(self) -> None:
        gaps = deposit_coverage(INV, TODAY, working={"D1", "D8", "D9"})
        assert [(g.branch_id, g.reason, g.devices) for g in gaps] == [
            ("B2", CoverageGapReason.ALL_DOWN, ("D3", "D4")),
            # B3: D6 decommissioned, D7 not yet commissioned, D5 cannot deposit.
            ("B3", CoverageGapReason.NONE_INSTALLED, ()),
        ]

    def test_one_working_device_covers_the_outlet(self) -> None:
        gaps = deposit_coverage(INV, TODAY, working={"D1", "D4", "D9"})
        assert [g.branch_id for g in gaps] == ["B3"]

    def test_inventory_flag_overrides_the_type(self) -> None:
        # D9 is an ATM marked deposit-capable: B4 is covered while D9 works.
        assert "B4" not in [g.branch_id for g in deposit_coverage(INV, TODAY, {"D9"})]
        assert "B4" in [g.branch_id for g in deposit_coverage(INV, TODAY, set())]

    def test_a_higher_requirement_reports_too_few(self) -> None:
        gaps = deposit_coverage(INV, TODAY, working={"D1", "D3", "D4", "D9"}, required=2)
        assert [(g.branch_id, g.reason, g.working) for g in gaps] == [
            ("B1", CoverageGapReason.TOO_FEW_INSTALLED, 1),
            ("B3", CoverageGapReason.NONE_INSTALLED, 0),
            ("B4", CoverageGapReason.TOO_FEW_INSTALLED, 1),
        ]
        gaps = deposit_coverage(INV, TODAY, working={"D1", "D3", "D9"}, required=2)
        assert ("B2", CoverageGapReason.TOO_FEW_WORKING, 1) in [
            (g.branch_id, g.reason, g.working) for g in gaps
        ]
