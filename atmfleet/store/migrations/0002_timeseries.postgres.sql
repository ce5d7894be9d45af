-- Plain PostgreSQL: the same tables stay ordinary tables. BRIN indexes keep time-range
-- scans cheap on append-mostly data.
CREATE INDEX state_samples_ts_brin ON state_samples USING brin (ts);
CREATE INDEX events_ts_brin ON events USING brin (ts);
CREATE INDEX transactions_ts_brin ON transactions USING brin (ts);
CREATE INDEX presence_ts_brin ON presence USING brin (ts);
