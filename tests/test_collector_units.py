"""deploy/systemd/: the collector's service and those it shares a box with, the collector
given the larger CPU weight and the lower nice value (docs/collector.md, "Priority")."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from app.cli import cli

SYSTEMD = Path(__file__).resolve().parent.parent / "deploy" / "systemd"
UNITS = ("atmfleet-collector.service", "atmfleet-serve.service", "atmfleet-incidents.service")
PROMETHEUS = SYSTEMD / "prometheus.service.d" / "atmfleet-priority.conf"


def service(path: Path) -> dict[str, str]:
    """The [Service] settings of a unit file."""
    out: dict[str, str] = {}
    section = ""
    for raw in path.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if line.startswith("["):
            section = line
        elif section == "[Service]" and "=" in line and not line.startswith("#"):
            key, _, value = line.partition("=")
            out[key] = value
    return out


def test_the_collector_comes_before_the_reports() -> None:
    collector = service(SYSTEMD / "atmfleet-collector.service")
    others = [service(SYSTEMD / n) for n in UNITS[1:]] + [service(PROMETHEUS)]
    for other in others:
        assert int(collector["CPUWeight"]) > int(other["CPUWeight"])
        assert int(collector["Nice"]) < int(other["Nice"])
    serve = service(SYSTEMD / "atmfleet-serve.service")
    assert service(PROMETHEUS)["CPUWeight"] == serve["CPUWeight"]  # the scrape side alike


def test_every_service_runs_an_atmfleet_command() -> None:
    for name in UNITS:
        argv = service(SYSTEMD / name)["ExecStart"].split()
        assert argv[0] == "/opt/atmfleet/venv/bin/atmfleet"
        result = CliRunner().invoke(cli, [*argv[1:], "--help"])
        assert result.exit_code == 0, (name, result.output)


def test_systemd_analyze_verify(tmp_path: Path) -> None:
    systemd = shutil.which("systemd-analyze")
    if systemd is None:
        pytest.skip("systemd-analyze is not installed (Debian: systemd)")
    # The units name the installed paths; verify checks that ExecStart exists and the
    # environment file is readable, so point those at this checkout's.
    exe = str(Path(sys.executable).with_name("atmfleet"))
    for name in UNITS:
        text = (SYSTEMD / name).read_text(encoding="utf-8")
        text = text.replace("/opt/atmfleet/venv/bin/atmfleet", exe)
        text = text.replace("EnvironmentFile=/etc/", "EnvironmentFile=-/etc/")
        (tmp_path / name).write_text(text, encoding="utf-8")
    # The drop-in on a stand-in for Debian's prometheus.service.
    (tmp_path / "prometheus.service").write_text(
        f"[Service]\nExecStart={exe} --help\n", encoding="utf-8"
    )
    (tmp_path / "prometheus.service.d").mkdir()
    shutil.copy(PROMETHEUS, tmp_path / "prometheus.service.d" / PROMETHEUS.name)
    units = [str(tmp_path / n) for n in (*UNITS, "prometheus.service")]
    out = subprocess.run(
        [systemd, "verify", *units], capture_output=True, text=True, timeout=120, check=False
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert "atmfleet" not in out.stderr and "prometheus" not in out.stderr, out.stderr
