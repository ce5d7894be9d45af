"""How long loading (and saving) a big inventory takes, CSV folder vs one YAML file.

    python bench/bench_inventory.py [DEVICES]      # default 100000

Builds a synthetic fleet (12 sub-branches, one branch per 50 devices), saves it in both
formats in a temporary folder, and prints the save and load times and file sizes.
"""

from __future__ import annotations

import sys
import tempfile
import time
from datetime import date
from pathlib import Path

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
from atmfleet.inventory_io import load_inventory, save_inventory

WINDOWS = (None, "24x7", "mon-fri 08:30-17:30; sat,sun 09:00-16:00", "daily 07:00-22:00")


def fleet(n_devices: int) -> Inventory:
    subs = tuple(
        SubBranch(id=f"SB{i:02d}", name=f"分行{i:02d}", tier=Tier(str(i % 3 + 1)))
        for i in range(12)
    )
    n_branches = max(1, n_devices // 50)
    branches = tuple(
        Branch(
            id=f"BR{i:05d}",
            name=f"支行{i:05d}",
            subbranch=subs[i % len(subs)].id,
            kind=BranchKind.SELF_SERVICE_BANK if i % 4 == 3 else BranchKind.OUTLET,
            parent=f"BR{i - 1:05d}" if i % 4 == 3 else None,
        )
        for i in range(n_branches)
    )
    types = list(DeviceType)
    devices = tuple(
        Device(
            id=f"DEV{i:07d}",
            branch=branches[i % n_branches].id,
            type=types[i % len(types)],
            placement=list(Placement)[i % 3],
            vendor=("GRG", "Hitachi", "Diebold Nixdorf", "Nantian")[i % 4],
            model=f"M{i % 17}",
            commissioned=date(2015 + i % 10, 1 + i % 12, 1 + i % 28),
            service_window=WINDOWS[i % len(WINDOWS)],
            heartbeat_s=60,
        )
        for i in range(n_devices)
    )
    return Inventory(subbranches=subs, branches=branches, devices=devices)


def timed(label: str, fn: object, *args: object) -> object:
    start = time.perf_counter()
    result = fn(*args)  # type: ignore[operator]
    print(f"{label:<28}{time.perf_counter() - start:8.2f} s")
    return result


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 100_000
    inv = fleet(n)
    print(f"{n} devices, {len(inv.branches)} branches, {len(inv.subbranches)} sub-branches")
    with tempfile.TemporaryDirectory() as tmp:
        csv_dir, yaml_file = Path(tmp) / "csv", Path(tmp) / "inventory.yaml"
        timed("save CSV folder", save_inventory, inv, csv_dir)
        timed("save YAML file", save_inventory, inv, yaml_file)
        size = sum(p.stat().st_size for p in csv_dir.iterdir())
        print(f"{'CSV size':<28}{size / 1e6:8.1f} MB")
        print(f"{'YAML size':<28}{yaml_file.stat().st_size / 1e6:8.1f} MB")
        loaded = timed("load CSV folder", load_inventory, csv_dir)
        assert loaded == inv
        loaded = timed("load YAML file", load_inventory, yaml_file)
        assert loaded == inv


if __name__ == "__main__":
    main()
