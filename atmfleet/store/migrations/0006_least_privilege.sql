-- Least-privilege roles (docs/security.md), named after the database, so that each
-- atmfleet database of a cluster has its own (roles are cluster-wide): for a database
-- "atmfleet", atmfleet_owner, atmfleet_writer and atmfleet_reader. All three are NOLOGIN
-- groups; `atmfleet db roles` prints the commands that create the logins in them.
--
--   owner   migrations and inventory loads: every privilege on the schema's objects.
--   writer  the collector (and `counters import`, `db prune`): reads everything, inserts,
--           updates and deletes telemetry rows; inventory tables read-only; no DDL.
--           Temporary tables (the collector stages each batch in them).
--   reader  serve, bulletins, Grafana: SELECT only. No temporary tables.
--
-- PUBLIC loses CONNECT and TEMPORARY on this database and CREATE on its schema: only the
-- roles above (and atmfleet_grafana, 0005) connect. Other databases of the cluster keep
-- PostgreSQL's defaults unless the administrator revokes them (`atmfleet db roles` prints
-- how).
--
-- The store's serialisation lock (runs.py) is a row lock on run_locks, which needs UPDATE
-- on that table: only the writer and the owner have it, so no reader can stall ingestion
-- (an advisory lock can be taken by any role that can connect).
CREATE TABLE run_locks (
    bucket integer PRIMARY KEY CHECK (bucket >= 0 AND bucket < 256)
);
INSERT INTO run_locks (bucket) SELECT generate_series(0, 255);

DO $$
DECLARE
    db     text := current_database();
    schema text := current_schema();
    owner  text := current_database() || '_owner';
    writer text := current_database() || '_writer';
    reader text := current_database() || '_reader';
    role   text;
BEGIN
    FOREACH role IN ARRAY ARRAY[owner, writer, reader] LOOP
        BEGIN
            IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = role) THEN
                EXECUTE format('CREATE ROLE %I NOLOGIN', role);
            END IF;
        EXCEPTION WHEN duplicate_object OR unique_violation THEN
            NULL;  -- created at the same moment by a concurrent migration
        END;
    END LOOP;

    EXECUTE format('REVOKE ALL ON DATABASE %I FROM PUBLIC', db);
    EXECUTE format('REVOKE CREATE ON SCHEMA %I FROM PUBLIC', schema);
    EXECUTE format('GRANT CONNECT, TEMPORARY, CREATE ON DATABASE %I TO %I', db, owner);
    EXECUTE format('GRANT CONNECT, TEMPORARY ON DATABASE %I TO %I', db, writer);
    EXECUTE format('GRANT CONNECT ON DATABASE %I TO %I', db, reader);
    EXECUTE format('GRANT CONNECT ON DATABASE %I TO atmfleet_grafana', db);

    EXECUTE format('GRANT USAGE, CREATE ON SCHEMA %I TO %I', schema, owner);
    EXECUTE format('GRANT USAGE ON SCHEMA %I TO %I, %I', schema, writer, reader);

    EXECUTE format('GRANT ALL ON ALL TABLES IN SCHEMA %I TO %I', schema, owner);
    EXECUTE format('GRANT ALL ON ALL SEQUENCES IN SCHEMA %I TO %I', schema, owner);
    EXECUTE format('GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA %I TO %I',
                   schema, writer);
    EXECUTE format('REVOKE INSERT, UPDATE, DELETE ON %I.subbranches, %I.branches, %I.devices FROM %I',
                   schema, schema, schema, writer);
    EXECUTE format('GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA %I TO %I', schema, writer);
    EXECUTE format('GRANT SELECT ON ALL TABLES IN SCHEMA %I TO %I', schema, reader);

    -- Tables later migrations create (by the role that runs them).
    EXECUTE format('ALTER DEFAULT PRIVILEGES IN SCHEMA %I GRANT ALL ON TABLES TO %I',
                   schema, owner);
    EXECUTE format('ALTER DEFAULT PRIVILEGES IN SCHEMA %I GRANT ALL ON SEQUENCES TO %I',
                   schema, owner);
    EXECUTE format('ALTER DEFAULT PRIVILEGES IN SCHEMA %I GRANT SELECT, INSERT, UPDATE, DELETE'
                   ' ON TABLES TO %I', schema, writer);
    EXECUTE format('ALTER DEFAULT PRIVILEGES IN SCHEMA %I GRANT USAGE, SELECT ON SEQUENCES TO %I',
                   schema, writer);
    EXECUTE format('ALTER DEFAULT PRIVILEGES IN SCHEMA %I GRANT SELECT ON TABLES TO %I',
                   schema, reader);
END
$$;
