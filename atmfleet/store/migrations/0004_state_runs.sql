-- State runs, maintained at ingest (atmfleet/store/runs.py) in the transaction that stores
-- the samples: consecutive state samples of a device, in (ts, seq) order, with one state,
-- no silent gap longer than RUN_GAP_FACTOR (1.5) x the earlier sample's heartbeat_s and no
-- presence message between them, are one run. The KPI engine reads runs instead of raw
-- heartbeats (a day of minute heartbeats is a handful of runs). Runs break at gaps shorter
-- than any heartbeat timeout the rules allow; the engine judges the gaps between runs with
-- its own timeout, so finer runs give the same timeline.
CREATE TABLE state_runs (
    device_id   text        NOT NULL,
    start_ts    timestamptz NOT NULL,
    start_seq   bigint      NOT NULL,
    last_ts     timestamptz NOT NULL,
    last_seq    bigint      NOT NULL,
    state       text        NOT NULL,
    heartbeat_s integer     NOT NULL,  -- of the last sample
    samples     integer     NOT NULL,
    PRIMARY KEY (device_id, start_ts, start_seq),
    CHECK (last_ts >= start_ts)
);
-- Runs overlapping a period, whatever their length.
CREATE INDEX state_runs_span_idx ON state_runs
    USING gist (tstzrange(start_ts, last_ts, '[]'));

-- When a presence message takes effect (a broker will: when the collector received it).
CREATE FUNCTION presence_at(will boolean, ts timestamptz, received_at timestamptz)
RETURNS timestamptz LANGUAGE sql IMMUTABLE PARALLEL SAFE
RETURN CASE WHEN will THEN received_at ELSE ts END;

CREATE INDEX presence_device_at_idx ON presence (device_id, presence_at(will, ts, received_at));
CREATE INDEX presence_at_idx ON presence (presence_at(will, ts, received_at));

-- Backfill from the samples already stored (the same rule as runs.py, in SQL).
WITH cuts AS (
    SELECT device_id, presence_at(will, ts, received_at) AS at FROM presence
), ordered AS (
    SELECT device_id, seq, ts, state, heartbeat_s,
           lag(ts) OVER w AS prev_ts, lag(state) OVER w AS prev_state,
           lag(heartbeat_s) OVER w AS prev_hb
    FROM state_samples
    WINDOW w AS (PARTITION BY device_id ORDER BY ts, seq)
), marked AS (
    SELECT o.*,
           CASE WHEN o.prev_ts IS NULL OR o.state <> o.prev_state
                  OR o.ts - o.prev_ts > o.prev_hb * INTERVAL '1.5 seconds'
                  OR EXISTS (SELECT 1 FROM cuts c WHERE c.device_id = o.device_id
                             AND c.at > o.prev_ts AND c.at <= o.ts)
                THEN 1 ELSE 0 END AS new_run
    FROM ordered o
), grouped AS (
    SELECT m.*, sum(new_run) OVER (PARTITION BY device_id ORDER BY ts, seq) AS run
    FROM marked m
)
INSERT INTO state_runs (device_id, start_ts, start_seq, last_ts, last_seq, state,
                        heartbeat_s, samples)
SELECT device_id,
       (array_agg(ts ORDER BY ts, seq))[1], (array_agg(seq ORDER BY ts, seq))[1],
       (array_agg(ts ORDER BY ts DESC, seq DESC))[1],
       (array_agg(seq ORDER BY ts DESC, seq DESC))[1],
       min(state),
       (array_agg(heartbeat_s ORDER BY ts DESC, seq DESC))[1],
       count(*)
FROM grouped
GROUP BY device_id, run;

-- Closed days per device, kept by the KPI engine so that a 30-day window reads 29 kept
-- days and computes one: available and scheduled time (business view) and counted
-- financial transactions. ``fingerprint`` identifies the rules, the inventory and the
-- recorded collector outages they were computed with; another fingerprint is another
-- cache. Late telemetry (state, presence, power, transactions) deletes the device's kept
-- days from the local day before it, in the batch's transaction (runs.py).
CREATE TABLE kpi_device_days (
    fingerprint  text        NOT NULL,
    device_id    text        NOT NULL,
    day          date        NOT NULL,
    available_ms bigint      NOT NULL,
    scheduled_ms bigint      NOT NULL,
    financial    bigint      NOT NULL,
    computed_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (fingerprint, device_id, day)
);
CREATE INDEX kpi_device_days_device_idx ON kpi_device_days (device_id, day);

-- The time zone local days are counted in (set when the schema was created).
CREATE FUNCTION atmfleet_timezone() RETURNS text LANGUAGE sql IMMUTABLE PARALLEL SAFE
RETURN {{timezone}};
