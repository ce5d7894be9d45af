"""Scale-out: several collectors on one MQTT shared subscription (``$share/<group>/...``).

    python bench/scaleout.py [--messages 60000] [--devices 1000] [--live-devices 2000]
                             [--rate 1500] [--down-s 10] [--skip-expiry]

One private Mosquitto and one private PostgreSQL cluster (``bench/services.py``), then:

1. **Who gets a device's messages.** Three bare members of one share group receive a
   fleet's messages (every device once per round, in a random order each round, as a
   real fleet sends them); for each device, how often two consecutive messages went to
   different members (0 % = sticky per device; (N-1)/N = 67 % = no stickiness at all).
2. **Throughput of 1, 2 and 3 collectors.** A backlog of the simulator's messages
   (``bench/ingest.py``'s) is published once to three groups whose members are offline
   (g1: 1 collector, g2: 2, g3: 3; Mosquitto queues each member its share), then each
   group is started in turn and drains the whole backlog into its own database. Rate =
   messages / (last commit of any member - first message received).
   Also: the bytes per stored row of each table after the 1-collector run
   (``pg_total_relation_size``, indexes and TOAST included).
3. **One of three SIGKILLed mid-stream.** A live fleet streams at ``--rate``; member 3 is
   SIGKILLed once all three store; the stream goes on for ``--down-s`` s, then stops.
   Counted: what the two survivors stored while the third was down (the rest waits in
   the killed member's session on the broker), then the killed member is restarted with
   its client id and everything must be stored exactly once (published = stored,
   duplicates 0, gaps 0).
4. **...and never comes back** (skip with ``--skip-expiry``): the same with a member
   whose session expires 5 s after it is killed: what its session held is lost, and the
   gap view says so.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import random
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil
import psycopg

sys.path.insert(0, str(Path(__file__).resolve().parent))  # run as a script or imported
from chaos import Collector, Fleet, Stream, lab, state_rows, tally
from ingest import backlog, connect_props, host_port, publish, session_client
from services import Mosquitto, until

from atmfleet.protocol import QOS, SUBSCRIPTIONS
from collector.service import subscriptions

#: Tables whose rows are messages (presence included), for the bytes-per-row figure.
TABLES = ("state_samples", "state_runs", "events", "transactions", "presence", "dead_letters")


# -- 1. stickiness ------------------------------------------------------------------------------


def stickiness(url: str, members: int = 3, devices: int = 20, rounds: int = 60) -> dict[str, Any]:
    """Which member of one share group got each message of each device."""
    host, port = host_port(url)
    group = f"probe{uuid.uuid4().hex[:4]}"
    got: dict[tuple[str, int], int] = {}
    lock = threading.Lock()
    clients = []
    for m in range(members):
        client = session_client(f"{group}-{m}")
        subscribed = threading.Event()

        def on_message(_c: Any, _u: Any, msg: Any, m: int = m) -> None:
            device, seq = msg.payload.decode().split(":")
            with lock:
                got[(device, int(seq))] = m

        client.on_message = on_message
        client.on_subscribe = lambda *_a, e=subscribed: e.set()
        client.connect(host, port, clean_start=True)
        client.loop_start()
        client.subscribe([(t, QOS) for t in subscriptions(group)])
        if not subscribed.wait(10):
            raise SystemExit("no SUBACK for the probe")
        clients.append(client)
    pub = session_client(f"{group}-pub")
    pub.connect(host, port)
    pub.loop_start()
    rng = random.Random(16)
    names = [f"probe-{d:03d}" for d in range(devices)]
    infos = []
    for seq in range(rounds):
        rng.shuffle(names)
        for name in names:
            topic = f"atmfleet/v1/device/{name}/state"
            infos.append(pub.publish(topic, f"{name}:{seq}".encode(), qos=QOS))
    for info in infos:
        info.wait_for_publish(60)
    total = devices * rounds
    until(lambda: len(got) >= total, "the probe's messages")
    for client in (*clients, pub):
        client.disconnect()
        client.loop_stop()
    switches = sum(
        got[(name, seq)] != got[(name, seq - 1)] for name in names for seq in range(1, rounds)
    )
    pairs = devices * (rounds - 1)
    return {
        "members": members,
        "messages": total,
        "split": sorted(Counter(got.values()).values()),
        "switch_ratio": switches / pairs,
        "switches": switches,
        "pairs": pairs,
    }


# -- 2. throughput ------------------------------------------------------------------------------


def create_member_session(url: str, client_id: str, group: str, expiry_s: int = 3600) -> None:
    """A persistent session subscribed like a collector of ``group``, left offline."""
    client = session_client(client_id)
    subscribed = threading.Event()
    client.on_subscribe = lambda *_a: subscribed.set()
    host, port = host_port(url)
    props = connect_props()
    props.SessionExpiryInterval = expiry_s
    client.connect(host, port, clean_start=False, properties=props)
    client.loop_start()
    client.subscribe([(t, QOS) for t in subscriptions(group, SUBSCRIPTIONS)])
    if not subscribed.wait(10):
        raise SystemExit(f"{client_id}: no SUBACK")
    client.disconnect()
    client.loop_stop()


def member(url: str, db: str, logs: Path, group: str, client_id: str, **settings: Any) -> Collector:
    col = Collector(url, db, logs, share_group=group, **settings)
    col.client_id = client_id
    col.env["ATMFLEET_COLLECTOR__CLIENT_ID"] = client_id
    return col


def committed(col: Collector) -> float:
    m = col.metrics()
    return sum(
        m.get(f"atmfleet_collector_messages_{k}_total", 0.0)
        for k in ("stored", "duplicate", "rejected")
    )


def tree_cpu(pid: int) -> float:
    """CPU seconds (user + system) of a process and its children (the store worker)."""
    total = 0.0
    with contextlib.suppress(psutil.Error):
        proc = psutil.Process(pid)
        for p in (proc, *proc.children(recursive=True)):
            with contextlib.suppress(psutil.Error):
                t = p.cpu_times()
                total += t.user + t.system
    return total


@dataclass
class Drained:
    seconds: float
    shares: list[int]
    rss_mib: float
    cpu_s: float  # CPU seconds of the members (with their store workers) from their first message
    load: float  # the machine's 1-minute load average at the end


def drain(cols: list[Collector], expected: int) -> Drained:
    """Start the group, wait until it committed ``expected``; seconds from the first
    message received to the last commit, each member's share, peak RSS of all."""
    for col in cols:
        col.start()
    cpu = [0.0] * len(cols)
    started: list[float | None] = [None] * len(cols)
    first: float | None = None
    stalled_at = time.monotonic() + 180
    done: list[float] = [0.0] * len(cols)
    while True:
        for i, col in enumerate(cols):
            if col.process is None or col.process.poll() is not None:
                raise SystemExit(f"collector {col.client_id} exited: {col.log_text()[-2000:]}")
            done[i] = committed(col)
            cpu[i] = max(cpu[i], tree_cpu(col.process.pid))
            if started[i] is None and col.metric("messages_received_total"):
                started[i] = cpu[i]  # its start-up (imports, connections) is not counted
        if first is None and any(c.metric("messages_received_total") for c in cols):
            first = time.time()
        if sum(done) >= expected:
            break
        if time.monotonic() > stalled_at:
            raise SystemExit(f"the group committed {sum(done):.0f} of {expected}")
        time.sleep(0.05 if first is None else 0.25)
    last = max(c.metric("last_commit_timestamp_seconds") for c in cols)
    for i, col in enumerate(cols):
        assert col.process is not None
        cpu[i] = max(cpu[i], tree_cpu(col.process.pid))
    for col in cols:
        col.stop()
    assert first is not None
    return Drained(
        seconds=last - first,
        shares=[int(d) for d in done],
        rss_mib=sum(c.peak_rss for c in cols) / 2**20,
        cpu_s=sum(c - (s or 0.0) for c, s in zip(cpu, started, strict=True)),
        load=os.getloadavg()[0],
    )


def bytes_per_row(db: str) -> list[tuple[str, int, int, int]]:
    """Per table: rows, total bytes (table, indexes, TOAST), index bytes."""
    out = []
    with psycopg.connect(db, autocommit=True) as conn:
        conn.execute(b"VACUUM ANALYZE")
        for table in TABLES:
            n = conn.execute(f"SELECT count(*) FROM {table}".encode()).fetchone()
            size = conn.execute(
                b"SELECT pg_total_relation_size(%s::regclass), pg_indexes_size(%s::regclass)",
                (table, table),
            ).fetchone()
            assert n is not None and size is not None
            out.append((table, int(n[0]), int(size[0]), int(size[1])))
    return out


# -- 3. and 4. a member killed ------------------------------------------------------------------


def kill_one(
    the_lab: Any, url: str, name: str, args: argparse.Namespace, expiry_s: int | None
) -> dict[str, Any]:
    """Three collectors, a live stream, member 3 SIGKILLed. ``expiry_s`` None: it comes
    back with its session; a number: its session expires that long after the kill and
    it never comes back."""
    group = f"k{uuid.uuid4().hex[:4]}"
    db = the_lab.pg.database()
    logs = the_lab.folder(name)
    cols = [member(url, db, logs / f"m{i}", group, f"{group}-{i}") for i in range(3)]
    for i, col in enumerate(cols):
        (logs / f"m{i}").mkdir()
        if expiry_s is not None and i == 2:
            col.env["ATMFLEET_COLLECTOR__SESSION_EXPIRY_S"] = str(expiry_s)
        col.start()
    for col in cols:
        col.wait_connected()
    victim = cols[2]
    fleet = Fleet(args.live_devices)
    out: dict[str, Any] = {}
    with Stream(fleet, url, args.rate) as stream:
        until(lambda: all(c.metric("messages_stored_total") > 0 for c in cols), "3 storing")
        time.sleep(random.uniform(0.2, 1.5))
        held = victim.metric("buffered_messages")
        assert victim.process is not None
        orphans = psutil.Process(victim.process.pid).children(recursive=True)
        victim.signal(signal.SIGKILL)
        killed_at = time.monotonic()
        gone, _alive = psutil.wait_procs(orphans, timeout=30)
        out["worker_exit_s"] = time.monotonic() - killed_at if len(gone) == len(orphans) else None
        out["held_when_killed"] = int(held)
        stored_at_kill = state_rows(db)
        time.sleep(args.down_s)
        out["stored_while_down"] = state_rows(db) - stored_at_kill
        out["window_s"] = time.monotonic() - killed_at
        sent = stream.stop()
        out["down_s"] = time.monotonic() - killed_at
    for col in cols[:2]:
        col.wait_idle()
    before = tally(db)
    out["sent"] = sent
    out["stored_before_return"] = before.distinct
    out["waiting_for_the_killed"] = sent - before.distinct - before.dead
    out["survivors_got"] = [int(c.metric("messages_received_total")) for c in cols[:2]]
    if expiry_s is None:
        victim.start()
        victim.wait_connected()
        until(lambda: state_rows(db) >= sent, f"all {sent:,} stored", 300)
        victim.wait_idle()
        out["redelivered_to_the_killed_on_return"] = int(victim.metric("messages_received_total"))
    else:
        # Its session expires on the broker; do the survivors get what it held?
        time.sleep(max(0.0, expiry_s + 3 - (time.monotonic() - killed_at)))
        for col in cols[:2]:
            col.wait_idle()
    t = tally(db)
    for col in cols:
        col.stop()
        col.close()
    out.update(stored=t.distinct, duplicates=t.duplicates, gaps=t.gaps, dead=t.dead)
    out["lost"] = sent - t.distinct - t.dead
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=60_000)
    parser.add_argument("--devices", type=int, default=1000)
    parser.add_argument("--live-devices", type=int, default=2000)
    parser.add_argument("--rate", type=float, default=1500, help="live msgs/s (3. and 4.)")
    parser.add_argument("--down-s", type=float, default=10)
    parser.add_argument("--skip-expiry", action="store_true")
    parser.add_argument("--keep", action="store_true", help="keep logs and data")
    args = parser.parse_args()
    token = uuid.uuid4().hex[:6]
    with lab(args.keep) as the_lab:
        mq = Mosquitto(the_lab.folder("mosquitto"))
        mq.start()
        version = subprocess.run(
            ["mosquitto", "-h"], capture_output=True, text=True, check=False
        ).stdout.split("\n")[0]
        try:
            p = stickiness(mq.url)
            print(f"1. who gets a device's messages ({version}, 3 members, {p['messages']:,} msgs)")
            print(
                f"   split {p['split']}; consecutive messages of one device on different "
                f"members: {p['switches']:,} of {p['pairs']:,} ({p['switch_ratio']:.1%}; "
                f"no stickiness = 66.7%)"
            )
            items = backlog(args.devices, args.messages, token)
            groups = {n: f"g{n}{token}" for n in (1, 2, 3)}
            for n, group in groups.items():
                for i in range(n):
                    create_member_session(mq.url, f"{group}-{i}", group)
            seconds = publish(mq.url, items)
            print(
                f"2. throughput: {len(items):,} simulator messages ({args.devices:,} devices) "
                f"published once in {seconds:.1f}s to 3 offline groups"
            )
            print(
                f"   {'collectors':>10} {'seconds':>8} {'msgs/s':>8} {'speed-up':>8} "
                f"{'per member':>24} {'dup':>4} {'gaps':>5} {'RSS MiB':>8} {'CPU s':>6} "
                f"{'msgs/CPU-s':>9} {'load':>5}"
            )
            base = 0.0
            sizes: list[tuple[str, int, int, int]] = []
            for n, group in groups.items():
                db = the_lab.pg.database()
                logs = the_lab.folder(f"throughput-{n}")
                cols = []
                for i in range(n):
                    (logs / f"m{i}").mkdir()
                    cols.append(member(mq.url, db, logs / f"m{i}", group, f"{group}-{i}"))
                d = drain(cols, len(items))
                rate = len(items) / d.seconds
                base = base or rate
                t = tally(db)
                for col in cols:
                    col.close()
                print(
                    f"   {n:>10} {d.seconds:>8.2f} {rate:>8,.0f} {rate / base:>7.2f}x "
                    f"{'/'.join(f'{s:,}' for s in d.shares):>24} {t.duplicates:>4} "
                    f"{t.gaps:>5} {d.rss_mib:>8.0f} {d.cpu_s:>6.1f} "
                    f"{len(items) / d.cpu_s:>9,.0f} {d.load:>5.1f}",
                    flush=True,
                )
                if n == 1:
                    sizes = bytes_per_row(db)
            print("   bytes per stored row after the 1-collector run (table + indexes + TOAST):")
            for table, rows, total, indexes in sizes:
                per = f"{total / rows:,.0f}" if rows else "–"
                per_index = f"{indexes / rows:,.0f}" if rows else "–"
                print(f"     {table:14} {rows:>8,} rows {per:>6} B/row ({per_index} B/row indexes)")
            cases = [("3. one of three SIGKILLed, restarted with its session", None)]
            if not args.skip_expiry:
                cases.append(("4. one of three SIGKILLed, never back (session expiry 5 s)", 5))
            for title, expiry in cases:
                r = kill_one(the_lab, mq.url, f"kill-{expiry}", args, expiry)
                print(f"{title}: {args.live_devices:,} devices at {args.rate:,.0f} msgs/s")
                print(
                    f"   held by the killed member at the kill {r['held_when_killed']:,}; "
                    f"stored in the first {r['window_s']:.1f}s it was down {r['stored_while_down']:,} "
                    f"(~{r['stored_while_down'] / r['window_s']:,.0f}/s of {args.rate:,.0f}/s sent); "
                    f"its store worker exited "
                    + (
                        f"{r['worker_exit_s']:.1f}s after"
                        if r["worker_exit_s"] is not None
                        else "not within 30 s of"
                    )
                    + " the kill"
                )
                print(
                    f"   published {r['sent']:,}; stored by the survivors alone "
                    f"{r['stored_before_return']:,}; waiting in the killed member's session "
                    f"{r['waiting_for_the_killed']:,}"
                )
                if "redelivered_to_the_killed_on_return" in r:
                    print(
                        f"   after its return: received "
                        f"{r['redelivered_to_the_killed_on_return']:,}"
                    )
                print(
                    f"   final: published {r['sent']:,} stored {r['stored']:,} duplicates "
                    f"{r['duplicates']} gaps {r['gaps']:,} lost {r['lost']:,} dead {r['dead']}",
                    flush=True,
                )
        finally:
            mq.stop()


if __name__ == "__main__":
    main()
