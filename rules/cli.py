"""``atmfleet kpi``: the indicators from the store, as a table in the terminal or JSON.

Every subcommand reads through :mod:`rules.feed` (ATMFLEET_DATABASE_URL) with the rules
file (ATMFLEET_RULES_FILE, default the shipped rules). Periods are local days in the
rules' time zone: ``--date D`` or ``--from D --to D`` (default: yesterday); today counts
up to now. ``--scope`` narrows the devices: ``fleet``, ``tier:1``, ``subbranch:ID``,
``branch:ID``, ``device:ID``, ``vendor:NAME``, ``type:atm``.
"""

from __future__ import annotations

import json
import unicodedata
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from datetime import date, datetime, timedelta
from decimal import Decimal
from typing import Any

import click

from atmfleet.cli_types import Day
from atmfleet.errors import UsageError
from atmfleet.inventory import Device, Inventory
from atmfleet.settings import load_settings
from atmfleet.store.connect import connect
from atmfleet.store.migrate import require_current
from rules.assessment import SubBranchFigures, assess
from rules.config import Rules, load_rules
from rules.feed import (
    Feed,
    TxnDay,
    closed,
    device_counts,
    low_yield_for,
    timelines,
    uptime_for,
    window_days,
)
from rules.lowyield import YieldStatus, low_yield_share
from rules.network import deposit_coverage, self_service_bank_ratio
from rules.revenue import revenue
from rules.substitution import Substitution, branch_key, substitution, unit_volumes
from rules.tail import Entry, tail, uptime_entries, volume_entries
from rules.timeline import from_ms
from rules.uptime import Uptime, day_span, dimension_key, rollup, total
from rules.vendors import incidents, mark_repeats, scorecard

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

    def devices(self, inventory: Inventory) -> list[Device]:
        key = dimension_key(inventory, self.kind)
        chosen = [d for d in inventory.devices if key(d.id) == self.value]
        if not chosen:
            known = sorted({k for d in inventory.devices if (k := key(d.id)) is not None})
            shown = ", ".join(known[:12]) + (", ..." if len(known) > 12 else "")
            raise UsageError(
                f"--scope {self}: no {self.kind} {self.value!r} in the inventory "
                f"(known: {shown or 'none: load the inventory with `atmfleet db load-inventory`'})"
            )
        return chosen


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
    feed: Feed
    rules: Rules
    inventory: Inventory
    scope: Scope
    devices: list[Device]
    first: date
    last: date
    horizon: int  # now, ms

    @property
    def span(self) -> tuple[int, int]:
        return day_span(self.first, self.rules.tz)[0], day_span(self.last, self.rules.tz)[1]


@contextmanager
def opened(scope: str, on: date | None, first: date | None, last: date | None) -> Iterator[Context]:
    settings = load_settings()
    rules = load_rules(settings.rules_file)
    with connect(settings.require_database_url(), application_name="atmfleet-kpi") as conn:
        require_current(conn)
        feed = Feed(conn, rules)
        horizon = feed.now_ms()
        today = from_ms(horizon).astimezone(rules.tz).date()
        period = resolve_period(on, first, last, today)
        inventory = feed.inventory()
        chosen = Scope.parse(scope)
        yield Context(feed, rules, inventory, chosen, chosen.devices(inventory), *period, horizon)


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


def _width(text: str) -> int:
    return sum(2 if unicodedata.east_asian_width(c) in "WF" else 1 for c in text)


#: Columns shown as percentages in the terminal (JSON keeps the ratio).
PERCENT = {"uptime", "technical", "rate", "on_site_rate", "diversion", "share",
           "substitution", "low_yield_share"}  # fmt: skip


def _cell(column: str, value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        if column in PERCENT:
            return f"{value * 100:.2f}%"
        return f"{value:.2f}"
    return str(value)


def render(report: Report) -> str:
    lines = [report.title]
    for key, value in report.extra.items():
        if key != "key" and not isinstance(value, (dict, list)):
            lines.append(f"  {key}: {value}")
    if report.rows:
        cells = [[_cell(c, r.get(c)) for c in report.columns] for r in report.rows]
        numeric = [
            all(
                isinstance(r.get(c), (int, float, Decimal)) or r.get(c) is None for r in report.rows
            )
            for c in report.columns
        ]
        widths = [
            max([_width(c)] + [_width(row[i]) for row in cells])
            for i, c in enumerate(report.columns)
        ]

        def line(values: Sequence[str], header: bool = False) -> str:
            out = []
            for v, w, num in zip(values, widths, numeric, strict=True):
                pad = " " * (w - _width(v))
                out.append(pad + v if num and not header else v + pad)
            return "  ".join(out).rstrip()

        lines.append(line(report.columns, header=True))
        lines.append("  ".join("-" * w for w in widths))
        lines.extend(line(row) for row in cells)
    else:
        lines.append("  (nothing)")
    for s in report.sections:
        lines.append("")
        lines.append(render(s))
    return "\n".join(lines)


def emit(report: Report, as_json: bool) -> None:
    if as_json:
        click.echo(json.dumps(report.as_json(), ensure_ascii=False, indent=1, default=_json))
    else:
        click.echo(render(report))


def _json(value: Any) -> Any:
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, (date, datetime)):
        return value.isoformat()
    raise TypeError(type(value).__name__)


def _hours(value: int) -> float:
    return round(value / HOUR_MS, 3)


def _ratio(value: float | None) -> float | None:
    return None if value is None else round(value, 6)


# --------------------------------------------------------------------------- reports


def uptime_row(name: str, up: Uptime) -> dict[str, Any]:
    causes = {c.value: v for c, v in up.down_by_cause().items() if v}
    worst = max(causes, key=lambda c: causes[c]) if causes else None
    return {
        "group": name,
        "devices": up.devices,
        "uptime": _ratio(up.ratio),
        "technical": _ratio(up.tech_ratio),
        "scheduled_h": _hours(up.scheduled_ms),
        "available_h": _hours(up.available_ms),
        "down_h": _hours(up.down_ms),
        "unknown_h": _hours(up.unknown_ms),
        "main_cause": worst,
        "down_ms_by_cause": causes,
    }


def per_device_uptime(ctx: Context) -> dict[str, Uptime]:
    data = uptime_for(ctx.feed, ctx.devices, ctx.first, ctx.last, ctx.horizon)
    return {d: total(per_day.values()) for d, per_day in data.per_device.items()}


def uptime_report(ctx: Context, by: str) -> Report:
    per_device = per_device_uptime(ctx)
    groups = rollup(per_device, dimension_key(ctx.inventory, by))
    whole = rollup(per_device, lambda _d: str(ctx.scope))[str(ctx.scope)]
    targets = {t.value: v for t, v in ctx.rules.uptime.targets.items()}
    rows = [uptime_row(g, up) for g, up in sorted(groups.items())]
    return Report(
        f"开机率 uptime {ctx.first}..{ctx.last}, {ctx.scope}, by {by}",
        ["group", "devices", "uptime", "technical", "scheduled_h", "down_h", "unknown_h", "main_cause"],
        rows,
        {"period": [ctx.first, ctx.last], "scope": str(ctx.scope), "by": by,
         "total": uptime_row(str(ctx.scope), whole), "targets": targets,
         "uptime (total)": _ratio(whole.ratio)},
    )  # fmt: skip


def txn_in_period(ctx: Context) -> dict[str, dict[date, TxnDay]]:
    return ctx.feed.txn_days(ctx.first, ctx.last)


def substitution_report(ctx: Context, by: str) -> Report:
    if ctx.scope.kind not in ("fleet", "tier", "subbranch", "branch"):
        raise UsageError(
            f"--scope {ctx.scope}: substitution is per branch; use fleet, tier, subbranch or branch"
        )
    if by not in ("branch", "subbranch", "tier", "fleet"):
        raise UsageError(f"--by {by}: allowed for substitution: branch, subbranch, tier, fleet")
    txn = txn_in_period(ctx)
    counters = ctx.feed.counters(ctx.first, ctx.last)
    scope_key = branch_key(ctx.inventory, ctx.scope.kind if ctx.scope.kind != "fleet" else "fleet")
    entries = []
    day = ctx.first
    while day <= ctx.last:
        counts = {
            d.id: device_counts({d.id: {day: txn[d.id][day]}})[d.id]
            for d in ctx.inventory.devices
            if day in txn.get(d.id, {})
        }
        for unit, vol in unit_volumes(ctx.inventory, counts, counters.get(day, {})).items():
            if scope_key(unit) == ctx.scope.value:
                entries.append((unit, vol))
        day += timedelta(days=1)
    groups = substitution(entries, branch_key(ctx.inventory, by))
    whole = substitution(entries, lambda _u: "all").get("all", Substitution())

    def row(name: str, s: Substitution) -> dict[str, Any]:
        return {
            "group": name,
            "rate": _ratio(s.rate),
            "on_site_rate": _ratio(s.on_site_rate),
            "diversion": _ratio(s.diversion),
            "self_financial": s.financial_self,
            "counter_financial": s.financial_counter,
            "unit_days": s.entries,
            "without_counter": s.entries_without_counter,
        }

    return Report(
        f"账务性交易替代率 substitution {ctx.first}..{ctx.last}, {ctx.scope}, by {by}",
        ["group", "rate", "on_site_rate", "diversion", "self_financial", "counter_financial",
         "unit_days", "without_counter"],
        [row(g, s) for g, s in sorted(groups.items())],
        {"period": [ctx.first, ctx.last], "scope": str(ctx.scope), "total": row("total", whole),
         "target": ctx.rules.substitution.target, "rate (total)": _ratio(whole.rate)},
    )  # fmt: skip


def low_yield_report(ctx: Context, by: str) -> Report:
    if ctx.first != ctx.last:
        raise UsageError("low-yield is evaluated on one date: use --date")
    flags = low_yield_for(ctx.feed, ctx.inventory, ctx.devices, ctx.last, ctx.horizon)
    shares = low_yield_share(flags, dimension_key(ctx.inventory, by), ctx.rules.low_yield.max_share)
    whole = low_yield_share(flags, lambda _d: "all", ctx.rules.low_yield.max_share).get("all")
    rows = [
        {"group": g, "low": s.low, "evaluated": s.evaluated, "share": _ratio(s.share),
         "meets_target": s.meets_target, "exempt": s.exempt, "low_efficiency": s.low_efficiency}
        for g, s in sorted(shares.items())
    ]  # fmt: skip
    low = [
        {"group": f.device_id, "average": round(f.daily_average or 0.0, 2),
         "threshold": f.threshold, "days_counted": f.days_counted, "uptime": _ratio(f.uptime)}
        for f in sorted(flags, key=lambda f: (f.daily_average or 0.0, f.device_id))
        if f.status is YieldStatus.LOW
    ]  # fmt: skip
    devices = Report(
        "low-yield devices (lowest average first)",
        ["group", "average", "threshold", "days_counted", "uptime"],
        low,
        {"key": "devices"},
    )
    return Report(
        f"低产 low-yield on {ctx.last} ({ctx.rules.low_yield.window_days}-day window), "
        f"{ctx.scope}, by {by}",
        ["group", "low", "evaluated", "share", "meets_target", "exempt", "low_efficiency"],
        rows,
        {"date": ctx.last, "scope": str(ctx.scope),
         "share (total)": _ratio(whole.share) if whole else None,
         "max_share": ctx.rules.low_yield.max_share},
        [devices],
    )  # fmt: skip


def _tail_entries(ctx: Context, rank: str, key: Callable[[str], str | None]) -> list[Entry]:
    per_device = per_device_uptime(ctx)
    if rank == "uptime":
        return uptime_entries(per_device, key)
    counts = device_counts(txn_in_period(ctx))
    volumes = {d.id: counts[d.id].financial if d.id in counts else 0 for d in ctx.devices}
    scheduled = {d: up.scheduled_ms for d, up in per_device.items()}
    return volume_entries(volumes, scheduled, key)


def tail_history(
    ctx: Context, rank: str, key: Callable[[str], str | None], size: int, periods: int
) -> list[set[str]]:
    """The tail members of up to ``periods`` earlier periods of the same length, oldest
    first; periods that begin before the oldest stored data are left out (no history)."""
    length = (ctx.last - ctx.first).days + 1
    oldest = ctx.feed.first_run_ms()
    past: list[set[str]] = []
    for k in range(periods, 0, -1):
        shift = timedelta(days=k * length)
        earlier = replace(ctx, first=ctx.first - shift, last=ctx.last - shift)
        if oldest is None or earlier.span[0] < oldest:
            continue
        members = tail(_tail_entries(earlier, rank, key), size)
        past.append({m.id for ms in members.values() for m in ms})
    return past


def tail_report(ctx: Context, rank: str, group: str, size: int | None, history: int = 3) -> Report:
    if group not in ("subbranch", "tier"):
        raise UsageError(f"--group {group}: allowed: subbranch, tier")
    n = size or ctx.rules.tail.size
    key = dimension_key(ctx.inventory, group)
    past = tail_history(ctx, rank, key, n, history)
    tails = tail(_tail_entries(ctx, rank, key), n, past)
    rows = [
        {"group": m.group, "position": m.position, "device": m.id,
         rank: _ratio(m.value) if rank == "uptime" else int(m.value), "streak": m.streak}
        for members in tails.values()
        for m in members
    ]  # fmt: skip
    return Report(
        f"剁尾巴 tail: the {n} lowest by {rank} within each {group}, {ctx.first}..{ctx.last}, "
        f"{ctx.scope}",
        ["group", "position", "device", rank, "streak"],
        rows,
        {"period": [ctx.first, ctx.last], "scope": str(ctx.scope), "size": n,
         "history_periods": len(past)},
    )  # fmt: skip


def vendors_report(ctx: Context) -> Report:
    rules = ctx.rules
    per_device = per_device_uptime(ctx)
    lo, hi = ctx.span
    # Incidents need history (repeats, open faults) and what followed (repairs).
    back = lo - rules.vendors.repeat_fault_days * 86_400_000
    ahead = min(ctx.horizon, hi + 7 * 86_400_000)
    lines = timelines(ctx.feed, ctx.devices, back, ahead, ctx.horizon)
    faults, arrivals = ctx.feed.service_events(back, ahead)
    found = []
    for d in ctx.devices:
        found += incidents(d.id, lines[d.id], faults.get(d.id, []), arrivals.get(d.id, []))
    scores = scorecard(
        ctx.devices, per_device, mark_repeats(found, rules.vendors.repeat_fault_days),
        (lo, hi), ctx.first, ctx.last, rules.vendors,
    )  # fmt: skip
    rows = [
        {"group": f"{s.vendor} {s.model}", "devices": s.devices,
         "technical": _ratio(s.technical_availability), "faults": s.faults,
         "per_device_month": _ratio(s.faults_per_device_month),
         "mttr_h": None if s.mttr_ms is None else _hours(int(s.mttr_ms)),
         "response_h": None if s.mean_response_ms is None else _hours(int(s.mean_response_ms)),
         "repeats": s.repeat_faults, "open": s.open_incidents,
         "worst": " ".join(w.device_id for w in s.worst)}
        for s in scores
    ]  # fmt: skip
    return Report(
        f"设备服务厂商考核 vendors {ctx.first}..{ctx.last}, {ctx.scope}",
        ["group", "devices", "technical", "faults", "per_device_month", "mttr_h",
         "response_h", "repeats", "open", "worst"],
        rows,
        {"period": [ctx.first, ctx.last], "scope": str(ctx.scope)},
    )  # fmt: skip


def network_report(ctx: Context) -> Report:
    if ctx.first != ctx.last:
        raise UsageError("the network checks are for one date: use --date")
    rules = ctx.rules
    ratios = self_service_bank_ratio(ctx.inventory, rules.network.self_service_banks_per_outlet)
    up = uptime_for(ctx.feed, ctx.inventory.devices, ctx.last, ctx.last, ctx.horizon)
    working = {d for d, per_day in up.per_device.items() if per_day[ctx.last].available_ms > 0}
    gaps = deposit_coverage(
        ctx.inventory, ctx.last, working, rules.network.deposit_capable_per_outlet
    )
    subs = {b.id: b.subbranch for b in ctx.inventory.branches}
    in_scope = (
        {subs[b] for b in subs}
        if ctx.scope.kind == "fleet"
        else {ctx.inventory.branch_by_id[d.branch].subbranch for d in ctx.devices}
    )
    rows = [
        {"group": sub, "outlets": r.outlets, "self_service_banks": r.self_service_banks,
         "ratio": _ratio(r.ratio), "meets_target": r.meets_target}
        for sub, r in sorted(ratios.items())
        if sub in in_scope or (sub == "fleet" and ctx.scope.kind == "fleet")
    ]  # fmt: skip
    coverage = Report(
        f"deposit coverage on {ctx.last}: outlets short of "
        f"{rules.network.deposit_capable_per_outlet} deposit-capable device(s) in service",
        ["group", "subbranch", "reason", "installed", "working"],
        [
            {"group": g.branch_id, "subbranch": g.subbranch, "reason": g.reason.value,
             "installed": len(g.devices), "working": g.working}
            for g in gaps
            if g.subbranch in in_scope
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


def assessment_report(ctx: Context) -> Report:
    if ctx.scope.kind not in ("fleet", "tier"):
        raise UsageError(
            f"--scope {ctx.scope}: the assessment ranks sub-branches; use fleet or tier"
        )
    inv = ctx.inventory
    by_sub = dimension_key(inv, "subbranch")
    per_device = per_device_uptime(ctx)
    uptime = rollup(per_device, by_sub)
    txn = txn_in_period(ctx)
    counters = ctx.feed.counters(ctx.first, ctx.last)
    entries = []
    day = ctx.first
    while day <= ctx.last:
        counts = {d: device_counts({d: {day: t[day]}})[d] for d, t in txn.items() if day in t}
        entries += list(unit_volumes(inv, counts, counters.get(day, {})).items())
        day += timedelta(days=1)
    subst = substitution(entries, branch_key(inv, "subbranch"))
    flags = low_yield_for(ctx.feed, inv, ctx.devices, ctx.last, ctx.horizon)
    shares = low_yield_share(flags, by_sub, ctx.rules.low_yield.max_share)
    fees = {
        d: (sum((x.fee for x in t.values()), Decimal("0")), sum(x.fee_txns for x in t.values()))
        for d, t in txn.items()
    }
    rev = revenue([d.id for d in ctx.devices], fees, by_sub)
    subs = sorted({s for d in ctx.devices if (s := by_sub(d.id))})
    figures = [
        SubBranchFigures(
            s,
            inv.subbranch_by_id[s].tier,
            uptime[s].ratio if s in uptime else None,
            subst[s].rate if s in subst else None,
            shares[s].share if s in shares else None,
            rev[s].per_device if s in rev else None,
        )
        for s in subs
    ]
    results = assess(figures, ctx.rules)
    fig = {f.subbranch: f for f in figures}
    rows = [
        {"group": a.subbranch, "tier": a.tier.value, "rank": a.rank,
         "score": None if a.score is None else round(a.score, 2),
         "uptime": _ratio(fig[a.subbranch].uptime),
         "substitution": _ratio(fig[a.subbranch].substitution),
         "low_yield_share": _ratio(fig[a.subbranch].low_yield_share),
         "fees_per_device": fig[a.subbranch].revenue_per_device,
         "missing": ",".join(m.value for m in a.missing) or None}
        for a in results
    ]  # fmt: skip
    return Report(
        f"自助业务经营管理考核评价 assessment {ctx.first}..{ctx.last}, {ctx.scope}",
        ["group", "tier", "rank", "score", "uptime", "substitution", "low_yield_share",
         "fees_per_device", "missing"],
        rows,
        {"period": [ctx.first, ctx.last], "scope": str(ctx.scope)},
    )  # fmt: skip


# ---------------------------------------------------------------------------- commands


def _common(fn: Callable[..., None]) -> Callable[..., None]:
    fn = click.option("--json", "as_json", is_flag=True, help="JSON instead of a table.")(fn)
    fn = click.option(
        "--scope", default="fleet", show_default=True,
        help="fleet, tier:N, subbranch:ID, branch:ID, device:ID, vendor:NAME or type:TYPE.",
    )(fn)  # fmt: skip
    fn = click.option("--to", "last", type=Day(), help="Last local day.")(fn)
    fn = click.option("--from", "first", type=Day(), help="First local day.")(fn)
    fn = click.option("--date", "on", type=Day(), help="One local day (default: yesterday).")(fn)  # fmt: skip
    return fn


def _day(value: date | None) -> date | None:
    return value.date() if isinstance(value, datetime) else value


_BY = click.option(
    "--by", default=None, help="Break down by: device, branch, subbranch, tier, type, placement, vendor, fleet."
)  # fmt: skip


def _by(by: str | None, scope: str, allowed: Sequence[str] | None = None) -> str:
    from rules.uptime import DIMENSIONS

    choice = by or DEFAULT_BY[Scope.parse(scope).kind]
    if choice not in (allowed or DIMENSIONS):
        raise UsageError(f"--by {choice}: allowed: {', '.join(allowed or DIMENSIONS)}")
    return choice


@click.group("kpi")
def kpi() -> None:
    """The bank's indicators from the store (reads ATMFLEET_DATABASE_URL)."""


@kpi.command("uptime")
@_common
@_BY
def uptime_cmd(on: datetime | None, first: datetime | None, last: datetime | None,
               scope: str, as_json: bool, by: str | None) -> None:  # fmt: skip
    """开机率: business and technical uptime, downtime by cause (ΣA/ΣS roll-ups)."""
    dim = _by(by, scope)
    with opened(scope, _day(on), _day(first), _day(last)) as ctx:
        emit(uptime_report(ctx, dim), as_json)


@kpi.command("substitution")
@_common
@_BY
def substitution_cmd(on: datetime | None, first: datetime | None, last: datetime | None,
                     scope: str, as_json: bool, by: str | None) -> None:  # fmt: skip
    """账务性交易替代率, on-site rate and 分流率 per branch, sub-branch, tier, fleet."""
    kind = Scope.parse(scope).kind
    default = {"fleet": "subbranch", "tier": "subbranch"}.get(kind, "branch")
    dim = _by(by or default, scope, ("branch", "subbranch", "tier", "fleet"))
    with opened(scope, _day(on), _day(first), _day(last)) as ctx:
        emit(substitution_report(ctx, dim), as_json)


@kpi.command("low-yield")
@_common
@_BY
def low_yield_cmd(on: datetime | None, first: datetime | None, last: datetime | None,
                  scope: str, as_json: bool, by: str | None) -> None:  # fmt: skip
    """低产/低效 on a date over the trailing window, and the low-yield share."""
    dim = _by(
        by or ("subbranch" if Scope.parse(scope).kind in ("fleet", "tier") else "type"), scope
    )
    with opened(scope, _day(on), _day(first), _day(last)) as ctx:
        emit(low_yield_report(ctx, dim), as_json)


@kpi.command("tail")
@_common
@click.option(
    "--rank", type=click.Choice(["uptime", "volume"]), default="uptime", show_default=True
)
@click.option(
    "--group",
    "group",
    type=click.Choice(["subbranch", "tier"]),
    default="subbranch",
    show_default=True,
)
@click.option(
    "--size", type=click.IntRange(min=1), default=None, help="Default: tail.size of the rules."
)
@click.option(
    "--history",
    type=click.IntRange(min=0, max=24),
    default=3,
    show_default=True,
    help="Earlier periods of the same length looked at for the streak (consecutive periods "
    "in the tail).",
)
def tail_cmd(on: datetime | None, first: datetime | None, last: datetime | None, scope: str,
             as_json: bool, rank: str, group: str, size: int | None, history: int) -> None:  # fmt: skip
    """剁尾巴: the bottom N devices by uptime or volume within each sub-branch or tier."""
    with opened(scope, _day(on), _day(first), _day(last)) as ctx:
        emit(tail_report(ctx, rank, group, size, history), as_json)


@kpi.command("vendors")
@_common
def vendors_cmd(on: datetime | None, first: datetime | None, last: datetime | None,
                scope: str, as_json: bool) -> None:  # fmt: skip
    """设备服务厂商考核: per vendor and model, availability, faults, MTTR, response."""
    with opened(scope, _day(on), _day(first), _day(last)) as ctx:
        emit(vendors_report(ctx), as_json)


@kpi.command("network")
@_common
def network_cmd(on: datetime | None, first: datetime | None, last: datetime | None,
                scope: str, as_json: bool) -> None:  # fmt: skip
    """Self-service banks per outlet and deposit coverage on a date."""
    with opened(scope, _day(on), _day(first), _day(last)) as ctx:
        emit(network_report(ctx), as_json)


@kpi.command("assessment")
@_common
def assessment_cmd(on: datetime | None, first: datetime | None, last: datetime | None,
                   scope: str, as_json: bool) -> None:  # fmt: skip
    """The monthly assessment score of each sub-branch, ranked within its tier."""
    with opened(scope, _day(on), _day(first), _day(last)) as ctx:
        emit(assessment_report(ctx), as_json)


@kpi.command("keep-days")
@_common
def keep_days_cmd(on: datetime | None, first: datetime | None, last: datetime | None,
                  scope: str, as_json: bool) -> None:  # fmt: skip
    """Compute and keep closed days (uptime, financial volume) ahead of low-yield.

    Run it daily once yesterday is closed (a few hours after midnight): the 30-day
    low-yield evaluation then reads kept days only.
    """
    with opened(scope, _day(on), _day(first), _day(last)) as ctx:
        period = [ctx.first + timedelta(days=i) for i in range((ctx.last - ctx.first).days + 1)]
        open_days = [d for d in period if not closed(ctx.feed, d, ctx.horizon)]
        window_days(ctx.feed, ctx.devices, ctx.first, ctx.last, ctx.horizon)
        report = Report(
            f"kept days {ctx.first}..{ctx.last}, {ctx.scope}",
            ["group", "kept"],
            [{"group": d.isoformat(), "kept": d not in open_days} for d in period],
            {"devices": len(ctx.devices),
             "note": "a day is kept once it is closed (its end plus the context is past)"},
        )  # fmt: skip
        emit(report, as_json)
