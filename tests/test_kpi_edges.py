"""KPI truth at the edges, by hand, on the real PostgreSQL (and Mosquitto where messages
flow): a store whose history starts mid-day, a day before any data, a device silent while
we watch, a collector outage, a device commissioned mid-window, a previous day without
data, a sub-branch all at target, a branch without on-site devices, a device exactly at
the low-yield threshold, devices out of the fleet, and a device not in the inventory.

Every device is a 24x7 ATM (off site unless said), heartbeat 300 s; sub-branches in tier
2 (uptime target 97 %). The store's first message is DAY 12:00 local.

    S1 / B1 (outlet): A  in service from DAY 12:00; 10 withdrawals a day, a 18.00 fee on D1
                      Q  silent: never sends (in the fleet since 2025)
                      M  on site, commissioned D1; in service; 5 withdrawals on D1
                      X  decommissioned D1 (silent on DAY: down); still sends on D1
                         (7 withdrawals): in no count on D1
                      Y  commissioned D1 + 5; already sends on D1: in no count
    S2 / B2 (outlet): A2 in service from DAY 12:00, 10 withdrawals a day; off site only
    collector outage D1 02:00-04:00 (no message stored then)
    counters: B1 D1 30 financial; B2 D1 10 financial; none on DAY
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, date, datetime, time, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any
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
from atmfleet.store.writer import Accepted, BatchWriter

pytestmark = pytest.mark.integration

TZ = ZoneInfo("Asia/Shanghai")
DAY = date(2026, 11, 20)
D1 = DAY + timedelta(days=1)
H = 3_600_000
RULES = """
low_yield:
  window_days: 2
  ramp_up_days: 0
  min_monitored_days: 2
  thresholds: {atm: 10, deposit: 20, crs: 60, smart_teller: 15, passbook: null, inquiry: null}
"""


def local(day: date, hour: float) -> datetime:
    return datetime.combine(day, time(0), tzinfo=TZ).astimezone(UTC) + timedelta(hours=hour)


def device(ident: str, branch: str, placement: str = "off_site", **dates: date) -> Device:
    return Device(
        id=ident, branch=branch, type="atm", placement=placement, vendor="GRG", model="H22N",
        commissioned=dates.get("commissioned", date(2025, 1, 1)),
        decommissioned=dates.get("decommissioned"), heartbeat_s=300,
    )  # fmt: skip


INVENTORY = Inventory(
    subbranches=(
        SubBranch(id="S1", name="赤峰", tier="2"),
        SubBranch(id="S2", name="通辽", tier="2"),
    ),
    branches=(
        Branch(id="B1", name="红山支行", subbranch="S1"),
        Branch(id="B2", name="科尔沁支行", subbranch="S2"),
    ),
    devices=(
        device("A", "B1"),
        device("Q", "B1"),
        device("M", "B1", "on_site", commissioned=D1),
        device("X", "B1", decommissioned=D1),
        device("Y", "B1", commissioned=D1 + timedelta(days=5)),
        device("A2", "B2"),
    ),
)


def heartbeats(ident: str, lo: datetime, hi: datetime, seq0: int = 0) -> list[Accepted]:
    """Every 5 minutes in [lo, hi], except inside the collector outage."""
    out = []
    outage = (local(D1, 2), local(D1, 4))
    t, seq = lo, seq0
    while t <= hi:
        if not outage[0] < t < outage[1]:
            m = StateMessage(
                v=1, device_id=ident, ts=t, seq=seq, state="in_service", heartbeat_s=300
            )
            out.append(Accepted(m, t, device_topic(ident, "state"), encode(m)))
        t += timedelta(minutes=5)
        seq += 1
    return out


def withdrawals(ident: str, day: date, n: int, fee: Decimal = Decimal("0")) -> list[Accepted]:
    out = []
    for i in range(n):
        at = local(day, 14) + timedelta(minutes=i)
        m = TxnMessage(
            v=1, device_id=ident, ts=at, seq=900_000 + day.day * 100 + i,
            txn_id=f"{ident}-{day}-{i}", type="withdrawal", amount=Decimal("100"),
            fee=fee if i == 0 else Decimal("0"), result="ok", duration_ms=1000,
        )  # fmt: skip
        out.append(Accepted(m, at, device_topic(ident, "txn"), encode(m)))
    return out


def counter(branch: str, day: date, financial: int) -> Accepted:
    at = local(day, 20)
    c = CounterMessage(
        v=1, branch_id=branch, date=day, financial=financial, non_financial=0, source="core", ts=at
    )
    return Accepted(c, at, counter_topic(branch), encode(c))


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    from atmfleet.store.migrate import upgrade
    from tests.conftest import create_database, drop_database

    url = create_database()
    rules = tmp_path_factory.mktemp("rules") / "rules.yaml"
    rules.write_text(RULES)
    try:
        with psycopg.connect(url, autocommit=True) as conn:
            upgrade(conn)
        start, end = local(DAY, 12), local(D1 + timedelta(days=1), 0)
        msgs = [*heartbeats("A", start, end), *heartbeats("A2", start, end)]
        msgs += heartbeats("M", local(D1, 0), end)
        msgs += heartbeats("X", local(D1, 0), end) + heartbeats("Y", local(D1, 0), end)
        msgs += withdrawals("A", DAY, 10) + withdrawals("A", D1, 10, Decimal("18.00"))
        msgs += withdrawals("A2", DAY, 10) + withdrawals("A2", D1, 10)
        msgs += withdrawals("M", D1, 5) + withdrawals("X", D1, 7) + withdrawals("Y", D1, 3)
        msgs += [counter("B1", D1, 30), counter("B2", D1, 10)]
        with psycopg.connect(url) as conn:
            upsert_inventory(conn, INVENTORY)
            BatchWriter(conn, "test").write(msgs)
            conn.execute(
                "INSERT INTO collector_outages (started_at, ended_at, detected_by) "
                "VALUES (%s, %s, 'test')",
                (local(D1, 2), local(D1, 4)),
            )
            conn.commit()
        yield {"ATMFLEET_DATABASE_URL": url, "ATMFLEET_RULES_FILE": str(rules)}
    finally:
        drop_database(url)


def run(env: dict[str, str], *args: str) -> tuple[int, str]:
    result = CliRunner().invoke(cli, list(args), env=env)
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    return result.exit_code, result.output


def kpi(env: dict[str, str], *args: str) -> dict[str, Any]:
    code, out = run(env, "kpi", *args, "--json")
    assert code == 0, out
    data: dict[str, Any] = json.loads(out)
    return data


def rows(report: dict[str, Any], key: str = "group") -> dict[str, dict[str, Any]]:
    return {r[key]: r for r in report["rows"]}


class TestCoverage:
    def test_a_day_before_any_data_is_no_data_not_zero(self, store: dict[str, str]) -> None:
        before = str(DAY - timedelta(days=1))
        got = kpi(store, "uptime", "--date", before)
        total = got["total"]
        # In the fleet that day: A, Q, X, A2 (M and Y not yet): all 24 h unknown.
        assert total["devices"] == 4
        assert (total["scheduled_ms"], total["unknown_ms"]) == (0, 4 * 24 * H)
        assert total["uptime"] is None  # no data: null, never 0 %
        assert total["coverage"] == 0.0  # 96 h scheduled, none of it monitored
        assert total["meets_target"] is None and total["main_cause"] is None
        assert all(r["uptime"] is None for r in got["rows"])
        code, table = run(store, "kpi", "uptime", "--date", before)
        assert code == 0
        for line in table.splitlines():
            if line.startswith(("S1 ", "S2 ")):
                uptime = line.split()[2]
                assert uptime == "–", line  # no data, not 0.00%

    def test_history_starting_mid_day_counts_only_the_monitored_half(
        self, store: dict[str, str]
    ) -> None:
        dev = rows(kpi(store, "uptime", "--date", str(DAY), "--by", "device"))
        # A: 12 h monitored of 24 h scheduled, all available.
        assert (dev["A"]["scheduled_ms"], dev["A"]["unknown_ms"]) == (12 * H, 12 * H)
        assert dev["A"]["uptime"] == 1.0 and dev["A"]["coverage"] == 0.5
        # Q never reported while we watched: down (communications), not "no data".
        assert dev["Q"]["uptime"] == 0.0 and dev["Q"]["down_ms_by_cause"] == {
            "communications": 12 * H
        }
        assert dev["Q"]["meets_target"] is False

    def test_a_collector_outage_is_unknown_and_out_of_s(self, store: dict[str, str]) -> None:
        dev = rows(kpi(store, "uptime", "--date", str(D1), "--by", "device"))
        assert (dev["A"]["scheduled_ms"], dev["A"]["available_ms"]) == (22 * H, 22 * H)
        assert dev["A"]["unknown_ms"] == 2 * H and dev["A"]["coverage"] == 22 / 24
        assert dev["Q"]["down_ms"] == 22 * H  # silent outside the outage: down
        assert dev["M"]["uptime"] == 1.0  # commissioned that day: counted from midnight

    def test_a_previous_day_without_data_gives_no_change(self, store: dict[str, str]) -> None:
        got = kpi(store, "uptime", "--date", str(DAY), "--by", "subbranch", "--previous")
        s1 = rows(got)["S1"]
        assert s1["uptime"] == 12 / 36  # A 12 h of 12, Q and X (silent) 0 of 12 each
        assert s1["previous"] is None and s1["change"] is None
        assert got["total"]["change"] is None
        later = rows(kpi(store, "uptime", "--date", str(D1), "--by", "subbranch", "--previous"))
        # D1: A 22 + Q 0 + M 22 of 66 h (X has left), against 1/3 the day before.
        assert later["S1"]["uptime"] == 44 / 66
        assert later["S1"]["previous"] == 12 / 36
        assert later["S1"]["change"] == 44 / 66 - 12 / 36


class TestFleetMembership:
    def test_out_of_the_fleet_is_in_no_count_or_denominator(self, store: dict[str, str]) -> None:
        up = kpi(store, "uptime", "--date", str(D1), "--by", "device")
        assert set(rows(up)) == {"A", "Q", "M", "A2"}
        assert up["total"]["devices"] == 4
        sub = rows(kpi(store, "substitution", "--date", str(D1), "--by", "branch"))
        assert sub["B1"]["self_financial"] == 15  # A 10 + M 5; X and Y left out
        assert sub["B1"]["rate"] == 15 / 45
        ass = rows(kpi(store, "assessment", "--date", str(D1)))
        # 18.00 of fees over the 3 devices of S1 in the fleet (not 5): 6, unrounded.
        assert ass["S1"]["devices"] == 3 and Decimal(ass["S1"]["fees_per_device"]) == 6

    def test_a_branch_without_on_site_devices_has_no_on_site_rate(
        self, store: dict[str, str]
    ) -> None:
        sub = rows(kpi(store, "substitution", "--date", str(D1), "--by", "branch"))
        assert sub["B2"]["rate"] == 0.5 and sub["B2"]["on_site_rate"] is None
        assert sub["B2"]["on_site_meets_target"] is None
        assert sub["B1"]["on_site_rate"] == 5 / 35  # M only, against the counter

    def test_without_counter_volume_the_rate_is_null_and_the_volume_shown(
        self, store: dict[str, str]
    ) -> None:
        got = kpi(store, "substitution", "--date", str(DAY), "--by", "branch")
        b2 = rows(got)["B2"]
        assert b2["rate"] is None and b2["reason"] == "no_counter_data"
        assert b2["self_financial"] == 10 and b2["meets_target"] is None
        assert got["total"]["group"] == "fleet" and got["total"]["rate"] is None


class TestTail:
    def test_only_who_falls_short_and_a_sub_branch_all_at_target_says_so(
        self, store: dict[str, str]
    ) -> None:
        got = kpi(store, "tail", "--date", str(D1))
        assert [(r["group"], r["device"]) for r in got["rows"]] == [("S1", "Q")]
        # D1 and DAY Q is in the tail; the two days before had no data: skipped.
        assert got["rows"][0]["streak"] == 2
        groups = rows(got["groups"])
        assert groups["S2"]["short"] == 0 and groups["S2"]["note"] == "nobody below target"
        assert got["history_periods"] == 3 and got["history_periods_with_data"] == 1

    def test_branches_fall_short_as_a_whole(self, store: dict[str, str]) -> None:
        up = kpi(store, "tail", "--date", str(D1), "--unit", "branch")
        # B1: (22 + 0 + 22) / 66 h below 97 %; B2: 22 of 22 h.
        assert [(r["branch"], r["uptime"]) for r in up["rows"]] == [("B1", 44 / 66)]
        vol = kpi(store, "tail", "--date", str(D1), "--unit", "branch", "--rank", "volume")
        # B1: 10 + 0 + 5 a day against 3 x 10; B2: 10 against 10 (at the threshold).
        assert [(r["branch"], r["daily_financial"], r["target"]) for r in vol["rows"]] == [
            ("B1", 15.0, 30.0)
        ]

    def test_a_day_without_data_ranks_nobody(self, store: dict[str, str]) -> None:
        got = kpi(store, "tail", "--date", str(DAY - timedelta(days=1)))
        assert got["rows"] == []
        assert {(r["group"], r["device"]) for r in got["no_data"]["rows"]} == {
            ("S1", "A"), ("S1", "Q"), ("S1", "X"), ("S2", "A2"),
        }  # fmt: skip


class TestLowYield:
    def test_every_device_is_listed_and_one_at_the_threshold_is_not_low(
        self, store: dict[str, str]
    ) -> None:
        got = kpi(store, "low-yield", "--date", str(D1), "--by", "subbranch")
        dev = rows(got["devices"])
        # A: 10 + 10 over its 2 monitored days: exactly the threshold, visible, not low.
        assert (dev["A"]["status"], dev["A"]["average"], dev["A"]["margin"]) == ("ok", 10.0, 0.0)
        assert dev["A"]["threshold"] == 10
        # M: one monitored day of the 2 required.
        assert dev["M"]["status"] == "not_evaluated_coverage" and dev["M"]["monitored_days"] == 1
        # Q: monitored, never in service: no average, but 低效.
        assert dev["Q"]["status"] == "not_evaluated" and dev["Q"]["low_efficiency"] is True
        s1 = rows(got)["S1"]
        assert (s1["low"], s1["evaluated"], s1["not_evaluated_coverage"]) == (0, 1, 1)
        assert got["total"]["meets_target"] is True and got["total"]["share"] == 0.0

    def test_nobody_evaluated_is_no_data(self, store: dict[str, str]) -> None:
        got = kpi(store, "low-yield", "--date", str(DAY))  # one monitored day at most
        assert got["total"]["evaluated"] == 0
        assert got["total"]["share"] is None and got["total"]["meets_target"] is None


class TestHelp:
    @pytest.mark.parametrize("command", ["low-yield", "network"])
    def test_one_day_commands_do_not_offer_a_period(self, command: str) -> None:
        result = CliRunner().invoke(cli, ["kpi", command, "--help"])
        assert result.exit_code == 0
        assert "--date" in result.output
        assert "--from" not in result.output and "--to" not in result.output


class TestBulletin:
    def test_the_daily_bulletin_shows_no_data_and_its_footnotes(
        self, store: dict[str, str], tmp_path: Path
    ) -> None:
        code, out = run(
            store, "bulletin", "daily", "--date", str(DAY), "--format", "json", "--lang", "en",
            "--out", str(tmp_path),
        )  # fmt: skip
        assert code == 0, out
        doc = json.loads(Path(out.strip()).read_text())
        subs = {r["subbranch"]: r for r in doc["tables"]["subbranches"]["rows"]}
        assert subs["S1"]["previous"] is None and subs["S1"]["change"] is None
        branches = {r["branch"]: r for r in doc["tables"]["branches"]["rows"]}
        assert branches["B2"]["substitution"] is None and branches["B2"]["financial"] == 10
        assert any("No unregistered device" in f for f in doc["footnotes"])
        assert any("Monitoring coverage below 100 %" in f for f in doc["footnotes"])


def test_an_unregistered_device_is_stored_listed_counted_and_counts_once_registered(
    db: str, mqtt_url: str, run_id: str
) -> None:
    """Messages from a device the inventory does not list go through Mosquitto and the
    collector into the store; `db unregistered` lists them; loading the device makes its
    stored history count."""
    from tests.test_collector_service import Publisher, running, settings_for, wait_until

    ghost = f"ghost-{run_id}"
    env = {"ATMFLEET_DATABASE_URL": db, "ATMFLEET_RULES_FILE": ""}
    env.pop("ATMFLEET_RULES_FILE")
    with psycopg.connect(db) as conn:
        upsert_inventory(conn, INVENTORY)
    start = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=30)
    with running(settings_for(mqtt_url, db), f"edges-{run_id}"):
        pub = Publisher(mqtt_url)
        for i in range(7):
            m = StateMessage(
                v=1, device_id=ghost, ts=start + timedelta(minutes=5 * i), seq=i + 1,
                state="in_service", heartbeat_s=300,
            )  # fmt: skip
            pub.send(device_topic(ghost, "state"), encode(m))
        pub.close()

        def stored() -> bool:
            with psycopg.connect(db) as conn:
                row = conn.execute(
                    "SELECT count(*) FROM state_samples WHERE device_id = %s", (ghost,)
                ).fetchone()
            return row == (7,)

        wait_until(stored, timeout=30, what="the unregistered device's 7 messages stored")
    code, out = run(env, "db", "unregistered")
    assert code == 0, out
    line = next(x for x in out.splitlines() if x.startswith(ghost))
    assert line.split()[-1] == "7"
    assert start.strftime("%Y-%m-%d %H:%M:%S") in line
    assert (start + timedelta(minutes=30)).strftime("%Y-%m-%d %H:%M:%S") in line
    # The half hour may cross local midnight: look at every local day it touches.
    days = sorted({str(t.astimezone(TZ).date()) for t in (start, start + timedelta(minutes=30))})
    for day in days:
        code, text = run(env, "kpi", "uptime", "--date", day, "--by", "device", "--json")
        assert ghost not in {r["group"] for r in json.loads(text)["rows"]}

    registered = INVENTORY.model_copy(update={"devices": (*INVENTORY.devices, device(ghost, "B2"))})
    with psycopg.connect(db) as conn:
        upsert_inventory(conn, registered)
    code, out = run(env, "db", "unregistered")  # others' retained messages may be listed
    assert code == 0 and ghost not in out
    available_ms = 0
    for day in days:
        code, text = run(env, "kpi", "uptime", "--date", day, "--by", "device", "--json")
        available_ms += {r["group"]: r for r in json.loads(text)["rows"]}[ghost]["available_ms"]
    assert available_ms >= 30 * 60_000  # its stored half hour counts now
