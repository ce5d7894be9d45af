"""`atmfleet collect` as a process, killed and restarted while devices keep sending."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import psutil
import psycopg
import pytest

from tests.test_collector_service import (
    Broker,
    publisher,
    scalar,
    start_broker,
    states,
    stored,
    wait_until,
)

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Broker]:
    b = start_broker(tmp_path_factory.mktemp("mosquitto"))
    yield b
    b.process.terminate()
    b.process.wait(10)


class CollectorProcess:
    """One `atmfleet collect` at a time, with the settings a deployment would give it."""

    def __init__(self, broker: Broker, db: str, client_id: str, logs: Path) -> None:
        self.env = {
            **os.environ,
            "ATMFLEET_MQTT_URL": broker.url,
            "ATMFLEET_DATABASE_URL": db,
            "ATMFLEET_SECRETS_DIR": str(logs / "no-secrets"),
            "ATMFLEET_COLLECTOR__CLIENT_ID": client_id,
            "ATMFLEET_COLLECTOR__BATCH_SIZE": "100",
            "ATMFLEET_COLLECTOR__FLUSH_INTERVAL_S": "0.05",
            "ATMFLEET_COLLECTOR__LIVENESS_INTERVAL_S": "0.2",
            "ATMFLEET_COLLECTOR__SESSION_EXPIRY_S": "300",
        }
        self.logs = logs
        self.runs = 0
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.runs += 1
        log = (self.logs / f"collector-{self.runs}.log").open("wb")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "app.cli", "collect"],
            env=self.env,
            stdout=log,
            stderr=log,
        )

    def worker(self) -> psutil.Process:
        """The store worker (the collector's child process), once it runs."""
        assert self.process is not None
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            # The other child, if any, is multiprocessing's resource tracker.
            workers = [
                p
                for p in psutil.Process(self.process.pid).children()
                if "spawn_main" in " ".join(p.cmdline())
            ]
            if workers:
                assert len(workers) == 1, workers
                return workers[0]
            time.sleep(0.05)
        raise AssertionError("the collector has no store worker")

    def signal(self, signum: int) -> int:
        assert self.process is not None
        self.process.send_signal(signum)
        return self.process.wait(30)

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)


@pytest.fixture
def collector(broker: Broker, db: str, run_id: str, tmp_path: Path) -> Iterator[CollectorProcess]:
    proc = CollectorProcess(broker, db, f"c{run_id}", tmp_path)
    yield proc
    proc.stop()


def wait_subscribed(broker: Broker, db: str, device: str) -> None:
    """Publish a probe until it is stored: the collector's session and subscription exist."""
    topic, payload = states(device, range(1))[0]
    deadline = time.monotonic() + 20
    with publisher(broker.url) as pub:
        while time.monotonic() < deadline:
            pub.send(topic, payload)
            time.sleep(0.2)
            if stored(db):
                return
    raise AssertionError("the collector never subscribed")


def stream(broker: Broker, prefix: str, stop: threading.Event, sent: list[int]) -> None:
    """Publish state messages of 10 devices, round robin, until told to stop."""
    seq = 0
    with publisher(broker.url) as pub:
        while not stop.is_set():
            seq += 1
            for d in range(10):
                topic, payload = states(f"{prefix}-{d}", range(seq, seq + 1))[0]
                pub.send(topic, payload)
            time.sleep(0.005)
    sent.append(seq * 10)


def kill_three_times_mid_stream(
    broker: Broker, db: str, run_id: str, kill: Callable[[], None], what: str
) -> int:
    """Devices stream while ``kill`` runs three times, each after progress at a random
    moment; then every message must be stored exactly once. Returns how many were sent."""
    stop = threading.Event()
    sent: list[int] = []
    sender = threading.Thread(target=stream, args=(broker, f"t{run_id}", stop, sent))
    sender.start()
    for _ in range(3):
        before = stored(db)
        wait_until(lambda b=before: stored(db) > b + 50, what="progress")  # type: ignore[misc]
        time.sleep(random.uniform(0, 0.1))
        kill()
    time.sleep(0.3)  # the devices keep sending to the last run for a moment
    stop.set()
    sender.join(60)
    total = sent[0] + 1  # and the probe
    wait_until(lambda: stored(db) == total, timeout=60, what="every message")
    time.sleep(0.5)  # anything stored twice would show up now
    rows = stored(db)
    print(f"\n{what} x3: sent {total}, stored {rows}, lost {total - rows}")
    assert rows == total
    assert scalar(db, "SELECT sum(received) FROM device_sequences") == total
    assert scalar(db, "SELECT sum(missing) FROM sequence_gaps") == 0
    return total


class TestKilledCollector:
    def test_sigkill_mid_stream_three_times_loses_nothing_and_stores_nothing_twice(
        self, broker: Broker, db: str, run_id: str, collector: CollectorProcess
    ) -> None:
        collector.start()
        wait_subscribed(broker, db, f"t{run_id}-probe")

        def kill() -> None:
            assert collector.signal(signal.SIGKILL) == -signal.SIGKILL
            time.sleep(1.0)  # longer than the outage threshold (3 beats of 0.2 s)
            collector.start()

        kill_three_times_mid_stream(broker, db, run_id, kill, "SIGKILL")
        assert scalar(db, "SELECT count(*) FROM collector_runs") == 3 + 1  # one run per start
        assert scalar(db, "SELECT count(*) FROM collector_outages") >= 1

    def test_sigterm_flushes_acknowledges_and_exits_cleanly(
        self, broker: Broker, db: str, run_id: str, collector: CollectorProcess
    ) -> None:
        collector.start()
        wait_subscribed(broker, db, f"t{run_id}-probe")
        with publisher(broker.url) as pub:
            for topic, payload in states(f"t{run_id}", range(1, 501)):
                pub.send(topic, payload)
        assert collector.signal(signal.SIGTERM) == 0
        stopped = scalar(db, "SELECT count(*) FROM collector_runs WHERE stopped_at IS NOT NULL")
        assert stopped == 1
        # Whatever it received was stored; the rest waits at the broker for the next run.
        collector.start()
        wait_until(lambda: stored(db) == 501, what="all 500 and the probe")
        log = (collector.logs / "collector-1.log").read_text()
        assert "received SIGTERM" in log
        assert "Traceback" not in log


class TestCleanStopAfterDatabaseFaults:
    """Everything received was stored: SIGTERM exits 0 and writes stopped_at, however the
    liveness connection was lost."""

    def stopped_at(self, db: str) -> int:
        return int(scalar(db, "SELECT count(*) FROM collector_runs WHERE stopped_at IS NOT NULL"))

    def test_sigterm_after_a_failed_beat(
        self, broker: Broker, db: str, run_id: str, collector: CollectorProcess
    ) -> None:
        collector.start()
        wait_subscribed(broker, db, f"t{run_id}-probe")
        # From now on every beat fails (stopping the run still works).
        with psycopg.connect(db, autocommit=True) as conn:
            conn.execute(
                "CREATE FUNCTION refuse_beat() RETURNS trigger LANGUAGE plpgsql AS"
                " $$BEGIN RAISE EXCEPTION 'beat refused by the test'; END$$"
            )
            conn.execute(
                "CREATE TRIGGER refuse_beat BEFORE UPDATE ON collector_runs FOR EACH ROW"
                " WHEN (NEW.stopped_at IS NULL) EXECUTE FUNCTION refuse_beat()"
            )
        log = collector.logs / "collector-1.log"
        wait_until(lambda: "liveness beat failed" in log.read_text(), what="a failed beat")
        assert collector.signal(signal.SIGTERM) == 0
        assert self.stopped_at(db) == 1
        assert "Traceback" not in log.read_text()

    def test_sigterm_after_the_backends_were_terminated(
        self, broker: Broker, db: str, run_id: str, collector: CollectorProcess
    ) -> None:
        collector.env["ATMFLEET_COLLECTOR__LIVENESS_INTERVAL_S"] = "3600"  # no beat reconnects
        collector.start()
        wait_subscribed(broker, db, f"t{run_id}-probe")
        app = f"atmfleet-collector c{run_id}"
        count = "SELECT count(*) FROM pg_stat_activity WHERE application_name = %s"
        with psycopg.connect(db, autocommit=True) as conn:
            conn.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                " WHERE application_name = %s",
                (app,),
            )
        wait_until(lambda: scalar(db, count, app) == 0, what="the backends to be gone")
        assert collector.signal(signal.SIGTERM) == 0
        assert self.stopped_at(db) == 1
        log = (collector.logs / "collector-1.log").read_text()
        assert "Traceback" not in log


class TestStoreWorker:
    def test_a_killed_worker_is_replaced_and_nothing_is_lost_or_stored_twice(
        self, broker: Broker, db: str, run_id: str, collector: CollectorProcess
    ) -> None:
        collector.start()
        wait_subscribed(broker, db, f"t{run_id}-probe")
        pids = []

        def kill() -> None:
            worker = collector.worker()
            pids.append(worker.pid)
            worker.kill()
            worker.wait(10)

        kill_three_times_mid_stream(broker, db, run_id, kill, "store worker SIGKILL")
        assert collector.worker().pid not in pids  # a new one
        assert collector.process is not None and collector.process.poll() is None
        assert scalar(db, "SELECT count(*) FROM collector_runs") == 1  # the collector lived on
        assert collector.signal(signal.SIGTERM) == 0
        log = (collector.logs / "collector-1.log").read_text()
        assert log.count("the store worker exited") == 3  # each death seen once

    def test_the_worker_does_not_outlive_a_killed_collector(
        self, broker: Broker, db: str, run_id: str, collector: CollectorProcess
    ) -> None:
        collector.start()
        wait_subscribed(broker, db, f"t{run_id}-probe")
        worker = collector.worker()
        assert collector.process is not None
        children = psutil.Process(collector.process.pid).children()  # with the tracker
        assert collector.signal(signal.SIGKILL) == -signal.SIGKILL
        gone, alive = psutil.wait_procs(children, timeout=10)
        assert not alive, alive
        assert worker in gone

    def test_sigterm_to_the_whole_group_still_flushes_everything(
        self, broker: Broker, db: str, run_id: str, collector: CollectorProcess
    ) -> None:
        """A service manager or a terminal's Ctrl-C signals every process of the group:
        the worker keeps going until the collector has flushed and tells it to stop."""
        collector.start()
        wait_subscribed(broker, db, f"t{run_id}-probe")
        worker = collector.worker()
        with publisher(broker.url) as pub:
            for topic, payload in states(f"t{run_id}", range(1, 501)):
                pub.send(topic, payload)
        worker.send_signal(signal.SIGTERM)
        worker.send_signal(signal.SIGINT)
        assert collector.signal(signal.SIGTERM) == 0
        assert not worker.is_running()
        collector.start()
        wait_until(lambda: stored(db) == 501, what="all 500 and the probe")
        log = (collector.logs / "collector-1.log").read_text()
        assert "Traceback" not in log and "store worker exited" not in log


def test_a_missing_schema_stops_the_collector_with_a_clear_error(
    broker: Broker, database_url: str, run_id: str, tmp_path: Path
) -> None:
    proc = CollectorProcess(broker, database_url, f"c{run_id}", tmp_path)
    proc.start()
    assert proc.process is not None
    assert proc.process.wait(30) == 2
    log = (tmp_path / "collector-1.log").read_text()
    assert "atmfleet: error:" in log and "atmfleet db upgrade" in log
