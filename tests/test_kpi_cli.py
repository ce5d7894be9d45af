"""``atmfleet kpi``: hand-computed figures from a small stored fleet, and clear refusals."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from zoneinfo import ZoneInfo

import psycopg
import pytest
from click.testing import CliRunner

from app.cli import cli
from atmfleet.inventory import Branch, Device, Inventory, SubBranch
from atmfleet.protocol import (
    CounterMessage,
    StateMessage,
    TxnMessage,
    counter_topic,
    device_topic,
    encode,
)
from atmfleet.store.inventory import upsert_inventory
from atmfleet.store.migrate import upgrade
from atmfleet.store.writer import Accepted, BatchWriter
from tests.conftest import create_database, drop_database

pytestmark = pytest.mark.integration

TZ = ZoneInfo("Asia/Shanghai")
DAY = date(2026, 11, 20)
MIDNIGHT = datetime(2026, 11, 20, tzinfo=TZ).astimezone(UTC)

INVENTORY = Inventory(
    subbranches=(SubBranch(id="S1", name="赤峰", tier="2"),),
    branches=(Branch(id="B1", name="Outlet 1", subbranch="S1"),),
    devices=tuple(
        Device(
            id=f"cli-{n}",
            branch="B1",
            type="atm",
            placement="off_site",
            vendor="GRG",
            model="H22N",
            commissioned=date(2025, 1, 1),
            heartbeat_s=300,
        )
        for n in ("a", "b")
    ),
)


def heartbeats(device: str, fault_from: int, fault_to: int) -> list[StateMessage]:
    """Every 5 min from 23:00 the day before to 01:00 the day after (local); ``fault``
    between the minutes of the day given."""
    out = []
    for i, minute in enumerate(range(-60, 24 * 60 + 65, 5)):
        state = "fault" if fault_from <= minute < fault_to else "in_service"
        ts = MIDNIGHT + timedelta(minutes=minute)
        out.append(StateMessage(v=1, device_id=device, ts=ts, seq=i, state=state, heartbeat_s=300))
    return out


def _reading(url: str, monkeypatch: pytest.MonkeyPatch) -> str:
    """The module's stored database as it was written, for one test: the days an earlier
    reading kept (kpi_device_days, the only table ``kpi`` writes) are cleared first."""
    with psycopg.connect(url) as conn:
        conn.execute("DELETE FROM kpi_device_days")
    monkeypatch.setenv("ATMFLEET_DATABASE_URL", url)
    monkeypatch.delenv("ATMFLEET_RULES_FILE", raising=False)
    return url


@pytest.fixture(scope="module")
def stored_day() -> Iterator[str]:
    """One stored day for the module (its tests only read it, or keep days)."""
    url = create_database()
    try:
        _store_day(url)
        yield url
    finally:
        drop_database(url)


@pytest.fixture
def db(stored_day: str, monkeypatch: pytest.MonkeyPatch) -> str:
    return _reading(stored_day, monkeypatch)


def _store_day(database_url: str) -> None:
    with psycopg.connect(database_url, autocommit=True) as conn:
        upgrade(conn)
    msgs: list[Accepted] = []
    # cli-a: fault 10:00-11:00 local; cli-b: in service all day.
    for device, (a, b) in (("cli-a", (600, 660)), ("cli-b", (0, 0))):
        for m in heartbeats(device, a, b):
            msgs.append(Accepted(m, m.ts, device_topic(device, "state"), encode(m)))
    at = MIDNIGHT + timedelta(hours=12)
    for i, kind in enumerate(["withdrawal"] * 5 + ["inquiry"]):
        t = TxnMessage(
            v=1, device_id="cli-a", ts=at + timedelta(minutes=i), seq=1000 + i, txn_id=f"t{i}",
            type=kind, amount=Decimal("100"), fee=Decimal("2") if i == 0 else Decimal("0"),
            result="ok", duration_ms=1000,
        )  # fmt: skip
        msgs.append(Accepted(t, t.ts, device_topic("cli-a", "txn"), encode(t)))
    counter = CounterMessage(
        v=1, branch_id="B1", date=DAY, financial=15, non_financial=5, source="core", ts=at
    )
    msgs.append(Accepted(counter, at, counter_topic("B1"), encode(counter)))
    with psycopg.connect(database_url) as conn:
        upsert_inventory(conn, INVENTORY)
        BatchWriter(conn, "test").write(msgs)


def run(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(cli, ["kpi", *args])
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    return result.exit_code, result.output


class TestUptime:
    def test_the_fleet_figure_is_the_sum_of_available_over_the_sum_of_scheduled(
        self, db: str
    ) -> None:
        code, out = run("uptime", "--date", "2026-11-20", "--json")
        assert code == 0, out
        data = json.loads(out)
        total = data["total"]
        assert total["devices"] == 2
        assert total["scheduled_ms"] == 48 * 3_600_000  # exact: milliseconds as integers
        assert total["down_ms"] == 3_600_000
        assert total["uptime"] == 47 / 48  # unrounded
        assert total["meets_target"] is True  # 97.9 % against 97 % (tier 2)
        assert total["down_ms_by_cause"] == {"fault": 3_600_000}
        assert [r["group"] for r in data["rows"]] == ["S1"]

    def test_a_device_scope_breaks_down_by_device_in_a_readable_table(self, db: str) -> None:
        code, out = run("uptime", "--date", "2026-11-20", "--scope", "branch:B1")
        assert code == 0, out
        lines = out.splitlines()
        assert lines[0] == "开机率 uptime 2026-11-20..2026-11-20, branch:B1, by device"
        row_a = next(line for line in lines if line.startswith("cli-a"))
        assert "95.83%" in row_a and "fault" in row_a  # 23 h of 24
        row_b = next(line for line in lines if line.startswith("cli-b"))
        assert "100.00%" in row_b


class TestSubstitutionAndRevenue:
    def test_the_rate_counts_successful_financial_transactions_against_the_counter(
        self, db: str
    ) -> None:
        code, out = run("substitution", "--date", "2026-11-20", "--by", "branch", "--json")
        assert code == 0, out
        (row,) = json.loads(out)["rows"]
        assert row["group"] == "B1"
        assert row["self_financial"] == 5 and row["counter_financial"] == 15
        assert row["rate"] == 0.25  # 5 / (5 + 15)
        assert row["diversion"] == 6 / 26


class TestRefusals:
    @pytest.mark.parametrize(
        ("args", "message"),
        [
            (["uptime", "--date", "2099-01-01"], "2099-01-01 is in the future"),
            (["uptime", "--scope", "subbranch:NOPE"], "no subbranch 'NOPE' in the inventory"),
            (["uptime", "--scope", "planet:x"], "unknown scope kind 'planet'"),
            (["uptime", "--date", "2026-11-20", "--from", "2026-11-19"], "either --date or"),
            (["uptime", "--from", "2026-11-20", "--to", "2026-11-19"], "is before --from"),
            (["substitution", "--scope", "device:cli-a"], "substitution is per branch"),
            # Not offered (--help does not list it), so refused by the parser.
            (["low-yield", "--from", "2026-11-19", "--to", "2026-11-20"], "No such option"),
            (["network", "--from", "2026-11-19"], "No such option"),
        ],
    )
    def test_a_clear_message_and_exit_2_never_a_traceback(
        self, db: str, args: list[str], message: str
    ) -> None:
        code, out = run(*args)
        assert code == 2, out
        assert message in out
        assert "Traceback" not in out


def test_without_a_database_url_the_error_names_the_setting(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("ATMFLEET_DATABASE_URL", raising=False)
    code, out = run("uptime")
    assert code == 2
    assert "ATMFLEET_DATABASE_URL is not set" in out


class TestKeptDays:
    def test_keeping_days_ahead_changes_no_figure(self, db: str) -> None:
        code, before = run("low-yield", "--date", "2026-11-20", "--scope", "branch:B1", "--json")
        assert code == 0, before
        with psycopg.connect(db) as conn:
            conn.execute("DELETE FROM kpi_device_days")
        code, out = run("keep-days", "--from", "2026-11-19", "--to", "2026-11-20", "--json")
        assert code == 0, out
        assert [r["kept"] for r in json.loads(out)["rows"]] == [True, True]
        with psycopg.connect(db) as conn:
            row = conn.execute("SELECT count(*) FROM kpi_device_days").fetchone()
        assert row == (4,)  # 2 devices x 2 days
        code, after = run("low-yield", "--date", "2026-11-20", "--scope", "branch:B1", "--json")
        assert after == before
        flags = json.loads(after)
        # Two monitored days of the 20 the rules require: not evaluated (coverage).
        assert flags["rows"][0]["evaluated"] == 0
        assert flags["rows"][0]["not_evaluated_coverage"] == 2
        assert flags["total"]["share"] is None and flags["total"]["meets_target"] is None


@pytest.fixture(scope="module")
def stored_days() -> Iterator[str]:
    """Three stored days, 2026-11-18..20: cli-a is down 1 h every day; cli-b is down 2 h on
    the 20th only. Nothing is stored before 23:00 on the 17th."""
    url = create_database()
    try:
        _store_days(url)
        yield url
    finally:
        drop_database(url)


@pytest.fixture
def tail_db(stored_days: str, monkeypatch: pytest.MonkeyPatch) -> str:
    return _reading(stored_days, monkeypatch)


def _store_days(database_url: str) -> None:
    with psycopg.connect(database_url, autocommit=True) as conn:
        upgrade(conn)
    first = datetime(2026, 11, 18, tzinfo=TZ).astimezone(UTC)
    msgs: list[Accepted] = []
    for device in ("cli-a", "cli-b"):
        for i, minute in enumerate(range(-60, 3 * 24 * 60 + 65, 5)):
            day, of_day = divmod(minute, 24 * 60)
            hours_down = (600, 660) if device == "cli-a" else (600, 720) if day == 2 else (0, 0)
            down = hours_down[0] <= of_day < hours_down[1]
            m = StateMessage(
                v=1, device_id=device, ts=first + timedelta(minutes=minute), seq=i,
                state="fault" if down else "in_service", heartbeat_s=300,
            )  # fmt: skip
            msgs.append(Accepted(m, m.ts, device_topic(device, "state"), encode(m)))
    with psycopg.connect(database_url) as conn:
        upsert_inventory(conn, INVENTORY)
        BatchWriter(conn, "test").write(msgs)


class TestTailStreaks:
    """剁尾巴 counts the consecutive periods a member has stayed in the tail."""

    def tail(self, *args: str) -> list[tuple[str, int]]:
        code, out = run("tail", "--size", "1", "--json", *args)
        assert code == 0, out
        return [(r["device"], r["streak"]) for r in json.loads(out)["rows"]]

    def test_a_member_of_the_day_before_too_has_a_streak_of_two(self, tail_db: str) -> None:
        assert self.tail("--date", "2026-11-19") == [("cli-a", 2)]

    def test_a_new_member_starts_at_one(self, tail_db: str) -> None:
        assert self.tail("--date", "2026-11-20") == [("cli-b", 1)]

    def test_periods_before_the_stored_history_do_not_count(self, tail_db: str) -> None:
        # 11-17 and before hold no data: every device would look offline there.
        assert self.tail("--date", "2026-11-18") == [("cli-a", 1)]

    def test_no_history_asked_means_a_streak_of_one(self, tail_db: str) -> None:
        assert self.tail("--date", "2026-11-19", "--history", "0") == [("cli-a", 1)]
