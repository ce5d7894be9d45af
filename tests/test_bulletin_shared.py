"""The daily bulletin's shared and lighter paths give what the plain ones give, on a real
store: the devices down for more than 24 h found from the day's own timelines (the two
days' timelines built for those only) against every device's two days; the low-yield
shares without the per-device section; the earlier days compared with held as integers
(DayFigures) against an Uptime per device; and the whole bulletin, in every format,
against the one made the plain way.

The fleet's history runs from noon two days before the bulletin's day; four devices fall
silent: two days before (down for at least 48 h at the end of the day), the evening and
half an hour before midnight of the day before (down for 28 h and 24.5 h), and one in the
early hours of the day (down for 23 h: not listed, but down most of the day).
"""

from __future__ import annotations

import io
import json
import zipfile
from collections.abc import Iterator
from datetime import UTC, date, datetime, time, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import psycopg
import pytest

from atmfleet.inventory import Inventory
from atmfleet.store.migrate import upgrade
from exporters.bulletin import build
from exporters.bulletin.messages import Messages
from exporters.bulletin.render import to_csv_zip, to_html, to_json, to_xlsx
from rules.config import load_rules
from rules.feed import Feed
from rules.report import Context, day_figures, low_yield_report, read_day_figures, tail_entries
from rules.tail import uptime_entries
from rules.uptime import dimension_key
from simulator.config import make_config
from simulator.fleet import generate_inventory
from tests.conftest import create_database, drop_database
from tests.simulated import store_simulated

pytestmark = pytest.mark.integration

TZ = ZoneInfo("Asia/Shanghai")
DAY = date(2026, 11, 20)
START = datetime.combine(DAY - timedelta(days=2), time(12), tzinfo=TZ)
END = datetime.combine(DAY + timedelta(days=1), time(2), tzinfo=TZ)


def _at(days: int, hour: int, minute: int = 0) -> datetime:
    return datetime.combine(DAY + timedelta(days=days), time(hour, minute), tzinfo=TZ)


INVENTORY: Inventory = generate_inventory(24, 13, prefix="sh")
#: Device -> when it falls silent (nothing stored from then on).
SILENT = {
    INVENTORY.devices[2].id: _at(-2, 18),
    INVENTORY.devices[5].id: _at(-1, 20),
    INVENTORY.devices[9].id: _at(-1, 23, 30),
    INVENTORY.devices[14].id: _at(0, 1),
}


@pytest.fixture(scope="module")
def db() -> Iterator[str]:
    url = create_database()
    try:
        with psycopg.connect(url, autocommit=True) as conn:
            upgrade(conn)
        silent_ms = {d: int(t.timestamp() * 1000) for d, t in SILENT.items()}
        store_simulated(
            url, INVENTORY, make_config({}), 13, START.astimezone(UTC), END.astimezone(UTC),
            heartbeat_s=300,
            keep=lambda e: e.device_id not in silent_ms or e.t < silent_ms[e.device_id],
        )  # fmt: skip
        yield url
    finally:
        drop_database(url)


@pytest.fixture
def conn(db: str) -> Iterator[psycopg.Connection]:
    with psycopg.connect(db) as c:
        yield c


def _context(conn: psycopg.Connection) -> Context:
    feed = Feed(conn, load_rules())
    return build.daily_context(feed, feed.inventory(), DAY, feed.now_ms())


class TestDownForLong:
    def test_the_candidates_give_every_device_s_answer(self, conn: psycopg.Connection) -> None:
        ctx = _context(conn)
        ctx.uptime_days()
        candidates = build.long_down_candidates(ctx)
        got = build.down_for_long(ctx, candidates)
        want = build.down_for_long(ctx)  # every device's two days
        assert got == want
        # The three silent since before the day's start; the fourth only for 23 h.
        assert set(got) == set(list(SILENT)[:3])
        assert max(length for _, length, _ in got.values()) == 48 * 3_600_000
        assert list(SILENT)[3] not in {d.id for d in candidates}  # up until 01:00
        assert len(candidates) < len(ctx.devices) // 2  # the others' timelines not built

    def test_a_device_is_down_throughout_only_without_a_break(self) -> None:
        from rules.labels import Label

        line = [(0, 10, Label.FAULT), (10, 20, Label.COMMUNICATIONS), (20, 30, Label.POWER)]
        assert build.down_throughout(line, 0, 30)
        assert build.down_throughout(line, 5, 25)
        assert not build.down_throughout([*line[:2], (20, 30, Label.AVAILABLE)], 5, 30)
        assert not build.down_throughout([*line[:2], (20, 30, Label.PLANNED)], 5, 30)
        assert not build.down_throughout([line[0], line[2]], 0, 30)  # a gap
        assert not build.down_throughout(line, 0, 31)  # ends too early
        assert not build.down_throughout([], 0, 1)


class TestLighterReports:
    def test_the_earlier_days_read_at_once_are_the_days_read_one_by_one(
        self, conn: psycopg.Connection
    ) -> None:
        plain = _context(conn)
        want = {k: day_figures(plain.shifted(k)) for k in (1, 2, 3)}  # computed, kept
        ctx = _context(conn)
        read_day_figures(ctx, DAY - timedelta(days=3), DAY - timedelta(days=1))
        got = {k: ctx.cache.get(("day_figures", "fleet", DAY - timedelta(days=k))) for k in want}
        assert got[1] is not None and got[2] is not None
        assert {k: v for k, v in got.items() if v is not None} == {
            k: want[k] for k, v in got.items() if v is not None
        }
        assert day_figures(ctx.shifted(3)) == want[3]

    def test_the_low_yield_shares_without_the_device_section(
        self, conn: psycopg.Connection
    ) -> None:
        whole = low_yield_report(_context(conn), "subbranch")
        light = low_yield_report(_context(conn), "subbranch", devices=False)
        assert light.rows == whole.rows and light.extra == whole.extra
        assert not light.sections and len(whole.section("devices").rows) == len(INVENTORY.devices)

    def test_the_earlier_days_as_integers_rank_as_their_uptime(
        self, conn: psycopg.Connection
    ) -> None:
        ctx = _context(conn)
        with_data = []
        for k in (1, 2, 3):
            earlier = ctx.shifted(k)
            figures = day_figures(earlier)
            assert figures is not None
            as_uptime = {d: f.uptime for d, f in figures.items()}
            for d, f in figures.items():
                up = as_uptime[d]
                assert (f.ratio, f.down_ms, f.has_data, f.scheduled_ms) == (
                    up.ratio, up.down_ms, up.has_data, up.scheduled_ms)  # fmt: skip
            want = uptime_entries(
                as_uptime, dimension_key(ctx.inventory, "subbranch"), ctx.target_of()
            )
            got = tail_entries(earlier, "uptime", "subbranch", earlier=True)
            assert got == want
            with_data.append(any(e.value is not None for e in got))
        assert with_data == [True, True, False]  # the history begins two days before


def _files(b: Any) -> dict[str, Any]:
    m = Messages(b.lang)
    labels = {k: m(k) for k in ("summary", "period", "generated", "nothing")}
    labels.update(m.prefixed("r."))
    with zipfile.ZipFile(io.BytesIO(to_csv_zip(b))) as z:
        csv = {n: z.read(n) for n in z.namelist()}
    with zipfile.ZipFile(io.BytesIO(to_xlsx(b, m("summary"), m("period"), labels))) as z:
        # every part of the workbook but its document properties (the time it was made)
        xlsx = {n: z.read(n) for n in z.namelist() if n != "docProps/core.xml"}
    return {"json": to_json(b), "csv": csv, "html": to_html(b, labels), "xlsx": xlsx}


class TestTheWholeBulletin:
    def test_equals_the_bulletin_made_the_plain_way(
        self, conn: psycopg.Connection, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        m = Messages("zh-CN")
        got = build.daily(_context(conn), m, "2026-11-21T00:30:00+08:00")
        # The plain way: every device's two days for the down-for-long list, the
        # low-yield report with its device section.
        monkeypatch.setattr(build, "long_down_candidates", lambda _ctx: None)
        plain_low_yield = low_yield_report
        monkeypatch.setattr(
            build, "low_yield_report", lambda ctx, by, devices=True: plain_low_yield(ctx, by)
        )
        want = build.daily(_context(conn), m, "2026-11-21T00:30:00+08:00")
        assert _files(got) == _files(want)
        doc = json.loads(_files(got)["json"])
        assert len(doc["tables"]["down_24h"]["rows"]) == 3
        assert doc["summary"]["down_24h"]["value"] == 3
