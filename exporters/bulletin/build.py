"""Builds a :class:`~exporters.bulletin.model.Bulletin` from the report layer.

Every figure comes from a :mod:`rules.report` call, the same one ``atmfleet kpi ... --json``
makes (docs/bulletins.md lists which); cells hold exact values (ratios unrounded, hours
as milliseconds / 3,600,000, money as Decimal): the renderers round for display.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from datetime import date, timedelta
from typing import Any

from atmfleet.inventory import Device, Inventory, Tier
from rules.config import Rules
from rules.feed import Feed, start_low_yield, timelines
from rules.labels import CAUSES, STATE_LABEL, Label
from rules.report import (
    Context,
    Report,
    Scope,
    assessment_report,
    low_yield_report,
    network_report,
    period_uptime,
    read_day_figures,
    resource_report,
    substitution_report,
    tail_report,
    uptime_report,
    vendors_report,
)
from rules.resource import ranked
from rules.timeline import Interval, from_ms
from rules.uptime import day_span

from .messages import Messages
from .model import Bulletin, Column, Kind, Table

HOUR_MS = 3_600_000
#: Labels that make a stretch of a device's timeline "down" for the down-for-long list.
DOWN = frozenset(CAUSES) - {Label.PLANNED, Label.CLOSED}
#: How long a device must have been down to be listed as down for long.
LONG_DOWN_MS = 24 * HOUR_MS
#: The reported states whose label is not :data:`DOWN` (a device in one is not down).
UP_STATES = frozenset(str(state) for state, label in STATE_LABEL.items() if label not in DOWN)


def hours(value: int | None) -> float | None:
    """Milliseconds as hours, unrounded (rounded at display)."""
    return None if value is None else value / HOUR_MS


# ---------------------------------------------------------------------------- helpers


def _flag(**checks: bool | None) -> frozenset[str]:
    return frozenset(k for k, v in checks.items() if v)


def _below(value: float | None, target: float | None) -> bool:
    return value is not None and target is not None and value < target


def _cause(cause: str | None, m: Messages) -> str | None:
    return m(f"cause.{cause}") if cause else None


def _failed(row: dict[str, Any] | None, key: str = "meets_target") -> bool:
    """Highlighted: judged and short of the target (no data is never highlighted)."""
    return row is not None and row.get(key) is False


def _yes_no(meets: bool | None, m: Messages) -> str | None:
    """未达标 yes/no; no data: None ("–")."""
    return None if meets is None else m("no") if meets else m("yes")


def long_down(
    line: Sequence[Interval], end: int, threshold_ms: int = LONG_DOWN_MS
) -> tuple[int, int, Label] | None:
    """``(since, for_ms, main label)`` when the device is down at ``end`` (the end of its
    timeline) and has been down without a break for more than ``threshold_ms``."""
    if not line or line[-1][1] < end or line[-1][2] not in DOWN:
        return None
    since = line[-1][0]
    by_label: dict[Label, int] = {}
    for lo, hi, label in reversed(line):
        if label not in DOWN or hi < since:
            break
        since = lo
        by_label[label] = by_label.get(label, 0) + hi - lo
    length = end - since
    if length <= threshold_ms:
        return None
    return since, length, max(by_label, key=lambda k: (by_label[k], k.value))


def down_throughout(line: Sequence[Interval], lo: int, end: int) -> bool:
    """Whether ``line`` is down (:data:`DOWN`) without a break over ``[lo, end)``."""
    at = lo
    for a, b, label in line:
        if b <= at:
            continue
        if a > at or label not in DOWN:
            return False
        at = b
        if at >= end:
            return True
    return False


def _day_end(ctx: Context) -> int:
    """The end of the daily bulletin's day, or now if earlier."""
    return min(day_span(ctx.last, ctx.rules.tz)[1], ctx.horizon or 2**62)


def long_down_candidates(ctx: Context) -> list[Device]:
    """The devices that may be down for long at the end of the day (:func:`long_down` of
    the two days' timelines), read without building a timeline: all but those the feed
    sees in a state whose label is not :data:`DOWN` over the last 24 h before the end
    (:meth:`Feed.up_between`). A device down for more than 24 h at the end is down
    without a break over those 24 h of its two days' timeline, which the feed's read
    then finds no such time in; the devices it lists are a superset."""
    end = _day_end(ctx)
    start = end - LONG_DOWN_MS
    if start < day_span(ctx.last - timedelta(days=1), ctx.rules.tz)[0]:
        return list(ctx.devices)  # the end before the day's start: never in practice
    up = ctx.feed.up_between(start, end, UP_STATES)
    return [d for d in ctx.devices if d.id not in up]


def down_for_long(
    ctx: Context, candidates: Sequence[Device] | None = None
) -> dict[str, tuple[int, int, Label]]:
    """Per device down for more than 24 h at the end of the day, :func:`long_down` of its
    timeline of the day before and the day, up to the day's end (only the timelines: the
    two days' uptime is not needed). ``candidates``: only those can be
    (:func:`long_down_candidates`), so only their timelines are built; None: every device's."""
    rules = ctx.rules
    day = ctx.last
    devices = ctx.devices if candidates is None else candidates
    if not devices:
        return {}
    span = day_span(day - timedelta(days=1), rules.tz)[0], day_span(day, rules.tz)[1]
    # A few candidates: only their runs read (the fleet's two days are 2.4 s of CPU).
    few = candidates is not None and 2 * len(candidates) < len(ctx.devices)
    lines = timelines(ctx.feed, devices, *span, ctx.horizon, read_only_these=few)
    end = _day_end(ctx)
    return {d.id: got for d in devices if (got := long_down(lines.get(d.id, []), end)) is not None}


def planned_table(up_sub: Any, inventory: Inventory, m: Messages) -> Table:
    """Planned time taken out of S per sub-branch and for the whole scope: the
    ``planned_ms`` of ``atmfleet kpi uptime --by subbranch`` (device-declared planned
    maintenance and approved registered stops, an overlap counted once, under the cap)."""
    subs = inventory.subbranch_by_id
    t = Table("planned", m("t.planned"), [
        Column("subbranch", m("c.subbranch"), Kind.TEXT),
        Column("subbranch_name", m("c.subbranch_name"), Kind.TEXT),
        Column("devices", m("c.devices"), Kind.INT),
        Column("planned_h", m("c.planned_h"), Kind.HOURS),
        Column("scheduled_h", m("c.scheduled_h"), Kind.HOURS),
    ], note=m("note.planned"))  # fmt: skip
    for r in up_sub.rows:
        t.add([r["group"], subs[r["group"]].name, r["devices"], hours(r["planned_ms"]),
               hours(r["scheduled_ms"])])  # fmt: skip
    total = up_sub.extra["total"]
    t.add([m("fleet"), "", total["devices"], hours(total["planned_ms"]),
           hours(total["scheduled_ms"])])  # fmt: skip
    return t


def stops_table(ctx: Context, m: Messages) -> Table:
    """The approved registered stops overlapping the period (the register's entries
    behind the planned time), times in the rules' time zone."""
    lo, hi = ctx.span
    tz = ctx.rules.tz
    t = Table("stops", m("t.stops"), [
        Column(k, m("c.stop_target" if k == "target" else f"c.{k}"), kind) for k, kind in (
            ("stop_id", Kind.INT), ("target", Kind.TEXT), ("subbranch", Kind.TEXT),
            ("starts", Kind.TEXT), ("ends", Kind.TEXT), ("stop_reason", Kind.TEXT),
            ("requester", Kind.TEXT), ("approver", Kind.TEXT), ("retroactive", Kind.TEXT),
        )
    ], note=m("note.stops", tz=ctx.rules.timezone))  # fmt: skip

    def local(at: int) -> str:
        return from_ms(at).astimezone(tz).strftime("%Y-%m-%d %H:%M")

    for s in ctx.feed.approved_stops(lo, min(hi, ctx.horizon)):
        t.add([s.id, s.device_id or s.branch_id, s.subbranch, local(s.start), local(s.end),
               s.reason, s.requester, s.approver, m("yes") if s.retroactive else m("no")])  # fmt: skip
    return t


def planned_footnote(total: dict[str, Any], rules: Rules, m: Messages) -> str:
    cap = rules.planned_maintenance.max_excluded_s_per_day
    capped = "" if cap is None else m("f.planned_cap", h=f"{cap / 3600:g}")
    return m("f.planned", h=f"{total['planned_ms'] / HOUR_MS:.2f}", cap=capped)


# ------------------------------------------------------------------------------ daily


def daily_context(feed: Feed, inventory: Inventory, day: date, horizon: int) -> Context:
    return Context.make(feed, inventory, Scope("fleet", "fleet"), day, day, horizon)


def daily_bulletin(
    feed: Feed, inventory: Inventory, day: date, horizon: int, m: Messages, generated: str
) -> Bulletin:
    """Read and build the daily bulletin of ``day``."""
    ctx = daily_context(feed, inventory, day, horizon)
    return daily(ctx, m, generated, feed.unregistered_count())


def daily(ctx: Context, m: Messages, generated: str, unregistered: int = 0) -> Bulletin:
    """The daily bulletin (自助设备开机率和帐务性交易量日通报), from the reports of
    ``atmfleet kpi uptime|substitution|low-yield|tail|network --date D --json``."""
    inv = ctx.inventory
    rules = ctx.rules
    day = ctx.last
    subs = inv.subbranch_by_id
    branches = inv.branch_by_id

    # The low-yield window's kept days are read on the feed's spare connection (when it
    # has one) while the reports below are made here; the evaluation further down then
    # takes them.
    start_low_yield(ctx.feed, ctx.devices, day)
    # The day's transactions first: the substitution tables need them whole, and the
    # uptime tables' financial counts are then taken from them instead of being read
    # from txn_daily once more on their own (``Context.financial``).
    ctx.txn()
    # In this order, so that what only some reports need is let go before the next
    # large read: the day's transactions (the substitution), each device's warning
    # time and the day's timelines (the resource warnings), then the earlier days
    # compared with are read, then the low-yield window. The figures do not depend on
    # the order (each computed once, memoised); the peak memory does.
    up_tier = uptime_report(ctx, "tier")
    up_branch = uptime_report(ctx, "branch")
    up_dev = uptime_report(ctx, "device", below_target_only=True)
    st_tier = {r["group"]: r for r in substitution_report(ctx, "tier").rows}
    st_sub_report = substitution_report(ctx, "subbranch")
    st_sub = {r["group"]: r for r in st_sub_report.rows}
    st_branch = {r["group"]: r for r in substitution_report(ctx, "branch").rows}
    # The day's transactions are in the reports now (the substitution's unit-days, each
    # device's financial count): let them go before the day's timelines are built
    # (the resource warnings read them).
    ctx.cache.pop(("txn", ctx.first, ctx.last), None)
    rw_sub = resource_report(ctx, "subbranch")
    rw_branch = resource_report(ctx, "branch")
    # Each device's warning time is in the two reports now.
    for key in ("resource", "resource_per_device"):
        ctx.cache.pop((key, str(ctx.scope), ctx.first, ctx.last), None)
    # No report below reads the day's timelines: they go before the two days' are
    # built (both held at once made the bulletin's peak). Down for long: who may be is
    # read from the store (no timeline built for it), then only their two days' built.
    ctx.uptime_days().timelines.clear()
    candidates = long_down_candidates(ctx)
    down_long = down_for_long(ctx, candidates)
    # The days compared with (the day before, the tail's earlier days), in one read,
    # once the day's timelines are gone.
    history = max(rules.tail.history_periods, 1)
    read_day_figures(ctx, day - timedelta(days=history), day - timedelta(days=1))
    up_sub = uptime_report(ctx, "subbranch", previous=True)
    ly = low_yield_report(ctx, "subbranch", devices=False)  # the shares, no row per device
    ctx.cache.pop(("flags", str(ctx.scope), ctx.last), None)  # in the shares now
    ly_sub = {r["group"]: r for r in ly.rows}
    net = network_report(ctx)
    tail_up = tail_report(ctx, "uptime", "subbranch")
    tail_vol = tail_report(ctx, "volume", "subbranch")
    total = up_sub.extra["total"]
    st_total = st_sub_report.extra["total"]
    ly_total = ly.extra["total"]

    def sub_of(device: Device) -> str:  # only for the devices listed
        return inv.subbranch_of(device).id

    below = sorted(
        (r for r in up_dev.rows if r["meets_target"] is False),  # all of them
        key=lambda r: (r["uptime"], -r["down_ms"], r["group"]),
    )
    gaps = net.section("deposit_coverage").rows

    b = Bulletin("daily", m.lang, m("title.daily"), day, day, generated)
    b.summary = [
        ("devices", m("s.devices"), total["devices"], Kind.INT),
        ("uptime", m("s.uptime"), total["uptime"], Kind.RATIO),
        ("technical", m("s.technical"), total["technical"], Kind.RATIO),
        ("coverage", m("s.coverage"), total["coverage"], Kind.RATIO),
        ("down_h", m("s.down_h"), hours(total["down_ms"]), Kind.HOURS),
        ("unknown_h", m("s.unknown_h"), hours(total["unknown_ms"]), Kind.HOURS),
        ("planned_h", m("s.planned_h"), hours(total["planned_ms"]), Kind.HOURS),
        ("financial", m("s.financial"), st_total["self_financial"], Kind.INT),
        ("substitution", m("s.substitution"), st_total["rate"], Kind.RATIO),
        ("low_yield_share", m("s.low_yield_share"), ly_total["share"], Kind.RATIO),
        ("resource_warning", m("s.resource_warning"), rw_sub.extra["total"]["rate"], Kind.RATIO),
        ("below_target", m("s.below_target"), len(below), Kind.INT),
        ("down_24h", m("s.down_24h"), len(down_long), Kind.INT),
        ("no_deposit", m("s.no_deposit"), len(gaps), Kind.INT),
        ("unregistered", m("s.unregistered"), unregistered, Kind.INT),
    ]

    def col(key: str, kind: Kind = Kind.TEXT, label: str | None = None) -> Column:
        return Column(key, label or m(f"c.{key}"), kind)

    # Tiers.
    t = Table("tiers", m("t.tiers"), [
        col("tier"), col("devices", Kind.INT), col("uptime", Kind.RATIO),
        col("target", Kind.RATIO), col("technical", Kind.RATIO), col("coverage", Kind.RATIO),
        col("down_h", Kind.HOURS), col("financial", Kind.INT), col("substitution", Kind.RATIO),
    ], chart="uptime", chart_label="tier")  # fmt: skip
    for r in up_tier.rows:
        st = st_tier.get(r["group"])
        t.add(
            [m("tier", n=r["group"]), r["devices"], r["uptime"], r["target"], r["technical"],
             r["coverage"], hours(r["down_ms"]), st["self_financial"] if st else 0,
             st["rate"] if st else None],
            _flag(uptime=_failed(r), substitution=_failed(st)),
        )  # fmt: skip
    b.tables.append(t)

    # Sub-branches ranked by uptime (best first); no data is listed last, not ranked.
    t = Table("subbranches", m("t.subbranches"), [
        col("rank", Kind.INT), col("subbranch"), col("subbranch_name"), col("tier"),
        col("devices", Kind.INT), col("uptime", Kind.RATIO), col("previous", Kind.RATIO),
        col("change", Kind.CHANGE), col("target", Kind.RATIO), col("below"),
        col("technical", Kind.RATIO), col("coverage", Kind.RATIO), col("down_h", Kind.HOURS),
        col("cause"), col("financial", Kind.INT), col("substitution", Kind.RATIO),
        col("low_yield_share", Kind.RATIO),
    ], chart="uptime", chart_label="subbranch_name")  # fmt: skip
    ranked = sorted(
        up_sub.rows, key=lambda r: (r["uptime"] is None, -(r["uptime"] or 0.0), r["group"])
    )
    for i, r in enumerate(ranked, 1):
        s = r["group"]
        st, lys = st_sub.get(s), ly_sub.get(s)
        t.add(
            [i if r["uptime"] is not None else None, s, subs[s].name,
             m("tier", n=subs[s].tier.value), r["devices"], r["uptime"], r["previous"],
             r["change"], r["target"], _yes_no(r["meets_target"], m), r["technical"],
             r["coverage"], hours(r["down_ms"]), _cause(r["main_cause"], m),
             st["self_financial"] if st else 0, st["rate"] if st else None,
             lys["share"] if lys else None],
            _flag(uptime=_failed(r), below=_failed(r), substitution=_failed(st),
                  low_yield_share=_failed(lys)),
        )  # fmt: skip
    b.tables.append(t)

    # Branches (outlets and self-service banks), by sub-branch then uptime. A branch's
    # substitution is its unit's (an outlet with its self-service banks).
    t = Table("branches", m("t.branches"), [
        col("subbranch"), col("branch"), col("branch_name"), col("devices", Kind.INT),
        col("uptime", Kind.RATIO), col("target", Kind.RATIO), col("down_h", Kind.HOURS),
        col("cause"), col("financial", Kind.INT), col("counter_financial", Kind.INT),
        col("substitution", Kind.RATIO), col("on_site", Kind.RATIO),
    ])  # fmt: skip
    for r in sorted(
        up_branch.rows,
        key=lambda r: (branches[r["group"]].subbranch, r["uptime"] is None, r["uptime"] or 0.0,
                       r["group"]),
    ):  # fmt: skip
        br = r["group"]
        st = st_branch.get(br)
        t.add(
            [branches[br].subbranch, br, branches[br].name, r["devices"], r["uptime"],
             r["target"], hours(r["down_ms"]), _cause(r["main_cause"], m), r["financial"],
             st["counter_financial"] if st and st["rate"] is not None else None,
             st["rate"] if st else None, st["on_site_rate"] if st else None],
            _flag(uptime=_failed(r), substitution=_failed(st),
                  on_site=_failed(st, "on_site_meets_target")),
        )  # fmt: skip
    b.tables.append(t)

    resource_tables(b, rw_sub, rw_branch, inv, m)

    # Devices below the uptime target, downtime by cause.
    unit = " (h)" if m.lang == "en" else "(小时)"
    t = Table("below_target", m("t.below_target"), [
        col("device"), col("subbranch"), col("branch"), col("type"), col("vendor"),
        col("uptime", Kind.RATIO), col("target", Kind.RATIO), col("down_h", Kind.HOURS),
        *[Column(f"down_h.{c.value}", m(f"cause.{c.value}") + unit, Kind.HOURS) for c in CAUSES],
    ], note=m("note.below"))  # fmt: skip
    # (per row: a long list, each cell as hours() makes it of a count in ms)
    cause_keys = [c.value for c in CAUSES]
    below_flag = _flag(uptime=True)
    for r in below:
        dev = inv.device_by_id[r["group"]]
        causes = r["down_ms_by_cause"]
        t.add(
            [dev.id, sub_of(dev), dev.branch, m(f"type.{dev.type.value}"), dev.vendor,
             r["uptime"], r["target"], hours(r["down_ms"]),
             *[causes.get(k, 0) / HOUR_MS for k in cause_keys]],
            below_flag,
        )  # fmt: skip
    b.tables.append(t)

    # Devices down for more than 24 h.
    t = Table("down_24h", m("t.down_24h"), [
        col("device"), col("subbranch"), col("branch"), col("type"), col("vendor"),
        col("down_since"), col("down_for_h", Kind.HOURS), col("cause"),
    ], note=m("note.down_24h", h=48))  # fmt: skip
    for d, (since, length, label) in sorted(down_long.items(), key=lambda x: (-x[1][1], x[0])):
        dev = inv.device_by_id[d]
        local = from_ms(since).astimezone(rules.tz).strftime("%Y-%m-%d %H:%M")
        t.add(
            [d, sub_of(dev), dev.branch, m(f"type.{dev.type.value}"), dev.vendor, local,
             hours(length), m(f"cause.{label.value}")],
            _flag(down_for_h=True),
        )  # fmt: skip
    b.tables.append(t)

    # Branches without a working deposit device.
    t = Table("deposit", m("t.deposit"), [
        col("subbranch"), col("branch"), col("branch_name"), col("reason"),
        col("installed", Kind.INT), col("working", Kind.INT),
    ])  # fmt: skip
    for g in gaps:
        t.add([g["subbranch"], g["group"], branches[g["group"]].name, m(f"reason.{g['reason']}"),
               g["installed"], g["working"]], _flag(reason=True))  # fmt: skip
    b.tables.append(t)

    # The tail (only who falls short), by uptime and by daily volume.
    for key, report, value_kind, value_key in (
        ("tail_uptime", tail_up, Kind.RATIO, "uptime"),
        ("tail_volume", tail_vol, Kind.NUMBER, "daily_financial"),
    ):
        size = report.extra["size"]
        quiet = [g["group"] for g in report.section("groups").rows if not g["short"]]
        missing = len(report.section("no_data").rows)
        t = Table(key, m(f"t.{key}", n=size), [
            col("subbranch"), col("position", Kind.INT), col("device"), col("branch"),
            col(value_key, value_kind), col("target", value_kind), col("streak", Kind.INT),
        ], note=m("note.tail", quiet=", ".join(quiet) or m("nothing"), n=missing))  # fmt: skip
        for r in report.rows:
            t.add([r["group"], r["position"], r["device"], inv.device_by_id[r["device"]].branch,
                   r[value_key], r["target"], r["streak"]], _flag(**{value_key: True}))  # fmt: skip
        b.tables.append(t)

    # Low-yield share per sub-branch and the fleet.
    t = Table("low_yield", m("t.low_yield"), [
        col("subbranch"), col("low", Kind.INT), col("evaluated", Kind.INT),
        col("share", Kind.RATIO), col("max_share", Kind.RATIO), col("exempt", Kind.INT),
        col("not_evaluated_coverage", Kind.INT), col("low_efficiency", Kind.INT),
    ], chart="share", chart_label="subbranch", target=rules.low_yield.max_share)  # fmt: skip
    for name, r in [*((r["group"], r) for r in ly.rows), (m("fleet"), ly_total)]:
        t.add(
            [name, r["low"], r["evaluated"], r["share"], r["max_share"], r["exempt"],
             r["not_evaluated_coverage"], r["low_efficiency"]],
            _flag(share=_failed(r)),
        )  # fmt: skip
    b.tables.append(t)

    # Planned time, apart from the downtime (registered stops and declared maintenance).
    b.tables.append(planned_table(up_sub, inv, m))
    b.tables.append(stops_table(ctx, m))

    b.footnotes = [m("f.no_data")]
    if total["coverage"] is not None and total["coverage"] < 1:
        b.footnotes.append(m("f.coverage", h=f"{total['unknown_ms'] / HOUR_MS:.2f}"))
    b.footnotes.append(planned_footnote(total, rules, m))
    b.footnotes.append(
        m("f.unregistered", n=unregistered) if unregistered else m("f.unregistered_none")
    )
    return b


def resource_tables(b: Bulletin, by_sub: Report, by_branch: Report, inv: Inventory,
                    m: Messages) -> None:  # fmt: skip
    """资源预警率 of ``atmfleet kpi resource-warnings --by subbranch|branch``: sub-branches
    ranked ascending (lower is better), then branches ranked within their sub-branch;
    no data ("–") last, unranked; each with its 开机率 beside it."""
    subs = inv.subbranch_by_id
    branches = inv.branch_by_id

    def col(key: str, kind: Kind = Kind.TEXT) -> Column:
        return Column(key, m(f"c.{key}"), kind)

    t = Table("rw_subbranches", m("t.rw_subbranches"), [
        col("rank", Kind.INT), col("subbranch"), col("subbranch_name"), col("tier"),
        col("devices", Kind.INT), col("resource_warning", Kind.RATIO),
        col("warning_h", Kind.HOURS), col("scheduled_h", Kind.HOURS), col("uptime", Kind.RATIO),
    ], note=m("note.rw"))  # fmt: skip
    for r in by_sub.rows:  # already ranked ascending
        s = r["group"]
        t.add(
            [r["rank"], s, subs[s].name, m("tier", n=subs[s].tier.value), r["devices"], r["rate"],
             hours(r["warning_ms"]), hours(r["scheduled_ms"]), r["uptime"]],
            _flag(resource_warning=_failed(r)),
        )  # fmt: skip
    b.tables.append(t)
    t = Table("rw_branches", m("t.rw_branches"), [
        col("subbranch"), col("rank", Kind.INT), col("branch"), col("branch_name"),
        col("devices", Kind.INT), col("resource_warning", Kind.RATIO),
        col("warning_h", Kind.HOURS), col("scheduled_h", Kind.HOURS), col("uptime", Kind.RATIO),
    ], note=m("note.rw"))  # fmt: skip
    by_group = {r["group"]: r for r in by_branch.rows}
    per_sub: dict[str, dict[str, Any]] = {}
    for br in by_group:
        per_sub.setdefault(branches[br].subbranch, {})[br] = by_group[br]
    for s in sorted(per_sub):
        rates = {br: r["rate"] for br, r in per_sub[s].items()}
        for rank, br in ranked(rates):
            r = by_group[br]
            t.add(
                [s, rank, br, branches[br].name, r["devices"], r["rate"],
                 hours(r["warning_ms"]), hours(r["scheduled_ms"]), r["uptime"]],
                _flag(resource_warning=_failed(r)),
            )  # fmt: skip
    b.tables.append(t)


def now_text(horizon: int, rules: Rules) -> str:
    return from_ms(horizon).astimezone(rules.tz).isoformat(timespec="seconds")


def local_today(horizon: int, rules: Rules) -> date:
    return from_ms(horizon).astimezone(rules.tz).date()


# ------------------------------------------------------------------ monthly, quarterly


def assessment(
    feed: Feed, inventory: Inventory, first: date, last: date, horizon: int, kind: str,
    m: Messages, generated: str,
) -> Bulletin:  # fmt: skip
    """The monthly or quarterly assessment (考核评价月/季通报): scores and ranks within tier,
    sub-branch uptime, vendor scorecards, network-plan checks and revenue, from the
    reports of ``atmfleet kpi assessment|uptime|vendors|network`` for the same period."""
    rules = feed.rules
    ctx = Context.make(feed, inventory, Scope("fleet", "fleet"), first, last, horizon)
    on_last = replace(ctx, first=last)
    subs = inventory.subbranch_by_id
    b = Bulletin(kind, m.lang, m(f"title.{kind}"), first, last, generated)

    def col(key: str, kind_: Kind = Kind.TEXT) -> Column:
        return Column(key, m(f"c.{key}"), kind_)

    # Each device's period summed day by day (no report below needs a per-day figure of
    # the period): the month's or quarter's device-days are never all held at once.
    period_uptime(ctx)
    up = uptime_report(ctx, "subbranch")
    total = up.extra["total"]
    b.summary = [
        ("devices", m("s.devices"), total["devices"], Kind.INT),
        ("uptime", m("s.uptime"), total["uptime"], Kind.RATIO),
        ("technical", m("s.technical"), total["technical"], Kind.RATIO),
        ("coverage", m("s.coverage"), total["coverage"], Kind.RATIO),
        ("down_h", m("s.down_h"), hours(total["down_ms"]), Kind.HOURS),
        ("planned_h", m("s.planned_h"), hours(total["planned_ms"]), Kind.HOURS),
    ]

    # The last day's uptime once, before the low-yield flags: they use it for that day
    # (not computed again there) and the network checks read it; no timeline of it is read.
    on_last.uptime_days().timelines.clear()
    # Scores and ranks within tier; a sub-branch without devices is listed, not scored.
    a = assessment_report(ctx)
    t = Table("assessment", m("t.assessment"), [
        col("tier"), col("rank", Kind.INT), col("subbranch"), col("subbranch_name"),
        col("score", Kind.NUMBER), col("uptime", Kind.RATIO), col("substitution", Kind.RATIO),
        col("low_yield_share", Kind.RATIO), col("fees_per_device", Kind.MONEY), col("missing"),
    ], chart="score", chart_label="subbranch_name")  # fmt: skip
    rows = sorted(a.rows, key=lambda r: (r["tier"], r["rank"] or 10**9, r["group"]))
    for r in rows:
        target = rules.uptime.targets[Tier(r["tier"])]
        t.add(
            [m("tier", n=r["tier"]), r["rank"], r["group"], subs[r["group"]].name, r["score"],
             r["uptime"], r["substitution"], r["low_yield_share"], r["fees_per_device"],
             r["missing"]],
            _flag(uptime=_below(r["uptime"], target),
                  substitution=_below(r["substitution"], rules.substitution.target),
                  low_yield_share=r["low_yield_share"] is not None
                  and r["low_yield_share"] > rules.low_yield.max_share),
        )  # fmt: skip
    b.tables.append(t)

    # Sub-branch uptime over the period; no data last, not ranked.
    t = Table("subbranches", m("t.subbranches"), [
        col("rank", Kind.INT), col("subbranch"), col("subbranch_name"), col("tier"),
        col("devices", Kind.INT), col("uptime", Kind.RATIO), col("target", Kind.RATIO),
        col("technical", Kind.RATIO), col("coverage", Kind.RATIO), col("down_h", Kind.HOURS),
        col("unknown_h", Kind.HOURS), col("cause"),
    ], chart="uptime", chart_label="subbranch_name")  # fmt: skip
    ranked = sorted(up.rows, key=lambda r: (r["uptime"] is None, -(r["uptime"] or 0.0), r["group"]))
    for i, r in enumerate(ranked, 1):
        s = r["group"]
        t.add(
            [i if r["uptime"] is not None else None, s, subs[s].name,
             m("tier", n=subs[s].tier.value), r["devices"], r["uptime"], r["target"],
             r["technical"], r["coverage"], hours(r["down_ms"]), hours(r["unknown_ms"]),
             _cause(r["main_cause"], m)],
            _flag(uptime=_failed(r)),
        )  # fmt: skip
    b.tables.append(t)

    # Vendor scorecards.
    v = vendors_report(ctx)
    t = Table("vendors", m("t.vendors"), [
        col("vendor"), col("devices", Kind.INT), col("technical", Kind.RATIO),
        col("incidents", Kind.INT), col("per_device_month", Kind.NUMBER),
        col("response_median_h", Kind.HOURS), col("response_p90_h", Kind.HOURS),
        col("repair_median_h", Kind.HOURS), col("repair_p90_h", Kind.HOURS),
        col("response_breaches", Kind.INT), col("repair_breaches", Kind.INT),
        col("repeat_rate", Kind.RATIO), col("open", Kind.INT), col("worst"),
    ], chart="technical", chart_label="vendor")  # fmt: skip
    for r in v.rows:
        t.add([r["group"], r["devices"], r["technical"], r["incidents"], r["per_device_month"],
               hours(r["response_median_ms"]), hours(r["response_p90_ms"]),
               hours(r["repair_median_ms"]), hours(r["repair_p90_ms"]),
               r["response_breaches"], r["repair_breaches"], r["repeat_rate"], r["open"],
               r["worst"] or None])  # fmt: skip
    b.tables.append(t)

    # Network plan: self-service banks per branch, deposit coverage on the last day.
    n = network_report(on_last)
    t = Table("network", m("t.network"), [
        col("subbranch"), col("outlets", Kind.INT), col("self_service_banks", Kind.INT),
        col("ratio", Kind.NUMBER), col("target", Kind.NUMBER), col("meets"),
    ])  # fmt: skip
    for r in n.rows:
        name = m("fleet") if r["group"] == "fleet" else r["group"]
        meets = r["meets_target"]
        t.add(
            [name, r["outlets"], r["self_service_banks"], r["ratio"], r["target"],
             None if meets is None else m("yes") if meets else m("no")],
            _flag(ratio=meets is False, meets=meets is False),
        )  # fmt: skip
    b.tables.append(t)
    t = Table("deposit", m("t.deposit"), [
        col("subbranch"), col("branch"), col("branch_name"), col("reason"),
        col("installed", Kind.INT), col("working", Kind.INT),
    ])  # fmt: skip
    for r in n.section("deposit_coverage").rows:
        t.add([r["subbranch"], r["group"], inventory.branch_by_id[r["group"]].name,
               m(f"reason.{r['reason']}"), r["installed"], r["working"]], _flag(reason=True))  # fmt: skip
    b.tables.append(t)

    # Revenue contribution per sub-branch (devices in the fleet in the period).
    t = Table("revenue", m("t.revenue"), [
        col("subbranch"), col("subbranch_name"), col("devices", Kind.INT),
        col("fees", Kind.MONEY), col("fee_txns", Kind.INT), col("fees_per_device", Kind.MONEY),
    ], chart="fees_per_device", chart_label="subbranch_name")  # fmt: skip
    for r in sorted(a.rows, key=lambda r: (-(r["fees_per_device"] or 0), r["group"])):
        t.add([r["group"], subs[r["group"]].name, r["devices"], r["fees"], r["fee_transactions"],
               r["fees_per_device"]])  # fmt: skip
    b.tables.append(t)

    # Planned time, apart from the downtime.
    b.tables.append(planned_table(up, inventory, m))
    b.tables.append(stops_table(ctx, m))
    b.footnotes.append(planned_footnote(total, rules, m))
    return b
