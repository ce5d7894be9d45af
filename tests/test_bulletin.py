"""The bulletin's pure parts: the down-for-long rule, the model, the renderers, the
arguments and the atomic write (no database)."""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import subprocess
import zipfile
from datetime import date
from decimal import Decimal
from pathlib import Path

import openpyxl
import pytest

from atmfleet.errors import UsageError
from exporters.bulletin import render
from exporters.bulletin.build import HOUR_MS, long_down
from exporters.bulletin.messages import Messages
from exporters.bulletin.model import Bulletin, Column, Kind, Table
from exporters.bulletin.output import check_folder, write_atomic
from exporters.bulletin.render import sheet_names, to_csv_zip, to_html, to_json, to_xlsx
from exporters.bulletin_cli import (
    parse_day,
    parse_formats,
    parse_lang,
    parse_month,
    parse_quarter,
    previous_month,
    previous_quarter,
)
from rules.labels import Label

H = HOUR_MS


class TestLongDown:
    """A device is listed when it is down at the end and has been down > 24 h."""

    def test_down_for_30_hours_up_to_the_end_is_listed_with_its_start(self) -> None:
        line = [(0, 10 * H, Label.AVAILABLE), (10 * H, 40 * H, Label.FAULT)]
        assert long_down(line, 40 * H) == (10 * H, 30 * H, Label.FAULT)

    def test_consecutive_causes_make_one_stretch_named_by_the_longest(self) -> None:
        line = [
            (0, 5 * H, Label.AVAILABLE),
            (5 * H, 15 * H, Label.COMMUNICATIONS),
            (15 * H, 48 * H, Label.CASH_OUT),
        ]
        assert long_down(line, 48 * H) == (5 * H, 43 * H, Label.CASH_OUT)

    def test_exactly_24_hours_is_not_more_than_24_hours(self) -> None:
        line = [(0, 24 * H, Label.AVAILABLE), (24 * H, 48 * H, Label.FAULT)]
        assert long_down(line, 48 * H) is None

    def test_a_device_back_in_service_at_the_end_is_not_listed(self) -> None:
        line = [(0, 40 * H, Label.FAULT), (40 * H, 48 * H, Label.AVAILABLE)]
        assert long_down(line, 48 * H) is None

    @pytest.mark.parametrize("label", [Label.PLANNED, Label.CLOSED, Label.UNKNOWN])
    def test_planned_closed_or_unknown_time_is_not_down(self, label: Label) -> None:
        assert long_down([(0, 48 * H, label)], 48 * H) is None

    def test_an_available_stretch_breaks_the_run(self) -> None:
        line = [(0, 20 * H, Label.FAULT), (20 * H, 21 * H, Label.AVAILABLE),
                (21 * H, 44 * H, Label.FAULT)]  # fmt: skip
        assert long_down(line, 44 * H) is None


def sample(lang: str = "en") -> Bulletin:
    m = Messages(lang)
    b = Bulletin("daily", lang, m("title.daily"), date(2026, 11, 20), date(2026, 11, 20), "now")
    b.summary = [("uptime", m("s.uptime"), 0.975, Kind.RATIO)]
    t = Table(
        "subbranches", m("t.subbranches"),
        [Column("subbranch", m("c.subbranch")), Column("uptime", m("c.uptime"), Kind.RATIO),
         Column("fees", m("c.fees"), Kind.MONEY), Column("down_h", m("c.down_h"), Kind.HOURS)],
        chart="uptime", chart_label="subbranch", target=0.97,
    )  # fmt: skip
    t.add(["赤峰", 0.9612, Decimal("12.50"), 3.5], frozenset({"uptime"}))
    t.add(["S2", None, Decimal("0"), 0.0])
    b.tables.append(t)
    b.tables.append(Table("down_24h", m("t.down_24h"), [Column("device", m("c.device"))]))
    return b


class TestModel:
    def test_a_row_of_the_wrong_width_is_refused_naming_the_table(self) -> None:
        t = Table("x", "X", [Column("a", "A")])
        with pytest.raises(ValueError, match="table x: row of 2 cells for 1 columns"):
            t.add(["1", "2"])

    def test_every_label_exists_in_both_languages(self) -> None:
        zh, en = Messages("zh-CN"), Messages("en")
        for key in ("title.daily", "title.monthly", "title.quarterly", "c.uptime"):
            assert zh(key) and en(key) and zh(key) != en(key)
        assert zh("title.monthly") == "自助业务经营管理考核评价月通报"
        assert zh("title.quarterly") == "自助业务经营管理考核评价季通报"


class TestRenderers:
    """Every format carries the same cells; numbers stay numbers."""

    def test_json_has_stable_keys_and_exact_money(self) -> None:
        doc = json.loads(to_json(sample()))
        assert list(doc) == ["kind", "lang", "title", "first", "last", "generated", "summary",
                             "footnotes",
                             "tables"]  # fmt: skip
        rows = doc["tables"]["subbranches"]["rows"]
        assert rows[0] == {"subbranch": "赤峰", "uptime": 0.9612, "fees": "12.50", "down_h": 3.5}
        assert doc["tables"]["subbranches"]["below_target"] == [["uptime"], []]

    def test_xlsx_keeps_numbers_freezes_the_header_and_fills_below_target_cells(self) -> None:
        wb = openpyxl.load_workbook(io.BytesIO(to_xlsx(sample(), "Summary", "Period")))
        ws = wb.worksheets[1]
        assert ws.freeze_panes == "A3"
        assert [c.value for c in ws[2]] == ["Sub-branch", "Uptime", "Fees", "Down (h)"]
        assert ws["B3"].value == 0.9612 and ws["B3"].number_format == "0.00%"
        assert ws["B3"].fill.fgColor.rgb.endswith("F8CBAD")
        assert ws["B4"].value == "–" and ws["B4"].fill.fgColor.rgb != ws["B3"].fill.fgColor.rgb
        assert wb.worksheets[0]["B5"].value == 0.975

    def test_sheet_names_are_legal_and_unique(self) -> None:
        b = sample()
        b.tables = [Table("a", "剁尾巴:开机率后10名设备(按二级分行)/x" * 2, []) for _ in range(3)]
        names = sheet_names(b, "Summary")
        assert len(set(names)) == 3
        assert all(len(n) <= 31 and not set(n) & set("[]:*?/\\") for n in names)

    def test_csv_is_a_zip_of_one_excel_readable_file_per_table(self) -> None:
        with zipfile.ZipFile(io.BytesIO(to_csv_zip(sample("zh-CN")))) as z:
            assert z.namelist() == ["summary.csv", "01_subbranches.csv", "02_down_24h.csv"]
            text = z.read("01_subbranches.csv")
        assert text.startswith("\ufeff".encode())
        assert text.decode("utf-8-sig").splitlines()[1] == "赤峰,0.9612,12.50,3.5"

    def test_html_is_self_contained_with_an_svg_chart_and_marks_below_target(self) -> None:
        page = to_html(sample(), {"summary": "S", "period": "P", "generated": "G",
                                  "nothing": "none"}).decode()  # fmt: skip
        assert "<script" not in page and "http://" not in page.replace(
            'xmlns="http://www.w3.org/2000/svg"', ""
        )
        assert page.count("<svg") == 1 and '<td class="n bad">96.12%</td>' in page
        assert '<p class="empty">none</p>' in page  # an empty table says so


class TestArguments:
    @pytest.mark.parametrize("text", ["2026-02-30", "20261120", "2026-11-20T00:00", ""])
    def test_a_day_that_is_not_yyyy_mm_dd_is_refused(self, text: str) -> None:
        with pytest.raises(UsageError, match="not a date; give a local calendar day"):
            parse_day(text)

    def test_formats_and_languages(self) -> None:
        assert parse_formats("all") == ["xlsx", "csv", "html", "json"]
        assert parse_formats("json, HTML,json") == ["json", "html"]
        with pytest.raises(UsageError, match="unknown format pdf; allowed: xlsx, csv"):
            parse_formats("xlsx,pdf")
        assert parse_lang("zh") == "zh-CN" and parse_lang("EN") == "en"
        with pytest.raises(UsageError, match="--lang 'de': unknown language"):
            parse_lang("de")

    def test_periods(self) -> None:
        assert parse_month("2026-02") == (date(2026, 2, 1), date(2026, 2, 28))
        assert parse_quarter("2026-Q4") == (date(2026, 10, 1), date(2026, 12, 31))
        assert previous_month(date(2026, 1, 5)) == (date(2025, 12, 1), date(2025, 12, 31))
        assert previous_quarter(date(2026, 2, 1)) == (date(2025, 10, 1), date(2025, 12, 31))
        for bad, fn in (("2026-13", parse_month), ("2026-Q5", parse_quarter)):
            with pytest.raises(UsageError):
                fn(bad)


class TestAtomicWrite:
    def test_the_file_appears_whole_and_no_temp_file_stays(self, tmp_path: Path) -> None:
        target = write_atomic(tmp_path / "b.json", b"{}")
        assert target.read_bytes() == b"{}"
        assert [p.name for p in tmp_path.iterdir()] == ["b.json"]

    def test_a_failed_write_leaves_the_old_file_and_no_temp_file(self, tmp_path: Path) -> None:
        (tmp_path / "b.json").write_bytes(b"old")
        (tmp_path / "dir.json").mkdir()  # os.replace onto a folder fails
        with pytest.raises(UsageError, match="cannot write"):
            write_atomic(tmp_path / "dir.json", b"new")
        assert sorted(p.name for p in tmp_path.iterdir()) == ["b.json", "dir.json"]
        assert (tmp_path / "b.json").read_bytes() == b"old"

    def test_a_missing_folder_is_created_and_a_file_in_the_way_refused(
        self, tmp_path: Path
    ) -> None:
        assert check_folder(tmp_path / "a" / "b").is_dir()
        (tmp_path / "f").write_text("")
        with pytest.raises(UsageError, match="cannot create the folder"):
            check_folder(tmp_path / "f" / "x")


class TestTheSystemdUnits:
    """deploy/: the timer writes yesterday's bulletin at 00:30 in the bank's time zone."""

    DEPLOY = Path(__file__).resolve().parent.parent / "deploy"

    def _ini(self, name: str) -> dict[str, str]:
        out = {}
        for line in (self.DEPLOY / name).read_text().splitlines():
            if "=" in line and not line.startswith("#"):
                key, _, value = line.partition("=")
                out[key.strip()] = value.strip()
        return out

    def test_the_timer_fires_at_half_past_midnight_beijing_time(self) -> None:
        timer = self._ini("atmfleet-bulletin-daily.timer")
        assert timer["OnCalendar"] == "*-*-* 00:30:00 Asia/Shanghai"
        assert timer["Unit"] == "atmfleet-bulletin-daily.service"
        systemd = shutil.which("systemd-analyze")
        if systemd is None:
            pytest.skip("systemd-analyze is not installed")
        out = subprocess.run(
            [systemd, "calendar", "--iterations=2", timer["OnCalendar"]],
            capture_output=True, text=True, check=True,
            env={**os.environ, "TZ": "UTC"},
        ).stdout  # fmt: skip
        elapses = re.findall(r"(\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2}) UTC", out)
        assert len(elapses) == 2 and all(e.endswith("16:30:00") for e in elapses)

    def test_the_service_runs_the_daily_bulletin_command(self) -> None:
        service = self._ini("atmfleet-bulletin-daily.service")
        argv = service["ExecStart"].split()
        assert argv[1:4] == ["bulletin", "daily", "--format"]
        from click.testing import CliRunner

        from app.cli import cli

        result = CliRunner().invoke(cli, [*argv[1:], "--help"])
        assert result.exit_code == 0, result.output


def uptime_table(values: list[float | None], targets: list[float]) -> Table:
    t = Table(
        "subbranches", "Sub-branches",
        [Column("subbranch", "Sub-branch"), Column("uptime", "Uptime", Kind.RATIO),
         Column("target", "Target", Kind.RATIO), Column("change", "Change (pp)", Kind.CHANGE),
         Column("down_h", "Down (h)", Kind.HOURS)],
        chart="uptime", chart_label="subbranch",
    )  # fmt: skip
    for i, (v, target) in enumerate(zip(values, targets, strict=True)):
        bad = v is not None and v < target
        # The change is flagged too (as a build might), and is None for the first row.
        t.add([f"S{i}", v, target, None if i == 0 else 0.0097, 1.0],
              frozenset({"uptime", "change"}) if bad or v is None else frozenset())  # fmt: skip
    return t


def bars(svg: str) -> list[float]:
    return [
        float(w) for w in re.findall(r'<rect x="\d+" y="[\d.]+" width="([\d.]+)" height="16"', svg)
    ]


class TestTheChart:
    """Bars of ratios from a round floor: one point is a visible length; the target shows."""

    def test_one_point_is_dozens_of_pixels_and_the_floor_is_printed(self) -> None:
        b = sample()
        b.tables = [uptime_table([1.0, 0.99, 0.9757], [0.96, 0.97, 0.98])]
        page = to_html(b, {"summary": "S", "period": "P", "generated": "G", "nothing": "-"})
        svg = page.decode().split("<svg", 1)[1].split("</svg>", 1)[0]
        full, ninety_nine, worst = bars(svg)
        assert full - ninety_nine >= 60  # 1 percentage point
        assert full - worst > 2 * (full - ninety_nine)
        assert "axis starts at 95%" in svg  # below the lowest target, 96 %
        assert svg.count('stroke-width="2"/>') == 3 + 1  # a target mark per bar, the legend
        assert "0.43 pp short" in svg and svg.count("pp short") == 1
        assert f'fill="{render._BAD}"' in svg

    def test_a_row_without_data_has_no_bar_and_reads_a_dash(self) -> None:
        b = sample()
        b.tables = [uptime_table([0.99, None], [0.97, 0.97])]
        svg = to_html(b, {}).decode().split("<svg", 1)[1]
        assert len(bars(svg)) == 1 and '<text class="na"' in svg and ">–</text>" in svg

    @pytest.mark.parametrize(("values", "kind", "lo", "hi"), [
        ([0.9757, 1.0, 0.98], Kind.RATIO, 0.96, 1.0),  # a point is a quarter of the axis
        ([0.5, 0.62], Kind.RATIO, 0.45, 0.65),  # close together, away from 100 %
        ([0.2, 0.62], Kind.RATIO, 0.0, 0.8),  # far apart: from zero
        ([0.0, 0.2, 0.05], Kind.RATIO, 0.0, 0.2),  # small shares: up to their largest
        ([60.04, 64.65, 70.41], Kind.NUMBER, 55.0, 72.5),  # close scores
        ([34.87, 70.41], Kind.NUMBER, 0.0, 80.0),  # scores far apart
        ([8.25, 45.83], Kind.MONEY, 0.0, 50.0),  # amounts always from zero
        ([3, 17], Kind.INT, 0.0, 20.0),
    ])  # fmt: skip
    def test_the_axis(self, values: list[float], kind: Kind, lo: float, hi: float) -> None:
        got_lo, got_hi, step = render.axis(values, kind)
        assert (round(got_lo, 6), round(got_hi, 6)) == (lo, hi)
        assert got_lo <= min(values) and got_hi >= max(values) and 2 <= (hi - lo) / step <= 8


class TestTheHtmlCells:
    def test_no_data_is_a_grey_dash_even_where_flagged(self) -> None:
        b = sample()
        b.tables = [uptime_table([None, 0.99], [0.97, 0.97])]
        page = to_html(b, {}).decode()
        rows = page.split("<tbody>", 1)[1].split("</tr>")
        assert '<td class="n na">–</td>' in rows[0]  # uptime: None, flagged
        assert "bad" not in rows[0]
        assert '<td class="n">+0.97</td>' in rows[1]

    def test_headers_put_the_unit_on_its_own_line(self) -> None:
        page = to_html(sample("zh-CN"), Messages("zh-CN").prefixed("")).decode()
        assert "<th>停机时长<br><small>(小时)</small></th>" in page
        assert "<th>开机率</th>" in page

    def test_the_generated_time_is_local_without_a_t(self) -> None:
        b = sample()
        b.generated = "2026-12-01T19:37:05+08:00"
        assert "G: 2026-12-01 19:37</p>" in to_html(b, {"generated": "G"}).decode()
        assert render.local_time("not a time") == "not a time"

    def test_a_list_of_devices_wraps_between_devices_only(self) -> None:
        b = sample()
        t = Table("vendors", "V", [Column("worst", "Worst devices")])
        t.add(["HHHT-0001-01 BT-S0002-05 CF-0006-02"])
        b.tables = [t]
        page = to_html(b, {}).decode()
        assert ('<td class="wrap"><span>HHHT-0001-01</span> <span>BT-S0002-05</span> '
                "<span>CF-0006-02</span></td>") in page  # fmt: skip


class TestTheWorkbook:
    """Autofilter, print setup, a native chart; changes in points; no data as "–"."""

    @pytest.fixture
    def book(self) -> bytes:
        b = sample("zh-CN")
        b.tables = [uptime_table([1.0, 0.9757, None], [0.96, 0.98, 0.97])]
        m = Messages("zh-CN")
        return to_xlsx(b, m("summary"), m("period"), m.prefixed("r."))

    def test_autofilter_frozen_header_widths_and_cells(self, book: bytes) -> None:
        ws = openpyxl.load_workbook(io.BytesIO(book)).worksheets[1]
        assert ws.auto_filter.ref == "A2:E5"
        assert ws.freeze_panes == "A3"
        assert ws.column_dimensions["D"].width >= len("Change (pp)")
        assert (
            ws["D4"].value == pytest.approx(0.97) and ws["D4"].number_format == "+0.00;-0.00;0.00"
        )
        assert ws["D3"].value == "–" and ws["B5"].value == "–"
        assert not ws["B5"].fill.fgColor.rgb.endswith("F8CBAD")  # flagged, but no data
        assert ws["B4"].fill.fgColor.rgb.endswith("F8CBAD")

    def test_every_sheet_prints_a4_landscape_one_page_wide_with_its_header(
        self, book: bytes
    ) -> None:
        for ws in openpyxl.load_workbook(io.BytesIO(book)).worksheets:
            assert ws.page_setup.orientation == "landscape"
            assert ws.page_setup.paperSize == 9  # A4
            assert ws.sheet_properties.pageSetUpPr.fitToPage
            assert ws.page_setup.fitToWidth in (None, 1)  # 1 is the default, left out
            assert ws.page_setup.fitToHeight == 0
            assert ws.print_title_rows.replace("$", "") in ("2:2", "4:4")
            assert "&P" in ws.oddFooter.right.text

    def test_the_summary_sheet_has_a_native_chart_of_the_sub_branches(self, book: bytes) -> None:
        with zipfile.ZipFile(io.BytesIO(book)) as z:
            (chart,) = [n for n in z.namelist() if n.startswith("xl/charts/chart")]
            xml = z.read(chart).decode()
            rels = z.read("xl/worksheets/_rels/sheet1.xml.rels").decode()
        assert "drawing" in rels  # on the summary sheet
        assert "<c:barChart>" in xml and "<c:lineChart>" in xml  # uptime, and the targets
        assert "'Sub-branches'!$B$3:$B$5" in xml  # the uptime column, every row
        assert "'Sub-branches'!$C$3:$C$5" in xml  # the targets
        assert '<c:min val="0.95"/>' in xml and '<c:max val="1.0"/>' in xml


class TestNoDataAnywhere:
    def test_every_format_renders_a_bulletin_whose_numbers_are_all_none(self) -> None:
        b = sample("zh-CN")
        b.summary = [(k, label, None, kind) for k, label, _, kind in b.summary]
        t = uptime_table([None, None], [0.97, 0.98])
        t.rows = [[r[0], *[None] * (len(r) - 1)] for r in t.rows]  # even the targets
        b.tables = [t]
        m = Messages("zh-CN")
        page = to_html(b, m.prefixed("")).decode()
        assert "bad" not in page.split("<body>", 1)[1].split("</style>")[-1]
        assert page.count("–") >= 8
        book = openpyxl.load_workbook(io.BytesIO(to_xlsx(b, "S", "P", m.prefixed("r."))))
        assert [c.value for c in book.worksheets[1][3]] == ["S0", "–", "–", "–", "–"]
        assert json.loads(to_json(b))["tables"]["subbranches"]["rows"][0]["uptime"] is None
        assert to_csv_zip(b)


class TestTheRenderersWords:
    @pytest.mark.parametrize("lang", ["zh-CN", "en"])
    def test_every_word_around_the_tables_exists_in_both_languages(self, lang: str) -> None:
        m = Messages(lang)
        words = {**m.prefixed("r."), **{k: m(k) for k in ("summary", "period", "generated",
                                                           "nothing")}}  # fmt: skip
        assert set(render.DEFAULT_LABELS) == set(words)
        if lang == "zh-CN":
            assert all(words[k] != render.DEFAULT_LABELS[k] for k in words if k != "r.page")
