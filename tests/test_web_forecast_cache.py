"""The console's forecast cache: only the first page waits; a stale forecast is served at
once while the next one is computed in the background."""

from __future__ import annotations

import threading
from contextlib import nullcontext
from typing import Any

from web.cash import ForecastCache


class Recorder(ForecastCache):
    def __init__(self) -> None:
        super().__init__(ttl_s=0.0, connect=lambda: nullcontext("bg-conn"))
        self.calls: list[str] = []
        self.release = threading.Event()
        self.done = threading.Event()

    def _compute(self, conn: Any, rules: Any) -> None:
        self.calls.append(conn)
        if conn == "bg-conn":
            assert self.release.wait(30), "the test never released the background refresh"
        with self._lock:
            self._fc = object()  # type: ignore[assignment]
            self._by = {"ATM-1": f"forecast {len(self.calls)}"}  # type: ignore[dict-item]
        self._at = 0.0  # always stale (ttl 0)

    def _background(self, rules: Any) -> None:
        try:
            super()._background(rules)
        finally:
            self.done.set()


def test_only_the_first_page_waits() -> None:
    cache = Recorder()
    assert cache.device("page-conn", None, "ATM-1") == "forecast 1"  # type: ignore[arg-type]
    assert cache.calls == ["page-conn"]  # computed on the page's own connection, once
    # Stale: the old one comes back at once, a refresh runs on a connection of its own.
    assert cache.device("page-conn", None, "ATM-1") == "forecast 1"  # type: ignore[arg-type]
    assert cache.device("page-conn", None, "ATM-1") == "forecast 1"  # type: ignore[arg-type]
    cache.release.set()
    assert cache.done.wait(30)
    assert cache.calls == ["page-conn", "bg-conn"]  # one refresh, not one per page
    assert cache.device("page-conn", None, "ATM-2") is None  # type: ignore[arg-type]
