"""Cash-out forecasts and the replenishment plan against a real PostgreSQL.

Hand-built histories (hourly heartbeats in service, withdrawals and deposits at known
amounts) give forecast times that can be worked out on paper; a device with no history
gets none (null, not a guess); the plan's amounts per denomination are checked by hand.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from zoneinfo import ZoneInfo

import psycopg
import pytest
from click.testing import CliRunner
from prometheus_client import CollectorRegistry

from app.cli import cli
from atmfleet.errors import Forbidden, UsageError
from atmfleet.inventory import Branch, Device, Inventory, SubBranch
from atmfleet.protocol import StateMessage, TxnMessage, device_topic, encode
from atmfleet.store.audit import Actor
from atmfleet.store.inventory import upsert_inventory
from atmfleet.store.writer import Accepted, BatchWriter
from cash.forecast import forecast
from cash.metrics import CashCollector, CashMetrics
from cash.plan import plan_for
from cash.store import load
from rules.config import parse_rules

pytestmark = pytest.mark.integration

TZ = ZoneInfo("Asia/Shanghai")
#: Tuesday 2026-12-01 00:00 local: the forecasts' "now".
NOW_LOCAL = datetime(2026, 12, 1, 0, 0, tzinfo=TZ)
NOW = NOW_LOCAL.astimezone(UTC)
NOW_MS = int(NOW.timestamp() * 1000)
RULES = parse_rules("cash: {history_days: 14, min_history_days: 7}")


def device(ident: str, kind: str = "atm", placement: str = "off_site") -> Device:
    return Device(
        id=ident, branch="B1", type=kind, placement=placement, vendor="GRG", model="H22N",
        commissioned=date(2025, 1, 1), heartbeat_s=3600,
    )  # fmt: skip


INVENTORY = Inventory(
    subbranches=(SubBranch(id="S1", name="赤峰", tier="2"),),
    branches=(Branch(id="B1", name="红山支行", subbranch="S1"),),
    devices=(
        device("A"),  # ¥100 only, ¥1000 an hour around the clock
        device("B"),  # ¥100 and ¥50, ¥1000 an hour
        device("C"),  # no history: only its current state
        device("D", "deposit"),  # deposits ¥1000 an hour
        device("E", placement="on_site"),  # ¥2000 an hour, 08:00-20:00 only
        device("Z"),  # history, but nothing withdrawn: beyond the horizon
    ),
)

UNITS = {
    "A": [{"id": "CST1", "type": "dispense", "denomination": 100, "count": 505,
           "capacity": 3000, "status": "ok"}],
    "B": [{"id": "CST1", "type": "dispense", "denomination": 100, "count": 1005,
           "capacity": 2500, "status": "ok"},
          {"id": "CST2", "type": "dispense", "denomination": 50, "count": 405,
           "capacity": 2000, "status": "ok"},
          {"id": "REJ", "type": "reject", "denomination": 0, "count": 3, "status": "ok"}],
    "C": [{"id": "CST1", "type": "dispense", "denomination": 100, "count": 100,
           "capacity": 3000, "status": "low"}],
    "D": [{"id": "CIM1", "type": "deposit", "denomination": 100, "count": 2500,
           "capacity": 3000, "status": "ok"}],
    "E": [{"id": "CST1", "type": "dispense", "denomination": 100, "count": 305,
           "capacity": 3000, "status": "ok"}],
    "Z": [{"id": "CST1", "type": "dispense", "denomination": 100, "count": 3000,
           "capacity": 3000, "status": "ok"}],
}  # fmt: skip


def _state(ident: str, at: datetime, seq: int, units: bool) -> Accepted:
    data = {"v": 1, "device_id": ident, "ts": at.isoformat().replace("+00:00", "Z"),
            "seq": seq, "state": "in_service", "heartbeat_s": 3600}  # fmt: skip
    if units:
        data["cash_units"] = UNITS[ident]
    m = StateMessage.model_validate(data)
    return Accepted(m, at, device_topic(ident, "state"), encode(m))


def _txn(ident: str, at: datetime, seq: int, kind: str, amount: int) -> Accepted:
    m = TxnMessage(
        v=1, device_id=ident, ts=at, seq=seq, txn_id=f"{ident}-{seq}", type=kind,
        amount=Decimal(amount), result="ok", duration_ms=1000,
    )  # fmt: skip
    return Accepted(m, at, device_topic(ident, "txn"), encode(m))


def history(anchor: datetime, days: int = 14) -> list[Accepted]:
    """Hourly heartbeats in service for ``days`` before ``anchor`` and the amounts."""
    out: list[Accepted] = []
    for ident in "ABCDEZ":
        seq = 0
        for h in range(days * 24, 0, -1):
            at = anchor - timedelta(hours=h)
            local_hour = at.astimezone(TZ).hour
            if ident != "C":
                seq += 1
                out.append(_state(ident, at, seq, units=False))
            mid = at + timedelta(minutes=30)
            if ident in "AB":
                seq += 1
                out.append(_txn(ident, mid, seq, "withdrawal", 1000))
            elif ident == "D":
                seq += 1
                out.append(_txn(ident, mid, seq, "deposit", 1000))
            elif ident == "E" and 8 <= local_hour < 20:
                seq += 1
                out.append(_txn(ident, mid, seq, "withdrawal", 2000))
        seq += 1
        out.append(_state(ident, anchor - timedelta(minutes=1), seq, units=True))
    return out


def store(url: str, anchor: datetime) -> None:
    with psycopg.connect(url) as conn:
        upsert_inventory(conn, INVENTORY)
        BatchWriter(conn, "test").write(history(anchor))
        conn.execute(
            "INSERT INTO users (username, role, scope_kind, scope_id) VALUES"
            " ('ops', 'viewer', 'fleet', NULL), ('cf', 'viewer', 'subbranch', 'S1'),"
            " ('other', 'viewer', 'subbranch', 'S9'), ('gone', 'admin', 'fleet', NULL)"
        )
        conn.execute("UPDATE users SET disabled = true WHERE username = 'gone'")
        conn.commit()


@pytest.fixture(scope="module")
def stored() -> Iterator[str]:
    """One database for the module's read-only cases (the history takes a while)."""
    from atmfleet.store.migrate import upgrade
    from tests.conftest import create_database, drop_database

    url = create_database()
    try:
        with psycopg.connect(url, autocommit=True) as conn:
            upgrade(conn)
        store(url, NOW)
        yield url
    finally:
        drop_database(url)


def _forecast(url: str):  # type: ignore[no-untyped-def]
    with psycopg.connect(url) as conn:
        loaded = load(conn, RULES, now=NOW_MS)
    return forecast(loaded.devices, loaded.history, loaded.now, RULES.cash, TZ).by_device()


def at(hours: float) -> datetime:
    """``hours`` after the counts were reported (one minute before now)."""
    return (NOW_LOCAL - timedelta(minutes=1) + timedelta(hours=hours)).replace(microsecond=0)


class TestForecastTimes:
    """Expected times worked out by hand from the hand-built histories (to the minute:
    the model sums in float32)."""

    def test_constant_rate_single_denomination(self, stored: str) -> None:
        # 505 notes, out below 5: the 501st note drawn empties it; ¥1000 an hour.
        a = _forecast(stored)["A"]
        u = a.cash_out()
        assert u is not None and u.unit_id == "CST1"
        assert abs((u.at - at(501 * 100 / 1000)).total_seconds()) <= 60
        # A perfectly regular history: the interval closes on the time (float32 sums).
        assert u.earliest is not None and u.latest is not None
        assert (u.latest - u.earliest).total_seconds() <= 60
        assert u.at.utcoffset() == timedelta(hours=8)  # local time

    def test_two_denominations_the_first_to_run_out_decides(self, stored: str) -> None:
        b = _forecast(stored)["B"]
        by_unit = {u.unit_id: u for u in b.units}
        share100, share50 = 0.85 / 0.95, 0.10 / 0.95  # dispense_mix over ¥100 and ¥50
        h100 = 1001 * 100 / share100 / 1000
        h50 = 401 * 50 / share50 / 1000
        assert abs((by_unit["CST1"].at - at(h100)).total_seconds()) <= 60
        assert abs((by_unit["CST2"].at - at(h50)).total_seconds()) <= 60
        assert "REJ" not in by_unit
        assert b.cash_out() is by_unit["CST1"]

    def test_hour_of_week_profile(self, stored: str) -> None:
        # ¥2000 an hour from 08:00 to 20:00: 301 notes = ¥30,100; Tuesday takes 24,000,
        # the remaining 6,100 go on Wednesday from 08:00: 3.05 h later.
        u = _forecast(stored)["E"].cash_out()
        assert u is not None
        expected = datetime(2026, 12, 2, 8, 0, tzinfo=TZ) + timedelta(hours=3.05)
        assert abs((u.at - expected).total_seconds()) <= 60

    def test_deposit_cassette_full(self, stored: str) -> None:
        d = _forecast(stored)["D"]
        assert d.cash_out() is None
        full = d.deposit_full()
        assert full is not None and full.unit_id == "CIM1"
        assert abs((full.at - at(500 * 100 / 1000)).total_seconds()) <= 60

    def test_no_history_is_null_not_a_guess(self, stored: str) -> None:
        c = _forecast(stored)["C"]
        assert c.reason == "no_history"
        assert c.units == () and c.cash_out() is None

    def test_nothing_drawn_is_beyond_the_horizon(self, stored: str) -> None:
        z = _forecast(stored)["Z"]
        assert z.reason is None
        (u,) = z.units
        assert u.at is None and u.beyond_horizon


class TestPlan:
    """加钞计划 for Tuesday 2026-12-01: off-site devices by the CIT company Tue/Thu/Sat
    09:00, on-site ones by the branch Mon/Wed/Fri 10:00, 12 h safety margin."""

    def plan(self, url: str, user: str = "ops", scope: str = "fleet"):  # type: ignore[no-untyped-def]
        with psycopg.connect(url) as conn:
            p = plan_for(conn, RULES, date(2026, 12, 1), Actor(user, "test"), scope=scope,
                         now=NOW_MS)  # fmt: skip
            conn.commit()
        return p

    def test_amounts_per_denomination(self, stored: str) -> None:
        p = self.plan(stored)
        (sub,) = p.subbranches
        got = {d.device_id: d for d in sub.devices}
        # A: runs out Thu 02:06, before Thu 09:00 + 12 h. By the round (Tue 09:00) 9 h x
        # ¥1000 = 90 notes are gone: 415 left, room 2585 of 3000: 25 bundles = 2500 notes.
        a = got["A"]
        assert a.needs_cash and a.by == "cit" and a.action == "replenish"
        assert a.round_at == datetime(2026, 12, 1, 9, 0, tzinfo=TZ)
        assert a.next_round_at == datetime(2026, 12, 3, 9, 0, tzinfo=TZ)
        assert [(x.denomination, x.notes, x.value) for x in a.amounts] == [(100, 2500, 250_000)]
        # B: runs out ~Fri 15:52 (¥100): before Thu 09:00 + 12 h? No (Thu 21:00): not listed.
        assert "B" not in got
        # D: cassette full Thu 02:00 < Thu 21:00: empty it; no notes to bring.
        assert got["D"].empty_deposit and not got["D"].needs_cash and got["D"].amounts == ()
        # E (on-site): no round on Tuesday; out Wed 11:03, after its next round (Wed 10:00).
        assert "E" not in got
        assert p.no_forecast == [("C", "no_history")]
        assert sub.totals() == {100: 2500}

    def test_amounts_of_two_denominations(self, stored: str) -> None:
        # The same history, planned for Thursday: B's round; ¥100 out Fri ~15:52 < Fri 21:00.
        with psycopg.connect(stored) as conn:
            p = plan_for(conn, RULES, date(2026, 12, 3), Actor("ops", "test"), now=NOW_MS)
        b = {d.device_id: d for s in p.subbranches for d in s.devices}["B"]
        # Until Thu 09:00 (57 h x ¥1000): ¥100 notes 57,000 x 0.8947 / 100 = 510 -> 495
        # left, room 2005 -> 2000; ¥50 notes 57,000 x 0.1053 / 50 = 120 -> 285 left,
        # room 1715 -> 1700.
        assert [(x.denomination, x.notes) for x in b.amounts] == [(100, 2000), (50, 1700)]

    def test_scope_and_roles(self, stored: str) -> None:
        assert self.plan(stored, "cf").scope == "subbranch:S1"
        with pytest.raises(Forbidden):
            self.plan(stored, "other", "subbranch:S1")
        with pytest.raises(Forbidden):
            self.plan(stored, "gone")
        with pytest.raises(UsageError):
            self.plan(stored, "nobody")

    def test_every_plan_is_audited(self, stored: str) -> None:
        with psycopg.connect(stored) as conn:
            (last,) = conn.execute("SELECT coalesce(max(id), 0) FROM audit_log").fetchone()
        self.plan(stored)
        with psycopg.connect(stored) as conn:
            rows = conn.execute(
                "SELECT actor, surface, action, object_id, after FROM audit_log WHERE id > %s",
                (last,),
            ).fetchall()
        assert rows == [("ops", "test", "cash.plan", "2026-12-01",
                         {"scope": "fleet", "devices": 2, "no_forecast": 1, "outputs": []})]  # fmt: skip


class TestMetrics:
    def test_the_forecast_as_metrics_from_the_store(self, stored: str) -> None:
        metrics = CashMetrics(stored, RULES, now=lambda: NOW_MS)
        metrics.refresh()
        reg = CollectorRegistry()
        reg.register(CashCollector(metrics))

        def value(name: str, device: str) -> float | None:
            return reg.get_sample_value(name, {"device": device})

        a = value("atmfleet_device_cash_out_forecast_timestamp_seconds", "A")
        assert a is not None and abs(a - at(50.1).timestamp()) <= 60
        hours = value("atmfleet_device_cash_out_forecast_service_hours", "A")
        assert hours is not None and abs(hours - (50.1 - 1 / 60)) <= 0.02
        full = value("atmfleet_device_deposit_full_forecast_timestamp_seconds", "D")
        assert full is not None and abs(full - at(50).timestamp()) <= 60
        for device in ("C", "Z"):  # no history; nothing expected within the horizon
            assert value("atmfleet_device_cash_out_forecast_timestamp_seconds", device) is None

    def test_the_forecast_made_in_a_child_process_is_the_same(self, stored: str) -> None:
        inline = CashMetrics(stored, RULES, now=lambda: NOW_MS).refresh()
        isolated = CashMetrics(stored, RULES, now=lambda: NOW_MS, isolated=True).refresh()
        assert isolated.ok and isolated.rows == inline.rows and isolated.at == inline.at
        assert any(r.cash_out is not None for r in isolated.rows)

    def test_a_database_that_cannot_be_read_leaves_no_device_series(self) -> None:
        metrics = CashMetrics("postgresql://nobody@127.0.0.1:1/none", RULES)
        metrics.refresh()
        reg = CollectorRegistry()
        reg.register(CashCollector(metrics))
        assert reg.get_sample_value("atmfleet_cash_out_forecast_alert_service_hours") == 24.0
        names = {m.name for m in reg.collect()}
        assert "atmfleet_device_cash_out_forecast_timestamp_seconds" not in names


class TestCli:
    def test_plan_xlsx_json_and_table(self, db: str, tmp_path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
        anchor = datetime.now(UTC).replace(minute=0, second=0, microsecond=0)
        store(db, anchor)
        monkeypatch.setenv("ATMFLEET_DATABASE_URL", db)
        monkeypatch.setenv("ATMFLEET_USER", "ops")
        today = datetime.now(TZ).date()
        runner = CliRunner()
        xlsx, js = tmp_path / "plan.xlsx", tmp_path / "plan.json"
        res = runner.invoke(cli, ["cash", "plan", "--date", str(today), "--xlsx", str(xlsx),
                                  "--json-file", str(js)])  # fmt: skip
        assert res.exit_code == 0, res.output
        assert "加钞计划" in res.output
        data = json.loads(js.read_text(encoding="utf-8"))
        assert data["date"] == str(today) and data["no_forecast"] == [
            {"device_id": "C", "reason": "no_history"}
        ]
        import openpyxl

        wb = openpyxl.load_workbook(xlsx)
        assert wb.sheetnames[0] == "汇总"
        res = runner.invoke(cli, ["cash", "forecast", "--json"])
        assert res.exit_code == 0, res.output
        devices = {d["device_id"]: d for d in json.loads(res.output)["devices"]}
        assert devices["C"]["cash_out_at"] is None and devices["C"]["reason"] == "no_history"
        assert devices["A"]["cash_out_at"].endswith("+08:00")
        # Yesterday: refused in one line.
        res = runner.invoke(cli, ["cash", "plan", "--date", str(today - timedelta(days=1))])
        assert res.exit_code == 2 and "a plan is made before its rounds" in res.output
        monkeypatch.setenv("ATMFLEET_USER", "nobody")
        res = runner.invoke(cli, ["cash", "plan", "--date", str(today)])
        assert res.exit_code == 2 and "not registered" in res.output
