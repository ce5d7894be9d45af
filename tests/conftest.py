"""Shared fixtures: a throw-away database on the real PostgreSQL, the real broker.

The shared services are never stopped or reconfigured here; a test that needs to kill a
broker or a database starts its own instance.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator
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
        # The database's own roles (migration 0006); roles are cluster-wide.
        for kind in ("owner", "writer", "reader"):
            conn.execute(f'DROP ROLE IF EXISTS "{name}_{kind}"')


@pytest.fixture
def database_url() -> Iterator[str]:
    """A new, empty database on the real PostgreSQL; dropped afterwards."""
    url = create_database()
    try:
        yield url
    finally:
        drop_database(url)


@pytest.fixture
def db(database_url: str) -> str:
    """A new database with the schema applied (``atmfleet db upgrade``)."""
    from atmfleet.store.migrate import upgrade

    with psycopg.connect(database_url, autocommit=True) as conn:
        upgrade(conn)
    return database_url


@pytest.fixture(scope="module")
def filled_stores() -> Iterator[Callable[[int], object]]:
    """The module's databases filled by tests/test_kpi_fast_path.py's ``fill``, one per
    fleet size, made when first asked for (``FilledStore``); dropped with the module."""
    from tests.test_kpi_fast_path import FilledStore

    stores: dict[int, FilledStore] = {}

    def get(n: int) -> FilledStore:
        if n not in stores:
            url = create_database()
            try:
                stores[n] = FilledStore(url, n)
            except BaseException:
                drop_database(url)
                raise
        return stores[n]

    try:
        yield get
    finally:
        for store in stores.values():
            drop_database(store.url)


@pytest.fixture
def mqtt_url() -> str:
    return MQTT_URL


@pytest.fixture
def run_id() -> str:
    """A short unique token for device ids and client ids, so tests never see each other's
    retained messages or sessions on the shared broker."""
    return uuid.uuid4().hex[:8]


def _timescale_install() -> tuple[str, str] | str:
    """``(bindir, version)`` of a PostgreSQL with the timescaledb extension, or why not."""
    import glob

    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin/postgres"), reverse=True)
    if not candidates:
        return "no PostgreSQL server binaries under /usr/lib/postgresql/*/bin"
    for postgres in candidates:
        version = postgres.split("/")[-3]
        control = f"/usr/share/postgresql/{version}/extension/timescaledb.control"
        if os.path.exists(control):
            return os.path.dirname(postgres), version
    return (
        "the timescaledb extension is not installed for any local PostgreSQL "
        "(no /usr/share/postgresql/<version>/extension/timescaledb.control); "
        "Timescale-only behaviour is tested where it is"
    )


@pytest.fixture(scope="session")
def timescale_admin_url() -> Iterator[str]:
    """A private PostgreSQL cluster with timescaledb preloaded (own port and data dir).

    Skipped, with the reason, where the extension is not installed.
    """
    import shutil
    import socket
    import subprocess
    import time

    found = _timescale_install()
    if isinstance(found, str):
        pytest.skip(found)
    bindir, _version = found
    import tempfile
    from pathlib import Path

    # Not under pytest's tmp dir: that one is private to the user running the tests, and
    # the server may have to run as another user.
    base = Path(tempfile.mkdtemp(prefix="atmfleet-tsdb-"))
    data = base / "data"
    as_user: list[str] = []
    if os.geteuid() == 0:  # initdb and postgres refuse to run as root
        shutil.chown(base, "postgres")
        as_user = ["runuser", "-u", "postgres", "--"]
    subprocess.run(
        [
            *as_user,
            f"{bindir}/initdb",
            "-D",
            str(data),
            "-U",
            "postgres",
            "--auth=trust",
            "-E",
            "UTF8",
        ],
        check=True,
        capture_output=True,
    )
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen(
        [
            *as_user,
            f"{bindir}/postgres",
            "-D",
            str(data),
            "-p",
            str(port),
            "-k",
            str(base),
            "-c",
            "listen_addresses=127.0.0.1",
            "-c",
            "shared_preload_libraries=timescaledb",
            "-c",
            "timescaledb.telemetry_level=off",
            "-c",
            "fsync=off",
            # Room for every test database's job scheduler and its jobs: short of workers
            # the scheduler fails a job with "failed to start job" instead of running it.
            "-c",
            "max_worker_processes=32",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"postgresql://postgres@127.0.0.1:{port}/postgres"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                psycopg.connect(url, connect_timeout=1).close()
                break
            except psycopg.OperationalError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise
                time.sleep(0.2)
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
def timescale_url(timescale_admin_url: str) -> Iterator[str]:
    """A new database with the timescaledb extension, on the private cluster."""
    name = f"atmfleet_ts_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(timescale_admin_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    url = _with_db(timescale_admin_url, name)
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("CREATE EXTENSION IF NOT EXISTS timescaledb")
    try:
        yield url
    finally:
        with psycopg.connect(timescale_admin_url, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            # The database's own roles (migration 0006); roles are cluster-wide.
            for kind in ("owner", "writer", "reader"):
                conn.execute(f'DROP ROLE IF EXISTS "{name}_{kind}"')


@pytest.fixture(params=["postgres", pytest.param("timescale", marks=pytest.mark.timescale)])
def flavour_url(request: pytest.FixtureRequest) -> str:
    """A new database on plain PostgreSQL (``database_url``), then on TimescaleDB
    (``timescale_url``): for a test that must hold on both flavours."""
    name = "database_url" if request.param == "postgres" else "timescale_url"
    url: str = request.getfixturevalue(name)
    return url


_TIMESCALE_FIXTURES = frozenset({"timescale_admin_url", "timescale_url"})


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Every Timescale-flavoured test carries the ``timescale`` marker (``-m timescale``
    selects them all, ``-m 'not timescale'`` none): one that uses the private TimescaleDB
    server's fixtures or is the ``timescale`` case of a parametrised test without the
    marker stops the collection."""
    unmarked = []
    for item in items:
        params = getattr(getattr(item, "callspec", None), "params", {})
        flavoured = _TIMESCALE_FIXTURES & set(getattr(item, "fixturenames", ())) or (
            "timescale" in params.values()
        )
        if flavoured and item.get_closest_marker("timescale") is None:
            unmarked.append(item.nodeid)
    if unmarked:
        raise pytest.UsageError(
            "Timescale-flavoured tests without the `timescale` marker (use "
            "pytest.param(..., marks=pytest.mark.timescale)): " + ", ".join(unmarked)
        )


@pytest.fixture(scope="session")
def web_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[object]:
    """The web console over a seeded database, shared by the web tests (tests/web_server.py)."""
    from tests.web_server import serve

    yield from serve(tmp_path_factory.mktemp("web-out"))
