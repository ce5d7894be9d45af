"""Remote commands in the console: every read and write goes through
:mod:`commands.service` (``send``, ``list_commands``, ``show``, ``journal``), which checks
the role (viewer reads, operator sends and reads journals) and the org scope, stores the
command and its history and writes the audit row. This module only adapts: a pooled
connection in autocommit (the service commits its own transactions, and hands the request
to the broker only after its row is committed), a command outside the caller's scope as
404, and one broker connection for the whole console process.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from datetime import datetime
from typing import Any

import psycopg

from atmfleet.errors import Forbidden, UsageError
from atmfleet.settings import Settings
from commands import service
from commands.protocol import DISRUPTIVE, FINAL, CommandKind, CommandRequest
from rules.config import Rules
from web.auth import Principal
from web.ops import NotFound

Conn = psycopg.Connection[Any]

#: The kinds the console offers, in the order of its buttons.
KINDS = tuple(k.value for k in CommandKind)
DISRUPTIVE_KINDS = frozenset(k.value for k in DISRUPTIVE)
FINAL_STATES = frozenset(s.value for s in FINAL)


class ConsolePublisher:
    """One broker connection (``commands.mqtt.BrokerPublisher``) opened at the first send
    and reopened after a failure; a send that finds no broker fails (the service marks the
    command ``failed`` with the reason) instead of hanging the page."""

    def __init__(self, settings: Settings, timeout_s: float = 10.0) -> None:
        self._settings = settings
        self._timeout = timeout_s
        self._lock = threading.Lock()
        self._open: Any = None

    @property
    def where(self) -> str:
        return self._settings.mqtt_url

    def publish_request(self, request: CommandRequest, expiry_s: int) -> None:
        from commands.mqtt import BrokerPublisher

        with self._lock:
            if self._open is None:
                self._open = BrokerPublisher(self._settings, timeout_s=self._timeout).__enter__()
            try:
                self._open.publish_request(request, expiry_s)
            except Exception:
                self._close()
                raise

    def _close(self) -> None:
        if self._open is not None:
            with contextlib.suppress(Exception):
                self._open.close()
        self._open = None

    def close(self) -> None:
        with self._lock:
            self._close()


@contextlib.contextmanager
def autocommit(conn: Conn) -> Iterator[Conn]:
    """The pooled connection in autocommit for the service, restored afterwards."""
    if conn.info.transaction_status != psycopg.pq.TransactionStatus.IDLE:
        conn.commit()
    conn.autocommit = True
    try:
        yield conn
    finally:
        conn.autocommit = False


def _iso(value: datetime | None) -> str | None:
    return None if value is None else value.isoformat()


def as_dict(cmd: service.Command) -> dict[str, Any]:
    """A command as the API returns it (times ISO 8601 with their offset)."""
    return {
        "id": cmd.id, "device_id": cmd.device_id, "kind": cmd.kind, "params": cmd.params,
        "state": cmd.state, "final": cmd.state in FINAL_STATES,
        "requested_by": cmd.requested_by, "surface": cmd.surface,
        "created_at": _iso(cmd.created_at), "expires_at": _iso(cmd.expires_at),
        "updated_at": _iso(cmd.updated_at), "finished_at": _iso(cmd.finished_at),
        "reason": cmd.reason, "result": cmd.result,
        "history": [{"at": _iso(e.at), "state": e.state, "source": e.source,
                     "detail": e.detail} for e in cmd.history],
        "journal_bytes": cmd.journal_bytes,
    }  # fmt: skip


def _hidden(exc: Forbidden) -> NotFound:
    return NotFound(f"not found, or outside your scope ({exc})")


def show(conn: Conn, who: Principal, command_id: str) -> service.Command:
    """A command of the caller's scope with its history (404 outside it)."""
    try:
        with autocommit(conn):
            return service.show(conn, who.actor, command_id)
    except Forbidden as exc:
        if who.user.may("viewer"):
            raise _hidden(exc) from None
        raise
    except UsageError as exc:
        if str(exc).startswith("no command"):
            raise NotFound(str(exc)) from None
        raise


def listing(
    conn: Conn, who: Principal, device_id: str | None = None, state: str | None = None,
    limit: int = 50,
) -> list[service.Command]:  # fmt: skip
    with autocommit(conn):
        return service.list_commands(conn, who.actor, device_id=device_id, state=state,
                                     limit=limit)  # fmt: skip


def send(
    conn: Conn, who: Principal, rules: Rules, publisher: Any, device_id: str, kind: str,
    params: dict[str, Any], confirm: bool, expires_s: int | None = None,
) -> service.Command:  # fmt: skip
    """Send through the service (operator, inside the scope, disruptive ones confirmed);
    the device must be one the caller sees (the route checked it: 404 otherwise)."""
    if publisher is None:
        who.require("operator")
        raise UsageError("no MQTT broker is configured for the console: commands cannot be sent")
    with autocommit(conn):
        return service.send(conn, who.actor, device_id, kind, publisher=publisher,
                            rules=rules.commands, params=params, confirm=confirm,
                            expires_s=expires_s)  # fmt: skip


def journal(conn: Conn, who: Principal, command_id: str) -> bytes:
    show(conn, who, command_id)  # 404 outside the scope
    who.require("operator")
    with autocommit(conn):
        return service.journal(conn, who.actor, command_id)


def journal_response(conn: Conn, who: Principal, command_id: str) -> Any:
    """The journal as a download (pages and API alike)."""
    from fastapi.responses import Response

    data = journal(conn, who, command_id)
    return Response(data, media_type="application/octet-stream", headers={
        "Content-Disposition": f"attachment; filename=journal-{command_id}.txt"})  # fmt: skip


def journal_params(values: dict[str, str], tz: Any) -> dict[str, Any]:
    """The journal's range from the form (local date-times) as the service takes it."""
    out: dict[str, Any] = {}
    for key in ("since", "until"):
        raw = (values.get(key) or "").strip()
        if not raw:
            raise UsageError(f"journal: give {key} (a local date and time)")
        try:
            at = datetime.fromisoformat(raw)
        except ValueError:
            raise UsageError(f"journal: {key} {raw!r} is not a date and time") from None
        out[key] = (at if at.tzinfo else at.replace(tzinfo=tz)).isoformat()
    what = values.get("what") or "journal"
    out["what"] = what
    return out
