"""The demo stays local: its embedded PostgreSQL and MQTT broker listen on 127.0.0.1 only.

Checked from outside, by the sockets the operating system shows: every listening socket
of the process that serves the port (and of its children) is on 127.0.0.1, and
PostgreSQL has no Unix socket either.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import psutil
import psycopg
import pytest

from app.embedded import embedded_broker, embedded_postgres


@pytest.fixture
def workdir() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="atmfleet-local-"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def listening(port: int) -> list[tuple[str, int]]:
    """Every listening address of the process serving ``port`` on this machine, and of its
    children; also every other listener on that port, whoever owns it."""
    sockets = psutil.net_connections(kind="inet")
    on_port = [s for s in sockets if s.status == psutil.CONN_LISTEN and s.laddr.port == port]
    assert on_port, f"nothing listens on {port}"
    pids: set[int] = set()
    for s in on_port:
        if s.pid is not None:
            pids.add(s.pid)
            pids.update(c.pid for c in psutil.Process(s.pid).children(recursive=True))
    mine = [s for s in sockets if s.status == psutil.CONN_LISTEN and s.pid in pids]
    return sorted({(s.laddr.ip, s.laddr.port) for s in [*on_port, *mine]})


def test_the_embedded_database_listens_on_127_0_0_1_only(workdir: Path) -> None:
    with embedded_postgres(workdir / "pg", database="demo") as url:
        port = urlsplit(url).port
        assert port is not None
        addresses = listening(port)
        with psycopg.connect(url) as conn:
            sockets = conn.execute("SHOW unix_socket_directories").fetchone()
    assert addresses == [("127.0.0.1", port)]
    assert sockets == ("",)


@pytest.mark.parametrize("protocol", ["5", "3.1.1"])
def test_the_embedded_broker_listens_on_127_0_0_1_only(protocol: str) -> None:
    with embedded_broker(protocol=protocol) as url:  # type: ignore[arg-type]
        port = urlsplit(url).port
        assert port is not None
        addresses = listening(port)
    assert addresses and all(ip == "127.0.0.1" for ip, _ in addresses), addresses
    assert ("127.0.0.1", port) in addresses
