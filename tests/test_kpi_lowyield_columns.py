"""A fleet's day not kept yet, computed over columns, equals the day computed device by
device, for every caller of it, on plain PostgreSQL and TimescaleDB.

:func:`rules.feed.day_of_columns` (the day's inventory, runs and financial counts read
packed in one statement, the timelines swept over numpy arrays:
:func:`rules.feed.uptime_day_columns`) stands in for :func:`rules.feed.uptime_for` plus
:meth:`rules.feed.Feed.financial_days` wherever a day is missing for at least half the
devices: the low-yield evaluation's day not yet kept (:func:`rules.feed.low_yield_for`,
``kpi keep-days``' :func:`rules.feed.window_days`) and the devices of a day not kept in
:func:`rules.feed.uptime_of_day` (the bulletins, ``serve``). Each test runs the same
call twice on the same store, once as shipped and once with the columns refused (the
reference: every day device by device), and compares:

- the low-yield flags, and every kept row the evaluation wrote (the 开机率 in full, its
  labels in the same order, the window sums), integers equal;
- every device's :class:`~rules.uptime.Uptime` of :func:`rules.feed.uptime_of_day`
  (labels in the same order), its financial count and its timeline (built only when
  asked for);

on a fleet with power cuts, registered planned stops (of a device and of a branch), a
collector outage (unknown time), devices commissioned and decommissioned inside the
window, devices never heard from, presence (tests/test_kpi_fast_path.py's ``fill``),
for a day still open and a day closed, not kept, partly kept or kept for most devices,
with and without the outage; and a state the timeline does not know, refused the same
way by both.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from typing import Any

import psycopg
import pytest

import rules.feed
from rules.config import Rules, load_rules
from rules.feed import Feed, low_yield_for, uptime_of_day, window_days
from rules.timeline import from_ms
from rules.uptime import day_span
from tests.test_kpi_fast_path import filled

pytestmark = pytest.mark.integration

RULES = load_rules()
DAY = date(2026, 11, 20)
H = 3_600_000
MARK = datetime(2000, 1, 1, tzinfo=UTC)
LOW = RULES.low_yield.model_copy(update={"min_monitored_days": 3, "ramp_up_days": 5})
LOW_RULES = RULES.model_copy(update={"low_yield": LOW})
ROWS = """
SELECT fingerprint, device_id, day, available_ms, scheduled_ms, financial, tech_scheduled_ms,
       tech_available_ms, planned_excluded_ms, monitored_ms, labels, label_ms, warning_ms,
       win_monitored, win_available_ms, win_scheduled_ms, win_counted, win_financial
FROM kpi_device_days WHERE computed_at > %s ORDER BY day, device_id
"""


@pytest.fixture(params=["postgres", pytest.param("timescale", marks=pytest.mark.timescale)])
def conn(request: pytest.FixtureRequest) -> Iterator[psycopg.Connection]:
    yield from filled(request, n=60)


class Columns:
    """Counts the days computed over columns (:func:`rules.feed.day_of_columns` and the
    low-yield evaluation both go through ``_day_parts``; ``refuse``: it computes none,
    the callers take the reference)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.used = 0
        self.refuse = False
        real = rules.feed._day_parts

        def spy(*args: Any, **kwargs: Any) -> Any:
            if self.refuse:
                return None
            got = real(*args, **kwargs)
            self.used += got is not None
            return got

        monkeypatch.setattr(rules.feed, "_day_parts", spy)


def horizons() -> dict[str, int]:
    lo, hi = day_span(DAY, RULES.tz)
    return {"open": lo + 10 * H + 17, "closed": hi + 2 * 86_400_000}


def without_outages(conn: psycopg.Connection) -> None:
    conn.execute("DELETE FROM collector_outages")
    conn.commit()


def keep_before(conn: psycopg.Connection, rules_: Rules, kept_on: float) -> None:
    """Most of the 29 days before DAY kept (A, S and the financial count), and DAY
    itself for a share ``kept_on`` of the devices (in full, as keep-days keeps it); all
    marked as older than any run's."""
    feed = Feed(conn, rules_)
    rng = random.Random(5)
    devices = feed.inventory().devices
    values = []
    for d in devices:
        for back in range(1, 30):
            if rng.random() < 0.85:
                s = rng.choice((0, 8 * H, 24 * H))
                a = rng.randrange(0, s + 1) if s else 0
                values.append((d.id, DAY - timedelta(days=back), (a, s, rng.randrange(0, 150))))
    feed.keep_days(feed.fingerprint(), values)
    if kept_on:
        chosen = [d for d in devices if rng.random() < kept_on]
        window_days(feed, chosen, DAY, DAY, horizons()["closed"])  # kpi keep-days
    conn.execute("UPDATE kpi_device_days SET computed_at = %s", (MARK,))
    conn.commit()


def written(conn: psycopg.Connection) -> list[tuple[Any, ...]]:
    """The rows a run kept, then forgotten (the next run starts from the same store)."""
    rows = conn.execute(ROWS, (MARK,)).fetchall()
    conn.execute("DELETE FROM kpi_device_days WHERE computed_at > %s", (MARK,))
    conn.commit()
    return rows


@pytest.mark.parametrize("outage", [False, True])
@pytest.mark.parametrize("kept_on", [0.0, 0.3, 0.8])
def test_low_yield_and_the_kept_rows_equal_the_reference(
    conn: psycopg.Connection, monkeypatch: pytest.MonkeyPatch, outage: bool, kept_on: float
) -> None:
    if not outage:
        without_outages(conn)
    keep_before(conn, LOW_RULES, kept_on)
    columns = Columns(monkeypatch)
    for name, horizon in horizons().items():
        got: dict[bool, tuple[Any, ...]] = {}
        for refuse in (False, True):
            columns.refuse = refuse
            feed = Feed(conn, LOW_RULES)
            inventory = feed.inventory()
            flags = low_yield_for(feed, inventory, inventory.devices, DAY, horizon)
            got[refuse] = (flags, written(conn))
        assert got[False][0] == got[True][0], name
        assert got[False][1] == got[True][1], name
        flags, rows = got[False]
        assert {f.status for f in flags} >= {"low", "ok", "exempt", "not_evaluated"}
        on_day = [r for r in rows if r[2] == DAY]
        if name == "closed":  # the day kept, in full, with the window sums
            assert on_day and any(r[13] is not None for r in on_day)
            assert any(r[10] and "," in r[10] for r in on_day)  # labels in their order
        else:
            assert not on_day  # an open day is not kept (the earlier days missing are)
    # The day missing for most devices was computed over columns (not where 80 % had it).
    assert columns.used == (0 if kept_on > 0.5 else 2)


@pytest.mark.parametrize("outage", [False, True])
def test_keep_days_equals_the_reference(
    conn: psycopg.Connection, monkeypatch: pytest.MonkeyPatch, outage: bool
) -> None:
    if not outage:
        without_outages(conn)
    columns = Columns(monkeypatch)
    horizon = horizons()["closed"]
    got = {}
    for refuse in (False, True):
        columns.refuse = refuse
        feed = Feed(conn, RULES)
        devices = feed.inventory().devices
        windows = window_days(feed, devices, DAY - timedelta(days=1), DAY, horizon)
        got[refuse] = (windows, written(conn))
    assert got[False] == got[True]
    assert len(got[False][1]) > 60
    assert columns.used == 2  # both days, over columns


def _uptime_of_day(feed: Feed, devices: list[Any], horizon: int, columns: bool) -> tuple[Any, ...]:
    up, financial = uptime_of_day(feed, devices, DAY, horizon)
    if columns:  # the timelines are built only when asked for
        assert up.timelines.built == 0  # type: ignore[attr-defined]
    per_device = {d: [(u, list(u.by_label.items())) for u in v.values()]
                  for d, v in up.per_device.items()}  # fmt: skip
    return up.days, per_device, financial, dict(up.timelines)


@pytest.mark.parametrize("outage", [False, True])
def test_uptime_of_day_equals_the_reference(
    conn: psycopg.Connection, monkeypatch: pytest.MonkeyPatch, outage: bool
) -> None:
    if not outage:
        without_outages(conn)
    columns = Columns(monkeypatch)
    feed = Feed(conn, RULES)
    devices = list(feed.inventory().devices)
    some = [d for d in devices if d.branch == "B1"]
    closed = horizons()["closed"]
    cases = [("open", horizons()["open"], 0), ("closed, not kept", closed, 0),
             ("partly kept", closed, 20), ("mostly kept", closed, 45)]  # fmt: skip
    expected_used = 0
    for name, horizon, kept in cases:
        if kept:
            columns.refuse = True  # kpi keep-days of some devices (not counted)
            window_days(Feed(conn, RULES), devices[:kept], DAY, DAY, closed)
        for chosen in (devices, some):
            got = {}
            for refuse in (False, True):
                columns.refuse = refuse
                got[refuse] = _uptime_of_day(Feed(conn, RULES), chosen, horizon, not refuse)
            assert got[False] == got[True], (name, len(chosen))
            missing = len([d for d in chosen if devices.index(d) >= kept])
            expected_used += 2 * missing >= len(chosen)
    assert columns.used == expected_used >= 4


def test_a_state_the_timeline_does_not_know_is_refused_the_same_way(
    conn: psycopg.Connection, monkeypatch: pytest.MonkeyPatch
) -> None:
    lo = day_span(DAY, RULES.tz)[0]
    conn.execute(
        "INSERT INTO state_runs VALUES ('D000', %s, 900000, %s, 900001, 'levitating', 60, 2)",
        (from_ms(lo + 3 * H), from_ms(lo + 3 * H + 60_000)),
    )
    conn.commit()
    columns = Columns(monkeypatch)
    for refuse in (False, True):
        columns.refuse = refuse
        feed = Feed(conn, RULES)
        inventory = feed.inventory()
        with pytest.raises(KeyError, match="levitating"):
            low_yield_for(feed, inventory, inventory.devices, DAY, horizons()["closed"])
        with pytest.raises(KeyError, match="levitating"):
            uptime_of_day(feed, inventory.devices, DAY, horizons()["closed"])
        conn.rollback()
    horizon = horizons()["closed"]
    feed = Feed(conn, RULES)
    assert rules.feed.uptime_day_columns(feed, "fleet", "fleet", DAY, horizon) is None
