"""SLA deadlines of an incident, from its stored timestamps only (pure; docs/incidents.md).

A deadline's clock starts at a stored time (response: the dispatch; repair: the
incident's opening, or the outage's start, per the contract) and stops at another (the
technician on site; the device restored). It runs in calendar time or only inside the
device's service window (``clock: service``), and not while the incident is suspended
when the contract says so. :func:`due_at` finds the instant a clock reaches a number of
seconds; :func:`marks` lists every warning, breach and escalation level with the instant
it falls due. Nothing is kept in memory between calls, so a restarted engine computes the
same instants and, with the marks already stored, writes nothing twice.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import date, timedelta

from rules.config import SlaContract
from rules.timeline import Span, from_ms, ms

#: Open spans of the clock on one local day (service hours), or None for calendar time.
DaySpans = Callable[[date], Sequence[Span]]

#: How far ahead a deadline is searched for before it is called unreachable (days).
HORIZON_DAYS = 400


def _subtract(spans: Sequence[Span], pauses: Sequence[Span]) -> list[Span]:
    out: list[Span] = []
    for a, b in spans:
        pos = a
        for p0, p1 in pauses:
            if p1 <= pos or p0 >= b:
                continue
            if p0 > pos:
                out.append((pos, p0))
            pos = max(pos, p1)
            if pos >= b:
                break
        if pos < b:
            out.append((pos, b))
    return out


def due_at(
    start: int,
    seconds: float,
    pauses: Sequence[Span] = (),
    day_spans: DaySpans | None = None,
    local_date: Callable[[int], date] | None = None,
) -> int | None:
    """The instant (ms) the clock started at ``start`` has run ``seconds``; None when it
    never does (paused for good, or no service time within :data:`HORIZON_DAYS`)."""
    need = round(seconds * 1000)
    pauses = sorted(p for p in pauses if p[1] > start)
    if day_spans is None or local_date is None:
        spans = _subtract([(start, 2**62)], pauses)
        for a, b in spans:
            if b - a >= need:
                return a + need
            need -= b - a
        return None
    day = local_date(start)
    for _ in range(HORIZON_DAYS):
        spans = [(max(a, start), b) for a, b in day_spans(day) if b > start]
        for a, b in _subtract(spans, pauses):
            if b - a >= need:
                return a + need
            need -= b - a
        day += timedelta(days=1)
    return None


@dataclass(frozen=True, slots=True)
class Mark:
    deadline: str  # response | repair
    kind: str  # warning | breach | escalation
    level: int  # 0 for warning and breach; 1.. for escalation levels
    due: int  # ms


@dataclass(frozen=True, slots=True)
class Clock:
    """One deadline's clock: started at ``start``, stopped at ``stop`` (None: running)."""

    deadline: str
    start: int | None
    stop: int | None
    hours: float | None


def marks(
    contract: SlaContract,
    clocks: Sequence[Clock],
    pauses: Sequence[Span],
    day_spans: DaySpans | None,
    local_date: Callable[[int], date] | None,
) -> list[Mark]:
    """Every mark the contract sets on these clocks that falls due before its clock
    stopped (a technician arriving after the deadline still breached it; one arriving
    before did not), with its due instant. Whether it is due *now* is the caller's
    comparison."""
    service = contract.clock == "service"
    used_pauses = pauses if contract.suspension_pauses else ()
    out: list[Mark] = []
    for clock in clocks:
        if clock.start is None or clock.hours is None:
            continue
        total = clock.hours * 3600
        wanted: list[tuple[str, int, float]] = []
        if contract.warning_share is not None:
            wanted.append(("warning", 0, total * contract.warning_share))
        wanted.append(("breach", 0, total))
        for n, level in enumerate(contract.escalation, start=1):
            wanted.append(("escalation", n, total + level.after_hours * 3600))
        for kind, level_no, seconds in wanted:
            due = due_at(
                clock.start,
                seconds,
                used_pauses,
                day_spans if service else None,
                local_date if service else None,
            )
            if due is None or (clock.stop is not None and due >= clock.stop):
                continue
            out.append(Mark(clock.deadline, kind, level_no, due))
    return out


def pauses_from(events: Sequence[tuple[str, int]], since: int) -> list[Span]:
    """Suspensions from (kind, at ms) history rows, oldest first: ``suspended`` opens one,
    ``resumed`` closes it; one still open runs to the end of time. Rows before ``since``
    (an earlier cycle) are ignored."""
    out: list[Span] = []
    opened: int | None = None
    for kind, at in events:
        if at < since:
            continue
        if kind == "suspended" and opened is None:
            opened = at
        elif kind == "resumed" and opened is not None:
            out.append((opened, at))
            opened = None
    if opened is not None:
        out.append((opened, 2**62))
    return out


def status(due_kinds: Sequence[str], suspended: bool, has_contract: bool) -> str:
    """The incident's SLA status for metrics and lists: none, ok, warning, breached,
    suspended (a suspension shows over the rest only while nothing is breached)."""
    if not has_contract:
        return "none"
    if "breach" in due_kinds or "escalation" in due_kinds:
        return "breached"
    if suspended:
        return "suspended"
    if "warning" in due_kinds:
        return "warning"
    return "ok"


__all__ = ["Clock", "Mark", "due_at", "from_ms", "marks", "ms", "pauses_from", "status"]
