"""``atmfleet notify serve``: the Alertmanager webhook receiver and the delivery worker.

HTTP (one port):

- ``POST /alertmanager/<route>``: an Alertmanager webhook (payload version 4). Who may:
  the holder of the receiver's bearer token or basic-auth password (from the environment
  or a file, never the config); anyone else gets 401 and a log line. An accepted group is
  rendered (zh-CN, local time), enqueued for the route's recipients and written to the
  audit log (actor ``alertmanager``, surface ``notify-webhook``) in one transaction; only
  then is 200 answered, so a failure answers 5xx and Alertmanager retries.
- ``GET /metrics``: the notifier's metrics. ``GET /-/healthy``.

The worker thread tails ``incident_events`` and empties the outbox every ``poll_s``.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import json
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from zoneinfo import ZoneInfo

import psycopg
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from atmfleet.errors import ConfigError
from atmfleet.store.audit import Actor, record
from atmfleet.store.connect import connect
from notify import alertmanager, incidents
from notify.channels import Sender
from notify.config import NotifyConfig, Receiver
from notify.messages import Texts
from notify.metrics import NotifyCollector
from notify.outbox import UNROUTED, count, dispatch, enqueue, resolve

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Credentials:
    token: str | None
    user: str | None
    password: str | None

    @classmethod
    def of(cls, receiver: Receiver) -> Credentials:
        token = (
            receiver.bearer_token.read("receiver.bearer_token") if receiver.bearer_token else None
        )
        password = (
            receiver.basic_password.read("receiver.basic_password")
            if receiver.basic_password
            else None
        )
        return cls(token, receiver.basic_user, password)

    def check(self, header: str | None) -> str | None:
        """The authenticated name (``alertmanager`` for the token, else the basic user),
        or None."""
        if not header:
            return None
        scheme, _, value = header.partition(" ")
        if scheme.lower() == "bearer" and self.token is not None:
            return "alertmanager" if hmac.compare_digest(value.strip(), self.token) else None
        if scheme.lower() == "basic" and self.user is not None and self.password is not None:
            try:
                user, _, password = base64.b64decode(value.strip()).decode("utf-8").partition(":")
            except (binascii.Error, UnicodeDecodeError):
                return None
            ok = hmac.compare_digest(user, self.user) & hmac.compare_digest(password, self.password)
            return user if ok else None
        return None


def accept_alerts(
    conn: psycopg.Connection[Any],
    config: NotifyConfig,
    tz: ZoneInfo,
    route: str,
    payload: dict[str, Any],
    who: str,
) -> int:
    """Enqueue one Alertmanager notification for ``route``'s recipients and audit it, in
    one transaction; returns the number of outbox rows."""
    assert config.receiver is not None
    keys = config.receiver.routes[route]
    title, body = alertmanager.render(payload, tz, Texts(config.lang))
    rows = 0
    with conn.transaction():
        targets: list[str] = []
        for key in keys:
            resolved = resolve(config, key)
            if not resolved:
                log.warning("alertmanager route %s: recipient %s maps to no channel", route, key)
                count(conn, UNROUTED, "failed")
            for target in resolved:
                enqueue(
                    conn, config, target, source="alertmanager", title=title, body=body,
                    recipient=key,
                )  # fmt: skip
                targets.append(target.channel)
                rows += 1
        alerts = payload.get("alerts") or []
        record(
            conn,
            Actor(who, "notify-webhook"),
            "notify.alerts.accept",
            "alert_group",
            str(payload.get("groupKey", ""))[:200],
            after={
                "route": route,
                "status": payload.get("status"),
                "alerts": len(alerts),
                "alertnames": sorted({str(a.get("labels", {}).get("alertname")) for a in alerts}),
                "channels": sorted(set(targets)),
            },
        )
    return rows


class Worker:
    """Tails incident events and empties the outbox, every ``poll_s``, until stopped."""

    def __init__(
        self, url: str, config: NotifyConfig, senders: dict[str, Sender], tz: ZoneInfo
    ) -> None:
        self.url = url
        self.config = config
        self.senders = senders
        self.tz = tz
        self.stop = threading.Event()
        self.wake = threading.Event()
        self.thread = threading.Thread(target=self.run, name="notify-worker", daemon=True)

    def once(self, conn: psycopg.Connection[Any] | None = None) -> None:
        if conn is None:
            with connect(self.url, application_name="atmfleet-notify", autocommit=True) as c:
                self.once(c)
            return
        while incidents.tail(conn, self.config, self.tz) == incidents.BATCH:
            pass
        dispatch(conn, self.config, self.senders)

    def run(self) -> None:
        conn: psycopg.Connection[Any] | None = None
        failures = 0
        while not self.stop.is_set():
            try:
                if conn is None or conn.closed:
                    conn = connect(self.url, application_name="atmfleet-notify", autocommit=True)
                self.once(conn)
                failures = 0
            except (psycopg.Error, ConfigError) as exc:
                failures += 1
                log.error("notify worker: store error %s; retrying", type(exc).__name__)
                if conn is not None:
                    conn.close()
                conn = None
            except Exception:
                failures += 1
                log.exception("notify worker: unexpected error; retrying")
            # After errors, wait longer (capped at a minute) instead of hammering the store.
            wait = min(60.0, self.config.poll_s * 2 ** min(failures, 6))
            self.wake.wait(wait if failures else self.config.poll_s)
            self.wake.clear()
        if conn is not None:
            conn.close()


def make_server(
    host: str,
    port: int,
    url: str,
    config: NotifyConfig,
    tz: ZoneInfo,
    on_accept: Callable[[], None] = lambda: None,
) -> ThreadingHTTPServer:
    """The HTTP server (not started)."""
    if config.receiver is None:
        raise ConfigError("receiver: missing; `notify serve` needs its routes and credentials")
    receiver = config.receiver
    creds = Credentials.of(receiver)
    registry = CollectorRegistry()

    registry.register(
        NotifyCollector(
            lambda: connect(url, application_name="atmfleet-notify-metrics", autocommit=True)
        )
    )

    class Handler(BaseHTTPRequestHandler):
        server_version = "atmfleet-notify"

        def _answer(self, code: int, text: str, ctype: str = "text/plain; charset=utf-8") -> None:
            data = text.encode("utf-8")
            self.send_response(code)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(data)))
            if code == 401:
                self.send_header("WWW-Authenticate", 'Bearer realm="atmfleet"')
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self) -> None:
            if self.path == "/metrics":
                data = generate_latest(registry).decode("utf-8")
                self._answer(200, data, CONTENT_TYPE_LATEST)
            elif self.path == "/-/healthy":
                self._answer(200, "OK\n")
            else:
                self._answer(404, "not found\n")

        def do_POST(self) -> None:
            prefix = "/alertmanager/"
            if not self.path.startswith(prefix):
                self._answer(404, "not found\n")
                return
            route = self.path[len(prefix) :].strip("/")
            who = creds.check(self.headers.get("Authorization"))
            if who is None:
                log.warning(
                    "refused a webhook from %s: no valid credentials", self.client_address[0]
                )
                self._answer(401, "unauthorized\n")
                return
            if route not in receiver.routes:
                self._answer(
                    404, f"no route {route!r}; routes: {', '.join(sorted(receiver.routes))}\n"
                )
                return
            try:
                length = int(self.headers.get("Content-Length") or 0)
            except ValueError:
                self._answer(400, "bad Content-Length\n")
                return
            if length > receiver.max_body_bytes:
                self._answer(413, "too large\n")
                return
            try:
                payload = json.loads(self.rfile.read(length))
                if not isinstance(payload, dict) or not isinstance(payload.get("alerts"), list):
                    raise ValueError("not an Alertmanager payload")
            except ValueError as exc:
                self._answer(400, f"bad payload: {exc}\n")
                return
            try:
                with connect(url, application_name="atmfleet-notify", autocommit=True) as conn:
                    rows = accept_alerts(conn, config, tz, route, payload, who)
            except (psycopg.Error, ConfigError) as exc:
                log.error("webhook %s: store error %s", route, type(exc).__name__)
                self._answer(503, "store unavailable\n")
                return
            log.info(
                "webhook %s from %s: %d alert(s), %d outbox row(s)",
                route,
                who,
                len(payload["alerts"]),
                rows,
            )
            on_accept()
            self._answer(200, "accepted\n")

        def log_message(self, format: str, *args: Any) -> None:
            log.debug("%s %s", self.client_address[0], format % args)

    return ThreadingHTTPServer((host, port), Handler)
