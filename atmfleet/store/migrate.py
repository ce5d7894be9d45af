"""Versioned migrations: ``NNNN_name.sql`` files applied in order, recorded in the database.

A version may have a common file (``0001_core.sql``) and flavour files
(``0002_timeseries.timescale.sql``, ``0002_timeseries.postgres.sql``); the files of the
database's flavour are applied, common first, in one transaction. A file whose first line
is ``-- atmfleet:no-transaction`` runs statement by statement outside a transaction
(TimescaleDB continuous aggregates cannot be created inside one).

``schema_migrations`` records each version with a checksum of the files applied; a file
changed after it was applied is refused rather than silently ignored. ``{{timezone}}`` in a
file is replaced by the configured time zone as a SQL literal. Concurrent upgrades are
serialised by an advisory lock.
"""

from __future__ import annotations

import hashlib
import logging
import re
from dataclasses import dataclass
from enum import StrEnum
from importlib import resources
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import psycopg
from psycopg import sql

from atmfleet.errors import ConfigError

log = logging.getLogger(__name__)

_FILE_RE = re.compile(r"^(\d{4})_([a-z0-9_]+?)(?:\.(timescale|postgres))?\.sql$")
_NO_TRANSACTION = "-- atmfleet:no-transaction"
_LOCK_KEY = 0x61746D666C656574  # "atmfleet"


class Flavour(StrEnum):
    POSTGRES = "postgres"
    TIMESCALE = "timescale"


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    common: str | None  # SQL text of the common file
    flavoured: dict[Flavour, str]

    def texts(self, flavour: Flavour) -> list[str]:
        return [t for t in (self.common, self.flavoured.get(flavour)) if t is not None]

    def checksum(self, flavour: Flavour) -> str:
        digest = hashlib.sha256()
        for text in self.texts(flavour):
            digest.update(text.encode())
        return digest.hexdigest()

    def transactional(self, flavour: Flavour) -> bool:
        return not any(t.startswith(_NO_TRANSACTION) for t in self.texts(flavour))


def discover() -> list[Migration]:
    """The migrations shipped in ``atmfleet/store/migrations``, in version order."""
    found: dict[int, tuple[str, str | None, dict[Flavour, str]]] = {}
    for entry in resources.files("atmfleet.store").joinpath("migrations").iterdir():
        match = _FILE_RE.match(entry.name)
        if not match:
            continue
        version, name, flavour = int(match[1]), match[2], match[3]
        text = entry.read_text(encoding="utf-8")
        seen_name, common, flavoured = found.get(version, (name, None, {}))
        if seen_name != name:
            raise ConfigError(f"migration {version:04d} has two names: {seen_name}, {name}")
        if flavour is None:
            common = text
        else:
            flavoured[Flavour(flavour)] = text
        found[version] = (name, common, flavoured)
    return [Migration(v, n, c, f) for v, (n, c, f) in sorted(found.items())]


def render(text: str, timezone: str) -> str:
    try:
        ZoneInfo(timezone)
    except (ZoneInfoNotFoundError, ValueError):
        raise ConfigError(
            f"ATMFLEET_TIMEZONE: {timezone!r} is not a time zone (e.g. Asia/Shanghai)"
        ) from None
    literal = "'" + timezone.replace("'", "''") + "'"
    return text.replace("{{timezone}}", literal)


def split_statements(text: str) -> list[str]:
    """Split a no-transaction file into statements: each ends with ``;`` at the end of a line."""
    statements: list[str] = []
    current: list[str] = []
    for line in text.splitlines():
        if not current and (not line.strip() or line.lstrip().startswith("--")):
            continue
        current.append(line)
        if line.rstrip().endswith(";"):
            statements.append("\n".join(current))
            current = []
    if any(line.strip() and not line.lstrip().startswith("--") for line in current):
        raise ConfigError("a no-transaction migration does not end with ';'")
    return statements


def detect_flavour(conn: psycopg.Connection) -> Flavour:
    """TimescaleDB when the extension is installed in the database, or can be created
    (available on the server and preloaded); plain PostgreSQL otherwise."""
    row = conn.execute("SELECT 1 FROM pg_extension WHERE extname = 'timescaledb'").fetchone()
    if row:
        return Flavour.TIMESCALE
    available = conn.execute(
        "SELECT 1 FROM pg_available_extensions WHERE name = 'timescaledb'"
    ).fetchone()
    if not available:
        return Flavour.POSTGRES
    preload = conn.execute("SELECT current_setting('shared_preload_libraries')").fetchone()
    if not preload or "timescaledb" not in str(preload[0]):
        log.warning(
            "timescaledb is installed on the server but not in shared_preload_libraries; "
            "using plain PostgreSQL"
        )
        return Flavour.POSTGRES
    conn.execute("CREATE EXTENSION IF NOT EXISTS timescaledb")
    return Flavour.TIMESCALE


@dataclass(frozen=True)
class UpgradeResult:
    flavour: Flavour
    applied: list[int]
    current: int


def _ensure_table(conn: psycopg.Connection) -> None:
    conn.execute(
        """
        CREATE TABLE IF NOT EXISTS schema_migrations (
            version    integer PRIMARY KEY,
            name       text NOT NULL,
            flavour    text NOT NULL,
            checksum   text NOT NULL,
            applied_at timestamptz NOT NULL DEFAULT now()
        )
        """
    )


def applied_versions(conn: psycopg.Connection) -> dict[int, tuple[str, str]]:
    """``{version: (flavour, checksum)}``; empty when nothing was ever applied."""
    exists = conn.execute("SELECT to_regclass('schema_migrations') IS NOT NULL").fetchone()
    if not exists or not exists[0]:
        return {}
    rows = conn.execute("SELECT version, flavour, checksum FROM schema_migrations").fetchall()
    return {v: (f, c) for v, f, c in rows}


def upgrade(
    conn: psycopg.Connection,
    *,
    timezone: str = "Asia/Shanghai",
    flavour: Flavour | None = None,
    migrations: list[Migration] | None = None,
) -> UpgradeResult:
    """Apply every migration not yet applied. Idempotent; ``conn`` must be in autocommit."""
    if not conn.autocommit:
        raise ValueError("upgrade() needs an autocommit connection")
    migrations = discover() if migrations is None else migrations
    conn.execute("SELECT pg_advisory_lock(%s)", (_LOCK_KEY,))
    try:
        _ensure_table(conn)
        done = applied_versions(conn)
        recorded = {f for f, _ in done.values()}
        if len(recorded) > 1:
            raise ConfigError(f"schema_migrations mixes flavours {sorted(recorded)}")
        if recorded:
            flavour = Flavour(recorded.pop())
        elif flavour is None:
            flavour = detect_flavour(conn)
        elif flavour is Flavour.TIMESCALE:
            conn.execute("CREATE EXTENSION IF NOT EXISTS timescaledb")
        applied: list[int] = []
        for mig in migrations:
            checksum = mig.checksum(flavour)
            if mig.version in done:
                if done[mig.version][1] != checksum:
                    raise ConfigError(
                        f"migration {mig.version:04d}_{mig.name} was changed after it was "
                        "applied; add a new migration instead of editing an applied one"
                    )
                continue
            _apply(conn, mig, flavour, timezone, checksum)
            applied.append(mig.version)
            log.info("applied migration %04d_%s (%s)", mig.version, mig.name, flavour.value)
        current = max([*done, *applied], default=0)
        return UpgradeResult(flavour, applied, current)
    finally:
        conn.execute("SELECT pg_advisory_unlock(%s)", (_LOCK_KEY,))


def _apply(
    conn: psycopg.Connection, mig: Migration, flavour: Flavour, timezone: str, checksum: str
) -> None:
    record = sql.SQL(
        "INSERT INTO schema_migrations (version, name, flavour, checksum) VALUES (%s, %s, %s, %s)"
    )
    params = (mig.version, mig.name, flavour.value, checksum)
    texts = [render(t, timezone) for t in mig.texts(flavour)]
    if mig.transactional(flavour):
        with conn.transaction():
            for text in texts:
                conn.execute(text.encode())
            conn.execute(record, params)
        return
    # Outside a transaction: a failure part-way leaves the version unrecorded; the
    # statements are written so that a retry after fixing the cause can proceed.
    for text in texts:
        for statement in split_statements(text):
            conn.execute(statement.encode())
    conn.execute(record, params)


def require_current(conn: psycopg.Connection) -> None:
    """Refuse to work on a database whose schema is older than this code expects."""
    with conn.transaction():
        done = applied_versions(conn)
    missing = [f"{m.version:04d}_{m.name}" for m in discover() if m.version not in done]
    if missing:
        raise ConfigError(
            f"the database schema lacks {', '.join(missing)}: run `atmfleet db upgrade` first"
        )
