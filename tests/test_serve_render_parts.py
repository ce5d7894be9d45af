"""``atmfleet serve``'s per-device families, spliced from one rendering to the next.

Each per-device family is kept as one bytes object with the offset of every device's
line; a later rendering of the same devices in the same order writes again only the
lines of the devices whose row changed and splices them in. Whatever changes from one
rendering to the next (a state, a line that appears or goes, a 0 that becomes -0.0, a
device added, the order changed, one rendering of another fleet in between), the
exposition must be what ``generate_latest`` writes for that snapshot, byte for byte, and
the parts a scrape sends must join into it.
"""

from __future__ import annotations

import gzip
import random
from dataclasses import replace

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from exporters import metrics
from exporters.metrics import (
    DeviceRow,
    Exporter,
    FleetCollector,
    Snapshot,
    Targets,
    render,
    render_parts,
)

STATES = ("in_service", "degraded", "fault", "offline", "unknown", "planned_maintenance")


def row(i: int, rnd: random.Random) -> DeviceRow:
    return DeviceRow(
        f"D{i:04d}", f"B{i % 7}", "S1", "2", "atm", 'Ven"dor' if i % 5 == 0 else "V",
        "off_site", "M\\1" if i % 3 == 0 else "M2", rnd.choice(STATES),
        rnd.choice((None, 0.0, -0.0, 1795802400.5, float(i))),
        rnd.choice((None, 0.0, 1795802401.0)),
        rnd.choice((None, 0.0, -0.0, 0.25, 1 / 3)),
        rnd.random() < 0.5,
    )  # fmt: skip


def snapshot(rows: list[DeviceRow]) -> Snapshot:
    return Snapshot(targets=Targets({"1": 0.98}, 0.6, 0.6, 0.05), database_up=True, devices=rows)


def test_spliced_renderings_are_generate_latest_byte_for_byte() -> None:
    rnd = random.Random(16)
    rows = [row(i, rnd) for i in range(300)]
    current = [snapshot(rows)]
    registry = CollectorRegistry()
    registry.register(FleetCollector(lambda: current[0]))

    def check(new: list[DeviceRow]) -> None:
        current[0] = snapshot(new)
        want = generate_latest(registry)
        assert render(registry) == want
        assert b"".join(render_parts(registry)) == want

    check(rows)
    check(rows)  # nothing changed: the same objects
    check([replace(r) for r in rows])  # equal rows, new objects (a full read)
    for _ in range(30):  # a few devices change at a time
        rows = list(rows)
        for i in rnd.sample(range(len(rows)), rnd.choice((1, 5, 40, 300))):
            fresh = row(i, rnd)
            rows[i] = replace(rows[i], state=fresh.state, since=fresh.since,
                              last_seen=fresh.last_seen, cash_ratio=fresh.cash_ratio,
                              in_window=fresh.in_window)  # fmt: skip
        check(rows)
    # 0.0 to -0.0 (equal rows, different lines) and back
    zero = [replace(r, since=0.0, cash_ratio=0.0) for r in rows]
    check(zero)
    check([replace(r, since=-0.0, cash_ratio=-0.0) for r in zero])
    check(zero)
    check([*rows, row(300, rnd)])  # one more device
    check(rows[:-1])  # one fewer
    check(list(reversed(rows)))  # another order
    check(rows)
    check([row(i, rnd) for i in range(1000, 1010)])  # another fleet in between
    check(rows)
    check([])
    check(rows)


class _Current:
    def __init__(self, snap: Snapshot) -> None:
        self.snap = snap

    def read(self) -> Snapshot:
        return self.snap


def test_the_gzipped_scrape_is_the_exposition(monkeypatch: pytest.MonkeyPatch) -> None:
    """Long parts are gzip members of their own, kept while the part is the same: what a
    client decompresses is the exposition, after every change."""
    monkeypatch.setattr(metrics, "GZIP_OWN_MEMBER", 100)
    rnd = random.Random(7)
    rows = [row(i, rnd) for i in range(300)]
    source = _Current(snapshot(rows))
    exporter = Exporter(source, CollectorRegistry(), source.snap.targets)
    for step in range(8):
        if step % 2:
            rows = list(rows)
            i = rnd.randrange(len(rows))
            rows[i] = replace(rows[i], state="fault" if rows[i].state != "fault" else "offline")
            source.snap = snapshot(rows)
        exporter.refresh()
        body = exporter.exposition()
        assert b"atmfleet_device_state{" in body
        assert gzip.decompress(exporter.exposition(gzipped=True)) == body
        assert b"".join(exporter.exposition_parts()) == body
