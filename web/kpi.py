"""The figures of the console's device and KPI pages, from the report layer
(rules/report.py): the same calls ``atmfleet kpi`` makes, so a number on a page is the one
the command prints.

A device page reads only its own device: :class:`DeviceFeed` is the KPI feed restricted to
a set of devices (each device's timeline and uptime depend on its own telemetry and the
fleet-wide collector outages only, so the figures equal ``atmfleet kpi uptime --scope
device:ID``), with an inventory of just that device, its branch and sub-branch.
"""

from __future__ import annotations

import time
from datetime import date, timedelta
from typing import Any

import psycopg

from atmfleet.errors import UsageError
from atmfleet.inventory import (
    Branch,
    BranchKind,
    Device,
    DeviceType,
    Inventory,
    Placement,
    SubBranch,
    Tier,
)
from atmfleet.store.audit import User
from rules.config import Rules
from rules.feed import Feed, queries
from rules.report import (
    Context,
    Report,
    Scope,
    low_yield_report,
    resolve_period,
    substitution_report,
    uptime_report,
    uptime_row,
)
from rules.timeline import from_ms
from rules.uptime import Uptime, day_span, total
from web.scope import require_within

#: The feed's per-device reads (each has a device_id column).
_PER_DEVICE = frozenset({"runs", "presence", "power", "txn_days", "financial_days"})


#: When monitoring began (Feed.monitoring_start_ms), per database: it only moves when the
#: store's earliest evidence does (retention), so it is reread once a minute, not per page.
_MONITORING_START: dict[str, tuple[float, int | None]] = {}
MONITORING_START_TTL_S = 60.0


class DeviceFeed(Feed):
    """The KPI feed, reading the per-device queries for ``device_ids`` only."""

    def __init__(self, conn: psycopg.Connection, rules: Rules, device_ids: list[str]) -> None:
        super().__init__(conn, rules)
        self._ids = device_ids
        self.may_keep = False

    def monitoring_start_ms(self) -> int | None:
        key = self._conn.info.dbname + "@" + self._conn.info.host
        now = time.monotonic()
        got = _MONITORING_START.get(key)
        if got is None or now - got[0] > MONITORING_START_TTL_S:
            got = (now, super().monitoring_start_ms())
            _MONITORING_START[key] = got
        return got[1]

    def _rows(self, name: str, **params: Any) -> list[tuple[Any, ...]]:
        if name not in _PER_DEVICE:
            return super()._rows(name, **params)
        lines = [x for x in queries()[name].splitlines() if not x.lstrip().startswith("--")]
        text = "\n".join(lines).strip().rstrip(";")
        order = ""
        if "ORDER BY" in text:  # runs: by device, start (the output's first columns)
            text, _, order = text.rpartition("ORDER BY")
            order = "ORDER BY " + ", ".join(str(i + 1) for i in range(order.count(",") + 1))
        body = text.strip().rstrip(";")
        sql = f"SELECT * FROM ({body}) AS q WHERE q.device_id = ANY(%(web_ids)s) {order}"
        with self._conn.cursor(binary=True) as cur:
            return cur.execute(sql, {**params, "web_ids": self._ids}).fetchall()


def device_inventory(conn: psycopg.Connection, device_id: str) -> Inventory | None:
    row = conn.execute(
        "SELECT d.id, d.branch, d.type, d.placement, d.vendor, d.model, d.commissioned,"
        " d.decommissioned, d.service_window, d.deposit_capable, d.heartbeat_s,"
        " b.name, b.subbranch, b.kind, b.parent, s.name, s.tier"
        " FROM devices d JOIN branches b ON b.id = d.branch JOIN subbranches s"
        " ON s.id = b.subbranch WHERE d.id = %s",
        (device_id,),
    ).fetchone()
    if row is None:
        return None
    (i, b, t, p, v, m, c, dc, w, dep, hb, bname, sub, kind, parent, sname, tier) = row
    device = Device.model_construct(
        id=i, branch=b, type=DeviceType(t), placement=Placement(p), vendor=v, model=m,
        commissioned=c, decommissioned=dc, service_window=w, deposit_capable=dep,
        heartbeat_s=hb,
    )  # fmt: skip
    return Inventory.model_construct(
        subbranches=(SubBranch.model_construct(id=sub, name=sname, tier=Tier(tier)),),
        branches=(
            Branch.model_construct(
                id=b, name=bname, subbranch=sub, kind=BranchKind(kind), parent=parent
            ),
        ),
        devices=(device,),
    )


def device_figures(conn: psycopg.Connection, rules: Rules, device_id: str) -> dict[str, Any]:
    """Today's and the last 7 days' timeline, uptime against target, transactions per day
    and the daily financial average against the low-yield threshold, of one device."""
    inv = device_inventory(conn, device_id)
    if inv is None:
        raise UsageError(f"no device {device_id!r}")
    feed = DeviceFeed(conn, rules, [device_id])
    horizon = feed.now_ms()
    tz = rules.tz
    today = from_ms(horizon).astimezone(tz).date()
    first = today - timedelta(days=7)
    ctx = Context.make(feed, inv, Scope("device", device_id), first, today, horizon)
    days = ctx.uptime_days()
    lines = days.timelines.get(device_id, [])
    per_day = days.per_device.get(device_id, {})
    txn = ctx.txn().get(device_id, {})
    device = inv.devices[0]
    threshold = rules.low_yield.thresholds.get(device.type)
    # What `atmfleet kpi uptime --scope device:ID` reports for the 7 days and for today:
    # the device's total over those days (rules.report.per_device_uptime sums them so).
    target = ctx.target_of()(device_id)
    week_total = uptime_row(device_id, total(per_day[d] for d in per_day if d < today), target)
    today_total = uptime_row(device_id, per_day.get(today, Uptime()), target)

    def span_of(day: date) -> list[dict[str, Any]]:
        lo, hi = day_span(day, tz)
        return [
            {"from": max(a, lo), "to": min(b, hi), "label": str(label)}
            for a, b, label in lines
            if b > lo and a < hi
        ]

    rows = []
    for i in range(8):
        day = first + timedelta(days=i)
        up = per_day.get(day)
        t = txn.get(day)
        rows.append({
            "date": day.isoformat(), "uptime": None if up is None else up.ratio,
            "scheduled_ms": None if up is None else up.scheduled_ms,
            "available_ms": None if up is None else up.available_ms,
            "financial": None if t is None else t.financial,
            "non_financial": None if t is None else t.non_financial,
            "timeline": span_of(day),
        })  # fmt: skip
    fin = [
        (t.financial if (t := txn.get(first + timedelta(days=i))) else 0)
        for i in range(7)
        if (u := per_day.get(first + timedelta(days=i))) is not None and u.scheduled_ms
    ]
    average = sum(fin) / len(fin) if fin else None
    return {
        "device": device_id,
        "today": today.isoformat(),
        "days": rows,
        "week": week_total,
        "today_uptime": today_total,
        "target": target,
        "low_yield_threshold": threshold,
        "financial_daily_average": average,
        "meets_yield": None if average is None or threshold is None else average >= threshold,
        "tz": str(tz),
    }


# ------------------------------------------------------------------------ KPI page

KPI_KINDS = ("uptime", "substitution", "low-yield")


def check_scope(conn: psycopg.Connection, user: User, scope: Scope) -> None:
    """Refuse a KPI scope outside the user's org scope (403)."""
    if user.scope_kind == "fleet":
        return
    if scope.kind in ("fleet", "tier", "vendor", "type"):
        require_within(user, None, None, f"scope {scope}")
    if scope.kind == "subbranch":
        require_within(user, scope.value, None, f"scope {scope}")
    elif scope.kind in ("branch", "device"):
        q = (
            "SELECT b.subbranch, b.id FROM branches b WHERE b.id = %s"
            if scope.kind == "branch"
            else "SELECT b.subbranch, b.id FROM devices d JOIN branches b ON b.id = d.branch"
            " WHERE d.id = %s"
        )
        row = conn.execute(q, (scope.value,)).fetchone()
        require_within(user, row[0] if row else None, row[1] if row else None, f"scope {scope}")


def kpi_report(
    conn: psycopg.Connection, rules: Rules, user: User, kind: str, scope_text: str,
    first: date | None, last: date | None, by: str | None = None,
) -> Report:  # fmt: skip
    """One KPI report for the user's choice of scope and period (``atmfleet kpi KIND
    --scope S --from F --to T --json``)."""
    if kind not in KPI_KINDS:
        raise UsageError(f"kind {kind!r}: allowed: {', '.join(KPI_KINDS)}")
    scope = Scope.parse(scope_text)
    check_scope(conn, user, scope)
    feed = Feed(conn, rules)
    feed.may_keep = False
    horizon = feed.now_ms()
    today = from_ms(horizon).astimezone(rules.tz).date()
    if kind == "low-yield":
        first = last = last or first
    f, t = resolve_period(None, first, last, today)
    ctx = Context.make(feed, feed.inventory(), scope, f, t, horizon)
    default_by = {"fleet": "subbranch", "tier": "subbranch", "subbranch": "branch"}.get(
        scope.kind, "branch" if kind == "substitution" else "device"
    )
    if kind == "uptime":
        return uptime_report(ctx, by or default_by)
    if kind == "substitution":
        return substitution_report(ctx, by or default_by)
    return low_yield_report(ctx, by or default_by)
