"""No secret in any output: every command, given a known secret in every accepted form and
in malformed forms, never shows it on stdout or stderr, in a log record or a traceback.

Most commands run in-process (click's runner, every log record captured at DEBUG); the
collector runs as a real process, stopped by SIGTERM once it has logged its start-up.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import threading
import traceback
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from click.testing import CliRunner

from app.cli import cli

pytestmark = pytest.mark.integration

SECRET = "S3cr3t-DB-pw"
ROOT = Path(__file__).resolve().parent.parent
INVENTORY = ROOT / "docs" / "examples" / "inventory.yaml"
#: Nothing listens there: a connection is refused at once.
DEAD = "127.0.0.1:1"


def forms(reachable: str) -> dict[str, dict[str, str]]:
    """``{form: environment}``; ``reachable`` is a real database (trust auth: the password
    is sent and ignored)."""
    parts = urlsplit(reachable)
    live = f"{parts.hostname}:{parts.port}{parts.path}"
    return {
        "userinfo, unreachable": {"ATMFLEET_DATABASE_URL": f"postgresql://u:{SECRET}@{DEAD}/db"},
        "userinfo, reachable": {"ATMFLEET_DATABASE_URL": f"postgresql://postgres:{SECRET}@{live}"},
        "?password=, unreachable": {
            "ATMFLEET_DATABASE_URL": f"postgresql://u@{DEAD}/db?sslmode=disable&password={SECRET}"
        },
        "?password=, reachable": {
            "ATMFLEET_DATABASE_URL": f"postgresql://postgres@{live}?password={SECRET}"
        },
        "keyword DSN": {
            "ATMFLEET_DATABASE_URL": f"host=127.0.0.1 port=1 user=u password={SECRET} dbname=db"
        },
        "wrong scheme": {"ATMFLEET_DATABASE_URL": f"postgres+psycopg://u:{SECRET}@{DEAD}/db"},
        "bad % escape": {"ATMFLEET_DATABASE_URL": f"postgresql://u:{SECRET}%zz@{DEAD}/db"},
        "unclosed IPv6 host": {"ATMFLEET_DATABASE_URL": f"postgresql://u:{SECRET}@[::1/db"},
        "bad port": {"ATMFLEET_DATABASE_URL": f"postgresql://u:{SECRET}@127.0.0.1:port/db"},
        "no scheme": {"ATMFLEET_DATABASE_URL": f"u:{SECRET}@127.0.0.1/db"},
        "MQTT password": {
            "ATMFLEET_DATABASE_URL": f"postgresql://postgres@{live}",
            "ATMFLEET_MQTT_USERNAME": "collector",
            "ATMFLEET_MQTT_PASSWORD": SECRET,
        },
        "MQTT URL with userinfo": {"ATMFLEET_MQTT_URL": f"mqtt://collector:{SECRET}@127.0.0.1:1"},
    }


#: Every command that reads the settings, with arguments that get it past click.
COMMANDS: list[list[str]] = [
    ["db", "upgrade"],
    ["db", "status"],
    ["db", "roles"],
    ["db", "load-inventory", str(INVENTORY)],
    ["db", "prune", "--days", "1"],
    ["counters", "import", "COUNTERS"],
    ["kpi", "uptime"],
    ["kpi", "substitution"],
    ["kpi", "low-yield"],
    ["kpi", "tail"],
    ["kpi", "vendors"],
    ["kpi", "network"],
    ["kpi", "assessment"],
    ["bulletin", "daily", "--out", "OUT"],
    ["dashboards", "build", "--out", "OUT"],
    ["notify", "status"],
    ["command", "list"],
    ["command", "send", "ATM-HLBE-0001", "refresh", "--no-wait"],
]

MALFORMED = {
    "keyword DSN",
    "wrong scheme",
    "bad % escape",
    "unclosed IPv6 host",
    "bad port",
    "no scheme",
}


def _all_help_paths() -> list[list[str]]:
    import click

    paths: list[list[str]] = []

    def walk(cmd: click.Command, path: list[str]) -> None:
        paths.append([*path, "--help"])
        if isinstance(cmd, click.Group):
            for name, sub in cmd.commands.items():
                walk(sub, [*path, name])

    walk(cli, [])
    return paths


def run_in_process(
    args: list[str], env: dict[str, str], caplog: pytest.LogCaptureFixture
) -> tuple[int, str]:
    caplog.clear()
    runner = CliRunner()
    result = runner.invoke(cli, ["-vv", *args], env=env, catch_exceptions=True)
    text = result.output + (result.stderr if result.stderr_bytes is not None else "")
    if result.exc_info is not None and not isinstance(result.exception, SystemExit):
        text += "".join(traceback.format_exception(*result.exc_info))
    text += caplog.text
    for record in caplog.records:
        if record.exc_info:
            text += "".join(traceback.format_exception(*record.exc_info))
    return result.exit_code, text


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    for name in list(os.environ):
        if name.startswith("ATMFLEET_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("ATMFLEET_SECRETS_DIR", str(tmp_path / "no-secrets"))
    monkeypatch.chdir(tmp_path)
    (tmp_path / "counters.csv").write_text("branch_id,date,financial\nBR-HLBE-001,2026-11-30,400\n")
    return tmp_path


class TestNoSecretInOutput:
    def test_every_command_with_every_form_of_the_secret(
        self, db: str, clean_env: Path, caplog: pytest.LogCaptureFixture
    ) -> None:
        caplog.set_level(logging.DEBUG)
        failures = []
        for form, env in forms(db).items():
            for command in COMMANDS:
                args = [
                    str(clean_env / "counters.csv") if a == "COUNTERS" else
                    str(clean_env / "out") if a == "OUT" else a
                    for a in command
                ]  # fmt: skip
                code, text = run_in_process(args, env, caplog)
                if SECRET in text:
                    failures.append(f"{form}: {' '.join(command)}: {text[-400:]}")
                if form in MALFORMED and command == ["db", "status"]:
                    lines = [line for line in text.splitlines() if "atmfleet: error" in line]
                    assert code == 2 and lines, (form, text)
                    assert lines[0].startswith(
                        "atmfleet: error: ATMFLEET_DATABASE_URL is not a PostgreSQL URL: "
                    ), (form, lines)
                    assert "Traceback" not in text, (form, text)
        assert not failures, "\n".join(failures)

    def test_secret_files_are_never_shown(
        self, clean_env: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        caplog.set_level(logging.DEBUG)
        secrets = clean_env / "secrets"
        secrets.mkdir()
        monkeypatch.setenv("ATMFLEET_SECRETS_DIR", str(secrets))
        for content in (
            f"postgresql://u:{SECRET}@{DEAD}/db",
            f"postgresql://u:{SECRET}%zz@{DEAD}/db",
            f"host=h password={SECRET}",
        ):
            (secrets / "database_url").write_text(content)
            (secrets / "mqtt_password").write_text(SECRET)
            for command in (["db", "status"], ["kpi", "uptime"]):
                code, text = run_in_process(command, {}, caplog)
                assert code == 2, text
                assert SECRET not in text, text

    def test_help_shows_no_secret_default(
        self, db: str, clean_env: Path, caplog: pytest.LogCaptureFixture
    ) -> None:
        env = {
            **forms(db)["userinfo, reachable"],
            "ATMFLEET_MQTT_USERNAME": "collector",
            "ATMFLEET_MQTT_PASSWORD": SECRET,
        }
        for path in _all_help_paths():
            code, text = run_in_process(path, env, caplog)
            assert code == 0, (path, text)
            assert SECRET not in text, path

    @pytest.mark.parametrize(
        "form", ["userinfo, reachable", "?password=, reachable", "bad % escape"]
    )
    def test_the_collector_process_shows_no_secret(
        self, db: str, clean_env: Path, form: str
    ) -> None:
        env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("ATMFLEET_")},
            **forms(db)[form],
            "ATMFLEET_MQTT_URL": f"mqtt://{DEAD}",
            "ATMFLEET_MQTT_USERNAME": "collector",
            "ATMFLEET_MQTT_PASSWORD": SECRET,
            "ATMFLEET_SECRETS_DIR": str(clean_env / "no-secrets"),
        }
        if form != "bad % escape":
            with_schema = subprocess.run(
                [sys.executable, "-m", "app.cli", "db", "upgrade"],
                env=env, capture_output=True, text=True, timeout=120, check=False,
            )  # fmt: skip
            assert with_schema.returncode == 0, with_schema.stderr
            assert SECRET not in with_schema.stdout + with_schema.stderr
        process = subprocess.Popen(
            [sys.executable, "-m", "app.cli", "-vv", "collect"],
            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        assert process.stderr is not None
        seen = []
        if form == "bad % escape":
            out, err = process.communicate(timeout=60)
            assert process.returncode == 2, err
            assert err.strip().splitlines() == [
                "atmfleet: error: ATMFLEET_DATABASE_URL is not a PostgreSQL URL: a % in it is "
                "not followed by two hex digits (write % as %25)"
            ]
            seen.append(out + err)
        else:
            watchdog = threading.Timer(60, process.kill)  # a hang fails, it does not block
            watchdog.start()
            for line in process.stderr:  # until it has logged its start-up line
                seen.append(line)
                if "broker mqtt://" in line and "database" in line:
                    break
            watchdog.cancel()
            process.send_signal(signal.SIGTERM)
            out, err = process.communicate(timeout=60)
            seen.append(out + err)
        text = "".join(seen)
        assert "postgresql://" in text or form == "bad % escape", text
        assert SECRET not in text, text
