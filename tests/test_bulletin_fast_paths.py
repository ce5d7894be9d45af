"""The shortcuts a bulletin takes at fleet scale give what the plain way gives (no database):
the roll-ups built from finer roll-ups, the rows below target only, the JSON rows encoded
one per line, the XLSX rows written through the shorter inner loop."""

from __future__ import annotations

import io
import json
import zipfile
from datetime import date
from decimal import Decimal
from typing import Any

import openpyxl
from xlsxwriter.worksheet import Worksheet

from exporters.bulletin.model import Bulletin, Column, Kind, Table
from exporters.bulletin.render import NO_DATA, _Sheet, to_json, to_xlsx
from rules.config import load_rules
from rules.labels import Label
from rules.report import Context, Scope, grouped_uptime, uptime_report
from rules.uptime import Uptime, dimension_key, rollup
from simulator.fleet import generate_inventory

DAY = date(2026, 11, 20)


def _context() -> tuple[Context, dict[str, Uptime]]:
    inv = generate_inventory(60, 7, prefix="fp")
    per_device = {}
    for i, d in enumerate(inv.devices):
        by_label = {Label.AVAILABLE: 80_000 + 997 * i, Label.FAULT: (i * 7919) % 9_000}
        if i % 3 == 0:
            by_label[Label.PLANNED] = 1_000 + i
        scheduled = sum(by_label.values()) - (1_000 + i if i % 3 == 0 else 0)
        per_device[d.id] = Uptime(
            by_label=by_label, scheduled_ms=0 if i % 11 == 0 else scheduled,
            available_ms=0 if i % 11 == 0 else by_label[Label.AVAILABLE],
            tech_scheduled_ms=scheduled, tech_available_ms=by_label[Label.AVAILABLE],
            planned_excluded_ms=1_000 + i if i % 3 == 0 else 0, monitored_ms=scheduled,
            devices=1,
        )  # fmt: skip
    ctx = Context(None, load_rules(), inv, Scope("fleet", "fleet"), DAY, DAY, 0)  # type: ignore[arg-type]
    ctx.cache[("per_device_uptime", "fleet", DAY, DAY)] = per_device
    ctx.cache[("txn", DAY, DAY)] = {}
    return ctx, per_device


def _same(a: dict[str, Uptime], b: dict[str, Uptime]) -> None:
    assert sorted(a) == sorted(b)
    for g in a:
        x, y = a[g], b[g]
        assert (x.devices, x.scheduled_ms, x.available_ms, x.tech_scheduled_ms,
                x.tech_available_ms, x.planned_excluded_ms, x.monitored_ms) == (
                y.devices, y.scheduled_ms, y.available_ms, y.tech_scheduled_ms,
                y.tech_available_ms, y.planned_excluded_ms, y.monitored_ms), g  # fmt: skip
        assert dict(x.by_label) == dict(y.by_label), g


class TestRollUpsFromFinerRollUps:
    def test_every_dimension_equals_the_roll_up_over_the_devices(self) -> None:
        ctx, per_device = _context()
        for by in ("device", "branch", "subbranch", "tier", "vendor", "type"):
            _same(grouped_uptime(ctx, per_device, by),
                  rollup(per_device, dimension_key(ctx.inventory, by)))  # fmt: skip
        whole = grouped_uptime(ctx, per_device, "scope")
        _same(whole, rollup(per_device, lambda _d: "fleet"))
        assert whole["fleet"].devices == 60

    def test_below_target_only_gives_the_rows_that_miss_their_target(self) -> None:
        ctx, _ = _context()
        every = uptime_report(ctx, "device")
        below = uptime_report(ctx, "device", below_target_only=True)
        assert below.rows == [r for r in every.rows if r["meets_target"] is False]
        assert below.rows and len(below.rows) < len(every.rows)
        assert any(r["uptime"] is None for r in every.rows)  # no data: never below target
        assert below.extra["total"] == every.extra["total"]


def _bulletin() -> Bulletin:
    b = Bulletin("daily", "en", "T", DAY, DAY, "2026-11-21T00:30:00+08:00")
    b.summary = [("uptime", "Uptime", 0.5, Kind.RATIO), ("n", "None", None, Kind.INT)]
    b.footnotes = ['a "quote", \u0000rows-0 and <b>']
    t = Table("t", "Table", [
        Column("text", "Text"), Column("ratio", "Ratio", Kind.RATIO),
        Column("change", "Change", Kind.CHANGE), Column("money", "Money", Kind.MONEY),
        Column("count", "Count", Kind.INT),
    ])  # fmt: skip
    t.add(["  padded  ", 0.25, 0.0123, Decimal("12.50"), 3], frozenset({"ratio"}))
    t.add(['a & b <c> "d"', None, None, None, None])
    t.add(['a & b <c> "d"', 1 / 3, -0.5, Decimal("0"), 10**12], frozenset({"count"}))
    t.add(["中文", float("inf"), 0.0, Decimal("-1.25"), 0])
    b.tables = [t, Table("empty", "Empty", [Column("a", "A")])]
    return b


class TestJsonRowsOnePerLine:
    def test_the_document_is_the_one_a_plain_dump_makes(self) -> None:
        b = _bulletin()
        got = to_json(b).decode()
        t = b.tables[0]
        rows = [{c.key: str(v) if isinstance(v, Decimal) else v
                 for c, v in zip(t.columns, r, strict=True)} for r in t.rows]  # fmt: skip
        doc = json.loads(got)
        assert doc["footnotes"] == b.footnotes
        assert doc["summary"]["n"] == {"label": "None", "value": None}
        assert json.dumps(doc["tables"]["t"]["rows"]) == json.dumps(rows)
        assert doc["tables"]["t"]["below_target"] == [["ratio"], [], ["count"], []]
        assert doc["tables"]["empty"]["rows"] == [] and doc["tables"]["empty"]["below_target"] == []
        assert got.count("\n") < 80  # one line per row, not per cell


class TestXlsxRowsThroughTheShortLoop:
    def test_every_cell_reads_back_as_written(self) -> None:
        b = _bulletin()
        book = openpyxl.load_workbook(io.BytesIO(to_xlsx(b, "Summary", "Period")))
        ws = book.worksheets[1]
        got = [[c.value for c in row] for row in ws.iter_rows(min_row=3, max_row=6)]
        assert got == [
            ["  padded  ", 0.25, 1.23, 12.5, 3],
            ['a & b <c> "d"', NO_DATA, NO_DATA, NO_DATA, NO_DATA],
            ['a & b <c> "d"', 1 / 3, -50.0, 0, 10**12],  # a string met again
            ["中文", NO_DATA, 0, -1.25, 0],
        ]
        assert ws["B3"].number_format == "0.00%" and ws["B3"].fill.fgColor.rgb.endswith("F8CBAD")
        assert ws["B5"].fill.fgColor.rgb in (None, "00000000")  # not flagged: no fill
        assert ws["E5"].fill.fgColor.rgb.endswith("F8CBAD") and ws["E5"].number_format == "#,##0"
        assert ws["C3"].number_format == "+0.00;-0.00;0.00"

    def test_the_sheets_are_the_bytes_the_library_writes(self, monkeypatch: Any) -> None:
        """Rows written in one piece (the row tag learnt once, each cell's XML made here)
        are the library's own rows: every part of the workbook but its creation time is
        the same byte for byte."""
        b = _bulletin()
        t = b.tables[0]
        for i in range(40):  # more rows, more columns' letters, strings met again
            t.add([f"dev{i % 7}", i / 41, (i - 20) / 400, float(i) * 1.5, i * 10**9],
                  frozenset({"ratio"} if i % 3 else set()))  # fmt: skip
        # Rows written whole (no change column: every cell in the row's one write),
        # with strings the library escapes or marks (spaces, _xHHHH_, controls, quotes).
        odd_text = ["plain", " lead", "trail ", "a_x0041_b", "tab\there", "q\"uote", "a&b",
                    "<r>rich</r>", "中文 名", "ctl\x01", "", "x" * 40]  # fmt: skip
        whole = Table("whole", "Whole rows", [Column("text", "Text"),
                      Column("ratio", "Ratio", Kind.RATIO), Column("n", "N", Kind.INT)])  # fmt: skip
        for i, text in enumerate(odd_text * 2):
            whole.add([text, i / 7, i], frozenset({"text"} if i % 2 else set()))
        whole.add([None, None, None])
        b.tables.append(whole)
        fast = _parts(to_xlsx(b, "Summary", "Period"))

        def put_row(ws: Any, row: int, cells: list[Any], whole: bool = False) -> None:
            for col, v, fmt, is_number in cells:  # the library's public calls
                (ws.write_number if is_number else ws.write_string)(row, col, v, fmt)

        monkeypatch.setattr(_Sheet, "put_row", put_row)
        monkeypatch.setattr(_Sheet, "_write_single_row", Worksheet._write_single_row)
        monkeypatch.setattr(_Sheet, "_write_cell", Worksheet._write_cell)
        plain = _parts(to_xlsx(b, "Summary", "Period"))
        assert sorted(fast) == sorted(plain)
        assert any(name.startswith("xl/worksheets/") for name in fast)
        for name in plain:
            assert fast[name] == plain[name], name


def _parts(data: bytes) -> dict[str, bytes]:
    """The workbook's files, less its document properties (they hold the time made)."""
    with zipfile.ZipFile(io.BytesIO(data)) as z:
        return {n: z.read(n) for n in z.namelist() if not n.startswith("docProps/")}
