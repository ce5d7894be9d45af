"""The collector against real Mosquitto and PostgreSQL, running in-process.

Each module starts its own Mosquitto (unlimited queue, like a production broker must be),
so no other traffic reaches these collectors and the shared broker is left alone.
"""

from __future__ import annotations

import getpass
import json
import logging
import os
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from unittest.mock import ANY

import paho.mqtt.client as mqtt
import psycopg
import pytest
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion
from prometheus_client import CollectorRegistry

from atmfleet.protocol import StateMessage, TxnMessage, device_topic, encode
from atmfleet.settings import CollectorSettings, Settings
from collector.mqtt import connect_properties
from collector.service import Collector
from collector.stats import CollectorStats

pytestmark = pytest.mark.integration


# -- a private broker ---------------------------------------------------------------------


@dataclass
class Broker:
    url: str
    process: subprocess.Popen[bytes]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_broker(directory: Path, extra: str = "") -> Broker:
    """A Mosquitto of our own: the backlog of an offline session is never dropped."""
    binary = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
    if not Path(binary).exists():
        pytest.fail("mosquitto is not installed (apt-get install mosquitto)")
    port = free_port()
    user = f"user {getpass.getuser()}\n" if os.geteuid() == 0 else ""
    conf = directory / "mosquitto.conf"
    conf.write_text(
        f"listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n"
        f"max_queued_messages 0\n{user}{extra}"
    )
    log = (directory / "mosquitto.log").open("wb")
    process = subprocess.Popen([binary, "-c", str(conf)], stdout=log, stderr=log)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return Broker(f"mqtt://127.0.0.1:{port}", process)
        except OSError:
            time.sleep(0.05)
    process.kill()
    pytest.fail(f"mosquitto did not start; see {directory / 'mosquitto.log'}")


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Broker]:
    b = start_broker(tmp_path_factory.mktemp("mosquitto"))
    yield b
    b.process.terminate()
    b.process.wait(10)


# -- helpers ------------------------------------------------------------------------------


def settings_for(
    mqtt_url: str, database_url: str, top: dict[str, Any] | None = None, **collector: Any
) -> Settings:
    options: dict[str, Any] = {
        "batch_size": 100,
        "flush_interval_s": 0.05,
        "session_expiry_s": 300,
        "liveness_interval_s": 0.2,
        "retry_max_backoff_s": 0.5,
        **collector,
    }
    return Settings(
        mqtt_url=mqtt_url,
        database_url=database_url,
        collector=CollectorSettings(**options),
        **(top or {}),
    )


@dataclass
class Running:
    collector: Collector
    registry: CollectorRegistry
    thread: threading.Thread
    errors: list[BaseException]

    def metric(self, name: str, **labels: str) -> float:
        value = self.registry.get_sample_value(f"atmfleet_collector_{name}", labels)
        return value or 0.0


@contextmanager
def running(
    settings: Settings,
    client_id: str,
    tap: Callable[[mqtt.MQTTMessage], None] | None = None,
) -> Iterator[Running]:
    """A collector in a thread; ``tap`` sees every message before the collector does."""
    registry = CollectorRegistry()
    collector = Collector(settings, CollectorStats(registry), client_id=client_id)
    if tap is not None:
        handler = collector._client.on_message

        def on_message(client: mqtt.Client, userdata: Any, message: mqtt.MQTTMessage) -> None:
            tap(message)
            handler(client, userdata, message)

        collector._client.on_message = on_message
    stop = threading.Event()
    errors: list[BaseException] = []

    def main() -> None:
        try:
            collector.run(stop)
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=main, name=f"collector-{client_id}")
    thread.start()
    assert collector.connected.wait(10), "collector did not subscribe"
    try:
        yield Running(collector, registry, thread, errors)
    finally:
        stop.set()
        thread.join(30)
    assert not thread.is_alive()
    assert not errors, errors


class Publisher:
    def __init__(self, mqtt_url: str, protocol: MQTTProtocolVersion = MQTTProtocolVersion.MQTTv5):
        host, port = mqtt_url.removeprefix("mqtt://").split(":")
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=protocol)
        self.client.max_inflight_messages_set(1000)
        self.client.connect(host, int(port))
        self.client.loop_start()
        self.sent: list[mqtt.MQTTMessageInfo] = []

    def send(self, topic: str, payload: bytes) -> None:
        self.sent.append(self.client.publish(topic, payload, qos=1))

    def close(self) -> None:
        for info in self.sent:
            info.wait_for_publish(30)
        self.client.disconnect()
        self.client.loop_stop()


@contextmanager
def publisher(mqtt_url: str) -> Iterator[Publisher]:
    p = Publisher(mqtt_url)
    try:
        yield p
    finally:
        p.close()


def states(device: str, seqs: range, ts: datetime | None = None) -> list[tuple[str, bytes]]:
    at = ts or datetime.now(UTC) - timedelta(seconds=1)
    return [
        (
            device_topic(device, "state"),
            encode(StateMessage(v=1, device_id=device, ts=at, seq=s, state="in_service")),
        )
        for s in seqs
    ]


def scalar(database_url: str, query: str, *params: object) -> Any:
    with psycopg.connect(database_url) as conn:
        row = conn.execute(query.encode(), params).fetchone()
    return row[0] if row else None


def wait_until(check: Callable[[], bool], timeout: float = 20, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what or check}")


def stored(database_url: str) -> int:
    return int(scalar(database_url, "SELECT count(*) FROM state_samples"))


# -- the behaviours -----------------------------------------------------------------------


class TestBadInputIsDeadLettered:
    """Each bad message lands in dead_letters with its reason; its neighbours are stored."""

    def test_every_kind_of_bad_input_and_the_collector_stays_alive(
        self, broker: Broker, db: str, run_id: str
    ) -> None:
        dev = f"t{run_id}"
        future = datetime.now(UTC) + timedelta(hours=1)
        good = states(dev, range(0, 9))
        bad = [
            (device_topic(dev, "state"), b'{"v":1,"device_id":', "bad_json"),
            (
                device_topic(dev, "state"),
                b'{"v":1,"device_id":"%s","ts":"2026-11-28T00:00:00Z","seq":"x","state":"fault"}'
                % dev.encode(),
                "invalid",
            ),
            (device_topic(dev, "state"), states("someone-else", range(1))[0][1], "device_mismatch"),
            (device_topic(dev, "state"), b"x" * 20_000, "too_large"),
            (device_topic(dev, "state"), b'{"v":7,"device_id":"%s"}' % dev.encode(), "unknown_version"),
            (device_topic(dev, "state"), states(dev, range(99, 100), ts=future)[0][1], "future_timestamp"),
            (device_topic(dev, "state"), bytes(range(256)), "not_utf8"),
            (f"atmfleet/v1/device/{dev}';DROP TABLE state_samples;--/state", b"{}", "bad_topic"),
            (
                device_topic(dev, "txn"),
                encode(StateMessage(v=1, device_id=dev, ts=datetime.now(UTC), seq=50, state="fault"))
                .replace(dev.encode(), b"x\\\"'); DELETE FROM devices; --"),
                "invalid",
            ),
        ]  # fmt: skip
        with (
            running(settings_for(broker.url, db), f"c{run_id}") as run,
            publisher(broker.url) as pub,
        ):
            for (topic, payload), (btopic, bpayload, _) in zip(good, bad, strict=True):
                pub.send(topic, payload)
                pub.send(btopic, bpayload)
            wait_until(lambda: run.metric("messages_rejected_total", reason="invalid") >= 2)
            wait_until(lambda: stored(db) == len(good), what="the good messages")
            assert run.thread.is_alive()
        with psycopg.connect(db) as conn:
            reasons = sorted(r for (r,) in conn.execute("SELECT reason FROM dead_letters"))
            seqs = [s for (s,) in conn.execute("SELECT seq FROM state_samples ORDER BY seq")]
            tables = conn.execute("SELECT count(*) FROM devices").fetchone()
        assert reasons == sorted(reason for _, _, reason in bad)
        assert seqs == list(range(9))
        assert tables == (0,)  # the hostile ids were data, never SQL
        assert run.metric("messages_rejected_total", reason="too_large") == 1


class TestEveryTopicUnderTheRoot:
    def test_messages_on_unknown_topics_are_dead_lettered_not_lost(
        self, broker: Broker, db: str, run_id: str
    ) -> None:
        dev = f"t{run_id}"
        topics = [
            f"atmfleet/v1/device/{dev}/state/extra",
            f"atmfleet/v1/device/{dev}",
            f"atmfleet/v1/branch/{dev}/state",
            f"atmfleet/v1/devices/{dev}/state",
        ]
        payload = states(dev, range(1))[0][1]
        with (
            running(settings_for(broker.url, db), f"c{run_id}") as run,
            publisher(broker.url) as pub,
        ):
            for i in range(16):
                for topic in topics:
                    pub.send(topic, payload)
                pub.send(*states(dev, range(i, i + 1))[0])
            wait_until(lambda: stored(db) == 16, what="the good messages")
            wait_until(
                lambda: run.metric("messages_rejected_total", reason="bad_topic") == 64,
                what="64 dead letters",
            )
        rows = scalar(db, "SELECT array_agg(DISTINCT topic || ' ' || reason) FROM dead_letters")
        assert sorted(rows) == sorted(f"{t} bad_topic" for t in topics)
        assert scalar(db, "SELECT count(*) FROM dead_letters") == 64

    def test_a_session_with_the_old_subscriptions_gets_each_message_once(
        self, broker: Broker, db: str, run_id: str
    ) -> None:
        host, port = broker.url.removeprefix("mqtt://").split(":")
        old = mqtt.Client(
            CallbackAPIVersion.VERSION2, client_id=f"c{run_id}", protocol=MQTTProtocolVersion.MQTTv5
        )
        props = connect_properties(settings_for(broker.url, db))
        old.connect(host, int(port), clean_start=False, properties=props)
        old.loop_start()
        for topic in ("atmfleet/v1/device/+/+", "atmfleet/v1/branch/+/counter"):
            old.subscribe(topic, qos=1)[1]
        old.disconnect()
        old.loop_stop()
        with (
            running(settings_for(broker.url, db), f"c{run_id}") as run,
            publisher(broker.url) as pub,
        ):
            # `connected` is set once the old subscriptions are gone too.
            for topic, payload in states(f"t{run_id}", range(21)):
                pub.send(topic, payload)
            # One client's messages arrive in order: a second copy of any of the first 20
            # would have come before the 21st is stored.
            wait_until(lambda: stored(db) == 21, what="21 stored")
        assert run.metric("messages_received_total") == 21


class TestLostBrokerSession:
    def test_a_lost_session_is_a_warning_a_metric_and_recorded_in_the_run(
        self, tmp_path: Path, db: str, run_id: str, caplog: pytest.LogCaptureFixture
    ) -> None:
        """The broker forgets sessions when it restarts without persistence: that is the
        moment a backlog may be thrown away."""
        own = start_broker(tmp_path)
        conf = tmp_path / "mosquitto.conf"
        settings = settings_for(own.url, db)
        caplog.set_level(logging.INFO, logger="collector.service")
        try:
            with running(settings, f"c{run_id}") as first:
                assert first.metric("mqtt_sessions_lost_total") == 0  # a new client id
                own.process.kill()
                own.process.wait(10)
                log = (tmp_path / "mosquitto.log").open("ab")
                own.process = subprocess.Popen(
                    [own.process.args[0], "-c", str(conf)], stdout=log, stderr=log
                )
                wait_until(lambda: first.metric("mqtt_connects_total") == 2, what="a reconnect")
                wait_until(
                    lambda: scalar(db, "SELECT sessions_lost FROM collector_runs") == 1,
                    what="the run to record it",
                )
                assert first.metric("mqtt_sessions_lost_total") == 1
            warnings = [r for r in caplog.records if "lost this client's session" in r.message]
            assert [r.levelno for r in warnings] == [logging.WARNING]
            # A new run of a known client id whose session the broker no longer has.
            own.process.kill()
            own.process.wait(10)
            own.process = subprocess.Popen(
                [own.process.args[0], "-c", str(conf)], stdout=log, stderr=log
            )
            with running(settings, f"c{run_id}") as second:
                assert second.metric("mqtt_sessions_lost_total") == 1
                wait_until(
                    lambda: (
                        scalar(db, "SELECT count(*) FROM collector_runs WHERE sessions_lost = 1")
                        == 2
                    ),
                    what="the second run to record it",
                )
            # And one that finds its session: nothing lost.
            with running(settings, f"c{run_id}") as third:
                assert third.metric("mqtt_sessions_lost_total") == 0
            assert scalar(db, "SELECT count(*) FROM collector_runs WHERE sessions_lost = 0") == 1
            assert (
                scalar(
                    db, "SELECT count(*) FROM collector_runs WHERE last_session_lost_at IS NOT NULL"
                )
                == 2
            )
        finally:
            own.process.kill()
            own.process.wait(10)


class TestAcknowledgement:
    def test_a_clean_stop_acknowledges_everything_so_nothing_is_redelivered(
        self, broker: Broker, db: str, run_id: str
    ) -> None:
        settings = settings_for(broker.url, db)
        with running(settings, f"c{run_id}") as first, publisher(broker.url) as pub:
            for topic, payload in states(f"t{run_id}", range(300)):
                pub.send(topic, payload)
            wait_until(lambda: stored(db) == 300)
        assert first.metric("messages_received_total") == 300
        with running(settings, f"c{run_id}") as second, publisher(broker.url) as pub:
            # A redelivery would come before a message sent on the same topic afterwards.
            [(topic, payload)] = states(f"t{run_id}", range(300, 301))
            pub.send(topic, payload)
            wait_until(lambda: stored(db) == 301, what="the message sent after the restart")
        assert second.metric("messages_received_total") == 1

    def test_messages_sent_while_the_collector_is_stopped_are_stored_on_restart(
        self, broker: Broker, db: str, run_id: str
    ) -> None:
        settings = settings_for(broker.url, db)
        with running(settings, f"c{run_id}"):
            pass  # creates the persistent session
        with publisher(broker.url) as pub:
            for topic, payload in states(f"t{run_id}", range(200)):
                pub.send(topic, payload)
        with running(settings, f"c{run_id}"):
            wait_until(lambda: stored(db) == 200, what="the backlog")

    def test_mqtt_3_1_1_is_supported(self, broker: Broker, db: str, run_id: str) -> None:
        settings = settings_for(broker.url, db, top={"mqtt_protocol": "3.1.1"})
        with running(settings, f"c{run_id}"), publisher(broker.url) as pub:
            for topic, payload in states(f"t{run_id}", range(50)):
                pub.send(topic, payload)
            wait_until(lambda: stored(db) == 50)
        with running(settings, f"c{run_id}") as again, publisher(broker.url) as pub:
            # A redelivery would come before a message sent on the same topic afterwards.
            [(topic, payload)] = states(f"t{run_id}", range(50, 51))
            pub.send(topic, payload)
            wait_until(lambda: stored(db) == 51, what="the message sent after the restart")
        assert again.metric("messages_received_total") == 1


class TestBoundedMemory:
    def test_a_blocked_database_stops_the_reading_instead_of_growing_the_buffer(
        self, broker: Broker, db: str, run_id: str
    ) -> None:
        settings = settings_for(broker.url, db, max_inflight=50, batch_size=20)
        with psycopg.connect(db) as locker:
            locker.execute("LOCK TABLE state_samples IN ACCESS EXCLUSIVE MODE")
            with running(settings, f"c{run_id}") as run, publisher(broker.url) as pub:
                for topic, payload in states(f"t{run_id}", range(500)):
                    pub.send(topic, payload)
                wait_until(lambda: run.metric("buffered_messages") >= 50, what="a full buffer")
                time.sleep(0.5)
                assert run.metric("messages_received_total") <= 50
                assert run.metric("buffered_messages") <= 50
                locker.rollback()  # the database is fast again
                wait_until(lambda: stored(db) == 500, what="all 500")


class TestDatabaseConnectionKilled:
    def test_terminating_the_backend_mid_stream_loses_nothing(
        self, broker: Broker, db: str, run_id: str
    ) -> None:
        """Three times: devices send, the store worker's connection is terminated as soon
        as it exists (after the previous kill: once the worker has reconnected), and the
        stream goes on. Each kill lands on a live backend of the worker, so none depends
        on timing."""
        client_id = f"c{run_id}"
        app = f"atmfleet-collector {client_id}"
        total, rounds = 1500, 3
        chunk = total // (rounds + 1)
        messages = states(f"t{run_id}", range(total))
        killed: set[int] = set()
        # No liveness beat during the test: every backend of this collector is the worker's.
        settings = settings_for(broker.url, db, batch_size=50, liveness_interval_s=3600)
        with (
            running(settings, client_id) as run,
            psycopg.connect(db, autocommit=True) as admin,
            publisher(broker.url) as pub,
        ):

            def backends() -> set[int]:
                rows = admin.execute(
                    "SELECT pid FROM pg_stat_activity WHERE application_name = %s", (app,)
                ).fetchall()
                return {pid for (pid,) in rows}

            for r in range(rounds):
                for topic, payload in messages[r * chunk : (r + 1) * chunk]:
                    pub.send(topic, payload)
                # Storing part of this chunk proves the worker is connected (again).
                wait_until(lambda r=r: stored(db) > r * chunk, what="the worker to reconnect")  # type: ignore[misc]
                pids = backends() - killed
                admin.execute(
                    "SELECT pg_terminate_backend(pid) FROM unnest(%s::int[]) pid", (list(pids),)
                )
                killed |= pids
                wait_until(lambda p=pids: not (backends() & p), what="the backends to end")  # type: ignore[misc]
            for topic, payload in messages[rounds * chunk :]:
                pub.send(topic, payload)
            wait_until(lambda: stored(db) == total, timeout=30, what="every message")
            assert run.metric("db_errors_total", **{"class": "temporary"}) >= rounds
        received = scalar(db, "SELECT received FROM device_sequences")
        print(f"\npg_terminate_backend x{len(killed)}: sent {total}, stored {stored(db)}")
        assert len(killed) >= rounds
        assert received == total  # each stored once, and counted once


class TestSharedSubscription:
    def test_two_collectors_in_one_group_store_everything_exactly_once(
        self, broker: Broker, db: str, run_id: str
    ) -> None:
        settings = settings_for(broker.url, db, share_group=f"g{run_id}")
        with (
            running(settings, f"a{run_id}") as a,
            running(settings, f"b{run_id}") as b,
            publisher(broker.url) as pub,
        ):
            for d in range(20):
                for topic, payload in states(f"t{run_id}-{d}", range(30)):
                    pub.send(topic, payload)
            wait_until(lambda: stored(db) == 600)
            time.sleep(0.3)
        got_a, got_b = a.metric("messages_received_total"), b.metric("messages_received_total")
        assert got_a + got_b == 600
        assert got_a > 0 and got_b > 0
        assert scalar(db, "SELECT sum(missing) FROM sequence_gaps") == 0


class TestLivenessAndGaps:
    def test_a_restart_after_silence_records_the_outage(
        self, broker: Broker, db: str, run_id: str
    ) -> None:
        silent_since = datetime.now(UTC) - timedelta(hours=1)
        with psycopg.connect(db) as conn:
            conn.execute(
                "INSERT INTO collector_runs VALUES (gen_random_uuid(), 'old', 'h', %s, %s, NULL)",
                (silent_since - timedelta(days=1), silent_since),
            )
        with running(settings_for(broker.url, db), f"c{run_id}") as run:
            time.sleep(0.5)  # a few beats
        with psycopg.connect(db) as conn:
            outage = conn.execute("SELECT started_at, ended_at FROM collector_outages").fetchall()
            beat = conn.execute(
                "SELECT last_beat_at - started_at, stopped_at IS NOT NULL FROM collector_runs"
                " WHERE run_id = %s",
                (run.collector.run_id,),
            ).fetchone()
        assert len(outage) == 1
        assert outage[0][0] == silent_since
        assert outage[0][1] > silent_since + timedelta(minutes=59)
        assert beat is not None and beat[0] > timedelta(0) and beat[1]

    def test_an_idle_collector_still_shows_it_can_commit_and_has_no_lag(
        self, broker: Broker, db: str, run_id: str
    ) -> None:
        with (
            running(settings_for(broker.url, db), f"c{run_id}") as run,
            publisher(broker.url) as pub,
        ):
            for topic, payload in states(f"t{run_id}", range(5)):
                pub.send(topic, payload)
            wait_until(lambda: stored(db) == 5)
            after_batch = run.metric("last_commit_timestamp_seconds")
            wait_until(
                lambda: run.metric("last_commit_timestamp_seconds") > after_batch + 0.1,
                timeout=5,
                what="a liveness beat to count as a commit",
            )
            assert run.metric("lag_seconds") == 0.0

    def test_sequence_gaps_are_exported(self, broker: Broker, db: str, run_id: str) -> None:
        dev = f"t{run_id}"
        with (
            running(settings_for(broker.url, db), f"c{run_id}") as run,
            publisher(broker.url) as pub,
        ):
            for topic, payload in [*states(dev, range(0, 5)), *states(dev, range(8, 10))]:
                pub.send(topic, payload)
            wait_until(lambda: run.metric("sequence_gap_messages") == 3, what="3 missing")

    def test_the_extreme_seqs_and_a_reboot_keep_the_beat_and_the_panel_working(
        self, broker: Broker, db: str, run_id: str, caplog: pytest.LogCaptureFixture
    ) -> None:
        """seq 0 and 2^63-1 overflowed bigint in the gap view; the boot-epoch scheme
        reported 2^32-2 phantom losses after a reboot."""
        dev, boot = f"t{run_id}", 2**32
        seqs = [0, 2**63 - 1, 2**63 - 4, 3 * boot, 3 * boot + 1, 4 * boot, 4 * boot + 2]
        caplog.set_level(logging.WARNING)
        with (
            running(settings_for(broker.url, db), f"c{run_id}") as run,
            publisher(broker.url) as pub,
        ):
            for seq in seqs:
                pub.send(*states(dev, range(seq, seq + 1))[0])
            wait_until(lambda: stored(db) == len(seqs), what="every message")
            # 2^63-3 and 2^63-2 of the last epoch, 4·2^32+1 of the last boot.
            wait_until(lambda: run.metric("sequence_gap_messages") == 3, what="3 missing")
        assert "liveness beat failed" not in caplog.text
        panel = json.loads(Path("dashboards/json/collector-health.json").read_text())
        queries = [
            t["rawSql"]
            for p in panel["panels"]
            for t in p.get("targets", [])
            if "sequence_gaps" in t.get("rawSql", "")
        ]
        assert queries
        with psycopg.connect(db) as conn:
            for query in queries:
                assert conn.execute(query.encode()).fetchall() == [
                    (dev, 3, len(seqs), 0, 2**63 - 1, ANY)
                ]


class TestSecrets:
    def test_passwords_never_reach_the_log(
        self, broker: Broker, db: str, run_id: str, caplog: pytest.LogCaptureFixture
    ) -> None:
        caplog.set_level(logging.DEBUG)
        url = db.replace("postgres@", "postgres:db-s3cret@")
        settings = settings_for(
            broker.url, url, top={"mqtt_username": "ingest", "mqtt_password": "mq-s3cret"}
        )
        from collector.service import describe

        logging.getLogger("test").info(describe(settings))
        with running(settings, f"c{run_id}"), publisher(broker.url) as pub:
            pub.send(device_topic(f"t{run_id}", "state"), b"{not json")
            wait_until(lambda: scalar(db, "SELECT count(*) FROM dead_letters") == 1)
        assert "postgres:***@" in caplog.text
        assert "s3cret" not in caplog.text


def test_a_transaction_is_stored_with_its_amount(broker: Broker, db: str, run_id: str) -> None:
    dev = f"t{run_id}"
    msg = TxnMessage(
        v=1, device_id=dev, ts=datetime.now(UTC), seq=1, txn_id=f"{run_id}-1",
        type="deposit", amount="1500.00", result="ok", duration_ms=30_000, on_us=False,
    )  # fmt: skip
    with running(settings_for(broker.url, db), f"c{run_id}"), publisher(broker.url) as pub:
        pub.send(device_topic(dev, "txn"), encode(msg))
        pub.send(device_topic(dev, "txn"), encode(msg))  # a device retrying: the same txn
        wait_until(lambda: scalar(db, "SELECT count(*) FROM transactions") == 1)
        time.sleep(0.3)
    assert scalar(db, "SELECT amount::text || ' ' || on_us FROM transactions") == "1500.00 false"
