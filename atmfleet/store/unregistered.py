"""Devices that send messages but are not in the inventory.

Their messages are stored like any other (nothing is lost: loading the inventory later
makes them count); these reads make them visible (``atmfleet db unregistered``, the metric
``atmfleet_unregistered_devices``, the daily bulletin's footnotes).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

import psycopg

#: Every stored message kind: state, events, transactions, presence.
LIST = """
WITH seen AS (
    SELECT device_id, min(ts) AS first_ts, max(ts) AS last_ts, count(*) AS n
    FROM state_samples s WHERE NOT EXISTS (SELECT 1 FROM devices d WHERE d.id = s.device_id)
    GROUP BY device_id
    UNION ALL
    SELECT device_id, min(ts), max(ts), count(*)
    FROM events s WHERE NOT EXISTS (SELECT 1 FROM devices d WHERE d.id = s.device_id)
    GROUP BY device_id
    UNION ALL
    SELECT device_id, min(ts), max(ts), count(*)
    FROM transactions s WHERE NOT EXISTS (SELECT 1 FROM devices d WHERE d.id = s.device_id)
    GROUP BY device_id
    UNION ALL
    SELECT device_id, min(ts), max(ts), count(*)
    FROM presence s WHERE NOT EXISTS (SELECT 1 FROM devices d WHERE d.id = s.device_id)
    GROUP BY device_id
)
SELECT device_id, min(first_ts), max(last_ts), sum(n)::int8 FROM seen
GROUP BY device_id ORDER BY device_id
"""

#: Every device id of the state runs and presence: a scan of both tables, whose cost grows
#: with the history kept (``atmfleet serve`` keeps the ids instead: :class:`Unregistered`).
COUNT = """
SELECT count(*) FROM (
    SELECT device_id FROM state_runs UNION SELECT device_id FROM presence
) seen
WHERE NOT EXISTS (SELECT 1 FROM devices d WHERE d.id = seen.device_id)
"""


#: The ids :data:`COUNT` counts, each table's rows first kept only where their device is
#: not in the inventory (a hash of the inventory's ids), so that only the few left are
#: made distinct.
IDS = """
SELECT device_id FROM state_runs s
WHERE NOT EXISTS (SELECT 1 FROM devices d WHERE d.id = s.device_id)
UNION
SELECT device_id FROM presence s
WHERE NOT EXISTS (SELECT 1 FROM devices d WHERE d.id = s.device_id)
"""

#: Of the ids kept and those with a state or presence message received at or after
#: ``after`` (BRIN indexes on received_at, migration 0021), those :data:`IDS` has: each a
#: few index lookups (devices, state_runs and presence by device id).
IDS_SINCE = """
WITH unlisted AS MATERIALIZED (  -- the inventory first: the runs and presence of few
    SELECT c.id FROM (
        SELECT unnest(%(kept)s::text[]) AS id
        UNION SELECT device_id FROM state_samples WHERE received_at >= %(after)s
        UNION SELECT device_id FROM presence WHERE received_at >= %(after)s
    ) c
    WHERE NOT EXISTS (SELECT 1 FROM devices d WHERE d.id = c.id)
)
SELECT id FROM unlisted u
WHERE EXISTS (SELECT 1 FROM state_runs r WHERE r.device_id = u.id)
   OR EXISTS (SELECT 1 FROM presence p WHERE p.device_id = u.id)
"""


#: :data:`IDS_SINCE` with the ids heard from given (``%(heard)s``: every device id with a
#: state or presence message received since then, as the caller has already read them)
#: instead of the scans of what was received.
IDS_HEARD = """
WITH unlisted AS MATERIALIZED (
    SELECT c.id FROM (
        SELECT unnest(%(kept)s::text[]) AS id UNION SELECT unnest(%(heard)s::text[])
    ) c
    WHERE NOT EXISTS (SELECT 1 FROM devices d WHERE d.id = c.id)
)
SELECT id FROM unlisted u
WHERE EXISTS (SELECT 1 FROM state_runs r WHERE r.device_id = u.id)
   OR EXISTS (SELECT 1 FROM presence p WHERE p.device_id = u.id)
"""


@dataclass(frozen=True, slots=True)
class Unregistered:
    device_id: str
    first_seen: datetime
    last_seen: datetime
    messages: int


def unregistered(conn: psycopg.Connection) -> list[Unregistered]:
    """Each device id not in the inventory with its first and last message time and how
    many messages of it are stored."""
    with conn.cursor() as cur:
        return [Unregistered(d, a, b, int(n)) for d, a, b, n in cur.execute(LIST).fetchall()]


def unregistered_count(conn: psycopg.Connection) -> int:
    """How many device ids not in the inventory sent state or presence messages."""
    with conn.cursor() as cur:
        row = cur.execute(COUNT).fetchone()
    return int(row[0]) if row else 0


class UnregisteredCount:
    """:func:`unregistered_count` at each read of a long-running reader (``atmfleet
    serve``), without scanning the whole history each time.

    A full count (:meth:`count` with ``full``) reads the ids of :data:`IDS` and keeps
    them. Another one looks only at the ids kept and at those of the state and presence
    messages received since ``late_ms`` before the last count (:data:`IDS_SINCE`), and
    checks each against the inventory and the stored runs and presence: a device
    registered, or whose rows are all deleted, leaves the count at once; a new one
    enters it. What only a full count sees: a device taken out of the inventory (the
    caller counts in full when the inventory changed) and a message committed more than
    ``late_ms`` after it was received (the caller counts in full every few minutes), as
    for the device rows it reads the same way.
    """

    def __init__(self, late_ms: int = 60_000) -> None:
        self._late_ms = late_ms
        self._ids: list[str] | None = None
        self._at: datetime | None = None  # the database's now at the last count

    def count(self, conn: psycopg.Connection, *, full: bool, heard: list[str] | None = None) -> int:
        """The count now, in full if ``full`` or none was made before. Runs in the
        connection's transaction. ``heard``: the ids of every device (or at least of every
        one not in the inventory) with a state or presence message received since
        ``late_ms`` before the last count, when the caller has read them already (serve's
        device rows read them in the same transaction): then only those are checked."""
        with conn.cursor() as cur:
            (at,) = cur.execute("SELECT now()").fetchone() or (None,)
            if full or self._ids is None or self._at is None:
                ids = [i for (i,) in cur.execute(IDS).fetchall()]
            elif heard is not None:
                given = {"kept": self._ids, "heard": heard}
                ids = [i for (i,) in cur.execute(IDS_HEARD, given).fetchall()]
            else:
                after = self._at - timedelta(milliseconds=self._late_ms)
                params = {"kept": self._ids, "after": after}
                ids = [i for (i,) in cur.execute(IDS_SINCE, params).fetchall()]
        self._ids, self._at = ids, at
        return len(ids)

    def forget(self) -> None:
        """Make the next count a full one."""
        self._ids = self._at = None
