"""A fleet published from several processes is the fleet of one: every device's messages
(payloads, timestamps, order) and the ledger (truth, repairs, counters, transaction days,
the messages rows) are exactly those of the single-process run."""

from __future__ import annotations

import gzip
import heapq
import io
import threading
from collections import defaultdict
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from atmfleet.settings import Settings
from simulator.config import SimConfig
from simulator.engine import Emission, generate
from simulator.fleet import generate_inventory
from simulator.ledger import Ledger, open_messages
from simulator.workers import Run, merge_rows, pool_share, publish_in_parts

START = datetime(2026, 11, 2, 6, tzinfo=UTC)


def per_device(emissions: list[Emission]) -> dict[str, list[Emission]]:
    out: dict[str, list[Emission]] = defaultdict(list)
    for e in emissions:
        out[e.device_id].append(e)
    return out


@pytest.mark.parametrize("parts", [2, 3])
def test_the_parts_are_the_whole_run(parts: int) -> None:
    inv = generate_inventory(40, seed=2, prefix="pt-")
    end = START + timedelta(days=2)
    whole = list(generate(inv, SimConfig(), 2, START, end))
    pieces = [
        list(generate(inv, SimConfig(), 2, START, end, part=(k, parts))) for k in range(parts)
    ]
    devices = [{e.device_id for e in p if e.kind != "counter"} for p in pieces]
    assert all(devices) and sum(map(len, devices)) == len(set().union(*devices)) == 40
    assert [e for e in pieces[0] if e.kind == "counter"] == [
        e for e in whole if e.kind == "counter"
    ]
    assert sum(map(len, pieces)) == len(whole)
    assert {d: s for p in pieces for d, s in per_device(p).items()} == per_device(whole)
    # Merged by publish time, the lower part first on a tie: the single-process order.
    assert list(heapq.merge(*pieces, key=lambda e: e.t)) == whole


def test_merged_rows_keep_the_order_of_the_parts(tmp_path: Path) -> None:
    rows = [["2026-11-02T06:00:00.000Z,a\r\n", "2026-11-02T06:00:01.000Z,c\r\n"],
            ["2026-11-02T06:00:00.000Z,b\r\n", "2026-11-02T06:00:00.500Z,x\r\n"]]  # fmt: skip
    paths = []
    for k, part in enumerate(rows):
        paths.append(tmp_path / f"p{k}.gz")
        with gzip.open(paths[-1], "wt", newline="") as fh:
            fh.writelines(["header\r\n", *part])
    out = io.StringIO()
    merge_rows(paths, out)
    assert [r.split(",")[1] for r in out.getvalue().splitlines()] == ["a", "b", "x", "c"]


def test_pool_shares_add_up() -> None:
    assert [pool_share(16, k, 3) for k in range(3)] == [6, 5, 5]
    assert [pool_share(2, k, 4) for k in range(4)] == [1, 1, 1, 1]


@pytest.mark.integration
def test_published_from_three_processes_the_ledger_is_the_single_process_one(
    mqtt_url: str, run_id: str, tmp_path: Path
) -> None:
    inv = generate_inventory(30, seed=4, prefix=f"wk{run_id}-")
    config, end = SimConfig(), START + timedelta(days=1)

    single_rows = io.StringIO()
    single = Ledger(inv, config, 4, heartbeat_s=300, messages_out=single_rows)
    for e in generate(inv, config, 4, START, end, heartbeat_s=300,
                      on_repair=single.record_repair):  # fmt: skip
        single.record(e)
    single.finish(int(end.timestamp() * 1000))

    messages = open_messages(tmp_path)
    ledger = Ledger(inv, config, 4, heartbeat_s=300, messages_out=messages)
    run = Run(inv, config, 4, START, end, False, 300, Settings(mqtt_url=mqtt_url), 3,
              f"test-{run_id}", None, None)  # fmt: skip
    stats = publish_in_parts(run, 3, ledger, threading.Event(), messages=messages,
                             work_dir=tmp_path)  # fmt: skip
    messages.close()
    ledger.finish(int(end.timestamp() * 1000))

    assert stats.complete and stats.connections == 3
    assert stats.published == sum(single.counts.values()) > 0
    assert ledger.intervals == single.intervals
    assert ledger.repairs == single.repairs
    assert ledger.counters == single.counters
    assert sorted(ledger.txn_days.items()) == sorted(single.txn_days.items())
    assert ledger.summary() == single.summary()
    with gzip.open(tmp_path / "messages.csv.gz", "rt", encoding="utf-8", newline="") as fh:
        assert fh.read() == single_rows.getvalue()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["messages.csv.gz"]
