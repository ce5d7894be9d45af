"""Publishes a simulated fleet to a real broker (paho-mqtt 2.x, QoS 1).

Connections are multiplexed:

- **pooled** (the default for big fleets): ``N`` gateway connections; every device of a
  branch goes through the same gateway (``crc32(branch) % N``), so a device's messages
  stay in order. A broker last will belongs to a connection, not to the hundreds of
  devices behind it, so when a device's link drops the simulator publishes the device's
  ``presence`` ``offline`` itself (``will: false``, ``ts`` = the drop time), as a real
  gateway would.
- **per-device** (small fleets): one connection per device, registered with the device's
  last will. A dropped link kills the socket without DISCONNECT, so the broker publishes
  the will (``will: true``). Teller-counter messages use one extra connection.

Flow control: at most ``max_inflight`` unacknowledged messages per connection (lowered to
the broker's Receive Maximum); nothing is queued without bound. :meth:`FleetPublisher.run`
returns only when every message has been acknowledged (or the stop timeout passed).

One thread drives every socket (``selectors``); paho's own loop threads are not used.
paho makes each connection (CONNECT with credentials, TLS, last will; CONNACK; and again
after a lost link); once the broker has accepted it, the publisher writes the QoS 1
PUBLISH packets and reads the PUBACKs itself (:func:`publish_packet`): paho's per-message
bookkeeping (a message object, a condition variable, MQTT 5 reason codes and properties
decoded per PUBACK) cost about two thirds of a backfill's time.
"""

from __future__ import annotations

import contextlib
import logging
import selectors
import socket
import ssl
import threading
import time
import zlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode, MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from atmfleet.errors import AtmfleetError, ConfigError
from atmfleet.protocol import QOS
from atmfleet.settings import Settings
from simulator.engine import Control, Emission

log = logging.getLogger(__name__)

#: Fleets up to this size get one connection per device when --connections is not given.
PER_DEVICE_MAX = 200
DEFAULT_POOL = 16


class BrokerError(AtmfleetError):
    """The broker could not be reached or refused us."""


@dataclass
class PublishStats:
    published: int = 0
    wills: int = 0  # last wills the broker sent for killed connections
    connections: int = 0
    seconds: float = 0.0
    complete: bool = True  # every message acknowledged

    @property
    def rate(self) -> float:
        return (self.published + self.wills) / self.seconds if self.seconds > 0 else 0.0


class Pacing:
    """When an emission may go out (wall-clock seconds since the epoch); ``None`` = now.

    Live mode never lets simulated time run ahead of the wall clock: an emission at
    simulated ``t`` waits for ``max(wall0 + (t - sim0) / speed, t)``.
    """

    def __init__(self, sim0_ms: int, speed: float, wall0: float | None = None) -> None:
        self.sim0 = sim0_ms
        self.speed = speed
        self.wall0 = time.time() if wall0 is None else wall0

    def due(self, t_ms: int) -> float:
        return max(self.wall0 + (t_ms - self.sim0) / 1000 / self.speed, t_ms / 1000)


class _BatchingSocket:
    """Collects what paho writes and gives it to the kernel in one ``send`` per batch.

    paho writes every packet with its own ``send``: one system call per message, which
    dominated the publish rate. Put in place of the client's socket after connecting
    (paho offers no hook for this, hence the private attribute), it buffers writes; the
    publisher flushes the buffer before it waits for acknowledgements. Everything else
    (``recv``, ``fileno``, ``close``, TLS) goes to the real socket.
    """

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock
        self.buf = bytearray()

    def send(self, data: bytes) -> int:
        self.buf += data
        return len(data)

    def flush(self) -> bool:
        """Write what the kernel takes now; False if some is left (socket buffer full)."""
        while self.buf:
            try:
                n = self._sock.send(self.buf)
            except (BlockingIOError, InterruptedError, ssl.SSLWantWriteError):
                return False
            del self.buf[:n]
        return True

    def close(self) -> None:
        """paho closes right after "writing" DISCONNECT: send it first, or the broker
        would see a lost link and publish the will."""
        if self.buf:
            with contextlib.suppress(OSError):
                self._sock.settimeout(2.0)
                self._sock.sendall(self.buf)
            self.buf.clear()
        self._sock.close()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._sock, name)


_PUBLISH_QOS1 = 0x32  # PUBLISH, QoS 1; | 0x01 retain, | 0x08 duplicate
_PUBACK = 0x40
_DISCONNECT = 0xE0
_PINGREQ = b"\xc0\x00"
#: With nothing else written for this long a connection sends PINGREQ (keep-alive 60 s).
_PING_AFTER_S = 30.0


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        n, digit = divmod(n, 128)
        out.append(digit | (0x80 if n else 0))
        if not n:
            return bytes(out)


def publish_packet(topic: str, payload: bytes, mid: int, retain: bool, v5: bool) -> bytes:
    """A QoS 1 PUBLISH packet (MQTT 3.1.1, or 5 with no properties)."""
    name = topic.encode()
    n = len(name)
    body_len = 4 + n + (1 if v5 else 0) + len(payload)
    # The fixed header and the topic's length; the remaining length inline up to 16,383.
    if body_len < 0x80:
        head = bytes((_PUBLISH_QOS1 | retain, body_len, n >> 8, n & 0xFF))
    elif body_len < 0x4000:
        head = bytes((_PUBLISH_QOS1 | retain, body_len & 0x7F | 0x80, body_len >> 7, n >> 8,
                      n & 0xFF))  # fmt: skip
    else:
        head = bytes((_PUBLISH_QOS1 | retain,)) + _varint(body_len) + n.to_bytes(2, "big")
    tail = (b"%c%c\x00" if v5 else b"%c%c") % (mid >> 8, mid & 0xFF)
    return b"".join((head, name, tail, payload))


@dataclass(eq=False)
class _Conn:
    client: mqtt.Client
    name: str
    limit: int = 20
    #: CONNACK received (paho's callback); ``connected`` once the publisher owns the link.
    acked: bool = False
    connected: bool = False
    failed: str | None = None
    sock: socket.socket | None = None
    out: _BatchingSocket | None = None
    #: Unacknowledged PUBLISH packets by packet id, resent after a reconnect.
    inflight: dict[int, bytes] = field(default_factory=dict)
    mid: int = 0
    rbuf: bytearray = field(default_factory=bytearray)
    last_out: float = 0.0

    @property
    def pending(self) -> int:
        return len(self.inflight)

    def next_mid(self) -> int:
        mid = self.mid % 65535 + 1
        while mid in self.inflight:
            mid = mid % 65535 + 1
        self.mid = mid
        return mid


class FleetPublisher:
    """Publishes emissions over pooled or per-device connections; see the module doc."""

    def __init__(
        self,
        settings: Settings,
        *,
        per_device: bool,
        pool_size: int = DEFAULT_POOL,
        client_prefix: str = "atmfleet-sim",
        max_inflight: int = 100,
        stop: threading.Event | None = None,
        connect_timeout_s: float = 10.0,
        drain_timeout_s: float = 60.0,
    ) -> None:
        if pool_size < 1:
            raise ConfigError(f"connections must be >= 1 (got {pool_size})")
        if max_inflight < 1:
            raise ConfigError(f"max_inflight must be >= 1 (got {max_inflight})")
        parts = urlsplit(settings.mqtt_url)
        self._tls = parts.scheme in ("mqtts", "ssl")
        self._host = parts.hostname or "127.0.0.1"
        self._port = parts.port or (8883 if self._tls else 1883)
        self._settings = settings
        self._v5 = settings.mqtt_protocol == "5"
        self._per_device = per_device
        self._pool_size = pool_size
        self._prefix = client_prefix
        self._max_inflight = max_inflight
        self._stop = stop or threading.Event()
        self._connect_timeout = connect_timeout_s
        self._drain_timeout = drain_timeout_s
        self._selector = selectors.DefaultSelector()
        self._pool: list[_Conn] = []
        self._devices: dict[str, _Conn] = {}
        self._by_client: dict[int, _Conn] = {}
        self._unflushed: set[_Conn] = set()
        self._sessions = 0
        self.stats = PublishStats()

    # ------------------------------------------------------------------ connections

    def _new_client(self, client_id: str) -> mqtt.Client:
        v5 = self._settings.mqtt_protocol == "5"
        client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=client_id,
            protocol=MQTTProtocolVersion.MQTTv5 if v5 else MQTTProtocolVersion.MQTTv311,
            clean_session=None if v5 else True,
        )
        if self._settings.mqtt_username:
            password = self._settings.mqtt_password
            client.username_pw_set(
                self._settings.mqtt_username, password.get_secret_value() if password else None
            )
        if self._tls:
            client.tls_set(
                ca_certs=str(self._settings.mqtt_ca_file) if self._settings.mqtt_ca_file else None,
                certfile=str(self._settings.mqtt_cert_file)
                if self._settings.mqtt_cert_file
                else None,
                keyfile=str(self._settings.mqtt_key_file) if self._settings.mqtt_key_file else None,
                cert_reqs=ssl.CERT_REQUIRED,
            )
        client.max_inflight_messages_set(self._max_inflight)
        client.max_queued_messages_set(0)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        return client

    def _on_connect(self, client: mqtt.Client, _u: Any, _f: Any, rc: Any, props: Any) -> None:
        conn = self._by_client.get(id(client))
        if conn is None:
            return
        if rc.is_failure:
            conn.failed = f"broker refused {conn.name}: {rc}"
            return
        receive_max = getattr(props, "ReceiveMaximum", None) if props is not None else None
        conn.limit = min(self._max_inflight, receive_max or self._max_inflight)
        conn.acked = True

    def _on_disconnect(self, client: mqtt.Client, _u: Any, _f: Any, rc: Any, _p: Any) -> None:
        conn = self._by_client.get(id(client))
        if conn is not None:
            conn.connected = conn.acked = False

    def _open(self, name: str, will: tuple[str, bytes] | None = None) -> _Conn:
        self._sessions += 1
        client = self._new_client(f"{self._prefix}-{name}"[:200])
        conn = _Conn(client, name)
        self._by_client[id(client)] = conn
        if will is not None:
            client.will_set(will[0], will[1], qos=QOS, retain=True)
        try:
            if self._settings.mqtt_protocol == "5":
                props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
                props.SessionExpiryInterval = 0
                client.connect(self._host, self._port, 60, clean_start=True, properties=props)
            else:
                client.connect(self._host, self._port, 60)  # clean session set on the client
        except (OSError, ValueError) as exc:
            raise BrokerError(
                f"cannot connect to the broker at {self._settings.mqtt_url}: {exc}"
            ) from None
        sock = client.socket()
        if not isinstance(sock, socket.socket):
            raise BrokerError(f"no socket for {self._settings.mqtt_url}")
        self._attach(conn, sock)
        deadline = time.monotonic() + self._connect_timeout
        while not conn.connected:
            if conn.failed:
                raise BrokerError(conn.failed)
            if time.monotonic() > deadline:
                raise BrokerError(
                    f"no answer (CONNACK) from the broker at {self._settings.mqtt_url} "
                    f"within {self._connect_timeout:.0f}s"
                )
            self._pump(0.05)
        self.stats.connections += 1
        return conn

    def _attach(self, conn: _Conn, sock: socket.socket) -> None:
        conn.sock = sock
        conn.acked = conn.connected = False
        conn.rbuf.clear()
        conn.out = _BatchingSocket(sock)
        conn.client._sock = conn.out  # type: ignore[assignment]  # see _BatchingSocket
        self._selector.register(sock, selectors.EVENT_READ, conn)

    def _flush(self, conn: _Conn) -> None:
        if conn.out is None:
            return
        try:
            done = conn.out.flush()
        except OSError:
            self._unflushed.discard(conn)
            self._reconnect(conn, MQTTErrorCode.MQTT_ERR_CONN_LOST)
            return
        conn.last_out = time.monotonic()
        if done:
            self._unflushed.discard(conn)
        else:
            self._unflushed.add(conn)

    def _take_over(self, conn: _Conn) -> None:
        """The broker accepted the connection: from now on the publisher writes the
        PUBLISH packets and reads the PUBACKs itself. What was not acknowledged on the
        link before (a reconnect) goes out again, flagged as a duplicate."""
        conn.connected = True
        if conn.out is not None and conn.inflight:
            for packet in conn.inflight.values():
                conn.out.buf += bytes((packet[0] | 0x08,)) + packet[1:]
            self._unflushed.add(conn)

    def _read(self, conn: _Conn) -> None:
        """Read what the broker sent on an accepted connection: PUBACKs (and PINGRESPs)."""
        sock = conn.sock
        if sock is None:
            return
        buf = conn.rbuf
        while True:
            try:
                data = sock.recv(65536)
            except (BlockingIOError, InterruptedError, ssl.SSLWantReadError):
                break
            except OSError:
                self._reconnect(conn, MQTTErrorCode.MQTT_ERR_CONN_LOST)
                return
            if not data:
                self._reconnect(conn, MQTTErrorCode.MQTT_ERR_CONN_LOST)
                return
            buf += data
            if len(data) < 65536:
                break
        inflight = conn.inflight
        pos, size = 0, len(buf)
        while size - pos >= 2:
            length, shift, i = 0, 0, pos + 1
            while i < size and i < pos + 5:
                byte = buf[i]
                length |= (byte & 0x7F) << shift
                shift += 7
                i += 1
                if not byte & 0x80:
                    break
            else:
                break  # the length is not complete yet
            if size - i < length:
                break
            command = buf[pos] & 0xF0
            if command == _PUBACK and length >= 2:
                inflight.pop((buf[i] << 8) | buf[i + 1], None)
            elif command == _DISCONNECT:
                del buf[:]
                self._reconnect(conn, MQTTErrorCode.MQTT_ERR_CONN_LOST)
                return
            pos = i + length
        if pos:
            del buf[:pos]

    def _close(self, conn: _Conn, *, abrupt: bool) -> None:
        """Close a connection: politely (no will), or abruptly (the broker sends the will)."""
        self._flush(conn)
        if conn.sock is not None:
            with contextlib.suppress(KeyError, ValueError):
                self._selector.unregister(conn.sock)
        if abrupt and conn.sock is not None:
            # No DISCONNECT packet: to the broker this is a lost link.
            with contextlib.suppress(OSError):
                conn.sock.shutdown(socket.SHUT_RDWR)
            conn.sock.close()
        else:
            conn.client.disconnect()  # paho closes the socket once DISCONNECT is written
            if conn.out is not None:
                conn.out.close()
        self._by_client.pop(id(conn.client), None)
        self._unflushed.discard(conn)
        conn.sock = conn.out = None
        conn.connected = False

    # ----------------------------------------------------------------------- I/O loop

    def _pump(self, timeout: float) -> None:
        """Write what is waiting, read acknowledgements for up to ``timeout`` seconds."""
        for conn in list(self._unflushed):
            self._flush(conn)
        if self._unflushed:
            timeout = min(timeout, 0.001)  # the kernel's buffer was full: try again soon
        for sel_key, _ in self._selector.select(timeout):
            conn = sel_key.data
            if conn.connected:
                self._read(conn)
                continue
            self._check(conn, conn.client.loop_read(1))  # the handshake: paho's
            if conn.acked and not conn.connected:
                self._take_over(conn)
            if conn.out is not None and conn.out.buf:
                self._unflushed.add(conn)

    def _check(self, conn: _Conn, rc: MQTTErrorCode) -> None:
        if rc in (MQTTErrorCode.MQTT_ERR_SUCCESS, MQTTErrorCode.MQTT_ERR_AGAIN):
            return
        self._reconnect(conn, rc)

    def _reconnect(self, conn: _Conn, rc: MQTTErrorCode) -> None:
        """The broker went away: reconnect with backoff; paho resends unacknowledged QoS 1."""
        log.warning("connection %s lost (%s); reconnecting", conn.name, mqtt.error_string(rc))
        if conn.sock is not None:
            with contextlib.suppress(KeyError, ValueError):
                self._selector.unregister(conn.sock)
        conn.connected = False
        delay = 0.5
        deadline = time.monotonic() + self._drain_timeout
        while not self._stop.is_set():
            try:
                conn.client.reconnect()
                sock = conn.client.socket()
                if isinstance(sock, socket.socket):
                    self._attach(conn, sock)
                    return
            except OSError as exc:
                if time.monotonic() > deadline:
                    raise BrokerError(
                        f"lost the broker at {self._settings.mqtt_url} and could not "
                        f"reconnect: {exc}"
                    ) from None
            time.sleep(delay)
            delay = min(delay * 2, 10.0)

    def _misc(self) -> None:
        now = time.monotonic()
        for conn in list(self._by_client.values()):
            if not conn.connected:
                conn.client.loop_misc()
            elif conn.out is not None and now - conn.last_out > _PING_AFTER_S:
                conn.out.buf += _PINGREQ
                conn.last_out = now
            if conn.out is not None and conn.out.buf:
                self._unflushed.add(conn)

    # ----------------------------------------------------------------------- publish

    def _publish(self, conn: _Conn, e: Emission) -> None:
        while conn.pending >= conn.limit or not conn.connected:
            if conn.failed:
                raise BrokerError(conn.failed)
            self._pump(0.05)
        mid = conn.next_mid()
        packet = publish_packet(e.topic, e.payload, mid, e.retain, self._v5)
        conn.inflight[mid] = packet
        if conn.out is not None:
            conn.out.buf += packet
        self._unflushed.add(conn)
        self.stats.published += 1

    def _gateway(self, branch: str) -> _Conn:
        index = zlib.crc32(branch.encode()) % len(self._pool)
        return self._pool[index]

    def _drain(self, conns: Iterable[_Conn], timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        conns = list(conns)
        while any(c.pending > 0 for c in conns):
            if time.monotonic() > deadline:
                return False
            self._pump(0.05)
        return True

    def run(
        self,
        emissions: Iterable[Emission],
        *,
        branch_of: Callable[[str], str],
        pacing: Pacing | None = None,
        on_sent: Callable[[Emission], None] | None = None,
        hold_until: float | None = None,
    ) -> PublishStats:
        """Publish until the emissions end or ``stop`` is set; then wait for every PUBACK.

        ``hold_until`` (wall-clock seconds since the epoch): a live run whose last message
        goes out earlier keeps its connections (keep-alives, no wills) until then, so the
        run lasts the wall time asked for, not until its last message."""
        started = time.monotonic()
        pool = 1 if self._per_device else self._pool_size
        self._pool = [self._open(f"gw{i}") for i in range(pool)]
        last_misc = time.monotonic()
        try:
            for e in emissions:
                if pacing is not None:
                    due = pacing.due(e.t)
                    while not self._stop.is_set() and (wait := due - time.time()) > 0:
                        self._pump(min(wait, 0.5))
                        if time.monotonic() - last_misc > 1.0:
                            self._misc()
                            last_misc = time.monotonic()
                if self._stop.is_set():
                    break
                self._send(e, branch_of)
                if on_sent is not None:
                    on_sent(e)
                now = time.monotonic()
                if now - last_misc > 1.0:
                    self._pump(0)
                    self._misc()
                    last_misc = now
            while hold_until is not None and not self._stop.is_set():
                wait = hold_until - time.time()
                if wait <= 0:
                    break
                self._pump(min(wait, 0.5))
                self._misc()
        finally:
            conns = list(self._by_client.values())
            self.stats.complete = self._drain(conns, self._drain_timeout)
            self.stats.seconds = time.monotonic() - started
            for conn in conns:
                self._close(conn, abrupt=False)
            self._selector.close()
        return self.stats

    def _send(self, e: Emission, branch_of: Callable[[str], str]) -> None:
        if e.kind == "counter":
            self._publish(self._pool[0], e)
            return
        if not self._per_device:
            self._publish(self._gateway(branch_of(e.device_id)), e)
            return
        if e.control == Control.CONNECT:
            old = self._devices.pop(e.device_id, None)
            if old is not None:
                self._close(old, abrupt=False)
            will = (e.topic, e.will) if e.will else None
            conn = self._open(f"{e.device_id}-{self._sessions}", will)
            self._devices[e.device_id] = conn
            self._publish(conn, e)
        elif e.control == Control.DROP:
            conn = self._devices.pop(e.device_id)
            if e.result == "will":
                # Everything the device sent must be in before the broker's will.
                self._drain([conn], self._drain_timeout)
                self._close(conn, abrupt=True)
                self.stats.wills += 1
            else:
                self._publish(conn, e)
                self._drain([conn], self._drain_timeout)
                self._close(conn, abrupt=False)
        else:
            conn = self._devices.get(e.device_id) or self._pool[0]
            self._publish(conn, e)
