"""The low-yield window sums kept beside a day (migration 0022) give the same flags as the
days one by one, on a small random fleet in the store (plain PostgreSQL and TimescaleDB):

- the evaluation that keeps a day keeps the sums of the windows it completes, equal to
  the kept days added up by the database (``kept_sums``), and the next evaluation, which
  reads them, gives the flags of every device's days evaluated one by one;
- a kept day deleted (late telemetry, a planned stop) or changed makes the sums of the
  windows it is part of forgotten, and only those; the flags are still the reference's;
- the low-yield share counts as the flags one at a time did (pinned below).
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterable, Iterator
from datetime import date, timedelta

import psycopg
import pytest

from rules.config import DaysCounted, Rules
from rules.feed import Feed, _low_yield_by_day, low_yield_for
from rules.lowyield import Share, YieldFlag, YieldStatus, low_yield_share
from rules.uptime import day_span
from tests.test_kpi_fast_path import DAY, MARK, RULES, H, filled

pytestmark = pytest.mark.integration

FIRST = DAY - timedelta(days=RULES.low_yield.window_days - 1)


@pytest.fixture(params=["postgres", pytest.param("timescale", marks=pytest.mark.timescale)])
def conn(request: pytest.FixtureRequest) -> Iterator[psycopg.Connection]:
    yield from filled(request)


def _rules(counted: DaysCounted) -> Rules:
    low = RULES.low_yield.model_copy(
        update={"days_counted": counted, "min_monitored_days": 3, "ramp_up_days": 5}
    )
    return RULES.model_copy(update={"low_yield": low})


def _closed_horizon(rules: Rules) -> int:
    return day_span(DAY, rules.tz)[1] + 2 * 86_400_000


def _keep_earlier_days(feed: Feed, conn: psycopg.Connection, seed: int) -> None:
    """Most of the 29 days before DAY kept with random values (the others computed)."""
    rng = random.Random(seed)
    values = []
    for d in feed.inventory().devices:
        volume = rng.choice((10, 300))  # low-yield or not
        for back in range(1, 30):
            if d.id < "D010" or rng.random() < 0.8:  # some devices with every day kept
                s = rng.choice((0, 8 * H, 24 * H))
                values.append(
                    (d.id, DAY - timedelta(days=back),
                     (rng.randrange(0, s + 1) if s else 0, s, rng.randrange(0, volume)))
                )  # fmt: skip
    feed.keep_days(feed.fingerprint(), values)
    conn.execute("UPDATE kpi_device_days SET computed_at = %s", (MARK,))
    conn.commit()


def _kept_sums_columns(conn: psycopg.Connection) -> dict[str, tuple[int, ...]]:
    rows = conn.execute(
        "SELECT device_id, win_monitored, win_available_ms, win_scheduled_ms, win_counted,"
        " win_financial FROM kpi_device_days WHERE day = %s AND win_monitored IS NOT NULL",
        (DAY,),
    ).fetchall()
    conn.commit()
    return {r[0]: tuple(r[1:]) for r in rows}


def _reference(conn: psycopg.Connection, rules: Rules, horizon: int) -> list[YieldFlag]:
    feed = Feed(conn, rules)
    inventory = feed.inventory()
    return _low_yield_by_day(feed, inventory, inventory.devices, DAY, horizon)


def _fast(conn: psycopg.Connection, rules: Rules, horizon: int) -> list[YieldFlag]:
    feed = Feed(conn, rules)
    inventory = feed.inventory()
    return low_yield_for(feed, inventory, inventory.devices, DAY, horizon)


@pytest.mark.parametrize("counted", list(DaysCounted))
def test_kept_window_sums_equal_the_days_one_by_one(
    conn: psycopg.Connection, counted: DaysCounted
) -> None:
    rules = _rules(counted)
    feed = Feed(conn, rules)
    _keep_earlier_days(feed, conn, 5)
    horizon = _closed_horizon(rules)
    first = _fast(conn, rules, horizon)  # computes DAY (and the days not kept), keeps them
    stored = _kept_sums_columns(conn)
    devices = feed.inventory().devices
    whole = {
        d.id for d in devices
        if d.commissioned <= FIRST and (d.decommissioned is None or d.decommissioned > DAY)
    }  # fmt: skip
    # Every device in the fleet the whole window had its window completed: its sums kept.
    assert set(stored) == whole and len(whole) >= 10
    fp = feed.fingerprint()
    in_service = counted is DaysCounted.IN_SERVICE
    added = feed.kept_sums(fp, FIRST, DAY, in_service)
    read = feed.window_sums(fp, DAY)
    conn.commit()
    for device_id in whole:
        sums, bits = added[device_id]
        assert bits == (1 << 30) - 1
        assert read[device_id] == (device_id, *stored[device_id])
        assert stored[device_id] == (
            sums.monitored,
            sums.available_ms,
            sums.scheduled_ms,
            sums.counted,
            sums.financial,
        )
    again = _fast(conn, rules, horizon)  # the sums read, nothing computed
    assert again == first == _reference(conn, rules, horizon)
    assert {f.status for f in again} >= {"low", "ok", "exempt", "not_evaluated"}


def test_window_sums_forgotten_with_a_kept_day_deleted_or_changed(
    conn: psycopg.Connection,
) -> None:
    rules = _rules(DaysCounted.IN_SERVICE)
    feed = Feed(conn, rules)
    _keep_earlier_days(feed, conn, 9)
    horizon = _closed_horizon(rules)
    _fast(conn, rules, horizon)
    stored = _kept_sums_columns(conn)
    gone, changed, same, older = sorted(stored)[:4]
    middle = DAY - timedelta(days=10)
    # A planned stop's invalidation: a range of days in the middle of the window.
    conn.execute(
        "DELETE FROM kpi_device_days WHERE device_id = %s AND day BETWEEN %s AND %s",
        (gone, middle - timedelta(days=1), middle + timedelta(days=1)),
    )
    # A day written again with another value, one with the same values, and W set.
    conn.execute(
        "UPDATE kpi_device_days SET financial = financial + 1 WHERE device_id = %s AND day = %s",
        (changed, middle),
    )
    conn.execute(
        "UPDATE kpi_device_days SET financial = financial, warning_ms = 1"
        " WHERE device_id = %s AND day = %s",
        (same, middle),
    )
    # A kept day more than 62 days before DAY changed (the longest window the sums are
    # kept for is 63 days: nearer, any change forgets them): DAY's sums stand.
    conn.execute(
        "INSERT INTO kpi_device_days (fingerprint, device_id, day, available_ms, scheduled_ms,"
        " financial) VALUES (%s, %s, %s, 1, 2, 3)",
        (feed.fingerprint(), older, DAY - timedelta(days=63)),
    )
    conn.execute(
        "UPDATE kpi_device_days SET financial = 4 WHERE device_id = %s AND day = %s",
        (older, DAY - timedelta(days=63)),
    )
    conn.commit()
    now = _kept_sums_columns(conn)
    assert set(stored) - set(now) == {gone, changed}
    assert all(now[k] == stored[k] for k in now)
    assert _fast(conn, rules, horizon) == _reference(conn, rules, horizon)
    # Late telemetry's invalidation (from a day on): the day itself goes, with its sums.
    conn.execute("DELETE FROM kpi_device_days WHERE device_id = %s AND day >= %s", (same, middle))
    conn.commit()
    assert same not in _kept_sums_columns(conn)
    assert _fast(conn, rules, horizon) == _reference(conn, rules, horizon)
    # Its day, computed again, was kept with the sums of the window it completes; the
    # others' days stayed kept, their windows judged on the kept days added up.
    assert set(stored) - set(_kept_sums_columns(conn)) == {gone, changed}


@pytest.mark.parametrize("counted", list(DaysCounted))
def test_yesterdays_window_sums_slide_by_a_day(
    conn: psycopg.Connection, monkeypatch: pytest.MonkeyPatch, counted: DaysCounted
) -> None:
    """The daily case: yesterday's evaluation kept the sums of the windows it completed;
    today's reads them slid by a day (:meth:`Feed.kept_sums_slid`): the same values and
    kept bits as the kept days added up, today kept or not, and the same flags as the
    days one by one. A window whose sums were forgotten is added up as before."""
    rules = _rules(counted)
    feed = Feed(conn, rules)
    _keep_earlier_days(feed, conn, 13)
    horizon = _closed_horizon(rules)
    inventory = feed.inventory()
    yesterday = DAY - timedelta(days=1)
    # Yesterday evaluated as the day before's job did: not kept yet, then computed and
    # kept with the sums of the windows it completed.
    conn.execute("DELETE FROM kpi_device_days WHERE day = %s", (yesterday,))
    fp = feed.fingerprint()
    rng = random.Random(3)
    # The day that leaves the window kept with values that count (or not) either way.
    leaving = FIRST - timedelta(days=1)
    feed.keep_days(
        fp,
        [(d.id, leaving, (rng.choice((0, 5 * H)), rng.choice((0, 9 * H)), rng.randrange(1, 50)))
         for d in inventory.devices],
    )  # fmt: skip
    low_yield_for(feed, inventory, inventory.devices, yesterday, horizon)
    conn.commit()
    in_service = counted is DaysCounted.IN_SERVICE
    slid = sorted(feed.kept_sums_slid(fp, FIRST, DAY, in_service))
    # Today kept for some devices (its values added, its bit set); a day of the window
    # changed for another (yesterday's sums forgotten: no slide for it).
    today_kept = slid[::3]
    feed.keep_days(
        fp, [(i, DAY, (rng.randrange(0, 9 * H), rng.choice((0, 9 * H)), 7)) for i in today_kept]
    )
    changed = slid[1]
    conn.execute(
        "UPDATE kpi_device_days SET financial = financial + 5 WHERE device_id = %s AND day = %s",
        (changed, DAY - timedelta(days=12)),
    )
    conn.commit()
    got = feed.kept_sums_slid(fp, FIRST, DAY, in_service)
    added = feed.kept_sums(fp, FIRST, DAY, in_service)
    conn.commit()
    assert len(got) >= 10 and changed not in got and set(got) == set(slid) - {changed}
    assert all(got[i] == added[i] for i in got)
    assert {got[i][1] >> 29 for i in got} == {0, 1}  # today kept for some, not for others
    asked: list[object] = []
    real = Feed.kept_sums

    def spy(self: Feed, *args: object, **kwargs: object) -> object:
        asked.append(args[4] if len(args) > 4 else kwargs.get("ids"))
        return real(self, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(Feed, "kept_sums", spy)
    assert _fast(conn, rules, horizon) == _reference(conn, rules, horizon)
    # Only the devices yesterday's sums did not cover were added up, by id.
    assert len(asked) == 1 and isinstance(asked[0], list) and changed in asked[0]
    assert not set(asked[0]) & set(got)


def _share_one_by_one(
    flags: Iterable[YieldFlag], key: Callable[[str], str | None], max_share: float
) -> dict[str, Share]:
    """``low_yield_share`` as it was: each flag added to its group in turn."""
    out: dict[str, Share] = {}
    for flag in flags:
        group = key(flag.device_id)
        if group is None:
            continue
        acc = out.get(group)
        if acc is None:
            acc = out[group] = Share(max_share=max_share)
        if flag.status is YieldStatus.EXEMPT:
            acc.exempt += 1
        elif flag.status is YieldStatus.COVERAGE:
            acc.not_evaluated_coverage += 1
        elif flag.status is not YieldStatus.NOT_EVALUATED:
            acc.evaluated += 1
            acc.low += flag.status is YieldStatus.LOW
        acc.low_efficiency += bool(flag.low_efficiency)
    return out


def test_low_yield_share_counts_as_one_flag_at_a_time() -> None:
    rng = random.Random(3)
    groups = ["g1", "g2", "g3", None]
    key_of = {f"D{i}": rng.choice(groups) for i in range(500)}
    flags = [
        YieldFlag(
            device_id,
            date(2026, 11, 20),
            rng.choice(list(YieldStatus)),
            3,
            None,
            None,
            None,
            rng.choice((None, True, False)),
        )
        for device_id in key_of
    ]
    want = _share_one_by_one(flags, key_of.get, 0.05)
    got = low_yield_share(iter(flags), key_of.get, 0.05)
    assert got == want
    assert list(got) == list(want)  # the groups in the same order
