"""The device side of remote commands: simulated devices that obey (or refuse) commands.

Each simulated device has its own broker connection and identity (its MQTT username, or
the client certificate named for it), subscribes to its command topic, and answers as a
real device would (docs/protocol.md §14):

- a request past its expiry: ``expired``; a command it cannot run in its state (back in
  service while in a fault, out of service while already out): ``rejected``;
- otherwise ``accepted``, then after ``work_s`` ``done`` (or ``failed`` for a configured
  share); a configured share is never answered at all (the server expires it);
- it speaks the telemetry protocol as far as the collector needs: a last will and a
  retained birth (§8) on every connect, a state message then and every ``heartbeat_s``;
- ``out_of_service`` / ``in_service`` / ``restart`` really change what the device reports:
  a state message on its telemetry topic, so the collector sees it; a restart is a new
  boot epoch (``seq >> 32`` grows, §3);
- ``journal`` uploads a generated electronic journal for the time range in chunks on the
  data topic, then ``done`` with its size, chunk count and SHA-256; a journal larger than
  the request's ``max_bytes`` is refused (``rejected``, ``too_large``);
- a redelivered command (same id) runs once: the device keeps the last
  ``remember_ids`` ids and answers a repeat with what it answered before.

All connections are driven by one thread (``selectors``), so 10,000 devices fit in one
process; paho's own loop threads are not used.
"""

from __future__ import annotations

import contextlib
import gc
import hashlib
import heapq
import itertools
import logging
import selectors
import socket
import ssl
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode, MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from atmfleet.errors import AtmfleetError
from atmfleet.protocol import PresenceMessage, PresenceStatus, StateMessage, device_topic, encode
from commands.protocol import (
    CommandKind,
    CommandRequest,
    Outcome,
    ResultMessage,
    WireError,
    command_topic,
    data_topic,
    decode_request,
    encode_chunk,
    encode_result,
    parse_range,
    result_topic,
)
from simulator.config import CommandSide

log = logging.getLogger(__name__)

IN_SERVICE = "in_service"
OUT_OF_SERVICE = "maintenance"  # what a device taken out of service reports (§5)
FAULT = "fault"
#: Keep-alive work per slice and how often a slice runs: 100 every 100 ms is every device
#: of 10,000 every 10 s, well inside the 60 s keep-alive (heartbeats are due as often).
MISC_BATCH = 100
MISC_EVERY_S = 0.1


class DeviceSideError(AtmfleetError):
    """The simulated devices could not connect."""


@dataclass(frozen=True)
class Credentials:
    """How each device authenticates: nothing (an open broker), its password file
    (``secrets/<id>.password``) or its certificate (``clients/<id>.pem`` and ``.key``)
    from a folder written by ``atmfleet broker credentials``."""

    folder: Path | None = None
    ca_file: Path | None = None

    def apply(self, client: mqtt.Client, device_id: str, tls: bool) -> None:
        cert = key = None
        if self.folder is not None:
            pem = self.folder / "clients" / f"{device_id}.pem"
            secret = self.folder / "secrets" / f"{device_id}.password"
            if pem.is_file():
                cert, key = str(pem), str(self.folder / "clients" / f"{device_id}.key")
            elif secret.is_file():
                client.username_pw_set(device_id, secret.read_text().strip())
            else:
                raise DeviceSideError(f"no certificate or password for {device_id} in the folder")
        if tls:
            ca = self.ca_file or (self.folder / "ca.pem" if self.folder else None)
            client.tls_set(
                ca_certs=str(ca) if ca else None,
                certfile=cert,
                keyfile=key,
                cert_reqs=ssl.CERT_REQUIRED,
            )


@dataclass(eq=False)
class SimDevice:
    """One device: its state, boot epoch and the commands it remembers."""

    id: str
    state: str = IN_SERVICE
    epoch: int = 0
    counter: int = 0
    client: mqtt.Client | None = None
    sock: socket.socket | None = None
    connected: bool = False
    refused: str | None = None
    recent: OrderedDict[str, list[tuple[str, bytes, Properties | None]]] = field(
        default_factory=OrderedDict
    )
    runs: dict[str, int] = field(default_factory=dict)  # command id -> times run
    restarts: int = 0
    sessions: int = 0
    last_state: float = 0.0  # monotonic time of the last state message
    repeats: int = 0  # redelivered commands answered again (not run)
    v5: bool = True

    def next_seq(self) -> int:
        self.counter += 1
        return (self.epoch << 32) + self.counter


def journal_bytes(device_id: str, since: datetime, until: datetime, per_hour: int) -> bytes:
    """A deterministic electronic journal for the range (text lines, about ``per_hour``
    bytes an hour)."""
    hours = (until - since).total_seconds() / 3600
    size = int(hours * per_hour)
    lines: list[bytes] = []
    total = 0
    step = timedelta(seconds=max(1.0, 3600 * 80 / per_hour)) if per_hour else timedelta(hours=1)
    at = since
    for n in itertools.count(1):
        if total >= size:
            break
        amount = (n * 7919) % 3000 + 100
        line = (
            f"{at.astimezone(UTC):%Y-%m-%dT%H:%M:%SZ} {device_id} TXN {n:08d} "
            f"WITHDRAWAL {amount:6d}.00 CNY OK\n"
        ).encode()
        lines.append(line)
        total += len(line)
        at = min(at + step, until)
    return b"".join(lines)[:size]


def _share(command_id: str, salt: str) -> float:
    """A stable draw in [0, 1) for a command: the same id always decides the same way."""
    digest = hashlib.sha256(f"{salt}:{command_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


class CommandDevices:
    """Runs ``devices`` against the broker until :meth:`stop` (see the module doc)."""

    def __init__(
        self,
        device_ids: Iterable[str],
        *,
        mqtt_url: str,
        protocol: str = "5",
        config: CommandSide | None = None,
        credentials: Credentials | None = None,
        faulty: Iterable[str] = (),
        client_prefix: str = "",
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        parts = urlsplit(mqtt_url)
        self._tls = parts.scheme in ("mqtts", "ssl")
        self._host = parts.hostname or "127.0.0.1"
        self._port = parts.port or (8883 if self._tls else 1883)
        self._v5 = protocol == "5"
        self.config = config or CommandSide()
        self._creds = credentials or Credentials()
        self._prefix = client_prefix
        self._clock = clock
        epoch = int(time.time()) & 0x7FFFFFFF
        faults = set(faulty)
        self.devices = {
            d: SimDevice(d, state=FAULT if d in faults else IN_SERVICE, epoch=epoch, v5=self._v5)
            for d in device_ids
        }
        for dev in self.devices.values():
            if dev.id not in faults and _share(dev.id, "fault") < self.config.fault_share:
                dev.state = FAULT
        self._selector = selectors.DefaultSelector()
        self._by_fd: dict[int, SimDevice] = {}
        self._timers: list[tuple[float, int, Callable[[], None]]] = []
        self._tick = itertools.count()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()  # guards what other threads look at (runs, states)
        self.ready = threading.Event()
        self.error: BaseException | None = None

    # ------------------------------------------------------------------- connections

    def _client(self, dev: SimDevice) -> mqtt.Client:
        client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=f"{self._prefix}{dev.id}",
            protocol=MQTTProtocolVersion.MQTTv5 if self._v5 else MQTTProtocolVersion.MQTTv311,
            clean_session=None if self._v5 else False,
            userdata=dev,
        )
        self._creds.apply(client, dev.id, self._tls)
        dev.sessions += 1
        will = self._presence(dev, PresenceStatus.OFFLINE, will=True)
        client.will_set(device_topic(dev.id, "presence"), will, qos=1, retain=True)
        client.max_queued_messages_set(0)
        client.on_connect = self._on_connect
        client.on_message = self._on_message
        client.on_disconnect = self._on_disconnect
        return client

    def _on_connect(self, client: mqtt.Client, dev: SimDevice, _f: Any, rc: Any, _p: Any) -> None:
        if rc.is_failure:
            dev.refused = str(rc)
            return
        dev.connected = True
        client.subscribe(command_topic(dev.id), qos=1)
        # birth (retained), then the state: what a device does after every connect (§4)
        birth = self._presence(dev, PresenceStatus.ONLINE, will=False)
        client.publish(device_topic(dev.id, "presence"), birth, qos=1, retain=True)
        self._publish_state(dev)

    def _session(self, dev: SimDevice) -> str:
        return f"{dev.epoch}.{dev.sessions}"

    def _presence(self, dev: SimDevice, status: PresenceStatus, *, will: bool) -> bytes:
        msg = PresenceMessage(
            v=1, device_id=dev.id, status=status, ts=self._clock(), session=self._session(dev),
            will=will,
        )  # fmt: skip
        return encode(msg)

    def _on_disconnect(self, _c: mqtt.Client, dev: SimDevice, _f: Any, _rc: Any, _p: Any) -> None:
        dev.connected = False

    def _open(self, dev: SimDevice) -> None:
        dev.client = self._client(dev)
        props = None
        if self._v5:
            props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
            props.SessionExpiryInterval = 3600  # commands queued while the link is down
        try:
            if self._v5:
                dev.client.connect(self._host, self._port, 60, clean_start=False, properties=props)
            else:  # a persistent session: set on the client (clean_session=False)
                dev.client.connect(self._host, self._port, 60)
        except (OSError, ValueError) as exc:
            raise DeviceSideError(f"{dev.id}: cannot connect to the broker: {exc}") from None
        sock = dev.client.socket()
        assert isinstance(sock, socket.socket | ssl.SSLSocket)
        nodelay(sock)
        dev.sock = sock
        self._by_fd[sock.fileno()] = dev
        self._selector.register(sock, selectors.EVENT_READ, dev)

    def _reconnect(self, dev: SimDevice) -> None:
        if dev.sock is not None:
            with contextlib.suppress(KeyError, ValueError):
                self._selector.unregister(dev.sock)
        dev.sock = None
        dev.connected = False
        try:
            assert dev.client is not None
            dev.client.reconnect()
        except OSError:
            self._at(time.monotonic() + 1.0, lambda: self._reconnect(dev))
            return
        sock = dev.client.socket()
        assert isinstance(sock, socket.socket | ssl.SSLSocket)
        nodelay(sock)
        dev.sock = sock
        self._selector.register(sock, selectors.EVENT_READ, dev)

    # ------------------------------------------------------------------------ loop

    def start(self, timeout_s: float = 120.0) -> None:
        """Connect every device (in the loop thread) and return once all are subscribed."""
        self._thread = threading.Thread(target=self._run, name="sim-devices", daemon=True)
        self._thread.start()
        if not self.ready.wait(timeout_s) or self.error is not None:
            self.stop()
            raise DeviceSideError(f"the simulated devices did not connect: {self.error}")

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(30)

    def _at(self, when: float, action: Callable[[], None]) -> None:
        heapq.heappush(self._timers, (when, next(self._tick), action))

    def _run(self) -> None:
        try:
            for dev in self.devices.values():
                self._open(dev)
                self._pump(0)
            deadline = time.monotonic() + 120
            subscribed = 0
            while subscribed < len(self.devices):
                self._pump(0.05)
                refused = [d for d in self.devices.values() if d.refused]
                if refused:
                    raise DeviceSideError(f"broker refused {refused[0].id}: {refused[0].refused}")
                subscribed = sum(1 for d in self.devices.values() if d.connected)
                if time.monotonic() > deadline:
                    raise DeviceSideError(f"{subscribed} of {len(self.devices)} connected")
            self._pump(0.05)
            # 10,000 clients are millions of objects: a full garbage collection would walk
            # them all and stall every device for a good part of a second. They live as
            # long as the run, so they are moved out of the collector's sight.
            gc.collect()
            gc.freeze()
            self.ready.set()
            # Keep-alives in small slices (MISC_BATCH devices every MISC_EVERY_S), never
            # all 10,000 at once: a full sweep would hold every command up behind it.
            ring = itertools.cycle(list(self.devices.values()))
            last_misc = time.monotonic()
            while not self._stop.is_set():
                wait = MISC_EVERY_S
                if self._timers:
                    wait = max(0.0, min(wait, self._timers[0][0] - time.monotonic()))
                self._pump(wait)
                now = time.monotonic()
                while self._timers and self._timers[0][0] <= now:
                    _, _, action = heapq.heappop(self._timers)
                    action()
                if now - last_misc >= MISC_EVERY_S:
                    for dev in itertools.islice(ring, MISC_BATCH):
                        if dev.client is not None:
                            if dev.connected and now - dev.last_state >= self.config.heartbeat_s:
                                self._publish_state(dev)  # the heartbeat
                            dev.client.loop_misc()
                            self._write(dev)
                    last_misc = now
        except BaseException as exc:  # report to start(); never die silently
            self.error = exc
            log.exception("simulated devices stopped")
            self.ready.set()
        finally:
            for dev in self.devices.values():
                if dev.client is not None:
                    with contextlib.suppress(Exception):
                        dev.client.disconnect()
                        self._write(dev)
                    if dev.sock is not None:
                        with contextlib.suppress(Exception):
                            dev.sock.close()
            self._selector.close()

    def _pump(self, timeout: float) -> None:
        for key, _ in self._selector.select(timeout):
            dev = key.data
            assert dev.client is not None
            rc = dev.client.loop_read(100)
            if rc not in (MQTTErrorCode.MQTT_ERR_SUCCESS, MQTTErrorCode.MQTT_ERR_AGAIN):
                self._reconnect(dev)
                continue
            self._write(dev)

    def _write(self, dev: SimDevice) -> None:
        client = dev.client
        if client is None:
            return
        for _ in range(10_000):
            if not client.want_write():
                return
            rc = client.loop_write()
            if rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
                return
            if client.want_write() and dev.sock is not None:
                _wait_writable(dev.sock)  # the kernel's buffer is full: wait until it drains

    # ------------------------------------------------------------------- behaviour

    def _publish(
        self, dev: SimDevice, topic: str, payload: bytes, props: Properties | None = None
    ) -> None:
        assert dev.client is not None
        dev.client.publish(topic, payload, qos=1, properties=props)

    def _publish_state(self, dev: SimDevice) -> None:
        msg = StateMessage(
            v=1,
            device_id=dev.id,
            ts=self._clock(),
            seq=dev.next_seq(),
            state=dev.state,
            heartbeat_s=self.config.heartbeat_s,
            faults=["SIM-FAULT"] if dev.state == FAULT else [],
        )
        dev.last_state = time.monotonic()
        self._publish(dev, device_topic(dev.id, "state"), encode(msg))

    def _answer(
        self,
        dev: SimDevice,
        req: CommandRequest,
        reply: tuple[str, bytes | None],
        outcome: Outcome,
        reason: str | None = None,
        detail: dict[str, Any] | None = None,
    ) -> None:
        topic, correlation = reply
        msg = ResultMessage(
            command_id=req.command_id,
            device_id=dev.id,
            result=outcome,
            ts=self._clock(),
            correlation=None if correlation is not None else req.correlation,
            reason=reason,
            detail=detail or {},
        )
        props = None
        if correlation is not None:
            props = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
            props.CorrelationData = correlation
        payload = encode_result(msg)
        remembered = dev.recent.get(req.command_id)
        if remembered is not None:
            remembered.append((topic, payload, props))
        self._publish(dev, topic, payload, props)
        self._write(dev)

    def _on_message(self, _c: mqtt.Client, dev: SimDevice, message: mqtt.MQTTMessage) -> None:
        try:
            self._command(dev, message)
        except Exception:  # never into paho's loop
            log.exception("%s: command on %s failed", dev.id, message.topic)

    def _command(self, dev: SimDevice, message: mqtt.MQTTMessage) -> None:
        try:
            req = decode_request(bytes(message.payload))
        except WireError as exc:
            log.warning("%s: %s", dev.id, exc)
            return
        if req.device_id != dev.id:
            log.warning("%s: command for %s on its topic: ignored", dev.id, req.device_id)
            return
        props = getattr(message, "properties", None)
        response = getattr(props, "ResponseTopic", None) if props is not None else None
        correlation = getattr(props, "CorrelationData", None) if props is not None else None
        if response:  # MQTT 5
            reply: tuple[str, bytes | None] = (str(response), bytes(correlation or b"") or None)
        else:  # MQTT 3.1.1: the payload says where
            reply = (req.reply_to or result_topic(dev.id), None)
        if reply[0] != result_topic(dev.id):
            log.warning("%s: reply topic %s is not its own; answering there anyway", dev.id,
                        reply[0])  # fmt: skip
        seen = dev.recent.get(req.command_id)
        if seen is not None:  # a redelivery: the same answers again, nothing runs
            dev.repeats += 1
            for topic, payload, p in list(seen):
                self._publish(dev, topic, payload, p)
            return
        dev.recent[req.command_id] = []
        while len(dev.recent) > self.config.remember_ids:
            dev.recent.popitem(last=False)
        if _share(req.command_id, "silent") < self.config.silent_share:
            return  # never answered: the server expires it
        if self._clock() >= req.expires_at:
            self._answer(dev, req, reply, Outcome.EXPIRED, "received after its expiry")
            return
        refusal = self._refusal(dev, req)
        if refusal is not None:
            self._answer(dev, req, reply, Outcome.REJECTED, refusal)
            return
        with self._lock:
            dev.runs[req.command_id] = dev.runs.get(req.command_id, 0) + 1
        self._answer(dev, req, reply, Outcome.ACCEPTED)
        delay = self.config.restart_s if req.kind is CommandKind.RESTART else self.config.work_s
        due = time.monotonic() + delay
        if delay <= 0:
            self._execute(dev, req, reply)
        else:
            self._at(due, lambda: self._execute(dev, req, reply))

    def _refusal(self, dev: SimDevice, req: CommandRequest) -> str | None:
        if req.kind is CommandKind.IN_SERVICE:
            if dev.state == FAULT:
                return "in a fault: cannot go back in service until it is cleared"
            if dev.state == IN_SERVICE:
                return "already in service"
        if req.kind is CommandKind.OUT_OF_SERVICE and dev.state == OUT_OF_SERVICE:
            return "already out of service"
        if req.kind is CommandKind.JOURNAL:
            try:
                since, until = parse_range(req.params)
            except WireError as exc:
                return str(exc)
            size = len(journal_bytes(dev.id, since, until, self.config.journal_bytes_per_hour))
            limit = int(req.params.get("max_bytes", 2**62))
            if size > limit:
                return f"too_large: the journal is {size} bytes, more than {limit}"
        return None

    def _execute(
        self, dev: SimDevice, req: CommandRequest, reply: tuple[str, bytes | None]
    ) -> None:
        if self._clock() >= req.expires_at:
            self._answer(dev, req, reply, Outcome.EXPIRED, "expired before it finished")
            return
        if _share(req.command_id, "fail") < self.config.fail_share:
            self._answer(dev, req, reply, Outcome.FAILED, "simulated failure")
            return
        detail: dict[str, Any] = {}
        with self._lock:
            if req.kind is CommandKind.OUT_OF_SERVICE:
                dev.state = OUT_OF_SERVICE
            elif req.kind is CommandKind.IN_SERVICE:
                dev.state = IN_SERVICE
            elif req.kind is CommandKind.RESTART:
                dev.epoch += 1  # a new boot: the collector sees seq >> 32 grow
                dev.counter = 0
                dev.restarts += 1
        if req.kind is CommandKind.JOURNAL:
            detail = self._upload(dev, req)
        else:
            self._publish_state(dev)
            detail = {"state": dev.state}
        self._answer(dev, req, reply, Outcome.DONE, detail=detail)

    def _upload(self, dev: SimDevice, req: CommandRequest) -> dict[str, Any]:
        since, until = parse_range(req.params)
        data = journal_bytes(dev.id, since, until, self.config.journal_bytes_per_hour)
        chunk = max(1024, int(req.params.get("chunk_bytes", 256 * 1024)))
        pieces = [data[i : i + chunk] for i in range(0, len(data), chunk)] or [b""]
        for seq, piece in enumerate(pieces):
            self._publish(dev, data_topic(dev.id), encode_chunk(req.command_id, seq, piece))
            self._write(dev)
        return {
            "bytes": len(data),
            "chunks": len(pieces),
            "sha256": hashlib.sha256(data).hexdigest(),
        }

    # ------------------------------------------------------------------- for tests

    def runs_of(self, device_id: str, command_id: str) -> int:
        with self._lock:
            return self.devices[device_id].runs.get(command_id, 0)

    def state_of(self, device_id: str) -> str:
        with self._lock:
            return self.devices[device_id].state


def nodelay(sock: socket.socket) -> None:
    """Small answers go out at once (no Nagle delay behind the previous one's ACK)."""
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def _wait_writable(sock: socket.socket, timeout: float = 1.0) -> None:
    with selectors.DefaultSelector() as sel:
        sel.register(sock, selectors.EVENT_WRITE)
        sel.select(timeout)
