"""``atmfleet serve``'s costlier parts computed the fast way equal the reference, exactly.

- today's times per branch (:func:`exporters.metrics.day_times_columns`: the day's
  columns, no inventory, no object per device) equal
  :func:`exporters.metrics.day_times_reference` (the report layer's 开机率 of every
  device, summed per branch), float for float;
- today's resource-warning time per branch (:func:`exporters.resource_metrics.
  day_warning_read`: W computed only for the devices that reported a warning) equals
  :func:`exporters.resource_metrics.day_warning` (W of every device of the fleet);
- the parts as a child process computes them (:func:`exporters.metrics.compute_parts`)
  are those.

Two stores: tests/test_kpi_resource.py's hand-made warnings (across midnight, inside a
window, across a collector outage, under planned maintenance, while down, while silent,
two kinds at once, no S at all, a state that is a warning) with devices added that
warn but are out of the fleet (decommissioned before the day, commissioned after it),
a branch of another tier whose devices never warn and one never heard from; and
tests/test_kpi_fast_path.py's random fleet (every state, silent gaps, presence, power
cuts, approved stops, a collector outage, devices in and out of the fleet). Each at an
instant inside the day, at its end and when it is long closed.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import date, timedelta
from typing import Any

import psycopg
import pytest

from atmfleet.store.writer import BatchWriter
from exporters.metrics import compute_parts, day_times_columns, day_times_reference
from exporters.resource_metrics import day_warning, day_warning_read
from rules.config import load_rules
from rules.feed import Feed
from rules.fleet import fleet_devices
from rules.report import Context, Scope
from rules.uptime import day_span
from tests import test_kpi_fast_path as fast_path
from tests import test_kpi_resource as hand

pytestmark = pytest.mark.integration

RULES = load_rules()
H = 3_600_000

#: Devices added to the hand-made store: (id, branch, commissioned, decommissioned).
EXTRA = (
    ("GONE", "B1", date(2025, 1, 1), hand.DAY - timedelta(days=1)),  # warns, out of the fleet
    ("LATE", "B2", hand.DAY + timedelta(days=1), None),  # warns, not in the fleet yet
    ("LEFT", "B2", date(2025, 1, 1), hand.DAY),  # warns; leaves the fleet on the day
    ("QUIET", "B4", date(2025, 1, 1), None),  # never warns
    ("NEVER", "B4", date(2025, 1, 1), None),  # never heard from
)


@pytest.fixture(scope="module")
def warnings_store() -> Iterator[str]:
    from atmfleet.store.migrate import upgrade
    from tests.conftest import create_database, drop_database

    url = create_database()
    try:
        with psycopg.connect(url, autocommit=True) as conn:
            upgrade(conn)
        hand.load(url)
        with psycopg.connect(url) as conn:
            conn.execute("INSERT INTO subbranches VALUES ('S4', '包头', '3')")
            conn.execute(
                "INSERT INTO branches (id, name, subbranch, kind) VALUES ('B4', 'b4', 'S4', 'outlet')"
            )
            for ident, branch, since, until in EXTRA:
                conn.execute(
                    "INSERT INTO devices (id, branch, type, placement, vendor, model,"
                    " commissioned, decommissioned, service_window, deposit_capable,"
                    " heartbeat_s) VALUES (%s, %s, 'atm', 'off_site', 'GRG', 'H22N', %s, %s,"
                    " NULL, false, 300)",
                    (ident, branch, since, until),
                )
            day = hand.DAY
            low = [(hand.at(day, 3), hand.at(day, 15))]
            BatchWriter(conn, "test").write(
                [
                    *hand.scenario("GONE", cash_low=low),
                    *hand.scenario("LATE", cash_low=low),
                    *hand.scenario("LEFT", cash_low=low),
                    *hand.scenario("QUIET"),
                ]
            )
            conn.commit()
        yield url
    finally:
        drop_database(url)


@pytest.fixture(params=["postgres", pytest.param("timescale", marks=pytest.mark.timescale)])
def random_fleet(request: pytest.FixtureRequest) -> Iterator[psycopg.Connection]:
    yield from fast_path.filled(request, n=60)


def _instants(day: date) -> list[int]:
    lo = day_span(day, RULES.tz)[0]
    return [lo + 15 * H + 17, lo + 24 * H, lo + 72 * H]


def _exact(values: dict[Any, Any]) -> list[tuple[Any, str]]:
    """Sorted items with each value's repr (0.0 and -0.0 apart)."""
    return sorted((k, repr(v)) for k, v in values.items())


def _both_ways(conn: psycopg.Connection, day: date, horizon: int) -> tuple[Any, Any, Any, Any]:
    feed = Feed(conn, RULES)
    inventory = feed.inventory()
    devices = fleet_devices(inventory.devices, day)
    want_day = day_times_reference(feed, inventory, devices, day, horizon)
    conn.rollback()
    got_day = day_times_columns(feed, day, horizon)
    conn.rollback()
    ctx = Context.make(feed, inventory, Scope("fleet", "fleet"), day, day, horizon)
    want_w = day_warning(ctx, devices, day)
    conn.rollback()
    got_w = day_warning_read(Feed(conn, RULES), day, horizon)
    conn.rollback()
    return want_day, got_day, want_w, got_w


def test_hand_made_warnings_equal_the_reference(warnings_store: str) -> None:
    with psycopg.connect(warnings_store) as conn:
        for horizon in _instants(hand.DAY):
            want_day, got_day, want_w, got_w = _both_ways(conn, hand.DAY, horizon)
            assert got_day is not None
            assert _exact(got_day) == _exact(want_day)
            assert _exact(got_w) == _exact(want_w)
            assert ("B4", "S4", "3") in got_w and got_w["B4", "S4", "3"] == 0.0
            assert got_w["B2", "S2", "2"] > 0 and got_w["B1", "S1", "2"] > 0


def test_a_random_fleet_equals_the_reference(random_fleet: psycopg.Connection) -> None:
    conn = random_fleet
    for outage in (True, False):
        if not outage:
            fast_path_without_outages(conn)
        for horizon in _instants(fast_path.DAY):
            want_day, got_day, want_w, got_w = _both_ways(conn, fast_path.DAY, horizon)
            assert got_day is not None
            assert _exact(got_day) == _exact(want_day)
            assert any(t.scheduled for t in got_day.values())
            assert _exact(got_w) == _exact(want_w)


def fast_path_without_outages(conn: psycopg.Connection) -> None:
    conn.execute("DELETE FROM collector_outages")
    conn.commit()


def test_the_child_computes_the_same_parts(warnings_store: str) -> None:
    horizon = _instants(hand.DAY)[0]
    with psycopg.connect(warnings_store) as conn:
        want_day, _, want_w, _ = _both_ways(conn, hand.DAY, horizon)
    got = compute_parts(warnings_store, RULES, ["day", "resource_warning"], horizon)
    assert got["day"][0] == got["resource_warning"][0] == hand.DAY
    assert _exact(got["day"][1]) == _exact(want_day)
    assert _exact(got["resource_warning"][1]) == _exact(want_w)
