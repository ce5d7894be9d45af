"""资源预警率 metrics: today's resource-warning time W per branch (docs/metrics.md).

:func:`day_warning` sums W (rules.resource, through the report layer's :class:`Context`,
so the figure is the one ``atmfleet kpi resource-warnings`` computes) per branch: the
reference. :func:`day_warning_read` gives the same sums computing W only for the devices
that reported a warning today (every other device's W is 0): what ``atmfleet serve``
runs. :func:`families` yields the gauge. The rate is ΣW / ΣS in the recording rules
(``*:atmfleet_day_resource_warning:ratio``), over ``atmfleet_day_scheduled_seconds``
of the business view: the same S as 开机率.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from datetime import date

from prometheus_client.core import Metric

from atmfleet.inventory import Device, Inventory, Tier
from rules.feed import Feed, uptime_of_day
from rules.feed import _devices as feed_devices
from rules.feed import queries as feed_queries
from rules.fleet import fleet_devices
from rules.report import Context
from rules.resource import WarningPolicy, resource_for
from rules.timeline import Span
from rules.uptime import day_span

#: (branch, sub-branch, tier), as the other per-branch day gauges are labelled.
BranchKey = tuple[str, str, str]


def branch_key(inventory: Inventory, d: Device) -> BranchKey:
    branch = inventory.branch_by_id[d.branch]
    return d.branch, branch.subbranch, inventory.subbranch_by_id[branch.subbranch].tier.value


def day_warning(ctx: Context, devices: Sequence[Device], today: date) -> dict[BranchKey, float]:
    """Seconds of today (so far) in a resource warning, per branch of ``devices``."""
    per_device = ctx.resource_days()
    out: dict[BranchKey, float] = {}
    for d in devices:
        key = branch_key(ctx.inventory, d)
        rw = per_device.get(d.id, {}).get(today)
        out[key] = out.get(key, 0.0) + (rw.warning_ms / 1000 if rw is not None else 0.0)
    return out


#: Every branch with a device in the fleet on ``%(today)s`` (rules.fleet's
#: ``in_fleet_during`` of one day), with its sub-branch and that one's tier.
FLEET_BRANCHES = """
SELECT DISTINCT d.branch, b.subbranch, s.tier
FROM devices d
JOIN branches b ON b.id = d.branch
JOIN subbranches s ON s.id = b.subbranch
WHERE d.commissioned <= %(today)s AND (d.decommissioned IS NULL OR d.decommissioned > %(today)s)
"""


def _devices_of(feed: Feed, ids: Sequence[str]) -> list[Device]:
    """The inventory's devices of ``ids`` (as :meth:`rules.feed.Feed.inventory` builds
    them), in the inventory's order."""
    inventory = feed_queries()["inventory_devices"].strip().rstrip(";")
    sql = f"SELECT * FROM ({inventory}) inv WHERE inv.id = ANY(%(ids)s) ORDER BY inv.id"
    with feed._conn.cursor(binary=True) as cur:
        return list(feed_devices(cur.execute(sql, {"ids": list(ids)}).fetchall()))


def day_warning_read(feed: Feed, today: date, horizon: int) -> dict[BranchKey, float]:
    """:func:`day_warning` of the devices in the fleet on ``today``, read from the store
    as the report layer reads it: the day's warning spans are read once, and only the
    devices with one have their timeline, S and W computed (rules.resource's
    ``resource_for`` over their 开机率 of the day); every other device's W is 0, and
    every branch of the fleet shows. The same floats: W is added in the inventory's
    order, and the devices left out add 0.0."""
    rules = feed.rules
    lo, hi = day_span(today, rules.tz)
    params = WarningPolicy.from_rules(rules).query_params()
    spans = feed.warning_spans(lo, hi, horizon, params)
    with feed._conn.cursor(binary=True) as cur:
        branches = cur.execute(FLEET_BRANCHES, {"today": today}).fetchall()
    out: dict[BranchKey, float] = {(b, s, Tier(t).value): 0.0 for b, s, t in branches}
    if not spans:
        return out
    warned = fleet_devices(_devices_of(feed, sorted(spans)), today)
    if not warned:
        return out

    def read_spans(a: int, b: int) -> Mapping[str, list[Span]]:
        return spans if (a, b) == (lo, hi) else feed.warning_spans(a, b, horizon, params)

    up, _ = uptime_of_day(feed, warned, today, horizon)
    per_device = resource_for(feed, warned, up, horizon, read_spans)
    sub_of = {i: s for i, _n, s, _k, _p in feed._rows("inventory_branches")}
    tier_of = {i: Tier(t).value for i, _n, t in feed._rows("inventory_subbranches")}
    for d in warned:
        key = (d.branch, sub_of[d.branch], tier_of[sub_of[d.branch]])
        rw = per_device.get(d.id, {}).get(today)
        out[key] = out.get(key, 0.0) + (rw.warning_ms / 1000 if rw is not None else 0.0)
    return out


def families(day: Mapping[BranchKey, float]) -> Iterator[Metric]:
    from exporters.metrics import ColumnFamily  # one per branch: rendered as columns

    warning = ColumnFamily(
        "atmfleet_day_resource_warning_seconds",
        "Scheduled time of today (local) so far in a cash or consumables warning (资源预警).",
        ("branch", "subbranch", "tier"),
    )
    for key, seconds in sorted(day.items()):
        warning.add(key, seconds)
    yield warning
