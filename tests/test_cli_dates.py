"""A day on the command line: every subcommand refuses a bad one with the project's own
message (``atmfleet: error: --date '…': not a date …``, exit 2), before any database is
needed, and says what is wrong with it."""

from __future__ import annotations

from datetime import date

import pytest
from click.testing import CliRunner

from app.cli import cli
from atmfleet.cli_types import parse_day
from atmfleet.errors import UsageError

KPI_COMMANDS = ["uptime", "substitution", "tail", "vendors", "assessment", "low-yield", "network"]


def run(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(cli, list(args))
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    return result.exit_code, result.output


class TestTheKpiCommands:
    @pytest.mark.parametrize("command", KPI_COMMANDS)
    def test_an_impossible_date_gets_the_projects_message(
        self, command: str, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        monkeypatch.delenv("ATMFLEET_DATABASE_URL", raising=False)
        code, out = run("kpi", command, "--date", "2026-13-45")
        assert code == 2, out
        assert out.strip() == (
            "atmfleet: error: --date '2026-13-45': not a date; give a local calendar day "
            "as YYYY-MM-DD (there is no month 13)"
        )
        assert "Invalid value" not in out and "Usage:" not in out

    @pytest.mark.parametrize(("option", "text", "detail"), [
        ("--from", "2026-02-30", "2026-02 has no day 30"),
        ("--to", "yesterday", None),
        ("--date", "2026-11-20T00:00", None),
    ])  # fmt: skip
    def test_the_message_names_the_option_and_the_value(
        self, option: str, text: str, detail: str | None, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        monkeypatch.delenv("ATMFLEET_DATABASE_URL", raising=False)
        code, out = run("kpi", "uptime", option, text)
        assert code == 2, out
        assert out.startswith(f"atmfleet: error: {option} {text!r}: not a date; give a local")
        if detail is not None:
            assert f"({detail})" in out

    def test_a_good_date_passes_on_to_the_next_check(self, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.delenv("ATMFLEET_DATABASE_URL", raising=False)
        code, out = run("kpi", "uptime", "--date", "2024-02-29")
        assert code == 2 and "ATMFLEET_DATABASE_URL is not set" in out


class TestTheBulletinCommand:
    def test_the_same_message(self, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.delenv("ATMFLEET_DATABASE_URL", raising=False)
        code, out = run("bulletin", "daily", "--date", "2026-13-45")
        assert code == 2
        assert out.startswith("atmfleet: error: --date '2026-13-45': not a date; give a local")


class TestParseDay:
    def test_a_leap_day_and_surrounding_blanks(self) -> None:
        assert parse_day(" 2024-02-29 ") == date(2024, 2, 29)

    @pytest.mark.parametrize("text", ["2025-02-29", "2026-00-10", "2026-1-5", "", "26-11-20"])
    def test_refused(self, text: str) -> None:
        with pytest.raises(UsageError, match=r"not a date; give a local calendar day"):
            parse_day(text)
