"""The embedded services: PostgreSQL from its wheel, the iotcore MQTT broker.

The broker tests spell out what the collector and the simulator rely on, on both
protocols the embedded broker can speak.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import psutil
import psycopg
import pytest
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from app.embedded import (
    PASSWORD_FILE,
    EmbeddedServiceError,
    embedded_broker,
    embedded_postgres,
)

pytestmark = pytest.mark.integration


@pytest.fixture
def workdir() -> Iterator[Path]:
    """A temporary folder outside pytest's own: pytest resets its root to 0700 when another
    session starts, which would lock the PostgreSQL user (as root) out of its data."""
    path = Path(tempfile.mkdtemp(prefix="atmfleet-test-"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def wait_until(predicate: Any, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return bool(predicate())


class TestEmbeddedPostgres:
    """PostgreSQL 18 from the wheel, on a data directory that outlives the run."""

    def test_serves_a_database_on_localhost_that_needs_the_generated_password(
        self, workdir: Path
    ) -> None:
        with embedded_postgres(workdir / "pg", database="demo") as url:
            assert "@127.0.0.1:" in url and url.endswith("/demo")
            with psycopg.connect(url) as conn:
                version = conn.execute("SHOW server_version_num").fetchone()
                listen = conn.execute("SHOW listen_addresses").fetchone()
            assert version is not None and int(version[0]) >= 180000
            assert listen == ("127.0.0.1",)
            without_password = url.replace(url.split("@")[0].split(":")[-1] + "@", "@")
            with pytest.raises(psycopg.OperationalError):
                psycopg.connect(without_password, connect_timeout=5).close()
        assert (workdir / "pg" / PASSWORD_FILE).is_file()

    def test_a_second_run_reuses_the_data_directory(self, workdir: Path) -> None:
        with embedded_postgres(workdir / "pg") as url, psycopg.connect(url) as conn:
            conn.execute("CREATE TABLE kept (x int)")
            conn.execute("INSERT INTO kept VALUES (42)")
            conn.commit()
        with embedded_postgres(workdir / "pg") as url, psycopg.connect(url) as conn:
            assert conn.execute("SELECT x FROM kept").fetchall() == [(42,)]

    def test_the_server_is_stopped_when_the_block_ends(self, workdir: Path) -> None:
        with embedded_postgres(workdir / "pg") as url:
            pass
        with pytest.raises(psycopg.OperationalError):
            psycopg.connect(url, connect_timeout=3).close()

    def test_the_server_stops_even_if_a_folder_above_was_closed_meanwhile(
        self, workdir: Path
    ) -> None:
        """As pytest does to its temporary root when another session starts."""
        with embedded_postgres(workdir / "pg") as url:
            workdir.chmod(0o700)
        with pytest.raises(psycopg.OperationalError):
            psycopg.connect(url, connect_timeout=3).close()
        assert not (workdir / "pg" / "postmaster.pid").exists()

    def test_a_server_left_by_a_killed_run_is_replaced(self, workdir: Path) -> None:
        data = workdir / "pg"
        script = textwrap.dedent(
            f"""
            import sys, time
            from pathlib import Path
            from app.embedded import embedded_postgres
            with embedded_postgres(Path({str(data)!r})) as url:
                print(url, flush=True)
                time.sleep(600)
            """
        )
        proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
        assert proc.stdout is not None
        first_url = proc.stdout.readline().strip()
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        psycopg.connect(first_url, connect_timeout=5).close()  # still running, orphaned

        with embedded_postgres(data) as url, psycopg.connect(url) as conn:
            assert conn.execute("SELECT 1").fetchone() == (1,)
        with pytest.raises(psycopg.OperationalError):
            psycopg.connect(first_url, connect_timeout=3).close()

    def test_a_non_empty_folder_that_is_no_cluster_is_refused_untouched(
        self, workdir: Path
    ) -> None:
        (workdir / "pg").mkdir()
        notes = workdir / "pg" / "notes.txt"
        notes.write_text("mine")
        before = notes.stat()
        with (
            pytest.raises(EmbeddedServiceError, match="holds no PostgreSQL cluster"),
            embedded_postgres(workdir / "pg"),
        ):
            pass
        after = notes.stat()
        assert notes.read_text() == "mine"
        assert (after.st_uid, after.st_mode) == (before.st_uid, before.st_mode)

    def test_a_port_already_taken_is_reported_with_the_server_log(self, workdir: Path) -> None:
        with socket.socket() as taken:
            taken.bind(("127.0.0.1", 0))
            taken.listen()
            port = taken.getsockname()[1]
            with (
                pytest.raises(EmbeddedServiceError, match=f"did not start on 127.0.0.1:{port}"),
                embedded_postgres(workdir / "pg", port=port),
            ):
                pass

    def test_a_data_directory_in_use_is_refused_to_a_second_user(self, workdir: Path) -> None:
        with embedded_postgres(workdir / "pg") as url:
            with (
                pytest.raises(EmbeddedServiceError, match="another process is using"),
                embedded_postgres(workdir / "pg"),
            ):
                pass
            psycopg.connect(url, connect_timeout=5).close()  # the first one is untouched


# -- the broker ----------------------------------------------------------------------------------


class Client:
    """A paho client that records what it receives."""

    def __init__(
        self,
        url: str,
        protocol: str,
        client_id: str,
        *,
        persistent: bool,
        manual_ack: bool = False,
        will: tuple[str, bytes] | None = None,
    ) -> None:
        v5 = protocol == "5"
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=client_id,
            protocol=MQTTProtocolVersion.MQTTv5 if v5 else MQTTProtocolVersion.MQTTv311,
            clean_session=None if v5 else not persistent,
            manual_ack=manual_ack,
        )
        self.received: list[mqtt.MQTTMessage] = []
        self.session_present: bool | None = None
        self.subscribed = threading.Event()
        connected = threading.Event()

        def on_connect(_c: Any, _u: Any, flags: Any, _r: Any, _p: Any) -> None:
            self.session_present = flags.session_present
            connected.set()

        self.client.on_connect = on_connect
        self.client.on_message = lambda _c, _u, m: self.received.append(m)
        self.client.on_subscribe = lambda *_a: self.subscribed.set()
        if will:
            self.client.will_set(will[0], will[1], qos=1, retain=False)
        host, port = url.removeprefix("mqtt://").split(":")
        kwargs: dict[str, Any] = {}
        if v5:
            props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
            props.SessionExpiryInterval = 600 if persistent else 0
            kwargs = {"clean_start": not persistent, "properties": props}
        self.client.connect(host, int(port), **kwargs)
        self.client.loop_start()
        assert connected.wait(5), f"{client_id} did not connect to {url}"

    def subscribe(self, topic: str) -> None:
        self.subscribed.clear()
        self.client.subscribe(topic, qos=1)
        assert self.subscribed.wait(5)

    def publish(self, topic: str, payload: bytes, retain: bool = False) -> None:
        self.client.publish(topic, payload, qos=1, retain=retain).wait_for_publish(5)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()

    def kill(self) -> None:
        """Drop the connection without DISCONNECT, as a crash or a lost link would."""
        self.client.loop_stop()
        sock = self.client.socket()
        if sock is not None:
            sock.close()


@pytest.fixture(params=["5", "3.1.1"], scope="module")
def broker(request: pytest.FixtureRequest) -> Iterator[tuple[str, str]]:
    with embedded_broker(protocol=request.param) as url:
        yield url, request.param


class TestEmbeddedBroker:
    """What the collector and the simulator need from the broker."""

    def test_qos1_messages_are_delivered_in_order(
        self, broker: tuple[str, str], run_id: str
    ) -> None:
        url, protocol = broker
        sub = Client(url, protocol, f"sub-{run_id}", persistent=False)
        sub.subscribe(f"t/{run_id}/#")
        pub = Client(url, protocol, f"pub-{run_id}", persistent=False)
        for i in range(200):
            pub.publish(f"t/{run_id}/x", str(i).encode())
        assert wait_until(lambda: len(sub.received) == 200)
        assert [int(m.payload) for m in sub.received] == list(range(200))
        assert {m.qos for m in sub.received} == {1}
        sub.close()
        pub.close()

    def test_a_persistent_session_keeps_its_backlog_while_away(
        self, broker: tuple[str, str], run_id: str
    ) -> None:
        url, protocol = broker
        sub = Client(url, protocol, f"collector-{run_id}", persistent=True)
        sub.subscribe(f"b/{run_id}/#")
        sub.close()
        pub = Client(url, protocol, f"pub-{run_id}", persistent=False)
        for i in range(1000):
            pub.publish(f"b/{run_id}/x", str(i).encode())
        again = Client(url, protocol, f"collector-{run_id}", persistent=True)
        assert again.session_present is True
        assert wait_until(lambda: len(again.received) == 1000)
        assert [int(m.payload) for m in again.received] == list(range(1000))
        again.close()
        pub.close()

    def test_messages_not_acknowledged_are_redelivered_after_a_reconnect(
        self, broker: tuple[str, str], run_id: str
    ) -> None:
        url, protocol = broker
        cid = f"acker-{run_id}"
        sub = Client(url, protocol, cid, persistent=True, manual_ack=True)
        sub.subscribe(f"a/{run_id}/#")
        pub = Client(url, protocol, f"pub-{run_id}", persistent=False)
        for i in range(50):
            pub.publish(f"a/{run_id}/x", str(i).encode())
        assert wait_until(lambda: len(sub.received) == 50)
        for message in sub.received[:20]:
            sub.client.ack(message.mid, message.qos)
        time.sleep(0.3)
        sub.kill()
        again = Client(url, protocol, cid, persistent=True, manual_ack=True)
        assert wait_until(lambda: len(again.received) == 30)
        time.sleep(0.3)
        assert [int(m.payload) for m in again.received] == list(range(20, 50))
        again.close()
        pub.close()

    def test_a_subscriber_gets_at_most_100_unacknowledged_messages(
        self, broker: tuple[str, str], run_id: str
    ) -> None:
        """rumqttd's fixed in-flight window: why the demo's collector flushes quickly."""
        url, protocol = broker
        sub = Client(url, protocol, f"slow-{run_id}", persistent=False, manual_ack=True)
        sub.subscribe(f"w/{run_id}/#")
        pub = Client(url, protocol, f"pub-{run_id}", persistent=False)
        for i in range(300):
            pub.publish(f"w/{run_id}/x", str(i).encode())
        assert wait_until(lambda: len(sub.received) == 100)
        time.sleep(0.5)
        assert len(sub.received) == 100
        for message in sub.received[:100]:
            sub.client.ack(message.mid, message.qos)
        assert wait_until(lambda: len(sub.received) == 200)
        sub.close()
        pub.close()

    def test_retained_messages_reach_later_subscribers(
        self, broker: tuple[str, str], run_id: str
    ) -> None:
        url, protocol = broker
        pub = Client(url, protocol, f"pub-{run_id}", persistent=False)
        pub.publish(f"r/{run_id}/presence", b"online", retain=True)
        sub = Client(url, protocol, f"late-{run_id}", persistent=False)
        sub.subscribe(f"r/{run_id}/#")
        assert wait_until(lambda: len(sub.received) == 1)
        assert (sub.received[0].payload, sub.received[0].retain) == (b"online", True)
        pub.publish(f"r/{run_id}/presence", b"", retain=True)  # clear it
        sub.close()
        pub.close()

    def test_a_dropped_connection_publishes_its_last_will(
        self, broker: tuple[str, str], run_id: str
    ) -> None:
        url, protocol = broker
        sub = Client(url, protocol, f"watch-{run_id}", persistent=False)
        sub.subscribe(f"l/{run_id}/#")
        device = Client(
            url, protocol, f"dev-{run_id}", persistent=False, will=(f"l/{run_id}/will", b"gone")
        )
        device.kill()
        assert wait_until(lambda: len(sub.received) == 1)
        assert sub.received[0].payload == b"gone"
        sub.close()

    def test_the_broker_is_gone_after_the_block(self) -> None:
        with embedded_broker(protocol="5") as url:
            pass
        host, port = url.removeprefix("mqtt://").split(":")
        with pytest.raises(OSError):
            socket.create_connection((host, int(port)), timeout=1).close()


def test_running_as_root_uses_an_unprivileged_user(workdir: Path) -> None:
    """PostgreSQL refuses root: the server process belongs to another user then."""
    if os.geteuid() != 0:
        pytest.skip("only meaningful when the tests run as root")
    with embedded_postgres(workdir / "pg") as url, psycopg.connect(url) as conn:
        pid_row = conn.execute("SELECT pg_backend_pid()").fetchone()
        assert pid_row is not None
        owner = psutil.Process(pid_row[0]).username()
    assert owner != "root"
