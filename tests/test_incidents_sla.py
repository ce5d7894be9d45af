"""SLA clocks and marks (incidents/sla.py, incidents/detect.py): pure values, no database."""

from __future__ import annotations

from datetime import date, datetime, timedelta

import pytest

from atmfleet.errors import ConfigError
from incidents.detect import observe
from incidents.sla import Clock, due_at, marks, pauses_from, status
from rules.config import Rules, SlaContract, parse_rules
from rules.labels import Label
from rules.timeline import ms
from rules.uptime import WindowSpans

H = 3_600_000
TZ = Rules().tz
MONDAY_9 = ms(datetime(2026, 11, 30, 9, 0, tzinfo=TZ))  # a Monday, local


class TestDueAt:
    def test_calendar_hours(self) -> None:
        assert due_at(0, 4 * 3600) == 4 * H

    def test_a_pause_pushes_the_deadline_by_its_length(self) -> None:
        assert due_at(0, 4 * 3600, pauses=[(1 * H, 3 * H)]) == 6 * H

    def test_a_pause_still_running_means_never(self) -> None:
        assert due_at(0, 4 * 3600, pauses=[(1 * H, 2**62)]) is None

    def test_service_hours_count_only_inside_the_window(self) -> None:
        windows = WindowSpans(TZ)

        def day_spans(day: date) -> list[tuple[int, int]]:
            return windows.day("mon-fri 09:00-17:00", day)

        def local(value: int) -> date:
            return datetime.fromtimestamp(value / 1000, TZ).date()

        # Monday 15:00 + 4 service hours = Tuesday 11:00.
        start = MONDAY_9 + 6 * H
        got = due_at(start, 4 * 3600, (), day_spans, local)
        assert got == ms(datetime(2026, 12, 1, 11, 0, tzinfo=TZ))
        # Friday 16:00 + 2 service hours = Monday 10:00.
        friday = MONDAY_9 + 4 * 24 * H + 7 * H
        got = due_at(friday, 2 * 3600, (), day_spans, local)
        assert got == ms(datetime(2026, 12, 7, 10, 0, tzinfo=TZ))


class TestMarks:
    contract = SlaContract(name="c", response_hours=2, repair_hours=8, warning_share=0.5)

    def test_every_mark_with_its_instant(self) -> None:
        got = marks(self.contract, [Clock("repair", 0, None, 8)], [], None, None)
        assert [(m.kind, m.level, m.due) for m in got] == [
            ("warning", 0, 4 * H),
            ("breach", 0, 8 * H),
            ("escalation", 1, 8 * H),
            ("escalation", 2, 10 * H),
            ("escalation", 3, 12 * H),
        ]

    def test_a_clock_stopped_in_time_sets_no_breach_one_stopped_late_does(self) -> None:
        on_time = marks(self.contract, [Clock("response", 0, 90 * 60_000, 2)], [], None, None)
        assert [m.kind for m in on_time] == ["warning"]
        late = marks(self.contract, [Clock("response", 0, 2 * H + 1, 2)], [], None, None)
        assert [m.kind for m in late] == ["warning", "breach", "escalation"]

    def test_a_clock_not_started_sets_nothing(self) -> None:
        assert marks(self.contract, [Clock("response", None, None, 2)], [], None, None) == []

    def test_suspensions_from_the_history(self) -> None:
        rows = [("suspended", 10), ("resumed", 20), ("suspended", 30)]
        assert pauses_from(rows, since=0) == [(10, 20), (30, 2**62)]
        assert pauses_from(rows, since=25) == [(30, 2**62)]

    def test_status(self) -> None:
        assert status([], False, False) == "none"
        assert status([], False, True) == "ok"
        assert status(["warning"], False, True) == "warning"
        assert status(["warning"], True, True) == "suspended"
        assert status(["warning", "breach"], True, True) == "breached"


class TestObserve:
    def test_the_cause_is_the_first_one_other_than_supervisor(self) -> None:
        timeline = [(0, 10, Label.AVAILABLE), (10, 20, Label.FAULT), (20, 30, Label.SUPERVISOR)]
        obs = observe(timeline, [(0, 30)])
        assert obs.outage is not None
        assert (obs.outage.start, obs.outage.cause, obs.outage.down_ms) == (10, Label.FAULT, 20)

    def test_only_scheduled_time_counts_towards_the_debounce(self) -> None:
        obs = observe([(0, 100, Label.FAULT)], [(90, 100)])
        assert obs.outage is not None and obs.outage.down_ms == 10
        assert not obs.outage.due({Label.FAULT: 1})
        assert obs.outage.due({Label.FAULT: 0})

    def test_planned_or_unknown_is_no_outage(self) -> None:
        assert observe([(0, 10, Label.PLANNED)], [(0, 10)]).outage is None
        assert observe([(0, 10, Label.FAULT), (10, 20, Label.UNKNOWN)], [(0, 20)]).outage is None


class TestRulesFile:
    def test_the_shipped_file_is_the_defaults(self) -> None:
        rules = parse_rules("")
        assert rules.incidents.debounce_s[Label.FAULT] == 300
        assert rules.sla.contracts[0].name == "default"

    @pytest.mark.parametrize(
        ("text", "message"),
        [
            ("incidents:\n  debounce_s:\n    planned: 60\n", "'planned' cannot open an incident"),
            ("sla:\n  contracts:\n    - name: x\n      repair_hour: 8\n",
             "unknown key 'sla.contracts.0.repair_hour'"),
            ("sla:\n  contracts:\n    - name: x\n      clock: business\n",
             "sla.contracts.0.clock: Input should be 'calendar' or 'service'"),
            ("sla:\n  contracts:\n    - name: x\n      escalation:\n"
             "        - {after_hours: 2, recipients: [branch]}\n"
             "        - {after_hours: 1, recipients: [head_office]}\n",
             "levels must come in order of after_hours"),
            ("sla:\n  contracts:\n    - name: x\n      warning_recipients: [ceo]\n",
             "sla.contracts.0.warning_recipients.0"),
            ("incidents:\n  lookback_hours: 0.5\n", "shorter than the longest debounce"),
        ],
    )  # fmt: skip
    def test_a_bad_value_is_refused_with_its_field(self, text: str, message: str) -> None:
        with pytest.raises(ConfigError) as info:
            parse_rules(text, "r.yaml")
        assert message in str(info.value)
        assert "r.yaml line" in str(info.value)

    def test_the_first_matching_contract_wins(self) -> None:
        rules = parse_rules(
            "sla:\n  contracts:\n"
            "    - {name: grg-county, vendor: GRG, tier: '3', repair_hours: 12}\n"
            "    - {name: default}\n"
        )
        from atmfleet.inventory import Placement, Tier

        pick = rules.sla.contract_for
        assert pick("GRG", Tier.THIRD, Placement.OFF_SITE, "component").name == "grg-county"  # type: ignore[union-attr]
        assert pick("GRG", Tier.FIRST, Placement.OFF_SITE, "component").name == "default"  # type: ignore[union-attr]
        assert pick("NCR", Tier.THIRD, Placement.OFF_SITE, "cash").name == "default"  # type: ignore[union-attr]


def test_no_calendar_drift_across_days() -> None:
    assert due_at(0, 48 * 3600) == 48 * H == int(timedelta(hours=48).total_seconds() * 1000)
