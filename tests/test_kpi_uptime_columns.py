"""The uptime of one day over columns equals the reference, device by device and report
by report, on varied fleets in the store.

- :func:`rules.feed.uptime_day_columns` (the day's inventory, runs and financial counts
  read packed in one statement, the timelines swept over numpy arrays) gives every
  in-fleet device of a scope the same integers as :func:`rules.feed.uptime_for_reference`
  (every timeline built and swept in Python) and the same financial count as
  :meth:`rules.feed.Feed.financial_days`, with and without a collector outage, for a day
  still open, just closed and long closed;
- :func:`rules.cli.uptime_day_report` (the groups added up over arrays) prints the same
  report, table and JSON, as :func:`rules.report.uptime_report` over the reference's
  per-device figures, for every scope kind and every dimension but ``device``;
- a closed day kept in full is read as columns (the kept rows, one per device), a day
  partly kept is left to the reference (None), and the command prints the same in each
  case;
- :func:`rules.timeline.sweep_columns` equals :func:`rules.timeline.points_totals` on
  random points, ties on a device's time included (several points at one ts).

The fleet: tests/test_kpi_fast_path.py's ``fill`` (random runs of every state, silent
gaps, presence, power cuts, a device never heard from, devices commissioned on the day
or after it and decommissioned, mixed heartbeats and service windows, approved stops of
a device and of a branch, a collector outage).
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from datetime import date

import numpy as np
import psycopg
import pytest
from click.testing import CliRunner

from app.cli import cli
from rules.cli import uptime_day_report
from rules.config import load_rules
from rules.feed import Feed, uptime_day_columns, uptime_for_reference, window_days
from rules.labels import Label
from rules.report import Context, Scope, render, to_json, uptime_report
from rules.timeline import (
    LABELS,
    STATE,
    Point,
    PointColumns,
    Presence,
    label_code,
    merge_spans,
    points_totals,
    sweep_columns,
    timeline_of_points,
)
from rules.uptime import (
    UptimePolicy,
    day_span,
    dimension_key,
    label_totals,
    uptime_columns,
    uptime_from_totals,
)
from tests.test_kpi_fast_path import filled

pytestmark = pytest.mark.integration

RULES = load_rules()
DAY = date(2026, 11, 20)
H = 3_600_000
SCOPES = ("fleet", "tier:1", "tier:3", "subbranch:S2", "branch:B1", "type:atm", "vendor:V")
BY = ("subbranch", "branch", "tier", "type", "placement", "vendor", "fleet")


@pytest.fixture(params=["postgres", pytest.param("timescale", marks=pytest.mark.timescale)])
def conn(request: pytest.FixtureRequest) -> Iterator[psycopg.Connection]:
    yield from filled(request, n=60)


def without_outages(conn: psycopg.Connection) -> None:
    conn.execute("DELETE FROM collector_outages")
    conn.commit()


def horizons() -> list[int]:
    lo = day_span(DAY, RULES.tz)[0]
    # inside the day (the rest not counted yet), at its end, and long past it (closed)
    return [lo + 10 * H + 17, lo + 24 * H, lo + 72 * H]


def reference_context(feed: Feed, scope: str, horizon: int) -> Context:
    """A report's context whose day is the reference's (every timeline built)."""
    ctx = Context.make(feed, feed.inventory(), Scope.parse(scope), DAY, DAY, horizon)
    ctx.cache[("uptime", str(ctx.scope), DAY, DAY)] = uptime_for_reference(
        feed, ctx.devices, DAY, DAY, horizon
    )
    return ctx


@pytest.mark.parametrize("outage", [False, True])
def test_every_device_equals_the_reference(conn: psycopg.Connection, outage: bool) -> None:
    if not outage:
        without_outages(conn)
    feed = Feed(conn, RULES)
    swept_some = False
    for horizon in horizons():
        for scope in SCOPES:
            ctx = reference_context(feed, scope, horizon)
            want = ctx.uptime_days().per_device
            cols = uptime_day_columns(feed, ctx.scope.kind, ctx.scope.value, DAY, horizon)
            assert cols is not None, scope
            assert cols.ids == [d.id for d in ctx.devices] == list(want), scope
            for row, device_id in enumerate(cols.ids):
                assert cols.uptime(row) == want[device_id][DAY], (scope, device_id)
            fin = feed.financial_days(DAY, DAY)
            assert cols.financial.tolist() == [fin.get(d, {}).get(DAY, 0) for d in cols.ids]
            target = ctx.target_of()
            assert cols.targets.tolist() == [target(d) for d in cols.ids]
            for dim in ("branch", "subbranch", "tier", "type", "placement", "vendor"):
                key = dimension_key(ctx.inventory, dim)
                assert cols.group_of(dim) == [key(d) for d in cols.ids], dim
            swept_some |= bool(cols.figures[:, 0].any())
    assert swept_some
    labels = {label for row in cols.by_label for label, v in zip(LABELS, row, strict=True) if v}
    assert labels >= {Label.AVAILABLE, Label.FAULT, Label.COMMUNICATIONS, Label.POWER}
    assert Label.UNKNOWN in labels or not outage


@pytest.mark.parametrize("outage", [False, True])
def test_the_report_equals_the_reference(conn: psycopg.Connection, outage: bool) -> None:
    if not outage:
        without_outages(conn)
    feed = Feed(conn, RULES)
    for horizon in horizons()[1:]:
        for scope in SCOPES:
            for by in BY:
                want = uptime_report(reference_context(feed, scope, horizon), by)
                got = uptime_day_report(feed, Scope.parse(scope), DAY, horizon, by)
                assert got is not None
                assert to_json(got) == to_json(want), (scope, by)
                assert render(got) == render(want), (scope, by)


def test_a_kept_day_is_read_as_columns(
    conn: psycopg.Connection, monkeypatch: pytest.MonkeyPatch
) -> None:
    without_outages(conn)
    feed = Feed(conn, RULES)
    horizon = feed.now_ms()  # the command's horizon: the day long closed
    assert horizon > horizons()[-1]
    want = {by: to_json(uptime_report(reference_context(feed, "fleet", horizon), by))
            for by in ("subbranch", "type")}  # fmt: skip
    computed = uptime_day_columns(feed, "fleet", "fleet", DAY, horizon)
    assert computed is not None
    window_days(feed, feed.inventory().devices, DAY, DAY, horizon)  # kpi keep-days
    # The kept rows changed under it are what it answers (it reads them).
    conn.execute("UPDATE kpi_device_days SET financial = financial + 1000 WHERE day = %s", (DAY,))
    conn.commit()
    read = uptime_day_columns(feed, "fleet", "fleet", DAY, horizon)
    assert read is not None and read.ids == computed.ids
    for row in range(len(read.ids)):
        assert read.uptime(row) == computed.uptime(row)
    assert read.financial.tolist() == [n + 1000 for n in computed.financial.tolist()]
    assert read.targets.tolist() == computed.targets.tolist()
    assert read.groups == computed.groups
    conn.execute("UPDATE kpi_device_days SET financial = financial - 1000 WHERE day = %s", (DAY,))
    conn.commit()
    # Some devices not kept: left to the reference (None).
    conn.execute(
        "DELETE FROM kpi_device_days WHERE day = %s AND device_id = %s", (DAY, computed.ids[3])
    )
    conn.commit()
    assert uptime_day_columns(feed, "fleet", "fleet", DAY, horizon) is None
    # The command: the day partly kept (the reference), wholly kept (the kept columns)
    # and not kept (the columns computed).
    info = conn.info
    url = f"postgresql://{info.user}@{info.host}:{info.port}/{info.dbname}"
    monkeypatch.setenv("ATMFLEET_DATABASE_URL", url)
    monkeypatch.delenv("ATMFLEET_RULES_FILE", raising=False)
    for kept in ("partly", "wholly", "not"):
        if kept == "wholly":
            window_days(feed, feed.inventory().devices, DAY, DAY, horizon)
        if kept == "not":
            conn.execute("DELETE FROM kpi_device_days WHERE day = %s", (DAY,))
            conn.commit()
        for by in ("subbranch", "type"):
            result = CliRunner().invoke(
                cli, ["kpi", "uptime", "--date", str(DAY), "--by", by, "--json"],
                catch_exceptions=False,
            )  # fmt: skip
            assert result.exit_code == 0, result.output
            assert result.output.rstrip("\n") == want[by].rstrip("\n"), (kept, by)


def _random_fleet(
    rng: random.Random, n: int, start: int, labels: list[Label], edges: list[int] | None = None
) -> tuple[PointColumns, list[list[Point]], list[list[Presence]], list[int]]:
    """``n`` devices' random runs and presence, as columns and as each device's points and
    presence, and their heartbeats; now and then a run starts on one of ``edges``."""
    runs: list[list[int]] = [[], [], [], [], [], []]
    presence: list[tuple[int, Presence]] = []
    points: list[list[Point]] = [[] for _ in range(n)]
    pres: list[list[Presence]] = [[] for _ in range(n)]
    beats = [rng.choice((60, 300)) for _ in range(n)]
    for d in range(n):
        t = start - rng.randrange(0, 4 * H)
        for _ in range(rng.randrange(0, 12)):
            # now and then on an outage's edge: a tie between its point and a run's
            t = rng.choice(edges) if edges and rng.random() < 0.1 else t
            # on a coarse grid, so points tie on ts (and on more) now and then
            t += rng.choice((0, 0, 60_000, 600_000, 2 * H, 5 * H))
            e = t + rng.choice((0, 60_000, H, 3 * H))
            label, hb, seq = rng.choice(labels), rng.choice((60, 300)), rng.randrange(3)
            for col, v in zip(runs, (d, t, seq, e, label_code(label), hb), strict=True):
                col.append(v)
            points[d].append((t, STATE, seq, e, label, hb))
            if rng.random() < 0.2:
                p = Presence(t + rng.choice((0, 60_000)), rng.random() < 0.5)
                presence.append((d, p))
                pres[d].append(p)
    cols = PointColumns.of(tuple(np.asarray(c, np.int64) for c in runs), presence)  # type: ignore[arg-type]
    return cols, points, pres, beats


def test_the_column_sweep_equals_the_points_sweep() -> None:
    rng = random.Random(7)
    policy = UptimePolicy.from_rules(RULES)
    labels = [Label.AVAILABLE, Label.FAULT, Label.PLANNED, Label.SUPERVISOR, Label.CLOSED]
    start, until = 1_000_000, 1_000_000 + 24 * H
    span_sets = [[(start, until)], [(start + 9 * H, start + 17 * H)],
                 [(start, start + 6 * H), (start + 22 * H, until)], []]  # fmt: skip
    for _ in range(30):
        n = rng.randrange(1, 40)
        cols, points, pres, beats = _random_fleet(rng, n, start, labels)
        span_set = [rng.randrange(len(span_sets)) for _ in range(n)]
        met = np.full((n, len(LABELS)), 2**62, np.int64)
        got = sweep_columns(
            cols, n, start, until, 3.0, np.asarray(beats, np.int64), span_set, span_sets, met
        )
        # Swept a slice of the devices at a time: the same totals, the same labels met.
        sliced_met = np.full((n, len(LABELS)), 2**62, np.int64)
        sliced = sweep_columns(
            cols, n, start, until, 3.0, np.asarray(beats, np.int64), span_set, span_sets,
            sliced_met, slice_of=rng.choice((1, 3, 7)),
        )  # fmt: skip
        assert sliced.tolist() == got.tolist()
        assert sliced_met.tolist() == met.tolist()
        figures = uptime_columns(got, policy)
        for d in range(n):
            (want,) = points_totals(
                points[d], start, until, until, [span_sets[span_set[d]]], presence=pres[d],
                timeout_factor=3.0, default_heartbeat_s=beats[d],
            )  # fmt: skip
            assert {LABELS[i]: int(v) for i, v in enumerate(got[d]) if v} == want, d
            up = uptime_from_totals(want, policy)
            assert figures[d].tolist() == [
                up.scheduled_ms, up.available_ms, up.tech_scheduled_ms, up.tech_available_ms,
                up.planned_excluded_ms, up.monitored_ms,
            ], d  # fmt: skip


def test_the_column_sweep_with_outages_equals_the_timeline() -> None:
    """Our outages (edges as every device's points, their time unknown): each device's
    time by label and the order it meets the labels in, as the timeline built with the
    outages and summed inside its spans (:func:`rules.uptime.label_totals`)."""
    rng = random.Random(11)
    labels = [Label.AVAILABLE, Label.FAULT, Label.PLANNED, Label.UNKNOWN, Label.CLOSED]
    start, until = 1_000_000, 1_000_000 + 24 * H
    span_sets = [[(start, until)], [(start + 9 * H, start + 17 * H)],
                 [(start, start + 6 * H), (start + 22 * H, until)], []]  # fmt: skip
    unknown_met = 0
    for case in range(40):
        n = rng.randrange(1, 30)
        # from before the day (the unknown time before monitoring began), inside it,
        # touching its end, or never ending
        raw = [
            (start - 5 * H, start + rng.randrange(0, 8) * H),
            *((t, t + rng.choice((60_000, H, 4 * H)))
              for t in (start + rng.randrange(0, 24) * H for _ in range(rng.randrange(0, 3)))),
        ]  # fmt: skip
        if rng.random() < 0.3:
            raw.append((start + 20 * H, 2**62))
        outages = merge_spans(raw[rng.randrange(0, 2) :])
        edges = [t for span in outages for t in span]
        cols, points, pres, beats = _random_fleet(rng, n, start, labels, edges)
        span_set = [rng.randrange(len(span_sets)) for _ in range(n)]
        met = np.full((n, len(LABELS)), 2**62, np.int64)
        got = sweep_columns(
            cols, n, start, until, 3.0, np.asarray(beats, np.int64), span_set, span_sets, met,
            slice_of=rng.choice((1, 4, 64)), outages=outages,
        )  # fmt: skip
        for d in range(n):
            line = timeline_of_points(
                points[d][:], start, until, horizon=until, presence=pres[d],
                outages=outages, timeout_factor=3.0, default_heartbeat_s=beats[d],
            )  # fmt: skip
            want = label_totals(line, span_sets[span_set[d]])
            assert {LABELS[i]: int(v) for i, v in enumerate(got[d]) if v} == want, (case, d)
            met_order = [LABELS[i] for i in np.argsort(met[d], kind="stable") if got[d][i]]
            assert met_order == list(want), (case, d)
        unknown_met += int(got[:, label_code(Label.UNKNOWN)].astype(bool).sum())
    assert unknown_met > 100  # the outages' time was counted, in many devices' spans
