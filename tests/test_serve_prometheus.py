"""A real Prometheus scrapes ``atmfleet serve`` and the shipped rules evaluate on it.

Debian's ``prometheus`` runs on a free port with its storage in a temporary directory.
It scrapes the exporter (the small stored fleet of ``test_serve.py``) and a collector's
own metrics (``collector.stats``, committing now, so the collector gate is open) every
second, and evaluates ``exporters/prometheus/atmfleet.rules.yml`` with every group's
interval and every ``for:`` shortened to one second (the expressions are the shipped
ones; their timing is tested by ``promtool test rules``).
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlencode
from urllib.request import urlopen

import pytest
import yaml
from prometheus_client import CollectorRegistry, start_http_server

from collector.stats import CollectorStats
from exporters.metrics import DatabaseSource, Exporter, Targets, make_server
from tests.conftest import create_database, drop_database
from tests.test_serve import Fleet, store_fleet

pytestmark = [pytest.mark.integration, pytest.mark.slow]

ROOT = Path(__file__).resolve().parent.parent
RULES_FILE = ROOT / "exporters" / "prometheus" / "atmfleet.rules.yml"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def fast_rules(text: str) -> str:
    """The shipped rules with one-second intervals and ``for:`` durations."""
    data = yaml.safe_load(text)
    for group in data["groups"]:
        group["interval"] = "1s"
        for rule in group["rules"]:
            if "for" in rule:
                rule["for"] = "1s"
    return yaml.safe_dump(data, allow_unicode=True, sort_keys=False)


class Prometheus:
    def __init__(self, port: int) -> None:
        self.url = f"http://127.0.0.1:{port}"

    def get(self, path: str, **params: str) -> Any:
        query = f"?{urlencode(params)}" if params else ""
        with urlopen(f"{self.url}{path}{query}", timeout=10) as response:
            return json.loads(response.read())

    def query(self, expr: str) -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = self.get("/api/v1/query", query=expr)["data"]["result"]
        return result

    def firing(self) -> list[dict[str, Any]]:
        alerts = self.get("/api/v1/alerts")["data"]["alerts"]
        return [a for a in alerts if a["state"] == "firing"]


def wait_for(what: str, probe: Callable[[], Any], timeout: float = 60.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        got = probe()
        if got:
            return got
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)


@pytest.fixture(scope="module")
def prometheus(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Prometheus, Fleet]]:
    """One Prometheus over one stored fleet for the module: its tests only read them."""
    binary = shutil.which("prometheus")
    if binary is None:
        pytest.skip("prometheus is not installed (Debian package prometheus)")
    database_url = create_database()
    try:
        yield from _prometheus(binary, database_url, tmp_path_factory.mktemp("prometheus"))
    finally:
        drop_database(database_url)


def _prometheus(
    binary: str, database_url: str, tmp_path: Path
) -> Iterator[tuple[Prometheus, Fleet]]:
    fleet = store_fleet(database_url, uuid.uuid4().hex[:8])
    stop = threading.Event()
    # atmfleet serve
    source = DatabaseSource(fleet.url, fleet.rules, day_every_s=1)
    exporter = Exporter(source, CollectorRegistry(), Targets.from_rules(fleet.rules))
    exporter.refresh()
    server = make_server(exporter, "127.0.0.1", 0)
    threads = [
        threading.Thread(target=server.serve_forever, daemon=True),
        threading.Thread(target=exporter.run, args=(1.0, stop), daemon=True),
    ]
    # A collector that is storing.
    collector_registry = CollectorRegistry()
    stats = CollectorStats(collector_registry)
    stats.mqtt_connected.set(1)

    def commit() -> None:
        while not stop.is_set():
            stats.received.inc(12)
            stats.stored.labels(kind="state").inc(10)
            stats.stored.labels(kind="txn").inc(2)
            stats.last_commit.set_to_current_time()
            stop.wait(1)

    threads.append(threading.Thread(target=commit, daemon=True))
    collector_server, _ = start_http_server(0, "127.0.0.1", registry=collector_registry)
    for t in threads:
        t.start()
    (tmp_path / "atmfleet.rules.yml").write_text(fast_rules(RULES_FILE.read_text("utf-8")))
    config = {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": ["atmfleet.rules.yml"],
        "scrape_configs": [
            {"job_name": "atmfleet", "scrape_timeout": "1s",
             "static_configs": [{"targets": [f"127.0.0.1:{server.server_port}"]}]},
            {"job_name": "atmfleet-collector", "scrape_timeout": "1s",
             "static_configs": [{"targets": [f"127.0.0.1:{collector_server.server_port}"]}]},
        ],
    }  # fmt: skip
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
    port = _free_port()
    proc = subprocess.Popen(
        [
            binary,
            f"--config.file={tmp_path / 'prometheus.yml'}",
            f"--storage.tsdb.path={tmp_path / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
        ],
        stdout=subprocess.DEVNULL,
        stderr=(tmp_path / "prometheus.log").open("wb"),
    )
    prom = Prometheus(port)
    try:

        def ready() -> bool:
            try:
                with urlopen(f"{prom.url}/-/ready", timeout=2) as response:
                    return bool(response.status == 200)
            except OSError:
                return False

        wait_for("Prometheus to be ready", ready, timeout=60)
        yield prom, fleet
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        stop.set()
        server.shutdown()
        server.server_close()
        collector_server.shutdown()
        collector_server.server_close()
        source.close()


class TestRulesOnWhatWasScraped:
    def test_recording_rules_count_the_scheduled_and_the_exported_devices(
        self, prometheus: tuple[Prometheus, Fleet]
    ) -> None:
        prom, _fleet = prometheus
        info = wait_for(
            "subbranch:atmfleet_device_info:count",
            lambda: prom.query('subbranch:atmfleet_device_info:count{subbranch="S1"}'),
        )
        assert float(info[0]["value"][1]) == 6
        # B2: B (fault) and C (offline) are scheduled, neither serves.
        scheduled = wait_for(
            "branch:atmfleet_device_scheduled:count",
            lambda: prom.query('branch:atmfleet_device_scheduled:count{branch="B2"}'),
        )
        assert float(scheduled[0]["value"][1]) == 2
        up = prom.query('branch:atmfleet_device_up:sum{branch="B2"}')
        assert float(up[0]["value"][1]) == 0
        # B1: G is outside its window, A serves all day: today's uptime is 1.
        ratio = wait_for(
            "branch:atmfleet_day_uptime:ratio",
            lambda: prom.query('branch:atmfleet_day_uptime:ratio{branch="B1",view="business"}'),
        )
        assert float(ratio[0]["value"][1]) == 1

    def test_a_device_stored_as_down_in_its_window_fires_device_down(
        self, prometheus: tuple[Prometheus, Fleet]
    ) -> None:
        prom, _fleet = prometheus

        def device_down() -> list[dict[str, Any]]:
            return [a for a in prom.firing() if a["labels"]["alertname"] == "AtmfleetDeviceDown"]

        wait_for("AtmfleetDeviceDown to fire", device_down)
        time.sleep(3)  # a few more evaluations: nothing else joins
        down = {a["labels"]["device"][0]: a for a in device_down()}
        # B (fault), C (silent), D (last will); not A (serving), G (outside its window),
        # E (never heard from).
        assert sorted(down) == ["B", "C", "D"]
        b = down["B"]["labels"]
        assert (b["branch"], b["subbranch"], b["tier"], b["type"], b["severity"]) == (
            "B2",
            "S1",
            "2",
            "crs",
            "warning",
        )
        assert "current state: fault" in down["B"]["annotations"]["description"]
        branch = [a for a in prom.firing() if a["labels"]["alertname"] == "AtmfleetBranchDown"]
        assert [a["labels"]["branch"] for a in branch] == ["B2"]
        monitoring = {a["labels"]["alertname"] for a in prom.firing()}
        assert "AtmfleetMetricsUnavailable" not in monitoring
        assert "AtmfleetCollectorDown" not in monitoring


#: The panels' and the cash alerts' expressions before ``atmfleet_device_up`` was folded
#: into ``atmfleet_device_state`` (which now carries the routing labels) and the state's
#: since-time left to ``--full``; ``device:atmfleet_device_scheduled_down:bool``, the plain
#: copy they read then, written as the family it copied. The fixture's serve exports every
#: family (``--full``), so both can be evaluated on the same scrape.
SEL = 'subbranch=~"${subbranch:regex}",branch=~"${branch:regex}",type=~"${type:regex}",vendor=~"${vendor:regex}"'
BEFORE_FOLD = {
    ("atmfleet-fleet", "Devices serving"): f"sum(atmfleet_device_up{{{SEL}}})",
    ("atmfleet-fleet", "Devices down in their window (value: down since)"): (
        f"(atmfleet_device_scheduled_down{{{SEL}}} * on(device) group_left(state)"
        " atmfleet_device_state) * on(device) group_left()"
        " atmfleet_device_state_since_timestamp_seconds * 1000"
    ),
    ("atmfleet-vendors", "Devices serving now by vendor"): (
        f"sum by (vendor) (atmfleet_device_up{{{SEL}}})"
    ),
}
SERVING_NOW = 'atmfleet_device_state{state=~"in_service|degraded"}'
CASH_JOIN_BEFORE = (
    "atmfleet_device_cash_ratio * on(device) group_left(branch, subbranch, tier, type,"
    " vendor, placement) (atmfleet_device_up == 1)"
)


def _result_set(prom: Prometheus, expr: str, at: str) -> list[tuple[Any, ...]]:
    result = prom.get("/api/v1/query", query=expr, time=at)["data"]["result"]
    return sorted(
        (tuple(sorted((k, v) for k, v in r["metric"].items() if k != "__name__")), r["value"][1])
        for r in result
    )


class TestTheFoldShowsTheSame:
    def test_every_changed_panel_and_the_cash_join_equal_their_former_expression(
        self, prometheus: tuple[Prometheus, Fleet]
    ) -> None:
        from dashboards.build import DEFAULT_DIR, queries

        prom, _fleet = prometheus
        wait_for("two scrapes", lambda: prom.query("count_over_time(atmfleet_device_up[1m]) >= 2"))
        now = {
            (q.dashboard, q.where): q.text
            for path in sorted(DEFAULT_DIR.glob("*.json"))
            for q in queries(json.loads(path.read_text("utf-8")))
        }
        at = prom.get("/api/v1/query", query="time()")["data"]["result"][1]
        selections = {
            "all": {"subbranch": ".+", "branch": ".+", "type": ".+", "vendor": ".+"},
            # B2: B (fault) and C (offline), neither serves: the serving count is 0.
            "B2": {"subbranch": ".+", "branch": "B2", "type": ".+", "vendor": ".+"},
        }
        for name, values in selections.items():

            def expand(text: str, values: dict[str, str] = values) -> str:
                for var, value in values.items():
                    text = text.replace(f"${{{var}:regex}}", value)
                return text

            for key, before in BEFORE_FOLD.items():
                old = _result_set(prom, expand(before), at)
                new = _result_set(prom, expand(now[key]), at)
                assert old, (name, key)  # each has something to show on this fleet
                assert new == old, (name, key)
        serving = _result_set(prom, 'sum(atmfleet_device_up{branch="B2"})', at)
        assert [v for _labels, v in serving] == ["0"]
        old_join = _result_set(prom, CASH_JOIN_BEFORE, at)
        assert old_join
        gate = "unless on() (fleet:atmfleet_collector_impaired:bool == 1)"
        cash = [
            rule["expr"].replace(gate, "")
            for group in yaml.safe_load(RULES_FILE.read_text("utf-8"))["groups"]
            for rule in group["rules"]
            if rule.get("alert") in ("AtmfleetDeviceCashLow", "AtmfleetDeviceCashOutForecast")
        ]
        assert len(cash) == 2
        for expr in cash:
            assert SERVING_NOW in expr
            before = expr.replace(SERVING_NOW, "(atmfleet_device_up == 1)")
            assert _result_set(prom, expr, at) == _result_set(prom, before, at)
        new_join = CASH_JOIN_BEFORE.replace("(atmfleet_device_up == 1)", SERVING_NOW)
        assert _result_set(prom, new_join, at) == old_join
