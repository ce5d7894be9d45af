"""Low-yield on a feed with a spare connection (``rules.feed.Feed``, ``spare``): the
window's kept days added up there while the day not kept is computed, the day kept there
while the flags are made, and the kept part started early (``start_low_yield``). On a
small random fleet in the store (plain PostgreSQL and TimescaleDB):

- the same flags as the days one by one and as the feed without a spare connection, and
  the same kept rows (values and window sums) once the feed is closed;
- the day ``on`` kept, or its kept rows deleted, between the look at which devices it is
  kept for and the kept days' sums: never counted twice, never left out;
- a write that fails on the spare connection keeps nothing of the day (one transaction)
  and raises when the feed waits for it; the day is kept in full by the next evaluation.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import psycopg
import pytest

from rules.config import DaysCounted, Rules
from rules.feed import Feed, low_yield_for, start_low_yield
from rules.lowyield import YieldFlag
from tests.test_kpi_fast_path import DAY, filled
from tests.test_kpi_window_sums import (
    FIRST,
    _closed_horizon,
    _fast,
    _keep_earlier_days,
    _reference,
    _rules,
)

pytestmark = pytest.mark.integration


@pytest.fixture(params=["postgres", pytest.param("timescale", marks=pytest.mark.timescale)])
def conn(request: pytest.FixtureRequest) -> Iterator[psycopg.Connection]:
    yield from filled(request)


def _spare(conn: psycopg.Connection) -> Callable[[], psycopg.Connection]:
    dsn = conn.info.dsn
    return lambda: psycopg.connect(dsn)


def _kept_rows(conn: psycopg.Connection) -> list[tuple[Any, ...]]:
    """Every kept day of the window, its values and window sums (not when written)."""
    rows = conn.execute(
        "SELECT device_id, day, available_ms, scheduled_ms, financial, tech_scheduled_ms,"
        " tech_available_ms, planned_excluded_ms, monitored_ms, labels, label_ms,"
        " win_monitored, win_available_ms, win_scheduled_ms, win_counted, win_financial"
        " FROM kpi_device_days WHERE day BETWEEN %s AND %s ORDER BY day, device_id",
        (FIRST, DAY),
    ).fetchall()
    conn.commit()
    return rows


def _forget(conn: psycopg.Connection) -> None:
    conn.execute("DELETE FROM kpi_device_days WHERE day = %s", (DAY,))
    conn.commit()


def _evaluated(
    conn: psycopg.Connection, counted: DaysCounted, seed: int
) -> tuple[Rules, int, list[YieldFlag], list[tuple[Any, ...]]]:
    """The days before DAY kept (``seed``: which), then DAY evaluated on one connection:
    (rules, horizon, its flags, the kept rows it left)."""
    rules = _rules(counted)
    _keep_earlier_days(Feed(conn, rules), conn, seed)
    horizon = _closed_horizon(rules)
    alone = _fast(conn, rules, horizon)  # DAY and the days not kept computed and kept
    return rules, horizon, alone, _kept_rows(conn)


def _overlapped(
    conn: psycopg.Connection,
    rules: Rules,
    horizon: int,
    early: bool = False,
    whole_only: bool = False,
) -> list[YieldFlag]:
    """``low_yield_for`` on a feed with a spare connection, the feed closed after it
    (``early``: its kept part started first, as the daily bulletin does; ``whole_only``:
    of the devices in the fleet the whole window only, none judged day by day)."""
    feed = Feed(conn, rules, spare=_spare(conn))
    try:
        inventory = feed.inventory()
        devices = inventory.devices
        if whole_only:
            devices = tuple(d for d in devices if d.id in _whole_window(conn, rules))
        if early:
            start_low_yield(feed, devices, DAY)
        return low_yield_for(feed, inventory, devices, DAY, horizon)
    finally:
        feed.close()


def _whole_window(conn: psycopg.Connection, rules: Rules) -> set[str]:
    """The devices in the fleet the whole window ending DAY."""
    devices = Feed(conn, rules).inventory().devices
    conn.commit()
    return {
        d.id for d in devices
        if d.commissioned <= FIRST and (d.decommissioned is None or d.decommissioned > DAY)
    }  # fmt: skip


@pytest.mark.parametrize("early", [False, True])
@pytest.mark.parametrize("counted", list(DaysCounted))
def test_overlapped_flags_and_kept_rows_equal_one_connections(
    conn: psycopg.Connection, counted: DaysCounted, early: bool
) -> None:
    rules, horizon, alone, rows = _evaluated(conn, counted, 21)
    _forget(conn)
    got = _overlapped(conn, rules, horizon, early)
    assert got == alone == _reference(conn, rules, horizon)
    assert _kept_rows(conn) == rows
    assert sum(1 for r in rows if r[1] == DAY and r[11] is not None) >= 10


@pytest.mark.parametrize("whole_only", [False, True])
def test_the_day_kept_meanwhile_is_not_counted_twice(
    conn: psycopg.Connection, monkeypatch: pytest.MonkeyPatch, whole_only: bool
) -> None:
    """Which devices ``on`` is kept for is read on the feed's connection, the kept sums
    on the spare: here the first said none (as if read before another process kept the
    day), the second has the day in every window. The day computed meanwhile is not
    added again, nor written again."""
    rules = _rules(DaysCounted.IN_SERVICE)
    _keep_earlier_days(Feed(conn, rules), conn, 22)
    horizon = _closed_horizon(rules)
    alone = _fast(conn, rules, horizon)
    # The day kept without its window sums (as `kpi keep-days` keeps it): added up.
    conn.execute(
        "UPDATE kpi_device_days SET win_monitored = NULL, win_available_ms = NULL,"
        " win_scheduled_ms = NULL, win_counted = NULL, win_financial = NULL WHERE day = %s",
        (DAY,),
    )
    conn.commit()
    rows = _kept_rows(conn)
    written = _written(conn)
    monkeypatch.setattr(Feed, "kept_on", lambda self, fingerprint, day: set())
    if whole_only:  # (no window judged day by day: the days computed early all taken?)
        whole = _whole_window(conn, rules)
        alone = [f for f in alone if f.device_id in whole]
        assert 0 < len(alone) < len(Feed(conn, rules).inventory().devices)
        conn.commit()
    assert _overlapped(conn, rules, horizon, whole_only=whole_only) == alone
    assert _kept_rows(conn) == rows
    assert _written(conn) == written  # not one row of the day written again


def _written(conn: psycopg.Connection) -> list[tuple[Any, ...]]:
    """When each kept row of DAY was written."""
    rows = conn.execute(
        "SELECT device_id, computed_at FROM kpi_device_days WHERE day = %s ORDER BY 1", (DAY,)
    ).fetchall()
    conn.commit()
    return rows


def test_the_day_deleted_meanwhile_is_computed(
    conn: psycopg.Connection, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The other way round: the first look said ``on`` kept for every device, the kept
    sums have it for none (deleted meanwhile, as late telemetry does): it is computed
    then, and kept with the window sums it completes."""
    rules, horizon, alone, rows = _evaluated(conn, DaysCounted.IN_FLEET, 23)
    ids = {d.id for d in Feed(conn, rules).inventory().devices}
    conn.commit()
    _forget(conn)
    monkeypatch.setattr(Feed, "kept_on", lambda self, fingerprint, day: ids)
    assert _overlapped(conn, rules, horizon) == alone
    assert _kept_rows(conn) == rows


def test_a_failed_overlapped_write_keeps_nothing_and_raises(conn: psycopg.Connection) -> None:
    rules, horizon, alone, rows = _evaluated(conn, DaysCounted.IN_SERVICE, 24)
    _forget(conn)
    before = _kept_rows(conn)
    # The write fails once its rows are in the table (a statement trigger after them).
    conn.execute(
        "CREATE FUNCTION fail_keep() RETURNS trigger LANGUAGE plpgsql"
        " AS $$ BEGIN RAISE EXCEPTION 'the write failed'; END $$"
    )
    conn.execute(
        "CREATE TRIGGER fail_keep AFTER INSERT ON kpi_device_days"
        " FOR EACH STATEMENT EXECUTE FUNCTION fail_keep()"
    )
    conn.commit()
    try:
        feed = Feed(conn, rules, spare=_spare(conn))
        inventory = feed.inventory()
        flags = low_yield_for(feed, inventory, inventory.devices, DAY, horizon)
        assert flags == alone  # the figures do not wait for the write
        with pytest.raises(psycopg.errors.RaiseException, match="the write failed"):
            feed.close()
        assert _kept_rows(conn) == before  # nothing of the day kept
        feed.close()  # closed once: nothing left to wait for
    finally:
        conn.rollback()
        conn.execute("DROP TRIGGER fail_keep ON kpi_device_days")
        conn.execute("DROP FUNCTION fail_keep()")
        conn.commit()
    assert _overlapped(conn, rules, horizon) == alone
    assert _kept_rows(conn) == rows


def test_another_write_waits_for_the_overlapped_one(conn: psycopg.Connection) -> None:
    """A write of the feed after the evaluation first waits for the day being kept on
    the spare connection (so that neither holds a lock the other waits for)."""
    rules, horizon, alone, rows = _evaluated(conn, DaysCounted.IN_SERVICE, 25)
    _forget(conn)
    feed = Feed(conn, rules, spare=_spare(conn))
    try:
        inventory = feed.inventory()
        assert low_yield_for(feed, inventory, inventory.devices, DAY, horizon) == alone
        feed.keep_days(feed.fingerprint(), [])  # nothing to keep: it waits all the same
        assert _kept_rows(conn) == rows  # the day kept in full before the feed closed
    finally:
        feed.close()


def test_no_spare_connection_to_be_had_is_one_connection(conn: psycopg.Connection) -> None:
    """A spare that cannot connect (a connection limit, the server full): the
    evaluation runs on the feed's own connection, the same flags and kept rows."""
    rules, horizon, alone, rows = _evaluated(conn, DaysCounted.IN_SERVICE, 26)
    _forget(conn)

    def refused() -> psycopg.Connection:
        raise psycopg.OperationalError("too many connections for role")

    feed = Feed(conn, rules, spare=refused)
    try:
        inventory = feed.inventory()
        assert low_yield_for(feed, inventory, inventory.devices, DAY, horizon) == alone
        assert _kept_rows(conn) == rows  # kept here, at once
    finally:
        feed.close()
