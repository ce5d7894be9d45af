"""The collector service: the paho network thread receives, the batch loop has each batch
stored by the store worker (a child process, :mod:`collector.worker`) and acknowledges it.

Delivery guarantee: a message is acknowledged (PUBACK) only after the transaction that
stores it (or dead-letters it) has committed, in arrival order; acknowledgements go only
to the connection the message arrived on. A crash before the acknowledgement makes the
broker redeliver, and the store ignores what it already holds: at-least-once delivery,
exactly-once rows.
"""

from __future__ import annotations

import logging
import socket
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import paho.mqtt.client as mqtt
import psycopg
from paho.mqtt.reasoncodes import ReasonCode
from paho.mqtt.subscribeoptions import SubscribeOptions

from atmfleet.errors import AtmfleetError
from atmfleet.protocol import LEGACY_SUBSCRIPTIONS, MAX_PAYLOAD_BYTES, QOS, SUBSCRIPTIONS
from atmfleet.settings import Settings
from atmfleet.store import liveness
from atmfleet.store.connect import ErrorClass, classify, redact_url
from atmfleet.store.migrate import require_current
from atmfleet.store.writer import DEAD_LETTER_PAYLOAD_BYTES
from collector.buffer import Buffer, Inbound, Put
from collector.mqtt import (
    MAX_HELD_TOPIC_CHARS,
    BrokerAddress,
    build_client,
    connect_properties,
    receive_maximum,
)
from collector.stats import CollectorStats
from collector.worker import Failure, Outcome, StoreWorker

log = logging.getLogger(__name__)

#: How long a stopping collector keeps retrying the database before it gives up (what it
#: has not acknowledged is redelivered to the next run).
SHUTDOWN_GRACE_S = 10.0
#: No beat from any collector for this many liveness intervals = an outage.
OUTAGE_THRESHOLD_INTERVALS = 3


class CollectorFatal(AtmfleetError):
    """The collector cannot continue (e.g. the schema is missing); nothing was acknowledged."""


def subscriptions(share_group: str | None, topics: Sequence[str] = SUBSCRIPTIONS) -> list[str]:
    if not share_group:
        return list(topics)
    return [f"$share/{share_group}/{topic}" for topic in topics]


@dataclass(frozen=True)
class Connector:
    """Opens database connections (a dataclass, so that it can be sent to the store worker)."""

    url: str
    application_name: str

    def __call__(self) -> psycopg.Connection:
        return psycopg.connect(self.url, application_name=self.application_name, connect_timeout=10)


class Collector:
    def __init__(
        self,
        settings: Settings,
        stats: CollectorStats,
        *,
        client_id: str | None = None,
        connect_db: Callable[[], psycopg.Connection] | None = None,
    ) -> None:
        """``connect_db`` opens the database connections, the store worker's too (so it
        must pickle, like :class:`Connector`)."""
        self._settings = settings
        self._cs = settings.collector
        self._stats = stats
        self.client_id = client_id or self._cs.client_id
        self._connect_db = connect_db or Connector(
            settings.require_database_url(), f"atmfleet-collector {self.client_id}"
        )
        self._buffer = Buffer(receive_maximum(settings), self._cs.max_buffered_bytes)
        self._stats.buffered.set_function(lambda: self._buffer.held)
        self._stats.buffered_bytes.set_function(lambda: self._buffer.held_bytes)
        # Measured here, at each scrape: a stuck store worker makes it grow.
        self._stats.lag.set_function(self._buffer.lag_seconds)
        self._ack_lock = threading.Lock()
        self._generation = 0
        self._accepting = True
        self._conn: psycopg.Connection | None = None  # liveness; batches: the worker's own
        self._worker = StoreWorker(
            self._connect_db,
            self.client_id,
            self._cs.retry_max_backoff_s,
            on_commit=self._committed,
            on_failure=self._failed,
        )
        self.run_id = uuid.uuid4()
        self._client = build_client(settings, self.client_id)
        self._client.on_connect = self._on_connect
        self._client.on_disconnect = self._on_disconnect
        self._client.on_message = self._on_message
        self._client.on_subscribe = self._on_subscribe
        self._client.on_unsubscribe = self._on_unsubscribe
        self._client.on_connect_fail = self._on_connect_fail
        # The brokers of one cluster, tried in turn (ATMFLEET_MQTT_URLS): the next one after
        # a lost connection or a failed attempt.
        self._brokers = settings.broker_urls()
        self._broker = 0
        self._subscribed = False
        self._unsubscribing: int | None = None  # mid of the legacy unsubscription
        self._known_client = False  # a previous run used this client id
        self._connected_before = False
        # Lost sessions so far and when the last was met (written by the network thread,
        # recorded in collector_runs by the batch loop).
        self._sessions_lost: tuple[int, datetime | None] = (0, None)
        self._sessions_recorded = 0
        self._sessions_beaten = 0
        self._drop_logged = -60.0
        self.connected = threading.Event()

    def _session_expected(self) -> bool:
        """A session should exist: this client id connected before (in this process, or a
        previous run), and the session outlives a disconnection."""
        if self._settings.mqtt_protocol == "5" and self._cs.session_expiry_s == 0:
            return False
        return self._connected_before or self._known_client

    # -- MQTT callbacks (network thread; must never raise) ---------------------------------

    def _on_connect(
        self, client: mqtt.Client, _u: Any, flags: Any, reason: ReasonCode, _p: Any
    ) -> None:
        if reason.is_failure:
            log.error("broker %s refused the connection: %s", self.broker_url, reason)
            return
        self._stats.mqtt_connects.inc()
        self._stats.mqtt_connected.set(1)
        expected = self._session_expected()
        self._connected_before = True
        if flags.session_present:
            # What waits from the previous connection cannot be acknowledged; the broker
            # sends it again on this one (so it is not held twice).
            with self._ack_lock:
                generation = self._generation
            if dropped := self._buffer.discard_unacknowledgeable(generation):
                log.info("%d messages of the previous connection will be redelivered", dropped)
        if expected and not flags.session_present:
            self._stats.mqtt_sessions_lost.inc()
            self._sessions_lost = (self._sessions_lost[0] + 1, datetime.now(UTC))
            log.warning(
                "connected to %s as %s, but the broker had lost this client's session "
                "(session present: False): messages it held for the collector while away "
                "may be lost; their seq gaps show in the sequence_gaps view",
                self.broker_url,
                self.client_id,
            )
        else:
            log.info(
                "connected to %s as %s (session present: %s)",
                self.broker_url,
                self.client_id,
                flags.session_present,
            )
        topics = subscriptions(self._cs.share_group)
        if self._settings.mqtt_protocol == "5":
            # retainHandling 1: retained messages only for a new subscription, not again on
            # every reconnect of the persistent session.
            options = SubscribeOptions(qos=QOS, retainHandling=1)
            client.subscribe([(t, options) for t in topics])
        else:
            client.subscribe([(t, QOS) for t in topics])
        if flags.session_present:  # after subscribing: no moment without a subscription
            _rc, mid = client.unsubscribe(subscriptions(self._cs.share_group, LEGACY_SUBSCRIPTIONS))
            self._unsubscribing = mid

    def _on_subscribe(self, _c: mqtt.Client, _u: Any, _mid: int, reasons: Any, _p: Any) -> None:
        failed = [r for r in reasons if r.is_failure]
        if failed:
            log.error("subscription refused: %s", failed)
            return
        self._subscribed = True
        if self._unsubscribing is None:
            self.connected.set()

    def _on_unsubscribe(self, _c: mqtt.Client, _u: Any, mid: int, _r: Any, _p: Any) -> None:
        # "No subscription existed" is fine: the old subscriptions are gone either way.
        if mid == self._unsubscribing:
            self._unsubscribing = None
            if self._subscribed:
                self.connected.set()

    def _on_disconnect(
        self, _c: mqtt.Client, _u: Any, _flags: Any, reason: ReasonCode, _p: Any
    ) -> None:
        with self._ack_lock:
            self._generation += 1  # nothing received so far may be acknowledged any more
        self._stats.mqtt_connected.set(0)
        self.connected.clear()
        self._subscribed = False
        self._unsubscribing = None
        if self._accepting:
            log.warning(
                "disconnected from the broker %s (%s); reconnecting", self.broker_url, reason
            )
            self._next_broker()

    def _on_connect_fail(self, _c: mqtt.Client, _u: Any) -> None:
        if self._accepting:
            log.warning("cannot connect to the broker %s; retrying", self.broker_url)
            self._next_broker()

    @property
    def broker_url(self) -> str:
        """The broker connected to, or tried next."""
        return self._brokers[self._broker]

    def _next_broker(self) -> None:
        """Point the client at the next broker of the list (network thread, connection closed)."""
        if len(self._brokers) < 2:
            return
        self._broker = (self._broker + 1) % len(self._brokers)
        address = BrokerAddress.parse(self.broker_url)
        # paho's host/port setters refuse while the state is "connection lost" (the state
        # its own reconnect loop is in here); its reconnect() reads these two fields.
        self._client._host = address.host
        self._client._port = address.port

    def _on_message(self, _c: mqtt.Client, _u: Any, message: mqtt.MQTTMessage) -> None:
        try:
            self._stats.received.inc()
            if not self._accepting:
                return  # stopping: left unacknowledged, redelivered to the next run
            payload = message.payload
            size = len(payload)
            if size > MAX_PAYLOAD_BYTES:  # refused anyway: hold only what the dead letter keeps
                payload = payload[:DEAD_LETTER_PAYLOAD_BYTES]
            topic = message.topic  # a valid topic is < 100 characters
            item = Inbound(
                mid=message.mid,
                qos=message.qos,
                topic=topic if len(topic) <= MAX_HELD_TOPIC_CHARS else topic[:MAX_HELD_TOPIC_CHARS],
                payload=bytes(payload),
                received=time.time(),
                generation=self._generation,
                size=size,
            )
            # Never waits: Receive Maximum keeps QoS 1 messages within the bounds.
            if self._buffer.put(item) is Put.FULL:
                self._stats.dropped.labels("qos0_overflow").inc()
                now = time.monotonic()
                if now - self._drop_logged >= 60:
                    self._drop_logged = now
                    log.warning(
                        "buffer full: dropping QoS 0 messages (the protocol requires QoS 1; "
                        "last on %r)",
                        topic[:200],
                    )
        except Exception:
            log.exception("message on %r could not be buffered; it will be redelivered", message)

    # -- the writer loop (caller's thread) --------------------------------------------------

    def run(self, stop: threading.Event) -> None:
        """Collect until ``stop`` is set, then flush, acknowledge and disconnect."""
        self._open_db(stop)
        require_current(self._db())
        self._worker.start()  # its start-up (imports) overlaps the broker's connection
        self._known_client = liveness.known_collector(self._db(), self.client_id)
        outage = liveness.start_run(
            self._db(),
            self.run_id,
            self.client_id,
            socket.gethostname(),
            timedelta(seconds=OUTAGE_THRESHOLD_INTERVALS * self._cs.liveness_interval_s),
        )
        if outage:
            log.warning("no collector was alive from %s to %s", outage.started_at, outage.ended_at)
        address = BrokerAddress.parse(self.broker_url)
        self._client.connect_async(
            address.host,
            address.port,
            keepalive=self._cs.keepalive_s,
            clean_start=False,
            properties=connect_properties(self._settings),
        )
        self._client.loop_start()
        next_beat = time.monotonic() + self._cs.liveness_interval_s
        pending: list[Inbound] = []  # taken, not yet sent (the worker has enough)
        try:
            while not stop.is_set():
                self._raise_if_fatal()
                if not pending:
                    pending = self._buffer.take(
                        self._cs.batch_size,
                        self._cs.batch_max_bytes,
                        self._cs.flush_interval_s,
                        idle_s=min(self._cs.flush_interval_s, 0.5),
                    )
                if pending and self._worker.submit(pending, deadline=time.monotonic() + 0.5):
                    pending = []
                if time.monotonic() >= next_beat or self._sessions_lost[0] > self._sessions_beaten:
                    self._sessions_beaten = self._sessions_lost[0]  # an extra beat records it
                    self._beat()
                    next_beat = time.monotonic() + self._cs.liveness_interval_s
            self._raise_if_fatal()
            self._drain(pending)
        finally:
            self._client.disconnect()
            self._client.loop_stop()
            self._stats.mqtt_connected.set(0)
            self._worker.close()
            self._close_db()

    def _drain(self, pending: list[Inbound]) -> None:
        """Stop taking messages, store and acknowledge what is held, mark the run stopped."""
        self._accepting = False
        self._buffer.close()
        deadline = time.monotonic() + SHUTDOWN_GRACE_S
        batch = pending
        while batch or (
            batch := self._buffer.take(
                self._cs.batch_size, self._cs.batch_max_bytes, 0.0, idle_s=0.0
            )
        ):
            if not self._worker.submit(batch, deadline=deadline):
                break
            batch = []
        if batch or not self._worker.wait_answered(deadline):
            self._raise_if_fatal()
            log.warning("stopping with messages unacknowledged; the broker will redeliver")
            return
        self._mark_stopped(deadline)
        log.info("stopped: everything received was stored and acknowledged")

    def _mark_stopped(self, deadline: float) -> None:
        """Write the run's ``stopped_at``, on a new connection if the liveness one is gone
        (a failed beat closed it, or its backend was terminated): retried until
        ``deadline``. Not being able to is a warning, not a failure: everything was stored."""
        backoff = 0.1
        while True:
            try:
                if self._conn is None or self._conn.closed:
                    self._conn = self._connect_db()
                liveness.stop_run(self._conn, self.run_id)
                return
            except (psycopg.Error, OSError) as exc:
                self._close_db()
                if time.monotonic() + backoff >= deadline:
                    log.warning("could not mark the run stopped: %s", exc)
                    return
                log.info("marking the run stopped failed (%s); retrying", exc)
                time.sleep(backoff)
                backoff = min(backoff * 2, 2.0)

    # -- the store worker's answers (its reader thread) -----------------------------------

    def _committed(
        self, batch: list[Inbound], result: Outcome, seconds: float, sent: float
    ) -> None:
        answered = time.monotonic()
        self._ack(batch)
        now = datetime.now(UTC)
        self._stats.batch_seconds.observe(seconds)
        phases = self._stats.batch_phase_seconds
        phases.labels("held").observe(max(0.0, sent - batch[0].arrived))
        if len(result.marks) == 4:
            received, decoded, started, committed = result.marks
            phases.labels("to_worker").observe(max(0.0, received - sent))
            phases.labels("decode").observe(decoded - received)
            phases.labels("queued").observe(started - decoded)
            phases.labels("answer").observe(max(0.0, answered - committed))
        for name, part in result.seconds.items():
            phases.labels(name).observe(part)
        phases.labels("ack").observe(time.monotonic() - answered)
        self._stats.batch_messages.observe(len(batch))
        self._stats.last_commit.set(now.timestamp())
        for stored_kind, n in result.stored.items():
            self._stats.stored.labels(stored_kind).inc(n)
        self._stats.duplicates.inc(result.duplicates)
        for topic, reason in result.dead:
            self._stats.rejected.labels(reason).inc()
            log.info("dead-lettered a message on %r: %s", topic[:200], reason)

    def _failed(self, failure: Failure) -> None:
        self._stats.db_errors.labels(failure.kind).inc()
        if failure.error_class is ErrorClass.TEMPORARY:
            log.warning("temporary database error (%s); retrying", failure.message)

    def _raise_if_fatal(self) -> None:
        failure = self._worker.fatal
        if failure is None:
            return
        sqlstate = failure.sqlstate or ""
        hint = (
            "; is the schema current (`atmfleet db upgrade`) and may this user write?"
            if sqlstate[:2] in ("42", "3F")
            else ""
        )
        raise CollectorFatal(
            f"database error {sqlstate or '(client side)'} while storing a batch: "
            f"{failure.message} (that batch and what came after it were not "
            f"acknowledged{hint})"
        )

    def _ack(self, batch: Sequence[Inbound]) -> None:
        with self._ack_lock:
            generation = self._generation
            for item in batch:  # arrival order
                if item.qos > 0 and item.generation == generation:
                    self._client.ack(item.mid, item.qos)
        self._buffer.release(batch)

    def _beat(self) -> None:
        try:
            if self._conn is None or self._conn.closed:
                # One attempt per beat: the batch loop must not wait for the database here.
                self._conn = self._connect_db()
            conn = self._conn
            liveness.beat(conn, self.run_id)
            lost, last = self._sessions_lost
            if lost != self._sessions_recorded and last is not None:
                liveness.record_sessions_lost(conn, self.run_id, lost, last)
                self._sessions_recorded = lost
            self._stats.last_commit.set(datetime.now(UTC).timestamp())
            self._stats.sequence_gaps.set(liveness.missing_messages(conn))
        except (psycopg.Error, OSError) as exc:
            self._stats.db_errors.labels(classify(exc).value).inc()
            log.warning("liveness beat failed: %s", exc)
            self._close_db()

    # -- database connection -------------------------------------------------------------

    def _open_db(self, stop: threading.Event) -> None:
        backoff = 0.5
        while True:
            try:
                self._conn = self._connect_db()
                return
            except psycopg.OperationalError as exc:
                self._stats.db_errors.labels(ErrorClass.TEMPORARY.value).inc()
                log.warning("cannot connect to the database (%s); retrying in %.1fs", exc, backoff)
                if stop.wait(backoff):
                    raise CollectorFatal("stopped before the database was reachable") from exc
                backoff = min(backoff * 2, self._cs.retry_max_backoff_s)

    def _db(self) -> psycopg.Connection:
        assert self._conn is not None
        return self._conn

    def _close_db(self) -> None:
        if self._conn is not None:
            try:
                self._conn.close()
            except Exception:  # closing a broken connection must not mask the real error
                log.debug("error while closing the database connection", exc_info=True)
        self._conn = None


def describe(settings: Settings) -> str:
    """A start-up line with no secret in it."""
    db = redact_url(settings.database_url.get_secret_value()) if settings.database_url else "-"
    return (
        f"collector {settings.collector.client_id}: broker {', '.join(settings.broker_urls())} "
        f"(MQTT {settings.mqtt_protocol}), database {db}, "
        f"share group {settings.collector.share_group or '-'}"
    )
