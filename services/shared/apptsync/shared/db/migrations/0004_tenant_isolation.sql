-- Tenant isolation (invariant 6): row-level security on every table with a tenant_id, a service role
-- that does not own the tables, and narrow SECURITY DEFINER functions for the few operations that
-- legitimately span tenants.
--
-- Every tenant-scoped transaction sets the tenant first: SELECT set_config('app.tenant_id', $1, true)
-- (SET LOCAL: it ends with the transaction, so a pooled connection cannot carry it into the next
-- one). Without it the policies compare tenant_id with NULL: no row is visible and every write is
-- refused (fails closed). The migration runs as the tables' owner (APPTSYNC_DATABASE_MIGRATION_URL);
-- the services log in as members of apptsync_service (deployments create those login roles).

DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'apptsync_service') THEN
        CREATE ROLE apptsync_service NOLOGIN;
    END IF;
EXCEPTION WHEN duplicate_object OR unique_violation THEN
    NULL;  -- roles are per server: the migration of another database created it meanwhile
END
$$;

-- The tenant of the current transaction; NULL when none was set (or it was set to '').
CREATE FUNCTION apptsync_current_tenant() RETURNS uuid
    LANGUAGE sql STABLE PARALLEL SAFE
    AS $$ SELECT NULLIF(current_setting('app.tenant_id', true), '')::uuid $$;

DO $$
DECLARE
    tenant_table text;
BEGIN
    FOREACH tenant_table IN ARRAY ARRAY['connections', 'import_jobs', 'import_job_pages',
                                        'import_job_dead_letters', 'appointments', 'contacts'] LOOP
        EXECUTE format('ALTER TABLE %I ENABLE ROW LEVEL SECURITY', tenant_table);
        -- FORCE: the owner is bound by the policies too (only superusers and BYPASSRLS roles are not).
        EXECUTE format('ALTER TABLE %I FORCE ROW LEVEL SECURITY', tenant_table);
        EXECUTE format(
            'CREATE POLICY tenant_isolation ON %I USING (tenant_id = apptsync_current_tenant()) '
            'WITH CHECK (tenant_id = apptsync_current_tenant())', tenant_table);
    END LOOP;
    -- The cross-tenant functions below run as the owner (SECURITY DEFINER). No service logs in as
    -- the owner; it reaches these three tables only through those functions (and migrations).
    FOREACH tenant_table IN ARRAY ARRAY['connections', 'import_jobs', 'import_job_pages'] LOOP
        EXECUTE format('CREATE POLICY owner_functions ON %I TO %I USING (true) WITH CHECK (true)',
                       tenant_table, current_user);
    END LOOP;
END
$$;

GRANT USAGE ON SCHEMA public TO apptsync_service;
GRANT SELECT, INSERT, UPDATE, DELETE
    ON connections, import_jobs, import_job_pages, import_job_dead_letters, appointments, contacts
    TO apptsync_service;
GRANT SELECT ON contact_revenue TO apptsync_service;
GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA public TO apptsync_service;
GRANT EXECUTE ON FUNCTION apptsync_current_tenant() TO apptsync_service;

-- ---------------------------------------------------------------- cross-tenant operations (fetcher)

-- Claims the oldest queued job of any tenant, or a running one whose lease expired.
CREATE FUNCTION apptsync_claim_job(p_worker_id text, p_now timestamptz, p_lease_seconds double precision)
    RETURNS SETOF import_jobs
    LANGUAGE sql SECURITY DEFINER SET search_path = public, pg_temp
    AS $$
        UPDATE import_jobs SET state = 'RUNNING', lease_owner = p_worker_id,
            lease_expires_at = p_now + make_interval(secs => p_lease_seconds),
            started_at = COALESCE(started_at, p_now), updated_at = p_now
        WHERE job_id = (
            SELECT j.job_id FROM import_jobs AS j
            WHERE j.state = 'QUEUED' OR (j.state = 'RUNNING' AND j.lease_expires_at < p_now)
            ORDER BY j.created_at
            FOR UPDATE SKIP LOCKED
            LIMIT 1)
        RETURNING *
    $$;

-- The functions below act on one job, and only for the worker that holds its lease.
CREATE FUNCTION apptsync_renew_lease(p_job_id uuid, p_worker_id text, p_now timestamptz,
                                     p_lease_seconds double precision)
    RETURNS TABLE (cancel_requested boolean)
    LANGUAGE sql SECURITY DEFINER SET search_path = public, pg_temp
    AS $$
        UPDATE import_jobs AS j SET lease_expires_at = p_now + make_interval(secs => p_lease_seconds),
            updated_at = p_now
        WHERE j.job_id = p_job_id AND j.lease_owner = p_worker_id AND j.state = 'RUNNING'
        RETURNING j.cancel_requested
    $$;

CREATE FUNCTION apptsync_save_progress(p_job_id uuid, p_worker_id text, p_cursor jsonb, p_next_page_no integer,
                                       p_pages_fetched bigint, p_now timestamptz)
    RETURNS boolean
    LANGUAGE sql SECURITY DEFINER SET search_path = public, pg_temp
    AS $$
        WITH saved AS (
            UPDATE import_jobs AS j SET cursor = p_cursor, next_page_no = p_next_page_no,
                pages_fetched = p_pages_fetched, updated_at = p_now
            WHERE j.job_id = p_job_id AND j.lease_owner = p_worker_id AND j.state = 'RUNNING'
            RETURNING 1)
        SELECT count(*) = 1 FROM saved
    $$;

CREATE FUNCTION apptsync_finish_job(p_job_id uuid, p_worker_id text, p_state text, p_stop_reason text,
                                    p_error text, p_now timestamptz)
    RETURNS SETOF import_jobs
    LANGUAGE sql SECURITY DEFINER SET search_path = public, pg_temp
    AS $$
        UPDATE import_jobs SET state = p_state, stop_reason = p_stop_reason, error = p_error,
            finished_at = p_now, updated_at = p_now, lease_owner = NULL, lease_expires_at = NULL
        WHERE job_id = p_job_id AND lease_owner = p_worker_id AND state = 'RUNNING'
          AND p_state IN ('SUCCEEDED', 'FAILED', 'CANCELED')
        RETURNING *
    $$;

CREATE FUNCTION apptsync_release_lease(p_job_id uuid, p_worker_id text, p_now timestamptz)
    RETURNS void
    LANGUAGE sql SECURITY DEFINER SET search_path = public, pg_temp
    AS $$
        UPDATE import_jobs SET lease_owner = NULL, lease_expires_at = p_now, updated_at = p_now
        WHERE job_id = p_job_id AND lease_owner = p_worker_id AND state = 'RUNNING'
    $$;

-- The recorded results of a job's pages (no tenant data beyond the counts).
CREATE FUNCTION apptsync_job_page_results(p_job_id uuid, p_page_nos integer[])
    RETURNS TABLE (page_no integer, records_fetched integer, inserted integer, updated integer)
    LANGUAGE sql STABLE SECURITY DEFINER SET search_path = public, pg_temp
    AS $$
        SELECT p.page_no, p.records_fetched, p.inserted, p.updated
        FROM import_job_pages AS p
        WHERE p.job_id = p_job_id AND (p_page_nos IS NULL OR p.page_no = ANY(p_page_nos))
    $$;

-- ---------------------------------------------------------------- cross-tenant operations (gateway)

-- Connections of the given tenants (NULL: every tenant, for a caller allowed all), keyset-paged,
-- without their credentials.
CREATE FUNCTION apptsync_list_connections(p_tenant_ids uuid[], p_after_tenant uuid, p_after_connection text,
                                          p_limit integer)
    RETURNS TABLE (tenant_id uuid, connection_id text, external_source text, base_url text, settings jsonb,
                   credential_fields text[], created_at timestamptz, updated_at timestamptz)
    LANGUAGE sql STABLE SECURITY DEFINER SET search_path = public, pg_temp
    AS $$
        SELECT c.tenant_id, c.connection_id, c.external_source, c.base_url, c.settings, c.credential_fields,
               c.created_at, c.updated_at
        FROM connections AS c
        WHERE (p_tenant_ids IS NULL OR c.tenant_id = ANY(p_tenant_ids))
          AND (p_after_tenant IS NULL OR (c.tenant_id, c.connection_id) > (p_after_tenant, p_after_connection))
        ORDER BY c.tenant_id, c.connection_id
        LIMIT p_limit
    $$;

DO $$
DECLARE
    definer regprocedure;
BEGIN
    FOREACH definer IN ARRAY ARRAY[
        'apptsync_claim_job(text, timestamptz, double precision)',
        'apptsync_renew_lease(uuid, text, timestamptz, double precision)',
        'apptsync_save_progress(uuid, text, jsonb, integer, bigint, timestamptz)',
        'apptsync_finish_job(uuid, text, text, text, text, timestamptz)',
        'apptsync_release_lease(uuid, text, timestamptz)',
        'apptsync_job_page_results(uuid, integer[])',
        'apptsync_list_connections(uuid[], uuid, text, integer)'
    ]::regprocedure[] LOOP
        EXECUTE format('REVOKE EXECUTE ON FUNCTION %s FROM PUBLIC', definer);
        EXECUTE format('GRANT EXECUTE ON FUNCTION %s TO apptsync_service', definer);
    END LOOP;
END
$$;
