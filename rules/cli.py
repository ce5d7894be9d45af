"""``atmfleet kpi``: the indicators from the store, as a table in the terminal or JSON.

Every subcommand reads through :mod:`rules.feed` (ATMFLEET_DATABASE_URL) with the rules
file (ATMFLEET_RULES_FILE, default the shipped rules) and prints a report of
:mod:`rules.report` (the same functions the bulletins call). Periods are local days in
the rules' time zone: ``--date D`` or ``--from D --to D`` (default: yesterday); today
counts up to now. ``--scope``: see :mod:`rules.report` and docs/kpis.md ("Scope").
``--json`` is exact: milliseconds and counts as integers, ratios unrounded; the table
rounds for display only (hours, percentages with two decimals, "–" for no data).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import date, datetime, timedelta

import click

from atmfleet.cli_types import Day
from atmfleet.errors import UsageError
from atmfleet.settings import load_settings
from atmfleet.store.connect import connect
from atmfleet.store.migrate import require_current
from rules.config import load_rules
from rules.feed import DayColumns, Feed, closed, gc_paused, uptime_day_columns, window_days
from rules.report import (
    DEFAULT_BY,
    Context,
    Report,
    Scope,
    assessment_report,
    low_yield_report,
    network_report,
    render,
    resolve_period,
    resource_report,
    substitution_report,
    tail_report,
    to_json,
    uptime_report,
    uptime_row,
    vendors_report,
)
from rules.timeline import from_ms
from rules.uptime import DIMENSIONS, Uptime, uptime_of_sums


@contextmanager
def session(
    on: date | None, first: date | None, last: date | None
) -> Iterator[tuple[Feed, int, date, date]]:
    """The feed of the store, now (the horizon, ms) and the period's first and last day."""
    settings = load_settings()
    rules = load_rules(settings.rules_file)
    url = settings.require_database_url()
    with (
        gc_paused(),  # a one-shot command over the fleet: see rules.feed.gc_paused
        connect(url, application_name="atmfleet-kpi") as conn,
    ):
        require_current(conn)
        # A second connection for the work that overlaps (rules.feed.Feed, ``spare``).
        feed = Feed(conn, rules, spare=lambda: connect(url, application_name="atmfleet-kpi"))
        try:
            horizon = feed.now_ms()
            today = from_ms(horizon).astimezone(rules.tz).date()
            yield (feed, horizon, *resolve_period(on, first, last, today))
        finally:
            feed.close()


@contextmanager
def opened(scope: str, on: date | None, first: date | None, last: date | None) -> Iterator[Context]:
    with session(on, first, last) as (feed, horizon, first_day, last_day):
        yield Context.make(feed, feed.inventory(), Scope.parse(scope), first_day, last_day, horizon)


def emit(report: Report, as_json: bool) -> None:
    click.echo(to_json(report) if as_json else render(report))


# ---------------------------------------------------------------------------- commands


def _common(fn: Callable[..., None], period: bool = True) -> Callable[..., None]:
    """--json, --scope, --date, and --from/--to for the subcommands that take a period."""
    fn = click.option("--json", "as_json", is_flag=True, help="JSON instead of a table (exact values).")(fn)  # fmt: skip
    fn = click.option(
        "--scope", default="fleet", show_default=True,
        help="fleet, tier:N, subbranch:ID, branch:ID, device:ID, vendor:NAME or type:TYPE "
        "(the devices in the fleet that match; docs/kpis.md, Scope).",
    )(fn)  # fmt: skip
    if period:
        fn = click.option("--to", "last", type=Day(), help="Last local day.")(fn)
        fn = click.option("--from", "first", type=Day(), help="First local day.")(fn)
    fn = click.option("--date", "on", type=Day(), help="One local day (default: yesterday).")(fn)  # fmt: skip
    return fn


def _one_day(fn: Callable[..., None]) -> Callable[..., None]:
    return _common(fn, period=False)


def _day(value: date | None) -> date | None:
    return value.date() if isinstance(value, datetime) else value


_BY = click.option(
    "--by", default=None, help="Break down by: device, branch, subbranch, tier, type, placement, vendor, fleet."
)  # fmt: skip


def _by(by: str | None, scope: str, allowed: Sequence[str] | None = None) -> str:
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
@click.option(
    "--previous", is_flag=True,
    help="Also the previous period of the same length and the change (points).",
)  # fmt: skip
def uptime_cmd(on: datetime | None, first: datetime | None, last: datetime | None,
               scope: str, as_json: bool, by: str | None, previous: bool) -> None:  # fmt: skip
    """开机率: business and technical uptime, coverage, downtime by cause (ΣA/ΣS)."""
    dim = _by(by, scope)
    with session(_day(on), _day(first), _day(last)) as (feed, horizon, first_day, last_day):
        report = None
        if first_day == last_day and not previous and dim != "device":
            report = uptime_day_report(feed, Scope.parse(scope), first_day, horizon, dim)
        if report is None:
            ctx = Context.make(
                feed, feed.inventory(), Scope.parse(scope), first_day, last_day, horizon
            )
            report = uptime_report(ctx, dim, previous)
        emit(report, as_json)


def uptime_day_report(feed: Feed, scope: Scope, day: date, horizon: int, by: str) -> Report | None:
    """:func:`rules.report.uptime_report` of one local day (no previous period; ``by``
    not ``device``) from the day's columns (:func:`rules.feed.uptime_day_columns`): the
    same report, its groups and totals added up over arrays instead of an
    :class:`~rules.uptime.Uptime` per device (tests/test_kpi_uptime_columns.py). None
    where the columns do not apply (a day partly kept, a scope with no in-fleet device): the
    caller then takes the reference."""
    cols = uptime_day_columns(feed, scope.kind, scope.value, day, horizon)
    if cols is None:
        return None
    name = str(scope)
    groups = _grouped(cols, cols.group_of(by))
    whole, whole_target, _ = _grouped(cols, [name] * len(cols.ids))[name]
    rows = [uptime_row(g, up, target, None, n) for g, (up, target, n) in sorted(groups.items())]
    columns = ["group", "devices", "uptime", "target", "meets_target", "technical", "coverage",
               "scheduled_ms", "down_ms", "unknown_ms", "planned_ms", "main_cause"]  # fmt: skip
    return Report(
        f"开机率 uptime {day}..{day}, {scope}, by {by}",
        columns,
        rows,
        {"period": [day, day], "scope": name, "by": by,
         "total": uptime_row(name, whole, whole_target, None,
                             sum(n for _, _, n in groups.values())),
         "targets": {t.value: v for t, v in feed.rules.uptime.targets.items()},
         "uptime (total)": whole.ratio, "coverage (total)": whole.coverage},
    )  # fmt: skip


def _grouped(cols: DayColumns, group_of: list[str]) -> dict[str, tuple[Uptime, float | None, int]]:
    """Per group: its devices' uptime added up (:func:`rules.uptime.rollup`), its target
    (:func:`rules.report.group_target`: the devices' common target, else the S-weighted
    mean, added in the devices' order as it adds them) and its financial transactions."""
    import numpy as np

    index: dict[str, int] = {}
    of = np.asarray([index.setdefault(g, len(index)) for g in group_of], np.int64)
    order = np.argsort(of, kind="stable")  # each group's devices in their order
    starts = np.searchsorted(of[order], np.arange(len(index)))
    ends = np.append(starts[1:], len(order))
    by_label = np.add.reduceat(cols.by_label[order], starts, axis=0)
    figures = np.add.reduceat(cols.figures[order], starts, axis=0)
    financial = np.add.reduceat(cols.financial[order], starts)
    targets = cols.targets[order]
    scheduled = cols.figures[order, 0]
    low = np.minimum.reduceat(targets, starts)
    high = np.maximum.reduceat(targets, starts)
    out: dict[str, tuple[Uptime, float | None, int]] = {}
    for g, k in index.items():
        target: float | None
        if low[k] == high[k]:
            target = float(low[k])
        else:  # Σ target x S / Σ S, each sum added device after device
            part = slice(int(starts[k]), int(ends[k]))
            den = float(int(scheduled[part].sum()))
            num = float(np.cumsum(targets[part] * scheduled[part].astype(np.float64))[-1])
            target = num / den if den else None
        up = uptime_of_sums(by_label[k], figures[k], int(ends[k] - starts[k]))
        out[g] = (up, target, int(financial[k]))
    return out


@kpi.command("resource-warnings")
@_common
@_BY
def resource_cmd(on: datetime | None, first: datetime | None, last: datetime | None,
                 scope: str, as_json: bool, by: str | None) -> None:  # fmt: skip
    """资源预警率: share of scheduled time in a cash or consumables warning (ΣW/ΣS),
    ranked ascending (lower is better). Alias: rwr."""
    dim = _by(by, scope)
    with opened(scope, _day(on), _day(first), _day(last)) as ctx:
        emit(resource_report(ctx, dim), as_json)


kpi.add_command(resource_cmd, "rwr")


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
@_one_day
@_BY
def low_yield_cmd(on: datetime | None, scope: str, as_json: bool, by: str | None) -> None:
    """低产/低效 on a date over the trailing window, the share, and every device."""
    dim = _by(
        by or ("subbranch" if Scope.parse(scope).kind in ("fleet", "tier") else "type"), scope
    )
    with opened(scope, _day(on), None, None) as ctx:
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
    "--unit", type=click.Choice(["device", "branch"]), default="device", show_default=True,
    help="Rank devices, or branches (ΣA/ΣS; volume against the sum of their thresholds).",
)  # fmt: skip
@click.option(
    "--size", type=click.IntRange(min=1), default=None, help="Default: tail.size of the rules."
)
@click.option(
    "--history",
    type=click.IntRange(min=0, max=24),
    default=None,
    help="Earlier periods of the same length looked at for the streak (consecutive periods "
    "in the tail; default: tail.history_periods of the rules).",
)
def tail_cmd(on: datetime | None, first: datetime | None, last: datetime | None, scope: str,
             as_json: bool, rank: str, group: str, unit: str, size: int | None,
             history: int | None) -> None:  # fmt: skip
    """剁尾巴: the bottom N of those below target, by uptime or volume, per group."""
    with opened(scope, _day(on), _day(first), _day(last)) as ctx:
        emit(tail_report(ctx, rank, group, size, history, unit), as_json)


@kpi.command("vendors")
@_common
def vendors_cmd(on: datetime | None, first: datetime | None, last: datetime | None,
                scope: str, as_json: bool) -> None:  # fmt: skip
    """设备服务厂商考核: per vendor and model, availability, faults, MTTR, response."""
    with opened(scope, _day(on), _day(first), _day(last)) as ctx:
        emit(vendors_report(ctx), as_json)


@kpi.command("network")
@_one_day
def network_cmd(on: datetime | None, scope: str, as_json: bool) -> None:
    """Self-service banks per outlet and deposit coverage on a date."""
    with opened(scope, _day(on), None, None) as ctx:
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
    """Compute and keep closed days (uptime, financial volume, resource-warning time).

    Run it daily once yesterday is closed (a few hours after midnight): the 30-day
    low-yield evaluation then reads kept days only.
    """
    with opened(scope, _day(on), _day(first), _day(last)) as ctx:
        period = [ctx.first + timedelta(days=i) for i in range((ctx.last - ctx.first).days + 1)]
        open_days = [d for d in period if not closed(ctx.feed, d, ctx.horizon)]
        devices = ctx.devices
        window_days(ctx.feed, devices, ctx.first, ctx.last, ctx.horizon)
        ctx.resource_days()  # 资源预警率: W of the days just kept, beside their S
        report = Report(
            f"kept days {ctx.first}..{ctx.last}, {ctx.scope}",
            ["group", "kept"],
            [{"group": d.isoformat(), "kept": d not in open_days} for d in period],
            {"devices": len(devices),
             "note": "a day is kept once it is closed (its end plus the context is past)"},
        )  # fmt: skip
        emit(report, as_json)
