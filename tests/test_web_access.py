"""Who may do what in the web console, tried through the API and the pages: roles,
org scopes by URL and API, CSRF, the login rate limit, tokens, the audit of every write,
and no page that refers to anything outside the console."""

from __future__ import annotations

import csv
import io
import re
from pathlib import Path

import pytest

from tests.web_fleet import INCIDENTS, PASSWORD
from tests.web_server import Server

pytestmark = pytest.mark.integration


@pytest.fixture
def srv(web_server: Server) -> Server:
    """The session's console (tests/conftest.py): these tests leave what they change."""
    return web_server


def incident_of(srv: Server, device: str) -> int:
    with srv.client("admin") as c:
        items = c.get("/api/incidents", params={"include_closed": True}).json()["items"]
    return next(i["id"] for i in items if i["device_id"] == device)


class TestRoles:
    """A viewer reads but cannot act; an operator acts; approving a stop needs an admin."""

    def test_viewer_cannot_act_by_api(self, srv: Server) -> None:
        inc = incident_of(srv, "wb-2")
        with srv.client("viewer") as c:
            assert c.get(f"/api/incidents/{inc}").status_code == 200
            r = c.post(f"/api/incidents/{inc}/ack", json={})
        assert r.status_code == 403, r.text

    def test_viewer_cannot_act_by_page(self, srv: Server) -> None:
        inc = incident_of(srv, "wb-2")
        c, csrf = srv.session("viewer")
        with c:
            r = c.post(f"/incidents/{inc}/ack", data={"csrf": csrf})
        assert r.status_code == 403

    def test_viewer_cannot_generate_a_bulletin_or_register_a_stop(self, srv: Server) -> None:
        with srv.client("viewer") as c:
            assert c.post("/api/bulletins", json={"kind": "daily"}).status_code == 403
            r = c.post("/api/stops", json={"device_id": "wb-1", "starts_at": "2030-01-01T09:00",
                                           "ends_at": "2030-01-01T10:00", "reason": "x"})  # fmt: skip
            assert r.status_code == 403

    def test_operator_cannot_approve_a_stop_nor_read_the_audit_log(self, srv: Server) -> None:
        with srv.client("s2op") as c:
            r = c.post("/api/stops", json={"device_id": "wb-3", "starts_at": "2030-01-02T09:00",
                                           "ends_at": "2030-01-02T10:00", "reason": "装修"})  # fmt: skip
            assert r.status_code == 201, r.text
            stop = r.json()["id"]
        with srv.client("op") as c:
            assert c.post(f"/api/stops/{stop}/approve", json={}).status_code == 403
            assert c.get("/api/audit").status_code == 403
            assert c.get("/audit").status_code == 403
        with srv.client("admin") as c:
            r = c.post(f"/api/stops/{stop}/approve", json={})
            assert r.status_code == 200, r.text
            assert r.json()["status"] == "approved"


class TestScope:
    """A sub-branch user sees nothing of another sub-branch, by URL or by API."""

    @pytest.mark.parametrize("path", ["/api/devices/wa-1", "/devices/wa-1"])
    def test_another_subbranchs_device_is_not_found(self, srv: Server, path: str) -> None:
        with srv.client("s2op") as c:
            assert c.get(path).status_code == 404
            assert c.get(path.replace("wa-1", "wb-1")).status_code == 200

    def test_another_subbranchs_incident_is_not_found_nor_actionable(self, srv: Server) -> None:
        inc = incident_of(srv, "wa-3")
        with srv.client("s2op") as c:
            assert c.get(f"/api/incidents/{inc}").status_code == 404
            assert c.get(f"/incidents/{inc}").status_code == 404
            assert c.post(f"/api/incidents/{inc}/ack", json={}).status_code == 404
            board = c.get("/api/incidents", params={"include_closed": True}).json()
        devices = {i["device_id"] for i in board["items"]}
        assert devices == {d for d in INCIDENTS if d.startswith("wb")}

    def test_the_wall_holds_only_the_users_scope(self, srv: Server) -> None:
        with srv.client("s2op") as c:
            wall = c.get("/api/wall").json()
            assert [t["id"] for t in wall["tiles"]] == ["S2"]
            assert c.get("/api/wall", params={"subbranch": "S1"}).json()["total"] == 0
        with srv.client("b3view") as c:
            wall = c.get("/api/wall", params={"subbranch": "S2", "branch": "B3"}).json()
        assert {d["id"] for d in wall["devices"]} == {"wb-1", "wb-2", "wb-3", "wb-9"}

    def test_another_subbranchs_kpi_is_forbidden(self, srv: Server) -> None:
        with srv.client("s2op") as c:
            assert c.get("/api/kpi/uptime", params={"scope": "subbranch:S1"}).status_code == 403
            assert c.get("/api/kpi/uptime", params={"scope": "fleet"}).status_code == 403
            assert c.get("/api/kpi/uptime", params={"scope": "device:wa-1"}).status_code == 403
            assert c.get("/api/kpi/uptime", params={"scope": "subbranch:S2"}).status_code == 200

    def test_another_subbranchs_bulletins_are_not_found(self, srv: Server) -> None:
        with srv.client("s1op") as c:
            r = c.post("/api/bulletins", json={"kind": "daily", "lang": "en"})
            assert r.status_code == 201, r.text
            name = next(n for n in r.json() if n.endswith(".xlsx"))
            assert c.get(f"/api/bulletins/subbranch-S1/{name}").status_code == 200
            assert c.post("/api/bulletins", json={"kind": "monthly"}).status_code == 403
        with srv.client("s2op") as c:
            assert c.get(f"/api/bulletins/subbranch-S1/{name}").status_code == 404
            assert c.get(f"/bulletins/subbranch-S1/{name}").status_code == 404
            assert all(b["scope"] != "subbranch-S1" for b in c.get("/api/bulletins").json())
            assert c.get(f"/api/bulletins/..%2Fsubbranch-S1/{name}").status_code == 404
        with srv.client("admin") as c:
            assert c.get(f"/api/bulletins/subbranch-S1/{name}").status_code == 200

    def test_another_subbranchs_stop_cannot_be_registered(self, srv: Server) -> None:
        with srv.client("s2op") as c:
            r = c.post("/api/stops", json={"device_id": "wa-1", "starts_at": "2030-01-01T09:00",
                                           "ends_at": "2030-01-01T10:00", "reason": "x"})  # fmt: skip
        assert r.status_code == 404


class TestSessions:
    def test_a_write_without_the_csrf_token_is_refused(self, srv: Server) -> None:
        inc = incident_of(srv, "wb-1")
        c, csrf = srv.session("op")
        with c:
            assert c.post(f"/incidents/{inc}/ack", data={}).status_code == 403
            assert c.post(f"/incidents/{inc}/ack", data={"csrf": "wrong"}).status_code == 403
            assert c.post(f"/api/incidents/{inc}/ack", json={}).status_code == 403
            r = c.post(f"/api/incidents/{inc}/ack", json={}, headers={"X-CSRF-Token": csrf})
            assert r.status_code == 200, r.text
            assert r.json()["state"] == "acknowledged"

    def test_the_session_cookie_is_secure_httponly_samesite(self, srv: Server) -> None:
        with srv.client() as c:
            r = c.post("/login", data={"username": "viewer", "password": PASSWORD})
        cookie = r.headers["set-cookie"].lower()
        assert "httponly" in cookie and "secure" in cookie and "samesite=strict" in cookie

    def test_logout_ends_the_session(self, srv: Server) -> None:
        c, csrf = srv.session("viewer")
        with c:
            assert c.post("/logout", data={"csrf": csrf}).status_code == 303
            assert c.get("/api/me").status_code == 401

    def test_bad_logins_are_rate_limited_per_user_and_address(self, srv: Server) -> None:
        with srv.client() as c:
            for _ in range(5):
                r = c.post("/login", data={"username": "b3view", "password": "wrong password"})
                assert r.status_code == 401
            r = c.post("/login", data={"username": "b3view", "password": PASSWORD})
            assert r.status_code == 429  # even the right password, until the window passes
            r = c.post("/login", data={"username": "viewer", "password": PASSWORD})
            assert r.status_code == 303  # another user is not locked out

    def test_an_unknown_token_is_unauthenticated(self, srv: Server) -> None:
        with srv.client() as c:
            assert c.get("/api/me", headers={"Authorization": "Bearer atf_nope"}).status_code == 401
            assert c.get("/api/me").status_code == 401
            assert c.get("/wall").status_code == 303

    def test_a_page_without_login_redirects_to_it(self, srv: Server) -> None:
        with srv.client() as c:
            r = c.get("/devices/wa-1")
        assert r.status_code == 303 and r.headers["location"].startswith("/login?next=")


class TestAudit:
    def test_every_write_is_in_the_audit_log_with_before_and_after(self, srv: Server) -> None:
        inc = incident_of(srv, "wa-2")
        with srv.client("op") as c:
            assert c.post(f"/api/incidents/{inc}/ack", json={}).status_code == 200
        with srv.client("admin") as c:
            rows = c.get("/api/audit", params={"action": "incident.ack"}).json()
            mine = [r for r in rows if r["object_id"] == str(inc)]
            assert mine and mine[0]["actor"] == "op" and mine[0]["surface"] == "api"
            assert mine[0]["before"]["state"] == "open"
            assert mine[0]["after"]["state"] == "acknowledged"
            text = c.get("/audit.csv").text
        table = list(csv.DictReader(io.StringIO(text.lstrip("\ufeff"))))
        assert any(r["action"] == "incident.ack" and r["object_id"] == str(inc) for r in table)
        assert {"token.issue", "user.add", "session.login"} <= {r["action"] for r in table}


class TestNothingFromOutside:
    PAGES = ("/wall", "/wall?subbranch=S1", "/wall?subbranch=S1&branch=B1", "/devices/wa-2",
             "/incidents", "/stops", "/bulletins", "/kpi", "/audit", "/login")  # fmt: skip

    def test_no_page_refers_to_an_external_url(self, srv: Server) -> None:
        with srv.client("admin") as c:
            for path in self.PAGES:
                html = c.get(path).text
                refs = re.findall(r'(?:src|href|action)\s*=\s*"([^"]*)"', html)
                refs += re.findall(r"url\(([^)]*)\)", html)
                assert refs, path
                bad = [r for r in refs if re.match(r"^\s*(?:[a-z]+:)?//", r, re.I)]
                assert not bad, (path, bad)
            css = c.get("/static/app.css").text
            assert "http" not in css and "@import" not in css

    def test_the_chart_library_is_served_by_the_console(self, srv: Server) -> None:
        with srv.client() as c:
            r = c.get("/static/vendor/echarts.min.js")
            assert r.status_code == 200 and len(r.content) > 500_000
            assert c.get("/static/vendor/ECHARTS-LICENSE").status_code == 200


def test_the_package_ships_the_assets() -> None:
    from importlib import resources

    static = resources.files("web").joinpath("static")
    assert static.joinpath("vendor", "echarts.min.js").is_file()
    assert Path(str(static.joinpath("app.js"))).stat().st_size > 0
