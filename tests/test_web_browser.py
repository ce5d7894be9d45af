"""The console in a real browser (Debian's chromium through pytest-playwright): log in,
filter the wall and watch it refresh live, open a device, take an incident from open to
closed, register and approve a planned stop, generate and download a bulletin, switch
the language — and a screenshot of every page in both languages (WEB_SCREENSHOTS_DIR, or
a temporary folder)."""

from __future__ import annotations

import os
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest

from atmfleet.protocol import StateMessage, device_topic, encode
from atmfleet.store.writer import Accepted, BatchWriter
from tests.web_fleet import PASSWORD, TZ
from tests.web_server import Server

pytestmark = pytest.mark.integration

CHROMIUM = "/usr/bin/chromium"
if not Path(CHROMIUM).exists():
    pytest.skip(f"{CHROMIUM} is missing (apt-get install chromium)", allow_module_level=True)

expect = pytest.importorskip("playwright.sync_api").expect


@pytest.fixture(scope="session")
def browser_type_launch_args() -> dict[str, Any]:
    return {"executable_path": CHROMIUM, "args": ["--no-sandbox", "--disable-gpu"]}


@pytest.fixture(scope="session")
def browser_context_args() -> dict[str, Any]:
    return {"viewport": {"width": 1366, "height": 860}, "locale": "zh-CN",
            "accept_downloads": True}  # fmt: skip


@pytest.fixture
def srv(web_server: Server) -> Server:
    """The session's console (tests/conftest.py): these tests leave what they change."""
    return web_server


@pytest.fixture(scope="module")
def shots(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = os.environ.get("WEB_SCREENSHOTS_DIR")
    path = Path(folder) if folder else tmp_path_factory.mktemp("screenshots")
    path.mkdir(parents=True, exist_ok=True)
    return path


def login(page: Any, srv: Server, user: str) -> None:
    page.goto(srv.url + "/login")
    page.fill("input[name=username]", user)
    page.fill("input[name=password]", PASSWORD)
    page.click("button[type=submit]")
    expect(page).to_have_url(re.compile(r"/wall$"))


class TestInTheBrowser:
    def test_log_in_and_filter_the_wall(self, page: Any, srv: Server) -> None:
        login(page, srv, "op")
        expect(page.locator("#wall-tiles .tile")).to_have_count(2)
        expect(page.locator("#wall-total")).to_have_text("8")
        page.select_option("select[name=state]", "fault")
        page.click("#wall-filters button[type=submit]")
        expect(page.locator("#wall-total")).to_have_text("1")
        expect(page.locator("#wall-devices .dev")).to_have_count(1)
        expect(page.locator("#wall-devices .dev")).to_have_attribute("data-id", "wa-2")
        page.goto(srv.url + "/wall?subbranch=S1")
        page.click("#wall-tiles .tile[data-id=B1]")
        expect(page.locator("#wall-devices .dev")).to_have_count(2)

    def test_the_wall_refreshes_without_a_reload(self, page: Any, srv: Server) -> None:
        login(page, srv, "op")
        page.goto(srv.url + "/wall?subbranch=S1&branch=B1")
        tile = page.locator("#wall-devices .dev[data-id=wa-1]")
        expect(tile).to_have_class(re.compile(r"st-in_service"))
        page.evaluate("window.__marker = 1")
        now = datetime.now(UTC).replace(microsecond=0)
        m = StateMessage(v=1, device_id="wa-1", ts=now, seq=10**6, state="cash_out",
                         heartbeat_s=300)  # fmt: skip
        with psycopg.connect(srv.db) as conn:
            BatchWriter(conn, "test").write(
                [Accepted(m, m.ts, device_topic("wa-1", "state"), encode(m))]
            )
        expect(tile).to_have_class(re.compile(r"st-cash_out"), timeout=15_000)
        assert page.evaluate("window.__marker") == 1  # the same page: no reload

    def test_open_a_device(self, page: Any, srv: Server) -> None:
        login(page, srv, "viewer")
        page.goto(srv.url + "/wall?subbranch=S1&branch=B1")
        page.click("#wall-devices .dev[data-id=wa-2]")
        expect(page).to_have_url(re.compile(r"/devices/wa-2$"))
        expect(page.locator("h1")).to_contain_text("wa-2")
        expect(page.locator("table.timeline tr")).to_have_count(8)
        expect(page.locator(".comps")).to_contain_text("cdm")
        expect(page.locator("#txn-chart svg")).to_have_count(1)  # ECharts drew it

    def test_acknowledge_dispatch_and_close_an_incident(self, page: Any, srv: Server) -> None:
        login(page, srv, "s2op")
        page.goto(srv.url + "/incidents")
        row = page.locator("tr", has=page.locator("a", has_text="wb-2"))
        row.locator("a", has_text="#").click()
        state = page.locator("#inc-state")
        expect(state).to_have_text("待受理")
        page.click("#act-ack button")
        expect(state).to_have_text("已受理")
        eta = (datetime.now(TZ) + timedelta(hours=2)).strftime("%Y-%m-%dT%H:%M")
        page.fill("#act-dispatch input[name=eta]", eta)
        page.click("#act-dispatch button")
        expect(state).to_have_text("已派单")
        page.click("#act-arrive button")
        expect(state).to_have_text("已到场")
        page.click("#act-restore button")
        expect(state).to_have_text("已修复")
        page.fill("#act-close input[name=cause]", "更换出钞模块")
        page.click("#act-close button")
        expect(state).to_have_text("已关闭")
        history = page.locator("#history")
        for kind in ("开单", "受理", "派单", "到场", "修复", "关闭"):
            expect(history).to_contain_text(kind)
        expect(history).to_contain_text("s2op")  # who did it

    def test_register_and_approve_a_planned_stop(
        self, page: Any, browser: Any, srv: Server
    ) -> None:
        login(page, srv, "s1op")
        page.goto(srv.url + "/stops")
        start = (datetime.now(TZ) + timedelta(days=1)).replace(hour=9, minute=0)
        page.fill("#stop-form input[name=device_id]", "wa-4")
        page.fill("#stop-form input[name=starts_at]", start.strftime("%Y-%m-%dT%H:%M"))
        page.fill(
            "#stop-form input[name=ends_at]",
            (start + timedelta(hours=3)).strftime("%Y-%m-%dT%H:%M"),
        )
        page.fill("#stop-form input[name=reason]", "网点装修")
        page.click("#stop-form button")
        row = page.locator("#stops tr", has_text="网点装修")
        expect(row).to_contain_text("待审批")
        expect(row.locator("button", has_text="批准")).to_have_count(0)  # an operator
        admin = browser.new_context(viewport={"width": 1366, "height": 860})
        try:
            other = admin.new_page()
            login(other, srv, "admin")
            other.goto(srv.url + "/stops")
            arow = other.locator("#stops tr", has_text="网点装修")
            arow.locator("button", has_text="批准").click()
            expect(other.locator("#stops tr", has_text="网点装修")).to_contain_text("已批准")
        finally:
            admin.close()

    def test_generate_and_download_a_bulletin(self, page: Any, srv: Server) -> None:
        login(page, srv, "op")
        page.goto(srv.url + "/bulletins")
        page.select_option("#bulletin-form select[name=kind]", "daily")
        page.click("#bulletin-form button")
        link = page.locator("#archive a.dl", has_text="XLSX").first
        expect(link).to_be_visible()
        with page.expect_download() as got:
            link.click()
        download = got.value
        assert download.suggested_filename.endswith(".xlsx")
        assert Path(download.path()).read_bytes()[:2] == b"PK"

    def test_switch_the_language(self, page: Any, srv: Server) -> None:
        login(page, srv, "viewer")
        expect(page.locator("header nav")).to_contain_text("设备墙")
        page.click("#lang-switch")
        expect(page.locator("header nav")).to_contain_text("Fleet wall")
        page.goto(srv.url + "/incidents")
        expect(page.locator("h1")).to_have_text("Incidents")
        page.click("#lang-switch")
        expect(page.locator("h1")).to_have_text("故障工单")


PAGES = {
    "login": "/login", "wall": "/wall", "wall-subbranch": "/wall?subbranch=S1",
    "wall-branch": "/wall?subbranch=S1&branch=B1", "wall-fault": "/wall?state=fault",
    "device": "/devices/wa-2", "incidents": "/incidents", "incident": "/incidents/{inc}",
    "stops": "/stops", "bulletins": "/bulletins", "kpi": "/kpi",
    "kpi-substitution": "/kpi?kind=substitution", "kpi-low-yield": "/kpi?kind=low-yield",
    "kpi-branch": "/kpi?scope=subbranch:S1", "audit": "/audit", "not-found": "/devices/nope",
    "commands": "/commands", "cash-plan": "/cash/plan",
}  # fmt: skip


def test_screenshots_of_every_page_in_both_languages(page: Any, srv: Server, shots: Path) -> None:
    """Every page renders (no error status, no console error) in zh-CN and English."""
    errors: list[str] = []
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: errors.append(str(e)))
    with srv.client("admin") as c:
        inc = c.get("/api/incidents", params={"include_closed": True}).json()["items"][0]["id"]
    for lang in ("zh-CN", "en"):
        page.context.clear_cookies()
        page.goto(srv.url + f"/lang?to={lang}&next=/login")
        page.screenshot(path=shots / f"login.{lang}.png", full_page=True)
        login(page, srv, "admin")
        for name, path in PAGES.items():
            if name == "login":
                continue
            r = page.goto(srv.url + path.format(inc=inc))
            assert r is not None
            assert r.status == (404 if name == "not-found" else 200), (name, r.status)
            page.screenshot(path=shots / f"{name}.{lang}.png", full_page=True)
            html_lang = page.locator("html").get_attribute("lang")
            assert html_lang == lang
    unexpected = [e for e in errors if "404" not in e]
    assert not unexpected, unexpected
    print(f"screenshots: {shots}")
