"""The shipped Alertmanager configuration, on a real Alertmanager.

Starts Debian's ``prometheus-alertmanager`` on free ports (clustering off, storage in a
temporary directory) with ``exporters/prometheus/alertmanager.yml``, changed only so that
its webhook receivers point at a small HTTP server this test runs and ``group_wait`` is
one second. Alerts are posted to ``/api/v2/alerts`` as Prometheus would send them; the
test reads back which are inhibited (``status.inhibitedBy``) and which notifications each
receiver got.
"""

from __future__ import annotations

import json
import threading
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests import alertmanager_proc

ROOT = Path(__file__).resolve().parent.parent
ALERTMANAGER_FILE = ROOT / "exporters" / "prometheus" / "alertmanager.yml"

pytestmark = pytest.mark.slow


@dataclass
class Inbox:
    """Notifications received by the webhook server: (receiver, alert labels, status)."""

    received: list[tuple[str, dict[str, str], str]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, receiver: str, body: dict[str, Any]) -> None:
        with self.lock:
            for alert in body["alerts"]:
                self.received.append((receiver, alert["labels"], alert["status"]))

    def snapshot(self) -> list[tuple[str, dict[str, str], str]]:
        with self.lock:
            return list(self.received)


@pytest.fixture
def inbox() -> Iterator[tuple[Inbox, int]]:
    box = Inbox()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length", "0"))
            body = json.loads(self.rfile.read(length))
            box.add(self.path.strip("/"), body)
            self.send_response(200)
            self.end_headers()

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield box, server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()


def _test_config(webhook_port: int) -> dict[str, Any]:
    """The shipped configuration with the receivers pointed at the test's webhook server
    and group_wait shortened; routes and inhibition rules untouched."""
    config: dict[str, Any] = yaml.safe_load(ALERTMANAGER_FILE.read_text(encoding="utf-8"))
    for receiver in config["receivers"]:
        for hook in receiver["webhook_configs"]:
            hook["url"] = f"http://127.0.0.1:{webhook_port}/{receiver['name']}"

    def shorten(route: dict[str, Any]) -> None:
        if "group_wait" in route:
            route["group_wait"] = "1s"
        for child in route.get("routes", []):
            shorten(child)

    config["route"]["group_wait"] = "1s"
    shorten(config["route"])
    return config


class Alertmanager:
    def __init__(self, url: str) -> None:
        self.url = url

    def post(self, alerts: list[dict[str, str]]) -> None:
        body = json.dumps(
            [
                {
                    "labels": labels,
                    "annotations": {"summary": labels["alertname"]},
                    "generatorURL": "http://prometheus.example:9090/graph",
                }
                for labels in alerts
            ]
        ).encode()
        request = urllib.request.Request(
            f"{self.url}/api/v2/alerts",
            data=body,
            headers={"Content-Type": "application/json"},
            method="POST",
        )
        with urllib.request.urlopen(request, timeout=5) as response:
            assert response.status == 200

    def alerts(self) -> list[dict[str, Any]]:
        with urllib.request.urlopen(f"{self.url}/api/v2/alerts", timeout=5) as response:
            alerts: list[dict[str, Any]] = json.loads(response.read())
            return alerts

    def wait_for(self, count: int, inhibited: int, timeout: float = 10.0) -> list[dict[str, Any]]:
        """The alerts, once ``count`` are known and ``inhibited`` of them inhibited."""
        deadline = time.monotonic() + timeout
        while True:
            alerts = self.alerts()
            muted = [a for a in alerts if a["status"]["inhibitedBy"]]
            if len(alerts) == count and len(muted) == inhibited:
                return alerts
            if time.monotonic() > deadline:
                return alerts
            time.sleep(0.1)


@pytest.fixture
def alertmanager(inbox: tuple[Inbox, int], tmp_path: Path) -> Iterator[Alertmanager]:
    _box, webhook_port = inbox
    with alertmanager_proc.running(_test_config(webhook_port), tmp_path) as url:
        yield Alertmanager(url)


def _device(name: str, device: str, branch: str, subbranch: str, **extra: str) -> dict[str, str]:
    labels = {
        "alertname": name,
        "severity": "warning",
        "category": "availability",
        "scope": "device",
        "device": device,
        "branch": branch,
        "subbranch": subbranch,
        "tier": "2",
        "type": "atm",
        "vendor": "GRG",
        "placement": "off_site",
    }
    labels.update(extra)
    return labels


BRANCH_DOWN_B02 = {
    "alertname": "AtmfleetBranchDown",
    "severity": "critical",
    "category": "availability",
    "scope": "branch",
    "branch": "B02",
    "subbranch": "HLBE",
    "tier": "2",
}
SUBBRANCH_DOWN_TL = {
    "alertname": "AtmfleetSubbranchDown",
    "severity": "critical",
    "category": "availability",
    "scope": "subbranch",
    "subbranch": "TL",
    "tier": "3",
}
BRANCH_DOWN_B10 = {**BRANCH_DOWN_B02, "branch": "B10", "subbranch": "TL", "tier": "3"}
COLLECTOR_DOWN = {
    "alertname": "AtmfleetCollectorDown",
    "severity": "critical",
    "category": "monitoring",
    "scope": "collector",
}
UPTIME_BELOW_TARGET = {
    "alertname": "AtmfleetUptimeBelowTarget",
    "severity": "warning",
    "category": "kpi",
    "scope": "subbranch",
    "subbranch": "HLBE",
    "tier": "2",
    "view": "business",
}


def _by_name(alerts: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Alerts keyed by alertname plus their device or branch or sub-branch."""
    keyed = {}
    for alert in alerts:
        labels = alert["labels"]
        what = labels.get("device") or labels.get("branch") or labels.get("subbranch") or ""
        keyed[f"{labels['alertname']}/{what}".rstrip("/")] = alert
    return keyed


def _wait_for_notifications(
    box: Inbox, expected: set[tuple[str, str]], timeout: float = 10.0
) -> set[tuple[str, str]]:
    """(receiver, alertname/what) notified so far, once ``expected`` are in, plus a grace
    period for anything unexpected to show up too."""

    def seen() -> set[tuple[str, str]]:
        out = set()
        for receiver, labels, _status in box.snapshot():
            what = labels.get("device") or labels.get("branch") or labels.get("subbranch") or ""
            out.add((receiver, f"{labels['alertname']}/{what}".rstrip("/")))
        return out

    deadline = time.monotonic() + timeout
    while not expected <= seen() and time.monotonic() < deadline:
        time.sleep(0.1)
    time.sleep(1.5)  # every group has the same 1 s group_wait: stragglers would be here
    return seen()


class TestBranchAndSubbranchInhibition:
    """A branch down suppresses its device alerts; a sub-branch down its branches' and
    devices'; alerts elsewhere stay active and are delivered by severity."""

    def test_inhibited_alerts_are_marked_and_never_notified(
        self, alertmanager: Alertmanager, inbox: tuple[Inbox, int]
    ) -> None:
        box, _port = inbox
        alertmanager.post(
            [
                BRANCH_DOWN_B02,
                _device("AtmfleetDeviceDown", "B02-1", "B02", "HLBE"),
                _device("AtmfleetDeviceDown", "B02-2", "B02", "HLBE"),
                _device("AtmfleetDeviceCashOut", "B02-3", "B02", "HLBE", category="cash"),
                # Same sub-branch, another branch: not inhibited.
                _device("AtmfleetDeviceDown", "B01-1", "B01", "HLBE"),
                SUBBRANCH_DOWN_TL,
                BRANCH_DOWN_B10,
                _device("AtmfleetDeviceDown", "B11-1", "B11", "TL", tier="3"),
                # A KPI alert of the same sub-branch is not an outage alert: not inhibited.
                {**UPTIME_BELOW_TARGET, "subbranch": "TL", "tier": "3"},
            ]
        )
        alerts = _by_name(alertmanager.wait_for(count=9, inhibited=5))
        fingerprint = {k: a["fingerprint"] for k, a in alerts.items()}
        inhibited_by = {k: a["status"]["inhibitedBy"] for k, a in alerts.items()}
        assert inhibited_by == {
            "AtmfleetBranchDown/B02": [],
            "AtmfleetDeviceDown/B02-1": [fingerprint["AtmfleetBranchDown/B02"]],
            "AtmfleetDeviceDown/B02-2": [fingerprint["AtmfleetBranchDown/B02"]],
            "AtmfleetDeviceCashOut/B02-3": [fingerprint["AtmfleetBranchDown/B02"]],
            "AtmfleetDeviceDown/B01-1": [],
            "AtmfleetSubbranchDown/TL": [],
            "AtmfleetBranchDown/B10": [fingerprint["AtmfleetSubbranchDown/TL"]],
            "AtmfleetDeviceDown/B11-1": [fingerprint["AtmfleetSubbranchDown/TL"]],
            "AtmfleetUptimeBelowTarget/TL": [],
        }
        assert alerts["AtmfleetDeviceDown/B02-1"]["status"]["state"] == "suppressed"
        assert alerts["AtmfleetDeviceDown/B01-1"]["status"]["state"] == "active"

        notified = _wait_for_notifications(
            box,
            {
                ("pager", "AtmfleetBranchDown/B02"),
                ("team", "AtmfleetBranchDown/B02"),
                ("pager", "AtmfleetSubbranchDown/TL"),
                ("team", "AtmfleetSubbranchDown/TL"),
                ("team", "AtmfleetDeviceDown/B01-1"),
                ("kpi", "AtmfleetUptimeBelowTarget/TL"),
            },
        )
        assert notified == {
            ("pager", "AtmfleetBranchDown/B02"),
            ("team", "AtmfleetBranchDown/B02"),
            ("pager", "AtmfleetSubbranchDown/TL"),
            ("team", "AtmfleetSubbranchDown/TL"),
            ("team", "AtmfleetDeviceDown/B01-1"),
            ("kpi", "AtmfleetUptimeBelowTarget/TL"),
        }


class TestCollectorInhibition:
    """While the collector is down, device, branch and sub-branch alerts anywhere are
    suppressed; the collector alert itself and the KPI alerts are not."""

    def test_collector_down_suppresses_outage_and_cash_alerts_fleet_wide(
        self, alertmanager: Alertmanager, inbox: tuple[Inbox, int]
    ) -> None:
        box, _port = inbox
        alertmanager.post(
            [
                COLLECTOR_DOWN,
                _device("AtmfleetDeviceDown", "B01-1", "B01", "HLBE"),
                _device("AtmfleetDeviceCashOut", "B03-1", "B03", "CF", category="cash"),
                BRANCH_DOWN_B02,
                SUBBRANCH_DOWN_TL,
                UPTIME_BELOW_TARGET,
            ]
        )
        alerts = _by_name(alertmanager.wait_for(count=6, inhibited=4))
        collector = alerts["AtmfleetCollectorDown"]["fingerprint"]
        assert {k: a["status"]["inhibitedBy"] for k, a in alerts.items()} == {
            "AtmfleetCollectorDown": [],
            "AtmfleetDeviceDown/B01-1": [collector],
            "AtmfleetDeviceCashOut/B03-1": [collector],
            "AtmfleetBranchDown/B02": [collector],
            "AtmfleetSubbranchDown/TL": [collector],
            "AtmfleetUptimeBelowTarget/HLBE": [],
        }
        notified = _wait_for_notifications(
            box,
            {
                ("pager", "AtmfleetCollectorDown"),
                ("team", "AtmfleetCollectorDown"),
                ("kpi", "AtmfleetUptimeBelowTarget/HLBE"),
            },
        )
        assert notified == {
            ("pager", "AtmfleetCollectorDown"),
            ("team", "AtmfleetCollectorDown"),
            ("kpi", "AtmfleetUptimeBelowTarget/HLBE"),
        }
