"""End to end: simulator ground truth -> Mosquitto -> collector -> store -> KPI feed.

A small fleet's simulated day (power cuts, sub-branch network outages with
store-and-forward backlogs, link drops announced by the gateway) is published through the
shared broker to a real collector. The indicators read back from the store equal the ones
the simulator's ledger derives from what it sent: downtime by cause to the millisecond,
transactions to the unit.
"""

from __future__ import annotations

from datetime import UTC, datetime, time, timedelta
from zoneinfo import ZoneInfo

import psycopg
import pytest

from atmfleet.settings import Settings
from atmfleet.store.inventory import upsert_inventory
from atmfleet.store.migrate import upgrade
from rules.config import load_rules
from rules.feed import Feed, uptime_for
from rules.labels import Label
from rules.timeline import Interval, ms
from rules.uptime import UptimePolicy, WindowSpans, daily_uptime
from simulator.config import make_config
from simulator.engine import generate
from simulator.fleet import generate_inventory
from simulator.ledger import Ledger
from simulator.publisher import FleetPublisher, Pacing
from tests.test_collector_service import running, settings_for, wait_until

pytestmark = [pytest.mark.integration, pytest.mark.slow]

RULES = load_rules()
SEED = 21
HB = 300  # heartbeat of the simulated fleet: fewer messages for the same day
PUBLISH_SECONDS = 3  # the simulated day is replayed in about this long


def stored_counts(url: str, prefix: str) -> dict[str, int]:
    """Rows of our devices (the shared broker also delivers others' retained messages)."""
    with psycopg.connect(url) as conn:
        row = conn.execute(
            "SELECT (SELECT count(*) FROM state_samples WHERE device_id LIKE %(p)s),"
            " (SELECT count(*) FROM events WHERE device_id LIKE %(p)s),"
            " (SELECT count(*) FROM transactions WHERE device_id LIKE %(p)s),"
            " (SELECT count(*) FROM presence WHERE device_id LIKE %(p)s)",
            {"p": prefix + "%"},
        ).fetchone()
    assert row is not None
    return dict(zip(("state", "event", "txn", "presence"), row, strict=True))


def test_kpis_from_the_store_equal_the_simulators_ground_truth(
    database_url: str, mqtt_url: str, run_id: str
) -> None:
    tz = ZoneInfo(RULES.timezone)
    day = (datetime.now(tz) - timedelta(days=3)).date()
    # One heartbeat before the day: every device comes up within a heartbeat of the
    # simulation's start, so the whole fleet is up when the day begins.
    start = datetime.combine(day, time(0), tzinfo=tz).astimezone(UTC) - timedelta(seconds=HB)
    end = start + timedelta(days=1, hours=2)  # the day, and what follows it
    config = make_config(
        {
            "incidents": {
                "branch_power_cuts_per_year": 1000,  # a cut in the day for any device ids
                "subbranch_network_outages_per_year": 400,
                "device_link_drops_per_year": 600,
            }
        }
    )
    prefix = f"k{run_id}"
    inventory = generate_inventory(14, SEED, prefix=prefix, config=config)
    with psycopg.connect(database_url, autocommit=True) as conn:
        upgrade(conn, timezone=RULES.timezone)
    with psycopg.connect(database_url) as conn:
        upsert_inventory(conn, inventory)

    emissions = list(generate(inventory, config, SEED, start, end, heartbeat_s=HB))
    ledger = Ledger(inventory, config, SEED, heartbeat_s=HB)
    branch = {d.id: d.branch for d in inventory.devices}
    speed = (end - start).total_seconds() / PUBLISH_SECONDS
    with running(settings_for(mqtt_url, database_url), f"kpi-e2e-{run_id}"):
        publisher = FleetPublisher(
            Settings(mqtt_url=mqtt_url), per_device=False, pool_size=2,
            client_prefix=f"kpi-e2e-{run_id}",
        )  # fmt: skip
        stats = publisher.run(
            emissions,
            branch_of=branch.__getitem__,
            pacing=Pacing(ms(start), speed),
            on_sent=ledger.record,
        )
        assert stats.complete
        expected = {k: ledger.counts[k] for k in ("state", "event", "txn", "presence")}
        wait_until(
            lambda: stored_counts(database_url, prefix) == expected,
            timeout=60,
            what=f"rows == what the simulator sent {expected}",
        )
    ledger.finish(ms(end))

    with psycopg.connect(database_url) as conn:
        feed = Feed(conn, RULES)
        stored = feed.inventory()
        got = uptime_for(feed, stored.devices, day, day, horizon=ms(end))
        volumes = feed.txn_days(day, day)

    windows, policy = WindowSpans(tz), UptimePolicy.from_rules(RULES)
    seen: set[Label] = set()
    down_in_day: set[Label] = set()
    for device in stored.devices:
        truth: list[Interval] = []
        for iv in ledger.intervals_of(device.id):
            label = Label(iv.cause)
            seen.add(label)
            if truth and truth[-1][2] is label and truth[-1][1] == iv.start:
                truth[-1] = (truth[-1][0], iv.end, label)
            else:
                truth.append((iv.start, iv.end, label))
        expected_day = daily_uptime(device, truth, [day], RULES, windows, policy, ms(end))[day]
        mine = got.per_device[device.id][day]
        down_in_day |= {c for c, v in mine.down_by_cause().items() if v}
        assert mine.down_by_cause() == expected_day.down_by_cause(), device.id
        assert (mine.available_ms, mine.scheduled_ms) == (
            expected_day.available_ms,
            expected_day.scheduled_ms,
        ), device.id
    assert {Label.COMMUNICATIONS, Label.POWER} <= seen
    assert len(down_in_day) >= 3, down_in_day  # the day itself had varied downtime

    truth_txn = {
        d: (fin, ok, fee) for (d, on), (fin, ok, _all, fee) in ledger.txn_days.items()
        if on == day.isoformat() and ok
    }  # fmt: skip
    mine_txn = {
        d: (t[day].financial, t[day].financial + t[day].non_financial, int(t[day].fee * 100))
        for d, t in volumes.items()
        # our devices only: the shared broker also carries other runs' fleets
        if d.startswith(prefix) and day in t and (t[day].financial or t[day].non_financial)
    }
    assert mine_txn == truth_txn
    assert sum(v[0] for v in truth_txn.values()) > 100
