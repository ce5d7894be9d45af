"""atmfleet.child: one call, one fresh process, as many in a row as asked; a group of
them stopped by close, its callers told at once."""

from __future__ import annotations

import multiprocessing
import os
from concurrent.futures import ThreadPoolExecutor
from multiprocessing.connection import Connection

import pytest

from atmfleet.child import ChildCancelled, ChildDied, Children, RemoteTraceback, in_child


def _pid_and_square(x: int) -> tuple[int, int]:
    return os.getpid(), x * x


def _fails(message: str) -> None:
    raise ValueError(message)


def test_each_call_runs_in_a_process_of_its_own_and_more_calls_than_workers_all_end() -> None:
    # Five calls two at a time: the pattern of serve's parts (three parts, two at a time)
    # that a pool replacing its workers (max_tasks_per_child) can leave waiting forever.
    with ThreadPoolExecutor(2) as threads:
        results = list(threads.map(lambda x: in_child(_pid_and_square, x), range(5)))
    assert [square for _, square in results] == [0, 1, 4, 9, 16]
    pids = {pid for pid, _ in results}
    assert len(pids) == 5
    assert os.getpid() not in pids


def test_the_childs_exception_is_raised_in_the_caller() -> None:
    with pytest.raises(ValueError, match="no forecast"):
        in_child(_fails, "no forecast")


def _dies() -> None:
    os._exit(3)


def _unpicklable() -> object:
    return lambda: None


def _started_then_blocks(started: Connection, never: Connection) -> None:
    """Says it started, then waits on a pipe that nothing writes to."""
    started.send("started")
    never.recv()


def test_a_child_that_dies_is_a_clear_error() -> None:
    with pytest.raises(ChildDied, match="exit code 3"):
        in_child(_dies)


def test_a_result_that_cannot_be_sent_back_is_a_clear_error() -> None:
    with pytest.raises(ChildDied, match="cannot be sent back"):
        in_child(_unpicklable)


def test_the_childs_traceback_is_the_cause() -> None:
    with pytest.raises(ValueError) as raised:
        in_child(_fails, "no forecast")
    assert isinstance(raised.value.__cause__, RemoteTraceback)
    assert "_fails" in str(raised.value.__cause__)


def test_close_stops_a_running_child_and_its_caller_returns_at_once() -> None:
    children = Children()
    started_r, started_w = multiprocessing.Pipe(duplex=False)
    never_r, never_w = multiprocessing.Pipe(duplex=False)
    with ThreadPoolExecutor(1) as threads:
        call = threads.submit(children.run, _started_then_blocks, started_w, never_r)
        # The child says it runs (a hang guard only: it is never reached when it works).
        assert started_r.poll(120), "the child did not start"
        assert started_r.recv() == "started"
        children.close()  # returns once the caller has been told
        with pytest.raises(ChildCancelled):
            call.result(timeout=60)  # a hang guard only
    never_w.close()


def test_a_closed_group_starts_no_child() -> None:
    children = Children()
    children.close()
    with pytest.raises(ChildCancelled):
        children.run(_pid_and_square, 2)


def test_a_group_runs_calls_until_closed() -> None:
    children = Children()
    assert children.run(_pid_and_square, 3)[1] == 9
    with pytest.raises(ValueError, match="kept"):
        children.run(_fails, "kept")
    children.close()
    assert children.closed
