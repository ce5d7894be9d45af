"""The whole system live: simulator -> Mosquitto -> collector -> PostgreSQL, with
``atmfleet serve`` scraped by a real Prometheus evaluating the shipped rules and the
incident engine following the store.

    python bench/fleet.py [--devices 100000] [--minutes 10] [--before CHECKOUT]

Everything runs on services of our own (a Mosquitto and a PostgreSQL cluster on free
ports, a Prometheus with its data in a temporary folder); nothing shared is touched.

- The fleet's inventory (``simulator.fleet.generate_inventory``, seed 1) is loaded, then
  ``atmfleet simulate --devices N --duration M`` plays it live (speed 1).
- ``atmfleet collect`` (this checkout) stores it. With ``--before CHECKOUT`` (a checkout
  of another commit, e.g. ``git worktree add /tmp/before <commit>``) that checkout's
  collector runs beside it on the same broker, its own session and its own database:
  both receive every message of the same load, on the same busy machine, at the same
  time, so their figures compare side by side. ``--simulator CHECKOUT`` plays the fleet
  with another checkout's simulator (e.g. one that spreads the heartbeats' phases).
- ``atmfleet serve`` and ``atmfleet incidents run`` work on this checkout's database;
  Prometheus scrapes ``serve`` and the collectors every 15 s and evaluates
  ``exporters/prometheus/atmfleet.rules.yml`` every 30 s.

The PostgreSQL runs with ``track_commit_timestamp = on``, so each stored row knows when
it was committed: *receive -> commit* (``commit - received_at``) and *device timestamp ->
stored* (``commit - ts``, for heartbeats: the state samples) are exact per message, not
sampled. The collector's own lag gauge (age of the oldest message not yet acknowledged)
is also scraped every second. Device time up to ``--warmup`` seconds after the first
message is left out of the latencies (and shown apart): the simulator sets up every
device's state machine after its clock has started, so what falls due meanwhile goes out
late. CPU means are over the time messages flow (first message to the simulator's end).

Per process (with its children: the collector's store worker, PostgreSQL's backends,
serve's processes of its costlier parts) it prints CPU % of one core (mean over the run,
and the largest 10-second mean), peak RSS, the nice value it ran at, and the peak RSS of
the process itself (without its children).

Priorities are those of the shipped units (``deploy/systemd/``: ``Nice=`` of
``atmfleet-collector.service``, ``atmfleet-serve.service``, ``atmfleet-incidents.service``
and of Prometheus's drop-in ``prometheus.service.d/atmfleet-priority.conf``), read from
the files as a user installs them; every other measured process (PostgreSQL, Mosquitto,
the simulator, ``--reader``) runs at nice 0, whatever nice value this script itself was
started with (``nice -n 10 python bench/fleet.py`` lowers only the driver). Both
collectors of ``--before`` get the collector's. ``CPUWeight=`` needs the service
manager's cgroups and is not applied (on one cgroup, nice values weigh the same way).
``--priorities none`` runs everything at nice 0, as before the units were shipped.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
import urllib.request
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psutil
import psycopg
from ingest import scrape
from prometheus_client.parser import text_string_to_metric_families
from promrun import shipped_environment
from services import Mosquitto, Postgres, ServiceError, until, wait_port

from app.embedded import free_port
from atmfleet.store.inventory import upsert_inventory
from simulator.fleet import generate_inventory

ROOT = Path(__file__).resolve().parent.parent
RULES = ROOT / "exporters" / "prometheus" / "atmfleet.rules.yml"
#: The shipped units whose priority the bench gives its processes, by part.
UNITS = {
    "collector": Path("deploy/systemd/atmfleet-collector.service"),
    "serve": Path("deploy/systemd/atmfleet-serve.service"),
    "incidents": Path("deploy/systemd/atmfleet-incidents.service"),
    "prometheus": Path("deploy/systemd/prometheus.service.d/atmfleet-priority.conf"),
}
SAMPLE_S = 1.0
WINDOW_S = 10.0


# -- processes ------------------------------------------------------------------------------


@dataclass
class Watched:
    """A process tree whose CPU and memory are sampled."""

    name: str
    root: psutil.Process
    popen: subprocess.Popen[bytes] | None = None
    log: Path | None = None
    nice: int | None = None  # what it was started with (None: not set by the bench)
    peak_rss: int = 0
    peak_own_rss: int = 0  # the process alone, without its children
    cpu0: float | None = None
    cpu_last: float = 0.0
    cpu_flow: float | None = None  # CPU seconds when the first message arrived
    flow_window: int = 0  # windows before it
    windows: list[float] = field(default_factory=list)
    _window_cpu: float = 0.0
    _window_at: float = 0.0
    _seen: dict[int, float] = field(default_factory=dict)
    _gone: float = 0.0

    def cpu_seconds(self) -> float:
        """CPU time of the tree, counting children that have already exited."""
        procs = [self.root]
        with contextlib.suppress(psutil.Error):
            procs += self.root.children(recursive=True)
        now: dict[int, float] = {}
        for p in procs:
            with contextlib.suppress(psutil.Error):
                t = p.cpu_times()
                now[p.pid] = t.user + t.system
        for pid, last in self._seen.items():
            if pid not in now:
                self._gone += last
        self._seen = now
        return self._gone + sum(now.values())

    def rss(self) -> int:
        total = 0
        procs = [self.root]
        with contextlib.suppress(psutil.Error):
            procs += self.root.children(recursive=True)
        for p in procs:
            with contextlib.suppress(psutil.Error):
                total += p.memory_info().rss
        return total

    def sample(self, now: float) -> None:
        cpu = self.cpu_seconds()
        self.peak_rss = max(self.peak_rss, self.rss())
        with contextlib.suppress(psutil.Error):
            self.peak_own_rss = max(self.peak_own_rss, self.root.memory_info().rss)
        if self.cpu0 is None:
            self.cpu0, self._window_cpu, self._window_at = cpu, cpu, now
        elif now - self._window_at >= WINDOW_S:
            self.windows.append(100 * (cpu - self._window_cpu) / (now - self._window_at))
            self._window_cpu, self._window_at = cpu, now
        self.cpu_last = cpu


def env_for(db_url: str, mqtt_url: str, checkout: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ATMFLEET_")}
    env.update(
        ATMFLEET_DATABASE_URL=db_url,
        ATMFLEET_MQTT_URL=mqtt_url,
        PYTHONPATH=str(checkout),
        **{k: v for k, v in os.environ.items() if k.startswith("ATMFLEET_COLLECTOR__")},
    )
    return env


@dataclass(frozen=True)
class Priority:
    """What a unit file sets: ``Nice=`` (applied by the bench), ``CPUWeight=``, and the
    variables of its ``Environment=`` lines (set by the bench, e.g. ``MALLOC_ARENA_MAX``)."""

    nice: int = 0
    cpu_weight: int | None = None
    environment: dict[str, str] = field(default_factory=dict)


def unit_priority(path: Path) -> Priority:
    """``Nice=``, ``CPUWeight=`` and ``Environment=`` of a unit file or drop-in (defaults
    when absent)."""
    values: dict[str, str] = {}
    environment: dict[str, str] = {}
    if path.exists():
        section = ""
        for raw in path.read_text(encoding="utf-8").splitlines():
            line = raw.strip()
            if line.startswith("["):
                section = line
            elif section == "[Service]" and "=" in line and not line.startswith(("#", ";")):
                key, _, value = line.partition("=")
                values[key.strip()] = value.strip()
                if key.strip() == "Environment":
                    for item in shlex.split(value.strip()):
                        name, _, setting = item.partition("=")
                        environment[name] = setting
    weight = values.get("CPUWeight")
    return Priority(int(values.get("Nice", "0")), int(weight) if weight else None, environment)


def shipped_priorities(root: Path = ROOT) -> dict[str, Priority]:
    """The priority of each part as the units shipped in ``root`` set it."""
    return {part: unit_priority(root / path) for part, path in UNITS.items()}


def niced(args: list[str], nice: int | None) -> list[str]:
    """``args`` run at the absolute nice value ``nice`` (not relative to this script's:
    ``nice -n`` adds to the niceness it is started with), or as they are when None."""
    if nice is None:
        return args
    delta = nice - os.getpriority(os.PRIO_PROCESS, 0)
    return ["nice", "-n", str(delta), *args] if delta else args


def renice_tree(process: psutil.Process, nice: int) -> str | None:
    """Give a running process and its children the nice value ``nice``; what went wrong."""
    try:
        for p in [process, *process.children(recursive=True)]:
            with contextlib.suppress(psutil.NoSuchProcess):
                p.nice(nice)
    except psutil.AccessDenied as exc:
        return f"cannot renice {process.pid} to {nice}: {exc}"
    return None


def spawn(
    name: str,
    args: list[str],
    env: dict[str, str],
    cwd: Path,
    logs: Path,
    nice: int | None = None,
) -> Watched:
    log_path = logs / f"{name}.log"
    with log_path.open("wb") as log:
        proc = subprocess.Popen(niced(args, nice), env=env, cwd=cwd, stdout=log, stderr=log)
    return Watched(name, psutil.Process(proc.pid), proc, log_path, nice)


def atmfleet(checkout: Path, *args: str) -> list[str]:
    return [sys.executable, "-m", "app.cli", *args]


def tail(path: Path | None, chars: int = 2000) -> str:
    if path is None or not path.exists():
        return ""
    return path.read_text(errors="replace")[-chars:]


def stop_all(watched: list[Watched]) -> None:
    for w in watched:
        if w.popen is not None and w.popen.poll() is None:
            w.popen.send_signal(signal.SIGTERM)
    for w in watched:
        if w.popen is not None:
            try:
                w.popen.wait(60)
            except subprocess.TimeoutExpired:
                w.popen.kill()


# -- prometheus -------------------------------------------------------------------------------


def prometheus_config(folder: Path, serve_port: int, collector_ports: list[int]) -> Path:
    shutil.copy(RULES, folder / "atmfleet.rules.yml")
    targets = ", ".join(f'"127.0.0.1:{p}"' for p in collector_ports)
    text = f"""global:
  scrape_interval: 15s
  evaluation_interval: 30s
rule_files:
  - atmfleet.rules.yml
scrape_configs:
  - job_name: atmfleet
    scrape_interval: 30s
    scrape_timeout: 25s
    static_configs:
      - targets: ["127.0.0.1:{serve_port}"]
  - job_name: atmfleet-collector
    static_configs:
      - targets: [{targets}]
"""
    path = folder / "prometheus.yml"
    path.write_text(text)
    return path


# -- figures ----------------------------------------------------------------------------------


def pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    s = sorted(values)
    return s[min(len(s) - 1, int(q * len(s)))]


def fmt(v: float | None, unit: str = "s") -> str:
    return "–" if v is None else f"{v:.2f}{unit}"


LATENCY = """
SELECT count(*),
       percentile_cont(ARRAY[0.5, 0.99]) WITHIN GROUP (ORDER BY
           extract(epoch FROM pg_xact_commit_timestamp(xmin) - received_at)),
       percentile_cont(ARRAY[0.5, 0.99]) WITHIN GROUP (ORDER BY
           extract(epoch FROM pg_xact_commit_timestamp(xmin) - ts)),
       percentile_cont(ARRAY[0.5, 0.99]) WITHIN GROUP (ORDER BY
           extract(epoch FROM received_at - ts))
FROM {table} WHERE ts >= %s AND ts < %s
"""

STORED = """
SELECT (SELECT count(*) FROM state_samples) + (SELECT count(*) FROM events)
     + (SELECT count(*) FROM transactions) + (SELECT count(*) FROM presence),
       (SELECT count(*) FROM dead_letters)
"""

#: Kept closed days (rules/feed.py) deleted by late telemetry and kept (again) meanwhile:
#: the churn between the collector and ``serve``.
KEPT_CHURN = """
SELECT n_tup_del, n_tup_ins + n_tup_upd FROM pg_stat_user_tables WHERE relname = 'kpi_device_days'
"""

#: Heartbeats sharing one second of the minute: the simulator's burst.
BURST = """
SELECT max(n)::float / sum(n) FROM (
  SELECT count(*) AS n FROM state_samples WHERE ts >= %s AND ts < %s
  GROUP BY extract(second FROM ts)::int) s
"""


@dataclass
class Store:
    name: str
    db_url: str
    metrics_port: int
    watched: Watched | None = None
    lags: list[float] = field(default_factory=list)
    rates: list[float] = field(default_factory=list)
    last: tuple[float, float] | None = None
    values: dict[str, float] = field(default_factory=dict)

    def poll(self, now: float) -> None:
        try:
            self.values = scrape(self.metrics_port)
        except OSError:
            return
        self.lags.append(self.values.get("atmfleet_collector_lag_seconds", 0.0))
        stored = self.values.get("atmfleet_collector_messages_stored_total", 0.0)
        if self.last is not None and now > self.last[0]:
            self.rates.append((stored - self.last[1]) / (now - self.last[0]))
        self.last = (now, stored)

    def done(self) -> float:
        return sum(
            self.values.get(f"atmfleet_collector_messages_{k}_total", 0.0)
            for k in ("stored", "duplicate", "rejected")
        )


#: What a collector's backend is doing, by the statement it runs (its first characters).
PHASES = (
    ("COPY _stage_", "COPY into staging"),
    ("CREATE TEMP TABLE", "staging tables"),
    ("WITH s AS", "move + device_sequences"),
    ("SELECT bucket FROM run_locks", "run locks"),
    ("SELECT d.id, r.", "newest runs"),
    ("SELECT p.device_id, presence_at(p.will, p.ts, p.received_at)\nFROM unnest", "cuts after"),
    ("INSERT INTO state_runs", "state_runs upsert"),
    ("DELETE FROM kpi_device_days", "kept days invalidated"),
    ("DELETE FROM state_runs", "runs recomputed"),
    ("SELECT device_id, ts, seq, state", "staged samples read"),
    ("SELECT s.device_id", "new samples read"),
    ("SELECT 'c', p.device_id", "new cuts, power, txns read"),
    ("SELECT p.device_id", "new cuts read"),
    ("SELECT e.device_id", "new power read"),
    ("SELECT t.device_id", "new txns read"),
    ("COMMIT", "commit"),
    ("COPY dead_letters", "dead letters"),
    ("UPDATE collector_runs", "liveness"),
    ("SELECT coalesce(sum(missing)", "liveness"),
)

ACTIVITY = """
SELECT datname, pid, state, coalesce(wait_event_type || ':' || wait_event, 'CPU'),
       ltrim(left(query, 80))
FROM pg_stat_activity
WHERE application_name LIKE 'atmfleet-collector%%' AND pid <> pg_backend_pid()
"""


def phase(query: str) -> str:
    for prefix, name in PHASES:
        if query.startswith(prefix):
            return name
    return query[:30].replace("\n", " ")


class Waits:
    """Samples pg_stat_activity every ``interval`` s for each collector's backends: where
    its batches spend their time (statement and wait event; ``idle in transaction`` = the
    store worker's own Python between two statements; ``idle`` = no batch to store), over
    the whole run and while its lag gauge is above ``slow_s``."""

    def __init__(self, admin_url: str, stores: list[Store], interval: float = 0.1,
                 slow_s: float = 2.0) -> None:  # fmt: skip
        self.admin_url = admin_url
        self.stores = {s.db_url.rsplit("/", 1)[1]: s for s in stores}
        self.interval = interval
        self.slow_s = slow_s
        self.all: dict[str, Counter[str]] = {name: Counter() for name in self.stores}
        self.slow: dict[str, Counter[str]] = {name: Counter() for name in self.stores}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="waits", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)

    def _run(self) -> None:
        with (
            contextlib.suppress(psycopg.Error),
            psycopg.connect(self.admin_url, autocommit=True) as conn,
        ):
            while not self._stop.wait(self.interval):
                for datname, _pid, state, wait, query in conn.execute(ACTIVITY).fetchall():
                    store = self.stores.get(datname)
                    if store is None:
                        continue
                    name = phase(query or "")
                    if name == "liveness":
                        if state != "active":
                            continue
                        key = f"liveness ({wait})"
                    elif state == "active":
                        key = f"{name} ({wait})"
                    elif state == "idle in transaction":
                        key = "worker between statements"
                    else:
                        key = "idle: no batch"
                    self.all[datname][key] += 1
                    if store.lags and store.lags[-1] > self.slow_s:
                        self.slow[datname][key] += 1

    def report(self, top: int = 8) -> None:
        for datname, store in self.stores.items():
            for title, counts in (("all", self.all[datname]),
                                  (f"lag > {self.slow_s:g}s", self.slow[datname])):  # fmt: skip
                total = sum(counts.values())
                if not total:
                    print(f"{store.name} backend ({title}): no sample")
                    continue
                parts = ", ".join(
                    f"{key} {100 * n / total:.0f} %" for key, n in counts.most_common(top)
                )
                print(f"{store.name} backend ({title}, {total:,} samples): {parts}")


# -- the run ----------------------------------------------------------------------------------


#: The bench's PostgreSQL: commit timestamps for the latencies; its log says which of the
#: collector's statements took long (with the lock waits and autovacuum runs beside them).
PG_SETTINGS = {
    "track_commit_timestamp": "on",
    "max_connections": "200",
    "log_line_prefix": "%m [%p] %a: ",
    "log_min_duration_statement": "1000",
    "log_lock_waits": "on",
    "log_autovacuum_min_duration": "0",
    "log_checkpoints": "on",
}

_DURATION = re.compile(
    r"\] atmfleet-collector ([^:]*): LOG:  duration: ([\d.]+) ms  (?:statement|execute [^:]*): (.*)"
)
_AUTOVACUUM = re.compile(r"automatic (vacuum|analyze) of table \"[^.]+\.([^.]+)\.([^\"]+)\"")
_ELAPSED = re.compile(r"elapsed: ([\d.]+) s")


def pg_log_summary(path: Path) -> list[str]:
    """The collectors' statements over 1 s by kind, the lock waits, the autovacuum runs
    by table (with their longest elapsed time), from the bench PostgreSQL's log."""
    if not path.exists():
        return []
    slow: dict[str, dict[str, list[float]]] = {}
    vacuum: dict[str, list[float]] = {}
    lock_waits = 0
    pending: str | None = None
    for line in path.read_text(errors="replace").splitlines():
        if m := _DURATION.search(line):
            by_kind = slow.setdefault(m.group(1), {})
            by_kind.setdefault(phase(m.group(3)), []).append(float(m.group(2)) / 1000)
        elif "still waiting for" in line:
            lock_waits += 1
        elif (m := _AUTOVACUUM.search(line)) and m.group(1) == "vacuum" and m.group(2) == "public":
            pending = m.group(3)
        elif pending and (m := _ELAPSED.search(line)):
            vacuum.setdefault(pending, []).append(float(m.group(1)))
            pending = None
    out = [
        f"{client}'s statements over 1 s: "
        + ", ".join(
            f"{k} {len(v)}x (max {max(v):.1f}s)"
            for k, v in sorted(kinds.items(), key=lambda kv: -sum(kv[1]))
        )
        for client, kinds in sorted(slow.items())
    ] or ["collectors' statements over 1 s: none"]
    out += [
        f"lock waits over deadlock_timeout (1 s), any session: {lock_waits}",
        "autovacuum (the schema's tables): "
        + (
            ", ".join(f"{k} {len(v)}x (max {max(v):.1f}s)" for k, v in sorted(vacuum.items()))
            or "none"
        ),
    ]
    return out


@contextlib.contextmanager
def services(tmp: Path) -> Iterator[tuple[Mosquitto, Postgres]]:
    broker = Mosquitto(tmp / "mosquitto")
    pg = Postgres(tmp / "pg", settings=PG_SETTINGS)
    try:
        broker.start()
        pg.start()
        yield broker, pg
    finally:
        broker.stop()
        pg.stop()


def postgres_tree(pg: Postgres) -> Watched:
    pid = int((pg.data / "postmaster.pid").read_text().split()[0])
    return Watched("postgres", psutil.Process(pid))


def run(args: argparse.Namespace) -> None:
    before = Path(args.before).resolve() if args.before else None
    with tempfile.TemporaryDirectory(prefix="atmfleet-fleet-") as tmp_name:
        tmp = Path(tmp_name)
        tmp.chmod(0o755)  # the postgres user must reach its folder
        logs = tmp / "logs"
        logs.mkdir()
        with services(tmp) as (broker, pg):
            t = time.monotonic()
            inventory = generate_inventory(args.devices, seed=1)
            stores = [Store("collector", pg.database(), free_port())]
            if before is not None:
                stores.append(Store("collector BEFORE", pg.database(), free_port()))
            for s in stores:
                with psycopg.connect(s.db_url) as conn:
                    upsert_inventory(conn, inventory)
            del inventory
            print(
                f"set-up: {args.devices:,} devices loaded into {len(stores)} database(s) in "
                f"{time.monotonic() - t:.0f}s; broker {broker.url}; PostgreSQL :{pg.port}",
                flush=True,
            )
            watched: list[Watched] = [postgres_tree(pg)]
            readers: list[Reader] = []
            if broker.process is not None:
                watched.append(Watched("mosquitto", psutil.Process(broker.process.pid)))
            # Started before the clients, so every backend forked later inherits it.
            for w in watched:
                if problem := renice_tree(w.root, 0):
                    print(f"priorities: {problem}", flush=True)
                else:
                    w.nice = 0
            try:
                run_parts(args, tmp, logs, broker, stores, before, watched, readers, pg)
            finally:
                for reader in readers:
                    reader.stop()
                stop_all(watched)
                if args.keep:
                    keep = Path(args.keep)
                    keep.mkdir(parents=True, exist_ok=True)
                    for log in [*logs.iterdir(), pg.log_path]:
                        shutil.copy(log, keep / log.name)


def run_parts(
    args: argparse.Namespace,
    tmp: Path,
    logs: Path,
    broker: Mosquitto,
    stores: list[Store],
    before: Path | None,
    watched: list[Watched],
    readers: list[Reader],
    pg: Postgres,
) -> None:
    main_db = stores[0].db_url
    token = uuid.uuid4().hex[:6]
    shipped = args.priorities == "shipped"
    units = shipped_priorities() if shipped else {}
    nice = {part: units[part].nice if shipped else 0 for part in UNITS}
    #: What each part's unit sets in its environment (Environment=), applied as shipped.
    unit_env = {part: units[part].environment if shipped else {} for part in UNITS}
    if shipped:
        print(
            "priorities as shipped (deploy/systemd, Nice= and Environment= applied; "
            "CPUWeight= needs the service manager): "
            + ", ".join(
                f"{part} nice {p.nice} (CPUWeight {p.cpu_weight or 'default'})"
                + "".join(f" {k}={v}" for k, v in p.environment.items())
                for part, p in units.items()
            )
            + "; PostgreSQL, Mosquitto, the simulator and readers nice 0",
            flush=True,
        )
    else:
        print("priorities: none (--priorities none): every process at nice 0", flush=True)
    for i, s in enumerate(stores):
        checkout = ROOT if i == 0 else before
        assert checkout is not None
        env = env_for(s.db_url, broker.url, checkout)
        env.update(ATMFLEET_MQTT_PROTOCOL="5", ATMFLEET_COLLECTOR__CLIENT_ID=f"fleet-{i}-{token}")
        env.update(dict(kv.split("=", 1) for kv in (args.set if i == 0 else [])))
        s.watched = spawn(
            s.name.replace(" ", "-"),
            atmfleet(checkout, "collect", "--metrics-port", str(s.metrics_port)),
            env | unit_env["collector"],
            checkout,
            logs,
            nice["collector"],
        )
        watched.append(s.watched)
    for s in stores:
        until(functools.partial(_up, s), f"{s.name} metrics", 60)
    env = env_for(main_db, broker.url, ROOT)
    serve_port = free_port()
    if "serve" not in args.without:
        watched.append(
            spawn(
                "serve",
                atmfleet(
                    ROOT,
                    *(["-vv"] if args.serve_timings else []),
                    "serve",
                    "--host",
                    "127.0.0.1",
                    "--port",
                    str(serve_port),
                ),
                env | unit_env["serve"],
                ROOT,
                logs,
                nice["serve"],
            )
        )
    if "incidents" not in args.without:
        watched.append(
            spawn(
                "incidents", atmfleet(ROOT, "incidents", "run"), env | unit_env["incidents"],
                ROOT, logs, nice["incidents"],
            )
        )  # fmt: skip
    prom_port: int | None = None
    if "prometheus" not in args.without:
        prom_dir = tmp / "prometheus"
        prom_dir.mkdir()
        prom_port = free_port()
        conf = prometheus_config(prom_dir, serve_port, [s.metrics_port for s in stores])
        watched.append(
            spawn(
                "prometheus",
                [
                    "prometheus",
                    f"--config.file={conf}",
                    f"--storage.tsdb.path={prom_dir / 'data'}",
                    f"--web.listen-address=127.0.0.1:{prom_port}",
                ],
                env | shipped_environment(),  # what the shipped unit's drop-in sets
                prom_dir,
                logs,
                nice["prometheus"],
            )
        )
        wait_port(prom_port, 30)
    for i, command in enumerate(args.reader):
        for j, s in enumerate(stores):  # the same reads on every collector's database
            reader = Reader(f"reader-{i}-{j}", command.split(), env_for(s.db_url, broker.url, ROOT))
            reader.start()
            readers.append(reader)
    sim_started = time.time()
    sim_checkout = Path(args.simulator).resolve() if args.simulator else ROOT
    sim = spawn(
        "simulator",
        atmfleet(
            ROOT,
            "simulate",
            "--devices",
            str(args.devices),
            "--seed",
            "1",
            "--duration",
            f"{args.minutes * 60:.0f}s",
            "--mqtt-url",
            broker.url,
        ),
        env_for(main_db, broker.url, sim_checkout),
        sim_checkout,
        logs,
        0,  # the devices: elsewhere in a real fleet, a process like any other here
    )
    watched.append(sim)
    parts = [p for p in ("serve", "incidents run", "Prometheus") if p.split()[0].lower()
             not in args.without]  # fmt: skip
    parts += [f"{len(stores)} x `atmfleet {r}` in a loop" for r in args.reader]
    print(
        f"running: simulator, Mosquitto, {len(stores)} collector(s), PostgreSQL, "
        f"{', '.join(parts)}; {args.minutes:g} min live",
        flush=True,
    )
    waits = Waits(pg.admin_url, stores)
    waits.start()
    assert sim.popen is not None
    next_report = time.monotonic() + 60
    flow_started: float | None = None
    while sim.popen.poll() is None:
        now = time.time()
        for w in watched:
            w.sample(time.monotonic())
        for s in stores:
            s.poll(now)
        if flow_started is None and any(
            s.values.get("atmfleet_collector_messages_received_total") for s in stores
        ):
            flow_started = now  # the simulator has set up its devices and publishes
            for w in watched:
                w.cpu_flow, w.flow_window = w.cpu_last, len(w.windows)
        for w in watched:
            if w.popen is not None and w is not sim and w.popen.poll() is not None:
                raise ServiceError(f"{w.name} exited early:\n{tail(w.log)}")
        if time.monotonic() >= next_report:
            next_report += 60
            line = "; ".join(
                f"{s.name} {s.values.get('atmfleet_collector_messages_received_total', 0):,.0f} "
                f"received, lag {s.lags[-1] if s.lags else 0:.1f}s (max of the minute "
                f"{max(s.lags[-60:], default=0):.1f}s)"
                for s in stores
            )
            print(f"  {(now - sim_started) / 60:4.1f} min: {line}; load "
                  f"{os.getloadavg()[0]:.1f}", flush=True)  # fmt: skip
        time.sleep(SAMPLE_S)
    sim_ended = time.time()
    out = tail(sim.log, 4000)
    m = re.search(r"published ([\d,]+) messages(?: \(\+([\d,]+) last wills\))? in ([\d.]+)s", out)
    if sim.popen.returncode != 0 or m is None:
        raise ServiceError(f"the simulator failed:\n{out}")
    published = int(m.group(1).replace(",", ""))
    wills = int((m.group(2) or "0").replace(",", ""))
    pub_seconds = float(m.group(3))
    # Drain: every collector has acknowledged what it received. A collector behind the
    # simulator still has messages at the broker: wait while it makes progress.
    for s in stores:
        s.poll(time.time())
        behind = published + wills - _stored(s)
        t = time.monotonic()
        drain(s, published + wills, STALL_S)
        print(f"{s.name}: {max(behind, 0):,} messages not yet stored when the simulator "
              f"ended, stored in {time.monotonic() - t:.0f}s more", flush=True)  # fmt: skip
    for w in watched:
        w.sample(time.monotonic())
    waits.stop()
    rule_round: tuple[float | None, float | None, dict[str, float]] = (None, None, {})
    if prom_port is not None:
        rule_round = _rule_round(prom_port)
        print(f"serve's refreshes, as scraped: {_refreshes(prom_port, sim_ended - sim_started)}")
        print(f"Prometheus targets: {_targets(prom_port)}", flush=True)
    report(args, stores, watched, published, wills, pub_seconds, sim_started,
           flow_started or sim_started, sim_ended, rule_round)  # fmt: skip
    print()
    for s in stores:
        for i, line in enumerate(batch_summary(s.metrics_port)):
            print(f"{s.name} batches: {line}" if i == 0 else f"  {line}")
    waits.report()
    for line in pg_log_summary(pg.log_path):
        print(line)
    for reader in readers:
        print(reader.summary())
    serve = next((w for w in watched if w.name == "serve"), None)
    if args.serve_timings and serve is not None:
        for line in serve_timings(serve.log):
            print(line)


def serve_timings(log: Path | None) -> list[str]:
    """Median and largest of each part of serve's reads (its debug 'read times' lines)."""
    import ast
    import statistics

    parts: dict[str, list[float]] = {}
    text = log.read_text(errors="replace") if log is not None and log.exists() else ""
    for m in re.finditer(r"read times \(s\): (\{.*\})", text):
        for name, value in ast.literal_eval(m.group(1)).items():
            parts.setdefault(name, []).append(float(value))
    if not parts:
        return ["serve's read times: none logged"]
    n = max(len(v) for v in parts.values())
    return [f"serve's reads ({n}), each part median / max: " + ", ".join(
        f"{name} {statistics.median(v):.1f} / {max(v):.1f}s" for name, v in parts.items())]  # fmt: skip


class Reader:
    """``atmfleet ARGS`` run again and again (a heavy read of the database) until stopped."""

    def __init__(self, name: str, args: list[str], env: dict[str, str]) -> None:
        self.name, self.args, self.env = name, args, env
        self.seconds: list[float] = []
        self.failed = 0
        self._stop = threading.Event()
        self._proc: subprocess.Popen[bytes] | None = None
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            t = time.monotonic()
            self._proc = subprocess.Popen(
                niced(atmfleet(ROOT, *self.args), 0), env=self.env, cwd=ROOT,
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            )  # fmt: skip
            code = self._proc.wait()
            if self._stop.is_set():
                return
            if code == 0:
                self.seconds.append(time.monotonic() - t)
            else:
                self.failed += 1
                self._stop.wait(5)

    def stop(self) -> None:
        self._stop.set()
        if self._proc is not None and self._proc.poll() is None:
            self._proc.terminate()
        self._thread.join(30)

    def summary(self) -> str:
        return (f"{self.name} `atmfleet {' '.join(self.args)}`: {len(self.seconds)} runs, "
                f"median {fmt(pct(self.seconds, 0.5))}, {self.failed} failed")  # fmt: skip


PHASE_ORDER = ("held", "to_worker", "decode", "queued", "copy", "move", "runs", "commit",
               "answer", "ack")  # fmt: skip


def batch_summary(port: int) -> list[str]:
    """The collector's batches from its histograms: how many, their mean size, how many
    took longer than 1 s, 2.5 s and 10 s in the worker; where their time went, by phase
    (mean, and the histogram bucket that holds the 99th percentile)."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
            text = resp.read().decode()
    except OSError as exc:
        return [f"unknown ({exc})"]
    buckets: dict[str, float] = {}
    count = size = 0.0
    phases: dict[str, dict[str, float]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            name, labels = sample.name, sample.labels
            if name == "atmfleet_collector_batch_duration_seconds_bucket":
                buckets[labels["le"]] = sample.value
            elif name == "atmfleet_collector_batch_duration_seconds_count":
                count = sample.value
            elif name == "atmfleet_collector_batch_messages_sum":
                size = sample.value
            elif name.startswith("atmfleet_collector_batch_phase_seconds_"):
                got = phases.setdefault(labels["phase"], {})
                key = labels.get("le", name.rsplit("_", 1)[1])
                got[key] = sample.value
    if not count:
        return ["none"]
    over = ", ".join(
        f"> {le} s: {count - buckets.get(le, count):,.0f}" for le in ("1.0", "2.5", "10.0")
    )
    out = [f"{count:,.0f}, mean {size / count:,.0f} messages; in the worker {over}"]
    parts = []
    for phase_name in sorted(phases, key=lambda p: (*PHASE_ORDER, p).index(p)):
        got = phases[phase_name]
        n = got.get("count", 0.0)
        if not n:
            continue
        bounds = sorted((float(le), v) for le, v in got.items() if le[:1].isdigit() or le == "+Inf")
        p99 = next((le for le, v in bounds if v >= 0.99 * n), float("inf"))
        parts.append(f"{phase_name} {got.get('sum', 0.0) / n:.3f}s (p99 <= {p99:g}s)")
    if parts:
        out.append("where a batch's time goes (mean, p99 bucket): " + ", ".join(parts))
    return out


def _up(s: Store) -> bool:
    s.poll(time.time())
    return bool(s.values)


#: The drain gives up on a collector that has stored nothing for this long.
STALL_S = 120.0


def drain(s: Store, expected: int, stall_s: float) -> None:
    """Wait until ``s`` has done (stored, found duplicate or dead-lettered) ``expected``
    messages and holds none, for as long as it keeps storing (a starved collector may be
    minutes behind the simulator); after ``stall_s`` without progress, say so and go on
    (the report's published vs stored shows what is missing)."""
    done, since = s.done(), time.monotonic()
    while not (_drained(s) and s.done() >= expected):
        if s.done() > done:
            done, since = s.done(), time.monotonic()
        elif time.monotonic() - since > stall_s:
            print(f"{s.name}: nothing stored for {stall_s:.0f}s while draining; "
                  f"{s.done():,.0f} of {expected:,} done", flush=True)  # fmt: skip
            return
        time.sleep(SAMPLE_S)


def _drained(s: Store) -> bool:
    s.poll(time.time())
    received = s.values.get("atmfleet_collector_messages_received_total", 0.0)
    return received > 0 and s.values.get("atmfleet_collector_buffered_messages", 1) == 0


def _rule_round(prom_port: int) -> tuple[float | None, float | None, dict[str, float]]:
    """Seconds of the last round of the shipped rules (summed over groups), the longest
    group, and each group's, from Prometheus' own rules API; None (and no group) when it
    has not evaluated one."""
    import json

    url = f"http://127.0.0.1:{prom_port}/api/v1/rules"
    with contextlib.suppress(OSError, KeyError, ValueError):
        with urllib.request.urlopen(url, timeout=10) as resp:
            groups = json.load(resp)["data"]["groups"]
        times = {
            g["name"]: float(g["evaluationTime"])
            for g in groups
            if g.get("lastEvaluation", "")[:4] > "2000"
        }
        if times:
            values = list(times.values())
            return sum(values), max(values), times
    return None, None, {}


def _refreshes(prom_port: int, seconds: float) -> str:
    """serve's refresh time (``atmfleet_exporter_scrape_duration_seconds``: the last
    refresh's) over the run as Prometheus scraped it: median and largest."""
    import json

    window = f"{max(int(seconds), 60)}s"
    out = []
    for name, expr in (
        ("median", f"quantile_over_time(0.5, atmfleet_exporter_scrape_duration_seconds[{window}])"),
        ("max", f"max_over_time(atmfleet_exporter_scrape_duration_seconds[{window}])"),
    ):
        url = f"http://127.0.0.1:{prom_port}/api/v1/query?" + urllib.parse.urlencode(
            {"query": expr}
        )
        try:
            with urllib.request.urlopen(url, timeout=10) as resp:
                result = json.load(resp)["data"]["result"]
            out.append(f"{name} {float(result[0]['value'][1]):.1f}s" if result else f"{name} –")
        except (OSError, KeyError, ValueError, IndexError) as exc:
            out.append(f"{name} unknown ({exc})")
    return ", ".join(out)


def _targets(prom_port: int) -> str:
    """Each scrape target's health and last error, as Prometheus saw it at the end."""
    import json

    url = f"http://127.0.0.1:{prom_port}/api/v1/targets"
    try:
        with urllib.request.urlopen(url, timeout=10) as resp:
            active = json.load(resp)["data"]["activeTargets"]
    except (OSError, KeyError, ValueError) as exc:
        return f"targets unknown ({exc})"
    return "; ".join(
        f"{t['labels'].get('job')} {t['health']}"
        + (f" ({t['lastError'][:80]})" if t.get("lastError") else "")
        + f", last scrape {float(t.get('lastScrapeDuration', 0)):.1f}s"
        for t in active
    )


def report(
    args: argparse.Namespace,
    stores: list[Store],
    watched: list[Watched],
    published: int,
    wills: int,
    pub_seconds: float,
    sim_started: float,
    flow_started: float,
    sim_ended: float,
    rule_round: tuple[float | None, float | None, dict[str, float]],
) -> None:
    wall = sim_ended - flow_started
    print()
    print(
        f"{args.devices:,} devices, {args.minutes:g} min live: the simulator's set-up took "
        f"{flow_started - sim_started:.0f}s, then {wall:.0f}s of messages (the figures below); "
        f"machine: {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f} "
        f"(1 min) / {os.getloadavg()[2]:.1f} (15 min)"
    )
    print(f"published: {published:,} messages (+{wills:,} last wills) in {pub_seconds:.0f}s = "
          f"{published / max(pub_seconds, 1e-9):,.0f} msgs/s")  # fmt: skip
    print()
    print(f"{'process':18} {'CPU % mean':>10} {'CPU % max10s':>12} {'peak RSS':>10} {'nice':>5}"
          f" {'itself':>10}")  # fmt: skip
    for w in watched:
        base = w.cpu_flow if w.cpu_flow is not None else (w.cpu0 or 0.0)
        mean = 100 * (w.cpu_last - base) / wall
        windows = w.windows[w.flow_window :]
        peak = max(windows) if windows else None
        print(f"{w.name:18} {mean:>10.1f} {fmt(peak, ''):>12} {w.peak_rss / 2**20:>7.0f} MiB "
              f"{'–' if w.nice is None else w.nice:>5} "
              f"{w.peak_own_rss / 2**20:>6.0f} MiB")  # fmt: skip
    print()
    t0 = datetime.fromtimestamp(sim_started, UTC)
    cut = datetime.fromtimestamp(flow_started + args.warmup, UTC)
    t1 = datetime.fromtimestamp(sim_ended + 60, UTC)
    head = (f"{'collector':18} {'stored':>10} {'dead':>5} {'msgs/s mean':>11} {'peak':>7} "
            f"{'lag gauge p50/p99':>18} {'recv→commit p50/p99':>20} "
            f"{'hb ts→stored p50/p99':>21} {'hb ts→recv p99':>15}")  # fmt: skip
    print(head)
    warm_rows = []
    for s in stores:
        with psycopg.connect(s.db_url) as conn:
            stored, dead = conn.execute(STORED).fetchone() or (0, 0)
            _n, rc, ts_st, ts_rc = conn.execute(
                LATENCY.format(table="state_samples"), (cut, t1)
            ).fetchone() or (0, None, None, None)
            wn, _wrc, wts, _w = conn.execute(
                LATENCY.format(table="state_samples"), (t0 - timedelta(hours=1), cut)
            ).fetchone() or (0, None, None, None)
            burst = conn.execute(BURST, (cut, t1)).fetchone()
        rc, ts_st, ts_rc = rc or [None, None], ts_st or [None, None], ts_rc or [None, None]
        rates = s.rates
        print(
            f"{s.name:18} {stored:>10,} {dead:>5,} "
            f"{(sum(rates) / len(rates)) if rates else 0:>11,.0f} "
            f"{max(rates) if rates else 0:>7,.0f} "
            f"{fmt(pct(s.lags, 0.5)) + ' / ' + fmt(pct(s.lags, 0.99)):>18} "
            f"{fmt(rc[0]) + ' / ' + fmt(rc[1]):>20} "
            f"{fmt(ts_st[0]) + ' / ' + fmt(ts_st[1]):>21} {fmt(ts_rc[1]):>15}"
        )
        warm_rows.append((s.name, wn, wts, burst[0] if burst else None))
    print()
    print(f"published vs stored: {published + wills:,} published (messages + wills); "
          + "; ".join(f"{s.name} stored {_stored(s):,}" for s in stores))  # fmt: skip
    for name, wn, wts, burst in warm_rows:
        p99 = wts[1] if wts else None
        share = "–" if burst is None else f"{100 * burst:.1f} %"
        print(f"{name}: device time up to {args.warmup:.0f}s after the first message (due "
              f"during the simulator's set-up, sent late; left out above): {wn:,} heartbeats, ts→stored p99 {fmt(p99)}; heartbeats after it in "
              f"their busiest second of the minute: {share} (a spread fleet: ~1.7 %)")  # fmt: skip
    for s in stores:
        with psycopg.connect(s.db_url) as conn:
            deleted, kept = conn.execute(KEPT_CHURN).fetchone() or (0, 0)
        print(f"{s.name}: kept closed days deleted by late telemetry {deleted:,}, kept "
              f"(written) {kept:,}")  # fmt: skip
    total, longest, groups = rule_round
    print(f"Prometheus: last round of the shipped rules {fmt(total)} (longest group "
          f"{fmt(longest)})")  # fmt: skip
    for name, seconds in sorted(groups.items(), key=lambda g: -g[1]):
        print(f"  {name}: {fmt(seconds)}")
    if len(stores) == 2:
        a, b = (s.watched for s in stores)
        if a is not None and b is not None:
            ca, cb = a.cpu_last - (a.cpu_flow or 0), b.cpu_last - (b.cpu_flow or 0)
            print(f"collector CPU after / before: {ca / cb if cb else float('nan'):.2f} "
                  f"({ca:.0f}s vs {cb:.0f}s of CPU, same load, same time)")  # fmt: skip


def _stored(s: Store) -> int:
    with psycopg.connect(s.db_url) as conn:
        row = conn.execute(STORED).fetchone()
    return int(row[0]) if row else 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--devices", type=int, default=100_000)
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument(
        "--warmup", type=float, default=60.0,
        help="Seconds of device time at the start left out of the latencies.",
    )  # fmt: skip
    parser.add_argument(
        "--before", default=None, help="A checkout of another commit: run its collector beside."
    )
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="An environment setting of this checkout's collector only (e.g. "
        "ATMFLEET_COLLECTOR__BATCH_SIZE=2000), to compare settings side by side with --before.",
    )
    parser.add_argument(
        "--simulator",
        default=None,
        help="A checkout of another commit: play the fleet with its simulator instead.",
    )
    parser.add_argument(
        "--without",
        action="append",
        default=[],
        choices=("serve", "incidents", "prometheus"),
        help="Leave this part out (repeatable).",
    )
    parser.add_argument(
        "--reader",
        action="append",
        default=[],
        metavar="ARGS",
        help="An atmfleet command run in a loop on every collector's database during the "
        "run, e.g. 'kpi uptime --date 2026-12-01' (repeatable).",
    )
    parser.add_argument(
        "--priorities",
        choices=("shipped", "none"),
        default="shipped",
        help="shipped: each part at the Nice= of its unit in deploy/systemd (the collector "
        "before the reports), the rest at nice 0; none: every process at nice 0.",
    )
    parser.add_argument("--keep", default=None, help="Copy every log into this folder.")
    parser.add_argument(
        "--serve-timings",
        action="store_true",
        help="Run serve with debug logging (-vv) and print where its refreshes went: each "
        "part of its read (its 'read times' lines), median and largest.",
    )
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    try:
        run(args)
    except ServiceError as exc:
        sys.exit(f"fleet: {exc}")


if __name__ == "__main__":
    main()
