-- Fair share of the fetchers between tenants, and provider rate budgets shared by every fetcher
-- replica behind one egress IP.

-- ---------------------------------------------------------------- fair share (claiming jobs)

-- Claims the oldest claimable job (queued, or running with an expired lease) of the tenant that runs
-- the fewest live jobs, skipping tenants that already run p_max_running_per_tenant; NULL when none.
--
-- Why the advisory lock: the running counts decide which job is claimed, so two fetchers claiming at
-- once could both see a tenant one below its cap and both claim for it. Claims are rare (one per job
-- start) and short, so serializing them costs nothing measurable and makes the cap exact across any
-- number of fetchers. PL/pgSQL takes a new snapshot per statement, so the query below sees every claim
-- committed before the lock was granted. The lock ends with the caller's transaction (a single
-- statement for jobs.claim_job).
--
-- Why one query over the claimable partial index (import_jobs_claimable holds exactly the QUEUED and
-- RUNNING rows): the running counts and the candidates come from the same index scan, so the cost
-- grows with the active jobs, not with the job history.
CREATE FUNCTION apptsync_claim_job(p_worker_id text, p_now timestamptz, p_lease_seconds double precision,
                                   p_max_running_per_tenant integer)
    RETURNS SETOF import_jobs
    LANGUAGE plpgsql SECURITY DEFINER SET search_path = public, pg_temp
    AS $$
    BEGIN
        -- Two-key form: its key space is apart from the migrator's single-key lock.
        PERFORM pg_advisory_xact_lock(1634758772, 1668047209);  -- 'appt', 'clai'
        RETURN QUERY
        UPDATE import_jobs SET state = 'RUNNING', lease_owner = p_worker_id,
            lease_expires_at = p_now + make_interval(secs => p_lease_seconds),
            started_at = COALESCE(started_at, p_now), updated_at = p_now
        WHERE job_id = (
            WITH active AS (
                SELECT a.job_id, a.tenant_id, a.created_at,
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
            ORDER BY t.jobs, c.created_at
            FOR UPDATE OF j SKIP LOCKED
            LIMIT 1)
        RETURNING *;
    END
    $$;

-- The former claim (oldest first, no cap), kept for fetchers of the previous release during a rolling
-- upgrade: it now claims fairly too, without a cap.
CREATE OR REPLACE FUNCTION apptsync_claim_job(p_worker_id text, p_now timestamptz, p_lease_seconds double precision)
    RETURNS SETOF import_jobs
    LANGUAGE sql SECURITY DEFINER SET search_path = public, pg_temp
    AS $$ SELECT * FROM apptsync_claim_job(p_worker_id, p_now, p_lease_seconds, 2147483647) $$;

-- ---------------------------------------------------------------- shared provider budgets (fetcher)

-- One request budget per (provider, budget key) for all replicas together: Acuity limits requests per
-- second and concurrent connections per source IP, so every replica behind one egress IP (one budget
-- key) must draw from one budget. Why PostgreSQL: every replica already holds a pool to it, it is the
-- one clock they all share (replica clocks may disagree; slots are computed with the database's), and
-- a row lock makes the reservation atomic. Redis or a coordinator service would be a new dependency to
-- run and secure for ~10 requests per second; a per-replica share (limit / replicas) wastes the budget
-- whenever one replica is idle and breaks when the replica count changes.
--
-- The rate: virtual scheduling (GCRA) with a burst of one. Each request reserves the slot
-- GREATEST(next_slot_at, now, paused_until) and moves next_slot_at one spacing past it, so reserved
-- slots are at least one spacing apart whichever replica holds them.
CREATE TABLE provider_budgets (
    provider      text        NOT NULL,
    budget_key    text        NOT NULL,
    next_slot_at  timestamptz NOT NULL DEFAULT '-infinity',
    -- A 429 seen by any replica: no slot is granted before this moment.
    paused_until  timestamptz NOT NULL DEFAULT '-infinity',
    PRIMARY KEY (provider, budget_key)
);

-- The concurrency: one lease per request between its slot and its response. A lease expires on its
-- own (a replica that dies mid-request frees its share after lease_seconds).
CREATE TABLE provider_budget_leases (
    lease_id    bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    provider    text        NOT NULL,
    budget_key  text        NOT NULL,
    holder      text        NOT NULL,
    expires_at  timestamptz NOT NULL,
    FOREIGN KEY (provider, budget_key) REFERENCES provider_budgets (provider, budget_key) ON DELETE CASCADE
);
CREATE INDEX provider_budget_leases_by_budget ON provider_budget_leases (provider, budget_key, expires_at);

-- Reserves one request of the budget: a lease and a slot. Returns (lease_id, wait_seconds): wait
-- wait_seconds, then send, then release the lease. lease_id NULL: p_max_concurrent leases are held;
-- nothing was reserved; ask again after wait_seconds. p_now NULL: the database's clock (tests pass one).
CREATE FUNCTION apptsync_budget_acquire(p_provider text, p_budget_key text, p_holder text,
                                        p_spacing_seconds double precision, p_max_concurrent integer,
                                        p_lease_seconds double precision, p_now timestamptz)
    RETURNS TABLE (lease_id bigint, wait_seconds double precision)
    LANGUAGE plpgsql SECURITY DEFINER SET search_path = public, pg_temp
    AS $$
    DECLARE
        v_now timestamptz := COALESCE(p_now, clock_timestamp());
        v_budget provider_budgets;
        v_in_use integer;
        v_slot timestamptz;
    BEGIN
        INSERT INTO provider_budgets (provider, budget_key) VALUES (p_provider, p_budget_key)
            ON CONFLICT DO NOTHING;
        -- The row lock serializes the reservations of one budget across replicas.
        SELECT * INTO v_budget FROM provider_budgets AS b
            WHERE b.provider = p_provider AND b.budget_key = p_budget_key FOR UPDATE;
        DELETE FROM provider_budget_leases AS l
            WHERE l.provider = p_provider AND l.budget_key = p_budget_key AND l.expires_at <= v_now;
        SELECT count(*) INTO v_in_use FROM provider_budget_leases AS l
            WHERE l.provider = p_provider AND l.budget_key = p_budget_key;
        IF v_in_use >= p_max_concurrent THEN
            lease_id := NULL;
            wait_seconds := p_spacing_seconds;
            RETURN NEXT;
            RETURN;
        END IF;
        v_slot := GREATEST(v_budget.next_slot_at, v_now, v_budget.paused_until);
        UPDATE provider_budgets AS b SET next_slot_at = v_slot + make_interval(secs => p_spacing_seconds)
            WHERE b.provider = p_provider AND b.budget_key = p_budget_key;
        INSERT INTO provider_budget_leases (provider, budget_key, holder, expires_at)
            VALUES (p_provider, p_budget_key, p_holder, v_slot + make_interval(secs => p_lease_seconds))
            RETURNING provider_budget_leases.lease_id INTO lease_id;
        wait_seconds := EXTRACT(EPOCH FROM v_slot - v_now)::double precision;
        RETURN NEXT;
    END
    $$;

-- Ends a request's lease (idempotent).
CREATE FUNCTION apptsync_budget_release(p_lease_id bigint)
    RETURNS void
    LANGUAGE sql SECURITY DEFINER SET search_path = public, pg_temp
    AS $$ DELETE FROM provider_budget_leases WHERE lease_id = p_lease_id $$;

-- The provider said "too many requests": no replica gets a slot for p_pause_seconds (a longer pause
-- already set stays). Slots reserved before stay reserved: at most p_max_concurrent of them.
CREATE FUNCTION apptsync_budget_pause(p_provider text, p_budget_key text, p_pause_seconds double precision,
                                      p_now timestamptz)
    RETURNS timestamptz
    LANGUAGE plpgsql SECURITY DEFINER SET search_path = public, pg_temp
    AS $$
    DECLARE
        v_until timestamptz := COALESCE(p_now, clock_timestamp()) + make_interval(secs => p_pause_seconds);
        v_paused timestamptz;
    BEGIN
        INSERT INTO provider_budgets (provider, budget_key) VALUES (p_provider, p_budget_key)
            ON CONFLICT DO NOTHING;
        UPDATE provider_budgets AS b SET paused_until = GREATEST(b.paused_until, v_until),
            next_slot_at = GREATEST(b.next_slot_at, v_until)
            WHERE b.provider = p_provider AND b.budget_key = p_budget_key
            RETURNING b.paused_until INTO v_paused;
        RETURN v_paused;
    END
    $$;

DO $$
DECLARE
    definer regprocedure;
BEGIN
    FOREACH definer IN ARRAY ARRAY[
        'apptsync_claim_job(text, timestamptz, double precision, integer)',
        'apptsync_claim_job(text, timestamptz, double precision)',
        'apptsync_budget_acquire(text, text, text, double precision, integer, double precision, timestamptz)',
        'apptsync_budget_release(bigint)',
        'apptsync_budget_pause(text, text, double precision, timestamptz)'
    ]::regprocedure[] LOOP
        EXECUTE format('REVOKE EXECUTE ON FUNCTION %s FROM PUBLIC', definer);
        EXECUTE format('GRANT EXECUTE ON FUNCTION %s TO apptsync_service', definer);
    END LOOP;
END
$$;
