"""Incidents (故障工单) as stored by migration 0011: the row, its states and the lifecycle.

The lifecycle (docs/incidents.md)::

    open -> acknowledged -> dispatched -> on_site -> restored -> closed
      \\______________\\__________\\___________/^        |  ^
                      (restore from any active state)  reopen

``suspended`` is orthogonal: an active incident (open .. on_site) can be suspended and
resumed; while suspended only ``resume`` and the automatic ``restore`` are allowed.
:data:`ALLOWED_FROM` is the one table of which action is allowed from which state; both
the service and every surface (CLI, web) read it, none re-implements it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, fields
from datetime import datetime
from enum import StrEnum
from typing import Any

import psycopg


class State(StrEnum):
    OPEN = "open"  # 受理前: opened by the engine
    ACKNOWLEDGED = "acknowledged"  # 受理
    DISPATCHED = "dispatched"  # 派单 (maintainer notified, ETA recorded)
    ON_SITE = "on_site"  # 到场
    RESTORED = "restored"  # 修复 (device back in service)
    CLOSED = "closed"  # 关闭 (cause and remarks)


#: States of an outage still going on (at most one per device: a unique index).
ACTIVE_STATES = (State.OPEN, State.ACKNOWLEDGED, State.DISPATCHED, State.ON_SITE)


class IncidentClass(StrEnum):
    COMPONENT = "component"  # a hardware component fault
    CASH = "cash"  # cash-out, deposit cassette full
    NETWORK = "network"  # communications
    POWER = "power"
    SOFTWARE = "software"  # a fault with no component, supervisor mode too long


class Action(StrEnum):
    ACK = "ack"
    DISPATCH = "dispatch"
    ARRIVE = "arrive"
    SUSPEND = "suspend"
    RESUME = "resume"
    RESTORE = "restore"
    CLOSE = "close"
    REOPEN = "reopen"


#: The state each action leads to (suspend/resume keep the state).
TARGET: dict[Action, State | None] = {
    Action.ACK: State.ACKNOWLEDGED,
    Action.DISPATCH: State.DISPATCHED,
    Action.ARRIVE: State.ON_SITE,
    Action.SUSPEND: None,
    Action.RESUME: None,
    Action.RESTORE: State.RESTORED,
    Action.CLOSE: State.CLOSED,
    Action.REOPEN: State.OPEN,
}

#: From which states an action is allowed.
ALLOWED_FROM: dict[Action, frozenset[State]] = {
    Action.ACK: frozenset({State.OPEN}),
    Action.DISPATCH: frozenset({State.OPEN, State.ACKNOWLEDGED}),
    Action.ARRIVE: frozenset({State.OPEN, State.ACKNOWLEDGED, State.DISPATCHED}),
    Action.SUSPEND: frozenset(ACTIVE_STATES),
    Action.RESUME: frozenset(ACTIVE_STATES),
    Action.RESTORE: frozenset(ACTIVE_STATES),
    Action.CLOSE: frozenset({State.RESTORED}),
    Action.REOPEN: frozenset({State.RESTORED, State.CLOSED}),
}

#: Event kinds written by the service for each action (the incident's history).
EVENT_KIND: dict[Action, str] = {
    Action.ACK: "acknowledged",
    Action.DISPATCH: "dispatched",
    Action.ARRIVE: "on_site",
    Action.SUSPEND: "suspended",
    Action.RESUME: "resumed",
    Action.RESTORE: "restored",
    Action.CLOSE: "closed",
    Action.REOPEN: "reopened",
}


@dataclass(frozen=True)
class Incident:
    id: int
    device_id: str
    subbranch_id: str
    branch_id: str
    vendor: str
    model: str
    maintainer_id: str | None
    cls: str  # column "class"
    cause: str
    component: str | None
    state: str
    suspended_at: datetime | None
    started_at: datetime
    opened_at: datetime
    acknowledged_at: datetime | None
    dispatched_at: datetime | None
    eta: datetime | None
    on_site_at: datetime | None
    restored_at: datetime | None
    closed_at: datetime | None
    close_cause: str | None
    remarks: str | None
    repeat_of: int | None
    cycle: int
    cycle_at: datetime
    contract: str | None
    last_down_at: datetime | None
    version: int
    updated_at: datetime

    @property
    def suspended(self) -> bool:
        return self.suspended_at is not None

    @property
    def active(self) -> bool:
        return self.state in ACTIVE_STATES

    def allowed(self) -> list[Action]:
        """The actions allowed now (the order of :class:`Action`)."""
        return allowed_actions(self.state, self.suspended)

    def snapshot(self) -> dict[str, Any]:
        """The row as a JSON-able dict (``class`` under its column name)."""
        out = asdict(self)
        out["class"] = out.pop("cls")
        return out


def allowed_actions(state: str, suspended: bool) -> list[Action]:
    if suspended:
        return [Action.RESUME, Action.RESTORE] if state in ACTIVE_STATES else []
    return [a for a in Action if a is not Action.RESUME and State(state) in ALLOWED_FROM[a]]


_COLUMNS = [f.name for f in fields(Incident)]
#: The SELECT list matching :class:`Incident`'s fields.
SELECT_COLUMNS = ", ".join('"class"' if c == "cls" else c for c in _COLUMNS)


def from_row(row: Sequence[Any]) -> Incident:
    return Incident(*row)


def load(
    conn: psycopg.Connection[Any], incident_id: int, *, for_update: bool = False
) -> Incident | None:
    sql = f"SELECT {SELECT_COLUMNS} FROM incidents WHERE id = %s"
    if for_update:
        sql += " FOR UPDATE"
    row = conn.execute(sql, (incident_id,)).fetchone()
    return None if row is None else from_row(row)


@dataclass(frozen=True)
class Event:
    id: int
    incident_id: int | None
    incident_ids: list[int]
    at: datetime
    kind: str
    actor: str
    from_state: str | None
    to_state: str | None
    detail: dict[str, Any]
    recipients: list[str]


EVENT_COLUMNS = (
    "id, incident_id, incident_ids, at, kind, actor, from_state, to_state, detail, recipients"
)


def events_of(conn: psycopg.Connection[Any], incident_id: int) -> list[Event]:
    """The incident's history, oldest first, including the aggregated notifications that
    name it."""
    rows = conn.execute(
        f"SELECT {EVENT_COLUMNS} FROM incident_events WHERE incident_ids @> ARRAY[%s::bigint]"
        " ORDER BY id",
        (incident_id,),
    ).fetchall()
    return [Event(*r) for r in rows]


@dataclass(frozen=True)
class Maintainer:
    id: str
    vendor: str
    region: str
    name: str
    phone: str | None = None
    email: str | None = None
    wecom: str | None = None
    manager: str | None = None
    manager_phone: str | None = None
    manager_email: str | None = None


def maintainer_for(
    conn: psycopg.Connection[Any], vendor: str, subbranch_id: str
) -> Maintainer | None:
    """The vendor's team for the sub-branch, else its team for every region (``*``)."""
    row = conn.execute(
        "SELECT id, vendor, region, name, phone, email, wecom, manager, manager_phone,"
        " manager_email FROM maintainers WHERE vendor = %s AND region IN (%s, '*')"
        " ORDER BY region = '*' LIMIT 1",
        (vendor, subbranch_id),
    ).fetchone()
    return None if row is None else Maintainer(*row)
