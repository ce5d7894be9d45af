"""Who is asking: local users with argon2 passwords, server-side sessions, API tokens and
the login rate limit (migrations 0010 and 0014).

A request is authenticated either by the session cookie (a browser; every write also
carries the session's CSRF token) or by ``Authorization: Bearer <token>`` (an
integration; no ambient credential, so no CSRF token). Both give a :class:`Principal`:
the user (role and org scope, read fresh from ``users`` on every request, so disabling
a user or changing a role takes effect at once) and how it came in.

Passwords are checked by an :class:`Authenticator`; :class:`LocalPasswords` is the one
built in. LDAP or OIDC would be another implementation of the same protocol (docs/web.md).
"""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Protocol

import psycopg
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

from atmfleet.errors import Conflict, Forbidden, UsageError
from atmfleet.store.audit import ROLES, Actor, User, find_user, record, require_role

Conn = psycopg.Connection[Any]

SCOPE_KINDS = ("fleet", "subbranch", "branch")
_HASHER = PasswordHasher()
#: A password shorter than this is refused.
MIN_PASSWORD = 10
TOKEN_PREFIX = "atf_"


def sha256(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def hash_password(password: str) -> str:
    if len(password) < MIN_PASSWORD:
        raise UsageError(f"the password is too short: at least {MIN_PASSWORD} characters")
    return _HASHER.hash(password)


def new_secret() -> str:
    return secrets.token_urlsafe(32)


@dataclass(frozen=True)
class Principal:
    """An authenticated request: the user, and whether it came by session or token."""

    user: User
    via: str  # "session" | "token"
    session: str | None = None  # the session's id hash
    csrf: str | None = None

    @property
    def actor(self) -> Actor:
        return Actor(self.user.username, "web" if self.via == "session" else "api")

    def require(self, role: str) -> None:
        if not self.user.may(role):
            raise Forbidden(f"{self.user.username} is a {self.user.role}; this needs {role}")


# ----------------------------------------------------------------------- passwords


class Authenticator(Protocol):
    """Checks a username and password; returns the username it vouches for, or None.

    The console then reads that user's role and scope from ``users``: an external
    directory (LDAP, OIDC) says who someone is, the users table what they may do."""

    def authenticate(self, conn: Conn, username: str, password: str) -> str | None: ...


class LocalPasswords:
    """Argon2 hashes in ``users.password_hash``; a hash made with older parameters is
    rehashed on a successful login."""

    _DUMMY = _HASHER.hash("not a password of anyone")

    def authenticate(self, conn: Conn, username: str, password: str) -> str | None:
        row = conn.execute(
            "SELECT password_hash FROM users WHERE username = %s AND NOT disabled", (username,)
        ).fetchone()
        stored = row[0] if row and row[0] else None
        try:
            _HASHER.verify(stored or self._DUMMY, password)  # same work for unknown users
        except (VerifyMismatchError, VerificationError, InvalidHashError):
            return None
        if stored is None:
            return None
        if _HASHER.check_needs_rehash(stored):
            conn.execute(
                "UPDATE users SET password_hash = %s WHERE username = %s",
                (_HASHER.hash(password), username),
            )
        return username


# ------------------------------------------------------------------- rate limiting


def login_blocked(conn: Conn, username: str, ip: str, max_failures: int, window_s: int) -> bool:
    row = conn.execute(
        "SELECT count(*) FROM login_failures WHERE username = %s AND ip = %s"
        " AND at > clock_timestamp() - make_interval(secs => %s)",
        (username, ip, window_s),
    ).fetchone()
    return bool(row and row[0] >= max_failures)


def login_failed(conn: Conn, username: str, ip: str) -> None:
    conn.execute("INSERT INTO login_failures (username, ip) VALUES (%s, %s)", (username, ip))


def login_succeeded(conn: Conn, username: str, ip: str) -> None:
    conn.execute("DELETE FROM login_failures WHERE username = %s AND ip = %s", (username, ip))


# ------------------------------------------------------------------------ sessions


def open_session(
    conn: Conn, username: str, hours: float, ip: str | None, user_agent: str | None
) -> tuple[str, str]:
    """A new session for ``username``: (cookie value, CSRF token)."""
    value, csrf = new_secret(), new_secret()
    conn.execute(
        "INSERT INTO web_sessions (id_hash, username, csrf_token, expires_at, ip, user_agent)"
        " VALUES (%s, %s, %s, now() + %s, %s, %s)",
        (sha256(value), username, csrf, timedelta(hours=hours), ip, (user_agent or "")[:200]),
    )
    conn.execute("DELETE FROM web_sessions WHERE expires_at < now()")
    return value, csrf


def session_principal(conn: Conn, cookie: str, hours: float) -> Principal | None:
    """The principal of a live session (renewing it), or None."""
    row = conn.execute(
        "UPDATE web_sessions SET last_seen = now(), expires_at = now() + %s"
        " WHERE id_hash = %s AND expires_at > now() RETURNING username, csrf_token, id_hash",
        (timedelta(hours=hours), sha256(cookie)),
    ).fetchone()
    if row is None:
        return None
    user = find_user(conn, row[0])
    if user is None or user.disabled:
        return None
    return Principal(user, "session", row[2], row[1])


def close_session(conn: Conn, session: str) -> None:
    conn.execute("DELETE FROM web_sessions WHERE id_hash = %s", (session,))


# -------------------------------------------------------------------------- tokens


def token_principal(conn: Conn, token: str) -> Principal | None:
    row = conn.execute(
        "UPDATE api_tokens SET last_used = now() WHERE token_hash = %s AND revoked_at IS NULL"
        " AND (expires_at IS NULL OR expires_at > now()) RETURNING username",
        (sha256(token),),
    ).fetchone()
    if row is None:
        return None
    user = find_user(conn, row[0])
    if user is None or user.disabled:
        return None
    return Principal(user, "token")


def issue_token(
    conn: Conn, actor: Actor, username: str, name: str, days: int | None
) -> tuple[int, str]:
    """A new API token for ``username`` (an admin's act): (id, the token, shown once)."""
    require_role(conn, actor, "admin")
    if find_user(conn, username) is None:
        raise UsageError(f"no user {username!r}")
    token = TOKEN_PREFIX + new_secret()
    row = conn.execute(
        "INSERT INTO api_tokens (username, name, prefix, token_hash, expires_at) VALUES"
        " (%s, %s, %s, %s, CASE WHEN %s::int IS NULL THEN NULL ELSE now() + make_interval("
        "days => %s::int) END) RETURNING id",
        (username, name, token[:10], sha256(token), days, days),
    ).fetchone()
    assert row is not None
    record(conn, actor, "token.issue", "api_token", row[0],
           after={"username": username, "name": name, "prefix": token[:10], "days": days})  # fmt: skip
    return int(row[0]), token


def revoke_token(conn: Conn, actor: Actor, token_id: int) -> None:
    require_role(conn, actor, "admin")
    row = conn.execute(
        "UPDATE api_tokens SET revoked_at = now() WHERE id = %s AND revoked_at IS NULL"
        " RETURNING username, name",
        (token_id,),
    ).fetchone()
    if row is None:
        raise UsageError(f"no live API token {token_id}")
    record(conn, actor, "token.revoke", "api_token", token_id,
           before={"username": row[0], "name": row[1]}, after={"revoked": True})  # fmt: skip


def list_tokens(conn: Conn) -> list[tuple[Any, ...]]:
    return conn.execute(
        "SELECT id, username, name, prefix, created_at, expires_at, last_used, revoked_at"
        " FROM api_tokens ORDER BY id"
    ).fetchall()


# --------------------------------------------------------------------------- users


def _user_dict(u: User) -> dict[str, Any]:
    return {"username": u.username, "display_name": u.display_name, "role": u.role,
            "scope_kind": u.scope_kind, "scope_id": u.scope_id, "disabled": u.disabled}  # fmt: skip


def parse_scope(text: str) -> tuple[str, str | None]:
    """``fleet``, ``subbranch:ID`` or ``branch:ID``."""
    kind, _, value = text.partition(":")
    kind = kind.strip().lower().replace("-", "")
    if kind not in SCOPE_KINDS:
        raise UsageError(f"--scope {text!r}: allowed: fleet, subbranch:ID, branch:ID")
    if kind == "fleet":
        return "fleet", None
    if not value.strip():
        raise UsageError(f"--scope {text!r}: give the id, e.g. {kind}:<id>")
    return kind, value.strip()


def _check_scope_exists(conn: Conn, kind: str, scope_id: str | None) -> None:
    if kind == "fleet":
        return
    table = "subbranches" if kind == "subbranch" else "branches"
    if conn.execute(f"SELECT 1 FROM {table} WHERE id = %s", (scope_id,)).fetchone() is None:
        raise UsageError(f"no {kind} {scope_id!r} in the inventory")


def bootstrap_allowed(conn: Conn) -> bool:
    """The first admin may be created by anyone who can reach the database."""
    row = conn.execute("SELECT count(*) FROM users WHERE role = 'admin'").fetchone()
    return bool(row and row[0] == 0)


def add_user(
    conn: Conn, actor: Actor, username: str, role: str, scope: str, password: str | None,
    display_name: str = "",
) -> User:  # fmt: skip
    if role not in ROLES:
        raise UsageError(f"--role {role!r}: allowed: {', '.join(ROLES)}")
    if not (bootstrap_allowed(conn) and role == "admin"):
        require_role(conn, actor, "admin")
    kind, scope_id = parse_scope(scope)
    _check_scope_exists(conn, kind, scope_id)
    if find_user(conn, username) is not None:
        raise Conflict(f"user {username!r} exists already")
    try:
        conn.execute(
            "INSERT INTO users (username, display_name, role, scope_kind, scope_id,"
            " password_hash) VALUES (%s, %s, %s, %s, %s, %s)",
            (username, display_name, role, kind, scope_id,
             hash_password(password) if password is not None else None),
        )  # fmt: skip
    except psycopg.errors.CheckViolation:
        raise UsageError(
            f"username {username!r}: letters, digits and _ . @ - only, at most 64"
        ) from None
    user = find_user(conn, username)
    assert user is not None
    record(conn, actor, "user.add", "user", username, after=_user_dict(user))
    return user


def list_users(conn: Conn) -> Sequence[User]:
    rows = conn.execute(
        "SELECT username, display_name, role, scope_kind, scope_id, disabled FROM users"
        " ORDER BY username"
    ).fetchall()
    return [User(*r) for r in rows]


def set_disabled(conn: Conn, actor: Actor, username: str, disabled: bool) -> User:
    require_role(conn, actor, "admin")
    before = find_user(conn, username)
    if before is None:
        raise UsageError(f"no user {username!r}")
    conn.execute(
        "UPDATE users SET disabled = %s, updated_at = now() WHERE username = %s",
        (disabled, username),
    )
    if disabled:
        conn.execute("DELETE FROM web_sessions WHERE username = %s", (username,))
    after = find_user(conn, username)
    assert after is not None
    record(conn, actor, "user.disable" if disabled else "user.enable", "user", username,
           before=_user_dict(before), after=_user_dict(after))  # fmt: skip
    return after


def set_password(conn: Conn, actor: Actor, username: str, password: str) -> None:
    """An admin sets anyone's password; a user may set their own."""
    if actor.name != username:
        require_role(conn, actor, "admin")
    if find_user(conn, username) is None:
        raise UsageError(f"no user {username!r}")
    conn.execute(
        "UPDATE users SET password_hash = %s, updated_at = now() WHERE username = %s",
        (hash_password(password), username),
    )
    conn.execute("DELETE FROM web_sessions WHERE username = %s", (username,))
    record(conn, actor, "user.passwd", "user", username, after={"password_changed": True})
