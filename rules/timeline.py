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
from typing import Any

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


def split_spans(spans: Sequence[Span], cuts: Sequence[Span]) -> tuple[list[Span], list[Span]]:
    """``spans`` (sorted, non-overlapping) split by ``cuts`` (merged): the parts outside
    the cuts and the parts inside them, each in time order."""
    outside: list[Span] = []
    inside: list[Span] = []
    j = 0
    for a, b in spans:
        while j < len(cuts) and cuts[j][1] <= a:
            j += 1
        pos, k = a, j
        while pos < b:
            if k >= len(cuts) or cuts[k][0] >= b:
                outside.append((pos, b))
                break
            c0, c1 = cuts[k]
            if c0 > pos:
                outside.append((pos, c0))
                pos = c0
            cut = min(c1, b)
            inside.append((pos, cut))
            pos = cut
            if c1 <= b:
                k += 1
    return outside, inside


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


# --- the sweep over columns (a fleet at once) ------------------------------------------

#: Every label, in the order their codes (their index here) stand for them in columns.
LABELS: tuple[Label, ...] = tuple(Label)
_CODE = {label: i for i, label in enumerate(LABELS)}
_COMM = _CODE[Label.COMMUNICATIONS]
#: A label code's rank in the order labels sort (as ``str``), for points that tie on
#: (ts, kind, seq, end): the order :func:`_add_points` sorts them in.
_RANK = [sorted(LABELS).index(label) for label in LABELS]


def label_code(label: Label) -> int:
    """The code of ``label`` in columns (its index in :data:`LABELS`)."""
    return _CODE[label]


@dataclass(slots=True)
class PointColumns:
    """Timeline points of many devices as columns (numpy arrays of one length): the
    device's row (0..n-1), ts, kind (0 online, 1 state, 2 offline), seq, end, label code
    (:data:`LABELS`; a state's, or communications for an offline) and heartbeat_s; in
    any order. What :func:`_add_points` makes of a device's runs and presence (no
    collector outage)."""

    device: Any
    ts: Any
    kind: Any
    seq: Any
    end: Any
    label: Any
    heartbeat_s: Any

    def with_edges(self, edges: Sequence[int], n: int) -> PointColumns:
        """These points and, for each of devices ``0..n-1``, a point at each of
        ``edges`` (our outages' edges, as :func:`_add_points` adds them)."""
        import numpy as np

        k = len(edges)
        if not k or not n:
            return self
        at = np.tile(np.asarray(edges, np.int64), n)
        cat = np.concatenate
        return PointColumns(
            cat([self.device, np.repeat(np.arange(n, dtype=np.int64), k)]),
            cat([self.ts, at]),
            cat([self.kind, np.full(len(at), _KEEP, np.int64)]),
            cat([self.seq, np.full(len(at), -1, np.int64)]),
            cat([self.end, at]),
            cat([self.label, np.full(len(at), _COMM, np.int64)]),
            cat([self.heartbeat_s, np.zeros(len(at), np.int64)]),
        )

    @classmethod
    def of(
        cls,
        runs: tuple[Any, Any, Any, Any, Any, Any],
        presence: Iterable[tuple[int, Presence]] = (),
    ) -> PointColumns:
        """``runs``: (device row, start, seq, end, label code, heartbeat_s) arrays; each
        ``presence`` of a device row as its point."""
        import numpy as np

        rows = [(d, p.at, _ONLINE if p.online else _OFFLINE) for d, p in presence]
        dev, at, kind = (np.array([r[k] for r in rows], dtype=np.int64) for k in range(3))
        r_dev, r_ts, r_seq, r_end, r_label, r_hb = runs
        n = len(r_ts)
        cat = np.concatenate
        return cls(
            cat([np.asarray(r_dev, np.int64), dev]),
            cat([np.asarray(r_ts, np.int64), at]),
            cat([np.full(n, _STATE, np.int64), kind]),
            cat([np.asarray(r_seq, np.int64), np.full(len(at), -1, np.int64)]),
            cat([np.asarray(r_end, np.int64), at]),
            cat([np.asarray(r_label, np.int64), np.full(len(at), _COMM, np.int64)]),
            cat([np.asarray(r_hb, np.int64), np.zeros(len(at), np.int64)]),
        )


#: Devices swept together by :func:`sweep_columns`: its temporaries are a dozen arrays
#: as long as the points, 300 MiB for a fleet's day of 100,000 devices at once; a slice
#: of the fleet at a time keeps them to a few tens of MiB, at the same speed.
SWEEP_SLICE = 16_384


def sweep_columns(
    points: PointColumns,
    n: int,
    start: int,
    until: int,
    timeout_factor: float,
    heartbeat_s: Any,
    span_set: Any,
    span_sets: Sequence[Sequence[Span]],
    met: Any = None,
    slice_of: int = SWEEP_SLICE,
    outages: Sequence[Span] = (),
) -> Any:
    """:func:`points_totals` of ``n`` devices at once, for one day: an ``(n, len(LABELS))``
    int64 array of each device's time by label (codes: :data:`LABELS`) inside its
    scheduled spans, ``span_sets[span_set[i]]`` for device ``i`` (sorted,
    non-overlapping, inside ``[start, until)``); ``heartbeat_s``: each device's own (its
    silence before its first state). The same integers as the sweep of each device's
    points (:func:`_sweep`), interval by interval: the points sorted as it sorts them,
    the cursor a running maximum, the label and timeout in force carried forward from
    the last point that set them.

    ``met``: an ``(n, len(LABELS))`` int64 array to lower, per device and label, to the
    time the label's first counted millisecond begins (untouched where it has none): the
    sweep's intervals follow one another in time, so the order of these times is the
    order :func:`points_totals` meets the labels in (its dict's order).

    The devices are swept ``slice_of`` at a time (rows ``[a, a + slice_of)``, each
    device's points together): a device's totals depend on its own points only.

    ``outages``: our own (the collector's, merged), as :func:`timeline_of_points` takes
    them: their edges are points of every device (it is not blamed for our silence) and
    their time is unknown whatever the device's label (the overlay)."""
    import numpy as np

    if outages:
        unknown = _CODE[Label.UNKNOWN]
        split = [split_spans(spans, outages) for spans in span_sets]
        totals = sweep_columns(
            points.with_edges([t for span in outages for t in span], n), n, start, until,
            timeout_factor, heartbeat_s, span_set, [out for out, _ in split], met, slice_of,
        )  # fmt: skip
        of = np.asarray(span_set, np.int64)
        inside = np.asarray([sum(b - a for a, b in ins) for _, ins in split], np.int64)[of]
        totals[:, unknown] += inside
        if met is not None:
            first = np.asarray([ins[0][0] if ins else 2**62 for _, ins in split], np.int64)
            met[:, unknown] = np.minimum(met[:, unknown], first[of])
        return totals
    if n <= slice_of:
        return _sweep_slice(
            points, n, start, until, timeout_factor, heartbeat_s, span_set, span_sets, met
        )
    heartbeat_s = np.asarray(heartbeat_s, np.int64)
    span_set = np.asarray(span_set, np.int64)
    out = np.zeros((n, len(LABELS)), np.int64)
    # The points in device order once; each slice is then one range of them.
    order = np.argsort(points.device, kind="stable")
    device = points.device[order]
    bounds = np.searchsorted(device, np.arange(0, n + slice_of, slice_of)).tolist()
    columns = (points.ts, points.kind, points.seq, points.end, points.label, points.heartbeat_s)
    for k, a in enumerate(range(0, n, slice_of)):
        b = min(a + slice_of, n)
        at = order[bounds[k] : bounds[k + 1]]
        part = PointColumns(device[bounds[k] : bounds[k + 1]] - a, *(c[at] for c in columns))
        out[a:b] = _sweep_slice(
            part, b - a, start, until, timeout_factor, heartbeat_s[a:b], span_set[a:b],
            span_sets, None if met is None else met[a:b],
        )  # fmt: skip
    return out


def _sweep_slice(
    points: PointColumns,
    n: int,
    start: int,
    until: int,
    timeout_factor: float,
    heartbeat_s: Any,
    span_set: Any,
    span_sets: Sequence[Sequence[Span]],
    met: Any,
) -> Any:
    """:func:`sweep_columns` of devices ``0..n-1`` at once."""
    import numpy as np

    keep = points.ts < until  # the sweep stops at the first point at or after until
    dev = points.device[keep]
    ts = points.ts[keep]
    kind = points.kind[keep]
    end = points.end[keep]
    label = points.label[keep]
    hb = points.heartbeat_s[keep]
    rank = np.asarray(_RANK, np.int64)[label]
    seq = points.seq[keep]
    order = np.argsort(dev, kind="stable")
    if len(ts):  # by device and time; the rest of the point only where those tie
        t0 = int(ts.min())
        span = int(ts.max()) - t0 + 1
        if span * (n + 1) < 2**62:
            primary = dev * span + (ts - t0)
            order = np.argsort(primary, kind="stable")
            ordered = primary[order]
            if (ordered[1:] == ordered[:-1]).any():
                order = np.lexsort((hb, rank, end, seq, kind, ts, dev))
        else:
            order = np.lexsort((hb, rank, end, seq, kind, ts, dev))
    dev, ts, kind, end, label, hb = (c[order] for c in (dev, ts, kind, end, label, hb))
    m = len(ts)
    idx = np.arange(m)
    first = np.ones(m, bool)
    first[1:] = dev[1:] != dev[:-1]
    state = kind == _STATE
    last = np.where(state, np.minimum(end, until), ts)
    reach = np.maximum(ts, last)
    # The cursor after each point: the running maximum of reach within its device (an
    # offset per device keeps one device's maximum from reaching into the next).
    cursor = np.empty(m, np.int64)
    if m:
        base = int(reach.min())
        width = int(reach.max()) - base + 1
        if width * (n + 1) >= 2**62:
            raise OverflowError("times too far apart for the column sweep")
        shifted = reach - base + dev * width
        cursor = np.maximum.accumulate(shifted) - dev * width + base
    before = np.empty(m, np.int64)  # the cursor before each point (a first: none)
    before[1:] = cursor[:-1]
    timeouts = {int(h): int(timeout_factor * int(h) * 1000) for h in np.unique(hb[state])}
    own = {int(h): int(timeout_factor * int(h) * 1000) for h in np.unique(heartbeat_s)}
    timeout_of = np.zeros(m, np.int64)
    for h, t in timeouts.items():
        timeout_of[state & (hb == h)] = t
    dev_timeout = np.zeros(n, np.int64)
    for h, t in own.items():
        dev_timeout[heartbeat_s == h] = t

    def carried(setter: Any) -> Any:
        """For each point, the index of the last point at or before it (in its device)
        that ``setter`` marks, or -1."""
        marked = np.where(setter, idx, -1)
        got = np.maximum.accumulate(marked) if m else marked
        start_of = np.maximum.accumulate(np.where(first, idx, 0)) if m else marked
        return np.where(got >= start_of, got, -1)

    sets_label = carried(state | (kind == _OFFLINE))
    sets_timeout = carried(state)
    # What is in force before point i: from the last setter before it.
    prev_label = np.full(m, -1, np.int64)
    prev_label[1:] = sets_label[:-1]
    prev_label[first] = -1
    prev_timeout = np.full(m, -1, np.int64)
    prev_timeout[1:] = sets_timeout[:-1]
    prev_timeout[first] = -1
    label_before = np.where(prev_label >= 0, label[np.maximum(prev_label, 0)], _COMM)
    timeout_before = np.where(
        prev_timeout >= 0, timeout_of[np.maximum(prev_timeout, 0)], dev_timeout[dev]
    )
    parts_dev, parts_a, parts_b, parts_label = [], [], [], []

    def emit(mask: Any, d: Any, a: Any, b: Any, lab: Any) -> None:
        parts_dev.append(d[mask])
        parts_a.append(a[mask])
        parts_b.append(b[mask])
        parts_label.append(
            lab[mask] if isinstance(lab, np.ndarray) else np.full(int(mask.sum()), lab)
        )

    # Before a device's first point: never heard from.
    emit(first & (ts > start), dev, np.full(m, start, np.int64), ts, _COMM)
    # A gap before a later point: silent longer than the timeout, or the label in force.
    gap = ~first & (ts > before)
    gap_label = np.where(ts - before > timeout_before, _COMM, label_before)
    emit(gap, dev, before, ts, gap_label)
    # A state run from the cursor to its last sample.
    at = np.where(first, ts, np.maximum(before, ts))
    emit(state & (last > at), dev, at, last, label)
    # After a device's last point, up to until.
    lasts = np.flatnonzero(np.append(first[1:], True)) if m else idx
    ldev = dev[lasts]
    lcur = cursor[lasts]
    ls = sets_label[lasts]
    lt = sets_timeout[lasts]
    l_label = np.where(ls >= 0, label[np.maximum(ls, 0)], _COMM)
    l_timeout = np.where(lt >= 0, timeout_of[np.maximum(lt, 0)], dev_timeout[ldev])
    tail_label = np.where(until - lcur > l_timeout, _COMM, l_label)
    emit(until > lcur, ldev, lcur, np.full(len(lasts), until, np.int64), tail_label)
    # A device with no point before until: never heard from.
    silent = np.ones(n, bool)
    silent[ldev] = False
    every = np.arange(n)
    emit(silent, every, np.full(n, start, np.int64), np.full(n, until, np.int64), _COMM)
    d = np.concatenate(parts_dev)
    a = np.concatenate(parts_a)
    b = np.concatenate(parts_b)
    lab = np.concatenate(parts_label).astype(np.int64)
    # Each interval's time inside its device's scheduled spans (one set per device).
    width_k = max((len(s) for s in span_sets), default=0)
    lo_k = np.zeros((len(span_sets), max(width_k, 1)), np.int64)
    hi_k = np.zeros((len(span_sets), max(width_k, 1)), np.int64)
    for i, spans in enumerate(span_sets):
        for k, (s0, s1) in enumerate(spans):
            lo_k[i, k], hi_k[i, k] = s0, s1
    of = np.asarray(span_set, np.int64)[d]
    nl = len(LABELS)
    totals = np.zeros(n * nl, np.int64)
    key = d * nl + lab
    flat_met = None if met is None else met.reshape(-1)
    for k in range(width_k):
        begin = np.maximum(a, lo_k[of, k])
        inside = np.minimum(b, hi_k[of, k]) - begin
        pos = inside > 0
        # int64 sums (np.add.at), exact whatever the period's length
        np.add.at(totals, key[pos], inside[pos])
        if flat_met is not None:
            np.minimum.at(flat_met, key[pos], begin[pos])
    return totals.reshape(n, nl)
