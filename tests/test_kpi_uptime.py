"""开机率 per device per local day, both views, and roll-ups (docs/kpis.md, "Uptime")."""

from __future__ import annotations

from datetime import UTC, date, datetime
from zoneinfo import ZoneInfo

import pytest

from atmfleet.inventory import (
    Branch,
    Device,
    DeviceType,
    Inventory,
    Placement,
    SubBranch,
    Tier,
)
from rules.config import UnknownTime, load_rules
from rules.labels import Label
from rules.timeline import Interval, Presence, StateSample, build_timeline, compress, ms
from rules.uptime import (
    Uptime,
    UptimePolicy,
    WindowSpans,
    daily_uptime,
    day_span,
    device_uptime,
    dimension_key,
    rollup,
    scheduled_spans,
    total,
)

SH = ZoneInfo("Asia/Shanghai")
H = 3_600_000
M = 60_000
RULES = load_rules()
POLICY = UptimePolicy.from_rules(RULES)


def local(y: int, mo: int, d: int, hh: int = 0, mm: int = 0) -> int:
    return ms(datetime(y, mo, d, hh, mm, tzinfo=SH))


def device(ident: str = "D1", **kw: object) -> Device:
    fields: dict[str, object] = {
        "id": ident,
        "branch": "B1",
        "type": DeviceType.ATM,
        "placement": Placement.OFF_SITE,
        "vendor": "V",
        "model": "M",
        "commissioned": date(2025, 1, 1),
    }
    fields.update(kw)
    return Device.model_validate(fields)


def on_day(
    dev: Device, day: date, timeline: list[Interval], policy: UptimePolicy = POLICY
) -> Uptime:
    spans = scheduled_spans(dev, day, RULES, WindowSpans(SH))
    return device_uptime(timeline, spans, policy)


NOV27, NOV28 = date(2026, 11, 27), date(2026, 11, 28)


class TestLocalDays:
    def test_fault_across_local_midnight_is_split_between_the_days(self) -> None:
        tl: list[Interval] = [
            (local(2026, 11, 26), local(2026, 11, 27, 23, 30), Label.AVAILABLE),
            (local(2026, 11, 27, 23, 30), local(2026, 11, 28, 0, 45), Label.FAULT),
            (local(2026, 11, 28, 0, 45), local(2026, 11, 29), Label.AVAILABLE),
        ]
        d27, d28 = on_day(device(), NOV27, tl), on_day(device(), NOV28, tl)
        assert (d27.scheduled_ms, d27.available_ms) == (24 * H, 24 * H - 30 * M)
        assert (d28.scheduled_ms, d28.available_ms) == (24 * H, 24 * H - 45 * M)
        assert d27.down_by_cause()[Label.FAULT] == 30 * M
        assert d28.ratio == pytest.approx((24 * 60 - 45) / (24 * 60))

    def test_a_period_is_the_sum_of_its_days(self) -> None:
        tl: list[Interval] = [
            (local(2026, 11, 27), local(2026, 11, 27, 23, 30), Label.AVAILABLE),
            (local(2026, 11, 27, 23, 30), local(2026, 11, 28, 0, 45), Label.FAULT),
            (local(2026, 11, 28, 0, 45), local(2026, 11, 29), Label.AVAILABLE),
        ]
        per_day = daily_uptime(device(), tl, [NOV27, NOV28], RULES, WindowSpans(SH), POLICY)
        period = total(per_day.values())
        assert (period.scheduled_ms, period.available_ms) == (48 * H, 48 * H - 75 * M)
        assert period.down_by_cause()[Label.FAULT] == 75 * M

    def test_a_local_day_across_a_clock_change_has_its_real_length(self) -> None:
        berlin = ZoneInfo("Europe/Berlin")  # 2026-10-25: clocks go back, a 25-hour day
        lo, hi = day_span(date(2026, 10, 25), berlin)
        assert hi - lo == 25 * H
        dev = device()
        tl: list[Interval] = [(lo - H, hi + H, Label.AVAILABLE)]
        spans = scheduled_spans(dev, date(2026, 10, 25), RULES, WindowSpans(berlin))
        assert device_uptime(tl, spans, POLICY).scheduled_ms == 25 * H

    def test_local_day_is_not_the_utc_day(self) -> None:
        # 2026-11-27 17:00 UTC is 2026-11-28 01:00 in Shanghai.
        fault_start = ms(datetime(2026, 11, 27, 17, 0, tzinfo=UTC))
        tl: list[Interval] = [
            (local(2026, 11, 27), fault_start, Label.AVAILABLE),
            (fault_start, fault_start + H, Label.FAULT),
            (fault_start + H, local(2026, 11, 29), Label.AVAILABLE),
        ]
        assert on_day(device(), NOV27, tl).down_ms == 0
        assert on_day(device(), NOV28, tl).down_ms == H
        assert day_span(NOV28, SH) == (local(2026, 11, 28), local(2026, 11, 29))


class TestServiceWindow:
    def test_business_hours_window_counts_only_open_time(self) -> None:
        dev = device(placement=Placement.ON_SITE, type=DeviceType.SMART_TELLER)
        # Default rule: daily 09:00-17:00. Fault 08:00-10:00 local: 1 h inside the window.
        tl: list[Interval] = [
            (local(2026, 11, 27), local(2026, 11, 27, 8), Label.CLOSED),
            (local(2026, 11, 27, 8), local(2026, 11, 27, 10), Label.FAULT),
            (local(2026, 11, 27, 10), local(2026, 11, 27, 17), Label.AVAILABLE),
            (local(2026, 11, 27, 17), local(2026, 11, 28), Label.CLOSED),
        ]
        up = on_day(dev, NOV27, tl)
        assert (up.scheduled_ms, up.available_ms) == (8 * H, 7 * H)

    def test_inventory_override_beats_the_rules(self) -> None:
        dev = device(service_window="daily 10:00-12:00")
        tl: list[Interval] = [(local(2026, 11, 27), local(2026, 11, 28), Label.AVAILABLE)]
        assert on_day(dev, NOV27, tl).scheduled_ms == 2 * H

    def test_closed_inside_the_window_is_down_in_business_view_only(self) -> None:
        tl: list[Interval] = [
            (local(2026, 11, 27), local(2026, 11, 27, 22), Label.AVAILABLE),
            (local(2026, 11, 27, 22), local(2026, 11, 28), Label.CLOSED),
        ]
        up = on_day(device(), NOV27, tl)
        assert (up.scheduled_ms, up.available_ms) == (24 * H, 22 * H)
        assert (up.tech_scheduled_ms, up.tech_available_ms) == (22 * H, 22 * H)


def _day_with(label: Label, hours: int) -> list[Interval]:
    """Available all day except ``hours`` of ``label`` from 10:00 local."""
    return [
        (local(2026, 11, 27), local(2026, 11, 27, 10), Label.AVAILABLE),
        (local(2026, 11, 27, 10), local(2026, 11, 27, 10 + hours), label),
        (local(2026, 11, 27, 10 + hours), local(2026, 11, 28), Label.AVAILABLE),
    ]


class TestViews:
    @pytest.mark.parametrize(
        "cause",
        [Label.CASH_OUT, Label.DEPOSIT_FULL, Label.COMMUNICATIONS, Label.POWER],
    )
    def test_causes_outside_the_vendors_control_leave_technical_s(self, cause: Label) -> None:
        up = on_day(device(), NOV27, _day_with(cause, 4))
        assert (up.scheduled_ms, up.available_ms) == (24 * H, 20 * H)
        assert (up.tech_scheduled_ms, up.tech_available_ms) == (20 * H, 20 * H)
        assert up.tech_ratio == 1.0

    @pytest.mark.parametrize("cause", [Label.FAULT, Label.SUPERVISOR])
    def test_faults_and_technician_time_count_in_both_views(self, cause: Label) -> None:
        up = on_day(device(), NOV27, _day_with(cause, 4))
        assert up.ratio == up.tech_ratio == pytest.approx(20 / 24)

    def test_planned_maintenance_leaves_s_in_both_views(self) -> None:
        up = on_day(device(), NOV27, _day_with(Label.PLANNED, 2))
        assert (up.scheduled_ms, up.available_ms, up.tech_scheduled_ms) == (22 * H, 22 * H, 22 * H)
        assert up.down_by_cause()[Label.PLANNED] == 0

    def test_planned_beyond_the_daily_cap_counts_as_down(self) -> None:
        policy = UptimePolicy(planned_cap_ms=H)
        up = on_day(device(), NOV27, _day_with(Label.PLANNED, 3), policy)
        assert (up.scheduled_ms, up.available_ms) == (23 * H, 21 * H)
        assert up.down_by_cause()[Label.PLANNED] == 2 * H

    def test_business_exclusions_are_configurable(self) -> None:
        policy = UptimePolicy(business_excluded=frozenset({Label.COMMUNICATIONS}))
        up = on_day(device(), NOV27, _day_with(Label.COMMUNICATIONS, 4), policy)
        assert up.ratio == 1.0


class TestUnknownTime:
    def test_collector_outage_is_excluded_and_reported_separately(self) -> None:
        up = on_day(device(), NOV27, _day_with(Label.UNKNOWN, 6))
        assert (up.scheduled_ms, up.available_ms, up.unknown_ms) == (18 * H, 18 * H, 6 * H)
        assert up.ratio == 1.0

    def test_unknown_may_be_counted_as_down(self) -> None:
        policy = UptimePolicy(unknown_time=UnknownTime.DOWN)
        up = on_day(device(), NOV27, _day_with(Label.UNKNOWN, 6), policy)
        assert (up.scheduled_ms, up.available_ms) == (24 * H, 18 * H)


class TestFleetTime:
    def test_device_commissioned_mid_period_is_scheduled_from_its_commissioning_day(
        self,
    ) -> None:
        dev = device(commissioned=NOV28)
        tl: list[Interval] = [(local(2026, 11, 27), local(2026, 11, 29), Label.AVAILABLE)]
        days = [on_day(dev, d, tl) for d in (NOV27, NOV28)]
        assert [d.scheduled_ms for d in days] == [0, 24 * H]
        assert days[0].ratio is None  # no data, not 100 %
        assert total(days).ratio == 1.0

    def test_decommissioned_device_is_not_scheduled_from_that_day(self) -> None:
        dev = device(decommissioned=NOV28)
        tl: list[Interval] = [(local(2026, 11, 27), local(2026, 11, 29), Label.FAULT)]
        assert on_day(dev, NOV28, tl).scheduled_ms == 0
        assert on_day(dev, NOV27, tl).scheduled_ms == 24 * H

    def test_today_so_far_stops_at_the_horizon(self) -> None:
        tl: list[Interval] = [(local(2026, 11, 27), local(2026, 11, 27, 6), Label.AVAILABLE)]
        spans = scheduled_spans(
            device(), NOV27, RULES, WindowSpans(SH), until=local(2026, 11, 27, 6)
        )
        assert device_uptime(tl, spans, POLICY).scheduled_ms == 6 * H


class TestRollups:
    def _inventory(self) -> Inventory:
        return Inventory(
            subbranches=(SubBranch(id="S1", name="赤峰", tier=Tier.SECOND),),
            branches=(Branch(id="B1", name="b1", subbranch="S1"),),
            devices=(
                device("D1"),
                device("D2", placement=Placement.ON_SITE, type=DeviceType.SMART_TELLER),
            ),
        )

    def test_rollup_is_sum_a_over_sum_s_never_an_average_of_ratios(self) -> None:
        inv = self._inventory()
        half_down = [
            (local(2026, 11, 27), local(2026, 11, 27, 12), Label.FAULT),
            (local(2026, 11, 27, 12), local(2026, 11, 28), Label.AVAILABLE),
        ]
        all_up = [(local(2026, 11, 27), local(2026, 11, 28), Label.AVAILABLE)]
        per_device = {
            "D1": on_day(inv.device_by_id["D1"], NOV27, half_down),  # 12 h of 24 h
            "D2": on_day(inv.device_by_id["D2"], NOV27, all_up),  # 8 h of 8 h
        }
        for dim, group in [
            ("branch", "B1"),
            ("subbranch", "S1"),
            ("tier", "2"),
            ("fleet", "fleet"),
        ]:
            got = rollup(per_device, dimension_key(inv, dim))[group]
            assert (got.available_ms, got.scheduled_ms, got.devices) == (20 * H, 32 * H, 2)
            assert got.ratio == pytest.approx(20 / 32)  # the average of ratios would be 0.75
        by_type = rollup(per_device, dimension_key(inv, "type"))
        assert by_type["atm"].ratio == 0.5 and by_type["smart_teller"].ratio == 1.0

    def test_unknown_dimension_is_refused_with_the_allowed_ones(self) -> None:
        with pytest.raises(ValueError, match="allowed: device, branch"):
            dimension_key(self._inventory(), "city")


class TestFromMessages:
    """From the messages a device sent to its 开机率 per local day, end to end."""

    def test_fault_across_midnight_with_a_silent_gap_and_a_will(self) -> None:
        # Heartbeats every 60 s. 27th: in service; fault at 23:40 local until 00:20 on the
        # 28th; silence 03:00-03:10 (600 s > 180 s: offline); will received 05:00:30 after
        # the last heartbeat at 05:00, back at 05:30.
        samples: list[StateSample] = []
        seq = 0

        def beat(lo: int, hi: int, state: str) -> None:
            nonlocal seq
            for ts in range(lo, hi, M):
                samples.append(StateSample(ts, state, 60, seq))
                seq += 1

        beat(local(2026, 11, 27), local(2026, 11, 27, 23, 40), "in_service")
        beat(local(2026, 11, 27, 23, 40), local(2026, 11, 28, 0, 20), "fault")
        beat(local(2026, 11, 28, 0, 20), local(2026, 11, 28, 3, 1), "in_service")
        beat(local(2026, 11, 28, 3, 10), local(2026, 11, 28, 5, 1), "in_service")
        beat(local(2026, 11, 28, 5, 30), local(2026, 11, 29, 0, 1), "in_service")
        will = Presence(ts=0, online=False, will=True, received=local(2026, 11, 28, 5, 0) + 30_000)
        birth = Presence(ts=local(2026, 11, 28, 5, 29), online=True)
        runs = compress(samples, breaks=[will.at, birth.at])
        tl = build_timeline(runs, local(2026, 11, 27), local(2026, 11, 29), presence=[will, birth])
        d27, d28 = on_day(device(), NOV27, tl), on_day(device(), NOV28, tl)
        assert d27.down_by_cause()[Label.FAULT] == 20 * M
        assert d27.available_ms == 24 * H - 20 * M
        by_cause = d28.down_by_cause()
        assert by_cause[Label.FAULT] == 20 * M
        # 03:00 -> 03:10 silent gap, and 05:00:30 -> 05:30 after the will.
        assert by_cause[Label.COMMUNICATIONS] == 10 * M + 29 * M + 30_000
        assert d28.ratio == pytest.approx(1 - (59.5 * M) / (24 * H))
