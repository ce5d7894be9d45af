"""The incident lifecycle: one function per action, the only code that changes an incident.

Every surface (the CLI, the web console, the engine) calls these. Each function

- runs in one transaction (a savepoint when the caller already has one): the row change,
  its ``incident_events`` history row and its ``audit_log`` row commit together or not at
  all;
- locks the incident row (``SELECT ... FOR UPDATE``), so two operators acting at once are
  serialised: the first wins; the second gets :class:`Conflict` when it named the version
  it saw (``expected_version``, as the CLI and the web do) and that version is gone, or
  :class:`UsageError` naming the allowed actions when the state no longer allows its
  action;
- checks who acts: a person needs the operator role (``require_role``) and an org scope
  covering the incident's device (fleet, its sub-branch or its branch); the engine acts
  as ``Actor("system", "engine")`` or ``Actor("device:<id>", "engine")``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

import psycopg
from psycopg.types.json import Jsonb

from atmfleet.errors import Conflict, Forbidden, UsageError
from atmfleet.store.audit import Actor, User, record, require_role
from incidents.model import (
    ACTIVE_STATES,
    ALLOWED_FROM,
    EVENT_KIND,
    SELECT_COLUMNS,
    TARGET,
    Action,
    Incident,
    IncidentClass,
    State,
    allowed_actions,
    from_row,
    load,
    maintainer_for,
)

#: The surface the incident engine acts through (trusted: no user row needed).
ENGINE_SURFACE = "engine"


def is_engine(actor: Actor) -> bool:
    return actor.surface == ENGINE_SURFACE and (
        actor.name == "system" or actor.name.startswith("device:")
    )


def covers(user: User, incident: Incident) -> bool:
    """Whether the user's org scope covers the incident's device."""
    if user.scope_kind == "fleet":
        return True
    if user.scope_kind == "subbranch":
        return incident.subbranch_id == user.scope_id
    return incident.branch_id == user.scope_id


def authorise(conn: psycopg.Connection[Any], actor: Actor, incident: Incident) -> None:
    """Refuse (:class:`Forbidden`) a person without the operator role or whose scope does
    not cover the incident's device."""
    if is_engine(actor):
        return
    user = require_role(conn, actor, "operator")
    if not covers(user, incident):
        raise Forbidden(
            f"user {actor.name!r} acts on {user.scope_kind} {user.scope_id}; incident"
            f" {incident.id} is on device {incident.device_id} of branch {incident.branch_id}"
            f" (sub-branch {incident.subbranch_id})"
        )


def _allowed_text(incident: Incident) -> str:
    allowed = incident.allowed()
    return ", ".join(a.value for a in allowed) if allowed else "none"


def _refuse(incident: Incident, action: Action) -> UsageError:
    state = incident.state + (" (suspended)" if incident.suspended else "")
    return UsageError(
        f"incident {incident.id} is {state}: {action.value} is not allowed;"
        f" allowed: {_allowed_text(incident)}"
    )


def _now(conn: psycopg.Connection[Any]) -> datetime:
    row = conn.execute("SELECT now()").fetchone()
    assert row is not None
    return row[0]  # type: ignore[no-any-return]


def _latest_time(incident: Incident) -> datetime:
    times = [
        t
        for t in (
            incident.cycle_at,
            incident.acknowledged_at,
            incident.dispatched_at,
            incident.on_site_at,
            incident.restored_at,
            incident.suspended_at,
        )
        if t is not None
    ]
    return max(times)


def write_event(
    conn: psycopg.Connection[Any],
    *,
    incident_ids: Sequence[int],
    kind: str,
    actor: str,
    at: datetime | None = None,
    from_state: str | None = None,
    to_state: str | None = None,
    detail: Mapping[str, Any] | None = None,
    recipients: Sequence[str] = (),
) -> int:
    """Append one ``incident_events`` row; ``incident_id`` is set when it names exactly one
    incident."""
    ids = sorted(set(incident_ids))
    payload = json.loads(json.dumps(dict(detail or {}), default=str))
    row = conn.execute(
        "INSERT INTO incident_events (incident_id, incident_ids, at, kind, actor, from_state,"
        " to_state, detail, recipients) VALUES (%s, %s, coalesce(%s, clock_timestamp()), %s,"
        " %s, %s, %s, %s, %s) RETURNING id",
        (
            ids[0] if len(ids) == 1 else None,
            ids,
            at,
            kind,
            actor,
            from_state,
            to_state,
            Jsonb(payload),
            list(recipients),
        ),
    ).fetchone()
    assert row is not None
    return int(row[0])


def _act(
    conn: psycopg.Connection[Any],
    incident_id: int,
    actor: Actor,
    action: Action,
    *,
    expected_version: int | None,
    at: datetime | None,
    changes: Mapping[str, Any] | None = None,
    detail: Mapping[str, Any] | None = None,
    recipients: Sequence[str] = (),
    check: Any = None,
) -> Incident:
    with conn.transaction():
        incident = load(conn, incident_id, for_update=True)
        if incident is None:
            raise UsageError(f"no incident {incident_id}")
        authorise(conn, actor, incident)
        if expected_version is not None and incident.version != expected_version:
            raise Conflict(
                f"incident {incident_id} was changed meanwhile (now {incident.state},"
                f" version {incident.version}; you saw version {expected_version}):"
                " reload it and retry"
            )
        if action not in incident.allowed():
            raise _refuse(incident, action)
        now = _now(conn)
        when = at or now
        if at is not None and is_engine(actor):
            # The device's own times: never before a step someone recorded, never ahead.
            when = min(max(at, _latest_time(incident)), now)
        elif at is not None:
            if at > now:
                raise UsageError(f"--at {at.isoformat()} is in the future")
            if at < _latest_time(incident):
                raise UsageError(
                    f"--at {at.isoformat()} is before the incident's last step"
                    f" ({_latest_time(incident).isoformat()})"
                )
        if check is not None:
            check(incident, when)
        target = TARGET[action]
        sets: dict[str, Any] = dict(changes or {})
        if target is not None:
            sets["state"] = target.value
        column = {
            Action.ACK: "acknowledged_at",
            Action.DISPATCH: "dispatched_at",
            Action.ARRIVE: "on_site_at",
            Action.RESTORE: "restored_at",
            Action.CLOSE: "closed_at",
        }.get(action)
        if column is not None:
            sets[column] = when
        assignments = ", ".join(f'"{k}" = %s' for k in sets)
        row = conn.execute(
            f"UPDATE incidents SET {assignments}, version = version + 1,"
            f" updated_at = clock_timestamp() WHERE id = %s RETURNING {SELECT_COLUMNS}",
            (*sets.values(), incident_id),
        ).fetchone()
        assert row is not None
        after = from_row(row)
        write_event(
            conn,
            incident_ids=[incident_id],
            kind=EVENT_KIND[action],
            actor=actor.name,
            at=when,
            from_state=incident.state,
            to_state=after.state,
            detail=detail,
            recipients=recipients,
        )
        record(
            conn,
            actor,
            f"incident.{action.value}",
            "incident",
            incident_id,
            before=_audit_view(incident),
            after=_audit_view(after),
            detail=json.dumps(dict(detail), default=str, ensure_ascii=False) if detail else None,
        )
        return after


def _audit_view(incident: Incident) -> dict[str, Any]:
    keep = (
        "state", "suspended_at", "acknowledged_at", "dispatched_at", "eta", "maintainer_id",
        "on_site_at", "restored_at", "closed_at", "close_cause", "remarks", "cycle", "version",
    )  # fmt: skip
    snap = incident.snapshot()
    return {k: snap[k] for k in keep}


# ------------------------------------------------------------------ the actions


def ack(
    conn: psycopg.Connection[Any],
    incident_id: int,
    actor: Actor,
    *,
    expected_version: int | None = None,
    at: datetime | None = None,
    remarks: str | None = None,
) -> Incident:
    """受理: an operator takes the incident on."""
    detail = {"remarks": remarks} if remarks else None
    return _act(
        conn, incident_id, actor, Action.ACK, expected_version=expected_version, at=at,
        detail=detail,
    )  # fmt: skip


def dispatch(
    conn: psycopg.Connection[Any],
    incident_id: int,
    actor: Actor,
    *,
    eta: datetime,
    expected_version: int | None = None,
    at: datetime | None = None,
    maintainer_id: str | None = None,
    remarks: str | None = None,
) -> Incident:
    """派单: the device's maintainer is notified (an event to ``maintainer:<id>``) and
    their ETA recorded."""
    current = load(conn, incident_id)
    if current is None:
        raise UsageError(f"no incident {incident_id}")
    chosen = maintainer_id or current.maintainer_id
    if chosen is None:
        found = maintainer_for(conn, current.vendor, current.subbranch_id)
        chosen = found.id if found else None
    if chosen is None:
        raise UsageError(
            f"no maintainer for vendor {current.vendor} in sub-branch {current.subbranch_id}:"
            " add one to the inventory's maintainers, or name one with --maintainer"
        )
    if maintainer_id is not None:
        exists = conn.execute("SELECT 1 FROM maintainers WHERE id = %s", (maintainer_id,))
        if exists.fetchone() is None:
            raise UsageError(f"--maintainer {maintainer_id}: no such maintainer")

    def check(incident: Incident, when: datetime) -> None:
        if eta < when:
            raise UsageError(f"--eta {eta.isoformat()} is before the dispatch ({when.isoformat()})")

    detail: dict[str, Any] = {"eta": eta.isoformat(), "maintainer_id": chosen}
    if remarks:
        detail["remarks"] = remarks
    return _act(
        conn, incident_id, actor, Action.DISPATCH, expected_version=expected_version, at=at,
        changes={"eta": eta, "maintainer_id": chosen}, detail=detail,
        recipients=[f"maintainer:{chosen}"], check=check,
    )  # fmt: skip


def arrive(
    conn: psycopg.Connection[Any],
    incident_id: int,
    actor: Actor,
    *,
    expected_version: int | None = None,
    at: datetime | None = None,
    source: str = "manual",
) -> Incident:
    """到场: the technician is on site (the device entered maintenance mode, or an
    operator records it by hand)."""
    return _act(
        conn, incident_id, actor, Action.ARRIVE, expected_version=expected_version, at=at,
        detail={"source": source},
    )  # fmt: skip


def suspend(
    conn: psycopg.Connection[Any],
    incident_id: int,
    actor: Actor,
    *,
    reason: str,
    expected_version: int | None = None,
    at: datetime | None = None,
) -> Incident:
    """挂起 (e.g. waiting for parts): the SLA clocks stop if the contract says so."""
    if not reason.strip():
        raise UsageError("a suspension needs a reason (--reason)")
    if at is not None:
        raise UsageError("a suspension starts now; it cannot be back-dated")
    with conn.transaction():
        current = load(conn, incident_id, for_update=True)
        if current is not None and current.suspended:
            raise UsageError(
                f"incident {incident_id} is already suspended; allowed: {_allowed_text(current)}"
            )
        now = _now(conn)
        return _act(
            conn, incident_id, actor, Action.SUSPEND, expected_version=expected_version,
            at=None, changes={"suspended_at": now}, detail={"reason": reason},
        )  # fmt: skip


def resume(
    conn: psycopg.Connection[Any],
    incident_id: int,
    actor: Actor,
    *,
    expected_version: int | None = None,
    remarks: str | None = None,
) -> Incident:
    """The suspension ends; the SLA clocks run again."""
    with conn.transaction():
        current = load(conn, incident_id, for_update=True)
        if current is not None and not current.suspended:
            raise UsageError(
                f"incident {incident_id} is not suspended; allowed: {_allowed_text(current)}"
            )
        detail = {"remarks": remarks} if remarks else None
        return _act(
            conn, incident_id, actor, Action.RESUME, expected_version=expected_version,
            at=None, changes={"suspended_at": None}, detail=detail,
        )  # fmt: skip


def restore(
    conn: psycopg.Connection[Any],
    incident_id: int,
    actor: Actor,
    *,
    expected_version: int | None = None,
    at: datetime | None = None,
    source: str = "manual",
) -> Incident:
    """修复: the device is back in service (the engine does it when the device says so).
    A suspension still running ends with it (a ``resumed`` event first)."""
    with conn.transaction():
        current = load(conn, incident_id, for_update=True)
        if current is not None and current.suspended and current.state in ACTIVE_STATES:
            current = _act(
                conn, incident_id, actor, Action.RESUME, expected_version=expected_version,
                at=None, changes={"suspended_at": None}, detail={"remarks": "restored"},
            )  # fmt: skip
            expected_version = None if expected_version is None else current.version
        return _act(
            conn, incident_id, actor, Action.RESTORE, expected_version=expected_version,
            at=at, detail={"source": source},
        )  # fmt: skip


def close(
    conn: psycopg.Connection[Any],
    incident_id: int,
    actor: Actor,
    *,
    cause: str,
    remarks: str = "",
    expected_version: int | None = None,
) -> Incident:
    """关闭: an operator closes a restored incident with its cause and remarks."""
    if not cause.strip():
        raise UsageError("closing needs a cause (--cause)")
    if is_engine(actor):
        raise UsageError("an incident is closed by an operator, not by the engine")
    return _act(
        conn, incident_id, actor, Action.CLOSE, expected_version=expected_version, at=None,
        changes={"close_cause": cause, "remarks": remarks},
        detail={"cause": cause, "remarks": remarks},
    )  # fmt: skip


def reopen(
    conn: psycopg.Connection[Any],
    incident_id: int,
    actor: Actor,
    *,
    expected_version: int | None = None,
    at: datetime | None = None,
    reason: str = "",
    started_at: datetime | None = None,
) -> Incident:
    """A restored or closed incident opens again (a repeat fault when the rules say
    ``reopen``, or an operator who finds it was not fixed): a new cycle, whose SLA clocks
    start afresh; the earlier cycle stays in the history."""
    with conn.transaction():
        current = load(conn, incident_id, for_update=True)
        if current is None:
            raise UsageError(f"no incident {incident_id}")
        if current.state in ACTIVE_STATES:
            raise _refuse(current, Action.REOPEN)
        other = conn.execute(
            "SELECT id FROM incidents WHERE device_id = %s AND state = ANY(%s) AND id <> %s",
            (current.device_id, [s.value for s in ACTIVE_STATES], incident_id),
        ).fetchone()
        if other is not None:
            raise UsageError(
                f"device {current.device_id} already has active incident {other[0]}:"
                " act on that one"
            )
        when = at or _now(conn)
        return _act(
            conn, incident_id, actor, Action.REOPEN, expected_version=expected_version,
            at=at,
            changes={
                "cycle": current.cycle + 1, "cycle_at": when, "acknowledged_at": None,
                "dispatched_at": None, "eta": None, "on_site_at": None, "restored_at": None,
                "closed_at": None, "close_cause": None, "suspended_at": None,
                "last_down_at": started_at or when,
            },
            detail={"reason": reason, "cycle": current.cycle + 1},
        )  # fmt: skip


def continue_outage(
    conn: psycopg.Connection[Any],
    incident_id: int,
    actor: Actor,
    *,
    to_state: str,
    at: datetime,
    detail: Mapping[str, Any] | None = None,
) -> Incident:
    """A flap (the engine only): the device went down again within ``merge_flaps_s`` of
    being restored, so the restored incident continues in the state it was restored from,
    as one outage (an event ``merged``; its SLA clocks were never reset)."""
    if not is_engine(actor):
        raise Forbidden("only the incident engine merges a flap into an incident")
    with conn.transaction():
        incident = load(conn, incident_id, for_update=True)
        if incident is None:
            raise UsageError(f"no incident {incident_id}")
        if incident.state != State.RESTORED.value:
            raise UsageError(f"incident {incident_id} is {incident.state}, not restored")
        row = conn.execute(
            f"UPDATE incidents SET state = %s, restored_at = NULL, last_down_at = %s,"
            f" version = version + 1, updated_at = clock_timestamp() WHERE id = %s"
            f" RETURNING {SELECT_COLUMNS}",
            (State(to_state).value, at, incident_id),
        ).fetchone()
        assert row is not None
        after = from_row(row)
        write_event(
            conn, incident_ids=[incident_id], kind="merged", actor=actor.name, at=at,
            from_state=incident.state, to_state=after.state, detail=detail,
        )  # fmt: skip
        record(
            conn, actor, "incident.merge", "incident", incident_id,
            before=_audit_view(incident), after=_audit_view(after),
        )  # fmt: skip
        return after


ACTIONS = {
    Action.ACK: ack,
    Action.DISPATCH: dispatch,
    Action.ARRIVE: arrive,
    Action.SUSPEND: suspend,
    Action.RESUME: resume,
    Action.RESTORE: restore,
    Action.CLOSE: close,
    Action.REOPEN: reopen,
}


# ------------------------------------------------------------------ opening and reading


def open_incident(
    conn: psycopg.Connection[Any],
    *,
    device_id: str,
    subbranch_id: str,
    branch_id: str,
    vendor: str,
    model: str,
    cls: IncidentClass,
    cause: str,
    component: str | None,
    started_at: datetime,
    opened_at: datetime,
    maintainer_id: str | None,
    contract: str | None,
    repeat_of: int | None = None,
    actor: Actor | None = None,
    recipients: Sequence[str] = (),
) -> Incident | None:
    """Open an incident (the engine; an operator may too, as ``actor``). None when the
    device already has an active one (the unique index decides, so two engines never open
    two)."""
    actor = actor or Actor.system(ENGINE_SURFACE)
    if not is_engine(actor):
        user = require_role(conn, actor, "operator")
        scope = {"fleet": None, "subbranch": subbranch_id, "branch": branch_id}[user.scope_kind]
        if scope is not None and scope != user.scope_id:
            raise Forbidden(
                f"user {actor.name!r} acts on {user.scope_kind} {user.scope_id}; device"
                f" {device_id} is of branch {branch_id} (sub-branch {subbranch_id})"
            )
    with conn.transaction():
        row = conn.execute(
            "INSERT INTO incidents (device_id, subbranch_id, branch_id, vendor, model,"
            ' maintainer_id, "class", cause, component, started_at, opened_at, cycle_at,'
            " contract, repeat_of, last_down_at)"
            " VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)"
            " ON CONFLICT (device_id) WHERE state NOT IN ('restored', 'closed') DO NOTHING"
            f" RETURNING {SELECT_COLUMNS}",
            (
                device_id,
                subbranch_id,
                branch_id,
                vendor,
                model,
                maintainer_id,
                cls.value,
                cause,
                component,
                started_at,
                opened_at,
                opened_at,
                contract,
                repeat_of,
                opened_at,
            ),
        ).fetchone()
        if row is None:
            return None
        incident = from_row(row)
        detail: dict[str, Any] = {
            "cause": cause, "class": cls.value, "component": component,
            "started_at": started_at.isoformat(),
        }  # fmt: skip
        if repeat_of is not None:
            detail["repeat_of"] = repeat_of
        write_event(
            conn, incident_ids=[incident.id], kind="opened", actor=actor.name, at=opened_at,
            to_state=State.OPEN.value, detail=detail, recipients=recipients,
        )  # fmt: skip
        record(conn, actor, "incident.open", "incident", incident.id, after=_audit_view(incident))
        return incident


def list_incidents(
    conn: psycopg.Connection[Any],
    *,
    states: Sequence[str] | None = None,
    device_id: str | None = None,
    user: User | None = None,
    limit: int = 200,
) -> list[Incident]:
    """Incidents, newest first; ``states`` None = all but closed. A user sees only what
    its scope covers."""
    where = ["true"]
    params: list[Any] = []
    if states is None:
        where.append("state <> 'closed'")
    else:
        where.append("state = ANY(%s)")
        params.append(list(states))
    if device_id is not None:
        where.append("device_id = %s")
        params.append(device_id)
    if user is not None and user.scope_kind != "fleet":
        column = "subbranch_id" if user.scope_kind == "subbranch" else "branch_id"
        where.append(f"{column} = %s")
        params.append(user.scope_id)
    rows = conn.execute(
        f"SELECT {SELECT_COLUMNS} FROM incidents WHERE {' AND '.join(where)}"
        " ORDER BY opened_at DESC, id DESC LIMIT %s",
        (*params, limit),
    ).fetchall()
    return [from_row(r) for r in rows]


def sla_statuses(conn: psycopg.Connection[Any], incidents: Sequence[Incident]) -> dict[int, str]:
    """Each incident's SLA status in its current cycle (incidents.sla.status): none, ok,
    warning, breached or suspended; from the marks the engine stored."""
    from incidents.sla import status

    kinds: dict[int, list[str]] = {i.id: [] for i in incidents}
    cycle = {i.id: i.cycle for i in incidents}
    rows = conn.execute(
        "SELECT incident_id, cycle, kind FROM incident_sla WHERE incident_id = ANY(%s)",
        ([i.id for i in incidents],),
    ).fetchall()
    for incident_id, c, kind in rows:
        if cycle.get(incident_id) == c:
            kinds[incident_id].append(kind)
    return {
        i.id: status(kinds[i.id], i.suspended and i.active, i.contract is not None)
        for i in incidents
    }


def sla_marks(conn: psycopg.Connection[Any], incident_id: int) -> list[dict[str, Any]]:
    """The incident's SLA marks (every cycle), oldest first."""
    rows = conn.execute(
        "SELECT cycle, deadline, kind, level, due_at, at, event_id FROM incident_sla"
        " WHERE incident_id = %s ORDER BY due_at, deadline, kind, level",
        (incident_id,),
    ).fetchall()
    keys = ("cycle", "deadline", "kind", "level", "due_at", "at", "event_id")
    return [dict(zip(keys, r, strict=True)) for r in rows]


def allowed_table() -> dict[str, list[str]]:
    """Action -> states it is allowed from (for documentation and surfaces)."""
    return {a.value: sorted(s.value for s in ALLOWED_FROM[a]) for a in Action}


__all__ = [
    "ACTIONS",
    "ack",
    "allowed_actions",
    "arrive",
    "authorise",
    "close",
    "continue_outage",
    "covers",
    "dispatch",
    "list_incidents",
    "open_incident",
    "reopen",
    "restore",
    "resume",
    "suspend",
    "write_event",
]
