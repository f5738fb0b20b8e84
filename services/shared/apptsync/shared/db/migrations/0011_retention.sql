-- Retention of personal data (`apptsync prune`, apptsync.shared.db.retention): raw provider payloads
-- and the page ledger are pruned once they are older than the configured ages.
--
-- The prune runs as the services' role and acts on one tenant per transaction, under that tenant's
-- row-level security like every other tenant-scoped statement: a mistake in a prune statement cannot
-- reach another tenant's rows. The only cross-tenant step is learning which tenants exist, hence the
-- one SECURITY DEFINER function below. `appointments` gets no owner policy: that would open every
-- tenant's appointments to every definer function, present and future, for the sake of one listing.

-- The tenants that have a connection or an import job: every tenant with appointments has one, since
-- each row was written by a job of its tenant and the prune keeps the latest finished job of every
-- connection (apptsync.shared.db.retention). Tenant ids only: no other data crosses a tenant.
CREATE FUNCTION apptsync_retention_tenants()
    RETURNS SETOF uuid
    LANGUAGE sql STABLE SECURITY DEFINER SET search_path = public, pg_temp
    AS $$
        SELECT c.tenant_id FROM connections AS c
        UNION
        SELECT j.tenant_id FROM import_jobs AS j
    $$;
REVOKE EXECUTE ON FUNCTION apptsync_retention_tenants() FROM PUBLIC;
GRANT EXECUTE ON FUNCTION apptsync_retention_tenants() TO apptsync_service;

-- The ledger prune finds a tenant's jobs finished before the cutoff without reading its running
-- ones or every job it ever had (a 15-minute sync schedule makes ~35,000 jobs per connection a year).
-- import_jobs is written a few times per job, so the index costs nothing on a hot path; appointments
-- gets none: an index on updated_at would make every writer update of a row non-HOT.
CREATE INDEX import_jobs_finished ON import_jobs (tenant_id, finished_at) WHERE finished_at IS NOT NULL;
