"""The HTML bulletin as a browser lays it out (headless Chromium): a realistic daily
bulletin of a dozen sub-branches, in both languages, fits a 1400 px screen and an
A4-landscape page without a wrapped header or cell, with the long tail tables per
sub-branch in a details part, on a page of a reasonable height; charts show a one-point
difference and the target; no data reads "–" and is never red.

The bulletin here is built from the model (columns as the daily bulletin has them, labels
from the messages): no database. tests/test_bulletin_store.py opens the real one."""

from __future__ import annotations

import random
import re
from datetime import date
from pathlib import Path

import pytest

from exporters.bulletin import render
from exporters.bulletin.messages import Messages
from exporters.bulletin.model import Bulletin, Cell, Column, Kind, Table
from exporters.bulletin.render import PRINT_CSS
from exporters.bulletin_cli import render as render_format
from rules.labels import CAUSES
from simulator.fleet import generate_inventory
from tests.browser import layout

#: The A4-landscape page between 10 mm margins, in CSS pixels (277 mm at 96 dpi).
A4_LANDSCAPE_PX = 1047


def realistic(lang: str) -> Bulletin:
    """A daily bulletin of the default 200-device fleet, the tables as the daily has them;
    one sub-branch without data the day before, one without substitution data."""
    m = Messages(lang)
    inv = generate_inventory(200, 1)
    rng = random.Random(7)
    b = Bulletin("daily", lang, m("title.daily"), date(2026, 11, 30), date(2026, 11, 30),
                 "2026-12-01T19:37:05+08:00")  # fmt: skip

    def col(key: str, kind: Kind = Kind.TEXT) -> Column:
        return Column(key, m(f"c.{key}"), kind)

    b.summary = [
        (k, m(f"s.{k}"), v, kind)
        for k, v, kind in (
            ("devices", 200, Kind.INT), ("uptime", 0.9912, Kind.RATIO),
            ("technical", 0.9913, Kind.RATIO), ("down_h", 36.64, Kind.HOURS),
            ("unknown_h", 0.0, Kind.HOURS), ("financial", 17_366, Kind.INT),
            ("substitution", 0.6074, Kind.RATIO), ("low_yield_share", None, Kind.RATIO),
            ("below_target", 12, Kind.INT), ("down_24h", 0, Kind.INT),
            ("no_deposit", 3, Kind.INT),
        )
    ]  # fmt: skip
    t = Table("tiers", m("t.tiers"), [
        col("tier"), col("devices", Kind.INT), col("uptime", Kind.RATIO),
        col("target", Kind.RATIO), col("technical", Kind.RATIO), col("down_h", Kind.HOURS),
        col("financial", Kind.INT), col("substitution", Kind.RATIO),
    ], chart="uptime", chart_label="tier")  # fmt: skip
    for tier, up, target in (("1", 0.9857, 0.98), ("2", 0.9936, 0.97), ("3", 0.9956, 0.96)):
        t.add([m("tier", n=tier), 70, up, target, up, 20.26, 5934, 0.5627],
              frozenset({"substitution"}) if tier == "1" else frozenset())  # fmt: skip
    b.tables.append(t)

    t = Table("subbranches", m("t.subbranches"), [
        col("rank", Kind.INT), col("subbranch"), col("subbranch_name"), col("tier"),
        col("devices", Kind.INT), col("uptime", Kind.RATIO), col("previous", Kind.RATIO),
        col("change", Kind.CHANGE), col("target", Kind.RATIO), col("below"),
        col("technical", Kind.RATIO), col("down_h", Kind.HOURS), col("cause"),
        col("financial", Kind.INT), col("substitution", Kind.RATIO),
        col("low_yield_share", Kind.RATIO),
    ], chart="uptime", chart_label="subbranch_name")  # fmt: skip
    targets = {"1": 0.98, "2": 0.97, "3": 0.96}
    ups = sorted((rng.uniform(0.975, 1.0) for _ in inv.subbranches), reverse=True)
    ups[-1] = 0.9757  # the worst, below its target
    for i, (s, up) in enumerate(zip(inv.subbranches, ups, strict=True), 1):
        target = targets[s.tier.value]
        before = None if i == 3 else up - 0.004
        low = up < target
        subst = None if i == 5 else rng.uniform(0.45, 0.75)
        t.add(
            [i, s.id, s.name, m("tier", n=s.tier.value), 10 + i, up, before,
             None if before is None else up - before, target, m("yes") if low else m("no"),
             up, 12.5, m("cause.supervisor"), 1047, subst, 0.1111],
            frozenset({"uptime", "below", "previous"} if low else {"previous"}),
        )  # fmt: skip
    b.tables.append(t)

    t = Table("branches", m("t.branches"), [
        col("subbranch"), col("branch"), col("branch_name"), col("devices", Kind.INT),
        col("uptime", Kind.RATIO), col("target", Kind.RATIO), col("down_h", Kind.HOURS),
        col("cause"), col("financial", Kind.INT), col("counter_financial", Kind.INT),
        col("substitution", Kind.RATIO), col("on_site", Kind.RATIO),
    ])  # fmt: skip
    for br in inv.branches:
        up = rng.uniform(0.95, 1.0)
        t.add([br.subbranch, br.id, br.name, 3, up, 0.97, 1.5, m("cause.communications"),
               300, None, None, None], frozenset({"uptime"}) if up < 0.97 else frozenset())  # fmt: skip
    b.tables.append(t)

    cause_cols = [
        Column(f"down_h.{c.value}", m(f"cause.{c.value}") + (" (h)" if lang == "en" else "(小时)"),
               Kind.HOURS)
        for c in CAUSES
    ]  # fmt: skip
    t = Table("below_target", m("t.below_target"), [
        col("device"), col("subbranch"), col("branch"), col("type"), col("vendor"),
        col("uptime", Kind.RATIO), col("target", Kind.RATIO), col("down_h", Kind.HOURS),
        *cause_cols,
    ], note=m("note.below"))  # fmt: skip
    for d in inv.devices[:12]:
        t.add([d.id, d.branch.split("-")[0], d.branch, m(f"type.{d.type.value}"), d.vendor,
               0.95, 0.97, 1.2, *[0.1] * len(cause_cols)], frozenset({"uptime"}))  # fmt: skip
    b.tables.append(t)

    for key, value_key, kind in (("tail_uptime", "uptime", Kind.RATIO),
                                 ("tail_volume", "financial", Kind.INT)):  # fmt: skip
        t = Table(key, m(f"t.{key}", n=10), [
            col("subbranch"), col("position", Kind.INT), col("device"), col("branch"),
            col(value_key, kind), col("streak", Kind.INT),
        ])  # fmt: skip
        for s in inv.subbranches:
            mine = [d for d in inv.devices if d.branch.startswith(s.id + "-")][:10]
            for pos, d in enumerate(mine, 1):
                value: Cell = 0.95 + pos / 500 if kind is Kind.RATIO else pos * 3
                t.add([s.id, pos, d.id, d.branch, value, 1 + pos % 3])
        b.tables.append(t)

    t = Table("low_yield", m("t.low_yield"), [
        col("subbranch"), col("low", Kind.INT), col("evaluated", Kind.INT),
        col("share", Kind.RATIO), col("max_share", Kind.RATIO), col("exempt", Kind.INT),
        col("low_efficiency", Kind.INT),
    ], chart="share", chart_label="subbranch", target=0.05)  # fmt: skip
    for s in inv.subbranches:
        share = rng.uniform(0, 0.2)
        t.add(
            [s.id, 2, 18, share, 0.05, 0, 1], frozenset({"share"}) if share > 0.05 else frozenset()
        )
    t.add([m("fleet"), 0, 0, None, 0.05, 0, 0], frozenset({"share"}))  # no device evaluated
    b.tables.append(t)
    return b


@pytest.fixture(scope="module", params=["zh-CN", "en"])
def page(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    lang = request.param
    folder = tmp_path_factory.mktemp(f"layout-{lang}")
    path = folder / f"daily.{lang}.html"
    path.write_bytes(render_format(realistic(lang), "html", Messages(lang)))
    return path


class TestOnA1400PxScreen:
    def test_no_header_or_cell_wraps_and_nothing_sticks_out(self, page: Path) -> None:
        facts = layout(page, 1400, page.parent)
        assert facts["wraps"] == []
        assert facts["outside"] == [] and facts["width"] <= facts["view"]
        assert facts["tables"] >= 20 and facts["charts"] == 3

    def test_the_page_is_far_shorter_than_with_the_long_tables_unfolded(
        self, page: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        folded = layout(page, 1400, page.parent)["height"]
        lang = page.name.split(".")[1]
        monkeypatch.setattr(render, "GROUP_ROWS", 10_000)
        flat = page.with_name(f"flat.{lang}.html")
        flat.write_bytes(render_format(realistic(lang), "html", Messages(lang)))
        unfolded = layout(flat, 1400, page.parent)["height"]
        assert folded < 0.7 * unfolded, (folded, unfolded)
        assert folded < 7000

    def test_the_time_is_local_without_a_t(self, page: Path) -> None:
        meta = layout(page, 1400, page.parent)["meta"]
        assert "2026-12-01 19:37" in meta and "T19" not in meta and "+08:00" not in meta


class TestRoomForMoreColumns:
    """The widest tables keep fitting with two more columns (coverage, monitoring outage)."""

    @pytest.mark.parametrize("lang", ["zh-CN", "en"])
    def test_the_sub_branch_table_with_two_more_columns_still_fits(
        self, lang: str, tmp_path: Path
    ) -> None:
        m = Messages(lang)
        b = realistic(lang)
        t = b.table("subbranches")
        t.columns += [Column("coverage", "监控覆盖率" if lang == "zh-CN" else "Coverage",
                             Kind.RATIO), Column("unknown_h", m("c.unknown_h"), Kind.HOURS)]  # fmt: skip
        t.rows = [[*r, 0.9876, 0.0] for r in t.rows]
        page = tmp_path / f"wider.{lang}.html"
        page.write_bytes(render_format(b, "html", m))
        screen = layout(page, 1400, tmp_path)
        paper = layout(page, A4_LANDSCAPE_PX, tmp_path,
                       PRINT_CSS.replace("@page{size:A4 landscape;margin:10mm}", ""))  # fmt: skip
        assert screen["outside"] == paper["outside"] == []
        assert screen["wraps"] == paper["wraps"] == []


class TestOnAnA4LandscapePage:
    def test_with_the_print_rules_every_table_fits_the_page_width_unwrapped(
        self, page: Path
    ) -> None:
        css = PRINT_CSS.replace("@page{size:A4 landscape;margin:10mm}", "")
        facts = layout(page, A4_LANDSCAPE_PX, page.parent, css)
        assert facts["outside"] == [], facts["outside"]
        assert facts["wraps"] == []

    def test_the_page_asks_for_a4_landscape_and_repeats_table_headers(self, page: Path) -> None:
        text = page.read_text()
        assert "@page{size:A4 landscape" in text
        assert "thead{display:table-header-group}" in text


class TestTheMarkup:
    def test_the_tail_tables_are_grouped_per_sub_branch_after_the_main_tables(
        self, page: Path
    ) -> None:
        text = page.read_text()
        details = text.index('id="details"')
        assert text.index('id="tail_uptime"') > details and text.index('id="low_yield"') < details
        tail = text[text.index('id="tail_uptime"') : text.index('id="tail_volume"')]
        assert tail.count("<table") == 12 and tail.count("<h3>") == 12
        assert "呼和浩特 (HHHT)" in tail

    def test_no_data_is_a_grey_dash_never_red(self, page: Path) -> None:
        text = page.read_text()
        assert '<td class="n na">–</td>' in text
        assert not re.search(r'class="[^"]*bad[^"]*">–<', text)
