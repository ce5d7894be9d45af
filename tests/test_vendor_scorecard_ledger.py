"""The vendor scorecard from the store equals the simulator's incident truth, exactly.

Three simulated days of a small fleet with frequent faults go through the real
PostgreSQL store (the collector's decoder and writer) and the incident engine; the duty
operator replays the ledger's dispatches through ``incidents/service.py`` (acknowledge,
dispatch at the ledger's dispatch time); the technicians' arrivals and repairs reach the
engine only as the devices' own messages. ``kpi vendors`` then shows, per vendor and per
model, the figures computed from the ledger alone (simulator/truth.py): incidents,
response and repair median and p90 to the millisecond, breaches, repeats, open ones.

The fleet is kept to what the comparison is about: every device 24x7 (an outage outside
a service window opens no incident), no power cuts, network outages, link drops or
planned maintenance (they make incidents of other classes, or hide a fault), short
cash visits (a visit never outlasts its own debounce), no deposit-module fault that
leaves a CRS available (degraded: no outage, but its repair visit is maintenance mode);
the contract counts calendar hours from the outage start.
"""

from __future__ import annotations

import sys
from datetime import UTC, date, datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import psycopg
import pytest

from atmfleet.inventory import Inventory
from atmfleet.store.migrate import upgrade
from rules.config import SlaContract, SlaRules, load_rules
from rules.feed import Feed
from rules.report import Context, Scope, vendors_report
from rules.timeline import ms
from simulator.config import make_config
from simulator.engine import generate
from simulator.fleet import generate_inventory
from simulator.ledger import simulate

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
from incident_world import (
    World,
    ledger_incidents,
    ledger_scorecard,
    scorecard_rows,
)

pytestmark = pytest.mark.integration
pytest.importorskip("incidents.engine", reason="the incident engine (incidents/engine.py)")

TZ = ZoneInfo("Asia/Shanghai")
FIRST, LAST = date(2026, 11, 20), date(2026, 11, 22)
START = datetime(2026, 11, 20, tzinfo=TZ).astimezone(UTC)
END = datetime(2026, 11, 23, tzinfo=TZ).astimezone(UTC)
SEED = 5
HB = 300
CONFIG = make_config(
    {
        "vendors": {v: {"mtbf_days": 2.0} for v in ("GRG", "Yihua", "KingTeller", "Hitachi",
                                                     "NCR", "DieboldNixdorf")},
        "incidents": {"branch_power_cuts_per_year": 0, "subbranch_network_outages_per_year": 0,
                      "device_link_drops_per_year": 0, "planned_every_days": 3650},
        "cash": {"supervisor_min": 10},
        "degraded_share": 0,
    }
)  # fmt: skip
RULES = load_rules().model_copy(
    update={
        "sla": SlaRules(
            contracts=(
                SlaContract(name="test", response_hours=2, repair_hours=4,
                            repair_from="started", clock="calendar"),
            )
        )
    }
)  # fmt: skip


def fleet() -> Inventory:
    inv = generate_inventory(60, SEED, prefix="vs-", config=CONFIG)
    devices = tuple(d.model_copy(update={"service_window": "24x7"}) for d in inv.devices)
    return Inventory(
        subbranches=inv.subbranches, branches=inv.branches, devices=devices,
        maintainers=inv.maintainers,
    )  # fmt: skip


def test_the_scorecard_from_the_store_equals_the_ledger(database_url: str) -> None:
    inventory = fleet()
    truth_run = simulate(inventory, CONFIG, SEED, START, END, heartbeat_s=HB, keep_emissions=False)
    ledger = truth_run.ledger
    with psycopg.connect(database_url, autocommit=True) as conn:
        upgrade(conn, timezone=RULES.timezone)
    with psycopg.connect(database_url) as conn:
        world = World(conn, inventory, generate(inventory, CONFIG, SEED, START, END,
                                                heartbeat_s=HB), ledger, RULES)  # fmt: skip
        world.setup()
        world.play()
        assert world.missed == []
        feed = Feed(conn, RULES)
        ctx = Context.make(feed, feed.inventory(), Scope("fleet", "fleet"), FIRST, LAST,
                           ms(datetime.now(UTC)))  # fmt: skip
        got = scorecard_rows(vendors_report(ctx).rows)

    truth = ledger_incidents(ledger, RULES)
    assert ledger.end is not None
    expected = ledger_scorecard(truth, inventory, RULES, ledger.end - 1, (ms(START), ms(END)))
    # The stretch exercised what the comparison is about.
    assert len(truth) >= 30 and world.dispatched >= 20
    assert sum(g["response_breaches"] for k, g in expected.items() if " " not in k) > 0
    assert sum(g["repair_breaches"] for k, g in expected.items() if " " not in k) > 0
    for group, figures in expected.items():
        assert got[group] == figures, group
    # A vendor or model without incidents shows them as none, every time as no data.
    for group, row in got.items():
        if group not in expected:
            assert row["incidents"] == 0 and row["response_median_ms"] is None, group
