"""The rules file: shipped defaults, loading from ATMFLEET_RULES_FILE, refusing bad input."""

from __future__ import annotations

from datetime import date
from pathlib import Path

import pytest

from atmfleet.errors import ConfigError
from atmfleet.inventory import Device, DeviceType, Placement, Tier
from atmfleet.settings import Settings
from rules.config import Rules, load_rules, parse_rules


class TestDefaults:
    def test_shipped_file_equals_the_models_defaults(self) -> None:
        """Every default is written out in default.yaml, and agrees with the code."""
        assert load_rules() == Rules()

    def test_defaults_match_the_plan(self) -> None:
        rules = load_rules()
        assert rules.timezone == "Asia/Shanghai"
        assert rules.heartbeat_timeout_ms(60) == 180_000
        assert rules.substitution.target == 0.60
        assert rules.low_yield.max_share == 0.05
        assert rules.network.self_service_banks_per_outlet == 3.0
        assert rules.tail.size == 10
        assert rules.vendors.repeat_fault_days == 7
        assert sum(rules.assessment.weights.values()) == pytest.approx(1.0)

    def test_default_windows_by_placement_and_type(self) -> None:
        rules = load_rules()

        def dev(placement: Placement, kind: DeviceType, window: str | None = None) -> Device:
            return Device(
                id="D1",
                branch="B1",
                type=kind,
                placement=placement,
                vendor="V",
                model="M",
                commissioned=date(2025, 1, 1),
                service_window=window,
            )

        windows = rules.service_windows
        assert windows.spec_for(dev(Placement.OFF_SITE, DeviceType.ATM)) == "24x7"
        assert windows.spec_for(dev(Placement.ON_SITE, DeviceType.SMART_TELLER)) == (
            "daily 09:00-17:00"
        )
        assert windows.spec_for(dev(Placement.ON_SITE, DeviceType.CRS)) == "24x7"
        own = dev(Placement.ON_SITE, DeviceType.SMART_TELLER, "mon-fri 08:30-17:30")
        assert windows.spec_for(own) == "mon-fri 08:30-17:30"


class TestLoading:
    def test_rules_file_from_the_environment(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        path = tmp_path / "bank.yaml"
        path.write_text("timezone: Asia/Urumqi\ntail:\n  size: 20\n", encoding="utf-8")
        monkeypatch.setenv("ATMFLEET_RULES_FILE", str(path))
        rules = load_rules(Settings().rules_file)
        assert (rules.timezone, rules.tail.size) == ("Asia/Urumqi", 20)
        assert rules.low_yield == Rules().low_yield  # untouched sections keep defaults

    def test_unquoted_tier_keys_are_read_as_tiers(self) -> None:
        rules = parse_rules("uptime:\n  targets: {1: 0.99, 2: 0.98, 3: 0.9}\n")
        assert rules.uptime.targets[Tier.THIRD] == 0.9

    def test_missing_file_names_it(self, tmp_path: Path) -> None:
        with pytest.raises(ConfigError, match=r"nope\.yaml: cannot read it"):
            load_rules(tmp_path / "nope.yaml")

    def test_empty_file_is_all_defaults(self) -> None:
        assert parse_rules("") == Rules()


class TestRefused:
    """Bad input stops start-up with the file, line, field and what is allowed."""

    @pytest.mark.parametrize(
        ("text", "message"),
        [
            (
                "heartbeat:\n  timeout_factor: -1\n",
                "x.yaml line 2: heartbeat.timeout_factor: Input should be greater than or equal to 1 (got -1)",
            ),
            (
                "uptime:\n  targets: {'1': 0.9}\n",
                "missing tier(s) ['2', '3']",
            ),
            (
                "tail:\n  size: ten\n",
                "x.yaml line 2: tail.size: Input should be a valid integer",
            ),
            (
                "assessment:\n  weights: {uptime: 0.5, substitution: 0.3, low_yield: 0.2, revenue: 0.2}\n",
                "assessment.weights: weights must sum to 1; they sum to 1.2",
            ),
            (
                "assessment:\n  weights: {uptime: 1.2, substitution: -0.2}\n",
                "weight of substitution is -0.2; allowed: a number >= 0",
            ),
            (
                "uptime:\n  targets: {'1': 1.5, '2': 0.9, '3': 0.9}\n",
                "target for tier 1 is 1.5; allowed: a ratio in (0, 1]",
            ),
            (
                "low_yield:\n  thresholds: {atm: -3}\n",
                "missing",
            ),
            (
                "timezone: Asia/Nowhere\n",
                "x.yaml line 1: timezone: 'Asia/Nowhere' is not an IANA time zone",
            ),
            (
                "uptime:\n  technical_excluded_causes: [cash_out, planned]\n",
                "'planned' cannot be listed here",
            ),
            (
                "uptime:\n  technical_excluded_causes: [cashout]\n",
                "Input should be 'available', 'fault', 'cash_out'",
            ),
            (
                "transactions:\n  financial_types: [withdrawal, loan]\n",
                "transactions.financial_types.1: Input should be 'withdrawal'",
            ),
        ],
    )
    def test_impossible_or_wrongly_typed_values(self, text: str, message: str) -> None:
        with pytest.raises(ConfigError) as info:
            parse_rules(text, "x.yaml")
        assert message in str(info.value)

    def test_unknown_key_lists_the_allowed_keys(self) -> None:
        text = "uptime:\n  targets: {'1': 0.9, '2': 0.9, '3': 0.9}\n  taget: 0.9\n"
        with pytest.raises(ConfigError) as info:
            parse_rules(text, "x.yaml")
        assert str(info.value) == (
            "rules file x.yaml line 3: unknown key 'uptime.taget'; allowed here: targets, "
            "business_excluded_causes, technical_excluded_causes, unknown_time"
        )

    def test_unknown_top_level_section(self) -> None:
        with pytest.raises(ConfigError, match="unknown key 'uptme'; allowed here: timezone"):
            parse_rules("uptme: {}\n", "x.yaml")

    def test_bad_service_window_names_the_rule(self) -> None:
        text = (
            "service_windows:\n  rules:\n"
            "    - {placement: on_site, window: 24x7}\n"
            "    - {type: atm, window: 'mon-fry 09:00-17:00'}\n"
        )
        with pytest.raises(ConfigError) as info:
            parse_rules(text, "x.yaml")
        assert "x.yaml line 4: service_windows.rules.1.window: 'mon-fry'" in str(info.value)

    def test_bad_placement_lists_the_allowed_ones(self) -> None:
        text = "service_windows:\n  rules:\n    - {placement: lobby, window: 24x7}\n"
        with pytest.raises(ConfigError, match="'on_site', 'off_site' or 'self_service_bank'"):
            parse_rules(text, "x.yaml")

    def test_broken_yaml_gives_the_line(self) -> None:
        with pytest.raises(ConfigError, match=r"x.yaml line 3: not valid YAML"):
            parse_rules("tail:\n  size: 3\n  period: day: month\n", "x.yaml")

    def test_top_level_must_be_a_mapping(self) -> None:
        with pytest.raises(ConfigError, match="must be a mapping"):
            parse_rules("- a\n- b\n", "x.yaml")
