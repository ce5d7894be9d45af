-- The sums forgotten when kept days are deleted (0022), found device by device through
-- the device's own index (device_id, day): a fleet's day deleted (100,000 rows: late
-- telemetry, a planned stop, a day kept again) probes each device's next 62 days, never
-- the whole table once per device. With the statistics of a table whose window sums
-- were just kept (none with sums yet, as far as the planner knew), the join of 0022 was
-- planned as a nested loop over a sequential scan: 10^10 row pairs, hours for one day.
CREATE OR REPLACE FUNCTION kpi_window_sums_forget_deleted() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    UPDATE kpi_device_days k
    SET win_monitored = NULL, win_available_ms = NULL, win_scheduled_ms = NULL,
        win_counted = NULL, win_financial = NULL
    WHERE k.ctid = ANY (ARRAY(
        SELECT hit.ctid
        FROM (SELECT fingerprint, device_id, min(day) AS lo, max(day) AS hi
              FROM deleted GROUP BY fingerprint, device_id) d
        CROSS JOIN LATERAL (
            SELECT x.ctid FROM kpi_device_days x
            WHERE x.device_id = d.device_id AND x.day > d.lo AND x.day <= d.hi + 62
              AND x.fingerprint = d.fingerprint AND x.win_monitored IS NOT NULL
            OFFSET 0  -- not pulled up into a join (which would be planned as 0022's was)
        ) hit));
    RETURN NULL;
END
$$;
