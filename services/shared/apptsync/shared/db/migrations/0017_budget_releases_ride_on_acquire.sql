-- The shared provider budget of migration 0010 in one statement per provider request instead of two.
--
-- Before, every request made two round trips: apptsync_budget_acquire before it, apptsync_budget_release
-- after it. A fetcher now remembers the leases its finished requests held and hands them to its next
-- acquire, which deletes them before it counts the budget's leases (the fetcher flushes them with
-- apptsync_budget_release_many when no acquire follows soon; see apptsync.fetcher.shared_budget).
-- Measured on a 100,000-appointment Acuity import (4,442 provider requests, pg_stat_statements):
-- acquire 1,653 ms, release 303 ms in PostgreSQL, and the two round trips 19 % of the fetcher's CPU.
--
-- The acquire also stops inserting the budget row on every call: 559 ms of those 1,653 ms were
-- `INSERT ... ON CONFLICT DO NOTHING` on a row that exists from the first request on (a speculative
-- insertion probes the unique index and takes a speculative lock each time). It now locks the row and
-- inserts only when it is missing.

-- Reserves one request of the budget as before (see 0010: returns (lease_id, wait_seconds); lease_id
-- NULL: p_max_concurrent leases are held, nothing was reserved, ask again after wait_seconds), after
-- ending the leases of p_finished_leases: requests of the caller that are done. Only those leases are
-- deleted, of whichever budget; an unknown, expired or already released id is no error, so a retried
-- statement does no harm. They are deleted before the count, so a caller whose own finished request
-- held the last free lease gets a new lease in the same call.
--
-- Lock order: the finished leases are deleted before the budget row is locked (less work under the
-- lock every replica queues on). The expired leases are then deleted with SKIP LOCKED: a lease row
-- locked by another transaction is one that transaction is deleting (leases are never updated), and
-- waiting for it while holding the budget's row lock could deadlock with a transaction that deleted its
-- own expired finished lease and now waits for this budget's row. A skipped lease is still counted,
-- which errs on the safe side for one statement.
CREATE FUNCTION apptsync_budget_acquire(p_provider text, p_budget_key text, p_holder text,
                                        p_spacing_seconds double precision, p_max_concurrent integer,
                                        p_lease_seconds double precision, p_now timestamptz,
                                        p_finished_leases bigint[])
    RETURNS TABLE (lease_id bigint, wait_seconds double precision)
    LANGUAGE plpgsql SECURITY DEFINER SET search_path = public, pg_temp
    AS $$
    DECLARE
        v_now timestamptz := COALESCE(p_now, clock_timestamp());
        v_budget provider_budgets;
        v_in_use integer;
        v_slot timestamptz;
    BEGIN
        IF cardinality(p_finished_leases) > 0 THEN
            DELETE FROM provider_budget_leases AS l WHERE l.lease_id = ANY (p_finished_leases);
        END IF;
        -- The row lock serializes the reservations of one budget across replicas. The row exists from
        -- a budget's first request on: insert it only when it is missing.
        SELECT * INTO v_budget FROM provider_budgets AS b
            WHERE b.provider = p_provider AND b.budget_key = p_budget_key FOR UPDATE;
        IF NOT FOUND THEN
            INSERT INTO provider_budgets (provider, budget_key) VALUES (p_provider, p_budget_key)
                ON CONFLICT DO NOTHING;
            SELECT * INTO v_budget FROM provider_budgets AS b
                WHERE b.provider = p_provider AND b.budget_key = p_budget_key FOR UPDATE;
        END IF;
        DELETE FROM provider_budget_leases AS l
            WHERE l.lease_id IN (
                SELECT e.lease_id FROM provider_budget_leases AS e
                WHERE e.provider = p_provider AND e.budget_key = p_budget_key AND e.expires_at <= v_now
                FOR UPDATE SKIP LOCKED);
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

-- The seven-argument acquire of 0010, kept for fetchers of the previous release during a rolling
-- upgrade (they release with apptsync_budget_release): the same body, no finished leases.
CREATE OR REPLACE FUNCTION apptsync_budget_acquire(p_provider text, p_budget_key text, p_holder text,
                                                   p_spacing_seconds double precision, p_max_concurrent integer,
                                                   p_lease_seconds double precision, p_now timestamptz)
    RETURNS TABLE (lease_id bigint, wait_seconds double precision)
    LANGUAGE sql SECURITY DEFINER SET search_path = public, pg_temp
    AS $$
        SELECT * FROM apptsync_budget_acquire(p_provider, p_budget_key, p_holder, p_spacing_seconds,
                                              p_max_concurrent, p_lease_seconds, p_now, ARRAY[]::bigint[])
    $$;

-- Ends several requests' leases in one statement (idempotent: unknown, expired or released ids are no
-- error): a fetcher's finished leases that no acquire carried within its flush delay.
CREATE FUNCTION apptsync_budget_release_many(p_lease_ids bigint[])
    RETURNS void
    LANGUAGE sql SECURITY DEFINER SET search_path = public, pg_temp
    AS $$ DELETE FROM provider_budget_leases WHERE lease_id = ANY (p_lease_ids) $$;

DO $$
DECLARE
    definer regprocedure;
BEGIN
    FOREACH definer IN ARRAY ARRAY[
        'apptsync_budget_acquire(text, text, text, double precision, integer, double precision, timestamptz, bigint[])',
        'apptsync_budget_acquire(text, text, text, double precision, integer, double precision, timestamptz)',
        'apptsync_budget_release_many(bigint[])'
    ]::regprocedure[] LOOP
        EXECUTE format('REVOKE EXECUTE ON FUNCTION %s FROM PUBLIC', definer);
        EXECUTE format('GRANT EXECUTE ON FUNCTION %s TO apptsync_service', definer);
    END LOOP;
END
$$;
