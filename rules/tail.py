"""剁尾巴: the bottom N of a ranking within each group, and how long each has stayed there.

Pure functions. A ranking is a list of entries (a device or a branch, its group — a
sub-branch or a tier — its value for the period: uptime ratio or daily volume, and the
target it is judged by). Lower is worse. Only an entry that falls short (value below its
target) can be in the tail: one at target is never "the tail". An entry with no value
("no data") is not ranked; :func:`no_data` lists them apart. Ties on the value are
broken by ``tiebreak`` (higher is worse: downtime for uptime, scheduled time for volume),
then by id, so the tail is the same on every run.

Streaks count consecutive periods in the tail, this one included; an earlier period in
which the entry had no data is skipped (it neither breaks nor extends the streak).
"""

from __future__ import annotations

import heapq
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass

from rules.uptime import Uptime


@dataclass(slots=True)
class Entry:
    """One ranked unit (read only once made: not frozen, because a frozen dataclass
    takes five times as long to make, and a ranking makes one per device and period)."""

    id: str
    group: str
    value: float | None
    tiebreak: float = 0.0
    target: float = float("inf")  # falls short when value < target

    @property
    def short(self) -> bool:
        return self.value is not None and self.value < self.target


@dataclass(frozen=True, slots=True)
class TailMember:
    id: str
    group: str
    value: float
    position: int  # 1 = the worst of its group
    streak: int  # consecutive periods in the tail, this one included
    target: float = float("inf")


def streaks(
    history: Sequence[Collection[str]],
    current: Iterable[str],
    no_data: Sequence[Collection[str]] | None = None,
) -> dict[str, int]:
    """Consecutive periods in the tail up to now: ``history`` holds the earlier tails'
    members, oldest first, ``no_data`` (same order) the entries without data in each; a
    period without data for an entry is skipped, any other period it is not in breaks
    its streak."""
    out: dict[str, int] = {}
    for ident in current:
        n = 1
        for k in range(len(history) - 1, -1, -1):
            if ident in history[k]:
                n += 1
            elif no_data is not None and ident in no_data[k]:
                continue
            else:
                break
        out[ident] = n
    return out


def no_data(entries: Iterable[Entry]) -> dict[str, list[str]]:
    """Per group, the entries without data (listed apart, never ranked)."""
    out: dict[str, list[str]] = {}
    for e in entries:
        if e.value is None:
            out.setdefault(e.group, []).append(e.id)
    return {g: sorted(ids) for g, ids in sorted(out.items())}


def tail(
    entries: Iterable[Entry],
    size: int,
    history: Sequence[Collection[str]] = (),
    history_no_data: Sequence[Collection[str]] | None = None,
) -> dict[str, list[TailMember]]:
    """The ``size`` worst entries of each group among those that fall short, worst
    first, with their streaks. A group with nobody short has no key."""
    groups: dict[str, list[Entry]] = {}
    for e in entries:
        if not e.short:
            continue
        groups.setdefault(e.group, []).append(e)
    chosen: dict[str, list[Entry]] = {}
    for group, members in groups.items():
        # the first ``size`` of them sorted (a day's uptime tail can find most of a
        # group short): the same as sorting them all and cutting
        chosen[group] = heapq.nsmallest(size, members, key=_worst_first)
    all_ids = [e.id for members in chosen.values() for e in members]
    runs = streaks(history, all_ids, history_no_data)
    return {
        group: [
            TailMember(e.id, group, float(e.value or 0.0), i + 1, runs[e.id], e.target)
            for i, e in enumerate(members)
        ]
        for group, members in sorted(chosen.items())
    }


def _worst_first(e: Entry) -> tuple[float, float, str]:
    return (e.value, -e.tiebreak, e.id)  # type: ignore[return-value]  # short: a value


def uptime_entries(
    per_unit: Mapping[str, Uptime],
    group: Callable[[str], str | None],
    target: Callable[[str], float] = lambda _i: float("inf"),
) -> list[Entry]:
    """Entries ranking devices (or branches) by 开机率 against their uptime target; ties:
    more downtime is worse."""
    return [
        Entry(ident, g, up.ratio, float(up.down_ms), target(ident))
        for ident, up in per_unit.items()
        if (g := group(ident)) is not None
    ]


def volume_entries(
    volumes: Mapping[str, int],
    scheduled_ms: Mapping[str, int],
    group: Callable[[str], str | None],
    days: Mapping[str, int] | None = None,
    threshold: Callable[[str], float | None] = lambda _i: float("inf"),
) -> list[Entry]:
    """Entries ranking by daily financial volume (volume / ``days`` with data; the whole
    volume when ``days`` is not given) against the low-yield threshold of the device's
    type; ties: the one with more scheduled time (more chance to serve) is worse. A
    device without scheduled time has no data; a type without threshold is not ranked."""
    out = []
    for ident, v in volumes.items():
        g = group(ident)
        limit = threshold(ident)
        if g is None or limit is None:
            continue
        n = 1 if days is None else days.get(ident, 0)
        value = float(v) / n if n and scheduled_ms.get(ident, 0) > 0 else None
        out.append(Entry(ident, g, value, float(scheduled_ms.get(ident, 0)), limit))
    return out
