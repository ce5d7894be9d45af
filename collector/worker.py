"""The store worker: a child process that validates and stores the collector's batches.

At full rate, receiving (paho's network thread) and storing (pydantic validation, COPY
rows, state runs) each need most of a CPU core. In one Python process they would share
one core (the GIL) and each halve the other's rate, so the collector keeps the MQTT
connection, the buffer and the acknowledgements, and a worker process does the rest.

The collector sends a batch of raw messages over a pipe and waits for the answer; the
worker decodes it, stores it in one transaction on its own database connection and
answers once it is committed (:class:`Outcome`) or with the error that stopped it
(:class:`Failure`). One batch at a time: the collector acknowledges a batch only after
its answer, so what the worker holds is never acknowledged before it is stored. If the
worker dies, the batch is a temporary failure and the next write starts a new worker.

The worker ignores SIGINT and SIGTERM (a terminal or a service manager sends them to the
whole process group): it stops when the collector tells it to, after the last batch, or
when the collector's end of the pipe closes (the collector died).
"""

from __future__ import annotations

import contextlib
import gc
import logging
import multiprocessing
import signal
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
    """A committed batch: new rows by kind, redelivered duplicates, dead letters."""

    stored: dict[str, int]
    duplicates: int
    dead: list[tuple[str, str]] = field(default_factory=list)  # (topic, reason)


@dataclass(frozen=True, slots=True)
class Failure:
    """A batch the worker could not commit (nothing of it is committed)."""

    kind: str  # an ErrorClass value
    sqlstate: str | None
    message: str


class WorkerFailure(Exception):
    """The batch was not stored; ``kind`` says whether to retry it."""

    def __init__(self, kind: ErrorClass, sqlstate: str | None, message: str) -> None:
        super().__init__(message)
        self.kind = kind
        self.sqlstate = sqlstate
        self.message = message


#: One message on the pipe: topic, payload, receive time (seconds since the epoch).
Wire = tuple[str, bytes, float]


class StoreWorker:
    """The collector's handle on its worker process (started on the first write)."""

    def __init__(self, connect_db: Callable[[], psycopg.Connection], collector_id: str) -> None:
        self._connect_db = connect_db  # sent to the worker: must pickle (e.g. Connector)
        self._collector_id = collector_id
        self._context = multiprocessing.get_context("spawn")
        self._process: Any = None
        self._pipe: Connection | None = None

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    def start(self) -> None:
        """Start the worker now (else the first write does)."""
        if self._process is not None:
            if self._process.is_alive():
                return
            log.warning(
                "the store worker exited (code %s) between batches; starting a new one",
                self._discard(),
            )
        ours, theirs = self._context.Pipe()
        process = self._context.Process(
            target=_main,
            args=(theirs, self._connect_db, self._collector_id, logging.getLogger().level),
            name=f"atmfleet-store-{self._collector_id}",
            daemon=True,
        )
        process.start()
        theirs.close()  # ours alone: its EOF tells the worker, and us, that the other died
        self._process, self._pipe = process, ours

    def write(self, batch: Sequence[Inbound]) -> Outcome:
        """Store a batch; returns once it is committed. Raises :class:`WorkerFailure`."""
        self.start()
        assert self._pipe is not None
        wire: list[Wire] = [(m.topic, m.payload, m.received) for m in batch]
        try:
            self._pipe.send(wire)
            answer = self._pipe.recv()
        except (EOFError, OSError) as exc:
            code = self._discard()
            raise WorkerFailure(
                ErrorClass.TEMPORARY, None, f"the store worker exited (code {code}): {exc!r}"
            ) from None
        if isinstance(answer, Failure):
            raise WorkerFailure(ErrorClass(answer.kind), answer.sqlstate, answer.message)
        assert isinstance(answer, Outcome)
        return answer

    def close(self, timeout: float = STOP_TIMEOUT_S) -> None:
        """Ask the worker to stop (after its current batch), wait, kill it if it lingers."""
        if self._process is None:
            return
        if self._pipe is not None:
            with contextlib.suppress(OSError):
                self._pipe.send(None)
        self._process.join(timeout)
        self._discard()

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


# -- the worker process ---------------------------------------------------------------------


def _main(
    pipe: Connection,
    connect_db: Callable[[], psycopg.Connection],
    collector_id: str,
    log_level: int,
) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    logging.basicConfig(
        level=log_level or logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s[worker]: %(message)s",
    )
    tune_gc()
    store = _Store(connect_db, collector_id)
    try:
        while True:
            try:
                wire = pipe.recv()
            except (EOFError, OSError):
                return  # the collector is gone: what it did not acknowledge is redelivered
            if wire is None:
                return
            answer = store.write(wire)
            try:
                pipe.send(answer)
            except OSError:
                return
    finally:
        store.close()


class _Store:
    """Decodes and stores batches on one connection, reopened after an error."""

    def __init__(self, connect_db: Callable[[], psycopg.Connection], collector_id: str) -> None:
        self._connect_db = connect_db
        self._collector_id = collector_id
        self._conn: psycopg.Connection | None = None
        self._writer: BatchWriter | None = None

    def write(self, wire: Sequence[Wire]) -> Outcome | Failure:
        accepted: list[Accepted] = []
        rejected: list[Rejected] = []
        for topic, payload, received in wire:
            record = decode(topic, payload, datetime.fromtimestamp(received, UTC))
            if isinstance(record, Accepted):
                accepted.append(record)
            else:
                rejected.append(record)
        try:
            if self._writer is None:
                self._conn = self._connect_db()
                self._writer = BatchWriter(self._conn, self._collector_id)
            result = self._writer.write(accepted, rejected)
        except (psycopg.Error, OSError) as exc:
            self.close()
            return Failure(
                classify(exc).value, getattr(exc, "sqlstate", None), str(exc).strip()[:300]
            )
        except Exception as exc:  # a bug, not the data: stop the collector, say what
            log.exception("the store worker failed on a batch")
            self.close()
            return Failure(ErrorClass.FATAL.value, None, f"{type(exc).__name__}: {exc}"[:300])
        return Outcome(
            dict(result.stored), result.duplicates, [(r.topic, r.reason) for r in result.dead]
        )

    def close(self) -> None:
        if self._conn is not None:
            try:
                self._conn.close()
            except Exception:  # closing a broken connection must not mask the real error
                log.debug("error while closing the database connection", exc_info=True)
        self._conn, self._writer = None, None
