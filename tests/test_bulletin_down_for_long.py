"""The daily bulletin's devices down for more than 24 h, from the candidates the store
lists without a timeline (:meth:`rules.feed.Feed.up_between`), equal every device's
answer (each one's two days' timeline built) and the answer from the day's timelines
(the way before it), on plain PostgreSQL and TimescaleDB, at a horizon inside the day,
at its very end and long after it, without a collector outage, with one the day before
and with one inside the last 24 h.

The fleet: tests/test_kpi_fast_path.py's ``fill`` (random runs of every state, silent
gaps, presence, power cuts, a device never heard from, devices commissioned on the day
and decommissioned, approved stops of a device and of a branch, a collector outage),
plus devices made for the edges: down exactly 24 h at the day's end and 1 ms more, down
since the evening before (across midnight), silent since the day before, never heard
from, reporting in service inside a power cut, down but inside a registered stop for an
hour, decommissioned that day or the next, in service for a moment inside a longer fault run (the
sweep gives the fault), in service for less than a millisecond or for one sample, and
in service up to a minute after or two minutes before the last 24 h began.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from datetime import datetime, timedelta

import psycopg
import pytest

from atmfleet.inventory import Device
from atmfleet.store.migrate import upgrade
from exporters.bulletin import build
from rules.config import load_rules
from rules.feed import Feed, timelines
from rules.report import Context
from rules.timeline import from_ms
from rules.uptime import day_span
from tests.test_kpi_fast_path import DAY, fill

pytestmark = pytest.mark.integration

RULES = load_rules()
H = 3_600_000
MIN = 60_000
LO, HI = day_span(DAY, RULES.tz)
PREV = LO - 24 * H


def _run(
    conn: psycopg.Connection, dev: str, a: datetime, b: datetime, state: str, seq: int
) -> None:
    conn.execute(
        "INSERT INTO state_runs VALUES (%s, %s, %s, %s, %s, %s, 60, 1)",
        (dev, a, seq, b, seq, state),
    )


#: Device -> its runs (start, end, state) and what else is stored for it.
EDGES: dict[str, list[tuple[int, int, str]]] = {
    # down exactly 24 h at the day's end (not listed), and 1 ms more (listed)
    "E00": [(PREV - 3 * H, LO, "in_service"), (LO, HI + 2 * H, "fault")],
    "E01": [(PREV - 3 * H, LO - 1, "in_service"), (LO - 1, HI + 2 * H, "fault")],
    # down since 20:00 the day before, across midnight
    "E02": [(PREV, PREV + 20 * H, "in_service"), (PREV + 20 * H, HI + H, "cash_out")],
    # silent since noon the day before (nothing after)
    "E03": [(PREV - 2 * H, PREV + 12 * H, "in_service")],
    # E04: never heard from (no run)
    # in service throughout, inside a power cut from the day before to after the day
    "E05": [(PREV - 2 * H, HI + 2 * H, "in_service")],
    # fault throughout, but a registered stop of an hour inside the day
    "E06": [(PREV - 2 * H, HI + 2 * H, "fault")],
    # fault throughout, decommissioned that day (out of the fleet that day) and the day
    # after (in the fleet to the day's end)
    "E07": [(PREV - 2 * H, HI + 2 * H, "fault")],
    "E14": [(PREV - 2 * H, HI + 2 * H, "fault")],
    # in service an hour inside a longer fault run: the sweep gives the fault
    "E08": [(PREV - 2 * H, HI + 2 * H, "fault"), (LO + 10 * H, LO + 11 * H, "in_service")],
    # one in-service sample inside the day between fault runs (a moment of heartbeat gap
    # with its label), and a run of less than a millisecond (sub-millisecond timestamps)
    "E09": [
        (PREV - 2 * H, LO + 12 * H, "fault"),
        (LO + 12 * H + 1000, LO + 12 * H + 1000, "in_service"),
        (LO + 12 * H + 2000, HI + 2 * H, "fault"),
    ],
    # in service up to a minute after the last 24 h of a closed day began / 2 min before
    "E10": [(PREV - 2 * H, LO + MIN, "in_service"), (LO + MIN, HI + 2 * H, "supervisor")],
    "E11": [(PREV - 2 * H, LO - 2 * MIN, "in_service")],
    # closed and planned (labels outside the downtime causes)
    "E12": [
        (PREV - 2 * H, LO + 5 * H, "fault"),
        (LO + 5 * H, LO + 6 * H, "closed"),
        (LO + 6 * H, HI + 2 * H, "fault"),
    ],
    "E13": [
        (PREV - 2 * H, LO + 5 * H, "fault"),
        (LO + 5 * H, LO + 6 * H, "planned_maintenance"),
        (LO + 6 * H, HI + 2 * H, "comms_down"),
    ],
}
EDGE_IDS = [*EDGES, "E04"]


def fill_edges(conn: psycopg.Connection) -> None:
    for dev in sorted(EDGE_IDS):
        gone = {"E07": DAY, "E14": DAY + timedelta(days=1)}.get(dev)
        conn.execute(
            "INSERT INTO devices (id, branch, type, placement, vendor, model, commissioned,"
            " decommissioned, service_window, deposit_capable, heartbeat_s)"
            " VALUES (%s, 'B1', 'atm', 'off_site', 'V', 'M', %s, %s, '24x7', false, 60)",
            (dev, DAY - timedelta(days=400), gone),
        )
    for dev, runs in EDGES.items():
        for seq, (a, b, state) in enumerate(runs):
            _run(conn, dev, from_ms(a), from_ms(b), state, seq)
    # E09's sub-millisecond run: 0.3 ms to 0.8 ms after a whole millisecond
    t = from_ms(LO + 18 * H)
    us = timedelta(microseconds=1)
    _run(conn, "E09", t + 300 * us, t + 800 * us, "in_service", 9)
    conn.execute(
        "INSERT INTO events (device_id, seq, ts, received_at, event, severity, since)"
        " VALUES ('E05', 1, %s, %s, 'power_restored', 'info', %s)",
        (from_ms(HI + H), from_ms(HI + H), from_ms(PREV + 6 * H)),
    )
    conn.execute(
        "INSERT INTO planned_stops (device_id, branch_id, starts_at, ends_at, reason,"
        " requester, approver, status, approved_at)"
        " VALUES ('E06', NULL, %s, %s, 'works', 'r', 'a', 'approved', now())",
        (from_ms(LO + 8 * H), from_ms(LO + 9 * H)),
    )
    conn.commit()


@pytest.fixture
def conn(flavour_url: str) -> Iterator[psycopg.Connection]:
    url = flavour_url
    with psycopg.connect(url, autocommit=True) as c:
        upgrade(c, timezone=RULES.timezone)
    with psycopg.connect(url) as c:
        fill(c, random.Random(16), n=40)
        fill_edges(c)
        yield c


def day_timeline_candidates(ctx: Context) -> list[Device]:
    """The way before: the devices down without a break over the day's last 24 h (from
    its start when shorter) in the day's timelines."""
    end = build._day_end(ctx)
    start = max(LO, end - build.LONG_DOWN_MS)
    lines = ctx.uptime_days().timelines
    return [d for d in ctx.devices if build.down_throughout(lines.get(d.id, ()), start, end)]


def set_outage(conn: psycopg.Connection, span: tuple[int, int] | None) -> None:
    conn.execute("DELETE FROM collector_outages")
    if span is not None:
        conn.execute(
            "INSERT INTO collector_outages (started_at, ended_at, detected_by)"
            " VALUES (%s, %s, 'test')",
            (from_ms(span[0]), from_ms(span[1])),
        )
    conn.commit()


OUTAGES = {"none": None, "day before": (PREV + 3 * H, PREV + 4 * H),
           "last 24 h": (LO + 15 * H, LO + 15 * H + 20 * MIN)}  # fmt: skip
#: Listed on the closed day without an outage in its last 24 h.
LISTED = {"E01", "E02", "E03", "E04", "E05", "E08", "E11", "E14"}


def test_the_candidates_give_every_device_s_answer(conn: psycopg.Connection) -> None:
    for outage, span in OUTAGES.items():
        set_outage(conn, span)
        check(Feed(conn, RULES), outage)


def check(feed: Feed, outage: str) -> None:
    inventory = feed.inventory()
    now = feed.now_ms()
    for horizon in (LO + 10 * H + 17, HI, now):
        ctx = build.daily_context(feed, inventory, DAY, horizon)
        candidates = build.long_down_candidates(ctx)
        got = build.down_for_long(ctx, candidates)
        assert got == build.down_for_long(ctx), (outage, horizon)  # every device's two days
        assert got == build.down_for_long(ctx, day_timeline_candidates(ctx)), (outage, horizon)
        # A superset of the devices down without a break over the last 24 h (long down
        # or not) and no more than those without an in-service moment in them.
        end = build._day_end(ctx)
        lines = timelines(feed, ctx.devices, PREV, HI, horizon)
        down = {d.id for d in ctx.devices if build.down_throughout(lines[d.id], end - 24 * H, end)}
        ids = {d.id for d in candidates}
        assert down <= ids
        assert 2 * len(ids) < len(ctx.devices)  # down_for_long reads only their runs
        # Only the candidates' runs and inputs read: the same timelines.
        few = timelines(feed, candidates, PREV, HI, horizon, read_only_these=True)
        assert few == {d.id: lines[d.id] for d in candidates}
        if horizon != now:
            continue
        listed = {d for d in got if d.startswith("E")}
        if outage == "last 24 h":
            assert got == {}
        else:
            assert listed == LISTED
            # down, but not for long (E09: a moment between its fault runs available)
            assert {"E00", "E06", "E09"} <= ids
            # seen in service, closed or planned in the last 24 h: not candidates
            assert not {"E10", "E12", "E13"} & ids
            assert got["E01"][:2] == (LO - 1, 24 * H + 1)
            assert got["E02"][1] == 28 * H
            assert got["E05"][1] == 42 * H  # in service inside the power cut
    in_fleet = {d.id for d in build.daily_context(feed, inventory, DAY, now).devices}
    assert "E07" not in in_fleet and "E14" in in_fleet


def add_warnings(conn: psycopg.Connection) -> None:
    """Cash-out and low-cash messages of a few devices inside the day (warning spans)."""
    rows = [
        (dev, 900 + k, from_ms(LO + (6 + 2 * k) * H), state, units)
        for k, (dev, state, units) in enumerate(
            (("D000", "cash_out", "[]"), ("D007", "in_service", '[{"type": "cash", "status":'
             ' "low"}]'), ("D007", "in_service", "[]"), ("E05", "cash_out", "[]"))
        )
    ]  # fmt: skip
    with conn.cursor() as cur:
        cur.executemany(
            "INSERT INTO state_samples VALUES (%s, %s, %s, %s, %s, 60, '{}', %s, '{}')",
            [(d, s, t, t, st, u) for d, s, t, st, u in rows],
        )
    conn.commit()


def test_kept_warning_time_builds_no_timeline(conn: psycopg.Connection) -> None:
    """rules.resource.resource_for asks a device's timeline only where its W is computed
    and it has a warning span: the figures are those computed with every timeline
    built, and a day whose W is kept builds none."""
    from rules.feed import window_days

    add_warnings(conn)
    feed = Feed(conn, RULES)
    inventory = feed.inventory()
    now = feed.now_ms()
    # Computed, every timeline built first (as before the change).
    plain = build.daily_context(feed, inventory, DAY, now)
    dict(plain.uptime_days().timelines)
    want = plain.resource_days()
    assert any(rw[DAY].warning_ms for rw in want.values())
    # Computed, the timelines asked for only where needed.
    fresh = build.daily_context(feed, inventory, DAY, now)
    assert fresh.resource_days() == want
    # Kept (uptime, then W beside it, as `atmfleet kpi keep-days` does), then read.
    keeper = build.daily_context(feed, inventory, DAY, now)
    window_days(feed, keeper.devices, DAY, DAY, now)
    assert keeper.resource_days() == want
    kept = build.daily_context(feed, inventory, DAY, now)
    assert kept.resource_days() == want
    assert kept.uptime_days().timelines.built == 0
