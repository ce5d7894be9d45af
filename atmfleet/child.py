"""Run one call in a fresh child process that exits when it is done.

A long-running process (``atmfleet serve``) computes its costlier parts this way so that
their memory goes back to the system when they end. The child is spawned (no copy of the
parent's threads and connections) and runs exactly one call: its pool of one worker is
shut down as soon as the result is back. ``max_tasks_per_child`` is not used on purpose:
on the Python versions supported here a pool that replaces its workers can stop starting
them and leave submitted work waiting forever (CPython gh-115634).
"""

from __future__ import annotations

import multiprocessing
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from typing import ParamSpec, TypeVar

P = ParamSpec("P")
R = TypeVar("R")


def in_child(fn: Callable[P, R], *args: P.args, **kwargs: P.kwargs) -> R:
    """``fn(*args, **kwargs)`` computed in a fresh spawned process; its exception (or
    ``BrokenProcessPool`` if the child died) is raised here."""
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(1, mp_context=context) as pool:
        return pool.submit(fn, *args, **kwargs).result()
