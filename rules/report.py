"""The report layer: scope, period and rules -> report rows with exact values.

``atmfleet kpi`` (rules/cli.py), the bulletins (exporters/bulletin) and ``serve`` call
these functions, so every figure a bulletin shows is the one ``atmfleet kpi --json``
prints. Values are exact: times in integer milliseconds, counts as integers, ratios
unrounded, money as :class:`~decimal.Decimal`; rounding happens once, at display
(:func:`render` here, the bulletin renderers there).

``--scope`` (one meaning everywhere, docs/kpis.md "Scope"): the devices of the inventory
that match (``fleet``, ``tier:N``, ``subbranch:ID``, ``branch:ID``, ``device:ID``,
``vendor:NAME``, ``type:TYPE``) and are in the fleet on at least one day of the period
(:mod:`rules.fleet`). Per-branch indicators (substitution, the network checks, the
assessment) take only the geographic scopes (fleet, tier, subbranch, branch; the
assessment fleet or tier): a branch's figure does not split by vendor or type.
"""

from __future__ import annotations

import heapq
import json
import unicodedata
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import date, datetime, timedelta
from decimal import Decimal
from itertools import repeat
from operator import attrgetter, itemgetter
from typing import Any, cast

from atmfleet.errors import UsageError
from atmfleet.inventory import BranchKind, Device, Inventory, Placement, Tier
from rules.assessment import SubBranchFigures, assess
from rules.config import Rules
from rules.feed import (
    Feed,
    TxnDay,
    UptimeDays,
    gc_paused,
    low_yield_for,
    timelines,
    uptime_for,
    uptime_of_day,
    window_days,
)
from rules.fleet import fleet_devices, in_fleet
from rules.labels import Label
from rules.lowyield import Share, YieldFlag, YieldStatus, low_yield_share
from rules.network import deposit_coverage, self_service_bank_ratio
from rules.resource import ResourceWarning, ranked, resource_for
from rules.resource import rollup as resource_rollup
from rules.resource import total as resource_total
from rules.revenue import revenue
from rules.substitution import (
    DeviceCounts,
    Substitution,
    Volumes,
    branch_key,
    substitution,
    unit_of,
    unit_volumes,
)
from rules.tail import Entry, no_data, tail, uptime_entries, volume_entries
from rules.timeline import Span
from rules.uptime import (
    Uptime,
    UptimePolicy,
    WindowSpans,
    day_span,
    days,
    device_uptime,
    dimension_key,
    rollup,
    total,
)
from rules.vendors import VendorScore, scorecard

HOUR_MS = 3_600_000

#: Scope kinds and the inventory dimension each selects on.
SCOPES = {
    "fleet": "fleet",
    "tier": "tier",
    "subbranch": "subbranch",
    "sub-branch": "subbranch",
    "branch": "branch",
    "device": "device",
    "vendor": "vendor",
    "type": "type",
}
#: What a scope is broken down by, unless --by says otherwise.
DEFAULT_BY = {
    "fleet": "subbranch",
    "tier": "subbranch",
    "subbranch": "branch",
    "branch": "device",
    "device": "device",
    "vendor": "type",
    "type": "subbranch",
}


# ----------------------------------------------------------------------------- input

#: The scopes a per-branch indicator accepts.
GEOGRAPHIC = ("fleet", "tier", "subbranch", "branch")


@dataclass(frozen=True)
class Scope:
    kind: str  # an inventory dimension
    value: str

    @classmethod
    def parse(cls, text: str) -> Scope:
        kind, _, value = text.partition(":")
        dim = SCOPES.get(kind.strip().lower())
        if dim is None:
            allowed = "fleet, tier:N, subbranch:ID, branch:ID, device:ID, vendor:NAME, type:TYPE"
            raise UsageError(f"--scope {text!r}: unknown scope kind {kind!r}; allowed: {allowed}")
        if dim == "fleet":
            return cls("fleet", "fleet")
        if not value.strip():
            raise UsageError(f"--scope {text!r}: give a value, e.g. {kind}:<id>")
        return cls(dim, value.strip())

    def __str__(self) -> str:
        return "fleet" if self.kind == "fleet" else f"{self.kind}:{self.value}"

    def require(self, allowed: Sequence[str], what: str) -> None:
        if self.kind not in allowed:
            raise UsageError(f"--scope {self}: {what}; use {', '.join(allowed)}")

    def matching(self, inventory: Inventory) -> list[Device]:
        """Every inventory device the scope names, in the fleet or not (an unknown value
        is refused, naming the known ones)."""
        key = dimension_key(inventory, self.kind)
        chosen = [d for d in inventory.devices if key(d.id) == self.value]
        known_branch = self.kind == "branch" and self.value in inventory.branch_by_id
        known_sub = self.kind == "subbranch" and self.value in inventory.subbranch_by_id
        known_tier = self.kind == "tier" and self.value in {t.value for t in Tier}
        if not chosen and not (known_branch or known_sub or known_tier or self.kind == "fleet"):
            known = sorted({k for d in inventory.devices if (k := key(d.id)) is not None})
            shown = ", ".join(known[:12]) + (", ..." if len(known) > 12 else "")
            raise UsageError(
                f"--scope {self}: no {self.kind} {self.value!r} in the inventory "
                f"(known: {shown or 'none: load the inventory with `atmfleet db load-inventory`'})"
            )
        return chosen

    def devices(self, inventory: Inventory, first: date, last: date) -> list[Device]:
        """The scope's devices in the fleet on some day of ``first``..``last``."""
        return fleet_devices(self.matching(inventory), first, last)

    def subbranches(self, inventory: Inventory) -> list[str]:
        """The sub-branches a geographic scope covers (empty ones included)."""
        if self.kind == "fleet":
            return sorted(inventory.subbranch_by_id)
        if self.kind == "tier":
            return sorted(s.id for s in inventory.subbranches if s.tier.value == self.value)
        if self.kind == "subbranch":
            return [self.value]
        if self.kind == "branch":
            return [inventory.branch_by_id[self.value].subbranch]
        return sorted({inventory.subbranch_of(d).id for d in self.matching(inventory)})


def resolve_period(
    on: date | None, first: date | None, last: date | None, today: date
) -> tuple[date, date]:
    """``--date`` or ``--from``/``--to`` (default: yesterday); refuses the future."""
    if on is not None and (first is not None or last is not None):
        raise UsageError("give either --date or --from/--to, not both")
    if on is not None:
        first = last = on
    elif first is None and last is None:
        first = last = today - timedelta(days=1)
    elif first is None or last is None:
        first = first or last
        last = last or first
    assert first is not None and last is not None
    if last < first:
        raise UsageError(f"--to {last} is before --from {first}")
    if last > today:
        raise UsageError(f"{last} is in the future (today is {today} in the rules' time zone)")
    return first, last


@dataclass
class Context:
    """One computation: the store, the rules, the scope and the period. Reads are
    memoised per period, so the reports of one bulletin read each day once."""

    feed: Feed
    rules: Rules
    inventory: Inventory
    scope: Scope
    first: date
    last: date
    horizon: int  # now, ms
    cache: dict[Any, Any] = field(default_factory=dict, repr=False)

    @classmethod
    def make(
        cls, feed: Feed, inventory: Inventory, scope: Scope, first: date, last: date, horizon: int
    ) -> Context:
        scope.matching(inventory)  # refuses an unknown scope value
        return cls(feed, feed.rules, inventory, scope, first, last, horizon)

    @property
    def devices(self) -> list[Device]:
        return self.memo(  # type: ignore[no-any-return]
            ("devices", str(self.scope), self.first, self.last),
            lambda: self.scope.devices(self.inventory, self.first, self.last),
        )

    @property
    def span(self) -> tuple[int, int]:
        return day_span(self.first, self.rules.tz)[0], day_span(self.last, self.rules.tz)[1]

    def shifted(self, days: int) -> Context:
        """The same computation ``days`` earlier (sharing the cache)."""
        shift = timedelta(days=days)
        return replace(self, first=self.first - shift, last=self.last - shift)

    def memo(self, key: Any, compute: Callable[[], Any]) -> Any:
        if key not in self.cache:
            self.cache[key] = compute()
        return self.cache[key]

    def uptime_days(self) -> UptimeDays:
        """Every in-fleet device of the scope, each local day of the period (a closed
        day: kept in full, read or computed and kept, :func:`rules.feed.uptime_of_day`)."""
        devices = self.devices

        def compute() -> UptimeDays:
            if self.first != self.last:
                return uptime_for(self.feed, devices, self.first, self.last, self.horizon)
            up, financial = uptime_of_day(self.feed, devices, self.first, self.horizon)
            if financial is not None:  # kept beside the day's uptime: not read again
                self.cache[("kept_financial", str(self.scope), self.first)] = financial
            return up

        return self.memo(("uptime", str(self.scope), self.first, self.last), compute)  # type: ignore[no-any-return]

    def resource_days(self) -> dict[str, dict[date, ResourceWarning]]:
        """资源预警率: W and S of every in-fleet device of the scope, each local day (on
        the timelines and S of :meth:`uptime_days`)."""
        devices = self.devices
        return self.memo(  # type: ignore[no-any-return]
            ("resource", str(self.scope), self.first, self.last),
            lambda: resource_for(self.feed, devices, self.uptime_days(), self.horizon),
        )

    def txn(self) -> dict[str, dict[date, TxnDay]]:
        return self.memo(  # type: ignore[no-any-return]
            ("txn", self.first, self.last), lambda: self.feed.txn_days(self.first, self.last)
        )

    def financial(self) -> dict[str, int]:
        """Counted financial transactions per device over the period: from :meth:`txn`
        when this computation has it already, else read alone (a third of its cost)."""
        txn = self.cache.get(("txn", self.first, self.last))
        if txn is not None:
            return {d: sum(t.financial for t in per_day.values()) for d, per_day in txn.items()}
        return self.memo(  # type: ignore[no-any-return]
            ("financial", self.first, self.last),
            lambda: {
                d: sum(per_day.values())
                for d, per_day in self.feed.financial_days(self.first, self.last).items()
            },
        )

    def flags(self) -> list[YieldFlag]:
        devices = self.devices
        # The day's uptime, when this computation already has it (a day not yet kept is
        # then not computed twice).
        known = self.cache.get(("uptime", str(self.scope), self.last, self.last))
        return self.memo(  # type: ignore[no-any-return]
            ("flags", str(self.scope), self.last),
            lambda: low_yield_for(
                self.feed, self.inventory, devices, self.last, self.horizon, known
            ),
        )

    def target_of(self) -> Callable[[str], float]:
        """device id -> its uptime target (its sub-branch's tier)."""
        return self.memo(("target_of",), self._targets).__getitem__  # type: ignore[no-any-return]

    def _targets(self) -> _Targets:
        """Every inventory device's uptime target (its tier's; tier 1's for an id not in
        the inventory or without a tier), looked up in C: a tail ranking asks it of every
        device in four periods."""
        tier = dimension_key(self.inventory, "tier")
        targets = self.rules.uptime.targets
        by_tier = {t.value: targets[t] for t in Tier}
        default = by_tier["1"]
        out = _Targets({d.id: by_tier[tier(d.id) or "1"] for d in self.inventory.devices})
        out.default = default
        return out


class _Targets(dict[str, float]):
    """device id -> uptime target; an id not held: ``default``."""

    default: float = 0.0

    def __missing__(self, key: str) -> float:
        return self.default


# ---------------------------------------------------------------------------- output


@dataclass
class Report:
    """What a subcommand prints: a title, rows of named cells, and the same as JSON."""

    title: str
    columns: list[str]
    rows: list[dict[str, Any]] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)
    sections: list[Report] = field(default_factory=list)

    def as_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"title": self.title, **self.extra, "rows": self.rows}
        for s in self.sections:
            out[s.extra.get("key", s.title)] = s.as_json()
        return out

    def section(self, key: str) -> Report:
        return next(s for s in self.sections if s.extra.get("key") == key)


def _width(text: str) -> int:
    if text.isascii():  # every cell of a number or an id: one column a character
        return len(text)
    return sum(2 if unicodedata.east_asian_width(c) in "WF" else 1 for c in text)


#: Columns shown as percentages in the terminal (JSON keeps the ratio).
PERCENT = {"uptime", "technical", "rate", "resource_warning", "on_site_rate", "diversion", "share", "coverage",
           "substitution", "low_yield_share", "target", "previous", "on_site_target",
           "max_share", "repeat_rate"}  # fmt: skip
#: Shown in percentage points.
POINTS = {"change"}
NO_DATA = "–"


def header(column: str) -> str:
    """A column's heading in the terminal: milliseconds are shown as hours."""
    return column[:-3] + "_h" if column.endswith("_ms") else column


def display(column: str, value: Any) -> str:
    """A value as a person reads it: the one place the terminal rounds."""
    if value is None:
        return NO_DATA
    if isinstance(value, bool):
        return "yes" if value else "no"
    if column.endswith("_ms") and isinstance(value, (int, float)):
        return f"{value / HOUR_MS:.2f}"
    if isinstance(value, (float, Decimal)):
        column = column.removesuffix(" (total)")
        if column in PERCENT:
            return f"{value * 100:.2f}%"
        if column in POINTS:
            return f"{value * 100:+.2f}"
        return f"{value:.2f}"
    return str(value)


def _cells(column: str, values: list[Any], types: set[type] | None = None) -> list[str]:
    """:func:`display` of a column's values (``types``: the values' types, when the
    caller has them), a column of one kind (with no data) in one comprehension and the
    other plain cases (no data, text, a count not in milliseconds) done inline: a device
    list has 100,000 rows."""
    plain_int = not column.endswith("_ms")
    # A float not in milliseconds, as display shows it: a percentage, points or plain.
    name = column.removesuffix(" (total)")
    kind = 0 if not plain_int else 1 if name in PERCENT else 2 if name in POINTS else 3
    if types is None:
        types = set(map(type, values))
    kinds = types - {_NONE_TYPE}
    if not kinds or kinds == {str}:
        return [NO_DATA if v is None else v for v in values]
    if kinds == {int} and plain_int:
        return [NO_DATA if v is None else str(v) for v in values]
    if kinds == {float} and kind:
        if kind == 1:
            return [NO_DATA if v is None else f"{v * 100:.2f}%" for v in values]
        if kind == 2:
            return [NO_DATA if v is None else f"{v * 100:+.2f}" for v in values]
        return [NO_DATA if v is None else f"{v:.2f}" for v in values]
    if kinds == {bool}:
        return [NO_DATA if v is None else "yes" if v else "no" for v in values]
    out = []
    for v in values:
        t = type(v)
        if v is None:
            out.append(NO_DATA)
        elif t is str:
            out.append(v)
        elif t is int and plain_int:
            out.append(str(v))
        elif t is float and kind:
            if kind == 1:
                out.append(f"{v * 100:.2f}%")
            elif kind == 2:
                out.append(f"{v * 100:+.2f}")
            else:
                out.append(f"{v:.2f}")
        elif t is bool:
            out.append("yes" if v else "no")
        else:
            out.append(display(column, v))
    return out


_NONE_TYPE = type(None)
_NUMERIC = (int, float, Decimal)


def _widths(cells: list[str]) -> list[int] | None:
    """Each cell's :func:`_width`; None when every cell's width is its length (every cell
    ASCII, found in one pass over the joined text, or the few distinct others, such as
    no data, one column a character too). The distinct non-ASCII cells (no data, a name)
    are measured once each."""
    if "".join(cells).isascii():
        return None
    seen = {v: w for v in set(cells) if not v.isascii() and (w := _width(v)) != len(v)}
    if not seen:
        return None
    return [seen[v] if v in seen else len(v) for v in cells]


def _pad(cells: list[str], width: int, right: bool, widths: list[int] | None = None) -> list[str]:
    """Each cell padded to ``width`` terminal columns, on the left when ``right``
    (``widths``: :func:`_widths` of the cells; None: each cell's length)."""
    if widths is None:
        return [v.rjust(width) for v in cells] if right else [v.ljust(width) for v in cells]
    out = []
    for v, w in zip(cells, widths, strict=True):
        pad = " " * (width - w)
        out.append(pad + v if right else v + pad)
    return out


def render(report: Report) -> str:
    """The report as a table: its title, its figures, a column per name (numbers on the
    right), then its sections. Each row is made by one format of the row's cells: a
    column whose every cell is as wide as it is long is padded by the format itself,
    another padded first (:func:`_pad`)."""
    lines = [report.title]
    for key, value in report.extra.items():
        if key != "key" and not isinstance(value, (dict, list)):
            lines.append(f"  {key}: {display(key, value)}")
    if report.rows:
        rows = report.rows
        heads = []
        widths = []
        fields = []
        columns = []
        for c in report.columns:
            h = header(c)
            values = list(map(dict.get, rows, repeat(c)))
            types = set(map(type, values))
            numeric = all(t is _NONE_TYPE or issubclass(t, _NUMERIC) for t in types)
            cells = _cells(c, values, types)
            each = _widths(cells)
            width = max(_width(h), max(map(len, cells)) if each is None else max(each))
            widths.append(width)
            heads.append(h + " " * (width - _width(h)))
            if each is None:  # padded by the format: a cell's width is its length
                fields.append(("{:>%d}" if numeric else "{:<%d}") % width)
            else:
                fields.append("{}")
                cells = _pad(cells, width, numeric, each)
            columns.append(cells)
        lines.append("  ".join(heads).rstrip())
        lines.append("  ".join("-" * w for w in widths))
        lines.extend(map(str.rstrip, map("  ".join(fields).format, *columns)))
    else:
        lines.append(f"  ({report.extra.get('empty', 'nothing')})")
    for s in report.sections:
        lines.append("")
        lines.append(render(s))
    return "\n".join(lines)


def to_json(report: Report) -> str:
    return json.dumps(report.as_json(), ensure_ascii=False, indent=1, default=_json)


def _json(value: Any) -> Any:
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, (date, datetime)):
        return value.isoformat()
    raise TypeError(type(value).__name__)


def change(now: float | None, before: float | None) -> float | None:
    """A difference of ratios; None against no data."""
    return None if now is None or before is None else now - before


# --------------------------------------------------------------------------- uptime


def main_cause(up: Uptime, by_cause: Mapping[Label, int] | None = None) -> str | None:
    """The cause with most downtime (ties: the name), None without downtime
    (``by_cause``: ``up.down_by_cause()``, when the caller has it)."""
    by_cause = up.down_by_cause() if by_cause is None else by_cause
    best: str | None = None
    most = 0
    for c, v in by_cause.items():  # the largest (time, name): names are distinct
        if v > 0 and (best is None or v > most or (v == most and _VALUE[c] > best)):
            best, most = _VALUE[c], v
    return best


#: Each label's name (``Label.value``, looked up in a dict: a row per device asks it).
_VALUE: dict[Label, str] = {c: c.value for c in Label}


def uptime_row(
    name: str,
    up: Uptime,
    target: float | None,
    previous: Uptime | None = None,
    financial: int | None = None,
) -> dict[str, Any]:
    ratio = up.ratio
    causes = up.down_by_cause()
    row = {
        "group": name,
        "devices": up.devices,
        "uptime": ratio,
        "target": target,
        "meets_target": None if ratio is None or target is None else ratio >= target,
        "technical": up.tech_ratio,
        "coverage": up.coverage,
        "scheduled_ms": up.scheduled_ms,
        "available_ms": up.available_ms,
        "down_ms": up.down_ms,
        "unknown_ms": up.unknown_ms,
        # planned maintenance taken out of S (device-declared and registered stops, once)
        "planned_ms": up.planned_excluded_ms,
        "main_cause": main_cause(up, causes),
        "down_ms_by_cause": {_VALUE[c]: v for c, v in causes.items() if v},
    }
    if financial is not None:
        row["financial"] = financial  # counted financial transactions of its devices
    if previous is not None:
        row["previous"] = previous.ratio
        row["change"] = change(ratio, previous.ratio)
    return row


def per_device_uptime(ctx: Context) -> dict[str, Uptime]:
    """Each in-fleet device's uptime over the whole period (memoised: read, do not change)."""

    def compute() -> dict[str, Uptime]:
        per_device = ctx.uptime_days().per_device
        if ctx.first == ctx.last:
            # A device's one day is its total (one device): the same figures, not copied.
            day = ctx.first
            out = {d: per_day[day] for d, per_day in per_device.items()}
            if all(up.devices == 1 for up in out.values()):
                return out
        return {d: total(per_day.values()) for d, per_day in per_device.items()}

    return ctx.memo(("per_device_uptime", str(ctx.scope), ctx.first, ctx.last), compute)  # type: ignore[no-any-return]


def period_uptime(ctx: Context) -> dict[str, Uptime]:
    """:func:`per_device_uptime` without holding each device-day: a device's days are
    added up as they are computed and its timeline let go at once (the same integer sums,
    in the same order, as :func:`rules.uptime.total` of :meth:`Context.uptime_days`).
    For a computation that needs no per-day figure of the period (the monthly and
    quarterly assessments): a report asking :meth:`Context.uptime_days` later reads the
    timelines again. Memoised under :func:`per_device_uptime`'s key.

    Without a daily cap on the planned time taken out of S, a device's S, A and times by
    label are sums over its time (:func:`rules.uptime.uptime_from_totals` is linear in the
    totals by label): its period is then computed in one pass over the scheduled spans
    of all its days (disjoint, in order), the same integers and the labels in the same
    order as day by day (a label enters the sum when first met, in time order, either
    way). With a cap, day by day."""
    key = ("per_device_uptime", str(ctx.scope), ctx.first, ctx.last)
    if key in ctx.cache or ("uptime", str(ctx.scope), ctx.first, ctx.last) in ctx.cache:
        return per_device_uptime(ctx)

    def compute() -> dict[str, Uptime]:
        rules = ctx.rules
        devices = ctx.devices
        lo, hi = ctx.span
        windows = WindowSpans(rules.tz)
        policy = UptimePolicy.from_rules(rules)
        period = days(ctx.first, ctx.last)
        out: dict[str, Uptime] = {}
        whole = not (policy.planned_excluded and policy.planned_cap_ms is not None)
        spans_of: dict[tuple[str, date, date | None], list[Span]] = {}
        with gc_paused():
            lines = timelines(ctx.feed, devices, lo, hi, ctx.horizon)
            for d in devices:
                line = lines.pop(d.id)
                spec = rules.service_windows.spec_for(d)
                if whole:
                    at = (spec, d.commissioned, d.decommissioned)
                    spans = spans_of.get(at)
                    if spans is None:
                        spans = spans_of[at] = [
                            s
                            for day in period
                            for s in windows.scheduled(spec, d, day, ctx.horizon)
                        ]
                    out[d.id] = device_uptime(line, spans, policy)
                    continue
                acc = out[d.id] = Uptime(devices=1)
                for day in period:
                    acc.add(
                        device_uptime(line, windows.scheduled(spec, d, day, ctx.horizon), policy)
                    )
        return out

    return ctx.memo(key, compute)  # type: ignore[no-any-return]


#: Inventory dimensions nested in one another: each is a function of the one before
#: (a device's branch decides its sub-branch, which decides its tier).
NESTED = ("device", "branch", "subbranch", "tier")


def regroup(
    groups: dict[str, Uptime], of: Callable[[str], str | None], inner: Callable[[str], str | None],
    devices: Iterable[str],
) -> dict[str, Uptime]:  # fmt: skip
    """The roll-up by ``of`` from the roll-up ``groups`` by ``inner`` (``of`` a function of
    ``inner`` over ``devices``): the same sums as :func:`rules.uptime.rollup` over the
    devices (integers: the order of the additions does not change them)."""
    parent: dict[str, str | None] = {}
    for d in devices:
        g = inner(d)
        if g is not None and g not in parent:
            parent[g] = of(d)
    out: dict[str, Uptime] = {}
    for g, up in groups.items():
        p = parent[g]
        if p is None:
            continue
        acc = out.get(p)
        if acc is None:
            acc = out[p] = Uptime()
        acc.add(up)
        acc.devices += up.devices
    return out


def _in_inventory(ctx: Context, per_device: Mapping[str, Uptime], name: str) -> bool:
    """Whether every device of ``per_device`` is an inventory one: then each has a group
    in every dimension (:func:`rules.uptime.dimension_key` is None only for an id not in
    the inventory), so a roll-up can be made from a finer one. Asked once per
    computation and ``name`` (which per-device figures)."""
    ids = dimension_key(ctx.inventory, "device")
    return ctx.memo(  # type: ignore[no-any-return]
        ("in_inventory", name, str(ctx.scope), ctx.first, ctx.last),
        lambda: all(ids(d) is not None for d in per_device),
    )


def added(parts: Sequence[Uptime]) -> Uptime:
    """:func:`rules.uptime.rollup` of one group: ``parts`` added up in their order (the
    same sums, the labels in the same order), held in locals while adding."""
    by_label: dict[Label, int] = {}
    get = by_label.get
    s = a = ts = ta = pe = mo = 0
    for up in parts:
        for label, value in up.by_label.items():
            by_label[label] = get(label, 0) + value
        s += up.scheduled_ms
        a += up.available_ms
        ts += up.tech_scheduled_ms
        ta += up.tech_available_ms
        pe += up.planned_excluded_ms
        mo += up.monitored_ms
    return Uptime(by_label, s, a, ts, ta, pe, mo, len(parts))


def grouped_uptime(
    ctx: Context, per_device: dict[str, Uptime], by: str, name: str = "period"
) -> dict[str, Uptime]:
    """``rollup(per_device, dimension_key(inventory, by))``, memoised per computation
    (``name``: which per-device figures) and built from the finer nested roll-up
    (device -> branch -> sub-branch -> tier), so a bulletin adds each device once."""

    def compute() -> dict[str, Uptime]:
        if by == "scope":  # the whole scope, one group named after it
            scope = str(ctx.scope)
            key: Callable[[str], str | None] = lambda _d: scope  # noqa: E731
            inner = "tier"
        else:
            key = dimension_key(ctx.inventory, by)
            inner = NESTED[NESTED.index(by) - 1] if by in NESTED[2:] else ""
        if by == "device":
            # A group of one: the device's own figures (every id here is an inventory one).
            if _in_inventory(ctx, per_device, name):
                return per_device  # (read, do not change)
            return {d: up for d, up in per_device.items() if key(d) is not None}
        if inner:
            inner_key = dimension_key(ctx.inventory, inner)
            if _in_inventory(ctx, per_device, name):
                finer = grouped_uptime(ctx, per_device, inner, name)
                return regroup(finer, key, inner_key, per_device)
        if (
            by == "branch"
            and per_device is per_device_uptime(ctx)
            and (branches := branch_devices(ctx))
        ):
            return {b: added([per_device[d] for d in ids]) for b, ids in branches.items()}
        return rollup(per_device, key)

    return ctx.memo(  # type: ignore[no-any-return]
        ("grouped_uptime", name, str(ctx.scope), ctx.first, ctx.last, by), compute
    )


def financial_per_device(ctx: Context) -> dict[str, int]:
    """Counted financial transactions of each in-fleet device of the scope in the period."""

    def compute() -> dict[str, int]:
        per_device = per_device_uptime(ctx)
        kept = ctx.cache.get(("kept_financial", str(ctx.scope), ctx.first))
        if kept is not None and ctx.first == ctx.last:
            return {d: kept[d] for d in per_device}
        if ctx.first != ctx.last and not any(
            k in ctx.cache
            for k in (("txn", ctx.first, ctx.last), ("financial", ctx.first, ctx.last))
        ):  # a longer period: its sums, read once (shared with the fees)
            summed = period_txn(ctx)
            return {d: t.financial if (t := summed.get(d)) else 0 for d in per_device}
        counted = ctx.financial()
        return {d: counted.get(d, 0) for d in per_device}

    return ctx.memo(  # type: ignore[no-any-return]
        ("financial", str(ctx.scope), ctx.first, ctx.last), compute
    )


@dataclass(slots=True)
class DayFigures:
    """A device's 开机率 A and S and counted financial transactions over a one-day
    period. Held as three integers (a fleet's earlier days are held for a whole
    bulletin); ``ratio``, ``down_ms`` and ``has_data`` are those of :attr:`uptime`, the
    :class:`Uptime` holding only A and S, made when asked for. Read only once made (not
    frozen: a frozen dataclass takes three times as long to make, and a daily bulletin
    makes one per device for each of the days it compares with)."""

    available_ms: int
    scheduled_ms: int
    financial: int

    @property
    def uptime(self) -> Uptime:
        return Uptime(scheduled_ms=self.scheduled_ms, available_ms=self.available_ms, devices=1)

    @property
    def ratio(self) -> float | None:
        return self.available_ms / self.scheduled_ms if self.scheduled_ms else None

    @property
    def down_ms(self) -> int:
        return self.scheduled_ms - self.available_ms

    @property
    def has_data(self) -> bool:
        return self.scheduled_ms > 0


def day_figures(ctx: Context) -> dict[str, DayFigures] | None:
    """Per in-fleet device of the scope, A, S and financial transactions of a one-day
    period, from the kept closed days (:func:`rules.feed.window_days`: a day not kept is
    computed from its timeline as :meth:`Context.uptime_days` does, and kept once
    closed), so an earlier day a report only compares with is not rebuilt from its
    timeline. None for a longer period (whose figures come from its timelines)."""
    if ctx.first != ctx.last:
        return None

    def compute() -> dict[str, DayFigures]:
        known = ctx.cache.get(("uptime", str(ctx.scope), ctx.first, ctx.last))
        windows = window_days(ctx.feed, ctx.devices, ctx.first, ctx.last, ctx.horizon, known)
        out = {}
        for d in ctx.devices:
            w = windows[d.id]
            a, s, f = w.available[0], w.scheduled[0], w.financial[0]
            assert a is not None and s is not None and f is not None  # complete
            out[d.id] = DayFigures(a, s, f)
        return out

    return ctx.memo(("day_figures", str(ctx.scope), ctx.first), compute)  # type: ignore[no-any-return]


def read_day_figures(ctx: Context, first: date, last: date) -> None:
    """:func:`day_figures` of each one-day period ``first``..``last`` (the scope's), from
    one read of their kept days instead of one per day; a day for which one of its
    devices is not kept is left to :func:`day_figures` (which computes and keeps it)."""
    scope = str(ctx.scope)
    todo = [
        (i, replace(ctx, first=day, last=day))
        for i, day in enumerate(days(first, last))
        if ("day_figures", scope, day) not in ctx.cache
    ]
    if not todo:
        return
    kept = ctx.feed.kept_days(ctx.feed.fingerprint(), first, last)
    get = kept.get
    make = DayFigures
    for i, on in todo:
        out: dict[str, DayFigures] = {}
        for d in on.devices:
            ident = d.id
            w = get(ident)
            if w is None:
                break
            a, s, f = w.available[i], w.scheduled[i], w.financial[i]
            if a is None or s is None or f is None:
                break
            out[ident] = make(a, s, f)
        else:
            ctx.cache[("day_figures", scope, on.first)] = out


def compared_uptime(ctx: Context) -> dict[str, Uptime]:
    """Per device, the uptime a report compares with (the day before, a tail's earlier
    periods): only A and S for a one-day period (:func:`day_figures`), else the whole."""
    figures = day_figures(ctx)
    if figures is None:
        return per_device_uptime(ctx)
    return {d: f.uptime for d, f in figures.items()}


def compared_groups(ctx: Context, by: str) -> tuple[dict[str, Uptime], Uptime]:
    """The uptime of each group by ``by`` and of the whole scope in a period compared
    with, for their ratios (ΣA/ΣS): the roll-ups of :func:`compared_uptime`. For a
    one-day period, only A and S are added up, from :func:`day_figures` (the same
    integers, so the same ratios), without an :class:`Uptime` per device."""
    scope = str(ctx.scope)
    figures = day_figures(ctx)
    if figures is None:
        per_device = compared_uptime(ctx)
        groups = grouped_uptime(ctx, per_device, by, "compared")
        return groups, grouped_uptime(ctx, per_device, "scope", "compared").get(scope, Uptime())
    key = dimension_key(ctx.inventory, by)
    sums: dict[str, list[int]] = {}
    available = scheduled = 0
    for d, f in figures.items():
        available += f.available_ms
        scheduled += f.scheduled_ms
        g = key(d)
        if g is None:
            continue
        acc = sums.get(g)
        if acc is None:
            acc = sums[g] = [0, 0, 0]
        acc[0] += f.available_ms
        acc[1] += f.scheduled_ms
        acc[2] += 1
    groups = {g: Uptime(scheduled_ms=s, available_ms=a, devices=n) for g, (a, s, n) in sums.items()}
    whole = Uptime(scheduled_ms=scheduled, available_ms=available, devices=len(figures))
    return groups, whole if figures else Uptime()


def group_target(
    per_device: dict[str, Uptime], key: Callable[[str], str | None], target: Callable[[str], float]
) -> dict[str, float | None]:
    """A group's uptime target: its devices' common target, or, for a group across tiers,
    the S-weighted mean of theirs (it meets its target when ΣA reaches Σ target x S);
    None when the group has no scheduled time and mixed targets."""
    weights: dict[str, list[float]] = {}
    seen: dict[str, set[float]] = {}
    for d, up in per_device.items():
        g = key(d)
        if g is None:
            continue
        t = target(d)
        acc = weights.get(g)
        if acc is None:
            acc = weights[g] = [0.0, 0.0]
            seen[g] = set()
        s = up.scheduled_ms
        acc[0] += t * s
        acc[1] += s
        seen[g].add(t)
    out: dict[str, float | None] = {}
    for g, (num, den) in weights.items():
        if len(seen[g]) == 1:
            out[g] = next(iter(seen[g]))
        else:
            out[g] = num / den if den else None
    return out


def device_targets(ctx: Context) -> dict[str, float]:
    """Each in-fleet device's uptime target (:meth:`Context.target_of`), memoised per
    computation: the roll-ups by several dimensions look each device up once."""
    target = ctx.target_of()
    return ctx.memo(  # type: ignore[no-any-return]
        ("device_targets", str(ctx.scope), ctx.first, ctx.last),
        lambda: {d: target(d) for d in per_device_uptime(ctx)},
    )


def group_targets(ctx: Context, by: str) -> dict[str, float | None]:
    """:func:`group_target` of the period's devices by ``by`` (``scope``: the whole),
    memoised per computation; a device's own target when ``by`` is ``device``."""

    def compute() -> dict[str, float | None]:
        per_device = per_device_uptime(ctx)
        target = device_targets(ctx).__getitem__
        if by == "device":  # a group of one device: its target
            if _in_inventory(ctx, per_device, "period"):
                same = cast("dict[str, float | None]", device_targets(ctx))
                return same  # (read, do not change)
            key = dimension_key(ctx.inventory, by)
            return {d: target(d) for d in per_device if key(d) is not None}
        scope = str(ctx.scope)
        if by in NESTED[1:]:
            common = _common_targets(ctx, by)
            if common is not None:
                return common
        key = (lambda _d: scope) if by == "scope" else dimension_key(ctx.inventory, by)
        return group_target(per_device, key, target)

    return ctx.memo(  # type: ignore[no-any-return]
        ("group_targets", str(ctx.scope), ctx.first, ctx.last, by), compute
    )


def branch_devices(ctx: Context) -> dict[str, list[str]] | None:
    """The period's devices (:func:`per_device_uptime`) per branch, in their order;
    None when one is not in the inventory. A branch decides its sub-branch and tier
    (:data:`NESTED`), so a figure by either can be added up from the branches'."""

    def compute() -> dict[str, list[str]] | None:
        key = dimension_key(ctx.inventory, "branch")
        out: dict[str, list[str]] = {}
        for d in per_device_uptime(ctx):
            b = key(d)
            if b is None:
                return None
            ids = out.get(b)
            if ids is None:
                out[b] = [d]
            else:
                ids.append(d)
        return out

    return ctx.memo(("branch_devices", str(ctx.scope), ctx.first, ctx.last), compute)  # type: ignore[no-any-return]


def _branch_parents(ctx: Context, branches: dict[str, list[str]], by: str) -> dict[str, str | None]:
    """Each branch's group by ``by`` (branch, subbranch or tier): its devices' (one)."""
    key = dimension_key(ctx.inventory, by)
    return {b: key(ids[0]) for b, ids in branches.items()}


def _common_targets(ctx: Context, by: str) -> dict[str, float | None] | None:
    """:func:`group_target` by ``by`` (branch, subbranch or tier) when each group's
    devices share one target (a target is a tier's: then the group's target is that
    one, whatever its S): from each branch's set of targets, looked up once per device.
    None when a group mixes targets (its S-weighted mean is then added device after
    device, as :func:`group_target` adds it)."""
    branches = branch_devices(ctx)
    if branches is None:
        return None
    per_branch = ctx.memo(
        ("branch_targets", str(ctx.scope), ctx.first, ctx.last),
        lambda: _branch_target_sets(ctx, branches),
    )
    found: dict[str, set[float]] = {}
    for b, parent in _branch_parents(ctx, branches, by).items():
        if parent is None:
            continue
        acc = found.get(parent)
        if acc is None:
            found[parent] = set(per_branch[b])
        else:
            acc.update(per_branch[b])
    if any(len(t) != 1 for t in found.values()):
        return None
    out: dict[str, float | None] = {g: next(iter(t)) for g, t in found.items()}
    return out


def _branch_target_sets(ctx: Context, branches: dict[str, list[str]]) -> dict[str, set[float]]:
    target = device_targets(ctx)
    return {b: {target[d] for d in ids} for b, ids in branches.items()}


def grouped_financial(ctx: Context, by: str) -> dict[str, int]:
    """Counted financial transactions of the period's devices added up by ``by``
    (:func:`financial_per_device`); by branch, sub-branch or tier from the branches'
    sums (integers: the order of the additions does not change them)."""

    def compute() -> dict[str, int]:
        per_device = financial_per_device(ctx)
        if by == "device" and _in_inventory(ctx, per_device_uptime(ctx), "period"):
            return per_device  # a group of one device (read, do not change)
        branches = branch_devices(ctx) if by in NESTED[1:] else None
        if branches is None:
            key = dimension_key(ctx.inventory, by)
            out: dict[str, int] = {}
            for d, n in per_device.items():
                g = key(d)
                if g is not None:
                    out[g] = out.get(g, 0) + n
            return out
        sums = ctx.memo(
            ("branch_financial", str(ctx.scope), ctx.first, ctx.last),
            lambda: {b: sum(per_device[d] for d in ids) for b, ids in branches.items()},
        )
        out = {}
        for b, parent in _branch_parents(ctx, branches, by).items():
            if parent is not None:
                out[parent] = out.get(parent, 0) + sums[b]
        return out

    return ctx.memo(("grouped_financial", str(ctx.scope), ctx.first, ctx.last, by), compute)  # type: ignore[no-any-return]


def uptime_report(
    ctx: Context, by: str, previous: bool = False, below_target_only: bool = False
) -> Report:
    """开机率 by ``by``; ``below_target_only``: only the rows that miss their target
    (``meets_target`` false; the total is the whole scope's all the same)."""
    per_device = per_device_uptime(ctx)
    dimension_key(ctx.inventory, by)  # refuses an unknown dimension
    scope = str(ctx.scope)
    groups = grouped_uptime(ctx, per_device, by)
    whole = grouped_uptime(ctx, per_device, "scope").get(scope, Uptime())
    before: dict[str, Uptime] = {}
    before_whole: Uptime | None = None
    if previous:
        earlier = ctx.shifted((ctx.last - ctx.first).days + 1)
        before, before_whole = compared_groups(earlier, by)  # only their ratios are shown
    targets = group_targets(ctx, by)
    whole_target = group_targets(ctx, "scope").get(scope)
    financial = grouped_financial(ctx, by)
    if below_target_only:  # (filtered first: fewer to sort)
        shown = sorted(
            (g, up) for g, up in groups.items()
            if (r := up.ratio) is not None and (t := targets.get(g)) is not None and r < t
        )  # fmt: skip
    else:
        shown = sorted(groups.items())
    rows = [
        uptime_row(
            g, up, targets.get(g), before.get(g, Uptime()) if previous else None,
            financial.get(g, 0),
        )
        for g, up in shown
    ]  # fmt: skip
    columns = ["group", "devices", "uptime", "target", "meets_target", "technical", "coverage",
               "scheduled_ms", "down_ms", "unknown_ms", "planned_ms", "main_cause"]  # fmt: skip
    if previous:
        columns[4:4] = ["previous", "change"]
    return Report(
        f"开机率 uptime {ctx.first}..{ctx.last}, {ctx.scope}, by {by}",
        columns,
        rows,
        {"period": [ctx.first, ctx.last], "scope": scope, "by": by,
         "total": uptime_row(scope, whole, whole_target, before_whole,
                             sum(financial.values())),
         "targets": {t.value: v for t, v in ctx.rules.uptime.targets.items()},
         "uptime (total)": whole.ratio, "coverage (total)": whole.coverage},
    )  # fmt: skip


# ------------------------------------------------------------------ resource warnings


def resource_row(
    name: str, rw: ResourceWarning, up: Uptime | None, target: float | None, rank: int | None
) -> dict[str, Any]:
    rate = rw.rate
    return {
        "group": name,
        "rank": rank,
        "devices": rw.devices,
        "rate": rate,
        "target": target,
        "meets_target": None if rate is None or target is None else rate <= target,
        "warning_ms": rw.warning_ms,
        "scheduled_ms": rw.scheduled_ms,
        "uptime": None if up is None else up.ratio,
    }


def resource_report(ctx: Context, by: str) -> Report:
    """资源预警率 W/S by ``by``, ranked ascending (lower is better; no data last, unranked),
    with each group's 开机率 beside it."""
    per_device = ctx.memo(
        ("resource_per_device", str(ctx.scope), ctx.first, ctx.last),
        lambda: {d: resource_total(days.values()) for d, days in ctx.resource_days().items()},
    )
    key = dimension_key(ctx.inventory, by)
    scope = str(ctx.scope)
    groups = resource_rollup(per_device, key)
    whole = resource_rollup(per_device, lambda _d: scope).get(scope, ResourceWarning())
    up_device = per_device_uptime(ctx)
    up_groups = grouped_uptime(ctx, up_device, by)
    up_whole = grouped_uptime(ctx, up_device, "scope").get(scope)
    target = ctx.rules.resource_warning.target
    rows = [
        resource_row(g, groups[g], up_groups.get(g), target, rank)
        for rank, g in ranked({g: rw.rate for g, rw in groups.items()})
    ]
    return Report(
        f"资源预警率 resource warnings {ctx.first}..{ctx.last}, {ctx.scope}, by {by} "
        "(lower is better)",
        ["rank", "group", "devices", "rate", "target", "meets_target", "warning_ms",
         "scheduled_ms", "uptime"],
        rows,
        {"period": [ctx.first, ctx.last], "scope": scope, "by": by,
         "total": resource_row(scope, whole, up_whole, target, None),
         "rate (total)": whole.rate, "target": target},
    )  # fmt: skip


# --------------------------------------------------------------------- substitution


def unit_entries(ctx: Context) -> list[tuple[str, Volumes]]:
    """(unit, volumes) of every unit-day of the period in the scope (memoised: read, do
    not change)."""
    return ctx.memo(  # type: ignore[no-any-return]
        ("unit_entries", str(ctx.scope), ctx.first, ctx.last), lambda: _unit_entries(ctx)
    )


def _unit_entries(ctx: Context) -> list[tuple[str, Volumes]]:
    held = ctx.cache.get(("txn", ctx.first, ctx.last))
    if held is None and ctx.first != ctx.last:
        return _unit_entries_grouped(ctx)
    txn = ctx.txn()
    counters = ctx.memo(("counters", ctx.first, ctx.last),
                        lambda: ctx.feed.counters(ctx.first, ctx.last))  # fmt: skip
    scope_key = branch_key(ctx.inventory, ctx.scope.kind)
    entries = []
    day = ctx.first
    while day <= ctx.last:
        # device_counts of each device's one day, made directly (the sum of one day's
        # counts is that day's counts)
        counts = {
            d: DeviceCounts(x.financial, x.non_financial)
            for d, t in txn.items()
            if (x := t.get(day)) is not None
        }
        for unit, vol in unit_volumes(ctx.inventory, counts, counters.get(day, {}), day).items():
            if scope_key(unit) == ctx.scope.value:
                entries.append((unit, vol))
        day += timedelta(days=1)
    return entries


@dataclass(frozen=True, slots=True)
class FleetDates:
    """The two inventory dates of a group of devices (:func:`rules.fleet.in_fleet`)."""

    commissioned: date
    decommissioned: date | None


def _unit_entries_grouped(ctx: Context) -> list[tuple[str, Volumes]]:
    """:func:`_unit_entries` of a period longer than a day, without reading its device-days:
    the database sums the counted transactions per unit, day and commissioning dates
    (:meth:`rules.feed.Feed.txn_unit_days`), a group is kept on the days its devices are
    in the fleet, and the on-site devices are counted per day from the inventory. The
    same per-unit-day sums as :func:`rules.substitution.unit_volumes` of each day, so the
    same entries: each day its outlets in the inventory's order, then the other units
    with transactions that day."""
    inv = ctx.inventory
    counters = ctx.memo(("counters", ctx.first, ctx.last),
                        lambda: ctx.feed.counters(ctx.first, ctx.last))  # fmt: skip
    scope_key = branch_key(inv, ctx.scope.kind)
    period = days(ctx.first, ctx.last)
    n = len(period)
    index = {day: i for i, day in enumerate(period)}
    chosen: list[tuple[str, str, bool, date, date | None]] = []
    on_site_diff: dict[str, list[int]] = {}  # unit -> +1/-1 where on-site devices come and go
    for d in inv.devices:
        unit = unit_of(inv, d.id)
        if unit is None:
            continue
        on_site = d.placement is Placement.ON_SITE
        chosen.append((d.id, unit, on_site, d.commissioned, d.decommissioned))
        if on_site:
            lo = max(0, (d.commissioned - ctx.first).days)
            hi = n if d.decommissioned is None else min(n, (d.decommissioned - ctx.first).days)
            if lo < hi:
                diff = on_site_diff.get(unit)
                if diff is None:
                    diff = on_site_diff[unit] = [0] * (n + 1)
                diff[lo] += 1
                diff[hi] -= 1
    on_site_n: dict[str, list[int]] = {}
    for unit, diff in on_site_diff.items():
        running, counts = 0, []
        for i in range(n):
            running += diff[i]
            counts.append(running)
        on_site_n[unit] = counts
    outlets = [b.id for b in inv.branches if b.kind is BranchKind.OUTLET]
    per_day: list[dict[str, list[int]]] = [{u: [0, 0, 0] for u in outlets} for _ in period]
    for unit, day, since, until, fin, non_fin, site_fin in ctx.feed.txn_unit_days(
        ctx.first, ctx.last, chosen
    ):
        at = index.get(day)
        if at is None or not in_fleet(FleetDates(since, until), day):
            continue
        row = per_day[at].get(unit)
        if row is None:
            row = per_day[at][unit] = [0, 0, 0]
        row[0] += fin
        row[1] += fin + non_fin
        row[2] += site_fin
    order = {b.id: k for k, b in enumerate(inv.branches)}
    entries = []
    for i, day in enumerate(period):
        units = per_day[i]
        day_counters = counters.get(day, {})
        extra = sorted(set(units) - set(outlets), key=lambda u: (order.get(u, len(order)), u))
        for unit in [*outlets, *extra]:
            if scope_key(unit) != ctx.scope.value:
                continue
            fin, tot, on_site_fin = units[unit]
            counter = day_counters.get(unit)
            sites = on_site_n.get(unit)
            entries.append((unit, Volumes(
                self_financial=fin, self_total=tot, on_site_financial=on_site_fin,
                counter_financial=counter.financial if counter else None,
                counter_total=counter.financial + counter.non_financial if counter else None,
                on_site_devices=sites[i] if sites else 0,
            )))  # fmt: skip
    return entries


def period_txn(ctx: Context) -> dict[str, TxnDay]:
    """Per device with transactions in the period, its counted transactions summed over
    the period (one grouped read, :meth:`rules.feed.Feed.txn_period`; memoised)."""
    return ctx.memo(  # type: ignore[no-any-return]
        ("period_txn", ctx.first, ctx.last), lambda: ctx.feed.txn_period(ctx.first, ctx.last)
    )


def period_fees(ctx: Context) -> dict[str, tuple[Decimal, int]]:
    """Per device with transactions in the period: (Σ fee, Σ transactions carrying a
    fee), counted ones only; from :meth:`Context.txn` when this computation holds it (or
    the period is one day), else from the period's sums (:func:`period_txn`)."""
    if ctx.first != ctx.last and ("txn", ctx.first, ctx.last) not in ctx.cache:
        return {d: (t.fee, t.fee_txns) for d, t in period_txn(ctx).items()}
    return {
        d: (sum((x.fee for x in t.values()), Decimal("0")), sum(x.fee_txns for x in t.values()))
        for d, t in ctx.txn().items()
    }


def substitution_row(name: str, s: Substitution, rules: Rules) -> dict[str, Any]:
    return {
        "group": name,
        "rate": s.rate,
        "meets_target": None if s.rate is None else s.rate >= rules.substitution.target,
        "on_site_rate": s.on_site_rate,
        "on_site_meets_target": None
        if s.on_site_rate is None
        else s.on_site_rate >= rules.substitution.on_site_target,
        "diversion": s.diversion,
        "self_financial": s.financial_self_all,
        "self_financial_with_counter": s.financial_self,
        "counter_financial": s.financial_counter,
        "unit_days": s.entries,
        "without_counter": s.entries_without_counter,
        "reason": s.reason,
    }


def substitution_report(ctx: Context, by: str) -> Report:
    ctx.scope.require(GEOGRAPHIC, "substitution is per branch")
    if by not in GEOGRAPHIC:
        raise UsageError(f"--by {by}: allowed for substitution: {', '.join(GEOGRAPHIC)}")
    entries = unit_entries(ctx)
    groups = substitution(entries, branch_key(ctx.inventory, by))
    scope = str(ctx.scope)
    whole = substitution(entries, lambda _u: scope).get(scope, Substitution())
    return Report(
        f"账务性交易替代率 substitution {ctx.first}..{ctx.last}, {ctx.scope}, by {by}",
        ["group", "rate", "meets_target", "on_site_rate", "diversion", "self_financial",
         "counter_financial", "unit_days", "without_counter", "reason"],
        [substitution_row(g, s, ctx.rules) for g, s in sorted(groups.items())],
        {"period": [ctx.first, ctx.last], "scope": scope,
         "total": substitution_row(scope, whole, ctx.rules),
         "target": ctx.rules.substitution.target,
         "on_site_target": ctx.rules.substitution.on_site_target, "rate (total)": whole.rate,
         "note": "rate: unit-days with counter volume only; self_financial: every unit-day"},
    )  # fmt: skip


# ------------------------------------------------------------------------ low yield


def share_row(name: str, s: Share) -> dict[str, Any]:
    return {"group": name, "low": s.low, "evaluated": s.evaluated, "share": s.share,
            "max_share": s.max_share, "meets_target": s.meets_target, "exempt": s.exempt,
            "not_evaluated_coverage": s.not_evaluated_coverage,
            "low_efficiency": s.low_efficiency}  # fmt: skip


def flag_row(f: YieldFlag, margin: float | None = None) -> dict[str, Any]:
    """A device's row (``margin``: its ``f.margin``, when the caller has it already)."""
    return {"group": f.device_id, "status": f.status.value, "average": f.daily_average,
            "threshold": f.threshold, "margin": f.margin if margin is None else margin,
            "days_counted": f.days_counted, "monitored_days": f.monitored_days,
            "uptime": f.uptime, "low_efficiency": f.low_efficiency}  # fmt: skip


def low_yield_report(ctx: Context, by: str, devices: bool = True) -> Report:
    """低产 shares by ``by``; ``devices``: with the section listing every device (the
    daily bulletin shows the shares only: without it, no row per device is made)."""
    if ctx.first != ctx.last:
        raise UsageError("low-yield is evaluated on one date: use --date")
    flags = ctx.flags()
    max_share = ctx.rules.low_yield.max_share
    shares = low_yield_share(flags, dimension_key(ctx.inventory, by), max_share)
    scope = str(ctx.scope)
    whole = low_yield_share(flags, lambda _d: scope, max_share)
    whole_row = share_row(scope, whole.get(scope, Share(max_share=max_share)))
    sections = [low_yield_devices(flags)] if devices else []
    return Report(
        f"低产 low-yield on {ctx.last} ({ctx.rules.low_yield.window_days}-day window), "
        f"{ctx.scope}, by {by}",
        ["group", "low", "evaluated", "share", "meets_target", "exempt",
         "not_evaluated_coverage", "low_efficiency"],
        [share_row(g, s) for g, s in sorted(shares.items())],
        {"date": ctx.last, "scope": scope, "total": whole_row, "share (total)": whole_row["share"],
         "max_share": max_share, "min_monitored_days": ctx.rules.low_yield.min_monitored_days},
        sections,
    )  # fmt: skip


def low_yield_devices(flags: Iterable[YieldFlag]) -> Report:
    """The devices section of :func:`low_yield_report`: every device evaluated (lowest
    margin first), then those not evaluated. Each row is :func:`flag_row`'s, made inline
    (a fleet lists 100,000): the margin worked out once as ``YieldFlag.margin`` does,
    the status's value looked up, the rows sorted as plain tuples (the flag's place in
    ``flags`` last: equal keys keep their order, as a stable sort keeps them)."""
    order = {YieldStatus.LOW: 0, YieldStatus.OK: 1, YieldStatus.COVERAGE: 2,
             YieldStatus.EXEMPT: 3, YieldStatus.NOT_EVALUATED: 4}  # fmt: skip
    value = {s: s.value for s in YieldStatus}
    low, ok = YieldStatus.LOW, YieldStatus.OK
    flags = flags if isinstance(flags, list) else list(flags)
    margins = [
        None if (s is not low and s is not ok) or a is None or t is None else a - t
        for s, a, t in zip(
            map(_STATUS, flags), map(_AVERAGE, flags), map(_THRESHOLD, flags), strict=True
        )
    ]
    keys = sorted(
        zip(
            map(order.__getitem__, map(_STATUS, flags)),
            [0.0 if m is None else m for m in margins],
            map(_DEVICE_ID, flags),
            range(len(flags)),
            strict=True,
        )
    )
    places = list(map(_PLACE, keys))
    rows = [
        {"group": f.device_id, "status": value[f.status], "average": f.daily_average,
         "threshold": f.threshold, "margin": m, "days_counted": f.days_counted,
         "monitored_days": f.monitored_days, "uptime": f.uptime,
         "low_efficiency": f.low_efficiency}
        for f, m in zip(map(flags.__getitem__, places), map(margins.__getitem__, places),
                        strict=True)
    ]  # fmt: skip
    return Report(
        "devices: every one evaluated (lowest margin first), then those not evaluated",
        ["group", "status", "average", "threshold", "margin", "days_counted", "monitored_days",
         "uptime", "low_efficiency"],
        rows,
        {"key": "devices"},
    )  # fmt: skip


_STATUS = attrgetter("status")
_AVERAGE = attrgetter("daily_average")
_THRESHOLD = attrgetter("threshold")
_DEVICE_ID = attrgetter("device_id")
_PLACE = itemgetter(3)


# ----------------------------------------------------------------------------- tail


def tail_entries(
    ctx: Context, rank: str, group: str, unit: str = "device", earlier: bool = False
) -> list[Entry]:
    """The ranking of the scope's devices (or their branches) within each ``group``:
    uptime against the tier's uptime target, or daily financial volume (over the days
    with scheduled time) against the low-yield threshold (a branch: the sum of its
    devices' thresholds). A branch's uptime is ΣA/ΣS over its devices. ``earlier``: a
    period compared with (the same entries, from the kept days when it is one day)."""
    inv = ctx.inventory
    figures = day_figures(ctx) if earlier else None
    # A one-day period compared with: each device's DayFigures stands for its Uptime (the
    # same scheduled_ms, ratio, down_ms, has_data: all that a device's entry reads),
    # without an Uptime made per device and period; a roll-up by branch adds Uptimes.
    per_device: Mapping[str, Uptime] = (
        per_device_uptime(ctx) if figures is None
        else cast("Mapping[str, Uptime]", figures) if unit == "device"
        else {d: f.uptime for d, f in figures.items()}
    )  # fmt: skip
    if unit == "branch":
        branch_of = {d.id: d.branch for d in inv.devices}
        of: Callable[[str], str] = branch_of.__getitem__
        key = branch_key(inv, group)
        tier_target = {
            b.id: ctx.rules.uptime.targets[inv.subbranch_by_id[b.subbranch].tier]
            for b in inv.branches
        }
        target: Callable[[str], float] = tier_target.__getitem__
    else:
        of, key, target = str, dimension_key(inv, group), ctx.target_of()
    if rank == "uptime":
        # A device is its own unit: its figures as they are (a roll-up of one).
        units = per_device if unit == "device" else rollup(per_device, of)
        return uptime_entries(units, key, target)
    thresholds = ctx.rules.low_yield.thresholds
    if figures is not None:  # one day: financial transactions and S of that day
        fin = {d: f.financial for d, f in figures.items()}
        with_data: dict[str, set[date]] | None = None
        data_days = {d: 1 if f.has_data else 0 for d, f in figures.items()}
    elif unit == "device":  # only how many days each has with data
        per_day = ctx.uptime_days().per_device
        fin = financial_per_device(ctx)  # keyed as per_device
        data_days = {d: sum(1 for v in per_day[d].values() if v.has_data) for d in per_device}
    else:
        per_day = ctx.uptime_days().per_device
        fin = financial_per_device(ctx)
        with_data = {d: {k for k, v in per_day[d].items() if v.has_data} for d in per_device}
        data_days = {d: len(v) for d, v in with_data.items()}
    if unit == "device":  # each device its own unit: the sums below are its own figures
        return volume_entries(
            fin if figures is None else {d: fin[d] for d in per_device},
            {d: up.scheduled_ms for d, up in per_device.items()},
            key, data_days, _volume_limits(ctx).get,
        )  # fmt: skip
    if with_data is None:
        with_data = {d: {ctx.first} if n else set() for d, n in data_days.items()}
    volumes: dict[str, int] = {}
    scheduled: dict[str, int] = {}
    days_with_data: dict[str, set[date]] = {}
    limit: dict[str, float | None] = {}
    for d, up in per_device.items():
        u = of(d)
        volumes[u] = volumes.get(u, 0) + fin[d]
        scheduled[u] = scheduled.get(u, 0) + up.scheduled_ms
        days_with_data.setdefault(u, set()).update(with_data[d])
        own = thresholds.get(inv.device_by_id[d].type)
        if own is not None:
            limit[u] = (limit.get(u) or 0.0) + own
        else:
            limit.setdefault(u, None)
    return volume_entries(
        volumes, scheduled, key, {u: len(v) for u, v in days_with_data.items()}, limit.get
    )


def _earlier_tail(
    ctx: Context, rank: str, group: str, size: int
) -> tuple[set[str], set[str], bool] | None:
    """What :func:`tail_report` takes of an earlier one-day period's device ranking
    (:func:`tail_entries` with ``earlier``): the ids in its tail, the ids without data,
    and whether any has data, from the value, tie-break and target :func:`tail_entries`
    gives each device, without an :class:`Entry` per device: only who falls short (the
    only ones :func:`rules.tail.tail` keeps) is held, and only the ``size`` worst of each
    group sorted. None when the period is not one day (the caller then takes the
    entries)."""
    figures = day_figures(ctx)
    if figures is None:
        return None
    key = dimension_key(ctx.inventory, group)
    # Per group, (value, -tie-break, id) of each who falls short: the order of
    # rules.tail.tail (ascending value, then the larger tie-break, then the id).
    short: dict[str, list[tuple[float, float, str]]] = {}
    none: set[str] = set()
    any_data = False
    if rank == "uptime":
        target = ctx.target_of()
        for ident, f in figures.items():
            g = key(ident)
            if g is None:
                continue
            sched = f.scheduled_ms
            if not sched:
                none.add(ident)
                continue
            any_data = True
            value = f.available_ms / sched
            if value < target(ident):
                at = short.get(g)
                if at is None:
                    at = short[g] = []
                at.append((value, -float(sched - f.available_ms), ident))
    else:
        limits = _volume_limits(ctx)
        for ident, f in figures.items():
            g = key(ident)
            limit = limits.get(ident)
            if g is None or limit is None:
                continue
            sched = f.scheduled_ms
            if sched <= 0:  # no day with data (or no scheduled time): no data
                none.add(ident)
                continue
            any_data = True
            value = float(f.financial) / 1
            if value < limit:
                at = short.get(g)
                if at is None:
                    at = short[g] = []
                at.append((value, -float(sched), ident))
    ids = {ident for members in short.values() for *_, ident in heapq.nsmallest(size, members)}
    return ids, none, any_data


def _volume_limits(ctx: Context) -> dict[str, float | None]:
    """Every inventory device's own low-yield threshold (as a float; None: its type has
    none), made once for the computation: a tail asks it in four periods."""
    thresholds = ctx.rules.low_yield.thresholds
    return ctx.memo(  # type: ignore[no-any-return]
        ("volume_limits",),
        lambda: {
            d.id: None if (own := thresholds.get(d.type)) is None else 0.0 + own
            for d in ctx.inventory.devices
        },
    )


def tail_report(
    ctx: Context,
    rank: str,
    group: str,
    size: int | None = None,
    history: int | None = None,
    unit: str = "device",
) -> Report:
    """The bottom ``size`` devices (or branches) of who falls short in each group, with
    streaks over up to ``history`` earlier periods of the same length (rules: tail.size,
    tail.history_periods)."""
    if group not in ("subbranch", "tier"):
        raise UsageError(f"--group {group}: allowed: subbranch, tier")
    if unit not in ("device", "branch"):
        raise UsageError(f"--unit {unit}: allowed: device, branch")
    n = size or ctx.rules.tail.size
    periods = ctx.rules.tail.history_periods if history is None else history
    length = (ctx.last - ctx.first).days + 1
    past: list[set[str]] = []
    past_no_data: list[set[str]] = []
    with_data = 0
    for k in range(periods, 0, -1):
        shifted = ctx.shifted(k * length)
        lean = _earlier_tail(shifted, rank, group, n) if unit == "device" else None
        if lean is not None:
            ids, none, any_data = lean
            past.append(ids)
            past_no_data.append(none)
            with_data += any_data
            continue
        earlier = tail_entries(shifted, rank, group, unit, earlier=True)
        members = tail(earlier, n)
        past.append({m.id for ms in members.values() for m in ms})
        past_no_data.append({e.id for e in earlier if e.value is None})
        with_data += any(e.value is not None for e in earlier)
    entries = tail_entries(ctx, rank, group, unit)
    tails = tail(entries, n, past, past_no_data)
    value_key = "uptime" if rank == "uptime" else "daily_financial"
    rows = [
        {"group": m.group, "position": m.position, unit: m.id, value_key: m.value,
         "target": m.target, "streak": m.streak}
        for members in tails.values()
        for m in members
    ]  # fmt: skip
    groups: dict[str, dict[str, int]] = {}
    for e in entries:
        g = groups.setdefault(e.group, {"ranked": 0, "short": 0, "no_data": 0})
        g["ranked" if e.value is not None else "no_data"] += 1
        g["short"] += e.short
    summary = Report(
        f"groups: who falls short ({'below the uptime target' if rank == 'uptime' else 'below the low-yield threshold'})",
        ["group", "ranked", "short", "no_data", "note"],
        [{"group": g, **c, "note": None if c["short"] else "nobody below target"}
         for g, c in sorted(groups.items())],
        {"key": "groups"},
    )  # fmt: skip
    missing = Report(
        "no data in the period (not ranked)",
        ["group", unit],
        [{"group": g, unit: d} for g, ids in no_data(entries).items() for d in ids],
        {"key": "no_data"},
    )
    return Report(
        f"剁尾巴 tail: the {n} {unit}s lowest below target by {rank} within each {group}, "
        f"{ctx.first}..{ctx.last}, {ctx.scope}",
        ["group", "position", unit, value_key, "target", "streak"],
        rows,
        {"period": [ctx.first, ctx.last], "scope": str(ctx.scope), "size": n,
         "history_periods": periods, "history_periods_with_data": with_data,
         "empty": "nobody below target"},
        [summary, missing],
    )  # fmt: skip


# -------------------------------------------------------------------------- vendors


def vendor_row(s: VendorScore, high: float) -> dict[str, Any]:
    """A scorecard row: a vendor (model None) or one model of it."""
    return {
        "group": s.vendor if s.model is None else f"{s.vendor} {s.model}",
        "vendor": s.vendor, "model": s.model, "devices": s.devices,
        "technical": s.technical_availability, "incidents": s.incidents,
        "per_device_month": s.incidents_per_device_month,
        "response_median_ms": s.response(0.5), "response_p90_ms": s.response(high),
        "repair_median_ms": s.repair(0.5), "repair_p90_ms": s.repair(high),
        "responded": s.dispatched, "repaired": len(s.repair_ms),
        "response_breaches": s.response_breaches, "repair_breaches": s.repair_breaches,
        "repeats": s.repeats, "repeat_rate": s.repeat_rate, "open": s.open_incidents,
        "worst": " ".join(w.device_id for w in s.worst),
    }  # fmt: skip


def vendors_report(ctx: Context) -> Report:
    """The scorecard per vendor and per model, from the incidents (rules/vendors.py):
    incidents whose outage started in the period; their repairs may come later (up to
    the horizon)."""
    rules = ctx.rules
    per_device = per_device_uptime(ctx)
    lo, hi = ctx.span
    # An incident opens after its outage started (debounce, engine lag): read a day on.
    cycles = ctx.memo(
        ("incident_cycles", lo, hi), lambda: ctx.feed.incident_cycles(lo, hi + 86_400_000)
    )
    scores = scorecard(ctx.devices, per_device, cycles, (lo, hi), ctx.first, ctx.last,
                       rules.vendors)  # fmt: skip
    high = rules.vendors.high_quantile
    return Report(
        f"设备服务厂商考核 vendors {ctx.first}..{ctx.last}, {ctx.scope}",
        ["group", "devices", "technical", "incidents", "per_device_month",
         "response_median_ms", "response_p90_ms", "repair_median_ms", "repair_p90_ms",
         "response_breaches", "repair_breaches", "repeat_rate", "open", "worst"],
        [vendor_row(s, high) for s in scores],
        {"period": [ctx.first, ctx.last], "scope": str(ctx.scope),
         "causes": [c.value for c in rules.vendors.incident_causes],
         "high_quantile": high,
         "note": "response: dispatched -> on site; repair: outage start -> restored"},
    )  # fmt: skip


# -------------------------------------------------------------------------- network


def network_report(ctx: Context) -> Report:
    if ctx.first != ctx.last:
        raise UsageError("the network checks are for one date: use --date")
    ctx.scope.require(GEOGRAPHIC, "the network checks are per branch")
    rules = ctx.rules
    inv = ctx.inventory
    ratios = self_service_bank_ratio(inv, rules.network.self_service_banks_per_outlet)
    up = ctx.uptime_days()
    working = {d for d, per_day in up.per_device.items() if per_day[ctx.last].available_ms > 0}
    gaps = deposit_coverage(inv, ctx.last, working, rules.network.deposit_capable_per_outlet)
    in_scope = set(ctx.scope.subbranches(inv))
    rows = [
        {"group": sub, "outlets": r.outlets, "self_service_banks": r.self_service_banks,
         "ratio": r.ratio, "target": r.target, "meets_target": r.meets_target}
        for sub, r in sorted(ratios.items())
        if sub in in_scope or (sub == "fleet" and ctx.scope.kind == "fleet")
    ]  # fmt: skip
    branch = ctx.scope.value if ctx.scope.kind == "branch" else None
    coverage = Report(
        f"deposit coverage on {ctx.last}: outlets short of "
        f"{rules.network.deposit_capable_per_outlet} deposit-capable device(s) in service",
        ["group", "subbranch", "reason", "installed", "working"],
        [
            {"group": g.branch_id, "subbranch": g.subbranch, "reason": g.reason.value,
             "installed": len(g.devices), "working": g.working}
            for g in gaps
            if g.subbranch in in_scope and (branch is None or g.branch_id == branch)
        ],
        {"key": "deposit_coverage"},
    )  # fmt: skip
    return Report(
        f"网点布局 network on {ctx.last}: self-service banks per outlet "
        f"(target {rules.network.self_service_banks_per_outlet}:1), {ctx.scope}",
        ["group", "outlets", "self_service_banks", "ratio", "meets_target"],
        rows,
        {"date": ctx.last, "scope": str(ctx.scope)},
        [coverage],
    )


# ----------------------------------------------------------------------- assessment


def assessment_report(ctx: Context) -> Report:
    ctx.scope.require(("fleet", "tier"), "the assessment ranks sub-branches")
    inv = ctx.inventory
    by_sub = dimension_key(inv, "subbranch")
    devices = ctx.devices
    per_device = period_uptime(ctx)  # only each device's period is needed
    uptime = rollup(per_device, by_sub)
    subst = substitution(unit_entries(ctx), branch_key(inv, "subbranch"))
    shares = low_yield_share(ctx.flags(), by_sub, ctx.rules.low_yield.max_share)
    rev = revenue([d.id for d in devices], period_fees(ctx), by_sub)
    scored = {s for d in devices if (s := by_sub(d.id))}
    every = ctx.scope.subbranches(inv)
    figures = [
        SubBranchFigures(
            s,
            inv.subbranch_by_id[s].tier,
            uptime[s].ratio if s in uptime else None,
            subst[s].rate if s in subst else None,
            shares[s].share if s in shares else None,
            rev[s].per_device if s in rev else None,
        )
        for s in every
        if s in scored
    ]
    results = assess(figures, ctx.rules)
    fig = {f.subbranch: f for f in figures}
    rows = [
        {"group": a.subbranch, "tier": a.tier.value, "rank": a.rank, "score": a.score,
         "devices": rev[a.subbranch].devices if a.subbranch in rev else 0,
         "uptime": fig[a.subbranch].uptime, "substitution": fig[a.subbranch].substitution,
         "low_yield_share": fig[a.subbranch].low_yield_share,
         "fees": rev[a.subbranch].fees if a.subbranch in rev else None,
         "fee_transactions": rev[a.subbranch].fee_transactions if a.subbranch in rev else None,
         "fees_per_device": fig[a.subbranch].revenue_per_device,
         "missing": ",".join(m.value for m in a.missing) or None}
        for a in results
    ]  # fmt: skip
    rows += [
        {"group": s, "tier": inv.subbranch_by_id[s].tier.value, "rank": None, "score": None,
         "devices": 0, "uptime": None, "substitution": None, "low_yield_share": None,
         "fees": None, "fee_transactions": None, "fees_per_device": None,
         "missing": "not scored: no device in the fleet"}
        for s in every
        if s not in scored
    ]  # fmt: skip
    return Report(
        f"自助业务经营管理考核评价 assessment {ctx.first}..{ctx.last}, {ctx.scope}",
        ["group", "tier", "rank", "score", "devices", "uptime", "substitution",
         "low_yield_share", "fees_per_device", "missing"],
        rows,
        {"period": [ctx.first, ctx.last], "scope": str(ctx.scope)},
    )  # fmt: skip
