-- atmfleet_grafana: the read-only role Grafana's PostgreSQL data source uses (through a
-- login role that is a member of it: see docs/dashboards.md). SELECT on every table and
-- view of the schema, now and created by later migrations; nothing else.
--
-- Roles are cluster-wide and several databases of one cluster may migrate at once: the
-- role is created only if missing, and a concurrent creation by another database's
-- migration is not an error.
DO $$
BEGIN
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'atmfleet_grafana') THEN
        CREATE ROLE atmfleet_grafana NOLOGIN;
    END IF;
EXCEPTION WHEN duplicate_object OR unique_violation THEN
    NULL;
END
$$;

DO $$
BEGIN
    EXECUTE format('GRANT CONNECT ON DATABASE %I TO atmfleet_grafana', current_database());
    EXECUTE format('GRANT USAGE ON SCHEMA %I TO atmfleet_grafana', current_schema());
    EXECUTE format('GRANT SELECT ON ALL TABLES IN SCHEMA %I TO atmfleet_grafana',
                   current_schema());
    EXECUTE format('ALTER DEFAULT PRIVILEGES IN SCHEMA %I GRANT SELECT ON TABLES TO atmfleet_grafana',
                   current_schema());
END
$$;
