"""One renderer per format: each takes a :class:`Bulletin` and returns the file's bytes.

- XLSX (xlsxwriter): a summary sheet, then a sheet per table; frozen header rows,
  below-target cells filled red, numbers kept as numbers with a display format.
- CSV: a zip holding one UTF-8 (with BOM, so Excel shows Chinese) CSV per table, plus
  ``summary.csv``. A zip rather than a folder: one file is replaced atomically.
- HTML: one self-contained page, inline CSS and inline SVG bar charts, no script; Chinese
  fonts by font-family fallback.
- JSON: stable keys; ratios as 0..1 numbers, money as decimal strings.
"""

from __future__ import annotations

import csv
import html
import io
import json
import math
import re
import uuid
import zipfile
from datetime import datetime
from decimal import Decimal
from typing import Any

import xlsxwriter
from xlsxwriter.utility import xl_col_to_name, xl_rowcol_to_cell_fast
from xlsxwriter.worksheet import CellNumberTuple, CellStringTuple, Worksheet

from .model import Bulletin, Cell, Column, Kind, Table

FORMATS = ("xlsx", "csv", "html", "json")
EXTENSIONS = {"xlsx": "xlsx", "csv": "csv.zip", "html": "html", "json": "json"}


#: How a cell without data reads in every table (HTML, XLSX, CSV); JSON has null.
NO_DATA = "–"


def display(value: Cell, kind: Kind) -> str:
    """A cell as a person reads it (HTML)."""
    if value is None:
        return NO_DATA
    if kind is Kind.RATIO and isinstance(value, (int, float)):
        return f"{value * 100:.2f}%"
    if kind is Kind.CHANGE and isinstance(value, (int, float)):
        return f"{value * 100:+.2f}"
    if kind in (Kind.HOURS, Kind.NUMBER) and isinstance(value, (int, float)):
        return f"{value:,.2f}"
    if kind is Kind.MONEY and isinstance(value, (int, float, Decimal)):
        return f"{value:,.2f}"
    if kind is Kind.INT and isinstance(value, int):
        return f"{value:,}"
    return str(value)


def _plain(value: Cell) -> Any:
    return str(value) if isinstance(value, Decimal) else value


# ------------------------------------------------------------------------------ JSON


def to_json(b: Bulletin) -> bytes:
    """The bulletin as one JSON document, indented, each table row on one line (the rows
    are encoded by the json module's C encoder, which an indented dump does not use: at
    100,000 devices the indented rows took seconds and made the file four times larger)."""
    token = f"\u0000rows-{uuid.uuid4().hex}-"
    rows: list[str] = []

    def later(encoded: list[str]) -> str:
        rows.append("[\n    " + ",\n    ".join(encoded) + "\n   ]" if encoded else "[]")
        return f"{token}{len(rows) - 1}"

    # A row as a dict of its cells straight from the columns' keys, a Decimal (money)
    # as its text (what _plain makes of it) by the encoder's own fallback, in C.
    dumps = json.JSONEncoder(ensure_ascii=False, default=_decimal_text).encode
    doc = {
        "kind": b.kind,
        "lang": b.lang,
        "title": b.title,
        "first": b.first.isoformat(),
        "last": b.last.isoformat(),
        "generated": b.generated,
        "summary": {k: {"label": label, "value": _plain(v)} for k, label, v, _ in b.summary},
        "footnotes": b.footnotes,
        "tables": {
            t.key: {
                "title": t.title,
                "columns": [{"key": c.key, "label": c.label, "kind": c.kind.value} for c in t.columns],
                "rows": later(_json_rows(t, dumps)),
                "below_target": later(_json_flags(t, dumps)),
            }
            for t in b.tables
        },
    }  # fmt: skip
    text = json.dumps(doc, ensure_ascii=False, indent=1)
    quoted = json.dumps(token, ensure_ascii=False)[:-1]  # the token as the dump wrote it
    parts = text.split(quoted)
    out = [parts[0]]
    for part in parts[1:]:
        index, _, rest = part.partition('"')
        out.append(rows[int(index)])
        out.append(rest)
    return ("".join(out) + "\n").encode()


def _decimal_text(value: object) -> str:
    if isinstance(value, Decimal):
        return str(value)
    raise TypeError(f"Object of type {type(value).__name__} is not JSON serializable")


def _json_flags(t: Table, dumps: Any) -> list[str]:
    """Each row's flagged columns encoded (sorted), each set encoded once: a long table's
    rows share a few."""
    done: dict[frozenset[str], str] = {}
    out = []
    for f in t.flagged:
        text = done.get(f)
        if text is None:
            text = done[f] = dumps(sorted(f))
        out.append(text)
    return out


def _json_rows(t: Table, dumps: Any) -> list[str]:
    """Each row of ``t`` encoded, keyed by its columns."""
    keys = [c.key for c in t.columns]
    return [dumps(dict(zip(keys, r, strict=True))) for r in t.rows]


# ------------------------------------------------------------------------------- CSV


def _csv(header: list[str], rows: list[list[Any]]) -> bytes:
    out = io.StringIO()
    w = csv.writer(out, lineterminator="\r\n")
    w.writerow(header)
    w.writerows([NO_DATA if v is None else v for v in r] for r in rows)
    return ("\ufeff" + out.getvalue()).encode()


def to_csv_zip(b: Bulletin) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        rows = [[k, label, _plain(v)] for k, label, v, _ in b.summary]
        z.writestr("summary.csv", _csv(["key", "label", "value"], rows))
        for i, t in enumerate(b.tables, 1):
            body = _csv([c.label for c in t.columns], [[_plain(v) for v in r] for r in t.rows])
            z.writestr(f"{i:02d}_{t.key}.csv", body)
        if b.footnotes:
            z.writestr("footnotes.csv", _csv(["footnote"], [[f] for f in b.footnotes]))
    return buf.getvalue()


# ------------------------------------------------------------------ shared layout rules

#: Labels a renderer adds around the cells (legends, axis notes), English when the caller
#: gives none (:class:`~exporters.bulletin.messages.Messages` has them in both languages).
DEFAULT_LABELS: dict[str, str] = {
    "summary": "Fleet summary",
    "period": "Period",
    "generated": "Generated",
    "nothing": "none",
    "r.no_data": "– no data",
    "r.below": "below target",
    "r.meets": "meets target",
    "r.target": "target",
    "r.axis_from": "axis starts at {v}",
    "r.short": "{v} pp short",
    "r.over": "{v} pp over",
    "r.details": "Details",
    "r.group": "rows: {n} · below target: {k}",
    "r.page": "Page &P of &N",
}

_UNIT = re.compile(r"^(.+?)\s*([(（][^()（）]+[)）])$")


def split_label(label: str) -> tuple[str, str]:
    """``"停机时长(小时)"`` -> ``("停机时长", "(小时)")``: a header shows its unit on a line of
    its own, so a column is as wide as its name, never broken inside a word."""
    m = _UNIT.match(label)
    return (m[1], m[2]) if m else (label, "")


def local_time(text: str) -> str:
    """``2026-12-01T19:37:05+08:00`` -> ``2026-12-01 19:37`` (the bulletin's local time as the
    reader writes it); anything else unchanged."""
    try:
        return datetime.fromisoformat(text).strftime("%Y-%m-%d %H:%M")
    except ValueError:
        return text


def _number(value: Cell) -> float | None:
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, (int, float, Decimal)):
        return float(value)
    return None


_STEPS = [m * 10.0**e for e in range(-4, 7) for m in (1, 2, 2.5, 5)]


def axis(values: list[float], kind: Kind) -> tuple[float, float, float]:
    """``(lo, hi, step)`` of a bar chart's value axis.

    Amounts (counts, money) start at zero, and so do ratios and scores that are far apart.
    Ratios and scores close together (spread over less than half the largest) start at a
    round floor a little below the smallest, so a one-point difference is a visible
    length; the chart prints that floor. An axis of ratios near 100 % ends at 100 %."""
    lo_v, hi_v = min(values), max(values)
    if kind is Kind.RATIO and 0.9 <= hi_v <= 1.0:
        hi_v = 1.0
    clustered = kind in (Kind.RATIO, Kind.NUMBER) and lo_v > 0 and hi_v - lo_v < 0.5 * hi_v
    floor = lo_v - (hi_v - lo_v) * 0.25 if clustered else min(lo_v, 0.0)
    step = next((s for s in _STEPS if (hi_v - floor) / s <= 6), _STEPS[-1])
    lo = max(0.0, math.floor(floor / step) * step) if clustered else min(lo_v, 0.0)
    hi = math.ceil(hi_v / step - 1e-9) * step
    if hi <= lo:
        hi = lo + step
    return round(lo, 10), round(hi, 10), step


def subbranch_names(b: Bulletin) -> dict[str, str]:
    """Sub-branch id -> name, from any table that lists both."""
    names: dict[str, str] = {}
    for t in b.tables:
        keys = [c.key for c in t.columns]
        if "subbranch" in keys and "subbranch_name" in keys:
            for code, name in zip(t.column("subbranch"), t.column("subbranch_name"), strict=True):
                if isinstance(code, str) and isinstance(name, str):
                    names[code] = name
    return names


#: A table longer than this with a sub-branch column is shown per sub-branch (HTML).
GROUP_ROWS = 40


def groups(t: Table) -> list[tuple[str, list[int]]] | None:
    """``[(sub-branch, row indexes)]`` in first-seen order, when ``t`` is long and has a
    sub-branch column with more than one value; else ``None``."""
    keys = [c.key for c in t.columns]
    if len(t.rows) <= GROUP_ROWS or "subbranch" not in keys:
        return None
    i = keys.index("subbranch")
    found: dict[str, list[int]] = {}
    for n, row in enumerate(t.rows):
        found.setdefault(str(row[i]) if row[i] is not None else "–", []).append(n)
    return list(found.items()) if len(found) > 1 else None


def _is_bad(t: Table, row: int, key: str, value: Cell) -> bool:
    """Highlighted: flagged below target and a value to show (no data is never red)."""
    return value is not None and key in t.flagged[row]


# ------------------------------------------------------------------------------ XLSX

_NUM_FORMAT = {
    Kind.INT: "#,##0",
    Kind.RATIO: "0.00%",
    Kind.CHANGE: "+0.00;-0.00;0.00",  # percentage points: the cell holds the change × 100
    Kind.HOURS: "0.00",
    Kind.NUMBER: "0.00",
    Kind.MONEY: "#,##0.00",
    Kind.TEXT: "@",
}
_BAD_SHEET = re.compile(r"[\[\]:*?/\\]")


def _width(text: str) -> int:
    return sum(2 if ord(ch) > 0x2E80 else 1 for ch in text)


class _Sheet(Worksheet):  # type: ignore[misc]
    """xlsxwriter's worksheet with a shorter inner loop for the tables' rows (a bulletin
    of 100,000 devices writes about 700,000 cells): :meth:`put_row` stores a row's
    numbers and strings as ``write_number``/``write_string`` would, and a formatted
    number is written to the XML in one step, the same bytes as the library's own
    ``_write_cell`` writes; everything else goes through the library."""

    def put_row(
        self, row: int, cells: list[tuple[int, Any, Any, bool]], whole: bool = False
    ) -> None:
        """``cells``: (column, value, format, is a number) in column order; a number is
        finite, a string short (else: the public calls). ``whole``: the row's every cell
        (none is written after): in constant-memory mode it goes to the sheet's file at
        once, as the library writes it (:meth:`_row_now`)."""
        if (
            not cells
            or self._check_dimensions(row, cells[0][0])
            or self._check_dimensions(row, cells[-1][0])
        ):
            for col, v, fmt, is_number in cells:
                (self.write_number if is_number else self.write_string)(row, col, v, fmt)
            return
        if self.constant_memory and row > self.previous_row:
            self._write_single_row(row)
            if whole and self._row_now(row, cells):
                return
        table = self.table[row]
        limit = self.xls_strmax // 2
        shared = None if self.constant_memory else self.str_table
        for col, v, fmt, is_number in cells:
            if is_number:
                table[col] = CellNumberTuple(v, fmt)
            elif len(v) > limit:
                self.write_string(row, col, v, fmt)
            else:
                index = v if shared is None else shared._get_shared_string_index(v)
                table[col] = CellStringTuple(index, fmt)

    _written: dict[tuple[str, int], str] | None = None
    _row_rest: str | None = None
    _letters: list[str] | None = None
    _inline: dict[int, tuple[str, str] | None] | None = None

    def _row_now(self, row: int, cells: list[tuple[int, Any, Any, bool]]) -> bool:
        """Write the row (the previous one written already) straight to the sheet's file:
        the bytes :meth:`_write_single_row` writes for it, without storing its cells
        first. False (nothing written) when the row has settings or the layout is not
        the one expected."""
        if row in self.row_info or row in self.comments or not self._row_tag():
            return False
        letters = self._letters
        if letters is None or len(letters) <= cells[-1][0]:
            letters = self._letters = [xl_col_to_name(c) for c in range(cells[-1][0] + 1)]
        inline = self._inline
        if inline is None:
            inline = self._inline = {}
        r = str(row + 1)
        parts = [f'<row r="{r}"{self._row_rest}']
        limit = self.xls_strmax // 2
        for col, v, fmt, is_number in cells:
            xf = fmt._get_xf_index() if fmt else 0
            if not xf:  # the library writes no style then
                return False
            if is_number:
                parts.append(f'<c r="{letters[col]}{r}" s="{xf}"><v>{v:.16G}</v></c>')
                continue
            if len(v) > limit:
                return False
            if xf not in inline:
                inline[xf] = self._inline_around(fmt)
            around = inline[xf]
            if around is not None and _plain_text(v):
                parts.append(f'<c r="{letters[col]}{r}"{around[0]}{v}{around[1]}')
                continue
            xml = self._cell_xml(row, col, CellStringTuple(v, fmt))
            if xml is None:
                return False  # (nothing written yet)
            parts.append(xml)
        parts.append("</row>")
        self.fh.write("".join(parts))
        return True

    def _inline_around(self, fmt: Any) -> tuple[str, str] | None:
        """What the library writes after a cell's reference around a plain in-line
        string of format ``fmt`` (learnt from its writing of one); None: not that layout."""
        text = self._library_text(
            lambda: super(_Sheet, self)._write_cell(0, 0, CellStringTuple("x", fmt))
        )
        head = '<c r="A1"'
        if not text.startswith(head) or text.count(">x<") != 1:
            return None
        before, after = text[len(head) :].split(">x<")
        return before + ">", "<" + after

    def _row_tag(self) -> str:
        """The rest of the library's ``<row>`` tag after its number (without row
        settings it differs only in that); "" when not of that layout."""
        if self._row_rest is None:
            tag = self._library_text(lambda: self._write_row(0, None))
            head = '<row r="1"'
            self._row_rest = tag[len(head) :] if tag.startswith(head) else ""
        return self._row_rest

    fh: Any
    previous_row: int

    def _cell_xml(self, row: int, col: int, cell: Any) -> str | None:
        """The XML the library writes for a formatted number, or (constant memory) a
        formatted in-line string; None for any other cell (the library writes it)."""
        if not cell.format:
            return None
        if cell.__class__ is CellNumberTuple:
            return (
                f'<c r="{xl_rowcol_to_cell_fast(row, col)}" '
                f's="{cell.format._get_xf_index()}"><v>{cell.number:.16G}</v></c>'
            )
        if cell.__class__ is CellStringTuple and self.constant_memory:
            # An in-line string: what the library writes for it after the cell's
            # reference, worked out once per string and format.
            if self._written is None:
                self._written = {}
            key = (cell.string, cell.format._get_xf_index())
            rest = self._written.get(key)
            if rest is None:
                text = self._library_text(lambda: super(_Sheet, self)._write_cell(0, 0, cell))
                head = '<c r="A1"'
                if not text.startswith(head):  # not the layout expected: as it is
                    return None
                rest = self._written[key] = text[len(head) :]
            return f'<c r="{xl_rowcol_to_cell_fast(row, col)}"{rest}'
        return None

    def _library_text(self, write: Any) -> str:
        """What the library's ``write()`` writes, caught instead of written."""
        fh, self.fh = self.fh, io.StringIO()
        try:
            write()
            return str(self.fh.getvalue())
        finally:
            self.fh = fh

    def _write_cell(self, row: int, col: int, cell: Any) -> None:
        text = self._cell_xml(row, col, cell)
        if text is None:
            super()._write_cell(row, col, cell)
        else:
            self.fh.write(text)

    def _write_single_row(self, current_row_num: int = 0) -> None:
        """The library's row of constant-memory mode, in one write: the same ``<row>``
        tag (worked out once: without row settings it differs only in its number) and
        cells, in column order."""
        row = self.previous_row
        cells = self.table.get(row)
        if not cells or row in self.row_info or row in self.comments:
            super()._write_single_row(current_row_num)
            return
        if not self._row_tag():  # not the layout expected: as the library does
            super()._write_single_row(current_row_num)
            return
        self.previous_row = current_row_num
        parts = [f'<row r="{row + 1}"{self._row_rest}']
        for col in sorted(cells):
            cell = cells[col]
            xml = self._cell_xml(row, col, cell)
            if xml is None:
                self.fh.write("".join(parts))
                parts.clear()
                super()._write_cell(row, col, cell)
            else:
                parts.append(xml)
        parts.append("</row>")
        self.fh.write("".join(parts))
        self.table.clear()


_PLAIN_BAD = re.compile(r"[&<>\"]|_x")


def _plain_text(text: str) -> bool:
    """A string the library writes as it is inside ``<t>``: printable, nothing to escape
    (``&<>"``, nor a ``_x`` that could read as an ``_xHHHH_`` escape), no space at
    either end (which asks for ``xml:space``)."""
    return (
        bool(text)
        and text.isprintable()
        and not text[0].isspace()
        and not text[-1].isspace()
        and _PLAIN_BAD.search(text) is None
    )


def sheet_names(b: Bulletin, summary: str) -> list[str]:
    """Unique sheet names (Excel: at most 31 characters, none of []:*?/\\)."""
    used = {summary}
    out = []
    for t in b.tables:
        base = _BAD_SHEET.sub("-", t.title)[:31]
        name, n = base, 2
        while name in used:
            suffix = f"({n})"
            name, n = base[: 31 - len(suffix)] + suffix, n + 1
        used.add(name)
        out.append(name)
    return out


def xlsx_value(value: Cell, kind: Kind) -> Cell:
    """What an XLSX cell holds: a change of ratios in percentage points (×100, as its
    header says: 百分点), everything else as it is."""
    if kind is Kind.CHANGE and (v := _number(value)) is not None:
        return v * 100
    return value


def _chart_table(b: Bulletin) -> Table | None:
    """The table drawn natively on the summary sheet: the longest one with a ratio chart
    and a target per row (the sub-branches), else the first with any chart."""
    charted = [
        t for t in b.tables
        if t.rows and {t.chart, t.chart_label} <= {c.key for c in t.columns}
    ]  # fmt: skip
    with_target = [
        t for t in charted
        if any(c.key == "target" for c in t.columns)
        and next(c for c in t.columns if c.key == t.chart).kind is Kind.RATIO
    ]  # fmt: skip
    if with_target:
        return max(with_target, key=lambda t: len(t.rows))
    return charted[0] if charted else None


def _print_setup(ws: Any, header_row: int, title: str, labels: dict[str, str]) -> None:
    """A4 landscape, one page wide (as many long as it takes), header row on every page."""
    ws.set_paper(9)  # A4
    ws.set_landscape()
    ws.fit_to_pages(1, 0)
    ws.repeat_rows(header_row)
    ws.set_margins(left=0.4, right=0.4, top=0.6, bottom=0.6)
    ws.center_horizontally()
    ws.set_header(f"&L&8{title.replace('&', '&&')}")
    ws.set_footer(f"&R&8{labels['r.page']}")


def to_xlsx(
    b: Bulletin, summary_label: str, period_label: str, labels: dict[str, str] | None = None
) -> bytes:
    """The workbook: a summary sheet (figures and a native chart), then one sheet per table
    with an autofilter, frozen and repeated header row, column widths that fit the labels,
    A4-landscape fit-to-width print setup. No data is "–", never highlighted."""
    lab = {**DEFAULT_LABELS, **(labels or {}), "summary": summary_label, "period": period_label}
    buf = io.BytesIO()
    # constant_memory: each row goes to the sheet's temporary file as it is written, so a
    # sheet of 100,000 rows is never held whole (rows are written top to bottom).
    wb = xlsxwriter.Workbook(buf, {"constant_memory": True, "strings_to_numbers": False})
    font = {"font_name": "Microsoft YaHei", "font_size": 10}
    title = wb.add_format({**font, "bold": True, "font_size": 13})
    plain = wb.add_format(font)
    header = wb.add_format(
        {**font, "bold": True, "bg_color": "#1F4E79", "font_color": "#FFFFFF",
         "text_wrap": True, "valign": "vcenter", "align": "center", "border": 1}
    )  # fmt: skip
    cell = {
        k: wb.add_format({**font, "num_format": f, "border": 1}) for k, f in _NUM_FORMAT.items()
    }
    red = {
        k: wb.add_format({**font, "num_format": f, "border": 1, "bg_color": "#F8CBAD",
                          "font_color": "#9C0006"})
        for k, f in _NUM_FORMAT.items()
    }  # fmt: skip
    none = wb.add_format({**font, "border": 1, "align": "right", "font_color": "#808080"})

    summary_name = summary_label[:31]
    ws = wb.add_worksheet(summary_name)
    ws.write(0, 0, b.title, title)
    ws.write(1, 0, f"{period_label}: {b.period}", plain)
    ws.write(2, 0, f"{lab['generated']}: {local_time(b.generated)}", plain)
    ws.write_row(3, 0, [summary_label, ""], header)
    ws.freeze_panes(4, 0)
    for i, (_, label, value, kind) in enumerate(b.summary, 4):
        ws.write(i, 0, label, cell[Kind.TEXT])
        _write(ws, i, 1, xlsx_value(value, kind), cell[kind], none)
    for i, note in enumerate(b.footnotes, len(b.summary) + 5):
        ws.write(i, 0, note, plain)
    ws.set_column(0, 0, max(_width(s[1]) for s in b.summary) + 2 if b.summary else 20)
    ws.set_column(1, 1, 14)
    _print_setup(ws, 3, b.title, lab)

    names = sheet_names(b, summary_name)
    for name, t in zip(names, b.tables, strict=True):
        ws = wb.add_worksheet(name, worksheet_class=_Sheet)
        ws.write(0, 0, t.title, title)
        # Each column as wide as its label: a header never wraps inside a word.
        ws.write_row(1, 0, [c.label for c in t.columns], header)
        ws.freeze_panes(2, 0)
        ws.set_row(1, 20)
        widths = [max(_width(c.label) + 3, 8) for c in t.columns]
        columns = [(j, c.key, c.kind, cell[c.kind], red[c.kind]) for j, c in enumerate(t.columns)]
        for i, (row, flagged) in enumerate(zip(t.rows, t.flagged, strict=True), 2):
            cells: list[tuple[int, Any, Any, bool]] = []
            odd: list[tuple[int, Cell, Any]] = []  # written as _write does, after the row
            for (j, key, kind, fmt, bad), v in zip(columns, row, strict=True):
                if v is None:
                    cells.append((j, NO_DATA, none, False))
                elif type(v) is str:
                    cells.append((j, v, bad if key in flagged else fmt, False))
                    if kind is Kind.TEXT and i < 500:
                        widths[j] = max(widths[j], min(_width(v) + 2, 48))
                elif (
                    (type(v) is int or type(v) is float)
                    and kind is not Kind.CHANGE
                    and (math.isfinite(v))
                ):
                    cells.append((j, v, bad if key in flagged else fmt, True))
                else:
                    odd.append((j, xlsx_value(v, kind), bad if key in flagged else fmt))
            ws.put_row(i, cells, whole=not odd)
            for j, v, fmt in odd:
                _write(ws, i, j, v, fmt, none)
        for j, w in enumerate(widths):
            ws.set_column(j, j, max(w, 10 if t.columns[j].kind is not Kind.TEXT else w))
        if t.columns:
            ws.autofilter(1, 0, 1 + len(t.rows), len(t.columns) - 1)
        if t.note:
            ws.write(len(t.rows) + 3, 0, t.note, plain)
        _print_setup(ws, 1, f"{b.title} {b.period} · {t.title}", lab)

    drawn = _chart_table(b)
    if drawn is not None:
        _native_chart(wb, names[b.tables.index(drawn)], drawn, lab, summary_name)
    wb.close()
    return buf.getvalue()


def _native_chart(wb: Any, sheet: str, t: Table, lab: dict[str, str], summary_sheet: str) -> None:
    """A native Excel chart of ``t``'s chart column on the summary sheet, reading the
    table's own sheet: columns per row, the target per row as a line, the value axis from
    the same floor as the HTML chart."""
    keys = [c.key for c in t.columns]
    col, by = keys.index(t.chart or ""), keys.index(t.chart_label or "")
    kind = t.columns[col].kind
    last = 2 + len(t.rows)  # the last data row, as Excel numbers rows (from 1)
    quoted = "'" + sheet.replace("'", "''") + "'"
    values = [v for r in t.rows if (v := _number(r[col])) is not None]
    target_col = keys.index("target") if "target" in keys else None
    targets = [
        v for r in t.rows if target_col is not None and (v := _number(r[target_col])) is not None
    ]
    if t.target is not None:
        targets.append(t.target)
    lo, hi, step = axis(values + targets or [0.0], kind)
    chart = wb.add_chart({"type": "column"})
    chart.add_series({
        "name": t.columns[col].label,
        "categories": f"={quoted}!${_col(by)}$3:${_col(by)}${last}",
        "values": f"={quoted}!${_col(col)}$3:${_col(col)}${last}",
        "fill": {"color": "#4F81BD"}, "gap": 60,
        "points": [
            {"fill": {"color": "#C0504D"}} if t.chart in f else None for f in t.flagged
        ],
    })  # fmt: skip
    if target_col is not None:
        line = wb.add_chart({"type": "line"})
        line.add_series({
            "name": t.columns[target_col].label,
            "categories": f"={quoted}!${_col(by)}$3:${_col(by)}${last}",
            "values": f"={quoted}!${_col(target_col)}$3:${_col(target_col)}${last}",
            "line": {"color": "#9C0006", "width": 1.5, "dash_type": "dash"},
            "marker": {"type": "none"},
        })  # fmt: skip
        chart.combine(line)
    number_format = _NUM_FORMAT[kind] if kind is not Kind.TEXT else "General"
    chart.set_y_axis({
        "min": lo, "max": hi, "major_unit": step, "num_format": number_format,
        "major_gridlines": {"visible": True, "line": {"color": "#D9D9D9"}},
        "name": lab["r.axis_from"].format(v=display(lo, kind)) if lo > 0 else None,
    })  # fmt: skip
    chart.set_x_axis({"num_font": {"rotation": -45} if len(t.rows) > 8 else {}})
    chart.set_title({"name": t.title, "name_font": {"size": 11}})
    chart.set_legend({"position": "bottom"})
    chart.set_size({"width": 760, "height": 360})
    wb.get_worksheet_by_name(summary_sheet).insert_chart("D4", chart)


def _col(n: int) -> str:
    out = ""
    n += 1
    while n:
        n, r = divmod(n - 1, 26)
        out = chr(65 + r) + out
    return out


def _write(ws: Any, row: int, col: int, value: Cell, fmt: Any, none: Any) -> None:
    if value is None:
        ws.write_string(row, col, NO_DATA, none)
    elif isinstance(value, bool):
        ws.write_boolean(row, col, value, fmt)
    elif isinstance(value, (int, float)):
        if math.isfinite(value):
            ws.write_number(row, col, value, fmt)
        else:
            ws.write_string(row, col, "–", none)
    elif isinstance(value, Decimal):
        ws.write_number(row, col, float(value), fmt)
    else:
        ws.write_string(row, col, value, fmt)


# ------------------------------------------------------------------------------ HTML

#: The page width the layout is made for (a 1400 px screen, less the margins), and the
#: A4-landscape print: 277 mm between 10 mm margins.
PAGE_PX = 1400
PRINT_CSS = """
@page{size:A4 landscape;margin:10mm}
body{margin:0;font-size:10pt}
nav,.legend-screen{display:none}
h1{font-size:15pt}h2{font-size:12pt;margin:14px 0 6px;break-after:avoid}
.cards{grid-template-columns:repeat(6,1fr)}
table{font-size:9pt}table.wide{font-size:7.5pt}table.wider{font-size:7pt}
table.wider th,table.wider td{padding:1px 3px}
th{position:static}thead{display:table-header-group}tr{break-inside:avoid}
th,td{padding:1px 4px}
details::details-content{content-visibility:visible;display:block}
details>summary{list-style:none}details>summary::-webkit-details-marker{display:none}
.pair{gap:12px}svg.chart{width:62%;height:auto}
tr:nth-child(even) td:not(.bad){background:#fff}
*{-webkit-print-color-adjust:exact;print-color-adjust:exact}
"""
_CSS = (
    """
body{font-family:"PingFang SC","Hiragino Sans GB","Microsoft YaHei","Noto Sans CJK SC",
"Source Han Sans SC","WenQuanYi Micro Hei","WenQuanYi Zen Hei",system-ui,sans-serif;
margin:20px 24px;color:#222;background:#fff;font-size:14px}
h1{font-size:22px;margin:0 0 4px}
h2{font-size:17px;margin:26px 0 8px;color:#1F4E79}
h2.part{font-size:19px;border-top:2px solid #1F4E79;padding-top:14px;margin-top:34px}
.meta{color:#555;font-size:13px;margin:0 0 6px}
nav{font-size:13px;color:#555;margin:0 0 8px}nav a{color:#1F4E79;margin-right:12px;
text-decoration:none;white-space:nowrap}
.cards{display:grid;grid-template-columns:repeat(auto-fill,minmax(190px,1fr));gap:8px;
max-width:1352px}
.card{border:1px solid #c8d0d8;border-radius:4px;padding:6px 10px;background:#f7f9fb}
.card .v{font-size:20px;font-weight:600;font-variant-numeric:tabular-nums}
.card .k{font-size:12px;color:#555}
.pair{display:flex;flex-wrap:wrap;gap:24px;align-items:flex-start}
table{border-collapse:collapse;font-size:13px;margin:4px 0}
table.wide{font-size:12px}
table.wider{font-size:11px}table.wider th,table.wider td{padding:3px 5px}
th,td{border:1px solid #c8d0d8;padding:3px 7px;white-space:nowrap}
th{background:#1F4E79;color:#fff;font-weight:600;position:sticky;top:0;
vertical-align:bottom;line-height:1.25}
th small{font-weight:400;font-size:11px;opacity:.9}
td.n{text-align:right;font-variant-numeric:tabular-nums}
td.na{color:#999}td.z{color:#b0b0b0}
td.bad{background:#F8CBAD;color:#9C0006;font-weight:600}
td.wrap{white-space:normal;max-width:26em}td.wrap span{white-space:nowrap}
tr:nth-child(even) td:not(.bad){background:#f4f7fa}
.note{color:#9C0006;font-size:12px;margin:4px 0}
.legend{color:#555;font-size:12px;margin:4px 0}
.legend i{display:inline-block;width:10px;height:10px;margin:0 4px 0 10px;
vertical-align:-1px}
.empty{color:#888}
.grid{display:flex;flex-wrap:wrap;gap:10px 22px;align-items:flex-start}
.grid table{font-size:12px}
.grid h3,details summary{font-size:14px;margin:6px 0 2px;color:#1F4E79;font-weight:600}
details{margin:2px 0}details summary{cursor:pointer;padding:3px 0}
details summary .c{color:#555;font-weight:400;font-size:12px;margin-left:8px}
details summary .c b{color:#9C0006}
svg.chart text{font-size:12px;font-family:inherit;fill:#222}
svg.chart .tick{fill:#666;font-size:11px}
svg.chart .na{fill:#999}
svg.chart .gap{fill:#9C0006;font-size:11px}
"""
    + "@media print{"
    + PRINT_CSS.replace("@page{size:A4 landscape;margin:10mm}", "")
    + "}@page{size:A4 landscape;margin:10mm}"
)

#: Rows beyond this many are left out of the HTML page (the other formats hold them all).
HTML_MAX_ROWS = 2000
#: A table with more rows than this gets no chart (the table reads better).
CHART_MAX_BARS = 60
_OK, _BAD, _TARGET = "#4F81BD", "#C0504D", "#1a1a1a"


def _chart(t: Table, lab: dict[str, str], names: dict[str, str] | None = None) -> str:
    """A horizontal bar chart of ``t.chart`` by ``t.chart_label``, as inline SVG.

    The value axis comes from :func:`axis` (ratios and scores from a round floor, printed
    under the chart); each bar carries its own target mark when the table has a target
    column, else one dashed line at ``t.target``. Below-target bars are red and say by how
    much; a row without data has no bar and reads "–"."""
    if t.chart is None or t.chart_label is None or not t.rows:
        return ""
    idx = {c.key: i for i, c in enumerate(t.columns)}
    if t.chart not in idx or t.chart_label not in idx:
        return ""
    kind = t.columns[idx[t.chart]].kind
    per_row = "target" in idx and t.columns[idx["target"]].kind is kind
    points = []
    if len(t.rows) > CHART_MAX_BARS:
        return ""  # a chart that long reads worse than its table
    for n, row in enumerate(t.rows):
        value = _number(row[idx[t.chart]])
        target = _number(row[idx["target"]]) if per_row else t.target
        name = row[idx[t.chart_label]]
        if t.chart_label == "subbranch" and names and isinstance(name, str):
            name = names.get(name, name)  # a sub-branch by its name, as in the other charts
        points.append(
            (str(name) if name is not None else "–", value, _is_bad(t, n, t.chart, value), target)
        )
    values = [v for _, v, _, _ in points if v is not None]
    if not values:
        return ""
    targets = [g for *_, g in points if g is not None]
    lo, hi, step = axis(values + targets, kind)
    longest = max(_width(name) for name, *_ in points)
    label_w = min(max(60, longest * 7 + 14), 230)
    bar_w, value_w, row_h, top = 600, 170, 22, 6
    height = top + row_h * len(points) + 34
    width = label_w + bar_w + value_w

    def x(v: float) -> float:
        return label_w + (min(max(v, lo), hi) - lo) / (hi - lo) * bar_w

    parts = [
        f'<svg class="chart" xmlns="http://www.w3.org/2000/svg" width="{width}" '
        f'height="{height}" viewBox="0 0 {width} {height}" role="img" '
        f'aria-label="{html.escape(t.title)}">'
    ]
    bottom = top + row_h * len(points)
    ticks = round((hi - lo) / step)
    for k in range(ticks + 1):
        at = lo + k * step
        parts.append(
            f'<line x1="{x(at):.1f}" y1="{top}" x2="{x(at):.1f}" y2="{bottom}" stroke="#e3e7eb"/>'
            f'<text class="tick" x="{x(at):.1f}" y="{bottom + 14}" text-anchor="middle">'
            f"{html.escape(_tick(at, kind, step))}</text>"
        )
    for i, (name, v, bad, target) in enumerate(points):
        y = top + i * row_h
        parts.append(
            f'<text x="{label_w - 6}" y="{y + 15}" text-anchor="end">{html.escape(_clip(name, 32))}</text>'
        )
        if v is None:
            parts.append(f'<text class="na" x="{label_w + 4}" y="{y + 15}">–</text>')
            continue
        w = max(x(v) - label_w, 1.0)
        parts.append(
            f'<rect x="{label_w}" y="{y + 3}" width="{w:.1f}" height="{row_h - 6}" '
            f'fill="{_BAD if bad else _OK}"/>'
        )
        shown = display(v, kind)
        text = html.escape(shown)
        if bad and target is not None and kind is Kind.RATIO:
            word = lab["r.short"] if v < target else lab["r.over"]
            gap = word.format(v=f"{abs(v - target) * 100:.2f}")
            shown += " " + gap
            text += f' <tspan class="gap">{html.escape(gap)}</tspan>'
        end = label_w + w + 4
        if target is not None and lo <= target <= hi:
            tx = x(target)
            if per_row:
                parts.append(
                    f'<line x1="{tx:.1f}" y1="{y}" x2="{tx:.1f}" y2="{y + row_h}" '
                    f'stroke="{_TARGET}" stroke-width="2"/>'
                )
            if end - 2 <= tx <= end + _width(shown) * 7:  # the words would cross the mark
                end = tx + 4
        parts.append(f'<text x="{end:.1f}" y="{y + 15}">{text}</text>')
    if not per_row and t.target is not None and lo <= t.target <= hi:
        tx = x(t.target)
        parts.append(
            f'<line x1="{tx:.1f}" y1="{top - 4}" x2="{tx:.1f}" y2="{bottom}" stroke="{_TARGET}" '
            'stroke-width="1.5" stroke-dasharray="5 3"/>'
        )
    legend = []
    if targets or any(bad for _, _, bad, _ in points):
        legend.append(
            f'<rect x="{label_w}" y="{bottom + 22}" width="10" height="10" fill="{_OK}"/>'
            f'<text x="{label_w + 14}" y="{bottom + 31}">{html.escape(lab["r.meets"])}</text>'
            f'<rect x="{label_w + 110}" y="{bottom + 22}" width="10" height="10" fill="{_BAD}"/>'
            f'<text x="{label_w + 124}" y="{bottom + 31}">{html.escape(lab["r.below"])}</text>'
        )
    if targets:
        dash = "" if per_row else ' stroke-dasharray="5 3"'
        legend.append(
            f'<line x1="{label_w + 225}" y1="{bottom + 21}" x2="{label_w + 225}" '
            f'y2="{bottom + 33}" stroke="{_TARGET}" stroke-width="2"{dash}/>'
            f'<text x="{label_w + 232}" y="{bottom + 31}">{html.escape(lab["r.target"])}'
            + (
                f" {html.escape(display(t.target, kind))}"
                if not per_row and t.target is not None
                else ""
            )
            + "</text>"
        )
    if lo > 0:
        legend.append(
            f'<text class="tick" x="{label_w + bar_w}" y="{bottom + 31}" text-anchor="end">'
            f"{html.escape(lab['r.axis_from'].format(v=_tick(lo, kind, step)))}</text>"
        )
    parts.extend(legend)
    parts.append("</svg>")
    return "".join(parts)


def _clip(text: str, width: int) -> str:
    """``text`` cut to about ``width`` Latin characters (a CJK character counts two)."""
    if _width(text) <= width:
        return text
    out = ""
    for ch in text:
        if _width(out + ch) > width - 1:
            break
        out += ch
    return out + "…"


def _tick(v: float, kind: Kind, step: float) -> str:
    if kind is Kind.RATIO:
        digits = max(0, -math.floor(math.log10(step * 100) + 1e-9)) if step < 0.01 else 0
        return f"{v * 100:.{digits}f}%"
    digits = max(0, -math.floor(math.log10(step) + 1e-9))
    return f"{v:,.{digits}f}"


def _cell_html(t: Table, n: int, c: Column, v: Cell) -> str:
    classes = []
    if c.kind is not Kind.TEXT:
        classes.append("n")
    if v is None:
        classes.append("na")
    elif _is_bad(t, n, c.key, v):
        classes.append("bad")
    elif c.kind is Kind.HOURS and v == 0:
        classes.append("z")  # no hours: grey, so the hours there are stand out
    text = display(v, c.kind)
    body = html.escape(text)
    if c.kind is Kind.TEXT and " " in text and len(text) > 24:
        # A list (of devices): it may wrap between its items, never inside one.
        classes.append("wrap")
        body = " ".join(f"<span>{html.escape(w)}</span>" for w in text.split())
    attr = f' class="{" ".join(classes)}"' if classes else ""
    return f"<td{attr}>{body}</td>"


def _head_html(columns: list[Column]) -> str:
    cells = []
    for c in columns:
        name, unit = split_label(c.label)
        unit_html = f"<br><small>{html.escape(unit)}</small>" if unit else ""
        cells.append(f"<th>{html.escape(name)}{unit_html}</th>")
    return "<thead><tr>" + "".join(cells) + "</tr></thead>"


def _rows_html(t: Table, rows: list[int], columns: list[int]) -> str:
    # Many columns: a smaller type, so the table still fits the screen and the page.
    wide = " wide wider" if len(columns) > 15 else " wide" if len(columns) > 10 else ""
    out = [f'<table class="data{wide}">', _head_html([t.columns[j] for j in columns]), "<tbody>"]
    cols = [(j, t.columns[j]) for j in columns]
    # A text cell (or no data) reads the same wherever its value, kind and highlight are
    # the same: made once (a long table repeats its types, vendors, sub-branches).
    done: dict[tuple[type, Kind, Cell, bool], str] = {}
    for n in rows[:HTML_MAX_ROWS]:
        row = t.rows[n]
        flagged = t.flagged[n]
        cells = ["<tr>"]
        for j, c in cols:
            v = row[j]
            kind = c.kind
            if (type(v) is float or type(v) is int) and kind is not Kind.TEXT:
                # A number as _cell_html writes it: its text needs no escaping.
                if c.key in flagged:
                    cells.append(f'<td class="n bad">{display(v, kind)}</td>')
                elif kind is Kind.HOURS and v == 0:
                    cells.append(f'<td class="n z">{display(v, kind)}</td>')
                else:
                    cells.append(f'<td class="n">{display(v, kind)}</td>')
                continue
            if v is None or type(v) is str:
                key = (type(v), kind, v, v is not None and c.key in flagged)
                text = done.get(key)
                if text is None:
                    text = done[key] = _cell_html(t, n, c, v)
                cells.append(text)
                continue
            cells.append(_cell_html(t, n, c, v))
        cells.append("</tr>")
        out.append("".join(cells))
    out.append("</tbody></table>")
    if len(rows) > HTML_MAX_ROWS:
        out.append(f'<p class="note">… {len(rows) - HTML_MAX_ROWS:,} +</p>')
    return "".join(out)


def _table_html(t: Table, lab: dict[str, str], names: dict[str, str]) -> str:
    out = [f'<section id="{html.escape(t.key)}"><h2>{html.escape(t.title)}</h2>']
    if not t.rows:
        out.append(f'<p class="empty">{html.escape(lab["nothing"])}</p></section>')
        return "".join(out)
    every = list(range(len(t.columns)))
    grouped = groups(t)
    if grouped is None:
        chart = _chart(t, lab, names)
        body = _rows_html(t, list(range(len(t.rows))), every)
        out.append(f'<div class="pair">{chart}<div>{body}</div></div>' if chart else body)
    else:
        sub = next(i for i, c in enumerate(t.columns) if c.key == "subbranch")
        rest = [j for j in every if j != sub]
        narrow = len(rest) <= 6
        if narrow:
            out.append('<div class="grid">')
        for code, rows in grouped:
            name = names.get(code)
            caption = f"{name} ({code})" if name else code
            bad = sum(1 for n in rows if any(_is_bad(t, n, c.key, t.rows[n][j])
                                              for j, c in enumerate(t.columns)))  # fmt: skip
            count = html.escape(lab["r.group"]).format(
                n=len(rows), k=f"<b>{bad}</b>" if bad else "0"
            )
            if narrow:
                out.append(f"<div><h3>{html.escape(caption)}</h3>{_rows_html(t, rows, rest)}</div>")
            else:
                out.append(
                    f'<details><summary>{html.escape(caption)}<span class="c">{count}</span>'
                    f"</summary>{_rows_html(t, rows, rest)}</details>"
                )
        if narrow:
            out.append("</div>")
    if t.note:
        out.append(f'<p class="note">{html.escape(t.note)}</p>')
    out.append("</section>")
    return "".join(out)


def to_html(b: Bulletin, labels: dict[str, str]) -> bytes:
    """One self-contained page: inline CSS and SVG, no script, no external resource.

    ``labels`` (in the bulletin's language): ``summary``, ``period``, ``generated``,
    ``nothing`` and the ``r.*`` words around the charts and groups (English if absent).
    Long tables with a sub-branch column come last, under "details", one block per
    sub-branch. The layout fits a 1400 px screen and prints on A4 landscape."""
    lab = {**DEFAULT_LABELS, **labels}
    lang = "zh-CN" if b.lang == "zh-CN" else "en"
    names = subbranch_names(b)
    main = [t for t in b.tables if groups(t) is None]
    detail = [t for t in b.tables if groups(t) is not None]
    links = [("summary", lab["summary"])] + [(t.key, t.title) for t in main + detail]
    out = [
        f'<!DOCTYPE html><html lang="{lang}"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{html.escape(b.title)} {b.period}</title><style>{_CSS}</style></head><body>",
        f"<h1>{html.escape(b.title)}</h1>",
        f'<p class="meta">{html.escape(lab["period"])}: {b.period} · '
        f"{html.escape(lab['generated'])}: {html.escape(local_time(b.generated))}</p>",
        "<nav>" + " ".join(
            f'<a href="#{html.escape(k)}">{html.escape(v)}</a>' for k, v in links
        ) + "</nav>",
        f'<section id="summary"><h2>{html.escape(lab["summary"])}</h2><div class="cards">',
    ]  # fmt: skip
    for _, label, value, kind in b.summary:
        na = ' class="v na"' if value is None else ' class="v"'
        out.append(
            f'<div class="card"><div{na}>{html.escape(display(value, kind))}</div>'
            f'<div class="k">{html.escape(label)}</div></div>'
        )
    out.append("</div>")
    out.append(
        f'<p class="legend"><i style="background:#F8CBAD"></i>{html.escape(lab["r.below"])}'
        f" · {html.escape(lab['r.no_data'])}</p></section>"
    )
    out.extend(_table_html(t, lab, names) for t in main)
    if detail:
        out.append(f'<h2 class="part" id="details">{html.escape(lab["r.details"])}</h2>')
        out.extend(_table_html(t, lab, names) for t in detail)
    if b.footnotes:
        out.append('<section id="footnotes"><ol class="footnotes">')
        out.extend(f"<li>{html.escape(f)}</li>" for f in b.footnotes)
        out.append("</ol></section>")
    out.append("</body></html>\n")
    return "".join(out).encode()
