"""Services of our own for benchmarks: a Mosquitto and a PostgreSQL cluster, each on a free
port of 127.0.0.1 with its data in a folder of the caller's, stoppable and restartable
(the shared services on 1883 and 5432 are never touched)."""

from __future__ import annotations

import getpass
import logging
import os
import shutil
import signal
import socket
import subprocess
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import psycopg

from app.embedded import free_port
from atmfleet.store.migrate import upgrade

#: Longest wait for any one event before a scenario gives up (and says what it waited for).
EVENT_TIMEOUT_S = 180.0


class ServiceError(RuntimeError):
    """A service did not start, or an awaited event did not happen in time."""


def until(check: Callable[[], bool], what: str, timeout: float = EVENT_TIMEOUT_S) -> None:
    """Poll ``check`` until it holds; a bounded loop."""
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise ServiceError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(0.05)


def wait_port(port: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise ServiceError(f"nothing listens on 127.0.0.1:{port}")


class Mosquitto:
    """A Mosquitto of our own on a fixed port, restartable with the same data directory."""

    def __init__(self, base: Path, settings: dict[str, str] | None = None) -> None:
        self.base = base
        self.base.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.url = f"mqtt://127.0.0.1:{self.port}"
        self.log_path = base / "mosquitto.log"
        # The collector's backlog must survive its absence: no queue limit unless asked.
        self.settings = {"persistence": "false", "max_queued_messages": "0", **(settings or {})}
        self.process: subprocess.Popen[bytes] | None = None
        self.starts = 0

    def describe(self) -> str:
        return ", ".join(f"{k} {v}" for k, v in self.settings.items())

    def start(self) -> None:
        binary = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
        if not Path(binary).exists():
            raise ServiceError("mosquitto is not installed (apt-get install mosquitto)")
        lines = [f"listener {self.port} 127.0.0.1", "allow_anonymous true"]
        lines += [f"persistence_location {self.base}/", "persistence_file mosquitto.db"]
        lines += [f"{k} {v}" for k, v in self.settings.items()]
        if os.geteuid() == 0:
            lines.append(f"user {getpass.getuser()}")
        conf = self.base / "mosquitto.conf"
        conf.write_text("\n".join(lines) + "\n")
        log = self.log_path.open("ab")
        self.process = subprocess.Popen(
            [shutil.which("mosquitto") or "/usr/sbin/mosquitto", "-c", str(conf)],
            stdout=log,
            stderr=log,
        )
        log.close()
        self.starts += 1
        wait_port(self.port)

    def signal(self, signum: int) -> int:
        """Send ``signum`` and wait for the broker to exit; its exit status."""
        assert self.process is not None
        self.process.send_signal(signum)
        code = self.process.wait(60)
        self.process = None
        return code

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.signal(signal.SIGTERM)

    def connections_of(self, client_id: str) -> int:
        """How many times ``client_id`` connected, from the broker's own log."""
        text = self.log_path.read_text(errors="replace")
        return text.count(f" as {client_id} ")


class Postgres:
    """A PostgreSQL cluster of our own (``initdb``), stoppable and restartable.

    As root, ``initdb`` and ``postgres`` run as the ``postgres`` user (they refuse root).
    ``data`` may be put on a mount of its own (the disk-full scenario); the WAL always
    stays in ``base``, so a full data directory fails writes (SQLSTATE 53100) instead of
    stopping the server.
    """

    def __init__(
        self, base: Path, data: Path | None = None, settings: dict[str, str] | None = None
    ) -> None:
        self.base = base
        #: More ``-c name=value`` server settings (e.g. shared_preload_libraries).
        self.settings = settings or {}
        self.data = data or base / "data"
        self.wal = base / "wal"
        self.port = free_port()
        self.admin_url = f"postgresql://postgres@127.0.0.1:{self.port}/postgres"
        self.bindir = self._bindir()
        self.as_user: list[str] = []
        if os.geteuid() == 0:
            self.as_user = ["runuser", "-u", "postgres", "--"]
            for path in (base, self.data):
                path.mkdir(parents=True, exist_ok=True)
                shutil.chown(path, "postgres")
        self.process: subprocess.Popen[bytes] | None = None
        self.log_path = base / "postgres.log"
        subprocess.run(
            [
                *self.as_user,
                f"{self.bindir}/initdb",
                "-D",
                str(self.data),
                "-X",
                str(self.wal),
                "-U",
                "postgres",
                "--auth=trust",
                "-E",
                "UTF8",
                "--no-sync",
            ],
            check=True,
            capture_output=True,
        )

    @staticmethod
    def _bindir() -> str:
        found = sorted(Path("/usr/lib/postgresql").glob("*/bin/postgres"), reverse=True)
        if not found:
            raise ServiceError("no PostgreSQL server under /usr/lib/postgresql/*/bin")
        return str(found[0].parent)

    def start(self) -> None:
        log = self.log_path.open("ab")
        self.process = subprocess.Popen(
            [
                *self.as_user,
                f"{self.bindir}/postgres",
                "-D",
                str(self.data),
                "-p",
                str(self.port),
                "-k",
                str(self.base),
                "-c",
                "listen_addresses=127.0.0.1",
                "-c",
                "fsync=off",
                "-c",
                "shared_buffers=64MB",
                *(arg for k, v in self.settings.items() for arg in ("-c", f"{k}={v}")),
            ],
            stdout=log,
            stderr=log,
        )
        log.close()
        until(self._accepts, "PostgreSQL to accept connections", 60)

    def _accepts(self) -> bool:
        if self.process is not None and self.process.poll() is not None:
            raise ServiceError(f"postgres exited; see {self.log_path}")
        try:
            psycopg.connect(self.admin_url, connect_timeout=1).close()
            return True
        except psycopg.OperationalError:
            return False

    def stop(self) -> None:
        """A fast shutdown (SIGINT): sessions are ended, the server exits."""
        if self.process is not None and self.process.poll() is None:
            pid = int((self.data / "postmaster.pid").read_text().split()[0])
            os.kill(pid, signal.SIGINT)  # the server itself, not runuser
            self.process.wait(60)
        self.process = None

    def database(self) -> str:
        """A new database with the schema; its URL."""
        name = f"atmfleet_bench_{uuid.uuid4().hex[:8]}"
        with psycopg.connect(self.admin_url, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        url = self.admin_url.rsplit("/", 1)[0] + "/" + name
        # Plain PostgreSQL on purpose (no timescaledb preloaded): no warning about it.
        logging.getLogger("atmfleet.store.migrate").setLevel(logging.ERROR)
        with psycopg.connect(url, autocommit=True) as conn:
            upgrade(conn)
        return url
