"""A remote command from the console in a real browser, answered by a simulated device:
a private Mosquitto with the shipped configuration and ACL (tests/test_broker_security.py),
the commands listener, the simulated device side for ``wa-1`` connected as itself, and a
console that publishes as ``atmfleet-ops``. The operator presses "refresh status" on the
device page and watches the command's page reach ``done`` without a reload; then
screenshots of the new pages in both languages."""

from __future__ import annotations

import re
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from commands.mqtt import CommandListener
from simulator.config import CommandSide
from simulator.devices import CommandDevices, Credentials
from tests.test_broker_security import shipped_broker
from tests.test_collector_service import wait_until
from tests.test_commands_e2e import RULES, _settings
from tests.test_web_browser import (  # noqa: F401 (the browser fixtures)
    browser_context_args,
    browser_type_launch_args,
    expect,
    login,
    shots,
)
from tests.web_fleet import TZ
from tests.web_server import Server, serve
from web.commands import ConsolePublisher

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def srv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    base = tmp_path_factory.mktemp("webcmd")
    with shipped_broker(base, devices={"wa-1": None, "wa-3": None}) as secured:
        publisher = ConsolePublisher(_settings(secured, "atmfleet-ops"))
        gen = serve(base / "out", publisher=publisher)
        server = next(gen)
        listener = CommandListener(_settings(secured, "atmfleet-commands"), server.db, RULES)
        devices = CommandDevices(["wa-1", "wa-3"], mqtt_url=f"mqtts://127.0.0.1:{secured.cert_port}",
                                 config=CommandSide(restart_s=0.2),
                                 credentials=Credentials(secured.creds))  # fmt: skip
        try:
            listener.start()
            wait_until(listener.subscribed.is_set, what="the listener subscribed")
            devices.start()
            wait_until(devices.ready.is_set, what="the simulated devices connected")
            yield server
        finally:
            devices.stop()
            listener.stop()
            publisher.close()
            gen.close()


def test_a_refresh_sent_from_the_device_page_reaches_done(page: Any, srv: Server) -> None:
    login(page, srv, "op")
    page.goto(srv.url + "/devices/wa-1")
    page.click("#cmd-refresh")
    expect(page).to_have_url(re.compile(r"/commands/\d{14}-[0-9a-f]{8}$"))
    page.evaluate("window.__marker = 1")
    expect(page.locator("#cmd-state")).to_have_attribute("data-state", "done", timeout=30_000)
    assert page.evaluate("window.__marker") == 1  # updated in place, not reloaded
    history = page.locator("#cmd-history tr")
    expect(history).to_have_count(5)  # head, queued, sent, accepted, done
    expect(page.locator("#cmd-waiting")).to_be_hidden()
    page.goto(srv.url + "/devices/wa-1")
    expect(page.locator("#device-command-list tr").nth(1)).to_contain_text("已完成")


def test_a_restart_is_confirmed_then_done(page: Any, srv: Server) -> None:
    login(page, srv, "op")
    page.goto(srv.url + "/devices/wa-3")
    page.click("#cmd-restart")
    expect(page.locator("#confirm")).to_contain_text("wa-3")
    page.click("#confirm-yes")
    expect(page.locator("#cmd-state")).to_have_attribute("data-state", "done", timeout=30_000)


def test_screenshots_of_the_new_pages_in_both_languages(
    page: Any,
    srv: Server,
    shots: Path,  # noqa: F811 (the fixture of tests/test_web_browser.py)
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The new pages in zh-CN and English; a plan with devices and a forecast with its
    interval from a sample (the seeded fleet has less history than a forecast needs)."""
    from tests.test_web_commands import sample_forecast, sample_plan
    from web import cash

    errors: list[str] = []
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: errors.append(str(e)))
    with srv.client("op") as c:
        cid = c.post("/api/devices/wa-1/commands", json={"kind": "journal",
                     "since": "2026-12-01T08:00", "until": "2026-12-01T09:00"}).json()["id"]  # fmt: skip
        wait_until(lambda: c.get(f"/api/commands/{cid}").json()["final"], what="the journal")
    pages = {"device-commands": "/devices/wa-1", "commands": "/commands",
             "command": f"/commands/{cid}", "cash-plan": "/cash/plan",
             "cash-plan-sample": "/cash/plan?sample", "device-forecast-sample": "/devices/wa-3?sample"}  # fmt: skip
    real_plan, real_forecast = cash.plan, srv.console.forecasts.device
    day = datetime.now(TZ).date()
    for lang in ("zh-CN", "en"):
        page.context.clear_cookies()
        page.goto(srv.url + f"/lang?to={lang}&next=/login")
        login(page, srv, "op")
        for name, path in pages.items():
            sample = path.endswith("?sample")
            monkeypatch.setattr(
                cash, "plan", (lambda *_a: sample_plan(day)) if sample else real_plan
            )
            monkeypatch.setattr(srv.console.forecasts, "device",
                                (lambda _c, _r, d: sample_forecast(d)) if sample else real_forecast)  # fmt: skip
            r = page.goto(srv.url + path)
            assert r is not None and r.status == 200, (name, r and r.status)
            page.screenshot(path=shots / f"{name}.{lang}.png", full_page=True)
        page.goto(srv.url + "/devices/wa-1")
        page.click("#cmd-out_of_service")
        page.screenshot(path=shots / f"command-confirm.{lang}.png", full_page=True)
    with page.expect_download() as got:
        page.goto(srv.url + "/cash/plan")
        page.click("#plan-xlsx")
    assert got.value.suggested_filename.endswith(".xlsx")
    page.goto(srv.url + f"/commands/{cid}")
    with page.expect_download() as journal:
        page.click("#cmd-journal a")
    assert journal.value.suggested_filename == f"journal-{cid}.txt"
    assert not errors, errors
    print(f"screenshots: {shots}")
