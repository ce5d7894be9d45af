"""Ingest throughput: the collector against a bare receive loop and a naive writer.

    python bench/ingest.py [--messages 50000] [--devices 1000] [--broker mosquitto|iotcore]
                           [--mqtt-url URL] [--pg-url ADMIN_URL]
                           [--before CHECKOUT [--rounds N] [--collectors-only]]

One broker, one backlog: three persistent sessions (MQTT 5, QoS 1) subscribe to the
collector's topics, then a backlog of realistic messages (the simulator's history of a
fleet) is published once, so each session holds the same messages. Then, one at a time:

a. a bare paho receive loop that does nothing with the messages;
b. the collector end to end (``atmfleet collect`` in a subprocess): validated, stored by
   COPY, acknowledged after commit; its peak RSS (with its store worker's) is sampled
   with psutil;
c. a naive baseline: paho plus one INSERT per message in autocommit (acknowledged on
   receipt, so not even durable).

Each rate is messages / (last received-and-done - first received): the clock starts at
the first message, so process start-up is not counted. (b) is done when every message
is committed (stored + duplicate + dead-lettered, from the collector's own metrics).
Use a backlog of several batches (the default is 5 of the collector's default 10,000):
a smaller one mostly measures how long a partial batch waits (``flush_interval_s``).
(b) and (c) write to a fresh database on the local PostgreSQL, dropped afterwards.

``--before CHECKOUT`` (a checkout of another commit, e.g. ``git worktree add --detach
../before main``) also drains the same backlog through that checkout's collector (its
own session, its own database), alternating with this one's for ``--rounds`` rounds, and
prints, side by side, the CPU seconds of each collector (network process + store worker,
from its first message received to its last commit, so start-up is not counted) per
100,000 messages, their ratio, and the rows each stored by table (they must be equal).
``ATMFLEET_COLLECTOR__*`` settings in the environment apply to both (e.g.
``ATMFLEET_COLLECTOR__BATCH_SIZE=700`` for batches the size of a live fleet's).
``--collectors-only`` leaves out (a) and (c).

By default the broker is a Mosquitto of our own (free port, temporary folder,
``max_queued_messages 0`` so an offline session keeps the whole backlog). ``--broker
iotcore`` uses the embedded broker of ``atmfleet demo`` instead; ``--mqtt-url`` a broker
you run (it must keep a backlog of ``--messages`` per offline session).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import paho.mqtt.client as mqtt
import psutil
import psycopg
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from prometheus_client.parser import text_string_to_metric_families
from scratch import upgraded_database
from services import Mosquitto, ServiceError

from app.embedded import embedded_broker, free_port
from atmfleet.protocol import QOS, SUBSCRIPTIONS
from simulator.config import SimConfig
from simulator.engine import generate
from simulator.fleet import generate_inventory

ROOT = Path(__file__).resolve().parent.parent
#: Give up on a run that has received nothing new for this long.
STALL_S = 60.0


@dataclass
class Result:
    name: str
    messages: int
    seconds: float
    note: str = ""

    @property
    def rate(self) -> float:
        return self.messages / self.seconds if self.seconds > 0 else float("nan")


# -- broker ---------------------------------------------------------------------------------


@contextlib.contextmanager
def own_mosquitto() -> Iterator[str]:
    """Our own Mosquitto (free port, temporary folder, unlimited queue)."""
    with tempfile.TemporaryDirectory(prefix="atmfleet-bench-") as tmp:
        broker = Mosquitto(Path(tmp))
        try:
            broker.start()
        except ServiceError as exc:
            sys.exit(str(exc))
        try:
            yield broker.url
        finally:
            broker.stop()


def host_port(url: str) -> tuple[str, int]:
    parts = urlsplit(url)
    return parts.hostname or "127.0.0.1", parts.port or 1883


def session_client(client_id: str, **kwargs: Any) -> mqtt.Client:
    return mqtt.Client(
        CallbackAPIVersion.VERSION2,
        client_id=client_id,
        protocol=MQTTProtocolVersion.MQTTv5,
        **kwargs,
    )


def connect_props() -> Properties:
    props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
    props.SessionExpiryInterval = 3600
    return props


def create_session(url: str, client_id: str) -> None:
    """A persistent session subscribed to the collector's topics, then left offline.

    ``clean_start`` is False even for this new session: rumqttd (iotcore) treats a v5
    ``clean_start`` True like 3.1.1's clean session and forgets the session at disconnect."""
    client = session_client(client_id)
    subscribed = threading.Event()
    client.on_subscribe = lambda *_a: subscribed.set()
    host, port = host_port(url)
    client.connect(host, port, clean_start=False, properties=connect_props())
    client.loop_start()
    client.subscribe([(topic, QOS) for topic in SUBSCRIPTIONS])
    if not subscribed.wait(10):
        raise SystemExit(f"{client_id}: no SUBACK from {url}")
    client.disconnect()
    client.loop_stop()


# -- backlog --------------------------------------------------------------------------------


def backlog(devices: int, messages: int, token: str) -> list[tuple[str, bytes]]:
    """The first ``messages`` messages of a fleet's recent history (what a backfill sends)."""
    config = SimConfig()
    inventory = generate_inventory(devices, seed=7, prefix=f"b{token}-", config=config)
    end = datetime.now(UTC).replace(microsecond=0)
    start = end - timedelta(days=60)
    out: list[tuple[str, bytes]] = []
    for e in generate(inventory, config, 7, start, end, heartbeat_s=config.backfill_heartbeat_s):
        out.append((e.topic, e.payload))
        if len(out) == messages:
            return out
    raise SystemExit(f"the fleet sent only {len(out)} messages in 60 days; use more --devices")


def publish(url: str, items: list[tuple[str, bytes]]) -> float:
    client = session_client(f"bench-pub-{uuid.uuid4().hex[:6]}")
    client.max_inflight_messages_set(1000)
    host, port = host_port(url)
    client.connect(host, port)
    client.loop_start()
    started = time.monotonic()
    # Message ids wrap at 65535: at most this many may wait for their PUBACK at once.
    window = 50_000
    infos = []
    for i, (topic, payload) in enumerate(items):
        if i >= window:
            infos[i - window].wait_for_publish(120)
        infos.append(client.publish(topic, payload, qos=QOS))
    for info in infos[-window:]:
        info.wait_for_publish(120)
    seconds = time.monotonic() - started
    client.disconnect()
    client.loop_stop()
    return seconds


# -- (a) and (c): paho loops ------------------------------------------------------------------


class Counting:
    """Counts messages on a session; ``handle`` runs in paho's network thread."""

    def __init__(self, url: str, client_id: str, expected: int) -> None:
        self.expected = expected
        self.count = 0
        self.first: float | None = None
        self.last = 0.0
        self.done = threading.Event()
        self.error: BaseException | None = None
        self.client = session_client(client_id)
        self.client.on_message = self._on_message
        self.url = url

    def handle(self, message: mqtt.MQTTMessage) -> None:
        """Nothing: the bare receive loop."""

    def _on_message(self, _c: mqtt.Client, _u: Any, message: mqtt.MQTTMessage) -> None:
        now = time.monotonic()
        if self.first is None:
            self.first = now
        try:
            self.handle(message)
        except BaseException as exc:  # reported after the run
            self.error = exc
            self.done.set()
            return
        self.count += 1
        self.last = time.monotonic()
        if self.count >= self.expected:
            self.done.set()

    def run(self, name: str) -> Result:
        host, port = host_port(self.url)
        self.client.connect(host, port, clean_start=False, properties=connect_props())
        self.client.loop_start()
        seen = -1
        while not self.done.wait(STALL_S):
            if self.count == seen:
                break
            seen = self.count
        self.client.disconnect()
        self.client.loop_stop()
        if self.error is not None:
            raise SystemExit(f"{name}: {self.error}")
        if self.first is None:
            raise SystemExit(f"{name}: received nothing")
        note = "" if self.count >= self.expected else f"stalled at {self.count}"
        return Result(name, self.count, self.last - self.first, note)


class NaiveInsert(Counting):
    """One INSERT per message, autocommit."""

    def __init__(self, url: str, client_id: str, expected: int, db_url: str) -> None:
        super().__init__(url, client_id, expected)
        self.conn = psycopg.connect(db_url, autocommit=True)
        self.conn.execute(
            "CREATE TABLE naive_messages (topic text, payload jsonb, received_at timestamptz)"
        )

    def handle(self, message: mqtt.MQTTMessage) -> None:
        self.conn.execute(
            "INSERT INTO naive_messages VALUES (%s, %s::jsonb, now())",
            (message.topic, message.payload.decode()),
        )


# -- (b): the collector -------------------------------------------------------------------------


def scrape(port: int) -> dict[str, float]:
    """Every sample of the collector's metrics, summed over labels."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as resp:
        text = resp.read().decode()
    values: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            values[sample.name] = values.get(sample.name, 0.0) + sample.value
    return values


def tree_rss(process: psutil.Process) -> int:
    """Resident memory of the collector and its store worker, together."""
    total = 0
    for p in [process, *process.children(recursive=True)]:
        with contextlib.suppress(psutil.Error):
            total += p.memory_info().rss
    return total


def tree_cpu(process: psutil.Process) -> float:
    """CPU seconds (user + system) of the collector and its children, while they run."""
    total = 0.0
    for p in [process, *process.children(recursive=True)]:
        with contextlib.suppress(psutil.Error):
            t = p.cpu_times()
            total += t.user + t.system
    return total


def run_collector(
    url: str,
    client_id: str,
    db_url: str,
    expected: int,
    checkout: Path | None = None,
    name: str = "b  collector (durable)",
) -> tuple[Result, int, float]:
    """The end is the collector's own last-commit time; the start is the first poll that
    sees a message received (polled every 0.05 s until then, every 0.5 s after, so the
    scraping costs the collector little). ``checkout``: run that checkout's collector
    (default: this one's). Also returns the peak RSS and the CPU seconds of the collector
    with its store worker between those two polls."""
    metrics_port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("ATMFLEET_")}
    env.update(
        ATMFLEET_MQTT_URL=url,
        ATMFLEET_MQTT_PROTOCOL="5",
        ATMFLEET_DATABASE_URL=db_url,
        ATMFLEET_COLLECTOR__CLIENT_ID=client_id,
        ATMFLEET_COLLECTOR__SESSION_EXPIRY_S="3600",
        **{k: v for k, v in os.environ.items() if k.startswith("ATMFLEET_COLLECTOR__")},
    )
    if checkout is not None:
        env["PYTHONPATH"] = str(checkout)
    with tempfile.TemporaryFile() as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "app.cli", "collect", "--metrics-port", str(metrics_port)],
            env=env,
            cwd=checkout,
            stdout=log,
            stderr=log,
        )
        ps = psutil.Process(proc.pid)
        peak = 0
        first: float | None = None
        cpu_first = cpu_done = 0.0
        done_at: float | None = None
        committed = 0.0
        last_progress = time.monotonic()
        try:
            while proc.poll() is None:
                peak = max(peak, tree_rss(ps))
                try:
                    values = scrape(metrics_port)
                except OSError:
                    time.sleep(0.05)
                    continue
                if first is None and values.get("atmfleet_collector_messages_received_total"):
                    first, cpu_first = time.time(), tree_cpu(ps)
                done = sum(
                    values.get(f"atmfleet_collector_messages_{k}_total", 0.0)
                    for k in ("stored", "duplicate", "rejected")
                )
                if done > committed:
                    committed, last_progress = done, time.monotonic()
                if committed >= expected:
                    done_at = values["atmfleet_collector_last_commit_timestamp_seconds"]
                    cpu_done = tree_cpu(ps)
                    break
                if time.monotonic() - last_progress > STALL_S:
                    break
                time.sleep(0.05 if first is None else 0.5)
        finally:
            proc.terminate()
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
            if done_at is None:
                log.seek(0)
                sys.stderr.write(log.read().decode(errors="replace")[-3000:])
    if first is None or done_at is None:
        raise SystemExit(f"{name}: the collector committed {committed:.0f} of {expected}")
    return Result(name, int(committed), done_at - first), peak, cpu_done - cpu_first


#: What a collector stored, by table: equal for two collectors given the same backlog.
TABLES = ("state_samples", "events", "transactions", "presence", "counter_volumes",
          "state_runs", "device_sequences", "dead_letters")  # fmt: skip


def stored_rows(db_url: str) -> dict[str, int]:
    with psycopg.connect(db_url) as conn:
        return {
            t: int(row[0]) if (row := conn.execute(f"SELECT count(*) FROM {t}").fetchone()) else 0
            for t in TABLES
        }


def compare(
    url: str,
    pg_url: str,
    before: Path,
    ids: dict[str, str],
    rounds: int,
    expected: int,
) -> None:
    """Each round drains the backlog through both collectors, one after the other (the
    order alternates): CPU seconds per 100,000 messages side by side, rows stored."""
    cpu: dict[str, list[float]] = {"before": [], "after": []}
    rates: dict[str, list[float]] = {"before": [], "after": []}
    rows: dict[str, dict[str, int]] = {}
    for r in range(rounds):
        order = ("before", "after") if r % 2 == 0 else ("after", "before")
        for which in order:
            with upgraded_database(pg_url) as db_url:
                result, _peak, seconds = run_collector(
                    url, ids[f"{which}{r}"], db_url, expected,
                    checkout=before if which == "before" else ROOT, name=which,
                )  # fmt: skip
                got = stored_rows(db_url)
            if which in rows and rows[which] != got:
                raise SystemExit(f"{which}: round {r} stored {got}, earlier {rows[which]}")
            rows[which] = got
            cpu[which].append(seconds * 100_000 / result.messages)
            rates[which].append(result.rate)
            print(f"  round {r + 1} {which:6}: {result.rate:,.0f} msgs/s, {seconds:.2f} CPU s "
                  f"for {result.messages:,} messages", flush=True)  # fmt: skip
    print()
    print(f"{'collector':10} {'CPU s / 100k msgs (each round)':>40} {'msgs/s (median)':>16}")
    for which in ("before", "after"):
        each = ", ".join(f"{v:.2f}" for v in cpu[which])
        print(f"{which:10} {each:>40} {sorted(rates[which])[len(rates[which]) // 2]:>16,.0f}")
    b, a = sum(cpu["before"]), sum(cpu["after"])
    print(f"CPU after / before: {a / b:.3f} (sum over {rounds} round(s))")
    print(f"{'table':18} {'before':>10} {'after':>10}")
    for t in TABLES:
        print(f"{t:18} {rows['before'][t]:>10,} {rows['after'][t]:>10,}")
    print(f"stored rows equal: {rows['before'] == rows['after']}")


# -- main -------------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=50_000)
    parser.add_argument("--devices", type=int, default=1000)
    parser.add_argument("--broker", choices=("mosquitto", "iotcore"), default="mosquitto")
    parser.add_argument("--mqtt-url", default=None, help="Use this broker instead.")
    parser.add_argument(
        "--pg-url",
        default=os.environ.get(
            "ATMFLEET_TEST_PG_URL", "postgresql://postgres@127.0.0.1:5432/postgres"
        ),
        help="Admin URL of the PostgreSQL the benchmark database is created on.",
    )
    parser.add_argument(
        "--before", default=None, help="A checkout of another commit: its collector beside."
    )
    parser.add_argument("--rounds", type=int, default=1, help="With --before: rounds of both.")
    parser.add_argument("--collectors-only", action="store_true", help="Leave out (a) and (c).")
    args = parser.parse_args()
    before = Path(args.before).resolve() if args.before else None

    token = uuid.uuid4().hex[:6]
    t = time.monotonic()
    items = backlog(args.devices, args.messages, token)
    size = sum(len(p) for _, p in items) / len(items)
    print(
        f"backlog: {len(items):,} messages from {args.devices:,} simulated devices "
        f"(mean payload {size:.0f} B), generated in {time.monotonic() - t:.1f}s"
    )
    if args.mqtt_url:
        broker: contextlib.AbstractContextManager[str] = contextlib.nullcontext(args.mqtt_url)
    elif args.broker == "iotcore":
        broker = embedded_broker(protocol="5")
    else:
        broker = own_mosquitto()
    with broker as url, upgraded_database(args.pg_url) as db_url:
        ids = {} if args.collectors_only else {k: f"bench-{k}-{token}" for k in "abc"}
        if before is not None:
            for n in range(args.rounds):
                for which in ("before", "after"):
                    ids[f"{which}{n}"] = f"bench-{which}{n}-{token}"
        for client_id in ids.values():
            create_session(url, client_id)
        seconds = publish(url, items)
        print(
            f"broker: {url} ({'given' if args.mqtt_url else args.broker}); published once "
            f"to {len(ids)} offline sessions in {seconds:.1f}s "
            f"({len(items) / seconds:,.0f} msgs/s)"
        )
        if before is not None:
            compare(url, args.pg_url, before, ids, args.rounds, len(items))
        if args.collectors_only:
            return
        results = [Counting(url, ids["a"], len(items)).run("a  bare paho loop")]
        print(f"  {results[-1].name}: {results[-1].rate:,.0f} msgs/s", flush=True)
        collector, peak, _cpu = run_collector(url, ids["b"], db_url, len(items))
        results.append(collector)
        print(f"  {collector.name}: {collector.rate:,.0f} msgs/s", flush=True)
        results.append(
            NaiveInsert(url, ids["c"], len(items), db_url).run("c  paho + INSERT autocommit")
        )
        print(f"  {results[-1].name}: {results[-1].rate:,.0f} msgs/s", flush=True)

    print()
    print(f"{'run':32} {'messages':>9} {'seconds':>8} {'msgs/s':>9}")
    for r in results:
        print(f"{r.name:32} {r.messages:>9,} {r.seconds:>8.2f} {r.rate:>9,.0f} {r.note}")
    a, b, c = (r.rate for r in results)
    print()
    print(f"b/a = {b / a:.2f}   (target >= 0.6)")
    print(f"b/c = {b / c:.1f}   (target >= 10)")
    print(f"collector peak RSS: {peak / 2**20:.0f} MiB (network process + store worker)")
    print(
        f"machine: {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f} "
        "(the ratios depend on it: other work slows the naive commits most)"
    )


if __name__ == "__main__":
    main()
