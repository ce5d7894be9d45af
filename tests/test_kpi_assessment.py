"""Monthly assessment per sub-branch (configured weights, ranked in its tier) and revenue."""

from __future__ import annotations

from decimal import Decimal

import pytest

from atmfleet.inventory import Tier
from rules.assessment import SubBranchFigures, assess
from rules.config import AssessmentComponent, Rules, parse_rules
from rules.revenue import Revenue, revenue

RULES = Rules()  # weights uptime .3, substitution .3, low_yield .2, revenue .2


def fig(
    sub: str, tier: Tier, up: float | None, subst: float | None, low: float | None, rev: str | None
) -> SubBranchFigures:
    return SubBranchFigures(sub, tier, up, subst, low, None if rev is None else Decimal(rev))


class TestAssessment:
    def figures(self) -> list[SubBranchFigures]:
        return [
            fig("S1", Tier.SECOND, 0.97, 0.45, 0.10, "800"),
            fig("S2", Tier.SECOND, 0.99, 0.66, 0.02, "1000"),
            fig("S3", Tier.SECOND, 0.873, None, 0.05, "500"),
            fig("S4", Tier.FIRST, None, None, None, None),
        ]

    def test_hand_computed_scores_and_ranks(self) -> None:
        got = {a.subbranch: a for a in assess(self.figures(), RULES)}
        # S1: 0.3*1 + 0.3*(0.45/0.6) + 0.2*(0.05/0.10) + 0.2*(800/1000)
        assert got["S1"].score == pytest.approx(78.5)
        assert got["S2"].score == pytest.approx(100.0)
        # S3: substitution has no data; the other weights rescaled to 0.7
        assert got["S3"].score == pytest.approx(100 * (0.3 * 0.9 + 0.2 * 1 + 0.2 * 0.5) / 0.7)
        assert got["S3"].missing == (AssessmentComponent.SUBSTITUTION,)
        assert [(s, got[s].rank) for s in ("S2", "S3", "S1")] == [("S2", 1), ("S3", 2), ("S1", 3)]

    def test_no_data_at_all_is_unscored_and_unranked(self) -> None:
        s4 = next(a for a in assess(self.figures(), RULES) if a.subbranch == "S4")
        assert (s4.score, s4.rank) == (None, None)

    def test_equal_scores_share_a_rank(self) -> None:
        twins = [
            fig("A", Tier.THIRD, 0.99, 0.7, 0.0, "10"),
            fig("B", Tier.THIRD, 0.99, 0.7, 0.0, "10"),
            fig("C", Tier.THIRD, 0.5, 0.7, 0.0, "10"),
        ]
        assert [(a.subbranch, a.rank) for a in assess(twins, RULES)] == [
            ("A", 1),
            ("B", 1),
            ("C", 3),
        ]

    def test_weights_come_from_the_rules_file(self) -> None:
        only_uptime = parse_rules(
            "assessment:\n  weights: {uptime: 1, substitution: 0, low_yield: 0, revenue: 0}\n"
        )
        (a,) = assess([fig("S1", Tier.SECOND, 0.485, 0.9, 0.5, "1")], only_uptime)
        assert a.score == pytest.approx(50.0) and a.missing == ()


class TestRevenue:
    def test_fee_per_device_counts_devices_that_earned_nothing(self) -> None:
        fees = {"D1": (Decimal("10.50"), 3), "D3": (Decimal("4.00"), 1)}
        groups = {"D1": "B1", "D2": "B1", "D3": "B2"}
        got = revenue(["D1", "D2", "D3"], fees, groups.get)
        assert (got["B1"].fees, got["B1"].fee_transactions, got["B1"].per_device) == (
            Decimal("10.50"),
            3,
            Decimal("5.25"),
        )
        assert got["B2"].per_device == Decimal("4.00")

    def test_per_device_revenue_without_devices_is_no_data(self) -> None:
        assert Revenue().per_device is None
        assert revenue(["D1"], {}, lambda _d: None) == {}  # a device outside every group
