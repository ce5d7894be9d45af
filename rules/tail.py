"""剁尾巴: the bottom N of a ranking within each group, and how long each has stayed there.

Pure functions. A ranking is a list of entries (a device or a branch, its group — a
sub-branch or a tier — and its value for the period: uptime ratio or volume). Lower is
worse. An entry with no value ("no data") is not ranked. Ties on the value are broken
by ``tiebreak`` (higher is worse: e.g. downtime seconds, or scheduled time for volume),
then by id, so the tail is the same on every run.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass

from rules.uptime import Uptime


@dataclass(frozen=True, slots=True)
class Entry:
    id: str
    group: str
    value: float | None
    tiebreak: float = 0.0


@dataclass(frozen=True, slots=True)
class TailMember:
    id: str
    group: str
    value: float
    position: int  # 1 = the worst of its group
    streak: int  # consecutive periods in the tail, this one included


def streaks(history: Sequence[Collection[str]], current: Iterable[str]) -> dict[str, int]:
    """Consecutive periods in the tail up to now: ``history`` holds the earlier tails'
    members, oldest first; a period missing from the history breaks a streak."""
    out: dict[str, int] = {}
    for ident in current:
        n = 1
        for earlier in reversed(history):
            if ident not in earlier:
                break
            n += 1
        out[ident] = n
    return out


def tail(
    entries: Iterable[Entry], size: int, history: Sequence[Collection[str]] = ()
) -> dict[str, list[TailMember]]:
    """The ``size`` worst entries of each group, worst first, with their streaks."""
    groups: dict[str, list[Entry]] = {}
    for e in entries:
        if e.value is None:
            continue
        groups.setdefault(e.group, []).append(e)
    chosen: dict[str, list[Entry]] = {}
    for group, members in groups.items():
        members.sort(key=lambda e: (e.value, -e.tiebreak, e.id))
        chosen[group] = members[:size]
    all_ids = [e.id for members in chosen.values() for e in members]
    runs = streaks(history, all_ids)
    return {
        group: [
            TailMember(e.id, group, float(e.value or 0.0), i + 1, runs[e.id])
            for i, e in enumerate(members)
        ]
        for group, members in sorted(chosen.items())
    }


def uptime_entries(
    per_unit: Mapping[str, Uptime], group: Callable[[str], str | None]
) -> list[Entry]:
    """Entries ranking devices (or branches) by 开机率; ties: more downtime is worse."""
    return [
        Entry(ident, g, up.ratio, float(up.down_ms))
        for ident, up in per_unit.items()
        if (g := group(ident)) is not None
    ]


def volume_entries(
    volumes: Mapping[str, int],
    scheduled_ms: Mapping[str, int],
    group: Callable[[str], str | None],
) -> list[Entry]:
    """Entries ranking by financial volume; ties: the one with more scheduled time (more
    chance to serve) is worse."""
    return [
        Entry(ident, g, float(v), float(scheduled_ms.get(ident, 0)))
        for ident, v in volumes.items()
        if (g := group(ident)) is not None
    ]
