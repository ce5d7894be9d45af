"""The bulletin data model: plain tables of typed columns, already in the reader's language.

A renderer only lays this out; every figure and every label is decided here (by
:mod:`exporters.bulletin.build`), so the XLSX, CSV, HTML and JSON of one bulletin hold the
same cells.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date
from decimal import Decimal
from enum import StrEnum


class Kind(StrEnum):
    """What a column holds; decides the number format and alignment."""

    TEXT = "text"
    INT = "int"
    RATIO = "ratio"  # 0..1, shown as a percentage
    CHANGE = "change"  # a difference of ratios, shown in percentage points
    HOURS = "hours"
    NUMBER = "number"
    MONEY = "money"


Cell = str | int | float | Decimal | None


@dataclass(frozen=True, slots=True)
class Column:
    key: str  # stable, language-neutral (JSON keys, CSV file names)
    label: str  # in the bulletin's language
    kind: Kind = Kind.TEXT


@dataclass(slots=True)
class Table:
    """One table of the bulletin: a sheet in XLSX, a file in CSV, a section in HTML.

    ``flagged`` holds, per row, the keys of the cells that are below target (highlighted).
    ``chart`` names a RATIO or INT column drawn as a bar chart (HTML), labelled by
    ``chart_label``.
    """

    key: str
    title: str
    columns: list[Column]
    rows: list[list[Cell]] = field(default_factory=list)
    flagged: list[frozenset[str]] = field(default_factory=list)
    note: str = ""
    chart: str | None = None
    chart_label: str | None = None
    target: float | None = None  # drawn as a line on the chart

    def add(self, row: list[Cell], flagged: frozenset[str] = frozenset()) -> None:
        if len(row) != len(self.columns):
            raise ValueError(
                f"table {self.key}: row of {len(row)} cells for {len(self.columns)} columns"
            )
        self.rows.append(row)
        self.flagged.append(flagged)

    def column(self, key: str) -> list[Cell]:
        """The cells of one column, top to bottom."""
        i = next(i for i, c in enumerate(self.columns) if c.key == key)
        return [r[i] for r in self.rows]

    def records(self) -> list[dict[str, Cell]]:
        return [{c.key: v for c, v in zip(self.columns, r, strict=True)} for r in self.rows]


@dataclass(slots=True)
class Bulletin:
    kind: str  # daily, monthly, quarterly
    lang: str  # zh-CN or en
    title: str
    first: date
    last: date
    generated: str  # ISO time, local
    summary: list[tuple[str, str, Cell, Kind]] = field(default_factory=list)  # key, label, value
    tables: list[Table] = field(default_factory=list)
    footnotes: list[str] = field(default_factory=list)  # in the reader's language

    @property
    def period(self) -> str:
        return str(self.first) if self.first == self.last else f"{self.first} – {self.last}"

    def table(self, key: str) -> Table:
        for t in self.tables:
            if t.key == key:
                return t
        raise KeyError(key)
