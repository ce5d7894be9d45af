"""Load and save the inventory (``docs/inventory.md``): one YAML file, or a folder of CSVs.

``load_inventory(path)`` reads ``*.yaml``/``*.yml`` as one file with the keys
``subbranches``, ``branches`` and ``devices`` (and optionally ``maintainers``), and a
folder as ``subbranches.csv``, ``branches.csv`` and ``devices.csv`` (and optionally
``maintainers.csv``) (for big fleets). Every problem is reported as a
:class:`~atmfleet.errors.ConfigError` whose message names the file, the line, the field, the
bad value and what is allowed; all problems found are reported together (up to
``MAX_REPORTED``), not one per run.

The two readers only turn text into :class:`Row` records (values + line numbers);
:func:`build_inventory` (pure) validates the rows and cross-checks the references.
"""

from __future__ import annotations

import csv
import io
import os
import tempfile
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import date
from enum import Enum
from pathlib import Path
from types import UnionType
from typing import Any, TypeVar, Union, get_args, get_origin

import yaml
from pydantic import BaseModel, ValidationError

from atmfleet.errors import ConfigError
from atmfleet.inventory import (
    ANY_REGION,
    Branch,
    BranchKind,
    Device,
    Inventory,
    Maintainer,
    SubBranch,
)
from atmfleet.protocol import DEVICE_ID_PATTERN
from atmfleet.windows import ServiceWindow

#: The tables, in dependency order: (section / CSV file stem, model).
TABLES: tuple[tuple[str, type[BaseModel]], ...] = (
    ("subbranches", SubBranch),
    ("branches", Branch),
    ("devices", Device),
)
#: Tables a fleet may leave out: (section / CSV file stem, model).
OPTIONAL_TABLES: tuple[tuple[str, type[BaseModel]], ...] = (("maintainers", Maintainer),)
YAML_SUFFIXES = (".yaml", ".yml")
#: At most this many problems are listed in one error message.
MAX_REPORTED = 20

_ID_RULE = f"an id ({DEVICE_ID_PATTERN}: 1-64 letters, digits, '_', '.', '-')"
_M = TypeVar("_M", bound=BaseModel)


@dataclass(frozen=True)
class Row:
    """One record as read from a file, before validation.

    ``values`` holds strings (or ``None`` for an empty cell / YAML null, or nested lists and
    dicts from YAML); ``lines`` gives the line of each field's value, ``line`` the record's.
    """

    source: str  # the file, as shown in messages
    line: int
    values: dict[str, Any]
    lines: dict[str, int] = field(default_factory=dict)
    section: str | None = None  # the YAML section; None for CSV (the file says it)
    #: What makes the record unreadable as a whole (a CSV line of the wrong width, a field
    #: given twice); reported with the others, and the record is not validated.
    problem: str | None = None

    def where(self, field_name: str | None = None) -> str:
        line = self.lines.get(field_name, self.line) if field_name else self.line
        section = f" ({self.section})" if self.section else ""
        return f"{self.source} line {line}{section}"


class _Problems:
    """Collects messages; raises them together, in file order and then line order."""

    def __init__(self, sources: Sequence[str] = ()) -> None:
        self._sources = {source: i for i, source in enumerate(dict.fromkeys(sources))}
        self._found: list[tuple[int, int, int, int, str]] = []
        self._bad: dict[int, set[str]] = {}  # id(row) -> fields with an error

    @property
    def messages(self) -> list[str]:
        return [text for *_, text in sorted(self._found)]

    def add(self, row: Row, field_name: str | None, text: str) -> None:
        prefix = f"{row.where(field_name)}: "
        line = row.lines.get(field_name, row.line) if field_name else row.line
        rank = self._sources.setdefault(row.source, len(self._sources))
        message = prefix + (f"field {field_name!r}: {text}" if field_name else text)
        # On one line (a CSV record), the fields in the order they are written.
        fields = list(row.values)
        column = fields.index(field_name) if field_name in fields else len(fields)
        self._found.append((rank, line, column, len(self._found), message))
        self._bad.setdefault(id(row), set()).add(field_name or "")

    def bad(self, row: Row, field_name: str) -> bool:
        """Whether ``row`` has an error in ``field_name`` (or as a whole) already."""
        found = self._bad.get(id(row), set())
        return field_name in found or row.problem is not None

    def raise_if_any(self) -> None:
        if not self._found:
            return
        messages = self.messages
        shown = messages[:MAX_REPORTED]
        more = len(messages) - len(shown)
        if more:
            shown.append(f"... and {more} more problems")
        raise ConfigError("\n".join(shown))


# --------------------------------------------------------------------------- validation


def _enum_of(model: type[BaseModel], name: str) -> type[Enum] | None:
    info = model.model_fields.get(name)
    if info is None:
        return None
    annotation = info.annotation
    candidates = (
        get_args(annotation) if get_origin(annotation) in (Union, UnionType) else (annotation,)
    )
    for candidate in candidates:
        if isinstance(candidate, type) and issubclass(candidate, Enum):
            return candidate
    return None


def _describe(model: type[BaseModel], err: Any) -> tuple[str | None, str]:
    """Turn one pydantic error into ``(field, "what is wrong and what is allowed")``."""
    loc = err["loc"]
    name = str(loc[0]) if loc else None
    kind: str = err["type"]
    value = err.get("input")
    if kind == "missing":
        return name, "is missing (required)"
    if kind == "extra_forbidden":
        allowed = ", ".join(model.model_fields)
        return name, f"is not a known field; allowed: {allowed}"
    if kind == "enum" and name:
        enum = _enum_of(model, name)
        allowed = ", ".join(str(m.value) for m in enum) if enum else err["msg"]
        return name, f"{value!r} is not one of {allowed}"
    if kind == "string_pattern_mismatch":
        return name, f"{value!r} is not {_ID_RULE}"
    if kind.startswith("date"):
        return name, f"{value!r} is not a date YYYY-MM-DD"
    if kind == "bool_parsing":
        return name, f"{value!r} is not true or false"
    if kind in ("int_parsing", "int_from_float"):
        return name, f"{value!r} is not a whole number"
    return name, f"{value!r}: {err['msg']}"


def _validate(model: type[_M], row: Row, problems: _Problems) -> _M | None:
    try:
        return model.model_validate(row.values)
    except ValidationError as exc:
        for err in exc.errors():
            name, text = _describe(model, err)
            problems.add(row, name, text)
        return None


def _known(ids: Iterable[str], source: str) -> str:
    listed = sorted(ids)
    shown = ", ".join(listed[:10]) + (", ..." if len(listed) > 10 else "")
    return f"is not an id in {source} (known: {shown or 'none'})"


def _text(row: Row, name: str, problems: _Problems) -> str | None:
    """A field's raw value when it is text without an error of its own, else ``None``."""
    value = row.values.get(name)
    return value if isinstance(value, str) and not problems.bad(row, name) else None


def _raw_date(row: Row, name: str, problems: _Problems) -> date | None:
    text = _text(row, name, problems)
    try:
        return date.fromisoformat(text) if text is not None else None
    except ValueError:
        return None


def build_inventory(
    subbranch_rows: Sequence[Row],
    branch_rows: Sequence[Row],
    device_rows: Sequence[Row],
    maintainer_rows: Sequence[Row] = (),
) -> Inventory:
    """Validate rows and cross-check them; raise one :class:`ConfigError` listing every
    problem, sorted by file and line.

    The cross-checks (duplicate ids, references to sub-branches and branches) look at the
    raw values of every record, including records with a field error, so one run reports
    everything. A reference to an id whose record has an error is not reported again, and
    neither is a reference in a field that has an error of its own.
    """
    problems = _Problems(
        [r.source for r in (*subbranch_rows, *branch_rows, *device_rows, *maintainer_rows)]
    )
    subbranches, sub_ids = _unique(SubBranch, subbranch_rows, problems)
    branches, branch_ids = _unique(Branch, branch_rows, problems)
    devices, _ = _unique(Device, device_rows, problems)

    valid_subs = {s.id for s, _ in subbranches}
    branch_by_id = {b.id: b for b, _ in branches}
    sub_source = subbranch_rows[0].source if subbranch_rows else "subbranches"
    branch_source = branch_rows[0].source if branch_rows else "branches"
    valid_branch = {id(row): b for b, row in branches}
    kinds = {k.value: k for k in BranchKind}

    for row in branch_rows:
        if row.problem is not None:
            continue
        sub = _text(row, "subbranch", problems)
        if sub is not None and sub not in sub_ids:
            problems.add(row, "subbranch", f"{sub!r} {_known(valid_subs, sub_source)}")
        model = valid_branch.get(id(row))
        if model is not None:
            kind: BranchKind | None = model.kind
        else:
            kind = (
                None if problems.bad(row, "kind") else kinds.get(row.values.get("kind", "outlet"))
            )
        parent_id = _text(row, "parent", problems)
        if parent_id is None or kind is None:
            continue
        if kind is BranchKind.SELF_SERVICE_BANK:
            parent = branch_by_id.get(parent_id)
            if parent is None and parent_id not in branch_ids:
                problems.add(row, "parent", f"{parent_id!r} {_known(branch_by_id, branch_source)}")
            elif parent is not None and parent.kind is not BranchKind.OUTLET:
                problems.add(
                    row,
                    "parent",
                    f"{parent_id!r} is a {parent.kind.value}; the parent of a "
                    "self-service bank must be an outlet",
                )
        else:
            problems.add(
                row,
                "parent",
                f"{parent_id!r}: only a self_service_bank has a parent (this is an outlet)",
            )

    valid_device = {id(row): d for d, row in devices}
    for row in device_rows:
        if row.problem is not None:
            continue
        branch = _text(row, "branch", problems)
        if branch is not None and branch not in branch_ids:
            problems.add(row, "branch", f"{branch!r} {_known(branch_by_id, branch_source)}")
        device = valid_device.get(id(row))
        commissioned: date | None
        if device is not None:
            commissioned, decommissioned = device.commissioned, device.decommissioned
        else:
            commissioned = _raw_date(row, "commissioned", problems)
            decommissioned = _raw_date(row, "decommissioned", problems)
        if commissioned and decommissioned and decommissioned < commissioned:
            problems.add(
                row,
                "decommissioned",
                f"'{decommissioned.isoformat()}' is before commissioned "
                f"'{commissioned.isoformat()}'",
            )
        window = _text(row, "service_window", problems)
        if window is not None:
            try:
                ServiceWindow.parse(window)
            except ValueError as exc:
                problems.add(row, "service_window", f"{window!r}: {exc}")

    maintainers, _ = _unique(Maintainer, maintainer_rows, problems)
    regions: dict[tuple[str, str], int] = {}
    for item, row in maintainers:
        if item.region != ANY_REGION and item.region not in sub_ids:
            problems.add(
                row,
                "region",
                f"{item.region!r} {_known(valid_subs, sub_source)} (or '{ANY_REGION}' for every"
                " region)",
            )
        key = (item.vendor, item.region)
        if key in regions:
            problems.add(
                row,
                "region",
                f"vendor {item.vendor!r} already has a maintainer for region {item.region!r}"
                f" (line {regions[key]})",
            )
        else:
            regions[key] = row.line

    problems.raise_if_any()
    return Inventory(
        subbranches=tuple(s for s, _ in subbranches),
        branches=tuple(b for b, _ in branches),
        devices=tuple(d for d, _ in devices),
        maintainers=tuple(m for m, _ in maintainers),
    )


def _unique(
    model: type[_M], rows: Sequence[Row], problems: _Problems
) -> tuple[list[tuple[_M, Row]], set[str]]:
    """Validate each row; report an id seen before (with the line where it was first),
    whether or not either record has other errors.

    Returns the valid rows and every id given (valid or not): the ids other records may
    refer to without being reported.
    """
    out: list[tuple[_M, Row]] = []
    first_line: dict[str, Row] = {}
    for row in rows:
        if row.problem is not None:
            problems.add(row, None, row.problem)
        item = _validate(model, row, problems) if row.problem is None else None
        raw = row.values.get("id")
        ident = getattr(item, "id") if item is not None else raw  # noqa: B009
        if not isinstance(ident, str):
            continue
        seen = first_line.get(ident)
        if seen is not None:
            if not problems.bad(row, "id"):
                problems.add(row, "id", f"{ident!r} is a duplicate (first at line {seen.line})")
            continue
        first_line[ident] = row
        if item is not None:
            out.append((item, row))
    return out, set(first_line)


# --------------------------------------------------------------------------- reading


def load_inventory(path: str | os.PathLike[str]) -> Inventory:
    """Read a YAML file or a folder of CSV files (picked by suffix / directory)."""
    path = Path(path)
    if path.is_dir():
        tables: list[list[Row]] = []
        unreadable: list[str] = []
        for name, model in TABLES:
            try:
                tables.append(_read_csv(path / f"{name}.csv", model))
            except ConfigError as exc:
                unreadable.append(str(exc))
        for name, model in OPTIONAL_TABLES:
            if (path / f"{name}.csv").exists():
                try:
                    tables.append(_read_csv(path / f"{name}.csv", model))
                except ConfigError as exc:
                    unreadable.append(str(exc))
            else:
                tables.append([])
        if unreadable:
            raise ConfigError("\n".join(unreadable))
        return build_inventory(*tables)
    if path.suffix.lower() in YAML_SUFFIXES:
        return build_inventory(*_read_yaml(path))
    if not path.exists():
        raise ConfigError(f"{path}: no such file or folder")
    raise ConfigError(
        f"{path}: not an inventory; use a .yaml/.yml file or a folder holding "
        f"{', '.join(f'{name}.csv' for name, _ in TABLES)}"
    )


def _read_text(path: Path) -> str:
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such file") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror}") from None
    try:
        return raw.decode("utf-8-sig")  # Excel's "CSV UTF-8" starts with a byte-order mark
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise ConfigError(
            f"{path} line {line}: not UTF-8 (byte {exc.start}); save the file as UTF-8 "
            "(in Excel: 'CSV UTF-8')"
        ) from None


def _read_csv(path: Path, model: type[BaseModel]) -> list[Row]:
    text = _read_text(path)
    source = str(path)
    reader = csv.reader(io.StringIO(text, newline=""))
    try:
        header = next(reader)
    except StopIteration:
        raise ConfigError(f"{source} line 1: empty file; expected a header line") from None
    except csv.Error as exc:
        raise ConfigError(f"{source} line 1: {exc}") from None
    columns = [h.strip() for h in header]
    allowed = list(model.model_fields)
    unknown = [c for c in columns if c not in allowed]
    if unknown:
        raise ConfigError(
            f"{source} line 1: column {unknown[0]!r} is not a known column; "
            f"allowed: {', '.join(allowed)}"
        )
    required = [n for n, f in model.model_fields.items() if f.is_required()]
    missing = [c for c in required if c not in columns]
    if missing:
        raise ConfigError(
            f"{source} line 1: column {missing[0]!r} is missing; required: {', '.join(required)}"
        )
    duplicated = sorted({c for c in columns if columns.count(c) > 1})
    if duplicated:
        raise ConfigError(f"{source} line 1: column {duplicated[0]!r} appears twice")
    rows: list[Row] = []
    width = len(columns)
    try:
        for cells in reader:
            line = reader.line_num
            if not any(c.strip() for c in cells):
                continue  # blank line
            if len(cells) != width:
                # The cells cannot be matched to columns; the id (first, by convention)
                # keeps references to this record from being reported as unknown.
                first = cells[0].strip() if cells and columns[0] == "id" else ""
                rows.append(Row(source, line, {"id": first} if first else {}, problem=(
                    f"{len(cells)} cells, the header has {width} ({','.join(columns)})"
                )))  # fmt: skip
                continue
            values = {c: v.strip() for c, v in zip(columns, cells, strict=True) if v.strip()}
            rows.append(Row(source, line, values))
    except csv.Error as exc:
        raise ConfigError(f"{source} line {reader.line_num}: {exc}") from None
    return rows


def _read_yaml(path: Path) -> tuple[list[Row], list[Row], list[Row], list[Row]]:
    text = _read_text(path)
    source = str(path)
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    try:
        root = yaml.compose(text, Loader=loader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError(f"{source}{where}: not valid YAML: {problem}") from None
    if root is None:
        raise ConfigError(f"{source}: empty file; expected {', '.join(n for n, _ in TABLES)}")
    if not isinstance(root, yaml.MappingNode):
        raise ConfigError(
            f"{source} line {_line(root)}: expected a mapping with keys "
            f"{', '.join(n for n, _ in TABLES)}"
        )
    sections: dict[str, yaml.Node] = {}
    for key_node, value_node in root.value:
        key = _scalar(key_node)
        if key not in dict(TABLES + OPTIONAL_TABLES):
            raise ConfigError(
                f"{source} line {_line(key_node)}: key {key!r} is not one of "
                f"{', '.join(n for n, _ in TABLES + OPTIONAL_TABLES)}"
            )
        if key in sections:
            raise ConfigError(f"{source} line {_line(key_node)}: key {key!r} appears twice")
        sections[key] = value_node
    out: list[list[Row]] = []
    for name, _ in TABLES:
        node = sections.get(name)
        if node is None:
            raise ConfigError(f"{source}: key {name!r} is missing (use '{name}: []' for none)")
        out.append(list(_yaml_rows(source, name, node)))
    for name, _ in OPTIONAL_TABLES:
        node = sections.get(name)
        out.append([] if node is None else list(_yaml_rows(source, name, node)))
    return out[0], out[1], out[2], out[3]


def _line(node: yaml.Node) -> int:
    return int(node.start_mark.line) + 1


def _scalar(node: yaml.Node) -> str | None:
    """A scalar as text (the models parse types), ``None`` for YAML null."""
    if node.tag == "tag:yaml.org,2002:null":
        return None
    return str(node.value)


def _plain(node: yaml.Node) -> Any:
    if isinstance(node, yaml.ScalarNode):
        return _scalar(node)
    if isinstance(node, yaml.SequenceNode):
        return [_plain(n) for n in node.value]
    return {_scalar(k): _plain(v) for k, v in node.value}


def _yaml_rows(source: str, section: str, node: yaml.Node) -> Iterator[Row]:
    if isinstance(node, yaml.ScalarNode) and _scalar(node) is None:
        return  # "devices:" with nothing under it
    if not isinstance(node, yaml.SequenceNode):
        raise ConfigError(f"{source} line {_line(node)} ({section}): expected a list of entries")
    for item in node.value:
        if not isinstance(item, yaml.MappingNode):
            raise ConfigError(
                f"{source} line {_line(item)} ({section}): expected an entry 'key: value', "
                f"got {_plain(item)!r}"
            )
        values: dict[str, Any] = {}
        lines: dict[str, int] = {}
        twice: list[tuple[str, int]] = []
        for key_node, value_node in item.value:
            key = str(_scalar(key_node))
            if key in lines:
                twice.append((key, _line(key_node)))
                continue
            value = _plain(value_node)
            lines[key] = _line(value_node)
            if value is not None and value != "":
                values[key] = value
        if twice:
            key, line = twice[0]
            yield Row(source, line, values, lines, section, f"field {key!r} appears twice")
        else:
            yield Row(source, _line(item), values, lines, section)


# --------------------------------------------------------------------------- writing


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, Enum):
        return str(value.value)
    if isinstance(value, date):
        return value.isoformat()
    return str(value)


def save_inventory(inv: Inventory, path: str | os.PathLike[str]) -> None:
    """Write ``inv`` as YAML (``*.yaml``/``*.yml``) or as a folder of CSVs (anything else).

    Each file is written to a temporary file beside it and renamed, so a reader never sees
    half a file.
    """
    path = Path(path)
    if path.suffix.lower() in YAML_SUFFIXES:
        _write_atomic(path, _yaml_text(inv))
        return
    path.mkdir(parents=True, exist_ok=True)
    optional = tuple((n, m) for n, m in OPTIONAL_TABLES if getattr(inv, n))
    for name, model in TABLES + optional:
        buf = io.StringIO(newline="")
        writer = csv.writer(buf, lineterminator="\n")
        columns = list(model.model_fields)
        writer.writerow(columns)
        for item in getattr(inv, name):
            writer.writerow([_cell(getattr(item, c)) for c in columns])
        _write_atomic(path / f"{name}.csv", buf.getvalue())


def _yaml_text(inv: Inventory) -> str:
    data = {
        name: [item.model_dump(mode="json", exclude_defaults=True) for item in getattr(inv, name)]
        for name, _ in TABLES + OPTIONAL_TABLES
        if name in dict(TABLES) or getattr(inv, name)
    }
    dumper = getattr(yaml, "CSafeDumper", yaml.SafeDumper)
    text: str = yaml.dump(
        data,
        Dumper=dumper,
        allow_unicode=True,
        sort_keys=False,
        default_flow_style=False,
        width=100,
    )
    return text


def _write_atomic(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        os.fchmod(fd, 0o644)  # mkstemp makes 0600; an inventory is not a secret
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as fh:
            fh.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
