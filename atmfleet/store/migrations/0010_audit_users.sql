-- Who may act, and what they did.
--
-- users: the people (and integrations) that act on atmfleet: the web console's logins and
-- the identity the CLI acts as (ATMFLEET_USER). role is viewer < operator < admin; scope
-- is the part of the organisation they may see and act on: the whole fleet, one
-- sub-branch or one branch. password_hash is an argon2 hash (NULL: no password login,
-- e.g. an account used only through the CLI or API tokens).
--
-- audit_log: every write any surface makes (CLI, web, API, broker tooling, the engines):
-- who, when, through which surface, what (action and object), before -> after. Rows are
-- never updated or deleted: a trigger refuses it for every role, the owner's included,
-- short of dropping the trigger, which itself needs the owner.
CREATE TABLE users (
    username      text        PRIMARY KEY CHECK (username ~ '^[A-Za-z0-9_.@-]{1,64}$'),
    display_name  text        NOT NULL DEFAULT '',
    role          text        NOT NULL CHECK (role IN ('viewer', 'operator', 'admin')),
    scope_kind    text        NOT NULL DEFAULT 'fleet'
                              CHECK (scope_kind IN ('fleet', 'subbranch', 'branch')),
    scope_id      text,
    password_hash text,
    disabled      boolean     NOT NULL DEFAULT false,
    created_at    timestamptz NOT NULL DEFAULT now(),
    updated_at    timestamptz NOT NULL DEFAULT now(),
    CHECK ((scope_kind = 'fleet') = (scope_id IS NULL))
);

CREATE TABLE audit_log (
    id          bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    at          timestamptz NOT NULL DEFAULT clock_timestamp(),
    actor       text        NOT NULL,             -- a username, 'system', or 'device:<id>'
    surface     text        NOT NULL,             -- cli, web, api, engine, ...
    action      text        NOT NULL,             -- e.g. incident.ack, stop.approve, user.add
    object_type text        NOT NULL,
    object_id   text,
    before      jsonb,
    after       jsonb,
    detail      text
);
CREATE INDEX audit_log_at ON audit_log (at);
CREATE INDEX audit_log_object ON audit_log (object_type, object_id, at);
CREATE INDEX audit_log_actor ON audit_log (actor, at);

CREATE FUNCTION audit_log_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'audit_log is append-only (% refused)', TG_OP
        USING ERRCODE = 'insufficient_privilege';
END
$$;
CREATE TRIGGER audit_log_append_only BEFORE UPDATE OR DELETE OR TRUNCATE ON audit_log
    FOR EACH STATEMENT EXECUTE FUNCTION audit_log_append_only();
