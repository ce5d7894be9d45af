"""The store worker: a child process that validates and stores the collector's batches.

At full rate, receiving (paho's network thread) and storing (pydantic validation, COPY
rows, state runs) each need most of a CPU core. In one Python process they would share
one core (the GIL) and each halve the other's rate, so the collector keeps the MQTT
connection, the buffer and the acknowledgements, and a worker process does the rest.

The collector sends batches of raw messages over a pipe, at most :data:`AHEAD` of them
unanswered, so that the worker validates the next batch while the database commits the
current one. The worker stores each batch in one transaction on its own database
connection and answers, in order, once it is committed (:class:`Outcome`); the collector
acknowledges the batch then, so nothing is acknowledged before it is stored. The worker
retries temporary database errors itself (capped backoff), telling the collector of
each (a temporary :class:`Failure`), and gives up only on a fatal one. If the worker
dies, the collector starts a new one and sends it every unanswered batch again (what the
dead one committed is not stored twice).

The worker ignores SIGINT and SIGTERM (a terminal or a service manager sends them to the
whole process group): it stops when the collector tells it to, after the last batch, or
when the collector's end of the pipe closes (the collector died).
"""

from __future__ import annotations

import contextlib
import gc
import logging
import multiprocessing
import queue
import signal
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from multiprocessing.connection import Connection
from typing import Any

import psycopg

from atmfleet.store.connect import ErrorClass, classify
from atmfleet.store.writer import Accepted, BatchWriter, Rejected
from collector.buffer import Inbound
from collector.decode import decode

log = logging.getLogger(__name__)

#: Allocations between two young garbage collections (Python's default: 700).
GC_YOUNG_THRESHOLD = 100_000

#: How long a stopping worker may take to finish and exit before it is killed.
STOP_TIMEOUT_S = 10.0

#: Batches sent to the worker and not yet answered, at most.
AHEAD = 2


def tune_gc() -> None:
    """Fewer, cheaper cyclic garbage collections for a long-running ingest process.

    A batch holds thousands of validated messages for as long as it takes to store them;
    with Python's default thresholds they are scanned again every 700 allocations, which
    took half of the validation time (bench/ingest.py). Almost everything allocated here
    is freed by reference counting, so collecting cycles less often costs little memory.
    What was loaded at start-up (modules, pydantic schemas) is set aside (``gc.freeze``).
    """
    gc.collect()
    gc.freeze()
    _young, middle, old = gc.get_threshold()
    gc.set_threshold(GC_YOUNG_THRESHOLD, middle, old)


@dataclass(frozen=True, slots=True)
class Outcome:
    """A committed batch: new rows by kind, redelivered duplicates, dead letters, and where
    its time went in the worker (:attr:`phases`)."""

    stored: dict[str, int]
    duplicates: int
    dead: list[tuple[str, str]] = field(default_factory=list)  # (topic, reason)
    #: Seconds of the transaction's parts (``copy``, ``move``, ``runs``, ``commit``: see
    #: :class:`atmfleet.store.writer.WriteResult`).
    seconds: dict[str, float] = field(default_factory=dict)
    #: When the worker read the batch from the pipe, had it validated, began to store it,
    #: and answered (``time.monotonic()``: one clock for both processes of a host).
    marks: tuple[float, ...] = ()


@dataclass(frozen=True, slots=True)
class Failure:
    """A database error while storing a batch: temporary (the worker retries; a note for
    the collector's metrics and log) or fatal (the worker gives up and exits)."""

    kind: str  # an ErrorClass value
    sqlstate: str | None
    message: str

    @property
    def error_class(self) -> ErrorClass:
        return ErrorClass(self.kind)


#: One message on the pipe: topic, payload (truncated if oversized), receive time (seconds
#: since the epoch), the payload's size as received.
Wire = tuple[str, bytes, float, int]


class StoreWorker:
    """The collector's handle on its worker process.

    :meth:`submit` sends a batch (blocking while :data:`AHEAD` are unanswered); a thread
    reads the answers and calls ``on_commit(batch, outcome, seconds since it was sent,
    when it was sent)`` in submission order,
    ``on_failure(failure)`` for each database error (for a fatal one, the worker has
    stopped and nothing more is committed).
    """

    def __init__(
        self,
        connect_db: Callable[[], psycopg.Connection],
        collector_id: str,
        max_backoff_s: float,
        on_commit: Callable[[list[Inbound], Outcome, float, float], None],
        on_failure: Callable[[Failure], None],
    ) -> None:
        self._connect_db = connect_db  # sent to the worker: must pickle (e.g. Connector)
        self._collector_id = collector_id
        self._max_backoff_s = max_backoff_s
        self._on_commit = on_commit
        self._on_failure = on_failure
        self._context = multiprocessing.get_context("spawn")
        self._process: Any = None
        self._pipe: Connection | None = None
        self._lock = threading.Condition()  # guards the fields below and the pipe's sending
        # Sent and not answered: the batch, its form on the pipe (kept to resend it to a
        # new worker), when it was sent.
        self._unanswered: deque[tuple[list[Inbound], list[Wire], float]] = deque()
        self._closing = False
        self.fatal: Failure | None = None
        self._reader: threading.Thread | None = None

    def start(self) -> None:
        with self._lock:
            if self._process is None:
                self._spawn()
        self._reader = threading.Thread(
            target=self._read_answers, name=f"atmfleet-store-answers-{self._collector_id}",
            daemon=True,
        )  # fmt: skip
        self._reader.start()

    def submit(self, batch: list[Inbound], deadline: float | None = None) -> bool:
        """Send a batch, waiting while AHEAD are unanswered. False if the deadline passed
        or the worker stopped on a fatal error (the batch was not sent)."""
        wire: list[Wire] = [(m.topic, m.payload, m.received, m.size) for m in batch]
        with self._lock:
            while len(self._unanswered) >= AHEAD and self.fatal is None:
                wait = None if deadline is None else deadline - time.monotonic()
                if wait is not None and wait <= 0:
                    return False
                self._lock.wait(wait)
            if self.fatal is not None:
                return False
            self._unanswered.append((batch, wire, time.monotonic()))
            if self._pipe is not None:  # else the next worker gets it with the others
                with contextlib.suppress(OSError):  # a dead worker: its successor gets it
                    self._pipe.send(wire)
        return True

    def wait_answered(self, deadline: float) -> bool:
        """Wait until every batch sent is answered; False at the deadline or a fatal error."""
        with self._lock:
            while self._unanswered and self.fatal is None:
                wait = deadline - time.monotonic()
                if wait <= 0:
                    return False
                self._lock.wait(wait)
            return not self._unanswered

    def close(self, timeout: float = STOP_TIMEOUT_S) -> None:
        """Ask the worker to stop after the batches it has, wait, kill it if it lingers."""
        with self._lock:
            self._closing = True
            if self._unanswered:  # given up on: nothing to wait for
                timeout = 0.0
            if self._pipe is not None:
                with contextlib.suppress(OSError):
                    self._pipe.send(None)
            process = self._process
        if process is not None:
            process.join(timeout)
            if process.is_alive():
                process.kill()
        if self._reader is not None:
            self._reader.join(timeout)
        with self._lock:
            self._discard()

    # -- internals ----------------------------------------------------------------------

    def _spawn(self) -> None:
        ours, theirs = self._context.Pipe()
        process = self._context.Process(
            target=_main,
            args=(
                theirs, self._connect_db, self._collector_id, logging.getLogger().level,
                self._max_backoff_s,
            ),
            name=f"atmfleet-store-{self._collector_id}",
            daemon=True,
        )  # fmt: skip
        process.start()
        theirs.close()  # ours alone: its EOF tells the worker, and us, that the other died
        self._process, self._pipe = process, ours

    def _respawn(self) -> None:
        """A new worker, sent every batch the dead one had not answered (in order)."""
        try:
            self._spawn()
            assert self._pipe is not None
            for _batch, wire, _sent in self._unanswered:
                self._pipe.send(wire)
        except Exception as exc:  # cannot start a process: stop the collector, say why
            log.exception("cannot start a new store worker")
            self.fatal = Failure(ErrorClass.FATAL.value, None, f"no store worker: {exc}"[:300])
            self._lock.notify_all()

    def _discard(self) -> int | None:
        """Forget the worker (killing it if it still runs); its exit code."""
        code = None
        if self._process is not None:
            if self._process.is_alive():
                self._process.kill()
            self._process.join(5)
            code = self._process.exitcode
            self._process.close()
        if self._pipe is not None:
            self._pipe.close()
        self._process, self._pipe = None, None
        return code

    def _read_answers(self) -> None:
        deaths = 0  # in a row, without an answer in between
        while True:
            pipe = self._pipe
            try:
                if pipe is None:
                    raise EOFError
                answer = pipe.recv()
            except (EOFError, OSError) as exc:
                with self._lock:
                    if self._closing or self.fatal is not None:
                        return
                    code = self._discard()
                self._on_failure(
                    Failure(
                        ErrorClass.TEMPORARY.value, None,
                        f"the store worker exited (code {code}: {exc!r}); a new one takes over",
                    )
                )  # fmt: skip
                # A worker that dies at once every time must not be restarted in a loop.
                time.sleep(min(0.1 * 2**deaths, self._max_backoff_s))
                deaths += 1
                with self._lock:
                    if self._closing:
                        return
                    self._respawn()
                continue
            deaths = 0
            if isinstance(answer, Failure):
                if answer.error_class is not ErrorClass.TEMPORARY:
                    with self._lock:
                        self.fatal = answer
                        self._lock.notify_all()
                self._on_failure(answer)
                if self.fatal is not None:
                    return
                continue
            assert isinstance(answer, Outcome)
            with self._lock:
                batch, _wire, sent = self._unanswered[0]
            self._on_commit(batch, answer, time.monotonic() - sent, sent)  # acks, frees the slot
            with self._lock:
                self._unanswered.popleft()
                self._lock.notify_all()


# -- the worker process ---------------------------------------------------------------------


_END = None


def _main(
    pipe: Connection,
    connect_db: Callable[[], psycopg.Connection],
    collector_id: str,
    log_level: int,
    max_backoff_s: float,
) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    logging.basicConfig(
        level=log_level or logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s[worker]: %(message)s",
    )
    tune_gc()
    # The reader validates the next batch while this thread has the current one stored
    # (the database's work releases the GIL).
    decoded: queue.Queue[Decoded | None] = queue.Queue(maxsize=1)

    def read() -> None:
        while True:
            try:
                wire = pipe.recv()
            except (EOFError, OSError):
                wire = None  # the collector is gone: what it did not acknowledge is redelivered
            if wire is None:
                decoded.put(_END)
                return
            received = time.monotonic()
            batch = _decode(wire)
            batch.marks.extend((received, time.monotonic()))
            decoded.put(batch)

    threading.Thread(target=read, name="atmfleet-store-decode", daemon=True).start()
    store = _Store(connect_db, collector_id, max_backoff_s)
    try:
        while (batch := decoded.get()) is not _END:
            batch.marks.append(time.monotonic())
            answer = store.write(batch, report=pipe.send)
            pipe.send(answer)
            if isinstance(answer, Failure):
                return  # fatal: the collector stops
    except OSError:
        return  # the collector is gone
    finally:
        store.close()


@dataclass(frozen=True, slots=True)
class Decoded:
    accepted: list[Accepted]
    rejected: list[Rejected]
    #: time.monotonic() when it was read from the pipe, decoded, taken by the store thread.
    marks: list[float] = field(default_factory=list)


def _decode(wire: Sequence[Wire]) -> Decoded:
    out = Decoded([], [])
    for topic, payload, received, size in wire:
        record = decode(topic, payload, datetime.fromtimestamp(received, UTC), size)
        if isinstance(record, Accepted):
            out.accepted.append(record)
        else:
            out.rejected.append(record)
    return out


class _Store:
    """Stores batches on one connection, reopened after an error."""

    def __init__(
        self, connect_db: Callable[[], psycopg.Connection], collector_id: str, max_backoff_s: float
    ) -> None:
        self._connect_db = connect_db
        self._collector_id = collector_id
        self._max_backoff_s = max_backoff_s
        self._conn: psycopg.Connection | None = None
        self._writer: BatchWriter | None = None

    def write(self, batch: Decoded, report: Callable[[Failure], None]) -> Outcome | Failure:
        """Commit the batch, retrying temporary errors (each reported); a fatal Failure."""
        backoff = 0.1
        while True:
            try:
                if self._writer is None:
                    self._conn = self._connect_db()
                    self._writer = BatchWriter(self._conn, self._collector_id)
                result = self._writer.write(batch.accepted, batch.rejected)
            except (psycopg.Error, OSError) as exc:
                self.close()
                kind = classify(exc)
                failure = Failure(
                    kind.value, getattr(exc, "sqlstate", None), str(exc).strip()[:300]
                )
                if kind is not ErrorClass.TEMPORARY:
                    return failure
                report(failure)
                time.sleep(backoff)
                backoff = min(backoff * 2, self._max_backoff_s)
                continue
            except Exception as exc:  # a bug, not the data: stop the collector, say what
                log.exception("the store worker failed on a batch")
                self.close()
                return Failure(ErrorClass.FATAL.value, None, f"{type(exc).__name__}: {exc}"[:300])
            return Outcome(
                dict(result.stored),
                result.duplicates,
                [(r.topic, r.reason) for r in result.dead],
                dict(result.seconds),
                (*batch.marks, time.monotonic()),
            )

    def close(self) -> None:
        if self._conn is not None:
            try:
                self._conn.close()
            except Exception:  # closing a broken connection must not mask the real error
                log.debug("error while closing the database connection", exc_info=True)
        self._conn, self._writer = None, None
