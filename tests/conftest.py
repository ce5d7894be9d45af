"""Shared fixtures: a throw-away database on the real PostgreSQL, the real broker.

The shared services are never stopped or reconfigured here; a test that needs to kill a
broker or a database starts its own instance.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from urllib.parse import urlsplit, urlunsplit

import psycopg
import pytest

#: Where the test databases are created (trust auth on the CI machine).
PG_ADMIN_URL = os.environ.get(
    "ATMFLEET_TEST_PG_URL", "postgresql://postgres@127.0.0.1:5432/postgres"
)
#: The shared broker.
MQTT_URL = os.environ.get("ATMFLEET_TEST_MQTT_URL", "mqtt://127.0.0.1:1883")


def _with_db(url: str, dbname: str) -> str:
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, "/" + dbname, parts.query, ""))


def create_database(prefix: str = "atmfleet_test") -> str:
    name = f"{prefix}_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    return _with_db(PG_ADMIN_URL, name)


def drop_database(url: str) -> None:
    name = urlsplit(url).path.lstrip("/")
    with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def database_url() -> Iterator[str]:
    """A new, empty database on the real PostgreSQL; dropped afterwards."""
    url = create_database()
    try:
        yield url
    finally:
        drop_database(url)


@pytest.fixture
def mqtt_url() -> str:
    return MQTT_URL


@pytest.fixture
def run_id() -> str:
    """A short unique token for device ids and client ids, so tests never see each other's
    retained messages or sessions on the shared broker."""
    return uuid.uuid4().hex[:8]
