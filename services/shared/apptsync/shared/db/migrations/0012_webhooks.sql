-- Provider webhooks (docs/design.md invariant 10): targeted-sync jobs that coalesce bursts of
-- notifications, and one webhook subscription per connection.

-- ---------------------------------------------------------------- targeted jobs

-- kind 'sync': a job started by StartImport (a walk of a window). kind 'targeted': a job queued by the
-- webhook receiver; it fetches only `targets` (Acuity appointment ids, Calendly invitee URIs; Google
-- runs its incremental sync) and never reconciles deletions (it is not a complete walk).
ALTER TABLE import_jobs
    ADD COLUMN kind    text  NOT NULL DEFAULT 'sync' CHECK (kind IN ('sync', 'targeted')),
    ADD COLUMN targets jsonb NOT NULL DEFAULT '[]'::jsonb;

-- One active *sync* job per connection (StartImport's duplicate check); a targeted job may run beside it.
DROP INDEX import_jobs_one_active;
CREATE UNIQUE INDEX import_jobs_one_active
    ON import_jobs (tenant_id, external_source, connection_id)
    WHERE state IN ('QUEUED', 'RUNNING') AND kind = 'sync';
-- Coalescing: at most one queued targeted job per connection. The receiver's INSERT .. ON CONFLICT on
-- this index appends the new target ids to that job, so a burst of notifications is one job; once a
-- fetcher claimed it (RUNNING leaves the index) the next notification queues the next job.
CREATE UNIQUE INDEX import_jobs_one_queued_targeted
    ON import_jobs (tenant_id, external_source, connection_id)
    WHERE state = 'QUEUED' AND kind = 'targeted';

-- The claim of migration 0010, plus: a queued targeted job is not claimed while a targeted job of the
-- same connection runs (at most one targeted sync in flight per connection; the queued one collects
-- what arrives meanwhile and runs next).
CREATE OR REPLACE FUNCTION apptsync_claim_job(p_worker_id text, p_now timestamptz, p_lease_seconds double precision,
                                              p_max_running_per_tenant integer)
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

-- ---------------------------------------------------------------- webhook subscriptions

-- One row per connection that receives notifications. The receiver finds it by the SHA-256 of the
-- unguessable token in the notification URL's path (the token itself is never stored).
-- `secret_ciphertext`: provider secrets of the subscription (Calendly's signing key, the Google
-- channel token), AES-GCM like connection credentials (bound to tenant and connection).
-- `provider_refs`: what the provider named the subscription (Acuity webhook ids, the Calendly
-- subscription URI, Google channels: id, resource id, calendar, expiration, last message number).
CREATE TABLE webhook_subscriptions (
    tenant_id              uuid        NOT NULL,
    connection_id          text        NOT NULL,
    external_source        text        NOT NULL,
    token_sha256           bytea       NOT NULL UNIQUE,
    secret_ciphertext      bytea,
    provider_refs          jsonb       NOT NULL DEFAULT '{}'::jsonb,
    state                  text        NOT NULL DEFAULT 'PENDING' CHECK (state IN ('PENDING', 'ACTIVE', 'FAILED')),
    last_error             text        NOT NULL DEFAULT '',
    expires_at             timestamptz,
    last_notification_at   timestamptz,
    notifications_accepted bigint      NOT NULL DEFAULT 0,
    created_at             timestamptz NOT NULL DEFAULT now(),
    updated_at             timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, connection_id),
    FOREIGN KEY (tenant_id, connection_id) REFERENCES connections (tenant_id, connection_id) ON DELETE CASCADE
);
CREATE INDEX webhook_subscriptions_expiring ON webhook_subscriptions (expires_at) WHERE expires_at IS NOT NULL;

ALTER TABLE webhook_subscriptions ENABLE ROW LEVEL SECURITY;
ALTER TABLE webhook_subscriptions FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON webhook_subscriptions USING (tenant_id = apptsync_current_tenant())
    WITH CHECK (tenant_id = apptsync_current_tenant());
DO $$
BEGIN
    EXECUTE format('CREATE POLICY owner_functions ON webhook_subscriptions TO %I USING (true) WITH CHECK (true)',
                   current_user);
END
$$;
GRANT SELECT, INSERT, UPDATE, DELETE ON webhook_subscriptions TO apptsync_service;

-- The receiver's one cross-tenant read: which tenant and connection a notification URL's token names.
-- Nothing else of the row (the rest is read in a tenant transaction).
CREATE FUNCTION apptsync_webhook_route(p_token_sha256 bytea)
    RETURNS TABLE (tenant_id uuid, connection_id text, external_source text)
    LANGUAGE sql STABLE SECURITY DEFINER SET search_path = public, pg_temp
    AS $$
        SELECT s.tenant_id, s.connection_id, s.external_source FROM webhook_subscriptions AS s
        WHERE s.token_sha256 = p_token_sha256
    $$;

-- The renewal loop's cross-tenant read: subscriptions whose provider side expires before p_before.
CREATE FUNCTION apptsync_webhooks_expiring(p_before timestamptz, p_limit integer)
    RETURNS TABLE (tenant_id uuid, connection_id text, external_source text, expires_at timestamptz)
    LANGUAGE sql STABLE SECURITY DEFINER SET search_path = public, pg_temp
    AS $$
        SELECT s.tenant_id, s.connection_id, s.external_source, s.expires_at FROM webhook_subscriptions AS s
        WHERE s.expires_at IS NOT NULL AND s.expires_at < p_before
        ORDER BY s.expires_at LIMIT p_limit
    $$;

DO $$
DECLARE
    definer regprocedure;
BEGIN
    FOREACH definer IN ARRAY ARRAY[
        'apptsync_claim_job(text, timestamptz, double precision, integer)',
        'apptsync_webhook_route(bytea)',
        'apptsync_webhooks_expiring(timestamptz, integer)'
    ]::regprocedure[] LOOP
        EXECUTE format('REVOKE EXECUTE ON FUNCTION %s FROM PUBLIC', definer);
        EXECUTE format('GRANT EXECUTE ON FUNCTION %s TO apptsync_service', definer);
    END LOOP;
END
$$;
