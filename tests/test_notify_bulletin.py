"""``atmfleet notify bulletin``: the daily bulletin by e-mail (XLSX attached, HTML body) to
a real local SMTP server and as a DingTalk summary to the stand-in, with the bulletin's own
figures; re-runs send nothing twice; a failed delivery is retried, reported and makes the
command fail; the monthly one only on the first working day; the systemd timers verify."""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from datetime import date
from pathlib import Path
from typing import Any

import openpyxl
import psycopg
import pytest
import yaml
from click.testing import CliRunner

from app.cli import cli
from atmfleet.inventory import Branch, Device, Inventory, SubBranch
from atmfleet.store.inventory import upsert_inventory
from atmfleet.store.migrate import upgrade
from exporters.bulletin.model import Kind
from exporters.bulletin.render import display
from tests import notify_standins as si
from tests.conftest import create_database, drop_database

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
DAY = "2026-11-20"

INVENTORY = Inventory(
    subbranches=(SubBranch(id="S1", name="赤峰", tier="2"),),
    branches=(Branch(id="B1", name="红山支行", subbranch="S1"),),
    devices=tuple(
        Device(id=f"nb-{i}", branch="B1", type="atm", placement="off_site", vendor="GRG",
               model="H22N", commissioned=date(2025, 1, 1), heartbeat_s=300)
        for i in range(3)
    ),
)  # fmt: skip


@pytest.fixture(scope="module")
def db() -> Iterator[str]:
    url = create_database()
    try:
        with psycopg.connect(url, autocommit=True) as conn:
            upgrade(conn)
            upsert_inventory(conn, INVENTORY)
            conn.execute(
                "INSERT INTO users (username, role) VALUES ('sched', 'operator'), ('eve', 'viewer')"
            )
        yield url
    finally:
        drop_database(url)


@pytest.fixture
def clean(db: str) -> str:
    with psycopg.connect(db, autocommit=True) as conn:
        conn.execute("TRUNCATE notify_outbox, notify_deliveries, notify_counters")
    return db


@pytest.fixture
def services(tmp_path: Path) -> Iterator[tuple[si.StandIn, si.Smtp]]:
    standin = si.StandIn().start()
    smtp = si.Smtp(tmp_path, "starttls").start()
    yield standin, smtp
    smtp.stop()
    standin.stop()


@pytest.fixture
def env(clean: str, services: tuple[si.StandIn, si.Smtp], tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> Path:  # fmt: skip
    standin, smtp = services
    monkeypatch.setenv("ATMFLEET_DATABASE_URL", clean)
    monkeypatch.setenv("ATMFLEET_USER", "sched")
    for var, value in si.SECRET_ENV.items():
        monkeypatch.setenv(var, value)
    config = {
        "retry": {"max_attempts": 3, "base_s": 0.1, "max_s": 0.5},
        "channels": {
            "mail": {
                "type": "email", "host": "127.0.0.1", "port": smtp.port, "security": "starttls",
                "username": si.SMTP_USER, "password": {"env": "T_SMTP_PASSWORD"},
                "from": "atmfleet@bank.example", "ca_file": str(smtp.cert),
            },
            "ding": {
                "type": "dingtalk_robot", "access_token": {"env": "T_DING_TOKEN"},
                "sign_secret": {"env": "T_DING_SECRET"}, "base_url": standin.base,
                "group_wait_s": 0,
            },
        },
        "recipients": {
            "head_office:": [{"channel": "mail", "to": ["selfservice@bank.example"]}],
            "team:": [{"channel": "ding"}],
        },
        "calendar": {"holidays": ["2026-10-01", "2026-10-02", "2026-10-05"]},
        "bulletins": {
            "daily": {"email": ["head_office:"], "summary": ["team:"]},
            "monthly": {"email": ["head_office:"], "summary": ["team:"]},
        },
    }  # fmt: skip
    path = tmp_path / "notify.yaml"
    path.write_text(yaml.safe_dump(config, allow_unicode=True), encoding="utf-8")
    return path


def run(*args: str) -> Any:
    return CliRunner().invoke(cli, list(args))


def test_daily_by_mail_and_dingtalk_with_the_bulletins_figures(
    env: Path, services: tuple[si.StandIn, si.Smtp], tmp_path: Path
) -> None:
    standin, smtp = services
    result = run("notify", "bulletin", "daily", "--date", DAY, "--config", str(env), "--wait", "30")
    assert result.exit_code == 0, result.output
    assert "daily 2026-11-20: 2 delivery(ies) queued" in result.output
    ((rcpt, mail),) = smtp.wait(1)
    assert rcpt == ["selfservice@bank.example"]
    assert mail["Subject"] == "自助设备开机率和帐务性交易量日通报（2026-11-20）"
    html = mail.get_body(("html",))
    assert html is not None and "自助设备开机率和帐务性交易量日通报" in html.get_content()
    (xlsx,) = list(mail.iter_attachments())
    assert xlsx.get_filename() == "bulletin-daily-2026-11-20.zh-CN.xlsx"
    book = openpyxl.load_workbook(io.BytesIO(xlsx.get_content()))
    assert book.sheetnames

    # The summary's figures are the bulletin's (the same call `atmfleet bulletin` makes).
    out = tmp_path / "files"
    written = run("bulletin", "daily", "--date", DAY, "--format", "json", "--out", str(out))
    assert written.exit_code == 0, written.output
    bulletin = json.loads(next(out.glob("*.json")).read_text(encoding="utf-8"))
    (ding,) = standin.wait("/robot/send", 1)
    text = ding.json()["markdown"]["text"]
    summary = bulletin["summary"]
    assert summary, bulletin.keys()
    for key, row in summary.items():
        kind = Kind.HOURS if key.endswith("_h") else Kind.INT
        if isinstance(row["value"], float) and kind is not Kind.HOURS:
            kind = Kind.RATIO
        assert f"- {row['label']}：{display(row['value'], kind)}" in text, (key, text)
    assert f"- {summary['devices']['label']}：3" in text
    assert "完整通报见邮件附件" in text

    # A re-run (a timer restarted) sends nothing twice.
    again = run("notify", "bulletin", "daily", "--date", DAY, "--config", str(env), "--wait", "5")
    assert again.exit_code == 0, again.output
    assert "0 delivery(ies) queued, 2 already queued before" in again.output
    assert len(smtp.messages) == 1 and len(standin.received("/robot/send")) == 1

    # Sent rows keep no attachment; `notify prune` deletes old sent rows, not counters.
    with psycopg.connect(os.environ["ATMFLEET_DATABASE_URL"], autocommit=True) as conn:
        assert conn.execute(
            "SELECT count(*) FROM notify_outbox WHERE status = 'sent' AND attachments = '[]'"
        ).fetchone() == (2,)
        conn.execute("UPDATE notify_outbox SET sent_at = sent_at - interval '100 days'")
    pruned = run("notify", "prune", "--days", "90")
    assert pruned.exit_code == 0, pruned.output
    assert "deleted 2 sent notification(s)" in pruned.output
    assert re.search(r"mail\s+1\s+0\s+0\s+0", run("notify", "status").output)


def test_a_failed_delivery_is_retried_reported_and_fails_the_command(
    env: Path, services: tuple[si.StandIn, si.Smtp]
) -> None:
    standin, smtp = services
    standin.script["/robot/send"] = [(500, {"errmsg": "busy"})] * 10
    result = run("notify", "bulletin", "daily", "--date", DAY, "--config", str(env), "--wait", "30")
    assert result.exit_code == 1
    assert re.search(r"given up #\d+ ding: ding: HTTP 500", result.output)
    assert "1 delivery(ies) not sent; see `atmfleet notify status`" in result.output
    assert len(standin.received("/robot/send")) == 3  # max_attempts
    assert len(smtp.wait(1)) == 1  # the e-mail went
    status = run("notify", "status")
    assert status.exit_code == 0, status.output
    assert re.search(r"ding\s+0\s+2\s+1\s+0", status.output)
    assert "after 3 attempts: ding: HTTP 500" in status.output
    for secret in (si.DING_TOKEN, si.DING_SECRET, si.SMTP_PASSWORD):
        assert secret not in result.output + status.output


def test_monthly_only_on_the_first_working_day(
    env: Path, services: tuple[si.StandIn, si.Smtp]
) -> None:
    standin, smtp = services
    # 2026-10-01..02 and 05 holidays, 03-04 a weekend: the first working day is the 6th.
    early = run("notify", "bulletin", "monthly", "--date", "2026-10-05", "--config", str(env))
    assert early.exit_code == 0, early.output
    assert "2026-10-05 is not the day it goes out (first working day: 2026-10-06)" in early.output
    assert smtp.messages == [] and standin.received("/robot/send") == []
    sent = run(
        "notify",
        "bulletin",
        "monthly",
        "--today",
        "2026-10-06",
        "--config",
        str(env),
        "--wait",
        "30",
    )
    assert sent.exit_code == 0, sent.output
    assert "monthly 2026-09: 2 delivery(ies) queued" in sent.output
    ((_rcpt, mail),) = smtp.wait(1)
    assert mail["Subject"].startswith("自助业务经营管理考核评价月通报")


def test_only_an_operator_sends(env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ATMFLEET_USER", "eve")
    result = run("notify", "bulletin", "daily", "--date", DAY, "--config", str(env))
    assert result.exit_code == 2
    assert "user 'eve' is a viewer; this needs operator or above" in result.output


class TestTheTimers:
    UNITS = sorted(
        p.name for p in DEPLOY.glob("atmfleet-notify*.*") if p.suffix in (".service", ".timer")
    )

    def _ini(self, name: str) -> dict[str, str]:
        out = {}
        for line in (DEPLOY / name).read_text(encoding="utf-8").splitlines():
            if "=" in line and not line.startswith("#"):
                key, _, value = line.partition("=")
                out[key.strip()] = value.strip()
        return out

    def test_daily_at_eight_beijing_time(self) -> None:
        timer = self._ini("atmfleet-notify-bulletin-daily.timer")
        assert timer["OnCalendar"] == "*-*-* 08:00:00 Asia/Shanghai"
        systemd = shutil.which("systemd-analyze")
        if systemd is None:
            pytest.skip("systemd-analyze is not installed (Debian: systemd)")
        out = subprocess.run(
            [systemd, "calendar", "--iterations=2", timer["OnCalendar"]],
            capture_output=True, text=True, check=True, env={**os.environ, "TZ": "UTC"},
        ).stdout  # fmt: skip
        assert re.findall(r"\d{2}:\d{2}:\d{2} UTC", out) == ["00:00:00 UTC", "00:00:00 UTC"]

    def test_every_service_runs_a_notify_command(self) -> None:
        for name in self.UNITS:
            if name.endswith(".service"):
                argv = self._ini(name)["ExecStart"].split()
                assert argv[1] == "notify"
                result = run(*argv[1:], "--help")
                assert result.exit_code == 0, (name, result.output)

    def test_systemd_analyze_verify(self, tmp_path: Path) -> None:
        systemd = shutil.which("systemd-analyze")
        if systemd is None:
            pytest.skip("systemd-analyze is not installed (Debian: systemd)")
        # The units name the installed paths; verify checks that ExecStart exists and the
        # environment file is readable, so point those at this checkout's.
        exe = str(Path(sys.executable).with_name("atmfleet"))
        for name in self.UNITS:
            text = (DEPLOY / name).read_text(encoding="utf-8")
            text = text.replace("/opt/atmfleet/venv/bin/atmfleet", exe)
            text = text.replace("EnvironmentFile=/etc/", "EnvironmentFile=-/etc/")
            (tmp_path / name).write_text(text, encoding="utf-8")
        out = subprocess.run(
            [systemd, "verify", *(str(tmp_path / n) for n in self.UNITS)],
            capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        assert out.returncode == 0, out.stdout + out.stderr
        assert "atmfleet" not in out.stderr, out.stderr
