"""Planned stops: one function per action, each in one transaction with its audit row.

Who may do what (docs/stops.md):

- **add** (and **edit** a requested stop): an operator or admin whose organisational scope
  (fleet, sub-branch, branch) holds the device or branch; the requester is the actor.
  A stop that starts in the past (retroactive) may start at most
  ``planned_stops.max_retroactive_days`` local days before today.
- **approve** / **reject**: a user with at least ``planned_stops.approver_role``
  (operator by default) whose scope holds the stop, never the requester. A stop that
  starts more than ``max_retroactive_days`` local days before the approval is refused (a
  request left lying cannot erase an old outage).
- **cancel**: an operator or admin whose scope holds the stop (a requested or an approved
  one; cancelling an approved stop gives the downtime back).
- **list** / **get**: any registered user, within their scope.

Only an **approved** stop changes 开机率. Approving or cancelling an approved stop deletes
the KPI engine's kept closed days (``kpi_device_days``) of the devices and local days it
covers, in the same transaction, so the next computation sees it.

Every action takes ``expected_version`` (optimistic concurrency, like the incident
service): given and not the stored version, :class:`Conflict`. Two people acting on one
stop at once: the row lock serialises them, one wins, the other gets :class:`Conflict` or
a :class:`UsageError` naming the actions the stop now allows.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import psycopg
from psycopg.rows import class_row

from atmfleet.errors import Conflict, Forbidden, UsageError
from atmfleet.store.audit import Actor, User, record, require_role
from rules.config import Rules

#: Every status, and the actions each allows.
ALLOWED: dict[str, tuple[str, ...]] = {
    "requested": ("approve", "reject", "cancel", "edit"),
    "approved": ("cancel",),
    "rejected": (),
    "cancelled": (),
}
STATUSES = tuple(ALLOWED)

_COLUMNS = (
    "id, device_id, branch_id, starts_at, ends_at, reason, requester, approver, status,"
    " retroactive, created_at, updated_at, approved_at, rejected_at, cancelled_at,"
    " cancelled_by, remarks, version"
)


@dataclass(frozen=True)
class Stop:
    id: int
    device_id: str | None
    branch_id: str | None
    starts_at: datetime
    ends_at: datetime
    reason: str
    requester: str
    approver: str | None
    status: str
    retroactive: bool
    created_at: datetime
    updated_at: datetime
    approved_at: datetime | None
    rejected_at: datetime | None
    cancelled_at: datetime | None
    cancelled_by: str | None
    remarks: str
    version: int

    @property
    def target(self) -> str:
        """``device:ID`` or ``branch:ID``."""
        return f"device:{self.device_id}" if self.device_id else f"branch:{self.branch_id}"

    def snapshot(self) -> dict[str, Any]:
        """What the audit row keeps of a stop (before -> after) and what --json prints."""
        return {
            "id": self.id,
            "device_id": self.device_id,
            "branch_id": self.branch_id,
            "starts_at": self.starts_at,
            "ends_at": self.ends_at,
            "reason": self.reason,
            "requester": self.requester,
            "approver": self.approver,
            "status": self.status,
            "retroactive": self.retroactive,
            "approved_at": self.approved_at,
            "rejected_at": self.rejected_at,
            "cancelled_at": self.cancelled_at,
            "cancelled_by": self.cancelled_by,
            "remarks": self.remarks,
            "version": self.version,
        }


# ------------------------------------------------------------------------ helpers


def _now(conn: psycopg.Connection[Any]) -> datetime:
    row = conn.execute("SELECT now()").fetchone()
    assert row is not None
    return row[0]  # type: ignore[no-any-return]


def _fmt(at: datetime, rules: Rules) -> str:
    return at.astimezone(rules.tz).strftime("%Y-%m-%d %H:%M")


def _org_of(
    conn: psycopg.Connection[Any], device_id: str | None, branch_id: str | None
) -> tuple[str, str]:
    """(branch, sub-branch) of the stop's device or branch; UsageError if not in the
    inventory."""
    if device_id is not None:
        row = conn.execute(
            "SELECT d.branch, b.subbranch FROM devices d JOIN branches b ON b.id = d.branch"
            " WHERE d.id = %s",
            (device_id,),
        ).fetchone()
        if row is None:
            raise UsageError(f"device {device_id!r} is not in the inventory")
    else:
        row = conn.execute(
            "SELECT id, subbranch FROM branches WHERE id = %s", (branch_id,)
        ).fetchone()
        if row is None:
            raise UsageError(f"branch {branch_id!r} is not in the inventory")
    return row[0], row[1]


def covers(user: User, branch: str, subbranch: str) -> bool:
    """Whether ``user``'s organisational scope holds a unit of ``branch``/``subbranch``."""
    if user.scope_kind == "fleet":
        return True
    if user.scope_kind == "subbranch":
        return user.scope_id == subbranch
    return user.scope_kind == "branch" and user.scope_id == branch


def _require_scope(
    conn: psycopg.Connection[Any], user: User, device_id: str | None, branch_id: str | None
) -> None:
    branch, subbranch = _org_of(conn, device_id, branch_id)
    if not covers(user, branch, subbranch):
        target = f"device {device_id}" if device_id else f"branch {branch_id}"
        raise Forbidden(
            f"user {user.username!r} acts for {user.scope_kind}:{user.scope_id}; "
            f"{target} (branch {branch}, sub-branch {subbranch}) is outside that scope"
        )


def _retro_floor(now: datetime, rules: Rules) -> datetime:
    """The earliest start a stop may have at ``now``: local midnight
    ``max_retroactive_days`` days before today."""
    tz = rules.tz
    today = now.astimezone(tz).date()
    first = today - timedelta(days=rules.planned_stops.max_retroactive_days)
    return datetime(first.year, first.month, first.day, tzinfo=tz)


def _check_retro(starts_at: datetime, now: datetime, rules: Rules, doing: str) -> None:
    floor = _retro_floor(now, rules)
    if starts_at < floor:
        n = rules.planned_stops.max_retroactive_days
        raise UsageError(
            f"cannot {doing}: the stop starts {_fmt(starts_at, rules)} ({rules.timezone}), "
            f"before {_fmt(floor, rules)}; a stop may start at most {n} days back "
            "(planned_stops.max_retroactive_days); an older outage stays downtime"
        )


def _check_span(starts_at: datetime, ends_at: datetime, reason: str) -> None:
    if starts_at.tzinfo is None or ends_at.tzinfo is None:
        raise UsageError("--from and --to need a time zone (the CLI reads local time)")
    if ends_at <= starts_at:
        raise UsageError("--to must be after --from")
    if not reason.strip():
        raise UsageError("--reason is required (what the stop is for: 装修, 迁移, 系统升级...)")


def _load(conn: psycopg.Connection[Any], stop_id: int, lock: bool = False) -> Stop:
    sql = f"SELECT {_COLUMNS} FROM planned_stops WHERE id = %s" + (" FOR UPDATE" if lock else "")
    with conn.cursor(row_factory=class_row(Stop)) as cur:
        got = cur.execute(sql, (stop_id,)).fetchone()
    if got is None:
        raise UsageError(f"planned stop {stop_id} does not exist")
    return got


def _for_action(
    conn: psycopg.Connection[Any], stop_id: int, action: str, expected_version: int | None
) -> Stop:
    stop = _load(conn, stop_id, lock=True)
    if expected_version is not None and stop.version != expected_version:
        raise Conflict(
            f"planned stop {stop_id} was changed by someone else (version {stop.version}, "
            f"you had {expected_version}; it is now {stop.status}); reload and retry"
        )
    allowed = ALLOWED[stop.status]
    if action not in allowed:
        raise UsageError(
            f"cannot {action} planned stop {stop_id}: it is {stop.status}; allowed: "
            + (", ".join(allowed) if allowed else "none (it is final)")
        )
    return stop


def _invalidate_kept_days(conn: psycopg.Connection[Any], stop: Stop) -> int:
    """Delete the kept closed days the stop covers (with a day's margin on each side for
    any difference between the schema's and the rules' time zone)."""
    cur = conn.execute(
        """
        DELETE FROM kpi_device_days k
        WHERE k.device_id IN (SELECT id FROM devices WHERE id = %(device)s OR branch = %(branch)s)
          AND k.day >= (%(lo)s::timestamptz AT TIME ZONE atmfleet_timezone())::date - 1
          AND k.day <= (%(hi)s::timestamptz AT TIME ZONE atmfleet_timezone())::date + 1
        """,
        {"device": stop.device_id, "branch": stop.branch_id, "lo": stop.starts_at,
         "hi": stop.ends_at},
    )  # fmt: skip
    return cur.rowcount


def _update(conn: psycopg.Connection[Any], stop_id: int, **values: Any) -> Stop:
    sets = ", ".join(f"{k} = %({k})s" for k in values)
    with conn.cursor(row_factory=class_row(Stop)) as cur:
        got = cur.execute(
            f"UPDATE planned_stops SET {sets}, version = version + 1, updated_at = now()"
            f" WHERE id = %(id)s RETURNING {_COLUMNS}",
            {**values, "id": stop_id},
        ).fetchone()
    assert got is not None
    return got


# ------------------------------------------------------------------------ actions


def add(
    conn: psycopg.Connection[Any],
    actor: Actor,
    *,
    rules: Rules,
    starts_at: datetime,
    ends_at: datetime,
    reason: str,
    device_id: str | None = None,
    branch_id: str | None = None,
    remarks: str = "",
    now: datetime | None = None,
) -> Stop:
    """Register a stop (status requested); the requester is ``actor``."""
    if (device_id is None) == (branch_id is None):
        raise UsageError("give exactly one of --device and --branch")
    _check_span(starts_at, ends_at, reason)
    with conn.transaction():
        user = require_role(conn, actor, "operator")
        _require_scope(conn, user, device_id, branch_id)
        now = now or _now(conn)
        retroactive = starts_at < now
        if retroactive:
            _check_retro(starts_at, now, rules, "register it")
        with conn.cursor(row_factory=class_row(Stop)) as cur:
            stop = cur.execute(
                "INSERT INTO planned_stops (device_id, branch_id, starts_at, ends_at, reason,"
                " requester, retroactive, remarks, created_at, updated_at)"
                " VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s)"
                f" RETURNING {_COLUMNS}",
                (device_id, branch_id, starts_at, ends_at, reason.strip(), actor.name,
                 retroactive, remarks, now, now),
            ).fetchone()  # fmt: skip
        assert stop is not None
        record(conn, actor, "stop.add", "planned_stop", stop.id, after=stop.snapshot())
    return stop


def edit(
    conn: psycopg.Connection[Any],
    stop_id: int,
    actor: Actor,
    *,
    rules: Rules,
    starts_at: datetime | None = None,
    ends_at: datetime | None = None,
    reason: str | None = None,
    expected_version: int | None = None,
    now: datetime | None = None,
) -> Stop:
    """Change a requested stop's span or reason (an approved one: cancel and add anew)."""
    with conn.transaction():
        user = require_role(conn, actor, "operator")
        stop = _for_action(conn, stop_id, "edit", expected_version)
        _require_scope(conn, user, stop.device_id, stop.branch_id)
        new_start = starts_at or stop.starts_at
        new_end = ends_at or stop.ends_at
        new_reason = stop.reason if reason is None else reason
        _check_span(new_start, new_end, new_reason)
        now = now or _now(conn)
        retroactive = stop.retroactive or new_start < now
        if new_start < now:
            _check_retro(new_start, now, rules, "move it there")
        after = _update(
            conn, stop_id, starts_at=new_start, ends_at=new_end, reason=new_reason.strip(),
            retroactive=retroactive,
        )  # fmt: skip
        record(conn, actor, "stop.edit", "planned_stop", stop_id,
               before=stop.snapshot(), after=after.snapshot())  # fmt: skip
    return after


def approve(
    conn: psycopg.Connection[Any],
    stop_id: int,
    actor: Actor,
    *,
    rules: Rules,
    expected_version: int | None = None,
    now: datetime | None = None,
) -> Stop:
    """Approve a requested stop: from now on its time is planned maintenance."""
    with conn.transaction():
        user = require_role(conn, actor, rules.planned_stops.approver_role)
        stop = _for_action(conn, stop_id, "approve", expected_version)
        if stop.requester == actor.name:
            raise Forbidden(
                f"user {actor.name!r} requested planned stop {stop_id}; another user "
                f"({rules.planned_stops.approver_role} or above) must approve it"
            )
        _require_scope(conn, user, stop.device_id, stop.branch_id)
        now = now or _now(conn)
        _check_retro(stop.starts_at, now, rules, "approve it")
        after = _update(conn, stop_id, status="approved", approver=actor.name, approved_at=now)
        dropped = _invalidate_kept_days(conn, after)
        record(conn, actor, "stop.approve", "planned_stop", stop_id,
               before=stop.snapshot(), after=after.snapshot(),
               detail=f"kept days invalidated: {dropped}")  # fmt: skip
    return after


def reject(
    conn: psycopg.Connection[Any],
    stop_id: int,
    actor: Actor,
    *,
    rules: Rules,
    remarks: str = "",
    expected_version: int | None = None,
    now: datetime | None = None,
) -> Stop:
    """Refuse a requested stop (final; its time stays what the device reported)."""
    with conn.transaction():
        user = require_role(conn, actor, rules.planned_stops.approver_role)
        stop = _for_action(conn, stop_id, "reject", expected_version)
        if stop.requester == actor.name:
            raise Forbidden(
                f"user {actor.name!r} requested planned stop {stop_id}; cancel it instead"
            )
        _require_scope(conn, user, stop.device_id, stop.branch_id)
        now = now or _now(conn)
        after = _update(
            conn, stop_id, status="rejected", approver=actor.name, rejected_at=now,
            remarks=remarks or stop.remarks,
        )  # fmt: skip
        record(conn, actor, "stop.reject", "planned_stop", stop_id,
               before=stop.snapshot(), after=after.snapshot(), detail=remarks or None)  # fmt: skip
    return after


def cancel(
    conn: psycopg.Connection[Any],
    stop_id: int,
    actor: Actor,
    *,
    remarks: str = "",
    expected_version: int | None = None,
    now: datetime | None = None,
) -> Stop:
    """Cancel a requested or approved stop (an approved one's time is downtime again)."""
    with conn.transaction():
        user = require_role(conn, actor, "operator")
        stop = _for_action(conn, stop_id, "cancel", expected_version)
        _require_scope(conn, user, stop.device_id, stop.branch_id)
        now = now or _now(conn)
        after = _update(
            conn, stop_id, status="cancelled", cancelled_at=now, cancelled_by=actor.name,
            remarks=remarks or stop.remarks,
        )  # fmt: skip
        dropped = _invalidate_kept_days(conn, after) if stop.status == "approved" else 0
        record(conn, actor, "stop.cancel", "planned_stop", stop_id,
               before=stop.snapshot(), after=after.snapshot(),
               detail=f"kept days invalidated: {dropped}")  # fmt: skip
    return after


def get(conn: psycopg.Connection[Any], stop_id: int, actor: Actor) -> Stop:
    """One stop, for a registered user whose scope holds it."""
    user = require_role(conn, actor, "viewer")
    stop = _load(conn, stop_id)
    _require_scope(conn, user, stop.device_id, stop.branch_id)
    return stop


def list_stops(
    conn: psycopg.Connection[Any],
    actor: Actor,
    *,
    status: str | None = None,
    device_id: str | None = None,
    branch_id: str | None = None,
    lo: datetime | None = None,
    hi: datetime | None = None,
) -> list[Stop]:
    """Stops within the actor's scope, newest start first; ``device_id`` also lists the
    stops of its branch; ``lo``/``hi`` keep those overlapping ``[lo, hi)``."""
    if status is not None and status not in STATUSES:
        raise UsageError(f"unknown status {status!r}; allowed: {', '.join(STATUSES)}")
    user = require_role(conn, actor, "viewer")
    with conn.cursor(row_factory=class_row(Stop)) as cur:
        rows = cur.execute(
            f"""
            SELECT {", ".join("s." + c.strip() for c in _COLUMNS.split(","))}
            FROM planned_stops s
            LEFT JOIN devices d ON d.id = s.device_id
            LEFT JOIN branches b ON b.id = coalesce(s.branch_id, d.branch)
            WHERE (%(status)s::text IS NULL OR s.status = %(status)s)
              AND (%(device)s::text IS NULL OR s.device_id = %(device)s
                   OR s.branch_id = (SELECT branch FROM devices WHERE id = %(device)s))
              AND (%(branch)s::text IS NULL OR s.branch_id = %(branch)s
                   OR d.branch = %(branch)s)
              AND (%(lo)s::timestamptz IS NULL OR s.ends_at > %(lo)s)
              AND (%(hi)s::timestamptz IS NULL OR s.starts_at < %(hi)s)
              AND (%(kind)s = 'fleet'
                   OR (%(kind)s = 'subbranch' AND b.subbranch = %(scope)s)
                   OR (%(kind)s = 'branch' AND b.id = %(scope)s))
            ORDER BY s.starts_at DESC, s.id DESC
            """,
            {"status": status, "device": device_id, "branch": branch_id, "lo": lo, "hi": hi,
             "kind": user.scope_kind, "scope": user.scope_id},
        ).fetchall()  # fmt: skip
    return rows


# --------------------------------------------------------- for the incident engine


def covering_stops(
    conn: psycopg.Connection[Any], device_ids: Iterable[str], at: datetime
) -> dict[str, int]:
    """device id -> the id of an approved stop it is inside at ``at`` (``starts_at <= at
    < ends_at``; its own stop or its branch's), for the devices given that are."""
    rows = conn.execute(
        """
        SELECT DISTINCT ON (d.id) d.id, s.id
        FROM devices d
        JOIN planned_stops s ON (s.device_id = d.id OR s.branch_id = d.branch)
        WHERE d.id = ANY(%(ids)s) AND s.status = 'approved'
          AND s.starts_at <= %(at)s AND s.ends_at > %(at)s
        ORDER BY d.id, s.starts_at, s.id
        """,
        {"ids": list(device_ids), "at": at},
    ).fetchall()
    return {device_id: stop_id for device_id, stop_id in rows}


def covering(conn: psycopg.Connection[Any], device_ids: Iterable[str], at: datetime) -> set[str]:
    """The devices among ``device_ids`` inside an approved planned stop at ``at``: the
    incident engine opens no incident for them."""
    return set(covering_stops(conn, device_ids, at))
