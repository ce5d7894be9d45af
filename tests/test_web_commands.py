"""Remote commands and cash in the console: who may send (a viewer 403, another
sub-branch's device 404, no CSRF 403), the confirmation of a disruptive command, a console
with no broker saying so, the commands list and a command's page, the replenishment plan
page and its downloads, the device's cash-out forecast. The browser test of a command
answered by a simulated device is in tests/test_web_commands_browser.py."""

from __future__ import annotations

import io
import json
import zipfile
from datetime import date, datetime, timedelta
from typing import Any

import psycopg
import pytest

from atmfleet.store.audit import Actor
from commands import service
from commands.protocol import CommandRequest
from rules.config import CommandRules
from tests.web_fleet import TZ
from tests.web_server import Server

pytestmark = pytest.mark.integration


class _Taken:
    """A broker that takes every request (nothing answers)."""

    def publish_request(self, request: CommandRequest, expiry_s: int) -> None:
        pass


def _command_of(srv: Server, device_id: str) -> str:
    """A command stored for ``device_id`` (sent by the fleet-wide operator)."""
    with psycopg.connect(srv.db, autocommit=True) as conn:
        cmd = service.send(conn, Actor("op", "cli"), device_id, "refresh", publisher=_Taken(),
                           rules=CommandRules())  # fmt: skip
    return cmd.id


class TestWhoMay:
    def test_a_viewer_cannot_send(self, web_server: Server) -> None:
        with web_server.client("viewer") as c:
            r = c.post("/api/devices/wa-1/commands", json={"kind": "refresh"})
        assert r.status_code == 403, r.text
        viewer, csrf = web_server.session("viewer")
        with viewer:
            r = viewer.post("/devices/wa-1/commands", data={"csrf": csrf, "kind": "refresh"})
            assert r.status_code == 403
            page = viewer.get("/devices/wa-1")
        assert page.status_code == 200
        assert 'id="cmd-refresh"' not in page.text  # no buttons for a viewer

    def test_a_sub_branch_user_cannot_command_or_see_another_s_device(
        self, web_server: Server
    ) -> None:
        other = _command_of(web_server, "wb-1")  # S2's device
        with web_server.client("s1op") as c:
            assert c.post("/api/devices/wb-1/commands", json={"kind": "refresh"}).status_code == 404
            assert c.get(f"/api/commands/{other}").status_code == 404
            assert c.get(f"/api/commands/{other}/journal").status_code == 404
            assert other not in {x["id"] for x in c.get("/api/commands").json()}
        s1, csrf = web_server.session("s1op")
        with s1:
            assert s1.post("/devices/wb-1/commands",
                           data={"csrf": csrf, "kind": "refresh"}).status_code == 404  # fmt: skip
            assert s1.get(f"/commands/{other}").status_code == 404
            assert other not in s1.get("/commands").text
        with web_server.client("s2op") as c:
            assert c.get(f"/api/commands/{other}").json()["device_id"] == "wb-1"

    def test_a_write_without_the_csrf_token_is_refused(self, web_server: Server) -> None:
        op, csrf = web_server.session("op")
        with op:
            assert op.post("/devices/wa-1/commands", data={"kind": "refresh"}).status_code == 403
            assert op.post("/devices/wa-1/commands",
                           data={"kind": "refresh", "csrf": "x" + csrf}).status_code == 403  # fmt: skip
            assert (
                op.post("/api/devices/wa-1/commands", json={"kind": "refresh"}).status_code == 403
            )


class TestSending:
    def test_without_a_broker_the_console_says_so(self, web_server: Server) -> None:
        assert web_server.console.publisher is None
        with web_server.client("op") as c:
            r = c.post("/api/devices/wa-1/commands", json={"kind": "refresh"})
        assert r.status_code == 400 and "no MQTT broker" in r.json()["detail"]
        op, _csrf = web_server.session("op")
        with op:
            page = op.get("/devices/wa-1").text
        assert 'id="cmd-no-broker"' in page and 'id="cmd-refresh"' not in page

    def test_a_disruptive_command_asks_for_a_confirmation_first(
        self, web_server: Server, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        monkeypatch.setattr(web_server.console, "publisher", _Taken())
        op, csrf = web_server.session("op")
        with op:
            r = op.post("/devices/wa-3/commands", data={"csrf": csrf, "kind": "restart"})
            assert r.status_code == 200 and 'id="confirm-yes"' in r.text
            assert op.get("/api/commands", params={"device_id": "wa-3"},
                          headers={"Accept": "application/json"}).json() == []  # fmt: skip
            r = op.post("/devices/wa-3/commands",
                        data={"csrf": csrf, "kind": "restart", "confirm": "1"})  # fmt: skip
            assert r.status_code == 303
            cid = r.headers["location"].rsplit("/", 1)[1]
            page = op.get(f"/commands/{cid}")
        assert page.status_code == 200 and 'data-state="sent"' in page.text
        with web_server.client("op") as c:
            r = c.post("/api/devices/wa-3/commands", json={"kind": "out_of_service"})
            assert r.status_code == 400 and "confirm" in r.json()["detail"]
            shown = c.get(f"/api/commands/{cid}").json()
        assert shown["kind"] == "restart" and shown["surface"] == "web"
        assert [e["state"] for e in shown["history"]] == ["queued", "sent"]
        with psycopg.connect(web_server.db) as conn:
            row = conn.execute("SELECT actor, action FROM audit_log WHERE object_id = %s"
                               " ORDER BY id LIMIT 1", (cid,)).fetchone()  # fmt: skip
        assert row == ("op", "command.send")

    def test_a_journal_range_in_local_time(
        self, web_server: Server, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        monkeypatch.setattr(web_server.console, "publisher", _Taken())
        with web_server.client("op") as c:
            r = c.post("/api/devices/wa-3/commands", json={
                "kind": "journal", "since": "2026-12-01T09:00", "until": "2026-12-01T10:00"})  # fmt: skip
            assert r.status_code == 201, r.text
            assert r.json()["params"]["since"] == "2026-12-01T01:00:00+00:00"
            bad = c.post("/api/devices/wa-3/commands", json={"kind": "journal"})
        assert bad.status_code == 400 and "since" in bad.json()["detail"]


class TestCash:
    def test_the_plan_page_renders_and_downloads(self, web_server: Server) -> None:
        day = datetime.now(TZ).date().isoformat()
        s1, _csrf = web_server.session("s1op")
        with s1:
            page = s1.get("/cash/plan", params={"date": day})
            assert page.status_code == 200, page.text
            assert "加钞计划" in page.text and "支行 S1" in page.text
            xlsx = s1.get("/cash/plan.xlsx", params={"date": day})
            assert xlsx.status_code == 200
            assert zipfile.ZipFile(io.BytesIO(xlsx.content)).testzip() is None
            data = json.loads(s1.get("/cash/plan.json", params={"date": day}).content)
            assert data["scope"] == "subbranch:S1" and data["date"] == day
            assert {s["id"] for s in data["subbranches"]} <= {"S1"}
            past = (date.fromisoformat(day) - timedelta(days=2)).isoformat()
            assert s1.get("/cash/plan", params={"date": past}).status_code == 400
            assert s1.get("/cash/plan", params={"date": "2099-01-01"}).status_code == 400
        with web_server.client("viewer") as c:
            api = c.get("/api/cash/plan", params={"date": day})
        assert api.status_code == 200 and api.json()["scope"] == "fleet"
        with psycopg.connect(web_server.db) as conn:
            n = conn.execute("SELECT count(*) FROM audit_log WHERE action = 'cash.plan'"
                             " AND actor = 's1op'").fetchone()  # fmt: skip
        assert n is not None and n[0] >= 3

    def test_the_device_page_shows_the_forecast_or_no_data(self, web_server: Server) -> None:
        op, _csrf = web_server.session("op")
        with op:
            silent = op.get("/devices/wb-9").text
            teller = op.get("/devices/wa-4").text
            atm = op.get("/devices/wa-1").text
        assert 'id="fc-none"' in silent and "–" in silent
        assert 'id="fc-none"' in teller
        assert 'id="forecast"' in atm
        with web_server.client("op") as c:
            fc: dict[str, Any] = c.get("/api/devices/wb-9").json()["forecast"]
        assert fc["cash_out"] is None


def sample_plan(day: date, scope: str = "subbranch:S1") -> Any:
    """A plan with devices in it (the seeded fleet has too little history for one)."""
    from cash.plan import Amount, Plan, PlanDevice, SubbranchPlan

    at = datetime.combine(day, datetime.min.time(), TZ)
    dev = PlanDevice(
        device_id="wa-1", branch="B1", branch_name="红山支行", subbranch="S1",
        placement="off_site", type="atm", by="cit", action="replenish",
        round_at=at + timedelta(hours=9), next_round_at=at + timedelta(days=2, hours=9),
        cash_out_at=at + timedelta(hours=20), cash_out_earliest=at + timedelta(hours=15),
        deposit_full_at=None, needs_cash=True, empty_deposit=False,
        amounts=(Amount(100, 2000), Amount(50, 300)),
    )  # fmt: skip
    extra = PlanDevice(
        device_id="wa-3", branch="B2", branch_name="松山支行", subbranch="S1",
        placement="off_site", type="atm", by="branch", action="extra_visit", round_at=None,
        next_round_at=at + timedelta(days=1, hours=9), cash_out_at=None,
        cash_out_earliest=None, deposit_full_at=None, needs_cash=True, empty_deposit=True,
        amounts=(Amount(100, 1500),),
    )  # fmt: skip
    return Plan(day, at + timedelta(hours=7), scope,
                [SubbranchPlan("S1", "赤峰", [dev, extra])], [("wa-2", "no_history")])  # fmt: skip


def sample_forecast(device_id: str) -> Any:
    from cash.forecast import DeviceForecast, UnitForecast

    now = datetime.now(TZ).replace(microsecond=0)
    return DeviceForecast(device_id, (
        UnitForecast(device_id, "C1", "cash_out", 100, 1500, 2500, now + timedelta(hours=30),
                     now + timedelta(hours=22), now + timedelta(hours=41), False, None),
        UnitForecast(device_id, "D1", "deposit_full", 0, 300, 2500, None, None, None, True, None),
    ))  # fmt: skip


class TestCashRendering:
    def test_a_plan_with_devices_and_a_forecast_with_its_interval(
        self, web_server: Server, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        from web import cash

        day = datetime.now(TZ).date()
        monkeypatch.setattr(cash, "plan", lambda *_a: sample_plan(day))
        monkeypatch.setattr(web_server.console.forecasts, "device",
                            lambda _c, _r, d: sample_forecast(d))  # fmt: skip
        op, _csrf = web_server.session("s1op")
        with op:
            page = op.get("/cash/plan").text
            en = op.get("/cash/plan", params={"lang": "en"}).text
            dev = op.get("/devices/wa-1").text
            xlsx = op.get("/cash/plan.xlsx")
        assert 'id="plan-wa-1"' in page and "¥100 × 2000" in page and "押运公司" in page
        assert "215,000" in page and "支行 S1" in page
        assert "CIT company" in en and "extra visit" in en
        assert zipfile.ZipFile(io.BytesIO(xlsx.content)).testzip() is None
        assert 'id="fc-cash-out"' in dev and "预测期外" in dev
