-- 开机率 of a kept closed day in full: besides A and S of the business view, the
-- technical view, the planned time taken out of S, the monitored part of S and the time
-- inside the window by label (`labels`: their names joined by commas, in the order the
-- engine met them; `label_ms`: each one's ms, in that order), so that `atmfleet kpi
-- uptime` of a kept day reads one row per device instead of rebuilding every timeline
-- (rules/feed.py, uptime_of_day). NULL until kept in full (a row kept for low-yield only
-- has A, S and the financial count). Same row, same fingerprint: late telemetry that
-- deletes a kept day deletes these too.
ALTER TABLE kpi_device_days
    ADD COLUMN tech_scheduled_ms bigint,
    ADD COLUMN tech_available_ms bigint,
    ADD COLUMN planned_excluded_ms bigint,
    ADD COLUMN monitored_ms bigint,
    ADD COLUMN labels text,
    ADD COLUMN label_ms bigint[];

-- A day's rows kept in full, found without reading every kept day of the fingerprint.
CREATE INDEX kpi_device_days_uptime_idx ON kpi_device_days (fingerprint, day)
    WHERE labels IS NOT NULL;
