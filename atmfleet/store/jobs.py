"""The store's maintenance jobs: TimescaleDB's policies, who ran them last, and how it went.

On TimescaleDB the schema adds policies (migrations 0002, 0003 and ``db upgrade``'s
retention): compression, continuous-aggregate refresh and retention, each a background job
run by TimescaleDB's scheduler. :func:`read_jobs` lists every job of the database with the
scheduler's latest run (``timescaledb_information.job_stats``, the latest error from
``job_errors``) and atmfleet's own runs (``store_job_runs``). Plain PostgreSQL has no
jobs: :func:`read_jobs` returns ``None`` (the retention is ``atmfleet db prune``'s DELETE).

Where the scheduler does not keep a policy on time (its latest run failed, or its latest
success is older than :func:`late_after` allows), :func:`run_policies` runs the same job
with ``CALL run_job(id)``: the same procedure with the same configuration, from a client
session, and records the outcome in ``store_job_runs``. ``atmfleet db prune`` calls it on
TimescaleDB (docs/collector.md, "Maintenance jobs").
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

import psycopg

log = logging.getLogger(__name__)

#: The policies the schema adds, by procedure name, and how they are called in output.
POLICIES = {
    "policy_compression": "compression",
    "policy_refresh_continuous_aggregate": "refresh",
    "policy_retention": "retention",
}
#: Slack beyond two schedule intervals before a job without a success counts as late: the
#: fallback runs hourly (deploy/atmfleet-db-prune.timer).
LATE_SLACK = timedelta(hours=1)

#: job_stats says "never" with -infinity; a paused job's next start may be infinite too.
JOBS_QUERY = """
SELECT j.job_id, j.proc_schema, j.proc_name,
       coalesce(ca.view_name, j.hypertable_name) AS relation,
       j.schedule_interval, j.scheduled,
       CASE WHEN isfinite(s.last_run_started_at) THEN s.last_run_started_at END,
       CASE WHEN isfinite(s.last_successful_finish) THEN s.last_successful_finish END,
       s.last_run_status,
       CASE WHEN isfinite(s.next_start) THEN s.next_start END,
       coalesce(s.total_runs, 0), coalesce(s.total_failures, 0),
       e.sqlerrcode, e.err_message,
       r.started_at, r.succeeded, r.last_success_at, r.consecutive_failures,
       r.sqlstate, r.error
FROM timescaledb_information.jobs j
LEFT JOIN timescaledb_information.job_stats s ON s.job_id = j.job_id
LEFT JOIN timescaledb_information.continuous_aggregates ca
       ON ca.materialization_hypertable_schema = j.hypertable_schema
      AND ca.materialization_hypertable_name = j.hypertable_name
LEFT JOIN LATERAL (
    SELECT sqlerrcode, err_message FROM timescaledb_information.job_errors x
    WHERE x.job_id = j.job_id ORDER BY x.start_time DESC LIMIT 1
) e ON s.last_run_status = 'Failed'
LEFT JOIN {runs} r ON r.job_id = j.job_id
ORDER BY j.job_id
"""

#: ``store_job_runs`` before migration 0009: no runs of atmfleet's own.
NO_RUNS = """(SELECT NULL::integer AS job_id, NULL::timestamptz AS started_at,
    NULL::boolean AS succeeded, NULL::timestamptz AS last_success_at,
    NULL::integer AS consecutive_failures, NULL::text AS sqlstate, NULL::text AS error
    WHERE false)"""

#: The scheduler's failures in a row (its job history since its latest success).
FAILURES_QUERY = """
SELECT h.job_id, count(*)
FROM timescaledb_information.job_history h
WHERE NOT h.succeeded AND h.start_time > coalesce(
    (SELECT max(start_time) FROM timescaledb_information.job_history k
     WHERE k.job_id = h.job_id AND k.succeeded), '-infinity')
GROUP BY h.job_id
"""


@dataclass(frozen=True)
class Run:
    """The latest run of a job by one runner."""

    at: datetime  # when it started
    succeeded: bool
    last_success: datetime | None
    failures: int  # in a row, up to this run (0 when it succeeded)
    error: str | None  # "SQLSTATE message" of a failure


@dataclass(frozen=True)
class Job:
    job_id: int
    proc: str  # "compression", "refresh", "retention" or the procedure's own name
    relation: str | None  # hypertable or continuous aggregate
    every: timedelta
    scheduled: bool
    next_start: datetime | None
    scheduler: Run | None  # TimescaleDB's background worker; None: never ran
    atmfleet: Run | None  # `atmfleet db prune` (run_policies); None: never ran
    is_policy: bool  # one of the schema's policies (atmfleet may run it)

    @property
    def last_success(self) -> datetime | None:
        found = [r.last_success for r in (self.scheduler, self.atmfleet) if r and r.last_success]
        return max(found, default=None)

    @property
    def latest(self) -> Run | None:
        runs = [r for r in (self.scheduler, self.atmfleet) if r is not None]
        return max(runs, key=lambda r: r.at, default=None)


def late_after(every: timedelta) -> timedelta:
    """How old a job's latest success may be: one missed schedule and the fallback's hour."""
    return 2 * every + LATE_SLACK


def has_timescale(conn: psycopg.Connection) -> bool:
    row = conn.execute("SELECT 1 FROM pg_extension WHERE extname = 'timescaledb'").fetchone()
    return row is not None


def read_jobs(conn: psycopg.Connection) -> list[Job] | None:
    """Every TimescaleDB job of the database, or ``None`` on plain PostgreSQL."""
    if not has_timescale(conn):
        return None
    failures: dict[int, int] = dict(conn.execute(FAILURES_QUERY).fetchall())
    table = conn.execute("SELECT to_regclass('store_job_runs') IS NOT NULL").fetchone()
    query = JOBS_QUERY.replace("{runs}", "store_job_runs" if table and table[0] else NO_RUNS)
    jobs: list[Job] = []
    for row in conn.execute(query.encode()).fetchall():
        (job_id, schema, proc, relation, every, scheduled, s_at, s_success, s_status, nxt,
         s_runs, _s_failures, s_code, s_msg, a_at, a_ok, a_success, a_failures, a_code,
         a_msg) = row  # fmt: skip
        scheduler = None
        if s_at is not None and s_runs:
            ok = s_status == "Success"
            scheduler = Run(
                s_at,
                ok,
                s_success,
                0 if ok else int(failures.get(job_id, 1)),
                None if ok else _error(s_code, s_msg),
            )
        atmfleet = None
        if a_at is not None:
            atmfleet = Run(a_at, a_ok, a_success, a_failures, _error(a_code, a_msg))
        is_policy = schema == "_timescaledb_functions" and proc in POLICIES
        jobs.append(
            Job(
                job_id, POLICIES[proc] if is_policy else str(proc), relation, every,
                scheduled, nxt, scheduler, atmfleet, is_policy,
            )
        )  # fmt: skip
    return jobs


def _error(code: str | None, message: str | None) -> str | None:
    if code is None and message is None:
        return None
    return " ".join(p for p in (code, message) if p)


def kept_on_time(job: Job, now: datetime) -> bool:
    """The scheduler keeps this job: its latest run succeeded, recently enough."""
    s = job.scheduler
    return (
        s is not None
        and s.succeeded
        and s.last_success is not None
        and now - s.last_success <= late_after(job.every)
    )


def due_for_atmfleet(job: Job, now: datetime) -> bool:
    """atmfleet runs a policy the scheduler does not keep on time, at most once per its
    schedule interval (a failed run of its own is retried at the next call)."""
    if not job.is_policy or not job.scheduled or kept_on_time(job, now):
        return False
    own = job.atmfleet
    return own is None or not own.succeeded or now - own.at >= job.every


@dataclass(frozen=True)
class Outcome:
    job_id: int
    proc: str
    relation: str | None
    succeeded: bool
    error: str | None


def run_policies(
    conn: psycopg.Connection, *, everything: bool = False, only: Sequence[int] | None = None
) -> list[Outcome]:
    """Run, with ``CALL run_job``, every policy the scheduler does not keep on time (all the
    schema's policies with ``everything``); record each outcome in ``store_job_runs``.

    ``conn`` must be in autocommit: policies commit as they go (one chunk at a time).
    """
    if not conn.autocommit:
        raise ValueError("run_policies() needs an autocommit connection")
    jobs = read_jobs(conn)
    if jobs is None:
        return []
    now = _now(conn)
    outcomes: list[Outcome] = []
    for job in jobs:
        if only is not None and job.job_id not in only:
            continue
        if not job.is_policy or not (everything or due_for_atmfleet(job, now)):
            continue
        started = _now(conn)
        error: tuple[str | None, str] | None = None
        try:
            conn.execute("CALL run_job(%s)", (job.job_id,))
        except psycopg.Error as exc:
            message = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            error = (exc.sqlstate, message)
            log.warning("job %d (%s %s) failed: %s", job.job_id, job.proc, job.relation, message)
        _record(conn, job, started, error)
        outcomes.append(
            Outcome(
                job.job_id, job.proc, job.relation, error is None,
                None if error is None else _error(*error),
            )
        )  # fmt: skip
    return outcomes


def _now(conn: psycopg.Connection) -> datetime:
    row = conn.execute("SELECT clock_timestamp()").fetchone()
    assert row is not None
    value: datetime = row[0]
    return value


def _record(
    conn: psycopg.Connection, job: Job, started: datetime, error: tuple[str | None, str] | None
) -> None:
    ok = error is None
    conn.execute(
        """
        INSERT INTO store_job_runs AS r (job_id, proc, started_at, finished_at, succeeded,
            last_success_at, consecutive_failures, runs, failures, sqlstate, error)
        VALUES (%(id)s, %(proc)s, %(started)s, clock_timestamp(), %(ok)s,
            CASE WHEN %(ok)s THEN clock_timestamp() END, CASE WHEN %(ok)s THEN 0 ELSE 1 END,
            1, CASE WHEN %(ok)s THEN 0 ELSE 1 END, %(code)s, %(msg)s)
        ON CONFLICT (job_id) DO UPDATE SET
            proc = excluded.proc, started_at = excluded.started_at,
            finished_at = excluded.finished_at, succeeded = excluded.succeeded,
            last_success_at = coalesce(excluded.last_success_at, r.last_success_at),
            consecutive_failures = CASE WHEN excluded.succeeded THEN 0
                                        ELSE r.consecutive_failures + 1 END,
            runs = r.runs + 1, failures = r.failures + excluded.failures,
            sqlstate = excluded.sqlstate, error = excluded.error
        """,
        {
            "id": job.job_id,
            "proc": job.proc,
            "started": started,
            "ok": ok,
            "code": None if error is None else error[0],
            "msg": None if error is None else error[1],
        },
    )


def verdict(job: Job, now: datetime) -> str:
    """The job's state, as the alerts judge it (docs/runbook.md): ``failed`` when
    atmfleet's latest run failed, or the scheduler's did and atmfleet never ran the job;
    ``late`` without a success within :func:`late_after`; ``ok (atmfleet)`` when the
    scheduler's latest run failed but atmfleet's keep the job on time; else ``ok``; and
    ``never ran``."""
    s, a = job.scheduler, job.atmfleet
    if s is None and a is None:
        return "never ran"
    if (a is not None and not a.succeeded) or (a is None and s is not None and not s.succeeded):
        return "failed"
    success = job.last_success
    if success is None or now - success > late_after(job.every):
        return "late"
    return "ok (atmfleet)" if s is not None and not s.succeeded else "ok"


def _every(every: timedelta) -> str:
    seconds = int(every.total_seconds())
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def job_lines(jobs: list[Job] | None, now: datetime, tz: ZoneInfo) -> list[str]:
    """What ``atmfleet db status`` prints about the jobs."""
    if jobs is None:
        return [
            "TimescaleDB jobs: none (plain PostgreSQL has no background jobs; "
            "`atmfleet db prune` applies the retention)"
        ]
    if not jobs:
        return ["TimescaleDB jobs: none"]

    def at(value: datetime | None) -> str:
        return "–" if value is None else value.astimezone(tz).strftime("%Y-%m-%d %H:%M:%S")

    def result(run: Run | None) -> str:
        if run is None:
            return "–"
        return "ok" if run.succeeded else f"failed x{run.failures}"

    header = ("job", "policy", "relation", "every", "scheduler run", "result",
              "atmfleet run", "result", "last success", "state")  # fmt: skip
    rows = [header]
    for j in jobs:
        rows.append(
            (
                str(j.job_id), j.proc, j.relation or "–", _every(j.every),
                at(j.scheduler.at if j.scheduler else None), result(j.scheduler),
                at(j.atmfleet.at if j.atmfleet else None), result(j.atmfleet),
                at(j.last_success), verdict(j, now) if j.scheduled else "paused",
            )
        )  # fmt: skip
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    lines = [f"TimescaleDB jobs (times in {tz.key}):"]
    for i, row in enumerate(rows):
        lines.append("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())
        if i == 0:
            lines.append("  ".join("-" * w for w in widths))
    for j in jobs:
        for who, run in (("scheduler", j.scheduler), ("atmfleet", j.atmfleet)):
            if run is not None and not run.succeeded and run.error:
                lines.append(f"job {j.job_id} ({who}): {run.error}")
    return lines
