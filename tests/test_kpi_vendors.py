"""Vendor scorecard: fault incidents, MTTR, response, repeat faults, worst devices."""

from __future__ import annotations

from datetime import date, datetime
from zoneinfo import ZoneInfo

import pytest

from atmfleet.inventory import Device, DeviceType, Placement
from rules.config import VendorRules
from rules.labels import Label
from rules.timeline import Interval, ms
from rules.uptime import Uptime
from rules.vendors import FaultEvent, Incident, incidents, mark_repeats, scorecard

SH = ZoneInfo("Asia/Shanghai")
M = 60_000
H = 60 * M


def at(day: int, hh: int, mm: int = 0) -> int:
    return ms(datetime(2026, 11, day, hh, mm, tzinfo=SH))


A, F, SUP, CASH = Label.AVAILABLE, Label.FAULT, Label.SUPERVISOR, Label.CASH_OUT

# D1: fault 10:00 (cdm) and a second fault 10:10 (idc) while down, technician 10:30,
# then out of cash until 11:30; again a cdm fault on the 5th, technician arrived 09:20.
D1_TIMELINE: list[Interval] = [
    (at(1, 0), at(2, 10), A),
    (at(2, 10), at(2, 10, 30), F),
    (at(2, 10, 30), at(2, 11), SUP),
    (at(2, 11), at(2, 11, 30), CASH),
    (at(2, 11, 30), at(5, 9), A),
    (at(5, 9), at(5, 10), F),
    (at(5, 10), at(30, 12), A),
]
D1_FAULTS = [
    FaultEvent(at(2, 10), "cdm", "E1"),
    FaultEvent(at(2, 10, 10), "idc", "E2"),
    FaultEvent(at(5, 9) - 2000, "cdm", "E1"),  # event logged 2 s before the state change
]


def d1_incidents() -> list[Incident]:
    return incidents("D1", D1_TIMELINE, D1_FAULTS, arrivals=[at(5, 9, 20)])


class TestIncidents:
    def test_overlapping_faults_are_one_incident_until_back_in_service(self) -> None:
        first, _second = d1_incidents()
        assert (first.start, first.end, first.component) == (at(2, 10), at(2, 11, 30), "cdm")
        assert first.repair_ms == 90 * M  # fault start -> back in service, via cash-out

    def test_response_is_the_first_maintenance_mode_or_technician_arrival(self) -> None:
        first, second = d1_incidents()
        assert first.response_ms == 30 * M
        assert second.response_ms == 20 * M

    def test_repeat_is_same_device_and_component_within_7_days_of_the_repair(self) -> None:
        marked = mark_repeats(d1_incidents(), repeat_days=7)
        assert [i.repeat for i in marked] == [False, True]
        assert [i.repeat for i in mark_repeats(d1_incidents(), repeat_days=2)] == [False, False]

    def test_a_fault_still_open_has_no_repair_time(self) -> None:
        tl: list[Interval] = [(at(1, 0), at(29, 8), A), (at(29, 8), at(30, 0), F)]
        (only,) = incidents("D2", tl)
        assert only.end is None and only.repair_ms is None and only.response_ms is None


def dev(ident: str, vendor: str, model: str) -> Device:
    return Device(
        id=ident,
        branch="B1",
        type=DeviceType.ATM,
        placement=Placement.OFF_SITE,
        vendor=vendor,
        model=model,
        commissioned=date(2025, 1, 1),
    )


class TestScorecard:
    def test_per_vendor_and_model(self) -> None:
        devices = [dev("D1", "A", "X"), dev("D2", "A", "X"), dev("D3", "B", "Y")]
        d2_open = incidents("D2", [(at(1, 0), at(29, 8), A), (at(29, 8), at(30, 0), F)])
        all_incidents = mark_repeats([*d1_incidents(), *d2_open], 7)
        uptime = {
            "D1": Uptime(tech_scheduled_ms=720 * H, tech_available_ms=718 * H),
            "D2": Uptime(tech_scheduled_ms=720 * H, tech_available_ms=704 * H),
            "D3": Uptime(tech_scheduled_ms=720 * H, tech_available_ms=720 * H),
        }
        period = (at(1, 0), ms(datetime(2026, 12, 1, tzinfo=SH)))
        cards = scorecard(
            devices,
            uptime,
            all_incidents,
            period,
            date(2026, 11, 1),
            date(2026, 11, 30),
            VendorRules(),
        )
        ax, by = cards
        assert (ax.vendor, ax.model, ax.devices, ax.device_days) == ("A", "X", 2, 60)
        assert ax.technical_availability == pytest.approx(1422 / 1440)
        assert ax.faults == 3 and ax.faults_per_device_month == pytest.approx(1.5)
        assert ax.mttr_ms == pytest.approx(75 * M)  # (90 + 60) / 2; the open one left out
        assert ax.mean_response_ms == pytest.approx(25 * M)
        assert (ax.repeat_faults, ax.open_incidents) == (1, 1)
        assert [w.device_id for w in ax.worst] == ["D2", "D1"]
        assert (by.faults, by.mttr_ms, by.technical_availability) == (0, None, 1.0)
        assert by.worst == []

    def test_device_commissioned_mid_month_counts_its_days_only(self) -> None:
        late = Device(
            id="D9",
            branch="B1",
            type=DeviceType.ATM,
            placement=Placement.OFF_SITE,
            vendor="A",
            model="X",
            commissioned=date(2026, 11, 21),
        )
        (card,) = scorecard(
            [late], {}, [], (0, 1), date(2026, 11, 1), date(2026, 11, 30), VendorRules()
        )
        assert card.device_days == 10 and card.faults_per_device_month == 0
