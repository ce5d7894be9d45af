"""Loading and saving the inventory: YAML file, CSV folder, every error with line and field."""

from __future__ import annotations

import re
from datetime import date
from pathlib import Path

import pytest
from click.testing import CliRunner

from app.cli import cli
from app.inventory_cli import summarize
from atmfleet.errors import ConfigError
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
from atmfleet.inventory_io import MAX_REPORTED, load_inventory, save_inventory

EXAMPLE = Path(__file__).resolve().parent.parent / "docs" / "examples" / "inventory.yaml"

SUBBRANCHES_CSV = """\
id,name,tier
HLBE,呼伦贝尔分行,2
CF,赤峰分行,2
"""
BRANCHES_CSV = """\
id,name,subbranch,kind,parent
BR-1,海拉尔支行,HLBE,outlet,
SSB-1,火车站自助银行,HLBE,self_service_bank,BR-1
BR-2,红山支行,CF,,
"""
DEVICES_CSV = """\
id,branch,type,placement,vendor,model,commissioned,decommissioned,service_window
ATM-1,BR-1,atm,on_site,GRG,H68N,2021-03-15,,24x7
CRS-2,SSB-1,crs,self_service_bank,GRG,H68V,2022-06-01,,
DEP-3,BR-2,deposit,on_site,GRG,H22N,2018-05-02,2026-06-30,mon-fri 08:30-17:30
"""


def write_csv_folder(
    folder: Path,
    subbranches: str = SUBBRANCHES_CSV,
    branches: str = BRANCHES_CSV,
    devices: str = DEVICES_CSV,
) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "subbranches.csv").write_text(subbranches, encoding="utf-8")
    (folder / "branches.csv").write_text(branches, encoding="utf-8")
    (folder / "devices.csv").write_text(devices, encoding="utf-8")
    return folder


def load_error(path: Path) -> str:
    with pytest.raises(ConfigError) as info:
        load_inventory(path)
    return str(info.value)


def replace_line(text: str, old: str, new: str) -> str:
    assert old in text
    return text.replace(old, new, 1)


YAML_HEAD = """\
subbranches:
  - id: HLBE
    name: 呼伦贝尔分行
    tier: 2
branches:
  - id: BR-1
    name: 海拉尔支行
    subbranch: HLBE
devices:
"""
#: A device entry starting on line 10 of ``YAML_HEAD + YAML_DEVICE``.
YAML_DEVICE = """\
  - id: ATM-1
    branch: BR-1
    type: atm
    placement: on_site
    vendor: GRG
    model: H68N
    commissioned: 2021-03-15
"""


def write_yaml(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "inventory.yaml"
    path.write_text(text, encoding="utf-8")
    return path


class TestExample:
    """docs/examples/inventory.yaml is a valid inventory with Chinese names."""

    def test_it_loads_with_its_sub_branches(self) -> None:
        inv = load_inventory(EXAMPLE)
        names = {s.id: s.name for s in inv.subbranches}
        assert names["HLBE"] == "呼伦贝尔分行"
        assert names["CF"] == "赤峰分行"
        assert len(inv.devices) == 10
        assert inv.subbranch_of(inv.device_by_id["ATM-CF-0001"]).name == "赤峰分行"

    def test_types_are_parsed_not_kept_as_text(self) -> None:
        inv = load_inventory(EXAMPLE)
        stm = inv.device_by_id["STM-TL-0001"]
        assert stm.deposit_capable is False and stm.can_deposit is False
        assert inv.device_by_id["CRS-HLBE-0005"].heartbeat_s == 30
        assert inv.device_by_id["DEP-CF-0002"].decommissioned == date(2026, 6, 30)
        assert inv.subbranch_by_id["TL"].tier is Tier.FIRST


class TestRoundTrip:
    """What ``save_inventory`` writes, ``load_inventory`` reads back equal."""

    @pytest.fixture
    def full(self) -> Inventory:
        """Every optional field set somewhere, and text that needs quoting."""
        return Inventory(
            subbranches=(SubBranch(id="SB.1", name='赤峰, "红山"', tier=Tier.THIRD),),
            branches=(
                Branch(id="B1", name="营业部", subbranch="SB.1"),
                Branch(
                    id="B2",
                    name="yes",
                    subbranch="SB.1",
                    kind=BranchKind.SELF_SERVICE_BANK,
                    parent="B1",
                ),
            ),
            devices=(
                Device(
                    id="D_1",
                    branch="B2",
                    type=DeviceType.SMART_TELLER,
                    placement=Placement.OFF_SITE,
                    vendor="null",
                    model="6040",
                    commissioned=date(2020, 2, 29),
                    decommissioned=date(2020, 2, 29),
                    service_window="mon-fri 08:30-17:30; sat,sun 09:00-16:00",
                    deposit_capable=True,
                    heartbeat_s=3600,
                ),
                Device(
                    id="D-2",
                    branch="B1",
                    type=DeviceType.PASSBOOK,
                    placement=Placement.ON_SITE,
                    vendor="Nantian",
                    model="PR2",
                    commissioned=date(2019, 1, 1),
                ),
            ),
        )

    @pytest.mark.parametrize("target", ["inv.yaml", "inv.yml", "csv-folder"])
    def test_save_then_load_is_equal(self, tmp_path: Path, full: Inventory, target: str) -> None:
        path = tmp_path / target
        save_inventory(full, path)
        assert load_inventory(path) == full

    def test_the_example_survives_yaml_to_csv_to_yaml(self, tmp_path: Path) -> None:
        inv = load_inventory(EXAMPLE)
        save_inventory(inv, tmp_path / "csv")
        save_inventory(load_inventory(tmp_path / "csv"), tmp_path / "again.yaml")
        assert load_inventory(tmp_path / "again.yaml") == inv

    def test_saved_yaml_is_readable_chinese(self, tmp_path: Path) -> None:
        save_inventory(load_inventory(EXAMPLE), tmp_path / "inv.yaml")
        assert "呼伦贝尔分行" in (tmp_path / "inv.yaml").read_text(encoding="utf-8")

    def test_saving_leaves_no_temporary_files(self, tmp_path: Path, full: Inventory) -> None:
        save_inventory(full, tmp_path / "csv")
        save_inventory(full, tmp_path / "csv")
        assert sorted(p.name for p in (tmp_path / "csv").iterdir()) == [
            "branches.csv",
            "devices.csv",
            "subbranches.csv",
        ]


class TestCsvFolder:
    """A folder of three CSV files; only the required columns must be present."""

    def test_minimal_columns_load_with_defaults(self, tmp_path: Path) -> None:
        inv = load_inventory(write_csv_folder(tmp_path))
        assert [d.id for d in inv.devices] == ["ATM-1", "CRS-2", "DEP-3"]
        assert inv.branch_by_id["BR-2"].kind is BranchKind.OUTLET
        assert inv.device_by_id["CRS-2"].service_window is None
        assert inv.device_by_id["ATM-1"].heartbeat_s == 60

    def test_excel_byte_order_mark_is_accepted(self, tmp_path: Path) -> None:
        folder = write_csv_folder(tmp_path)
        (folder / "devices.csv").write_bytes(b"\xef\xbb\xbf" + DEVICES_CSV.encode())
        assert len(load_inventory(folder).devices) == 3

    def test_blank_lines_are_skipped_and_line_numbers_stay_true(self, tmp_path: Path) -> None:
        devices = DEVICES_CSV.replace("ATM-1,BR-1,atm", "\nATM-1,BR-1,atmm")
        message = load_error(write_csv_folder(tmp_path, devices=devices))
        assert "devices.csv line 3: field 'type': 'atmm'" in message

    def test_quoted_cells_with_commas_and_newlines(self, tmp_path: Path) -> None:
        devices = DEVICES_CSV.replace(
            "mon-fri 08:30-17:30", '"mon-fri 08:30-17:30; sat,sun 09:00-16:00"'
        )
        inv = load_inventory(write_csv_folder(tmp_path, devices=devices))
        assert (
            inv.device_by_id["DEP-3"].service_window == "mon-fri 08:30-17:30; sat,sun 09:00-16:00"
        )


class TestFieldErrors:
    """A bad value names the file, the line, the field, the value and what is allowed."""

    def test_unknown_device_type_in_csv(self, tmp_path: Path) -> None:
        devices = replace_line(DEVICES_CSV, "CRS-2,SSB-1,crs", "CRS-2,SSB-1,atmm")
        message = load_error(write_csv_folder(tmp_path, devices=devices))
        assert message == (
            f"{tmp_path / 'devices.csv'} line 3: field 'type': 'atmm' is not one of "
            "atm, deposit, crs, smart_teller, passbook, inquiry"
        )

    def test_unknown_device_type_in_yaml_gives_the_value_line(self, tmp_path: Path) -> None:
        path = write_yaml(tmp_path, YAML_HEAD + YAML_DEVICE.replace("type: atm", "type: atmm"))
        assert load_error(path) == (
            f"{path} line 12 (devices): field 'type': 'atmm' is not one of "
            "atm, deposit, crs, smart_teller, passbook, inquiry"
        )

    def test_unknown_tier(self, tmp_path: Path) -> None:
        subs = replace_line(SUBBRANCHES_CSV, "赤峰分行,2", "赤峰分行,4")
        message = load_error(write_csv_folder(tmp_path, subbranches=subs))
        assert message.endswith("subbranches.csv line 3: field 'tier': '4' is not one of 1, 2, 3")

    def test_unknown_placement_in_yaml(self, tmp_path: Path) -> None:
        path = write_yaml(tmp_path, YAML_HEAD + YAML_DEVICE.replace("on_site", "lobby"))
        assert load_error(path).endswith(
            "line 13 (devices): field 'placement': 'lobby' is not one of "
            "on_site, off_site, self_service_bank"
        )

    @pytest.mark.parametrize(
        "bad_id", ["ATM 1", "ATM/1", "ATM'1", "ATM+1", "ATM#1", "自助1", "-ATM"]
    )
    def test_id_that_is_not_safe(self, tmp_path: Path, bad_id: str) -> None:
        devices = replace_line(DEVICES_CSV, "ATM-1,", f'"{bad_id}",')
        message = load_error(write_csv_folder(tmp_path, devices=devices))
        assert f"devices.csv line 2: field 'id': {bad_id!r} is not an id" in message
        assert "letters, digits" in message

    def test_bad_date(self, tmp_path: Path) -> None:
        devices = replace_line(DEVICES_CSV, "2021-03-15", "2021-13-15")
        message = load_error(write_csv_folder(tmp_path, devices=devices))
        assert message.endswith(
            "devices.csv line 2: field 'commissioned': '2021-13-15' is not a date YYYY-MM-DD"
        )

    def test_bad_boolean_in_yaml(self, tmp_path: Path) -> None:
        path = write_yaml(tmp_path, YAML_HEAD + YAML_DEVICE + "    deposit_capable: maybe\n")
        assert load_error(path).endswith(
            "line 17 (devices): field 'deposit_capable': 'maybe' is not true or false"
        )

    def test_heartbeat_out_of_range(self, tmp_path: Path) -> None:
        path = write_yaml(tmp_path, YAML_HEAD + YAML_DEVICE + "    heartbeat_s: 3\n")
        message = load_error(path)
        assert "line 17 (devices): field 'heartbeat_s': '3'" in message
        assert "greater than or equal to 5" in message

    def test_missing_required_field_in_yaml_points_at_the_entry(self, tmp_path: Path) -> None:
        path = write_yaml(tmp_path, YAML_HEAD + YAML_DEVICE.replace("    vendor: GRG\n", ""))
        assert (
            load_error(path) == f"{path} line 10 (devices): field 'vendor': is missing (required)"
        )

    def test_empty_required_cell(self, tmp_path: Path) -> None:
        devices = replace_line(DEVICES_CSV, ",GRG,H68N,", ",,H68N,")
        message = load_error(write_csv_folder(tmp_path, devices=devices))
        assert message.endswith("devices.csv line 2: field 'vendor': is missing (required)")

    def test_unknown_field_in_yaml_lists_the_allowed_ones(self, tmp_path: Path) -> None:
        path = write_yaml(tmp_path, YAML_HEAD + YAML_DEVICE + "    vendr: GRG\n")
        message = load_error(path)
        assert (
            "line 17 (devices): field 'vendr': is not a known field; allowed: id, branch" in message
        )


class TestCsvStructureErrors:
    """Header and row shape problems stop the file with the line they are on."""

    def test_missing_required_column(self, tmp_path: Path) -> None:
        devices = "id,branch,type,placement,vendor,model\nATM-1,BR-1,atm,on_site,GRG,H68N\n"
        message = load_error(write_csv_folder(tmp_path, devices=devices))
        assert message.endswith(
            "devices.csv line 1: column 'commissioned' is missing; "
            "required: id, branch, type, placement, vendor, model, commissioned"
        )

    def test_misspelt_column(self, tmp_path: Path) -> None:
        branches = BRANCHES_CSV.replace("subbranch,", "sub_branch,")
        message = load_error(write_csv_folder(tmp_path, branches=branches))
        assert (
            "branches.csv line 1: column 'sub_branch' is not a known column; allowed: " in message
        )

    def test_row_with_too_many_cells(self, tmp_path: Path) -> None:
        devices = replace_line(DEVICES_CSV, ",2018-05-02,", ",2018-05-02,x,")
        message = load_error(write_csv_folder(tmp_path, devices=devices))
        assert message.endswith(
            "devices.csv line 4: 10 cells, the header has 9 "
            "(id,branch,type,placement,vendor,model,commissioned,"
            "decommissioned,service_window)"
        )

    def test_gbk_file_is_refused_with_a_hint(self, tmp_path: Path) -> None:
        folder = write_csv_folder(tmp_path)
        (folder / "subbranches.csv").write_bytes(SUBBRANCHES_CSV.encode("gbk"))
        message = load_error(folder)
        assert "subbranches.csv line 2: not UTF-8" in message
        assert "CSV UTF-8" in message

    def test_missing_file_in_the_folder(self, tmp_path: Path) -> None:
        folder = write_csv_folder(tmp_path)
        (folder / "branches.csv").unlink()
        assert load_error(folder) == f"{folder / 'branches.csv'}: no such file"

    def test_empty_file(self, tmp_path: Path) -> None:
        message = load_error(write_csv_folder(tmp_path, devices=""))
        assert message.endswith("devices.csv line 1: empty file; expected a header line")


class TestYamlStructureErrors:
    """Syntax and shape problems of the YAML file name the line."""

    def test_syntax_error(self, tmp_path: Path) -> None:
        path = write_yaml(tmp_path, YAML_HEAD + "  - id: [ATM-1\n")
        message = load_error(path)
        assert message.startswith(f"{path} line ")
        assert "not valid YAML" in message

    def test_unknown_top_level_key(self, tmp_path: Path) -> None:
        path = write_yaml(tmp_path, YAML_HEAD + YAML_DEVICE + "device:\n  - id: X\n")
        assert load_error(path) == (
            f"{path} line 17: key 'device' is not one of subbranches, branches, devices, maintainers"
        )

    def test_missing_section(self, tmp_path: Path) -> None:
        path = write_yaml(tmp_path, YAML_HEAD.replace("devices:\n", ""))
        assert "key 'devices' is missing" in load_error(path)

    def test_an_empty_section_is_allowed(self, tmp_path: Path) -> None:
        assert load_inventory(write_yaml(tmp_path, YAML_HEAD)).devices == ()

    def test_section_that_is_not_a_list(self, tmp_path: Path) -> None:
        path = write_yaml(tmp_path, YAML_HEAD + "  id: ATM-1\n")
        assert load_error(path) == f"{path} line 10 (devices): expected a list of entries"

    def test_the_same_field_twice_in_an_entry(self, tmp_path: Path) -> None:
        path = write_yaml(tmp_path, YAML_HEAD + YAML_DEVICE + "    type: crs\n")
        assert load_error(path) == f"{path} line 17 (devices): field 'type' appears twice"

    def test_a_file_that_is_not_a_mapping(self, tmp_path: Path) -> None:
        assert "expected a mapping" in load_error(write_yaml(tmp_path, "- 1\n- 2\n"))

    def test_unsupported_suffix_and_missing_path(self, tmp_path: Path) -> None:
        (tmp_path / "inv.json").write_text("{}")
        assert "use a .yaml/.yml file or a folder" in load_error(tmp_path / "inv.json")
        assert "no such file" in load_error(tmp_path / "nothing.yaml")


class TestCrossChecks:
    """References between the tables and rules between fields."""

    def test_duplicate_device_id_names_both_lines(self, tmp_path: Path) -> None:
        devices = replace_line(DEVICES_CSV, "DEP-3,", "ATM-1,")
        message = load_error(write_csv_folder(tmp_path, devices=devices))
        assert message.endswith(
            "devices.csv line 4: field 'id': 'ATM-1' is a duplicate (first at line 2)"
        )

    def test_duplicate_sub_branch_id_in_yaml(self, tmp_path: Path) -> None:
        text = YAML_HEAD.replace(
            "\nbranches:\n", "\n  - id: HLBE\n    name: 又一个\n    tier: 1\nbranches:\n", 1
        )
        path = write_yaml(tmp_path, text)
        assert load_error(path) == (
            f"{path} line 5 (subbranches): field 'id': 'HLBE' is a duplicate (first at line 2)"
        )

    def test_branch_with_unknown_sub_branch(self, tmp_path: Path) -> None:
        branches = replace_line(BRANCHES_CSV, ",红山支行,CF,", ",红山支行,CHIFENG,")
        message = load_error(write_csv_folder(tmp_path, branches=branches))
        assert message == (
            f"{tmp_path / 'branches.csv'} line 4: field 'subbranch': 'CHIFENG' is not an id in "
            f"{tmp_path / 'subbranches.csv'} (known: CF, HLBE)"
        )

    def test_device_with_unknown_branch(self, tmp_path: Path) -> None:
        devices = replace_line(DEVICES_CSV, "CRS-2,SSB-1,", "CRS-2,SSB-9,")
        message = load_error(write_csv_folder(tmp_path, devices=devices))
        assert message.endswith(
            "devices.csv line 3: field 'branch': 'SSB-9' is not an id in "
            f"{tmp_path / 'branches.csv'} (known: BR-1, BR-2, SSB-1)"
        )

    def test_self_service_bank_parent_must_be_an_outlet(self, tmp_path: Path) -> None:
        branches = BRANCHES_CSV + "SSB-2,商场自助银行,HLBE,self_service_bank,SSB-1\n"
        message = load_error(write_csv_folder(tmp_path, branches=branches))
        assert message.endswith(
            "branches.csv line 5: field 'parent': 'SSB-1' is a self_service_bank; "
            "the parent of a self-service bank must be an outlet"
        )

    def test_self_service_bank_parent_must_exist(self, tmp_path: Path) -> None:
        branches = replace_line(BRANCHES_CSV, "self_service_bank,BR-1", "self_service_bank,BR-7")
        message = load_error(write_csv_folder(tmp_path, branches=branches))
        assert "branches.csv line 3: field 'parent': 'BR-7' is not an id in" in message

    def test_an_outlet_has_no_parent(self, tmp_path: Path) -> None:
        branches = replace_line(BRANCHES_CSV, "CF,,", "CF,outlet,BR-1")
        message = load_error(write_csv_folder(tmp_path, branches=branches))
        assert "branches.csv line 4: field 'parent': 'BR-1': only a self_service_bank" in message

    def test_decommissioned_before_commissioned(self, tmp_path: Path) -> None:
        devices = replace_line(DEVICES_CSV, "2018-05-02,2026-06-30", "2018-05-02,2017-12-31")
        message = load_error(write_csv_folder(tmp_path, devices=devices))
        assert message.endswith(
            "devices.csv line 4: field 'decommissioned': '2017-12-31' is before commissioned "
            "'2018-05-02'"
        )

    def test_decommissioned_on_the_day_of_commissioning_is_allowed(self, tmp_path: Path) -> None:
        devices = replace_line(DEVICES_CSV, "2018-05-02,2026-06-30", "2018-05-02,2018-05-02")
        assert len(load_inventory(write_csv_folder(tmp_path, devices=devices)).devices) == 3

    @pytest.mark.parametrize(
        ("spec", "says"),
        [
            ("mon-fry 08:30-17:30", "'mon-fry'"),
            ("mon-fri 08:30-25:00", "'25:00'"),
            ("mon-fri", "needs days and times"),
        ],
    )
    def test_invalid_service_window(self, tmp_path: Path, spec: str, says: str) -> None:
        devices = replace_line(DEVICES_CSV, ",mon-fri 08:30-17:30", f",{spec}")
        message = load_error(write_csv_folder(tmp_path, devices=devices))
        assert f"devices.csv line 4: field 'service_window': {spec!r}: " in message
        assert says in message

    def test_invalid_service_window_in_yaml_gives_its_line(self, tmp_path: Path) -> None:
        path = write_yaml(tmp_path, YAML_HEAD + YAML_DEVICE + "    service_window: sometimes\n")
        assert load_error(path).startswith(
            f"{path} line 17 (devices): field 'service_window': 'sometimes': "
        )


class TestManyProblems:
    """All problems are reported at once, up to a limit."""

    def test_problems_of_every_table_come_together(self, tmp_path: Path) -> None:
        subs = replace_line(SUBBRANCHES_CSV, "赤峰分行,2", "赤峰分行,9")
        devices = replace_line(DEVICES_CSV, "CRS-2,SSB-1,crs", "CRS-2,SSB-1,atmm")
        lines = load_error(write_csv_folder(tmp_path, subbranches=subs, devices=devices))
        assert lines.splitlines()[0].endswith(
            "subbranches.csv line 3: field 'tier': '9' is not one of 1, 2, 3"
        )
        assert "devices.csv line 3: field 'type': 'atmm'" in lines.splitlines()[-1]

    def test_the_list_is_capped(self, tmp_path: Path) -> None:
        rows = "".join(
            f"D{i},BR-1,atmm,on_site,GRG,M,2020-01-01,,\n" for i in range(MAX_REPORTED + 5)
        )
        header = DEVICES_CSV.splitlines()[0] + "\n"
        message = load_error(write_csv_folder(tmp_path, devices=header + rows))
        assert len(message.splitlines()) == MAX_REPORTED + 1
        assert message.splitlines()[-1] == "... and 5 more problems"


class TestCheckCommand:
    """``atmfleet inventory check FILE``."""

    def test_valid_file_prints_counts(self) -> None:
        result = CliRunner().invoke(cli, ["inventory", "check", str(EXAMPLE)])
        assert result.exit_code == 0, result.output
        assert result.output.startswith(f"{EXAMPLE}: ok\n4 sub-branches, 7 branches")
        assert "10 devices (9 active, 1 decommissioned)" in result.output
        assert "呼伦贝尔分行" in result.output

    def test_bad_file_exits_2_with_the_message_and_no_traceback(self, tmp_path: Path) -> None:
        devices = replace_line(DEVICES_CSV, "CRS-2,SSB-1,crs", "CRS-2,SSB-1,atmm")
        folder = write_csv_folder(tmp_path, devices=devices)
        result = CliRunner().invoke(cli, ["inventory", "check", str(folder)])
        assert result.exit_code == 2
        assert result.stderr == (
            f"atmfleet: error: {folder / 'devices.csv'} line 3: field 'type': 'atmm' is not one "
            "of atm, deposit, crs, smart_teller, passbook, inquiry\n"
        )
        assert result.stdout == ""
        assert "Traceback" not in result.output

    def test_missing_file_exits_2(self, tmp_path: Path) -> None:
        result = CliRunner().invoke(cli, ["inventory", "check", str(tmp_path / "no.yaml")])
        assert result.exit_code == 2
        assert "no such file" in result.stderr


class TestSummary:
    """The counts printed by the check command."""

    def test_counts_by_sub_branch_type_and_placement(self, tmp_path: Path) -> None:
        text = summarize(load_inventory(write_csv_folder(tmp_path)))
        lines = text.splitlines()
        assert lines[0] == (
            "2 sub-branches, 3 branches (2 outlets, 1 self-service banks), "
            "3 devices (2 active, 1 decommissioned)"
        )
        assert any(
            line.split()[:6] == ["HLBE", "tier", "2", "branches", "2", "devices"]
            and line.split()[6] == "2"
            for line in lines
        )
        assert any(
            line.split() == ["CF", "tier", "2", "branches", "1", "devices", "0", "赤峰分行"]
            for line in lines
        )
        assert any(line.split() == ["self_service_bank", "1"] for line in lines)
        assert not any(line.split()[:1] == ["deposit"] for line in lines)


class TestDocumentedFormats:
    """The YAML and CSV samples in docs/inventory.md load."""

    DOC = EXAMPLE.parent.parent / "inventory.md"

    def _blocks(self, lang: str) -> list[str]:
        text = self.DOC.read_text(encoding="utf-8")
        return re.findall(rf"^```{lang}\n(.*?)^```$", text, re.M | re.S)

    def test_yaml_sample_loads(self, tmp_path: Path) -> None:
        (sample,) = self._blocks("yaml")
        inv = load_inventory(write_yaml(tmp_path, sample))
        assert inv.device_by_id["ATM-CF-0001"].service_window == "daily 07:00-22:00"

    def test_csv_samples_load(self, tmp_path: Path) -> None:
        subbranches, branches, devices = self._blocks("csv")
        inv = load_inventory(write_csv_folder(tmp_path, subbranches, branches, devices))
        assert inv.device_by_id["CRS-CF-0003"].heartbeat_s == 30
        assert inv.branch_by_id["SSB-CF-001"].parent == "BR-CF-001"


class TestOnePass:
    """Every problem of every kind in one run, sorted by file and line: field errors,
    duplicate ids and unknown references together (a record with a field error is still
    cross-checked on its other fields)."""

    def test_a_yaml_file_lists_everything_in_line_order(self, tmp_path: Path) -> None:
        text = (
            (
                YAML_HEAD
                # line 10: a bad type and an unknown branch in the same entry
                + YAML_DEVICE.replace("branch: BR-1", "branch: BR-9").replace(
                    "type: atm", "type: atmm"
                )
                # line 17: the same id again, with a bad date
                + YAML_DEVICE.replace("2021-03-15", "2021-13-15")
                # line 24: the same id a third time, otherwise fine
                + YAML_DEVICE
                + "  - id: ATM-4\n    branch: BR-1\n    type: atm\n    placement: on_site\n"
                "    vendor: GRG\n    model: H68N\n    commissioned: 2021-03-15\n"
                "    decommissioned: 2020-01-01\n"  # line 38
            ).replace("    subbranch: HLBE\n", "    subbranch: HLB\n")
        )  # line 8
        path = write_yaml(tmp_path, text)
        known = "is not an id in"
        assert load_error(path).splitlines() == [
            f"{path} line 8 (branches): field 'subbranch': 'HLB' {known} {path} (known: HLBE)",
            f"{path} line 11 (devices): field 'branch': 'BR-9' {known} {path} (known: BR-1)",
            f"{path} line 12 (devices): field 'type': 'atmm' is not one of "
            "atm, deposit, crs, smart_teller, passbook, inquiry",
            f"{path} line 17 (devices): field 'id': 'ATM-1' is a duplicate (first at line 10)",
            f"{path} line 23 (devices): field 'commissioned': '2021-13-15' is not a date YYYY-MM-DD",
            f"{path} line 24 (devices): field 'id': 'ATM-1' is a duplicate (first at line 10)",
            f"{path} line 38 (devices): field 'decommissioned': '2020-01-01' is before "
            "commissioned '2021-03-15'",
        ]

    def test_a_csv_folder_lists_file_by_file_then_by_line(self, tmp_path: Path) -> None:
        branches = BRANCHES_CSV + "BR-3,三号支行,XX,outlet,\n"  # line 5: unknown sub-branch
        devices = (
            DEVICES_CSV.replace("ATM-1,BR-1,atm", "ATM-1,BR-1,atmm").replace(  # line 2: field error
                "CRS-2,SSB-1,", "CRS-2,SSB-7,"
            )  # line 3: unknown branch
            + "ATM-1,BR-1,atm,on_site,GRG,H68N,2021-03-15,,\n"  # line 5: duplicate of line 2
            + "ATM-6,BR-1,atm\n"  # line 6: too few cells
            + "ATM-7,SSB-1,atm,on_site,GRG,H68N,2021-03-15,,\n"  # line 7: fine
        )
        folder = write_csv_folder(tmp_path, branches=branches, devices=devices)
        lines = load_error(folder).splitlines()
        b, d = folder / "branches.csv", folder / "devices.csv"
        assert [line.split(": field")[0].split(": ")[0] for line in lines] == [
            f"{b} line 5", f"{d} line 2", f"{d} line 3", f"{d} line 5", f"{d} line 6",
        ]  # fmt: skip
        assert "'XX' is not an id in" in lines[0]
        assert "'atmm' is not one of" in lines[1]
        assert "'SSB-7' is not an id in" in lines[2]
        assert "'ATM-1' is a duplicate (first at line 2)" in lines[3]
        assert lines[4].endswith("3 cells, the header has 9 (" + DEVICES_CSV.split("\n")[0] + ")")

    def test_a_reference_to_a_record_with_an_error_is_not_reported_again(
        self, tmp_path: Path
    ) -> None:
        devices = DEVICES_CSV + "ATM-9,BR-2,atm,on_site,GRG,H68N,2021-03-15,,\n"
        branches = BRANCHES_CSV.replace("BR-2,红山支行,CF,,", "BR-2,红山支行,CF,bank,")
        message = load_error(write_csv_folder(tmp_path, branches=branches, devices=devices))
        assert message.splitlines() == [
            f"{tmp_path / 'branches.csv'} line 4: field 'kind': 'bank' is not one of "
            "outlet, self_service_bank"
        ]

    def test_the_header_errors_of_every_file_come_together(self, tmp_path: Path) -> None:
        folder = write_csv_folder(
            tmp_path,
            branches=BRANCHES_CSV.replace("subbranch,", "sub_branch,"),
            devices=DEVICES_CSV.replace("vendor,", "vendr,"),
        )
        lines = load_error(folder).splitlines()
        assert len(lines) == 2
        assert "branches.csv line 1: column 'sub_branch' is not a known column" in lines[0]
        assert "devices.csv line 1: column 'vendr' is not a known column" in lines[1]

    def test_the_check_command_prints_them_all(self, tmp_path: Path) -> None:
        devices = DEVICES_CSV.replace("ATM-1,BR-1,atm", "ATM-1,BR-9,atmm") + (
            "ATM-1,BR-1,atm,on_site,GRG,H68N,2021-03-15,,\n"
        )
        folder = write_csv_folder(tmp_path, devices=devices)
        result = CliRunner().invoke(cli, ["inventory", "check", str(folder)])
        assert result.exit_code == 2
        err = result.stderr.splitlines()
        assert len(err) == 3 and err[0].startswith("atmfleet: error: ")
        assert "line 2: field 'branch': 'BR-9'" in err[0]
        assert "line 2: field 'type': 'atmm'" in err[1]
        assert "line 5: field 'id': 'ATM-1' is a duplicate (first at line 2)" in err[2]
