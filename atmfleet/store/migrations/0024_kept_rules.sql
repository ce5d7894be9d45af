-- The rules days are kept with, one row per fingerprint (kpi_device_days): how far back
-- late telemetry reaches into their days, and their newest day kept.
-- - context_ms: the context of the rules (rules/feed.py, Feed.context_ms: the longest
--   heartbeat timeout a device can have, timeout_factor x the protocol's largest
--   heartbeat_s; 3 h by default). A point at t changes the timeline from t - context on,
--   never before: the collector deletes a device's kept days from the local day of
--   t - context (atmfleet/store/runs.py), no longer from the day before t, so yesterday's
--   kept days stay kept once today is 3 h old, however much of it the fleet sends. Said
--   by each keep; a fingerprint no keep has said it for (its days kept before this
--   migration, or written by hand) takes a day and a millisecond, the widest any kept day
--   may have (a day is kept only when its context is at most that), as before.
-- - newest: the newest day kept (kept by the insert trigger below, whoever writes the
--   days): a point whose reach starts after it cannot touch a kept day, and the collector
--   does not look for one (every batch probed the device's index for each of its points,
--   with nothing to delete, in the daytime).
CREATE TABLE kpi_kept_rules (
    fingerprint text   PRIMARY KEY,
    context_ms  bigint NOT NULL DEFAULT 86400001,
    newest      date   NOT NULL
);

INSERT INTO kpi_kept_rules (fingerprint, newest)
SELECT fingerprint, max(day) FROM kpi_device_days GROUP BY fingerprint;

CREATE FUNCTION kpi_kept_rules_newest() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO kpi_kept_rules AS r (fingerprint, newest)
    SELECT fingerprint, max(day) FROM kept GROUP BY fingerprint
    ON CONFLICT (fingerprint) DO UPDATE SET newest = greatest(r.newest, excluded.newest)
    WHERE r.newest < excluded.newest;
    RETURN NULL;
END
$$;

-- On insert only: a kept day written again (ON CONFLICT DO UPDATE) keeps its day, and
-- nothing moves a kept day to another.
CREATE TRIGGER kpi_device_days_kept AFTER INSERT ON kpi_device_days
    REFERENCING NEW TABLE AS kept
    FOR EACH STATEMENT EXECUTE FUNCTION kpi_kept_rules_newest();

-- The kept days a batch's points reach, per device and rules: from which local day on
-- (t - context), only for the rules whose newest kept day is reached. A function that
-- the planner counts one row for (ROWS 1): the collector's delete then finds each
-- device's days through the device's index, never by hashing the whole table (what the
-- same join written in the statement was planned as, for a batch of 2,000 points: a
-- second instead of milliseconds).
CREATE FUNCTION kpi_kept_reached(ids text[], at_ms bigint[])
RETURNS TABLE (reached_id text, reached_fingerprint text, reached_from date)
LANGUAGE plpgsql STABLE ROWS 1 AS $$
BEGIN
    RETURN QUERY
    SELECT u.id, r.fingerprint, f.day
    FROM unnest(ids, at_ms) AS u (id, at)
    CROSS JOIN kpi_kept_rules r
    CROSS JOIN LATERAL (
        SELECT ((TIMESTAMPTZ 'epoch' + (u.at - r.context_ms) * INTERVAL '1 millisecond')
                AT TIME ZONE atmfleet_timezone())::date AS day
    ) f
    WHERE f.day <= r.newest;
END
$$;

-- The window sums forgotten when kept days are deleted (0023), only when some were, and
-- planned at each call. The trigger fires for every statement, so for every batch the
-- collector stores, most of them deleting nothing; and PL/pgSQL keeps a statement's plan
-- for the life of the connection: the collector's, planned while kpi_device_days was
-- empty, went on scanning the whole table (3,000,000 days once serve had kept a month:
-- 0.2 to 0.4 s a batch, until autovacuum analysed the table) to forget nothing.
CREATE OR REPLACE FUNCTION kpi_window_sums_forget_deleted() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    hits tid[];
BEGIN
    IF NOT EXISTS (SELECT FROM deleted) THEN
        RETURN NULL;
    END IF;
    EXECUTE $q$
        SELECT ARRAY(
            SELECT hit.ctid
            FROM (SELECT fingerprint, device_id, min(day) AS lo, max(day) AS hi
                  FROM deleted GROUP BY fingerprint, device_id) d
            CROSS JOIN LATERAL (
                SELECT x.ctid FROM kpi_device_days x
                WHERE x.device_id = d.device_id AND x.day > d.lo AND x.day <= d.hi + 62
                  AND x.fingerprint = d.fingerprint AND x.win_monitored IS NOT NULL
                OFFSET 0  -- not pulled up into a join (planned as 0022's was)
            ) hit)
    $q$ INTO hits;
    IF cardinality(hits) > 0 THEN
        EXECUTE $q$
            UPDATE kpi_device_days
            SET win_monitored = NULL, win_available_ms = NULL, win_scheduled_ms = NULL,
                win_counted = NULL, win_financial = NULL
            WHERE ctid = ANY ($1)
        $q$ USING hits;
    END IF;
    RETURN NULL;
END
$$;
