"""atmfleet.child.in_child: one call, one fresh process, as many in a row as asked."""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor

import pytest

from atmfleet.child import in_child


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
