"""A day's kept rows written from its columns (``DayRows``: the COPY text made column by
column, no Uptime per device) equal the rows written from one Uptime per device, text
and table alike; days not kept yet are inserted without the upsert's conflict check,
and a row kept meanwhile by another writer makes the write an upsert, with the same
rows; a write that fails part way keeps nothing of it. Plain PostgreSQL and TimescaleDB.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Iterator
from datetime import date, timedelta
from typing import Any

import numpy as np
import psycopg
import pytest

import rules.feed
from atmfleet.store.migrate import upgrade
from rules.config import load_rules
from rules.feed import DayColumns, DayRows, Feed, KeptRows, KeptValue, value_lines
from rules.lowyield import WindowSums
from rules.timeline import LABELS
from rules.uptime import FIGURES

RULES = load_rules()
DAY = date(2026, 11, 20)
H = 3_600_000


def columns(n: int, seed: int, met: bool = True) -> DayColumns:
    """A day's columns: random figures and time by label, some rows without any label,
    labels met in random orders (``met``; else in LABELS order); ids not in the key's
    order, some needing COPY's escapes."""
    rng = random.Random(seed)
    width = len(LABELS)
    by_label = np.zeros((n, width), np.int64)
    order = np.full((n, width), 2**62, np.int64)
    for r in range(n):
        chosen = rng.sample(range(width), rng.choice((0, 1, 1, 2, 3, 5)))
        for k, code in enumerate(chosen):
            by_label[r, code] = rng.choice((0, rng.randrange(1, 24 * H)))  # met, no time
            order[r, code] = k
    figures = np.asarray(
        [[rng.randrange(0, 24 * H) for _ in FIGURES] for _ in range(n)], np.int64
    ).reshape(n, len(FIGURES))
    ids = [f"D{i:06d}" for i in rng.sample(range(10 * n), n)]
    ids[1] = "D\tTAB"
    ids[2] = "D\\BACKSLASH"
    financial = np.asarray([rng.randrange(0, 150) for _ in range(n)], np.int64)
    return DayColumns(
        DAY, ids, {}, by_label, figures, financial, np.ones(n), order if met else None
    )


def as_values(cols: DayColumns, rows: list[int]) -> list[KeptValue]:
    """The same rows as one Uptime per device (what the day was kept from before)."""
    ups = cols.uptimes(rows)
    fin = cols.financial.tolist()
    return [(cols.ids[r], cols.day, u, fin[r]) for r, u in zip(rows, ups, strict=True)]


def sums_of(ids: list[str], seed: int) -> dict[str, WindowSums]:
    rng = random.Random(seed)
    return {
        i: WindowSums(rng.randrange(0, 31), rng.randrange(0, 9**9), rng.randrange(0, 9**9),
                      rng.randrange(0, 31), rng.randrange(0, 9999))
        for i in ids
        if rng.random() < 0.6
    }  # fmt: skip


@pytest.mark.parametrize("met", [True, False])
@pytest.mark.parametrize("window_day", [DAY, DAY - timedelta(days=1), None])
def test_the_columns_text_equals_the_text_of_one_uptime_per_device(
    met: bool, window_day: date | None
) -> None:
    n = 9000  # more than a chunk of 8,192 lines
    cols = columns(n, 3, met)
    rows = sorted(random.Random(4).sample(range(n), 8500))
    day_rows = DayRows(cols, np.asarray(rows, np.int64), cols.financial[rows])
    window = sums_of(cols.ids, 5)
    got = "".join(day_rows.lines(window, window_day))
    want = "".join(value_lines(as_values(cols, rows), window, window_day))
    assert got.count("\n") == 8500
    assert got == want
    assert "\t\t{}\t" in got  # a day without any label
    assert "D\\\\BACKSLASH\t" in got and "D\\tTAB\t" in got


def test_only_keeps_the_rows_of_the_devices_asked_for() -> None:
    cols = columns(50, 6)
    every = np.arange(50, dtype=np.int64)
    kept = KeptRows(as_values(cols, [0, 1, 2]), [DayRows(cols, every, cols.financial)])
    wanted = {cols.ids[k] for k in (1, 7, 30)}
    got = kept.only(wanted)
    assert [v[0] for v in got.values] == [cols.ids[1]]
    assert got.days[0].ids == [cols.ids[1], cols.ids[7], cols.ids[30]]
    assert got.days[0].financial.tolist() == cols.financial[[1, 7, 30]].tolist()
    assert len(got) == 4 and len(kept) == 53


@pytest.fixture
def conn(flavour_url: str) -> Iterator[psycopg.Connection]:
    url = flavour_url
    with psycopg.connect(url, autocommit=True) as c:
        upgrade(c, timezone=RULES.timezone)
    with psycopg.connect(url) as c:
        yield c


def kept(conn: psycopg.Connection, fp: str) -> list[tuple[Any, ...]]:
    return conn.execute(
        """
        SELECT device_id, day, available_ms, scheduled_ms, financial, warning_ms,
               tech_scheduled_ms, tech_available_ms, planned_excluded_ms, monitored_ms,
               labels, label_ms, array_ndims(label_ms), win_monitored, win_available_ms,
               win_scheduled_ms, win_counted, win_financial
        FROM kpi_device_days WHERE fingerprint = %s ORDER BY device_id, day
        """,
        (fp,),
    ).fetchall()


def newest(conn: psycopg.Connection, fp: str) -> Any:
    row = conn.execute("SELECT newest FROM kpi_kept_rules WHERE fingerprint = %s", (fp,))
    got = row.fetchone()
    conn.commit()
    return got and got[0]


def write(feed: Feed, fp: str, cols: DayColumns, rows: list[int], by_columns: bool,
          window: dict[str, WindowSums], extra: list[KeptValue]) -> None:  # fmt: skip
    if by_columns:
        day_rows = DayRows(cols, np.asarray(rows, np.int64), cols.financial[rows])
        feed.keep_uptime_days(fp, KeptRows(list(extra), [day_rows]), window, DAY)
    else:
        feed.keep_uptime_days(fp, as_values(cols, rows) + extra, window, DAY)


def test_kept_from_columns_equals_kept_from_uptimes(conn: psycopg.Connection) -> None:
    """New days (inserted), then the same days written again over them (upserted, with
    other values and sums): the same table either way."""
    feed = Feed(conn, RULES)
    cols, again = columns(300, 7), columns(300, 8)
    again.ids[:] = cols.ids  # the same devices, other figures
    rows = sorted(random.Random(9).sample(range(300), 250))
    other = as_values(columns(40, 10), list(range(40)))
    other = [(i, DAY - timedelta(days=1), u, f) for i, _, u, f in other]  # another day
    for fp, by_columns in (("uptimes", False), ("columns", True)):
        write(feed, fp, cols, rows, by_columns, sums_of(cols.ids, 11), other)
        write(feed, fp, again, list(range(300)), by_columns, sums_of(cols.ids, 12), [])
    want = kept(conn, "uptimes")
    assert len(want) == 300 + 40
    assert any(r[13] is not None for r in want) and any(r[13] is None for r in want)
    assert any(r[10] == "" for r in want) and any("," in (r[10] or "") for r in want)
    assert kept(conn, "columns") == want
    assert newest(conn, "columns") == newest(conn, "uptimes") == DAY


def test_a_day_kept_meanwhile_is_upserted_with_the_same_rows(
    conn: psycopg.Connection, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """The day found not kept, then kept by another writer before the insert (here: the
    probe told so while a row was there): the insert fails, undone to its savepoint,
    and the upsert writes every row, that one too."""
    feed = Feed(conn, RULES)
    cols = columns(200, 13)
    rows = list(range(200))
    window = sums_of(cols.ids, 14)
    someone = columns(200, 15)
    someone.ids[:] = cols.ids
    for fp in ("reference", "raced"):
        write(feed, fp, someone, rows[150:], False, {}, [])  # another writer's rows
        conn.execute(
            "UPDATE kpi_device_days SET warning_ms = 7 WHERE fingerprint = %s", (fp,)
        )  # fmt: skip
        conn.commit()
    write(feed, "reference", cols, rows, True, window, [])
    real = rules.feed.queries()
    lying = dict(real, kept_any_on="SELECT false")
    monkeypatch.setattr(rules.feed, "queries", lambda: lying)
    with caplog.at_level(logging.INFO, logger=rules.feed.log.name):
        write(feed, "raced", cols, rows, True, window, [])
    assert "written meanwhile" in caplog.text
    want = kept(conn, "reference")
    assert len(want) == 200 and sum(r[5] == 7 for r in want) == 50  # W kept on those
    assert kept(conn, "raced") == want


@pytest.mark.parametrize("new", [True, False])
@pytest.mark.parametrize("error", ["raise_exception", "unique_violation"])
def test_a_write_that_fails_part_way_keeps_nothing(
    conn: psycopg.Connection, new: bool, error: str
) -> None:
    """The insert (a new day) or the upsert (a day kept before) fails at a row late in
    the key's order, after most rows were written (a unique violation too: the upsert
    it falls back to fails the same way): the error raised, nothing of the write kept,
    the rows kept before untouched, the newest day kept unchanged."""
    feed = Feed(conn, RULES)
    cols = columns(300, 16)
    last = max(cols.ids)
    earlier = [
        (i, DAY - timedelta(days=1), u, f)
        for i, _, u, f in as_values(columns(5, 18), [0, 1, 2, 3, 4])
    ]
    feed.keep_uptime_days("fp", earlier)
    if not new:  # the day kept before, with other figures
        again = columns(300, 17)
        again.ids[:] = cols.ids
        write(feed, "fp", again, list(range(300)), False, {}, [])
    kept_before = newest(conn, "fp")
    assert kept_before == (DAY - timedelta(days=1) if new else DAY)
    conn.execute(f"""
        CREATE FUNCTION fail_at() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            IF NEW.device_id = '{last}' THEN RAISE {error}; END IF;
            RETURN NEW;
        END $$;
        CREATE TRIGGER fail_at BEFORE INSERT OR UPDATE ON kpi_device_days
        FOR EACH ROW EXECUTE FUNCTION fail_at();
    """)  # fmt: skip
    conn.commit()
    before = kept(conn, "fp")
    conn.commit()
    older = [(i, DAY - timedelta(days=3), u, f) for i, _, u, f in as_values(cols, [0, 1])]
    with pytest.raises(psycopg.Error):
        write(feed, "fp", cols, list(range(300)), True, sums_of(cols.ids, 19), older)
    conn.rollback()
    assert kept(conn, "fp") == before
    assert newest(conn, "fp") == kept_before
    conn.execute("DROP TRIGGER fail_at ON kpi_device_days")
    conn.commit()
    write(feed, "fp", cols, list(range(300)), True, {}, older)  # the same write, now kept
    assert len(kept(conn, "fp")) == 5 + 300 + 2
    assert newest(conn, "fp") == DAY
