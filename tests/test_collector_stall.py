"""Nobody but the collector can stall ingestion, and a stalled pipeline is always visible.

- A reader (migration 0006's reader role) holding every advisory lock the store once used
  stops nothing, and cannot take the locks the store uses now.
- A store worker blocked by force (the owner holds an exclusive lock on state_samples)
  makes ``atmfleet_collector_lag_seconds``, scraped over HTTP from the collector's own
  process, grow with the wall clock while the liveness beats go on; a promtool test fed
  with the scraped values shows ``AtmfleetCollectorLagging`` firing.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import time
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
import yaml

from atmfleet.store.roles import group_roles
from tests.conftest import PG_ADMIN_URL
from tests.test_collector_service import (
    Broker,
    free_port,
    publisher,
    running,
    settings_for,
    start_broker,
    states,
    stored,
    wait_until,
)
from tests.test_store_roles import as_user, dbname

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parent.parent
RULES = ROOT / "exporters" / "prometheus" / "atmfleet.rules.yml"


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Broker]:
    """A Mosquitto of this module's own."""
    b = start_broker(tmp_path_factory.mktemp("mosquitto"))
    yield b
    b.process.terminate()
    b.process.wait(10)


@pytest.fixture
def role_url(db: str) -> Iterator[dict[str, str]]:
    """A login in the database's reader and one in its owner group."""
    token = uuid.uuid4().hex[:8]
    groups = group_roles(dbname(db))
    names = {kind: f"atmfleet_s{token}_{kind}" for kind in ("reader", "owner")}
    with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
        for kind, name in names.items():
            conn.execute(f'CREATE ROLE "{name}" LOGIN IN ROLE "{groups[kind]}"'.encode())
    try:
        yield {kind: as_user(db, name) for kind, name in names.items()}
    finally:
        with psycopg.connect(db, autocommit=True) as conn:
            conn.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = ANY(%s)",
                (list(names.values()),),
            )
        with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
            for name in names.values():
                conn.execute(f'DROP ROLE IF EXISTS "{name}"'.encode())


def scrape(port: int) -> float:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    match = re.search(r"^atmfleet_collector_lag_seconds ([0-9.e+-]+)$", text, re.MULTILINE)
    assert match, "no lag in the scrape"
    return float(match.group(1))


class TestNobodyElseCanStallIngestion:
    def test_a_reader_holding_the_old_advisory_locks_stops_nothing(
        self, broker: Broker, db: str, run_id: str, role_url: dict[str, str]
    ) -> None:
        with psycopg.connect(role_url["reader"], autocommit=True) as reader:
            # What stalled every store before: all 256 run buckets, and the start-up lock.
            reader.execute(
                "SELECT pg_advisory_lock(hashtext('atmfleet.runs'), b) FROM generate_series(0, 255) b"
            )
            reader.execute("SELECT pg_advisory_lock(%s)", (0x61746D6C69766531,))
            # What the store locks now is out of its reach.
            for statement in (
                "SELECT bucket FROM run_locks FOR UPDATE",
                "SELECT bucket FROM run_locks FOR KEY SHARE",
                "LOCK TABLE run_locks IN ROW EXCLUSIVE MODE",
                "LOCK TABLE collector_runs IN SHARE ROW EXCLUSIVE MODE",
            ):
                with (
                    pytest.raises(psycopg.errors.InsufficientPrivilege),
                    reader.transaction(),
                ):
                    reader.execute(statement.encode())
            with (
                running(settings_for(broker.url, db), f"c{run_id}"),
                publisher(broker.url) as pub,
            ):
                for topic, payload in states(f"t{run_id}", range(50)):
                    pub.send(topic, payload)
                wait_until(lambda: stored(db) == 50, what="50 rows stored while the reader waits")

    def test_a_blocked_store_worker_makes_the_lag_grow_and_the_alert_fire(
        self, broker: Broker, db: str, run_id: str, role_url: dict[str, str], tmp_path: Path
    ) -> None:
        from prometheus_client import start_http_server

        promtool = shutil.which("promtool")
        if promtool is None:
            pytest.skip("promtool is not installed (Debian: apt-get install prometheus)")
        port = free_port()
        with running(settings_for(broker.url, db), f"c{run_id}") as run:
            server, _thread = start_http_server(port, addr="127.0.0.1", registry=run.registry)
            try:
                assert scrape(port) == 0.0
                with psycopg.connect(role_url["owner"]) as owner:
                    owner.execute("LOCK TABLE state_samples IN ACCESS EXCLUSIVE MODE")
                    with publisher(broker.url) as pub:
                        for topic, payload in states(f"t{run_id}", range(10)):
                            pub.send(topic, payload)
                    wait_until(lambda: scrape(port) > 1.0, what="the lag to pass 1 s")
                    t1, v1 = time.monotonic(), scrape(port)
                    beats = run.metric("last_commit_timestamp_seconds")
                    wait_until(lambda: scrape(port) > v1 + 1.5, what="the lag to keep growing")
                    t2, v2 = time.monotonic(), scrape(port)
                    # The beats go on: the last-commit time alone would not show the stall.
                    wait_until(
                        lambda: run.metric("last_commit_timestamp_seconds") > beats,
                        what="a liveness beat while stalled",
                    )
                    assert run.metric("messages_stored_total", kind="state") == 0
                    owner.rollback()  # the lock goes; everything is stored
                wait_until(lambda: stored(db) == 10, what="the backlog stored after the lock")
                wait_until(lambda: scrape(port) == 0.0, what="the lag back to 0")
            finally:
                server.shutdown()
        growth = (v2 - v1) / (t2 - t1)
        assert 0.5 < growth < 2.0, (v1, v2, t2 - t1)
        fires_at = write_rule_test(tmp_path / "stall.yml", v2, growth)
        result = subprocess.run(
            [promtool, "test", "rules", str(tmp_path / "stall.yml")],
            capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
        assert result.returncode == 0, result.stdout + result.stderr
        assert fires_at > 5


def write_rule_test(path: Path, scraped: float, growth: float) -> int:
    """A promtool test: one scrape a minute, starting at the scraped value and growing as
    measured. Returns the minute the alert is expected to fire (held 5 minutes over 60 s)."""
    minutes = 15
    values = [scraped + 60 * growth * k for k in range(minutes)]
    first_over = next(k for k, v in enumerate(values) if v > 60)
    fires_at = first_over + 5
    series = 'atmfleet_collector_lag_seconds{instance="collector-1:9311",job="atmfleet-collector"}'
    firing = 'ALERTS{alertname="AtmfleetCollectorLagging",alertstate="firing"}'
    test = {
        "rule_files": [str(RULES)],
        "evaluation_interval": "1m",
        "tests": [
            {
                "name": "the scraped lag of a stalled store worker",
                "interval": "1m",
                "input_series": [
                    {"series": series, "values": " ".join(f"{v:.3f}" for v in values)}
                ],
                "promql_expr_test": [
                    {
                        "expr": f"count({firing}) or vector(0)",
                        "eval_time": f"{fires_at - 1}m",
                        "exp_samples": [{"labels": "{}", "value": 0}],
                    },
                    {
                        "expr": f"count({firing}) or vector(0)",
                        "eval_time": f"{fires_at}m",
                        "exp_samples": [{"labels": "{}", "value": 1}],
                    },
                ],
            }
        ],
    }
    path.write_text(yaml.safe_dump(test, sort_keys=False))
    return fires_at
