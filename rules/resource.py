"""资源预警率 — the resource-warning rate W / S (docs/kpis.md, "Resource warnings").

Pure functions over plain values, all in integer milliseconds:

- a device's **warning spans**: from a state message that reports a cash or consumables
  warning (:class:`WarningPolicy`: a state such as ``cash_out``, a cash-unit status such
  as ``low``, a component ``warning``, a fault code such as ``PTR:PAPER_OUT``) to its next
  state message. The feed derives them from the stored state messages
  (``rules/queries.sql``, ``warning_spans``); :func:`warning_spans` does the same from
  plain samples;
- **W** = the part of the device's scheduled spans (the same as 开机率's) whose timeline
  label is one in which a warning counts (:attr:`WarningPolicy.counted`) and which lies
  in a warning span. The timeline decides when a message stops holding (a silent gap, a
  last will, a power cut, a collector outage), exactly as for 开机率;
- **S** is 开机率's business S (:class:`rules.uptime.Uptime.scheduled_ms`); W ⊆ S because
  the labels out of S (planned, unknown, business-excluded causes) never count.

Roll-ups add W and S; the ratio is ΣW / ΣS, never a mean of ratios; no S is no data.
:func:`resource_for` (at the end) puts the feed's read and this core together, as
``rules.feed``'s ``*_for`` functions do for the other indicators.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import date

from atmfleet.inventory import Device
from rules.config import Rules
from rules.feed import Feed, UptimeDays, closed
from rules.labels import Label
from rules.timeline import Interval, Span
from rules.timeline import _merge_spans as merge  # sorted, disjoint, touching joined
from rules.uptime import WindowSpans, day_span, scheduled_spans

#: Open end of a warning span with no later state message (cut by the timeline).
OPEN_END = 2**62


@dataclass(frozen=True, slots=True)
class WarningPolicy:
    """What is a warning, and in which timeline labels it counts (resolved once)."""

    states: frozenset[str]
    cash_units: frozenset[tuple[str, str]]  # (unit type, status)
    components: frozenset[tuple[str, str]]  # (component, status)
    fault_codes: frozenset[str]
    counted: frozenset[Label]

    @classmethod
    def from_rules(cls, rules: Rules) -> WarningPolicy:
        rw = rules.resource_warning
        counted = set(rw.counted_in) - set(rules.uptime.business_excluded_causes)
        counted -= {Label.PLANNED, Label.UNKNOWN}  # out of S, or no evidence
        return cls(
            states=frozenset(s.value for s in rw.states),
            cash_units=frozenset(
                (t.value, s.value) for t, statuses in rw.cash_units.items() for s in statuses
            ),
            components=frozenset(
                (c.value, s.value) for c, statuses in rw.components.items() for s in statuses
            ),
            fault_codes=frozenset(rw.fault_codes),
            counted=frozenset(counted),
        )

    def is_warning(
        self,
        state: str,
        cash_units: Iterable[Mapping[str, object]] = (),
        components: Mapping[str, str] | None = None,
        faults: Iterable[str] = (),
    ) -> bool:
        """Does one state message report a warning? (The SQL feed asks the same.)"""
        if state in self.states:
            return True
        if any((str(u.get("type")), str(u.get("status"))) in self.cash_units for u in cash_units):
            return True
        if components and any((k, v) in self.components for k, v in components.items()):
            return True
        return any(code in self.fault_codes for code in faults)

    def query_params(self) -> dict[str, list[str]]:
        """The parameters of the ``warning_spans`` query (rules/queries.sql)."""
        return {
            "states": sorted(self.states),
            "units": [json.dumps([{"type": t, "status": s}]) for t, s in sorted(self.cash_units)],
            "components": [json.dumps({c: s}) for c, s in sorted(self.components)],
            "faults": sorted(self.fault_codes),
        }


@dataclass(frozen=True, slots=True)
class WarningSample:
    """One state message reduced to what the rate needs."""

    ts: int
    warning: bool
    seq: int = -1


def warning_spans(samples: Iterable[WarningSample]) -> list[Span]:
    """Sorted, merged spans from each warning message to the next state message (open
    at the end: :data:`OPEN_END`); duplicates (same seq) count once."""
    seen: set[int] = set()
    ordered = []
    for s in sorted(samples, key=lambda s: (s.ts, s.seq)):
        if s.seq >= 0:
            if s.seq in seen:
                continue
            seen.add(s.seq)
        ordered.append(s)
    spans: list[Span] = []
    start: int | None = None
    for s in ordered:
        if s.warning and start is None:
            start = s.ts
        elif not s.warning and start is not None:
            if s.ts > start:
                spans.append((start, s.ts))
            start = None
    if start is not None:
        spans.append((start, OPEN_END))
    return merge(spans)


def counted_spans(
    timeline: Sequence[Interval], spans: Sequence[Span], counted: frozenset[Label]
) -> list[Span]:
    """The parts of ``spans`` (sorted, disjoint) whose timeline label is in ``counted``."""
    out: list[Span] = []
    j, n = 0, len(timeline)
    for s0, s1 in spans:
        while j < n and timeline[j][1] <= s0:
            j += 1
        k = j
        while k < n:
            a, b, label = timeline[k]
            if a >= s1:
                break
            if label in counted:
                lo, hi = max(a, s0), min(b, s1)
                if hi > lo:
                    if out and out[-1][1] == lo:
                        out[-1] = (out[-1][0], hi)
                    else:
                        out.append((lo, hi))
            if b > s1:
                break
            k += 1
    return out


def overlap_ms(a: Sequence[Span], b: Sequence[Span]) -> int:
    """Milliseconds in both ``a`` and ``b`` (each sorted and disjoint)."""
    total, i, j = 0, 0, 0
    while i < len(a) and j < len(b):
        lo, hi = max(a[i][0], b[j][0]), min(a[i][1], b[j][1])
        if hi > lo:
            total += hi - lo
        if a[i][1] < b[j][1]:
            i += 1
        else:
            j += 1
    return total


def warning_ms(
    timeline: Sequence[Interval],
    scheduled: Sequence[Span],
    warnings: Sequence[Span],
    counted: frozenset[Label],
) -> int:
    """W of one device over its ``scheduled`` spans (one local day, usually)."""
    if not warnings:
        return 0
    return overlap_ms(counted_spans(timeline, scheduled, counted), warnings)


@dataclass(slots=True)
class ResourceWarning:
    """W and S (ms) of one device, or of a roll-up, over a period."""

    warning_ms: int = 0
    scheduled_ms: int = 0
    devices: int = 0

    @property
    def rate(self) -> float | None:
        """W / S; None ("no data") when S is 0."""
        return self.warning_ms / self.scheduled_ms if self.scheduled_ms else None

    def add(self, other: ResourceWarning) -> None:
        self.warning_ms += other.warning_ms
        self.scheduled_ms += other.scheduled_ms


def rollup(
    per_device: Mapping[str, ResourceWarning], key: Callable[[str], str | None]
) -> dict[str, ResourceWarning]:
    """ΣW and ΣS over the devices of each group."""
    out: dict[str, ResourceWarning] = {}
    for device_id, rw in per_device.items():
        group = key(device_id)
        if group is None:
            continue
        acc = out.get(group)
        if acc is None:
            acc = out[group] = ResourceWarning()
        acc.add(rw)
        acc.devices += 1
    return out


def ranked(rates: Mapping[str, float | None]) -> list[tuple[int | None, str]]:
    """Groups ranked ascending by rate (lower is better); equal rates share a rank
    (1, 1, 3); no data is listed last, unranked."""
    with_data = sorted((r, g) for g, r in rates.items() if r is not None)
    out: list[tuple[int | None, str]] = []
    previous: float | None = None
    rank = 0
    for i, (rate, g) in enumerate(with_data, 1):
        if rate != previous:
            rank, previous = i, rate
        out.append((rank, g))
    out += [(None, g) for g in sorted(g for g, r in rates.items() if r is None)]
    return out


# ------------------------------------------------------------------ feed + pure core


def resource_for(
    feed: Feed,
    devices: Sequence[Device],
    up: UptimeDays,
    horizon: int,
    read_spans: Callable[[int, int], Mapping[str, list[Span]]] | None = None,
) -> dict[str, dict[date, ResourceWarning]]:
    """Every device's W and S for each local day of ``up`` (the 开机率 computation of the
    same devices and period, whose timelines and S are reused). Kept closed days are read
    (their W was kept over the same S); the other days are computed from the state
    messages, which are read only over the days that need it, and kept once closed.
    ``read_spans(lo, hi)``: the warning spans of ``[lo, hi)`` (default: read,
    :meth:`Feed.warning_spans`), for a caller that has read them already."""
    rules = feed.rules
    tz = rules.tz
    policy = WarningPolicy.from_rules(rules)
    if read_spans is None:
        params = policy.query_params()

        def read_spans(lo: int, hi: int) -> Mapping[str, list[Span]]:
            return feed.warning_spans(lo, hi, horizon, params)

    fingerprint = feed.fingerprint()
    # Every kept day's S (and W where kept): W is kept only into a day whose S is kept
    # with the same value (what keep_warnings updates), so only those are sent.
    kept = feed.kept_scheduled(fingerprint, up.days[0], up.days[-1])
    nothing: dict[date, tuple[int | None, int]] = {}

    def usable(device_id: str, day: date) -> bool:
        got = kept.get(device_id, nothing).get(day)
        return (
            got is not None
            and got[0] is not None
            and got[1] == up.per_device[device_id][day].scheduled_ms
        )

    missing = sorted({day for d in devices for day in up.days if not usable(d.id, day)})
    spans: Mapping[str, list[Span]] = {}
    if missing:
        lo, hi = day_span(missing[0], tz)[0], day_span(missing[-1], tz)[1]
        spans = read_spans(lo, hi)
    windows = WindowSpans(tz)
    is_closed = {day: closed(feed, day, horizon) for day in missing}
    out: dict[str, dict[date, ResourceWarning]] = {}
    to_keep: list[tuple[str, date, int, int]] = []
    # A device's timeline is asked for only where its W is computed and it has a
    # warning span (W is 0 without one): asking for any timeline builds them all
    # (rules.feed.Timelines), so a period whose W is kept builds none.
    for d in devices:
        warnings = merge(spans.get(d.id, ()))
        per_day: dict[date, ResourceWarning] = {}
        held = kept.get(d.id, nothing)
        for day, u in up.per_device[d.id].items():
            got = held.get(day)
            if got is not None and got[0] is not None and got[1] == u.scheduled_ms:
                per_day[day] = ResourceWarning(got[0], u.scheduled_ms, 1)
                continue
            w = 0
            if warnings:
                sched = scheduled_spans(d, day, rules, windows, horizon)
                w = warning_ms(up.timelines[d.id], sched, warnings, policy.counted)
            per_day[day] = ResourceWarning(w, u.scheduled_ms, 1)
            if got is not None and got[1] == u.scheduled_ms and is_closed.get(day, False):
                to_keep.append((d.id, day, w, u.scheduled_ms))
        out[d.id] = per_day
    feed.keep_warnings(fingerprint, to_keep)
    return out


def total(parts: Iterable[ResourceWarning]) -> ResourceWarning:
    """One device over several days: the sum, as one device."""
    out = ResourceWarning(devices=1)
    for part in parts:
        out.add(part)
    return out
