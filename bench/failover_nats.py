"""Broker failover on a real clustered broker: three NATS servers (MQTT 3.1.1 over JetStream).

    python bench/failover_nats.py [--devices 2000] [--rate 1000] [--after-s 10] [--keep]

Needs Debian's ``nats-server`` (2.9 or later: ``apt-get install nats-server``); without it
the script says so and exits 0. One command starts, on 127.0.0.1 and free ports, a cluster
of three nodes (each its own client, cluster, MQTT and monitoring port and its own
JetStream folder), waits until JetStream is ready on all three (``/healthz``), and a
private PostgreSQL (``bench/services.py``). Then:

1. **What this broker can and cannot do**, measured on the cluster: MQTT 5 (refused?),
   QoS 2 subscription (granted what?), ``$share/<group>/...`` (split, or treated as a
   plain topic?), a retained message set on one node and read on another.
2. **Failover.** ``atmfleet collect`` with ``ATMFLEET_MQTT_URLS`` = the three nodes
   (MQTT 3.1.1, node 1 first); a fleet streams QoS 1 state messages into node 2; once
   the collector stores, node 1 (the collector's) is SIGKILLed; the collector moves to
   the next node of its list and resumes its session (kept in JetStream, replicated
   on the three nodes); the stream goes on for ``--after-s`` s and stops.
   Counted: published (PUBACKed to the fleet) vs stored, duplicates, gaps, lost; how
   long the collector was without a broker; session present or not; messages the
   broker sent twice (redeliveries the store ignored).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import random
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion

sys.path.insert(0, str(Path(__file__).resolve().parent))  # run as a script or imported
from chaos import Collector, Fleet, Stream, lab, state_rows, tally
from services import ServiceError, until, wait_port

from app.embedded import free_port


class Node:
    """One NATS server of the cluster."""

    def __init__(self, base: Path, name: str) -> None:
        self.name = name
        self.base = base / name
        self.base.mkdir(parents=True)
        self.client_port, self.cluster_port = free_port(), free_port()
        self.mqtt_port, self.http_port = free_port(), free_port()
        self.url = f"mqtt://127.0.0.1:{self.mqtt_port}"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, peers: list[Node]) -> None:
        routes = ", ".join(f'"nats-route://127.0.0.1:{p.cluster_port}"' for p in peers)
        conf = self.base / "nats.conf"
        conf.write_text(
            f'server_name: "{self.name}"\n'
            f"listen: 127.0.0.1:{self.client_port}\n"
            f"http: 127.0.0.1:{self.http_port}\n"
            f'jetstream {{ store_dir: "{self.base / "js"}", max_memory_store: 256MB, '
            f"max_file_store: 2GB }}\n"
            f'cluster {{ name: "atmfleet", listen: 127.0.0.1:{self.cluster_port}, '
            f"routes: [{routes}] }}\n"
            # Explicit: by default the MQTT streams get as many replicas (at most 3) as
            # the cluster has nodes routed when the first MQTT client connects, which
            # can be 2 while a route is still being set up; then one node lost = no
            # quorum for the session stream, and no MQTT client can connect anywhere.
            f"mqtt {{ listen: 127.0.0.1:{self.mqtt_port}, stream_replicas: 3 }}\n"
        )
        log = (self.base / "nats.log").open("ab")
        self.process = subprocess.Popen(
            [nats_binary() or "nats-server", "-c", str(conf)], stdout=log, stderr=log
        )
        log.close()

    def healthy(self) -> bool:
        try:
            with urllib.request.urlopen(
                f"http://127.0.0.1:{self.http_port}/healthz", timeout=1
            ) as resp:
                return bool(resp.status == 200)
        except OSError:
            return False

    def routes(self) -> int:
        try:
            with urllib.request.urlopen(
                f"http://127.0.0.1:{self.http_port}/routez", timeout=1
            ) as resp:
                return int(json.load(resp).get("num_routes", 0))
        except (OSError, ValueError):
            return 0

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(30)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()


def nats_binary() -> str | None:
    return shutil.which("nats-server") or (
        "/usr/bin/nats-server" if Path("/usr/bin/nats-server").exists() else None
    )


def nats_version() -> str:
    out = subprocess.run(
        [nats_binary() or "nats-server", "--version"], capture_output=True, text=True, check=False
    )
    return out.stdout.strip() or out.stderr.strip()


@contextlib.contextmanager
def cluster(base: Path) -> Iterator[list[Node]]:
    nodes = [Node(base, f"n{i}") for i in (1, 2, 3)]
    try:
        for node in nodes:
            node.start([p for p in nodes if p is not node])
        for node in nodes:
            wait_port(node.mqtt_port, 30)
        until(lambda: all(n.routes() >= 2 for n in nodes), "the 3 nodes routed to each other", 60)
        until(lambda: all(n.healthy() for n in nodes), "JetStream ready on the 3 nodes", 120)
        yield nodes
    finally:
        for node in nodes:
            node.stop()


# -- 1. what the broker can do -----------------------------------------------------------------


def v311(client_id: str) -> mqtt.Client:
    return mqtt.Client(
        CallbackAPIVersion.VERSION2, client_id=client_id, protocol=MQTTProtocolVersion.MQTTv311
    )


def connected(client: mqtt.Client, url: str, timeout: float = 30, **kw: Any) -> Any:
    """Connect and wait for the CONNACK; its reason code (or None: none came)."""
    got: list[Any] = []
    ready = threading.Event()

    def on_connect(*args: Any) -> None:
        got.append(args[3])
        ready.set()

    client.on_connect = on_connect
    client.on_disconnect = lambda *_a: ready.set()
    host, port = url.removeprefix("mqtt://").split(":")
    try:
        client.connect(host, int(port), **kw)
    except OSError as exc:
        return f"connect failed: {exc}"
    client.loop_start()
    ready.wait(timeout)
    return got[0] if got else None


def subscribed(client: mqtt.Client, topic: str, qos: int) -> list[Any]:
    got: list[Any] = []
    ready = threading.Event()

    def on_subscribe(_c: Any, _u: Any, _mid: int, reasons: Any, _p: Any) -> None:
        got.extend(reasons)
        ready.set()

    client.on_subscribe = on_subscribe
    client.subscribe(topic, qos)
    ready.wait(30)
    return got


def capabilities(nodes: list[Node]) -> list[str]:
    lines = []
    tag = uuid.uuid4().hex[:5]
    # MQTT 5
    c5 = mqtt.Client(
        CallbackAPIVersion.VERSION2, client_id=f"v5-{tag}", protocol=MQTTProtocolVersion.MQTTv5
    )
    rc = connected(c5, nodes[1].url, timeout=10)
    lines.append(f"MQTT 5 CONNECT: {'no CONNACK (connection closed)' if rc is None else rc}")
    with contextlib.suppress(Exception):
        c5.loop_stop()
    # QoS 2
    c = v311(f"q2-{tag}")
    connected(c, nodes[1].url)
    reasons = subscribed(c, f"probe{tag}/q2", 2)
    lines.append(f"SUBSCRIBE QoS 2: granted {[str(r) for r in reasons]}")
    c.disconnect()
    c.loop_stop()
    # $share
    got: dict[int, int] = {0: 0, 1: 0}
    members = []
    for i in (0, 1):
        m = v311(f"sh{i}-{tag}")
        connected(m, nodes[1 + i].url)

        def on_message(_c: Any, _u: Any, _m: Any, i: int = i) -> None:
            got[i] += 1

        m.on_message = on_message
        reasons = subscribed(m, f"$share/g{tag}/probe{tag}/share/#", 1)
        members.append((m, reasons))
    pub = v311(f"shp-{tag}")
    connected(pub, nodes[1].url)
    infos = [pub.publish(f"probe{tag}/share/{n}", b"x", qos=1) for n in range(100)]
    for info in infos:
        info.wait_for_publish(30)
    time.sleep(2)  # nothing to wait for if the broker delivers nothing: a bounded look
    lines.append(
        f"$share/<group>/...: SUBACK {[str(r) for r in members[0][1]]}; 100 published, "
        f"member 1 got {got[0]}, member 2 got {got[1]}"
    )
    for m, _r in members:
        m.disconnect()
        m.loop_stop()
    # retained, set on node 2, read on node 3
    infos = [pub.publish(f"probe{tag}/retained", b"kept", qos=1, retain=True)]
    infos[0].wait_for_publish(30)
    reader = v311(f"rt-{tag}")
    connected(reader, nodes[2].url)
    seen = threading.Event()
    reader.on_message = lambda *_a: seen.set()
    subscribed(reader, f"probe{tag}/retained", 1)
    lines.append(
        "retained message set on node 2, new subscriber on node 3: "
        + ("received" if seen.wait(10) else "NOT received within 10 s")
    )
    for client in (reader, pub):
        client.disconnect()
        client.loop_stop()
    return lines


# -- 2. failover ---------------------------------------------------------------------------------


def failover(the_lab: Any, nodes: list[Node], args: argparse.Namespace) -> dict[str, Any]:
    db = the_lab.pg.database()
    logs = the_lab.folder("collector")
    col = Collector(nodes[0].url, db, logs)
    col.env["ATMFLEET_MQTT_URLS"] = ",".join(n.url for n in nodes)
    col.env["ATMFLEET_MQTT_PROTOCOL"] = "3.1.1"
    col.start()
    col.wait_connected()
    out: dict[str, Any] = {}
    with Stream(Fleet(args.devices), nodes[1].url, args.rate, protocol="3.1.1") as stream:
        until(lambda: state_rows(db) > 0, "the collector to store")
        time.sleep(random.uniform(0.5, 2.0))
        connects = col.metric("mqtt_connects_total")
        nodes[0].kill()
        killed = time.monotonic()

        def back() -> bool:
            return (
                col.metric("mqtt_connects_total") > connects and col.metric("mqtt_connected") == 1.0
            )

        until(back, "the collector on another node", 120)
        out["without_broker_s"] = time.monotonic() - killed
        time.sleep(args.after_s)
        sent = stream.stop()
    until(lambda: state_rows(db) >= sent, f"all {sent:,} stored", 120)
    col.wait_idle()
    t = tally(db)
    out.update(
        sent=sent,
        stored=t.distinct,
        duplicates=t.duplicates,
        gaps=t.gaps,
        lost=sent - t.distinct - t.dead,
        dead=t.dead,
        redelivered=int(col.metric("messages_duplicate_total")),
        sessions_lost=int(col.metric("mqtt_sessions_lost_total")),
    )
    text = col.log_text()
    out["log"] = [
        line.split("] ", 1)[-1][:160]
        for line in text.splitlines()
        if "connected to" in line or "disconnected" in line or "session" in line
    ][:6]
    col.stop()
    col.close()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--devices", type=int, default=2000)
    parser.add_argument("--rate", type=float, default=1000, help="msgs/s published")
    parser.add_argument("--after-s", type=float, default=10, help="streaming after the kill")
    parser.add_argument("--keep", action="store_true", help="keep logs and data")
    args = parser.parse_args()
    if nats_binary() is None:
        print("skipped: nats-server is not installed (apt-get install nats-server, 2.9 or later)")
        return
    with lab(args.keep) as the_lab, cluster(the_lab.folder("nats")) as nodes:
        print(f"{nats_version()}: 3 nodes on 127.0.0.1, JetStream ready")
        print("1. what the cluster does")
        for line in capabilities(nodes):
            print(f"   {line}")
        r = failover(the_lab, nodes, args)
        print(
            f"2. collector on node 1 (ATMFLEET_MQTT_URLS = 3 nodes, MQTT 3.1.1), "
            f"{args.devices:,} devices at {args.rate:,.0f} msgs/s into node 2, node 1 SIGKILLed"
        )
        print(
            f"   without a broker {r['without_broker_s']:.1f}s; sessions lost "
            f"{r['sessions_lost']}; redelivered (stored nothing) {r['redelivered']:,}"
        )
        print(
            f"   published {r['sent']:,} stored {r['stored']:,} duplicates {r['duplicates']} "
            f"gaps {r['gaps']:,} lost {r['lost']:,} dead {r['dead']}"
        )
        for line in r["log"]:
            print(f"   log: {line}")


if __name__ == "__main__":
    try:
        main()
    except ServiceError as exc:
        sys.exit(str(exc))
