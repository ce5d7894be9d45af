"""Opening connections, and telling temporary database errors from permanent ones."""

from __future__ import annotations

from enum import Enum
from urllib.parse import urlsplit, urlunsplit

import psycopg

from atmfleet.errors import ConfigError

_SECRET_PARAMS = ("password", "sslpassword")


def redact_url(url: str) -> str:
    """The URL without its password (userinfo or ``?password=``), fit for a log line or an
    error message. Something that is not a URL is not shown at all."""
    try:
        parts = urlsplit(url)
        host = parts.netloc.rsplit("@", 1)[-1]
        user = parts.username
    except ValueError:
        return "(a malformed URL, not shown)"
    if not parts.scheme or "://" not in url:
        return "(not a URL, not shown)"
    netloc = host
    if user is not None:
        netloc = f"{user}:***@{host}" if parts.password is not None else f"{user}@{host}"
    query = "&".join(
        f"{k}=***" if k.lower() in _SECRET_PARAMS else (f"{k}={v}" if sep else k)
        for k, sep, v in (item.partition("=") for item in parts.query.split("&") if item)
    )
    return urlunsplit((parts.scheme, netloc, parts.path, query, ""))


def connect(
    url: str, *, application_name: str = "atmfleet", autocommit: bool = False
) -> psycopg.Connection:
    """Open a connection; TLS comes from the URL (``sslmode``, ``sslrootcert``, ``sslcert``).

    A connection failure becomes a :class:`ConfigError` that names the redacted URL.
    """
    try:
        return psycopg.connect(
            url, application_name=application_name, autocommit=autocommit, connect_timeout=10
        )
    except psycopg.OperationalError as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ConfigError(f"cannot connect to {redact_url(url)}: {reason}") from None
    except psycopg.ProgrammingError:  # libpq cannot parse it; its message quotes the URL
        raise ConfigError(
            "the database URL is not a PostgreSQL URL libpq can parse (value not shown)"
        ) from None


class ErrorClass(Enum):
    """What to do about a database error."""

    TEMPORARY = "temporary"  # retry the same work after a backoff (reconnect if needed)
    DATA = "data"  # this row can never be stored: isolate it and dead-letter it
    FATAL = "fatal"  # the schema or permissions are wrong: stop and say so


#: SQLSTATE classes that go away by themselves: connection (08), transaction rollback (40:
#: deadlock, serialisation), insufficient resources (53), operator intervention (57:
#: admin shutdown, e.g. pg_terminate_backend), system error (58), lock not available
#: (55P03), idle session timeouts (25P03, 57P05).
_TEMPORARY_CLASSES = frozenset({"08", "40", "53", "57", "58"})
_TEMPORARY_CODES = frozenset({"55P03", "25P03"})
#: Data exceptions (22), integrity violations (23) and cardinality violations (21: two rows
#: of one batch for one key, e.g. ON CONFLICT DO UPDATE "cannot affect row a second time")
#: come from the rows: the batch is bisected and a row that fails alone dead-lettered.
_DATA_CLASSES = frozenset({"21", "22", "23"})


def classify(exc: BaseException) -> ErrorClass:
    """Classify a psycopg error by its SQLSTATE; a lost connection has none and is temporary."""
    sqlstate = getattr(exc, "sqlstate", None)
    if sqlstate is None:
        if isinstance(exc, psycopg.OperationalError | psycopg.InterfaceError | OSError):
            return ErrorClass.TEMPORARY
        return ErrorClass.FATAL
    if sqlstate[:2] in _TEMPORARY_CLASSES or sqlstate in _TEMPORARY_CODES:
        return ErrorClass.TEMPORARY
    if sqlstate[:2] in _DATA_CLASSES:
        return ErrorClass.DATA
    return ErrorClass.FATAL
