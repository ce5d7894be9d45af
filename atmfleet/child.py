"""Run one call in a fresh child process that exits when it is done, and can be stopped.

A long-running process (``atmfleet serve``) computes its costlier parts this way so that
their memory goes back to the system when they end. The child is spawned (no copy of the
parent's threads and connections), runs exactly one call and hands back its result (or
its exception) through a pipe. A pool of workers is not used on purpose: a pool that
replaces its workers (``max_tasks_per_child``) can, on the Python versions supported here,
stop starting them and leave submitted work waiting forever (CPython gh-115634), and a
pool's shutdown waits for the running call, however long it takes.

:class:`Children` is a group of such calls that can be stopped: :meth:`Children.close`
terminates the children running (then kills those that do not end), and each caller
waiting on one gets :class:`ChildCancelled` at once. A service closes its group when it
stops, so that a SIGTERM is not held up by a computation of minutes.
"""

from __future__ import annotations

import multiprocessing
import threading
import time
import traceback
from collections.abc import Callable
from multiprocessing.connection import Connection, wait
from multiprocessing.process import BaseProcess
from typing import Any, ParamSpec, TypeVar

P = ParamSpec("P")
R = TypeVar("R")

#: Seconds :meth:`Children.close` gives a terminated child to end before killing it, and
#: a killed one before giving up on it.
GRACE_S = 5.0


class ChildCancelled(Exception):
    """The call was stopped (:meth:`Children.close`) before its child was done."""


class ChildDied(RuntimeError):
    """The child ended without handing back a result or an exception (killed, out of
    memory, a crash)."""


class RemoteTraceback(Exception):
    """The traceback of an exception raised in a child (set as its ``__cause__``)."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


def _run(out: Connection, fn: Callable[..., Any], args: tuple[Any, ...], kwargs: Any) -> None:
    """The child's side: one call, its outcome sent to the parent."""
    try:
        try:
            outcome: tuple[bool, Any, str] = (True, fn(*args, **kwargs), "")
        except Exception as exc:
            outcome = (False, exc, traceback.format_exc())
        try:
            out.send(outcome)
        except Exception as exc:  # an outcome that does not pickle
            kind = "result" if outcome[0] else "exception"
            tb = outcome[2] or traceback.format_exc()
            out.send((False, ChildDied(f"the child's {kind} cannot be sent back: {exc!r}"), tb))
    finally:
        out.close()


class _Running:
    __slots__ = ("cancelled", "ended", "process")

    def __init__(self, process: BaseProcess) -> None:
        self.process = process
        self.cancelled = False
        self.ended = False  # the child handed back its outcome or ended


class Children:
    """Calls in fresh child processes (:meth:`run`) that :meth:`close` can stop."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._running: list[_Running] = []
        self._closed = False

    @property
    def closed(self) -> bool:
        return self._closed

    def run(self, fn: Callable[P, R], *args: P.args, **kwargs: P.kwargs) -> R:
        """``fn(*args, **kwargs)`` computed in a fresh spawned process. Its exception is
        raised here (its traceback in the child as ``__cause__``); :class:`ChildDied` if
        the child ended without an outcome; :class:`ChildCancelled` if :meth:`close` was
        called before it was done (or before this call)."""
        context = multiprocessing.get_context("spawn")
        reader, writer = context.Pipe(duplex=False)
        process = context.Process(
            target=_run, args=(writer, fn, args, kwargs), name="atmfleet-child", daemon=True
        )
        entry = _Running(process)
        try:
            with self._lock:
                if self._closed:
                    raise ChildCancelled("stopped before the child was started")
                process.start()  # under the lock: close() never misses a started child
                self._running.append(entry)
            writer.close()  # the child holds it now: its end is our end of file
            result: R = self._outcome(entry, reader)
            return result
        finally:
            reader.close()
            writer.close()
            self._forget(entry)

    def _outcome(self, entry: _Running, reader: Connection) -> Any:
        process = entry.process
        wait([reader, process.sentinel])
        entry.ended = True
        if reader.poll():
            try:
                ok, value, tb = reader.recv()
            except (EOFError, OSError):  # died (or was stopped) halfway through sending
                pass
            else:
                if ok:
                    return value
                if tb:
                    value.__cause__ = RemoteTraceback(tb)
                raise value
        if entry.cancelled:
            raise ChildCancelled("the child was stopped before it was done")
        process.join(GRACE_S)
        raise ChildDied(f"the child process ended without a result (exit code {process.exitcode})")

    def _forget(self, entry: _Running) -> None:
        """Take ``entry`` out of the running ones, then make sure its child has ended and
        is reaped (it is no longer signalled by :meth:`close` from then on)."""
        with self._changed:
            if entry in self._running:
                self._running.remove(entry)
                self._changed.notify_all()
        process = entry.process
        if process.pid is None:  # never started
            return
        process.join(GRACE_S if entry.ended else 0)  # a child done exits on its own
        if process.exitcode is None:  # the caller was interrupted: no child left behind
            process.terminate()
            process.join(GRACE_S)
            if process.exitcode is None:
                process.kill()
                process.join(GRACE_S)

    def close(self) -> None:
        """Stop: no new call starts (each raises :class:`ChildCancelled`), the children
        running are terminated (killed if they have not ended after :data:`GRACE_S`), and
        this returns once their callers have been told, or after at most twice
        :data:`GRACE_S`."""
        with self._changed:
            self._closed = True
            for entry in self._running:
                entry.cancelled = True
                entry.process.terminate()
            deadline = time.monotonic() + GRACE_S
            while self._running and self._changed.wait(max(0.0, deadline - time.monotonic())):
                pass
            for entry in self._running:  # did not end on SIGTERM
                entry.process.kill()
            deadline = time.monotonic() + GRACE_S
            while self._running and self._changed.wait(max(0.0, deadline - time.monotonic())):
                pass


def in_child(fn: Callable[P, R], *args: P.args, **kwargs: P.kwargs) -> R:
    """``fn(*args, **kwargs)`` computed in a fresh spawned process, in a group of its own
    (:meth:`Children.run`: nothing can stop it but its end)."""
    return Children().run(fn, *args, **kwargs)
