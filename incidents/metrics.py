"""Incident metrics for ``atmfleet serve`` (docs/metrics.md, "Incidents").

:func:`read` takes plain values from the store in one statement per part; :func:`families`
turns them into fresh metric families (the exporter calls both, see exporters/metrics.py).

- ``atmfleet_incidents{state, class, vendor, sla_status}``: incidents not closed, counted;
- ``atmfleet_incident_info{incident, device, branch, subbranch, vendor, class, state}``: 1
  per active incident (not restored or closed; at most one per device), so that device
  alerts can look up the incident of their device;
- ``atmfleet_incident_sla_breached{incident, device, branch, subbranch, vendor,
  deadline}``: 1 per active incident and deadline (response, repair) past its deadline
  whose clock still runs (response: not on site yet; repair: not restored yet);
- ``atmfleet_incident_engine_last_pass_timestamp_seconds{engine}`` and
  ``atmfleet_incident_engine_cursor_timestamp_seconds{engine}``: when the engine last
  finished a pass, and the store time it had followed up to.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import psycopg
from prometheus_client.core import GaugeMetricFamily, Metric

from incidents.model import ACTIVE_STATES
from incidents.sla import status

QUERY = """
SELECT i.id, i.device_id, i.branch_id, i.subbranch_id, i.vendor, i."class", i.state,
       i.suspended_at IS NOT NULL, i.contract IS NOT NULL, i.on_site_at IS NULL,
       i.restored_at IS NULL,
       coalesce(array_agg(s.deadline || ':' || s.kind) FILTER (WHERE s.kind IS NOT NULL), '{}')
FROM incidents i
LEFT JOIN incident_sla s ON s.incident_id = i.id AND s.cycle = i.cycle
WHERE i.state <> 'closed'
GROUP BY i.id
ORDER BY i.id
"""
ENGINES = """
SELECT name, extract(epoch FROM last_pass_at)::float8, extract(epoch FROM cursor_at)::float8
FROM incident_engine ORDER BY name
"""


@dataclass
class IncidentSnapshot:
    counts: dict[tuple[str, str, str, str], int] = field(default_factory=dict)
    # (incident, device, branch, subbranch, vendor, class, state)
    info: list[tuple[str, str, str, str, str, str, str]] = field(default_factory=list)
    # (incident, device, branch, subbranch, vendor, deadline)
    breached: list[tuple[str, str, str, str, str, str]] = field(default_factory=list)
    engines: list[tuple[str, float | None, float | None]] = field(default_factory=list)


_ACTIVE = frozenset(s.value for s in ACTIVE_STATES)


def read(conn: psycopg.Connection[Any]) -> IncidentSnapshot:
    snap = IncidentSnapshot()
    for row in conn.execute(QUERY).fetchall():
        iid, dev, br, sub, vendor, cls, state, suspended, contract, not_on_site, not_restored, kinds = row  # fmt: skip
        mark_kinds = [k.split(":", 1)[1] for k in kinds]
        sla = status(mark_kinds, suspended and state in _ACTIVE, contract)
        key = (state, cls, vendor, sla)
        snap.counts[key] = snap.counts.get(key, 0) + 1
        if state not in _ACTIVE:
            continue
        snap.info.append((str(iid), dev, br, sub, vendor, cls, state))
        for deadline, running in (("response", not_on_site), ("repair", not_restored)):
            if running and f"{deadline}:breach" in kinds:
                snap.breached.append((str(iid), dev, br, sub, vendor, deadline))
    snap.engines = [(n, a, b) for n, a, b in conn.execute(ENGINES).fetchall()]
    return snap


def families(snap: IncidentSnapshot) -> Iterator[Metric]:
    g = GaugeMetricFamily
    counts = g(
        "atmfleet_incidents",
        "Incidents not closed, by state, class, vendor and SLA status.",
        labels=["state", "class", "vendor", "sla_status"],
    )
    for key, n in sorted(snap.counts.items()):
        counts.add_metric(list(key), n)
    yield counts
    info = g(
        "atmfleet_incident_info",
        "1 per active incident (not restored or closed): the device's open incident.",
        labels=["incident", "device", "branch", "subbranch", "vendor", "class", "state"],
    )
    for row in snap.info:
        info.add_metric(list(row), 1)
    yield info
    breached = g(
        "atmfleet_incident_sla_breached",
        "1 per active incident and deadline past due whose clock still runs.",
        labels=["incident", "device", "branch", "subbranch", "vendor", "deadline"],
    )
    for b in snap.breached:
        breached.add_metric(list(b), 1)
    yield breached
    last = g(
        "atmfleet_incident_engine_last_pass_timestamp_seconds",
        "When the incident engine last finished a pass.",
        labels=["engine"],
    )
    cursor = g(
        "atmfleet_incident_engine_cursor_timestamp_seconds",
        "The store time the incident engine has followed up to.",
        labels=["engine"],
    )
    for name, at, cur in snap.engines:
        if at is not None:
            last.add_metric([name], at)
        if cur is not None:
            cursor.add_metric([name], cur)
    yield from (last, cursor)
