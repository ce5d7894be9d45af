"""Chaos suite: the collector under faults, verified by counting rows in the database.

    python bench/chaos.py [--quick] [--scenario NAME ...] [--devices N] [--messages N]
                          [--fuzz N] [--backlog N] [--list]

One command starts its own Mosquitto (a free port, a data directory in a temporary
folder, a configuration per scenario) and its own PostgreSQL cluster (``initdb`` in the
same folder, a free port; as root the server runs as the ``postgres`` user), runs each
scenario against ``atmfleet collect`` in a subprocess, and prints one line per scenario:

    sent       messages the broker acknowledged (PUBACK) to the publisher
    stored     distinct messages in the database (state, event, transaction, presence rows)
    dup        rows stored twice plus messages counted twice in device_sequences
    gaps       what the gap view reports missing (sum of sequence_gaps.missing)
    lost       sent and never stored nor dead-lettered
    dead       dead_letters rows
    rss        the collector's peak resident memory (network process + store worker)
    time       the scenario's wall-clock seconds

Each fault is caused on an event, never on a timer: kill, wait until the collector is
back (subscribed and storing), kill again. Where the scenario needs a length of time (the
60 s database outage) the length is the fault itself. Every count comes from the
database; the collector's metrics are read only to know when it is connected or idle.

Everything listens on 127.0.0.1; the shared services (1883, 5432) are never touched.
``--quick`` scales every scenario down (a few minutes in all on 2 cores); the full suite
is what to run before a release.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import psutil
import psycopg

sys.path.insert(0, str(Path(__file__).resolve().parent))  # run as a script or imported
from ingest import scrape, session_client, tree_rss
from services import EVENT_TIMEOUT_S, Mosquitto, Postgres, ServiceError, until

from app.embedded import free_port
from atmfleet.protocol import SUBSCRIPTIONS, TOPIC_ROOT, ProtocolError, parse_message


class ChaosError(ServiceError):
    """A scenario could not reach the state it waits for."""


class Collector:
    """``atmfleet collect`` as a subprocess; restartable, its peak RSS sampled throughout."""

    def __init__(self, mqtt_url: str, db_url: str, logs: Path, **settings: object) -> None:
        self.client_id = f"chaos-{uuid.uuid4().hex[:6]}"
        self.metrics_port = free_port()
        options = {"session_expiry_s": 3600, "liveness_interval_s": 1, "retry_max_backoff_s": 2}
        options.update(settings)
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("ATMFLEET_")}
        self.env.update(
            ATMFLEET_MQTT_URL=mqtt_url,
            ATMFLEET_DATABASE_URL=db_url,
            ATMFLEET_SECRETS_DIR=str(logs / "no-secrets"),
            ATMFLEET_COLLECTOR__CLIENT_ID=self.client_id,
            **{f"ATMFLEET_COLLECTOR__{k.upper()}": str(v) for k, v in options.items()},
        )
        self.logs = logs
        self.runs = 0
        self.process: subprocess.Popen[bytes] | None = None
        self.peak_rss = 0
        self.exit_codes: list[int] = []
        self._sampling = threading.Event()
        self._sampler: threading.Thread | None = None

    def start(self) -> None:
        self.runs += 1
        log = (self.logs / f"collector-{self.runs}.log").open("wb")
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "app.cli",
                "collect",
                "--metrics-port",
                str(self.metrics_port),
            ],
            env=self.env,
            stdout=log,
            stderr=log,
        )
        log.close()
        if self._sampler is None:
            self._sampling.set()
            self._sampler = threading.Thread(target=self._sample, daemon=True)
            self._sampler.start()

    def _sample(self) -> None:
        while self._sampling.is_set():
            proc = self.process
            if proc is not None and proc.poll() is None:
                with contextlib.suppress(psutil.Error):
                    self.peak_rss = max(self.peak_rss, tree_rss(psutil.Process(proc.pid)))
            time.sleep(0.2)

    def metrics(self) -> dict[str, float]:
        try:
            return scrape(self.metrics_port)
        except OSError:
            return {}

    def metric(self, name: str) -> float:
        return self.metrics().get(f"atmfleet_collector_{name}", 0.0)

    def wait_connected(self) -> None:
        """Until this run is subscribed (it serves metrics and says it is connected)."""

        def connected() -> bool:
            if self.process is None or self.process.poll() is not None:
                raise ChaosError(f"the collector exited; see {self.log_text()[-2000:]}")
            return self.metric("mqtt_connected") == 1.0

        until(connected, "the collector to connect")

    def wait_idle(self) -> None:
        """Until nothing is held and nothing new arrives: two scrapes in a row with no
        message held and the same count received. (Received and stored need not match:
        after a reconnect, what the old connection still held is dropped from memory and
        counted again when the broker redelivers it.)"""
        seen: list[float] = []

        def idle() -> bool:
            m = self.metrics()
            received = m.get("atmfleet_collector_messages_received_total", -1.0)
            quiet = bool(m) and m.get("atmfleet_collector_buffered_messages", 1) == 0
            seen.append(received if quiet else -1.0)
            return quiet and len(seen) >= 2 and seen[-2] == received

        until(idle, "the collector to be idle")

    def signal(self, signum: int) -> int:
        assert self.process is not None
        self.process.send_signal(signum)
        code = self.process.wait(60)
        self.exit_codes.append(code)
        self.process = None
        return code

    def stop(self) -> int | None:
        """SIGTERM (the clean stop) if it runs; its exit status."""
        if self.process is not None and self.process.poll() is None:
            return self.signal(signal.SIGTERM)
        return None

    def close(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(30)
        self._sampling.clear()
        if self._sampler is not None:
            self._sampler.join(5)

    def log_text(self) -> str:
        return "".join(
            (self.logs / f"collector-{i}.log").read_text(errors="replace")
            for i in range(1, self.runs + 1)
        )


class Publisher:
    """QoS 1 (or 0) publisher counting what the broker acknowledged.

    At most ``window`` messages wait for their PUBACK at once (paho's message ids wrap at
    65,535)."""

    def __init__(
        self, mqtt_url: str, qos: int = 1, window: int = 20_000, protocol: str = "5"
    ) -> None:
        self.qos = qos
        self.window = window
        self.acked = 0
        self.outstanding = 0
        self._cv = threading.Condition()
        cid = f"chaos-pub-{uuid.uuid4().hex[:6]}"
        self.client = (
            session_client(cid)
            if protocol == "5"
            else mqtt.Client(
                mqtt.CallbackAPIVersion.VERSION2, client_id=cid, protocol=mqtt.MQTTv311
            )
        )
        self.client.max_inflight_messages_set(1000)
        self.client.on_publish = self._on_publish
        host, port = mqtt_url.removeprefix("mqtt://").split(":")
        self.client.connect(host, int(port))
        self.client.loop_start()

    def _on_publish(self, *_args: Any) -> None:
        with self._cv:
            self.acked += 1
            self.outstanding -= 1
            self._cv.notify_all()

    def send(self, topic: str, payload: bytes) -> None:
        with self._cv:
            if not self._cv.wait_for(lambda: self.outstanding < self.window, EVENT_TIMEOUT_S):
                raise ChaosError("the broker stopped acknowledging the publisher")
            self.outstanding += 1
        self.client.publish(topic, payload, qos=self.qos)

    def send_all(self, items: Iterable[tuple[str, bytes]]) -> None:
        for topic, payload in items:
            self.send(topic, payload)
        self.flush()

    def flush(self) -> None:
        with self._cv:
            if not self._cv.wait_for(lambda: self.outstanding == 0, EVENT_TIMEOUT_S):
                raise ChaosError(f"{self.outstanding} messages never acknowledged")

    def close(self) -> None:
        self.flush()
        self.client.disconnect()
        self.client.loop_stop()


@contextlib.contextmanager
def publishing(mqtt_url: str, qos: int = 1) -> Iterator[Publisher]:
    pub = Publisher(mqtt_url, qos)
    try:
        yield pub
    finally:
        pub.close()


class Stream:
    """Devices sending state messages round robin from a thread, at a bounded rate, until
    stopped; ``sent`` is what the broker acknowledged."""

    def __init__(self, fleet: Fleet, mqtt_url: str, rate: float, protocol: str = "5") -> None:
        self.fleet = fleet
        self.rate = rate
        self.publisher = Publisher(mqtt_url, protocol=protocol)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self.error: BaseException | None = None

    def __enter__(self) -> Stream:
        self._thread.start()
        return self

    def _run(self) -> None:
        started = time.monotonic()
        n = 0
        try:
            while not self._stop.is_set():
                for topic, payload in self.fleet.round():
                    self.publisher.send(topic, payload)
                    n += 1
                    if n % 100 == 0:
                        ahead = n / self.rate - (time.monotonic() - started)
                        if ahead > 0:
                            time.sleep(ahead)
                    if self._stop.is_set():
                        break
        except BaseException as exc:  # reported by stop()
            self.error = exc

    def stop(self) -> int:
        self._stop.set()
        self._thread.join(EVENT_TIMEOUT_S)
        self.publisher.close()
        if self.error is not None:
            raise ChaosError(f"the publisher failed: {self.error}")
        return self.publisher.acked

    def __exit__(self, *_exc: object) -> None:
        if self._thread.is_alive():
            self._stop.set()
            self._thread.join(EVENT_TIMEOUT_S)


# -- load -------------------------------------------------------------------------------------

_STATE = (
    b'{"v":1,"device_id":"%s","ts":"%s","seq":%d,"state":"in_service","heartbeat_s":60,'
    b'"components":{},"cash_units":[],"faults":[]}'
)


class Fleet:
    """``devices`` devices, each numbering its state messages 1, 2, 3, ... (the sequence
    the gap view checks). Timestamps are a second apart, ending before now."""

    def __init__(self, devices: int, prefix: str | None = None, start_s: float = 0) -> None:
        self.prefix = prefix or f"c{uuid.uuid4().hex[:5]}"
        self.ids = [f"{self.prefix}-{i:06d}".encode() for i in range(devices)]
        self.seq = 0
        self.epoch = datetime.now(UTC) - timedelta(days=30) + timedelta(seconds=start_s)

    def message(self, device: bytes, seq: int) -> tuple[str, bytes]:
        ts = (self.epoch + timedelta(seconds=seq)).strftime("%Y-%m-%dT%H:%M:%SZ").encode()
        return f"atmfleet/v1/device/{device.decode()}/state", _STATE % (device, ts, seq)

    def round(self) -> list[tuple[str, bytes]]:
        """One message from every device (the next seq)."""
        self.seq += 1
        return [self.message(d, self.seq) for d in self.ids]

    def rounds(self, n: int) -> Iterator[tuple[str, bytes]]:
        for _ in range(n):
            yield from self.round()


# -- counting -----------------------------------------------------------------------------------


@dataclass
class Tally:
    """What the database holds."""

    rows: int  # state, event, transaction and presence rows
    distinct: int  # distinct messages among them
    received: int  # sum of device_sequences.received
    gaps: int  # sum of sequence_gaps.missing
    dead: int  # dead_letters rows
    dead_by_reason: dict[str, int]

    numbered: int  # distinct state, event and transaction messages

    @property
    def duplicates(self) -> int:
        """Rows stored twice, and messages counted twice by the sequence accounting."""
        return (self.rows - self.distinct) + max(0, self.received - self.numbered)


def tally(db_url: str) -> Tally:
    with psycopg.connect(db_url) as conn:

        def one(query: str) -> int:
            row = conn.execute(query.encode()).fetchone()
            return int(row[0] or 0) if row else 0

        numbered = ("state_samples", "events", "transactions")
        rows = sum(one(f"SELECT count(*) FROM {t}") for t in (*numbered, "presence"))
        distinct_numbered = sum(
            one(f"SELECT count(*) FROM (SELECT DISTINCT device_id, seq, ts FROM {t}) x")
            for t in numbered
        )
        distinct = distinct_numbered + one(
            "SELECT count(*) FROM (SELECT DISTINCT device_id, status, ts, session, will"
            " FROM presence) x"
        )
        reasons = dict(
            conn.execute(b"SELECT reason, count(*) FROM dead_letters GROUP BY 1").fetchall()
        )
        return Tally(
            rows=rows,
            distinct=distinct,
            received=one("SELECT sum(received) FROM device_sequences"),
            gaps=one("SELECT sum(missing) FROM sequence_gaps"),
            dead=sum(reasons.values()),
            dead_by_reason={str(k): int(v) for k, v in reasons.items()},
            numbered=distinct_numbered,
        )


def state_rows(db_url: str) -> int:
    with psycopg.connect(db_url) as conn:
        row = conn.execute(b"SELECT count(*) FROM state_samples").fetchone()
    return int(row[0]) if row else 0


@dataclass
class Result:
    scenario: str
    sent: int
    stored: int
    duplicates: int
    gaps: int
    lost: int
    dead: int
    peak_rss: int
    seconds: float
    notes: list[str] = field(default_factory=list)
    #: What the scenario promises: lost == 0, or (where the broker could not keep what it
    #: had) every loss reported by the gap view.
    expect_lossless: bool = True
    #: Scenario-specific figures (the fuzz scenario's accounting).
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        if self.duplicates:
            return False
        if self.expect_lossless:
            return self.lost == 0
        return self.lost == self.gaps

    @staticmethod
    def of(
        name: str, sent: int, t: Tally, collector: Collector, started: float, **kw: Any
    ) -> Result:
        return Result(
            scenario=name,
            sent=sent,
            stored=t.distinct,
            duplicates=t.duplicates,
            gaps=t.gaps,
            lost=sent - t.distinct - t.dead,
            dead=t.dead,
            peak_rss=collector.peak_rss,
            seconds=time.monotonic() - started,
            **kw,
        )


HEADER = (
    f"{'scenario':44} {'sent':>10} {'stored':>10} {'dup':>5} {'gaps':>8} {'lost':>8}"
    f" {'dead':>7} {'rss MiB':>8} {'time s':>7}  ok"
)


def row(r: Result) -> str:
    return (
        f"{r.scenario:44} {r.sent:>10,} {r.stored:>10,} {r.duplicates:>5,} {r.gaps:>8,}"
        f" {r.lost:>8,} {r.dead:>7,} {r.peak_rss / 2**20:>8.0f} {r.seconds:>7.1f}"
        f"  {'yes' if r.ok else 'NO'}"
    )


# -- the scenarios ------------------------------------------------------------------------------


@dataclass
class Scale:
    devices: int = 10_000  # the live fleet (SIGKILL scenario)
    kills: int = 10
    rate: float = 3_000.0  # messages/s of the live streams
    backend_kills: int = 5
    pg_outage_s: float = 60.0
    pg_inflight: int = 40_000  # the default max_inflight
    broker_devices: int = 200
    broker_rounds: int = 25
    fuzz: int = 100_000
    backlog: int = 2_000_000
    backlog_devices: int = 100_000

    @staticmethod
    def quick() -> Scale:
        return Scale(
            devices=1_000,
            kills=3,
            rate=1_500,
            backend_kills=3,
            pg_outage_s=10,
            pg_inflight=5_000,
            broker_devices=50,
            broker_rounds=30,
            fuzz=5_000,
            backlog=100_000,
            backlog_devices=10_000,
        )


class Lab:
    """One temporary folder, one PostgreSQL cluster; a Mosquitto per scenario."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.pg = Postgres(root / "pg")
        self.pg.start()
        self._n = 0

    def folder(self, name: str) -> Path:
        self._n += 1
        path = self.root / f"{self._n:02d}-{name}"
        path.mkdir()
        return path

    def close(self) -> None:
        self.pg.stop()


@contextlib.contextmanager
def lab(keep: bool = False) -> Iterator[Lab]:
    """The lab in a new temporary folder, removed afterwards unless ``keep``."""
    root = Path(tempfile.mkdtemp(prefix="atmfleet-chaos-"))
    root.chmod(0o755)  # the postgres user must reach its folder
    the_lab: Lab | None = None
    try:
        the_lab = Lab(root)
        yield the_lab
    finally:
        if the_lab is not None:
            the_lab.close()
        if keep:
            print(f"logs and data kept in {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)


@contextlib.contextmanager
def setup(
    the_lab: Lab, name: str, broker: dict[str, str] | None = None, **collector: object
) -> Iterator[tuple[Mosquitto, str, Collector]]:
    folder = the_lab.folder(name)
    mq = Mosquitto(folder / "mosquitto", broker)
    mq.start()
    db = the_lab.pg.database()
    col = Collector(mq.url, db, folder, **collector)
    try:
        yield mq, db, col
    finally:
        col.close()
        mq.stop()


def sigkill_collector(the_lab: Lab, scale: Scale, rng: random.Random) -> Result:
    """A live fleet streams while the collector is SIGKILLed ``kills`` times, each at a
    random moment after the new run has subscribed and stored something."""
    started = time.monotonic()
    name = f"collector SIGKILL x{scale.kills}, {scale.devices:,} devices live"
    with setup(the_lab, "sigkill") as (_mq, db, col):
        col.start()
        col.wait_connected()
        with Stream(Fleet(scale.devices), _mq.url, scale.rate) as stream:
            for _ in range(scale.kills):
                col.wait_connected()
                before = state_rows(db)
                until(lambda b=before: state_rows(db) > b, "the new run to store")  # type: ignore[misc]
                time.sleep(rng.uniform(0, 2.0))  # a random moment of a live run
                col.signal(signal.SIGKILL)
                col.start()
            col.wait_connected()
            before = state_rows(db)
            until(lambda: state_rows(db) > before, "the last run to store")
            sent = stream.stop()
        until(lambda: state_rows(db) >= sent, f"all {sent:,} messages stored", 600)
        col.wait_idle()
        code = col.stop()
        t = tally(db)
        return Result.of(name, sent, t, col, started, notes=[f"last run exited {code}"])


def backend_kills(the_lab: Lab, scale: Scale, rng: random.Random) -> Result:
    """``pg_terminate_backend`` on the store worker's connection while it is inside a
    batch's transaction, ``backend_kills`` times; each time after the new connection has
    committed a batch."""
    started = time.monotonic()
    name = f"backend killed mid-batch x{scale.backend_kills}"
    devices = max(100, scale.devices // 10)
    with setup(the_lab, "backend", batch_size=2000, max_inflight=8000) as (mq, db, col):
        app = f"atmfleet-collector {col.client_id}"
        col.start()
        col.wait_connected()
        killed = 0
        with (
            Stream(Fleet(devices), mq.url, scale.rate) as stream,
            psycopg.connect(db, autocommit=True) as admin,
        ):
            for _ in range(scale.backend_kills):
                before = state_rows(db)
                until(lambda b=before: state_rows(db) > b, "a committed batch")  # type: ignore[misc]

                def in_batch() -> bool:
                    row = admin.execute(
                        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                        " WHERE application_name = %s AND xact_start IS NOT NULL"
                        " AND state <> 'idle' AND query ILIKE '%%_stage%%' LIMIT 1",
                        (app,),
                    ).fetchone()
                    return bool(row and row[0])

                until(in_batch, "the worker inside a batch")
                killed += 1
            before = state_rows(db)
            until(lambda: state_rows(db) > before, "a batch after the last kill")
            sent = stream.stop()
        until(lambda: state_rows(db) >= sent, f"all {sent:,} messages stored", 600)
        col.wait_idle()
        code = col.stop()
        errors = col.log_text().count("temporary database error")
        return Result.of(
            name,
            sent,
            tally(db),
            col,
            started,
            notes=[
                f"{killed} backends terminated in a batch, {errors} retries logged, exit {code}"
            ],
            details={"killed": killed, "retries": errors, "exit": code},
        )


def postgres_outage(the_lab: Lab, scale: Scale, rng: random.Random) -> Result:
    """PostgreSQL stopped (fast shutdown) for ``pg_outage_s`` mid-stream, then started.
    Memory must stay bounded: the collector stops reading at ``max_inflight``."""
    started = time.monotonic()
    inflight = scale.pg_inflight
    name = f"PostgreSQL stopped {scale.pg_outage_s:.0f}s mid-stream"
    devices = max(100, scale.devices // 10)
    sizes = {"max_inflight": inflight, "batch_size": max(1, inflight // 4)}
    with setup(the_lab, "pg-outage", **sizes) as (mq, db, col):
        col.start()
        col.wait_connected()
        with Stream(Fleet(devices), mq.url, scale.rate) as stream:
            before = state_rows(db)
            until(lambda: state_rows(db) > before + 1000, "the stream to be stored")
            stored_at_stop = state_rows(db)
            the_lab.pg.stop()
            down_at = time.monotonic()
            peak_held = 0.0
            received = [col.metric("messages_received_total")]
            # Down for pg_outage_s, and at least until the buffer is full (the collector
            # has stopped reading): what the scenario is about.
            while time.monotonic() - down_at < scale.pg_outage_s or peak_held < inflight:
                peak_held = max(peak_held, col.metric("buffered_messages"))
                if time.monotonic() - down_at > EVENT_TIMEOUT_S:
                    raise ChaosError(f"the buffer never filled ({peak_held:,.0f} held)")
                time.sleep(0.5)
            down_s = time.monotonic() - down_at
            received.append(col.metric("messages_received_total"))
            rss_down = col.peak_rss
            sent_during = stream.publisher.acked
            the_lab.pg.start()
            before = state_rows(db)
            until(lambda: state_rows(db) > before, "storing after the restart")
            sent = stream.stop()
        until(lambda: state_rows(db) >= sent, f"all {sent:,} messages stored", 600)
        col.wait_idle()
        code = col.stop()
        return Result.of(
            name,
            sent,
            tally(db),
            col,
            started,
            notes=[
                f"down {down_s:.0f}s: at most {peak_held:,.0f} held (max_inflight {inflight:,}), "
                f"received {received[1] - received[0]:,.0f} of the "
                f"{sent_during - stored_at_stop:,} waiting, peak RSS {rss_down / 2**20:.0f} MiB",
                f"SIGTERM at the end: exit {code}",
            ],
            details={"peak_held": peak_held, "max_inflight": inflight, "exit": code},
        )


@contextlib.contextmanager
def small_mount(path: Path, size_mib: int) -> Iterator[Path]:
    """A tmpfs of ``size_mib`` at ``path`` (root only); unmounted afterwards."""
    if os.geteuid() != 0:
        raise ChaosError("the disk-full scenario mounts a tmpfs: run as root")
    path.mkdir(parents=True)
    subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size_mib}m,mode=0755", "tmpfs", str(path)],
        check=True,
    )
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def disk_full(the_lab: Lab, scale: Scale, rng: random.Random) -> Result:
    """The data directory on a small tmpfs, filled up by a ballast file while devices
    stream; then the ballast is removed."""
    started = time.monotonic()
    name = "PostgreSQL disk full, then space freed"
    folder = the_lab.folder("disk-full")
    devices = max(100, scale.devices // 10)
    with small_mount(folder / "small", 200) as mount:
        pg = Postgres(folder / "pg", data=mount / "data")
        pg.start()
        mq = Mosquitto(folder / "mosquitto")
        mq.start()
        db = pg.database()
        col = Collector(mq.url, db, folder, batch_size=2000, max_inflight=8000)
        ballast = mount / "ballast"
        try:
            col.start()
            col.wait_connected()
            with Stream(Fleet(devices), mq.url, scale.rate) as stream:
                before = state_rows(db)
                until(lambda: state_rows(db) > before + 1000, "the stream to be stored")
                free = shutil.disk_usage(mount).free
                with ballast.open("wb") as fh:  # all but 1 MiB
                    fh.truncate(0)
                    chunk = b"\0" * 2**20
                    for _ in range(free // 2**20 - 1):
                        fh.write(chunk)
                until(
                    lambda: (
                        col.metric("db_errors_total") > 0
                        and "No space left on device" in col.log_text()
                    ),
                    "the collector to report the full disk",
                )
                stored_full = state_rows(db)
                full_errors = col.metric("db_errors_total")
                # Full for a while: many batches are refused, none stored.
                until(lambda: col.metric("db_errors_total") >= full_errors + 5, "more retries")
                held = col.metric("buffered_messages")
                stored_still = state_rows(db)
                lines = sum(
                    "No space left on device" in line for line in col.log_text().splitlines()
                )
                errors = col.metric("db_errors_total")
                ballast.unlink()
                until(lambda: state_rows(db) > stored_still, "storing after space was freed")
                sent = stream.stop()
            until(lambda: state_rows(db) >= sent, f"all {sent:,} messages stored", 600)
            col.wait_idle()
            code = col.stop()
            return Result.of(
                name,
                sent,
                tally(db),
                col,
                started,
                notes=[
                    f"while full: stored {stored_full:,} -> {stored_still:,}, "
                    f"{held:,.0f} held, db_errors_total {errors:,.0f}, "
                    f"{lines} log lines 'No space left on device'",
                    f"SIGTERM at the end: exit {code}",
                ],
            )
        finally:
            col.close()
            mq.stop()
            pg.stop()


# -- broker restarts ---------------------------------------------------------------------------

PERSIST_DEFAULT = {"persistence": "true"}  # autosave_interval 1800 (Mosquitto's default)
# Saved after every change, but after the PUBACK: a kill in between loses that message.
PERSIST_EVERY_CHANGE = {
    "persistence": "true",
    "autosave_on_changes": "true",
    "autosave_interval": "1",
}


@dataclass(frozen=True)
class BrokerCase:
    key: str
    name: str
    broker: dict[str, str]
    signum: signal.Signals | None  # None: no restart
    connected: bool  # the collector connected (busy, a backlog held) or away
    lossless: bool  # what the setting promises
    qos: int = 1


BROKER_CASES = (
    BrokerCase("broker-term-persist-away", "SIGTERM, persistence true, collector away", PERSIST_DEFAULT, signal.SIGTERM, False, True),
    BrokerCase("broker-term-persist-busy", "SIGTERM, persistence true, collector busy", PERSIST_DEFAULT, signal.SIGTERM, True, True),
    BrokerCase("broker-kill-persist-away", "SIGKILL, persistence true (autosave 1800 s), away", PERSIST_DEFAULT, signal.SIGKILL, False, False),
    BrokerCase("broker-kill-persist-busy", "SIGKILL, persistence true (autosave 1800 s), busy", PERSIST_DEFAULT, signal.SIGKILL, True, False),
    BrokerCase("broker-kill-autosave-away", "SIGKILL, autosave_on_changes 1, away", PERSIST_EVERY_CHANGE, signal.SIGKILL, False, False),
    BrokerCase("broker-kill-autosave-busy", "SIGKILL, autosave_on_changes 1, busy", PERSIST_EVERY_CHANGE, signal.SIGKILL, True, False),
    BrokerCase("broker-term-mem-away", "SIGTERM, persistence false, collector away", {}, signal.SIGTERM, False, False),
    BrokerCase("broker-term-mem-busy", "SIGTERM, persistence false, collector busy", {}, signal.SIGTERM, True, False),
    BrokerCase("broker-kill-mem-away", "SIGKILL, persistence false, collector away", {}, signal.SIGKILL, False, False),
    BrokerCase("queue-limit-messages", "no restart, max_queued_messages 1000, away", {"max_queued_messages": "1000"}, None, False, False),
    BrokerCase("queue-limit-bytes", "no restart, max_queued_bytes 256 KiB, away", {"max_queued_bytes": "262144"}, None, False, False),
    BrokerCase("qos0-away", "no restart, QoS 0 sent, collector away", {}, None, False, False, qos=0),
    # Mosquitto 2.0.11: queued QoS 0 messages delivered on a reconnect use up the session's
    # Receive Maximum for good; past it, nothing more reaches the collector.
    BrokerCase("qos0-queued-away", "no restart, QoS 0, queue_qos0_messages, away", {"queue_qos0_messages": "true", "max_queued_messages": "1000000"}, None, False, False, qos=0),
)  # fmt: skip


def broker_case(the_lab: Lab, scale: Scale, case: BrokerCase) -> Result:
    """Each device's first message is stored; then ``broker_rounds`` messages per device
    are sent while the collector is away (stopped with SIGTERM, its session kept) or
    busy (connected, its database locked, so the messages are in its buffer and queued at
    the broker); then the broker is signalled and restarted; then each device sends one
    last message, so whatever the broker lost lies between two stored ones, where the gap
    view must see it."""
    started = time.monotonic()
    inflight = 200  # held by a busy collector; the rest waits at the broker
    with setup(the_lab, "broker", case.broker, batch_size=50, max_inflight=inflight) as (
        mq,
        db,
        col,
    ):
        fleet = Fleet(scale.broker_devices)
        col.start()
        col.wait_connected()
        with publishing(mq.url) as pub:
            pub.send_all(fleet.round())
        until(lambda: state_rows(db) >= len(fleet.ids), "each device's first message")
        col.wait_idle()
        sent = len(fleet.ids)
        locker: psycopg.Connection | None = None
        if case.connected:
            locker = psycopg.connect(db)
            locker.execute("LOCK TABLE state_samples IN ACCESS EXCLUSIVE MODE")
        else:
            col.stop()
        with publishing(mq.url, case.qos) as pub:
            pub.send_all(fleet.rounds(scale.broker_rounds))
            sent += pub.acked
            if case.qos == 0:  # the broker has handled all before a QoS 1 it acknowledged
                pub.qos = 1
                pub.send_all([("chaos/fence", b"")])
        if case.connected:
            until(lambda: col.metric("buffered_messages") >= inflight, "a full buffer")
        notes = []
        if case.signum is not None:
            code = mq.signal(case.signum)
            notes.append(f"broker exit {code}")
            if locker is not None:
                locker.close()
                locker = None
            mq.start()
        if locker is not None:
            locker.close()
        if col.process is None:
            col.start()
        col.wait_connected()
        with publishing(mq.url) as pub:
            pub.send_all(fleet.round())
            sent += pub.acked
        last = fleet.seq

        def arrived() -> int:
            return scalar(db, "SELECT count(*) FROM state_samples WHERE seq = %s", last)

        try:
            until(lambda: arrived() >= len(fleet.ids), "every device's last message", 60)
            col.wait_idle()
        except ServiceError:
            notes.append(
                f"only {arrived()} of the {len(fleet.ids)} last messages arrived in 60 s "
                "(the broker delivers nothing more to the session)"
            )
        code = col.stop()
        log = col.log_text()
        notes.append(f"collector exit {code}")
        if log.count("session present: False") > 1:  # the first connect makes it
            notes.append("the broker had lost the collector's session")
        return Result.of(
            f"broker {case.name}",
            sent,
            tally(db),
            col,
            started,
            notes=notes,
            expect_lossless=case.lossless,
        )


def scalar(db: str, query: str, *params: object) -> int:
    with psycopg.connect(db) as conn:
        row = conn.execute(query.encode(), params).fetchone()
    return int(row[0] or 0) if row else 0


# -- fuzz --------------------------------------------------------------------------------------


def seen_by_collector(topic: str) -> bool:
    """Whether the collector's subscriptions deliver ``topic`` to it at all."""
    return any(mqtt.topic_matches_sub(sub, topic) for sub in SUBSCRIPTIONS)


@dataclass
class Oracle:
    """What the protocol says must become of each message: a row (by key) or a refusal."""

    keys: set[tuple[Any, ...]] = field(default_factory=set)
    txn_ids: set[tuple[Any, ...]] = field(default_factory=set)
    refused: int = 0
    unseen: int = 0
    by_reason: dict[str, int] = field(default_factory=dict)

    def add(self, topic: str, payload: bytes) -> None:
        if not seen_by_collector(topic):
            self.unseen += 1
            return
        try:
            msg = parse_message(topic, payload)
        except ProtocolError as exc:
            self.refused += 1
            self.by_reason[exc.reason] = self.by_reason.get(exc.reason, 0) + 1
            return
        kind = topic.rsplit("/", 1)[-1]
        if kind == "presence":
            self.keys.add(("presence", json.dumps(msg.model_dump(mode="json"), sort_keys=True)))
            return
        seq = getattr(msg, "seq", None)
        key = (kind, getattr(msg, "device_id", None), seq, getattr(msg, "ts", None))
        if kind == "txn":
            txn = (getattr(msg, "txn_id", None), getattr(msg, "ts", None))
            if txn in self.txn_ids and key not in self.keys:
                return  # the same transaction again: stored once
            self.txn_ids.add(txn)
        self.keys.add(key)


def hostile_message(prefix: str) -> Any:
    """A hypothesis strategy: ``(topic, payload)``, a valid message of device
    ``<prefix>-<n>`` mutated 0 to 3 times (deleted fields, swapped types, unicode, huge
    numbers, extra fields, wrong topics, bit flips, truncation, oversize, deep nesting,
    duplicate keys, non-objects)."""
    from hypothesis import strategies as st

    # A whole second: the same seed draws the same timestamps to the millisecond.
    now = datetime.now(UTC).replace(microsecond=0)
    # What Mosquitto takes in a topic (no NUL, controls, noncharacters; no wildcards):
    # anything else would be refused by the broker, not by the collector.
    topic_text = st.text(
        st.characters(categories=["L", "N", "P", "S", "Zs"], exclude_characters="+#/"),
        min_size=1,
        max_size=70,
    )
    anything = st.recursive(
        st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=40),
        lambda inner: (
            st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
        ),
        max_leaves=8,
    )
    huge = st.sampled_from(
        [2**63, 2**63 - 1, -(2**63) - 1, 2**64, 10**30, -(10**30), 1e308, -0.0, 2**31, -1]
    )
    raw_numbers = st.sampled_from(["1e400", "NaN", "Infinity", "-Infinity", "1" * 400, "0x10"])

    @st.composite
    def mutated(draw: Any) -> tuple[str, bytes]:
        n = draw(st.integers(0, 49))
        device = f"{prefix}-{n}"
        kind = draw(st.sampled_from(["state", "event", "txn", "presence"]))
        ts = now - timedelta(
            seconds=draw(st.integers(0, 30 * 86400)), microseconds=draw(st.integers(0, 999_999))
        )
        ts_text = ts.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        seq = draw(st.integers(0, 10**6))
        body: dict[str, Any] = {"v": 1, "device_id": device, "ts": ts_text}
        if kind == "state":
            body |= {
                "seq": seq,
                "state": draw(st.sampled_from(["in_service", "fault", "degraded", "closed"])),
                "heartbeat_s": 60,
                "components": {"cdm": draw(st.sampled_from(["ok", "warning", "fault"]))},
                "cash_units": [
                    {
                        "id": "c1",
                        "type": "dispense",
                        "denomination": 100,
                        "count": draw(st.integers(0, 2000)),
                        "status": "ok",
                    }
                ],
                "faults": [],
            }
        elif kind == "event":
            body |= {
                "seq": seq,
                "event": "fault",
                "component": "cdm",
                "code": "E42",
                "severity": "warning",
                "text": "jam",
            }
        elif kind == "txn":
            body |= {
                "seq": seq,
                "txn_id": f"{device}-{seq}",
                "type": draw(st.sampled_from(["withdrawal", "deposit", "inquiry"])),
                "amount": draw(st.sampled_from(["0", "100.00", "2500.50"])),
                "result": "ok",
                "duration_ms": draw(st.integers(1000, 90_000)),
                "on_us": draw(st.booleans()),
            }
        else:
            body = {
                "v": 1,
                "device_id": device,
                "status": draw(st.sampled_from(["online", "offline"])),
                "ts": ts_text,
                "session": draw(st.text("abcdef0123456789", min_size=1, max_size=12)),
                "will": draw(st.booleans()),
            }
        topic = f"atmfleet/v1/device/{device}/{kind}"
        raw: list[tuple[str, str]] = []  # key, JSON text put in verbatim
        mutations = draw(st.lists(st.sampled_from(MUTATIONS), max_size=3))
        for m in mutations:
            keys = sorted(body)
            key = draw(st.sampled_from(keys)) if keys else "v"
            if m == "delete" and keys:
                body.pop(key)
            elif m == "swap_type":
                body[key] = draw(anything)
            elif m == "unicode":
                body[key] = draw(st.text(max_size=60))
            elif m == "huge":
                body[key] = draw(huge)
            elif m == "raw_number":
                body.pop(key, None)
                raw.append((key, draw(raw_numbers)))
            elif m == "extra":
                body[draw(st.text(max_size=12))] = draw(anything)
            elif m == "duplicate_key":
                raw.append((key, json.dumps(draw(anything))))
            elif m == "future":
                body["ts"] = (now + timedelta(minutes=draw(st.integers(6, 10**6)))).strftime(
                    "%Y-%m-%dT%H:%M:%SZ"
                )
            elif m == "oversize":
                body["text"] = "x" * draw(st.integers(16 * 1024, 40 * 1024))
            elif m == "nesting":
                depth = draw(st.integers(10, 3000))
                raw.append((key, "[" * depth + "]" * depth))
            elif m == "topic":
                topic = draw(
                    st.sampled_from(
                        [
                            f"atmfleet/v1/device/{device}/bogus",
                            f"atmfleet/v1/device/{device}/{kind}/extra",
                            f"atmfleet/v1/device/{device}",
                            f"atmfleet/v1/devices/{device}/{kind}",
                            f"atmfleet/v1/branch/{device}/state",
                            f"atmfleet/v2/device/{device}/{kind}",
                            f"atmfleet/v1/device/{prefix}-{n + 1}/{kind}",
                        ]
                    )
                    | topic_text.map(lambda t, k=kind: f"atmfleet/v1/device/{t}/{k}")
                )
        ensure_ascii = draw(st.booleans())
        separators = draw(st.sampled_from([(",", ":"), (", ", ": ")]))
        text = json.dumps(body, ensure_ascii=ensure_ascii, separators=separators)
        for key, value in raw:
            inner = json.dumps(key, ensure_ascii=ensure_ascii)
            text = text[:-1] + ("," if len(text) > 2 else "") + f"{inner}:{value}}}"
        payload = text.encode("utf-8", "surrogatepass")
        if draw(st.booleans()) and "not_object" in mutations:
            payload = draw(st.sampled_from([b"[]", b"42", b'"text"', b"null", b"true"]))
        if "bit_flip" in mutations and payload:
            buf = bytearray(payload)
            for _ in range(draw(st.integers(1, 8))):
                i = draw(st.integers(0, len(buf) - 1))
                buf[i] ^= 1 << draw(st.integers(0, 7))
            payload = bytes(buf)
        if "truncate" in mutations and payload:
            payload = payload[: draw(st.integers(0, len(payload) - 1))]
        return topic, payload

    return mutated()


MUTATIONS = (
    "delete", "swap_type", "unicode", "huge", "raw_number", "extra", "duplicate_key",
    "future", "oversize", "nesting", "topic", "bit_flip", "truncate", "not_object",
)  # fmt: skip


def fuzz_messages(count: int, seed: int, prefix: str) -> list[tuple[str, bytes]]:
    """``count`` hostile variants of valid messages, drawn by hypothesis (generation only,
    no shrinking; the same ``seed`` draws the same messages)."""
    from hypothesis import HealthCheck, Phase, given, settings
    from hypothesis import seed as hseed
    from hypothesis import strategies as st

    out: list[tuple[str, bytes]] = []
    strategy = hostile_message(prefix)

    @hseed(seed)
    @settings(
        max_examples=count,
        phases=[Phase.generate],
        database=None,
        deadline=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(st.data())
    def draw(data: st.DataObject) -> None:
        out.append(data.draw(strategy))

    draw()
    return out


def fuzz(the_lab: Lab, scale: Scale, rng: random.Random) -> Result:
    """Hostile payloads interleaved with a well-behaved fleet: no crash, every message
    the collector sees stored or dead-lettered, no neighbour lost."""
    started = time.monotonic()
    name = f"{scale.fuzz:,} fuzzed payloads + valid neighbours"
    prefix = f"f{uuid.uuid4().hex[:4]}"
    hostile = fuzz_messages(scale.fuzz, rng.randrange(2**32), prefix)
    gen_s = time.monotonic() - started
    neighbours = Fleet(20, prefix=f"n{prefix}")
    oracle = Oracle()
    with setup(the_lab, "fuzz") as (mq, db, col):
        col.start()
        col.wait_connected()
        valid = 0
        next_seq = [1] * len(neighbours.ids)
        with publishing(mq.url) as pub:

            def neighbour(d: int) -> None:
                nonlocal valid
                topic, payload = neighbours.message(neighbours.ids[d], next_seq[d])
                next_seq[d] += 1
                oracle.add(topic, payload)
                pub.send(topic, payload)
                valid += 1

            for i, (topic, payload) in enumerate(hostile):
                oracle.add(topic, payload)
                pub.send(topic, payload)
                if i % 5 == 0:  # a valid message of a neighbour after every 5 hostile ones
                    neighbour(valid % len(neighbours.ids))
            # Each neighbour's last message, so any neighbour lost shows as a gap; sent
            # last, so once they are stored the collector has seen everything before.
            last = max(next_seq)
            for d in range(len(neighbours.ids)):
                next_seq[d] = last
                neighbour(d)
            pub.flush()
            sent = pub.acked
        expected = len(oracle.keys) + oracle.refused
        until(
            lambda: (
                scalar(
                    db,
                    "SELECT count(*) FROM state_samples WHERE device_id LIKE %s AND seq = %s",
                    f"n{prefix}-%",
                    last,
                )
                >= 20
                or col.process is None
                or col.process.poll() is not None
            ),
            "every neighbour's last message",
            600,
        )
        if col.process is not None and col.process.poll() is None:
            col.wait_idle()
        alive = col.process is not None and col.process.poll() is None
        died: list[str] = []
        if alive:
            code = col.stop()
        else:
            assert col.process is not None
            code = col.process.poll()
            died.append(f"the collector exited {code}: {last_error(col.log_text())}")
            # Does it get past the message that stopped it? (The broker redelivers it.)
            col.process = None
            col.start()
            with contextlib.suppress(ServiceError):
                until(lambda: col.process is not None and col.process.poll() is not None, "", 60)
            again = col.process.poll() if col.process is not None else None
            died.append(
                f"restarted: it exited again ({again}: {last_error(col.log_text()[-2000:])})"
                if again is not None
                else "restarted: it runs"
            )
            col.stop()
        t = tally(db)
        log = col.log_text()
        with psycopg.connect(db) as conn:
            row = conn.execute(
                b"SELECT count(*), coalesce(sum(missing), 0) FROM sequence_gaps"
                b" WHERE device_id LIKE %s",
                (f"n{prefix}-%",),
            ).fetchone()
            stored_neighbours = conn.execute(
                b"SELECT count(*) FROM state_samples WHERE device_id LIKE %s", (f"n{prefix}-%",)
            ).fetchone()
        neighbour_gaps = int(row[1]) if row else -1
        neighbours_stored = int(stored_neighbours[0]) if stored_neighbours else 0
        lost = expected - t.distinct - t.dead
        result = Result(
            scenario=name,
            sent=sent,
            stored=t.distinct,
            duplicates=t.duplicates,
            gaps=neighbour_gaps,  # the fuzzed devices number at random
            lost=lost,  # of what the collector's subscriptions deliver
            dead=t.dead,
            peak_rss=col.peak_rss,
            seconds=time.monotonic() - started,
            notes=[
                f"generated in {gen_s:.0f}s; crashes: {0 if alive and code == 0 else 1} "
                f"(alive until SIGTERM: {alive}, exit {code}, tracebacks: {log.count('Traceback')})",
                f"neighbours: {neighbours_stored:,} of {valid:,} stored, gaps {neighbour_gaps} "
                f"(the gaps column; the fuzzed devices' seqs are random: {t.gaps:,})",
                f"expected: {len(oracle.keys):,} rows + {oracle.refused:,} refusals; "
                f"{oracle.unseen:,} published outside {TOPIC_ROOT}/ (not the collector's "
                "topics: never delivered to it, not counted as lost)",
                "dead letters: "
                + ", ".join(f"{k} {v:,}" for k, v in sorted(t.dead_by_reason.items())),
                *died,
            ],
        )
        result.details = {
            "lost_seen": lost,
            "unseen": oracle.unseen,
            "neighbours_stored": neighbours_stored,
            "neighbours_sent": valid,
            "neighbour_gaps": neighbour_gaps,
            "crashed": not alive or code != 0,
            "tracebacks": log.count("Traceback"),
            "dead_by_reason": t.dead_by_reason,
        }
        return result


def twin_states(the_lab: Lab, scale: Scale, rng: random.Random) -> Result:
    """Two state messages of one device with the same ``seq`` and timestamps less than a
    millisecond apart, in different states (a device clock with microseconds, a replay),
    between valid messages of other devices: each is stored or dead-lettered, the
    collector lives on."""
    started = time.monotonic()
    name = "twin states (same seq, same millisecond)"
    fleet = Fleet(20)
    twin = f"{fleet.prefix}-twin"
    pair = [
        (
            f"atmfleet/v1/device/{twin}/state",
            b'{"v":1,"device_id":"%s","ts":"2026-11-30T10:00:00.000%d00Z","seq":7,'
            b'"state":"%s"}' % (twin.encode(), i + 1, state),
        )
        for i, state in enumerate((b"in_service", b"fault"))
    ]
    with setup(the_lab, "twins") as (mq, db, col):
        col.start()
        col.wait_connected()
        with publishing(mq.url) as pub:
            pub.send_all([*fleet.round(), *pair, *fleet.round()])
            sent = pub.acked
        code: int | None = None

        def settled() -> bool:
            return state_rows(db) >= sent or col.process is None or col.process.poll() is not None

        with contextlib.suppress(ServiceError):
            until(settled, "every message stored", 60)
        if col.process is not None and col.process.poll() is not None:
            code = col.process.poll()
            note = f"the collector exited {code}: {last_error(col.log_text())}"
        else:
            col.wait_idle()
            code = col.stop()
            note = f"collector exit {code}"
        return Result.of(name, sent, tally(db), col, started, notes=[note])


def last_error(log: str) -> str:
    """The collector's own last error line (``atmfleet: error: …``), or its last line."""
    lines = [line for line in log.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("atmfleet: error:")]
    return (errors or lines or ["(no log)"])[-1][:300]


# -- backlog -----------------------------------------------------------------------------------


def backlog_drain(the_lab: Lab, scale: Scale, rng: random.Random) -> Result:
    """An outage of the collector while the fleet keeps sending: the backlog waits in its
    session; then the collector drains it. Drain time, reconnects, peak RSS."""
    started = time.monotonic()
    devices = min(scale.backlog_devices, scale.backlog)
    rounds = math.ceil(scale.backlog / devices)
    name = f"backlog {devices * rounds:,} msgs of {devices:,} devices"
    with setup(the_lab, "backlog") as (mq, db, col):
        col.start()
        col.wait_connected()
        col.stop()
        fleet = Fleet(devices)
        t0 = time.monotonic()
        with publishing(mq.url) as pub:
            pub.send_all(fleet.rounds(rounds))
            sent = pub.acked
        publish_s = time.monotonic() - t0
        connects_before = mq.connections_of(col.client_id)
        col.start()
        t1 = time.monotonic()
        until(lambda: state_rows(db) >= sent, f"the backlog of {sent:,} stored", 3600)
        drain_s = time.monotonic() - t1
        col.wait_idle()
        reconnects = mq.connections_of(col.client_id) - connects_before - 1
        code = col.stop()
        t = tally(db)
        return Result.of(
            name,
            sent,
            t,
            col,
            started,
            notes=[
                f"published in {publish_s:.0f}s; drained in {drain_s:.0f}s "
                f"({sent / drain_s:,.0f} msgs/s, with start-up); reconnects {reconnects}; "
                f"exit {code}"
            ],
        )


# -- running -------------------------------------------------------------------------------------

Scenario = Callable[[Lab, Scale, random.Random], Result]


def _broker(case: BrokerCase) -> Scenario:
    return lambda the_lab, scale, _rng: broker_case(the_lab, scale, case)


SCENARIOS: dict[str, Scenario] = {
    "sigkill": sigkill_collector,
    "pg-outage": postgres_outage,
    "backend": backend_kills,
    "disk-full": disk_full,
    **{c.key: _broker(c) for c in BROKER_CASES},
    "fuzz": fuzz,
    "twin-states": twin_states,
    "backlog": backlog_drain,
}


def run(
    names: Sequence[str],
    scale: Scale,
    seed: int,
    out: Callable[[str], None] = print,
    keep: bool = False,
) -> list[Result]:
    rng = random.Random(seed)
    results: list[Result] = []
    with lab(keep) as the_lab:
        out(HEADER)
        for name in names:
            try:
                result = SCENARIOS[name](the_lab, scale, rng)
            except ServiceError as exc:
                out(f"{name:44} FAILED: {exc}")
                continue
            results.append(result)
            out(row(result))
            for note in result.notes:
                out(f"{'':4}{note}")
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="every scenario scaled down")
    parser.add_argument(
        "--scenario", action="append", choices=sorted(SCENARIOS), help="run only these"
    )
    parser.add_argument("--list", action="store_true", help="list the scenarios and exit")
    parser.add_argument("--devices", type=int, help="devices of the live fleet")
    parser.add_argument("--messages", type=int, help="messages of the backlog scenario")
    parser.add_argument("--fuzz", type=int, help="fuzzed payloads")
    parser.add_argument("--kills", type=int, help="collector SIGKILLs")
    parser.add_argument("--outage", type=float, help="seconds PostgreSQL stays down")
    parser.add_argument("--rate", type=float, help="messages/s of the live streams")
    parser.add_argument("--seed", type=int, default=12)
    parser.add_argument("--keep", action="store_true", help="keep the logs and data folder")
    args = parser.parse_args()
    if args.list:
        print("\n".join(SCENARIOS))
        return
    scale = Scale.quick() if args.quick else Scale()
    for arg, attr in (
        ("devices", "devices"),
        ("messages", "backlog"),
        ("fuzz", "fuzz"),
        ("kills", "kills"),
        ("outage", "pg_outage_s"),
        ("rate", "rate"),
    ):
        if getattr(args, arg) is not None:
            setattr(scale, attr, getattr(args, arg))
    names = args.scenario or list(SCENARIOS)
    # Stopped by a timeout or a terminal: unwind, so the services stop and the mount goes.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    print(
        f"chaos: {len(names)} scenarios, seed {args.seed}, {os.cpu_count()} CPUs, "
        f"load {os.getloadavg()[0]:.1f}; {scale}",
        flush=True,
    )
    results = run(names, scale, args.seed, lambda s: print(s, flush=True), args.keep)
    failed = len(names) - sum(r.ok for r in results)
    print(f"\n{len(results)} of {len(names)} scenarios ran; {failed} missed their target")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
