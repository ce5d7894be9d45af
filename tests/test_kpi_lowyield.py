"""低产 and 低效 flags per device per date; the low-yield share (docs/kpis.md, "Low yield")."""

from __future__ import annotations

from datetime import date, timedelta

import pytest

from atmfleet.inventory import DeviceType
from rules.config import DaysCounted, LowYieldRules
from rules.lowyield import DeviceDays, YieldStatus, evaluate, low_yield_share

H = 3_600_000
RULES = LowYieldRules()  # window 30 days, ATM threshold 40, ramp-up 30 days
FIRST = date(2026, 10, 1)
ON = date(2026, 11, 27)  # index 57; window = indices 28..57 (Oct 29 .. Nov 27)


def series(
    fin: int, *, ident: str = "D1", kind: DeviceType = DeviceType.ATM, **kw: object
) -> DeviceDays:
    n = 60
    fields: dict[str, object] = {
        "device_id": ident,
        "type": kind,
        "commissioned": date(2025, 1, 1),
        "decommissioned": None,
        "first_day": FIRST,
        "financial": [fin] * n,
        "available_ms": [24 * H] * n,
        "scheduled_ms": [24 * H] * n,
    }
    fields.update(kw)
    return DeviceDays(**fields)  # type: ignore[arg-type]


class TestLowYield:
    def test_below_the_threshold_is_low(self) -> None:
        flag = evaluate(series(39), ON, RULES, 0.97)
        assert (flag.status, flag.days_counted, flag.daily_average) == (YieldStatus.LOW, 30, 39)

    def test_at_the_threshold_is_not_low(self) -> None:
        assert evaluate(series(40), ON, RULES, 0.97).status is YieldStatus.OK

    def test_only_the_trailing_window_counts(self) -> None:
        fin = [0] * 28 + [50] * 32  # poor before the window, good inside it
        assert evaluate(series(0, financial=fin), ON, RULES, 0.97).status is YieldStatus.OK

    def test_days_out_of_service_do_not_dilute_the_average(self) -> None:
        fin = [45] * 60
        avail = [24 * H] * 60
        for i in range(28, 38):  # ten days wholly down, no transactions
            fin[i], avail[i] = 0, 0
        days = series(0, financial=fin, available_ms=avail)
        flag = evaluate(days, ON, RULES, 0.97)
        assert (flag.days_counted, flag.daily_average, flag.status) == (20, 45, YieldStatus.OK)
        in_fleet = LowYieldRules(days_counted=DaysCounted.IN_FLEET)
        assert evaluate(days, ON, in_fleet, 0.97).daily_average == pytest.approx(45 * 20 / 30)

    def test_device_commissioned_mid_window_is_exempt_during_ramp_up(self) -> None:
        fresh = series(0, commissioned=ON - timedelta(days=29))
        assert evaluate(fresh, ON, RULES, 0.97).status is YieldStatus.EXEMPT
        settled = series(0, commissioned=ON - timedelta(days=30))
        flag = evaluate(settled, ON, RULES, 0.97)
        assert (flag.status, flag.days_counted) == (YieldStatus.LOW, 30)

    def test_days_before_commissioning_are_not_counted(self) -> None:
        rules = LowYieldRules(ramp_up_days=10)
        days = series(50, commissioned=ON - timedelta(days=14))
        assert evaluate(days, ON, rules, 0.97).days_counted == 15

    def test_types_without_a_threshold_are_not_evaluated(self) -> None:
        flag = evaluate(series(0, kind=DeviceType.INQUIRY), ON, RULES, 0.97)
        assert flag.status is YieldStatus.NOT_EVALUATED

    def test_decommissioned_device_is_not_evaluated(self) -> None:
        flag = evaluate(series(0, decommissioned=ON), ON, RULES, 0.97)
        assert flag.status is YieldStatus.NOT_EVALUATED


class TestLowEfficiency:
    def test_uptime_below_target_over_the_window_is_low_efficiency(self) -> None:
        avail = [24 * H] * 60
        avail[50] = 0  # one whole day down in 30: 29/30 = 0.9667
        flag = evaluate(series(50, available_ms=avail), ON, RULES, 0.97)
        assert flag.uptime == pytest.approx(29 / 30) and flag.low_efficiency is True
        assert evaluate(series(50, available_ms=avail), ON, RULES, 0.96).low_efficiency is False

    def test_no_scheduled_time_is_no_data(self) -> None:
        days = series(50, scheduled_ms=[0] * 60, available_ms=[0] * 60)
        flag = evaluate(days, ON, RULES, 0.97)
        assert flag.uptime is None and flag.low_efficiency is None


class TestShare:
    def test_share_is_low_over_evaluated_against_the_target(self) -> None:
        flags = [evaluate(series(10, ident=f"L{i}"), ON, RULES, 0.97) for i in range(2)]
        flags += [evaluate(series(90, ident=f"G{i}"), ON, RULES, 0.97) for i in range(38)]
        flags.append(evaluate(series(0, ident="X", commissioned=ON), ON, RULES, 0.97))
        share = low_yield_share(flags, lambda _d: "fleet", RULES.max_share)["fleet"]
        assert (share.low, share.evaluated, share.exempt) == (2, 40, 1)
        assert share.share == 0.05 and share.meets_target is True
        flags.append(evaluate(series(10, ident="L3"), ON, RULES, 0.97))
        share = low_yield_share(flags, lambda _d: "fleet", RULES.max_share)["fleet"]
        assert share.share == pytest.approx(3 / 41) and share.meets_target is False

    def test_nothing_evaluated_is_no_data(self) -> None:
        flags = [evaluate(series(0, kind=DeviceType.INQUIRY), ON, RULES, 0.97)]
        share = low_yield_share(flags, lambda _d: "S1", RULES.max_share)["S1"]
        assert share.share is None and share.meets_target is None
