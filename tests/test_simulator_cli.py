"""``atmfleet simulate``: impossible settings are refused with a clear message (exit 2),
and a dry run writes a ledger that reads back as the in-process run's."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from click.testing import CliRunner

from app.cli import cli
from atmfleet.inventory_io import save_inventory
from simulator.config import SimConfig, load_config
from simulator.engine import ms
from simulator.fleet import generate_inventory
from simulator.ledger import load_ledger, simulate


def invoke(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(cli, ["simulate", *args])
    assert not isinstance(result.exception, Exception) or isinstance(
        result.exception, SystemExit
    ), result.output
    return result.exit_code, result.output


class TestBadSettingsAreRefused:
    """Exit code 2 and one line naming the setting, never a traceback."""

    def test_zero_devices(self) -> None:
        code, out = invoke("--devices", "0", "--dry-run")
        assert code == 2
        assert "--devices must be between 1 and" in out and "(got 0)" in out

    def test_negative_rate_in_the_config_names_the_field(self, tmp_path: Path) -> None:
        cfg = tmp_path / "sim.yaml"
        cfg.write_text("incidents:\n  branch_power_cuts_per_year: -1\n")
        code, out = invoke("--devices", "10", "--config", str(cfg), "--dry-run")
        assert code == 2
        assert "incidents.branch_power_cuts_per_year" in out and "-1" in out

    def test_negative_transaction_rate(self, tmp_path: Path) -> None:
        cfg = tmp_path / "sim.yaml"
        cfg.write_text("txn:\n  atm:\n    per_day: -5\n")
        code, out = invoke("--devices", "10", "--config", str(cfg), "--dry-run")
        assert code == 2 and "txn.atm.per_day" in out

    def test_unknown_device_type_in_the_config(self, tmp_path: Path) -> None:
        cfg = tmp_path / "sim.yaml"
        cfg.write_text("txn:\n  teleporter:\n    per_day: 5\n    mix: {inquiry: 1}\n")
        code, out = invoke("--devices", "10", "--config", str(cfg), "--dry-run")
        assert code == 2 and "teleporter" in out

    def test_unknown_device_type_in_the_inventory(self, tmp_path: Path) -> None:
        inv = generate_inventory(10, seed=1)
        folder = tmp_path / "inv"
        save_inventory(inv, folder)
        devices = folder / "devices.csv"
        devices.write_text(
            devices.read_text()
            .replace(",atm,", ",teleporter,", 1)
            .replace(",crs,", ",teleporter,", 1)
        )
        code, out = invoke("--inventory", str(folder), "--dry-run")
        assert code == 2 and "teleporter" in out

    @pytest.mark.parametrize(
        ("args", "expected"),
        [
            (("--speed", "0"), "--speed must be positive"),
            (("--speed", "-3"), "--speed must be positive"),
            (("--backfill", "-1"), "--backfill must be between"),
            (("--connections", "0"), "--connections must be >= 1"),
            (("--connections", "lots"), "use per-device or a number"),
            (("--duration", "soon"), "is not a duration"),
            (("--start", "2999-01-01T00:00:00Z"), "in the future"),
            (("--start", "yesterday"), "is not an ISO time"),
            (("--heartbeat", "1"), "--heartbeat must be between 5 and 3600"),
        ],
    )
    def test_impossible_option(self, args: tuple[str, ...], expected: str) -> None:
        code, out = invoke("--devices", "10", "--dry-run", *args)
        assert code == 2, out
        assert expected in out

    def test_an_unreachable_broker(self) -> None:
        code, out = invoke(
            "--devices", "10", "--duration", "1s", "--mqtt-url", "mqtt://127.0.0.1:1"
        )
        assert code == 2 and "cannot connect to the broker at mqtt://127.0.0.1:1" in out

    def test_a_broker_url_with_a_wrong_scheme(self) -> None:
        code, out = invoke("--devices", "10", "--duration", "1s", "--mqtt-url", "ftp://broker")
        assert code == 2 and "--mqtt-url" in out and "scheme 'ftp'" in out

    def test_a_config_that_is_not_a_mapping(self, tmp_path: Path) -> None:
        cfg = tmp_path / "sim.yaml"
        cfg.write_text("- 1\n- 2\n")
        code, out = invoke("--devices", "10", "--config", str(cfg), "--dry-run")
        assert code == 2 and "expected a mapping" in out


class TestConfigOverride:
    def test_a_yaml_file_overrides_only_what_it_names(self, tmp_path: Path) -> None:
        cfg = tmp_path / "sim.yaml"
        cfg.write_text("heartbeat_s: 30\nvendors:\n  NCR: {mtbf_days: 20}\n")
        config = load_config(cfg)
        assert config.heartbeat_s == 30
        assert config.vendors["NCR"].mtbf_days == 20
        assert config.vendors["NCR"].response_h == 3.5  # the default stays
        assert "GRG" in config.vendors


class TestLedgerFolder:
    def test_dry_run_ledger_reads_back_as_the_in_process_run(self, tmp_path: Path) -> None:
        start = datetime(2026, 11, 20, tzinfo=UTC)
        code, out = invoke(
            "--devices", "12", "--seed", "4", "--dry-run", "--ledger", str(tmp_path),
            "--start", start.isoformat(), "--speed", "86400", "--duration", "1s",
            "--heartbeat", "300",
        )  # fmt: skip
        assert code == 0, out
        data = load_ledger(tmp_path)
        # --duration 1s at --speed 86400 is one simulated day (it started in the past).
        run = simulate(
            data.inventory,
            SimConfig(),
            4,
            start,
            start + timedelta(days=1),
            heartbeat_s=300,
        )
        assert data.intervals == run.ledger.intervals
        assert data.counters == run.ledger.counters
        assert data.summary["messages"] == len(run.emissions)
        rows = list(data.messages())
        assert [(r["topic"], r["seq"]) for r in rows] == [
            (e.topic, str(e.seq) if e.seq >= 0 else "") for e in run.emissions
        ]
        assert data.inventory == generate_inventory(12, seed=4)
        assert ms(datetime.fromisoformat(data.summary["end"])) == ms(start + timedelta(days=1))
