-- 资源预警率 (resource-warning rate): a kept closed day also keeps the device's warning
-- time W (ms; rules/resource.py), so a month of the rate reads kept days instead of every
-- state message of the month. NULL until computed. It lives in the same row as the day's
-- scheduled time, under the same fingerprint, so late telemetry that deletes the kept day
-- (atmfleet/store/runs.py) deletes it too.
ALTER TABLE kpi_device_days ADD COLUMN warning_ms bigint;
