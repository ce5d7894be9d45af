"""The commands' MQTT side: publishing requests, and the listener that records answers.

:class:`BrokerPublisher` (used by ``atmfleet command send`` and the web console) publishes
a request at QoS 1 on the device's command topic and returns once the broker acknowledged
it (MQTT 5: a PUBACK *Not authorized* is an error). With MQTT 5 the request carries a
response topic, correlation data and a message expiry (the broker drops a request nobody
fetched in time).

:class:`CommandListener` (``atmfleet command listen``) subscribes to every device's result
and data topic with a persistent session, records what comes in through
:mod:`commands.service` (acknowledging a message only once it is committed), and marks
unanswered commands expired every ``sweep_s``.
"""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
import socket
import threading
import time
from typing import Any

import paho.mqtt.client as mqtt
import psycopg
from paho.mqtt.enums import MQTTErrorCode
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from atmfleet.errors import AtmfleetError
from atmfleet.settings import Settings
from collector.mqtt import BrokerAddress, build_client
from commands import service
from commands.protocol import (
    DATA_ROOT,
    RESULT_ROOT,
    CommandRequest,
    WireError,
    command_topic,
    decode_chunk,
    decode_result,
    device_of,
    encode_request,
)
from rules.config import CommandRules

log = logging.getLogger(__name__)

#: The listener's session outlives a restart by this long (seconds).
LISTENER_SESSION_EXPIRY_S = 86_400


class BrokerUnavailable(AtmfleetError):
    """The broker could not be reached or refused a request."""


def _connect(client: mqtt.Client, settings: Settings, props: Properties | None) -> None:
    address = BrokerAddress.parse(settings.mqtt_url)
    try:
        if settings.mqtt_protocol == "5":
            client.connect(address.host, address.port, 30, clean_start=False, properties=props)
        else:
            client.connect(address.host, address.port, 30)
    except OSError as exc:
        raise BrokerUnavailable(
            f"cannot connect to the broker at {settings.mqtt_url}: {exc}"
        ) from None
    sock = client.socket()
    if isinstance(sock, socket.socket):  # commands are small and interactive: no Nagle delay
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


class BrokerPublisher:
    """One connection for the requests of a CLI run or a web process (a context manager)."""

    def __init__(self, settings: Settings, *, timeout_s: float = 10.0) -> None:
        self._settings = settings
        self._timeout = timeout_s
        # A client id of its own (two CLI runs at once must not take each other's
        # connection); the shipped broker replaces it with the username anyway, so give
        # each long-running sender (a web process) its own operators' identity.
        name = settings.mqtt_username or "atmfleet-ops"
        self._client = build_client(settings, f"{name}-{os.getpid()}-{secrets.token_hex(3)}")
        self._connected = threading.Event()
        self._refused: str | None = None
        self._client.on_connect = self._on_connect

    def _on_connect(self, _c: Any, _u: Any, _f: Any, reason: Any, _p: Any) -> None:
        if reason.is_failure:
            self._refused = str(reason)
        self._connected.set()

    def __enter__(self) -> BrokerPublisher:
        _connect(self._client, self._settings, None)
        self._client.loop_start()
        if not self._connected.wait(self._timeout):
            self.close()
            raise BrokerUnavailable(f"no CONNACK from {self._settings.mqtt_url}")
        if self._refused:
            self.close()
            raise BrokerUnavailable(f"the broker refused us: {self._refused}")
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self._client.disconnect()
        self._client.loop_stop()

    def publish_request(self, request: CommandRequest, expiry_s: int) -> None:
        props: Properties | None = None
        if self._settings.mqtt_protocol == "5":
            props = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
            props.ResponseTopic = request.reply_to
            props.CorrelationData = request.correlation.encode()
            props.MessageExpiryInterval = expiry_s
        info = self._client.publish(
            command_topic(request.device_id), encode_request(request), qos=1, properties=props
        )
        if info.rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
            raise BrokerUnavailable(mqtt.error_string(info.rc))
        info.wait_for_publish(self._timeout)
        if not info.is_published():
            raise BrokerUnavailable(f"no PUBACK within {self._timeout:.0f}s")
        reason = getattr(info, "reason_code", None)  # paho >= 2.0: the PUBACK's reason
        if reason is not None and getattr(reason, "is_failure", False):
            raise BrokerUnavailable(f"the broker refused the request: {reason}")


class CommandListener:
    """Records results and uploads; enforces expiry. ``start()`` / ``stop()``."""

    def __init__(self, settings: Settings, database_url: str, rules: CommandRules) -> None:
        self._settings = settings
        self._rules = rules
        self._url = database_url
        cid = settings.mqtt_username or "atmfleet-commands"
        self._client = build_client(settings, cid)
        self._client.on_connect = self._on_connect
        self._client.on_message = self._on_message
        self._db: psycopg.Connection[Any] | None = None
        self._stop = threading.Event()
        self._sweeper = threading.Thread(target=self._sweep, name="commands-expiry", daemon=True)
        self.subscribed = threading.Event()
        self.handled = 0
        self.errors = 0
        self._client.on_subscribe = lambda *_a: self.subscribed.set()

    # --- life

    def start(self) -> None:
        self._db = psycopg.connect(self._url, autocommit=True, application_name="atmfleet-commands")
        props = None
        if self._settings.mqtt_protocol == "5":
            props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
            props.SessionExpiryInterval = LISTENER_SESSION_EXPIRY_S
        _connect(self._client, self._settings, props)
        self._client.loop_start()
        self._sweeper.start()

    def stop(self) -> None:
        self._stop.set()
        with contextlib.suppress(Exception):
            self._client.disconnect()
        self._client.loop_stop()
        self._sweeper.join(10)
        if self._db is not None:
            self._db.close()

    def run_forever(self, stop: threading.Event) -> None:
        self.start()
        try:
            while not stop.wait(1.0):
                pass
        finally:
            self.stop()

    # --- MQTT

    def _on_connect(self, client: mqtt.Client, _u: Any, _f: Any, reason: Any, _p: Any) -> None:
        if reason.is_failure:
            log.error("the broker refused the commands listener: %s", reason)
            return
        client.subscribe([(f"{RESULT_ROOT}/+", 1), (f"{DATA_ROOT}/+", 1)])

    def _on_message(self, client: mqtt.Client, _u: Any, message: mqtt.MQTTMessage) -> None:
        """Never raises into paho's loop: a bad message is logged, counted and acknowledged;
        a database error leaves it unacknowledged (the broker redelivers it after a
        reconnect)."""
        try:
            self._handle(message)
        except WireError as exc:
            self.errors += 1
            log.warning("%s on %s: dropped", exc, message.topic)
        except psycopg.Error as exc:
            self.errors += 1
            log.error("database error on %s, not acknowledged: %s", message.topic, exc)
            self._reopen()
            return
        except Exception:
            self.errors += 1
            log.exception("unexpected error on %s", message.topic)
        self.handled += 1
        client.ack(message.mid, message.qos)

    def _reopen(self) -> None:
        with contextlib.suppress(Exception):
            if self._db is not None:
                self._db.close()
        self._db = None
        with contextlib.suppress(psycopg.Error):
            self._db = psycopg.connect(self._url, autocommit=True)

    def _handle(self, message: mqtt.MQTTMessage) -> None:
        if self._db is None:
            raise psycopg.OperationalError("no database connection")
        topic = message.topic
        device = device_of(topic, RESULT_ROOT)
        if device is not None:
            msg = decode_result(bytes(message.payload))
            correlation = _correlation(message) or msg.correlation
            if correlation is not None and correlation != msg.command_id:
                raise WireError(f"correlation {correlation!r} is not {msg.command_id!r}")
            outcome = service.apply_result(self._db, device, msg, self._rules)
            log.info("%s %s from %s: %s", msg.command_id, msg.result.value, device, outcome)
            return
        device = device_of(topic, DATA_ROOT)
        if device is not None:
            header, data = decode_chunk(bytes(message.payload))
            service.add_chunk(self._db, device, header, data, self._rules)
            return
        raise WireError("not a result or data topic")

    # --- expiry

    def _sweep(self) -> None:
        conn: psycopg.Connection[Any] | None = None
        while not self._stop.wait(self._rules.sweep_s):
            try:
                if conn is None:
                    conn = psycopg.connect(self._url, autocommit=True)
                expired = service.expire_due(conn)
                if expired:
                    log.info("expired: %s", ", ".join(expired))
            except psycopg.Error as exc:
                log.error("expiry sweep failed: %s", exc)
                with contextlib.suppress(Exception):
                    if conn is not None:
                        conn.close()
                conn = None
                time.sleep(1.0)
        if conn is not None:
            conn.close()


def _correlation(message: mqtt.MQTTMessage) -> str | None:
    props = getattr(message, "properties", None)
    data = getattr(props, "CorrelationData", None) if props is not None else None
    if not data:
        return None
    try:
        return bytes(data).decode()
    except UnicodeDecodeError:
        return None
