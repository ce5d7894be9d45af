"""The uptime's fast paths equal the reference on varied fleets in the store.

- :func:`rules.feed.uptime_for` sums a device's time by label as its timeline's sweep
  goes (no timeline built) unless a power cut, a registered stop or a collector outage
  touches it; every figure, the labels' order included, must equal
  :func:`rules.feed.uptime_for_reference` (every timeline built and swept), and the
  timelines it builds when asked must equal the reference's;
- a closed day is kept in full by the daily job (``window_days``, migration 0018) and then
  read (:func:`rules.feed.uptime_of_day`); computed or read, it equals the reference, and
  so does the report; a new fingerprint (a recorded outage) is another cache.

The fleet (tests/test_kpi_fast_path.py's ``fill``): random runs of every state, silent
gaps, presence, power cuts, a device never heard from, devices commissioned on the day or
after it and decommissioned, mixed heartbeats and service windows, approved stops of a
device and of a branch, and a collector outage (removed for the cases without one); the
rules' zone is Asia/Shanghai (no DST).
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import date, timedelta

import psycopg
import pytest

from rules.config import load_rules
from rules.feed import (
    Feed,
    Timelines,
    UptimeDays,
    uptime_for,
    uptime_for_reference,
    uptime_of_day,
    window_days,
)
from rules.labels import Label
from rules.report import Context, Scope, to_json, uptime_report
from rules.uptime import day_span
from tests.test_kpi_fast_path import filled

pytestmark = pytest.mark.integration

RULES = load_rules()
DAY = date(2026, 11, 20)
H = 3_600_000


@pytest.fixture(params=["postgres", pytest.param("timescale", marks=pytest.mark.timescale)])
def conn(request: pytest.FixtureRequest) -> Iterator[psycopg.Connection]:
    yield from filled(request, n=60)


def without_outages(conn: psycopg.Connection) -> None:
    conn.execute("DELETE FROM collector_outages")
    conn.commit()


def assert_same(got: UptimeDays, want: UptimeDays) -> None:
    assert got.days == want.days
    assert list(got.per_device) == list(want.per_device)
    for d, per_day in want.per_device.items():
        assert list(got.per_device[d]) == list(per_day), d
        for day, up in per_day.items():
            mine = got.per_device[d][day]
            assert mine == up, (d, day)
            # the labels in the same order too (the figures' repr is the bench's digest)
            assert list(mine.by_label.items()) == list(up.by_label.items()), (d, day)


def horizons() -> list[int]:
    lo = day_span(DAY, RULES.tz)[0]
    # inside the day (the rest not counted yet), at its end, and long past it
    return [lo + 10 * H + 17, lo + 24 * H, lo + 72 * H]


@pytest.mark.parametrize("outage", [False, True])
def test_the_sums_as_the_sweep_goes_equal_the_reference(
    conn: psycopg.Connection, outage: bool
) -> None:
    if not outage:
        without_outages(conn)
    feed = Feed(conn, RULES)
    devices = feed.inventory().devices
    for horizon in horizons():
        for first, last in ((DAY, DAY), (DAY - timedelta(days=1), DAY)):
            fast = uptime_for(feed, devices, first, last, horizon)
            reference = uptime_for_reference(feed, devices, first, last, horizon)
            assert isinstance(fast.timelines, Timelines)
            # With an outage no device takes the sums (nor before monitoring began: the
            # two days' context starts before the first run); without, many do.
            swept = len(devices) - fast.timelines.built
            if outage or first < DAY:
                assert swept == 0
            else:
                assert swept >= len(devices) // 3, swept
            assert_same(fast, reference)
            assert dict(fast.timelines) == reference.timelines
    final = uptime_for(feed, devices, DAY, DAY, horizons()[-1]).per_device
    labels = {label for per_day in final.values() for u in per_day.values() for label in u.by_label}
    assert labels >= {Label.AVAILABLE, Label.FAULT, Label.PLANNED, Label.COMMUNICATIONS,
                      Label.POWER, Label.SUPERVISOR}  # fmt: skip
    # A device not in the fleet that day has no scheduled time: no data, not 0 %.
    no_data = [d.id for d in devices if d.commissioned > DAY]
    assert no_data and all(final[d][DAY].ratio is None for d in no_data)
    assert (
        Label.UNKNOWN in {label for u in final.values() for label in u[DAY].by_label} or not outage
    )


def test_timelines_cleared_unbuilt_are_not_built(conn: psycopg.Connection) -> None:
    without_outages(conn)
    feed = Feed(conn, RULES)
    devices = feed.inventory().devices
    up = uptime_for(feed, devices, DAY, DAY, horizons()[-1])
    up.timelines.clear()
    assert len(up.timelines) == 0


@pytest.mark.parametrize("outage", [False, True])
def test_a_closed_day_kept_in_full_is_read(conn: psycopg.Connection, outage: bool) -> None:
    if not outage:
        without_outages(conn)
    feed = Feed(conn, RULES)
    devices = feed.inventory().devices
    horizon = horizons()[-1]
    reference = uptime_for_reference(feed, devices, DAY, DAY, horizon)
    financial = feed.financial_days(DAY, DAY)
    want_fin = {d.id: financial.get(d.id, {}).get(DAY, 0) for d in devices}
    assert any(want_fin.values())

    def kept() -> int:
        row = conn.execute(
            "SELECT count(*) FROM kpi_device_days WHERE day = %s AND labels IS NOT NULL", (DAY,)
        ).fetchone()
        conn.commit()
        return int(row[0]) if row else 0

    assert kept() == 0
    first, fin = uptime_of_day(feed, devices, DAY, horizon)
    assert kept() == 0  # computed, not kept here
    assert_same(first, reference)
    assert fin == want_fin
    # The daily job (kpi keep-days) keeps the day in full.
    window_days(feed, devices, DAY, DAY, horizon)
    assert kept() == len(devices)
    # The next call reads: the rows changed under it are what it answers.
    conn.execute("UPDATE kpi_device_days SET financial = financial + 1000 WHERE day = %s", (DAY,))
    conn.commit()
    again, fin = uptime_of_day(Feed(conn, RULES), devices, DAY, horizon)
    assert_same(again, reference)
    assert fin == {d: n + 1000 for d, n in want_fin.items()}
    assert dict(again.timelines) == reference.timelines  # read again when asked for
    conn.execute("UPDATE kpi_device_days SET financial = financial - 1000 WHERE day = %s", (DAY,))
    conn.commit()
    # A day still open is computed, not kept.
    lo = day_span(DAY, RULES.tz)[0]
    today, fin = uptime_of_day(feed, devices, DAY, lo + 10 * H)
    assert fin is None
    assert_same(today, uptime_for_reference(feed, devices, DAY, DAY, lo + 10 * H))
    # Another fingerprint (a recorded outage) is another cache: computed again.
    conn.execute(
        "INSERT INTO collector_outages (started_at, ended_at, detected_by)"
        " VALUES (%s::timestamptz, %s::timestamptz, 'test')",
        (f"{DAY} 05:00+08", f"{DAY} 05:30+08"),
    )
    conn.commit()
    feed = Feed(conn, RULES)
    after, _ = uptime_of_day(feed, devices, DAY, horizon)
    assert_same(after, uptime_for_reference(feed, devices, DAY, DAY, horizon))
    assert any(Label.UNKNOWN in u[DAY].by_label for u in after.per_device.values())


def test_the_report_of_a_kept_day_is_the_report_computed(conn: psycopg.Connection) -> None:
    without_outages(conn)
    feed = Feed(conn, RULES)
    inventory = feed.inventory()
    horizon = horizons()[-1]

    def report(by: str) -> str:
        ctx = Context.make(Feed(conn, RULES), inventory, Scope.parse("fleet"), DAY, DAY, horizon)
        return to_json(uptime_report(ctx, by, previous=True))

    # The reference: the report computed from the timelines alone (nothing kept).
    conn.execute("DELETE FROM kpi_device_days")
    conn.commit()
    ctx = Context.make(feed, inventory, Scope.parse("fleet"), DAY, DAY, horizon)
    ctx.cache[("uptime", "fleet", DAY, DAY)] = uptime_for_reference(
        feed, ctx.devices, DAY, DAY, horizon
    )
    want = {by: to_json(uptime_report(ctx, by, previous=True)) for by in ("subbranch", "device")}
    conn.execute("DELETE FROM kpi_device_days")
    conn.commit()
    for by in ("subbranch", "device"):
        assert report(by) == want[by]  # computed
    window_days(feed, inventory.devices, DAY, DAY, horizon)  # kpi keep-days
    for by in ("subbranch", "device"):
        assert report(by) == want[by]  # read
