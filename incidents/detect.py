"""What a device's timeline says about an outage now (pure; docs/incidents.md, "Opening").

The timeline is the one the indicators use (:func:`rules.timeline.build_timeline`, the
same labels and causes: docs/kpis.md); the scheduled spans are the ones 开机率 counts
(:func:`rules.uptime.scheduled_spans`: service window ∩ the device's time in the fleet).
Nothing here re-derives availability: it reads the labels.

- The *outage* is the trailing stretch of the timeline whose labels are all downtime
  causes that may open an incident (fault, cash_out, deposit_full, communications,
  power, supervisor). Any other label (available, planned, closed, unknown) ends it.
- Its *cause* is its first label other than supervisor (a fault during which the
  technician works in maintenance mode stays a fault); an outage that is only
  supervisor time is ``supervisor`` (supervisor mode too long).
- Its *down time* is the part inside the scheduled spans: time outside the service window
  is not downtime, and does not count towards the debounce.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from rules.config import INCIDENT_CAUSES
from rules.labels import Label
from rules.timeline import Interval, Span

DOWN_LABELS = frozenset(INCIDENT_CAUSES)


@dataclass(frozen=True, slots=True)
class Outage:
    start: int  # ms: the first moment of the trailing down stretch
    cause: Label
    down_ms: int  # inside the scheduled spans

    def due(self, debounce_s: Mapping[Label, int]) -> bool:
        """Whether it has lasted the debounce of its cause (a cause without a debounce
        never opens an incident; an outage wholly outside the window never does)."""
        seconds = debounce_s.get(self.cause)
        if seconds is None or self.down_ms <= 0:
            return False
        return self.down_ms >= seconds * 1000


@dataclass(frozen=True, slots=True)
class Observation:
    label: Label | None  # the label at the horizon (None: no timeline)
    since: int | None  # when that label began (the trailing interval's start)
    outage: Outage | None

    @property
    def available(self) -> bool:
        return self.label is Label.AVAILABLE


def overlap_ms(a: int, b: int, spans: Sequence[Span]) -> int:
    total = 0
    for s0, s1 in spans:
        lo, hi = max(a, s0), min(b, s1)
        if lo < hi:
            total += hi - lo
    return total


def observe(timeline: Sequence[Interval], scheduled: Sequence[Span]) -> Observation:
    """The device's situation at the end of ``timeline`` (sorted, merged intervals)."""
    if not timeline:
        return Observation(None, None, None)
    last_a, _last_b, label = timeline[-1]
    if label not in DOWN_LABELS:
        return Observation(label, last_a, None)
    i = len(timeline)
    while i > 0 and timeline[i - 1][2] in DOWN_LABELS:
        i -= 1
    stretch = timeline[i:]
    cause = next((lab for _, _, lab in stretch if lab is not Label.SUPERVISOR), Label.SUPERVISOR)
    down = sum(overlap_ms(a, b, scheduled) for a, b, _ in stretch)
    return Observation(label, last_a, Outage(stretch[0][0], cause, down))
