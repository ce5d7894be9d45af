"""`atmfleet demo`: the whole system from one command, with or without configuration."""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
import zipfile
from collections.abc import Iterator
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit
from zoneinfo import ZoneInfo

import openpyxl
import psutil
import psycopg
import pytest
from click.testing import CliRunner
from prometheus_client.parser import text_string_to_metric_families

from app.cli import cli
from app.demo import (
    Endpoints,
    Published,
    choose_port,
    committed,
    covers,
    env_file,
    environment,
    history_start,
    next_steps,
    parse_metrics,
    preferred_port,
    write_env_file,
    yesterday,
)
from app.embedded import free_port
from atmfleet.errors import UsageError

DEMO = [sys.executable, "-m", "app.cli", "demo"]


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


SHANGHAI = ZoneInfo("Asia/Shanghai")
#: What the demo prints for the fleet's metrics endpoint.
METRICS_LINE = re.compile(r"^metrics +(http://\S+/metrics) +\(the fleet")


def samples(url: str) -> dict[str, list[tuple[dict[str, str], float]]]:
    """GET a Prometheus endpoint: every sample by name, with its labels and value."""
    with urllib.request.urlopen(url, timeout=10) as resp:
        text = resp.read().decode()
    found: dict[str, list[tuple[dict[str, str], float]]] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            found.setdefault(s.name, []).append((s.labels, s.value))
    return found


class TestTheHistoryCoversYesterday:
    """By default the history starts at yesterday's local midnight, so the bulletin of
    yesterday counts the whole day."""

    def test_just_after_local_midnight_it_reaches_back_a_day(self) -> None:
        now = datetime(2026, 11, 28, 16, 30, tzinfo=UTC)  # 00:30 on the 29th in Shanghai
        assert yesterday(now, SHANGHAI) == date(2026, 11, 28)
        assert history_start(now, None, SHANGHAI) == datetime(2026, 11, 27, 16, 0, tzinfo=UTC)

    def test_just_before_local_midnight_it_reaches_back_almost_two_days(self) -> None:
        now = datetime(2026, 11, 28, 15, 50, tzinfo=UTC)  # 23:50 on the 28th in Shanghai
        assert yesterday(now, SHANGHAI) == date(2026, 11, 27)
        assert history_start(now, None, SHANGHAI) == datetime(2026, 11, 26, 16, 0, tzinfo=UTC)

    def test_the_default_start_covers_yesterday_and_a_short_backfill_does_not(self) -> None:
        now = datetime(2026, 11, 28, 2, 0, tzinfo=UTC)
        day = yesterday(now, SHANGHAI)
        assert covers(history_start(now, None, SHANGHAI), day, SHANGHAI)
        assert not covers(history_start(now, 0.5, SHANGHAI), day, SHANGHAI)

    def test_backfill_days_given_is_taken_as_it_is(self) -> None:
        now = datetime(2026, 11, 28, 2, 0, tzinfo=UTC)
        assert history_start(now, 0.25, SHANGHAI) == datetime(2026, 11, 27, 20, 0, tzinfo=UTC)


class TestMetricsPorts:
    """The example Prometheus configuration's ports when free, another one when not."""

    def test_a_taken_preferred_port_falls_back_to_a_free_one(self) -> None:
        with socket.socket() as taken:
            taken.bind(("127.0.0.1", 0))
            taken.listen()
            port = taken.getsockname()[1]
            chosen = preferred_port(port)
            assert chosen != port
            assert choose_port(None, port, "--metrics-port") not in (port, 0)

    def test_a_taken_port_given_is_refused_naming_the_option(self) -> None:
        with socket.socket() as taken:
            taken.bind(("127.0.0.1", 0))
            taken.listen()
            port = taken.getsockname()[1]
            with pytest.raises(UsageError, match=f"--metrics-port {port}: the port is taken"):
                choose_port(port, 9310, "--metrics-port")

    def test_a_free_port_given_is_used_and_0_means_any_free_one(self) -> None:
        port = free_port()
        assert choose_port(port, 9310, "--metrics-port") == port
        assert choose_port(0, 9310, "--metrics-port") > 0


class TestWhatToRunNext:
    """The printed next steps point other commands at the demo's services."""

    def test_one_source_line_points_at_the_demo_services_and_no_secret_shows(
        self, tmp_path: Path
    ) -> None:
        endpoints = Endpoints(
            "postgresql://postgres:s3cret-pw@127.0.0.1:5999/atmfleet",
            "mqtt://127.0.0.1:1999",
            "5",
            True,
            True,
            tmp_path,
        )
        steps = next_steps(endpoints, "psql", Published(9310, 9311, date(2026, 11, 27), ()))
        assert steps[0] == f"source {tmp_path / 'env.sh'}"
        assert [s for s in steps if s.startswith(("source ", "export "))] == steps[:1]
        assert "s3cret-pw" not in "\n".join(steps)
        assert any(str(tmp_path / "inventory.yaml") in s for s in steps)


class TestTheEnvFile:
    """The demo's ``export`` lines go to <data-dir>/env.sh, readable by its owner only."""

    ENDPOINTS = Endpoints(
        "postgresql://postgres:it's $ecret@127.0.0.1:5999/atmfleet",
        "mqtt://127.0.0.1:1999",
        "5",
        True,
        True,
        Path("unused"),
    )

    def test_it_is_0600_and_a_shell_reads_back_every_value(self, tmp_path: Path) -> None:
        variables = environment(self.ENDPOINTS)
        path = write_env_file(tmp_path / "demo" / "env.sh", variables)
        assert path.stat().st_mode & 0o777 == 0o600
        script = f"source {path} && " + " && ".join(f'printf "%s\\n" "${k}"' for k in variables)
        out = subprocess.run(
            ["bash", "-c", script], capture_output=True, text=True, check=True, env={}
        ).stdout
        assert out.splitlines() == list(variables.values())
        assert list(tmp_path.joinpath("demo").iterdir()) == [path]  # no temp file left

    def test_rewriting_keeps_0600_even_over_a_readable_file(self, tmp_path: Path) -> None:
        path = tmp_path / "env.sh"
        path.write_text("old")
        path.chmod(0o644)
        write_env_file(path, environment(self.ENDPOINTS))
        assert path.stat().st_mode & 0o777 == 0o600
        assert "old" not in path.read_text()

    def test_it_lives_in_the_data_folder(self, tmp_path: Path) -> None:
        endpoints = Endpoints("postgresql://h/db", "mqtt://h:1", "5", True, True, tmp_path)
        assert env_file(endpoints) == tmp_path / "env.sh"

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

    def test_they_name_both_metrics_urls_prometheus_and_the_bulletin_command(
        self, tmp_path: Path
    ) -> None:
        endpoints = Endpoints("postgresql://h/db", "mqtt://h:1", "5", True, True, tmp_path)
        published = Published(9310, 9311, date(2026, 11, 27), ())
        steps = "\n".join(next_steps(endpoints, "psql", published))
        assert "http://127.0.0.1:9310/metrics" in steps
        assert "http://127.0.0.1:9311/metrics" in steps
        assert "--config.file=exporters/prometheus/prometheus.yml   # scrapes both" in steps
        assert "atmfleet bulletin daily --date 2026-11-27" in steps

    def test_they_say_how_to_point_grafana_at_the_provisioned_dashboards(
        self, tmp_path: Path
    ) -> None:
        endpoints = Endpoints(
            "postgresql://u:pw@127.0.0.1:40500/atmfleet", "mqtt://h:1", "5", True, True, tmp_path
        )
        published = Published(9310, 9311, date(2026, 11, 27), ())
        steps = "\n".join(next_steps(endpoints, "psql", published))
        assert "IN ROLE atmfleet_grafana" in steps
        assert '-v "$PWD/dashboards/provisioning:/etc/grafana/provisioning:ro"' in steps
        assert "-e ATMFLEET_GRAFANA_DB_HOST=127.0.0.1:40500" in steps
        assert "-e ATMFLEET_GRAFANA_DB_NAME=atmfleet " in steps
        docker = next(line for line in steps.splitlines() if "docker run" in line)
        assert "u:pw" not in docker  # the demo's own credentials are not handed to Grafana

    def test_on_other_ports_the_prometheus_hint_says_which_targets_to_set(
        self, tmp_path: Path
    ) -> None:
        endpoints = Endpoints("postgresql://h/db", "mqtt://h:1", "5", True, True, tmp_path)
        published = Published(40001, 40002, date(2026, 11, 27), ())
        steps = "\n".join(next_steps(endpoints, "psql", published))
        assert "127.0.0.1:40001 (atmfleet) and 127.0.0.1:40002 (atmfleet-collector)" in steps


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
        """Also: while live it serves the fleet's and the collector's metrics, and it has
        written yesterday's bulletin from the history (which covers yesterday)."""
        data = workdir / "demo"
        days = {yesterday(datetime.now(UTC), SHANGHAI).isoformat()}
        proc = subprocess.Popen(
            [*DEMO, "--devices", "50", "--data-dir", str(data)],
            env=clean_env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )  # fmt: skip
        try:
            assert proc.stdout is not None
            seen: list[str] = []
            for line in proc.stdout:
                seen.append(line)
                if line.startswith("live "):
                    break
            output = "".join(seen)
            urls = [m[1] for line in seen if (m := METRICS_LINE.match(line))]
            assert urls, output[-3000:]
            env_mode = (data / "env.sh").stat().st_mode & 0o777
            env_while_live = dict(
                line.removeprefix("export ").split("=", 1)
                for line in subprocess.run(
                    ["bash", "-c", f"source {data / 'env.sh'} && export -p | grep ATMFLEET_"],
                    capture_output=True, text=True, check=True, env={},
                ).stdout.replace("declare -x ", "export ").splitlines()
            )  # fmt: skip
            env_while_live = {k: v.strip('"') for k, v in env_while_live.items()}
            fleet = samples(urls[0])  # the demo is live: the printed URL answers
            states = fleet["atmfleet_device_state"]  # one per device, routing labels on it
            assert len(states) == 50 and len({labels["device"] for labels, _ in states}) == 50
            assert all(labels["branch"] for labels, _ in states)
            assert any(labels["state"] in ("in_service", "degraded") for labels, _ in states)
            assert fleet["atmfleet_exporter_database_up"][0][1] == 1
            collector_url = re.search(r"metrics +(http://\S+/metrics) +\(the collector", output)
            assert collector_url, output[-3000:]
            # The history was stored directly; the live part goes through the broker and
            # the collector: wait until the collector has stored some, then Ctrl-C.
            deadline = time.monotonic() + 600  # a guard: a heartbeat comes every few s
            live_stored = 0.0
            while not live_stored and time.monotonic() < deadline and proc.poll() is None:
                # The labelled counter has no sample until the first live message is stored.
                own = samples(collector_url[1]).get("atmfleet_collector_messages_stored_total")
                live_stored = sum(v for _, v in own or ())
                time.sleep(0.2)
            assert live_stored > 0, output[-3000:]
            proc.send_signal(signal.SIGINT)
            rest, _ = proc.communicate(timeout=120)
            output += rest
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(30)
        assert proc.returncode == 0, output[-3000:]
        summary = summary_of(output)
        assert summary["embedded_database"] and summary["embedded_broker"]
        assert summary["history"] > 1000
        assert summary["published"] >= summary["history"]
        assert summary["stored"] == summary["published"]
        rows = summary["rows"]
        assert rows["devices"] == 50
        assert rows["state_samples"] > 0 and rows["transactions"] > 0
        assert rows["dead_letters"] == 0
        env_line = f"  source {data / 'env.sh'}\n"
        assert env_line in seen, output[-3000:]
        assert "export " not in output
        password = urlsplit(env_while_live["ATMFLEET_DATABASE_URL"]).password
        assert password and password not in output
        assert env_mode == 0o600
        assert not (data / "env.sh").exists()  # its services stopped with the demo
        assert re.search(r"^history +100%  [\d.,]+ of [\d.,]+ simulated hours stored", output, re.M)
        # The history went to the database directly, the live part through the broker
        # and the collector: both stored everything.
        assert summary["live"] == summary["published"] - summary["history"] > 0
        assert "prometheus --config.file=exporters/prometheus/prometheus.yml" in output
        assert (data / "postgres" / "PG_VERSION").exists()
        assert not (data / "postgres" / "postmaster.pid").exists()
        assert not processes_using(data)
        with pytest.raises(OSError):
            urllib.request.urlopen(urls[0], timeout=2)  # stopped with the demo

        days.add(yesterday(datetime.now(UTC), SHANGHAI).isoformat())  # midnight may pass
        files = {Path(f).name: Path(f) for f in summary["bulletins"]}
        day = next(iter(files)).removeprefix("bulletin-daily-")[:10]
        assert day in days, files
        stem = f"bulletin-daily-{day}.zh-CN"
        assert set(files) == {f"{stem}.{ext}" for ext in ("xlsx", "csv.zip", "html", "json")}
        assert all(path.parent == data / "bulletins" for path in files.values())
        bulletin = json.loads(files[f"{stem}.json"].read_text())
        assert bulletin["first"] == bulletin["last"] == day
        assert bulletin["summary"]["devices"]["value"] == 50
        # The whole day is covered: were its first hour missing, every device would count
        # that hour as not communicating and miss its target (96-98 %).
        assert 0.9 < bulletin["summary"]["uptime"]["value"] <= 1
        assert bulletin["summary"]["below_target"]["value"] < 10
        assert bulletin["summary"]["financial"]["value"] > 0
        assert len(bulletin["tables"]["branches"]["rows"]) > 1
        book = openpyxl.load_workbook(files[f"{stem}.xlsx"], read_only=True)
        assert len(book.sheetnames) > 1
        with zipfile.ZipFile(io.BytesIO(files[f"{stem}.csv.zip"].read_bytes())) as archive:
            assert len(archive.namelist()) > 1
        assert "自助设备开机率和帐务性交易量日通报" in files[f"{stem}.html"].read_text()

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
