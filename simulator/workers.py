"""A big fleet published from several processes, each a slice of the devices.

One Python process generates and publishes about as fast as one core allows; a national
fleet live, or a month of history, needs more. :func:`publish_in_parts` forks ``n``
worker processes; worker ``k`` plays the ``k``-th contiguous slice of the devices (in id
order, the counters in the first: ``generate(..., part=(k, n))``) over its own gateway
connections (client ids ``<prefix>-w<k>-gw<i>``), paced by the same clock, and keeps the
ledger of its slice. Every device lives in exactly one worker, on one connection, so its
messages keep their order; they are exactly the messages of a single-process run.

The parent merges the parts into one :class:`~simulator.ledger.Ledger`: the counts, the
counters, the transaction days, every device's points and the repairs, and the
``messages.csv.gz`` rows merged by publish time (ties: the lower part first), which is
the single-process order. Ctrl-C / SIGTERM in the parent stops every worker cleanly.
"""

from __future__ import annotations

import contextlib
import gzip
import heapq
import itertools
import multiprocessing
import os
import pickle
import queue
import signal
import tempfile
import threading
import traceback
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import IO, Any

from atmfleet.errors import AtmfleetError
from atmfleet.inventory import Inventory
from atmfleet.settings import Settings
from simulator.config import SimConfig
from simulator.engine import generate
from simulator.ledger import Ledger
from simulator.publisher import BrokerError, FleetPublisher, Pacing, PublishStats

#: The ``published`` column (``iso``: always 24 characters) starts every messages row.
_STAMP = 24


@dataclass
class Run:
    """What every worker needs besides its part number."""

    inventory: Inventory
    config: SimConfig
    seed: int
    start: datetime
    end: datetime
    real_wills: bool
    heartbeat_s: int | None
    settings: Settings
    pool_size: int
    client_prefix: str
    pacing: Pacing | None
    hold_until: float | None


def pool_share(pool: int, k: int, n: int) -> int:
    """Worker ``k``'s share of ``pool`` gateway connections (at least one)."""
    return max(1, pool // n + (1 if k < pool % n else 0))


def _worker(run: Run, k: int, n: int, work: Path) -> None:
    """One part: publish it, keep its ledger, leave the result in ``work/part-k.pickle``.

    Ctrl-C reaches the whole process group: a worker ignores it and stops when the parent
    sends SIGTERM (a signal, not a shared lock a dying process could leave taken)."""
    local = threading.Event()
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, lambda *_: local.set())
    result: dict[str, Any] = {}
    try:
        with gzip.open(work / f"part-{k}.csv.gz", "wt", encoding="utf-8", newline="",
                       compresslevel=1) as messages:  # fmt: skip
            result = _play(run, k, n, local, messages)
    except AtmfleetError as exc:
        result = {"error": str(exc)}
    except BaseException:
        result = {"crash": traceback.format_exc()}
    finally:
        with (work / f"part-{k}.pickle").open("wb") as fh:
            pickle.dump(result, fh, protocol=pickle.HIGHEST_PROTOCOL)


def _play(run: Run, k: int, n: int, stop: threading.Event, messages: IO[str]) -> dict[str, Any]:
    ledger = Ledger(
        run.inventory, run.config, run.seed, heartbeat_s=run.heartbeat_s, messages_out=messages
    )
    emissions = generate(
        run.inventory, run.config, run.seed, run.start, run.end, real_wills=run.real_wills,
        heartbeat_s=run.heartbeat_s, on_repair=ledger.record_repair, part=(k, n),
    )  # fmt: skip
    publisher = FleetPublisher(
        run.settings,
        per_device=False,
        pool_size=pool_share(run.pool_size, k, n),
        client_prefix=f"{run.client_prefix}-w{k}",
        stop=stop,
    )
    stats = publisher.run(
        emissions, branch_of={d.id: d.branch for d in run.inventory.devices}.__getitem__,
        pacing=run.pacing, on_sent=ledger.record, hold_until=run.hold_until,
    )  # fmt: skip
    return {"stats": stats, "ledger": ledger.part()}


def publish_in_parts(
    run: Run,
    workers: int,
    ledger: Ledger,
    stop: threading.Event,
    *,
    messages: IO[str] | None = None,
    work_dir: Path | None = None,
) -> PublishStats:
    """Publish ``run`` from ``workers`` processes; merge their ledgers into ``ledger`` (and
    their messages rows into ``messages``, after its header). ``stop``: set by the
    caller's signal handler; the workers stop at once, acknowledge and disconnect.
    ``work_dir``: where the parts are kept until merged (best: beside the ledger)."""
    ctx = multiprocessing.get_context("fork")  # the inventory is inherited, not copied
    with tempfile.TemporaryDirectory(prefix=".simulate-", dir=work_dir) as tmp:
        work = Path(tmp)
        procs = [
            ctx.Process(target=_worker, args=(run, k, workers, work), daemon=True)
            for k in range(workers)
        ]
        for proc in procs:
            proc.start()
        stopping = False
        try:
            for proc in procs:
                while proc.is_alive():
                    if stop.is_set() and not stopping:
                        stopping = True
                        _terminate(procs)
                    proc.join(0.2)
        finally:
            if not stopping:
                _terminate(procs)
            for proc in procs:
                proc.join()
        results = []
        for k in range(workers):
            path = work / f"part-{k}.pickle"
            if not path.exists():
                raise AtmfleetError(f"simulator worker {k} died (exit code {procs[k].exitcode})")
            with path.open("rb") as fh:
                results.append(pickle.load(fh))
        for got in results:
            if "crash" in got:
                raise RuntimeError(f"a simulator worker failed:\n{got['crash']}")
        for got in results:
            if "error" in got:
                raise BrokerError(got["error"])
        total = PublishStats()
        for got in results:
            ledger.absorb(got["ledger"])
            s: PublishStats = got["stats"]
            total.published += s.published
            total.wills += s.wills
            total.connections += s.connections
            total.seconds = max(total.seconds, s.seconds)
            total.complete = total.complete and s.complete
        if messages is not None:
            merge_rows([work / f"part-{k}.csv.gz" for k in range(workers)], messages)
    return total


def _terminate(procs: list[Any]) -> None:
    for proc in procs:
        if proc.is_alive() and proc.pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, signal.SIGTERM)


def merge_rows(parts: list[Path], out: IO[str]) -> None:
    """The parts' messages rows (each in publish order, after a header) in publish order;
    rows published at the same millisecond keep the order of the parts.

    The merge runs in Python, the writing (a gzip file's compression, which lets go of
    the GIL) in a second thread: the two overlap on two cores."""
    with contextlib.ExitStack() as stack:
        streams = [
            _rows(stack.enter_context(gzip.open(p, "rt", encoding="utf-8", newline="")))
            for p in parts
        ]
        merged = heapq.merge(*streams, key=_stamp)
        with _Writer(out) as writer:
            while chunk := list(itertools.islice(merged, _CHUNK_ROWS)):
                writer.put("".join(chunk))


def _stamp(row: str) -> str:
    return row[:_STAMP]


#: Rows handed to the writing thread at once.
_CHUNK_ROWS = 20_000


class _Writer:
    """Writes text to ``out`` from a thread of its own, a few chunks behind the caller."""

    def __init__(self, out: IO[str]) -> None:
        self._out = out
        self._queue: queue.Queue[str | None] = queue.Queue(maxsize=4)
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="messages-writer", daemon=True)

    def __enter__(self) -> _Writer:
        self._thread.start()
        return self

    def put(self, text: str) -> None:
        if self._error is not None:
            raise self._error
        self._queue.put(text)

    def _run(self) -> None:
        while (text := self._queue.get()) is not None:
            if self._error is None:
                try:
                    self._out.write(text)
                except BaseException as exc:  # handed to the caller
                    self._error = exc

    def __exit__(self, *exc: object) -> None:
        self._queue.put(None)
        self._thread.join()
        if self._error is not None and exc[0] is None:
            raise self._error


def _rows(fh: IO[str]) -> Iterator[str]:
    next(fh, None)  # the header
    yield from fh
