"""The low-yield command's output, made faster, is the same text as before: the device
rows (``rules.report.low_yield_devices``) are the rows made one flag at a time and sorted
on a key (status, margin, device), and the table (``rules.report.render``) is the text
of every cell shown by ``display`` and padded by its display width. Compared on tricky
rows: every status, no data in every column that may have none, equal keys (the flags'
order kept), Chinese and English names and titles, wide and ambiguous characters,
braces and percent signs in a cell (a cell is data, never a format), cells that end in
spaces; and on the exact text of a small table."""

from __future__ import annotations

import json
import unicodedata
from datetime import date
from decimal import Decimal
from enum import StrEnum
from typing import Any

from rules import report
from rules.lowyield import YieldFlag, YieldStatus
from rules.report import Report, low_yield_devices, render, to_json

ON = date(2026, 11, 20)
S = YieldStatus


def _width(text: str) -> int:
    return sum(2 if unicodedata.east_asian_width(c) in "WF" else 1 for c in text)


def _render_reference(r: Report) -> str:
    """``render`` as it was first written: each cell shown by ``display`` and padded by
    its display width, row by row."""
    lines = [r.title]
    for key, value in r.extra.items():
        if key != "key" and not isinstance(value, (dict, list)):
            lines.append(f"  {key}: {report.display(key, value)}")
    if r.rows:
        padded = []
        widths = []
        for c in r.columns:
            h = report.header(c)
            values = [row.get(c) for row in r.rows]
            numeric = all(v is None or isinstance(v, (int, float, Decimal)) for v in values)
            cells = [report.display(c, v) for v in values]
            width = max(_width(h), *(_width(v) for v in cells))
            widths.append(width)
            col = [h + " " * (width - _width(h))]
            for v in cells:
                pad = " " * (width - _width(v))
                col.append(pad + v if numeric else v + pad)
            padded.append(col)
        lines.append("  ".join(col[0] for col in padded).rstrip())
        lines.append("  ".join("-" * w for w in widths))
        lines.extend(
            "  ".join(row).rstrip() for row in zip(*(col[1:] for col in padded), strict=True)
        )
    else:
        lines.append(f"  ({r.extra.get('empty', 'nothing')})")
    for s in r.sections:
        lines.append("")
        lines.append(_render_reference(s))
    return "\n".join(lines)


def _devices_reference(flags: list[YieldFlag]) -> Report:
    """``low_yield_devices`` as it was: a row per flag by ``flag_row``, sorted (stably)
    on (status, margin or 0, device id)."""
    order = {S.LOW: 0, S.OK: 1, S.COVERAGE: 2, S.EXEMPT: 3, S.NOT_EVALUATED: 4}
    listed = sorted(
        flags,
        key=lambda f: (order[f.status], f.margin if f.margin is not None else 0.0, f.device_id),
    )
    return Report(
        "devices: every one evaluated (lowest margin first), then those not evaluated",
        ["group", "status", "average", "threshold", "margin", "days_counted", "monitored_days",
         "uptime", "low_efficiency"],
        [report.flag_row(f) for f in listed],
        {"key": "devices"},
    )  # fmt: skip


def _flag(
    device: str,
    status: YieldStatus,
    average: float | None,
    threshold: float | None,
    uptime: float | None = 0.98,
    low_eff: bool | None = False,
    counted: int = 30,
    monitored: int = 30,
) -> YieldFlag:
    return YieldFlag(device, ON, status, counted, average, threshold, uptime, low_eff, monitored)


def _tricky_flags() -> list[YieldFlag]:
    return [
        _flag("ATM-000003", S.OK, 25.0, 20.0),
        _flag("ATM-000001", S.LOW, 5.5, 20.0, 0.5, True),
        _flag("柜员机-二号", S.LOW, 5.5, 20.0, None, None),  # the same margin: by device id
        _flag("ATM-000002", S.OK, 20.0, 20.0, 1.0),  # margin 0: before OK's positive ones
        _flag("ATM-000004", S.OK, None, 20.0),  # evaluated, no average: margin none, key 0
        _flag("ATM-000005", S.OK, 30.0, None),  # no threshold: margin none
        _flag("ATM-000006", S.COVERAGE, 3.0, 20.0, 0.7, None, 2, 2),  # not evaluated: no margin
        _flag("ATM-000007", S.EXEMPT, 1.0, 20.0, 0.2, True, 5, 5),
        _flag("ATM-000008", S.NOT_EVALUATED, None, None, None, None, 0, 0),
        _flag("ATM-000008", S.NOT_EVALUATED, 12.0, None, 0.9, False, 3, 3),  # same key: order kept
        _flag("ＡＴＭ－全角", S.OK, 40.123456, 20.0, 0.123456, False),
        _flag("ATM-000009", S.LOW, -0.0, 0.0, 0.0, True, 1, 1),
        _flag("ATM-000010", S.OK, 1e9, 20.0, 0.99999, False),
        _flag("ATM-000011", S.LOW, 19.995, 20.0, 0.96, False),
    ]


def test_device_rows_as_before() -> None:
    flags = _tricky_flags()
    got = low_yield_devices(flags)
    want = _devices_reference(flags)
    assert got.rows == want.rows
    assert [type(v) for r in got.rows for v in r.values()] == [
        type(v) for r in want.rows for v in r.values()
    ]
    assert got.columns == want.columns and got.title == want.title and got.extra == want.extra
    assert to_json(got) == to_json(want)
    assert render(got) == _render_reference(want)
    # An iterable, not a list, is taken too.
    assert low_yield_devices(iter(flags)).rows == want.rows


def test_device_table_exact_text() -> None:
    flags = [
        _flag("ATM-1", S.OK, 25.0, 20.0),
        _flag("柜员机-二号", S.LOW, 5.5, 20.0, None, None),
        _flag("ATM-3", S.NOT_EVALUATED, None, None, None, None, 0, 0),
    ]
    assert render(low_yield_devices(flags)) == "\n".join(
        [
            "devices: every one evaluated (lowest margin first), then those not evaluated",
            "group        status         average  threshold  margin  days_counted"
            "  monitored_days  uptime  low_efficiency",
            "-----------  -------------  -------  ---------  ------  ------------"
            "  --------------  ------  --------------",
            "柜员机-二号  low               5.50      20.00  -14.50            30"
            "              30       –               –",
            "ATM-1        ok               25.00      20.00    5.00            30"
            "              30  98.00%              no",
            "ATM-3        not_evaluated        –          –       –             0"
            "               0       –               –",
        ]
    )


class _Kind(StrEnum):
    A = "a"
    WIDE = "宽"


def test_render_tricky_cells_as_before() -> None:
    rows: list[dict[str, Any]] = [
        {"group": "{0}", "name": "二级分行一", "share": 0.05, "change": -0.0123, "down_ms": 5_400_000,
         "n": 3, "ok": True, "none": None, "note": "100% {x}", "mixed": 1, "kind": _Kind.A,
         "dash": "–", "tail": "ends in spaces  ", "d": Decimal("1.005"), "empty": ""},
        {"group": "}{", "name": "Sub-branch One", "share": None, "change": None, "down_ms": None,
         "n": None, "ok": None, "none": None, "note": "{}", "mixed": 2.5, "kind": _Kind.WIDE,
         "dash": "é", "tail": "x", "d": None, "empty": ""},
        {"group": "%s %d", "name": "ｆｕｌｌ", "share": 1.0, "change": 0.5, "down_ms": 0,
         "n": 123456, "ok": False, "none": None, "note": None, "mixed": None, "kind": None,
         "dash": None, "tail": None, "d": Decimal("-2"), "empty": None},
    ]  # fmt: skip
    r = Report(
        "低产 low-yield on 2026-11-20 (30-day window), fleet, by subbranch",
        list(rows[0]),
        rows,
        {"date": ON, "scope": "fleet", "share (total)": 0.25, "max_share": 0.05,
         "total": {"x": 1}, "key": "ignored"},
        [Report("设备 devices", ["id", "名称"], [{"id": "D9", "名称": "网点 {0}"}], {"key": "d"}),
         Report("empty", ["id"], [], {"key": "e", "empty": "无 none"})],
    )  # fmt: skip
    assert render(r) == _render_reference(r)
    # Each column alone too: a column of one kind is made in one pass of its own.
    for c in r.columns:
        one = Report("t", [c], [{c: row[c]} for row in rows])
        assert render(one) == _render_reference(one), c
        missing = Report("t", [c], [{c: row[c]} for row in rows] + [{}])  # a row without it
        assert render(missing) == _render_reference(missing), c
    assert json.loads(to_json(r))["rows"][0]["group"] == "{0}"
