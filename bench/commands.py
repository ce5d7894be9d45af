"""Remote commands under load: round trip with N devices connected, and a 10 MB journal.

    python bench/commands.py [--devices 10000] [--commands 1000] [--rate 50]
                             [--journal-mb 10] [--protocol 5]

Starts its own Mosquitto and PostgreSQL (free ports on 127.0.0.1, data in a temporary
folder), loads a generated inventory of ``--devices`` devices, and runs, each in its own
process, ``atmfleet simulate-devices`` (every device its own MQTT connection, subscribed to
its command topic) and ``atmfleet command listen``. This process then sends ``--commands``
``refresh`` commands to random devices at ``--rate`` a second through
:func:`commands.service.send` (the code path of ``atmfleet command send``, over one
publisher connection), and takes each command's round trip from the database: from the
moment ``send`` was called (``created_at``) to the ``done`` row the listener committed.
Then one ``journal`` of ``--journal-mb`` MB: send → ``done`` (uploaded in chunks,
reassembled, checksummed, stored), and the time ``atmfleet command journal --out`` takes.

Loopback, no TLS, no ACL (the broker is open: the bench measures the command path, the
security tests cover the ACL). Targets: round-trip p99 <= 1 s with 10,000 devices
connected; a 10 MB journal fetched in <= 10 s.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import random
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from atmfleet.inventory_io import save_inventory  # noqa: E402
from atmfleet.settings import Settings  # noqa: E402
from atmfleet.store.audit import Actor  # noqa: E402
from atmfleet.store.inventory import upsert_inventory  # noqa: E402
from bench.services import Mosquitto, Postgres, until  # noqa: E402
from commands import service  # noqa: E402
from commands.mqtt import BrokerPublisher  # noqa: E402
from rules.config import CommandRules  # noqa: E402
from simulator.fleet import generate_inventory  # noqa: E402

ATMFLEET = str(Path(sys.executable).parent / "atmfleet")


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))
    return ordered[index]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--devices", type=int, default=10_000)
    parser.add_argument("--commands", type=int, default=1000)
    parser.add_argument("--rate", type=float, default=50.0, help="commands a second")
    parser.add_argument("--journal-mb", type=float, default=10.0)
    parser.add_argument("--protocol", choices=["5", "3.1.1"], default="5")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="atmfleet-bench-commands-") as tmp:
        base = Path(tmp)
        base.chmod(0o755)  # as root, PostgreSQL runs as postgres and must get in
        broker = Mosquitto(base / "mqtt", {"max_connections": "-1", "set_tcp_nodelay": "true"})
        pg = Postgres(base / "pg")
        procs: list[subprocess.Popen[bytes]] = []
        broker.start()
        pg.start()
        try:
            url = pg.database()
            inventory = generate_inventory(args.devices, 1)
            with psycopg.connect(url, autocommit=True) as conn:
                upsert_inventory(conn, inventory)
                conn.execute("INSERT INTO users (username, role) VALUES ('bench', 'operator')")
            inv_path = base / "inventory.yaml"
            save_inventory(inventory, inv_path)
            per_hour = 1_000_000
            (base / "sim.yaml").write_text(
                f"commands:\n  journal_bytes_per_hour: {per_hour}\n", encoding="utf-8"
            )
            env = {
                **os.environ,
                "ATMFLEET_DATABASE_URL": url,
                "ATMFLEET_MQTT_URL": broker.url,
                "ATMFLEET_MQTT_PROTOCOL": args.protocol,
                "ATMFLEET_USER": "bench",
            }
            log = (base / "listen.log").open("wb")
            procs.append(
                subprocess.Popen([ATMFLEET, "command", "listen"], env=env, stdout=log, stderr=log)
            )
            t0 = time.monotonic()
            sim_log = base / "devices.log"
            sim = [ATMFLEET, "simulate-devices", str(inv_path), "--config", str(base / "sim.yaml")]
            with sim_log.open("wb") as out:
                procs.append(subprocess.Popen(sim, env=env, stdout=out, stderr=out))
            until(
                lambda: (
                    "devices connected" in sim_log.read_text(errors="replace")
                    or procs[-1].poll() is not None
                ),
                "the devices to connect",
                timeout=600,
            )
            if procs[-1].poll() is not None:
                raise SystemExit(sim_log.read_text()[-2000:])
            connected_s = time.monotonic() - t0
            print(f"devices connected: {args.devices} in {connected_s:.1f} s "
                  f"(one MQTT connection each, MQTT {args.protocol})")  # fmt: skip

            settings = Settings.model_validate(
                {"mqtt_url": broker.url, "mqtt_protocol": args.protocol}
            )
            rules = CommandRules()
            ids = [d.id for d in inventory.devices]
            rng = random.Random(1)
            actor = Actor("bench", "bench")
            sent: list[str] = []
            with (
                psycopg.connect(url, autocommit=True) as conn,
                BrokerPublisher(settings) as publisher,
            ):
                # warm-up: one command end to end
                warm = service.send(conn, actor, ids[0], "refresh", publisher=publisher,
                                    rules=rules)  # fmt: skip
                until(lambda: _state(url, warm.id) == "done", "the warm-up command")
                start = time.monotonic()
                for n in range(args.commands):
                    due = start + n / args.rate
                    if (wait := due - time.monotonic()) > 0:
                        time.sleep(wait)
                    cmd = service.send(
                        conn, actor, rng.choice(ids), "refresh", publisher=publisher, rules=rules
                    )
                    sent.append(cmd.id)
                send_s = time.monotonic() - start
                until(lambda: _open(url, sent) == 0, "every command to finish", timeout=300)
                trips, states = _round_trips(url, sent)
                segments = _segments(url, sent)
                print(
                    f"round trip ({len(sent)} refresh commands at {len(sent) / send_s:.0f}/s "
                    f"to random devices of {args.devices}): p50 {percentile(trips, 0.5) * 1000:.0f}"
                    f" ms, p99 {percentile(trips, 0.99) * 1000:.0f} ms, max "
                    f"{max(trips) * 1000:.0f} ms; states {states}"
                )
                print(
                    "  p99 of each leg: "
                    + ", ".join(
                        f"{k} {percentile(v, 0.99) * 1000:.0f} ms" for k, v in segments.items()
                    )
                )

                hours = args.journal_mb * 1_000_000 / per_hour
                since = datetime(2026, 11, 30, tzinfo=UTC)
                params = {"since": since.isoformat(),
                          "until": (since + timedelta(hours=hours)).isoformat()}  # fmt: skip
                t1 = time.monotonic()
                jcmd = service.send(conn, actor, ids[-1], "journal", publisher=publisher,
                                    rules=rules, params=params)  # fmt: skip
                until(lambda: _state(url, jcmd.id) not in ("queued", "sent", "accepted"),
                      "the journal", timeout=120)  # fmt: skip
                fetched_s = time.monotonic() - t1
            state = _state(url, jcmd.id)
            out_file = base / "ej.txt"
            t2 = time.monotonic()
            subprocess.run(
                [ATMFLEET, "command", "journal", jcmd.id, "--out", str(out_file)],
                env=env, check=True, capture_output=True,
            )  # fmt: skip
            read_s = time.monotonic() - t2
            size = out_file.stat().st_size
            digest = hashlib.sha256(out_file.read_bytes()).hexdigest()
            print(
                f"journal: {size / 1e6:.1f} MB, state {state}, send → stored (chunks reassembled,"
                f" sha256 checked) {fetched_s:.2f} s; `atmfleet command journal --out` "
                f"{read_s:.2f} s; sha256 {digest[:16]}…"
            )
        finally:
            for p in procs:
                p.terminate()
                try:
                    p.wait(30)
                except subprocess.TimeoutExpired:
                    p.kill()
            broker.stop()
            pg.stop()


def _state(url: str, command_id: str) -> str:
    with psycopg.connect(url) as conn:
        row = conn.execute("SELECT state FROM commands WHERE id = %s", (command_id,)).fetchone()
    return "" if row is None else str(row[0])


def _open(url: str, ids: list[str]) -> int:
    with psycopg.connect(url) as conn:
        row = conn.execute(
            "SELECT count(*) FROM commands WHERE id = ANY(%s)"
            " AND state IN ('queued', 'sent', 'accepted')",
            (ids,),
        ).fetchone()
    return int(row[0]) if row else 0


def _round_trips(url: str, ids: list[str]) -> tuple[list[float], dict[str, int]]:
    with psycopg.connect(url) as conn:
        rows = conn.execute(
            "SELECT c.state, extract(epoch FROM e.at - c.created_at) FROM commands c"
            " LEFT JOIN command_events e ON e.command_id = c.id AND e.state = c.state"
            " WHERE c.id = ANY(%s)",
            (ids,),
        ).fetchall()
    states: dict[str, int] = {}
    trips = []
    for state, seconds in rows:
        states[state] = states.get(state, 0) + 1
        if state == "done":
            trips.append(float(seconds))
    return trips, states


def _segments(url: str, ids: list[str]) -> dict[str, list[float]]:
    """Where the time goes: send() up to the PUBACK (sent), to the device's accepted (as the
    listener recorded it), accepted to done."""
    with psycopg.connect(url) as conn:
        rows = conn.execute(
            "SELECT c.created_at, e.state, e.at FROM commands c JOIN command_events e"
            " ON e.command_id = c.id WHERE c.id = ANY(%s) ORDER BY c.id, e.id",
            (ids,),
        ).fetchall()
    at: dict[tuple[datetime, str], datetime] = {}
    created: list[datetime] = []
    for c_at, state, e_at in rows:
        if (c_at, "queued") not in at:
            created.append(c_at)
        at[(c_at, state)] = e_at
    legs: dict[str, list[float]] = {"to sent": [], "to accepted": [], "accepted to done": []}
    for c in created:
        sent, acc, done = at.get((c, "sent")), at.get((c, "accepted")), at.get((c, "done"))
        if sent:
            legs["to sent"].append((sent - c).total_seconds())
        if acc:
            legs["to accepted"].append((acc - c).total_seconds())
        if acc and done:
            legs["accepted to done"].append((done - acc).total_seconds())
    return legs


if __name__ == "__main__":
    main()
