"""`atmfleet demo`: the whole system from one command, with or without configuration."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import psycopg
import pytest
from click.testing import CliRunner

from atmfleet.cli import cli
from atmfleet.demo import Endpoints, committed, environment, next_steps, parse_metrics

DEMO = [sys.executable, "-m", "atmfleet.cli", "demo"]


@pytest.fixture
def workdir() -> Iterator[Path]:
    """A temporary folder outside pytest's own: pytest resets its root to 0700 when another
    session starts, which would lock the PostgreSQL user (as root) out of its data."""
    path = Path(tempfile.mkdtemp(prefix="atmfleet-test-"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def clean_env(**extra: str) -> dict[str, str]:
    """The environment of a fresh machine: no ATMFLEET_ variable."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("ATMFLEET_")}
    env.update(extra)
    return env


def summary_of(output: str) -> dict[str, Any]:
    lines = [line for line in output.splitlines() if line.startswith("demo summary: ")]
    assert lines, f"no summary in the output:\n{output[-3000:]}"
    result: dict[str, Any] = json.loads(lines[-1].removeprefix("demo summary: "))
    return result


def processes_using(folder: Path) -> list[list[str]]:
    """Command lines of running processes that name ``folder`` (a PostgreSQL on it)."""
    found = []
    for p in psutil.process_iter(["cmdline"]):
        cmdline = p.info["cmdline"] or []
        if any(str(folder) in part for part in cmdline):
            found.append(cmdline)
    return found


class TestWhatToRunNext:
    """The printed next steps point other commands at the demo's services."""

    def test_the_exports_name_the_demo_services(self, tmp_path: Path) -> None:
        endpoints = Endpoints(
            "postgresql://postgres:pw@127.0.0.1:5999/atmfleet",
            "mqtt://127.0.0.1:1999",
            "5",
            True,
            True,
            tmp_path,
        )
        steps = next_steps(endpoints, "psql")
        for name, value in environment(endpoints).items():
            assert f"export {name}='{value}'" in steps
        assert any(str(tmp_path / "inventory.yaml") in s for s in steps)

    def test_committed_counts_stored_duplicate_and_dead_lettered_messages(self) -> None:
        text = (
            "# TYPE atmfleet_collector_messages_stored counter\n"
            'atmfleet_collector_messages_stored_total{kind="state"} 7.0\n'
            'atmfleet_collector_messages_stored_total{kind="txn"} 3.0\n'
            "# TYPE atmfleet_collector_messages_duplicate counter\n"
            "atmfleet_collector_messages_duplicate_total 2.0\n"
            "# TYPE atmfleet_collector_messages_rejected counter\n"
            'atmfleet_collector_messages_rejected_total{reason="bad_json"} 1.0\n'
            "# TYPE atmfleet_collector_messages_received counter\n"
            "atmfleet_collector_messages_received_total 20.0\n"
        )
        assert committed(parse_metrics(text)) == 13


class TestBadOptions:
    def test_no_live_with_a_duration_is_refused(self) -> None:
        result = CliRunner().invoke(cli, ["demo", "--no-live", "--duration", "20s"])
        assert result.exit_code == 2
        assert "--no-live" in result.output

    def test_a_duration_that_is_no_duration_is_refused(self) -> None:
        result = CliRunner().invoke(cli, ["demo", "--duration", "soon"])
        assert result.exit_code == 2
        assert "--duration 'soon'" in result.output


@pytest.mark.integration
@pytest.mark.slow
class TestOnAFreshMachine:
    """No ATMFLEET_ variable: embedded PostgreSQL and broker, started and stopped."""

    def test_it_backfills_goes_live_stores_everything_and_exits_cleanly(
        self, workdir: Path
    ) -> None:
        data = workdir / "demo"
        run = subprocess.run(
            [*DEMO, "--duration", "20", "--devices", "50", "--backfill-days", "1",
             "--data-dir", str(data)],
            env=clean_env(),
            capture_output=True,
            text=True,
            timeout=300,
        )  # fmt: skip
        assert run.returncode == 0, run.stderr[-3000:] + run.stdout[-3000:]
        summary = summary_of(run.stdout)
        assert summary["embedded_database"] and summary["embedded_broker"]
        assert summary["history"] > 1000
        assert summary["published"] >= summary["history"]
        assert summary["stored"] == summary["published"]
        rows = summary["rows"]
        assert rows["devices"] == 50
        assert rows["state_samples"] > 0 and rows["transactions"] > 0
        assert rows["dead_letters"] == 0
        assert "export ATMFLEET_DATABASE_URL=" in run.stdout
        assert (data / "postgres" / "PG_VERSION").exists()
        assert not (data / "postgres" / "postmaster.pid").exists()
        assert not processes_using(data)

    def test_ctrl_c_stops_simulator_collector_broker_and_database(self, workdir: Path) -> None:
        data = workdir / "demo"
        proc = subprocess.Popen(
            [*DEMO, "--devices", "20", "--backfill-days", "0.25", "--data-dir", str(data)],
            env=clean_env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,  # its own process group, as a terminal gives it
        )  # fmt: skip
        assert proc.stdout is not None
        seen: list[str] = []
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            seen.append(line)
            if line.startswith("live "):
                break
        output = "".join(seen)
        assert any(line.startswith("live ") for line in seen), output[-3000:]
        children = psutil.Process(proc.pid).children(recursive=True)
        assert children, "the collector and the broker run as child processes"
        os.killpg(proc.pid, signal.SIGINT)  # Ctrl-C reaches the whole group
        rest, _ = proc.communicate(timeout=120)
        output += rest
        assert proc.returncode == 0, output[-3000:]
        summary = summary_of(output)
        assert summary["stored"] == summary["published"] > 0, output[-3000:]
        _, still = psutil.wait_procs(children, timeout=10)
        assert not still, [p.cmdline() for p in still]
        assert not (data / "postgres" / "postmaster.pid").exists(), output[-3000:]
        assert not processes_using(data)


@pytest.mark.integration
@pytest.mark.slow
class TestWithGivenServices:
    """ATMFLEET_DATABASE_URL and ATMFLEET_MQTT_URL set: those are used, nothing embedded."""

    def test_it_uses_them_and_refuses_to_replay_into_a_database_that_has_the_fleet(
        self, tmp_path: Path, database_url: str
    ) -> None:
        from tests.test_collector_service import start_broker

        broker = start_broker(tmp_path)
        try:
            env = clean_env(ATMFLEET_DATABASE_URL=database_url, ATMFLEET_MQTT_URL=broker.url)
            args = [*DEMO, "--no-live", "--devices", "10", "--backfill-days", "0.5",
                    "--data-dir", str(tmp_path / "demo")]  # fmt: skip
            run = subprocess.run(args, env=env, capture_output=True, text=True, timeout=240)
            assert run.returncode == 0, run.stderr[-3000:] + run.stdout[-3000:]
            summary = summary_of(run.stdout)
            assert not summary["embedded_database"] and not summary["embedded_broker"]
            assert summary["stored"] == summary["published"] == summary["history"] > 0
            assert not (tmp_path / "demo" / "postgres").exists()
            with psycopg.connect(database_url) as conn:
                row = conn.execute("SELECT count(*) FROM state_samples").fetchone()
            assert row is not None and row[0] == summary["rows"]["state_samples"] > 0

            again = subprocess.run(args, env=env, capture_output=True, text=True, timeout=120)
            assert again.returncode == 2
            assert "already holds telemetry" in again.stderr
        finally:
            broker.process.terminate()
            broker.process.wait(10)
