"""剁尾巴: the bottom N of a ranking within each group, and how long each has stayed there.

Pure functions. A ranking is a list of entries (a device or a branch, its group — a
sub-branch or a tier — and its value for the period: uptime ratio or volume). Lower is
worse. An entry with no value ("no data") is not ranked. Ties on the value are broken
by ``tiebreak`` (higher is worse: e.g. downtime seconds, or scheduled time for volume),
then by id, so the tail is the same on every run.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass


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
