"""Least-privilege database roles (migration 0006): each role connects and shows what it
may and may not do. Logins are created per test with unique names and dropped after."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import psycopg
import pytest
from click.testing import CliRunner

from app.cli import cli
from atmfleet.protocol import StateMessage, encode
from atmfleet.store.roles import group_roles
from atmfleet.store.writer import Accepted, BatchWriter
from tests.conftest import PG_ADMIN_URL, create_database, drop_database

pytestmark = pytest.mark.integration


def as_user(url: str, user: str) -> str:
    parts = urlsplit(url)
    host = parts.netloc.rsplit("@", 1)[-1]
    return urlunsplit((parts.scheme, f"{user}@{host}", parts.path, parts.query, ""))


def dbname(url: str) -> str:
    return urlsplit(url).path.lstrip("/")


@pytest.fixture
def logins(db: str) -> Iterator[dict[str, str]]:
    """``{"owner"|"writer"|"reader"|"nobody": url}``: a login in each group, one in none."""
    token = uuid.uuid4().hex[:8]
    groups = group_roles(dbname(db))
    names = {kind: f"atmfleet_t{token}_{kind}" for kind in (*groups, "nobody")}
    with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
        for kind, name in names.items():
            group = f' IN ROLE "{groups[kind]}"' if kind in groups else ""
            conn.execute(f'CREATE ROLE "{name}" LOGIN{group}'.encode())
    try:
        yield {kind: as_user(db, name) for kind, name in names.items()}
    finally:
        with psycopg.connect(db, autocommit=True) as conn:  # sessions first
            conn.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = ANY(%s)",
                (list(names.values()),),
            )
        with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
            for name in names.values():
                conn.execute(f'DROP ROLE IF EXISTS "{name}"'.encode())


ATTEMPTS = {
    "select devices": "SELECT count(*) FROM devices",
    "insert a state sample": (
        "INSERT INTO state_samples (device_id, seq, ts, received_at, state, heartbeat_s,"
        " components, cash_units, faults) VALUES ('x', 1, now(), now(), 'in_service', 60,"
        " '{}', '{}', '{}')"
    ),
    "update the inventory": "UPDATE devices SET vendor = vendor",
    "delete dead letters": "DELETE FROM dead_letters",
    "truncate telemetry": "TRUNCATE state_samples",
    "create a temporary table": "CREATE TEMP TABLE t (x int)",
    "create a table": "CREATE TABLE public.t_attempt (x int)",
    "drop a table": "DROP TABLE state_runs",
    "lock a run bucket": "SELECT bucket FROM run_locks WHERE bucket = 0 FOR UPDATE",
    "lock collector start-up": "LOCK TABLE collector_runs IN SHARE ROW EXCLUSIVE MODE",
}

#: What each role may do (the rest it may not).
MAY = {
    "owner": {
        "select devices", "insert a state sample", "update the inventory",
        "delete dead letters", "truncate telemetry", "create a temporary table",
        "create a table", "lock a run bucket", "lock collector start-up",
    },
    "writer": {
        "select devices", "insert a state sample", "delete dead letters",
        "create a temporary table", "lock a run bucket", "lock collector start-up",
    },
    "reader": {"select devices"},
}  # fmt: skip


def attempt(url: str, statement: str) -> str:
    """ "allowed" or the SQLSTATE of the refusal; nothing is kept (rolled back)."""
    with psycopg.connect(url) as conn:
        try:
            conn.execute(statement.encode())
        except psycopg.Error as exc:
            return exc.sqlstate or type(exc).__name__
        finally:
            conn.rollback()
    return "allowed"


def connects(url: str) -> bool:
    try:
        psycopg.connect(url, connect_timeout=5).close()
    except psycopg.OperationalError:
        return False
    return True


class TestRoles:
    @pytest.mark.parametrize("role", ["owner", "writer", "reader"])
    def test_each_role_may_do_its_part_and_nothing_else(
        self, logins: dict[str, str], role: str
    ) -> None:
        seen = {what: attempt(logins[role], sql) for what, sql in ATTEMPTS.items()}
        expected = {
            what: "allowed" if what in MAY[role] else "42501" for what in ATTEMPTS
        }  # 42501: insufficient_privilege
        assert seen == expected

    def test_a_login_in_no_group_cannot_connect(self, logins: dict[str, str]) -> None:
        assert not connects(logins["nobody"])
        assert connects(logins["reader"])

    def test_the_roles_of_one_database_cannot_connect_to_another(
        self, logins: dict[str, str]
    ) -> None:
        from atmfleet.store.migrate import upgrade

        other = create_database()
        try:
            with psycopg.connect(other, autocommit=True) as conn:
                upgrade(conn)
            for role in ("owner", "writer", "reader"):
                assert not connects(as_user(other, urlsplit(logins[role]).username or ""))
        finally:
            drop_database(other)

    def test_the_collector_stores_a_batch_as_the_writer(self, logins: dict[str, str]) -> None:
        now = datetime.now(UTC)
        msgs = [
            StateMessage(v=1, device_id="ATM-W", ts=now, seq=s, state="in_service")
            for s in range(3)
        ]
        records = [Accepted(m, now, "atmfleet/v1/device/ATM-W/state", encode(m)) for m in msgs]
        with psycopg.connect(logins["writer"]) as conn:
            result = BatchWriter(conn, "roles-test").write(records)
        assert result.stored["state"] == 3
        with psycopg.connect(logins["reader"]) as conn:
            row = conn.execute(
                "SELECT samples FROM state_runs WHERE device_id = 'ATM-W'"
            ).fetchone()
        assert row == (3,)

    def test_db_roles_prints_logins_and_no_secret(
        self, db: str, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        monkeypatch.setenv("ATMFLEET_DATABASE_URL", db)
        result = CliRunner().invoke(cli, ["db", "roles"], catch_exceptions=False)
        assert result.exit_code == 0, result.output
        name = dbname(db)
        for kind, group in (("migrate", "owner"), ("collector", "writer"), ("serve", "reader")):
            assert f'CREATE ROLE "{name}_{kind}" LOGIN IN ROLE "{name}_{group}";' in result.output
            assert f"\\password {name}_{kind}" in result.output
        assert "PASSWORD '" not in result.output
        assert 'REVOKE CONNECT, TEMPORARY ON DATABASE "postgres" FROM PUBLIC;' in result.output


class TestTheReaderComputesWhatItMayNotKeep:
    """serve, the bulletins and `atmfleet kpi` may run as the reader: the closed days that a
    writer would keep in kpi_device_days are computed each time instead, with the same
    figures, and nothing fails."""

    def test_low_yield_and_the_bulletin_as_the_reader(
        self, db: str, logins: dict[str, str], tmp_path: Path
    ) -> None:
        from datetime import time, timedelta
        from zoneinfo import ZoneInfo

        from atmfleet.store.inventory import upsert_inventory
        from collector.decode import decode
        from simulator.config import make_config
        from simulator.engine import generate
        from simulator.fleet import generate_inventory

        tz = ZoneInfo("Asia/Shanghai")
        day = datetime(2026, 11, 20).date()
        inventory = generate_inventory(6, 3, prefix="rd", config=make_config())
        start = datetime.combine(day - timedelta(days=2), time(13), tzinfo=tz).astimezone(UTC)
        end = datetime.combine(day + timedelta(days=1), time(2), tzinfo=tz).astimezone(UTC)
        msgs = []
        for e in generate(inventory, make_config(), 3, start, end, heartbeat_s=300):
            got = decode(e.topic, e.payload, datetime.fromtimestamp(e.t / 1000, UTC))
            if isinstance(got, Accepted):
                msgs.append(got)
        with psycopg.connect(db) as conn:
            upsert_inventory(conn, inventory)
            BatchWriter(conn, "roles-test").write(msgs)

        def run(url: str, *args: str) -> str:
            env = {"ATMFLEET_DATABASE_URL": url, "ATMFLEET_RULES_FILE": None}
            result = CliRunner().invoke(cli, list(args), env=env)
            assert result.exit_code == 0, result.output
            return result.output

        def kept() -> int:
            with psycopg.connect(db) as conn:
                row = conn.execute("SELECT count(*) FROM kpi_device_days").fetchone()
            assert row is not None
            return int(row[0])

        low = ["kpi", "low-yield", "--date", str(day), "--json"]
        as_reader = run(logins["reader"], *low)
        assert kept() == 0  # the reader kept nothing, and did not fail
        bulletin = run(
            logins["reader"], "bulletin", "daily", "--date", str(day), "--format", "json",
            "--out", str(tmp_path),
        )  # fmt: skip
        assert bulletin.strip().endswith(".json") and kept() == 0
        as_writer = run(logins["writer"], *low)
        assert kept() > 0  # the writer keeps the closed days
        assert run(logins["reader"], *low) == as_reader == as_writer  # kept or not: the same
