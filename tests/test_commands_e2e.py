"""Remote commands end to end: a real Mosquitto with the shipped configuration and the ACL
``atmfleet broker`` generates, the commands listener, simulated devices each connected as
itself (client certificates), PostgreSQL, and the ``atmfleet command`` CLI.

Devices: ATM-A (MQTT 5), ATM-B (MQTT 3.1.1: answers through the payload's reply_to),
ATM-F (starts in a fault), ATM-S (never answers), ATM-X (a raw client: the attacker),
ATM-G1 (behind the gateway GW-1, a raw client).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest
from click.testing import CliRunner, Result

from app.cli import cli
from atmfleet.inventory_io import load_inventory
from atmfleet.settings import Settings
from atmfleet.store.audit import Actor
from atmfleet.store.inventory import upsert_inventory
from atmfleet.store.migrate import upgrade
from commands import service
from commands.mqtt import BrokerPublisher, CommandListener
from commands.protocol import (
    CommandRequest,
    Outcome,
    ResultMessage,
    command_topic,
    data_topic,
    encode_chunk,
    encode_request,
    encode_result,
    result_topic,
)
from rules.config import CommandRules
from simulator.config import CommandSide
from simulator.devices import CommandDevices, Credentials, journal_bytes
from tests.conftest import create_database, drop_database
from tests.test_broker_security import Secured, peer, shipped_broker
from tests.test_collector_service import running, settings_for, wait_until

pytestmark = pytest.mark.integration

DEVICES = {
    "ATM-A": None,
    "ATM-B": None,
    "ATM-F": None,
    "ATM-S": None,
    "ATM-X": None,
    "ATM-G1": "GW-1",
}
#: 1 MB an hour: a 3-hour journal is 3 MB.
PER_HOUR = 1_000_000
COLLECTOR = "atmfleet-collector-1"
RULES = CommandRules(journal_max_bytes=8_000_000, journal_chunk_bytes=128 * 1024, sweep_s=0.2)


@dataclass
class World:
    secured: Secured
    db: str
    rules_file: Path
    devices: list[CommandDevices]
    listener: CommandListener

    def env(self, user: str) -> dict[str, str]:
        return {
            "ATMFLEET_DATABASE_URL": self.db,
            "ATMFLEET_MQTT_URL": self.secured.collector_url,
            "ATMFLEET_MQTT_USERNAME": "atmfleet-ops",
            "ATMFLEET_MQTT_PASSWORD": self.secured.password("atmfleet-ops"),
            "ATMFLEET_MQTT_CA_FILE": str(self.secured.creds / "ca.pem"),
            "ATMFLEET_RULES_FILE": str(self.rules_file),
            "ATMFLEET_USER": user,
        }

    def settings(self, identity: str) -> Settings:
        return _settings(self.secured, identity)

    def device(self, device_id: str) -> CommandDevices:
        return next(d for d in self.devices if device_id in d.devices)


def _settings(secured: Secured, identity: str) -> Settings:
    return Settings.model_validate(
        {
            "mqtt_url": secured.collector_url,
            "mqtt_username": identity,
            "mqtt_password": secured.password(identity),
            "mqtt_ca_file": secured.creds / "ca.pem",
        }
    )


def _rules_file(path: Path) -> Path:
    c = RULES
    path.write_text(
        "commands:\n"
        f"  journal_max_bytes: {c.journal_max_bytes}\n"
        f"  journal_chunk_bytes: {c.journal_chunk_bytes}\n"
        f"  sweep_s: {c.sweep_s}\n",
        encoding="utf-8",
    )
    return path


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    db = create_database()
    started: list[Any] = []
    with shipped_broker(tmp_path_factory.mktemp("commands"), devices=DEVICES) as secured:
        try:
            yield _world(secured, db, started)
        finally:
            for thing in reversed(started):
                thing.stop()
            drop_database(db)


def _world(secured: Secured, db: str, started: list[Any]) -> World:
    """The database (schema, inventory, users), the listener and the simulated devices."""
    creds, inventory = secured.creds, secured.inventory
    with psycopg.connect(db, autocommit=True) as conn:
        upgrade(conn)
        upsert_inventory(conn, load_inventory(inventory))
        for name, role, kind, scope in [
            ("olga", "operator", "fleet", None),
            ("vera", "viewer", "fleet", None),
            ("otto", "operator", "branch", "BR-9"),
        ]:
            conn.execute(
                "INSERT INTO users (username, role, scope_kind, scope_id) VALUES (%s,%s,%s,%s)",
                (name, role, kind, scope),
            )
    listener = CommandListener(_settings(secured, "atmfleet-commands"), db, RULES)
    w = World(secured, db, _rules_file(creds.parent / "rules.yaml"), [], listener)
    listener.start()
    started.append(listener)
    wait_until(listener.subscribed.is_set, what="the listener subscribed")
    url = f"mqtts://127.0.0.1:{secured.cert_port}"
    side = CommandSide(journal_bytes_per_hour=PER_HOUR, restart_s=0.2)
    for ids, protocol, cfg, faulty in [
        (["ATM-A", "ATM-F"], "5", side, ["ATM-F"]),
        (["ATM-B"], "3.1.1", side, []),
        (["ATM-S"], "5", side.model_copy(update={"silent_share": 1.0}), []),
    ]:
        devices = CommandDevices(
            ids,
            mqtt_url=url,
            protocol=protocol,
            config=cfg,
            credentials=Credentials(creds),
            faulty=faulty,
        )
        devices.start()
        started.append(devices)
        w.devices.append(devices)
    return w


def run(world: World, user: str, *args: str) -> Result:
    return CliRunner().invoke(cli, ["command", *args], env=world.env(user))


def command_id_of(result: Result) -> str:
    first = result.output.splitlines()[0]
    return first.split()[1]


def rows(world: World, sql: str, *args: Any) -> list[tuple[Any, ...]]:
    with psycopg.connect(world.db) as conn:
        return conn.execute(sql, args).fetchall()


def state_of(world: World, command_id: str) -> str:
    return str(rows(world, "SELECT state FROM commands WHERE id = %s", command_id)[0][0])


def audit(world: World, command_id: str) -> list[tuple[str, str]]:
    return [
        (str(r[0]), str(r[1]))
        for r in rows(
            world,
            "SELECT actor, action FROM audit_log WHERE object_type = 'command' AND object_id = %s"
            " ORDER BY id",
            command_id,
        )
    ]


class TestCommandLife:
    def test_refresh_is_sent_accepted_and_done_and_audited(self, world: World) -> None:
        result = run(world, "olga", "send", "ATM-A", "refresh", "--lang", "en")
        assert result.exit_code == 0, result.output
        lines = result.output.splitlines()
        states = [line.split("  ")[1] for line in lines[1:] if line[:2] == "20"]
        assert states == ["queued", "sent", "accepted", "done"], result.output
        cid = command_id_of(result)
        assert audit(world, cid) == [
            ("olga", "command.send"),
            ("device:ATM-A", "command.accepted"),
            ("device:ATM-A", "command.done"),
        ]
        shown = run(world, "vera", "show", cid)
        assert shown.exit_code == 0 and "已完成" in shown.output, shown.output

    def test_a_3_1_1_device_answers_through_the_payload(self, world: World) -> None:
        result = run(world, "olga", "send", "ATM-B", "refresh", "--lang", "en")
        assert result.exit_code == 0, result.output
        assert state_of(world, command_id_of(result)) == "done"

    def test_out_of_service_back_and_restart_are_stored_by_the_collector(
        self, world: World
    ) -> None:
        settings = settings_for(
            world.secured.collector_url,
            world.db,
            top={
                "mqtt_username": COLLECTOR,
                "mqtt_password": world.secured.password(COLLECTOR),
                "mqtt_ca_file": world.secured.creds / "ca.pem",
            },
        )

        def stored() -> list[tuple[int, str]]:
            found = rows(
                world,
                "SELECT seq >> 32, state FROM state_samples WHERE device_id = 'ATM-A' ORDER BY seq",
            )
            return [(int(epoch), str(state)) for epoch, state in found]

        with running(settings, COLLECTOR):
            refused = run(world, "olga", "send", "ATM-A", "out_of_service")
            assert refused.exit_code == 2 and "--yes" in refused.output
            out = run(world, "olga", "send", "ATM-A", "out_of_service", "--yes")
            assert out.exit_code == 0, out.output
            wait_until(lambda: "maintenance" in [s for _, s in stored()], what="out of service")
            assert world.device("ATM-A").state_of("ATM-A") == "maintenance"
            back = run(world, "olga", "send", "ATM-A", "in_service")
            assert back.exit_code == 0, back.output
            wait_until(lambda: stored()[-1][1] == "in_service", what="back in service stored")
            epoch = stored()[-1][0]
            restart = run(world, "olga", "send", "ATM-A", "restart", "--yes")
            assert restart.exit_code == 0, restart.output
            # a restart is a new boot epoch in the sequence numbers the collector stores
            wait_until(lambda: stored()[-1][0] == epoch + 1, what="the new boot epoch stored")
            assert world.device("ATM-A").devices["ATM-A"].restarts == 1

    def test_a_device_refuses_what_it_cannot_do_in_its_state(self, world: World) -> None:
        result = run(world, "olga", "send", "ATM-F", "in_service", "--lang", "en")
        assert result.exit_code == 1, result.output
        cid = command_id_of(result)
        assert state_of(world, cid) == "rejected"
        assert "fault" in rows(world, "SELECT reason FROM commands WHERE id = %s", cid)[0][0]

    def test_an_unanswered_command_expires_and_a_late_answer_does_not_revive_it(
        self, world: World
    ) -> None:
        result = run(world, "olga", "send", "ATM-S", "refresh", "--no-wait", "--expires", "5")
        cid = command_id_of(result)
        assert state_of(world, cid) == "sent"
        with psycopg.connect(world.db, autocommit=True) as conn:
            later = datetime.now(UTC) + timedelta(seconds=6)
            assert service.expire_due(conn, now=later) == [cid]
            late = ResultMessage(
                command_id=cid, device_id="ATM-S", result=Outcome.DONE, ts=datetime.now(UTC)
            )
            assert service.apply_result(conn, "ATM-S", late, RULES) == "late"
        assert state_of(world, cid) == "expired"
        assert ("system", "command.expired") in audit(world, cid)
        shown = run(world, "vera", "show", cid)
        assert "已过期" in shown.output and "到期未应答" in shown.output, shown.output
        assert '已完成  [device]  {"late": true' in shown.output, shown.output

    def test_a_redelivered_command_runs_once(self, world: World) -> None:
        now = datetime.now(UTC)
        handled = world.listener.handled
        with psycopg.connect(world.db, autocommit=True) as conn:
            cmd = service.send(
                conn, Actor("olga", "test"), "ATM-A", "refresh",
                publisher=_Twice(world), rules=RULES, now=now,
            )  # fmt: skip
        device = world.device("ATM-A").devices["ATM-A"]
        wait_until(lambda: device.repeats == 1, what="the redelivery answered")
        wait_until(lambda: state_of(world, cmd.id) == "done", what="done")
        # its repeated answers (accepted, done) reached the listener and changed nothing
        wait_until(lambda: world.listener.handled >= handled + 4, what="four answers handled")
        assert world.device("ATM-A").runs_of("ATM-A", cmd.id) == 1
        done = rows(world, "SELECT count(*) FROM command_events WHERE command_id = %s AND state = 'done'", cmd.id)  # fmt: skip
        assert done == [(1,)]


class _Twice:
    """Publishes each request twice (a redelivery)."""

    def __init__(self, world: World) -> None:
        self.world = world

    def publish_request(self, request: CommandRequest, expiry_s: int) -> None:
        with BrokerPublisher(self.world.settings("atmfleet-ops")) as pub:
            pub.publish_request(request, expiry_s)
            pub.publish_request(request, expiry_s)


class TestWhoMay:
    def test_a_viewer_cannot_send_and_an_operator_only_inside_its_scope(self, world: World) -> None:
        viewer = run(world, "vera", "send", "ATM-A", "refresh")
        assert viewer.exit_code == 2 and "viewer" in viewer.output
        outside = run(world, "otto", "send", "ATM-A", "refresh")
        assert outside.exit_code == 2 and "BR-9" in outside.output
        stranger = run(world, "mallory", "send", "ATM-A", "refresh")
        assert stranger.exit_code == 2 and "not registered" in stranger.output
        assert rows(world, "SELECT count(*) FROM commands WHERE requested_by <> 'olga'") == [(0,)]
        seen_outside = run(world, "otto", "list", "--json")
        assert seen_outside.exit_code == 0 and json.loads(seen_outside.output) == []
        mine = command_id_of(run(world, "olga", "send", "ATM-A", "refresh", "--no-wait"))
        seen = run(world, "vera", "list", "--json", "--device", "ATM-A")
        assert seen.exit_code == 0 and mine in [c["id"] for c in json.loads(seen.output)]
        refused = rows(
            world, "SELECT actor, action, object_id FROM audit_log WHERE action = 'command.refused'"
        )
        assert sorted(refused) == [
            ("otto", "command.refused", "ATM-A"),
            ("vera", "command.refused", "ATM-A"),
        ]

    def test_another_device_cannot_read_a_command_or_spoof_its_result(self, world: World) -> None:
        x = peer(world.secured, identity="ATM-X", cert=True)
        try:
            x.subscribe(command_topic("ATM-A"))
            x.subscribe(command_topic("ATM-X"))
            result = run(world, "olga", "send", "ATM-A", "refresh", "--no-wait")
            cid = command_id_of(result)
            ops = peer(world.secured, identity="atmfleet-ops")
            ops.publish(command_topic("ATM-X"), b"{}")
            ops.close()
            x.wait(lambda: bool(x.messages), "its own command")
            assert x.messages == [command_topic("ATM-X")]
            forged = ResultMessage(
                command_id=cid, device_id="ATM-A", result=Outcome.FAILED, ts=datetime.now(UTC)
            )
            assert x.publish(result_topic("ATM-A"), encode_result(forged)) == "Not authorized"
            x.close()
            x = peer(world.secured, identity="ATM-X", cert=True)
            # On its own topic the broker lets it through; the listener ignores it.
            assert x.publish(result_topic("ATM-X"), encode_result(forged)) == "Success"
            wait_until(lambda: state_of(world, cid) == "done", what="the real answer")
        finally:
            x.close()

    def test_a_gateway_answers_for_its_devices_only(self, world: World) -> None:
        result = run(world, "olga", "send", "ATM-G1", "refresh", "--no-wait")
        cid = command_id_of(result)
        gw = peer(world.secured, identity="GW-1", cert=True)
        try:
            gw.subscribe(command_topic("ATM-G1"))
            answer = ResultMessage(
                command_id=cid, device_id="ATM-G1", result=Outcome.DONE, ts=datetime.now(UTC)
            )
            assert gw.publish(result_topic("ATM-A"), encode_result(answer)) == "Not authorized"
            gw.close()
            gw = peer(world.secured, identity="GW-1", cert=True)
            assert gw.publish(result_topic("ATM-G1"), encode_result(answer)) == "Success"
            wait_until(lambda: state_of(world, cid) == "done", what="the gateway's answer")
        finally:
            gw.close()


class TestJournal:
    def test_a_journal_of_3_mb_is_reassembled_and_checksummed(
        self, world: World, tmp_path: Path
    ) -> None:
        since, until = "2026-11-30T00:00:00+08:00", "2026-11-30T03:00:00+08:00"
        result = run(world, "olga", "send", "ATM-A", "journal", "--since", since,
                     "--until", until)  # fmt: skip
        assert result.exit_code == 0, result.output
        cid = command_id_of(result)
        target = tmp_path / "ej.txt"
        viewer = run(world, "vera", "journal", cid, "--out", str(target))
        assert viewer.exit_code == 2 and not target.exists()
        got = run(world, "olga", "journal", cid, "--out", str(target))
        assert got.exit_code == 0, got.output
        expected = journal_bytes(
            "ATM-A", datetime.fromisoformat(since), datetime.fromisoformat(until), PER_HOUR
        )
        assert len(expected) == 3 * PER_HOUR
        assert hashlib.sha256(target.read_bytes()).digest() == hashlib.sha256(expected).digest()
        assert rows(world, "SELECT count(*) FROM command_journal_chunks") == [(0,)]
        assert ("olga", "command.journal_read") in audit(world, cid)
        # the reader login (serve, Grafana) sees that it exists, never what it says
        with psycopg.connect(world.db) as conn:
            name = conn.execute("SELECT current_database()").fetchone()[0]  # type: ignore[index]
            conn.execute(f'SET ROLE "{name}_reader"')
            size = conn.execute("SELECT bytes FROM command_journals WHERE command_id = %s", (cid,))
            assert size.fetchone() == (3 * PER_HOUR,)
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                conn.execute("SELECT data FROM command_journals")

    def test_a_journal_beyond_the_limit_is_refused_by_the_device(self, world: World) -> None:
        result = run(world, "olga", "send", "ATM-A", "journal", "--since",
                     "2026-11-29T00:00:00Z", "--until", "2026-11-29T09:00:00Z")  # fmt: skip
        cid = command_id_of(result)
        assert state_of(world, cid) == "rejected"
        assert "too_large" in rows(world, "SELECT reason FROM commands WHERE id = %s", cid)[0][0]

    def test_a_device_that_sends_more_than_the_limit_is_cut_off(self, world: World) -> None:
        result = run(world, "olga", "send", "ATM-X", "journal", "--no-wait", "--since",
                     "2026-11-29T00:00:00Z", "--until", "2026-11-29T01:00:00Z")  # fmt: skip
        cid = command_id_of(result)
        x = peer(world.secured, identity="ATM-X", cert=True)
        try:
            chunk = b"x" * (1024 * 1024)
            for seq in range(RULES.journal_max_bytes // len(chunk) + 1):
                assert x.publish(data_topic("ATM-X"), encode_chunk(cid, seq, chunk)) == "Success"
        finally:
            x.close()
        wait_until(lambda: state_of(world, cid) == "failed", what="the oversized journal refused")
        assert "too_large" in rows(world, "SELECT reason FROM commands WHERE id = %s", cid)[0][0]
        assert rows(world, "SELECT count(*) FROM command_journal_chunks") == [(0,)]


def test_the_request_on_the_wire(world: World) -> None:
    """What a device receives: the JSON of docs/protocol.md §14 with the payload fallback."""
    req = CommandRequest(
        command_id="c1", device_id="ATM-X", kind="refresh",  # type: ignore[arg-type]
        issued_at=datetime(2026, 12, 1, tzinfo=UTC),
        expires_at=datetime(2026, 12, 1, 0, 2, tzinfo=UTC),
        reply_to=result_topic("ATM-X"), correlation="c1",
    )  # fmt: skip
    body = json.loads(encode_request(req))
    assert body["reply_to"] == "atmfleet/v1/result/ATM-X" and body["correlation"] == "c1"


def test_a_server_on_mqtt_3_1_1_reaches_an_mqtt_5_device_through_the_payload(
    world: World,
) -> None:
    settings = world.settings("atmfleet-ops").model_copy(update={"mqtt_protocol": "3.1.1"})
    with psycopg.connect(world.db, autocommit=True) as conn, BrokerPublisher(settings) as pub:
        cmd = service.send(conn, Actor("olga", "test"), "ATM-A", "refresh", publisher=pub,
                           rules=RULES)  # fmt: skip
    wait_until(lambda: state_of(world, cmd.id) == "done", what="done over 3.1.1")
