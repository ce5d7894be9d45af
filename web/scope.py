"""Organisational scope: what part of the fleet a user may see and act on.

Every read of the console goes through these checks in the data layer (web/data.py), not
only through what the menus show: a sub-branch user asking for another sub-branch's
device, incident, stop or bulletin by URL or API gets 404 (an object they may not see
does not exist for them) or 403 (a scope they name but may not use).
"""

from __future__ import annotations

from typing import Any

from atmfleet.errors import Forbidden
from atmfleet.store.audit import User


def sees(user: User, subbranch: str | None, branch: str | None) -> bool:
    """Whether ``user`` may see an object of ``subbranch`` / ``branch``."""
    if user.scope_kind == "fleet":
        return True
    if user.scope_kind == "subbranch":
        return subbranch is not None and subbranch == user.scope_id
    return branch is not None and branch == user.scope_id


def where(user: User, subbranch_col: str, branch_col: str) -> tuple[str, list[Any]]:
    """A SQL condition (and its parameters) restricting rows to the user's scope. The
    column names are the caller's constants, never user input."""
    if user.scope_kind == "fleet":
        return "TRUE", []
    if user.scope_kind == "subbranch":
        return f"{subbranch_col} = %s", [user.scope_id]
    return f"{branch_col} = %s", [user.scope_id]


def report_scope(user: User) -> str:
    """The user's scope in the KPI layer's terms (rules.report.Scope)."""
    return "fleet" if user.scope_kind == "fleet" else f"{user.scope_kind}:{user.scope_id}"


def require_within(user: User, subbranch: str | None, branch: str | None, what: str) -> None:
    if not sees(user, subbranch, branch):
        raise Forbidden(f"{what} is outside the scope of {user.username} ({report_scope(user)})")
