"""A device's availability timeline, built only from what it sent (docs/kpis.md, "Timeline").

Pure functions over plain values. Times are integer milliseconds since the Unix epoch
(UTC), so every sum is exact; :func:`ms` converts a ``datetime``.

Input, per device:

- :class:`StateRun` — consecutive ``state`` samples of one state with no silent gap
  between them (``start`` = first sample's ts, ``end`` = last sample's ts). A single sample
  is a run with ``start == end``. :func:`compress` turns raw samples into runs; the SQL feed
  does the same with window functions, so a day of heartbeats becomes a handful of runs.
- :class:`Presence` — birth (online) and offline messages. An offline opens
  ``communications`` at its ``ts``, or at the collector's receive time for a broker will.
- :class:`PowerRestored` — ``[since, ts]``: the device had no power; that time is ``power``.
- collector outages ``(start, end)`` — ``unknown``, whatever the device said.

Output: sorted, non-overlapping, merged ``(start, end, label)`` intervals covering the
period up to the horizon (the moment of evaluation).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from rules.labels import STATE_LABEL, Label

Interval = tuple[int, int, Label]
Span = tuple[int, int]
#: A point of the timeline's sweep: (ts, kind, seq, end, label, heartbeat_s).
Point = tuple[int, int, int, int, "Label | None", int]

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def ms(at: datetime) -> int:
    """Milliseconds since the epoch of an aware ``datetime`` (exact)."""
    delta = at - _EPOCH
    return (delta.days * 86_400 + delta.seconds) * 1000 + delta.microseconds // 1000


def from_ms(value: int) -> datetime:
    return _EPOCH + timedelta(milliseconds=value)


@dataclass(frozen=True, slots=True)
class StateSample:
    """One ``state`` message."""

    ts: int
    state: str
    heartbeat_s: int = 60
    seq: int = -1


@dataclass(frozen=True, slots=True)
class StateRun:
    """Samples of one state from ``start`` to ``end`` (ts of first and last sample)."""

    start: int
    end: int
    state: str
    heartbeat_s: int = 60
    seq: int = -1


@dataclass(frozen=True, slots=True)
class Presence:
    """A birth (``online``) or an offline message."""

    ts: int
    online: bool
    will: bool = False
    received: int | None = None

    @property
    def at(self) -> int:
        """When it takes effect: a will's ts is only its connect time, so its receive time."""
        if self.will and not self.online and self.received is not None:
            return self.received
        return self.ts


@dataclass(frozen=True, slots=True)
class PowerRestored:
    """``power_restored`` event: power was lost at ``since`` and is back at ``ts``."""

    since: int
    ts: int


# Point kinds, in the order they are applied when they share a timestamp.
_ONLINE, _STATE, _OFFLINE, _KEEP = 0, 1, 2, 3
#: The kind of a state run's point (a feed building points itself: :data:`Point`).
STATE = _STATE


def compress(
    samples: Iterable[StateSample], timeout_factor: float = 3.0, breaks: Iterable[int] = ()
) -> list[StateRun]:
    """Collapse samples into runs; duplicates (same seq, or same ts and state) are dropped.

    A run ends at a change of state, at a silent gap longer than the timeout, and at
    every time in ``breaks`` (presence messages: a run never spans one).
    """
    ordered = sorted(samples, key=lambda s: (s.ts, s.seq))
    cuts = sorted(set(breaks))
    runs: list[StateRun] = []
    seen_seq: set[int] = set()
    cut_i = 0
    first: StateSample | None = None
    last: StateSample | None = None
    for s in ordered:
        if s.seq >= 0:
            if s.seq in seen_seq:
                continue
            seen_seq.add(s.seq)
        if first is not None and last is not None:
            # Skip breaks up to the run's last sample; one left at or before s cuts the run.
            while cut_i < len(cuts) and cuts[cut_i] <= last.ts:
                cut_i += 1
            broken = cut_i < len(cuts) and cuts[cut_i] <= s.ts
            timeout = timeout_factor * last.heartbeat_s * 1000
            if s.state == last.state and not broken and s.ts - last.ts <= timeout:
                last = s
                continue
            runs.append(StateRun(first.ts, last.ts, first.state, last.heartbeat_s, first.seq))
        first = last = s
    if first is not None and last is not None:
        runs.append(StateRun(first.ts, last.ts, first.state, last.heartbeat_s, first.seq))
    return runs


def build_timeline(
    runs: Sequence[StateRun],
    start: int,
    end: int,
    *,
    horizon: int | None = None,
    presence: Sequence[Presence] = (),
    power: Sequence[PowerRestored] = (),
    outages: Sequence[Span] = (),
    timeout_factor: float = 3.0,
    default_heartbeat_s: int = 60,
    stops: Sequence[Span] = (),
) -> list[Interval]:
    """The labelled timeline of ``[start, min(end, horizon))``.

    Give the feed's context: the last points before ``start`` and the first after
    ``end`` (so a gap across the period's edges is judged as a whole). ``horizon`` is the
    moment of evaluation (default ``end``): with no point after the last one, the silence
    up to the horizon is a gap like any other. ``stops`` are approved registered planned
    stops of the device (:func:`registered_stops`).
    """
    points: list[Point] = [
        (r.start, _STATE, r.seq, r.end, STATE_LABEL[r.state], r.heartbeat_s) for r in runs
    ]
    return timeline_of_points(
        points, start, end, horizon=horizon, presence=presence, power=power,
        outages=_merge_spans(outages), timeout_factor=timeout_factor,
        default_heartbeat_s=default_heartbeat_s, stops=stops,
    )  # fmt: skip


def timeline_of_points(
    points: list[Point],
    start: int,
    end: int,
    *,
    horizon: int | None = None,
    presence: Sequence[Presence] = (),
    power: Sequence[PowerRestored] = (),
    outages: Sequence[Span] = (),
    timeout_factor: float = 3.0,
    default_heartbeat_s: int = 60,
    stops: Sequence[Span] = (),
) -> list[Interval]:
    """:func:`build_timeline` of the runs' points (``(start, STATE, seq, end, label,
    heartbeat_s)`` each, as it makes them; ``points`` is extended and sorted in place);
    ``outages`` already merged (:func:`merge_spans`), as a feed merges them once for
    every device."""
    stop = end if horizon is None else min(end, horizon)
    until = end if horizon is None else horizon
    if stop <= start:
        return []
    _add_points(points, presence, outages)
    out = list(_sweep(points, start, until, timeout_factor, default_heartbeat_s))
    merged_outages = outages
    timeline = _clip_merge(out, start, stop)
    if power:
        spans = _merge_spans((p.since, p.ts) for p in power)
        timeline = overlay(timeline, spans, Label.POWER, keep=(Label.UNKNOWN,))
    if stops:
        timeline = registered_stops(timeline, stops)
    if merged_outages:
        timeline = overlay(timeline, merged_outages, Label.UNKNOWN)
    return timeline


def _add_points(points: list[Point], presence: Sequence[Presence], outages: Sequence[Span]) -> None:
    """Presence and our outages' edges as points beside the runs', then all sorted."""
    for p in presence:
        at = p.at
        if p.online:
            points.append((at, _ONLINE, -1, at, None, 0))
        else:
            points.append((at, _OFFLINE, -1, at, Label.COMMUNICATIONS, 0))
    for a, b in outages:
        # Our outage's edges count as points: the device is not blamed for our silence.
        points.append((a, _KEEP, -1, a, None, 0))
        points.append((b, _KEEP, -1, b, None, 0))
    points.sort()


def _sweep(
    points: Sequence[Point], start: int, until: int, timeout_factor: float, heartbeat_s: int
) -> Iterator[Interval]:
    """The timeline's intervals from the sorted points up to ``until``, in time order,
    not yet clipped to the period nor merged (``heartbeat_s``: the device's own, for
    its silence before its first state)."""
    cursor: int | None = None
    label = Label.COMMUNICATIONS  # before the first state: never heard from
    timeout = int(timeout_factor * heartbeat_s * 1000)
    for ts, kind, _seq, run_end, plabel, hb in points:
        if ts >= until:
            break
        if cursor is None:
            if ts > start:
                yield (start, ts, Label.COMMUNICATIONS)
            cursor = ts
        elif ts > cursor:
            yield (cursor, ts, Label.COMMUNICATIONS if ts - cursor > timeout else label)
            cursor = ts
        if kind == _STATE:
            assert plabel is not None
            label = plabel
            timeout = int(timeout_factor * hb * 1000)
            last = min(run_end, until)
            if last > cursor:
                yield (cursor, last, label)
                cursor = last
        elif kind == _OFFLINE:
            label = Label.COMMUNICATIONS
    if cursor is None:
        yield (start, until, Label.COMMUNICATIONS)
    elif until > cursor:
        yield (cursor, until, Label.COMMUNICATIONS if until - cursor > timeout else label)


def points_totals(
    points: list[Point],
    start: int,
    end: int,
    horizon: int,
    spans: Sequence[Sequence[Span]],
    *,
    presence: Sequence[Presence] = (),
    timeout_factor: float = 3.0,
    default_heartbeat_s: int = 60,
) -> list[dict[Label, int]]:
    """For a device with no power cut, registered stop or collector outage: the time
    by label inside each of ``spans`` (one sorted, non-overlapping list per day, inside
    ``[start, min(end, horizon))``), the same as :func:`rules.uptime.label_totals` of
    :func:`timeline_of_points` over each, labels in the same order (the order the sweep
    meets them), without building the timeline: the sweep's intervals are added up as
    they come. ``points`` is extended and sorted in place."""
    out: list[dict[Label, int]] = [{} for _ in spans]
    if min(end, horizon) <= start:
        return out
    _add_points(points, presence, ())
    days = [(totals, day) for totals, day in zip(out, spans, strict=True) if day]
    if len(days) == 1 and len(days[0][1]) == 1:  # one day, one span: the common case
        totals = days[0][0]
        (s0, s1) = days[0][1][0]
        get = totals.get
        for a, b, label in _sweep(points, start, horizon, timeout_factor, default_heartbeat_s):
            if a < s0:
                a = s0
            if b > s1:
                b = s1
            if b > a:
                totals[label] = get(label, 0) + (b - a)
        return out
    for a, b, label in _sweep(points, start, horizon, timeout_factor, default_heartbeat_s):
        for totals, day in days:
            for s0, s1 in day:
                lo = a if a > s0 else s0
                hi = b if b < s1 else s1
                if hi > lo:
                    totals[label] = totals.get(label, 0) + (hi - lo)
    return out


def registered_stops(timeline: Sequence[Interval], stops: Iterable[Span]) -> list[Interval]:
    """Merge approved registered planned stops (stops/, docs/kpis.md "Registered planned
    stops") into a timeline: inside a stop, every downtime cause the device reported
    (fault, cash-out, offline, power, supervisor, closed) becomes ``planned``; time it was
    available stays available (it served) and unknown time stays unknown (no evidence).
    Device-declared planned time is planned already, so the planned time of a day is the
    union of both, counted once (the daily cap then applies to that union)."""
    spans = _merge_spans(stops)
    if not spans or not timeline:
        return list(timeline)
    return overlay(timeline, spans, Label.PLANNED, keep=(Label.AVAILABLE, Label.UNKNOWN))


def merge_spans(spans: Iterable[Span]) -> list[Span]:
    """Sorted, non-overlapping spans covering the same time (empty ones dropped)."""
    return _merge_spans(spans)


def _merge_spans(spans: Iterable[Span]) -> list[Span]:
    merged: list[Span] = []
    for a, b in sorted(spans):
        if b <= a:
            continue
        if merged and a <= merged[-1][1]:
            if b > merged[-1][1]:
                merged[-1] = (merged[-1][0], b)
        else:
            merged.append((a, b))
    return merged


def _clip_merge(intervals: Iterable[Interval], lo: int, hi: int) -> list[Interval]:
    out: list[Interval] = []
    for a, b, label in intervals:
        if a < lo:
            a = lo
        if b > hi:
            b = hi
        if b <= a:
            continue
        if out and out[-1][2] is label and out[-1][1] == a:
            out[-1] = (out[-1][0], b, label)
        else:
            out.append((a, b, label))
    return out


def overlay(
    timeline: Sequence[Interval],
    spans: Sequence[Span],
    label: Label,
    keep: tuple[Label, ...] = (),
) -> list[Interval]:
    """Relabel the parts of ``timeline`` inside ``spans`` (sorted, merged) as ``label``,
    except parts labelled one of ``keep``."""
    out: list[Interval] = []
    j = 0
    n = len(spans)
    for a, b, lab in timeline:
        if lab in keep:
            out.append((a, b, lab))
            continue
        pos = a
        while j < n and spans[j][1] <= pos:
            j += 1
        k = j
        while pos < b:
            if k >= n or spans[k][0] >= b:
                out.append((pos, b, lab))
                break
            s0, s1 = spans[k]
            if s0 > pos:
                out.append((pos, s0, lab))
                pos = s0
            cut = min(s1, b)
            out.append((pos, cut, label))
            pos = cut
            if s1 <= b:
                k += 1
    return _clip_merge(out, timeline[0][0], timeline[-1][1]) if out else out
