"""The monthly and quarterly assessments' shortcuts give what the plain way gives, on a
real store of an awkward fleet.

The shortcuts: each device's period uptime in one pass over all its scheduled spans
(``period_uptime``; day by day when a daily cap on planned time is set), the
substitution unit-days and the fees summed per unit and day, and per device, by the
database (``unit_entries``, ``period_fees``, ``financial_per_device``). The plain way:
every device-day computed and added up (``per_device_uptime``), the period's
transactions held per device and day (``Context.txn``). The fleet: devices commissioned
and decommissioned inside the month, one commissioned after it, a sub-branch whose
devices sent nothing (no data: None, never 0), a self-service bank without a parent (its
own unit), on-site devices coming and going, monitoring that begins mid-month (a
partial month), planned maintenance on some days, counter volumes on some unit-days
only, fees with cents and without.
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo

import psycopg
import pytest

from atmfleet.inventory import Branch, BranchKind, Inventory, Placement
from atmfleet.store.inventory import upsert_inventory
from atmfleet.store.migrate import Flavour, upgrade
from rules.config import load_rules
from rules.feed import Feed
from rules.fleet import in_fleet_during
from rules.labels import Label
from rules.report import (
    Context,
    Scope,
    assessment_report,
    financial_per_device,
    per_device_uptime,
    period_fees,
    period_uptime,
    unit_entries,
)
from simulator.fleet import generate_inventory
from tests.conftest import create_database, drop_database

pytestmark = pytest.mark.integration

TZ = ZoneInfo("Asia/Shanghai")
FIRST, LAST = date(2026, 11, 1), date(2026, 11, 30)
MONITORED_FROM = date(2026, 11, 12)  # monitoring begins mid-month
H = 3_600_000


def _fleet() -> tuple[Inventory, str]:
    """The inventory, and the sub-branch whose devices send nothing (they leave the
    fleet before monitoring begins)."""
    inv = generate_inventory(48, 5, prefix="ap")
    devices = list(inv.devices)
    silent_sub = inv.subbranch_of(devices[-1]).id
    lone = Branch(id="apLONE", name="lone", subbranch=inv.subbranches[0].id,
                  kind=BranchKind.SELF_SERVICE_BANK, parent=None)  # fmt: skip
    changes = {
        0: {"commissioned": date(2026, 11, 18)},
        1: {"decommissioned": date(2026, 11, 21)},
        2: {"commissioned": date(2026, 12, 5)},  # after the month: in no count
        3: {"branch": lone.id},
        4: {"branch": lone.id, "commissioned": date(2026, 11, 25)},
    }
    on_site = [i for i, d in enumerate(devices) if d.placement is Placement.ON_SITE]
    changes[on_site[0]] = {"commissioned": date(2026, 11, 14)}
    changes[on_site[1]] = {"decommissioned": date(2026, 11, 27)}
    for i, d in enumerate(devices):
        if inv.subbranch_of(d).id == silent_sub and i not in changes:
            # Out of the fleet before monitoring began: no scheduled time, no data.
            changes[i] = {"decommissioned": date(2026, 11, 10)}
    for i, update in changes.items():
        devices[i] = devices[i].model_copy(update=update)
    inv = Inventory(**{**dict(inv), "devices": tuple(devices), "branches": (*inv.branches, lone)})
    return inv, silent_sub


INVENTORY, SILENT = _fleet()


def _ts(day: date, hour: float) -> datetime:
    return (datetime.combine(day, time(0), tzinfo=TZ) + timedelta(hours=hour)).astimezone(UTC)


def _fill(conn: psycopg.Connection) -> None:
    upsert_inventory(conn, INVENTORY)
    runs, txn, counters = [], [], []
    days = [MONITORED_FROM + timedelta(days=i) for i in range((LAST - MONITORED_FROM).days + 2)]
    for k, d in enumerate(INVENTORY.devices):
        if INVENTORY.subbranch_of(d).id == SILENT:
            continue
        seq = 0
        for n, day in enumerate(days):
            start = 8.5 if n == 0 else 0.0  # the first run starts mid-morning
            at_time = {start: "in_service"}
            if (k + n) % 5 == 0:
                at_time |= {3 + k % 7: "fault", 5.5 + k % 7: "in_service"}
            if (k + n) % 4 == 1:
                at_time |= {13: "planned_maintenance", 14 + (k + n) % 9: "in_service"}
            if (k * 3 + n) % 11 == 0:
                at_time |= {20.5: "cash_out", 23.25: "in_service"}
            changes = sorted((t, st) for t, st in at_time.items() if t >= start)
            for j, (at, state) in enumerate(changes):
                end = changes[j + 1][0] if j + 1 < len(changes) else 24.0
                a, b = _ts(day, at), _ts(day, end) - timedelta(seconds=60)
                samples = int((b - a).total_seconds()) // 60 + 1
                runs.append(f"{d.id}\t{a.isoformat()}\t{seq}\t{b.isoformat()}\t"
                            f"{seq + samples - 1}\t{state}\t60\t{samples}\n")  # fmt: skip
                seq += samples
    for k, d in enumerate(INVENTORY.devices):
        if INVENTORY.subbranch_of(d).id == SILENT or k % 9 == 8:
            continue  # no transactions at all for some
        for n in range(35):
            day = FIRST - timedelta(days=2) + timedelta(days=n)  # a little outside the month
            bucket = _ts(day, 0).isoformat()
            fee = "0" if (k + n) % 6 == 0 else f"{(k * 13 + n) % 40 / 4:.2f}"
            for kind, result, count in (("withdrawal", "ok", 5 + (k + n) % 17),
                                        ("inquiry", "ok", 1 + k % 3),
                                        ("withdrawal", "failed", (k + n) % 2),
                                        ("transfer", "ok", (k * n) % 4)):  # fmt: skip
                txn.append(f"{bucket}\t{d.id}\t{kind}\t{kind != 'inquiry'}\t{result}\ttrue\t"
                           f"{count}\t0\t{fee if result == 'ok' else '0'}\n")  # fmt: skip
    for k, b in enumerate(INVENTORY.branches):
        for n in range(30):
            if b.kind is BranchKind.OUTLET and (k + n) % 3:
                counters.append(f"{b.id}\t{FIRST + timedelta(days=n)}\t{40 + k + n}\t{n % 5}"
                                f"\tcore\t{_ts(FIRST, 0).isoformat()}\t{_ts(FIRST, 0).isoformat()}\n")  # fmt: skip
    with conn.cursor() as cur:
        for statement, lines in (
            ("COPY state_runs (device_id, start_ts, start_seq, last_ts, last_seq, state,"
             " heartbeat_s, samples) FROM STDIN", runs),
            ("COPY txn_daily FROM STDIN", txn),
            ("COPY counter_volumes FROM STDIN", counters),
        ):  # fmt: skip
            with cur.copy(statement) as copy:
                copy.write(io.StringIO("".join(lines)).getvalue())
    conn.commit()


@pytest.fixture(scope="module")
def db() -> Iterator[str]:
    url = create_database()
    try:
        with psycopg.connect(url, autocommit=True) as conn:
            upgrade(conn, flavour=Flavour.POSTGRES)
        with psycopg.connect(url) as conn:
            _fill(conn)
        yield url
    finally:
        drop_database(url)


NOW = int(datetime.combine(date(2026, 12, 2), time(9), tzinfo=TZ).timestamp() * 1000)


def _contexts(feed: Feed, first: date, last: date) -> tuple[Context, Context]:
    """(the shortcuts, the plain way) on one store."""
    inv = feed.inventory()
    fast = Context.make(feed, inv, Scope("fleet", "fleet"), first, last, NOW)
    plain = Context.make(feed, inv, Scope("fleet", "fleet"), first, last, NOW)
    plain.txn()  # the period's transactions held per device and day
    per_device_uptime(plain)  # every device-day, added up
    return fast, plain


PERIODS = [(FIRST, LAST), (date(2026, 11, 10), date(2026, 11, 24)), (date(2026, 10, 1), LAST)]


class TestAssessmentShortcuts:
    @pytest.mark.parametrize("cap", [None, 2 * 3600])
    @pytest.mark.parametrize("first,last", PERIODS)
    def test_period_uptime_equals_the_sum_of_the_device_days(
        self, db: str, cap: int | None, first: date, last: date
    ) -> None:
        rules = load_rules()
        rules = rules.model_copy(update={"planned_maintenance": rules.planned_maintenance
                                         .model_copy(update={"max_excluded_s_per_day": cap})})  # fmt: skip
        with psycopg.connect(db) as conn:
            fast, plain = _contexts(Feed(conn, rules), first, last)
            got, want = period_uptime(fast), per_device_uptime(plain)
        assert list(got) == list(want)
        for d, w in want.items():
            assert list(got[d].by_label.items()) == list(w.by_label.items()), d
            assert got[d] == w, d
        assert set(want) == {d.id for d in INVENTORY.devices if in_fleet_during(d, first, last)}
        assert INVENTORY.devices[2].id not in want  # commissioned after the period
        assert any(u.planned_excluded_ms > 0 for u in want.values())
        assert any(u.unknown_ms > 0 for u in want.values())  # before monitoring began
        silent = [u for d, u in want.items() if INVENTORY.subbranch_of(
            INVENTORY.device_by_id[d]).id == SILENT]  # fmt: skip
        assert all(u.ratio is None for u in silent)  # no data, not 0
        assert silent or first > date(2026, 11, 9)
        if cap is not None:
            assert any(u.planned_excluded_ms < u.by_label.get(Label.PLANNED, 0)
                       for u in want.values())  # fmt: skip

    @pytest.mark.parametrize("first,last", PERIODS)
    def test_transactions_summed_by_the_database_equal_the_device_days(
        self, db: str, first: date, last: date
    ) -> None:
        with psycopg.connect(db) as conn:
            fast, plain = _contexts(Feed(conn, load_rules()), first, last)
            entries = unit_entries(fast)
            assert entries == unit_entries(plain)
            fees = period_fees(fast)
            assert fees == period_fees(plain)
            assert {d: (str(f), n) for d, (f, n) in fees.items()} == {
                d: (str(f), n) for d, (f, n) in period_fees(plain).items()
            }  # the same Decimals, to the digit
            assert financial_per_device(fast) == financial_per_device(plain)
            assert ("txn", first, last) not in fast.cache  # never held per device-day
        lone = [v for u, v in entries if u == "apLONE"]
        assert lone and all(v.counter_financial is None for v in lone)  # its own unit
        assert any(v.counter_financial is None for _, v in entries)  # some days without
        sites = {v.on_site_devices for _, v in entries}
        assert len(sites) > 2  # on-site devices come and go
        assert any(f > 0 for f, _ in fees.values())

    def test_the_assessment_is_the_same_report(self, db: str) -> None:
        with psycopg.connect(db) as conn:
            fast, plain = _contexts(Feed(conn, load_rules()), FIRST, LAST)
            got, want = assessment_report(fast), assessment_report(plain)
        assert got.as_json() == want.as_json()
        silent = next(r for r in got.rows if r["group"] == SILENT)
        assert silent["uptime"] is None  # no data, not 0
        assert any(r["uptime"] is not None for r in got.rows)
