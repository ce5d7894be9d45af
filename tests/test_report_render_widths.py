"""The terminal table (``rules.report.render``) pads each column with str's own padding
where every cell is ASCII and measures the other cells once: the same text as padding
every cell by its display width, on awkward columns (wide characters, no data, a name
wider than its heading, all ASCII, numbers and text mixed), each value shown as
``display`` shows it (percentages, points, hours, yes/no, no data)."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from rules.report import Report, render
from tests.test_report_lowyield_exact import _render_reference


def test_padding_equals_every_cell_measured() -> None:
    rows: list[dict[str, Any]] = [
        {"group": "S01", "name": "二级分行一", "uptime": 0.97123, "down_ms": 3_600_000,
         "devices": 12, "note": None, "ok": True, "id": "D000001", "change": -0.0123,
         "average": 12.345, "share (total)": 0.5},
        {"group": "S02-long-name", "name": "b", "uptime": None, "down_ms": None,
         "devices": 7, "note": "–", "ok": False, "id": "D2", "change": None,
         "average": Decimal("1.5"), "share (total)": None},
        {"group": "S3", "name": "ｆｕｌｌ", "uptime": 1.0, "down_ms": 0, "devices": 123456,
         "note": "x", "ok": None, "id": "D000003", "change": 0.5, "average": 7.0,
         "share (total)": 1.0},
    ]  # fmt: skip
    r = Report(
        "t", ["group", "name", "uptime", "down_ms", "devices", "note", "ok", "id", "change",
         "average", "share (total)"], rows,
        {"date": "2026-11-20", "share (total)": 0.25},
        [Report("devices", ["id", "name"], [{"id": "D9", "name": "网点"}], {"key": "d"})],
    )  # fmt: skip
    got = render(r).split("\n\n")[0]
    assert got == _render_reference(r).split("\n\n")[0]
    assert render(r).split("\n\n")[1] == _render_reference(r.sections[0])
