"""Messages between the MQTT network thread and the writer: FIFO, bounded in messages and
in bytes, and never blocking the network thread.

What is held counts every message received and not yet acknowledged (waiting, or in a
batch being written). The bound is kept by the broker, not by stopping the network
thread: a QoS 1 message is only sent while fewer than Receive Maximum are unacknowledged
(MQTT 5; :func:`collector.mqtt.receive_maximum` derives it from both bounds), so
:meth:`Buffer.put` never waits and paho keeps answering keep-alives however slow the
store is. A payload larger than the protocol allows is held as a truncated copy (all the
dead letter keeps). A QoS 0 message (outside the protocol: nothing limits how many the
broker sends) is dropped when the buffer is full, and counted.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import Enum

#: Bytes an :class:`Inbound` costs besides its payload and topic (object, list slot, mid).
ITEM_OVERHEAD_BYTES = 200


@dataclass(slots=True)
class Inbound:
    """One received message, as the network thread hands it over."""

    mid: int
    qos: int
    topic: str
    payload: bytes  # at most the dead-letter copy when ``size`` is over the protocol's limit
    received: float  # time.time() on arrival (cheaper to take and to send than a datetime)
    generation: int  # the MQTT connection it arrived on (acks go only to that one)
    arrived: float = field(default_factory=time.monotonic)
    size: int = -1  # the payload's size as received (-1: len(payload))

    def __post_init__(self) -> None:
        if self.size < 0:
            self.size = len(self.payload)

    @property
    def received_at(self) -> datetime:
        return datetime.fromtimestamp(self.received, UTC)

    @property
    def held_bytes(self) -> int:
        return len(self.payload) + len(self.topic) + ITEM_OVERHEAD_BYTES


class Put(Enum):
    HELD = "held"
    FULL = "full"  # a QoS 0 message while the buffer is full: dropped
    CLOSED = "closed"


class Buffer:
    def __init__(self, capacity: int, max_bytes: int | None = None) -> None:
        self._capacity = capacity
        self._max_bytes = max_bytes
        self._items: deque[Inbound] = deque()
        self._bytes = 0  # payload bytes waiting (batches are bounded by these)
        self._held = 0  # waiting + taken but not released
        self._held_bytes = 0  # what those cost in memory
        # Taken batches not yet released, oldest first: the oldest message received and not
        # acknowledged is the first of the first one (or, with none taken, the first waiting).
        self._taken: deque[Sequence[Inbound]] = deque()
        self._closed = False
        self._cond = threading.Condition()
        # What a waiting take() needs before it returns early (None: nobody waits). put()
        # wakes it only then, or for a first message (whose age starts the clock), not
        # for every message: each wake-up costs the network thread the GIL.
        self._want: tuple[int, int] | None = None

    @property
    def held(self) -> int:
        return self._held

    @property
    def held_bytes(self) -> int:
        return self._held_bytes

    def full(self) -> bool:
        return self._held >= self._capacity or (
            self._max_bytes is not None and self._held_bytes >= self._max_bytes
        )

    def put(self, item: Inbound) -> Put:
        """Add a message; never waits. A QoS 0 message is refused (``FULL``) while the
        buffer is full; a QoS 1 one never is (the broker's flow control bounds those)."""
        with self._cond:
            if self._closed:
                return Put.CLOSED
            if item.qos == 0 and self.full():
                return Put.FULL
            self._items.append(item)
            self._bytes += len(item.payload)
            self._held += 1
            self._held_bytes += item.held_bytes
            if self._want is not None and (
                len(self._items) == 1
                or len(self._items) >= self._want[0]
                or self._bytes >= self._want[1]
            ):
                self._cond.notify_all()
            return Put.HELD

    def discard_unacknowledgeable(self, generation: int) -> int:
        """Drop the waiting QoS 1 messages of connections before ``generation``: they can
        no longer be acknowledged, and a resumed session has the broker send them again.
        Returns how many."""
        with self._cond:
            keep: deque[Inbound] = deque()
            dropped = 0
            for item in self._items:
                if item.qos > 0 and item.generation < generation:
                    dropped += 1
                    self._bytes -= len(item.payload)
                    self._held -= 1
                    self._held_bytes -= item.held_bytes
                else:
                    keep.append(item)
            self._items = keep
            return dropped

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
                return self._taken[0][0].received
            return self._items[0].received if self._items else None

    def lag_seconds(self) -> float:
        """Age of the oldest message received and not yet acknowledged (0 when none)."""
        oldest = self.oldest_unacknowledged()
        return max(0.0, time.time() - oldest) if oldest is not None else 0.0

    def release(self, batch: Sequence[Inbound]) -> None:
        """A taken batch was acknowledged (or given up): make room."""
        with self._cond:
            self._held -= len(batch)
            self._held_bytes -= sum(item.held_bytes for item in batch)
            if self._taken and self._taken[0] is batch:
                self._taken.popleft()
            else:  # released out of order (a batch given up): drop it where it is
                for i, taken in enumerate(self._taken):
                    if taken is batch:
                        del self._taken[i]
                        break
            self._cond.notify_all()
