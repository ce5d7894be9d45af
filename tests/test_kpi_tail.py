"""剁尾巴: bottom N per group, deterministic ties, consecutive periods in the tail."""

from __future__ import annotations

from rules.tail import Entry, streaks, tail


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
