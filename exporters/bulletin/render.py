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
import re
import zipfile
from collections.abc import Callable
from decimal import Decimal
from typing import Any

import xlsxwriter

from .model import Bulletin, Cell, Kind, Table

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
                "rows": [{c.key: _plain(v) for c, v in zip(t.columns, r, strict=True)} for r in t.rows],
                "below_target": [sorted(f) for f in t.flagged],
            }
            for t in b.tables
        },
    }  # fmt: skip
    return (json.dumps(doc, ensure_ascii=False, indent=1) + "\n").encode()


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


# ------------------------------------------------------------------------------ XLSX

_NUM_FORMAT = {
    Kind.INT: "#,##0",
    Kind.RATIO: "0.00%",
    Kind.CHANGE: "+0.00%;-0.00%;0.00%",
    Kind.HOURS: "0.00",
    Kind.NUMBER: "0.00",
    Kind.MONEY: "#,##0.00",
    Kind.TEXT: "@",
}
_BAD_SHEET = re.compile(r"[\[\]:*?/\\]")


def _width(text: str) -> int:
    return sum(2 if ord(ch) > 0x2E80 else 1 for ch in text)


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


def to_xlsx(b: Bulletin, summary_label: str, period_label: str) -> bytes:
    buf = io.BytesIO()
    wb = xlsxwriter.Workbook(buf, {"in_memory": True, "strings_to_numbers": False})
    font = {"font_name": "Microsoft YaHei", "font_size": 10}
    title = wb.add_format({**font, "bold": True, "font_size": 13})
    header = wb.add_format(
        {**font, "bold": True, "bg_color": "#1F4E79", "font_color": "#FFFFFF",
         "text_wrap": True, "valign": "vcenter", "border": 1}
    )  # fmt: skip
    cell = {
        k: wb.add_format({**font, "num_format": f, "border": 1}) for k, f in _NUM_FORMAT.items()
    }
    red = {
        k: wb.add_format({**font, "num_format": f, "border": 1, "bg_color": "#F8CBAD",
                          "font_color": "#9C0006"})
        for k, f in _NUM_FORMAT.items()
    }  # fmt: skip

    ws = wb.add_worksheet(summary_label[:31])
    ws.write(0, 0, b.title, title)
    ws.write(1, 0, f"{period_label}: {b.period}", wb.add_format(font))
    ws.write_row(2, 0, [summary_label, ""], header)
    ws.freeze_panes(3, 0)
    for i, (_, label, value, kind) in enumerate(b.summary, 3):
        ws.write(i, 0, label, cell[Kind.TEXT])
        _write(ws, i, 1, value, cell[kind])
    for i, note in enumerate(b.footnotes, len(b.summary) + 4):
        ws.write(i, 0, note, wb.add_format(font))
    ws.set_column(0, 0, max(_width(s[1]) for s in b.summary) + 2 if b.summary else 20)
    ws.set_column(1, 1, 14)

    for name, t in zip(sheet_names(b, summary_label[:31]), b.tables, strict=True):
        ws = wb.add_worksheet(name)
        ws.write(0, 0, t.title, title)
        ws.write_row(1, 0, [c.label for c in t.columns], header)
        ws.freeze_panes(2, 0)
        ws.set_row(1, 30)
        widths = [max(_width(c.label) // 2 + 2, 8) for c in t.columns]
        for i, (row, flagged) in enumerate(zip(t.rows, t.flagged, strict=True), 2):
            for j, (c, v) in enumerate(zip(t.columns, row, strict=True)):
                _write(ws, i, j, v, (red if c.key in flagged else cell)[c.kind])
                if c.kind is Kind.TEXT and isinstance(v, str) and i < 500:
                    widths[j] = max(widths[j], min(_width(v) + 2, 40))
        for j, w in enumerate(widths):
            ws.set_column(j, j, max(w, 10 if t.columns[j].kind is not Kind.TEXT else w))
        if t.note:
            ws.write(len(t.rows) + 3, 0, t.note, wb.add_format(font))
    wb.close()
    return buf.getvalue()


def _write(ws: Any, row: int, col: int, value: Cell, fmt: Any) -> None:
    if value is None:
        ws.write_string(row, col, NO_DATA, fmt)
    elif isinstance(value, bool):
        ws.write_boolean(row, col, value, fmt)
    elif isinstance(value, (int, float)):
        ws.write_number(row, col, value, fmt)
    elif isinstance(value, Decimal):
        ws.write_number(row, col, float(value), fmt)
    else:
        ws.write_string(row, col, value, fmt)


# ------------------------------------------------------------------------------ HTML

_CSS = """
body{font-family:"PingFang SC","Hiragino Sans GB","Microsoft YaHei","Noto Sans CJK SC",
"Source Han Sans SC","WenQuanYi Micro Hei",system-ui,sans-serif;margin:24px;color:#222;
background:#fff}
h1{font-size:22px;margin:0 0 4px}h2{font-size:17px;margin:28px 0 8px;color:#1F4E79}
.meta{color:#666;font-size:13px}
table{border-collapse:collapse;font-size:13px;margin:4px 0}
th,td{border:1px solid #c8d0d8;padding:3px 8px}
th{background:#1F4E79;color:#fff;font-weight:600;position:sticky;top:0}
td.n{text-align:right;font-variant-numeric:tabular-nums}
td.bad{background:#F8CBAD;color:#9C0006;font-weight:600}
tr:nth-child(even) td:not(.bad){background:#f4f7fa}
.summary td:first-child{font-weight:600}
.note{color:#9C0006;font-size:12px}.empty{color:#888}
svg text{font-size:12px;font-family:inherit}
"""

#: Rows beyond this many are left out of the HTML page (the other formats hold them all).
HTML_MAX_ROWS = 2000


def _chart(t: Table) -> str:
    """A horizontal bar chart of ``t.chart`` by ``t.chart_label``, as inline SVG."""
    if t.chart is None or t.chart_label is None or not t.rows:
        return ""
    idx = {c.key: i for i, c in enumerate(t.columns)}
    kind = t.columns[idx[t.chart]].kind
    points = [
        (str(r[idx[t.chart_label]]), float(v), t.chart in f)
        for r, f in zip(t.rows, t.flagged, strict=True)
        if isinstance(v := r[idx[t.chart]], (int, float, Decimal))
    ][:40]
    if not points:
        return ""
    values = [v for _, v, _ in points]
    # Bars start at zero, so their lengths compare honestly.
    lo = 0.0
    hi = max([*values, t.target or 0.0, 1.0 if kind is Kind.RATIO else 0.0]) or 1.0
    label_w, bar_w, row_h = 150, 520, 22
    height = row_h * len(points) + 10
    scale: Callable[[float], float] = lambda v: (v - lo) / (hi - lo) * bar_w  # noqa: E731
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{label_w + bar_w + 90}" '
        f'height="{height}" role="img" aria-label="{html.escape(t.title)}">'
    ]
    for i, (name, v, bad) in enumerate(points):
        y = 5 + i * row_h
        w = max(scale(v), 1.0)
        color = "#C0504D" if bad else "#4F81BD"
        parts.append(
            f'<text x="{label_w - 6}" y="{y + 15}" text-anchor="end">{html.escape(name[:18])}</text>'
            f'<rect x="{label_w}" y="{y + 3}" width="{w:.1f}" height="{row_h - 6}" fill="{color}"/>'
            f'<text x="{label_w + w + 4:.1f}" y="{y + 15}">{html.escape(display(v, kind))}</text>'
        )
    if t.target is not None and lo <= t.target <= hi:
        x = label_w + scale(t.target)
        parts.append(
            f'<line x1="{x:.1f}" y1="0" x2="{x:.1f}" y2="{height}" stroke="#9C0006" '
            'stroke-dasharray="4 3"/>'
        )
    parts.append("</svg>")
    return "".join(parts)


def _table_html(t: Table, nothing: str) -> str:
    out = [f'<section id="{t.key}"><h2>{html.escape(t.title)}</h2>', _chart(t)]
    if not t.rows:
        out.append(f'<p class="empty">{html.escape(nothing)}</p></section>')
        return "".join(out)
    out.append("<table><thead><tr>")
    out.extend(f"<th>{html.escape(c.label)}</th>" for c in t.columns)
    out.append("</tr></thead><tbody>")
    numeric = [c.kind is not Kind.TEXT for c in t.columns]
    for row, flagged in zip(t.rows[:HTML_MAX_ROWS], t.flagged, strict=False):
        out.append("<tr>")
        for c, v, num in zip(t.columns, row, numeric, strict=True):
            cls = " ".join(x for x in ("n" if num else "", "bad" if c.key in flagged else "") if x)
            attr = f' class="{cls}"' if cls else ""
            out.append(f"<td{attr}>{html.escape(display(v, c.kind))}</td>")
        out.append("</tr>")
    out.append("</tbody></table>")
    if len(t.rows) > HTML_MAX_ROWS:
        out.append(f'<p class="note">… {len(t.rows) - HTML_MAX_ROWS:,} +</p>')
    if t.note:
        out.append(f'<p class="note">{html.escape(t.note)}</p>')
    out.append("</section>")
    return "".join(out)


def to_html(b: Bulletin, labels: dict[str, str]) -> bytes:
    """``labels``: ``summary``, ``period``, ``generated``, ``nothing`` in the bulletin's
    language."""
    lang = "zh-CN" if b.lang == "zh-CN" else "en"
    out = [
        f'<!DOCTYPE html><html lang="{lang}"><head><meta charset="utf-8">',
        f"<title>{html.escape(b.title)} {b.period}</title><style>{_CSS}</style></head><body>",
        f"<h1>{html.escape(b.title)}</h1>",
        f'<p class="meta">{html.escape(labels["period"])}: {b.period} · '
        f"{html.escape(labels['generated'])}: {html.escape(b.generated)}</p>",
        f'<section id="summary"><h2>{html.escape(labels["summary"])}</h2>'
        '<table class="summary"><tbody>',
    ]
    for _, label, value, kind in b.summary:
        out.append(
            f'<tr><td>{html.escape(label)}</td><td class="n">{html.escape(display(value, kind))}</td></tr>'
        )
    out.append("</tbody></table></section>")
    out.extend(_table_html(t, labels["nothing"]) for t in b.tables)
    if b.footnotes:
        out.append('<section id="footnotes"><ol class="footnotes">')
        out.extend(f"<li>{html.escape(f)}</li>" for f in b.footnotes)
        out.append("</ol></section>")
    out.append("</body></html>\n")
    return "".join(out).encode()
