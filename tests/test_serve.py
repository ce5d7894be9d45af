"""``atmfleet serve``: the exposition of docs/metrics.md from a small stored fleet.

The fleet is stored with the real writer in a time zone chosen so that the local time is
around noon (the day so far is about 12 h long whenever the tests run). Its devices:

- ``A`` (branch B1): in service all along, cash units 400/1000 + 300/500 (+ a reject
  unit, not counted); 3 withdrawals and 1 inquiry today, plus a failed withdrawal.
- ``G`` (branch B1, on-site): in service, but its own service window (02:00-04:00 local)
  is closed now.
- ``B`` (branch B2): in service, then ``fault`` for the last 20 minutes.
- ``C`` (branch B2): silent for the last 30 minutes (timeout 3 x 300 s): offline.
- ``D`` (branch B3): a broker last will received 8 minutes ago: offline.
- ``E`` (branch B3): never heard from: unknown.
- ``F`` (branch B3): decommissioned yesterday: not exported.

Branch B2 reported today's teller-counter volume (10 financial, 4 not).
"""

from __future__ import annotations

import gzip
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from urllib.request import urlopen
from zoneinfo import ZoneInfo

import psycopg
import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from atmfleet.inventory import Branch, Device, Inventory, SubBranch
from atmfleet.protocol import (
    CashUnit,
    CounterMessage,
    PresenceMessage,
    StateMessage,
    TxnMessage,
    counter_topic,
    device_topic,
    encode,
)
from atmfleet.store.inventory import upsert_inventory
from atmfleet.store.jobs import Job, Run
from atmfleet.store.migrate import upgrade
from atmfleet.store.unregistered import unregistered_count
from atmfleet.store.writer import Accepted, BatchWriter
from exporters.metrics import (
    LEAN_FLEET_LEAVES_OUT,
    LEAN_LEAVES_OUT,
    LEAN_SERIES_LEAVES_OUT,
    DatabaseSource,
    DayTimes,
    DeviceRow,
    Exporter,
    FleetCollector,
    Newest,
    Snapshot,
    Targets,
    cash_ratio,
    current_state,
    make_server,
    render,
    start_serving,
)
from rules.config import Rules, parse_rules
from tests.conftest import create_database, drop_database

ROOT = Path(__file__).resolve().parent.parent
METRICS_DOC = ROOT / "docs" / "metrics.md"
HB = 300  # heartbeat_s of every device
MIN = 60_000


# ------------------------------------------------------------------------ pure rules


class TestCurrentState:
    """The live state rule of docs/metrics.md ("Current state"), on plain values."""

    NOW = 10_000 * MIN

    def test_a_device_never_heard_from_is_unknown_without_a_since(self) -> None:
        assert current_state(self.NOW, Newest(), 3.0) == ("unknown", None)

    def test_a_newest_offline_presence_makes_it_offline_from_that_presence(self) -> None:
        newest = Newest(
            state_ts=self.NOW - 10 * MIN,
            state="in_service",
            heartbeat_s=60,
            presence_at=self.NOW - 2 * MIN,
            presence_offline=True,
        )
        assert current_state(self.NOW, newest, 3.0) == ("offline", self.NOW - 2 * MIN)

    def test_a_state_after_the_offline_presence_wins(self) -> None:
        newest = Newest(
            state_ts=self.NOW - MIN,
            state="in_service",
            heartbeat_s=60,
            run_start=self.NOW - MIN,
            presence_at=self.NOW - 2 * MIN,
            presence_offline=True,
        )
        assert current_state(self.NOW, newest, 3.0) == ("in_service", self.NOW - MIN)

    def test_silence_longer_than_the_timeout_is_offline_from_the_last_state(self) -> None:
        newest = Newest(state_ts=self.NOW - 4 * MIN, state="in_service", heartbeat_s=60)
        assert current_state(self.NOW, newest, 3.0) == ("offline", self.NOW - 4 * MIN)

    def test_silence_within_the_timeout_keeps_the_state_since_its_run_began(self) -> None:
        newest = Newest(
            state_ts=self.NOW - 2 * MIN,
            state="fault",
            heartbeat_s=60,
            run_start=self.NOW - 90 * MIN,
        )
        assert current_state(self.NOW, newest, 3.0) == ("fault", self.NOW - 90 * MIN)


class TestCashRatio:
    def test_counts_dispensing_units_with_a_capacity_that_work(self) -> None:
        units = [
            {"type": "dispense", "status": "ok", "count": 400, "capacity": 1000},
            {"type": "recycle", "status": "low", "count": 300, "capacity": 500},
            {"type": "dispense", "status": "inop", "count": 0, "capacity": 1000},
            {"type": "reject", "status": "ok", "count": 10, "capacity": 200},
            {"type": "dispense", "status": "ok", "count": 50, "capacity": None},
        ]
        assert cash_ratio(units) == pytest.approx(700 / 1500)

    def test_is_absent_without_such_a_unit(self) -> None:
        assert cash_ratio([{"type": "deposit", "status": "ok", "count": 1, "capacity": 9}]) is None
        assert cash_ratio([]) is None


# ------------------------------------------------------------- the documented example


def _doc_example() -> str:
    text = METRICS_DOC.read_text(encoding="utf-8")
    match = re.search(r"^```text\n(.*?)^```$", text, re.S | re.M)
    assert match
    return match.group(1)


def _at(unix: float) -> datetime:
    return datetime.fromtimestamp(unix, UTC)


#: The families of which lean leaves out some series: family -> (label, value).
LEAN_SERIES = {
    e.partition("{")[0]: tuple(e.partition("{")[2].rstrip("}").replace('"', "").split("="))
    for e in LEAN_SERIES_LEAVES_OUT
}


def _left_out(sample: tuple[str, tuple[tuple[str, str], ...], float]) -> bool:
    """Whether ``atmfleet serve`` (lean) leaves this sample out."""
    name, labels, _value = sample
    return name in LEAN_LEAVES_OUT or (name in LEAN_SERIES and LEAN_SERIES[name] in labels)


def _samples(text: str) -> set[tuple[str, tuple[tuple[str, str], ...], float]]:
    return {
        (s.name, tuple(sorted(s.labels.items())), s.value)
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


class TestTheDocumentedExample:
    """A snapshot holding the values of the example in docs/metrics.md renders exactly
    the example's samples (HELP texts and number formatting aside)."""

    def test_renders_the_same_samples(self) -> None:
        snap = Snapshot(
            targets=Targets({"1": 0.98, "2": 0.97, "3": 0.96}, 0.6, 0.6, 0.05),
            database_up=True,
            read_seconds=0.042,
            devices=[
                DeviceRow(
                    "ATM-0001",
                    "B01",
                    "HLBE",
                    "2",
                    "atm",
                    "GRG",
                    "off_site",
                    "H68N",
                    "in_service",
                    1795802400,
                    1795832370,
                    0.408,
                    True,
                ),
                DeviceRow(
                    "CRS-0002",
                    "B01",
                    "HLBE",
                    "2",
                    "crs",
                    "Hyosung",
                    "on_site",
                    "6040W",
                    "offline",
                    1795831680,
                    1795831680,
                    0.71,
                    True,
                ),
            ],
            subbranches=[("HLBE", "2", "呼伦贝尔")],
            branches=[("B01", "HLBE", "2", "outlet", "海拉尔支行营业部")],
            day_start=1795795200,
            day={("B01", "HLBE", "2"): DayTimes(74400, 73680, 73680, 73680, 0)},
            self_service={
                ("B01", "HLBE", "2", "off_site", True): 96,
                ("B01", "HLBE", "2", "off_site", False): 31,
                ("B01", "HLBE", "2", "on_site", True): 54,
            },
            teller={("B01", "HLBE", "2", True): 88},
            lowyield_date=1795708800,
            lowyield={("HLBE", "2", "atm"): (0, 1), ("HLBE", "2", "crs"): (1, 1)},
            resource_warning={("B01", "HLBE", "2"): 5400},
            refreshed_at=1795832399.5,
            computed_at={"day": 1795832340, "low_yield": 1795830000},
            jobs=[
                Job(
                    1004,
                    "refresh",
                    "txn_hourly",
                    timedelta(minutes=15),
                    True,
                    _at(1795832700),
                    Run(_at(1795832100), False, None, 6, '24000 cannot drop portal ""'),
                    Run(_at(1795831200), True, _at(1795831201.5), 0, None),
                    True,
                )
            ],
        )
        registry = CollectorRegistry()
        exporter = Exporter(_Fixed(snap), registry, snap.targets)
        exporter.refresh()
        assert _samples(exporter.exposition().decode()) == _samples(_doc_example())
        # --lean: the same, without the families no rule, alert or dashboard reads.
        lean = Exporter(_Fixed(snap), CollectorRegistry(), snap.targets, leave_out=LEAN_LEAVES_OUT)
        lean.refresh()
        assert _samples(lean.exposition().decode()) == {
            s for s in _samples(_doc_example()) if not _left_out(s)
        }
        assert all(name in _doc_example() for name in LEAN_FLEET_LEAVES_OUT)
        # The example shows a series lean leaves out of a family it keeps.
        assert any(s[0] in LEAN_SERIES and _left_out(s) for s in _samples(_doc_example()))
        cash_doc = METRICS_DOC.read_text(encoding="utf-8").split("## Cash-out forecasts")[1]
        assert all(f"`{name}`" in cash_doc for name in LEAN_LEAVES_OUT - LEAN_FLEET_LEAVES_OUT)


def test_the_rendering_is_generate_latest_byte_for_byte_again_and_again() -> None:
    """render() (columns, lines of the last rendering reused) writes what prometheus_client
    writes, for a first rendering and for later ones whose values changed or not."""
    from prometheus_client import generate_latest

    def snap(ratio: float, state: str, seconds: float) -> Snapshot:
        rows = [
            DeviceRow("A", "B1", "S1", "2", "atm", 'Ven"dor', "off_site", "M\\1",
                      state, 1795802400.5, None, ratio, True),
            DeviceRow("B", "B1", "S1", "2", "crs", "V", "on_site", "M2",
                      "in_service", 0.0, None, 0.0, False),
        ]  # fmt: skip
        return Snapshot(
            targets=Targets({"1": 0.98}, 0.6, 0.6, 0.05),
            database_up=True,
            devices=rows,
            branches=[("B1", "S1", "2", "outlet", "名\n")],
            day_start=1795795200,
            day={("B1", "S1", "2"): DayTimes(seconds, -0.0, 1e-9, 12345678901.25, 0)},
            self_service={("B1", "S1", "2", "off_site", True): 96},
        )

    current = [snap(0.25, "fault", 3600.0)]
    registry = CollectorRegistry()
    registry.register(FleetCollector(lambda: current[0]))
    for later in (None, snap(0.25, "fault", 3600.0), snap(0.5, "in_service", 7200.0),
                  snap(0.25, "fault", 3600.0)):  # fmt: skip
        if later is not None:
            current[0] = later
        assert render(registry) == generate_latest(registry)


@dataclass
class _Fixed:
    """A source that returns one snapshot (for the rendering, not for the store)."""

    snap: Snapshot

    def read(self) -> Snapshot:
        return self.snap


# ------------------------------------------------------------------ the stored fleet


def zone_near_noon(now: datetime) -> str:
    """A fixed-offset IANA zone in which ``now`` is between 11:30 and 12:30 local."""
    offset = round(12 - (now.hour + now.minute / 60))
    if offset == 0:
        return "Etc/UTC"
    return f"Etc/GMT{'-' if offset > 0 else '+'}{abs(offset)}"


@dataclass
class Fleet:
    url: str
    rules: Rules
    now: datetime  # when the history was written (UTC)
    midnight: datetime  # today's local midnight (UTC)
    fault_from: datetime  # B
    c_last: datetime  # C's newest message (ts; received 1 s later)
    d_will_received: datetime
    a_last_received: datetime
    run_id: str  # in every device id


def _device(id_: str, branch: str, **kw: object) -> Device:
    fields: dict[str, object] = dict(
        type="atm", placement="off_site", vendor="GRG", model="H68N",
        commissioned=date(2025, 1, 1), heartbeat_s=HB,
    )  # fmt: skip
    fields.update(kw)
    return Device(id=id_, branch=branch, **fields)


def store_fleet(url: str, run_id: str) -> Fleet:
    now = datetime.now(UTC).replace(microsecond=0)
    tz_name = zone_near_noon(now)
    tz = ZoneInfo(tz_name)
    # One monitored hour yesterday is enough to be evaluated for low yield here.
    rules = parse_rules(f"timezone: {tz_name}\nlow_yield:\n  min_monitored_days: 1\n")
    today = now.astimezone(tz).date()
    midnight = datetime(today.year, today.month, today.day, tzinfo=tz).astimezone(UTC)
    ids = {k: f"{k}-{run_id}" for k in "ABCDEFG"}
    inventory = Inventory(
        subbranches=(SubBranch(id="S1", name="赤峰", tier="2"),),
        branches=(
            Branch(id="B1", name="Outlet 1", subbranch="S1"),
            Branch(id="B2", name="Outlet 2", subbranch="S1"),
            Branch(id="B3", name="Bank 3", subbranch="S1", kind="self_service_bank"),
        ),
        devices=(
            _device(ids["A"], "B1"),
            _device(ids["G"], "B1", placement="on_site", service_window="daily 02:00-04:00"),
            _device(ids["B"], "B2", type="crs", vendor="Hyosung", model="6040W"),
            _device(ids["C"], "B2"),
            _device(ids["D"], "B3"),
            _device(ids["E"], "B3"),
            _device(ids["F"], "B3", decommissioned=today - timedelta(days=1)),
        ),
    )
    start = midnight - timedelta(hours=1)
    fault_from = now - timedelta(minutes=20)
    c_last = now - timedelta(minutes=30)
    d_stop = now - timedelta(minutes=10)
    d_will = now - timedelta(minutes=8)
    cash = [
        CashUnit(id="1", type="dispense", denomination=100, count=400, capacity=1000, status="ok"),
        CashUnit(id="2", type="recycle", denomination=100, count=300, capacity=500, status="low"),
        CashUnit(id="3", type="reject", denomination=0, count=20, capacity=200, status="ok"),
    ]
    msgs: list[Accepted] = []

    def add(m: StateMessage | TxnMessage | PresenceMessage, received: datetime) -> None:
        kind = {StateMessage: "state", TxnMessage: "txn", PresenceMessage: "presence"}[type(m)]
        msgs.append(Accepted(m, received, device_topic(m.device_id, kind), encode(m)))

    def heartbeats(key: str, until: datetime, state_at: dict[datetime, str] | None = None) -> None:
        points = sorted(
            {*(start + timedelta(seconds=HB * i) for i in range(1000)), *(state_at or {})}
        )
        state = "in_service"
        for seq, t in enumerate(points, start=1):
            if t > until:
                break
            state = (state_at or {}).get(t, state)
            m = StateMessage(
                v=1, device_id=ids[key], ts=t, seq=seq, state=state, heartbeat_s=HB,
                cash_units=cash if key == "A" else [],
            )  # fmt: skip
            add(m, t + timedelta(seconds=1))

    heartbeats("A", now)
    heartbeats("G", now)
    heartbeats("B", now, {fault_from: "fault"})
    heartbeats("C", c_last)
    heartbeats("D", d_stop)
    for seq in range(1, 4):  # a device the inventory does not list: stored, counted apart
        ghost = StateMessage(
            v=1, device_id=f"{run_id}-ghost", ts=now - timedelta(minutes=seq), seq=seq,
            state="in_service", heartbeat_s=HB,
        )  # fmt: skip
        add(ghost, ghost.ts + timedelta(seconds=1))
    will = PresenceMessage(
        v=1, device_id=ids["D"], status="offline", ts=start, session="s1", will=True
    )
    add(will, d_will)
    at = now - timedelta(minutes=15)
    for i, (kind, result) in enumerate(
        [("withdrawal", "ok")] * 3 + [("inquiry", "ok"), ("withdrawal", "failed")]
    ):
        t = TxnMessage(
            v=1, device_id=ids["A"], ts=at + timedelta(seconds=i), seq=100_000 + i,
            txn_id=f"{run_id}-t{i}", type=kind, amount=Decimal("100"), fee=Decimal("0"),
            result=result, duration_ms=1000,
        )  # fmt: skip
        add(t, at + timedelta(seconds=i + 1))
    counter = CounterMessage(
        v=1, branch_id="B2", date=today, financial=10, non_financial=4, source="core", ts=at
    )
    msgs.append(Accepted(counter, at, counter_topic("B2"), encode(counter)))
    with psycopg.connect(url, autocommit=True) as conn:
        upgrade(conn, timezone=tz_name)
    with psycopg.connect(url) as conn:
        upsert_inventory(conn, inventory)
        BatchWriter(conn, "test").write(msgs)

    def of(key: str) -> list[Accepted]:
        return [m for m in msgs if getattr(m.message, "device_id", "") == ids[key]]

    a_last = max(m.received_at for m in of("A"))
    c_newest = max(m.received_at for m in of("C")) - timedelta(seconds=1)
    return Fleet(url, rules, now, midnight, fault_from, c_newest, d_will, a_last, run_id)


@pytest.fixture
def fleet(database_url: str, run_id: str) -> Fleet:
    """A stored fleet of the test's own, for the tests that change or drop it."""
    return store_fleet(database_url, run_id)


@pytest.fixture(scope="module")
def read_fleet() -> Iterator[Fleet]:
    """One stored fleet for the tests that only read it; each of them scrapes it afresh
    (``scrape``), so a reading's time bounds are its own."""
    url = create_database()
    try:
        yield store_fleet(url, uuid.uuid4().hex[:8])
    finally:
        drop_database(url)


Labels = dict[str, str]


class Scrape:
    """One rendered exposition, and the refresh's time bounds (Unix seconds)."""

    def __init__(self, exporter: Exporter, registry: CollectorRegistry) -> None:
        self.before = time.time()
        exporter.refresh()
        self.after = time.time()
        self.registry = registry
        self.text = exporter.exposition().decode()

    def value(self, metric: str, /, **labels: str) -> float | None:
        return self.registry.get_sample_value(metric, labels)

    def series(self, name: str) -> list[Labels]:
        return [
            s.labels
            for family in text_string_to_metric_families(self.text)
            for s in family.samples
            if s.name == name
        ]


@pytest.fixture
def scrape(read_fleet: Fleet) -> Iterator[Scrape]:
    # A reading keeps the closed days it computed (kpi_device_days): each test reads the
    # store as it was written, nothing kept by an earlier test's reading.
    with psycopg.connect(read_fleet.url) as conn:
        conn.execute("DELETE FROM kpi_device_days")
    source = DatabaseSource(read_fleet.url, read_fleet.rules)
    registry = CollectorRegistry()
    try:
        yield Scrape(Exporter(source, registry, Targets.from_rules(read_fleet.rules)), registry)
    finally:
        source.close()


def _a_device(fleet: Fleet) -> str:
    """A registered device with stored messages (A)."""
    with psycopg.connect(fleet.url) as conn:
        row = conn.execute("SELECT id FROM devices WHERE id LIKE 'A-%' ORDER BY id").fetchone()
    assert row is not None
    return str(row[0])


def _dev(scrape: Scrape, key: str) -> str:
    return next(s["device"] for s in scrape.series("atmfleet_device_up") if s["device"][0] == key)


@pytest.mark.integration
class TestDevices:
    """Per-device series equal what was stored."""

    def test_only_devices_in_the_fleet_today_are_exported(self, scrape: Scrape) -> None:
        exported = sorted(s["device"][0] for s in scrape.series("atmfleet_device_info"))
        assert exported == list("ABCDEG")

    def test_each_device_has_one_state_as_stored(self, scrape: Scrape) -> None:
        states = {s["device"][0]: s["state"] for s in scrape.series("atmfleet_device_state")}
        assert states == {
            "A": "in_service", "G": "in_service", "B": "fault",
            "C": "offline", "D": "offline", "E": "unknown",
        }  # fmt: skip

    def test_up_follows_the_state_with_the_routing_labels(self, scrape: Scrape) -> None:
        a = _dev(scrape, "A")
        labels = dict(device=a, branch="B1", subbranch="S1", tier="2", type="atm",
                      vendor="GRG", placement="off_site")  # fmt: skip
        assert scrape.value("atmfleet_device_up", **labels) == 1
        up = {s["device"][0] for s in scrape.series("atmfleet_device_up")}
        assert up == set("ABCDEG")
        for key in "BCDE":
            [series] = [s for s in scrape.series("atmfleet_device_up") if s["device"][0] == key]
            assert scrape.value("atmfleet_device_up", **series) == 0

    def test_since_is_when_the_state_began(self, read_fleet: Fleet, scrape: Scrape) -> None:
        def since(key: str) -> float | None:
            return scrape.value(
                "atmfleet_device_state_since_timestamp_seconds", device=_dev(scrape, key)
            )

        assert since("A") == (read_fleet.midnight - timedelta(hours=1)).timestamp()
        assert since("B") == read_fleet.fault_from.timestamp()
        assert since("C") == read_fleet.c_last.timestamp()
        assert since("D") == read_fleet.d_will_received.timestamp()
        assert since("E") is None

    def test_last_seen_is_the_receive_time_of_the_newest_message(
        self, read_fleet: Fleet, scrape: Scrape
    ) -> None:
        seen = "atmfleet_device_last_seen_timestamp_seconds"
        assert (
            scrape.value(seen, device=_dev(scrape, "A")) == read_fleet.a_last_received.timestamp()
        )
        assert scrape.value(seen, device=_dev(scrape, "C")) == read_fleet.c_last.timestamp() + 1
        assert (
            scrape.value(seen, device=_dev(scrape, "D")) == read_fleet.d_will_received.timestamp()
        )
        assert scrape.value(seen, device=_dev(scrape, "E")) is None

    def test_the_scheduled_set_is_what_window_state_and_up_say(self, scrape: Scrape) -> None:
        """atmfleet_device_scheduled_down and atmfleet_branch_scheduled_devices hold what
        the recording rules used to join from the per-device families: in the window,
        not planned maintenance, not unknown (and, for the down set, not serving)."""
        state = {s["device"]: s["state"] for s in scrape.series("atmfleet_device_state")}
        window = {
            s["device"]: scrape.value("atmfleet_device_in_service_window", **s)
            for s in scrape.series("atmfleet_device_in_service_window")
        }
        scheduled = {
            d for d, st in state.items()
            if window[d] == 1 and st not in ("planned_maintenance", "unknown")
        }  # fmt: skip
        routing = {s["device"]: s for s in scrape.series("atmfleet_device_up")}
        down = [
            r for d, r in sorted(routing.items())
            if d in scheduled and scrape.value("atmfleet_device_up", **r) == 0
        ]  # fmt: skip
        assert sorted(scrape.series("atmfleet_device_scheduled_down"), key=str) == sorted(
            down, key=str
        )
        assert all(scrape.value("atmfleet_device_scheduled_down", **r) == 1 for r in down)
        per_branch: dict[tuple[str, str, str], int] = {}
        for d in scheduled:
            r = routing[d]
            key = (r["branch"], r["subbranch"], r["tier"])
            per_branch[key] = per_branch.get(key, 0) + 1
        got = {
            (s["branch"], s["subbranch"], s["tier"]): scrape.value(
                "atmfleet_branch_scheduled_devices", **s
            )
            for s in scrape.series("atmfleet_branch_scheduled_devices")
        }
        assert got == per_branch
        # The fleet holds a scheduled device down, one outside its window, one unknown.
        assert down and len(scheduled) < len(state)

    def test_the_state_carries_up_and_its_routing_labels(self, scrape: Scrape) -> None:
        """What lean leaves out is in the state: its labels are ``up``'s and the state,
        and a device serves (``up`` 1) exactly while the state is in_service or degraded."""
        up = {tuple(sorted(s.items())): scrape.value("atmfleet_device_up", **s)
              for s in scrape.series("atmfleet_device_up")}  # fmt: skip
        got = {}
        for s in scrape.series("atmfleet_device_state"):
            routing = {k: v for k, v in s.items() if k != "state"}
            got[tuple(sorted(routing.items()))] = (
                1 if s["state"] in ("in_service", "degraded") else 0
            )
        assert got == up
        assert set(got.values()) == {0, 1}

    def test_the_down_since_is_the_since_of_the_scheduled_devices_down(
        self, scrape: Scrape
    ) -> None:
        name = "atmfleet_device_scheduled_down_since_timestamp_seconds"
        state = {s["device"]: s["state"] for s in scrape.series("atmfleet_device_state")}
        expected = {}
        for s in scrape.series("atmfleet_device_scheduled_down"):
            since = scrape.value(
                "atmfleet_device_state_since_timestamp_seconds", device=s["device"]
            )
            if since is not None:
                expected[tuple(sorted({**s, "state": state[s["device"]]}.items()))] = since
        got = {tuple(sorted(s.items())): scrape.value(name, **s) for s in scrape.series(name)}
        assert got == expected
        assert len(got) == len(scrape.series("atmfleet_device_scheduled_down")) > 0

    def test_cash_ratio_only_for_devices_with_dispensing_units(self, scrape: Scrape) -> None:
        ratio = "atmfleet_device_cash_ratio"
        assert scrape.value(ratio, device=_dev(scrape, "A")) == pytest.approx(700 / 1500)
        assert [s["device"][0] for s in scrape.series(ratio)] == ["A"]

    def test_the_service_window_is_the_devices_own(self, scrape: Scrape) -> None:
        window = "atmfleet_device_in_service_window"
        assert scrape.value(window, device=_dev(scrape, "G")) == 0
        assert scrape.value(window, device=_dev(scrape, "A")) == 1


@pytest.mark.integration
class TestFleet:
    """Counts, today's times and transactions, the low-yield share, the targets."""

    def test_devices_by_state(self, scrape: Scrape) -> None:
        def n(type_: str, state: str) -> float | None:
            return scrape.value(
                "atmfleet_devices", subbranch="S1", tier="2", type=type_, state=state
            )

        assert (n("atm", "in_service"), n("crs", "fault"), n("atm", "offline")) == (2, 1, 2)
        assert n("atm", "unknown") == 1
        assert n("atm", "fault") is None  # only non-zero combinations

    def test_todays_times_per_branch(self, read_fleet: Fleet, scrape: Scrape) -> None:
        midnight = read_fleet.midnight.timestamp()
        assert scrape.value("atmfleet_day_start_timestamp_seconds") == midnight
        b1 = dict(branch="B1", subbranch="S1", tier="2")
        s1 = scrape.value("atmfleet_day_scheduled_seconds", view="business", **b1)
        a1 = scrape.value("atmfleet_day_available_seconds", view="business", **b1)
        assert s1 is not None and a1 is not None
        # A all day so far, G its 2-hour window: all available.
        assert s1 == a1
        assert scrape.before - midnight + 7200 - 1 <= s1 <= scrape.after - midnight + 7200 + 1
        b2 = dict(branch="B2", subbranch="S1", tier="2")
        s2 = scrape.value("atmfleet_day_scheduled_seconds", view="business", **b2)
        a2 = scrape.value("atmfleet_day_available_seconds", view="business", **b2)
        assert s2 is not None and a2 is not None

        # B down since its fault, C since its last heartbeat.
        def down(at: float) -> float:
            return 2 * at - read_fleet.fault_from.timestamp() - read_fleet.c_last.timestamp()

        assert down(scrape.before) - 1 <= s2 - a2 <= down(scrape.after) + 1
        assert scrape.value("atmfleet_day_unknown_seconds", **b2) == 0

    def test_todays_resource_warning_time_per_branch(
        self, read_fleet: Fleet, scrape: Scrape
    ) -> None:
        midnight = read_fleet.midnight.timestamp()
        name = "atmfleet_day_resource_warning_seconds"
        w1 = scrape.value(name, branch="B1", subbranch="S1", tier="2")
        # A's recycle unit is low all day: W = A's S so far; G sends no cash units.
        assert w1 is not None
        assert scrape.before - midnight - 1 <= w1 <= scrape.after - midnight + 1
        assert scrape.value(name, branch="B2", subbranch="S1", tier="2") == 0

    def test_todays_transactions_count_results_and_zeros(self, scrape: Scrape) -> None:
        own = "atmfleet_day_self_service_transactions"
        b1 = dict(branch="B1", subbranch="S1", tier="2")
        assert scrape.value(own, placement="off_site", financial="true", **b1) == 3
        assert scrape.value(own, placement="off_site", financial="false", **b1) == 1
        assert scrape.value(own, placement="on_site", financial="true", **b1) == 0
        assert scrape.value(own, placement="on_site", financial="false", **b1) == 0

    def test_lean_is_the_full_exposition_less_what_it_leaves_out(self, scrape: Scrape) -> None:
        """The fixture's exposition is the full one (``atmfleet serve --full``); the lean
        default of the same snapshot is it less the families and series it leaves out."""
        from exporters.metrics import render

        full = _samples(render(scrape.registry).decode())
        lean = _samples(render(scrape.registry, LEAN_LEAVES_OUT).decode())
        assert lean == {s for s in full if not _left_out(s)}
        left_out = {(s[0], dict(s[1]).get("financial")) for s in full - lean}
        assert {
            ("atmfleet_device_info", None),
            ("atmfleet_branch_info", None),
            ("atmfleet_day_self_service_transactions", "false"),
            ("atmfleet_day_teller_transactions", "false"),
        } <= left_out
        assert ("atmfleet_day_teller_transactions", "true") in {
            (s[0], dict(s[1]).get("financial")) for s in lean
        }

    def test_teller_volume_only_once_imported(self, scrape: Scrape) -> None:
        teller = "atmfleet_day_teller_transactions"
        b2 = dict(branch="B2", subbranch="S1", tier="2")
        assert scrape.value(teller, financial="true", **b2) == 10
        assert scrape.value(teller, financial="false", **b2) == 4
        assert {s["branch"] for s in scrape.series(teller)} == {"B2"}

    def test_low_yield_share_of_yesterday(self, read_fleet: Fleet, scrape: Scrape) -> None:
        group = dict(subbranch="S1", tier="2")
        evaluated = scrape.value("atmfleet_lowyield_evaluated_devices", type="atm", **group)
        low = scrape.value("atmfleet_lowyield_devices", type="atm", **group)
        # Yesterday's last hour is its one monitored day (min_monitored_days 1 here; the
        # 29 days before monitoring began are no data, not down): no transaction in it,
        # so every ATM evaluated is low-yield.
        assert evaluated is not None and evaluated >= 1
        assert low == evaluated
        yesterday = (read_fleet.midnight - timedelta(days=1)).timestamp()
        assert scrape.value("atmfleet_lowyield_date_timestamp_seconds") == yesterday

    def test_an_inventory_change_shows_at_the_next_refresh(self, fleet: Fleet) -> None:
        """The inventory is built again only when it changed: a change shows at once."""
        source = DatabaseSource(fleet.url, fleet.rules)
        registry = CollectorRegistry()
        exporter = Exporter(source, registry, Targets.from_rules(fleet.rules))
        try:
            exporter.refresh()
            first = Scrape(exporter, registry)
            device = _dev(first, "A")
            [row] = [s for s in first.series("atmfleet_device_info") if s["device"] == device]
            assert row["vendor"] == "GRG"
            with psycopg.connect(fleet.url, autocommit=True) as conn:
                conn.execute("UPDATE devices SET vendor = 'NCR' WHERE id = %s", (device,))
            again = Scrape(exporter, registry)
            [row] = [s for s in again.series("atmfleet_device_info") if s["device"] == device]
            assert row["vendor"] == "NCR"
        finally:
            source.close()

    def test_the_costlier_parts_from_a_child_process_are_the_same(self, fleet: Fleet) -> None:
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        from exporters.metrics import compute_parts

        names = ["day", "low_yield", "resource_warning"]
        now = int(time.time() * 1000)
        inline = compute_parts(fleet.url, fleet.rules, names, now)
        spawn = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(1, mp_context=spawn) as pool:
            child = pool.submit(compute_parts, fleet.url, fleet.rules, names, now).result()
        assert child == inline and all(inline[n][1] for n in names)
        # As serve runs it: every part shows once refresh_slow has run its children (the
        # low-yield share in one, today's times and resource-warning time in the other),
        # each child's parts rendered as soon as it is back.
        isolated = DatabaseSource(fleet.url, fleet.rules, background=True, isolate_slow=True)
        try:
            back: list[int] = []
            assert isolated.refresh_slow(on_part=lambda: back.append(len(back)))
            assert back == [0, 1]
            snap = isolated.read()
            assert snap.day and snap.lowyield and snap.resource_warning
            assert set(snap.computed_at) == set(names)
            assert not isolated.refresh_slow()  # nothing due again at once
        finally:
            isolated.close()

    def test_a_device_not_in_the_inventory_is_counted_apart(self, scrape: Scrape) -> None:
        assert scrape.value("atmfleet_unregistered_devices") == 1
        assert all("ghost" not in s.get("device", "") for s in scrape.series("atmfleet_device_up"))

    @pytest.mark.parametrize("lean", [False, True], ids=["full", "lean"])
    def test_the_unregistered_count_kept_between_full_reads_is_the_reference_at_each(
        self, fleet: Fleet, run_id: str, lean: bool
    ) -> None:
        """Counted in full with the full reads and from what was received in between
        (lean: from the ids the device rows' read heard from): the reference count (the
        whole history) at every read, as devices appear, register, lose their rows and
        leave the inventory."""
        source = DatabaseSource(fleet.url, fleet.rules, last_seen=not lean)
        now = datetime.now(UTC).replace(microsecond=0)

        def store(*messages: StateMessage | PresenceMessage) -> None:
            kind = {StateMessage: "state", PresenceMessage: "presence"}
            with psycopg.connect(fleet.url) as conn:
                BatchWriter(conn, "test").write(
                    [Accepted(m, now, device_topic(m.device_id, kind[type(m)]), encode(m))
                     for m in messages]
                )  # fmt: skip

        def state(device: str, seq: int) -> StateMessage:
            return StateMessage(v=1, device_id=device, ts=now - timedelta(seconds=seq),
                                seq=seq, state="in_service", heartbeat_s=HB)  # fmt: skip

        def read(rows: str) -> int:
            snap = source.read()
            assert snap.database_up and source.last_rows[0] == rows
            with psycopg.connect(fleet.url) as conn:
                assert snap.unregistered == unregistered_count(conn)
            return snap.unregistered

        late, online = f"{run_id}-late", f"{run_id}-online"
        try:
            assert read("full") == 1  # the fixture's ghost
            assert read("incremental") == 1
            store(state(late, 1), state(late, 2))  # a new one between two reads
            assert read("incremental") == 2
            store(PresenceMessage(v=1, device_id=online, status="online", ts=now,
                                  session="s1", will=False))  # fmt: skip
            assert read("incremental") == 3  # presence only
            store(state(late, 3), state(fleet_device := _a_device(fleet), 9_000))
            assert read("incremental") == 3  # more of the same and of a registered one
            with psycopg.connect(fleet.url) as conn:  # its rows gone: it leaves at once
                for table in ("state_samples", "state_runs", "presence"):
                    conn.execute(f"DELETE FROM {table} WHERE device_id = %s", (online,))
            assert read("incremental") == 2
            with psycopg.connect(fleet.url) as conn:  # registered: the inventory changed
                conn.execute(
                    "INSERT INTO devices SELECT %s, branch, type, placement, vendor, model,"
                    " commissioned, decommissioned, service_window, deposit_capable,"
                    " heartbeat_s FROM devices WHERE id = %s",
                    (late, fleet_device),
                )
            assert read("full") == 1
            assert read("incremental") == 1
            with psycopg.connect(fleet.url) as conn:  # out of the inventory, history kept
                conn.execute("DELETE FROM devices WHERE id = %s", (late,))
            assert read("full") == 2
            assert read("incremental") == 2
        finally:
            source.close()

    def test_targets_and_database_up(self, scrape: Scrape) -> None:
        assert scrape.value("atmfleet_uptime_target_ratio", tier="2") == 0.97
        assert scrape.value("atmfleet_substitution_target_ratio", placement="on_site") == 0.6
        assert scrape.value("atmfleet_lowyield_target_ratio") == 0.05
        assert scrape.value("atmfleet_exporter_database_up") == 1
        assert scrape.value("atmfleet_branch_info", branch="B3", subbranch="S1", tier="2",
                            kind="self_service_bank", name="Bank 3") == 1  # fmt: skip

    def test_promtool_finds_nothing(self, scrape: Scrape) -> None:
        promtool = shutil.which("promtool")
        if promtool is None:
            pytest.skip("promtool is not installed (Debian package prometheus)")
        result = subprocess.run(
            [promtool, "check", "metrics"], input=scrape.text, capture_output=True, text=True,
            timeout=60, check=False,
        )  # fmt: skip
        assert result.returncode == 0 and not result.stdout.strip(), result.stdout + result.stderr


@pytest.mark.integration
class TestDatabaseDown:
    """Without its database the endpoint still answers: database_up 0 and the targets."""

    def test_a_database_gone_after_a_good_read(self, fleet: Fleet) -> None:
        source = DatabaseSource(fleet.url, fleet.rules)
        registry = CollectorRegistry()
        exporter = Exporter(source, registry, Targets.from_rules(fleet.rules))
        exporter.refresh()
        assert registry.get_sample_value("atmfleet_exporter_database_up") == 1
        server = make_server(exporter, "127.0.0.1", 0)
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        try:
            drop_database(fleet.url)
            snap = exporter.refresh()
            assert not snap.database_up
            body = urlopen(f"http://127.0.0.1:{server.server_port}/metrics", timeout=10).read()
        finally:
            server.shutdown()
            server.server_close()
            source.close()
        names = {f.name for f in text_string_to_metric_families(body.decode())}
        assert names == {
            "atmfleet_uptime_target_ratio",
            "atmfleet_substitution_target_ratio",
            "atmfleet_lowyield_target_ratio",
            "atmfleet_exporter_database_up",
        }
        assert "atmfleet_exporter_database_up 0.0" in body.decode()


class TestAStuckRefresh:
    """A refresh that never returns (a database that stops answering) does not leave the
    last device series on show: past ``stale_after_s`` the answer is "database down"."""

    def test_an_old_rendering_is_replaced_by_database_down(self) -> None:
        now = [0.0]
        targets = Targets({"1": 0.98}, 0.6, 0.6, 0.05)
        row = DeviceRow("D1", "B1", "S1", "1", "atm", "GRG", "off_site", "H68N",
                        "in_service", 0.0, 0.0, None, True)  # fmt: skip
        snap = Snapshot(targets, True, devices=[row])
        registry = CollectorRegistry()
        exporter = Exporter(_Fixed(snap), registry, targets, stale_after_s=90, clock=lambda: now[0])
        exporter.refresh()
        now[0] = 90.0
        assert b'atmfleet_device_up{branch="B1"' in exporter.exposition()
        now[0] = 91.0
        text = exporter.exposition().decode()
        assert "atmfleet_device" not in text
        assert "atmfleet_exporter_database_up 0.0" in text
        assert _samples(gzip.decompress(exporter.exposition(gzipped=True)).decode()) == _samples(
            text
        )


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@pytest.mark.integration
class TestCommand:
    """``atmfleet serve`` as a user runs it."""

    def test_serves_metrics_and_stops_cleanly_on_sigterm(
        self, fleet: Fleet, tmp_path: Path
    ) -> None:
        rules = tmp_path / "rules.yaml"
        rules.write_text(f"timezone: {fleet.rules.timezone}\n")
        env = {**os.environ, "ATMFLEET_DATABASE_URL": fleet.url, "ATMFLEET_RULES_FILE": str(rules)}
        port = _port()
        proc = subprocess.Popen(
            [sys.executable, "-m", "app.cli", "serve", "--host", "127.0.0.1",
             "--port", str(port), "--refresh", "1"],
            env=env, stderr=subprocess.PIPE,
        )  # fmt: skip
        try:
            deadline = time.monotonic() + 60
            while True:  # the port opens at once; the device rows come with the first read
                try:
                    body = urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
                    if "atmfleet_exporter_database_up 1.0" in body:
                        break
                except OSError:
                    pass
                assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
                assert time.monotonic() < deadline, "atmfleet serve did not start"
                time.sleep(0.2)
            assert sum(s.startswith("atmfleet_device_state{") for s in body.splitlines()) == 6
            # Lean by default: what no shipped rule, alert or dashboard reads is not sent.
            assert "\natmfleet_device_info{" not in body
            assert 'financial="false"' not in body and 'financial="true"' in body
        finally:
            proc.send_signal(signal.SIGTERM)
            code = proc.wait(timeout=20)
        assert code == 0

    def test_refuses_to_start_without_a_database_url(self, tmp_path: Path) -> None:
        env = {k: v for k, v in os.environ.items() if k != "ATMFLEET_DATABASE_URL"}
        env["ATMFLEET_SECRETS_DIR"] = str(tmp_path)
        result = subprocess.run(
            [sys.executable, "-m", "app.cli", "serve"],
            env=env, capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
        assert result.returncode == 2
        assert "ATMFLEET_DATABASE_URL is not set" in result.stderr


def _blocked_on_a_lock(conn: psycopg.Connection, application: str) -> int:
    """How many backends of ``application`` wait for a lock (a child's query blocked)."""
    row = conn.execute(
        "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
        " AND application_name = %s AND wait_event_type = 'Lock'",
        (application,),
    ).fetchone()
    return int(row[0]) if row else 0


def _children() -> list[str]:
    import multiprocessing

    return [p.name for p in multiprocessing.active_children() if p.name == "atmfleet-child"]


@pytest.mark.integration
class TestClose:
    """Serving.close stops the children computing the costlier parts and the forecast."""

    def test_close_ends_the_children_blocked_in_a_query_and_their_threads(
        self, fleet: Fleet
    ) -> None:
        rules = parse_rules(f"timezone: {fleet.rules.timezone}\ncash: {{forecast_every_s: 10}}\n")
        # One read of the device rows, then none for the test's length: what blocks
        # is a child's, never the refresh's.
        serving = start_serving(fleet.url, rules, port=0, refresh_s=3600, day_refresh_s=1)
        closed = threading.Event()
        try:
            assert serving.wait_refreshed(120), "no first refresh"  # a hang guard only
            with (
                psycopg.connect(fleet.url) as lock,
                psycopg.connect(fleet.url, autocommit=True) as watch,
            ):
                # Every child from now on blocks on its first read of the state runs
                # (today's times) or of the transactions (the forecast) until this
                # transaction ends.
                lock.execute("LOCK TABLE state_runs, transactions IN ACCESS EXCLUSIVE MODE")
                deadline = time.monotonic() + 120  # a hang guard only
                while not (
                    _blocked_on_a_lock(watch, "atmfleet-serve")
                    and _blocked_on_a_lock(watch, "atmfleet-serve-cash")
                ):
                    assert time.monotonic() < deadline, "no child blocked on the lock"
                    time.sleep(0.1)
                closing = threading.Thread(target=lambda: (serving.close(), closed.set()))
                closing.start()
                # Returns while the lock is still held: the children were not waited for.
                assert closed.wait(120), "close did not return"  # a hang guard only
                assert not _children()
                assert not [t.name for t in serving.threads if t.is_alive()]
                lock.rollback()
        finally:
            if not closed.is_set():
                serving.close()


class TestStartUpChecks:
    def test_a_heartbeat_timeout_below_the_run_gap_is_refused_naming_the_field(self) -> None:
        from atmfleet.errors import ConfigError

        rules = parse_rules("heartbeat: {timeout_factor: 1.2}\n")
        with pytest.raises(ConfigError, match=r"heartbeat.timeout_factor: 1.2 .* allowed: >= 1.5"):
            DatabaseSource("postgresql://127.0.0.1/none", rules)


def _mentions(text: str, name: str) -> list[str]:
    """The selector (or "") after each mention of the metric ``name`` in ``text`` (not of
    a recording rule named after it, e.g. ``subbranch:atmfleet_device_info:count``)."""
    return re.findall(rf"(?<![\w:]){name}(?![\w:])(\{{[^}}]*\}})?", text)


def test_lean_leaves_out_only_what_no_rule_or_dashboard_reads() -> None:
    """No shipped rule, alert or dashboard names a family lean leaves out, and each one
    reading a family lean keeps part of selects the part kept (``financial="true"``)."""
    root = Path(__file__).resolve().parent.parent
    read = sorted((root / "exporters" / "prometheus").glob("*.rules.yml"))
    read += [p for p in (root / "dashboards").rglob("*") if p.suffix in (".json", ".py", ".yml")]
    assert len(read) > 2
    whole = LEAN_LEAVES_OUT - LEAN_SERIES_LEAVES_OUT
    for path in read:
        text = path.read_text(encoding="utf-8").replace('\\"', '"')  # JSON-escaped quotes
        assert not [name for name in whole if _mentions(text, name)], path
        for name, (label, value) in LEAN_SERIES.items():
            for selector in _mentions(text, name):
                kept = re.search(rf'\b{label}="([^"]*)"', selector)
                assert kept and kept[1] != value, (path, name, selector)
