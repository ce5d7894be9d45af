"""Who may speak for a device: a real Mosquitto started with the shipped configuration
(deploy/mosquitto/mosquitto.conf) and the credentials and ACL ``atmfleet broker`` generates.

The broker is our own (own ports, own data directory, own process); only the paths, ports
and log destination of the shipped file are replaced, each replacement checked.
"""

from __future__ import annotations

import os
import signal
import socket
import ssl
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from click.testing import CliRunner
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion
from paho.mqtt.reasoncodes import ReasonCode

from app.cli import cli
from atmfleet.protocol import CounterMessage, StateMessage, counter_topic, device_topic, encode
from broker import passwords, pki
from broker.policy import command_topic
from tests.test_collector_service import free_port, running, scalar, settings_for, wait_until

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parent.parent
SHIPPED = ROOT / "deploy" / "mosquitto" / "mosquitto.conf"
COLLECTOR = "atmfleet-collector-1"

_DEVICE = (
    "  - {{id: {id}, branch: BR-1, type: atm, placement: on_site, vendor: V, model: M, "
    "commissioned: 2024-01-01{extra}}}\n"
)


def write_inventory(path: Path, devices: dict[str, str | None]) -> None:
    """``{device id: gateway or None}``."""
    text = (
        "subbranches:\n  - {id: SB, name: 分行, tier: 1}\n"
        "branches:\n  - {id: BR-1, name: 支行, subbranch: SB}\ndevices:\n"
    )
    for dev, gw in devices.items():
        text += _DEVICE.format(id=dev, extra=f", gateway: {gw}" if gw else "")
    path.write_text(text, encoding="utf-8")


def broker_cli(*args: str) -> str:
    result = CliRunner().invoke(cli, ["broker", *args], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.output


def generate(inventory: Path, creds: Path, *args: str) -> None:
    broker_cli("credentials", str(inventory), "--out", str(creds), *args)
    broker_cli("acl", str(inventory), "--out", str(creds / "acl"))


def configure(shipped: str, creds: Path, data: Path, log: Path, ports: tuple[int, int]) -> str:
    """The shipped file with our paths and ports; every replaced line must exist."""
    replacements = [
        ("/etc/mosquitto/atmfleet", str(creds)),
        ("persistence_location /var/lib/mosquitto/", f"persistence_location {data}/"),
        ("listener 8883\n", f"listener {ports[0]} 127.0.0.1\n"),
        ("listener 8884\n", f"listener {ports[1]} 127.0.0.1\n"),
        ("log_dest syslog\n", f"log_dest file {log}\nlog_type information\n"),
    ]
    text = shipped
    for old, new in replacements:
        assert old in text, f"the shipped configuration no longer has {old!r}"
        text = text.replace(old, new)
    if os.geteuid() == 0:  # the files are root's; as root Mosquitto would become 'mosquitto'
        text += "user root\n"
    return text


@dataclass
class Secured:
    creds: Path
    inventory: Path
    cert_port: int
    password_port: int
    process: subprocess.Popen[bytes]
    log: Path

    @property
    def collector_url(self) -> str:
        return f"mqtts://127.0.0.1:{self.password_port}"

    def password(self, identity: str) -> str:
        return (self.creds / "secrets" / f"{identity}.password").read_text()

    def reload(self) -> None:
        """SIGHUP, then wait for the broker to say it re-read its configuration."""
        before = self.log.read_text().count("Reloading config")
        self.process.send_signal(signal.SIGHUP)
        wait_until(
            lambda: self.log.read_text().count("Reloading config") > before,
            what="the broker to reload",
        )


def _wait_for_port(port: int, process: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"mosquitto exited: {log.read_text()[-2000:]}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    pytest.fail(f"mosquitto did not listen on {port}: {log.read_text()[-2000:]}")


@contextmanager
def shipped_broker(
    base: Path, *credential_args: str, devices: dict[str, str | None] | None = None
) -> Iterator[Secured]:
    """Mosquitto with the shipped configuration and freshly generated credentials for
    ``devices`` (``{device id: gateway or None}``)."""
    creds, data = base / "creds", base / "data"
    data.mkdir()
    inventory = base / "inventory.yaml"
    default = {"ATM-A": None, "ATM-B": None, "ATM-G1": "GW-1", "ATM-R": None}
    write_inventory(inventory, default if devices is None else devices)
    generate(inventory, creds, *credential_args)
    ports = (free_port(), free_port())
    log = base / "mosquitto.log"
    conf = base / "mosquitto.conf"
    conf.write_text(configure(SHIPPED.read_text(), creds, data, log, ports))
    out = (base / "mosquitto.out").open("wb")
    process = subprocess.Popen(["mosquitto", "-c", str(conf)], stdout=out, stderr=out)
    try:
        for port in ports:
            _wait_for_port(port, process, log)
        yield Secured(creds, inventory, ports[0], ports[1], process, log)
    finally:
        process.terminate()
        process.wait(10)


@pytest.fixture(scope="module")
def secured(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Secured]:
    """Devices and gateways with client certificates (the recommended set-up)."""
    with shipped_broker(tmp_path_factory.mktemp("secured")) as broker:
        yield broker


def tls_refused(port: int, ca: Path, cert_files: tuple[Path, Path] | None) -> str:
    """Why the broker ended the TLS session ("" if it did not): the handshake, then a read
    (with TLS 1.3 a refused client certificate shows on the first read)."""
    context = ssl.create_default_context(cafile=str(ca))
    if cert_files:
        context.load_cert_chain(str(cert_files[0]), str(cert_files[1]))
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
        try:
            with context.wrap_socket(raw, server_hostname="127.0.0.1") as tls:
                tls.sendall(CONNECT_PACKET)
                answer = tls.recv(4)
        except (ssl.SSLError, ConnectionError) as exc:
            return f"{type(exc).__name__}: {exc}"
    return "" if answer[:1] == b"\x20" else f"no CONNACK ({answer!r})"


#: An MQTT 3.1.1 CONNECT, client id "probe", clean session, keepalive 10 s.
CONNECT_PACKET = bytes([0x10, 17, 0, 4, *b"MQTT", 4, 2, 0, 10, 0, 5, *b"probe"])


class Peer:
    """One MQTT v5 client over TLS, recording what the broker answers."""

    def __init__(
        self,
        secured: Secured,
        *,
        identity: str | None = None,
        cert: bool = False,
        client_id: str = "",
        ca: Path | None = None,
        cert_files: tuple[Path, Path] | None = None,
        clean_start: bool = True,
    ) -> None:
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2, client_id=client_id, protocol=MQTTProtocolVersion.MQTTv5
        )
        self.client.reconnect_delay_set(0.1, 0.5)
        self.cond = threading.Condition()
        self.connacks: list[ReasonCode] = []
        self.pubacks: dict[int, ReasonCode] = {}
        self.subacks: list[list[ReasonCode]] = []
        self.messages: list[str] = []
        self.client.on_connect = self._on_connect
        self.client.on_publish = self._on_publish
        self.client.on_subscribe = self._on_subscribe
        self.client.on_message = self._on_message
        if cert and identity:
            cert_files = (
                secured.creds / "clients" / f"{identity}.pem",
                secured.creds / "clients" / f"{identity}.key",
            )
        elif identity:
            self.client.username_pw_set(identity, secured.password(identity))
        self.client.tls_set(
            ca_certs=str(ca or secured.creds / "ca.pem"),
            certfile=str(cert_files[0]) if cert_files else None,
            keyfile=str(cert_files[1]) if cert_files else None,
        )
        self.port = secured.cert_port if cert_files else secured.password_port
        self.clean_start = clean_start

    def _on_connect(self, _c: Any, _u: Any, _f: Any, reason: ReasonCode, _p: Any) -> None:
        with self.cond:
            self.connacks.append(reason)
            self.cond.notify_all()

    def _on_publish(self, _c: Any, _u: Any, mid: int, reason: ReasonCode, _p: Any) -> None:
        with self.cond:
            self.pubacks[mid] = reason
            self.cond.notify_all()

    def _on_subscribe(self, _c: Any, _u: Any, _m: int, reasons: list[ReasonCode], _p: Any) -> None:
        with self.cond:
            self.subacks.append(list(reasons))
            self.cond.notify_all()

    def _on_message(self, _c: Any, _u: Any, message: mqtt.MQTTMessage) -> None:
        with self.cond:
            self.messages.append(message.topic)
            self.cond.notify_all()

    def wait(self, check: Callable[[], bool], what: str) -> None:
        with self.cond:
            assert self.cond.wait_for(check, 10), f"timed out waiting for {what}"

    def connect(self) -> ReasonCode:
        self.client.connect("127.0.0.1", self.port, clean_start=self.clean_start)
        self.client.loop_start()
        self.wait(lambda: bool(self.connacks), "CONNACK")
        return self.connacks[0]

    def publish(self, topic: str, payload: bytes) -> str:
        info = self.client.publish(topic, payload, qos=1)
        self.wait(lambda: info.mid in self.pubacks, f"PUBACK on {topic}")
        return str(self.pubacks[info.mid])

    def subscribe(self, topic: str) -> str:
        n = len(self.subacks)
        self.client.subscribe(topic, qos=1)
        self.wait(lambda: len(self.subacks) > n, f"SUBACK for {topic}")
        return str(self.subacks[n][0])

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def peer(secured: Secured, **kw: Any) -> Peer:
    p = Peer(secured, **kw)
    reason = p.connect()
    assert not reason.is_failure, reason
    return p


def state(device: str, seq: int) -> bytes:
    at = datetime.now(UTC) - timedelta(seconds=1)
    return encode(StateMessage(v=1, device_id=device, ts=at, seq=seq, state="in_service"))


def counter(financial: int) -> bytes:
    msg = CounterMessage(
        v=1, branch_id="BR-1", date=date(2026, 11, 30), financial=financial, ts=datetime.now(UTC)
    )
    return encode(msg)


def rows(db: str, device: str) -> int:
    return int(scalar(db, "SELECT count(*) FROM state_samples WHERE device_id = %s", device))


@pytest.fixture
def collector(secured: Secured, db: str) -> Iterator[None]:
    settings = settings_for(
        secured.collector_url,
        db,
        top={
            "mqtt_username": COLLECTOR,
            "mqtt_password": secured.password(COLLECTOR),
            "mqtt_ca_file": secured.creds / "ca.pem",
        },
    )
    with running(settings, COLLECTOR):
        yield


def stored_after(db: str, secured: Secured, device: str, seq: int) -> None:
    """A message the device may send, sent after an attempt, stored: the collector has seen
    everything the broker let through before it."""
    dev = peer(secured, identity=device, cert=True)
    try:
        assert dev.publish(device_topic(device, "state"), state(device, seq)) == "Success"
    finally:
        dev.close()
    wait_until(
        lambda: bool(
            scalar(
                db,
                "SELECT count(*) FROM state_samples WHERE device_id = %s AND seq = %s",
                device,
                seq,
            )
        ),
        what=f"{device} seq {seq} stored",
    )


class TestShippedBroker:
    def test_anonymous_clients_are_refused_on_both_listeners(self, secured: Secured) -> None:
        anonymous = Peer(secured)
        assert str(anonymous.connect()) == "Not authorized"
        anonymous.close()
        # The certificate listener: no certificate, no TLS session at all.
        assert tls_refused(secured.cert_port, secured.creds / "ca.pem", None)

    def test_a_password_written_by_atmfleet_is_accepted_and_a_wrong_one_refused(
        self, secured: Secured
    ) -> None:
        line = (secured.creds / "passwords").read_text().splitlines()[0]
        name, encoded = line.split(":", 1)
        assert encoded.startswith("$7$101$") and passwords.verify(secured.password(name), encoded)
        ok = peer(secured, identity="atmfleet-feed")
        ok.close()
        wrong = Peer(secured)
        wrong.client.username_pw_set("atmfleet-feed", "guess")
        assert str(wrong.connect()) == "Not authorized"
        wrong.close()

    def test_a_device_cannot_publish_on_another_devices_topic(
        self, secured: Secured, db: str, collector: None
    ) -> None:
        a = peer(secured, identity="ATM-A", cert=True)
        try:
            assert a.publish(device_topic("ATM-B", "state"), state("ATM-B", 1)) == "Not authorized"
        finally:
            a.close()
        stored_after(db, secured, "ATM-A", 1)
        assert rows(db, "ATM-B") == 0

    def test_a_device_claiming_another_on_its_own_topic_is_dead_lettered(
        self, secured: Secured, db: str, collector: None
    ) -> None:
        a = peer(secured, identity="ATM-A", cert=True)
        try:
            assert a.publish(device_topic("ATM-A", "state"), state("ATM-B", 2)) == "Success"
        finally:
            a.close()
        wait_until(
            lambda: (
                scalar(db, "SELECT count(*) FROM dead_letters WHERE reason = 'device_mismatch'")
                == 1
            ),
            what="a device_mismatch dead letter",
        )
        assert rows(db, "ATM-B") == 0

    def test_a_gateway_speaks_only_for_its_own_devices(
        self, secured: Secured, db: str, collector: None
    ) -> None:
        gw = peer(secured, identity="GW-1", cert=True)
        try:
            assert gw.publish(device_topic("ATM-A", "state"), state("ATM-A", 3)) == "Not authorized"
            assert gw.publish(device_topic("ATM-G1", "state"), state("ATM-G1", 3)) == "Success"
        finally:
            gw.close()
        wait_until(lambda: rows(db, "ATM-G1") == 1, what="the gateway's own device stored")
        stored_after(db, secured, "ATM-B", 3)
        assert rows(db, "ATM-A") == 0

    def test_only_the_counter_feed_changes_a_branch_counter(
        self, secured: Secured, db: str, collector: None
    ) -> None:
        feed = peer(secured, identity="atmfleet-feed")
        try:
            assert feed.publish(counter_topic("BR-1"), counter(400)) == "Success"
        finally:
            feed.close()
        wait_until(
            lambda: (
                scalar(db, "SELECT financial FROM counter_volumes WHERE branch_id = 'BR-1'") == 400
            ),
            what="the feed's counter stored",
        )
        for attempt in (
            peer(secured, identity="ATM-A", cert=True),
            peer(secured, identity="atmfleet-ops"),
        ):
            try:
                assert attempt.publish(counter_topic("BR-1"), counter(0)) == "Not authorized"
            finally:
                attempt.close()
        stored_after(db, secured, "ATM-A", 4)
        assert scalar(db, "SELECT financial FROM counter_volumes WHERE branch_id = 'BR-1'") == 400

    def test_nobody_but_the_collector_reads_the_fleet(self, secured: Secured) -> None:
        ops = peer(secured, identity="atmfleet-ops")
        strangers = [
            peer(secured, identity="ATM-A", cert=True),
            peer(secured, identity="GW-1", cert=True),
        ]
        feed = peer(secured, identity="atmfleet-feed")
        try:
            for s in [*strangers, feed, ops]:
                s.subscribe("atmfleet/#")
            # What a device may read: its own command topic.
            assert strangers[0].subscribe(command_topic("ATM-A")) == "Granted QoS 1"
            b = peer(secured, identity="ATM-B", cert=True)
            assert b.publish(device_topic("ATM-B", "state"), state("ATM-B", 5)) == "Success"
            b.close()
            # Sent after the telemetry: when the device has its command, it would have had
            # the telemetry too, had the broker let it through.
            assert ops.publish(command_topic("ATM-A"), b"{}") == "Success"
            strangers[0].wait(lambda: bool(strangers[0].messages), "the command")
            assert set(strangers[0].messages) == {command_topic("ATM-A")}
            assert strangers[1].messages == [] and feed.messages == [] and ops.messages == []
        finally:
            for s in [*strangers, feed, ops]:
                s.close()

    def test_nobody_can_take_the_collectors_session(
        self, secured: Secured, db: str, run_id: str
    ) -> None:
        settings = settings_for(
            secured.collector_url,
            db,
            top={
                "mqtt_username": COLLECTOR,
                "mqtt_password": secured.password(COLLECTOR),
                "mqtt_ca_file": secured.creds / "ca.pem",
            },
        )
        with running(settings, COLLECTOR):
            pass  # the persistent session exists, the collector is away
        a = peer(secured, identity="ATM-A", cert=True)
        try:
            for seq in range(1000, 1200):
                assert a.publish(device_topic("ATM-A", "state"), state("ATM-A", seq)) == "Success"
        finally:
            a.close()
        # With the collector's client id: a device certificate, and another service.
        thieves = [
            Peer(secured, identity="ATM-B", cert=True, client_id=COLLECTOR, clean_start=False),
            Peer(secured, identity="atmfleet-ops", client_id=COLLECTOR, clean_start=False),
        ]
        for thief in thieves:
            assert not thief.connect().is_failure
            thief.subscribe("atmfleet/v1/device/+/+")
        # With the collector's username but not its password.
        impostor = Peer(secured, client_id=COLLECTOR, clean_start=False)
        impostor.client.username_pw_set(COLLECTOR, "guess")
        assert str(impostor.connect()) == "Not authorized"
        impostor.close()
        for thief in thieves:
            thief.close()
        log = secured.log.read_text()
        assert "as ATM-B (p5, c0" in log and "as atmfleet-ops (p5, c0" in log
        with running(settings, COLLECTOR):
            wait_until(lambda: rows(db, "ATM-A") == 200, what="all 200 stored")
        assert [t.messages for t in thieves] == [[], []]
        assert run_id  # (unique ids are not needed: the broker is ours)

    def test_a_device_removed_from_the_inventory_is_refused_after_reload(
        self, secured: Secured, db: str, collector: None
    ) -> None:
        stored_after(db, secured, "ATM-R", 1)  # allowed while in the inventory
        kept_cert = (
            secured.creds / "clients" / "ATM-R.pem",
            secured.creds / "clients" / "ATM-R.key",
        )
        saved = [p.read_bytes() for p in kept_cert]
        write_inventory(secured.inventory, {"ATM-A": None, "ATM-B": None, "ATM-G1": "GW-1"})
        generate(secured.inventory, secured.creds)
        assert not kept_cert[0].exists() and "ATM-R" not in (secured.creds / "acl").read_text()
        secured.reload()
        # The device still holds its old certificate and key.
        held = secured.creds.parent / "held"
        held.mkdir(exist_ok=True)
        for path, data in zip(kept_cert, saved, strict=True):
            (held / path.name).write_bytes(data)
        why = tls_refused(
            secured.cert_port, secured.creds / "ca.pem", (held / "ATM-R.pem", held / "ATM-R.key")
        )
        assert why, "the removed device's certificate was accepted"
        stored_after(db, secured, "ATM-A", 6)
        assert rows(db, "ATM-R") == 1

    def test_tls_with_a_certificate_from_another_ca_is_refused(
        self, secured: Secured, tmp_path: Path
    ) -> None:
        other_key, other_ca = pki.make_ca("someone else's CA")
        key, cert = pki.make_client(other_key, other_ca, "ATM-A")
        (tmp_path / "c.pem").write_bytes(pki.cert_pem(cert))
        (tmp_path / "c.key").write_bytes(pki.key_pem(key))
        (tmp_path / "ca.pem").write_bytes(pki.cert_pem(other_ca))
        forged = (tmp_path / "c.pem", tmp_path / "c.key")
        assert tls_refused(secured.cert_port, secured.creds / "ca.pem", forged)
        assert not tls_refused(  # the same client with a certificate of ours gets in
            secured.cert_port,
            secured.creds / "ca.pem",
            (secured.creds / "clients" / "ATM-A.pem", secured.creds / "clients" / "ATM-A.key"),
        )
        # A client that trusts another CA does not accept the broker either.
        trusting = Peer(secured, identity="atmfleet-feed", ca=tmp_path / "ca.pem")
        with pytest.raises(ssl.SSLCertVerificationError):
            trusting.client.connect("127.0.0.1", secured.password_port)


class TestDevicesWithPasswords:
    """The other supported set-up: devices and gateways log in with a password each."""

    def test_own_topics_only_and_refused_once_removed(self, tmp_path: Path, db: str) -> None:
        with shipped_broker(tmp_path, "--devices", "password") as broker:
            assert not (broker.creds / "clients" / "ATM-A.pem").exists()
            settings = settings_for(
                broker.collector_url,
                db,
                top={
                    "mqtt_username": COLLECTOR,
                    "mqtt_password": broker.password(COLLECTOR),
                    "mqtt_ca_file": broker.creds / "ca.pem",
                },
            )
            with running(settings, COLLECTOR):
                a = peer(broker, identity="ATM-A")
                try:
                    assert a.publish(device_topic("ATM-B", "state"), state("ATM-B", 1)) == (
                        "Not authorized"
                    )
                finally:
                    a.close()
                r = peer(broker, identity="ATM-R")
                try:
                    assert r.publish(device_topic("ATM-R", "state"), state("ATM-R", 1)) == "Success"
                finally:
                    r.close()
                wait_until(lambda: rows(db, "ATM-R") == 1, what="ATM-R stored")
                old_password = broker.password("ATM-R")
                write_inventory(broker.inventory, {"ATM-A": None, "ATM-B": None, "ATM-G1": "GW-1"})
                generate(broker.inventory, broker.creds, "--devices", "password")
                broker.reload()
                removed = Peer(broker)
                removed.client.username_pw_set("ATM-R", old_password)
                assert str(removed.connect()) == "Not authorized"
                removed.close()
                b = peer(broker, identity="ATM-B")  # the others keep their passwords
                try:
                    assert b.publish(device_topic("ATM-B", "state"), state("ATM-B", 2)) == "Success"
                finally:
                    b.close()
                wait_until(lambda: rows(db, "ATM-B") == 1, what="ATM-B stored")


class TestSharedSubscription:
    def test_collectors_sharing_the_fleet_may_subscribe_and_store(
        self, secured: Secured, db: str
    ) -> None:
        settings = settings_for(
            secured.collector_url,
            db,
            top={
                "mqtt_username": COLLECTOR,
                "mqtt_password": secured.password(COLLECTOR),
                "mqtt_ca_file": secured.creds / "ca.pem",
            },
            share_group="atmfleet",
        )
        with running(settings, COLLECTOR):
            stored_after(db, secured, "ATM-B", 900)
