"""Messages between the MQTT network thread and the writer: bounded, FIFO.

Capacity counts every message received and not yet acknowledged (waiting, or in the
batch being written), so memory stays bounded however slow the database is: when full,
:meth:`Buffer.put` blocks the network thread, which stops reading from the socket.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from dataclasses import dataclass, field
from datetime import UTC, datetime


@dataclass(slots=True)
class Inbound:
    """One received message, as the network thread hands it over."""

    mid: int
    qos: int
    topic: str
    payload: bytes
    received: float  # time.time() on arrival (cheaper to take and to send than a datetime)
    generation: int  # the MQTT connection it arrived on (acks go only to that one)
    arrived: float = field(default_factory=time.monotonic)

    @property
    def received_at(self) -> datetime:
        return datetime.fromtimestamp(self.received, UTC)


class Buffer:
    def __init__(self, capacity: int) -> None:
        self._capacity = capacity
        self._items: deque[Inbound] = deque()
        self._bytes = 0
        self._held = 0  # waiting + taken but not released
        # Taken batches not yet released (in order), and how much of the first is released:
        # the oldest message received and not acknowledged is the first of what remains.
        self._taken: deque[list[Inbound]] = deque()
        self._taken_offset = 0
        self._closed = False
        self._cond = threading.Condition()
        # What a waiting take() needs before it returns early (None: nobody waits). put()
        # wakes it only then, or for a first message (whose age starts the clock), not
        # for every message: each wake-up costs the network thread the GIL.
        self._want: tuple[int, int] | None = None

    @property
    def held(self) -> int:
        return self._held

    def put(self, item: Inbound) -> bool:
        """Add a message, waiting while full. False (message not taken) once closed."""
        with self._cond:
            while self._held >= self._capacity and not self._closed:
                self._cond.wait(0.5)
            if self._closed:
                return False
            self._items.append(item)
            self._bytes += len(item.payload)
            self._held += 1
            if self._want is not None and (
                len(self._items) == 1
                or len(self._items) >= self._want[0]
                or self._bytes >= self._want[1]
            ):
                self._cond.notify_all()
            return True

    def close(self) -> None:
        """Refuse further messages (they stay unacknowledged at the broker)."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    def take(
        self, max_items: int, max_bytes: int, max_age_s: float, idle_s: float
    ) -> list[Inbound]:
        """The next batch: returns when ``max_items`` or ``max_bytes`` are waiting, when the
        oldest waiting message is ``max_age_s`` old, or when closed; ``[]`` after ``idle_s``
        with nothing waiting."""
        with self._cond:
            idle_until = time.monotonic() + idle_s
            self._want = (max_items, max_bytes)
            try:
                while True:
                    now = time.monotonic()
                    if self._items:
                        due = self._items[0].arrived + max_age_s
                        full = len(self._items) >= max_items or self._bytes >= max_bytes
                        if full or self._closed or now >= due:
                            break
                        self._cond.wait(due - now)
                    else:
                        if self._closed or now >= idle_until:
                            return []
                        self._cond.wait(idle_until - now)
            finally:
                self._want = None
            batch: list[Inbound] = []
            size = 0
            while self._items and len(batch) < max_items:
                item = self._items[0]
                if batch and size + len(item.payload) > max_bytes:
                    break
                self._items.popleft()
                size += len(item.payload)
                batch.append(item)
            self._bytes -= size
            if batch:
                self._taken.append(batch)
            return batch

    def oldest_unacknowledged(self) -> float | None:
        """Receive time (``time.time()``) of the oldest message received and not yet
        acknowledged, taken or waiting; None when there is none."""
        with self._cond:
            if self._taken:
                return self._taken[0][self._taken_offset].received
            return self._items[0].received if self._items else None

    def lag_seconds(self) -> float:
        """Age of the oldest message received and not yet acknowledged (0 when none)."""
        oldest = self.oldest_unacknowledged()
        return max(0.0, time.time() - oldest) if oldest is not None else 0.0

    def release(self, n: int) -> None:
        """``n`` taken messages were acknowledged (or given up), oldest first: make room."""
        with self._cond:
            self._held -= n
            while n > 0 and self._taken:
                left = len(self._taken[0]) - self._taken_offset
                if n >= left:
                    self._taken.popleft()
                    self._taken_offset = 0
                    n -= left
                else:
                    self._taken_offset += n
                    n = 0
            self._cond.notify_all()
