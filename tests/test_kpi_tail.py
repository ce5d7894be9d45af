"""剁尾巴: bottom N per group, deterministic ties, consecutive periods in the tail."""

from __future__ import annotations

from rules.tail import Entry, no_data, streaks, tail, uptime_entries, volume_entries
from rules.uptime import Uptime


class TestRanking:
    def test_bottom_n_of_each_group_worst_first(self) -> None:
        entries = [Entry(f"A{i}", "S1", v) for i, v in enumerate([0.99, 0.90, 0.95, 0.80])]
        entries += [Entry("B0", "S2", 0.5), Entry("B1", "S2", 0.7)]
        got = tail(entries, size=2)
        assert [(m.id, m.position) for m in got["S1"]] == [("A3", 1), ("A1", 2)]
        assert [m.id for m in got["S2"]] == ["B0", "B1"]

    def test_ties_go_to_the_larger_tiebreak_then_the_id(self) -> None:
        entries = [
            Entry("D3", "S1", 0.9, tiebreak=100),
            Entry("D1", "S1", 0.9, tiebreak=500),
            Entry("D2", "S1", 0.9, tiebreak=500),
            Entry("D4", "S1", 0.95),
        ]
        assert [m.id for m in tail(entries, size=3)["S1"]] == ["D1", "D2", "D3"]

    def test_no_data_is_not_ranked(self) -> None:
        entries = [Entry("D1", "S1", None), Entry("D2", "S1", 0.99)]
        assert [m.id for m in tail(entries, size=10)["S1"]] == ["D2"]


class TestStreaks:
    def test_consecutive_periods_count_back_from_now(self) -> None:
        history = [{"D1", "D2"}, {"D1"}, {"D1", "D2"}]  # oldest first
        assert streaks(history, ["D1", "D2", "D3"]) == {"D1": 4, "D2": 2, "D3": 1}

    def test_tail_members_carry_their_streak(self) -> None:
        entries = [Entry("D1", "S1", 0.5), Entry("D2", "S1", 0.6), Entry("D3", "S1", 0.99)]
        got = tail(entries, size=2, history=[{"D2"}, {"D1", "D2"}])
        assert [(m.id, m.streak) for m in got["S1"]] == [("D1", 2), ("D2", 3)]


class TestEntries:
    def test_uptime_ranking_breaks_ties_by_downtime_and_skips_no_data(self) -> None:
        per_device = {
            "D1": Uptime(scheduled_ms=100, available_ms=50),
            "D2": Uptime(scheduled_ms=200, available_ms=100),  # same 50 %, more downtime
            "D3": Uptime(),  # not scheduled: no data
            "D4": Uptime(scheduled_ms=100, available_ms=90),
        }
        got = tail(uptime_entries(per_device, lambda _d: "S1"), size=2)["S1"]
        assert [m.id for m in got] == ["D2", "D1"]

    def test_volume_ranking_breaks_ties_by_scheduled_time(self) -> None:
        entries = volume_entries(
            {"D1": 0, "D2": 0, "D3": 5},
            {"D1": 10, "D2": 20, "D3": 5},
            {"D1": "S1", "D2": "S1", "D3": "S1"}.get,
        )
        assert [m.id for m in tail(entries, size=3)["S1"]] == ["D2", "D1", "D3"]


class TestShortfall:
    def test_only_who_falls_short_is_in_the_tail(self) -> None:
        entries = [
            Entry("D1", "S1", 1.0, target=0.98),  # at 100 %: never the tail
            Entry("D2", "S1", 0.98, target=0.98),  # exactly at target: not short
            Entry("D3", "S1", 0.97, target=0.98),
            Entry("D4", "S1", None, target=0.98),  # no data: apart
            Entry("E1", "S2", 0.99, target=0.98),
        ]
        got = tail(entries, size=10)
        assert [m.id for m in got["S1"]] == ["D3"]
        assert "S2" not in got  # nobody below target
        assert no_data(entries) == {"S1": ["D4"]}

    def test_a_period_without_data_neither_breaks_nor_extends_a_streak(self) -> None:
        history = [{"D1"}, set(), {"D1"}]  # oldest first
        without = [set(), {"D1"}, set()]
        assert streaks(history, ["D1"], without) == {"D1": 3}
        assert streaks(history, ["D1"]) == {"D1": 2}

    def test_volume_below_the_threshold_per_day(self) -> None:
        entries = volume_entries(
            {"D1": 120, "D2": 119, "D3": 0},
            {"D1": 1, "D2": 1, "D3": 1},
            lambda _d: "S1",
            days={"D1": 3, "D2": 3, "D3": 3},
            threshold={"D1": 40.0, "D2": 40.0, "D3": None}.get,
        )
        # D1 averages exactly 40 (not short); D3 has no threshold (not ranked).
        assert [(m.id, round(m.value, 4)) for m in tail(entries, 10)["S1"]] == [("D2", 39.6667)]
