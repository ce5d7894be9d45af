-- Remote commands (docs/commands.md): what an operator asked a device to do, and what came
-- of it.
--
-- commands: one row per command, its current state (queued -> sent -> accepted -> done |
-- failed | rejected | expired) and its final result. The id is the command id on the wire
-- (the device keeps recent ids so that a redelivered command runs once).
-- command_events: the state history, append-only (one row per transition or late answer).
-- command_journal_chunks: the chunks of an electronic journal / log upload while it is under
-- way (deleted once reassembled); command_journals: the reassembled, checksum-verified file.
CREATE TABLE commands (
    id           text        PRIMARY KEY CHECK (id ~ '^[A-Za-z0-9_.-]{1,64}$'),
    device_id    text        NOT NULL REFERENCES devices (id),
    kind         text        NOT NULL
                             CHECK (kind IN ('restart', 'out_of_service', 'in_service',
                                             'refresh', 'journal')),
    params       jsonb       NOT NULL DEFAULT '{}',
    state        text        NOT NULL
                             CHECK (state IN ('queued', 'sent', 'accepted', 'done', 'failed',
                                              'rejected', 'expired')),
    requested_by text        NOT NULL,
    surface      text        NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT clock_timestamp(),
    expires_at   timestamptz NOT NULL,
    updated_at   timestamptz NOT NULL DEFAULT clock_timestamp(),
    finished_at  timestamptz,
    reason       text,
    result       jsonb
);
CREATE INDEX commands_device ON commands (device_id, created_at);
CREATE INDEX commands_created ON commands (created_at);
CREATE INDEX commands_open ON commands (expires_at) WHERE state IN ('queued', 'sent', 'accepted');

CREATE TABLE command_events (
    id         bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    command_id text        NOT NULL REFERENCES commands (id),
    at         timestamptz NOT NULL DEFAULT clock_timestamp(),
    state      text        NOT NULL,
    source     text        NOT NULL,              -- server, device, expiry
    detail     jsonb
);
CREATE INDEX command_events_command ON command_events (command_id, id);

CREATE TABLE command_journal_chunks (
    command_id text    NOT NULL REFERENCES commands (id),
    seq        integer NOT NULL CHECK (seq >= 0),
    data       bytea   NOT NULL,
    PRIMARY KEY (command_id, seq)
);

CREATE TABLE command_journals (
    command_id text        PRIMARY KEY REFERENCES commands (id),
    bytes      bigint      NOT NULL,
    sha256     text        NOT NULL,
    data       bytea       NOT NULL,
    stored_at  timestamptz NOT NULL DEFAULT clock_timestamp()
);

-- An uploaded journal holds customer transactions: the reader login (serve, bulletins,
-- Grafana) may see that a journal exists and its size and checksum, never its content;
-- the writer (`atmfleet command listen`, `atmfleet command journal`) reads and writes it.
DO $$
DECLARE
    reader text := current_database() || '_reader';
BEGIN
    EXECUTE format('REVOKE ALL ON command_journal_chunks FROM %I', reader);
    EXECUTE format('REVOKE ALL ON command_journals FROM %I', reader);
    EXECUTE format('GRANT SELECT (command_id, bytes, sha256, stored_at) ON command_journals TO %I',
                   reader);
END
$$;
