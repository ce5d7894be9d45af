"""Builds a :class:`~exporters.bulletin.model.Bulletin` from the KPI engine.

Two steps: ``gather_*`` reads the store once through :mod:`rules.feed` into plain values
(:class:`DailyInputs`); ``daily``/``assessment`` are pure and compute every figure with
the same core functions as ``atmfleet kpi`` (roll-ups are ΣA/ΣS, never averages).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import date, timedelta
from decimal import Decimal

from atmfleet.inventory import Device, Inventory, Placement, Tier
from rules.config import Rules
from rules.feed import Feed, TxnDay, device_counts, low_yield_for, uptime_for
from rules.labels import CAUSES, Label
from rules.lowyield import Share, YieldFlag, low_yield_share
from rules.network import CoverageGap, deposit_coverage, in_fleet
from rules.substitution import (
    CounterCounts,
    Substitution,
    branch_key,
    substitution,
    unit_of,
    unit_volumes,
)
from rules.tail import tail, uptime_entries, volume_entries
from rules.timeline import Interval, from_ms
from rules.uptime import Uptime, day_span, dimension_key, rollup

from .messages import Messages
from .model import Bulletin, Cell, Column, Kind, Table

HOUR_MS = 3_600_000
#: Labels that make a stretch of a device's timeline "down" for the down-for-long list.
DOWN = frozenset(CAUSES) - {Label.PLANNED, Label.CLOSED}
#: How long a device must have been down to be listed as down for long.
LONG_DOWN_MS = 24 * HOUR_MS


def hours(value: int) -> float:
    return round(value / HOUR_MS, 2)


# ------------------------------------------------------------------------- the inputs


@dataclass
class DailyInputs:
    """Everything the daily bulletin is computed from, read from the store."""

    inventory: Inventory
    day: date
    devices: list[Device]  # in the fleet on ``day``
    uptime: dict[str, Uptime]  # per device, on ``day``
    previous: dict[str, Uptime]  # per device, the day before
    timelines: dict[str, list[Interval]]  # the day before and the day
    txn: dict[str, TxnDay]  # per device, on ``day``
    counters: dict[str, CounterCounts]  # per branch, on ``day``
    flags: list[YieldFlag] = field(default_factory=list)
    horizon: int = 0


def gather_daily(feed: Feed, inventory: Inventory, day: date, horizon: int) -> DailyInputs:
    devices = [d for d in inventory.devices if in_fleet(d, day)]
    before = day - timedelta(days=1)
    up = uptime_for(feed, devices, before, day, horizon)
    txn = feed.txn_days(day, day)
    return DailyInputs(
        inventory=inventory,
        day=day,
        devices=devices,
        uptime={d: per_day[day] for d, per_day in up.per_device.items()},
        previous={d: per_day[before] for d, per_day in up.per_device.items()},
        timelines=up.timelines,
        txn={d: t[day] for d, t in txn.items() if day in t},
        counters=feed.counters(day, day).get(day, {}),
        flags=low_yield_for(feed, inventory, devices, day, horizon),
        horizon=horizon,
    )


# ---------------------------------------------------------------------------- helpers


def _flag(**checks: bool | None) -> frozenset[str]:
    return frozenset(k for k, v in checks.items() if v)


def _below(value: float | None, target: float | None) -> bool:
    return value is not None and target is not None and value < target


def _change(now: float | None, before: float | None) -> float | None:
    return None if now is None or before is None else now - before


def _main_cause(up: Uptime, m: Messages) -> str | None:
    causes = {c: v for c, v in up.down_by_cause().items() if v > 0}
    if not causes:
        return None
    return m(f"cause.{max(causes, key=lambda c: (causes[c], c.value)).value}")


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


# ------------------------------------------------------------------------------ daily


def daily(inputs: DailyInputs, rules: Rules, m: Messages, generated: str) -> Bulletin:
    """The daily bulletin (自助设备开机率和帐务性交易量日通报)."""
    inv = inputs.inventory
    day = inputs.day
    subs = inv.subbranch_by_id
    branches = inv.branch_by_id
    targets = rules.uptime.targets
    sub_of = dimension_key(inv, "subbranch")
    tier_of = dimension_key(inv, "tier")
    ids = [d.id for d in inputs.devices]
    up = {d: inputs.uptime[d] for d in ids}
    prev = {d: inputs.previous[d] for d in ids}

    def target_of_device(device_id: str) -> float:
        return targets[Tier(tier_of(device_id) or "")]

    # Substitution: units (outlets with their self-service banks) on the day.
    counts = device_counts({d: {day: t} for d, t in inputs.txn.items()})
    volumes = unit_volumes(inv, counts, inputs.counters)
    entries = list(volumes.items())
    subst_sub = substitution(entries, branch_key(inv, "subbranch"))
    subst_tier = substitution(entries, branch_key(inv, "tier"))
    subst_branch = substitution(entries, branch_key(inv, "branch"))
    subst_all = substitution(entries, lambda _u: "fleet").get("fleet", Substitution())
    fin = {d: inputs.txn[d].financial if d in inputs.txn else 0 for d in ids}
    fin_sub: dict[str, int] = {}
    fin_branch: dict[str, int] = {}
    fin_tier: dict[str, int] = {}
    for d in ids:
        fin_sub[sub_of(d) or ""] = fin_sub.get(sub_of(d) or "", 0) + fin[d]
        br_id = inv.device_by_id[d].branch
        fin_branch[br_id] = fin_branch.get(br_id, 0) + fin[d]
        fin_tier[tier_of(d) or ""] = fin_tier.get(tier_of(d) or "", 0) + fin[d]

    shares = low_yield_share(inputs.flags, sub_of, rules.low_yield.max_share)
    share_all = low_yield_share(inputs.flags, lambda _d: "fleet", rules.low_yield.max_share)

    fleet = rollup(up, lambda _d: "fleet").get("fleet", Uptime())
    by_tier = rollup(up, tier_of)
    by_sub = rollup(up, sub_of)
    by_sub_prev = rollup(prev, sub_of)
    by_branch = rollup(up, dimension_key(inv, "branch"))
    sub_target = {s: targets[subs[s].tier] for s in by_sub}
    subst_target = rules.substitution.target

    # Devices below target, down for long, deposit coverage, the tail.
    below = sorted(
        (d for d in ids if _below(up[d].ratio, target_of_device(d))),
        key=lambda d: (up[d].ratio or 0.0, -up[d].down_ms, d),
    )
    end = min(day_span(day, rules.tz)[1], inputs.horizon or 2**62)
    down_long = {
        d: got for d in ids if (got := long_down(inputs.timelines.get(d, []), end)) is not None
    }
    working = {d for d in ids if up[d].available_ms > 0}
    gaps = deposit_coverage(inv, day, working, rules.network.deposit_capable_per_outlet)
    size = rules.tail.size
    history = [{t.id for ms in tail(uptime_entries(prev, sub_of), size).values() for t in ms}]
    tail_up = tail(uptime_entries(up, sub_of), size, history)
    sched = {d: up[d].scheduled_ms for d in ids}
    tail_vol = tail(volume_entries(fin, sched, sub_of), size)

    b = Bulletin(
        "daily", m.lang, m("title.daily"), day, day, generated,
    )  # fmt: skip
    share_fleet = share_all.get("fleet")
    b.summary = [
        ("devices", m("s.devices"), fleet.devices, Kind.INT),
        ("uptime", m("s.uptime"), fleet.ratio, Kind.RATIO),
        ("technical", m("s.technical"), fleet.tech_ratio, Kind.RATIO),
        ("down_h", m("s.down_h"), hours(fleet.down_ms), Kind.HOURS),
        ("unknown_h", m("s.unknown_h"), hours(fleet.unknown_ms), Kind.HOURS),
        ("financial", m("s.financial"), sum(fin.values()), Kind.INT),
        ("substitution", m("s.substitution"), subst_all.rate, Kind.RATIO),
        ("low_yield_share", m("s.low_yield_share"),
         share_fleet.share if share_fleet else None, Kind.RATIO),
        ("below_target", m("s.below_target"), len(below), Kind.INT),
        ("down_24h", m("s.down_24h"), len(down_long), Kind.INT),
        ("no_deposit", m("s.no_deposit"), len(gaps), Kind.INT),
    ]  # fmt: skip

    def col(key: str, kind: Kind = Kind.TEXT, label: str | None = None) -> Column:
        return Column(key, label or m(f"c.{key}"), kind)

    # Tiers.
    t = Table("tiers", m("t.tiers"), [
        col("tier"), col("devices", Kind.INT), col("uptime", Kind.RATIO),
        col("target", Kind.RATIO), col("technical", Kind.RATIO), col("down_h", Kind.HOURS),
        col("financial", Kind.INT), col("substitution", Kind.RATIO),
    ], chart="uptime", chart_label="tier")  # fmt: skip
    for tier in sorted(by_tier):
        u = by_tier[tier]
        target = targets[Tier(tier)]
        rate = subst_tier[tier].rate if tier in subst_tier else None
        t.add(
            [m("tier", n=tier), u.devices, u.ratio, target, u.tech_ratio, hours(u.down_ms),
             fin_tier.get(tier, 0), rate],
            _flag(uptime=_below(u.ratio, target), substitution=_below(rate, subst_target)),
        )  # fmt: skip
    b.tables.append(t)

    # Sub-branches, ranked by uptime (best first), with the change from the day before.
    t = Table("subbranches", m("t.subbranches"), [
        col("rank", Kind.INT), col("subbranch"), col("subbranch_name"), col("tier"),
        col("devices", Kind.INT), col("uptime", Kind.RATIO), col("previous", Kind.RATIO),
        col("change", Kind.CHANGE), col("target", Kind.RATIO), col("below"),
        col("technical", Kind.RATIO), col("down_h", Kind.HOURS), col("cause"),
        col("financial", Kind.INT), col("substitution", Kind.RATIO),
        col("low_yield_share", Kind.RATIO),
    ], chart="uptime", chart_label="subbranch_name")  # fmt: skip
    ranked = sorted(by_sub, key=lambda s: (-(by_sub[s].ratio or -1.0), s))
    for i, s in enumerate(ranked, 1):
        u, before = by_sub[s], by_sub_prev.get(s)
        ratio_before = before.ratio if before else None
        rate = subst_sub[s].rate if s in subst_sub else None
        share = shares[s].share if s in shares else None
        low = _below(u.ratio, sub_target[s])
        t.add(
            [i, s, subs[s].name, m("tier", n=subs[s].tier.value), u.devices, u.ratio,
             ratio_before, _change(u.ratio, ratio_before), sub_target[s],
             m("yes") if low else m("no"), u.tech_ratio, hours(u.down_ms), _main_cause(u, m),
             fin_sub.get(s, 0), rate, share],
            _flag(uptime=low, below=low, substitution=_below(rate, subst_target),
                  low_yield_share=share is not None and share > rules.low_yield.max_share),
        )  # fmt: skip
    b.tables.append(t)

    # Branches (outlets and self-service banks), by sub-branch then uptime. The on-site
    # rate is judged only where the unit has on-site devices.
    on_site_units = {unit_of(inv, d.id) for d in inputs.devices if d.placement is Placement.ON_SITE}
    t = Table("branches", m("t.branches"), [
        col("subbranch"), col("branch"), col("branch_name"), col("devices", Kind.INT),
        col("uptime", Kind.RATIO), col("target", Kind.RATIO), col("down_h", Kind.HOURS),
        col("cause"), col("financial", Kind.INT), col("counter_financial", Kind.INT),
        col("substitution", Kind.RATIO), col("on_site", Kind.RATIO),
    ])  # fmt: skip
    for br in sorted(
        by_branch, key=lambda x: (branches[x].subbranch, by_branch[x].ratio or 0.0, x)
    ):
        u = by_branch[br]
        target = targets[subs[branches[br].subbranch].tier]
        sb = subst_branch.get(br)
        rate = sb.rate if sb else None
        t.add(
            [branches[br].subbranch, br, branches[br].name, u.devices, u.ratio, target,
             hours(u.down_ms), _main_cause(u, m), fin_branch.get(br, 0),
             sb.financial_counter if sb and sb.rate is not None else None, rate,
             sb.on_site_rate if sb else None],
            _flag(uptime=_below(u.ratio, target), substitution=_below(rate, subst_target),
                  on_site=br in on_site_units
                  and _below(sb.on_site_rate if sb else None, rules.substitution.on_site_target)),
        )  # fmt: skip
    b.tables.append(t)

    # Devices below the uptime target, downtime by cause.
    t = Table("below_target", m("t.below_target"), [
        col("device"), col("subbranch"), col("branch"), col("type"), col("vendor"),
        col("uptime", Kind.RATIO), col("target", Kind.RATIO), col("down_h", Kind.HOURS),
        *[Column(f"down_h.{c.value}", m(f"cause.{c.value}") + (" (h)" if m.lang == "en" else "(小时)"),
                 Kind.HOURS) for c in CAUSES],
    ], note=m("note.below"))  # fmt: skip
    for d in below:
        dev, u = inv.device_by_id[d], up[d]
        causes = u.down_by_cause()
        t.add(
            [d, sub_of(d), dev.branch, m(f"type.{dev.type.value}"), dev.vendor, u.ratio,
             target_of_device(d), hours(u.down_ms), *[hours(causes[c]) for c in CAUSES]],
            _flag(uptime=True),
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
            [d, sub_of(d), dev.branch, m(f"type.{dev.type.value}"), dev.vendor, local,
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
        t.add(_gap_row(g, inv, m), _flag(reason=True))
    b.tables.append(t)

    # The tail, by uptime and by volume.
    for key, members, value_kind, value_key in (
        ("tail_uptime", tail_up, Kind.RATIO, "uptime"),
        ("tail_volume", tail_vol, Kind.INT, "financial"),
    ):
        t = Table(key, m(f"t.{key}", n=size), [
            col("subbranch"), col("position", Kind.INT), col("device"), col("branch"),
            col(value_key, value_kind), col("streak", Kind.INT),
        ])  # fmt: skip
        for group in sorted(members):
            for mem in members[group]:
                value: Cell = mem.value if value_kind is Kind.RATIO else int(mem.value)
                t.add([group, mem.position, mem.id, inv.device_by_id[mem.id].branch, value,
                       mem.streak])  # fmt: skip
        b.tables.append(t)

    b.tables.append(_low_yield_table(shares, share_all, rules, m, col))
    return b


def _gap_row(g: CoverageGap, inv: Inventory, m: Messages) -> list[Cell]:
    return [g.subbranch, g.branch_id, inv.branch_by_id[g.branch_id].name,
            m(f"reason.{g.reason.value}"), len(g.devices), g.working]  # fmt: skip


def _low_yield_table(
    shares: dict[str, Share],
    share_all: dict[str, Share],
    rules: Rules,
    m: Messages,
    col: Callable[..., Column],
) -> Table:
    t = Table("low_yield", m("t.low_yield"), [
        col("subbranch"), col("low", Kind.INT), col("evaluated", Kind.INT),
        col("share", Kind.RATIO), col("max_share", Kind.RATIO), col("exempt", Kind.INT),
        col("low_efficiency", Kind.INT),
    ], chart="share", chart_label="subbranch", target=rules.low_yield.max_share)  # fmt: skip
    rows = [(s, v) for s, v in sorted(shares.items())] + [
        (m("fleet"), v) for v in share_all.values()
    ]
    for name, sh in rows:
        t.add(
            [name, sh.low, sh.evaluated, sh.share, sh.max_share, sh.exempt, sh.low_efficiency],
            _flag(share=sh.meets_target is False),
        )
    return t


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
    sub-branch uptime, vendor scorecards, network-plan checks and revenue. The figures are
    those of ``atmfleet kpi assessment|uptime|vendors|network`` for the same period (the
    same report functions compute them)."""
    from rules import cli as kpi
    from rules.revenue import revenue

    rules = feed.rules
    scope = kpi.Scope("fleet", "fleet")
    devices = list(inventory.devices)
    ctx = kpi.Context(feed, rules, inventory, scope, devices, first, last, horizon)
    on_last = kpi.Context(feed, rules, inventory, scope, devices, last, last, horizon)
    subs = inventory.subbranch_by_id
    targets = rules.uptime.targets
    b = Bulletin(kind, m.lang, m(f"title.{kind}"), first, last, generated)

    def col(key: str, kind_: Kind = Kind.TEXT) -> Column:
        return Column(key, m(f"c.{key}"), kind_)

    up = kpi.uptime_report(ctx, "subbranch")
    total = up.extra["total"]
    b.summary = [
        ("devices", m("s.devices"), total["devices"], Kind.INT),
        ("uptime", m("s.uptime"), total["uptime"], Kind.RATIO),
        ("technical", m("s.technical"), total["technical"], Kind.RATIO),
        ("down_h", m("s.down_h"), total["down_h"], Kind.HOURS),
    ]

    # Scores and ranks within tier.
    a = kpi.assessment_report(ctx)
    t = Table("assessment", m("t.assessment"), [
        col("tier"), col("rank", Kind.INT), col("subbranch"), col("subbranch_name"),
        col("score", Kind.NUMBER), col("uptime", Kind.RATIO), col("substitution", Kind.RATIO),
        col("low_yield_share", Kind.RATIO), col("fees_per_device", Kind.MONEY), col("missing"),
    ], chart="score", chart_label="subbranch_name")  # fmt: skip
    rows = sorted(a.rows, key=lambda r: (r["tier"], r["rank"] or 10**9, r["group"]))
    for r in rows:
        tier = Tier(r["tier"])
        t.add(
            [m("tier", n=r["tier"]), r["rank"], r["group"], subs[r["group"]].name, r["score"],
             r["uptime"], r["substitution"], r["low_yield_share"], r["fees_per_device"],
             r["missing"]],
            _flag(uptime=_below(r["uptime"], targets[tier]),
                  substitution=_below(r["substitution"], rules.substitution.target),
                  low_yield_share=r["low_yield_share"] is not None
                  and r["low_yield_share"] > rules.low_yield.max_share),
        )  # fmt: skip
    b.tables.append(t)

    # Sub-branch uptime over the period.
    t = Table("subbranches", m("t.subbranches"), [
        col("rank", Kind.INT), col("subbranch"), col("subbranch_name"), col("tier"),
        col("devices", Kind.INT), col("uptime", Kind.RATIO), col("target", Kind.RATIO),
        col("technical", Kind.RATIO), col("down_h", Kind.HOURS), col("unknown_h", Kind.HOURS),
        col("cause"),
    ], chart="uptime", chart_label="subbranch_name")  # fmt: skip
    ranked = sorted(up.rows, key=lambda r: (-(r["uptime"] or -1.0), r["group"]))
    for i, r in enumerate(ranked, 1):
        s = r["group"]
        target = targets[subs[s].tier]
        cause = r["main_cause"]
        t.add(
            [i, s, subs[s].name, m("tier", n=subs[s].tier.value), r["devices"], r["uptime"],
             target, r["technical"], r["scheduled_h"] - r["available_h"], r["unknown_h"],
             m(f"cause.{cause}") if cause else None],
            _flag(uptime=_below(r["uptime"], target)),
        )  # fmt: skip
    b.tables.append(t)

    # Vendor scorecards.
    v = kpi.vendors_report(ctx)
    t = Table("vendors", m("t.vendors"), [
        col("vendor"), col("devices", Kind.INT), col("technical", Kind.RATIO),
        col("faults", Kind.INT), col("per_device_month", Kind.NUMBER),
        col("mttr_h", Kind.HOURS), col("response_h", Kind.HOURS), col("repeats", Kind.INT),
        col("open", Kind.INT), col("worst"),
    ], chart="technical", chart_label="vendor")  # fmt: skip
    for r in v.rows:
        t.add([r["group"], r["devices"], r["technical"], r["faults"], r["per_device_month"],
               r["mttr_h"], r["response_h"], r["repeats"], r["open"], r["worst"] or None])  # fmt: skip
    b.tables.append(t)

    # Network plan: self-service banks per branch, deposit coverage on the last day.
    n = kpi.network_report(on_last)
    t = Table("network", m("t.network"), [
        col("subbranch"), col("outlets", Kind.INT), col("self_service_banks", Kind.INT),
        col("ratio", Kind.NUMBER), col("target", Kind.NUMBER), col("meets"),
    ])  # fmt: skip
    for r in n.rows:
        name = m("fleet") if r["group"] == "fleet" else r["group"]
        meets = r["meets_target"]
        t.add(
            [name, r["outlets"], r["self_service_banks"], r["ratio"],
             rules.network.self_service_banks_per_outlet,
             None if meets is None else m("yes") if meets else m("no")],
            _flag(ratio=meets is False, meets=meets is False),
        )  # fmt: skip
    b.tables.append(t)
    t = Table("deposit", m("t.deposit"), [
        col("subbranch"), col("branch"), col("branch_name"), col("reason"),
        col("installed", Kind.INT), col("working", Kind.INT),
    ])  # fmt: skip
    for r in n.sections[0].rows:
        t.add([r["subbranch"], r["group"], inventory.branch_by_id[r["group"]].name,
               m(f"reason.{r['reason']}"), r["installed"], r["working"]], _flag(reason=True))  # fmt: skip
    b.tables.append(t)

    # Revenue contribution per sub-branch.
    txn = feed.txn_days(first, last)
    fees = {
        d: (sum((x.fee for x in per.values()), Decimal("0")), sum(x.fee_txns for x in per.values()))
        for d, per in txn.items()
    }
    rev = revenue([d.id for d in devices], fees, dimension_key(inventory, "subbranch"))
    t = Table("revenue", m("t.revenue"), [
        col("subbranch"), col("subbranch_name"), col("devices", Kind.INT),
        col("fees", Kind.MONEY), col("fee_txns", Kind.INT), col("fees_per_device", Kind.MONEY),
    ], chart="fees_per_device", chart_label="subbranch_name")  # fmt: skip
    for s, got in sorted(rev.items(), key=lambda x: (-(x[1].per_device or 0), x[0])):
        t.add([s, subs[s].name, got.devices, got.fees, got.fee_transactions, got.per_device])
    b.tables.append(t)
    return b
