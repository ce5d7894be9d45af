-- The store's maintenance runs made by atmfleet itself (`atmfleet db prune` on TimescaleDB
-- runs a policy with `CALL run_job(id)` where the scheduler does not keep it on time; see
-- atmfleet/store/jobs.py). TimescaleDB records only its scheduler's runs in job_stats, so
-- the outcome of these is kept here: one row per job, the latest run and the latest
-- success. Empty on plain PostgreSQL, which has no background jobs.
CREATE TABLE store_job_runs (
    job_id               integer     PRIMARY KEY,
    proc                 text        NOT NULL,
    started_at           timestamptz NOT NULL,
    finished_at          timestamptz NOT NULL,
    succeeded            boolean     NOT NULL,
    last_success_at      timestamptz,
    consecutive_failures integer     NOT NULL DEFAULT 0,
    runs                 bigint      NOT NULL DEFAULT 0,
    failures             bigint      NOT NULL DEFAULT 0,
    sqlstate             text,
    error                text,
    CHECK (finished_at >= started_at)
);
