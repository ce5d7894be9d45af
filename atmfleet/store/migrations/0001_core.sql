-- Core relations, identical on plain PostgreSQL and TimescaleDB.
--
-- Idempotency: a message is identified by (device_id, seq, ts). MQTT redelivers the very
-- same payload, so a redelivered message has the same ts and is a no-op (ON CONFLICT DO
-- NOTHING). The time column is part of every unique key because TimescaleDB requires the
-- partitioning column in unique indexes; transactions are also unique by (txn_id, ts).

-- Inventory (loaded by `atmfleet db load-inventory`; upserted).
CREATE TABLE subbranches (
    id   text PRIMARY KEY,
    name text NOT NULL,
    tier text NOT NULL
);

CREATE TABLE branches (
    id        text PRIMARY KEY,
    name      text NOT NULL,
    subbranch text NOT NULL REFERENCES subbranches (id),
    kind      text NOT NULL,
    parent    text
);

CREATE TABLE devices (
    id              text PRIMARY KEY,
    branch          text NOT NULL REFERENCES branches (id),
    type            text NOT NULL,
    placement       text NOT NULL,
    vendor          text NOT NULL,
    model           text NOT NULL,
    commissioned    date NOT NULL,
    decommissioned  date,
    service_window  text,
    deposit_capable boolean NOT NULL,
    heartbeat_s     integer NOT NULL
);
CREATE INDEX devices_branch_idx ON devices (branch);

-- Telemetry. No foreign key to devices: a device missing from the inventory is still
-- recorded (and reported as unknown by the rules), never dropped.
CREATE TABLE state_samples (
    device_id   text        NOT NULL,
    seq         bigint      NOT NULL,
    ts          timestamptz NOT NULL,
    received_at timestamptz NOT NULL,
    state       text        NOT NULL,
    heartbeat_s integer     NOT NULL,
    components  jsonb       NOT NULL,
    cash_units  jsonb       NOT NULL,
    faults      text[]      NOT NULL,
    CONSTRAINT state_samples_msg_key UNIQUE (device_id, seq, ts)
);
CREATE INDEX state_samples_device_ts_idx ON state_samples (device_id, ts DESC);

CREATE TABLE events (
    device_id   text        NOT NULL,
    seq         bigint      NOT NULL,
    ts          timestamptz NOT NULL,
    received_at timestamptz NOT NULL,
    event       text        NOT NULL,
    component   text,
    code        text,
    severity    text        NOT NULL,
    text        text,
    since       timestamptz,
    CONSTRAINT events_msg_key UNIQUE (device_id, seq, ts)
);
CREATE INDEX events_device_ts_idx ON events (device_id, ts DESC);

CREATE TABLE transactions (
    device_id   text          NOT NULL,
    seq         bigint        NOT NULL,
    ts          timestamptz   NOT NULL,
    received_at timestamptz   NOT NULL,
    txn_id      text          NOT NULL,
    type        text          NOT NULL,
    financial   boolean       NOT NULL,
    amount      numeric(12,2) NOT NULL,
    currency    text          NOT NULL,
    fee         numeric(12,2) NOT NULL,
    result      text          NOT NULL,
    duration_ms integer       NOT NULL,
    on_us       boolean       NOT NULL,
    CONSTRAINT transactions_msg_key UNIQUE (device_id, seq, ts),
    CONSTRAINT transactions_txn_key UNIQUE (txn_id, ts)
);
CREATE INDEX transactions_device_ts_idx ON transactions (device_id, ts DESC);

CREATE TABLE presence (
    device_id   text        NOT NULL,
    status      text        NOT NULL,
    ts          timestamptz NOT NULL,
    received_at timestamptz NOT NULL,
    session     text        NOT NULL,
    will        boolean     NOT NULL,
    -- A retained birth is delivered again on every new subscription: the same row.
    CONSTRAINT presence_msg_key UNIQUE (device_id, ts, status, session, will)
);
CREATE INDEX presence_device_ts_idx ON presence (device_id, ts DESC);

-- Teller-counter volumes per branch and local day; a later report replaces an earlier one.
CREATE TABLE counter_volumes (
    branch_id     text        NOT NULL,
    date          date        NOT NULL,
    financial     integer     NOT NULL,
    non_financial integer     NOT NULL,
    source        text        NOT NULL,
    ts            timestamptz NOT NULL,
    received_at   timestamptz NOT NULL,
    PRIMARY KEY (branch_id, date)
);

-- Every message the collector could not accept, with why.
CREATE TABLE dead_letters (
    id           bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    received_at  timestamptz NOT NULL,
    topic        text        NOT NULL,
    payload      bytea       NOT NULL,  -- truncated (see payload_size for the original)
    payload_size integer     NOT NULL,
    reason       text        NOT NULL,
    detail       text        NOT NULL,
    collector_id text        NOT NULL
);
CREATE INDEX dead_letters_received_at_idx ON dead_letters (received_at);
CREATE INDEX dead_letters_reason_idx ON dead_letters (reason, received_at);

-- Per-device sequence accounting, updated in the same transaction as the rows it counts.
-- received counts distinct stored messages (state, event, txn), so
-- missing = max_seq - min_seq + 1 - received.
CREATE TABLE device_sequences (
    device_id  text        PRIMARY KEY,
    min_seq    bigint      NOT NULL,
    max_seq    bigint      NOT NULL,
    received   bigint      NOT NULL,
    updated_at timestamptz NOT NULL
);

CREATE VIEW sequence_gaps AS
SELECT device_id,
       min_seq,
       max_seq,
       received,
       greatest(0, max_seq - min_seq + 1 - received) AS missing,
       updated_at
FROM device_sequences;

-- The collector's own liveness: one row per run, beating every liveness interval.
CREATE TABLE collector_runs (
    run_id       uuid        PRIMARY KEY,
    collector_id text        NOT NULL,
    host         text        NOT NULL,
    started_at   timestamptz NOT NULL,
    last_beat_at timestamptz NOT NULL,
    stopped_at   timestamptz
);
CREATE INDEX collector_runs_last_beat_idx ON collector_runs (last_beat_at DESC);

-- Intervals when no collector was alive (time the monitoring cannot vouch for).
-- Written by a collector at start-up when the newest beat of any run is older than
-- the outage threshold.
CREATE TABLE collector_outages (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    started_at  timestamptz NOT NULL,
    ended_at    timestamptz NOT NULL,
    detected_by text        NOT NULL,
    recorded_at timestamptz NOT NULL DEFAULT now(),
    CHECK (ended_at >= started_at)
);
CREATE UNIQUE INDEX collector_outages_started_idx ON collector_outages (started_at);

-- The points an availability timeline is built from, in one place: state messages at
-- their ts; presence at its ts, except a broker last will, which counts from the moment
-- the collector received it (its ts is only the connect time).
CREATE VIEW timeline_points AS
SELECT device_id, ts AS at, ts, received_at, 'state'::text AS kind, state,
       heartbeat_s, NULL::text AS presence, NULL::boolean AS will, seq
FROM state_samples
UNION ALL
SELECT device_id, CASE WHEN will THEN received_at ELSE ts END AS at, ts, received_at,
       'presence'::text AS kind, NULL::text AS state, NULL::integer AS heartbeat_s,
       status AS presence, will, NULL::bigint AS seq
FROM presence;
