-- The web console's server-side state (web/): logins, API tokens and failed logins.
--
-- web_sessions: one row per logged-in browser. The cookie holds a random value; only its
-- SHA-256 is stored, so a copy of this table lets nobody in. A session ends at expires_at
-- (sliding: renewed on use up to the configured lifetime), at logout, or when its user is
-- disabled (ON DELETE CASCADE for a removed user). csrf_token is the synchronizer token
-- every write through this session must carry.
--
-- api_tokens: bearer tokens for integrations (the bank's ticketing system...), issued by
-- `atmfleet users token`. The token is shown once; only its SHA-256 is kept (a token is
-- 32 random bytes, so a fast hash is enough: there is nothing to guess). A token acts as
-- its user, with that user's role and scope.
--
-- login_failures: failed password logins per (username, client address), the input of the
-- login rate limit; a successful login clears that pair's rows.
CREATE TABLE web_sessions (
    id_hash    text        PRIMARY KEY,
    username   text        NOT NULL REFERENCES users (username) ON DELETE CASCADE,
    csrf_token text        NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    last_seen  timestamptz NOT NULL DEFAULT now(),
    expires_at timestamptz NOT NULL,
    ip         text,
    user_agent text
);
CREATE INDEX web_sessions_username ON web_sessions (username);
CREATE INDEX web_sessions_expires_at ON web_sessions (expires_at);

CREATE TABLE api_tokens (
    id         bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    username   text        NOT NULL REFERENCES users (username) ON DELETE CASCADE,
    name       text        NOT NULL,
    prefix     text        NOT NULL,             -- the token's first characters, for lists
    token_hash text        NOT NULL UNIQUE,
    created_at timestamptz NOT NULL DEFAULT now(),
    expires_at timestamptz,
    last_used  timestamptz,
    revoked_at timestamptz
);
CREATE INDEX api_tokens_username ON api_tokens (username);

CREATE TABLE login_failures (
    username text        NOT NULL,
    ip       text        NOT NULL,
    at       timestamptz NOT NULL DEFAULT clock_timestamp()
);
CREATE INDEX login_failures_key ON login_failures (username, ip, at);

-- Devices by branch and sub-branch for the fleet wall's aggregation (devices.branch has
-- an index; this covers the filters the wall offers).
CREATE INDEX devices_type_vendor_idx ON devices (type, vendor);
