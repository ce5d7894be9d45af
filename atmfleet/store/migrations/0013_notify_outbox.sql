-- Notifications (notify/): a durable outbox, its counters, and the notifier's cursors.
--
-- notify_outbox: one row per message for one target (a channel and, for e-mail or a
-- mention, its addresses). A row is 'pending' until it is sent ('sent') or until it has
-- failed max_attempts times ('failed': given up, logged, counted and listed by
-- `atmfleet notify status`). next_attempt_at is when the dispatcher may try it next
-- (exponential backoff after a failure, the end of a rate-limit or aggregation window).
-- Pending rows of one group_key that are due together are sent as one message (a burst
-- becomes one message per recipient). dedup_key makes a re-run (a timer that restarts,
-- a redelivered webhook) enqueue nothing twice.
CREATE TABLE notify_outbox (
    id              bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    created_at      timestamptz NOT NULL DEFAULT now(),
    source          text        NOT NULL,            -- alertmanager | incident | bulletin | test
    channel         text        NOT NULL,            -- a channel name of the notify config
    group_key       text        NOT NULL,            -- channel + target: what aggregates
    addresses       text[]      NOT NULL DEFAULT '{}',  -- e-mail addresses, mobiles to mention
    recipient       text,                            -- the recipient key it was meant for
    title           text        NOT NULL,
    body            text        NOT NULL,            -- plain text / markdown for chats
    html            text,                            -- e-mail HTML body
    attachments     jsonb       NOT NULL DEFAULT '[]',  -- [{name, content_type, data (base64)}]
    dedup_key       text        UNIQUE,
    status          text        NOT NULL DEFAULT 'pending'
                                CHECK (status IN ('pending', 'sent', 'failed')),
    attempts        integer     NOT NULL DEFAULT 0,
    next_attempt_at timestamptz NOT NULL DEFAULT now(),
    last_attempt_at timestamptz,
    last_error      text,
    sent_at         timestamptz,
    delivery_id     bigint                           -- the rows sent as one message share it
);
CREATE INDEX notify_outbox_due ON notify_outbox (next_attempt_at) WHERE status = 'pending';
CREATE INDEX notify_outbox_sent ON notify_outbox (channel, sent_at) WHERE status = 'sent';
CREATE INDEX notify_outbox_failed ON notify_outbox (channel) WHERE status = 'failed';

-- One row per message actually put on a channel (successful sends), for the rate limits:
-- how many messages a channel sent within its window.
CREATE TABLE notify_deliveries (
    id       bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    channel  text        NOT NULL,
    group_key text       NOT NULL,
    at       timestamptz NOT NULL DEFAULT now(),
    rows     integer     NOT NULL
);
CREATE INDEX notify_deliveries_channel_at ON notify_deliveries (channel, at);
CREATE INDEX notify_deliveries_group_at ON notify_deliveries (group_key, at);

-- Monotonic counters per channel (the metrics atmfleet_notify_*_total): messages sent,
-- attempts that failed and were retried, deliveries given up.
CREATE TABLE notify_counters (
    channel text   PRIMARY KEY,
    sent    bigint NOT NULL DEFAULT 0,
    retried bigint NOT NULL DEFAULT 0,
    failed  bigint NOT NULL DEFAULT 0
);

-- Where a notifier has read up to in a source it tails (incident_events: its last id).
CREATE TABLE notify_cursors (
    name       text        PRIMARY KEY,
    position   bigint      NOT NULL,
    updated_at timestamptz NOT NULL DEFAULT now()
);
