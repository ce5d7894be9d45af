"""``bench/fleet.py``'s own pieces: the Prometheus it starts loads the shipped rules, and
the figures it prints say "–" for no data."""

from __future__ import annotations

import importlib
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
fleet: Any = importlib.import_module("fleet")


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool is not installed")
def test_prometheus_config_loads_the_shipped_rules(tmp_path: Path) -> None:
    conf = fleet.prometheus_config(tmp_path, 9310, [9311, 9312])
    out = subprocess.run(
        ["promtool", "check", "config", str(conf)], capture_output=True, text=True, check=False
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert "atmfleet.rules.yml" in out.stdout + out.stderr


def test_percentiles_and_no_data() -> None:
    assert fleet.pct([], 0.99) is None
    assert fleet.fmt(None) == "–"
    values = [float(i) for i in range(1, 101)]
    assert fleet.pct(values, 0.5) == 51.0
    assert fleet.pct(values, 0.99) == 100.0
    assert fleet.fmt(1.234) == "1.23s"
