-- 0001: the registry (branches, their devices, metric definitions per device kind) and its read-only login role.
-- Applied by registry.migrate, once, in one transaction. Never edit an applied file: add the next version.
-- Identifier patterns match devicepipe.registry (ID, KIND, METRIC, REGION); time zones are checked there, with
-- Python's zoneinfo, the database the reports compute local days with.

CREATE TABLE branches (
    branch_id   text PRIMARY KEY CONSTRAINT branches_id_format CHECK (branch_id ~ '^[A-Za-z0-9._:-]{1,128}$'),
    name        text NOT NULL CONSTRAINT branches_name_length CHECK (length(name) BETWEEN 1 AND 200),
    home_region text NOT NULL CONSTRAINT branches_region_format CHECK (home_region ~ '^[a-z]{2}(-[a-z]+)+-[0-9]+$'),
    time_zone   text NOT NULL CONSTRAINT branches_time_zone_length CHECK (length(time_zone) BETWEEN 1 AND 64),
    recipients  text[] NOT NULL DEFAULT '{}'
);
COMMENT ON TABLE branches IS 'Branches: reports are per branch and per day in the branch''s time zone (IANA name)';

CREATE TABLE devices (
    device_id    text PRIMARY KEY CONSTRAINT devices_id_format CHECK (device_id ~ '^[A-Za-z0-9._:-]{1,128}$'),
    branch_id    text NOT NULL CONSTRAINT devices_branch_id_fkey REFERENCES branches (branch_id) ON UPDATE CASCADE,
    kind         text NOT NULL CONSTRAINT devices_kind_format CHECK (kind ~ '^[a-z][a-z0-9_-]{0,62}$'),
    description  text NOT NULL DEFAULT '',
    installed_on date,
    retired_on   date,
    CONSTRAINT devices_retired_after_installed CHECK (retired_on >= installed_on)
);
-- Branch reports and `registry list devices --branch` select a branch's devices.
CREATE INDEX devices_branch_id_idx ON devices (branch_id);
COMMENT ON COLUMN devices.retired_on IS 'Last day the device is expected to report; NULL while in service';

CREATE TABLE metric_definitions (
    kind   text NOT NULL CONSTRAINT metric_definitions_kind_format CHECK (kind ~ '^[a-z][a-z0-9_-]{0,62}$'),
    -- An SQL identifier, so report SQL can navigate metrics.<name> without quoting.
    metric text NOT NULL CONSTRAINT metric_definitions_metric_format CHECK (metric ~ '^[a-z][a-z0-9_]{0,62}$'),
    unit   text NOT NULL DEFAULT '',
    low    double precision,
    high   double precision,
    PRIMARY KEY (kind, metric),
    CONSTRAINT metric_definitions_range CHECK (low <= high)
);
COMMENT ON TABLE metric_definitions IS 'Per device kind: a metric''s unit and the range outside which a reading is out of range';

-- The functions' login: read-only. Roles belong to the whole cluster, so another database (or a concurrent
-- migration of one) may have made it already. On Aurora it logs in with IAM tokens only: the rds_iam role
-- (https://docs.aws.amazon.com/AmazonRDS/latest/AuroraUserGuide/UsingWithRDS.IAMDBAuth.DBAccounts.html),
-- which plain PostgreSQL lacks, so the same file runs locally.
DO $$
BEGIN
    BEGIN
        CREATE ROLE devicepipe_reader LOGIN;
    EXCEPTION WHEN duplicate_object OR unique_violation THEN
        NULL;
    END;
    IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'rds_iam') THEN
        GRANT rds_iam TO devicepipe_reader;
    END IF;
    -- Explicit, in case CONNECT was revoked from PUBLIC (a hardened cluster).
    EXECUTE format('GRANT CONNECT ON DATABASE %I TO devicepipe_reader', current_database());
END
$$;
GRANT USAGE ON SCHEMA public TO devicepipe_reader;
GRANT SELECT ON branches, devices, metric_definitions TO devicepipe_reader;
-- Tables later migrations create (as the same migrating user) are readable too.
ALTER DEFAULT PRIVILEGES IN SCHEMA public GRANT SELECT ON TABLES TO devicepipe_reader;
