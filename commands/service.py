"""Remote commands: send, list, show, fetch a journal, and record what devices answer.

Every surface (the ``atmfleet command`` CLI, the web console) calls these functions; they
check the role and the organisation scope, and write the command, its state history and an
``audit_log`` row in one transaction. Who may do what:

- ``list`` / ``show``: a viewer or above, for devices inside their scope;
- ``send``: an operator or above, for devices inside their scope; ``restart`` and
  ``out_of_service`` also need ``confirm=True`` (the CLI's ``--yes`` or its prompt);
- ``journal`` (read an uploaded journal: customer transactions): an operator or above.

Connections passed in must be in autocommit mode: each function commits its own
transactions, and ``send`` hands the request to the broker only after its row is committed
(so that the listener finds it when the device answers, however fast).
"""

from __future__ import annotations

import hashlib
import logging
import secrets
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

import psycopg
from psycopg.types.json import Jsonb

from atmfleet.errors import Forbidden, UsageError
from atmfleet.store.audit import Actor, User, record, require_role
from commands.protocol import (
    DISRUPTIVE,
    FINAL,
    RANK,
    ChunkHeader,
    CommandKind,
    CommandRequest,
    ResultMessage,
    State,
    WireError,
    parse_range,
    result_topic,
)
from rules.config import CommandRules

log = logging.getLogger(__name__)

OPEN_STATES = (State.QUEUED.value, State.SENT.value, State.ACCEPTED.value)
_COLUMNS = (
    "c.id, c.device_id, c.kind, c.params, c.state, c.requested_by, c.surface, c.created_at,"
    " c.expires_at, c.updated_at, c.finished_at, c.reason, c.result"
)


@dataclass(frozen=True)
class Event:
    at: datetime
    state: str
    source: str
    detail: dict[str, Any] | None


@dataclass(frozen=True)
class Command:
    id: str
    device_id: str
    kind: str
    params: dict[str, Any]
    state: str
    requested_by: str
    surface: str
    created_at: datetime
    expires_at: datetime
    updated_at: datetime
    finished_at: datetime | None
    reason: str | None
    result: dict[str, Any] | None
    history: tuple[Event, ...] = field(default=())
    journal_bytes: int | None = None


class Publisher(Protocol):
    """Hands a request to the broker (QoS 1) and returns once the broker has it; raises
    :class:`OSError` (or any :class:`Exception`) when it could not."""

    def publish_request(self, request: CommandRequest, expiry_s: int) -> None: ...


def new_command_id(now: datetime) -> str:
    return f"{now.astimezone(UTC):%Y%m%d%H%M%S}-{secrets.token_hex(4)}"


# --------------------------------------------------------------------------- scope


def _org(conn: psycopg.Connection[Any], device_id: str, *, active: bool = False) -> tuple[str, str]:
    row = conn.execute(
        "SELECT d.branch, b.subbranch, d.decommissioned FROM devices d"
        " JOIN branches b ON b.id = d.branch WHERE d.id = %s",
        (device_id,),
    ).fetchone()
    if row is None:
        raise UsageError(f"device {device_id!r} is not in the inventory")
    if active and row[2] is not None:
        raise UsageError(f"device {device_id!r} is decommissioned")
    return str(row[0]), str(row[1])


def _covers(user: User, branch: str, subbranch: str) -> bool:
    if user.scope_kind == "fleet":
        return True
    if user.scope_kind == "subbranch":
        return user.scope_id == subbranch
    return user.scope_id == branch


def _require(
    conn: psycopg.Connection[Any], actor: Actor, role: str, device_id: str, *, active: bool = False
) -> User:
    user = require_role(conn, actor, role)
    branch, subbranch = _org(conn, device_id, active=active)
    if not _covers(user, branch, subbranch):
        raise Forbidden(
            f"user {actor.name!r} may act on {user.scope_kind} {user.scope_id}; "
            f"device {device_id} is in branch {branch} ({subbranch})"
        )
    return user


def _scope_sql(user: User) -> tuple[str, list[Any]]:
    if user.scope_kind == "fleet":
        return "", []
    column = "b.subbranch" if user.scope_kind == "subbranch" else "d.branch"
    return f" AND {column} = %s", [user.scope_id]


# --------------------------------------------------------------------------- reading


def _command(row: Sequence[Any]) -> Command:
    return Command(*row)


def _load(conn: psycopg.Connection[Any], command_id: str, *, lock: bool = False) -> Command | None:
    row = conn.execute(
        f"SELECT {_COLUMNS} FROM commands c WHERE c.id = %s" + (" FOR UPDATE" if lock else ""),
        (command_id,),
    ).fetchone()
    return None if row is None else _command(row)


def show(conn: psycopg.Connection[Any], actor: Actor, command_id: str) -> Command:
    """One command with its state history (viewer or above, inside the scope)."""
    _expire_if_allowed(conn)
    cmd = _load(conn, command_id)
    if cmd is None:
        raise UsageError(f"no command {command_id!r}")
    _require(conn, actor, "viewer", cmd.device_id)
    events = conn.execute(
        "SELECT at, state, source, detail FROM command_events WHERE command_id = %s ORDER BY id",
        (command_id,),
    ).fetchall()
    size = conn.execute(
        "SELECT bytes FROM command_journals WHERE command_id = %s", (command_id,)
    ).fetchone()
    return replace(
        cmd,
        history=tuple(Event(*e) for e in events),
        journal_bytes=None if size is None else int(size[0]),
    )


def list_commands(
    conn: psycopg.Connection[Any],
    actor: Actor,
    *,
    device_id: str | None = None,
    state: str | None = None,
    limit: int = 50,
) -> list[Command]:
    """The latest commands (newest first) of the devices in the actor's scope."""
    _expire_if_allowed(conn)
    user = require_role(conn, actor, "viewer")
    where, args = _scope_sql(user)
    if device_id is not None:
        where += " AND c.device_id = %s"
        args.append(device_id)
    if state is not None:
        if state not in {s.value for s in State}:
            allowed = ", ".join(s.value for s in State)
            raise UsageError(f"state {state!r} is not one of {allowed}")
        where += " AND c.state = %s"
        args.append(state)
    rows = conn.execute(
        f"SELECT {_COLUMNS} FROM commands c JOIN devices d ON d.id = c.device_id"
        f" JOIN branches b ON b.id = d.branch WHERE true{where}"
        " ORDER BY c.created_at DESC, c.id DESC LIMIT %s",
        (*args, limit),
    ).fetchall()
    return [_command(r) for r in rows]


def journal(conn: psycopg.Connection[Any], actor: Actor, command_id: str) -> bytes:
    """The journal a ``journal`` command uploaded (operator or above, inside the scope),
    checked against its SHA-256 again; the read is audited."""
    cmd = _load(conn, command_id)
    if cmd is None:
        raise UsageError(f"no command {command_id!r}")
    _require(conn, actor, "operator", cmd.device_id)
    row = conn.execute(
        "SELECT data, sha256 FROM command_journals WHERE command_id = %s", (command_id,)
    ).fetchone()
    if row is None:
        raise UsageError(f"command {command_id} has no journal (state {cmd.state})")
    data = bytes(row[0])
    if hashlib.sha256(data).hexdigest() != row[1]:
        raise UsageError(f"the stored journal of {command_id} does not match its checksum")
    with conn.transaction():
        record(conn, actor, "command.journal_read", "command", command_id,
               detail=f"{len(data)} bytes")  # fmt: skip
    return data


# --------------------------------------------------------------------------- sending


def _params(kind: CommandKind, params: dict[str, Any], rules: CommandRules) -> dict[str, Any]:
    if kind is not CommandKind.JOURNAL:
        if params:
            raise UsageError(f"{kind.value} takes no parameters (got {sorted(params)})")
        return {}
    unknown = sorted(set(params) - {"since", "until", "what"})
    if unknown:
        raise UsageError(f"journal: unknown parameters {unknown}; allowed: since, until, what")
    try:
        since, until = parse_range(params)
    except WireError as exc:
        raise UsageError(str(exc)) from None
    if until - since > timedelta(hours=rules.journal_max_range_h):
        raise UsageError(
            f"journal: the range is longer than journal_max_range_h ({rules.journal_max_range_h} h)"
        )
    what = params.get("what", "journal")
    if what not in ("journal", "logs"):
        raise UsageError(f"journal: what={what!r}; allowed: journal, logs")
    return {
        "since": since.astimezone(UTC).isoformat(),
        "until": until.astimezone(UTC).isoformat(),
        "what": what,
        "max_bytes": rules.journal_max_bytes,
        "chunk_bytes": rules.journal_chunk_bytes,
    }


def _event(
    conn: psycopg.Connection[Any],
    command_id: str,
    state: str,
    source: str,
    detail: dict[str, Any] | None = None,
) -> None:
    conn.execute(
        "INSERT INTO command_events (command_id, state, source, detail) VALUES (%s, %s, %s, %s)",
        (command_id, state, source, None if detail is None else Jsonb(detail)),
    )


def _check_autocommit(conn: psycopg.Connection[Any]) -> None:
    if not conn.autocommit:
        raise RuntimeError("commands.service needs an autocommit connection")


def send(
    conn: psycopg.Connection[Any],
    actor: Actor,
    device_id: str,
    kind: str,
    *,
    publisher: Publisher,
    rules: CommandRules,
    params: dict[str, Any] | None = None,
    confirm: bool = False,
    expires_s: int | None = None,
    now: datetime | None = None,
) -> Command:
    """Store the command (state ``queued``, audited), then hand it to the broker: ``sent``,
    or ``failed`` if the broker could not take it. Returns the command as it is then."""
    _check_autocommit(conn)
    try:
        what = CommandKind(kind)
    except ValueError:
        allowed = ", ".join(k.value for k in CommandKind)
        raise UsageError(f"command {kind!r} is not one of {allowed}") from None
    expiry = rules.default_expiry_s if expires_s is None else expires_s
    if not 5 <= expiry <= rules.max_expiry_s:
        raise UsageError(f"expiry {expiry}s: allowed 5 to {rules.max_expiry_s} s (max_expiry_s)")
    body = _params(what, dict(params or {}), rules)
    now = now or datetime.now(UTC)
    command_id = new_command_id(now)
    expires_at = now + timedelta(seconds=expiry)
    try:
        with conn.transaction():
            _require(conn, actor, "operator", device_id, active=True)
    except Forbidden as exc:  # a refused attempt is worth a row too (who tried what)
        with conn.transaction():
            record(conn, actor, "command.refused", "device", device_id,
                   after={"kind": what.value}, detail=str(exc))  # fmt: skip
        raise
    with conn.transaction():
        user = _require(conn, actor, "operator", device_id, active=True)
        if what in DISRUPTIVE and not confirm:
            raise UsageError(
                f"{what.value} interrupts the service of {device_id}: confirm it (--yes)"
            )
        conn.execute(
            "INSERT INTO commands (id, device_id, kind, params, state, requested_by, surface,"
            " created_at, expires_at, updated_at) VALUES (%s, %s, %s, %s, 'queued', %s, %s,"
            " %s, %s, %s)",
            (command_id, device_id, what.value, Jsonb(body), user.username, actor.surface,
             now, expires_at, now),
        )  # fmt: skip
        _event(conn, command_id, State.QUEUED, "server", {"by": user.username})
        record(
            conn,
            actor,
            "command.send",
            "command",
            command_id,
            after={"device_id": device_id, "kind": what.value, "params": body,
                   "expires_at": expires_at, "state": "queued"},
        )  # fmt: skip
    request = CommandRequest(
        command_id=command_id,
        device_id=device_id,
        kind=what,
        params=body,
        issued_at=now,
        expires_at=expires_at,
        reply_to=result_topic(device_id),
        correlation=command_id,
    )
    try:
        publisher.publish_request(request, expiry)
    except Exception as exc:  # the broker is away or refused us: say so, do not hang
        reason = f"the broker did not take the request: {exc}"[:500]
        _transition(conn, command_id, State.FAILED, "server", reason=reason, actor=actor)
    else:
        _transition(conn, command_id, State.SENT, "server", actor=None)
    cmd = _load(conn, command_id)
    assert cmd is not None
    return cmd


# --------------------------------------------------------------------------- answers


def _transition(
    conn: psycopg.Connection[Any],
    command_id: str,
    target: State,
    source: str,
    *,
    reason: str | None = None,
    result: dict[str, Any] | None = None,
    actor: Actor | None,
) -> str:
    """Move a command forward (never backwards); returns what happened: ``moved``,
    ``duplicate`` (not forward), ``late`` (it was already final; kept in the history) or
    ``unknown``."""
    with conn.transaction():
        cmd = _load(conn, command_id, lock=True)
        if cmd is None:
            return "unknown"
        return _move(conn, cmd, target, source, reason=reason, result=result, actor=actor)


def _move(
    conn: psycopg.Connection[Any],
    cmd: Command,
    target: State,
    source: str,
    *,
    reason: str | None,
    result: dict[str, Any] | None,
    actor: Actor | None,
) -> str:
    """:func:`_transition` on a command already locked in the caller's transaction."""
    command_id = cmd.id
    current = State(cmd.state)
    if current in FINAL:
        if target in FINAL and target.value != current.value:
            _event(conn, command_id, target, source, {"late": True, "reason": reason})
            if actor is not None:
                record(conn, actor, f"command.{target.value}", "command", command_id,
                       before={"state": current.value}, after={"state": current.value},
                       detail=f"late answer {target.value} after {current.value}: kept"
                       " in the history, the state stays")  # fmt: skip
            return "late"
        return "duplicate"
    if RANK[target] <= RANK[current]:
        return "duplicate"
    final = target in FINAL
    if current is State.QUEUED and source == "device":
        # The device answered before send() recorded the broker's PUBACK: it was sent.
        _event(conn, command_id, State.SENT, "server", {"implied_by": target.value})
    conn.execute(
        "UPDATE commands SET state = %s, reason = coalesce(%s, reason),"
        " result = coalesce(%s, result), updated_at = clock_timestamp(),"
        " finished_at = CASE WHEN %s THEN clock_timestamp() END WHERE id = %s",
        (target.value, reason, None if result is None else Jsonb(result), final, command_id),
    )
    _event(conn, command_id, target, source, {"reason": reason} if reason else None)
    if final and cmd.kind == CommandKind.JOURNAL:
        conn.execute("DELETE FROM command_journal_chunks WHERE command_id = %s", (command_id,))
    if actor is not None:
        record(
            conn,
            actor,
            f"command.{target.value}",
            "command",
            command_id,
            before={"state": current.value},
            after={"state": target.value, "reason": reason, "result": result},
        )
    return "moved"


def _device_actor(device_id: str) -> Actor:
    return Actor(f"device:{device_id}", "mqtt")


def apply_result(
    conn: psycopg.Connection[Any], topic_device: str, msg: ResultMessage, rules: CommandRules
) -> str:
    """Record a device's answer. Only the device the command was for may answer it (the
    topic's device, which the broker's ACL vouches for, and the message must agree)."""
    _check_autocommit(conn)
    target = State(msg.result.value)
    with conn.transaction():  # one transaction, one lock: the listener's hot path
        cmd = _load(conn, msg.command_id, lock=True)
        if cmd is None:
            return "unknown"
        if topic_device != cmd.device_id or msg.device_id != cmd.device_id:
            log.warning(
                "result for command %s of %s came from %s: ignored",
                msg.command_id,
                cmd.device_id,
                topic_device,
            )
            return "mismatch"
        if not (target is State.DONE and cmd.kind == CommandKind.JOURNAL):
            result = dict(msg.detail) or None
            return _move(conn, cmd, target, "device", reason=msg.reason, result=result,
                         actor=_device_actor(cmd.device_id))  # fmt: skip
    return _journal_done(conn, cmd, msg, rules)


def _journal_done(
    conn: psycopg.Connection[Any], cmd: Command, msg: ResultMessage, rules: CommandRules
) -> str:
    """A journal's ``done`` names its size, chunk count and SHA-256; it is kept until every
    chunk is in (chunks and the result travel on different topics)."""
    detail = dict(msg.detail)
    if State(cmd.state) in FINAL:
        return _transition(conn, cmd.id, State.DONE, "device", actor=None)
    with conn.transaction():
        conn.execute(
            "UPDATE commands SET result = %s WHERE id = %s", (Jsonb({"pending": detail}), cmd.id)
        )
    return _try_finish(conn, cmd.id, rules)


def _try_finish(conn: psycopg.Connection[Any], command_id: str, rules: CommandRules) -> str:
    with conn.transaction():
        cmd = _load(conn, command_id, lock=True)
        if cmd is None or State(cmd.state) in FINAL or not cmd.result:
            return "waiting"
        pending = cmd.result.get("pending")
        if not isinstance(pending, dict):
            return "waiting"
        try:
            chunks, size, digest = int(pending["chunks"]), int(pending["bytes"]), pending["sha256"]
        except (KeyError, TypeError, ValueError):
            problem = "done without bytes/chunks/sha256"
            return _fail_in(conn, cmd, problem)
        have = conn.execute(
            "SELECT count(*), coalesce(sum(length(data)), 0) FROM command_journal_chunks"
            " WHERE command_id = %s",
            (command_id,),
        ).fetchone()
        assert have is not None
        if int(have[0]) < chunks:
            return "waiting"
        rows = conn.execute(
            "SELECT data FROM command_journal_chunks WHERE command_id = %s ORDER BY seq",
            (command_id,),
        ).fetchall()
        data = b"".join(bytes(r[0]) for r in rows)
        got = hashlib.sha256(data).hexdigest()
        if len(rows) != chunks or len(data) != size or got != digest:
            return _fail_in(
                conn, cmd, f"journal does not check: {len(data)} bytes in {len(rows)} chunks,"
                f" sha256 {got[:12]}…; the device said {size} bytes, {chunks}, {str(digest)[:12]}…"
            )  # fmt: skip
        conn.execute(
            "INSERT INTO command_journals (command_id, bytes, sha256, data) VALUES (%s, %s, %s, %s)",
            (command_id, size, got, data),
        )
        result = {"bytes": size, "chunks": chunks, "sha256": got}
        conn.execute(
            "UPDATE commands SET state = 'done', result = %s, updated_at = clock_timestamp(),"
            " finished_at = clock_timestamp() WHERE id = %s",
            (Jsonb(result), command_id),
        )
        conn.execute("DELETE FROM command_journal_chunks WHERE command_id = %s", (command_id,))
        _event(conn, command_id, State.DONE, "device", result)
        record(conn, _device_actor(cmd.device_id), "command.done", "command", command_id,
               before={"state": cmd.state}, after={"state": "done", "result": result})  # fmt: skip
        return "moved"


def _fail_in(conn: psycopg.Connection[Any], cmd: Command, reason: str) -> str:
    """Fail a locked command inside the caller's transaction."""
    conn.execute(
        "UPDATE commands SET state = 'failed', reason = %s, result = NULL,"
        " updated_at = clock_timestamp(), finished_at = clock_timestamp() WHERE id = %s",
        (reason, cmd.id),
    )
    conn.execute("DELETE FROM command_journal_chunks WHERE command_id = %s", (cmd.id,))
    _event(conn, cmd.id, State.FAILED, "server", {"reason": reason})
    record(conn, Actor.system("commands"), "command.failed", "command", cmd.id,
           before={"state": cmd.state}, after={"state": "failed", "reason": reason})  # fmt: skip
    return "failed"


def add_chunk(
    conn: psycopg.Connection[Any],
    topic_device: str,
    header: ChunkHeader,
    data: bytes,
    rules: CommandRules,
) -> str:
    """Store one upload chunk (a redelivered one once); a journal beyond its size limit is
    refused: the command fails (``too_large``) and its chunks are deleted."""
    _check_autocommit(conn)
    with conn.transaction():
        cmd = _load(conn, header.command_id, lock=True)
        if cmd is None:
            return "unknown"
        if cmd.device_id != topic_device or cmd.kind != CommandKind.JOURNAL:
            log.warning("chunk for command %s from %s: ignored", header.command_id, topic_device)
            return "mismatch"
        if State(cmd.state) in FINAL:
            return "late"
        conn.execute(
            "INSERT INTO command_journal_chunks (command_id, seq, data) VALUES (%s, %s, %s)"
            " ON CONFLICT DO NOTHING",
            (cmd.id, header.seq, data),
        )
        total = conn.execute(
            "SELECT coalesce(sum(length(data)), 0) FROM command_journal_chunks"
            " WHERE command_id = %s",
            (cmd.id,),
        ).fetchone()
        assert total is not None
        limit = min(rules.journal_max_bytes, int(cmd.params.get("max_bytes", 2**62)))
        if int(total[0]) > limit:
            return _fail_in(conn, cmd, f"too_large: the journal exceeds {limit} bytes")
    return _try_finish(conn, cmd.id, rules)


def expire_due(conn: psycopg.Connection[Any], now: datetime | None = None) -> list[str]:
    """Every open command past its expiry becomes ``expired`` (audited, as the system)."""
    _check_autocommit(conn)
    moment = now or datetime.now(UTC)
    ids = [
        str(r[0])
        for r in conn.execute(
            "SELECT id FROM commands WHERE state = ANY(%s) AND expires_at <= %s ORDER BY id",
            (list(OPEN_STATES), moment),
        ).fetchall()
    ]
    done = []
    for command_id in ids:
        outcome = _transition(
            conn,
            command_id,
            State.EXPIRED,
            "expiry",
            reason="no answer by the expiry",
            actor=Actor.system("commands"),
        )
        if outcome == "moved":
            done.append(command_id)
    return done


def _expire_if_allowed(conn: psycopg.Connection[Any]) -> None:
    """Readers see expiry enforced even if no listener runs; a read-only login skips it."""
    try:
        expire_due(conn)
    except psycopg.errors.InsufficientPrivilege:
        log.debug("read-only connection: expiry left to atmfleet command listen")
