"""``bench/cost_curve.py``'s own pieces: its flags, the growth per 10x (none without data),
the table it prints, and the Prometheus config of ``bench/promrun.py``."""

from __future__ import annotations

import argparse
import importlib
import shutil
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
cost: Any = importlib.import_module("cost_curve")
promrun: Any = importlib.import_module("promrun")


def test_device_counts_and_paths() -> None:
    assert cost.parse_devices("1000,10000,100_000") == [1000, 10000, 100000]
    for bad in ("", "10000,1000", "1000,1000", "0,10"):
        with pytest.raises(argparse.ArgumentTypeError):
            cost.parse_devices(bad)
    assert cost.parse_paths("uptime,rules") == ["uptime", "rules"]
    with pytest.raises(argparse.ArgumentTypeError):
        cost.parse_paths("uptime,scrapes")


def test_growth_per_10x() -> None:
    assert cost.per_10x(1.0, 10.0, 1000, 10000) == pytest.approx(10.0)
    assert cost.per_10x(2.0, 2.0, 1000, 10000) == pytest.approx(1.0)
    # Over 100x, the per-10x figure of quadratic growth is 100.
    assert cost.per_10x(1.0, 10_000.0, 1000, 100_000) == pytest.approx(100.0)
    assert cost.per_10x(None, 3.0, 1000, 10000) is None
    assert cost.per_10x(0.0, 3.0, 1000, 10000) is None


def test_table() -> None:
    results = {
        1000: {
            "uptime": {"seconds": 2.0, "rss_mib": 60.0},
            "exposition": {"bytes": 600_000, "samples": 7000},
            "bulletin": {"seconds": 5.0, "rss_mib": 70.0, "error": "exit 1: boom"},
        },
        10000: {
            "uptime": {"seconds": 5.0, "rss_mib": 150.0},
            "exposition": {"bytes": 6_000_000, "samples": 70000},
        },
    }
    text = cost.table([1000, 10000], results)
    lines = {
        label: line
        for line in text.splitlines()
        for _, label in cost.ROWS
        if line.startswith(label + " ")
    }
    head = text.splitlines()[0]
    assert "1,000" in head and "10,000" in head and "1k→10k" in head
    up = lines["1. kpi uptime, one day"]
    assert "2.00 s 60 MiB" in up and "5.00 s 150 MiB" in up and up.endswith("2.5")
    expo = lines["   exposition MB, samples"]
    assert "0.6 MB 7,000" in expo and "6.0 MB 70,000" in expo and expo.endswith("10.0")
    bulletin = lines["3. bulletin daily, 4 formats"]
    assert "failed" in bulletin and bulletin.split()[-1] == "–"
    assert bulletin.split()[-2] == "–"  # no figure at 10,000 either: no ratio
    assert "serve" not in text  # rows without any figure are left out
    # With the start-up timed, the commands' growth is also shown net of it.
    results[1000]["startup"] = {"seconds": 1.5, "rss_mib": 50.0}
    results[10000]["startup"] = {"seconds": 1.5, "rss_mib": 50.0}
    up = next(
        line
        for line in cost.table([1000, 10000], results).splitlines()
        if line.startswith("1. kpi uptime")
    )
    assert up.endswith("2.5 (net 7.0)")


def test_prometheus_times() -> None:
    assert promrun.instant("0001-01-01T00:00:00Z") is None
    assert promrun.instant("") is None
    at = promrun.instant("2026-12-01T18:45:00.123456789Z")
    assert at == datetime(2026, 12, 1, 18, 45, 0, 123456, tzinfo=UTC)
    assert promrun.instant("2026-12-01T18:45:00Z") == datetime(2026, 12, 1, 18, 45, tzinfo=UTC)


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool is not installed")
def test_prometheus_config_loads_every_shipped_rules_file(tmp_path: Path) -> None:
    conf = promrun.write_config(tmp_path, {"atmfleet": [9310]})
    out = subprocess.run(
        ["promtool", "check", "config", str(conf)], capture_output=True, text=True, check=False
    )
    assert out.returncode == 0, out.stdout + out.stderr
    shipped = promrun.rules_files()
    assert shipped
    for path in shipped:
        assert path.name in out.stdout + out.stderr
