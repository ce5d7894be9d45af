"""The vendor scorecard from incidents (rules/vendors.py): cycles read back from the
incident history, nearest-rank quantiles, per vendor and per model, no data as None."""

from __future__ import annotations

from datetime import UTC, date, datetime

from atmfleet.inventory import Device, DeviceType, Placement
from rules.config import VendorRules
from rules.timeline import ms
from rules.uptime import Uptime
from rules.vendors import (
    HistoryRow,
    IncidentCycle,
    IncidentRow,
    cycles_from_events,
    quantile,
    scorecard,
)

M = 60_000
H = 60 * M
T0 = ms(datetime(2026, 11, 2, tzinfo=UTC))


def dev(ident: str, vendor: str, model: str, commissioned: date = date(2025, 1, 1)) -> Device:
    return Device(
        id=ident, branch="B1", type=DeviceType.ATM, placement=Placement.OFF_SITE,
        vendor=vendor, model=model, commissioned=commissioned,
    )  # fmt: skip


class TestCyclesFromHistory:
    def test_opened_dispatched_on_site_restored_make_one_cycle(self) -> None:
        rows = [IncidentRow(1, "D1", "component", "fault", "cdm", T0, None)]
        events = [
            HistoryRow(1, T0 + 5 * M, "opened", {}),
            HistoryRow(1, T0 + 20 * M, "acknowledged", {}),
            HistoryRow(1, T0 + 30 * M, "dispatched", {}),
            HistoryRow(1, T0 + 150 * M, "on_site", {}),
            HistoryRow(1, T0 + 4 * H, "restored", {}),
        ]
        (c,) = cycles_from_events(rows, events, [(1, 0, "response")])
        assert (c.started, c.dispatched, c.on_site, c.restored) == (
            T0, T0 + 30 * M, T0 + 150 * M, T0 + 4 * H,
        )  # fmt: skip
        assert (c.response_ms, c.repair_ms) == (120 * M, 4 * H)  # repair from the outage start
        assert (c.response_breach, c.repair_breach, c.repeat) == (True, False, False)

    def test_a_reopened_incident_is_a_second_cycle_and_a_repeat(self) -> None:
        rows = [IncidentRow(1, "D1", "component", "fault", "cdm", T0, None)]
        events = [
            HistoryRow(1, T0 + 5 * M, "opened", {}),
            HistoryRow(1, T0 + H, "restored", {}),
            HistoryRow(1, T0 + 30 * H, "reopened", {"cycle": 1}),
            HistoryRow(1, T0 + 31 * H, "on_site", {}),
        ]
        first, second = cycles_from_events(rows, events, [(1, 1, "repair")])
        assert (first.cycle, first.repair_ms, first.repeat) == (0, H, False)
        assert (second.cycle, second.started, second.repeat) == (1, T0 + 30 * H, True)
        assert (second.response_ms, second.repair_ms, second.repair_breach) == (None, None, True)


def test_quantiles_are_nearest_rank_values_of_the_data() -> None:
    assert quantile([], 0.5) is None
    assert quantile([7], 0.9) == 7
    assert quantile([4, 1, 3, 2], 0.5) == 2
    assert quantile(list(range(1, 11)), 0.9) == 9
    assert quantile(list(range(1, 12)), 0.9) == 10


class TestScorecard:
    def test_per_vendor_then_per_model(self) -> None:
        devices = [dev("D1", "A", "X"), dev("D2", "A", "Y"), dev("D3", "B", "Z")]
        cycles = [
            IncidentCycle(1, 0, "D1", "component", "fault", "cdm", T0, T0 + M, T0 + 61 * M, T0 + 2 * H,
                          response_breach=True),
            IncidentCycle(2, 0, "D1", "software", "fault", None, T0 + 50 * H, restored=T0 + 51 * H,
                          repeat=True),
            IncidentCycle(3, 0, "D2", "component", "fault", "idc", T0 + 3 * H, T0 + 4 * H),  # open
            IncidentCycle(4, 0, "D2", "network", "communications", None, T0 + 5 * H, restored=T0 + 6 * H),
            IncidentCycle(5, 0, "D3", "component", "fault", "cdm", T0 - H, restored=T0),  # before
        ]  # fmt: skip
        uptime = {"D1": Uptime(tech_scheduled_ms=10 * H, tech_available_ms=7 * H)}
        period = (T0, T0 + 30 * 24 * H)
        a, ax, ay, b, bz = scorecard(
            devices, uptime, cycles, period, date(2026, 11, 2), date(2026, 12, 1), VendorRules()
        )
        assert (a.vendor, a.model, ax.model, ay.model, b.model, bz.model) == (
            "A", None, "X", "Y", None, "Z",
        )  # fmt: skip
        assert (a.devices, a.device_days, a.incidents) == (2, 60, 3)  # the network one is not
        assert a.incidents_per_device_month == 1.5
        assert (a.response(0.5), a.repair(0.5), a.repair(0.9)) == (60 * M, H, 2 * H)
        assert (a.response_breaches, a.repair_breaches, a.open_incidents) == (1, 0, 1)
        assert a.repeat_rate == 1 / 3
        assert (ax.incidents, ay.incidents, ay.response(0.5)) == (2, 1, None)
        assert [w.device_id for w in a.worst] == ["D1", "D2"]
        # No incident: counts are 0, every time and rate is no data.
        assert (b.incidents, b.incidents_per_device_month) == (0, 0.0)
        assert (b.response(0.5), b.repair(0.9), b.repeat_rate) == (None, None, None)
        assert b.technical_availability is None

    def test_device_commissioned_mid_month_counts_its_days_only(self) -> None:
        late = dev("D9", "A", "X", commissioned=date(2026, 11, 21))
        a, _ax = scorecard(
            [late], {}, [], (0, 1), date(2026, 11, 1), date(2026, 11, 30), VendorRules()
        )
        assert a.device_days == 10 and a.incidents_per_device_month == 0
