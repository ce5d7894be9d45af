"""The demo's history, stored the way the collector stores what it receives.

Every message of the history goes through the collector's decoder (``collector.decode``:
validated against the protocol, a bad one becomes a dead letter) and its batch writer
(``BatchWriter``), received at its publish time, in batches of :data:`HISTORY_BATCH` —
not through the broker, whose in-flight window would make every batch of 100 wait for a
database round trip.

Decoding is most of the work, so :data:`HISTORY_WORKERS` processes decode and write side
by side, each for its own branches: every device's (and branch's) messages go to one
process in the order they were generated, as a collector group's hash-shared subscription
keeps them (the writers are safe side by side, as collectors are). The processes are
started before the database is up (their imports overlap its start) and fed by
:meth:`HistoryWriters.store`. This module imports little: it is what each process loads.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import signal
import sys
import threading
import zlib
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from simulator.engine import Emission

#: The collector id the history's rows carry (the live part's carry the collector's).
HISTORY_ID = "atmfleet-demo-history"
#: Messages per transaction (the collector's batches are smaller because it acknowledges
#: each one to the broker).
HISTORY_BATCH = 5000
#: Processes that decode and write the history side by side.
HISTORY_WORKERS = 2

#: (topic, payload, publish time in ms) of one message.
Raw = tuple[str, bytes, int]


class _Progress(Protocol):
    sent: int
    sim_t: int
    stored: int


class HistoryError(Exception):
    """A history process failed; the message says how."""


def received(t: int) -> datetime:
    """A simulated publish time (ms) as the instant the collector received the message."""
    return datetime(1970, 1, 1, tzinfo=UTC) + timedelta(milliseconds=t)


def store_batch(writer: Any, batch: list[Raw]) -> int:
    """Decode and write one batch as the collector does; the messages committed (stored,
    already stored, or dead-lettered)."""
    from atmfleet.store.writer import Accepted, Rejected
    from collector.decode import decode

    accepted: list[Accepted] = []
    rejected: list[Rejected] = []
    for topic, payload, t in batch:
        got = decode(topic, payload, received(t))
        if isinstance(got, Accepted):
            accepted.append(got)
        else:
            rejected.append(got)
    result = writer.write(accepted, rejected)
    return int(sum(result.stored.values()) + result.duplicates + len(result.dead))


def _die_with_parent() -> None:  # pragma: no cover - runs in the child
    if sys.platform.startswith("linux"):
        import ctypes

        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL(None).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def _worker(inbox: Any, outbox: Any, index: int) -> None:  # pragma: no cover - a child
    """One history process: the database URL first, then batches until None."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the group: the demo stops it
    _die_with_parent()
    try:
        from atmfleet.store.connect import connect
        from atmfleet.store.writer import BatchWriter

        url = inbox.get()
        with connect(url, application_name=f"{HISTORY_ID}-{index}") as conn:
            writer = BatchWriter(conn, HISTORY_ID)
            outbox.put(("ready", index, 0))
            while (batch := inbox.get()) is not None:
                outbox.put(("stored", index, store_batch(writer, batch)))
        outbox.put(("end", index, 0))
    except BaseException as exc:
        outbox.put(("error", index, f"{type(exc).__name__}: {exc}"))


class HistoryWriters:
    """:data:`HISTORY_WORKERS` history processes (started at once; fed by :meth:`store`)."""

    def __init__(self, workers: int = HISTORY_WORKERS) -> None:
        ctx = multiprocessing.get_context("spawn")  # the demo has threads: no fork
        self._inbox = [ctx.Queue(maxsize=2) for _ in range(workers)]
        self._outbox = ctx.Queue()
        self._procs = [
            ctx.Process(
                target=_worker,
                args=(self._inbox[i], self._outbox, i),
                name=f"demo-history-{i}",
                daemon=True,
            )
            for i in range(workers)
        ]
        for p in self._procs:
            p.start()

    def store(
        self,
        url: str,
        emissions: Iterator[Emission],
        now_ms: int,
        progress: _Progress,
        stop: threading.Event,
        branch_of: Callable[[str], str],
    ) -> Emission | None:
        """Store every emission published before ``now_ms`` into ``url``; return the first
        one at or after it (None if none). ``branch_of(device_id)`` picks the process."""
        n = len(self._procs)
        failed: list[str] = []
        ended: set[int] = set()

        def read() -> None:
            while len(ended) < n:
                kind, index, value = self._outbox.get()
                if kind == "stored":
                    progress.stored += value
                elif kind == "error":
                    failed.append(f"history process {index}: {value}")
                    ended.add(index)
                elif kind == "end":
                    ended.add(index)

        reader = threading.Thread(target=read, name="demo-history-results", daemon=True)
        reader.start()

        def put(i: int, item: Any) -> None:
            import queue

            while True:
                if failed or not self._procs[i].is_alive():
                    raise HistoryError(failed[0] if failed else f"history process {i} died")
                try:
                    self._inbox[i].put(item, timeout=0.5)
                    return
                except queue.Full:
                    continue

        for i in range(n):
            put(i, url)
        batches: list[list[Raw]] = [[] for _ in range(n)]
        first_live: Emission | None = None
        for e in emissions:
            if e.t >= now_ms:
                first_live = e
                break
            if stop.is_set():
                break
            _, _, scope, ident, _ = e.topic.split("/", 4)
            key = branch_of(ident) if scope == "device" else ident
            i = zlib.crc32(key.encode()) % n
            batches[i].append((e.topic, e.payload, e.t))
            progress.sent += 1
            progress.sim_t = e.t
            if len(batches[i]) >= HISTORY_BATCH:
                put(i, batches[i])
                batches[i] = []
        for i in range(n):
            if batches[i]:
                put(i, batches[i])
            put(i, None)
        while reader.is_alive():
            reader.join(0.5)
            if not failed and not any(p.is_alive() for p in self._procs) and len(ended) < n:
                failed.append("a history process died")
                break
        if failed:
            raise HistoryError(failed[0])
        return first_live

    def close(self) -> None:
        """Stop the processes (at once if they are still working)."""
        for p in self._procs:
            p.join(5 if p.exitcode is None and not p.is_alive() else 0.1)
            if p.is_alive():
                p.terminate()
                p.join(5)
        for q in (*self._inbox, self._outbox):
            q.close()
            q.cancel_join_thread()
