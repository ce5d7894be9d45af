-- Kept closed days, keyed day first: a new day's rows (100,000 for a fleet) go at the end
-- of the primary key, page after page, instead of into the middle of every device's
-- entries; a window of days is a range of the key (the history before it is not read).
-- The device's own index (device_id, day) stays for the deletes of late telemetry.
ALTER TABLE kpi_device_days DROP CONSTRAINT kpi_device_days_pkey;
ALTER TABLE kpi_device_days ADD PRIMARY KEY (fingerprint, day, device_id);

-- The low-yield window sums (rules/lowyield.py, WindowSums) of the window ending on the
-- row's day, kept beside it by the evaluation that kept the day (rules/feed.py,
-- low_yield_for): the sums of the kept days of the window (its length and the way days
-- are counted are the rules', part of the fingerprint), set only when every day of the
-- window is kept. A 30-day evaluation then reads one row per device instead of 30.
-- NULL: not kept (the kept days are added up instead).
ALTER TABLE kpi_device_days
    ADD COLUMN win_monitored integer,
    ADD COLUMN win_available_ms bigint,
    ADD COLUMN win_scheduled_ms bigint,
    ADD COLUMN win_counted integer,
    ADD COLUMN win_financial bigint;

-- A kept day deleted (late telemetry, a planned stop) or changed is part of the windows
-- ending on the 62 days after it (the sums are kept for windows of up to 63 days): their
-- sums are forgotten. The day's own sums go with its row, or are set by the statement
-- that changes it (rules/queries.sql, keep_days and keep_uptime_days).
CREATE FUNCTION kpi_window_sums_forget_deleted() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    UPDATE kpi_device_days k
    SET win_monitored = NULL, win_available_ms = NULL, win_scheduled_ms = NULL,
        win_counted = NULL, win_financial = NULL
    FROM (SELECT fingerprint, device_id, min(day) AS lo, max(day) AS hi
          FROM deleted GROUP BY fingerprint, device_id) d
    WHERE k.fingerprint = d.fingerprint AND k.device_id = d.device_id
      AND k.day > d.lo AND k.day <= d.hi + 62 AND k.win_monitored IS NOT NULL;
    RETURN NULL;
END
$$;

CREATE TRIGGER kpi_device_days_deleted AFTER DELETE ON kpi_device_days
    REFERENCING OLD TABLE AS deleted
    FOR EACH STATEMENT EXECUTE FUNCTION kpi_window_sums_forget_deleted();

CREATE FUNCTION kpi_window_sums_forget_changed() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    UPDATE kpi_device_days k
    SET win_monitored = NULL, win_available_ms = NULL, win_scheduled_ms = NULL,
        win_counted = NULL, win_financial = NULL
    WHERE k.win_monitored IS NOT NULL
      AND ((k.fingerprint = OLD.fingerprint AND k.device_id = OLD.device_id
            AND k.day > OLD.day AND k.day <= OLD.day + 62)
           OR (k.fingerprint = NEW.fingerprint AND k.device_id = NEW.device_id
               AND k.day > NEW.day AND k.day <= NEW.day + 62));
    RETURN NULL;
END
$$;

-- One row at a time, and only when a value the sums are made of changes (an upsert that
-- writes a day again with the same values, or the resource-warning time, changes none).
CREATE TRIGGER kpi_device_days_changed
    AFTER UPDATE OF fingerprint, device_id, day, available_ms, scheduled_ms, financial
    ON kpi_device_days FOR EACH ROW
    WHEN (OLD.fingerprint IS DISTINCT FROM NEW.fingerprint
          OR OLD.device_id IS DISTINCT FROM NEW.device_id OR OLD.day IS DISTINCT FROM NEW.day
          OR OLD.available_ms IS DISTINCT FROM NEW.available_ms
          OR OLD.scheduled_ms IS DISTINCT FROM NEW.scheduled_ms
          OR OLD.financial IS DISTINCT FROM NEW.financial)
    EXECUTE FUNCTION kpi_window_sums_forget_changed();
