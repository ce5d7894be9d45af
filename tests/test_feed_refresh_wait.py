"""``Feed.settle_txn_days`` on TimescaleDB waits for a concurrent refresh of txn_daily
(the aggregate's own policy, run by the job scheduler, or another command) instead of
failing: TimescaleDB refuses a refresh that overlaps one in progress
(``LockNotAvailable``). The concurrent refresh is stood in for by that error, raised
where the real statement would meet it; the statement then runs for real."""

from __future__ import annotations

from datetime import date
from typing import Any

import psycopg
import pytest

from atmfleet.store.migrate import Flavour, upgrade
from rules import feed as feed_module
from rules.config import load_rules
from rules.feed import Feed

pytestmark = [pytest.mark.integration, pytest.mark.timescale]

RULES = load_rules()
DAY = date(2026, 11, 20)


class Busy:
    """The feed's connection, on which the refresh of txn_daily meets ``busy`` concurrent
    refreshes before it runs."""

    def __init__(self, conn: psycopg.Connection, busy: int) -> None:
        object.__setattr__(self, "_conn", conn)
        object.__setattr__(self, "busy", busy)
        object.__setattr__(self, "refreshes", 0)

    def execute(self, query: Any, params: Any = None, **kw: Any) -> Any:
        if "refresh_continuous_aggregate" in str(query):
            object.__setattr__(self, "refreshes", self.refreshes + 1)
            if self.busy:
                object.__setattr__(self, "busy", self.busy - 1)
                raise psycopg.errors.LockNotAvailable(
                    'could not refresh continuous aggregate "txn_daily" due to a concurrent refresh'
                )
        return self._conn.execute(query, params, **kw)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._conn, name)

    def __setattr__(self, name: str, value: Any) -> None:
        setattr(self._conn, name, value)


@pytest.fixture
def conn(timescale_url: str) -> Any:
    with psycopg.connect(timescale_url, autocommit=True) as c:
        upgrade(c, timezone=RULES.timezone, flavour=Flavour.TIMESCALE)
    with psycopg.connect(timescale_url) as c:
        yield c


def test_the_refresh_waits_for_a_concurrent_one_and_then_runs(conn: psycopg.Connection) -> None:
    feed = Feed(conn, RULES)
    busy = Busy(conn, busy=3)
    feed._conn = busy  # type: ignore[assignment]
    feed.settle_txn_days(DAY, DAY)
    assert busy.refreshes == 4  # three refused, the fourth ran
    assert busy.busy == 0
    assert conn.autocommit is False
    assert conn.execute("SELECT count(*) FROM txn_daily").fetchone() == (0,)


def test_a_refresh_still_refused_at_the_deadline_fails(
    conn: psycopg.Connection, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(feed_module, "REFRESH_WAIT_S", 0.0)
    feed = Feed(conn, RULES)
    busy = Busy(conn, busy=1)
    feed._conn = busy  # type: ignore[assignment]
    with pytest.raises(psycopg.errors.LockNotAvailable):
        feed.settle_txn_days(DAY, DAY)
    assert busy.refreshes == 1
    assert conn.autocommit is False
