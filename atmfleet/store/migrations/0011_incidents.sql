-- Incidents (故障工单): work orders the incident engine opens when a device is down inside
-- its service window, and the operators move through their lifecycle (docs/incidents.md).
--
-- maintainers: the vendors' regional service teams (inventory: `maintainers:` in the
-- inventory file, loaded by `atmfleet db load-inventory`). region is a sub-branch id, or
-- '*' for the vendor's team everywhere else.
--
-- incidents: one row per outage. started_at is when the device became unavailable,
-- opened_at when the engine opened the incident (after the debounce); the other *_at
-- columns are the lifecycle's timestamps. suspended_at is set while the incident is
-- suspended (挂起); the suspensions themselves are the suspended/resumed rows of
-- incident_events. version grows by one at every change (optimistic concurrency: an
-- action names the version it saw). cycle grows when a closed or restored incident is
-- reopened (a repeat fault, per the rules), so its SLA marks start afresh.
--
-- incident_events: the append-only history (a trigger refuses UPDATE, DELETE and
-- TRUNCATE, as for audit_log) and the notifications queue: a row whose recipients are not
-- empty is to be delivered to each recipient key (`<role>:<id>`, docs/incidents.md). A row
-- about exactly one incident has incident_id set; an aggregated notification (one per
-- recipient for a burst, e.g. a branch power cut) has incident_id NULL and lists the
-- incidents in incident_ids. Every row lists its incidents in incident_ids.
--
-- incident_sla: the SLA marks, at most one per incident, cycle, deadline, kind and level
-- (the primary key makes the engine's warnings, breaches and escalations idempotent across
-- restarts and concurrent engines); event_id is the notification row that announced it.
--
-- incident_engine: the engine's durable state (one row per engine name): how far it has
-- followed the store, so a restarted engine resumes where it stopped.
CREATE TABLE maintainers (
    id       text PRIMARY KEY CHECK (id ~ '^[A-Za-z0-9_.-]{1,64}$'),
    vendor   text NOT NULL,
    region   text NOT NULL DEFAULT '*',
    name     text NOT NULL,
    phone    text,
    email    text,
    wecom    text,                 -- WeCom user id, if any
    manager  text,                 -- the vendor's manager for escalations (name)
    manager_phone text,
    manager_email text,
    UNIQUE (vendor, region)
);

CREATE TABLE incidents (
    id              bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    device_id       text        NOT NULL,
    subbranch_id    text        NOT NULL,
    branch_id       text        NOT NULL,
    vendor          text        NOT NULL,
    model           text        NOT NULL,
    maintainer_id   text,
    class           text        NOT NULL
                                CHECK (class IN ('component', 'cash', 'network', 'power',
                                                 'software')),
    cause           text        NOT NULL,  -- the timeline label that opened it (fault, ...)
    component       text,                  -- the XFS component at fault, when known
    state           text        NOT NULL DEFAULT 'open'
                                CHECK (state IN ('open', 'acknowledged', 'dispatched',
                                                 'on_site', 'restored', 'closed')),
    suspended_at    timestamptz,           -- set while suspended
    started_at      timestamptz NOT NULL,  -- outage start
    opened_at       timestamptz NOT NULL,
    acknowledged_at timestamptz,
    dispatched_at   timestamptz,
    eta             timestamptz,
    on_site_at      timestamptz,
    restored_at     timestamptz,
    closed_at       timestamptz,
    close_cause     text,
    remarks         text,
    repeat_of       bigint      REFERENCES incidents (id),
    cycle           integer     NOT NULL DEFAULT 0,
    cycle_at        timestamptz NOT NULL,  -- when the current cycle opened (repair clock)
    contract        text,                  -- the SLA contract applied (rules file name)
    last_down_at    timestamptz,           -- last time the engine saw the device down
    version         integer     NOT NULL DEFAULT 1,
    updated_at      timestamptz NOT NULL DEFAULT clock_timestamp(),
    CHECK (opened_at >= started_at)
);
-- One outage at a time per device: at most one incident not yet restored or closed.
CREATE UNIQUE INDEX incidents_one_active ON incidents (device_id)
    WHERE state NOT IN ('restored', 'closed');
CREATE INDEX incidents_device ON incidents (device_id, started_at DESC);
CREATE INDEX incidents_state ON incidents (state) WHERE state <> 'closed';
CREATE INDEX incidents_opened ON incidents (opened_at);

CREATE TABLE incident_events (
    id           bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    incident_id  bigint      REFERENCES incidents (id),
    incident_ids bigint[]    NOT NULL,
    at           timestamptz NOT NULL DEFAULT clock_timestamp(),
    kind         text        NOT NULL,
    actor        text        NOT NULL,  -- a username, 'system', or 'device:<id>'
    from_state   text,
    to_state     text,
    detail       jsonb       NOT NULL DEFAULT '{}',
    recipients   text[]      NOT NULL DEFAULT '{}'
);
CREATE INDEX incident_events_incident ON incident_events (incident_id, id);
CREATE INDEX incident_events_incidents ON incident_events USING gin (incident_ids);
CREATE INDEX incident_events_notify ON incident_events (id) WHERE recipients <> '{}';

CREATE FUNCTION incident_events_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'incident_events is append-only (% refused)', TG_OP
        USING ERRCODE = 'insufficient_privilege';
END
$$;
CREATE TRIGGER incident_events_append_only
    BEFORE UPDATE OR DELETE OR TRUNCATE ON incident_events
    FOR EACH STATEMENT EXECUTE FUNCTION incident_events_append_only();

CREATE TABLE incident_sla (
    incident_id bigint      NOT NULL REFERENCES incidents (id),
    cycle       integer     NOT NULL,
    deadline    text        NOT NULL CHECK (deadline IN ('response', 'repair')),
    kind        text        NOT NULL CHECK (kind IN ('warning', 'breach', 'escalation')),
    level       integer     NOT NULL DEFAULT 0,
    due_at      timestamptz NOT NULL,  -- when the mark fell due (warning, deadline, level)
    at          timestamptz NOT NULL DEFAULT clock_timestamp(),
    event_id    bigint      REFERENCES incident_events (id),
    PRIMARY KEY (incident_id, cycle, deadline, kind, level)
);

CREATE TABLE incident_engine (
    name        text        PRIMARY KEY,
    cursor_at   timestamptz,           -- store data received up to here has been followed
    last_pass_at timestamptz,
    passes      bigint      NOT NULL DEFAULT 0,
    updated_at  timestamptz NOT NULL DEFAULT clock_timestamp()
);

-- The maintainers are inventory: like devices, the writer (collector) may not change them.
DO $$
BEGIN
    EXECUTE format('REVOKE INSERT, UPDATE, DELETE ON %I.maintainers FROM %I',
                   current_schema(), current_database() || '_writer');
END
$$;
