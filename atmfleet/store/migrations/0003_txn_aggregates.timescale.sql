-- atmfleet:no-transaction
-- Continuous aggregates of transaction counts. Real-time (materialized_only = false), so
-- the latest, not yet materialised buckets are still answered from the raw rows.
-- txn_daily buckets by local day in the timezone configured when it was created.
CREATE MATERIALIZED VIEW IF NOT EXISTS txn_hourly
WITH (timescaledb.continuous, timescaledb.materialized_only = false) AS
SELECT time_bucket(INTERVAL '1 hour', ts) AS bucket,
       device_id, type, financial, result, on_us,
       count(*) AS txns, sum(amount) AS amount, sum(fee) AS fee
FROM transactions
GROUP BY bucket, device_id, type, financial, result, on_us
WITH NO DATA;

CREATE MATERIALIZED VIEW IF NOT EXISTS txn_daily
WITH (timescaledb.continuous, timescaledb.materialized_only = false) AS
SELECT time_bucket(INTERVAL '1 day', ts, {{timezone}}) AS bucket,
       device_id, type, financial, result, on_us,
       count(*) AS txns, sum(amount) AS amount, sum(fee) AS fee
FROM transactions
GROUP BY bucket, device_id, type, financial, result, on_us
WITH NO DATA;

SELECT add_continuous_aggregate_policy('txn_hourly', start_offset => INTERVAL '7 days',
    end_offset => INTERVAL '1 hour', schedule_interval => INTERVAL '15 minutes',
    if_not_exists => true);

SELECT add_continuous_aggregate_policy('txn_daily', start_offset => INTERVAL '35 days',
    end_offset => INTERVAL '1 hour', schedule_interval => INTERVAL '1 hour',
    if_not_exists => true);
