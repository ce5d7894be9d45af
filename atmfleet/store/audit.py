"""The audit log (migration 0010): one append-only row for every write any surface makes.

Every surface that changes something (a CLI command, a web page, an API call, an engine)
calls :func:`record` in the same transaction as the change, so that a change without its
audit row cannot be committed. ``before`` and ``after`` are JSON-able snapshots of the
object (only the fields that matter; never a secret: :func:`record` refuses keys that look
like one).
"""

from __future__ import annotations

import getpass
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import date, datetime
from decimal import Decimal
from typing import Any

import psycopg
from psycopg.types.json import Jsonb

from atmfleet.errors import Forbidden, UsageError

#: Keys never stored in an audit row (their values are secrets).
SECRET_KEYS = frozenset({"password", "password_hash", "token", "token_hash", "secret", "key"})

#: Roles in increasing order of what they may do.
ROLES = ("viewer", "operator", "admin")


@dataclass(frozen=True)
class Actor:
    """Who acts: a username (or ``system`` / ``device:<id>``) and the surface used."""

    name: str
    surface: str

    @classmethod
    def system(cls, surface: str = "engine") -> Actor:
        return cls("system", surface)


def cli_actor() -> Actor:
    """The person behind a CLI command: ``ATMFLEET_USER``, else the operating-system login."""
    name = os.environ.get("ATMFLEET_USER") or getpass.getuser()
    return Actor(name, "cli")


def _plain(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [_plain(v) for v in value]
    if isinstance(value, datetime | date):
        return value.isoformat()
    if isinstance(value, Decimal):
        return str(value)
    return value


def _snapshot(value: Mapping[str, Any] | None) -> Jsonb | None:
    if value is None:
        return None
    leaked = sorted(k for k in value if k.lower() in SECRET_KEYS)
    if leaked:
        raise ValueError(f"audit snapshot carries secret fields {leaked}")
    plain = _plain(value)
    json.dumps(plain)  # fail here, not inside the database driver
    return Jsonb(plain)


def record(
    conn: psycopg.Connection[Any],
    actor: Actor,
    action: str,
    object_type: str,
    object_id: object | None = None,
    *,
    before: Mapping[str, Any] | None = None,
    after: Mapping[str, Any] | None = None,
    detail: str | None = None,
) -> int:
    """Append one audit row in the caller's transaction; returns its id."""
    row = conn.execute(
        "INSERT INTO audit_log (actor, surface, action, object_type, object_id, before, after,"
        " detail) VALUES (%s, %s, %s, %s, %s, %s, %s, %s) RETURNING id",
        (
            actor.name,
            actor.surface,
            action,
            object_type,
            None if object_id is None else str(object_id),
            _snapshot(before),
            _snapshot(after),
            detail,
        ),
    ).fetchone()
    assert row is not None
    return int(row[0])


@dataclass(frozen=True)
class User:
    username: str
    display_name: str
    role: str
    scope_kind: str  # fleet | subbranch | branch
    scope_id: str | None
    disabled: bool

    def may(self, role: str) -> bool:
        """Whether this user's role is at least ``role``."""
        return not self.disabled and ROLES.index(self.role) >= ROLES.index(role)


def find_user(conn: psycopg.Connection[Any], username: str) -> User | None:
    row = conn.execute(
        "SELECT username, display_name, role, scope_kind, scope_id, disabled FROM users"
        " WHERE username = %s",
        (username,),
    ).fetchone()
    return None if row is None else User(*row)


def require_role(conn: psycopg.Connection[Any], actor: Actor, role: str) -> User:
    """The actor's user if it exists, is enabled and has at least ``role``; else a
    :class:`UsageError` (unknown user) or :class:`Forbidden` that says what is missing."""
    user = find_user(conn, actor.name)
    if user is None:
        raise UsageError(
            f"user {actor.name!r} is not registered; an admin adds it with `atmfleet users add`"
            " (the CLI acts as ATMFLEET_USER, else the login name)"
        )
    if user.disabled:
        raise Forbidden(f"user {actor.name!r} is disabled")
    if not user.may(role):
        raise Forbidden(f"user {actor.name!r} is a {user.role}; this needs {role} or above")
    return user
