"""Devices that send messages but are not in the inventory.

Their messages are stored like any other (nothing is lost: loading the inventory later
makes them count); these reads make them visible (``atmfleet db unregistered``, the metric
``atmfleet_unregistered_devices``, the daily bulletin's footnotes).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

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

#: Cheap enough for every scrape: state runs (a handful per device and day) and presence.
COUNT = """
SELECT count(*) FROM (
    SELECT device_id FROM state_runs UNION SELECT device_id FROM presence
) seen
WHERE NOT EXISTS (SELECT 1 FROM devices d WHERE d.id = seen.device_id)
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
