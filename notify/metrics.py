"""The notifier's metrics, read from the store on each scrape (a custom collector): the
counters of ``notify_counters`` per channel, what is pending, what was given up.

Registered by ``atmfleet serve`` (exporters/metrics.py) and served by ``atmfleet notify
serve`` on ``/metrics``; docs/metrics.md and docs/notifications.md list the families.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from typing import Any

import psycopg
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from atmfleet.errors import AtmfleetError

log = logging.getLogger(__name__)

Connect = Callable[[], psycopg.Connection[Any]]


def read(conn: psycopg.Connection[Any]) -> dict[str, Any]:
    """Counters and outbox state per channel (also ``atmfleet notify status --json``)."""
    present = conn.execute("SELECT to_regclass('notify_outbox') IS NOT NULL").fetchone()
    if not present or not present[0]:
        return {"channels": {}, "oldest_pending_s": None}
    channels: dict[str, dict[str, int]] = {}

    def slot(name: str) -> dict[str, int]:
        return channels.setdefault(
            name, {"sent": 0, "retried": 0, "failed": 0, "pending": 0, "given_up_rows": 0}
        )

    for name, sent, retried, failed in conn.execute(
        "SELECT channel, sent, retried, failed FROM notify_counters ORDER BY channel"
    ):
        s = slot(name)
        s.update(sent=int(sent), retried=int(retried), failed=int(failed))
    for name, status, n in conn.execute(
        "SELECT channel, status, count(*) FROM notify_outbox WHERE status <> 'sent'"
        " GROUP BY channel, status"
    ):
        slot(name)["pending" if status == "pending" else "given_up_rows"] = int(n)
    row = conn.execute(
        "SELECT extract(epoch FROM now() - min(created_at)) FROM notify_outbox"
        " WHERE status = 'pending'"
    ).fetchone()
    oldest = float(row[0]) if row and row[0] is not None else None
    return {"channels": channels, "oldest_pending_s": oldest}


class NotifyCollector:
    """Yields fresh families from the store on each ``collect()``, over one connection
    (``connect()`` an autocommit connection), opened on first use and again after an
    error."""

    def __init__(self, connect: Connect) -> None:
        self.connect = connect
        self._conn: psycopg.Connection[Any] | None = None

    def describe(self) -> list[Metric]:
        return []

    def _read(self) -> dict[str, Any]:
        if self._conn is None or self._conn.closed:
            self._conn = self.connect()
        try:
            return read(self._conn)
        except psycopg.Error:
            self._conn.close()
            self._conn = None
            raise

    def collect(self) -> Iterator[Metric]:
        up = GaugeMetricFamily(
            "atmfleet_notify_store_up", "1 if the notifier's tables could be read."
        )
        try:
            data = self._read()
        except (psycopg.Error, AtmfleetError) as exc:
            log.warning("notify metrics: cannot read the store: %s", type(exc).__name__)
            up.add_metric([], 0)
            yield up
            return
        up.add_metric([], 1)
        yield up
        sent = CounterMetricFamily(
            "atmfleet_notify_sent", "Messages a channel accepted.", labels=["channel"]
        )
        retried = CounterMetricFamily(
            "atmfleet_notify_retried",
            "Attempts that failed and were scheduled again (backoff).",
            labels=["channel"],
        )
        failed = CounterMetricFamily(
            "atmfleet_notify_failed",
            "Notifications given up after the last attempt (or whose recipient maps to no "
            'channel: channel="(unrouted)").',
            labels=["channel"],
        )
        pending = GaugeMetricFamily(
            "atmfleet_notify_pending", "Outbox rows waiting to be sent.", labels=["channel"]
        )
        for name, c in sorted(data["channels"].items()):
            sent.add_metric([name], c["sent"])
            retried.add_metric([name], c["retried"])
            failed.add_metric([name], c["failed"])
            pending.add_metric([name], c["pending"])
        yield sent
        yield retried
        yield failed
        yield pending
        oldest = GaugeMetricFamily(
            "atmfleet_notify_oldest_pending_age_seconds",
            "Age of the oldest pending outbox row (0 when none).",
        )
        oldest.add_metric([], data["oldest_pending_s"] or 0.0)
        yield oldest
