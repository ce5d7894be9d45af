-- The planned-stop register (计划停机登记, docs/stops.md): stops of one device or of a whole
-- branch (every device whose branch it is), registered ahead or, within
-- planned_stops.max_retroactive_days of the rules file, after the fact. Only an approved
-- stop is taken out of S (as planned maintenance, under the same daily cap as the
-- device-declared planned state); a requested, rejected or cancelled one changes nothing.
--
-- status: requested -> approved | rejected | cancelled; approved -> cancelled. A row is
-- never deleted: a cancelled stop stays, with who cancelled it and when. Every change is
-- also in audit_log (before -> after), in the same transaction. version counts the
-- changes (optimistic concurrency: two people acting on one stop at once, one wins).
--
-- No foreign key to devices/branches: the inventory is reloaded as a whole; the service
-- checks the device or branch against the inventory when a stop is added.
CREATE TABLE planned_stops (
    id            bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    device_id     text,
    branch_id     text,
    starts_at     timestamptz NOT NULL,
    ends_at       timestamptz NOT NULL,
    reason        text        NOT NULL CHECK (btrim(reason) <> ''),
    requester     text        NOT NULL,
    approver      text,                                 -- who approved (or rejected) it
    status        text        NOT NULL DEFAULT 'requested'
                              CHECK (status IN ('requested', 'approved', 'rejected', 'cancelled')),
    retroactive   boolean     NOT NULL DEFAULT false,  -- starts_at was past when added
    created_at    timestamptz NOT NULL DEFAULT now(),
    updated_at    timestamptz NOT NULL DEFAULT now(),
    approved_at   timestamptz,
    rejected_at   timestamptz,
    cancelled_at  timestamptz,
    cancelled_by  text,
    remarks       text        NOT NULL DEFAULT '',
    version       integer     NOT NULL DEFAULT 1,
    CHECK ((device_id IS NULL) <> (branch_id IS NULL)),
    CHECK (ends_at > starts_at),
    CHECK ((status = 'approved') <= (approver IS NOT NULL AND approved_at IS NOT NULL)),
    CHECK ((status = 'cancelled') <= (cancelled_at IS NOT NULL)),
    CHECK (approver IS NULL OR approver <> requester)
);
CREATE INDEX planned_stops_device ON planned_stops (device_id, starts_at) WHERE device_id IS NOT NULL;
CREATE INDEX planned_stops_branch ON planned_stops (branch_id, starts_at) WHERE branch_id IS NOT NULL;
CREATE INDEX planned_stops_approved ON planned_stops (ends_at, starts_at) WHERE status = 'approved';
