"""State runs: a device's state samples collapsed at ingest, so the KPI engine reads runs.

A *run* is a stretch of consecutive state samples of one device, in ``(ts, seq)`` order,
with one state, no silent gap longer than ``RUN_GAP`` x the earlier sample's
``heartbeat_s``, and no presence message taking effect between two of its samples
(``cut``: a presence at ``c`` separates samples ``a`` and ``b`` when ``a.ts < c <= b.ts``).

``RUN_GAP`` (1.5) is below any heartbeat timeout the rules allow (``timeout_factor`` >= 1.5
is required by the feed): the engine judges the gaps *between* runs with its own timeout,
so runs finer than its own give the same timeline.

:func:`compress` is the pure rule. :func:`update_runs` keeps ``state_runs`` equal to
``compress`` over every stored sample, in the transaction that stored a batch:

- samples newer than the device's newest run extend it or start runs (the common case:
  no raw sample is read back);
- anything older (a store-and-forward backlog, a presence received late) recomputes only
  the runs between the last run that ends before it and the first run that starts after
  it, from the raw samples in between.

The same call deletes the KPI engine's kept closed days (``kpi_device_days``) that new
state, presence, ``power_restored`` or transaction rows can change: from the local day
before the earliest of them.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg

log = logging.getLogger(__name__)

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def ms(at: datetime) -> int:
    """Milliseconds since the epoch of an aware ``datetime``."""
    delta = at - _EPOCH
    return (delta.days * 86_400 + delta.seconds) * 1000 + delta.microseconds // 1000


def from_ms(value: int) -> datetime:
    return _EPOCH + timedelta(milliseconds=value)


#: Runs break at a silent gap longer than RUN_GAP_NUM / RUN_GAP_DEN x heartbeat_s.
RUN_GAP_NUM, RUN_GAP_DEN = 3, 2
RUN_GAP = RUN_GAP_NUM / RUN_GAP_DEN

#: The widest context a kept day may have (ms): how far back late telemetry may reach
#: into it (kpi_kept_rules' default, migration 0024). Days of rules whose context is
#: wider are computed each time, never kept.
MAX_KEPT_CONTEXT_MS = 86_400_000 + 1


@dataclass(frozen=True, slots=True)
class Sample:
    ts: int  # ms since the epoch
    seq: int
    state: str
    heartbeat_s: int


@dataclass(frozen=True, slots=True)
class Run:
    start: int
    start_seq: int
    last: int
    last_seq: int
    state: str
    heartbeat_s: int  # of the last sample
    samples: int = 1

    @property
    def key(self) -> tuple[int, int]:
        return (self.start, self.start_seq)


def _joins(run: Run, ts: int, state: str, cuts: Sequence[int], ci: int) -> bool:
    """Whether a sample at ``ts`` continues ``run`` (``cuts[ci:]`` are the cuts after it)."""
    if state != run.state:
        return False
    if (ts - run.last) * RUN_GAP_DEN > RUN_GAP_NUM * run.heartbeat_s * 1000:
        return False
    return not (ci < len(cuts) and cuts[ci] <= ts)


def _grown(run: Run, last: int, last_seq: int, heartbeat_s: int, added: int) -> Run:
    if not added:
        return run
    return replace(
        run, last=last, last_seq=last_seq, heartbeat_s=heartbeat_s, samples=run.samples + added
    )


def _one_per_instant(samples: Iterable[Sample]) -> list[Sample]:
    """The samples in (ts, seq) order, one per (ts, seq): a device that reports two states
    for the same millisecond and seq (stored apart: the store keeps microseconds) counts
    the worse one, any state but ``in_service`` first, then by name, so that uptime is
    never overstated and the result does not depend on the order of arrival. Two runs
    with one key would also make the batch's upsert fail (SQLSTATE 21000)."""
    ordered = sorted(
        set(samples), key=lambda s: (s.ts, s.seq, s.state == "in_service", s.state, s.heartbeat_s)
    )
    out: list[Sample] = []
    for s in ordered:
        if out and out[-1].ts == s.ts and out[-1].seq == s.seq:
            continue
        out.append(s)
    return out


def compress(
    samples: Iterable[Sample],
    cuts: Iterable[int] = (),
    *,
    seed: Run | None = None,
    follow: Run | None = None,
) -> list[Run]:
    """Runs of ``samples`` (any order; exact duplicates dropped).

    ``seed`` is the run just before the samples (it may be extended), ``follow`` the run
    just after them (it may be merged): the result replaces seed..follow. ``cuts`` are the
    presence times; those at or before the seed's last sample are irrelevant.
    """
    ordered = _one_per_instant(samples)
    cut_list = sorted(set(cuts))
    n_cuts = len(cut_list)
    out: list[Run] = []
    cur = seed
    # The current run's growing end lives in locals; its Run is rebuilt once, when it ends.
    last, last_seq, hb, state, added = (
        (seed.last, seed.last_seq, seed.heartbeat_s, seed.state, 0) if seed else (0, 0, 0, "", 0)
    )
    ci = 0
    for s in ordered:
        if cur is not None:
            while ci < n_cuts and cut_list[ci] <= last:
                ci += 1
            if (
                s.state == state
                and (s.ts - last) * RUN_GAP_DEN <= RUN_GAP_NUM * hb * 1000
                and not (ci < n_cuts and cut_list[ci] <= s.ts)
            ):  # _joins, on the locals
                last, last_seq, hb, added = s.ts, s.seq, s.heartbeat_s, added + 1
                continue
            out.append(_grown(cur, last, last_seq, hb, added))
        cur = Run(s.ts, s.seq, s.ts, s.seq, s.state, s.heartbeat_s)
        last, last_seq, hb, state, added = s.ts, s.seq, s.heartbeat_s, s.state, 0
    if cur is not None:
        cur = _grown(cur, last, last_seq, hb, added)
    if follow is not None:
        if cur is not None:
            while ci < len(cut_list) and cut_list[ci] <= cur.last:
                ci += 1
            if _joins(cur, follow.start, follow.state, cut_list, ci):
                cur = replace(
                    cur, last=follow.last, last_seq=follow.last_seq,
                    heartbeat_s=follow.heartbeat_s, samples=cur.samples + follow.samples,
                )  # fmt: skip
            else:
                out.append(cur)
                cur = follow
        else:
            cur = follow
    if cur is not None:
        out.append(cur)
    return out


# --------------------------------------------------------------------------- the store


# Index lookups per staged row. Never prepared: a plan made while the tables were small
# (a scan) would be kept for the life of the connection.
_NEW_SAMPLES = """
SELECT s.device_id, s.ts, s.seq, s.state, s.heartbeat_s
FROM _stage_state g
CROSS JOIN LATERAL (
    SELECT * FROM state_samples s
    WHERE s.device_id = g.device_id AND s.seq = g.seq AND s.ts = g.ts
      AND s.received_at = g.received_at
) s
"""

# What the batch's presence, event and transaction rows can change, in one statement (one
# round trip, where three cost a wake-up of the backend and of the writer each): the
# cuts of the presence rows inserted (``c``), the ``since`` of the ``power_restored``
# events inserted (``p``), each device's earliest transaction inserted (``t``).
_NEW_POINTS = """
SELECT 'c', p.device_id, presence_at(p.will, p.ts, p.received_at)
FROM _stage_presence g
CROSS JOIN LATERAL (
    SELECT * FROM presence p
    WHERE p.device_id = g.device_id AND p.ts = g.ts AND p.status = g.status
      AND p.session = g.session AND p.will = g.will AND p.received_at = g.received_at
) p
UNION ALL
SELECT 'p', e.device_id, e.since
FROM _stage_event g
CROSS JOIN LATERAL (
    SELECT * FROM events e
    WHERE e.device_id = g.device_id AND e.seq = g.seq AND e.ts = g.ts
      AND e.received_at = g.received_at
) e
WHERE g.event = 'power_restored' AND g.since IS NOT NULL
UNION ALL
SELECT 't', t.device_id, min(t.ts)
FROM _stage_txn g
CROSS JOIN LATERAL (
    SELECT * FROM transactions t
    WHERE t.device_id = g.device_id AND t.seq = g.seq AND t.ts = g.ts
      AND t.received_at = g.received_at
) t
GROUP BY t.device_id
"""

# Array parameters go in binary (%b): psycopg dumps a list element by element in Python,
# and the text format (quoting, escaping) costs 2.5 times as much; at full ingest rate
# these lists were a quarter of the writer's time. Times are sent as int8 milliseconds
# and converted here (exactly): a list of datetimes is slower still.
# A point at t can change the timeline up to a heartbeat timeout before it: the KPI
# engine's kept closed days from the local day of t - context (the context of the rules
# each day was kept with: kpi_kept_rules, migration 0024) are no longer valid. Only the
# rules whose newest kept day the point reaches are looked at: live telemetry, reaching
# no kept day, probes nothing.
_INVALIDATE = """
DELETE FROM kpi_device_days k
USING kpi_kept_reached(%b::text[], %b::int8[]) AS p
WHERE k.device_id = p.reached_id AND k.day >= p.reached_from
  AND k.fingerprint = p.reached_fingerprint
"""

_RUN_COLUMNS = "start_ts, start_seq, last_ts, last_seq, state, heartbeat_s, samples"

_NEWEST = f"""
SELECT d.id, r.{_RUN_COLUMNS.replace(", ", ", r.")}
FROM unnest(%b::text[]) AS d (id)
CROSS JOIN LATERAL (
    SELECT {_RUN_COLUMNS} FROM state_runs
    WHERE device_id = d.id ORDER BY start_ts DESC, start_seq DESC LIMIT 1
) r
"""

_CUTS_AFTER = """
SELECT p.device_id, presence_at(p.will, p.ts, p.received_at)
FROM unnest(%b::text[], %b::timestamptz[]) AS d (id, after)
JOIN presence p ON p.device_id = d.id AND presence_at(p.will, p.ts, p.received_at) > d.after
"""

_UPSERT = f"""
INSERT INTO state_runs (device_id, {_RUN_COLUMNS})
SELECT id, TIMESTAMPTZ 'epoch' + start_ms * INTERVAL '1 millisecond', start_seq,
       TIMESTAMPTZ 'epoch' + last_ms * INTERVAL '1 millisecond', last_seq, state, hb, n
FROM unnest(%b::text[], %b::int8[], %b::int8[], %b::int8[], %b::int8[], %b::text[],
            %b::int4[], %b::int4[]) AS u (id, start_ms, start_seq, last_ms, last_seq, state, hb, n)
ON CONFLICT (device_id, start_ts, start_seq) DO UPDATE
SET last_ts = excluded.last_ts, last_seq = excluded.last_seq, state = excluded.state,
    heartbeat_s = excluded.heartbeat_s, samples = excluded.samples
"""

#: Devices are locked by bucket (a hash of the id): a lock per device would need one slot
#: of PostgreSQL's shared lock table each, and a batch of more distinct devices than
#: max_locks_per_transaction x max_connections (6,400 by default, shared by every session)
#: fails with "out of shared memory". In bucket order, so two collectors cannot deadlock.
#: The locks are row locks on ``run_locks`` (migration 0006): locking a row needs UPDATE
#: on the table, which only the writer and owner roles have, so a reader cannot stall
#: ingestion the way it could hold a (public) advisory lock.
RUN_LOCK_BUCKETS = 256

_LOCK_DEVICES = f"""
SELECT bucket FROM run_locks
WHERE bucket IN (SELECT hashtext(id) & {RUN_LOCK_BUCKETS - 1} FROM unnest(%b::text[]) AS d (id))
ORDER BY bucket
FOR UPDATE
"""

_NEG_INF = -(2**62)
_POS_INF = 2**62


def _run(row: Sequence[Any]) -> Run:
    return Run(ms(row[0]), row[1], ms(row[2]), row[3], row[4], row[5], row[6])


def _dt(value: int) -> datetime | str:
    if value <= _NEG_INF:
        return "-infinity"
    if value >= _POS_INF:
        return "infinity"
    return from_ms(value)


_STAGED_SAMPLES = "SELECT device_id, ts, seq, state, heartbeat_s FROM _stage_state"


def update_runs(
    cur: psycopg.Cursor[Any],
    stored_states: int | None = None,
    inserted: dict[str, set[Sample]] | None = None,
) -> None:
    """Bring ``state_runs`` up to date with the samples and presence messages the current
    batch inserted (staged in ``_stage_state``/``_stage_presence``; redelivered duplicates
    were not inserted and change nothing). Runs in the caller's transaction.

    ``stored_states``: how many state rows the batch inserted, when the caller knows; if
    it is every staged sample (no duplicate), they are not looked up again.
    ``inserted``: the inserted samples by device, when the caller has them already (it
    then knows every staged sample was inserted); nothing is read back at all."""
    samples: dict[str, set[Sample]] = {}
    rows: list[Any] = []
    if inserted is not None:
        samples = inserted
    elif stored_states != 0:
        rows = cur.execute(_STAGED_SAMPLES, prepare=False).fetchall()
        if stored_states is None or stored_states != len(rows):
            rows = cur.execute(_NEW_SAMPLES, prepare=False).fetchall()
    for device_id, ts, seq, state, hb in rows:
        samples.setdefault(device_id, set()).add(Sample(ms(ts), seq, state, hb))
    new_cuts: dict[str, set[int]] = {}
    earliest: dict[str, int] = {}
    for kind, device_id, at in cur.execute(_NEW_POINTS, prepare=False).fetchall():
        if kind == "c":
            new_cuts.setdefault(device_id, set()).add(ms(at))
        else:  # a power_restored event's since, a device's earliest transaction
            earliest[device_id] = min(earliest.get(device_id, _POS_INF), ms(at))
    devices = sorted(samples.keys() | new_cuts.keys())
    for device_id in devices:
        times = [s.ts for s in samples.get(device_id, ())] + list(new_cuts.get(device_id, ()))
        earliest[device_id] = min(earliest.get(device_id, _POS_INF), *times)
    if earliest:
        ids = sorted(earliest)
        cur.execute(_INVALIDATE, (ids, [earliest[i] for i in ids]))
    if not devices:
        return
    # Concurrent collectors may store the same device: one maintains its runs at a time.
    cur.execute(_LOCK_DEVICES, (devices,))
    newest = {row[0]: _run(row[1:]) for row in cur.execute(_NEWEST, (devices,)).fetchall()}
    in_order: dict[str, Run | None] = {}
    late: list[str] = []
    for device_id in devices:
        mine = samples.get(device_id, set())
        lower = min([s.ts for s in mine] + list(new_cuts.get(device_id, ())))
        head = newest.get(device_id)
        if head is None or lower > head.last:
            if mine:
                in_order[device_id] = head
        else:
            late.append(device_id)
    out: list[tuple[str, Run]] = []
    if in_order:
        ids = list(in_order)
        # One element type for the array parameter: text, cast to timestamptz[] by the query.
        afters = [str(_dt(run.last if run else _NEG_INF)) for run in in_order.values()]
        cuts: dict[str, list[int]] = {}
        for device_id, at in cur.execute(_CUTS_AFTER, (ids, afters)).fetchall():
            cuts.setdefault(device_id, []).append(ms(at))
        for device_id, head in in_order.items():
            for run in compress(samples[device_id], cuts.get(device_id, ()), seed=head):
                out.append((device_id, run))
    for device_id in late:
        out.extend(
            (device_id, run)
            for run in _recompute(
                cur, device_id, samples.get(device_id, set()), new_cuts.get(device_id, set())
            )
        )
    if out:
        # One row per key: the upsert fails (SQLSTATE 21000) on two rows with one key, and
        # the batch would never be stored. The rule gives none; should it ever, the last
        # computed run of a key wins (as sequential upserts would), and it is logged.
        unique: dict[tuple[str, int, int], Run] = {}
        for device_id, r in out:
            key = (device_id, r.start, r.start_seq)
            if key in unique:
                log.warning("two state runs of %r start at %d ms, seq %d; keeping the later",
                            device_id, r.start, r.start_seq)  # fmt: skip
            unique[key] = r
        cols: list[list[Any]] = [[] for _ in range(8)]
        for (device_id, _start, _seq), r in unique.items():
            for col, value in zip(
                cols,
                (device_id, r.start, r.start_seq, r.last, r.last_seq, r.state, r.heartbeat_s,
                 r.samples),
                strict=True,
            ):  # fmt: skip
                col.append(value)
        cur.execute(_UPSERT, cols)


def _recompute(
    cur: psycopg.Cursor[Any], device_id: str, new: set[Sample], new_cuts: set[int]
) -> list[Run]:
    """Delete and recompute the runs a late sample or presence can change."""
    times = [s.ts for s in new] + list(new_cuts)
    lower, upper = min(times), max(times)
    row = cur.execute(
        f"SELECT {_RUN_COLUMNS} FROM state_runs WHERE device_id = %s AND last_ts < %s"
        " ORDER BY last_ts DESC, last_seq DESC LIMIT 1",
        (device_id, from_ms(lower)),
    ).fetchone()
    seed = _run(row) if row else None
    row = cur.execute(
        f"SELECT {_RUN_COLUMNS} FROM state_runs WHERE device_id = %s AND start_ts > %s"
        " ORDER BY start_ts, start_seq LIMIT 1",
        (device_id, from_ms(upper)),
    ).fetchone()
    follow = _run(row) if row else None
    lo_ts, lo_seq = (seed.last, seed.last_seq) if seed else (_NEG_INF, 0)
    hi_ts, hi_seq = (follow.start, follow.start_seq) if follow else (_POS_INF, 0)
    raw = cur.execute(
        "SELECT ts, seq, state, heartbeat_s FROM state_samples"
        " WHERE device_id = %s AND ts >= %s AND ts <= %s"
        " AND (ts, seq) > (%s, %s) AND (ts, seq) < (%s, %s)",
        (device_id, _dt(lo_ts), _dt(hi_ts), _dt(lo_ts), lo_seq, _dt(hi_ts), hi_seq),
    ).fetchall()
    cuts = [
        ms(at)
        for (at,) in cur.execute(
            "SELECT presence_at(will, ts, received_at) FROM presence WHERE device_id = %s"
            " AND presence_at(will, ts, received_at) > %s"
            " AND presence_at(will, ts, received_at) <= %s",
            (device_id, _dt(lo_ts), _dt(hi_ts)),
        ).fetchall()
    ]
    first = seed.key if seed else (_NEG_INF, 0)
    last = follow.key if follow else (_POS_INF, 0)
    cur.execute(
        "DELETE FROM state_runs WHERE device_id = %s"
        " AND (start_ts, start_seq) >= (%s, %s) AND (start_ts, start_seq) <= (%s, %s)",
        (device_id, _dt(first[0]), first[1], _dt(last[0]), last[1]),
    )
    points = [Sample(ms(ts), seq, state, hb) for ts, seq, state, hb in raw]
    return compress(points, cuts, seed=seed, follow=follow)


def rebuild_runs(conn: psycopg.Connection, device_ids: Sequence[str] | None = None) -> int:
    """Recompute the runs of some devices (all by default) from their raw samples."""
    with conn.transaction(), conn.cursor() as cur:
        if device_ids is None:
            device_ids = [r[0] for r in cur.execute("SELECT DISTINCT device_id FROM state_samples")]
        total = 0
        for device_id in device_ids:
            cur.execute("DELETE FROM state_runs WHERE device_id = %s", (device_id,))
            raw = cur.execute(
                "SELECT ts, seq, state, heartbeat_s FROM state_samples WHERE device_id = %s",
                (device_id,),
            ).fetchall()
            cuts = cur.execute(
                "SELECT presence_at(will, ts, received_at) FROM presence WHERE device_id = %s",
                (device_id,),
            ).fetchall()
            runs = compress(
                (Sample(ms(ts), seq, state, hb) for ts, seq, state, hb in raw),
                (ms(at) for (at,) in cuts),
            )
            cur.executemany(
                f"INSERT INTO state_runs (device_id, {_RUN_COLUMNS})"
                " VALUES (%s, %s, %s, %s, %s, %s, %s, %s)",
                [
                    (device_id, from_ms(r.start), r.start_seq, from_ms(r.last), r.last_seq,
                     r.state, r.heartbeat_s, r.samples)
                    for r in runs
                ],
            )  # fmt: skip
            total += len(runs)
        return total
