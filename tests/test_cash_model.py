"""The forecast's pure core: the calendar, the model on plain arrays, the metric families,
the rules section."""

from __future__ import annotations

from datetime import UTC, date, datetime

import numpy as np
import pytest
from prometheus_client import CollectorRegistry

from atmfleet.errors import ConfigError
from cash.calendar import HOLIDAY, NORMAL, PAY_DAY, PRE_HOLIDAY, day_kind
from cash.forecast import DeviceCash, History, Unit, forecast
from cash.metrics import CashCollector, CashMetrics, ServiceHours, snapshot_of
from cash.model import HOUR_MS, Params, first_crossing, fit, hour_axis, seasonal_naive
from rules.config import load_rules, parse_rules

RULES = load_rules()
TZ = RULES.tz
# Monday 2026-11-16 00:00 local.
START = int(datetime(2026, 11, 16, tzinfo=TZ).timestamp() * 1000)


class TestCalendar:
    cal = RULES.cash.calendar

    def test_kinds(self) -> None:
        assert day_kind(date(2026, 11, 10), self.cal) == PAY_DAY
        assert day_kind(date(2026, 11, 11), self.cal) == PAY_DAY  # span 2 days
        assert day_kind(date(2026, 11, 12), self.cal) == NORMAL
        assert day_kind(date(2027, 2, 4), self.cal) == PRE_HOLIDAY  # 春节 from 02-06
        assert day_kind(date(2027, 2, 6), self.cal) == HOLIDAY
        assert day_kind(date(2027, 2, 10), self.cal) == HOLIDAY  # a holiday beats a pay day

    def test_a_pay_day_past_the_end_of_a_short_month_is_its_last_day(self) -> None:
        cal = parse_rules("cash: {calendar: {pay_days: [31], pay_day_span_days: 1}}").cash.calendar
        assert day_kind(date(2026, 11, 30), cal) == PAY_DAY
        assert day_kind(date(2026, 10, 30), cal) == NORMAL  # October has a 31st
        assert day_kind(date(2026, 10, 31), cal) == PAY_DAY


class TestModel:
    def test_first_crossing_interpolates_and_says_never(self) -> None:
        cum = np.asarray([[10, 20, 30], [1, 1, 1]], np.float32)
        got = first_crossing(cum, np.asarray([15.0, 5.0]))
        assert got[0] == pytest.approx(1.5)
        assert np.isnan(got[1])
        assert first_crossing(cum, np.asarray([0.0, -1.0])).tolist() == [0.0, 0.0]

    def test_hours_a_device_was_down_are_not_demand(self) -> None:
        hours = hour_axis(START, 14 * 24, TZ, RULES.cash.calendar)
        y = np.full((2, hours.n), 100.0, np.float32)
        w = np.ones_like(y)
        y[1, 100:200] = 0.0  # down: nothing drawn ...
        w[1, 100:200] = 0.0  # ... and known to be down
        f = fit(y, w, hours, np.zeros(2, np.int64), Params.from_rules(RULES.cash))
        assert f.rate[0].mean() == pytest.approx(100.0, rel=1e-4)
        assert f.rate[1].mean() == pytest.approx(100.0, rel=1e-4)

    def test_too_little_history_is_not_ok(self) -> None:
        hours = hour_axis(START, 14 * 24, TZ, RULES.cash.calendar)
        w = np.zeros((1, hours.n), np.float32)
        w[0, -6 * 24 :] = 1.0  # six days: below min_history_days (7)
        f = fit(np.ones_like(w), w, hours, np.zeros(1, np.int64), Params.from_rules(RULES.cash))
        assert not f.ok[0]

    def test_seasonal_naive_repeats_last_week(self) -> None:
        y = np.arange(2 * 168, dtype=np.float32)[None, :]
        got = seasonal_naive(y, 200)
        assert got[0, 0] == 168 and got[0, 167] == 335 and got[0, 168] == 168


def _fleet() -> tuple[list[DeviceCash], History, int]:
    hours = hour_axis(START, 28 * 24, TZ, RULES.cash.calendar)
    now = START + 28 * 24 * HOUR_MS
    y = np.full((2, hours.n), 1000.0, np.float32)
    w = np.ones_like(y)
    w[1] = 0.0  # never observed
    units = (Unit("CST1", "dispense", 100, 505, 3000, "ok"),)
    devices = [
        DeviceCash("A", "off_site/atm", units, now),
        DeviceCash("C", "off_site/atm", units, now),
    ]
    return devices, History(hours, y, np.zeros_like(y), w), now


class TestMetrics:
    def test_families_through_a_registry(self) -> None:
        devices, history, now = _fleet()
        fc = forecast(devices, history, now, RULES.cash, TZ)
        snap = snapshot_of(fc, {"A": "24x7", "C": "24x7"}, RULES)
        metrics = CashMetrics("postgresql://unused", RULES)
        metrics.snapshot = snap
        reg = CollectorRegistry()
        reg.register(CashCollector(metrics))
        at = reg.get_sample_value(
            "atmfleet_device_cash_out_forecast_timestamp_seconds", {"device": "A"}
        )
        assert at == pytest.approx(now / 1000 + 50.1 * 3600, abs=60)
        hours = reg.get_sample_value(
            "atmfleet_device_cash_out_forecast_service_hours", {"device": "A"}
        )
        assert hours == pytest.approx(50.1, abs=0.05)
        # No history: no series at all, never a made-up time.
        assert (
            reg.get_sample_value(
                "atmfleet_device_cash_out_forecast_timestamp_seconds", {"device": "C"}
            )
            is None
        )
        assert reg.get_sample_value("atmfleet_cash_out_forecast_alert_service_hours") == 24.0

    def test_service_hours_count_only_the_window(self) -> None:
        now = datetime(2026, 11, 30, 17, 0, tzinfo=TZ).astimezone(UTC)  # Monday 17:00
        sh = ServiceHours(now, 48, TZ)
        tuesday_noon = datetime(2026, 12, 1, 12, 0, tzinfo=TZ)
        assert sh.between("daily 09:00-17:00", tuesday_noon) == pytest.approx(3.0)
        assert sh.between("24x7", tuesday_noon) == pytest.approx(19.0)


class TestRules:
    def test_unknown_key_is_named(self) -> None:
        with pytest.raises(ConfigError, match=r"unknown key 'cash.plan.roundz'"):
            parse_rules("cash: {plan: {roundz: {}}}")

    def test_history_bounds(self) -> None:
        with pytest.raises(ConfigError, match="min_history_days 30 is more than history_days 28"):
            parse_rules("cash: {min_history_days: 30}")

    def test_a_round_for_every_placement(self) -> None:
        with pytest.raises(ConfigError, match="a round is needed for every placement"):
            parse_rules("cash: {plan: {rounds: {on_site: {by: branch, days: [mon], at: '10:00'}}}}")

    def test_a_round_time_is_hh_mm(self) -> None:
        with pytest.raises(ConfigError, match=r"cash.plan.branches.B1.at"):
            parse_rules("cash: {plan: {branches: {B1: {by: cit, days: [mon], at: '25:00'}}}}")
