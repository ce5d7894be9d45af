"""Maintainer contacts in the inventory (docs/inventory.md, "Maintainers")."""

from __future__ import annotations

from pathlib import Path

import pytest

from atmfleet.errors import ConfigError
from atmfleet.inventory_io import load_inventory, save_inventory
from simulator.fleet import generate_inventory

HEAD = """\
subbranches:
  - {id: HLBE, name: 呼伦贝尔分行, tier: 2}
  - {id: CF, name: 赤峰分行, tier: 2}
branches:
  - {id: BR-1, name: 海拉尔支行, subbranch: HLBE}
devices:
  - {id: ATM-1, branch: BR-1, type: atm, placement: on_site, vendor: GRG, model: H68, commissioned: 2024-01-01}
maintainers:
"""


def write(tmp_path: Path, maintainers: str) -> Path:
    path = tmp_path / "inventory.yaml"
    path.write_text(HEAD + maintainers, encoding="utf-8")
    return path


def test_a_region_team_first_then_the_vendor_wide_one(tmp_path: Path) -> None:
    inv = load_inventory(write(tmp_path, (
        "  - {id: M-GRG-HLBE, vendor: GRG, region: HLBE, name: 呼伦贝尔站, phone: '0470-1'}\n"
        "  - {id: M-GRG, vendor: GRG, name: 内蒙古中心}\n"
    )))  # fmt: skip
    assert inv.maintainer_for("GRG", "HLBE").id == "M-GRG-HLBE"  # type: ignore[union-attr]
    assert inv.maintainer_for("GRG", "CF").id == "M-GRG"  # type: ignore[union-attr]
    assert inv.maintainer_for("NCR", "CF") is None


def test_an_unknown_region_and_a_second_team_for_one_region_are_refused(tmp_path: Path) -> None:
    path = write(tmp_path, (
        "  - {id: M-1, vendor: GRG, region: XX, name: a}\n"
        "  - {id: M-2, vendor: GRG, region: HLBE, name: b}\n"
        "  - {id: M-3, vendor: GRG, region: HLBE, name: c}\n"
    ))  # fmt: skip
    with pytest.raises(ConfigError) as info:
        load_inventory(path)
    text = str(info.value)
    assert (
        f"{path} line 9 (maintainers): field 'region': 'XX' is not an id in {path} (known: CF, HLBE) (or '*' for every region)"
        in text
    )
    assert (
        f"{path} line 11 (maintainers): field 'region': vendor 'GRG' already has a maintainer"
        " for region 'HLBE' (line 10)"
    ) in text


def test_a_fleet_without_maintainers_loads(tmp_path: Path) -> None:
    path = tmp_path / "inventory.yaml"
    path.write_text(HEAD.replace("maintainers:\n", ""), encoding="utf-8")
    assert load_inventory(path).maintainers == ()


def test_the_simulated_fleet_has_a_team_per_vendor_and_subbranch_in_both_formats(
    tmp_path: Path,
) -> None:
    inv = generate_inventory(200, 3)
    vendors = {d.vendor for d in inv.devices}
    assert {(m.vendor, m.region) for m in inv.maintainers} == {
        (v, s.id) for v in vendors for s in inv.subbranches
    }
    for target in (tmp_path / "fleet.yaml", tmp_path / "csv"):
        save_inventory(inv, target)
        assert load_inventory(target) == inv
    assert (tmp_path / "csv" / "maintainers.csv").exists()
