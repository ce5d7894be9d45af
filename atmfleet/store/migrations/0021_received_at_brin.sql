-- What arrived since a moment, for `atmfleet serve`'s incremental refresh (docs/metrics.md,
-- "Start-up and refresh"): it re-reads only the devices with a message received since its
-- last read. The collector stores in the order it receives, so the table's block ranges
-- follow received_at and a BRIN index (a few pages, next to nothing to keep at ingest)
-- finds the recent rows. Plain PostgreSQL and TimescaleDB alike (per chunk there).
CREATE INDEX state_samples_received_brin ON state_samples USING brin (received_at);
CREATE INDEX presence_received_brin ON presence USING brin (received_at);
CREATE INDEX events_received_brin ON events USING brin (received_at);
CREATE INDEX transactions_received_brin ON transactions USING brin (received_at);
