"""The daily bulletin's shorter ways at fleet scale give what the plain ways give (no
database): the earlier periods' tails without an entry per device, the day before's
ratios from A and S sums, group targets and financial counts from the branches', the
branches' uptime added up in locals, the main cause in one pass, the HTML rows written
without a call per number, and the substitution's units looked up per branch."""

from __future__ import annotations

import html
from datetime import date, timedelta
from decimal import Decimal

from atmfleet.inventory import Placement
from exporters.bulletin.model import Column, Kind, Table
from exporters.bulletin.render import HTML_MAX_ROWS, _cell_html, _rows_html
from rules.config import load_rules
from rules.labels import CAUSES, Label
from rules.report import (
    Context,
    DayFigures,
    Scope,
    _earlier_tail,
    added,
    compared_groups,
    compared_uptime,
    financial_per_device,
    group_target,
    group_targets,
    grouped_financial,
    grouped_uptime,
    main_cause,
    tail_entries,
)
from rules.substitution import DeviceCounts, unit_of, unit_volumes
from rules.tail import tail
from rules.uptime import Uptime, dimension_key, rollup
from simulator.fleet import generate_inventory

DAY = date(2026, 11, 20)
BEFORE = DAY - timedelta(days=1)


def _uptime(i: int) -> Uptime:
    by_label = {Label.AVAILABLE: 80_000 + 997 * (i % 5), Label.FAULT: (i * 7919) % 9_000}
    if i % 3 == 0:
        by_label[Label.PLANNED] = 1_000 + i
    if i % 4 == 0:
        by_label = {Label.COMMUNICATIONS: 500 + i, **by_label}  # labels in another order
    s = 0 if i % 11 == 0 else sum(by_label.values())
    return Uptime(
        by_label=by_label, scheduled_ms=s, available_ms=0 if s == 0 else by_label[Label.AVAILABLE],
        tech_scheduled_ms=s, tech_available_ms=by_label[Label.AVAILABLE],
        planned_excluded_ms=1_000 + i if i % 3 == 0 else 0, monitored_ms=s, devices=1,
    )  # fmt: skip


def _context(stranger: bool = False) -> Context:
    """60 devices; the day's uptime per device, the day before's A, S and financial
    count: ties on the value and on the tie-break (so the id decides), devices without
    scheduled time, no transactions. ``stranger``: one more id, not in the inventory."""
    inv = generate_inventory(60, 7, prefix="fq")
    per_device = {d.id: _uptime(i) for i, d in enumerate(inv.devices)}
    figures = {}
    for i, d in enumerate(inv.devices):
        s = 0 if i % 9 == 0 else 86_400_000 - 3_600_000 * (i % 2)
        a = s - 3_600_000 * (i % 4)  # ratios repeat; downtimes repeat
        figures[d.id] = DayFigures(a, s, (i % 6) * 40)  # the same volumes, ties
    if stranger:
        per_device["XX-stranger"] = _uptime(7)
        figures["XX-stranger"] = DayFigures(1, 2, 0)
    ctx = Context(None, load_rules(), inv, Scope("fleet", "fleet"), DAY, DAY, 0)  # type: ignore[arg-type]
    ctx.cache[("per_device_uptime", "fleet", DAY, DAY)] = per_device
    ctx.cache[("day_figures", "fleet", BEFORE)] = figures
    ctx.cache[("financial", "fleet", DAY, DAY)] = {
        d: (i * 37) % 500 for i, d in enumerate(per_device)
    }
    return ctx


class TestEarlierTail:
    def test_the_tail_no_data_and_data_equal_those_of_the_entries(self) -> None:
        for stranger in (False, True):
            ctx = _context(stranger).shifted(1)
            for rank in ("uptime", "volume"):
                for group in ("subbranch", "tier"):
                    entries = tail_entries(ctx, rank, group, "device", earlier=True)
                    for size in (1, 3, 10, 100):
                        members = tail(entries, size)
                        want = (
                            {m.id for ms in members.values() for m in ms},
                            {e.id for e in entries if e.value is None},
                            any(e.value is not None for e in entries),
                        )
                        assert _earlier_tail(ctx, rank, group, size) == want, (rank, size)
                    assert want[0] and want[1]  # someone short, someone without data

    def test_a_period_longer_than_a_day_takes_the_entries(self) -> None:
        ctx = _context()
        longer = Context(ctx.feed, ctx.rules, ctx.inventory, ctx.scope, BEFORE, DAY, 0)
        assert _earlier_tail(longer, "uptime", "subbranch", 10) is None


class TestComparedGroups:
    def test_the_ratios_equal_those_of_the_roll_ups(self) -> None:
        for stranger in (False, True):
            earlier = _context(stranger).shifted(1)
            per_device = compared_uptime(earlier)
            for by in ("device", "branch", "subbranch", "tier", "vendor"):
                groups, whole = compared_groups(earlier, by)
                want = rollup(per_device, dimension_key(earlier.inventory, by))
                assert {g: (u.ratio, u.devices) for g, u in groups.items()} == {
                    g: (u.ratio, u.devices) for g, u in want.items()
                }
                total = rollup(per_device, lambda _d: "fleet")["fleet"]
                assert (whole.ratio, whole.devices) == (total.ratio, total.devices)

    def test_no_device_gives_no_data(self) -> None:
        earlier = _context().shifted(1)
        earlier.cache[("day_figures", "fleet", BEFORE)] = {}
        assert compared_groups(earlier, "subbranch") == ({}, Uptime())


class TestFromTheBranches:
    def test_group_targets_equal_those_over_the_devices(self) -> None:
        for stranger in (False, True):
            ctx = _context(stranger)
            per_device = ctx.cache[("per_device_uptime", "fleet", DAY, DAY)]
            target = ctx.target_of()
            for by in ("branch", "subbranch", "tier", "scope"):
                key = (lambda _d: "fleet") if by == "scope" else dimension_key(ctx.inventory, by)
                assert group_targets(ctx, by) == group_target(per_device, key, target), by

    def test_financial_counts_equal_those_over_the_devices(self) -> None:
        for stranger in (False, True):
            ctx = _context(stranger)
            per_device = financial_per_device(ctx)
            for by in ("device", "branch", "subbranch", "tier", "type"):
                key = dimension_key(ctx.inventory, by)
                want: dict[str, int] = {}
                for d, n in per_device.items():
                    if (g := key(d)) is not None:
                        want[g] = want.get(g, 0) + n
                assert grouped_financial(ctx, by) == want, by

    def test_branch_uptime_equals_the_roll_up_labels_in_order(self) -> None:
        for stranger in (False, True):
            ctx = _context(stranger)
            per_device = ctx.cache[("per_device_uptime", "fleet", DAY, DAY)]
            got = grouped_uptime(ctx, per_device, "branch")
            want = rollup(per_device, dimension_key(ctx.inventory, "branch"))
            assert list(got) == list(want)
            for g, up in want.items():
                assert got[g] == up and list(got[g].by_label) == list(up.by_label), g
        assert added([]) == Uptime()


class TestMainCause:
    def test_the_largest_time_then_the_name(self) -> None:
        for times in ([0] * 8, [5, 0, 5, 3, 0, 0, 5, 1], [1, 2, 3, 4, 5, 6, 7, 8],
                      [9, 9, 9, 9, 9, 9, 9, 9], [0, 0, 0, 0, 0, 0, 0, 4], [-3, 0, 0, 0, 0, 0, 0, 0]):  # fmt: skip
            for order in (CAUSES, tuple(reversed(CAUSES))):
                up = Uptime(by_label=dict(zip(order, times, strict=True)))
                causes = {c.value: v for c, v in up.down_by_cause().items() if v > 0}
                want = max(causes, key=lambda c: (causes[c], c)) if causes else None
                assert main_cause(up) == want == main_cause(up, up.down_by_cause())


class TestHtmlRows:
    def test_every_cell_as_the_cell_writer_writes_it(self) -> None:
        kinds = list(Kind)
        t = Table("t", "T", [Column(f"c{k.value}", k.value, k) for k in kinds])
        values: list[object] = [
            None, 0, 0.0, -0.0, 1, 12345, 0.98765, -0.0123, float("inf"), float("nan"),
            Decimal("12.50"), True, "a & b <c>", "  spaced  ", "x" * 30, "D1 D2 D3 D4 D5 D6 D7",
            "设备 一 二", "", 10**12,
        ]  # fmt: skip
        for i, v in enumerate(values):
            for shift in range(len(kinds)):
                row = [values[(i + shift + j) % len(values)] for j in range(len(kinds))]
                row[shift % len(kinds)] = v
                flagged = frozenset(c.key for j, c in enumerate(t.columns) if (i + j) % 3 == 0)
                t.add(row, flagged)  # type: ignore[arg-type]
        rows = list(range(len(t.rows)))
        cols = list(range(len(t.columns)))
        got = _rows_html(t, rows, cols)
        want = "".join(
            "<tr>" + "".join(_cell_html(t, n, t.columns[j], t.rows[n][j]) for j in cols) + "</tr>"
            for n in rows[:HTML_MAX_ROWS]
        )
        assert want in got and got.count("<tr>") == len(rows) + 1  # and the header
        assert html.escape("a & b <c>") in got


class TestUnitVolumes:
    def test_each_unit_as_unit_of_finds_it(self) -> None:
        inv = generate_inventory(80, 9, prefix="fu")
        devices = list(inv.devices)
        devices[0] = devices[0].model_copy(update={"decommissioned": DAY})
        devices[1] = devices[1].model_copy(update={"commissioned": DAY + timedelta(days=1)})
        inv = inv.model_copy(update={"devices": tuple(devices)})
        counts = {d.id: DeviceCounts(i % 7, i % 3) for i, d in enumerate(inv.devices)}
        counts["XX-stranger"] = DeviceCounts(5, 5)
        for on in (DAY, None):
            got = unit_volumes(inv, counts, {}, on)
            want: dict[str, list[int]] = {}
            for d, c in counts.items():
                device = inv.device_by_id.get(d)
                unit = unit_of(inv, d)
                if device is None or unit is None:
                    continue
                if on is not None and not (
                    device.commissioned <= on
                    and (device.decommissioned is None or device.decommissioned > on)
                ):
                    continue
                row = want.setdefault(unit, [0, 0, 0])
                row[0] += c.financial
                row[1] += c.financial + c.non_financial
                row[2] += c.financial if device.placement is Placement.ON_SITE else 0
            for unit, (fin, tot, site) in want.items():
                v = got[unit]
                assert (v.self_financial, v.self_total, v.on_site_financial) == (fin, tot, site)
            assert set(want) <= set(got)
            assert all(
                (v.self_financial, v.self_total) == (0, 0) for u, v in got.items() if u not in want
            )
