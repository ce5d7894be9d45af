"""Kept closed days written by the feed (binary COPY into a temporary table, inserted in
the key's order: ``Feed.keep_days``, ``Feed.keep_uptime_days``) equal the rows the
reference upsert writes (the arrays sent as parameters, inserted as given), on plain
PostgreSQL and TimescaleDB: new days, days kept again (A, S and the financial count over
a day kept in full, a day kept in full over one kept for low-yield only), W set before
(an existing row keeps it), days without any label, computed_at refreshed on each write.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from datetime import date, timedelta

import psycopg
import pytest

from atmfleet.store.migrate import upgrade
from rules.config import load_rules
from rules.feed import Feed
from rules.labels import Label
from rules.uptime import Uptime

pytestmark = pytest.mark.integration

RULES = load_rules()
DAY = date(2026, 11, 20)
H = 3_600_000
LABELS = tuple(Label)

#: The upserts as they were first written (arrays as parameters, one statement each).
REFERENCE_KEEP_DAYS = """
INSERT INTO kpi_device_days (fingerprint, device_id, day, available_ms, scheduled_ms, financial)
SELECT %(fingerprint)s, * FROM unnest(%(ids)s::text[], %(days)s::date[], %(available)s::int8[],
                                     %(scheduled)s::int8[], %(financial)s::int8[])
ON CONFLICT (fingerprint, device_id, day) DO UPDATE
SET available_ms = excluded.available_ms, scheduled_ms = excluded.scheduled_ms,
    financial = excluded.financial, computed_at = now()
"""
REFERENCE_KEEP_UPTIME_DAYS = """
INSERT INTO kpi_device_days (fingerprint, device_id, day, available_ms, scheduled_ms, financial,
                             tech_scheduled_ms, tech_available_ms, planned_excluded_ms,
                             monitored_ms, labels, label_ms)
SELECT %(fingerprint)s, u.id, u.day, u.a, u.s, u.f, u.ts, u.ta, u.p, u.m, u.labels,
       string_to_array(u.ms, ',')::int8[]
FROM unnest(%(ids)s::text[], %(days)s::date[], %(available)s::int8[], %(scheduled)s::int8[],
            %(financial)s::int8[], %(tech_scheduled)s::int8[], %(tech_available)s::int8[],
            %(planned)s::int8[], %(monitored)s::int8[], %(labels)s::text[], %(ms)s::text[])
     AS u (id, day, a, s, f, ts, ta, p, m, labels, ms)
ON CONFLICT (fingerprint, device_id, day) DO UPDATE
SET available_ms = excluded.available_ms, scheduled_ms = excluded.scheduled_ms,
    financial = excluded.financial, tech_scheduled_ms = excluded.tech_scheduled_ms,
    tech_available_ms = excluded.tech_available_ms,
    planned_excluded_ms = excluded.planned_excluded_ms, monitored_ms = excluded.monitored_ms,
    labels = excluded.labels, label_ms = excluded.label_ms, computed_at = now()
"""


@pytest.fixture
def conn(flavour_url: str) -> Iterator[psycopg.Connection]:
    url = flavour_url
    with psycopg.connect(url, autocommit=True) as c:
        upgrade(c, timezone=RULES.timezone)
    with psycopg.connect(url) as c:
        yield c


def _reference_days(
    conn: psycopg.Connection, fp: str, values: list[tuple[str, date, tuple[int, int, int]]]
) -> None:
    conn.execute(REFERENCE_KEEP_DAYS, {
        "fingerprint": fp, "ids": [v[0] for v in values], "days": [v[1] for v in values],
        "available": [v[2][0] for v in values], "scheduled": [v[2][1] for v in values],
        "financial": [v[2][2] for v in values],
    })  # fmt: skip
    conn.commit()


def _reference_uptime_days(
    conn: psycopg.Connection, fp: str, values: list[tuple[str, date, Uptime, int]]
) -> None:
    conn.execute(REFERENCE_KEEP_UPTIME_DAYS, {
        "fingerprint": fp, "ids": [v[0] for v in values], "days": [v[1] for v in values],
        "available": [v[2].available_ms for v in values],
        "scheduled": [v[2].scheduled_ms for v in values], "financial": [v[3] for v in values],
        "tech_scheduled": [v[2].tech_scheduled_ms for v in values],
        "tech_available": [v[2].tech_available_ms for v in values],
        "planned": [v[2].planned_excluded_ms for v in values],
        "monitored": [v[2].monitored_ms for v in values],
        "labels": [",".join(v[2].by_label) for v in values],
        "ms": [",".join(map(str, v[2].by_label.values())) for v in values],
    })  # fmt: skip
    conn.commit()


def _uptime(rng: random.Random) -> Uptime:
    chosen = rng.sample(LABELS, rng.randrange(0, 4))  # some days without any label
    by_label = {label: rng.randrange(0, 24 * H) for label in chosen}
    s = rng.choice((0, 8 * H, 24 * H))
    a = rng.randrange(0, s + 1)
    return Uptime(by_label, s, a, s, rng.randrange(0, s + 1), rng.randrange(0, H), s, 1)


def _kept(conn: psycopg.Connection, fp: str) -> list[tuple[object, ...]]:
    return conn.execute(
        """
        SELECT device_id, day, available_ms, scheduled_ms, financial, warning_ms,
               tech_scheduled_ms, tech_available_ms, planned_excluded_ms, monitored_ms, labels,
               label_ms, array_ndims(label_ms), computed_at > '2000-01-02'
        FROM kpi_device_days WHERE fingerprint = %s ORDER BY device_id, day
        """,
        (fp,),
    ).fetchall()


def test_kept_rows_equal_the_reference_upsert(conn: psycopg.Connection) -> None:
    feed = Feed(conn, RULES)
    rng = random.Random(22)
    devices = [f"D{i:03d}" for i in rng.sample(range(1000), 80)]  # not in the key's order
    days = [DAY - timedelta(days=back) for back in range(6)]
    full = [(d, day, _uptime(rng), rng.randrange(0, 150)) for d in devices for day in days[2:]]
    rng.shuffle(full)
    short = [
        (d, day, (rng.randrange(0, 8 * H), 8 * H, rng.randrange(0, 150)))
        for d in devices
        for day in days[:4]  # over days kept in full (days[2:4]) and new ones
        if rng.random() < 0.7
    ]
    again = [(d, day, _uptime(rng), rng.randrange(0, 150)) for d in devices for day in days[1:3]]
    for fp, days_of, uptime_days in (
        ("reference", _reference_days, _reference_uptime_days),
        ("feed", feed.keep_days, feed.keep_uptime_days),
    ):
        uptime_days(*(() if fp == "feed" else (conn,)), fp, full)  # type: ignore[operator]
        # W set on some kept days, the written time put back: kept again, a row keeps W
        # and is marked written anew.
        conn.execute(
            "UPDATE kpi_device_days SET warning_ms = scheduled_ms / 3, computed_at = '2000-01-01'"
            " WHERE fingerprint = %s AND device_id < 'D500'",
            (fp,),
        )
        conn.commit()
        days_of(*(() if fp == "feed" else (conn,)), fp, short)  # type: ignore[operator]
        uptime_days(*(() if fp == "feed" else (conn,)), fp, again)  # type: ignore[operator]
    reference = _kept(conn, "reference")
    assert len(reference) == len({(d, day) for d, day, *_ in full + short + again})
    assert any(row[5] is not None for row in reference)  # W kept on some rows
    assert any(row[10] == "" for row in reference)  # a day kept without any label
    assert any(row[10] is None for row in reference)  # a day kept for low-yield only
    assert not all(row[13] for row in reference)  # some rows not written again
    assert _kept(conn, "feed") == reference
