-- The claim of migration 0012, plus `p_skip_sources`: a fetcher that already holds as many open jobs
-- of a provider as one shared request budget can use (Acuity: 10 requests per 1.1 s per egress IP,
-- shared by every tenant) claims other providers' jobs instead. More open jobs of such a provider add
-- no throughput (they only split the same budget) and would fill the fetcher's open-job bound, so the
-- other tenants would wait behind them. The order is unchanged: the tenant with the fewest live jobs,
-- then the oldest job. The four-argument claim stays for fetchers of the previous release.
CREATE OR REPLACE FUNCTION apptsync_claim_job(p_worker_id text, p_now timestamptz, p_lease_seconds double precision,
                                              p_max_running_per_tenant integer, p_skip_sources text[])
    RETURNS SETOF import_jobs
    LANGUAGE plpgsql SECURITY DEFINER SET search_path = public, pg_temp
    AS $$
    BEGIN
        PERFORM pg_advisory_xact_lock(1634758772, 1668047209);  -- 'appt', 'clai'
        RETURN QUERY
        UPDATE import_jobs SET state = 'RUNNING', lease_owner = p_worker_id,
            lease_expires_at = p_now + make_interval(secs => p_lease_seconds),
            started_at = COALESCE(started_at, p_now), updated_at = p_now
        WHERE job_id = (
            WITH active AS (
                SELECT a.job_id, a.tenant_id, a.created_at, a.kind, a.state, a.external_source, a.connection_id,
                       (a.state = 'RUNNING' AND a.lease_expires_at >= p_now) AS live
                FROM import_jobs AS a
                WHERE a.state IN ('QUEUED', 'RUNNING')),
            running AS (
                SELECT r.tenant_id, count(*) FILTER (WHERE r.live) AS jobs
                FROM active AS r GROUP BY r.tenant_id)
            SELECT j.job_id FROM import_jobs AS j
            JOIN active AS c ON c.job_id = j.job_id AND NOT c.live
            JOIN running AS t ON t.tenant_id = c.tenant_id
            WHERE t.jobs < p_max_running_per_tenant
              AND NOT (c.external_source = ANY (p_skip_sources))
              AND NOT (c.kind = 'targeted' AND c.state = 'QUEUED' AND EXISTS (
                  SELECT 1 FROM active AS o
                  WHERE o.kind = 'targeted' AND o.state = 'RUNNING' AND o.tenant_id = c.tenant_id
                    AND o.external_source = c.external_source AND o.connection_id = c.connection_id))
            ORDER BY t.jobs, c.created_at
            FOR UPDATE OF j SKIP LOCKED
            LIMIT 1)
        RETURNING *;
    END
    $$;

REVOKE EXECUTE ON FUNCTION apptsync_claim_job(text, timestamptz, double precision, integer, text[]) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION apptsync_claim_job(text, timestamptz, double precision, integer, text[]) TO apptsync_service;
