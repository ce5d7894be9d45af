-- TimescaleDB: hypertables, columnstore (compression) segmented by device. Every column of
-- a unique key is a segmentby or orderby column, as compression requires.
SELECT create_hypertable('state_samples', 'ts', chunk_time_interval => INTERVAL '1 day',
                         migrate_data => true, if_not_exists => true);
SELECT create_hypertable('events', 'ts', chunk_time_interval => INTERVAL '7 days',
                         migrate_data => true, if_not_exists => true);
SELECT create_hypertable('transactions', 'ts', chunk_time_interval => INTERVAL '1 day',
                         migrate_data => true, if_not_exists => true);
SELECT create_hypertable('presence', 'ts', chunk_time_interval => INTERVAL '7 days',
                         migrate_data => true, if_not_exists => true);

ALTER TABLE state_samples SET (timescaledb.compress,
    timescaledb.compress_segmentby = 'device_id', timescaledb.compress_orderby = 'ts, seq');
ALTER TABLE events SET (timescaledb.compress,
    timescaledb.compress_segmentby = 'device_id', timescaledb.compress_orderby = 'ts, seq');
ALTER TABLE transactions SET (timescaledb.compress,
    timescaledb.compress_segmentby = 'device_id', timescaledb.compress_orderby = 'ts, seq, txn_id');
ALTER TABLE presence SET (timescaledb.compress,
    timescaledb.compress_segmentby = 'device_id',
    timescaledb.compress_orderby = 'ts, status, session, will');

-- Compress chunks once store-and-forward backlogs are unlikely to still arrive.
SELECT add_compression_policy('state_samples', INTERVAL '7 days', if_not_exists => true);
SELECT add_compression_policy('events', INTERVAL '14 days', if_not_exists => true);
SELECT add_compression_policy('transactions', INTERVAL '7 days', if_not_exists => true);
SELECT add_compression_policy('presence', INTERVAL '14 days', if_not_exists => true);
