-- Every query that feeds the KPI engine (rules/feed.py loads them by name). They run
-- unchanged on plain PostgreSQL and on TimescaleDB: state_runs is a plain table on both
-- (maintained at ingest), txn_daily a continuous aggregate on TimescaleDB and a
-- trigger-maintained table on plain PostgreSQL, with the same columns.
-- Parameters are named (%(name)s); times are timestamptz, days local dates.

-- name: inventory_subbranches
SELECT id, name, tier FROM subbranches ORDER BY id;

-- name: inventory_branches
SELECT id, name, subbranch, kind, parent FROM branches ORDER BY id;

-- name: inventory_devices
SELECT id, branch, type, placement, vendor, model, commissioned, decommissioned,
       service_window, deposit_capable, heartbeat_s
FROM devices ORDER BY id;

-- name: now
SELECT now();

-- When monitoring began: the earliest collector run or stored state or presence message,
-- whichever is first (before it the store holds no evidence: unknown time).
-- name: monitoring_start
SELECT floor(extract(epoch FROM least(
           (SELECT min(started_at) FROM collector_runs),
           (SELECT min(start_ts) FROM state_runs),
           (SELECT min(presence_at(will, ts, received_at)) FROM presence))) * 1000)::int8;

-- State runs overlapping [lo, hi): the period with its context (the caller widens it by
-- the longest heartbeat timeout on both sides).
-- Every read of runs overlapping a span also says it as plain comparisons (implied by
-- the overlap, as last_ts >= start_ts): a sequential scan of the table then rejects a run
-- outside the span on them, without building its range.
-- name: runs
SELECT device_id, floor(extract(epoch FROM start_ts) * 1000)::int8, start_seq, floor(extract(epoch FROM last_ts) * 1000)::int8, state, heartbeat_s
FROM state_runs
WHERE start_ts < %(hi)s AND last_ts >= %(lo)s
  AND tstzrange(start_ts, last_ts, '[]') && tstzrange(%(lo)s, %(hi)s, '[)')
ORDER BY device_id, start_ts, start_seq;

-- The same runs, one row per device, packed: per run its start and last timestamps as
-- sent in binary (int8 microseconds since 2000-01-01), start_seq (int8) and heartbeat_s
-- (int4), 28 bytes a run, then the states joined by commas, in the same order (both
-- aggregates see the group's rows in one order; the order of a device's runs does not
-- matter, the timeline sorts its points). 100,000 rows for a fleet, unpacked in C, and
-- no epoch arithmetic in numeric (rules/feed.py, Feed.timeline_points).
-- name: runs_by_device
SELECT device_id,
       string_agg(timestamptz_send(start_ts) || int8send(start_seq)
                  || timestamptz_send(last_ts) || int4send(heartbeat_s), ''::bytea),
       string_agg(state, ',')
FROM state_runs
WHERE start_ts < %(hi)s AND last_ts >= %(lo)s
  AND tstzrange(start_ts, last_ts, '[]') && tstzrange(%(lo)s, %(hi)s, '[)')
GROUP BY device_id;

-- The same, of the devices in `ids` only (a few devices' timelines: the daily
-- bulletin's down-for-long candidates).
-- name: runs_by_device_of
SELECT device_id,
       string_agg(timestamptz_send(start_ts) || int8send(start_seq)
                  || timestamptz_send(last_ts) || int4send(heartbeat_s), ''::bytea),
       string_agg(state, ',')
FROM state_runs
WHERE start_ts < %(hi)s AND last_ts >= %(lo)s
  AND tstzrange(start_ts, last_ts, '[]') && tstzrange(%(lo)s, %(hi)s, '[)')
  AND device_id = ANY(%(ids)s::text[])
GROUP BY device_id;

-- One local day of a fleet as columns, in one statement (one snapshot): the inventory's
-- devices in id order (the inventory's order) as one text, nine fields each (id, branch,
-- type, placement, vendor, service window or '', commissioned and decommissioned as
-- days since 2000-01-01, decommissioned '' for none, heartbeat_s) joined by U+001F;
-- then the state runs overlapping [lo, hi): their device ids joined by U+001F and, in
-- the same order (both aggregates see the same rows in one order), per run its state's
-- position in the states given (1-based, 0 for a state not in them), start and last
-- (int8 µs since 2000-01-01), start_seq and heartbeat_s, 32 bytes a run; then the
-- txn_daily rows of the counted financial transactions of the local day [day_lo,
-- day_hi): device ids and, in the same order, txns (int8).
-- name: uptime_day_columns
SELECT (SELECT count(*) FROM devices),
       (SELECT string_agg(concat_ws(E'\x1f', id, branch, type, placement, vendor,
                                    coalesce(service_window, ''),
                                    commissioned - date '2000-01-01',
                                    coalesce((decommissioned - date '2000-01-01')::text, ''),
                                    heartbeat_s), E'\x1f' ORDER BY id)
        FROM devices),
       r.ids, r.packed, t.ids, t.txns
FROM (SELECT string_agg(device_id, E'\x1f') AS ids,
             string_agg(int4send(coalesce(array_position(%(states)s::text[], state), 0))
                        || timestamptz_send(start_ts) || int8send(start_seq)
                        || timestamptz_send(last_ts) || int4send(heartbeat_s), ''::bytea) AS packed
      FROM state_runs
      WHERE start_ts < %(hi)s AND last_ts >= %(lo)s
        AND tstzrange(start_ts, last_ts, '[]') && tstzrange(%(lo)s, %(hi)s, '[)')) r,
     (SELECT string_agg(device_id, E'\x1f') AS ids, string_agg(int8send(txns), ''::bytea) AS txns
      FROM txn_daily
      WHERE bucket >= %(day_lo)s AND bucket < %(day_hi)s
        AND type = ANY(%(financial)s) AND result = ANY(%(counted)s)) t;

-- A closed day kept in full (migration 0018) as columns, in one statement: the
-- inventory's devices as in uptime_day_columns, then the ids of the devices kept that
-- day under the fingerprint joined by U+001F and, in the same order, per device its
-- scheduled, available, technical scheduled and available, planned excluded and
-- monitored ms, its financial count and its time by label in the order of the labels
-- given (0 where a label has no time; ten labels), int8 each.
-- name: kept_day_columns
SELECT (SELECT count(*) FROM devices),
       (SELECT string_agg(concat_ws(E'\x1f', id, branch, type, placement, vendor,
                                    coalesce(service_window, ''),
                                    commissioned - date '2000-01-01',
                                    coalesce((decommissioned - date '2000-01-01')::text, ''),
                                    heartbeat_s), E'\x1f' ORDER BY id)
        FROM devices),
       k.ids, k.packed
FROM (SELECT string_agg(device_id, E'\x1f') AS ids,
             string_agg(int8send(scheduled_ms) || int8send(available_ms)
                        || int8send(tech_scheduled_ms) || int8send(tech_available_ms)
                        || int8send(planned_excluded_ms) || int8send(monitored_ms)
                        || int8send(financial)
                        || int8send(coalesce(label_ms[array_position(names, (%(labels)s::text[])[1])], 0))
                        || int8send(coalesce(label_ms[array_position(names, (%(labels)s::text[])[2])], 0))
                        || int8send(coalesce(label_ms[array_position(names, (%(labels)s::text[])[3])], 0))
                        || int8send(coalesce(label_ms[array_position(names, (%(labels)s::text[])[4])], 0))
                        || int8send(coalesce(label_ms[array_position(names, (%(labels)s::text[])[5])], 0))
                        || int8send(coalesce(label_ms[array_position(names, (%(labels)s::text[])[6])], 0))
                        || int8send(coalesce(label_ms[array_position(names, (%(labels)s::text[])[7])], 0))
                        || int8send(coalesce(label_ms[array_position(names, (%(labels)s::text[])[8])], 0))
                        || int8send(coalesce(label_ms[array_position(names, (%(labels)s::text[])[9])], 0))
                        || int8send(coalesce(label_ms[array_position(names, (%(labels)s::text[])[10])], 0)), ''::bytea) AS packed
      FROM (SELECT kd.*, string_to_array(labels, ',') AS names
            FROM kpi_device_days kd
            WHERE fingerprint = %(fingerprint)s AND day = %(day)s AND labels IS NOT NULL) d) k;

-- Whether any device's closed day is kept in full under a fingerprint.
-- name: kept_uptime_any
SELECT EXISTS (SELECT 1 FROM kpi_device_days
               WHERE fingerprint = %(fingerprint)s AND day = %(day)s AND labels IS NOT NULL);

-- Presence taking effect in [lo, hi) (a broker will: when it was received).
-- name: presence
SELECT device_id, floor(extract(epoch FROM ts) * 1000)::int8, status = 'online', will, floor(extract(epoch FROM received_at) * 1000)::int8
FROM presence
WHERE presence_at(will, ts, received_at) >= %(lo)s
  AND presence_at(will, ts, received_at) < %(hi)s;

-- Power cuts explained by a power_restored event, overlapping [lo, hi).
-- name: power
SELECT DISTINCT device_id, floor(extract(epoch FROM since) * 1000)::int8, floor(extract(epoch FROM ts) * 1000)::int8
FROM events
WHERE event = 'power_restored' AND since IS NOT NULL AND ts >= %(lo)s AND since < %(hi)s;

-- The devices whose timeline is surely not down at some moment of [lo, hi) (the daily
-- bulletin's down-for-long list looks only at the others), whatever period around it
-- the timeline covers: a state run in one of `states` (a label outside the downtime
-- causes) yields its label over its own span in the timeline's sweep, from the latest
-- end of the runs sorted before it (those starting no later than 1 ms after it, taken
-- all: a sweep orders by the millisecond) or its start, whichever is later; a collector
-- outage or a registered stop never turns that time into a downtime cause, a power cut
-- can, so a device with a power_restored event reaching into [lo, hi) is never listed
-- here. The bounds are kept 1 ms apart, so the time in whole milliseconds (as the
-- timeline has it, floored) is non-empty too. A superset of the devices down throughout
-- [lo, hi) is what is left (rules/feed.py, Feed.up_between).
-- name: up_between
WITH runs AS (
    SELECT device_id, start_ts, last_ts, state,
           max(last_ts) OVER (PARTITION BY device_id ORDER BY start_ts
                              RANGE BETWEEN UNBOUNDED PRECEDING AND '1 millisecond' FOLLOWING
                              EXCLUDE CURRENT ROW) AS before
    FROM state_runs
    WHERE start_ts < %(hi)s AND last_ts >= %(lo)s
), seen AS (
    SELECT device_id, greatest(before, start_ts, %(lo)s::timestamptz) AS a, last_ts
    FROM runs
    WHERE state = ANY(%(states)s::text[])
), cut AS (
    SELECT DISTINCT device_id
    FROM events
    WHERE event = 'power_restored' AND ts > %(lo)s AND (since IS NULL OR since < %(hi)s)
)
SELECT DISTINCT device_id
FROM seen
WHERE a < %(hi)s AND a + interval '1 millisecond' <= last_ts
  AND device_id NOT IN (SELECT device_id FROM cut);

-- 资源预警率: per device, the spans from a state message reporting a cash or consumables
-- warning (a state in `states`, a cash unit containing one of `units`, components
-- containing one of `components`, an active fault code in `faults`) to the next state
-- message that reports none (NULL: none yet), over state messages in [lo, hi). Only the
-- changes leave the database; the engine cuts the spans with the 开机率 timeline.
-- MATERIALIZED: the flag is computed once per message, before the sort, so the window
-- sorts narrow rows (twice as fast as sorting the messages with their cash units).
-- name: warning_spans
WITH marked AS MATERIALIZED (
    SELECT device_id, ts, seq,
           (state = ANY(%(states)s::text[])
            OR cash_units @> ANY(%(units)s::jsonb[])
            OR components @> ANY(%(components)s::jsonb[])
            OR faults && %(faults)s::text[]) AS warning
    FROM state_samples
    WHERE ts >= %(lo)s AND ts < %(hi)s
), changes AS (
    SELECT device_id, ts, seq, warning
    FROM (SELECT marked.*,
                 lag(warning) OVER (PARTITION BY device_id ORDER BY ts, seq) AS before
          FROM marked) m
    WHERE before IS DISTINCT FROM warning
), spans AS (
    SELECT device_id, ts, warning,
           lead(ts) OVER (PARTITION BY device_id ORDER BY ts, seq) AS until
    FROM changes
)
SELECT device_id, floor(extract(epoch FROM ts) * 1000)::int8, floor(extract(epoch FROM until) * 1000)::int8
FROM spans
WHERE warning
ORDER BY 1, 2;

-- Collector outages (time the monitoring cannot vouch for) overlapping [lo, hi).
-- name: outages
SELECT floor(extract(epoch FROM started_at) * 1000)::int8, floor(extract(epoch FROM ended_at) * 1000)::int8 FROM collector_outages
WHERE ended_at >= %(lo)s AND started_at < %(hi)s
ORDER BY 1;

-- Approved registered planned stops (stops/, migration 0012) overlapping [lo, hi), per
-- device: a device's own stops and those of its branch.
-- name: planned_stops
SELECT device_id, floor(extract(epoch FROM starts_at) * 1000)::int8, floor(extract(epoch FROM ends_at) * 1000)::int8
FROM planned_stops
WHERE status = 'approved' AND device_id IS NOT NULL AND ends_at > %(lo)s AND starts_at < %(hi)s
UNION ALL
SELECT d.id, floor(extract(epoch FROM s.starts_at) * 1000)::int8, floor(extract(epoch FROM s.ends_at) * 1000)::int8
FROM planned_stops s JOIN devices d ON d.branch = s.branch_id
WHERE s.status = 'approved' AND s.branch_id IS NOT NULL AND s.ends_at > %(lo)s AND s.starts_at < %(hi)s
ORDER BY 1, 2;

-- The approved stops themselves, overlapping [lo, hi) (listed in the bulletins).
-- name: approved_stops
SELECT s.id, s.device_id, s.branch_id, coalesce(b.subbranch, db.subbranch),
       floor(extract(epoch FROM s.starts_at) * 1000)::int8, floor(extract(epoch FROM s.ends_at) * 1000)::int8,
       s.reason, s.requester, s.approver, s.retroactive
FROM planned_stops s
LEFT JOIN branches b ON b.id = s.branch_id
LEFT JOIN devices d ON d.id = s.device_id
LEFT JOIN branches db ON db.id = d.branch
WHERE s.status = 'approved' AND s.ends_at > %(lo)s AND s.starts_at < %(hi)s
ORDER BY s.starts_at, s.id;

-- Transactions per device and local day (bucket = local midnight), split by the rules'
-- financial types and counted results.
-- name: txn_days
SELECT device_id, bucket,
       coalesce(sum(txns) FILTER (WHERE type = ANY(%(financial)s) AND result = ANY(%(counted)s)), 0),
       coalesce(sum(txns) FILTER (WHERE type <> ALL(%(financial)s) AND result = ANY(%(counted)s)), 0),
       coalesce(sum(fee) FILTER (WHERE result = ANY(%(counted)s)), 0),
       coalesce(sum(txns) FILTER (WHERE result = ANY(%(counted)s) AND fee > 0), 0)
FROM txn_daily
WHERE bucket >= %(lo)s AND bucket < %(hi)s
GROUP BY device_id, bucket;

-- Counted financial transactions per device on the local days in [lo, hi).
-- name: financial_days
SELECT device_id, bucket, sum(txns)::int8
FROM txn_daily
WHERE bucket >= %(lo)s AND bucket < %(hi)s
  AND type = ANY(%(financial)s) AND result = ANY(%(counted)s)
GROUP BY device_id, bucket;

-- Teller-counter volumes per branch and local day.
-- name: counters
SELECT branch_id, date, financial, non_financial
FROM counter_volumes
WHERE date >= %(first)s AND date <= %(last)s;

-- What stored closed days depend on besides the rules: the inventory's devices and the
-- recorded collector outages.
-- name: fingerprint
SELECT (SELECT md5(coalesce(string_agg(concat_ws('|', id, type, placement, commissioned,
                                                 decommissioned, service_window, heartbeat_s),
                                       ',' ORDER BY id), ''))
        FROM devices),
       (SELECT count(*) || ':' || coalesce(max(id), 0) || ':' || coalesce(max(recorded_at)::text, '')
        FROM collector_outages);

-- Kept closed days per device, as one int8 array per device (a 30-day read for 100,000
-- devices is then 100,000 rows): the day offsets from the first day, then available ms,
-- scheduled ms and counted financial transactions, in the same order (any order: the
-- offsets say which day each value is).
-- name: kept_days
SELECT device_id,
       array_agg((day - %(first)s::date)::int8) || array_agg(available_ms)
       || array_agg(scheduled_ms) || array_agg(financial)
FROM kpi_device_days
WHERE fingerprint = %(fingerprint)s AND day >= %(first)s AND day <= %(last)s
GROUP BY device_id;

-- The same for a few devices only (those whose window is cut by their commissioning).
-- name: kept_days_of
SELECT device_id,
       array_agg((day - %(first)s::date)::int8) || array_agg(available_ms)
       || array_agg(scheduled_ms) || array_agg(financial)
FROM kpi_device_days
WHERE fingerprint = %(fingerprint)s AND day >= %(first)s AND day <= %(last)s
  AND device_id = ANY(%(ids)s::text[])
GROUP BY device_id;

-- Low-yield: per device, the sums of its kept closed days first..last the evaluation is
-- judged on (rules/lowyield.py, WindowSums): days with S > 0, their ΣA and ΣS, and of
-- those the days counted (A > 0 too when only days in service count) with their
-- financial transactions; then which days are kept, as bits (bit i: first + i; the
-- first 63 days, a longer window reads its days one by one): the others are computed.
-- One narrow row per device instead of its 4 x 30 values.
-- name: kept_sums
SELECT device_id,
       count(*) FILTER (WHERE scheduled_ms > 0),
       coalesce(sum(available_ms) FILTER (WHERE scheduled_ms > 0), 0)::int8,
       coalesce(sum(scheduled_ms) FILTER (WHERE scheduled_ms > 0), 0)::int8,
       count(*) FILTER (WHERE scheduled_ms > 0 AND (available_ms > 0 OR NOT %(in_service)s)),
       coalesce(sum(financial) FILTER (WHERE scheduled_ms > 0
                                         AND (available_ms > 0 OR NOT %(in_service)s)), 0)::int8,
       bit_or(1::int8 << (day - %(first)s::date)) FILTER (WHERE day - %(first)s::date < 63)
FROM kpi_device_days
WHERE fingerprint = %(fingerprint)s AND day >= %(first)s AND day <= %(last)s
GROUP BY device_id;

-- The same for a few devices only (those whose window sums are not kept).
-- name: kept_sums_of
SELECT device_id,
       count(*) FILTER (WHERE scheduled_ms > 0),
       coalesce(sum(available_ms) FILTER (WHERE scheduled_ms > 0), 0)::int8,
       coalesce(sum(scheduled_ms) FILTER (WHERE scheduled_ms > 0), 0)::int8,
       count(*) FILTER (WHERE scheduled_ms > 0 AND (available_ms > 0 OR NOT %(in_service)s)),
       coalesce(sum(financial) FILTER (WHERE scheduled_ms > 0
                                         AND (available_ms > 0 OR NOT %(in_service)s)), 0)::int8,
       bit_or(1::int8 << (day - %(first)s::date)) FILTER (WHERE day - %(first)s::date < 63)
FROM kpi_device_days
WHERE fingerprint = %(fingerprint)s AND day >= %(first)s AND day <= %(last)s
  AND device_id = ANY(%(ids)s::text[])
GROUP BY device_id;

-- kept_sums of the window first..on for the devices whose window ending the day before
-- was kept whole (its sums kept beside that day): those sums less the day that leaves
-- the window (kept: the window was whole) plus the day evaluated where kept, and whether
-- it is. Three days' rows (three ranges of the key), not every kept day of the window;
-- one scan grouped by device, so that no join order hangs on the days' statistics
-- (a day just kept has none yet).
-- name: kept_sums_slid
SELECT device_id,
       (max(win_monitored) FILTER (WHERE day = %(before)s)
        - count(*) FILTER (WHERE day = %(drop)s AND scheduled_ms > 0)
        + count(*) FILTER (WHERE day = %(on)s AND scheduled_ms > 0))::int8,
       (max(win_available_ms) FILTER (WHERE day = %(before)s)
        - coalesce(sum(available_ms) FILTER (WHERE day = %(drop)s AND scheduled_ms > 0), 0)
        + coalesce(sum(available_ms) FILTER (WHERE day = %(on)s AND scheduled_ms > 0), 0)
       )::int8,
       (max(win_scheduled_ms) FILTER (WHERE day = %(before)s)
        - coalesce(sum(scheduled_ms) FILTER (WHERE day = %(drop)s AND scheduled_ms > 0), 0)
        + coalesce(sum(scheduled_ms) FILTER (WHERE day = %(on)s AND scheduled_ms > 0), 0)
       )::int8,
       (max(win_counted) FILTER (WHERE day = %(before)s)
        - count(*) FILTER (WHERE day = %(drop)s AND scheduled_ms > 0
                                 AND (available_ms > 0 OR NOT %(in_service)s))
        + count(*) FILTER (WHERE day = %(on)s AND scheduled_ms > 0
                                 AND (available_ms > 0 OR NOT %(in_service)s)))::int8,
       (max(win_financial) FILTER (WHERE day = %(before)s)
        - coalesce(sum(financial) FILTER (WHERE day = %(drop)s AND scheduled_ms > 0
                                                AND (available_ms > 0 OR NOT %(in_service)s)),
                   0)
        + coalesce(sum(financial) FILTER (WHERE day = %(on)s AND scheduled_ms > 0
                                                AND (available_ms > 0 OR NOT %(in_service)s)),
                   0))::int8,
       bool_or(day = %(on)s)
FROM kpi_device_days
WHERE fingerprint = %(fingerprint)s AND day IN (%(drop)s, %(before)s, %(on)s)
GROUP BY device_id
HAVING count(*) FILTER (WHERE day = %(before)s AND win_monitored IS NOT NULL) = 1
   AND count(*) FILTER (WHERE day = %(drop)s) = 1;

-- Whether any window sums are kept beside a day.
-- name: window_sums_any
SELECT EXISTS (SELECT 1 FROM kpi_device_days
               WHERE fingerprint = %(fingerprint)s AND day = %(day)s
                 AND win_monitored IS NOT NULL);

-- The devices whose day is kept (one range of the key).
-- name: kept_on
SELECT device_id FROM kpi_device_days WHERE fingerprint = %(fingerprint)s AND day = %(day)s;

-- Low-yield: the window sums kept beside a day (migration 0022), per device whose
-- window ending that day was kept whole: the same values as kept_sums of that window,
-- one row per device (the day's rows are one range of the key).
-- name: window_sums
SELECT device_id, win_monitored, win_available_ms, win_scheduled_ms, win_counted,
       win_financial
FROM kpi_device_days
WHERE fingerprint = %(fingerprint)s AND day = %(day)s AND win_monitored IS NOT NULL;

-- Kept closed days are upserted from a temporary table the feed fills by binary COPY
-- (rules/feed.py, Feed._upsert_kept), one row per device and day, then inserted in the
-- key's order: a fleet's day (100,000 rows) is not sent as arrays, and each index is
-- walked page after page instead of at random (day first: migration 0022). An existing
-- row keeps its other columns (W, and the 开机率 in full where keep_days writes A, S and
-- the financial count only); its window sums are those written with it (NULL: none), as
-- the values they were made of are written again.
-- name: kept_stage
CREATE TEMP TABLE kept_stage (
    device_id text NOT NULL, day date NOT NULL, available_ms int8, scheduled_ms int8,
    financial int8, tech_scheduled_ms int8, tech_available_ms int8,
    planned_excluded_ms int8, monitored_ms int8, labels text, label_ms int8[],
    win_monitored int4, win_available_ms int8, win_scheduled_ms int8, win_counted int4,
    win_financial int8
) ON COMMIT DROP;

-- The context of the rules whose days are kept (migration 0024), said before they are:
-- late telemetry deletes their days from the local day of t - context.
-- name: keep_rules
INSERT INTO kpi_kept_rules (fingerprint, context_ms, newest)
VALUES (%(fingerprint)s, %(context_ms)s, '-infinity')
ON CONFLICT (fingerprint) DO NOTHING;

-- name: keep_rules_context
UPDATE kpi_kept_rules SET context_ms = %(context_ms)s
WHERE fingerprint = %(fingerprint)s AND context_ms <> %(context_ms)s;

-- Whether any of the days is kept under the rules (by the primary key, a day a probe).
-- name: kept_any_on
SELECT EXISTS (
    SELECT FROM kpi_device_days
    WHERE fingerprint = %(fingerprint)s AND day = ANY(%(days)s::date[])
);

-- name: keep_days
INSERT INTO kpi_device_days (fingerprint, device_id, day, available_ms, scheduled_ms, financial)
SELECT %(fingerprint)s, device_id, day, available_ms, scheduled_ms, financial
FROM kept_stage
ORDER BY day, device_id
ON CONFLICT (fingerprint, day, device_id) DO UPDATE
SET available_ms = excluded.available_ms, scheduled_ms = excluded.scheduled_ms,
    financial = excluded.financial, win_monitored = NULL, win_available_ms = NULL,
    win_scheduled_ms = NULL, win_counted = NULL, win_financial = NULL, computed_at = now();

-- Kept closed days with their 开机率 in full (migration 0018), the same upsert as
-- keep_days with the technical view, planned, monitored and by-label time beside A and S
-- (`labels`: the names joined by commas; `label_ms`: each one's ms, in that order), and
-- the low-yield window sums ending that day where the evaluation has them (0022).
-- name: keep_uptime_days
INSERT INTO kpi_device_days (fingerprint, device_id, day, available_ms, scheduled_ms, financial,
                             tech_scheduled_ms, tech_available_ms, planned_excluded_ms,
                             monitored_ms, labels, label_ms, win_monitored, win_available_ms,
                             win_scheduled_ms, win_counted, win_financial)
SELECT %(fingerprint)s, device_id, day, available_ms, scheduled_ms, financial,
       tech_scheduled_ms, tech_available_ms, planned_excluded_ms, monitored_ms, labels, label_ms,
       win_monitored, win_available_ms, win_scheduled_ms, win_counted, win_financial
FROM kept_stage
ORDER BY day, device_id
ON CONFLICT (fingerprint, day, device_id) DO UPDATE
SET available_ms = excluded.available_ms, scheduled_ms = excluded.scheduled_ms,
    financial = excluded.financial, tech_scheduled_ms = excluded.tech_scheduled_ms,
    tech_available_ms = excluded.tech_available_ms,
    planned_excluded_ms = excluded.planned_excluded_ms, monitored_ms = excluded.monitored_ms,
    labels = excluded.labels, label_ms = excluded.label_ms,
    win_monitored = excluded.win_monitored, win_available_ms = excluded.win_available_ms,
    win_scheduled_ms = excluded.win_scheduled_ms, win_counted = excluded.win_counted,
    win_financial = excluded.win_financial, computed_at = now();

-- A kept closed day's 开机率 in full, per device kept so (migration 0018).
-- name: kept_uptime
SELECT device_id, available_ms, scheduled_ms, tech_scheduled_ms, tech_available_ms,
       planned_excluded_ms, monitored_ms, labels, label_ms, financial
FROM kpi_device_days
WHERE fingerprint = %(fingerprint)s AND day = %(day)s AND labels IS NOT NULL;

-- 资源预警率 of kept closed days (migration 0017): W and S per device and day, where W has
-- been computed.
-- name: kept_warnings
SELECT device_id, day, warning_ms, scheduled_ms
FROM kpi_device_days
WHERE fingerprint = %(fingerprint)s AND day >= %(first)s AND day <= %(last)s
  AND warning_ms IS NOT NULL;

-- W of closed days, into the kept days that hold their S (a day not kept: nothing).
-- name: keep_warnings
UPDATE kpi_device_days k SET warning_ms = u.warning_ms
FROM unnest(%(ids)s::text[], %(days)s::date[], %(warning)s::int8[], %(scheduled)s::int8[])
     AS u (id, day, warning_ms, scheduled_ms)
WHERE k.fingerprint = %(fingerprint)s AND k.device_id = u.id AND k.day = u.day
  AND k.scheduled_ms = u.scheduled_ms;

-- TimescaleDB only: txn_daily is a continuous aggregate; late rows for a bucket already
-- materialised show up at its next refresh. Before a day is kept, refresh it.
-- name: txn_daily_is_aggregate
-- (plain PostgreSQL: a table; TimescaleDB: the aggregate's view)
SELECT relkind = 'v' FROM pg_class WHERE oid = 'txn_daily'::regclass;

-- name: refresh_txn_daily
CALL refresh_continuous_aggregate('txn_daily', %(lo)s::timestamptz, %(hi)s::timestamptz);

-- Incidents whose (first or reopened) cycle opened in [lo, hi), for the vendor scorecard;
-- then their history and their breach marks (rules/vendors.py). Only the lifecycle's own
-- rows (to_state set): a notification row about the same incident repeats its kind.
-- name: incident_rows
SELECT i.id, i.device_id, i."class", i.cause, i.component,
       floor(extract(epoch FROM i.started_at) * 1000)::int8, i.repeat_of
FROM incidents i
WHERE i.id IN (SELECT incident_id FROM incident_events
               WHERE kind IN ('opened', 'reopened') AND to_state IS NOT NULL
                 AND at >= %(lo)s AND at < %(hi)s)
ORDER BY 1;

-- name: incident_history
SELECT e.incident_id, floor(extract(epoch FROM e.at) * 1000)::int8, e.kind, e.detail
FROM incident_events e
WHERE e.incident_id = ANY(%(ids)s) AND e.to_state IS NOT NULL
  AND e.kind IN ('opened', 'reopened', 'dispatched', 'on_site', 'restored')
ORDER BY e.id;

-- name: incident_breaches
SELECT incident_id, cycle, deadline
FROM incident_sla
WHERE incident_id = ANY(%(ids)s) AND kind = 'breach';

-- 资源预警率: every kept closed day's S, with its W where computed (NULL: not yet), per
-- device and day: W is kept only into a day whose S is kept (keep_warnings), so a day
-- not kept is not sent to be kept (at 100,000 devices that was 100,000 rows looked up
-- for nothing when the day itself was not kept yet).
-- name: kept_scheduled
SELECT device_id, day, warning_ms, scheduled_ms
FROM kpi_device_days
WHERE fingerprint = %(fingerprint)s AND day >= %(first)s AND day <= %(last)s;

-- Counted transactions per device summed over the local days in [lo, hi), split as in
-- txn_days (the monthly and quarterly assessments: one row per device instead of one per
-- device and day).
-- name: txn_period
SELECT device_id,
       coalesce(sum(txns) FILTER (WHERE type = ANY(%(financial)s) AND result = ANY(%(counted)s)), 0)::int8,
       coalesce(sum(txns) FILTER (WHERE type <> ALL(%(financial)s) AND result = ANY(%(counted)s)), 0)::int8,
       coalesce(sum(fee) FILTER (WHERE result = ANY(%(counted)s)), 0),
       coalesce(sum(txns) FILTER (WHERE result = ANY(%(counted)s) AND fee > 0), 0)::int8
FROM txn_daily
WHERE bucket >= %(lo)s AND bucket < %(hi)s
GROUP BY device_id;

-- Substitution volumes per unit (outlet) and local day in [lo, hi): the counted
-- transactions of the devices given (id, unit, on-site or not, commissioned,
-- decommissioned), summed per unit, day and commissioning dates (the engine keeps a group
-- only on the days its devices are in the fleet): financial, non-financial, on-site
-- financial. A unit-day without a transaction row of its devices has no row.
-- name: txn_unit_days
SELECT d.unit, t.bucket, d.commissioned, d.decommissioned,
       coalesce(sum(t.txns) FILTER (WHERE t.type = ANY(%(financial)s) AND t.result = ANY(%(counted)s)), 0)::int8,
       coalesce(sum(t.txns) FILTER (WHERE t.type <> ALL(%(financial)s) AND t.result = ANY(%(counted)s)), 0)::int8,
       coalesce(sum(t.txns) FILTER (WHERE d.on_site AND t.type = ANY(%(financial)s)
                                      AND t.result = ANY(%(counted)s)), 0)::int8
FROM txn_daily t
JOIN unnest(%(ids)s::text[], %(units)s::text[], %(on_site)s::bool[], %(commissioned)s::date[],
            %(decommissioned)s::date[]) AS d (id, unit, on_site, commissioned, decommissioned)
  ON d.id = t.device_id
WHERE t.bucket >= %(lo)s AND t.bucket < %(hi)s
GROUP BY d.unit, t.bucket, d.commissioned, d.decommissioned;
