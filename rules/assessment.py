"""自助业务经营管理考核评价: the monthly score of each sub-branch, ranked within its tier.

Each component is scored 0..1 against its target, then weighted (rules file,
``assessment.weights``); the score is 0..100. A component without data is left out and
the remaining weights are rescaled; the result lists what was missing.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from decimal import Decimal

from atmfleet.inventory import Tier
from rules.config import AssessmentComponent, Rules


@dataclass(frozen=True, slots=True)
class SubBranchFigures:
    """A sub-branch's indicators over the month (None = no data)."""

    subbranch: str
    tier: Tier
    uptime: float | None  # business 开机率, ΣA/ΣS
    substitution: float | None  # 账务性交易替代率
    low_yield_share: float | None
    revenue_per_device: Decimal | None


@dataclass(frozen=True, slots=True)
class Assessment:
    subbranch: str
    tier: Tier
    score: float | None  # 0..100
    components: dict[AssessmentComponent, float | None]  # each 0..1
    missing: tuple[AssessmentComponent, ...]
    rank: int | None  # within the tier, 1 = best; equal scores share a rank


def component_scores(
    figures: SubBranchFigures, best_revenue: Decimal | None, rules: Rules
) -> dict[AssessmentComponent, float | None]:
    c = AssessmentComponent
    out: dict[AssessmentComponent, float | None] = {}
    target = rules.uptime.targets[figures.tier]
    out[c.UPTIME] = None if figures.uptime is None else min(1.0, figures.uptime / target)
    out[c.SUBSTITUTION] = (
        None
        if figures.substitution is None
        else min(1.0, figures.substitution / rules.substitution.target)
    )
    share, cap = figures.low_yield_share, rules.low_yield.max_share
    out[c.LOW_YIELD] = None if share is None else (1.0 if share <= cap else cap / share)
    rev = figures.revenue_per_device
    out[c.REVENUE] = (
        None if rev is None or not best_revenue or best_revenue <= 0 else float(rev / best_revenue)
    )
    return out


def assess(figures: Iterable[SubBranchFigures], rules: Rules) -> list[Assessment]:
    """Scores of every sub-branch, ordered by tier then rank."""
    items = list(figures)
    best: dict[Tier, Decimal] = {}
    for f in items:
        if f.revenue_per_device is not None:
            best[f.tier] = max(best.get(f.tier, Decimal("0")), f.revenue_per_device)
    weights = rules.assessment.weights
    scored: list[
        tuple[SubBranchFigures, float | None, dict[AssessmentComponent, float | None]]
    ] = []
    for f in items:
        comps = component_scores(f, best.get(f.tier), rules)
        present = {k: v for k, v in comps.items() if v is not None and weights.get(k, 0) > 0}
        total_w = sum(weights[k] for k in present)
        score = (
            round(100 * sum(weights[k] * v for k, v in present.items()) / total_w, 6)
            if total_w
            else None
        )
        scored.append((f, score, comps))
    out: list[Assessment] = []
    for tier in Tier:
        in_tier = [s for s in scored if s[0].tier is tier]
        in_tier.sort(key=lambda s: (s[1] is None, -(s[1] or 0.0), s[0].subbranch))
        rank = 0
        previous: float | None = None
        for i, (f, score, comps) in enumerate(in_tier):
            if score is not None and score != previous:
                rank = i + 1
                previous = score
            missing = tuple(k for k, v in comps.items() if v is None and weights.get(k, 0) > 0)
            out.append(
                Assessment(
                    f.subbranch, tier, score, comps, missing, rank if score is not None else None
                )
            )
    return out
