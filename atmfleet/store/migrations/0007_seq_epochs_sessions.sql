-- Sequence accounting per boot epoch, and lost broker sessions per collector run.
--
-- A device's seq is read as epoch = seq >> 32 (the protocol's boot_count x 2^32 + counter
-- scheme; a device with a persisted counter below 2^32 stays in epoch 0). Gaps are counted
-- inside an epoch only: the first number seen in an epoch is its start, so a reboot (a new
-- epoch) is not loss, and max_seq - min_seq of one epoch stays below 2^32 (no bigint
-- overflow, whatever the seq values). Totals over epochs are numeric.
ALTER TABLE device_sequences ADD COLUMN epoch bigint NOT NULL DEFAULT 0;
ALTER TABLE device_sequences DROP CONSTRAINT device_sequences_pkey;

-- Rows within one epoch keep their counts; a row spanning epochs is recounted from the
-- stored messages of its device.
CREATE TEMP TABLE _spanning ON COMMIT DROP AS
SELECT device_id FROM device_sequences WHERE (min_seq >> 32) <> (max_seq >> 32);
UPDATE device_sequences SET epoch = min_seq >> 32
WHERE device_id NOT IN (SELECT device_id FROM _spanning);
DELETE FROM device_sequences WHERE device_id IN (SELECT device_id FROM _spanning);
INSERT INTO device_sequences (device_id, epoch, min_seq, max_seq, received, updated_at)
SELECT device_id, seq >> 32, min(seq), max(seq), count(*), now()
FROM (
    SELECT device_id, seq FROM state_samples WHERE device_id IN (SELECT device_id FROM _spanning)
    UNION ALL
    SELECT device_id, seq FROM events WHERE device_id IN (SELECT device_id FROM _spanning)
    UNION ALL
    SELECT device_id, seq FROM transactions WHERE device_id IN (SELECT device_id FROM _spanning)
) m
GROUP BY device_id, seq >> 32;

ALTER TABLE device_sequences ALTER COLUMN epoch DROP DEFAULT;
ALTER TABLE device_sequences ADD PRIMARY KEY (device_id, epoch);
ALTER TABLE device_sequences
    ADD CONSTRAINT device_sequences_one_epoch
    CHECK (min_seq >> 32 = epoch AND max_seq >> 32 = epoch AND min_seq <= max_seq);

DROP VIEW sequence_gaps;

-- One row per device and epoch.
CREATE VIEW sequence_gap_epochs AS
SELECT device_id,
       epoch,
       min_seq,
       max_seq,
       received,
       greatest(0, max_seq - min_seq + 1 - received) AS missing,
       updated_at
FROM device_sequences;

-- One row per device (the columns it always had, plus how many epochs were seen).
CREATE VIEW sequence_gaps AS
SELECT device_id,
       min(min_seq) AS min_seq,
       max(max_seq) AS max_seq,
       sum(received) AS received,
       sum(missing) AS missing,
       count(*) AS epochs,
       max(updated_at) AS updated_at
FROM sequence_gap_epochs
GROUP BY device_id;

-- A reconnect that found the broker had lost the collector's session (its backlog may
-- have been thrown away).
ALTER TABLE collector_runs
    ADD COLUMN sessions_lost integer NOT NULL DEFAULT 0,
    ADD COLUMN last_session_lost_at timestamptz;
