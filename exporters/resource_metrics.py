"""资源预警率 metrics: today's resource-warning time W per branch (docs/metrics.md).

:func:`day_warning` sums W (rules.resource, through the report layer's :class:`Context`,
so the figure is the one ``atmfleet kpi resource-warnings`` computes) per branch;
:func:`families` yields the gauge. The rate is ΣW / ΣS in the recording rules
(``*:atmfleet_day_resource_warning:ratio``), over ``atmfleet_day_scheduled_seconds``
of the business view: the same S as 开机率.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from datetime import date

from prometheus_client.core import Metric

from atmfleet.inventory import Device, Inventory
from rules.report import Context

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
