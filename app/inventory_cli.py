"""``atmfleet inventory check FILE``: validate an inventory and print what it holds."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import click

from atmfleet.inventory import BranchKind, Inventory
from atmfleet.inventory_io import load_inventory


def summarize(inv: Inventory) -> str:
    """Counts by sub-branch, type and placement, as aligned text (active devices only,
    decommissioned ones are counted separately)."""
    active = [d for d in inv.devices if d.decommissioned is None]
    outlets = sum(1 for b in inv.branches if b.kind is BranchKind.OUTLET)
    lines = [
        f"{len(inv.subbranches)} sub-branches, {len(inv.branches)} branches "
        f"({outlets} outlets, {len(inv.branches) - outlets} self-service banks), "
        f"{len(inv.devices)} devices ({len(active)} active, "
        f"{len(inv.devices) - len(active)} decommissioned)",
        "",
        "by sub-branch (active devices):",
    ]
    branches_of = Counter(b.subbranch for b in inv.branches)
    branch_sub = {b.id: b.subbranch for b in inv.branches}
    devices_of = Counter(branch_sub[d.branch] for d in active)
    width = max((len(s.id) for s in inv.subbranches), default=0)
    for sub in sorted(inv.subbranches, key=lambda s: (s.tier.value, s.id)):
        lines.append(
            f"  {sub.id:<{width}}  tier {sub.tier.value}  branches {branches_of[sub.id]:>5}  "
            f"devices {devices_of[sub.id]:>6}  {sub.name}"
        )
    for title, counts in (
        ("by type", Counter(d.type.value for d in active)),
        ("by placement", Counter(d.placement.value for d in active)),
    ):
        lines += ["", f"{title} (active devices):"]
        lines += [f"  {key:<18}{n:>7}" for key, n in sorted(counts.items())]
    lines += ["", f"maintainers: {len(inv.maintainers)}"]
    uncovered = sorted(
        {
            (d.vendor, branch_sub[d.branch])
            for d in active
            if inv.maintainer_for(d.vendor, branch_sub[d.branch]) is None
        }
    )
    if uncovered:
        lines.append("  no maintainer (vendor, sub-branch): incidents there need --maintainer")
        lines += [f"    {vendor}  {sub}" for vendor, sub in uncovered]
    return "\n".join(lines)


@click.group("inventory")
def inventory() -> None:
    """The fleet's sub-branches, branches and devices (docs/inventory.md)."""


@inventory.command("check")
@click.argument("file", type=click.Path(path_type=Path))
def check(file: Path) -> None:
    """Validate FILE (a .yaml file or a folder of CSVs) and print counts.

    Exits 2 with every problem (file, line, field, value) if the inventory is wrong.
    """
    inv = load_inventory(file)
    click.echo(f"{file}: ok")
    click.echo(summarize(inv))
