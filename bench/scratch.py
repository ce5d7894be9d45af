"""A throw-away database for a benchmark: created on the given server, dropped afterwards."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from urllib.parse import urlsplit, urlunsplit

import psycopg

from atmfleet.store.migrate import Flavour, upgrade


def with_db(url: str, name: str) -> str:
    """``url`` pointing at database ``name`` instead."""
    p = urlsplit(url)
    return urlunsplit((p.scheme, p.netloc, "/" + name, p.query, ""))


@contextmanager
def scratch_database(admin_url: str, prefix: str = "atmfleet_bench") -> Iterator[str]:
    """Create a database next to ``admin_url``'s, yield its URL, drop it (even on error)."""
    name = f"{prefix}_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(admin_url, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    try:
        yield with_db(admin_url, name)
    finally:
        with psycopg.connect(admin_url, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@contextmanager
def upgraded_database(
    admin_url: str, timezone: str = "Asia/Shanghai", flavour: Flavour | None = None
) -> Iterator[str]:
    """A scratch database with the current schema (``atmfleet db upgrade``); ``flavour``
    forces plain PostgreSQL or TimescaleDB (default: TimescaleDB where installed)."""
    with scratch_database(admin_url) as url:
        with psycopg.connect(url, autocommit=True) as conn:
            upgrade(conn, timezone=timezone, flavour=flavour)
        yield url
