-- Plain PostgreSQL: the aggregates are ordinary views with the same names and columns.
-- txn_daily buckets by local day in the timezone configured when it was created.
CREATE VIEW txn_hourly AS
SELECT date_trunc('hour', ts) AS bucket,
       device_id, type, financial, result, on_us,
       count(*) AS txns, sum(amount) AS amount, sum(fee) AS fee
FROM transactions
GROUP BY bucket, device_id, type, financial, result, on_us;

CREATE VIEW txn_daily AS
SELECT date_trunc('day', ts, {{timezone}}) AS bucket,
       device_id, type, financial, result, on_us,
       count(*) AS txns, sum(amount) AS amount, sum(fee) AS fee
FROM transactions
GROUP BY bucket, device_id, type, financial, result, on_us;
